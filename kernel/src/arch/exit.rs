//! Ending the machine with a status the host can read.
//!
//! The values and the port are `boot::exit_status`'s, which the boot stub
//! and the host runner share.

use boot::exit_status;
use x86::io::outl;

/// How the kernel ended; the host runner maps the status back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Boot or tests finished cleanly: status 33.
    Success = exit_status::SUCCESS,
    /// A panic, an unexpected exception, or a failed test: status 35.
    Failure = exit_status::FAILURE,
    /// The command line was rejected: status 37.
    BadCommandLine = exit_status::BAD_COMMAND_LINE,
    /// Memory is too small to boot: status 39.
    NotEnoughMemory = exit_status::NOT_ENOUGH_MEMORY,
}

/// Ends the machine. Without the exit device (a plain `-M pc` run), halts.
pub fn exit_qemu(code: ExitCode) -> ! {
    // SAFETY: the port is the debug-exit device or nothing; writing to an
    // absent port has no effect.
    unsafe { outl(exit_status::DEBUG_EXIT_PORT, code as u32) };
    super::cpu::halt_forever()
}
