//! Object types, their sizes and the retype flags.
//!
//! Untyped here is a memory *budget*, not a physical range: retyping
//! charges it `1 << size_bits` bytes per object, and the kernel places the
//! object where its protection wants it (page tables in protected
//! pageblocks, secret frames in unmapped ones). Deleting the object's last
//! capability refunds the charge. The sizes are what is charged:
//!
//! | type | size_bits | note |
//! |---|---|---|
//! | `Untyped` | the argument, 4..=47 | a child budget carved from the parent |
//! | `Tcb` | 11 (2 KiB) | registers, FPU state, scheduling and IPC state |
//! | `Endpoint` | 4 (16 bytes) | |
//! | `Notification` | 5 (32 bytes) | |
//! | `CNode` | radix + 6 | the argument is the radix, 1..=24; 64-byte slots |
//! | `Frame4K` | 12 | |
//! | `Frame2M` | 21 | |
//! | `PageTable`, `PageDirectory`, `Pdpt`, `Pml4` | 12 | one table page each |
//!
//! The kernel keeps each object within its charge (the capability crate
//! asserts its slot fits [`SLOT_SIZE_BITS`]).

use crate::{DecodeError, Error};

/// log2 of a CNode slot's size: a capability and its derivation-tree
/// links.
pub const SLOT_SIZE_BITS: u8 = 6;
/// log2 of a TCB's charge.
pub const TCB_SIZE_BITS: u8 = 11;
/// log2 of an endpoint's charge.
pub const ENDPOINT_SIZE_BITS: u8 = 4;
/// log2 of a notification's charge.
pub const NOTIFICATION_SIZE_BITS: u8 = 5;
/// log2 of a page-table page (every paging level).
pub const PAGE_TABLE_SIZE_BITS: u8 = 12;
/// Smallest CNode radix: every level resolves at least one bit.
pub const CNODE_MIN_RADIX: u8 = 1;
/// Largest CNode radix (16 Mi slots).
pub const CNODE_MAX_RADIX: u8 = 24;
/// Smallest Untyped budget, log2 of bytes.
pub const UNTYPED_MIN_BITS: u8 = 4;
/// Largest Untyped budget, log2 of bytes (128 TiB).
pub const UNTYPED_MAX_BITS: u8 = 47;

numbered! {
    /// What Untyped retype makes.
    pub enum ObjectType / ObjectType {
        /// A budget carved from the parent's.
        Untyped = 0,
        /// A thread.
        Tcb = 1,
        /// A synchronous IPC endpoint.
        Endpoint = 2,
        /// A word of signal bits threads can wait on.
        Notification = 3,
        /// A table of capability slots.
        CNode = 4,
        /// A 4 KiB frame.
        Frame4K = 5,
        /// A 2 MiB frame.
        Frame2M = 6,
        /// A page table (level 1: maps 4 KiB pages, covers 2 MiB).
        PageTable = 7,
        /// A page directory (level 2: maps 2 MiB pages or page tables,
        /// covers 1 GiB).
        PageDirectory = 8,
        /// A page-directory-pointer table (level 3: maps page directories,
        /// covers 512 GiB).
        Pdpt = 9,
        /// A PML4 (level 4): the root of an address space (a VSpace).
        Pml4 = 10,
    }
}

impl ObjectType {
    /// How many object types there are.
    pub const COUNT: usize = Self::ALL.len();

    /// log2 of the bytes one object of this type is charged. `user_bits`
    /// is the retype size argument: the budget's size bits for an
    /// Untyped, the radix for a CNode, ignored otherwise. Out of range:
    /// `RangeError` with the acceptable range.
    pub const fn size_bits(self, user_bits: u64) -> Result<u8, Error> {
        let (min, max) = match self {
            ObjectType::Untyped => (UNTYPED_MIN_BITS, UNTYPED_MAX_BITS),
            ObjectType::CNode => (CNODE_MIN_RADIX, CNODE_MAX_RADIX),
            ObjectType::Tcb => return Ok(TCB_SIZE_BITS),
            ObjectType::Endpoint => return Ok(ENDPOINT_SIZE_BITS),
            ObjectType::Notification => return Ok(NOTIFICATION_SIZE_BITS),
            ObjectType::Frame4K => return Ok(12),
            ObjectType::Frame2M => return Ok(21),
            ObjectType::PageTable
            | ObjectType::PageDirectory
            | ObjectType::Pdpt
            | ObjectType::Pml4 => return Ok(PAGE_TABLE_SIZE_BITS),
        };
        if user_bits < min as u64 || user_bits > max as u64 {
            return Err(Error::RangeError {
                min: min as u64,
                max: max as u64,
            });
        }
        Ok(match self {
            ObjectType::CNode => user_bits as u8 + SLOT_SIZE_BITS,
            _ => user_bits as u8,
        })
    }

    /// True for the page-table levels (PT, PD, PDPT, PML4). Their caps are
    /// never frame caps: a page-table page cannot be mapped as a page.
    pub const fn is_paging_structure(self) -> bool {
        self.paging_level().is_some()
    }

    /// True for frames (the only objects user mappings are made of).
    pub const fn is_frame(self) -> bool {
        matches!(self, ObjectType::Frame4K | ObjectType::Frame2M)
    }

    /// The paging level: 1 for a page table up to 4 for a PML4.
    pub const fn paging_level(self) -> Option<u8> {
        match self {
            ObjectType::PageTable => Some(1),
            ObjectType::PageDirectory => Some(2),
            ObjectType::Pdpt => Some(3),
            ObjectType::Pml4 => Some(4),
            _ => None,
        }
    }

    /// This type's place in [`ObjectType::ALL`], for per-type tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

bitflags::bitflags! {
    /// The retype flags word (message register MR2 of `UntypedRetype`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RetypeFlags: u64 {
        /// Frames only: take the memory from the `Unmapped` freetype, so
        /// the frame is absent from the kernel's direct map (the kernel
        /// touches it only through an ephemeral mapping). On any other
        /// type: `InvalidArgument { index: 2 }`.
        const SECRET = 1 << 0;
    }
}

impl RetypeFlags {
    /// The flags word from a message register, checked.
    pub const fn from_word(word: u64) -> Result<Self, DecodeError> {
        match Self::from_bits(word) {
            Some(flags) => Ok(flags),
            None => Err(DecodeError::RetypeFlags(word)),
        }
    }
}
