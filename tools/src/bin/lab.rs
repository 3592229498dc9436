//! `lab`: run the policy lab's matrix and write its results.
//!
//! ```text
//! lab [--out DIR] [--traces DIR]... [--no-qemu] [--memory 128M] [--host-memory MIB]
//! ```
//!
//! Runs every {strategy x protection x workload} of `tools::lab`: host
//! replays of the traces in `tools/traces/` and in each `--traces`
//! directory (every file not starting with a dot), and the in-kernel
//! workloads under QEMU (the kernel must be built: `make lab` does it).
//! Writes to DIR (default `target/lab` in the workspace):
//! `results.json`, `results.md`, `plot-<metric>.svg`, the memory pictures
//! (`memmap-<workload>-<strategy>[-<protection>]-<moment>.svg`) and each
//! QEMU run's transcript (`logs/`).
//!
//! A run that fails (a malformed trace, a kernel failure, a log line not
//! found) is recorded with why and the lab goes on. Exit codes: 0 every
//! run that could run passed; 1 some failed, or the outputs could not be
//! written; 2 bad options.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ptalloc::sim::LargestPage;
use tools::lab::{
    self, HOST_PROTECTION, HostMachine, KERNEL_EXTRA_WORDS, KERNEL_WORKLOADS, PROTECTIONS,
    QemuMachine, Results, RunResult, STRATEGIES, Status, Strategy, StrategyInfo,
};
use tools::replay::{self, Machine};
use tools::{QemuConfig, memmap, memmap_svg, trace};

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

/// A trace file and the workload name it runs under.
struct TraceFile {
    name: String,
    path: PathBuf,
}

/// The shipped traces, then each user directory's, named apart.
fn trace_files(dirs: &[PathBuf]) -> Result<Vec<TraceFile>, String> {
    let mut files = Vec::new();
    let mut names = HashSet::new();
    let shipped = tools::workspace_root().join("tools/traces");
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
            files.push(TraceFile { name, path });
        }
    }
    Ok(files)
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

    for file in trace_files(&cli.traces)? {
        let parsed = fs::read_to_string(&file.path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| trace::parse(&text).map_err(|e| e.to_string()));
        for strategy in STRATEGIES {
            let result = host_run(strategy, &file, &parsed, &machine, &out);
            report_progress(&result);
            runs.push(result);
        }
    }

    if !cli.no_qemu {
        let kernel = tools::default_kernel_path(false);
        for workload in KERNEL_WORKLOADS {
            for strategy in STRATEGIES {
                for protection in PROTECTIONS {
                    let result = match strategy.kernel {
                        None => RunResult::skipped(
                            strategy.name,
                            protection.name,
                            workload.name,
                            "qemu",
                            "the kernel has no option for it yet".into(),
                        ),
                        Some(words) => {
                            let mut line: Vec<&str> = workload.kernel.to_vec();
                            line.extend(words);
                            line.extend(protection.kernel);
                            line.extend(KERNEL_EXTRA_WORDS);
                            let name =
                                format!("{}-{}-{}", workload.name, strategy.name, protection.name);
                            let config = QemuConfig::new(&kernel)
                                .cpu("max")
                                .memory(cli.memory.clone())
                                .append(line.join(" "))
                                .timeout(Duration::from_secs(workload.timeout));
                            let mut result = qemu_run(config, &name, &out, workload.parse);
                            result.strategy = strategy.name.into();
                            result.protection = protection.name.into();
                            result.workload = workload.name.into();
                            result.command_line = Some(line.join(" "));
                            result
                        }
                    };
                    report_progress(&result);
                    runs.push(result);
                }
            }
        }
    }

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
    Ok(failed == 0)
}

fn report_progress(r: &RunResult) {
    let what = match r.status {
        Status::Ok => "ok".to_string(),
        Status::Failed => format!("FAILED: {}", r.reason.as_deref().unwrap_or("")),
        Status::Skipped => return,
    };
    println!(
        "lab: {} / {} / {}: {what}",
        r.workload, r.strategy, r.protection
    );
}

fn host_run(
    strategy: &Strategy,
    file: &TraceFile,
    parsed: &Result<trace::Trace, String>,
    machine: &Machine,
    out: &Path,
) -> RunResult {
    let mut result = RunResult::skipped(
        strategy.name,
        HOST_PROTECTION,
        &file.name,
        "host",
        String::new(),
    );
    let Some(build) = strategy.host else {
        result.reason = Some("the simulator has no such strategy yet (ptalloc Config)".into());
        return result;
    };
    let trace = match parsed {
        Ok(trace) => trace,
        Err(e) => return failed(result, format!("{}: {e}", file.path.display())),
    };
    let label = memmap::label_from(&format!("{}-{}", file.name, strategy.name));
    let report = match replay::replay(
        trace,
        machine,
        build(replay::kernel_config(machine)),
        Some(&label),
    ) {
        Ok(report) => report,
        Err(e) => return failed(result, e.to_string()),
    };
    result.status = Status::Ok;
    result.reason = None;
    result.metrics = report
        .metrics()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    result.detail = Some(report.to_json());
    for dump in &report.dumps {
        match write_picture(out, dump) {
            Ok(name) => result.pictures.push(name),
            Err(e) => return failed(result, e),
        }
    }
    if let Err(broken) = &report.check {
        return failed(
            result,
            format!("the simulator's invariants broke: {broken}"),
        );
    }
    result
}

fn failed(mut result: RunResult, reason: String) -> RunResult {
    result.status = Status::Failed;
    result.reason = Some(reason);
    result
}

fn write_picture(out: &Path, dump: &memmap::Dump) -> Result<String, String> {
    let name = format!("memmap-{}.svg", dump.label);
    let path = out.join(&name);
    fs::write(&path, memmap_svg::render(dump))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(name)
}

fn qemu_run(
    config: QemuConfig,
    name: &str,
    out: &Path,
    parse: fn(&[String]) -> Result<lab::Metrics, String>,
) -> RunResult {
    let mut result = RunResult::skipped("", "", "", "qemu", String::new());
    let report = match tools::run(&config.echo(false)) {
        Ok(report) => report,
        Err(e) => return failed(result, e.to_string()),
    };
    let transcript = report.interleaved.join("\n") + "\n";
    let log_name = format!("logs/{name}.log");
    if let Err(e) = fs::write(out.join(&log_name), &transcript) {
        return failed(result, format!("cannot write {log_name}: {e}"));
    }
    result.detail = Some(serde_json::json!({
        "transcript": log_name,
        "outcome": report.outcome.to_string(),
    }));
    // Whatever pageblock maps the kernel dumped (it does when asked).
    match memmap::parse_transcript(&transcript) {
        Ok(dumps) => {
            for mut dump in dumps {
                dump.label = memmap::label_from(&format!("{name}-{}", dump.label));
                match write_picture(out, &dump) {
                    Ok(file) => result.pictures.push(file),
                    Err(e) => return failed(result, e),
                }
            }
        }
        Err(e) => return failed(result, format!("{log_name}: memmap dump: {e}")),
    }
    if !report.outcome.is_success() {
        return failed(
            result,
            format!("{} (transcript: {log_name})", report.outcome),
        );
    }
    match parse(&report.log) {
        Ok(metrics) => {
            result.status = Status::Ok;
            result.reason = None;
            result.metrics = metrics;
            result
                .metrics
                .insert("seconds".into(), report.elapsed.as_secs_f64());
            result
        }
        Err(e) => failed(result, format!("{e} (transcript: {log_name})")),
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
        let missing = trace_files(&[dir.join("nope")]).err().unwrap_or_default();
        assert!(missing.contains("cannot read trace directory"), "{missing}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_trace_fails_its_runs_and_a_missing_strategy_skips_them() {
        let file = TraceFile {
            name: "bad".into(),
            path: PathBuf::from("bad.trace"),
        };
        let parsed = trace::parse("A 1 9\n").map_err(|e| e.to_string());
        let machine = Machine::default();
        let out = std::env::temp_dir();
        let r = host_run(&STRATEGIES[0], &file, &parsed, &machine, &out);
        assert_eq!(r.status, Status::Failed);
        assert!(
            r.reason
                .as_deref()
                .unwrap_or("")
                .contains("bad.trace: line 1: bad level \"9\"")
        );
        let missing = STRATEGIES.iter().find(|s| s.host.is_none());
        if let Some(strategy) = missing {
            let r = host_run(strategy, &file, &parsed, &machine, &out);
            assert_eq!(r.status, Status::Skipped);
        }
    }
}
