//! The defmt logger: binary frames on COM2, decoded by the host runner.
//!
//! defmt keeps format strings in the ELF and sends only indices and
//! arguments, so logging is cheap enough to leave on in hot paths. Frames
//! are rzcobs-encoded (defmt's default) and must not share a port with the
//! text console. The fatal path does not log through defmt: a fault inside
//! a frame would deadlock on the logger's lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

const COM2_PORT: u16 = 0x2f8;

/// The encoder and port, used only by the holder of [`TAKEN`].
struct LoggerState {
    encoder: defmt::Encoder,
    uart: Option<Uart16550<PioBackend>>,
    /// Whether interrupts were enabled when the frame began.
    interrupts_were_on: bool,
}

struct Shared(UnsafeCell<LoggerState>);

// SAFETY: the state is reached only through `with_state`, which requires
// holding TAKEN, so at most one context touches it at a time.
unsafe impl Sync for Shared {}

static TAKEN: AtomicBool = AtomicBool::new(false);
static STATE: Shared = Shared(UnsafeCell::new(LoggerState {
    encoder: defmt::Encoder::new(),
    uart: None,
    interrupts_were_on: false,
}));

/// Runs `f` on the logger state.
///
/// # Safety
/// The caller must hold [`TAKEN`].
unsafe fn with_state<R>(f: impl FnOnce(&mut LoggerState) -> R) -> R {
    // SAFETY: TAKEN is held (caller's contract), so no other reference exists.
    f(unsafe { &mut *STATE.0.get() })
}

/// Sets up COM2. Frames logged before this are dropped.
pub fn init() -> bool {
    // SAFETY: 0x2f8..0x2f8+8 is COM2 on the PC platform; only this module
    // touches those ports.
    let uart = unsafe { Uart16550::new_port(COM2_PORT) };
    let Ok(mut uart) = uart else { return false };
    if uart.init(Config::default()).is_err() {
        return false;
    }
    acquire_lock();
    // SAFETY: we hold TAKEN.
    unsafe { with_state(|state| state.uart = Some(uart)) };
    TAKEN.store(false, Ordering::Release);
    true
}

fn acquire_lock() {
    while TAKEN
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
}

fn send(uart: &mut Option<Uart16550<PioBackend>>, bytes: &[u8]) {
    if let Some(uart) = uart {
        uart.send_bytes_exact(bytes);
    }
}

#[defmt::global_logger]
struct Com2Logger;

// SAFETY: acquire/release bracket every frame under TAKEN with interrupts
// off, so frames never interleave; write/flush run only between them.
unsafe impl defmt::Logger for Com2Logger {
    fn acquire() {
        let interrupts_were_on = crate::arch::cpu::interrupts_enabled();
        crate::arch::cpu::disable_interrupts();
        acquire_lock();
        // SAFETY: we hold TAKEN.
        unsafe {
            with_state(|state| {
                state.interrupts_were_on = interrupts_were_on;
                let LoggerState { encoder, uart, .. } = state;
                encoder.start_frame(|bytes| send(uart, bytes));
            })
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: defmt calls release only after acquire, so we hold TAKEN.
        let interrupts_were_on = unsafe {
            with_state(|state| {
                let LoggerState { encoder, uart, .. } = state;
                encoder.end_frame(|bytes| send(uart, bytes));
                state.interrupts_were_on
            })
        };
        TAKEN.store(false, Ordering::Release);
        if interrupts_were_on {
            crate::arch::cpu::enable_interrupts();
        }
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: defmt calls write only between acquire and release.
        unsafe {
            with_state(|state| {
                let LoggerState { encoder, uart, .. } = state;
                encoder.write(bytes, |out| send(uart, out));
            })
        }
    }
}
