//! The lab's results as markdown: `results.md` (every run) and
//! `comparison.md` (the strategies side by side, for the README).
//!
//! What this module promises: every run that ran is a row of
//! `results.md` (a failed one with why), the skipped ones are listed under
//! the table by strategy and reason, and the runs whose verification walk
//! found page tables without the key are named, expected or not, as are
//! the runs with notes (a picture that could not be drawn); the kernel's
//! replay of a trace is named `trace <name>` wherever a kernel workload
//! of that name could be mistaken for it. `comparison.md` has a section
//! per trace and per kernel workload, with the [`COMPARISON`] columns
//! and one row per strategy in [`STRATEGIES`] order: a trace's section
//! gives each side that ran it (`host`, then `kernel`: its replay in the
//! kernel), a kernel workload's its runs under `ptprot=pks`, the
//! protection every strategy is about. Neither panics on any
//! [`Results`]: an absent metric is `—`, and a `|` in a reason cannot
//! break a row.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{
    COMPARISON, Column, HOST_PROTECTION, METRICS, Metrics, Results, RunResult, STRATEGIES, Shape,
    Status, TABLE,
};

/// The protection kernel workloads are compared under.
pub const COMPARED_PROTECTION: &str = "pks";

/// The strategy whose walk violations are expected (the dodge).
pub const EXPOSING_STRATEGY: &str = "ptfallback-unprotected";

/// A figure as tables show it: whole numbers plain, others rounded.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The cell of `column` for `metrics`: `—` where nothing is measured.
pub fn cell(column: &Column, metrics: &Metrics) -> String {
    let values: Vec<Option<f64>> = column
        .keys
        .iter()
        .map(|k| metrics.get(*k).copied())
        .collect();
    if values.iter().all(Option::is_none) {
        return "—".into();
    }
    let shown: Vec<String> = values
        .iter()
        .map(|v| v.map_or_else(|| "—".to_string(), number))
        .collect();
    match column.shape {
        Shape::Slash => shown.join(" / "),
        Shape::Paren => match shown.split_first() {
            Some((first, rest)) if !rest.is_empty() => format!("{first} ({})", rest.join(", ")),
            _ => shown.join(""),
        },
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

fn header(md: &mut String, leading: &[&str], columns: &[Column]) {
    md.push('|');
    for h in leading {
        let _ = write!(md, " {h} |");
    }
    for c in columns {
        let _ = write!(md, " {} |", c.heading);
    }
    md.push_str("\n|");
    for _ in leading {
        md.push_str("---|");
    }
    for _ in columns {
        md.push_str("---:|");
    }
    md.push('\n');
}

fn machines(results: &Results) -> String {
    format!(
        "Host runs replay traces on ptalloc's simulator ({} MiB, a direct map of {} pages, 2 MiB \
         under `granular`); QEMU runs boot the kernel (-m {}, -cpu {}, -smp {}).",
        results.host_machine.memory_mib,
        results.host_machine.largest_page,
        results.qemu_machine.memory,
        results.qemu_machine.cpu,
        results.qemu_machine.smp
    )
}

const READING: &str = "Counters are over the workload; direct-map entries (DM), stranded \
    frames, the reserve's low water, live exposed tables and the walk are at its peak (the \
    most page tables live). — = not measured by that run.";

/// `results.md`: a table of the runs that ran, the walk's violations,
/// what was skipped, and what each metric means.
pub fn markdown(results: &Results) -> String {
    let mut md = String::from("# Policy lab results\n\n");
    let _ = writeln!(
        md,
        "{} {READING} Metrics as in `tools/src/lab.rs` (`METRICS`, listed below).\n",
        machines(results)
    );
    header(
        &mut md,
        &["strategy", "protection", "workload", "status"],
        TABLE,
    );
    for run in results.runs.iter().filter(|r| r.status != Status::Skipped) {
        let status = match run.status {
            Status::Ok => "ok".to_string(),
            _ => format!("FAILED: {}", escape(run.reason.as_deref().unwrap_or(""))),
        };
        let _ = write!(
            md,
            "| {} | {} | {} | {status} |",
            run.strategy,
            run.protection,
            run.workload_label()
        );
        for column in TABLE {
            let _ = write!(md, " {} |", cell(column, &run.metrics));
        }
        md.push('\n');
    }
    md.push('\n');
    md.push_str(&walk_paragraph(&results.runs));
    let noted: Vec<&RunResult> = results
        .runs
        .iter()
        .filter(|r| !r.notes.is_empty())
        .collect();
    if !noted.is_empty() {
        md.push_str("\nNotes (the run's figures stand):\n\n");
        for run in noted {
            for note in &run.notes {
                let _ = writeln!(
                    md,
                    "- {} / {} / {}: {}",
                    run.workload_label(),
                    run.strategy,
                    run.protection,
                    escape(note)
                );
            }
        }
    }
    let mut skipped: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for run in results.runs.iter().filter(|r| r.status == Status::Skipped) {
        let reason = run.reason.as_deref().unwrap_or("");
        skipped
            .entry((run.strategy.as_str(), reason))
            .or_default()
            .push(format!("{}/{}", run.workload_label(), run.protection));
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
    md.push_str("\nMetrics:\n\n");
    for m in METRICS {
        let _ = writeln!(md, "- `{}` ({}): {}", m.key, m.heading, m.about);
    }
    md
}

/// The sentence on walk violations, and the runs that had any.
fn walk_paragraph(runs: &[RunResult]) -> String {
    let mut text = format!(
        "**Walk violations.** The verification walk at a workload's peak counts the page tables \
         mapped without the page-table key. A run with violations still passes (status ok): \
         under `{EXPOSING_STRATEGY}` each exposed page table live at the peak is one, which is \
         what the dodge costs; under any other strategy a violation is a bug."
    );
    let with: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.metrics.get("walk_violations").is_some_and(|&v| v > 0.0))
        .collect();
    if with.is_empty() {
        text.push_str(" No run's walk found any.\n");
        return text;
    }
    text.push_str(" Runs whose walk found some:\n\n");
    for run in with {
        let violations = run.metrics.get("walk_violations").copied().unwrap_or(0.0);
        let verdict = if run.strategy == EXPOSING_STRATEGY {
            "expected: exposed tables live"
        } else {
            "UNEXPECTED"
        };
        let _ = writeln!(
            text,
            "- {} / {} / {}: {} ({verdict})",
            run.workload_label(),
            run.strategy,
            run.protection,
            number(violations)
        );
    }
    text
}

/// A section of `comparison.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section<'r> {
    /// A trace: its host runs and the kernel's replays.
    Trace(&'r str),
    /// A kernel workload, under [`COMPARED_PROTECTION`].
    Kernel(&'r str),
}

/// A side of a trace's section: its name and whether `run` is on it.
type Side = (&'static str, fn(&RunResult) -> bool);

/// A trace's sides: the simulator's runs, then the kernel's replays under
/// [`COMPARED_PROTECTION`].
const SIDES: [Side; 2] = [
    ("host", |r| r.protection == HOST_PROTECTION),
    ("kernel", |r| {
        r.is_kernel_replay() && r.protection == COMPARED_PROTECTION
    }),
];

/// The row of one strategy: `leading` cells, then the figures of `run`
/// if it ran; otherwise `—`s, and why it has none (for the notes under
/// the table).
fn row(md: &mut String, leading: &[&str], run: Option<&RunResult>) -> Option<String> {
    md.push('|');
    for cell in leading {
        let _ = write!(md, " {cell} |");
    }
    let why = match run {
        Some(run) if run.status == Status::Ok => {
            for column in COMPARISON {
                let _ = write!(md, " {} |", cell(column, &run.metrics));
            }
            None
        }
        Some(run) if run.status == Status::Failed => Some(format!(
            "failed: {}",
            escape(run.reason.as_deref().unwrap_or(""))
        )),
        Some(run) => Some(format!(
            "not run: {}",
            escape(run.reason.as_deref().unwrap_or(""))
        )),
        None => Some("not run".to_string()),
    };
    if why.is_some() {
        for _ in COMPARISON {
            md.push_str(" — |");
        }
    }
    md.push('\n');
    why
}

/// `comparison.md`: for each trace and each kernel workload, the
/// strategies as rows (a trace's on each side that ran it) and the key
/// figures as columns.
pub fn comparison(results: &Results) -> String {
    let mut md = String::from("# Allocation strategies compared (policy lab)\n\n");
    let _ = writeln!(
        md,
        "{} A trace's table gives each side that replayed it: `host` (the simulator) and \
         `kernel` (`lab=trace`: the kernel replays the trace, its boot module, on its page \
         allocator under `ptprot={COMPARED_PROTECTION}`, on the QEMU machine's memory, so its \
         figures are of a smaller machine; no walk: the tables are in no address space). \
         Kernel workloads under `ptprot={COMPARED_PROTECTION}`; every run in `results.md`. \
         {READING}\n",
        machines(results)
    );
    // Sections in the order their first runs came: traces, kernel workloads.
    let mut sections: Vec<Section<'_>> = Vec::new();
    for run in &results.runs {
        let section = if SIDES.iter().any(|(_, on)| on(run)) {
            Section::Trace(&run.workload)
        } else if run.protection == COMPARED_PROTECTION && !run.is_kernel_replay() {
            Section::Kernel(&run.workload)
        } else {
            continue;
        };
        if !sections.contains(&section) {
            sections.push(section);
        }
    }
    for section in sections {
        let mut notes = Vec::new();
        match section {
            Section::Trace(trace) => {
                let _ = writeln!(md, "## {trace} (trace)\n");
                header(&mut md, &["side", "strategy"], COMPARISON);
                for (side, on) in SIDES {
                    let runs: Vec<&RunResult> = results
                        .runs
                        .iter()
                        .filter(|r| r.workload == trace && on(r))
                        .collect();
                    if runs.is_empty() {
                        continue;
                    }
                    for strategy in STRATEGIES {
                        let run = runs.iter().find(|r| r.strategy == strategy.name).copied();
                        if let Some(why) = row(&mut md, &[side, strategy.name], run) {
                            notes.push(format!("- {side} `{}`: {why}", strategy.name));
                        }
                    }
                }
            }
            Section::Kernel(workload) => {
                let _ = writeln!(md, "## {workload} (kernel)\n");
                header(&mut md, &["strategy"], COMPARISON);
                for strategy in STRATEGIES {
                    let run = results.runs.iter().find(|r| {
                        r.workload == workload
                            && !r.is_kernel_replay()
                            && r.protection == COMPARED_PROTECTION
                            && r.strategy == strategy.name
                    });
                    if let Some(why) = row(&mut md, &[strategy.name], run) {
                        notes.push(format!("- `{}`: {why}", strategy.name));
                    }
                }
            }
        }
        if !notes.is_empty() {
            md.push('\n');
            md.push_str(&notes.join("\n"));
            md.push('\n');
        }
        md.push('\n');
    }
    md
}
