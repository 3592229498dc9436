//! In-kernel test of `ptalloc`'s single-page fallback on the real direct
//! map: with a live page in every pageblock, page tables keep coming, each
//! protected and named by the sealed record, until memory is really full.

use super::{DIRECT_MAP_BASE, Freetype, PAGE_TABLES, Pfn, Protection, allocator};
use crate::memory::held_frames::{Chain, PageblockSet};
use crate::memory::pte;
use crate::memory::sealed;
use crate::testing::TestFailure;
use ptalloc::{AllocError, AllocFlags};

/// Frames per 2 MiB pageblock.
const PAGEBLOCK_FRAMES: u64 = 1 << ptalloc::PAGEBLOCK_ORDER;
/// Whole free pageblocks the test leaves to be filled page by page; the
/// rest it holds as 2 MiB kernel frames. Without the cap a 4 GiB machine
/// would take a million single-page fallbacks (minutes under TCG, and
/// more mixed pageblocks than the sealed record has slots); with it the
/// fallback serves a few thousand pages at every size, and still runs
/// until memory is full.
const PAGEBLOCKS_IN_PLAY: u64 = 3;
/// Free pages of a mapped freetype, in the lists or a per-CPU cache: what
/// the fallback can still protect.
fn mapped_free(stats: &ptalloc::Stats) -> u64 {
    Freetype::all()
        .filter(|ft| ft.protection == Protection::Mapped)
        .map(|ft| stats.free_pages(ft) + stats.cached_pages[ft.index()])
        .sum()
}

/// True if the direct-map leaf of the page-table page at `phys` carries
/// the page-table protection under the mechanism in force.
fn keyed_in_direct_map(phys: u64, mechanism: pkeys::Mechanism) -> bool {
    let leaf = crate::memory::walk::leaf(crate::arch::cpu::read_cr3(), DIRECT_MAP_BASE + phys);
    leaf.is_some_and(|leaf| match mechanism {
        pkeys::Mechanism::Pks => pkeys::key::pte_key(leaf.entry) == pkeys::PAGE_TABLE_KEY,
        pkeys::Mechanism::WriteProtect => leaf.entry & pte::WRITABLE == 0,
        // Nothing protects page tables; the mapping is a plain one.
        pkeys::Mechanism::None => pkeys::key::pte_key(leaf.entry) == pkeys::keys::DEFAULT_KEY,
    })
}

/// What the page-table phase saw.
#[derive(Debug, Default)]
struct Seen {
    tables: u64,
    /// Of them, single page-table pages the sealed record names.
    singles: u64,
    /// Tables the sealed record does not call page-table memory.
    unrecognised: u64,
    /// Tables whose direct-map leaf lacks the protection.
    unkeyed: u64,
    error: Option<AllocError>,
    /// Mapped pages free when the error came.
    mapped_free_at_error: u64,
    /// Pages of any freetype free then.
    free_at_error: u64,
}

crate::kernel_test! {
    /// With a live kernel page in every pageblock that has free pages (and
    /// the rest held as 2 MiB frames), so that no whole pageblock is free
    /// to convert, page-table pages keep coming through the single-page
    /// fallback until less than a pageblock's worth of mapped memory is
    /// free: OutOfMemory then means memory is full. Every page table is
    /// page-table memory by the sealed record and protected in the direct
    /// map, the walk passes while they live and after they are freed, and
    /// the allocator's count of live single pages matches the record's.
    fn filled_pageblocks_still_give_page_tables() -> TestResult {
        let Some(frames) = allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let mechanism = crate::arch::pks::current().map_or(pkeys::Mechanism::None, |p| p.mechanism());
        let unprotected = crate::boot_state().ptprot == pkeys::ProtectionPolicy::None;
        let before = frames.stats();

        // 1. Hold whole pageblocks as 2 MiB frames, all but a few (the
        //    conversion watermark keeps its own whole on a large machine).
        //    A set, not a chain: under TCG the first write to each 2 MiB
        //    costs about a millisecond, seconds at 4 GiB.
        let mut blocks = PageblockSet::new();
        let mut held_blocks = 0u64;
        let mut unheld_blocks = 0u64;
        let mut free_failures = 0u64;
        while super::whole_free_pageblocks() > PAGEBLOCKS_IN_PLAY {
            match frames.alloc(0, ptalloc::PAGEBLOCK_ORDER, Freetype::KERNEL, AllocFlags::empty()) {
                Ok(pfn) if blocks.insert(pfn) => held_blocks += 1,
                // Past the set's reach (beyond 64 GiB): give it back, and
                // stop (the next allocation would return it again).
                Ok(pfn) => {
                    unheld_blocks += 1;
                    free_failures += u64::from(frames.free(0, pfn, ptalloc::PAGEBLOCK_ORDER).is_err());
                    break;
                }
                Err(_) => break,
            }
        }
        // 2. Every free kernel page, then one kept per pageblock.
        let mut pages = Chain::new(false);
        let fill_error = loop {
            match frames.alloc(0, 0, Freetype::KERNEL, AllocFlags::empty()) {
                Ok(pfn) => pages.push(pfn),
                Err(error) => break error,
            }
        };
        let mut seen = PageblockSet::new();
        let mut kept = Chain::new(false);
        while let Some(pfn) = pages.pop() {
            if seen.insert(pfn) {
                kept.push(pfn);
            } else if frames.free(0, pfn, 0).is_err() {
                free_failures += 1;
            }
        }
        frames.drain_caches();
        let filled = frames.stats();
        let whole_after_fill = filled.whole_free_pageblocks();

        // 3. Page tables, through the call `paging` makes, until it fails.
        let mut tables = Chain::new(true);
        let mut seen_tables = Seen::default();
        loop {
            match frames.alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO) {
                Ok(pfn) => {
                    seen_tables.tables += 1;
                    let phys = pfn.addr();
                    if !crate::memory::paging::is_page_table_memory(phys) {
                        seen_tables.unrecognised += 1;
                    }
                    if sealed::is_single_page(phys) {
                        seen_tables.singles += 1;
                    }
                    if !keyed_in_direct_map(phys, mechanism) {
                        seen_tables.unkeyed += 1;
                    }
                    tables.push(pfn);
                }
                Err(error) => {
                    seen_tables.error = Some(error);
                    let stats = frames.stats();
                    seen_tables.mapped_free_at_error = mapped_free(&stats);
                    seen_tables.free_at_error = Freetype::all()
                        .map(|ft| stats.free_pages(ft) + stats.cached_pages[ft.index()])
                        .sum();
                    break;
                }
            }
        }
        let at_peak = frames.stats();
        let walk_at_peak = crate::memory::verify::verify();
        let record_at_peak = sealed::single_pages();
        let filled_pageblocks = kept.len;

        // 4. Everything back, page tables first.
        for chain in [&mut tables, &mut kept] {
            while let Some(pfn) = chain.pop() {
                free_failures += u64::from(frames.free(0, pfn, 0).is_err());
            }
        }
        while let Some(pfn) = blocks.pop() {
            free_failures += u64::from(frames.free(0, pfn, ptalloc::PAGEBLOCK_ORDER).is_err());
        }
        frames.drain_caches();
        let after = frames.stats();
        let walk_after = crate::memory::verify::verify();
        let (record_after, mixed_after) = sealed::single_pages();
        // What stays a single page once everything is freed: pages the
        // fallback gave the split reserve, and those splits then used as
        // direct-map tables (the direct map never merges back).
        let mut kept_by_allocator = 0u64;
        let mut recorded_after = 0u64;
        sealed::for_each_single_page(|phys| {
            recorded_after += 1;
            let state = frames.frame_info(Pfn(phys / 4096)).map(|info| info.state);
            if matches!(state, Some(ptalloc::FrameState::Reserve | ptalloc::FrameState::DirectMapTable)) {
                kept_by_allocator += 1;
            }
        });

        let fallbacks = at_peak.single_page_fallbacks - before.single_page_fallbacks;
        defmt::info!(
            "fallback: {=u64} page tables ({=u64} single pages, {=u64} fallbacks, {=u64} 2M->4K splits, {=u64} conversions) after filling {=u64} pageblocks with a page each and holding {=u64} as 2 MiB frames; then {}, {=u64} mapped pages free ({=u64} of any freetype); {=u64} single pages recorded in {=usize} pageblocks at the peak, {=u64} in {=usize} after",
            seen_tables.tables,
            seen_tables.singles,
            fallbacks,
            at_peak.splits_2m - filled.splits_2m,
            at_peak.total_conversions() - filled.total_conversions(),
            filled_pageblocks,
            held_blocks,
            defmt::Debug2Format(&seen_tables.error),
            seen_tables.mapped_free_at_error,
            seen_tables.free_at_error,
            record_at_peak.0,
            record_at_peak.1,
            record_after,
            mixed_after
        );

        crate::check_eq!(free_failures, 0, "frames could not be freed");
        crate::check_eq!(unheld_blocks, 0, "2 MiB frames past the record's coverage");
        crate::check_eq!(fill_error, AllocError::OutOfMemory);
        crate::check!(
            whole_after_fill <= crate::boot_state().memory.frames.conversion_watermark as u64,
            "{} whole free pageblocks after filling",
            whole_after_fill
        );
        crate::check_eq!(seen_tables.error, Some(AllocError::OutOfMemory));
        crate::check!(
            seen_tables.mapped_free_at_error < PAGEBLOCK_FRAMES,
            "OutOfMemory with {} mapped pages free",
            seen_tables.mapped_free_at_error
        );
        crate::check!(fallbacks > 0, "no single-page fallback");
        crate::check!(seen_tables.singles > 0, "no single page was handed out as a page table");
        crate::check_eq!((seen_tables.unrecognised, seen_tables.unkeyed), (0, 0));
        crate::check_eq!(at_peak.single_pages_live, record_at_peak.0, "the record and the allocator disagree");
        crate::check!(
            walk_at_peak.passed() || unprotected,
            "walk at the peak: {:?}",
            walk_at_peak.failure()
        );
        crate::check!(walk_after.passed() || unprotected, "walk after: {:?}", walk_after.failure());
        crate::check_eq!(after.single_pages_live, recorded_after);
        crate::check_eq!(recorded_after, kept_by_allocator, "a single page outlived its page table");
        Ok(())
    }
}
