//! Typed errors.
//!
//! A call refused for bad input (an invalid order, CPU, flag or frame, a
//! double free) has changed nothing. A call that fails for lack of memory,
//! reserve or backend keeps no memory, but may have done useful work on
//! the way that it does not undo: refilled the split reserve or converted
//! pageblocks.

use crate::Pfn;
use crate::backend::{DirectMapError, PageSize};
use crate::freetype::Freetype;
use core::fmt;

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// `order` is above [`MAX_ORDER`](crate::MAX_ORDER).
    InvalidOrder(u32),
    /// `cpu` is not below the allocator's CPU count.
    InvalidCpu(usize),
    /// [`AllocFlags::USE_RESERVE`](crate::AllocFlags::USE_RESERVE) asked for
    /// a freetype other than the page-table one.
    ReserveNotForFreetype(Freetype),
    /// [`AllocFlags::USE_RESERVE`](crate::AllocFlags::USE_RESERVE) asked for
    /// more than one page: the reserve holds single pages.
    ReserveNeedsOrderZero(u32),
    /// No free block of this freetype, and `NO_BLOCK` forbids converting.
    WouldBlock,
    /// No free block of this freetype and no wholly free pageblock to
    /// convert.
    OutOfMemory,
    /// A conversion needed a split page and the reserve was empty.
    ReserveExhausted,
    /// The direct-map backend failed to convert or zero.
    Backend(DirectMapError),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidOrder(order) => {
                write!(f, "order {order} is above the maximum {}", crate::MAX_ORDER)
            }
            Self::InvalidCpu(cpu) => write!(f, "CPU {cpu} is beyond the allocator's CPU count"),
            Self::ReserveNotForFreetype(ft) => {
                write!(f, "the split reserve holds page-table pages, not {ft}")
            }
            Self::ReserveNeedsOrderZero(order) => {
                write!(f, "the split reserve gives single pages, not order {order}")
            }
            Self::WouldBlock => {
                write!(f, "no free page without converting, and NO_BLOCK was given")
            }
            Self::OutOfMemory => write!(
                f,
                "out of memory: no free block and no free pageblock to convert"
            ),
            Self::ReserveExhausted => {
                write!(
                    f,
                    "the split reserve is empty: refusing to split with an unprotected page table"
                )
            }
            Self::Backend(e) => write!(f, "direct-map backend failed: {e:?}"),
        }
    }
}

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is outside the managed range.
    OutOfRange(Pfn),
    /// `order` is above [`MAX_ORDER`](crate::MAX_ORDER).
    InvalidOrder(u32),
    /// `cpu` is not below the allocator's CPU count.
    InvalidCpu(usize),
    /// The frame is not the start of an allocated block: never allocated,
    /// already freed, or inside a larger block.
    NotAllocated(Pfn),
    /// The block was allocated with another order.
    WrongOrder {
        /// The frame.
        pfn: Pfn,
        /// Order it was allocated with.
        allocated: u32,
        /// Order given to `free`.
        given: u32,
    },
    /// A single page-table page (the fallback) could not be wiped or given
    /// back its pageblock's protection; it stays allocated and protected.
    Backend(crate::backend::DirectMapError),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange(pfn) => write!(f, "frame {:#x} is outside the managed memory", pfn.0),
            Self::InvalidOrder(order) => {
                write!(f, "order {order} is above the maximum {}", crate::MAX_ORDER)
            }
            Self::InvalidCpu(cpu) => write!(f, "CPU {cpu} is beyond the allocator's CPU count"),
            Self::NotAllocated(pfn) => write!(
                f,
                "frame {:#x} is not the start of an allocated block (double free or never allocated)",
                pfn.0
            ),
            Self::WrongOrder {
                pfn,
                allocated,
                given,
            } => write!(
                f,
                "frame {:#x} was allocated with order {allocated}, freed with order {given}",
                pfn.0
            ),
            Self::Backend(e) => write!(
                f,
                "direct-map backend failed giving a single page-table page back: {e:?}"
            ),
        }
    }
}

/// Why the allocator could not be set up or given memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The base frame is not aligned to the largest block.
    MisalignedBase(Pfn),
    /// More frames than 32-bit frame indices can name.
    TooManyFrames(u64),
    /// A range is empty, reversed, or outside the metadata.
    BadRange {
        /// Start of the range.
        start: Pfn,
        /// End of the range.
        end: Pfn,
    },
    /// A range overlaps memory already given to the allocator.
    Overlap(Pfn),
    /// A range shares a pageblock with memory of another freetype.
    MixedPageblock(Pfn),
    /// The page-table freetype is not key-protected.
    PageTableFreetype(Freetype),
    /// [`Strategy::Granular`](crate::Strategy::Granular) needs a direct
    /// map with no 1 GiB mapping; the backend's largest page is this
    /// (`None`: it does not say).
    NotGranular(Option<PageSize>),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MisalignedBase(pfn) => {
                write!(
                    f,
                    "base frame {:#x} is not aligned to the largest block",
                    pfn.0
                )
            }
            Self::TooManyFrames(n) => write!(f, "{n} frames is more than 32-bit indices can name"),
            Self::BadRange { start, end } => {
                write!(
                    f,
                    "range [{:#x}, {:#x}) is empty or outside the metadata",
                    start.0, end.0
                )
            }
            Self::Overlap(pfn) => {
                write!(f, "frame {:#x} was already given to the allocator", pfn.0)
            }
            Self::MixedPageblock(pfn) => {
                write!(
                    f,
                    "frame {:#x} shares a pageblock with memory of another freetype",
                    pfn.0
                )
            }
            Self::PageTableFreetype(ft) => {
                write!(f, "the page-table freetype must be key-protected, not {ft}")
            }
            Self::NotGranular(largest) => write!(
                f,
                "the granular strategy needs a direct map of 2 MiB pages at most, \
                 but its largest page is {largest:?}"
            ),
        }
    }
}
