//! x86-64 machine code: CPU features and control registers, descriptor
//! tables, exception entry, per-CPU areas, the local APIC, the MADT and
//! AP bring-up, the way in and out of user mode, and the QEMU exit device.
//!
//! Everything here touches hardware, so this is where the kernel's
//! `unsafe` lives. Policy decisions stay in the crates that call it.

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
