//! The defmt logger: binary frames on COM2, decoded by the host runner.
//!
//! defmt keeps format strings in the ELF and sends only indices and
//! arguments, so logging is cheap enough to leave on in hot paths. Frames
//! are rzcobs-encoded (defmt's default) and must not share a port with the
//! text console.
//!
//! A frame is open from `acquire` to `release`, with interrupts off and the
//! logger owned by one CPU. If the owning CPU asks again (an exception or
//! NMI handler that logs mid-frame, or a `Format` impl that logs), spinning
//! would hang it silently, so that is a panic instead, as defmt's contract
//! asks. The panic and fault reports never log through defmt.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

const COM2_PORT: u16 = 0x2f8;

/// The encoder and port, used only by the CPU recorded in [`OWNER`].
struct LoggerState {
    encoder: defmt::Encoder,
    uart: Option<Uart16550<PioBackend>>,
    /// Whether interrupts were enabled when the frame began.
    interrupts_were_on: bool,
}

struct Shared(UnsafeCell<LoggerState>);

// SAFETY: the state is reached only through `with_state`, which requires
// owning the logger, so at most one context touches it at a time.
unsafe impl Sync for Shared {}

const NO_OWNER: u32 = u32::MAX;
/// The CPU (APIC id) that has a frame open, or NO_OWNER.
static OWNER: AtomicU32 = AtomicU32::new(NO_OWNER);
static STATE: Shared = Shared(UnsafeCell::new(LoggerState {
    encoder: defmt::Encoder::new(),
    uart: None,
    interrupts_were_on: false,
}));

/// Runs `f` on the logger state.
///
/// # Safety
/// The calling CPU must own the logger (see [`take`]) and must not hold
/// another reference obtained from this function.
unsafe fn with_state<R>(f: impl FnOnce(&mut LoggerState) -> R) -> R {
    // SAFETY: this CPU owns the logger (caller's contract) and runs with
    // interrupts off, so no other reference exists.
    f(unsafe { &mut *STATE.0.get() })
}

/// Makes this CPU the logger's owner, waiting for another CPU's frame to
/// end. Panics if this CPU already owns it (re-entry would never end).
fn take() {
    let me = crate::arch::cpu::current_cpu_id();
    if OWNER.load(Ordering::Relaxed) == me {
        panic!("defmt logger re-entered on CPU {me}: something logged while a frame was open");
    }
    while OWNER
        .compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
}

fn give_back() {
    OWNER.store(NO_OWNER, Ordering::Release);
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
    take();
    // SAFETY: we own the logger.
    unsafe { with_state(|state| state.uart = Some(uart)) };
    give_back();
    true
}

fn send(uart: &mut Option<Uart16550<PioBackend>>, bytes: &[u8]) {
    if let Some(uart) = uart {
        uart.send_bytes_exact(bytes);
    }
}

#[defmt::global_logger]
struct Com2Logger;

// SAFETY: acquire/release bracket every frame with the logger owned by one
// CPU and interrupts off, so frames never interleave; write and flush run
// only between them; re-entry on the owning CPU panics instead of sharing.
unsafe impl defmt::Logger for Com2Logger {
    fn acquire() {
        let interrupts_were_on = crate::arch::cpu::interrupts_enabled();
        crate::arch::cpu::disable_interrupts();
        take();
        // SAFETY: we own the logger.
        unsafe {
            with_state(|state| {
                state.interrupts_were_on = interrupts_were_on;
                let LoggerState { encoder, uart, .. } = state;
                encoder.start_frame(|bytes| send(uart, bytes));
            })
        }
    }

    /// # Safety
    /// defmt's contract: only between `acquire` and `release`. Nothing is
    /// buffered, so there is nothing to flush.
    unsafe fn flush() {}

    /// # Safety
    /// defmt's contract: only after `acquire`, once per frame.
    unsafe fn release() {
        // SAFETY: defmt calls release only after acquire: we own the logger.
        let interrupts_were_on = unsafe {
            with_state(|state| {
                let LoggerState { encoder, uart, .. } = state;
                encoder.end_frame(|bytes| send(uart, bytes));
                state.interrupts_were_on
            })
        };
        give_back();
        if interrupts_were_on {
            crate::arch::cpu::enable_interrupts();
        }
    }

    /// # Safety
    /// defmt's contract: only between `acquire` and `release`.
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
