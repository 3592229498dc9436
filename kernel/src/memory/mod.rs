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
//! ([`paging`]), moving movable user frames for compaction ([`movable`]),
//! direct-map TLB flushes ([`tlb`]), pictures of the pageblock map
//! ([`memmap`]), the one door to
//! page-table entries ([`pte`]) and the key-protected record of what is
//! page-table memory ([`sealed`]).

use crate::sync::Mutex;
use boot::PhysMemory;
use boot::early_tables::{EarlyPageTables, RecordError};
use boot::layout::{IMAGE_PAGE_TABLES, KERNEL_PHYS, KERNEL_VIRT, boot_window_addr};
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

pub mod backend;
pub mod boot_tables;
pub mod direct_map;
pub mod early;
pub mod ephemeral;
pub mod frame_array;
pub mod frames;
pub mod image;
pub mod memmap;
pub mod movable;
pub mod paging;
pub mod pte;
pub mod sealed;
pub mod tlb;
pub mod verify;
pub mod walk;

mod concurrent_tests;
mod cross_cpu_tests;
mod held_frames;

/// What memory bring-up did, for the boot report.
pub struct MemoryState {
    /// What the direct map covers.
    pub direct_map: direct_map::DirectMapInfo,
    /// The flush-limit measurement (`None` under `flushlimit=N`).
    pub flush_calibration: Option<tlb::Calibration>,
    /// How the page allocator was set up.
    pub frames: frames::FramesInfo,
    /// What reprotecting the early page tables did.
    pub reprotected: early::Reprotected,
    /// Pages of sealed records ([`sealed`]).
    pub sealed_pages: usize,
    /// The kernel image's W^X layout.
    pub image: image::ImageProtection,
}

/// Why memory bring-up stopped.
#[derive(Debug)]
pub enum BringUpError {
    /// It ran already: its steps rebuild what the kernel runs on.
    AlreadyUp,
    /// Too many early page tables to record.
    EarlyTables(RecordError),
    /// The direct map could not be built.
    DirectMap(direct_map::DirectMapError),
    /// The page allocator could not be set up.
    Frames(frames::FramesError),
    /// The early page tables could not be reprotected.
    Reprotect(early::ReprotectError),
    /// The sealed records' pages could not be keyed.
    Seal(boot_tables::KeyError),
    /// The kernel space's region could not be made.
    KernelSpace(paging::PagingError),
    /// The image could not be made W^X.
    Image(image::ImageError),
}

impl BringUpError {
    /// True if the machine has too little memory to boot (a documented
    /// exit status of its own, not a kernel failure).
    pub fn is_not_enough_memory(&self) -> bool {
        matches!(
            self,
            Self::Frames(frames::FramesError::NotEnoughMemory { .. })
        )
    }
}

impl core::fmt::Display for BringUpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AlreadyUp => write!(f, "memory bring-up ran twice"),
            Self::EarlyTables(error) => write!(f, "cannot record the early page tables: {error:?}"),
            Self::DirectMap(error) => write!(f, "cannot build the direct map: {error:?}"),
            Self::Frames(error @ frames::FramesError::NotEnoughMemory { .. }) => {
                write!(f, "{error}")
            }
            Self::Frames(error) => write!(f, "cannot set up the page allocator: {error}"),
            Self::Reprotect(error) => write!(f, "cannot reprotect the early page tables: {error}"),
            Self::Seal(error) => write!(f, "cannot seal the page-table records: {error:?}"),
            Self::KernelSpace(error) => write!(f, "no kernel mapping region: {error:?}"),
            Self::Image(error) => write!(f, "cannot make the kernel image W^X: {error}"),
        }
    }
}

static BROUGHT_UP: AtomicBool = AtomicBool::new(false);

/// Brings memory up, once, at boot, in this order: records the boot
/// stub's tables, builds the direct map, measures the flush limit (before
/// the first conversion flushes anything), builds the ephemeral slot, sets
/// up the page allocator (with [`movable::USER_FRAMES`] as the owner
/// compaction asks to move movable frames), cuts the boot window down to
/// the image, applies `inject=`, reprotects the early page tables, gives
/// the kernel space its PDPT (before any user space, which copies the
/// kernel's PML4 entries), makes the image W^X, and seals the records of
/// what is page-table memory. Its steps are private to `memory`: run
/// again they would rebuild what the kernel runs on, so a second call is
/// refused.
pub fn bring_up(
    memory: &boot::memory_map::MemoryMap,
    features: &crate::arch::cpu::CpuFeatures,
    config: &boot::KernelConfig,
) -> Result<MemoryState, BringUpError> {
    if BROUGHT_UP.swap(true, Ordering::AcqRel) {
        return Err(BringUpError::AlreadyUp);
    }
    record_boot_stub_tables().map_err(BringUpError::EarlyTables)?;
    let policy = frames::PtPolicy::from_config(config);
    let gib_pages = features.gib_pages && policy.gib_pages();
    let direct_map =
        direct_map::build(memory, gib_pages, features.nx).map_err(BringUpError::DirectMap)?;
    let flush_calibration = tlb::init(config.flush_limit, &direct_map);
    ephemeral::init().map_err(BringUpError::EarlyTables)?;
    let frames = frames::init(
        memory,
        &direct_map,
        features.nx,
        policy,
        &movable::USER_FRAMES,
    )
    .map_err(BringUpError::Frames)?;
    narrow_boot_window();
    if config.inject_empty_reserve && frames::inject_empty_reserve(true) {
        crate::println!("fault injection: the split reserve gives nothing to direct-map splits");
    }
    let reprotected = early::reprotect().map_err(BringUpError::Reprotect)?;
    paging::init_kernel_space().map_err(BringUpError::KernelSpace)?;
    // The image's direct-map alias turns read-only before the records are
    // sealed, so they never have a writable alias without their key.
    let image = image::protect().map_err(BringUpError::Image)?;
    let sealed_pages = sealed::seal(config.protect.meta).map_err(BringUpError::Seal)?;
    Ok(MemoryState {
        direct_map,
        flush_calibration,
        frames,
        reprotected,
        sealed_pages,
        image,
    })
}

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
fn narrow_boot_window() {
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
            // The image itself, not the 2 MiB pages the window keeps: the
            // image's W^X step unmaps the rest of them, which is allocator
            // memory (a frame there is read through the direct map).
            let keep = kernel_image_phys();
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

// The minimum memory's image budget (`boot::layout::MIN_MEMORY_IMAGE_MAX`)
// counts the allocator's metadata right above the image, at this size.
const _: () =
    assert!(ptalloc::METADATA_BYTES_PER_FRAME as u64 == boot::layout::METADATA_BYTES_PER_FRAME);

/// Page tables made before the page-table allocator; reprotected later.
pub static EARLY_PAGE_TABLES: Mutex<EarlyPageTables> = Mutex::new(EarlyPageTables::new());

/// Physical addresses of the boot stub's image page tables, the i-th
/// mapping the i-th 2 MiB of the image's place (recorded in that order).
fn boot_stub_image_tables() -> [u64; IMAGE_PAGE_TABLES] {
    let list = EARLY_PAGE_TABLES.lock();
    let mut found = list
        .tables()
        .iter()
        .filter(|t| t.origin == boot::early_tables::TableOrigin::BootStub)
        .filter(|t| t.level == boot::TableLevel::Pt)
        .map(|t| t.phys);
    core::array::from_fn(|i| match found.next() {
        Some(phys) => phys,
        None => panic!("the boot stub's image page table {i} is not among the early page tables"),
    })
}

/// Physical address of the boot stub's table at `level`, one of each above
/// the page tables (recorded before anything asks).
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
fn record_boot_stub_tables() -> Result<usize, RecordError> {
    let mut list = EARLY_PAGE_TABLES.lock();
    for table in boot::entry::boot_stub_tables() {
        list.record(table)?;
    }
    Ok(list.len())
}

crate::kernel_test! {
    /// The boot stub's tables are recorded (PML4, high PDPT, PD and one
    /// page table per 2 MiB of the image's place, consecutive), the PML4 is
    /// the live root, the PD links each image table whose 2 MiB the image
    /// reaches and no other, every one of them carries the page-table
    /// protection on both its aliases, and the identity mapping is gone (so
    /// null dereferences fault).
    fn boot_stub_tables_recorded() -> TestResult {
        use boot::early_tables::{TableLevel, TableOrigin};
        use pkeys::Mechanism;
        use pte::{ADDRESS, PRESENT, WRITABLE};
        let list = EARLY_PAGE_TABLES.lock().clone();
        let stub = |t: &&boot::EarlyPageTable| t.origin == TableOrigin::BootStub;
        let tables: heapless::Vec<_, 8> = list.tables().iter().filter(stub).copied().collect();
        crate::check_eq!(tables.len(), 3 + IMAGE_PAGE_TABLES);
        let root = crate::arch::cpu::read_cr3() & !0xfff;
        let pml4 = tables.iter().find(|t| t.level == TableLevel::Pml4);
        crate::check_eq!(pml4.map(|t| t.phys), Some(root));
        let image = kernel_image_phys();
        crate::check!(tables.iter().all(|t| image.contains(&t.phys)), "boot tables lie outside the image");

        let image_tables = boot_stub_image_tables();
        let first = image_tables[0];
        for (i, &table) in image_tables.iter().enumerate() {
            crate::check_eq!(table, first + i as u64 * 4096, "the image tables are not consecutive");
            let place = KERNEL_PHYS + (i as u64) * (2 << 20);
            let link = walk::entry_at(root, KERNEL_VIRT + place, 2).map(|(e, _)| e);
            if image_window().contains(&place) {
                let linked = link.map(|e| e & (ADDRESS | PRESENT)) == Some(table | PRESENT);
                crate::check!(linked, "image table {} is not linked: {:?}", i, link);
            } else {
                crate::check!(link == Some(0), "image table {} is linked past the image: {:?}", i, link);
            }
        }

        let mechanism = crate::arch::pks::current().map_or(Mechanism::None, |p| p.mechanism());
        for table in &tables {
            for alias in [KERNEL_VIRT + table.phys, direct_map::DIRECT_MAP_BASE + table.phys] {
                let entry = walk::leaf(root, alias).map(|l| l.entry);
                let protected = match mechanism {
                    Mechanism::Pks => entry.map(pkeys::key::pte_key) == Some(pkeys::PAGE_TABLE_KEY),
                    Mechanism::WriteProtect => entry.is_some_and(|e| e & WRITABLE == 0),
                    Mechanism::None => true,
                };
                crate::check!(protected, "the {:?} at {:#x} is unprotected at {:#x}: {:?}", table.level, table.phys, alias, entry);
            }
        }

        let mut identity_entry = [0xffu8; 8];
        let read = BootWindow.read(root, &mut identity_entry);
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

crate::kernel_test! {
    /// Memory bring-up runs once: a second call (which would zero the
    /// allocator's live metadata and rebuild the direct map) is refused.
    fn memory_bring_up_runs_once() -> TestResult {
        let boot = crate::boot_state();
        let again = bring_up(&boot.info.memory, &boot.features, &boot.config);
        crate::check!(matches!(again, Err(BringUpError::AlreadyUp)), "{:?}", again.err());
        Ok(())
    }
}
