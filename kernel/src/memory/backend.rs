//! `ptalloc`'s [`DirectMap`] backend on the real direct map.
//!
//! - `protect` edits the 2 MiB entries of a pageblock run, splitting the
//!   1 GiB mapping around it first if there is one (its page directory
//!   comes from the `SplitPages` source only). A 2 MiB entry that an
//!   earlier 4 KiB split turned into a page table has all 512 entries
//!   rewritten instead.
//! - `protect_frame` gives one 4 KiB frame of a `Mapped` pageblock the
//!   page-table key by itself, or gives it back `Mapped` (`ptalloc`'s
//!   single-page fallback), through the same 4 KiB path as the kernel's
//!   own single-page changes (early tables, the image's alias).
//! - What a protection looks like in an entry depends on the policy:
//!   `Pkey(k)` carries key k under `ptprot=pks`, is read-only under `ro`,
//!   and is a plain mapping under `none`; `Unmapped` is not present.
//! - `flush` drops the run's translations through [`tlb`]: INVLPG each
//!   up to the limit (measured at boot, or `flushlimit=`), a CR3 reload
//!   beyond it or where 4 KiB entries changed (`tlb`'s doc
//!   says what the QEMU tests can and cannot see of flushes).
//! - `zero` writes through the direct map (inside a window for the key of
//!   a protected page), or through the ephemeral slot for unmapped pages.
//! - `largest_page` answers from the map as built: the direct map never
//!   grows, so one built without 1 GiB pages (`ptstrategy=granular`, or a
//!   CPU or machine without them) never has one. `mappings` counts the
//!   leaf entries by walking the direct map's tables under the edit lock.
//!
//! Every page-table write happens inside a page-table write window, and
//! every pageblock change, and every single page-table page, is written
//! to the sealed record ([`super::sealed`]) in the same call, under the
//! same lock; a range the record does not cover keeps `Mapped`.

use super::direct_map::{DIRECT_MAP_BASE, DirectMapInfo, GIB, MIB2};
use super::ephemeral;
use super::pte;
use super::pte::{ADDRESS, LARGE, NO_EXECUTE, PRESENT, WRITABLE};
use super::tlb;
use crate::arch::pks;
use crate::sync::Mutex;
use boot::layout::KERNEL_VIRT;
use core::sync::atomic::{AtomicBool, Ordering};
use pkeys::{Mechanism, Pkey};
use ptalloc::{
    DirectMap, DirectMapError, FlushReport, MappingCounts, PageSize, PageblockRange, Pfn,
    ProtectReport, Protection, SplitPages,
};

/// The real direct map, as `ptalloc` sees it.
pub struct KernelDirectMap {
    /// Physical address of the direct map's PDPT.
    pdpt_phys: u64,
    /// Whether the map was built with any 1 GiB page.
    has_gib_pages: bool,
    /// NX bit for data mappings (0 on CPUs without NX).
    nx: u64,
    /// Serialises edits (ptalloc converts under its lock, but the kernel's
    /// own sub-pageblock changes come from elsewhere).
    edits: Mutex<()>,
    /// Set by `protect` when it rewrote 4 KiB entries, and by
    /// `protect_frame`: INVLPG on a 2 MiB address would drop only one of
    /// them, so the next flush is full.
    needs_full_flush: AtomicBool,
}

impl KernelDirectMap {
    /// The backend for the direct map `built`.
    pub fn new(built: &DirectMapInfo, nx: bool) -> Self {
        Self {
            pdpt_phys: built.pdpt_phys,
            has_gib_pages: built.giga_pages > 0,
            nx: if nx { NO_EXECUTE } else { 0 },
            edits: Mutex::new(()),
            needs_full_flush: AtomicBool::new(false),
        }
    }

    /// Attribute bits (everything but the address and the page-size bit)
    /// for a mapping with `protection` under the active mechanism.
    fn attributes(&self, protection: Protection) -> u64 {
        let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
        match (protection, mechanism) {
            (Protection::Unmapped, _) => 0,
            (Protection::Mapped, _) | (Protection::Pkey(_), Mechanism::None) => {
                PRESENT | WRITABLE | self.nx
            }
            (Protection::Pkey(_), Mechanism::WriteProtect) => PRESENT | self.nx,
            (Protection::Pkey(k), Mechanism::Pks) => {
                let key = Pkey::new(k).unwrap_or(Pkey::DEFAULT);
                pkeys::key::pte_with_key(PRESENT | WRITABLE | self.nx, key)
            }
        }
    }
}

/// Fills a table with 512 entries mapping `base` onward in steps of `step`
/// with the same `bits`: a fresh split table then maps exactly what the
/// larger entry it replaces did.
///
/// # Safety
/// `table` must point at a whole page-table page the caller owns, writable
/// in `window`; if it is linked, the caller flushes what changed.
unsafe fn fill_split(window: &pte::Window, table: *mut u64, base: u64, step: u64, bits: u64) {
    for i in 0..512u64 {
        // SAFETY: the caller's contract covers all 512 entries.
        unsafe { pte::write(window, table.add(i as usize), (base + i * step) | bits) };
    }
}

/// A table page through the direct map.
fn table_at(phys: u64) -> *mut u64 {
    (DIRECT_MAP_BASE + phys) as *mut u64
}

/// A table page that may be a pool page in the image (early tables) or an
/// allocator page (through the direct map).
fn any_table(phys: u64) -> *mut u64 {
    if phys < boot::layout::BOOT_WINDOW_SIZE && super::kernel_image_phys().contains(&phys) {
        (KERNEL_VIRT + phys) as *mut u64
    } else {
        table_at(phys)
    }
}

impl KernelDirectMap {
    /// Gives the 4 KiB frame `pfn` the protection `to` in the direct map,
    /// splitting the 1 GiB and 2 MiB mappings around it as needed with
    /// pages from `split_pages` only (at most two). All pages are taken
    /// before anything changes, so a failure leaves the map as it was. The
    /// caller flushes. Private to `memory`: it can strip any frame's
    /// protection.
    pub(super) fn protect_page(
        &self,
        pfn: Pfn,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        self.set_page_attributes(pfn, self.attributes(to), split_pages)
    }

    /// Maps the 4 KiB frame `pfn` read-only (and no-execute) in the
    /// direct map, splitting as [`protect_page`](Self::protect_page) does:
    /// the kernel image's alias. The caller flushes.
    pub(super) fn read_only_page(
        &self,
        pfn: Pfn,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        self.set_page_attributes(pfn, PRESENT | self.nx, split_pages)
    }

    fn set_page_attributes(
        &self,
        pfn: Pfn,
        attributes: u64,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let _edits = self.edits.lock();
        self.edit_page(pfn, attributes, split_pages)
    }

    /// The 4 KiB path of [`set_page_attributes`](Self::set_page_attributes),
    /// for a caller holding `edits`.
    fn edit_page(
        &self,
        pfn: Pfn,
        attributes: u64,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let addr = pfn.addr();
        if self.pdpt_phys == 0 {
            return Err(DirectMapError::Failed);
        }
        pte::with_window(|window| {
            let pdpt = any_table(self.pdpt_phys);
            let slot = (addr / GIB) as usize;
            // SAFETY (reads and writes below): as in `protect`.
            let pdpte = unsafe { pdpt.add(slot).read_volatile() };
            if pdpte & (PRESENT | LARGE) == 0 {
                return Err(DirectMapError::Failed);
            }
            let split_gib = pdpte & LARGE != 0;
            let pd_index = ((addr % GIB) / MIB2) as usize;
            let pde = if split_gib {
                None
            } else {
                // SAFETY: see above.
                Some(unsafe { any_table(pdpte & ADDRESS).add(pd_index).read_volatile() })
            };
            if pde.is_some_and(|pde| pde & (PRESENT | LARGE) == 0) {
                // The direct map does not cover this frame.
                return Err(DirectMapError::Failed);
            }
            let split_mib = pde.is_none_or(|pde| pde & LARGE != 0);
            // Take every page first: all or nothing.
            let pd_page = if split_gib {
                Some(split_pages.take().ok_or(DirectMapError::NoSplitPage)?)
            } else {
                None
            };
            let pt_page = if split_mib {
                Some(split_pages.take().ok_or(DirectMapError::NoSplitPage)?)
            } else {
                None
            };
            let mut report = ProtectReport::default();

            let pd = match pd_page {
                Some(page) => {
                    let pd = table_at(page.addr());
                    let attributes = pdpte & !(ADDRESS | LARGE);
                    let base = pdpte & ADDRESS & !(GIB - 1);
                    // SAFETY: a fresh reserve page, protected, mapped by the
                    // direct map, written in the window.
                    unsafe { fill_split(window, pd, base, MIB2, LARGE | attributes) };
                    // SAFETY: see above; the PD maps what the 1 GiB page did.
                    unsafe { pte::write(window, pdpt.add(slot), page.addr() | PRESENT | WRITABLE) };
                    report.splits_1g = 1;
                    pd
                }
                None => any_table(pdpte & ADDRESS),
            };
            // SAFETY: see above.
            let pde = unsafe { pd.add(pd_index).read_volatile() };
            let pt = match pt_page {
                Some(page) => {
                    let pt = table_at(page.addr());
                    let attributes = pde & !(ADDRESS | LARGE);
                    let base = pde & ADDRESS & !(MIB2 - 1);
                    // SAFETY: as above.
                    unsafe { fill_split(window, pt, base, 4096, attributes) };
                    // SAFETY: see above; the PT maps what the 2 MiB page did.
                    unsafe {
                        pte::write(window, pd.add(pd_index), page.addr() | PRESENT | WRITABLE)
                    };
                    report.splits_2m = 1;
                    pt
                }
                None => any_table(pde & ADDRESS),
            };
            let index = ((addr % MIB2) / 4096) as usize;
            // SAFETY: see above.
            unsafe { pte::write(window, pt.add(index), (addr & ADDRESS) | attributes) };
            Ok(report)
        })
    }
}

impl DirectMap for KernelDirectMap {
    /// `ptalloc`'s single-page fallback: gives one frame of a `Mapped`
    /// pageblock the page-table key by itself (splitting the pageblock's
    /// 2 MiB entry, and a 1 GiB one above it, with pages from
    /// `split_pages`), or gives such a page back `Mapped`. Nothing else:
    /// any other pair of protections, a frame past the sealed record, or
    /// one the record does not agree about is refused with `Failed` before
    /// anything changes, and so is a page in a new pageblock when the
    /// record has no slot left for it. The sealed record names the page as
    /// page-table memory before its entry gets the key and until after the
    /// key is gone, so `paging` and the ephemeral slot refuse it the whole
    /// time. The caller flushes; the flush reloads CR3, since INVLPG on the
    /// pageblock's address would not drop the page's own 4 KiB entry.
    fn protect_frame(
        &self,
        pfn: Pfn,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let page_tables = super::frames::PAGE_TABLES.protection;
        let protecting = match (from, to) {
            (Protection::Mapped, to) if to == page_tables => true,
            (from, Protection::Mapped) if from == page_tables => false,
            _ => return Err(DirectMapError::Failed),
        };
        let _edits = self.edits.lock();
        let addr = pfn.addr();
        if self.pdpt_phys == 0 {
            return Err(DirectMapError::Failed);
        }
        if protecting {
            super::sealed::record_single_protected(addr).map_err(|_| DirectMapError::Failed)?;
        } else if !super::sealed::is_single_page(addr) {
            return Err(DirectMapError::Failed);
        }
        let edited = self.edit_page(pfn, self.attributes(to), split_pages);
        // A page that did not get its key leaves the record again, and so
        // does one that lost it. Under `edits` the record still says what
        // it said a moment ago, so this cannot fail.
        let leaves_record = matches!((protecting, &edited), (true, Err(_)) | (false, Ok(_)));
        if leaves_record && super::sealed::record_single_given_back(addr).is_err() {
            panic!("the sealed record lost single page-table page {addr:#x} under the edit lock");
        }
        if edited.is_ok() {
            self.needs_full_flush.store(true, Ordering::Relaxed);
        }
        edited
    }

    fn protect(
        &self,
        range: PageblockRange,
        _from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let _edits = self.edits.lock();
        let start = range.start.addr();
        let end = range.end().addr();
        if start / GIB != (end - 1) / GIB || self.pdpt_phys == 0 {
            return Err(DirectMapError::Failed);
        }
        // The sealed record must be able to say what the range becomes,
        // and a pageblock holding single page-table pages (never wholly
        // free, so never converted by `ptalloc`) keeps them.
        if (to != Protection::Mapped && !super::sealed::covers(start, range.pageblocks))
            || super::sealed::holds_single_pages(start, range.pageblocks)
        {
            return Err(DirectMapError::Failed);
        }
        let attributes = self.attributes(to);
        let mut report = ProtectReport::default();
        let changed = pte::with_window(|window| {
            let pdpt = any_table(self.pdpt_phys);
            let slot = (start / GIB) as usize;
            // SAFETY (this block and the writes below): the direct map's tables
            // are page-table frames only this backend edits, under `edits` and
            // inside a page-table window; entries are read and written whole.
            let pdpte = unsafe { pdpt.add(slot).read_volatile() };
            if pdpte & PRESENT == 0 && pdpte & LARGE == 0 {
                return Err(DirectMapError::Failed);
            }
            let pd_phys = if pdpte & LARGE != 0 {
                if start.is_multiple_of(GIB) && end - start == GIB {
                    // The whole gigabyte: no split needed.
                    // SAFETY: see above.
                    unsafe {
                        pte::write(
                            window,
                            pdpt.add(slot),
                            (start & ADDRESS) | LARGE | attributes,
                        )
                    };
                    return Ok(report);
                }
                let Some(page) = split_pages.take() else {
                    return Err(DirectMapError::NoSplitPage);
                };
                let old_attributes = pdpte & !(ADDRESS | LARGE);
                let gib_base = pdpte & ADDRESS & !(GIB - 1);
                // SAFETY (for both uses): `pd` maps the split page, which is
                // ours (from the source), not yet linked, writable in the window.
                let fill = |pd: *mut u64| unsafe {
                    fill_split(window, pd, gib_base, MIB2, LARGE | old_attributes)
                };
                if pdpte & PRESENT != 0 {
                    // A reserve page (protected, mapped) or a self-hosted page of
                    // this still-mapped gigabyte: write it through the direct map.
                    fill(table_at(page.addr()));
                } else {
                    // A self-hosted page of an unmapped gigabyte: the direct map
                    // does not show it, so write it through the ephemeral slot.
                    ephemeral::with_new_split_table(page.addr(), |frame| fill(frame.cast::<u64>()))
                        .ok_or(DirectMapError::Failed)?;
                }
                // SAFETY: see above; the PD now maps exactly what the 1 GiB page did.
                unsafe { pte::write(window, pdpt.add(slot), page.addr() | PRESENT | WRITABLE) };
                report.splits_1g = 1;
                page.addr()
            } else {
                // All or nothing: refuse a range the direct map does not
                // cover before writing any of it.
                let pd = any_table(pdpte & ADDRESS);
                let covered = (start..end).step_by(MIB2 as usize).all(|at| {
                    // SAFETY: see above.
                    let pde = unsafe { pd.add(((at % GIB) / MIB2) as usize).read_volatile() };
                    pde & (PRESENT | LARGE) != 0
                });
                if !covered {
                    return Err(DirectMapError::Failed);
                }
                pdpte & ADDRESS
            };
            let pd = any_table(pd_phys);
            let mut at = start;
            while at < end {
                let index = ((at % GIB) / MIB2) as usize;
                // SAFETY: see above.
                let pde = unsafe { pd.add(index).read_volatile() };
                if pde & (PRESENT | LARGE) == 0 {
                    // Not part of the direct map: refuse rather than map it.
                    return Err(DirectMapError::Failed);
                }
                if pde & PRESENT != 0 && pde & LARGE == 0 {
                    // Split to 4 KiB earlier: rewrite every page of it.
                    // SAFETY: see above; the table is linked, so every entry is
                    // rewritten with the same frames and the new attributes.
                    unsafe { fill_split(window, any_table(pde & ADDRESS), at, 4096, attributes) };
                    self.needs_full_flush.store(true, Ordering::Relaxed);
                } else {
                    // SAFETY: see above.
                    unsafe { pte::write(window, pd.add(index), at | LARGE | attributes) };
                }
                at += MIB2;
            }
            Ok(report)
        });
        if changed.is_ok() {
            super::sealed::record(start, range.pageblocks, to);
        }
        changed
    }

    fn flush(&self, range: PageblockRange) -> FlushReport {
        let full = self.needs_full_flush.swap(false, Ordering::Relaxed);
        let remote = tlb::flush_direct_map(range.start.addr(), range.pageblocks, full);
        FlushReport { local: 1, remote }
    }

    fn largest_page(&self) -> Option<PageSize> {
        Some(if self.has_gib_pages {
            PageSize::Size1G
        } else {
            PageSize::Size2M
        })
    }

    fn mappings(&self) -> Option<MappingCounts> {
        if self.pdpt_phys == 0 {
            return None;
        }
        let _edits = self.edits.lock();
        let mut counts = MappingCounts::default();
        let present = |table: *mut u64, index: usize| {
            // SAFETY: the direct map's tables are page-table frames mapped
            // readable; under `edits` no entry changes while it is read.
            let entry = unsafe { table.add(index).read_volatile() };
            (entry & PRESENT != 0).then_some(entry)
        };
        let pdpt = any_table(self.pdpt_phys);
        for pdpte in (0..512).filter_map(|i| present(pdpt, i)) {
            if pdpte & LARGE != 0 {
                counts.pages_1g += 1;
                continue;
            }
            let pd = any_table(pdpte & ADDRESS);
            for pde in (0..512).filter_map(|i| present(pd, i)) {
                if pde & LARGE != 0 {
                    counts.pages_2m += 1;
                } else {
                    let pt = any_table(pde & ADDRESS);
                    counts.pages_4k +=
                        (0..512).filter(|&i| present(pt, i).is_some()).count() as u64;
                }
            }
        }
        Some(counts)
    }

    fn wait_for_lock(&self) {
        // The holder may be in a shootdown round that waits for this CPU
        // (crate::sync explains).
        <crate::sync::AnswerShootdowns as spin::RelaxStrategy>::relax();
    }

    fn zero(&self, start: Pfn, order: u32, protection: Protection) -> Result<(), DirectMapError> {
        let frames = 1u64 << order;
        match protection {
            Protection::Unmapped => {
                ephemeral::zero_frames(start.addr(), frames).ok_or(DirectMapError::Failed)?;
            }
            Protection::Mapped | Protection::Pkey(_) => {
                let virt = DIRECT_MAP_BASE + start.addr();
                // SAFETY: the frames are the caller's, mapped by the direct
                // map with `protection`, writable (inside the window for a
                // page-table key).
                let zero = || unsafe { (virt as *mut u8).write_bytes(0, (frames * 4096) as usize) };
                match protection {
                    Protection::Pkey(k) if k == pkeys::PAGE_TABLE_KEY.index() => {
                        pte::with_window(|_| zero())
                    }
                    // Object classes' memory, in their owner's window; no
                    // other key has one.
                    Protection::Pkey(k) => {
                        // SAFETY: as above: the caller's frames, of key k.
                        unsafe {
                            crate::object::protection::zero_keyed(k, virt, (frames * 4096) as usize)
                        }
                        .ok_or(DirectMapError::Failed)?
                    }
                    _ => zero(),
                }
            }
        }
        Ok(())
    }
}
