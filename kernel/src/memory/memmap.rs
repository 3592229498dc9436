//! Pictures of memory, the kernel's half: the pageblock map (each 2 MiB
//! pageblock's freetype, how full it is, and the direct-map page over it)
//! written to the defmt log (COM2) at chosen moments (`memmap=`).
//!
//! The format is `tools::memmap`'s (its module doc is the specification;
//! the host draws the pictures): a `memmap begin <label> pageblocks=<N>
//! first=0x<pfn>` line, body lines `memmap <index> <hex>` of up to 64
//! pageblocks, two bytes each (freetype index or `ff`; fill 0 to 63 in
//! bits 0-5, the direct-map page in bits 6-7), and `memmap end <label>`.
//! Pages counted as used for the fill: allocated blocks, the split
//! reserve and direct-map tables; free and per-CPU cached pages are not.
//!
//! It reads the allocator's metadata frame by frame (one look per block:
//! a free or allocated block is skipped whole) and the direct map's
//! leaves, and changes nothing.

use super::direct_map::DIRECT_MAP_BASE;
use super::frames;
use super::walk::{self, LeafSize};
use core::fmt::Write;
use ptalloc::{FrameState, Pfn};

const PAGEBLOCK_FRAMES: u64 = 512;
const PER_LINE: u64 = 64;
const FILL_MAX: u64 = 63;
const NOT_MANAGED: u8 = 0xff;

/// One pageblock, as the walk over the metadata sees it.
#[derive(Clone, Copy, Default)]
struct Tally {
    /// The freetype of its pageblock, once a managed frame is seen.
    freetype: Option<u8>,
    used: u64,
}

/// Writes the pageblock map under `label` (1 to 64 characters of
/// `A-Za-z0-9._-`, as the format asks). Nothing before the allocator.
pub fn dump(label: &str) {
    let Some(allocator) = frames::allocator() else {
        return;
    };
    let base = allocator.base().0;
    let first = base - base % PAGEBLOCK_FRAMES;
    let end = base + allocator.frames();
    let pageblocks = (end - first).div_ceil(PAGEBLOCK_FRAMES);
    defmt::info!(
        "memmap begin {=str} pageblocks={=u64} first={=u64:#x}",
        label,
        pageblocks,
        first
    );
    let root = super::kernel_root();
    let mut line: heapless::String<{ 4 * PER_LINE as usize }> = heapless::String::new();
    // The block being walked: how many of its frames are left, and
    // whether they are in use.
    let (mut left, mut in_use) = (0u64, false);
    let mut pfn = first;
    for index in 0..pageblocks {
        let mut tally = Tally::default();
        let block_start = (first + index * PAGEBLOCK_FRAMES).max(base);
        let block_end = (first + (index + 1) * PAGEBLOCK_FRAMES).min(end);
        // A block larger than a pageblock starts in an earlier one: its
        // tail frames still name their pageblock's freetype.
        if let Some(info) = allocator.frame_info(Pfn(block_start))
            && info.state != FrameState::Hole
        {
            tally.freetype = info.pageblock_freetype.map(|f| f.index() as u8);
        }
        while pfn < block_end {
            if left == 0 {
                (left, in_use) = block_at(allocator, pfn, &mut tally);
            }
            let here = left.min(block_end - pfn);
            if in_use {
                tally.used += here;
            }
            left -= here;
            pfn += here;
        }
        let start = (first + index * PAGEBLOCK_FRAMES) * ptalloc::PAGE_SIZE;
        let page = match walk::leaf(root, DIRECT_MAP_BASE + start).map(|leaf| leaf.size) {
            Some(LeafSize::Giga) => 0u8,
            Some(LeafSize::Mega) => 1,
            Some(LeafSize::Page) => 2,
            None => 3,
        };
        let (kind, fill) = match tally.freetype {
            Some(freetype) => (freetype, (tally.used * FILL_MAX).div_ceil(PAGEBLOCK_FRAMES)),
            None => (NOT_MANAGED, 0),
        };
        // Four hex digits a pageblock; the line holds 64.
        let _ = write!(line, "{:02x}{:02x}", kind, fill as u8 | page << 6);
        if (index + 1) % PER_LINE == 0 || index + 1 == pageblocks {
            defmt::info!(
                "memmap {=u64} {=str}",
                index - index % PER_LINE,
                line.as_str()
            );
            line.clear();
        }
    }
    defmt::info!("memmap end {=str}", label);
}

/// The block of frames that starts at `pfn` (or the frame alone, where
/// no block starts): how many frames it spans, and whether they are in
/// use. Records the pageblock's freetype in `tally` if the frame is
/// managed.
fn block_at(allocator: &frames::FrameAllocator, pfn: u64, tally: &mut Tally) -> (u64, bool) {
    let Some(info) = allocator.frame_info(Pfn(pfn)) else {
        return (1, false);
    };
    if info.state != FrameState::Hole && tally.freetype.is_none() {
        tally.freetype = info.pageblock_freetype.map(|f| f.index() as u8);
    }
    match info.state {
        FrameState::FreeHead => (1 << info.order, false),
        FrameState::AllocatedHead => (1 << info.order, true),
        FrameState::Reserve | FrameState::DirectMapTable => (1, true),
        FrameState::Cached | FrameState::Tail | FrameState::Hole => (1, false),
    }
}
