//! Per-CPU protection state and write windows.
//!
//! A [`WriteWindow`] grants write access to one key for its lifetime and
//! restores the previous state when dropped. Windows nest (per CPU, in
//! LIFO order), so page-table code opens one per *operation*: however many
//! entries it writes, that costs one register write to open and one to
//! close, and an inner window that changes nothing costs none.
//!
//! [`CpuProtection`] caches what it last wrote, so a write that would
//! change nothing is skipped, and counts the writes it makes.
//!
//! Exceptions: the entry path calls [`CpuProtection::enter_exception`]
//! with the register value it found, which switches to the default state
//! and returns what to restore; the exit path hands that back to
//! [`CpuProtection::exit_exception`]. A handler so never runs inside the
//! interrupted code's window, and since windows are LIFO, it can neither
//! close a window it did not open nor leave one open behind it.
//!
//! The mechanism depends on the policy:
//! - [`Mechanism::Pks`]: windows clear the key's WD bit in PKRS;
//! - [`Mechanism::WriteProtect`] (policy `ro`, no PKS): page tables are
//!   mapped read-only, and a window clears CR0.WP on this CPU. Its
//!   weakness: while WP is clear, *every* read-only page is writable by
//!   this CPU, so a stray write inside a window is not caught;
//! - [`Mechanism::None`] (policy `none`): windows do nothing.

use crate::key::{Pkey, Pkrs, Rights};
use crate::keys::default_pkrs;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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

/// The registers windows change. The kernel implements it with WRMSR and
/// CR0 writes on the current CPU; tests with a recording mock.
pub trait ProtectionRegisters {
    /// Writes IA32_PKRS.
    fn write_pkrs(&self, value: Pkrs);
    /// Sets or clears CR0.WP.
    fn set_write_protect(&self, enabled: bool);
}

/// One CPU's protection state. Only that CPU may use it; fields are
/// atomics so it can live in a static, not for sharing.
pub struct CpuProtection<R: ProtectionRegisters> {
    regs: R,
    mechanism: Mechanism,
    /// What PKRS holds (the cache that lets redundant writes be skipped).
    pkrs: AtomicU32,
    /// Whether CR0.WP is set.
    write_protect: AtomicBool,
    /// Open windows on this CPU.
    depth: AtomicU32,
    pkrs_writes: AtomicU64,
    wp_writes: AtomicU64,
    windows_opened: AtomicU64,
}

/// What an exception's entry found, for its exit to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the exit path must restore the interrupted state"]
pub struct SavedProtection {
    pkrs: Pkrs,
    write_protect: bool,
    depth: u32,
}

impl SavedProtection {
    /// The PKRS value the interrupted code ran with.
    pub fn pkrs(&self) -> Pkrs {
        self.pkrs
    }
}

impl<R: ProtectionRegisters> CpuProtection<R> {
    /// State for a CPU whose PKRS holds `pkrs` and whose CR0.WP is set.
    /// Call [`init`](Self::init) before relying on it.
    pub const fn new(regs: R, mechanism: Mechanism, pkrs: Pkrs) -> Self {
        Self {
            regs,
            mechanism,
            pkrs: AtomicU32::new(pkrs.bits()),
            write_protect: AtomicBool::new(true),
            depth: AtomicU32::new(0),
            pkrs_writes: AtomicU64::new(0),
            wp_writes: AtomicU64::new(0),
            windows_opened: AtomicU64::new(0),
        }
    }

    /// Puts the CPU in its default state: the key table's PKRS (under PKS)
    /// and CR0.WP set. Part of bringing a CPU up.
    pub fn init(&self) {
        if self.mechanism == Mechanism::Pks {
            self.set_pkrs(default_pkrs());
        }
        self.set_write_protect(true);
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The registers.
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// The PKRS value last written (what the CPU holds).
    pub fn pkrs(&self) -> Pkrs {
        Pkrs::from_bits(self.pkrs.load(Ordering::Relaxed))
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

    /// Open windows now.
    pub fn depth(&self) -> u32 {
        self.depth.load(Ordering::Relaxed)
    }

    // The register is written before the cache. An exception arriving in
    // between reads the register (see `enter_exception`), so it saves and
    // restores the new value; one arriving before the write saves the old
    // value, which the writer then overwrites. Either way register and
    // cache agree once the writer has stored the cache.
    fn set_pkrs(&self, value: Pkrs) {
        if self.pkrs.load(Ordering::Relaxed) != value.bits() {
            self.regs.write_pkrs(value);
            self.pkrs_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.pkrs.store(value.bits(), Ordering::Relaxed);
    }

    fn set_write_protect(&self, enabled: bool) {
        if self.write_protect.load(Ordering::Relaxed) != enabled {
            self.regs.set_write_protect(enabled);
            self.wp_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.write_protect.store(enabled, Ordering::Relaxed);
    }

    /// Opens a write window for `key` on this CPU.
    pub fn open_write(&self, key: Pkey) -> WriteWindow<'_, R> {
        self.open(key, Rights::ReadWrite)
    }

    /// Gives `key` other `rights` until the returned guard drops: a write
    /// window, or (for experiments and tests) a tighter restriction such as
    /// access-disable. Under the CR0.WP mechanism only write windows mean
    /// anything; under `None`, nothing does.
    pub fn open(&self, key: Pkey, rights: Rights) -> WriteWindow<'_, R> {
        let previous = self.pkrs();
        let previous_wp = self.write_protect.load(Ordering::Relaxed);
        match self.mechanism {
            Mechanism::Pks => self.set_pkrs(previous.with_rights(key, rights)),
            Mechanism::WriteProtect if rights == Rights::ReadWrite => self.set_write_protect(false),
            Mechanism::WriteProtect | Mechanism::None => {}
        }
        let level = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.windows_opened.fetch_add(1, Ordering::Relaxed);
        WriteWindow {
            cpu: self,
            previous,
            previous_wp,
            level,
            _not_send: PhantomData,
        }
    }

    /// Exception entry: records the interrupted state and switches to the
    /// default state for the handler. `found_pkrs` and `found_wp` are what
    /// the entry path read from PKRS and CR0.WP: the registers, not the
    /// cache, because the exception may have struck between a register
    /// write and its cache update.
    pub fn enter_exception(&self, found_pkrs: Pkrs, found_wp: bool) -> SavedProtection {
        let saved = SavedProtection {
            pkrs: found_pkrs,
            write_protect: found_wp,
            depth: self.depth.load(Ordering::Relaxed),
        };
        self.pkrs.store(found_pkrs.bits(), Ordering::Relaxed);
        self.write_protect.store(found_wp, Ordering::Relaxed);
        if self.mechanism == Mechanism::Pks {
            self.set_pkrs(default_pkrs());
        }
        self.set_write_protect(true);
        saved
    }

    /// Exception exit: restores what [`enter_exception`](Self::enter_exception)
    /// found. Panics if the handler left a window open (a kernel bug).
    pub fn exit_exception(&self, saved: SavedProtection) {
        let depth = self.depth.load(Ordering::Relaxed);
        assert_eq!(
            depth, saved.depth,
            "an exception handler left a write window open"
        );
        if self.mechanism == Mechanism::Pks {
            self.set_pkrs(saved.pkrs);
        }
        self.set_write_protect(saved.write_protect);
    }

    /// Changes the PKRS value the interrupted code will resume with: the
    /// `soft` fault policy uses it to open a key for one retried
    /// instruction.
    pub fn resume_with(&self, saved: &mut SavedProtection, pkrs: Pkrs) {
        saved.pkrs = pkrs;
    }
}

/// Write access to one key until dropped. Not `Send`: it must close on
/// the CPU that opened it.
#[must_use = "a write window closes as soon as it is dropped"]
pub struct WriteWindow<'a, R: ProtectionRegisters> {
    cpu: &'a CpuProtection<R>,
    previous: Pkrs,
    previous_wp: bool,
    level: u32,
    _not_send: PhantomData<*const ()>,
}

impl<R: ProtectionRegisters> Drop for WriteWindow<'_, R> {
    fn drop(&mut self) {
        let depth = self.cpu.depth.load(Ordering::Relaxed);
        assert_eq!(
            depth, self.level,
            "write windows must close in the reverse order of opening"
        );
        self.cpu.depth.store(depth - 1, Ordering::Relaxed);
        match self.cpu.mechanism {
            Mechanism::Pks => self.cpu.set_pkrs(self.previous),
            Mechanism::WriteProtect => self.cpu.set_write_protect(self.previous_wp),
            Mechanism::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PAGE_TABLE_KEY;
    use std::cell::RefCell;
    use std::vec::Vec;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Write {
        Pkrs(u32),
        Wp(bool),
    }

    #[derive(Default)]
    struct Mock(RefCell<Vec<Write>>);

    impl ProtectionRegisters for Mock {
        fn write_pkrs(&self, value: Pkrs) {
            self.0.borrow_mut().push(Write::Pkrs(value.bits()));
        }
        fn set_write_protect(&self, enabled: bool) {
            self.0.borrow_mut().push(Write::Wp(enabled));
        }
    }

    /// A CPU already in its default state, with nothing recorded yet.
    fn pks_cpu() -> CpuProtection<Mock> {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::Pks, default_pkrs());
        cpu.init();
        assert!(writes(&cpu).is_empty());
        cpu
    }

    fn writes(cpu: &CpuProtection<Mock>) -> Vec<Write> {
        cpu.regs.0.borrow().clone()
    }

    const DEFAULT: u32 = 0b1000;

    #[test]
    fn init_writes_the_default_once() {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::Pks, Pkrs::ALL_ACCESS);
        cpu.init();
        cpu.init();
        assert_eq!(writes(&cpu), [Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.pkrs_writes(), 1);
    }

    #[test]
    fn one_window_costs_two_writes_however_many_entries() {
        let cpu = pks_cpu();
        {
            let _window = cpu.open_write(PAGE_TABLE_KEY);
            assert!(cpu.pkrs().allows_write(PAGE_TABLE_KEY));
            // ... any number of PTE writes here ...
        }
        assert_eq!(writes(&cpu), [Write::Pkrs(0), Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.pkrs_writes(), 2);
        assert_eq!(cpu.depth(), 0);
    }

    #[test]
    fn nested_windows_skip_redundant_writes_and_restore_in_order() {
        let cpu = pks_cpu();
        let key2 = Pkey::new(2).unwrap();
        let outer = cpu.open_write(PAGE_TABLE_KEY);
        let inner = cpu.open_write(PAGE_TABLE_KEY); // nothing to change
        assert_eq!(cpu.pkrs_writes(), 1);
        let other = cpu.open_write(key2); // key 2 is already writable
        assert_eq!(cpu.pkrs_writes(), 1);
        drop(other);
        drop(inner);
        assert!(
            cpu.pkrs().allows_write(PAGE_TABLE_KEY),
            "the outer window is still open"
        );
        drop(outer);
        assert_eq!(cpu.pkrs(), default_pkrs());
        assert_eq!(writes(&cpu), [Write::Pkrs(0), Write::Pkrs(DEFAULT)]);
        assert_eq!(cpu.windows_opened(), 3);
    }

    #[test]
    #[should_panic(expected = "reverse order")]
    fn out_of_order_close_is_a_bug() {
        let cpu = pks_cpu();
        let outer = cpu.open_write(PAGE_TABLE_KEY);
        let _inner = cpu.open_write(PAGE_TABLE_KEY);
        drop(outer);
    }

    #[test]
    fn exceptions_run_with_the_default_and_leave_the_window_intact() {
        let cpu = pks_cpu();
        let window = cpu.open_write(PAGE_TABLE_KEY);
        // Entry finds the window's value in the register.
        let saved = cpu.enter_exception(cpu.pkrs(), true);
        assert_eq!(
            cpu.pkrs(),
            default_pkrs(),
            "the handler runs with the default"
        );
        {
            // The handler's own window opens and closes inside it.
            let _handler_window = cpu.open_write(PAGE_TABLE_KEY);
        }
        assert_eq!(cpu.pkrs(), default_pkrs());
        cpu.exit_exception(saved);
        assert!(
            cpu.pkrs().allows_write(PAGE_TABLE_KEY),
            "the interrupted window is back"
        );
        drop(window);
        assert_eq!(
            writes(&cpu),
            [
                Write::Pkrs(0),       // window opens
                Write::Pkrs(DEFAULT), // exception entry
                Write::Pkrs(0),       // handler window
                Write::Pkrs(DEFAULT), // handler window closes
                Write::Pkrs(0),       // exception exit
                Write::Pkrs(DEFAULT), // window closes
            ]
        );
    }

    #[test]
    fn exception_outside_a_window_writes_nothing() {
        let cpu = pks_cpu();
        let saved = cpu.enter_exception(cpu.pkrs(), true);
        cpu.exit_exception(saved);
        assert_eq!(cpu.pkrs_writes(), 0);
    }

    /// Replays an exception striking after `set_pkrs` wrote the register
    /// and before it stored the cache, then lets the writer finish: register
    /// and cache must agree, and the window must close for real.
    #[test]
    fn exception_between_register_write_and_cache_update_is_consistent() {
        let cpu = pks_cpu();
        let open = default_pkrs().with_rights(PAGE_TABLE_KEY, Rights::ReadWrite);
        // Opening: the register holds `open`, the cache still the default.
        cpu.regs.write_pkrs(open);
        let saved = cpu.enter_exception(open, true);
        cpu.exit_exception(saved);
        cpu.pkrs.store(open.bits(), Ordering::Relaxed); // the writer resumes
        cpu.depth.store(1, Ordering::Relaxed);
        let window = WriteWindow {
            cpu: &cpu,
            previous: default_pkrs(),
            previous_wp: true,
            level: 1,
            _not_send: PhantomData,
        };
        assert_eq!(last_pkrs(&cpu), open.bits());
        drop(window);
        assert_eq!(
            last_pkrs(&cpu),
            DEFAULT,
            "the window closed in the register"
        );
        assert_eq!(cpu.pkrs(), default_pkrs());

        // Closing: the register holds the default, the cache still `open`.
        let window = cpu.open_write(PAGE_TABLE_KEY);
        core::mem::forget(window);
        cpu.regs.write_pkrs(default_pkrs());
        let saved = cpu.enter_exception(default_pkrs(), true);
        cpu.exit_exception(saved);
        cpu.pkrs.store(DEFAULT, Ordering::Relaxed); // the writer resumes
        cpu.depth.store(0, Ordering::Relaxed);
        drop(cpu.open_write(PAGE_TABLE_KEY));
        assert_eq!(last_pkrs(&cpu), DEFAULT);
        assert!(
            writes(&cpu).contains(&Write::Pkrs(0)),
            "the next window really opened"
        );
    }

    /// The last PKRS value the mock register received.
    fn last_pkrs(cpu: &CpuProtection<Mock>) -> u32 {
        writes(cpu)
            .iter()
            .rev()
            .find_map(|w| match w {
                Write::Pkrs(v) => Some(*v),
                Write::Wp(_) => None,
            })
            .unwrap_or(DEFAULT)
    }

    #[test]
    fn exception_reads_write_protect_from_the_register() {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::WriteProtect, Pkrs::ALL_ACCESS);
        let window = cpu.open_write(PAGE_TABLE_KEY);
        // The window is closing: CR0.WP is set again, the cache not yet.
        cpu.regs.set_write_protect(true);
        let saved = cpu.enter_exception(Pkrs::ALL_ACCESS, true);
        cpu.exit_exception(saved);
        core::mem::forget(window);
        cpu.depth.store(0, Ordering::Relaxed);
        // The handler ran with WP set (nothing to write), and the exit left
        // WP set, as the register had it.
        assert_eq!(writes(&cpu), [Write::Wp(false), Write::Wp(true)]);
        assert!(cpu.write_protect.load(Ordering::Relaxed));
    }

    #[test]
    #[should_panic(expected = "left a write window open")]
    fn handler_leaving_a_window_open_is_a_bug() {
        let cpu = pks_cpu();
        let saved = cpu.enter_exception(cpu.pkrs(), true);
        let window = cpu.open_write(PAGE_TABLE_KEY);
        core::mem::forget(window);
        cpu.exit_exception(saved);
    }

    #[test]
    fn access_disable_restriction_nests_like_a_window() {
        let cpu = pks_cpu();
        let key = Pkey::new(15).unwrap();
        {
            let _no_access = cpu.open(key, Rights::NoAccess);
            assert_eq!(cpu.pkrs().rights(key), Rights::NoAccess);
        }
        assert_eq!(cpu.pkrs(), default_pkrs());
        assert_eq!(cpu.pkrs_writes(), 2);
    }

    #[test]
    fn write_protect_mechanism_toggles_cr0_wp() {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::WriteProtect, Pkrs::ALL_ACCESS);
        cpu.init();
        {
            let _outer = cpu.open_write(PAGE_TABLE_KEY);
            let _inner = cpu.open_write(PAGE_TABLE_KEY);
        }
        assert_eq!(writes(&cpu), [Write::Wp(false), Write::Wp(true)]);
        assert_eq!(cpu.pkrs_writes(), 0);
    }

    #[test]
    fn none_mechanism_writes_nothing() {
        let cpu = CpuProtection::new(Mock::default(), Mechanism::None, Pkrs::ALL_ACCESS);
        cpu.init();
        drop(cpu.open_write(PAGE_TABLE_KEY));
        assert!(writes(&cpu).is_empty());
    }
}
