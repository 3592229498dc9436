//! The policy lab: the matrix of {strategy x protection x workload}, its
//! results, and their tables and plots.
//!
//! The matrix is data. [`STRATEGIES`] names each allocation strategy with
//! how to select it in the kernel (command-line words) and in the host
//! simulator (a [`HostSetup`] builder: the `ptalloc::Config`, and the
//! simulated machine where the strategy needs another one, as `granular`
//! needs a direct map of 2 MiB pages); `None` means that side does not
//! have it yet, and its runs are recorded as skipped with the reason.
//! Adding a strategy is one entry there. [`PROTECTIONS`] are the kernel's
//! protection options; [`KERNEL_WORKLOADS`] the in-kernel workloads
//! (`lab=NAME`), whose figures come from one `lab:` log line each, read
//! by one parser ([`kernel_line`]). Traces ([`TraceFile`]:
//! `tools/traces/` and any the user brings) run on both sides. On the
//! host [`crate::replay`] replays them; protection does not apply there
//! (the simulator models the allocator, not the MMU), so they run once per
//! strategy with protection `sim`. In the kernel [`KERNEL_TRACE`]
//! (`lab=trace`) replays the trace given as the boot module on the real
//! page allocator, once per strategy under [`TRACE_PROTECTIONS`]; such a
//! run carries the trace's name as its workload, as the host's runs of the
//! trace do, and its `trace` ([`RunResult::is_kernel_replay`]) sets it
//! apart from a kernel workload of the same name. [`KernelRun`] says what
//! each kernel run boots, what its files are called and how its figures
//! are read. The shipped `pressure` trace is the one that presses memory
//! (`crate::trace::Pattern::Pressure`): only there do page tables run
//! short on the host, so only there does `ptfallback-unprotected` expose
//! tables and `freetype` fail some.
//!
//! What this module promises: every run of the matrix becomes one
//! [`RunResult`] (ok, failed with why, or skipped with why); metrics have
//! one name per meaning across host and kernel runs ([`METRICS`] says
//! what each counts and where each side gets it); [`Results`] is the
//! schema of `results.json`; [`tables`] and [`plots`] turn it into
//! `results.md`, `comparison.md` and the bar charts.

pub mod kernel_line;
pub mod plots;
pub mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ptalloc::Config;
use ptalloc::sim::LargestPage;
use serde::{Deserialize, Serialize};

use crate::memmap::Dump;
use crate::replay::{self, Machine};
use crate::trace::Trace;

/// A host replay's set-up: the simulated machine and the allocator's
/// configuration on it.
#[derive(Clone, Copy, Debug)]
pub struct HostSetup {
    /// The machine (a strategy may change its direct map's largest page).
    pub machine: Machine,
    /// The allocator's configuration.
    pub config: Config,
}

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
    /// Its host set-up on the lab's machine (memory size and a direct map
    /// of 1 GiB pages); `None`: the simulator has no such strategy yet.
    pub host: Option<fn(Machine) -> HostSetup>,
}

/// The kernel's configuration of today on `machine`.
fn today(machine: Machine) -> HostSetup {
    HostSetup {
        machine,
        config: replay::kernel_config(&machine),
    }
}

/// Today's configuration with another `ptalloc::Strategy`.
fn with_strategy(machine: Machine, strategy: ptalloc::Strategy) -> HostSetup {
    let mut setup = today(machine);
    setup.config.strategy = strategy;
    setup
}

fn pagewise(machine: Machine) -> HostSetup {
    with_strategy(machine, ptalloc::Strategy::Pagewise)
}

/// `Granular` needs a direct map that never had a 1 GiB page (the
/// allocator refuses to start otherwise): the machine's map starts with
/// 2 MiB pages, as the kernel's does under `ptstrategy=granular`.
fn granular(machine: Machine) -> HostSetup {
    let machine = Machine {
        largest: LargestPage::Mega,
        ..machine
    };
    with_strategy(machine, ptalloc::Strategy::Granular)
}

fn protected_first(machine: Machine) -> HostSetup {
    with_strategy(machine, ptalloc::Strategy::ProtectedFirst)
}

/// The dodge in place of the last resort: with the single-page fallback
/// on, a page table finds a protected page whenever any mapped page is
/// free, so the dodge, which needs a free mapped page too, would never be
/// reached. As in `ptalloc`'s strategies benchmark, the fallback gives
/// way to it; the rest is today's (the watermark stays).
fn ptfallback_unprotected(machine: Machine) -> HostSetup {
    let mut setup = today(machine);
    setup.config.pt_fallback = ptalloc::PtFallback::Unprotected;
    setup.config.single_page_fallback = false;
    setup
}

/// The strategies of the seed thread (DESIGN.md, "Policy lab").
pub const STRATEGIES: &[Strategy] = &[
    Strategy {
        name: "freetype",
        about: "whole-pageblock freetypes with a split reserve (today's design)",
        kernel: Some(&["ptstrategy=freetype"]),
        host: Some(today),
    },
    Strategy {
        name: "pagewise",
        about: "page tables protected page by page, splitting the direct map as needed",
        kernel: Some(&["ptstrategy=pagewise"]),
        host: Some(pagewise),
    },
    Strategy {
        name: "granular",
        about: "a direct map of 2 MiB pages from boot: no 1 GiB split ever needed",
        kernel: Some(&["ptstrategy=granular"]),
        host: Some(granular),
    },
    Strategy {
        name: "protected-first",
        about: "the direct map starts protected; pageblocks are unprotected on demand",
        kernel: Some(&["ptstrategy=protected-first"]),
        host: Some(protected_first),
    },
    Strategy {
        name: "ptfallback-unprotected",
        about: "freetype, but under pressure a temporarily unprotected page table (the 'dodge')",
        kernel: Some(&["ptstrategy=freetype", "ptfallback=unprotected"]),
        host: Some(ptfallback_unprotected),
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

/// Figures of a run, by name ([`METRICS`]).
pub type Metrics = BTreeMap<String, f64>;

/// An in-kernel workload run under QEMU. Its figures come from its
/// `lab: workload=NAME ...` log line ([`kernel_line::parse_lab_line`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelWorkload {
    /// Its name in results, and the `workload=` its line carries.
    pub name: &'static str,
    /// Kernel command-line words that run it.
    pub kernel: &'static [&'static str],
    /// Seconds before the run is killed.
    pub timeout: u64,
}

/// The in-kernel workloads (`kernel/src/lab.rs`): each runs in a boot of
/// its own, on a fresh machine.
pub const KERNEL_WORKLOADS: &[KernelWorkload] = &[
    KernelWorkload {
        name: "churn",
        kernel: &["lab=churn"],
        timeout: 180,
    },
    KernelWorkload {
        name: "spaces",
        kernel: &["lab=spaces"],
        timeout: 180,
    },
    KernelWorkload {
        name: "storm",
        kernel: &["lab=storm"],
        timeout: 180,
    },
];

/// Words added to every kernel run's command line: a pageblock map after
/// each lab workload (label `after-<workload>`), drawn as
/// `memmap-<workload>-<strategy>-<protection>-after-<workload>.svg`.
pub const KERNEL_EXTRA_WORDS: &[&str] = &["memmap=lab"];

/// The kernel's trace replay (`lab=trace`, `kernel/src/lab.rs`): the
/// kernel reads its first boot module (QEMU `-initrd`) as a trace in the
/// format of [`crate::trace`], checks all of it before it starts (a
/// malformed trace ends the run with `lab: trace failed: line N: ...`),
/// replays it on its page allocator (`A`: a page table from the page-table
/// freetype, `D`: ordinary memory, `F`: a free), frees what is still live,
/// and prints `lab: workload=trace ...`: the keys of the other workloads
/// but the walk's (the tables are linked into no address space), `ops`
/// the events replayed. The longest shipped trace (`fragment`, 49,152
/// events) must fit its timeout under TCG.
pub const KERNEL_TRACE: KernelWorkload = KernelWorkload {
    name: "trace",
    kernel: &["lab=trace"],
    timeout: 240,
};

/// The protections kernel trace replays run under: `pks` alone, the
/// protection the strategies are about. The kernel workloads already show
/// what `ro` and `none` change; under all three the replays would be 75
/// boots instead of 25.
pub const TRACE_PROTECTIONS: &[ProtectionOption] = &[PROTECTIONS[0]];

/// A trace file the lab replays, on the host and in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFile {
    /// The workload name its runs carry (its file's stem as a label, made
    /// apart from the other traces').
    pub name: String,
    /// Where to read it (host runs) and boot it from (kernel runs).
    pub path: PathBuf,
    /// The file as results record it: relative to the workspace for the
    /// shipped traces, as given for the user's.
    pub shown: String,
}

/// One kernel run of the matrix: a workload of [`KERNEL_WORKLOADS`], or
/// [`KERNEL_TRACE`] replaying a trace, under a strategy and a protection.
/// Pure: what to boot, what its files are called and how to read its
/// figures; the `lab` binary boots it.
#[derive(Clone, Copy, Debug)]
pub struct KernelRun<'m> {
    /// The workload the kernel runs (`lab=NAME`).
    pub workload: &'m KernelWorkload,
    /// The trace it replays ([`KERNEL_TRACE`]): the boot module, and the
    /// run's workload name.
    pub trace: Option<&'m TraceFile>,
    /// The allocation strategy.
    pub strategy: &'m Strategy,
    /// The page-table protection.
    pub protection: &'m ProtectionOption,
}

impl<'m> KernelRun<'m> {
    /// A run of one of [`KERNEL_WORKLOADS`].
    pub fn of_workload(
        workload: &'m KernelWorkload,
        strategy: &'m Strategy,
        protection: &'m ProtectionOption,
    ) -> Self {
        Self {
            workload,
            trace: None,
            strategy,
            protection,
        }
    }

    /// The kernel's replay of `trace` ([`KERNEL_TRACE`]).
    pub fn of_trace(
        trace: &'m TraceFile,
        strategy: &'m Strategy,
        protection: &'m ProtectionOption,
    ) -> Self {
        Self {
            workload: &KERNEL_TRACE,
            trace: Some(trace),
            strategy,
            protection,
        }
    }

    /// The workload its result carries: for a replay the trace's name, as
    /// the host's runs of the trace call it (the kernel's line says
    /// `workload=trace` whatever the trace), else the workload's.
    pub fn workload_name(&self) -> &str {
        self.trace.map_or(self.workload.name, |t| t.name.as_str())
    }

    /// Its stem in file names: `<workload>-<strategy>-<protection>` with
    /// [`Self::workload_name`]. Its pictures add the dump's label, and a
    /// replay's (`after-trace`) differs from any kernel workload's.
    pub fn stem(&self) -> String {
        format!(
            "{}-{}-{}",
            self.workload_name(),
            self.strategy.name,
            self.protection.name
        )
    }

    /// Its transcript, relative to the output directory:
    /// `logs/<stem>.log`, and `logs/trace-<stem>.log` for a replay (the
    /// shipped `storm` trace and `lab=storm` share a stem).
    pub fn log_name(&self) -> String {
        let kind = if self.trace.is_some() { "trace-" } else { "" };
        format!("logs/{kind}{}.log", self.stem())
    }

    /// The kernel command line: the workload's words, the strategy's, the
    /// protection's and [`KERNEL_EXTRA_WORDS`]; `None` if the kernel has no
    /// option for the strategy.
    pub fn command_line(&self) -> Option<String> {
        let mut words: Vec<&str> = self.workload.kernel.to_vec();
        words.extend(self.strategy.kernel?);
        words.extend(self.protection.kernel);
        words.extend(KERNEL_EXTRA_WORDS);
        Some(words.join(" "))
    }

    /// Its result before it ran: skipped, with its command line and trace;
    /// the reason is said when the kernel lacks the strategy, and set by
    /// whatever ends the run otherwise.
    pub fn result(&self) -> RunResult {
        let reason = match self.strategy.kernel {
            Some(_) => String::new(),
            None => "the kernel has no option for it yet".into(),
        };
        let mut result = RunResult::skipped(
            self.strategy.name,
            self.protection.name,
            self.workload_name(),
            "qemu",
            reason,
        );
        result.command_line = self.command_line();
        result.trace = self.trace.map(|t| t.shown.clone());
        result
    }

    /// Its figures from the decoded `log` ([`kernel_metrics`]: the
    /// workload's line, from the strategy and protection asked for). A
    /// replay must have replayed the whole trace: its `ops` must be the
    /// trace's `events` where the host could count them, or the figures
    /// are of some other trace.
    pub fn metrics(&self, log: &[String], events: Option<usize>) -> Result<Metrics, String> {
        let metrics = kernel_metrics(log, self.workload, self.strategy, self.protection)?;
        if let (Some(trace), Some(events)) = (self.trace, events) {
            let ops = metrics.get("ops").copied();
            if ops != Some(events as f64) {
                let said = ops.map_or_else(|| "no ops=".to_string(), |n| format!("ops={n}"));
                return Err(format!(
                    "the kernel's replay says {said}, but {} has {events} events",
                    trace.shown
                ));
            }
        }
        Ok(metrics)
    }
}

/// The value of `key=` among kernel command-line `words`, if there.
fn word_value<'w>(words: &[&'w str], key: &str) -> Option<&'w str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Strategy {
    /// The `strategy=` and `fallback=` a kernel running this strategy
    /// prints: its `ptstrategy=` and `ptfallback=` words, or the kernel's
    /// defaults. `None` if the kernel lacks it.
    pub fn kernel_names(&self) -> Option<(&'static str, &'static str)> {
        let words = self.kernel?;
        Some((
            word_value(words, "ptstrategy").unwrap_or("freetype"),
            word_value(words, "ptfallback").unwrap_or("fail"),
        ))
    }
}

/// A QEMU run's figures from its decoded log: `workload`'s `lab:` line,
/// checked to be from the strategy and protection asked for (a kernel that
/// ran something else has figures for something else).
pub fn kernel_metrics(
    log: &[String],
    workload: &KernelWorkload,
    strategy: &Strategy,
    protection: &ProtectionOption,
) -> Result<Metrics, String> {
    let line = kernel_line::parse_lab_line(log, workload.name)?;
    let (want_strategy, want_fallback) = strategy.kernel_names().unwrap_or(("?", "?"));
    for (key, got, want) in [
        ("strategy", &line.strategy, want_strategy),
        ("fallback", &line.fallback, want_fallback),
        ("protection", &line.protection, protection.name),
    ] {
        match got.as_deref() {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(format!(
                    "the kernel ran {key}={got}, not the {key}={want} asked for"
                ));
            }
            None => return Err(format!("the lab line has no {key}= (expected {want})")),
        }
    }
    Ok(line.metrics)
}

/// A metric: its key, its heading and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Key in `metrics`.
    pub key: &'static str,
    /// Heading in tables and plot titles.
    pub heading: &'static str,
    /// What it counts, and where each side gets it.
    pub about: &'static str,
    /// Drawn as bar charts (`plot-host-<key>.svg`, `plot-kernel-<key>.svg`).
    pub plot: bool,
}

const fn metric(
    key: &'static str,
    heading: &'static str,
    about: &'static str,
    plot: bool,
) -> Metric {
    Metric {
        key,
        heading,
        about,
        plot,
    }
}

/// Every metric, one name per meaning across host and kernel runs.
///
/// The kernel's `lab:` line uses these keys. A host replay gives the same
/// figure under the same key from `ptalloc::Stats` (counters over the
/// whole trace; levels and the walk at the trace's peak, the first event
/// with the most page tables live), and adds figures only the simulator
/// has. A key a run does not give is absent (not measured), never 0.
pub const METRICS: &[Metric] = &[
    // Counters over the workload.
    metric(
        "ops",
        "ops",
        "workload operations (kernel: regions, spaces or rounds, a replay's trace events; host: trace events)",
        false,
    ),
    metric("maps", "maps", "map operations (kernel only)", false),
    metric(
        "pt_allocs",
        "PT allocs",
        "page-table pages allocated (exposed ones included)",
        false,
    ),
    metric(
        "pt_failures",
        "PT failed",
        "page-table allocations that failed (host: Stats::page_table_failures)",
        true,
    ),
    metric(
        "failed_allocs",
        "allocs failed",
        "allocations of any kind that failed (Stats::failed_allocations)",
        false,
    ),
    metric(
        "flushes",
        "flushes",
        "local TLB flushes by the allocator (Stats::flushes_local)",
        false,
    ),
    metric(
        "flushes_per_1000",
        "flushes / 1k PT",
        "flushes * 1000 / pt_allocs (derived)",
        true,
    ),
    metric(
        "flushes_remote",
        "remote flushes",
        "CPUs interrupted by shootdowns (Stats::flushes_remote)",
        false,
    ),
    metric(
        "splits_1g",
        "splits 1G→2M",
        "1 GiB direct-map pages split into 2 MiB ones",
        true,
    ),
    metric(
        "splits_2m",
        "splits 2M→4K",
        "2 MiB direct-map pages split into 4 KiB ones",
        true,
    ),
    metric(
        "page_protects",
        "pages protected alone",
        "single frames given the page-table key by themselves (pagewise, the single-page fallback)",
        false,
    ),
    metric(
        "page_unprotects",
        "pages unprotected alone",
        "single frames given back their pageblock's protection",
        false,
    ),
    metric(
        "conversions",
        "conversions",
        "pageblocks converted from one freetype to another, every direction",
        false,
    ),
    metric(
        "reserve_taken",
        "reserve taken",
        "split-reserve pages taken",
        false,
    ),
    metric(
        "exposed_tables",
        "exposed tables",
        "page tables handed out unprotected (ptfallback=unprotected)",
        true,
    ),
    metric(
        "exposure_allocs",
        "exposure (allocs)",
        "allocations made while each exposed table lived, summed",
        false,
    ),
    metric(
        "pkrs_writes",
        "PKRS writes",
        "writes of the PKRS register (kernel only)",
        false,
    ),
    metric(
        "pkrs_writes_per_map",
        "PKRS writes / map",
        "pkrs_writes / maps (derived; kernel only)",
        true,
    ),
    // Levels at the peak.
    metric(
        "dm_1g",
        "DM 1G",
        "direct-map leaf entries of 1 GiB at the peak",
        false,
    ),
    metric(
        "dm_2m",
        "DM 2M",
        "direct-map leaf entries of 2 MiB at the peak",
        false,
    ),
    metric(
        "dm_4k",
        "DM 4K",
        "direct-map leaf entries of 4 KiB at the peak",
        true,
    ),
    metric(
        "stranded",
        "stranded",
        "free page-table frames outside whole free pageblocks at the peak (Stats::stranded_protected)",
        true,
    ),
    metric(
        "reserve_level",
        "reserve level",
        "split-reserve pages at the peak",
        false,
    ),
    metric(
        "reserve_low_water",
        "reserve low water",
        "the split reserve's lowest level up to the peak",
        true,
    ),
    metric(
        "exposed_live",
        "exposed live",
        "exposed page tables live at the peak",
        false,
    ),
    // The verification walk at the peak.
    metric(
        "walk_tables",
        "walk tables",
        "page tables the verification walk saw at the peak (kernel: absent under ptprot=none; host: live trace tables)",
        false,
    ),
    metric(
        "walk_violations",
        "walk violations",
        "page tables the walk found without the page-table key at the peak; expected under ptfallback-unprotected",
        true,
    ),
    // The simulator's alone.
    metric(
        "conversions_to_pt",
        "conversions to PT",
        "pageblocks converted to the page-table freetype (host only)",
        false,
    ),
    metric(
        "conversions_from_pt",
        "conversions from PT",
        "pageblocks converted from the page-table freetype (host only)",
        false,
    ),
    metric(
        "conversion_batches",
        "conversion batches",
        "conversion batches, each at most one flush (host only)",
        false,
    ),
    metric(
        "single_page_fallbacks",
        "single-page fallbacks",
        "page tables the last resort protected alone (host only)",
        false,
    ),
    metric(
        "compactions",
        "compactions",
        "pageblocks compaction emptied (host only)",
        false,
    ),
    metric(
        "data_failed",
        "data failed",
        "data blocks (trace `D`) that could not be allocated (host only)",
        false,
    ),
    metric(
        "pt_pageblocks_peak",
        "PT pageblocks",
        "pageblocks of the page-table freetype at the peak (host only)",
        false,
    ),
    metric(
        "check_failed",
        "check failed",
        "1 if ptalloc::sim::check found a broken invariant at the end (host only)",
        false,
    ),
    metric(
        "seconds",
        "seconds",
        "wall time (kernel: the whole QEMU run; host: the replay)",
        false,
    ),
];

/// How a column shows its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `a / b / c`.
    Slash,
    /// `a (b)`.
    Paren,
}

/// A column of a table: one metric, or several in one cell.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Its heading.
    pub heading: &'static str,
    /// The metrics in the cell, in order.
    pub keys: &'static [&'static str],
    /// How they are joined.
    pub shape: Shape,
}

const fn column(heading: &'static str, keys: &'static [&'static str], shape: Shape) -> Column {
    Column {
        heading,
        keys,
        shape,
    }
}

/// `results.md`'s columns: what the README compares across strategies.
pub const TABLE: &[Column] = &[
    column("PT allocs", &["pt_allocs"], Shape::Slash),
    column("PT failed", &["pt_failures"], Shape::Slash),
    column("allocs failed", &["failed_allocs"], Shape::Slash),
    column(
        "flushes (per 1k PT)",
        &["flushes", "flushes_per_1000"],
        Shape::Paren,
    ),
    column(
        "splits 1G→2M / 2M→4K",
        &["splits_1g", "splits_2m"],
        Shape::Slash,
    ),
    column(
        "pages protected / unprotected alone",
        &["page_protects", "page_unprotects"],
        Shape::Slash,
    ),
    column("conversions", &["conversions"], Shape::Slash),
    column(
        "DM 1G / 2M / 4K",
        &["dm_1g", "dm_2m", "dm_4k"],
        Shape::Slash,
    ),
    column("stranded", &["stranded"], Shape::Slash),
    column(
        "reserve low water / taken",
        &["reserve_low_water", "reserve_taken"],
        Shape::Slash,
    ),
    column(
        "exposed tables / allocs / live",
        &["exposed_tables", "exposure_allocs", "exposed_live"],
        Shape::Slash,
    ),
    column(
        "walk tables / violations",
        &["walk_tables", "walk_violations"],
        Shape::Slash,
    ),
    column("PKRS writes / map", &["pkrs_writes_per_map"], Shape::Slash),
    column("seconds", &["seconds"], Shape::Slash),
];

/// `comparison.md`'s columns: the key figures, compact enough for the
/// README to include the file as it is.
pub const COMPARISON: &[Column] = &[
    column("PT allocs", &["pt_allocs"], Shape::Slash),
    column("PT failed", &["pt_failures"], Shape::Slash),
    column(
        "flushes (per 1k PT)",
        &["flushes", "flushes_per_1000"],
        Shape::Paren,
    ),
    column("splits 1G / 2M", &["splits_1g", "splits_2m"], Shape::Slash),
    column(
        "DM 1G / 2M / 4K",
        &["dm_1g", "dm_2m", "dm_4k"],
        Shape::Slash,
    ),
    column("stranded", &["stranded"], Shape::Slash),
    column(
        "reserve low / taken",
        &["reserve_low_water", "reserve_taken"],
        Shape::Slash,
    ),
    column(
        "exposed tables / allocs",
        &["exposed_tables", "exposure_allocs"],
        Shape::Slash,
    ),
    column("walk violations", &["walk_violations"], Shape::Slash),
    column("PKRS writes / map", &["pkrs_writes_per_map"], Shape::Slash),
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
    /// The workload: a kernel workload's name or a trace's
    /// ([`TraceFile::name`], host runs and the kernel's replays alike).
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
    /// The trace file replayed ([`TraceFile::shown`]): every host run,
    /// and the kernel's replays (`lab=trace`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace: Option<String>,
    /// Figures by name ([`METRICS`] and more).
    pub metrics: Metrics,
    /// Memory pictures written, relative to the output directory.
    pub pictures: Vec<String>,
    /// What went wrong without failing the run: a memory picture that
    /// could not be drawn (the figures were read all the same).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
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
            trace: None,
            metrics: Metrics::new(),
            pictures: Vec::new(),
            notes: Vec::new(),
            detail: None,
        }
    }

    /// This run, failed for `reason`.
    pub fn failed(mut self, reason: String) -> Self {
        self.status = Status::Failed;
        self.reason = Some(reason);
        self
    }

    /// Whether it is the kernel's replay of a trace (`lab=trace`).
    pub fn is_kernel_replay(&self) -> bool {
        self.kind == "qemu" && self.trace.is_some()
    }

    /// Its workload as tables and plots name it: `trace <name>` for the
    /// kernel's replay of a trace, apart from a kernel workload of the
    /// same name (the shipped `storm` trace and `lab=storm`); else its
    /// workload.
    pub fn workload_label(&self) -> String {
        if self.is_kernel_replay() {
            format!("trace {}", self.workload)
        } else {
            self.workload.clone()
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
    /// The object-protection policies: each one's column of the attack
    /// matrix and what its syscalls cost (`crate::attack_matrix`).
    #[serde(default)]
    pub objects: Vec<crate::attack_matrix::PolicyRun>,
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

/// Replays `trace` (or records why it could not be read) under `strategy`
/// on `machine` as the host run of `workload`; with `pictures`, also
/// returns the pageblock maps at the peak and the end, labelled
/// `<workload>-<strategy>-peak|end`. A strategy the simulator lacks is a
/// skipped run; a broken simulator invariant is a failed one.
pub fn host_run(
    strategy: &Strategy,
    workload: &str,
    trace: Result<&Trace, &str>,
    machine: Machine,
    pictures: bool,
) -> (RunResult, Vec<Dump>) {
    let mut result = RunResult::skipped(
        strategy.name,
        HOST_PROTECTION,
        workload,
        "host",
        String::new(),
    );
    let Some(build) = strategy.host else {
        result.reason = Some("the simulator has no such strategy yet (ptalloc Config)".into());
        return (result, Vec::new());
    };
    let trace = match trace {
        Ok(trace) => trace,
        Err(e) => return (result.failed(e.to_string()), Vec::new()),
    };
    let setup = build(machine);
    let label = crate::memmap::label_from(&format!("{workload}-{}", strategy.name));
    let report = match replay::replay(
        trace,
        &setup.machine,
        setup.config,
        pictures.then_some(label.as_str()),
    ) {
        Ok(report) => report,
        Err(e) => return (result.failed(e.to_string()), Vec::new()),
    };
    result.status = Status::Ok;
    result.reason = None;
    result.metrics = report
        .metrics()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    result.detail = Some(report.to_json());
    if let Err(broken) = &report.check {
        result = result.failed(format!("the simulator's invariants broke: {broken}"));
    }
    (result, report.dumps)
}

/// `objects.md`: the attack matrix, then what each policy's syscalls
/// cost, then any run that failed.
pub fn objects_markdown(runs: &[crate::attack_matrix::PolicyRun]) -> String {
    use crate::attack_matrix::{costs_markdown, markdown};
    let columns: Vec<(&str, Vec<crate::attack_matrix::Attack>)> = runs
        .iter()
        .map(|run| (run.policy.as_str(), run.attacks.clone()))
        .collect();
    let mut md = String::from(
        "# Object protection: the attack matrix and its costs\n\n\
         Each cell is a kernel attack test's outcome under the policy of its column \
         (`kernel/src/attack_matrix.rs`): blocked (the write faulted), detected (it landed and \
         the verification walk reported it) or succeeded (it landed unnoticed). — = the run \
         failed (below).\n\n",
    );
    md.push_str(&markdown(&columns));
    md.push_str(
        "\n## What the protected classes cost\n\nThe user test suite (`roottask=suite`) under \
         each policy: its syscalls, the PKRS writes made while handling them, and the flushes \
         and pageblock conversions the allocator made during the suite.\n\n",
    );
    md.push_str(&costs_markdown(runs));
    let failures: Vec<String> = runs
        .iter()
        .flat_map(|run| {
            run.failures
                .iter()
                .map(move |f| format!("- {}: {f}", run.policy))
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\n## Runs that failed\n\n");
        md.push_str(&failures.join("\n"));
        md.push('\n');
    }
    md
}

/// Writes `results.json`, `results.md`, `comparison.md`, `objects.md`
/// (when the object policies ran) and, per plotted metric, a chart of the
/// host runs and one of the kernel runs (`plot-host-<key>.svg`,
/// `plot-kernel-<key>.svg`, where any run has the metric) into `dir`;
/// returns the files written.
pub fn write_outputs(dir: &Path, results: &Results) -> Result<Vec<String>, String> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let json =
        serde_json::to_string_pretty(results).map_err(|e| format!("results as JSON: {e}"))?;
    write("results.json", &json)?;
    write("results.md", &tables::markdown(results))?;
    write("comparison.md", &tables::comparison(results))?;
    let mut files = vec![
        "results.json".to_string(),
        "results.md".to_string(),
        "comparison.md".to_string(),
    ];
    if !results.objects.is_empty() {
        write("objects.md", &objects_markdown(&results.objects))?;
        files.push("objects.md".to_string());
    }
    let (host, kernel): (Vec<RunResult>, Vec<RunResult>) = results
        .runs
        .iter()
        .cloned()
        .partition(|r| r.protection == HOST_PROTECTION);
    for metric in METRICS.iter().filter(|m| m.plot) {
        for (side, runs) in [("host", &host), ("kernel", &kernel)] {
            if let Some(svg) = plots::plot(metric, side, runs)? {
                let name = format!("plot-{side}-{}.svg", metric.key);
                write(&name, &svg)?;
                files.push(name);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::PAGEBLOCK_FRAMES;

    #[test]
    fn every_strategy_is_named_once_and_runs_on_both_sides() {
        let mut names: Vec<&str> = STRATEGIES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STRATEGIES.len());
        assert_eq!(names.len(), 5);
        assert!(
            STRATEGIES
                .iter()
                .all(|s| s.kernel.is_some() && s.host.is_some())
        );
        assert!(
            STRATEGIES
                .iter()
                .all(|s| crate::memmap::label_from(s.name) == s.name)
        );
        let names: Vec<Option<(&str, &str)>> =
            STRATEGIES.iter().map(Strategy::kernel_names).collect();
        assert_eq!(
            names,
            [
                Some(("freetype", "fail")),
                Some(("pagewise", "fail")),
                Some(("granular", "fail")),
                Some(("protected-first", "fail")),
                Some(("freetype", "unprotected")),
            ]
        );
    }

    #[test]
    fn metric_names_are_one_list() {
        let mut keys: Vec<&str> = METRICS.iter().map(|m| m.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), METRICS.len(), "a metric is listed twice");
        let known = |k: &str| METRICS.iter().any(|m| m.key == k);
        for column in TABLE.iter().chain(COMPARISON) {
            for key in column.keys {
                assert!(known(key), "column {:?}: {key}", column.heading);
            }
        }
        // Whatever a replay reports is documented.
        let machine = small(LargestPage::Giga);
        let report = replay::replay(
            &Trace::default(),
            &machine,
            replay::kernel_config(&machine),
            None,
        );
        let report = report.map_err(|e| e.to_string());
        for (key, _) in report.map(|r| r.metrics()).unwrap_or_default() {
            assert!(known(key), "replay metric {key}");
        }
        // And so is every key of the kernel's line, derived ones too.
        let line = "lab: workload=churn strategy=freetype fallback=fail protection=pks ops=1 \
                    maps=1 pt_allocs=1 pt_failures=0 failed_allocs=0 flushes=1 flushes_remote=0 \
                    splits_1g=0 splits_2m=0 page_protects=0 page_unprotects=0 conversions=1 \
                    reserve_taken=0 exposed_tables=0 exposure_allocs=0 pkrs_writes=2 dm_1g=0 \
                    dm_2m=64 dm_4k=0 stranded=0 reserve_level=8 reserve_low_water=8 \
                    exposed_live=0 walk_tables=1 walk_violations=0";
        let parsed = kernel_line::parse_lab_line(&[line.to_string()], "churn");
        let metrics = parsed.map(|l| l.metrics).unwrap_or_default();
        assert_eq!(metrics.len(), 25 + 2);
        for key in metrics.keys() {
            assert!(known(key), "kernel key {key}");
        }
    }

    #[test]
    fn kernel_figures_must_be_from_the_run_asked_for() {
        let (churn, unprotected, pks) = (&KERNEL_WORKLOADS[0], &STRATEGIES[4], &PROTECTIONS[0]);
        let log = |s: &str| {
            vec![format!(
                "[INFO ] lab: workload=churn {s} pt_allocs=4 flushes=2"
            )]
        };
        let ok = kernel_metrics(
            &log("strategy=freetype fallback=unprotected protection=pks"),
            churn,
            unprotected,
            pks,
        );
        assert_eq!(
            ok.map(|m| m.get("flushes_per_1000").copied()),
            Ok(Some(500.0))
        );
        let e = kernel_metrics(
            &log("strategy=freetype fallback=fail protection=pks"),
            churn,
            unprotected,
            pks,
        );
        assert_eq!(
            e,
            Err("the kernel ran fallback=fail, not the fallback=unprotected asked for".into())
        );
        let e = kernel_metrics(&log("strategy=freetype"), churn, &STRATEGIES[0], pks);
        assert!(e.is_err_and(|e| e.contains("no fallback=")));
        let e = kernel_metrics(&[], churn, &STRATEGIES[0], pks);
        assert!(e.is_err_and(|e| e.contains("no `lab: workload=churn")));
    }

    /// 32 pageblocks: small enough to replay the shipped traces in a
    /// fraction of a second, and a machine the pressure trace (made for
    /// 2 GiB) presses hard.
    fn small(largest: LargestPage) -> Machine {
        Machine {
            frames: 32 * PAGEBLOCK_FRAMES,
            largest,
        }
    }

    fn shipped(name: &str) -> Trace {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("traces")
            .join(format!("{name}.trace"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        crate::trace::parse(&text).unwrap_or_default()
    }

    /// Each strategy's run of `trace` on the small machine, all ok.
    fn runs_of(trace: &Trace, workload: &str) -> BTreeMap<&'static str, Metrics> {
        assert!(!trace.events.is_empty(), "{workload}: no shipped trace");
        STRATEGIES
            .iter()
            .map(|s| {
                let (run, dumps) = host_run(s, workload, Ok(trace), small(LargestPage::Giga), true);
                assert_eq!(
                    run.status,
                    Status::Ok,
                    "{workload}/{}: {:?}",
                    s.name,
                    run.reason
                );
                assert_eq!(dumps.len(), 2);
                let detail = run.detail.unwrap_or_default();
                assert_eq!(detail["check"], "ok", "{workload}/{}", s.name);
                (s.name, run.metrics)
            })
            .collect()
    }

    fn get(runs: &BTreeMap<&str, Metrics>, strategy: &str, key: &str) -> f64 {
        runs.get(strategy)
            .and_then(|m| m.get(key).copied())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn each_strategy_shows_its_signature_on_the_shipped_traces() {
        let growing = runs_of(&shipped("growing"), "growing");
        let g = |s, k| get(&growing, s, k);
        let tables = g("freetype", "pt_allocs");
        assert_eq!(tables, 8897.0);
        // Today's design: page tables from converted pageblocks, no page
        // protected alone, no 2 MiB split.
        assert!(g("freetype", "conversions_to_pt") >= 2.0);
        assert_eq!(g("freetype", "page_protects"), 0.0);
        assert_eq!(g("freetype", "splits_2m"), 0.0);
        assert_eq!(g("freetype", "splits_1g"), 1.0);
        // Pagewise: every table protected alone, none from a conversion
        // (the one conversion stocks the split reserve).
        assert_eq!(g("pagewise", "page_protects"), tables);
        assert!(g("pagewise", "conversions_to_pt") <= 1.0);
        assert!(g("pagewise", "splits_2m") > 0.0 && g("pagewise", "dm_4k") > 0.0);
        assert!(g("pagewise", "flushes") >= tables);
        // Granular: a map of 2 MiB pages, so never a 1 GiB split.
        assert_eq!(g("granular", "splits_1g"), 0.0);
        assert_eq!(g("granular", "dm_1g"), 0.0);
        // Protected first: the memory starts in the page-table freetype.
        assert!(g("protected-first", "conversions_to_pt") > 16.0);

        let pressure = runs_of(&shipped("pressure"), "pressure");
        let p = |s, k| get(&pressure, s, k);
        // Memory runs out: today's design fails page tables, and exposes
        // none; the dodge hands them out exposed, and the walk finds the
        // ones live at the peak.
        assert!(p("freetype", "pt_failures") > 0.0);
        assert_eq!(p("freetype", "exposed_tables"), 0.0);
        assert_eq!(p("freetype", "walk_violations"), 0.0);
        assert!(p("ptfallback-unprotected", "exposed_tables") > 0.0);
        assert!(p("ptfallback-unprotected", "exposure_allocs") > 0.0);
        assert!(p("ptfallback-unprotected", "walk_violations") > 0.0);
        assert_eq!(
            p("ptfallback-unprotected", "walk_violations"),
            p("ptfallback-unprotected", "exposed_live")
        );
        // Ordinary memory takes pageblocks back from the page tables.
        assert!(p("protected-first", "conversions_from_pt") > 0.0);
        assert_eq!(p("freetype", "conversions_from_pt"), 0.0);
        for s in STRATEGIES {
            if s.name != "ptfallback-unprotected" {
                assert_eq!(p(s.name, "exposed_tables"), 0.0, "{}", s.name);
            }
        }
    }

    #[test]
    fn a_bad_trace_fails_its_run() {
        let (run, dumps) = host_run(
            &STRATEGIES[0],
            "bad",
            Err("bad.trace: line 1: bad level \"9\""),
            small(LargestPage::Giga),
            true,
        );
        assert_eq!(run.status, Status::Failed);
        assert_eq!(
            run.reason.as_deref(),
            Some("bad.trace: line 1: bad level \"9\"")
        );
        assert!(dumps.is_empty());
        let missing = Strategy {
            host: None,
            ..STRATEGIES[0]
        };
        let (run, _) = host_run(
            &missing,
            "x",
            Ok(&Trace::default()),
            small(LargestPage::Giga),
            false,
        );
        assert_eq!(run.status, Status::Skipped);
    }

    fn results() -> Results {
        let mut ok = RunResult::skipped("freetype", "sim", "storm", "host", String::new());
        ok.status = Status::Ok;
        ok.reason = None;
        ok.metrics.insert("flushes".into(), 3.0);
        ok.metrics.insert("flushes_per_1000".into(), 1.5);
        ok.metrics.insert("splits_2m".into(), 0.0);
        ok.trace = Some("tools/traces/storm.trace".into());
        let mut dodge = ok.clone();
        dodge.strategy = "ptfallback-unprotected".into();
        dodge.metrics.insert("walk_violations".into(), 12.0);
        let mut churn = ok.clone();
        churn.workload = "churn".into();
        churn.protection = "pks".into();
        churn.kind = "qemu".into();
        churn.trace = None;
        // `lab=storm`, and the kernel's replays of the storm trace: one
        // workload name, two workloads.
        let mut lab_storm = churn.clone();
        lab_storm.workload = "storm".into();
        lab_storm.metrics.insert("flushes".into(), 9.0);
        let mut replay = lab_storm.clone();
        replay.trace = ok.trace.clone();
        replay.metrics.insert("flushes".into(), 7.0);
        replay.metrics.insert("flushes_per_1000".into(), 3.5);
        let mut replay_refused = replay.clone().failed(
            "kernel rejected its command line: \"kernel command line rejected: option 'lab' does \
             not accept 'trace'\""
                .into(),
        );
        replay_refused.strategy = "pagewise".into();
        replay_refused.metrics.clear();
        let mut failed = churn.clone();
        churn
            .notes
            .push("logs/churn.log: memmap dump: no `memmap end`; no picture".into());
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
            runs: vec![
                ok,
                dodge,
                churn,
                failed,
                skipped,
                lab_storm,
                replay,
                replay_refused,
            ],
            objects: Vec::new(),
        }
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = results();
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(json.contains("\"status\":\"skipped\""));
        assert!(json.contains("\"schema\":\"pks-lab/1\""));
        assert!(json.contains("\"trace\":\"tools/traces/storm.trace\""));
        assert_eq!(serde_json::from_str::<Results>(&json).ok(), Some(r));
        // A real host run too, its full report included.
        let (run, _) = host_run(
            &STRATEGIES[2],
            "growing",
            Ok(&shipped("growing")),
            small(LargestPage::Giga),
            false,
        );
        let mut r = results();
        r.runs = vec![run];
        let json = serde_json::to_string(&r).unwrap_or_default();
        let back = serde_json::from_str::<Results>(&json).ok();
        assert_eq!(
            back.as_ref().map(|b| &b.runs[0].metrics),
            Some(&r.runs[0].metrics)
        );
        assert_eq!(
            back.and_then(|b| b.runs[0].detail.clone())
                .map(|d| d["machine"]["largest_page"].clone()),
            Some(serde_json::json!("2M")),
            "granular ran on a map of 2 MiB pages"
        );
    }

    #[test]
    fn the_table_has_a_row_per_run_that_ran_and_lists_the_rest() {
        let md = tables::markdown(&results());
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| freetype") || l.starts_with("| ptfallback"))
            .collect();
        assert_eq!(rows.len(), 6);
        assert!(rows[0].contains("| storm | ok |") && rows[0].contains(" 3 (1.50) |"));
        assert!(rows[3].contains("FAILED: timed out / killed"));
        // `lab=storm` and the kernel's replay of the storm trace, apart.
        assert!(rows[4].starts_with("| freetype | pks | storm | ok |"));
        assert!(rows[5].starts_with("| freetype | pks | trace storm | ok |"));
        assert!(md.contains("| pagewise | pks | trace storm | FAILED: kernel rejected"));
        assert!(md.contains("- `granular`: not in the simulator yet (1 runs: storm/sim)"));
        let header = md
            .lines()
            .find(|l| l.starts_with("| strategy"))
            .unwrap_or_default();
        assert_eq!(header.matches('|').count(), 5 + TABLE.len());
        // The walk's violations: a column, a sentence, and which run.
        assert!(header.contains("walk tables / violations"));
        assert!(md.contains("A run with violations still passes"));
        assert!(md.contains("- storm / ptfallback-unprotected / sim: 12 (expected"));
        assert!(md.contains("- `walk_violations` (walk violations):"));
        assert!(
            md.contains("- churn / freetype / pks: logs/churn.log: memmap dump: no `memmap end`")
        );
    }

    #[test]
    fn the_comparison_has_a_table_per_workload_and_a_row_per_strategy() {
        let md = tables::comparison(&results());
        let headings: Vec<&str> = md.lines().filter(|l| l.starts_with("## ")).collect();
        assert_eq!(
            headings,
            ["## storm (trace)", "## churn (kernel)", "## storm (kernel)"]
        );
        // ptprot=ro is not compared.
        assert!(!md.contains("timed out"));
        let section = |heading: &str| {
            md.split("## ")
                .find(|s| s.starts_with(heading))
                .unwrap_or_default()
                .to_string()
        };
        let rows = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("| "))
                .map(String::from)
                .collect()
        };
        // The trace: a header, and a row per strategy on each side.
        let trace = section("storm (trace)");
        let trace_rows = rows(&trace);
        assert_eq!(trace_rows.len(), 1 + 2 * STRATEGIES.len());
        assert!(trace_rows[0].starts_with("| side | strategy | PT allocs |"));
        let host = &trace_rows[1];
        assert!(
            host.starts_with("| host | freetype | — | — | 3 (1.50) |"),
            "{host}"
        );
        let kernel = &trace_rows[1 + STRATEGIES.len()];
        assert!(
            kernel.starts_with("| kernel | freetype | — | — | 7 (3.50) |"),
            "{kernel}"
        );
        assert!(trace.contains("- host `granular`: not run: not in the simulator yet"));
        assert!(trace.contains("- host `pagewise`: not run\n"));
        assert!(trace.contains("- kernel `pagewise`: failed: kernel rejected its command line"));
        // `lab=storm` has its own section, without the replay's figures.
        let workload = rows(&section("storm (kernel)"));
        assert_eq!(workload.len(), 1 + STRATEGIES.len());
        assert!(workload[0].starts_with("| strategy | PT allocs |"));
        assert!(
            workload[1].starts_with("| freetype | — | — | 9 (1.50) |"),
            "{}",
            workload[1]
        );
        // Host runs alone (`--no-qemu`): no kernel side at all.
        let mut host_only = results();
        host_only.runs.retain(|r| r.kind == "host");
        let md = tables::comparison(&host_only);
        assert_eq!(md.matches("## ").count(), 1);
        assert!(!md.contains("| kernel |") && !md.contains("- kernel"));
    }

    fn trace_file() -> TraceFile {
        TraceFile {
            name: "storm".into(),
            path: PathBuf::from("traces/storm.trace"),
            shown: "tools/traces/storm.trace".into(),
        }
    }

    #[test]
    fn a_kernel_replay_boots_the_trace_and_carries_its_name() {
        let file = trace_file();
        let (freetype, dodge, pks) = (&STRATEGIES[0], &STRATEGIES[4], &PROTECTIONS[0]);
        assert_eq!(TRACE_PROTECTIONS.len(), 1);
        assert_eq!(TRACE_PROTECTIONS[0].name, "pks");
        let replay = KernelRun::of_trace(&file, dodge, &TRACE_PROTECTIONS[0]);
        assert_eq!(
            replay.command_line().as_deref(),
            Some("lab=trace ptstrategy=freetype ptfallback=unprotected ptprot=pks memmap=lab")
        );
        assert_eq!(replay.workload.timeout, 240);
        assert_eq!(replay.workload_name(), "storm");
        assert_eq!(replay.stem(), "storm-ptfallback-unprotected-pks");
        assert_eq!(
            replay.log_name(),
            "logs/trace-storm-ptfallback-unprotected-pks.log"
        );
        let r = replay.result();
        assert_eq!(
            (r.workload.as_str(), r.kind.as_str(), r.protection.as_str()),
            ("storm", "qemu", "pks")
        );
        assert_eq!(r.trace.as_deref(), Some("tools/traces/storm.trace"));
        assert!(r.is_kernel_replay());
        assert_eq!(r.workload_label(), "trace storm");
        // The kernel workload of the same name: its own log and label.
        let storm = KernelRun::of_workload(&KERNEL_WORKLOADS[2], freetype, pks);
        assert_eq!(
            storm.command_line().as_deref(),
            Some("lab=storm ptstrategy=freetype ptprot=pks memmap=lab")
        );
        assert_eq!(storm.log_name(), "logs/storm-freetype-pks.log");
        let r = storm.result();
        assert!(!r.is_kernel_replay() && r.trace.is_none());
        assert_eq!(r.workload_label(), "storm");
        // A strategy the kernel lacks: no command line, skipped with why.
        let missing = Strategy {
            kernel: None,
            ..*freetype
        };
        let run = KernelRun::of_trace(&file, &missing, pks);
        assert_eq!(run.command_line(), None);
        let r = run.result();
        assert_eq!(r.status, Status::Skipped);
        assert!(r.reason.is_some_and(|why| why.contains("no option")));
        // Host runs of the trace are not replays, though they name it.
        let mut host = RunResult::skipped("freetype", HOST_PROTECTION, "storm", "host", "".into());
        host.trace = Some(file.shown.clone());
        assert!(!host.is_kernel_replay());
        assert_eq!(host.workload_label(), "storm");
    }

    #[test]
    fn a_kernel_replay_reads_the_trace_line_and_must_replay_every_event() {
        let file = trace_file();
        let (freetype, pks) = (&STRATEGIES[0], &PROTECTIONS[0]);
        let replay = KernelRun::of_trace(&file, freetype, pks);
        let log = |workload: &str| {
            vec![format!(
                "[INFO ] lab: workload={workload} strategy=freetype fallback=fail protection=pks \
                 ops=44812 pt_allocs=2000 pt_failures=0 flushes=4"
            )]
        };
        let metrics = replay.metrics(&log("trace"), Some(44812));
        assert_eq!(
            metrics.map(|m| (
                m.get("pt_allocs").copied(),
                m.get("flushes_per_1000").copied()
            )),
            Ok((Some(2000.0), Some(2.0)))
        );
        // The host could not read the trace: nothing to hold ops to.
        assert!(replay.metrics(&log("trace"), None).is_ok());
        let e = replay
            .metrics(&log("trace"), Some(44813))
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "the kernel's replay says ops=44812, but tools/traces/storm.trace has 44813 events"
        );
        let no_ops =
            vec!["lab: workload=trace strategy=freetype fallback=fail protection=pks".to_string()];
        let e = replay.metrics(&no_ops, Some(1)).err().unwrap_or_default();
        assert!(e.contains("says no ops="), "{e}");
        // The kernel's line names the workload `trace`, never the trace.
        let e = replay
            .metrics(&log("storm"), Some(44812))
            .err()
            .unwrap_or_default();
        assert!(e.contains("no `lab: workload=trace"), "{e}");
        // And a kernel workload's ops are not held to any trace.
        let storm = KernelRun::of_workload(&KERNEL_WORKLOADS[2], freetype, pks);
        assert!(storm.metrics(&log("storm"), Some(1)).is_ok());
    }

    #[test]
    fn cells_join_their_metrics() {
        let mut m = Metrics::new();
        let dm = column("DM", &["dm_1g", "dm_2m", "dm_4k"], Shape::Slash);
        assert_eq!(tables::cell(&dm, &m), "—");
        m.insert("dm_2m".into(), 512.0);
        assert_eq!(tables::cell(&dm, &m), "— / 512 / —");
        let flushes = column("f", &["flushes", "flushes_per_1000"], Shape::Paren);
        m.insert("flushes".into(), 20097.0);
        m.insert("flushes_per_1000".into(), 1531.678);
        assert_eq!(tables::cell(&flushes, &m), "20097 (1531.7)");
        assert_eq!(tables::number(0.126), "0.13");
    }

    #[test]
    fn plots_have_a_bar_and_a_value_per_run_and_a_legend() {
        let r = results();
        let metric = METRICS.iter().find(|m| m.key == "flushes_per_1000");
        let svg = metric
            .map(|m| plots::plot(m, "host", &r.runs))
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        assert!(svg.starts_with("<svg"), "{svg:.80}");
        assert!(svg.contains("storm") && svg.contains("churn (pks)") && svg.contains("freetype"));
        assert!(
            svg.contains("trace storm (pks)"),
            "the replay's bars are its own"
        );
        assert!(svg.contains("1.50"), "the bars carry their values");
        // Nothing to plot: no file.
        let none = Metric {
            key: "absent",
            heading: "x",
            about: "",
            plot: true,
        };
        assert_eq!(plots::plot(&none, "host", &r.runs), Ok(None));
    }

    #[test]
    fn outputs_are_written() {
        let dir = std::env::temp_dir().join(format!("lab-outputs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let files = write_outputs(&dir, &results()).unwrap_or_default();
        for name in [
            "results.json",
            "results.md",
            "comparison.md",
            "plot-host-flushes_per_1000.svg",
            "plot-kernel-flushes_per_1000.svg",
            "plot-host-walk_violations.svg",
        ] {
            assert!(files.iter().any(|f| f == name), "{name}: {files:?}");
            assert!(dir.join(name).is_file(), "{name}");
        }
        assert!(!files.iter().any(|f| f == "plot-kernel-walk_violations.svg"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
