//! The attack matrix, read from the kernel's attack tests.
//!
//! The kernel's attack tests (`kernel/src/attack_matrix.rs`) each make one
//! simulated write-what-where at a class of target and print
//! `attack-matrix: target=T ptprot=P protect=C outcome=O` to the log
//! (COM2), failing unless
//! the outcome is the one the policy claims. This module names the tests
//! and the policies they run under ([`TESTS`], [`POLICIES`]), reads their
//! lines back ([`parse`]) and lays the matrix out ([`markdown`]): targets
//! as rows, policies as columns. Nothing in the matrix is written by
//! hand; the lab boots every policy and the QEMU tests do the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The kernel tests that make the attacks, one per target.
pub const TESTS: &[&str] = &[
    "attack_matrix_page_table_entry",
    "attack_matrix_cnode_slot",
    "attack_matrix_tcb",
    "attack_matrix_object_table",
    "stray_write_to_the_pageblock_record",
    "forged_allocator_metadata_is_seen_by_the_walk",
    "attack_matrix_ipc_buffer",
    "attack_matrix_ipc_buffer_secret",
];

/// Targets in the order the matrix lists them (the kernel's names).
pub const TARGETS: &[&str] = &[
    "page-table-entry",
    "cnode-slot",
    "tcb",
    "object-table",
    "sealed-record",
    "allocator-metadata",
    "ipc-buffer",
    "ipc-buffer-secret",
];

/// A policy the matrix has a column for.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Its column heading.
    pub name: &'static str,
    /// Kernel command-line words selecting it.
    pub words: &'static str,
}

/// The policies, from no protection to every object class keyed.
pub const POLICIES: &[Policy] = &[
    Policy {
        name: "none",
        words: "ptprot=none",
    },
    Policy {
        name: "ro",
        words: "ptprot=ro",
    },
    Policy {
        name: "pks, pt only",
        words: "ptprot=pks protect=pt",
    },
    Policy {
        name: "pks (default: pt,meta)",
        words: "ptprot=pks",
    },
    Policy {
        name: "pks +cnode",
        words: "ptprot=pks protect=pt,meta,cnode",
    },
    Policy {
        name: "pks +tcb",
        words: "ptprot=pks protect=pt,meta,tcb",
    },
    Policy {
        name: "pks, all classes",
        words: "ptprot=pks protect=pt,meta,cnode,tcb",
    },
];

impl Policy {
    /// The command line that runs every attack under this policy.
    pub fn command_line(&self) -> String {
        format!("{} test={}", self.words, TESTS.join(","))
    }
}

/// One attack as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attack {
    /// The target's name.
    pub target: String,
    /// `ptprot=` as in force.
    pub ptprot: String,
    /// `protect=` as in force.
    pub protect: String,
    /// `blocked`, `detected` or `succeeded`.
    pub outcome: String,
}

/// The attacks in a decoded log (COM2), in order.
pub fn parse(transcript: &str) -> Result<Vec<Attack>, String> {
    let mut attacks = Vec::new();
    for line in transcript.lines() {
        let Some(at) = line.find("attack-matrix: ") else {
            continue;
        };
        let mut fields = BTreeMap::new();
        for token in line[at + "attack-matrix: ".len()..].split_whitespace() {
            let (key, value) = token
                .split_once('=')
                .ok_or_else(|| format!("{token:?} is not key=value in {line:?}"))?;
            fields.insert(key, value.to_string());
        }
        let mut take = |key: &str| {
            fields
                .remove(key)
                .ok_or_else(|| format!("no {key}= in {line:?}"))
        };
        let attack = Attack {
            target: take("target")?,
            ptprot: take("ptprot")?,
            protect: take("protect")?,
            outcome: take("outcome")?,
        };
        if !["blocked", "detected", "succeeded"].contains(&attack.outcome.as_str()) {
            return Err(format!("unknown outcome in {line:?}"));
        }
        attacks.push(attack);
    }
    Ok(attacks)
}

/// The matrix: a row per target, a column per policy run (`columns`:
/// the policy's name and its attacks), `—` where a run lacks the target.
pub fn markdown(columns: &[(&str, Vec<Attack>)]) -> String {
    let mut md = String::from("| target |");
    for (name, _) in columns {
        let _ = write!(md, " {name} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(columns.len()));
    md.push('\n');
    for target in TARGETS {
        let _ = write!(md, "| {target} |");
        for (_, attacks) in columns {
            let outcome = attacks
                .iter()
                .find(|a| a.target == *target)
                .map_or("—", |a| a.outcome.as_str());
            let _ = write!(md, " {outcome} |");
        }
        md.push('\n');
    }
    md
}

/// What the user test suite's syscalls cost under a policy: its
/// `lab: workload=syscalls` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallCosts {
    /// Syscalls made.
    pub syscalls: u64,
    /// PKRS writes while handling them.
    pub pkrs_writes: u64,
    /// TLB flushes the allocator made during the suite.
    pub flushes: u64,
    /// Pageblocks converted during the suite.
    pub conversions: u64,
}

/// The suite's costs in a decoded log.
pub fn parse_syscalls(log: &str) -> Result<SyscallCosts, String> {
    let line = log
        .lines()
        .find(|l| l.contains("lab: workload=syscalls"))
        .ok_or("no `lab: workload=syscalls` line in the log")?;
    let number = |key: &str| {
        line.split_whitespace()
            .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| format!("no number for {key} in {line:?}"))
    };
    Ok(SyscallCosts {
        syscalls: number("ops")?,
        pkrs_writes: number("pkrs_writes")?,
        flushes: number("flushes")?,
        conversions: number("conversions")?,
    })
}

/// One policy's column of the matrix and its costs, as `results.json`
/// keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// [`Policy::name`].
    pub policy: String,
    /// Its kernel words.
    pub words: String,
    /// The attacks (empty if the run failed).
    pub attacks: Vec<Attack>,
    /// The suite's costs, if it ran.
    pub costs: Option<SyscallCosts>,
    /// Why a run failed, if one did.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failures: Vec<String>,
}

/// The cost table: a row per policy, its PKRS writes per syscall and
/// what the suite's memory cost in flushes and conversions.
pub fn costs_markdown(runs: &[PolicyRun]) -> String {
    let mut md = String::from(
        "| policy | syscalls | PKRS writes | per syscall | flushes | conversions |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        match run.costs {
            Some(c) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.2} | {} | {} |",
                    run.policy,
                    c.syscalls,
                    c.pkrs_writes,
                    c.pkrs_writes as f64 / c.syscalls.max(1) as f64,
                    c.flushes,
                    c.conversions
                );
            }
            None => {
                let _ = writeln!(md, "| {} | — | — | — | — | — |", run.policy);
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_lines_and_lays_out_the_matrix() {
        let log = "  log| [INFO ] attack-matrix: target=tcb ptprot=pks protect=pt,meta,tcb outcome=blocked\n\
                   [INFO ] kernel tests: 2 passed\n\
                   attack-matrix: target=ipc-buffer ptprot=pks protect=pt,meta,tcb outcome=succeeded";
        let attacks = parse(log).expect("two attacks");
        assert_eq!(attacks.len(), 2);
        assert_eq!(attacks[0].target, "tcb");
        assert_eq!(attacks[0].protect, "pt,meta,tcb");
        let md = markdown(&[("pks +tcb", attacks)]);
        assert!(md.starts_with("| target | pks +tcb |\n|---|---|\n"), "{md}");
        assert!(md.contains("| tcb | blocked |"), "{md}");
        assert!(md.contains("| ipc-buffer | succeeded |"), "{md}");
        assert!(md.contains("| cnode-slot | — |"), "{md}");
        assert_eq!(md.lines().count(), 2 + TARGETS.len());
    }

    #[test]
    fn malformed_lines_are_named() {
        for bad in [
            "attack-matrix: target=tcb ptprot=pks protect=pt outcome=maybe",
            "attack-matrix: target=tcb ptprot=pks outcome=blocked",
            "attack-matrix: target=tcb ptprot protect=pt outcome=blocked",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(bad) || error.contains("ptprot"), "{error}");
        }
    }

    #[test]
    fn reads_the_suites_costs() {
        let log = "x\n  log| [INFO ] lab: workload=syscalls strategy=freetype fallback=fail protection=pks protect=pt,meta ops=1070 pkrs_writes=1466 flushes=1 conversions=1\n";
        let costs = parse_syscalls(log).expect("costs");
        assert_eq!(
            costs,
            SyscallCosts {
                syscalls: 1070,
                pkrs_writes: 1466,
                flushes: 1,
                conversions: 1
            }
        );
        assert!(parse_syscalls("nothing").is_err());
        assert!(parse_syscalls("lab: workload=syscalls ops=x").is_err());
        let run = PolicyRun {
            policy: "pks".into(),
            words: String::new(),
            attacks: Vec::new(),
            costs: Some(costs),
            failures: Vec::new(),
        };
        assert!(costs_markdown(&[run]).contains("| pks | 1070 | 1466 | 1.37 | 1 | 1 |"));
    }

    #[test]
    fn every_policy_runs_every_attack() {
        for policy in POLICIES {
            let line = policy.command_line();
            for test in TESTS {
                assert!(line.contains(test), "{line}");
            }
            assert_eq!(line.matches("test=").count(), 1, "{line}");
        }
        assert_eq!(TESTS.len(), TARGETS.len());
    }
}
