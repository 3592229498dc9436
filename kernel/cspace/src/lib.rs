//! Capabilities, CNodes, capability lookup and the derivation tree: what
//! seL4 calls the CSpace and the MDB, as policy only.
//!
//! What this crate owns and promises:
//! - [`Cap`]: a capability, naming its object by an opaque [`ObjectId`]
//!   the kernel assigns. A frame cap and a paging-structure cap are
//!   different variants, and no operation changes a cap's variant, so a
//!   page table can never be handed out as a page;
//! - [`CSpace`]: every slot-holding object's slots (CNodes, and TCBs if
//!   the kernel gives them slots), every object's cap count, and the
//!   derivation tree linking each cap to the cap it was derived from;
//! - lookup ([`CSpace::resolve`], [`CSpace::resolve_partial`],
//!   [`CSpace::lookup`]) with guards, radices and seL4's typed failures;
//! - the CNode operations, decode then perform ([`CSpace::copy`],
//!   [`CSpace::mint`], [`CSpace::move_cap`], [`CSpace::mutate`],
//!   [`CSpace::delete`], [`CSpace::revoke`], and [`CNodeOp`] for the whole
//!   invocation from message words). Each checks everything first and
//!   returns an [`abi::Error`] with nothing changed, or performs fully;
//! - object lifetime: an object lives while a cap refers to it or (for an
//!   Untyped) while an object made from it lives. When neither holds, the
//!   kernel's [`Finalise`] is told exactly once, and gets back the slot
//!   memory it lent;
//! - mappings: each frame and table cap records where the kernel mapped
//!   it ([`CSpace::set_mapping`]); when a VSpace is destroyed every
//!   mapping into it is forgotten, so none names a dead or reused id.
//!
//! It knows nothing of memory or x86. What the kernel supplies:
//! - **Object ids.** The kernel numbers its objects: ids are dense indices
//!   below the capacity ([`CSpace::capacity`]), and an id is free again
//!   once its object is finalised. The kernel's own object table can use
//!   the same index.
//! - **Record storage.** One [`ObjectRecord`] per id, a few dozen bytes
//!   each, in storage handed over when the [`CSpace`] is made
//!   ([`CSpace::new`]): anything that derefs to `[ObjectRecord<M>]`, `R`,
//!   filled with [`ObjectRecord::FREE`]. For the few thousand objects a
//!   kernel needs that is hundreds of KiB, too big for the kernel image
//!   (as a static) or the boot stack, so the kernel takes it from its page
//!   allocator at boot and writes the free records in place, one by one.
//!   The host tests use `Vec<ObjectRecord<Vec<Slot>>>`.
//! - **Slot memory.** A CNode's slots live in memory the kernel allocates
//!   (and charges to the Untyped budget): anything that derefs to
//!   `[Slot]`, `M`, handed over when the CNode is made
//!   ([`CSpace::insert_child`]) and handed back at finalisation. The host
//!   tests use `Vec<Slot>`; a kernel can use a handle to its own frames,
//!   or `heapless::Vec<Slot, N>` for fixed storage. A TCB may be given
//!   slots the same way, for the CSpace root, VSpace root and IPC-buffer
//!   caps it holds (as seL4 keeps them in the TCB); no lookup ever
//!   traverses them, the kernel addresses them by [`SlotRef`].
//! - **Finalisation** ([`Finalise`]): undo a mapping when a mapped cap
//!   goes, and free an object (and refund its charge) when it dies.
//!
//! The [`CSpace`] itself is a few words: the records live in the storage
//! it is lent, and the slots in the memory the records hold. No `unsafe`,
//! no allocation.
//!
//! Not yet: deletion runs to completion, with no preemption point as in
//! seL4, so destroying a large CNode is one long operation (iterative,
//! though: no recursion on the kernel stack).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cap;
mod cnode;
mod lookup;
mod ops;
mod space;

pub use cap::{Cap, FrameSize, Mapping, ObjectId, PagingLevel, SlotRef};
pub use cnode::{CNodeOp, Path};
pub use ops::CapData;
pub use space::{CSpace, Finalise, InsertError, ObjectRecord, Refused, Slot, Summary, Violation};
