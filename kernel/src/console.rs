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

/// Prints on the fatal path, even if the console lock is held (the fault
/// may have struck while printing). Never returns to normal operation
/// afterwards, so the broken lock does not matter.
pub fn print_fatal(args: fmt::Arguments<'_>) {
    if COM1.is_locked() {
        // SAFETY: only called on the fatal path, which never returns to the
        // code holding the lock, and only one CPU runs kernel code today.
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

/// Prints a line on the fatal path (see [`print_fatal`]).
#[macro_export]
macro_rules! fatal_println {
    ($($arg:tt)*) => { $crate::console::print_fatal(format_args!("{}\n", format_args!($($arg)*))) };
}
