//! A temporary mapping of one frame, for touching frames the direct map
//! does not show (the `Unmapped` freetype): zeroing and copying them.
//!
//! One 4 KiB slot at [`EPHEMERAL_BASE`] (PML4 slot 510), reached through a
//! PDPT, a page directory and a page table from a small pool in the image,
//! recorded as early page tables. [`with_frame`] maps the frame, runs the
//! closure, unmaps it and flushes the slot, so the frame is visible only
//! for the closure's duration and only at that address. [`zero_frames`]
//! uses the slot's whole page table (2 MiB) to wipe up to a pageblock at
//! once, for two windows rather than two per frame; [`try_copy_frame`]
//! maps two frames at once (the source read-only) to copy a hidden frame
//! that compaction moves, and only tries the slot's lock, since it runs
//! inside an allocation. It is private to
//! `memory` and refuses page-table memory and the kernel image (the slot
//! is a writable key-0 mapping); [`copy_to`] and [`copy_from`] are the
//! public way in, on an owned `Frame` only. One slot: the boot
//! CPU is the only CPU; SMP gives each CPU its own.

use super::EARLY_PAGE_TABLES;
use super::frames::Frame;
use super::pte::{self, ADDRESS, PRESENT, WRITABLE};
use crate::arch::cpu;
use crate::sync::Mutex;
use boot::early_tables::{EarlyPageTable, RecordError, TableLevel, TableOrigin};
use boot::layout::KERNEL_VIRT;
use core::cell::UnsafeCell;

/// The slot's virtual address.
pub const EPHEMERAL_BASE: u64 = 0xffff_ff00_0000_0000;

#[repr(C, align(4096))]
struct Tables(UnsafeCell<[[u64; 512]; 3]>);

// SAFETY: written by `init` once, then only the slot entry, under SLOT.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables(UnsafeCell::new([[0; 512]; 3]));
/// Serialises use of the slot; holds whether `init` ran.
static SLOT: Mutex<bool> = Mutex::new(false);

fn table(index: usize) -> *mut [u64; 512] {
    TABLES.0.get().cast::<[u64; 512]>().wrapping_add(index)
}

fn phys(table: *mut [u64; 512]) -> u64 {
    table as u64 - KERNEL_VIRT
}

/// Builds the slot's tables, records them, and links them into the live
/// PML4. Call once, at boot.
pub(super) fn init() -> Result<(), RecordError> {
    let (pdpt, pd, pt) = (table(0), table(1), table(2));
    {
        let mut early = EARLY_PAGE_TABLES.lock();
        for (table, level) in [
            (pdpt, TableLevel::Pdpt),
            (pd, TableLevel::Pd),
            (pt, TableLevel::Pt),
        ] {
            early.record(EarlyPageTable {
                phys: phys(table),
                level,
                origin: TableOrigin::EarlyKernel,
            })?;
        }
    }
    let root = cpu::read_cr3() & ADDRESS;
    let slot = ((EPHEMERAL_BASE >> 39) & 0x1ff) as usize;
    pte::with_window(|window| {
        // SAFETY: the three tables are this module's statics, not yet
        // linked; the PML4 slot is unused (nothing else lives at
        // EPHEMERAL_BASE); the live PML4 is in the image, reachable through
        // the boot window.
        unsafe {
            pte::write(window, pdpt.cast::<u64>(), phys(pd) | PRESENT | WRITABLE);
            pte::write(window, pd.cast::<u64>(), phys(pt) | PRESENT | WRITABLE);
            pte::write(
                window,
                ((KERNEL_VIRT + root) as *mut u64).add(slot),
                phys(pdpt) | PRESENT | WRITABLE,
            );
        }
    });
    *SLOT.lock() = true;
    Ok(())
}

/// Maps the 4 KiB frame at `frame_phys` at the slot, runs `f` on a pointer
/// to it, then unmaps and flushes it. `None` before [`init`], or if the
/// frame is page-table memory or part of the kernel image: the slot's
/// key-0 writable mapping would be an unprotected alias of it.
pub(super) fn with_frame<R>(frame_phys: u64, f: impl FnOnce(*mut u8) -> R) -> Option<R> {
    // Nor the kernel image: its code, read-only tables and sealed records
    // are protected by how the image maps them.
    if super::paging::is_page_table_memory(frame_phys)
        || super::kernel_image_phys().contains(&frame_phys)
    {
        return None;
    }
    map_at_slot(frame_phys, f)
}

/// [`with_frame`] for the one page-table frame the slot must show: a page
/// a 1 GiB split takes from an `Unmapped` gigabyte being converted to
/// page tables, which the direct map does not show yet. The backend fills
/// it here before linking it.
pub(super) fn with_new_split_table<R>(frame_phys: u64, f: impl FnOnce(*mut u8) -> R) -> Option<R> {
    map_at_slot(frame_phys, f)
}

fn map_at_slot<R>(frame_phys: u64, f: impl FnOnce(*mut u8) -> R) -> Option<R> {
    let ready = SLOT.lock();
    if !*ready {
        return None;
    }
    let entry = table(2).cast::<u64>();
    pte::with_window(|window| {
        // SAFETY: the slot's PTE, ours under SLOT; NX, kernel-only.
        unsafe {
            pte::write(
                window,
                entry,
                (frame_phys & ADDRESS) | PRESENT | WRITABLE | cpu::no_execute_bit(),
            )
        };
    });
    // SAFETY: invalidating one translation is always safe.
    unsafe { x86::tlb::flush(EPHEMERAL_BASE as usize) };
    let result = f(EPHEMERAL_BASE as *mut u8);
    pte::with_window(|window| {
        // SAFETY: as above; the frame stops being visible here.
        unsafe { pte::write(window, entry, 0) };
    });
    // SAFETY: as above.
    unsafe { x86::tlb::flush(EPHEMERAL_BASE as usize) };
    drop(ready);
    Some(result)
}

/// Zeroes `frames` 4 KiB frames from `start_phys` (a block of the
/// `Unmapped` freetype leaving it, whose old contents may be secrets)
/// through the slot's page table, up to 512 frames at a time: one window
/// maps them all, the zeroing runs outside it, and one more window unmaps
/// them. Frame by frame through [`with_frame`], a pageblock cost 1,024
/// windows. `None` before [`init`], or if any frame is page-table memory or
/// part of the kernel image (checked before anything is mapped).
pub(super) fn zero_frames(start_phys: u64, frames: u64) -> Option<()> {
    let refused = |phys: u64| {
        super::paging::is_page_table_memory(phys) || super::kernel_image_phys().contains(&phys)
    };
    if (0..frames).any(|frame| refused(start_phys + frame * 4096)) {
        return None;
    }
    let ready = SLOT.lock();
    if !*ready {
        return None;
    }
    let entries = table(2).cast::<u64>();
    let mut done = 0;
    while done < frames {
        let batch = (frames - done).min(512);
        let first = start_phys + done * 4096;
        pte::with_window(|window| {
            for i in 0..batch {
                let phys = first + i * 4096;
                // SAFETY: the slot table's entries, ours under SLOT (entry 0
                // is the one-frame slot, free while SLOT is held); NX,
                // kernel-only. They were empty and flushed, so no stale
                // translation exists for them.
                unsafe {
                    pte::write(
                        window,
                        entries.add(i as usize),
                        phys | PRESENT | WRITABLE | cpu::no_execute_bit(),
                    )
                };
            }
        });
        // SAFETY: the slot table maps `batch` frames from EPHEMERAL_BASE,
        // writable, for this function alone (SLOT is held); the frames are
        // the caller's.
        unsafe { (EPHEMERAL_BASE as *mut u8).write_bytes(0, (batch * 4096) as usize) };
        pte::with_window(|window| {
            for i in 0..batch {
                // SAFETY: as above; the frames stop being visible here.
                unsafe { pte::write(window, entries.add(i as usize), 0) };
            }
        });
        for i in 0..batch {
            // SAFETY: invalidating one translation is always safe.
            unsafe { x86::tlb::flush((EPHEMERAL_BASE + i * 4096) as usize) };
        }
        done += batch;
    }
    drop(ready);
    Some(())
}

/// Why [`try_copy_frame`] made no copy. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyError {
    /// The slot is in use: compaction, which calls this from inside an
    /// allocation, never waits for it.
    Busy,
    /// Before [`init`], or a frame is page-table memory or part of the
    /// kernel image.
    Refused,
}

/// Copies the 4 KiB frame at `from_phys` to the one at `to_phys`, frames
/// the direct map does not show (compaction moving an `Unmapped` movable
/// frame), through the slot table's first two entries: one window maps
/// the source read-only and the destination writable, the copy runs
/// outside it, one more window unmaps both. Tries the slot's lock and
/// never waits. Refuses page-table memory and the kernel image, as
/// [`with_frame`] does.
pub(super) fn try_copy_frame(from_phys: u64, to_phys: u64) -> Result<(), CopyError> {
    let refused = |phys: u64| {
        super::paging::is_page_table_memory(phys) || super::kernel_image_phys().contains(&phys)
    };
    if refused(from_phys) || refused(to_phys) {
        return Err(CopyError::Refused);
    }
    let ready = SLOT.try_lock().ok_or(CopyError::Busy)?;
    if !*ready {
        return Err(CopyError::Refused);
    }
    let entries = table(2).cast::<u64>();
    let nx = cpu::no_execute_bit();
    pte::with_window(|window| {
        // SAFETY: the slot table's first two entries, ours under SLOT
        // (entry 0 is the one-frame slot, free while SLOT is held); NX,
        // kernel-only, the source read-only. They were empty and flushed,
        // so no stale translation exists for them.
        unsafe {
            pte::write(window, entries, (from_phys & ADDRESS) | PRESENT | nx);
            pte::write(
                window,
                entries.add(1),
                (to_phys & ADDRESS) | PRESENT | WRITABLE | nx,
            );
        }
    });
    // SAFETY: the two entries map the source at EPHEMERAL_BASE and the
    // destination, writable, one page above, for this function alone
    // (SLOT is held); the frames are the caller's (compaction holds both
    // blocks while it moves one to the other).
    unsafe {
        core::ptr::copy_nonoverlapping(
            EPHEMERAL_BASE as *const u8,
            (EPHEMERAL_BASE + 4096) as *mut u8,
            4096,
        )
    };
    pte::with_window(|window| {
        // SAFETY: as above; the frames stop being visible here.
        unsafe {
            pte::write(window, entries, 0);
            pte::write(window, entries.add(1), 0);
        }
    });
    for page in [EPHEMERAL_BASE, EPHEMERAL_BASE + 4096] {
        // SAFETY: invalidating one translation is always safe.
        unsafe { x86::tlb::flush(page as usize) };
    }
    drop(ready);
    Ok(())
}

/// Clears the slot's entry and flushes it: undoes what the write-what-where
/// demo's simulated bug wrote there (under `ptprot=none`, where it lands).
pub fn repair_slot() {
    let _ready = SLOT.lock();
    pte::with_window(|window| {
        // SAFETY: the slot's PTE, ours under SLOT; clearing it only
        // removes a mapping nothing uses outside `with_frame`.
        unsafe { pte::write(window, table(2).cast::<u64>(), 0) };
    });
    // SAFETY: invalidating one translation is always safe.
    unsafe { x86::tlb::flush(EPHEMERAL_BASE as usize) };
}

/// The slot's page-table entry, at its kernel-image address: a live entry
/// in a live (protected) page table, which the write-what-where demo aims
/// at.
pub fn slot_entry() -> *mut u64 {
    table(2).cast::<u64>()
}

/// The slot address of byte `offset` of `frame`, if `len` bytes from it
/// stay inside one 4 KiB page of the block: (that page's physical
/// address, the offset in it).
fn page_of(frame: &Frame, offset: u64, len: usize) -> Option<(u64, usize)> {
    let end = offset.checked_add(len as u64)?;
    let block = 4096u64 << frame.order();
    let page = offset / 4096;
    (end <= block && end <= (page + 1) * 4096)
        .then(|| (frame.addr() + page * 4096, (offset % 4096) as usize))
}

/// Copies `data` into `frame` (an owned block, typically `Unmapped`) at
/// byte `offset`, through the slot. `None` before [`init`], or if the
/// bytes would leave the block or cross one of its 4 KiB pages.
pub fn copy_to(frame: &mut Frame, offset: u64, data: &[u8]) -> Option<()> {
    let (page, offset) = page_of(frame, offset, data.len())?;
    with_frame(page, |slot| {
        // SAFETY: the slot maps the whole page writable for the closure,
        // the range lies inside it (checked), and the frame is the
        // caller's (`&mut Frame`).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), slot.add(offset), data.len()) }
    })
}

/// Copies from `frame` at byte `offset` into `out`; `None` as for
/// [`copy_to`].
pub fn copy_from(frame: &Frame, offset: u64, out: &mut [u8]) -> Option<()> {
    let (page, offset) = page_of(frame, offset, out.len())?;
    with_frame(page, |slot| {
        // SAFETY: as in `copy_to`, reading.
        unsafe { core::ptr::copy_nonoverlapping(slot.add(offset), out.as_mut_ptr(), out.len()) }
    })
}

crate::kernel_test! {
    /// The slot refuses page-table memory (an early table, the kernel's
    /// root; a page of a page-table pageblock) and the kernel image (its
    /// code, and the sealed records). Before, `with_frame` and the copies
    /// were public, took any address and mapped it writable with key 0,
    /// and the root was written through them; now the copies take an
    /// owned `Frame`. The refusal is a check, not a key, so it holds under
    /// every policy; the caller's own frame still goes through (the
    /// control).
    fn the_slot_refuses_page_table_memory() -> TestResult {
        crate::check_eq!(with_frame(super::kernel_root(), |_| ()), None);
        let code = super::kernel_image_phys().start + 0x1000;
        crate::check_eq!(with_frame(code, |_| ()), None);
        let Some(allocator) = super::frames::allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let table = allocator.alloc(0, 0, super::frames::PAGE_TABLES, ptalloc::AllocFlags::ZERO);
        crate::check!(table.is_ok(), "{:?}", table);
        let Ok(table) = table else { return Ok(()) };
        let refused = with_frame(table.addr(), |_| ());
        crate::check_eq!(allocator.free(0, table, 0), Ok(()));
        crate::check_eq!(refused, None);
        let data = super::frames::alloc_frame(0, ptalloc::Freetype::KERNEL, true);
        crate::check!(data.is_ok_and(|mut d| copy_to(&mut d, 0, b"control").is_some()), "the control copy failed");
        Ok(())
    }
}

crate::kernel_test! {
    /// A block leaving `Unmapped` is wiped by `zero_frames`: every page of
    /// a pageblock written through the slot reads back as zero, for two
    /// windows in all (four PKRS writes under `pks`), not two per frame;
    /// and it refuses page-table memory as `with_frame` does.
    fn unmapped_blocks_are_wiped_in_two_windows() -> TestResult {
        super::frames::needs_free_pageblocks(1, "to convert to Unmapped")?;
        let hidden = ptalloc::Freetype {
            mobility: ptalloc::Mobility::Movable,
            protection: ptalloc::Protection::Unmapped,
        };
        let block = super::frames::alloc_frame(9, hidden, false);
        crate::check!(block.is_ok(), "no Unmapped pageblock: {:?}", block.as_ref().err());
        let Ok(mut block) = block else { return Ok(()) };
        let secret = *b"secret!!";
        for page in 0..512u64 {
            crate::check!(copy_to(&mut block, page * 4096 + 8 * (page % 512), &secret).is_some(), "copy_to failed");
        }
        let writes = || crate::arch::pks::current().map_or(0, |p| p.pkrs_writes());
        let before = writes();
        crate::check_eq!(zero_frames(block.addr(), 512), Some(()));
        let cost = writes() - before;
        for page in 0..512u64 {
            let mut read = [0xffu8; 8];
            crate::check!(copy_from(&block, page * 4096 + 8 * (page % 512), &mut read).is_some(), "copy_from failed");
            crate::check_eq!(read, [0u8; 8], "a page kept its contents");
        }
        if crate::arch::pks::current().map(|p| p.mechanism()) == Some(pkeys::Mechanism::Pks) {
            crate::check_eq!(cost, 4);
        }
        crate::check_eq!(zero_frames(super::kernel_root(), 1), None);
        Ok(())
    }
}
