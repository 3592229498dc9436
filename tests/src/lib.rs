//! Helpers for the QEMU integration tests in `tests/tests/`.
//!
//! Each test boots the kernel image under QEMU through the `tools` runner
//! library, with its own `-cpu`, `-m`, `-smp` and `-append`, then asserts on
//! the outcome (the debug-exit status) and on COM1 lines. Any failed
//! assertion prints the run's whole transcript: the QEMU command, outcome,
//! console, decoded defmt log and QEMU's stderr.
//!
//! The image is built once per test binary (a no-op when `make test` has
//! just built it), so `cargo test -p qemu-tests` alone also works.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use tools::{Outcome, QemuConfig, RunReport};

/// Time a normal boot may take under TCG. Boots take well under a second;
/// the margin covers a loaded machine running tests in parallel.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel image, built on first use.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            tools::build_kernel(false).unwrap_or_else(|e| panic!("cannot build the kernel: {e}"))
        })
        .clone()
}

/// A QEMU configuration for the kernel with the given command line
/// (`-cpu max`, 128 MiB, one CPU, unless changed).
pub fn qemu(append: &str) -> QemuConfig {
    QemuConfig::new(kernel())
        .append(append)
        .timeout(BOOT_TIMEOUT)
}

/// Boots and returns what happened; a runner error (no QEMU, say) fails the
/// test with the runner's message.
pub fn boot(config: QemuConfig) -> Run {
    match tools::run(&config) {
        Ok(report) => Run(report),
        Err(error) => panic!("could not run QEMU: {error}"),
    }
}

/// One finished boot, with assertions that dump the transcript on failure.
pub struct Run(pub RunReport);

impl Run {
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n\n{}", self.0.transcript());
    }

    /// Asserts the outcome.
    pub fn expect_outcome(&self, expected: Outcome) -> &Self {
        if self.0.outcome != expected {
            self.fail(&format!(
                "expected outcome {expected}, got {}",
                self.0.outcome
            ));
        }
        self
    }

    /// Asserts the COM1 text contains each needle.
    pub fn expect_console(&self, needles: &[&str]) -> &Self {
        for needle in needles {
            if !self.0.console_has(needle) {
                self.fail(&format!("console does not contain {needle:?}"));
            }
        }
        self
    }

    /// Asserts the COM1 text does not contain the needle.
    pub fn expect_no_console(&self, needle: &str) -> &Self {
        if self.0.console_has(needle) {
            self.fail(&format!("console unexpectedly contains {needle:?}"));
        }
        self
    }

    /// Asserts the decoded defmt log has a line containing the needle.
    pub fn expect_log(&self, needle: &str) -> &Self {
        if !self.0.log.iter().any(|line| line.contains(needle)) {
            self.fail(&format!("defmt log has no line containing {needle:?}"));
        }
        self
    }

    /// Asserts no line of the decoded defmt log contains the needle.
    pub fn expect_no_log(&self, needle: &str) -> &Self {
        if self.0.log.iter().any(|line| line.contains(needle)) {
            self.fail(&format!("defmt log unexpectedly contains {needle:?}"));
        }
        self
    }

    /// The test protocol's results, `(name, passed)` in order.
    pub fn test_results(&self) -> Vec<(String, bool)> {
        self.0.test_results()
    }

    /// Asserts every in-kernel test passed and at least `min` ran.
    pub fn expect_all_tests_passed(&self, min: usize) -> &Self {
        let results = self.test_results();
        if results.len() < min {
            self.fail(&format!(
                "expected at least {min} kernel tests, saw {}",
                results.len()
            ));
        }
        if let Some((name, _)) = results.iter().find(|(_, ok)| !ok) {
            self.fail(&format!("kernel test {name} failed"));
        }
        self
    }

    /// The first COM1 line starting with `prefix`, failing if none.
    pub fn line_starting(&self, prefix: &str) -> String {
        match self
            .0
            .console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find(|l| l.starts_with(prefix))
        {
            Some(line) => line.to_string(),
            None => self.fail(&format!("console has no line starting with {prefix:?}")),
        }
    }
}
