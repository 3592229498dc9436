//! Where the kernel image lives, physically and virtually.
//!
//! These constants must match `boot/kernel.ld`, which cannot import them.

/// Physical address the image is loaded at (2 MiB keeps it clear of the
/// legacy low megabyte and makes it start a 2 MiB page).
pub const KERNEL_PHYS: u64 = 0x20_0000;

/// Bytes of a pageblock, and of the page a boot page-directory entry maps.
const MIB2: u64 = 2 << 20;

/// Most bytes the image spans from [`KERNEL_PHYS`]: the stub maps its
/// first 4 MiB with 4 KiB pages (W^X and the boot stack's guard page need
/// them), and `kernel.ld` asserts the image ends inside them. Boot modules
/// must stay clear of this place (`modules::check_placement`).
pub const KERNEL_IMAGE_MAX: u64 = 4 << 20;

/// The stub's page tables for those 4 KiB pages, one per 2 MiB.
pub const IMAGE_PAGE_TABLES: usize = (KERNEL_IMAGE_MAX / MIB2) as usize;

/// Virtual base of the kernel window: the top 2 GiB of the address space.
/// Physical address `p` below [`BOOT_WINDOW_SIZE`] is visible at
/// `KERNEL_VIRT + p` from the moment the stub enters 64-bit code.
pub const KERNEL_VIRT: u64 = 0xffff_ffff_8000_0000;

/// How much physical memory the boot stub maps at [`KERNEL_VIRT`]: one page
/// directory of 2 MiB pages.
pub const BOOT_WINDOW_SIZE: u64 = 1 << 30;

const _: () = assert!(KERNEL_PHYS.is_multiple_of(MIB2) && KERNEL_IMAGE_MAX.is_multiple_of(MIB2));
// kernel.ld's messages say 4 MiB.
const _: () = assert!(IMAGE_PAGE_TABLES == 2 && KERNEL_PHYS + KERNEL_IMAGE_MAX <= BOOT_WINDOW_SIZE);

/// The smallest guest memory (QEMU `-m`) the kernel is promised to boot
/// with on QEMU's PC memory map, for any image the boot stub maps up to
/// [`MIN_MEMORY_IMAGE_MAX`] (4 MiB less 28 KiB). Boot needs its image,
/// the page allocator's metadata and one whole free 2 MiB pageblock above
/// them for page-table memory; QEMU keeps the top 128 KiB of low RAM
/// reserved. An image of up to 2 MiB less 24 KiB leaves that pageblock at
/// 4 MiB, and boots from 7 MiB ([`min_memory_for`]); past that the
/// pageblock moves to 6 MiB, which takes 9 MiB. The figure is the larger
/// one, so the image can grow to the stub's 4 MiB without the promise
/// changing. The boot stub and `memory::bring_up` check the real
/// requirement against the real memory map and name this figure when they
/// refuse; the boot matrix test checks both sides of it.
pub const MIN_MEMORY: u64 = 9 << 20;

/// The largest image [`MIN_MEMORY`] holds for. `kernel.ld` refuses to link
/// a larger one, rather than let the figure lie: raise [`MIN_MEMORY`] to
/// what its message names, with the README and the boot matrix.
pub const MIN_MEMORY_IMAGE_MAX: u64 = min(image_max_for(MIN_MEMORY), KERNEL_IMAGE_MAX);

/// `ptalloc::METADATA_BYTES_PER_FRAME`, which this crate cannot import (the
/// kernel asserts they agree): the metadata sits right above the image.
pub const METADATA_BYTES_PER_FRAME: u64 = 12;

/// Below this much guest memory the boot stub itself (at [`KERNEL_PHYS`])
/// is not in RAM: QEMU jumps to an empty entry point and the guest hangs
/// without a word. The runner refuses such a size before starting QEMU;
/// from here up to [`MIN_MEMORY`] the kernel says why it cannot boot.
pub const MIN_ENTRY_MEMORY: u64 = KERNEL_PHYS + (1 << 20);

/// QEMU's pc memory map keeps the top 128 KiB of low RAM reserved.
const PC_RESERVED_TOP: u64 = 128 << 10;

/// The largest image (bytes from [`KERNEL_PHYS`]) that boots with `memory`
/// bytes of guest memory on QEMU's pc map: the image and the allocator's
/// metadata must end at the last whole pageblock of RAM, which is then
/// free for page tables. 0 if none boots.
pub const fn image_max_for(memory: u64) -> u64 {
    let ram_end = memory.saturating_sub(PC_RESERVED_TOP);
    let free_block = (ram_end / MIB2).saturating_sub(1) * MIB2;
    let metadata = (ram_end.div_ceil(4096) * METADATA_BYTES_PER_FRAME).next_multiple_of(4096);
    free_block.saturating_sub(KERNEL_PHYS + metadata)
}

const fn min(a: u64, b: u64) -> u64 {
    if a < b { a } else { b }
}

/// The smallest whole-MiB guest memory that boots an image of `image`
/// bytes (see [`image_max_for`]), or `None` past [`KERNEL_IMAGE_MAX`].
pub const fn min_memory_for(image: u64) -> Option<u64> {
    if image > KERNEL_IMAGE_MAX {
        return None;
    }
    let mut memory = MIN_ENTRY_MEMORY;
    while image_max_for(memory) < image {
        memory += 1 << 20;
    }
    Some(memory)
}

// What the figures promise, checked when the crate builds: the entry
// stub's page lies in RAM from MIN_ENTRY_MEMORY; MIN_MEMORY is the
// smallest size for its image budget; and the README's figures are these.
const _: () = assert!(KERNEL_PHYS + 4096 <= MIN_ENTRY_MEMORY - PC_RESERVED_TOP);
const _: () = assert!(MIN_ENTRY_MEMORY <= MIN_MEMORY);
const _: () = assert!(image_max_for(MIN_MEMORY - (1 << 20)) < MIN_MEMORY_IMAGE_MAX);
const _: () = assert!(MIN_ENTRY_MEMORY == 3 << 20 && MIN_MEMORY == 9 << 20);

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

    #[test]
    fn min_memory_follows_the_image() {
        // 9 MiB: the pageblock at 6 MiB is free if the image and its
        // metadata end below it.
        assert_eq!(MIN_MEMORY_IMAGE_MAX, (4 << 20) - (28 << 10));
        assert_eq!(min_memory_for(MIN_MEMORY_IMAGE_MAX), Some(MIN_MEMORY));
        // A smaller image leaves the pageblock at 4 MiB free: 7 MiB.
        assert_eq!(min_memory_for(1 << 20), Some(7 << 20));
        assert_eq!(min_memory_for((2 << 20) - (24 << 10)), Some(7 << 20));
        // A page more and the free pageblock moves up to 6 MiB: 9 MiB
        // (8 MiB leaves RAM ending 128 KiB short of 8 MiB).
        assert_eq!(min_memory_for((2 << 20) - (20 << 10)), Some(9 << 20));
        assert_eq!(image_max_for(8 << 20), (2 << 20) - (24 << 10));
        assert_eq!(image_max_for(9 << 20), MIN_MEMORY_IMAGE_MAX);
        assert_eq!(min_memory_for(KERNEL_IMAGE_MAX), Some(11 << 20));
        assert_eq!(min_memory_for(KERNEL_IMAGE_MAX + 4096), None);
        // No whole pageblock above the image, or no RAM at all.
        assert_eq!(image_max_for(6 << 20), 0);
        assert_eq!(image_max_for(0), 0);
    }
}
