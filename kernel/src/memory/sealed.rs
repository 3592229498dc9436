//! The records the kernel's protection decisions read, under their own key.
//!
//! "Is this frame page-table memory?" decides what the verification walk
//! accepts as a table, what `paging` and the ephemeral slot refuse to map,
//! and whether a page the allocator hands out as a page table is really
//! protected. Its answer lives in three records, kept here on pages of the
//! image (the `.sealed` section) that carry key 2
//! (`pkeys::METADATA_KEY`, read-only under `ro`) once boot has sealed
//! them, and that only this module's own window writes:
//! - per 2 MiB pageblock, the protection the direct map gives it, which the
//!   backend records in the same call that rewrites the entries: `Mapped`,
//!   `Unmapped`, `Pkey(k)`, or *mixed*: `Mapped`, with single page-table
//!   pages inside;
//! - per mixed pageblock, which of its 512 frames are single page-table
//!   pages: the pages `ptalloc`'s single-page fallback protected alone
//!   (`DirectMap::protect_frame`), which the backend records in the same
//!   call that keys or unkeys their 4 KiB entry;
//! - the early page tables, frozen once boot has recorded them all.
//!
//! [`protection`] answers per frame: a single page-table page has the
//! page-table key, the other frames of a mixed pageblock are `Mapped`.
//! `ptalloc` keeps its own per-pageblock freetype in its metadata, which is
//! ordinary memory (it changes on every allocation). The walk compares the
//! two per pageblock ([`mismatches`]: a mixed pageblock is `Mapped` there,
//! like its freetype), and `paging` refuses to use a page table this record
//! does not call page-table memory.
//!
//! The singles record is a fixed table of [`MIXED_SLOTS`] slots, each a
//! 512-bit bitmap of one mixed pageblock; a mixed pageblock's byte names
//! its slot, so a lookup is one byte and one bit, and only mixed
//! pageblocks have one. Why 128 slots (8.5 KiB of record): what the
//! fallback costs is the direct map it shatters, one 2 MiB entry split to
//! 4 KiB per mixed pageblock, so that is what the record bounds: at most
//! 128 pageblocks (256 MiB of the direct map) at 4 KiB at once, holding up
//! to 65,536 single page-table pages (256 MiB of page tables, enough to
//! map 128 GiB with 4 KiB pages). `ptalloc` fills a pageblock it split
//! before it splits another, so a burst of single pages uses few slots; a
//! slot is given back with its pageblock's last single page. A u32 frame
//! list of the same size would hold about 2,000 pages wherever they lie,
//! and need a search per lookup. When every slot is taken, recording a
//! single page in a pageblock that has none fails, and the backend refuses
//! the change before it touches an entry (`ptalloc` then fails the
//! allocation with `AllocError::Backend(Failed)`). `ptalloc` picks the
//! page without asking the record, so such a refusal can come while a
//! mixed pageblock it no longer remembers still has free pages.
//!
//! Readers take no lock (a lock would write its own word, on a
//! write-disabled page). Writers are the backend alone, serialised by its
//! edit lock: a slot is filled before its pageblock's byte names it and
//! the byte is cleared before the slot is given back, and a reader reads
//! the byte again after the bit, so it never reads one pageblock's bit in
//! another's slot.
//!
//! Limit: the record covers the first [`COVERED_BYTES`] of physical memory
//! (32 KiB of record). The backend gives pageblocks above it no protection
//! but `Mapped`, and protects no single page there, so page tables and
//! unmapped frames live below it.

use super::EARLY_PAGE_TABLES;
use crate::arch::pks;
use boot::early_tables::EarlyPageTables;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use pkeys::{METADATA_KEY, Mechanism, Rights, WindowKind};
use ptalloc::Protection;

/// Pageblocks the record covers.
const MAX_PAGEBLOCKS: usize = 32 * 1024;
/// Bytes of physical memory the record covers: 64 GiB.
pub const COVERED_BYTES: u64 = MAX_PAGEBLOCKS as u64 * PAGEBLOCK_BYTES;
const PAGEBLOCK_BYTES: u64 = 2 << 20;
const FRAMES_PER_PAGEBLOCK: usize = (PAGEBLOCK_BYTES / 4096) as usize;

/// Mixed pageblocks the record can describe at once (see the module doc).
pub const MIXED_SLOTS: usize = 128;
/// A pageblock byte with this bit set is mixed; the bits below name its slot.
const MIXED: u8 = 0x80;

// Every slot fits below the byte's top bit.
const _: () = assert!(MIXED_SLOTS <= MIXED as usize);
// Every key's encoding (2 + k, k < 16) stays below the mixed bit.
const _: () = assert!(encode(Protection::Pkey(15)) < MIXED);
const _: () = assert!(MAX_PAGEBLOCKS < u32::MAX as usize);

/// The per-pageblock record: 0 `Mapped` (so zeroed memory is all
/// `Mapped`), 1 `Unmapped`, 2 + k `Pkey(k)`, [`MIXED`] | slot for a mixed
/// pageblock.
#[repr(C, align(4096))]
struct PageblockRecord([AtomicU8; MAX_PAGEBLOCKS]);

#[unsafe(link_section = ".sealed")]
static PAGEBLOCKS: PageblockRecord = PageblockRecord([const { AtomicU8::new(0) }; MAX_PAGEBLOCKS]);

/// The single page-table pages of the mixed pageblocks, a slot each.
#[repr(C)]
struct SinglesRecord {
    /// Per slot: 1 + the index of the pageblock it describes; 0 if free.
    owners: [AtomicU32; MIXED_SLOTS],
    /// Per slot: a bit per frame of the pageblock, set for a single
    /// page-table page.
    frames: [[AtomicU64; FRAMES_PER_PAGEBLOCK / 64]; MIXED_SLOTS],
}

#[unsafe(link_section = ".sealed")]
static SINGLES: SinglesRecord = SinglesRecord {
    owners: [const { AtomicU32::new(0) }; MIXED_SLOTS],
    frames: [const { [const { AtomicU64::new(0) }; FRAMES_PER_PAGEBLOCK / 64] }; MIXED_SLOTS],
};

/// The early page tables, frozen by [`seal`]. Read without a lock (a lock
/// would write its own word, on a write-disabled page).
#[unsafe(link_section = ".sealed")]
static EARLY: spin::Once<EarlyPageTables> = spin::Once::new();

/// Whether [`seal`] protected the records (`protect=...,meta`, the
/// default), frozen with them: with `meta` left out they keep the default
/// key, as an experiment, and the walk does not require key 2 on them.
#[unsafe(link_section = ".sealed")]
static KEYED: spin::Once<bool> = spin::Once::new();

/// True unless the records were left unprotected (`protect=` without
/// `meta`).
pub fn keyed() -> bool {
    KEYED.get().copied().unwrap_or(true)
}

unsafe extern "C" {
    static __sealed_start: u8;
    static __sealed_end: u8;
}

/// The window on the sealed pages. Private to this module.
struct MetadataWrite;

// SAFETY: the type is private to this module, which writes only the
// records above inside it.
unsafe impl WindowKind for MetadataWrite {
    const KEY: pkeys::Pkey = METADATA_KEY;
    const RIGHTS: Rights = Rights::ReadWrite;
}

fn with_window<T>(f: impl FnOnce() -> T) -> T {
    match pks::current() {
        Some(protection) => protection.with_window::<MetadataWrite, T>(f),
        None => f(),
    }
}

/// The protection a single page-table page has: the page-table freetype's.
const SINGLE: Protection = super::frames::PAGE_TABLES.protection;

/// What the record says of one pageblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Every frame has this protection.
    Whole(Protection),
    /// `Mapped`, with the single page-table pages of this slot.
    Mixed(usize),
}

const fn encode(protection: Protection) -> u8 {
    match protection {
        Protection::Mapped => 0,
        Protection::Unmapped => 1,
        Protection::Pkey(k) => 2 + k,
    }
}

fn decode(byte: u8) -> Block {
    match byte {
        0 => Block::Whole(Protection::Mapped),
        1 => Block::Whole(Protection::Unmapped),
        b if b & MIXED != 0 => Block::Mixed(usize::from(b & !MIXED)),
        k => Block::Whole(Protection::Pkey(k - 2)),
    }
}

/// The pageblock byte at `index` (`Mapped` past the record).
fn block(index: usize) -> Block {
    PAGEBLOCKS
        .0
        .get(index)
        .map_or(Block::Whole(Protection::Mapped), |entry| {
            decode(entry.load(Ordering::Acquire))
        })
}

/// Where frame `frame` (0 to 511) of a pageblock lives in a slot's bitmap.
fn bit(frame: usize) -> (usize, u64) {
    (frame / 64, 1 << (frame % 64))
}

/// True if frame `frame` of the pageblock at `index` is a recorded single
/// page-table page.
fn single_in(index: usize, frame: usize) -> bool {
    let (word, mask) = bit(frame);
    loop {
        let Block::Mixed(slot) = block(index) else {
            return false;
        };
        let set = SINGLES.frames[slot][word].load(Ordering::Acquire) & mask != 0;
        // The slot may have changed hands between the two reads: the
        // pageblock's byte changed with it, so read it again.
        if block(index) == Block::Mixed(slot) {
            return set;
        }
    }
}

/// True if the record can describe the `pageblocks` from `first_phys`
/// with a protection other than `Mapped`.
pub(super) fn covers(first_phys: u64, pageblocks: u64) -> bool {
    pageblocks
        .checked_mul(PAGEBLOCK_BYTES)
        .and_then(|bytes| bytes.checked_add(first_phys))
        .is_some_and(|end| end <= COVERED_BYTES)
}

/// True if one of the `pageblocks` from `first_phys` holds single
/// page-table pages: the backend refuses to give such a run a protection
/// as a whole (`ptalloc` converts only wholly free pageblocks, so it never
/// asks).
pub(super) fn holds_single_pages(first_phys: u64, pageblocks: u64) -> bool {
    let first = (first_phys / PAGEBLOCK_BYTES) as usize;
    (first..first.saturating_add(pageblocks as usize))
        .take(MAX_PAGEBLOCKS.saturating_sub(first))
        .any(|index| matches!(block(index), Block::Mixed(_)))
}

/// Records that the direct map now gives the `pageblocks` from
/// `first_phys` the protection `to`. The backend calls it with every
/// change it makes; a range the record does not cover stays `Mapped`
/// (the backend refuses anything else there, see [`covers`]), and a run
/// holding single page-table pages is never changed whole (see
/// [`holds_single_pages`]).
pub(super) fn record(first_phys: u64, pageblocks: u64, to: Protection) {
    if to != Protection::Mapped && !covers(first_phys, pageblocks) {
        panic!("the backend gave pageblocks past the sealed record {to}");
    }
    if holds_single_pages(first_phys, pageblocks) {
        panic!("the backend gave a pageblock holding single page-table pages {to} as a whole");
    }
    let first = (first_phys / PAGEBLOCK_BYTES) as usize;
    let byte = encode(to);
    with_window(|| {
        for entry in PAGEBLOCKS.0.iter().skip(first).take(pageblocks as usize) {
            entry.store(byte, Ordering::Release);
        }
    });
}

/// Why a single page-table page cannot be recorded, or given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleError {
    /// The frame lies past [`COVERED_BYTES`].
    NotCovered,
    /// Its pageblock is not `Mapped` (nor mixed) in the record.
    NotMapped,
    /// Recorded already (protecting), or not recorded (giving back).
    Recorded(bool),
    /// Every one of the [`MIXED_SLOTS`] slots is taken by another
    /// pageblock.
    Full,
}

/// Records that the direct map gives the 4 KiB frame at `phys`, in a
/// `Mapped` pageblock, the page-table key by itself. The backend calls it
/// before it keys the entry, under its edit lock (so a refusal comes
/// before any change, and the record names the page as page-table memory
/// for as long as its entry may carry the key), and undoes it with
/// [`record_single_given_back`] if the entry change fails.
pub(super) fn record_single_protected(phys: u64) -> Result<(), SingleError> {
    if !covers(phys & !(PAGEBLOCK_BYTES - 1), 1) {
        return Err(SingleError::NotCovered);
    }
    let index = (phys / PAGEBLOCK_BYTES) as usize;
    let (word, mask) = bit(((phys % PAGEBLOCK_BYTES) / 4096) as usize);
    match block(index) {
        Block::Mixed(slot) => {
            if SINGLES.owners[slot].load(Ordering::Relaxed) != index as u32 + 1 {
                panic!("the sealed record's slot {slot} does not belong to pageblock {index}");
            }
            if SINGLES.frames[slot][word].load(Ordering::Relaxed) & mask != 0 {
                return Err(SingleError::Recorded(true));
            }
            with_window(|| SINGLES.frames[slot][word].fetch_or(mask, Ordering::Release));
            Ok(())
        }
        Block::Whole(Protection::Mapped) => {
            let slot = SINGLES
                .owners
                .iter()
                .position(|owner| owner.load(Ordering::Relaxed) == 0)
                .ok_or(SingleError::Full)?;
            with_window(|| {
                // The slot is whole before the byte names it.
                SINGLES.owners[slot].store(index as u32 + 1, Ordering::Relaxed);
                for (i, bits) in SINGLES.frames[slot].iter().enumerate() {
                    bits.store(if i == word { mask } else { 0 }, Ordering::Relaxed);
                }
                PAGEBLOCKS.0[index].store(MIXED | slot as u8, Ordering::Release);
            });
            Ok(())
        }
        Block::Whole(_) => Err(SingleError::NotMapped),
    }
}

/// Records that the single page-table page at `phys` has its pageblock's
/// protection (`Mapped`) again. The backend calls it after it unkeyed the
/// entry, under its edit lock. The pageblock's last single page gives its
/// slot back: the pageblock is plain `Mapped` again.
pub(super) fn record_single_given_back(phys: u64) -> Result<(), SingleError> {
    let index = (phys / PAGEBLOCK_BYTES) as usize;
    let (word, mask) = bit(((phys % PAGEBLOCK_BYTES) / 4096) as usize);
    let Block::Mixed(slot) = block(index) else {
        return Err(SingleError::Recorded(false));
    };
    if SINGLES.frames[slot][word].load(Ordering::Relaxed) & mask == 0 {
        return Err(SingleError::Recorded(false));
    }
    with_window(|| {
        SINGLES.frames[slot][word].fetch_and(!mask, Ordering::Release);
        let empty = SINGLES.frames[slot]
            .iter()
            .all(|bits| bits.load(Ordering::Relaxed) == 0);
        if empty {
            // The byte lets go of the slot before the slot is free.
            PAGEBLOCKS.0[index].store(encode(Protection::Mapped), Ordering::Release);
            SINGLES.owners[slot].store(0, Ordering::Release);
        }
    });
    Ok(())
}

/// The protection the direct map gives the 4 KiB frame holding `phys`:
/// its pageblock's, or for a single page-table page, the page-table key.
pub fn protection(phys: u64) -> Protection {
    let index = (phys / PAGEBLOCK_BYTES) as usize;
    match block(index) {
        Block::Whole(protection) => protection,
        Block::Mixed(_) => {
            if single_in(index, ((phys % PAGEBLOCK_BYTES) / 4096) as usize) {
                SINGLE
            } else {
                Protection::Mapped
            }
        }
    }
}

/// The protection of the pageblock holding `phys` as a whole (what
/// `ptalloc`'s pageblock freetype must have): `Mapped` for a mixed one.
pub fn pageblock_protection(phys: u64) -> Protection {
    match block((phys / PAGEBLOCK_BYTES) as usize) {
        Block::Whole(protection) => protection,
        Block::Mixed(_) => Protection::Mapped,
    }
}

/// True if the 4 KiB frame holding `phys` is a recorded single page-table
/// page.
pub fn is_single_page(phys: u64) -> bool {
    single_in(
        (phys / PAGEBLOCK_BYTES) as usize,
        ((phys % PAGEBLOCK_BYTES) / 4096) as usize,
    )
}

/// The first frame in the `span` bytes from `start` (4 KiB aligned) that
/// the record calls page-table memory: a frame of a page-table pageblock,
/// or a single page-table page. One byte per pageblock, and for a mixed
/// one its bitmap.
pub fn first_page_table_frame(start: u64, span: u64) -> Option<u64> {
    let end = start.saturating_add(span);
    let mut at = start;
    while at < end {
        let block_start = at & !(PAGEBLOCK_BYTES - 1);
        let block_end = (block_start + PAGEBLOCK_BYTES).min(end);
        let index = (block_start / PAGEBLOCK_BYTES) as usize;
        match block(index) {
            Block::Whole(protection) if protection == SINGLE => return Some(at),
            Block::Whole(_) => {}
            Block::Mixed(_) => {
                let first = ((at - block_start) / 4096) as usize;
                let last = ((block_end - block_start).div_ceil(4096)) as usize;
                if let Some(frame) = (first..last).find(|&frame| single_in(index, frame)) {
                    return Some(block_start + frame as u64 * 4096);
                }
            }
        }
        at = block_end;
    }
    None
}

/// Single page-table pages recorded, and the mixed pageblocks (slots)
/// holding them.
pub fn single_pages() -> (u64, usize) {
    let mut pages = 0;
    let mut slots = 0;
    for (owner, bits) in SINGLES.owners.iter().zip(SINGLES.frames.iter()) {
        if owner.load(Ordering::Acquire) != 0 {
            slots += 1;
            pages += bits
                .iter()
                .map(|b| u64::from(b.load(Ordering::Acquire).count_ones()))
                .sum::<u64>();
        }
    }
    (pages, slots)
}

/// Calls `f` with the physical address of every recorded single
/// page-table page.
pub(super) fn for_each_single_page(mut f: impl FnMut(u64)) {
    for (owner, bits) in SINGLES.owners.iter().zip(SINGLES.frames.iter()) {
        let Some(index) = owner.load(Ordering::Acquire).checked_sub(1) else {
            continue;
        };
        let base = u64::from(index) * PAGEBLOCK_BYTES;
        for (word, bits) in bits.iter().enumerate() {
            let mut set = bits.load(Ordering::Acquire);
            while set != 0 {
                let frame = word as u64 * 64 + u64::from(set.trailing_zeros());
                f(base + frame * 4096);
                set &= set - 1;
            }
        }
    }
}

/// Physical range of the sealed pages (in the image).
pub(super) fn phys_range() -> core::ops::Range<u64> {
    let start = (&raw const __sealed_start) as u64;
    let end = (&raw const __sealed_end) as u64;
    start - boot::layout::KERNEL_VIRT..end - boot::layout::KERNEL_VIRT
}

/// Calls `f` with the early page tables: the frozen list once sealed, the
/// boot-time list before.
pub(super) fn with_early_tables<T>(f: impl FnOnce(&EarlyPageTables) -> T) -> T {
    match EARLY.get() {
        Some(frozen) => f(frozen),
        None => f(&EARLY_PAGE_TABLES.lock()),
    }
}

/// Freezes the early page tables and gives the sealed pages their key
/// (read-only under `ro`). Call once at boot, after the last early table
/// is recorded and after `image` made the image's direct-map alias (theirs
/// included) read-only.
pub(super) fn seal(protect: bool) -> Result<usize, super::boot_tables::KeyError> {
    let frozen = EARLY_PAGE_TABLES.lock().clone();
    with_window(|| {
        EARLY.call_once(|| frozen);
        KEYED.call_once(|| protect);
    });
    if !protect {
        return Ok(0);
    }
    let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
    let start = (&raw const __sealed_start) as u64;
    let end = (&raw const __sealed_end) as u64;
    let mut pages = 0;
    for page in (start..end).step_by(4096) {
        match mechanism {
            Mechanism::Pks => super::boot_tables::set_page_key(page, METADATA_KEY)?,
            Mechanism::WriteProtect => super::boot_tables::set_page_writable(page, false)?,
            Mechanism::None => {}
        }
        pages += 1;
    }
    Ok(pages)
}

/// Pageblocks whose protection in the record differs from the freetype
/// `ptalloc`'s metadata gives them: evidence that one of them was written
/// behind the allocator's back. A mixed pageblock counts as `Mapped`, as
/// its freetype is: its single pages are page tables on loan, which
/// `ptalloc` books to their pageblock's freetype.
pub fn mismatches() -> u64 {
    let Some(allocator) = super::frames::allocator() else {
        return 0;
    };
    let pageblocks = (allocator.frames() >> ptalloc::PAGEBLOCK_ORDER).min(MAX_PAGEBLOCKS as u64);
    (0..pageblocks)
        .filter(|&block| {
            let phys = block * PAGEBLOCK_BYTES;
            allocator
                .frame_info(ptalloc::Pfn(phys / 4096))
                .and_then(|info| info.pageblock_freetype)
                .is_some_and(|freetype| freetype.protection != pageblock_protection(phys))
        })
        .count() as u64
}

/// Attacks on the record.
mod attacks {
    use super::*;
    use crate::arch::recovery::write_u64_if_writable;
    use crate::pkfault::with_policy;
    use pkeys::FaultPolicy;

    crate::kernel_test! {
        /// A stray write to the pageblock record: where the record is
        /// protected (`protect=...,meta`) it faults, with key 2 under
        /// `pks`; elsewhere it lands, and the walk's cross-check with the
        /// allocator's metadata reports it. The target is a real attack:
        /// marking a page-table pageblock `Mapped` would let the ephemeral
        /// slot map its tables writable. An attack of the matrix
        /// (`attack_matrix`).
        fn stray_write_to_the_pageblock_record() -> TestResult {
            let Some(pt_block) = (0..MAX_PAGEBLOCKS as u64)
                .map(|b| b * PAGEBLOCK_BYTES)
                .find(|&phys| block((phys / PAGEBLOCK_BYTES) as usize) == Block::Whole(SINGLE))
            else {
                return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no page-table pageblock")));
            };
            let index = (pt_block / PAGEBLOCK_BYTES) as usize;
            // The aligned word holding the pageblock's byte.
            let word = (PAGEBLOCKS.0.as_ptr() as usize + (index & !7)) as *mut u64;
            // SAFETY: a word of the record, readable.
            let before = unsafe { word.read_volatile() };
            let clean = mismatches();
            let forged = before & !(0xff << ((index % 8) * 8));
            // SAFETY: the record's own word; if the write lands it is put
            // back at once below.
            let landed = with_policy(FaultPolicy::Report, || unsafe { write_u64_if_writable(word, forged) }).is_ok();
            let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
            let seen = mismatches() > clean;
            if landed {
                // Undo it through the record's own door.
                record(pt_block, 1, super::super::frames::PAGE_TABLES.protection);
            }
            crate::check_eq!(protection(pt_block), super::super::frames::PAGE_TABLES.protection);
            if !landed && mechanism == Mechanism::Pks {
                let fault = crate::pkfault::last_fault().and_then(|f| f.key);
                crate::check_eq!(fault, Some(METADATA_KEY));
            }
            use crate::attack_matrix::{Outcome, Target};
            let outcome = match (landed, seen) {
                (false, _) => Outcome::Blocked,
                (true, true) => Outcome::Detected,
                (true, false) => Outcome::Succeeded,
            };
            crate::attack_matrix::record(Target::SealedRecord, outcome)
        }
    }

    crate::kernel_test! {
        /// The allocator's own copy is ordinary memory: a stray write there
        /// (forging a `Mapped` pageblock as page-table memory) is seen by
        /// the walk, which compares it with the record. An attack of the
        /// matrix (`attack_matrix`).
        fn forged_allocator_metadata_is_seen_by_the_walk() -> TestResult {
            let boot = crate::boot_state();
            let Some(mapped_block) = (0..MAX_PAGEBLOCKS as u64).map(|b| b * PAGEBLOCK_BYTES).find(|&phys| {
                super::super::frames::allocator()
                    .and_then(|a| a.frame_info(ptalloc::Pfn(phys / 4096)))
                    .and_then(|i| i.pageblock_freetype)
                    == Some(ptalloc::Freetype::KERNEL)
            }) else {
                return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no kernel pageblock")));
            };
            // ptalloc's metadata: 12 bytes per frame, the pageblock's
            // freetype index in the last byte of its first frame's entry.
            let entry = super::super::direct_map::DIRECT_MAP_BASE
                + boot.memory.frames.metadata.start
                + (mapped_block / 4096) * ptalloc::METADATA_BYTES_PER_FRAME as u64
                + 11;
            let byte = entry as *mut u8;
            let clean = mismatches();
            // SAFETY: a byte of ptalloc's metadata, ordinary memory mapped
            // by the direct map; restored at once below.
            let original = unsafe { byte.read_volatile() };
            // SAFETY: as above: the simulated stray write.
            unsafe { byte.write_volatile(super::super::frames::PAGE_TABLES.index() as u8) };
            let forged = mismatches();
            let walk = crate::memory::verify::verify();
            // SAFETY: as above: undo it.
            unsafe { byte.write_volatile(original) };
            crate::check_eq!((clean, forged), (0, 1));
            crate::check!(!walk.passed(), "the walk passed with forged metadata");
            crate::check_eq!(walk.metadata_mismatches, 1);
            crate::check!(crate::memory::verify::verify().passed() || boot.ptprot == pkeys::ProtectionPolicy::None);
            // The write always lands (ordinary memory); the walk saw it.
            crate::attack_matrix::record(crate::attack_matrix::Target::AllocatorMetadata, crate::attack_matrix::Outcome::Detected)
        }
    }
}

mod single_page_tests;
