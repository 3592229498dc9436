//! What the kernel does when a protection key denies one of its accesses,
//! as `pkfault=` chose (see `pkeys::fault` for the decisions):
//! - `panic`: the fault report names the key, then the machine stops;
//! - `report`: the fault is logged and the faulting operation stopped: the
//!   kernel resumes at its recovery point (`arch::recovery`), or stops the
//!   machine if the operation has none;
//! - `soft`: the fault is logged once per site, the key is opened in the
//!   interrupted context's PKRS for one instruction (single-stepped with
//!   RFLAGS.TF), and the #DB that follows closes it again.
//!
//! Faults the kernel survives are logged through defmt (COM2), not on the
//! console: they can strike in the middle of a test's protocol line.

use crate::arch::idt::TrapFrame;
use crate::arch::{cpu, pks, recovery};
use crate::memory::walk;
use core::sync::atomic::{AtomicU64, Ordering};
use pkeys::{
    FaultAction, FaultHandler, FaultPolicy, PageFaultError, PkFault, Pkrs, Rights, SavedProtection,
};
use spin::Mutex;

static HANDLER: Mutex<FaultHandler> = Mutex::new(FaultHandler::new(FaultPolicy::Panic));

/// The policy the command line chose, and whether tests may run under
/// another (only with `test=`). Read-only once boot is done, like the IDT:
/// outside test boots, the handler's policy is forced back to it, so one
/// stray write to the handler cannot turn `panic` into `soft`.
#[unsafe(link_section = ".ro_after_init")]
static BOOT_POLICY: spin::Once<(FaultPolicy, bool)> = spin::Once::new();
static LAST_FAULT: Mutex<Option<PkFault>> = Mutex::new(None);

/// `soft`: a retry is pending (PENDING), and whether the interrupted code
/// had TF set itself (TF_WAS_SET), which the #DB after the retried
/// instruction must keep. The keys to close again are the protection
/// state's (`CpuProtection::allow_once`). One slot: the boot CPU is the
/// only CPU; SMP makes it per CPU.
static SOFT_RETRY: AtomicU64 = AtomicU64::new(0);
const PENDING: u64 = 1 << 32;
const TF_WAS_SET: u64 = 1 << 33;

const RFLAGS_TF: u64 = 1 << 8;
/// DR6.BS: the #DB came from single-stepping.
const DR6_SINGLE_STEP: u64 = 1 << 14;

/// Applies the command line's fault policy; `tests_may_override` (a
/// `test=` boot) lets [`with_policy`] change it for a test. Call once, at
/// boot, before the image becomes read-only.
pub fn init(policy: FaultPolicy, tests_may_override: bool) {
    BOOT_POLICY.call_once(|| (policy, tests_may_override));
    *HANDLER.lock() = FaultHandler::new(policy);
}

/// The policy in force; `None` if the handler is busy (a fault struck
/// while it decided), which only the fatal report can see.
pub fn policy() -> Option<FaultPolicy> {
    HANDLER.try_lock().map(|handler| handler.policy())
}

/// Runs `f` under another fault policy (tests exercise `report` and `soft`
/// whatever the command line chose), then restores the previous one. Only
/// in a `test=` boot; elsewhere `f` runs under the boot policy.
pub fn with_policy<R>(policy: FaultPolicy, f: impl FnOnce() -> R) -> R {
    if !BOOT_POLICY
        .get()
        .is_some_and(|&(_, may_override)| may_override)
    {
        return f();
    }
    let previous = core::mem::replace(&mut *HANDLER.lock(), FaultHandler::new(policy));
    let result = f();
    // The temporary handler's counts go with it.
    *HANDLER.lock() = previous;
    result
}

/// The last protection-key fault seen, for tests and reports.
pub fn last_fault() -> Option<PkFault> {
    *LAST_FAULT.lock()
}

/// Faults counted for `key` under the current handler.
pub fn faults(key: pkeys::Pkey) -> u64 {
    HANDLER.lock().faults(key)
}

/// Decodes a #PF as a protection-key fault, finding the page's key.
pub fn decode(frame: &TrapFrame) -> Option<PkFault> {
    let error = PageFaultError::from_bits_retain(frame.error_code);
    let address = cpu::read_cr2();
    let leaf = walk::leaf(cpu::read_cr3(), address).map(|leaf| leaf.entry);
    PkFault::decode(error, address, frame.rip, leaf)
}

/// Handles a #PF if it is a protection-key fault the policy lets the
/// kernel survive; false sends it to the fatal report.
pub fn page_fault(frame: &mut TrapFrame, saved: Option<&mut SavedProtection>) -> bool {
    let Some(fault) = decode(frame) else {
        return false;
    };
    // A fault while either lock is held (the handler itself faulted) goes
    // to the fatal report rather than spinning forever.
    let Some(mut last) = LAST_FAULT.try_lock() else {
        return false;
    };
    *last = Some(fault);
    drop(last);
    let Some(action) = HANDLER.try_lock().map(|mut handler| {
        if let Some(&(policy, false)) = BOOT_POLICY.get()
            && handler.policy() != policy
        {
            // Not a test boot: the policy can only have changed by a
            // write behind the kernel's back. Back to the boot policy.
            *handler = FaultHandler::new(policy);
        }
        handler.handle(&fault)
    }) else {
        return false;
    };
    let key = fault.key.map_or(u8::MAX, |k| k.index());
    match action {
        FaultAction::Panic => false,
        FaultAction::StopContext => match recovery::recovery_point(frame.rip) {
            Some(resume) => {
                defmt::warn!(
                    "pk fault (pkfault=report): {=str} of {=u64:#x} denied by key {=u8} at RIP {=u64:#x}; operation stopped",
                    fault.access.name(),
                    fault.address,
                    key,
                    fault.rip
                );
                frame.rip = resume;
                true
            }
            // Nothing smaller than the machine can be stopped; the fatal
            // report says so.
            None => false,
        },
        FaultAction::AllowOnce { log } => {
            let (Some(saved), Some(key), Some(protection)) = (saved, fault.key, pks::current())
            else {
                return false;
            };
            if log {
                defmt::warn!(
                    "pk fault (pkfault=soft): {=str} of {=u64:#x} denied by key {=u8} at RIP {=u64:#x}; allowed (logged once per site)",
                    fault.access.name(),
                    fault.address,
                    key.index(),
                    fault.rip
                );
            }
            // Remember TF only for the first fault of a retry: if the
            // retried instruction faults again on another key, that key is
            // opened too, and the #DB closes both.
            let tf_was_set = if frame.rflags & RFLAGS_TF != 0 {
                TF_WAS_SET
            } else {
                0
            };
            let retry = PENDING | tf_was_set;
            let _ = SOFT_RETRY.compare_exchange(0, retry, Ordering::Relaxed, Ordering::Relaxed);
            protection.allow_once(saved, key);
            frame.rflags |= RFLAGS_TF;
            true
        }
    }
}

/// Handles the #DB that ends a `soft` retry: closes the keys the fault
/// opened again, and restores the interrupted code's TF. False (a fatal #DB)
/// if no retry was pending or the #DB is not a single step.
pub fn single_step(frame: &mut TrapFrame, saved: Option<&mut SavedProtection>) -> bool {
    let (Some(saved), Some(protection)) = (saved, pks::current()) else {
        return false;
    };
    // SAFETY: reading DR6 has no side effects.
    let dr6 = unsafe { x86::debugregs::dr6() }.bits() as u64;
    if dr6 & DR6_SINGLE_STEP == 0 {
        return false;
    }
    let retry = SOFT_RETRY.swap(0, Ordering::Relaxed);
    if retry & PENDING == 0 || !protection.end_allow_once(saved) {
        return false;
    }
    if retry & TF_WAS_SET == 0 {
        frame.rflags &= !RFLAGS_TF;
    }
    // SAFETY: clearing DR6's status bits only acknowledges this #DB.
    unsafe { x86::debugregs::dr6_write(x86::debugregs::Dr6::empty()) };
    true
}

/// QEMU tests of the mechanism on real (emulated) hardware. They need PKS
/// and skip themselves without it.
mod tests {
    use super::*;
    use crate::arch::recovery::{Faulted, read_u64, write_u64};
    use crate::memory::boot_tables::{KeyedTestPage, TestPage};
    use crate::testing::TestFailure;
    use pkeys::{Mechanism, PAGE_TABLE_KEY, Pkey, WindowKind, default_pkrs};

    /// The tests' own window on their page-table-key test pages.
    struct TestPageWrite;

    // SAFETY: private to these tests, which write only their own test
    // pages inside it.
    unsafe impl WindowKind for TestPageWrite {
        const KEY: Pkey = PAGE_TABLE_KEY;
        const RIGHTS: Rights = Rights::ReadWrite;
    }

    /// Access-disable on the spare key: a restriction, which grants nothing.
    struct SpareNoAccess;

    // SAFETY: it only takes rights away.
    unsafe impl WindowKind for SpareNoAccess {
        const KEY: Pkey = SPARE_KEY;
        const RIGHTS: Rights = Rights::NoAccess;
    }

    /// Zeroes a test page's first `words` words inside the tests' window.
    fn clean(page: *mut u64, words: usize) {
        if let Some(protection) = pks::current() {
            protection.with_window::<TestPageWrite, _>(|| {
                for i in 0..words {
                    // SAFETY: a test page, writable inside the window.
                    unsafe { page.wrapping_add(i).write_volatile(0) };
                }
            });
        }
    }

    /// Stands in for a page-table frame: given the page-table key.
    static PT_KEY_PAGE: TestPage = TestPage::new();
    /// Given an otherwise unused key, for access-disable.
    static SPARE_KEY_PAGE: TestPage = TestPage::new();
    const SPARE_KEY: Pkey = match Pkey::new(15) {
        Some(key) => key,
        None => panic!("key 15 exists"),
    };

    /// The CPU's protection state if PKS is what protects page tables.
    fn pks_or_skip() -> Result<&'static pks::Protection, TestFailure> {
        match pks::current() {
            Some(protection) if protection.mechanism() == Mechanism::Pks => Ok(protection),
            _ => Err(TestFailure::skipped("needs PKS (ptprot=pks)")),
        }
    }

    /// `page` with `key` until the guard is dropped (at the end of the
    /// test, passed or failed), which gives it back the default key.
    fn keyed(page: &'static TestPage, key: Pkey) -> Result<KeyedTestPage, TestFailure> {
        page.keyed(key).map_err(|e| {
            TestFailure::new(
                file!(),
                line!(),
                format_args!("cannot key the test page: {e:?}"),
            )
        })
    }

    crate::kernel_test! {
        /// A stray write to a page-table-key page outside a window faults
        /// with the PK bit, is reported with its key, and is stopped.
        fn stray_write_to_page_table_key_faults() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            crate::check_eq!(protection.pkrs(), default_pkrs());
            let (result, counted) = with_policy(FaultPolicy::Report, || {
                // SAFETY: the page is ours; the write either faults
                // (expected) and is stopped, or lands in our own page.
                let result = unsafe { write_u64(page, 0xbad) };
                (result, faults(PAGE_TABLE_KEY))
            });
            crate::check_eq!(result, Err(Faulted));
            crate::check_eq!(counted, 1);
            let fault = last_fault().map(|f| (f.key, f.address, f.access));
            crate::check_eq!(fault, Some((Some(PAGE_TABLE_KEY), page as u64, pkeys::Access::Write)));
            // SAFETY: reading our own page.
            crate::check_eq!(unsafe { page.read_volatile() }, 0, "the stray write did not land");
            Ok(())
        }
    }

    crate::kernel_test! {
        /// The same write inside a write window succeeds; reads need none.
        fn write_inside_a_window_succeeds_and_reads_are_allowed() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            let written = protection.with_window::<TestPageWrite, _>(|| {
                // SAFETY: our page, writable inside the window.
                with_policy(FaultPolicy::Report, || unsafe { write_u64(page, 0x600d) })
            });
            crate::check_eq!(written, Ok(()));
            // SAFETY: our page; WD does not stop reads.
            let read = with_policy(FaultPolicy::Report, || unsafe { read_u64(page) });
            crate::check_eq!(read, Ok(0x600d));
            clean(page, 1);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// Access-disable stops reads too.
        fn access_disable_blocks_reads() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&SPARE_KEY_PAGE, SPARE_KEY)?;
            let page = test_page.word(0);
            let read = protection.with_window::<SpareNoAccess, _>(|| {
                // SAFETY: our page; the read faults and is stopped.
                with_policy(FaultPolicy::Report, || unsafe { read_u64(page) })
            });
            crate::check_eq!(read, Err(Faulted));
            crate::check_eq!(last_fault().map(|f| (f.key, f.access)), Some((Some(SPARE_KEY), pkeys::Access::Read)));
            // SAFETY: as above; readable again.
            crate::check_eq!(with_policy(FaultPolicy::Report, || unsafe { read_u64(page) }), Ok(0));
            Ok(())
        }
    }

    crate::kernel_test! {
        /// Nested windows: the inner one costs no PKRS write, the outer
        /// one stays open after the inner closes.
        fn nested_windows_keep_the_outer_open() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            let before = protection.pkrs_writes();
            let written = protection.with_window::<TestPageWrite, _>(|| {
                protection.with_window::<TestPageWrite, _>(|| {});
                // SAFETY: our page, inside the outer window.
                with_policy(FaultPolicy::Report, || unsafe { write_u64(page, 1) })
            });
            crate::check_eq!(written, Ok(()));
            crate::check_eq!(protection.pkrs_writes() - before, 2);
            clean(page, 1);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// An exception taken inside a window runs with the default PKRS,
        /// and the window is intact when it returns.
        fn exception_inside_a_window_runs_with_the_default() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            let (in_handler, written, register) = protection.with_window::<TestPageWrite, _>(|| {
                // SAFETY: int3 traps to the #BP handler, which records PKRS and returns.
                unsafe { core::arch::asm!("int3") };
                let in_handler = crate::arch::idt::pkrs_at_last_breakpoint();
                // SAFETY: our page, inside the window.
                let written = with_policy(FaultPolicy::Report, || unsafe { write_u64(page, 2) });
                (in_handler, written, cpu::read_pkrs_if_enabled())
            });
            crate::check_eq!(in_handler, Some(default_pkrs()));
            crate::check_eq!(written, Ok(()));
            crate::check_eq!(register.map(|r| Pkrs::from_bits(r as u32).allows_write(PAGE_TABLE_KEY)), Some(true));
            clean(page, 1);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// One window around many page-table-key writes costs two PKRS
        /// writes, not two per write.
        fn batch_of_writes_costs_two_pkrs_writes() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            const ENTRIES: usize = 512;
            let before = protection.pkrs_writes();
            protection.with_window::<TestPageWrite, _>(|| {
                for i in 0..ENTRIES {
                    // SAFETY: our page, inside the window.
                    unsafe { page.wrapping_add(i).write_volatile(i as u64) };
                }
            });
            let cost = protection.pkrs_writes() - before;
            defmt::info!("pkrs writes for a batch of {=usize} page-table-key writes: {=u64}", ENTRIES, cost);
            crate::check_eq!(cost, 2);
            clean(page, ENTRIES);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// `pkfault=soft` lets the write happen, logs the site once, and
        /// closes the key again after the one instruction.
        fn soft_policy_allows_once_and_recloses() -> TestResult {
            let protection = pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            let written = with_policy(FaultPolicy::Soft, || {
                // SAFETY: our page; the soft policy lets the write through.
                let first = unsafe { write_u64(page, 7) };
                // SAFETY: as above.
                let second = unsafe { write_u64(page, 8) };
                (first, second)
            });
            crate::check_eq!(written, (Ok(()), Ok(())));
            crate::check_eq!(last_fault().map(|f| f.key), Some(Some(PAGE_TABLE_KEY)));
            // SAFETY: reading our page.
            crate::check_eq!(unsafe { page.read_volatile() }, 8);
            crate::check_eq!(protection.pkrs(), default_pkrs());
            crate::check_eq!(cpu::read_pkrs_if_enabled(), Some(u64::from(default_pkrs().bits())));
            // SAFETY: as above.
            let again = with_policy(FaultPolicy::Report, || unsafe { write_u64(page, 9) });
            crate::check_eq!(again, Err(Faulted), "the key was left open");
            clean(page, 1);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// A stray write to a page-table-key page with no recovery point,
        /// under the command line's `pkfault=`: `panic` and `report` end
        /// the machine (the report names the key); `soft` lets it through.
        by_name fn deliberate_pk_fault() -> TestResult {
            pks_or_skip()?;
            let test_page = keyed(&PT_KEY_PAGE, PAGE_TABLE_KEY)?;
            let page = test_page.word(0);
            // SAFETY: not safe, on purpose: the write faults and the
            // command line's policy decides what happens.
            unsafe { page.write_volatile(0xbad) };
            crate::check_eq!(policy(), Some(FaultPolicy::Soft), "the write went through");
            crate::check_eq!(cpu::read_pkrs_if_enabled(), Some(u64::from(default_pkrs().bits())));
            Ok(())
        }
    }

    /// A page made read-only, for the `ro` policy's window.
    static READ_ONLY_PAGE: TestPage = TestPage::new();

    crate::kernel_test! {
        /// Under `ptprot=ro`, a window clears CR0.WP on this CPU so a
        /// read-only page can be written, and an exception inside the
        /// window runs with WP set again.
        fn read_only_window_toggles_write_protect() -> TestResult {
            let protection = match pks::current() {
                Some(p) if p.mechanism() == Mechanism::WriteProtect => p,
                _ => return Err(TestFailure::skipped("needs the CR0.WP mechanism (ptprot=ro)")),
            };
            let test_page = READ_ONLY_PAGE
                .read_only()
                .map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
            let page = test_page.word(0);
            let entry = walk::leaf(cpu::read_cr3(), page as u64).map(|leaf| leaf.entry);
            crate::check_eq!(entry.map(|e| e & 0b10), Some(0), "the test page is not read-only");
            const WP: u64 = 1 << 16;
            crate::check!(cpu::read_cr0() & WP != 0, "WP is clear outside windows");
            let (cleared, kept) = protection.with_window::<TestPageWrite, _>(|| {
                let cleared = cpu::read_cr0() & WP == 0;
                // SAFETY: our page; WP is clear inside the window.
                unsafe { page.write_volatile(3) };
                // SAFETY: int3 returns; the handler records CR0.
                unsafe { core::arch::asm!("int3") };
                (cleared, cpu::read_cr0() & WP == 0)
            });
            crate::check!(cleared, "the window did not clear WP");
            crate::check!(kept, "the exception closed the window");
            crate::check!(crate::arch::idt::cr0_at_last_breakpoint() & WP != 0, "the handler ran with WP clear");
            crate::check!(cpu::read_cr0() & WP != 0, "the window left WP clear");
            // SAFETY: reading our page.
            crate::check_eq!(unsafe { page.read_volatile() }, 3);
            crate::check_eq!(protection.write_protect_writes() >= 2, true);
            Ok(())
        }
    }
}
