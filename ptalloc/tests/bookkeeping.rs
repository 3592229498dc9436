//! Exact effects the model test's invariants leave open: which backend
//! calls a conversion makes and in what order, which freetype it takes
//! from, what the counters say, and what `add_memory` records. A backend
//! that records every call (and reports the splits it is told to) makes
//! each of them visible.

use ptalloc::sim::{LargestPage, SimDirectMap};
use ptalloc::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};
const SECRET: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};
const KERNEL_SECRET: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Unmapped,
};

/// Frames per pageblock and per GiB.
const PB: u64 = 512;
const GIB: u64 = 1 << 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Protect {
        range: PageblockRange,
        from: Protection,
        to: Protection,
    },
    Flush(PageblockRange),
    Zero {
        start: Pfn,
        order: u32,
        protection: Protection,
    },
}

/// Records every call. Each `protect` reports the splits in `splits` and
/// takes one split page per split, failing with `NoSplitPage` (and
/// changing nothing) when one is missing. `zero` fails (after recording
/// the call) while `fail_zero` is set.
#[derive(Default)]
struct Recording {
    calls: Mutex<Vec<Call>>,
    splits: Mutex<ProtectReport>,
    split_pages: Mutex<Vec<Pfn>>,
    fail_zero: AtomicBool,
}

impl Recording {
    fn splitting(splits: ProtectReport) -> Self {
        Self {
            splits: Mutex::new(splits),
            ..Self::default()
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn protects(&self) -> Vec<(PageblockRange, Protection, Protection)> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Protect { range, from, to } => Some((range, from, to)),
                _ => None,
            })
            .collect()
    }

    fn zeroes(&self) -> Vec<(Pfn, u32, Protection)> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Zero {
                    start,
                    order,
                    protection,
                } => Some((start, order, protection)),
                _ => None,
            })
            .collect()
    }
}

impl DirectMap for Recording {
    fn protect(
        &self,
        range: PageblockRange,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let splits = *self.splits.lock().unwrap();
        let needed = splits.splits_1g + splits.splits_2m;
        let mut taken = Vec::new();
        for _ in 0..needed {
            taken.push(split_pages.take().ok_or(DirectMapError::NoSplitPage)?);
        }
        self.split_pages.lock().unwrap().extend(taken);
        self.calls
            .lock()
            .unwrap()
            .push(Call::Protect { range, from, to });
        Ok(splits)
    }

    fn protect_frame(
        &self,
        _pfn: Pfn,
        _from: Protection,
        _to: Protection,
        _split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        // This backend cannot protect single frames.
        Err(DirectMapError::Failed)
    }

    fn flush(&self, range: PageblockRange) -> FlushReport {
        self.calls.lock().unwrap().push(Call::Flush(range));
        FlushReport {
            local: 1,
            remote: 2,
        }
    }

    fn zero(&self, start: Pfn, order: u32, protection: Protection) -> Result<(), DirectMapError> {
        self.calls.lock().unwrap().push(Call::Zero {
            start,
            order,
            protection,
        });
        if self.fail_zero.load(Ordering::SeqCst) {
            return Err(DirectMapError::Failed);
        }
        Ok(())
    }
}

fn meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

fn config(reserve_target: usize) -> Config {
    Config {
        page_table: PT,
        reserve_target,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    }
}

fn allocator<D: DirectMap>(
    meta: &[FrameMeta],
    reserve_target: usize,
    backend: D,
) -> PageAllocator<'_, D, 2> {
    PageAllocator::new(meta, Pfn(0), config(reserve_target), backend).unwrap()
}

fn pageblock(start: u64) -> PageblockRange {
    PageblockRange {
        start: Pfn(start),
        pageblocks: 1,
    }
}

#[test]
fn a_frame_number_is_its_address_over_4096() {
    assert_eq!(Pfn(0).addr(), 0);
    assert_eq!(Pfn(1).addr(), 4096);
    assert_eq!(Pfn(0x12345).addr(), 0x1234_5000);
}

// ---- conversions out of `Unmapped` ----

/// Frames leaving `Unmapped` may hold another owner's secrets: each such
/// conversion zeroes the whole pageblock, still unmapped, before it is
/// mapped; one that stays unmapped does not (nothing can see it).
#[test]
fn leaving_unmapped_zeroes_the_pageblock_first_and_staying_unmapped_does_not() {
    let meta = meta(8 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc.add_memory(Pfn(0), Pfn(8 * PB), SECRET).unwrap();

    // Unmapped -> mapped, with no ZERO flag: the conversion alone zeroes.
    let page = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let calls = alloc.backend().calls();
    let start = Pfn(page.0 & !(PB - 1));
    assert_eq!(
        calls,
        [
            Call::Zero {
                start,
                order: 9,
                protection: Protection::Unmapped
            },
            Call::Protect {
                range: pageblock(start.0),
                from: Protection::Unmapped,
                to: Protection::Mapped
            },
        ],
        "adding permissions: zero first, then map, and no flush"
    );

    // Unmapped -> unmapped (another mobility): no protection change, so
    // neither a zero nor a protect.
    let before = alloc.backend().calls().len();
    alloc
        .alloc(0, 9, KERNEL_SECRET, AllocFlags::empty())
        .unwrap();
    assert_eq!(alloc.stats().converted(SECRET, KERNEL_SECRET), 1);
    assert_eq!(&alloc.backend().calls()[before..], []);

    // Unmapped -> key-protected: zeroed too, before the key is applied.
    let before = alloc.backend().calls().len();
    alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let calls = &alloc.backend().calls()[before..];
    assert_eq!(calls.len(), 2, "{calls:?}");
    let Call::Zero {
        start,
        order: 9,
        protection: Protection::Unmapped,
    } = calls[0]
    else {
        panic!("no zero before the page-table conversion: {calls:?}");
    };
    assert_eq!(
        calls[1],
        Call::Protect {
            range: pageblock(start.0),
            from: Protection::Unmapped,
            to: PT.protection
        }
    );
    let stats = alloc.stats();
    assert_eq!(stats.flushes_local, 0);
    assert_eq!(stats.total_conversions(), 3);
    assert_eq!(stats.converted(SECRET, PT), 1);
}

/// Mapped memory holds nothing another owner could not read already: a
/// conversion from it never zeroes (the caller asks with `ZERO`).
#[test]
fn conversions_from_mapped_memory_do_not_zero() {
    let meta = meta(8 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc
        .add_memory(Pfn(0), Pfn(8 * PB), Freetype::KERNEL)
        .unwrap();
    alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    alloc.alloc(0, 9, SECRET, AllocFlags::empty()).unwrap();
    alloc.alloc(0, 9, USER, AllocFlags::empty()).unwrap();
    assert_eq!(alloc.backend().zeroes(), []);
    assert_eq!(alloc.stats().conversion_batches, 3);
}

/// A failed wipe gives the block back to its old freetype and maps nothing.
#[test]
fn a_failed_wipe_maps_nothing_and_keeps_the_block() {
    let meta = meta(2 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc.backend().fail_zero.store(true, Ordering::SeqCst);
    alloc.add_memory(Pfn(0), Pfn(2 * PB), SECRET).unwrap();
    let before = alloc.stats();
    assert_eq!(
        alloc.alloc(0, 3, USER, AllocFlags::empty()),
        Err(AllocError::Backend(DirectMapError::Failed))
    );
    assert_eq!(alloc.backend().zeroes().len(), 1);
    assert_eq!(alloc.backend().protects(), []);
    let after = alloc.stats();
    assert_eq!(after.free_blocks, before.free_blocks);
    assert_eq!(after.pageblocks, before.pageblocks);
    assert_eq!(after.total_conversions(), 0);
}

// ---- splits ----

/// Every split a backend reports is counted, on both paths: a conversion
/// to the page-table freetype (its split pages are the block's first
/// frames) and one to another protection (its pages come from the reserve).
#[test]
fn every_split_the_backend_reports_is_counted() {
    let splits = ProtectReport {
        splits_1g: 1,
        splits_2m: 2,
    };
    let meta = meta(8 * PB);
    let alloc = allocator(&meta, 4, Recording::splitting(splits));
    alloc
        .add_memory(Pfn(0), Pfn(8 * PB), Freetype::KERNEL)
        .unwrap();

    let page = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!((stats.splits_1g, stats.splits_2m), (1, 2));
    assert_eq!(stats.direct_map_tables, 3);
    assert_eq!(stats.reserve_taken, 0);
    let start = page.0 & !(PB - 1);
    let tables = alloc.backend().split_pages.lock().unwrap().clone();
    assert_eq!(tables, [Pfn(start), Pfn(start + 1), Pfn(start + 2)]);
    for table in tables {
        assert_eq!(
            alloc.frame_info(table).unwrap().state,
            FrameState::DirectMapTable
        );
    }

    alloc.alloc(0, 0, SECRET, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!((stats.splits_1g, stats.splits_2m), (2, 4));
    assert_eq!(
        stats.direct_map_tables, 3,
        "reserve pages are not counted here"
    );
    assert_eq!(stats.reserve_taken, 3);
    assert_eq!(stats.reserve_level, 1);

    // The kernel's own single-page changes report theirs the same way.
    let report = alloc
        .with_split_reserve(|_, pages| {
            pages.take().ok_or(DirectMapError::NoSplitPage)?;
            Ok(ProtectReport {
                splits_1g: 0,
                splits_2m: 1,
            })
        })
        .unwrap();
    assert_eq!(report.splits_2m, 1);
    let stats = alloc.stats();
    assert_eq!((stats.splits_1g, stats.splits_2m), (2, 5));
    assert_eq!(stats.reserve_taken, 4);
}

/// On the simulated map the allocator's split counters equal the map's:
/// a 1 GiB split by a page-table conversion, then a 1 GiB and a 2 MiB split
/// for one 4 KiB page in the next gigabyte.
#[test]
fn split_counters_match_the_simulated_map() {
    let meta = meta(GIB + 4 * PB);
    let sim = SimDirectMap::new(GIB + 4 * PB, LargestPage::Giga, 2);
    let alloc = allocator(&meta, 4, sim);
    alloc
        .add_memory(Pfn(0), Pfn(8 * PB), Freetype::KERNEL)
        .unwrap();
    alloc.refill_reserve().unwrap();
    alloc
        .with_split_reserve(|sim, pages| sim.protect_page(Pfn(GIB + 1000), PT.protection, pages))
        .unwrap();
    let (stats, counters) = (alloc.stats(), alloc.backend().counters());
    assert_eq!((counters.splits_1g, counters.splits_2m), (2, 1));
    assert_eq!((stats.splits_1g, stats.splits_2m), (2, 1));
}

// ---- which freetype a conversion takes from ----

/// The source is the freetype with the most free memory (in pages, not in
/// blocks), among those with a block big enough; ties go to the lowest
/// freetype index.
#[test]
fn a_conversion_takes_from_the_freetype_with_most_free_pages() {
    let meta = meta(12 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    // Kernel: one order-10 block (1024 pages). User: three order-9 blocks
    // that cannot merge (1536 pages): fewer pages in one bigger block loses.
    alloc
        .add_memory(Pfn(0), Pfn(2 * PB), Freetype::KERNEL)
        .unwrap();
    for pageblock in [5, 7, 9] {
        alloc
            .add_memory(Pfn(pageblock * PB), Pfn((pageblock + 1) * PB), USER)
            .unwrap();
    }
    alloc.alloc(0, 9, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(
        stats.converted(USER, PT),
        1,
        "{:?}",
        alloc.backend().calls()
    );
    assert_eq!(stats.converted(Freetype::KERNEL, PT), 0);
}

#[test]
fn equal_free_memory_converts_from_the_lowest_freetype_index() {
    let meta = meta(4 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc.add_memory(Pfn(3 * PB), Pfn(4 * PB), USER).unwrap();
    alloc.add_memory(Pfn(0), Pfn(PB), Freetype::KERNEL).unwrap();
    assert!(Freetype::KERNEL.index() < USER.index());
    alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.converted(Freetype::KERNEL, PT), 1);
    assert_eq!(stats.converted(USER, PT), 0);
    assert_eq!(alloc.backend().protects()[0].0, pageblock(0));
}

/// Free pages in partial pageblocks cannot be converted, however many:
/// the source must have a whole free pageblock.
#[test]
fn a_conversion_ignores_freetypes_without_a_whole_free_pageblock() {
    let meta = meta(6 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    // User: 1022 free pages, in two pageblocks each missing a frame.
    alloc
        .add_memory(Pfn(3 * PB + 1), Pfn(4 * PB), USER)
        .unwrap();
    alloc
        .add_memory(Pfn(5 * PB + 1), Pfn(6 * PB), USER)
        .unwrap();
    alloc.add_memory(Pfn(0), Pfn(PB), Freetype::KERNEL).unwrap();
    alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    assert_eq!(alloc.stats().converted(Freetype::KERNEL, PT), 1);
    assert_eq!(
        alloc.alloc(0, 9, SECRET, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    assert_eq!(alloc.stats().converted(USER, SECRET), 0);
}

// ---- merging ----

/// Two free 1 GiB blocks side by side are buddies one order above the
/// largest: they must stay two blocks.
#[test]
fn free_blocks_never_merge_past_the_largest_order() {
    let meta = meta(2 * GIB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc
        .add_memory(Pfn(0), Pfn(2 * GIB), Freetype::KERNEL)
        .unwrap();
    let kernel = Freetype::KERNEL.index();
    assert_eq!(alloc.stats().free_blocks[kernel][MAX_ORDER as usize], 2);
    let first = alloc
        .alloc(0, MAX_ORDER, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let second = alloc
        .alloc(0, MAX_ORDER, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    assert_eq!(first.0.abs_diff(second.0), GIB);
    alloc.free(0, first, MAX_ORDER).unwrap();
    alloc.free(0, second, MAX_ORDER).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.free_blocks[kernel][MAX_ORDER as usize], 2);
    assert_eq!(stats.free_pages(Freetype::KERNEL), 2 * GIB);
}

// ---- pageblock records across several `add_memory` calls ----

/// A pageblock gets its freetype, and is counted, when its first frames
/// are given; later pieces of it add frames, not pageblocks. Pageblocks
/// given in any order are each recorded, the short last one too.
#[test]
fn add_memory_records_each_pageblock_once_across_calls() {
    let frames = 6 * PB + 100;
    let meta = meta(frames);
    let alloc = allocator(&meta, 0, Recording::default());
    // Later pageblocks first.
    alloc
        .add_memory(Pfn(2 * PB), Pfn(3 * PB), Freetype::KERNEL)
        .unwrap();
    alloc.add_memory(Pfn(PB), Pfn(2 * PB), USER).unwrap();
    // Pageblock 0 in two pieces.
    alloc.add_memory(Pfn(0), Pfn(100), USER).unwrap();
    alloc.add_memory(Pfn(100), Pfn(PB), USER).unwrap();
    // A range from the middle of pageblock 3 to the middle of pageblock 5,
    // then the start of 3 and the rest of 5.
    alloc
        .add_memory(Pfn(3 * PB + 200), Pfn(5 * PB + 10), SECRET)
        .unwrap();
    alloc
        .add_memory(Pfn(3 * PB), Pfn(3 * PB + 200), SECRET)
        .unwrap();
    alloc
        .add_memory(Pfn(5 * PB + 10), Pfn(6 * PB), SECRET)
        .unwrap();
    // The short last pageblock, in two pieces.
    alloc
        .add_memory(Pfn(6 * PB + 50), Pfn(frames), KERNEL_SECRET)
        .unwrap();
    alloc
        .add_memory(Pfn(6 * PB), Pfn(6 * PB + 50), KERNEL_SECRET)
        .unwrap();

    let stats = alloc.stats();
    assert_eq!(stats.pageblocks[USER.index()], 2);
    assert_eq!(stats.pageblocks[Freetype::KERNEL.index()], 1);
    assert_eq!(stats.pageblocks[SECRET.index()], 3);
    assert_eq!(stats.pageblocks[KERNEL_SECRET.index()], 1);
    assert_eq!(stats.pageblocks.iter().sum::<u64>(), 7);
    for (pageblock, ft) in [
        (0, USER),
        (1, USER),
        (2, Freetype::KERNEL),
        (3, SECRET),
        (4, SECRET),
        (5, SECRET),
        (6, KERNEL_SECRET),
    ] {
        for frame in [pageblock * PB, pageblock * PB + 99] {
            let info = alloc.frame_info(Pfn(frame)).unwrap();
            assert_eq!(info.pageblock_freetype, Some(ft), "frame {frame:#x}");
        }
    }
    assert_eq!(stats.free_pages(USER), 2 * PB);
    assert_eq!(stats.free_pages(SECRET), 3 * PB);
    assert_eq!(stats.free_pages(KERNEL_SECRET), 100);
    // Whole and merged: pageblocks 0 and 1 are one order-10 block.
    assert_eq!(stats.free_blocks[USER.index()][10], 1);

    // Another freetype in a pageblock given before is refused.
    let meta = Vec::from_iter((0..2 * PB).map(|_| FrameMeta::new()));
    let alloc = allocator(&meta, 0, Recording::default());
    alloc
        .add_memory(Pfn(PB + 100), Pfn(PB + 110), USER)
        .unwrap();
    assert_eq!(
        alloc.add_memory(Pfn(PB + 10), Pfn(PB + 20), SECRET),
        Err(InitError::MixedPageblock(Pfn(PB)))
    );
    assert_eq!(
        alloc.add_memory(Pfn(0), Pfn(PB + 20), SECRET),
        Err(InitError::MixedPageblock(Pfn(PB)))
    );
    alloc.add_memory(Pfn(0), Pfn(PB), SECRET).unwrap();
    alloc.add_memory(Pfn(PB), Pfn(PB + 100), USER).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.pageblocks[USER.index()], 1);
    assert_eq!(stats.pageblocks[SECRET.index()], 1);
}

// ---- the split reserve's counters ----

/// Level, refills, pages taken and the low-water mark, through fills,
/// conversions that split, the kernel's own splits, a failed split, and
/// `USE_RESERVE` allocations.
#[test]
fn the_reserve_counts_its_level_refills_takes_and_low_water() {
    let splits = ProtectReport {
        splits_1g: 1,
        splits_2m: 0,
    };
    let meta = meta(8 * PB);
    let alloc = allocator(&meta, 4, Recording::splitting(splits));
    alloc
        .add_memory(Pfn(0), Pfn(8 * PB), Freetype::KERNEL)
        .unwrap();
    let counters = |alloc: &PageAllocator<'_, Recording, 2>| {
        let stats = alloc.stats();
        (
            stats.reserve_level,
            stats.reserve_low_water,
            stats.reserve_refills,
            stats.reserve_taken,
        )
    };
    // (level, low-water, refills, taken)
    assert_eq!(counters(&alloc), (0, 0, 0, 0), "no low water before a fill");
    alloc.refill_reserve().unwrap();
    assert_eq!(counters(&alloc), (4, 4, 1, 0));
    alloc.refill_reserve().unwrap();
    assert_eq!(
        counters(&alloc),
        (4, 4, 1, 0),
        "a full reserve adds nothing"
    );

    // A conversion that splits takes one page, after topping up (nothing).
    alloc.alloc(0, 9, SECRET, AllocFlags::empty()).unwrap();
    assert_eq!(counters(&alloc), (3, 3, 1, 1));
    // The next one tops up first, then takes one: the low water stays.
    alloc.alloc(0, 9, SECRET, AllocFlags::empty()).unwrap();
    assert_eq!(counters(&alloc), (3, 3, 2, 2));

    // A kernel split taking two pages.
    alloc
        .with_split_reserve(|_, pages| {
            for _ in 0..2 {
                pages.take().ok_or(DirectMapError::NoSplitPage)?;
            }
            Ok(ProtectReport::default())
        })
        .unwrap();
    assert_eq!(counters(&alloc), (1, 1, 2, 4));
    // A failed one gives its page back and changes no counter.
    let failed = alloc.with_split_reserve(|_, pages| {
        pages.take().ok_or(DirectMapError::NoSplitPage)?;
        Err(DirectMapError::Failed)
    });
    assert_eq!(failed, Err(DirectMapError::Failed));
    assert_eq!(counters(&alloc), (1, 1, 2, 4));
    // A split may take at most MAX_SPLIT_PAGES_PER_CALL pages.
    alloc.refill_reserve().unwrap();
    assert_eq!(counters(&alloc), (4, 1, 3, 4));
    let taken = alloc
        .with_split_reserve(|_, pages| {
            let mut taken = 0;
            while pages.take().is_some() {
                taken += 1;
            }
            assert_eq!(taken, MAX_SPLIT_PAGES_PER_CALL);
            Ok(ProtectReport::default())
        })
        .unwrap();
    assert_eq!(taken, ProtectReport::default());
    assert_eq!(counters(&alloc), (0, 0, 3, 8));

    // USE_RESERVE takes from the reserve only when nothing else is free.
    alloc.refill_reserve().unwrap();
    assert_eq!(counters(&alloc), (4, 0, 4, 8));
    let mut held = Vec::new();
    while let Ok(page) = alloc.alloc(0, 0, PT, AllocFlags::NO_BLOCK) {
        held.push(page);
    }
    let from_reserve = alloc
        .alloc(0, 0, PT, AllocFlags::NO_BLOCK | AllocFlags::USE_RESERVE)
        .unwrap();
    assert!(!held.contains(&from_reserve));
    assert_eq!(counters(&alloc), (3, 0, 4, 9));
    assert_eq!(
        alloc.frame_info(from_reserve).unwrap().state,
        FrameState::AllocatedHead
    );
}

/// A reserve that could never be filled to its target has no low-water
/// mark yet: partial levels before the first fill are not a "low".
#[test]
fn the_low_water_mark_starts_at_the_first_full_reserve() {
    let meta = meta(PB);
    // One pageblock, given as page-table memory, holding fewer free pages
    // than the target once they are handed out.
    let alloc = allocator(&meta, 4, Recording::default());
    alloc.add_memory(Pfn(0), Pfn(PB), PT).unwrap();
    let mut held = Vec::new();
    while held.len() < PB as usize - 2 {
        held.push(alloc.alloc(1, 0, PT, AllocFlags::NO_BLOCK).unwrap());
    }
    alloc.drain_caches();
    assert_eq!(alloc.refill_reserve(), Err(AllocError::OutOfMemory));
    let stats = alloc.stats();
    assert_eq!(stats.reserve_level, 2);
    assert_eq!(stats.reserve_low_water, 0);
    assert_eq!(stats.reserve_refills, 1);
    for page in held.drain(..2) {
        alloc.free(1, page, 0).unwrap();
    }
    alloc.drain_caches();
    alloc.refill_reserve().unwrap();
    let stats = alloc.stats();
    assert_eq!((stats.reserve_level, stats.reserve_low_water), (4, 4));
    assert_eq!(stats.reserve_refills, 2);
}

/// Fault injection: while on, splits see an empty reserve (the pages stay
/// in it); once off, the same conversion goes through.
#[test]
fn an_injected_empty_reserve_refuses_splits_and_keeps_its_pages() {
    let splits = ProtectReport {
        splits_1g: 1,
        splits_2m: 0,
    };
    let meta = meta(8 * PB);
    let alloc = allocator(&meta, 4, Recording::splitting(splits));
    alloc
        .add_memory(Pfn(0), Pfn(8 * PB), Freetype::KERNEL)
        .unwrap();
    alloc.refill_reserve().unwrap();
    let reserve = alloc.reserve_frames();
    assert_eq!(reserve.len(), 4);

    alloc.inject_empty_reserve(true);
    assert_eq!(
        alloc.alloc(0, 9, SECRET, AllocFlags::empty()),
        Err(AllocError::ReserveExhausted)
    );
    assert_eq!(
        alloc.with_split_reserve(|_, pages| {
            pages.take().ok_or(DirectMapError::NoSplitPage)?;
            Ok(ProtectReport::default())
        }),
        Err(DirectMapError::NoSplitPage)
    );
    assert_eq!(alloc.reserve_frames(), reserve);
    assert_eq!(alloc.stats().converted(Freetype::KERNEL, SECRET), 0);

    alloc.inject_empty_reserve(false);
    alloc.alloc(0, 9, SECRET, AllocFlags::empty()).unwrap();
    assert_eq!(alloc.stats().converted(Freetype::KERNEL, SECRET), 1);
    assert_eq!(alloc.stats().reserve_level, 3);
}

// ---- per-CPU caches ----

/// Refills and drains of the per-CPU caches are counted: a refill per
/// batch handed out, a drain when a full cache takes one more page, and
/// one per non-empty cache that `drain_caches` empties.
#[test]
fn cache_refills_and_drains_are_counted() {
    let meta = meta(4 * PB);
    let alloc = allocator(&meta, 0, Recording::default());
    alloc
        .add_memory(Pfn(0), Pfn(4 * PB), Freetype::KERNEL)
        .unwrap();
    let kernel = Freetype::KERNEL.index();
    let pages: Vec<Pfn> = (0..=CACHE_CAPACITY)
        .map(|_| {
            alloc
                .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
                .unwrap()
        })
        .collect();
    let stats = alloc.stats();
    // 65 pages from batches of 32: three refills, 31 pages left cached.
    assert_eq!(stats.cache_refills, 3);
    assert_eq!(stats.cached_pages[kernel], 3 * CACHE_BATCH as u64 - 65);
    assert_eq!(stats.cache_drains, 0);

    // 31 cached + 65 freed is more than the cache holds: one batch drains.
    for &page in &pages {
        alloc.free(0, page, 0).unwrap();
    }
    let stats = alloc.stats();
    assert_eq!(stats.cache_drains, 1);
    assert_eq!(stats.cached_pages[kernel], 96 - CACHE_BATCH as u64);

    // Pages cached on both CPUs: two drains, nothing left cached.
    let page = alloc
        .alloc(1, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.free(1, page, 0).unwrap();
    alloc.drain_caches();
    let stats = alloc.stats();
    assert_eq!(stats.cache_drains, 3);
    assert_eq!(stats.cached_pages[kernel], 0);
    assert_eq!(stats.free_pages(Freetype::KERNEL), 4 * PB);
    alloc.drain_caches();
    assert_eq!(
        alloc.stats().cache_drains,
        3,
        "empty caches are not drained"
    );
}

#[test]
fn a_pageblock_range_covers_512_frames_per_pageblock() {
    let range = PageblockRange {
        start: Pfn(3 * PB),
        pageblocks: 2,
    };
    assert_eq!(range.frames(), 1024);
    assert_eq!(range.end(), Pfn(5 * PB));
}

/// A `USE_RESERVE | ZERO` allocation served from the reserve whose zeroing
/// fails counts as neither an allocation nor a reserve take: only as a
/// failure, with the page back in the reserve.
#[test]
fn a_failed_reserve_allocation_is_counted_as_a_failure_only() {
    let meta = meta(2 * PB);
    let alloc = allocator(&meta, 4, Recording::default());
    alloc.add_memory(Pfn(0), Pfn(2 * PB), PT).unwrap();
    alloc.refill_reserve().unwrap();
    while alloc.alloc(0, 0, PT, AllocFlags::NO_BLOCK).is_ok() {}
    let before = alloc.stats();
    assert_eq!(before.reserve_level, 4);

    alloc.backend().fail_zero.store(true, Ordering::SeqCst);
    let flags = AllocFlags::NO_BLOCK | AllocFlags::USE_RESERVE | AllocFlags::ZERO;
    assert_eq!(
        alloc.alloc(0, 0, PT, flags),
        Err(AllocError::Backend(DirectMapError::Failed))
    );
    let after = alloc.stats();
    assert_eq!(after.allocations, before.allocations);
    assert_eq!(after.reserve_taken, before.reserve_taken);
    assert_eq!(after.reserve_level, 4);
    assert_eq!(after.failed_allocations, before.failed_allocations + 1);

    // The same call with a working zero takes the page and counts it.
    alloc.backend().fail_zero.store(false, Ordering::SeqCst);
    alloc.alloc(0, 0, PT, flags).unwrap();
    let done = alloc.stats();
    assert_eq!(done.allocations, before.allocations + 1);
    assert_eq!(done.reserve_taken, before.reserve_taken + 1);
    assert_eq!(done.reserve_level, 3);
}
