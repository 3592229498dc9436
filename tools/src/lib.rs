//! Host tools for the kernel: the QEMU runner with in-process defmt
//! decoding, memory pictures, page-table traces and the policy lab.
//!
//! The runner boots the kernel ELF under QEMU (PVH boot), streams COM1 (text:
//! console and the `test NAME ... ok|FAILED` protocol) and COM2 (binary defmt
//! frames) live, maps QEMU's isa-debug-exit status to an [`Outcome`], and
//! returns everything in a [`RunReport`]. Inputs the kernel cannot report
//! itself (a command line over its limit, memory that does not reach its
//! entry point) are refused before QEMU starts, with the kernel's wording
//! and status. The `runner` binary is a thin CLI over [`run`]; the QEMU
//! integration tests in `tests/` call the same API.
//!
//! Modules:
//! - [`error`]: [`RunnerError`], every way a run can fail before the kernel
//!   gets to say anything.
//! - [`outcome`]: [`Outcome`], the meaning of QEMU's exit status.
//! - [`preflight`]: the checks made before QEMU starts, and [`Refusal`].
//! - [`report`]: [`RunReport`] and parsing of the COM1 test protocol.
//! - [`defmt_log`]: loading the defmt table from the ELF and decoding COM2.
//! - [`qemu`]: [`QemuConfig`], finding (or installing) QEMU, [`run`], and
//!   the retry of a KVM `-cpu host` that QEMU cannot set up.
//! - [`workspace`]: where the workspace, the kernel image and the root
//!   task are, [`build_kernel`] and [`build_roottask`].
//! - [`memmap`]: the kernel's pageblock-map dump format (it owns it), its
//!   writer and parser; [`memmap_svg`] draws a dump (the `memmap` binary).
//! - [`trace`]: the page-table trace format, its checking parser, writer
//!   and synthetic generator (the `trace` binary, `tools/traces/`);
//!   [`replay`] runs a trace against `ptalloc` on its simulator.
//! - [`lab`]: the policy lab's matrix of strategies, protections and
//!   workloads, its results, table and plots (the `lab` binary).

pub mod attack_matrix;
pub mod defmt_log;
pub mod error;
pub mod lab;
pub mod memmap;
pub mod memmap_svg;
pub mod outcome;
pub mod preflight;
pub mod qemu;
pub mod replay;
pub mod report;
pub mod trace;
pub mod workspace;

pub use error::RunnerError;
pub use outcome::Outcome;
pub use preflight::Refusal;
pub use qemu::{Accel, CpuFallback, QemuConfig, find_or_install_qemu, kvm_cpu_fallback, run};
pub use report::{RunReport, parse_test_line};
pub use workspace::{
    build_kernel, build_roottask, default_kernel_path, default_roottask_path, workspace_root,
};
