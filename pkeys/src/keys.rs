//! Who uses which key: the static key table and the default PKRS.
//!
//! Key 0 is every page's default. Key 1 protects page tables, key 2 the
//! allocator metadata the kernel's protection decisions read (which
//! pageblocks are page-table memory), key 3 capability tables (CNode and
//! TCB slots, the capability space's records) and key 4 thread control
//! blocks: all write-disabled except inside their own write windows.
//! Which memory carries keys 2 to 4 is the kernel's policy (`protect=`):
//! a class left unprotected keeps the default key, and its key's
//! write-disable bit guards nothing. The other keys are free for the next
//! consumers: add a row to [`KEY_TABLE`] and the default PKRS follows.

use crate::key::{Pkey, Pkrs, Rights};

/// One key's consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyConsumer {
    /// The key.
    pub key: Pkey,
    /// Who uses it.
    pub name: &'static str,
    /// Its rights outside write windows.
    pub rights: Rights,
}

const fn key(k: u8) -> Pkey {
    match Pkey::new(k) {
        Some(key) => key,
        None => panic!("key out of range"),
    }
}

/// The default key: normal kernel memory.
pub const DEFAULT_KEY: Pkey = Pkey::DEFAULT;
/// The page-table key.
pub const PAGE_TABLE_KEY: Pkey = key(1);
/// The key of the allocator metadata that decides what is page-table
/// memory.
pub const METADATA_KEY: Pkey = key(2);

/// The key of capability tables.
pub const CAPABILITY_KEY: Pkey = key(3);
/// The key of thread control blocks.
pub const THREAD_KEY: Pkey = key(4);

/// Every key in use. Keys not listed are read-write and unused.
pub const KEY_TABLE: &[KeyConsumer] = &[
    KeyConsumer {
        key: DEFAULT_KEY,
        name: "default",
        rights: Rights::ReadWrite,
    },
    KeyConsumer {
        key: PAGE_TABLE_KEY,
        name: "page tables",
        rights: Rights::ReadOnly,
    },
    KeyConsumer {
        key: METADATA_KEY,
        name: "allocator metadata",
        rights: Rights::ReadOnly,
    },
    KeyConsumer {
        key: CAPABILITY_KEY,
        name: "capability tables",
        rights: Rights::ReadOnly,
    },
    KeyConsumer {
        key: THREAD_KEY,
        name: "thread control blocks",
        rights: Rights::ReadOnly,
    },
];

/// The PKRS value outside any window: every consumer at its rights.
pub const fn default_pkrs() -> Pkrs {
    let mut pkrs = Pkrs::ALL_ACCESS;
    let mut i = 0;
    while i < KEY_TABLE.len() {
        pkrs = pkrs.with_rights(KEY_TABLE[i].key, KEY_TABLE[i].rights);
        i += 1;
    }
    pkrs
}

/// The consumer of `key`, if any.
pub fn consumer(key: Pkey) -> Option<&'static KeyConsumer> {
    KEY_TABLE.iter().find(|c| c.key == key)
}

const _: () = assert!(
    default_pkrs().bits() == 0b10_1010_1000,
    "keys 1 to 4 are write-disabled, nothing else"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_unique_keys_and_default_is_read_write() {
        for (i, a) in KEY_TABLE.iter().enumerate() {
            assert!(
                KEY_TABLE[i + 1..].iter().all(|b| b.key != a.key),
                "{a:?} twice"
            );
        }
        assert!(default_pkrs().allows_write(DEFAULT_KEY));
        assert!(!default_pkrs().allows_write(PAGE_TABLE_KEY));
        assert_eq!(
            consumer(PAGE_TABLE_KEY).map(|c| c.name),
            Some("page tables")
        );
        assert_eq!(consumer(Pkey::new(7).unwrap()), None);
    }
}
