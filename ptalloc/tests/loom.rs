//! Loom models of the per-CPU cache hand-off and of a shootdown under the
//! core lock (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ptalloc --test loom --release`).
//!
//! Under `--cfg loom` the allocator's locks and frame-state atomics are
//! loom's (src/sync.rs), so loom runs each model below under every
//! interleaving of two CPUs (threads) that can make a difference. All but
//! one are explored without a preemption bound; the cache refill model
//! is bounded, and its doc comment says why and what the bound still
//! catches. All of them take a few seconds. `LOOM_MAX_PREEMPTIONS` sets
//! one bound for every model instead (a large one explores the refill
//! model in full, in about three minutes).
//!
//! The cache models use kernel memory only, on a direct map that never
//! needs to change. They check that no frame is live on two CPUs at once,
//! that a racing double free is refused exactly once, that a CPU out of
//! memory takes back the pages another CPU caches before it fails, and
//! that every page comes back once both CPUs are done. The last model
//! converts a pageblock, whose flush waits for the other CPU while the
//! conversion holds the core lock: it checks that a CPU waiting for a
//! lock answers that flush.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;
use ptalloc::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

const KERNEL: Freetype = Freetype::KERNEL;
const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};

/// A direct map with nothing to do: only kernel memory is used, so no
/// conversion ever calls `protect`.
struct Flat;

impl DirectMap for Flat {
    fn protect(
        &self,
        _range: PageblockRange,
        _from: Protection,
        _to: Protection,
        _split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        Err(DirectMapError::Failed)
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
        FlushReport::default()
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

type Alloc = PageAllocator<'static, Flat, 2>;

/// An allocator of `frames` kernel frames (a partial pageblock). Model
/// threads must be `'static`, so the metadata of each execution is leaked
/// (a few hundred bytes); the allocator itself is dropped.
fn allocator(frames: u64) -> Arc<Alloc> {
    let meta: Vec<FrameMeta> = (0..frames).map(|_| FrameMeta::new()).collect();
    let meta: &'static [FrameMeta] = Box::leak(meta.into_boxed_slice());
    let config = Config {
        page_table: PT,
        reserve_target: 0,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = Alloc::new(meta, Pfn(0), config, Flat).expect("valid configuration");
    alloc
        .add_memory(Pfn(0), Pfn(frames), KERNEL)
        .expect("fresh memory");
    Arc::new(alloc)
}

/// Stack for model threads: loom's default (32 KiB) is too small for an
/// allocator and its `Stats` by value.
const STACK: usize = 1 << 20;

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn a model thread")
}

/// Runs `f` as CPU 0 under loom (on a thread with a large stack; the
/// model's main thread only waits for it), under every interleaving.
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(None, f);
}

/// [`model`] with at most `preemptions` preemptions per execution, unless
/// `LOOM_MAX_PREEMPTIONS` sets another bound.
fn model_bounded(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let f = Arc::new(f);
    // Builder::new() reads LOOM_MAX_PREEMPTIONS and the like.
    let mut builder = loom::model::Builder::new();
    // Room for every execution here, and a model that spins forever stops
    // at this limit. Not much higher: loom counts each thread's steps in
    // a u16, and past 65,535 it reports a bogus causality violation
    // instead of the limit.
    builder.max_branches = builder.max_branches.max(100_000);
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder.check(move || {
        let f = f.clone();
        spawn(move || f()).join().expect("CPU 0 passed");
    });
}

/// Frames live now, on any CPU. A std mutex is fine here: its critical
/// sections hold no loom operation, so no model thread blocks in one.
#[derive(Default)]
struct Owned(Mutex<HashSet<u64>>);

impl Owned {
    fn claim(&self, pfn: Pfn) {
        assert!(
            self.0.lock().expect("no panic holds the set").insert(pfn.0),
            "frame {:#x} live on two CPUs at once",
            pfn.0
        );
    }

    fn release(&self, pfn: Pfn) {
        assert!(
            self.0
                .lock()
                .expect("no panic holds the set")
                .remove(&pfn.0),
            "frame {:#x} freed but not held",
            pfn.0
        );
    }
}

/// Every frame is back in the core, and the counters balance.
fn assert_all_back(alloc: &Alloc, frames: u64) {
    alloc.drain_caches();
    let stats = alloc.stats();
    assert_eq!(stats.cached_pages[KERNEL.index()], 0);
    assert_eq!(stats.free_pages(KERNEL), frames, "pages lost or duplicated");
    assert_eq!(stats.allocations, stats.frees);
}

/// Each CPU refills its empty cache from the core (a full batch each) and
/// takes a page; one frees its page into the *other* CPU's cache, the
/// other drains every cache while it holds its page, then frees it.
///
/// Bounded to four preemptions: every interleaving is about 417,000
/// executions (three minutes), four preemptions about 4,000 (two
/// seconds). Bugs planted by hand in a copy of the allocator need fewer:
/// taking the core lock before a cache lock in `drain_caches` deadlocks
/// with one preemption, and giving up the cache lock between refilling
/// and popping, or between handing a page out and popping it, hands a
/// frame to two CPUs with two.
#[test]
fn cache_refills_and_cross_cpu_frees_hand_each_frame_to_one_cpu() {
    const FRAMES: u64 = 2 * CACHE_BATCH as u64;
    model_bounded(Some(4), || {
        let alloc = allocator(FRAMES);
        let owned = Arc::new(Owned::default());
        let (other, other_owned) = (alloc.clone(), owned.clone());
        let cpu1 = spawn(move || {
            // May find nothing if CPU 0's refill took every page first.
            if let Ok(pfn) = other.alloc(1, 0, KERNEL, AllocFlags::empty()) {
                other_owned.claim(pfn);
                // Hold it across a scheduling point.
                thread::yield_now();
                other_owned.release(pfn);
                other
                    .free(0, pfn, 0)
                    .expect("freeing a page just allocated");
            }
        });
        if let Ok(pfn) = alloc.alloc(0, 0, KERNEL, AllocFlags::empty()) {
            owned.claim(pfn);
            // Drain while holding it: its frame must not come back.
            alloc.drain_caches();
            owned.release(pfn);
            alloc
                .free(0, pfn, 0)
                .expect("freeing a page just allocated");
        }
        alloc.drain_caches();
        cpu1.join().expect("CPU 1 passed");
        assert_all_back(&alloc, FRAMES);
    });
}

/// Two CPUs free the same page at once, each into its own cache: exactly
/// one free succeeds, the other is refused as not allocated.
#[test]
fn a_racing_double_free_of_a_cached_page_succeeds_once() {
    racing_double_free(0);
}

/// The same for a block that bypasses the caches (order 1, core lock).
#[test]
fn a_racing_double_free_of_a_core_block_succeeds_once() {
    racing_double_free(1);
}

/// CPUs 0 and 1 both free one block of `order`: exactly one succeeds.
fn racing_double_free(order: u32) {
    const FRAMES: u64 = 2;
    model(move || {
        let alloc = allocator(FRAMES);
        let pfn = alloc
            .alloc(0, order, KERNEL, AllocFlags::empty())
            .expect("free memory");
        let other = alloc.clone();
        let cpu1 = spawn(move || other.free(1, pfn, order));
        let mine = alloc.free(0, pfn, order);
        let theirs = cpu1.join().expect("CPU 1 passed");
        let refused = Err(FreeError::NotAllocated(pfn));
        assert!(
            (mine == Ok(()) && theirs == refused) || (mine == refused && theirs == Ok(())),
            "double free: {mine:?} and {theirs:?}"
        );
        assert_all_back(&alloc, FRAMES);
    });
}

/// CPU 0's cache is full when it frees one more page, so it drains a batch
/// to the core, while CPU 1, whose cache is empty, refills from the core:
/// CPU 1 gets a page only from the batch drained, never one CPU 0 holds.
#[test]
fn a_full_cache_drains_to_the_core_while_another_cpu_refills() {
    // CPU 0 takes three batches (every frame) and hands out 65 pages.
    const FRAMES: u64 = 3 * CACHE_BATCH as u64;
    const HELD: usize = CACHE_CAPACITY + 1;
    model(|| {
        let alloc = allocator(FRAMES);
        let owned = Arc::new(Owned::default());
        let mut held: Vec<Pfn> = (0..HELD)
            .map(|_| {
                alloc
                    .alloc(0, 0, KERNEL, AllocFlags::empty())
                    .expect("free memory")
            })
            .collect();
        // Free until the cache is full: the next free drains.
        let cached = FRAMES as usize - HELD;
        for pfn in held.drain(..CACHE_CAPACITY - cached) {
            alloc
                .free(0, pfn, 0)
                .expect("freeing a page just allocated");
        }
        assert_eq!(
            alloc.stats().cached_pages[KERNEL.index()],
            CACHE_CAPACITY as u64
        );
        for &pfn in &held {
            owned.claim(pfn);
        }
        let (other, other_owned) = (alloc.clone(), owned.clone());
        let cpu1 = spawn(
            move || match other.alloc(1, 0, KERNEL, AllocFlags::empty()) {
                Ok(pfn) => {
                    other_owned.claim(pfn);
                    thread::yield_now();
                    other_owned.release(pfn);
                    other
                        .free(1, pfn, 0)
                        .expect("freeing a page just allocated");
                }
                // Before the drain the core is empty.
                Err(error) => assert_eq!(error, AllocError::OutOfMemory),
            },
        );
        let last = held.pop().expect("pages held");
        owned.release(last);
        alloc
            .free(0, last, 0)
            .expect("freeing a page just allocated");
        cpu1.join().expect("CPU 1 passed");
        for pfn in held {
            owned.release(pfn);
            alloc
                .free(0, pfn, 0)
                .expect("freeing a page just allocated");
        }
        assert_all_back(&alloc, FRAMES);
    });
}

/// Two frames, two CPUs, one page each, at once: whichever CPU refills
/// first takes both frames into its cache and hands out one; the other
/// finds the core empty, drains every cache before failing, and gets the
/// second. Under every interleaving both succeed and no frame is live on
/// both CPUs.
#[test]
fn a_cpu_out_of_memory_takes_the_pages_another_cpu_caches() {
    const FRAMES: u64 = 2;
    model(|| {
        let alloc = allocator(FRAMES);
        let owned = Arc::new(Owned::default());
        let (other, other_owned) = (alloc.clone(), owned.clone());
        let cpu1 = spawn(move || {
            let pfn = other
                .alloc(1, 0, KERNEL, AllocFlags::empty())
                .expect("CPU 1 gets a page: two frames for two CPUs");
            other_owned.claim(pfn);
            pfn
        });
        let mine = alloc
            .alloc(0, 0, KERNEL, AllocFlags::empty())
            .expect("CPU 0 gets a page: two frames for two CPUs");
        owned.claim(mine);
        let theirs = cpu1.join().expect("CPU 1 passed");
        for pfn in [mine, theirs] {
            owned.release(pfn);
            alloc
                .free(0, pfn, 0)
                .expect("freeing a page just allocated");
        }
        assert!(alloc.stats().drains_before_failing >= 1);
        assert_all_back(&alloc, FRAMES);
    });
}

/// A direct map whose flush is a shootdown round to CPU 1: it posts a
/// request, interrupts CPU 1 and waits until CPU 1 acknowledges. CPU 1
/// acknowledges only where a kernel CPU with interrupts off would: while
/// it waits for one of the allocator's locks (`wait_for_lock`), and once
/// it is idle (it takes the interrupt there).
#[derive(Default)]
struct Shooting {
    requested: AtomicU64,
    acknowledged: AtomicU64,
    /// CPU 1's thread, to interrupt.
    cpu1: OnceLock<thread::Thread>,
}

impl Shooting {
    /// CPU 1's answer: acknowledge the round in flight, if any. CPU 0 only
    /// waits for a lock outside its own rounds, so there is nothing to
    /// acknowledge when it calls this (from `wait_for_lock`).
    fn answer(&self) {
        let requested = self.requested.load(Ordering::Acquire);
        if self.acknowledged.load(Ordering::Acquire) < requested {
            self.acknowledged.store(requested, Ordering::Release);
        }
    }
}

impl DirectMap for Shooting {
    fn protect(
        &self,
        _range: PageblockRange,
        _from: Protection,
        _to: Protection,
        _split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        Ok(ProtectReport::default())
    }

    fn protect_frame(
        &self,
        _pfn: Pfn,
        _from: Protection,
        _to: Protection,
        _split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        Err(DirectMapError::Failed)
    }

    /// Posts a round and spins until CPU 1 acknowledges it.
    ///
    /// The interrupt is `unpark`, for a flaw of loom 0.7: when a thread
    /// takes a lock, loom blocks every other thread whose next step is a
    /// `try_lock` of it, as if that were a `lock`, until the lock is
    /// released (tokio-rs/loom#376). CPU 1 would then never run again
    /// while CPU 0 spins here, and loom would report a hang that no CPU
    /// can have. Unparked, CPU 1 takes its step: the `try_lock` fails and
    /// CPU 1 waits as a real CPU does. CPU 1 never blocks otherwise (the
    /// allocator's locks spin), so this wakes no real deadlock.
    fn flush(&self, _range: PageblockRange) -> FlushReport {
        let round = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let cpu1 = self
            .cpu1
            .get()
            .expect("CPU 1 is known before CPU 0 converts");
        while self.acknowledged.load(Ordering::Acquire) < round {
            cpu1.unpark();
            thread::yield_now();
        }
        FlushReport {
            local: 1,
            remote: 1,
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

    fn wait_for_lock(&self) {
        self.answer();
    }
}

/// CPU 0 takes a page-table page. Its cache refill converts the one whole
/// free pageblock and flushes it with a shootdown round, holding its cache
/// lock and the core lock. Meanwhile CPU 1 takes a kernel page (its refill
/// needs the core lock), frees it and drains every cache (CPU 0's lock
/// too), as a CPU short of memory does. Under every interleaving both
/// CPUs finish, with one conversion and one round, the page table in the
/// converted pageblock and every page back at the end: a CPU waiting for
/// a lock answers the round. With `wait_for_lock` a plain pause, CPU 0
/// waits for CPU 1 and CPU 1 for a lock CPU 0 holds, forever, and loom
/// stops the model (maximum number of branches).
#[test]
fn a_conversion_shootdown_is_answered_by_a_cpu_waiting_for_the_lock() {
    type Shot = PageAllocator<'static, Shooting, 2>;
    const PAGEBLOCK: u64 = 1 << PAGEBLOCK_ORDER;
    // The pageblock to convert, then one cache batch for CPU 1: its refill
    // takes that whole block, not a piece of the pageblock.
    const FRAMES: u64 = PAGEBLOCK + CACHE_BATCH as u64;
    model(|| {
        let meta: Vec<FrameMeta> = (0..FRAMES).map(|_| FrameMeta::new()).collect();
        let meta: &'static [FrameMeta] = Box::leak(meta.into_boxed_slice());
        let config = Config {
            page_table: PT,
            reserve_target: 0,
            conversion_watermark: 0,
            single_page_fallback: false,
            ..Config::default()
        };
        let alloc =
            Shot::new(meta, Pfn(0), config, Shooting::default()).expect("valid configuration");
        alloc
            .add_memory(Pfn(0), Pfn(FRAMES), KERNEL)
            .expect("fresh memory");
        let alloc = Arc::new(alloc);
        let done = Arc::new(AtomicBool::new(false));
        let (other, other_done) = (alloc.clone(), done.clone());
        let cpu1 = spawn(move || {
            let pfn = other
                .alloc(1, 0, KERNEL, AllocFlags::empty())
                .expect("a kernel page for CPU 1");
            other
                .free(1, pfn, 0)
                .expect("freeing a page just allocated");
            other.drain_caches();
            // Idle, interrupts on: the interrupt is answered here.
            while !other_done.load(Ordering::Acquire) {
                other.backend().answer();
                thread::yield_now();
            }
            pfn
        });
        alloc
            .backend()
            .cpu1
            .set(cpu1.thread().clone())
            .expect("CPU 1 is set once");
        let table = alloc
            .alloc(0, 0, PT, AllocFlags::empty())
            .expect("a page table from the converted pageblock");
        done.store(true, Ordering::Release);
        let kernel_page = cpu1.join().expect("CPU 1 passed");
        let stats = alloc.stats();
        assert_eq!(stats.conversion_batches, 1, "one conversion");
        assert_eq!(
            (stats.flushes_local, stats.flushes_remote),
            (1, 1),
            "one round"
        );
        assert!(
            table.0 < PAGEBLOCK,
            "page table {table:?} outside the converted pageblock"
        );
        assert!(
            kernel_page.0 >= PAGEBLOCK,
            "kernel page {kernel_page:?} inside the converted pageblock"
        );
        alloc.free(0, table, 0).expect("freeing the page table");
        alloc.drain_caches();
        let stats = alloc.stats();
        assert_eq!(stats.free_pages(PT), PAGEBLOCK, "page tables lost");
        assert_eq!(
            stats.free_pages(KERNEL),
            FRAMES - PAGEBLOCK,
            "kernel pages lost"
        );
        assert_eq!(stats.allocations, stats.frees);
    });
}
