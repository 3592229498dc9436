//! `memmap`: memory pictures from a runner transcript.
//!
//! ```text
//! memmap [TRANSCRIPT] [--out DIR] [--echo]
//! ```
//!
//! Reads the transcript (a file, or standard input when it is absent or
//! `-`), finds every pageblock-map dump in it (format: `tools::memmap`)
//! and writes one SVG per dump, `DIR/memmap-<label>.svg` (DIR defaults to
//! `target/lab` in the workspace); a label seen again gets `-2`, `-3`.
//! With `--echo` the transcript is copied to standard output as it is
//! read, so a pipe from the runner still shows the boot.
//!
//! Exit codes: 0 pictures written; 1 I/O error, or no dump in the input
//! (the message quotes the runner's verdict when there is one); 2 bad
//! options; 3 a malformed dump (the message names the line).

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tools::memmap::{self, Dump};

/// Write memory pictures (SVG) from the pageblock-map dumps in a runner
/// transcript.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The transcript to read; standard input when absent or `-`.
    transcript: Option<PathBuf>,

    /// Directory for the pictures [default: target/lab in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Copy the transcript to standard output as it is read.
    #[arg(long)]
    echo: bool,
}

enum Failure {
    Io(String),
    NoDump(String),
    Parse(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Io(message) | Failure::NoDump(message)) => {
            eprintln!("memmap: error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Parse(message)) => {
            eprintln!("memmap: error: {message}");
            ExitCode::from(3)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let (name, reader): (String, Box<dyn Read>) = match &cli.transcript {
        None => ("standard input".into(), Box::new(io::stdin())),
        Some(path) if path.as_os_str() == "-" => ("standard input".into(), Box::new(io::stdin())),
        Some(path) => (
            path.display().to_string(),
            Box::new(
                fs::File::open(path)
                    .map_err(|e| Failure::Io(format!("cannot open {}: {e}", path.display())))?,
            ),
        ),
    };
    let text = read_transcript(reader, cli.echo)
        .map_err(|e| Failure::Io(format!("reading {name}: {e}")))?;
    let dumps =
        memmap::parse_transcript(&text).map_err(|e| Failure::Parse(format!("{name}: {e}")))?;
    if dumps.is_empty() {
        let verdict = text
            .lines()
            .rev()
            .find(|l| l.starts_with("runner: "))
            .map(|l| format!("; the run ended: {l}"))
            .unwrap_or_default();
        return Err(Failure::NoDump(format!(
            "no `memmap begin` dump in {name} (the kernel emits one when asked on its command \
             line, e.g. memmap=boot){verdict}"
        )));
    }
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| tools::workspace_root().join("target/lab"));
    for (path, dump) in write_pictures(&out, &dumps).map_err(Failure::Io)? {
        let s = dump.summary();
        println!(
            "memmap: wrote {} ({} pageblocks, {} split to 4 KiB)",
            path.display(),
            dump.blocks.len(),
            s.by_page[memmap::MapPage::Split as usize]
        );
    }
    Ok(())
}

/// Reads all of `reader` as text (invalid UTF-8 replaced: a line of
/// garbage must not hide the dumps), echoing each line if asked.
fn read_transcript(reader: impl Read, echo: bool) -> io::Result<String> {
    let mut reader = BufReader::new(reader);
    let mut text = String::new();
    let mut line = Vec::new();
    let stdout = io::stdout();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(text);
        }
        let decoded = String::from_utf8_lossy(&line);
        if echo {
            let mut out = stdout.lock();
            out.write_all(decoded.as_bytes())?;
            out.flush()?;
        }
        text.push_str(&decoded);
    }
}

/// Writes one SVG per dump, naming repeats of a label apart.
fn write_pictures<'d>(out: &Path, dumps: &'d [Dump]) -> Result<Vec<(PathBuf, &'d Dump)>, String> {
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut written = Vec::new();
    for dump in dumps {
        let n = seen.entry(dump.label.as_str()).or_insert(0);
        *n += 1;
        let file = match *n {
            1 => format!("memmap-{}.svg", dump.label),
            n => format!("memmap-{}-{n}.svg", dump.label),
        };
        let path = out.join(file);
        fs::write(&path, tools::memmap_svg::render(dump))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push((path, dump));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use tools::memmap::{MapPage, Pageblock};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeated_labels_get_numbered_files() {
        let dump = Dump {
            label: "after-boot".into(),
            first: 0,
            blocks: vec![Pageblock::unmanaged(MapPage::Giga)],
        };
        let dir = std::env::temp_dir().join(format!("memmap-test-{}", std::process::id()));
        let dumps = [dump.clone(), dump];
        let written = write_pictures(&dir, &dumps).unwrap_or_default();
        let names: Vec<_> = written
            .iter()
            .filter_map(|(p, _)| p.file_name()?.to_str().map(String::from))
            .collect();
        assert_eq!(names, ["memmap-after-boot.svg", "memmap-after-boot-2.svg"]);
        assert!(written.iter().all(|(p, _)| p.is_file()));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let text = read_transcript(&b"ok\n\xff\xfe\nmemmap end x\n"[..], false);
        assert_eq!(
            text.ok().as_deref(),
            Some("ok\n\u{fffd}\u{fffd}\nmemmap end x\n")
        );
    }
}
