//! Model equivalence: random sequences of copy, mint, move, mutate,
//! delete, revoke, retype (`insert_child`) and mapping changes over a few
//! CNodes run on the CSpace and on a trivially correct model: a map of
//! slots to caps, an explicit map of each cap's parent, and a map of live
//! objects. Object death in the model is computed from scratch (no cap
//! refers to it and no live object is charged to it), repeated until
//! nothing more dies.
//!
//! After every step: the same result, the same caps, parents and live
//! objects, the same finalise and unmap calls (as multisets), an Untyped
//! finalised only after every object charged to it, a refused operation
//! changing nothing, a revoked cap left without descendants, and
//! `CSpace::check`'s invariants (tree well formed, counts right).
//!
//! The default case count keeps a debug `cargo test` short; raise it with
//! `PROPTEST_CASES=1000`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use abi::{CapRights, Error, LookupFailure, ObjectType};
use common::*;
use cspace::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const R: u32 = 0;
const B: u32 = 3;
const VSPACE_ID: u32 = 5;
/// A TCB holding its own cap and the root CNode's original: operations
/// never pick its slots (as users cannot name a TCB's slots), so the root
/// CNode and everything in it cannot all vanish early in a run.
const KERNEL: u32 = 7;

// ---- the model ----

#[derive(Clone, Debug)]
struct MObj {
    ty: ObjectType,
    charged_to: Option<ObjectId>,
    slots: u32,
    radix: u8,
    secret: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    caps: BTreeMap<SlotRef, Cap>,
    parent: BTreeMap<SlotRef, SlotRef>,
    objects: BTreeMap<ObjectId, MObj>,
    unmapped: Vec<Cap>,
    finalised: Vec<(Cap, Option<ObjectId>)>,
}

const fn no_slot(source: bool) -> Error {
    Error::FailedLookup {
        source,
        failure: LookupFailure::InvalidRoot,
    }
}

fn derive(cap: Cap) -> Result<Cap, Error> {
    match cap {
        Cap::Frame {
            id,
            size,
            rights,
            secret,
            ..
        } => Ok(Cap::Frame {
            id,
            size,
            rights,
            secret,
            mapped: None,
        }),
        Cap::PagingStructure {
            level: PagingLevel::Pml4,
            ..
        } => Ok(cap),
        Cap::PagingStructure { mapped: None, .. } => Err(Error::IllegalOperation),
        _ => Ok(cap),
    }
}

fn cut_rights(cap: Cap, mask: CapRights) -> Cap {
    match cap {
        Cap::Endpoint { id, badge, rights } => Cap::Endpoint {
            id,
            badge,
            rights: rights & mask,
        },
        Cap::Notification { id, badge, rights } => Cap::Notification {
            id,
            badge,
            rights: rights & mask,
        },
        Cap::Frame {
            id,
            size,
            rights,
            secret,
            mapped,
        } => Cap::Frame {
            id,
            size,
            rights: rights & mask,
            secret,
            mapped,
        },
        _ => cap,
    }
}

fn apply_data(cap: Cap, word: u64, index: u8, may_badge: bool) -> Result<Cap, Error> {
    let bad = Error::InvalidArgument { index };
    match cap {
        Cap::Endpoint { id, badge, rights } => match word {
            0 => Ok(cap),
            _ if badge != 0 || !may_badge => Err(Error::IllegalOperation),
            _ => Ok(Cap::Endpoint {
                id,
                badge: word,
                rights,
            }),
        },
        Cap::Notification { id, badge, rights } => match word {
            0 => Ok(cap),
            _ if badge != 0 || !may_badge => Err(Error::IllegalOperation),
            _ => Ok(Cap::Notification {
                id,
                badge: word,
                rights,
            }),
        },
        Cap::CNode { id, radix_bits, .. } => {
            let bits = (word % 64) as u8;
            let guard = word / 64;
            if guard >> bits != 0 || bits as u32 + radix_bits as u32 > 64 {
                return Err(bad);
            }
            Ok(Cap::CNode {
                id,
                radix_bits,
                guard,
                guard_bits: bits,
            })
        }
        _ if word == 0 => Ok(cap),
        _ => Err(bad),
    }
}

impl Model {
    fn exists(&self, at: SlotRef) -> bool {
        self.objects
            .get(&at.object)
            .is_some_and(|o| at.index < o.slots)
    }

    fn cap_at(&self, at: SlotRef) -> Option<Cap> {
        self.exists(at)
            .then(|| self.caps.get(&at).copied().unwrap_or(Cap::Null))
    }

    fn caps_to(&self, id: ObjectId) -> usize {
        self.caps
            .values()
            .filter(|cap| cap.object() == Some(id))
            .count()
    }

    fn all_slots(&self) -> Vec<SlotRef> {
        self.objects
            .iter()
            .flat_map(|(&id, o)| (0..o.slots).map(move |i| SlotRef::new(id, i)))
            .collect()
    }

    fn insert(&mut self, parent: Option<SlotRef>, dest: SlotRef, cap: Cap, slots: u32) {
        let ty = cap.object_type().expect("object");
        let id = cap.object().expect("object");
        let (radix, secret) = match cap {
            Cap::CNode { radix_bits, .. } => (radix_bits, false),
            Cap::Frame { secret, .. } => (0, secret),
            _ => (0, false),
        };
        let charged_to = parent.map(|p| self.caps[&p].object().expect("an Untyped"));
        self.objects.insert(
            id,
            MObj {
                ty,
                charged_to,
                slots,
                radix,
                secret,
            },
        );
        self.caps.insert(dest, cap);
        if let Some(parent) = parent {
            self.parent.insert(dest, parent);
        }
    }

    fn transfer(&self, src: SlotRef, dest: SlotRef) -> Result<Cap, Error> {
        match self.cap_at(dest) {
            None => return Err(no_slot(false)),
            Some(Cap::Null) => {}
            Some(_) => return Err(Error::DeleteFirst),
        }
        match self.cap_at(src) {
            None => Err(no_slot(true)),
            Some(Cap::Null) => Err(Error::FailedLookup {
                source: true,
                failure: LookupFailure::MissingCapability { bits_left: 0 },
            }),
            Some(cap) => Ok(cap),
        }
    }

    fn copy(&mut self, src: SlotRef, dest: SlotRef, rights: CapRights) -> Result<(), Error> {
        let cap = cut_rights(derive(self.transfer(src, dest)?)?, rights);
        self.caps.insert(dest, cap);
        self.parent.insert(dest, src);
        Ok(())
    }

    fn mint(
        &mut self,
        src: SlotRef,
        dest: SlotRef,
        rights: CapRights,
        word: u64,
    ) -> Result<(), Error> {
        let cap = cut_rights(derive(self.transfer(src, dest)?)?, rights);
        let cap = apply_data(cap, word, 5, true)?;
        self.caps.insert(dest, cap);
        self.parent.insert(dest, src);
        Ok(())
    }

    fn relocate(&mut self, src: SlotRef, dest: SlotRef) {
        let cap = self.caps.remove(&src).expect("source");
        self.caps.insert(dest, cap);
        if let Some(parent) = self.parent.remove(&src) {
            self.parent.insert(dest, parent);
        }
        for parent in self.parent.values_mut() {
            if *parent == src {
                *parent = dest;
            }
        }
    }

    fn move_cap(&mut self, src: SlotRef, dest: SlotRef) -> Result<(), Error> {
        self.transfer(src, dest)?;
        self.relocate(src, dest);
        Ok(())
    }

    fn mutate(&mut self, src: SlotRef, dest: SlotRef, word: u64) -> Result<(), Error> {
        let cap = self.transfer(src, dest)?;
        let childless = !self.parent.values().any(|&p| p == src);
        let cap = apply_data(cap, word, 4, childless)?;
        self.relocate(src, dest);
        self.caps.insert(dest, cap);
        Ok(())
    }

    /// Empties a slot; its children get its parent.
    fn remove(&mut self, at: SlotRef) {
        let cap = self.caps.remove(&at).expect("a cap");
        let id = cap.object().expect("object");
        if cap.mapping().is_some() && (matches!(cap, Cap::Frame { .. }) || self.caps_to(id) == 0) {
            self.unmapped.push(cap);
        }
        let grandparent = self.parent.remove(&at);
        let children: Vec<SlotRef> = self
            .parent
            .iter()
            .filter(|&(_, &p)| p == at)
            .map(|(&c, _)| c)
            .collect();
        for child in children {
            match grandparent {
                Some(g) => self.parent.insert(child, g),
                None => self.parent.remove(&child),
            };
        }
    }

    /// Destroys whatever has no reason to live, until nothing does.
    fn collect(&mut self, pinned: Option<ObjectId>) {
        loop {
            let dead = self.objects.keys().copied().find(|&id| {
                Some(id) != pinned
                    && self.caps_to(id) == 0
                    && !self.objects.values().any(|o| o.charged_to == Some(id))
            });
            let Some(id) = dead else {
                return;
            };
            for index in 0..self.objects[&id].slots {
                let at = SlotRef::new(id, index);
                if self.caps.contains_key(&at) {
                    self.remove(at);
                }
            }
            let o = self.objects.remove(&id).expect("live");
            if o.ty == ObjectType::Pml4 {
                // Mappings into a dead VSpace are forgotten.
                for cap in self.caps.values_mut() {
                    if let Cap::Frame { mapped, .. } | Cap::PagingStructure { mapped, .. } = cap
                        && mapped.is_some_and(|m| m.vspace == id)
                    {
                        *mapped = None;
                    }
                }
            }
            self.finalised
                .push((Cap::original(o.ty, id, o.radix, o.secret), o.charged_to));
        }
    }

    fn delete(&mut self, at: SlotRef) -> Result<(), Error> {
        match self.cap_at(at) {
            None => Err(no_slot(false)),
            Some(Cap::Null) => Ok(()),
            Some(_) => {
                self.remove(at);
                self.collect(None);
                Ok(())
            }
        }
    }

    fn descendants(&self, at: SlotRef) -> BTreeSet<SlotRef> {
        let mut found = BTreeSet::new();
        loop {
            let more: Vec<SlotRef> = self
                .parent
                .iter()
                .filter(|&(c, p)| (*p == at || found.contains(p)) && !found.contains(c))
                .map(|(&c, _)| c)
                .collect();
            if more.is_empty() {
                return found;
            }
            found.extend(more);
        }
    }

    fn revoke(&mut self, at: SlotRef) -> Result<(), Error> {
        match self.cap_at(at) {
            None => Err(no_slot(false)),
            Some(Cap::Null) => Ok(()),
            Some(_) => {
                for descendant in self.descendants(at) {
                    if self.caps.contains_key(&descendant) {
                        self.remove(descendant);
                    }
                }
                self.collect(Some(at.object));
                self.collect(None);
                Ok(())
            }
        }
    }

    fn retype(
        &mut self,
        parent: SlotRef,
        dest: SlotRef,
        cap: Cap,
        slots: u32,
    ) -> Result<(), InsertError> {
        match self.cap_at(parent) {
            None => return Err(InsertError::NoSuchSlot),
            Some(Cap::Untyped { .. }) => {}
            Some(_) => return Err(InsertError::NotUntyped),
        }
        match self.cap_at(dest) {
            None => return Err(InsertError::NoSuchSlot),
            Some(Cap::Null) => {}
            Some(_) => return Err(InsertError::NotEmpty),
        }
        self.insert(Some(parent), dest, cap, slots);
        Ok(())
    }

    fn set_mapping(&mut self, at: SlotRef, mapping: Option<Mapping>) -> Result<(), Error> {
        let cap = self.cap_at(at).ok_or(no_slot(false))?;
        let (mapped, table) = match cap {
            Cap::Frame { mapped, .. } => (mapped, None),
            Cap::PagingStructure { level, mapped, id } if level != PagingLevel::Pml4 => {
                (mapped, Some(id))
            }
            _ => return Err(Error::IllegalOperation),
        };
        if let Some(new) = mapping {
            if mapped.is_some() {
                return Err(Error::InvalidCapability { index: 0 });
            }
            if self.objects.get(&new.vspace).map(|o| o.ty) != Some(ObjectType::Pml4) {
                return Err(Error::InvalidCapability { index: 1 });
            }
        } else if mapped.is_none() {
            return Ok(());
        }
        // A table maps and unmaps through its only cap.
        if table.is_some_and(|id| self.caps_to(id) > 1) {
            return Err(Error::RevokeFirst);
        }
        match self.caps.get_mut(&at).expect("a cap") {
            Cap::Frame { mapped, .. } | Cap::PagingStructure { mapped, .. } => *mapped = mapping,
            _ => unreachable!(),
        }
        Ok(())
    }
}

// ---- operations ----

/// A choice among however many candidates a step finds, as proptest's
/// `sample::Index` makes it, but with a public value, so that a failing
/// input it prints can be written back as a regression test.
#[derive(Clone, Copy, Debug)]
struct Index(u64);

impl Index {
    fn index(&self, size: usize) -> usize {
        ((size as u128 * self.0 as u128) >> 64) as usize
    }

    fn get<'a, T>(&self, list: &'a [T]) -> &'a T {
        &list[self.index(list.len())]
    }
}

#[derive(Clone, Debug)]
enum Sel {
    /// The n-th slot holding a cap.
    Full(Index),
    /// The n-th empty slot.
    Empty(Index),
    /// The n-th slot, full or not.
    Any(Index),
    /// The n-th slot holding an Untyped cap.
    Untyped(Index),
    /// The n-th slot holding a frame or paging-structure cap.
    Mappable(Index),
    /// A slot that does not exist.
    Bogus,
}

#[derive(Clone, Debug)]
enum Data {
    Zero,
    Badge(u8),
    Guard(u8, u64),
    Raw(u64),
}

impl Data {
    fn word(&self) -> u64 {
        match *self {
            Data::Zero => 0,
            Data::Badge(b) => b as u64 + 1,
            Data::Guard(bits, guard) => (guard & ((1 << bits) - 1)) << 6 | bits as u64,
            Data::Raw(word) => word,
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Untyped,
    Tcb { slots: bool },
    Endpoint,
    Notification,
    CNode { radix: u8 },
    Frame { large: bool, secret: bool },
    Table { level: u8 },
}

#[derive(Clone, Debug)]
enum Op {
    Copy {
        src: Sel,
        dest: Sel,
        rights: u8,
    },
    Mint {
        src: Sel,
        dest: Sel,
        rights: u8,
        data: Data,
    },
    Move {
        src: Sel,
        dest: Sel,
    },
    Mutate {
        src: Sel,
        dest: Sel,
        data: Data,
    },
    Delete {
        at: Sel,
    },
    Revoke {
        at: Sel,
    },
    Retype {
        parent: Sel,
        dest: Sel,
        kind: Kind,
    },
    Map {
        at: Sel,
        map: bool,
        /// A live PML4, or (past their number) the endpoint.
        vspace: Index,
        vaddr: u16,
    },
}

fn source() -> impl Strategy<Value = Sel> {
    prop_oneof![
        8 => any::<u64>().prop_map(Index).prop_map(Sel::Full),
        2 => any::<u64>().prop_map(Index).prop_map(Sel::Any),
        1 => Just(Sel::Bogus),
    ]
}

fn destination() -> impl Strategy<Value = Sel> {
    prop_oneof![
        8 => any::<u64>().prop_map(Index).prop_map(Sel::Empty),
        2 => any::<u64>().prop_map(Index).prop_map(Sel::Any),
        1 => Just(Sel::Bogus),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        3 => Just(Data::Zero),
        3 => any::<u8>().prop_map(Data::Badge),
        3 => (0u8..4, any::<u64>()).prop_map(|(bits, guard)| Data::Guard(bits, guard)),
        1 => any::<u64>().prop_map(Data::Raw),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Untyped),
        1 => any::<bool>().prop_map(|slots| Kind::Tcb { slots }),
        1 => Just(Kind::Endpoint),
        1 => Just(Kind::Notification),
        2 => (1u8..=2).prop_map(|radix| Kind::CNode { radix }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(large, secret)| Kind::Frame { large, secret }),
        1 => (1u8..=4).prop_map(|level| Kind::Table { level }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (source(), destination(), 0u8..16).prop_map(|(src, dest, rights)| Op::Copy { src, dest, rights }),
        2 => (source(), destination(), 0u8..16, data())
            .prop_map(|(src, dest, rights, data)| Op::Mint { src, dest, rights, data }),
        2 => (source(), destination()).prop_map(|(src, dest)| Op::Move { src, dest }),
        2 => (source(), destination(), data()).prop_map(|(src, dest, data)| Op::Mutate { src, dest, data }),
        3 => source().prop_map(|at| Op::Delete { at }),
        2 => source().prop_map(|at| Op::Revoke { at }),
        4 => (
            prop_oneof![9 => any::<u64>().prop_map(Index).prop_map(Sel::Untyped), 1 => source()],
            destination(),
            kind(),
        )
            .prop_map(|(parent, dest, kind)| Op::Retype { parent, dest, kind }),
        2 => (
            prop_oneof![9 => any::<u64>().prop_map(Index).prop_map(Sel::Mappable), 1 => source()],
            any::<bool>(),
            any::<u64>().prop_map(Index),
            any::<u16>(),
        )
            .prop_map(|(at, map, vspace, vaddr)| Op::Map { at, map, vspace, vaddr }),
    ]
}

fn pick(model: &Model, sel: &Sel) -> SlotRef {
    let all: Vec<SlotRef> = model
        .all_slots()
        .into_iter()
        .filter(|a| a.object != id(KERNEL))
        .collect();
    let bogus = at(R, 1 << 20);
    let choose = |list: Vec<SlotRef>, index: &Index| {
        if list.is_empty() {
            bogus
        } else {
            *index.get(&list)
        }
    };
    match sel {
        Sel::Full(i) => choose(
            all.into_iter()
                .filter(|a| model.caps.contains_key(a))
                .collect(),
            i,
        ),
        Sel::Empty(i) => choose(
            all.into_iter()
                .filter(|a| !model.caps.contains_key(a))
                .collect(),
            i,
        ),
        Sel::Any(i) => choose(all, i),
        Sel::Untyped(i) => choose(
            all.into_iter()
                .filter(|a| matches!(model.caps.get(a), Some(Cap::Untyped { .. })))
                .collect(),
            i,
        ),
        Sel::Mappable(i) => choose(
            all.into_iter()
                .filter(|a| {
                    matches!(
                        model.caps.get(a),
                        Some(Cap::Frame { .. } | Cap::PagingStructure { .. })
                    )
                })
                .collect(),
            i,
        ),
        Sel::Bogus => bogus,
    }
}

fn rights(bits: u8) -> CapRights {
    CapRights::from_bits_truncate(bits)
}

/// The new object's cap and slot memory for a retype of `kind` as `id`.
fn new_object(kind: &Kind, id: ObjectId) -> (Cap, Option<Vec<Slot>>) {
    let (ty, radix, secret) = match *kind {
        Kind::Untyped => (ObjectType::Untyped, 0, false),
        Kind::Tcb { .. } => (ObjectType::Tcb, 0, false),
        Kind::Endpoint => (ObjectType::Endpoint, 0, false),
        Kind::Notification => (ObjectType::Notification, 0, false),
        Kind::CNode { radix } => (ObjectType::CNode, radix, false),
        Kind::Frame { large, secret } => (
            if large {
                ObjectType::Frame2M
            } else {
                ObjectType::Frame4K
            },
            0,
            secret,
        ),
        Kind::Table { level } => {
            let ty = [
                ObjectType::PageTable,
                ObjectType::PageDirectory,
                ObjectType::Pdpt,
                ObjectType::Pml4,
            ][level as usize - 1];
            (ty, 0, false)
        }
    };
    let memory = match *kind {
        Kind::CNode { radix } => Some(slots(radix)),
        Kind::Tcb { slots: true } => Some(slots(1)),
        _ => None,
    };
    (Cap::original(ty, id, radix, secret), memory)
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done(Result<(), Error>),
    Insert(Result<(), InsertError>),
    Skipped,
}

// ---- the run ----

struct World {
    space: Space,
    fin: Recorder,
    model: Model,
}

fn boot_world() -> World {
    let mut space = empty_space();
    let mut model = Model::default();
    let root = Cap::CNode {
        id: id(R),
        radix_bits: 3,
        guard: 0,
        guard_bits: 0,
    };
    let b = Cap::CNode {
        id: id(B),
        radix_bits: 2,
        guard: 0,
        guard_bits: 0,
    };
    let frame = Cap::Frame {
        id: id(6),
        size: FrameSize::Small,
        rights: CapRights::all(),
        secret: false,
        mapped: Some(Mapping {
            vspace: id(VSPACE_ID),
            vaddr: 0x1000,
        }),
    };
    let boot: [(SlotRef, Cap, u32); 8] = [
        (at(KERNEL, 0), Cap::Tcb { id: id(KERNEL) }, 2),
        (at(KERNEL, 1), root, 8),
        (at(R, 1), Cap::Untyped { id: id(1) }, 0),
        (at(R, 2), Cap::Untyped { id: id(2) }, 0),
        (at(R, 3), b, 4),
        (
            at(R, 4),
            Cap::original(ObjectType::Endpoint, id(4), 0, false),
            0,
        ),
        (
            at(R, 5),
            Cap::original(ObjectType::Pml4, id(VSPACE_ID), 0, false),
            0,
        ),
        (at(R, 6), frame, 0),
    ];
    for (dest, cap, count) in boot {
        let memory = (count > 0).then(|| vec![Slot::EMPTY; count as usize]);
        space.insert_original(dest, cap, memory).expect("boot cap");
        model.insert(None, dest, cap, count);
    }
    // The root CNode's cap in its own slot 0 is a copy of the kernel's.
    space
        .copy(at(KERNEL, 1), at(R, 0), CapRights::all())
        .expect("root copy");
    model
        .copy(at(KERNEL, 1), at(R, 0), CapRights::all())
        .expect("root copy");
    World {
        space,
        fin: Recorder::default(),
        model,
    }
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
}

impl World {
    fn step(&mut self, op: &Op) -> Outcome {
        let (space, model, fin) = (&mut self.space, &mut self.model, &mut self.fin);
        let pick = |sel| pick(model, sel);
        match op {
            Op::Copy {
                src,
                dest,
                rights: r,
            } => {
                let (src, dest) = (pick(src), pick(dest));
                let real = space.copy(src, dest, rights(*r));
                assert_eq!(
                    real,
                    model.copy(src, dest, rights(*r)),
                    "copy {src:?} -> {dest:?}"
                );
                Outcome::Done(real)
            }
            Op::Mint {
                src,
                dest,
                rights: r,
                data,
            } => {
                let (src, dest) = (pick(src), pick(dest));
                let real = space.mint(
                    src,
                    dest,
                    rights(*r),
                    CapData {
                        word: data.word(),
                        index: 5,
                    },
                );
                assert_eq!(real, model.mint(src, dest, rights(*r), data.word()), "mint");
                Outcome::Done(real)
            }
            Op::Move { src, dest } => {
                let (src, dest) = (pick(src), pick(dest));
                let real = space.move_cap(src, dest);
                assert_eq!(real, model.move_cap(src, dest), "move");
                Outcome::Done(real)
            }
            Op::Mutate { src, dest, data } => {
                let (src, dest) = (pick(src), pick(dest));
                let real = space.mutate(
                    src,
                    dest,
                    CapData {
                        word: data.word(),
                        index: 4,
                    },
                );
                assert_eq!(real, model.mutate(src, dest, data.word()), "mutate");
                Outcome::Done(real)
            }
            Op::Delete { at } => {
                let at = pick(at);
                let real = space.delete(at, fin);
                assert_eq!(real, model.delete(at), "delete {at:?}");
                Outcome::Done(real)
            }
            Op::Revoke { at } => {
                let at = pick(at);
                let real = space.revoke(at, fin);
                assert_eq!(real, model.revoke(at), "revoke {at:?}");
                if real.is_ok() && space.cap(at).is_some_and(|cap| !cap.is_null()) {
                    assert_eq!(space.children(at).count(), 0, "revoke left a descendant");
                }
                Outcome::Done(real)
            }
            Op::Retype { parent, dest, kind } => {
                let (parent, dest) = (pick(parent), pick(dest));
                let Some(free) = (0..OBJECTS as u32)
                    .map(ObjectId)
                    .find(|i| !model.objects.contains_key(i))
                else {
                    return Outcome::Skipped;
                };
                let (cap, memory) = new_object(kind, free);
                let count = memory.as_ref().map_or(0, |m| m.len() as u32);
                let real = space.insert_child(parent, dest, cap, memory);
                if let Err(refused) = &real {
                    assert_eq!(refused.memory.as_ref().map_or(0, |m| m.len() as u32), count);
                }
                let real = real.map_err(|refused| refused.error);
                assert_eq!(real, model.retype(parent, dest, cap, count), "retype");
                Outcome::Insert(real)
            }
            Op::Map {
                at,
                map,
                vspace,
                vaddr,
            } => {
                let at = pick(at);
                let mut vspaces: Vec<ObjectId> = (model.objects.iter())
                    .filter(|(_, o)| o.ty == ObjectType::Pml4)
                    .map(|(&id, _)| id)
                    .collect();
                vspaces.push(id(4));
                let mapping = map.then_some(Mapping {
                    vspace: *vspace.get(&vspaces),
                    vaddr: *vaddr as u64 * 4096,
                });
                let real = space.set_mapping(at, mapping);
                assert_eq!(real, model.set_mapping(at, mapping), "set_mapping");
                Outcome::Done(real)
            }
        }
    }

    fn compare(&mut self) -> Result<(), String> {
        let (space, model) = (&self.space, &mut self.model);
        let caps: BTreeMap<SlotRef, Cap> = space.caps().collect();
        if caps != model.caps {
            return Err(format!(
                "caps differ:\n real  {caps:?}\n model {:?}",
                model.caps
            ));
        }
        for &at in model.caps.keys() {
            if space.parent(at) != model.parent.get(&at).copied() {
                return Err(format!(
                    "parent of {at:?}: real {:?}, model {:?}",
                    space.parent(at),
                    model.parent.get(&at)
                ));
            }
        }
        for n in 0..OBJECTS as u32 {
            let o = model.objects.get(&id(n));
            let real = (
                space.object_type(id(n)),
                space.charged_to(id(n)),
                space.cap_count(id(n)) as usize,
            );
            let expected = (
                o.map(|o| o.ty),
                o.and_then(|o| o.charged_to),
                model.caps_to(id(n)),
            );
            if real != expected {
                return Err(format!("object {n}: real {real:?}, model {expected:?}"));
            }
        }
        let summary = space.summary();
        if (
            summary.caps as usize,
            summary.edges as usize,
            summary.objects as usize,
        ) != (model.caps.len(), model.parent.len(), model.objects.len())
        {
            return Err(format!("summary {summary:?}"));
        }
        space.check().map_err(|v| format!("invariant: {v:?}"))?;

        let (unmapped, finalised) = self.fin.take();
        let (model_unmapped, model_finalised) = (
            std::mem::take(&mut model.unmapped),
            std::mem::take(&mut model.finalised),
        );
        // Within one cascade the order of deaths is free: the model kills
        // the lowest id first, the CSpace drains slot holders first. So a
        // mapping into a VSpace that died in this step may be unmapped by
        // one and forgotten by the other. Every other unmap must match;
        // that an unmap never names a dead VSpace, the recorder checks.
        let dead_vspaces: Vec<ObjectId> = finalised
            .iter()
            .filter(|(cap, _)| cap.object_type() == Some(ObjectType::Pml4))
            .filter_map(|(cap, _)| cap.object())
            .collect();
        let mut missing = sorted(&model_unmapped);
        for cap in &unmapped {
            match missing.iter().position(|m| m == cap) {
                Some(i) => {
                    missing.remove(i);
                }
                None if cap
                    .mapping()
                    .is_some_and(|m| dead_vspaces.contains(&m.vspace)) => {}
                None => return Err(format!("unmapped {cap:?}, which the model did not")),
            }
        }
        if let Some(cap) = missing.iter().find(|cap| {
            !cap.mapping()
                .is_some_and(|m| dead_vspaces.contains(&m.vspace))
        }) {
            return Err(format!(
                "did not unmap {cap:?}: real {unmapped:?}, model {model_unmapped:?}"
            ));
        }
        if sorted(&finalised) != sorted(&model_finalised) {
            return Err(format!(
                "finalised: real {finalised:?}, model {model_finalised:?}"
            ));
        }
        // An Untyped goes only after everything charged to it.
        for (i, (cap, _)) in finalised.iter().enumerate() {
            if let Cap::Untyped { id } = cap
                && finalised[i + 1..].iter().any(|(_, to)| *to == Some(*id))
            {
                return Err(format!(
                    "Untyped {id:?} finalised before an object charged to it"
                ));
            }
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut world = boot_world();
    world.compare().map_err(TestCaseError::fail)?;
    for (step, op) in ops.iter().enumerate() {
        let before = snapshot(&world.space);
        let outcome = world.step(op);
        if matches!(outcome, Outcome::Done(Err(_)) | Outcome::Insert(Err(_))) {
            prop_assert_eq!(
                &snapshot(&world.space),
                &before,
                "step {} {:?} refused but changed",
                step,
                op
            );
        }
        world
            .compare()
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    Ok(())
}

fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(128))]

    #[test]
    fn cspace_matches_the_model(ops in prop::collection::vec(op(), 1..100)) {
        run(&ops)?;
    }
}

/// The model test's own sanity: a scripted run through a cascade (a
/// CNode holding the last cap to an endpoint) agrees too.
#[test]
fn a_scripted_cascade_agrees_with_the_model() {
    let mut world = boot_world();
    let cnode = Cap::original(ObjectType::CNode, id(8), 2, false);
    let endpoint = Cap::original(ObjectType::Endpoint, id(9), 0, false);
    world
        .space
        .insert_child(at(R, 1), at(R, 7), cnode, Some(slots(2)))
        .expect("CNode");
    world
        .model
        .retype(at(R, 1), at(R, 7), cnode, 4)
        .expect("CNode");
    world
        .space
        .insert_child(at(R, 1), at(8, 1), endpoint, None)
        .expect("endpoint");
    world
        .model
        .retype(at(R, 1), at(8, 1), endpoint, 0)
        .expect("endpoint");
    world
        .space
        .copy(at(R, 6), at(8, 2), CapRights::READ)
        .expect("frame copy");
    world
        .model
        .copy(at(R, 6), at(8, 2), CapRights::READ)
        .expect("frame copy");
    world.compare().expect("equal");
    assert_eq!(world.space.delete(at(R, 7), &mut world.fin), Ok(()));
    assert_eq!(world.model.delete(at(R, 7)), Ok(()));
    assert_eq!(sorted(&world.fin.finalised_ids()), [8, 9]);
    world.compare().expect("equal");
    assert!(world.space.is_live(id(6)), "the frame had other caps");
}

/// Inputs the random test once failed on, kept as they were printed.
#[test]
fn past_failures_agree_with_the_model() {
    // A revoke deleted a VSpace and, later in the same cascade, the last
    // cap of a frame mapped into it.
    let vspace_dies_before_its_frame = vec![
        Op::Delete {
            at: Sel::Full(Index(10540996613548315210)),
        },
        Op::Retype {
            parent: Sel::Untyped(Index(9223372036854775808)),
            dest: Sel::Empty(Index(0)),
            kind: Kind::Untyped,
        },
        Op::Retype {
            parent: Sel::Untyped(Index(6148914691236517206)),
            dest: Sel::Empty(Index(0)),
            kind: Kind::Untyped,
        },
        Op::Copy {
            src: Sel::Full(Index(0)),
            dest: Sel::Any(Index(12297829382480825289)),
            rights: 12,
        },
        Op::Move {
            src: Sel::Full(Index(2281684203389407652)),
            dest: Sel::Empty(Index(8398765704475509220)),
        },
        Op::Revoke {
            at: Sel::Any(Index(3236084232186859615)),
        },
        Op::Retype {
            parent: Sel::Untyped(Index(1043081473886302558)),
            dest: Sel::Empty(Index(10861033552082258247)),
            kind: Kind::Table { level: 4 },
        },
        Op::Retype {
            parent: Sel::Untyped(Index(4848872485390855015)),
            dest: Sel::Empty(Index(15494595841723683613)),
            kind: Kind::CNode { radix: 2 },
        },
        Op::Copy {
            src: Sel::Full(Index(9585936249449874789)),
            dest: Sel::Empty(Index(18346549475905830462)),
            rights: 4,
        },
        Op::Retype {
            parent: Sel::Untyped(Index(15053587419725272500)),
            dest: Sel::Empty(Index(8891266955947839536)),
            kind: Kind::Tcb { slots: true },
        },
        Op::Map {
            at: Sel::Mappable(Index(14109399925410983602)),
            map: true,
            vspace: Index(4308216908414260126),
            vaddr: 57915,
        },
        Op::Retype {
            parent: Sel::Untyped(Index(14758308181902611078)),
            dest: Sel::Empty(Index(2472524340598053488)),
            kind: Kind::CNode { radix: 1 },
        },
        Op::Copy {
            src: Sel::Full(Index(659983335260423334)),
            dest: Sel::Empty(Index(6306823948337268359)),
            rights: 0,
        },
        Op::Revoke {
            at: Sel::Any(Index(2029459211826935526)),
        },
    ];
    if let Err(e) = run(&vspace_dies_before_its_frame) {
        panic!("{e}");
    }
}
