//! What the root task is given when it starts.
//!
//! The kernel starts the root task with `rdi` holding the virtual address
//! of its boot-info frame, which holds a [`BootInfo`]. The root CNode
//! (radix `root_cnode_radix`) has fixed caps in its first slots
//! ([`InitCap`]), then the Untyped caps, then the caps of the paging
//! structures and frames the kernel mapped for it, then empty slots to the
//! end. Its
//! cap carries a guard of `64 - radix` zero bits, so a slot's index is its
//! [`CPtr`] at depth 64.

use crate::{CPtr, DecodeError};

/// The caps the root CNode holds at fixed slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u64)]
pub enum InitCap {
    /// Always empty, so that CPtr 0 names no capability.
    Null = 0,
    /// The root task's thread.
    InitThreadTcb = 1,
    /// The root CNode itself.
    InitThreadCNode = 2,
    /// The root task's VSpace (its PML4).
    InitThreadVSpace = 3,
    /// The frame holding the [`BootInfo`].
    BootInfoFrame = 4,
    /// The frame holding the root task's IPC buffer.
    InitThreadIpcBuffer = 5,
}

/// Slot of the first Untyped cap.
pub const FIRST_UNTYPED_SLOT: u64 = 6;

impl InitCap {
    /// Every fixed slot, in order.
    pub const ALL: [InitCap; 6] = [
        InitCap::Null,
        InitCap::InitThreadTcb,
        InitCap::InitThreadCNode,
        InitCap::InitThreadVSpace,
        InitCap::BootInfoFrame,
        InitCap::InitThreadIpcBuffer,
    ];

    /// The slot's index in the root CNode.
    pub const fn slot(self) -> u64 {
        self as u64
    }

    /// The CPtr that names the slot (at depth 64).
    pub const fn cptr(self) -> CPtr {
        CPtr(self as u64)
    }
}

const _: () = assert!(InitCap::InitThreadIpcBuffer as u64 + 1 == FIRST_UNTYPED_SLOT);

/// Most Untyped caps the root task is given.
pub const MAX_BOOT_UNTYPED: usize = 16;

/// The root CNode slots `start..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SlotRegion {
    /// First slot.
    pub start: u64,
    /// One past the last slot.
    pub end: u64,
}

impl SlotRegion {
    /// How many slots; 0 if `end` is not past `start`.
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True if the region has no slot.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if `slot` is in the region.
    pub const fn contains(&self, slot: u64) -> bool {
        self.start <= slot && slot < self.end
    }
}

/// The boot-info frame's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BootInfo {
    /// [`BootInfo::MAGIC`]: a 48-bit magic over a 16-bit version.
    pub magic: u64,
    /// Which kernel node this is (0 on a single machine).
    pub node_id: u64,
    /// How many nodes there are.
    pub node_count: u64,
    /// Virtual address of the root task's IPC buffer.
    pub ipc_buffer: u64,
    /// The root CNode's radix.
    pub root_cnode_radix: u64,
    /// The root CNode's empty slots.
    pub empty: SlotRegion,
    /// The root CNode's slots holding Untyped caps, in budget order.
    pub untyped: SlotRegion,
    /// Budget in bytes of each Untyped cap: entry `n` is slot
    /// `untyped.start + n`. Entries past `untyped.len()` are 0.
    pub untyped_bytes: [u64; MAX_BOOT_UNTYPED],
    /// First virtual address of the root task's image.
    pub image_start: u64,
    /// One past the last virtual address of the root task's image.
    pub image_end: u64,
    /// The root CNode's slots holding the caps of what the kernel mapped
    /// for the root task (its paging structures and frames, in the order
    /// made; the IPC buffer's and the boot info's frames are fixed caps).
    /// Each cap reads mapped, so the root task can unmap and reuse them.
    pub mappings: SlotRegion,
}

const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);

impl BootInfo {
    /// Format version; bump on any layout change.
    pub const VERSION: u64 = 2;

    /// "uKBOOT" over the version.
    pub const MAGIC: u64 = 0x754b_424f_4f54 << 16 | Self::VERSION;

    /// Checks the magic and version, and that the slot regions are in
    /// order within the root CNode: fixed caps, Untyped caps (at most
    /// [`MAX_BOOT_UNTYPED`]), the caps of what the kernel mapped, then
    /// empty slots.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.magic != Self::MAGIC {
            return Err(DecodeError::BootInfoMagic(self.magic));
        }
        let slots = 1u64
            .checked_shl(self.root_cnode_radix as u32)
            .filter(|_| self.root_cnode_radix < 64)
            .ok_or(DecodeError::BootInfoLayout)?;
        let ordered = self.untyped.start == FIRST_UNTYPED_SLOT
            && self.untyped.start <= self.untyped.end
            && self.untyped.len() <= MAX_BOOT_UNTYPED as u64
            && self.mappings.start == self.untyped.end
            && self.mappings.start <= self.mappings.end
            && self.empty.start == self.mappings.end
            && self.empty.start <= self.empty.end
            && self.empty.end <= slots
            && self.untyped_bytes[self.untyped.len() as usize..]
                .iter()
                .all(|&bytes| bytes == 0)
            && self.node_id < self.node_count
            && self.image_start <= self.image_end;
        if ordered {
            Ok(())
        } else {
            Err(DecodeError::BootInfoLayout)
        }
    }

    /// The budget of each Untyped cap, with its slot.
    pub fn untyped_budgets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let count = (self.untyped.len() as usize).min(MAX_BOOT_UNTYPED);
        (self.untyped.start..).zip(self.untyped_bytes[..count].iter().copied())
    }
}
