//! The kernel's page allocator: `ptalloc` over the boot memory map, on the
//! real direct map.
//!
//! Set-up, once at boot after the direct map exists:
//! - if no whole 2 MiB pageblock is free above the image and the metadata,
//!   the machine is too small to make page-table memory: set-up stops with
//!   [`FramesError::NotEnoughMemory`], which names the minimum
//!   (`boot::layout::MIN_MEMORY`), before touching anything;
//! - metadata (`ptalloc::METADATA_BYTES_PER_FRAME` per frame up to the
//!   highest usable address) is carved from the first usable region above
//!   the kernel image that fits it, zeroed through the direct map;
//! - every usable frame goes to the allocator as `Mapped` kernel memory,
//!   except the first MiB (firmware and `hvm_start_info`), the kernel image,
//!   the metadata and the boot modules (`MemoryMap::boot_modules`: the
//!   root task's ELF, which the metadata avoids too). A module's frames are
//!   not given back once it is loaded: it stays readable, untouched, for
//!   the kernel's life (a few pages; the capability step may hand it on);
//! - the split reserve is filled, which converts the first pageblock to the
//!   page-table freetype;
//! - from 1 GiB of whole free pageblocks up, `ptalloc`'s conversion
//!   watermark holds `ptalloc::DEFAULT_CONVERSION_WATERMARK` whole free
//!   pageblocks for page tables (none on a smaller machine);
//! - the policy lab's choices (`ptstrategy=`, `ptfallback=`, [`PtPolicy`])
//!   select `ptalloc`'s strategy and page-table fallback; under
//!   `ptfallback=unprotected` the single-page fallback below is off, and
//!   a page table no conversion can serve is an exposed, unprotected page
//!   (`paging` accepts it, the verification walk reports it);
//! - otherwise `ptalloc`'s single-page fallback is on: when no whole free pageblock
//!   can become page-table memory, a page table is one free page of a
//!   mapped pageblock keyed by itself, which the backend records in the
//!   sealed record's set of single page-table pages. So a page-table
//!   allocation fails for lack of memory only when no mapped page is free
//!   (or when the sealed record has no room for another mixed pageblock);
//! - compaction runs before that fallback: the migrator `bring_up` passes
//!   in (`movable::USER_FRAMES`, the owner of movable user frames) is
//!   registered with `with_migrator`, so a page-table allocation that finds
//!   no whole free pageblock first empties the one with the fewest live
//!   movable frames by moving them. `bring_up` passes it so that this
//!   module need not import `movable` (which imports `paging`, which
//!   imports this one).

use super::backend::KernelDirectMap;
use super::direct_map::{DIRECT_MAP_BASE, DirectMapInfo};
use boot::layout::MIN_MEMORY;
use boot::memory_map::MemoryMap;
use core::ops::Range;
use ptalloc::{
    AllocError, Config, FrameMeta, Freetype, InitError, METADATA_BYTES_PER_FRAME, Migrate,
    Mobility, PageAllocator, Pfn, Protection, PtFallback, Strategy,
};

/// CPUs with a per-CPU cache: one per CPU the kernel can bring up. Each
/// CPU passes its own number (`percpu::index`), so its fast path takes
/// only its own cache's lock.
pub const CPUS: usize = crate::arch::percpu::MAX_CPUS;
/// The page-table freetype: unmovable pages with the page-table key.
pub const PAGE_TABLES: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(pkeys::PAGE_TABLE_KEY.index()),
};
/// Pages the split reserve is kept at: a 4 KiB change inside a 1 GiB
/// mapping takes two, so this covers four such changes between refills.
pub const RESERVE_TARGET: usize = 8;

/// The kernel's allocator type.
pub type FrameAllocator = PageAllocator<'static, KernelDirectMap, CPUS>;

static FRAMES: spin::Once<FrameAllocator> = spin::Once::new();

/// Why the allocator could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum FramesError {
    /// No usable region above the image can hold the metadata.
    NoRoomForMetadata {
        /// Bytes needed.
        bytes: u64,
    },
    /// No whole 2 MiB pageblock is free above the image and the metadata,
    /// so page-table memory cannot be made: the machine is too small.
    NotEnoughMemory {
        /// Where usable RAM ends.
        usable_end: u64,
    },
    /// `ptalloc` refused its set-up or memory.
    Init(InitError),
    /// Filling the split reserve failed.
    Reserve(AllocError),
}

impl core::fmt::Display for FramesError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRoomForMetadata { bytes } => {
                write!(
                    f,
                    "no usable region above the kernel image holds {bytes} bytes of metadata"
                )
            }
            Self::NotEnoughMemory { usable_end } => write!(
                f,
                "not enough memory: usable RAM ends at {usable_end:#x} ({} KiB), leaving no whole \
                 free 2 MiB pageblock above the kernel image for page tables; pks-kernel needs \
                 at least {} MiB (QEMU -m {}M)",
                usable_end >> 10,
                MIN_MEMORY >> 20,
                MIN_MEMORY >> 20
            ),
            Self::Init(error) => write!(f, "{error}"),
            Self::Reserve(error) => write!(f, "filling the split reserve: {error}"),
        }
    }
}

/// What the set-up did, for the boot report.
#[derive(Clone, Debug, Default)]
pub struct FramesInfo {
    /// Where the metadata lives.
    pub metadata: Range<u64>,
    /// Frames given to the allocator.
    pub frames_given: u64,
    /// Whole free pageblocks held for page-table conversions.
    pub conversion_watermark: usize,
}

const FIRST_MIB: u64 = 1 << 20;

/// The policy lab's choices for the allocator (`ptstrategy=`,
/// `ptfallback=`), in `ptalloc`'s terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtPolicy {
    /// Where page tables find protected memory.
    pub strategy: Strategy,
    /// What a page-table allocation does when none can be had.
    pub fallback: PtFallback,
}

impl PtPolicy {
    /// The command line's choices.
    pub fn from_config(config: &boot::KernelConfig) -> Self {
        use boot::cmdline as cmd;
        let strategy = match config.ptstrategy {
            cmd::PtStrategy::Freetype => Strategy::Freetype,
            cmd::PtStrategy::Pagewise => Strategy::Pagewise,
            cmd::PtStrategy::Granular => Strategy::Granular,
            cmd::PtStrategy::ProtectedFirst => Strategy::ProtectedFirst,
        };
        let fallback = match config.ptfallback {
            cmd::PtFallback::Fail => PtFallback::Fail,
            cmd::PtFallback::Unprotected => PtFallback::Unprotected,
        };
        Self { strategy, fallback }
    }

    /// The strategy's command-line spelling.
    pub fn strategy_name(self) -> &'static str {
        match self.strategy {
            Strategy::Freetype => "freetype",
            Strategy::Pagewise => "pagewise",
            Strategy::Granular => "granular",
            Strategy::ProtectedFirst => "protected-first",
        }
    }

    /// The fallback's command-line spelling.
    pub fn fallback_name(self) -> &'static str {
        match self.fallback {
            PtFallback::Fail => "fail",
            PtFallback::Unprotected => "unprotected",
        }
    }

    /// Whether the direct map may use 1 GiB pages (where the CPU has
    /// them): not under `granular`, whose point is a direct map of 2 MiB
    /// pages from boot.
    pub fn gib_pages(self) -> bool {
        self.strategy != Strategy::Granular
    }
}

/// The policy the allocator was set up with (the default until then).
/// Among the sealed records (key 2 once boot seals them): `paging`
/// accepts an unprotected page table only when it says
/// `ptfallback=unprotected`, so a stray write must not make it say so.
#[unsafe(link_section = ".sealed")]
static POLICY: spin::Once<PtPolicy> = spin::Once::new();

/// The policy the allocator runs with.
pub fn policy() -> PtPolicy {
    POLICY.get().copied().unwrap_or_default()
}

/// Sets up the allocator. Call once, after the direct map is built.
pub(super) fn init(
    memory: &MemoryMap,
    direct_map: &DirectMapInfo,
    nx: bool,
    policy: PtPolicy,
    migrator: &'static dyn Migrate,
) -> Result<FramesInfo, FramesError> {
    let highest = memory.summary().highest_usable_end;
    let frames = highest.div_ceil(ptalloc::PAGE_SIZE);
    let bytes = frames * METADATA_BYTES_PER_FRAME as u64;
    let image = super::kernel_image_phys();
    let mut excluded: Excluded = heapless::Vec::new();
    excluded.extend([0..FIRST_MIB, image.clone()]);
    excluded.extend(memory.boot_modules().iter().cloned());
    // Page tables come from whole pageblocks converted to their key: with
    // none free, boot cannot go on. Say so before touching anything, and
    // before looking for the metadata's room, which so small a machine
    // may lack too (a larger image leaves it less).
    if whole_free_pageblocks_in(memory, &excluded) == 0 {
        return Err(FramesError::NotEnoughMemory {
            usable_end: highest,
        });
    }
    // Above the image, clear of the boot modules.
    let mut below_metadata: Excluded = heapless::Vec::new();
    let _ = below_metadata.push(0..image.end.max(FIRST_MIB));
    below_metadata.extend(memory.boot_modules().iter().cloned());
    let metadata = memory
        .usable()
        .flat_map(|region| free_pieces(region.start..region.end, &below_metadata))
        .find_map(|piece| {
            let start = piece.start.next_multiple_of(ptalloc::PAGE_SIZE);
            (start + bytes <= piece.end && direct_map.covers(start, bytes))
                .then_some(start..start + bytes)
        })
        .ok_or(FramesError::NoRoomForMetadata { bytes })?;

    // The metadata may have taken the last whole free pageblock.
    let _ = excluded.push(metadata.clone());
    let whole_free_pageblocks = whole_free_pageblocks_in(memory, &excluded);
    if whole_free_pageblocks == 0 {
        return Err(FramesError::NotEnoughMemory {
            usable_end: highest,
        });
    }

    let virt = DIRECT_MAP_BASE + metadata.start;
    // SAFETY: the range is usable RAM that nothing else uses (above the
    // image and the first MiB, before any allocator exists), mapped
    // writable by the direct map (checked). Zeroed bytes are a valid array
    // of FrameMeta (all holes), and the slice lives for the kernel's life.
    let meta: &'static [FrameMeta] = unsafe {
        (virt as *mut u8).write_bytes(0, bytes as usize);
        core::slice::from_raw_parts(virt as *const FrameMeta, frames as usize)
    };
    let watermark = conversion_watermark(whole_free_pageblocks);
    let config = Config {
        page_table: PAGE_TABLES,
        reserve_target: RESERVE_TARGET,
        conversion_watermark: watermark,
        // The last resort for a protected page table: the sealed record
        // names the single pages it keys, so the walk, `paging` and the
        // ephemeral slot see them as page-table memory. The dodge takes
        // its place under `ptfallback=unprotected`: with it on, any moment
        // an unprotected page could be had a protected one can be made,
        // and the dodge would never be seen.
        single_page_fallback: policy.fallback == PtFallback::Fail,
        strategy: policy.strategy,
        pt_fallback: policy.fallback,
    };
    POLICY.call_once(|| policy);
    // Built inside the `Once`: the allocator is large (a cache per CPU),
    // and each move through the stack would copy it.
    let allocator = FRAMES
        .try_call_once(|| {
            PageAllocator::new(meta, Pfn(0), config, KernelDirectMap::new(direct_map, nx))
                .map(|allocator| allocator.with_migrator(migrator))
        })
        .map_err(FramesError::Init)?;

    let mut frames_given = 0;
    for region in memory.usable() {
        for piece in free_pieces(region.start..region.end, &excluded) {
            let first = piece.start.div_ceil(ptalloc::PAGE_SIZE);
            let last = piece.end / ptalloc::PAGE_SIZE;
            if first < last {
                allocator
                    .add_memory(Pfn(first), Pfn(last), Freetype::KERNEL)
                    .map_err(FramesError::Init)?;
                frames_given += last - first;
            }
        }
    }
    allocator.refill_reserve().map_err(FramesError::Reserve)?;
    Ok(FramesInfo {
        metadata,
        frames_given,
        conversion_watermark: watermark,
    })
}

/// Machines with fewer whole free pageblocks than this at boot keep no
/// conversion watermark: 512 pageblocks is 1 GiB, where the default
/// watermark (8 MiB) is under 1% of memory.
const WATERMARK_FROM_PAGEBLOCKS: u64 = 512;

/// The conversion watermark for a machine with `whole_free_pageblocks` at
/// boot: `ptalloc`'s measured default where it is small change, none on a
/// small machine, where every pageblock counts and holding a few back for
/// page tables would refuse most 2 MiB allocations.
fn conversion_watermark(whole_free_pageblocks: u64) -> usize {
    if whole_free_pageblocks >= WATERMARK_FROM_PAGEBLOCKS {
        ptalloc::DEFAULT_CONVERSION_WATERMARK
    } else {
        0
    }
}

/// Ranges kept from the allocator: the first MiB, the image, the metadata
/// and the boot modules.
const MAX_EXCLUDED: usize = 3 + boot::MAX_MODULES;
type Excluded = heapless::Vec<Range<u64>, MAX_EXCLUDED>;

/// Whole 2 MiB pageblocks of usable memory outside every `excluded` range.
fn whole_free_pageblocks_in(memory: &MemoryMap, excluded: &Excluded) -> u64 {
    memory
        .usable()
        .flat_map(|region| free_pieces(region.start..region.end, excluded))
        .map(|piece| {
            (piece.end / ptalloc::PAGEBLOCK_SIZE)
                .saturating_sub(piece.start.div_ceil(ptalloc::PAGEBLOCK_SIZE))
        })
        .sum()
}

/// The parts of `region` outside every `excluded` range.
fn free_pieces(
    region: Range<u64>,
    excluded: &Excluded,
) -> heapless::Vec<Range<u64>, { MAX_EXCLUDED + 1 }> {
    let mut pieces: heapless::Vec<Range<u64>, { MAX_EXCLUDED + 1 }> = heapless::Vec::new();
    let _ = pieces.push(region);
    for cut in excluded {
        let mut next: heapless::Vec<Range<u64>, { MAX_EXCLUDED + 1 }> = heapless::Vec::new();
        for piece in &pieces {
            for part in [
                piece.start..piece.end.min(cut.start),
                piece.start.max(cut.end)..piece.end,
            ] {
                if part.start < part.end {
                    // A cut splits at most one piece (the pieces are
                    // disjoint and it is one range): one more per cut fits.
                    let _ = next.push(part);
                }
            }
        }
        pieces = next;
    }
    pieces
}

/// The allocator, once [`init`] ran. Private to `memory`: through it
/// lies the direct-map backend, which can change any frame's protection.
pub(super) fn allocator() -> Option<&'static FrameAllocator> {
    FRAMES.get()
}

/// A block of `1 << order` frames the allocator handed out, owned: only
/// [`alloc_frame`] makes one, and nothing copies it. Dropping it frees
/// the block; mapping it (`paging`) moves it into the mapping, which
/// holds it until unmap hands it back. So a mapped frame cannot be freed,
/// and since conversions take only whole *free* pageblocks, a pageblock
/// with a mapped frame cannot change freetype under the mapping: no alias
/// made before a conversion survives it.
#[must_use = "dropping a Frame frees it"]
pub struct Frame {
    pfn: Pfn,
    order: u32,
}

impl Frame {
    /// Physical address of the first frame.
    pub fn addr(&self) -> u64 {
        self.pfn.addr()
    }

    /// The block's order (0: 4 KiB, 9: 2 MiB).
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Gives the frame to a mapping, which holds it from now on: the
    /// caller must hand the mapping's frame back through
    /// [`from_mapping`](Self::from_mapping) when it unmaps it.
    pub(super) fn into_mapping(self) -> (u64, u32) {
        let frame = core::mem::ManuallyDrop::new(self);
        (frame.pfn.addr(), frame.order)
    }

    /// Takes back the frame a mapping held, once the mapping is gone.
    /// Only for what [`into_mapping`](Self::into_mapping) gave away.
    pub(super) fn from_mapping(addr: u64, order: u32) -> Self {
        Self {
            pfn: Pfn(addr / ptalloc::PAGE_SIZE),
            order,
        }
    }
}

impl core::fmt::Debug for Frame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Frame({:#x}, order {})", self.addr(), self.order)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // A Frame exists only for a block the allocator handed out and
        // nobody freed: failing to free it is a broken invariant.
        if let Some(allocator) = allocator()
            && let Err(error) = allocator.free(crate::arch::percpu::index(), self.pfn, self.order)
        {
            panic!("freeing an owned {:?} failed: {:?}", self, error);
        }
    }
}

/// The freetype of `frame` if it is a movable 4 KiB frame (order 0 of a
/// `Mobility::Movable` freetype), as the allocator's books say: the same
/// books compaction reads to pick what it moves, so `paging` records in
/// its reverse map exactly the frames compaction may ask to move.
pub(super) fn movable_freetype(frame: &Frame) -> Option<Freetype> {
    let info = allocator()?.frame_info(frame.pfn)?;
    let freetype = info.freetype?;
    let movable = info.state == ptalloc::FrameState::AllocatedHead
        && info.order == 0
        && frame.order == 0
        && freetype.mobility == Mobility::Movable;
    movable.then_some(freetype)
}

/// Why [`alloc_frame`] gave no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No page allocator yet.
    NoAllocator,
    /// The page-table freetype, or a key no object class uses: page
    /// tables only `paging` allocates, and never hands out.
    ProtectedFreetype,
    /// Not memory for kernel data: movable, or absent from the direct
    /// map.
    NotKernelMemory,
    /// The allocator refused.
    Alloc(AllocError),
}

/// Allocates an owned block of `1 << order` frames of `freetype`, zeroed
/// if `zero`. Any freetype but page tables' and keys no object class
/// uses (`object::protection`'s capability and thread memory have keys).
pub fn alloc_frame(order: u32, freetype: Freetype, zero: bool) -> Result<Frame, FrameError> {
    let object_keys = [pkeys::CAPABILITY_KEY.index(), pkeys::THREAD_KEY.index()];
    if matches!(freetype.protection, Protection::Pkey(k) if !object_keys.contains(&k)) {
        return Err(FrameError::ProtectedFreetype);
    }
    let allocator = allocator().ok_or(FrameError::NoAllocator)?;
    let flags = if zero {
        ptalloc::AllocFlags::ZERO
    } else {
        ptalloc::AllocFlags::empty()
    };
    let pfn = allocator
        .alloc(crate::arch::percpu::index(), order, freetype, flags)
        .map_err(FrameError::Alloc)?;
    Ok(Frame { pfn, order })
}

/// A zeroed page of the page-table freetype as an owned frame, for the
/// lab's trace replay (`lab=trace`), which allocates page-table pages
/// without linking them. Nothing can map it as data: `paging` refuses
/// page-table memory as a leaf, and the ephemeral slot refuses it too.
pub fn alloc_page_table_frame() -> Result<Frame, FrameError> {
    let allocator = allocator().ok_or(FrameError::NoAllocator)?;
    let pfn = allocator
        .alloc(
            crate::arch::percpu::index(),
            0,
            PAGE_TABLES,
            ptalloc::AllocFlags::ZERO,
        )
        .map_err(FrameError::Alloc)?;
    Ok(Frame { pfn, order: 0 })
}

/// Gives every page parked in a per-CPU cache back to the allocator's
/// free lists, where whole free pageblocks can form again (tests, after
/// each test). Nothing before [`init`].
pub fn drain_caches() {
    if let Some(allocator) = allocator() {
        allocator.drain_caches();
    }
}

/// Frames nobody holds: free (in the lists or a per-CPU cache), in the
/// split reserve, or spent as direct-map tables by splits (the direct map
/// keeps them). What a test takes and gives back leaves it unchanged, so
/// the test harness compares it across each test. `None` before [`init`].
pub fn frames_not_held() -> Option<u64> {
    let stats = stats()?;
    let free: u64 = Freetype::all()
        .map(|freetype| stats.free_pages(freetype))
        .sum();
    let cached: u64 = stats.cached_pages.iter().sum();
    // Every split spends one page as a direct-map table, from the
    // conversion it serves or from the reserve (the single-page fallback's
    // splits, the kernel's own): `direct_map_tables` counts only the first.
    let direct_map_tables = stats.splits_1g + stats.splits_2m;
    Some(free + cached + stats.reserve_level + direct_map_tables)
}

/// Whole free 2 MiB pageblocks, of any freetype: what a conversion or a
/// 2 MiB frame can take. 0 before [`init`].
pub fn whole_free_pageblocks() -> u64 {
    stats().map_or(0, |stats| stats.whole_free_pageblocks())
}

/// Page tables that fit without the single-page fallback: the free pages
/// of page-table memory, plus 512 per whole free pageblock a conversion
/// can take. For tests that measure conversions, which must not size
/// their load past it (a machine fragmented by earlier tests has less).
pub fn page_table_room() -> u64 {
    stats().map_or(0, |stats| {
        stats.free_pages(PAGE_TABLES) + stats.whole_free_pageblocks() * 512
    })
}

/// For a test that needs `count` whole free pageblocks (`purpose` says
/// what for): on a machine with fewer, the test is skipped, saying so.
/// Small machines (from `boot::layout::MIN_MEMORY`) boot with none left
/// once page tables have theirs.
pub fn needs_free_pageblocks(count: u64, purpose: &str) -> crate::testing::TestResult {
    let free = whole_free_pageblocks();
    if free >= count {
        return Ok(());
    }
    let mut reason: heapless::String<160> = heapless::String::new();
    // A cut-off reason still says enough.
    let _ = core::fmt::write(
        &mut reason,
        format_args!(
            "needs {count} whole free 2 MiB pageblock{} {purpose}; this machine has {free}: \
             boot with more memory",
            if count == 1 { "" } else { "s" }
        ),
    );
    Err(crate::testing::TestFailure::skipped(&reason))
}

/// The allocator's counters, once [`init`] ran.
pub fn stats() -> Option<ptalloc::Stats> {
    allocator().map(FrameAllocator::stats)
}

/// Fault injection (`inject=empty-reserve`): the split reserve gives
/// nothing to direct-map splits while `on`. False before [`init`].
pub fn inject_empty_reserve(on: bool) -> bool {
    allocator().map(|a| a.inject_empty_reserve(on)).is_some()
}

/// True if the frame at `phys` is in an `Unmapped` pageblock: covered by
/// the direct map's ranges but absent from it, on purpose (as the sealed
/// record says).
pub fn is_hidden(phys: u64) -> bool {
    super::sealed::protection(phys) == Protection::Unmapped
}

crate::kernel_test! {
    /// Page-table pages come from pageblocks whose direct-map entries carry
    /// the page-table protection: key 1 under pks, read-only under ro.
    fn page_table_pages_are_protected_in_the_direct_map() -> TestResult {
        use crate::memory::walk::leaf;
        let frames = allocator();
        crate::check!(frames.is_some(), "no allocator");
        let Some(frames) = frames else { return Ok(()) };
        let page = frames.alloc(0, 0, PAGE_TABLES, ptalloc::AllocFlags::ZERO);
        crate::check!(page.is_ok(), "page-table allocation failed: {:?}", page);
        let Ok(page) = page else { return Ok(()) };
        let entry = leaf(crate::arch::cpu::read_cr3(), DIRECT_MAP_BASE + page.addr()).map(|l| l.entry);
        let mechanism = crate::arch::pks::current().map(|p| p.mechanism());
        let expected_key = if mechanism == Some(pkeys::Mechanism::Pks) { 1 } else { 0 };
        crate::check_eq!(entry.map(|e| pkeys::key::pte_key(e).index()), Some(expected_key));
        if mechanism == Some(pkeys::Mechanism::WriteProtect) {
            crate::check_eq!(entry.map(|e| e & 0b10), Some(0), "not read-only under ro");
        }
        // SAFETY: our page, mapped by the direct map; zeroed on allocation.
        let first = unsafe { ((DIRECT_MAP_BASE + page.addr()) as *const u64).read_volatile() };
        crate::check_eq!(first, 0);
        crate::check_eq!(frames.free(0, page, 0), Ok(()));
        Ok(())
    }
}

crate::kernel_test! {
    /// With the split reserve forced empty (fault injection), a change
    /// that must split fails with a clear error and leaves the map as it
    /// was: no page table is made from anything but a reserve page.
    fn empty_split_reserve_is_a_clear_error() -> TestResult {
        needs_free_pageblocks(1, "for a 2 MiB frame to split")?;
        use crate::memory::walk::leaf;
        let Some(frames) = allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        // A 4 KiB change in a 2 MiB direct-map page not split before.
        let target = frames.alloc(0, 9, Freetype::KERNEL, ptalloc::AllocFlags::empty());
        crate::check!(target.is_ok(), "{:?}", target);
        let Ok(target) = target else { return Ok(()) };
        let virt = DIRECT_MAP_BASE + target.addr();
        let before = leaf(crate::arch::cpu::read_cr3(), virt).map(|l| (l.entry, l.size));
        let stats_before = frames.stats();
        frames.inject_empty_reserve(true);
        let result = frames.with_split_reserve(|backend, pages| {
            backend.protect_page(target, PAGE_TABLES.protection, pages)
        });
        frames.inject_empty_reserve(false);
        let after = leaf(crate::arch::cpu::read_cr3(), virt).map(|l| (l.entry, l.size));
        let stats_after = frames.stats();
        let _ = frames.free(0, target, 9);
        crate::check_eq!(result, Err(ptalloc::DirectMapError::NoSplitPage));
        crate::check_eq!(after, before, "the map changed");
        crate::check_eq!(stats_after.reserve_level, stats_before.reserve_level);
        crate::check_eq!(stats_after.splits_2m, stats_before.splits_2m);
        Ok(())
    }
}

crate::kernel_test! {
    /// Running out of memory for page tables is a clear error, and the
    /// kernel keeps running (everything is given back and still verified).
    fn page_table_exhaustion_is_a_clear_error() -> TestResult {
        needs_free_pageblocks(1, "to convert to page tables")?;
        let Some(frames) = allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let mut held = 0u64;
        let mut first = None;
        let error = loop {
            match frames.alloc(0, 9, PAGE_TABLES, ptalloc::AllocFlags::empty()) {
                Ok(block) => {
                    first.get_or_insert(block);
                    held += 1;
                    // Keep the blocks linked through their first word (they
                    // are page-table pages: write inside a window).
                    let next = first.map_or(0, |f| f.0);
                    crate::memory::pte::with_window(|_| {
                        // SAFETY: our freshly allocated block, mapped by the direct map.
                        unsafe { ((DIRECT_MAP_BASE + block.addr()) as *mut u64).write_volatile(next) };
                    });
                    first = Some(block);
                }
                Err(error) => break error,
            }
        };
        // Free the chain.
        let mut cursor = first;
        let mut freed = 0;
        while let Some(block) = cursor {
            // SAFETY: reading the link we wrote.
            let next = unsafe { ((DIRECT_MAP_BASE + block.addr()) as *const u64).read_volatile() };
            crate::check_eq!(frames.free(0, block, 9), Ok(()));
            freed += 1;
            cursor = (next != block.0 && freed < held).then_some(Pfn(next));
        }
        crate::check_eq!(error, ptalloc::AllocError::OutOfMemory);
        crate::check!(held > 0, "no pageblock before running out");
        crate::check_eq!(freed, held);
        crate::check!(crate::memory::verify::verify().passed() || crate::boot_state().ptprot == pkeys::ProtectionPolicy::None);
        Ok(())
    }
}

crate::kernel_test! {
    /// Unmapped pages are absent from the direct map and still get zeroed
    /// (through the ephemeral slot).
    fn unmapped_pages_leave_the_direct_map() -> TestResult {
        needs_free_pageblocks(1, "to convert to Unmapped")?;
        use crate::memory::walk::leaf;
        let Some(frames) = allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let secret = Freetype { mobility: Mobility::Movable, protection: Protection::Unmapped };
        let page = frames.alloc(0, 0, secret, ptalloc::AllocFlags::ZERO);
        crate::check!(page.is_ok(), "unmapped allocation failed: {:?}", page);
        let Ok(page) = page else { return Ok(()) };
        let entry = leaf(crate::arch::cpu::read_cr3(), DIRECT_MAP_BASE + page.addr());
        crate::check!(entry.is_none(), "an unmapped page is in the direct map: {:?}", entry);
        let zero = crate::memory::ephemeral::with_frame(page.addr(), |p| {
            // SAFETY: the slot maps the page for the closure.
            unsafe { (p as *const u64).read_volatile() }
        });
        crate::check_eq!(zero, Some(0));
        crate::check_eq!(frames.free(0, page, 0), Ok(()));
        // Copy in and out of an owned secret frame through the slot; the
        // slot is empty afterwards.
        use crate::memory::ephemeral::{EPHEMERAL_BASE, copy_from, copy_to};
        let owned = alloc_frame(1, secret, true);
        crate::check!(owned.is_ok(), "{:?}", owned);
        let Ok(mut owned) = owned else { return Ok(()) };
        crate::check_eq!(copy_to(&mut owned, 4096 + 100, b"secret"), Some(()));
        let mut back = [0u8; 6];
        crate::check_eq!(copy_from(&owned, 4096 + 100, &mut back), Some(()));
        crate::check_eq!(&back, b"secret");
        crate::check_eq!(copy_to(&mut owned, 4090, b"too long"), None, "crossed a page");
        crate::check_eq!(copy_to(&mut owned, 8190, b"ab!"), None, "left the block");
        crate::check!(leaf(crate::arch::cpu::read_cr3(), EPHEMERAL_BASE).is_none(), "the slot stayed mapped");
        drop(owned);
        let stats = frames.stats();
        let into_secret: u64 = Freetype::all().map(|from| stats.converted(from, secret)).sum();
        crate::check!(into_secret >= 1, "no pageblock was converted to {}", secret);
        crate::check!(stats.flushes_local >= 1);
        Ok(())
    }
}

mod fallback_tests;
