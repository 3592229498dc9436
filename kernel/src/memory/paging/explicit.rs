//! User address spaces whose tables are objects, as in seL4.
//!
//! A [`VSpace`] is a root (PML4) whose user half its user builds one
//! table at a time: every PDPT, PD and PT is a [`TableFrame`] that a
//! paging-structure object owns, linked with [`VSpace::link_table`], and
//! frames are mapped into the last level with [`VSpace::map_frame`]. The
//! module allocates and frees only roots; it links the tables it is
//! given and never frees them.
//!
//! It owns each `VSpace`'s root (from the page-table freetype, its kernel
//! half the kernel's, in a live slot of `paging`, so the verification
//! walk and shootdowns reach it) and every write to the user half and to
//! the tables linked there. Its promises:
//! - every check comes before any write, and a refusal changes nothing;
//! - link, unlink, map and unmap each open at most one page-table write
//!   window (one pair of PKRS writes; a refusal opens none) and allocate
//!   nothing;
//! - a table is linked at one place of one space at a time: its
//!   `TableFrame` records the space and the place, and `link_table`
//!   refuses a table another live space owns (`NotEmpty`). So no table is
//!   reached twice or at two levels, where an entry written as a link
//!   would read as a leaf (a user mapping of a page table);
//! - an unlinked table is empty. A table is linked only when all zero, and
//!   `unlink_table` zeroes it in the window that clears its link, also
//!   when its link is stale (a table above was unlinked first). Tables
//!   below an unlinked one keep their entries, unreachable, until their
//!   own unlink; a dropped space zeroes every table it reaches; a table
//!   its dead space left non-empty is zeroed by [`TableFrame::clear`] or
//!   its drop. A table is freed only empty, and only once no live space
//!   owns it (its drop panics otherwise: unlink first, as seL4 unmaps a
//!   page table before deleting it);
//! - unlinking a table flushes the whole space on the CPUs that have it
//!   loaded (one round: it may cover 512 GiB); unmapping a frame flushes
//!   that page there. Linking and mapping fill empty entries: no flush;
//! - frames are *borrowed*: `map_frame` takes a `&Frame` and the space
//!   neither holds it nor records it in the reverse map (object frames
//!   are unmovable). Here `paging`'s rule "a mapping holds its frame" is
//!   kept by the object layer, not by the type: a frame object outlives
//!   its caps, and deleting a mapped cap unmaps it first, so a mapped
//!   frame is never freed and its pageblock never converted. The frame
//!   checks stay as defence in depth (not page-table memory, within the
//!   physical width), and the verification walk reports a user leaf over
//!   page-table memory. Frames hidden from the direct map (secret frames)
//!   may be mapped: a user mapping shows them in that space only.

use super::{
    ADDRESS, Frame, LARGE, LIVE, LOADED, MAX_SPACES, MapFlags, PRESENT, PageSize, PagingError,
    Reach, USER, USER_END, WRITABLE, cpu, free_table, index, leaf_entry, new_table, new_user_root,
    page_table_memory_in, pte, read, translate_in, unload_dying_root, write, zero_table,
};
use crate::memory::tlb;
use core::sync::atomic::{AtomicU64, Ordering};

/// The bits of an entry that links a table.
const LINK: u64 = PRESENT | WRITABLE | USER;

/// The owner of a table being cleared: live for [`TableFrame::take`], so
/// nothing links it meanwhile.
const CLEARING: u64 = u64::MAX;

/// The id of the `VSpace` in each live slot (0: none). A table records
/// its owner's id; an id found here is a live owner.
static OWNERS: [AtomicU64; MAX_SPACES] = [const { AtomicU64::new(0) }; MAX_SPACES];
/// Ids are `generation * MAX_SPACES + slot`: never 0, never reused.
static GENERATION: AtomicU64 = AtomicU64::new(1);

fn is_live(owner: u64) -> bool {
    owner == CLEARING
        || (owner != 0 && OWNERS[owner as usize % MAX_SPACES].load(Ordering::Acquire) == owner)
}

fn is_zero(phys: u64) -> bool {
    (0..512).all(|slot| read(phys, slot) == 0)
}

/// Writes each `(table, index, value)` of `entries`, then zeroes the
/// table at `zero`, in one window: every edit here goes through it (one
/// copy of the window code).
fn edit(entries: &[(u64, u64, u64)], zero: Option<u64>) {
    pte::with_window(|window| {
        for &(table, slot, value) in entries {
            write(window, table, slot, value);
        }
        if let Some(table) = zero {
            zero_table(window, table);
        }
    });
}

/// Zeroes the table at `phys` in one window, unless it is already zero.
fn zero_if_dirty(phys: u64) {
    if !is_zero(phys) {
        edit(&[], Some(phys));
    }
}

/// A page-table page owned by a paging-structure object: from the
/// page-table freetype, so protected from the moment it exists, and zero.
/// Dropping it frees it, zeroed first if need be; it panics while a live
/// space owns it, so unlink it (or drop that space) first.
pub struct TableFrame {
    phys: u64,
    /// The id of the space that links it (0: none; a dead space's id
    /// counts as none).
    owner: AtomicU64,
    /// Where its owner links it: the address, plus the level's number.
    place: AtomicU64,
}

impl TableFrame {
    /// A zeroed page table.
    pub fn new() -> Result<Self, PagingError> {
        Ok(Self {
            phys: new_table()?,
            owner: AtomicU64::new(0),
            place: AtomicU64::new(0),
        })
    }

    /// Its physical address.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Makes the table `id`'s if no live space owns it; returns the owner
    /// it had.
    fn take(&self, id: u64) -> Option<u64> {
        let owner = self.owner.load(Ordering::Acquire);
        let free = !is_live(owner)
            && self
                .owner
                .compare_exchange(owner, id, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        free.then_some(owner)
    }

    /// Zeroes the table if no live space owns it: never linked, unlinked,
    /// or its space dropped (which leaves non-empty only tables below one
    /// unlinked before). False, changing nothing, while a live space owns
    /// it: [`VSpace::unlink_table`] there.
    pub fn clear(&self) -> bool {
        if self.take(CLEARING).is_none() {
            return false;
        }
        zero_if_dirty(self.phys);
        self.owner.store(0, Ordering::Release);
        true
    }
}

impl Drop for TableFrame {
    fn drop(&mut self) {
        if is_live(*self.owner.get_mut()) {
            panic!(
                "page table {:#x} freed while a live space may link it: unlink it first",
                self.phys
            );
        }
        zero_if_dirty(self.phys);
        free_table(self.phys);
    }
}

/// Which level a linked table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableLevel {
    /// A page-directory-pointer table, linked in the root.
    Pdpt,
    /// A page directory, linked in a PDPT.
    Pd,
    /// A page table, linked in a PD.
    Pt,
}

impl TableLevel {
    /// The paging level: 3 (PDPT), 2 (PD), 1 (PT).
    pub fn level(self) -> u32 {
        match self {
            Self::Pdpt => 3,
            Self::Pd => 2,
            Self::Pt => 1,
        }
    }

    /// Bytes it translates (512 GiB, 1 GiB, 2 MiB), to which the address
    /// it is linked at is aligned.
    pub fn covers(self) -> u64 {
        1 << (12 + 9 * self.level())
    }
}

/// Why a `VSpace` refused a link or a map. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VSpaceError {
    /// The address is not aligned to what the table covers, or to the
    /// frame's size.
    Misaligned,
    /// The address is outside the user half.
    OutOfRange,
    /// A table on the way is not linked: `level` is the paging level of
    /// the highest one missing (3: PDPT, 2: PD, 1: PT), and `bits_left`
    /// seL4's bits left for its failed lookup (`12 + 9 * level`).
    MissingTable {
        /// The missing table's paging level.
        level: u32,
        /// Address bits that table would translate.
        bits_left: u8,
    },
    /// The entry is not empty: a table, a large leaf or a leaf is there
    /// (or a large leaf on the way).
    Occupied,
    /// The frame's order is neither 0 (4 KiB) nor 9 (2 MiB).
    FrameSize,
    /// The frame is page-table memory (defence in depth: no `Frame` is).
    ProtectedFrame,
    /// The frame lies beyond the CPU's physical address width.
    BadFrame,
    /// The table is not all zero, or another live space owns it (a
    /// kernel bug either way: only unmapped tables are linked).
    NotEmpty,
}

/// A user address space whose tables are objects (see the module doc).
pub struct VSpace {
    root: u64,
    /// Its slot in `paging`'s live and loaded sets, and in [`OWNERS`].
    slot: usize,
    id: u64,
    /// Serialises edits, which read, then write, the same tables.
    edits: crate::sync::Mutex<()>,
}

/// The page size a frame maps with.
fn frame_size(frame: &Frame) -> Result<PageSize, VSpaceError> {
    match frame.order() {
        0 => Ok(PageSize::Small),
        9 => Ok(PageSize::Large),
        _ => Err(VSpaceError::FrameSize),
    }
}

/// Checks that `virt` is aligned to `span` and in the user half.
fn check_virt(virt: u64, span: u64) -> Result<(), VSpaceError> {
    if !virt.is_multiple_of(span) {
        Err(VSpaceError::Misaligned)
    } else if virt >= USER_END {
        Err(VSpaceError::OutOfRange)
    } else {
        Ok(())
    }
}

impl VSpace {
    /// A new space with an empty user half; its kernel half is the
    /// kernel's as it is now. It takes a live slot, so the verification
    /// walk ([`live_roots`](super::live_roots)) and shootdowns reach it.
    pub fn new() -> Result<Self, PagingError> {
        let (slot, root) = new_user_root()?;
        let id = GENERATION.fetch_add(1, Ordering::Relaxed) * MAX_SPACES as u64 + slot as u64;
        OWNERS[slot].store(id, Ordering::Release);
        Ok(Self {
            root,
            slot,
            id,
            edits: crate::sync::Mutex::new(()),
        })
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Loads this space on this CPU, marking the CPU first (as
    /// `AddressSpace::load` does).
    pub fn load(&self) {
        LOADED[self.slot].load(crate::arch::percpu::index());
        super::switch_root(self.root);
    }

    fn reach(&self) -> Reach<'static> {
        Reach::LoadedOn(&LOADED[self.slot])
    }

    /// The table holding the entry for `virt` at paging `level` (4: the
    /// root's), and the entry's index, if every table above is linked.
    fn entry_of(&self, virt: u64, level: u32) -> Result<(u64, u64), VSpaceError> {
        let mut table = self.root;
        for above in (level + 1..=4).rev() {
            let entry = read(table, index(virt, above));
            if entry & PRESENT == 0 {
                let level = above - 1;
                let bits_left = (12 + 9 * level) as u8;
                return Err(VSpaceError::MissingTable { level, bits_left });
            }
            if entry & LARGE != 0 {
                return Err(VSpaceError::Occupied);
            }
            table = entry & ADDRESS;
        }
        Ok((table, index(virt, level)))
    }

    /// Links `table` as the `level` table translating from `virt`: every
    /// table above must be linked, its entry empty, and `table` all zero
    /// and owned by no live space. One window, one entry.
    pub fn link_table(
        &self,
        virt: u64,
        level: TableLevel,
        table: &TableFrame,
    ) -> Result<(), VSpaceError> {
        check_virt(virt, level.covers())?;
        let _edits = self.edits.lock();
        let (parent, slot) = self.entry_of(virt, level.level() + 1)?;
        if read(parent, slot) != 0 {
            return Err(VSpaceError::Occupied);
        }
        // Take it before looking inside: once it is ours nobody else
        // writes it, and a refusal gives it back as it was.
        let Some(previous) = table.take(self.id) else {
            return Err(VSpaceError::NotEmpty);
        };
        if !is_zero(table.phys) {
            table.owner.store(previous, Ordering::Release);
            return Err(VSpaceError::NotEmpty);
        }
        table
            .place
            .store(virt | u64::from(level.level()), Ordering::Relaxed);
        edit(&[(parent, slot, table.phys | LINK)], None);
        Ok(())
    }

    /// Unlinks `table` from where it was linked as the `level` table at
    /// `virt`, and zeroes it, in one window; then flushes the whole space
    /// where it is loaded. True if it was linked there. A stale link (a
    /// table above was unlinked first), or a table no live space owns, is
    /// only zeroed (false). A table linked elsewhere (another place, or
    /// another live space) is left alone (false): zeroing it would drop
    /// translations there without a flush.
    pub fn unlink_table(&self, virt: u64, level: TableLevel, table: &TableFrame) -> bool {
        let _edits = self.edits.lock();
        let place = virt | u64::from(level.level());
        let ours = table.owner.load(Ordering::Acquire) == self.id
            && table.place.load(Ordering::Relaxed) == place;
        if !ours && table.take(self.id).is_none() {
            return false;
        }
        // Linked here if its place still names it (not if a table above
        // was unlinked, taking it out of reach).
        let link = if ours {
            self.entry_of(virt, level.level() + 1)
                .ok()
                // The CPU sets the accessed bit in a link it walks.
                .filter(|&(parent, slot)| {
                    read(parent, slot) & (ADDRESS | LINK | LARGE) == table.phys | LINK
                })
        } else {
            None
        };
        if let Some((parent, slot)) = link {
            edit(&[(parent, slot, 0)], Some(table.phys));
        } else {
            zero_if_dirty(table.phys);
        }
        // Before another space may link it, no CPU may hold a walk
        // cached through it.
        if link.is_some() {
            tlb::flush_space(self.reach());
        }
        table.owner.store(0, Ordering::Release);
        link.is_some()
    }

    /// Maps `frame` at `virt` with one page of its size (order 0: 4 KiB
    /// in a PT, order 9: 2 MiB in a PD), user-accessible, writable and
    /// executable as `flags` say. The tables down to the leaf's must be
    /// linked and the leaf empty. The frame is borrowed: the caller keeps
    /// it alive until [`unmap_frame`](Self::unmap_frame).
    pub fn map_frame(&self, virt: u64, frame: &Frame, flags: MapFlags) -> Result<(), VSpaceError> {
        let size = frame_size(frame)?;
        check_virt(virt, size.bytes())?;
        let phys = frame.addr();
        if phys
            .checked_add(size.bytes())
            .is_none_or(|end| end > cpu::physical_address_limit())
        {
            return Err(VSpaceError::BadFrame);
        }
        if page_table_memory_in(phys, size.bytes()).is_some() {
            return Err(VSpaceError::ProtectedFrame);
        }
        let _edits = self.edits.lock();
        let (table, slot) = self.entry_of(virt, size.leaf_level())?;
        if read(table, slot) != 0 {
            return Err(VSpaceError::Occupied);
        }
        let leaf = leaf_entry(phys, size, flags, USER);
        edit(&[(table, slot, leaf)], None);
        Ok(())
    }

    /// Unmaps `frame` from `virt` if a leaf of its size there names it
    /// (one window), and flushes the page where the space is loaded.
    /// False, changing nothing, for a stale mapping.
    pub fn unmap_frame(&self, virt: u64, frame: &Frame) -> bool {
        let Ok(size) = frame_size(frame) else {
            return false;
        };
        if check_virt(virt, size.bytes()).is_err() {
            return false;
        }
        let _edits = self.edits.lock();
        let Ok((table, slot)) = self.entry_of(virt, size.leaf_level()) else {
            return false;
        };
        // Bit 7 is LARGE in a PD entry, and PAT (never set) in a PT's.
        let large = if size == PageSize::Large { LARGE } else { 0 };
        let leaf = read(table, slot);
        if leaf & (PRESENT | LARGE) != PRESENT | large || leaf & ADDRESS != frame.addr() {
            return false;
        }
        edit(&[(table, slot, 0)], None);
        tlb::flush_pages(&[virt], self.reach());
        true
    }

    /// The frame and leaf entry mapping `virt`, if any.
    pub fn translate(&self, virt: u64) -> Option<(u64, u64)> {
        translate_in(self.root, virt)
    }
}

/// Zeroes the `level` table at `phys` and every table below it (in the
/// user half, for a root), children first, one window per table. Leaves
/// are frames their objects own: left alone.
fn zero_tree(phys: u64, level: u32) {
    let slots = if level == 4 { 256 } else { 512 };
    if level > 1 {
        for slot in 0..slots {
            let entry = read(phys, slot);
            if entry & PRESENT != 0 && entry & LARGE == 0 {
                zero_tree(entry & ADDRESS, level - 1);
            }
        }
    }
    zero_if_dirty(phys);
}

impl Drop for VSpace {
    fn drop(&mut self) {
        // A loaded root is never freed.
        unload_dying_root(self.slot, self.root);
        // Its tables belong to objects that outlive it: each ends empty,
        // none is freed. The slot and the id stay until then, so no space
        // takes one of them (nor the slot's id) while it is zeroed.
        zero_tree(self.root, 4);
        OWNERS[self.slot].store(0, Ordering::Release);
        LIVE[self.slot].store(0, Ordering::Release);
        free_table(self.root);
    }
}

/// The module's in-kernel tests (run under QEMU with `test=`).
#[path = "explicit_tests.rs"]
mod tests;
