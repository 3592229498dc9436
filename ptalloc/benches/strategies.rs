//! The policy lab's allocation strategies side by side (issue 14): the
//! fragmentation benchmark's load (`benches/fragmentation.rs`, generated
//! by `common::load`) replayed under each `Config::strategy` and
//! `Config::pt_fallback`, on the checking simulator, with the same seeds.
//!
//! Two loads on a 1 GiB machine: `churn` swings between 60% and 90% full
//! with one page-table page in 16 allocations; `burst` goes to 98% and
//! adds 2,048 page-table pages at every peak. Each row is summed over the
//! seeds (peaks: the largest; low water: the lowest; the direct map: the
//! seed that ends with the most 4 KiB entries). The maps have 1 GiB pages,
//! except `granular`'s (2 MiB from boot). Every configuration has the
//! split reserve (16 pages). The first four are defended against failing
//! as the kernel is: the default conversion watermark, compaction, and the
//! single-page fallback as the last resort. The last two rows are not (no
//! watermark, no compaction, no last resort), so that page tables do run
//! short, and show what `Config::pt_fallback` does then: `fail` refuses
//! the page table, `unprotected` hands out an exposed one.
//!
//! Columns: page-table allocations, and those that failed (with at least a
//! pageblock's worth of memory free); TLB flushes on the allocating CPU;
//! direct-map splits 1G->2M and 2M->4K; pages protected alone and given
//! back; the direct map's entries by size at the end; stranded protected
//! frames (free page-table pages outside whole free pageblocks) at the end
//! and at their peak (sampled every 64 operations); split-reserve pages
//! taken and its low-water mark; exposed page tables, their exposure in
//! allocations and the most live at once; and simulator violations.
//!
//! Printed as one markdown table, and written to
//! `target/bench/strategies.json`.

mod common;

use common::load::{BURST_HIGH_PERCENT, HIGH_PERCENT, Load, Op, Ours, PT_BURST, SEEDS, replay};
use common::{MAPPED, RESERVE_TARGET, new_meta};
use ptalloc::sim::{LargestPage, SimDirectMap, SimMover};
use ptalloc::{
    Config, DEFAULT_CONVERSION_WATERMARK, Freetype, MappingCounts, PAGEBLOCK_ORDER, Pfn,
    PtFallback, Stats, Strategy,
};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The machine: 1 GiB.
const FRAMES: u64 = 1 << 18;
/// Operations between samples of the peaks.
const SAMPLE_EVERY: usize = 64;

/// One configuration of the lab.
struct Lab {
    name: &'static str,
    strategy: Strategy,
    pt_fallback: PtFallback,
    /// The last resort (`Config::single_page_fallback`), the conversion
    /// watermark and compaction: the defences against failing.
    defended: bool,
}

static LABS: [Lab; 6] = [
    Lab {
        name: "freetype",
        strategy: Strategy::Freetype,
        pt_fallback: PtFallback::Fail,
        defended: true,
    },
    Lab {
        name: "pagewise",
        strategy: Strategy::Pagewise,
        pt_fallback: PtFallback::Fail,
        defended: true,
    },
    Lab {
        name: "granular",
        strategy: Strategy::Granular,
        pt_fallback: PtFallback::Fail,
        defended: true,
    },
    Lab {
        name: "protected-first",
        strategy: Strategy::ProtectedFirst,
        pt_fallback: PtFallback::Fail,
        defended: true,
    },
    Lab {
        name: "freetype undefended, ptfallback=fail",
        strategy: Strategy::Freetype,
        pt_fallback: PtFallback::Fail,
        defended: false,
    },
    Lab {
        name: "freetype undefended, ptfallback=unprotected",
        strategy: Strategy::Freetype,
        pt_fallback: PtFallback::Unprotected,
        defended: false,
    },
];

/// What one configuration did with one load (one seed, or summed).
#[derive(Clone, Debug, Default)]
struct Figures {
    pt_allocs: u64,
    pt_failed: u64,
    pt_failed_with_free_memory: u64,
    flushes: u64,
    splits_1g: u64,
    splits_2m: u64,
    page_protects: u64,
    page_unprotects: u64,
    direct_map: MappingCounts,
    stranded_end: u64,
    stranded_peak: u64,
    reserve_taken: u64,
    reserve_low_water: u64,
    exposed_tables: u64,
    exposure_allocations: u64,
    exposed_peak: u64,
    conversions: u64,
    violations: u64,
}

impl Figures {
    fn sample(&mut self, stats: &Stats) {
        self.stranded_peak = self.stranded_peak.max(stats.stranded_protected);
        self.exposed_peak = self.exposed_peak.max(stats.exposed_live);
    }

    /// Adds one seed's figures.
    fn add(&mut self, seed: &Figures) {
        self.pt_allocs += seed.pt_allocs;
        self.pt_failed += seed.pt_failed;
        self.pt_failed_with_free_memory += seed.pt_failed_with_free_memory;
        self.flushes += seed.flushes;
        self.splits_1g += seed.splits_1g;
        self.splits_2m += seed.splits_2m;
        self.page_protects += seed.page_protects;
        self.page_unprotects += seed.page_unprotects;
        if seed.direct_map.pages_4k >= self.direct_map.pages_4k {
            self.direct_map = seed.direct_map;
        }
        self.stranded_end = self.stranded_end.max(seed.stranded_end);
        self.stranded_peak = self.stranded_peak.max(seed.stranded_peak);
        self.reserve_taken += seed.reserve_taken;
        self.reserve_low_water = self.reserve_low_water.min(seed.reserve_low_water);
        self.exposed_tables += seed.exposed_tables;
        self.exposure_allocations += seed.exposure_allocations;
        self.exposed_peak = self.exposed_peak.max(seed.exposed_peak);
        self.conversions += seed.conversions;
        self.violations += seed.violations;
    }
}

fn free_frames(alloc: &Ours<'_>) -> u64 {
    let stats = alloc.stats();
    let free: u64 = Freetype::all().map(|ft| stats.free_pages(ft)).sum();
    free + stats.cached_pages.iter().sum::<u64>()
}

/// Replays `load` under `lab` and reads the counters.
fn run(lab: &Lab, load: &Load) -> Figures {
    let meta = new_meta(FRAMES);
    let owner = SimMover::new();
    let config = Config {
        page_table: common::PT,
        reserve_target: RESERVE_TARGET,
        conversion_watermark: if lab.defended {
            DEFAULT_CONVERSION_WATERMARK
        } else {
            0
        },
        single_page_fallback: lab.defended,
        strategy: lab.strategy,
        pt_fallback: lab.pt_fallback,
    };
    let largest = if lab.strategy == Strategy::Granular {
        LargestPage::Mega
    } else {
        LargestPage::Giga
    };
    let map = SimDirectMap::new(FRAMES, largest, 2);
    let mut alloc = Ours::new(&meta, Pfn(0), config, map).expect("allocator set-up");
    if lab.defended {
        alloc = alloc.with_migrator(&owner);
    }
    alloc
        .add_memory(Pfn(0), Pfn(FRAMES), MAPPED)
        .expect("add memory");
    // As the kernel does at boot: the split reserve starts full.
    alloc.refill_reserve().expect("fill the split reserve");
    let mut out = Figures::default();
    let mut spent = Duration::ZERO;
    let mut done = 0usize;
    replay(load, &alloc, &owner, &mut spent, |op, result| {
        if let Op::PageTable { .. } = op {
            out.pt_allocs += 1;
            if result.is_err() {
                out.pt_failed += 1;
                if free_frames(&alloc) >= 1 << PAGEBLOCK_ORDER {
                    out.pt_failed_with_free_memory += 1;
                }
            }
        }
        done += 1;
        if done.is_multiple_of(SAMPLE_EVERY) {
            out.sample(&alloc.stats());
        }
    });
    let stats = alloc.stats();
    out.sample(&stats);
    let counters = alloc.backend().counters();
    out.flushes = counters.flushes_local;
    out.splits_1g = counters.splits_1g;
    out.splits_2m = counters.splits_2m;
    out.page_protects = stats.page_protects;
    out.page_unprotects = stats.page_unprotects;
    out.direct_map = stats.direct_map.unwrap_or_default();
    out.stranded_end = stats.stranded_protected;
    out.reserve_taken = stats.reserve_taken;
    out.reserve_low_water = stats.reserve_low_water;
    out.exposed_tables = stats.exposed_tables;
    out.exposure_allocations = stats.exposure_allocations;
    out.conversions = stats.total_conversions();
    out.violations = (alloc.backend().violations().len() + owner.violations().len()) as u64;
    out
}

struct Row {
    load: &'static str,
    lab: &'static Lab,
    seeds: Vec<Figures>,
    total: Figures,
}

fn main() {
    let started = Instant::now();
    let loads: [(&str, Vec<Load>); 2] = [
        (
            "churn",
            SEEDS
                .iter()
                .map(|&seed| Load::generate(FRAMES, seed, HIGH_PERCENT, 0))
                .collect(),
        ),
        (
            "burst",
            SEEDS
                .iter()
                .map(|&seed| Load::generate(FRAMES, seed, BURST_HIGH_PERCENT, PT_BURST))
                .collect(),
        ),
    ];
    let mut rows = Vec::new();
    for (load_name, seeds) in &loads {
        for lab in &LABS {
            let figures: Vec<Figures> = seeds.iter().map(|load| run(lab, load)).collect();
            let mut total = Figures {
                reserve_low_water: u64::MAX,
                ..Figures::default()
            };
            for seed in &figures {
                total.add(seed);
            }
            eprintln!(
                "strategies: {load_name} / {} done ({:.1} s so far)",
                lab.name,
                started.elapsed().as_secs_f64()
            );
            rows.push(Row {
                load: load_name,
                lab,
                seeds: figures,
                total,
            });
        }
    }
    println!("{}", render(&rows));
    let dir = bench_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let path = dir.join("strategies.json");
        match std::fs::write(&path, to_json(&rows)) {
            Ok(()) => eprintln!("strategies: wrote {}", path.display()),
            Err(error) => eprintln!("strategies: cannot write {}: {error}", path.display()),
        }
    }
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "strategies: 1 GiB, {} seeds per row; churn = 60-90% full, burst = to 98% then {PT_BURST} \
         page tables at every peak\n",
        SEEDS.len()
    );
    let _ = writeln!(
        out,
        "| load | strategy | PT allocs | PT failed (>= 1 pageblock free) | flushes | splits 1G->2M / 2M->4K | \
         pages protected / unprotected alone | direct map 1G / 2M / 4K | stranded protected end / peak | \
         reserve taken / low water | exposed tables / exposure (allocs) / peak live | violations |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let t = &row.total;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {} / {} | {} / {} | {} / {} / {} | {} / {} | {} / {} | {} / {} / {} | {} |",
            row.load,
            row.lab.name,
            t.pt_allocs,
            t.pt_failed,
            t.pt_failed_with_free_memory,
            t.flushes,
            t.splits_1g,
            t.splits_2m,
            t.page_protects,
            t.page_unprotects,
            t.direct_map.pages_1g,
            t.direct_map.pages_2m,
            t.direct_map.pages_4k,
            t.stranded_end,
            t.stranded_peak,
            t.reserve_taken,
            t.reserve_low_water,
            t.exposed_tables,
            t.exposure_allocations,
            t.exposed_peak,
            t.violations,
        );
    }
    out
}

fn figures_json(f: &Figures) -> serde_json::Value {
    serde_json::json!({
        "pt_allocs": f.pt_allocs,
        "pt_failed": f.pt_failed,
        "pt_failed_with_free_memory": f.pt_failed_with_free_memory,
        "flushes": f.flushes,
        "splits_1g": f.splits_1g,
        "splits_2m": f.splits_2m,
        "page_protects": f.page_protects,
        "page_unprotects": f.page_unprotects,
        "direct_map_1g": f.direct_map.pages_1g,
        "direct_map_2m": f.direct_map.pages_2m,
        "direct_map_4k": f.direct_map.pages_4k,
        "stranded_protected_end": f.stranded_end,
        "stranded_protected_peak": f.stranded_peak,
        "reserve_taken": f.reserve_taken,
        "reserve_low_water": f.reserve_low_water,
        "exposed_tables": f.exposed_tables,
        "exposure_allocations": f.exposure_allocations,
        "exposed_peak_live": f.exposed_peak,
        "conversions": f.conversions,
        "violations": f.violations,
    })
}

fn to_json(rows: &[Row]) -> String {
    let doc = serde_json::json!({
        "machine_frames": FRAMES,
        "seeds": SEEDS,
        "rows": rows.iter().map(|row| serde_json::json!({
            "load": row.load,
            "strategy": row.lab.name,
            "total": figures_json(&row.total),
            "per_seed": row.seeds.iter().map(figures_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `$CARGO_TARGET_DIR/bench`, else `target/bench` at the workspace root.
fn bench_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    root.join(target).join("bench")
}
