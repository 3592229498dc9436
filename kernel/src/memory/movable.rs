//! Moving movable user frames, so that compaction can empty pageblocks for
//! page tables: the kernel's [`ptalloc::Migrate`], [`USER_FRAMES`].
//!
//! `ptalloc` calls [`Migrate::migrate`] when a page-table allocation finds
//! no whole free pageblock: it picks the pageblock with the fewest live
//! movable frames, allocates a destination for each, and asks the owner
//! to move it. The owner of movable frames is whoever maps them in a user
//! space; `paging` records each such 4 KiB frame in its reverse map (which
//! space, which address), and this module moves one:
//! 1. try the reverse map's lock ([`paging::try_lock_rmap`]); if it is
//!    held, refuse with `Pinned` (never wait: the allocation that called
//!    us may be inside `map` or `unmap`, which hold it or wait on it);
//! 2. look `from` up: not recorded (a 2 MiB frame, a kernel-space frame,
//!    one mapped while the map was full, one not mapped at all) is
//!    `NotOwned`; a pinned record, `Pinned`; another order or freetype
//!    than recorded, `NotOwned`;
//! 3. under the same lock, make the space's leaf non-present and flush
//!    it on every CPU that has the space loaded (INVLPG here, a shootdown
//!    round for the others; a space loaded nowhere has no translation,
//!    for without PCID the switch away from it dropped them), so no write
//!    to `from` lands once the copy starts;
//! 4. copy the contents: a `Mapped` frame through the direct map, an
//!    `Unmapped` (secret) one through the ephemeral slot (tried, never
//!    waited for: busy is `Pinned`, and the old leaf comes back), so a
//!    secret is never visible anywhere but at the slot for the copy;
//! 5. write the leaf for `to` in one page-table window and make the record
//!    name `to` ([`paging::LockedRmap::repoint`]).
//!
//! After that, `unmap` hands back `to` and dropping the space frees `to`:
//! the leaf is the mapping's record of the frame it holds, and only the
//! allocator frees `from` (it claims it as compaction's own). Nothing here
//! allocates or frees. On a refusal nothing changed: the leaf, the record
//! and both frames are as they were.
//!
//! Locks: compaction calls this with no allocator lock held, from inside
//! a page-table allocation, which `paging` makes while holding a space's
//! `edits` (`map`). This does not take it; it takes the reverse map's lock
//! and the ephemeral slot's only by trying, and finds the space's loaded
//! CPUs without a lock. So it can deadlock with nothing.
//!
//! A user access to the page between steps 3 and 5 faults: there is no
//! user mode yet; its page-fault handler will have to wait for the move.

use super::direct_map::DIRECT_MAP_BASE;
use super::ephemeral;
use super::paging::{self, Flushed, RepointError};
use core::sync::atomic::{AtomicU64, Ordering};
use ptalloc::{Freetype, Migrate, MigrateError, Mobility, Pfn, Protection};

/// The owner of movable user frames, as `ptalloc` sees it; registered at
/// boot with `with_migrator` (`frames::init`).
pub static USER_FRAMES: UserFrames = UserFrames::new();

/// The owner of movable user frames, and its counters.
pub struct UserFrames {
    moved: AtomicU64,
    flushed_where_loaded: AtomicU64,
    refused_busy: AtomicU64,
    refused_pinned: AtomicU64,
    refused_not_owned: AtomicU64,
}

/// What [`USER_FRAMES`] has done since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationCounts {
    /// Frames moved.
    pub moved: u64,
    /// Of them, moved in a space loaded on some CPU (its old translation
    /// flushed there: INVLPG here, a shootdown round elsewhere).
    pub flushed_where_loaded: u64,
    /// Refused because the reverse map or the ephemeral slot was busy.
    pub refused_busy: u64,
    /// Refused because the frame is pinned, or the destination is not
    /// fit to be mapped.
    pub refused_pinned: u64,
    /// Refused because the frame is not a recorded movable user frame.
    pub refused_not_owned: u64,
}

impl UserFrames {
    const fn new() -> Self {
        Self {
            moved: AtomicU64::new(0),
            flushed_where_loaded: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            refused_pinned: AtomicU64::new(0),
            refused_not_owned: AtomicU64::new(0),
        }
    }

    /// The counters.
    pub fn counts(&self) -> MigrationCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MigrationCounts {
            moved: load(&self.moved),
            flushed_where_loaded: load(&self.flushed_where_loaded),
            refused_busy: load(&self.refused_busy),
            refused_pinned: load(&self.refused_pinned),
            refused_not_owned: load(&self.refused_not_owned),
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn move_frame(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: Freetype,
    ) -> Result<Flushed, MigrateError> {
        // Only 4 KiB frames are recorded (see `paging`'s reverse map).
        if order != 0 || freetype.mobility != Mobility::Movable {
            self.count(&self.refused_not_owned);
            return Err(MigrateError::NotOwned);
        }
        let Some(mut rmap) = paging::try_lock_rmap() else {
            self.count(&self.refused_busy);
            return Err(MigrateError::Pinned);
        };
        match rmap.get(from.addr()) {
            Some(mapping) if mapping.freetype == freetype => {}
            _ => {
                self.count(&self.refused_not_owned);
                return Err(MigrateError::NotOwned);
            }
        }
        let mut slot_busy = false;
        let result = rmap.repoint(from, to, |from, to| match copy_frame(from, to, freetype) {
            Ok(()) => true,
            Err(busy) => {
                slot_busy = busy;
                false
            }
        });
        drop(rmap);
        match result {
            Ok(flushed) => Ok(flushed),
            Err(RepointError::CopyFailed) if slot_busy => {
                self.count(&self.refused_busy);
                Err(MigrateError::Pinned)
            }
            Err(RepointError::NotRecorded | RepointError::LeafMismatch) => {
                self.count(&self.refused_not_owned);
                Err(MigrateError::NotOwned)
            }
            Err(RepointError::Pinned | RepointError::BadDestination | RepointError::CopyFailed) => {
                self.count(&self.refused_pinned);
                Err(MigrateError::Pinned)
            }
        }
    }
}

impl Migrate for UserFrames {
    fn migrate(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: Freetype,
    ) -> Result<(), MigrateError> {
        let flushed = self.move_frame(from, to, order, freetype)?;
        self.count(&self.moved);
        if flushed == Flushed::Loaded {
            self.count(&self.flushed_where_loaded);
        }
        Ok(())
    }
}

/// Copies the 4 KiB frame at `from` to `to`, both of `freetype`; `Err(true)`
/// if the ephemeral slot was busy, `Err(false)` if the frames may not be
/// copied this way.
fn copy_frame(from: u64, to: u64, freetype: Freetype) -> Result<(), bool> {
    match freetype.protection {
        Protection::Mapped => {
            // The sealed record, not the allocator's writable books, says
            // what the direct map shows: both must be plain mapped frames.
            let mapped = |phys: u64| {
                super::sealed::protection(phys) == Protection::Mapped
                    && !paging::is_page_table_memory(phys)
                    && !super::kernel_image_phys().contains(&phys)
            };
            if !(mapped(from) && mapped(to)) {
                return Err(false);
            }
            // SAFETY: both are whole 4 KiB frames of RAM the direct map
            // shows writable with key 0 (checked above); `to` is the block
            // compaction allocated for this move, which nothing else
            // holds, and `from` is a user frame whose leaf is not present
            // and flushed on every CPU while this runs. They are different
            // blocks, so they do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (DIRECT_MAP_BASE + from) as *const u8,
                    (DIRECT_MAP_BASE + to) as *mut u8,
                    4096,
                )
            };
            Ok(())
        }
        Protection::Unmapped => {
            ephemeral::try_copy_frame(from, to).map_err(|error| error == ephemeral::CopyError::Busy)
        }
        // Key-protected frames are page tables, never handed out as
        // frames, so never mapped in a user space.
        Protection::Pkey(_) => Err(false),
    }
}

mod tests;
