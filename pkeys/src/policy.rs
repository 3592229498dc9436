//! The policies a researcher picks on the kernel command line.
//!
//! - `ptprot=` chooses how page tables are protected ([`ProtectionPolicy`]);
//! - `pkfault=` chooses what a protection-key fault does ([`FaultPolicy`]).
//!
//! Parsing is strict: a value not in the accepted list is an error that
//! names the list, never a silent default.

use core::fmt;

/// How page-table pages are protected from stray kernel writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProtectionPolicy {
    /// PKS: page tables carry the page-table key, write-disabled in PKRS
    /// outside write windows.
    Pks,
    /// No PKS: page tables are mapped read-only, and write windows clear
    /// CR0.WP on the writing CPU (so, inside a window, every read-only page
    /// is writable by that CPU: the policy's weakness).
    ReadOnlyAlias,
    /// No protection: the measurement baseline.
    None,
    /// `pks` when the CPU has it, else `ro`.
    #[default]
    Auto,
}

/// A policy that cannot be honoured on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// `ptprot=pks` on a CPU without PKS.
    PksUnavailable,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PksUnavailable => write!(
                f,
                "ptprot=pks needs PKS, and this CPU has none (CPUID.7.0:ECX[31] is clear); \
                 use ptprot=auto, ro or none, or a CPU with PKS (QEMU: -cpu max)"
            ),
        }
    }
}

impl ProtectionPolicy {
    /// The values `ptprot=` accepts, for error messages.
    pub const ACCEPTED: &'static str = "pks, ro, none, auto";

    /// Parses a `ptprot=` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pks" => Some(Self::Pks),
            "ro" => Some(Self::ReadOnlyAlias),
            "none" => Some(Self::None),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pks => "pks",
            Self::ReadOnlyAlias => "ro",
            Self::None => "none",
            Self::Auto => "auto",
        }
    }

    /// The policy in force on a CPU that has (or lacks) PKS: `auto` becomes
    /// `pks` or `ro`; `pks` without PKS is an error.
    pub fn resolve(self, cpu_has_pks: bool) -> Result<Self, PolicyError> {
        match (self, cpu_has_pks) {
            (Self::Auto, true) => Ok(Self::Pks),
            (Self::Auto, false) => Ok(Self::ReadOnlyAlias),
            (Self::Pks, false) => Err(PolicyError::PksUnavailable),
            (policy, _) => Ok(policy),
        }
    }
}

/// What the kernel does when a protection key denies a kernel access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FaultPolicy {
    /// Full report, then stop the machine with the failure code.
    #[default]
    Panic,
    /// Log the fault and stop the offending context.
    Report,
    /// Log once per faulting site, open the key, and retry (experiments).
    Soft,
}

impl FaultPolicy {
    /// The values `pkfault=` accepts, for error messages.
    pub const ACCEPTED: &'static str = "panic, report, soft";

    /// Parses a `pkfault=` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "panic" => Some(Self::Panic),
            "report" => Some(Self::Report),
            "soft" => Some(Self::Soft),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Report => "report",
            Self::Soft => "soft",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips() {
        for p in [
            ProtectionPolicy::Pks,
            ProtectionPolicy::ReadOnlyAlias,
            ProtectionPolicy::None,
            ProtectionPolicy::Auto,
        ] {
            assert_eq!(ProtectionPolicy::parse(p.name()), Some(p));
        }
        for p in [FaultPolicy::Panic, FaultPolicy::Report, FaultPolicy::Soft] {
            assert_eq!(FaultPolicy::parse(p.name()), Some(p));
        }
        assert_eq!(ProtectionPolicy::parse("PKS"), None);
        assert_eq!(ProtectionPolicy::parse(""), None);
        assert_eq!(FaultPolicy::parse("ignore"), None);
    }

    #[test]
    fn pks_unavailable_says_what_to_do() {
        let text = PolicyError::PksUnavailable.to_string();
        assert!(text.starts_with("ptprot=pks needs PKS"), "{text}");
        assert!(text.contains("use ptprot=auto, ro or none"), "{text}");
    }

    #[test]
    fn auto_resolves_by_cpu() {
        assert_eq!(
            ProtectionPolicy::Auto.resolve(true),
            Ok(ProtectionPolicy::Pks)
        );
        assert_eq!(
            ProtectionPolicy::Auto.resolve(false),
            Ok(ProtectionPolicy::ReadOnlyAlias)
        );
        assert_eq!(
            ProtectionPolicy::Pks.resolve(false),
            Err(PolicyError::PksUnavailable)
        );
        assert_eq!(
            ProtectionPolicy::None.resolve(false),
            Ok(ProtectionPolicy::None)
        );
        assert_eq!(
            ProtectionPolicy::ReadOnlyAlias.resolve(true),
            Ok(ProtectionPolicy::ReadOnlyAlias)
        );
    }
}
