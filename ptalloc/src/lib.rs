//! The freetype buddy allocator (see DESIGN.md, "Memory model").
//!
//! Protection is a property of each frame's direct-map mapping, and
//! changing it page by page shatters huge mappings and costs a TLB flush
//! per page. So this allocator groups free pages by [`Freetype`] (a
//! mobility class plus a [`Protection`]) in 2 MiB pageblocks, and when a
//! freetype runs dry it converts whole free pageblocks from another one:
//! one attribute change and at most one flush serve up to 512 pages.
//!
//! What the crate owns and promises:
//! - buddy free lists per (freetype, order), orders 0 to [`MAX_ORDER`]
//!   (1 GiB), with metadata outside the frames ([`meta`]);
//! - conversion of wholly free pageblocks as one batch through the
//!   [`DirectMap`] backend, flushing at most once per batch and not at all
//!   when permissions are only added;
//! - a split reserve of page-table pages that only direct-map splits take
//!   from, refilled before operations that may split, never from inside
//!   the split path (conversions *to* the page-table freetype host their
//!   own split page, so refilling cannot recurse);
//! - typed errors for bad input ([`AllocError`], [`FreeError`]), leaving
//!   the allocator unchanged;
//! - placement that keeps whole pageblocks whole (smallest blocks first,
//!   blocks about to merge at the tail, caches refilled from the smallest
//!   free blocks, small blocks borrowed from a sibling freetype of the same
//!   protection), conversions from the closest fitting source of the
//!   target's own protection first, and a conversion watermark of whole
//!   free pageblocks that only page tables may take;
//! - with `Config::single_page_fallback`, a page table whenever a mapped
//!   page is free: the last resort protects one page of a mapped
//!   pageblock alone, never hands out an unprotected one;
//! - compaction: with the owner of movable pages named
//!   ([`PageAllocator::with_migrator`], [`Migrate`]), a page-table
//!   allocation that finds no whole free pageblock empties the one with
//!   the fewest live movable frames and converts it;
//! - per-CPU caches of order-0 pages in front of a locked core, drained
//!   into it before any allocation fails for lack of memory; the
//!   allocator is `Sync`;
//! - counters for conversions, flushes, splits and the reserve ([`Stats`]).
//!
//! It knows nothing of x86 and holds no `unsafe`. With the `std` feature,
//! [`sim`] provides a simulated direct map that checks every invariant.

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod allocator;
pub mod backend;
mod core;
pub mod error;
pub mod freetype;
pub mod meta;
#[cfg(feature = "std")]
pub mod sim;
pub mod stats;
mod sync;

pub use crate::core::{MAX_SPLIT_PAGES_PER_CALL, RESERVE_CAPACITY};
pub use allocator::{
    AllocFlags, CACHE_BATCH, CACHE_CAPACITY, CANDIDATES_PER_COMPACTION, Config,
    DEFAULT_CONVERSION_WATERMARK, FrameInfo, FrameState, PageAllocator,
};
pub use backend::{
    DirectMap, DirectMapError, FlushReport, Migrate, MigrateError, PageblockRange, ProtectReport,
    SplitPages,
};
pub use error::{AllocError, FreeError, InitError};
pub use freetype::{Freetype, Mobility, NR_FREETYPES, Protection};
pub use meta::{FrameMeta, METADATA_BYTES_PER_FRAME};
pub use stats::Stats;

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;
/// Order of a pageblock: the unit of freetype conversion.
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Size of a pageblock: 2 MiB, one large page of the direct map.
pub const PAGEBLOCK_SIZE: u64 = PAGE_SIZE << PAGEBLOCK_ORDER;
/// Largest block order: 2^18 pages = 1 GiB.
pub const MAX_ORDER: u32 = 18;
/// Number of orders, 0 to [`MAX_ORDER`].
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;

const _: () = assert!(PAGEBLOCK_SIZE == 2 << 20);
const _: () = assert!(PAGE_SIZE << MAX_ORDER == 1 << 30);

/// A physical frame number (physical address / 4096).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame's physical address.
    pub fn addr(self) -> u64 {
        self.0 * PAGE_SIZE
    }
}
