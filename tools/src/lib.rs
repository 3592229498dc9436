//! Host tools for the kernel: the QEMU runner with in-process defmt decoding.
//!
//! The runner boots the kernel ELF under QEMU (PVH boot), streams COM1 (text:
//! console and the `test NAME ... ok|FAILED` protocol) and COM2 (binary defmt
//! frames) live, maps QEMU's isa-debug-exit status to an [`Outcome`], and
//! returns everything in a [`RunReport`]. The `runner` binary is a thin CLI
//! over [`run`]; the QEMU integration tests in `tests/` call the same API.
//!
//! Modules:
//! - [`error`]: [`RunnerError`], every way a run can fail before the kernel
//!   gets to say anything.
//! - [`outcome`]: [`Outcome`], the meaning of QEMU's exit status.
//! - [`report`]: [`RunReport`] and parsing of the COM1 test protocol.
//! - [`defmt_log`]: loading the defmt table from the ELF and decoding COM2.
//! - [`qemu`]: [`QemuConfig`], finding (or installing) QEMU, and [`run`].
//! - [`workspace`]: where the workspace and the kernel image are, and
//!   [`build_kernel`].

pub mod defmt_log;
pub mod error;
pub mod outcome;
pub mod qemu;
pub mod report;
pub mod workspace;

pub use error::RunnerError;
pub use outcome::Outcome;
pub use qemu::{Accel, QemuConfig, find_or_install_qemu, run};
pub use report::{RunReport, parse_test_line};
pub use workspace::{build_kernel, default_kernel_path, workspace_root};
