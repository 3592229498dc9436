//! In-kernel tests of moving user frames: what `migrate` refuses, that a
//! move really drops the old translation, secret frames through the slot,
//! and compaction serving page tables from pageblocks crowded with user
//! frames (and falling back when a move is refused).

use super::USER_FRAMES;
use crate::arch::recovery::Faulted;
use crate::memory::direct_map::DIRECT_MAP_BASE;
use crate::memory::frames::{self, Frame, PAGE_TABLES};
use crate::memory::held_frames::{Chain, PageblockSet};
use crate::memory::paging::{self, AddressSpace, KERNEL_MAP_BASE, MapFlags, PageSize};
use crate::memory::{ephemeral, sealed};
use crate::testing::{TestFailure, TestResult};
use ptalloc::{AllocFlags, Freetype, Migrate, MigrateError, Mobility, Pfn, Protection};

/// Movable user memory the direct map shows.
const MOVABLE: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};
/// Movable user memory hidden from the direct map.
const SECRET: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Unmapped,
};
const RW: MapFlags = MapFlags {
    writable: true,
    executable: false,
};
/// Where the tests map user pages: one page table's worth from here.
const USER_BASE: u64 = 0x7000_0000;
/// Frames per 2 MiB pageblock.
const PAGEBLOCK_FRAMES: u64 = 1 << ptalloc::PAGEBLOCK_ORDER;

fn fail(line: u32, message: core::fmt::Arguments<'_>) -> TestFailure {
    TestFailure::new(file!(), line, message)
}

fn allocator() -> Result<&'static frames::FrameAllocator, TestFailure> {
    frames::allocator().ok_or_else(|| fail(line!(), format_args!("no allocator")))
}

fn new_space() -> Result<AddressSpace, TestFailure> {
    AddressSpace::new().map_err(|e| fail(line!(), format_args!("no user space: {e:?}")))
}

fn owned(order: u32, freetype: Freetype) -> Result<Frame, TestFailure> {
    frames::alloc_frame(order, freetype, true)
        .map_err(|e| fail(line!(), format_args!("no {freetype} frame: {e:?}")))
}

fn map(space: &AddressSpace, virt: u64, frame: Frame) -> TestResult {
    space
        .map(virt, frame, RW)
        .map_err(|e| fail(line!(), format_args!("map at {virt:#x}: {:?}", e.error)))
}

/// Word `index` of the pattern `seed` writes: distinct per seed and word.
fn pattern(seed: u64, index: u64) -> u64 {
    (seed << 40) ^ (index << 3) ^ 0x6d6f_7665_0000_0000
}

/// Fills the mapped frame at `phys` with `seed`'s pattern, through the
/// direct map.
fn write_pattern(phys: u64, seed: u64) {
    let words = (DIRECT_MAP_BASE + phys) as *mut u64;
    for index in 0..512 {
        // SAFETY: a mapped 4 KiB frame the test holds, writable through
        // the direct map.
        unsafe {
            words
                .add(index as usize)
                .write_volatile(pattern(seed, index))
        };
    }
}

/// True if the mapped frame at `phys` holds `seed`'s pattern.
fn holds_pattern(phys: u64, seed: u64) -> bool {
    let words = (DIRECT_MAP_BASE + phys) as *const u64;
    // SAFETY: a mapped 4 KiB frame a test space maps, read through the
    // direct map.
    (0..512)
        .all(|index| unsafe { words.add(index as usize).read_volatile() } == pattern(seed, index))
}

/// Reads the user word at `virt` in whatever space is loaded here.
fn read_user(virt: u64) -> Result<u64, Faulted> {
    // SAFETY: an aligned user address of the space loaded here; a fault
    // resumes at the probe's recovery point.
    unsafe { crate::arch::recovery::read_user_u64_if_mapped(virt as *const u64) }
}

/// A destination for a move the test makes itself, as compaction would:
/// a block the allocator hands out for the owner to fill.
fn destination(freetype: Freetype) -> Result<Pfn, TestFailure> {
    allocator()?
        .alloc(0, 0, freetype, AllocFlags::empty())
        .map_err(|e| fail(line!(), format_args!("no destination: {e:?}")))
}

crate::kernel_test! {
    /// `migrate` moves only what the reverse map records, with the order
    /// and freetype recorded, and never waits for the map's lock: a frame
    /// of the wrong order or freetype, one mapped nowhere, an unmovable
    /// frame in a user space and a movable one in the kernel space are
    /// `NotOwned`; with the map's lock held, `Pinned`. Each refusal leaves
    /// the mapping, the contents and the record as they were; then the
    /// same move, allowed, repoints the leaf, and unmap hands back the new
    /// frame.
    fn migrate_moves_only_what_the_reverse_map_records() -> TestResult {
        let frames = allocator()?;
        let space = new_space()?;
        let page = owned(0, MOVABLE)?;
        let from = page.addr();
        write_pattern(from, 1);
        let (recorded_before, _) = paging::reverse_map_counts();
        map(&space, USER_BASE, page)?;
        let (recorded_mapped, _) = paging::reverse_map_counts();
        let to = destination(MOVABLE)?;
        let counts = USER_FRAMES.counts();
        let from_pfn = Pfn(from / 4096);
        let migrate = |from: Pfn, order: u32, ft: Freetype| USER_FRAMES.migrate(from, to, order, ft);
        let wrong_freetype = migrate(from_pfn, 0, SECRET);
        let wrong_order = migrate(from_pfn, 1, MOVABLE);
        let busy = {
            let held = paging::try_lock_rmap();
            crate::check!(held.is_some(), "the reverse map's lock is held");
            migrate(from_pfn, 0, MOVABLE)
        };
        let loose = owned(0, MOVABLE)?;
        let mapped_nowhere = migrate(Pfn(loose.addr() / 4096), 0, MOVABLE);
        let kernel_page = owned(0, Freetype::KERNEL)?;
        let kernel_pfn = Pfn(kernel_page.addr() / 4096);
        map(&space, USER_BASE + 0x1000, kernel_page)?;
        let unmovable = migrate(kernel_pfn, 0, MOVABLE);
        let in_kernel_space = match paging::kernel_space() {
            Some(kernel) => {
                let virt = KERNEL_MAP_BASE + (7 << 30);
                let kernel_movable = owned(0, MOVABLE)?;
                let pfn = Pfn(kernel_movable.addr() / 4096);
                kernel.map(virt, kernel_movable, RW).map_err(|e| fail(line!(), format_args!("{:?}", e.error)))?;
                let result = migrate(pfn, 0, MOVABLE);
                drop(kernel.unmap(virt, PageSize::Small));
                result
            }
            None => Err(MigrateError::NotOwned),
        };
        drop(loose);
        let unchanged = space.translate(USER_BASE).map(|t| t.0) == Some(from)
            && holds_pattern(from, 1)
            && paging::try_lock_rmap().and_then(|rmap| rmap.get(from)).is_some_and(|m| m.virt == USER_BASE);
        let refusals = USER_FRAMES.counts();
        // Now the move itself.
        let moved = migrate(from_pfn, 0, MOVABLE);
        let translated = space.translate(USER_BASE).map(|t| t.0);
        let copied = holds_pattern(to.addr(), 1);
        let after = USER_FRAMES.counts();
        // The old frame is the allocator's again (compaction would claim it).
        crate::check_eq!(frames.free(0, Pfn(from / 4096), 0), Ok(()));
        let handed_back = space.unmap(USER_BASE, PageSize::Small).map(|f| f.addr());
        let (recorded_unmapped, _) = paging::reverse_map_counts();
        drop(space);

        crate::check_eq!(recorded_mapped, recorded_before + 1, "the movable user page was not recorded");
        crate::check_eq!(wrong_freetype, Err(MigrateError::NotOwned));
        crate::check_eq!(wrong_order, Err(MigrateError::NotOwned));
        crate::check_eq!(busy, Err(MigrateError::Pinned));
        crate::check_eq!(mapped_nowhere, Err(MigrateError::NotOwned));
        crate::check_eq!(unmovable, Err(MigrateError::NotOwned));
        crate::check_eq!(in_kernel_space, Err(MigrateError::NotOwned));
        crate::check!(unchanged, "a refused move changed the mapping or the contents");
        crate::check_eq!(refusals.refused_not_owned - counts.refused_not_owned, 5);
        crate::check_eq!(refusals.refused_busy - counts.refused_busy, 1);
        crate::check_eq!(refusals.moved, counts.moved);
        crate::check_eq!(moved, Ok(()));
        crate::check_eq!(translated, Some(to.addr()));
        crate::check!(copied, "the contents did not move");
        crate::check_eq!(after.moved - counts.moved, 1);
        // Not loaded on this CPU: the move needed no INVLPG.
        crate::check_eq!(after.flushed_where_loaded, counts.flushed_where_loaded);
        crate::check_eq!(handed_back, Ok(to.addr()), "unmap did not hand back the new frame");
        crate::check_eq!(recorded_unmapped, recorded_before);
        Ok(())
    }
}

crate::kernel_test! {
    /// The attack: after a move, the old frame goes back to the allocator
    /// (and, under compaction, into page-table memory), so the user space
    /// must not reach it any more. With the space loaded, a read through
    /// the user address fills the TLB with the old frame; the frame moves;
    /// the old frame is scribbled on, as its next owner would; a second
    /// read must see the moved contents, not the scribble. Under
    /// `ptprot=none` nothing else flushes the TLB on the way (no window
    /// writes PKRS or CR0), so this sees a missing flush even under TCG: it
    /// fails with the move's INVLPG removed. Under `pks` and `ro` the
    /// window's register writes flush TCG's whole TLB, and it proves less.
    fn a_moved_page_drops_its_old_translation() -> TestResult {
        const BEFORE: u64 = 0x5afe_0000_0000_0001;
        const SCRIBBLE: u64 = 0xbad0_0000_0000_0002;
        let frames = allocator()?;
        let space = new_space()?;
        let page = owned(0, MOVABLE)?;
        let from = page.addr();
        // SAFETY: our frame, mapped writable by the direct map.
        unsafe { ((DIRECT_MAP_BASE + from) as *mut u64).write_volatile(BEFORE) };
        map(&space, USER_BASE, page)?;
        let to = destination(MOVABLE)?;
        let counts = USER_FRAMES.counts();
        space.load();
        let first = read_user(USER_BASE);
        let moved = USER_FRAMES.migrate(Pfn(from / 4096), to, 0, MOVABLE);
        if moved.is_ok() {
            // SAFETY: the old frame is ours again (the move gave it up),
            // mapped writable by the direct map.
            unsafe { ((DIRECT_MAP_BASE + from) as *mut u64).write_volatile(SCRIBBLE) };
        }
        let second = read_user(USER_BASE);
        crate::memory::paging::load_kernel_root();
        let translated = space.translate(USER_BASE).map(|t| t.0);
        let after = USER_FRAMES.counts();
        if moved.is_ok() {
            crate::check_eq!(frames.free(0, Pfn(from / 4096), 0), Ok(()));
        } else {
            crate::check_eq!(frames.free(0, to, 0), Ok(()));
        }
        drop(space);

        crate::check_eq!(first, Ok(BEFORE));
        crate::check_eq!(moved, Ok(()));
        crate::check_eq!(translated, Some(to.addr()));
        crate::check!(second != Ok(SCRIBBLE), "the user space still reads the old frame: a stale translation");
        crate::check_eq!(second, Ok(BEFORE));
        crate::check_eq!(after.flushed_where_loaded - counts.flushed_where_loaded, 1, "the loaded space was not flushed by INVLPG");
        Ok(())
    }
}

crate::kernel_test! {
    /// A secret (`Unmapped`) movable frame moves through the ephemeral
    /// slot: its contents arrive, neither frame ever shows in the direct
    /// map, the slot is empty afterwards; and while the slot is in use
    /// (here, by the test itself) the move is refused with `Pinned`,
    /// changing nothing, rather than waiting for it.
    fn secret_pages_move_through_the_slot() -> TestResult {
        frames::needs_free_pageblocks(1, "to convert to Unmapped")?;
        use crate::memory::walk::leaf;
        let frames = allocator()?;
        let space = new_space()?;
        let mut secret = owned(0, SECRET)?;
        let from = secret.addr();
        let mut page = [0u8; 4096];
        for (i, byte) in page.iter_mut().enumerate() {
            *byte = (i * 7 + 3) as u8;
        }
        crate::check_eq!(ephemeral::copy_to(&mut secret, 0, &page), Some(()));
        map(&space, USER_BASE, secret)?;
        let to = destination(SECRET)?;
        let counts = USER_FRAMES.counts();
        let other = owned(0, Freetype::KERNEL)?;
        let busy = ephemeral::with_frame(other.addr(), |_| USER_FRAMES.migrate(Pfn(from / 4096), to, 0, SECRET));
        let still = space.translate(USER_BASE).map(|t| t.0);
        let moved = USER_FRAMES.migrate(Pfn(from / 4096), to, 0, SECRET);
        let translated = space.translate(USER_BASE).map(|t| t.0);
        let root = crate::arch::cpu::read_cr3();
        let in_direct_map = [from, to.addr()].map(|phys| leaf(root, DIRECT_MAP_BASE + phys).is_some());
        let slot_left = [0, 4096].map(|offset| leaf(root, ephemeral::EPHEMERAL_BASE + offset).is_some());
        let after = USER_FRAMES.counts();
        let mut back = [0u8; 4096];
        let handed_back = space.unmap(USER_BASE, PageSize::Small);
        let read = handed_back.as_ref().ok().and_then(|frame| ephemeral::copy_from(frame, 0, &mut back));
        let handed_back = handed_back.map(|f| f.addr());
        match moved {
            Ok(()) => crate::check_eq!(frames.free(0, Pfn(from / 4096), 0), Ok(())),
            Err(_) => crate::check_eq!(frames.free(0, to, 0), Ok(())),
        }
        drop(space);

        crate::check_eq!(busy, Some(Err(MigrateError::Pinned)));
        crate::check_eq!(still, Some(from), "a refused move changed the mapping");
        crate::check_eq!(after.refused_busy - counts.refused_busy, 1);
        crate::check_eq!(moved, Ok(()));
        crate::check_eq!(translated, Some(to.addr()));
        crate::check_eq!(handed_back, Ok(to.addr()));
        crate::check_eq!(read, Some(()));
        crate::check!(back == page, "the secret's contents did not arrive");
        crate::check_eq!(in_direct_map, [false, false], "a secret frame is in the direct map");
        crate::check_eq!(slot_left, [false, false], "the slot stayed mapped");
        Ok(())
    }
}

/// Pageblocks of movable user frames a [`Crowd`] sets up, at most.
const MAX_IN_PLAY: usize = 6;
/// Kernel pages a [`Crowd`] leaves free inside full kernel pageblocks:
/// the room the frames of the last crowded pageblock move to (all of them
/// may have gathered there). Small machines have a single pageblock to
/// crowd, whose frame has nowhere else to go.
const SPARE: u64 = MAX_IN_PLAY as u64 + 2;

/// One movable user frame of a [`Crowd`].
#[derive(Clone, Copy, Debug)]
struct Kept {
    virt: u64,
    /// Where it was when mapped.
    phys: u64,
    seed: u64,
}

/// Memory crowded so that a page table can come only from compaction (or,
/// failing that, the single-page fallback): no whole pageblock is free,
/// and every pageblock that compaction could empty holds exactly one live
/// movable frame, mapped in a user space with a pattern. Every other
/// pageblock is full (kernel pages in every free fragment, whole
/// pageblocks held as 2 MiB frames, the conversion watermark's ones held
/// as page tables) but for [`SPARE`] kernel pages, freed last inside full
/// kernel pageblocks, which no conversion can take.
/// Dropping it gives everything back.
struct Crowd {
    space: Option<AddressSpace>,
    held: PageblockSet,
    table_blocks: heapless::Vec<Pfn, 16>,
    fill: Chain,
    tables: Chain,
    kept: heapless::Vec<Kept, MAX_IN_PLAY>,
    /// Pageblocks of movable frames.
    in_play: u64,
    /// Kernel pages left free.
    spare: u64,
    /// Frames the allocator refused to give back (must stay 0).
    free_failures: u64,
}

impl Crowd {
    /// Sets memory up as above; skips on a machine without a whole free
    /// pageblock beyond the watermark to crowd.
    fn new() -> Result<Self, TestFailure> {
        let frames = allocator()?;
        let watermark = crate::boot_state().memory.frames.conversion_watermark as u64;
        frames::needs_free_pageblocks(watermark + 1, "to crowd with movable user frames")?;
        let mut crowd = Crowd {
            space: Some(new_space()?),
            held: PageblockSet::new(),
            table_blocks: heapless::Vec::new(),
            fill: Chain::new(false),
            tables: Chain::new(true),
            kept: heapless::Vec::new(),
            in_play: 0,
            spare: 0,
            free_failures: 0,
        };
        // 0. The space's tables, while memory is plentiful: a kernel page
        //    at the end of the page table the movable frames will share.
        let anchor = owned(0, Freetype::KERNEL)?;
        map(
            crowd.space()?,
            USER_BASE + (PAGEBLOCK_FRAMES - 1) * 4096,
            anchor,
        )?;
        // 1. Every whole free pageblock held as a 2 MiB kernel frame (the
        //    watermark's stay free: kernel memory may not take them).
        let mut held_blocks = 0u64;
        while let Ok(block) = frames.alloc(
            0,
            ptalloc::PAGEBLOCK_ORDER,
            Freetype::KERNEL,
            AllocFlags::empty(),
        ) {
            if crowd.held.insert(block) {
                held_blocks += 1;
            } else {
                crowd.free_failures +=
                    u64::from(frames.free(0, block, ptalloc::PAGEBLOCK_ORDER).is_err());
                break;
            }
        }
        // 2. Every free fragment of mapped memory, as kernel pages.
        while let Ok(page) = frames.alloc(0, 0, Freetype::KERNEL, AllocFlags::empty()) {
            crowd.fill.push(page);
        }
        // 3. A few pageblocks back; movable frames fill them (converting
        //    them: no fragment is left to borrow from), then all but the
        //    first of each pageblock go back.
        crowd.in_play = held_blocks.min(MAX_IN_PLAY as u64);
        for _ in 0..crowd.in_play {
            if let Some(block) = crowd.held.pop() {
                crowd.free_failures +=
                    u64::from(frames.free(0, block, ptalloc::PAGEBLOCK_ORDER).is_err());
            }
        }
        let mut movable = Chain::new(false);
        while movable.len < (crowd.in_play + 1) * PAGEBLOCK_FRAMES
            && let Ok(page) = frames.alloc(0, 0, MOVABLE, AllocFlags::empty())
        {
            movable.push(page);
        }
        let mut firsts: heapless::Vec<Pfn, MAX_IN_PLAY> = heapless::Vec::new();
        while let Some(page) = movable.pop() {
            let block = page.0 / PAGEBLOCK_FRAMES;
            if !firsts.iter().any(|f| f.0 / PAGEBLOCK_FRAMES == block) && firsts.push(page).is_ok()
            {
                continue;
            }
            crowd.free_failures += u64::from(frames.free(0, page, 0).is_err());
        }
        frames.drain_caches();
        // 4. The kept frames, each with its pattern, mapped side by side.
        for (i, &page) in firsts.iter().enumerate() {
            let (virt, seed) = (USER_BASE + i as u64 * 4096, 0x100 + i as u64);
            write_pattern(page.addr(), seed);
            // The test allocated these blocks above and holds them: hand
            // each to the mapping as an owned frame (a refused one comes
            // back and is freed, and so are those not yet mapped).
            let mapped = map(crowd.space()?, virt, Frame::from_mapping(page.addr(), 0));
            if let Err(failure) = mapped {
                for &rest in &firsts[i + 1..] {
                    drop(Frame::from_mapping(rest.addr(), 0));
                }
                return Err(failure);
            }
            // `firsts` and `kept` have the same capacity.
            let _ = crowd.kept.push(Kept {
                virt,
                phys: page.addr(),
                seed,
            });
        }
        // 5. The watermark's whole pageblocks, as page tables.
        while frames::whole_free_pageblocks() > 0 && !crowd.table_blocks.is_full() {
            let Ok(block) = frames.alloc(
                0,
                ptalloc::PAGEBLOCK_ORDER,
                PAGE_TABLES,
                AllocFlags::empty(),
            ) else {
                break;
            };
            // Not full: checked by the loop condition.
            let _ = crowd.table_blocks.push(block);
        }
        // 6. The spare kernel pages, last, so nothing above took them.
        for _ in 0..SPARE {
            if let Some(page) = crowd.fill.pop() {
                crowd.free_failures += u64::from(frames.free(0, page, 0).is_err());
                crowd.spare += 1;
            }
        }
        frames.drain_caches();
        let whole = frames::whole_free_pageblocks();
        crate::check_eq!(
            crowd.kept.len() as u64,
            crowd.in_play,
            "movable frames landed in other pageblocks"
        );
        crate::check_eq!(whole, 0, "whole free pageblocks left");
        crate::check_eq!(
            crowd.spare,
            SPARE,
            "too few kernel fragments to leave spare"
        );
        crate::check_eq!(crowd.free_failures, 0);
        Ok(crowd)
    }

    fn space(&self) -> Result<&AddressSpace, TestFailure> {
        self.space
            .as_ref()
            .ok_or_else(|| fail(line!(), format_args!("no space")))
    }

    /// Kept frames not where they are expected to be, or whose contents
    /// changed; `moved` says whether each may have moved.
    fn misplaced(&self, moved_allowed: bool) -> Result<(u64, u64), TestFailure> {
        let space = self.space()?;
        let (mut moved, mut wrong) = (0, 0);
        for kept in &self.kept {
            let Some((phys, _)) = space.translate(kept.virt) else {
                wrong += 1;
                continue;
            };
            let here = phys == kept.phys;
            let recorded = paging::try_lock_rmap()
                .and_then(|rmap| rmap.get(phys))
                .is_some_and(|m| m.virt == kept.virt && m.root() == space.root());
            // A frame moved out of a pageblock that compaction emptied:
            // that pageblock is page-table memory now, and the user space
            // must not reach it.
            let old_reachable = !here && !paging::is_page_table_memory(kept.phys);
            if !holds_pattern(phys, kept.seed)
                || !recorded
                || paging::is_page_table_memory(phys)
                || (!here && !moved_allowed)
                || old_reachable
            {
                wrong += 1;
            }
            moved += u64::from(!here);
        }
        Ok((moved, wrong))
    }

    /// Takes one page-table page, as `paging` does, and keeps it.
    fn take_table(&mut self) -> Result<Pfn, ptalloc::AllocError> {
        let page = allocator()
            .map_err(|_| ptalloc::AllocError::OutOfMemory)?
            .alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO)?;
        self.tables.push(page);
        Ok(page)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let Some(frames) = frames::allocator() else {
            return;
        };
        while let Some(page) = self.tables.pop() {
            self.free_failures += u64::from(frames.free(0, page, 0).is_err());
        }
        // The space frees the frames it maps (moved or not) and its tables.
        drop(self.space.take());
        for &block in &self.table_blocks {
            self.free_failures +=
                u64::from(frames.free(0, block, ptalloc::PAGEBLOCK_ORDER).is_err());
        }
        while let Some(page) = self.fill.pop() {
            self.free_failures += u64::from(frames.free(0, page, 0).is_err());
        }
        while let Some(block) = self.held.pop() {
            self.free_failures +=
                u64::from(frames.free(0, block, ptalloc::PAGEBLOCK_ORDER).is_err());
        }
        frames.drain_caches();
        if self.free_failures != 0 {
            panic!(
                "a crowded test could not give back {} blocks",
                self.free_failures
            );
        }
    }
}

/// Page-table pages a crowded test takes at most: the free page-table
/// pages it starts with (at most a few pageblocks' worth) and one
/// pageblock per compaction.
const MAX_TABLES: u64 = (MAX_IN_PLAY as u64 + 8) * PAGEBLOCK_FRAMES;

crate::kernel_test! {
    /// Page tables come from pageblocks crowded with user frames: with no
    /// whole free pageblock, and one live movable frame (mapped in a user
    /// space, with a pattern) in every pageblock compaction could empty
    /// (up to six; one on a small machine), page-table pages keep coming
    /// by compaction: the sparsest pageblock is emptied by moving its
    /// frames (to another crowded pageblock, the last ones to spare kernel
    /// pages), then converted, until every crowded pageblock is page-table
    /// memory. The single-page fallback never serves meanwhile, and no
    /// move is refused. Every moved frame is translated to a new frame
    /// holding its pattern, recorded there, and its old frame is
    /// page-table memory the user space no longer reaches; the walk
    /// passes.
    fn page_tables_come_from_compacted_user_pageblocks() -> TestResult {
        let (recorded_before, _) = paging::reverse_map_counts();
        let mut crowd = Crowd::new()?;
        let frames = allocator()?;
        let before = frames.stats();
        let counts = USER_FRAMES.counts();
        // Every crowded pageblock can be emptied, the last into the spare.
        let target = crowd.in_play;
        let (mut taken, mut unrecognised, mut fallback_while_compacting) = (0u64, 0u64, 0u64);
        let mut error = None;
        let mut now = before.clone();
        while now.compactions - before.compactions < target && taken < MAX_TABLES {
            match crowd.take_table() {
                Ok(page) => {
                    taken += 1;
                    unrecognised += u64::from(!paging::is_page_table_memory(page.addr()));
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            now = frames.stats();
            fallback_while_compacting = now.single_page_fallbacks - before.single_page_fallbacks;
        }
        let (moved_frames, wrong) = crowd.misplaced(true)?;
        let walk = crate::memory::verify::verify();
        let after = USER_FRAMES.counts();
        let compactions = now.compactions - before.compactions;
        let pages_moved = now.pages_moved - before.pages_moved;
        defmt::info!(
            "compaction: {=u64} page tables from {=u64} crowded pageblocks with a user frame each: {=u64} compactions ({=u64} failed), {=u64} pages moved ({=u64} frames away from where they were mapped), {=u64} single-page fallbacks, {=u64} refused moves",
            taken,
            crowd.in_play,
            compactions,
            now.compactions_failed - before.compactions_failed,
            pages_moved,
            moved_frames,
            now.single_page_fallbacks - before.single_page_fallbacks,
            now.migrations_refused - before.migrations_refused
        );
        drop(crowd);
        let unprotected = crate::boot_state().ptprot == pkeys::ProtectionPolicy::None;
        // Dropping the space forgot every frame it mapped, moved or not.
        crate::check_eq!(paging::reverse_map_counts().0, recorded_before);

        crate::check_eq!(error, None);
        crate::check!(compactions == target, "{} compactions after {} page tables, expected {}", compactions, taken, target);
        crate::check!(compactions >= 1, "no compaction");
        crate::check!(pages_moved >= compactions, "{} pages moved in {} compactions", pages_moved, compactions);
        crate::check_eq!(after.moved - counts.moved, pages_moved, "the allocator and the owner disagree on moves");
        crate::check_eq!(now.migrations_refused, before.migrations_refused);
        crate::check_eq!(fallback_while_compacting, 0, "the single-page fallback served while compaction could");
        crate::check_eq!(unrecognised, 0, "page tables the sealed record does not call page-table memory");
        crate::check!(moved_frames >= target, "{} frames moved, {} pageblocks emptied", moved_frames, target);
        crate::check_eq!(wrong, 0, "user frames with wrong contents, records or old frames still reachable");
        crate::check!(walk.passed() || unprotected, "walk: {:?}", walk.failure());
        Ok(())
    }
}

crate::kernel_test! {
    /// A move refused because the reverse map is busy (the test holds its
    /// lock, as a `map` or `unmap` in progress would) changes nothing:
    /// the compaction fails, the allocation climbs to the next rung and
    /// gets a single page-table page, and every user frame is where it
    /// was with its contents and record. Once the lock is free,
    /// compaction serves again, without the fallback.
    fn a_refused_move_changes_nothing_and_falls_back() -> TestResult {
        let (recorded_before, _) = paging::reverse_map_counts();
        let mut crowd = Crowd::new()?;
        let frames = allocator()?;
        let before = frames.stats();
        let counts = USER_FRAMES.counts();
        let held = paging::try_lock_rmap();
        crate::check!(held.is_some(), "the reverse map's lock is held");
        let (mut last, mut error) = (None, None);
        let mut now = before.clone();
        while now.migrations_refused == before.migrations_refused && crowd.tables.len < MAX_TABLES {
            match crowd.take_table() {
                Ok(page) => last = Some(page),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            now = frames.stats();
        }
        drop(held);
        let refused = USER_FRAMES.counts();
        let (moved_frames, wrong) = crowd.misplaced(false)?;
        let single = last.is_some_and(|page| sealed::is_single_page(page.addr()));
        // The lock is free again: the next page table that needs a
        // pageblock gets it by compaction.
        let at_refusal = now.clone();
        while now.compactions == at_refusal.compactions && crowd.tables.len < 2 * MAX_TABLES {
            if let Err(e) = crowd.take_table() {
                error = Some(e);
                break;
            }
            now = frames.stats();
        }
        defmt::info!(
            "compaction refused (reverse map busy): after {=u64} page tables, {=u64} refused moves, {=u64} failed pageblocks, {=u64} single-page fallbacks ({=u64} 2M->4K splits); then, the lock free, {=u64} compaction, {=u64} pages moved, {=u64} more fallbacks",
            crowd.tables.len,
            at_refusal.migrations_refused - before.migrations_refused,
            at_refusal.compactions_failed - before.compactions_failed,
            at_refusal.single_page_fallbacks - before.single_page_fallbacks,
            at_refusal.splits_2m - before.splits_2m,
            now.compactions - at_refusal.compactions,
            now.pages_moved - at_refusal.pages_moved,
            now.single_page_fallbacks - at_refusal.single_page_fallbacks
        );
        let walk = crate::memory::verify::verify();
        drop(crowd);
        let unprotected = crate::boot_state().ptprot == pkeys::ProtectionPolicy::None;
        // Dropping the space forgot every frame it mapped, moved or not.
        crate::check_eq!(paging::reverse_map_counts().0, recorded_before);

        crate::check_eq!(error, None);
        // One compaction tries each crowded pageblock once, up to
        // ptalloc's limit, and every one is refused.
        let tried = at_refusal.migrations_refused - before.migrations_refused;
        crate::check!(
            (1..=ptalloc::CANDIDATES_PER_COMPACTION as u64).contains(&tried),
            "{} refused moves in one compaction",
            tried
        );
        crate::check_eq!(refused.refused_busy - counts.refused_busy, tried);
        crate::check_eq!(at_refusal.compactions_failed - before.compactions_failed, tried);
        crate::check_eq!(at_refusal.compactions, before.compactions);
        crate::check_eq!(at_refusal.pages_moved, before.pages_moved);
        crate::check_eq!(refused.moved, counts.moved);
        // One single page for the page table, and one more for the split
        // reserve if protecting it split a 2 MiB mapping (the refill
        // replaces the reserve page the split took).
        let splits = at_refusal.splits_2m - before.splits_2m;
        crate::check!(
            at_refusal.single_page_fallbacks - before.single_page_fallbacks == 1 + splits,
            "{} single-page fallbacks for one refused allocation and {} splits",
            at_refusal.single_page_fallbacks - before.single_page_fallbacks,
            splits
        );
        crate::check!(single, "the page table after the refusal is not a single page-table page");
        crate::check_eq!((moved_frames, wrong), (0, 0), "a refused move changed a user frame");
        crate::check_eq!(now.compactions - at_refusal.compactions, 1);
        crate::check_eq!(now.single_page_fallbacks, at_refusal.single_page_fallbacks);
        crate::check!(walk.passed() || unprotected, "walk: {:?}", walk.failure());
        Ok(())
    }
}
