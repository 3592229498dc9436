//! Allocator behaviour on hand-built scenarios, with a minimal counting
//! backend (the full checking simulator is exercised in `model.rs`).

use ptalloc::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const SECRET: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};
const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};

/// Counts calls; a 1 GiB mapping covers everything and is split once,
/// taking one page, on the first protection change.
#[derive(Default)]
struct Counting {
    protects: AtomicU32,
    flushes: AtomicU32,
    zeroes: AtomicU32,
    split_done: Mutex<bool>,
    split_pages: Mutex<Vec<Pfn>>,
    fail_protect: std::sync::atomic::AtomicBool,
    fail_zero: std::sync::atomic::AtomicBool,
    protected: AtomicUsize,
}

impl DirectMap for Counting {
    fn protect(
        &self,
        range: PageblockRange,
        _from: Protection,
        _to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        if self.fail_protect.load(Ordering::SeqCst) {
            return Err(DirectMapError::Failed);
        }
        let mut done = self.split_done.lock().unwrap();
        let mut report = ProtectReport::default();
        if !*done {
            let page = split_pages.take().ok_or(DirectMapError::NoSplitPage)?;
            self.split_pages.lock().unwrap().push(page);
            *done = true;
            report.splits_1g = 1;
        }
        self.protects.fetch_add(1, Ordering::SeqCst);
        self.protected
            .fetch_add(range.frames() as usize, Ordering::SeqCst);
        Ok(report)
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

    fn flush(&self, _range: PageblockRange) -> FlushReport {
        self.flushes.fetch_add(1, Ordering::SeqCst);
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
        if self.fail_zero.load(Ordering::SeqCst) {
            return Err(DirectMapError::Failed);
        }
        self.zeroes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 64 MiB (32 pageblocks) of kernel memory from frame 0.
fn allocator(meta: &[FrameMeta]) -> PageAllocator<'_, Counting, 2> {
    let config = Config {
        page_table: PT,
        reserve_target: 4,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = PageAllocator::new(meta, Pfn(0), config, Counting::default()).unwrap();
    alloc
        .add_memory(Pfn(0), Pfn(meta.len() as u64), Freetype::KERNEL)
        .unwrap();
    alloc
}

fn meta(frames: usize) -> Vec<FrameMeta> {
    (0..frames).map(|_| FrameMeta::new()).collect()
}

#[test]
fn metadata_is_twelve_bytes_per_frame() {
    assert_eq!(METADATA_BYTES_PER_FRAME, 12);
}

#[test]
fn first_page_table_allocation_converts_one_pageblock_with_one_flush() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    let page = alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.converted(Freetype::KERNEL, PT), 1);
    assert_eq!(stats.conversion_batches, 1);
    assert_eq!(stats.flushes_local, 1);
    assert_eq!(stats.splits_1g, 1);
    // The split's page table came from the converted block itself.
    assert_eq!(stats.direct_map_tables, 1);
    let table = alloc.backend().split_pages.lock().unwrap()[0];
    assert_eq!(
        alloc.frame_info(table).unwrap().state,
        FrameState::DirectMapTable
    );
    assert_eq!(alloc.frame_info(page).unwrap().pageblock_freetype, Some(PT));
    // 510 more page-table pages need no further conversion.
    let mut pages = vec![page];
    for _ in 0..510 {
        pages.push(alloc.alloc(0, 0, PT, AllocFlags::empty()).unwrap());
    }
    assert_eq!(alloc.stats().conversion_batches, 1);
    pages.sort();
    pages.dedup();
    assert_eq!(pages.len(), 511);
}

#[test]
fn conversion_to_unmapped_uses_the_reserve_and_adding_permissions_does_not_flush() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    let secret = alloc.alloc(0, 3, SECRET, AllocFlags::ZERO).unwrap();
    let stats = alloc.stats();
    // The reserve was filled first (one PT pageblock, self-hosted split),
    // then the secret pageblock converted: two batches, two flushes.
    assert_eq!(stats.converted(Freetype::KERNEL, PT), 1);
    assert_eq!(stats.converted(Freetype::KERNEL, SECRET), 1);
    assert_eq!(stats.reserve_level, 4);
    assert_eq!(stats.flushes_local, 2);
    assert_eq!(alloc.backend().zeroes.load(Ordering::SeqCst), 1);
    alloc.free(0, secret, 3).unwrap();
    // Unmapped -> mapped adds permissions only: no flush.
    let _user = alloc.alloc(0, 9, USER, AllocFlags::empty()).unwrap();
    let stats = alloc.stats();
    assert_eq!(
        stats.converted(SECRET, USER),
        0,
        "USER takes from KERNEL, of its own protection: no mapping changes"
    );
}

#[test]
fn bad_frees_are_typed_errors_that_change_nothing() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    let block = alloc
        .alloc(0, 2, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    let before = alloc.stats();
    assert_eq!(
        alloc.free(0, Pfn(block.0 + 1), 2),
        Err(FreeError::NotAllocated(Pfn(block.0 + 1)))
    );
    assert_eq!(
        alloc.free(0, block, 1),
        Err(FreeError::WrongOrder {
            pfn: block,
            allocated: 2,
            given: 1
        })
    );
    assert_eq!(
        alloc.free(0, Pfn(1 << 30), 0),
        Err(FreeError::OutOfRange(Pfn(1 << 30)))
    );
    assert_eq!(alloc.free(0, block, 19), Err(FreeError::InvalidOrder(19)));
    assert_eq!(alloc.free(5, block, 2), Err(FreeError::InvalidCpu(5)));
    assert_eq!(alloc.stats(), before);
    alloc.free(0, block, 2).unwrap();
    assert_eq!(alloc.free(0, block, 2), Err(FreeError::NotAllocated(block)));
    let page = alloc
        .alloc(1, 0, Freetype::KERNEL, AllocFlags::empty())
        .unwrap();
    alloc.free(1, page, 0).unwrap();
    assert_eq!(alloc.free(0, page, 0), Err(FreeError::NotAllocated(page)));
    assert_eq!(
        alloc.alloc(0, 19, Freetype::KERNEL, AllocFlags::empty()),
        Err(AllocError::InvalidOrder(19))
    );
    assert_eq!(
        alloc.alloc(0, 0, USER, AllocFlags::USE_RESERVE),
        Err(AllocError::ReserveNotForFreetype(USER))
    );
}

#[test]
fn no_block_fails_fast_instead_of_converting() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::NO_BLOCK),
        Err(AllocError::WouldBlock)
    );
    assert_eq!(alloc.stats().total_conversions(), 0);
    assert_eq!(alloc.stats().failed_allocations, 1);
}

#[test]
fn empty_reserve_gives_a_clear_error_and_no_unprotected_table() {
    // A reserve kept at zero pages: converting to SECRET must split the
    // 1 GiB mapping and finds no protected page to split with.
    let meta = meta(4 * 512);
    let config = Config {
        page_table: PT,
        reserve_target: 0,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = PageAllocator::<_, 1>::new(&meta, Pfn(0), config, Counting::default()).unwrap();
    alloc
        .add_memory(Pfn(0), Pfn(4 * 512), Freetype::KERNEL)
        .unwrap();
    let before = alloc.stats();
    assert_eq!(
        alloc.alloc(0, 0, SECRET, AllocFlags::empty()),
        Err(AllocError::ReserveExhausted)
    );
    assert!(alloc.backend().split_pages.lock().unwrap().is_empty());
    let after = alloc.stats();
    assert_eq!(
        (after.free_blocks, after.pageblocks),
        (before.free_blocks, before.pageblocks)
    );
    assert_eq!(after.splits_1g, 0);
    // A page-table conversion hosts its own split; then the reserve can be
    // used by USE_RESERVE callers only, and drains to a clear error.
    assert!(alloc.alloc(0, 0, PT, AllocFlags::empty()).is_ok());
    let table = alloc.backend().split_pages.lock().unwrap()[0];
    assert_eq!(
        alloc.frame_info(table).unwrap().pageblock_freetype,
        Some(PT)
    );
}

#[test]
fn failed_protect_changes_nothing() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    alloc.backend().fail_protect.store(true, Ordering::SeqCst);
    let before = alloc.stats();
    assert_eq!(
        alloc.alloc(0, 0, PT, AllocFlags::empty()),
        Err(AllocError::Backend(DirectMapError::Failed))
    );
    let after = alloc.stats();
    assert_eq!(after.free_blocks, before.free_blocks);
    assert_eq!(after.pageblocks, before.pageblocks);
    alloc.backend().fail_protect.store(false, Ordering::SeqCst);
    assert!(alloc.alloc(0, 0, PT, AllocFlags::empty()).is_ok());
}

#[test]
fn failed_zero_returns_the_pages() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    alloc.backend().fail_zero.store(true, Ordering::SeqCst);
    assert!(
        alloc
            .alloc(0, 4, Freetype::KERNEL, AllocFlags::ZERO)
            .is_err()
    );
    alloc.drain_caches();
    assert_eq!(alloc.stats().free_pages(Freetype::KERNEL), 32 * 512);
}

#[test]
fn everything_freed_merges_back_to_whole_blocks() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    let mut held = Vec::new();
    for order in [0, 3, 0, 9, 1, 0, 5] {
        held.push((
            alloc
                .alloc(0, order, Freetype::KERNEL, AllocFlags::empty())
                .unwrap(),
            order,
        ));
    }
    for (pfn, order) in held {
        alloc.free(0, pfn, order).unwrap();
    }
    alloc.drain_caches();
    let stats = alloc.stats();
    // 64 MiB from frame 0 is one order-14 block once everything merged.
    assert_eq!(stats.free_blocks[Freetype::KERNEL.index()][14], 1);
    assert_eq!(stats.free_pages(Freetype::KERNEL), 32 * 512);
}

#[test]
fn add_memory_rejects_overlaps_and_bad_ranges() {
    let meta = meta(4 * 512);
    let config = Config {
        page_table: PT,
        reserve_target: 4,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = PageAllocator::<_, 1>::new(&meta, Pfn(0), config, Counting::default()).unwrap();
    alloc
        .add_memory(Pfn(100), Pfn(600), Freetype::KERNEL)
        .unwrap();
    assert_eq!(
        alloc.add_memory(Pfn(500), Pfn(700), Freetype::KERNEL),
        Err(InitError::Overlap(Pfn(500)))
    );
    assert_eq!(
        alloc.add_memory(Pfn(700), Pfn(800), USER),
        Err(InitError::MixedPageblock(Pfn(512)))
    );
    assert!(matches!(
        alloc.add_memory(Pfn(10), Pfn(10), USER),
        Err(InitError::BadRange { .. })
    ));
    assert!(matches!(
        alloc.add_memory(Pfn(10), Pfn(5000), USER),
        Err(InitError::BadRange { .. })
    ));
    let bad_base = PageAllocator::<_, 1>::new(&meta, Pfn(512), config, Counting::default());
    assert!(matches!(bad_base, Err(InitError::MisalignedBase(_))));
    let bad_pt = Config {
        page_table: USER,
        reserve_target: 4,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    assert!(matches!(
        PageAllocator::<_, 1>::new(&meta, Pfn(0), bad_pt, Counting::default()),
        Err(InitError::PageTableFreetype(_))
    ));
}

#[test]
fn page_table_pageblocks_are_wiped_before_they_become_ordinary_memory() {
    let meta = meta(32 * 512);
    let alloc = allocator(&meta);
    // Every free pageblock becomes page tables, then is freed again.
    let mut held = Vec::new();
    while let Ok(block) = alloc.alloc(0, 9, PT, AllocFlags::empty()) {
        held.push(block);
    }
    assert!(held.len() > 1, "only {} page-table blocks", held.len());
    for block in held {
        alloc.free(0, block, 9).unwrap();
    }
    alloc.drain_caches();
    let zeroes = alloc.backend().zeroes.load(Ordering::SeqCst);
    // Ordinary memory now comes from a page-table pageblock: its stale
    // tables are wiped (under the key) before it is mapped without one.
    alloc.alloc(0, 9, USER, AllocFlags::empty()).unwrap();
    assert_eq!(alloc.stats().converted(PT, USER), 1);
    assert_eq!(
        alloc.backend().zeroes.load(Ordering::SeqCst) - zeroes,
        1,
        "the page-table pageblock was not wiped"
    );
}

#[test]
fn an_allocation_takes_back_pages_another_cpu_caches_before_failing() {
    // One pageblock: CPU 1's first page-table page converts it and parks
    // 31 more in CPU 1's cache. CPU 0 must still get every other page but
    // the one the conversion's own split used: the last 31 come out of
    // CPU 1's cache, drained when the core ran dry.
    let meta = meta(512);
    let alloc = allocator(&meta);
    let held_by_cpu1 = alloc.alloc(1, 0, PT, AllocFlags::empty()).unwrap();
    assert_eq!(
        alloc.stats().cached_pages[PT.index()],
        CACHE_BATCH as u64 - 1
    );
    let mut pages = Vec::new();
    let error = loop {
        match alloc.alloc(0, 0, PT, AllocFlags::empty()) {
            Ok(page) => pages.push(page),
            Err(error) => break error,
        }
    };
    assert_eq!(error, AllocError::OutOfMemory);
    let stats = alloc.stats();
    assert_eq!(pages.len(), 512 - 1 - 1, "pages CPU 0 got");
    assert_eq!(stats.cached_pages.iter().sum::<u64>(), 0);
    // Once, when CPU 1's pages came back; at the final failure every
    // cache was empty, so there was nothing to drain.
    assert_eq!(stats.drains_before_failing, 1);
    assert!(!pages.contains(&held_by_cpu1));
}
