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
