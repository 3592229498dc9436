//! The user-level test suite (`kernel/roottask/src/bin/usertests.rs`)
//! under QEMU: the kernel runs it once per test (`roottask=suite`), each
//! test in a fresh process, and every test passes under every protection
//! policy and on two CPUs. Under `pks` each map invocation costs one pair
//! of PKRS writes.

use qemu_tests::boot;
use std::path::PathBuf;
use std::sync::OnceLock;
use tools::Outcome;

/// The suite's ELF, built (with the root task) once per test binary.
fn usertests() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        tools::build_roottask(true)
            .unwrap_or_else(|e| panic!("cannot build the user programs: {e}"))
            .with_file_name("usertests")
    })
    .clone()
}

/// Tests in the suite; a test added there is counted here.
const TESTS: u32 = 11;

fn all_passed() -> String {
    format!("user tests: {TESTS} passed, 0 failed, 0 skipped")
}

#[test]
fn every_user_test_passes_under_pks_and_a_map_costs_two_pkrs_writes() {
    boot(qemu_tests::qemu("roottask=suite").initrd(usertests()))
        .expect_outcome(Outcome::Success)
        .expect_console(&[
            "test retype_makes_every_object_type_and_delete_refunds_it ... ok",
            "test a_secret_frame_is_absent_from_the_direct_map ... ok",
            "PKRS writes, 2.00 per map (goal 2)",
            &all_passed(),
        ])
        .expect_no_console("FAILED");
}

#[test]
fn every_user_test_passes_under_ro_none_and_on_two_cpus() {
    for config in [
        qemu_tests::qemu("roottask=suite ptprot=ro").cpu("qemu64"),
        qemu_tests::qemu("roottask=suite ptprot=none"),
        qemu_tests::qemu("roottask=suite").smp(2),
    ] {
        boot(config.initrd(usertests()))
            .expect_outcome(Outcome::Success)
            .expect_console(&[&all_passed()])
            .expect_no_console("FAILED");
    }
}
