//! x86-64 machine code: CPU features and control registers, descriptor
//! tables, exception entry, and the QEMU exit device.
//!
//! Everything here touches hardware, so this is where the kernel's
//! `unsafe` lives. Policy decisions stay in the crates that call it.

pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod idt;
pub mod pks;
pub mod recovery;
