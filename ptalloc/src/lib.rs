//! The freetype buddy allocator (see DESIGN.md, "Memory model").
//!
//! It knows nothing of x86: protection changes go through a `DirectMap`
//! backend the kernel supplies. For now the crate holds the page and
//! pageblock geometry the rest of the kernel already reports with; the
//! allocator itself is the subject of its own issue.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;
/// Order of a pageblock: the unit of freetype conversion.
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Size of a pageblock: 2 MiB, one large page of the direct map.
pub const PAGEBLOCK_SIZE: u64 = PAGE_SIZE << PAGEBLOCK_ORDER;

const _: () = assert!(PAGEBLOCK_SIZE == 2 << 20);
