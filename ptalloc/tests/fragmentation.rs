//! Fragmentation behaviours, each on the checking simulator (`ptalloc::sim`)
//! with the invariant checker run after the case: a small block of one
//! mobility is stolen from a sibling of the same protection rather than a
//! whole pageblock broken up, conversions take the smallest fitting source
//! of the target's own protection first, and a per-CPU cache refills from
//! the smallest free blocks first. (An allocation that finds no memory
//! takes back what per-CPU caches hold: `scenarios.rs` and the loom
//! models.) The fragmentation benchmark (`benches/fragmentation.rs`)
//! measures what they add up to.

use ptalloc::sim::{self, LargestPage, SimDirectMap};
use ptalloc::*;

const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};

/// Frames per pageblock.
const PB: u64 = 512;

type Alloc<'m> = PageAllocator<'m, SimDirectMap, 2>;

fn meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

/// All of `meta` as kernel memory from frame 0, on a map of `largest`
/// pages, set up as `config` says.
fn allocator_with(meta: &[FrameMeta], largest: LargestPage, config: Config) -> Alloc<'_> {
    let frames = meta.len() as u64;
    let map = SimDirectMap::new(frames, largest, 2);
    let alloc = Alloc::new(meta, Pfn(0), config, map).expect("set-up");
    alloc
        .add_memory(Pfn(0), Pfn(frames), Freetype::KERNEL)
        .expect("memory");
    alloc
}

/// The same with a split reserve of 4, no watermark, no fallback.
fn allocator(meta: &[FrameMeta], largest: LargestPage) -> Alloc<'_> {
    let config = Config {
        page_table: PT,
        reserve_target: 4,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    allocator_with(meta, largest, config)
}

fn whole_free_pageblocks(alloc: &Alloc<'_>) -> u64 {
    alloc.stats().whole_free_pageblocks()
}

#[test]
fn a_small_block_is_stolen_from_a_sibling_of_the_same_protection() {
    let meta = meta(4 * PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    // One kernel page breaks pageblock 0; three stay whole.
    let kernel = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.drain_caches();
    assert_eq!(whole_free_pageblocks(&alloc), 3);
    // USER has no pageblock: its order-3 block comes out of the kernel's
    // broken pageblock, not out of a whole one converted to USER.
    let user = alloc.alloc(0, 3, USER, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.stolen_blocks, 1);
    assert_eq!(stats.total_conversions(), 0);
    assert_eq!(whole_free_pageblocks(&alloc), 3);
    assert_eq!(user.0 / PB, 0, "the stolen block lies in pageblock 0");
    let info = alloc.frame_info(user).unwrap();
    assert_eq!(
        (info.freetype, info.pageblock_freetype),
        (Some(USER), Some(Freetype::KERNEL))
    );
    let live = [(kernel, 0, Freetype::KERNEL), (user, 3, USER)];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(4 * PB))], &live).unwrap();
    // Freed, it goes home to the kernel's lists and everything merges.
    alloc.free(1, user, 3).unwrap();
    alloc.free(0, kernel, 0).unwrap();
    alloc.drain_caches();
    assert_eq!(alloc.stats().free_pages(Freetype::KERNEL), 4 * PB);
    assert_eq!(alloc.stats().free_pages(USER), 0);
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(4 * PB))], &[]).unwrap();
}

#[test]
fn order_zero_pages_are_stolen_one_at_a_time_never_cached() {
    let meta = meta(2 * PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    let kernel = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    // Take the only whole pageblock left, so USER can only steal.
    let block = alloc
        .alloc(0, 9, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let user = alloc.alloc(1, 0, USER, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.stolen_blocks, 1);
    assert_eq!(
        stats.cached_pages[USER.index()],
        0,
        "a stolen page is not cached"
    );
    let live = [
        (kernel, 0, Freetype::KERNEL),
        (block, 9, Freetype::KERNEL),
        (user, 0, USER),
    ];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(2 * PB))], &live).unwrap();
    // The page-table freetype never steals: it converts, or fails.
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    assert_eq!(alloc.stats().stolen_blocks, 1);
}

#[test]
fn a_conversion_takes_the_smallest_fitting_block_of_its_own_protection_first() {
    // Pageblock 0 is broken by a kernel page; pageblock 1 is free alone;
    // pageblocks 2-3 form a free order-10 block. USER needs a pageblock:
    // it takes pageblock 1 (the exact fit), not half of the order-10 one.
    let meta = meta(4 * PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    let kernel = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.drain_caches();
    let stats = alloc.stats();
    assert_eq!(stats.free_blocks[Freetype::KERNEL.index()][9], 1);
    assert_eq!(stats.free_blocks[Freetype::KERNEL.index()][10], 1);
    let user = alloc.alloc(0, 9, USER, AllocFlags::empty()).unwrap();
    assert_eq!(user, Pfn(PB), "the exact fit, pageblock 1");
    assert_eq!(
        alloc.stats().free_blocks[Freetype::KERNEL.index()][10],
        1,
        "order 10 kept whole"
    );
    let live = [(kernel, 0, Freetype::KERNEL), (user, 9, USER)];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(4 * PB))], &live).unwrap();
}

#[test]
fn a_cache_refill_takes_small_free_blocks_before_breaking_a_pageblock() {
    // Pageblock 0 filled with pairs, every other pair freed: 128 free
    // order-1 blocks that cannot merge. Pageblock 1 stays whole.
    let meta = meta(2 * PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    let pairs: Vec<Pfn> = (0..PB / 2)
        .map(|_| {
            alloc
                .alloc(0, 1, Freetype::KERNEL, AllocFlags::empty())
                .unwrap()
        })
        .collect();
    assert!(
        pairs.iter().all(|pfn| pfn.0 < PB),
        "the pairs fill pageblock 0"
    );
    for pfn in pairs.iter().step_by(2) {
        alloc.free(0, *pfn, 1).unwrap();
    }
    assert_eq!(whole_free_pageblocks(&alloc), 1);
    // A page on CPU 1: its cache refills with 16 of the free pairs (32
    // pages), and pageblock 1 stays whole.
    let page = alloc
        .alloc(1, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let stats = alloc.stats();
    assert!(page.0 < PB, "the page comes from pageblock 0");
    assert_eq!(whole_free_pageblocks(&alloc), 1);
    assert_eq!(stats.free_blocks[Freetype::KERNEL.index()][1], 128 - 16);
    assert_eq!(
        stats.cached_pages[Freetype::KERNEL.index()],
        CACHE_BATCH as u64 - 1
    );
    let mut live: Vec<(Pfn, u32, Freetype)> = pairs
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&pfn| (pfn, 1, Freetype::KERNEL))
        .collect();
    live.push((page, 0, Freetype::KERNEL));
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(2 * PB))], &live).unwrap();
}

/// `frames` frames of kernel memory with the single-page fallback on (and
/// a reserve of 8, no watermark), on a map of 2 MiB pages.
fn allocator_with_fallback(meta: &[FrameMeta]) -> Alloc<'_> {
    let config = Config {
        page_table: PT,
        reserve_target: 8,
        conversion_watermark: 0,
        single_page_fallback: true,
        ..Config::default()
    };
    allocator_with(meta, LargestPage::Mega, config)
}

fn free_frames(alloc: &Alloc<'_>) -> u64 {
    let stats = alloc.stats();
    Freetype::all().map(|ft| stats.free_pages(ft)).sum::<u64>()
        + stats.cached_pages.iter().sum::<u64>()
}

#[test]
fn page_tables_keep_coming_while_every_pageblock_holds_a_live_page() {
    // 64 MiB; the reserve's pageblock, then one live kernel page in every
    // other pageblock. Without the fallback, page tables stop after the
    // reserve's pageblock (504) with 96.7% of memory free.
    const FRAMES: u64 = 64 << 8;
    let meta = meta(FRAMES);
    let alloc = allocator_with_fallback(&meta);
    alloc.refill_reserve().unwrap();
    let all: Vec<Pfn> = std::iter::from_fn(|| {
        alloc
            .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
            .ok()
    })
    .collect();
    let mut live: Vec<(Pfn, u32, Freetype)> = Vec::new();
    for pfn in all {
        if pfn.0 % PB == 0 {
            live.push((pfn, 0, Freetype::KERNEL));
        } else {
            alloc.free(0, pfn, 0).unwrap();
        }
    }
    alloc.drain_caches();
    // No pageblock is whole: the reserve's holds its free page-table
    // pages, every other a live kernel page.
    assert_eq!(whole_free_pageblocks(&alloc), 0);
    let free_tables = alloc.stats().free_pages(PT);
    assert!(
        (500..512).contains(&free_tables),
        "{free_tables} free page-table pages"
    );
    let managed = [(Pfn(0), Pfn(FRAMES))];
    sim::check(&alloc, PT, &managed, &live).unwrap();

    let mut tables = Vec::new();
    let mut splits_early = None;
    let error = loop {
        match alloc.alloc(tables.len() % 2, 0, PT, AllocFlags::ZERO) {
            Ok(pfn) => tables.push(pfn),
            Err(error) => break error,
        }
        if tables.len() as u64 == free_tables + 200 {
            splits_early = Some(alloc.stats().splits_2m);
        }
    };
    // The fallback keeps to pageblocks it split already: the first 200
    // single pages cost one split, not one each.
    assert_eq!(splits_early, Some(1));
    let stats = alloc.stats();
    // Memory really is full: less than a pageblock's worth is free.
    assert_eq!(error, AllocError::OutOfMemory);
    let free = free_frames(&alloc);
    assert!(free < PB, "OutOfMemory with {free} frames free");
    assert!(
        tables.len() as u64 > FRAMES * 9 / 10,
        "only {} page tables",
        tables.len()
    );
    assert!(stats.single_page_fallbacks > 0);
    assert_eq!(stats.single_pages_live, stats.single_page_fallbacks);
    // Every page table is protected, on every frame (the checker compares
    // each frame's protection in the map with its block's freetype).
    live.extend(tables.iter().map(|&pfn| (pfn, 0, PT)));
    sim::check(&alloc, PT, &managed, &live).unwrap();

    // Freed, the single pages go back to their kernel pageblocks,
    // unprotected again, and the pageblocks become whole.
    for (i, &pfn) in tables.iter().enumerate() {
        alloc.free(i % 2, pfn, 0).unwrap();
    }
    alloc.drain_caches();
    live.retain(|&(_, _, ft)| ft == Freetype::KERNEL);
    sim::check(&alloc, PT, &managed, &live).unwrap();
    // What stays protected in kernel pageblocks: the reserve pages and the
    // direct-map tables that single pages became (the map never merges).
    let kept_in_mixed = (0..FRAMES)
        .filter_map(|pfn| alloc.frame_info(Pfn(pfn)))
        .filter(|info| {
            matches!(info.state, FrameState::Reserve | FrameState::DirectMapTable)
                && info.pageblock_freetype != Some(PT)
        })
        .count() as u64;
    assert_eq!(alloc.stats().single_pages_live, kept_in_mixed);
    for (pfn, _, _) in live.drain(..) {
        alloc.free(0, pfn, 0).unwrap();
    }
    alloc.drain_caches();
    sim::check(&alloc, PT, &managed, &[]).unwrap();
    // Every pageblock without such a page is whole again.
    let holding = (0..FRAMES / PB)
        .filter(|&block| {
            (block * PB..(block + 1) * PB).any(|pfn| {
                alloc.frame_info(Pfn(pfn)).is_some_and(|info| {
                    matches!(info.state, FrameState::Reserve | FrameState::DirectMapTable)
                })
            })
        })
        .count() as u64;
    assert_eq!(whole_free_pageblocks(&alloc), FRAMES / PB - holding);
    // The map never merges 4 KiB entries back into a 2 MiB one, so each
    // split keeps its table page: at most one held page per split (and
    // the reserve's own pageblock).
    let splits = alloc.stats().splits_2m;
    assert!(
        holding <= splits + 1,
        "{holding} pageblocks held, {splits} splits"
    );
}

/// Order-1 blocks straight from the core (order 0 would go through a
/// cache), for the placement tests.
fn pairs(alloc: &Alloc<'_>, count: usize) -> Vec<Pfn> {
    (0..count)
        .map(|_| {
            alloc
                .alloc(0, 1, Freetype::KERNEL, AllocFlags::empty())
                .unwrap()
        })
        .collect()
}

#[test]
fn a_block_about_to_merge_goes_to_the_tail_of_its_list() {
    let meta = meta(PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    let taken = pairs(&alloc, 10);
    let expected: Vec<Pfn> = (0..10).map(|i| Pfn(2 * i)).collect();
    assert_eq!(taken, expected, "the set-up assumes pairs in address order");
    // [8, 10) freed: its buddy is live and so is the quad above it, so it
    // merges with nothing soon: the head of the order-1 list.
    alloc.free(0, Pfn(8), 1).unwrap();
    // So is [12, 14), freed later: the head now.
    alloc.free(0, Pfn(12), 1).unwrap();
    // [4, 8) freed and merged into a quad; then [2, 4): its buddy [0, 2)
    // is live, but the quad beside their pair is free, so once [0, 2)
    // comes back it merges twice: the tail.
    alloc.free(0, Pfn(4), 1).unwrap();
    alloc.free(0, Pfn(6), 1).unwrap();
    alloc.free(0, Pfn(2), 1).unwrap();
    // The list is [12, 8, 2]: the next pair comes from the head, the
    // latest block freed with nothing to merge soon, and [2, 4) is left
    // to merge.
    assert_eq!(
        alloc.alloc(0, 1, Freetype::KERNEL, AllocFlags::empty()),
        Ok(Pfn(12))
    );
    alloc.free(0, Pfn(0), 1).unwrap();
    let merged = alloc
        .frame_info(Pfn(0))
        .map(|info| (info.state, info.order));
    assert_eq!(merged, Some((FrameState::FreeHead, 3)), "[0, 8) merged");
}

#[test]
fn the_watermark_holds_whole_pageblocks_for_page_tables_only() {
    // Three pageblocks and a partial one of 16 frames, a watermark of 1.
    let frames = 3 * PB + 16;
    let meta = meta(frames);
    let config = Config {
        page_table: PT,
        reserve_target: 0,
        conversion_watermark: 1,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = allocator_with(&meta, LargestPage::Mega, config);
    let kernel = |order| alloc.alloc(0, order, Freetype::KERNEL, AllocFlags::empty());
    let first = kernel(9).unwrap();
    assert_eq!(alloc.stats().watermark_refusals, 0);
    // Two whole pageblocks left: a 4 MiB block would take both.
    assert_eq!(whole_free_pageblocks(&alloc), 2);
    assert_eq!(kernel(10), Err(AllocError::OutOfMemory));
    let refused = alloc.stats().watermark_refusals;
    assert!(refused >= 1);
    // One of them may go.
    let second = kernel(9).unwrap();
    assert_eq!(alloc.stats().watermark_refusals, refused);
    assert_eq!(whole_free_pageblocks(&alloc), 1);
    // The last whole pageblock is the page tables'.
    assert_eq!(kernel(9), Err(AllocError::OutOfMemory));
    // Refused at the free lists and again at conversion.
    assert!(alloc.stats().watermark_refusals > refused);
    // Small blocks still come from the partial pageblock.
    let small = kernel(0).unwrap();
    assert!(small.0 >= 3 * PB, "from the partial pageblock");
    // A page table may take the last one.
    let table = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    assert_eq!(whole_free_pageblocks(&alloc), 0);
    let live = [
        (first, 9, Freetype::KERNEL),
        (second, 9, Freetype::KERNEL),
        (small, 0, Freetype::KERNEL),
        (table, 0, PT),
    ];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(frames))], &live).unwrap();
}

#[test]
fn a_cache_refill_stops_at_a_batch_of_small_blocks() {
    // Page 0 live, pages 1-31 back as blocks of orders 0 to 4: a refill
    // takes all five (31 pages) and splits one more page off a larger
    // block, never a whole 32-page block on top.
    let meta = meta(2 * PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    let first = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    assert_eq!(first, Pfn(0));
    alloc.drain_caches();
    let next = alloc
        .alloc(1, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let stats = alloc.stats();
    assert_eq!(
        stats.cached_pages[Freetype::KERNEL.index()],
        CACHE_BATCH as u64 - 1
    );
    let live = [(first, 0, Freetype::KERNEL), (next, 0, Freetype::KERNEL)];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(2 * PB))], &live).unwrap();
}

#[test]
fn borrowing_never_takes_a_whole_pageblock_nor_serves_page_tables() {
    // No reserve, so no conversion to page tables happens on the side.
    let meta = meta(4 * PB);
    let config = Config {
        page_table: PT,
        reserve_target: 0,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = allocator_with(&meta, LargestPage::Mega, config);
    // The kernel's smallest free block is a whole pageblock: a small user
    // block converts one to USER rather than borrow a piece of it.
    let kernel = alloc
        .alloc(0, 9, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let user = alloc.alloc(0, 3, USER, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!((stats.stolen_blocks, stats.total_conversions()), (0, 1));
    // A movable page-table-key block converts a pageblock of its own; a
    // page table then converts another rather than borrow from it.
    let movable_key = Freetype {
        mobility: Mobility::Movable,
        protection: PT.protection,
    };
    let other = alloc.alloc(0, 1, movable_key, AllocFlags::empty()).unwrap();
    let table = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.stolen_blocks, 0);
    assert_eq!(
        alloc.frame_info(table).unwrap().pageblock_freetype,
        Some(PT)
    );
    let live = [
        (kernel, 9, Freetype::KERNEL),
        (user, 3, USER),
        (other, 1, movable_key),
        (table, 0, PT),
    ];
    sim::check(&alloc, PT, &[(Pfn(0), Pfn(4 * PB))], &live).unwrap();
}

#[test]
fn a_block_whose_free_neighbour_lies_below_also_goes_to_the_tail() {
    let meta = meta(PB);
    let alloc = allocator(&meta, LargestPage::Mega);
    pairs(&alloc, 10);
    // [0, 4) free as a quad; [8, 10) free with nothing to merge soon.
    alloc.free(0, Pfn(0), 1).unwrap();
    alloc.free(0, Pfn(2), 1).unwrap();
    alloc.free(0, Pfn(8), 1).unwrap();
    // [6, 8): its buddy [4, 6) is live, the quad below their pair is free:
    // the tail, behind [8, 10).
    alloc.free(0, Pfn(6), 1).unwrap();
    assert_eq!(
        alloc.alloc(0, 1, Freetype::KERNEL, AllocFlags::empty()),
        Ok(Pfn(8))
    );
}
