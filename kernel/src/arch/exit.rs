//! Ending the machine with a status the host can read.
//!
//! The values and the port are `boot::exit_status`'s, which the boot stub
//! and the host runner share.

use boot::exit_status;
use x86::io::{inb, outl};

/// The serial ports' line-status registers (COM1 and COM2 base + 5).
const LINE_STATUS_PORTS: [u16; 2] = [0x3f8 + 5, 0x2f8 + 5];
/// Line status: transmitter holding register and shift register empty.
const TRANSMITTER_EMPTY: u8 = 1 << 6;
/// Reads of a line-status register before giving up on it (a port with
/// no UART reads 0xff, which shows empty at once).
const DRAIN_POLLS: u32 = 1 << 20;

/// Waits until both serial ports have sent their last byte: the exit
/// device ends QEMU at once, and bytes still in a UART's FIFO (which QEMU
/// holds while the host end of the port is slow) would be lost, the last
/// log frame with them.
fn drain_serial_ports() {
    for port in LINE_STATUS_PORTS {
        for _ in 0..DRAIN_POLLS {
            // SAFETY: reading a UART's line-status register has no side
            // effect on the transmitter; the ports are COM1 and COM2.
            if unsafe { inb(port) } & TRANSMITTER_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

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
    drain_serial_ports();
    // SAFETY: the port is the debug-exit device or nothing; writing to an
    // absent port has no effect.
    unsafe { outl(exit_status::DEBUG_EXIT_PORT, code as u32) };
    super::cpu::halt_forever()
}
