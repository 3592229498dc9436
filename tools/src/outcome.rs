//! [`Outcome`]: what QEMU's exit status means under the kernel's
//! isa-debug-exit contract.
//!
//! The kernel writes a value v to port 0xf4 and QEMU exits with
//! `(v << 1) | 1`. Only 0x10 (status 33) is a pass. A triple fault under
//! `-no-reboot` exits with 0 and QEMU's own errors with 1, so neither 0 nor 1
//! may ever be read as success. The kernel's values and the mapping to
//! statuses come from `boot::exit_status`, which the guest uses too.

use std::fmt;
use std::time::Duration;

use boot::exit_status::{self, qemu_status};

/// Exit status QEMU reports when the kernel reports success (33).
pub const STATUS_SUCCESS: i32 = qemu_status(exit_status::SUCCESS);
/// Exit status for a panic, unexpected exception or failed test (35).
pub const STATUS_KERNEL_FAILURE: i32 = qemu_status(exit_status::FAILURE);
/// Exit status when the kernel rejected its `-append` options (37).
pub const STATUS_BAD_COMMAND_LINE: i32 = qemu_status(exit_status::BAD_COMMAND_LINE);
/// Exit status when guest memory is too small to boot (39).
pub const STATUS_NOT_ENOUGH_MEMORY: i32 = qemu_status(exit_status::NOT_ENOUGH_MEMORY);
/// Exit status after a triple fault or reset with `-no-reboot`.
pub const STATUS_TRIPLE_FAULT: i32 = 0;
/// Exit status of QEMU's own errors (bad option, unloadable kernel, ...).
pub const STATUS_QEMU_ERROR: i32 = 1;

/// How a QEMU run ended. Only [`Outcome::Success`] is a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel wrote 0x10: everything it ran passed (status 33).
    Success,
    /// The kernel wrote 0x11: panic, unexpected exception or failed test (35).
    KernelFailure,
    /// The kernel wrote 0x12: it rejected its `-append` options (37); or the
    /// runner refused them before starting QEMU ([`crate::Refusal`]).
    BadCommandLine,
    /// The kernel wrote 0x13: guest memory is too small to boot (39); or
    /// the runner refused a memory size below the kernel's entry stub.
    NotEnoughMemory,
    /// QEMU exited with 0: triple fault or CPU reset under `-no-reboot`.
    TripleFaultOrReset,
    /// QEMU exited with 1: QEMU itself failed; its stderr says why.
    QemuError,
    /// Any other exit status.
    UnexpectedStatus(i32),
    /// QEMU was killed by a signal the runner did not send.
    Signalled,
    /// The runner's timeout expired and it killed QEMU.
    Timeout(Duration),
}

impl Outcome {
    /// Maps QEMU's exit status to an outcome.
    pub fn from_status(status: i32) -> Self {
        match status {
            STATUS_SUCCESS => Self::Success,
            STATUS_KERNEL_FAILURE => Self::KernelFailure,
            STATUS_BAD_COMMAND_LINE => Self::BadCommandLine,
            STATUS_NOT_ENOUGH_MEMORY => Self::NotEnoughMemory,
            STATUS_TRIPLE_FAULT => Self::TripleFaultOrReset,
            STATUS_QEMU_ERROR => Self::QemuError,
            other => Self::UnexpectedStatus(other),
        }
    }

    /// Maps a finished QEMU process's status (exit code or signal).
    pub fn from_exit_status(status: std::process::ExitStatus) -> Self {
        match status.code() {
            Some(code) => Self::from_status(code),
            None => Self::Signalled,
        }
    }

    /// True only when the kernel itself reported success.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }

    /// The `runner` CLI's process exit code for this outcome. Distinct per
    /// variant so scripts can tell them apart; 1 and 2 are left for the
    /// runner's own errors and for bad CLI options (clap's code).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Success => 0,
            Self::KernelFailure => 10,
            Self::BadCommandLine => 11,
            Self::TripleFaultOrReset => 12,
            Self::QemuError => 13,
            Self::UnexpectedStatus(_) => 14,
            Self::Signalled => 15,
            Self::Timeout(_) => 16,
            Self::NotEnoughMemory => 17,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => write!(f, "kernel reported success (exit status {STATUS_SUCCESS})"),
            Self::KernelFailure => write!(
                f,
                "kernel reported failure: panic, unexpected exception or failed test \
                 (exit status {STATUS_KERNEL_FAILURE})"
            ),
            Self::BadCommandLine => write!(
                f,
                "kernel rejected its command line, the -append options \
                 (exit status {STATUS_BAD_COMMAND_LINE})"
            ),
            Self::NotEnoughMemory => write!(
                f,
                "kernel refused to boot: not enough memory (exit status {STATUS_NOT_ENOUGH_MEMORY})"
            ),
            Self::TripleFaultOrReset => write!(
                f,
                "triple fault or CPU reset (QEMU exited with status 0 under -no-reboot)"
            ),
            Self::QemuError => write!(
                f,
                "QEMU itself failed (exit status {STATUS_QEMU_ERROR}, see its stderr)"
            ),
            Self::UnexpectedStatus(code) if code & 1 == 1 && *code > 0 => write!(
                f,
                "unexpected QEMU exit status {code} (kernel wrote {:#x} to the debug-exit port)",
                code >> 1
            ),
            Self::UnexpectedStatus(code) => write!(f, "unexpected QEMU exit status {code}"),
            Self::Signalled => write!(f, "QEMU was killed by a signal"),
            Self::Timeout(limit) => write!(
                f,
                "timed out after {} (QEMU killed)",
                crate::report::format_duration(*limit)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_statuses_map_to_their_outcomes() {
        assert_eq!(Outcome::from_status(33), Outcome::Success);
        assert_eq!(Outcome::from_status(35), Outcome::KernelFailure);
        assert_eq!(Outcome::from_status(37), Outcome::BadCommandLine);
        assert_eq!(Outcome::from_status(39), Outcome::NotEnoughMemory);
        assert_eq!(Outcome::from_status(0), Outcome::TripleFaultOrReset);
        assert_eq!(Outcome::from_status(1), Outcome::QemuError);
        assert_eq!(Outcome::from_status(3), Outcome::UnexpectedStatus(3));
        assert_eq!(Outcome::from_status(41), Outcome::UnexpectedStatus(41));
        assert_eq!(Outcome::from_status(-1), Outcome::UnexpectedStatus(-1));
        assert_eq!(Outcome::from_status(255), Outcome::UnexpectedStatus(255));
    }

    #[test]
    fn statuses_are_the_boot_crates() {
        assert_eq!(
            [
                STATUS_SUCCESS,
                STATUS_KERNEL_FAILURE,
                STATUS_BAD_COMMAND_LINE,
                STATUS_NOT_ENOUGH_MEMORY
            ],
            [33, 35, 37, 39]
        );
    }

    #[test]
    fn only_success_passes() {
        for status in [0, 1, 2, 32, 34, 35, 37, 39, 255] {
            assert!(
                !Outcome::from_status(status).is_success(),
                "status {status}"
            );
        }
        assert!(Outcome::from_status(33).is_success());
        assert!(!Outcome::Signalled.is_success());
        assert!(!Outcome::Timeout(Duration::from_secs(1)).is_success());
    }

    #[test]
    fn exit_status_of_a_real_process_is_mapped() {
        use std::os::unix::process::ExitStatusExt;
        // A raw wait status of (33 << 8) is "exited with 33"; 9 is "killed by SIGKILL".
        let exited = std::process::ExitStatus::from_raw(33 << 8);
        assert_eq!(Outcome::from_exit_status(exited), Outcome::Success);
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(Outcome::from_exit_status(killed), Outcome::Signalled);
    }

    #[test]
    fn cli_exit_codes_are_distinct_and_zero_only_for_success() {
        let all = [
            Outcome::Success,
            Outcome::KernelFailure,
            Outcome::BadCommandLine,
            Outcome::TripleFaultOrReset,
            Outcome::QemuError,
            Outcome::UnexpectedStatus(7),
            Outcome::Signalled,
            Outcome::Timeout(Duration::from_secs(1)),
            Outcome::NotEnoughMemory,
        ];
        let mut codes: Vec<u8> = all.iter().map(Outcome::exit_code).collect();
        assert_eq!(codes[0], 0);
        // The runner's documented codes for the kernel's two refusals.
        assert_eq!(Outcome::BadCommandLine.exit_code(), 11);
        assert_eq!(Outcome::NotEnoughMemory.exit_code(), 17);
        assert!(codes[1..].iter().all(|&c| c >= 10));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn display_explains_plainly() {
        assert_eq!(
            Outcome::Success.to_string(),
            "kernel reported success (exit status 33)"
        );
        assert_eq!(
            Outcome::NotEnoughMemory.to_string(),
            "kernel refused to boot: not enough memory (exit status 39)"
        );
        assert_eq!(
            Outcome::Timeout(Duration::from_secs(60)).to_string(),
            "timed out after 60 s (QEMU killed)"
        );
        assert!(
            Outcome::TripleFaultOrReset
                .to_string()
                .contains("triple fault")
        );
        assert_eq!(
            Outcome::UnexpectedStatus(7).to_string(),
            "unexpected QEMU exit status 7 (kernel wrote 0x3 to the debug-exit port)"
        );
        assert_eq!(
            Outcome::UnexpectedStatus(4).to_string(),
            "unexpected QEMU exit status 4"
        );
    }
}
