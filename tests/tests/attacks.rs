//! The attacks on the page-table protection, each booted under `pks`
//! (where it must be stopped: a PK fault, a typed error, or a register
//! check that ends the machine naming the register) and under `none`
//! (where the same write lands, which shows the test can see it).
//! Attacks refused at compile time are listed in the README.

use qemu_tests::{boot, qemu};
use tools::Outcome;

#[test]
fn pkrs_opened_behind_the_windows_is_caught_at_the_next_exception() {
    boot(qemu("test=attack_pkrs_opened_then_exception"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "test attack_pkrs_opened_then_exception ... FAILED",
            "!!! protection registers tampered with: PKRS holds 0x00000000, but the open windows set 0x000002a8 (key 1 ro, key 2 ro, key 3 ro, key 4 ro)",
        ])
        .expect_no_log("attack: the stray page-table write landed");
    boot(qemu("ptprot=none test=attack_pkrs_opened_then_exception"))
        .expect_outcome(Outcome::Success)
        .expect_all_tests_passed(1)
        .expect_log("attack: the stray page-table write landed");
}

#[test]
fn write_protect_cleared_is_caught_under_every_policy() {
    for policy in ["pks", "ro", "none"] {
        boot(qemu(&format!(
            "ptprot={policy} test=attack_write_protect_cleared"
        )))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "!!! protection registers tampered with: CR0.WP is clear, but must be set here",
        ])
        .expect_no_log("nothing noticed");
    }
}

#[test]
fn cr4_pks_cleared_is_caught_where_it_is_pinned() {
    boot(qemu("test=attack_cr4_pks_cleared"))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&["lacks pinned bits 0x1000000"])
        .expect_no_log("attack: the stray page-table write landed");
    boot(qemu("ptprot=none test=attack_cr4_pks_cleared"))
        .expect_outcome(Outcome::Success)
        .expect_log("attack: the stray page-table write landed");
}

/// The attack matrix (`kernel/src/attack_matrix.rs`): every attack under
/// every policy of `tools::attack_matrix::POLICIES`, each test checking
/// its outcome against the policy's claim in the kernel; here, that all
/// ran and passed, and the corners of the matrix: every write lands
/// under `none` but at a secret frame, and with every class keyed under
/// `pks` only the IPC buffer (user memory in the direct map) is written
/// unnoticed.
#[test]
fn the_attack_matrix_holds_under_every_policy() {
    use tools::attack_matrix::{POLICIES, TARGETS, markdown, parse};
    let mut columns = Vec::new();
    for policy in POLICIES {
        let run = boot(qemu(&policy.command_line()));
        run.expect_outcome(Outcome::Success)
            .expect_all_tests_passed(TARGETS.len());
        let attacks = parse(&run.0.log.join("\n")).unwrap_or_else(|e| panic!("{e}"));
        let mut seen: Vec<&str> = attacks.iter().map(|a| a.target.as_str()).collect();
        seen.sort_unstable();
        let mut expected = TARGETS.to_vec();
        expected.sort_unstable();
        assert_eq!(seen, expected, "{}", policy.name);
        columns.push((policy.name, attacks));
    }
    let outcome = |column: usize, target: &str| {
        let attacks = &columns[column].1;
        attacks
            .iter()
            .find(|a| a.target == target)
            .map(|a| a.outcome.clone())
            .unwrap_or_default()
    };
    let all_keyed = columns.len() - 1;
    for target in TARGETS {
        let none = outcome(0, target);
        match *target {
            "ipc-buffer-secret" => assert_eq!(none, "blocked"),
            "sealed-record" | "allocator-metadata" => assert_eq!(none, "detected"),
            _ => assert_eq!(none, "succeeded", "{target} under none"),
        }
        let keyed = outcome(all_keyed, target);
        match *target {
            "ipc-buffer" => assert_eq!(keyed, "succeeded"),
            "allocator-metadata" => assert_eq!(keyed, "detected"),
            _ => assert_eq!(keyed, "blocked", "{target} with every class keyed"),
        }
    }
    eprintln!("{}", markdown(&columns));
}

/// Object classes are keyed only where keying them holds: never without
/// the sealed records (`meta`), never under `ro`, whose windows would make
/// every read-only page writable for a whole invocation.
#[test]
fn object_classes_are_refused_where_they_would_protect_nothing() {
    boot(qemu("ptprot=ro protect=pt,meta,cnode"))
        .expect_outcome(Outcome::BadCommandLine)
        .expect_console(&[
            "kernel command line rejected: protect=...cnode or tcb needs ptprot=pks",
        ]);
    boot(qemu("protect=pt,tcb"))
        .expect_outcome(Outcome::BadCommandLine)
        .expect_console(&["option 'protect' does not accept 'pt,tcb'"]);
}
