//! Reprotecting the early page tables: the boot stub's tables and those
//! the kernel built before the allocator existed (direct map, ephemeral
//! slot) get the page-table protection on every virtual alias, once the
//! split reserve is up.
//!
//! Each early table frame lies in the kernel image, so it has two aliases:
//! the image's own 4 KiB mapping at `KERNEL_VIRT` (the boot stub maps the
//! image's first 4 MiB with 4 KiB pages, and `kernel.ld` keeps the image
//! there) and the direct map, where it sits inside a 1 GiB or 2 MiB page
//! that is split down to 4 KiB with pages from the split reserve. The boot
//! window no longer maps anything else (see `narrow_boot_window`).

use super::backend::KernelDirectMap;
use super::frames::{self, PAGE_TABLES};
use super::{EARLY_PAGE_TABLES, boot_tables, kernel_image_phys};
use crate::arch::pks;
use boot::layout::KERNEL_VIRT;
use pkeys::{Mechanism, PAGE_TABLE_KEY};
use ptalloc::{AllocError, DirectMapError, Pfn};

/// What reprotection did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reprotected {
    /// Early table frames given the page-table protection.
    pub tables: usize,
    /// 1 GiB mappings split for them.
    pub splits_1g: u32,
    /// 2 MiB mappings split for them.
    pub splits_2m: u32,
}

/// Why reprotection stopped.
#[derive(Clone, Copy, Debug)]
pub enum ReprotectError {
    /// No page allocator yet.
    NoAllocator,
    /// The split reserve could not be filled.
    Reserve(AllocError),
    /// A direct-map change failed (with the map unchanged for that frame).
    DirectMap {
        /// The frame.
        phys: u64,
        /// Why.
        error: DirectMapError,
    },
    /// The image alias of a table could not be changed.
    ImageAlias(u64),
}

impl core::fmt::Display for ReprotectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoAllocator => write!(f, "the page allocator is not set up"),
            Self::Reserve(error) => write!(f, "filling the split reserve: {error}"),
            Self::DirectMap { phys, error } => {
                write!(f, "protecting frame {phys:#x} in the direct map: {error:?}")
            }
            Self::ImageAlias(phys) => write!(f, "frame {phys:#x} is not 4 KiB-mapped in the image"),
        }
    }
}

/// Gives every early page table the page-table protection on all its
/// aliases. Under `ptprot=none` there is nothing to do.
pub(super) fn reprotect() -> Result<Reprotected, ReprotectError> {
    let mut done = Reprotected::default();
    let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
    if mechanism == Mechanism::None {
        return Ok(done);
    }
    let allocator = frames::allocator().ok_or(ReprotectError::NoAllocator)?;
    let image = kernel_image_phys();
    let tables = EARLY_PAGE_TABLES.lock().clone();
    for table in tables.tables() {
        if image.contains(&table.phys) {
            let virt = KERNEL_VIRT + table.phys;
            let changed = match mechanism {
                Mechanism::Pks => boot_tables::set_page_key(virt, PAGE_TABLE_KEY),
                _ => boot_tables::set_page_writable(virt, false),
            };
            changed.map_err(|_| ReprotectError::ImageAlias(table.phys))?;
        }
        // Outside the split path: refill first, then split from the reserve.
        allocator
            .refill_reserve()
            .map_err(ReprotectError::Reserve)?;
        let report = allocator
            .with_split_reserve(|backend: &KernelDirectMap, pages| {
                backend.protect_page(Pfn(table.phys / 4096), PAGE_TABLES.protection, pages)
            })
            .map_err(|error| ReprotectError::DirectMap {
                phys: table.phys,
                error,
            })?;
        done.splits_1g += report.splits_1g;
        done.splits_2m += report.splits_2m;
        done.tables += 1;
    }
    allocator
        .refill_reserve()
        .map_err(ReprotectError::Reserve)?;
    // Permissions were taken away: flush everything once.
    super::tlb::flush_all();
    Ok(done)
}
