//! Protection keys for supervisor pages (PKS): mechanism and policy.
//!
//! This crate knows the architecture's bit layouts but touches no hardware:
//! the kernel reads CPUID, CR4 and MSRs and hands the raw values here. That
//! keeps every decision testable on the host.
//!
//! It owns what the `x86` and `raw-cpuid` crates lack (PLATFORM.md): the
//! PKS CPUID bit, CR4.PKS, the IA32_PKRS MSR number, and the PK bit of the
//! page-fault error code.
//!
//! Modules:
//! - [`cpu`]: detection, CR4.PKS and the PKRS MSR number;
//! - [`key`]: [`Pkey`], the [`Pkrs`] value type, key bits in page-table
//!   entries;
//! - [`keys`]: the static table of key consumers and the default PKRS;
//! - [`window`]: per-CPU protection state, write windows, the register
//!   check, and the save/restore around exceptions, over a
//!   [`ProtectionRegisters`] backend (the kernel's reads and writes MSRs
//!   and control registers; the tests' keep them in memory);
//! - [`fault`]: page-fault decoding and the `pkfault=` policy's decisions;
//! - [`policy`]: the `ptprot=` and `pkfault=` options.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cpu;
pub mod fault;
pub mod key;
pub mod keys;
pub mod policy;
pub mod window;

pub use fault::{Access, FaultAction, FaultHandler, PageFaultError, PkFault};
pub use key::{Pkey, Pkrs, Rights};
pub use keys::{CAPABILITY_KEY, METADATA_KEY, PAGE_TABLE_KEY, THREAD_KEY, default_pkrs};
pub use policy::{FaultPolicy, ProtectionPolicy};
pub use window::{
    CpuProtection, Mechanism, ProtectionRegisters, SavedProtection, Violation, ViolationHandler,
    WindowKind,
};
