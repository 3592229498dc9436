//! The policy lab's strategies (`Config::strategy`) and page-table
//! fallbacks (`Config::pt_fallback`), on the checking simulator.
//!
//! Random operation sequences run under every strategy, with the invariant
//! checker (`ptalloc::sim::check`) and each strategy's own promises checked
//! after every step; then one targeted test per defining behaviour, with
//! its counts: `Pagewise` splits down to 4 KiB and flushes once per page
//! table, `Granular` never splits a 1 GiB mapping, `ProtectedFirst` starts
//! with every pageblock protected and converts on ordinary demand, and the
//! `Unprotected` fallback hands out exposed tables only when protected
//! ones cannot be had (where `Fail` gives `OutOfMemory`), counting them.
//!
//! The default case count keeps a debug `cargo test` short; raise it with
//! `PROPTEST_CASES=1000`.

use proptest::prelude::*;
use proptest::sample::Index;
// The proptest trait, renamed: `Strategy` is the allocator's here.
use proptest::strategy::Strategy as Generate;
use proptest::test_runner::TestCaseError;
use ptalloc::sim::{self, LargestPage, SimDirectMap};
use ptalloc::*;
// Named: the glob from proptest brings its own `Strategy`.
use ptalloc::Strategy;

const CPUS: usize = 2;
const KERNEL: Freetype = Freetype::KERNEL;
const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};
const SECRET: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};
const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const FREETYPES: [Freetype; 4] = [KERNEL, USER, SECRET, PT];

/// Frames per pageblock and per MiB.
const PB: u64 = 512;
const MIB: u64 = 256;

const STRATEGIES: [Strategy; 4] = [
    Strategy::Freetype,
    Strategy::Pagewise,
    Strategy::Granular,
    Strategy::ProtectedFirst,
];

type Alloc<'m> = PageAllocator<'m, SimDirectMap, CPUS>;

fn meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

fn config(strategy: Strategy, pt_fallback: PtFallback) -> Config {
    Config {
        page_table: PT,
        reserve_target: 8,
        conversion_watermark: 0,
        single_page_fallback: false,
        strategy,
        pt_fallback,
    }
}

/// `frames` frames of kernel memory from frame 0, on a map of `largest`
/// pages.
fn allocator(meta: &[FrameMeta], largest: LargestPage, config: Config) -> Alloc<'_> {
    let frames = meta.len() as u64;
    let map = SimDirectMap::new(frames, largest, CPUS as u32);
    let alloc = Alloc::new(meta, Pfn(0), config, map).expect("set-up");
    alloc
        .add_memory(Pfn(0), Pfn(frames), KERNEL)
        .expect("memory");
    alloc
}

fn managed(alloc: &Alloc<'_>) -> Vec<(Pfn, Pfn)> {
    vec![(Pfn(0), Pfn(alloc.frames()))]
}

/// Takes every free kernel page, then gives back all but one per
/// pageblock: no pageblock is whole afterwards. Returns the pages kept.
fn fragment(alloc: &Alloc<'_>, ft: Freetype) -> Vec<Pfn> {
    let taken: Vec<Pfn> =
        std::iter::from_fn(|| alloc.alloc(0, 0, ft, AllocFlags::empty()).ok()).collect();
    let mut kept = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for pfn in taken {
        if seen.insert(pfn.0 / PB) {
            kept.push(pfn);
        } else {
            alloc.free(0, pfn, 0).unwrap();
        }
    }
    alloc.drain_caches();
    kept
}

// ---- random sequences under every strategy ----

#[derive(Clone, Debug)]
struct Setup {
    strategy: Strategy,
    pt_fallback: PtFallback,
    largest: LargestPage,
    pageblocks: u64,
    reserve_target: usize,
    watermark: usize,
    single_page_fallback: bool,
}

fn setup() -> impl Generate<Value = Setup> {
    (
        0..STRATEGIES.len(),
        any::<bool>(),
        any::<bool>(),
        8u64..=24,
        prop_oneof![Just(0usize), Just(2), Just(8)],
        prop_oneof![Just(0usize), Just(2)],
        any::<bool>(),
    )
        .prop_map(
            |(strategy, unprotected, giga, pageblocks, reserve_target, watermark, single)| {
                let strategy = STRATEGIES[strategy];
                Setup {
                    strategy,
                    pt_fallback: if unprotected {
                        PtFallback::Unprotected
                    } else {
                        PtFallback::Fail
                    },
                    // `Granular` needs a map of 2 MiB pages.
                    largest: if giga && strategy != Strategy::Granular {
                        LargestPage::Giga
                    } else {
                        LargestPage::Mega
                    },
                    pageblocks,
                    reserve_target,
                    watermark,
                    single_page_fallback: single,
                }
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        order: u32,
        ft: usize,
        zero: bool,
    },
    Free {
        pick: Index,
        cpu: usize,
    },
    /// Page tables until one fails: past the page-table freetype's free
    /// pages, into the last resort and the fallback.
    PageTables,
    /// No whole pageblock left: one live page of `ft` in each.
    Fragment {
        user: bool,
    },
    InjectProtectFailure,
    InjectZeroFailure,
    RefillReserve,
    DrainCaches,
}

fn op() -> impl Generate<Value = Op> {
    prop_oneof![
        12 => (0..CPUS, prop_oneof![8 => Just(0u32), 2 => 1u32..=3, 1 => 9u32..=10], 0..FREETYPES.len(), prop::bool::weighted(0.2))
            .prop_map(|(cpu, order, ft, zero)| Op::Alloc { cpu, order, ft, zero }),
        9 => (any::<Index>(), 0..CPUS).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        1 => Just(Op::PageTables),
        1 => any::<bool>().prop_map(|user| Op::Fragment { user }),
        1 => Just(Op::InjectProtectFailure),
        1 => Just(Op::InjectZeroFailure),
        1 => Just(Op::RefillReserve),
        1 => Just(Op::DrainCaches),
    ]
}

/// The allocator, the model of live blocks, and the model of exposure.
struct World<'m> {
    alloc: Alloc<'m>,
    setup: Setup,
    live: Vec<(Pfn, u32, Freetype)>,
    /// Live exposed tables with the allocation count at which each was
    /// handed out.
    exposed: Vec<(Pfn, u64)>,
    /// Exposure of exposed tables already freed, in allocations.
    exposure_closed: u64,
}

impl<'m> World<'m> {
    fn new(meta: &'m [FrameMeta], setup: &Setup) -> Self {
        let config = Config {
            reserve_target: setup.reserve_target,
            conversion_watermark: setup.watermark,
            single_page_fallback: setup.single_page_fallback,
            ..config(setup.strategy, setup.pt_fallback)
        };
        let alloc = allocator(meta, setup.largest, config);
        World {
            alloc,
            setup: setup.clone(),
            live: Vec::new(),
            exposed: Vec::new(),
            exposure_closed: 0,
        }
    }

    fn sim(&self) -> &SimDirectMap {
        self.alloc.backend()
    }

    fn push(&mut self, pfn: Pfn, order: u32, ft: Freetype) -> Result<(), TestCaseError> {
        let info = self.alloc.frame_info(pfn).unwrap();
        if info.exposed {
            prop_assert_eq!((ft, order), (PT, 0), "only page tables are exposed");
            prop_assert_eq!(self.setup.pt_fallback, PtFallback::Unprotected);
            // Counted when it was handed out, before this allocation.
            let stamp = self.alloc.stats().allocations - 1;
            self.exposed.push((pfn, stamp));
        }
        self.live.push((pfn, order, ft));
        Ok(())
    }

    fn free_at(&mut self, at: usize, cpu: usize) -> Result<(), TestCaseError> {
        let (pfn, order, ft) = self.live.swap_remove(at);
        let faults = self.sim().pending_protect_failures() + self.sim().pending_zero_failures();
        match self.alloc.free(cpu, pfn, order) {
            Ok(()) => {}
            // A page protected alone is wiped and given back on its way:
            // a fault keeps it allocated and protected.
            Err(FreeError::Backend(_)) if faults > 0 && ft == PT => {
                self.live.push((pfn, order, ft));
                return Ok(());
            }
            Err(error) => prop_assert!(false, "freeing {:#x}: {error:?}", pfn.0),
        }
        if let Some(at) = self.exposed.iter().position(|&(e, _)| e == pfn) {
            let (_, stamp) = self.exposed.swap_remove(at);
            self.exposure_closed += self.alloc.stats().allocations - stamp;
        }
        Ok(())
    }

    fn alloc_step(
        &mut self,
        cpu: usize,
        order: u32,
        ft: Freetype,
        flags: AllocFlags,
    ) -> Result<bool, TestCaseError> {
        let before = self.alloc.stats();
        let faults = self.sim().pending_protect_failures() + self.sim().pending_zero_failures();
        match self.alloc.alloc(cpu, order, ft, flags) {
            Ok(pfn) => {
                self.push(pfn, order, ft)?;
                Ok(true)
            }
            Err(error) => {
                let after = self.alloc.stats();
                prop_assert_eq!(after.failed_allocations, before.failed_allocations + 1);
                match error {
                    AllocError::OutOfMemory | AllocError::ReserveExhausted => {
                        // The dodge fails only when no mapped page is free.
                        if ft == PT && order == 0 {
                            prop_assert_eq!(
                                after.page_table_failures,
                                before.page_table_failures + 1
                            );
                            if self.setup.pt_fallback == PtFallback::Unprotected {
                                let mapped_free: u64 =
                                    [KERNEL, USER].iter().map(|&f| after.free_pages(f)).sum();
                                prop_assert_eq!(
                                    mapped_free,
                                    0,
                                    "{:?} with mapped pages free",
                                    error
                                );
                            }
                        }
                    }
                    AllocError::Backend(_) => prop_assert!(faults > 0, "backend failed unasked"),
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
                Ok(false)
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc {
                cpu,
                order,
                ft,
                zero,
            } => {
                let flags = if zero {
                    AllocFlags::ZERO
                } else {
                    AllocFlags::empty()
                };
                self.alloc_step(cpu, order, FREETYPES[ft], flags)?;
            }
            Op::Free { pick, cpu } => {
                if !self.live.is_empty() {
                    self.free_at(pick.index(self.live.len()), cpu)?;
                }
            }
            Op::PageTables => {
                for n in 0..self.alloc.frames() as usize {
                    if !self.alloc_step(n % CPUS, 0, PT, AllocFlags::empty())? {
                        break;
                    }
                }
            }
            Op::Fragment { user } => {
                let ft = if user { USER } else { KERNEL };
                for pfn in fragment(&self.alloc, ft) {
                    self.push(pfn, 0, ft)?;
                }
            }
            Op::InjectProtectFailure => self.sim().fail_next_protects(1),
            Op::InjectZeroFailure => self.sim().fail_next_zeros(1),
            Op::RefillReserve => {
                let _ = self.alloc.refill_reserve();
            }
            Op::DrainCaches => {
                self.alloc.drain_caches();
            }
        }
        Ok(())
    }

    /// Everything the checker checks, and each strategy's own promises.
    fn check(&self) -> Result<(), TestCaseError> {
        sim::check(&self.alloc, PT, &managed(&self.alloc), &self.live)
            .map_err(TestCaseError::fail)?;
        let stats = self.alloc.stats();
        let map = stats.direct_map.expect("the simulator counts its mappings");
        let counters = self.sim().counters();
        // Single pages: each protected alone and given back once.
        prop_assert_eq!(
            stats.page_protects - stats.page_unprotects,
            stats.single_pages_live
        );
        prop_assert_eq!(stats.single_pages_live, self.protected_alone());
        // Outside `Pagewise`, only the last resort protects single pages.
        if self.setup.strategy == Strategy::Pagewise {
            prop_assert!(stats.single_page_fallbacks <= stats.page_protects);
        } else {
            prop_assert_eq!(stats.single_page_fallbacks, stats.page_protects);
        }
        if !self.setup.single_page_fallback {
            prop_assert_eq!(stats.single_page_fallbacks, 0);
        }
        // The verification walk sees exactly the exposed tables.
        let mut unprotected = sim::unprotected_page_tables(self.sim(), PT, &self.live);
        let mut exposed: Vec<Pfn> = self.exposed.iter().map(|&(pfn, _)| pfn).collect();
        unprotected.sort_unstable();
        exposed.sort_unstable();
        prop_assert_eq!(&unprotected, &exposed);
        prop_assert_eq!(stats.exposed_live, exposed.len() as u64);
        let open: u64 = self
            .exposed
            .iter()
            .map(|&(_, stamp)| stats.allocations - stamp)
            .sum();
        prop_assert_eq!(stats.exposure_allocations, self.exposure_closed + open);
        if self.setup.pt_fallback == PtFallback::Fail {
            prop_assert_eq!(stats.exposed_tables, 0);
        }
        match self.setup.strategy {
            Strategy::Pagewise => {
                // Page tables are single pages in mapped pageblocks, each
                // flushed when protected and when given back.
                for &(pfn, _, ft) in &self.live {
                    let home = self.alloc.frame_info(pfn).unwrap().pageblock_freetype;
                    if ft == PT {
                        prop_assert_ne!(home, Some(PT), "a Pagewise table in a PT pageblock");
                    }
                }
                prop_assert!(
                    counters.flushes_local
                        <= stats.conversion_batches + stats.page_protects + stats.page_unprotects
                );
            }
            Strategy::Granular => {
                prop_assert_eq!(stats.splits_1g, 0);
                prop_assert_eq!(map.pages_1g, 0);
            }
            Strategy::ProtectedFirst | Strategy::Freetype => {
                // No page is protected alone unless the fallback is on.
                if !self.setup.single_page_fallback {
                    prop_assert_eq!(stats.page_protects, 0);
                    prop_assert_eq!(counters.splits_2m, 0);
                }
            }
        }
        Ok(())
    }

    /// Frames protected alone now: live page tables in pageblocks of
    /// another freetype (not exposed), and reserve pages and direct-map
    /// tables there (single pages the reserve took, used by splits since).
    fn protected_alone(&self) -> u64 {
        let live = self
            .live
            .iter()
            .filter(|&&(pfn, _, ft)| {
                let info = self.alloc.frame_info(pfn).unwrap();
                ft == PT && !info.exposed && info.pageblock_freetype != Some(PT)
            })
            .count() as u64;
        let kept = (0..self.alloc.frames())
            .filter_map(|pfn| self.alloc.frame_info(Pfn(pfn)))
            .filter(|info| {
                matches!(info.state, FrameState::Reserve | FrameState::DirectMapTable)
                    && info.pageblock_freetype != Some(PT)
            })
            .count() as u64;
        live + kept
    }

    /// Frees everything: all memory comes back, and no table stays exposed.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.sim().clear_faults();
        while !self.live.is_empty() {
            self.free_at(self.live.len() - 1, 0)?;
        }
        self.alloc.drain_caches();
        self.check()?;
        let stats = self.alloc.stats();
        prop_assert_eq!(stats.exposed_live, 0);
        prop_assert_eq!(stats.stranded_protected, {
            // Only what cannot merge: page-table pages next to reserve
            // pages and direct-map tables.
            stats.free_pages(PT)
                - stats.free_blocks[PT.index()][PAGEBLOCK_ORDER as usize..]
                    .iter()
                    .enumerate()
                    .map(|(above, blocks)| blocks << (above + PAGEBLOCK_ORDER as usize))
                    .sum::<u64>()
        });
        Ok(())
    }
}

fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let meta = meta(setup.pageblocks * PB);
    let mut world = World::new(&meta, setup);
    world.check()?;
    if setup.strategy == Strategy::ProtectedFirst {
        // Every pageblock starts protected.
        prop_assert_eq!(world.alloc.stats().pageblocks[PT.index()], setup.pageblocks);
    }
    for (at, op) in ops.iter().enumerate() {
        world
            .step(op)
            .map_err(|e| TestCaseError::fail(format!("step {at} {op:?}: {e}")))?;
        world
            .check()
            .map_err(|e| TestCaseError::fail(format!("after step {at} {op:?}: {e}")))?;
    }
    world.finish()
}

fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(32))]

    /// 4-12 MiB, every strategy and fallback, invariants after each step.
    #[test]
    fn every_strategy_keeps_the_invariants(setup in setup(), ops in prop::collection::vec(op(), 1..80)) {
        run(&setup, &ops)?;
    }
}

// ---- Pagewise ----

/// Each page table is a mapped page protected alone: its 2 MiB mapping
/// split down to 4 KiB (once per pageblock), one flush per page table, no
/// pageblock converted for it; freed, it is unprotected again (one flush
/// more). `Freetype` serves the same tables with one conversion and one
/// flush, splitting nothing.
#[test]
fn pagewise_protects_each_table_alone_with_a_flush_each() {
    const TABLES: u64 = 40;
    for largest in [LargestPage::Mega, LargestPage::Giga] {
        let meta = meta(32 * MIB);
        let alloc = allocator(&meta, largest, config(Strategy::Pagewise, PtFallback::Fail));
        // The reserve's stock: the one conversion this strategy makes.
        alloc.refill_reserve().unwrap();
        let start = alloc.stats();
        let counters = alloc.backend().counters();
        assert_eq!(start.converted(KERNEL, PT), 1);
        let tables: Vec<Pfn> = (0..TABLES)
            .map(|i| {
                let before = alloc.stats();
                let pfn = alloc
                    .alloc(i as usize % CPUS, 0, PT, AllocFlags::ZERO)
                    .unwrap();
                let after = alloc.stats();
                assert_eq!(
                    after.flushes_local,
                    before.flushes_local + 1,
                    "one flush per table"
                );
                assert_eq!(after.page_protects, before.page_protects + 1);
                // A split took a reserve page: refilled on the way out.
                assert_eq!(after.reserve_level, 8);
                pfn
            })
            .collect();
        assert!(alloc.stats().reserve_taken > start.reserve_taken);
        let stats = alloc.stats();
        assert_eq!(
            stats.converted(KERNEL, PT),
            1,
            "no pageblock converted for tables"
        );
        assert_eq!(stats.single_pages_live, TABLES);
        assert_eq!(
            stats.single_page_fallbacks, 0,
            "not the fallback: the strategy"
        );
        assert_eq!(stats.cached_pages[PT.index()], 0, "never cached");
        let pageblocks: std::collections::HashSet<u64> =
            tables.iter().map(|pfn| pfn.0 / PB).collect();
        let sim = alloc.backend();
        // Split down to 4 KiB: once per pageblock the tables lie in.
        assert_eq!(
            sim.counters().splits_2m - counters.splits_2m,
            pageblocks.len() as u64
        );
        let map = stats.direct_map.unwrap();
        assert_eq!(map.pages_4k, 512 * pageblocks.len() as u64);
        for &pfn in &tables {
            let info = alloc.frame_info(pfn).unwrap();
            assert_eq!(info.pageblock_freetype, Some(KERNEL));
            assert_eq!(sim.protection_of(pfn), PT.protection);
        }
        let mut live: Vec<_> = tables.iter().map(|&pfn| (pfn, 0, PT)).collect();
        sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();

        for &pfn in &tables {
            let before = alloc.stats().flushes_local;
            alloc.free(0, pfn, 0).unwrap();
            assert_eq!(alloc.stats().flushes_local, before + 1);
            assert_eq!(sim.protection_of(pfn), Protection::Mapped);
        }
        let stats = alloc.stats();
        assert_eq!(
            (stats.page_unprotects, stats.single_pages_live),
            (TABLES, 0)
        );
        live.clear();
        sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();
        // Only single pages: no larger page-table block, and never without
        // blocking.
        assert_eq!(
            alloc.alloc(0, 1, PT, AllocFlags::empty()),
            Err(AllocError::OutOfMemory)
        );
        assert_eq!(
            alloc.alloc(0, 0, PT, AllocFlags::NO_BLOCK),
            Err(AllocError::WouldBlock)
        );
    }

    let meta = meta(32 * MIB);
    let alloc = allocator(
        &meta,
        LargestPage::Mega,
        config(Strategy::Freetype, PtFallback::Fail),
    );
    alloc.refill_reserve().unwrap();
    let before = alloc.stats();
    for i in 0..TABLES {
        alloc
            .alloc(i as usize % CPUS, 0, PT, AllocFlags::ZERO)
            .unwrap();
    }
    let after = alloc.stats();
    assert!(after.flushes_local - before.flushes_local <= 1);
    assert_eq!((after.splits_2m, after.page_protects), (0, 0));
}

/// The first `Pagewise` table of a fresh allocator stocks the split
/// reserve before it splits (a page inside a 1 GiB mapping takes two), and
/// compaction never runs for a `Pagewise` table: it needs a free page, not
/// a whole pageblock.
#[test]
fn pagewise_stocks_the_reserve_first_and_never_compacts() {
    let meta = meta(8 * MIB);
    let owner = sim::SimMover::new();
    let alloc = allocator(
        &meta,
        LargestPage::Giga,
        config(Strategy::Pagewise, PtFallback::Fail),
    )
    .with_migrator(&owner);
    assert_eq!(alloc.stats().reserve_level, 0);
    let table = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.converted(KERNEL, PT), 1);
    assert_eq!(
        (stats.splits_1g, stats.splits_2m, stats.reserve_level),
        (1, 1, 8)
    );
    let mut live = vec![(table, 0, PT)];
    // Every other page movable user memory: no mapped page left.
    while let Ok(pfn) = alloc.alloc(0, 0, USER, AllocFlags::empty()) {
        owner.hold(pfn, 0, USER);
        live.push((pfn, 0, USER));
    }
    assert_eq!(
        alloc.alloc(1, 0, PT, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.compactions_failed), (0, 0));
    assert_eq!(stats.page_table_failures, 1);
    sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();
}

/// With nothing but a refilled reserve, a `Pagewise` table whose split
/// finds no reserve page fails cleanly, and `USE_RESERVE` takes one.
#[test]
fn pagewise_uses_the_reserve_only_for_splits_and_use_reserve() {
    let meta = meta(16 * MIB);
    let alloc = allocator(
        &meta,
        LargestPage::Mega,
        config(Strategy::Pagewise, PtFallback::Fail),
    );
    alloc.refill_reserve().unwrap();
    alloc.inject_empty_reserve(true);
    // A fresh pageblock needs a split page: none to be had.
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::ReserveExhausted)
    );
    assert_eq!(alloc.stats().page_table_failures, 1);
    let level = alloc.stats().reserve_level;
    let pfn = alloc.alloc(0, 0, PT, AllocFlags::USE_RESERVE).unwrap();
    assert_eq!(alloc.stats().reserve_level, level - 1);
    assert_eq!(alloc.frame_info(pfn).unwrap().pageblock_freetype, Some(PT));
    alloc.inject_empty_reserve(false);
    sim::check(&alloc, PT, &managed(&alloc), &[(pfn, 0, PT)]).unwrap();
}

// ---- Granular ----

/// A backend that does not say how large its pages are.
struct Unknown(SimDirectMap);

impl DirectMap for Unknown {
    fn protect(
        &self,
        range: PageblockRange,
        from: Protection,
        to: Protection,
        pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        self.0.protect(range, from, to, pages)
    }

    fn protect_frame(
        &self,
        pfn: Pfn,
        from: Protection,
        to: Protection,
        pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        self.0.protect_frame(pfn, from, to, pages)
    }

    fn flush(&self, range: PageblockRange) -> FlushReport {
        self.0.flush(range)
    }

    fn zero(&self, start: Pfn, order: u32, protection: Protection) -> Result<(), DirectMapError> {
        self.0.zero(start, order, protection)
    }
}

/// Conversions of every kind on a map of 2 MiB pages split no 1 GiB
/// mapping (there is none); the same load under `Freetype` on 1 GiB pages
/// splits one. A map with 1 GiB pages, or one that does not say, is
/// refused.
#[test]
fn granular_never_splits_a_gigabyte_and_refuses_maps_that_could() {
    let meta_a = meta(32 * MIB);
    let giga = SimDirectMap::new(32 * MIB, LargestPage::Giga, 1);
    let granular = config(Strategy::Granular, PtFallback::Fail);
    assert!(matches!(
        Alloc::new(&meta_a, Pfn(0), granular, giga),
        Err(InitError::NotGranular(Some(PageSize::Size1G)))
    ));
    let unknown = Unknown(SimDirectMap::new(32 * MIB, LargestPage::Mega, 1));
    let Err(error) = PageAllocator::<_, 1>::new(&meta_a, Pfn(0), granular, unknown) else {
        panic!("a map that does not say its page size is refused");
    };
    assert_eq!(error, InitError::NotGranular(None));
    assert!(
        error
            .to_string()
            .contains("granular strategy needs a direct map of 2 MiB")
    );
    // Under another strategy it serves, and its mappings are unknown.
    let unknown = Unknown(SimDirectMap::new(32 * MIB, LargestPage::Mega, 1));
    let freetype = config(Strategy::Freetype, PtFallback::Fail);
    let alloc = PageAllocator::<_, 1>::new(&meta_a, Pfn(0), freetype, unknown).unwrap();
    assert_eq!(alloc.stats().direct_map, None);
    drop(alloc);

    let load = |alloc: &Alloc<'_>| {
        let mut live = Vec::new();
        for (ft, order) in [
            (PT, 0),
            (SECRET, 0),
            (PT, 9),
            (SECRET, 9),
            (USER, 3),
            (PT, 0),
        ] {
            live.push((
                alloc.alloc(0, order, ft, AllocFlags::ZERO).unwrap(),
                order,
                ft,
            ));
        }
        sim::check(alloc, PT, &managed(alloc), &live).unwrap();
        alloc.stats()
    };
    let meta_b = meta(32 * MIB);
    let alloc = allocator(&meta_b, LargestPage::Mega, granular);
    let stats = load(&alloc);
    assert!(stats.total_conversions() >= 4);
    assert_eq!(stats.splits_1g, 0);
    let map = stats.direct_map.unwrap();
    assert_eq!((map.pages_1g, map.pages_2m, map.pages_4k), (0, 512, 0));

    let meta_c = meta(32 * MIB);
    let alloc = allocator(
        &meta_c,
        LargestPage::Giga,
        config(Strategy::Freetype, PtFallback::Fail),
    );
    assert_eq!(alloc.stats().direct_map.unwrap().pages_1g, 1);
    let stats = load(&alloc);
    assert_eq!(stats.splits_1g, 1);
    let map = stats.direct_map.unwrap();
    assert_eq!((map.pages_1g, map.pages_2m), (0, 512));
}

// ---- ProtectedFirst ----

/// Every whole pageblock starts protected (one batch and one flush per
/// aligned block, none split when it is a whole gigabyte); ordinary
/// allocations convert pageblocks back as they need them, and page tables
/// convert nothing.
#[test]
fn protected_first_starts_protected_and_converts_on_ordinary_demand() {
    // A whole gigabyte: protected in one batch, with no split at all.
    let gib = 1 << MAX_ORDER;
    let meta_g = meta(gib);
    let alloc = allocator(
        &meta_g,
        LargestPage::Giga,
        config(Strategy::ProtectedFirst, PtFallback::Fail),
    );
    let stats = alloc.stats();
    assert_eq!(stats.pageblocks[PT.index()], 512);
    assert_eq!((stats.conversion_batches, stats.flushes_local), (1, 1));
    assert_eq!(
        (stats.splits_1g, stats.direct_map.unwrap().pages_1g),
        (0, 1)
    );
    drop(alloc);

    // 64 MiB and a bit, with a partial pageblock at each end.
    let frames = 64 * MIB + PB;
    let meta = meta(frames);
    let map = SimDirectMap::new(frames, LargestPage::Giga, CPUS as u32);
    let alloc = Alloc::new(
        &meta,
        Pfn(0),
        config(Strategy::ProtectedFirst, PtFallback::Fail),
        map,
    )
    .unwrap();
    let (start, end) = (Pfn(100), Pfn(frames - 7));
    alloc.add_memory(start, end, KERNEL).unwrap();
    let managed = [(start, end)];
    let stats = alloc.stats();
    // Pageblocks 1..=31 are whole: aligned blocks of 1, 2, 4, 8 and 16
    // pageblocks (the first splits the gigabyte, with a page of its own);
    // 0 and 32 keep their holes.
    assert_eq!(stats.pageblocks[PT.index()], 31);
    assert_eq!(stats.pageblocks[KERNEL.index()], 2);
    assert_eq!(stats.conversion_batches, 5);
    let sim = alloc.backend();
    for pfn in start.0..end.0 {
        let whole = (PB..frames - PB).contains(&pfn);
        let want = if whole {
            PT.protection
        } else {
            Protection::Mapped
        };
        assert_eq!(sim.protection_of(Pfn(pfn)), want, "frame {pfn:#x}");
    }
    assert_eq!(stats.converted(KERNEL, PT), 31);
    assert_eq!(stats.flushes_local, stats.conversion_batches);
    assert_eq!(stats.splits_1g, 1);
    sim::check(&alloc, PT, &managed, &[]).unwrap();

    // Page tables come from what is protected already: no conversion, no
    // flush.
    let before = alloc.stats();
    let tables: Vec<Pfn> = (0..100)
        .map(|i| alloc.alloc(i % CPUS, 0, PT, AllocFlags::ZERO).unwrap())
        .collect();
    let after = alloc.stats();
    assert_eq!(after.total_conversions(), before.total_conversions());
    assert_eq!(after.flushes_local, before.flushes_local);
    // Ordinary memory beyond the partial pageblocks converts one pageblock
    // back per need, unprotected (a wipe and a flush each).
    let mut live: Vec<(Pfn, u32, Freetype)> = tables.iter().map(|&pfn| (pfn, 0, PT)).collect();
    for _ in 0..3 {
        live.push((
            alloc.alloc(0, 9, USER, AllocFlags::empty()).unwrap(),
            9,
            USER,
        ));
    }
    let stats = alloc.stats();
    assert_eq!(stats.converted(PT, USER), 3);
    assert_eq!(stats.flushes_local, after.flushes_local + 3);
    for &(pfn, _, ft) in &live {
        assert_eq!(sim.protection_of(pfn), ft.protection);
    }
    sim::check(&alloc, PT, &managed, &live).unwrap();
    // The page tables' pageblock stays protected: its free pages are
    // stranded there, for page tables only.
    assert!(stats.stranded_protected > 0);
}

// ---- the fallback: Fail and Unprotected ----

/// Under pressure (no whole pageblock, no single-page fallback), `Fail`
/// gives `OutOfMemory` and `Unprotected` an exposed table: counted, seen by
/// the verification walk, and measured in allocations until it is freed.
/// While protected tables can be had, neither exposes anything.
#[test]
fn unprotected_fallback_exposes_tables_only_under_pressure_and_counts_them() {
    for pt_fallback in [PtFallback::Fail, PtFallback::Unprotected] {
        let meta = meta(16 * MIB);
        let alloc = allocator(
            &meta,
            LargestPage::Giga,
            config(Strategy::Freetype, pt_fallback),
        );
        // Protected tables while pageblocks can be converted.
        let mut live: Vec<(Pfn, u32, Freetype)> = (0..10)
            .map(|_| (alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap(), 0, PT))
            .collect();
        assert_eq!(alloc.stats().exposed_tables, 0);
        // Use up the page-table pageblock, then leave no pageblock whole.
        while alloc.stats().free_pages(PT) + alloc.stats().cached_pages[PT.index()] > 0 {
            live.push((alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap(), 0, PT));
        }
        live.extend(
            fragment(&alloc, KERNEL)
                .into_iter()
                .map(|pfn| (pfn, 0, KERNEL)),
        );
        assert_eq!(alloc.stats().whole_free_pageblocks(), 0);
        let before = alloc.stats();
        let result = alloc.alloc(1, 0, PT, AllocFlags::ZERO);
        let stats = alloc.stats();
        if pt_fallback == PtFallback::Fail {
            assert_eq!(result, Err(AllocError::OutOfMemory));
            assert_eq!(stats.page_table_failures, before.page_table_failures + 1);
            assert_eq!(stats.exposed_tables, 0);
            assert!(sim::unprotected_page_tables(alloc.backend(), PT, &live).is_empty());
            continue;
        }
        let table = result.unwrap();
        assert_eq!(stats.page_table_failures, before.page_table_failures);
        assert_eq!((stats.exposed_tables, stats.exposed_live), (1, 1));
        let info = alloc.frame_info(table).unwrap();
        assert!(info.exposed);
        assert_eq!(info.pageblock_freetype, Some(KERNEL));
        assert_eq!(alloc.backend().protection_of(table), Protection::Mapped);
        live.push((table, 0, PT));
        // The checker counts it, and the walk fails on it alone.
        sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();
        assert_eq!(
            sim::unprotected_page_tables(alloc.backend(), PT, &live),
            vec![table]
        );
        // Exposure grows with every allocation while it lives.
        assert_eq!(stats.exposure_allocations, 1);
        let freed: Vec<Pfn> = live
            .iter()
            .filter(|&&(pfn, _, ft)| ft == PT && pfn != table)
            .take(8)
            .map(|&(pfn, _, _)| pfn)
            .collect();
        for &pfn in &freed {
            alloc.free(0, pfn, 0).unwrap();
            live.retain(|&(p, _, _)| p != pfn);
        }
        // Protected pages are back: new tables are protected ones.
        for _ in 0..5 {
            let pfn = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
            assert!(!alloc.frame_info(pfn).unwrap().exposed);
            live.push((pfn, 0, PT));
        }
        let stats = alloc.stats();
        assert_eq!((stats.exposed_tables, stats.exposure_allocations), (1, 6));
        // Freed, the exposure stops counting.
        alloc.free(0, table, 0).unwrap();
        live.retain(|&(p, _, _)| p != table);
        assert!(!alloc.frame_info(table).unwrap().exposed);
        for _ in 0..3 {
            let pfn = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
            live.push((pfn, 0, PT));
        }
        let stats = alloc.stats();
        assert_eq!((stats.exposed_live, stats.exposure_allocations), (0, 6));
        sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();
        assert!(sim::unprotected_page_tables(alloc.backend(), PT, &live).is_empty());
    }
}

/// A zeroing fault on an exposed table gives it back: the failed call
/// keeps no memory and exposes nothing.
#[test]
fn an_exposed_table_that_cannot_be_zeroed_is_given_back() {
    let meta = meta(8 * MIB);
    let alloc = allocator(
        &meta,
        LargestPage::Mega,
        config(Strategy::Pagewise, PtFallback::Unprotected),
    );
    alloc.refill_reserve().unwrap();
    let live: Vec<(Pfn, u32, Freetype)> = fragment(&alloc, KERNEL)
        .into_iter()
        .map(|pfn| (pfn, 0, KERNEL))
        .collect();
    // One mapped page per pageblock is live, the rest free: under
    // `Pagewise` with no reserve page to split with, no table can be
    // protected.
    alloc.inject_empty_reserve(true);
    let before = alloc.stats();
    alloc.backend().fail_next_zeros(1);
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::ZERO),
        Err(AllocError::Backend(DirectMapError::Failed))
    );
    let after = alloc.stats();
    assert_eq!((after.exposed_tables, after.exposed_live), (0, 0));
    assert_eq!(after.allocations, before.allocations);
    assert_eq!(after.failed_allocations, before.failed_allocations + 1);
    sim::check(&alloc, PT, &managed(&alloc), &live).unwrap();
    // Without the fault, the same call exposes one, and its exposure
    // starts from nothing.
    let table = alloc.alloc(0, 0, PT, AllocFlags::ZERO).unwrap();
    assert!(alloc.frame_info(table).unwrap().exposed);
    assert_eq!(alloc.stats().exposure_allocations, 1);
    let kernel = alloc.alloc(0, 0, KERNEL, AllocFlags::empty()).unwrap();
    assert_eq!(alloc.stats().exposure_allocations, 2);
    alloc.inject_empty_reserve(false);
    alloc.free(0, table, 0).unwrap();
    alloc.free(0, kernel, 0).unwrap();
    assert_eq!(alloc.stats().exposure_allocations, 2);
}

// ---- the counters ----

/// Stranded protected frames are the free page-table pages outside whole
/// free pageblocks; they go when the pageblock is whole again.
#[test]
fn stranded_protected_frames_are_free_tables_outside_whole_pageblocks() {
    let meta = meta(8 * MIB);
    let alloc = allocator(
        &meta,
        LargestPage::Mega,
        config(Strategy::Freetype, PtFallback::Fail),
    );
    assert_eq!(alloc.stats().stranded_protected, 0);
    let table = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.converted(KERNEL, PT), 1);
    assert_eq!(stats.stranded_protected, PB - 1);
    assert_eq!(stats.cached_pages[PT.index()], CACHE_BATCH as u64 - 1);
    alloc.free(0, table, 0).unwrap();
    alloc.drain_caches();
    assert_eq!(alloc.stats().stranded_protected, 0);
    assert_eq!(
        alloc.stats().free_blocks[PT.index()][PAGEBLOCK_ORDER as usize],
        1
    );
}
