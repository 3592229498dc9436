//! Memory pictures, the data: the kernel's pageblock-map dump, its text
//! format, a writer and a parser.
//!
//! This module owns the dump format. The kernel emits it through its defmt
//! log (COM2), one defmt line per format line, and the runner prints each as
//! `  log| [INFO ] <line>`; [`parse_transcript`] finds the dumps in such a
//! transcript (or in bare lines, as [`write_dump`] makes them), ignoring
//! every line that is not a dump record. The pictures are drawn by
//! [`crate::memmap_svg`].
//!
//! # Format (version 1)
//!
//! Every record line starts with the word `memmap` and a space. Fields are
//! separated by one space; numbers are decimal unless said otherwise; hex
//! is lowercase (the parser also takes uppercase).
//!
//! ```text
//! memmap begin <label> pageblocks=<N> first=0x<pfn>
//! memmap <index> <hex>
//! ...
//! memmap end <label>
//! ```
//!
//! - `begin`: `<label>` names the moment (`after-boot`, `churn-peak`, a lab
//!   phase's name): 1 to 64 characters of `A-Z a-z 0-9 . _ -` (it becomes
//!   a file name). `<N>` is the number of pageblocks dumped (1 to
//!   [`MAX_PAGEBLOCKS`]); `<pfn>` is the frame number of the first one, in
//!   hex, a multiple of 512 (the `0x` may be left out).
//! - body: `<index>` is the position of the line's first pageblock in the
//!   dump (0, 64, 128, ...): lines come in order, none missing. `<hex>`
//!   holds 1 to [`PAGEBLOCKS_PER_LINE`] pageblocks, two bytes (four hex
//!   digits) each; every line but the last holds exactly 64.
//!   - byte 0: the pageblock's freetype, `ptalloc::Freetype::index()`
//!     (0 to `NR_FREETYPES - 1`, today 34 freetypes: unmovable then
//!     movable, each `Mapped`, `Unmapped`, `Pkey(1..=15)`), or `ff`: not
//!     managed (a hole, reserved memory, the kernel image, the metadata).
//!   - byte 1: bits 0-5 the fill, [`fill_for`]`(allocated pages)` =
//!     ceil(allocated * 63 / 512), so any use shows (0 for `ff`); bits
//!     6-7 the direct-map page covering it: 0 inside a 1 GiB page, 1 a
//!     2 MiB page, 2 split into 4 KiB pages, 3 absent from the direct map.
//! - `end`: the same label as its `begin`; the body lines between them add
//!   up to exactly `<N>` pageblocks.
//!
//! Example, a 128 MiB machine (64 pageblocks) after boot:
//!
//! ```text
//! memmap begin after-boot pageblocks=64 first=0x0
//! memmap 0 ff00ff00003f ... (64 pageblocks, 256 hex digits)
//! memmap end after-boot
//! ```
//!
//! Pages counted as allocated for the fill: allocated blocks, direct-map
//! page tables made by splits, and pages in the split reserve; free pages
//! and pages parked in per-CPU caches are not.
//!
//! Lines that are not records may come between a dump's lines (COM1 text
//! interleaves with the log) and are skipped. A malformed record, a body
//! line out of order or outside a dump, a `begin` inside a dump, or a dump
//! never ended is a [`ParseError`] naming the line (1-based); nothing in
//! here panics on input.

use std::fmt::{self, Write as _};

use ptalloc::{Freetype, NR_FREETYPES};

/// Pageblocks in one full body line.
pub const PAGEBLOCKS_PER_LINE: usize = 64;
/// The most pageblocks one dump may declare (128 TiB of 2 MiB blocks), so
/// a corrupt header cannot make the reader promise unbounded memory.
pub const MAX_PAGEBLOCKS: u64 = 1 << 26;
/// The largest fill: a pageblock whose 512 pages are all allocated.
pub const FILL_MAX: u8 = 63;
/// Byte 0 of a pageblock that the allocator does not manage.
pub const NOT_MANAGED: u8 = 0xff;
/// Frames in a pageblock.
const PAGEBLOCK_FRAMES: u64 = 1 << ptalloc::PAGEBLOCK_ORDER;
/// Longest label.
const MAX_LABEL: usize = 64;

const _: () = assert!(NR_FREETYPES < NOT_MANAGED as usize);

/// The direct-map mapping that covers a pageblock (byte 1, bits 6-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapPage {
    /// Inside a 1 GiB page.
    Giga = 0,
    /// One 2 MiB page.
    Mega = 1,
    /// Split into 4 KiB pages.
    Split = 2,
    /// Not in the direct map.
    Absent = 3,
}

impl MapPage {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Giga,
            1 => Self::Mega,
            2 => Self::Split,
            _ => Self::Absent,
        }
    }

    /// What the legend calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Giga => "inside a 1 GiB page",
            Self::Mega => "a 2 MiB page",
            Self::Split => "split into 4 KiB pages",
            Self::Absent => "absent from the direct map",
        }
    }
}

/// One pageblock of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pageblock {
    /// Its freetype; `None`: not managed by the allocator.
    pub freetype: Option<Freetype>,
    /// Allocated share, 0 to [`FILL_MAX`] ([`fill_for`]).
    pub fill: u8,
    /// How the direct map covers it.
    pub page: MapPage,
}

impl Pageblock {
    /// A pageblock the allocator does not manage.
    pub const fn unmanaged(page: MapPage) -> Self {
        Self {
            freetype: None,
            fill: 0,
            page,
        }
    }

    /// Its two bytes in a body line. A fill over [`FILL_MAX`] is written as
    /// [`FILL_MAX`]; an unmanaged pageblock's fill as 0.
    pub fn encode(self) -> [u8; 2] {
        let (kind, fill) = match self.freetype {
            Some(freetype) => (freetype.index() as u8, self.fill.min(FILL_MAX)),
            None => (NOT_MANAGED, 0),
        };
        [kind, fill | ((self.page as u8) << 6)]
    }

    /// The pageblock two bytes describe.
    pub fn decode(bytes: [u8; 2]) -> Result<Self, Problem> {
        let fill = bytes[1] & FILL_MAX;
        let page = MapPage::from_bits(bytes[1] >> 6);
        if bytes[0] == NOT_MANAGED {
            if fill != 0 {
                return Err(Problem::UnmanagedFill(fill));
            }
            return Ok(Self::unmanaged(page));
        }
        let freetype =
            Freetype::from_index(bytes[0] as usize).ok_or(Problem::UnknownFreetype(bytes[0]))?;
        Ok(Self {
            freetype: Some(freetype),
            fill,
            page,
        })
    }
}

/// The fill of a pageblock with `allocated` of its 512 pages allocated:
/// ceil(allocated * 63 / 512), so one page shows as 1 and only a full
/// pageblock as 63.
pub fn fill_for(allocated: u64) -> u8 {
    (allocated.min(PAGEBLOCK_FRAMES) * u64::from(FILL_MAX)).div_ceil(PAGEBLOCK_FRAMES) as u8
}

/// One dump: the pageblock map at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The moment (see the module doc for the characters allowed).
    pub label: String,
    /// Frame number of the first pageblock.
    pub first: u64,
    /// The pageblocks, in address order.
    pub blocks: Vec<Pageblock>,
}

/// Counts that titles and reports quote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pageblocks by freetype index ([`NR_FREETYPES`] entries).
    pub by_freetype: Vec<u64>,
    /// Pageblocks not managed.
    pub unmanaged: u64,
    /// Pageblocks by [`MapPage`] (indexed by its value).
    pub by_page: [u64; 4],
    /// Sum of the managed pageblocks' fills.
    pub fill_sum: u64,
}

impl Summary {
    /// Managed pageblocks.
    pub fn managed(&self) -> u64 {
        self.by_freetype.iter().sum()
    }

    /// Mean fill of the managed pageblocks, in percent.
    pub fn mean_fill_percent(&self) -> f64 {
        match self.managed() {
            0 => 0.0,
            n => self.fill_sum as f64 * 100.0 / (n as f64 * f64::from(FILL_MAX)),
        }
    }
}

impl Dump {
    /// Counts by freetype, mapping and fill.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            by_freetype: vec![0; NR_FREETYPES],
            ..Summary::default()
        };
        for block in &self.blocks {
            s.by_page[block.page as usize] += 1;
            match block.freetype {
                Some(freetype) => {
                    s.by_freetype[freetype.index()] += 1;
                    s.fill_sum += u64::from(block.fill);
                }
                None => s.unmanaged += 1,
            }
        }
        s
    }
}

/// True if `label` may name a dump (and so a file).
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !label.starts_with('.')
}

/// A dump label from any text: characters a label may not hold become `_`.
pub fn label_from(text: &str) -> String {
    let mut label: String = text
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if label.starts_with('.') {
        label.replace_range(..1, "_");
    }
    if label.is_empty() {
        label.push_str("dump");
    }
    label
}

/// Writes `dump` in the record format, one `\n`-terminated line each: what
/// the kernel emits, less the log prefix.
pub fn write_dump(dump: &Dump) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "memmap begin {} pageblocks={} first={:#x}",
        dump.label,
        dump.blocks.len(),
        dump.first
    );
    for (line, chunk) in dump.blocks.chunks(PAGEBLOCKS_PER_LINE).enumerate() {
        let _ = write!(out, "memmap {} ", line * PAGEBLOCKS_PER_LINE);
        for block in chunk {
            let [a, b] = block.encode();
            let _ = write!(out, "{a:02x}{b:02x}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "memmap end {}", dump.label);
    out
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `memmap` followed by neither `begin`, `end` nor an index.
    #[error("expected `memmap begin`, `memmap end` or `memmap <index> <hex>`, found {0:?}")]
    UnknownRecord(String),
    /// A `begin` line with missing or extra fields.
    #[error("expected `memmap begin <label> pageblocks=<N> first=0x<pfn>`, found {0:?}")]
    BadBegin(String),
    /// An `end` line with missing or extra fields.
    #[error("expected `memmap end <label>`, found {0:?}")]
    BadEnd(String),
    /// A body line with missing or extra fields.
    #[error("expected `memmap <index> <hex>`, found {0:?}")]
    BadBody(String),
    /// A label with characters that cannot name a file.
    #[error("label {0:?} is not 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with a dot)")]
    BadLabel(String),
    /// A number that does not parse or is out of range.
    #[error("{field} {text:?} is not {expected}")]
    BadNumber {
        /// Which field.
        field: &'static str,
        /// What was there.
        text: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The first frame is not at a pageblock boundary.
    #[error("first frame {0:#x} is not a multiple of 512 (a pageblock boundary)")]
    MisalignedFirst(u64),
    /// The hex string is empty, odd-sized, too long or not hex.
    #[error("pageblock data {0}")]
    BadHex(&'static str),
    /// Byte 0 names no freetype.
    #[error("freetype index {0:#04x} is neither a freetype (0 to {max}) nor ff (not managed)", max = NR_FREETYPES - 1)]
    UnknownFreetype(u8),
    /// An unmanaged pageblock with a fill.
    #[error("a pageblock not managed (ff) has fill {0}, not 0")]
    UnmanagedFill(u8),
    /// A body line that does not start where the previous one ended.
    #[error("pageblock index {got}, expected {expected} (lines in order, none missing)")]
    WrongIndex {
        /// Pageblocks read so far.
        expected: u64,
        /// The line's index.
        got: u64,
    },
    /// A line of fewer than 64 pageblocks that is not the last.
    #[error("a line before this one held fewer than 64 pageblocks")]
    ShortLineNotLast,
    /// More pageblocks than the header declared.
    #[error("dump {label:?} declared {declared} pageblocks; this line brings it to {got}")]
    TooMany {
        /// The dump.
        label: String,
        /// From `pageblocks=`.
        declared: u64,
        /// Pageblocks with this line.
        got: u64,
    },
    /// An end before all pageblocks came.
    #[error("dump {label:?} declared {declared} pageblocks but ended after {got}")]
    TooFew {
        /// The dump.
        label: String,
        /// From `pageblocks=`.
        declared: u64,
        /// Pageblocks read.
        got: u64,
    },
    /// An end whose label is not the begin's.
    #[error("`memmap end {ended}` inside dump {begun:?}")]
    EndMismatch {
        /// The open dump.
        begun: String,
        /// The end line's label.
        ended: String,
    },
    /// A body or end line with no dump open.
    #[error("{0} outside a dump (no `memmap begin` before it)")]
    OutsideDump(&'static str),
    /// A begin while another dump is open.
    #[error("`memmap begin` inside dump {label:?} (begun at line {line}, not ended)")]
    BeginInsideDump {
        /// The open dump.
        label: String,
        /// Where it began.
        line: usize,
    },
    /// The input ended inside a dump.
    #[error("the input ended inside dump {0:?}: no `memmap end`")]
    Unterminated(String),
}

/// A bad record, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line number in the input.
    pub line: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// The dump record in a transcript line, without the `memmap ` word: the
/// line itself, or a runner log line `  log| [LEVEL] [timestamp] memmap ...`.
/// `None` for every other line.
pub fn record_of(line: &str) -> Option<&str> {
    let line = line.trim_end_matches(['\r', '\n']).trim_start();
    let line = line.strip_prefix("log|").map_or(line, str::trim_start);
    let line = match line.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.trim_start(),
        None => line,
    };
    if let Some(rest) = line.strip_prefix("memmap ") {
        return Some(rest);
    }
    // A defmt timestamp (`0.123456 memmap ...`) before the message.
    let (stamp, rest) = line.split_once(' ')?;
    if stamp.starts_with(|c: char| c.is_ascii_digit()) {
        return rest.strip_prefix("memmap ");
    }
    None
}

struct Open {
    label: String,
    first: u64,
    declared: u64,
    line: usize,
    blocks: Vec<Pageblock>,
    short_line_seen: bool,
}

/// Every dump in `text`, in order (see the module doc for what is skipped
/// and what is an error).
pub fn parse_transcript(text: &str) -> Result<Vec<Dump>, ParseError> {
    let mut dumps = Vec::new();
    let mut open: Option<Open> = None;
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let Some(record) = record_of(line) else {
            continue;
        };
        let error = |problem| ParseError {
            line: number,
            problem,
        };
        let fields: Vec<&str> = record.split_whitespace().collect();
        match fields.first().copied() {
            Some("begin") => {
                if let Some(o) = &open {
                    return Err(error(Problem::BeginInsideDump {
                        label: o.label.clone(),
                        line: o.line,
                    }));
                }
                open = Some(parse_begin(record, &fields, number).map_err(error)?);
            }
            Some("end") => {
                let [_, label] = fields[..] else {
                    return Err(error(Problem::BadEnd(record.to_string())));
                };
                let Some(o) = open.take() else {
                    return Err(error(Problem::OutsideDump("`memmap end`")));
                };
                if label != o.label {
                    return Err(error(Problem::EndMismatch {
                        begun: o.label,
                        ended: label.to_string(),
                    }));
                }
                let got = o.blocks.len() as u64;
                if got != o.declared {
                    return Err(error(Problem::TooFew {
                        label: o.label,
                        declared: o.declared,
                        got,
                    }));
                }
                dumps.push(Dump {
                    label: o.label,
                    first: o.first,
                    blocks: o.blocks,
                });
            }
            Some(first) if first.starts_with(|c: char| c.is_ascii_digit()) => {
                let Some(o) = open.as_mut() else {
                    return Err(error(Problem::OutsideDump("a pageblock line")));
                };
                parse_body(record, &fields, o).map_err(error)?;
            }
            _ => return Err(error(Problem::UnknownRecord(record.to_string()))),
        }
    }
    match open {
        Some(o) => Err(ParseError {
            line: o.line,
            problem: Problem::Unterminated(o.label),
        }),
        None => Ok(dumps),
    }
}

fn parse_begin(record: &str, fields: &[&str], line: usize) -> Result<Open, Problem> {
    let bad = || Problem::BadBegin(record.to_string());
    let [_, label, count, first] = fields[..] else {
        return Err(bad());
    };
    if !valid_label(label) {
        return Err(Problem::BadLabel(label.to_string()));
    }
    let count = count.strip_prefix("pageblocks=").ok_or_else(bad)?;
    let declared = count
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_PAGEBLOCKS).contains(n))
        .ok_or_else(|| Problem::BadNumber {
            field: "pageblocks",
            text: count.to_string(),
            expected: "a decimal count from 1 to 2^26",
        })?;
    let first = first.strip_prefix("first=").ok_or_else(bad)?;
    let digits = first.strip_prefix("0x").unwrap_or(first);
    let pfn = u64::from_str_radix(digits, 16)
        .ok()
        .filter(|_| !digits.starts_with('+'))
        .ok_or_else(|| Problem::BadNumber {
            field: "first",
            text: first.to_string(),
            expected: "a hex frame number",
        })?;
    if !pfn.is_multiple_of(PAGEBLOCK_FRAMES) {
        return Err(Problem::MisalignedFirst(pfn));
    }
    Ok(Open {
        label: label.to_string(),
        first: pfn,
        declared,
        line,
        blocks: Vec::new(),
        short_line_seen: false,
    })
}

fn parse_body(record: &str, fields: &[&str], open: &mut Open) -> Result<(), Problem> {
    let [index, hex] = fields[..] else {
        return Err(Problem::BadBody(record.to_string()));
    };
    let index = index.parse::<u64>().map_err(|_| Problem::BadNumber {
        field: "pageblock index",
        text: index.to_string(),
        expected: "a decimal number",
    })?;
    let expected = open.blocks.len() as u64;
    if index != expected {
        return Err(Problem::WrongIndex {
            expected,
            got: index,
        });
    }
    if open.short_line_seen {
        return Err(Problem::ShortLineNotLast);
    }
    if hex.is_empty() || !hex.len().is_multiple_of(4) {
        return Err(Problem::BadHex(
            "is not whole pageblocks (four hex digits each)",
        ));
    }
    if hex.len() > 4 * PAGEBLOCKS_PER_LINE {
        return Err(Problem::BadHex("holds more than 64 pageblocks"));
    }
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Problem::BadHex("has a character that is not a hex digit"));
    }
    let count = (hex.len() / 4) as u64;
    if expected + count > open.declared {
        return Err(Problem::TooMany {
            label: open.label.clone(),
            declared: open.declared,
            got: expected + count,
        });
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    for at in (0..hex.len()).step_by(4) {
        open.blocks
            .push(Pageblock::decode([byte(at), byte(at + 2)])?);
    }
    open.short_line_seen = count < PAGEBLOCKS_PER_LINE as u64;
    Ok(())
}

impl fmt::Display for MapPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Giga => "1 GiB page",
            Self::Mega => "2 MiB page",
            Self::Split => "4 KiB pages",
            Self::Absent => "absent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptalloc::{Mobility, Protection};

    const PT: Freetype = Freetype {
        mobility: Mobility::Unmovable,
        protection: Protection::Pkey(1),
    };

    fn sample(n: usize) -> Dump {
        let blocks = (0..n)
            .map(|i| match i % 5 {
                0 => Pageblock::unmanaged(MapPage::Mega),
                1 => Pageblock {
                    freetype: Some(PT),
                    fill: fill_for(i as u64 * 7),
                    page: MapPage::Split,
                },
                2 => Pageblock {
                    freetype: Freetype::from_index(i * 3 % NR_FREETYPES),
                    fill: FILL_MAX,
                    page: MapPage::Giga,
                },
                3 => Pageblock {
                    freetype: Some(Freetype::KERNEL),
                    fill: 0,
                    page: MapPage::Absent,
                },
                _ => Pageblock::unmanaged(MapPage::Absent),
            })
            .collect();
        Dump {
            label: "churn-peak".into(),
            first: 0x8_0000,
            blocks,
        }
    }

    fn error_of(text: &str) -> ParseError {
        match parse_transcript(text) {
            Ok(dumps) => panic!("parsed {} dumps from {text:?}", dumps.len()),
            Err(e) => e,
        }
    }

    #[test]
    fn fill_rounds_up_so_any_use_shows() {
        assert_eq!(fill_for(0), 0);
        assert_eq!(fill_for(1), 1);
        assert_eq!(fill_for(8), 1);
        assert_eq!(fill_for(9), 2);
        assert_eq!(fill_for(511), 63);
        assert_eq!(fill_for(512), 63);
        assert_eq!(fill_for(10_000), 63);
    }

    #[test]
    fn every_freetype_and_page_round_trips_through_two_bytes() {
        for freetype in Freetype::all() {
            for page in [
                MapPage::Giga,
                MapPage::Mega,
                MapPage::Split,
                MapPage::Absent,
            ] {
                for fill in [0, 1, 40, FILL_MAX] {
                    let block = Pageblock {
                        freetype: Some(freetype),
                        fill,
                        page,
                    };
                    assert_eq!(Pageblock::decode(block.encode()), Ok(block));
                }
            }
        }
        assert_eq!(Pageblock::unmanaged(MapPage::Split).encode(), [0xff, 0x80]);
        assert_eq!(PT.index(), 2, "the kernel's page-table freetype");
    }

    #[test]
    fn dumps_round_trip_through_the_writer_at_every_line_boundary() {
        for n in [1, 63, 64, 65, 128, 200] {
            let dump = sample(n);
            let text = write_dump(&dump);
            assert_eq!(text.lines().count(), n.div_ceil(64) + 2);
            assert_eq!(parse_transcript(&text), Ok(vec![dump]));
        }
    }

    #[test]
    fn dumps_are_found_in_a_runner_transcript_between_other_lines() {
        let a = sample(70);
        let mut b = sample(3);
        b.label = "after-boot".into();
        b.first = 0;
        let mut transcript = String::from("pks-kernel booting\ncommand line: \"memmap=boot\"\n");
        for (i, line) in write_dump(&a).lines().enumerate() {
            transcript.push_str(&format!("  log| [INFO ] {line}\n"));
            if i == 1 {
                transcript.push_str("cpu 0: a console line in the middle\n");
            }
        }
        for line in write_dump(&b).lines() {
            // Uppercase hex and a timestamp are taken too.
            let line = match line.rsplit_once(' ') {
                Some((head, hex)) if head == "memmap 0" => format!("{head} {}", hex.to_uppercase()),
                _ => line.to_string(),
            };
            transcript.push_str(&format!("  log| [DEBUG] 1.250000 {line}\n"));
        }
        transcript.push_str("memmap: not a record\nrunner: kernel reported success\n");
        assert_eq!(parse_transcript(&transcript), Ok(vec![a, b]));
        assert_eq!(parse_transcript("no dumps here\n"), Ok(vec![]));
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("memmap 0 0000", 1, "outside a dump"),
            ("x\nmemmap end a", 2, "outside a dump"),
            ("memmap frob", 1, "expected `memmap begin`"),
            (
                "memmap begin a pageblocks=1",
                1,
                "expected `memmap begin <label>",
            ),
            ("memmap begin a/b pageblocks=1 first=0", 1, "label \"a/b\""),
            ("memmap begin .. pageblocks=1 first=0", 1, "label \"..\""),
            ("memmap begin a pageblocks=0 first=0", 1, "pageblocks \"0\""),
            (
                "memmap begin a pageblocks=99999999999 first=0",
                1,
                "pageblocks",
            ),
            ("memmap begin a pageblocks=1 first=zz", 1, "first \"zz\""),
            (
                "memmap begin a pageblocks=1 first=0x100",
                1,
                "not a multiple of 512",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap begin b pageblocks=1 first=0",
                2,
                "begun at line 1",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 000",
                2,
                "four hex digits",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 00g0",
                2,
                "not a hex digit",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0",
                2,
                "expected `memmap <index> <hex>`",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 2200",
                2,
                "freetype index 0x22",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 ff01",
                2,
                "has fill 1",
            ),
            (
                "memmap begin a pageblocks=2 first=0\nmemmap 1 0000",
                2,
                "index 1, expected 0",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 00000000",
                2,
                "brings it to 2",
            ),
            (
                "memmap begin a pageblocks=3 first=0\nmemmap 0 0000\nmemmap 1 0000",
                3,
                "fewer than 64",
            ),
            (
                "memmap begin a pageblocks=2 first=0\nmemmap 0 0000\nmemmap end a",
                3,
                "ended after 1",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 0000\nmemmap end b",
                3,
                "inside dump \"a\"",
            ),
            (
                "memmap begin a pageblocks=1 first=0\nmemmap 0 0000\nmemmap end",
                3,
                "`memmap end <label>`",
            ),
            (
                "\n\nmemmap begin a pageblocks=1 first=0\nmemmap 0 0000",
                3,
                "no `memmap end`",
            ),
        ];
        for (text, line, says) in cases {
            let e = error_of(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
        let long = format!(
            "memmap begin a pageblocks=100 first=0\nmemmap 0 {}",
            "0000".repeat(65)
        );
        assert!(error_of(&long).to_string().contains("more than 64"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap fuzz: every prefix and every one-byte corruption of a
        // good dump either parses or is an error.
        let text = write_dump(&sample(66));
        for cut in 0..text.len() {
            let _ = parse_transcript(&text[..cut]);
        }
        let bytes = text.as_bytes();
        for at in (0..bytes.len()).step_by(3) {
            for b in [b' ', b'0', b'f', b'\n', 0xc3] {
                let mut corrupt = bytes.to_vec();
                corrupt[at] = b;
                let _ = parse_transcript(&String::from_utf8_lossy(&corrupt));
            }
        }
    }

    #[test]
    fn labels_are_made_safe() {
        assert_eq!(label_from("fork-exec"), "fork-exec");
        assert_eq!(label_from("../x y"), "_._x_y");
        assert_eq!(label_from(""), "dump");
        assert!(valid_label(&label_from(&"é".repeat(100))));
    }

    #[test]
    fn summary_counts_freetypes_pages_and_fill() {
        let dump = sample(10);
        let s = dump.summary();
        assert_eq!(s.unmanaged, 4);
        assert_eq!(s.managed(), 6);
        assert_eq!(s.by_freetype[PT.index()], 2);
        assert_eq!(s.by_page, [2, 2, 2, 4]);
        assert!(s.mean_fill_percent() > 0.0 && s.mean_fill_percent() <= 100.0);
    }
}
