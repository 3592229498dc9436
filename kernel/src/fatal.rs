//! The end of the line: fault reports and the panic handler.
//!
//! Every unrecoverable event prints a full report on the text console and
//! stops the machine with [`ExitCode::Failure`], so the host sees a failure
//! and a reason, never a silent hang or a triple fault. A fault raised while
//! a report is being printed skips straight to the exit.

use crate::arch::cpu;
use crate::arch::exit::{ExitCode, exit_qemu};
use crate::arch::idt::{TrapFrame, exception_name};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

/// Prints one line of a report, breaking the console lock if need be.
macro_rules! fatal_println {
    ($($arg:tt)*) => {
        // SAFETY: only this module's report paths use the macro, and each
        // ends in `end_report`, never returning to code that may hold the
        // console lock. Only one CPU runs kernel code today.
        unsafe { crate::console::print_fatal(format_args!("{}\n", format_args!($($arg)*))) }
    };
}

static REPORTING: AtomicBool = AtomicBool::new(false);

/// Claims the right to report; a second fatal event during a report exits.
fn begin_report() {
    if REPORTING.swap(true, Ordering::SeqCst) {
        exit_qemu(ExitCode::Failure);
    }
    // A test line in progress ("test NAME ... ") gets its verdict first.
    if crate::testing::current_test().is_some() {
        fatal_println!("FAILED");
    }
}

fn end_report() -> ! {
    fatal_println!(
        "!!! stopping the machine: exit status {} (failure)",
        ((ExitCode::Failure as u32) << 1) | 1
    );
    exit_qemu(ExitCode::Failure)
}

/// Reports an exception the kernel cannot handle and stops.
/// `interrupted_pkrs` is the PKRS the faulting code ran with, if PKS is on.
pub fn exception(frame: &TrapFrame, interrupted_pkrs: Option<pkeys::Pkrs>) -> ! {
    begin_report();
    let (mnemonic, name) = exception_name(frame.vector);
    fatal_println!(
        "!!! kernel fault: {} ({}, vector {})",
        name,
        mnemonic,
        frame.vector
    );
    if let Some(test) = crate::testing::current_test() {
        fatal_println!("    during test {}", test);
    }
    match frame.vector {
        14 => {
            let code = pkeys::PageFaultError::from_bits_retain(frame.error_code);
            let address = cpu::read_cr2();
            fatal_println!("    error code: {:#x} ({})", frame.error_code, code);
            fatal_println!("    CR2: {:#018x} (address accessed)", address);
            if boot::entry::boot_stack_guard_page().contains(&address) {
                fatal_println!(
                    "    the address is the boot stack's guard page: kernel stack overflow"
                );
            }
            if let Some(fault) = crate::pkfault::decode(frame) {
                fatal_println!("    protection key fault: {}", fault);
                match crate::pkfault::policy() {
                    Some(pkeys::FaultPolicy::Report) => fatal_println!(
                        "    fault policy: pkfault=report, but this access has no recovery point, so the machine stops"
                    ),
                    Some(policy) => fatal_println!("    fault policy: pkfault={}", policy.name()),
                    None => {}
                }
            }
        }
        10..=13 if frame.error_code != 0 => {
            fatal_println!(
                "    error code: {:#x} ({})",
                frame.error_code,
                SelectorError(frame.error_code)
            );
        }
        _ => fatal_println!("    error code: {:#x}", frame.error_code),
    }
    fatal_println!(
        "    RIP: {:#018x}  RSP: {:#018x}  RFLAGS: {:#x}",
        frame.rip,
        frame.rsp,
        frame.rflags
    );
    fatal_println!("    CS: {:#x}  SS: {:#x}", frame.cs, frame.ss);
    print_control_registers();
    if let Some(pkrs) = interrupted_pkrs {
        fatal_println!("    PKRS of the faulting code: {}", pkrs);
    }
    let regs = [
        ("RAX", frame.rax),
        ("RBX", frame.rbx),
        ("RCX", frame.rcx),
        ("RDX", frame.rdx),
        ("RSI", frame.rsi),
        ("RDI", frame.rdi),
        ("RBP", frame.rbp),
        ("R8 ", frame.r8),
        ("R9 ", frame.r9),
        ("R10", frame.r10),
        ("R11", frame.r11),
        ("R12", frame.r12),
        ("R13", frame.r13),
        ("R14", frame.r14),
        ("R15", frame.r15),
    ];
    for row in regs.chunks(4) {
        let mut line: heapless::String<128> = heapless::String::new();
        for (name, value) in row {
            let _ = core::fmt::write(&mut line, format_args!("{name}: {value:#018x}  "));
        }
        fatal_println!("    {}", line.trim_end());
    }
    print_backtrace(Some(frame.rip), frame.rbp);
    end_report()
}

/// Reports protection registers that do not hold what they must (see
/// `pkeys::window`): an attack, or a bug that looks like one. Never
/// adopted, always fatal.
pub fn protection_violation(violation: &pkeys::Violation) -> ! {
    begin_report();
    fatal_println!("!!! protection registers tampered with: {}", violation);
    fatal_println!("    the register check treats this as an attack and stops the machine");
    end_report_here()
}

/// Ends a report made outside an exception: the test, the control
/// registers and a backtrace from the caller, then the exit.
#[inline(always)]
fn end_report_here() -> ! {
    if let Some(test) = crate::testing::current_test() {
        fatal_println!("    during test {}", test);
    }
    print_control_registers();
    let rbp: u64;
    // SAFETY: reads the frame pointer register only.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    print_backtrace(None, rbp);
    end_report()
}

/// The selector error code of #TS, #NP, #SS and #GP (Intel SDM 6.13).
struct SelectorError(u64);

impl core::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let index = self.0 >> 3;
        match (self.0 >> 1) & 0b11 {
            // QEMU's TCG reports twice the vector here in 64-bit mode.
            0b01 | 0b11 => write!(f, "IDT vector {index}")?,
            0b00 => write!(f, "GDT selector {:#x}", index << 3)?,
            _ => write!(f, "LDT selector {:#x}", index << 3)?,
        }
        if self.0 & 1 != 0 {
            write!(f, ", raised during delivery of an external event")?;
        }
        Ok(())
    }
}

fn print_control_registers() {
    fatal_println!(
        "    CR0: {:#x}  CR3: {:#x}  CR4: {:#x}",
        cpu::read_cr0(),
        cpu::read_cr3(),
        cpu::read_cr4()
    );
    match cpu::read_pkrs_if_enabled() {
        Some(pkrs) => fatal_println!("    PKRS: {}", pkeys::Pkrs::from_bits(pkrs as u32)),
        None => fatal_println!("    PKRS: - (PKS not enabled)"),
    }
}

/// Follows saved frame pointers (the kernel is built with them), reading
/// only inside the kernel image, where every kernel stack lives.
fn print_backtrace(rip: Option<u64>, mut rbp: u64) {
    fatal_println!("    backtrace (resolve with addr2line -e kernel):");
    if let Some(rip) = rip {
        fatal_println!("      {:#018x}", rip);
    }
    let image = crate::memory::kernel_image_range();
    for _ in 0..16 {
        if !rbp.is_multiple_of(8) || !image.contains(&rbp) || !image.contains(&(rbp + 15)) {
            break;
        }
        // SAFETY: rbp is aligned and the 16 bytes at it lie inside the kernel
        // image, which is mapped readable for the kernel's whole life.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        fatal_println!("      {:#018x}", ret);
        rbp = next;
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    begin_report();
    match info.location() {
        Some(at) => fatal_println!(
            "!!! kernel panic at {}:{}:{}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => fatal_println!("!!! kernel panic"),
    }
    fatal_println!("    {}", info.message());
    end_report_here()
}
