//! The capability type and the names it uses.
//!
//! A [`Cap`] is a small `Copy` value. What it says about its object (type,
//! frame size, paging level, secrecy, CNode radix) is fixed when the
//! object is made and is the same in every cap to it; what it says about
//! itself (rights, badge, guard, mapping) may differ between caps.

use abi::{CapRights, ObjectType};

/// An object, as the kernel numbers it (see the crate doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub u32);

impl ObjectId {
    /// The id as an index into per-object tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A slot: slot `index` of the slot-holding object (a CNode, or a TCB the
/// kernel gave slots) `object`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRef {
    /// The object whose slots these are.
    pub object: ObjectId,
    /// The slot's index among them.
    pub index: u32,
}

impl SlotRef {
    /// Slot `index` of `object`.
    pub const fn new(object: ObjectId, index: u32) -> Self {
        SlotRef { object, index }
    }
}

/// Where a frame or page table is mapped: which VSpace (its PML4) and at
/// which virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// The VSpace's PML4.
    pub vspace: ObjectId,
    /// The virtual address the frame or table starts at.
    pub vaddr: u64,
}

/// A frame's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    Large,
}

/// A paging structure's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PagingLevel {
    /// Page table: maps 4 KiB frames.
    Pt = 1,
    /// Page directory: maps page tables or 2 MiB frames.
    Pd = 2,
    /// Page-directory-pointer table: maps page directories.
    Pdpt = 3,
    /// PML4: the root of a VSpace, never mapped itself.
    Pml4 = 4,
}

/// A capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cap {
    /// No capability: the slot is empty.
    #[default]
    Null,
    /// An Untyped budget.
    Untyped {
        /// The budget.
        id: ObjectId,
    },
    /// A CNode. Lookup through this cap consumes `guard_bits` bits that
    /// must equal `guard`, then `radix_bits` bits of index.
    CNode {
        /// The CNode.
        id: ObjectId,
        /// log2 of the CNode's slot count (the object's, 1..=24).
        radix_bits: u8,
        /// This cap's guard.
        guard: u64,
        /// This cap's guard size; `guard_bits + radix_bits <= 64`.
        guard_bits: u8,
    },
    /// A thread.
    Tcb {
        /// The thread.
        id: ObjectId,
    },
    /// An endpoint.
    Endpoint {
        /// The endpoint.
        id: ObjectId,
        /// Delivered to the receiver with each message; 0 means unbadged.
        badge: u64,
        /// What this cap allows.
        rights: CapRights,
    },
    /// A notification.
    Notification {
        /// The notification.
        id: ObjectId,
        /// Or-ed into the notification word on signal; 0 means unbadged.
        badge: u64,
        /// What this cap allows.
        rights: CapRights,
    },
    /// A frame.
    Frame {
        /// The frame.
        id: ObjectId,
        /// Its size (the object's).
        size: FrameSize,
        /// What a mapping made through this cap may allow.
        rights: CapRights,
        /// Made from `Unmapped` memory (the object's).
        secret: bool,
        /// This cap's mapping: each frame cap maps its frame at most once.
        mapped: Option<Mapping>,
    },
    /// A page table, page directory, PDPT or PML4. Never a frame.
    PagingStructure {
        /// The table.
        id: ObjectId,
        /// Its level (the object's).
        level: PagingLevel,
        /// Where it is mapped (never, for a PML4).
        mapped: Option<Mapping>,
    },
}

impl Cap {
    /// True for the empty cap.
    pub const fn is_null(&self) -> bool {
        matches!(self, Cap::Null)
    }

    /// The object the cap refers to.
    pub const fn object(&self) -> Option<ObjectId> {
        match *self {
            Cap::Null => None,
            Cap::Untyped { id }
            | Cap::CNode { id, .. }
            | Cap::Tcb { id }
            | Cap::Endpoint { id, .. }
            | Cap::Notification { id, .. }
            | Cap::Frame { id, .. }
            | Cap::PagingStructure { id, .. } => Some(id),
        }
    }

    /// The type of the object the cap refers to.
    pub const fn object_type(&self) -> Option<ObjectType> {
        Some(match *self {
            Cap::Null => return None,
            Cap::Untyped { .. } => ObjectType::Untyped,
            Cap::CNode { .. } => ObjectType::CNode,
            Cap::Tcb { .. } => ObjectType::Tcb,
            Cap::Endpoint { .. } => ObjectType::Endpoint,
            Cap::Notification { .. } => ObjectType::Notification,
            Cap::Frame {
                size: FrameSize::Small,
                ..
            } => ObjectType::Frame4K,
            Cap::Frame {
                size: FrameSize::Large,
                ..
            } => ObjectType::Frame2M,
            Cap::PagingStructure { level, .. } => match level {
                PagingLevel::Pt => ObjectType::PageTable,
                PagingLevel::Pd => ObjectType::PageDirectory,
                PagingLevel::Pdpt => ObjectType::Pdpt,
                PagingLevel::Pml4 => ObjectType::Pml4,
            },
        })
    }

    /// The cap's rights, for the caps that carry rights.
    pub const fn rights(&self) -> Option<CapRights> {
        match *self {
            Cap::Endpoint { rights, .. }
            | Cap::Notification { rights, .. }
            | Cap::Frame { rights, .. } => Some(rights),
            _ => None,
        }
    }

    /// The cap's badge, for endpoint and notification caps.
    pub const fn badge(&self) -> Option<u64> {
        match *self {
            Cap::Endpoint { badge, .. } | Cap::Notification { badge, .. } => Some(badge),
            _ => None,
        }
    }

    /// The cap's mapping, for mapped frame and paging-structure caps.
    pub const fn mapping(&self) -> Option<Mapping> {
        match *self {
            Cap::Frame { mapped, .. } | Cap::PagingStructure { mapped, .. } => mapped,
            _ => None,
        }
    }

    /// The cap as it is when the object is made: full rights, no badge, no
    /// guard, unmapped. `radix_bits` is the CNode's; `secret` the frame's.
    pub const fn original(ty: ObjectType, id: ObjectId, radix_bits: u8, secret: bool) -> Cap {
        let rights = CapRights::all();
        match ty {
            ObjectType::Untyped => Cap::Untyped { id },
            ObjectType::Tcb => Cap::Tcb { id },
            ObjectType::Endpoint => Cap::Endpoint {
                id,
                badge: 0,
                rights,
            },
            ObjectType::Notification => Cap::Notification {
                id,
                badge: 0,
                rights,
            },
            ObjectType::CNode => Cap::CNode {
                id,
                radix_bits,
                guard: 0,
                guard_bits: 0,
            },
            ObjectType::Frame4K | ObjectType::Frame2M => Cap::Frame {
                id,
                size: if matches!(ty, ObjectType::Frame4K) {
                    FrameSize::Small
                } else {
                    FrameSize::Large
                },
                rights,
                secret,
                mapped: None,
            },
            ObjectType::PageTable => Self::table(id, PagingLevel::Pt),
            ObjectType::PageDirectory => Self::table(id, PagingLevel::Pd),
            ObjectType::Pdpt => Self::table(id, PagingLevel::Pdpt),
            ObjectType::Pml4 => Self::table(id, PagingLevel::Pml4),
        }
    }

    const fn table(id: ObjectId, level: PagingLevel) -> Cap {
        Cap::PagingStructure {
            id,
            level,
            mapped: None,
        }
    }

    /// The object's fixed facts: the radix a CNode cap claims, the
    /// secrecy a frame cap claims.
    pub(crate) const fn radix_and_secret(&self) -> (u8, bool) {
        match *self {
            Cap::CNode { radix_bits, .. } => (radix_bits, false),
            Cap::Frame { secret, .. } => (0, secret),
            _ => (0, false),
        }
    }
}

const _: () = assert!(core::mem::size_of::<Cap>() <= 32);
