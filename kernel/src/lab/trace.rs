//! The `trace` workload: a page-table trace (the format of
//! `tools/src/trace.rs`) replayed on the real page allocator.
//!
//! The trace is the first boot module (QEMU `-initrd FILE`), read through
//! the direct map a chunk at a time. It is checked whole before anything
//! is allocated (decode, then perform): an unknown verb, a missing or
//! extra field, a number that is not one, a level outside 1..=4, an order
//! above 18, an `A` or `D` whose id is live, an `F` whose id is not, a
//! line over [`MAX_LINE`] bytes before its comment, or more than
//! [`MAX_LIVE`] ids live at once
//! fails the workload with the line's number. Then it runs: `A <id>
//! <level>` allocates a page-table page (zeroed, from the page-table
//! freetype), `D <id> <order>` a block of ordinary kernel memory, `F
//! <id>` frees either. An allocation that fails is a figure
//! (`pt_failures`, `failed_allocs`); a block of an order the allocator
//! does not have (above `ptalloc::MAX_ORDER`) is not asked for, and its
//! `F` frees nothing, as after a failure. What is live at the end is
//! freed. The peak (the most page-table pages live) is found by the
//! check, so the figures read there come from one snapshot.
//!
//! The live ids sit in an open-addressing table in one block of kernel
//! memory (linear probing, deletion by backward shift, so freed ids leave
//! no tombstones however long the trace).

use super::{Figures, new_figures};
use crate::memory::KernelPhys;
use crate::memory::frame_array::FrameArray;
use crate::memory::frames::{self, Frame};
use boot::PhysMemory;
use boot::modules::BootModule;
use ptalloc::Freetype;

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 128;
/// Most ids live at once (3/4 of the table).
pub const MAX_LIVE: usize = TABLE_SLOTS / 4 * 3;
const TABLE_SLOTS: usize = 1 << 16;
/// Highest data order the format allows.
const MAX_TRACE_ORDER: u32 = 18;

/// One event of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// A page-table page at a level (1..=4).
    Table { id: u64 },
    /// A data block of `2^order` frames.
    Data { id: u64, order: u32 },
    /// Frees what `id` names.
    Free { id: u64 },
}

/// Why a trace was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// A line that is not an event (1-based line number).
    Malformed(u64),
    /// A level outside 1..=4 or an order above 18.
    OutOfRange(u64),
    /// An `A` or `D` whose id is live.
    AlreadyLive(u64),
    /// An `F` whose id is not live.
    NotLive(u64),
    /// A line over [`MAX_LINE`] bytes.
    TooLong(u64),
    /// More than [`MAX_LIVE`] ids live at once.
    TooManyLive(u64),
    /// The module could not be read.
    Unreadable,
}

impl core::fmt::Display for TraceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed(line) => write!(
                f,
                "line {line}: not an event (A <id> <level>, D <id> <order>, F <id>)"
            ),
            Self::OutOfRange(line) => {
                write!(f, "line {line}: a level outside 1..=4 or an order above 18")
            }
            Self::AlreadyLive(line) => write!(f, "line {line}: the id is live already"),
            Self::NotLive(line) => write!(f, "line {line}: frees an id that is not live"),
            Self::TooLong(line) => write!(f, "line {line}: longer than {MAX_LINE} bytes"),
            Self::TooManyLive(line) => {
                write!(f, "line {line}: more than {MAX_LIVE} ids live at once")
            }
            Self::Unreadable => f.write_str("the boot module cannot be read"),
        }
    }
}

/// Parses one line (its comment already cut off): `None` for a blank
/// line.
fn parse_line(text: &str, number: u64) -> Result<Option<Event>, TraceError> {
    let mut fields = text.split_ascii_whitespace();
    let Some(verb) = fields.next() else {
        return Ok(None);
    };
    let mut next_number = || {
        fields
            .next()
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or(TraceError::Malformed(number))
    };
    let event = match verb {
        "A" => {
            let id = next_number()?;
            let level = next_number()?;
            if !(1..=4).contains(&level) {
                return Err(TraceError::OutOfRange(number));
            }
            Event::Table { id }
        }
        "D" => {
            let id = next_number()?;
            let order = next_number()?;
            if order > u64::from(MAX_TRACE_ORDER) {
                return Err(TraceError::OutOfRange(number));
            }
            Event::Data {
                id,
                order: order as u32,
            }
        }
        "F" => Event::Free { id: next_number()? },
        _ => return Err(TraceError::Malformed(number)),
    };
    if fields.next().is_some() {
        return Err(TraceError::Malformed(number));
    }
    Ok(Some(event))
}

/// Calls `each` with every event of the module and its line number.
fn for_each_event(
    module: &BootModule,
    mut each: impl FnMut(Event, u64) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut line = heapless::Vec::<u8, MAX_LINE>::new();
    let mut number = 1;
    let mut chunk = [0u8; 512];
    let mut offset = 0;
    let mut in_comment = false;
    let mut finish = |line: &mut heapless::Vec<u8, MAX_LINE>, number: u64| {
        let text = core::str::from_utf8(line).map_err(|_| TraceError::Malformed(number))?;
        if let Some(event) = parse_line(text, number)? {
            each(event, number)?;
        }
        line.clear();
        Ok(())
    };
    while offset < module.size {
        let len = (module.size - offset).min(chunk.len() as u64) as usize;
        KernelPhys
            .read(module.start + offset, &mut chunk[..len])
            .ok_or(TraceError::Unreadable)?;
        for &byte in &chunk[..len] {
            if byte == b'\n' {
                finish(&mut line, number)?;
                number += 1;
                in_comment = false;
            } else if byte == b'#' {
                // A comment runs to the end of the line, however long.
                in_comment = true;
            } else if !in_comment && line.push(byte).is_err() {
                return Err(TraceError::TooLong(number));
            }
        }
        offset += len as u64;
    }
    finish(&mut line, number)
}

/// A live id and what it holds: its block, owned only to be freed when
/// the entry drops (`None` while checking, or in an empty slot).
struct Live {
    id: u64,
    used: bool,
    table: bool,
    _block: Option<Frame>,
}

const EMPTY: Live = Live {
    id: 0,
    used: false,
    table: false,
    _block: None,
};

/// The live ids, by open addressing.
struct LiveIds {
    slots: FrameArray<Live>,
    count: usize,
}

impl LiveIds {
    fn new() -> Option<Self> {
        Some(Self {
            slots: FrameArray::new(TABLE_SLOTS, |_| EMPTY).ok()?,
            count: 0,
        })
    }

    fn home(id: u64) -> usize {
        (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TABLE_SLOTS.trailing_zeros())) as usize
    }

    fn find(&self, id: u64) -> Result<usize, usize> {
        let mask = TABLE_SLOTS - 1;
        let mut at = Self::home(id);
        loop {
            let slot = &self.slots[at];
            if !slot.used {
                return Err(at);
            }
            if slot.id == id {
                return Ok(at);
            }
            at = (at + 1) & mask;
        }
    }

    fn insert(
        &mut self,
        id: u64,
        table: bool,
        frame: Option<Frame>,
        line: u64,
    ) -> Result<(), TraceError> {
        match self.find(id) {
            Ok(_) => Err(TraceError::AlreadyLive(line)),
            Err(_) if self.count >= MAX_LIVE => Err(TraceError::TooManyLive(line)),
            Err(at) => {
                self.slots[at] = Live {
                    id,
                    used: true,
                    table,
                    _block: frame,
                };
                self.count += 1;
                Ok(())
            }
        }
    }

    /// Removes `id`, shifting later entries of its run back so that no
    /// probe sequence is cut.
    fn remove(&mut self, id: u64, line: u64) -> Result<Live, TraceError> {
        let mask = TABLE_SLOTS - 1;
        let mut hole = self.find(id).map_err(|_| TraceError::NotLive(line))?;
        let removed = core::mem::replace(&mut self.slots[hole], EMPTY);
        self.count -= 1;
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            if !self.slots[at].used {
                return Ok(removed);
            }
            let home = Self::home(self.slots[at].id);
            // The entry stays if its home lies cyclically in (hole, at].
            let stays = if hole <= at {
                hole < home && home <= at
            } else {
                hole < home || home <= at
            };
            if !stays {
                self.slots[hole] = core::mem::replace(&mut self.slots[at], EMPTY);
                hole = at;
            }
        }
    }

    /// Empties the table; the frames still held are freed as they drop.
    fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot = EMPTY;
        }
        self.count = 0;
    }
}

/// Checks the trace, then replays it.
pub(super) fn run() -> Result<Figures, &'static str> {
    let boot = crate::boot_state();
    let Some(module) = boot.info.modules.first() else {
        return Err("no boot module: give the trace with -initrd");
    };
    let mut live = LiveIds::new().ok_or("no memory for the table of live ids")?;
    // The check: every event valid against the ids live before it, and
    // where the most page tables are live.
    let (mut tables, mut peak, mut peak_event, mut events) = (0u64, 0u64, 0u64, 0u64);
    let checked = for_each_event(module, |event, line| {
        events += 1;
        match event {
            Event::Table { id } => {
                live.insert(id, true, None, line)?;
                tables += 1;
                if tables > peak {
                    (peak, peak_event) = (tables, events);
                }
            }
            Event::Data { id, .. } => live.insert(id, false, None, line)?,
            Event::Free { id } => tables -= u64::from(live.remove(id, line)?.table),
        }
        Ok(())
    });
    if let Err(error) = checked {
        crate::println!("lab: trace failed: {}", error);
        return Err("the trace was refused");
    }
    live.clear();

    let mut figures = new_figures()?;
    // The table's own block.
    figures.data_allocations = 1;
    let mut index = 0u64;
    let replayed = for_each_event(module, |event, line| {
        index += 1;
        match event {
            Event::Table { id } => match frames::alloc_page_table_frame() {
                Ok(frame) => live.insert(id, true, Some(frame), line)?,
                Err(_) => figures.pt_failures += 1,
            },
            Event::Data { id, order } => {
                let block = (order <= ptalloc::MAX_ORDER)
                    .then(|| frames::alloc_frame(order, Freetype::KERNEL, false).ok())
                    .flatten();
                if let Some(frame) = block {
                    figures.data_allocations += 1;
                    live.insert(id, false, Some(frame), line)?;
                }
            }
            // A failed allocation left its id out: its free frees nothing.
            // Dropping what is removed frees its frames.
            Event::Free { id } => drop(live.remove(id, line)),
        }
        if index == peak_event
            && let Some(stats) = frames::stats()
        {
            figures.peak = stats;
        }
        Ok(())
    });
    live.clear();
    replayed.map_err(|_| "the trace could not be read again")?;
    figures.ops = events;
    Ok(figures)
}
