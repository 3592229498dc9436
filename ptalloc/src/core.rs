//! The locked core: free lists per (freetype, order), pageblock
//! conversion, and the split reserve.
//!
//! # Invariants (checked by the simulator after every operation)
//! - Every frame's state is one of [`State`]; only the first frame of a
//!   block has a head state, the others are `Tail`.
//! - A free block of order `k` starts at an index aligned to `2^k`, is on
//!   exactly one list, `(freetype, k)`, and its freetype is the freetype of
//!   every pageblock it touches.
//! - Two free buddies of the same order and freetype never coexist: they
//!   are merged. Buddies of different freetypes never merge, so no block
//!   spans pageblocks of different freetypes.
//! - A pageblock's freetype changes only while the whole pageblock is
//!   owned by the converting code (taken off the free lists), and its
//!   direct-map protection is changed in the same step.
//! - Reserve pages are page-table-freetype frames, already protected.
//! - An allocated block lies in pageblocks of its own freetype, with two
//!   exceptions, both with the right protection on every frame: a block
//!   below a pageblock stolen from a sibling of the same protection, and
//!   a page-table page the single-page fallback protected alone inside a
//!   mapped pageblock (which may also become a reserve page or a
//!   direct-map table). Freed, a block returns to its pageblock's
//!   freetype, a single page only after its protection is given back.
//! - While a compaction runs, the frames it holds in its pageblock (free
//!   blocks taken off the lists, blocks moved out) are tails with no
//!   head: on no list, given to nobody, and so never merged with.
//!
//! # Limits, by design
//! - The direct map is never merged back: a pageblock the single-page
//!   fallback split keeps its 4 KiB table page (protected) for good.
//! - A conversion takes one free block from one other freetype. A large
//!   request (order > 9) fails if the pageblocks it needs are free but
//!   split between freetypes; merging across freetypes would need a
//!   conversion of each part first, which is left for when it matters.
//! - A pageblock holding a direct-map page table (made by a self-hosted
//!   split) or a reserve page never becomes wholly free, so never converts
//!   back: at most a few pageblocks stay page-table pageblocks for good.

use crate::backend::{DirectMap, DirectMapError, PageblockRange, ProtectReport, SplitPages};
use crate::error::AllocError;
use crate::freetype::{Freetype, Mobility, NR_FREETYPES, Protection};
use crate::meta::{FrameMeta, NIL, State};
use crate::stats::Stats;
use crate::strategy::Strategy;
use crate::{MAX_ORDER, NR_ORDERS, PAGEBLOCK_ORDER, Pfn};

/// How far an allocation may go once its freetype has no free block of
/// the order (and no sibling lends one). The allocator climbs these one
/// by one, draining the per-CPU caches and compacting in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The free lists only (`NO_BLOCK`): fail with `WouldBlock`.
    FreeLists,
    /// Convert a free pageblock (or run) from another freetype.
    Convert,
    /// Convert, and, for a page-table page, protect a single page of a
    /// mapped pageblock when nothing can be converted (the last resort).
    SinglePage,
}

/// Pageblocks compaction remembers as refused.
const REFUSED_PAGEBLOCKS: usize = 16;

/// Pageblocks the single-page fallback remembers as split.
const MIXED_PAGEBLOCKS: usize = 16;

/// Most pages the split reserve holds.
pub const RESERVE_CAPACITY: usize = 64;

/// The allocator state behind the lock. Frame numbers here are indices
/// into the metadata array (frame minus base).
pub(crate) struct Core {
    heads: [[u32; NR_ORDERS]; NR_FREETYPES],
    /// Last block of each list: blocks likely to merge soon go there, so
    /// allocations (which take from the head) leave them alone.
    tails: [[u32; NR_ORDERS]; NR_FREETYPES],
    reserve: heapless::Vec<u32, RESERVE_CAPACITY>,
    reserve_target: usize,
    /// Whole free pageblocks only conversions to the page-table freetype
    /// may take.
    watermark: u64,
    /// Pageblocks (first frame indices) where a compaction failed since the
    /// last one succeeded: tried last when choosing what to empty. A hint,
    /// so a bounded list that forgets its oldest.
    refused: heapless::Vec<u32, REFUSED_PAGEBLOCKS>,
    /// Whether the single-page fallback is on (`Config::single_page_fallback`).
    single_page_fallback: bool,
    /// Pageblocks (first frame indices) where the fallback split the 2 MiB
    /// mapping already: their free pages are taken first, as protecting
    /// one of them costs no further split. A hint only, so a bounded list.
    mixed: heapless::Vec<u32, MIXED_PAGEBLOCKS>,
    /// The reserve fell below its target since the last refill, through a
    /// single-page fallback's split.
    reserve_used_by_fallback: bool,
    reserve_ever_filled: bool,
    /// Fault injection: the reserve gives nothing to splits.
    pub(crate) reserve_fault: bool,
    /// `Config::strategy`: `Pagewise` serves page tables here.
    strategy: Strategy,
    /// Exposure of exposed page tables already freed, in allocations.
    exposure_closed: u64,
    /// Sum of the allocation counts at which the live exposed page tables
    /// were handed out: their exposure so far is `live * now - this`.
    exposed_stamps: u64,
    page_table: Freetype,
    base: u64,
    pub(crate) stats: Stats,
}

/// Most page-table pages one backend call may take from the reserve: a
/// 4 KiB change inside a 1 GiB mapping needs two (1 GiB -> 2 MiB -> 4 KiB).
pub const MAX_SPLIT_PAGES_PER_CALL: usize = 4;

/// Split pages from the reserve, remembering what was taken so a failed
/// call can put them back.
struct ReservePages<'a> {
    reserve: &'a mut heapless::Vec<u32, RESERVE_CAPACITY>,
    base: u64,
    taken: heapless::Vec<u32, MAX_SPLIT_PAGES_PER_CALL>,
}

impl SplitPages for ReservePages<'_> {
    fn take(&mut self) -> Option<Pfn> {
        if self.taken.is_full() {
            return None;
        }
        let index = self.reserve.pop()?;
        // Not full: checked above.
        let _ = self.taken.push(index);
        Some(Pfn(self.base + u64::from(index)))
    }
}

/// Split pages for a conversion *to* the page-table freetype: the first
/// frames of the very block being converted, which end up protected like
/// the rest of it. Such a conversion never needs the reserve.
struct SelfHostedPages {
    next: u32,
    end: u32,
    base: u64,
}

impl SplitPages for SelfHostedPages {
    fn take(&mut self) -> Option<Pfn> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        Some(Pfn(self.base + u64::from(self.next - 1)))
    }
}

/// Split pages for a change that needs none.
struct NoSplitPages;

impl SplitPages for NoSplitPages {
    fn take(&mut self) -> Option<Pfn> {
        None
    }
}

impl Core {
    pub(crate) fn new(
        base: u64,
        page_table: Freetype,
        reserve_target: usize,
        watermark: u64,
        single_page_fallback: bool,
        strategy: Strategy,
    ) -> Self {
        Self {
            heads: [[NIL; NR_ORDERS]; NR_FREETYPES],
            tails: [[NIL; NR_ORDERS]; NR_FREETYPES],
            reserve: heapless::Vec::new(),
            reserve_target: reserve_target.min(RESERVE_CAPACITY),
            watermark,
            single_page_fallback,
            mixed: heapless::Vec::new(),
            refused: heapless::Vec::new(),
            reserve_used_by_fallback: false,
            reserve_ever_filled: false,
            reserve_fault: false,
            strategy,
            exposure_closed: 0,
            exposed_stamps: 0,
            page_table,
            base,
            stats: Stats::new(),
        }
    }

    fn pfn(&self, index: u32) -> Pfn {
        Pfn(self.base + u64::from(index))
    }

    // ---- free lists ----

    /// Puts a free block at the head of its list: the next allocation of
    /// its order and freetype takes it.
    fn push_free(&mut self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) {
        let frame = &meta[index as usize];
        let (list, k) = (ft.index(), order as usize);
        frame.set_state(State::FreeHead);
        frame.set_order(order);
        frame.set_freetype(ft);
        frame.set_prev(NIL);
        let head = self.heads[list][k];
        frame.set_next(head);
        if head == NIL {
            self.tails[list][k] = index;
        } else {
            meta[head as usize].set_prev(index);
        }
        self.heads[list][k] = index;
        self.stats.free_blocks[list][k] += 1;
    }

    /// Puts a free block at the tail of its list: allocations reach it
    /// last, which gives its buddy time to come back and merge with it.
    fn push_free_tail(&mut self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) {
        let frame = &meta[index as usize];
        let (list, k) = (ft.index(), order as usize);
        frame.set_state(State::FreeHead);
        frame.set_order(order);
        frame.set_freetype(ft);
        frame.set_next(NIL);
        let tail = self.tails[list][k];
        frame.set_prev(tail);
        if tail == NIL {
            self.heads[list][k] = index;
        } else {
            meta[tail as usize].set_next(index);
        }
        self.tails[list][k] = index;
        self.stats.free_blocks[list][k] += 1;
    }

    fn unlink_free(&mut self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) {
        let frame = &meta[index as usize];
        let (list, k) = (ft.index(), order as usize);
        let (prev, next) = (frame.prev(), frame.next());
        if prev == NIL {
            self.heads[list][k] = next;
        } else {
            meta[prev as usize].set_next(next);
        }
        if next == NIL {
            self.tails[list][k] = prev;
        } else {
            meta[next as usize].set_prev(prev);
        }
        self.stats.free_blocks[list][k] -= 1;
    }

    /// True if the block at `index` of `order` would merge twice once its
    /// buddy is free: the buddy of the block they would form is free
    /// already. Such a block goes to the tail of its list (Linux does the
    /// same), so small allocations fill the pageblocks that are in use
    /// and leave the nearly free ones to become whole.
    fn merge_likely(&self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) -> bool {
        if order + 1 >= MAX_ORDER {
            return false;
        }
        let pair = index & !(1 << order);
        let higher_buddy = pair ^ (1 << (order + 1));
        meta.get(higher_buddy as usize).is_some_and(|frame| {
            frame.state() == State::FreeHead
                && frame.order() == order + 1
                && frame.freetype() == Some(ft)
        })
    }

    fn pop_free(&mut self, meta: &[FrameMeta], order: u32, ft: Freetype) -> Option<u32> {
        let index = self.heads[ft.index()][order as usize];
        if index == NIL {
            return None;
        }
        self.unlink_free(meta, index, order, ft);
        Some(index)
    }

    /// Takes a free block of exactly `order` and `ft`, splitting a larger
    /// one if needed. The block's head is left for the caller to mark.
    pub(crate) fn take_block(
        &mut self,
        meta: &[FrameMeta],
        order: u32,
        ft: Freetype,
    ) -> Option<u32> {
        let found = (order..=MAX_ORDER).find(|&k| self.heads[ft.index()][k as usize] != NIL)?;
        if found >= PAGEBLOCK_ORDER && !self.may_take_pageblocks(ft, order) {
            return None;
        }
        self.split_off(meta, found, order, ft)
    }

    /// Takes a free block of `found` of `ft` and keeps its first `order`
    /// part, returning the rest to the free lists; no watermark.
    fn split_off(
        &mut self,
        meta: &[FrameMeta],
        found: u32,
        order: u32,
        ft: Freetype,
    ) -> Option<u32> {
        let index = self.pop_free(meta, found, ft)?;
        for k in (order..found).rev() {
            self.push_free(meta, index + (1 << k), k, ft);
        }
        Some(index)
    }

    /// The conversion watermark: may an allocation of `order` for `ft`
    /// consume whole free pageblocks (break one up, take or convert
    /// some)? Page tables always may; anything else only if at least the
    /// watermark's worth stay whole. Counts a refusal.
    fn may_take_pageblocks(&mut self, ft: Freetype, order: u32) -> bool {
        if ft == self.page_table || self.watermark == 0 {
            return true;
        }
        let consumed = 1u64 << order.saturating_sub(PAGEBLOCK_ORDER);
        let allowed = self.stats.whole_free_pageblocks() >= self.watermark + consumed;
        if !allowed {
            self.stats.watermark_refusals += 1;
        }
        allowed
    }

    /// Returns a block to the free lists, merging it with free buddies of
    /// the same freetype. The caller has validated it.
    fn release_block(&mut self, meta: &[FrameMeta], mut index: u32, mut order: u32, ft: Freetype) {
        while order < MAX_ORDER {
            let buddy = index ^ (1 << order);
            let Some(buddy_meta) = meta.get(buddy as usize) else {
                break;
            };
            let mergeable = buddy_meta.state() == State::FreeHead
                && buddy_meta.order() == order
                && buddy_meta.freetype() == Some(ft);
            if !mergeable {
                break;
            }
            self.unlink_free(meta, buddy, order, ft);
            // The higher of the two stops being a head.
            meta[index.max(buddy) as usize].set_state(State::Tail);
            index = index.min(buddy);
            order += 1;
        }
        if self.merge_likely(meta, index, order, ft) {
            self.push_free_tail(meta, index, order, ft);
        } else {
            self.push_free(meta, index, order, ft);
        }
    }

    /// Frees every frame of `[start, end)` as maximal aligned blocks.
    pub(crate) fn release_range(&mut self, meta: &[FrameMeta], start: u32, end: u32, ft: Freetype) {
        let mut at = start;
        while at < end {
            let align = if at == 0 {
                MAX_ORDER
            } else {
                at.trailing_zeros().min(MAX_ORDER)
            };
            let fits = (end - at).ilog2();
            let order = align.min(fits);
            self.release_block(meta, at, order, ft);
            at += 1 << order;
        }
    }

    // ---- allocation ----

    /// Allocates a block: from the free lists, else, as far as `reach`
    /// allows, by converting a free pageblock from another freetype, and
    /// last by the single-page fallback. Under `Strategy::Pagewise` a
    /// page-table page is always a single page protected alone.
    pub(crate) fn alloc(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        order: u32,
        ft: Freetype,
        reach: Reach,
    ) -> Result<u32, AllocError> {
        if ft == self.page_table && self.strategy == Strategy::Pagewise {
            return match (order, reach) {
                // Only single pages can be protected alone.
                (1.., _) => Err(AllocError::OutOfMemory),
                // Protecting a page splits and flushes: that blocks.
                (0, Reach::FreeLists) => Err(AllocError::WouldBlock),
                (0, _) => {
                    // Refilled before an operation that may split: a page
                    // inside a 1 GiB mapping takes two.
                    if self.reserve.len() < 2 {
                        // Best effort: the split reports an empty reserve.
                        let _ = self.refill_reserve(meta, backend);
                    }
                    self.protect_single_page(meta, backend, false)
                }
            };
        }
        self.alloc_from_freetypes(meta, backend, order, ft, reach)
    }

    /// [`alloc`](Self::alloc) through the free lists and conversions,
    /// whatever the strategy (the split reserve's stock comes this way).
    fn alloc_from_freetypes(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        order: u32,
        ft: Freetype,
        reach: Reach,
    ) -> Result<u32, AllocError> {
        if let Some(index) = self.take_block(meta, order, ft) {
            return Ok(index);
        }
        if let Some(index) = self.steal(meta, order, ft) {
            return Ok(index);
        }
        if reach == Reach::FreeLists {
            return Err(AllocError::WouldBlock);
        }
        // A conversion to the page-table freetype may keep its first frame
        // for its own split, leaving a block one frame short of an order-9+
        // request. Convert again until a whole block is there: each round
        // either splits a gigabyte not split before or yields a whole
        // block, and converting stops with OutOfMemory when nothing is left.
        loop {
            match self.convert(meta, backend, order, ft) {
                Ok(()) => {
                    if let Some(index) = self.take_block(meta, order, ft) {
                        return Ok(index);
                    }
                }
                Err(AllocError::OutOfMemory)
                    if reach == Reach::SinglePage
                        && ft == self.page_table
                        && order == 0
                        && self.single_page_fallback =>
                {
                    return self.protect_single_page(meta, backend, true);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// True if the single-page fallback is on.
    pub(crate) fn single_page_fallback(&self) -> bool {
        self.single_page_fallback
    }

    // ---- the single-page fallback ----

    /// The last resort for a page-table page: no pageblock can be
    /// converted, so protect one free page of a mapped pageblock by
    /// itself. Its pageblock's 2 MiB mapping is split (a reserve page, once
    /// per pageblock: pageblocks split already are tried first) and the
    /// old translation flushed. The page keeps its pageblock's freetype in
    /// the books and goes back to it, unprotected again, when freed.
    /// `fallback` says which it is: the last resort, or a page of
    /// `Strategy::Pagewise`.
    fn protect_single_page(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        fallback: bool,
    ) -> Result<u32, AllocError> {
        let (index, home) = self
            .take_fallback_page(meta)
            .ok_or(AllocError::OutOfMemory)?;
        let target = self.page_table;
        let pfn = self.pfn(index);
        let reserve_before = self.reserve.len();
        let result = self.split_with_reserve(meta, |pages| {
            backend.protect_frame(pfn, home.protection, target.protection, pages)
        });
        if let Err(error) = result {
            self.release_block(meta, index, 0, home);
            return Err(match error {
                DirectMapError::NoSplitPage => AllocError::ReserveExhausted,
                other => AllocError::Backend(other),
            });
        }
        let pageblock = index & !((1 << PAGEBLOCK_ORDER) - 1);
        if home.protection.needs_flush_to(target.protection) {
            // The old translation may be the 2 MiB one: flush the pageblock.
            let flush = backend.flush(PageblockRange {
                start: self.pfn(pageblock),
                pageblocks: 1,
            });
            self.stats.flushes_local += u64::from(flush.local);
            self.stats.flushes_remote += u64::from(flush.remote);
        }
        if !self.mixed.contains(&pageblock) {
            if self.mixed.is_full() {
                self.mixed.remove(0);
            }
            // Room was made above.
            let _ = self.mixed.push(pageblock);
        }
        self.reserve_used_by_fallback |= self.reserve.len() < reserve_before;
        if fallback {
            self.stats.single_page_fallbacks += 1;
        }
        self.stats.page_protects += 1;
        self.stats.single_pages_live += 1;
        Ok(index)
    }

    /// A free page of a mapped freetype for the fallback, taken off the
    /// free lists: from a pageblock split already if one has a free page,
    /// else the smallest free block of any mapped freetype. With its
    /// freetype (its pageblock's).
    fn take_fallback_page(&mut self, meta: &[FrameMeta]) -> Option<(u32, Freetype)> {
        let pageblock_frames = 1u32 << PAGEBLOCK_ORDER;
        let mixed = self.mixed.clone();
        for pageblock in mixed {
            let end = (pageblock + pageblock_frames).min(meta.len() as u32);
            let found = (pageblock..end).find(|&i| {
                let frame = &meta[i as usize];
                frame.state() == State::FreeHead
                    && frame
                        .freetype()
                        .is_some_and(|ft| ft.protection == Protection::Mapped)
            });
            if let Some(index) = found {
                let frame = &meta[index as usize];
                let (order, ft) = (frame.order(), frame.freetype()?);
                self.unlink_free(meta, index, order, ft);
                // Keep the first page; the rest stays free.
                for k in (0..order).rev() {
                    self.push_free(meta, index + (1 << k), k, ft);
                }
                return Some((index, ft));
            }
        }
        let (donor, fit) = Freetype::all()
            .filter(|ft| ft.protection == Protection::Mapped)
            .filter_map(|ft| self.closest_fit(ft, 0).map(|fit| (ft, fit)))
            .min_by_key(|&(ft, fit)| (fit, ft.index()))?;
        // The page serves a page table, which may break a whole pageblock
        // the watermark keeps (a `Pagewise` table never converts one).
        let index = self.split_off(meta, fit, 0, donor)?;
        Some((index, donor))
    }

    /// Frees a page the fallback protected: wipes it while it is still
    /// protected (unless `wipe` is false: a page never handed out holds
    /// only its pageblock's old contents), gives it back its pageblock's
    /// protection (and flushes the old translation: a stale key would
    /// fault spuriously), and returns it to `home`'s free lists. On a
    /// backend failure the page stays as it was, for the caller to keep.
    pub(crate) fn free_single_page(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        index: u32,
        home: Freetype,
        wipe: bool,
    ) -> Result<(), DirectMapError> {
        let pfn = self.pfn(index);
        let protection = self.page_table.protection;
        if wipe {
            backend.zero(pfn, 0, protection)?;
        }
        // The page has its own 4 KiB entry already: nothing to split.
        backend.protect_frame(pfn, protection, home.protection, &mut NoSplitPages)?;
        if protection.needs_flush_to(home.protection) {
            let pageblock = index & !((1 << PAGEBLOCK_ORDER) - 1);
            let flush = backend.flush(PageblockRange {
                start: self.pfn(pageblock),
                pageblocks: 1,
            });
            self.stats.flushes_local += u64::from(flush.local);
            self.stats.flushes_remote += u64::from(flush.remote);
        }
        self.release_block(meta, index, 0, home);
        self.stats.frees += 1;
        self.stats.single_pages_live -= 1;
        self.stats.page_unprotects += 1;
        Ok(())
    }

    /// Puts a protected page-table page that an allocation took and could
    /// not hand out into the split reserve, undoing that allocation. False
    /// if the reserve is full.
    pub(crate) fn park_in_reserve(&mut self, meta: &[FrameMeta], index: u32) -> bool {
        if self.reserve.is_full() {
            return false;
        }
        meta[index as usize].set_state(State::Reserve);
        // Not full: checked above.
        let _ = self.reserve.push(index);
        self.stats.allocations -= 1;
        self.note_reserve_level();
        true
    }

    /// True once: a single-page fallback took a reserve page since the
    /// last time this was asked (the allocator then refills the reserve,
    /// outside the allocation path).
    pub(crate) fn reserve_low_after_fallback(&mut self) -> bool {
        core::mem::take(&mut self.reserve_used_by_fallback)
    }

    /// Below a pageblock, a free block of another mobility with the same
    /// protection serves as well: the direct map needs no change, and the
    /// whole free pageblocks stay whole for the conversions that need them
    /// (page tables above all). The smallest fitting block is taken, never
    /// a whole pageblock (that is a conversion's job). The block stays in
    /// its pageblock's freetype: freeing it returns it there. Never for
    /// the page-table freetype, which has no same-protection sibling in use.
    pub(crate) fn steal(&mut self, meta: &[FrameMeta], order: u32, ft: Freetype) -> Option<u32> {
        if order >= PAGEBLOCK_ORDER || ft == self.page_table {
            return None;
        }
        let (donor, _) = Freetype::all()
            .filter(|&other| other != ft && other.protection == ft.protection)
            .filter_map(|other| {
                self.closest_fit(other, order)
                    .filter(|&fit| fit < PAGEBLOCK_ORDER)
                    .map(|fit| (other, fit))
            })
            .min_by_key(|&(other, fit)| (fit, other.index()))?;
        let index = self.take_block(meta, order, donor)?;
        self.stats.stolen_blocks += 1;
        Some(index)
    }

    /// Marks a taken block as allocated.
    pub(crate) fn mark_allocated(
        &mut self,
        meta: &[FrameMeta],
        index: u32,
        order: u32,
        ft: Freetype,
    ) {
        let frame = &meta[index as usize];
        frame.set_order(order);
        frame.set_freetype(ft);
        frame.set_state(State::AllocatedHead);
        self.stats.allocations += 1;
    }

    /// Frees an allocated block the caller has validated and claimed.
    pub(crate) fn free(&mut self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) {
        self.release_block(meta, index, order, ft);
        self.stats.frees += 1;
    }

    /// Takes back a page from a per-CPU cache (its free was counted there).
    pub(crate) fn release(&mut self, meta: &[FrameMeta], index: u32, order: u32, ft: Freetype) {
        self.release_block(meta, index, order, ft);
    }

    // ---- compaction (driven by `allocator::compact`) ----

    /// Picks the pageblock compaction should empty and takes its free
    /// blocks off the free lists (so nothing is allocated there while its
    /// live blocks move out), marking them in `held` (which starts empty).
    /// Of the pageblocks holding nothing but free blocks and allocated
    /// movable blocks below a pageblock, the one with the fewest live
    /// frames wins, those refused lately last and those in `tried` (by
    /// this compaction already) never, provided blocks of its protection
    /// outside it have room for them. Returns its first frame and its
    /// freetype.
    pub(crate) fn isolate_for_compaction(
        &mut self,
        meta: &[FrameMeta],
        tried: &[u32],
        held: &mut PageblockFrames,
    ) -> Option<(u32, Freetype)> {
        let frames = 1u32 << PAGEBLOCK_ORDER;
        let pageblocks = meta.len() as u32 / frames;
        let (start, live, home) = (0..pageblocks)
            .map(|pageblock| pageblock * frames)
            .filter_map(|start| {
                let home = meta[start as usize].pageblock_freetype()?;
                if home == self.page_table || tried.contains(&start) {
                    return None;
                }
                Some((start, movable_frames(meta, start)?, home))
            })
            .min_by_key(|&(start, live, _)| (self.refused.contains(&start), live, start))?;
        // Room: free frames of this protection outside the pageblock, in
        // blocks below a pageblock (destinations never break a whole one).
        let room: u64 = Freetype::all()
            .filter(|ft| ft.protection == home.protection && *ft != self.page_table)
            .map(|ft| {
                let by_order = &self.stats.free_blocks[ft.index()];
                (0..PAGEBLOCK_ORDER as usize)
                    .map(|k| by_order[k] << k)
                    .sum::<u64>()
            })
            .sum();
        let own_free = u64::from(frames - live);
        if room.saturating_sub(own_free) < u64::from(live) {
            return None;
        }
        let mut at = start;
        while at < start + frames {
            let frame = &meta[at as usize];
            let size = 1u32 << frame.order();
            if frame.state() == State::FreeHead {
                let Some(ft) = frame.freetype() else {
                    unreachable!("a free block records a valid freetype")
                };
                self.unlink_free(meta, at, frame.order(), ft);
                frame.set_state(State::Tail);
                held.insert(at - start, size);
            }
            at += size;
        }
        Some((start, home))
    }

    /// A free block of `order` for a block of `ft` that compaction moves,
    /// taken off the free lists and marked allocated as `ft` (not counted
    /// as an allocation: the moved block was). From `ft`'s own free lists,
    /// else a sibling of the same protection; never by breaking up a whole
    /// pageblock.
    pub(crate) fn take_destination(
        &mut self,
        meta: &[FrameMeta],
        order: u32,
        ft: Freetype,
    ) -> Option<u32> {
        let fits = |core: &Self, donor: Freetype| {
            core.closest_fit(donor, order)
                .is_some_and(|k| k < PAGEBLOCK_ORDER)
        };
        let donor = if fits(self, ft) {
            ft
        } else {
            Freetype::all()
                .filter(|&other| other.protection == ft.protection && other != self.page_table)
                .find(|&other| fits(self, other))?
        };
        let index = self.take_block(meta, order, donor)?;
        let frame = &meta[index as usize];
        frame.set_order(order);
        frame.set_freetype(ft);
        frame.set_state(State::AllocatedHead);
        Some(index)
    }

    /// Gives back the frames of the pageblock at `start` that compaction
    /// holds (isolated free blocks, blocks moved out) to `home`'s free
    /// lists; all of them, when the pageblock was emptied, merge into one
    /// whole free pageblock. Counts the outcome.
    pub(crate) fn end_compaction(
        &mut self,
        meta: &[FrameMeta],
        start: u32,
        home: Freetype,
        held: &PageblockFrames,
        moved: u32,
    ) {
        for (first, end) in held.runs() {
            self.release_range(meta, start + first, start + end, home);
        }
        self.stats.pages_moved += u64::from(moved);
        if held.is_full() {
            self.stats.compactions += 1;
            self.refused.clear();
        } else {
            self.stats.compactions_failed += 1;
            if self.refused.is_full() {
                self.refused.remove(0);
            }
            // Room was made above.
            let _ = self.refused.push(start);
        }
    }

    /// Gives back a destination whose move the owner refused.
    pub(crate) fn return_destination(&mut self, meta: &[FrameMeta], index: u32, order: u32) {
        let pageblock = index & !((1 << PAGEBLOCK_ORDER) - 1);
        let Some(home) = meta[pageblock as usize].pageblock_freetype() else {
            unreachable!("a destination lies in a managed pageblock")
        };
        meta[index as usize].set_state(State::Tail);
        self.release_block(meta, index, order, home);
        self.stats.migrations_refused += 1;
    }

    /// Counts a compaction that found no pageblock to empty.
    pub(crate) fn note_compaction_failed(&mut self) {
        self.stats.compactions_failed += 1;
    }

    // ---- conversion ----

    /// Makes at least one free block of `order` available in `target` by
    /// taking a wholly free run of pageblocks from another freetype and
    /// changing its direct-map protection as one batch.
    fn convert(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        order: u32,
        target: Freetype,
    ) -> Result<(), AllocError> {
        let need = order.max(PAGEBLOCK_ORDER);
        if !self.may_take_pageblocks(target, need) {
            return Err(AllocError::OutOfMemory);
        }
        let source = self
            .pick_source(need, target)
            .ok_or(AllocError::OutOfMemory)?;
        // Only a protection change can split, and a conversion to the
        // page-table freetype hosts its own split page: for the others,
        // refill the reserve now, outside the split path.
        if source.protection != target.protection && target != self.page_table {
            // Best effort: an empty reserve only matters if a split happens,
            // and then the backend reports it.
            let _ = self.refill_reserve(meta, backend);
        }
        // Refilling may have converted or used the block picked: check the
        // watermark and pick again.
        if !self.may_take_pageblocks(target, need) {
            return Err(AllocError::OutOfMemory);
        }
        let source = self
            .pick_source(need, target)
            .ok_or(AllocError::OutOfMemory)?;
        // The smallest block that fits: whole free gigabytes stay whole,
        // and a small free run is most likely in a region the direct map
        // has split already, so the conversion splits nothing new.
        let fitting = self
            .closest_fit(source, need)
            .ok_or(AllocError::OutOfMemory)?;
        let index = self
            .pop_free(meta, fitting, source)
            .ok_or(AllocError::OutOfMemory)?;
        // Keep only what is needed; the upper halves stay with the source.
        for k in (need..fitting).rev() {
            self.push_free(meta, index + (1 << k), k, source);
        }
        self.change_block(meta, backend, index, need, source, target)
    }

    /// Gives the free block of `need` (a pageblock or more) at `index`,
    /// taken off the free lists (or never on them), of `source`, to
    /// `target`: wipes it if it leaves a protection that hides its
    /// contents, changes its protection as one batch (a conversion to the
    /// page-table freetype hosts its own split; others split with the
    /// reserve), flushes once if permissions shrank, and frees it to
    /// `target`'s lists. On failure the block goes back to `source`.
    fn change_block(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        index: u32,
        need: u32,
        source: Freetype,
        target: Freetype,
    ) -> Result<(), AllocError> {
        let changes_protection = source.protection != target.protection;
        let range = PageblockRange {
            start: self.pfn(index),
            pageblocks: 1 << (need - PAGEBLOCK_ORDER),
        };
        // Frames leaving `Unmapped` may hold secrets, and frames leaving a
        // key may hold stale page tables: wipe them while their old
        // protection still hides them, before a new mapping shows them.
        if source.protection.wiped_when_leaving()
            && source.protection != target.protection
            && let Err(error) = backend.zero(range.start, need, source.protection)
        {
            self.release_block(meta, index, need, source);
            return Err(AllocError::Backend(error));
        }
        let mut self_hosted = 0;
        if changes_protection {
            let (from, to) = (source.protection, target.protection);
            let result = if target == self.page_table {
                let mut pages = SelfHostedPages {
                    next: index,
                    end: index + (1 << need),
                    base: self.base,
                };
                let result = backend.protect(range, from, to, &mut pages);
                self_hosted = pages.next - index;
                if let Ok(report) = result {
                    self.count_splits(report);
                }
                result
            } else {
                // Counts the splits itself.
                self.split_with_reserve(meta, |pages| backend.protect(range, from, to, pages))
            };
            if let Err(error) = result {
                // The backend left the mapping unchanged: give the block back.
                self.release_block(meta, index, need, source);
                return Err(match error {
                    DirectMapError::NoSplitPage => AllocError::ReserveExhausted,
                    other => AllocError::Backend(other),
                });
            }
            if source.protection.needs_flush_to(target.protection) {
                let flush = backend.flush(range);
                self.stats.flushes_local += u64::from(flush.local);
                self.stats.flushes_remote += u64::from(flush.remote);
            }
        }

        for pageblock in 0..range.pageblocks as u32 {
            meta[(index + (pageblock << PAGEBLOCK_ORDER)) as usize].set_pageblock_freetype(target);
        }
        self.stats.pageblocks[source.index()] -= range.pageblocks;
        self.stats.pageblocks[target.index()] += range.pageblocks;
        self.stats.conversions[source.index()][target.index()] += range.pageblocks;
        self.stats.conversion_batches += 1;

        // Frames a self-hosted split used are direct-map page tables now.
        self.stats.direct_map_tables += u64::from(self_hosted);
        for table in index..index + self_hosted {
            let frame = &meta[table as usize];
            frame.set_freetype(target);
            frame.set_order(0);
            frame.set_state(State::DirectMapTable);
        }
        self.release_range(meta, index + self_hosted, index + (1 << need), target);
        Ok(())
    }

    /// `Strategy::ProtectedFirst`, at `add_memory`: gives the fresh frames
    /// `[start, end)` (whole pageblocks, counted as `source`'s, tails on
    /// no list) to the page-table freetype a whole aligned block at a time
    /// (a whole gigabyte needs no split; a smaller block hosts its own). A
    /// block the backend refuses stays with `source`, free.
    pub(crate) fn protect_fresh(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
        start: u32,
        end: u32,
        source: Freetype,
    ) {
        let mut at = start;
        while at < end {
            let order = at.trailing_zeros().min(MAX_ORDER).min((end - at).ilog2());
            // Either way the block ends up free: in the target or back in
            // the source.
            let _ = self.change_block(meta, backend, at, order, source, self.page_table);
            at += 1 << order;
        }
    }

    // ---- exposed page tables (`PtFallback::Unprotected`) ----

    /// Hands out a free page of a mapped freetype as a page table without
    /// protecting it, marked as exposed; `stamp` is the allocation count
    /// now. `None` if no mapped page is free.
    pub(crate) fn take_exposed(&mut self, meta: &[FrameMeta], stamp: u64) -> Option<u32> {
        let (index, _) = self.take_fallback_page(meta)?;
        self.mark_allocated(meta, index, 0, self.page_table);
        meta[index as usize].set_exposed(stamp);
        self.stats.exposed_tables += 1;
        self.stats.exposed_live += 1;
        self.exposed_stamps += stamp;
        Some(index)
    }

    /// Frees an exposed page table the caller has claimed, `now`
    /// allocations in: its exposure ends, and it goes back to `home`'s
    /// free lists as it is (it was never protected, so nothing to wipe or
    /// flush).
    pub(crate) fn free_exposed(
        &mut self,
        meta: &[FrameMeta],
        index: u32,
        home: Freetype,
        now: u64,
    ) {
        let frame = &meta[index as usize];
        let held = u64::from((now as u32).wrapping_sub(frame.exposed_stamp()));
        frame.clear_exposed();
        self.exposure_closed += held;
        self.exposed_stamps = self.exposed_stamps.saturating_sub(now.saturating_sub(held));
        self.stats.exposed_live -= 1;
        self.release_block(meta, index, 0, home);
        self.stats.frees += 1;
    }

    /// Undoes [`take_exposed`](Self::take_exposed) for an allocation that
    /// failed after it (zeroing): as if it never happened.
    pub(crate) fn unexpose(&mut self, meta: &[FrameMeta], index: u32, home: Freetype, stamp: u64) {
        meta[index as usize].clear_exposed();
        self.stats.exposed_tables -= 1;
        self.stats.exposed_live -= 1;
        self.exposed_stamps = self.exposed_stamps.saturating_sub(stamp);
        self.stats.allocations -= 1;
        self.release_block(meta, index, 0, home);
    }

    /// Exposure in allocations, `now` allocations in: that of the exposed
    /// tables freed, plus that of the live ones so far.
    pub(crate) fn exposure(&self, now: u64) -> u64 {
        let open = u128::from(self.stats.exposed_live) * u128::from(now);
        let open = open.saturating_sub(u128::from(self.exposed_stamps));
        self.exposure_closed
            .saturating_add(u64::try_from(open).unwrap_or(u64::MAX))
    }

    /// Takes the smallest free block of `ft` of an order up to `most`,
    /// whole (no split): its first frame and order. The caller marks its
    /// frames.
    pub(crate) fn take_smallest_whole(
        &mut self,
        meta: &[FrameMeta],
        ft: Freetype,
        most: u32,
    ) -> Option<(u32, u32)> {
        let order =
            (0..=most.min(MAX_ORDER)).find(|&k| self.heads[ft.index()][k as usize] != NIL)?;
        let index = self.pop_free(meta, order, ft)?;
        Some((index, order))
    }

    /// The smallest order from `order` up with a free block of `ft`.
    fn closest_fit(&self, ft: Freetype, order: u32) -> Option<u32> {
        (order..=MAX_ORDER).find(|&k| self.heads[ft.index()][k as usize] != NIL)
    }

    /// The freetype to convert from: among those (other than `target`)
    /// with a free block of at least `order`, first one of `target`'s
    /// protection (that conversion changes no mapping, wipes and flushes
    /// nothing), then the one whose smallest such block is smallest (so no
    /// larger block is broken up while a fitting one exists elsewhere),
    /// then the one with most free memory.
    fn pick_source(&self, order: u32, target: Freetype) -> Option<Freetype> {
        Freetype::all()
            .filter(|&ft| ft != target)
            .filter_map(|ft| self.closest_fit(ft, order).map(|fit| (ft, fit)))
            .min_by_key(|&(ft, fit)| {
                let free: u64 = (0..NR_ORDERS)
                    .map(|k| self.stats.free_blocks[ft.index()][k] << k)
                    .sum();
                let changes_mapping = ft.protection != target.protection;
                (changes_mapping, fit, core::cmp::Reverse(free), ft.index())
            })
            .map(|(ft, _)| ft)
    }

    // ---- split reserve ----

    /// Tops the reserve up to its target with page-table pages. Never called
    /// from the split path: a conversion to the page-table freetype hosts
    /// its own split, so refilling cannot recurse.
    pub(crate) fn refill_reserve(
        &mut self,
        meta: &[FrameMeta],
        backend: &impl DirectMap,
    ) -> Result<(), AllocError> {
        let mut added = false;
        let result = loop {
            if self.reserve.len() >= self.reserve_target {
                break Ok(());
            }
            let page_table = self.page_table;
            // The last resort included: a page protected alone serves the
            // reserve as well as a page table (its split may take a
            // reserve page, once per pageblock, and 512 come back).
            // Under `Pagewise` too: the reserve is stocked from page-table
            // pageblocks, since a single page cannot be protected before
            // the reserve has pages for its split.
            match self.alloc_from_freetypes(meta, backend, 0, page_table, Reach::SinglePage) {
                Ok(index) => {
                    let frame = &meta[index as usize];
                    frame.set_order(0);
                    frame.set_freetype(page_table);
                    frame.set_state(State::Reserve);
                    // Capacity was checked against reserve_target above.
                    let _ = self.reserve.push(index);
                    added = true;
                }
                Err(error) => break Err(error),
            }
        };
        if added {
            self.stats.reserve_refills += 1;
        }
        if self.reserve.len() >= self.reserve_target && !self.reserve_ever_filled {
            self.reserve_ever_filled = true;
            self.stats.reserve_low_water = self.reserve.len() as u64;
        }
        self.note_reserve_level();
        result
    }

    /// Takes a page from the reserve for a caller allowed to (`USE_RESERVE`).
    pub(crate) fn take_reserve_page(&mut self) -> Option<u32> {
        let index = self.reserve.pop()?;
        self.stats.reserve_taken += 1;
        self.note_reserve_level();
        Some(index)
    }

    /// Puts back a page [`take_reserve_page`](Self::take_reserve_page) gave
    /// out, when the allocation it served failed after all.
    pub(crate) fn return_reserve_page(&mut self, meta: &[FrameMeta], index: u32) {
        meta[index as usize].set_state(State::Reserve);
        // It was in the reserve a moment ago, under this same lock.
        let _ = self.reserve.push(index);
        // The allocation it served failed: it counts as neither.
        self.stats.reserve_taken -= 1;
        self.stats.allocations -= 1;
        self.note_reserve_level();
    }

    /// Runs a backend call with the reserve as its only source of split
    /// pages. Pages it used become direct-map page tables; if it fails,
    /// they go back to the reserve, so a failed call changes nothing.
    pub(crate) fn split_with_reserve(
        &mut self,
        meta: &[FrameMeta],
        call: impl FnOnce(&mut dyn SplitPages) -> Result<ProtectReport, DirectMapError>,
    ) -> Result<ProtectReport, DirectMapError> {
        let mut empty = heapless::Vec::new();
        let reserve = if self.reserve_fault {
            &mut empty
        } else {
            &mut self.reserve
        };
        let mut pages = ReservePages {
            reserve,
            base: self.base,
            taken: heapless::Vec::new(),
        };
        let result = call(&mut pages);
        let taken = pages.taken;
        match result {
            Ok(report) => {
                for &index in &taken {
                    meta[index as usize].set_state(State::DirectMapTable);
                }
                self.stats.reserve_taken += taken.len() as u64;
                self.count_splits(report);
            }
            Err(_) => {
                for &index in taken.iter().rev() {
                    // They were in the reserve a moment ago: there is room.
                    let _ = self.reserve.push(index);
                }
            }
        }
        self.note_reserve_level();
        result
    }

    fn count_splits(&mut self, report: ProtectReport) {
        self.stats.splits_1g += u64::from(report.splits_1g);
        self.stats.splits_2m += u64::from(report.splits_2m);
    }

    fn note_reserve_level(&mut self) {
        let level = self.reserve.len() as u64;
        self.stats.reserve_level = level;
        if self.reserve_ever_filled && level < self.stats.reserve_low_water {
            self.stats.reserve_low_water = level;
        }
    }

    pub(crate) fn reserve_pages(&self) -> &[u32] {
        &self.reserve
    }

    // ---- bookkeeping for init and statistics ----

    pub(crate) fn add_pageblock(&mut self, ft: Freetype) {
        self.stats.pageblocks[ft.index()] += 1;
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.reserve_level = self.reserve.len() as u64;
        // Free page-table blocks below a pageblock lie in pageblocks that
        // are not wholly free (else they would have merged).
        let by_order = &stats.free_blocks[self.page_table.index()];
        stats.stranded_protected = (0..PAGEBLOCK_ORDER as usize)
            .map(|k| by_order[k] << k)
            .sum();
        stats
    }
}

/// Live frames of the pageblock at `start`, if it holds only free blocks
/// and allocated movable blocks below a pageblock: a pageblock compaction
/// can empty. Anything else there (a cached page, an unmovable block, a
/// reserve page, a hole, a block being moved by another compaction) rules
/// it out. A wholly free pageblock is one free block of a pageblock or
/// more, also ruled out, so the count is never 0.
fn movable_frames(meta: &[FrameMeta], start: u32) -> Option<u32> {
    let end = start + (1 << PAGEBLOCK_ORDER);
    let (mut live, mut at) = (0, start);
    while at < end {
        let frame = &meta[at as usize];
        let order = frame.order();
        if order >= PAGEBLOCK_ORDER {
            return None;
        }
        match frame.state() {
            State::FreeHead => {}
            State::AllocatedHead
                if frame
                    .freetype()
                    .is_some_and(|ft| ft.mobility == Mobility::Movable) =>
            {
                live += 1 << order;
            }
            _ => return None,
        }
        at += 1 << order;
    }
    Some(live)
}

/// One bit per frame of a pageblock: the frames a compaction holds.
#[derive(Clone, Debug)]
pub(crate) struct PageblockFrames([u64; PAGEBLOCK_WORDS]);

const PAGEBLOCK_WORDS: usize = (1 << PAGEBLOCK_ORDER) / 64;

impl PageblockFrames {
    pub(crate) const fn new() -> Self {
        Self([0; PAGEBLOCK_WORDS])
    }

    /// Marks the `count` frames from `first` (offsets in the pageblock).
    pub(crate) fn insert(&mut self, first: u32, count: u32) {
        for offset in first..first + count {
            self.0[(offset / 64) as usize] |= 1 << (offset % 64);
        }
    }

    pub(crate) fn contains(&self, offset: u32) -> bool {
        self.0[(offset / 64) as usize] & (1 << (offset % 64)) != 0
    }

    fn is_full(&self) -> bool {
        self.0.iter().all(|&word| word == u64::MAX)
    }

    /// Maximal runs of marked frames, as `(first, end)` offsets.
    fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let frames = 1u32 << PAGEBLOCK_ORDER;
        let mut at = 0;
        core::iter::from_fn(move || {
            while at < frames && !self.contains(at) {
                at += 1;
            }
            if at == frames {
                return None;
            }
            let first = at;
            while at < frames && self.contains(at) {
                at += 1;
            }
            Some((first, at))
        })
    }
}
