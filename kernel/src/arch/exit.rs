//! Ending the machine with a status the host can read.
//!
//! QEMU's `isa-debug-exit` device (port 0xf4) exits with `(v << 1) | 1`
//! when the kernel writes `v`. The codes are chosen so that no outcome maps
//! to 0 (QEMU's status after a triple fault with `-no-reboot`) or 1 (QEMU's
//! own errors): neither can pass for success.

use x86::io::outl;

const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How the kernel ended; the host runner maps the status back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Boot or tests finished cleanly: status 33.
    Success = 0x10,
    /// A panic, an unexpected exception, or a failed test: status 35.
    Failure = 0x11,
    /// The command line was rejected: status 37.
    BadCommandLine = 0x12,
}

/// Ends the machine. Without the exit device (a plain `-M pc` run), halts.
pub fn exit_qemu(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is the debug-exit device or nothing; writing to an
    // absent port has no effect.
    unsafe { outl(DEBUG_EXIT_PORT, code as u32) };
    super::cpu::halt_forever()
}
