//! In-kernel tests of the page-table module: map and unmap in user and
//! kernel spaces, bad input, the walk against planted violations, and the
//! churn measurement. They run under QEMU (`test=` on the command line);
//! they may use the module's private helpers.

use super::*;
use crate::arch::{cpu, pks};

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
        let early = crate::memory::EARLY_PAGE_TABLES.lock().tables()[0].phys;
        crate::check_eq!(space.map(virt + (4 << 20), early, PageSize::Small, rw), Err(PagingError::ProtectedFrame));
        let protecting = crate::boot_state().ptprot != pkeys::ProtectionPolicy::None;
        crate::check!(!protecting || crate::memory::verify::verify().passed(), "the walk failed with a live user space");
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
        !protecting || crate::memory::verify::verify().passed(),
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
        crate::memory::walk::leaf(cpu::read_cr3(), virt).is_none(),
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
            let walk = crate::memory::verify::verify_root(space.root());
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
            // One window per map; the allocator's conversions (the direct
            // map's attribute edits) open their own, outside the map's.
            let batches = at_peak.conversion_batches - before.conversion_batches;
            crate::check_eq!(pkrs_writes, 2 * mapped + 2 * batches);
        }
        Ok(())
    }
}
