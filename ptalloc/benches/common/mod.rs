//! Shared by the `alloc_throughput` (criterion) and `summary` benchmarks: a
//! counting model of the direct map, adapters that give ptalloc and the
//! peer crate one interface, and the deterministic workloads.
//!
//! Nothing here depends on `ptalloc::sim` (feature `std`): the model below
//! is deliberately small, so that it costs little in the timed loops, but
//! it is honest about what the counts measure. It records which 1 GiB
//! regions are split into 2 MiB entries, which 2 MiB entries are split into
//! 4 KiB ones, and the protection of every entry; it checks that each
//! change starts from the protection the caller claims, and that every
//! page table a split installs ends up key-protected.

// Each benchmark binary uses part of this module.
#![allow(dead_code)]

use buddy_system_allocator::{FrameAllocator, LockedFrameAllocator};
use ptalloc::{
    AllocFlags, Config, DirectMap, DirectMapError, FlushReport, FrameMeta, Freetype, Mobility,
    PageAllocator, PageblockRange, Pfn, ProtectReport, Protection, SplitPages,
};
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Frames per 2 MiB direct-map entry (one pageblock).
pub const FRAMES_2M: u64 = 512;
/// Frames per 1 GiB direct-map entry.
pub const FRAMES_1G: u64 = 512 * 512;

/// Managed memory in every benchmark: 2 GiB from frame 0 (two 1 GiB
/// direct-map entries, 6 MiB of metadata).
pub const FRAMES: u64 = 2 * FRAMES_1G;

/// The page-table freetype (key 1), as the kernel will configure it.
pub const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
/// Normal kernel memory.
pub const MAPPED: Freetype = Freetype::KERNEL;
/// Secret user frames, absent from the direct map.
pub const UNMAPPED: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};

/// Split reserve target used by both sides of the churn comparison.
pub const RESERVE_TARGET: usize = 16;

/// The peer's `ORDER` parameter: largest block 2^18 frames (1 GiB), the
/// same as ptalloc's `MAX_ORDER`.
pub const PEER_ORDER: usize = 19;

// ---------------------------------------------------------------------------
// The direct-map model

#[derive(Clone)]
enum Pmd {
    /// One 2 MiB mapping.
    Large(Protection),
    /// Split into 512 4 KiB mappings.
    Split(Box<[Protection; 512]>),
}

enum Gig {
    /// One 1 GiB mapping.
    Huge(Protection),
    /// Split into 512 2 MiB entries.
    Split(Vec<Pmd>),
}

struct Model {
    gigs: Vec<Gig>,
}

impl Model {
    fn protection(&self, pfn: u64) -> Protection {
        match &self.gigs[(pfn / FRAMES_1G) as usize] {
            Gig::Huge(p) => *p,
            Gig::Split(pmds) => match &pmds[((pfn % FRAMES_1G) / FRAMES_2M) as usize] {
                Pmd::Large(p) => *p,
                Pmd::Split(ptes) => ptes[(pfn % FRAMES_2M) as usize],
            },
        }
    }
}

/// Counters of the model; [`BenchDirectMap::counts`] takes a snapshot.
#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    protect_calls: AtomicU64,
    page_protect_calls: AtomicU64,
    splits_1g: AtomicU64,
    splits_2m: AtomicU64,
    split_pages_taken: AtomicU64,
    mismatches: AtomicU64,
    unprotected_tables: AtomicU64,
}

/// A snapshot of the model's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    /// TLB flushes (pageblock batches and single pages).
    pub flushes: u64,
    /// `DirectMap::protect` calls (pageblock batches).
    pub protect_calls: u64,
    /// Single-page protection changes (the naive baseline only).
    pub page_protect_calls: u64,
    /// 1 GiB entries split into 2 MiB ones.
    pub splits_1g: u64,
    /// 2 MiB entries split into 4 KiB ones.
    pub splits_2m: u64,
    /// Page-table pages taken from a `SplitPages` source.
    pub split_pages_taken: u64,
    /// Changes whose claimed current protection was wrong (allocator bug).
    pub mismatches: u64,
    /// Split page tables left without a protection key (allocator bug).
    pub unprotected_tables: u64,
}

impl MapCounts {
    /// Counts accrued since `earlier`.
    pub fn since(self, earlier: MapCounts) -> MapCounts {
        MapCounts {
            flushes: self.flushes - earlier.flushes,
            protect_calls: self.protect_calls - earlier.protect_calls,
            page_protect_calls: self.page_protect_calls - earlier.page_protect_calls,
            splits_1g: self.splits_1g - earlier.splits_1g,
            splits_2m: self.splits_2m - earlier.splits_2m,
            split_pages_taken: self.split_pages_taken - earlier.split_pages_taken,
            mismatches: self.mismatches - earlier.mismatches,
            unprotected_tables: self.unprotected_tables - earlier.unprotected_tables,
        }
    }

    fn add(&mut self, other: MapCounts) {
        self.flushes += other.flushes;
        self.protect_calls += other.protect_calls;
        self.page_protect_calls += other.page_protect_calls;
        self.splits_1g += other.splits_1g;
        self.splits_2m += other.splits_2m;
        self.split_pages_taken += other.split_pages_taken;
        self.mismatches += other.mismatches;
        self.unprotected_tables += other.unprotected_tables;
    }
}

/// How shattered the direct map is.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapShape {
    /// 1 GiB regions mapped with 2 MiB entries.
    pub gigs_split: u64,
    /// 2 MiB regions mapped with 4 KiB entries.
    pub pmds_split: u64,
}

/// A direct map of `frames` frames from frame 0, all `Mapped` with 1 GiB
/// entries at first. Splits take their page tables only from the
/// `SplitPages` source; `zero` does nothing (the peer does not zero).
pub struct BenchDirectMap {
    model: Mutex<Model>,
    counters: Counters,
}

impl BenchDirectMap {
    /// A direct map of `frames` frames (a whole number of GiB).
    pub fn new(frames: u64) -> Self {
        assert!(
            frames > 0 && frames.is_multiple_of(FRAMES_1G),
            "whole GiB only"
        );
        let gigs = (0..frames / FRAMES_1G)
            .map(|_| Gig::Huge(Protection::Mapped))
            .collect();
        Self {
            model: Mutex::new(Model { gigs }),
            counters: Counters::default(),
        }
    }

    /// The counters now.
    pub fn counts(&self) -> MapCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MapCounts {
            flushes: get(&c.flushes),
            protect_calls: get(&c.protect_calls),
            page_protect_calls: get(&c.page_protect_calls),
            splits_1g: get(&c.splits_1g),
            splits_2m: get(&c.splits_2m),
            split_pages_taken: get(&c.split_pages_taken),
            mismatches: get(&c.mismatches),
            unprotected_tables: get(&c.unprotected_tables),
        }
    }

    /// How many 1 GiB and 2 MiB entries are split now.
    pub fn shape(&self) -> MapShape {
        let model = self.model.lock().expect("model lock");
        let mut shape = MapShape::default();
        for gig in &model.gigs {
            if let Gig::Split(pmds) = gig {
                shape.gigs_split += 1;
                shape.pmds_split +=
                    pmds.iter().filter(|p| matches!(p, Pmd::Split(_))).count() as u64;
            }
        }
        shape
    }

    /// The protection frame `pfn` is mapped with.
    pub fn protection(&self, pfn: Pfn) -> Protection {
        self.model.lock().expect("model lock").protection(pfn.0)
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    fn take(&self, pages: &mut dyn SplitPages) -> Result<Pfn, DirectMapError> {
        let page = pages.take().ok_or(DirectMapError::NoSplitPage)?;
        Self::bump(&self.counters.split_pages_taken, 1);
        Ok(page)
    }

    fn check_tables(&self, model: &Model, tables: &[Pfn]) {
        for table in tables {
            if !matches!(model.protection(table.0), Protection::Pkey(_)) {
                Self::bump(&self.counters.unprotected_tables, 1);
            }
        }
    }

    /// Changes the protection of one 4 KiB page, splitting its 1 GiB and
    /// 2 MiB entries as needed: what a kernel without freetypes does for
    /// every page-table page. Does not flush (see [`flush_page`](Self::flush_page)).
    /// Both split pages are taken before anything changes, so a missing one
    /// leaves the mapping as it was.
    pub fn protect_page(
        &self,
        pfn: Pfn,
        from: Protection,
        to: Protection,
        pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let mut model = self.model.lock().expect("model lock");
        Self::bump(&self.counters.page_protect_calls, 1);
        let g = (pfn.0 / FRAMES_1G) as usize;
        let p = ((pfn.0 % FRAMES_1G) / FRAMES_2M) as usize;
        let (split_gig, split_pmd) = match &model.gigs[g] {
            Gig::Huge(_) => (true, true),
            Gig::Split(pmds) => (false, matches!(pmds[p], Pmd::Large(_))),
        };
        let mut tables = Vec::new();
        for _ in 0..u32::from(split_gig) + u32::from(split_pmd) {
            tables.push(self.take(pages)?);
        }
        let mut report = ProtectReport::default();
        if let Gig::Huge(prot) = model.gigs[g] {
            model.gigs[g] = Gig::Split(vec![Pmd::Large(prot); 512]);
            report.splits_1g += 1;
        }
        let Gig::Split(pmds) = &mut model.gigs[g] else {
            unreachable!("split above")
        };
        if let Pmd::Large(prot) = pmds[p] {
            pmds[p] = Pmd::Split(Box::new([prot; 512]));
            report.splits_2m += 1;
        }
        let Pmd::Split(ptes) = &mut pmds[p] else {
            unreachable!("split above")
        };
        let pte = &mut ptes[(pfn.0 % FRAMES_2M) as usize];
        if *pte != from {
            Self::bump(&self.counters.mismatches, 1);
        }
        *pte = to;
        self.check_tables(&model, &tables);
        Self::bump(&self.counters.splits_1g, u64::from(report.splits_1g));
        Self::bump(&self.counters.splits_2m, u64::from(report.splits_2m));
        Ok(report)
    }

    /// Flushes one page's translation (counted like a batch flush).
    pub fn flush_page(&self, _pfn: Pfn) {
        Self::bump(&self.counters.flushes, 1);
    }
}

impl DirectMap for BenchDirectMap {
    fn protect(
        &self,
        range: PageblockRange,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let mut model = self.model.lock().expect("model lock");
        Self::bump(&self.counters.protect_calls, 1);
        let (start, end) = (range.start.0, range.end().0);
        assert!(
            start.is_multiple_of(FRAMES_2M) && start < end,
            "whole pageblocks only"
        );
        // Check the claimed protection: one entry per pageblock, or all 512
        // where the pageblock is split.
        let mut mismatched = false;
        for block in (start..end).step_by(FRAMES_2M as usize) {
            match &model.gigs[(block / FRAMES_1G) as usize] {
                Gig::Huge(p) => mismatched |= *p != from,
                Gig::Split(pmds) => match &pmds[((block % FRAMES_1G) / FRAMES_2M) as usize] {
                    Pmd::Large(p) => mismatched |= *p != from,
                    Pmd::Split(ptes) => mismatched |= ptes.iter().any(|p| *p != from),
                },
            }
        }
        if mismatched {
            Self::bump(&self.counters.mismatches, 1);
        }
        // A 1 GiB entry the range covers only in part must be split. Take
        // every page first, so a missing one changes nothing.
        let gigs = (start / FRAMES_1G) as usize..=((end - 1) / FRAMES_1G) as usize;
        let mut tables = Vec::new();
        for g in gigs.clone() {
            let whole = start <= g as u64 * FRAMES_1G && end >= (g as u64 + 1) * FRAMES_1G;
            if !whole && matches!(model.gigs[g], Gig::Huge(_)) {
                tables.push(self.take(split_pages)?);
            }
        }
        let mut report = ProtectReport::default();
        for g in gigs {
            let (gig_start, gig_end) = (g as u64 * FRAMES_1G, (g as u64 + 1) * FRAMES_1G);
            match &mut model.gigs[g] {
                Gig::Huge(p) if start <= gig_start && end >= gig_end => {
                    *p = to;
                    continue;
                }
                Gig::Huge(p) => {
                    let p = *p;
                    model.gigs[g] = Gig::Split(vec![Pmd::Large(p); 512]);
                    report.splits_1g += 1;
                }
                Gig::Split(_) => {}
            }
            let Gig::Split(pmds) = &mut model.gigs[g] else {
                unreachable!("split above")
            };
            for block in (start.max(gig_start)..end.min(gig_end)).step_by(FRAMES_2M as usize) {
                // A 2 MiB entry split earlier (by single-page changes) stays
                // split: like a kernel that does not collapse mappings.
                match &mut pmds[((block % FRAMES_1G) / FRAMES_2M) as usize] {
                    Pmd::Large(p) => *p = to,
                    Pmd::Split(ptes) => ptes.fill(to),
                }
            }
        }
        self.check_tables(&model, &tables);
        Self::bump(&self.counters.splits_1g, u64::from(report.splits_1g));
        Ok(report)
    }

    fn flush(&self, _range: PageblockRange) -> FlushReport {
        Self::bump(&self.counters.flushes, 1);
        FlushReport {
            local: 1,
            remote: 0,
        }
    }

    fn zero(
        &self,
        _start: Pfn,
        _order: u32,
        _protection: Protection,
    ) -> Result<(), DirectMapError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Set-up

/// Metadata for `frames` frames, all holes.
pub fn new_meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

/// The allocator every benchmark uses: one CPU, all of `meta` given as
/// `Mapped` memory from frame 0.
pub fn ours(meta: &[FrameMeta]) -> PageAllocator<'_, BenchDirectMap, 1> {
    let frames = meta.len() as u64;
    let config = Config {
        page_table: PT,
        reserve_target: RESERVE_TARGET,
    };
    let alloc = PageAllocator::new(meta, Pfn(0), config, BenchDirectMap::new(frames))
        .expect("allocator set-up");
    alloc
        .add_memory(Pfn(0), Pfn(frames), MAPPED)
        .expect("add memory");
    alloc
}

/// The peer crate's frame allocator over the same frames.
pub fn peer(frames: u64) -> FrameAllocator<PEER_ORDER> {
    let mut peer = FrameAllocator::<PEER_ORDER>::new();
    peer.add_frame(0, frames as usize);
    peer
}

// ---------------------------------------------------------------------------
// One interface for the order-0 workloads

/// An order-0 frame allocator, as the workloads drive it.
pub trait Frames {
    /// One frame; panics when out of memory (the workloads never are).
    fn alloc(&mut self) -> usize;
    /// Gives `frame` back.
    fn free(&mut self, frame: usize);
}

/// ptalloc through its public `alloc`/`free` (per-CPU cache included) on
/// CPU 0, for one freetype.
pub struct OursFrames<'a, 'm> {
    /// The allocator.
    pub alloc: &'a PageAllocator<'m, BenchDirectMap, 1>,
    /// The freetype allocated.
    pub freetype: Freetype,
}

impl Frames for OursFrames<'_, '_> {
    #[inline]
    fn alloc(&mut self) -> usize {
        match self.alloc.alloc(0, 0, self.freetype, AllocFlags::empty()) {
            Ok(pfn) => pfn.0 as usize,
            Err(error) => panic!("ptalloc alloc failed: {error}"),
        }
    }

    #[inline]
    fn free(&mut self, frame: usize) {
        if let Err(error) = self.alloc.free(0, Pfn(frame as u64), 0) {
            panic!("ptalloc free failed: {error}");
        }
    }
}

/// The peer crate (`buddy_system_allocator::FrameAllocator`), unlocked:
/// it takes `&mut self`, so it pays for no lock at all.
pub struct PeerFrames(pub FrameAllocator<PEER_ORDER>);

impl Frames for PeerFrames {
    #[inline]
    fn alloc(&mut self) -> usize {
        self.0.alloc(1).expect("peer alloc failed")
    }

    #[inline]
    fn free(&mut self, frame: usize) {
        self.0.dealloc(frame, 1);
    }
}

/// The peer crate behind its own spin lock (`LockedFrameAllocator`): what
/// a kernel sharing it between CPUs would use. For information; the goal
/// is judged against the unlocked [`PeerFrames`].
pub struct LockedPeerFrames(pub LockedFrameAllocator<PEER_ORDER>);

impl LockedPeerFrames {
    /// The locked peer over `frames` frames from frame 0.
    pub fn new(frames: u64) -> Self {
        let peer = LockedFrameAllocator::<PEER_ORDER>::new();
        peer.lock().add_frame(0, frames as usize);
        Self(peer)
    }
}

impl Frames for LockedPeerFrames {
    #[inline]
    fn alloc(&mut self) -> usize {
        self.0.lock().alloc(1).expect("peer alloc failed")
    }

    #[inline]
    fn free(&mut self, frame: usize) {
        self.0.lock().dealloc(frame, 1);
    }
}

/// Hands out numbers and takes them back: counts a workload's operations.
pub struct CountFrames(usize);

impl CountFrames {
    /// A counter.
    pub fn new() -> Self {
        Self(0)
    }
}

impl Frames for CountFrames {
    fn alloc(&mut self) -> usize {
        self.0 += 1;
        self.0
    }

    fn free(&mut self, _frame: usize) {}
}

// ---------------------------------------------------------------------------
// Workloads

/// A small deterministic generator (SplitMix64): the same seed gives both
/// allocators the same decisions.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Order-0 random mix: allocate `live` frames, then `steps` operations that
/// each allocate (probability 1/2) or free a uniformly chosen live frame,
/// keeping the live count within 10% of `live`; then free everything.
/// Returns the number of allocations plus frees.
pub fn random_mix(
    a: &mut impl Frames,
    live: usize,
    steps: usize,
    seed: u64,
    held: &mut Vec<usize>,
) -> u64 {
    let mut rng = Rng::new(seed);
    held.clear();
    let (low, high) = (live - live / 10, live + live / 10);
    for _ in 0..live {
        held.push(a.alloc());
    }
    for _ in 0..steps {
        let coin = rng.next_u64() & 1 == 0;
        if held.len() < high && (coin || held.len() <= low) {
            held.push(a.alloc());
        } else {
            let at = rng.below(held.len());
            a.free(held.swap_remove(at));
        }
    }
    let ops = (live + steps + held.len()) as u64;
    for frame in held.drain(..) {
        a.free(frame);
    }
    ops
}

/// Allocate `n` frames, then free them in allocation order. Returns `2n`.
pub fn alloc_n_free_n(a: &mut impl Frames, n: usize, held: &mut Vec<usize>) -> u64 {
    held.clear();
    for _ in 0..n {
        held.push(a.alloc());
    }
    for frame in held.drain(..) {
        a.free(frame);
    }
    2 * n as u64
}

/// `pairs` times: allocate one frame and free it at once (the per-CPU
/// cache's hot path). Returns `pairs`.
pub fn alloc_free_pairs(a: &mut impl Frames, pairs: usize) -> u64 {
    for _ in 0..pairs {
        let frame = a.alloc();
        a.free(black_box(frame));
    }
    pairs as u64
}

/// `rounds` times: allocate `batch` frames, then free them (newest first).
/// With `batch` above the cache capacity this includes refills and
/// drains. Returns the number of alloc+free pairs.
pub fn batches(a: &mut impl Frames, batch: usize, rounds: usize, held: &mut Vec<usize>) -> u64 {
    for _ in 0..rounds {
        held.clear();
        for _ in 0..batch {
            held.push(a.alloc());
        }
        while let Some(frame) = held.pop() {
            a.free(frame);
        }
    }
    (batch * rounds) as u64
}

// ---------------------------------------------------------------------------
// Page-table churn: counts, ptalloc against a page-by-page baseline

/// What a churn operation allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A page-table page (key-protected).
    PageTable,
    /// A normal kernel page.
    Mapped,
    /// A page absent from the direct map.
    Unmapped,
}

/// A way of serving protected and unmapped pages.
pub trait Scheme {
    /// One page of `kind`.
    fn alloc(&mut self, kind: Kind) -> Pfn;
    /// Frees a page of `kind`.
    fn free(&mut self, kind: Kind, pfn: Pfn);
    /// The allocator underneath.
    fn allocator(&self) -> &PageAllocator<'_, BenchDirectMap, 1>;
}

fn freetype(kind: Kind) -> Freetype {
    match kind {
        Kind::PageTable => PT,
        Kind::Mapped => MAPPED,
        Kind::Unmapped => UNMAPPED,
    }
}

/// ptalloc: each kind is a freetype; protection changes a pageblock at a
/// time, inside the allocator.
pub struct Freetypes<'m>(pub PageAllocator<'m, BenchDirectMap, 1>);

impl Scheme for Freetypes<'_> {
    fn alloc(&mut self, kind: Kind) -> Pfn {
        match self.0.alloc(0, 0, freetype(kind), AllocFlags::empty()) {
            Ok(pfn) => pfn,
            Err(error) => panic!("ptalloc {kind:?} alloc failed: {error}"),
        }
    }

    fn free(&mut self, _kind: Kind, pfn: Pfn) {
        if let Err(error) = self.0.free(0, pfn, 0) {
            panic!("ptalloc free failed: {error}");
        }
    }

    fn allocator(&self) -> &PageAllocator<'_, BenchDirectMap, 1> {
        &self.0
    }
}

/// The naive baseline: every page comes from the plain `Mapped` pool;
/// page-table and unmapped pages then get their own protection one 4 KiB
/// page at a time (splitting 1 GiB and 2 MiB entries as needed, one flush
/// per page where permissions shrink), and get `Mapped` back before they
/// are freed. Its split page tables come from ptalloc's split reserve,
/// refilled before every change, as the kernel's own sub-pageblock splits
/// will (`refill_reserve` + `with_split_reserve`).
pub struct PageByPage<'m>(pub PageAllocator<'m, BenchDirectMap, 1>);

impl PageByPage<'_> {
    fn change(&self, pfn: Pfn, from: Protection, to: Protection) {
        if let Err(error) = self.0.refill_reserve() {
            panic!("reserve refill failed: {error}");
        }
        let result = self
            .0
            .with_split_reserve(|map, pages| map.protect_page(pfn, from, to, pages));
        if let Err(error) = result {
            panic!("single-page protection change failed: {error:?}");
        }
        if from.needs_flush_to(to) {
            self.0.backend().flush_page(pfn);
        }
    }
}

impl Scheme for PageByPage<'_> {
    fn alloc(&mut self, kind: Kind) -> Pfn {
        let pfn = match self.0.alloc(0, 0, MAPPED, AllocFlags::empty()) {
            Ok(pfn) => pfn,
            Err(error) => panic!("baseline alloc failed: {error}"),
        };
        let to = freetype(kind).protection;
        if to != Protection::Mapped {
            self.change(pfn, Protection::Mapped, to);
        }
        pfn
    }

    fn free(&mut self, kind: Kind, pfn: Pfn) {
        let from = freetype(kind).protection;
        if from != Protection::Mapped {
            self.change(pfn, from, Protection::Mapped);
        }
        if let Err(error) = self.0.free(0, pfn, 0) {
            panic!("baseline free failed: {error}");
        }
    }

    fn allocator(&self) -> &PageAllocator<'_, BenchDirectMap, 1> {
        &self.0
    }
}

/// The churn workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct ChurnParams {
    /// Run until at least this many page-table allocations were made.
    pub pt_allocs: u64,
    /// Page-table pages live at the top of each wave.
    pub pt_peak: usize,
    /// Page-table pages live at the bottom of each wave.
    pub pt_trough: usize,
    /// `Mapped` pages kept live (within 10%).
    pub mapped_live: usize,
    /// `Unmapped` pages kept live (within 10%).
    pub unmapped_live: usize,
    /// Seed of the decisions.
    pub seed: u64,
}

/// Counts of one churn run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChurnReport {
    /// Page-table allocations.
    pub pt_allocs: u64,
    /// Page-table frees (the run ends with everything freed).
    pub pt_frees: u64,
    /// `Mapped` allocations.
    pub mapped_allocs: u64,
    /// `Unmapped` allocations.
    pub unmapped_allocs: u64,
    /// Most page-table pages live at once.
    pub pt_peak_live: u64,
    /// Everything the direct map did during the run.
    pub all: MapCounts,
    /// What it did inside page-table allocations and frees.
    pub pt_ops: MapCounts,
    /// Pageblocks converted, all directions.
    pub conversions: u64,
    /// Conversion batches.
    pub conversion_batches: u64,
    /// Pageblocks converted to the page-table freetype.
    pub conversions_to_pt: u64,
    /// Pageblocks converted from the page-table freetype.
    pub conversions_from_pt: u64,
    /// Lowest split-reserve level.
    pub reserve_low_water: u64,
    /// Split-reserve pages taken.
    pub reserve_taken: u64,
    /// The direct map's shape at the end.
    pub shape: MapShape,
}

impl ChurnReport {
    /// All flushes per 1,000 page-table allocations.
    pub fn flushes_per_1000_pt(&self) -> f64 {
        self.all.flushes as f64 * 1000.0 / self.pt_allocs as f64
    }

    /// Flushes inside page-table operations per 1,000 page-table allocations.
    pub fn pt_flushes_per_1000_pt(&self) -> f64 {
        self.pt_ops.flushes as f64 * 1000.0 / self.pt_allocs as f64
    }
}

/// One churn operation, with the direct map's counts attributed to its kind.
fn step(
    scheme: &mut impl Scheme,
    report: &mut ChurnReport,
    live: &mut Vec<Pfn>,
    kind: Kind,
    alloc: bool,
    at: usize,
) {
    let before = scheme.allocator().backend().counts();
    if alloc {
        live.push(scheme.alloc(kind));
        match kind {
            Kind::PageTable => report.pt_allocs += 1,
            Kind::Mapped => report.mapped_allocs += 1,
            Kind::Unmapped => report.unmapped_allocs += 1,
        }
    } else {
        let pfn = live.swap_remove(at);
        scheme.free(kind, pfn);
        if kind == Kind::PageTable {
            report.pt_frees += 1;
        }
    }
    if kind == Kind::PageTable {
        report
            .pt_ops
            .add(scheme.allocator().backend().counts().since(before));
    }
}

/// Runs the churn workload on `scheme`: page-table pages rise to
/// `pt_peak` and fall to `pt_trough` in waves (3 allocations to 1 free on
/// the way up, the reverse on the way down, frees at random positions),
/// interleaved with `Mapped` and `Unmapped` allocations and frees (50%
/// page-table, 35% mapped, 15% unmapped operations), then frees everything.
pub fn churn(scheme: &mut impl Scheme, params: ChurnParams) -> ChurnReport {
    let mut rng = Rng::new(params.seed);
    let mut report = ChurnReport::default();
    let mut live: [Vec<Pfn>; 3] = Default::default();
    let start = scheme.allocator().backend().counts();
    let slot = |kind: Kind| kind as usize;

    let _ = scheme.allocator().refill_reserve();
    for (kind, target) in [
        (Kind::Mapped, params.mapped_live),
        (Kind::Unmapped, params.unmapped_live),
    ] {
        for _ in 0..target {
            step(scheme, &mut report, &mut live[slot(kind)], kind, true, 0);
        }
    }
    let mut rising = true;
    while report.pt_allocs < params.pt_allocs {
        let pick = rng.below(100);
        let kind = match pick {
            0..50 => Kind::PageTable,
            50..85 => Kind::Mapped,
            _ => Kind::Unmapped,
        };
        let pages = &mut live[slot(kind)];
        let alloc = match kind {
            Kind::PageTable => {
                if pages.len() >= params.pt_peak {
                    rising = false;
                } else if pages.len() <= params.pt_trough {
                    rising = true;
                }
                let up = rng.below(4) != 0;
                let want = if rising { up } else { !up };
                pages.is_empty() || (want && pages.len() < params.pt_peak)
            }
            Kind::Mapped | Kind::Unmapped => {
                let target = if kind == Kind::Mapped {
                    params.mapped_live
                } else {
                    params.unmapped_live
                };
                let (low, high) = (target - target / 10, target + target / 10);
                pages.len() < high && (rng.next_u64() & 1 == 0 || pages.len() <= low)
            }
        };
        let at = if alloc { 0 } else { rng.below(pages.len()) };
        step(scheme, &mut report, pages, kind, alloc, at);
        if kind == Kind::PageTable {
            report.pt_peak_live = report.pt_peak_live.max(live[slot(kind)].len() as u64);
        }
    }
    for kind in [Kind::PageTable, Kind::Mapped, Kind::Unmapped] {
        while !live[slot(kind)].is_empty() {
            let last = live[slot(kind)].len() - 1;
            step(
                scheme,
                &mut report,
                &mut live[slot(kind)],
                kind,
                false,
                last,
            );
        }
    }

    let alloc = scheme.allocator();
    report.all = alloc.backend().counts().since(start);
    report.shape = alloc.backend().shape();
    let stats = alloc.stats();
    report.conversions = stats.total_conversions();
    report.conversion_batches = stats.conversion_batches;
    report.conversions_to_pt = Freetype::all().map(|from| stats.converted(from, PT)).sum();
    report.conversions_from_pt = Freetype::all().map(|to| stats.converted(PT, to)).sum();
    report.reserve_low_water = stats.reserve_low_water;
    report.reserve_taken = stats.reserve_taken;
    report
}
