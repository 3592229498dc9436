//! Compaction: a page-table allocation that finds no whole free pageblock
//! empties one by moving its movable blocks elsewhere, through the owner's
//! `Migrate` hook (here `ptalloc::sim::SimMover`, which checks every move),
//! then converts it. Each case runs on the checking simulator with the
//! invariant checker after it. The proptest model (`model.rs`) mixes
//! compaction into random sequences; the fragmentation benchmark counts
//! compactions and pages moved.

use ptalloc::sim::{self, LargestPage, SimDirectMap, SimMover};
use ptalloc::*;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

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
/// 64 MiB.
const FRAMES: u64 = 64 << 8;

type Alloc<'m> = PageAllocator<'m, SimDirectMap, 2>;

fn meta(frames: u64) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

/// `meta`'s frames as movable user memory from frame 0, on a map of 2 MiB
/// pages, with a split reserve of 8, no watermark and no single-page
/// fallback: compaction is the only way past fragmentation. The split
/// reserve is filled (one page-table pageblock).
fn allocator<'m>(meta: &'m [FrameMeta], owner: &'m dyn Migrate) -> Alloc<'m> {
    let config = Config {
        page_table: PT,
        reserve_target: 8,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let map = SimDirectMap::new(meta.len() as u64, LargestPage::Mega, 2);
    let alloc = Alloc::new(meta, Pfn(0), config, map)
        .expect("set-up")
        .with_migrator(owner);
    alloc
        .add_memory(Pfn(0), Pfn(meta.len() as u64), USER)
        .expect("memory");
    alloc.refill_reserve().expect("reserve");
    alloc
}

/// Takes every free user block of `order`, keeps (and has `owner` hold)
/// the first of each pageblock, frees the rest: no pageblock is whole
/// afterwards.
fn one_live_block_per_pageblock(alloc: &Alloc<'_>, owner: &SimMover, order: u32) {
    let all: Vec<Pfn> =
        std::iter::from_fn(|| alloc.alloc(0, order, USER, AllocFlags::empty()).ok()).collect();
    let mut kept = BTreeSet::new();
    for pfn in all {
        if kept.insert(pfn.0 / PB) {
            owner.hold(pfn, order, USER);
        } else {
            alloc.free(0, pfn, order).expect("free");
        }
    }
    alloc.drain_caches();
    assert_eq!(alloc.stats().whole_free_pageblocks(), 0);
}

fn one_live_page_per_pageblock(alloc: &Alloc<'_>, owner: &SimMover) {
    one_live_block_per_pageblock(alloc, owner, 0);
}

/// Page tables until no free one is left (the reserve's pageblock used
/// up): the next one needs a conversion.
fn use_up_free_page_tables(alloc: &Alloc<'_>) -> Vec<Pfn> {
    let mut tables = Vec::new();
    while alloc.stats().free_pages(PT) + alloc.stats().cached_pages[PT.index()] > 0
        || tables.is_empty()
    {
        tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    }
    tables
}

fn free_frames(alloc: &Alloc<'_>) -> u64 {
    let stats = alloc.stats();
    Freetype::all().map(|ft| stats.free_pages(ft)).sum::<u64>()
        + stats.cached_pages.iter().sum::<u64>()
}

/// Page tables until one fails: the pages and the error.
fn page_tables_until_failure(alloc: &Alloc<'_>) -> (Vec<Pfn>, AllocError) {
    let mut tables = Vec::new();
    loop {
        match alloc.alloc(tables.len() % 2, 0, PT, AllocFlags::ZERO) {
            Ok(pfn) => tables.push(pfn),
            Err(error) => return (tables, error),
        }
    }
}

fn live(owner: &SimMover, tables: &[Pfn]) -> Vec<(Pfn, u32, Freetype)> {
    let mut live = owner.held();
    live.extend(tables.iter().map(|&pfn| (pfn, 0, PT)));
    live
}

/// Runs the invariant checker over all of `alloc`'s frames with `live`
/// as the blocks handed out.
fn check(alloc: &Alloc<'_>, live: &[(Pfn, u32, Freetype)]) {
    let managed = [(Pfn(0), Pfn(alloc.frames()))];
    sim::check(alloc, PT, &managed, live).unwrap();
}

#[test]
fn page_tables_come_from_compacted_pageblocks_until_memory_is_full() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    one_live_page_per_pageblock(&alloc, &owner);
    let contents: BTreeSet<u64> = owner
        .held()
        .iter()
        .filter_map(|&(pfn, _, _)| owner.contents(pfn))
        .collect();
    let live_user = contents.len() as u64;
    assert!(live_user >= FRAMES / PB - 1);

    let (tables, error) = page_tables_until_failure(&alloc);
    let stats = alloc.stats();
    // Memory really is full: less than a pageblock's worth is free, all of
    // it beside the user pages compaction gathered.
    assert_eq!(error, AllocError::OutOfMemory);
    let free = free_frames(&alloc);
    assert!(free < PB, "OutOfMemory with {free} frames free");
    assert_eq!(
        tables.len() as u64 + live_user + free,
        FRAMES - 8 - stats.direct_map_tables
    );
    // Compaction, not a fallback: no page protected alone, no 2 MiB split.
    assert!(
        stats.compactions >= FRAMES / PB - 3,
        "{} compactions",
        stats.compactions
    );
    assert_eq!(stats.single_page_fallbacks, 0);
    assert_eq!(stats.splits_2m, 0);
    // Every move went through the owner and carried the data along.
    let (moves, refused) = owner.counts();
    assert_eq!(stats.pages_moved, moves);
    assert_eq!((stats.migrations_refused, refused), (0, 0));
    assert!(owner.violations().is_empty(), "{:?}", owner.violations());
    let after: BTreeSet<u64> = owner
        .held()
        .iter()
        .filter_map(|&(pfn, _, _)| owner.contents(pfn))
        .collect();
    assert_eq!(after, contents, "a moved block lost its contents");
    // One flush per compacted pageblock's conversion, at most.
    assert!(stats.flushes_local <= stats.conversion_batches);
    check(&alloc, &live(&owner, &tables));

    for (i, &pfn) in tables.iter().enumerate() {
        alloc.free(i % 2, pfn, 0).unwrap();
    }
    for (pfn, order, _) in owner.held() {
        owner.release(pfn);
        alloc.free(0, pfn, order).unwrap();
    }
    alloc.drain_caches();
    check(&alloc, &[]);
}

#[test]
fn pinned_pages_stop_compaction_and_nothing_is_lost() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    one_live_page_per_pageblock(&alloc, &owner);
    for (pfn, _, _) in owner.held() {
        owner.pin(pfn, true);
    }
    let before = owner.held();
    let free_before = free_frames(&alloc);
    let (tables, error) = page_tables_until_failure(&alloc);
    assert_eq!(error, AllocError::OutOfMemory);
    let stats = alloc.stats();
    // The reserve's pageblock served, then every compaction was refused.
    assert!(tables.len() < PB as usize);
    assert_eq!(stats.compactions, 0);
    assert!(stats.migrations_refused > 0 && stats.compactions_failed > 0);
    assert_eq!(stats.pages_moved, 0);
    assert_eq!(owner.held(), before, "a pinned block moved");
    assert_eq!(free_frames(&alloc) + tables.len() as u64, free_before);
    check(&alloc, &live(&owner, &tables));

    // Unpinned, they move, and page tables come again.
    for (pfn, _, _) in owner.held() {
        owner.pin(pfn, false);
    }
    let more = alloc
        .alloc(0, 0, PT, AllocFlags::ZERO)
        .expect("a page table");
    assert_eq!(alloc.stats().compactions, 1);
    let mut tables = tables;
    tables.push(more);
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_refused_move_gives_everything_back_and_the_next_try_compacts() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    // Two live pages in every pageblock, the higher one pinned: in each
    // pageblock tried, the compaction moves the lower one, then the owner
    // refuses the other.
    one_live_page_per_pageblock(&alloc, &owner);
    one_live_page_per_pageblock(&alloc, &owner);
    let held = owner.held();
    for pair in held.windows(2) {
        if pair[0].0.0 / PB == pair[1].0.0 / PB {
            owner.pin(pair[1].0, true);
        }
    }
    // Use up the reserve's pageblock of page tables: the next one compacts.
    let mut tables = use_up_free_page_tables(&alloc);
    let free_before = free_frames(&alloc);
    let error = alloc.alloc(0, 0, PT, AllocFlags::empty());
    assert_eq!(error, Err(AllocError::OutOfMemory));
    // Four pageblocks tried, one page moved out of each before the refusal.
    let stats = alloc.stats();
    assert_eq!((stats.migrations_refused, stats.compactions_failed), (4, 4));
    assert_eq!((stats.compactions, stats.pages_moved), (0, 4));
    assert_eq!(owner.counts(), (4, 4));
    // The moved page stays moved; the isolated free blocks, the page it
    // left and the refused destination went back.
    assert_eq!(free_frames(&alloc), free_before);
    check(&alloc, &live(&owner, &tables));
    // Unpinned, the next try compacts.
    for (pfn, _, _) in owner.held() {
        owner.pin(pfn, false);
    }
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    assert_eq!(alloc.stats().compactions, 1);
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_pageblock_of_several_live_blocks_is_emptied_block_by_block() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    // Every pageblock holds blocks of orders 0, 2 and 5 (37 frames):
    // compaction moves all three out of one, into the others' free room.
    for order in [5, 2, 0] {
        one_live_block_per_pageblock(&alloc, &owner, order);
    }
    let mut tables = Vec::new();
    let compacted = loop {
        tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
        if alloc.stats().compactions > 0 {
            break alloc.stats();
        }
    };
    assert_eq!(compacted.pages_moved, 37);
    assert_eq!(owner.counts().0, 3);
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn unmovable_pages_are_never_moved() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    // Kernel pages (unmovable), one per pageblock, taken from user
    // pageblocks (same protection): compaction must leave them be.
    let all: Vec<Pfn> = std::iter::from_fn(|| {
        alloc
            .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
            .ok()
    })
    .collect();
    let mut kept = BTreeSet::new();
    let mut live = Vec::new();
    for pfn in all {
        if kept.insert(pfn.0 / PB) {
            live.push((pfn, 0, Freetype::KERNEL));
        } else {
            alloc.free(0, pfn, 0).unwrap();
        }
    }
    alloc.drain_caches();
    let (tables, error) = page_tables_until_failure(&alloc);
    assert_eq!(error, AllocError::OutOfMemory);
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (0, 0));
    assert!(stats.compactions_failed > 0);
    assert_eq!(owner.counts(), (0, 0));
    live.extend(tables.iter().map(|&pfn| (pfn, 0, PT)));
    check(&alloc, &live);
}

#[test]
fn without_a_migrator_nothing_moves() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let config = Config {
        page_table: PT,
        reserve_target: 8,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let map = SimDirectMap::new(FRAMES, LargestPage::Mega, 2);
    let alloc = Alloc::new(&meta, Pfn(0), config, map).unwrap();
    alloc.add_memory(Pfn(0), Pfn(FRAMES), USER).unwrap();
    alloc.refill_reserve().unwrap();
    one_live_page_per_pageblock(&alloc, &owner);
    let (tables, error) = page_tables_until_failure(&alloc);
    assert_eq!(error, AllocError::OutOfMemory);
    assert!(tables.len() < PB as usize);
    assert_eq!(alloc.stats().pages_moved, 0);
}

/// An owner that calls back into the allocator from `migrate`: if the
/// allocator held a lock there, it would spin forever.
struct Reentrant<'a> {
    inner: SimMover,
    alloc: OnceLock<&'a Alloc<'a>>,
}

impl Migrate for Reentrant<'_> {
    fn migrate(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: Freetype,
    ) -> Result<(), MigrateError> {
        if let Some(alloc) = self.alloc.get() {
            // Takes every cache lock and the core lock.
            let _ = alloc.stats();
        }
        self.inner.migrate(from, to, order, freetype)
    }
}

#[test]
fn the_owner_is_called_with_no_allocator_lock_held() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let meta = meta(FRAMES);
        let owner = Reentrant {
            inner: SimMover::new(),
            alloc: OnceLock::new(),
        };
        let alloc = allocator(&meta, &owner);
        let _ = owner.alloc.set(&alloc);
        one_live_page_per_pageblock(&alloc, &owner.inner);
        let (tables, _) = page_tables_until_failure(&alloc);
        let _ = done.send((tables.len(), alloc.stats().compactions));
    });
    let (tables, compactions) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("compaction deadlocked: the owner was called under an allocator lock");
    assert!(compactions > 0 && tables > PB as usize);
}

/// An owner that serialises its frees with its moves, as the `Migrate`
/// contract asks: one lock around "stop holding, then free" and around
/// every move.
struct Serialised {
    inner: SimMover,
    lock: std::sync::Mutex<()>,
}

impl Migrate for Serialised {
    fn migrate(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: Freetype,
    ) -> Result<(), MigrateError> {
        let _owner = self.lock.lock().unwrap();
        self.inner.migrate(from, to, order, freetype)
    }
}

#[test]
fn frees_racing_compaction_on_another_cpu_lose_nothing() {
    for round in 0..8u64 {
        let meta = meta(FRAMES);
        let owner = Serialised {
            inner: SimMover::new(),
            lock: std::sync::Mutex::new(()),
        };
        let alloc = allocator(&meta, &owner);
        // Four live pages in every pageblock.
        for _ in 0..4 {
            one_live_page_per_pageblock(&alloc, &owner.inner);
        }
        let freeing = std::sync::atomic::AtomicBool::new(true);
        let tables = std::thread::scope(|scope| {
            // CPU 1 frees user pages, one in three, while CPU 0 compacts.
            scope.spawn(|| {
                for (i, (pfn, order, _)) in owner.inner.held().into_iter().enumerate() {
                    if !(i as u64 + round).is_multiple_of(3) {
                        continue;
                    }
                    let _owner = owner.lock.lock().unwrap();
                    // Moved meanwhile: the owner holds it elsewhere now.
                    if owner.inner.release(pfn) {
                        alloc.free(1, pfn, order).expect("freeing a held page");
                    }
                }
                freeing.store(false, std::sync::atomic::Ordering::Release);
            });
            // Page tables until one fails with CPU 1 done: a compaction
            // that races a free may fail, and memory is being freed.
            let mut tables = Vec::new();
            loop {
                let done = !freeing.load(std::sync::atomic::Ordering::Acquire);
                match alloc.alloc(0, 0, PT, AllocFlags::empty()) {
                    Ok(pfn) => tables.push(pfn),
                    Err(_) if done => break,
                    Err(_) => std::thread::yield_now(),
                }
            }
            tables
        });
        let stats = alloc.stats();
        assert!(stats.compactions > 0, "round {round}: no compaction");
        assert!(
            owner.inner.violations().is_empty(),
            "{:?}",
            owner.inner.violations()
        );
        assert_eq!(stats.pages_moved, owner.inner.counts().0);
        alloc.drain_caches();
        check(&alloc, &live(&owner.inner, &tables));
    }
}

/// A machine of `meta.len()` frames: the reserve's page-table pageblock,
/// and user pageblocks, the `i`th (in address order) holding `live[i]`
/// held pages (its lowest frames), the rest free; the free page tables are used up, so the next
/// one needs a conversion.
fn crowded<'m>(meta: &'m [FrameMeta], owner: &'m SimMover, live: &[u64]) -> (Alloc<'m>, Vec<Pfn>) {
    let alloc = allocator(meta, owner);
    let all: Vec<Pfn> =
        std::iter::from_fn(|| alloc.alloc(0, 0, USER, AllocFlags::empty()).ok()).collect();
    assert_eq!(all.len() as u64, live.len() as u64 * PB);
    // The user pageblocks in address order (the reserve's may be any one).
    let user: Vec<u64> = (0..meta.len() as u64 / PB)
        .filter(|&block| {
            alloc
                .frame_info(Pfn(block * PB))
                .and_then(|info| info.pageblock_freetype)
                == Some(USER)
        })
        .collect();
    for pfn in all {
        let (pageblock, offset) = (pfn.0 / PB, pfn.0 % PB);
        let Some(rank) = user.iter().position(|&block| block == pageblock) else {
            unreachable!("a user page outside the user pageblocks")
        };
        if offset < live[rank] {
            owner.hold(pfn, 0, USER);
        } else {
            alloc.free(0, pfn, 0).unwrap();
        }
    }
    alloc.drain_caches();
    let tables = use_up_free_page_tables(&alloc);
    (alloc, tables)
}

#[test]
fn a_compaction_whose_blocks_fit_exactly_elsewhere_runs() {
    // 256 live in each of two pageblocks, the third full: the first one's
    // 256 pages fill the second's 256 free frames exactly.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[256, 256, 512]);
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 256));
    assert!(
        owner
            .held()
            .iter()
            .all(|(pfn, _, _)| pfn.0 / PB == 2 || pfn.0 / PB == 3)
    );
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_compaction_that_cannot_fit_moves_nothing() {
    // 300 live in each of two pageblocks: the 212 free frames outside
    // either cannot take its 300, so no move starts.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, tables) = crowded(&meta, &owner, &[300, 300, 512]);
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.compactions_failed), (0, 1));
    assert_eq!((stats.pages_moved, owner.counts()), (0, (0, 0)));
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn moved_blocks_may_land_in_a_sibling_of_the_same_protection() {
    // One user page in the first user pageblock; all other free room is
    // in kernel pageblocks (same protection, other mobility).
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[1, 512, 512]);
    // Make the second user pageblock a kernel one: free its pages, take
    // it whole as kernel memory (a conversion of the same protection),
    // free it, and keep one kernel page there.
    let second: Vec<(Pfn, u32, Freetype)> = owner
        .held()
        .into_iter()
        .filter(|(pfn, _, _)| pfn.0 / PB == 2)
        .collect();
    for (pfn, order, _) in second {
        owner.release(pfn);
        alloc.free(0, pfn, order).unwrap();
    }
    alloc.drain_caches();
    let kernel = alloc
        .alloc(0, PAGEBLOCK_ORDER, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.free(0, kernel, PAGEBLOCK_ORDER).unwrap();
    let kernel_page = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.drain_caches();
    assert_eq!(kernel_page.0 / PB, 2);
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 1));
    // The user page now lives in the kernel pageblock.
    let (moved, _, _) = owner.held()[0];
    assert_eq!(moved.0 / PB, 2);
    let mut live = live(&owner, &tables);
    live.push((kernel_page, 0, Freetype::KERNEL));
    check(&alloc, &live);
}

#[test]
fn only_page_tables_compact() {
    let meta = meta(FRAMES);
    let owner = SimMover::new();
    let alloc = allocator(&meta, &owner);
    one_live_page_per_pageblock(&alloc, &owner);
    // A whole pageblock of user or kernel memory: none is free, and
    // compaction is not for them.
    for ft in [USER, Freetype::KERNEL] {
        assert_eq!(
            alloc.alloc(0, PAGEBLOCK_ORDER, ft, AllocFlags::empty()),
            Err(AllocError::OutOfMemory)
        );
    }
    // Nor for a page table that may not wait.
    let tables = use_up_free_page_tables(&alloc);
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::NO_BLOCK),
        Err(AllocError::WouldBlock)
    );
    let stats = alloc.stats();
    assert_eq!(
        (
            stats.compactions,
            stats.compactions_failed,
            stats.pages_moved
        ),
        (0, 0, 0)
    );
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn the_pageblock_with_fewest_live_frames_is_emptied() {
    // 300 live, then 100: the second moves (100 pages), not the first.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[300, 100, 512]);
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 100));
    assert!(owner.held().iter().all(|(pfn, _, _)| pfn.0 / PB != 2));
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_pageblock_holding_an_unmovable_block_is_never_chosen() {
    // The first user pageblock holds 1 user page and 1 kernel page (2
    // live frames, one unmovable), the second 100 user pages: the second
    // is emptied, the first left alone.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[2, 100, 512]);
    let (kernel_frame, _, _) = owner.held()[1];
    owner.release(kernel_frame);
    alloc.free(0, kernel_frame, 0).unwrap();
    alloc.drain_caches();
    let kernel_page = alloc
        .alloc(0, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    assert_eq!(
        kernel_page.0 / PB,
        1,
        "the kernel page borrows the free frame"
    );
    alloc.drain_caches();
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 100));
    let mut live = live(&owner, &tables);
    live.push((kernel_page, 0, Freetype::KERNEL));
    check(&alloc, &live);
}

#[test]
fn live_frames_count_whole_blocks() {
    // The first user pageblock holds a page and an order-5 block (33
    // frames in 2 blocks), the second 10 pages: the second has fewer live
    // frames, though more blocks, and is the one emptied.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[1, 512, 512]);
    // Keep 10 pages of the second, placed so that it has no free order-5
    // block: the order-5 allocation below comes from the first.
    let kept = |offset: u64| offset < 8 || offset == 32 || offset == 40;
    for (pfn, _, _) in owner.held() {
        if pfn.0 / PB == 2 && !kept(pfn.0 % PB) {
            owner.release(pfn);
            alloc.free(0, pfn, 0).unwrap();
        }
    }
    alloc.drain_caches();
    let block = alloc.alloc(0, 5, USER, AllocFlags::empty()).unwrap();
    assert_eq!(block.0 / PB, 1);
    owner.hold(block, 5, USER);
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 10));
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_pinned_page_sends_compaction_to_the_next_pageblock() {
    // The pageblock with the fewest live frames has a pinned page: the
    // same compaction goes on to empty the next one.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[1, 10, 512]);
    owner.pin(owner.held()[0].0, true);
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.compactions_failed), (1, 1));
    assert_eq!((stats.pages_moved, stats.migrations_refused), (10, 1));
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn a_refused_pageblock_is_tried_once_per_compaction_and_again_later() {
    // The three pageblocks compaction could empty each have a pinned
    // page: each is tried once (three refusals, though one compaction may
    // try four); unpinned, the one with fewest live frames is emptied.
    let meta = meta(4 * PB);
    let owner = SimMover::new();
    let (alloc, mut tables) = crowded(&meta, &owner, &[1, 10, 512]);
    let candidates: Vec<Pfn> = owner.held().iter().map(|&(pfn, _, _)| pfn).collect();
    for &pfn in &candidates {
        owner.pin(pfn, true);
    }
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    let stats = alloc.stats();
    assert_eq!((stats.migrations_refused, stats.compactions_failed), (3, 3));
    for &pfn in &candidates {
        owner.pin(pfn, false);
    }
    tables.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (1, 1));
    check(&alloc, &live(&owner, &tables));
}

#[test]
fn room_of_another_protection_does_not_count() {
    // As above, 212 free user frames cannot take 300; a secret pageblock
    // beside them has 511 free frames, which a user page cannot use.
    let meta = meta(5 * PB);
    let owner = SimMover::new();
    let (alloc, tables) = crowded(&meta, &owner, &[300, 300, 512, 0]);
    let secret = Freetype::new(Mobility::Movable, Protection::Unmapped).unwrap();
    let hidden = alloc.alloc(0, 0, secret, AllocFlags::empty()).unwrap();
    owner.hold(hidden, 0, secret);
    alloc.drain_caches();
    assert_eq!(alloc.stats().whole_free_pageblocks(), 0);
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::OutOfMemory)
    );
    let stats = alloc.stats();
    assert_eq!((stats.compactions, stats.pages_moved), (0, 0));
    check(&alloc, &live(&owner, &tables));
}
