//! Model-equivalence tests: random operation sequences over every kind of
//! freetype run on the allocator with the simulated direct map, and after
//! every step the allocator is compared with a trivially correct model (the
//! list of live blocks) by `ptalloc::sim::check`, which also checks the
//! freetype, protection, reserve and counting invariants. Each result is
//! judged against what the model allows: an error is accepted only when
//! the model says it can happen, and bad input must give its exact typed
//! error and change nothing.
//!
//! The default case count keeps a debug `cargo test` short; raise it with
//! `PROPTEST_CASES=1000`.

use proptest::prelude::*;
// The proptest trait, not the allocator's `Strategy` (both come in by glob).
use proptest::sample::Index;
use proptest::strategy::Strategy;
use proptest::test_runner::TestCaseError;
use ptalloc::sim::{self, LargestPage, SimCounters, SimDirectMap, SimMover, TableLevel};
use ptalloc::*;
use std::collections::HashSet;

const CPUS: usize = 4;
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
const KEY2: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(2),
};
/// Same protection as the page-table freetype, other mobility: converting
/// between the two changes no mapping.
const PT_MOVABLE: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Pkey(1),
};
const FREETYPES: [Freetype; 6] = [KERNEL, USER, SECRET, PT, KEY2, PT_MOVABLE];

/// Frames per MiB and per GiB.
const MIB: u64 = 256;
const GIB: u64 = 1 << 18;

type Alloc<'m> = PageAllocator<'m, SimDirectMap, CPUS>;

fn meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

fn config(
    reserve_target: usize,
    conversion_watermark: usize,
    single_page_fallback: bool,
) -> Config {
    Config {
        page_table: PT,
        reserve_target,
        conversion_watermark,
        single_page_fallback,
        ..Config::default()
    }
}

/// Memory given to one allocator.
#[derive(Clone, Debug)]
struct Layout {
    frames: u64,
    largest: LargestPage,
    ranges: Vec<(Pfn, Pfn, Freetype)>,
    reserve_target: usize,
    /// Whole free pageblocks kept for page-table conversions.
    watermark: usize,
    /// Whether the single-page fallback is on.
    fallback: bool,
    /// Whether the allocator may compact (it is given the owner of movable
    /// blocks).
    compaction: bool,
}

fn new_allocator<'m>(meta: &'m [FrameMeta], layout: &Layout) -> Alloc<'m> {
    let sim = SimDirectMap::new(layout.frames, layout.largest, CPUS as u32);
    let config = config(layout.reserve_target, layout.watermark, layout.fallback);
    let alloc = Alloc::new(meta, Pfn(0), config, sim).unwrap();
    for &(start, end, ft) in &layout.ranges {
        alloc.add_memory(start, end, ft).unwrap();
    }
    alloc
}

/// 16 to 64 MiB from frame 0, part kernel and part user memory.
fn dense_layout() -> impl Strategy<Value = Layout> {
    (
        8u64..=32,
        0u64..=32,
        prop_oneof![Just(LargestPage::Giga), Just(LargestPage::Mega)],
        prop_oneof![1 => Just(0usize), 2 => Just(2), 4 => Just(8)],
        prop_oneof![Just(0usize), Just(1), Just(3)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(pageblocks, split, largest, reserve_target, watermark, fallback, compaction)| {
                let (split, end) = (split.min(pageblocks) * 512, pageblocks * 512);
                let mut ranges = Vec::new();
                if split > 0 {
                    ranges.push((Pfn(0), Pfn(split), KERNEL));
                }
                if split < end {
                    ranges.push((Pfn(split), Pfn(end), USER));
                }
                Layout {
                    frames: end,
                    largest,
                    ranges,
                    reserve_target,
                    watermark,
                    fallback,
                    compaction,
                }
            },
        )
}

/// Memory in two 1 GiB regions, with holes and partial pageblocks at
/// unaligned ends (1 MiB + 3 frames, 113 MiB, 129 MiB, ...).
fn sparse_ranges() -> Vec<(Pfn, Pfn, Freetype)> {
    vec![
        (Pfn(MIB + 3), Pfn(17 * MIB), KERNEL),
        (Pfn(113 * MIB), Pfn(129 * MIB), USER),
        (Pfn(GIB + 4 * MIB), Pfn(GIB + 20 * MIB), KERNEL),
        (Pfn(GIB + 30 * MIB + 7), Pfn(GIB + 33 * MIB + 100), USER),
    ]
}

fn sparse_layout() -> impl Strategy<Value = Layout> {
    (
        prop_oneof![Just(2usize), Just(8)],
        prop_oneof![Just(0usize), Just(2)],
    )
        .prop_map(|(reserve_target, watermark)| Layout {
            frames: GIB + 34 * MIB,
            largest: LargestPage::Giga,
            ranges: sparse_ranges(),
            reserve_target,
            watermark,
            fallback: true,
            compaction: true,
        })
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        order: u32,
        ft: usize,
        zero: bool,
        no_block: bool,
    },
    /// A page-table page that may come from the split reserve.
    AllocReserve {
        cpu: usize,
    },
    /// `USE_RESERVE` with another freetype or order: refused.
    AllocReserveWrongly {
        order: u32,
        ft: usize,
    },
    Free {
        pick: Index,
        cpu: usize,
    },
    BadFree(Bad),
    InjectProtectFailure(u32),
    InjectZeroFailure,
    RefillReserve,
    DrainCaches,
    /// Takes every free page of a mapped freetype, then gives back all but
    /// one per pageblock: no pageblock is whole after it, so page tables
    /// come from the single-page fallback (where it is on), or not at all.
    Fragment {
        user: bool,
    },
    /// Pins or unpins a live movable block: a pinned block refuses to move.
    Pin {
        pick: Index,
        pinned: bool,
    },
    /// The owner refuses the next moves.
    RefuseMoves(u32),
}

#[derive(Clone, Debug)]
enum Bad {
    DoubleFree(Index),
    NeverAllocated(Index),
    Hole(Index),
    WrongOrder(Index, u32),
    OutOfRange(u64),
    InvalidOrder(u32),
    InvalidCpu(usize, Index),
}

fn order() -> impl Strategy<Value = u32> {
    prop_oneof![12 => 0u32..=3, 6 => 4u32..=10, 1 => 11u32..=18, 1 => 19u32..=24]
}

fn freetype() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 2 => Just(1), 2 => Just(2), 3 => Just(3), 1 => Just(4), 1 => Just(5)]
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        any::<Index>().prop_map(Bad::DoubleFree),
        any::<Index>().prop_map(Bad::NeverAllocated),
        any::<Index>().prop_map(Bad::Hole),
        (any::<Index>(), 0u32..18).prop_map(|(pick, delta)| Bad::WrongOrder(pick, delta)),
        (0u64..1 << 20).prop_map(Bad::OutOfRange),
        (MAX_ORDER + 1..=64).prop_map(Bad::InvalidOrder),
        (CPUS..CPUS + 8, any::<Index>()).prop_map(|(cpu, pick)| Bad::InvalidCpu(cpu, pick)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..CPUS, order(), freetype(), prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(cpu, order, ft, zero, no_block)| Op::Alloc { cpu, order, ft, zero, no_block }),
        1 => (0..CPUS).prop_map(|cpu| Op::AllocReserve { cpu }),
        1 => (order(), freetype()).prop_map(|(order, ft)| Op::AllocReserveWrongly { order, ft }),
        9 => (any::<Index>(), 0..CPUS).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        3 => bad().prop_map(Op::BadFree),
        1 => (1u32..=2).prop_map(Op::InjectProtectFailure),
        1 => Just(Op::InjectZeroFailure),
        1 => Just(Op::RefillReserve),
        1 => Just(Op::DrainCaches),
        1 => any::<bool>().prop_map(|user| Op::Fragment { user }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(pick, pinned)| Op::Pin { pick, pinned }),
        1 => (1u32..=3).prop_map(Op::RefuseMoves),
    ]
}

/// The allocator under test and the model it must agree with.
struct World<'m> {
    alloc: Alloc<'m>,
    /// The owner of movable blocks: holds every live movable block, and
    /// logs the moves compaction makes, which the model then follows.
    owner: &'m SimMover,
    managed: Vec<(Pfn, Pfn)>,
    /// The model: blocks handed out and not freed.
    live: Vec<(Pfn, u32, Freetype)>,
    /// Blocks freed lately, for double frees.
    freed: Vec<(Pfn, u32)>,
    reserve_target: usize,
    /// The conversion watermark, in pageblocks.
    watermark: usize,
    /// Whether the single-page fallback is on.
    fallback: bool,
}

/// Everything a refused call must leave as it was.
#[derive(PartialEq)]
struct Everything {
    stats: Stats,
    map: sim::MapSnapshot,
    counters: SimCounters,
    reserve: Vec<Pfn>,
}

impl<'m> World<'m> {
    fn new(meta: &'m [FrameMeta], owner: &'m SimMover, layout: &Layout) -> Self {
        let mut alloc = new_allocator(meta, layout);
        if layout.compaction {
            alloc = alloc.with_migrator(owner);
        }
        let managed = layout
            .ranges
            .iter()
            .map(|&(start, end, _)| (start, end))
            .collect();
        World {
            alloc,
            owner,
            managed,
            live: Vec::new(),
            freed: Vec::new(),
            reserve_target: layout.reserve_target,
            watermark: layout.watermark,
            fallback: layout.fallback,
        }
    }

    fn sim(&self) -> &SimDirectMap {
        self.alloc.backend()
    }

    fn everything(&self) -> Everything {
        Everything {
            stats: self.alloc.stats(),
            map: self.sim().snapshot(),
            counters: self.sim().counters(),
            reserve: self.alloc.reserve_frames().to_vec(),
        }
    }

    /// Takes a block the allocator just handed out into the model (and
    /// the owner's hands, if it is movable).
    fn push_live(&mut self, pfn: Pfn, order: u32, ft: Freetype) {
        if ft.mobility == Mobility::Movable {
            self.owner.hold(pfn, order, ft);
        }
        self.live.push((pfn, order, ft));
    }

    /// Takes a block out of the model (and the owner's hands) to free it.
    fn take_live(&mut self, at: usize) -> (Pfn, u32, Freetype) {
        let block = self.live.swap_remove(at);
        self.owner.release(block.0);
        block
    }

    /// Follows the moves compaction made: the model's blocks go where the
    /// owner says they went.
    fn follow_moves(&mut self) {
        for (from, to) in self.owner.take_moves() {
            if let Some(block) = self.live.iter_mut().find(|block| block.0 == from) {
                block.0 = to;
            }
        }
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        self.follow_moves();
        let violations = self.owner.violations();
        prop_assert!(violations.is_empty(), "the owner saw: {:?}", violations);
        // The owner holds exactly the model's movable blocks.
        let mut movable: Vec<_> = self
            .live
            .iter()
            .copied()
            .filter(|block| block.2.mobility == Mobility::Movable)
            .collect();
        movable.sort_unstable_by_key(|block| block.0);
        prop_assert_eq!(self.owner.held(), movable);
        sim::check(&self.alloc, PT, &self.managed, &self.live).map_err(TestCaseError::fail)?;
        let stats = self.alloc.stats();
        // One flush per conversion batch at most, and one per page the
        // single-page fallback protected or gave back.
        let single_page_changes = 2 * stats.single_page_fallbacks;
        prop_assert!(
            stats.flushes_local <= stats.conversion_batches + single_page_changes,
            "more than one flush per batch"
        );
        prop_assert_eq!(
            stats.flushes_remote,
            stats.flushes_local * (CPUS as u64 - 1)
        );
        // Compaction moves only through the owner.
        prop_assert_eq!(stats.pages_moved > 0, self.owner.counts().0 > 0);
        // Pageblock conversions never split a 2 MiB page; only the
        // single-page fallback does, at most once per page it protects.
        prop_assert!(
            self.sim().counters().splits_2m <= stats.single_page_fallbacks,
            "a pageblock conversion split a 2 MiB page"
        );
        Ok(())
    }

    fn is_live_head(&self, pfn: Pfn) -> bool {
        self.live.iter().any(|&(head, _, _)| head == pfn)
    }

    fn managed_frames(&self) -> u64 {
        self.managed
            .iter()
            .map(|(start, end)| end.0 - start.0)
            .sum()
    }

    /// The `n`th managed frame.
    fn managed_frame(&self, mut n: u64) -> Pfn {
        for &(start, end) in &self.managed {
            if n < end.0 - start.0 {
                return Pfn(start.0 + n);
            }
            n -= end.0 - start.0;
        }
        unreachable!("n is below managed_frames()")
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc {
                cpu,
                order,
                ft,
                zero,
                no_block,
            } => {
                let mut flags = AllocFlags::empty();
                flags.set(AllocFlags::ZERO, zero);
                flags.set(AllocFlags::NO_BLOCK, no_block);
                self.alloc_step(cpu, order, FREETYPES[ft], flags)
            }
            Op::AllocReserve { cpu } => {
                self.alloc_step(cpu, 0, PT, AllocFlags::USE_RESERVE | AllocFlags::ZERO)
            }
            Op::AllocReserveWrongly { order, ft } => {
                let ft = FREETYPES[ft];
                let (order, ft) = if order == 0 && ft == PT {
                    (1, PT)
                } else {
                    (order.min(MAX_ORDER), ft)
                };
                let before = self.everything();
                let result = self.alloc.alloc(0, order, ft, AllocFlags::USE_RESERVE);
                let expected = if ft == PT {
                    AllocError::ReserveNeedsOrderZero(order)
                } else {
                    AllocError::ReserveNotForFreetype(ft)
                };
                prop_assert_eq!(result, Err(expected));
                prop_assert!(
                    self.everything() == before,
                    "a refused allocation changed something"
                );
                Ok(())
            }
            Op::Free { pick, cpu } => {
                if self.live.is_empty() {
                    return Ok(());
                }
                let (pfn, order, ft) = self.take_live(pick.index(self.live.len()));
                let faults_pending = self.sim().pending_zero_failures() > 0
                    || self.sim().pending_protect_failures() > 0;
                match self.alloc.free(cpu, pfn, order) {
                    Ok(()) => {}
                    // A single page-table page is wiped and reprotected on
                    // its way back: a fault keeps it allocated, and
                    // protected (the checker sees to that).
                    Err(FreeError::Backend(_)) if faults_pending && ft == PT => {
                        self.push_live(pfn, order, ft);
                        return Ok(());
                    }
                    Err(error) => prop_assert!(false, "freeing live {:#x}: {error:?}", pfn.0),
                }
                self.freed.push((pfn, order));
                if self.freed.len() > 64 {
                    self.freed.remove(0);
                }
                Ok(())
            }
            Op::BadFree(ref bad) => self.bad_free(bad),
            Op::InjectProtectFailure(calls) => {
                self.sim().fail_next_protects(calls);
                Ok(())
            }
            Op::InjectZeroFailure => {
                self.sim().fail_next_zeros(1);
                Ok(())
            }
            Op::RefillReserve => {
                // A conversion from a key-protected or unmapped source
                // wipes its frames first, so a zero fault matters too.
                let faults =
                    self.sim().pending_protect_failures() + self.sim().pending_zero_failures();
                match self.alloc.refill_reserve() {
                    Ok(()) => prop_assert_eq!(
                        self.alloc.stats().reserve_level,
                        self.reserve_target as u64
                    ),
                    Err(AllocError::OutOfMemory) => {}
                    Err(AllocError::Backend(DirectMapError::Failed)) => prop_assert!(faults > 0),
                    // The fallback's split needs a reserve page, and refills
                    // start when the reserve is low: it may be empty.
                    Err(AllocError::ReserveExhausted) if self.fallback => {}
                    Err(other) => prop_assert!(
                        false,
                        "refill failed with {other:?}: PT conversions host their own split"
                    ),
                }
                Ok(())
            }
            Op::Fragment { user } => {
                let ft = if user { USER } else { KERNEL };
                let mut taken = Vec::new();
                while (taken.len() as u64) < self.managed_frames() {
                    match self.alloc.alloc(0, 0, ft, AllocFlags::empty()) {
                        Ok(pfn) => taken.push(pfn),
                        Err(_) => break,
                    }
                }
                let mut kept = std::collections::HashSet::new();
                for pfn in taken {
                    if kept.insert(pfn.0 >> PAGEBLOCK_ORDER) {
                        self.push_live(pfn, 0, ft);
                    } else {
                        prop_assert_eq!(self.alloc.free(0, pfn, 0), Ok(()));
                    }
                }
                // Then page tables until one fails: with the fallback on,
                // the last ones are single pages in mapped pageblocks (later
                // frees give them back), and a failure means no mapped page
                // is free.
                let before = self.alloc.stats().single_page_fallbacks;
                let error = loop {
                    match self.alloc.alloc(1, 0, PT, AllocFlags::empty()) {
                        Ok(pfn) => self.push_live(pfn, 0, PT),
                        Err(error) => break error,
                    }
                };
                let stats = self.alloc.stats();
                let mapped_free: u64 = [KERNEL, USER]
                    .iter()
                    .map(|&ft| stats.free_pages(ft) + stats.cached_pages[ft.index()])
                    .sum();
                if self.fallback
                    && error == AllocError::OutOfMemory
                    && self.sim().pending_protect_failures() == 0
                {
                    prop_assert_eq!(mapped_free, 0, "page tables failed with mapped pages free");
                }
                if !self.fallback {
                    prop_assert_eq!(stats.single_page_fallbacks, before);
                }
                Ok(())
            }
            Op::Pin { pick, pinned } => {
                if !self.live.is_empty() {
                    let (pfn, _, _) = self.live[pick.index(self.live.len())];
                    self.owner.pin(pfn, pinned);
                }
                Ok(())
            }
            Op::RefuseMoves(moves) => {
                self.owner.refuse_next(moves);
                Ok(())
            }
            Op::DrainCaches => {
                self.alloc.drain_caches();
                prop_assert_eq!(self.alloc.stats().cached_pages, [0; NR_FREETYPES]);
                Ok(())
            }
        }
    }

    fn alloc_step(
        &mut self,
        cpu: usize,
        order: u32,
        ft: Freetype,
        flags: AllocFlags,
    ) -> Result<(), TestCaseError> {
        let before = self.everything();
        let protect_faults = self.sim().pending_protect_failures();
        let zero_pending = self.sim().pending_zero_failures() > 0;
        let zero_fault = flags.contains(AllocFlags::ZERO) && zero_pending;
        let result = self.alloc.alloc(cpu, order, ft, flags);
        // Compaction may have moved live blocks to make room.
        self.follow_moves();
        if order > MAX_ORDER {
            prop_assert_eq!(result, Err(AllocError::InvalidOrder(order)));
            prop_assert!(
                self.everything() == before,
                "a refused allocation changed something"
            );
            return Ok(());
        }
        let after = self.alloc.stats();
        let free = &before.stats.free_blocks;
        // What the model allows: a freetype with a free block of the
        // order serves it without converting; two free runs of whole
        // pageblocks elsewhere survive a reserve refill (which converts at
        // most one), so converting cannot run out.
        let own = (order..=MAX_ORDER).any(|k| free[ft.index()][k as usize] > 0);
        let own_small = (order..PAGEBLOCK_ORDER).any(|k| free[ft.index()][k as usize] > 0);
        // The conversion watermark: an allocation other than a page table
        // may not bring whole free pageblocks below it.
        let whole_before = before.stats.whole_free_pageblocks();
        let watermark = self.watermark as u64;
        let consumed = 1u64 << order.saturating_sub(PAGEBLOCK_ORDER);
        // (A conversion may refill the reserve first, which can take one.)
        let watermarked = ft != PT && watermark > 0 && whole_before < watermark + consumed + 1;
        // Below a pageblock, a sibling of the same protection lends a block.
        let stealable = ft != PT
            && order < PAGEBLOCK_ORDER
            && Freetype::all()
                .filter(|&other| other != ft && other.protection == ft.protection)
                .any(|other| (order..PAGEBLOCK_ORDER).any(|k| free[other.index()][k as usize] > 0));
        let need = order.max(PAGEBLOCK_ORDER);
        let elsewhere: u64 = Freetype::all()
            .filter(|&other| other != ft)
            .map(|other| {
                (need..=MAX_ORDER)
                    .map(|k| free[other.index()][k as usize])
                    .sum::<u64>()
            })
            .sum();
        match result {
            Ok(pfn) => {
                // The injected fault may fire on a conversion's wipe on the
                // way (the conversion then fails, and a page-table page can
                // still come from the reserve); but it must fire.
                let zero_failed =
                    self.sim().counters().zero_failures > before.counters.zero_failures;
                prop_assert!(
                    !zero_fault || zero_failed,
                    "zeroing was made to fail, yet the allocation succeeded"
                );
                prop_assert!(
                    pfn.0.is_multiple_of(1 << order),
                    "block {:#x} not aligned to order {}",
                    pfn.0,
                    order
                );
                let end = pfn.0 + (1 << order);
                for &(other, other_order, _) in &self.live {
                    prop_assert!(
                        end <= other.0 || other.0 + (1 << other_order) <= pfn.0,
                        "[{:#x}, order {}) overlaps live block {:#x}: handed out twice",
                        pfn.0,
                        order,
                        other.0
                    );
                }
                self.push_live(pfn, order, ft);
                if ft != PT && watermark > 0 {
                    let whole_after = after.whole_free_pageblocks();
                    prop_assert!(
                        whole_after >= whole_before.min(watermark),
                        "a {} allocation of order {} took whole pageblocks below the \
                         watermark: {} -> {} (watermark {})",
                        ft,
                        order,
                        whole_before,
                        whole_after,
                        watermark
                    );
                }
            }
            Err(error) => {
                prop_assert_eq!(
                    after.failed_allocations,
                    before.stats.failed_allocations + 1
                );
                let no_block = flags.contains(AllocFlags::NO_BLOCK);
                match error {
                    AllocError::Backend(DirectMapError::Failed) => {
                        // A protect fault only matters to a call that converts,
                        // and so does a zero fault when the conversion wipes
                        // frames leaving `Unmapped`.
                        prop_assert!(
                            zero_fault || (!own && (protect_faults > 0 || zero_pending)),
                            "backend failed with no fault injected"
                        );
                    }
                    _ if (own_small || (own && !watermarked) || stealable) && !zero_fault => {
                        prop_assert!(
                            false,
                            "{error:?} for order {order} {ft} with a free block of it"
                        )
                    }
                    AllocError::WouldBlock => prop_assert!(no_block, "WouldBlock without NO_BLOCK"),
                    AllocError::ReserveExhausted => {
                        // The single-page fallback inside a 1 GiB mapping
                        // splits twice (1 GiB -> 2 MiB -> 4 KiB): one page
                        // left is not enough, and goes back unused.
                        prop_assert!(
                            after.reserve_level < 2,
                            "ReserveExhausted with {} pages in the reserve",
                            after.reserve_level
                        );
                    }
                    AllocError::OutOfMemory => {
                        prop_assert!(
                            !no_block && (elsewhere < 2 || watermarked),
                            "OutOfMemory with {elsewhere} free runs to convert"
                        );
                    }
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
        Ok(())
    }

    fn bad_free(&mut self, bad: &Bad) -> Result<(), TestCaseError> {
        let live_pick =
            |pick: &Index| (!self.live.is_empty()).then(|| self.live[pick.index(self.live.len())]);
        let (cpu, pfn, order, expected) = match bad {
            Bad::DoubleFree(pick) => {
                if self.freed.is_empty() {
                    return Ok(());
                }
                let (pfn, order) = self.freed[pick.index(self.freed.len())];
                if self.is_live_head(pfn) {
                    return Ok(());
                }
                (0, pfn, order, FreeError::NotAllocated(pfn))
            }
            Bad::NeverAllocated(pick) => {
                let pfn = self.managed_frame(pick.index(self.managed_frames() as usize) as u64);
                if self.is_live_head(pfn) {
                    return Ok(());
                }
                (1, pfn, 0, FreeError::NotAllocated(pfn))
            }
            Bad::Hole(pick) => {
                let pfn = Pfn(pick.index(self.alloc.frames() as usize) as u64);
                if self
                    .managed
                    .iter()
                    .any(|&(start, end)| (start..end).contains(&pfn))
                {
                    return Ok(());
                }
                (2, pfn, 0, FreeError::NotAllocated(pfn))
            }
            Bad::WrongOrder(pick, delta) => {
                let Some((pfn, allocated, _)) = live_pick(pick) else {
                    return Ok(());
                };
                let given = (allocated + 1 + delta) % (MAX_ORDER + 1);
                (
                    3,
                    pfn,
                    given,
                    FreeError::WrongOrder {
                        pfn,
                        allocated,
                        given,
                    },
                )
            }
            Bad::OutOfRange(offset) => {
                let pfn = Pfn(self.alloc.frames() + offset);
                (0, pfn, 0, FreeError::OutOfRange(pfn))
            }
            Bad::InvalidOrder(order) => {
                let pfn = self.live.first().map_or(Pfn(0), |block| block.0);
                (0, pfn, *order, FreeError::InvalidOrder(*order))
            }
            Bad::InvalidCpu(cpu, pick) => {
                let (pfn, order, _) = live_pick(pick).unwrap_or((Pfn(0), 0, KERNEL));
                (*cpu, pfn, order, FreeError::InvalidCpu(*cpu))
            }
        };
        let before = self.everything();
        prop_assert_eq!(self.alloc.free(cpu, pfn, order), Err(expected));
        prop_assert!(
            self.everything() == before,
            "refused free of {:#x} changed something",
            pfn.0
        );
        Ok(())
    }

    /// Frees everything, drains the caches, and checks that all memory is
    /// back: free, reserve, or direct-map tables.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.sim().clear_faults();
        self.follow_moves();
        while let Some((pfn, order, _)) = self.live.pop() {
            self.owner.release(pfn);
            prop_assert_eq!(self.alloc.free(0, pfn, order), Ok(()));
        }
        self.alloc.drain_caches();
        self.check()?;
        let stats = self.alloc.stats();
        prop_assert_eq!(stats.allocations, stats.frees);
        let free: u64 = Freetype::all().map(|ft| stats.free_pages(ft)).sum();
        let tables = self.sim().page_tables().len() as u64;
        prop_assert_eq!(free + stats.reserve_level + tables, self.managed_frames());
        Ok(())
    }
}

fn run(layout: &Layout, ops: &[Op]) -> Result<(), TestCaseError> {
    let meta = meta(layout.frames);
    let owner = SimMover::new();
    let mut world = World::new(&meta, &owner, layout);
    world.check()?;
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
    #![proptest_config(proptest_config(24))]

    /// 16-64 MiB from frame 0, 1 GiB or 2 MiB largest pages.
    #[test]
    fn dense_memory_matches_the_model(layout in dense_layout(), ops in prop::collection::vec(op(), 1..120)) {
        run(&layout, &ops)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// Two 1 GiB regions, holes, partial pageblocks.
    #[test]
    fn sparse_memory_matches_the_model(layout in sparse_layout(), ops in prop::collection::vec(op(), 1..120)) {
        run(&layout, &ops)?;
    }
}

// ---- deterministic scenarios ----

fn layout(frames: u64, ranges: Vec<(Pfn, Pfn, Freetype)>, reserve_target: usize) -> Layout {
    Layout {
        frames,
        largest: LargestPage::Giga,
        ranges,
        reserve_target,
        watermark: 0,
        fallback: false,
        compaction: false,
    }
}

fn managed(layout: &Layout) -> Vec<(Pfn, Pfn)> {
    layout
        .ranges
        .iter()
        .map(|&(start, end, _)| (start, end))
        .collect()
}

/// Counters that a failed call may change: the failure counts.
fn without_failures(counters: SimCounters) -> SimCounters {
    SimCounters {
        protect_failures: 0,
        no_split_page: 0,
        ..counters
    }
}

/// The reserve bound: a 4 KiB page inside an unsplit 1 GiB mapping costs
/// exactly two reserve pages (a directory and a table), another page in
/// the same 2 MiB none, and one in another 2 MiB of that gigabyte one.
#[test]
fn protect_page_in_an_unsplit_gigabyte_takes_exactly_two_reserve_pages() {
    // Managed memory in the first gigabyte; the page to protect (an early
    // page table, say) in the second, still one 1 GiB mapping.
    let layout = layout(GIB + 4 * MIB, vec![(Pfn(0), Pfn(16 * MIB), KERNEL)], 4);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    alloc.refill_reserve().unwrap();
    assert_eq!(alloc.stats().reserve_level, 4);
    let sim = alloc.backend();
    let reserve_before: Vec<Pfn> = alloc.reserve_frames().to_vec();
    let tables_before = sim.page_tables();
    let taken_before = alloc.stats().reserve_taken;

    let page = Pfn(GIB + 1000);
    let report = alloc
        .with_split_reserve(|sim, pages| sim.protect_page(page, PT.protection, pages))
        .unwrap();
    assert_eq!(
        report,
        ProtectReport {
            splits_1g: 1,
            splits_2m: 1
        }
    );
    let stats = alloc.stats();
    assert_eq!(stats.reserve_level, 2);
    assert_eq!(stats.reserve_taken - taken_before, 2);
    let new: Vec<(Pfn, TableLevel)> = sim
        .page_tables()
        .into_iter()
        .filter(|t| !tables_before.contains(t))
        .collect();
    assert_eq!(
        new.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![TableLevel::Directory, TableLevel::Table]
    );
    for (pfn, _) in &new {
        assert!(
            reserve_before.contains(pfn),
            "split page {pfn:?} did not come from the reserve"
        );
        assert_eq!(
            alloc.frame_info(*pfn).unwrap().state,
            FrameState::DirectMapTable
        );
    }
    assert_eq!(sim.protection_of(page), PT.protection);
    assert_eq!(sim.protection_of(Pfn(page.0 - 1)), Protection::Mapped);
    assert_eq!(sim.protection_of(Pfn(page.0 + 1)), Protection::Mapped);
    sim::check(&alloc, PT, &managed(&layout), &[]).unwrap();

    let same_2m = alloc
        .with_split_reserve(|sim, pages| sim.protect_page(Pfn(page.0 + 1), PT.protection, pages));
    assert_eq!(same_2m, Ok(ProtectReport::default()));
    assert_eq!(alloc.stats().reserve_level, 2);
    let other_2m =
        alloc.with_split_reserve(|sim, pages| sim.protect_page(Pfn(GIB + 5), PT.protection, pages));
    assert_eq!(
        other_2m,
        Ok(ProtectReport {
            splits_1g: 0,
            splits_2m: 1
        })
    );
    assert_eq!(alloc.stats().reserve_level, 1);
    sim::check(&alloc, PT, &managed(&layout), &[]).unwrap();
}

/// With fewer than two reserve pages the same change fails cleanly: the
/// map, the reserve and every counter are as they were.
#[test]
fn protect_page_with_fewer_than_two_reserve_pages_fails_and_changes_nothing() {
    for reserve_target in [0, 1] {
        let layout = layout(
            GIB + 4 * MIB,
            vec![(Pfn(0), Pfn(16 * MIB), KERNEL)],
            reserve_target,
        );
        let meta = meta(layout.frames);
        let alloc = new_allocator(&meta, &layout);
        alloc.refill_reserve().unwrap();
        assert_eq!(alloc.stats().reserve_level, reserve_target as u64);
        let sim = alloc.backend();
        let (stats, map, counters, reserve) = (
            alloc.stats(),
            sim.snapshot(),
            sim.counters(),
            alloc.reserve_frames(),
        );

        let result = alloc.with_split_reserve(|sim, pages| {
            sim.protect_page(Pfn(GIB + 1000), PT.protection, pages)
        });
        assert_eq!(result, Err(DirectMapError::NoSplitPage));
        assert!(sim.snapshot() == map, "the map changed");
        assert_eq!(alloc.stats(), stats);
        assert_eq!(alloc.reserve_frames(), reserve);
        assert_eq!(without_failures(sim.counters()), without_failures(counters));
        assert_eq!(sim.counters().no_split_page, counters.no_split_page + 1);
        assert_eq!(sim.protection_of(Pfn(GIB + 1000)), Protection::Mapped);
        sim::check(&alloc, PT, &managed(&layout), &[]).unwrap();
    }
}

/// No recursion: conversions that split never re-enter the backend (the
/// simulator flags any backend call made from inside another on the same
/// thread), and every split page is either one of the converted block's
/// own frames (a conversion to the page-table freetype) or was in the
/// reserve when the allocation started.
#[test]
fn splitting_conversions_never_reenter_and_take_pages_from_the_reserve_or_the_block() {
    let ranges = vec![
        (Pfn(0), Pfn(16 * MIB), KERNEL),
        (Pfn(GIB), Pfn(GIB + 16 * MIB), KERNEL),
    ];
    let layout = layout(GIB + 16 * MIB, ranges, 4);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let sim = alloc.backend();
    let mut live = Vec::new();
    let plan = [
        (SECRET, 0),
        (KEY2, 3),
        (PT, 0),
        (SECRET, 9),
        (PT, 9),
        (KEY2, 0),
        (USER, 2),
    ];
    for (step, &(ft, order)) in plan.iter().cycle().take(21).enumerate() {
        // Full now, so the allocation's own refill (before it splits) adds
        // nothing and this is the reserve its split can draw on.
        alloc.refill_reserve().unwrap();
        let reserve: HashSet<Pfn> = alloc.reserve_frames().into_iter().collect();
        let tables_before = sim.table_records().len();
        let pfn = alloc
            .alloc(step % CPUS, order, ft, AllocFlags::ZERO)
            .unwrap();
        live.push((pfn, order, ft));
        for table in &sim.table_records()[tables_before..] {
            if table.inside_range {
                assert_eq!(table.level, TableLevel::Directory);
                let info = alloc.frame_info(table.pfn).unwrap();
                assert_eq!(
                    info.pageblock_freetype,
                    Some(PT),
                    "self-hosted split outside a page-table conversion"
                );
            } else {
                assert!(
                    reserve.contains(&table.pfn),
                    "split page {:?} came from neither reserve nor block",
                    table.pfn
                );
            }
        }
        assert_eq!(sim.counters().reentries, 0);
        sim::check(&alloc, PT, &managed(&layout), &live).unwrap();
    }
    let tables = sim.table_records();
    assert_eq!(
        sim.counters().splits_1g,
        2,
        "both gigabytes split: {tables:?}"
    );
    assert!(
        tables.iter().any(|t| t.inside_range),
        "no self-hosted split: {tables:?}"
    );
    assert!(
        tables.iter().any(|t| !t.inside_range),
        "no reserve-hosted split: {tables:?}"
    );
    assert!(!sim.busy());
}

/// The detector the test above relies on: a split-page source that calls
/// back into the backend is caught and recorded as a violation.
#[test]
fn the_simulator_catches_a_split_path_that_calls_back() {
    struct CallsBack<'a, 'b> {
        sim: &'a SimDirectMap,
        inner: &'a mut (dyn SplitPages + 'b),
        called: bool,
    }
    impl SplitPages for CallsBack<'_, '_> {
        fn take(&mut self) -> Option<Pfn> {
            if !self.called {
                self.called = true;
                let refused = self.sim.zero(Pfn(0), 0, Protection::Mapped);
                assert_eq!(refused, Err(DirectMapError::Failed));
            }
            self.inner.take()
        }
    }
    let layout = layout(GIB + 4 * MIB, vec![(Pfn(0), Pfn(16 * MIB), KERNEL)], 4);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    alloc.refill_reserve().unwrap();
    let result = alloc.with_split_reserve(|sim, pages| {
        sim.protect_page(
            Pfn(GIB + 1000),
            PT.protection,
            &mut CallsBack {
                sim,
                inner: pages,
                called: false,
            },
        )
    });
    assert_eq!(
        result,
        Ok(ProtectReport {
            splits_1g: 1,
            splits_2m: 1
        })
    );
    let sim = alloc.backend();
    assert_eq!(sim.counters().reentries, 1);
    assert!(
        sim.violations()[0].starts_with("re-entered: zero called from inside protect_page"),
        "{:?}",
        sim.violations()
    );
    assert!(
        sim::check(&alloc, PT, &managed(&layout), &[])
            .unwrap_err()
            .starts_with("rule 6:")
    );
}

/// Exhaustion: with the reserve kept empty, a conversion that must split a
/// 1 GiB mapping fails with `ReserveExhausted` and leaves the map, the
/// allocator and every counter (but the failure counts) as they were.
#[test]
fn an_empty_reserve_fails_a_splitting_conversion_and_changes_nothing() {
    let layout = layout(8 * 512, vec![(Pfn(0), Pfn(8 * 512), KERNEL)], 0);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let sim = alloc.backend();
    for (ft, order) in [(SECRET, 0), (KEY2, 3), (SECRET, 9), (PT_MOVABLE, 10)] {
        let (stats, map, counters) = (alloc.stats(), sim.snapshot(), sim.counters());
        assert_eq!(
            alloc.alloc(1, order, ft, AllocFlags::empty()),
            Err(AllocError::ReserveExhausted)
        );
        assert!(sim.snapshot() == map, "the map changed");
        assert_eq!(without_failures(sim.counters()), without_failures(counters));
        assert_eq!(sim.counters().no_split_page, counters.no_split_page + 1);
        let mut after = alloc.stats();
        assert_eq!(after.failed_allocations, stats.failed_allocations + 1);
        after.failed_allocations = stats.failed_allocations;
        assert_eq!(after, stats);
        sim::check(&alloc, PT, &managed(&layout), &[]).unwrap();
    }
    // A page-table conversion hosts its own split; after it nothing needs
    // splitting in this gigabyte, so the others go through.
    let table_page = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let secret = alloc.alloc(0, 0, SECRET, AllocFlags::ZERO).unwrap();
    assert_eq!(sim.counters().splits_1g, 1);
    let live = [(table_page, 0, PT), (secret, 0, SECRET)];
    sim::check(&alloc, PT, &managed(&layout), &live).unwrap();
}

/// Page-table churn: 20k page-table pages interleaved with mapped and
/// unmapped allocations cost at most one flush per 512 page-table pages,
/// and never split a 2 MiB mapping.
#[test]
fn page_table_churn_flushes_once_per_pageblock_and_never_splits_2m() {
    const PT_PAGES: usize = 20_000;
    const SECRET_PAGES: usize = PT_PAGES / 8;
    let layout = layout(160 * MIB, vec![(Pfn(0), Pfn(160 * MIB), KERNEL)], 8);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let sim = alloc.backend();
    let mut live = Vec::new();
    let mut kernel: Vec<(Pfn, u32)> = Vec::new();
    for i in 0..PT_PAGES {
        let cpu = i % CPUS;
        live.push((alloc.alloc(cpu, 0, PT, AllocFlags::ZERO).unwrap(), 0, PT));
        if i % 8 == 0 {
            live.push((
                alloc.alloc(cpu, 0, SECRET, AllocFlags::empty()).unwrap(),
                0,
                SECRET,
            ));
        }
        if i % 4 == 0 {
            let order = (i % 3) as u32;
            kernel.push((
                alloc
                    .alloc(cpu, order, KERNEL, AllocFlags::empty())
                    .unwrap(),
                order,
            ));
            if kernel.len() > 200 {
                let (pfn, order) = kernel.swap_remove(i % kernel.len());
                alloc.free(cpu, pfn, order).unwrap();
            }
        }
        if i % 5000 == 4999 {
            let mut all = live.clone();
            all.extend(kernel.iter().map(|&(pfn, order)| (pfn, order, KERNEL)));
            sim::check(&alloc, PT, &managed(&layout), &all).unwrap();
        }
    }
    let stats = alloc.stats();
    let to_pt: u64 = Freetype::all().map(|from| stats.converted(from, PT)).sum();
    let to_secret: u64 = Freetype::all()
        .map(|from| stats.converted(from, SECRET))
        .sum();
    // Each conversion here takes permissions away: one flush each.
    assert_eq!(stats.flushes_local, stats.conversion_batches);
    assert_eq!(
        stats.conversion_batches,
        to_pt + to_secret,
        "one pageblock per batch"
    );
    // 512 pages a pageblock, less the one split table, plus what the
    // per-CPU caches and the reserve hold back.
    let pt_bound = (PT_PAGES + RESERVE_CAPACITY + CPUS * CACHE_CAPACITY).div_ceil(511) as u64;
    assert!(
        to_pt <= pt_bound,
        "{to_pt} page-table flushes for {PT_PAGES} pages (bound {pt_bound})"
    );
    assert!(
        to_pt * 512 <= (PT_PAGES as u64 + 512),
        "more than one flush per 512 page-table pages: {to_pt}"
    );
    assert!(to_secret <= (SECRET_PAGES + CPUS * CACHE_CAPACITY).div_ceil(512) as u64);
    assert_eq!(sim.counters().splits_2m, 0);
    assert_eq!(stats.splits_2m, 0);
    assert_eq!(sim.counters().splits_1g, 1);
    println!(
        "{PT_PAGES} page-table pages: {to_pt} PT batches, {to_secret} secret batches, {} flushes ({} remote)",
        stats.flushes_local, stats.flushes_remote
    );
    let mut all = live;
    all.extend(kernel.iter().map(|&(pfn, order)| (pfn, order, KERNEL)));
    sim::check(&alloc, PT, &managed(&layout), &all).unwrap();
}

/// A page-table request of a whole pageblock (or more) whose conversion
/// must split a 1 GiB mapping: the conversion puts the split's table in
/// the block's first frame, leaving it one frame short of the order
/// asked, so the allocator must convert a second pageblock (which cannot
/// split again) rather than fail.
#[test]
fn a_self_hosted_split_does_not_fail_a_pageblock_sized_page_table_request() {
    let layout = layout(16 * 512, vec![(Pfn(0), Pfn(16 * 512), KERNEL)], 4);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let before = alloc.stats();
    let result = alloc.alloc(0, 9, PT, AllocFlags::empty());
    if result.is_err() {
        let after = alloc.stats();
        assert_eq!(
            after.pageblocks, before.pageblocks,
            "the failed call converted a pageblock"
        );
    }
    let pfn = result.expect("16 free pageblocks, and an order-9 page-table request fails");
    sim::check(&alloc, PT, &managed(&layout), &[(pfn, 9, PT)]).unwrap();
}

/// A `USE_RESERVE | ZERO` page-table allocation served from the split
/// reserve whose zeroing fails: the page must go back to the reserve, not
/// to the CPU's cache, so the failed call leaves the reserve as it was.
#[test]
fn a_failed_zero_returns_a_reserve_page_to_the_reserve() {
    // Two pageblocks, no 1 GiB split: one becomes page tables (and the
    // reserve), then every page of both is handed out.
    let layout = Layout {
        largest: LargestPage::Mega,
        ..layout(2 * 512, vec![(Pfn(0), Pfn(2 * 512), KERNEL)], 4)
    };
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    alloc.refill_reserve().unwrap();
    let mut live = Vec::new();
    for ft in [PT, KERNEL] {
        while let Ok(pfn) = alloc.alloc(0, 0, ft, AllocFlags::empty()) {
            live.push((pfn, 0, ft));
        }
    }
    assert_eq!(alloc.stats().reserve_level, 4);
    alloc.backend().fail_next_zeros(1);
    let result = alloc.alloc(0, 0, PT, AllocFlags::USE_RESERVE | AllocFlags::ZERO);
    assert_eq!(result, Err(AllocError::Backend(DirectMapError::Failed)));
    sim::check(&alloc, PT, &managed(&layout), &live).unwrap();
    let stats = alloc.stats();
    assert_eq!(
        stats.cached_pages[PT.index()],
        0,
        "the reserve page went to the CPU cache"
    );
    assert_eq!(
        stats.reserve_level, 4,
        "a failed call took a page from the reserve"
    );
}

/// Sparse memory: partial pageblocks never convert, both gigabytes split
/// once each, and everything comes back.
#[test]
fn partial_pageblocks_keep_their_freetype_and_each_gigabyte_splits_once() {
    let layout = layout(GIB + 34 * MIB, sparse_ranges(), 8);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let sim = alloc.backend();
    let partial: Vec<(Pfn, Freetype)> = vec![
        (Pfn(0), KERNEL),
        (Pfn(16 * MIB), KERNEL),
        (Pfn(112 * MIB), USER),
        (Pfn(128 * MIB), USER),
        (Pfn(GIB + 30 * MIB), USER),
        (Pfn(GIB + 32 * MIB), USER),
    ];
    let mut live = Vec::new();
    // Take everything, in turns, until nothing converts any more.
    let mut failures = 0;
    let mut turn = 0;
    while failures < FREETYPES.len() * 2 {
        let ft = FREETYPES[turn % FREETYPES.len()];
        turn += 1;
        match alloc.alloc(turn % CPUS, (turn % 4) as u32, ft, AllocFlags::empty()) {
            Ok(pfn) => {
                live.push((pfn, (turn % 4) as u32, ft));
                failures = 0;
            }
            Err(AllocError::OutOfMemory) => failures += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    sim::check(&alloc, PT, &managed(&layout), &live).unwrap();
    for &(pageblock, ft) in &partial {
        assert_eq!(
            alloc.frame_info(pageblock).unwrap().pageblock_freetype,
            Some(ft),
            "{pageblock:?}"
        );
    }
    assert_eq!(sim.counters().splits_1g, 2);
    for (pfn, order, _) in live.drain(..) {
        alloc.free(3, pfn, order).unwrap();
    }
    alloc.drain_caches();
    sim::check(&alloc, PT, &managed(&layout), &[]).unwrap();
}

/// The checker has teeth: each corruption below is reported with its rule.
#[test]
fn the_checker_names_broken_rules() {
    let layout = layout(16 * 512, vec![(Pfn(0), Pfn(16 * 512), KERNEL)], 4);
    let meta = meta(layout.frames);
    let alloc = new_allocator(&meta, &layout);
    let managed = managed(&layout);
    let block = alloc.alloc(0, 2, KERNEL, AllocFlags::empty()).unwrap();
    let page = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let live = [(block, 2, KERNEL), (page, 0, PT)];
    sim::check(&alloc, PT, &managed, &live).unwrap();

    let forgotten = sim::check(&alloc, PT, &managed, &live[1..]).unwrap_err();
    assert!(forgotten.starts_with("rule 1:"), "{forgotten}");
    let twice = [live[0], live[1], (Pfn(block.0 + 1), 0, KERNEL)];
    let twice = sim::check(&alloc, PT, &managed, &twice).unwrap_err();
    assert!(
        twice.starts_with("rule 1:") && twice.contains("overlap"),
        "{twice}"
    );
    let wrong_type = [(block, 2, USER), live[1]];
    assert!(
        sim::check(&alloc, PT, &managed, &wrong_type)
            .unwrap_err()
            .starts_with("rule 1:")
    );

    // Change a free kernel pageblock's protection behind the allocator's back.
    struct NoPages;
    impl SplitPages for NoPages {
        fn take(&mut self) -> Option<Pfn> {
            None
        }
    }
    let free_pageblock = PageblockRange {
        start: Pfn(15 * 512),
        pageblocks: 1,
    };
    let sim = alloc.backend();
    sim.protect(
        free_pageblock,
        Protection::Mapped,
        Protection::Unmapped,
        &mut NoPages,
    )
    .unwrap();
    let unflushed = sim::check(&alloc, PT, &managed, &live).unwrap_err();
    assert!(
        unflushed.starts_with("rule 6:") && unflushed.contains("never flushed"),
        "{unflushed}"
    );
    sim.flush(free_pageblock);
    let behind = sim::check(&alloc, PT, &managed, &live).unwrap_err();
    assert!(
        behind.contains("is mapped unmapped, not mapped"),
        "{behind}"
    );
}
