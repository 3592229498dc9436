//! Address spaces built at run time: the page-table module.
//!
//! Owns every write to address-space tables: map and unmap of 4 KiB and
//! 2 MiB pages in user address spaces and in the kernel's mapping region.
//! The fixed kernel structures (the boot stub's tables, the direct map, the
//! ephemeral slot) and the direct-map backend's pageblock edits are written
//! where they are owned, through the same door ([`pte::write`]), each under
//! a window; `pte`'s module doc says why.
//! Its promises:
//! - tables come from the page-table freetype, zeroed by the allocator
//!   inside a window, so they are protected from the moment they exist;
//! - each `map` or `unmap` opens exactly one page-table write window,
//!   however many entries it writes (tables created, leaf written);
//! - `unmap` frees tables that become empty back to the allocator;
//! - bad input (unaligned address, outside the space's range, overlap,
//!   unmapping what is not mapped, a frame beyond the CPU's physical
//!   address width, a page-table frame as the target) is a typed error
//!   that changes nothing;
//! - the kernel space also refuses frames hidden from the direct map (the
//!   `Unmapped` freetype: a kernel mapping would show them in every
//!   address space) and mappings both writable and executable.
//!
//! Two kinds of space share the code:
//! - A user space ([`AddressSpace::new`]) owns PML4 slots 0-255; its
//!   kernel half copies the kernel's PML4 entries when it is created.
//! - The kernel space ([`kernel_space`]) maps kernel-only pages in one
//!   512 GiB region, [`KERNEL_MAP_BASE`] (PML4 slot 509). Its PDPT is
//!   made by [`init_kernel_space`] at boot, before any user space, and is
//!   never freed: the kernel's PML4 entries then never change, so every
//!   user space sees the kernel's mappings without being updated. Unmap
//!   flushes the page on this CPU (the only one running; SMP needs a
//!   shootdown here).

use super::direct_map::DIRECT_MAP_BASE;
use super::frames::{self, PAGE_TABLES};
use super::pte;
use super::pte::{ADDRESS, LARGE, PRESENT, USER, WRITABLE};
use crate::arch::{cpu, pks};
use core::ops::Range;
use ptalloc::{AllocError, AllocFlags, Pfn};

const USER_END: u64 = 1 << 47;

/// Start of the kernel's mapping region (PML4 slot 509; the direct map
/// starts at slot 256, the ephemeral slot is 510, the image 511).
pub const KERNEL_MAP_BASE: u64 = 0xffff_fe80_0000_0000;
/// Size of the kernel's mapping region: one PML4 slot.
pub const KERNEL_MAP_SIZE: u64 = 1 << 39;

/// Mapping sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    Large,
}

impl PageSize {
    fn bytes(self) -> u64 {
        match self {
            Self::Small => 4096,
            Self::Large => 2 << 20,
        }
    }
    /// Paging level of the leaf: 1 for a PT entry, 2 for a PD entry.
    fn leaf_level(self) -> u32 {
        match self {
            Self::Small => 1,
            Self::Large => 2,
        }
    }
}

/// How a page is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFlags {
    /// Writable.
    pub writable: bool,
    /// Executable.
    pub executable: bool,
}

/// Why a mapping change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// The address (or frame) is not aligned to the page size.
    Misaligned,
    /// The address is outside the space's range (the user half, or the
    /// kernel's mapping region).
    OutOfRange,
    /// Something is already mapped there.
    AlreadyMapped,
    /// Nothing is mapped there (at that size).
    NotMapped,
    /// No page allocator yet.
    NoAllocator,
    /// The frame is a page table (or page-table memory): a second mapping
    /// of it would bypass its protection.
    ProtectedFrame,
    /// The frame lies beyond the CPU's physical address width.
    BadFrame,
    /// Kernel space only: the frame is hidden from the direct map (an
    /// `Unmapped` pageblock); use the ephemeral slot to reach it.
    HiddenFrame,
    /// Kernel space only: a mapping may not be writable and executable.
    WritableExecutable,
    /// The kernel space is already set up.
    AlreadyInitialized,
    /// A page table could not be allocated.
    Alloc(AllocError),
}

/// Which part of the address space a space edits, and how its entries look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The user half, user-accessible.
    User,
    /// The kernel's mapping region, kernel-only.
    Kernel,
}

impl Kind {
    /// The virtual range map and unmap accept.
    fn range(self) -> Range<u64> {
        match self {
            Self::User => 0..USER_END,
            Self::Kernel => KERNEL_MAP_BASE..KERNEL_MAP_BASE + KERNEL_MAP_SIZE,
        }
    }

    /// Bits every entry of the space carries beyond present and writable.
    fn access_bits(self) -> u64 {
        match self {
            Self::User => USER,
            Self::Kernel => 0,
        }
    }

    /// How many levels below the root keep their tables however empty
    /// they become: none in a user space (the root itself is never freed);
    /// in the kernel space one, the region's PDPT, which every user space
    /// links to.
    fn kept_levels(self) -> usize {
        match self {
            Self::User => 0,
            Self::Kernel => 1,
        }
    }
}

/// An address space: a root table and the range of it this value edits.
/// A user space's root comes from the page-table freetype and its kernel
/// half mirrors the kernel's; the kernel space's root is the kernel's.
pub struct AddressSpace {
    root: u64,
    kind: Kind,
    /// Serialises map and unmap, which read, then write, the same tables.
    edits: spin::Mutex<()>,
}

/// The kernel space, once [`init_kernel_space`] has run.
static KERNEL_SPACE: spin::Once<AddressSpace> = spin::Once::new();

/// The kernel space: kernel-only mappings in [`KERNEL_MAP_BASE`]'s region,
/// visible in every address space. `None` before [`init_kernel_space`].
pub fn kernel_space() -> Option<&'static AddressSpace> {
    KERNEL_SPACE.get()
}

/// Sets up the kernel space: gives the kernel's root a PDPT for the
/// mapping region, from the page-table freetype. Call once at boot, after
/// the page allocator and before the first user space (which copies the
/// kernel's PML4 entries).
pub fn init_kernel_space() -> Result<&'static AddressSpace, PagingError> {
    if KERNEL_SPACE.is_completed() {
        return Err(PagingError::AlreadyInitialized);
    }
    let root = super::kernel_root();
    let slot = index(KERNEL_MAP_BASE, 4);
    if read(root, slot) & PRESENT != 0 {
        return Err(PagingError::AlreadyMapped);
    }
    let pdpt = new_table()?;
    {
        let window = pte::open();
        // The root is the boot stub's PML4: an early page table, reached
        // through its direct-map alias like the allocator's tables.
        write(&window, root, slot, pdpt | PRESENT | WRITABLE);
    }
    Ok(KERNEL_SPACE.call_once(|| AddressSpace {
        root,
        kind: Kind::Kernel,
        edits: spin::Mutex::new(()),
    }))
}

/// Most user address spaces alive at once.
pub const MAX_SPACES: usize = 64;

/// Roots of the live user address spaces, for the verification walk.
static LIVE: spin::Mutex<heapless::Vec<u64, MAX_SPACES>> = spin::Mutex::new(heapless::Vec::new());

/// Roots of every live user address space.
pub fn live_roots() -> heapless::Vec<u64, MAX_SPACES> {
    LIVE.lock().clone()
}

/// True if `phys` is page-table memory: a page-table-freetype pageblock or
/// an early page table.
pub(crate) fn is_page_table_memory(phys: u64) -> bool {
    let in_pt_pageblock = frames::allocator()
        .and_then(|a| a.frame_info(Pfn(phys / 4096)))
        .is_some_and(|info| info.pageblock_freetype == Some(PAGE_TABLES));
    in_pt_pageblock
        || super::EARLY_PAGE_TABLES
            .lock()
            .tables()
            .iter()
            .any(|t| t.phys == phys & ADDRESS)
}

fn table(phys: u64) -> *mut u64 {
    (DIRECT_MAP_BASE + phys) as *mut u64
}

/// Reads entry `index` of the table at `phys`: a table of a space this
/// module edits (from the page-table freetype) or the kernel's root.
fn read(phys: u64, index: u64) -> u64 {
    // SAFETY: both kinds of table are in RAM the direct map covers, mapped
    // readable (with the page-table protection, which only limits writes);
    // reads need no window.
    unsafe { table(phys).add(index as usize).read_volatile() }
}

/// Writes entry `index` of the table at `phys`, as for [`read`].
fn write(window: &pte::Window, phys: u64, index: u64, value: u64) {
    // SAFETY: as in `read`; the window makes the protected mapping
    // writable, and callers keep every translation the kernel relies on
    // (they only add or remove mappings of their own range).
    unsafe { pte::write(window, table(phys).add(index as usize), value) };
}

fn index(virt: u64, level: u32) -> u64 {
    (virt >> (12 + 9 * (level - 1))) & 0x1ff
}

fn new_table() -> Result<u64, PagingError> {
    let allocator = frames::allocator().ok_or(PagingError::NoAllocator)?;
    allocator
        .alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO)
        .map(Pfn::addr)
        .map_err(PagingError::Alloc)
}

fn free_table(phys: u64) {
    if let Some(allocator) = frames::allocator() {
        // A table this module allocated: freeing it cannot fail.
        let _ = allocator.free(0, Pfn(phys / 4096), 0);
    }
}

impl AddressSpace {
    /// A new, empty user address space. Its kernel half is the kernel's as
    /// it is now: create user spaces after [`init_kernel_space`].
    pub fn new() -> Result<Self, PagingError> {
        let mut live = LIVE.lock();
        if live.is_full() {
            return Err(PagingError::Alloc(AllocError::OutOfMemory));
        }
        let root = new_table()?;
        // Not full: checked above, under the same lock.
        let _ = live.push(root);
        drop(live);
        let kernel_root = super::kernel_root();
        let window = pte::open();
        for slot in 256..512 {
            write(&window, root, slot, read(kernel_root, slot));
        }
        Ok(Self {
            root,
            kind: Kind::User,
            edits: spin::Mutex::new(()),
        })
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// True for the kernel space.
    pub fn is_kernel(&self) -> bool {
        self.kind == Kind::Kernel
    }

    /// Checks `virt` for a page of `size`: aligned and inside the range.
    fn check_page(&self, virt: u64, size: PageSize) -> Result<(), PagingError> {
        if !virt.is_multiple_of(size.bytes()) {
            return Err(PagingError::Misaligned);
        }
        if !self.kind.range().contains(&virt) {
            return Err(PagingError::OutOfRange);
        }
        Ok(())
    }

    /// Checks a frame of `size` for `flags`: aligned, within the CPU's
    /// physical address width, not page-table memory, and for the kernel
    /// space, neither hidden from the direct map nor mapped W+X.
    fn check_frame(&self, phys: u64, size: PageSize, flags: MapFlags) -> Result<(), PagingError> {
        if !phys.is_multiple_of(size.bytes()) {
            return Err(PagingError::Misaligned);
        }
        if phys
            .checked_add(size.bytes())
            .is_none_or(|end| end > cpu::physical_address_limit())
        {
            return Err(PagingError::BadFrame);
        }
        let frames = (0..size.bytes() / 4096).map(|i| phys + i * 4096);
        if frames.clone().any(is_page_table_memory) {
            return Err(PagingError::ProtectedFrame);
        }
        if self.kind == Kind::Kernel {
            if flags.writable && flags.executable {
                return Err(PagingError::WritableExecutable);
            }
            if frames.into_iter().any(frames::is_hidden) {
                return Err(PagingError::HiddenFrame);
            }
        }
        Ok(())
    }

    /// Maps `phys` at `virt` with one page of `size`. One window for the
    /// whole operation; intermediate tables are allocated as needed.
    pub fn map(
        &self,
        virt: u64,
        phys: u64,
        size: PageSize,
        flags: MapFlags,
    ) -> Result<(), PagingError> {
        // Check before changing anything.
        self.check_page(virt, size)?;
        self.check_frame(phys, size, flags)?;
        let _edits = self.edits.lock();
        if self.translate(virt).is_some() {
            return Err(PagingError::AlreadyMapped);
        }
        let window = pte::open();
        // Tables made for this call, undone if a later step fails: (parent
        // table, slot in it, new child table).
        let mut created: [(u64, u64, u64); 3] = [(0, 0, 0); 3];
        let mut made = 0;
        let mut table = self.root;
        let mut failure = None;
        for level in (size.leaf_level() + 1..=4).rev() {
            let slot = index(virt, level);
            let entry = read(table, slot);
            if entry & PRESENT == 0 {
                let next = match new_table() {
                    Ok(next) => next,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
                let link = next | PRESENT | WRITABLE | self.kind.access_bits();
                write(&window, table, slot, link);
                created[made] = (table, slot, next);
                made += 1;
                table = next;
            } else if entry & LARGE != 0 {
                failure = Some(PagingError::AlreadyMapped);
                break;
            } else {
                table = entry & ADDRESS;
            }
        }
        // A large leaf would replace a table of small ones: refuse.
        if failure.is_none() && read(table, index(virt, size.leaf_level())) != 0 {
            failure = Some(PagingError::AlreadyMapped);
        }
        if let Some(error) = failure {
            for &(parent, slot, child) in created[..made].iter().rev() {
                write(&window, parent, slot, 0);
                free_table(child);
            }
            return Err(error);
        }
        let mut leaf = phys | PRESENT | self.kind.access_bits();
        if flags.writable {
            leaf |= WRITABLE;
        }
        if !flags.executable {
            leaf |= cpu::no_execute_bit();
        }
        if size == PageSize::Large {
            leaf |= LARGE;
        }
        write(&window, table, index(virt, size.leaf_level()), leaf);
        Ok(())
    }

    /// Unmaps the page of `size` at `virt` and returns its frame. Tables
    /// left empty are freed; one window for the whole operation.
    pub fn unmap(&self, virt: u64, size: PageSize) -> Result<u64, PagingError> {
        self.check_page(virt, size)?;
        let _edits = self.edits.lock();
        // The path of tables from the root to the leaf's table.
        let mut path = [(0u64, 0u64); 4];
        let mut table = self.root;
        let mut depth = 0;
        for level in (size.leaf_level() + 1..=4).rev() {
            let slot = index(virt, level);
            let entry = read(table, slot);
            if entry & PRESENT == 0 || entry & LARGE != 0 {
                return Err(PagingError::NotMapped);
            }
            path[depth] = (table, slot);
            depth += 1;
            table = entry & ADDRESS;
        }
        let slot = index(virt, size.leaf_level());
        let leaf = read(table, slot);
        let is_large = leaf & LARGE != 0;
        if leaf & PRESENT == 0 || (size == PageSize::Large) != is_large {
            return Err(PagingError::NotMapped);
        }
        let window = pte::open();
        write(&window, table, slot, 0);
        // Free tables that became empty, bottom up (never the root, nor
        // what the kind keeps).
        let mut child = table;
        let kept = self.kind.kept_levels();
        while depth > kept && (0..512).all(|i| read(child, i) == 0) {
            depth -= 1;
            let (parent, parent_slot) = path[depth];
            write(&window, parent, parent_slot, 0);
            free_table(child);
            child = parent;
        }
        // Kernel mappings are live in every space; user ones only in their
        // own (whose TLB entries a switch to it flushes).
        if self.kind == Kind::Kernel || cpu::read_cr3() & ADDRESS == self.root {
            // SAFETY: invalidating one translation is always safe.
            unsafe { x86::tlb::flush(virt as usize) };
        }
        Ok(leaf & ADDRESS)
    }

    /// The frame and leaf entry mapping `virt`, if any.
    pub fn translate(&self, virt: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = read(table, index(virt, level));
            if entry & PRESENT == 0 {
                return None;
            }
            if level == 1 || (level <= 3 && entry & LARGE != 0) {
                let span = 1u64 << (12 + 9 * (level - 1));
                return Some(((entry & ADDRESS & !(span - 1)) + virt % span, entry));
            }
            table = entry & ADDRESS;
        }
        None
    }
}

/// Frees every table below `table` (at `level`) in the user half, not the
/// frames the leaves map.
fn free_subtree(table: u64, level: u32) {
    if level == 1 {
        return;
    }
    let slots = if level == 4 { 0..256 } else { 0..512 };
    for slot in slots {
        let entry = read(table, slot);
        if entry & PRESENT != 0 && entry & LARGE == 0 {
            let child = entry & ADDRESS;
            free_subtree(child, level - 1);
            free_table(child);
        }
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // The kernel space lives in a static and is never dropped; its root
        // is the kernel's own.
        if self.kind == Kind::Kernel {
            return;
        }
        LIVE.lock().retain(|&root| root != self.root);
        // Whatever is still mapped: free the user half's tables, then the
        // root. The kernel half is shared and stays.
        free_subtree(self.root, 4);
        free_table(self.root);
    }
}

crate::kernel_test! {
    /// Map and unmap, and bad input refused without change.
    fn map_unmap_and_bad_input() -> TestResult {
        let space = AddressSpace::new().map_err(|e| {
            crate::testing::TestFailure::new(file!(), line!(), format_args!("{e:?}"))
        })?;
        let rw = MapFlags { writable: true, executable: false };
        let Some(frames) = frames::allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let (Ok(small), Ok(large)) = (
            frames.alloc(0, 0, ptalloc::Freetype::KERNEL, AllocFlags::empty()).map(Pfn::addr),
            frames.alloc(0, 9, ptalloc::Freetype::KERNEL, AllocFlags::empty()).map(Pfn::addr),
        ) else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no memory")));
        };
        let virt = 0x4000_0000;
        crate::check_eq!(space.map(virt + 1, small, PageSize::Small, rw), Err(PagingError::Misaligned));
        crate::check_eq!(space.map(USER_END, small, PageSize::Small, rw), Err(PagingError::OutOfRange));
        crate::check_eq!(space.map(virt, 1 << 52, PageSize::Small, rw), Err(PagingError::BadFrame));
        crate::check_eq!(space.unmap(virt, PageSize::Small), Err(PagingError::NotMapped));
        crate::check_eq!(space.map(virt, small, PageSize::Small, rw), Ok(()));
        crate::check_eq!(space.map(virt, large, PageSize::Small, rw), Err(PagingError::AlreadyMapped));
        crate::check_eq!(space.translate(virt + 8).map(|t| t.0), Some(small + 8));
        crate::check_eq!(space.unmap(virt, PageSize::Large), Err(PagingError::NotMapped));
        crate::check_eq!(space.map(virt + (2 << 20), large, PageSize::Large, rw), Ok(()));
        crate::check_eq!(space.translate(virt + (2 << 20) + 0x1234).map(|t| t.0), Some(large + 0x1234));
        crate::check_eq!(space.unmap(virt, PageSize::Small), Ok(small));
        crate::check_eq!(space.unmap(virt + (2 << 20), PageSize::Large), Ok(large));
        crate::check_eq!(space.translate(virt), None);
        // A large page over a table of small ones is refused.
        crate::check_eq!(space.map(virt + 0x1000, small, PageSize::Small, rw), Ok(()));
        crate::check_eq!(space.map(virt, large, PageSize::Large, rw), Err(PagingError::AlreadyMapped));
        crate::check_eq!(space.translate(virt + 0x1000).map(|t| t.0), Some(small));
        // Page tables cannot be mapped into user space.
        crate::check_eq!(space.map(virt + (4 << 20), space.root(), PageSize::Small, rw), Err(PagingError::ProtectedFrame));
        let early = super::EARLY_PAGE_TABLES.lock().tables()[0].phys;
        crate::check_eq!(space.map(virt + (4 << 20), early, PageSize::Small, rw), Err(PagingError::ProtectedFrame));
        let protecting = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
        crate::check!(!protecting || super::verify::verify().passed(), "the walk failed with a live user space");
        drop(space);
        crate::check_eq!(frames.free(0, Pfn(small / 4096), 0), Ok(()));
        crate::check_eq!(frames.free(0, Pfn(large / 4096), 9), Ok(()));
        Ok(())
    }
}

crate::kernel_test! {
    /// The kernel space: kernel-only 4 KiB and 2 MiB mappings, seen by a
    /// user space made afterwards, one window per operation, every table
    /// it made freed again (down to the region's PDPT), and bad input
    /// refused without change.
    fn kernel_space_map_unmap() -> TestResult {
        use crate::testing::TestFailure;
        let (Some(kernel), Some(frames)) = (kernel_space(), frames::allocator()) else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no kernel space")));
        };
        let (Ok(small), Ok(large)) = (
            frames.alloc(0, 0, ptalloc::Freetype::KERNEL, AllocFlags::ZERO).map(Pfn::addr),
            frames.alloc(0, 9, ptalloc::Freetype::KERNEL, AllocFlags::empty()).map(Pfn::addr),
        ) else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no memory")));
        };
        let result = check_kernel_space(kernel, small, large);
        // Whatever failed, leave the shared region as it was and give the
        // frames back (unmapping what is already unmapped is refused).
        let _ = kernel.unmap(KERNEL_TEST_VIRT, PageSize::Small);
        let _ = kernel.unmap(KERNEL_TEST_VIRT + (2 << 20), PageSize::Large);
        crate::check_eq!(frames.free(0, Pfn(small / 4096), 0), Ok(()));
        crate::check_eq!(frames.free(0, Pfn(large / 4096), 9), Ok(()));
        result
    }
}

/// Where `kernel_space_map_unmap` maps: a 2 MiB-aligned address in the
/// kernel region, its 4 KiB page here and its 2 MiB page right after.
const KERNEL_TEST_VIRT: u64 = KERNEL_MAP_BASE + (5 << 30);

/// The body of `kernel_space_map_unmap`, on frames it owns.
fn check_kernel_space(kernel: &AddressSpace, small: u64, large: u64) -> crate::testing::TestResult {
    use crate::testing::TestFailure;
    let Some(frames) = frames::allocator() else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no allocator"),
        ));
    };
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    let virt = KERNEL_TEST_VIRT;
    let large_virt = virt + (2 << 20);
    crate::check!(kernel.is_kernel());
    crate::check_eq!(
        kernel.map(virt + 8, small, PageSize::Small, rw),
        Err(PagingError::Misaligned)
    );
    crate::check_eq!(
        kernel.map(0x4000_0000, small, PageSize::Small, rw),
        Err(PagingError::OutOfRange)
    );
    crate::check_eq!(
        kernel.map(
            KERNEL_MAP_BASE + KERNEL_MAP_SIZE,
            small,
            PageSize::Small,
            rw
        ),
        Err(PagingError::OutOfRange)
    );
    crate::check_eq!(
        kernel.map(virt, cpu::physical_address_limit(), PageSize::Small, rw),
        Err(PagingError::BadFrame)
    );
    crate::check_eq!(
        kernel.map(virt, !0xfff_u64, PageSize::Small, rw),
        Err(PagingError::BadFrame)
    );
    crate::check_eq!(
        kernel.map(virt, kernel.root(), PageSize::Small, rw),
        Err(PagingError::ProtectedFrame)
    );
    let wx = MapFlags {
        writable: true,
        executable: true,
    };
    crate::check_eq!(
        kernel.map(virt, small, PageSize::Small, wx),
        Err(PagingError::WritableExecutable)
    );
    let hidden_type = ptalloc::Freetype {
        mobility: ptalloc::Mobility::Movable,
        protection: ptalloc::Protection::Unmapped,
    };
    if let Ok(hidden) = frames.alloc(0, 0, hidden_type, AllocFlags::empty()) {
        let refused = kernel.map(virt, hidden.addr(), PageSize::Small, rw);
        crate::check_eq!(frames.free(0, hidden, 0), Ok(()));
        crate::check_eq!(refused, Err(PagingError::HiddenFrame));
    }
    crate::check_eq!(
        kernel.unmap(virt, PageSize::Small),
        Err(PagingError::NotMapped)
    );
    crate::check!(
        kernel.translate(virt).is_none(),
        "refused maps changed the tables"
    );

    let before = frames.stats();
    let pkrs = || pks::current().map_or(0, |p| p.pkrs_writes());
    let mut windows = [0u64; 4];
    let start = pkrs();
    crate::check_eq!(kernel.map(virt, small, PageSize::Small, rw), Ok(()));
    windows[0] = pkrs() - start;
    let start = pkrs();
    crate::check_eq!(kernel.map(large_virt, large, PageSize::Large, rw), Ok(()));
    windows[1] = pkrs() - start;
    crate::check_eq!(
        kernel.map(virt, large, PageSize::Small, rw),
        Err(PagingError::AlreadyMapped)
    );
    let Some((_, leaf)) = kernel.translate(virt) else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("not mapped"),
        ));
    };
    crate::check!(leaf & USER == 0 && leaf & WRITABLE != 0, "leaf {:#x}", leaf);
    crate::check_eq!(
        kernel.translate(large_virt + 0x1234).map(|t| t.0),
        Some(large + 0x1234)
    );

    // The mapping is the frame: write through it, read through the direct
    // map.
    // SAFETY: `virt` maps `small`, a zeroed frame this test owns.
    unsafe { (virt as *mut u64).write_volatile(0x5eed) };
    // SAFETY: the direct map shows the same frame, readable.
    let seen = unsafe { ((DIRECT_MAP_BASE + small) as *const u64).read_volatile() };
    crate::check_eq!(seen, 0x5eed);

    // A user space made now shares the region; it cannot map there.
    let user = AddressSpace::new()
        .map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
    crate::check_eq!(user.translate(virt).map(|t| t.0), Some(small));
    crate::check_eq!(
        user.map(virt, small, PageSize::Small, rw),
        Err(PagingError::OutOfRange)
    );
    let protecting = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
    crate::check!(
        !protecting || super::verify::verify().passed(),
        "the walk failed with kernel mappings live"
    );
    drop(user);

    let start = pkrs();
    crate::check_eq!(kernel.unmap(virt, PageSize::Small), Ok(small));
    windows[2] = pkrs() - start;
    let start = pkrs();
    // This one empties the region's page directory, which goes back too.
    crate::check_eq!(kernel.unmap(large_virt, PageSize::Large), Ok(large));
    windows[3] = pkrs() - start;
    crate::check_eq!(kernel.translate(virt), None);
    crate::check!(
        super::walk::leaf(cpu::read_cr3(), virt).is_none(),
        "still in the live tables"
    );
    let pdpt = read(kernel.root(), index(KERNEL_MAP_BASE, 4));
    crate::check!(pdpt & PRESENT != 0, "the region's PDPT was freed");
    crate::check_eq!(read(pdpt & ADDRESS, index(virt, 3)), 0);
    // Every table made on the way (and the user space's root) was freed.
    let after = frames.stats();
    let made = after.allocations - before.allocations;
    crate::check!(made >= 3, "only {} tables made", made);
    crate::check_eq!(after.frees - before.frees, made);
    if pks::current().map(|p| p.mechanism()) == Some(pkeys::Mechanism::Pks) {
        crate::check_eq!(windows, [2; 4]);
    }
    Ok(())
}

crate::kernel_test! {
    /// The walk finds what it exists to find, and only that: planted in a
    /// user space, an alias of a page-table page and a table outside
    /// page-table memory; planted in the kernel space, a supervisor 4 KiB
    /// and a 2 MiB alias of page-table memory, reported without the
    /// protection and not with it. Everything planted is undone.
    fn walk_finds_planted_violations() -> TestResult {
        use crate::testing::TestFailure;
        if crate::boot_state().ptprot == pkeys::ProtectionPolicy::None {
            return Err(TestFailure::skipped("ptprot=none protects nothing"));
        }
        let Some(frames) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        // (frame, order): data, not a table, a page-table page, a 2 MiB
        // data block, a 2 MiB page-table block.
        let wanted = [
            (ptalloc::Freetype::KERNEL, 0),
            (ptalloc::Freetype::KERNEL, 0),
            (PAGE_TABLES, 0),
            (ptalloc::Freetype::KERNEL, 9),
            (PAGE_TABLES, 9),
        ];
        let mut held: heapless::Vec<(Pfn, u32), 5> = heapless::Vec::new();
        for (freetype, order) in wanted {
            match frames.alloc(0, order, freetype, AllocFlags::ZERO) {
                // Five slots for five requests.
                Ok(frame) => drop(held.push((frame, order))),
                Err(_) => break,
            }
        }
        let result = match held.as_slice() {
            &[(data, _), (not_a_table, _), (pt_page, _), (big, _), (pt_block, _)] => {
                plant_in_user_space(data.addr(), not_a_table.addr(), pt_page.addr())
                    .and_then(|()| plant_in_kernel_space(data.addr(), pt_page.addr(), big.addr(), pt_block.addr()))
            }
            _ => Err(TestFailure::new(file!(), line!(), format_args!("no memory"))),
        };
        let freed = held.iter().all(|&(frame, order)| frames.free(0, frame, order).is_ok());
        crate::check!(freed, "a frame could not be freed");
        result
    }
}

/// The table holding the leaf entry for `virt` at `leaf_level`, if the
/// path to it exists.
fn leaf_table(root: u64, virt: u64, leaf_level: u32) -> Option<u64> {
    let mut table = root;
    for level in (leaf_level + 1..=4).rev() {
        let entry = read(table, index(virt, level));
        if entry & PRESENT == 0 || entry & LARGE != 0 {
            return None;
        }
        table = entry & ADDRESS;
    }
    Some(table)
}

/// Rewrites one entry and walks `root`; puts the entry back before
/// returning the walk's violations.
fn violations_with(root: u64, table: u64, slot: u64, planted: u64) -> u64 {
    let original = read(table, slot);
    {
        let window = pte::open();
        write(&window, table, slot, planted);
    }
    let report = super::verify::verify_root(root);
    {
        let window = pte::open();
        write(&window, table, slot, original);
    }
    report.violations
}

/// `walk_finds_planted_violations` in a user space.
fn plant_in_user_space(data: u64, not_a_table: u64, pt_page: u64) -> crate::testing::TestResult {
    use crate::testing::TestFailure;
    let space = AddressSpace::new()
        .map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
    let virt = 0x4000_0000;
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    crate::check_eq!(space.map(virt, data, PageSize::Small, rw), Ok(()));
    let root = space.root();
    let (Some(pd), Some(pt)) = (leaf_table(root, virt, 2), leaf_table(root, virt, 1)) else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no path to the leaf"),
        ));
    };
    let clean = super::verify::verify_root(root).violations;
    let leaf = read(pt, index(virt, 1));
    // A user leaf is never protected, whatever its key.
    let alias = violations_with(root, pt, index(virt, 1), (leaf & !ADDRESS) | pt_page);
    let pd_entry = read(pd, index(virt, 2));
    let stray_table = violations_with(
        root,
        pd,
        index(virt, 2),
        (pd_entry & !ADDRESS) | not_a_table,
    );
    let restored = super::verify::verify_root(root).violations;
    crate::check_eq!(space.unmap(virt, PageSize::Small), Ok(data));
    crate::check_eq!((clean, alias, stray_table, restored), (0, 1, 1, 0));
    Ok(())
}

/// `walk_finds_planted_violations` in the kernel space: supervisor leaves,
/// where the key (or read-only) decides.
fn plant_in_kernel_space(
    data: u64,
    pt_page: u64,
    big: u64,
    pt_block: u64,
) -> crate::testing::TestResult {
    use crate::testing::TestFailure;
    let Some(kernel) = kernel_space() else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no kernel space"),
        ));
    };
    let mechanism = pks::current().map_or(pkeys::Mechanism::None, |p| p.mechanism());
    let with_protection = |entry: u64| match mechanism {
        pkeys::Mechanism::Pks => pkeys::key::pte_with_key(entry, pkeys::PAGE_TABLE_KEY),
        _ => entry & !WRITABLE,
    };
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    let root = kernel.root();
    let mut found = [[0u64; 2]; 2];
    for (case, (virt, frame, target, size)) in [
        (KERNEL_TEST_VIRT, data, pt_page, PageSize::Small),
        (KERNEL_TEST_VIRT + (2 << 20), big, pt_block, PageSize::Large),
    ]
    .into_iter()
    .enumerate()
    {
        crate::check_eq!(kernel.map(virt, frame, size, rw), Ok(()));
        let level = size.leaf_level();
        let Some(table) = leaf_table(root, virt, level) else {
            let _ = kernel.unmap(virt, size);
            return Err(TestFailure::new(
                file!(),
                line!(),
                format_args!("no path to the leaf"),
            ));
        };
        let slot = index(virt, level);
        let planted = (read(table, slot) & !ADDRESS) | target;
        found[case] = [
            violations_with(root, table, slot, planted),
            violations_with(root, table, slot, with_protection(planted)),
        ];
        crate::check_eq!(kernel.unmap(virt, size), Ok(frame));
    }
    // Unprotected: one violation; protected: none.
    crate::check_eq!(found, [[1, 0], [1, 0]]);
    Ok(())
}

crate::kernel_test! {
    /// Churn: allocate and free over 10,000 page-table pages (fewer on a
    /// small machine) by mapping one page in each of as many separate
    /// 2 MiB regions, then unmapping them. Measures flushes per 1,000
    /// page-table allocations (goal: at most 2), 2 MiB -> 4 KiB splits
    /// (goal: 0) and PKRS writes per map (goal: 2); the verification walk
    /// runs on the space at its peak.
    fn page_table_churn() -> TestResult {
        const REGIONS: u64 = 10_000;
        let Some(allocator) = frames::allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let space = AddressSpace::new().map_err(|e| {
            crate::testing::TestFailure::new(file!(), line!(), format_args!("{e:?}"))
        })?;
        let frame = allocator.alloc(0, 0, ptalloc::Freetype::KERNEL, AllocFlags::ZERO);
        crate::check!(frame.is_ok(), "{:?}", frame);
        let Ok(frame) = frame else { return Ok(()) };
        let before = allocator.stats();
        let free: u64 = ptalloc::Freetype::all().map(|ft| before.free_pages(ft)).sum();
        let regions = REGIONS.min(free * 3 / 4);
        let pkrs_before = pks::current().map_or(0, |p| p.pkrs_writes());
        let rw = MapFlags { writable: true, executable: false };
        let mut mapped = 0;
        let mut failure = None;
        while mapped < regions {
            if let Err(error) = space.map(mapped << 21, frame.addr(), PageSize::Small, rw) {
                failure = Some(error);
                break;
            }
            mapped += 1;
        }
        let pkrs_writes = pks::current().map_or(0, |p| p.pkrs_writes()) - pkrs_before;
        let at_peak = allocator.stats();
        let mechanism = pks::current().map(|p| p.mechanism());
        // The churned space at its peak: one page table per region.
        let verified = (mechanism != Some(pkeys::Mechanism::None)).then(|| {
            let walk = super::verify::verify_root(space.root());
            defmt::info!(
                "churn: verification walk at the peak: {=usize} page tables, {=u64} violations",
                walk.tables,
                walk.violations
            );
            walk
        });
        for region in 0..mapped {
            crate::check_eq!(space.unmap(region << 21, PageSize::Small), Ok(frame.addr()));
        }
        crate::check_eq!(allocator.free(0, frame, 0), Ok(()));
        crate::check_eq!(failure, None);
        let after = allocator.stats();
        let table_allocations = at_peak.allocations - before.allocations;
        let flushes = after.flushes_local - before.flushes_local;
        let splits_2m = after.splits_2m - before.splits_2m;
        let per_thousand_x100 = flushes * 100_000 / table_allocations.max(1);
        defmt::info!(
            "churn: {=u64} page-table pages allocated and freed, {=u64} flushes ({=u64}.{=u64:02} per 1,000), {=u64} 2M->4K splits, {=u64} PKRS writes per map",
            table_allocations,
            flushes,
            per_thousand_x100 / 100,
            per_thousand_x100 % 100,
            splits_2m,
            pkrs_writes / mapped.max(1)
        );
        crate::check!(table_allocations >= regions, "only {} tables", table_allocations);
        crate::check!(per_thousand_x100 <= 200, "{} flushes for {} tables", flushes, table_allocations);
        crate::check_eq!(splits_2m, 0);
        if let Some(walk) = verified {
            crate::check_eq!((walk.passed(), walk.violations), (true, 0));
            crate::check!(walk.tables as u64 > mapped, "the walk saw {} tables for {} regions", walk.tables, mapped);
        }
        if mechanism == Some(pkeys::Mechanism::Pks) {
            crate::check_eq!(pkrs_writes, 2 * mapped);
        }
        Ok(())
    }
}
