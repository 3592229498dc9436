//! [`RunReport`]: everything one QEMU run produced (or why the runner
//! refused to start it), and parsing of the COM1 test protocol
//! (`test NAME ... ok` / `test NAME ... FAILED`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::{Outcome, Refusal};

/// Prefix of decoded defmt (COM2) lines in the interleaved log.
pub const LOG_PREFIX: &str = "  log| ";
/// Prefix of the runner's own notes (e.g. malformed defmt data) in the log.
pub const NOTE_PREFIX: &str = "runner| ";
/// Prefix of QEMU's stderr lines when echoed live.
pub const STDERR_PREFIX: &str = " qemu| ";

/// The result of one QEMU run, or of a configuration the runner refused
/// before starting QEMU ([`RunReport::refused`]).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// What the exit status means; for a refusal, the outcome the kernel
    /// gives for the same input ([`Refusal::outcome`]).
    pub outcome: Outcome,
    /// QEMU's exit status; `None` when QEMU was killed (timeout or signal)
    /// or never started (a refusal: [`Refusal::status`] has the status the
    /// kernel would have given).
    pub status: Option<i32>,
    /// Why the runner did not start QEMU. When this is `Some`, no QEMU ran:
    /// `console`, `log` and `qemu_stderr` are empty, `command` is empty,
    /// `elapsed` is zero, and `interleaved` holds the refusal's one line.
    pub refusal: Option<Refusal>,
    /// COM1 text, one `\n`-terminated line per line received (`\r` removed).
    pub console: String,
    /// When each COM1 line arrived, counted from QEMU's start (one entry
    /// per line of `console`, in order).
    pub console_arrivals: Vec<Duration>,
    /// Decoded defmt (COM2) lines, formatted like `[INFO ] message`.
    pub log: Vec<String>,
    /// Runner diagnostics: no defmt table, malformed frames, and the like.
    pub notes: Vec<String>,
    /// COM1 lines, defmt lines and notes in arrival order, prefixed as they
    /// were echoed (COM1 unprefixed, [`LOG_PREFIX`], [`NOTE_PREFIX`]).
    pub interleaved: Vec<String>,
    /// Everything QEMU wrote to its stderr.
    pub qemu_stderr: String,
    /// Wall time from starting QEMU until it exited or was killed.
    pub elapsed: Duration,
    /// The QEMU command line, shell-quoted, for failure dumps.
    pub command: String,
}

impl RunReport {
    /// The report of a run the runner refused before starting QEMU.
    pub fn refused(refusal: Refusal) -> Self {
        Self {
            outcome: refusal.outcome(),
            status: None,
            console: String::new(),
            console_arrivals: Vec::new(),
            log: Vec::new(),
            notes: Vec::new(),
            interleaved: vec![refusal.to_string()],
            qemu_stderr: String::new(),
            elapsed: Duration::ZERO,
            command: String::new(),
            refusal: Some(refusal),
        }
    }

    /// Whether QEMU ran at all (it did unless the runner refused).
    pub fn qemu_started(&self) -> bool {
        self.refusal.is_none()
    }

    /// Test results parsed from the COM1 `test NAME ... ok|FAILED` lines, in
    /// order. Lines that do not follow the protocol are ignored.
    pub fn test_results(&self) -> Vec<(String, bool)> {
        self.console.lines().filter_map(parse_test_line).collect()
    }

    /// Names of the tests that reported `FAILED`.
    pub fn failed_tests(&self) -> Vec<String> {
        self.test_results()
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect()
    }

    /// When the first COM1 line starting with `prefix` arrived, counted from
    /// QEMU's start (host wall time, so it includes QEMU's own start-up).
    pub fn console_line_at(&self, prefix: &str) -> Option<Duration> {
        self.console
            .lines()
            .zip(&self.console_arrivals)
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, at)| *at)
    }

    /// Whether COM1 contained `needle` anywhere.
    pub fn console_has(&self, needle: &str) -> bool {
        self.console.contains(needle)
    }

    /// Everything about the run (command, outcome, COM1 and COM2 in arrival
    /// order, QEMU's stderr), for dumping when a test fails.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the fmt::Results are ignored.
        let _ = writeln!(out, "===== QEMU run =====");
        if let Some(refusal) = &self.refusal {
            let _ = writeln!(
                out,
                "command: none: the runner refused to start QEMU ({})",
                refusal.detail()
            );
            let _ = writeln!(out, "refused: {refusal}");
        } else {
            let _ = writeln!(out, "command: {}", self.command);
        }
        let status = match (self.status, &self.refusal) {
            (Some(code), _) => code.to_string(),
            (None, Some(refusal)) => format!(
                "none (QEMU not started; the kernel's would be {})",
                refusal.status()
            ),
            (None, None) => "none (killed)".to_string(),
        };
        let _ = writeln!(
            out,
            "outcome: {} [status: {status}, elapsed: {}]",
            self.outcome,
            format_duration(self.elapsed)
        );
        let results = self.test_results();
        if !results.is_empty() {
            let failed = self.failed_tests();
            let _ = writeln!(
                out,
                "tests:   {} reported, {} failed{}",
                results.len(),
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join(", "))
                }
            );
        }
        let _ = writeln!(
            out,
            "----- output: COM1 unprefixed, COM2 defmt as `{}`, runner notes as `{}` -----",
            LOG_PREFIX.trim(),
            NOTE_PREFIX.trim()
        );
        for line in &self.interleaved {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "----- QEMU stderr -----");
        out.push_str(&self.qemu_stderr);
        if !self.qemu_stderr.is_empty() && !self.qemu_stderr.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(out, "===== end of QEMU run =====");
        out
    }
}

/// Parses one COM1 line of the test protocol: `test NAME ... ok` or
/// `test NAME ... FAILED`. Surrounding whitespace (including the `\r` of a
/// CRLF line) is ignored; the name must be non-empty and free of whitespace.
pub fn parse_test_line(line: &str) -> Option<(String, bool)> {
    let rest = line.trim().strip_prefix("test ")?;
    let (name, verdict) = rest.rsplit_once(" ... ")?;
    let passed = match verdict {
        "ok" => true,
        "FAILED" => false,
        _ => return None,
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name.to_string(), passed))
}

/// Formats a duration for humans: whole seconds as `60 s`, else `0.42 s`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with_console(console: &str) -> RunReport {
        RunReport {
            outcome: Outcome::Success,
            status: Some(33),
            console: console.to_string(),
            console_arrivals: (1..=console.lines().count() as u64)
                .map(Duration::from_millis)
                .collect(),
            log: vec!["[INFO ] hello".to_string()],
            notes: Vec::new(),
            interleaved: vec!["boot".to_string(), format!("{LOG_PREFIX}[INFO ] hello")],
            qemu_stderr: "warning: something".to_string(),
            elapsed: Duration::from_millis(420),
            command: "qemu-system-x86_64 -kernel k".to_string(),
            refusal: None,
        }
    }

    #[test]
    fn a_refused_run_says_no_qemu_ran() {
        let refusal = Refusal::CommandLineTooLong { len: 1025 };
        let report = RunReport::refused(refusal.clone());
        assert_eq!(report.outcome, Outcome::BadCommandLine);
        assert_eq!(report.status, None);
        assert!(!report.qemu_started());
        assert!(report.console.is_empty() && report.qemu_stderr.is_empty());
        assert_eq!(
            report.interleaved,
            ["kernel command line rejected: command line is longer than 1024 bytes"]
        );
        let t = report.transcript();
        for needle in [
            "command: none: the runner refused to start QEMU (1025 bytes given)\n",
            "refused: kernel command line rejected: command line is longer than 1024 bytes\n",
            "status: none (QEMU not started; the kernel's would be 37)",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        let memory = RunReport::refused(Refusal::NotEnoughMemory {
            memory: "1M".to_string(),
            bytes: 1 << 20,
        });
        assert_eq!(memory.outcome, Outcome::NotEnoughMemory);
        assert!(memory.transcript().contains("the kernel's would be 39"));
        assert!(report_with_console("").qemu_started());
    }

    #[test]
    fn console_lines_keep_their_arrival_times() {
        let report =
            report_with_console("boot\nverification walk: PASS\nverification walk: again\n");
        assert_eq!(
            report.console_line_at("verification walk:"),
            Some(Duration::from_millis(2))
        );
        assert_eq!(report.console_line_at("nothing"), None);
    }

    #[test]
    fn parses_ok_and_failed_lines() {
        assert_eq!(
            parse_test_line("test boot_info ... ok"),
            Some(("boot_info".to_string(), true))
        );
        assert_eq!(
            parse_test_line("test pks_write_fault ... FAILED"),
            Some(("pks_write_fault".to_string(), false))
        );
    }

    #[test]
    fn tolerates_carriage_return_and_surrounding_space() {
        assert_eq!(
            parse_test_line("test a ... ok\r"),
            Some(("a".to_string(), true))
        );
        assert_eq!(
            parse_test_line("  test b ... FAILED \r"),
            Some(("b".to_string(), false))
        );
    }

    #[test]
    fn accepts_path_like_names() {
        assert_eq!(
            parse_test_line("test ptalloc::buddy::split_then_merge ... ok"),
            Some(("ptalloc::buddy::split_then_merge".to_string(), true))
        );
    }

    #[test]
    fn rejects_garbage() {
        for line in [
            "",
            "test",
            "test  ... ok",
            "test ... ok",
            "test a ... okay",
            "test a ... ok extra",
            "test a ... failed",
            "test a ok",
            "test a b ... ok",
            "testing a ... ok",
            "running 3 tests",
            "panicked at 'test a ... ok'",
            "\u{0}\u{ff}test x ... ok",
        ] {
            assert_eq!(parse_test_line(line), None, "line {line:?}");
        }
    }

    #[test]
    fn report_collects_results_in_order_and_skips_other_lines() {
        let report = report_with_console(
            "kernel booting\ntest one ... ok\r\nnoise\ntest m::two ... FAILED\ntest three ... ok\n",
        );
        assert_eq!(
            report.test_results(),
            vec![
                ("one".to_string(), true),
                ("m::two".to_string(), false),
                ("three".to_string(), true),
            ]
        );
        assert_eq!(report.failed_tests(), vec!["m::two".to_string()]);
        assert!(report.console_has("kernel booting"));
        assert!(!report.console_has("absent"));
    }

    #[test]
    fn transcript_contains_everything() {
        let report = report_with_console("boot\ntest x ... FAILED\n");
        let t = report.transcript();
        for needle in [
            "qemu-system-x86_64 -kernel k",
            "kernel reported success",
            "status: 33",
            "0.42 s",
            "1 reported, 1 failed (x)",
            "boot",
            "  log| [INFO ] hello",
            "warning: something\n",
            "command: qemu-system-x86_64 -kernel k\n",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60 s");
        assert_eq!(format_duration(Duration::from_millis(420)), "0.42 s");
    }
}
