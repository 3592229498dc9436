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
//! cached meanwhile) ends the compaction: the frames held so far go back
//! to the free lists, and blocks moved stay moved.
//!
//! Limits, by design: only page-table allocations compact (other
//! freetypes can wait or use smaller blocks), one pageblock per attempt,
//! and a failed attempt is not deferred (Linux backs off after failures;
//! here each attempt only reads metadata, and the fragmentation benchmark
//! measures the cost with it in).

use super::PageAllocator;
use crate::PAGEBLOCK_ORDER;
use crate::backend::DirectMap;
use crate::core::PageblockFrames;
use crate::freetype::Mobility;
use crate::meta::State;

impl<D: DirectMap, const CPUS: usize> PageAllocator<'_, D, CPUS> {
    /// Empties the pageblock with the fewest live movable frames by moving
    /// them elsewhere. True if a whole free pageblock was made; false if
    /// no migrator is set, no pageblock qualifies, or a move failed.
    pub(super) fn compact(&self) -> bool {
        let Some(owner) = self.migrator else {
            return false;
        };
        let mut held = PageblockFrames::new();
        let isolated = self
            .core
            .lock()
            .isolate_for_compaction(self.meta, &mut held);
        let Some((start, home)) = isolated else {
            self.core.lock().note_compaction_failed();
            return false;
        };
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
                .core
                .lock()
                .take_destination(self.meta, order, freetype)
            else {
                break false;
            };
            let (from_pfn, to_pfn) = (self.pfn_of(index), self.pfn_of(to));
            if owner.migrate(from_pfn, to_pfn, order, freetype).is_err() {
                self.core.lock().return_destination(self.meta, to, order);
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
        self.core
            .lock()
            .end_compaction(self.meta, start, home, &held, moved);
        emptied
    }
}
