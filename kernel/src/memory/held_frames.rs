//! Test support: frames a kernel test holds without a list, however many
//! (the whole of memory, for the tests that fill it). Shared by the
//! single-page fallback's and compaction's tests.

use super::direct_map::DIRECT_MAP_BASE;
use super::{pte, sealed};
use ptalloc::Pfn;

const PAGEBLOCK_FRAMES: u64 = 1 << ptalloc::PAGEBLOCK_ORDER;

/// Pageblocks a [`PageblockSet`] can name: the sealed record's coverage.
const MAX_PAGEBLOCKS: usize = (sealed::COVERED_BYTES / ptalloc::PAGEBLOCK_SIZE) as usize;

/// A set of pageblocks, a bit each (4 KiB): the 2 MiB frames a test holds,
/// without writing into them (under TCG the first write to each 2 MiB
/// costs about a millisecond).
pub(crate) struct PageblockSet([u64; MAX_PAGEBLOCKS / 64]);

impl PageblockSet {
    pub(crate) fn new() -> Self {
        Self([0; MAX_PAGEBLOCKS / 64])
    }

    /// Adds the pageblock holding `pfn`; false if it was there or lies
    /// past the set's reach.
    pub(crate) fn insert(&mut self, pfn: Pfn) -> bool {
        let block = (pfn.0 / PAGEBLOCK_FRAMES) as usize;
        let bit = 1u64 << (block % 64);
        match self.0.get_mut(block / 64) {
            Some(word) if *word & bit == 0 => {
                *word |= bit;
                true
            }
            _ => false,
        }
    }

    /// Takes one pageblock out, as its first frame.
    pub(crate) fn pop(&mut self) -> Option<Pfn> {
        let (index, word) = self.0.iter_mut().enumerate().find(|(_, w)| **w != 0)?;
        let bit = word.trailing_zeros() as u64;
        *word &= *word - 1;
        Some(Pfn((index as u64 * 64 + bit) * PAGEBLOCK_FRAMES))
    }
}

/// The end of a chain.
const END: u64 = u64::MAX;

/// Frames a test holds, linked through their first word (inside a
/// page-table window for page-table pages), so it needs no list however
/// many it takes.
pub(crate) struct Chain {
    head: Option<Pfn>,
    pub(crate) len: u64,
    page_tables: bool,
}

impl Chain {
    pub(crate) fn new(page_tables: bool) -> Self {
        Self {
            head: None,
            len: 0,
            page_tables,
        }
    }

    pub(crate) fn push(&mut self, pfn: Pfn) {
        let link = self.head.map_or(END, |head| head.0);
        let word = (DIRECT_MAP_BASE + pfn.addr()) as *mut u64;
        // SAFETY: a frame the test was just handed, mapped writable by the
        // direct map (inside the window for a page-table page).
        let write = || unsafe { word.write_volatile(link) };
        if self.page_tables {
            pte::with_window(|_| write());
        } else {
            write();
        }
        self.head = Some(pfn);
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<Pfn> {
        let head = self.head?;
        // SAFETY: the link `push` wrote into a frame the test still holds.
        let next = unsafe { ((DIRECT_MAP_BASE + head.addr()) as *const u64).read_volatile() };
        self.head = (next != END).then_some(Pfn(next));
        self.len -= 1;
        Some(head)
    }
}
