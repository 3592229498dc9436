//! Page-table traces: the format, a checking parser, a writer, and a
//! generator of synthetic traces (the files in `tools/traces/`).
//!
//! # Format
//!
//! One event per line; fields separated by spaces or tabs:
//!
//! ```text
//! A <id> <level>    allocate a page-table page at <level>: 1 = PT, 2 = PD,
//!                   3 = PDPT, 4 = PML4
//! D <id> <order>    allocate a data block of 2^<order> contiguous frames of
//!                   ordinary kernel memory (unmovable, on the direct map),
//!                   <order> 0..=18: the memory pressure page tables meet
//! F <id>            free the page or block allocated as <id>
//! ```
//!
//! `<id>` is a decimal number below 2^64 naming the page or block while it
//! lives; once freed it may be used again. `#` starts a comment (to the
//! end of the line); blank lines are allowed. Pages still live at the end
//! are fine (a process that outlives the trace). Most traces are page
//! tables alone; `D` events make the memory around them (the `pressure`
//! pattern).
//!
//! What is an error, with its 1-based line number ([`TraceError`]): an
//! unknown verb, a missing or extra field, an id, level or order that is
//! not a number, a level outside 1..=4 or an order above 18, an `A` or `D`
//! whose id is live, and an `F` whose id is not.
//!
//! # Synthetic traces
//!
//! [`generate`] makes a trace from a [`Pattern`], a seed and a scale with
//! its own deterministic generator (SplitMix64), so a seed names the same
//! trace on every machine and every version of every dependency;
//! [`shipped_file`] adds the header comment that says how to make the file
//! again. The shipped traces are checked against it by a test.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

/// A page-table level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// A page table (maps 4 KiB pages).
    Pt = 1,
    /// A page directory.
    Pd = 2,
    /// A page-directory-pointer table.
    Pdpt = 3,
    /// The root.
    Pml4 = 4,
}

impl Level {
    /// Every level, PT first.
    pub const ALL: [Level; 4] = [Level::Pt, Level::Pd, Level::Pdpt, Level::Pml4];

    /// The level numbered `n` (1..=4).
    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// Its short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pt => "PT",
            Self::Pd => "PD",
            Self::Pdpt => "PDPT",
            Self::Pml4 => "PML4",
        }
    }
}

/// The largest data block order (`D`): 2^18 frames, 1 GiB, the
/// allocator's largest block (`ptalloc::MAX_ORDER`).
pub const MAX_DATA_ORDER: u8 = 18;

/// One event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `A <id> <level>`.
    Alloc {
        /// The page's name while it lives.
        id: u64,
        /// Its level.
        level: Level,
    },
    /// `D <id> <order>`.
    Data {
        /// The block's name while it lives.
        id: u64,
        /// log2 of its frames, at most [`MAX_DATA_ORDER`].
        order: u8,
    },
    /// `F <id>`.
    Free {
        /// The page's or block's name.
        id: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alloc { id, level } => write!(f, "A {id} {}", *level as u8),
            Self::Data { id, order } => write!(f, "D {id} {order}"),
            Self::Free { id } => write!(f, "F {id}"),
        }
    }
}

/// A checked trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events, in order.
    pub events: Vec<Event>,
}

/// Counts over a trace. Pages are page-table pages; data blocks (`D`)
/// are counted apart and never in the peak.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Page-table allocations by level (index 0 = PT).
    pub allocations: [u64; 4],
    /// Frees of page-table pages.
    pub frees: u64,
    /// Most page-table pages live at once.
    pub peak_live: u64,
    /// Index of the event after which `peak_live` was first reached.
    pub peak_at: usize,
    /// Page-table pages live at the end.
    pub live_at_end: u64,
    /// Data block allocations (`D`).
    pub data_allocations: u64,
    /// Frames the data blocks asked for, in all.
    pub data_frames: u64,
    /// Frees of data blocks.
    pub data_frees: u64,
}

impl TraceSummary {
    /// Page-table allocations of every level.
    pub fn total_allocations(&self) -> u64 {
        self.allocations.iter().sum()
    }

    /// Every event: allocations and frees of both kinds.
    pub fn events(&self) -> u64 {
        self.total_allocations() + self.frees + self.data_allocations + self.data_frees
    }
}

impl Trace {
    /// Counts of allocations, frees and live pages.
    pub fn summary(&self) -> TraceSummary {
        let mut s = TraceSummary::default();
        let mut live = 0u64;
        // Which ids are data blocks: an `F` says only the id.
        let mut data = std::collections::HashSet::new();
        for (i, event) in self.events.iter().enumerate() {
            match event {
                Event::Alloc { level, .. } => {
                    s.allocations[*level as usize - 1] += 1;
                    live += 1;
                    if live > s.peak_live {
                        s.peak_live = live;
                        s.peak_at = i;
                    }
                }
                Event::Data { id, order } => {
                    s.data_allocations += 1;
                    s.data_frames += 1 << order;
                    data.insert(*id);
                }
                Event::Free { id } => {
                    if data.remove(id) {
                        s.data_frees += 1;
                    } else {
                        s.frees += 1;
                        live = live.saturating_sub(1);
                    }
                }
            }
        }
        s.live_at_end = live;
        s
    }

    /// Whether the trace has data blocks (`D`) as well as page tables.
    pub fn has_data(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Data { .. }))
    }
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceProblem {
    /// Not `A`, `D` or `F`.
    #[error("unknown verb {0:?}: expected `A <id> <level>`, `D <id> <order>` or `F <id>`")]
    UnknownVerb(String),
    /// Too few or too many fields for the verb.
    #[error(
        "{0:?} has the wrong number of fields: expected `A <id> <level>`, `D <id> <order>` or `F <id>`"
    )]
    Fields(String),
    /// An id that is not a decimal number below 2^64.
    #[error("bad id {0:?}: expected a decimal number below 2^64")]
    BadId(String),
    /// A level that is not 1..=4.
    #[error("bad level {0:?}: expected 1 (PT), 2 (PD), 3 (PDPT) or 4 (PML4)")]
    BadLevel(String),
    /// An order that is not 0..=[`MAX_DATA_ORDER`].
    #[error("bad order {0:?}: expected 0 to 18 (a block of 2^order frames, at most 1 GiB)")]
    BadOrder(String),
    /// An `A` or `D` of an id already live.
    #[error("id {id} allocated again while live (allocated at line {since})")]
    IdLive {
        /// The id.
        id: u64,
        /// Where it was allocated.
        since: usize,
    },
    /// An `F` of an id not live.
    #[error("free of id {0}, which is not live (never allocated, or freed already)")]
    UnknownFree(u64),
}

/// A bad line, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: TraceProblem,
}

/// Checks a trace line by line (for streams too big to hold as text).
#[derive(Debug, Default)]
pub struct Checker {
    /// Live ids and the line each was allocated at.
    live: HashMap<u64, usize>,
    line: usize,
}

impl Checker {
    /// A checker at line 0 with nothing live.
    pub fn new() -> Self {
        Self::default()
    }

    /// The event on the next line, `None` for a blank or comment line.
    pub fn line(&mut self, text: &str) -> Result<Option<Event>, TraceError> {
        self.line += 1;
        let line = self.line;
        let error = |problem| TraceError { line, problem };
        let content = text.split_once('#').map_or(text, |(before, _)| before);
        let fields: Vec<&str> = content.split_whitespace().collect();
        let Some(&verb) = fields.first() else {
            return Ok(None);
        };
        let id = |text: &str| {
            text.parse::<u64>()
                .ok()
                .filter(|_| !text.starts_with('+'))
                .ok_or_else(|| error(TraceProblem::BadId(text.to_string())))
        };
        match verb {
            "A" => {
                let [_, id_text, level_text] = fields[..] else {
                    return Err(error(TraceProblem::Fields(content.trim().to_string())));
                };
                let id = id(id_text)?;
                let level = level_text
                    .parse::<u8>()
                    .ok()
                    .filter(|_| !level_text.starts_with('+'))
                    .and_then(Level::from_number)
                    .ok_or_else(|| error(TraceProblem::BadLevel(level_text.to_string())))?;
                if let Some(&since) = self.live.get(&id) {
                    return Err(error(TraceProblem::IdLive { id, since }));
                }
                self.live.insert(id, line);
                Ok(Some(Event::Alloc { id, level }))
            }
            "D" => {
                let [_, id_text, order_text] = fields[..] else {
                    return Err(error(TraceProblem::Fields(content.trim().to_string())));
                };
                let id = id(id_text)?;
                let order = order_text
                    .parse::<u8>()
                    .ok()
                    .filter(|&o| o <= MAX_DATA_ORDER && !order_text.starts_with('+'))
                    .ok_or_else(|| error(TraceProblem::BadOrder(order_text.to_string())))?;
                if let Some(&since) = self.live.get(&id) {
                    return Err(error(TraceProblem::IdLive { id, since }));
                }
                self.live.insert(id, line);
                Ok(Some(Event::Data { id, order }))
            }
            "F" => {
                let [_, id_text] = fields[..] else {
                    return Err(error(TraceProblem::Fields(content.trim().to_string())));
                };
                let id = id(id_text)?;
                if self.live.remove(&id).is_none() {
                    return Err(error(TraceProblem::UnknownFree(id)));
                }
                Ok(Some(Event::Free { id }))
            }
            other => Err(error(TraceProblem::UnknownVerb(other.to_string()))),
        }
    }
}

/// Parses and checks a whole trace.
pub fn parse(text: &str) -> Result<Trace, TraceError> {
    let mut checker = Checker::new();
    let mut events = Vec::new();
    for line in text.lines() {
        if let Some(event) = checker.line(line)? {
            events.push(event);
        }
    }
    Ok(Trace { events })
}

/// Writes `trace` in the format, after `comments` (one `# ` line each).
pub fn write(trace: &Trace, comments: &[String]) -> String {
    let mut out = String::with_capacity(trace.events.len() * 10);
    for comment in comments {
        for line in comment.lines() {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# {line}");
        }
    }
    for event in &trace.events {
        let _ = writeln!(out, "{event}");
    }
    out
}

// ---------------------------------------------------------------------------
// Synthetic traces

/// A synthetic workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Processes forked, exec'd and exiting: address spaces built and
    /// torn down whole, a few dozen live at a time.
    ForkExec,
    /// One long-lived process whose address space keeps growing (a page
    /// table per new 2 MiB region, directories as needed), with the odd
    /// unmap and short-lived helpers alongside.
    Growing,
    /// A map/unmap storm: bursts of page tables allocated, then mostly
    /// freed in random order, a few surviving each burst.
    Storm,
    /// Adversarial for pageblock grouping: waves of page tables of which a
    /// thin, shifting stride survives, so every protected pageblock keeps
    /// a few live pages and many free ones (stranded protected frames).
    Fragment,
    /// Page tables under memory pressure, with data blocks (`D`): ordinary
    /// memory fills the machine and half of it is freed so that no
    /// pageblock is whole and free; storms of page tables then outgrow
    /// the protected memory there is; last, ordinary memory takes back
    /// what is free and a final storm runs memory out. The scale is the
    /// machine in pageblocks it is made for (1024: 2 GiB, the lab's);
    /// smaller machines are pressed harder, larger ones not at all.
    Pressure,
}

impl Pattern {
    /// Every pattern.
    pub const ALL: [Pattern; 5] = [
        Pattern::ForkExec,
        Pattern::Growing,
        Pattern::Storm,
        Pattern::Fragment,
        Pattern::Pressure,
    ];

    /// Its command-line and file name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ForkExec => "fork-exec",
            Self::Growing => "growing",
            Self::Storm => "storm",
            Self::Fragment => "fragment",
            Self::Pressure => "pressure",
        }
    }

    /// The pattern called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// One line saying what it is.
    pub fn about(self) -> &'static str {
        match self {
            Self::ForkExec => "fork/exec-like: address spaces built and torn down",
            Self::Growing => "a long-lived process whose address space grows",
            Self::Storm => "a map/unmap storm: page tables allocated and freed in bursts",
            Self::Fragment => {
                "adversarial fragmentation: waves of which a thin, shifting stride survives"
            }
            Self::Pressure => {
                "page-table storms under memory pressure: data blocks leave no pageblock whole and free, then run memory out"
            }
        }
    }

    /// The scale the shipped trace uses (its size stays well under 1 MB).
    pub fn default_scale(self) -> u32 {
        match self {
            Self::ForkExec => 600,
            Self::Growing => 6000,
            Self::Storm => 40,
            Self::Fragment => 12,
            Self::Pressure => 1024,
        }
    }
}

/// SplitMix64: tiny, and fixed forever, unlike a library's default RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent`%.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T>(&mut self, items: &[T]) -> usize {
        (self.next() % items.len().max(1) as u64) as usize
    }
}

/// Emits events, handing out fresh ids.
struct Emitter {
    events: Vec<Event>,
    next_id: u64,
}

impl Emitter {
    fn alloc(&mut self, level: Level) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.events.push(Event::Alloc { id, level });
        id
    }

    fn data(&mut self, order: u8) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.events.push(Event::Data { id, order });
        id
    }

    fn free(&mut self, id: u64) {
        self.events.push(Event::Free { id });
    }
}

/// The page tables of one address space, by level (PT first).
#[derive(Default)]
struct Space {
    tables: [Vec<u64>; 4],
}

impl Space {
    /// Builds a space of `shape` (PTs, PDs, PDPTs; one PML4) top down, as
    /// a kernel would while faulting it in.
    fn build(e: &mut Emitter, shape: [u64; 3]) -> Self {
        let mut s = Space::default();
        s.tables[3].push(e.alloc(Level::Pml4));
        for (level, count) in [
            (Level::Pdpt, shape[2]),
            (Level::Pd, shape[1]),
            (Level::Pt, shape[0]),
        ] {
            for _ in 0..count {
                s.tables[level as usize - 1].push(e.alloc(level));
            }
        }
        s
    }

    fn shape(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.tables[i].len() as u64)
    }

    /// Frees everything bottom up, as a teardown walks the tree.
    fn destroy(self, e: &mut Emitter) {
        for level in self.tables {
            for id in level {
                e.free(id);
            }
        }
    }
}

fn random_shape(rng: &mut Rng) -> [u64; 3] {
    // Mostly small processes, a few large ones.
    let pts = if rng.chance(10) {
        rng.range(40, 200)
    } else {
        rng.range(3, 24)
    };
    [pts, rng.range(1, 3).min(pts), rng.range(1, 2)]
}

/// A synthetic trace of `pattern`: `seed` picks the random choices,
/// `scale` the length (steps, bursts or waves; see [`Pattern`]).
pub fn generate(pattern: Pattern, seed: u64, scale: u32) -> Trace {
    let mut rng = Rng(seed);
    let mut e = Emitter {
        events: Vec::new(),
        next_id: 1,
    };
    let scale = u64::from(scale);
    match pattern {
        Pattern::ForkExec => fork_exec(&mut rng, &mut e, scale),
        Pattern::Growing => growing(&mut rng, &mut e, scale),
        Pattern::Storm => storm(&mut rng, &mut e, scale),
        Pattern::Fragment => fragment(&mut rng, &mut e, scale),
        Pattern::Pressure => pressure(&mut rng, &mut e, scale),
    }
    Trace { events: e.events }
}

fn fork_exec(rng: &mut Rng, e: &mut Emitter, steps: u64) {
    let mut live: Vec<Space> = Vec::new();
    for _ in 0..steps {
        let roll = rng.next() % 100;
        if live.len() < 4 || (roll < 40 && live.len() < 32) {
            // fork: the child copies its parent's tables.
            let shape = match live.get(rng.pick(&live)) {
                Some(parent) => parent.shape(),
                None => random_shape(rng),
            };
            live.push(Space::build(e, shape));
        } else if roll < 75 {
            // exec: the new image's space is built before the old goes.
            let at = rng.pick(&live);
            let new = Space::build(e, random_shape(rng));
            let old = std::mem::replace(&mut live[at], new);
            old.destroy(e);
        } else {
            let at = rng.pick(&live);
            live.swap_remove(at).destroy(e);
        }
    }
    for space in live {
        space.destroy(e);
    }
}

fn growing(rng: &mut Rng, e: &mut Emitter, regions: u64) {
    let _root = e.alloc(Level::Pml4);
    let mut pdpts = 0u64;
    let mut pds = 0u64;
    let mut pts: Vec<u64> = Vec::new();
    let mut helpers: Vec<Space> = Vec::new();
    for region in 0..regions {
        // A new PDPT every 512 directories, a directory every 512 tables.
        if region.is_multiple_of(512 * 512) {
            e.alloc(Level::Pdpt);
            pdpts += 1;
        }
        if region.is_multiple_of(512) {
            e.alloc(Level::Pd);
            pds += 1;
        }
        pts.push(e.alloc(Level::Pt));
        if rng.chance(8) && pts.len() > 16 {
            // munmap of an older region; a later fault maps it again.
            let at = rng.pick(&pts);
            e.free(pts.swap_remove(at));
        }
        if rng.chance(2) {
            helpers.push(Space::build(e, random_shape(rng)));
        }
        if helpers.len() > 3 || (rng.chance(2) && !helpers.is_empty()) {
            helpers.remove(0).destroy(e);
        }
    }
    for space in helpers {
        space.destroy(e);
    }
    // The process itself outlives the trace: its tables stay live.
    debug_assert!(pdpts >= 1 && pds >= 1);
}

fn storm(rng: &mut Rng, e: &mut Emitter, bursts: u64) {
    let _base = Space::build(e, [8, 2, 1]);
    let mut survivors: Vec<u64> = Vec::new();
    for _ in 0..bursts {
        let size = rng.range(64, 1024);
        let mut burst: Vec<u64> = (0..size).map(|_| e.alloc(Level::Pt)).collect();
        if rng.chance(20) {
            // A big mapping needs a directory too.
            burst.push(e.alloc(Level::Pd));
        }
        // Unmap in random order; about one in ten stays mapped.
        while !burst.is_empty() {
            let id = burst.swap_remove(rng.pick(&burst));
            if rng.chance(10) {
                survivors.push(id);
            } else {
                e.free(id);
            }
        }
        // Old survivors go eventually.
        while survivors.len() > 256 {
            let at = rng.pick(&survivors);
            e.free(survivors.swap_remove(at));
        }
    }
    for id in survivors {
        e.free(id);
    }
}

fn fragment(rng: &mut Rng, e: &mut Emitter, waves: u64) {
    // Waves of 2,048 tables (four pageblocks' worth); after each, all but
    // one in `stride` (at a shifting offset) are freed. Survivors of old
    // waves are thinned slowly, so the live set stays sparse and spread.
    let mut survivors: Vec<u64> = Vec::new();
    for wave in 0..waves {
        let stride = rng.range(24, 64);
        let offset = wave % stride;
        let tables: Vec<u64> = (0..2048).map(|_| e.alloc(Level::Pt)).collect();
        for (i, id) in tables.into_iter().enumerate() {
            if i as u64 % stride == offset {
                survivors.push(id);
            } else {
                e.free(id);
            }
        }
        // Free a third of the older survivors, chosen at random.
        for _ in 0..survivors.len() / 3 {
            let at = rng.pick(&survivors);
            e.free(survivors.swap_remove(at));
        }
    }
    for id in survivors {
        e.free(id);
    }
}

/// Storms of page tables in the pressure pattern's second act.
const PRESSURE_STORMS: u64 = 3;

fn pressure(rng: &mut Rng, e: &mut Emitter, pageblocks: u64) {
    // Act 1: two 1 MiB data blocks per pageblock (allocated in address
    // order from whole free memory), then the second of each pair freed:
    // half of memory free, and no pageblock whole and free for a
    // conversion to take, beyond those the allocator's watermark keeps.
    let pairs: Vec<(u64, u64)> = (0..pageblocks).map(|_| (e.data(8), e.data(8))).collect();
    for (_, second) in pairs {
        e.free(second);
    }
    // Act 2: storms of two to four page tables per pageblock of the
    // machine, well past a watermark's worth, unmapped in random order
    // with one in twenty surviving.
    let _base = Space::build(e, [8, 2, 1]);
    let mut survivors: Vec<u64> = Vec::new();
    for _ in 0..PRESSURE_STORMS {
        let size = rng.range(pageblocks * 2, pageblocks * 4);
        let mut burst: Vec<u64> = (0..size).map(|_| e.alloc(Level::Pt)).collect();
        while !burst.is_empty() {
            let id = burst.swap_remove(rng.pick(&burst));
            if rng.chance(5) {
                survivors.push(id);
            } else {
                e.free(id);
            }
        }
    }
    // Act 3: ordinary memory takes back the freed halves and what single
    // pages it can, and a last storm finds memory run out. Everything
    // stays live at the end.
    for _ in 0..pageblocks {
        e.data(8);
    }
    for _ in 0..pageblocks {
        e.data(0);
    }
    for _ in 0..pageblocks * 4 {
        e.alloc(Level::Pt);
    }
}

/// The command that makes the shipped trace of `pattern` (its header
/// quotes it).
pub fn command(pattern: Pattern, seed: u64, scale: u32) -> String {
    format!(
        "cargo run -q -p tools --bin trace -- gen {} --seed {seed} --scale {scale}",
        pattern.name()
    )
}

/// A trace file: the header comment (what it is, how to make it again,
/// its counts) and the trace.
pub fn shipped_file(pattern: Pattern, seed: u64, scale: u32) -> String {
    let trace = generate(pattern, seed, scale);
    let s = trace.summary();
    let mut header = vec![
        format!("Synthetic page-table trace: {}.", pattern.about()),
        format!(
            "Generated by: {} > tools/traces/{}.trace",
            command(pattern, seed, scale),
            pattern.name()
        ),
        "Format: `A <id> <level>` allocates a page-table page (1 = PT .. 4 = PML4), `F <id>` frees it."
            .to_string(),
        format!(
            "{} events: {} allocations (PT {}, PD {}, PDPT {}, PML4 {}), {} frees, peak {} live, {} live at the end.",
            trace.events.len(),
            s.total_allocations(),
            s.allocations[0],
            s.allocations[1],
            s.allocations[2],
            s.allocations[3],
            s.frees,
            s.peak_live,
            s.live_at_end
        ),
    ];
    // Said only where there are any, so the page-table traces' headers
    // stay as they were.
    if trace.has_data() {
        header.insert(
            3,
            "`D <id> <order>` allocates a data block of 2^order frames of ordinary kernel memory; `F` frees it too."
                .to_string(),
        );
        header.push(format!(
            "Data: {} blocks ({} frames asked for), {} freed.",
            s.data_allocations, s.data_frames, s.data_frees
        ));
    }
    write(&trace, &header)
}

/// The pattern, seed and scale a shipped file's `Generated by:` line names.
pub fn generated_by(text: &str) -> Option<(Pattern, u64, u32)> {
    let line = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# Generated by: "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "gen")?;
    let pattern = Pattern::from_name(words.get(at + 1)?)?;
    let value = |flag: &str| {
        let i = words.iter().position(|w| *w == flag)?;
        words.get(i + 1)?.parse::<u64>().ok()
    };
    Some((
        pattern,
        value("--seed")?,
        u32::try_from(value("--scale")?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> TraceError {
        match parse(text) {
            Ok(t) => panic!("parsed {} events from {text:?}", t.events.len()),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_events_comments_and_blank_lines() {
        let text = "# a header\n\nA 1 4\nA 2 3 # trailing comment\n\tA 3 1\nF 3\nF 2\nA 3 2\n";
        let trace = parse(text).unwrap_or_default();
        assert_eq!(
            trace.events,
            [
                Event::Alloc {
                    id: 1,
                    level: Level::Pml4
                },
                Event::Alloc {
                    id: 2,
                    level: Level::Pdpt
                },
                Event::Alloc {
                    id: 3,
                    level: Level::Pt
                },
                Event::Free { id: 3 },
                Event::Free { id: 2 },
                Event::Alloc {
                    id: 3,
                    level: Level::Pd
                },
            ]
        );
        let s = trace.summary();
        assert_eq!(
            (
                s.allocations,
                s.frees,
                s.peak_live,
                s.peak_at,
                s.live_at_end
            ),
            ([1, 1, 1, 1], 2, 3, 2, 2)
        );
    }

    #[test]
    fn data_blocks_are_events_of_their_own() {
        let text = "D 1 8\nA 2 1\nD 3 0\nF 1\nA 1 2\nF 2\n";
        let trace = parse(text).unwrap_or_default();
        assert_eq!(trace.events[0], Event::Data { id: 1, order: 8 });
        assert!(trace.has_data());
        assert_eq!(parse(&write(&trace, &[])), Ok(trace.clone()));
        let s = trace.summary();
        assert_eq!(
            (s.data_allocations, s.data_frames, s.data_frees),
            (2, 257, 1)
        );
        // Page tables alone make the peak and the live count: the `F 1`
        // is the data block's, and id 1 is a page table afterwards.
        assert_eq!((s.total_allocations(), s.frees), (2, 1));
        assert_eq!((s.peak_live, s.peak_at, s.live_at_end), (2, 4, 1));
        assert_eq!(s.events(), 6);
        assert!(!parse("A 1 1\n").unwrap_or_default().has_data());
    }

    #[test]
    fn writer_round_trips() {
        let trace = parse("A 7 1\nA 18446744073709551615 4\nF 7\n").unwrap_or_default();
        let text = write(&trace, &["two\nlines".to_string()]);
        assert_eq!(
            text,
            "# two\n# lines\nA 7 1\nA 18446744073709551615 4\nF 7\n"
        );
        assert_eq!(parse(&text), Ok(trace));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("X 1 1", 1, "unknown verb \"X\""),
            ("a 1 1", 1, "unknown verb \"a\""),
            ("\nA 1", 2, "wrong number of fields"),
            ("A 1 1 1", 1, "wrong number of fields"),
            ("A 1 1\nF 1 1", 2, "wrong number of fields"),
            ("A x 1", 1, "bad id \"x\""),
            ("A -1 1", 1, "bad id \"-1\""),
            ("A +1 1", 1, "bad id \"+1\""),
            ("A 18446744073709551616 1", 1, "bad id"),
            ("A 1 0", 1, "bad level \"0\""),
            ("A 1 5", 1, "bad level \"5\""),
            ("A 1 PT", 1, "bad level \"PT\""),
            (
                "A 1 1\n# c\nA 1 2",
                3,
                "id 1 allocated again while live (allocated at line 1)",
            ),
            ("F 9", 1, "free of id 9, which is not live"),
            ("A 1 1\nF 1\nF 1", 3, "free of id 1"),
            ("D 1", 1, "wrong number of fields"),
            ("D 1 8 8", 1, "wrong number of fields"),
            ("D x 8", 1, "bad id \"x\""),
            ("D 1 19", 1, "bad order \"19\""),
            ("D 1 +1", 1, "bad order \"+1\""),
            ("D 1 -1", 1, "bad order \"-1\""),
            (
                "D 1 8\nA 1 1",
                2,
                "id 1 allocated again while live (allocated at line 1)",
            ),
            ("A 1 1\nD 1 0", 2, "id 1 allocated again while live"),
        ];
        for (text, line, says) in cases {
            let e = error_of(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn generated_traces_are_well_formed_and_deterministic() {
        for pattern in Pattern::ALL {
            let a = generate(pattern, 7, 20);
            assert!(!a.events.is_empty(), "{pattern:?}");
            assert_eq!(a, generate(pattern, 7, 20));
            assert_ne!(a, generate(pattern, 8, 20), "{pattern:?}: the seed matters");
            assert_eq!(parse(&write(&a, &[])), Ok(a.clone()), "{pattern:?}");
            assert_eq!(Pattern::from_name(pattern.name()), Some(pattern));
        }
        let fork = generate(Pattern::ForkExec, 1, 200).summary();
        assert!(fork.allocations[3] > 20 && fork.live_at_end == 0);
        let grow = generate(Pattern::Growing, 1, 1000).summary();
        assert!(grow.live_at_end > 900 && grow.allocations[1] >= 2);
        let storm = generate(Pattern::Storm, 1, 10).summary();
        assert!(storm.total_allocations() > 10 * 64 && storm.live_at_end == 12);
        let frag = generate(Pattern::Fragment, 1, 3).summary();
        assert_eq!((frag.allocations[0], frag.live_at_end), (3 * 2048, 0));
        // Two 1 MiB blocks per pageblock, half freed, then taken back with
        // single pages; a last storm of four tables per pageblock.
        let pressure = generate(Pattern::Pressure, 1, 16).summary();
        assert_eq!(pressure.data_allocations, 16 * 2 + 16 + 16);
        assert_eq!(pressure.data_frames, 16 * 2 * 256 + 16 * 256 + 16);
        assert_eq!(pressure.data_frees, 16);
        assert!(pressure.live_at_end >= 16 * 4);
    }

    #[test]
    fn the_header_says_how_to_make_the_file_again() {
        let text = shipped_file(Pattern::Storm, 3, 5);
        assert_eq!(generated_by(&text), Some((Pattern::Storm, 3, 5)));
        assert!(text.starts_with("# Synthetic page-table trace: a map/unmap storm"));
        assert!(parse(&text).is_ok());
        assert_eq!(generated_by("A 1 1\n"), None);
    }

    #[test]
    fn shipped_traces_are_what_their_headers_say_and_small() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "trace") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let Some((pattern, seed, scale)) = generated_by(&text) else {
                panic!("{}: no `Generated by:` line", path.display());
            };
            assert!(
                text.len() < 512 * 1024,
                "{}: {} bytes",
                path.display(),
                text.len()
            );
            assert!(
                text == shipped_file(pattern, seed, scale),
                "{} differs from its command's output",
                path.display()
            );
            seen.push(pattern);
        }
        for pattern in Pattern::ALL {
            assert!(
                seen.contains(&pattern),
                "no shipped trace of {}",
                pattern.name()
            );
        }
    }
}
