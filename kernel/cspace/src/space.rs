//! The storage: slots, object records and the derivation tree's links.
//!
//! Invariants, kept by every public operation and checked by
//! [`CSpace::check`]:
//! - an empty slot has no links; a non-empty one refers to a live object
//!   of the cap's type (and radix, secrecy);
//! - the derivation tree is a forest: a cap's parent is a non-empty slot,
//!   siblings form a doubly linked list headed at the parent's
//!   `first_child`, roots have no siblings, and no cap is its own
//!   ancestor;
//! - an object's record counts the caps that refer to it and the live
//!   objects charged to it; an object is live exactly while one of the two
//!   is non-zero. Between operations no object is half destroyed;
//! - a mapping recorded in a cap names a live PML4.

use core::marker::PhantomData;
use core::ops::DerefMut;

use abi::object::{CNODE_MAX_RADIX, CNODE_MIN_RADIX, SLOT_SIZE_BITS};
use abi::{Error, LookupFailure, ObjectType};

use crate::cap::{Cap, ObjectId, PagingLevel, SlotRef};

/// A link of the derivation tree: a slot, or none. Eight bytes (no
/// `Option` tag), so that a slot stays within its 64-byte charge.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Link {
    object: u32,
    index: u32,
}

impl Link {
    pub(crate) const NONE: Link = Link {
        object: u32::MAX,
        index: 0,
    };

    pub(crate) const fn to(at: SlotRef) -> Link {
        Link {
            object: at.object.0,
            index: at.index,
        }
    }

    pub(crate) const fn get(self) -> Option<SlotRef> {
        if self.object == u32::MAX {
            None
        } else {
            Some(SlotRef {
                object: ObjectId(self.object),
                index: self.index,
            })
        }
    }
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.get() {
            Some(at) => write!(f, "{}:{}", at.object.0, at.index),
            None => f.write_str("-"),
        }
    }
}

/// A capability slot: a cap and its place in the derivation tree. The
/// kernel supplies slot memory filled with [`Slot::EMPTY`]; the
/// [`CSpace`] owns it from then until finalisation hands it back, so no
/// one else writes a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub(crate) cap: Cap,
    pub(crate) parent: Link,
    pub(crate) first_child: Link,
    pub(crate) next: Link,
    pub(crate) prev: Link,
}

const _: () = assert!(core::mem::size_of::<Slot>() <= 1 << SLOT_SIZE_BITS);

impl Slot {
    /// An empty slot, outside the tree.
    pub const EMPTY: Slot = Slot {
        cap: Cap::Null,
        parent: Link::NONE,
        first_child: Link::NONE,
        next: Link::NONE,
        prev: Link::NONE,
    };

    /// The cap in the slot ([`Cap::Null`] if empty).
    pub const fn cap(&self) -> &Cap {
        &self.cap
    }
}

/// What the kernel does when caps and objects go.
pub trait Finalise<M> {
    /// A mapped cap is being deleted: remove its mapping. Called for every
    /// mapped frame cap deleted, and for a mapped paging-structure cap
    /// when it is the table's last cap (copies of a table share its one
    /// mapping). Called before the object, if dying, is finalised. The
    /// mapping's VSpace is live: when a PML4 is finalised, every mapping
    /// into it is forgotten first (the caps read unmapped), and its
    /// finalisation must tear the whole space down.
    fn unmap(&mut self, cap: &Cap);

    /// The object is gone: no cap refers to it, and (for an Untyped) every
    /// object charged to it has been finalised before. Free it and refund
    /// its charge to `charged_to` (`None` for an object made at boot).
    /// `object` is its cap as made ([`Cap::original`]); `memory` is the
    /// slot memory lent at insertion, every slot empty again. Called once
    /// per object; its id is free from now on.
    fn finalise(&mut self, object: &Cap, charged_to: Option<ObjectId>, memory: Option<M>);
}

/// One object's record: its type, counts and slot memory, a few dozen
/// bytes. Opaque: the kernel only makes free ones, to fill the storage it
/// hands to [`CSpace::new`]. A free id's record is [`ObjectRecord::FREE`]
/// in every field (inserts and destruction write whole records), so `ty`
/// alone tells whether a record is free.
#[derive(Debug)]
pub struct ObjectRecord<M> {
    /// `None`: the id is free.
    ty: Option<ObjectType>,
    secret: bool,
    /// Caps that refer to the object.
    caps: u32,
    /// Live objects charged to this one (an Untyped's retyped objects).
    children: u32,
    /// Kept alive for the length of an operation (revoke pins the slot
    /// holder it works in).
    pins: u32,
    /// Last cap gone, slots still being emptied.
    dying: bool,
    next_dying: Option<ObjectId>,
    /// Slots below this index are known empty while dying.
    scan: u32,
    charged_to: Option<ObjectId>,
    memory: Option<M>,
}

impl<M> ObjectRecord<M> {
    /// The record of a free id. Each can be written in place, so the
    /// storage never passes through the stack whole.
    pub const FREE: Self = ObjectRecord {
        ty: None,
        secret: false,
        caps: 0,
        children: 0,
        pins: 0,
        dying: false,
        next_dying: None,
        scan: 0,
        charged_to: None,
        memory: None,
    };

    fn is_free(&self) -> bool {
        self.ty.is_none()
    }

    fn unreferenced(&self) -> bool {
        self.ty.is_some() && self.caps == 0 && self.children == 0 && self.pins == 0
    }
}

/// Why [`CSpace::insert_child`] or [`CSpace::insert_original`] refused a
/// new cap: each is a kernel bug, since the kernel checks a retype before
/// it makes anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The cap is [`Cap::Null`].
    NullCap,
    /// The id is not below the capacity.
    IdOutOfRange,
    /// The id names a live object (inserts make new objects).
    IdInUse,
    /// The cap breaks its own rules: CNode radix out of range, a guard not
    /// fitting, a PML4 mapped, a retyped object already mapped, a boot
    /// object mapped into something that is no live PML4.
    BadCap,
    /// Slot memory missing for a CNode, of the wrong length, not empty, or
    /// given for an object that holds no slots.
    BadMemory,
    /// The parent slot holds no Untyped cap.
    NotUntyped,
    /// A slot named does not exist.
    NoSuchSlot,
    /// The destination slot is not empty.
    NotEmpty,
}

/// An insertion refused, with the slot memory handed back.
#[derive(Debug)]
pub struct Refused<M> {
    /// Why.
    pub error: InsertError,
    /// The memory the insertion was given.
    pub memory: Option<M>,
}

/// Counts over the whole CSpace, cheap to compare: a refused operation
/// must leave them unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Non-empty slots.
    pub caps: u32,
    /// Non-empty slots by the type of object they refer to
    /// (`ObjectType::index`).
    pub caps_by_type: [u32; ObjectType::COUNT],
    /// Live objects.
    pub objects: u32,
    /// Live objects by type.
    pub objects_by_type: [u32; ObjectType::COUNT],
    /// Derivation-tree edges (caps with a parent).
    pub edges: u32,
}

/// A broken invariant found by [`CSpace::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub what: &'static str,
    /// The slot where it was found.
    pub slot: Option<SlotRef>,
    /// The object concerned.
    pub object: Option<ObjectId>,
}

/// Every capability slot and object record, over record storage `R` and
/// slot memory `M`, both supplied by the kernel (see the crate doc).
pub struct CSpace<M, R> {
    /// One record per object id; its length is the capacity.
    objects: R,
    /// Top of the stack of dying slot holders (linked through
    /// `next_dying`); empty between operations.
    dying: Option<ObjectId>,
    /// `M` is named only through `R`'s target.
    slots: PhantomData<M>,
}

/// The failure a slot reference that names no slot gives: the object
/// holds no slots, as if a lookup had hit a root that is no CNode.
pub(crate) const fn no_slot(source: bool) -> Error {
    Error::FailedLookup {
        source,
        failure: LookupFailure::InvalidRoot,
    }
}

impl<M, R> CSpace<M, R>
where
    M: DerefMut<Target = [Slot]>,
    R: DerefMut<Target = [ObjectRecord<M>]>,
{
    /// No objects, no slots, over `records`: one per object id, so the
    /// capacity is `records.len()`. `records` must deref to the same
    /// records every time, as slot memory must. Refused, and handed back,
    /// unless every record is [`ObjectRecord::FREE`] (storage a dropped
    /// CSpace left may hold live records naming each other) and there are
    /// fewer than `u32::MAX` (ids are `u32`, and `u32::MAX` marks no link).
    pub fn new(records: R) -> Result<Self, R> {
        if records.len() >= u32::MAX as usize || !records.iter().all(ObjectRecord::is_free) {
            return Err(records);
        }
        Ok(CSpace {
            objects: records,
            dying: None,
            slots: PhantomData,
        })
    }

    /// The number of object ids: every id is below it.
    pub fn capacity(&self) -> usize {
        self.objects.len()
    }

    // ---- reading ----

    pub(crate) fn slot(&self, at: SlotRef) -> Option<&Slot> {
        self.objects
            .get(at.object.index())?
            .memory
            .as_deref()?
            .get(at.index as usize)
    }

    fn slot_mut(&mut self, at: SlotRef) -> Option<&mut Slot> {
        self.objects
            .get_mut(at.object.index())?
            .memory
            .as_deref_mut()?
            .get_mut(at.index as usize)
    }

    /// A slot a tree link or a checked reference names: it exists, or an
    /// invariant is broken.
    pub(crate) fn node(&mut self, at: SlotRef) -> &mut Slot {
        self.slot_mut(at)
            .expect("a derivation link names a slot that does not exist")
    }

    /// Where the cap of slot `at` lies in the memory lent for it; `None`
    /// if there is no such slot. For attack tests, which write it behind
    /// the CSpace's back as a stray kernel write would.
    pub fn cap_address(&self, at: SlotRef) -> Option<*const Cap> {
        self.slot(at).map(|slot| &raw const slot.cap)
    }

    /// The cap in slot `at`; `None` if there is no such slot.
    pub fn cap(&self, at: SlotRef) -> Option<Cap> {
        self.slot(at).map(|slot| slot.cap)
    }

    /// The slot whose cap the cap in `at` was derived from.
    pub fn parent(&self, at: SlotRef) -> Option<SlotRef> {
        self.slot(at)?.parent.get()
    }

    /// The slots whose caps were derived from the cap in `at`.
    pub fn children(&self, at: SlotRef) -> impl Iterator<Item = SlotRef> + '_ {
        let first = self.slot(at).and_then(|slot| slot.first_child.get());
        core::iter::successors(first, move |&child| {
            self.slot(child).and_then(|slot| slot.next.get())
        })
    }

    /// Every non-empty slot, by object then index.
    pub fn caps(&self) -> impl Iterator<Item = (SlotRef, Cap)> + '_ {
        self.objects.iter().enumerate().flat_map(|(id, object)| {
            object
                .memory
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .filter(|(_, slot)| !slot.cap.is_null())
                .map(move |(index, slot)| {
                    (SlotRef::new(ObjectId(id as u32), index as u32), slot.cap)
                })
        })
    }

    /// The type of live object `id`.
    pub fn object_type(&self, id: ObjectId) -> Option<ObjectType> {
        self.objects.get(id.index())?.ty
    }

    /// True if `id` names a live object.
    pub fn is_live(&self, id: ObjectId) -> bool {
        self.object_type(id).is_some()
    }

    /// True if `id` names a live PML4.
    pub fn is_vspace(&self, id: ObjectId) -> bool {
        self.object_type(id) == Some(ObjectType::Pml4)
    }

    /// How many caps refer to object `id`.
    pub fn cap_count(&self, id: ObjectId) -> u32 {
        self.objects.get(id.index()).map_or(0, |object| object.caps)
    }

    /// The Untyped object `id` was charged to.
    pub fn charged_to(&self, id: ObjectId) -> Option<ObjectId> {
        self.objects.get(id.index())?.charged_to
    }

    /// True if the cap in `at` is the only cap to its object (seL4's
    /// "final" cap: unmapping a page table needs it).
    pub fn is_final(&self, at: SlotRef) -> bool {
        self.cap(at)
            .and_then(|cap| cap.object())
            .is_some_and(|id| self.cap_count(id) == 1)
    }

    /// The number of slots object `id` holds (0 if none).
    pub fn slot_count(&self, id: ObjectId) -> usize {
        self.objects
            .get(id.index())
            .and_then(|object| object.memory.as_deref())
            .map_or(0, <[Slot]>::len)
    }

    /// Counts of caps, objects and tree edges.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for object in self.objects.iter() {
            if let Some(ty) = object.ty {
                summary.objects += 1;
                summary.objects_by_type[ty.index()] += 1;
            }
            for slot in object.memory.as_deref().unwrap_or(&[]) {
                if let Some(ty) = slot.cap.object_type() {
                    summary.caps += 1;
                    summary.caps_by_type[ty.index()] += 1;
                    summary.edges += u32::from(slot.parent.get().is_some());
                }
            }
        }
        summary
    }

    // ---- making objects ----

    /// Puts the cap of a new object made at boot in `dest`, as a root of
    /// the derivation tree, charged to no Untyped. `dest` may be a slot of
    /// the new object itself (the root CNode holds its own cap). `memory`
    /// is the slot memory for a CNode (`1 << radix` empty slots) or,
    /// optionally, a TCB. Boot caps may be mapped already.
    pub fn insert_original(
        &mut self,
        dest: SlotRef,
        cap: Cap,
        memory: Option<M>,
    ) -> Result<(), Refused<M>> {
        self.insert_new(None, dest, cap, memory)
    }

    /// Puts the cap of an object just retyped from the Untyped cap in
    /// `parent` into empty slot `dest`, as a child of `parent`; the object
    /// is charged to that Untyped, which stays alive until the object is
    /// finalised. `memory` as for [`CSpace::insert_original`]. The kernel
    /// checks the retype (type, sizes, budget, every destination) before
    /// it calls this, so a refusal here is a kernel bug.
    pub fn insert_child(
        &mut self,
        parent: SlotRef,
        dest: SlotRef,
        cap: Cap,
        memory: Option<M>,
    ) -> Result<(), Refused<M>> {
        self.insert_new(Some(parent), dest, cap, memory)
    }

    fn insert_new(
        &mut self,
        parent: Option<SlotRef>,
        dest: SlotRef,
        cap: Cap,
        memory: Option<M>,
    ) -> Result<(), Refused<M>> {
        let (ty, id, charged_to) = match self.check_new(parent, dest, &cap, memory.as_deref()) {
            Ok(checked) => checked,
            Err(error) => return Err(Refused { error, memory }),
        };
        let object = &mut self.objects[id.index()];
        *object = ObjectRecord {
            ty: Some(ty),
            secret: cap.radix_and_secret().1,
            caps: 1,
            charged_to,
            memory,
            ..ObjectRecord::FREE
        };
        if let Some(untyped) = charged_to {
            self.objects[untyped.index()].children += 1;
        }
        *self.node(dest) = Slot { cap, ..Slot::EMPTY };
        if let Some(parent) = parent {
            self.link_child(parent, dest);
        }
        Ok(())
    }

    fn check_new(
        &self,
        parent: Option<SlotRef>,
        dest: SlotRef,
        cap: &Cap,
        memory: Option<&[Slot]>,
    ) -> Result<(ObjectType, ObjectId, Option<ObjectId>), InsertError> {
        let (Some(ty), Some(id)) = (cap.object_type(), cap.object()) else {
            return Err(InsertError::NullCap);
        };
        let record = self
            .objects
            .get(id.index())
            .ok_or(InsertError::IdOutOfRange)?;
        if record.ty.is_some() {
            return Err(InsertError::IdInUse);
        }
        let mapped_well = match cap.mapping() {
            None => true,
            Some(mapping) => parent.is_none() && self.is_vspace(mapping.vspace),
        };
        if !well_formed(cap) || !mapped_well {
            return Err(InsertError::BadCap);
        }
        let memory_fits = match (cap, memory) {
            (Cap::CNode { radix_bits, .. }, Some(slots)) => slots.len() == 1 << radix_bits,
            (Cap::CNode { .. }, None) => false,
            (Cap::Tcb { .. }, Some(slots)) => slots.len() <= u32::MAX as usize,
            (_, Some(_)) => false,
            (_, None) => true,
        };
        if !memory_fits || !memory.unwrap_or(&[]).iter().all(|s| *s == Slot::EMPTY) {
            return Err(InsertError::BadMemory);
        }
        let charged_to = match parent {
            None => None,
            Some(parent) => match self.slot(parent).map(|slot| slot.cap) {
                Some(Cap::Untyped { id }) => Some(id),
                Some(_) => return Err(InsertError::NotUntyped),
                None => return Err(InsertError::NoSuchSlot),
            },
        };
        if dest.object == id {
            // Into the new object itself (the root CNode's own cap).
            if dest.index as usize >= memory.map_or(0, <[Slot]>::len) {
                return Err(InsertError::NoSuchSlot);
            }
        } else {
            match self.slot(dest) {
                None => return Err(InsertError::NoSuchSlot),
                Some(slot) if !slot.cap.is_null() => return Err(InsertError::NotEmpty),
                Some(_) => {}
            }
        }
        Ok((ty, id, charged_to))
    }

    /// Counts one more cap to live object `id`.
    pub(crate) fn count_cap(&mut self, id: ObjectId) {
        self.objects[id.index()].caps += 1;
    }

    // ---- the tree's links ----

    /// Makes the (linkless) cap in `child` the first child of `parent`.
    pub(crate) fn link_child(&mut self, parent: SlotRef, child: SlotRef) {
        let first = self.node(parent).first_child;
        let node = self.node(child);
        node.parent = Link::to(parent);
        node.prev = Link::NONE;
        node.next = first;
        if let Some(first) = first.get() {
            self.node(first).prev = Link::to(child);
        }
        self.node(parent).first_child = Link::to(child);
    }

    /// Takes the cap in `at` out of the tree, leaving its links clear. Its
    /// children take its place under its parent (or become roots).
    fn unlink(&mut self, at: SlotRef) {
        let node = *self.node(at);
        let parent = node.parent.get();
        // Re-parent the children, remembering the last one.
        let mut last = None;
        let mut child = node.first_child.get();
        while let Some(at_child) = child {
            let slot = self.node(at_child);
            slot.parent = node.parent;
            child = slot.next.get();
            if parent.is_none() {
                // Roots have no siblings.
                slot.next = Link::NONE;
                slot.prev = Link::NONE;
            } else {
                last = Some(at_child);
            }
        }
        // The children's run (if they stay in a list) replaces the node.
        let (head, tail) = match last {
            Some(last) => (node.first_child, Link::to(last)),
            None => (node.next, node.prev),
        };
        match node.prev.get() {
            Some(prev) => self.node(prev).next = head,
            None => {
                if let Some(parent) = parent {
                    self.node(parent).first_child = head;
                }
            }
        }
        if let Some(next) = node.next.get() {
            self.node(next).prev = tail;
        }
        if let Some(last) = last {
            self.node(last).next = node.next;
            if let Some(first) = node.first_child.get() {
                self.node(first).prev = node.prev;
            }
        }
        let slot = self.node(at);
        slot.parent = Link::NONE;
        slot.first_child = Link::NONE;
        slot.next = Link::NONE;
        slot.prev = Link::NONE;
    }

    /// Moves the cap in `src`, with its place in the tree, to the empty
    /// slot `dest`.
    pub(crate) fn relocate(&mut self, src: SlotRef, dest: SlotRef) {
        let node = *self.node(src);
        *self.node(dest) = node;
        *self.node(src) = Slot::EMPTY;
        match node.prev.get() {
            Some(prev) => self.node(prev).next = Link::to(dest),
            None => {
                if let Some(parent) = node.parent.get() {
                    self.node(parent).first_child = Link::to(dest);
                }
            }
        }
        if let Some(next) = node.next.get() {
            self.node(next).prev = Link::to(dest);
        }
        let mut child = node.first_child.get();
        while let Some(at) = child {
            let slot = self.node(at);
            slot.parent = Link::to(dest);
            child = slot.next.get();
        }
    }

    // ---- deleting ----

    /// Empties slot `at`. Its children move up to its parent. If it was the
    /// last cap to its object, the object is destroyed: a slot holder's
    /// caps are deleted first (which may destroy more), then
    /// [`Finalise::finalise`] is called, then the Untyped it was charged to
    /// is destroyed too if that was its last reason to live. An empty slot
    /// is fine. A reference to no slot gives `FailedLookup` (`InvalidRoot`).
    pub fn delete<F: Finalise<M>>(&mut self, at: SlotRef, fin: &mut F) -> Result<(), Error> {
        let slot = self.slot(at).ok_or(no_slot(false))?;
        if !slot.cap.is_null() {
            self.remove(at, fin);
            self.drain(fin);
        }
        Ok(())
    }

    /// Deletes every cap derived from the cap in `at` (its descendants),
    /// as [`CSpace::delete`] does, but not the cap itself. The slot's
    /// holder is kept alive meanwhile, so that the revoked cap stays where
    /// it is even if a descendant was the holder's last cap; the holder is
    /// destroyed afterwards if so.
    pub fn revoke<F: Finalise<M>>(&mut self, at: SlotRef, fin: &mut F) -> Result<(), Error> {
        let slot = self.slot(at).ok_or(no_slot(false))?;
        if slot.cap.is_null() {
            return Ok(());
        }
        let holder = at.object.index();
        self.objects[holder].pins += 1;
        // Delete a leaf at a time: a leaf has no children to re-parent.
        while let Some(mut leaf) = self.node(at).first_child.get() {
            while let Some(child) = self.node(leaf).first_child.get() {
                leaf = child;
            }
            self.remove(leaf, fin);
            self.drain(fin);
        }
        self.objects[holder].pins -= 1;
        self.retire(at.object, fin);
        self.drain(fin);
        Ok(())
    }

    /// Removes the (non-empty) cap in `at`, and starts destroying its
    /// object if that was its last cap.
    fn remove<F: Finalise<M>>(&mut self, at: SlotRef, fin: &mut F) {
        let cap = self.node(at).cap;
        let Some(id) = cap.object() else {
            return;
        };
        let object = &mut self.objects[id.index()];
        object.caps -= 1;
        let last = object.caps == 0;
        // Each frame cap has its own mapping; table copies share one.
        if cap.mapping().is_some() && (matches!(cap, Cap::Frame { .. }) || last) {
            fin.unmap(&cap);
        }
        self.unlink(at);
        *self.node(at) = Slot::EMPTY;
        self.retire(id, fin);
    }

    /// Destroys object `id` if nothing keeps it alive: at once if it holds
    /// no caps, else it goes on the dying stack for [`CSpace::drain`].
    fn retire<F: Finalise<M>>(&mut self, id: ObjectId, fin: &mut F) {
        let object = &mut self.objects[id.index()];
        if !object.unreferenced() || object.dying {
            return;
        }
        let holds_caps = object
            .memory
            .as_deref()
            .is_some_and(|slots| slots.iter().any(|slot| !slot.cap.is_null()));
        if holds_caps {
            object.dying = true;
            object.scan = 0;
            object.next_dying = self.dying;
            self.dying = Some(id);
        } else {
            self.destroy(id, fin);
        }
    }

    /// Empties the dying slot holders, innermost first, destroying each
    /// once it is empty. Iterative: a chain of CNodes each holding the
    /// last cap to the next costs no stack.
    fn drain<F: Finalise<M>>(&mut self, fin: &mut F) {
        while let Some(id) = self.dying {
            let object = &mut self.objects[id.index()];
            let slots = object.memory.as_deref().unwrap_or(&[]);
            let full = (object.scan as usize..slots.len()).find(|&i| !slots[i].cap.is_null());
            match full {
                Some(index) => {
                    object.scan = index as u32 + 1;
                    self.remove(SlotRef::new(id, index as u32), fin);
                }
                None => {
                    self.dying = object.next_dying.take();
                    object.dying = false;
                    self.destroy(id, fin);
                }
            }
        }
    }

    /// Finalises object `id` (unreferenced, holding no caps), then the
    /// Untyped it was charged to if that was its last reason to live, and
    /// so on up.
    fn destroy<F: Finalise<M>>(&mut self, id: ObjectId, fin: &mut F) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            let object = core::mem::replace(&mut self.objects[id.index()], ObjectRecord::FREE);
            let Some(ty) = object.ty else {
                return;
            };
            if ty == ObjectType::Pml4 {
                self.forget_mappings_into(id);
            }
            let radix = object
                .memory
                .as_deref()
                .map_or(0, |s| s.len().trailing_zeros());
            let cap = Cap::original(ty, id, radix as u8, object.secret);
            fin.finalise(&cap, object.charged_to, object.memory);
            if let Some(untyped) = object.charged_to {
                let record = &mut self.objects[untyped.index()];
                record.children -= 1;
                // An Untyped holds no slots, so it never needs draining.
                if record.unreferenced() && !record.dying {
                    next = Some(untyped);
                }
            }
        }
    }

    /// A VSpace is going: every cap mapped into it reads unmapped from now
    /// on, so that no later unmap names a dead (or reused) PML4 id. The
    /// kernel tears the whole space down when it finalises the PML4. One
    /// pass over every slot: VSpaces go rarely.
    fn forget_mappings_into(&mut self, vspace: ObjectId) {
        for object in self.objects.iter_mut() {
            for slot in object.memory.as_deref_mut().unwrap_or(&mut []) {
                if let Cap::Frame { mapped, .. } | Cap::PagingStructure { mapped, .. } =
                    &mut slot.cap
                    && mapped.is_some_and(|m| m.vspace == vspace)
                {
                    *mapped = None;
                }
            }
        }
    }

    // ---- checking ----

    /// Checks every invariant of the module doc; for tests and debug
    /// builds (it takes time quadratic in the number of caps, and little
    /// stack).
    pub fn check(&self) -> Result<(), Violation> {
        let fail = |what, slot, object| Violation { what, slot, object };
        if self.dying.is_some() {
            return Err(fail("an object is left half destroyed", None, self.dying));
        }
        let mut total_slots = 0usize;
        for (id, object) in self.objects.iter().enumerate() {
            let id = ObjectId(id as u32);
            let slots = object.memory.as_deref().unwrap_or(&[]);
            total_slots += slots.len();
            if object.ty.is_none() {
                if object.caps != 0 || object.children != 0 || object.memory.is_some() {
                    return Err(fail("a free id has a record", None, Some(id)));
                }
                continue;
            }
            if object.caps == 0 && object.children == 0 {
                return Err(fail("a live object has no reason to live", None, Some(id)));
            }
            if object.pins != 0 || object.dying {
                return Err(fail("an object is left pinned or dying", None, Some(id)));
            }
            if let Some(untyped) = object.charged_to
                && self.object_type(untyped) != Some(ObjectType::Untyped)
            {
                return Err(fail("charged to no live Untyped", None, Some(id)));
            }
            let holds = match object.ty {
                Some(ObjectType::CNode) => object.memory.is_some() && slots.len().is_power_of_two(),
                Some(ObjectType::Tcb) => true,
                _ => object.memory.is_none(),
            };
            if !holds {
                return Err(fail("slot memory does not fit the type", None, Some(id)));
            }
        }
        let mut edges_up = 0usize;
        let mut edges_down = 0usize;
        for (at, slot) in self.all_slots() {
            let Some(id) = slot.cap.object() else {
                if (slot.parent, slot.first_child, slot.next, slot.prev)
                    != (Link::NONE, Link::NONE, Link::NONE, Link::NONE)
                {
                    return Err(fail("an empty slot has links", Some(at), None));
                }
                continue;
            };
            let Some(record) = self.objects.get(id.index()) else {
                return Err(fail("a cap names an id out of range", Some(at), Some(id)));
            };
            if record.ty != slot.cap.object_type() || record.secret != slot.cap.radix_and_secret().1
            {
                return Err(fail(
                    "a cap disagrees with its object's type",
                    Some(at),
                    Some(id),
                ));
            }
            if let Cap::CNode { radix_bits, .. } = slot.cap
                && self.slot_count(id) != 1 << radix_bits
            {
                return Err(fail(
                    "a CNode cap's radix is not its object's",
                    Some(at),
                    Some(id),
                ));
            }
            if let Some(mapping) = slot.cap.mapping()
                && !self.is_vspace(mapping.vspace)
            {
                return Err(fail("a mapping into no live VSpace", Some(at), Some(id)));
            }
            if !well_formed(&slot.cap) {
                return Err(fail("a cap breaks its own rules", Some(at), Some(id)));
            }
            // Up: a chain of parents ends within as many steps as slots.
            let mut up = slot.parent.get();
            let mut steps = 0;
            while let Some(parent) = up {
                match self.slot(parent) {
                    Some(p) if !p.cap.is_null() => up = p.parent.get(),
                    _ => return Err(fail("a parent link to an empty slot", Some(at), Some(id))),
                }
                steps += 1;
                if steps > total_slots {
                    return Err(fail("a cap is its own ancestor", Some(at), Some(id)));
                }
            }
            if slot.parent.get().is_some() {
                edges_up += 1;
            } else if slot.next != Link::NONE || slot.prev != Link::NONE {
                return Err(fail("a root has siblings", Some(at), Some(id)));
            }
            // Down: the child list links back to this slot both ways.
            let mut prev = Link::NONE;
            let mut child = slot.first_child.get();
            let mut count = 0;
            while let Some(at_child) = child {
                let Some(c) = self.slot(at_child) else {
                    return Err(fail("a child link to no slot", Some(at), Some(id)));
                };
                if c.parent != Link::to(at) || c.prev != prev || c.cap.is_null() {
                    return Err(fail(
                        "a child list is inconsistent",
                        Some(at_child),
                        Some(id),
                    ));
                }
                count += 1;
                if count > total_slots {
                    return Err(fail("a child list loops", Some(at), Some(id)));
                }
                prev = Link::to(at_child);
                child = c.next.get();
            }
            edges_down += count;
        }
        if edges_up != edges_down {
            return Err(fail(
                "a cap is missing from its parent's children",
                None,
                None,
            ));
        }
        // Counted per object, a pass each: no per-object table on the
        // stack, at the price of quadratic time.
        for (id, object) in self.objects.iter().enumerate() {
            let id = ObjectId(id as u32);
            let caps = self
                .caps()
                .filter(|(_, cap)| cap.object() == Some(id))
                .count();
            let children = self
                .objects
                .iter()
                .filter(|o| o.ty.is_some() && o.charged_to == Some(id))
                .count();
            if object.caps as usize != caps || object.children as usize != children {
                return Err(fail("an object's counts are wrong", None, Some(id)));
            }
        }
        Ok(())
    }

    fn all_slots(&self) -> impl Iterator<Item = (SlotRef, &Slot)> + '_ {
        self.objects.iter().enumerate().flat_map(|(id, object)| {
            object
                .memory
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .map(move |(index, slot)| (SlotRef::new(ObjectId(id as u32), index as u32), slot))
        })
    }
}

/// The rules a cap keeps by itself: a CNode's radix in range, its guard
/// fitting its size and the two within a word; a PML4 never mapped.
pub(crate) const fn well_formed(cap: &Cap) -> bool {
    match *cap {
        Cap::CNode {
            radix_bits,
            guard,
            guard_bits,
            ..
        } => {
            radix_bits >= CNODE_MIN_RADIX
                && radix_bits <= CNODE_MAX_RADIX
                && guard_bits as u32 + radix_bits as u32 <= 64
                && (guard_bits >= 64 || guard >> guard_bits == 0)
        }
        Cap::PagingStructure {
            level: PagingLevel::Pml4,
            mapped,
            ..
        } => mapped.is_none(),
        _ => true,
    }
}
