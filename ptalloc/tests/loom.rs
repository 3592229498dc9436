//! Loom models of the per-CPU cache hand-off (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ptalloc --test loom --release`).
//!
//! Under `--cfg loom` the allocator's locks and frame-state atomics are
//! loom's (src/sync.rs), so loom runs each model below under every
//! interleaving of two CPUs (threads) that can make a difference. The
//! models are small enough to explore without a preemption bound (a few
//! seconds in all); `LOOM_MAX_PREEMPTIONS=2` bounds them if they grow.
//! Memory is kernel memory only, on a direct map that never needs to
//! change: the models are about the caches and the core lock, not about
//! conversion. They check that no frame is live on two CPUs at once,
//! that a racing double free is refused exactly once, that a CPU out of
//! memory takes back the pages another CPU caches before it fails, and
//! that every page comes back once both CPUs are done.
#![cfg(loom)]

use loom::thread;
use ptalloc::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
/// model's main thread only waits for it).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let f = Arc::new(f);
    // Builder::new() reads LOOM_MAX_PREEMPTIONS and the like.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = builder.max_branches.max(100_000);
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
            self.0.lock().unwrap().insert(pfn.0),
            "frame {:#x} live on two CPUs at once",
            pfn.0
        );
    }

    fn release(&self, pfn: Pfn) {
        assert!(
            self.0.lock().unwrap().remove(&pfn.0),
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
#[test]
fn cache_refills_and_cross_cpu_frees_hand_each_frame_to_one_cpu() {
    const FRAMES: u64 = 2 * CACHE_BATCH as u64;
    model(|| {
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
