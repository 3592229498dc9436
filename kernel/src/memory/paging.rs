//! Address spaces built at run time: the page-table module.
//!
//! Owns every write to address-space tables: map and unmap of 4 KiB and
//! 2 MiB pages in user address spaces and in the kernel's mapping region.
//! The fixed kernel structures (the boot stub's tables, the direct map, the
//! ephemeral slot) and the direct-map backend's pageblock edits are written
//! where they are owned, through the same door ([`pte::write`]), each under
//! a window; `pte`'s module doc says why.
//! Its promises:
//! - tables come from the page-table freetype, so they are protected from
//!   the moment they exist, and are zeroed inside a window before they
//!   are linked;
//! - each `map` or `unmap` opens exactly one page-table write window,
//!   however many entries it writes (tables zeroed and linked, leaf
//!   written), and only around those writes: tables are allocated before
//!   it opens and freed after it closes;
//! - tables go back to the allocator empty (`unmap` frees the tables it
//!   empties; dropping a space empties each table first; a failed `map`
//!   frees tables it never linked), are zeroed again before use, and are
//!   wiped by the allocator before they leave page-table memory (with
//!   their pageblock, or alone for a single page of the allocator's
//!   fallback); a root is never freed while CR3 holds it;
//! - a mapping holds its frame: `map` takes an owned
//!   [`frames::Frame`](super::frames::Frame), which only the allocator
//!   makes (never of page-table memory), and `unmap` hands it back, so no
//!   safe code can map an arbitrary physical address, a free frame or a
//!   page table, or free a frame while it is mapped; dropping a space
//!   frees the frames it still maps. Device memory has a typed path of its
//!   own: a [`DeviceFrame`] names a page that is neither RAM (no usable
//!   region, nothing the direct map covers) nor page-table memory, and
//!   only the kernel space maps one ([`AddressSpace::map_device`],
//!   uncached, never executable); `unmap` refuses a device leaf, so no
//!   device page ever comes back as an owned `Frame` the allocator would
//!   take;
//! - the AP trampoline's identity mapping ([`IdentityPage`]) is the one
//!   mapping in the kernel root's user half: a read-execute 4 KiB page
//!   below 1 MiB that is not allocator memory, with its three tables from
//!   the page-table freetype (protected, so never an untracked early
//!   table), torn down and its tables freed before anything else runs;
//! - a movable 4 KiB frame mapped in a user space is recorded in the
//!   reverse map ([`rmap`]: which space maps it, where), from the `map`
//!   that links it to the `unmap` or space drop that ends the mapping;
//!   compaction (`memory::movable`) moves such a frame with
//!   [`LockedRmap::repoint`], which copies it, rewrites its one leaf in one
//!   window and flushes the old translation. A recorded leaf is read and
//!   cleared only under the reverse map's lock (unmap, drop), so a move
//!   and an unmap never cross: unmap hands back the frame the leaf names
//!   now, and dropping the space frees that one, never the old frame;
//! - bad input (unaligned address, outside the space's range, overlap,
//!   unmapping what is not mapped, a block of neither page size) is a
//!   typed error that changes nothing and hands the frame back; the
//!   physical-width and page-table-memory checks stay as defence in depth;
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
//!
//! A third kind, [`explicit::VSpace`], is seL4's: its user links every
//! table, and its frames are borrowed, so there "a mapping holds its
//! frame" is the object layer's duty; its module doc says what it keeps.

use super::direct_map::DIRECT_MAP_BASE;
use super::frames::{self, Frame, PAGE_TABLES};
use super::pte;
use super::pte::{ADDRESS, LARGE, PRESENT, USER, WRITABLE};
use super::tlb::Reach;
use crate::arch::cpu;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use ptalloc::{AllocError, AllocFlags, Pfn};
pub use rmap::UserMapping;
use shootdown::LoadedOn;

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
    /// The frame order a page of this size maps.
    fn order(self) -> u32 {
        match self {
            Self::Small => 0,
            Self::Large => 9,
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
    /// The frame's block is neither 4 KiB (order 0) nor 2 MiB (order 9).
    FrameSize,
    /// A page table could not be allocated.
    Alloc(AllocError),
    /// Not a device page: RAM, covered by the direct map, or page-table
    /// memory ([`DeviceFrame::new`]); or, for `unmap`, a device mapping,
    /// which never becomes an owned frame.
    NotDevice,
}

/// Page-level cache disable and write-through: a device mapping.
const CACHE_DISABLE: u64 = (1 << 4) | (1 << 3);

/// A 4 KiB page of device memory (MMIO): not RAM by the boot memory map,
/// outside the direct map, not page-table memory. The only way to map a
/// physical address that no allocator handed out, and only into the
/// kernel space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFrame(u64);

impl DeviceFrame {
    /// Checks `phys` (4 KiB aligned) against the memory map and the
    /// direct map: RAM of any kind is refused, so safe code still cannot
    /// map arbitrary RAM through this door.
    pub fn new(phys: u64, memory: &boot::memory_map::MemoryMap) -> Result<Self, PagingError> {
        if !phys.is_multiple_of(4096) {
            return Err(PagingError::Misaligned);
        }
        let end = phys.checked_add(4096).ok_or(PagingError::BadFrame)?;
        if end > cpu::physical_address_limit() {
            return Err(PagingError::BadFrame);
        }
        let in_ram = memory.usable().any(|r| r.start < end && phys < r.end);
        let in_direct_map = super::direct_map::info()
            .is_some_and(|info| info.ranges.iter().any(|r| r.start < end && phys < r.end));
        if in_ram || in_direct_map || page_table_memory_in(phys, 4096).is_some() {
            return Err(PagingError::NotDevice);
        }
        Ok(Self(phys))
    }

    /// The physical address.
    pub fn addr(&self) -> u64 {
        self.0
    }
}

/// A refused [`AddressSpace::map`]: why, and the frame, handed back.
#[derive(Debug)]
pub struct MapError {
    /// Why.
    pub error: PagingError,
    /// The frame the call was given.
    pub frame: Frame,
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
    /// Its slot in [`LIVE`] and [`LOADED`] (a user space; 0, unused, for
    /// the kernel space, which every CPU has loaded).
    slot: usize,
    /// Serialises map and unmap, which read, then write, the same tables.
    edits: crate::sync::Mutex<()>,
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
pub(super) fn init_kernel_space() -> Result<&'static AddressSpace, PagingError> {
    if KERNEL_SPACE.is_completed() {
        return Err(PagingError::AlreadyInitialized);
    }
    let root = super::kernel_root();
    let slot = index(KERNEL_MAP_BASE, 4);
    if read(root, slot) & PRESENT != 0 {
        return Err(PagingError::AlreadyMapped);
    }
    let pdpt = new_table()?;
    // The root is the boot stub's PML4: an early page table, reached
    // through its direct-map alias like the allocator's tables.
    pte::with_window(|window| write(window, root, slot, pdpt | PRESENT | WRITABLE));
    Ok(KERNEL_SPACE.call_once(|| AddressSpace {
        root,
        kind: Kind::Kernel,
        slot: 0,
        edits: crate::sync::Mutex::new(()),
    }))
}

/// The reverse map of movable user frames ([`rmap`]).
///
/// Lock order: a space's `edits`, then this. `map` takes it after its
/// window, to record; `unmap` before it reads the leaf, until the leaf is
/// cleared and forgotten; a dying space to forget its frames before it
/// reads its leaves. None of them allocates while holding it. Compaction
/// ([`try_lock_rmap`]) runs inside page-table allocations, which `map`
/// makes while holding a space's `edits`: it takes this lock only by
/// trying (never waits), and not `edits`, so it cannot deadlock with them.
/// Its shootdown round, made while holding this lock, cannot either: a
/// CPU waiting for this lock answers it (`crate::sync`).
static RMAP: crate::sync::Mutex<rmap::Rmap> = crate::sync::Mutex::new(rmap::Rmap::new());

/// The reverse map, held: the one way to repoint a user leaf outside
/// `map` and `unmap` (compaction's move), and proof that no unmap reads
/// or clears a recorded leaf meanwhile.
pub(super) struct LockedRmap(crate::sync::MutexGuard<'static, rmap::Rmap>);

/// The reverse map, if nobody holds it. Never waits: compaction calls it
/// from inside an allocation whose caller may hold it.
pub(super) fn try_lock_rmap() -> Option<LockedRmap> {
    RMAP.try_lock().map(LockedRmap)
}

/// What the reverse map holds now: (frames recorded, movable mappings
/// left out because it was full). Waits for the lock: not for compaction.
pub fn reverse_map_counts() -> (usize, u64) {
    let rmap = RMAP.lock();
    (rmap.len(), rmap.untracked())
}

/// Why a recorded frame was not moved. Nothing changed: the leaf still
/// maps the old frame, and the record still names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RepointError {
    /// The reverse map does not record the frame.
    NotRecorded,
    /// The record is pinned (the frame was recorded twice).
    Pinned,
    /// The space's leaf does not map the frame with a 4 KiB page (a broken
    /// invariant: recorded leaves change only under the lock).
    LeafMismatch,
    /// The destination is page-table memory, or beyond the CPU's physical
    /// address width (the allocator's metadata was tampered with).
    BadDestination,
    /// The copy could not be made (the ephemeral slot was busy).
    CopyFailed,
}

/// How the old translation of a repointed leaf went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flushed {
    /// The space is loaded on some CPU: one flush of the page there
    /// (INVLPG here, a shootdown round for the others).
    Loaded,
    /// The space is loaded nowhere: its translations went with the CR3
    /// switches away from it (no PCID), and a switch back starts empty.
    NotLoaded,
}

impl LockedRmap {
    /// Where the frame at `phys` is mapped, if recorded.
    pub(super) fn get(&self, phys: u64) -> Option<UserMapping> {
        self.0.get(phys)
    }

    /// Moves the recorded mapping of the 4 KiB frame `from` to `to`: checks
    /// the leaf and the destination; makes the leaf non-present and
    /// flushes it on every CPU that has the space loaded, so that no write
    /// to `from` can land after the copy starts; runs `copy(from, to)`
    /// (physical addresses; false if it could not copy, and the old leaf
    /// comes back); then writes the leaf for `to`, with every other bit
    /// kept, and makes the record name `to`. From then on `unmap` hands
    /// back `to`, and dropping the space frees `to`. A user access to the
    /// page meanwhile faults (no user mode yet; its fault handler will
    /// have to wait for the move).
    pub(super) fn repoint(
        &mut self,
        from: Pfn,
        to: Pfn,
        copy: impl FnOnce(u64, u64) -> bool,
    ) -> Result<Flushed, RepointError> {
        let mapping = self.0.get(from.addr()).ok_or(RepointError::NotRecorded)?;
        if mapping.pinned {
            return Err(RepointError::Pinned);
        }
        let (root, virt) = (mapping.root(), mapping.virt);
        let (table, leaf) = user_leaf(root, virt).ok_or(RepointError::LeafMismatch)?;
        if leaf & ADDRESS != from.addr() {
            return Err(RepointError::LeafMismatch);
        }
        // A recorded space is live until its drop forgets it (under this
        // lock), so it has a slot.
        let slot = slot_of(root).ok_or(RepointError::LeafMismatch)?;
        let to_phys = to.addr();
        if page_table_memory_in(to_phys, 4096).is_some()
            || to_phys + 4096 > cpu::physical_address_limit()
        {
            return Err(RepointError::BadDestination);
        }
        let slot_index = index(virt, 1);
        pte::with_window(|window| write(window, table, slot_index, leaf & !PRESENT));
        let loaded = LOADED[slot].cpus();
        super::tlb::flush_pages(&[virt], Reach::LoadedOn(&LOADED[slot]));
        if !copy(from.addr(), to_phys) {
            // Making it present again needs no flush.
            pte::with_window(|window| write(window, table, slot_index, leaf));
            return Err(RepointError::CopyFailed);
        }
        pte::with_window(|window| write(window, table, slot_index, (leaf & !ADDRESS) | to_phys));
        self.0.rekey(from, to);
        Ok(if loaded.is_empty() {
            Flushed::NotLoaded
        } else {
            Flushed::Loaded
        })
    }
}

/// The page table holding the 4 KiB leaf for `virt` in the user space
/// rooted at `root`, and the leaf; `None` if the path is not there, ends
/// in a large page, or the leaf is not present.
fn user_leaf(root: u64, virt: u64) -> Option<(u64, u64)> {
    if virt >= USER_END {
        return None;
    }
    let mut table = root;
    for level in (2..=4).rev() {
        let entry = read(table, index(virt, level));
        if entry & PRESENT == 0 || entry & LARGE != 0 {
            return None;
        }
        table = entry & ADDRESS;
    }
    let leaf = read(table, index(virt, 1));
    (leaf & PRESENT != 0).then_some((table, leaf))
}

/// Most user address spaces alive at once.
pub const MAX_SPACES: usize = 64;

/// Roots of the live user address spaces, by slot (0: free, [`CLAIMED`]:
/// taken, root not yet allocated), for the verification walk and to find
/// the space a CPU switches away from or a move repoints. Atomics, not a
/// lock: compaction looks a space up from inside the page-table
/// allocation that `AddressSpace::new` makes while it claims a slot.
static LIVE: [AtomicU64; MAX_SPACES] = [const { AtomicU64::new(0) }; MAX_SPACES];
/// A slot taken by a space whose root is being allocated.
const CLAIMED: u64 = u64::MAX;

/// The CPUs that have each live user space loaded, by slot: an unmap or
/// a move in a user space is shot down there only. A CPU marks itself
/// before it loads the root and unmarks itself once it has switched away
/// ([`AddressSpace::load`], [`load_kernel_root`]).
static LOADED: [LoadedOn; MAX_SPACES] = [const { LoadedOn::new() }; MAX_SPACES];

/// Roots of every live user address space.
pub fn live_roots() -> heapless::Vec<u64, MAX_SPACES> {
    LIVE.iter()
        .map(|root| root.load(Ordering::Acquire))
        .filter(|&root| root != 0 && root != CLAIMED)
        .collect()
}

/// The slot of the live user space rooted at `root`, if any.
fn slot_of(root: u64) -> Option<usize> {
    LIVE.iter()
        .position(|live| live.load(Ordering::Acquire) == root)
}

/// Switches this CPU to the kernel's own root (no user half), and
/// unmarks the user space it leaves.
pub fn load_kernel_root() {
    switch_root(super::kernel_root());
}

/// Loads `root` on this CPU, then unmarks the user space it left (its
/// translations went with the CR3 write: no PCID).
fn switch_root(root: u64) {
    let old = cpu::read_cr3() & ADDRESS;
    super::tlb::load_root(root);
    if old != root
        && let Some(slot) = slot_of(old)
    {
        LOADED[slot].unload(crate::arch::percpu::index());
    }
}

/// True if the 4 KiB frame at `phys` is page-table memory.
pub(crate) fn is_page_table_memory(phys: u64) -> bool {
    page_table_memory_in(phys & ADDRESS, 4096).is_some()
}

/// The first frame of page-table memory (a frame of a pageblock the
/// sealed record calls page-table memory, a single page-table page the
/// record names inside a mixed pageblock, or an early page table) in the
/// `span` bytes from `start`, a page of 4 KiB, 2 MiB or 1 GiB aligned to
/// its size. The record answers with one look per 2 MiB, and for a mixed
/// pageblock with its bitmap of single pages.
pub(crate) fn page_table_memory_in(start: u64, span: u64) -> Option<u64> {
    let early = super::sealed::with_early_tables(|list| {
        list.tables()
            .iter()
            .map(|t| t.phys)
            .find(|&t| start <= t && t - start < span)
    });
    early.or_else(|| super::sealed::first_page_table_frame(start, span))
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

/// A zeroed page table (the allocator zeroes it inside a window).
fn new_table() -> Result<u64, PagingError> {
    alloc_table(AllocFlags::ZERO)
}

/// A page table with whatever a previous owner left in it: the caller
/// zeroes it in the window that links it ([`zero_table`]).
fn new_unzeroed_table() -> Result<u64, PagingError> {
    alloc_table(AllocFlags::empty())
}

fn alloc_table(flags: AllocFlags) -> Result<u64, PagingError> {
    let allocator = frames::allocator().ok_or(PagingError::NoAllocator)?;
    let table = allocator
        .alloc(crate::arch::percpu::index(), 0, PAGE_TABLES, flags)
        .map(Pfn::addr)
        .map_err(PagingError::Alloc)?;
    let exposed = || {
        allocator
            .frame_info(Pfn(table / 4096))
            .is_some_and(|info| info.exposed)
    };
    if !table_acceptable(
        is_page_table_memory(table),
        frames::policy().fallback,
        exposed,
    ) {
        panic!(
            "the allocator handed out page table {table:#x}, which the sealed record does not call page-table memory: its metadata was tampered with"
        );
    }
    Ok(table)
}

/// Whether a page the allocator handed out may serve as a page table.
/// The allocator's metadata is ordinary memory; the sealed record says
/// whether the frame is really protected (`protected`). The one
/// unprotected table accepted is the one `ptfallback=unprotected` asks
/// for: a page the metadata marks exposed (under that policy an attacker
/// who can write the metadata wins anyway, and the walk reports every
/// exposed table that is linked). The policy itself is a sealed record.
fn table_acceptable(
    protected: bool,
    fallback: ptalloc::PtFallback,
    exposed: impl FnOnce() -> bool,
) -> bool {
    protected || fallback == ptalloc::PtFallback::Unprotected && exposed()
}

crate::kernel_test! {
    /// A page table the sealed record does not call protected is refused
    /// unless the dodge is the policy and the page is marked exposed.
    fn unprotected_tables_are_accepted_only_from_the_dodge() -> TestResult {
        use ptalloc::PtFallback::{Fail, Unprotected};
        crate::check!(table_acceptable(true, Fail, || false), "a protected table refused");
        crate::check!(table_acceptable(true, Unprotected, || false), "a protected table refused");
        crate::check!(!table_acceptable(false, Fail, || true), "an exposed table taken under fail");
        crate::check!(!table_acceptable(false, Unprotected, || false), "an unmarked page taken");
        crate::check!(table_acceptable(false, Unprotected, || true), "the dodge's table refused");
        Ok(())
    }
}

/// Zeroes a table not yet linked.
fn zero_table(window: &pte::Window, phys: u64) {
    for slot in 0..512 {
        write(window, phys, slot, 0);
    }
}

fn free_table(phys: u64) {
    if let Some(allocator) = frames::allocator() {
        // A table this module allocated: freeing it cannot fail.
        let _ = allocator.free(crate::arch::percpu::index(), Pfn(phys / 4096), 0);
    }
}

/// A live slot and a root for a new user space: the root from the
/// page-table freetype, its kernel half the kernel's as it is now.
fn new_user_root() -> Result<(usize, u64), PagingError> {
    let slot = LIVE
        .iter()
        .position(|live| {
            live.compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
        .ok_or(PagingError::Alloc(AllocError::OutOfMemory))?;
    let root = new_table().inspect_err(|_| LIVE[slot].store(0, Ordering::Release))?;
    LIVE[slot].store(root, Ordering::Release);
    let kernel_root = super::kernel_root();
    pte::with_window(|window| {
        for slot in 256..512 {
            write(window, root, slot, read(kernel_root, slot));
        }
    });
    Ok((slot, root))
}

/// Before a user space's root goes: switches this CPU away from it, and
/// panics if another CPU still has it loaded (only a broken scheduler
/// drops one there; its root would be freed under it).
fn unload_dying_root(slot: usize, root: u64) {
    if cpu::read_cr3() & ADDRESS == root {
        load_kernel_root();
    }
    let elsewhere = LOADED[slot].cpus();
    if !elsewhere.is_empty() {
        panic!("user space {root:#x} dropped while CPUs {elsewhere:?} have it loaded");
    }
}

/// The frame and leaf entry mapping `virt` in the space rooted at `root`.
fn translate_in(root: u64, virt: u64) -> Option<(u64, u64)> {
    let leaf = super::walk::leaf(root, virt)?;
    let span = leaf.size.bytes();
    Some((
        (leaf.entry & ADDRESS & !(span - 1)) + virt % span,
        leaf.entry,
    ))
}

/// The leaf entry mapping `phys` with a page of `size`: present, with
/// the `access` bits (`USER` or none), writable and no-execute as `flags`
/// say.
fn leaf_entry(phys: u64, size: PageSize, flags: MapFlags, access: u64) -> u64 {
    let mut leaf = phys | PRESENT | access;
    if flags.writable {
        leaf |= WRITABLE;
    }
    if !flags.executable {
        leaf |= cpu::no_execute_bit();
    }
    if size == PageSize::Large {
        leaf |= LARGE;
    }
    leaf
}

impl AddressSpace {
    /// A new, empty user address space. Its kernel half is the kernel's as
    /// it is now: create user spaces after [`init_kernel_space`].
    pub fn new() -> Result<Self, PagingError> {
        let (slot, root) = new_user_root()?;
        Ok(Self {
            root,
            kind: Kind::User,
            slot,
            edits: crate::sync::Mutex::new(()),
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

    /// Loads this space on this CPU (its root in CR3), marking the CPU as
    /// one that has it loaded first, so that an unmap that reads the mark
    /// after its change either flushes this CPU or is seen by this load.
    /// The kernel space is every root's kernel half: loading it loads the
    /// kernel's own root ([`load_kernel_root`]).
    pub fn load(&self) {
        if self.kind == Kind::Kernel {
            return load_kernel_root();
        }
        LOADED[self.slot].load(crate::arch::percpu::index());
        switch_root(self.root);
    }

    /// Which CPUs a flush of this space must reach.
    fn reach(&self) -> Reach<'static> {
        match self.kind {
            Kind::Kernel => Reach::Everywhere,
            Kind::User => Reach::LoadedOn(&LOADED[self.slot]),
        }
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
        if page_table_memory_in(phys, size.bytes()).is_some() {
            return Err(PagingError::ProtectedFrame);
        }
        if self.kind == Kind::Kernel {
            if flags.writable && flags.executable {
                return Err(PagingError::WritableExecutable);
            }
            // A page lies within one pageblock, which is hidden or not.
            if frames::is_hidden(phys) {
                return Err(PagingError::HiddenFrame);
            }
        }
        Ok(())
    }

    /// Maps `frame` at `virt` with one page of its size (order 0: 4 KiB,
    /// order 9: 2 MiB); the mapping holds the frame until [`unmap`]
    /// returns it. The tables the path lacks are allocated first; then one
    /// window zeroes and links them and writes the leaf, so the allocator
    /// (and any conversion it makes) never runs with the page-table key
    /// open, and a map costs one pair of PKRS writes however many tables it
    /// makes. A refusal hands the frame back with the reason.
    ///
    /// [`unmap`]: Self::unmap
    pub fn map(&self, virt: u64, frame: Frame, flags: MapFlags) -> Result<(), MapError> {
        let movable = frames::movable_freetype(&frame);
        match self.map_frame(virt, frame.addr(), frame.order(), flags, movable) {
            Ok(()) => {
                // The leaf holds the frame now.
                let _ = frame.into_mapping();
                Ok(())
            }
            Err(error) => Err(MapError { error, frame }),
        }
    }

    fn map_frame(
        &self,
        virt: u64,
        phys: u64,
        order: u32,
        flags: MapFlags,
        movable: Option<ptalloc::Freetype>,
    ) -> Result<(), PagingError> {
        let size = match order {
            0 => PageSize::Small,
            9 => PageSize::Large,
            _ => return Err(PagingError::FrameSize),
        };
        // Check before changing anything.
        self.check_page(virt, size)?;
        self.check_frame(phys, size, flags)?;
        self.map_leaf(virt, phys, size, flags, movable, 0)
    }

    /// Maps a checked page: `extra` are leaf bits beyond the flags' (the
    /// device path's cache bits).
    fn map_leaf(
        &self,
        virt: u64,
        phys: u64,
        size: PageSize,
        flags: MapFlags,
        movable: Option<ptalloc::Freetype>,
        extra: u64,
    ) -> Result<(), PagingError> {
        let _edits = self.edits.lock();
        // Walk as far as the tables go: the last present table, and the
        // level of its entry on the path.
        let leaf_level = size.leaf_level();
        let mut table = self.root;
        let mut level = 4;
        while level > leaf_level {
            let entry = read(table, index(virt, level));
            if entry & PRESENT == 0 {
                break;
            }
            if entry & LARGE != 0 {
                return Err(PagingError::AlreadyMapped);
            }
            table = entry & ADDRESS;
            level -= 1;
        }
        // A large leaf would replace a table of small ones: refuse.
        if level == leaf_level && read(table, index(virt, leaf_level)) != 0 {
            return Err(PagingError::AlreadyMapped);
        }
        let mut new_tables = [0u64; 3];
        let needed = (level - leaf_level) as usize;
        for made in 0..needed {
            match new_unzeroed_table() {
                Ok(phys) => new_tables[made] = phys,
                Err(error) => {
                    new_tables[..made].iter().for_each(|&t| free_table(t));
                    return Err(error);
                }
            }
        }
        let leaf = leaf_entry(phys, size, flags, self.kind.access_bits()) | extra;
        let link_bits = PRESENT | WRITABLE | self.kind.access_bits();
        pte::with_window(|window| {
            for &next in &new_tables[..needed] {
                zero_table(window, next);
                write(window, table, index(virt, level), next | link_bits);
                table = next;
                level -= 1;
            }
            write(window, table, index(virt, leaf_level), leaf);
        });
        // A movable 4 KiB frame in a user space can be moved from now on.
        if let (Kind::User, PageSize::Small, Some(freetype)) = (self.kind, size, movable) {
            RMAP.lock().record(phys, self.root, virt, freetype);
        }
        Ok(())
    }

    /// Unmaps the page of `size` at `virt` and returns the frame the
    /// mapping held. Tables left empty are unlinked in the same window and
    /// freed after it.
    pub fn unmap(&self, virt: u64, size: PageSize) -> Result<Frame, PagingError> {
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
        // From here until its leaf is cleared, no move may repoint it.
        let mut rmap = (self.kind == Kind::User).then(|| RMAP.lock());
        let slot = index(virt, size.leaf_level());
        let leaf = read(table, slot);
        let is_large = leaf & LARGE != 0;
        if leaf & PRESENT == 0 || (size == PageSize::Large) != is_large {
            return Err(PagingError::NotMapped);
        }
        if self.kind == Kind::Kernel && leaf & CACHE_DISABLE != 0 {
            return Err(PagingError::NotDevice);
        }
        // Tables that become empty, bottom up (never the root, nor what
        // the kind keeps); they are all zero when unlinked.
        let mut emptied = [0u64; 3];
        let mut freed = 0;
        pte::with_window(|window| {
            write(window, table, slot, 0);
            let mut child = table;
            let kept = self.kind.kept_levels();
            while depth > kept && (0..512).all(|i| read(child, i) == 0) {
                depth -= 1;
                let (parent, parent_slot) = path[depth];
                write(window, parent, parent_slot, 0);
                emptied[freed] = child;
                freed += 1;
                child = parent;
            }
        });
        if let Some(rmap) = rmap.as_mut() {
            rmap.forget(leaf & ADDRESS, self.root, virt);
        }
        drop(rmap);
        // Before the frame or a table is used again, no CPU may keep the
        // old translation (or a cached walk through a freed table, which
        // INVLPG drops too): kernel mappings are live on every CPU, user
        // ones where the space is loaded. One round for the page.
        super::tlb::flush_pages(&[virt], self.reach());
        emptied[..freed].iter().for_each(|&t| free_table(t));
        Ok(Frame::from_mapping(leaf & ADDRESS, size.order()))
    }

    /// Maps a device page at `virt` in the kernel space: writable,
    /// uncached (PCD and PWT), never executable. User spaces refuse
    /// (`OutOfRange`); the mapping stays until the kernel ends (`unmap`
    /// refuses device leaves).
    pub fn map_device(&self, virt: u64, device: DeviceFrame) -> Result<(), PagingError> {
        if self.kind != Kind::Kernel {
            return Err(PagingError::OutOfRange);
        }
        let flags = MapFlags {
            writable: true,
            executable: false,
        };
        self.check_page(virt, PageSize::Small)?;
        self.map_leaf(
            virt,
            device.addr(),
            PageSize::Small,
            flags,
            None,
            CACHE_DISABLE,
        )
    }

    /// The frame and leaf entry mapping `virt`, if any.
    pub fn translate(&self, virt: u64) -> Option<(u64, u64)> {
        translate_in(self.root, virt)
    }
}

/// Empties `table` (at `level`) of a dying user space: zeroes its entries
/// in a window, then frees the tables below it in the user half and the
/// frames its leaves held, so every table goes back to the allocator
/// zeroed. A root also drops its copy of the kernel half. A dying space is
/// loaded nowhere, so nothing uses its entries while this runs.
fn empty_table(table: u64, level: u32) {
    let mut entries = [0u64; 512];
    for (slot, entry) in entries.iter_mut().enumerate() {
        *entry = read(table, slot as u64);
    }
    pte::with_window(|window| {
        for (slot, &entry) in entries.iter().enumerate() {
            if entry != 0 {
                write(window, table, slot as u64, 0);
            }
        }
    });
    let user_slots = if level == 4 { 256 } else { 512 };
    for &entry in entries[..user_slots].iter().filter(|&&e| e & PRESENT != 0) {
        let leaf_size = match level {
            1 => Some(PageSize::Small),
            2 if entry & LARGE != 0 => Some(PageSize::Large),
            _ => None,
        };
        match leaf_size {
            Some(size) => drop(Frame::from_mapping(entry & ADDRESS, size.order())),
            None => {
                empty_table(entry & ADDRESS, level - 1);
                free_table(entry & ADDRESS);
            }
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
        // A loaded root is never freed.
        unload_dying_root(self.slot, self.root);
        LIVE[self.slot].store(0, Ordering::Release);
        // No move touches its leaves from here: the frames they name now
        // are the ones to free.
        RMAP.lock().forget_space(self.root);
        // Whatever is still mapped: its frames go back with the tables.
        empty_table(self.root, 4);
        free_table(self.root);
    }
}

/// The AP trampoline's page, mapped at its own physical address in the
/// kernel root while application processors switch paging on (their
/// first instruction after `mov cr0` is fetched at the physical address).
/// Read-execute, never writable; its PDPT, PD and PT come from the
/// page-table freetype. Dropping it unlinks and zeroes all three in one
/// window, frees them and reloads CR3 on this CPU; the other CPUs flush
/// their own TLB when told it is gone (see `arch::smp`).
pub struct IdentityPage {
    phys: u64,
    tables: [u64; 3],
}

static IDENTITY_TAKEN: crate::sync::Mutex<bool> = crate::sync::Mutex::new(false);

impl IdentityPage {
    /// Maps the 4 KiB page at `phys`, which must lie below 1 MiB (never
    /// allocator memory) and be neither the image nor page-table memory.
    /// One at a time; `AlreadyMapped` while another lives.
    pub fn map(phys: u64) -> Result<Self, PagingError> {
        if !phys.is_multiple_of(4096) {
            return Err(PagingError::Misaligned);
        }
        if phys == 0 || phys >= 1 << 20 {
            return Err(PagingError::OutOfRange);
        }
        if page_table_memory_in(phys, 4096).is_some() {
            return Err(PagingError::ProtectedFrame);
        }
        let mut taken = IDENTITY_TAKEN.lock();
        if *taken {
            return Err(PagingError::AlreadyMapped);
        }
        let root = super::kernel_root();
        if read(root, index(phys, 4)) != 0 {
            return Err(PagingError::AlreadyMapped);
        }
        let mut tables = [0u64; 3];
        for made in 0..3 {
            match new_table() {
                Ok(table) => tables[made] = table,
                Err(error) => {
                    tables[..made].iter().for_each(|&t| free_table(t));
                    return Err(error);
                }
            }
        }
        let [pdpt, pd, pt] = tables;
        pte::with_window(|window| {
            write(window, pt, index(phys, 1), phys | PRESENT);
            write(window, pd, index(phys, 2), pt | PRESENT | WRITABLE);
            write(window, pdpt, index(phys, 3), pd | PRESENT | WRITABLE);
            write(window, root, index(phys, 4), pdpt | PRESENT | WRITABLE);
        });
        *taken = true;
        Ok(Self { phys, tables })
    }

    /// The page's physical (and virtual) address.
    pub fn addr(&self) -> u64 {
        self.phys
    }
}

impl Drop for IdentityPage {
    fn drop(&mut self) {
        let root = super::kernel_root();
        let [pdpt, pd, pt] = self.tables;
        let phys = self.phys;
        pte::with_window(|window| {
            write(window, root, index(phys, 4), 0);
            write(window, pdpt, index(phys, 3), 0);
            write(window, pd, index(phys, 2), 0);
            write(window, pt, index(phys, 1), 0);
        });
        // The user half has no global pages: a CR3 reload drops the page
        // and the cached upper levels on this CPU.
        super::tlb::load_root(cpu::read_cr3() & ADDRESS);
        self.tables.iter().for_each(|&t| free_table(t));
        *IDENTITY_TAKEN.lock() = false;
    }
}

pub mod explicit;
pub use explicit::{TableFrame, TableLevel, VSpace, VSpaceError};

mod rmap;

/// The module's in-kernel tests (run under QEMU with `test=`).
mod tests;
