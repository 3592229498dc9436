//! The user test suite's driver (`roottask=suite`): the boot module is a
//! test program (`kernel/roottask`'s `usertests`), run once per test, each
//! time as a fresh process built exactly as the root task is, with the
//! test's number in `rsi`.
//!
//! Why the driver is in the kernel: part 1 of the microkernel has no
//! scheduler, so no user program can start another and wait for it.
//!
//! The protocol, on COM1, the kernel tests' own: the program prints
//! `test NAME ... `, runs the test and exits with 0 (passed; the driver
//! finishes the line), 1 (failed: it printed `FAILED` and why), 2
//! (skipped: it printed why) or 3 (no such test: the suite is over). After
//! each test, with the process still alive, the driver runs the
//! verification walk over every address space (so over the test's VSpace
//! too), which must pass unless protection is off (`ptprot=none`); then it destroys the process and checks that every frame came
//! back and no object is left. A test whose walk or clean-up fails is
//! failed. The suite ends with `user tests: N passed, M failed, K
//! skipped`.

use crate::arch::exit::ExitCode;
use crate::arch::usermode::Stop;
use crate::memory::{frames, verify};
use crate::object::{self, Body, OBJECTS};
use crate::println;
use crate::roottask::{self, Loaded};
use boot::BootModule;

/// Exit statuses of the test program.
const PASSED: u64 = 0;
const FAILED: u64 = 1;
const SKIPPED: u64 = 2;
const NO_SUCH_TEST: u64 = 3;

/// More tests than this is a runaway program.
const MAX_TESTS: u64 = 1000;

/// Counts of the suite.
#[derive(Default)]
struct Counts {
    passed: u32,
    failed: u32,
    skipped: u32,
    /// Processes built, and the page-table pages and pageblock
    /// conversions their VSpaces took.
    processes: u64,
    tables: u64,
    conversions: u64,
}

/// Pageblock conversions so far, of every kind.
fn conversions() -> u64 {
    frames::stats().map_or(0, |stats| stats.conversions.iter().flatten().sum())
}

/// Runs every test of the program in `module`.
pub fn run(module: &BootModule) -> ExitCode {
    if let Err(error) = roottask::init_objects() {
        println!("user tests: cannot set up the object table: {}", error);
        return ExitCode::Failure;
    }
    let mut counts = Counts::default();
    for index in 0..MAX_TESTS {
        let before = frames::frames_not_held();
        let converted = conversions();
        let loaded = match roottask::load(module) {
            Ok(loaded) => loaded,
            Err(error) => {
                println!(
                    "user tests: cannot build the process for test {}: {}",
                    index, error
                );
                counts.failed += 1;
                break;
            }
        };
        counts.processes += 1;
        counts.tables += loaded.process.tables as u64;
        counts.conversions += conversions() - converted;
        let stop = roottask::enter(&loaded, index);
        if stop == Stop::Exited(NO_SUCH_TEST) {
            finish(&loaded, before);
            break;
        }
        let walked = check_walk(&loaded);
        let cleaned = finish(&loaded, before);
        let checks_passed = walked && cleaned;
        match stop {
            Stop::Exited(PASSED) if checks_passed => {
                println!("ok");
                counts.passed += 1;
            }
            Stop::Exited(PASSED) => counts.failed += 1,
            Stop::Exited(SKIPPED) if checks_passed => counts.skipped += 1,
            Stop::Exited(FAILED) | Stop::Exited(SKIPPED) => counts.failed += 1,
            other => {
                println!("FAILED");
                println!(
                    "    the test process stopped by {}",
                    roottask::describe(&other)
                );
                counts.failed += 1;
            }
        }
    }
    report_costs(&counts);
    println!(
        "user tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    if counts.failed == 0 && counts.passed > 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

/// Prints what the suite's VSpaces and map invocations cost.
fn report_costs(counts: &Counts) {
    let costs = OBJECTS
        .lock()
        .as_ref()
        .map(|objects| objects.costs())
        .unwrap_or_default();
    let processes = counts.processes.max(1);
    println!(
        "user tests: costs: {} map invocations (frames and tables), {} PKRS writes, {}.{:02} per map (goal 2); \
         each process's VSpace built with {}.{:02} page-table pages and {}.{:02} pageblock conversions ({} processes)",
        costs.maps,
        costs.map_pkrs_writes,
        costs.map_pkrs_writes / costs.maps.max(1),
        costs.map_pkrs_writes * 100 / costs.maps.max(1) % 100,
        counts.tables / processes,
        counts.tables * 100 / processes % 100,
        counts.conversions / processes,
        counts.conversions * 100 / processes % 100,
        counts.processes
    );
}

/// The verification walk, with the test's process alive: it must pass,
/// and must have walked the process's VSpace.
fn check_walk(loaded: &Loaded) -> bool {
    let report = verify::verify();
    let root =
        OBJECTS
            .lock()
            .as_ref()
            .and_then(|objects| match objects.body(loaded.process.vspace) {
                Some(Body::VSpace(space)) => Some(space.root()),
                _ => None,
            });
    let covered = root.is_some_and(|root| crate::memory::paging::live_roots().contains(&root));
    // Under ptprot=none nothing is protected: the walk is expected to
    // find page tables unprotected, as at boot; it must still reach the
    // test's VSpace.
    let protected = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
    if let (Some(failure), true) = (report.failure(), protected) {
        println!("FAILED");
        println!(
            "    the verification walk after the test failed: {}",
            failure
        );
        return false;
    }
    if !covered {
        println!("FAILED");
        println!("    the verification walk did not cover the test's VSpace");
        return false;
    }
    true
}

/// Destroys the test's process; true if every frame came back and no
/// object is left.
fn finish(loaded: &Loaded, before: Option<u64>) -> bool {
    let left = match OBJECTS.lock().as_mut() {
        Some(objects) => {
            object::boot::destroy(objects, &loaded.process);
            object::boot::live_objects(objects)
        }
        None => 0,
    };
    frames::drain_caches();
    let after = frames::frames_not_held();
    if left != 0 || after != before {
        println!("FAILED");
        println!(
            "    after the test's process was destroyed: {} objects left, frames not held {:?} (before it: {:?})",
            left, after, before
        );
        return false;
    }
    true
}
