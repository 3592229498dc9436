//! CPU identification and reads of the control registers. Writes to the
//! protection registers (CR0, CR4, EFER.NXE, PKRS) live in [`super::pks`]
//! alone.
//!
//! CR4 is read with raw `asm!`: `x86::controlregs::cr4()` silently drops
//! bit 24 (PKS), so a read-modify-write through it would turn PKS off
//! (PLATFORM.md). Feature bits come from `raw-cpuid`, except
//! PKS, which it does not know (read raw from leaf 7).

use core::arch::asm;
use core::fmt;
use raw_cpuid::CpuId;
use x86::msr;

/// What the CPU offers that the kernel reports or uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuFeatures {
    /// Protection keys for supervisor pages.
    pub pks: bool,
    /// Protection keys for user pages.
    pub pku: bool,
    /// Supervisor-mode execution prevention.
    pub smep: bool,
    /// Supervisor-mode access prevention.
    pub smap: bool,
    /// User-mode instruction prevention.
    pub umip: bool,
    /// No-execute page protection.
    pub nx: bool,
    /// 1 GiB pages.
    pub gib_pages: bool,
    /// 5-level paging.
    pub la57: bool,
    /// Local APIC.
    pub apic: bool,
    /// x2APIC mode.
    pub x2apic: bool,
    /// Process-context identifiers.
    pub pcid: bool,
    /// The INVPCID instruction.
    pub invpcid: bool,
}

impl CpuFeatures {
    /// Reads CPUID.
    pub fn detect() -> Self {
        let cpuid = CpuId::new();
        let basic = cpuid.get_feature_info();
        let extended = cpuid.get_extended_feature_info();
        let ext_proc = cpuid.get_extended_processor_and_feature_identifiers();
        // Leaf 7 exists only if the CPU reports it (raw-cpuid checks the
        // highest leaf for `extended`); an out-of-range leaf returns another
        // leaf's data on Intel, which could fake a PKS bit.
        let pks = extended.is_some() && pkeys::cpu::has_pks(raw_cpuid::cpuid!(7, 0).ecx);
        CpuFeatures {
            pks,
            pku: extended.as_ref().is_some_and(|f| f.has_pku()),
            smep: extended.as_ref().is_some_and(|f| f.has_smep()),
            smap: extended.as_ref().is_some_and(|f| f.has_smap()),
            umip: extended.as_ref().is_some_and(|f| f.has_umip()),
            la57: extended.as_ref().is_some_and(|f| f.has_la57()),
            invpcid: extended.as_ref().is_some_and(|f| f.has_invpcid()),
            nx: ext_proc.as_ref().is_some_and(|f| f.has_execute_disable()),
            gib_pages: ext_proc.as_ref().is_some_and(|f| f.has_1gib_pages()),
            apic: basic.as_ref().is_some_and(|f| f.has_apic()),
            x2apic: basic.as_ref().is_some_and(|f| f.has_x2apic()),
            pcid: basic.as_ref().is_some_and(|f| f.has_pcid()),
        }
    }

    /// The features as `(name, present)` pairs, in report order.
    pub fn list(&self) -> [(&'static str, bool); 12] {
        [
            ("PKS", self.pks),
            ("PKU", self.pku),
            ("SMEP", self.smep),
            ("SMAP", self.smap),
            ("UMIP", self.umip),
            ("NX", self.nx),
            ("1GiB-pages", self.gib_pages),
            ("LA57", self.la57),
            ("APIC", self.apic),
            ("x2APIC", self.x2apic),
            ("PCID", self.pcid),
            ("INVPCID", self.invpcid),
        ]
    }
}

/// The vendor and brand strings, for the report.
pub fn describe_cpu(out: &mut impl fmt::Write) -> fmt::Result {
    let cpuid = CpuId::new();
    match cpuid.get_vendor_info() {
        Some(vendor) => write!(out, "{}", vendor.as_str())?,
        None => write!(out, "unknown vendor")?,
    }
    if let Some(brand) = cpuid.get_processor_brand_string() {
        write!(out, " ({})", brand.as_str().trim())?;
    }
    Ok(())
}

/// CR0, read raw.
pub fn read_cr0() -> u64 {
    let value;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// True if EFER.NXE is set, so bit 63 of a page-table entry means
/// no-execute (without it the bit is reserved and faults).
pub fn nx_enabled() -> bool {
    // SAFETY: reading IA32_EFER has no side effects.
    unsafe { msr::rdmsr(msr::IA32_EFER) & super::pks::EFER_NXE != 0 }
}

/// One past the highest physical address the CPU can map: 2^MAXPHYADDR
/// (CPUID 0x8000_0008), or 2^36 where that leaf is missing, as the SDM
/// says. Entry bits above it are reserved.
pub fn physical_address_limit() -> u64 {
    static BITS: spin::Once<u8> = spin::Once::new();
    let bits = *BITS.call_once(|| {
        CpuId::new()
            .get_processor_capacity_feature_info()
            .map_or(36, |info| info.physical_address_bits())
    });
    1 << bits
}

/// The no-execute bit for page-table entries, or 0 without NX.
pub fn no_execute_bit() -> u64 {
    if nx_enabled() { 1 << 63 } else { 0 }
}

/// CR2: the linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let value;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// CR3: the current address-space root.
pub fn read_cr3() -> u64 {
    let value;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The time-stamp counter.
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reloads CR3 with its own value: drops this CPU's non-global
/// translations (an AP after the trampoline's identity mapping is gone).
pub fn reload_cr3() {
    // SAFETY: the same root stays loaded.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// CR4, read raw (all bits, PKS included).
pub fn read_cr4() -> u64 {
    let value;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The PKRS register if PKS is on, for reports.
pub fn read_pkrs_if_enabled() -> Option<u64> {
    if !pkeys::cpu::pks_enabled(read_cr4()) {
        return None;
    }
    // SAFETY: CR4.PKS is set, so the CPU has PKS and IA32_PKRS exists.
    Some(unsafe { msr::rdmsr(pkeys::cpu::IA32_PKRS) })
}

/// This CPU's initial APIC id (CPUID leaf 1, EBX[31:24]): a stable CPU
/// number until per-CPU data exists.
pub fn current_cpu_id() -> u32 {
    raw_cpuid::cpuid!(1).ebx >> 24
}

/// RFLAGS.IF.
pub fn interrupts_enabled() -> bool {
    x86::bits64::rflags::read().contains(x86::bits64::rflags::RFlags::FLAGS_IF)
}

/// Masks maskable interrupts on this CPU.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { x86::irq::disable() };
}

/// Unmasks maskable interrupts on this CPU.
pub fn enable_interrupts() {
    // SAFETY: the IDT is loaded before anything calls this.
    unsafe { x86::irq::enable() };
}

/// Waits for an interrupt with interrupts enabled only for the wait:
/// `sti; hlt` (the one-instruction shadow of `sti` keeps an interrupt
/// from arriving before the `hlt`), then `cli` once the handler returned.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is loaded and every vector has a handler; interrupts
    // are masked again before this returns.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        disable_interrupts();
        // SAFETY: hlt with interrupts masked just parks the CPU.
        unsafe { x86::halt() };
    }
}
