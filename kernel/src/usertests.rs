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
//! failed. After the last test the capability space's invariants are
//! checked once (`cspace::CSpace::check`). The suite ends with `user
//! tests: N passed, M failed, K skipped`.

use crate::arch::exit::ExitCode;
use crate::arch::usermode::Stop;
use crate::memory::{frames, verify};
use crate::object::{self, Body};
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
    let stats_before = frames::stats();
    for index in 0..MAX_TESTS {
        let before = Baseline::now();
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
        let walked = check_walk(&loaded);
        let cleaned = finish(&loaded, &before);
        if stop == Stop::Exited(NO_SUCH_TEST) {
            // The run that found no test: its process must go cleanly too.
            if let Err(problem) = cleaned {
                println!("user tests: after the last test: {}", problem);
                counts.failed += 1;
            }
            break;
        }
        // What the driver found, or the test's own verdict: one line.
        match (stop, walked.and(cleaned)) {
            (Stop::Exited(PASSED), Ok(())) => {
                println!("ok");
                counts.passed += 1;
            }
            (Stop::Exited(SKIPPED), Ok(())) => counts.skipped += 1,
            (Stop::Exited(FAILED), _) => counts.failed += 1,
            (Stop::Exited(PASSED | SKIPPED), Err(problem)) => {
                println!("FAILED");
                println!("    {}", problem);
                counts.failed += 1;
            }
            (other, _) => {
                println!("FAILED");
                println!(
                    "    the test process stopped by {}",
                    roottask::describe(&other)
                );
                counts.failed += 1;
            }
        }
    }
    // Once, at the end: the full check takes seconds under TCG.
    let checked = object::read_objects(object::boot::check_caps).unwrap_or(Ok(()));
    if let Err(violation) = checked {
        println!("user tests: {}", Problem::Caps(violation));
        counts.failed += 1;
    }
    report_costs(&counts);
    if let (Some(before), Some(after)) = (stats_before, frames::stats()) {
        report_lab_line(&before, &after);
    }
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

/// The suite as a policy-lab workload (`syscalls`): what the protected
/// object classes cost over its syscalls, in the lab's `key=value` form
/// (`crate::lab`).
fn report_lab_line(before: &ptalloc::Stats, after: &ptalloc::Stats) {
    let (syscalls, pkrs_writes) = crate::syscall::costs();
    let objects = object::protection::in_force();
    let policy = frames::policy();
    defmt::info!(
        "lab: workload=syscalls strategy={=str} fallback={=str} protection={=str} protect={=str} ops={=u64} pkrs_writes={=u64} flushes={=u64} conversions={=u64}",
        policy.strategy_name(),
        policy.fallback_name(),
        crate::boot_state().ptprot.name(),
        objects.spelling(),
        syscalls,
        pkrs_writes,
        after.flushes_local - before.flushes_local,
        after.total_conversions() - before.total_conversions()
    );
}

/// Prints what the suite's VSpaces and map invocations cost.
fn report_costs(counts: &Counts) {
    let costs = object::read_objects(|objects| objects.costs()).unwrap_or_default();
    let processes = counts.processes.max(1);
    let (syscalls, syscall_writes) = crate::syscall::costs();
    println!(
        "user tests: costs: {} syscalls, {} PKRS writes, {}.{:02} per syscall (protect={})",
        syscalls,
        syscall_writes,
        syscall_writes / syscalls.max(1),
        syscall_writes * 100 / syscalls.max(1) % 100,
        object::protection::in_force().spelling(),
    );
    println!(
        "user tests: costs: {} map invocations (frames and tables), {} PKRS writes, {}.{:02} per map (goal 2); \
         {} tables left non-empty by a dead VSpace cleared on their way back in ({} PKRS writes); \
         each process's VSpace built with {}.{:02} page-table pages and {}.{:02} pageblock conversions ({} processes)",
        costs.maps,
        costs.map_pkrs_writes,
        costs.map_pkrs_writes / costs.maps.max(1),
        costs.map_pkrs_writes * 100 / costs.maps.max(1) % 100,
        costs.clears,
        costs.clear_pkrs_writes,
        counts.tables / processes,
        counts.tables * 100 / processes % 100,
        counts.conversions / processes,
        counts.conversions * 100 / processes % 100,
        counts.processes
    );
}

/// What the driver found wrong after a test.
enum Problem {
    /// The verification walk failed.
    Walk(verify::Failure),
    /// The walk did not reach the test's VSpace.
    NotCovered,
    /// Destroying the process left objects or frames behind.
    Leak {
        objects: (u32, u32),
        frames: (Option<u64>, Option<u64>),
    },
    /// The capability space broke an invariant.
    Caps(cspace::Violation),
}

impl core::fmt::Display for Problem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Walk(failure) => {
                write!(f, "the verification walk after the test failed: {failure}")
            }
            Self::NotCovered => {
                f.write_str("the verification walk did not reach the test's VSpace")
            }
            Self::Leak { objects, frames } => write!(
                f,
                "destroying the test's process left {} objects (before it: {}) and {:?} frames not held (before it: {:?})",
                objects.1, objects.0, frames.1, frames.0
            ),
            Self::Caps(violation) => {
                write!(f, "the capability space broke an invariant: {violation:?}")
            }
        }
    }
}

/// What must be the same after a test's process is gone.
struct Baseline {
    objects: u32,
    frames: Option<u64>,
}

impl Baseline {
    fn now() -> Self {
        let objects = object::read_objects(object::boot::live_objects).unwrap_or(0);
        Self {
            objects,
            frames: frames::frames_not_held(),
        }
    }
}

/// The verification walk, with the test's process alive: it must pass
/// (unless protection is off), and must have walked the process's VSpace.
fn check_walk(loaded: &Loaded) -> Result<(), Problem> {
    let report = verify::verify();
    let root = object::read_objects(|objects| match objects.body(loaded.process.vspace) {
        Some(Body::VSpace(space)) => Some(space.root()),
        _ => None,
    })
    .flatten();
    let covered = root.is_some_and(|root| crate::memory::paging::live_roots().contains(&root));
    // Under ptprot=none nothing is protected: the walk is expected to
    // find page tables unprotected, as at boot; it must still reach the
    // test's VSpace.
    let protected = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
    match report.failure() {
        Some(failure) if protected => Err(Problem::Walk(failure)),
        _ if !covered => Err(Problem::NotCovered),
        _ => Ok(()),
    }
}

/// Destroys the test's process: every frame must come back, and no object
/// be left beyond those alive before it.
fn finish(loaded: &Loaded, before: &Baseline) -> Result<(), Problem> {
    let left = object::with_objects(|objects| {
        object::boot::destroy(objects, &loaded.process);
        object::boot::live_objects(objects)
    })
    .unwrap_or(0);
    frames::drain_caches();
    let after = Baseline::now();
    if left != before.objects || after.frames != before.frames {
        return Err(Problem::Leak {
            objects: (before.objects, left),
            frames: (before.frames, after.frames),
        });
    }
    Ok(())
}
