//! The hardware side of protection keys: CR4.PKS, the IA32_PKRS MSR, CR0.WP
//! writes for the `ro` policy, and this CPU's protection state.
//!
//! The state itself (cached PKRS, windows, exception save/restore) is
//! `pkeys::CpuProtection`; this module supplies its registers and owns the
//! boot CPU's instance. SMP bring-up will give each CPU its own.

use super::cpu;
use pkeys::{CpuProtection, Mechanism, Pkrs, ProtectionPolicy, ProtectionRegisters};
use x86::msr;

/// Writes the real registers of the CPU it runs on. Only this module makes
/// one (its field is private), and only once PKS is known to be on.
pub struct Registers {
    _private: (),
}

impl ProtectionRegisters for Registers {
    fn write_pkrs(&self, value: Pkrs) {
        // SAFETY: the only Registers is the one `init` hands to the boot
        // CPU's CpuProtection, which writes PKRS only under the Pks
        // mechanism, which `init` sets up only after checking CPUID and
        // turning CR4.PKS on; the upper 32 bits are zero by construction.
        unsafe { msr::wrmsr(pkeys::cpu::IA32_PKRS, value.msr_value()) };
    }

    fn set_write_protect(&self, enabled: bool) {
        let cr0 = cpu::read_cr0();
        let cr0 = if enabled {
            cr0 | cpu::CR0_WP
        } else {
            cr0 & !cpu::CR0_WP
        };
        // SAFETY: only WP changes. Clearing it lets this CPU write read-only
        // pages: the `ro` policy's write windows, which restore it.
        unsafe { cpu::write_cr0(cr0) };
    }
}

static BOOT_CPU: spin::Once<CpuProtection<Registers>> = spin::Once::new();

/// The window mechanism a resolved policy uses.
pub fn mechanism_for(policy: ProtectionPolicy) -> Mechanism {
    match policy {
        ProtectionPolicy::Pks => Mechanism::Pks,
        ProtectionPolicy::ReadOnlyAlias => Mechanism::WriteProtect,
        ProtectionPolicy::None | ProtectionPolicy::Auto => Mechanism::None,
    }
}

/// Sets up protection keys on the boot CPU for a resolved policy: under
/// `pks`, turns CR4.PKS on and loads the key table's default PKRS.
pub fn init(policy: ProtectionPolicy) -> &'static CpuProtection<Registers> {
    let mechanism = mechanism_for(policy);
    BOOT_CPU.call_once(|| {
        let mut found = Pkrs::ALL_ACCESS;
        if mechanism == Mechanism::Pks {
            let has_pks = pkeys::cpu::has_pks(raw_cpuid::cpuid!(7, 0).ecx);
            assert!(has_pks, "ptprot=pks resolved on a CPU without PKS");
            // SAFETY: CPUID reports PKS (checked above), so the bit is
            // supported; nothing else in CR4 changes.
            unsafe { cpu::write_cr4(cpu::read_cr4() | pkeys::cpu::CR4_PKS) };
            // SAFETY: PKS is present and on, so IA32_PKRS exists.
            found = Pkrs::from_bits(unsafe { msr::rdmsr(pkeys::cpu::IA32_PKRS) } as u32);
        }
        let protection = CpuProtection::new(Registers { _private: () }, mechanism, found);
        protection.init();
        protection
    })
}

/// This CPU's protection state, once [`init`] ran.
pub fn current() -> Option<&'static CpuProtection<Registers>> {
    BOOT_CPU.get()
}

/// What PKRS and CR0.WP hold right now, read from the registers (the
/// exception entry path trusts these over the cache).
pub fn register_values(protection: &CpuProtection<Registers>) -> (Pkrs, bool) {
    let pkrs = match cpu::read_pkrs_if_enabled() {
        Some(raw) if protection.mechanism() == Mechanism::Pks => Pkrs::from_bits(raw as u32),
        _ => protection.pkrs(),
    };
    (pkrs, cpu::read_cr0() & cpu::CR0_WP != 0)
}
