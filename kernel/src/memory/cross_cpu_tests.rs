//! A write window is per CPU: PKRS (and CR0.WP under `ro`) is each CPU's
//! own register, so a window the page-table code opens on one CPU opens
//! nothing on another. The attack the Linux discussion names is racing
//! "the intended pagetable update paths that flip the pkey register":
//! while CPU 0 holds a page-table window open, CPU 1 writes the same
//! page-table page. Needs a second CPU (`-smp 2`); skipped on one.

use super::direct_map::DIRECT_MAP_BASE;
use super::frames::{self, PAGE_TABLES};
use super::pte;
use crate::arch::recovery::write_u64_if_writable;
use crate::arch::smp;
use crate::pkfault::with_policy;
use crate::testing::TestFailure;
use core::sync::atomic::{AtomicU64, Ordering};
use pkeys::{FaultPolicy, Mechanism};
use ptalloc::AllocFlags;

/// What a corrupted entry would hold: a writable mapping of frame 1.
const FORGED: u64 = 0x1000 | pte::PRESENT | pte::WRITABLE;

/// The page-table page CPU 1 aims at (a direct-map address).
static TARGET: AtomicU64 = AtomicU64::new(0);
/// CPU 1's result: 0 not run, 1 the write landed, 2 it was stopped.
static OUTCOME: AtomicU64 = AtomicU64::new(0);
/// The key of the fault CPU 1 took, plus one (0: none).
static FAULT_KEY: AtomicU64 = AtomicU64::new(0);

/// Runs on CPU 1: the stray write.
fn write_from_the_other_cpu() {
    let target = TARGET.load(Ordering::Acquire) as *mut u64;
    // SAFETY: the test's own page-table page, linked nowhere; if the write
    // lands, the test puts the zero back.
    let landed = with_policy(FaultPolicy::Report, || unsafe {
        write_u64_if_writable(target, FORGED)
    })
    .is_ok();
    let key = crate::pkfault::last_fault()
        .and_then(|fault| fault.key)
        .map_or(0, |key| u64::from(key.index()) + 1);
    FAULT_KEY.store(if landed { 0 } else { key }, Ordering::Release);
    OUTCOME.store(if landed { 1 } else { 2 }, Ordering::Release);
}

crate::kernel_test! {
    /// CPU 0 holds a page-table write window open while CPU 1 writes the
    /// same page-table page: under `pks` CPU 1's write faults with the
    /// page-table key, under `ro` it is refused (CR0.WP is CPU 1's own),
    /// and the entry is unchanged; under `none` it lands. CPU 0's own
    /// write, inside its window, goes through.
    fn a_window_on_one_cpu_opens_nothing_on_another() -> TestResult {
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        let Some(allocator) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let page = allocator
            .alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO)
            .map_err(|e| TestFailure::new(file!(), line!(), format_args!("no page-table page: {e}")))?;
        let target = (DIRECT_MAP_BASE + page.addr()) as *mut u64;
        TARGET.store(target as u64, Ordering::Release);
        OUTCOME.store(0, Ordering::Release);
        let (own, run) = pte::with_window(|_window| {
            // SAFETY: the test's page, zero; rewriting the zero changes
            // nothing.
            let own = unsafe { write_u64_if_writable(target, 0) }.is_ok();
            (own, smp::run_on(other, write_from_the_other_cpu, 2000))
        });
        let outcome = OUTCOME.load(Ordering::Acquire);
        let key = FAULT_KEY.load(Ordering::Acquire);
        if outcome == 1 {
            // SAFETY: the write landed, so the page is writable here.
            unsafe { target.write_volatile(0) };
        }
        // SAFETY: the test's page, mapped by the direct map, readable.
        let entry = unsafe { target.read_volatile() };
        let freed = allocator.free(0, page, 0);
        crate::check_eq!(run, Ok(()));
        crate::check_eq!(freed, Ok(()));
        let mechanism = crate::arch::pks::current().map_or(Mechanism::None, |p| p.mechanism());
        match mechanism {
            Mechanism::Pks => {
                crate::check!(own, "CPU 0 could not write inside its own window");
                crate::check_eq!(outcome, 2, "CPU 1's write landed while CPU 0's window was open");
                crate::check_eq!(key, u64::from(pkeys::PAGE_TABLE_KEY.index()) + 1);
            }
            Mechanism::WriteProtect => {
                crate::check!(own, "CPU 0 could not write inside its own window");
                crate::check_eq!(outcome, 2, "CPU 1's write landed under ro");
            }
            Mechanism::None => crate::check_eq!(outcome, 1, "the write did not land without protection"),
        }
        crate::check_eq!(entry, 0);
        Ok(())
    }
}
