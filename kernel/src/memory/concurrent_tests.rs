//! Every CPU at once: the verification walk from each CPU's own CR3, and
//! map/unmap churn on all CPUs together (`smp::run_on_all`), which makes
//! the per-CPU caches, the core lock and the shootdown rounds meet under
//! load. With one CPU they run on the boot CPU alone.
//!
//! The churn meets twice: at its peak every CPU walks (nobody edits a
//! table meanwhile, so the walk sees no half-made conversion), and only
//! then does any CPU unmap. A CPU waiting at a meeting answers shootdowns,
//! as a lock's waiter does (`crate::sync`): another CPU may still be
//! converting.

use super::frames;
use super::paging::{AddressSpace, MapFlags, PageSize};
use super::verify;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{pks, smp};
use crate::testing::TestFailure;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use pkeys::Mechanism;

/// What one CPU did in a run.
struct CpuReport {
    /// Set when the CPU ran the work.
    ran: AtomicBool,
    /// Regions mapped (one data frame and one page table each).
    maps: AtomicU64,
    /// Set if a map failed before the CPU's share was done.
    map_failed: AtomicBool,
    /// Regions that would not unmap.
    unmap_failures: AtomicU64,
    /// PKRS writes this CPU made while mapping.
    pkrs_writes: AtomicU64,
    /// Set if the walk from this CPU's CR3 passed.
    walk_passed: AtomicBool,
    /// Page tables that walk reached.
    walk_tables: AtomicU64,
}

impl CpuReport {
    const fn new() -> Self {
        Self {
            ran: AtomicBool::new(false),
            maps: AtomicU64::new(0),
            map_failed: AtomicBool::new(false),
            unmap_failures: AtomicU64::new(0),
            pkrs_writes: AtomicU64::new(0),
            walk_passed: AtomicBool::new(false),
            walk_tables: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        self.ran.store(false, Ordering::Relaxed);
        self.maps.store(0, Ordering::Relaxed);
        self.map_failed.store(false, Ordering::Relaxed);
        self.unmap_failures.store(0, Ordering::Relaxed);
        self.pkrs_writes.store(0, Ordering::Relaxed);
        self.walk_passed.store(false, Ordering::Relaxed);
        self.walk_tables.store(0, Ordering::Relaxed);
    }
}

static REPORTS: [CpuReport; MAX_CPUS] = [const { CpuReport::new() }; MAX_CPUS];
/// CPUs taking part in the run in progress.
static PARTICIPANTS: AtomicUsize = AtomicUsize::new(0);
/// Regions each CPU maps.
static SHARE: AtomicU64 = AtomicU64::new(0);
/// The two meetings: at the peak, and after the walks.
static AT_PEAK: AtomicUsize = AtomicUsize::new(0);
static WALKED: AtomicUsize = AtomicUsize::new(0);

/// Waits until every participant has come to `meeting`, answering
/// shootdowns. Gives up after a long time (a CPU that never comes, say),
/// returning false, rather than hang the test run.
fn meet(meeting: &AtomicUsize) -> bool {
    meeting.fetch_add(1, Ordering::AcqRel);
    let participants = PARTICIPANTS.load(Ordering::Acquire);
    for _ in 0..1u64 << 31 {
        if meeting.load(Ordering::Acquire) >= participants {
            return true;
        }
        let _ = super::tlb::answer_shootdown();
        core::hint::spin_loop();
    }
    false
}

/// Runs the walk from this CPU (its CR3, every live user space, its own
/// registers) and records the result in its report.
fn walk_here(report: &CpuReport) {
    let walk = verify::verify();
    report.walk_passed.store(walk.passed(), Ordering::Release);
    report
        .walk_tables
        .store(walk.tables as u64, Ordering::Release);
}

/// The online CPUs' numbers (the boot CPU's alone before `smp` ran).
fn online() -> heapless::Vec<usize, MAX_CPUS> {
    let online: heapless::Vec<usize, MAX_CPUS> =
        smp::online_cpus().iter().map(|&(cpu, _)| cpu).collect();
    if online.is_empty() {
        heapless::Vec::from_iter([0])
    } else {
        online
    }
}

fn prepare(participants: usize) {
    REPORTS.iter().for_each(CpuReport::reset);
    AT_PEAK.store(0, Ordering::Relaxed);
    WALKED.store(0, Ordering::Relaxed);
    PARTICIPANTS.store(participants, Ordering::Release);
}

/// Each CPU's part of the churn: its own address space, a data frame and
/// a page table in each of `SHARE` 2 MiB regions, the walk at the peak,
/// then everything unmapped.
fn churn_here() {
    let report = &REPORTS[percpu::index()];
    report.ran.store(true, Ordering::Release);
    let share = SHARE.load(Ordering::Acquire);
    let space = AddressSpace::new();
    let pkrs_before = pks::current().map_or(0, |p| p.pkrs_writes());
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    let mut maps = 0;
    if let Ok(space) = &space {
        while maps < share {
            let Ok(frame) = frames::alloc_frame(0, ptalloc::Freetype::KERNEL, false) else {
                break;
            };
            if space.map(maps << 21, frame, rw).is_err() {
                break;
            }
            maps += 1;
        }
    }
    let pkrs_writes = pks::current().map_or(0, |p| p.pkrs_writes()) - pkrs_before;
    report.maps.store(maps, Ordering::Release);
    report.map_failed.store(maps < share, Ordering::Release);
    report.pkrs_writes.store(pkrs_writes, Ordering::Release);
    if meet(&AT_PEAK) {
        walk_here(report);
    }
    let _ = meet(&WALKED);
    if let Ok(space) = &space {
        for region in 0..maps {
            // The mapping hands its frame back; dropping it frees it.
            if space.unmap(region << 21, PageSize::Small).is_err() {
                report.unmap_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Page tables the churn aims at, over all CPUs.
const CHURN_TABLES: u64 = 10_000;

crate::kernel_test! {
    /// Map/unmap churn on every CPU at once, about 10,000 page-table pages
    /// in all: each CPU maps a data frame in each of its share of 2 MiB
    /// regions of its own address space (a page table each), all walk
    /// from their own CR3 at the peak, then all unmap. The walk passes on
    /// every CPU (under `pks` and `ro`), there is no 2M->4K split, every
    /// flush is one shootdown round (when other CPUs are online) and there
    /// is at most one per conversion batch, and each CPU pays 2 PKRS
    /// writes per map plus its share of conversions' windows.
    fn concurrent_churn_on_every_cpu() -> TestResult {
        let Some(allocator) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let online = online();
        let cpus = online.len();
        let before = allocator.stats();
        let free: u64 = ptalloc::Freetype::all().map(|ft| before.free_pages(ft)).sum();
        // A data frame and a page table per region, and room to spare;
        // page tables only as many as conversions can serve (half the
        // room: data frames may take whole pageblocks too).
        let share = CHURN_TABLES.min(free / 3).min(frames::page_table_room() / 2) / cpus as u64;
        SHARE.store(share, Ordering::Release);
        prepare(cpus);
        let rounds_before = super::tlb::shootdown_stats().rounds;
        let answered_before = super::tlb::answered_while_waiting();
        let ran = smp::run_on_all(churn_here, 120_000);
        let after = allocator.stats();
        let rounds = super::tlb::shootdown_stats().rounds - rounds_before;
        let answered_while_waiting = super::tlb::answered_while_waiting() - answered_before;
        let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
        crate::check_eq!(ran, Ok(cpus));
        let maps: u64 = online.iter().map(|&cpu| REPORTS[cpu].maps.load(Ordering::Acquire)).sum();
        for &cpu in &online {
            let report = &REPORTS[cpu];
            let cpu_maps = report.maps.load(Ordering::Acquire);
            let writes = report.pkrs_writes.load(Ordering::Acquire);
            let per_map_x100 = writes * 100 / cpu_maps.max(1);
            defmt::info!(
                "concurrent churn: cpu {=usize}: {=u64} maps, {=u64} PKRS writes ({=u64}.{=u64:02} per map, goal 2), walk from its CR3: {=u64} tables, {=bool}",
                cpu,
                cpu_maps,
                writes,
                per_map_x100 / 100,
                per_map_x100 % 100,
                report.walk_tables.load(Ordering::Acquire),
                report.walk_passed.load(Ordering::Acquire)
            );
            crate::check!(report.ran.load(Ordering::Acquire), "cpu {} did not run", cpu);
            crate::check!(!report.map_failed.load(Ordering::Acquire), "cpu {} mapped {} of {}", cpu, cpu_maps, share);
            crate::check_eq!(report.unmap_failures.load(Ordering::Acquire), 0);
            if mechanism != Mechanism::None {
                crate::check!(report.walk_passed.load(Ordering::Acquire), "the walk failed from cpu {}", cpu);
                crate::check!(
                    report.walk_tables.load(Ordering::Acquire) > maps,
                    "the walk from cpu {} saw {} tables",
                    cpu,
                    report.walk_tables.load(Ordering::Acquire)
                );
            }
            if mechanism == Mechanism::Pks {
                // One window per map (two writes); conversions, which any
                // CPU may make, open two to four windows each.
                let batches = after.conversion_batches - before.conversion_batches;
                crate::check!(
                    writes >= 2 * cpu_maps && writes <= 2 * cpu_maps + 8 * batches,
                    "cpu {}: {} PKRS writes for {} maps and {} conversions",
                    cpu,
                    writes,
                    cpu_maps,
                    batches
                );
            }
        }
        let tables = after.allocations - before.allocations - maps;
        let batches = after.conversion_batches - before.conversion_batches;
        let flushes = after.flushes_local - before.flushes_local;
        let splits_2m = after.splits_2m - before.splits_2m;
        let per_thousand_x100 = rounds * 100_000 / tables.max(1);
        let per_batch_x100 = rounds * 100 / batches.max(1);
        defmt::info!(
            "concurrent churn: {=usize} CPUs, {=u64} page-table pages, {=u64} conversion batches, {=u64} flushes, {=u64} shootdown rounds ({=u64}.{=u64:02} per 1,000 page tables, {=u64}.{=u64:02} per conversion batch, goal 1; {=u64} answered by a CPU waiting for a lock), {=u64} 2M->4K splits",
            cpus,
            tables,
            batches,
            flushes,
            rounds,
            per_thousand_x100 / 100,
            per_thousand_x100 % 100,
            per_batch_x100 / 100,
            per_batch_x100 % 100,
            answered_while_waiting,
            splits_2m
        );
        crate::check!(tables >= maps, "{} page tables for {} maps", tables, maps);
        crate::check_eq!(splits_2m, 0);
        crate::check!(flushes <= batches, "{} flushes for {} conversion batches", flushes, batches);
        let expected_rounds = if cpus > 1 { flushes } else { 0 };
        crate::check_eq!(rounds, expected_rounds, "shootdown rounds against allocator flushes");
        Ok(())
    }
}

/// Runs on each CPU: the walk from its own CR3.
fn walk_on_this_cpu() {
    walk_here(&REPORTS[percpu::index()]);
    REPORTS[percpu::index()].ran.store(true, Ordering::Release);
}

crate::kernel_test! {
    /// The verification walk passes from every online CPU's CR3, with
    /// that CPU's own registers (its PKRS, CR4 and CR0) checked. Under
    /// `none` there is nothing to pass: only that each CPU ran it.
    fn the_walk_passes_from_every_cpu() -> TestResult {
        let online = online();
        let cpus = online.len();
        prepare(cpus);
        let ran = smp::run_on_all(walk_on_this_cpu, 20_000);
        crate::check_eq!(ran, Ok(cpus));
        let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
        for &cpu in &online {
            let report = &REPORTS[cpu];
            let tables = report.walk_tables.load(Ordering::Acquire);
            let passed = report.walk_passed.load(Ordering::Acquire);
            defmt::info!("walk from cpu {=usize}'s CR3: {=u64} tables, passed {=bool}", cpu, tables, passed);
            crate::check!(report.ran.load(Ordering::Acquire), "cpu {} did not walk", cpu);
            crate::check!(tables > 0, "the walk from cpu {} saw no table", cpu);
            if mechanism != Mechanism::None {
                crate::check!(passed, "the walk failed from cpu {}", cpu);
            }
        }
        Ok(())
    }
}
