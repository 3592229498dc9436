//! Four CPUs (threads) allocate and free at random on one shared
//! allocator over the simulated direct map. A shared set of owned frames,
//! updated around every operation, proves no frame is ever live on two
//! CPUs at once; at checkpoints all threads stop and the invariant checker
//! runs on the union of their live blocks; at the end everything is freed
//! and the checker passes on empty memory.

use ptalloc::sim::{self, LargestPage, SimDirectMap};
use ptalloc::*;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Barrier, Mutex};
use std::thread;

const CPUS: usize = 4;
const PT: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(1),
};
const SECRET: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};
const FREETYPES: [Freetype; 3] = [Freetype::KERNEL, PT, SECRET];
/// 16 MiB: tight, so that pageblocks go back and forth between freetypes.
const FRAMES: u64 = 8 * 512;
const OPS_PER_CPU: usize = 20_000;
const CHECK_EVERY: usize = 2500;
const MAX_LIVE_PER_CPU: usize = 160;
/// Steps during which a CPU prefers one freetype; demand shifts so that
/// freed pageblocks convert to what is wanted now.
const PHASE: usize = 1000;

/// xorshift64*: enough randomness, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Shared<'a, 'm> {
    alloc: &'a PageAllocator<'m, SimDirectMap, CPUS>,
    /// Every frame some CPU holds now.
    owned: Mutex<HashSet<u64>>,
    /// Live blocks published for a checkpoint.
    published: Mutex<Vec<(Pfn, u32, Freetype)>>,
    barrier: Barrier,
    failures: Mutex<Vec<String>>,
}

impl Shared<'_, '_> {
    fn fail(&self, message: String) {
        self.failures.lock().unwrap().push(message);
    }

    fn claim(&self, cpu: usize, pfn: Pfn, order: u32) {
        let mut owned = self.owned.lock().unwrap();
        for frame in pfn.0..pfn.0 + (1 << order) {
            if !owned.insert(frame) {
                self.fail(format!(
                    "CPU {cpu} got frame {frame:#x}, which another CPU holds"
                ));
            }
        }
    }

    fn release(&self, cpu: usize, pfn: Pfn, order: u32) {
        let mut owned = self.owned.lock().unwrap();
        for frame in pfn.0..pfn.0 + (1 << order) {
            if !owned.remove(&frame) {
                self.fail(format!(
                    "CPU {cpu} freed frame {frame:#x}, which no one held"
                ));
            }
        }
    }

    fn checkpoint(&self, cpu: usize, live: &[(Pfn, u32, Freetype)], managed: &[(Pfn, Pfn)]) {
        self.published.lock().unwrap().extend_from_slice(live);
        self.barrier.wait();
        if cpu == 0 {
            let all = std::mem::take(&mut *self.published.lock().unwrap());
            if let Err(error) = sim::check(self.alloc, PT, managed, &all) {
                self.fail(format!("checkpoint: {error}"));
            }
        }
        self.barrier.wait();
    }

    /// One CPU's work. Never panics on a failed expectation (that would
    /// leave the others waiting at a checkpoint): failures are recorded.
    fn run(&self, cpu: usize, managed: &[(Pfn, Pfn)]) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((cpu as u64 + 1) * 0x1234_5678_9ABC_DEF1));
        let mut live: Vec<(Pfn, u32, Freetype)> = Vec::new();
        for step in 1..=OPS_PER_CPU {
            let allocate = live.is_empty() || (live.len() < MAX_LIVE_PER_CPU && rng.below(5) < 3);
            let preferred = FREETYPES[(step / PHASE + cpu) % FREETYPES.len()];
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if rng.below(100) == 0 {
                    // Concurrently with the others' fast paths.
                    self.alloc.drain_caches();
                } else if allocate {
                    let order = [0, 0, 0, 0, 1, 2, 3][rng.below(7) as usize];
                    let ft = if rng.below(20) == 0 {
                        FREETYPES[rng.below(3) as usize]
                    } else {
                        preferred
                    };
                    let flags = if rng.below(4) == 0 {
                        AllocFlags::ZERO
                    } else {
                        AllocFlags::empty()
                    };
                    match self.alloc.alloc(cpu, order, ft, flags) {
                        Ok(pfn) => {
                            self.claim(cpu, pfn, order);
                            live.push((pfn, order, ft));
                        }
                        // Memory can run short while other CPUs' caches
                        // hold pages; nothing else may fail.
                        Err(AllocError::OutOfMemory) => {}
                        Err(error) => {
                            self.fail(format!("CPU {cpu}: alloc order {order} {ft}: {error:?}"))
                        }
                    }
                } else {
                    // Mostly what is out of favour now.
                    let mut at = rng.below(live.len() as u64) as usize;
                    for _ in 0..3 {
                        if live[at].2 != preferred {
                            break;
                        }
                        at = rng.below(live.len() as u64) as usize;
                    }
                    let (pfn, order, _) = live.swap_remove(at);
                    self.release(cpu, pfn, order);
                    // Sometimes through another CPU's cache.
                    let via = if rng.below(4) == 0 {
                        rng.below(CPUS as u64) as usize
                    } else {
                        cpu
                    };
                    if let Err(error) = self.alloc.free(via, pfn, order) {
                        self.fail(format!(
                            "CPU {cpu}: free {:#x} order {order} via CPU {via}: {error:?}",
                            pfn.0
                        ));
                    }
                }
            }));
            if outcome.is_err() {
                self.fail(format!("CPU {cpu} panicked at step {step}"));
            }
            if step % CHECK_EVERY == 0 {
                self.checkpoint(cpu, &live, managed);
            }
        }
        for (pfn, order, _) in live.drain(..) {
            self.release(cpu, pfn, order);
            if let Err(error) = self.alloc.free(cpu, pfn, order) {
                self.fail(format!("CPU {cpu}: final free {:#x}: {error:?}", pfn.0));
            }
        }
    }
}

#[test]
fn four_cpus_never_hold_the_same_frame() {
    let meta: Vec<FrameMeta> = (0..FRAMES).map(|_| FrameMeta::new()).collect();
    let sim = SimDirectMap::new(FRAMES, LargestPage::Giga, CPUS as u32);
    let config = Config {
        page_table: PT,
        reserve_target: 8,
        conversion_watermark: 0,
        single_page_fallback: false,
        ..Config::default()
    };
    let alloc = PageAllocator::<_, CPUS>::new(&meta, Pfn(0), config, sim).unwrap();
    alloc
        .add_memory(Pfn(0), Pfn(FRAMES), Freetype::KERNEL)
        .unwrap();
    let managed = [(Pfn(0), Pfn(FRAMES))];
    let shared = Shared {
        alloc: &alloc,
        owned: Mutex::new(HashSet::new()),
        published: Mutex::new(Vec::new()),
        barrier: Barrier::new(CPUS),
        failures: Mutex::new(Vec::new()),
    };
    thread::scope(|scope| {
        for cpu in 0..CPUS {
            let (shared, managed) = (&shared, &managed);
            scope.spawn(move || shared.run(cpu, managed));
        }
    });
    let failures = shared.failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(shared.owned.into_inner().unwrap().is_empty());

    alloc.drain_caches();
    sim::check(&alloc, PT, &managed, &[]).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.allocations, stats.frees);
    assert!(
        stats.allocations > (CPUS * OPS_PER_CPU / 3) as u64,
        "too few allocations: {}",
        stats.allocations
    );
    assert!(stats.conversion_batches > 0 && stats.cache_refills > 0 && stats.cache_drains > 0);
    println!(
        "{} allocations, {} conversion batches, {} flushes, {} failed, {} cache refills",
        stats.allocations,
        stats.conversion_batches,
        stats.flushes_local,
        stats.failed_allocations,
        stats.cache_refills
    );
}
