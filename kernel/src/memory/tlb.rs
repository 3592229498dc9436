//! TLB flushes of the direct map, and the limit that chooses how.
//!
//! After a conversion rewrites the 2 MiB entries of n pageblocks, their old
//! translations must go. There are two ways:
//! - INVLPG each: n instructions, and only those n translations refill;
//! - reload CR3: one write, and every translation the kernel uses refills.
//!
//! Which is cheaper depends on the CPU, and under emulation on the
//! emulator. So by default the limit is measured at boot, on the machine
//! the kernel runs on ([`calibrate`]); `flushlimit=N` fixes it instead, for
//! experiments. Until it is set, every flush is full, which is always
//! correct. No PCID/INVPCID: TCG lacks them.
//!
//! The measurement: for each n of [`LADDER`] the direct map reaches, the
//! fewest cycles over [`ROUNDS`] rounds of "flush the n pages, then touch
//! them again", done both ways. The limit is the last n before the first
//! one where INVLPG is dearer (0 if it is dearer at 1). A full flush's
//! refills are counted only for what the measurement touches (its n pages,
//! code and stack), so a kernel with a larger working set gains more from
//! INVLPG than the limit says: it is a lower bound.
//!
//! What it gives on this project's build machine: under QEMU TCG, INVLPG
//! turns dearer between 8 and 16 pageblocks (limit usually 8, 6 to 12
//! from run to run). Under the nested KVM there, INVLPG is dearer at every n
//! (limit 0): each INVLPG and CR3 write exits to the hypervisor.
//!
//! What the QEMU tests can see: TCG drops its whole software TLB on every
//! PKRS or CR0.WP write, and on an INVLPG inside the 2 MiB pages it
//! tracks. So under `pks` and `ro` a missing flush does not show, and
//! INVLPG of a wrong address never does. Under `ptprot=none` windows write
//! no register, and `a_conversion_drops_the_old_translation` sees a
//! missing flush (it fails with the flush removed).
//!
//! **Other CPUs.** With APs online, a direct-map flush is a shootdown
//! round (`shootdown::Mailbox`, one IPI round per flush, on the kernel's
//! IPI vector): every online CPU flushes the same way (INVLPG each, or a
//! full flush), and the flush returns once each has. A CPU waiting to
//! start its own round, or waiting in `smp::run_on`, answers the round in
//! flight. Counted: rounds and CPUs interrupted ([`shootdown_stats`]).
//!
//! Written here because `x86` gives the instructions, not the choice.

use super::direct_map::{DIRECT_MAP_BASE, DirectMapInfo, MIB2};
use crate::arch::percpu::MAX_CPUS;
use crate::arch::{apic, cpu, percpu, smp};
use core::sync::atomic::{AtomicU64, Ordering};
use shootdown::{Batch, CpuSet, Flush, LoadedOn, Mailbox};

/// Pageblock counts measured, in order.
pub const LADDER: [u64; 12] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];
/// Rounds per count; the cheapest is kept, to drop interruptions.
pub const ROUNDS: u32 = 8;

/// Up to this many pageblocks, flushes use INVLPG. 0 until set: full.
static LIMIT: AtomicU64 = AtomicU64::new(0);
static INVLPG_FLUSHES: AtomicU64 = AtomicU64::new(0);
static FULL_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// The limit in force, in pageblocks.
pub fn limit() -> u64 {
    LIMIT.load(Ordering::Relaxed)
}

/// Sets the limit as `flushlimit=` says: measured on the direct map `info`
/// describes (returning the measurement), or fixed.
pub(super) fn init(
    setting: boot::cmdline::FlushLimit,
    info: &DirectMapInfo,
) -> Option<Calibration> {
    let (limit, measured) = match setting {
        boot::cmdline::FlushLimit::Measured => {
            let measured = calibrate(info);
            (measured.limit(), Some(measured))
        }
        boot::cmdline::FlushLimit::Fixed(pageblocks) => (u64::from(pageblocks), None),
    };
    LIMIT.store(limit, Ordering::Relaxed);
    measured
}

/// Flushes done so far through this module: (INVLPG one by one, full).
pub fn flush_counts() -> (u64, u64) {
    (
        INVLPG_FLUSHES.load(Ordering::Relaxed),
        FULL_FLUSHES.load(Ordering::Relaxed),
    )
}

/// Drops the translations of `pageblocks` 2 MiB direct-map pages from
/// physical `start` on every CPU: one by one up to the limit, else by
/// reloading CR3. `full` forces the reload (4 KiB entries were rewritten,
/// and INVLPG on a 2 MiB address would drop only one of them).
/// Returns the CPUs interrupted (0 with one CPU online).
pub fn flush_direct_map(start: u64, pageblocks: u64, full: bool) -> u32 {
    let mut batch = Batch::new(limit() as usize);
    if full || pageblocks > limit() {
        batch.add_all();
    } else {
        for block in 0..pageblocks {
            batch.add(DIRECT_MAP_BASE + start + block * MIB2);
        }
    }
    shoot(&batch, Reach::Everywhere)
}

/// Which CPUs a flush must reach.
#[derive(Clone, Copy)]
pub enum Reach<'a> {
    /// Every online CPU: the direct map and the kernel space, which every
    /// address space shares.
    Everywhere,
    /// The CPUs that have one user space loaded (none: no flush at all).
    LoadedOn(&'a LoadedOn),
}

/// Drops the translations of the 4 KiB pages `pages` (virtual addresses)
/// on the CPUs `reach` names, in one round: INVLPG each (a full flush past
/// `shootdown::MAX_PAGES`). For unmaps; call before the frames or tables
/// the old entries named are used again. Returns the CPUs interrupted.
pub fn flush_pages(pages: &[u64], reach: Reach<'_>) -> u32 {
    let mut batch = Batch::new(pages.len());
    pages.iter().for_each(|&page| batch.add(page));
    shoot(&batch, reach)
}

/// Drops every translation (a CR3 reload) on the CPUs `reach` names, in
/// one round: for a change that may cover a whole range of a space, as
/// unlinking a table does (up to 512 GiB of pages, and the walks cached
/// through it). Returns the CPUs interrupted.
pub fn flush_space(reach: Reach<'_>) -> u32 {
    let mut batch = Batch::new(0);
    batch.add_all();
    shoot(&batch, reach)
}

/// Flushes `batch` on the CPUs `reach` names (this one included if it is
/// among them): one shootdown round when another CPU is, a local flush
/// when only this one is. Returns the CPUs interrupted.
fn shoot(batch: &Batch, reach: Reach<'_>) -> u32 {
    let Some(flush) = batch.flush() else {
        return 0;
    };
    let me = percpu::index();
    let online = smp::online_cpus();
    let mut apic_ids = [u32::MAX; MAX_CPUS];
    let mut online_set = CpuSet::single(me);
    for &(cpu, apic_id) in &online {
        apic_ids[cpu] = apic_id;
        online_set = online_set.with(cpu);
    }
    let targets = match reach {
        Reach::Everywhere => online_set,
        // A CPU in the set but not online yet has loaded nothing.
        Reach::LoadedOn(loaded) => loaded.cpus().intersection(online_set),
    };
    if targets.without(me).is_empty() {
        if targets.contains(me) {
            apply(&flush);
        }
        return 0;
    }
    let mut ipi = |cpus: CpuSet| {
        for cpu in cpus.iter() {
            // A CPU that cannot be interrupted never acknowledges: the
            // round waits, as it must (its TLB may hold the old entry).
            let _ = apic::send_ipi(apic_ids[cpu]);
        }
    };
    match mailbox().shoot(me, targets, flush.clone(), &mut ipi, &mut apply) {
        Ok(round) => round.interrupted.len(),
        Err(_) => {
            // Not a CPU the mailbox serves: cannot happen with MAX_CPUS
            // slots; flush here at least.
            apply(&flush);
            0
        }
    }
}

/// The shootdown mailbox every CPU shares.
fn mailbox() -> &'static Mailbox<MAX_CPUS> {
    static MAILBOX: spin::Once<Mailbox<MAX_CPUS>> = spin::Once::new();
    MAILBOX.call_once(Mailbox::new)
}

/// Flushes this CPU as a round asks, and counts it.
fn apply(flush: &Flush) {
    match flush {
        Flush::Pages(pages) => {
            pages.iter().for_each(|&virt| invalidate(virt));
            INVLPG_FLUSHES.fetch_add(1, Ordering::Relaxed);
        }
        Flush::All => flush_all(),
    }
}

/// The IPI's part on this CPU: flush as the round in flight asks, if it
/// names this CPU and it has not answered yet. True if it did.
pub fn answer_shootdown() -> bool {
    mailbox().handle(percpu::index(), &mut apply)
}

/// Rounds answered by a CPU spinning on a lock (`crate::sync`): each is a
/// deadlock the answer avoided, since the round's initiator may hold that
/// lock.
static ANSWERED_WHILE_WAITING: AtomicU64 = AtomicU64::new(0);

/// Answers the round in flight from a lock's spin loop, and counts it.
pub fn answer_shootdown_while_waiting() {
    if answer_shootdown() {
        ANSWERED_WHILE_WAITING.fetch_add(1, Ordering::Relaxed);
    }
}

/// Rounds answered so far by CPUs waiting for a lock.
pub fn answered_while_waiting() -> u64 {
    ANSWERED_WHILE_WAITING.load(Ordering::Relaxed)
}

/// The shootdown counters: IPI rounds, CPUs interrupted, pages and full
/// flushes summed over the CPUs that made them.
pub fn shootdown_stats() -> shootdown::Stats {
    mailbox().stats()
}

/// Drops every translation (a CR3 reload), for batches of edits outside
/// the direct map's pageblocks: the boot window cut, early-table splits.
pub fn flush_all() {
    reload_cr3();
    FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
}

/// Loads the address space rooted at `root_phys` on this CPU (which
/// drops every non-global translation).
pub(super) fn load_root(root_phys: u64) {
    // SAFETY: callers pass the root of a live address space whose kernel
    // half is the kernel's (the kernel's own root, or a user space's,
    // which copies it), so the kernel keeps running.
    unsafe { x86::controlregs::cr3_write(root_phys & super::pte::ADDRESS) };
    FULL_FLUSHES.fetch_add(1, Ordering::Relaxed);
}

fn invalidate(virt: u64) {
    // SAFETY: invalidating a translation is always safe.
    unsafe { x86::tlb::flush(virt as usize) };
}

fn reload_cr3() {
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { x86::controlregs::cr3_write(cpu::read_cr3()) };
}

/// One measured count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Pageblocks flushed.
    pub pageblocks: u64,
    /// Cycles of INVLPG each, then touching them.
    pub invlpg_cycles: u64,
    /// Cycles of a CR3 reload, then touching them.
    pub reload_cycles: u64,
}

/// What boot measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calibration {
    /// One per count of [`LADDER`] the direct map reached.
    pub samples: heapless::Vec<Sample, { LADDER.len() }>,
}

impl Calibration {
    /// The last count before the first where INVLPG is dearer; 0 if it is
    /// dearer at the first, the last count if it never is.
    pub fn limit(&self) -> u64 {
        let mut limit = 0;
        for sample in &self.samples {
            if sample.invlpg_cycles > sample.reload_cycles {
                break;
            }
            limit = sample.pageblocks;
        }
        limit
    }

    /// The first sample where INVLPG is dearer, if any.
    pub fn crossover(&self) -> Option<Sample> {
        self.samples
            .iter()
            .copied()
            .find(|s| s.invlpg_cycles > s.reload_cycles)
    }
}

/// Measures both ways of flushing on the direct map `info` describes (read
/// only: nothing is written). Run at boot, before the allocator converts
/// anything.
fn calibrate(info: &DirectMapInfo) -> Calibration {
    let mut calibration = Calibration::default();
    // Away from the first pages of RAM, which boot structures use.
    let base = info.ranges.first().map_or(0, |r| r.start) + 2 * MIB2;
    let touch = |n: u64| {
        for i in 0..n {
            let virt = DIRECT_MAP_BASE + base + i * MIB2;
            // SAFETY: a direct-map address of usable RAM (checked by the
            // caller below), read only.
            unsafe { (virt as *const u64).read_volatile() };
        }
    };
    // SAFETY: reading the time-stamp counter has no side effects.
    let now = || unsafe { core::arch::x86_64::_rdtsc() };
    for n in LADDER {
        if !info.covers(base, n * MIB2) {
            break;
        }
        let mut sample = Sample {
            pageblocks: n,
            invlpg_cycles: u64::MAX,
            reload_cycles: u64::MAX,
        };
        for _ in 0..ROUNDS {
            touch(n);
            let start = now();
            for i in 0..n {
                invalidate(DIRECT_MAP_BASE + base + i * MIB2);
            }
            touch(n);
            sample.invlpg_cycles = sample.invlpg_cycles.min(now().wrapping_sub(start));
            touch(n);
            let start = now();
            reload_cr3();
            touch(n);
            sample.reload_cycles = sample.reload_cycles.min(now().wrapping_sub(start));
        }
        defmt::info!(
            "flush cost, {=u64} pageblocks: INVLPG each {=u64} cycles, CR3 reload {=u64} cycles",
            n,
            sample.invlpg_cycles,
            sample.reload_cycles
        );
        // The ladder and the vector have the same length.
        let _ = calibration.samples.push(sample);
    }
    calibration
}

crate::kernel_test! {
    /// The limit in force is the one boot chose: measured (and consistent
    /// with its samples) or given; and the rule picks the last count before
    /// INVLPG turns dearer.
    fn flush_limit_follows_the_measurement() -> TestResult {
        let sample = |pageblocks, invlpg_cycles, reload_cycles| Sample { pageblocks, invlpg_cycles, reload_cycles };
        let mut made = Calibration::default();
        crate::check_eq!(made.limit(), 0);
        for s in [sample(1, 10, 50), sample(2, 20, 50), sample(4, 60, 50), sample(8, 40, 50)] {
            let _ = made.samples.push(s);
        }
        crate::check_eq!(made.limit(), 2);
        crate::check_eq!(made.crossover().map(|s| s.pageblocks), Some(4));
        let boot = crate::boot_state();
        match (boot.config.flush_limit, &boot.memory.flush_calibration) {
            (boot::cmdline::FlushLimit::Fixed(n), None) => crate::check_eq!(limit(), u64::from(n)),
            (boot::cmdline::FlushLimit::Measured, Some(measured)) => {
                crate::check!(!measured.samples.is_empty(), "nothing measured");
                crate::check_eq!(limit(), measured.limit());
            }
            (setting, measured) => {
                crate::check!(false, "flushlimit {:?} but calibration {:?}", setting, measured.is_some());
            }
        }
        Ok(())
    }
}

crate::kernel_test! {
    /// A conversion's flush really drops the old translation: read a
    /// pageblock's direct-map address (so the TLB holds it), convert the
    /// block to `Unmapped` (its 2 MiB entry becomes not present), and read
    /// again: the read must fault. Under `ptprot=none` nothing else flushes
    /// the TLB on the way (no window writes PKRS or CR0), so this sees a
    /// missing flush even under TCG. The probed words fall in different
    /// TLB sets up to 256 pageblocks (512 MiB); on a larger machine a
    /// later probe may evict the target and the test proves less.
    fn a_conversion_drops_the_old_translation() -> TestResult {
        super::frames::needs_free_pageblocks(1, "to convert")?;
        use crate::arch::recovery::read_u64_if_mapped;
        use ptalloc::{AllocFlags, Freetype, Mobility, Pfn, Protection};
        let Some(frames) = super::frames::allocator() else {
            return Err(crate::testing::TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let hidden = Freetype { mobility: Mobility::Movable, protection: Protection::Unmapped };
        // One word per pageblock, each in a different 4 KiB page of its
        // block: TCG's software TLB is indexed by page number, and the
        // first pages of all blocks would evict one another.
        let probe_word = |block: Pfn| {
            let page_in_block = (block.addr() / MIB2) % 512;
            (DIRECT_MAP_BASE + block.addr() + page_in_block * 4096) as *const u64
        };
        // Earlier tests may have left whole free pageblocks `Unmapped`:
        // make them mapped kernel memory again (allocated and freed as
        // such), so that the one pageblock a small machine has converts.
        let mut remapped: heapless::Vec<Pfn, 64> = heapless::Vec::new();
        while !remapped.is_full() {
            let Ok(block) = frames.alloc(0, 9, Freetype::KERNEL, AllocFlags::empty()) else { break };
            // Capacity checked by the loop condition.
            let _ = remapped.push(block);
        }
        let freed = remapped.iter().all(|&block| frames.free(0, block, 9).is_ok());
        crate::check!(freed, "a remapped block could not be freed");
        // Take whole Unmapped pageblocks until one comes from a conversion
        // of a mapped block with exactly one flush, its own (earlier tests
        // may have left free Unmapped blocks, and a reserve refill on the
        // way would flush too).
        let mut taken: heapless::Vec<Pfn, 64> = heapless::Vec::new();
        let mut converted = None;
        while converted.is_none() && !taken.is_full() {
            // Load a translation for a word of every pageblock the direct
            // map still shows.
            let ranges = super::direct_map::info().map(|i| i.ranges.clone()).unwrap_or_default();
            for range in ranges {
                for block in (range.start.div_ceil(MIB2)..range.end / MIB2).map(|b| Pfn(b * 512)) {
                    // SAFETY: a direct-map address, read only; a hidden
                    // block faults and the probe resumes.
                    let _ = unsafe { read_u64_if_mapped(probe_word(block)) };
                }
            }
            let before = frames.stats();
            let Ok(block) = frames.alloc(0, 9, hidden, AllocFlags::empty()) else { break };
            let after = frames.stats();
            // Capacity checked by the loop condition.
            let _ = taken.push(block);
            let from_mapped = Freetype::all().filter(|ft| ft.protection != Protection::Unmapped).any(|ft| {
                after.conversions[ft.index()][hidden.index()] > before.conversions[ft.index()][hidden.index()]
            });
            let batches = after.conversion_batches - before.conversion_batches;
            let flushes = after.flushes_local - before.flushes_local;
            if from_mapped && (batches, flushes) == (1, 1) {
                converted = Some(block);
            }
        }
        // SAFETY: as above.
        let after = converted.map(|block| unsafe { read_u64_if_mapped(probe_word(block)) });
        let freed = taken.iter().all(|&block| frames.free(0, block, 9).is_ok());
        crate::check!(freed, "a taken block could not be freed");
        crate::check!(converted.is_some(), "no pageblock was converted to Unmapped ({} taken)", taken.len());
        crate::check!(
            matches!(after, Some(Err(_))),
            "the converted block still reads through the direct map: a stale translation"
        );
        Ok(())
    }
}
