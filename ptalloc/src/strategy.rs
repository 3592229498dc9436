//! The policy lab's choices: how page-table memory is made
//! ([`Strategy`]) and what happens when it cannot be ([`PtFallback`]).
//!
//! They are the alternatives argued over in the Linux thread this kernel
//! comes from, made selectable side by side so that they can be measured
//! with the same counters ([`Stats`](crate::Stats)) on the same loads.
//! Every strategy keeps the allocator's invariants: a page table handed out
//! is mapped with the page-table key on the direct map, except a table the
//! [`PtFallback::Unprotected`] dodge hands out, which is recorded as exposed.

/// Where page-table pages come from, and how the direct map pays for
/// protecting them. Chosen once, in [`Config::strategy`](crate::Config::strategy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The design's answer: page tables come from pageblocks of the
    /// page-table freetype, converted whole from other freetypes (one
    /// protection change and at most one flush per batch of up to 512
    /// pages), with a split reserve for direct-map splits.
    #[default]
    Freetype,
    /// The earlier Linux approach and the naive baseline: each page-table
    /// page is an ordinary mapped page protected by itself (its 2 MiB and
    /// 1 GiB direct-map mappings split down to 4 KiB as needed, one flush
    /// per page) and unprotected again when freed. Page tables are single
    /// pages: larger page-table blocks are `OutOfMemory`. Pageblocks never
    /// convert to the page-table freetype for page tables; the split
    /// reserve alone is stocked as under `Freetype` (a conversion whose
    /// split hosts itself), since the first protected page must exist
    /// before any single page can be split out without recursion.
    Pagewise,
    /// The direct map at 2 MiB granularity from boot (no 1 GiB mapping
    /// anywhere, so converting a pageblock never splits); otherwise
    /// `Freetype`. The backend must say it holds no 1 GiB mapping
    /// ([`DirectMap::largest_page`](crate::DirectMap::largest_page)), or
    /// the allocator refuses to start.
    Granular,
    /// The inversion: every whole pageblock given to the allocator as
    /// `Mapped` memory starts in the page-table freetype (protected at
    /// [`add_memory`](crate::PageAllocator::add_memory), a whole aligned
    /// block at a time), and pageblocks are converted to ordinary
    /// freetypes as ordinary allocations need them. Page tables never wait
    /// for a conversion until ordinary memory has taken the rest.
    ProtectedFirst,
}

/// What a page-table allocation does when no protected page can be had.
/// Chosen in [`Config::pt_fallback`](crate::Config::pt_fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PtFallback {
    /// Fail (`OutOfMemory`, or `ReserveExhausted` when a split had no
    /// page): a page table is never handed out unprotected.
    #[default]
    Fail,
    /// The thread's dodge: hand out an ordinary mapped page as the page
    /// table, marked as exposed. It stays exposed (mapped without the key)
    /// until it is freed; the kernel's verification walk fails while one
    /// lives. Counted in [`Stats::exposed_tables`](crate::Stats::exposed_tables),
    /// [`Stats::exposed_live`](crate::Stats::exposed_live) and
    /// [`Stats::exposure_allocations`](crate::Stats::exposure_allocations).
    Unprotected,
}
