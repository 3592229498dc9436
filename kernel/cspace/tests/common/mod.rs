//! Shared by the tests: a recording finaliser that checks what it is
//! handed, and a small boot-time CSpace.

#![allow(dead_code)]

use abi::{CapRights, ObjectType};
use cspace::*;

/// Object capacity of the test CSpaces.
pub const OBJECTS: usize = 48;

/// Record storage as the tests supply it.
pub type Records = Vec<ObjectRecord<Vec<Slot>>>;

pub type Space = CSpace<Vec<Slot>, Records>;

/// Free records for [`OBJECTS`] objects, made one by one as the kernel
/// writes them.
pub fn records() -> Records {
    (0..OBJECTS).map(|_| ObjectRecord::FREE).collect()
}

/// A CSpace of [`OBJECTS`] objects, with none yet.
pub fn empty_space() -> Space {
    Space::new(records()).expect("free records")
}

/// Empty slot memory for a CNode of `radix`.
pub fn slots(radix: u8) -> Vec<Slot> {
    vec![Slot::EMPTY; 1 << radix]
}

/// What the CSpace asked of the kernel.
#[derive(Debug, Default)]
pub struct Recorder {
    pub unmapped: Vec<Cap>,
    pub finalised: Vec<(Cap, Option<ObjectId>)>,
}

impl Recorder {
    pub fn finalised_ids(&self) -> Vec<u32> {
        self.finalised
            .iter()
            .map(|(cap, _)| cap.object().expect("object").0)
            .collect()
    }

    pub fn take(&mut self) -> (Vec<Cap>, Vec<(Cap, Option<ObjectId>)>) {
        (
            std::mem::take(&mut self.unmapped),
            std::mem::take(&mut self.finalised),
        )
    }
}

impl Finalise<Vec<Slot>> for Recorder {
    fn unmap(&mut self, cap: &Cap) {
        let mapping = cap.mapping().expect("unmap of an unmapped cap");
        // The contract: an unmap never names a VSpace already finalised.
        assert!(
            !self
                .finalised
                .iter()
                .any(|(dead, _)| dead.object_type() == Some(ObjectType::Pml4)
                    && dead.object() == Some(mapping.vspace)),
            "unmap of {cap:?} into a finalised VSpace"
        );
        self.unmapped.push(*cap);
    }

    fn finalise(&mut self, object: &Cap, charged_to: Option<ObjectId>, memory: Option<Vec<Slot>>) {
        // The cap as made, and the memory lent, every slot empty again.
        let ty = object.object_type().expect("a real object");
        let id = object.object().expect("a real object");
        assert_eq!(
            *object,
            Cap::original(ty, id, radix_of(object), secret_of(object))
        );
        match (object, &memory) {
            (Cap::CNode { radix_bits, .. }, Some(m)) => assert_eq!(m.len(), 1 << radix_bits),
            (Cap::CNode { .. }, None) => panic!("a CNode finalised without its memory"),
            (Cap::Tcb { .. }, _) => {}
            (_, Some(_)) => panic!("memory handed back for {object:?}"),
            (_, None) => {}
        }
        if let Some(memory) = &memory {
            assert!(
                memory.iter().all(|s| *s == Slot::EMPTY),
                "memory handed back not empty"
            );
        }
        self.finalised.push((*object, charged_to));
    }
}

fn radix_of(cap: &Cap) -> u8 {
    match *cap {
        Cap::CNode { radix_bits, .. } => radix_bits,
        _ => 0,
    }
}

fn secret_of(cap: &Cap) -> bool {
    matches!(*cap, Cap::Frame { secret: true, .. })
}

pub const fn id(n: u32) -> ObjectId {
    ObjectId(n)
}

pub const fn at(object: u32, index: u32) -> SlotRef {
    SlotRef::new(ObjectId(object), index)
}

/// The root CNode's id and radix in [`boot`].
pub const ROOT: u32 = 0;
pub const ROOT_RADIX: u8 = 4;
/// Slots of [`boot`]'s root CNode.
pub const ROOT_SELF: u32 = 2;
pub const UNTYPED: u32 = 6;
pub const ENDPOINT: u32 = 7;
pub const VSPACE: u32 = 3;

/// The root CNode cap as the root task gets it: a guard of zeros that
/// makes a slot's index its CPtr at depth 64.
pub const fn root_cap() -> Cap {
    Cap::CNode {
        id: ObjectId(ROOT),
        radix_bits: ROOT_RADIX,
        guard: 0,
        guard_bits: 64 - ROOT_RADIX,
    }
}

/// A root CNode (object 0, 16 slots) holding its own cap in slot 2, a
/// PML4 (object 1) in slot 3, an Untyped (object 2) in slot 6 and an
/// endpoint (object 3) in slot 7; all originals.
pub fn boot() -> Space {
    let mut space = empty_space();
    space
        .insert_original(at(ROOT, ROOT_SELF), root_cap(), Some(slots(ROOT_RADIX)))
        .expect("root CNode");
    let originals = [
        (VSPACE, Cap::original(ObjectType::Pml4, id(1), 0, false)),
        (UNTYPED, Cap::Untyped { id: id(2) }),
        (
            ENDPOINT,
            Cap::original(ObjectType::Endpoint, id(3), 0, false),
        ),
    ];
    for (slot, cap) in originals {
        space
            .insert_original(at(ROOT, slot), cap, None)
            .expect("boot cap");
    }
    space.check().expect("boot is consistent");
    space
}

/// Everything observable: every cap with its parent, and the summary.
pub fn snapshot(space: &Space) -> (Vec<(SlotRef, Cap, Option<SlotRef>)>, Summary) {
    let caps = space
        .caps()
        .map(|(at, cap)| (at, cap, space.parent(at)))
        .collect();
    (caps, space.summary())
}

pub const ALL: CapRights = CapRights::all();
