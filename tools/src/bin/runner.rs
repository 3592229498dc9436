//! `runner`: boot the kernel under QEMU, stream COM1 and the decoded defmt
//! log from COM2 live, and print a one-line verdict.
//!
//! ```text
//! runner [--build] [--release] [--kernel PATH] [--initrd PATH] [--cpu max]
//!        [-m|--memory 128M] [--smp 1] [--append "..."] [--timeout SECS]
//!        [--accel tcg|kvm] [--gdb]
//! ```
//!
//! Before starting QEMU the runner refuses what the kernel could not report
//! itself: an `--append` line over the kernel's 1024 bytes (or with a NUL
//! byte), and `--memory` below the 3 MiB that holds the kernel's entry
//! stub. It prints one line saying why (for the command line, the kernel's
//! own `kernel command line rejected: ...`), a summary saying QEMU was not
//! started, and exits with the code of the kernel's own refusal. Under
//! `--accel kvm` with `-cpu host`, a QEMU that cannot set up the host CPU
//! (`failed to set MSR`) is retried once with `-cpu host,-arch-capabilities`,
//! and a `runner|` note says so. `--initrd` names the root task's ELF,
//! which QEMU loads as the first PVH boot module; a missing file is an
//! error (exit code 1) before QEMU starts.
//!
//! Exit codes (only 0 is a pass):
//!
//! | code | meaning |
//! |---|---|
//! | 0  | kernel reported success (QEMU status 33) |
//! | 1  | the runner could not run: no QEMU, no kernel image or boot module, build failed, I/O |
//! | 2  | bad command-line options (clap) |
//! | 10 | kernel reported failure: panic, unexpected exception, failed test (35) |
//! | 11 | kernel rejected its `--append` command line (37), or the runner refused it |
//! | 12 | triple fault or reset (QEMU status 0 under `-no-reboot`) |
//! | 13 | QEMU itself failed (status 1); its stderr was printed |
//! | 14 | any other QEMU exit status |
//! | 15 | QEMU was killed by a signal |
//! | 16 | timeout: the runner killed QEMU |
//! | 17 | not enough memory: the kernel refused to boot (39), or the runner refused `--memory` |

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tools::report::format_duration;
use tools::{Accel, QemuConfig, RunReport, RunnerError};

/// Exit code when the runner itself fails (see the module doc).
const EXIT_RUNNER_ERROR: u8 = 1;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    /// Software emulation (has PKS with -cpu max).
    Tcg,
    /// Hardware virtualisation (no PKS on this host; fallback and timing runs).
    Kvm,
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        }
    }
}

/// Boot the kernel under QEMU and report what it says.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Build the kernel with cargo before running it.
    #[arg(long)]
    build: bool,

    /// Use the release build (target/x86_64-unknown-none/release/kernel).
    #[arg(long)]
    release: bool,

    /// Kernel ELF to boot [default: the debug or release build in target/].
    #[arg(long, value_name = "PATH", conflicts_with = "build")]
    kernel: Option<PathBuf>,

    /// The root task's ELF, loaded by QEMU as the first PVH boot module
    /// (-initrd) [default: none; the kernel then ends after its boot].
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// QEMU CPU model [default: max under tcg, host under kvm].
    #[arg(long)]
    cpu: Option<String>,

    /// Guest memory, in QEMU's syntax; below 3M is refused (the kernel's
    /// entry would not be in RAM).
    #[arg(short = 'm', long, default_value = "128M")]
    memory: String,

    /// Number of CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    smp: u32,

    /// Kernel command line (policies such as protection and fault response);
    /// at most 1024 bytes, the kernel's limit.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    append: String,

    /// Kill QEMU and fail after this many seconds (ignored with --gdb).
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,

    /// QEMU accelerator.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: AccelArg,

    /// Start paused with QEMU's gdbstub on tcp::1234, and no timeout.
    #[arg(long)]
    gdb: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(report) => {
            println!("{}", summary(&report));
            ExitCode::from(report.outcome.exit_code())
        }
        Err(e) => {
            eprintln!("runner: error: {e}");
            ExitCode::from(EXIT_RUNNER_ERROR)
        }
    }
}

fn run(cli: &Cli) -> Result<RunReport, RunnerError> {
    let kernel = match (&cli.kernel, cli.build) {
        (Some(path), _) => path.clone(),
        (None, true) => tools::build_kernel(cli.release)?,
        (None, false) => tools::default_kernel_path(cli.release),
    };
    let accel = Accel::from(cli.accel);
    let mut cfg = QemuConfig::new(kernel)
        .accel(accel)
        .cpu(
            cli.cpu
                .clone()
                .unwrap_or_else(|| accel.default_cpu().to_string()),
        )
        .memory(cli.memory.clone())
        .smp(cli.smp)
        .append(cli.append.clone())
        .timeout(Duration::from_secs(cli.timeout))
        .gdb(cli.gdb)
        .echo(true);
    if let Some(initrd) = &cli.initrd {
        cfg = cfg.initrd(initrd);
    }
    tools::run(&cfg)
}

/// The boot report's line for a passing verification walk: the summary
/// says when it arrived, which is the boot time the project reports.
const WALK_PASSED: &str = "verification walk: PASS";

/// The one-line verdict printed after the log.
fn summary(report: &RunReport) -> String {
    if let Some(refusal) = &report.refusal {
        return format!(
            "runner: FAILED: refused before starting QEMU ({}), with status {} as the kernel would",
            refusal.detail(),
            refusal.status()
        );
    }
    let mut line = if report.outcome.is_success() {
        format!("runner: {}", report.outcome)
    } else {
        format!("runner: FAILED: {}", report.outcome)
    };
    if !matches!(report.outcome, tools::Outcome::Timeout(_)) {
        line.push_str(&format!(" in {}", format_duration(report.elapsed)));
    }
    if let Some(at) = report.console_line_at(WALK_PASSED) {
        line.push_str(&format!("; walk passed at {}", format_duration(at)));
    }
    let results = report.test_results();
    if !results.is_empty() {
        let failed = report.failed_tests();
        if failed.is_empty() {
            let n = results.len();
            line.push_str(&format!("; {n} test{} ok", if n == 1 { "" } else { "s" }));
        } else {
            line.push_str(&format!(
                "; {} of {} tests FAILED: {}",
                failed.len(),
                results.len(),
                failed.join(", ")
            ));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use tools::{Outcome, Refusal};

    fn report(outcome: Outcome, console: &str) -> RunReport {
        RunReport {
            outcome,
            status: Some(33),
            console: console.to_string(),
            console_arrivals: vec![Duration::from_millis(190); console.lines().count()],
            log: Vec::new(),
            notes: Vec::new(),
            interleaved: Vec::new(),
            qemu_stderr: String::new(),
            elapsed: Duration::from_millis(420),
            command: String::new(),
            refusal: None,
        }
    }

    #[test]
    fn refusals_print_the_kernels_line_and_say_qemu_did_not_start() {
        let long = RunReport::refused(Refusal::CommandLineTooLong { len: 1025 });
        assert_eq!(
            long.interleaved,
            ["kernel command line rejected: command line is longer than 1024 bytes"]
        );
        assert_eq!(
            summary(&long),
            "runner: FAILED: refused before starting QEMU (1025 bytes given), with status 37 \
             as the kernel would"
        );
        // The same exit code as when the kernel rejects its line.
        assert_eq!(long.outcome.exit_code(), 11);

        let small = RunReport::refused(Refusal::NotEnoughMemory {
            memory: "2M".to_string(),
            bytes: 2 << 20,
        });
        assert_eq!(
            summary(&small),
            "runner: FAILED: refused before starting QEMU (2048 KiB given), with status 39 \
             as the kernel would"
        );
        assert_eq!(small.outcome.exit_code(), 17);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_all_options() {
        let cli = Cli::try_parse_from(
            "runner --release --cpu qemu64,+pks -m 256M --smp 2 --append protect=none \
             --timeout 5 --accel kvm --gdb --initrd root/task.elf"
                .split_whitespace(),
        );
        let cli = match cli {
            Ok(cli) => cli,
            Err(e) => panic!("{e}"),
        };
        assert!(cli.release && cli.gdb && !cli.build);
        assert_eq!(cli.cpu.as_deref(), Some("qemu64,+pks"));
        assert_eq!((cli.memory.as_str(), cli.smp, cli.timeout), ("256M", 2, 5));
        assert_eq!(cli.append, "protect=none");
        assert!(matches!(cli.accel, AccelArg::Kvm));
        assert_eq!(cli.initrd, Some(PathBuf::from("root/task.elf")));
    }

    #[test]
    fn rejects_bad_options() {
        for args in [
            &["runner", "--accel", "xen"][..],
            &["runner", "--smp", "0"],
            &["runner", "--timeout", "0"],
            &["runner", "--timeout", "soon"],
            &["runner", "--build", "--kernel", "k"],
            &["runner", "--frobnicate"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn summaries_read_as_one_line() {
        assert_eq!(
            summary(&report(Outcome::Success, "")),
            "runner: kernel reported success (exit status 33) in 0.42 s"
        );
        assert_eq!(
            summary(&report(Outcome::Success, "test a ... ok\ntest b ... ok\n")),
            "runner: kernel reported success (exit status 33) in 0.42 s; 2 tests ok"
        );
        assert_eq!(
            summary(&report(
                Outcome::Success,
                "verification walk: PASS: 11 tables\n"
            )),
            "runner: kernel reported success (exit status 33) in 0.42 s; walk passed at 0.19 s"
        );
        assert_eq!(
            summary(&report(Outcome::Timeout(Duration::from_secs(60)), "")),
            "runner: FAILED: timed out after 60 s (QEMU killed)"
        );
        assert_eq!(
            summary(&report(
                Outcome::KernelFailure,
                "test a ... ok\ntest b ... FAILED\n"
            )),
            "runner: FAILED: kernel reported failure: panic, unexpected exception or failed \
             test (exit status 35) in 0.42 s; 1 of 2 tests FAILED: b"
        );
    }
}
