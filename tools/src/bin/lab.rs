//! `lab`: run the policy lab's matrix and write its results.
//!
//! ```text
//! lab [--out DIR] [--traces DIR]... [--no-qemu] [--memory 128M] [--host-memory MIB]
//! ```
//!
//! Runs every {strategy x protection x workload} of `tools::lab`: host
//! replays of the traces in `tools/traces/` and in each `--traces`
//! directory (every file not starting with a dot), each strategy on its
//! own simulated machine of `--host-memory` MiB; the in-kernel
//! workloads (`lab=churn|spaces|storm`, a boot each) under QEMU (the
//! kernel must be built: `make lab` does it); and the same traces
//! replayed by the kernel (`lab=trace`, the trace as the boot module,
//! `ptprot=pks`, a boot per trace and strategy). Then, under each
//! object-protection policy (`tools::attack_matrix::POLICIES`), the
//! kernel's attack tests and the user test suite (built by `make lab`).
//! Writes to DIR (default
//! `target/lab` in the workspace): `results.json`, `results.md`,
//! `comparison.md`, `objects.md` (the attack matrix and what each policy
//! costs per syscall), `plot-host-<metric>.svg` and `plot-kernel-<metric>.svg`,
//! the memory pictures (`memmap-<workload>-<strategy>-<moment>.svg` for
//! host runs, `memmap-<workload>-<strategy>-<protection>-after-<workload>.svg`
//! for kernel runs, `memmap-<trace>-<strategy>-pks-after-trace.svg` for
//! the kernel's replays) and each QEMU run's transcript (`logs/`;
//! `logs/trace-*.log` for the replays).
//!
//! A run that fails (a malformed trace, a kernel that refuses an option
//! or fails, a `lab:` line not found or not from the strategy asked for,
//! a replay of fewer or more events than the trace has, no kernel image
//! or QEMU) is recorded with why, in the kernel's own
//! words where it said any, and the lab goes on; a memory picture that
//! cannot be drawn is a note on its run. Exit codes: 0 every run that
//! could run passed; 1 some failed, or the outputs could not be written;
//! 2 bad options.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ptalloc::sim::LargestPage;
use tools::lab::{
    self, HostMachine, KERNEL_WORKLOADS, KernelRun, PROTECTIONS, QemuMachine, Results, RunResult,
    STRATEGIES, Status, Strategy, StrategyInfo, TRACE_PROTECTIONS, TraceFile,
};
use tools::replay::Machine;
use tools::{QemuConfig, attack_matrix, memmap, memmap_svg, trace};

/// Run the policy lab: {strategy x protection x workload}.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Output directory [default: target/lab in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// A directory of your own traces to replay as well (repeatable).
    #[arg(long, value_name = "DIR")]
    traces: Vec<PathBuf>,

    /// Host replays only: no QEMU runs.
    #[arg(long)]
    no_qemu: bool,

    /// QEMU guest memory for kernel runs.
    #[arg(long, default_value = "128M")]
    memory: String,

    /// Simulated RAM for host replays, in MiB (a multiple of 2, 4 or more).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(4..=1 << 24))]
    host_memory: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("lab: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The shipped traces, then each user directory's, named apart.
fn trace_files(dirs: &[PathBuf]) -> Result<Vec<TraceFile>, String> {
    let mut files = Vec::new();
    let mut names = HashSet::new();
    let root = tools::workspace_root();
    let shipped = root.join("tools/traces");
    for dir in std::iter::once(&shipped).chain(dirs) {
        let entries = fs::read_dir(dir)
            .map_err(|e| format!("cannot read trace directory {}: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let base = memmap::label_from(&stem);
            let mut name = base.clone();
            let mut n = 1;
            while !names.insert(name.clone()) {
                n += 1;
                name = format!("{base}-{n}");
            }
            // Results say where a trace came from without naming this
            // machine's workspace.
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            files.push(TraceFile { name, path, shown });
        }
    }
    Ok(files)
}

/// A trace file, read and checked; the error names the file.
fn load_trace(file: &TraceFile) -> Result<trace::Trace, String> {
    fs::read_to_string(&file.path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| trace::parse(&text).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", file.path.display()))
}

fn run(cli: &Cli) -> Result<bool, String> {
    if !cli.host_memory.is_multiple_of(2) {
        return Err(format!(
            "--host-memory {}: expected a multiple of 2 MiB",
            cli.host_memory
        ));
    }
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| tools::workspace_root().join("target/lab"));
    fs::create_dir_all(out.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let machine = Machine {
        frames: cli.host_memory << (20 - 12),
        largest: LargestPage::Giga,
    };
    let started = Instant::now();
    let mut runs = Vec::new();

    let traces = trace_files(&cli.traces)?;
    // Each trace's events, where the host could read it: the kernel's
    // replay must say it replayed as many.
    let mut events = Vec::new();
    for file in &traces {
        let parsed = load_trace(file);
        for strategy in STRATEGIES {
            let result = host_run(strategy, file, &parsed, &machine, &out);
            report_progress(&result);
            runs.push(result);
        }
        events.push(parsed.ok().map(|t| t.events.len()));
    }

    if !cli.no_qemu {
        let kernel = tools::default_kernel_path(false);
        // Said once for every run, rather than found out by each of them.
        let cannot_run = if !kernel.is_file() {
            Some(format!(
                "no kernel image at {} (`make lab` builds it)",
                kernel.display()
            ))
        } else {
            tools::find_or_install_qemu().err().map(|e| e.to_string())
        };
        // The kernel's workloads under every protection, then its replays
        // of the traces under the protections kept for them.
        let mut plan: Vec<(KernelRun<'_>, Option<usize>)> = Vec::new();
        for workload in KERNEL_WORKLOADS {
            for strategy in STRATEGIES {
                for protection in PROTECTIONS {
                    plan.push((KernelRun::of_workload(workload, strategy, protection), None));
                }
            }
        }
        for (file, count) in traces.iter().zip(&events) {
            for strategy in STRATEGIES {
                for protection in TRACE_PROTECTIONS {
                    plan.push((KernelRun::of_trace(file, strategy, protection), *count));
                }
            }
        }
        for (run, events) in plan {
            let result = match (run.command_line(), &cannot_run) {
                (None, _) => run.result(),
                (Some(_), Some(why)) => run.result().failed(why.clone()),
                (Some(command_line), None) => {
                    let mut config = QemuConfig::new(&kernel)
                        .cpu("max")
                        .memory(cli.memory.clone())
                        .append(command_line)
                        .timeout(Duration::from_secs(run.workload.timeout));
                    if let Some(trace) = run.trace {
                        config = config.initrd(trace.path.clone());
                    }
                    qemu_run(&run, events, config, &out)
                }
            };
            report_progress(&result);
            runs.push(result);
        }
    }

    let objects = if cli.no_qemu {
        Vec::new()
    } else {
        object_policies(cli, &out)
    };

    let results = Results {
        schema: lab::SCHEMA.into(),
        host_machine: HostMachine {
            memory_mib: cli.host_memory,
            largest_page: "1G".into(),
        },
        qemu_machine: QemuMachine {
            memory: cli.memory.clone(),
            cpu: "max".into(),
            smp: 1,
        },
        strategies: STRATEGIES.iter().map(StrategyInfo::from).collect(),
        runs,
        objects,
    };
    let files = lab::write_outputs(&out, &results)?;
    let count = |s: Status| results.runs.iter().filter(|r| r.status == s).count();
    let (ok, failed, skipped) = (
        count(Status::Ok),
        count(Status::Failed),
        count(Status::Skipped),
    );
    println!(
        "lab: {ok} runs ok, {failed} failed, {skipped} skipped (not in the kernel or simulator yet) in {:.0} s; wrote {} in {}",
        started.elapsed().as_secs_f64(),
        files.join(", "),
        out.display()
    );
    let objects_failed = results.objects.iter().any(|r| !r.failures.is_empty());
    Ok(failed == 0 && !objects_failed)
}

/// The object-protection policies (`tools::attack_matrix::POLICIES`):
/// under each, the kernel's attack tests (its column of the matrix) and
/// the user test suite (what its syscalls cost). Transcripts go to
/// `logs/objects-<n>-{attacks,suite}.log`.
fn object_policies(cli: &Cli, out: &Path) -> Vec<attack_matrix::PolicyRun> {
    let kernel = tools::default_kernel_path(false);
    let suite = tools::default_roottask_path(true).with_file_name("usertests");
    let boot = |index: usize, what: &str, config: QemuConfig| -> Result<String, String> {
        let report = tools::run(&config.echo(false)).map_err(|e| e.to_string())?;
        let log_name = format!("logs/objects-{index}-{what}.log");
        let transcript = report.interleaved.join("\n") + "\n";
        fs::write(out.join(&log_name), &transcript)
            .map_err(|e| format!("cannot write {log_name}: {e}"))?;
        if report.outcome.is_success() {
            Ok(report.log.join("\n"))
        } else {
            let said = kernel_says(&report.console)
                .map(|line| format!(": {line:?}"))
                .unwrap_or_default();
            Err(format!(
                "{what}: {}{said} (transcript: {log_name})",
                report.outcome
            ))
        }
    };
    let mut runs = Vec::new();
    for (index, policy) in attack_matrix::POLICIES.iter().enumerate() {
        let mut run = attack_matrix::PolicyRun {
            policy: policy.name.into(),
            words: policy.words.into(),
            attacks: Vec::new(),
            costs: None,
            failures: Vec::new(),
        };
        let attacks = QemuConfig::new(&kernel)
            .cpu("max")
            .memory(cli.memory.clone())
            .append(policy.command_line())
            .timeout(Duration::from_secs(120));
        match boot(index, "attacks", attacks).and_then(|log| attack_matrix::parse(&log)) {
            Ok(attacks) => run.attacks = attacks,
            Err(e) => run.failures.push(e),
        }
        let config = QemuConfig::new(&kernel)
            .cpu("max")
            .memory(cli.memory.clone())
            .initrd(suite.clone())
            .append(format!("{} roottask=suite", policy.words))
            .timeout(Duration::from_secs(240));
        match boot(index, "suite", config).and_then(|log| attack_matrix::parse_syscalls(&log)) {
            Ok(costs) => run.costs = Some(costs),
            Err(e) => run.failures.push(e),
        }
        let state = if run.failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAILED: {}", run.failures.join("; "))
        };
        println!("lab: objects / {}: {state}", policy.name);
        runs.push(run);
    }
    runs
}

fn report_progress(r: &RunResult) {
    let what = match r.status {
        Status::Ok if !r.notes.is_empty() => format!("ok (note: {})", r.notes.join("; ")),
        Status::Ok => "ok".to_string(),
        Status::Failed => format!("FAILED: {}", r.reason.as_deref().unwrap_or("")),
        Status::Skipped => return,
    };
    println!(
        "lab: {} / {} / {}: {what}",
        r.workload_label(),
        r.strategy,
        r.protection
    );
}

fn host_run(
    strategy: &Strategy,
    file: &TraceFile,
    parsed: &Result<trace::Trace, String>,
    machine: &Machine,
    out: &Path,
) -> RunResult {
    let (mut result, dumps) = lab::host_run(
        strategy,
        &file.name,
        parsed.as_ref().map_err(String::as_str),
        *machine,
        true,
    );
    result.trace = Some(file.shown.clone());
    for dump in &dumps {
        match write_picture(out, dump) {
            Ok(name) => result.pictures.push(name),
            Err(e) => return result.failed(e),
        }
    }
    result
}

fn write_picture(out: &Path, dump: &memmap::Dump) -> Result<String, String> {
    let name = format!("memmap-{}.svg", dump.label);
    let path = out.join(&name);
    fs::write(&path, memmap_svg::render(dump))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(name)
}

/// The kernel's own words on why a run failed (COM1): its command-line
/// refusal, a lab workload's failure, or the first line of a fatal
/// report (`!!! kernel fault: ...`, `!!! kernel panic ...`).
fn kernel_says(console: &str) -> Option<&str> {
    const MARKERS: [&str; 3] = ["kernel command line rejected", "lab: ", "!!! "];
    MARKERS.iter().find_map(|marker| {
        console
            .lines()
            .map(str::trim)
            .find(|line| line.contains(marker))
    })
}

/// Boots `run` and reads its figures; `events`: the trace's, for a
/// replay the host could read.
fn qemu_run(
    run: &KernelRun<'_>,
    events: Option<usize>,
    config: QemuConfig,
    out: &Path,
) -> RunResult {
    let name = run.stem();
    let mut result = run.result();
    let report = match tools::run(&config.echo(false)) {
        Ok(report) => report,
        Err(e) => return result.failed(e.to_string()),
    };
    let transcript = report.interleaved.join("\n") + "\n";
    let log_name = run.log_name();
    if let Err(e) = fs::write(out.join(&log_name), &transcript) {
        return result.failed(format!("cannot write {log_name}: {e}"));
    }
    result.detail = Some(serde_json::json!({
        "transcript": log_name,
        "outcome": report.outcome.to_string(),
    }));
    // Whatever pageblock maps the kernel dumped (`memmap=lab`: one after
    // the workload, labelled `after-<workload>`). A dump cut short is a
    // picture lost, not a measurement: noted, and the run goes on.
    match memmap::parse_transcript(&transcript) {
        Ok(dumps) => {
            for mut dump in dumps {
                dump.label = memmap::label_from(&format!("{name}-{}", dump.label));
                match write_picture(out, &dump) {
                    Ok(file) => result.pictures.push(file),
                    Err(e) => return result.failed(e),
                }
            }
        }
        Err(e) => result
            .notes
            .push(format!("{log_name}: memmap dump: {e}; no picture")),
    }
    if !report.outcome.is_success() {
        let said = kernel_says(&report.console)
            .map(|line| format!(": {line:?}"))
            .unwrap_or_default();
        return result.failed(format!("{}{said} (transcript: {log_name})", report.outcome));
    }
    match run.metrics(&report.log, events) {
        Ok(metrics) => {
            result.status = Status::Ok;
            result.reason = None;
            result.metrics = metrics;
            result
                .metrics
                .insert("seconds".into(), report.elapsed.as_secs_f64());
            result
        }
        Err(e) => result.failed(format!("{e} (transcript: {log_name})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_traces_are_named_apart_from_the_shipped_ones() {
        let dir = std::env::temp_dir().join(format!("lab-traces-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let _ = fs::write(dir.join("storm.trace"), "A 1 1\n");
        let _ = fs::write(dir.join(".hidden"), "x\n");
        let files = trace_files(std::slice::from_ref(&dir)).unwrap_or_default();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"storm") && names.contains(&"storm-2"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("hidden")));
        // Results name the shipped traces without this machine's paths,
        // and the user's as given.
        let shown = |name: &str| {
            files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.shown.clone())
        };
        assert_eq!(shown("storm").as_deref(), Some("tools/traces/storm.trace"));
        assert_eq!(
            shown("storm-2"),
            Some(dir.join("storm.trace").display().to_string())
        );
        let missing = trace_files(&[dir.join("nope")]).err().unwrap_or_default();
        assert!(missing.contains("cannot read trace directory"), "{missing}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_trace_fails_its_runs_naming_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("lab-bad-trace-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let file = TraceFile {
            name: "bad".into(),
            path: dir.join("bad.trace"),
            shown: "bad.trace".into(),
        };
        let _ = fs::write(&file.path, "A 1 9\n");
        let parsed = load_trace(&file);
        let r = host_run(&STRATEGIES[0], &file, &parsed, &Machine::default(), &dir);
        assert_eq!(r.status, Status::Failed);
        let reason = r.reason.unwrap_or_default();
        assert!(
            reason.contains("bad.trace: line 1: bad level \"9\""),
            "{reason}"
        );
        assert_eq!(r.trace.as_deref(), Some("bad.trace"));
        let missing = TraceFile {
            name: "missing".into(),
            path: dir.join("missing.trace"),
            shown: "missing.trace".into(),
        };
        assert!(load_trace(&missing).is_err_and(|e| e.contains("missing.trace: cannot read")));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn the_kernel_says_why_it_failed() {
        let console = "pks-kernel 0.1.0 booting\npk fault policy: pkfault=report\nkernel command line rejected: unknown option 'lab'\n";
        assert_eq!(
            kernel_says(console),
            Some("kernel command line rejected: unknown option 'lab'")
        );
        let console =
            "boot complete\nlab: storm failed: a mapping the workload made could not be unmapped\n";
        assert!(kernel_says(console).is_some_and(|l| l.starts_with("lab: storm failed")));
        // A replay's refusal of a malformed trace names the line.
        let console = "command line: \"lab=trace ptprot=pks memmap=lab\"\nlab: trace failed: line 2: the id is live already\nlab: trace failed: the trace was refused\n";
        assert_eq!(
            kernel_says(console),
            Some("lab: trace failed: line 2: the id is live already")
        );
        let console = "x\n!!! kernel panic at a.rs:1:2\n!!! stopping the machine\n";
        assert_eq!(kernel_says(console), Some("!!! kernel panic at a.rs:1:2"));
        assert_eq!(kernel_says("pk fault policy: pkfault=report\n"), None);
    }
}
