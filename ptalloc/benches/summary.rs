//! The benchmark summary: the three figures DESIGN.md asks for, measured
//! side by side in one process, printed as a table and written as JSON to
//! `target/bench/ptalloc.json` (the table also to `target/bench/ptalloc.md`).
//!
//! a. Order-0 throughput of ptalloc (`Mapped`, through `alloc`/`free` with
//!    the per-CPU cache, CPU 0) against `buddy_system_allocator`'s
//!    `FrameAllocator` on the same workloads: ns per operation and the
//!    ratio peer/ours (goal >= 1).
//! b. Page-table churn, counted on the crate's simulated direct map
//!    (`ptalloc::sim`) for ptalloc and for a naive baseline that protects
//!    page by page: flushes per 1,000 page-table allocations (goal <=
//!    1000/512), 2 MiB -> 4 KiB splits (goal 0), 1 GiB -> 2 MiB splits,
//!    conversions, reserve low-water mark, and the simulator's violations
//!    plus failed `sim::check` runs (goal 0).
//! c. The warm fast path of a `Pkey(1)` page against a `Mapped` one, as a
//!    ratio of ns per alloc+free pair (goal <= 1.10).
//!
//! How the timings resist noise (the machine has 2 cores and may be busy):
//! each round runs both sides of a comparison back to back, alternating
//! which goes first, with fresh allocators for the order-0 workloads (set-up
//! untimed). A ratio is the median over rounds of that round's ratio, so a
//! burst of load that hits one round moves one sample, not the figure; the
//! ns columns are medians over rounds. The first round is a warm-up.

mod common;

use common::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Rounds of the order-0 workloads (a).
const ROUNDS: usize = 21;
/// Rounds of the fast-path loops (c): short, so that both sides of a
/// round see the same machine.
const FAST_ROUNDS: usize = 81;
const PAIRS: usize = 50_000;

const CHURN: ChurnParams = ChurnParams {
    pt_allocs: 150_000,
    pt_peak: 20_000,
    pt_trough: 2_000,
    mapped_live: 100_000,
    unmapped_live: 10_000,
    seed: 0x5eed_0002,
};

const GOAL_PEER_RATIO: f64 = 1.0;
const GOAL_FLUSHES_PER_1000: f64 = 1000.0 / 512.0;
const GOAL_FAST_PATH_RATIO: f64 = 1.10;

fn main() {
    let started = Instant::now();
    eprintln!(
        "ptalloc summary: {} GiB managed; {ROUNDS} rounds of the order-0 workloads, \
         {FAST_ROUNDS} of the fast path (+1 warm-up each), then the churn counts",
        FRAMES / FRAMES_1G
    );
    let figures = Figures {
        throughput: measure_throughput(),
        fast: measure_fast_path(),
        churn_ours: run_churn(false),
        churn_naive: run_churn(true),
    };
    let meta = Metadata::collect();
    let table = render_table(&meta, &figures.rows());
    println!("\n{table}");

    let dir = bench_dir();
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("ptalloc.json"), figures.json(&meta).render()))
        .and_then(|()| std::fs::write(dir.join("ptalloc.md"), &table));
    match written {
        Ok(()) => println!("written: {}", dir.join("ptalloc.json").display()),
        Err(error) => {
            eprintln!("could not write {}: {error}", dir.display());
            std::process::exit(1);
        }
    }
    println!("summary took {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// Timing

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Runs `f` (which returns its operation count) and gives ns per operation.
fn ns_per_op(f: impl FnOnce() -> u64) -> f64 {
    let start = Instant::now();
    let ops = f();
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Runs `first` and `second` once each, `first` first in even rounds.
fn back_to_back(
    round: usize,
    first: impl FnOnce() -> f64,
    second: impl FnOnce() -> f64,
) -> (f64, f64) {
    if round.is_multiple_of(2) {
        let a = first();
        (a, second())
    } else {
        let b = second();
        (first(), b)
    }
}

/// Per-round ns/op of two sides measured back to back.
#[derive(Default)]
struct Comparison {
    ours: Vec<f64>,
    other: Vec<f64>,
}

impl Comparison {
    fn push(&mut self, (ours, other): (f64, f64)) {
        self.ours.push(ours);
        self.other.push(other);
    }

    fn ours_ns(&self) -> f64 {
        median(&self.ours)
    }

    fn other_ns(&self) -> f64 {
        median(&self.other)
    }

    /// Median over rounds of other/ours (odd round counts, so the median
    /// of ours/other is exactly its inverse).
    fn other_over_ours(&self) -> f64 {
        let ratios: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.other)
            .map(|(o, p)| p / o)
            .collect();
        median(&ratios)
    }

    fn ours_over_other(&self) -> f64 {
        1.0 / self.other_over_ours()
    }
}

/// ptalloc against the peer, unlocked (the goal) and behind its spin lock
/// (information).
#[derive(Default)]
struct PeerComparison {
    unlocked: Comparison,
    locked: Comparison,
}

struct Throughput {
    mix_ops: u64,
    mix: PeerComparison,
    n_then_n: PeerComparison,
    /// Simulated direct-map calls while ptalloc was timed (0: the
    /// simulator's checks cost the timings nothing).
    backend_calls_while_timed: u64,
}

/// Times `workload` on a fresh ptalloc; counts its direct-map calls.
fn time_ours(calls: &mut u64, workload: impl FnOnce(&mut OursFrames<'_, '_>) -> u64) -> f64 {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let mut frames = OursFrames {
        alloc: &alloc,
        freetype: MAPPED,
    };
    let before = backend_calls(&alloc);
    let ns = ns_per_op(|| workload(&mut frames));
    *calls += backend_calls(&alloc) - before;
    ns
}

fn time_peer(workload: impl FnOnce(&mut PeerFrames) -> u64) -> f64 {
    let mut frames = PeerFrames(peer(FRAMES));
    ns_per_op(|| workload(&mut frames))
}

fn time_locked(workload: impl FnOnce(&mut LockedPeerFrames) -> u64) -> f64 {
    let mut frames = LockedPeerFrames::new(FRAMES);
    ns_per_op(|| workload(&mut frames))
}

fn measure_throughput() -> Throughput {
    let mut held_ours = held_buffer();
    let mut held_peer = held_buffer();
    let mut t = Throughput {
        mix_ops: Order0::RandomMix.ops(),
        mix: PeerComparison::default(),
        n_then_n: PeerComparison::default(),
        backend_calls_while_timed: 0,
    };
    let calls = &mut t.backend_calls_while_timed;
    for round in 0..=ROUNDS {
        for (w, sides) in [
            (Order0::RandomMix, &mut t.mix),
            (Order0::NThenN, &mut t.n_then_n),
        ] {
            let unlocked = back_to_back(
                round,
                || time_ours(calls, |a| w.run(a, &mut held_ours)),
                || time_peer(|a| w.run(a, &mut held_peer)),
            );
            let locked = back_to_back(
                round,
                || time_ours(calls, |a| w.run(a, &mut held_ours)),
                || time_locked(|a| w.run(a, &mut held_peer)),
            );
            // Round 0 warms caches and code paths: not kept.
            if round > 0 {
                sides.unlocked.push(unlocked);
                sides.locked.push(locked);
            }
        }
    }
    t
}

struct FastPath {
    /// `ours` is `Pkey(1)`, `other` is `Mapped`: ns per alloc+free pair.
    pairs: Comparison,
    batches: Comparison,
    /// Conversions during the timed loops (0: every timed allocation was warm).
    conversions_while_timed: u64,
    /// Simulated direct-map calls during the timed loops.
    backend_calls_while_timed: u64,
}

fn measure_fast_path() -> FastPath {
    let meta = new_meta(FRAMES);
    let alloc = ours(&meta);
    let (mut pt, mut mapped) = warm_fast_path(&alloc);
    let mut held_pt = Vec::with_capacity(BATCH);
    let mut held_mapped = Vec::with_capacity(BATCH);
    let converted_before = alloc.stats().total_conversions();
    let calls_before = backend_calls(&alloc);
    let mut fast = FastPath {
        pairs: Comparison::default(),
        batches: Comparison::default(),
        conversions_while_timed: 0,
        backend_calls_while_timed: 0,
    };
    for round in 0..=FAST_ROUNDS {
        let pairs = back_to_back(
            round,
            || ns_per_op(|| alloc_free_pairs(&mut pt, PAIRS)),
            || ns_per_op(|| alloc_free_pairs(&mut mapped, PAIRS)),
        );
        let batch = back_to_back(
            round,
            || ns_per_op(|| fast_batches(&mut pt, &mut held_pt)),
            || ns_per_op(|| fast_batches(&mut mapped, &mut held_mapped)),
        );
        if round > 0 {
            fast.pairs.push(pairs);
            fast.batches.push(batch);
        }
    }
    fast.conversions_while_timed = alloc.stats().total_conversions() - converted_before;
    fast.backend_calls_while_timed = backend_calls(&alloc) - calls_before;
    fast
}

// ---------------------------------------------------------------------------
// Churn (counts; run once, they are deterministic)

fn run_churn(naive: bool) -> ChurnReport {
    let meta = new_meta(FRAMES);
    if naive {
        churn(&mut PageByPage(ours(&meta)), CHURN)
    } else {
        churn(&mut Freetypes(ours(&meta)), CHURN)
    }
}

// ---------------------------------------------------------------------------
// The figures, as a table and as JSON

struct Figures {
    throughput: Throughput,
    fast: FastPath,
    churn_ours: ChurnReport,
    churn_naive: ChurnReport,
}

struct Row {
    figure: String,
    ours: String,
    baseline: String,
    measured: String,
    goal: &'static str,
    met: Option<bool>,
}

impl Figures {
    fn mix_ratio(&self) -> f64 {
        self.throughput.mix.unlocked.other_over_ours()
    }

    fn n_then_n_ratio(&self) -> f64 {
        self.throughput.n_then_n.unlocked.other_over_ours()
    }

    fn pair_ratio(&self) -> f64 {
        self.fast.pairs.ours_over_other()
    }

    fn batch_ratio(&self) -> f64 {
        self.fast.batches.ours_over_other()
    }

    fn rows(&self) -> Vec<Row> {
        let (t, f, o, n) = (
            &self.throughput,
            &self.fast,
            &self.churn_ours,
            &self.churn_naive,
        );
        let row =
            |figure: String, ours: String, baseline: String, measured: String, goal, met| Row {
                figure,
                ours,
                baseline,
                measured,
                goal,
                met,
            };
        let count = |figure: &str, ours: u64, naive: u64| {
            row(
                figure.to_owned(),
                ours.to_string(),
                naive.to_string(),
                ours.to_string(),
                "-",
                None,
            )
        };
        vec![
            row(
                format!(
                    "a. order-0 random mix ({}k live, {}k steps), ns/op",
                    MIX_LIVE / 1000,
                    MIX_STEPS / 1000
                ),
                format!("{:.1}", t.mix.unlocked.ours_ns()),
                format!("{:.1}", t.mix.unlocked.other_ns()),
                format!("peer/ours {:.2}", self.mix_ratio()),
                ">= 1.00",
                Some(self.mix_ratio() >= GOAL_PEER_RATIO),
            ),
            row(
                format!(
                    "a. order-0 alloc {0}k then free {0}k, ns/op",
                    N_THEN_N / 1000
                ),
                format!("{:.1}", t.n_then_n.unlocked.ours_ns()),
                format!("{:.1}", t.n_then_n.unlocked.other_ns()),
                format!("peer/ours {:.2}", self.n_then_n_ratio()),
                ">= 1.00",
                Some(self.n_then_n_ratio() >= GOAL_PEER_RATIO),
            ),
            row(
                "a. (info) same two, peer behind its spin lock, ns/op".to_owned(),
                format!(
                    "{:.1}, {:.1}",
                    t.mix.locked.ours_ns(),
                    t.n_then_n.locked.ours_ns()
                ),
                format!(
                    "{:.1}, {:.1}",
                    t.mix.locked.other_ns(),
                    t.n_then_n.locked.other_ns()
                ),
                format!(
                    "peer/ours {:.2}, {:.2}",
                    t.mix.locked.other_over_ours(),
                    t.n_then_n.locked.other_over_ours()
                ),
                "-",
                None,
            ),
            row(
                "b. flushes per 1,000 PT allocations (all flushes of the run)".to_owned(),
                format!("{:.2}", o.flushes_per_1000_pt()),
                format!("{:.1}", n.flushes_per_1000_pt()),
                format!("{:.2}", o.flushes_per_1000_pt()),
                "<= 1.95",
                Some(o.flushes_per_1000_pt() <= GOAL_FLUSHES_PER_1000),
            ),
            row(
                "b. flushes per 1,000 PT allocations (inside PT alloc/free)".to_owned(),
                format!("{:.2}", o.pt_flushes_per_1000_pt()),
                format!("{:.1}", n.pt_flushes_per_1000_pt()),
                format!("{:.2}", o.pt_flushes_per_1000_pt()),
                "<= 1.95",
                Some(o.pt_flushes_per_1000_pt() <= GOAL_FLUSHES_PER_1000),
            ),
            row(
                "b. 2M->4K splits (all of the run)".to_owned(),
                o.all.splits_2m.to_string(),
                n.all.splits_2m.to_string(),
                o.all.splits_2m.to_string(),
                "0",
                Some(o.all.splits_2m == 0),
            ),
            count("b. 1G->2M splits", o.all.splits_1g, n.all.splits_1g),
            row(
                "b. pageblocks converted (batches; to PT, from PT)".to_owned(),
                format!(
                    "{} ({}; {}, {})",
                    o.conversions, o.conversion_batches, o.conversions_to_pt, o.conversions_from_pt
                ),
                format!(
                    "{} ({}; {}, {})",
                    n.conversions, n.conversion_batches, n.conversions_to_pt, n.conversions_from_pt
                ),
                o.conversions.to_string(),
                "-",
                None,
            ),
            row(
                format!("b. split reserve low-water mark (target {RESERVE_TARGET}; pages taken)"),
                format!("{} ({})", o.reserve_low_water, o.reserve_taken),
                format!("{} ({})", n.reserve_low_water, n.reserve_taken),
                o.reserve_low_water.to_string(),
                "-",
                None,
            ),
            count(
                "b. 2M entries mapped with 4K pages at the end",
                o.shape.pmds_split,
                n.shape.pmds_split,
            ),
            row(
                format!(
                    "b. model violations (sim's per-call checks; ours + {} sim::check)",
                    o.checks_run
                ),
                o.model_violations().to_string(),
                n.model_violations().to_string(),
                o.model_violations().to_string(),
                "0",
                Some(o.model_violations() == 0),
            ),
            row(
                "c. warm alloc+free pair, ns: Pkey(1) vs Mapped".to_owned(),
                format!("{:.1}", f.pairs.ours_ns()),
                format!("{:.1}", f.pairs.other_ns()),
                format!("pkey/mapped {:.3}", self.pair_ratio()),
                "<= 1.10",
                Some(self.pair_ratio() <= GOAL_FAST_PATH_RATIO),
            ),
            row(
                format!("c. warm {BATCH} allocs then {BATCH} frees, ns/pair: Pkey(1) vs Mapped"),
                format!("{:.1}", f.batches.ours_ns()),
                format!("{:.1}", f.batches.other_ns()),
                format!("pkey/mapped {:.3}", self.batch_ratio()),
                "<= 1.10",
                Some(self.batch_ratio() <= GOAL_FAST_PATH_RATIO),
            ),
        ]
    }

    fn json(&self, meta: &Metadata) -> Json {
        let (t, f, o, n) = (
            &self.throughput,
            &self.fast,
            &self.churn_ours,
            &self.churn_naive,
        );
        let peer_side = |sides: &PeerComparison, ratio: f64| {
            let (c, locked) = (&sides.unlocked, &sides.locked);
            vec![
                ("ours_ns_per_op", Json::Num(c.ours_ns())),
                ("peer_ns_per_op", Json::Num(c.other_ns())),
                ("ratio_peer_over_ours", Json::Num(ratio)),
                ("goal_min_ratio", Json::Num(GOAL_PEER_RATIO)),
                ("met", Json::Bool(ratio >= GOAL_PEER_RATIO)),
                ("samples_ours_ns", nums(&c.ours)),
                ("samples_peer_ns", nums(&c.other)),
                ("info_locked_peer_ns_per_op", Json::Num(locked.other_ns())),
                (
                    "info_ours_ns_per_op_beside_locked_peer",
                    Json::Num(locked.ours_ns()),
                ),
                (
                    "info_ratio_locked_peer_over_ours",
                    Json::Num(locked.other_over_ours()),
                ),
            ]
        };
        let fast_side = |c: &Comparison, ratio: f64| {
            vec![
                ("pkey1_ns_per_pair", Json::Num(c.ours_ns())),
                ("mapped_ns_per_pair", Json::Num(c.other_ns())),
                ("ratio_pkey1_over_mapped", Json::Num(ratio)),
                ("goal_max_ratio", Json::Num(GOAL_FAST_PATH_RATIO)),
                ("met", Json::Bool(ratio <= GOAL_FAST_PATH_RATIO)),
                ("samples_pkey1_ns", nums(&c.ours)),
                ("samples_mapped_ns", nums(&c.other)),
            ]
        };
        let mut mix = vec![
            ("live_pages", Json::Int(MIX_LIVE as u64)),
            ("steps", Json::Int(MIX_STEPS as u64)),
            ("operations", Json::Int(t.mix_ops)),
        ];
        mix.extend(peer_side(&t.mix, self.mix_ratio()));
        let mut nn = vec![
            ("n", Json::Int(N_THEN_N as u64)),
            ("operations", Json::Int(2 * N_THEN_N as u64)),
        ];
        nn.extend(peer_side(&t.n_then_n, self.n_then_n_ratio()));
        let mut pairs = vec![("pairs_per_round", Json::Int(PAIRS as u64))];
        pairs.extend(fast_side(&f.pairs, self.pair_ratio()));
        let mut batch = vec![
            ("batch", Json::Int(BATCH as u64)),
            ("batches_per_round", Json::Int(BATCH_ROUNDS as u64)),
        ];
        batch.extend(fast_side(&f.batches, self.batch_ratio()));

        Json::Obj(vec![
            (
                "metadata",
                Json::Obj(vec![
                    ("commit", opt_str(&meta.commit)),
                    ("uncommitted_changes", Json::Bool(meta.dirty)),
                    ("date_utc", Json::Str(meta.date.clone())),
                    ("rustc", opt_str(&meta.rustc)),
                    ("managed_frames", Json::Int(FRAMES)),
                    ("managed_gib", Json::Int(FRAMES / FRAMES_1G)),
                    ("cpu_caches", Json::Int(1)),
                    (
                        "direct_map",
                        Json::Str("ptalloc::sim::SimDirectMap: 1 GiB pages at start, 1 CPU".to_owned()),
                    ),
                    ("rounds_order0", Json::Int(ROUNDS as u64)),
                    ("rounds_fast_path", Json::Int(FAST_ROUNDS as u64)),
                    (
                        "statistic",
                        Json::Str("ns: median over rounds; ratio: median over rounds of the per-round ratio".to_owned()),
                    ),
                    (
                        "peer",
                        Json::Str(format!(
                            "buddy_system_allocator 0.13 FrameAllocator<{PEER_ORDER}> (unlocked); \
                             info rows: LockedFrameAllocator"
                        )),
                    ),
                ]),
            ),
            (
                "a_order0_throughput",
                Json::Obj(vec![
                    ("random_mix", Json::Obj(mix)),
                    ("alloc_n_then_free_n", Json::Obj(nn)),
                    ("backend_calls_while_timed", Json::Int(t.backend_calls_while_timed)),
                ]),
            ),
            (
                "b_page_table_churn",
                Json::Obj(vec![
                    (
                        "params",
                        Json::Obj(vec![
                            ("min_pt_allocations", Json::Int(CHURN.pt_allocs)),
                            ("pt_peak_live", Json::Int(CHURN.pt_peak as u64)),
                            ("pt_trough_live", Json::Int(CHURN.pt_trough as u64)),
                            ("mapped_live", Json::Int(CHURN.mapped_live as u64)),
                            ("unmapped_live", Json::Int(CHURN.unmapped_live as u64)),
                            ("reserve_target", Json::Int(RESERVE_TARGET as u64)),
                        ]),
                    ),
                    ("ours", churn_json(o)),
                    ("naive_page_by_page", churn_json(n)),
                    (
                        "goals",
                        Json::Obj(vec![
                            ("max_flushes_per_1000_pt_allocations", Json::Num(GOAL_FLUSHES_PER_1000)),
                            ("max_splits_2m_to_4k", Json::Int(0)),
                            ("max_model_violations", Json::Int(0)),
                            ("flushes_met", Json::Bool(o.flushes_per_1000_pt() <= GOAL_FLUSHES_PER_1000)),
                            ("pt_op_flushes_met", Json::Bool(o.pt_flushes_per_1000_pt() <= GOAL_FLUSHES_PER_1000)),
                            ("splits_2m_met", Json::Bool(o.all.splits_2m == 0)),
                            ("model_violations_met", Json::Bool(o.model_violations() == 0)),
                        ]),
                    ),
                ]),
            ),
            (
                "c_fast_path",
                Json::Obj(vec![
                    ("alloc_free_pair", Json::Obj(pairs)),
                    ("batch_alloc_then_free", Json::Obj(batch)),
                    ("conversions_while_timed", Json::Int(f.conversions_while_timed)),
                    ("backend_calls_while_timed", Json::Int(f.backend_calls_while_timed)),
                ]),
            ),
        ])
    }
}

fn render_table(meta: &Metadata, rows: &[Row]) -> String {
    let header = ["figure", "ours", "baseline", "measured", "goal", "met"].map(str::to_owned);
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            [
                r.figure.clone(),
                r.ours.clone(),
                r.baseline.clone(),
                r.measured.clone(),
                r.goal.to_owned(),
                met.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for line in &cells {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ptalloc benchmarks: commit {}{}, {}, {}; {} GiB managed, 1 CPU cache",
        meta.commit.as_deref().unwrap_or("unknown"),
        if meta.dirty {
            " (uncommitted changes)"
        } else {
            ""
        },
        meta.date,
        meta.rustc.as_deref().unwrap_or("rustc unknown"),
        FRAMES / FRAMES_1G,
    );
    let _ = writeln!(
        out,
        "baseline: (a) buddy_system_allocator FrameAllocator, (b) page-by-page protection, (c) Mapped freetype"
    );
    let _ = writeln!(
        out,
        "ns: medians of {ROUNDS} (a) / {FAST_ROUNDS} (c) rounds; ratios: medians of per-round ratios; counts: one run"
    );
    out.push('\n');
    let line = |out: &mut String, cols: &[String]| {
        out.push('|');
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            // Text left, numbers right.
            if i == 0 {
                let _ = write!(out, " {c:<w$} |");
            } else {
                let _ = write!(out, " {c:>w$} |");
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let dashes = "-".repeat(w - 1);
        let _ = if i == 0 {
            write!(out, " :{dashes} |")
        } else {
            write!(out, " {dashes}: |")
        };
    }
    out.push('\n');
    for c in &cells {
        line(&mut out, c);
    }
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.met == Some(false))
        .map(|r| r.figure.as_str())
        .collect();
    if missed.is_empty() {
        out.push_str("\nall goals met\n");
    } else {
        let _ = writeln!(out, "\ngoals NOT met: {}", missed.join("; "));
    }
    out
}

// ---------------------------------------------------------------------------
// Metadata and JSON

struct Metadata {
    commit: Option<String>,
    dirty: bool,
    date: String,
    rustc: Option<String>,
}

impl Metadata {
    fn collect() -> Self {
        let root = workspace_root();
        let run = |cmd: &str, args: &[&str]| -> Option<String> {
            let out = Command::new(cmd)
                .args(args)
                .current_dir(&root)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        Self {
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
            dirty: run("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            date: utc_now(),
            rustc: run("rustc", &["-V"]),
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `$CARGO_TARGET_DIR/bench`, else `target/bench` at the workspace root.
fn bench_dir() -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    root.join(target).join("bench")
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Just enough JSON.
enum Json {
    Null,
    Bool(bool),
    Int(u64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Num(x) if x.is_finite() => {
                let _ = write!(out, "{}", (x * 1000.0).round() / 1000.0);
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, indent);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (key, value)) in fields.iter().enumerate() {
                    let _ = write!(out, "{:width$}\"{key}\": ", "", width = indent + 2);
                    value.write(out, indent + 2);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{:indent$}}}", "");
            }
        }
    }
}

fn opt_str(s: &Option<String>) -> Json {
    s.as_ref().map_or(Json::Null, |s| Json::Str(s.clone()))
}

fn nums(xs: &[f64]) -> Json {
    Json::Arr(xs.iter().map(|&x| Json::Num(x)).collect())
}

fn counts_json(c: &MapCounts) -> Json {
    Json::Obj(vec![
        ("flushes", Json::Int(c.flushes)),
        ("pageblock_protect_calls", Json::Int(c.protect_calls)),
        ("failed_protect_calls", Json::Int(c.protect_failures)),
        ("single_page_protect_calls", Json::Int(c.page_protect_calls)),
        ("splits_1g_to_2m", Json::Int(c.splits_1g)),
        ("splits_2m_to_4k", Json::Int(c.splits_2m)),
        ("split_pages_taken", Json::Int(c.split_pages_used)),
        ("simulator_violations", Json::Int(c.violations)),
    ])
}

fn churn_json(r: &ChurnReport) -> Json {
    Json::Obj(vec![
        ("pt_allocations", Json::Int(r.pt_allocs)),
        ("pt_frees", Json::Int(r.pt_frees)),
        ("pt_peak_live", Json::Int(r.pt_peak_live)),
        ("mapped_allocations", Json::Int(r.mapped_allocs)),
        ("unmapped_allocations", Json::Int(r.unmapped_allocs)),
        (
            "flushes_per_1000_pt_allocations",
            Json::Num(r.flushes_per_1000_pt()),
        ),
        (
            "pt_op_flushes_per_1000_pt_allocations",
            Json::Num(r.pt_flushes_per_1000_pt()),
        ),
        ("whole_run", counts_json(&r.all)),
        ("inside_pt_operations", counts_json(&r.pt_ops)),
        ("pageblocks_converted", Json::Int(r.conversions)),
        ("conversion_batches", Json::Int(r.conversion_batches)),
        ("pageblocks_converted_to_pt", Json::Int(r.conversions_to_pt)),
        (
            "pageblocks_converted_from_pt",
            Json::Int(r.conversions_from_pt),
        ),
        ("reserve_low_water", Json::Int(r.reserve_low_water)),
        ("reserve_pages_taken", Json::Int(r.reserve_taken)),
        ("final_1g_entries_split", Json::Int(r.shape.gigs_split)),
        ("final_2m_entries_split", Json::Int(r.shape.pmds_split)),
        ("invariant_checks_run", Json::Int(r.checks_run)),
        (
            "invariant_check_failures",
            Json::Arr(r.check_failures.iter().cloned().map(Json::Str).collect()),
        ),
        ("first_simulator_violation", opt_str(&r.first_violation)),
    ])
}
