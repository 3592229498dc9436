//! The kernel binary: boot sequence and top-level state.
//!
//! `kernel_boot_entry` is called by the boot stub (see the `boot` crate)
//! on the boot stack, in 64-bit mode, with the higher half mapped. It
//! brings up the descriptor tables, consoles and CPU protections, parses
//! `hvm_start_info` and the command line, turns on PKS, builds the direct
//! map and the page allocator, reprotects the early page tables, starts
//! the other CPUs (`arch::smp`), runs the verification walk and prints the
//! boot report. Then it runs the selected in-kernel tests, or the demo, or
//! the root task from the first boot module (`roottask`, in ring 3), whose
//! exit status ends the run; with none of these it stops.

#![no_std]
#![no_main]
#![forbid(unsafe_op_in_unsafe_fn)]
// `TestResult` carries its failure message inline (there is no heap), which
// makes its error variant large; only tests return it, never a hot path.
#![allow(clippy::result_large_err)]

mod arch;
mod attack_matrix;
mod console;
mod demo;
mod fatal;
mod lab;
mod log;
mod memory;
mod object;
mod pkfault;
mod report;
mod roottask;
mod sync;
mod syscall;
mod testing;
mod usertests;

use arch::cpu::CpuFeatures;
use arch::exit::{ExitCode, exit_qemu};
use boot::{BootInfo, KernelConfig};
use pkeys::ProtectionPolicy;

/// What boot learned and decided, for the rest of the kernel and its tests.
pub struct BootState {
    /// Parsed `hvm_start_info`.
    pub info: BootInfo,
    /// The command line's typed configuration.
    pub config: KernelConfig,
    /// The page-table protection policy in force (`auto` resolved).
    pub ptprot: ProtectionPolicy,
    /// CPU features.
    pub features: CpuFeatures,
    /// Protections turned on.
    pub enabled: arch::pks::Enabled,
    /// What memory bring-up did.
    pub memory: memory::MemoryState,
    /// The verification walk at boot.
    pub verified: memory::verify::VerifyReport,
}

static BOOT: spin::Once<BootState> = spin::Once::new();

/// The boot state; panics if asked before boot finished (a kernel bug).
pub fn boot_state() -> &'static BootState {
    BOOT.get()
        .expect("boot state is set before anything asks for it")
}

#[unsafe(no_mangle)]
extern "C" fn kernel_boot_entry(start_info_phys: u64) -> ! {
    // Descriptor tables first, so that even a fault in console setup ends
    // in a report (possibly unprinted) and a failure status.
    // SAFETY: called once, here, on the boot CPU, in this order; GS first,
    // so an exception can find this CPU's (empty) protection state.
    unsafe {
        arch::percpu::init_boot_cpu();
        arch::gdt::init();
        arch::idt::init();
        arch::apic::mask_legacy_pic();
        arch::usermode::init_cpu();
    }
    syscall::init();
    console::init();
    log::init();
    println!("pks-kernel {} booting", env!("CARGO_PKG_VERSION"));
    defmt::info!("descriptor tables loaded");

    let info = match BootInfo::parse(start_info_phys, &memory::BootWindow) {
        Ok(info) => info,
        Err(error) if error.is_command_line() => {
            println!("kernel command line rejected: {}", error);
            report::print_options();
            exit_qemu(ExitCode::BadCommandLine);
        }
        Err(error) => {
            println!(
                "boot: cannot use hvm_start_info at {:#x}: {}",
                start_info_phys, error
            );
            exit_qemu(ExitCode::Failure);
        }
    };
    // Keep the command line in the boot state; errors borrow from it.
    let config = match KernelConfig::parse(&info.command_line) {
        Ok(config) => config,
        Err(error) => {
            println!("kernel command line rejected: {}", error);
            report::print_options();
            exit_qemu(ExitCode::BadCommandLine);
        }
    };

    let features = CpuFeatures::detect();
    let enabled = arch::pks::enable_protections();
    let ptprot = match config.ptprot.resolve(features.pks) {
        Ok(policy) => policy,
        Err(error) => {
            println!("kernel command line rejected: {}", error);
            exit_qemu(ExitCode::BadCommandLine);
        }
    };
    if ptprot == ProtectionPolicy::ReadOnlyAlias && (config.protect.cnode || config.protect.tcb) {
        println!(
            "kernel command line rejected: protect=...cnode or tcb needs ptprot=pks (here ptprot={} resolved to ro): \
             an object window under ro clears CR0.WP, which makes every read-only page, page tables included, \
             writable on its CPU for the whole invocation",
            config.ptprot.name()
        );
        exit_qemu(ExitCode::BadCommandLine);
    }
    let test_plan = match &config.test {
        Some(selection) => match testing::plan(selection) {
            Ok(plan) => Some(plan),
            Err(error) => {
                println!("kernel command line rejected: {}", error);
                exit_qemu(ExitCode::BadCommandLine);
            }
        },
        None => None,
    };
    let protection = arch::pks::init(ptprot, &enabled, fatal::protection_violation);
    pkfault::init(config.pkfault, config.test.is_some());
    defmt::info!(
        "protection windows: {=str}",
        report::mechanism_name(protection.mechanism())
    );
    object::protection::init(config.protect);
    let memory = match memory::bring_up(&info.memory, &features, &config) {
        Ok(memory) => memory,
        Err(error) => {
            println!("boot: {}", error);
            exit_qemu(if error.is_not_enough_memory() {
                ExitCode::NotEnoughMemory
            } else {
                ExitCode::Failure
            });
        }
    };
    // The APs start once memory is up (they need the kernel space) and
    // before the walk, which must pass with them running.
    arch::smp::bring_up(&info);
    let verified = memory::verify::verify();

    let boot = BOOT.call_once(|| BootState {
        info,
        config,
        ptprot,
        features,
        enabled,
        memory,
        verified,
    });
    report::print_boot_report(boot);
    if boot.config.memmap.boot {
        memory::memmap::dump("after-boot");
    }
    if !boot.verified.passed() && boot.ptprot != ProtectionPolicy::None {
        println!("boot: the verification walk failed: page tables are not protected");
        exit_qemu(ExitCode::Failure);
    }

    // The lab's workloads are the whole run (a boot module is a trace).
    if !boot.config.lab.is_empty() {
        exit_qemu(if lab::run(&boot.config.lab) {
            ExitCode::Success
        } else {
            ExitCode::Failure
        });
    }

    let code = match test_plan {
        Some(plan) => {
            // Tests that make objects need the table; made before the
            // first test, it is nobody's leak.
            if let Err(error) = roottask::init_objects() {
                println!("tests: no object table: {}", error);
            }
            testing::run(plan)
        }
        None => {
            if boot.config.demo == boot::cmdline::Demo::Pte {
                demo::run();
            }
            // With a boot module, the root task ends the run: its exit
            // status decides ours.
            match boot.info.modules.split_first() {
                Some((module, others)) => match boot.config.roottask {
                    boot::cmdline::RootTaskMode::Run => roottask::run(module, others.len()),
                    boot::cmdline::RootTaskMode::Suite => usertests::run(module),
                },
                None => {
                    println!("boot complete");
                    ExitCode::Success
                }
            }
        }
    };
    exit_qemu(code)
}
