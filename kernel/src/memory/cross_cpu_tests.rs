//! Protection across CPUs. A write window is per CPU: PKRS (and CR0.WP
//! under `ro`) is each CPU's own register, so a window the page-table code opens on one CPU opens
//! nothing on another. The attack the Linux discussion names is racing
//! "the intended pagetable update paths that flip the pkey register":
//! while CPU 0 holds a page-table window open, CPU 1 writes the same
//! page-table page. And a conversion's flush reaches every CPU (a
//! shootdown round): a translation another CPU loaded is gone there.
//! Both need a second CPU (`-smp 2`) and skip on one.

use super::direct_map::DIRECT_MAP_BASE;
use super::frames::{self, PAGE_TABLES};
use super::paging::{AddressSpace, KERNEL_MAP_BASE, MapFlags, PageSize};
use super::pte;
use crate::arch::recovery::{read_u64_if_mapped, read_user_u64_if_mapped, write_u64_if_writable};
use crate::arch::smp;
use crate::pkfault::with_policy;
use crate::testing::TestFailure;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pkeys::{FaultPolicy, Mechanism};
use ptalloc::AllocFlags;

/// What a corrupted entry would hold: a writable mapping of frame 1.
const FORGED: u64 = 0x1000 | pte::PRESENT | pte::WRITABLE;

/// The page-table page CPU 1 aims at (a direct-map address).
static TARGET: AtomicU64 = AtomicU64::new(0);
/// CPU 1's result: 0 not run, 1 the write landed, 2 it was stopped.
static OUTCOME: AtomicU64 = AtomicU64::new(0);
/// The key of the fault CPU 1 took, plus one (0: none).
static FAULT_KEY: AtomicU64 = AtomicU64::new(0);

/// Runs on CPU 1: the stray write.
fn write_from_the_other_cpu() {
    let target = TARGET.load(Ordering::Acquire) as *mut u64;
    // SAFETY: the test's own page-table page, linked nowhere; if the write
    // lands, the test puts the zero back.
    let landed = with_policy(FaultPolicy::Report, || unsafe {
        write_u64_if_writable(target, FORGED)
    })
    .is_ok();
    let key = crate::pkfault::last_fault()
        .and_then(|fault| fault.key)
        .map_or(0, |key| u64::from(key.index()) + 1);
    FAULT_KEY.store(if landed { 0 } else { key }, Ordering::Release);
    OUTCOME.store(if landed { 1 } else { 2 }, Ordering::Release);
}

crate::kernel_test! {
    /// CPU 0 holds a page-table write window open while CPU 1 writes the
    /// same page-table page: under `pks` CPU 1's write faults with the
    /// page-table key, under `ro` it is refused (CR0.WP is CPU 1's own),
    /// and the entry is unchanged; under `none` it lands. CPU 0's own
    /// write, inside its window, goes through.
    fn a_window_on_one_cpu_opens_nothing_on_another() -> TestResult {
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        let Some(allocator) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let page = allocator
            .alloc(0, 0, PAGE_TABLES, AllocFlags::ZERO)
            .map_err(|e| TestFailure::new(file!(), line!(), format_args!("no page-table page: {e}")))?;
        let target = (DIRECT_MAP_BASE + page.addr()) as *mut u64;
        TARGET.store(target as u64, Ordering::Release);
        OUTCOME.store(0, Ordering::Release);
        let (own, run) = pte::with_window(|_window| {
            // SAFETY: the test's page, zero; rewriting the zero changes
            // nothing.
            let own = unsafe { write_u64_if_writable(target, 0) }.is_ok();
            (own, smp::run_on(other, write_from_the_other_cpu, 2000))
        });
        let outcome = OUTCOME.load(Ordering::Acquire);
        let key = FAULT_KEY.load(Ordering::Acquire);
        if outcome == 1 {
            // SAFETY: the write landed, so the page is writable here.
            unsafe { target.write_volatile(0) };
        }
        // SAFETY: the test's page, mapped by the direct map, readable.
        let entry = unsafe { target.read_volatile() };
        let freed = allocator.free(0, page, 0);
        crate::check_eq!(run, Ok(()));
        crate::check_eq!(freed, Ok(()));
        let mechanism = crate::arch::pks::current().map_or(Mechanism::None, |p| p.mechanism());
        match mechanism {
            Mechanism::Pks => {
                crate::check!(own, "CPU 0 could not write inside its own window");
                crate::check_eq!(outcome, 2, "CPU 1's write landed while CPU 0's window was open");
                crate::check_eq!(key, u64::from(pkeys::PAGE_TABLE_KEY.index()) + 1);
            }
            Mechanism::WriteProtect => {
                crate::check!(own, "CPU 0 could not write inside its own window");
                crate::check_eq!(outcome, 2, "CPU 1's write landed under ro");
            }
            Mechanism::None => crate::check_eq!(outcome, 1, "the write did not land without protection"),
        }
        crate::check_eq!(entry, 0);
        Ok(())
    }
}

/// The pageblock CPU 1 probes: every direct-map pageblock when 0, else
/// this one (its first frame's physical address).
static PROBE_BLOCK: AtomicU64 = AtomicU64::new(0);
/// CPU 1's read of `PROBE_BLOCK`: 0 not run, 1 it read, 2 it faulted.
static PROBE_READ: AtomicU64 = AtomicU64::new(0);

/// One word per pageblock, each in a different 4 KiB page of its block
/// (TCG's software TLB is indexed by page number).
fn probe_word(block: u64) -> *const u64 {
    let page_in_block = (block / super::direct_map::MIB2) % 512;
    (DIRECT_MAP_BASE + block + page_in_block * 4096) as *const u64
}

/// Runs on CPU 1: loads a translation for a word of every pageblock the
/// direct map shows (PROBE_BLOCK 0), or reads the word of one.
fn probe_from_the_other_cpu() {
    use crate::arch::recovery::read_u64_if_mapped;
    let mib2 = super::direct_map::MIB2;
    match PROBE_BLOCK.load(Ordering::Acquire) {
        0 => {
            let ranges = super::direct_map::info()
                .map(|i| i.ranges.clone())
                .unwrap_or_default();
            for range in ranges {
                for block in (range.start.div_ceil(mib2)..range.end / mib2).map(|b| b * mib2) {
                    // SAFETY: a direct-map address, read only; a hidden
                    // block faults and the probe resumes.
                    let _ = unsafe { read_u64_if_mapped(probe_word(block)) };
                }
            }
        }
        block => {
            // SAFETY: as above.
            let read = unsafe { read_u64_if_mapped(probe_word(block)) };
            PROBE_READ.store(if read.is_ok() { 1 } else { 2 }, Ordering::Release);
        }
    }
}

crate::kernel_test! {
    /// A conversion drops the old translation on every CPU: CPU 1 loads a
    /// translation of every direct-map pageblock, CPU 0 converts a whole
    /// mapped pageblock to `Unmapped` (one shootdown round), and CPU 1's
    /// next read of that block must fault. Under `ptprot=none` no window
    /// writes a register, so without a shootdown round CPU 1 keeps its
    /// translation under TCG and the read lands (checked: with the round
    /// removed, 0 rounds and the read succeeds). TCG drops CPU 1's TLB
    /// when it takes the IPI, though, so a handler that acknowledges
    /// without flushing does not show here; the loom models of
    /// `kernel/shootdown` catch that one.
    fn a_conversion_drops_the_old_translation_on_other_cpus() -> TestResult {
        use ptalloc::{Freetype, Mobility, Protection};
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        frames::needs_free_pageblocks(1, "to convert")?;
        let Some(allocator) = frames::allocator() else {
            return Err(TestFailure::new(file!(), line!(), format_args!("no allocator")));
        };
        let hidden = Freetype { mobility: Mobility::Movable, protection: Protection::Unmapped };
        // Whole free pageblocks other tests left `Unmapped` become mapped
        // kernel memory again, so the one converted below changes its
        // mapping.
        let mut remapped: heapless::Vec<ptalloc::Pfn, 64> = heapless::Vec::new();
        while !remapped.is_full() {
            let Ok(block) = allocator.alloc(0, 9, Freetype::KERNEL, AllocFlags::empty()) else { break };
            let _ = remapped.push(block);
        }
        let freed = remapped.iter().all(|&block| allocator.free(0, block, 9).is_ok());
        crate::check!(freed, "a remapped block could not be freed");
        PROBE_BLOCK.store(0, Ordering::Release);
        let loaded = smp::run_on(other, probe_from_the_other_cpu, 2000);
        let rounds_before = super::tlb::shootdown_stats().rounds;
        let before = allocator.stats();
        let block = allocator.alloc(0, 9, hidden, AllocFlags::empty());
        let after = allocator.stats();
        let rounds = super::tlb::shootdown_stats().rounds - rounds_before;
        let read = block.map(|block| {
            PROBE_BLOCK.store(block.addr(), Ordering::Release);
            PROBE_READ.store(0, Ordering::Release);
            let run = smp::run_on(other, probe_from_the_other_cpu, 2000);
            (run, PROBE_READ.load(Ordering::Acquire))
        });
        if let Ok(block) = block {
            crate::check_eq!(allocator.free(0, block, 9), Ok(()));
        }
        defmt::info!(
            "cross-CPU conversion: {=u64} shootdown rounds; CPU 1's read of the converted block: {=u64} (1 read, 2 faulted)",
            rounds,
            read.map_or(0, |(_, outcome)| outcome)
        );
        crate::check_eq!(loaded, Ok(()));
        let converted = Freetype::all()
            .filter(|ft| ft.protection != Protection::Unmapped)
            .any(|ft| after.converted(ft, hidden) > before.converted(ft, hidden));
        crate::check!(converted, "no mapped pageblock was converted");
        crate::check!(rounds >= 1, "the conversion sent no shootdown round");
        crate::check_eq!(read, Ok((Ok(()), 2)), "CPU 1 still reads the converted block: a stale translation");
        Ok(())
    }
}

/// The address CPU 1 reads in the unmap tests, and whether it is a user
/// address (read with SMAP lifted).
static UNMAP_PROBE: AtomicU64 = AtomicU64::new(0);
static UNMAP_PROBE_IS_USER: AtomicBool = AtomicBool::new(false);
/// CPU 1's read of `UNMAP_PROBE`: 0 not run, 1 it read, 2 it faulted.
static UNMAP_READ: AtomicU64 = AtomicU64::new(0);
/// The user space of the user unmap test, which CPU 1 loads.
static SPACE: spin::Mutex<Option<AddressSpace>> = spin::Mutex::new(None);

/// Runs on CPU 1: reads `UNMAP_PROBE`.
fn read_probe_on_the_other_cpu() {
    let virt = UNMAP_PROBE.load(Ordering::Acquire) as *const u64;
    // SAFETY: a test mapping's address, aligned, read only; a fault
    // resumes at the probe's recovery point.
    let read = unsafe {
        if UNMAP_PROBE_IS_USER.load(Ordering::Acquire) {
            read_user_u64_if_mapped(virt)
        } else {
            read_u64_if_mapped(virt)
        }
    };
    UNMAP_READ.store(if read.is_ok() { 1 } else { 2 }, Ordering::Release);
}

/// Runs on CPU 1: loads the test's user space there.
fn load_the_space_on_the_other_cpu() {
    if let Some(space) = SPACE.lock().as_ref() {
        space.load();
    }
}

/// Runs on CPU 1: back to the kernel's root.
fn leave_the_space_on_the_other_cpu() {
    super::paging::load_kernel_root();
}

/// Has CPU `other` read `UNMAP_PROBE`: 1 it read, 2 it faulted, 0 it
/// did not run.
fn probe_on(other: usize) -> u64 {
    UNMAP_READ.store(0, Ordering::Release);
    match smp::run_on(other, read_probe_on_the_other_cpu, 2000) {
        Ok(()) => UNMAP_READ.load(Ordering::Acquire),
        Err(_) => 0,
    }
}

/// Shootdown rounds and CPUs interrupted so far.
fn rounds() -> (u64, u64) {
    let stats = super::tlb::shootdown_stats();
    (stats.rounds, stats.cpus_interrupted)
}

crate::kernel_test! {
    /// A kernel-space unmap drops the translation on every CPU before the
    /// frame goes back: CPU 1 reads a kernel-space page (so its TLB holds
    /// it), CPU 0 unmaps it (one shootdown round), and CPU 1's next read
    /// faults. No window writes a register on CPU 1, so under every
    /// policy TCG would keep its translation without the round.
    fn a_kernel_unmap_drops_the_translation_on_other_cpus() -> TestResult {
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        let kernel = super::paging::kernel_space().ok_or_else(|| TestFailure::because(&"no kernel space"))?;
        let frame = frames::alloc_frame(0, ptalloc::Freetype::KERNEL, true).map_err(|e| TestFailure::because(&e))?;
        let virt = KERNEL_MAP_BASE + (6 << 30);
        let rw = MapFlags { writable: true, executable: false };
        kernel.map(virt, frame, rw).map_err(|e| TestFailure::because(&e.error))?;
        UNMAP_PROBE.store(virt, Ordering::Release);
        UNMAP_PROBE_IS_USER.store(false, Ordering::Release);
        let before_unmap = probe_on(other);
        let before = rounds();
        let frame = kernel.unmap(virt, PageSize::Small);
        let (round, interrupted) = rounds();
        let after_unmap = probe_on(other);
        drop(frame);
        defmt::info!(
            "kernel unmap: {=u64} shootdown rounds, {=u64} CPUs interrupted; CPU 1 read before {=u64}, after {=u64} (1 read, 2 faulted)",
            round - before.0,
            interrupted - before.1,
            before_unmap,
            after_unmap
        );
        crate::check_eq!(before_unmap, 1, "CPU 1 could not read the mapped page");
        crate::check_eq!(round - before.0, 1);
        crate::check_eq!(interrupted - before.1, smp::online_cpus().len() as u64 - 1);
        crate::check_eq!(after_unmap, 2, "CPU 1 still reads the unmapped page: a stale translation");
        Ok(())
    }
}

crate::kernel_test! {
    /// A user-space unmap is shot down only where the space is loaded:
    /// with CPU 1 in the space, an unmap interrupts CPU 1 alone (one
    /// round) and CPU 1's next read of the page faults; once CPU 1 has
    /// switched away, an unmap sends no round, and neither does one while
    /// only CPU 0 has it loaded (a local INVLPG).
    fn a_user_unmap_reaches_only_the_cpus_with_the_space_loaded() -> TestResult {
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        const USER_VIRT: u64 = 0x6000_0000;
        let space = AddressSpace::new().map_err(|e| TestFailure::because(&e))?;
        let rw = MapFlags { writable: true, executable: false };
        for page in 0..3 {
            let frame = frames::alloc_frame(0, ptalloc::Freetype::KERNEL, true).map_err(|e| TestFailure::because(&e))?;
            space.map(USER_VIRT + page * 4096, frame, rw).map_err(|e| TestFailure::because(&e.error))?;
        }
        *SPACE.lock() = Some(space);
        UNMAP_PROBE.store(USER_VIRT, Ordering::Release);
        UNMAP_PROBE_IS_USER.store(true, Ordering::Release);
        let loaded = smp::run_on(other, load_the_space_on_the_other_cpu, 2000);
        let before_unmap = probe_on(other);
        let unmap = |page: u64| {
            SPACE.lock().as_ref().map_or(((0, 0), false), |space| unmap_here(space, USER_VIRT + page * 4096))
        };
        let while_loaded_there = unmap(0);
        let after_unmap = probe_on(other);
        let left = smp::run_on(other, leave_the_space_on_the_other_cpu, 2000);
        let after_it_left = unmap(1);
        let space = SPACE.lock().take().ok_or_else(|| TestFailure::because(&"the space went missing"))?;
        space.load();
        let loaded_here = unmap_here(&space, USER_VIRT + 2 * 4096);
        super::paging::load_kernel_root();
        drop(space);
        defmt::info!(
            "user unmap: (rounds, CPUs interrupted) with CPU 1 in the space {=u64}/{=u64}, after it left {=u64}/{=u64}, loaded only here {=u64}/{=u64}; CPU 1 read before {=u64}, after {=u64}",
            while_loaded_there.0.0, while_loaded_there.0.1, after_it_left.0.0, after_it_left.0.1,
            loaded_here.0.0, loaded_here.0.1, before_unmap, after_unmap
        );
        crate::check_eq!((loaded, left), (Ok(()), Ok(())));
        crate::check_eq!(before_unmap, 1, "CPU 1 could not read the page in the loaded space");
        crate::check_eq!(while_loaded_there, ((1, 1), true));
        crate::check_eq!(after_unmap, 2, "CPU 1 still reads the unmapped page: a stale translation");
        crate::check_eq!(after_it_left, ((0, 0), true));
        crate::check_eq!(loaded_here, ((0, 0), true));
        Ok(())
    }
}

/// Unmaps the 4 KiB page at `virt` from `space`: (shootdown rounds, CPUs
/// interrupted) it cost, and whether it unmapped.
fn unmap_here(space: &AddressSpace, virt: u64) -> ((u64, u64), bool) {
    let before = rounds();
    let unmapped = space.unmap(virt, PageSize::Small).is_ok();
    let after = rounds();
    ((after.0 - before.0, after.1 - before.1), unmapped)
}

/// A writable static, for the control write below.
static CONTROL: AtomicU64 = AtomicU64::new(0);

crate::kernel_test! {
    /// An AP's GDT and TSS cannot be written through either mapping: its
    /// read-only kernel-space mapping, where the CPU reads them, or the
    /// frame's direct-map alias, where the boot CPU filled them (a stray
    /// write to the TSS's IST pointers would steer where the AP's #PF and
    /// #DF frames land). Read-only entries, so under every policy; the
    /// control write to a writable static shows the probe sees a write
    /// that lands, and the alias write lands with the sealing removed.
    fn an_ap_gdt_and_tss_are_read_only_in_both_mappings() -> TestResult {
        let Some(&(other, _)) = smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        let (alias, mapped) = smp::ap_tables(other).ok_or_else(|| TestFailure::because(&"no AP tables"))?;
        // Rewrites the word with the value it holds: true if it landed.
        let lands = |addr: u64| {
            let word = addr as *mut u64;
            // SAFETY: an aligned word of a mapped page (the AP's tables or
            // a static); writing back what it holds changes nothing.
            unsafe { write_u64_if_writable(word, word.read_volatile()).is_ok() }
        };
        let tss = smp::AP_TSS_OFFSET;
        // The aligned word at 0x20 holds the low half of IST1.
        let results = [lands(alias), lands(alias + tss + 0x20), lands(mapped), lands(mapped + tss + 0x20)];
        crate::check!(lands(CONTROL.as_ptr() as u64), "the control write did not land");
        crate::check_eq!(results, [false; 4], "GDT alias, TSS alias, GDT, TSS: true where a write landed");
        Ok(())
    }
}
