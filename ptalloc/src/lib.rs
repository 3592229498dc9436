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
//! # Strategies (the policy lab)
//! [`Config::strategy`] picks how page-table memory is made, so that the
//! alternatives of the Linux thread can be measured side by side with the
//! same counters ([`Stats`]: flushes, splits by kind, single-page
//! protections, direct-map entries by size, stranded protected frames,
//! reserve use, failures, exposure). Each keeps every invariant above.
//! - [`Strategy::Freetype`] (default): the above. Page tables come from
//!   key-protected pageblocks converted whole; a conversion splits at most
//!   one 1 GiB mapping and never a 2 MiB one.
//! - [`Strategy::Pagewise`]: the naive baseline. Each page table is a
//!   mapped page protected alone ([`DirectMap::protect_frame`]: its 2 MiB
//!   mapping split to 4 KiB, one flush per page) and unprotected when
//!   freed; no pageblock converts for page tables, only single pages are
//!   served, and none is cached. The split reserve is stocked as under
//!   `Freetype` (the first protected page has to come from somewhere).
//! - [`Strategy::Granular`]: `Freetype` over a direct map of 2 MiB pages
//!   from boot, which the backend must vouch for
//!   ([`DirectMap::largest_page`]): no conversion ever splits.
//! - [`Strategy::ProtectedFirst`]: the inversion. Whole pageblocks of
//!   mapped memory start in the page-table freetype, protected at
//!   [`add_memory`](PageAllocator::add_memory) one aligned block per batch;
//!   ordinary allocations convert them back as they need them.
//!
//! [`Config::pt_fallback`] says what a page-table allocation does when no
//! protected page can be had: fail ([`PtFallback::Fail`], default), or hand
//! out an unprotected mapped page marked as exposed
//! ([`PtFallback::Unprotected`]), which stays exposed until freed. That is
//! the one way a page table is ever handed out without the key; the
//! simulator's checker counts such tables rather than failing, and
//! `sim::unprotected_page_tables` (the verification walk) lists them.
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
pub mod strategy;
mod sync;

pub use crate::core::{MAX_SPLIT_PAGES_PER_CALL, RESERVE_CAPACITY};
pub use allocator::{
    AllocFlags, CACHE_BATCH, CACHE_CAPACITY, CANDIDATES_PER_COMPACTION, Config,
    DEFAULT_CONVERSION_WATERMARK, FrameInfo, FrameState, PageAllocator,
};
pub use backend::{
    DirectMap, DirectMapError, FlushReport, MappingCounts, Migrate, MigrateError, PageSize,
    PageblockRange, ProtectReport, SplitPages,
};
pub use error::{AllocError, FreeError, InitError};
pub use freetype::{Freetype, Mobility, NR_FREETYPES, Protection};
pub use meta::{FrameMeta, METADATA_BYTES_PER_FRAME};
pub use stats::Stats;
pub use strategy::{PtFallback, Strategy};

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
