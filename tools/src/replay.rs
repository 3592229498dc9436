//! Host replay of page-table traces against `ptalloc` on its simulated
//! direct map (`ptalloc::sim`).
//!
//! A [`Machine`] is the simulated memory: RAM from frame 0 with the first
//! pageblock left out (standing in for the first MiB and the kernel
//! image), given to the allocator as `Mapped` kernel memory and the split
//! reserve filled, as the kernel's `memory::frames::init` does. Every `A`
//! of a trace is one zeroed order-0 page of the page-table freetype on
//! CPU 0 (the level is counted, not acted on: every level is one 4 KiB
//! page-table page); every `D` is a block of ordinary kernel memory
//! (`Freetype::KERNEL`) of its order; `F` frees either.
//!
//! What a replay promises: it never panics on a trace (an allocation that
//! fails is counted and its later `F` skipped); it reports the allocator's
//! [`Stats`] and the simulator's counters at the end and at the peak (the
//! first event at which most page tables were live), the simulated
//! verification walk at the peak (`ptalloc::sim::unprotected_page_tables`
//! over the live page tables: each one found without the key is a
//! violation, as the kernel's walk counts them), and the result of
//! `ptalloc::sim::check`, every invariant the simulator knows, over the
//! pages and blocks still live at the end (exposed page tables are counted
//! there, not failed); and it can take [`Dump`]s of the pageblock map at
//! the peak and the end, the same pictures the kernel's `memmap` dumps
//! give. [`ReplayReport::metrics`] names its figures as the policy lab
//! does (`crate::lab::METRICS`), so host and kernel runs compare key by
//! key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ptalloc::sim::{LargestPage, SimCounters, SimDirectMap, TableLevel};
use ptalloc::{
    AllocFlags, Config, FrameMeta, FrameState, Freetype, MAX_ORDER, Mobility, NR_FREETYPES,
    PAGEBLOCK_ORDER, PageAllocator, Pfn, Protection, Stats,
};
use serde_json::{Map, Value, json};

use crate::memmap::{Dump, MapPage, Pageblock, fill_for};
use crate::trace::{Event, Trace, TraceSummary};

/// The page-table freetype, as the kernel configures it.
pub const PAGE_TABLES: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(pkeys::PAGE_TABLE_KEY.index()),
};
/// The kernel's split-reserve target (`memory::frames::RESERVE_TARGET`).
pub const KERNEL_RESERVE_TARGET: usize = 8;
/// Below this many whole free pageblocks the kernel keeps no conversion
/// watermark (`memory::frames::conversion_watermark`).
const KERNEL_WATERMARK_FROM: u64 = 512;
/// Frames in a pageblock (2 MiB).
pub const PAGEBLOCK_FRAMES: u64 = 1 << PAGEBLOCK_ORDER;

/// The allocator a replay drives: one CPU.
pub type SimAllocator<'m> = PageAllocator<'m, SimDirectMap, 1>;

/// The simulated machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// RAM in frames, from frame 0 (a whole number of pageblocks).
    pub frames: u64,
    /// The direct map's largest page.
    pub largest: LargestPage,
}

impl Default for Machine {
    /// 2 GiB with 1 GiB pages: big enough for the kernel's conversion
    /// watermark to apply, small enough to dump quickly.
    fn default() -> Self {
        Self {
            frames: 2 << (30 - 12),
            largest: LargestPage::Giga,
        }
    }
}

impl Machine {
    /// The first frame given to the allocator.
    pub fn first_managed(&self) -> u64 {
        PAGEBLOCK_FRAMES
    }
}

/// The `Config` the kernel uses today on `machine`, mirroring
/// `kernel/src/memory/frames.rs`: the page-table key, a reserve of 8, the
/// default watermark on machines of 1 GiB or more, and the single-page
/// fallback.
pub fn kernel_config(machine: &Machine) -> Config {
    let whole = machine.frames.saturating_sub(machine.first_managed()) / PAGEBLOCK_FRAMES;
    Config {
        page_table: PAGE_TABLES,
        reserve_target: KERNEL_RESERVE_TARGET,
        conversion_watermark: if whole >= KERNEL_WATERMARK_FROM {
            ptalloc::DEFAULT_CONVERSION_WATERMARK
        } else {
            0
        },
        single_page_fallback: true,
        ..Config::default()
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The machine is too small or misshapen.
    #[error("bad machine: {0}")]
    Machine(String),
    /// The allocator refused its set-up.
    #[error("allocator set-up failed: {0}")]
    Init(String),
    /// A free the allocator refused: an allocator bug, not a trace error
    /// (the trace was checked when parsed).
    #[error("event {event}: freeing the page of id {id} failed: {error}")]
    Free {
        /// Index of the event.
        event: usize,
        /// The id.
        id: u64,
        /// What the allocator said.
        error: String,
    },
}

/// What a replay found.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    /// The machine it ran on.
    pub machine: Machine,
    /// Counts over the trace.
    pub summary: TraceSummary,
    /// Page-table allocations that failed (their frees were skipped).
    pub failed: u64,
    /// The first page-table failure, as the allocator worded it.
    pub first_failure: Option<String>,
    /// Data block allocations that failed (their frees were skipped).
    pub data_failed: u64,
    /// The allocator's counters at the peak.
    pub stats_at_peak: Stats,
    /// The allocator's counters at the end.
    pub stats: Stats,
    /// The simulator's counters at the end.
    pub sim: SimCounters,
    /// The simulated verification walk at the peak.
    pub walk_at_peak: Walk,
    /// Free page-table frames (free lists and caches) at the peak.
    pub free_pt_frames_at_peak: u64,
    /// Free page-table frames at the end.
    pub free_pt_frames_at_end: u64,
    /// `ptalloc::sim::check` at the end: `Ok` or the first broken rule.
    pub check: Result<(), String>,
    /// Pageblock maps at the peak and at the end, if asked for.
    pub dumps: Vec<Dump>,
    /// Wall time of the replay (not of the dumps or the walk).
    pub elapsed: Duration,
}

/// The simulated verification walk: the live page tables, and those of
/// them the direct map does not give the page-table key (exposed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Live page tables walked.
    pub tables: u64,
    /// Of those, the ones without the key.
    pub violations: u64,
}

/// What an id of the trace holds while it lives.
#[derive(Clone, Copy, Debug)]
struct Held {
    pfn: Pfn,
    order: u32,
    freetype: Freetype,
}

/// Free page-table frames: protected, unused, and not the reserve.
fn free_pt_frames(stats: &Stats) -> u64 {
    stats.free_pages(PAGE_TABLES) + stats.cached_pages[PAGE_TABLES.index()]
}

/// The walk over the live page tables of `live`.
fn walk(alloc: &SimAllocator<'_>, live: &HashMap<u64, Held>) -> Walk {
    let tables: Vec<(Pfn, u32, Freetype)> = live
        .values()
        .filter(|h| h.freetype == PAGE_TABLES)
        .map(|h| (h.pfn, h.order, h.freetype))
        .collect();
    let exposed = ptalloc::sim::unprotected_page_tables(alloc.backend(), PAGE_TABLES, &tables);
    Walk {
        tables: tables.len() as u64,
        violations: exposed.len() as u64,
    }
}

/// Replays `trace` on `machine` with `config`. With `label`, takes dumps
/// labelled `<label>-peak` and `<label>-end`.
pub fn replay(
    trace: &Trace,
    machine: &Machine,
    config: Config,
    label: Option<&str>,
) -> Result<ReplayReport, ReplayError> {
    if machine.frames <= machine.first_managed()
        || !machine.frames.is_multiple_of(PAGEBLOCK_FRAMES)
        || machine.frames > 1 << 32
    {
        return Err(ReplayError::Machine(format!(
            "{} frames: expected a whole number of 2 MiB pageblocks, more than one, at most 16 TiB",
            machine.frames
        )));
    }
    let meta: Vec<FrameMeta> = (0..machine.frames).map(|_| FrameMeta::new()).collect();
    let map = SimDirectMap::new(machine.frames, machine.largest, 1);
    let alloc = SimAllocator::new(&meta, Pfn(0), config, map)
        .map_err(|e| ReplayError::Init(e.to_string()))?;
    let managed = (Pfn(machine.first_managed()), Pfn(machine.frames));
    alloc
        .add_memory(managed.0, managed.1, Freetype::KERNEL)
        .map_err(|e| ReplayError::Init(e.to_string()))?;
    alloc
        .refill_reserve()
        .map_err(|e| ReplayError::Init(format!("filling the split reserve: {e}")))?;

    let summary = trace.summary();
    let started = Instant::now();
    let mut paused_for = Duration::ZERO;
    let mut live: HashMap<u64, Held> = HashMap::new();
    let mut failed = 0u64;
    let mut data_failed = 0u64;
    let mut first_failure = None;
    let mut stats_at_peak = alloc.stats();
    let mut walk_at_peak = Walk::default();
    let mut dumps = Vec::new();
    for (at, event) in trace.events.iter().enumerate() {
        match *event {
            Event::Alloc { id, .. } => match alloc.alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO) {
                Ok(pfn) => {
                    let held = Held {
                        pfn,
                        order: 0,
                        freetype: PAGE_TABLES,
                    };
                    live.insert(id, held);
                }
                Err(error) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| format!("event {at}: {error}"));
                }
            },
            Event::Data { id, order } => {
                let order = u32::from(order);
                match alloc.alloc(0, order, Freetype::KERNEL, AllocFlags::empty()) {
                    Ok(pfn) => {
                        let held = Held {
                            pfn,
                            order,
                            freetype: Freetype::KERNEL,
                        };
                        live.insert(id, held);
                    }
                    // Memory pressure is what data blocks are for: counted.
                    Err(_) => data_failed += 1,
                }
            }
            Event::Free { id } => {
                // An id whose allocation failed has nothing to free.
                if let Some(held) = live.remove(&id) {
                    alloc
                        .free(0, held.pfn, held.order)
                        .map_err(|e| ReplayError::Free {
                            event: at,
                            id,
                            error: e.to_string(),
                        })?;
                }
            }
        }
        if at == summary.peak_at && summary.peak_live > 0 {
            let paused = Instant::now();
            stats_at_peak = alloc.stats();
            walk_at_peak = walk(&alloc, &live);
            if let Some(label) = label {
                dumps.push(dump_of(&alloc, machine.largest, &format!("{label}-peak")));
            }
            paused_for += paused.elapsed();
        }
    }
    let elapsed = started.elapsed().saturating_sub(paused_for);
    let stats = alloc.stats();
    if let Some(label) = label {
        dumps.push(dump_of(&alloc, machine.largest, &format!("{label}-end")));
    }
    let live_blocks: Vec<(Pfn, u32, Freetype)> = live
        .values()
        .map(|h| (h.pfn, h.order, h.freetype))
        .collect();
    let check = ptalloc::sim::check(&alloc, PAGE_TABLES, &[managed], &live_blocks);
    Ok(ReplayReport {
        machine: *machine,
        summary,
        failed,
        first_failure,
        data_failed,
        free_pt_frames_at_peak: free_pt_frames(&stats_at_peak),
        free_pt_frames_at_end: free_pt_frames(&stats),
        stats_at_peak,
        sim: alloc.backend().counters(),
        walk_at_peak,
        stats,
        check,
        dumps,
        elapsed,
    })
}

/// The pageblock map of `alloc` now, in the kernel's dump format: each
/// pageblock's freetype, its fill (allocated blocks, the reserve and
/// direct-map tables count as used) and how the simulated direct map
/// covers it (`largest`: the page the map started with).
pub fn dump_of(alloc: &SimAllocator<'_>, largest: LargestPage, label: &str) -> Dump {
    let frames = alloc.frames();
    let base = alloc.base().0;
    let pageblocks = frames.div_ceil(PAGEBLOCK_FRAMES) as usize;
    let mut used = vec![0u64; pageblocks];
    // A pageblock is managed if any of its frames is not a hole (the
    // metadata of a hole still names a freetype).
    let mut managed = vec![false; pageblocks];
    let mut i = 0u64;
    while i < frames {
        let (len, is_used, hole) = match alloc.frame_info(Pfn(base + i)) {
            Some(info) => match info.state {
                FrameState::FreeHead => (1u64 << info.order, false, false),
                FrameState::AllocatedHead => (1u64 << info.order, true, false),
                FrameState::Reserve | FrameState::DirectMapTable => (1, true, false),
                FrameState::Cached | FrameState::Tail => (1, false, false),
                FrameState::Hole => (1, false, true),
            },
            None => (1, false, true),
        };
        let len = len.clamp(1, frames - i);
        if !hole {
            let last = (i + len - 1) / PAGEBLOCK_FRAMES;
            for m in &mut managed[(i / PAGEBLOCK_FRAMES) as usize..=last as usize] {
                *m = true;
            }
        }
        if is_used {
            // A block of a pageblock or more fills each one it covers.
            let mut at = i;
            while at < i + len {
                let block_end = ((at / PAGEBLOCK_FRAMES) + 1) * PAGEBLOCK_FRAMES;
                let piece = block_end.min(i + len) - at;
                used[(at / PAGEBLOCK_FRAMES) as usize] += piece;
                at += piece;
            }
        }
        i += len;
    }
    let sim = alloc.backend();
    let mut split = vec![false; pageblocks];
    let mut giga_split = vec![false; (frames >> MAX_ORDER) as usize + 1];
    for table in sim.table_records() {
        let index = table.maps.0.saturating_sub(base);
        match table.level {
            TableLevel::Table => {
                if let Some(s) = split.get_mut((index / PAGEBLOCK_FRAMES) as usize) {
                    *s = true;
                }
            }
            TableLevel::Directory => {
                if let Some(g) = giga_split.get_mut((index >> MAX_ORDER) as usize) {
                    *g = true;
                }
            }
        }
    }
    let boot_mega = largest == LargestPage::Mega;
    let blocks = (0..pageblocks)
        .map(|p| {
            let head = base + p as u64 * PAGEBLOCK_FRAMES;
            let page = if split[p] {
                MapPage::Split
            } else if head < sim.frames() && sim.protection_of(Pfn(head)) == Protection::Unmapped {
                MapPage::Absent
            } else if boot_mega || giga_split[(head - base) as usize >> MAX_ORDER] {
                MapPage::Mega
            } else {
                MapPage::Giga
            };
            let freetype = alloc
                .frame_info(Pfn(head))
                .and_then(|info| info.pageblock_freetype)
                .filter(|_| managed[p]);
            match freetype {
                Some(freetype) => Pageblock {
                    freetype: Some(freetype),
                    fill: fill_for(used[p]),
                    page,
                },
                None => Pageblock::unmanaged(page),
            }
        })
        .collect();
    Dump {
        label: label.to_string(),
        first: base,
        blocks,
    }
}

/// Every field of `stats` as JSON: scalars as numbers, per-freetype
/// arrays as objects keyed by freetype name (zeros left out).
pub fn stats_json(stats: &Stats) -> Value {
    // Destructured whole, so a counter added to Stats cannot be left out
    // of the reports unnoticed: this stops compiling.
    let Stats {
        free_blocks,
        cached_pages,
        pageblocks,
        conversions,
        conversion_batches,
        flushes_local,
        flushes_remote,
        splits_1g,
        splits_2m,
        direct_map_tables,
        reserve_level,
        reserve_low_water,
        reserve_refills,
        reserve_taken,
        allocations,
        frees,
        failed_allocations,
        cache_refills,
        cache_drains,
        drains_before_failing,
        stolen_blocks,
        watermark_refusals,
        single_page_fallbacks,
        single_pages_live,
        compactions,
        compactions_failed,
        pages_moved,
        migrations_refused,
        page_protects,
        page_unprotects,
        page_table_failures,
        stranded_protected,
        exposed_tables,
        exposed_live,
        exposure_allocations,
        direct_map,
    } = stats;
    let by_freetype = |values: &[u64; NR_FREETYPES]| -> Value {
        let mut map = Map::new();
        for freetype in Freetype::all() {
            let v = values[freetype.index()];
            if v != 0 {
                map.insert(freetype.to_string(), json!(v));
            }
        }
        Value::Object(map)
    };
    let mut free = Map::new();
    for freetype in Freetype::all() {
        let orders: Map<String, Value> = free_blocks[freetype.index()]
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != 0)
            .map(|(order, n)| (order.to_string(), json!(n)))
            .collect();
        if !orders.is_empty() {
            free.insert(freetype.to_string(), Value::Object(orders));
        }
    }
    let mut converted = Vec::new();
    for from in Freetype::all() {
        for to in Freetype::all() {
            let n = conversions[from.index()][to.index()];
            if n != 0 {
                converted
                    .push(json!({"from": from.to_string(), "to": to.to_string(), "pageblocks": n}));
            }
        }
    }
    json!({
        "free_blocks_by_order": free,
        "cached_pages": by_freetype(cached_pages),
        "pageblocks": by_freetype(pageblocks),
        "conversions": converted,
        "conversion_batches": conversion_batches,
        "flushes_local": flushes_local,
        "flushes_remote": flushes_remote,
        "splits_1g": splits_1g,
        "splits_2m": splits_2m,
        "direct_map_tables": direct_map_tables,
        "reserve_level": reserve_level,
        "reserve_low_water": reserve_low_water,
        "reserve_refills": reserve_refills,
        "reserve_taken": reserve_taken,
        "allocations": allocations,
        "frees": frees,
        "failed_allocations": failed_allocations,
        "cache_refills": cache_refills,
        "cache_drains": cache_drains,
        "drains_before_failing": drains_before_failing,
        "stolen_blocks": stolen_blocks,
        "watermark_refusals": watermark_refusals,
        "single_page_fallbacks": single_page_fallbacks,
        "single_pages_live": single_pages_live,
        "compactions": compactions,
        "compactions_failed": compactions_failed,
        "pages_moved": pages_moved,
        "migrations_refused": migrations_refused,
        "page_protects": page_protects,
        "page_unprotects": page_unprotects,
        "page_table_failures": page_table_failures,
        "stranded_protected": stranded_protected,
        "exposed_tables": exposed_tables,
        "exposed_live": exposed_live,
        "exposure_allocations": exposure_allocations,
        "direct_map": direct_map.map(|m| json!({
            "pages_1g": m.pages_1g,
            "pages_2m": m.pages_2m,
            "pages_4k": m.pages_4k,
        })),
    })
}

/// Every simulator counter as JSON (destructured whole, as [`stats_json`]).
pub fn sim_json(counters: &SimCounters) -> Value {
    let SimCounters {
        protect_calls,
        protect_page_calls,
        protect_failures,
        no_split_page,
        pageblocks_protected,
        splits_1g,
        splits_2m,
        split_pages_used,
        flushes_local,
        flushes_remote,
        unneeded_flushes,
        zero_calls,
        zero_failures,
        frames_zeroed,
        reentries,
    } = counters;
    json!({
        "protect_calls": protect_calls,
        "protect_page_calls": protect_page_calls,
        "protect_failures": protect_failures,
        "no_split_page": no_split_page,
        "pageblocks_protected": pageblocks_protected,
        "splits_1g": splits_1g,
        "splits_2m": splits_2m,
        "split_pages_used": split_pages_used,
        "flushes_local": flushes_local,
        "flushes_remote": flushes_remote,
        "unneeded_flushes": unneeded_flushes,
        "zero_calls": zero_calls,
        "zero_failures": zero_failures,
        "frames_zeroed": frames_zeroed,
        "reentries": reentries,
    })
}

impl ReplayReport {
    /// The figures the lab compares, by name: the names and meanings of
    /// `crate::lab::METRICS` where the kernel has the same figure
    /// (counters over the whole trace; levels and the walk at the peak),
    /// then figures only the simulator has.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let (s, p) = (&self.stats, &self.stats_at_peak);
        let tables = self.summary.total_allocations() - self.failed;
        let dm = p.direct_map.unwrap_or_default();
        let pt = PAGE_TABLES.index();
        let to_pt: u64 = s.conversions.iter().map(|to| to[pt]).sum();
        let from_pt: u64 = s.conversions[pt].iter().sum();
        let n = |v: u64| v as f64;
        vec![
            // Shared with the kernel's `lab:` line.
            ("ops", n(self.summary.events())),
            ("pt_allocs", n(tables)),
            ("pt_failures", n(s.page_table_failures)),
            ("failed_allocs", n(s.failed_allocations)),
            ("flushes", n(s.flushes_local)),
            ("flushes_per_1000", per_thousand(s.flushes_local, tables)),
            ("flushes_remote", n(s.flushes_remote)),
            ("splits_1g", n(s.splits_1g)),
            ("splits_2m", n(s.splits_2m)),
            ("page_protects", n(s.page_protects)),
            ("page_unprotects", n(s.page_unprotects)),
            ("conversions", n(s.total_conversions())),
            ("reserve_taken", n(s.reserve_taken)),
            ("exposed_tables", n(s.exposed_tables)),
            ("exposure_allocs", n(s.exposure_allocations)),
            ("dm_1g", n(dm.pages_1g)),
            ("dm_2m", n(dm.pages_2m)),
            ("dm_4k", n(dm.pages_4k)),
            ("stranded", n(p.stranded_protected)),
            ("reserve_level", n(p.reserve_level)),
            ("reserve_low_water", n(p.reserve_low_water)),
            ("exposed_live", n(p.exposed_live)),
            ("walk_tables", n(self.walk_at_peak.tables)),
            ("walk_violations", n(self.walk_at_peak.violations)),
            // The simulator's alone.
            ("conversions_to_pt", n(to_pt)),
            ("conversions_from_pt", n(from_pt)),
            ("conversion_batches", n(s.conversion_batches)),
            ("single_page_fallbacks", n(s.single_page_fallbacks)),
            ("compactions", n(s.compactions)),
            ("data_failed", n(self.data_failed)),
            ("pt_pageblocks_peak", n(p.pageblocks[pt])),
            ("check_failed", f64::from(u8::from(self.check.is_err()))),
            ("seconds", self.elapsed.as_secs_f64()),
        ]
    }

    /// The whole report as JSON: the machine, the trace's counts, the
    /// metrics, the allocator's stats at the peak and the end, the
    /// simulator's counters, the walk and the invariant check.
    pub fn to_json(&self) -> Value {
        let s = &self.summary;
        let metrics: Map<String, Value> = self
            .metrics()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "machine": {
                "frames": self.machine.frames,
                "largest_page": largest_name(self.machine.largest),
            },
            "trace": {
                "events": s.events(),
                "allocations_by_level": {"PT": s.allocations[0], "PD": s.allocations[1], "PDPT": s.allocations[2], "PML4": s.allocations[3]},
                "frees": s.frees,
                "peak_live": s.peak_live,
                "live_at_end": s.live_at_end,
                "data_allocations": s.data_allocations,
                "data_frames": s.data_frames,
                "data_frees": s.data_frees,
            },
            "failed_allocations": self.failed,
            "first_failure": self.first_failure,
            "failed_data_allocations": self.data_failed,
            "free_page_table_frames": {"peak": self.free_pt_frames_at_peak, "end": self.free_pt_frames_at_end},
            "walk_at_peak": {"tables": self.walk_at_peak.tables, "violations": self.walk_at_peak.violations},
            "metrics": metrics,
            "stats": stats_json(&self.stats),
            "stats_at_peak": stats_json(&self.stats_at_peak),
            "sim": sim_json(&self.sim),
            "check": match &self.check { Ok(()) => Value::from("ok"), Err(e) => Value::from(e.clone()) },
        })
    }
}

/// `1G` or `2M`: a simulated direct map's largest page, as results name it.
pub fn largest_name(largest: LargestPage) -> &'static str {
    match largest {
        LargestPage::Giga => "1G",
        LargestPage::Mega => "2M",
    }
}

fn per_thousand(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 1000.0 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Pattern, generate, parse};

    fn small() -> Machine {
        Machine {
            frames: 64 * PAGEBLOCK_FRAMES,
            largest: LargestPage::Mega,
        }
    }

    #[test]
    fn a_replay_reports_stats_dumps_and_a_passing_check() {
        let trace = parse("A 1 4\nA 2 3\nA 3 2\nA 4 1\nF 4\nF 3\n").unwrap_or_default();
        let machine = small();
        let report = match replay(&trace, &machine, kernel_config(&machine), Some("t")) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.check, Ok(()));
        assert_eq!(report.failed, 0);
        assert_eq!(report.summary.peak_live, 4);
        // Four tables and the reserve came from one converted pageblock.
        assert_eq!(report.stats.pageblocks[PAGE_TABLES.index()], 1);
        assert_eq!(report.stats.flushes_local, 1);
        assert_eq!(report.stats.allocations, 4);
        let labels: Vec<&str> = report.dumps.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["t-peak", "t-end"]);
        let end = &report.dumps[1];
        assert_eq!(end.blocks.len(), 64);
        assert_eq!(end.blocks[0], Pageblock::unmanaged(MapPage::Mega));
        let pt: Vec<&Pageblock> = end
            .blocks
            .iter()
            .filter(|b| b.freetype == Some(PAGE_TABLES))
            .collect();
        assert_eq!(pt.len(), 1);
        // The reserve (8) and two live tables, and more at the peak.
        assert_eq!(pt[0].fill, fill_for(8 + 2));
        let peak_pt = report.dumps[0]
            .blocks
            .iter()
            .find(|b| b.freetype == Some(PAGE_TABLES));
        assert_eq!(peak_pt.map(|b| b.fill), Some(fill_for(8 + 4)));
        let json = report.to_json();
        assert_eq!(json["check"], "ok");
        assert_eq!(json["trace"]["allocations_by_level"]["PML4"], 1);
        assert_eq!(json["stats"]["pageblocks"]["unmovable/pkey1"], 1);
        assert_eq!(json["metrics"]["flushes"], 1.0);
    }

    #[test]
    fn failures_are_counted_and_their_frees_skipped() {
        // Two pageblocks of RAM, one managed: at most 512 pages.
        let machine = Machine {
            frames: 2 * PAGEBLOCK_FRAMES,
            largest: LargestPage::Mega,
        };
        let mut text = String::new();
        for id in 0..600 {
            text.push_str(&format!("A {id} 1\n"));
        }
        for id in 0..600 {
            text.push_str(&format!("F {id}\n"));
        }
        let trace = parse(&text).unwrap_or_default();
        let report = match replay(&trace, &machine, kernel_config(&machine), None) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert!(report.failed > 88, "{}", report.failed);
        assert!(report.first_failure.is_some());
        assert_eq!(report.check, Ok(()));
        assert!(report.dumps.is_empty());
    }

    #[test]
    fn data_blocks_take_memory_and_their_failures_are_counted() {
        // 16 pageblocks, 15 managed: 30 halves fit, the rest fail; the
        // second halves freed leave no pageblock whole and free.
        let machine = Machine {
            frames: 16 * PAGEBLOCK_FRAMES,
            largest: LargestPage::Mega,
        };
        let mut text = String::new();
        for id in 0..40 {
            text.push_str(&format!("D {id} 8\n"));
        }
        for id in (1..40).step_by(2) {
            text.push_str(&format!("F {id}\n"));
        }
        // More page tables than the reserve's pageblock holds.
        for id in 100..700 {
            text.push_str(&format!("A {id} 1\n"));
        }
        let trace = parse(&text).unwrap_or_default();
        let mut config = kernel_config(&machine);
        config.single_page_fallback = false;
        let report = match replay(&trace, &machine, config, None) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.check, Ok(()));
        // The reserve's pageblock is converted at set-up: 28 halves fit.
        assert_eq!(report.data_failed, 40 - 28);
        assert!(report.failed > 0, "page tables ran short");
        assert_eq!(report.stats.page_table_failures, report.failed);
        let m: HashMap<&str, f64> = report.metrics().into_iter().collect();
        assert_eq!(m["pt_failures"], report.failed as f64);
        assert_eq!(
            m["failed_allocs"],
            (report.failed + report.data_failed) as f64
        );
        assert_eq!(m["data_failed"], report.data_failed as f64);
        assert_eq!(m["walk_violations"], 0.0);
        // The dodge: the same trace exposes what failed, and the walk at
        // the peak (the end) finds every exposed table.
        config.pt_fallback = ptalloc::PtFallback::Unprotected;
        let report = match replay(&trace, &machine, config, None) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.check, Ok(()));
        assert_eq!(report.failed, 0);
        assert!(report.stats.exposed_tables > 0);
        assert_eq!(report.walk_at_peak.violations, report.stats.exposed_live);
        assert_eq!(report.walk_at_peak.tables, 600);
    }

    #[test]
    fn bad_machines_are_refused() {
        for frames in [0, PAGEBLOCK_FRAMES, PAGEBLOCK_FRAMES * 3 + 1] {
            let machine = Machine {
                frames,
                largest: LargestPage::Giga,
            };
            let r = replay(&Trace::default(), &machine, kernel_config(&machine), None);
            assert!(matches!(r, Err(ReplayError::Machine(_))), "{frames}");
        }
    }

    #[test]
    fn a_giga_map_shows_the_split_it_needed() {
        let machine = Machine::default();
        assert_eq!(
            kernel_config(&machine).conversion_watermark,
            ptalloc::DEFAULT_CONVERSION_WATERMARK
        );
        let trace = generate(Pattern::Storm, 1, 2);
        let report = match replay(&trace, &machine, kernel_config(&machine), Some("s")) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(report.check, Ok(()));
        assert_eq!(report.stats.splits_1g, 1);
        let s = report.dumps[1].summary();
        // The first GiB was split to 2 MiB pages, the second is whole.
        assert_eq!(s.by_page[MapPage::Mega as usize], 512);
        assert_eq!(s.by_page[MapPage::Giga as usize], 512);
    }
}
