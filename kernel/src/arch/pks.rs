//! The one door to the protection registers: CR0, CR4, EFER.NXE and
//! IA32_PKRS are written here and nowhere else in the kernel.
//!
//! - [`enable_protections`] turns on SMEP, SMAP, UMIP, NX and CR0.WP at
//!   boot; [`init`] turns on CR4.PKS (under `ptprot=pks`), loads the
//!   default PKRS and pins the CR4 bits that must stay set. Each AP runs
//!   the same two steps through [`init_ap`], with the boot CPU's policy
//!   and violation handler, and must end with the boot CPU's protections:
//!   every CPU has its own `CpuProtection` (PKRS is per CPU, so are its
//!   window depth and caches), which [`current`] finds through GS.
//! - After that, only this CPU's `pkeys::CpuProtection` writes PKRS and
//!   CR0.WP, through [`Registers`], whose methods are inline and which
//!   nothing hands out: no safe function anywhere takes a register value
//!   and writes it. Windows name their key and rights at compile time
//!   (`pkeys::WindowKind`), and the page-table kind is private to
//!   `memory::pte`.
//! - Every check (window close, exception entry and exit, the
//!   verification walk) reads the registers back here. A failed check
//!   goes to the violation handler given to [`init`]: the kernel's is a
//!   fatal report naming the register.
//!
//! Hand-written because `x86` lacks the PKRS MSR and CR4.PKS, and its
//! `controlregs::cr4()` drops bit 24 (PLATFORM.md).

use super::cpu::{self, CpuFeatures};
use core::arch::asm;
use pkeys::{CpuProtection, Mechanism, Pkrs, ProtectionPolicy, ProtectionRegisters};
use x86::msr;

/// CR4.PAE (the AP trampoline sets it, with LA57 where the boot CPU has it).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.UMIP: user-mode instruction prevention (SGDT, SIDT, ... fault in ring 3).
const CR4_UMIP: u64 = 1 << 11;
/// CR4.SMEP: the kernel cannot execute user pages.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: the kernel cannot touch user pages unless RFLAGS.AC is set.
pub const CR4_SMAP: u64 = 1 << 21;
/// CR0.WP: write protection applies to the kernel (PKS write-disable needs it).
pub const CR0_WP: u64 = 1 << 16;
/// EFER.NXE: the no-execute bit in page-table entries is honoured.
pub const EFER_NXE: u64 = 1 << 11;

/// Protections this CPU now has turned on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enabled {
    /// CR4.SMEP set.
    pub smep: bool,
    /// CR4.SMAP set.
    pub smap: bool,
    /// CR4.UMIP set.
    pub umip: bool,
    /// EFER.NXE set.
    pub nx: bool,
    /// CR0.WP set (always: every x86-64 CPU has it).
    pub wp: bool,
}

/// Writes CR0.
///
/// # Safety
/// The value must keep the kernel running: paging, protected mode and the
/// caching bits as the kernel set them up.
#[inline(always)]
unsafe fn write_cr0(value: u64) {
    // SAFETY: the caller keeps paging and protection consistent.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR4 raw.
///
/// # Safety
/// Every bit set must be supported by the CPU (else #GP), and the change
/// must not break the kernel's own execution (PAE must stay on).
unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller sets only supported, consistent bits.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Turns on SMEP, SMAP, UMIP and NX where CPUID reports them, and CR0.WP,
/// on this CPU. It only ever sets bits the CPU has.
pub fn enable_protections() -> Enabled {
    let features = CpuFeatures::detect();
    let mut cr4 = cpu::read_cr4();
    for (present, bit) in [
        (features.smep, CR4_SMEP),
        (features.smap, CR4_SMAP),
        (features.umip, CR4_UMIP),
    ] {
        if present {
            cr4 |= bit;
        }
    }
    // SAFETY: only bits the CPU reports are set; SMEP/SMAP/UMIP restrict user
    // pages and ring-3 instructions, and no user mappings exist yet.
    unsafe { write_cr4(cr4) };

    if features.nx {
        // SAFETY: IA32_EFER exists on every x86-64 CPU; NXE is supported.
        unsafe { msr::wrmsr(msr::IA32_EFER, msr::rdmsr(msr::IA32_EFER) | EFER_NXE) };
    }
    // SAFETY: the kernel never relies on writing read-only pages.
    unsafe { write_cr0(cpu::read_cr0() | CR0_WP) };

    let cr4 = cpu::read_cr4();
    Enabled {
        smep: cr4 & CR4_SMEP != 0,
        smap: cr4 & CR4_SMAP != 0,
        umip: cr4 & CR4_UMIP != 0,
        nx: cpu::nx_enabled(),
        wp: cpu::read_cr0() & CR0_WP != 0,
    }
}

/// The real registers of the CPU it runs on. Only [`init`] makes one (its
/// field is private) and gives it to the CPU's `CpuProtection`, which
/// keeps it private: no code can reach these methods but the windows and
/// checks of `pkeys`.
pub struct Registers {
    _private: (),
}

impl ProtectionRegisters for Registers {
    #[inline(always)]
    fn read_pkrs(&self) -> Pkrs {
        // SAFETY: called only under the Pks mechanism, which `init` sets
        // up only after checking CPUID and turning CR4.PKS on, so the MSR
        // exists; reading it has no side effects.
        Pkrs::from_bits(unsafe { msr::rdmsr(pkeys::cpu::IA32_PKRS) } as u32)
    }

    #[inline(always)]
    fn write_pkrs(&self, value: Pkrs) {
        // SAFETY: as in `read_pkrs`, the MSR exists; the upper 32 bits are
        // zero by construction. Callers are the windows and exception
        // paths of `pkeys::CpuProtection`, which write only the values
        // their module doc lists.
        unsafe { msr::wrmsr(pkeys::cpu::IA32_PKRS, value.msr_value()) };
    }

    #[inline(always)]
    fn write_protect(&self) -> bool {
        cpu::read_cr0() & CR0_WP != 0
    }

    #[inline(always)]
    fn set_write_protect(&self, enabled: bool) {
        let cr0 = cpu::read_cr0();
        let cr0 = if enabled { cr0 | CR0_WP } else { cr0 & !CR0_WP };
        // SAFETY: only WP changes. Clearing it lets this CPU write
        // read-only pages: the `ro` policy's write windows, which set it
        // again when they close.
        unsafe { write_cr0(cr0) };
    }

    #[inline(always)]
    fn cr4(&self) -> u64 {
        cpu::read_cr4()
    }
}

/// One CPU's protection state, as the rest of the kernel may use it:
/// windows of a kind it can name, the check, the counters, and the `soft`
/// retry hooks (which need the `SavedProtection` only exception entry
/// makes). Entering and leaving exceptions and bring-up are `arch`'s
/// alone: reached from ordinary code, they would open keys with no window.
pub struct Protection(CpuProtection<Registers>);

impl Protection {
    /// Runs `f` inside a window of kind `K` (see `pkeys::WindowKind`).
    #[inline(always)]
    pub fn with_window<K: pkeys::WindowKind, T>(&self, f: impl FnOnce() -> T) -> T {
        self.0.with_window::<K, T>(f)
    }

    /// Checks the registers now (see `pkeys::CpuProtection::check`).
    pub fn check(&self) -> Result<(), pkeys::Violation> {
        self.0.check()
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.0.mechanism()
    }

    /// The PKRS value last written.
    pub fn pkrs(&self) -> Pkrs {
        self.0.pkrs()
    }

    /// The CR4 bits every check requires.
    pub fn pinned_cr4(&self) -> u64 {
        self.0.pinned_cr4()
    }

    /// PKRS writes so far.
    pub fn pkrs_writes(&self) -> u64 {
        self.0.pkrs_writes()
    }

    /// CR0.WP writes so far.
    pub fn write_protect_writes(&self) -> u64 {
        self.0.write_protect_writes()
    }

    /// `soft` policy: opens `key` for the interrupted instruction.
    pub fn allow_once(&self, saved: &mut pkeys::SavedProtection, key: pkeys::Pkey) {
        self.0.allow_once(saved, key);
    }

    /// `soft` policy: closes what [`allow_once`](Self::allow_once) opened.
    pub fn end_allow_once(&self, saved: &mut pkeys::SavedProtection) -> bool {
        self.0.end_allow_once(saved)
    }

    /// Checks the registers at a crossing between user mode and the
    /// kernel, reporting a violation to the handler (`arch::usermode`).
    pub(super) fn check_or_report(&self) {
        self.0.check_or_report();
    }

    /// Exception entry (the IDT's dispatch only).
    pub(super) fn enter_exception(&self) -> pkeys::SavedProtection {
        self.0.enter_exception()
    }

    /// Exception exit (the IDT's dispatch only).
    pub(super) fn exit_exception(&self, saved: pkeys::SavedProtection) {
        self.0.exit_exception(saved);
    }
}

static BOOT_CPU: spin::Once<Protection> = spin::Once::new();

/// The APs' protection states, by CPU number (slot 0 unused: the boot
/// CPU's is [`BOOT_CPU`]).
static AP_CPUS: [spin::Once<Protection>; super::percpu::MAX_CPUS] =
    [const { spin::Once::new() }; super::percpu::MAX_CPUS];

/// What the boot CPU set up, for the APs to repeat.
struct Setup {
    mechanism: Mechanism,
    enabled: Enabled,
    on_violation: pkeys::ViolationHandler,
}

static SETUP: spin::Once<Setup> = spin::Once::new();

/// The window mechanism a resolved policy uses.
pub fn mechanism_for(policy: ProtectionPolicy) -> Mechanism {
    match policy {
        ProtectionPolicy::Pks => Mechanism::Pks,
        ProtectionPolicy::ReadOnlyAlias => Mechanism::WriteProtect,
        ProtectionPolicy::None | ProtectionPolicy::Auto => Mechanism::None,
    }
}

/// This CPU's protection state for `mechanism`: CR4.PKS on and the PKRS
/// found read under `pks`, CR4.PKS and the SMEP and SMAP bits `enabled`
/// reports pinned, and the default PKRS loaded by `init`.
fn set_up_this_cpu(
    mechanism: Mechanism,
    enabled: &Enabled,
    on_violation: pkeys::ViolationHandler,
) -> Protection {
    let mut found = Pkrs::ALL_ACCESS;
    let mut pinned = 0;
    if mechanism == Mechanism::Pks {
        let has_pks = pkeys::cpu::has_pks(raw_cpuid::cpuid!(7, 0).ecx);
        assert!(has_pks, "ptprot=pks resolved on a CPU without PKS");
        // SAFETY: CPUID reports PKS (checked above), so the bit is
        // supported; nothing else in CR4 changes.
        unsafe { write_cr4(cpu::read_cr4() | pkeys::cpu::CR4_PKS) };
        // SAFETY: PKS is present and on, so IA32_PKRS exists.
        found = Pkrs::from_bits(unsafe { msr::rdmsr(pkeys::cpu::IA32_PKRS) } as u32);
        pinned |= pkeys::cpu::CR4_PKS;
    }
    for (on, bit) in [(enabled.smep, CR4_SMEP), (enabled.smap, CR4_SMAP)] {
        if on {
            pinned |= bit;
        }
    }
    let protection = CpuProtection::new(Registers { _private: () }, mechanism, found, on_violation);
    protection.init(pinned);
    Protection(protection)
}

/// Sets up protection keys on the boot CPU for a resolved policy: under
/// `pks`, turns CR4.PKS on and loads the key table's default PKRS. Pins
/// CR4.PKS and the SMEP and SMAP bits `enabled` reports, and sends every
/// failed register check to `on_violation`.
pub fn init(
    policy: ProtectionPolicy,
    enabled: &Enabled,
    on_violation: pkeys::ViolationHandler,
) -> &'static Protection {
    let mechanism = mechanism_for(policy);
    SETUP.call_once(|| Setup {
        mechanism,
        enabled: *enabled,
        on_violation,
    });
    BOOT_CPU.call_once(|| set_up_this_cpu(mechanism, enabled, on_violation))
}

/// Why an AP's protections are not the boot CPU's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApProtectionError {
    /// The boot CPU has not run [`init`].
    NoBootSetup,
    /// CPU number 0 (the boot CPU's) or past the per-CPU slots.
    BadCpu,
    /// The AP ended with other protections on (SMEP, SMAP, UMIP, NX, WP).
    Differs {
        /// The boot CPU's.
        boot: Enabled,
        /// This AP's.
        this: Enabled,
    },
    /// The register check failed right after set-up.
    Check(pkeys::Violation),
}

/// On an AP (CPU number `index`, GS already pointing at its slot): turns
/// on the protections the boot CPU has ([`enable_protections`]), then sets
/// up its own protection state with the boot CPU's mechanism and
/// violation handler, and checks the registers. An AP whose protections
/// differ from the boot CPU's gets no protection state.
pub fn init_ap(index: usize) -> Result<&'static Protection, ApProtectionError> {
    let setup = SETUP.get().ok_or(ApProtectionError::NoBootSetup)?;
    let slot = AP_CPUS
        .get(index)
        .filter(|_| index != 0)
        .ok_or(ApProtectionError::BadCpu)?;
    let this = enable_protections();
    if this != setup.enabled {
        return Err(ApProtectionError::Differs {
            boot: setup.enabled,
            this,
        });
    }
    let protection = slot.call_once(|| set_up_this_cpu(setup.mechanism, &this, setup.on_violation));
    protection.check().map_err(ApProtectionError::Check)?;
    Ok(protection)
}

/// This CPU's protection state, once [`init`] (the boot CPU) or
/// [`init_ap`] ran on it.
pub fn current() -> Option<&'static Protection> {
    match super::percpu::index() {
        0 => BOOT_CPU.get(),
        index => AP_CPUS.get(index)?.get(),
    }
}

crate::kernel_test! {
    /// Every protection the CPU offers is on, CR4 round-trips raw, and
    /// the register check passes at rest.
    fn protections_match_features() -> TestResult {
        let boot = crate::boot_state();
        let cr4 = cpu::read_cr4();
        crate::check_eq!(cr4 & CR4_SMEP != 0, boot.features.smep);
        crate::check_eq!(cr4 & CR4_SMAP != 0, boot.features.smap);
        crate::check_eq!(cr4 & CR4_UMIP != 0, boot.features.umip);
        crate::check!(cpu::read_cr0() & CR0_WP != 0, "CR0.WP is off");
        crate::check_eq!(cpu::nx_enabled(), boot.features.nx);
        if let Some(protection) = current() {
            crate::check_eq!(protection.check(), Ok(()));
            let pks_pinned = protection.pinned_cr4() & pkeys::cpu::CR4_PKS != 0;
            crate::check_eq!(pks_pinned, protection.mechanism() == Mechanism::Pks);
            crate::check_eq!(protection.pinned_cr4() & CR4_SMEP != 0, boot.features.smep);
        }
        Ok(())
    }
}

/// Attacks on the registers. Each simulates a stray register write (the
/// one thing ordinary code can no longer do: no safe path writes these
/// registers) with the raw writers above, then lets the kernel run on.
mod attacks {
    use super::*;
    use crate::arch::recovery::write_u64;
    use crate::pkfault::with_policy;
    use pkeys::FaultPolicy;

    /// Writes PKRS raw, behind the windows' back; `None` without PKS.
    fn tamper_pkrs(value: u32) -> Option<u32> {
        if !pkeys::cpu::has_pks(raw_cpuid::cpuid!(7, 0).ecx) {
            return None;
        }
        // SAFETY: the CPU has PKS, so IA32_PKRS exists (whether CR4.PKS is
        // on or not); a 32-bit value keeps the upper half zero.
        unsafe {
            let old = msr::rdmsr(pkeys::cpu::IA32_PKRS) as u32;
            msr::wrmsr(pkeys::cpu::IA32_PKRS, u64::from(value));
            Some(old)
        }
    }

    /// Writes the live ephemeral-slot entry (a page table with the
    /// page-table protection) outside any window, stopping the write if it
    /// faults; puts the entry back if it landed. True if it landed.
    fn stray_page_table_write() -> bool {
        let entry = crate::memory::ephemeral::slot_entry();
        // SAFETY: the slot's entry is a live PTE; the value is the one it
        // holds outside `with_frame` (0), so even a landed write changes
        // nothing. A protected write faults and is stopped.
        with_policy(FaultPolicy::Report, || unsafe { write_u64(entry, 0) }).is_ok()
    }

    crate::kernel_test! {
        /// The walk checks the registers: with PKRS opened behind the
        /// windows' back it fails under `pks`, where before it said PASS.
        /// Under other policies PKRS is not checked; under `none` a stray
        /// write to a page table lands.
        fn walk_checks_the_registers() -> TestResult {
            let Some(protection) = current() else { return Ok(()) };
            if protection.mechanism() == Mechanism::WriteProtect {
                return Err(crate::testing::TestFailure::skipped("PKRS plays no part under ptprot=ro"));
            }
            let Some(old) = tamper_pkrs(0) else {
                return Err(crate::testing::TestFailure::skipped("needs a CPU with PKS"));
            };
            let report = crate::memory::verify::verify();
            let landed = (protection.mechanism() == Mechanism::None).then(stray_page_table_write);
            tamper_pkrs(old);
            let result = report.registers.map(|check| check.result);
            if protection.mechanism() == Mechanism::Pks {
                crate::check!(!report.passed(), "the walk passed with PKRS open");
                crate::check_eq!(
                    result,
                    Some(Err(pkeys::Violation::PkrsChanged {
                        found: Pkrs::ALL_ACCESS,
                        expected: pkeys::default_pkrs()
                    }))
                );
            } else {
                crate::check_eq!(result, Some(Ok(())));
            }
            if protection.mechanism() == Mechanism::None {
                crate::check_eq!(landed, Some(true), "the unprotected write did not land");
            }
            crate::check!(crate::memory::verify::verify().passed() || protection.mechanism() == Mechanism::None);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// PKRS opened behind the windows' back, then an exception: the
        /// entry check reports it as an attack and stops the machine
        /// (before, the entry adopted the value for good). Where PKRS is
        /// not checked (`ro`, `none`), the test goes on and a stray write
        /// to a page table lands.
        by_name fn attack_pkrs_opened_then_exception() -> TestResult {
            let Some(old) = tamper_pkrs(0) else {
                return Err(crate::testing::TestFailure::skipped("needs a CPU with PKS"));
            };
            // SAFETY: int3 traps to the #BP handler, which returns.
            unsafe { core::arch::asm!("int3") };
            let landed = stray_page_table_write();
            tamper_pkrs(old);
            defmt::warn!("attack: the stray page-table write {=str}", if landed { "landed" } else { "faulted" });
            Ok(())
        }
    }

    crate::kernel_test! {
        /// CR0.WP cleared behind the windows' back (which would let every
        /// read-only page be written, and disarm PKS write-disable), then
        /// an exception: reported as an attack under every policy, since
        /// WP is pinned in all of them.
        by_name fn attack_write_protect_cleared() -> TestResult {
            // SAFETY: not safe, on purpose: only WP changes.
            unsafe { write_cr0(cpu::read_cr0() & !CR0_WP) };
            // SAFETY: int3 traps to the #BP handler, which returns.
            unsafe { core::arch::asm!("int3") };
            // SAFETY: restores WP.
            unsafe { write_cr0(cpu::read_cr0() | CR0_WP) };
            defmt::warn!("attack: CR0.WP was cleared and nothing noticed");
            Ok(())
        }
    }

    crate::kernel_test! {
        /// CR4.PKS cleared (which turns every key off), then an exception:
        /// reported under `pks`, where the bit is pinned. Without it (other
        /// policies) nothing pins it, and a stray page-table write lands.
        by_name fn attack_cr4_pks_cleared() -> TestResult {
            let cr4 = cpu::read_cr4();
            // SAFETY: not safe, on purpose: clearing PKS is always allowed.
            unsafe { write_cr4(cr4 & !pkeys::cpu::CR4_PKS) };
            // SAFETY: int3 traps to the #BP handler, which returns.
            unsafe { core::arch::asm!("int3") };
            let landed = stray_page_table_write();
            // SAFETY: restores the bits that were set.
            unsafe { write_cr4(cr4) };
            defmt::warn!("attack: the stray page-table write {=str}", if landed { "landed" } else { "faulted" });
            Ok(())
        }
    }
}
