//! x86-64 machine code: CPU features and control registers, descriptor
//! tables, exception entry, per-CPU areas, the local APIC, the MADT and
//! AP bring-up, the way in and out of user mode, and the QEMU exit device.
//!
//! Everything here touches hardware, so this is where the kernel's
//! `unsafe` lives. Policy decisions stay in the crates that call it.

/// Pushes the 15 general-purpose registers so that, read upward from the
/// new RSP, r15 comes first and rax last: the layout both
/// `idt::TrapFrame` and `usermode::UserContext` begin with (each pins it
/// with const asserts). For `global_asm!` templates.
macro_rules! push_gprs {
    () => {
        "push rax\npush rbx\npush rcx\npush rdx\npush rsi\npush rdi\npush rbp\n\
         push r8\npush r9\npush r10\npush r11\npush r12\npush r13\npush r14\npush r15"
    };
}

/// Pops what [`push_gprs`] pushed, back into the same registers.
macro_rules! pop_gprs {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\n\
         pop rbp\npop rdi\npop rsi\npop rdx\npop rcx\npop rbx\npop rax"
    };
}

pub mod acpi;
pub mod apic;
pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod pks;
pub mod recovery;
pub mod smp;
pub mod usermode;
