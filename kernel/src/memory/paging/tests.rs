//! In-kernel tests of the page-table module: map and unmap in user and
//! kernel spaces, bad input, the walk against planted violations, and the
//! churn measurement. They run under QEMU (`test=` on the command line);
//! they may use the module's private helpers.

use super::*;
use crate::arch::{cpu, pks};
use crate::testing::TestFailure;

/// An owned, zeroed kernel frame of `order` for a test.
fn frame(order: u32) -> Result<Frame, TestFailure> {
    frames::alloc_frame(order, ptalloc::Freetype::KERNEL, true)
        .map_err(|e| TestFailure::new(file!(), line!(), format_args!("no frame: {e:?}")))
}

/// Expects `map` to have refused with `expected`, and hands the frame back.
fn refused(
    result: Result<(), MapError>,
    expected: PagingError,
    line: u32,
) -> Result<Frame, TestFailure> {
    match result {
        Err(MapError { error, frame }) if error == expected => Ok(frame),
        Err(MapError { error, .. }) => Err(TestFailure::new(
            file!(),
            line,
            format_args!("map refused with {error:?}, not {expected:?}"),
        )),
        Ok(()) => Err(TestFailure::new(
            file!(),
            line,
            format_args!("map succeeded; expected {expected:?}"),
        )),
    }
}

/// The address of the frame `unmap` handed back (which it then frees).
fn unmapped(result: Result<Frame, PagingError>) -> Result<u64, PagingError> {
    result.map(|frame| frame.addr())
}

const RW: MapFlags = MapFlags {
    writable: true,
    executable: false,
};

crate::kernel_test! {
    /// Map and unmap, and bad input refused without change. A frame
    /// outside RAM, a page table or a free frame cannot be mapped at all:
    /// `map` takes an owned `Frame`, which only the allocator makes, for
    /// data freetypes only.
    fn map_unmap_and_bad_input() -> TestResult {
        frames::needs_free_pageblocks(1, "for a 2 MiB frame")?;
        let space = AddressSpace::new().map_err(|e| {
            TestFailure::new(file!(), line!(), format_args!("{e:?}"))
        })?;
        let (small, large) = (frame(0)?, frame(9)?);
        let (small_addr, large_addr) = (small.addr(), large.addr());
        let virt = 0x4000_0000;
        let small = refused(space.map(virt + 1, small, RW), PagingError::Misaligned, line!())?;
        let small = refused(space.map(USER_END, small, RW), PagingError::OutOfRange, line!())?;
        crate::check_eq!(unmapped(space.unmap(virt, PageSize::Small)), Err(PagingError::NotMapped));
        crate::check!(space.map(virt, small, RW).is_ok(), "map failed");
        // Over an existing mapping: refused, and the frame comes back.
        let large = refused(space.map(virt, large, RW), PagingError::AlreadyMapped, line!())?;
        crate::check_eq!(space.translate(virt + 8).map(|t| t.0), Some(small_addr + 8));
        crate::check_eq!(unmapped(space.unmap(virt, PageSize::Large)), Err(PagingError::NotMapped));
        crate::check!(space.map(virt + (2 << 20), large, RW).is_ok(), "large map failed");
        crate::check_eq!(space.translate(virt + (2 << 20) + 0x1234).map(|t| t.0), Some(large_addr + 0x1234));
        crate::check_eq!(unmapped(space.unmap(virt, PageSize::Small)), Ok(small_addr));
        crate::check_eq!(unmapped(space.unmap(virt + (2 << 20), PageSize::Large)), Ok(large_addr));
        crate::check_eq!(space.translate(virt), None);
        // A large page over a table of small ones is refused.
        let (small, large) = (frame(0)?, frame(9)?);
        let small_addr = small.addr();
        crate::check!(space.map(virt + 0x1000, small, RW).is_ok(), "map failed");
        let large = refused(space.map(virt, large, RW), PagingError::AlreadyMapped, line!())?;
        crate::check_eq!(space.translate(virt + 0x1000).map(|t| t.0), Some(small_addr));
        // A block of another size has no page size.
        let odd = frame(1)?;
        drop(refused(space.map(virt + (4 << 20), odd, RW), PagingError::FrameSize, line!())?);
        // Page-table memory cannot be had as a frame at all.
        crate::check_eq!(
            frames::alloc_frame(0, PAGE_TABLES, false).map(|f| f.addr()),
            Err(frames::FrameError::ProtectedFreetype)
        );
        let protecting = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
        crate::check!(!protecting || crate::memory::verify::verify().passed(), "the walk failed with a live user space");
        // Dropping the space frees its tables and the frame it still maps.
        let stats = frames::stats().map(|s| s.frees);
        drop(space);
        drop(large);
        crate::check!(frames::stats().map(|s| s.frees) > stats, "nothing was freed");
        Ok(())
    }
}

crate::kernel_test! {
    /// Frames are owned: a frame mapped by a space is held by the mapping
    /// until unmap hands it back, so it cannot be freed while mapped, and
    /// its pageblock (not whole-free) cannot be converted under the
    /// mapping. The attack this closes: map a frame writable, let its
    /// pageblock become page-table memory, and write page tables through
    /// the old mapping. Here the conversion never takes the pageblock; a
    /// mapping of page-table memory made anyway (the write the attack
    /// needs, planted) is what the walk reports.
    fn a_mapped_frame_keeps_its_pageblock() -> TestResult {
        frames::needs_free_pageblocks(1, "to convert")?;
        let Some(allocator) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let space = AddressSpace::new().map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
        let data = frame(0)?;
        let phys = data.addr();
        let block_of = |phys: u64| allocator.frame_info(Pfn(phys / 4096)).and_then(|i| i.pageblock_freetype);
        crate::check!(space.map(0x4000_0000, data, RW).is_ok(), "map failed");
        // Take every whole free pageblock as page tables: conversions run,
        // but never on the mapped frame's pageblock.
        let mut taken: heapless::Vec<Pfn, 256> = heapless::Vec::new();
        while let Ok(block) = allocator.alloc(0, 9, PAGE_TABLES, AllocFlags::empty()) {
            if taken.push(block).is_err() {
                let _ = allocator.free(0, block, 9);
                break;
            }
        }
        let kept = block_of(phys);
        for &block in &taken {
            crate::check_eq!(allocator.free(0, block, 9), Ok(()));
        }
        crate::check!(!taken.is_empty(), "no pageblock was converted");
        crate::check_eq!(kept, Some(ptalloc::Freetype::KERNEL), "the mapped frame's pageblock changed freetype");
        crate::check_eq!(unmapped(space.unmap(0x4000_0000, PageSize::Small)), Ok(phys));
        Ok(())
    }
}

crate::kernel_test! {
    /// The kernel space: kernel-only 4 KiB and 2 MiB mappings, seen by a
    /// user space made afterwards, one window per operation, every table
    /// it made freed again (down to the region's PDPT), and bad input
    /// refused without change.
    fn kernel_space_map_unmap() -> TestResult {
        frames::needs_free_pageblocks(1, "for a 2 MiB frame")?;
        let Some(kernel) = kernel_space() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no kernel space")));
        };
        let result = check_kernel_space(kernel);
        // Whatever failed, leave the shared region as it was (unmapping
        // what is already unmapped is refused; a frame handed back is
        // freed).
        let _ = kernel.unmap(KERNEL_TEST_VIRT, PageSize::Small);
        let _ = kernel.unmap(KERNEL_TEST_VIRT + (2 << 20), PageSize::Large);
        result
    }
}

/// Where `kernel_space_map_unmap` maps: a 2 MiB-aligned address in the
/// kernel region, its 4 KiB page here and its 2 MiB page right after.
const KERNEL_TEST_VIRT: u64 = KERNEL_MAP_BASE + (5 << 30);

/// The body of `kernel_space_map_unmap`.
fn check_kernel_space(kernel: &AddressSpace) -> crate::testing::TestResult {
    let Some(frames) = frames::allocator() else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no allocator"),
        ));
    };
    let (small, large) = (frame(0)?, frame(9)?);
    let (small_addr, large_addr) = (small.addr(), large.addr());
    let virt = KERNEL_TEST_VIRT;
    let large_virt = virt + (2 << 20);
    crate::check!(kernel.is_kernel());
    let small = refused(
        kernel.map(virt + 8, small, RW),
        PagingError::Misaligned,
        line!(),
    )?;
    let small = refused(
        kernel.map(0x4000_0000, small, RW),
        PagingError::OutOfRange,
        line!(),
    )?;
    let small = refused(
        kernel.map(KERNEL_MAP_BASE + KERNEL_MAP_SIZE, small, RW),
        PagingError::OutOfRange,
        line!(),
    )?;
    let wx = MapFlags {
        writable: true,
        executable: true,
    };
    let small = refused(
        kernel.map(virt, small, wx),
        PagingError::WritableExecutable,
        line!(),
    )?;
    let hidden_type = ptalloc::Freetype {
        mobility: ptalloc::Mobility::Movable,
        protection: ptalloc::Protection::Unmapped,
    };
    if let Ok(hidden) = frames::alloc_frame(0, hidden_type, false) {
        drop(refused(
            kernel.map(virt, hidden, RW),
            PagingError::HiddenFrame,
            line!(),
        )?);
    }
    crate::check_eq!(
        unmapped(kernel.unmap(virt, PageSize::Small)),
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
    crate::check!(kernel.map(virt, small, RW).is_ok(), "map failed");
    windows[0] = pkrs() - start;
    let start = pkrs();
    crate::check!(
        kernel.map(large_virt, large, RW).is_ok(),
        "large map failed"
    );
    windows[1] = pkrs() - start;
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
        Some(large_addr + 0x1234)
    );

    // The mapping is the frame: write through it, read through the direct
    // map.
    // SAFETY: `virt` maps the small frame, zeroed, which the mapping holds
    // for this test.
    unsafe { (virt as *mut u64).write_volatile(0x5eed) };
    // SAFETY: the direct map shows the same frame, readable.
    let seen = unsafe { ((DIRECT_MAP_BASE + small_addr) as *const u64).read_volatile() };
    crate::check_eq!(seen, 0x5eed);

    // A user space made now shares the region; it cannot map there.
    let user = AddressSpace::new()
        .map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
    crate::check_eq!(user.translate(virt).map(|t| t.0), Some(small_addr));
    drop(refused(
        user.map(virt, frame(0)?, RW),
        PagingError::OutOfRange,
        line!(),
    )?);
    let protecting = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
    crate::check!(
        !protecting || crate::memory::verify::verify().passed(),
        "the walk failed with kernel mappings live"
    );
    drop(user);

    let start = pkrs();
    crate::check_eq!(
        unmapped(kernel.unmap(virt, PageSize::Small)),
        Ok(small_addr)
    );
    windows[2] = pkrs() - start;
    let start = pkrs();
    // This one empties the region's page directory, which goes back too.
    crate::check_eq!(
        unmapped(kernel.unmap(large_virt, PageSize::Large)),
        Ok(large_addr)
    );
    windows[3] = pkrs() - start;
    crate::check_eq!(kernel.translate(virt), None);
    crate::check!(
        crate::memory::walk::leaf(cpu::read_cr3(), virt).is_none(),
        "still in the live tables"
    );
    let pdpt = read(kernel.root(), index(KERNEL_MAP_BASE, 4));
    crate::check!(pdpt & PRESENT != 0, "the region's PDPT was freed");
    crate::check_eq!(read(pdpt & ADDRESS, index(virt, 3)), 0);
    // Every table made on the way, the user space's root and its refused
    // frame, and the two data frames were freed.
    let after = frames.stats();
    let made = after.allocations - before.allocations;
    crate::check!(made >= 4, "only {} allocations", made);
    crate::check_eq!(after.frees - before.frees, made + 2);
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
        frames::needs_free_pageblocks(2, "for a 2 MiB page-table block and a 2 MiB frame")?;
        if crate::boot_state().ptprot == pkeys::ProtectionPolicy::None {
            return Err(TestFailure::skipped("ptprot=none protects nothing"));
        }
        let Some(frames) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        // Targets (raw frames, never mapped as such): not a table, a
        // page-table page, a 2 MiB page-table block.
        let wanted = [(ptalloc::Freetype::KERNEL, 0), (PAGE_TABLES, 0), (PAGE_TABLES, 9)];
        let mut held: heapless::Vec<(Pfn, u32), 3> = heapless::Vec::new();
        for (freetype, order) in wanted {
            match frames.alloc(0, order, freetype, AllocFlags::ZERO) {
                // Three slots for three requests.
                Ok(frame) => drop(held.push((frame, order))),
                Err(_) => break,
            }
        }
        let result = match held.as_slice() {
            &[(not_a_table, _), (pt_page, _), (pt_block, _)] => {
                plant_in_user_space(not_a_table.addr(), pt_page.addr())
                    .and_then(|()| plant_in_kernel_space(pt_page.addr(), pt_block.addr()))
            }
            _ => Err(TestFailure::new(file!(), line!(), format_args!("no memory"))),
        };
        let freed = held.iter().all(|&(frame, order)| frames.free(0, frame, order).is_ok());
        crate::check!(freed, "a frame could not be freed");
        result
    }
}

/// Rewrites an entry, given as `(value, physical address)` the way
/// `walk::entry_at` finds it, with `planted`; walks `root`; puts the entry
/// back and returns the walk's violations.
fn violations_with(root: u64, (original, entry_phys): (u64, u64), planted: u64) -> u64 {
    let (table, slot) = (entry_phys & ADDRESS, (entry_phys & 0xfff) / 8);
    pte::with_window(|window| write(window, table, slot, planted));
    let report = crate::memory::verify::verify_root(root);
    pte::with_window(|window| write(window, table, slot, original));
    report.violations
}

/// `walk_finds_planted_violations` in a user space.
fn plant_in_user_space(not_a_table: u64, pt_page: u64) -> crate::testing::TestResult {
    let space = AddressSpace::new()
        .map_err(|e| TestFailure::new(file!(), line!(), format_args!("{e:?}")))?;
    let virt = 0x4000_0000;
    crate::check!(space.map(virt, frame(0)?, RW).is_ok(), "map failed");
    let root = space.root();
    let walk = crate::memory::walk::entry_at;
    let (Some(pd_entry), Some(leaf)) = (walk(root, virt, 2), walk(root, virt, 1)) else {
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no path to the leaf"),
        ));
    };
    let clean = crate::memory::verify::verify_root(root).violations;
    // A user leaf is never protected, whatever its key.
    let alias = violations_with(root, leaf, (leaf.0 & !ADDRESS) | pt_page);
    let stray_table = violations_with(root, pd_entry, (pd_entry.0 & !ADDRESS) | not_a_table);
    let restored = crate::memory::verify::verify_root(root).violations;
    crate::check!(space.unmap(virt, PageSize::Small).is_ok(), "unmap failed");
    crate::check_eq!((clean, alias, stray_table, restored), (0, 1, 1, 0));
    Ok(())
}

/// `walk_finds_planted_violations` in the kernel space: supervisor leaves,
/// where the key (or read-only) decides.
fn plant_in_kernel_space(pt_page: u64, pt_block: u64) -> crate::testing::TestResult {
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
    let root = kernel.root();
    let mut found = [[0u64; 2]; 2];
    for (case, (virt, order, target, size)) in [
        (KERNEL_TEST_VIRT, 0, pt_page, PageSize::Small),
        (KERNEL_TEST_VIRT + (2 << 20), 9, pt_block, PageSize::Large),
    ]
    .into_iter()
    .enumerate()
    {
        crate::check!(kernel.map(virt, frame(order)?, RW).is_ok(), "map failed");
        let Some(leaf) = crate::memory::walk::entry_at(root, virt, size.leaf_level()) else {
            let _ = kernel.unmap(virt, size);
            return Err(TestFailure::new(
                file!(),
                line!(),
                format_args!("no path to the leaf"),
            ));
        };
        let planted = (leaf.0 & !ADDRESS) | target;
        found[case] = [
            violations_with(root, leaf, planted),
            violations_with(root, leaf, with_protection(planted)),
        ];
        crate::check!(kernel.unmap(virt, size).is_ok(), "unmap failed");
    }
    // Unprotected: one violation; protected: none.
    crate::check_eq!(found, [[1, 0], [1, 0]]);
    // A writable alias of the image's code, or of the sealed records.
    crate::check!(
        kernel.map(KERNEL_TEST_VIRT, frame(0)?, RW).is_ok(),
        "map failed"
    );
    let Some(leaf) = crate::memory::walk::entry_at(root, KERNEL_TEST_VIRT, 1) else {
        let _ = kernel.unmap(KERNEL_TEST_VIRT, PageSize::Small);
        return Err(TestFailure::new(
            file!(),
            line!(),
            format_args!("no path to the leaf"),
        ));
    };
    let code = crate::memory::image::read_only_phys().start + 0x1000;
    let sealed = crate::memory::sealed::phys_range().start;
    let with_key2 = |entry: u64| pkeys::key::pte_with_key(entry, pkeys::METADATA_KEY);
    let image = [
        violations_with(root, leaf, (leaf.0 & !ADDRESS) | code),
        violations_with(root, leaf, (leaf.0 & !(ADDRESS | WRITABLE)) | code),
        violations_with(root, leaf, (leaf.0 & !ADDRESS) | sealed),
        violations_with(root, leaf, with_key2((leaf.0 & !ADDRESS) | sealed)),
    ];
    crate::check!(
        kernel.unmap(KERNEL_TEST_VIRT, PageSize::Small).is_ok(),
        "unmap failed"
    );
    let key2_protects = u64::from(mechanism != pkeys::Mechanism::Pks);
    crate::check_eq!(image, [1, 0, 1, key2_protects]);
    Ok(())
}

crate::kernel_test! {
    /// Churn: allocate and free over 10,000 page-table pages (fewer on a
    /// small machine) by mapping a data frame of its own in each of as
    /// many separate 2 MiB regions, then unmapping them. Measures flushes per 1,000
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
        let before = allocator.stats();
        let free: u64 = ptalloc::Freetype::all().map(|ft| before.free_pages(ft)).sum();
        // A data frame and a page table per region, and room to spare;
        // page tables only as many as conversions can serve (half the
        // room: data frames may take whole pageblocks too).
        let regions = REGIONS.min(free / 3).min(frames::page_table_room() / 2);
        let pkrs_before = pks::current().map_or(0, |p| p.pkrs_writes());
        let rw = MapFlags { writable: true, executable: false };
        let mut mapped = 0;
        let mut failure = None;
        while mapped < regions {
            let frame = match frames::alloc_frame(0, ptalloc::Freetype::KERNEL, false) {
                Ok(frame) => frame,
                Err(error) => {
                    failure = Some(PagingError::Alloc(match error {
                        frames::FrameError::Alloc(e) => e,
                        _ => AllocError::OutOfMemory,
                    }));
                    break;
                }
            };
            if let Err(refused) = space.map(mapped << 21, frame, rw) {
                failure = Some(refused.error);
                break;
            }
            mapped += 1;
        }
        let pkrs_writes = pks::current().map_or(0, |p| p.pkrs_writes()) - pkrs_before;
        let at_peak = allocator.stats();
        if crate::boot_state().config.memmap.churn {
            crate::memory::memmap::dump("churn-peak");
        }
        let mechanism = pks::current().map(|p| p.mechanism());
        // The churned space at its peak: one page table per region.
        let verified = (mechanism != Some(pkeys::Mechanism::None)).then(|| {
            let walk = crate::memory::verify::verify_root(space.root());
            defmt::info!(
                "churn: verification walk at the peak: {=usize} page tables, {=u64} violations",
                walk.tables,
                walk.violations
            );
            walk
        });
        for region in 0..mapped {
            // The mapping hands its frame back; dropping it frees it.
            crate::check!(space.unmap(region << 21, PageSize::Small).is_ok(), "region {} was not mapped", region);
        }
        crate::check_eq!(failure, None);
        let after = allocator.stats();
        // Every allocation but the data frames was a page table.
        let table_allocations = at_peak.allocations - before.allocations - mapped;
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
            // One window per map; each of the allocator's conversions opens
            // two to four of its own, outside the map's: the direct map's
            // entries, the sealed record, and the wipe of a block leaving
            // page-table memory (one window) or `Unmapped` (two, mapping
            // and unmapping it at the ephemeral slot).
            let batches = at_peak.conversion_batches - before.conversion_batches;
            let conversions = pkrs_writes.checked_sub(2 * mapped);
            crate::check!(
                conversions.is_some_and(|writes| writes <= 8 * batches),
                "{} PKRS writes for {} maps and {} conversions",
                pkrs_writes,
                mapped,
                batches
            );
        }
        Ok(())
    }
}
