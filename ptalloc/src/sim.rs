//! A simulated direct map that checks every call, and an invariant checker
//! (feature `std`; host tests and benchmarks only).
//!
//! [`SimDirectMap`] models the kernel's direct map over the physical frames
//! `[0, frames)` (frame `n` at `n * 4096`) at the three x86-64 page sizes:
//! each 1 GiB region is one 1 GiB mapping or a page directory of 512
//! entries, each of which is one 2 MiB mapping or a page table of 512 4 KiB
//! mappings. Every mapping carries one [`Protection`]. It starts with the
//! largest pages it is told ([`LargestPage`]), all [`Protection::Mapped`].
//!
//! It splits only what a change needs: a pageblock range inside a 1 GiB
//! mapping splits that mapping once (one page from the caller's
//! [`SplitPages`]); a 4 KiB change ([`SimDirectMap::protect_page`]) may
//! also split a 2 MiB mapping. It takes every page it needs before it
//! changes anything, so a call that fails leaves the map as it was. It
//! never merges.
//!
//! What it checks, on every call. A failed check is a *violation*: it is
//! recorded (see [`SimDirectMap::violations`]) and the call fails with
//! [`DirectMapError::Failed`], changing nothing.
//! - `protect`: whole pageblocks of RAM; every frame has `from`; no
//!   direct-map page table lies in the range.
//! - Split pages: RAM, not already a page table, taken once, and either
//!   key-protected already or inside the range being made key-protected
//!   (a conversion to the page-table freetype hosts its own split).
//! - No re-entry: while a call runs on a thread, that thread makes no
//!   other backend call (the split path must not recurse into the
//!   allocator), and no two threads change the map at once.
//! - `zero`: an aligned block of RAM whose frames all have the protection
//!   named, none of them a page table.
//! - `flush`: every `protect` that took permissions away is flushed
//!   (checked by [`check`] through [`SimDirectMap::unflushed`]).
//!
//! [`check`] compares what the allocator believes (its public view:
//! [`PageAllocator::frame_info`], [`PageAllocator::stats`],
//! [`PageAllocator::reserve_frames`]) with a list of live blocks and with
//! the simulated map, and names the first frame that breaks a rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use crate::allocator::{FrameState, PageAllocator};
use crate::backend::{
    DirectMap, DirectMapError, FlushReport, MappingCounts, Migrate, MigrateError, PageSize,
    PageblockRange, ProtectReport, SplitPages,
};
use crate::freetype::{Freetype, NR_FREETYPES, Protection};
use crate::{MAX_ORDER, NR_ORDERS, PAGEBLOCK_ORDER, Pfn};

/// Frames a 2 MiB mapping covers.
const MEGA_FRAMES: u64 = 1 << PAGEBLOCK_ORDER;
/// Frames a 1 GiB mapping covers.
const GIGA_FRAMES: u64 = 1 << MAX_ORDER;
/// Entries in one page-table page.
const ENTRIES: usize = 512;

const _: () = assert!(GIGA_FRAMES == MEGA_FRAMES * ENTRIES as u64);

/// The largest page the direct map starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LargestPage {
    /// 1 GiB pages (CPUs with `pdpe1gb`).
    Giga,
    /// 2 MiB pages; the boot code's page directories are not modelled as
    /// frames.
    Mega,
}

/// What a direct-map page table made by a split maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableLevel {
    /// A page directory: made by splitting a 1 GiB mapping, it holds 512
    /// 2 MiB entries.
    Directory,
    /// A page table: made by splitting a 2 MiB mapping, it holds 512 4 KiB
    /// entries.
    Table,
}

/// A frame the simulator used as a direct-map page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTable {
    /// The frame holding the table.
    pub pfn: Pfn,
    /// What it maps.
    pub level: TableLevel,
    /// First frame of the region it maps.
    pub maps: Pfn,
    /// The page lay inside the range whose protection the call changed
    /// (a self-hosted split); otherwise it came from elsewhere (the
    /// reserve) and was key-protected already.
    pub inside_range: bool,
}

/// Counters of what the simulator was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Successful `protect` calls.
    pub protect_calls: u64,
    /// Successful [`SimDirectMap::protect_page`] calls.
    pub protect_page_calls: u64,
    /// `protect` and `protect_page` calls that failed (injected, no split
    /// page, or a violation).
    pub protect_failures: u64,
    /// Failures for want of a split page.
    pub no_split_page: u64,
    /// Pageblocks whose protection `protect` changed.
    pub pageblocks_protected: u64,
    /// 1 GiB mappings split into 2 MiB ones.
    pub splits_1g: u64,
    /// 2 MiB mappings split into 4 KiB ones.
    pub splits_2m: u64,
    /// Split pages used (one per split).
    pub split_pages_used: u64,
    /// Flushes on the calling CPU.
    pub flushes_local: u64,
    /// CPUs interrupted by shootdowns.
    pub flushes_remote: u64,
    /// Flushes that covered no change that took permissions away.
    pub unneeded_flushes: u64,
    /// Successful `zero` calls.
    pub zero_calls: u64,
    /// `zero` calls that failed.
    pub zero_failures: u64,
    /// Frames zeroed.
    pub frames_zeroed: u64,
    /// Backend calls made from inside another one on the same thread.
    pub reentries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mega {
    Page(Protection),
    Split { table: Pfn, pages: Vec<Protection> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Giga {
    Page(Protection),
    /// `table` is `None` for the boot code's directories ([`LargestPage::Mega`]).
    Split {
        table: Option<Pfn>,
        entries: Vec<Mega>,
    },
}

/// A copy of the simulated mappings and page tables, to compare before
/// and after a call ("the map is unchanged").
#[derive(Clone, PartialEq, Eq)]
pub struct MapSnapshot {
    regions: Vec<Giga>,
    tables: Vec<PageTable>,
}

impl fmt::Debug for MapSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split_1g = self
            .regions
            .iter()
            .filter(|g| matches!(g, Giga::Split { .. }))
            .count();
        f.debug_struct("MapSnapshot")
            .field("regions", &self.regions.len())
            .field("split_1g_regions", &split_1g)
            .field("tables", &self.tables)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Giga { region: usize },
    Mega { region: usize, entry: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Protect,
    ProtectPage,
    Flush,
    Zero,
}

impl Call {
    /// Calls that change the map or its TLB state; the allocator makes
    /// them under its lock, so two never overlap.
    fn exclusive(self) -> bool {
        !matches!(self, Call::Zero)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Protect => "protect",
            Call::ProtectPage => "protect_page",
            Call::Flush => "flush",
            Call::Zero => "zero",
        })
    }
}

struct State {
    regions: Vec<Giga>,
    tables: Vec<PageTable>,
    table_set: HashSet<u64>,
    counters: SimCounters,
    violations: Vec<String>,
    fail_protects: u32,
    fail_zeros: u32,
    unflushed: Vec<PageblockRange>,
    active: Vec<(ThreadId, Call)>,
}

/// A simulated direct map (see the module doc). `Sync`: the state is
/// behind a mutex, released while split pages are taken so that a
/// re-entrant call is caught rather than deadlocking.
pub struct SimDirectMap {
    frames: u64,
    cpus: u32,
    state: Mutex<State>,
}

impl fmt::Debug for SimDirectMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDirectMap")
            .field("frames", &self.frames)
            .field("cpus", &self.cpus)
            .field("counters", &state.counters)
            .field("tables", &state.tables.len())
            .field("violations", &state.violations)
            .finish()
    }
}

/// Marks a backend call as running on this thread until dropped.
struct CallGuard<'a> {
    sim: &'a SimDirectMap,
    thread: ThreadId,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.sim.lock();
        if let Some(at) = state
            .active
            .iter()
            .rposition(|(thread, _)| *thread == self.thread)
        {
            state.active.remove(at);
        }
    }
}

fn range_text(range: PageblockRange) -> String {
    format!("[{:#x}, +{} pageblocks)", range.start.0, range.pageblocks)
}

impl SimDirectMap {
    /// A direct map of frames `[0, frames)`, all [`Protection::Mapped`]
    /// with `largest` pages, on a machine of `cpus` CPUs (for shootdown
    /// counts).
    pub fn new(frames: u64, largest: LargestPage, cpus: u32) -> Self {
        let regions = frames.div_ceil(GIGA_FRAMES) as usize;
        let region = match largest {
            LargestPage::Giga => Giga::Page(Protection::Mapped),
            LargestPage::Mega => Giga::Split {
                table: None,
                entries: vec![Mega::Page(Protection::Mapped); ENTRIES],
            },
        };
        Self {
            frames,
            cpus,
            state: Mutex::new(State {
                regions: vec![region; regions],
                tables: Vec::new(),
                table_set: HashSet::new(),
                counters: SimCounters::default(),
                violations: Vec::new(),
                fail_protects: 0,
                fail_zeros: 0,
                unflushed: Vec::new(),
                active: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held (a failed assertion in a test
        // thread) leaves consistent data: every change is made whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frames of RAM modelled.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// CPUs a shootdown reaches.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The protection of frame `pfn`; frames outside RAM are not in the
    /// direct map, so [`Protection::Unmapped`].
    pub fn protection_of(&self, pfn: Pfn) -> Protection {
        if pfn.0 >= self.frames {
            return Protection::Unmapped;
        }
        self.lock().protection_of(pfn.0)
    }

    /// The protections of frames `[start, end)` (clamped to RAM), in one
    /// lock.
    pub fn protections(&self, start: Pfn, end: Pfn) -> Vec<Protection> {
        let state = self.lock();
        (start.0..end.0)
            .map(|pfn| {
                if pfn < self.frames {
                    state.protection_of(pfn)
                } else {
                    Protection::Unmapped
                }
            })
            .collect()
    }

    /// Every frame used as a direct-map page table, with its level.
    pub fn page_tables(&self) -> Vec<(Pfn, TableLevel)> {
        self.lock()
            .tables
            .iter()
            .map(|table| (table.pfn, table.level))
            .collect()
    }

    /// Every direct-map page table, with where its page came from.
    pub fn table_records(&self) -> Vec<PageTable> {
        self.lock().tables.clone()
    }

    /// The counters so far.
    pub fn counters(&self) -> SimCounters {
        self.lock().counters
    }

    /// Every violation seen so far, oldest first.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// `protect` calls that took permissions away and have not been
    /// flushed yet.
    pub fn unflushed(&self) -> Vec<PageblockRange> {
        self.lock().unflushed.clone()
    }

    /// True while some thread is inside a backend call.
    pub fn busy(&self) -> bool {
        !self.lock().active.is_empty()
    }

    /// A copy of the mappings and page tables.
    pub fn snapshot(&self) -> MapSnapshot {
        let state = self.lock();
        MapSnapshot {
            regions: state.regions.clone(),
            tables: state.tables.clone(),
        }
    }

    /// Makes the next `calls` `protect` (and `protect_page`) calls fail
    /// with [`DirectMapError::Failed`], changing nothing.
    pub fn fail_next_protects(&self, calls: u32) {
        let mut state = self.lock();
        state.fail_protects = state.fail_protects.saturating_add(calls);
    }

    /// Makes the next `calls` `zero` calls fail with
    /// [`DirectMapError::Failed`].
    pub fn fail_next_zeros(&self, calls: u32) {
        let mut state = self.lock();
        state.fail_zeros = state.fail_zeros.saturating_add(calls);
    }

    /// Injected `protect` failures not yet used.
    pub fn pending_protect_failures(&self) -> u32 {
        self.lock().fail_protects
    }

    /// Injected `zero` failures not yet used.
    pub fn pending_zero_failures(&self) -> u32 {
        self.lock().fail_zeros
    }

    /// Cancels every injected failure not yet used.
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.fail_protects = 0;
        state.fail_zeros = 0;
    }

    /// Marks `call` as running on this thread. `None` (and a violation) if
    /// this thread is already inside a backend call, or if another thread
    /// is changing the map at the same time.
    fn enter(&self, call: Call) -> Option<CallGuard<'_>> {
        let me = thread::current().id();
        let mut state = self.lock();
        if let Some(&(_, outer)) = state.active.iter().find(|(thread, _)| *thread == me) {
            state.counters.reentries += 1;
            state.violation(format!(
                "re-entered: {call} called from inside {outer} on the same thread; \
                 the split path must not call back into the allocator or the backend"
            ));
            return None;
        }
        if call.exclusive()
            && let Some(&(_, other)) = state.active.iter().find(|(_, running)| running.exclusive())
        {
            state.violation(format!(
                "{call} ran while another thread was inside {other}: \
                 the allocator must serialise direct-map changes"
            ));
            return None;
        }
        state.active.push((me, call));
        Some(CallGuard {
            sim: self,
            thread: me,
        })
    }

    /// Takes `count` pages from `split_pages`, all before anything changes.
    fn take_split_pages(
        &self,
        count: usize,
        split_pages: &mut dyn SplitPages,
    ) -> Result<Vec<Pfn>, DirectMapError> {
        let mut taken = Vec::with_capacity(count);
        for _ in 0..count {
            match split_pages.take() {
                Some(pfn) => taken.push(pfn),
                None => {
                    let mut state = self.lock();
                    state.counters.protect_failures += 1;
                    state.counters.no_split_page += 1;
                    return Err(DirectMapError::NoSplitPage);
                }
            }
        }
        Ok(taken)
    }

    /// Gives the 4 KiB frame `pfn` the protection `to`, splitting what it
    /// must (at most a 1 GiB and a 2 MiB mapping: two pages from
    /// `split_pages`, all taken before anything changes). This is what the
    /// kernel does for single pages (early page tables, for instance);
    /// run it through [`PageAllocator::with_split_reserve`]. The caller
    /// flushes.
    pub fn protect_page(
        &self,
        pfn: Pfn,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let Some(_call) = self.enter(Call::ProtectPage) else {
            return Err(DirectMapError::Failed);
        };
        let (lo, hi) = (pfn.0, pfn.0.saturating_add(1));
        let needed = {
            let mut state = self.lock();
            if let Some(error) = state.injected_protect_failure() {
                return Err(error);
            }
            if hi > self.frames {
                return Err(state.fail(format!("protect_page {:#x}: not a frame of RAM", pfn.0)));
            }
            if state.table_set.contains(&pfn.0) {
                return Err(state.fail(format!(
                    "protect_page {:#x}: it is a direct-map page table",
                    pfn.0
                )));
            }
            if state.protection_of(pfn.0) == to {
                state.counters.protect_page_calls += 1;
                return Ok(ProtectReport::default());
            }
            state.splits_for(lo, hi)
        };
        let taken = self.take_split_pages(needed.len(), split_pages)?;
        let mut state = self.lock();
        if let Err(message) = state.validate_split_pages(&taken, lo, hi, to, self.frames) {
            return Err(state.fail(format!("protect_page {:#x} to {to}: {message}", pfn.0)));
        }
        if state.splits_for(lo, hi) != needed {
            return Err(state.fail(format!(
                "protect_page {:#x}: the map changed while split pages were taken",
                pfn.0
            )));
        }
        let report = state.apply_splits(&needed, &taken, lo, hi);
        state.set_range(lo, hi, to);
        state.counters.protect_page_calls += 1;
        Ok(report)
    }
}

impl DirectMap for SimDirectMap {
    fn protect(
        &self,
        range: PageblockRange,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        let Some(_call) = self.enter(Call::Protect) else {
            return Err(DirectMapError::Failed);
        };
        let what = format!("protect {} from {from} to {to}", range_text(range));
        let lo = range.start.0;
        let hi = range
            .pageblocks
            .checked_mul(MEGA_FRAMES)
            .and_then(|frames| lo.checked_add(frames));
        let (hi, needed) = {
            let mut state = self.lock();
            if let Some(error) = state.injected_protect_failure() {
                return Err(error);
            }
            let hi = match hi {
                Some(hi)
                    if range.pageblocks > 0
                        && lo.is_multiple_of(MEGA_FRAMES)
                        && hi <= self.frames =>
                {
                    hi
                }
                _ => return Err(state.fail(format!("{what}: not whole pageblocks of RAM"))),
            };
            if let Some((pfn, actual)) = state.first_mismatch(lo, hi, from) {
                return Err(state.fail(format!("{what}: frame {pfn:#x} has {actual}, not {from}")));
            }
            if let Some(table) = state.table_in(lo, hi) {
                return Err(state.fail(format!(
                    "{what}: the range holds direct-map page table {table:#x}"
                )));
            }
            if from == to {
                state.counters.protect_calls += 1;
                return Ok(ProtectReport::default());
            }
            (hi, state.splits_for(lo, hi))
        };
        let taken = self.take_split_pages(needed.len(), split_pages)?;
        let mut state = self.lock();
        if let Err(message) = state.validate_split_pages(&taken, lo, hi, to, self.frames) {
            return Err(state.fail(format!("{what}: {message}")));
        }
        if state.splits_for(lo, hi) != needed {
            return Err(state.fail(format!(
                "{what}: the map changed while split pages were taken"
            )));
        }
        let report = state.apply_splits(&needed, &taken, lo, hi);
        state.set_range(lo, hi, to);
        state.counters.protect_calls += 1;
        state.counters.pageblocks_protected += range.pageblocks;
        if from.needs_flush_to(to) {
            state.unflushed.push(range);
        }
        Ok(report)
    }

    fn protect_frame(
        &self,
        pfn: Pfn,
        from: Protection,
        to: Protection,
        split_pages: &mut dyn SplitPages,
    ) -> Result<ProtectReport, DirectMapError> {
        {
            let mut state = self.lock();
            if pfn.0 < self.frames && state.protection_of(pfn.0) != from {
                let actual = state.protection_of(pfn.0);
                return Err(state.fail(format!(
                    "protect_frame {:#x}: it has {actual}, not {from}",
                    pfn.0
                )));
            }
        }
        let report = self.protect_page(pfn, to, split_pages)?;
        // The allocator must flush what it took permissions from: the old
        // translation may be the pageblock's 2 MiB one, so the pageblock.
        if from.needs_flush_to(to) {
            let start = Pfn(pfn.0 & !(MEGA_FRAMES - 1));
            self.lock().unflushed.push(PageblockRange {
                start,
                pageblocks: 1,
            });
        }
        Ok(report)
    }

    /// The largest page left in the map: it never merges, so that is also
    /// the largest it will hold. A map built with [`LargestPage::Mega`]
    /// (or whose every gigabyte is split) answers 2 MiB.
    fn largest_page(&self) -> Option<PageSize> {
        let state = self.lock();
        let mut largest = PageSize::Size4K;
        for region in &state.regions {
            match region {
                Giga::Page(_) => return Some(PageSize::Size1G),
                Giga::Split { entries, .. } => {
                    if entries.iter().any(|entry| matches!(entry, Mega::Page(_))) {
                        largest = PageSize::Size2M;
                    }
                }
            }
        }
        Some(largest)
    }

    /// Every leaf entry of the map by size (the last gigabyte's entries
    /// past the end of RAM included: the map is built of whole gigabytes).
    fn mappings(&self) -> Option<MappingCounts> {
        let state = self.lock();
        let mut counts = MappingCounts::default();
        for region in &state.regions {
            match region {
                Giga::Page(_) => counts.pages_1g += 1,
                Giga::Split { entries, .. } => {
                    for entry in entries {
                        match entry {
                            Mega::Page(_) => counts.pages_2m += 1,
                            Mega::Split { pages, .. } => counts.pages_4k += pages.len() as u64,
                        }
                    }
                }
            }
        }
        Some(counts)
    }

    fn flush(&self, range: PageblockRange) -> FlushReport {
        let report = FlushReport {
            local: 1,
            remote: self.cpus.saturating_sub(1),
        };
        let call = self.enter(Call::Flush);
        let mut state = self.lock();
        let lo = range.start.0;
        let hi = range
            .pageblocks
            .checked_mul(MEGA_FRAMES)
            .and_then(|frames| lo.checked_add(frames));
        match hi {
            Some(hi) if range.pageblocks > 0 && hi <= self.frames => {
                let before = state.unflushed.len();
                state
                    .unflushed
                    .retain(|done| done.start.0 < lo || done.end().0 > hi);
                if state.unflushed.len() == before {
                    state.counters.unneeded_flushes += 1;
                }
            }
            _ => state.violation(format!(
                "flush {}: not whole pageblocks of RAM",
                range_text(range)
            )),
        }
        state.counters.flushes_local += u64::from(report.local);
        state.counters.flushes_remote += u64::from(report.remote);
        drop(state);
        drop(call);
        report
    }

    fn zero(&self, start: Pfn, order: u32, protection: Protection) -> Result<(), DirectMapError> {
        let Some(_call) = self.enter(Call::Zero) else {
            return Err(DirectMapError::Failed);
        };
        let what = format!("zero [{:#x}, order {order}) as {protection}", start.0);
        let mut state = self.lock();
        let hi = (order <= MAX_ORDER)
            .then(|| start.0.checked_add(1 << order))
            .flatten();
        let hi = match hi {
            Some(hi) if hi <= self.frames && start.0.is_multiple_of(1 << order) => hi,
            _ => {
                state.counters.zero_failures += 1;
                state.violation(format!("{what}: not an aligned block of RAM"));
                return Err(DirectMapError::Failed);
            }
        };
        if state.fail_zeros > 0 {
            state.fail_zeros -= 1;
            state.counters.zero_failures += 1;
            return Err(DirectMapError::Failed);
        }
        let problem = if let Some((pfn, actual)) = state.first_mismatch(start.0, hi, protection) {
            Some(format!("{what}: frame {pfn:#x} has {actual}"))
        } else {
            state
                .table_in(start.0, hi)
                .map(|table| format!("{what}: would wipe direct-map page table {table:#x}"))
        };
        if let Some(problem) = problem {
            state.counters.zero_failures += 1;
            state.violation(problem);
            return Err(DirectMapError::Failed);
        }
        state.counters.zero_calls += 1;
        state.counters.frames_zeroed += 1 << order;
        Ok(())
    }
}

impl State {
    fn violation(&mut self, message: String) {
        self.violations.push(message);
    }

    /// Records a violation by a `protect`-like call and the failure.
    fn fail(&mut self, message: String) -> DirectMapError {
        self.counters.protect_failures += 1;
        self.violation(message);
        DirectMapError::Failed
    }

    fn injected_protect_failure(&mut self) -> Option<DirectMapError> {
        if self.fail_protects == 0 {
            return None;
        }
        self.fail_protects -= 1;
        self.counters.protect_failures += 1;
        Some(DirectMapError::Failed)
    }

    /// The protection of a frame of RAM.
    fn protection_of(&self, pfn: u64) -> Protection {
        let region = (pfn / GIGA_FRAMES) as usize;
        let entry = ((pfn / MEGA_FRAMES) % ENTRIES as u64) as usize;
        let page = (pfn % MEGA_FRAMES) as usize;
        match self.regions.get(region) {
            None => Protection::Unmapped,
            Some(Giga::Page(protection)) => *protection,
            Some(Giga::Split { entries, .. }) => match &entries[entry] {
                Mega::Page(protection) => *protection,
                Mega::Split { pages, .. } => pages[page],
            },
        }
    }

    /// The first frame of `[lo, hi)` (RAM) whose protection is not `want`.
    fn first_mismatch(&self, lo: u64, hi: u64, want: Protection) -> Option<(u64, Protection)> {
        let mut pfn = lo;
        while pfn < hi {
            let region = (pfn / GIGA_FRAMES) as usize;
            let (step, found) = match self.regions.get(region) {
                None => (1, Protection::Unmapped),
                Some(Giga::Page(protection)) => (GIGA_FRAMES - pfn % GIGA_FRAMES, *protection),
                Some(Giga::Split { entries, .. }) => {
                    match &entries[((pfn / MEGA_FRAMES) % ENTRIES as u64) as usize] {
                        Mega::Page(protection) => (MEGA_FRAMES - pfn % MEGA_FRAMES, *protection),
                        Mega::Split { pages, .. } => (1, pages[(pfn % MEGA_FRAMES) as usize]),
                    }
                }
            };
            if found != want {
                return Some((pfn, found));
            }
            pfn += step;
        }
        None
    }

    /// A direct-map page table inside `[lo, hi)`, if any.
    fn table_in(&self, lo: u64, hi: u64) -> Option<u64> {
        self.tables
            .iter()
            .map(|table| table.pfn.0)
            .find(|pfn| (lo..hi).contains(pfn))
    }

    /// The splits a change of `[lo, hi)` (non-empty, in RAM) needs: each
    /// mapping that the range covers only in part.
    fn splits_for(&self, lo: u64, hi: u64) -> Vec<Split> {
        let mut splits = Vec::new();
        for region in (lo / GIGA_FRAMES) as usize..=((hi - 1) / GIGA_FRAMES) as usize {
            let start = region as u64 * GIGA_FRAMES;
            let end = start + GIGA_FRAMES;
            let giga_page = matches!(self.regions.get(region), Some(Giga::Page(_)));
            if lo <= start && end <= hi && giga_page {
                continue;
            }
            if giga_page {
                splits.push(Split::Giga { region });
            }
            let first = (lo.max(start) - start) / MEGA_FRAMES;
            let last = (hi.min(end) - 1 - start) / MEGA_FRAMES;
            for entry in first as usize..=last as usize {
                let entry_start = start + entry as u64 * MEGA_FRAMES;
                if lo <= entry_start && entry_start + MEGA_FRAMES <= hi {
                    continue;
                }
                let mega_page = match self.regions.get(region) {
                    Some(Giga::Split { entries, .. }) => matches!(entries[entry], Mega::Page(_)),
                    _ => true,
                };
                if mega_page {
                    splits.push(Split::Mega { region, entry });
                }
            }
        }
        splits
    }

    /// Checks the pages a call took for its splits (see the module doc).
    fn validate_split_pages(
        &self,
        taken: &[Pfn],
        lo: u64,
        hi: u64,
        to: Protection,
        frames: u64,
    ) -> Result<(), String> {
        for (at, page) in taken.iter().enumerate() {
            let pfn = page.0;
            if pfn >= frames {
                return Err(format!("split page {pfn:#x} is not RAM"));
            }
            if self.table_set.contains(&pfn) {
                return Err(format!(
                    "split page {pfn:#x} is already a direct-map page table"
                ));
            }
            if taken[..at].contains(page) {
                return Err(format!(
                    "split page {pfn:#x} was handed out twice in one call"
                ));
            }
            if (lo..hi).contains(&pfn) {
                if !matches!(to, Protection::Pkey(_)) {
                    return Err(format!(
                        "split page {pfn:#x} lies in the range being made {to}: a page table must be key-protected"
                    ));
                }
            } else {
                let now = self.protection_of(pfn);
                if !matches!(now, Protection::Pkey(_)) {
                    return Err(format!(
                        "split page {pfn:#x} is mapped {now}: a page table must be key-protected"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Performs `splits` with the pages taken for them (same order).
    fn apply_splits(&mut self, splits: &[Split], taken: &[Pfn], lo: u64, hi: u64) -> ProtectReport {
        let mut report = ProtectReport::default();
        for (split, &table) in splits.iter().zip(taken) {
            let inside_range = (lo..hi).contains(&table.0);
            match *split {
                Split::Giga { region } => {
                    if let Some(Giga::Page(protection)) = self.regions.get(region) {
                        let entries = vec![Mega::Page(*protection); ENTRIES];
                        self.regions[region] = Giga::Split {
                            table: Some(table),
                            entries,
                        };
                        report.splits_1g += 1;
                        self.counters.splits_1g += 1;
                        let maps = Pfn(region as u64 * GIGA_FRAMES);
                        self.record_table(PageTable {
                            pfn: table,
                            level: TableLevel::Directory,
                            maps,
                            inside_range,
                        });
                    }
                }
                Split::Mega { region, entry } => {
                    if let Some(Giga::Split { entries, .. }) = self.regions.get_mut(region)
                        && let Mega::Page(protection) = entries[entry]
                    {
                        entries[entry] = Mega::Split {
                            table,
                            pages: vec![protection; ENTRIES],
                        };
                        report.splits_2m += 1;
                        self.counters.splits_2m += 1;
                        let maps = Pfn(region as u64 * GIGA_FRAMES + entry as u64 * MEGA_FRAMES);
                        self.record_table(PageTable {
                            pfn: table,
                            level: TableLevel::Table,
                            maps,
                            inside_range,
                        });
                    }
                }
            }
        }
        report
    }

    fn record_table(&mut self, table: PageTable) {
        self.counters.split_pages_used += 1;
        self.table_set.insert(table.pfn.0);
        self.tables.push(table);
    }

    /// Gives `[lo, hi)` the protection `to`; the splits it needs are done.
    fn set_range(&mut self, lo: u64, hi: u64, to: Protection) {
        let mut pfn = lo;
        while pfn < hi {
            let region = (pfn / GIGA_FRAMES) as usize;
            let step = match self.regions.get_mut(region) {
                None => hi - pfn,
                Some(Giga::Page(protection)) => {
                    *protection = to;
                    GIGA_FRAMES - pfn % GIGA_FRAMES
                }
                Some(Giga::Split { entries, .. }) => {
                    match &mut entries[((pfn / MEGA_FRAMES) % ENTRIES as u64) as usize] {
                        Mega::Page(protection) => {
                            *protection = to;
                            MEGA_FRAMES - pfn % MEGA_FRAMES
                        }
                        Mega::Split { pages, .. } => {
                            let first = (pfn % MEGA_FRAMES) as usize;
                            let count = (hi - pfn).min(MEGA_FRAMES - pfn % MEGA_FRAMES);
                            pages[first..first + count as usize].fill(to);
                            count
                        }
                    }
                }
            };
            pfn += step;
        }
    }
}

/// The kernel's verification walk, on the simulator: the live page-table
/// blocks (those of `live` whose freetype is `page_table`) with a frame
/// the direct map does not map with the page-table protection. Empty under
/// every strategy, except while [`PtFallback::Unprotected`](crate::PtFallback::Unprotected)
/// has exposed tables live: then exactly those.
pub fn unprotected_page_tables(
    sim: &SimDirectMap,
    page_table: Freetype,
    live: &[(Pfn, u32, Freetype)],
) -> Vec<Pfn> {
    live.iter()
        .filter(|&&(_, _, ft)| ft == page_table)
        .filter(|&&(pfn, order, _)| {
            let end = Pfn(pfn.0 + (1 << order));
            sim.protections(pfn, end)
                .iter()
                .any(|&protection| protection != page_table.protection)
        })
        .map(|&(pfn, _, _)| pfn)
        .collect()
}

// ---- the owner of movable blocks ----

/// The owner of movable blocks in host tests and benchmarks: a
/// [`Migrate`] that knows which blocks it holds (a test tells it with
/// [`hold`](Self::hold) and [`release`](Self::release)), checks every
/// move the allocator asks for, and logs the moves
/// ([`take_moves`](Self::take_moves)) so the test can follow its blocks.
///
/// Each held block carries a *contents* tag, given when it is first held;
/// a move carries the tag to the new frame, as a real owner copies the
/// data. A move that breaks a rule is a *violation* (recorded, see
/// [`violations`](Self::violations), and refused with
/// [`MigrateError::NotOwned`]):
/// - the block at `from` is not held with that order and freetype (a
///   block not held at all is `NotOwned` without a violation: the test
///   may have released it to free it);
/// - the freetype is not movable;
/// - `to` equals `from`, is misaligned for the order, or overlaps a held
///   block: the allocator would hand out a page twice.
#[derive(Debug, Default)]
pub struct SimMover {
    state: Mutex<MoverState>,
}

#[derive(Debug, Default)]
struct MoverState {
    /// Held blocks by first frame: order, freetype, contents tag.
    blocks: BTreeMap<u64, (u32, Freetype, u64)>,
    pinned: HashSet<u64>,
    moves: Vec<(Pfn, Pfn)>,
    moved: u64,
    refusals: u64,
    refuse_next: u32,
    next_contents: u64,
    violations: Vec<String>,
}

impl SimMover {
    /// An owner holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MoverState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts holding the block just allocated at `pfn`; returns its
    /// contents tag. Holding a block that overlaps one held is a violation.
    pub fn hold(&self, pfn: Pfn, order: u32, freetype: Freetype) -> u64 {
        let mut state = self.state();
        if state.overlaps(pfn.0, order, None) {
            state.violations.push(format!(
                "hold: block {:#x} order {order} overlaps a held block",
                pfn.0
            ));
        }
        let contents = state.next_contents;
        state.next_contents += 1;
        state.blocks.insert(pfn.0, (order, freetype, contents));
        contents
    }

    /// Stops holding the block at `pfn` (before the test frees it); false
    /// if it was not held.
    pub fn release(&self, pfn: Pfn) -> bool {
        let mut state = self.state();
        state.pinned.remove(&pfn.0);
        state.blocks.remove(&pfn.0).is_some()
    }

    /// Pins or unpins the held block at `pfn`: a pinned block refuses to
    /// move ([`MigrateError::Pinned`]).
    pub fn pin(&self, pfn: Pfn, pinned: bool) {
        let mut state = self.state();
        if pinned {
            state.pinned.insert(pfn.0);
        } else {
            state.pinned.remove(&pfn.0);
        }
    }

    /// Refuses the next `moves` moves as pinned.
    pub fn refuse_next(&self, moves: u32) {
        self.state().refuse_next = moves;
    }

    /// The moves made since the last call, as `(from, to)`, in order.
    pub fn take_moves(&self) -> Vec<(Pfn, Pfn)> {
        core::mem::take(&mut self.state().moves)
    }

    /// Every held block, as `(first frame, order, freetype)`, by frame.
    pub fn held(&self) -> Vec<(Pfn, u32, Freetype)> {
        let state = self.state();
        state
            .blocks
            .iter()
            .map(|(&pfn, &(order, ft, _))| (Pfn(pfn), order, ft))
            .collect()
    }

    /// The contents tag of the held block at `pfn`.
    pub fn contents(&self, pfn: Pfn) -> Option<u64> {
        self.state().blocks.get(&pfn.0).map(|&(_, _, tag)| tag)
    }

    /// Moves made, and moves refused (pinned), since creation.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.moved, state.refusals)
    }

    /// Every rule a move broke, in order.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }
}

impl MoverState {
    /// True if `[pfn, pfn + 2^order)` overlaps a held block other than
    /// the one at `except`.
    fn overlaps(&self, pfn: u64, order: u32, except: Option<u64>) -> bool {
        let end = pfn + (1 << order);
        // Held blocks do not overlap each other, so the last one starting
        // below `end` is the only one that can reach into the range.
        self.blocks
            .range(..end)
            .next_back()
            .filter(|(start, _)| Some(**start) != except)
            .is_some_and(|(&start, &(held_order, _, _))| start + (1 << held_order) > pfn)
            || self
                .blocks
                .range(pfn..end)
                .any(|(start, _)| Some(*start) != except)
    }
}

impl Migrate for SimMover {
    fn migrate(
        &self,
        from: Pfn,
        to: Pfn,
        order: u32,
        freetype: Freetype,
    ) -> Result<(), MigrateError> {
        let mut state = self.state();
        let Some(&(held_order, held_ft, contents)) = state.blocks.get(&from.0) else {
            return Err(MigrateError::NotOwned);
        };
        let broken = if (held_order, held_ft) != (order, freetype) {
            Some(format!(
                "held as order {held_order} {held_ft}, asked as order {order} {freetype}"
            ))
        } else if freetype.mobility != crate::freetype::Mobility::Movable {
            Some(format!("{freetype} is not movable"))
        } else if to == from || !to.0.is_multiple_of(1 << order) {
            Some(format!(
                "destination {:#x} is the block itself or misaligned",
                to.0
            ))
        } else if state.overlaps(to.0, order, None) {
            Some(format!(
                "destination {:#x} overlaps a held block: handed out twice",
                to.0
            ))
        } else {
            None
        };
        if let Some(rule) = broken {
            state
                .violations
                .push(format!("migrate {:#x} -> {:#x}: {rule}", from.0, to.0));
            return Err(MigrateError::NotOwned);
        }
        if state.pinned.contains(&from.0) || state.refuse_next > 0 {
            state.refuse_next = state.refuse_next.saturating_sub(1);
            state.refusals += 1;
            return Err(MigrateError::Pinned);
        }
        state.blocks.remove(&from.0);
        state.blocks.insert(to.0, (order, freetype, contents));
        state.moves.push((from, to));
        state.moved += 1;
        Ok(())
    }
}

// ---- the invariant checker ----

/// Who owns a managed frame, as the walk found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free(Freetype),
    Live(Freetype),
    /// A page table handed out unprotected (`PtFallback::Unprotected`).
    Exposed,
    Cached(Freetype),
    Reserve,
    Table,
}

impl Owner {
    fn freetype(self, page_table: Freetype) -> Freetype {
        match self {
            Owner::Free(ft) | Owner::Live(ft) | Owner::Cached(ft) => ft,
            Owner::Reserve | Owner::Table | Owner::Exposed => page_table,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Free(ft) => write!(f, "free {ft}"),
            Owner::Live(ft) => write!(f, "allocated {ft}"),
            Owner::Exposed => write!(f, "exposed page table"),
            Owner::Cached(ft) => write!(f, "cached {ft}"),
            Owner::Reserve => write!(f, "reserve"),
            Owner::Table => write!(f, "direct-map table"),
        }
    }
}

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*)) };
}

/// Sorts and merges ranges; rejects empty ones and ones outside the
/// allocator's frames.
fn coalesce(managed: &[(Pfn, Pfn)], base: u64, frames: u64) -> Result<Vec<(u64, u64)>, String> {
    let mut ranges: Vec<(u64, u64)> = managed
        .iter()
        .map(|(start, end)| (start.0, end.0))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if start >= end || start < base || end - base > frames {
            bail!(
                "managed range [{start:#x}, {end:#x}) is empty or outside the allocator's frames"
            );
        }
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Ok(merged)
}

/// Checks the allocator against the simulated direct map and the caller's
/// list of live blocks. Call it when no other thread uses the allocator.
///
/// - `page_table`: the freetype given as [`Config::page_table`](crate::Config::page_table);
/// - `managed`: every range given with `add_memory` (in any order; the
///   checker looks at these frames only);
/// - `live`: every block allocated and not freed, as `(first frame, order,
///   freetype)`.
///
/// Rules, each named in the message of the first frame that breaks it:
/// 1. each live block is an allocated head with that order and freetype;
///    no two blocks overlap (no page is handed out twice); every frame of
///    it has the freetype's protection, and lies in a pageblock of its
///    freetype, or (stolen, below a pageblock) of one with its protection,
///    or (a page-table page of the single-page fallback) of any freetype;
/// 2. each free block is aligned to its order, its freetype is that of
///    every pageblock it touches, and its frames have that protection; no
///    two free buddies of one order and freetype are left unmerged;
/// 3. every managed frame (free, cached or otherwise) has its pageblock's
///    protection, and pageblock counts match [`Stats::pageblocks`](crate::Stats::pageblocks);
/// 4. pages are conserved: free + cached + live + reserve + direct-map
///    tables = managed frames, and the free-list, cache, reserve and
///    allocation counters agree with the frames;
/// 5. reserve frames, direct-map tables, live page-table blocks and every
///    frame the simulator used as a page table have the page-table
///    protection, and lie in page-table pageblocks unless the single-page
///    fallback protected them alone; the simulator's tables are exactly
///    the allocator's direct-map table frames;
/// 6. the simulator saw no violation, every permission removal was
///    flushed, and the allocator's flush and split counters match it;
/// 7. a page table handed out unprotected on purpose
///    ([`PtFallback::Unprotected`](crate::PtFallback::Unprotected)) is a
///    live order-0 page-table block marked exposed, in a mapped pageblock
///    and mapped as one; it is counted, not failed, and the count matches
///    [`Stats::exposed_live`](crate::Stats::exposed_live). Any other
///    page-table frame without the key still breaks rule 1 or 5.
pub fn check<const CPUS: usize>(
    alloc: &PageAllocator<'_, SimDirectMap, CPUS>,
    page_table: Freetype,
    managed: &[(Pfn, Pfn)],
    live: &[(Pfn, u32, Freetype)],
) -> Result<(), String> {
    let sim = alloc.backend();
    let base = alloc.base().0;
    let ranges = coalesce(managed, base, alloc.frames())?;
    let stats = alloc.stats();
    let reserve: HashSet<u64> = alloc.reserve_frames().iter().map(|pfn| pfn.0).collect();
    let tables: BTreeMap<u64, PageTable> = sim
        .table_records()
        .into_iter()
        .map(|t| (t.pfn.0, t))
        .collect();
    let in_managed = |pfn: u64| {
        ranges
            .iter()
            .any(|&(start, end)| (start..end).contains(&pfn))
    };

    // Rule 6 first: a violation explains most other failures.
    let violations = sim.violations();
    if let Some(first) = violations.first() {
        bail!(
            "rule 6: the simulator saw {} violation(s); first: {first}",
            violations.len()
        );
    }
    if sim.busy() {
        bail!("rule 6: a backend call is still running");
    }
    if let Some(range) = sim.unflushed().first() {
        bail!(
            "rule 6: protect {} took permissions away and was never flushed",
            range_text(*range)
        );
    }

    // Rule 1, part: the live list itself.
    let mut live_by_pfn: HashMap<u64, (u32, Freetype)> = HashMap::with_capacity(live.len());
    let mut sorted: Vec<(u64, u64)> = Vec::with_capacity(live.len());
    for &(pfn, order, ft) in live {
        if order > MAX_ORDER {
            bail!("rule 1: live block {:#x} has order {order}", pfn.0);
        }
        let end = pfn.0.saturating_add(1 << order);
        if !ranges
            .iter()
            .any(|&(start, stop)| start <= pfn.0 && end <= stop)
        {
            bail!(
                "rule 1: live block [{:#x}, order {order}) is not inside managed memory",
                pfn.0
            );
        }
        if live_by_pfn.insert(pfn.0, (order, ft)).is_some() {
            bail!(
                "rule 1: frame {:#x} is live twice: a page was handed out twice",
                pfn.0
            );
        }
        sorted.push((pfn.0, end));
    }
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        if pair[1].0 < pair[0].1 {
            bail!(
                "rule 1: live blocks at {:#x} and {:#x} overlap: a page was handed out twice",
                pair[0].0,
                pair[1].0
            );
        }
    }

    // Walk every managed frame, block by block.
    let mut free_blocks = [[0u64; NR_ORDERS]; NR_FREETYPES];
    let mut cached = [0u64; NR_FREETYPES];
    let (mut live_seen, mut live_pages, mut reserve_seen, mut table_frames) =
        (0usize, 0u64, 0usize, 0u64);
    let mut exposed_seen = 0u64;
    let mut owners: Vec<Vec<Owner>> = Vec::with_capacity(ranges.len());
    for &(start, end) in &ranges {
        let mut owner = Vec::with_capacity((end - start) as usize);
        let mut pfn = start;
        while pfn < end {
            let Some(info) = alloc.frame_info(Pfn(pfn)) else {
                bail!("frame {pfn:#x}: managed but outside the allocator's metadata");
            };
            match info.state {
                FrameState::Hole => bail!("frame {pfn:#x}: managed memory recorded as a hole"),
                FrameState::Tail => {
                    bail!("frame {pfn:#x}: a tail frame with no block head before it")
                }
                FrameState::FreeHead | FrameState::AllocatedHead => {
                    let order = info.order;
                    let free = info.state == FrameState::FreeHead;
                    let rule = if free { 2 } else { 1 };
                    let Some(ft) = info.freetype else {
                        bail!("rule {rule}: block head {pfn:#x} records no valid freetype");
                    };
                    if order > MAX_ORDER || !(pfn - base).is_multiple_of(1 << order) {
                        bail!(
                            "rule {rule}: block at {pfn:#x} of order {order} is not aligned to its order"
                        );
                    }
                    let block_end = pfn + (1 << order);
                    if block_end > end {
                        bail!(
                            "rule {rule}: block at {pfn:#x} of order {order} runs past managed memory at {end:#x}"
                        );
                    }
                    for tail in pfn + 1..block_end {
                        let state = alloc.frame_info(Pfn(tail)).map(|info| info.state);
                        if state != Some(FrameState::Tail) {
                            bail!(
                                "rule {rule}: frame {tail:#x} inside the block at {pfn:#x} (order {order}) is \
                                 {state:?}, not a tail: blocks overlap"
                            );
                        }
                    }
                    let who = if free {
                        free_blocks[ft.index()][order as usize] += 1;
                        Owner::Free(ft)
                    } else {
                        match live_by_pfn.get(&pfn) {
                            Some(&(want_order, want_ft))
                                if (want_order, want_ft) == (order, ft) => {}
                            Some(&(want_order, want_ft)) => bail!(
                                "rule 1: block {pfn:#x} was handed out as order {want_order} {want_ft} but is \
                                 recorded as order {order} {ft}"
                            ),
                            None => bail!(
                                "rule 1: frame {pfn:#x} is an allocated head (order {order}, {ft}) that no one \
                                 holds: leaked or handed out twice"
                            ),
                        }
                        live_seen += 1;
                        live_pages += 1 << order;
                        if info.exposed {
                            if ft != page_table || order != 0 {
                                bail!(
                                    "rule 7: frame {pfn:#x} is marked exposed but is an order {order} {ft} block"
                                );
                            }
                            exposed_seen += 1;
                            Owner::Exposed
                        } else {
                            Owner::Live(ft)
                        }
                    };
                    owner.extend(std::iter::repeat_n(who, 1 << order));
                    pfn = block_end;
                    continue;
                }
                FrameState::Cached => {
                    let Some(ft) = info.freetype else {
                        bail!("rule 4: cached frame {pfn:#x} records no valid freetype");
                    };
                    cached[ft.index()] += 1;
                    owner.push(Owner::Cached(ft));
                }
                FrameState::Reserve => {
                    if !reserve.contains(&pfn) {
                        bail!(
                            "rule 4: frame {pfn:#x} is in state Reserve but not in the reserve: lost"
                        );
                    }
                    reserve_seen += 1;
                    owner.push(Owner::Reserve);
                }
                FrameState::DirectMapTable => {
                    if !tables.contains_key(&pfn) {
                        bail!(
                            "rule 5: frame {pfn:#x} is recorded as a direct-map table but the map never used it"
                        );
                    }
                    table_frames += 1;
                    owner.push(Owner::Table);
                }
            }
            pfn += 1;
        }
        owners.push(owner);
    }

    // Rule 1: every live block was found as an allocated head.
    if live_seen != live.len() {
        for &(pfn, order, ft) in live {
            let state = alloc.frame_info(pfn).map(|info| info.state);
            if state != Some(FrameState::AllocatedHead) {
                bail!(
                    "rule 1: live block {:#x} (order {order}, {ft}) is {state:?} in the allocator",
                    pfn.0
                );
            }
        }
        bail!(
            "rule 1: {} live blocks, {live_seen} found in memory",
            live.len()
        );
    }

    // Rule 4: counters against frames, and conservation.
    if reserve_seen != reserve.len() {
        bail!(
            "rule 4: the reserve lists {} frames, {reserve_seen} found in managed memory",
            reserve.len()
        );
    }
    if stats.reserve_level != reserve.len() as u64 {
        bail!(
            "rule 4: reserve_level is {}, the reserve holds {}",
            stats.reserve_level,
            reserve.len()
        );
    }
    for ft in Freetype::all() {
        let counts = stats.free_blocks[ft.index()]
            .iter()
            .zip(&free_blocks[ft.index()]);
        for (order, (counted, found)) in counts.enumerate() {
            if counted != found {
                bail!(
                    "rule 4: the free lists count {counted} {ft} blocks of order {order}, memory holds {found}"
                );
            }
        }
        if stats.cached_pages[ft.index()] != cached[ft.index()] {
            bail!(
                "rule 4: the caches count {} {ft} pages, memory holds {}",
                stats.cached_pages[ft.index()],
                cached[ft.index()]
            );
        }
    }
    let free_pages: u64 = Freetype::all().map(|ft| stats.free_pages(ft)).sum();
    let cached_pages: u64 = stats.cached_pages.iter().sum();
    let managed_frames: u64 = ranges.iter().map(|(start, end)| end - start).sum();
    let accounted = free_pages + cached_pages + live_pages + reserve.len() as u64 + table_frames;
    if accounted != managed_frames {
        bail!(
            "rule 4: {free_pages} free + {cached_pages} cached + {live_pages} live + {} reserve + {table_frames} \
             tables = {accounted}, but {managed_frames} frames are managed",
            reserve.len()
        );
    }
    if stats.allocations.checked_sub(stats.frees) != Some(live.len() as u64) {
        bail!(
            "rule 4: {} allocations - {} frees, but {} blocks are live",
            stats.allocations,
            stats.frees,
            live.len()
        );
    }
    if stats.exposed_live != exposed_seen {
        bail!(
            "rule 7: exposed_live is {}, {exposed_seen} exposed page tables found",
            stats.exposed_live
        );
    }
    if stats.direct_map_tables > table_frames {
        bail!(
            "rule 4: direct_map_tables is {}, only {table_frames} table frames",
            stats.direct_map_tables
        );
    }

    // Rules 2 and 3 per pageblock; rule 5 for page-table frames.
    let mut pageblocks = [0u64; NR_FREETYPES];
    let mut counted_pageblock = None;
    for (&(start, end), owner) in ranges.iter().zip(&owners) {
        let protections = sim.protections(Pfn(start), Pfn(end));
        for (offset, (who, protection)) in owner.iter().zip(&protections).enumerate() {
            let pfn = start + offset as u64;
            let pageblock = pfn & !(MEGA_FRAMES - 1);
            let info = alloc.frame_info(Pfn(pageblock));
            let Some(pageblock_ft) = info.and_then(|info| info.pageblock_freetype) else {
                bail!("rule 3: pageblock {pageblock:#x} records no valid freetype");
            };
            if counted_pageblock != Some(pageblock) {
                counted_pageblock = Some(pageblock);
                pageblocks[pageblock_ft.index()] += 1;
            }
            let ft = who.freetype(page_table);
            // A live block below a pageblock may be stolen from another
            // mobility's pageblock of the same protection.
            let stolen = matches!(who, Owner::Live(_)) && ft.protection == pageblock_ft.protection;
            // A page-table page the single-page fallback protected alone
            // in a mapped pageblock, live, in the reserve, or made a
            // direct-map table since (its protection is checked below).
            // An exposed page table lies in a mapped pageblock (checked
            // below).
            let single = ft == page_table
                && matches!(
                    who,
                    Owner::Live(_) | Owner::Reserve | Owner::Table | Owner::Exposed
                );
            if ft != pageblock_ft && !stolen && !single {
                let rule = match who {
                    Owner::Free(_) => 2,
                    Owner::Live(_) | Owner::Cached(_) => 1,
                    Owner::Reserve | Owner::Table | Owner::Exposed => 5,
                };
                bail!(
                    "rule {rule}: frame {pfn:#x} ({who}) lies in a {pageblock_ft} pageblock {pageblock:#x}"
                );
            }
            // An exposed page table is an ordinary mapped page, as its
            // pageblock maps it: deliberately without the key.
            if matches!(who, Owner::Exposed) {
                if pageblock_ft.protection != Protection::Mapped
                    || *protection != Protection::Mapped
                {
                    bail!(
                        "rule 7: exposed page table {pfn:#x} is mapped {protection} in a {pageblock_ft} \
                         pageblock, not as an ordinary mapped page"
                    );
                }
                continue;
            }
            if *protection != ft.protection {
                let rule = match who {
                    Owner::Exposed => 7,
                    Owner::Live(_) => 1,
                    Owner::Free(_) => 2,
                    Owner::Cached(_) => 3,
                    Owner::Reserve | Owner::Table => 5,
                };
                bail!(
                    "rule {rule}: frame {pfn:#x} ({who}, {pageblock_ft} pageblock) is mapped {protection}, not {}",
                    ft.protection
                );
            }
            if let Owner::Free(ft) = who
                && let Some(info) = alloc.frame_info(Pfn(pfn))
                && info.state == FrameState::FreeHead
                && info.order < MAX_ORDER
            {
                let buddy = base + ((pfn - base) ^ (1 << info.order));
                if let Some(other) = alloc.frame_info(Pfn(buddy))
                    && other.state == FrameState::FreeHead
                    && other.order == info.order
                    && other.freetype == Some(*ft)
                {
                    bail!(
                        "rule 2: free {ft} buddies {pfn:#x} and {buddy:#x} of order {} are not merged",
                        info.order
                    );
                }
            }
        }
    }
    if pageblocks != stats.pageblocks {
        for ft in Freetype::all() {
            if pageblocks[ft.index()] != stats.pageblocks[ft.index()] {
                bail!(
                    "rule 3: stats count {} {ft} pageblocks, memory holds {}",
                    stats.pageblocks[ft.index()],
                    pageblocks[ft.index()]
                );
            }
        }
    }

    // Rule 5: the simulator's tables are the allocator's table frames.
    let mut tables_in_memory = 0;
    for table in tables.values() {
        let pfn = table.pfn.0;
        if !in_managed(pfn) {
            bail!(
                "rule 5: direct-map table {pfn:#x} ({:?}) lies outside managed memory",
                table.level
            );
        }
        let state = alloc.frame_info(table.pfn).map(|info| info.state);
        if state != Some(FrameState::DirectMapTable) {
            bail!(
                "rule 5: the map uses frame {pfn:#x} as a {:?} but the allocator has it {state:?}",
                table.level
            );
        }
        tables_in_memory += 1;
    }
    if tables_in_memory != table_frames {
        bail!("rule 5: {table_frames} direct-map table frames, the map uses {tables_in_memory}");
    }

    // Rule 6: the allocator's counters match the map's.
    let counters = sim.counters();
    if (stats.flushes_local, stats.flushes_remote)
        != (counters.flushes_local, counters.flushes_remote)
    {
        bail!(
            "rule 6: the allocator counts {}+{} flushes, the map saw {}+{}",
            stats.flushes_local,
            stats.flushes_remote,
            counters.flushes_local,
            counters.flushes_remote
        );
    }
    if stats.splits_1g > counters.splits_1g || stats.splits_2m > counters.splits_2m {
        bail!(
            "rule 6: the allocator counts {}/{} splits (1G/2M), the map made {}/{}",
            stats.splits_1g,
            stats.splits_2m,
            counters.splits_1g,
            counters.splits_2m
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out the pages of a list, then nothing.
    struct Pages(Vec<Pfn>);

    impl SplitPages for Pages {
        fn take(&mut self) -> Option<Pfn> {
            self.0.pop()
        }
    }

    const KEY1: Protection = Protection::Pkey(1);
    const GIG: u64 = GIGA_FRAMES;

    fn range(start: u64, pageblocks: u64) -> PageblockRange {
        PageblockRange {
            start: Pfn(start),
            pageblocks,
        }
    }

    #[test]
    fn a_pageblock_in_a_giga_page_splits_it_once_with_one_page() {
        let sim = SimDirectMap::new(2 * GIG, LargestPage::Giga, 4);
        // The table page: made key-protected first, by a whole-region change.
        let whole = sim.protect(
            range(GIG, 512),
            Protection::Mapped,
            KEY1,
            &mut Pages(vec![]),
        );
        assert_eq!(whole, Ok(ProtectReport::default()));
        let mut pages = Pages(vec![Pfn(GIG + 5), Pfn(GIG + 7)]);
        let report = sim
            .protect(
                range(512, 2),
                Protection::Mapped,
                Protection::Unmapped,
                &mut pages,
            )
            .unwrap();
        assert_eq!(
            report,
            ProtectReport {
                splits_1g: 1,
                splits_2m: 0
            }
        );
        assert_eq!(pages.0, vec![Pfn(GIG + 5)], "exactly one page taken");
        assert_eq!(
            sim.page_tables(),
            vec![(Pfn(GIG + 7), TableLevel::Directory)]
        );
        assert_eq!(sim.protection_of(Pfn(511)), Protection::Mapped);
        assert_eq!(sim.protection_of(Pfn(512)), Protection::Unmapped);
        assert_eq!(sim.protection_of(Pfn(1535)), Protection::Unmapped);
        assert_eq!(sim.protection_of(Pfn(1536)), Protection::Mapped);
        // Within the split region, more pageblocks need no page.
        let again = sim.protect(
            range(4096, 1),
            Protection::Mapped,
            Protection::Unmapped,
            &mut Pages(vec![]),
        );
        assert_eq!(again, Ok(ProtectReport::default()));
        assert_eq!(sim.unflushed().len(), 3);
        sim.flush(range(0, 1024));
        assert!(sim.unflushed().is_empty());
        assert_eq!(sim.counters().flushes_remote, 3);
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }

    #[test]
    fn a_missing_split_page_changes_nothing() {
        let sim = SimDirectMap::new(GIG, LargestPage::Giga, 1);
        let before = sim.snapshot();
        let result = sim.protect(
            range(0, 1),
            Protection::Mapped,
            Protection::Unmapped,
            &mut Pages(vec![]),
        );
        assert_eq!(result, Err(DirectMapError::NoSplitPage));
        assert_eq!(sim.snapshot(), before);
        assert_eq!(sim.counters().no_split_page, 1);
        assert!(sim.violations().is_empty());
    }

    #[test]
    fn protect_page_splits_two_levels_all_or_nothing() {
        let sim = SimDirectMap::new(2 * GIG, LargestPage::Giga, 1);
        sim.protect(
            range(GIG, 512),
            Protection::Mapped,
            KEY1,
            &mut Pages(vec![]),
        )
        .unwrap();
        let before = sim.snapshot();
        let one = sim.protect_page(Pfn(1000), KEY1, &mut Pages(vec![Pfn(GIG)]));
        assert_eq!(one, Err(DirectMapError::NoSplitPage));
        assert_eq!(sim.snapshot(), before);
        let mut pages = Pages(vec![Pfn(GIG + 1), Pfn(GIG + 2)]);
        let report = sim.protect_page(Pfn(1000), KEY1, &mut pages).unwrap();
        assert_eq!(
            report,
            ProtectReport {
                splits_1g: 1,
                splits_2m: 1
            }
        );
        assert_eq!(sim.protection_of(Pfn(1000)), KEY1);
        assert_eq!(sim.protection_of(Pfn(999)), Protection::Mapped);
        assert_eq!(
            sim.page_tables(),
            vec![
                (Pfn(GIG + 2), TableLevel::Directory),
                (Pfn(GIG + 1), TableLevel::Table)
            ]
        );
        // A page table cannot be zeroed or converted.
        assert_eq!(sim.zero(Pfn(GIG), 1, KEY1), Err(DirectMapError::Failed));
        assert_eq!(sim.violations().len(), 1);
    }

    #[test]
    fn wrong_from_bad_split_pages_and_reentry_are_violations() {
        let sim = SimDirectMap::new(GIG, LargestPage::Mega, 2);
        let wrong = sim.protect(range(0, 1), Protection::Unmapped, KEY1, &mut Pages(vec![]));
        assert_eq!(wrong, Err(DirectMapError::Failed));
        let unprotected = sim.protect_page(Pfn(3), KEY1, &mut Pages(vec![Pfn(4096)]));
        assert_eq!(
            unprotected,
            Err(DirectMapError::Failed),
            "a Mapped page cannot be a page table"
        );
        let misaligned = sim.zero(Pfn(1), 1, Protection::Mapped);
        assert_eq!(misaligned, Err(DirectMapError::Failed));
        assert_eq!(sim.violations().len(), 3);

        struct Reenter<'a>(&'a SimDirectMap);
        impl SplitPages for Reenter<'_> {
            fn take(&mut self) -> Option<Pfn> {
                let _ = self.0.zero(Pfn(0), 0, Protection::Mapped);
                None
            }
        }
        let _ = sim.protect_page(Pfn(3), KEY1, &mut Reenter(&sim));
        assert_eq!(sim.counters().reentries, 1);
        assert!(
            sim.violations()[3].starts_with("re-entered: zero called from inside protect_page")
        );
        assert!(!sim.busy());
    }

    #[test]
    fn injected_failures_are_used_once_each() {
        let sim = SimDirectMap::new(GIG, LargestPage::Mega, 1);
        sim.fail_next_protects(1);
        sim.fail_next_zeros(1);
        let r = range(0, 1);
        assert_eq!(
            sim.protect(
                r,
                Protection::Mapped,
                Protection::Unmapped,
                &mut Pages(vec![])
            ),
            Err(DirectMapError::Failed)
        );
        assert_eq!(sim.protection_of(Pfn(0)), Protection::Mapped);
        assert_eq!(
            sim.zero(Pfn(0), 0, Protection::Mapped),
            Err(DirectMapError::Failed)
        );
        assert_eq!(sim.zero(Pfn(0), 0, Protection::Mapped), Ok(()));
        assert_eq!(
            sim.protect(
                r,
                Protection::Mapped,
                Protection::Unmapped,
                &mut Pages(vec![])
            ),
            Ok(ProtectReport::default())
        );
        // Unmapped -> mapped adds permissions: nothing to flush.
        sim.protect(
            r,
            Protection::Unmapped,
            Protection::Mapped,
            &mut Pages(vec![]),
        )
        .unwrap();
        sim.flush(r);
        sim.flush(r);
        assert_eq!(sim.counters().unneeded_flushes, 1);
        assert!(sim.violations().is_empty());
    }
}
