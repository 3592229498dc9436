//! The VSpace invocations: map and unmap frames and page tables, as
//! `abi::InvocationLabel` documents them. Each checks the caps and the
//! words first; `paging::explicit` then checks the tables and makes the
//! one write (one window, two PKRS writes), or refuses with nothing
//! changed; only then is the mapping recorded in the cap.

use super::{Body, Objects, bad_cap};
use crate::memory::frames::Frame;
use crate::memory::paging::{MapFlags, TableFrame, TableLevel, VSpace, VSpaceError};
use abi::{CapRights, Error, InvocationLabel, LookupFailure, MapAttributes};
use cspace::{Cap, FrameSize, Mapping, ObjectId, PagingLevel, SlotRef};

/// Where user mappings may go: the lower half.
const USER_END: u64 = 1 << 47;

/// The capability's level of a table linked at `level`.
pub(super) fn paging_level(level: TableLevel) -> PagingLevel {
    match level {
        TableLevel::Pt => PagingLevel::Pt,
        TableLevel::Pd => PagingLevel::Pd,
        TableLevel::Pdpt => PagingLevel::Pdpt,
    }
}

/// The explicit-paging level of a mappable table (`None` for a PML4).
pub(super) fn table_level(level: PagingLevel) -> Option<TableLevel> {
    match level {
        PagingLevel::Pt => Some(TableLevel::Pt),
        PagingLevel::Pd => Some(TableLevel::Pd),
        PagingLevel::Pdpt => Some(TableLevel::Pdpt),
        PagingLevel::Pml4 => None,
    }
}

/// The checks every map shares: `words` message words and an extra cap,
/// the invoked cap not mapped yet, and extra cap 0 a VSpace (a PML4),
/// whose id this returns.
fn map_target(
    args: &[u64],
    words: usize,
    extra: &[Cap],
    mapped: Option<Mapping>,
) -> Result<ObjectId, Error> {
    if args.len() < words || extra.is_empty() {
        return Err(Error::TruncatedMessage);
    }
    if mapped.is_some() {
        return Err(bad_cap(0));
    }
    match extra[0] {
        Cap::PagingStructure {
            id,
            level: PagingLevel::Pml4,
            ..
        } => Ok(id),
        _ => Err(bad_cap(1)),
    }
}

/// The VSpace `vspace` and the frame `id`, which live caps name.
fn space_and_frame(objects: &Objects, vspace: ObjectId, id: ObjectId) -> (&VSpace, &Frame) {
    match (objects.body(vspace), objects.body(id)) {
        (Some(Body::VSpace(space)), Some(Body::Frame(frame))) => (space, frame),
        _ => panic!("live caps name a VSpace or a frame that is not one"),
    }
}

/// The VSpace `vspace` and the table `id`, which live caps name.
fn space_and_table(objects: &Objects, vspace: ObjectId, id: ObjectId) -> (&VSpace, &TableFrame) {
    match (objects.body(vspace), objects.body(id)) {
        (Some(Body::VSpace(space)), Some(Body::Table(table))) => (space, table),
        _ => panic!("live caps name a VSpace or a table that is not one"),
    }
}

/// A virtual address from MR0: aligned to `span`, and the whole span in
/// the user half.
fn user_address(word: u64, span: u64) -> Result<u64, Error> {
    if !word.is_multiple_of(span) {
        return Err(Error::AlignmentError);
    }
    if word.checked_add(span).is_none_or(|end| end > USER_END) {
        return Err(Error::InvalidArgument { index: 0 });
    }
    Ok(word)
}

/// What `paging::explicit` refused, as the invocation's error.
fn refused(error: VSpaceError) -> Error {
    match error {
        VSpaceError::MissingTable { bits_left, .. } => Error::FailedLookup {
            source: false,
            failure: LookupFailure::MissingCapability { bits_left },
        },
        VSpaceError::Occupied => Error::DeleteFirst,
        VSpaceError::Misaligned => Error::AlignmentError,
        VSpaceError::OutOfRange => Error::InvalidArgument { index: 0 },
        // The object layer only hands paging its own frames and tables,
        // fresh or zeroed: anything else is a broken invariant.
        other => panic!("paging refused an object's mapping: {other:?}"),
    }
}

/// `FrameMap`, `FrameUnmap` and `FrameGetAddress` on the frame cap in `at`.
/// Returns the reply's words.
pub(super) fn invoke_frame(
    objects: &mut Objects,
    at: SlotRef,
    cap: Cap,
    label: InvocationLabel,
    args: &[u64],
    extra: &[Cap],
) -> Result<heapless::Vec<u64, 4>, Error> {
    let Cap::Frame {
        id,
        size,
        rights,
        mapped,
        ..
    } = cap
    else {
        return Err(Error::IllegalOperation);
    };
    let mut reply = heapless::Vec::new();
    match label {
        InvocationLabel::FrameMap => {
            let vspace = map_target(args, 3, extra, mapped)?;
            let span = match size {
                FrameSize::Small => 4096,
                FrameSize::Large => 2 << 20,
            };
            let vaddr = user_address(args[0], span)?;
            let asked =
                CapRights::from_word(args[1]).map_err(|_| Error::InvalidArgument { index: 1 })?;
            let granted = asked & rights;
            if !granted.contains(CapRights::READ) {
                return Err(Error::InvalidArgument { index: 1 });
            }
            let attributes = MapAttributes::from_word(args[2])
                .map_err(|_| Error::InvalidArgument { index: 2 })?;
            let flags = MapFlags {
                writable: granted.contains(CapRights::WRITE),
                executable: attributes.contains(MapAttributes::EXECUTE),
            };
            if flags.writable && flags.executable {
                return Err(Error::InvalidArgument { index: 2 });
            }
            let (space, frame) = space_and_frame(objects, vspace, id);
            let before = pkrs_writes();
            space.map_frame(vaddr, frame, flags).map_err(refused)?;
            objects.count_map(before);
            record(objects, at, Some(Mapping { vspace, vaddr }));
        }
        InvocationLabel::FrameUnmap => {
            if let Some(mapping) = mapped {
                let (space, frame) = space_and_frame(objects, mapping.vspace, id);
                space.unmap_frame(mapping.vaddr, frame);
                record(objects, at, None);
            }
        }
        InvocationLabel::FrameGetAddress => {
            let Some(Body::Frame(frame)) = objects.body(id) else {
                panic!("a frame cap names an object that is no frame");
            };
            // One word in a vector of four.
            let _ = reply.push(frame.addr());
        }
        _ => return Err(Error::IllegalOperation),
    }
    Ok(reply)
}

/// `PageTableMap` and `PageTableUnmap` on the PT, PD or PDPT cap in `at`.
pub(super) fn invoke_table(
    objects: &mut Objects,
    at: SlotRef,
    cap: Cap,
    label: InvocationLabel,
    args: &[u64],
    extra: &[Cap],
) -> Result<(), Error> {
    let Cap::PagingStructure { id, level, mapped } = cap else {
        return Err(Error::IllegalOperation);
    };
    let level = table_level(level).ok_or(Error::IllegalOperation)?;
    match label {
        InvocationLabel::PageTableMap => {
            let vspace = map_target(args, 2, extra, mapped)?;
            if !objects.caps.is_final(at) {
                return Err(Error::RevokeFirst);
            }
            let vaddr = user_address(args[0], level.covers())?;
            if args[1] != 0 {
                return Err(Error::InvalidArgument { index: 1 });
            }
            let (space, table) = space_and_table(objects, vspace, id);
            let mut before = pkrs_writes();
            let mut linked = space.link_table(vaddr, level, table);
            // A table its dead VSpace left non-empty (it hung below one
            // unlinked before) is cleared on its way back in (`clear`
            // refuses a table a live space owns). That is the cost of the
            // VSpace's destruction, counted apart from the map's.
            let mut cleared = None;
            if linked == Err(VSpaceError::NotEmpty) && table.clear() {
                cleared = Some(pkrs_writes() - before);
                before = pkrs_writes();
                linked = space.link_table(vaddr, level, table);
            }
            if let Some(writes) = cleared {
                objects.costs.clears += 1;
                objects.costs.clear_pkrs_writes += writes;
            }
            linked.map_err(refused)?;
            objects.count_map(before);
            record(objects, at, Some(Mapping { vspace, vaddr }));
        }
        InvocationLabel::PageTableUnmap => {
            if !objects.caps.is_final(at) {
                return Err(Error::RevokeFirst);
            }
            if let Some(mapping) = mapped {
                let (space, table) = space_and_table(objects, mapping.vspace, id);
                space.unlink_table(mapping.vaddr, level, table);
                record(objects, at, None);
            }
        }
        _ => return Err(Error::IllegalOperation),
    }
    Ok(())
}

/// PKRS writes on this CPU so far (0 where the protection is not PKS).
fn pkrs_writes() -> u64 {
    crate::arch::pks::current().map_or(0, |pks| pks.pkrs_writes())
}

/// Records the mapping (or none) in the cap at `at`, which was checked.
fn record(objects: &mut Objects, at: SlotRef, mapping: Option<Mapping>) {
    if let Err(error) = objects.caps.set_mapping(at, mapping) {
        panic!("recording a checked mapping failed: {error:?}");
    }
}

impl Objects {
    /// Counts one map invocation and the PKRS writes since `before`.
    fn count_map(&mut self, before: u64) {
        self.costs.maps += 1;
        self.costs.map_pkrs_writes += pkrs_writes() - before;
    }
}
