//! [`RunnerError`]: the ways a run fails before the kernel's own verdict is
//! known (no QEMU, no kernel image, a failed build, host I/O).
//!
//! What the kernel reports is not an error here: a panic or a triple fault is
//! an [`crate::Outcome`] inside a successful [`crate::RunReport`].

use std::io;
use std::path::PathBuf;

/// Why the runner could not produce a [`crate::RunReport`].
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// `qemu-system-x86_64` is not on PATH and could not be installed here.
    #[error("qemu-system-x86_64 was not found on PATH; {hint}")]
    QemuNotFound {
        /// What to do about it, with the exact command.
        hint: String,
    },

    /// The automatic install of QEMU was attempted and failed.
    #[error("installing QEMU failed: `{command}` {status}; install it by hand with `{hint}`")]
    QemuInstallFailed {
        /// The command that failed.
        command: String,
        /// How it ended (e.g. "exited with status 100").
        status: String,
        /// The command to run by hand.
        hint: String,
    },

    /// The kernel ELF does not exist (or is not a file).
    #[error(
        "kernel image not found at {}; build it with `cargo build --package kernel --target \
         x86_64-unknown-none` from the workspace root (or pass --build to the runner)",
        .0.display()
    )]
    KernelNotFound(PathBuf),

    /// The boot module (`--initrd`) does not exist (or is not a file).
    #[error(
        "boot module not found at {}: --initrd (make run ROOTTASK=) names the root task's ELF file",
        .0.display()
    )]
    InitrdNotFound(PathBuf),

    /// `cargo build` of the kernel failed.
    #[error("building the kernel failed: `{command}` {status}")]
    KernelBuildFailed {
        /// The cargo command line.
        command: String,
        /// How it ended.
        status: String,
    },

    /// `cargo build` of the root task failed.
    #[error("building the root task failed: `{command}` {status}")]
    RootTaskBuildFailed {
        /// The cargo command line (run in `kernel/roottask`).
        command: String,
        /// How it ended.
        status: String,
    },

    /// A host I/O operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the runner was doing, as a phrase ("starting QEMU").
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl RunnerError {
    /// Wraps an I/O error with a phrase saying what the runner was doing.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Describes how a child process ended, for error messages.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended abnormally".to_string(),
    }
}
