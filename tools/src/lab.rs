//! The policy lab: the matrix of {strategy x protection x workload}, its
//! results, and their table and plots.
//!
//! The matrix is data. [`STRATEGIES`] names each allocation strategy with
//! how to select it in the kernel (command-line words) and in the host
//! simulator (a `ptalloc::Config` builder); `None` means that side does
//! not have it yet, and its runs are recorded as skipped with the reason.
//! Adding a strategy is one entry there. [`PROTECTIONS`] are the kernel's
//! protection options; [`KERNEL_WORKLOADS`] the in-kernel workloads, each
//! a command line and a parser of its log lines. Host workloads are trace
//! files (`tools/traces/` and any the user brings), replayed by
//! [`crate::replay`]; protection does not apply to them (the simulator
//! models the allocator, not the MMU), so they run once per strategy with
//! protection `sim`.
//!
//! What this module promises: every run of the matrix becomes one
//! [`RunResult`] (ok, failed with why, or skipped with why), metrics are
//! named the same for host and kernel runs where they mean the same thing
//! ([`METRICS`]), and [`Results`] is the schema of `results.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use ptalloc::Config;
use serde::{Deserialize, Serialize};

/// An allocation strategy and how each side selects it.
#[derive(Clone, Copy, Debug)]
pub struct Strategy {
    /// Its name in results, tables and file names.
    pub name: &'static str,
    /// One line saying what it is.
    pub about: &'static str,
    /// Kernel command-line words selecting it; `None`: the kernel has no
    /// such option yet.
    pub kernel: Option<&'static [&'static str]>,
    /// Turns the kernel's default host `Config` into this strategy's;
    /// `None`: the simulator has no such strategy yet.
    pub host: Option<fn(Config) -> Config>,
}

fn as_today(config: Config) -> Config {
    config
}

/// The strategies of the seed thread (DESIGN.md, "Policy lab").
pub const STRATEGIES: &[Strategy] = &[
    Strategy {
        name: "freetype",
        about: "whole-pageblock freetypes with a split reserve (today's design)",
        kernel: Some(&[]),
        host: Some(as_today),
    },
    Strategy {
        name: "pagewise",
        about: "page tables protected page by page, splitting the direct map as needed",
        kernel: None,
        host: None,
    },
    Strategy {
        name: "granular",
        about: "a direct map of 2 MiB pages from boot: no split ever needed",
        kernel: None,
        host: None,
    },
    Strategy {
        name: "protected-first",
        about: "the direct map starts protected; pageblocks are unprotected on demand",
        kernel: None,
        host: None,
    },
    Strategy {
        name: "ptfallback-unprotected",
        about: "under pressure, a temporarily unprotected page table (the 'dodge')",
        kernel: None,
        host: None,
    },
];

/// A kernel protection option.
#[derive(Clone, Copy, Debug)]
pub struct ProtectionOption {
    /// Its name in results.
    pub name: &'static str,
    /// Kernel command-line words selecting it.
    pub kernel: &'static [&'static str],
}

/// The kernel's page-table protections (`ptprot=`).
pub const PROTECTIONS: &[ProtectionOption] = &[
    ProtectionOption {
        name: "pks",
        kernel: &["ptprot=pks"],
    },
    ProtectionOption {
        name: "ro",
        kernel: &["ptprot=ro"],
    },
    ProtectionOption {
        name: "none",
        kernel: &["ptprot=none"],
    },
];

/// What host runs report as their protection.
pub const HOST_PROTECTION: &str = "sim";

/// Metrics parsed from a kernel run's transcript, by name.
pub type Metrics = BTreeMap<String, f64>;

/// An in-kernel workload run under QEMU.
#[derive(Clone, Copy, Debug)]
pub struct KernelWorkload {
    /// Its name in results.
    pub name: &'static str,
    /// Kernel command-line words that run it.
    pub kernel: &'static [&'static str],
    /// Seconds before the run is killed.
    pub timeout: u64,
    /// Its figures from the decoded log lines (COM2, `[INFO ] ...`).
    pub parse: fn(&[String]) -> Result<Metrics, String>,
}

/// The in-kernel workloads. Address-space create/destroy and the map/unmap
/// storm join here once the kernel has tests for them (their host-side
/// counterparts are the shipped traces).
pub const KERNEL_WORKLOADS: &[KernelWorkload] = &[KernelWorkload {
    name: "churn",
    kernel: &["test=page_table_churn"],
    timeout: 180,
    parse: parse_churn,
}];

/// Words added to every kernel run's command line. `memmap=...` goes here
/// once the kernel accepts it (an unknown option is a boot error): the
/// lab already draws every dump it finds in a transcript.
pub const KERNEL_EXTRA_WORDS: &[&str] = &[];

/// A metric's name, its column heading and whether the lab plots it.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Key in `metrics`.
    pub key: &'static str,
    /// Column heading and plot title.
    pub heading: &'static str,
    /// Drawn as a bar chart (`plot-<key>.svg`).
    pub plot: bool,
}

/// The metrics the table shows, in order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "page_table_allocs",
        heading: "PT allocs",
        plot: false,
    },
    Metric {
        key: "failed_allocs",
        heading: "failed",
        plot: true,
    },
    Metric {
        key: "flushes",
        heading: "flushes",
        plot: false,
    },
    Metric {
        key: "flushes_per_1000",
        heading: "flushes / 1k PT",
        plot: true,
    },
    Metric {
        key: "splits_1g",
        heading: "splits 1G→2M",
        plot: false,
    },
    Metric {
        key: "splits_2m",
        heading: "splits 2M→4K",
        plot: true,
    },
    Metric {
        key: "reserve_low_water",
        heading: "reserve low-water",
        plot: true,
    },
    Metric {
        key: "stranded_pt_frames_peak",
        heading: "stranded PT frames (peak)",
        plot: true,
    },
    Metric {
        key: "dm_split_pageblocks",
        heading: "DM split blocks",
        plot: false,
    },
    Metric {
        key: "pkrs_writes_per_map",
        heading: "PKRS writes / map",
        plot: false,
    },
    Metric {
        key: "walk_violations_peak",
        heading: "walk violations",
        plot: false,
    },
    Metric {
        key: "seconds",
        heading: "seconds",
        plot: false,
    },
];

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and its figures were read.
    Ok,
    /// It ran and failed, or its figures could not be read.
    Failed,
    /// It could not run: the strategy is missing on that side.
    Skipped,
}

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// [`Strategy::name`].
    pub strategy: String,
    /// [`ProtectionOption::name`], or [`HOST_PROTECTION`].
    pub protection: String,
    /// The workload: a kernel workload's name or a trace file's stem.
    pub workload: String,
    /// `qemu` or `host`.
    pub kind: String,
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The kernel command line (QEMU runs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub command_line: Option<String>,
    /// Figures by name ([`METRICS`] and more).
    pub metrics: Metrics,
    /// Memory pictures written, relative to the output directory.
    pub pictures: Vec<String>,
    /// Everything else: a host replay's full report (stats at the peak
    /// and end, simulator counters, invariant check); a QEMU run's
    /// transcript file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<serde_json::Value>,
}

impl RunResult {
    /// A run that could not happen, and why.
    pub fn skipped(
        strategy: &str,
        protection: &str,
        workload: &str,
        kind: &str,
        reason: String,
    ) -> Self {
        Self {
            strategy: strategy.into(),
            protection: protection.into(),
            workload: workload.into(),
            kind: kind.into(),
            status: Status::Skipped,
            reason: Some(reason),
            command_line: None,
            metrics: Metrics::new(),
            pictures: Vec::new(),
            detail: None,
        }
    }
}

/// `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// `pks-lab/1`.
    pub schema: String,
    /// The simulated machine of host runs.
    pub host_machine: HostMachine,
    /// The QEMU machine of kernel runs.
    pub qemu_machine: QemuMachine,
    /// The strategies of the matrix, with what each side has.
    pub strategies: Vec<StrategyInfo>,
    /// Every cell of the matrix.
    pub runs: Vec<RunResult>,
}

/// The schema name and version `results.json` carries.
pub const SCHEMA: &str = "pks-lab/1";

/// The simulated machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMachine {
    /// RAM in MiB.
    pub memory_mib: u64,
    /// `1G` or `2M`.
    pub largest_page: String,
}

/// The QEMU machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QemuMachine {
    /// `-m`.
    pub memory: String,
    /// `-cpu`.
    pub cpu: String,
    /// `-smp`.
    pub smp: u32,
}

/// A strategy as `results.json` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrategyInfo {
    /// Its name.
    pub name: String,
    /// What it is.
    pub about: String,
    /// Its kernel words, if the kernel has it.
    pub kernel: Option<Vec<String>>,
    /// Whether the simulator has it.
    pub host: bool,
}

impl From<&Strategy> for StrategyInfo {
    fn from(s: &Strategy) -> Self {
        Self {
            name: s.name.into(),
            about: s.about.into(),
            kernel: s.kernel.map(|w| w.iter().map(|w| w.to_string()).collect()),
            host: s.host.is_some(),
        }
    }
}

/// The number just before `suffix` in `text` (its last word, less any
/// `(`), if both are there.
fn number_before(text: &str, suffix: &str) -> Option<f64> {
    let at = text.find(suffix)?;
    let word = text[..at].split_whitespace().next_back()?;
    word.trim_start_matches('(').parse().ok()
}

/// The churn's figures from its two log lines (`kernel/src/memory/paging/tests.rs`,
/// `page_table_churn`; `make bench` shows the same lines).
pub fn parse_churn(log: &[String]) -> Result<Metrics, String> {
    let message = |l: &String| {
        l.find("churn: ")
            .map(|at| l[at + "churn: ".len()..].to_string())
    };
    let mut metrics = Metrics::new();
    let summary = log
        .iter()
        .filter_map(message)
        .find(|m| m.contains("page-table pages allocated and freed"))
        .ok_or("no `churn: ... page-table pages allocated and freed` line in the log")?;
    let fields = [
        ("page_table_allocs", " page-table pages allocated"),
        ("flushes", " flushes ("),
        ("flushes_per_1000", " per 1,000)"),
        ("splits_2m", " 2M->4K splits"),
        ("pkrs_writes_per_map", " PKRS writes per map"),
    ];
    for (key, suffix) in fields {
        let value = number_before(&summary, suffix).ok_or_else(|| {
            format!("the churn's line has no number before {suffix:?}: {summary:?}")
        })?;
        metrics.insert(key.into(), value);
    }
    // Only where a walk runs (not under ptprot=none).
    if let Some(walk) = log
        .iter()
        .filter_map(message)
        .find(|m| m.starts_with("verification walk at the peak"))
    {
        for (key, suffix) in [
            ("walk_tables_peak", " page tables,"),
            ("walk_violations_peak", " violations"),
        ] {
            let value = number_before(&walk, suffix).ok_or_else(|| {
                format!("the churn's walk line has no number before {suffix:?}: {walk:?}")
            })?;
            metrics.insert(key.into(), value);
        }
    }
    Ok(metrics)
}

fn cell(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `results.md`: a table of the runs that ran, then what was skipped.
pub fn markdown(results: &Results) -> String {
    let mut md = String::from("# Policy lab results\n\n");
    let _ = writeln!(
        md,
        "Host runs replay traces on ptalloc's simulator ({} MiB, {} pages first); QEMU runs boot the \
         kernel (-m {}, -cpu {}, -smp {}). Metrics as in `tools/src/lab.rs` (`METRICS`); — = not \
         measured by that run.\n",
        results.host_machine.memory_mib,
        results.host_machine.largest_page,
        results.qemu_machine.memory,
        results.qemu_machine.cpu,
        results.qemu_machine.smp
    );
    md.push_str("| strategy | protection | workload | status |");
    for m in METRICS {
        let _ = write!(md, " {} |", m.heading);
    }
    md.push_str("\n|---|---|---|---|");
    for _ in METRICS {
        md.push_str("---:|");
    }
    md.push('\n');
    for run in results.runs.iter().filter(|r| r.status != Status::Skipped) {
        let status = match run.status {
            Status::Ok => "ok".to_string(),
            _ => format!(
                "FAILED: {}",
                run.reason.as_deref().unwrap_or("").replace('|', "/")
            ),
        };
        let _ = write!(
            md,
            "| {} | {} | {} | {status} |",
            run.strategy, run.protection, run.workload
        );
        for m in METRICS {
            let _ = write!(md, " {} |", cell(run.metrics.get(m.key).copied()));
        }
        md.push('\n');
    }
    let mut skipped: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for run in results.runs.iter().filter(|r| r.status == Status::Skipped) {
        let reason = run.reason.as_deref().unwrap_or("");
        skipped
            .entry((run.strategy.as_str(), reason))
            .or_default()
            .push(format!("{}/{}", run.workload, run.protection));
    }
    if !skipped.is_empty() {
        md.push_str("\nNot run yet:\n\n");
        for ((strategy, reason), cells) in skipped {
            let _ = writeln!(
                md,
                "- `{strategy}`: {reason} ({} runs: {})",
                cells.len(),
                cells.join(", ")
            );
        }
    }
    md
}

/// Colour of the `i`-th strategy's bars (Okabe-Ito).
fn strategy_colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 7] = [
        RGBColor(0x00, 0x72, 0xb2),
        RGBColor(0xd5, 0x5e, 0x00),
        RGBColor(0x00, 0x9e, 0x73),
        RGBColor(0xcc, 0x79, 0xa7),
        RGBColor(0xe6, 0x9f, 0x00),
        RGBColor(0x56, 0xb4, 0xe9),
        RGBColor(0xf0, 0xe4, 0x42),
    ];
    PALETTE[i % PALETTE.len()]
}

/// A grouped bar chart of `metric` over the runs that have it: one group
/// per workload (and protection), one bar per strategy. `None` when no
/// run has the metric.
pub fn plot(metric: &Metric, runs: &[RunResult]) -> Result<Option<String>, String> {
    let have: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.status == Status::Ok && r.metrics.contains_key(metric.key))
        .collect();
    if have.is_empty() {
        return Ok(None);
    }
    let group_of = |r: &RunResult| {
        if r.protection == HOST_PROTECTION {
            r.workload.clone()
        } else {
            format!("{} ({})", r.workload, r.protection)
        }
    };
    let mut groups: Vec<String> = Vec::new();
    let mut strategies: Vec<&str> = Vec::new();
    for r in &have {
        let g = group_of(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    let max = have
        .iter()
        .filter_map(|r| r.metrics.get(metric.key).copied())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut svg = String::new();
    let width = (120 + 110 * groups.len() as u32).clamp(640, 1600);
    {
        let root = SVGBackend::with_string(&mut svg, (width, 440)).into_drawing_area();
        draw_bars(&root, metric, &groups, &strategies, &have, &group_of, top)
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_bars(
    root: &Area<'_>,
    metric: &Metric,
    groups: &[String],
    strategies: &[&str],
    runs: &[&RunResult],
    group_of: &dyn Fn(&RunResult) -> String,
    top: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let n = groups.len() as i32;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{} ({})", metric.heading, metric.key),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        // plotters' integer ranges are closed: 0..n-1 is n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(1)
        .x_labels(groups.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => groups.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(metric.heading)
        .draw()?;
    let (plot_width, _) = chart.plotting_area().dim_in_pixel();
    let segment = f64::from(plot_width) / f64::from(n.max(1));
    let bar = segment * 0.8 / strategies.len().max(1) as f64;
    for (si, strategy) in strategies.iter().enumerate() {
        let colour = strategy_colour(si);
        let left = (segment * 0.1 + si as f64 * bar).round() as u32;
        let right = (segment - segment * 0.1 - (si + 1) as f64 * bar)
            .max(0.0)
            .round() as u32;
        let bars = runs
            .iter()
            .filter(|r| r.strategy == *strategy)
            .filter_map(|r| {
                let g = groups.iter().position(|g| *g == group_of(r))? as i32;
                let v = *r.metrics.get(metric.key)?;
                let mut rect = Rectangle::new(
                    [
                        (SegmentValue::Exact(g), 0.0),
                        (SegmentValue::Exact(g + 1), v),
                    ],
                    colour.filled(),
                );
                rect.set_margin(0, 0, left, right);
                Some(rect)
            });
        chart
            .draw_series(bars)?
            .label(*strategy)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Writes `results.json`, `results.md` and a plot per plotted metric into
/// `dir`; returns the files written.
pub fn write_outputs(dir: &Path, results: &Results) -> Result<Vec<String>, String> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let json =
        serde_json::to_string_pretty(results).map_err(|e| format!("results as JSON: {e}"))?;
    write("results.json", &json)?;
    write("results.md", &markdown(results))?;
    let mut files = vec!["results.json".to_string(), "results.md".to_string()];
    for metric in METRICS.iter().filter(|m| m.plot) {
        if let Some(svg) = plot(metric, &results.runs)? {
            let name = format!("plot-{}.svg", metric.key);
            write(&name, &svg)?;
            files.push(name);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| format!("[INFO ] {l}")).collect()
    }

    #[test]
    fn the_churn_lines_give_their_figures() {
        let lines = log(&[
            "boot: 127 MiB usable",
            "churn: verification walk at the peak: 10032 page tables, 0 violations",
            "churn: 10021 page-table pages allocated and freed, 19 flushes (1.89 per 1,000), 0 2M->4K splits, 2 PKRS writes per map",
        ]);
        let m = parse_churn(&lines).unwrap_or_default();
        let get = |k: &str| m.get(k).copied();
        assert_eq!(get("page_table_allocs"), Some(10021.0));
        assert_eq!(get("flushes"), Some(19.0));
        assert_eq!(get("flushes_per_1000"), Some(1.89));
        assert_eq!(get("splits_2m"), Some(0.0));
        assert_eq!(get("pkrs_writes_per_map"), Some(2.0));
        assert_eq!(get("walk_tables_peak"), Some(10032.0));
        assert_eq!(get("walk_violations_peak"), Some(0.0));
        // Without the walk (ptprot=none) the rest still counts.
        assert_eq!(parse_churn(&lines[2..]).map(|m| m.len()), Ok(5));
    }

    #[test]
    fn a_missing_or_reworded_churn_line_is_a_clear_error() {
        let e = parse_churn(&log(&["nothing"])).err().unwrap_or_default();
        assert!(
            e.contains("no `churn: ... page-table pages allocated and freed` line"),
            "{e}"
        );
        let e = parse_churn(&log(&[
            "churn: 5 page-table pages allocated and freed, many flushes",
        ]))
        .err()
        .unwrap_or_default();
        assert!(e.contains("no number before \" flushes (\""), "{e}");
    }

    #[test]
    fn every_strategy_is_named_once_and_today_runs_everywhere() {
        let mut names: Vec<&str> = STRATEGIES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STRATEGIES.len());
        assert_eq!(names.len(), 5);
        let today = &STRATEGIES[0];
        assert!(today.kernel.is_some() && today.host.is_some());
        assert!(
            STRATEGIES
                .iter()
                .all(|s| crate::memmap::label_from(s.name) == s.name)
        );
    }

    fn results() -> Results {
        let mut ok = RunResult::skipped("freetype", "sim", "storm", "host", String::new());
        ok.status = Status::Ok;
        ok.reason = None;
        ok.metrics.insert("flushes_per_1000".into(), 1.5);
        ok.metrics.insert("splits_2m".into(), 0.0);
        let mut churn = ok.clone();
        churn.workload = "churn".into();
        churn.protection = "pks".into();
        churn.kind = "qemu".into();
        let mut failed = churn.clone();
        failed.protection = "ro".into();
        failed.status = Status::Failed;
        failed.reason = Some("timed out | killed".into());
        failed.metrics.clear();
        let skipped = RunResult::skipped(
            "granular",
            "sim",
            "storm",
            "host",
            "not in the simulator yet".into(),
        );
        Results {
            schema: SCHEMA.into(),
            host_machine: HostMachine {
                memory_mib: 2048,
                largest_page: "1G".into(),
            },
            qemu_machine: QemuMachine {
                memory: "128M".into(),
                cpu: "max".into(),
                smp: 1,
            },
            strategies: STRATEGIES.iter().map(StrategyInfo::from).collect(),
            runs: vec![ok, churn, failed, skipped],
        }
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = results();
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(json.contains("\"status\":\"skipped\""));
        assert_eq!(serde_json::from_str::<Results>(&json).ok(), Some(r));
    }

    #[test]
    fn the_table_has_a_row_per_run_that_ran_and_lists_the_rest() {
        let md = markdown(&results());
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| freetype")).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].contains("| storm | ok |") && rows[0].contains(" 1.50 |"));
        assert!(rows[2].contains("FAILED: timed out / killed"));
        assert!(md.contains("- `granular`: not in the simulator yet (1 runs: storm/sim)"));
        let header = md
            .lines()
            .find(|l| l.starts_with("| strategy"))
            .unwrap_or_default();
        assert_eq!(header.matches('|').count(), 5 + METRICS.len());
    }

    #[test]
    fn plots_have_a_bar_per_run_and_a_legend() {
        let r = results();
        let metric = METRICS.iter().find(|m| m.key == "flushes_per_1000");
        let svg = metric
            .map(|m| plot(m, &r.runs))
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        assert!(svg.starts_with("<svg"), "{svg:.80}");
        assert!(svg.contains("storm") && svg.contains("churn (pks)") && svg.contains("freetype"));
        // One group, two strategies.
        let mut two = vec![r.runs[0].clone(), r.runs[0].clone()];
        two[1].strategy = "pagewise".into();
        let svg = metric
            .map(|m| plot(m, &two))
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        assert!(svg.contains("pagewise") && svg.contains("freetype"));
        // Nothing to plot: no file.
        let none = Metric {
            key: "absent",
            heading: "x",
            plot: true,
        };
        assert_eq!(plot(&none, &r.runs), Ok(None));
    }
}
