//! The direct map: all usable RAM at [`DIRECT_MAP_BASE`] + physical
//! address, with the largest pages the CPU has.
//!
//! Built once at boot, before the page allocator exists, from the memory
//! map: each usable region, widened to 2 MiB boundaries, is mapped with
//! 1 GiB pages where a whole aligned gigabyte is covered (and the CPU has
//! 1 GiB pages), else with 2 MiB pages. Mappings are writable and
//! non-executable (where NX exists); not global, so a CR3 reload flushes
//! them. The page tables come from a small
//! pool inside the kernel image and are recorded as early page tables, to
//! be given the page-table key once the split reserve is up.
//!
//! Widening to 2 MiB can map a little non-usable memory at region edges
//! (firmware-reserved RAM next to usable RAM); it never reaches MMIO holes
//! on the machines QEMU models, whose holes are 2 MiB aligned.

use super::EARLY_PAGE_TABLES;
use super::pte::{self, ADDRESS, LARGE, NO_EXECUTE, PRESENT, WRITABLE};
use crate::arch::cpu;
use boot::early_tables::{EarlyPageTable, TableLevel, TableOrigin};
use boot::layout::KERNEL_VIRT;
use boot::memory_map::MemoryMap;
use core::cell::UnsafeCell;
use core::ops::Range;

/// Virtual address of physical address 0 in the direct map (PML4 slot 256,
/// the start of the kernel half).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;

pub(crate) const MIB2: u64 = 2 << 20;
pub(crate) const GIB: u64 = 1 << 30;
/// Highest physical address the direct map covers: one PML4 slot (one
/// PDPT) for now. A machine with usable RAM above it is refused at boot
/// with a clear error.
pub const DIRECT_MAP_LIMIT: u64 = 512 * GIB;

/// Page tables the direct map may use before the allocator exists: one
/// PDPT, plus one page directory per gigabyte not mapped by a 1 GiB page
/// (so 31 GiB of RAM on a CPU without 1 GiB pages; more is a clear boot
/// error, [`DirectMapError::PoolExhausted`]).
const POOL_PAGES: usize = 32;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; 512]; POOL_PAGES]>);

// SAFETY: used only by `build`, once, on the boot CPU, before anything else
// can reach the tables.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; POOL_PAGES]));

/// What the direct map covers and how.
#[derive(Clone, Debug, Default)]
pub struct DirectMapInfo {
    /// Physical ranges mapped (2 MiB aligned), sorted.
    pub ranges: heapless::Vec<Range<u64>, 128>,
    /// 1 GiB mappings.
    pub giga_pages: u64,
    /// 2 MiB mappings.
    pub mega_pages: u64,
    /// Page-table pages used (all recorded as early page tables).
    pub tables: u64,
    /// Physical address of the direct map's PDPT (0 if nothing is mapped).
    pub pdpt_phys: u64,
}

impl DirectMapInfo {
    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// True if the direct map covers `[phys, phys + len)`.
    pub fn covers(&self, phys: u64, len: u64) -> bool {
        let Some(end) = phys.checked_add(len) else {
            return false;
        };
        self.ranges.iter().any(|r| r.start <= phys && end <= r.end)
    }
}

/// Why the direct map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectMapError {
    /// Usable memory above [`DIRECT_MAP_LIMIT`].
    TooHigh(u64),
    /// More page tables needed than the boot pool holds.
    PoolExhausted,
    /// More distinct ranges than [`DirectMapInfo`] records.
    TooManyRanges,
    /// The early page-table list is full.
    TooManyEarlyTables,
}

struct Builder {
    next_pool_page: usize,
    pdpt: Option<*mut [u64; 512]>,
    info: DirectMapInfo,
    nx: u64,
}

fn pool_page_phys(page: *mut [u64; 512]) -> u64 {
    page as u64 - KERNEL_VIRT
}

impl Builder {
    /// A zeroed table from the pool, recorded as an early page table.
    fn table(&mut self, level: TableLevel) -> Result<*mut [u64; 512], DirectMapError> {
        if self.next_pool_page >= POOL_PAGES {
            return Err(DirectMapError::PoolExhausted);
        }
        let page = POOL
            .0
            .get()
            .cast::<[u64; 512]>()
            .wrapping_add(self.next_pool_page);
        self.next_pool_page += 1;
        let record = EarlyPageTable {
            phys: pool_page_phys(page),
            level,
            origin: TableOrigin::EarlyKernel,
        };
        EARLY_PAGE_TABLES
            .lock()
            .record(record)
            .map_err(|_| DirectMapError::TooManyEarlyTables)?;
        self.info.tables += 1;
        Ok(page)
    }

    fn map_range(
        &mut self,
        window: &pte::Window,
        start: u64,
        end: u64,
        gib_pages: bool,
    ) -> Result<(), DirectMapError> {
        let pdpt = match self.pdpt {
            Some(pdpt) => pdpt,
            None => {
                let pdpt = self.table(TableLevel::Pdpt)?;
                self.pdpt = Some(pdpt);
                pdpt
            }
        };
        let mut at = start;
        while at < end {
            let slot = (at / GIB) as usize;
            let entry_ptr = pdpt.cast::<u64>().wrapping_add(slot);
            // SAFETY: the PDPT is a pool page only this builder uses, not yet
            // linked; writes go through `pte::write` in the window.
            let entry = unsafe { entry_ptr.read_volatile() };
            if gib_pages && at.is_multiple_of(GIB) && at + GIB <= end && entry == 0 {
                // SAFETY: as above.
                unsafe { pte::write(window, entry_ptr, at | PRESENT | WRITABLE | LARGE | self.nx) };
                self.info.giga_pages += 1;
                at += GIB;
                continue;
            }
            let pd = if entry & PRESENT == 0 {
                let pd = self.table(TableLevel::Pd)?;
                // SAFETY: as above.
                unsafe { pte::write(window, entry_ptr, pool_page_phys(pd) | PRESENT | WRITABLE) };
                pd
            } else if entry & LARGE != 0 {
                // Already covered by a 1 GiB page.
                at = (at / GIB + 1) * GIB;
                continue;
            } else {
                ((entry & ADDRESS) + KERNEL_VIRT) as *mut [u64; 512]
            };
            let slot = ((at % GIB) / MIB2) as usize;
            let pde_ptr = pd.cast::<u64>().wrapping_add(slot);
            // SAFETY: `pd` is a pool page only this builder uses, not yet linked.
            if unsafe { pde_ptr.read_volatile() } == 0 {
                // SAFETY: as above.
                unsafe { pte::write(window, pde_ptr, at | PRESENT | WRITABLE | LARGE | self.nx) };
                self.info.mega_pages += 1;
            }
            at += MIB2;
        }
        Ok(())
    }
}

static INFO: spin::Once<DirectMapInfo> = spin::Once::new();

/// What the direct map covers, once [`build`] ran.
pub fn info() -> Option<&'static DirectMapInfo> {
    INFO.get()
}

/// Builds the direct map for every usable region of `memory` and links it
/// into the live address space.
pub(super) fn build(
    memory: &MemoryMap,
    gib_pages: bool,
    nx: bool,
) -> Result<DirectMapInfo, DirectMapError> {
    let mut builder = Builder {
        next_pool_page: 0,
        pdpt: None,
        info: DirectMapInfo::default(),
        nx: if nx { NO_EXECUTE } else { 0 },
    };
    // Widen each usable region to 2 MiB and merge neighbours first, so a
    // gigabyte made of several regions still gets one 1 GiB page.
    let mut ranges: heapless::Vec<Range<u64>, 128> = heapless::Vec::new();
    for region in memory.usable() {
        let start = region.start / MIB2 * MIB2;
        let end = region.end.div_ceil(MIB2) * MIB2;
        if end > DIRECT_MAP_LIMIT {
            return Err(DirectMapError::TooHigh(region.end));
        }
        match ranges.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => ranges
                .push(start..end)
                .map_err(|_| DirectMapError::TooManyRanges)?,
        }
    }
    pte::with_window(|window| {
        for range in &ranges {
            builder.map_range(window, range.start, range.end, gib_pages)?;
        }
        if let Some(pdpt) = builder.pdpt {
            builder.info.pdpt_phys = pool_page_phys(pdpt);
            link(window, builder.info.pdpt_phys);
        }
        Ok(())
    })?;
    builder.info.ranges = ranges;
    INFO.call_once(|| builder.info.clone());
    Ok(builder.info)
}

/// Points the live PML4's direct-map slot at the PDPT.
fn link(window: &pte::Window, pdpt_phys: u64) {
    let root = cpu::read_cr3() & ADDRESS;
    let slot = (DIRECT_MAP_BASE >> 39) & 0x1ff;
    let entry = (KERNEL_VIRT + root + slot * 8) as *mut u64;
    // SAFETY: the live PML4 is the boot stub's, inside the image and mapped
    // by the boot window; the slot was empty (nothing used the kernel half
    // below the image), so no translation changes, only new ones appear.
    unsafe { pte::write(window, entry, pdpt_phys | PRESENT | WRITABLE) };
}

/// The direct-map address of physical `phys`, if the map covers `len`
/// bytes there.
pub fn phys_to_virt(info: &DirectMapInfo, phys: u64, len: u64) -> Option<u64> {
    info.covers(phys, len).then_some(DIRECT_MAP_BASE + phys)
}

crate::kernel_test! {
    /// Every usable region is mapped at DIRECT_MAP_BASE + phys, to the
    /// right frame, non-executable, with 1 GiB pages wherever a whole
    /// gigabyte is covered and the CPU has them; only `Unmapped`
    /// pageblocks are absent.
    fn direct_map_covers_usable_memory() -> TestResult {
        use crate::memory::walk::{LeafSize, leaf};
        let boot = crate::boot_state();
        let info = &boot.memory.direct_map;
        let root = cpu::read_cr3();
        for region in boot.info.memory.usable() {
            for phys in [region.start, region.end - 1, (region.start + region.end) / 2] {
                let found = leaf(root, DIRECT_MAP_BASE + phys);
                // An `Unmapped` pageblock (an earlier test may have made
                // one) is absent on purpose.
                if crate::memory::frames::is_hidden(phys) {
                    crate::check!(found.is_none(), "hidden physical {:#x} is in the direct map", phys);
                    continue;
                }
                crate::check!(found.is_some(), "physical {:#x} is not in the direct map", phys);
                let Some(found) = found else { continue };
                let size = match found.size {
                    LeafSize::Giga => GIB,
                    LeafSize::Mega => MIB2,
                    LeafSize::Page => 4096,
                };
                crate::check_eq!(found.entry & ADDRESS & !(size - 1), phys & !(size - 1));
                crate::check_eq!(found.entry & NO_EXECUTE != 0, boot.features.nx);
                if !boot.features.gib_pages {
                    crate::check!(found.size != LeafSize::Giga, "a 1 GiB page without CPU support");
                }
            }
        }
        crate::check!(info.giga_pages + info.mega_pages > 0);
        // Low memory reads the same through the boot window and the direct map.
        let start_info = boot.info.start_info_phys;
        let via_map = phys_to_virt(info, start_info, 8).map(|v| {
            // SAFETY: the direct map covers these 8 bytes (checked).
            unsafe { (v as *const u64).read_volatile() }
        });
        crate::check_eq!(via_map.map(|v| v & 0xffff_ffff), Some(u64::from(boot::start_info::START_INFO_MAGIC)));
        Ok(())
    }
}
