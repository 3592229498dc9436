//! Per-frame metadata, kept outside the frames it describes.
//!
//! Free-list links cannot live inside free pages: `Unmapped` pages cannot
//! be touched at all and protected pages only inside a write window. So
//! every managed frame has a [`FrameMeta`] of [`METADATA_BYTES_PER_FRAME`]
//! bytes in an array the kernel provides, indexed by frame number minus the
//! allocator's base.
//!
//! Placement: the kernel reserves `frames * METADATA_BYTES_PER_FRAME` bytes
//! of `Mapped` memory, 4-byte aligned, before the allocator exists (for
//! example from the first large usable region), and excludes them from the
//! ranges it hands to the allocator. All-zero bytes are a valid array in
//! which every frame is a hole, so zeroed memory needs no further set-up.
//!
//! Fields are atomics so that the per-CPU fast path can check a page's
//! state without the allocator lock; the links are only touched under it.

use crate::freetype::Freetype;
use crate::sync::{AtomicU8, AtomicU32, Ordering};

/// Bytes of metadata per 4 KiB frame (0.29% of memory).
pub const METADATA_BYTES_PER_FRAME: usize = core::mem::size_of::<FrameMeta>();

/// A frame's state. Stored as a byte; zero must be [`State::Hole`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Not managed: outside RAM, or kept by the kernel.
    Hole = 0,
    /// First frame of a free block (its order is in `order`).
    FreeHead = 1,
    /// First frame of an allocated block (order and freetype recorded).
    AllocatedHead = 2,
    /// Any other frame of a free or allocated block.
    Tail = 3,
    /// An order-0 page parked in a per-CPU cache.
    Cached = 4,
    /// A page-table page held in the split reserve.
    Reserve = 5,
    /// A page table of the direct map, made by a split.
    DirectMapTable = 6,
}

impl State {
    fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::FreeHead,
            2 => Self::AllocatedHead,
            3 => Self::Tail,
            4 => Self::Cached,
            5 => Self::Reserve,
            6 => Self::DirectMapTable,
            _ => Self::Hole,
        }
    }
}

/// Marks the end of a free list.
pub(crate) const NIL: u32 = u32::MAX;

/// `next` of an allocated head handed out as an exposed page table
/// (`PtFallback::Unprotected`); its `prev` then holds the low 32 bits of
/// the allocation count when it was handed out. An allocated head needs no
/// links, and no frame index reaches this value (the allocator refuses
/// `u32::MAX` frames or more), nor does `NIL`.
const EXPOSED: u32 = u32::MAX - 1;

/// Metadata of one frame. Create arrays with [`FrameMeta::new`] (or zeroed
/// memory, see the module doc).
#[derive(Debug)]
#[repr(C)]
pub struct FrameMeta {
    next: AtomicU32,
    prev: AtomicU32,
    state: AtomicU8,
    order: AtomicU8,
    /// Freetype index of an allocated, cached or free block's head.
    freetype: AtomicU8,
    /// Freetype index of the pageblock; meaningful in its first frame only.
    pageblock: AtomicU8,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<FrameMeta>() == 12);

impl FrameMeta {
    /// A hole.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
            prev: AtomicU32::new(0),
            state: AtomicU8::new(0),
            order: AtomicU8::new(0),
            freetype: AtomicU8::new(0),
            pageblock: AtomicU8::new(0),
        }
    }

    /// A hole.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
            prev: AtomicU32::new(0),
            state: AtomicU8::new(0),
            order: AtomicU8::new(0),
            freetype: AtomicU8::new(0),
            pageblock: AtomicU8::new(0),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> State {
        State::from_byte(self.state.load(Ordering::Acquire))
    }

    #[inline]
    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Atomically moves `from` -> `to`; false (and no change) if the frame
    /// was not in `from`. The fast path's double-free check.
    #[inline]
    pub(crate) fn transition(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    #[inline]
    pub(crate) fn order(&self) -> u32 {
        u32::from(self.order.load(Ordering::Relaxed))
    }

    #[inline]
    pub(crate) fn set_order(&self, order: u32) {
        self.order.store(order as u8, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn freetype(&self) -> Option<Freetype> {
        Freetype::from_index(usize::from(self.freetype.load(Ordering::Relaxed)))
    }

    #[inline]
    pub(crate) fn set_freetype(&self, freetype: Freetype) {
        self.freetype
            .store(freetype.index() as u8, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn pageblock_freetype(&self) -> Option<Freetype> {
        Freetype::from_index(usize::from(self.pageblock.load(Ordering::Relaxed)))
    }

    #[inline]
    pub(crate) fn set_pageblock_freetype(&self, freetype: Freetype) {
        self.pageblock
            .store(freetype.index() as u8, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_next(&self, next: u32) {
        self.next.store(next, Ordering::Relaxed);
    }

    /// True if this allocated head is an exposed page table.
    #[inline]
    pub(crate) fn is_exposed(&self) -> bool {
        self.next() == EXPOSED
    }

    /// Marks an allocated head as an exposed page table handed out when
    /// `stamp` allocations had been made (kept modulo 2^32).
    #[inline]
    pub(crate) fn set_exposed(&self, stamp: u64) {
        self.set_next(EXPOSED);
        self.set_prev(stamp as u32);
    }

    /// The stamp [`set_exposed`](Self::set_exposed) kept, modulo 2^32.
    #[inline]
    pub(crate) fn exposed_stamp(&self) -> u32 {
        self.prev()
    }

    /// Clears the mark: the frame may become a tail, whose links are not
    /// rewritten.
    #[inline]
    pub(crate) fn clear_exposed(&self) {
        self.set_next(NIL);
    }

    #[inline]
    pub(crate) fn prev(&self) -> u32 {
        self.prev.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_prev(&self, prev: u32) {
        self.prev.store(prev, Ordering::Relaxed);
    }
}

impl Default for FrameMeta {
    fn default() -> Self {
        Self::new()
    }
}
