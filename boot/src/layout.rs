//! Where the kernel image lives, physically and virtually.
//!
//! These constants must match `boot/kernel.ld`, which cannot import them.

/// Physical address the image is loaded at (2 MiB keeps it clear of the
/// legacy low megabyte and makes it one 2 MiB page).
pub const KERNEL_PHYS: u64 = 0x20_0000;

/// Most bytes the image spans from [`KERNEL_PHYS`]: the stub maps its
/// first 2 MiB with 4 KiB pages, and `kernel.ld` asserts the image ends
/// inside them. Boot modules must stay clear of this place
/// (`modules::check_placement`).
pub const KERNEL_IMAGE_MAX: u64 = 2 << 20;

/// Virtual base of the kernel window: the top 2 GiB of the address space.
/// Physical address `p` below [`BOOT_WINDOW_SIZE`] is visible at
/// `KERNEL_VIRT + p` from the moment the stub enters 64-bit code.
pub const KERNEL_VIRT: u64 = 0xffff_ffff_8000_0000;

/// How much physical memory the boot stub maps at [`KERNEL_VIRT`]: one page
/// directory of 2 MiB pages.
pub const BOOT_WINDOW_SIZE: u64 = 1 << 30;

/// The smallest guest memory (QEMU `-m`) the kernel boots with on QEMU's PC
/// memory map. Boot needs its image, the page allocator's metadata and one
/// whole free 2 MiB pageblock above them for page-table memory; QEMU keeps
/// the top 128 KiB of low RAM reserved, so `-m 6M` leaves no such
/// pageblock and `-m 7M` leaves one. The boot stub and `memory::bring_up`
/// check the real requirement against the real memory map and name this
/// figure when they refuse; the boot matrix test checks both sides of it.
pub const MIN_MEMORY: u64 = 7 << 20;

/// Below this much guest memory the boot stub itself (at [`KERNEL_PHYS`])
/// is not in RAM: QEMU jumps to an empty entry point and the guest hangs
/// without a word. The runner refuses such a size before starting QEMU;
/// from here up to [`MIN_MEMORY`] the kernel says why it cannot boot.
pub const MIN_ENTRY_MEMORY: u64 = KERNEL_PHYS + (1 << 20);

// What the two figures promise on QEMU's pc memory map, which keeps the
// top 128 KiB of low RAM reserved, checked when the crate builds: the entry
// stub's page lies in RAM from MIN_ENTRY_MEMORY; at MIN_MEMORY a whole
// 2 MiB pageblock lies above the one the image starts in, and one MiB less
// leaves none (the image's own end depends on the build: the QEMU boot
// matrix checks it); and the README's figures are these.
const PC_RESERVED_TOP: u64 = 128 << 10;
const FIRST_FREE_PAGEBLOCK: u64 = KERNEL_PHYS + (2 << 20);
const _: () = assert!(KERNEL_PHYS + 4096 <= MIN_ENTRY_MEMORY - PC_RESERVED_TOP);
const _: () = assert!(MIN_ENTRY_MEMORY <= MIN_MEMORY);
const _: () = assert!(FIRST_FREE_PAGEBLOCK + (2 << 20) <= MIN_MEMORY - PC_RESERVED_TOP);
const _: () = assert!(FIRST_FREE_PAGEBLOCK + (2 << 20) > MIN_MEMORY - (1 << 20) - PC_RESERVED_TOP);
const _: () = assert!(MIN_ENTRY_MEMORY == 3 << 20 && MIN_MEMORY == 7 << 20);

/// The kernel-window address of a physical address, if the boot window
/// covers `len` bytes from it.
pub fn boot_window_addr(phys: u64, len: u64) -> Option<u64> {
    let end = phys.checked_add(len)?;
    (end <= BOOT_WINDOW_SIZE).then(|| KERNEL_VIRT + phys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_window_bounds() {
        assert_eq!(boot_window_addr(0, 16), Some(KERNEL_VIRT));
        assert_eq!(
            boot_window_addr(BOOT_WINDOW_SIZE - 8, 8),
            Some(KERNEL_VIRT + BOOT_WINDOW_SIZE - 8)
        );
        assert_eq!(boot_window_addr(BOOT_WINDOW_SIZE - 8, 9), None);
        assert_eq!(boot_window_addr(u64::MAX, 2), None);
        // Far above the window: no overflow computing an address.
        assert_eq!(boot_window_addr(4 << 30, 8), None);
    }
}
