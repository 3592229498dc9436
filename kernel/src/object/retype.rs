//! `UntypedRetype`: charge the budget, place each object by freetype, and
//! put its cap in an empty slot.
//!
//! The request is decoded and checked whole (type, sizes, flags, the
//! destination CNode and every destination slot, the budget, free
//! records) before anything is made. Memory is allocated object by object
//! as each is inserted; if the machine runs out half way, the objects
//! already made are deleted again (refunding their charge), so the
//! refusal leaves the same caps, objects and budget as before.

use super::{Body, Budget, FRAMES, Object, Objects, SECRET_FRAMES, Slots, TCB_SLOTS, bad_cap};
use crate::memory::frames::{self, Frame};
use crate::memory::paging::{TableFrame, VSpace};
use abi::{CPtr, Depth, Error, ObjectType, RetypeFlags};
use cspace::{Cap, ObjectId, SlotRef};

/// The most objects one retype makes.
pub const MAX_COUNT: u64 = 256;

/// A retype request, decoded and checked against the kernel's state.
struct Request {
    ty: ObjectType,
    /// The argument: the radix for a CNode, the budget's bits for an
    /// Untyped.
    user_bits: u8,
    /// log2 of the bytes each object is charged.
    size_bits: u8,
    secret: bool,
    cnode: ObjectId,
    first: u32,
    count: u32,
}

/// Retypes from the Untyped whose cap is in `untyped`: `args` and `extra`
/// as `InvocationLabel::UntypedRetype` documents.
pub(super) fn retype(
    objects: &mut Objects,
    untyped: SlotRef,
    args: &[u64],
    extra: &[Cap],
) -> Result<(), Error> {
    let Some(Cap::Untyped { id: budget_id }) = objects.caps.cap(untyped) else {
        return Err(bad_cap(0));
    };
    let request = decode(objects, args, extra)?;
    let Body::Untyped(budget) = objects.table[budget_id.index()].body else {
        panic!("an Untyped cap names object {budget_id:?}, which has no budget");
    };
    // At most 256 objects of at most 2^47 bytes: no overflow.
    let charge = 1u64 << request.size_bits;
    let total = u64::from(request.count) << request.size_bits;
    let not_enough = Error::NotEnoughMemory {
        bytes_available: budget.left(),
    };
    if total > budget.left() {
        return Err(not_enough);
    }
    let ids = objects.free_ids(request.count as usize).ok_or(not_enough)?;
    for (made, &id) in ids.iter().enumerate() {
        let dest = SlotRef::new(request.cnode, request.first + made as u32);
        let Ok((body, memory, cap)) = make(&request, id) else {
            undo(objects, request.cnode, request.first, made);
            return Err(not_enough);
        };
        objects.place(id, body, charge);
        if let Body::Untyped(budget) = &mut objects.table[budget_id.index()].body {
            budget.used += charge;
        }
        if let Err(refused) = objects.caps.insert_child(untyped, dest, cap, memory) {
            panic!("a checked retype was refused: {:?}", refused.error);
        }
    }
    Ok(())
}

/// Decodes the message and checks the destination; no budget yet.
fn decode(objects: &Objects, args: &[u64], extra: &[Cap]) -> Result<Request, Error> {
    if args.len() < 7 || extra.is_empty() {
        return Err(Error::TruncatedMessage);
    }
    let ty = ObjectType::try_from(args[0]).map_err(|_| Error::InvalidArgument { index: 0 })?;
    let size_bits = ty.size_bits(args[1])?;
    let flags = RetypeFlags::from_word(args[2]).map_err(|_| Error::InvalidArgument { index: 2 })?;
    let secret = flags.contains(RetypeFlags::SECRET);
    if secret && !ty.is_frame() {
        return Err(Error::InvalidArgument { index: 2 });
    }
    let depth = Depth::new(args[4]).map_err(|_| Error::RangeError { min: 0, max: 64 })?;
    let cnode_cap = if depth.bits() == 0 {
        extra[0]
    } else {
        let slot = objects
            .caps
            .resolve(&extra[0], CPtr(args[3]), depth)
            .map_err(|failure| Error::FailedLookup {
                source: false,
                failure,
            })?;
        objects.caps.cap(slot).unwrap_or_default()
    };
    let Cap::CNode { id: cnode, .. } = cnode_cap else {
        return Err(bad_cap(1));
    };
    let slots = objects.caps.slot_count(cnode) as u64;
    let max_count = MAX_COUNT.min(slots);
    if !(1..=max_count).contains(&args[6]) {
        return Err(Error::RangeError {
            min: 1,
            max: max_count,
        });
    }
    let count = args[6] as u32;
    let last = slots - u64::from(count);
    if args[5] > last {
        return Err(Error::RangeError { min: 0, max: last });
    }
    let first = args[5] as u32;
    for index in first..first + count {
        if objects.caps.cap(SlotRef::new(cnode, index)) != Some(Cap::Null) {
            return Err(Error::DeleteFirst);
        }
    }
    Ok(Request {
        ty,
        user_bits: args[1] as u8,
        size_bits,
        secret,
        cnode,
        first,
        count,
    })
}

/// No memory for an object.
struct NoMemory;

/// Makes object `id`: its body, its slot memory and its original cap.
fn make(request: &Request, id: ObjectId) -> Result<(Body, Option<Slots>, Cap), NoMemory> {
    let ty = request.ty;
    let radix = if ty == ObjectType::CNode {
        request.user_bits
    } else {
        0
    };
    let cap = Cap::original(ty, id, radix, request.secret);
    let slots = |count: usize| super::protection::new_slots(count).map_err(|_| NoMemory);
    let (body, memory) = match ty {
        ObjectType::Untyped => (
            Body::Untyped(Budget {
                size_bits: request.size_bits,
                used: 0,
            }),
            None,
        ),
        ObjectType::Tcb => {
            let thread = super::protection::new_thread().map_err(|_| NoMemory)?;
            (Body::Tcb(thread), Some(slots(TCB_SLOTS as usize)?))
        }
        ObjectType::Endpoint => (Body::Endpoint, None),
        ObjectType::Notification => (Body::Notification, None),
        ObjectType::CNode => (Body::CNode, Some(slots(1 << radix)?)),
        ObjectType::Frame4K | ObjectType::Frame2M => {
            (Body::Frame(frame(ty, request.secret)?), None)
        }
        ObjectType::PageTable | ObjectType::PageDirectory | ObjectType::Pdpt => {
            (Body::Table(TableFrame::new().map_err(|_| NoMemory)?), None)
        }
        ObjectType::Pml4 => (Body::VSpace(VSpace::new().map_err(|_| NoMemory)?), None),
    };
    Ok((body, memory, cap))
}

/// A zeroed frame of the type's size, secret or not.
fn frame(ty: ObjectType, secret: bool) -> Result<Frame, NoMemory> {
    let order = if ty == ObjectType::Frame2M { 9 } else { 0 };
    let freetype = if secret { SECRET_FRAMES } else { FRAMES };
    frames::alloc_frame(order, freetype, true).map_err(|_| NoMemory)
}

/// Deletes the `made` caps a failed retype put in `cnode` from `first` on:
/// each is its object's only cap, so its object goes and its charge comes
/// back.
fn undo(objects: &mut Objects, cnode: ObjectId, first: u32, made: usize) {
    let (caps, mut finaliser) = objects.split();
    for index in first..first + made as u32 {
        if let Err(error) = caps.delete(SlotRef::new(cnode, index), &mut finaliser) {
            panic!("undoing a retype could not delete its own cap: {error:?}");
        }
    }
}

const _: () = assert!(core::mem::size_of::<Object>() <= 64);
