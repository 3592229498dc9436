//! Attacks on single page-table pages (`ptalloc`'s single-page fallback)
//! and on their record, a full record refusing before any change, and the
//! walk against a single page left without its key. The pages are made
//! through the backend's own single-page path, the one the fallback takes,
//! so the tests run on every machine without filling memory first.

use super::*;
use crate::arch::recovery::write_u64_if_writable;
use crate::memory::direct_map::DIRECT_MAP_BASE;
use crate::memory::frames::{self, Frame};
use crate::memory::{ephemeral, pte, verify, walk};
use crate::pkfault::with_policy;
use crate::testing::TestFailure;
use pkeys::FaultPolicy;
use ptalloc::{DirectMap, DirectMapError, Freetype, PageblockRange, Pfn};

fn fail(line: u32, message: core::fmt::Arguments<'_>) -> TestFailure {
    TestFailure::new(file!(), line, message)
}

fn mechanism() -> Mechanism {
    pks::current().map_or(Mechanism::None, |p| p.mechanism())
}

/// The pageblock holding `pfn`, for a flush.
fn pageblock_of(pfn: Pfn) -> PageblockRange {
    PageblockRange {
        start: Pfn(pfn.0 & !(FRAMES_PER_PAGEBLOCK as u64 - 1)),
        pageblocks: 1,
    }
}

/// Gives the frame `pfn` protection `to` (it has `from`) through the
/// backend's single-page path with the split reserve, and flushes, as the
/// allocator's fallback does.
fn protect_frame(pfn: Pfn, from: Protection, to: Protection) -> Result<(), DirectMapError> {
    let allocator = frames::allocator().ok_or(DirectMapError::Failed)?;
    // The split takes reserve pages: top it up first, as the allocator
    // does after a fallback (best effort: a split reports an empty one).
    let _ = allocator.refill_reserve();
    allocator
        .with_split_reserve(|backend, pages| {
            let report = backend.protect_frame(pfn, from, to, pages)?;
            backend.flush(pageblock_of(pfn));
            Ok(report)
        })
        .map(|_| ())
}

/// A kernel frame of the test's, given the page-table key by itself;
/// dropping it gives it back `Mapped`, then frees it.
struct SinglePageTable(Option<Frame>);

impl SinglePageTable {
    fn new() -> Result<Self, TestFailure> {
        let frame = frames::alloc_frame(0, Freetype::KERNEL, true)
            .map_err(|e| fail(line!(), format_args!("no frame: {e:?}")))?;
        let pfn = Pfn(frame.addr() / 4096);
        // On failure the frame is as it was: dropping it frees it.
        protect_frame(pfn, Protection::Mapped, SINGLE)
            .map_err(|e| fail(line!(), format_args!("protect_frame: {e:?}")))?;
        Ok(Self(Some(frame)))
    }

    fn addr(&self) -> u64 {
        self.0.as_ref().map_or(0, Frame::addr)
    }
}

impl Drop for SinglePageTable {
    fn drop(&mut self) {
        let Some(frame) = self.0.take() else { return };
        if protect_frame(Pfn(frame.addr() / 4096), SINGLE, Protection::Mapped).is_err() {
            // Still keyed: freed, it would be handed out as kernel memory
            // that faults. Keep it; the harness reports the frame as held.
            core::mem::forget(frame);
        }
    }
}

/// The bitmap word of the record holding the single page at `phys`, and
/// its bit; `None` if its pageblock is not mixed.
fn record_word(phys: u64) -> Option<(&'static AtomicU64, u64)> {
    let Block::Mixed(slot) = block((phys / PAGEBLOCK_BYTES) as usize) else {
        return None;
    };
    let (word, mask) = bit(((phys % PAGEBLOCK_BYTES) / 4096) as usize);
    Some((&SINGLES.frames[slot][word], mask))
}

crate::kernel_test! {
    /// A single page-table page in a mixed pageblock: the record names it
    /// (and not its neighbours), its direct-map leaf is its own 4 KiB one,
    /// the ephemeral slot refuses it, and a stray write to it through the
    /// direct map faults with the page-table key under `pks` (is refused
    /// under `ro`, lands under `none`), while a neighbour in the same
    /// pageblock stays ordinary writable memory.
    fn stray_write_to_a_single_page_table_page() -> TestResult {
        let single = SinglePageTable::new()?;
        let addr = single.addr();
        let block_start = addr & !(PAGEBLOCK_BYTES - 1);
        // A neighbour the allocator manages (not the image, whose alias is
        // read-only, nor a hole), `Mapped` by the record.
        let managed = |p: u64| {
            frames::allocator()
                .and_then(|a| a.frame_info(Pfn(p / 4096)))
                .is_some_and(|info| info.state != ptalloc::FrameState::Hole)
        };
        let neighbour = (block_start..block_start + PAGEBLOCK_BYTES)
            .step_by(4096)
            .find(|&p| p != addr && managed(p) && protection(p) == Protection::Mapped);
        let mixed = matches!(block((addr / PAGEBLOCK_BYTES) as usize), Block::Mixed(_));
        let seen = (protection(addr), pageblock_protection(addr), mixed);
        let leaf = walk::leaf(crate::arch::cpu::read_cr3(), DIRECT_MAP_BASE + addr).map(|l| l.size);
        let slot_refused = ephemeral::with_frame(addr, |_| ()).is_none();

        let target = (DIRECT_MAP_BASE + addr) as *mut u64;
        // What a corrupted entry would hold: a writable mapping of frame 1.
        let forged = 0x1000 | pte::PRESENT | pte::WRITABLE;
        // SAFETY: the test's own page (zeroed); if the write lands it is
        // put back below.
        let landed = with_policy(FaultPolicy::Report, || unsafe { write_u64_if_writable(target, forged) }).is_ok();
        let fault_key = crate::pkfault::last_fault().and_then(|f| f.key);
        if landed {
            // SAFETY: as above; writable, since the write landed.
            unsafe { target.write_volatile(0) };
        }
        // The control: a word of a `Mapped` neighbour takes a write of the
        // value it holds.
        let control = neighbour.map(|n| {
            let word = (DIRECT_MAP_BASE + n) as *mut u64;
            // SAFETY: an ordinary page of a mapped pageblock, readable;
            // rewriting the value it holds changes nothing.
            let value = unsafe { word.read_volatile() };
            // SAFETY: as above.
            unsafe { write_u64_if_writable(word, value) }.is_ok()
        });
        drop(single);

        crate::check_eq!(seen, (SINGLE, Protection::Mapped, true));
        crate::check_eq!(leaf, Some(walk::LeafSize::Page));
        crate::check!(slot_refused, "the ephemeral slot showed a page-table page");
        crate::check_eq!(control, Some(true), "the rest of the pageblock is not ordinary memory");
        match mechanism() {
            Mechanism::Pks => {
                crate::check!(!landed, "the stray write to a single page-table page landed");
                crate::check_eq!(fault_key, Some(pkeys::PAGE_TABLE_KEY));
            }
            Mechanism::WriteProtect => crate::check!(!landed, "the page is writable under ro"),
            Mechanism::None => crate::check!(landed, "the write did not land without protection"),
        }
        crate::check_eq!(protection(addr), Protection::Mapped, "not given back");
        Ok(())
    }
}

crate::kernel_test! {
    /// A stray write to the record of single page-table pages, clearing
    /// the bit of a live one (which would let `paging` and the ephemeral
    /// slot map it as ordinary memory): under `pks` it faults with key 2,
    /// under `ro` it is refused, under `none` it lands.
    fn stray_write_to_the_single_page_record() -> TestResult {
        let single = SinglePageTable::new()?;
        let addr = single.addr();
        let Some((word, mask)) = record_word(addr) else {
            return Err(fail(line!(), format_args!("{addr:#x} is not in a mixed pageblock")));
        };
        let target = word.as_ptr();
        // SAFETY: a word of the record, readable.
        let before = unsafe { target.read_volatile() };
        // SAFETY: the record's own word; if the write lands it is undone at
        // once below.
        let landed = with_policy(FaultPolicy::Report, || unsafe { write_u64_if_writable(target, before & !mask) }).is_ok();
        let fault_key = crate::pkfault::last_fault().and_then(|f| f.key);
        if landed {
            // Undo it through the record's own door.
            with_window(|| word.fetch_or(mask, Ordering::Release));
        }
        let still_named = is_single_page(addr);
        drop(single);
        crate::check_eq!(before & mask, mask, "the page was not recorded");
        match mechanism() {
            Mechanism::Pks => {
                crate::check!(!landed, "the stray write to the record landed");
                crate::check_eq!(fault_key, Some(METADATA_KEY));
            }
            Mechanism::None => crate::check!(landed, "the write did not land without protection"),
            Mechanism::WriteProtect => crate::check!(!landed, "the record is writable under ro"),
        }
        crate::check!(still_named, "the record lost the page");
        Ok(())
    }
}

crate::kernel_test! {
    /// The walk fails when a single page-table page's direct-map leaf
    /// loses its key (flipped through the page-table door, and put back),
    /// and when the record names a page whose entry never got it; put
    /// back, it passes again.
    fn walk_sees_a_single_page_table_page_without_its_protection() -> TestResult {
        if crate::boot_state().ptprot == pkeys::ProtectionPolicy::None {
            return Err(TestFailure::skipped("ptprot=none protects nothing"));
        }
        let single = SinglePageTable::new()?;
        let addr = single.addr();
        let virt = DIRECT_MAP_BASE + addr;
        let clean = verify::verify();
        let Some(leaf) = walk::leaf(crate::arch::cpu::read_cr3(), virt) else {
            return Err(fail(line!(), format_args!("no direct-map leaf for {addr:#x}")));
        };
        // The leaf as a plain mapping: key 0, writable.
        let unprotected = pkeys::key::pte_with_key(leaf.entry, pkeys::Pkey::DEFAULT) | pte::WRITABLE;
        let entry = (DIRECT_MAP_BASE + leaf.entry_phys) as *mut u64;
        let set = |value: u64| {
            // SAFETY: the live leaf of the test's own page, in a direct-map
            // table (reached through the direct map, writable in the
            // window); only attribute bits change, so it maps the same
            // frame; the stale translation is dropped below.
            pte::with_window(|window| unsafe { pte::write(window, entry, value) });
            // SAFETY: invalidating one translation is always safe.
            unsafe { x86::tlb::flush(virt as usize) };
        };
        set(unprotected);
        let flipped = verify::verify();
        set(leaf.entry);
        let restored = verify::verify();
        drop(single);

        // A page the record names while its entry stays as it was.
        let plain = frames::alloc_frame(0, Freetype::KERNEL, true)
            .map_err(|e| fail(line!(), format_args!("no frame: {e:?}")))?;
        let recorded = record_single_protected(plain.addr());
        let named_only = verify::verify();
        let forgotten = record_single_given_back(plain.addr());
        let plain_addr = plain.addr();
        drop(plain);

        crate::check!(clean.passed(), "{:?}", clean.failure());
        crate::check_eq!(leaf.size, walk::LeafSize::Page);
        crate::check_eq!((flipped.violations, flipped.first_violation.map(|v| v.phys)), (1, Some(addr)));
        crate::check!(matches!(flipped.failure(), Some(verify::Failure::Unprotected { .. })));
        crate::check!(restored.passed(), "{:?}", restored.failure());
        crate::check_eq!((recorded, forgotten), (Ok(()), Ok(())));
        crate::check_eq!((named_only.violations, named_only.first_violation.map(|v| v.phys)), (1, Some(plain_addr)));
        crate::check!(verify::verify().passed());
        Ok(())
    }
}

crate::kernel_test! {
    /// With every slot of the record taken, a single page in a pageblock
    /// that has none is refused with `Failed` before anything changes:
    /// the leaf, the split reserve and the split counts are as they were.
    fn a_full_single_page_record_refuses_first() -> TestResult {
        let Some(allocator) = frames::allocator() else {
            return Err(fail(line!(), format_args!("no allocator")));
        };
        // A frame in a pageblock without single pages (the record needs a
        // new slot for it): a whole pageblock has none; on a machine with
        // no whole one free, a page outside the mixed pageblocks (those
        // tried meanwhile are held).
        let mut others: heapless::Vec<Frame, 32> = heapless::Vec::new();
        let outside_mixed =
            |frame: &Frame| block((frame.addr() / PAGEBLOCK_BYTES) as usize) == Block::Whole(Protection::Mapped);
        let target = match frames::alloc_frame(ptalloc::PAGEBLOCK_ORDER, Freetype::KERNEL, false) {
            Ok(block) => block,
            Err(_) => loop {
                let frame = frames::alloc_frame(0, Freetype::KERNEL, false)
                    .map_err(|e| fail(line!(), format_args!("no frame: {e:?}")))?;
                if outside_mixed(&frame) {
                    break frame;
                }
                if let Err(frame) = others.push(frame) {
                    drop(frame);
                    return Err(TestFailure::skipped(
                        "needs a free kernel page outside the pageblocks holding single page-table pages",
                    ));
                }
            },
        };
        crate::check!(outside_mixed(&target), "{:?} lies in a mixed pageblock", target);
        // Fill every free slot with a pageblock past RAM, which the direct
        // map does not cover.
        let past_ram = allocator.frames().div_ceil(FRAMES_PER_PAGEBLOCK as u64) as usize;
        let mut fakes: heapless::Vec<u64, MIXED_SLOTS> = heapless::Vec::new();
        for index in past_ram..MAX_PAGEBLOCKS {
            if block(index) != Block::Whole(Protection::Mapped) {
                continue;
            }
            let phys = index as u64 * PAGEBLOCK_BYTES;
            match record_single_protected(phys) {
                // One per free slot: the Vec has room for every slot.
                Ok(()) => drop(fakes.push(phys)),
                Err(_) => break,
            }
        }
        let full = single_pages().1;
        let pfn = Pfn(target.addr() / 4096);
        let virt = DIRECT_MAP_BASE + target.addr();
        let leaf_before = walk::leaf(crate::arch::cpu::read_cr3(), virt);
        let stats_before = allocator.stats();
        let result = allocator.with_split_reserve(|backend, pages| {
            backend.protect_frame(pfn, Protection::Mapped, SINGLE, pages)
        });
        let leaf_after = walk::leaf(crate::arch::cpu::read_cr3(), virt);
        let stats_after = allocator.stats();
        let named = protection(target.addr());
        let undone = fakes.iter().all(|&phys| record_single_given_back(phys).is_ok());
        drop(target);
        drop(others);

        crate::check_eq!(full, MIXED_SLOTS, "the record was not full");
        crate::check_eq!(result, Err(DirectMapError::Failed));
        crate::check_eq!(leaf_after, leaf_before, "the map changed");
        crate::check_eq!(
            (stats_after.reserve_level, stats_after.splits_1g, stats_after.splits_2m),
            (stats_before.reserve_level, stats_before.splits_1g, stats_before.splits_2m)
        );
        crate::check_eq!(named, Protection::Mapped);
        crate::check!(undone, "a fake single page could not be taken out");
        Ok(())
    }
}
