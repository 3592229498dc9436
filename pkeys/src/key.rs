//! Protection keys, the PKRS register value, and key bits in page-table
//! entries.
//!
//! PKRS holds two bits per key: bit `2k` is access-disable (AD), bit
//! `2k + 1` write-disable (WD). The upper 32 bits of the MSR must be zero.
//! A leaf page-table entry names its key in bits 62:59. Keys only apply to
//! supervisor pages, and WD only when CR0.WP is set (PLATFORM.md).

use core::fmt;

/// A protection key, 0 to 15. Key 0 is the default every page has unless
/// its entry names another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pkey(u8);

impl Pkey {
    /// Number of keys.
    pub const COUNT: usize = 16;
    /// The default key.
    pub const DEFAULT: Pkey = Pkey(0);

    /// The key `k`, if `k < 16`.
    pub const fn new(k: u8) -> Option<Pkey> {
        if (k as usize) < Self::COUNT {
            Some(Pkey(k))
        } else {
            None
        }
    }

    /// The key's number.
    pub const fn index(self) -> u8 {
        self.0
    }

    /// Every key, in order.
    pub fn all() -> impl Iterator<Item = Pkey> {
        (0..Self::COUNT as u8).map(Pkey)
    }
}

impl fmt::Display for Pkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.0)
    }
}

/// Bit position of the key in a leaf page-table entry.
pub const PTE_PKEY_SHIFT: u32 = 59;
/// The key bits of a leaf page-table entry (62:59).
pub const PTE_PKEY_MASK: u64 = 0xf << PTE_PKEY_SHIFT;

// Bits 62:59, below NX (63) and above the physical address (51:12).
const _: () = assert!(PTE_PKEY_MASK == 0x7800_0000_0000_0000);
const _: () = assert!(PTE_PKEY_MASK & (1 << 63) == 0);

/// The key a leaf entry names.
pub const fn pte_key(pte: u64) -> Pkey {
    Pkey(((pte & PTE_PKEY_MASK) >> PTE_PKEY_SHIFT) as u8)
}

/// `pte` with its key bits set to `key`.
pub const fn pte_with_key(pte: u64, key: Pkey) -> u64 {
    // The key field is cleared first, so adding the key sets exactly its
    // bits (written as an add so no mutant of it is an equivalent one).
    (pte & !PTE_PKEY_MASK) + ((key.0 as u64) << PTE_PKEY_SHIFT)
}

/// What the kernel may do with pages of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rights {
    /// Read and write.
    ReadWrite,
    /// Read only (WD set).
    ReadOnly,
    /// Nothing (AD set; WD is then irrelevant).
    NoAccess,
}

/// A PKRS register value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pkrs(u32);

impl Pkrs {
    /// Every key read-write: the value at reset.
    pub const ALL_ACCESS: Pkrs = Pkrs(0);

    /// A value from its raw bits.
    pub const fn from_bits(bits: u32) -> Pkrs {
        Pkrs(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The MSR value (upper 32 bits zero, or WRMSR raises #GP).
    pub const fn msr_value(self) -> u64 {
        self.0 as u64
    }

    const fn ad_bit(key: Pkey) -> u32 {
        1 << (2 * key.0)
    }

    const fn wd_bit(key: Pkey) -> u32 {
        1 << (2 * key.0 + 1)
    }

    /// The rights this value gives `key`.
    pub const fn rights(self, key: Pkey) -> Rights {
        if self.0 & Self::ad_bit(key) != 0 {
            Rights::NoAccess
        } else if self.0 & Self::wd_bit(key) != 0 {
            Rights::ReadOnly
        } else {
            Rights::ReadWrite
        }
    }

    /// This value with `key` given `rights`.
    pub const fn with_rights(self, key: Pkey, rights: Rights) -> Pkrs {
        // The key's two-bit field at bit 2k: AD low, WD high.
        let field: u32 = match rights {
            Rights::ReadWrite => 0b00,
            Rights::ReadOnly => 0b10,
            Rights::NoAccess => 0b01,
        };
        let shift = 2 * key.0 as u32;
        // The field is cleared first, so adding it in sets exactly its
        // bits (an add, so that no mutant of it is an equivalent one).
        Pkrs((self.0 & !(0b11 << shift)) + (field << shift))
    }

    /// True if a supervisor write to a page of `key` is allowed.
    pub const fn allows_write(self, key: Pkey) -> bool {
        matches!(self.rights(key), Rights::ReadWrite)
    }
}

impl fmt::Debug for Pkrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkrs({:#010x})", self.0)
    }
}

/// Shows the keys that are not read-write, e.g. `0x00000008 (key 1 ro)`.
impl fmt::Display for Pkrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        let mut first = true;
        for key in Pkey::all() {
            let rights = match self.rights(key) {
                Rights::ReadWrite => continue,
                Rights::ReadOnly => "ro",
                Rights::NoAccess => "no-access",
            };
            write!(
                f,
                "{}key {} {}",
                if first { " (" } else { ", " },
                key.0,
                rights
            )?;
            first = false;
        }
        if !first {
            write!(f, ")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkrs_bits_follow_the_sdm_layout() {
        let k1 = Pkey::new(1).unwrap();
        let k15 = Pkey::new(15).unwrap();
        assert_eq!(
            Pkrs::ALL_ACCESS.with_rights(k1, Rights::ReadOnly).bits(),
            0b1000
        );
        assert_eq!(
            Pkrs::ALL_ACCESS.with_rights(k1, Rights::NoAccess).bits(),
            0b0100
        );
        assert_eq!(
            Pkrs::ALL_ACCESS.with_rights(k15, Rights::ReadOnly).bits(),
            1 << 31
        );
        let p = Pkrs::ALL_ACCESS
            .with_rights(k1, Rights::ReadOnly)
            .with_rights(k1, Rights::ReadWrite);
        assert_eq!(p, Pkrs::ALL_ACCESS);
        assert!(!Pkrs::from_bits(0b1000).allows_write(k1));
        assert!(Pkrs::from_bits(0b1000).allows_write(Pkey::DEFAULT));
        assert_eq!(Pkrs::from_bits(0b1100).rights(k1), Rights::NoAccess);
        assert_eq!(Pkrs::from_bits(u32::MAX).msr_value() >> 32, 0);
        assert_eq!(Pkrs::from_bits(0b1000).to_string(), "0x00000008 (key 1 ro)");
        assert_eq!(Pkrs::ALL_ACCESS.to_string(), "0x00000000");
    }

    #[test]
    fn msr_value_is_the_register_bits_zero_extended() {
        // WRMSR takes exactly these bits: a wrong value opens or closes keys.
        for bits in [0b1000, 0x5555_5554, u32::MAX] {
            let pkrs = Pkrs::from_bits(bits);
            assert_eq!(pkrs.msr_value(), u64::from(bits));
        }
        assert_eq!(Pkrs::ALL_ACCESS.msr_value(), 0);
        assert_eq!(format!("{:?}", Pkrs::from_bits(0b1000)), "Pkrs(0x00000008)");
    }

    #[test]
    fn pte_key_bits_round_trip() {
        let pte = 0x8000_0000_0012_3063u64; // NX, address, flags
        for key in Pkey::all() {
            let keyed = pte_with_key(pte, key);
            assert_eq!(pte_key(keyed), key);
            assert_eq!(keyed & !PTE_PKEY_MASK, pte);
        }
        assert_eq!(
            pte_key(pte_with_key(u64::MAX, Pkey::DEFAULT)),
            Pkey::DEFAULT
        );
        assert_eq!(Pkey::new(16), None);
    }
}
