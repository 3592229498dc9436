//! Compaction: emptying one pageblock of its movable blocks, so that a
//! page-table allocation that found no whole free pageblock can convert
//! it.
//!
//! The pageblock is picked and its free blocks taken off the free lists
//! under the core lock (`Core::isolate_for_compaction`: nothing is
//! allocated there meanwhile). Each live block then moves in three steps:
//! a destination of the same order and protection is taken under the
//! lock, the owner moves the data without any allocator lock held
//! ([`Migrate`]: its own locks come after ours elsewhere, so calling it
//! under ours could deadlock), and the old block is claimed with the same
//! atomic transition a free uses. A free that races ahead of the move
//! makes the owner answer `NotOwned`, so a block is never both freed and
//! moved. Whatever stops a move (a pinned block, no destination, a page
//! cached meanwhile) ends the attempt on that pageblock: the frames held
//! so far go back to the free lists, and blocks moved stay moved.
//!
//! A pageblock where a move failed (a pinned block, no destination) is
//! remembered and tried last, after every other candidate; up to
//! [`CANDIDATES_PER_COMPACTION`] pageblocks are tried per compaction. The
//! memory is a short list (`Core::refused`), forgotten once a compaction
//! succeeds. A refusal may be passing (a lock busy for a moment), so a
//! refused pageblock is never ruled out, only put last.
//!
//! Limits, by design: only page-table allocations compact (other
//! freetypes can wait or use smaller blocks), and failures are not
//! deferred (Linux backs off after failures; here each attempt only reads
//! metadata, and the fragmentation benchmark measures the cost with it
//! in).

use super::PageAllocator;
use crate::PAGEBLOCK_ORDER;
use crate::backend::{DirectMap, Migrate};
use crate::core::PageblockFrames;
use crate::freetype::Mobility;
use crate::meta::State;

/// Pageblocks one compaction tries before it gives up: a pinned block
/// stops its pageblock, not the compaction.
pub const CANDIDATES_PER_COMPACTION: usize = 4;

/// How emptying one pageblock ended.
enum Attempt {
    Emptied,
    /// A move failed; the pageblock is remembered as refused.
    Failed,
    /// No pageblock qualifies.
    NoCandidate,
}

impl<D: DirectMap, const CPUS: usize> PageAllocator<'_, D, CPUS> {
    /// Empties the pageblock with the fewest live movable frames by moving
    /// them elsewhere, trying the next one if a move fails there. True if
    /// a whole free pageblock was made; false if no migrator is set, no
    /// pageblock qualifies, or every one tried failed.
    pub(super) fn compact(&self) -> bool {
        let Some(owner) = self.migrator else {
            return false;
        };
        let mut tried = heapless::Vec::<u32, CANDIDATES_PER_COMPACTION>::new();
        while !tried.is_full() {
            match self.empty_one_pageblock(owner, &mut tried) {
                Attempt::Emptied => return true,
                Attempt::NoCandidate => return false,
                Attempt::Failed => {}
            }
        }
        false
    }

    /// Tries to empty one pageblock not in `tried`, and adds it there.
    fn empty_one_pageblock(
        &self,
        owner: &dyn Migrate,
        tried: &mut heapless::Vec<u32, CANDIDATES_PER_COMPACTION>,
    ) -> Attempt {
        let mut held = PageblockFrames::new();
        let isolated = self
            .lock_core()
            .isolate_for_compaction(self.meta, tried, &mut held);
        let Some((start, home)) = isolated else {
            if tried.is_empty() {
                self.lock_core().note_compaction_failed();
            }
            return Attempt::NoCandidate;
        };
        // The caller stops before `tried` is full.
        let _ = tried.push(start);
        let frames = 1u32 << PAGEBLOCK_ORDER;
        let (mut offset, mut moved) = (0, 0);
        let emptied = loop {
            if offset == frames {
                break true;
            }
            if held.contains(offset) {
                offset += 1;
                continue;
            }
            let index = start + offset;
            let frame = &self.meta[index as usize];
            // Read without the lock: only the owner's free changes a live
            // block, and the claim below catches that.
            let order = frame.order();
            let movable = frame
                .freetype()
                .filter(|ft| ft.mobility == Mobility::Movable);
            let (true, Some(freetype)) = (frame.state() == State::AllocatedHead, movable) else {
                break false;
            };
            if order >= PAGEBLOCK_ORDER {
                break false;
            }
            let Some(to) = self
                .lock_core()
                .take_destination(self.meta, order, freetype)
            else {
                break false;
            };
            let (from_pfn, to_pfn) = (self.pfn_of(index), self.pfn_of(to));
            if owner.migrate(from_pfn, to_pfn, order, freetype).is_err() {
                self.lock_core().return_destination(self.meta, to, order);
                break false;
            }
            // The owner gave `from` up; it can only fail to be ours if the
            // owner freed it after saying it moved it, against the contract.
            if !frame.transition(State::AllocatedHead, State::Tail) {
                break false;
            }
            held.insert(offset, 1 << order);
            moved += 1 << order;
            offset += 1 << order;
        };
        self.lock_core()
            .end_compaction(self.meta, start, home, &held, moved);
        if emptied {
            Attempt::Emptied
        } else {
            Attempt::Failed
        }
    }
}
