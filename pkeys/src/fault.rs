//! Page-fault error codes, including the protection-key bit.

use core::fmt;

bitflags::bitflags! {
    /// The error code the CPU pushes for #PF (Intel SDM vol. 3, 4.7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFaultError: u64 {
        /// The page was present (a protection violation), else not present.
        const PRESENT = 1 << 0;
        /// The access was a write, else a read.
        const WRITE = 1 << 1;
        /// The access came from user mode.
        const USER = 1 << 2;
        /// A reserved bit was set in a paging-structure entry.
        const RESERVED_BIT = 1 << 3;
        /// The access was an instruction fetch.
        const INSTRUCTION_FETCH = 1 << 4;
        /// A protection key (PKU or PKS) denied the access.
        const PROTECTION_KEY = 1 << 5;
        /// A shadow-stack access.
        const SHADOW_STACK = 1 << 6;
        /// An SGX access-control violation.
        const SGX = 1 << 15;
    }
}

impl PageFaultError {
    /// True if a protection key caused the fault.
    pub fn is_pkey_violation(self) -> bool {
        self.contains(Self::PROTECTION_KEY)
    }
}

/// Prints the decoded error code, e.g. `present, write, supervisor, PK`.
impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presence = if self.contains(Self::PRESENT) {
            "present"
        } else {
            "not-present"
        };
        let access = if self.contains(Self::INSTRUCTION_FETCH) {
            "fetch"
        } else if self.contains(Self::WRITE) {
            "write"
        } else {
            "read"
        };
        let mode = if self.contains(Self::USER) {
            "user"
        } else {
            "supervisor"
        };
        write!(f, "{presence}, {access}, {mode}")?;
        for (flag, name) in [
            (Self::PROTECTION_KEY, "PK (protection key)"),
            (Self::RESERVED_BIT, "reserved bit set"),
            (Self::SHADOW_STACK, "shadow stack"),
            (Self::SGX, "SGX"),
        ] {
            if self.contains(flag) {
                write!(f, ", {name}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_measured_codes() {
        // 0x23 and 0x21 are the codes QEMU raises for writes under WD and
        // reads under AD (PLATFORM.md).
        let wd = PageFaultError::from_bits_truncate(0x23);
        assert!(wd.is_pkey_violation());
        assert_eq!(
            wd.to_string(),
            "present, write, supervisor, PK (protection key)"
        );
        let ad = PageFaultError::from_bits_truncate(0x21);
        assert_eq!(
            ad.to_string(),
            "present, read, supervisor, PK (protection key)"
        );
        let null_write = PageFaultError::from_bits_truncate(0x2);
        assert!(!null_write.is_pkey_violation());
        assert_eq!(null_write.to_string(), "not-present, write, supervisor");
        assert_eq!(
            PageFaultError::from_bits_truncate(0x15).to_string(),
            "present, fetch, user"
        );
    }
}

/// What a faulting access tried to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// A page fault a protection key caused, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PkFault {
    /// The key of the page (from its leaf entry), if the walk found one.
    pub key: Option<crate::Pkey>,
    /// The address accessed (CR2).
    pub address: u64,
    /// The access.
    pub access: Access,
    /// Where the faulting instruction is.
    pub rip: u64,
}

impl PkFault {
    /// Decodes a #PF; `None` unless a protection key caused it.
    /// `leaf_pte` is the leaf entry mapping `address`, if the kernel found it.
    pub fn decode(
        error: PageFaultError,
        address: u64,
        rip: u64,
        leaf_pte: Option<u64>,
    ) -> Option<PkFault> {
        if !error.is_pkey_violation() {
            return None;
        }
        let access = if error.contains(PageFaultError::INSTRUCTION_FETCH) {
            Access::Fetch
        } else if error.contains(PageFaultError::WRITE) {
            Access::Write
        } else {
            Access::Read
        };
        Some(PkFault {
            key: leaf_pte.map(crate::key::pte_key),
            address,
            access,
            rip,
        })
    }
}

impl Access {
    /// `read`, `write` or `fetch`.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Fetch => "fetch",
        }
    }
}

impl fmt::Display for PkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = self.access.name();
        match self.key {
            Some(key) => write!(f, "{access} of {:#x} denied by {key}", self.address)?,
            None => write!(
                f,
                "{access} of {:#x} denied by a protection key",
                self.address
            )?,
        }
        if let Some(consumer) = self.key.and_then(crate::keys::consumer) {
            write!(f, " ({})", consumer.name)?;
        }
        write!(f, " at RIP {:#x}", self.rip)
    }
}

/// What the kernel does about one protection-key fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Full report, then stop the machine (`pkfault=panic`).
    Panic,
    /// Log it and abort the faulting operation (`pkfault=report`): the
    /// kernel resumes at the operation's recovery point, or, if it has
    /// none, stops the machine, since nothing smaller can be stopped.
    StopContext,
    /// Let the access happen once (`pkfault=soft`): open the key for the
    /// retried instruction. `log` is true the first time at this site.
    AllowOnce {
        /// Whether to log (first fault at this RIP).
        log: bool,
    },
}

/// Sites `pkfault=soft` remembers; past this, every fault is logged.
pub const SOFT_SITES: usize = 64;

/// The fault policy with its memory: faults per key and the sites `soft`
/// has already logged.
#[derive(Clone, Debug)]
pub struct FaultHandler {
    policy: crate::FaultPolicy,
    per_key: [u64; crate::Pkey::COUNT],
    sites: heapless::Vec<u64, SOFT_SITES>,
}

impl FaultHandler {
    /// A handler applying `policy`.
    pub const fn new(policy: crate::FaultPolicy) -> Self {
        Self {
            policy,
            per_key: [0; crate::Pkey::COUNT],
            sites: heapless::Vec::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> crate::FaultPolicy {
        self.policy
    }

    /// Counts the fault and chooses the action.
    pub fn handle(&mut self, fault: &PkFault) -> FaultAction {
        if let Some(key) = fault.key {
            self.per_key[usize::from(key.index())] += 1;
        }
        match self.policy {
            crate::FaultPolicy::Panic => FaultAction::Panic,
            crate::FaultPolicy::Report => FaultAction::StopContext,
            crate::FaultPolicy::Soft => {
                let known = self.sites.contains(&fault.rip);
                // A full table just means logging again: never silence.
                let remembered = known || self.sites.push(fault.rip).is_ok();
                FaultAction::AllowOnce {
                    log: !known || !remembered,
                }
            }
        }
    }

    /// Faults counted for `key`.
    pub fn faults(&self, key: crate::Pkey) -> u64 {
        self.per_key[usize::from(key.index())]
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::keys::PAGE_TABLE_KEY;
    use crate::{FaultPolicy, Pkey};

    fn fault(rip: u64) -> PkFault {
        let error = PageFaultError::from_bits_truncate(0x23);
        PkFault::decode(
            error,
            0xffff_8000_0000_1000,
            rip,
            Some(crate::key::pte_with_key(0x63, PAGE_TABLE_KEY)),
        )
        .unwrap()
    }

    #[test]
    fn decodes_key_access_and_site() {
        let f = fault(0x1234);
        assert_eq!(f.key, Some(PAGE_TABLE_KEY));
        assert_eq!(f.access, Access::Write);
        assert_eq!(
            f.to_string(),
            "write of 0xffff800000001000 denied by key 1 (page tables) at RIP 0x1234"
        );
        assert_eq!(
            PkFault::decode(PageFaultError::from_bits_truncate(0x2), 0, 0, None),
            None
        );
        let read = PkFault::decode(PageFaultError::from_bits_truncate(0x21), 8, 9, None).unwrap();
        assert_eq!((read.access, read.key), (Access::Read, None));
    }

    #[test]
    fn policies_choose_their_action_and_count_per_key() {
        let mut panic = FaultHandler::new(FaultPolicy::Panic);
        assert_eq!(panic.handle(&fault(1)), FaultAction::Panic);
        let mut report = FaultHandler::new(FaultPolicy::Report);
        assert_eq!(report.policy(), FaultPolicy::Report);
        assert_eq!(report.handle(&fault(1)), FaultAction::StopContext);
        assert_eq!(report.faults(PAGE_TABLE_KEY), 1);
        assert_eq!(report.faults(Pkey::DEFAULT), 0);
    }

    #[test]
    fn soft_logs_once_per_site() {
        let mut soft = FaultHandler::new(FaultPolicy::Soft);
        assert_eq!(soft.handle(&fault(1)), FaultAction::AllowOnce { log: true });
        assert_eq!(
            soft.handle(&fault(1)),
            FaultAction::AllowOnce { log: false }
        );
        assert_eq!(soft.handle(&fault(2)), FaultAction::AllowOnce { log: true });
        assert_eq!(soft.faults(PAGE_TABLE_KEY), 3);
        for rip in 3..3 + SOFT_SITES as u64 {
            soft.handle(&fault(rip));
        }
        // The table is full: a new site is logged every time.
        let rip = 10_000;
        assert_eq!(
            soft.handle(&fault(rip)),
            FaultAction::AllowOnce { log: true }
        );
        assert_eq!(
            soft.handle(&fault(rip)),
            FaultAction::AllowOnce { log: true }
        );
    }
}
