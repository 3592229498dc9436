//! Processes the kernel builds itself (the root task): a root CNode with
//! the fixed caps (`abi::InitCap`), a VSpace, a TCB, Untyped budgets, and
//! the paging structures and frames of the address space the kernel lays
//! out, each an object with its cap in the root CNode.
//!
//! Boot objects are charged to no budget: their memory is the kernel's
//! gift. Everything else the process does is charged to its Untyped caps.
//! The original caps of the root CNode, VSpace, TCB and Untypeds stay in
//! a keeper CNode outside the process's reach (see [`destroy`]); the
//! process holds copies.
//!
//! The root CNode's slots, in order (`abi::BootInfo` describes them):
//! the fixed caps, the Untyped caps, the caps of what the kernel mapped
//! (tables and frames, in the order made), then empty slots.

use super::{
    Body, Budget, FRAMES, Objects, Slots, TCB_CSPACE, TCB_IPC_BUFFER, TCB_SLOTS, TCB_VSPACE,
};
use crate::memory::frames::{self, Frame, FrameError};
use crate::memory::paging::{MapFlags, TableFrame, TableLevel, VSpace, VSpaceError};
use abi::object::UNTYPED_MIN_BITS;
use abi::{CapRights, InitCap, MAX_BOOT_UNTYPED, SlotRegion};
use cspace::{Cap, Mapping, ObjectId, SlotRef};

/// Why a process could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// No memory for an object.
    Memory(FrameError),
    /// No memory for a table.
    Table,
    /// The object table is full.
    Records,
    /// The root CNode is full.
    Slots,
    /// A mapping was refused (the layout overlaps itself).
    Map {
        /// Where.
        vaddr: u64,
        /// Why.
        error: VSpaceError,
    },
    /// Bytes could not be copied into a fresh frame.
    Copy,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Memory(error) => write!(f, "no memory for an object: {error:?}"),
            Self::Table => f.write_str("no memory for a page table"),
            Self::Records => f.write_str("the object table is full"),
            Self::Slots => f.write_str("the root CNode is full"),
            Self::Map { vaddr, error } => {
                write!(f, "the mapping at {vaddr:#x} was refused: {error:?}")
            }
            Self::Copy => f.write_str("bytes could not be copied into a fresh frame"),
        }
    }
}

/// A process's keeper: a CNode of the kernel's, outside the process's
/// CSpace, that holds its own cap and the original caps of the process's
/// root CNode, VSpace, TCB and Untypeds; the process gets copies. So
/// however the process moves, copies or loops its caps, revoking these
/// originals reaches every cap it has, and [`destroy`] cannot be escaped.
const KEEPER_RADIX: u8 = 5;
const KEEPER_SLOTS: usize = 1 << KEEPER_RADIX;
const KEEPER_SELF: u32 = 0;
pub const KEEPER_CNODE: u32 = 1;
const KEEPER_VSPACE: u32 = 2;
const KEEPER_TCB: u32 = 3;
const KEEPER_UNTYPED: u32 = 4;
const _: () = assert!(KEEPER_UNTYPED as usize + MAX_BOOT_UNTYPED <= KEEPER_SLOTS);

/// A process under construction, holding the object lock.
pub struct Builder<'a> {
    objects: &'a mut Objects,
    /// Its keeper.
    keeper: ObjectId,
    /// Its TCB.
    pub tcb: ObjectId,
    /// Its root CNode.
    pub cnode: ObjectId,
    /// Its VSpace.
    pub vspace: ObjectId,
    radix: u8,
    untyped: SlotRegion,
    untyped_bytes: [u64; MAX_BOOT_UNTYPED],
    /// The first slot of the mapped objects' caps.
    mappings_start: u64,
    /// The next free slot.
    next: u64,
    /// Tables made so far: level and base address.
    linked: heapless::Vec<(TableLevel, u64), 64>,
}

/// A built process: where its caps are.
#[derive(Clone, Copy, Debug)]
pub struct Process {
    /// Its keeper: a CNode outside its CSpace holding the original caps of
    /// its root CNode, VSpace, TCB and Untypeds.
    pub keeper: ObjectId,
    /// Its TCB.
    pub tcb: ObjectId,
    /// Its VSpace.
    pub vspace: ObjectId,
    /// The root CNode's radix.
    pub radix: u8,
    /// The Untyped caps' slots.
    pub untyped: SlotRegion,
    /// Each Untyped's bytes.
    pub untyped_bytes: [u64; MAX_BOOT_UNTYPED],
    /// The slots of the caps of what the kernel mapped.
    pub mappings: SlotRegion,
    /// The empty slots.
    pub empty: SlotRegion,
    /// Page-table pages its VSpace was built with, the root included.
    pub tables: usize,
}

impl<'a> Builder<'a> {
    /// Starts a process: a root CNode of `radix` (its cap guarded so that
    /// a slot's index is its CPtr at depth 64), a VSpace and a TCB, with
    /// copies of their caps in the fixed slots and the TCB's copies of
    /// the first two. The original caps go to the process's keeper.
    pub fn new(objects: &'a mut Objects, radix: u8) -> Result<Self, BuildError> {
        let keeper_slots =
            super::protection::new_slots(KEEPER_SLOTS).map_err(BuildError::Memory)?;
        let keeper = boot_object(objects, Body::CNode)?;
        let keeper_cap = Cap::original(abi::ObjectType::CNode, keeper, KEEPER_RADIX, false);
        insert(
            objects,
            SlotRef::new(keeper, KEEPER_SELF),
            keeper_cap,
            Some(keeper_slots),
        );
        let slots = super::protection::new_slots(1 << radix).map_err(BuildError::Memory)?;
        let cnode = boot_object(objects, Body::CNode)?;
        let root = Cap::CNode {
            id: cnode,
            radix_bits: radix,
            guard: 0,
            guard_bits: 64 - radix,
        };
        let kept = |index| SlotRef::new(keeper, index);
        insert(objects, kept(KEEPER_CNODE), root, Some(slots));
        copy(
            objects,
            kept(KEEPER_CNODE),
            slot(cnode, InitCap::InitThreadCNode),
        );
        let space = VSpace::new().map_err(|_| BuildError::Table)?;
        let vspace = boot_object(objects, Body::VSpace(space))?;
        let vspace_cap = Cap::original(abi::ObjectType::Pml4, vspace, 0, false);
        insert(objects, kept(KEEPER_VSPACE), vspace_cap, None);
        copy(
            objects,
            kept(KEEPER_VSPACE),
            slot(cnode, InitCap::InitThreadVSpace),
        );
        let thread = super::protection::new_thread().map_err(BuildError::Memory)?;
        let tcb_slots =
            super::protection::new_slots(TCB_SLOTS as usize).map_err(BuildError::Memory)?;
        let tcb = boot_object(objects, Body::Tcb(thread))?;
        insert(
            objects,
            kept(KEEPER_TCB),
            Cap::Tcb { id: tcb },
            Some(tcb_slots),
        );
        copy(
            objects,
            kept(KEEPER_TCB),
            slot(cnode, InitCap::InitThreadTcb),
        );
        copy(
            objects,
            slot(cnode, InitCap::InitThreadCNode),
            SlotRef::new(tcb, TCB_CSPACE),
        );
        copy(
            objects,
            slot(cnode, InitCap::InitThreadVSpace),
            SlotRef::new(tcb, TCB_VSPACE),
        );
        let first = abi::FIRST_UNTYPED_SLOT;
        Ok(Self {
            objects,
            keeper,
            tcb,
            cnode,
            vspace,
            radix,
            untyped: SlotRegion {
                start: first,
                end: first,
            },
            untyped_bytes: [0; MAX_BOOT_UNTYPED],
            mappings_start: first,
            next: first,
            linked: heapless::Vec::new(),
        })
    }

    /// Gives the process Untyped caps worth `bytes` in all: one per set bit
    /// of `bytes`, largest first, at most `MAX_BOOT_UNTYPED` of them and
    /// none below the smallest Untyped (what does not fit is not given).
    /// Call before mapping anything.
    pub fn give_budget(&mut self, bytes: u64) -> Result<(), BuildError> {
        let start = self.next;
        let mut count = 0;
        for bits in (UNTYPED_MIN_BITS..=abi::object::UNTYPED_MAX_BITS).rev() {
            if bytes & (1 << bits) == 0 || count == MAX_BOOT_UNTYPED {
                continue;
            }
            let at = self.take_slot()?;
            let id = boot_object(
                self.objects,
                Body::Untyped(Budget {
                    size_bits: bits,
                    used: 0,
                }),
            )?;
            let original = SlotRef::new(self.keeper, KEEPER_UNTYPED + count as u32);
            insert(self.objects, original, Cap::Untyped { id }, None);
            copy(self.objects, original, at);
            self.untyped_bytes[count] = 1 << bits;
            count += 1;
        }
        self.untyped = SlotRegion {
            start,
            end: self.next,
        };
        self.mappings_start = self.next;
        Ok(())
    }

    /// Maps a fresh zeroed 4 KiB frame at `vaddr` with `flags`, after
    /// `fill` has written into it; makes the tables the address needs.
    /// The frame's cap goes to the fixed slot `fixed`, or to the next
    /// free slot.
    pub fn map_frame(
        &mut self,
        vaddr: u64,
        flags: MapFlags,
        fixed: Option<InitCap>,
        fill: impl FnOnce(&mut Frame) -> Option<()>,
    ) -> Result<(), BuildError> {
        self.ensure_tables(vaddr)?;
        let at = match fixed {
            Some(cap) => slot(self.cnode, cap),
            None => self.take_slot()?,
        };
        let id = free_id(self.objects)?;
        let mut frame = frames::alloc_frame(0, FRAMES, true).map_err(BuildError::Memory)?;
        fill(&mut frame).ok_or(BuildError::Copy)?;
        self.space()
            .map_frame(vaddr, &frame, flags)
            .map_err(|error| BuildError::Map { vaddr, error })?;
        self.objects.place(id, Body::Frame(frame), 0);
        let mut rights = CapRights::READ;
        if flags.writable {
            rights |= CapRights::WRITE;
        }
        let cap = Cap::Frame {
            id,
            size: cspace::FrameSize::Small,
            rights,
            secret: false,
            mapped: Some(Mapping {
                vspace: self.vspace,
                vaddr,
            }),
        };
        insert(self.objects, at, cap, None);
        Ok(())
    }

    /// Makes the tables a 4 KiB page at `vaddr` needs, where missing.
    pub fn ensure_tables(&mut self, vaddr: u64) -> Result<(), BuildError> {
        for level in [TableLevel::Pdpt, TableLevel::Pd, TableLevel::Pt] {
            self.ensure_table(vaddr, level)?;
        }
        Ok(())
    }

    /// Makes the table of `level` for `vaddr` if the VSpace lacks it.
    fn ensure_table(&mut self, vaddr: u64, level: TableLevel) -> Result<(), BuildError> {
        let base = vaddr & !(level.covers() - 1);
        if self.linked.contains(&(level, base)) {
            return Ok(());
        }
        let at = self.take_slot()?;
        let id = free_id(self.objects)?;
        let table = TableFrame::new().map_err(|_| BuildError::Table)?;
        self.space()
            .link_table(base, level, &table)
            .map_err(|error| BuildError::Map { vaddr, error })?;
        self.objects.place(id, Body::Table(table), 0);
        self.linked
            .push((level, base))
            .map_err(|_| BuildError::Slots)?;
        let cap = Cap::PagingStructure {
            id,
            level: super::vspace::paging_level(level),
            mapped: Some(Mapping {
                vspace: self.vspace,
                vaddr: base,
            }),
        };
        insert(self.objects, at, cap, None);
        Ok(())
    }

    /// Makes the frame whose cap is in fixed slot `buffer` the thread's
    /// IPC buffer, at `vaddr`.
    pub fn set_ipc_buffer(&mut self, vaddr: u64, buffer: InitCap) {
        copy(
            self.objects,
            slot(self.cnode, buffer),
            SlotRef::new(self.tcb, TCB_IPC_BUFFER),
        );
        if let Some(Body::Tcb(thread)) = self
            .objects
            .table
            .get_mut(self.tcb.index())
            .map(|o| &mut o.body)
        {
            thread[0].ipc_buffer = vaddr;
        }
    }

    fn space(&self) -> &VSpace {
        match self.objects.body(self.vspace) {
            Some(Body::VSpace(space)) => space,
            _ => panic!("a boot process's VSpace is gone"),
        }
    }

    fn take_slot(&mut self) -> Result<SlotRef, BuildError> {
        if self.next >= 1 << self.radix {
            return Err(BuildError::Slots);
        }
        self.next += 1;
        Ok(SlotRef::new(self.cnode, (self.next - 1) as u32))
    }

    /// Where the process's caps are so far.
    pub fn layout(&self) -> Process {
        Process {
            keeper: self.keeper,
            tcb: self.tcb,
            vspace: self.vspace,
            radix: self.radix,
            untyped: self.untyped,
            untyped_bytes: self.untyped_bytes,
            mappings: SlotRegion {
                start: self.mappings_start,
                end: self.next,
            },
            empty: SlotRegion {
                start: self.next,
                end: 1 << self.radix,
            },
            tables: self.linked.len() + 1,
        }
    }
}

/// Destroys a process the kernel built, whatever it did to its own caps:
/// revokes each original its keeper holds, the Untypeds first (which
/// destroys everything the process made, cycles of CNodes included), then
/// deletes them (the root CNode goes, and with it every cap in it: its
/// image's tables and frames), and the keeper last. Call with the process
/// loaded nowhere.
pub fn destroy(objects: &mut Objects, process: &Process) {
    if objects.current(crate::arch::percpu::index()) == Some(process.tcb) {
        objects.set_current(None);
    }
    let (caps, mut finaliser) = objects.split();
    let kept = |index| SlotRef::new(process.keeper, index);
    let untyped = KEEPER_UNTYPED..KEEPER_UNTYPED + MAX_BOOT_UNTYPED as u32;
    let order = untyped.chain([KEEPER_TCB, KEEPER_CNODE, KEEPER_VSPACE]);
    for index in order.clone() {
        // The keeper is the kernel's: its slots exist, so neither fails.
        let _ = caps.revoke(kept(index), &mut finaliser);
    }
    for index in order.chain([KEEPER_SELF]) {
        let _ = caps.delete(kept(index), &mut finaliser);
    }
}

/// How many objects are alive.
pub fn live_objects(objects: &Objects) -> u32 {
    objects.caps.summary().objects
}

/// Whether the capability space keeps its invariants
/// (`cspace::CSpace::check`: a walk of every slot and record, seconds
/// under TCG at 4,096 records).
pub fn check_caps(objects: &Objects) -> Result<(), cspace::Violation> {
    objects.caps.check()
}

fn slot(cnode: ObjectId, cap: InitCap) -> SlotRef {
    SlotRef::new(cnode, cap.slot() as u32)
}

/// A free object id.
fn free_id(objects: &Objects) -> Result<ObjectId, BuildError> {
    objects
        .free_ids(1)
        .and_then(|ids| ids.first().copied())
        .ok_or(BuildError::Records)
}

/// Records a boot object's body (charged to nobody) under a free id.
fn boot_object(objects: &mut Objects, body: Body) -> Result<ObjectId, BuildError> {
    let id = free_id(objects)?;
    objects.place(id, body, 0);
    Ok(id)
}

/// Inserts the original cap of a boot object just placed. The builder
/// checked the slot and the cap: a refusal is a kernel bug.
fn insert(objects: &mut Objects, at: SlotRef, cap: Cap, memory: Option<Slots>) {
    if let Err(refused) = objects.caps.insert_original(at, cap, memory) {
        panic!("a boot cap was refused: {:?}", refused.error);
    }
}

/// Copies the cap in `from` to `to` with all its rights.
fn copy(objects: &mut Objects, from: SlotRef, to: SlotRef) {
    if let Err(error) = objects.caps.copy(from, to, CapRights::all()) {
        panic!("copying a boot cap into its TCB failed: {error:?}");
    }
}
