//! [`PageAllocator`]: the locked core behind per-CPU caches.
//!
//! Order-0 pages go through a cache per CPU and freetype, refilled from and
//! drained to the core in batches of [`CACHE_BATCH`], so the common case
//! takes no shared lock. Everything else takes the core lock. Lock order is
//! always cache, then core.
//!
//! An allocation that fails for lack of memory climbs a rescue ladder,
//! trying again after each rung that may have helped ([`Rescue`]):
//! 1. drain every CPU's cache into the core: pages cached on another CPU
//!    are free, and each one pins its pageblock against conversion;
//! 2. for a page-table page, compact: move the movable blocks out of one
//!    pageblock (through the owner's [`Migrate`] hook, see
//!    [`PageAllocator::with_migrator`]) so it can be converted whole;
//! 3. for a page-table page, the single-page fallback
//!    (`Config::single_page_fallback`), never an unprotected page.
//!
//! Only past the ladder, and only with `PtFallback::Unprotected`, does a
//! page table come out unprotected (exposed, counted).
//!
//! `cpu` arguments name the calling CPU. The kernel passes its own CPU
//! number with preemption off; host tests pass a thread's number. Using
//! another CPU's cache is safe (each cache has its own lock), only slower.

use crate::backend::{DirectMap, DirectMapError, Migrate, PageSize, ProtectReport, SplitPages};
use crate::core::{Core, RESERVE_CAPACITY, Reach};
use crate::error::{AllocError, FreeError, InitError};
use crate::freetype::{Freetype, NR_FREETYPES, Protection};
use crate::meta::{FrameMeta, State};
use crate::stats::Stats;
use crate::strategy::{PtFallback, Strategy};
use crate::sync::{AtomicU8, Guard, Lock, Ordering};
use crate::{MAX_ORDER, PAGEBLOCK_ORDER, Pfn};

/// Pages a per-CPU cache holds per freetype.
pub const CACHE_CAPACITY: usize = 64;
/// Pages moved between a cache and the core at a time.
pub const CACHE_BATCH: usize = 32;
mod compact;

pub use compact::CANDIDATES_PER_COMPACTION;

const CACHE_BATCH_ORDER: u32 = CACHE_BATCH.trailing_zeros();
const _: () = assert!(CACHE_BATCH.is_power_of_two() && CACHE_BATCH <= CACHE_CAPACITY);

bitflags::bitflags! {
    /// How an allocation may be served.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AllocFlags: u8 {
        /// Zero the pages (the backend does it, in a write window or
        /// through a temporary mapping as the protection requires).
        const ZERO = 1 << 0;
        /// The caller cannot wait for a conversion or a flush: fail with
        /// [`AllocError::WouldBlock`] rather than convert.
        const NO_BLOCK = 1 << 1;
        /// Page-table pages only: if nothing else is free, take one from
        /// the split reserve.
        const USE_RESERVE = 1 << 2;
    }
}

/// Set-up choices.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The freetype page tables (and the split reserve) use. Must be
    /// key-protected.
    pub page_table: Freetype,
    /// Pages the split reserve is kept at (at most 64). One conversion
    /// splits at most one 1 GiB mapping (one page); protecting a 4 KiB
    /// page inside a 1 GiB mapping costs two (1 GiB -> 2 MiB -> 4 KiB).
    pub reserve_target: usize,
    /// Whole free pageblocks kept for conversions to the page-table
    /// freetype: no other allocation may take one (break it up, or convert
    /// it) when that would leave fewer. [`DEFAULT_CONVERSION_WATERMARK`] is
    /// the measured default; 0 turns the watermark off.
    pub conversion_watermark: usize,
    /// The last resort when no pageblock can be converted: protect one
    /// free page of a mapped pageblock by itself as a page-table page
    /// (splitting that pageblock's 2 MiB mapping with a reserve page), and
    /// give it back its pageblock's protection when it is freed. A page
    /// table is never handed out unprotected; with this, OutOfMemory means
    /// no mapped page is free at all. Needs a backend that implements
    /// [`DirectMap::protect_frame`](crate::DirectMap::protect_frame).
    pub single_page_fallback: bool,
    /// How page-table memory is made (the policy lab; see [`Strategy`]).
    /// `Freetype`, today's design, by default. `Pagewise` protects each
    /// page table alone through `protect_frame`; `Granular` needs a
    /// backend whose [`largest_page`](crate::DirectMap::largest_page) is
    /// 2 MiB at most; `ProtectedFirst` protects the memory
    /// [`add_memory`](PageAllocator::add_memory) is given.
    pub strategy: Strategy,
    /// What a page-table allocation does when no protected page can be
    /// had: fail (`Fail`, the default), or hand out an exposed, unprotected
    /// page (`Unprotected`, counted in [`Stats`]).
    pub pt_fallback: PtFallback,
}

impl Default for Config {
    /// Today's behaviour: page tables under key 1, a reserve of 16 pages,
    /// the default watermark, the single-page fallback on, `Freetype`, and
    /// no unprotected page tables.
    fn default() -> Self {
        Self {
            page_table: Freetype {
                mobility: crate::Mobility::Unmovable,
                protection: Protection::Pkey(1),
            },
            reserve_target: 16,
            conversion_watermark: DEFAULT_CONVERSION_WATERMARK,
            single_page_fallback: true,
            strategy: Strategy::Freetype,
            pt_fallback: PtFallback::Fail,
        }
    }
}

/// The default [`Config::conversion_watermark`], in pageblocks. Measured
/// with the fragmentation benchmark (`benches/fragmentation.rs`, which
/// prints it): see the README's "Fragmentation" section for the figures
/// and why this many.
pub const DEFAULT_CONVERSION_WATERMARK: usize = 4;

/// The rungs of the rescue ladder an allocation climbs before it reports
/// `OutOfMemory`, cheapest and least disruptive first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rescue {
    DrainCaches,
    Compact,
    SinglePage,
}

impl Rescue {
    const LADDER: [Rescue; 3] = [Rescue::DrainCaches, Rescue::Compact, Rescue::SinglePage];
}

/// One CPU's cache. Its counters live here, not in the core, so the fast
/// path never touches the core lock.
struct CpuCache {
    pages: [heapless::Vec<u32, CACHE_CAPACITY>; NR_FREETYPES],
    allocations: u64,
    frees: u64,
}

impl CpuCache {
    const fn new() -> Self {
        Self {
            pages: [const { heapless::Vec::new() }; NR_FREETYPES],
            allocations: 0,
            frees: 0,
        }
    }
}

/// The freetype buddy allocator. `CPUS` is the number of per-CPU caches.
pub struct PageAllocator<'m, D: DirectMap, const CPUS: usize> {
    meta: &'m [FrameMeta],
    base: Pfn,
    page_table: Freetype,
    core: Lock<Core>,
    caches: [Lock<CpuCache>; CPUS],
    backend: D,
    /// The owner of movable blocks, which compaction asks to move them.
    migrator: Option<&'m dyn Migrate>,
    strategy: Strategy,
    pt_fallback: PtFallback,
    /// Set (under the core lock) when a single-page fallback took a
    /// reserve page: the allocation that made it refills the reserve on
    /// its way out. An atomic, so the fast path reads it without the lock.
    reserve_to_refill: AtomicU8,
}

impl<'m, D: DirectMap, const CPUS: usize> PageAllocator<'m, D, CPUS> {
    /// An allocator for frames `base .. base + meta.len()`, all holes until
    /// given with [`add_memory`](Self::add_memory).
    pub fn new(
        meta: &'m [FrameMeta],
        base: Pfn,
        config: Config,
        backend: D,
    ) -> Result<Self, InitError> {
        if !base.0.is_multiple_of(1 << MAX_ORDER) {
            return Err(InitError::MisalignedBase(base));
        }
        if meta.len() as u64 >= u64::from(u32::MAX) {
            return Err(InitError::TooManyFrames(meta.len() as u64));
        }
        if !matches!(config.page_table.protection, Protection::Pkey(_)) {
            return Err(InitError::PageTableFreetype(config.page_table));
        }
        let largest = backend.largest_page();
        if config.strategy == Strategy::Granular
            && !matches!(largest, Some(size) if size <= PageSize::Size2M)
        {
            return Err(InitError::NotGranular(largest));
        }
        Ok(Self {
            meta,
            base,
            page_table: config.page_table,
            core: Lock::new(Core::new(
                base.0,
                config.page_table,
                config.reserve_target.min(RESERVE_CAPACITY),
                config.conversion_watermark as u64,
                config.single_page_fallback,
                config.strategy,
            )),
            // A constant, so that the caches (several KiB each) are written
            // straight into place: a kernel builds the allocator on a
            // bounded boot stack.
            #[cfg(not(loom))]
            caches: [const { Lock::new(CpuCache::new()) }; CPUS],
            #[cfg(loom)]
            caches: core::array::from_fn(|_| Lock::new(CpuCache::new())),
            backend,
            migrator: None,
            strategy: config.strategy,
            pt_fallback: config.pt_fallback,
            reserve_to_refill: AtomicU8::new(0),
        })
    }

    /// Names the owner of movable blocks ([`Mobility::Movable`](crate::Mobility::Movable)
    /// freetypes): with it, a page-table allocation that finds no whole
    /// free pageblock compacts one, moving its movable blocks elsewhere
    /// through `migrator` (see [`Migrate`] for the contract). Without it,
    /// movable blocks stay put.
    pub fn with_migrator(mut self, migrator: &'m dyn Migrate) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// The direct-map backend.
    pub fn backend(&self) -> &D {
        &self.backend
    }

    /// Takes the core lock, waiting as the backend says
    /// ([`DirectMap::wait_for_lock`]).
    fn lock_core(&self) -> Guard<'_, Core> {
        self.core.lock(|| self.backend.wait_for_lock())
    }

    /// Takes CPU `cpu`'s cache lock (in range: callers check), waiting as
    /// the backend says.
    fn lock_cache(&self, cpu: usize) -> Guard<'_, CpuCache> {
        self.caches[cpu].lock(|| self.backend.wait_for_lock())
    }

    /// First managed frame.
    pub fn base(&self) -> Pfn {
        self.base
    }

    /// Number of frames the metadata covers.
    pub fn frames(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Gives the allocator the free frames `[start, end)`, whose direct-map
    /// mapping has `freetype`'s protection now. Partial pageblocks are
    /// fine: a pageblock with holes is never converted, so its frames stay
    /// with `freetype`. Under `Strategy::ProtectedFirst`, the whole
    /// pageblocks of a `Mapped` freetype go to the page-table freetype
    /// here, protected one aligned block at a time (a block the backend
    /// refuses stays as given).
    pub fn add_memory(&self, start: Pfn, end: Pfn, freetype: Freetype) -> Result<(), InitError> {
        let bad = InitError::BadRange { start, end };
        let first = start.0.checked_sub(self.base.0).ok_or(bad)?;
        let last = end.0.checked_sub(self.base.0).ok_or(bad)?;
        if first >= last || last > self.frames() {
            return Err(bad);
        }
        let (first, last) = (first as u32, last as u32);
        let mut core = self.lock_core();
        // Check everything before changing anything.
        for index in first..last {
            if self.meta[index as usize].state() != State::Hole {
                return Err(InitError::Overlap(Pfn(self.base.0 + u64::from(index))));
            }
        }
        let pageblock_size = 1u32 << PAGEBLOCK_ORDER;
        let mut pageblock = first & !(pageblock_size - 1);
        while pageblock < last {
            let block_end = pageblock
                .saturating_add(pageblock_size)
                .min(self.frames() as u32);
            let given_before = (pageblock..block_end)
                .filter(|&i| !(first..last).contains(&i))
                .any(|i| self.meta[i as usize].state() != State::Hole);
            if given_before && self.meta[pageblock as usize].pageblock_freetype() != Some(freetype)
            {
                return Err(InitError::MixedPageblock(Pfn(
                    self.base.0 + u64::from(pageblock)
                )));
            }
            pageblock = block_end;
        }
        let mut pageblock = first & !(pageblock_size - 1);
        while pageblock < last {
            let head = &self.meta[pageblock as usize];
            let new_pageblock = (pageblock..(pageblock + pageblock_size).min(self.frames() as u32))
                .all(|i| self.meta[i as usize].state() == State::Hole);
            if new_pageblock {
                head.set_pageblock_freetype(freetype);
                core.add_pageblock(freetype);
            }
            pageblock += pageblock_size;
        }
        for index in first..last {
            self.meta[index as usize].set_state(State::Tail);
        }
        // `ProtectedFirst`: the whole pageblocks of mapped memory start in
        // the page-table freetype; partial ones (with holes) cannot be
        // converted, so they stay as given.
        let whole = (
            first.next_multiple_of(pageblock_size),
            last & !(pageblock_size - 1),
        );
        if self.strategy == Strategy::ProtectedFirst
            && freetype.protection == Protection::Mapped
            && whole.0 < whole.1
        {
            core.release_range(self.meta, first, whole.0, freetype);
            core.protect_fresh(self.meta, &self.backend, whole.0, whole.1, freetype);
            core.release_range(self.meta, whole.1, last, freetype);
        } else {
            core.release_range(self.meta, first, last, freetype);
        }
        Ok(())
    }

    fn index_of(&self, pfn: Pfn) -> Option<u32> {
        let index = pfn.0.checked_sub(self.base.0)?;
        (index < self.frames()).then_some(index as u32)
    }

    /// The index of `pfn` if it is a single page-table page of the
    /// fallback: allocated as a page table in a pageblock of another
    /// freetype.
    fn single_page(&self, pfn: Pfn) -> Option<u32> {
        let index = self.index_of(pfn)?;
        let frame = &self.meta[index as usize];
        let home = self.home_freetype(index)?;
        (frame.freetype() == Some(self.page_table) && home != self.page_table).then_some(index)
    }

    /// The freetype of the pageblock holding frame `index`: where a free
    /// block of it belongs.
    fn home_freetype(&self, index: u32) -> Option<Freetype> {
        let pageblock = index & !((1 << PAGEBLOCK_ORDER) - 1);
        self.meta[pageblock as usize].pageblock_freetype()
    }

    fn pfn_of(&self, index: u32) -> Pfn {
        Pfn(self.base.0 + u64::from(index))
    }

    /// Allocates `1 << order` contiguous frames of `freetype`.
    pub fn alloc(
        &self,
        cpu: usize,
        order: u32,
        freetype: Freetype,
        flags: AllocFlags,
    ) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::InvalidOrder(order));
        }
        if cpu >= CPUS {
            return Err(AllocError::InvalidCpu(cpu));
        }
        if flags.contains(AllocFlags::USE_RESERVE) {
            if freetype != self.page_table {
                return Err(AllocError::ReserveNotForFreetype(freetype));
            }
            if order != 0 {
                return Err(AllocError::ReserveNeedsOrderZero(order));
            }
        }
        let first_reach = if flags.contains(AllocFlags::NO_BLOCK) {
            Reach::FreeLists
        } else {
            Reach::Convert
        };
        let mut result = self.alloc_uncounted(cpu, order, freetype, flags, first_reach);
        if result == Err(AllocError::OutOfMemory) {
            result = self.climb_rescue_ladder(cpu, order, freetype, flags, first_reach);
        }
        let (pfn, from_reserve) = match result {
            Ok(found) => found,
            Err(error) => {
                let no_protected_page = matches!(
                    error,
                    AllocError::OutOfMemory | AllocError::ReserveExhausted
                ) && freetype == self.page_table;
                // The dodge: no protected page to be had, so an exposed one.
                if no_protected_page
                    && self.pt_fallback == PtFallback::Unprotected
                    && order == 0
                    && !flags.contains(AllocFlags::NO_BLOCK)
                {
                    match self.alloc_exposed(flags) {
                        Err(AllocError::OutOfMemory) => {}
                        done => return done,
                    }
                }
                let mut core = self.lock_core();
                core.stats.failed_allocations += 1;
                if no_protected_page {
                    core.stats.page_table_failures += 1;
                }
                return Err(error);
            }
        };
        if flags.contains(AllocFlags::ZERO)
            && let Err(error) = self.backend.zero(pfn, order, freetype.protection)
        {
            // Give it back where it came from, so the failed call keeps no
            // memory (and the reserve keeps its page).
            if from_reserve {
                let mut core = self.lock_core();
                if let Some(index) = self.index_of(pfn) {
                    core.return_reserve_page(self.meta, index);
                }
            } else if let Some(index) = self.single_page(pfn) {
                // A single page-table page, never handed out: give it back
                // its pageblock's protection without a wipe (it holds that
                // pageblock's old contents only), or, if even that fails,
                // keep it protected in the split reserve.
                let mut core = self.lock_core();
                let home = self.home_freetype(index);
                let given_back = home.is_some_and(|home| {
                    core.free_single_page(self.meta, &self.backend, index, home, false)
                        .is_ok()
                });
                if !given_back && !core.park_in_reserve(self.meta, index) {
                    unreachable!("a reserve of {RESERVE_CAPACITY} pages is never full here");
                }
            } else if let Err(free_error) = self.free(cpu, pfn, order) {
                unreachable!("freeing a block just allocated failed: {free_error}");
            }
            self.lock_core().stats.failed_allocations += 1;
            return Err(AllocError::Backend(error));
        }
        // A single-page fallback may have taken a reserve page for its
        // split: top the reserve up again now that this allocation is
        // done, outside the core's allocation path (refilling from inside
        // it could recurse).
        if self.reserve_to_refill.load(Ordering::Acquire) != 0
            && self.reserve_to_refill.swap(0, Ordering::AcqRel) != 0
        {
            // Best effort, as for conversions: an empty reserve only
            // matters to the next split, which reports it.
            let _ = self.lock_core().refill_reserve(self.meta, &self.backend);
        }
        Ok(pfn)
    }

    /// `PtFallback::Unprotected`: a free mapped page handed out as a page
    /// table, unprotected and marked as exposed (zeroed as a mapped page
    /// if asked). `OutOfMemory` if no mapped page is free; a zeroing
    /// failure gives the page back and counts as a failed allocation.
    #[cold]
    fn alloc_exposed(&self, flags: AllocFlags) -> Result<Pfn, AllocError> {
        // Read before the core lock: caches are locked first.
        let stamp = self.total_allocations();
        let index = self
            .lock_core()
            .take_exposed(self.meta, stamp)
            .ok_or(AllocError::OutOfMemory)?;
        let pfn = self.pfn_of(index);
        let Some(home) = self.home_freetype(index) else {
            unreachable!("a managed frame's pageblock records a valid freetype")
        };
        if flags.contains(AllocFlags::ZERO)
            && let Err(error) = self.backend.zero(pfn, 0, home.protection)
        {
            let mut core = self.lock_core();
            core.unexpose(self.meta, index, home, stamp);
            core.stats.failed_allocations += 1;
            return Err(AllocError::Backend(error));
        }
        Ok(pfn)
    }

    /// Allocations made so far, on every CPU: the clock exposure is
    /// measured by. Takes each cache lock, then the core lock; call with
    /// none held.
    fn total_allocations(&self) -> u64 {
        let cached: u64 = (0..CPUS).map(|cpu| self.lock_cache(cpu).allocations).sum();
        cached + self.lock_core().stats.allocations
    }

    /// After an allocation found no memory: climbs the rescue ladder,
    /// cheapest rung first, trying again after each one that may have
    /// helped. Kept out of line, off the fast path.
    #[cold]
    #[inline(never)]
    fn climb_rescue_ladder(
        &self,
        cpu: usize,
        order: u32,
        freetype: Freetype,
        flags: AllocFlags,
        first_reach: Reach,
    ) -> Result<(Pfn, bool), AllocError> {
        let mut result = Err(AllocError::OutOfMemory);
        for rescue in Rescue::LADDER {
            if result != Err(AllocError::OutOfMemory) {
                break;
            }
            if self.rescue(rescue, order, freetype, flags) {
                let reach = match rescue {
                    Rescue::SinglePage => Reach::SinglePage,
                    Rescue::DrainCaches | Rescue::Compact => first_reach,
                };
                result = self.alloc_uncounted(cpu, order, freetype, flags, reach);
            }
        }
        result
    }

    /// Runs one rung of the rescue ladder for a failed allocation; true
    /// if it may have made room, so trying again is worth it.
    fn rescue(&self, rescue: Rescue, order: u32, freetype: Freetype, flags: AllocFlags) -> bool {
        let page_table = freetype == self.page_table && !flags.contains(AllocFlags::NO_BLOCK);
        match rescue {
            // Free pages parked in per-CPU caches (this CPU's or
            // another's) are free memory too, and they pin their
            // pageblocks.
            Rescue::DrainCaches => {
                let drained = self.drain_caches() > 0;
                if drained {
                    self.lock_core().stats.drains_before_failing += 1;
                }
                drained
            }
            // `Pagewise` page tables never need a whole pageblock.
            Rescue::Compact => {
                page_table
                    && self.strategy != Strategy::Pagewise
                    && order <= PAGEBLOCK_ORDER
                    && self.compact()
            }
            Rescue::SinglePage => {
                page_table && order == 0 && self.lock_core().single_page_fallback()
            }
        }
    }

    /// One attempt at an allocation, through the cache for order 0; the
    /// flag says whether the page came from the split reserve.
    fn alloc_uncounted(
        &self,
        cpu: usize,
        order: u32,
        freetype: Freetype,
        flags: AllocFlags,
        reach: Reach,
    ) -> Result<(Pfn, bool), AllocError> {
        // `Pagewise` page tables are protected one by one, never cached.
        let pagewise = freetype == self.page_table && self.strategy == Strategy::Pagewise;
        if order == 0 && !pagewise {
            self.alloc_cached(cpu, freetype, flags, reach)
        } else {
            self.alloc_core(order, freetype, flags, reach)
        }
    }

    /// A block from the locked core; the flag says whether it came from
    /// the split reserve (`USE_RESERVE`, a `Pagewise` page table).
    fn alloc_core(
        &self,
        order: u32,
        freetype: Freetype,
        flags: AllocFlags,
        reach: Reach,
    ) -> Result<(Pfn, bool), AllocError> {
        let mut core = self.lock_core();
        match core.alloc(self.meta, &self.backend, order, freetype, reach) {
            Ok(index) => {
                core.mark_allocated(self.meta, index, order, freetype);
                // A page protected alone may have split with a reserve page.
                if core.reserve_low_after_fallback() {
                    self.reserve_to_refill.store(1, Ordering::Release);
                }
                Ok((self.pfn_of(index), false))
            }
            Err(error) => {
                if flags.contains(AllocFlags::USE_RESERVE)
                    && let Some(index) = core.take_reserve_page()
                {
                    core.mark_allocated(self.meta, index, 0, freetype);
                    return Ok((self.pfn_of(index), true));
                }
                Err(error)
            }
        }
    }

    /// An order-0 page through the CPU's cache; the flag says whether it
    /// came from the split reserve (`USE_RESERVE`).
    fn alloc_cached(
        &self,
        cpu: usize,
        freetype: Freetype,
        flags: AllocFlags,
        reach: Reach,
    ) -> Result<(Pfn, bool), AllocError> {
        let mut cache = self.lock_cache(cpu);
        let stack = &mut cache.pages[freetype.index()];
        if stack.is_empty() {
            let mut core = self.lock_core();
            // Refill with whole free blocks, smallest first: single pages
            // before pairs, pairs before quads, up to a whole batch. Taking
            // the smallest keeps the larger blocks whole (breaking a batch
            // block while single pages lay free scattered order-0 pages
            // over every pageblock), and taking whole blocks costs one
            // free-list operation per block, not per page.
            while stack.len() < CACHE_BATCH {
                let room = (CACHE_BATCH - stack.len()).ilog2();
                let Some((first, order)) = core.take_smallest_whole(self.meta, freetype, room)
                else {
                    break;
                };
                for index in (first..first + (1 << order)).rev() {
                    let frame = &self.meta[index as usize];
                    frame.set_order(0);
                    frame.set_freetype(freetype);
                    frame.set_state(State::Cached);
                    // At most `room` pages were taken, and CACHE_BATCH <=
                    // CACHE_CAPACITY.
                    let _ = stack.push(index);
                }
            }
            // No block that small at all: split one batch-sized block off a
            // larger one in one go (that block has to be broken anyway).
            if stack.is_empty()
                && let Some(first) = core.take_block(self.meta, CACHE_BATCH_ORDER, freetype)
            {
                for index in (first..first + CACHE_BATCH as u32).rev() {
                    let frame = &self.meta[index as usize];
                    frame.set_order(0);
                    frame.set_freetype(freetype);
                    frame.set_state(State::Cached);
                    // The stack was empty and CACHE_BATCH <= CACHE_CAPACITY.
                    let _ = stack.push(index);
                }
            }
            // What is left comes page by page: split from a larger block,
            // stolen, or converted (for the first page only).
            for taken in stack.len()..CACHE_BATCH {
                // Convert for the first page only; a partial batch is fine.
                let reach = if taken == 0 { reach } else { Reach::FreeLists };
                match core.alloc(self.meta, &self.backend, 0, freetype, reach) {
                    // A page stolen from another mobility's pageblock
                    // (`Core::steal`) is handed out at once, never cached:
                    // a cache holds pages of its own freetype only.
                    Ok(index) if self.home_freetype(index) != Some(freetype) => {
                        if taken == 0 {
                            core.mark_allocated(self.meta, index, 0, freetype);
                            if core.reserve_low_after_fallback() {
                                self.reserve_to_refill.store(1, Ordering::Release);
                            }
                            return Ok((self.pfn_of(index), false));
                        }
                        self.meta[index as usize].set_state(State::Tail);
                        if let Some(home) = self.home_freetype(index) {
                            core.release(self.meta, index, 0, home);
                        }
                        break;
                    }
                    Ok(index) => {
                        let frame = &self.meta[index as usize];
                        frame.set_order(0);
                        frame.set_freetype(freetype);
                        frame.set_state(State::Cached);
                        // The stack was empty and CACHE_BATCH <= CACHE_CAPACITY.
                        let _ = stack.push(index);
                    }
                    Err(error) if taken == 0 => {
                        if flags.contains(AllocFlags::USE_RESERVE)
                            && let Some(index) = core.take_reserve_page()
                        {
                            core.mark_allocated(self.meta, index, 0, freetype);
                            return Ok((self.pfn_of(index), true));
                        }
                        return Err(error);
                    }
                    Err(_) => break,
                }
            }
            core.stats.cache_refills += 1;
        }
        let Some(index) = stack.pop() else {
            unreachable!("the cache was refilled above")
        };
        // Only this cache holds the page, and we hold the cache: a plain
        // store suffices (frees are what race, and they use a CAS).
        let frame = &self.meta[index as usize];
        debug_assert_eq!(frame.state(), State::Cached);
        frame.set_state(State::AllocatedHead);
        cache.allocations += 1;
        Ok((self.pfn_of(index), false))
    }

    /// Frees a block allocated with `order`. Bad input (a frame never
    /// allocated, a double free, the wrong order) is an error and changes
    /// nothing.
    pub fn free(&self, cpu: usize, pfn: Pfn, order: u32) -> Result<(), FreeError> {
        if order > MAX_ORDER {
            return Err(FreeError::InvalidOrder(order));
        }
        if cpu >= CPUS {
            return Err(FreeError::InvalidCpu(cpu));
        }
        let index = self.index_of(pfn).ok_or(FreeError::OutOfRange(pfn))?;
        let frame = &self.meta[index as usize];
        if frame.state() != State::AllocatedHead {
            return Err(FreeError::NotAllocated(pfn));
        }
        if frame.order() != order {
            return Err(FreeError::WrongOrder {
                pfn,
                allocated: frame.order(),
                given: order,
            });
        }
        // A block goes back to its pageblock's freetype, which is the one
        // it was allocated as unless it was stolen (same protection) or is
        // a single page-table page in a mapped pageblock (the fallback).
        let Some(freetype) = self.home_freetype(index) else {
            unreachable!("a managed frame's pageblock records a valid freetype")
        };
        if frame.freetype() == Some(self.page_table) && freetype != self.page_table {
            // An exposed table's exposure ends now; read before the core
            // lock (caches are locked first).
            let now = if frame.is_exposed() {
                self.total_allocations()
            } else {
                0
            };
            let mut core = self.lock_core();
            // Claim it under the lock: a racing free of the same page fails.
            if !frame.transition(State::AllocatedHead, State::Tail) {
                return Err(FreeError::NotAllocated(pfn));
            }
            if frame.is_exposed() {
                core.free_exposed(self.meta, index, freetype, now);
                return Ok(());
            }
            return core
                .free_single_page(self.meta, &self.backend, index, freetype, true)
                .map_err(|error| {
                    // Still allocated and still protected: nothing lost.
                    frame.set_state(State::AllocatedHead);
                    FreeError::Backend(error)
                });
        }
        if order == 0 {
            return self.free_cached(cpu, index, pfn, freetype);
        }
        let mut core = self.lock_core();
        // Claim it under the lock: a racing free of the same block fails.
        if !frame.transition(State::AllocatedHead, State::Tail) {
            return Err(FreeError::NotAllocated(pfn));
        }
        core.free(self.meta, index, order, freetype);
        Ok(())
    }

    fn free_cached(
        &self,
        cpu: usize,
        index: u32,
        pfn: Pfn,
        freetype: Freetype,
    ) -> Result<(), FreeError> {
        let mut cache = self.lock_cache(cpu);
        // The atomic claim makes a racing double free fail here.
        let frame = &self.meta[index as usize];
        if !frame.transition(State::AllocatedHead, State::Cached) {
            return Err(FreeError::NotAllocated(pfn));
        }
        // Read the pageblock's freetype again now that the page is ours:
        // the one read before the claim may belong to an earlier life of
        // the frame (its pageblock converted since).
        let freetype = self.home_freetype(index).unwrap_or(freetype);
        frame.set_freetype(freetype);
        cache.frees += 1;
        let stack = &mut cache.pages[freetype.index()];
        if stack.is_full() {
            let mut core = self.lock_core();
            self.drain(&mut core, stack, freetype, CACHE_BATCH);
            core.stats.cache_drains += 1;
        }
        // A batch was just drained if it was full.
        let _ = stack.push(index);
        Ok(())
    }

    fn drain(
        &self,
        core: &mut Core,
        stack: &mut heapless::Vec<u32, CACHE_CAPACITY>,
        freetype: Freetype,
        count: usize,
    ) {
        for _ in 0..count {
            let Some(index) = stack.pop() else { break };
            let frame = &self.meta[index as usize];
            frame.set_state(State::Tail);
            core.release(self.meta, index, 0, freetype);
        }
    }

    /// Returns every cached page, of every freetype and CPU, to the core,
    /// one cache at a time (cache lock, then core lock, as everywhere: the
    /// caller holds neither), and says how many came back. For statistics,
    /// tests, and before taking a CPU offline; allocations do it themselves
    /// before they fail for lack of memory, since one cached page keeps its
    /// whole pageblock from being converted.
    pub fn drain_caches(&self) -> usize {
        let mut drained = 0;
        for cpu in 0..CPUS {
            let mut cache = self.lock_cache(cpu);
            let mut core = self.lock_core();
            for freetype in Freetype::all() {
                let stack = &mut cache.pages[freetype.index()];
                if !stack.is_empty() {
                    drained += stack.len();
                    self.drain(&mut core, stack, freetype, CACHE_CAPACITY);
                    core.stats.cache_drains += 1;
                }
            }
        }
        drained
    }

    /// Tops the split reserve up to its target. Call before an operation
    /// that may split the direct map outside a conversion.
    pub fn refill_reserve(&self) -> Result<(), AllocError> {
        self.lock_core().refill_reserve(self.meta, &self.backend)
    }

    /// Runs a direct-map change with the split reserve as its only source
    /// of page-table pages: the kernel's own splits (protecting single
    /// pages) go through here, after [`refill_reserve`](Self::refill_reserve).
    /// Pages the call used become direct-map page tables; if it fails, they
    /// return to the reserve. It may take at most
    /// [`MAX_SPLIT_PAGES_PER_CALL`](crate::MAX_SPLIT_PAGES_PER_CALL) pages.
    pub fn with_split_reserve(
        &self,
        f: impl FnOnce(&D, &mut dyn SplitPages) -> Result<ProtectReport, DirectMapError>,
    ) -> Result<ProtectReport, DirectMapError> {
        let mut core = self.lock_core();
        core.split_with_reserve(self.meta, |pages| f(&self.backend, pages))
    }

    /// Fault injection: while `on`, splits find the reserve empty (its
    /// pages stay put), so an operation that must split fails with
    /// `NoSplitPage` / [`AllocError::ReserveExhausted`]. For tests and the
    /// kernel's `inject=` option.
    pub fn inject_empty_reserve(&self, on: bool) {
        self.lock_core().reserve_fault = on;
    }

    /// A snapshot of the counters, including pages in per-CPU caches.
    pub fn stats(&self) -> Stats {
        let mut cached = [0u64; NR_FREETYPES];
        let (mut allocations, mut frees) = (0, 0);
        for cpu in 0..CPUS {
            let cache = self.lock_cache(cpu);
            for (count, stack) in cached.iter_mut().zip(cache.pages.iter()) {
                *count += stack.len() as u64;
            }
            allocations += cache.allocations;
            frees += cache.frees;
        }
        let core = self.lock_core();
        let mut stats = core.snapshot();
        stats.cached_pages = cached;
        stats.allocations += allocations;
        stats.frees += frees;
        stats.exposure_allocations = core.exposure(stats.allocations);
        drop(core);
        // Cached page-table pages pin their pageblocks too.
        stats.stranded_protected += cached[self.page_table.index()];
        stats.direct_map = self.backend.mappings();
        stats
    }

    /// Frame indices held by the split reserve (for checkers).
    pub fn reserve_frames(&self) -> heapless::Vec<Pfn, RESERVE_CAPACITY> {
        let core = self.lock_core();
        core.reserve_pages()
            .iter()
            .map(|&i| self.pfn_of(i))
            .collect()
    }

    /// What the allocator believes about one frame, for checkers.
    pub fn frame_info(&self, pfn: Pfn) -> Option<FrameInfo> {
        let index = self.index_of(pfn)?;
        let frame = &self.meta[index as usize];
        let pageblock = &self.meta[(index & !((1 << PAGEBLOCK_ORDER) - 1)) as usize];
        Some(FrameInfo {
            state: match frame.state() {
                State::Hole => FrameState::Hole,
                State::FreeHead => FrameState::FreeHead,
                State::AllocatedHead => FrameState::AllocatedHead,
                State::Tail => FrameState::Tail,
                State::Cached => FrameState::Cached,
                State::Reserve => FrameState::Reserve,
                State::DirectMapTable => FrameState::DirectMapTable,
            },
            order: frame.order(),
            freetype: frame.freetype(),
            pageblock_freetype: pageblock.pageblock_freetype(),
            exposed: frame.state() == State::AllocatedHead && frame.is_exposed(),
        })
    }
}

/// A frame's state as the allocator records it (see [`PageAllocator::frame_info`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameState {
    /// Not managed.
    Hole,
    /// First frame of a free block.
    FreeHead,
    /// First frame of an allocated block.
    AllocatedHead,
    /// Another frame of a block.
    Tail,
    /// In a per-CPU cache.
    Cached,
    /// In the split reserve.
    Reserve,
    /// A direct-map page table made by a split.
    DirectMapTable,
}

/// One frame's metadata, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// State.
    pub state: FrameState,
    /// Order, for heads.
    pub order: u32,
    /// Freetype, for heads, cached, reserve and table frames.
    pub freetype: Option<Freetype>,
    /// Freetype of the frame's pageblock.
    pub pageblock_freetype: Option<Freetype>,
    /// An allocated page table handed out unprotected
    /// ([`PtFallback::Unprotected`]): mapped as its pageblock, not with
    /// the page-table key.
    pub exposed: bool,
}
