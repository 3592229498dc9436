//! `trace`: make, check and replay page-table traces (format:
//! `tools::trace`).
//!
//! ```text
//! trace gen <fork-exec|growing|storm|fragment|pressure> [--seed N] [--scale N] [--out FILE]
//! trace check FILE...
//! trace replay FILE... [--memory MIB] [--mega] [--strategy NAME] [--pictures DIR]
//! ```
//!
//! - `gen` writes a synthetic trace with its header comment (the command
//!   that makes it again) to FILE or standard output.
//! - `check` parses each file and prints its counts.
//! - `replay` runs each file against `ptalloc` on its simulated direct map
//!   with the kernel's configuration of today, or a policy-lab strategy's
//!   (`--strategy`, as `tools::lab::STRATEGIES` sets it up), and prints one JSON object
//!   per file (`{"file": ..., "report": ...}`, the report as
//!   `tools::replay::ReplayReport::to_json` writes it); with `--pictures`
//!   it also writes the pageblock map at the peak and the end as SVG.
//!
//! Exit codes: 0 done; 1 I/O error, a malformed trace (the message names
//! the file and line) or a replay that could not run; 2 bad options;
//! 4 a replay broke one of the simulator's invariants.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ptalloc::sim::LargestPage;
use tools::lab::{STRATEGIES, Strategy};
use tools::replay::{self, Machine};
use tools::trace::{self, Pattern, Trace};

/// Make, check and replay page-table traces.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic trace.
    Gen {
        /// fork-exec, growing, storm, fragment or pressure.
        #[arg(value_parser = parse_pattern)]
        pattern: Pattern,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Length: steps, regions, bursts or waves [default: the shipped
        /// trace's].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        scale: Option<u32>,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Parse traces and print their counts.
    Check {
        /// Trace files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay traces against ptalloc's simulator; print JSON.
    Replay {
        /// Trace files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Simulated RAM in MiB (a multiple of 2, at least 4).
        #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(4..=1 << 24))]
        memory: u64,
        /// Start the direct map with 2 MiB pages instead of 1 GiB ones.
        #[arg(long)]
        mega: bool,
        /// The policy lab's strategy to replay under (granular always has
        /// a map of 2 MiB pages).
        #[arg(long, default_value = "freetype", value_parser = parse_strategy)]
        strategy: &'static Strategy,
        /// Also write the pageblock maps at the peak and the end here.
        #[arg(long, value_name = "DIR")]
        pictures: Option<PathBuf>,
    },
}

fn parse_pattern(name: &str) -> Result<Pattern, String> {
    Pattern::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Pattern::ALL.iter().map(|p| p.name()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn parse_strategy(name: &str) -> Result<&'static Strategy, String> {
    STRATEGIES.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = STRATEGIES.iter().map(|s| s.name).collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("trace: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Reads and checks a trace file; errors name the file.
fn load(path: &Path) -> Result<Trace, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    trace::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Gen {
            pattern,
            seed,
            scale,
            out,
        } => {
            let text = trace::shipped_file(pattern, seed, scale.unwrap_or(pattern.default_scale()));
            match out {
                Some(path) => fs::write(&path, text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files } => {
            for path in files {
                let s = load(&path)?.summary();
                let data = if s.data_allocations > 0 {
                    format!(
                        "; data: {} blocks ({} frames), {} freed",
                        s.data_allocations, s.data_frames, s.data_frees
                    )
                } else {
                    String::new()
                };
                println!(
                    "{}: ok: {} allocations (PT {}, PD {}, PDPT {}, PML4 {}), {} frees, peak {} live, {} live at the end{data}",
                    path.display(),
                    s.total_allocations(),
                    s.allocations[0],
                    s.allocations[1],
                    s.allocations[2],
                    s.allocations[3],
                    s.frees,
                    s.peak_live,
                    s.live_at_end
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            files,
            memory,
            mega,
            strategy,
            pictures,
        } => {
            if !memory.is_multiple_of(2) {
                return Err(format!("--memory {memory}: expected a multiple of 2 MiB"));
            }
            let machine = Machine {
                frames: memory << (20 - 12),
                largest: if mega {
                    LargestPage::Mega
                } else {
                    LargestPage::Giga
                },
            };
            let Some(build) = strategy.host else {
                return Err(format!(
                    "--strategy {}: the simulator does not have it",
                    strategy.name
                ));
            };
            let setup = build(machine);
            let mut broken = false;
            for path in files {
                let trace = load(&path)?;
                let label = pictures.as_ref().map(|_| label_of(&path));
                let report = replay::replay(&trace, &setup.machine, setup.config, label.as_deref())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                broken |= report.check.is_err();
                if let Some(dir) = &pictures {
                    fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    for dump in &report.dumps {
                        let file = dir.join(format!("memmap-{}.svg", dump.label));
                        fs::write(&file, tools::memmap_svg::render(dump))
                            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                        eprintln!("trace: wrote {}", file.display());
                    }
                }
                let json = serde_json::json!({
                    "file": path.display().to_string(),
                    "strategy": strategy.name,
                    "report": report.to_json(),
                });
                println!("{json:#}");
            }
            Ok(if broken {
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// A dump label from a file name: its stem, with characters a label may
/// not hold made `_`.
fn label_of(path: &Path) -> String {
    tools::memmap::label_from(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
    )
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
    fn options_are_checked() {
        assert!(Cli::try_parse_from(["trace", "gen", "storm", "--seed", "3"]).is_ok());
        assert!(Cli::try_parse_from(["trace", "gen", "pressure"]).is_ok());
        assert!(Cli::try_parse_from(["trace", "replay", "x", "--strategy", "granular"]).is_ok());
        for args in [
            &["trace", "gen", "nope"][..],
            &["trace", "gen", "storm", "--scale", "0"],
            &["trace", "check"],
            &["trace", "replay", "x", "--memory", "2"],
            &["trace", "replay", "x", "--strategy", "nope"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn labels_come_from_file_names() {
        assert_eq!(label_of(Path::new("a/b/fork exec!.trace")), "fork_exec_");
        assert_eq!(label_of(Path::new("storm.trace")), "storm");
    }
}
