//! The records the kernel's protection decisions read, under their own key.
//!
//! "Is this frame page-table memory?" decides what the verification walk
//! accepts as a table, what `paging` and the ephemeral slot refuse to map,
//! and whether a page the allocator hands out as a page table is really
//! protected. Its answer lives in two records, kept here on pages of the
//! image (the `.sealed` section) that carry key 2
//! (`pkeys::METADATA_KEY`, read-only under `ro`) once boot has sealed
//! them, and that only this module's own window writes:
//! - per 2 MiB pageblock, the protection the direct map gives it, which the
//!   backend records in the same call that rewrites the entries: `Mapped`,
//!   `Unmapped` or `Pkey(k)`;
//! - the early page tables, frozen once boot has recorded them all.
//!
//! `ptalloc` keeps its own per-pageblock freetype in its metadata, which is
//! ordinary memory (it changes on every allocation). The walk compares the
//! two ([`mismatches`]), and `paging` refuses to use a page table whose
//! pageblock this record does not call page-table memory.
//!
//! Limit: the record covers the first [`COVERED_BYTES`] of physical memory
//! (32 KiB of record). The backend gives pageblocks above it no protection
//! but `Mapped`, so page tables and unmapped frames live below it.

use super::EARLY_PAGE_TABLES;
use crate::arch::pks;
use boot::early_tables::EarlyPageTables;
use core::sync::atomic::{AtomicU8, Ordering};
use pkeys::{METADATA_KEY, Mechanism, Rights, WindowKind};
use ptalloc::Protection;

/// Pageblocks the record covers.
const MAX_PAGEBLOCKS: usize = 32 * 1024;
/// Bytes of physical memory the record covers: 64 GiB.
pub const COVERED_BYTES: u64 = MAX_PAGEBLOCKS as u64 * PAGEBLOCK_BYTES;
const PAGEBLOCK_BYTES: u64 = 2 << 20;

/// The per-pageblock record: 0 `Mapped` (so zeroed memory is all
/// `Mapped`), 1 `Unmapped`, 2 + k `Pkey(k)`.
#[repr(C, align(4096))]
struct PageblockRecord([AtomicU8; MAX_PAGEBLOCKS]);

#[unsafe(link_section = ".sealed")]
static PAGEBLOCKS: PageblockRecord = PageblockRecord([const { AtomicU8::new(0) }; MAX_PAGEBLOCKS]);

/// The early page tables, frozen by [`seal`]. Read without a lock (a lock
/// would write its own word, on a write-disabled page).
#[unsafe(link_section = ".sealed")]
static EARLY: spin::Once<EarlyPageTables> = spin::Once::new();

unsafe extern "C" {
    static __sealed_start: u8;
    static __sealed_end: u8;
}

/// The window on the sealed pages. Private to this module.
struct MetadataWrite;

// SAFETY: the type is private to this module, which writes only the two
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

fn encode(protection: Protection) -> u8 {
    match protection {
        Protection::Mapped => 0,
        Protection::Unmapped => 1,
        Protection::Pkey(k) => 2 + k,
    }
}

fn decode(byte: u8) -> Protection {
    match byte {
        0 => Protection::Mapped,
        1 => Protection::Unmapped,
        k => Protection::Pkey(k - 2),
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

/// Records that the direct map now gives the `pageblocks` from
/// `first_phys` the protection `to`. The backend calls it with every
/// change it makes; a range the record does not cover stays `Mapped`
/// (the backend refuses anything else there, see [`covers`]).
pub(super) fn record(first_phys: u64, pageblocks: u64, to: Protection) {
    if to != Protection::Mapped && !covers(first_phys, pageblocks) {
        panic!("the backend gave pageblocks past the sealed record {to}");
    }
    let first = (first_phys / PAGEBLOCK_BYTES) as usize;
    let byte = encode(to);
    with_window(|| {
        for entry in PAGEBLOCKS.0.iter().skip(first).take(pageblocks as usize) {
            entry.store(byte, Ordering::Relaxed);
        }
    });
}

/// The protection the direct map gives the pageblock holding `phys`.
pub fn protection(phys: u64) -> Protection {
    let index = (phys / PAGEBLOCK_BYTES) as usize;
    PAGEBLOCKS.0.get(index).map_or(Protection::Mapped, |entry| {
        decode(entry.load(Ordering::Relaxed))
    })
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
pub(super) fn seal() -> Result<usize, super::boot_tables::KeyError> {
    let frozen = EARLY_PAGE_TABLES.lock().clone();
    with_window(|| {
        EARLY.call_once(|| frozen);
    });
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
/// behind the allocator's back.
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
                .is_some_and(|freetype| freetype.protection != protection(phys))
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
        /// A stray write to the pageblock record: under `pks` it faults
        /// with key 2 and is stopped; under `none` it lands. The target is
        /// a real attack: marking a page-table pageblock `Mapped` would let
        /// the ephemeral slot map its tables writable.
        fn stray_write_to_the_pageblock_record() -> TestResult {
            let Some(pt_block) = (0..MAX_PAGEBLOCKS as u64)
                .map(|b| b * PAGEBLOCK_BYTES)
                .find(|&phys| protection(phys) == super::super::frames::PAGE_TABLES.protection)
            else {
                return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no page-table pageblock")));
            };
            let index = (pt_block / PAGEBLOCK_BYTES) as usize;
            // The aligned word holding the pageblock's byte.
            let word = (PAGEBLOCKS.0.as_ptr() as usize + (index & !7)) as *mut u64;
            // SAFETY: a word of the record, readable.
            let before = unsafe { word.read_volatile() };
            let forged = before & !(0xff << ((index % 8) * 8));
            // SAFETY: the record's own word; if the write lands it is put
            // back at once below.
            let landed = with_policy(FaultPolicy::Report, || unsafe { write_u64_if_writable(word, forged) }).is_ok();
            let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
            if landed {
                // Undo it through the record's own door.
                record(pt_block, 1, super::super::frames::PAGE_TABLES.protection);
            }
            match mechanism {
                Mechanism::Pks => {
                    crate::check!(!landed, "the stray write to the record landed");
                    let fault = crate::pkfault::last_fault().and_then(|f| f.key);
                    crate::check_eq!(fault, Some(METADATA_KEY));
                }
                Mechanism::None => crate::check!(landed, "the write did not land without protection"),
                Mechanism::WriteProtect => crate::check!(!landed, "the record is writable under ro"),
            }
            crate::check_eq!(protection(pt_block), super::super::frames::PAGE_TABLES.protection);
            Ok(())
        }
    }

    crate::kernel_test! {
        /// The allocator's own copy is ordinary memory: a stray write there
        /// (forging a `Mapped` pageblock as page-table memory) is seen by
        /// the walk, which compares it with the record.
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
            Ok(())
        }
    }
}
