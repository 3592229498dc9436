//! The in-kernel test registry and the test protocol on COM1.
//!
//! A test is a function registered with [`kernel_test!`](crate::kernel_test);
//! the macro places a [`KernelTest`] in the `.kernel_tests` link section,
//! which the linker script gathers between two symbols. Nothing else needs
//! to list it. `-append test=all` runs every test marked for `all`;
//! `test=a,b` runs those, in that order, including tests that deliberately
//! end the machine (faults, panics, hangs), which `all` skips.
//!
//! Protocol, one line per test: `test NAME ... ok`, `test NAME ... FAILED`
//! (a failure's reason follows on indented lines), or `test NAME ...
//! skipped (REASON)` for a test this machine cannot run (a CPU without
//! PKS, too little memory); then a closing `tests: N passed, M failed, K
//! skipped`. The exit status is success only if no selected test failed.
//!
//! Tests leave no state behind. Before each test the per-CPU page caches
//! are drained, so every test starts from the same free lists. After each
//! test that passes, the caches are drained again and the allocator must
//! hold exactly as many frames as before (a leak fails the test), and the
//! verification walk runs again (unless `ptprot=none`): unprotected page
//! tables or a key left on a page fail the test.

use crate::arch::exit::ExitCode;
use crate::{print, println};
use boot::cmdline::TestSelection;
use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

/// One registered test.
pub struct KernelTest {
    /// Name used on the command line and in the protocol.
    pub name: &'static str,
    /// The test body.
    pub run: fn() -> TestResult,
    /// Whether `test=all` runs it (false for tests that end the machine).
    pub in_all: bool,
}

/// What a test returns: `Err` carries the reason it failed.
pub type TestResult = Result<(), TestFailure>;

/// Why a test failed (or could not run), and where.
pub struct TestFailure {
    /// Source file of the failed check.
    pub file: &'static str,
    /// Line of the failed check.
    pub line: u32,
    /// What was expected and what was found.
    pub message: heapless::String<256>,
    /// The test could not run here (say, a CPU without PKS): reported as
    /// `skipped`, neither passed nor failed.
    pub skipped: bool,
}

impl TestFailure {
    /// A failure at `file:line` with a formatted message (cut to fit).
    pub fn new(file: &'static str, line: u32, message: fmt::Arguments<'_>) -> Self {
        let mut text = heapless::String::new();
        // Overlong messages are cut, which is fine for a report.
        let _ = fmt::write(&mut text, message);
        TestFailure {
            file,
            line,
            message: text,
            skipped: false,
        }
    }

    /// A failure where it is called, saying what went wrong (an error, a
    /// value) in its `Debug` form: for `?` on a step that must succeed.
    #[track_caller]
    pub fn because(what: &dyn fmt::Debug) -> Self {
        let at = core::panic::Location::caller();
        Self::new(at.file(), at.line(), format_args!("{what:?}"))
    }

    /// The test cannot run on this machine, for `reason`.
    #[track_caller]
    pub fn skipped(reason: &str) -> Self {
        let at = core::panic::Location::caller();
        let mut failure = Self::new(at.file(), at.line(), format_args!("{reason}"));
        failure.skipped = true;
        failure
    }
}

/// Fails the test unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        $crate::check!($cond, "check failed: {}", stringify!($cond))
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::testing::TestFailure::new(file!(), line!(), format_args!($($fmt)+)));
        }
    };
}

/// Fails the test unless the two values are equal, showing both.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr) => {
        $crate::check_eq!($left, $right, "")
    };
    ($left:expr, $right:expr, $why:literal) => {{
        let (left, right) = (&$left, &$right);
        $crate::check!(
            left == right,
            "{} == {} failed: {:?} != {:?} {}",
            stringify!($left),
            stringify!($right),
            left,
            right,
            $why
        );
    }};
}

/// Registers a test: `kernel_test!(fn name() -> TestResult { ... })`.
/// Prefix `fn` with `by_name` for a test that only runs when named (one
/// that ends the machine on purpose).
#[macro_export]
macro_rules! kernel_test {
    ($(#[$attr:meta])* fn $name:ident() -> TestResult $body:block) => {
        $crate::kernel_test!(@define true, $(#[$attr])* $name, $body);
    };
    ($(#[$attr:meta])* by_name fn $name:ident() -> TestResult $body:block) => {
        $crate::kernel_test!(@define false, $(#[$attr])* $name, $body);
    };
    (@define $in_all:expr, $(#[$attr:meta])* $name:ident, $body:block) => {
        $(#[$attr])*
        fn $name() -> $crate::testing::TestResult $body

        const _: () = {
            #[used]
            #[unsafe(link_section = ".kernel_tests")]
            static ENTRY: $crate::testing::KernelTest =
                $crate::testing::KernelTest { name: stringify!($name), run: $name, in_all: $in_all };
        };
    };
}

unsafe extern "C" {
    static __kernel_tests_start: u8;
    static __kernel_tests_end: u8;
}

/// Every registered test, in link order.
pub fn registry() -> &'static [KernelTest] {
    let start = (&raw const __kernel_tests_start).cast::<KernelTest>();
    let end = (&raw const __kernel_tests_end).cast::<KernelTest>();
    let bytes = end as usize - start as usize;
    assert!(
        bytes.is_multiple_of(size_of::<KernelTest>()),
        "the .kernel_tests section holds only KernelTest entries"
    );
    // SAFETY: the linker script places every `.kernel_tests` entry, each a
    // KernelTest, contiguously between the two symbols; the section is
    // read-only and lives as long as the kernel.
    unsafe { core::slice::from_raw_parts(start, bytes / size_of::<KernelTest>()) }
}

/// The test running now, for fault reports.
static CURRENT: AtomicPtr<KernelTest> = AtomicPtr::new(core::ptr::null_mut());

/// Name of the test in progress, if any.
pub fn current_test() -> Option<&'static str> {
    let test = CURRENT.load(Ordering::SeqCst);
    // SAFETY: CURRENT only ever holds null or a pointer into the registry.
    unsafe { test.as_ref() }.map(|t| t.name)
}

/// The tests a selection names, in run order.
pub type Plan = heapless::Vec<&'static KernelTest, 256>;

/// A `test=` name that matches no registered test.
pub struct UnknownTest<'a>(pub &'a str);

impl fmt::Display for UnknownTest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "option 'test' names unknown test '{}'; known tests:",
            self.0
        )?;
        for t in registry() {
            write!(
                f,
                " {}{}",
                t.name,
                if t.in_all { "" } else { " (by name only)" }
            )?;
        }
        Ok(())
    }
}

/// Resolves a selection against the registry, before anything runs, so a
/// bad name is a command-line error like any other.
pub fn plan(selection: &TestSelection) -> Result<Plan, UnknownTest<'_>> {
    let tests = registry();
    let mut chosen = Plan::new();
    match selection {
        TestSelection::All => {
            for test in tests.iter().filter(|t| t.in_all) {
                if chosen.push(test).is_err() {
                    panic!("more than 256 kernel tests: raise the limit of testing::Plan");
                }
            }
        }
        TestSelection::Named(names) => {
            for name in names {
                let test = tests
                    .iter()
                    .find(|t| t.name == name.as_str())
                    .ok_or(UnknownTest(name))?;
                // names has at most MAX_SELECTED_TESTS (16) entries.
                let _ = chosen.push(test);
            }
        }
    }
    Ok(chosen)
}

/// After each test that passed: the verification walk runs again (a test
/// that changed mappings must leave every page-table frame protected, and
/// no key behind), and the allocator must hold as many frames as before
/// (a test gives back every frame it took). `unheld` is
/// `frames::frames_not_held` before the test.
fn check_after(test: &KernelTest, unheld: Option<u64>) -> TestResult {
    crate::memory::frames::drain_caches();
    let now = crate::memory::frames::frames_not_held();
    if let (Some(before), Some(after)) = (unheld, now)
        && before != after
    {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!(
                "after {}: {} frames were not held before the test, {} after: it left frames allocated (or freed some it did not own)",
                test.name, before, after
            ),
        ));
    }
    if crate::boot_state().ptprot == pkeys::ProtectionPolicy::None {
        return Ok(());
    }
    let report = crate::memory::verify::verify();
    match report.failure() {
        None => Ok(()),
        Some(failure) => Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("after {}: verification walk failed: {}", test.name, failure),
        )),
    }
}

/// Runs the planned tests and returns the exit code to stop with.
pub fn run(chosen: Plan) -> ExitCode {
    println!("running {} kernel tests", chosen.len());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for test in chosen {
        print!("test {} ... ", test.name);
        CURRENT.store(core::ptr::from_ref(test).cast_mut(), Ordering::SeqCst);
        // Pages parked in the per-CPU cache pin their pageblocks: drain
        // it so each test starts from the same free lists, and the count
        // after the test can be compared.
        crate::memory::frames::drain_caches();
        let unheld = crate::memory::frames::frames_not_held();
        let result = (test.run)().and_then(|()| check_after(test, unheld));
        CURRENT.store(core::ptr::null_mut(), Ordering::SeqCst);
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok");
            }
            Err(failure) if failure.skipped => {
                skipped += 1;
                println!("skipped ({})", failure.message);
            }
            Err(failure) => {
                failed += 1;
                println!("FAILED");
                println!("    {}:{}: {}", failure.file, failure.line, failure.message);
            }
        }
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        passed, failed, skipped
    );
    defmt::info!(
        "kernel tests: {=u32} passed, {=u32} failed, {=u32} skipped",
        passed,
        failed,
        skipped
    );
    if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    }
}

/// Tests of the harness itself: each ends the run in a way the host-side
/// integration tests expect and check (a fault report, a panic report, a
/// failed check, a hang caught by the runner's timeout).
mod harness_checks {
    crate::kernel_test! {
        /// Writes to a low address that only the boot stub's identity map
        /// (removed before Rust runs) covered: a #PF report, then failure.
        by_name fn deliberate_page_fault() -> TestResult {
            let address = 0x1000 as *mut u64;
            // SAFETY: not safe at all, on purpose: nothing is mapped there, so
            // the write faults and the fault report ends the machine.
            unsafe { address.write_volatile(0x5afe) };
            Err(super::TestFailure::new(file!(), line!(), format_args!("the write did not fault")))
        }
    }

    crate::kernel_test! {
        /// Panics: a panic report, then failure.
        by_name fn deliberate_panic() -> TestResult {
            panic!("deliberate panic to exercise the panic report");
        }
    }

    crate::kernel_test! {
        /// Fails a check: a FAILED line with the reason, then failure.
        by_name fn deliberate_check_failure() -> TestResult {
            crate::check_eq!(1 + 1, 3);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// Recurses until the boot stack hits its guard page: a #PF report
        /// (on the #PF IST stack) naming the overflow, then failure.
        by_name fn deliberate_stack_overflow() -> TestResult {
            #[inline(never)]
            #[allow(unconditional_recursion)] // running out of stack is the point
            fn recurse(depth: u64) -> u64 {
                let frame = core::hint::black_box([depth; 64]);
                recurse(depth + 1).wrapping_add(frame[0])
            }
            let depth = recurse(0);
            Err(super::TestFailure::new(file!(), line!(), format_args!("returned at depth {depth}")))
        }
    }

    crate::kernel_test! {
        /// Keeps a frame it allocated and passes: the harness's count of
        /// frames nobody holds fails it.
        by_name fn deliberate_frame_leak() -> TestResult {
            let frame = crate::memory::frames::alloc_frame(0, ptalloc::Freetype::KERNEL, false);
            let frame = frame.map_err(|e| super::TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
            core::mem::forget(frame);
            Ok(())
        }
    }

    /// The page `deliberate_key_left_behind` keys.
    static LEFT_KEYED: crate::memory::boot_tables::TestPage =
        crate::memory::boot_tables::TestPage::new();

    crate::kernel_test! {
        /// Leaves a key on a page and passes: the verification walk after
        /// the test fails it.
        by_name fn deliberate_key_left_behind() -> TestResult {
            let key = pkeys::Pkey::new(15).unwrap_or(pkeys::PAGE_TABLE_KEY);
            let keyed = LEFT_KEYED.keyed(key);
            let keyed = keyed.map_err(|e| super::TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
            core::mem::forget(keyed);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// Never returns: only the host runner's timeout ends it.
        by_name fn deliberate_hang() -> TestResult {
            loop {
                core::hint::spin_loop();
            }
        }
    }
}
