//! Shared by the `alloc_throughput` (criterion) and `summary` benchmarks:
//! the set-up, adapters that give ptalloc and the peer crate one
//! interface, and the deterministic workloads with their sizes.
//!
//! The direct map is the crate's own simulator, [`SimDirectMap`] (2 GiB
//! mapped with 1 GiB pages, one CPU): it counts flushes and splits and
//! checks every backend call (see `ptalloc/src/sim.rs`). Those checks run
//! only when the allocator calls the backend, i.e. on conversions; the
//! order-0 and fast-path workloads never do (the summary counts the calls
//! made while timed), so the timings are of the allocator alone.

// Each benchmark binary uses part of this module.
#![allow(dead_code)]

pub mod load;

use buddy_system_allocator::{FrameAllocator, LockedFrameAllocator};
use ptalloc::sim::{self, LargestPage, SimDirectMap, TableLevel};
use ptalloc::{
    AllocFlags, Config, DirectMap, FrameMeta, Freetype, MAX_ORDER, Mobility, PAGEBLOCK_ORDER,
    PageAllocator, PageblockRange, Pfn, Protection,
};
use std::hint::black_box;

/// Frames per 1 GiB direct-map page.
pub const FRAMES_1G: u64 = 1 << MAX_ORDER;

/// Managed memory in every benchmark: 2 GiB from frame 0 (two 1 GiB
/// direct-map pages, 6 MiB of metadata).
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

/// The allocator every benchmark uses: one CPU cache, on the simulator.
pub type Ours<'m> = PageAllocator<'m, SimDirectMap, 1>;

// ---------------------------------------------------------------------------
// Set-up

/// Metadata for `frames` frames, all holes.
pub fn new_meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

/// ptalloc over all of `meta`, given as `Mapped` memory from frame 0, on a
/// simulated direct map of 1 GiB pages with one CPU (so every flush is one
/// local flush and none is a shootdown).
pub fn ours(meta: &[FrameMeta]) -> Ours<'_> {
    let frames = meta.len() as u64;
    let config = Config {
        page_table: PT,
        reserve_target: RESERVE_TARGET,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let map = SimDirectMap::new(frames, LargestPage::Giga, 1);
    let alloc = PageAllocator::new(meta, Pfn(0), config, map).expect("allocator set-up");
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

/// Every call the allocator (or anyone) made to the simulated direct map:
/// its checks cost time only through these.
pub fn backend_calls(alloc: &Ours<'_>) -> u64 {
    let c = alloc.backend().counters();
    c.protect_calls
        + c.protect_page_calls
        + c.protect_failures
        + c.flushes_local
        + c.zero_calls
        + c.zero_failures
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
    pub alloc: &'a Ours<'m>,
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
struct CountFrames(usize);

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
// The workloads of figures a and c, with the sizes both benchmarks use

/// Pages live in the random mix (within 10%).
pub const MIX_LIVE: usize = 50_000;
/// Steps of the random mix.
pub const MIX_STEPS: usize = 500_000;
/// Seed of the random mix.
pub const MIX_SEED: u64 = 0x5eed_0001;
/// Pages of "allocate n, then free them in order".
pub const N_THEN_N: usize = 100_000;
/// Pages per batch of the batched fast path (above the cache capacity).
pub const BATCH: usize = 256;
/// Batches per timed run of the batched fast path.
pub const BATCH_ROUNDS: usize = 200;

/// The order-0 throughput workloads (figure a).
#[derive(Clone, Copy, Debug)]
pub enum Order0 {
    /// [`random_mix`] of [`MIX_LIVE`] pages, [`MIX_STEPS`] steps.
    RandomMix,
    /// [`alloc_n_free_n`] of [`N_THEN_N`] pages.
    NThenN,
}

impl Order0 {
    /// Both, in the order they are measured.
    pub const ALL: [Order0; 2] = [Order0::RandomMix, Order0::NThenN];

    /// The criterion group's name.
    pub fn group(self) -> &'static str {
        match self {
            Order0::RandomMix => "order0_random_mix",
            Order0::NThenN => "order0_alloc_n_free_n",
        }
    }

    /// Runs the workload on `a`; returns its allocations plus frees.
    #[inline]
    pub fn run(self, a: &mut impl Frames, held: &mut Vec<usize>) -> u64 {
        match self {
            Order0::RandomMix => random_mix(a, MIX_LIVE, MIX_STEPS, MIX_SEED, held),
            Order0::NThenN => alloc_n_free_n(a, N_THEN_N, held),
        }
    }

    /// Allocations plus frees of one run (the same for every allocator).
    pub fn ops(self) -> u64 {
        self.run(&mut CountFrames(0), &mut Vec::new())
    }
}

/// A buffer big enough for any workload's live frames.
pub fn held_buffer() -> Vec<usize> {
    Vec::with_capacity(MIX_LIVE * 2)
}

/// The warm fast path (figure c): a `Pkey(1)` and a `Mapped` order-0 view
/// of `alloc`, each warmed by 10 batches (the first page-table allocation
/// converts a pageblock), so no timed allocation converts.
pub fn warm_fast_path<'a, 'm>(alloc: &'a Ours<'m>) -> (OursFrames<'a, 'm>, OursFrames<'a, 'm>) {
    let mut pt = OursFrames {
        alloc,
        freetype: PT,
    };
    let mut mapped = OursFrames {
        alloc,
        freetype: MAPPED,
    };
    let mut held = Vec::with_capacity(BATCH);
    batches(&mut pt, BATCH, 10, &mut held);
    batches(&mut mapped, BATCH, 10, &mut held);
    (pt, mapped)
}

/// One timed run of the batched fast path: [`BATCH_ROUNDS`] batches of
/// [`BATCH`]. Returns the alloc+free pairs.
#[inline]
pub fn fast_batches(a: &mut impl Frames, held: &mut Vec<usize>) -> u64 {
    batches(a, BATCH, BATCH_ROUNDS, held)
}

// ---------------------------------------------------------------------------
// Page-table churn: counts, ptalloc against a page-by-page baseline

/// What the simulated direct map did: a reading of its counters, or the
/// difference of two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    /// TLB flushes (pageblock batches and single pages; one CPU, so each
    /// is one local flush).
    pub flushes: u64,
    /// Successful `DirectMap::protect` calls (pageblock batches).
    pub protect_calls: u64,
    /// Failed `protect` and `protect_page` calls.
    pub protect_failures: u64,
    /// Single-page protection changes (`protect_page`; the naive baseline
    /// only).
    pub page_protect_calls: u64,
    /// 1 GiB mappings split into 2 MiB ones.
    pub splits_1g: u64,
    /// 2 MiB mappings split into 4 KiB ones.
    pub splits_2m: u64,
    /// Pages used as page tables by splits.
    pub split_pages_used: u64,
    /// Calls the simulator found breaking a rule (wrong `from`, a split
    /// table not key-protected, re-entry, ...): see `ptalloc::sim`.
    pub violations: u64,
}

impl MapCounts {
    /// The counters of `map` now.
    pub fn read(map: &SimDirectMap) -> MapCounts {
        let c = map.counters();
        MapCounts {
            flushes: c.flushes_local + c.flushes_remote,
            protect_calls: c.protect_calls,
            protect_failures: c.protect_failures,
            page_protect_calls: c.protect_page_calls,
            splits_1g: c.splits_1g,
            splits_2m: c.splits_2m,
            split_pages_used: c.split_pages_used,
            violations: map.violations().len() as u64,
        }
    }

    fn zip(self, other: MapCounts, f: impl Fn(u64, u64) -> u64) -> MapCounts {
        MapCounts {
            flushes: f(self.flushes, other.flushes),
            protect_calls: f(self.protect_calls, other.protect_calls),
            protect_failures: f(self.protect_failures, other.protect_failures),
            page_protect_calls: f(self.page_protect_calls, other.page_protect_calls),
            splits_1g: f(self.splits_1g, other.splits_1g),
            splits_2m: f(self.splits_2m, other.splits_2m),
            split_pages_used: f(self.split_pages_used, other.split_pages_used),
            violations: f(self.violations, other.violations),
        }
    }

    /// Counts accrued since `earlier`.
    pub fn since(self, earlier: MapCounts) -> MapCounts {
        self.zip(earlier, |now, then| now - then)
    }

    fn add(&mut self, other: MapCounts) {
        *self = self.zip(other, |a, b| a + b);
    }
}

/// How shattered the direct map is: the simulator never merges, so each
/// page table a split made is one mapping still split.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapShape {
    /// 1 GiB regions mapped with 2 MiB entries.
    pub gigs_split: u64,
    /// 2 MiB regions mapped with 4 KiB entries.
    pub pmds_split: u64,
}

impl MapShape {
    /// The shape of `map` now, from its page tables.
    pub fn of(map: &SimDirectMap) -> MapShape {
        let mut shape = MapShape::default();
        for (_, level) in map.page_tables() {
            match level {
                TableLevel::Directory => shape.gigs_split += 1,
                TableLevel::Table => shape.pmds_split += 1,
            }
        }
        shape
    }
}

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

impl Kind {
    const ALL: [Kind; 3] = [Kind::PageTable, Kind::Mapped, Kind::Unmapped];

    fn freetype(self) -> Freetype {
        match self {
            Kind::PageTable => PT,
            Kind::Mapped => MAPPED,
            Kind::Unmapped => UNMAPPED,
        }
    }
}

/// A way of serving protected and unmapped pages.
pub trait Scheme {
    /// One page of `kind`.
    fn alloc(&mut self, kind: Kind) -> Pfn;
    /// Frees a page of `kind`.
    fn free(&mut self, kind: Kind, pfn: Pfn);
    /// The allocator underneath.
    fn allocator(&self) -> &Ours<'_>;
    /// Runs `ptalloc::sim::check` with `live` pages of each kind (indexed
    /// by `Kind as usize`), or `None` where the scheme breaks the
    /// allocator's rules by design.
    fn check(&self, live: &[Vec<Pfn>; 3]) -> Option<Result<(), String>>;
}

/// ptalloc: each kind is a freetype; protection changes a pageblock at a
/// time, inside the allocator.
pub struct Freetypes<'m>(pub Ours<'m>);

impl Scheme for Freetypes<'_> {
    fn alloc(&mut self, kind: Kind) -> Pfn {
        match self.0.alloc(0, 0, kind.freetype(), AllocFlags::empty()) {
            Ok(pfn) => pfn,
            Err(error) => panic!("ptalloc {kind:?} alloc failed: {error}"),
        }
    }

    fn free(&mut self, _kind: Kind, pfn: Pfn) {
        if let Err(error) = self.0.free(0, pfn, 0) {
            panic!("ptalloc free failed: {error}");
        }
    }

    fn allocator(&self) -> &Ours<'_> {
        &self.0
    }

    fn check(&self, live: &[Vec<Pfn>; 3]) -> Option<Result<(), String>> {
        let live: Vec<(Pfn, u32, Freetype)> = Kind::ALL
            .iter()
            .zip(live)
            .flat_map(|(kind, pages)| pages.iter().map(|&pfn| (pfn, 0, kind.freetype())))
            .collect();
        let managed = [(self.0.base(), Pfn(self.0.base().0 + self.0.frames()))];
        Some(sim::check(&self.0, PT, &managed, &live))
    }
}

/// The naive baseline: every page comes from the plain `Mapped` pool;
/// page-table and unmapped pages then get their own protection one 4 KiB
/// page at a time (the simulator's `protect_page`, splitting 1 GiB and
/// 2 MiB mappings as needed; one flush per page where permissions shrink),
/// and get `Mapped` back before they are freed. Its split page tables come
/// from ptalloc's split reserve, refilled before every change, as the
/// kernel's own sub-pageblock splits will (`refill_reserve` +
/// `with_split_reserve`).
pub struct PageByPage<'m>(pub Ours<'m>);

impl PageByPage<'_> {
    fn change(&self, pfn: Pfn, from: Protection, to: Protection) {
        let map = self.0.backend();
        // `protect_page` takes no `from`; the baseline's own claim is
        // checked here instead (a wrong one is a bug in this file).
        assert_eq!(
            map.protection_of(pfn),
            from,
            "baseline page {:#x} is not {from}",
            pfn.0
        );
        if let Err(error) = self.0.refill_reserve() {
            panic!("reserve refill failed: {error}");
        }
        let result = self
            .0
            .with_split_reserve(|map, pages| map.protect_page(pfn, to, pages));
        if let Err(error) = result {
            panic!("single-page protection change failed: {error:?}");
        }
        if from.needs_flush_to(to) {
            // The simulator flushes whole pageblocks: one flush, counted
            // like an `invlpg` of the page.
            let pageblock = Pfn(pfn.0 & !((1 << PAGEBLOCK_ORDER) - 1));
            map.flush(PageblockRange {
                start: pageblock,
                pageblocks: 1,
            });
        }
    }
}

impl Scheme for PageByPage<'_> {
    fn alloc(&mut self, kind: Kind) -> Pfn {
        let pfn = match self.0.alloc(0, 0, MAPPED, AllocFlags::empty()) {
            Ok(pfn) => pfn,
            Err(error) => panic!("baseline alloc failed: {error}"),
        };
        let to = kind.freetype().protection;
        if to != Protection::Mapped {
            self.change(pfn, Protection::Mapped, to);
        }
        pfn
    }

    fn free(&mut self, kind: Kind, pfn: Pfn) {
        let from = kind.freetype().protection;
        if from != Protection::Mapped {
            self.change(pfn, from, Protection::Mapped);
        }
        if let Err(error) = self.0.free(0, pfn, 0) {
            panic!("baseline free failed: {error}");
        }
    }

    fn allocator(&self) -> &Ours<'_> {
        &self.0
    }

    /// Its protected pages lie in `Mapped` pageblocks, and it flushes
    /// behind the allocator's back: the checker would rightly fail it.
    fn check(&self, _live: &[Vec<Pfn>; 3]) -> Option<Result<(), String>> {
        None
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
#[derive(Clone, Debug, Default)]
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
    /// `sim::check` runs (after the waves, and at the end; none for the
    /// baseline).
    pub checks_run: u64,
    /// What the failed ones said.
    pub check_failures: Vec<String>,
    /// The simulator's first violation, if any.
    pub first_violation: Option<String>,
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

    /// Simulator violations plus failed invariant checks.
    pub fn model_violations(&self) -> u64 {
        self.all.violations + self.check_failures.len() as u64
    }

    fn check(&mut self, scheme: &impl Scheme, live: &[Vec<Pfn>; 3]) {
        if let Some(result) = scheme.check(live) {
            self.checks_run += 1;
            if let Err(failure) = result {
                self.check_failures.push(failure);
            }
        }
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
    let before = MapCounts::read(scheme.allocator().backend());
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
        let after = MapCounts::read(scheme.allocator().backend());
        report.pt_ops.add(after.since(before));
    }
}

/// Runs the churn workload on `scheme`: page-table pages rise to
/// `pt_peak` and fall to `pt_trough` in waves (3 allocations to 1 free on
/// the way up, the reverse on the way down, frees at random positions),
/// interleaved with `Mapped` and `Unmapped` allocations and frees (50%
/// page-table, 35% mapped, 15% unmapped operations), then frees everything.
/// The scheme is checked after the waves and at the end.
pub fn churn(scheme: &mut impl Scheme, params: ChurnParams) -> ChurnReport {
    let mut rng = Rng::new(params.seed);
    let mut report = ChurnReport::default();
    let mut live: [Vec<Pfn>; 3] = Default::default();
    let start = MapCounts::read(scheme.allocator().backend());
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
    report.check(scheme, &live);
    for kind in Kind::ALL {
        while let Some(last) = live[slot(kind)].len().checked_sub(1) {
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
    report.check(scheme, &live);

    let alloc = scheme.allocator();
    let map = alloc.backend();
    report.all = MapCounts::read(map).since(start);
    report.shape = MapShape::of(map);
    report.first_violation = map.violations().into_iter().next();
    let stats = alloc.stats();
    report.conversions = stats.total_conversions();
    report.conversion_batches = stats.conversion_batches;
    report.conversions_to_pt = Freetype::all().map(|from| stats.converted(from, PT)).sum();
    report.conversions_from_pt = Freetype::all().map(|to| stats.converted(PT, to)).sum();
    report.reserve_low_water = stats.reserve_low_water;
    report.reserve_taken = stats.reserve_taken;
    report
}
