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
//! Today it holds detection ([`cpu`]), page-fault decoding ([`fault`]) and
//! the policies chosen on the command line ([`policy`]). PKRS state and
//! write windows join it with the PKS mechanism work.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cpu;
pub mod fault;
pub mod policy;

pub use fault::PageFaultError;
pub use policy::{FaultPolicy, ProtectionPolicy};
