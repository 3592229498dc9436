//! The policy lab's in-kernel workloads (`lab=churn,spaces,storm`).
//!
//! Each workload runs on the allocator and protection the command line
//! chose (`ptstrategy=`, `ptfallback=`, `ptprot=`) and prints one line,
//! `lab: workload=NAME key=value ...`, that `tools`' lab runner parses
//! (`tools/src/lab.rs` lists the keys and what they mean). Counters are
//! deltas over the workload; levels (`dm_*`, `stranded`, `reserve_level`,
//! `exposed_live`) are read at its peak, where the verification walk also
//! runs on the workload's spaces (not under `ptprot=none`, where nothing
//! is protected). With `memmap=lab` the pageblock map is dumped after each
//! workload (label `after-NAME`).
//!
//! A workload measures; it does not judge. The goals (flushes per 1,000
//! tables, no 2 MiB splits) are the in-kernel tests' business, under the
//! default strategy. A workload fails only when the kernel misbehaves: a
//! frame not given back, a mapping that cannot be undone. Running out of
//! memory is a figure (`pt_failures`), not a failure, and so is a walk
//! violation (the expected result under `ptfallback=unprotected`).
//!
//! - `churn`: one space, a data frame mapped in each of up to 10,000
//!   2 MiB regions (a page table each), then all unmapped.
//! - `spaces`: fork/exec-like: 256 address spaces, at most 32 alive at
//!   once, each mapping 64 pages over 8 regions 2 MiB apart and 2 regions
//!   1 GiB apart before it is destroyed.
//! - `storm`: memory pressure first (every free ordinary page taken, then
//!   one in eight given back, so no pageblock is whole and free), then 4
//!   rounds of mapping a page in fresh 2 MiB regions until memory runs out
//!   (at most 16,384), and unmapping them: page tables from memory no
//!   conversion can take, until the split reserve runs dry.
//! - `trace`: the first boot module (`-initrd`), a page-table trace in
//!   `tools/src/trace.rs`'s format, checked whole, then replayed on the
//!   allocator (`trace`'s doc).
//!
//! With `lab=`, the run ends after the workloads: a boot module is the
//! trace's, never a root task.

use crate::arch::pks;
use crate::memory::frame_array::FrameArray;
use crate::memory::frames::{self, Frame};
use crate::memory::paging::{AddressSpace, MapFlags, PageSize};
use crate::memory::verify::{self, VerifyReport};
use boot::cmdline::LabWorkload;
use ptalloc::{Freetype, Stats};

mod trace;

/// Runs `workloads` in order; false if one misbehaved.
pub fn run(workloads: &[LabWorkload]) -> bool {
    let mut ok = true;
    for &workload in workloads {
        let Some(before) = Snapshot::take() else {
            crate::println!("lab: no page allocator");
            return false;
        };
        let outcome = match workload {
            LabWorkload::Churn => churn(),
            LabWorkload::Spaces => spaces(),
            LabWorkload::Storm => storm(),
            LabWorkload::Trace => trace::run(),
        };
        match (outcome, Snapshot::take()) {
            (Ok(figures), Some(after)) => report(workload, &before, &figures, &after),
            (Err(why), _) => {
                crate::println!("lab: {} failed: {}", workload.name(), why);
                ok = false;
            }
            (_, None) => return false,
        }
        if crate::boot_state().config.memmap.lab {
            let mut label = heapless::String::<16>::new();
            let _ = core::fmt::write(&mut label, format_args!("after-{}", workload.name()));
            crate::memory::memmap::dump(&label);
        }
    }
    ok
}

/// The counters a workload's figures are deltas of.
struct Snapshot {
    stats: Stats,
    pkrs_writes: u64,
}

impl Snapshot {
    fn take() -> Option<Self> {
        Some(Self {
            stats: frames::stats()?,
            pkrs_writes: pks::current().map_or(0, |p| p.pkrs_writes()),
        })
    }
}

/// What a workload measured itself.
struct Figures {
    /// Allocator stats at the peak.
    peak: Stats,
    /// The walk over its spaces at the peak (`None` under `ptprot=none`).
    walk: Option<VerifyReport>,
    /// Allocations the workload made for data (not page tables).
    data_allocations: u64,
    /// Page-table allocations that failed.
    pt_failures: u64,
    /// Map operations.
    maps: u64,
    /// The workload's own unit of work (regions, spaces, rounds).
    ops: u64,
}

fn report(workload: LabWorkload, before: &Snapshot, figures: &Figures, after: &Snapshot) {
    let (b, a, peak) = (&before.stats, &after.stats, &figures.peak);
    let policy = frames::policy();
    let (strategy, fallback) = (policy.strategy_name(), policy.fallback_name());
    let protection = crate::boot_state().ptprot.name();
    let pt_allocs = (a.allocations - b.allocations).saturating_sub(figures.data_allocations);
    let dm = peak.direct_map.unwrap_or_default();
    // The walk's keys only where it ran (no walk under `ptprot=none`).
    let mut walk = heapless::String::<64>::new();
    if let Some(report) = figures.walk {
        let _ = core::fmt::write(
            &mut walk,
            format_args!(
                " walk_tables={} walk_violations={}",
                report.tables, report.violations
            ),
        );
    }
    defmt::info!(
        "lab: workload={=str} strategy={=str} fallback={=str} protection={=str} ops={=u64} maps={=u64} pt_allocs={=u64} pt_failures={=u64} failed_allocs={=u64} flushes={=u64} flushes_remote={=u64} splits_1g={=u64} splits_2m={=u64} page_protects={=u64} page_unprotects={=u64} conversions={=u64} reserve_taken={=u64} exposed_tables={=u64} exposure_allocs={=u64} pkrs_writes={=u64} dm_1g={=u64} dm_2m={=u64} dm_4k={=u64} stranded={=u64} reserve_level={=u64} reserve_low_water={=u64} exposed_live={=u64}{=str}",
        workload.name(),
        strategy,
        fallback,
        protection,
        figures.ops,
        figures.maps,
        pt_allocs,
        figures.pt_failures,
        a.failed_allocations - b.failed_allocations,
        a.flushes_local - b.flushes_local,
        a.flushes_remote - b.flushes_remote,
        a.splits_1g - b.splits_1g,
        a.splits_2m - b.splits_2m,
        a.page_protects - b.page_protects,
        a.page_unprotects - b.page_unprotects,
        a.total_conversions() - b.total_conversions(),
        a.reserve_taken - b.reserve_taken,
        a.exposed_tables - b.exposed_tables,
        a.exposure_allocations - b.exposure_allocations,
        after.pkrs_writes - before.pkrs_writes,
        dm.pages_1g,
        dm.pages_2m,
        dm.pages_4k,
        peak.stranded_protected,
        peak.reserve_level,
        peak.reserve_low_water,
        peak.exposed_live,
        walk.as_str()
    );
}

const RW: MapFlags = MapFlags {
    writable: true,
    executable: false,
};

/// A workload's way of saying the kernel misbehaved.
type Outcome = Result<Figures, &'static str>;

/// The walk over `spaces`, summed, where a protection is on.
fn walk(spaces: &[&AddressSpace]) -> Option<VerifyReport> {
    let mechanism = pks::current().map(|p| p.mechanism());
    if mechanism.is_none_or(|m| m == pkeys::Mechanism::None) {
        return None;
    }
    let mut total = VerifyReport::default();
    for space in spaces {
        let walk = verify::verify_root(space.root());
        total.tables += walk.tables;
        total.violations += walk.violations;
    }
    Some(total)
}

/// Maps a fresh data frame at `virt`; `Ok(false)` if memory ran out (a
/// data frame or a page table), counting a page-table failure.
fn map_one(space: &AddressSpace, virt: u64, figures: &mut Figures) -> Result<bool, &'static str> {
    let Ok(frame) = frames::alloc_frame(0, Freetype::KERNEL, false) else {
        return Ok(false);
    };
    figures.data_allocations += 1;
    match space.map(virt, frame, RW) {
        Ok(()) => {
            figures.maps += 1;
            Ok(true)
        }
        Err(refused) => {
            if matches!(refused.error, crate::memory::paging::PagingError::Alloc(_)) {
                figures.pt_failures += 1;
                Ok(false)
            } else {
                Err("a map was refused for a reason other than memory")
            }
        }
    }
}

fn unmap_all(space: &AddressSpace, virts: impl Iterator<Item = u64>) -> Result<(), &'static str> {
    for virt in virts {
        // The mapping hands its frame back; dropping it frees it.
        let frame = space
            .unmap(virt, PageSize::Small)
            .map_err(|_| "a mapping the workload made could not be unmapped")?;
        drop(frame);
    }
    Ok(())
}

fn new_figures() -> Result<Figures, &'static str> {
    Ok(Figures {
        peak: frames::stats().ok_or("no page allocator")?,
        walk: None,
        data_allocations: 0,
        pt_failures: 0,
        maps: 0,
        ops: 0,
    })
}

fn churn() -> Outcome {
    const REGIONS: u64 = 10_000;
    let mut figures = new_figures()?;
    let space = AddressSpace::new().map_err(|_| "no address space")?;
    let free: u64 = Freetype::all().map(|ft| figures.peak.free_pages(ft)).sum();
    // A data frame and a page table per region, with room to spare.
    let regions = REGIONS.min(free / 3);
    let mut mapped = 0;
    while mapped < regions && map_one(&space, mapped << 21, &mut figures)? {
        mapped += 1;
    }
    figures.ops = mapped;
    figures.peak = frames::stats().ok_or("no page allocator")?;
    figures.walk = walk(&[&space]);
    unmap_all(&space, (0..mapped).map(|region| region << 21))?;
    Ok(figures)
}

fn spaces() -> Outcome {
    const SPACES: u64 = 256;
    const ALIVE: usize = 32;
    // 8 regions 2 MiB apart, and 2 more 1 GiB away: a PT each, two PDs,
    // and a PDPT, besides the root.
    const PAGES: [u64; 10] = [
        0,
        1 << 21,
        2 << 21,
        3 << 21,
        4 << 21,
        5 << 21,
        6 << 21,
        7 << 21,
        1 << 30,
        (1 << 30) + (1 << 21),
    ];
    const PER_REGION: u64 = 6;
    let mut figures = new_figures()?;
    let mut alive: heapless::Deque<AddressSpace, ALIVE> = heapless::Deque::new();
    let mut peak_seen = false;
    for _ in 0..SPACES {
        if alive.is_full() {
            if !peak_seen {
                // The first time the window is full: the peak.
                figures.peak = frames::stats().ok_or("no page allocator")?;
                let spaces: heapless::Vec<&AddressSpace, ALIVE> = alive.iter().collect();
                figures.walk = walk(&spaces);
                peak_seen = true;
            }
            // Dropping a space unmaps and frees everything in it.
            drop(alive.pop_front());
        }
        let Ok(space) = AddressSpace::new() else {
            figures.pt_failures += 1;
            continue;
        };
        'fill: for region in PAGES {
            for page in 0..PER_REGION {
                if !map_one(&space, region + (page << 12), &mut figures)? {
                    break 'fill;
                }
            }
        }
        figures.ops += 1;
        // The window has room: one was popped above if it was full.
        let _ = alive.push_back(space);
    }
    while alive.pop_front().is_some() {}
    Ok(figures)
}

/// Most frames the storm holds to make pressure: 1 GiB of 4 KiB frames,
/// listed in allocated memory (the kernel has no heap).
const STORM_MAX_HELD: usize = 1 << 18;

fn storm() -> Outcome {
    const ROUNDS: u64 = 4;
    // More than the memory left can serve: each round maps until memory
    // runs out, so its last page tables come from memory that is no
    // longer whole, after the split reserve has run dry.
    const REGIONS: u64 = 16_384;
    let mut figures = new_figures()?;
    // Its root before the pressure: the storm is about the tables below.
    let space = AddressSpace::new().map_err(|_| "no address space")?;
    let free: u64 = Freetype::all().map(|ft| figures.peak.free_pages(ft)).sum();
    let capacity = (free as usize).min(STORM_MAX_HELD);
    let mut held = FrameArray::<Option<Frame>>::new(capacity, |_| None)
        .map_err(|_| "no memory for the list of held frames")?;
    // The list's own block.
    figures.data_allocations += 1;
    // Pressure: take every free ordinary page, then give one in eight
    // back, so that free memory is scattered over every pageblock.
    let mut taken = 0;
    for slot in held.iter_mut() {
        match frames::alloc_frame(0, Freetype::KERNEL, false) {
            Ok(frame) => *slot = Some(frame),
            Err(_) => break,
        }
        taken += 1;
    }
    figures.data_allocations += taken;
    for slot in held.iter_mut().step_by(8) {
        // Dropping a frame frees it.
        *slot = None;
    }
    for round in 0..ROUNDS {
        let mut mapped = 0;
        while mapped < REGIONS && map_one(&space, mapped << 21, &mut figures)? {
            mapped += 1;
        }
        if round == 0 {
            figures.peak = frames::stats().ok_or("no page allocator")?;
            figures.walk = walk(&[&space]);
        }
        unmap_all(&space, (0..mapped).map(|region| region << 21))?;
        figures.ops += 1;
    }
    Ok(figures)
}
