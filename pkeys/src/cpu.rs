//! PKS detection and control-register bits.

/// CPUID.(EAX=7,ECX=0):ECX bit for PKS. `raw-cpuid` 11.6 stops at bit 30.
pub const CPUID_7_ECX_PKS: u32 = 1 << 31;
/// CPUID.(EAX=7,ECX=0):ECX bit for PKU (user protection keys).
pub const CPUID_7_ECX_PKU: u32 = 1 << 3;
/// CR4.PKS enables supervisor protection keys. `x86::controlregs::cr4()`
/// drops this bit, so CR4 must be read and written raw.
pub const CR4_PKS: u64 = 1 << 24;
/// The IA32_PKRS MSR: AD/WD bits per key, upper 32 bits must be zero.
pub const IA32_PKRS: u32 = 0x6e1;

/// True if CPUID leaf 7, subleaf 0, ECX (`leaf7_ecx`) reports PKS.
pub fn has_pks(leaf7_ecx: u32) -> bool {
    leaf7_ecx & CPUID_7_ECX_PKS != 0
}

/// True if CR4 (`cr4`, read raw) has PKS turned on.
pub fn pks_enabled(cr4: u64) -> bool {
    cr4 & CR4_PKS != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_reads_bit_31() {
        assert!(has_pks(0x8000_0000));
        assert!(!has_pks(0x7fff_ffff));
        // raw CR4 as measured under QEMU with PKS on (PLATFORM.md)
        assert!(pks_enabled(0x100_0020));
        assert!(!pks_enabled(0x20));
    }

    #[test]
    fn bits_match_the_sdm() {
        // CPUID.(EAX=7,ECX=0):ECX[3] is PKU; CR4[24] is PKS.
        assert_eq!(CPUID_7_ECX_PKU, 0x8);
        assert_eq!(CR4_PKS, 0x100_0000);
    }
}
