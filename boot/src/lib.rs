//! Everything between QEMU's PVH loader and the kernel's first Rust code.
//!
//! This crate owns:
//! - the PVH ELF note and the 32-bit entry stub that enables long mode and
//!   jumps to the higher-half kernel ([`entry`], bare-metal builds only);
//! - the boot page tables the stub builds, and the list of early page tables
//!   that must be reprotected once the page-table allocator exists
//!   ([`early_tables`]);
//! - the exit statuses the guest reports through QEMU's debug-exit device
//!   ([`exit_status`]), shared with the host runner;
//! - parsing of `hvm_start_info` into a typed [`BootInfo`] ([`start_info`],
//!   [`memory_map`]) and of the kernel command line into a typed
//!   [`KernelConfig`] ([`cmdline`]);
//! - the boot modules the loader placed in RAM (QEMU `-initrd`), checked
//!   against the memory map ([`modules`]), and the checks of the root
//!   task's ELF before the kernel loads it ([`elf_plan`]).
//!
//! Parsing is plain safe code over byte slices, so it is tested on the host.
//! Reading physical memory is the caller's job, through [`PhysMemory`].

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cmdline;
pub mod early_tables;
pub mod elf_plan;
#[cfg(target_os = "none")]
pub mod entry;
pub mod exit_status;
pub mod layout;
pub mod memory_map;
pub mod modules;
pub mod start_info;

pub use cmdline::{CmdlineError, KernelConfig};
pub use early_tables::{EarlyPageTable, EarlyPageTables, TableLevel};
pub use memory_map::{MemoryMap, MemoryRegion, MemorySummary, RegionKind};
pub use modules::{BootModule, BootModules, MAX_MODULES, ModuleError};
pub use start_info::{BootInfo, BootInfoError, PhysMemory};
