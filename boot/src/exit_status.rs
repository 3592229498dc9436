//! How the guest ends a QEMU run with a status the host can read, shared by
//! the boot stub, the kernel and the host runner so the three agree.
//!
//! QEMU's `isa-debug-exit` device (port [`DEBUG_EXIT_PORT`]) exits with
//! `(v << 1) | 1` when the guest writes `v`. The values are chosen so that
//! no outcome maps to 0 (QEMU's status after a triple fault with
//! `-no-reboot`) or 1 (QEMU's own errors): neither can pass for success.

/// The I/O port of QEMU's `isa-debug-exit` device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Boot or tests finished cleanly (status 33).
pub const SUCCESS: u32 = 0x10;
/// A panic, an unexpected exception, or a failed test (status 35).
pub const FAILURE: u32 = 0x11;
/// The command line was rejected (status 37).
pub const BAD_COMMAND_LINE: u32 = 0x12;
/// Guest memory is too small to boot (status 39).
pub const NOT_ENOUGH_MEMORY: u32 = 0x13;

/// QEMU's exit status when the guest writes `value` to the device.
pub const fn qemu_status(value: u32) -> i32 {
    // `+ 1` rather than `| 1`: the same value (bit 0 is clear), and a
    // mutation of it is caught.
    ((value << 1) + 1) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_documented_ones() {
        assert_eq!(
            [SUCCESS, FAILURE, BAD_COMMAND_LINE, NOT_ENOUGH_MEMORY].map(qemu_status),
            [33, 35, 37, 39]
        );
    }
}
