//! Copy, mint, move, mutate and mapping updates on resolved slots.
//!
//! Each operation checks everything (destination empty, source present,
//! the cap derivable, the data word acceptable) before it changes
//! anything: an `Err` means nothing changed. The rules:
//! - **Deriving** (copy, mint): a frame cap's copy is unmapped (each frame
//!   cap maps its frame at most once); a PT, PD or PDPT cap can be derived
//!   only while mapped (`IllegalOperation`), and mapped or unmapped only
//!   through its last cap, so a table is never mapped twice; a PML4 cap
//!   can always be derived.
//! - **Rights** are cut to the given mask, never widened.
//! - **Data** ([`CapData`]): a badge for an endpoint or notification cap,
//!   set only where none is (0 leaves the cap's badge alone); a guard
//!   ([`abi::GuardData`]) for a CNode cap, which must fit beside the
//!   radix; 0 for every other cap. A bad word is `InvalidArgument` with
//!   its message index.
//! - **Mutate** may badge only an unbadged cap with no children: a badge
//!   under existing copies would leave them unbadged under a badged
//!   parent.
//! - No operation changes a cap's variant: a frame stays a frame and a
//!   paging structure a paging structure.

use core::ops::DerefMut;

use abi::{CapRights, Error, GuardData, LookupFailure};

use crate::cap::{Cap, Mapping, PagingLevel, SlotRef};
use crate::space::{CSpace, ObjectRecord, Slot, no_slot};

/// A badge or guard word, and which message word it came from (for the
/// `InvalidArgument` index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapData {
    /// The word.
    pub word: u64,
    /// Its message-register index.
    pub index: u8,
}

impl CapData {
    /// No badge, no guard.
    pub const NONE: CapData = CapData { word: 0, index: 0 };
}

/// The cap a copy or mint of `cap` starts from.
fn derive(cap: &Cap) -> Result<Cap, Error> {
    match *cap {
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
            level,
            mapped: None,
            ..
        } if level != PagingLevel::Pml4 => Err(Error::IllegalOperation),
        other => Ok(other),
    }
}

/// `cap` with its rights cut to `mask`.
fn mask_rights(cap: Cap, mask: CapRights) -> Cap {
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
        other => other,
    }
}

/// `cap` with `data` applied. `may_badge`: whether an endpoint or
/// notification cap may take a badge here.
fn with_data(cap: Cap, data: CapData, may_badge: bool) -> Result<Cap, Error> {
    let bad = Error::InvalidArgument { index: data.index };
    match cap {
        Cap::Endpoint { badge, .. } | Cap::Notification { badge, .. } if data.word != 0 => {
            if badge != 0 || !may_badge {
                return Err(Error::IllegalOperation);
            }
            Ok(match cap {
                Cap::Endpoint { id, rights, .. } => Cap::Endpoint {
                    id,
                    badge: data.word,
                    rights,
                },
                Cap::Notification { id, rights, .. } => Cap::Notification {
                    id,
                    badge: data.word,
                    rights,
                },
                other => other,
            })
        }
        Cap::Endpoint { .. } | Cap::Notification { .. } => Ok(cap),
        Cap::CNode { id, radix_bits, .. } => {
            let guard = GuardData::from_word(data.word).map_err(|_| bad)?;
            if guard.bits() as u32 + radix_bits as u32 > 64 {
                return Err(bad);
            }
            Ok(Cap::CNode {
                id,
                radix_bits,
                guard: guard.guard(),
                guard_bits: guard.bits(),
            })
        }
        other if data.word == 0 => Ok(other),
        _ => Err(bad),
    }
}

impl<M, R> CSpace<M, R>
where
    M: DerefMut<Target = [Slot]>,
    R: DerefMut<Target = [ObjectRecord<M>]>,
{
    /// The source's cap, once the destination is known empty and the
    /// source non-empty.
    fn transfer(&self, src: SlotRef, dest: SlotRef) -> Result<Cap, Error> {
        let dest_slot = self.slot(dest).ok_or(no_slot(false))?;
        if !dest_slot.cap.is_null() {
            return Err(Error::DeleteFirst);
        }
        let src_slot = self.slot(src).ok_or(no_slot(true))?;
        if src_slot.cap.is_null() {
            return Err(Error::FailedLookup {
                source: true,
                failure: LookupFailure::MissingCapability { bits_left: 0 },
            });
        }
        Ok(src_slot.cap)
    }

    /// Puts `cap` (a new cap to the source's object) in empty `dest`, as
    /// the first child of `src`.
    fn place_child(&mut self, src: SlotRef, dest: SlotRef, cap: Cap) {
        if let Some(id) = cap.object() {
            self.count_cap(id);
        }
        *self.node(dest) = Slot { cap, ..Slot::EMPTY };
        self.link_child(src, dest);
    }

    /// Copies the cap in `src` to empty `dest` with its rights cut to
    /// `rights` (same badge, same guard), as a child of `src`.
    pub fn copy(&mut self, src: SlotRef, dest: SlotRef, rights: CapRights) -> Result<(), Error> {
        let cap = self.transfer(src, dest)?;
        let new = mask_rights(derive(&cap)?, rights);
        self.place_child(src, dest, new);
        Ok(())
    }

    /// Copies the cap in `src` to empty `dest` with its rights cut to
    /// `rights` and `data` applied (a badge where none is, or a CNode
    /// guard), as a child of `src`.
    pub fn mint(
        &mut self,
        src: SlotRef,
        dest: SlotRef,
        rights: CapRights,
        data: CapData,
    ) -> Result<(), Error> {
        let cap = self.transfer(src, dest)?;
        let new = with_data(mask_rights(derive(&cap)?, rights), data, true)?;
        self.place_child(src, dest, new);
        Ok(())
    }

    /// Moves the cap in `src` to empty `dest`, with its place in the
    /// derivation tree (parent and children).
    pub fn move_cap(&mut self, src: SlotRef, dest: SlotRef) -> Result<(), Error> {
        self.transfer(src, dest)?;
        self.relocate(src, dest);
        Ok(())
    }

    /// Moves the cap in `src` to empty `dest` as [`CSpace::move_cap`] does,
    /// applying `data` on the way: a CNode guard, or a badge on an
    /// unbadged endpoint or notification cap that has no children.
    pub fn mutate(&mut self, src: SlotRef, dest: SlotRef, data: CapData) -> Result<(), Error> {
        let cap = self.transfer(src, dest)?;
        let childless = self.children(src).next().is_none();
        let new = with_data(cap, data, childless)?;
        self.relocate(src, dest);
        self.node(dest).cap = new;
        Ok(())
    }

    /// Records that the kernel mapped (`Some`) or unmapped (`None`) the
    /// frame or paging-structure cap in `at`, with the map and unmap
    /// invocations' errors: a PML4 or any other cap is `IllegalOperation`;
    /// a cap mapped already is `InvalidCapability { index: 0 }`; a VSpace
    /// that is no live PML4 is `InvalidCapability { index: 1 }` (extra
    /// cap 0); unmapping an unmapped cap does nothing. A table is mapped
    /// and unmapped only through its last cap (`RevokeFirst`), so it is
    /// never mapped twice, even after its VSpace went and left copies.
    pub fn set_mapping(&mut self, at: SlotRef, mapping: Option<Mapping>) -> Result<(), Error> {
        let cap = self.cap(at).ok_or(no_slot(false))?;
        let (mapped, table) = match cap {
            Cap::Frame { mapped, .. } => (mapped, false),
            Cap::PagingStructure { level, mapped, .. } if level != PagingLevel::Pml4 => {
                (mapped, true)
            }
            _ => return Err(Error::IllegalOperation),
        };
        match mapping {
            Some(_) if mapped.is_some() => return Err(Error::InvalidCapability { index: 0 }),
            Some(new) if !self.is_vspace(new.vspace) => {
                return Err(Error::InvalidCapability { index: 1 });
            }
            None if mapped.is_none() => return Ok(()),
            _ => {}
        }
        if table && !self.is_final(at) {
            return Err(Error::RevokeFirst);
        }
        if let Cap::Frame { mapped, .. } | Cap::PagingStructure { mapped, .. } =
            &mut self.node(at).cap
        {
            *mapped = mapping;
        }
        Ok(())
    }
}
