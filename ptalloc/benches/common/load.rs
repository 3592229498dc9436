//! The fragmentation load (described in `benches/fragmentation.rs`),
//! generated once per seed, and its replay on ptalloc over the checking
//! simulator: shared by the fragmentation and strategies benchmarks.

use super::{MAPPED, Rng};
use ptalloc::sim::{SimDirectMap, SimMover};
use ptalloc::{
    AllocError, AllocFlags, Freetype, Mobility, PAGEBLOCK_ORDER, PageAllocator, Pfn, Protection,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Movable user memory, the bulk of the data blocks.
pub const USER: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};

/// Largest data block order.
pub const MAX_DATA_ORDER: u32 = PAGEBLOCK_ORDER;
/// Data block orders, 0 to [`MAX_DATA_ORDER`].
pub const DATA_ORDERS: usize = MAX_DATA_ORDER as usize + 1;

/// Seeds every machine runs.
pub const SEEDS: [u64; 3] = [0x5eed_f001, 0x5eed_f002, 0x5eed_f003];
/// Fill swings per run: 90% full, then 60%, then 90%, and so on.
pub const HALF_SWINGS: usize = 8;
/// One allocation in this many is a page-table page.
pub const PT_ONE_IN: usize = 16;
/// Fill bounds, in percent of the machine's frames.
pub const LOW_PERCENT: u64 = 60;
/// The top of a swing.
pub const HIGH_PERCENT: u64 = 90;

/// Page-table pages allocated at once at every peak of the burst load:
/// 4 pageblocks' worth, a large address space built in one go.
pub const PT_BURST: usize = 2048;
/// How full the burst load gets before each burst.
pub const BURST_HIGH_PERCENT: u64 = 98;

/// ptalloc as the benchmarks replay it: two CPU caches.
pub type Ours<'m> = PageAllocator<'m, SimDirectMap, 2>;

/// One operation of the load. Blocks are named by the index of the
/// operation that allocated them.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Data {
        order: u32,
        freetype: Freetype,
        cpu: usize,
    },
    PageTable {
        cpu: usize,
    },
    Free {
        block: usize,
        cpu: usize,
    },
}

/// The load of one seed on one machine, generated before either side runs.
pub struct Load {
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Load {
    /// The load; `pt_burst` page-table pages more are allocated at once at
    /// every peak (a large address space built in one go), 0 for none.
    pub fn generate(machine_frames: u64, seed: u64, high_percent: u64, pt_burst: usize) -> Self {
        let mut rng = Rng::new(seed);
        // Count weights from frame shares: share_k / 2^k, in parts per
        // 2^20 of the order-0 weight.
        let shares: [u64; DATA_ORDERS] = [45, 5, 5, 5, 5, 5, 5, 5, 5, 15];
        let weights: Vec<u64> = shares
            .iter()
            .enumerate()
            .map(|(order, share)| (share << 20) >> order)
            .collect();
        let total_weight: u64 = weights.iter().sum();
        let (low, high) = (
            machine_frames * LOW_PERCENT / 100,
            machine_frames * high_percent / 100,
        );
        let mut ops = Vec::new();
        // Frames each allocation asked for (0 for frees), by operation.
        let mut frames = Vec::new();
        let mut live: Vec<usize> = Vec::new();
        let mut filled = 0u64;
        let mut filling = true;
        let mut half_swings = 0;
        while half_swings < HALF_SWINGS {
            let cpu = (rng.next_u64() & 1) as usize;
            if filling {
                let op = if rng.below(PT_ONE_IN) == 0 {
                    Op::PageTable { cpu }
                } else {
                    let mut pick = rng.next_u64() % total_weight;
                    let order = weights
                        .iter()
                        .position(|&w| {
                            let hit = pick < w;
                            pick = pick.saturating_sub(w);
                            hit
                        })
                        .unwrap_or(0) as u32;
                    let freetype = if rng.below(3) == 0 { MAPPED } else { USER };
                    Op::Data {
                        order,
                        freetype,
                        cpu,
                    }
                };
                let size = match op {
                    Op::Data { order, .. } => 1 << order,
                    _ => 1,
                };
                live.push(ops.len());
                ops.push(op);
                frames.push(size);
                filled += size;
                if filled >= high {
                    for _ in 0..pt_burst {
                        let cpu = (rng.next_u64() & 1) as usize;
                        live.push(ops.len());
                        ops.push(Op::PageTable { cpu });
                        frames.push(1);
                        filled += 1;
                    }
                    filling = false;
                    half_swings += 1;
                }
            } else {
                let at = rng.below(live.len());
                let block = live.swap_remove(at);
                filled -= frames[block];
                ops.push(Op::Free { block, cpu });
                frames.push(0);
                if filled <= low {
                    filling = true;
                    half_swings += 1;
                }
            }
        }
        Self { ops }
    }
}

/// Runs `f` and adds its duration to `spent`: the figures time the
/// allocator calls only, not the replay's own bookkeeping (the owner's
/// books, the move log), the same way on both sides.
pub fn timed<T>(spent: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let result = f();
    *spent += start.elapsed();
    result
}

/// Replays `load` on `alloc`, whose movable blocks belong to `owner` (it
/// checks every move compaction makes; the replay follows them). `seen`
/// hears of each allocation as it returns and of each free made (with the
/// frame freed); the allocator calls alone are timed into `spent`. A block
/// that could not be allocated is not freed later.
pub fn replay(
    load: &Load,
    alloc: &Ours<'_>,
    owner: &SimMover,
    spent: &mut Duration,
    mut seen: impl FnMut(&Op, Result<Pfn, AllocError>),
) {
    let mut held: Vec<Option<(Pfn, u32)>> = vec![None; load.ops.len()];
    // Movable blocks by first frame: which operation allocated them.
    let mut movable: HashMap<u64, usize> = HashMap::new();
    for (i, op) in load.ops.iter().enumerate() {
        match *op {
            Op::Data {
                order,
                freetype,
                cpu,
            } => {
                let result = timed(spent, || {
                    alloc.alloc(cpu, order, freetype, AllocFlags::empty())
                });
                if let Ok(pfn) = result {
                    held[i] = Some((pfn, order));
                    if freetype.mobility == Mobility::Movable {
                        owner.hold(pfn, order, freetype);
                        movable.insert(pfn.0, i);
                    }
                }
                seen(op, result);
            }
            Op::PageTable { cpu } => {
                let result = timed(spent, || {
                    alloc.alloc(cpu, 0, super::PT, AllocFlags::empty())
                });
                if let Ok(pfn) = result {
                    held[i] = Some((pfn, 0));
                }
                seen(op, result);
            }
            Op::Free { block, cpu } => {
                if let Some((pfn, order)) = held[block].take() {
                    if movable.remove(&pfn.0).is_some() {
                        owner.release(pfn);
                    }
                    timed(spent, || alloc.free(cpu, pfn, order)).expect("freeing a live block");
                    seen(op, Ok(pfn));
                }
            }
        }
        // Follow the blocks compaction moved.
        for (from, to) in owner.take_moves() {
            if let Some(block) = movable.remove(&from.0) {
                movable.insert(to.0, block);
                if let Some((pfn, _)) = held[block].as_mut() {
                    *pfn = to;
                }
            }
        }
    }
}
