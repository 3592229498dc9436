//! Per-CPU protection state, write windows, and the register check.
//!
//! A write window grants one key more rights for the duration of a
//! closure ([`CpuProtection::with_window`]): there is no guard to leak
//! with `mem::forget`, and windows nest in LIFO order by construction.
//! Page-table code opens one per *operation*: however many entries it
//! writes, that costs one register write to open and one to close, and an
//! inner window that changes nothing costs none.
//!
//! **Compile-time keys and rights.** A window's key and rights are the
//! associated constants of a [`WindowKind`], an `unsafe` trait: safe code
//! cannot grant itself a key, and the kernel restricts who may name each
//! kind (the page-table kind is private to its memory module). Every value
//! written to PKRS or CR0.WP is a constant (the default, or the default
//! with the kind's key changed) or derived from the registers' own
//! contents (a nested window, read after a check; a `soft` retry's keys,
//! read at the fault's entry); the only exception is the exception exit
//! inside a window (see below). Closing the outermost window writes the
//! constant default. The depth, grants and caches in memory decide what a
//! check accepts, never what is written.
//!
//! **Check, don't adopt.** [`CpuProtection`] caches what it last wrote.
//! Window close, exception entry and exit, and [`CpuProtection::check`]
//! (which the verification walk calls) read the registers and compare:
//! PKRS must equal the cache and grant nothing beyond the default except
//! the keys a window has open, CR0.WP must
//! be set outside `ro` windows, and the CR4 bits pinned at
//! [`init`](CpuProtection::init) (PKS, SMEP, SMAP) must be set. A mismatch
//! is an attack: it goes to the [`ViolationHandler`] the kernel installed
//! (a fatal report), never into the cache.
//!
//! Exceptions: [`CpuProtection::enter_exception`] checks, then switches to
//! the default state with no window open, so a handler never runs inside
//! the interrupted code's window; [`CpuProtection::exit_exception`] checks
//! the handler closed all it opened and restores the interrupted state. An
//! exception that interrupted no window is resumed with the constant
//! default, whatever its saved frame says; one that interrupted a window is
//! resumed with the value its entry found, after checking that value grants
//! only keys windows may open. That saved value is the one PKRS value read
//! back from memory: corrupting it can at most keep window keys open until
//! the interrupted window closes (which writes the default).
//!
//! The mechanism depends on the policy:
//! - [`Mechanism::Pks`]: windows clear the key's WD bit in PKRS;
//! - [`Mechanism::WriteProtect`] (policy `ro`, no PKS): page tables are
//!   mapped read-only, and a write window clears CR0.WP on this CPU. Its
//!   weakness: while WP is clear, *every* read-only page is writable by
//!   this CPU, so a stray write inside a window is not caught;
//! - [`Mechanism::None`] (policy `none`): windows do nothing; CR0.WP and
//!   the pinned CR4 bits are still checked.

use crate::key::{Pkey, Pkrs, Rights};
use crate::keys::default_pkrs;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// How windows grant write access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// PKRS write-disable bits.
    Pks,
    /// CR0.WP, over read-only mappings.
    WriteProtect,
    /// Nothing is protected.
    None,
}

/// What a window does: give [`KEY`](Self::KEY) the rights
/// [`RIGHTS`](Self::RIGHTS). Rights looser than the key's default make a
/// write window; tighter ones a restriction (experiments and tests).
///
/// # Safety
/// Whoever can name an implementing type can open its window. Implement
/// it only on a type whose visibility limits it to the code that owns the
/// memory of `KEY`, and only with rights that code needs.
#[allow(unsafe_code)]
pub unsafe trait WindowKind {
    /// The key the window changes.
    const KEY: Pkey;
    /// Its rights while the window is open.
    const RIGHTS: Rights;
}

/// The registers windows change and the check reads. The kernel
/// implements it with RDMSR/WRMSR and CR0/CR4 accesses on the current CPU;
/// tests with a recording mock. Only [`CpuProtection`] holds one, and
/// nothing hands it out.
pub trait ProtectionRegisters {
    /// Reads IA32_PKRS (only called under [`Mechanism::Pks`]).
    fn read_pkrs(&self) -> Pkrs;
    /// Writes IA32_PKRS (only called under [`Mechanism::Pks`]).
    fn write_pkrs(&self, value: Pkrs);
    /// Reads CR0.WP.
    fn write_protect(&self) -> bool;
    /// Sets or clears CR0.WP.
    fn set_write_protect(&self, enabled: bool);
    /// Reads CR4, raw.
    fn cr4(&self) -> u64;
}

/// A protection register that does not hold what it must: an attack, or a
/// kernel bug indistinguishable from one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// PKRS differs from what the windows last wrote.
    PkrsChanged {
        /// The register.
        found: Pkrs,
        /// What the windows wrote.
        expected: Pkrs,
    },
    /// A PKRS value grants a key more than its default, and no open
    /// window grants that key.
    PkrsGrants {
        /// The value.
        found: Pkrs,
        /// The first key granted too much.
        key: Pkey,
    },
    /// CR0.WP is clear outside an `ro` write window, or set inside one.
    WriteProtect {
        /// The register bit.
        found: bool,
        /// What it must be.
        expected: bool,
    },
    /// Pinned CR4 bits (PKS, SMEP, SMAP) are clear.
    Cr4 {
        /// The register.
        found: u64,
        /// The pinned bits that are missing.
        missing: u64,
    },
    /// An exception handler returned with a window still open.
    WindowLeftOpen {
        /// Windows open.
        depth: u32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PkrsChanged { found, expected } => {
                write!(f, "PKRS holds {found}, but the open windows set {expected}")
            }
            Self::PkrsGrants { found, key } => write!(
                f,
                "PKRS {found} grants {key} more than its default, and no open window does"
            ),
            Self::WriteProtect { found, expected } => write!(
                f,
                "CR0.WP is {}, but must be {} here",
                if *found { "set" } else { "clear" },
                if *expected { "set" } else { "clear" }
            ),
            Self::Cr4 { found, missing } => {
                write!(f, "CR4 {found:#x} lacks pinned bits {missing:#x}")
            }
            Self::WindowLeftOpen { depth } => write!(
                f,
                "an exception handler returned with {depth} window(s) open"
            ),
        }
    }
}

/// What to do with a [`Violation`]: the kernel's is a fatal report.
pub type ViolationHandler = fn(&Violation) -> !;

/// One CPU's protection state. Only that CPU may use it; fields are
/// atomics so it can live in a static, not for sharing.
pub struct CpuProtection<R: ProtectionRegisters> {
    regs: R,
    mechanism: Mechanism,
    on_violation: ViolationHandler,
    /// CR4 bits that must stay set, from `init`.
    pinned_cr4: AtomicU64,
    /// What PKRS holds: the value last written.
    pkrs: AtomicU32,
    /// A value being written: between the register write and the cache
    /// update an exception finds it in the register (`NONE_PENDING` else).
    pending: AtomicU64,
    /// What CR0.WP holds.
    write_protect: AtomicBool,
    /// A CR0.WP value being written (`WP_PENDING_*`).
    wp_pending: AtomicU8,
    /// Open windows on this CPU, in the current exception level.
    depth: AtomicU32,
    /// Keys the open windows grant more than their default (bit k for
    /// key k): what the check lets PKRS open. Never used to compute a
    /// value written to PKRS.
    granted: AtomicU16,
    /// `soft` policy: the keys opened for one retried instruction (bit k
    /// for key k).
    allowed_once: AtomicU16,
    pkrs_writes: AtomicU64,
    wp_writes: AtomicU64,
    windows_opened: AtomicU64,
    checks: AtomicU64,
}

const NONE_PENDING: u64 = u64::MAX;
const WP_NONE_PENDING: u8 = 0;
const WP_PENDING_CLEAR: u8 = 1;
const WP_PENDING_SET: u8 = 2;

/// What an exception's entry found, for its exit to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the exit path must restore the interrupted state"]
pub struct SavedProtection {
    pkrs: Pkrs,
    write_protect: bool,
    depth: u32,
    granted: u16,
    pending: u64,
    wp_pending: u8,
    /// Keys the `soft` policy opens for the retried instruction.
    allow_once: u16,
    /// The exception ends a `soft` retry: the key closes again.
    ends_allow_once: bool,
}

impl SavedProtection {
    /// The PKRS value the interrupted code ran with.
    pub fn pkrs(&self) -> Pkrs {
        self.pkrs
    }

    /// Windows the interrupted code had open.
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

/// How permissive `rights` are: more is looser.
const fn permissiveness(rights: Rights) -> u8 {
    match rights {
        Rights::NoAccess => 0,
        Rights::ReadOnly => 1,
        Rights::ReadWrite => 2,
    }
}

/// True if `rights` for `key` are looser than the key's default.
fn looser_than_default(key: Pkey, rights: Rights) -> bool {
    permissiveness(rights) > permissiveness(default_pkrs().rights(key))
}

/// The first key `value` grants more than the default, other than the
/// keys in `granted` (bit k for key k: the keys open windows grant).
fn over_granted(value: Pkrs, granted: u16) -> Option<Pkey> {
    Pkey::all().find(|&key| {
        looser_than_default(key, value.rights(key)) && granted & (1 << key.index()) == 0
    })
}

impl<R: ProtectionRegisters> CpuProtection<R> {
    /// State for a CPU whose PKRS holds `pkrs` and whose CR0.WP is set;
    /// `on_violation` receives every failed check. Call
    /// [`init`](Self::init) before relying on it.
    pub const fn new(
        regs: R,
        mechanism: Mechanism,
        pkrs: Pkrs,
        on_violation: ViolationHandler,
    ) -> Self {
        Self {
            regs,
            mechanism,
            on_violation,
            pinned_cr4: AtomicU64::new(0),
            pkrs: AtomicU32::new(pkrs.bits()),
            pending: AtomicU64::new(NONE_PENDING),
            write_protect: AtomicBool::new(true),
            wp_pending: AtomicU8::new(WP_NONE_PENDING),
            depth: AtomicU32::new(0),
            granted: AtomicU16::new(0),
            allowed_once: AtomicU16::new(0),
            pkrs_writes: AtomicU64::new(0),
            wp_writes: AtomicU64::new(0),
            windows_opened: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }

    /// Puts the CPU in its default state (the key table's PKRS under PKS,
    /// CR0.WP set) and pins `pinned_cr4`: from now on every check requires
    /// those CR4 bits. Part of bringing a CPU up.
    pub fn init(&self, pinned_cr4: u64) {
        if self.mechanism == Mechanism::Pks {
            self.set_pkrs(default_pkrs());
        }
        self.set_write_protect(true);
        self.pinned_cr4.store(pinned_cr4, Ordering::Relaxed);
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The PKRS value last written (what the CPU must hold).
    pub fn pkrs(&self) -> Pkrs {
        Pkrs::from_bits(self.pkrs.load(Ordering::Relaxed))
    }

    /// The CR4 bits every check requires.
    pub fn pinned_cr4(&self) -> u64 {
        self.pinned_cr4.load(Ordering::Relaxed)
    }

    /// PKRS writes made so far.
    pub fn pkrs_writes(&self) -> u64 {
        self.pkrs_writes.load(Ordering::Relaxed)
    }

    /// CR0.WP writes made so far.
    pub fn write_protect_writes(&self) -> u64 {
        self.wp_writes.load(Ordering::Relaxed)
    }

    /// Windows opened so far (nested ones included).
    pub fn windows_opened(&self) -> u64 {
        self.windows_opened.load(Ordering::Relaxed)
    }

    /// Register checks made so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Open windows now.
    pub fn depth(&self) -> u32 {
        self.depth.load(Ordering::Relaxed)
    }

    // The register is written between two cache stores: `pending` names
    // the value first, so an exception that strikes after the register
    // write (and finds it there) accepts it; one that strikes before finds
    // the old value, which still equals the cache.
    #[inline(always)]
    fn set_pkrs(&self, value: Pkrs) {
        if self.pkrs.load(Ordering::Relaxed) != value.bits() {
            self.pending
                .store(u64::from(value.bits()), Ordering::Relaxed);
            self.regs.write_pkrs(value);
            self.pkrs_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.pkrs.store(value.bits(), Ordering::Relaxed);
        self.pending.store(NONE_PENDING, Ordering::Relaxed);
    }

    // As for PKRS: `wp_pending` names the value being written.
    #[inline(always)]
    fn set_write_protect(&self, enabled: bool) {
        if self.write_protect.load(Ordering::Relaxed) != enabled {
            self.wp_pending
                .store(WP_PENDING_CLEAR + u8::from(enabled), Ordering::Relaxed);
            self.regs.set_write_protect(enabled);
            self.wp_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.write_protect.store(enabled, Ordering::Relaxed);
        self.wp_pending.store(WP_NONE_PENDING, Ordering::Relaxed);
    }

    /// Runs `f` with `K`'s key at `K`'s rights on this CPU, then restores
    /// the rights it had. Under the CR0.WP mechanism only windows that
    /// loosen a key (write windows on a write-disabled key) change
    /// anything; under `None`, nothing does.
    #[inline(always)]
    pub fn with_window<K: WindowKind, T>(&self, f: impl FnOnce() -> T) -> T {
        let level = self.depth.load(Ordering::Relaxed);
        if level > 0 {
            // Nested: what the register holds is about to be built on.
            self.check_or_report();
        }
        let grants = looser_than_default(K::KEY, K::RIGHTS);
        // Outermost: from the constants. Nested: from the registers
        // themselves, never from memory.
        let (before, before_wp) = if level == 0 {
            (default_pkrs(), true)
        } else {
            let pkrs = match self.mechanism {
                Mechanism::Pks => self.regs.read_pkrs(),
                _ => default_pkrs(),
            };
            (pkrs, self.regs.write_protect())
        };
        let opened = before.with_rights(K::KEY, K::RIGHTS);
        // The depth and grants count the window before the register opens
        // and after it closes, so a check never sees an open register
        // without the window that opened it.
        self.depth.store(level + 1, Ordering::Relaxed);
        let granted_before = self.granted.load(Ordering::Relaxed);
        if grants {
            self.granted
                .store(granted_before | 1 << K::KEY.index(), Ordering::Relaxed);
        }
        match self.mechanism {
            Mechanism::Pks => self.set_pkrs(opened),
            Mechanism::WriteProtect if grants => self.set_write_protect(false),
            Mechanism::WriteProtect | Mechanism::None => {}
        }
        self.windows_opened.fetch_add(1, Ordering::Relaxed);

        let result = f();

        self.check_or_report();
        match self.mechanism {
            Mechanism::Pks => self.set_pkrs(before),
            Mechanism::WriteProtect => self.set_write_protect(before_wp),
            Mechanism::None => {}
        }
        self.granted.store(granted_before, Ordering::Relaxed);
        self.depth.store(level, Ordering::Relaxed);
        result
    }

    /// Checks the registers against what they must hold now: PKRS equals
    /// what the windows wrote (or a write in progress) and grants nothing
    /// beyond the default but the keys open windows (or a `soft` retry)
    /// grant; CR0.WP equals what was written (or a write in progress) and
    /// is clear only inside an `ro` write window; the pinned CR4 bits are
    /// set.
    pub fn check(&self) -> Result<(), Violation> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let cr4 = self.regs.cr4();
        let missing = self.pinned_cr4() & !cr4;
        if missing != 0 {
            return Err(Violation::Cr4 {
                found: cr4,
                missing,
            });
        }
        let wp = self.regs.write_protect();
        let written = self.write_protect.load(Ordering::Relaxed);
        let pending = self.wp_pending.load(Ordering::Relaxed);
        let in_write_window =
            self.mechanism == Mechanism::WriteProtect && self.granted.load(Ordering::Relaxed) != 0;
        let being_written = pending != WP_NONE_PENDING && wp == (pending == WP_PENDING_SET);
        if (wp != written && !being_written) || (!wp && !in_write_window) {
            return Err(Violation::WriteProtect {
                found: wp,
                expected: !wp,
            });
        }
        if self.mechanism == Mechanism::Pks {
            let found = self.regs.read_pkrs();
            let expected = self.pkrs();
            let pending = self.pending.load(Ordering::Relaxed);
            if found != expected && u64::from(found.bits()) != pending {
                return Err(Violation::PkrsChanged { found, expected });
            }
            let openable =
                self.granted.load(Ordering::Relaxed) | self.allowed_once.load(Ordering::Relaxed);
            if let Some(key) = over_granted(found, openable) {
                return Err(Violation::PkrsGrants { found, key });
            }
        }
        Ok(())
    }

    /// Checks the registers and hands a violation to the handler given at
    /// set-up (which reports it, and under the default policy stops the
    /// machine): for crossings where the registers must hold their
    /// defaults, such as entries from and returns to user mode.
    pub fn check_or_report(&self) {
        if let Err(violation) = self.check() {
            (self.on_violation)(&violation);
        }
    }

    /// Exception entry: checks the registers, records the interrupted
    /// state, and switches to the default state with no window open.
    pub fn enter_exception(&self) -> SavedProtection {
        self.check_or_report();
        let found = match self.mechanism {
            Mechanism::Pks => self.regs.read_pkrs(),
            _ => self.pkrs(),
        };
        let saved = SavedProtection {
            pkrs: found,
            write_protect: self.regs.write_protect(),
            depth: self.depth.load(Ordering::Relaxed),
            granted: self.granted.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            wp_pending: self.wp_pending.load(Ordering::Relaxed),
            allow_once: 0,
            ends_allow_once: false,
        };
        // An exception between a register write and its cache store found
        // the new value: make the cache agree, then switch the registers
        // before the bookkeeping (a nested exception in between finds a
        // register no looser than the windows it sees).
        self.pkrs.store(found.bits(), Ordering::Relaxed);
        self.write_protect
            .store(saved.write_protect, Ordering::Relaxed);
        if self.mechanism == Mechanism::Pks {
            self.set_pkrs(default_pkrs());
        }
        self.set_write_protect(true);
        self.depth.store(0, Ordering::Relaxed);
        self.granted.store(0, Ordering::Relaxed);
        saved
    }

    /// Exception exit: checks that the handler closed every window it
    /// opened and that the registers hold the default, then restores the
    /// interrupted state (see the module doc for what is restored).
    pub fn exit_exception(&self, saved: SavedProtection) {
        let depth = self.depth();
        if depth != 0 {
            (self.on_violation)(&Violation::WindowLeftOpen { depth });
        }
        self.check_or_report();
        // The bookkeeping first, then the registers (the reverse of entry).
        self.granted.store(saved.granted, Ordering::Relaxed);
        self.depth.store(saved.depth, Ordering::Relaxed);
        let once = if saved.ends_allow_once {
            self.allowed_once.store(0, Ordering::Relaxed);
            0
        } else {
            self.allowed_once
                .fetch_or(saved.allow_once, Ordering::Relaxed);
            saved.allow_once
        };
        if self.mechanism == Mechanism::Pks {
            let mut resume = if saved.depth == 0 {
                default_pkrs()
            } else {
                let openable = saved.granted | self.allowed_once.load(Ordering::Relaxed);
                if let Some(key) = over_granted(saved.pkrs, openable) {
                    (self.on_violation)(&Violation::PkrsGrants {
                        found: saved.pkrs,
                        key,
                    });
                }
                saved.pkrs
            };
            for key in keys_in(once) {
                resume = resume.with_rights(key, Rights::ReadWrite);
            }
            self.set_pkrs(resume);
        }
        // WP is clear only inside an `ro` write window.
        let write_protect = match self.mechanism {
            Mechanism::WriteProtect => saved.write_protect || saved.granted == 0,
            Mechanism::Pks | Mechanism::None => true,
        };
        self.set_write_protect(write_protect);
        // A write the exception interrupted finishes after this.
        self.pending.store(saved.pending, Ordering::Relaxed);
        self.wp_pending.store(saved.wp_pending, Ordering::Relaxed);
    }

    /// `soft` fault policy: the interrupted code resumes with `key` open
    /// for one instruction (with any key an earlier fault of the same
    /// retry opened, as the register showed at entry); the exception that
    /// follows it must call [`end_allow_once`](Self::end_allow_once).
    pub fn allow_once(&self, saved: &mut SavedProtection, key: Pkey) {
        let opened = saved.pkrs.with_rights(key, Rights::ReadWrite);
        saved.allow_once = opened_beyond(opened, saved.granted);
    }

    /// Ends [`allow_once`](Self::allow_once): the interrupted code resumes
    /// with those keys closed again. False if none was pending.
    pub fn end_allow_once(&self, saved: &mut SavedProtection) -> bool {
        if self.allowed_once.load(Ordering::Relaxed) == 0 {
            return false;
        }
        for key in keys_in(opened_beyond(saved.pkrs, saved.granted)) {
            saved.pkrs = saved.pkrs.with_rights(key, default_pkrs().rights(key));
        }
        saved.ends_allow_once = true;
        true
    }
}

/// The keys in `mask` (bit k for key k).
fn keys_in(mask: u16) -> impl Iterator<Item = Pkey> {
    Pkey::all().filter(move |k| mask & (1 << k.index()) != 0)
}

/// The keys `value` grants more than the default that `granted` does not
/// account for.
fn opened_beyond(value: Pkrs, granted: u16) -> u16 {
    Pkey::all()
        .filter(|&key| {
            looser_than_default(key, value.rights(key)) && granted & (1 << key.index()) == 0
        })
        // Each key once, so adding its bit sets it.
        .fold(0, |mask, key| mask + (1 << key.index()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PAGE_TABLE_KEY;
    use std::cell::{Cell, RefCell};
    use std::vec::Vec;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Write {
        Pkrs(u32),
        Wp(bool),
    }

    /// Registers in memory, recording every write.
    struct Mock {
        writes: RefCell<Vec<Write>>,
        pkrs: Cell<u32>,
        wp: Cell<bool>,
        cr4: Cell<u64>,
    }

    impl Default for Mock {
        fn default() -> Self {
            Self {
                writes: RefCell::default(),
                pkrs: Cell::new(DEFAULT),
                wp: Cell::new(true),
                cr4: Cell::new(PINNED),
            }
        }
    }

    thread_local! {
        /// Runs right after each register write, before the writer
        /// stores its cache: an exception striking there.
        static AFTER_WRITE: RefCell<Option<Box<dyn Fn()>>> = RefCell::new(None);
    }

    fn after_write() {
        AFTER_WRITE.with(|hook| {
            if let Some(hook) = hook.borrow().as_ref() {
                hook();
            }
        });
    }

    impl ProtectionRegisters for Mock {
        fn read_pkrs(&self) -> Pkrs {
            Pkrs::from_bits(self.pkrs.get())
        }
        fn write_pkrs(&self, value: Pkrs) {
            self.pkrs.set(value.bits());
            self.writes.borrow_mut().push(Write::Pkrs(value.bits()));
            after_write();
        }
        fn write_protect(&self) -> bool {
            self.wp.get()
        }
        fn set_write_protect(&self, enabled: bool) {
            self.wp.set(enabled);
            self.writes.borrow_mut().push(Write::Wp(enabled));
            after_write();
        }
        fn cr4(&self) -> u64 {
            self.cr4.get()
        }
    }

    const DEFAULT: u32 = default_pkrs().bits();
    /// The default with the page-table key open.
    const OPEN: u32 = DEFAULT & !0b1000;
    const PINNED: u64 = 1 << 24 | 1 << 20;

    struct PageTables;
    // SAFETY: test code, which owns its mock registers.
    #[allow(unsafe_code)]
    unsafe impl WindowKind for PageTables {
        const KEY: Pkey = PAGE_TABLE_KEY;
        const RIGHTS: Rights = Rights::ReadWrite;
    }

    /// A key nobody restricts.
    struct Key5;
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl WindowKind for Key5 {
        const KEY: Pkey = match Pkey::new(5) {
            Some(key) => key,
            None => panic!(),
        };
        const RIGHTS: Rights = Rights::ReadWrite;
    }

    struct Key15NoAccess;
    // SAFETY: a restriction.
    #[allow(unsafe_code)]
    unsafe impl WindowKind for Key15NoAccess {
        const KEY: Pkey = match Pkey::new(15) {
            Some(key) => key,
            None => panic!(),
        };
        const RIGHTS: Rights = Rights::NoAccess;
    }

    fn violation(v: &Violation) -> ! {
        panic!("violation: {v}")
    }

    fn cpu_with(mechanism: Mechanism) -> CpuProtection<Mock> {
        let cpu = CpuProtection::new(Mock::default(), mechanism, default_pkrs(), violation);
        cpu.init(PINNED);
        cpu
    }

    /// A CPU already in its default state, with nothing recorded yet.
    fn pks_cpu() -> CpuProtection<Mock> {
        let cpu = cpu_with(Mechanism::Pks);
        assert!(writes(&cpu).is_empty());
        cpu
    }

    fn writes(cpu: &CpuProtection<Mock>) -> Vec<Write> {
        cpu.regs.writes.borrow().clone()
    }

    #[test]
    fn init_writes_the_default_once_and_pins_cr4() {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::Pks, Pkrs::ALL_ACCESS, violation);
        cpu.regs.pkrs.set(0);
        cpu.init(PINNED);
        cpu.init(PINNED);
        assert_eq!(writes(&cpu), [Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.pkrs_writes(), 1);
        assert_eq!(cpu.pinned_cr4(), PINNED);
        assert_eq!(cpu.check(), Ok(()));
    }

    #[test]
    fn one_window_costs_two_writes_however_many_entries() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| {
            assert!(cpu.pkrs().allows_write(PAGE_TABLE_KEY));
            assert!(cpu.regs.read_pkrs().allows_write(PAGE_TABLE_KEY));
            // ... any number of PTE writes here ...
        });
        assert_eq!(writes(&cpu), [Write::Pkrs(OPEN), Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.pkrs_writes(), 2);
        assert_eq!(cpu.depth(), 0);
        assert_eq!(cpu.windows_opened(), 1);
        assert_eq!(cpu.checks(), 1, "the close checked the registers");
    }

    #[test]
    fn nested_windows_skip_redundant_writes_and_restore_in_order() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| {
            cpu.with_window::<PageTables, _>(|| {}); // nothing to change
            assert_eq!(cpu.pkrs_writes(), 1);
            cpu.with_window::<Key5, _>(|| {}); // key 5 is already writable
            assert_eq!(cpu.pkrs_writes(), 1);
            assert!(
                cpu.pkrs().allows_write(PAGE_TABLE_KEY),
                "the outer window is still open"
            );
            assert_eq!(cpu.depth(), 1);
        });
        assert_eq!(cpu.pkrs(), default_pkrs());
        assert_eq!(writes(&cpu), [Write::Pkrs(OPEN), Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.windows_opened(), 3);
    }

    #[test]
    fn inner_window_restores_from_the_register() {
        let cpu = pks_cpu();
        cpu.with_window::<Key15NoAccess, _>(|| {
            cpu.with_window::<PageTables, _>(|| {
                assert_eq!(cpu.regs.read_pkrs().bits(), 1 << 30 | OPEN);
            });
            assert_eq!(cpu.regs.read_pkrs().bits(), 1 << 30 | DEFAULT);
        });
        assert_eq!(cpu.regs.read_pkrs().bits(), DEFAULT);
    }

    #[test]
    #[should_panic(expected = "grants key 2 more than its default")]
    fn a_cache_and_register_opened_together_are_caught_at_close() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| {
            // Two stray writes: the cache and the register both claim
            // "all open". They agree, but key 2 has no window open.
            cpu.pkrs.store(0, Ordering::Relaxed);
            cpu.regs.pkrs.set(0);
        });
    }

    #[test]
    #[should_panic(expected = "PKRS holds 0x00000000")]
    fn a_register_opened_behind_the_windows_is_caught_at_close() {
        let cpu = pks_cpu();
        cpu.with_window::<Key15NoAccess, _>(|| cpu.regs.pkrs.set(0));
    }

    #[test]
    fn a_register_opened_behind_the_windows_is_caught_by_check() {
        let cpu = pks_cpu();
        cpu.regs.pkrs.set(0);
        assert_eq!(
            cpu.check(),
            Err(Violation::PkrsChanged {
                found: Pkrs::ALL_ACCESS,
                expected: default_pkrs()
            })
        );
        // A corrupted cache that matches the register is still caught:
        // the value grants key 1, which only a window may.
        cpu.pkrs.store(0, Ordering::Relaxed);
        assert_eq!(
            cpu.check(),
            Err(Violation::PkrsGrants {
                found: Pkrs::ALL_ACCESS,
                key: PAGE_TABLE_KEY
            })
        );
    }

    #[test]
    fn a_key_may_be_open_only_while_a_window_grants_it() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| assert_eq!(cpu.check(), Ok(())));
        let key15 = Pkey::new(15).unwrap();
        let key1_bit = 1 << PAGE_TABLE_KEY.index();
        assert_eq!(over_granted(default_pkrs(), 0), None);
        assert_eq!(over_granted(Pkrs::ALL_ACCESS, 0), Some(PAGE_TABLE_KEY));
        assert_eq!(
            over_granted(Pkrs::ALL_ACCESS, key1_bit),
            Some(crate::METADATA_KEY)
        );
        let key2_bit = 1 << crate::METADATA_KEY.index();
        assert_eq!(
            over_granted(Pkrs::ALL_ACCESS, key1_bit | key2_bit),
            Some(crate::CAPABILITY_KEY)
        );
        let keys_1_to_4 = 0b1_1110;
        assert_eq!(over_granted(Pkrs::ALL_ACCESS, keys_1_to_4), None);
        // Keys outside the table are read-write by default, and
        // restrictions are always fine.
        let restricted = default_pkrs().with_rights(key15, Rights::NoAccess);
        assert_eq!(over_granted(restricted, 0), None);
        // A restriction window grants nothing: key 1 stays closed there.
        cpu.with_window::<Key15NoAccess, _>(|| {
            assert_eq!(cpu.granted.load(Ordering::Relaxed), 0);
            cpu.with_window::<PageTables, _>(|| {
                assert_eq!(cpu.granted.load(Ordering::Relaxed), key1_bit);
            });
            assert_eq!(cpu.granted.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn write_protect_and_cr4_are_checked() {
        let cpu = pks_cpu();
        cpu.regs.wp.set(false);
        assert_eq!(
            cpu.check(),
            Err(Violation::WriteProtect {
                found: false,
                expected: true
            })
        );
        cpu.regs.wp.set(true);
        cpu.regs.cr4.set(PINNED & !(1 << 24));
        assert_eq!(
            cpu.check(),
            Err(Violation::Cr4 {
                found: 1 << 20,
                missing: 1 << 24
            })
        );
        cpu.regs.cr4.set(PINNED | 1 << 7);
        assert_eq!(cpu.check(), Ok(()), "extra bits are fine");
    }

    #[test]
    fn exceptions_run_with_the_default_and_leave_the_window_intact() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| {
            let saved = cpu.enter_exception();
            assert_eq!(saved.depth(), 1);
            assert_eq!(
                cpu.pkrs(),
                default_pkrs(),
                "the handler runs with the default"
            );
            assert_eq!(cpu.depth(), 0);
            // The handler's own window opens and closes inside it.
            cpu.with_window::<PageTables, _>(|| {});
            assert_eq!(cpu.pkrs(), default_pkrs());
            cpu.exit_exception(saved);
            assert!(
                cpu.regs.read_pkrs().allows_write(PAGE_TABLE_KEY),
                "the interrupted window is back"
            );
            assert_eq!(cpu.depth(), 1);
        });
        assert_eq!(
            writes(&cpu),
            [
                Write::Pkrs(OPEN),    // window opens
                Write::Pkrs(DEFAULT), // exception entry
                Write::Pkrs(OPEN),    // handler window
                Write::Pkrs(DEFAULT), // handler window closes
                Write::Pkrs(OPEN),    // exception exit
                Write::Pkrs(DEFAULT), // window closes
            ]
        );
    }

    #[test]
    fn exception_outside_a_window_writes_nothing() {
        let cpu = pks_cpu();
        let saved = cpu.enter_exception();
        cpu.exit_exception(saved);
        assert_eq!(cpu.pkrs_writes(), 0);
    }

    #[test]
    fn exit_outside_a_window_resumes_with_the_default_not_the_frame() {
        let cpu = pks_cpu();
        let mut saved = cpu.enter_exception();
        saved.pkrs = Pkrs::ALL_ACCESS; // a stray write to the saved frame
        cpu.exit_exception(saved);
        assert_eq!(cpu.regs.read_pkrs(), default_pkrs());
    }

    #[test]
    #[should_panic(expected = "grants key 1 more")]
    fn an_exception_frame_cannot_smuggle_an_open_key_out_of_a_handler() {
        let cpu = pks_cpu();
        // Interrupted inside a restriction window (no write window): the
        // saved frame may not come back with key 1 open.
        cpu.with_window::<Key15NoAccess, _>(|| {
            let mut saved = cpu.enter_exception();
            saved.pkrs = Pkrs::ALL_ACCESS;
            cpu.exit_exception(saved);
        });
    }

    /// Replays an exception striking after `set_pkrs` wrote the register
    /// and before it stored the cache: the check accepts the pending value,
    /// and the handler returns to it.
    #[test]
    fn exception_between_register_write_and_cache_update_is_consistent() {
        let cpu = pks_cpu();
        let open = default_pkrs().with_rights(PAGE_TABLE_KEY, Rights::ReadWrite);
        // `with_window` counted the window, then named and wrote the value.
        cpu.depth.store(1, Ordering::Relaxed);
        cpu.granted
            .store(1 << PAGE_TABLE_KEY.index(), Ordering::Relaxed);
        cpu.pending.store(u64::from(open.bits()), Ordering::Relaxed);
        cpu.regs.write_pkrs(open);
        let saved = cpu.enter_exception();
        assert_eq!(saved.pkrs(), open);
        cpu.exit_exception(saved);
        assert_eq!(cpu.regs.read_pkrs(), open);
        // The writer resumes and stores its cache: consistent.
        cpu.pkrs.store(open.bits(), Ordering::Relaxed);
        cpu.pending.store(NONE_PENDING, Ordering::Relaxed);
        assert_eq!(cpu.check(), Ok(()));
    }

    #[test]
    #[should_panic(expected = "returned with 1 window(s) open")]
    fn handler_leaving_a_window_open_is_caught() {
        let cpu = pks_cpu();
        let saved = cpu.enter_exception();
        cpu.depth.store(1, Ordering::Relaxed);
        cpu.exit_exception(saved);
    }

    #[test]
    fn allow_once_opens_the_key_for_one_step_then_closes_it() {
        let cpu = pks_cpu();
        // The fault.
        let mut saved = cpu.enter_exception();
        cpu.allow_once(&mut saved, PAGE_TABLE_KEY);
        cpu.exit_exception(saved);
        assert!(cpu.regs.read_pkrs().allows_write(PAGE_TABLE_KEY));
        assert_eq!(cpu.check(), Ok(()), "the one-shot grant is expected");
        // The single-step trap after the retried instruction.
        let mut saved = cpu.enter_exception();
        assert!(cpu.end_allow_once(&mut saved));
        cpu.exit_exception(saved);
        assert_eq!(cpu.regs.read_pkrs(), default_pkrs());
        let mut saved = cpu.enter_exception();
        assert!(!cpu.end_allow_once(&mut saved), "nothing pending");
        cpu.exit_exception(saved);
    }

    #[test]
    fn access_disable_restriction_nests_like_a_window() {
        let cpu = pks_cpu();
        let key = Pkey::new(15).unwrap();
        cpu.with_window::<Key15NoAccess, _>(|| {
            assert_eq!(cpu.pkrs().rights(key), Rights::NoAccess);
        });
        assert_eq!(cpu.pkrs(), default_pkrs());
        assert_eq!(cpu.pkrs_writes(), 2);
    }

    #[test]
    fn write_protect_mechanism_toggles_cr0_wp_for_write_windows_only() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        cpu.with_window::<PageTables, _>(|| {
            cpu.with_window::<PageTables, _>(|| {});
            assert!(!cpu.regs.write_protect());
            assert_eq!(cpu.check(), Ok(()), "WP may be clear in a window");
        });
        assert_eq!(writes(&cpu), [Write::Wp(false), Write::Wp(true)]);
        cpu.with_window::<Key15NoAccess, _>(|| {
            assert!(cpu.regs.write_protect(), "a restriction clears no WP");
        });
        assert_eq!(cpu.pkrs_writes(), 0);
        cpu.regs.wp.set(false);
        assert!(cpu.check().is_err(), "WP clear outside a window");
    }

    #[test]
    fn exception_inside_a_write_protect_window_runs_with_wp_set() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        cpu.with_window::<PageTables, _>(|| {
            let saved = cpu.enter_exception();
            assert!(cpu.regs.write_protect());
            cpu.exit_exception(saved);
            assert!(!cpu.regs.write_protect());
        });
        assert!(cpu.regs.write_protect());
    }

    #[test]
    fn a_forged_one_shot_grant_opens_nothing() {
        let cpu = pks_cpu();
        // A stray write claims every key is open for a `soft` retry.
        cpu.allowed_once.store(u16::MAX, Ordering::Relaxed);
        let saved = cpu.enter_exception();
        cpu.exit_exception(saved);
        assert_eq!(
            cpu.regs.read_pkrs(),
            default_pkrs(),
            "the exit opened a key"
        );
        cpu.with_window::<Key5, _>(|| {});
        assert_eq!(cpu.regs.read_pkrs(), default_pkrs());
    }

    #[test]
    fn a_forged_depth_cannot_keep_write_protect_clear() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        // A stray write makes the CPU look inside a window already.
        cpu.depth.store(5, Ordering::Relaxed);
        cpu.with_window::<PageTables, _>(|| assert!(!cpu.regs.write_protect()));
        assert!(cpu.regs.write_protect(), "WP stayed clear after the window");
    }

    #[test]
    fn only_windows_that_loosen_a_key_clear_write_protect() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        cpu.with_window::<Key5, _>(|| assert!(cpu.regs.write_protect()));
        assert_eq!(cpu.write_protect_writes(), 0);
    }

    #[test]
    fn exception_between_write_protect_write_and_cache_update_is_consistent() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        cpu.with_window::<PageTables, _>(|| {
            // Closing: WP is set again, its cache not yet.
            cpu.wp_pending.store(WP_PENDING_SET, Ordering::Relaxed);
            cpu.regs.set_write_protect(true);
            let saved = cpu.enter_exception();
            cpu.exit_exception(saved);
            assert_eq!(cpu.wp_pending.load(Ordering::Relaxed), WP_PENDING_SET);
            assert_eq!(cpu.check(), Ok(()));
            // The writer resumes.
            cpu.write_protect.store(true, Ordering::Relaxed);
            cpu.wp_pending.store(WP_NONE_PENDING, Ordering::Relaxed);
            cpu.regs.set_write_protect(false); // put the window back
            cpu.write_protect.store(false, Ordering::Relaxed);
        });
        assert!(cpu.regs.write_protect());
    }

    #[test]
    #[should_panic(expected = "PKRS holds")]
    fn a_nested_window_checks_the_register_it_builds_on() {
        let cpu = pks_cpu();
        cpu.with_window::<PageTables, _>(|| {
            cpu.regs.pkrs.set(0); // opened behind the windows' back
            cpu.with_window::<Key5, _>(|| {});
        });
    }

    #[test]
    fn a_soft_retry_keeps_every_key_its_faults_opened() {
        let cpu = pks_cpu();
        let key2 = crate::METADATA_KEY;
        let mut saved = cpu.enter_exception();
        cpu.allow_once(&mut saved, PAGE_TABLE_KEY);
        cpu.exit_exception(saved);
        assert!(
            !cpu.regs.read_pkrs().allows_write(key2),
            "opened more than the key"
        );
        // The retried instruction faults again, on key 2.
        let mut saved = cpu.enter_exception();
        cpu.allow_once(&mut saved, key2);
        cpu.exit_exception(saved);
        assert_eq!(cpu.check(), Ok(()), "both keys are the retry's");
        let open = cpu.regs.read_pkrs();
        assert!(
            open.allows_write(PAGE_TABLE_KEY) && open.allows_write(key2),
            "{open}"
        );
        let mut saved = cpu.enter_exception();
        assert!(cpu.end_allow_once(&mut saved));
        cpu.exit_exception(saved);
        assert_eq!(cpu.regs.read_pkrs(), default_pkrs());
        assert_eq!(cpu.check(), Ok(()));
    }

    #[test]
    fn a_check_right_after_any_register_write_passes() {
        for mechanism in [Mechanism::Pks, Mechanism::WriteProtect] {
            let cpu: &'static CpuProtection<Mock> = Box::leak(Box::new(cpu_with(mechanism)));
            let failures: &'static RefCell<Vec<Violation>> = Box::leak(Box::default());
            AFTER_WRITE.with(|hook| {
                *hook.borrow_mut() = Some(Box::new(move || {
                    if let Err(violation) = cpu.check() {
                        failures.borrow_mut().push(violation);
                    }
                }));
            });
            cpu.with_window::<PageTables, _>(|| {
                cpu.with_window::<Key15NoAccess, _>(|| {});
            });
            AFTER_WRITE.with(|hook| *hook.borrow_mut() = None);
            assert!(
                !writes(cpu).is_empty(),
                "{mechanism:?}: nothing was written"
            );
            assert_eq!(*failures.borrow(), [], "{mechanism:?}");
            assert_eq!(
                cpu.write_protect_writes() > 0,
                mechanism == Mechanism::WriteProtect
            );
        }
    }

    #[test]
    fn checks_are_counted_and_saved_depth_is_the_interrupted_one() {
        let cpu = pks_cpu();
        let saved = cpu.enter_exception();
        assert_eq!(saved.depth(), 0);
        cpu.exit_exception(saved);
        let before = cpu.checks();
        cpu.with_window::<PageTables, _>(|| {
            cpu.with_window::<Key5, _>(|| {
                let saved = cpu.enter_exception();
                assert_eq!(saved.depth(), 2);
                cpu.exit_exception(saved);
            });
        });
        // Nested open, inner close, entry, exit, outer close.
        assert_eq!(cpu.checks() - before, 5);
    }

    #[test]
    fn write_protect_cleared_with_its_cache_is_still_caught() {
        // Under PKS, WP is never clear; under `ro` only in a write window.
        for mechanism in [Mechanism::Pks, Mechanism::WriteProtect] {
            let cpu = cpu_with(mechanism);
            cpu.regs.wp.set(false);
            cpu.write_protect.store(false, Ordering::Relaxed);
            assert!(cpu.check().is_err(), "{mechanism:?}");
        }
        // Inside an `ro` window, a cache forged back to "set" while the
        // register is clear is a mismatch.
        let cpu = cpu_with(Mechanism::WriteProtect);
        cpu.with_window::<PageTables, _>(|| {
            cpu.write_protect.store(true, Ordering::Relaxed);
            assert!(cpu.check().is_err());
            cpu.write_protect.store(false, Ordering::Relaxed);
        });
    }

    #[test]
    fn an_exception_in_the_gap_of_a_window_opening_keeps_write_protect_set() {
        let cpu = cpu_with(Mechanism::WriteProtect);
        // `with_window` counted the window and its grant; WP not yet clear.
        cpu.depth.store(1, Ordering::Relaxed);
        cpu.granted
            .store(1 << PAGE_TABLE_KEY.index(), Ordering::Relaxed);
        let saved = cpu.enter_exception();
        cpu.exit_exception(saved);
        assert!(
            cpu.regs.write_protect(),
            "the exit cleared WP for the window"
        );
    }

    #[test]
    fn a_stale_one_shot_grant_of_a_window_key_is_no_attack() {
        let cpu = pks_cpu();
        cpu.allowed_once
            .store(1 << PAGE_TABLE_KEY.index(), Ordering::Relaxed);
        cpu.with_window::<PageTables, _>(|| {
            assert_eq!(cpu.check(), Ok(()));
            // An exception inside the window resumes it as it was.
            let saved = cpu.enter_exception();
            cpu.exit_exception(saved);
            assert!(cpu.regs.read_pkrs().allows_write(PAGE_TABLE_KEY));
        });
    }

    #[test]
    fn a_soft_retry_inside_a_window_leaves_the_window_open() {
        let cpu = pks_cpu();
        let key2 = crate::METADATA_KEY;
        cpu.with_window::<PageTables, _>(|| {
            let mut saved = cpu.enter_exception();
            cpu.allow_once(&mut saved, key2);
            cpu.exit_exception(saved);
            assert!(cpu.regs.read_pkrs().allows_write(key2));
            let mut saved = cpu.enter_exception();
            assert!(cpu.end_allow_once(&mut saved));
            cpu.exit_exception(saved);
            let pkrs = cpu.regs.read_pkrs();
            assert!(
                pkrs.allows_write(PAGE_TABLE_KEY),
                "the window was closed: {pkrs}"
            );
            assert!(
                !pkrs.allows_write(key2),
                "the retry's key stayed open: {pkrs}"
            );
        });
    }

    #[test]
    fn none_mechanism_writes_nothing_but_still_checks() {
        let cpu = cpu_with(Mechanism::None);
        cpu.with_window::<PageTables, _>(|| {});
        assert!(writes(&cpu).is_empty());
        cpu.regs.cr4.set(0);
        assert!(matches!(cpu.check(), Err(Violation::Cr4 { .. })));
    }
}
