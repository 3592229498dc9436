//! The direct-map backend: how the allocator changes and flushes the
//! mappings of whole pageblocks, and zeroes pages, without knowing x86.
//!
//! The kernel implements [`DirectMap`] on its real direct map; the `sim`
//! module (feature `std`) implements it on a model that checks every call.
//!
//! # Contract
//! - [`DirectMap::protect`] changes the mapping of whole, aligned
//!   pageblocks. Where the range lies inside a larger mapping (a 1 GiB
//!   page), the backend splits it, and takes every page-table page it needs
//!   from the [`SplitPages`] it is given, never from anywhere else: that
//!   is what keeps splitting from recursing into the allocator. If a page
//!   is missing it fails with [`DirectMapError::NoSplitPage`] and leaves
//!   the mapping as it was.
//! - `protect` does not flush; the allocator calls [`DirectMap::flush`]
//!   once per batch, and only when permissions were taken away.
//! - [`DirectMap::protect_frame`] does the same for one 4 KiB frame (the
//!   allocator's single-page fallback), splitting 2 MiB (and 1 GiB)
//!   mappings around it with [`SplitPages`] only.
//! - [`DirectMap::zero`] clears pages of any protection: inside a write
//!   window for key-protected pages, through a temporary mapping for
//!   unmapped ones.
//! - [`DirectMap::largest_page`] and [`DirectMap::mappings`] describe the
//!   map's shape; both may answer `None` (unknown). `largest_page` must be
//!   known for [`Strategy::Granular`](crate::Strategy::Granular).

use crate::freetype::Protection;
use crate::{PAGEBLOCK_ORDER, Pfn};

/// A run of whole, aligned pageblocks: `count` blocks from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageblockRange {
    /// First frame (pageblock aligned).
    pub start: Pfn,
    /// Number of pageblocks.
    pub pageblocks: u64,
}

impl PageblockRange {
    /// Number of frames covered.
    pub fn frames(&self) -> u64 {
        self.pageblocks << PAGEBLOCK_ORDER
    }

    /// One past the last frame.
    pub fn end(&self) -> Pfn {
        Pfn(self.start.0 + self.frames())
    }
}

/// Where a split finds its page-table pages.
pub trait SplitPages {
    /// A page-table page, or `None` if there is none left. It is either
    /// already mapped with the page-table protection (a reserve page), or,
    /// for a conversion to the page-table freetype, one of the frames being
    /// converted: it may then still be `Unmapped`, so the backend must fill
    /// it through a mapping of its own, not through the direct map.
    fn take(&mut self) -> Option<Pfn>;
}

/// What a `protect` call did, for the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectReport {
    /// 1 GiB mappings split into 2 MiB ones.
    pub splits_1g: u32,
    /// 2 MiB mappings split into 4 KiB ones.
    pub splits_2m: u32,
}

/// What a flush cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Flushes on the calling CPU.
    pub local: u32,
    /// CPUs interrupted for a shootdown.
    pub remote: u32,
}

/// A direct-map page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB: one pageblock.
    Size2M,
    /// 1 GiB.
    Size1G,
}

/// Leaf entries of the direct map by page size, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingCounts {
    /// 1 GiB mappings.
    pub pages_1g: u64,
    /// 2 MiB mappings.
    pub pages_2m: u64,
    /// 4 KiB mappings.
    pub pages_4k: u64,
}

/// A backend failure. The mapping is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectMapError {
    /// A split needed a page-table page and the source had none.
    NoSplitPage,
    /// The backend refused or failed (fault injection, hardware error).
    Failed,
}

/// The kernel's direct map, as the allocator sees it.
pub trait DirectMap: Sync {
    /// Gives every frame of `range` the protection `to` (it has `from`).
    fn protect(
        &self,
        range: PageblockRange,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError>;

    /// Gives the one 4 KiB frame `pfn` (which has `from`) the protection
    /// `to`, splitting the mappings around it with pages from
    /// `split_pages` only, as [`protect`](Self::protect) does; does not
    /// flush. The allocator's last resort (`Config::single_page_fallback`)
    /// protects single page-table pages inside a mixed pageblock with it,
    /// and gives them back their pageblock's protection when freed. A
    /// backend that cannot returns [`DirectMapError::Failed`].
    fn protect_frame(
        &self,
        pfn: Pfn,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError>;

    /// Flushes stale translations of `range` on every CPU.
    fn flush(&self, range: PageblockRange) -> FlushReport;

    /// Zeroes the `1 << order` frames from `start`, which have `protection`.
    fn zero(&self, start: Pfn, order: u32, protection: Protection) -> Result<(), DirectMapError>;

    /// The largest page the direct map holds now or may map with later;
    /// `Some(Size2M)` promises that no 1 GiB mapping exists or will be
    /// made, so no conversion ever splits one. `None`: unknown (the
    /// default), which [`Strategy::Granular`](crate::Strategy::Granular)
    /// refuses.
    fn largest_page(&self) -> Option<PageSize> {
        None
    }

    /// The direct map's leaf entries by size now, for the statistics
    /// ([`Stats::direct_map`](crate::Stats::direct_map)); `None` (the
    /// default) if the backend does not count them. Called without any
    /// allocator lock held.
    fn mappings(&self) -> Option<MappingCounts> {
        None
    }

    /// What a CPU does, again and again, while it waits for one of the
    /// allocator's locks. The holder may be inside [`flush`](Self::flush),
    /// waiting for every CPU to drop its stale translations: a kernel whose
    /// CPUs wait with interrupts off must answer that request here, or
    /// both CPUs wait forever. By default, a pause.
    fn wait_for_lock(&self) {
        core::hint::spin_loop();
    }
}

/// Why a movable block was not moved. Either way the owner changed
/// nothing: the block is still its, where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateError {
    /// The block cannot move now: pinned (a device or the kernel holds
    /// its address), or the lock its mappings need is held on this path.
    Pinned,
    /// The owner holds no block there (it was freed meanwhile), or not
    /// with that order and freetype.
    NotOwned,
}

/// The owner of movable pages: whoever allocated blocks of a
/// [`Mobility::Movable`](crate::Mobility::Movable) freetype and can move
/// their contents and mappings (the microkernel's user frames, or a test).
///
/// Compaction calls it to empty a pageblock: the allocator picks the
/// pageblock and a free destination of the same order, freetype and
/// protection, and the owner moves the data. The allocator updates its own
/// books; the owner updates its (it holds `to` from now on, and `from` is
/// no longer its to free).
///
/// # Contract
/// - `migrate` is called with no allocator lock held, from inside an
///   allocation of a page-table page on any CPU. It must not allocate or
///   free pages itself. An owner whose mappings need a lock the
///   allocating path may hold must try that lock and return
///   [`MigrateError::Pinned`] rather than wait.
/// - On `Ok`, the contents of `from` are at `to`, every mapping of
///   `from` now maps `to` (stale translations flushed), and the owner
///   will never free or touch `from` again.
/// - On `Err`, nothing changed, and `from` is still the owner's.
/// - A block the owner is freeing concurrently is `NotOwned`: the owner
///   serialises its own frees with `migrate`.
pub trait Migrate: Sync {
    /// Moves the allocated block of `1 << order` frames at `from`, of
    /// `freetype`, to the block at `to`, which the allocator has allocated
    /// for it with the same order and freetype (same protection).
    fn migrate(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: crate::Freetype,
    ) -> Result<(), MigrateError>;
}
