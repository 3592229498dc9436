//! The kernel binary: boot sequence and top-level state.
//!
//! `kernel_boot_entry` is called by the boot stub (see the `boot` crate)
//! on the boot stack, in 64-bit mode, with the higher half mapped. It
//! brings up the descriptor tables, consoles and CPU protections, parses
//! `hvm_start_info` and the command line, turns on PKS, builds the direct
//! map and the page allocator, reprotects the early page tables and runs
//! the verification walk, prints the boot report, then runs the selected
//! in-kernel tests, or the demo, and stops.

#![no_std]
#![no_main]
#![forbid(unsafe_op_in_unsafe_fn)]
// `TestResult` carries its failure message inline (there is no heap), which
// makes its error variant large; only tests return it, never a hot path.
#![allow(clippy::result_large_err)]

mod arch;
mod console;
mod demo;
mod fatal;
mod log;
mod memory;
mod pkfault;
mod report;
mod testing;

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
    /// What the direct map covers.
    pub direct_map: memory::direct_map::DirectMapInfo,
    /// The flush-limit measurement (`None` under `flushlimit=N`).
    pub flush_calibration: Option<memory::tlb::Calibration>,
    /// How the page allocator was set up.
    pub frames: memory::frames::FramesInfo,
    /// What reprotecting the early page tables did.
    pub reprotected: memory::early::Reprotected,
    /// The kernel image's W^X layout.
    pub image: memory::image::ImageProtection,
    /// Pages of sealed records (`memory::sealed`).
    pub sealed_pages: usize,
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
    // SAFETY: called once, here, on the boot CPU, in this order.
    unsafe {
        arch::gdt::init();
        arch::idt::init();
    }
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
    let enabled = arch::pks::enable_protections(&features);
    let ptprot = match config.ptprot.resolve(features.pks) {
        Ok(policy) => policy,
        Err(error) => {
            println!("kernel command line rejected: {}", error);
            exit_qemu(ExitCode::BadCommandLine);
        }
    };
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
    pkfault::init(config.pkfault);
    defmt::info!(
        "protection windows: {=str}",
        report::mechanism_name(protection.mechanism())
    );
    if let Err(error) = memory::record_boot_stub_tables() {
        panic!("recording the boot stub's page tables failed: {error:?}");
    }
    let direct_map = match memory::direct_map::build(&info.memory, features.gib_pages, features.nx)
    {
        Ok(direct_map) => direct_map,
        Err(error) => {
            println!("boot: cannot build the direct map: {:?}", error);
            exit_qemu(ExitCode::Failure);
        }
    };
    // Before the allocator's first conversion flushes anything.
    let flush_calibration = memory::tlb::init(config.flush_limit, &direct_map);
    if let Err(error) = memory::ephemeral::init() {
        panic!("recording the ephemeral slot's page tables failed: {error:?}");
    }
    let frames = match memory::frames::init(&info.memory, &direct_map, features.nx) {
        Ok(frames) => frames,
        Err(error) => {
            println!("boot: cannot set up the page allocator: {}", error);
            exit_qemu(ExitCode::Failure);
        }
    };
    memory::narrow_boot_window();
    if config.inject_empty_reserve && memory::frames::inject_empty_reserve(true) {
        println!("fault injection: the split reserve gives nothing to direct-map splits");
    }
    let reprotected = match memory::early::reprotect() {
        Ok(done) => done,
        Err(error) => {
            println!("boot: cannot reprotect the early page tables: {}", error);
            exit_qemu(ExitCode::Failure);
        }
    };
    let sealed_pages = match memory::sealed::seal() {
        Ok(pages) => pages,
        Err(error) => {
            println!("boot: cannot seal the page-table records: {:?}", error);
            exit_qemu(ExitCode::Failure);
        }
    };
    // Before any user space exists: they copy the kernel's PML4 entries.
    if let Err(error) = memory::paging::init_kernel_space() {
        println!("boot: no kernel mapping region: {:?}", error);
    }
    let image = match memory::image::protect() {
        Ok(image) => image,
        Err(error) => {
            println!("boot: cannot make the kernel image W^X: {}", error);
            exit_qemu(ExitCode::Failure);
        }
    };
    let verified = memory::verify::verify();

    let boot = BOOT.call_once(|| BootState {
        info,
        config,
        ptprot,
        features,
        enabled,
        direct_map,
        flush_calibration,
        frames,
        reprotected,
        image,
        sealed_pages,
        verified,
    });
    report::print_boot_report(boot);
    if !boot.verified.passed() && boot.ptprot != ProtectionPolicy::None {
        println!("boot: the verification walk failed: page tables are not protected");
        exit_qemu(ExitCode::Failure);
    }

    let code = match test_plan {
        Some(plan) => testing::run(plan),
        None => {
            if boot.config.demo == boot::cmdline::Demo::Pte {
                demo::run();
            }
            println!("boot complete");
            ExitCode::Success
        }
    };
    exit_qemu(code)
}
