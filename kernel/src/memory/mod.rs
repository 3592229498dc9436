//! Memory: physical memory at boot, the direct map, the page allocator and page tables.
//!
//! Owns the boot window (the stub's mapping of physical [0, 1 GiB) at
//! `KERNEL_VIRT`, cut down to the image once the direct map exists), the
//! kernel image's extent and the list of early page tables, and holds the
//! memory subsystem: the direct map ([`direct_map`]), the page allocator
//! and its backend ([`frames`], [`backend`]), the ephemeral slot
//! ([`ephemeral`]), early-table reprotection ([`early`]), W^X for the
//! kernel image ([`image`]), the
//! verification walk ([`verify`]), kernel and user address spaces
//! ([`paging`]), direct-map TLB flushes ([`tlb`]), the one door to
//! page-table entries ([`pte`]) and the key-protected record of what is
//! page-table memory ([`sealed`]).

use boot::PhysMemory;
use boot::early_tables::{EarlyPageTables, RecordError};
use boot::layout::{KERNEL_PHYS, KERNEL_VIRT, boot_window_addr};
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

pub mod backend;
pub mod boot_tables;
pub mod direct_map;
pub mod early;
pub mod ephemeral;
pub mod frames;
pub mod image;
pub mod paging;
pub mod pte;
pub mod sealed;
pub mod tlb;
pub mod verify;
pub mod walk;

/// Reads physical memory: below 1 GiB through the boot window, elsewhere
/// through the direct map once it exists (page tables the allocator makes
/// can live anywhere in RAM).
pub struct KernelPhys;

impl PhysMemory for KernelPhys {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Option<()> {
        if BootWindow.read(phys, buf).is_some() {
            return Some(());
        }
        let virt = direct_map::phys_to_virt(direct_map::info()?, phys, buf.len() as u64)?;
        // Frames of `Unmapped` pageblocks are covered by the direct map's
        // ranges but absent from it: refuse rather than fault.
        let end = phys + buf.len().max(1) as u64 - 1;
        if frames::is_hidden(phys) || frames::is_hidden(end) {
            return None;
        }
        // SAFETY: the direct map covers the range (checked) and maps it
        // readable (not an `Unmapped` pageblock, checked); the bytes are
        // copied out, never referenced.
        unsafe { core::ptr::copy_nonoverlapping(virt as *const u8, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

/// Reads physical memory through the boot window.
pub struct BootWindow;

/// Set once the boot window is cut down to the kernel image.
static BOOT_WINDOW_NARROWED: AtomicBool = AtomicBool::new(false);

/// The physical range the boot window keeps once narrowed: the 2 MiB
/// pages holding the kernel image.
fn image_window() -> Range<u64> {
    let image = kernel_image_phys();
    let mib2 = 2 << 20;
    image.start / mib2 * mib2..image.end.div_ceil(mib2) * mib2
}

/// Cuts the boot window down to the kernel image. Until now it mapped all
/// of physical [0, 1 GiB) at `KERNEL_VIRT` with 2 MiB pages: once page
/// tables come from the allocator anywhere in RAM, that is a second,
/// unprotected alias of them. The direct map covers RAM from here on.
pub fn narrow_boot_window() {
    let pd = boot_stub_table(boot::TableLevel::Pd);
    let keep = image_window();
    let pd = (KERNEL_VIRT + pd) as *mut u64;
    pte::with_window(|window| {
        for slot in 0..512u64 {
            let start = slot << 21;
            if !(keep.start <= start && start < keep.end) {
                // SAFETY: the boot stub's page directory (in the image, mapped
                // by the image's own entries, which stay); clearing an entry
                // only removes a mapping of memory the kernel reaches through
                // the direct map from now on.
                unsafe { pte::write(window, pd.add(slot as usize), 0) };
            }
        }
    });
    BOOT_WINDOW_NARROWED.store(true, Ordering::Release);
    tlb::flush_all();
}

impl PhysMemory for BootWindow {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Option<()> {
        let virt = boot_window_addr(phys, buf.len() as u64)?;
        if BOOT_WINDOW_NARROWED.load(Ordering::Acquire) {
            let keep = image_window();
            let end = phys.checked_add(buf.len() as u64)?;
            if !(keep.start <= phys && end <= keep.end) {
                return None;
            }
        }
        // SAFETY: the boot stub maps all of [0, BOOT_WINDOW_SIZE) readable at
        // KERNEL_VIRT, and boot_window_addr checked that the range lies
        // inside it. The bytes are copied out (never referenced), so memory
        // that changes underneath, such as the live page tables, is fine.
        unsafe { core::ptr::copy_nonoverlapping(virt as *const u8, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

unsafe extern "C" {
    static __kernel_virt_start: u8;
    static __kernel_virt_end: u8;
}

/// Virtual extent of the kernel image (text to bss, stacks included).
pub fn kernel_image_range() -> Range<u64> {
    (&raw const __kernel_virt_start) as u64..(&raw const __kernel_virt_end) as u64
}

/// Physical extent of the whole kernel image, boot stub included.
pub fn kernel_image_phys() -> Range<u64> {
    KERNEL_PHYS..kernel_image_range().end - KERNEL_VIRT
}

/// Page tables made before the page-table allocator; reprotected later.
pub static EARLY_PAGE_TABLES: Mutex<EarlyPageTables> = Mutex::new(EarlyPageTables::new());

/// Physical address of the boot stub's table at `level` (it made one of
/// each; recorded before anything asks).
fn boot_stub_table(level: boot::TableLevel) -> u64 {
    let found = EARLY_PAGE_TABLES
        .lock()
        .tables()
        .iter()
        .find(|t| t.origin == boot::early_tables::TableOrigin::BootStub && t.level == level)
        .map(|t| t.phys);
    match found {
        Some(phys) => phys,
        None => panic!("the boot stub's {level:?} is not among the early page tables"),
    }
}

/// Physical address of the kernel's root table: the boot stub's PML4,
/// whichever address space CR3 holds now.
pub fn kernel_root() -> u64 {
    boot_stub_table(boot::TableLevel::Pml4)
}

/// Records the boot stub's tables. Returns how many were recorded.
pub fn record_boot_stub_tables() -> Result<usize, RecordError> {
    let mut list = EARLY_PAGE_TABLES.lock();
    for table in boot::entry::boot_stub_tables() {
        list.record(table)?;
    }
    Ok(list.len())
}

crate::kernel_test! {
    /// The boot stub's four tables are recorded, the PML4 is the live root,
    /// and the identity mapping is gone (so null dereferences fault).
    fn boot_stub_tables_recorded() -> TestResult {
        use boot::early_tables::{TableLevel, TableOrigin};
        let list = EARLY_PAGE_TABLES.lock();
        let stub = |t: &&boot::EarlyPageTable| t.origin == TableOrigin::BootStub;
        let tables: heapless::Vec<_, 8> = list.tables().iter().filter(stub).copied().collect();
        crate::check_eq!(tables.len(), 4);
        let pml4 = tables.iter().find(|t| t.level == TableLevel::Pml4);
        crate::check_eq!(pml4.map(|t| t.phys), Some(crate::arch::cpu::read_cr3() & !0xfff));
        let image = kernel_image_phys();
        crate::check!(tables.iter().all(|t| image.contains(&t.phys)), "boot tables lie outside the image");
        let mut identity_entry = [0xffu8; 8];
        let read = BootWindow.read(crate::arch::cpu::read_cr3() & !0xfff, &mut identity_entry);
        crate::check_eq!((read, identity_entry), (Some(()), [0u8; 8]));
        Ok(())
    }
}

crate::kernel_test! {
    /// The parsed memory map keeps its promises on real firmware output.
    fn memory_map_is_clean() -> TestResult {
        let regions = crate::boot_state().info.memory.regions();
        crate::check!(!regions.is_empty());
        for pair in regions.windows(2) {
            crate::check!(pair[0].end <= pair[1].start, "regions overlap or are unsorted: {:?}", pair);
            crate::check!(
                pair[0].end != pair[1].start || pair[0].kind != pair[1].kind,
                "adjacent regions of one kind were not merged: {:?}",
                pair
            );
        }
        crate::check!(regions.iter().all(|r| !r.is_empty()));
        let image = kernel_image_phys();
        let in_usable = crate::boot_state().info.memory.usable().any(|r| r.start <= image.start && image.end <= r.end);
        crate::check!(in_usable, "the kernel image is not inside usable RAM");
        Ok(())
    }
}

crate::kernel_test! {
    /// The boot stack keeps at least half its room free (an overflow would
    /// hit the guard page and end the machine).
    fn boot_stack_has_headroom() -> TestResult {
        let used = boot::entry::boot_stack_high_water();
        crate::check!(
            used < boot::entry::BOOT_STACK_SIZE / 2,
            "boot stack high-water mark {} of {} bytes",
            used,
            boot::entry::BOOT_STACK_SIZE
        );
        Ok(())
    }
}
