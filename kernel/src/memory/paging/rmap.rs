//! The reverse map of movable user frames: for each movable 4 KiB frame a
//! user space maps, which space maps it and where. Compaction
//! (`memory::movable`) looks a frame up here to find the one leaf it must
//! repoint.
//!
//! What it records: a frame whose block the allocator calls movable
//! (`Mobility::Movable`, order 0), mapped with a 4 KiB page in a user
//! space. Nothing else is movable, and a frame not recorded stays where it
//! is (compaction is told `NotOwned` and gives up on its pageblock):
//! - 2 MiB frames are a pageblock each: compaction never moves one
//!   (`ptalloc` skips pageblocks holding one; moving it would free nothing);
//! - the kernel space's frames are kernel memory, whose physical address
//!   the kernel may hold;
//! - a frame mapped while the map is full (counted in `untracked`);
//! - a frame recorded twice: frames are owned, so a second mapping of one
//!   cannot be made; if it ever were, its entry is pinned (never moved), so
//!   no mapping is left pointing at the old frame.
//!
//! Capacity: [`CAPACITY`] frames, 8 MiB of 4 KiB user pages, in about
//! 56 KiB of `.bss` (28 bytes a slot: the entry and its hash index). The
//! image must stay small (the boot stub maps 4 MiB of it, and a larger
//! image needs more memory to boot), and this is enough for what maps
//! movable user frames today, the tests (a few per pageblock they crowd):
//! the root task's and the object layer's frames are unmovable objects,
//! which are never recorded here. Compaction needs only the few frames of
//! the sparsest pageblock to be recorded; a frame left out pins its
//! pageblock, nothing worse. When the root task and Untyped retype bring user memory by the
//! gigabyte, this becomes a per-frame array beside the allocator's
//! metadata (16 bytes a frame, 0.4% of RAM), sized at boot like it.

use ptalloc::{Freetype, Pfn};

/// Movable frames recorded at once.
pub const CAPACITY: usize = 2048;

// The size the module doc gives (the entries and their hash index).
const _: () = assert!(core::mem::size_of::<Rmap>() <= 58 * 1024);

/// Where a movable frame is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMapping {
    /// Virtual address of the 4 KiB page.
    pub virt: u64,
    /// The user space's root table, as a frame number.
    root_pfn: u32,
    /// The freetype the frame was allocated with.
    pub freetype: Freetype,
    /// Never moved (recorded twice).
    pub pinned: bool,
}

impl UserMapping {
    /// Physical address of the space's root table.
    pub fn root(&self) -> u64 {
        u64::from(self.root_pfn) * ptalloc::PAGE_SIZE
    }
}

/// The map: frame number to mapping, and what it had to leave out.
pub(super) struct Rmap {
    frames: heapless::index_map::FnvIndexMap<u32, UserMapping, CAPACITY>,
    untracked: u64,
}

/// The frame number of `phys` as the map keys it; `None` past 16 TiB
/// (the allocator manages fewer than 2^32 frames, so no owned frame is).
fn key(phys: u64) -> Option<u32> {
    u32::try_from(phys / ptalloc::PAGE_SIZE).ok()
}

impl Rmap {
    pub(super) const fn new() -> Self {
        Self {
            frames: heapless::index_map::FnvIndexMap::new(),
            untracked: 0,
        }
    }

    /// Records that the user space rooted at `root` maps the movable frame
    /// at `phys` at `virt`. A full map leaves it out (the frame is then
    /// not movable); a frame already recorded is pinned.
    pub(super) fn record(&mut self, phys: u64, root: u64, virt: u64, freetype: Freetype) {
        let (Some(frame), Some(root_pfn)) = (key(phys), key(root)) else {
            self.untracked += 1;
            return;
        };
        if let Some(existing) = self.frames.get_mut(&frame) {
            existing.pinned = true;
            return;
        }
        let mapping = UserMapping {
            virt,
            root_pfn,
            freetype,
            pinned: false,
        };
        if self.frames.insert(frame, mapping).is_err() {
            self.untracked += 1;
        }
    }

    /// Forgets the frame at `phys` if the record names that space and
    /// address (a pinned double's other mapping leaves it be).
    pub(super) fn forget(&mut self, phys: u64, root: u64, virt: u64) {
        let Some(frame) = key(phys) else { return };
        if self
            .frames
            .get(&frame)
            .is_some_and(|m| m.root() == root && m.virt == virt)
        {
            self.frames.swap_remove(&frame);
        }
    }

    /// Forgets every frame the space rooted at `root` maps.
    pub(super) fn forget_space(&mut self, root: u64) {
        self.frames.retain(|_, mapping| mapping.root() != root);
    }

    /// Where the frame at `phys` is mapped, if recorded.
    pub(super) fn get(&self, phys: u64) -> Option<UserMapping> {
        self.frames.get(&key(phys)?).copied()
    }

    /// The record of `from` now names `to` (its contents and leaf moved).
    pub(super) fn rekey(&mut self, from: Pfn, to: Pfn) {
        let (Some(from), Some(to)) = (key(from.addr()), key(to.addr())) else {
            return;
        };
        if let Some(mapping) = self.frames.swap_remove(&from) {
            // One entry out, one in: there is room.
            let _ = self.frames.insert(to, mapping);
        }
    }

    /// Frames recorded.
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Movable mappings left out because the map was full.
    pub(super) fn untracked(&self) -> u64 {
        self.untracked
    }
}
