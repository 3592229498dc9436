//! W^X for the kernel image, and a read-only direct-map alias of it.
//!
//! The threat model is a data-only attacker: one stray or chosen write.
//! That only holds if the code, and the tables that steer it, cannot be
//! written. The boot stub maps the image's place (its first
//! `KERNEL_IMAGE_MAX` bytes, one page table per 2 MiB) with 4 KiB pages,
//! all writable and executable; [`protect`] rewrites every entry of those
//! tables by section, from the linker script's page-aligned boundaries:
//! - the boot stub's note and 32-bit code (dead after boot): `r--`;
//! - `.text`: `r-x`;
//! - `.rodata`, the recovery table, the test registry and
//!   `.ro_after_init` (the IDT, the GDT and the TSS, written once at
//!   boot): `r--`;
//! - `.data` and `.bss` (stacks, early page tables, statics): `rw-`, with
//!   the early page tables keeping the key (or read-only bit) they got,
//!   except the guard page below each of the boot CPU's IST stacks and
//!   its entry stack: unmapped;
//! - the rest of the place, which is not the image: unmapped (a table
//!   past the image's last 2 MiB is unlinked by then, and left empty).
//!
//! Every frame of the image also gets a read-only, no-execute alias in the
//! direct map, except the early page tables, which keep their page-table
//! protection there (page-table windows write them through it). The image
//! shares its pageblock with nothing the allocator converts (the pageblock
//! is never whole-free), so no conversion rewrites these entries.

use super::direct_map::DIRECT_MAP_BASE;
use super::pte::{self, ADDRESS, NO_EXECUTE, PRESENT, WRITABLE};
use super::{frames, kernel_image_phys, tlb};
use crate::arch::cpu;
use boot::layout::{KERNEL_IMAGE_MAX, KERNEL_PHYS, KERNEL_VIRT};
use ptalloc::Pfn;

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_virt_end: u8;
}

/// What a page of the image may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and execute: `.text`.
    ReadExecute,
    /// Read only: the boot stub, `.rodata` to `.ro_after_init`.
    ReadOnly,
    /// Read and write: `.data` and `.bss`.
    ReadWrite,
    /// Not the image: unmapped.
    Absent,
    /// A guard page below one of the boot CPU's IST stacks or its entry
    /// stack: unmapped.
    Guard,
}

/// The page-aligned section boundaries, as virtual addresses.
struct Layout {
    text: core::ops::Range<u64>,
    read_only: core::ops::Range<u64>,
    writable: core::ops::Range<u64>,
}

fn layout() -> Layout {
    let at = |symbol: *const u8| symbol as u64;
    Layout {
        text: at(&raw const __text_start)..at(&raw const __text_end),
        read_only: at(&raw const __rodata_start)..at(&raw const __rodata_end),
        writable: at(&raw const __data_start)..at(&raw const __kernel_virt_end),
    }
}

/// Physical range of the image's read-only part: the boot stub, text,
/// rodata and `.ro_after_init`. No mapping of it may be writable.
pub(super) fn read_only_phys() -> core::ops::Range<u64> {
    KERNEL_PHYS..layout().read_only.end - KERNEL_VIRT
}

/// The access the page at `virt` (in the image's place) gets.
pub fn access(virt: u64) -> Access {
    let layout = layout();
    if crate::arch::gdt::guard_pages().contains(&(virt & !0xfff)) {
        Access::Guard
    } else if layout.text.contains(&virt) {
        Access::ReadExecute
    } else if layout.read_only.contains(&virt) {
        Access::ReadOnly
    } else if layout.writable.contains(&virt) {
        Access::ReadWrite
    } else if (KERNEL_VIRT + KERNEL_PHYS..layout.text.start).contains(&virt) {
        Access::ReadOnly
    } else {
        Access::Absent
    }
}

/// Pages of each kind, for the boot report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageProtection {
    /// `r-x` pages.
    pub read_execute: u64,
    /// `r--` pages (the boot stub included).
    pub read_only: u64,
    /// `rw-` pages.
    pub read_write: u64,
    /// Pages of the image's place unmapped because they are not the image.
    pub unmapped: u64,
    /// Guard pages unmapped below the boot CPU's IST and entry stacks.
    pub guards: u64,
    /// Frames whose direct-map alias became read-only.
    pub direct_map_read_only: u64,
    /// Direct-map splits that took.
    pub splits_2m: u32,
}

/// Why the image could not be protected.
#[derive(Clone, Copy, Debug)]
pub enum ImageError {
    /// No page allocator (for the split reserve).
    NoAllocator,
    /// Refilling the split reserve failed.
    Reserve(ptalloc::AllocError),
    /// The direct map refused a change.
    DirectMap(u64, ptalloc::DirectMapError),
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoAllocator => write!(f, "no page allocator"),
            Self::Reserve(error) => write!(f, "filling the split reserve: {error}"),
            Self::DirectMap(phys, error) => {
                write!(
                    f,
                    "making frame {phys:#x} read-only in the direct map: {error:?}"
                )
            }
        }
    }
}

/// Applies W^X to the image and makes its direct-map alias read-only. Call
/// once at boot, after the IDT and GDT are loaded and the early page tables
/// reprotected.
pub(super) fn protect() -> Result<ImageProtection, ImageError> {
    let mut done = ImageProtection::default();
    let tables = super::boot_stub_image_tables();
    let nx = cpu::no_execute_bit();
    // Every entry of every table, with the page it maps: table i maps the
    // i-th 2 MiB of the place.
    let pages = tables.iter().enumerate().flat_map(|(index, &table)| {
        (0..512).map(move |slot| {
            let at = ((KERNEL_VIRT + table) as *mut u64).wrapping_add(slot);
            (
                at,
                KERNEL_VIRT + KERNEL_PHYS + ((index * 512 + slot) as u64) * 4096,
            )
        })
    });
    pte::with_window(|window| {
        for (at, virt) in pages {
            // SAFETY: an entry of a boot stub's image page table, in the
            // image and mapped at -2 GiB by one of them; read whole.
            let entry = unsafe { at.read_volatile() };
            if entry & PRESENT == 0 {
                continue; // the boot stack's guard page
            }
            let new = match access(virt) {
                Access::ReadExecute => {
                    done.read_execute += 1;
                    entry & !(WRITABLE | NO_EXECUTE)
                }
                Access::ReadOnly => {
                    done.read_only += 1;
                    (entry & !WRITABLE) | nx
                }
                // Keeps what early-table reprotection gave its tables.
                Access::ReadWrite => {
                    done.read_write += 1;
                    entry | nx
                }
                Access::Absent => {
                    done.unmapped += 1;
                    0
                }
                Access::Guard => {
                    done.guards += 1;
                    0
                }
            };
            // SAFETY: as above; every page keeps its frame, the image's
            // code stays executable and its data writable, and nothing
            // uses the pages past the image through this mapping.
            unsafe { pte::write(window, at, new) };
        }
    });

    let image = kernel_image_phys();
    for phys in (image.start..image.end).step_by(4096) {
        if super::paging::is_page_table_memory(phys) {
            continue;
        }
        done.splits_2m += read_only_alias(phys)?;
        done.direct_map_read_only += 1;
    }
    // Permissions were taken away in both mappings: flush everything.
    tlb::flush_all();
    Ok(done)
}

/// Makes the direct-map alias of the 4 KiB frame at `phys` read-only and
/// no-execute, splitting its 2 MiB mapping with a page of the split
/// reserve (refilled before and after), and returns the 2M->4K splits it
/// took. The caller flushes. For frames that stay allocated for the
/// kernel's life and that nothing writes once set up: the image, and each
/// AP's GDT and TSS (`arch::smp`); a frame freed with a read-only alias
/// would fault its next owner.
pub(crate) fn read_only_alias(phys: u64) -> Result<u32, ImageError> {
    let allocator = frames::allocator().ok_or(ImageError::NoAllocator)?;
    allocator.refill_reserve().map_err(ImageError::Reserve)?;
    let splits = allocator
        .with_split_reserve(|backend, pages| backend.read_only_page(Pfn(phys / 4096), pages))
        .map(|report| report.splits_2m)
        .map_err(|error| ImageError::DirectMap(phys, error))?;
    allocator.refill_reserve().map_err(ImageError::Reserve)?;
    Ok(splits)
}

/// The direct-map address of the image's frame behind `virt`.
fn direct_map_alias(virt: u64) -> u64 {
    DIRECT_MAP_BASE + (virt - KERNEL_VIRT)
}

crate::kernel_test! {
    /// Every page of the image has the access its section calls for, no
    /// page is both writable and executable, and the direct-map alias of
    /// every frame but the early page tables is read-only.
    fn image_is_write_xor_execute() -> TestResult {
        use crate::memory::walk::leaf;
        let root = cpu::read_cr3();
        let nx = cpu::no_execute_bit();
        let image = super::kernel_image_range();
        let mut seen = [0u64; 3];
        for virt in (KERNEL_VIRT + KERNEL_PHYS..image.end).step_by(4096) {
            let Some(found) = leaf(root, virt) else { continue };
            let writable = found.entry & WRITABLE != 0;
            let executable = found.entry & nx == 0;
            crate::check!(!(writable && executable) || nx == 0, "page {:#x} is W+X: {:#x}", virt, found.entry);
            let early = super::paging::is_page_table_memory(found.entry & ADDRESS);
            match access(virt) {
                Access::ReadExecute => {
                    crate::check!(!writable, "text page {:#x} is writable", virt);
                    seen[0] += 1;
                }
                Access::ReadOnly => {
                    crate::check!(!writable && !executable, "read-only page {:#x}: {:#x}", virt, found.entry);
                    seen[1] += 1;
                }
                Access::ReadWrite => {
                    crate::check!(!executable, "data page {:#x} is executable", virt);
                    seen[2] += 1;
                }
                Access::Absent => crate::check!(false, "{:#x} past the image is mapped", virt),
                Access::Guard => crate::check!(false, "stack guard page {:#x} is mapped", virt),
            }
            let alias = leaf(root, direct_map_alias(virt)).map(|l| l.entry);
            if !early {
                crate::check!(alias.is_some_and(|e| e & WRITABLE == 0), "the direct-map alias of {:#x} is writable: {:?}", virt, alias);
            }
        }
        crate::check!(seen.iter().all(|&n| n > 0), "pages seen: {:?}", seen);
        let guards = crate::arch::gdt::guard_pages();
        crate::check!(guards.iter().all(|&g| leaf(root, g).is_none()), "a stack guard page is mapped");
        crate::check_eq!(crate::boot_state().memory.image.guards, guards.len() as u64);
        let past = (image.end..KERNEL_VIRT + KERNEL_PHYS + KERNEL_IMAGE_MAX).step_by(4096);
        crate::check!(past.clone().all(|v| leaf(root, v).is_none()), "a page past the image is mapped");
        // Every entry of every image table: a page of the image maps its own
        // frame, through that very table; every other entry is empty.
        let stack_guard = boot::entry::boot_stack_guard_page().start;
        for (index, &table) in super::boot_stub_image_tables().iter().enumerate() {
            for slot in 0..512u64 {
                let offset = (index as u64 * 512 + slot) * 4096;
                let virt = KERNEL_VIRT + KERNEL_PHYS + offset;
                // SAFETY: an entry of a boot stub table, in the image and
                // mapped readable at -2 GiB; read whole, never written.
                let entry = unsafe { ((KERNEL_VIRT + table) as *const u64).add(slot as usize).read_volatile() };
                if virt != stack_guard && !matches!(access(virt), Access::Absent | Access::Guard) {
                    crate::check!(entry & PRESENT != 0 && entry & ADDRESS == KERNEL_PHYS + offset, "image table {} maps {:#x} with {:#x}", index, virt, entry);
                    let through = leaf(root, virt).map(|l| l.entry_phys & !0xfff);
                    crate::check!(through == Some(table), "{:#x} is mapped through {:x?}, not image table {}", virt, through, index);
                } else {
                    crate::check!(entry == 0, "image table {} maps {:#x}, not the image: {:#x}", index, virt, entry);
                }
            }
        }
        Ok(())
    }
}

/// Attacks on the image: each tries the write with a probe that survives
/// the fault, and a control write to a writable static shows the probe
/// sees a write that lands.
mod attacks {
    use super::*;
    use crate::arch::recovery::{Faulted, write_u64_if_writable};

    static CONTROL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

    /// Rewrites the word at `addr` with the value it holds; true if the
    /// write was allowed.
    fn lands(addr: u64) -> bool {
        let word = addr as *mut u64;
        // SAFETY: `addr` is an aligned word of the image or its alias,
        // mapped readable; writing back what it holds changes nothing if
        // the write lands.
        unsafe { write_u64_if_writable(word, word.read_volatile()) != Err(Faulted) }
    }

    crate::kernel_test! {
        /// One stray write cannot patch code, the IDT, the GDT, the TSS,
        /// read-only data or the recovery table, at -2 GiB or through the direct map;
        /// a write to a writable static lands (the control).
        fn image_writes_are_refused() -> TestResult {
            let control = CONTROL.as_ptr() as u64;
            crate::check!(lands(control), "the control write did not land");
            crate::check!(!lands(direct_map_alias(control)), "the control's direct-map alias is writable");
            let idt = crate::arch::idt::table_address();
            let gdt = crate::arch::gdt::table_address();
            let tss = crate::arch::gdt::tss_address();
            let code = image_writes_are_refused as *const () as u64 & !7;
            let rodata = layout().read_only.start;
            for (what, addr) in [("code", code), ("IDT", idt), ("GDT", gdt), ("TSS", tss), ("read-only data", rodata)] {
                crate::check!(!lands(addr), "a write to the {} at {:#x} landed", what, addr);
                crate::check!(!lands(direct_map_alias(addr)), "a write to the {}'s direct-map alias landed", what);
            }
            Ok(())
        }
    }
}
