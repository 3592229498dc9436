//! The text console on COM1: boot report, test protocol, fault reports.
//!
//! COM1 carries human-readable UTF-8 lines only; binary defmt frames go to
//! COM2 (see [`crate::log`]). Output before [`init`] is dropped.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

const COM1_PORT: u16 = 0x3f8;

static COM1: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Sets up COM1. Returns false if the UART failed its self-test, in which
/// case the console stays silent (the exit code still reports the outcome).
pub fn init() -> bool {
    // SAFETY: 0x3f8..0x3f8+8 is COM1 on the PC platform; only this module
    // touches those ports, and only through this one device.
    let uart = unsafe { Uart16550Tty::new_port(COM1_PORT, Config::default()) };
    match uart {
        Ok(uart) => {
            *COM1.lock() = Some(uart);
            true
        }
        Err(_) => false,
    }
}

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments<'_>) {
    if let Some(uart) = COM1.lock().as_mut() {
        // The UART's writer cannot fail.
        let _ = uart.write_fmt(args);
    }
}

/// Writes one byte a user thread gave (`DebugPutChar`): printable ASCII
/// and newlines as they are, anything else as `?`, so a user cannot send
/// the terminal control sequences or break the line protocol the test
/// harness reads.
pub fn put_byte(byte: u8) {
    let shown = if byte == b'\n' || byte.is_ascii_graphic() || byte == b' ' {
        byte
    } else {
        b'?'
    };
    if let Some(captured) = USER_CAPTURE.lock().as_mut() {
        // A full capture drops the rest: the test sees it was cut.
        let _ = captured.push(shown);
        return;
    }
    print_args(format_args!("{}", shown as char));
}

/// What user threads print while [`capture_user_output`] runs.
static USER_CAPTURE: Mutex<Option<heapless::Vec<u8, 256>>> = Mutex::new(None);

/// Runs `f` with user output (`put_byte`) kept instead of printed, and
/// returns it with `f`'s result: for in-kernel tests, whose own
/// `test NAME ... ok` lines user output would break.
pub fn capture_user_output<T>(f: impl FnOnce() -> T) -> (T, heapless::Vec<u8, 256>) {
    *USER_CAPTURE.lock() = Some(heapless::Vec::new());
    let result = f();
    let captured = USER_CAPTURE.lock().take().unwrap_or_default();
    (result, captured)
}

/// Prints even if the console lock is held (a fault may strike while
/// printing), by breaking the lock.
///
/// # Safety
/// Only for the fatal path: the caller must never return to code that may
/// hold the console lock, and no other CPU may be printing.
pub unsafe fn print_fatal(args: fmt::Arguments<'_>) {
    if COM1.is_locked() {
        // SAFETY: the holder never runs again (caller's contract), so no
        // second reference to the UART is ever used alongside ours.
        unsafe { COM1.force_unlock() };
    }
    print_args(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_args(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print_args(format_args!("{}\n", format_args!($($arg)*))) };
}
