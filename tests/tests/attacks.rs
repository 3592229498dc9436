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
