//! Counters for every mechanism whose cost the design argues about.

use crate::NR_ORDERS;
use crate::backend::MappingCounts;
use crate::freetype::{Freetype, NR_FREETYPES};

/// A snapshot of the allocator's counters ([`PageAllocator::stats`](crate::PageAllocator::stats)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Free blocks by freetype index and order (excluding per-CPU caches).
    pub free_blocks: [[u64; NR_ORDERS]; NR_FREETYPES],
    /// Order-0 pages parked in per-CPU caches, by freetype index.
    pub cached_pages: [u64; NR_FREETYPES],
    /// Pageblocks by freetype index.
    pub pageblocks: [u64; NR_FREETYPES],
    /// Pageblocks converted, by source and target freetype index.
    pub conversions: [[u64; NR_FREETYPES]; NR_FREETYPES],
    /// Conversion batches (each at most one flush).
    pub conversion_batches: u64,
    /// TLB flushes on the converting CPU.
    pub flushes_local: u64,
    /// CPUs interrupted by shootdowns.
    pub flushes_remote: u64,
    /// 1 GiB direct-map mappings split into 2 MiB ones.
    pub splits_1g: u64,
    /// 2 MiB direct-map mappings split into 4 KiB ones.
    pub splits_2m: u64,
    /// Frames a conversion to the page-table freetype used for its own
    /// direct-map split (they became direct-map page tables).
    pub direct_map_tables: u64,
    /// Pages in the split reserve now.
    pub reserve_level: u64,
    /// Lowest the reserve has been since it was first filled.
    pub reserve_low_water: u64,
    /// Refill passes that added pages to the reserve.
    pub reserve_refills: u64,
    /// Reserve pages taken by splits or `USE_RESERVE` allocations.
    pub reserve_taken: u64,
    /// Successful allocations.
    pub allocations: u64,
    /// Successful frees.
    pub frees: u64,
    /// Allocations that failed for lack of memory, reserve or backend.
    pub failed_allocations: u64,
    /// Per-CPU cache refills from the locked core.
    pub cache_refills: u64,
    /// Per-CPU cache drains to the locked core.
    pub cache_drains: u64,
    /// Allocations that found no memory, drained every CPU's cache, and
    /// tried again (whether or not the retry succeeded).
    pub drains_before_failing: u64,
    /// Blocks below a pageblock served from a freetype of another mobility
    /// with the same protection (its own had none free).
    pub stolen_blocks: u64,
    /// Times an allocation other than a page table was refused whole free
    /// pageblocks because taking them would leave fewer than the
    /// conversion watermark (at the free lists or at a conversion: one
    /// allocation may count more than once).
    pub watermark_refusals: u64,
    /// Page-table pages the single-page fallback protected alone inside a
    /// mapped pageblock.
    pub single_page_fallbacks: u64,
    /// Page-table pages protected alone (the fallback's and every one of
    /// [`Strategy::Pagewise`](crate::Strategy::Pagewise)) still allocated.
    pub single_pages_live: u64,
    /// Single 4 KiB frames given the page-table protection by themselves
    /// (`DirectMap::protect_frame`): the fallback's and `Pagewise`'s pages.
    pub page_protects: u64,
    /// Single frames given back their pageblock's protection when freed.
    pub page_unprotects: u64,
    /// Page-table allocations that failed for want of protected memory
    /// (`OutOfMemory` or `ReserveExhausted`).
    pub page_table_failures: u64,
    /// Free pages of the page-table freetype outside whole free pageblocks
    /// (free blocks below a pageblock, and pages in per-CPU caches): no
    /// conversion can take them back until their pageblock's other pages
    /// are free, so no other freetype can use them. Computed per snapshot.
    pub stranded_protected: u64,
    /// Page tables handed out unprotected by
    /// [`PtFallback::Unprotected`](crate::PtFallback::Unprotected), in all.
    pub exposed_tables: u64,
    /// Of those, the ones still allocated (and still exposed).
    pub exposed_live: u64,
    /// How long they were exposed, in allocations: the sum over exposed
    /// tables of the allocations made while each was live (after it was
    /// handed out, up to its free, or up to now for live ones).
    pub exposure_allocations: u64,
    /// The direct map's leaf entries by size, if the backend counts them
    /// ([`DirectMap::mappings`](crate::DirectMap::mappings)).
    pub direct_map: Option<MappingCounts>,
    /// Pageblocks compaction emptied (by moving their movable blocks out)
    /// so that a page-table conversion could take them.
    pub compactions: u64,
    /// Compactions that emptied nothing: no pageblock qualified, no room
    /// elsewhere, or a move was refused or raced (the blocks moved until
    /// then stay moved).
    pub compactions_failed: u64,
    /// Frames compaction moved, counted by the blocks it moved.
    pub pages_moved: u64,
    /// Moves the owner refused ([`Migrate`](crate::Migrate) returned an
    /// error).
    pub migrations_refused: u64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            free_blocks: [[0; NR_ORDERS]; NR_FREETYPES],
            cached_pages: [0; NR_FREETYPES],
            pageblocks: [0; NR_FREETYPES],
            conversions: [[0; NR_FREETYPES]; NR_FREETYPES],
            conversion_batches: 0,
            flushes_local: 0,
            flushes_remote: 0,
            splits_1g: 0,
            splits_2m: 0,
            direct_map_tables: 0,
            reserve_level: 0,
            reserve_low_water: 0,
            reserve_refills: 0,
            reserve_taken: 0,
            allocations: 0,
            frees: 0,
            failed_allocations: 0,
            cache_refills: 0,
            cache_drains: 0,
            drains_before_failing: 0,
            stolen_blocks: 0,
            watermark_refusals: 0,
            single_page_fallbacks: 0,
            single_pages_live: 0,
            page_protects: 0,
            page_unprotects: 0,
            page_table_failures: 0,
            stranded_protected: 0,
            exposed_tables: 0,
            exposed_live: 0,
            exposure_allocations: 0,
            direct_map: None,
            compactions: 0,
            compactions_failed: 0,
            pages_moved: 0,
            migrations_refused: 0,
        }
    }

    /// Free pages of a freetype in the core's free lists.
    pub fn free_pages(&self, freetype: Freetype) -> u64 {
        self.free_blocks[freetype.index()]
            .iter()
            .enumerate()
            .map(|(order, blocks)| blocks << order)
            .sum()
    }

    /// Whole free pageblocks, of every freetype (free blocks of a
    /// pageblock or more, counted in pageblocks): what conversions and
    /// pageblock-sized allocations can take.
    pub fn whole_free_pageblocks(&self) -> u64 {
        let first = crate::PAGEBLOCK_ORDER as usize;
        self.free_blocks
            .iter()
            .map(|by_order| {
                let whole = by_order[first..].iter().enumerate();
                whole.map(|(above, blocks)| blocks << above).sum::<u64>()
            })
            .sum()
    }

    /// Pageblocks converted from `from` to `to`.
    pub fn converted(&self, from: Freetype, to: Freetype) -> u64 {
        self.conversions[from.index()][to.index()]
    }

    /// Pageblocks converted in all.
    pub fn total_conversions(&self) -> u64 {
        self.conversions.iter().flatten().sum()
    }
}
