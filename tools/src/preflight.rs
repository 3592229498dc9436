//! Checks the runner makes before starting QEMU, for inputs the kernel
//! cannot report itself, and [`Refusal`], what a failed check says.
//!
//! This module owns two checks of a [`QemuConfig`]:
//! - the guest memory (`-m`): below [`MIN_ENTRY_MEMORY`] the kernel's entry
//!   stub at [`KERNEL_PHYS`] is not in RAM, QEMU jumps to nothing and the
//!   guest hangs until the timeout. From there up to [`MIN_MEMORY`] the
//!   kernel runs and says "not enough memory" itself, so this check leaves
//!   that range to it. A size this module cannot parse is left to QEMU.
//! - the kernel command line (`-append`): the kernel keeps at most
//!   [`MAX_COMMAND_LINE`] bytes and rejects a longer line itself, but only
//!   up to about 4 KiB; beyond that QEMU's PVH loader writes the line over
//!   `hvm_start_info`, and from about 24 KiB the guest hangs before the
//!   kernel runs. So the runner refuses every line the kernel would reject
//!   for its length, in the kernel's own words and with its status. A NUL
//!   byte is refused too: QEMU would silently cut the line there.
//!
//! The limits, the statuses and the kernel's wording come from the `boot`
//! crate, so they cannot drift from what the kernel does.

use std::fmt;

use boot::BootInfoError;
use boot::cmdline::Escaped;
use boot::layout::{KERNEL_PHYS, MIN_ENTRY_MEMORY, MIN_MEMORY};
use boot::start_info::MAX_COMMAND_LINE;

use crate::outcome::{STATUS_BAD_COMMAND_LINE, STATUS_NOT_ENOUGH_MEMORY};
use crate::{Outcome, QemuConfig};

const MIB: u64 = 1 << 20;
/// QEMU rounds the `-m` size up to a multiple of this.
const QEMU_RAM_ALIGN: u64 = 8 << 10;

// The refusal names these as whole MiB (`-m 9M`).
const _: () = assert!(KERNEL_PHYS.is_multiple_of(MIB));
const _: () = assert!(MIN_ENTRY_MEMORY.is_multiple_of(MIB));
const _: () = assert!(MIN_MEMORY.is_multiple_of(MIB));

/// The prefix the kernel puts before every command-line error it prints.
pub const COMMAND_LINE_REJECTED: &str = "kernel command line rejected: ";

/// Why the runner refused a [`QemuConfig`] without starting QEMU. Its
/// `Display` is the one line the runner prints in place of the kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The command line is longer than [`MAX_COMMAND_LINE`] bytes, which
    /// the kernel rejects (or, from about 4 KiB, never gets to see).
    CommandLineTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The command line has a NUL byte, where QEMU would cut it short
    /// without a word.
    CommandLineHasNul {
        /// The byte offset of the first NUL.
        offset: usize,
    },
    /// The guest memory does not reach past the kernel's entry stub, so
    /// QEMU would start a guest that hangs.
    NotEnoughMemory {
        /// The `-m` value, as given.
        memory: String,
        /// What it means in bytes.
        bytes: u64,
    },
}

impl Refusal {
    /// The outcome a run refused for this reason has: the one the kernel
    /// gives when it rejects the same input itself.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::CommandLineTooLong { .. } | Self::CommandLineHasNul { .. } => {
                Outcome::BadCommandLine
            }
            Self::NotEnoughMemory { .. } => Outcome::NotEnoughMemory,
        }
    }

    /// The QEMU exit status that goes with [`Refusal::outcome`] (37 or 39).
    /// QEMU did not run, so a refused [`crate::RunReport`]'s `status` is
    /// `None`; this is the status the kernel would have exited with.
    pub fn status(&self) -> i32 {
        match self.outcome() {
            Outcome::NotEnoughMemory => STATUS_NOT_ENOUGH_MEMORY,
            _ => STATUS_BAD_COMMAND_LINE,
        }
    }

    /// What was given, for the runner's summary line ("1025 bytes given").
    pub fn detail(&self) -> String {
        match self {
            Self::CommandLineTooLong { len } => format!("{len} bytes given"),
            Self::CommandLineHasNul { offset } => format!("NUL byte at offset {offset}"),
            Self::NotEnoughMemory { bytes, .. } => {
                format!("{} KiB given", bytes.div_ceil(1024))
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Exactly the kernel's line for the same line, so scripts and
            // tests see one wording whichever side refuses it.
            Self::CommandLineTooLong { .. } => write!(
                f,
                "{COMMAND_LINE_REJECTED}{}",
                BootInfoError::CommandLineTooLong
            ),
            Self::CommandLineHasNul { offset } => write!(
                f,
                "{COMMAND_LINE_REJECTED}command line has a NUL byte at offset {offset}, \
                 where QEMU would cut it short"
            ),
            Self::NotEnoughMemory { memory, .. } => write!(
                f,
                "not enough memory: -m {} does not hold the kernel's entry stub at {} MiB \
                 (that takes -m {}M), so QEMU would hang; pks-kernel needs at least {min} MiB \
                 (QEMU -m {min}M)",
                Escaped(memory),
                KERNEL_PHYS / MIB,
                MIN_ENTRY_MEMORY / MIB,
                min = MIN_MEMORY / MIB
            ),
        }
    }
}

/// Checks `cfg` before QEMU starts: memory first, then the command line,
/// the order in which the boot stub and the kernel would meet them.
pub fn check(cfg: &QemuConfig) -> Result<(), Refusal> {
    check_memory(&cfg.memory)?;
    check_command_line(&cfg.append)
}

/// Refuses a command line the kernel cannot take: over
/// [`MAX_COMMAND_LINE`] bytes, or holding a NUL byte.
pub fn check_command_line(append: &str) -> Result<(), Refusal> {
    if let Some(offset) = append.bytes().position(|b| b == 0) {
        return Err(Refusal::CommandLineHasNul { offset });
    }
    if append.len() > MAX_COMMAND_LINE {
        return Err(Refusal::CommandLineTooLong { len: append.len() });
    }
    Ok(())
}

/// Refuses a `-m` value below [`MIN_ENTRY_MEMORY`]. A value this module
/// cannot parse passes: QEMU judges it, and says what is wrong.
pub fn check_memory(memory: &str) -> Result<(), Refusal> {
    match parse_memory_size(memory) {
        // QEMU reads `-m 0` as "the machine's default size".
        Some(0) | None => Ok(()),
        // QEMU rounds the size up to whole 8 KiB before it makes the RAM.
        Some(bytes) if bytes.next_multiple_of(QEMU_RAM_ALIGN) < MIN_ENTRY_MEMORY => {
            Err(Refusal::NotEnoughMemory {
                memory: memory.to_string(),
                bytes,
            })
        }
        Some(_) => Ok(()),
    }
}

/// The guest memory size in bytes that a `-m` value asks for, as QEMU reads
/// it: `[size=]N[suffix][,key=value...]`, where N is a decimal number, the
/// suffix is one of B, K, M, G, T, P, E (either case, powers of 1024), and
/// no suffix means MiB. A fraction (`2.5M`) needs a suffix other than B.
/// Anything else (hex among them), and sizes that do not fit in a `u64`,
/// give `None`. `-m 0` gives `Some(0)`, which QEMU reads as its default.
pub fn parse_memory_size(memory: &str) -> Option<u64> {
    // QEMU's option syntax doubles a comma to escape it; no size has one.
    if memory.contains(",,") {
        return None;
    }
    let mut size = None;
    for (i, part) in memory.split(',').enumerate() {
        match part.split_once('=') {
            Some(("size", value)) => size = Some(value),
            Some(_) => {}
            // Only the first item may leave out its `size=` key.
            None if i == 0 => size = Some(part),
            None => return None,
        }
    }
    parse_size_value(size?)
}

/// One size value: a number with an optional unit suffix (see
/// [`parse_memory_size`]).
fn parse_size_value(value: &str) -> Option<u64> {
    let (number, unit, suffixed) = if value.ends_with(|c: char| c.is_ascii_digit()) {
        // QEMU reads a bare number as bytes, then scales a value that ends
        // in a digit to MiB (its legacy `-m` form).
        (value, MIB, false)
    } else {
        let mut chars = value.chars();
        let suffix = chars.next_back()?;
        (chars.as_str(), unit_of(suffix)?, true)
    };
    // `1.k` is QEMU's too: a point with no digits after it.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // Hex (`0x...`) fails `digits` and is left to QEMU; so is a fraction
    // without a scale, which QEMU rejects, and more digits than u128 holds.
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 18 {
        return None;
    }
    if !fraction.is_empty() && (!suffixed || unit == 1) {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    // Truncated to whole bytes, as QEMU does.
    let bytes = whole
        .checked_mul(scale)?
        .checked_add(fraction)?
        .checked_mul(u128::from(unit))?
        / scale;
    u64::try_from(bytes).ok()
}

/// The multiplier of a size suffix.
fn unit_of(suffix: char) -> Option<u64> {
    let shift = match suffix.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        'P' => 50,
        'E' => 60,
        _ => return None,
    };
    Some(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const GIB: u64 = 1 << 30;

    fn kernel_too_long_line() -> String {
        format!(
            "kernel command line rejected: {}",
            BootInfoError::CommandLineTooLong
        )
    }

    #[test]
    fn command_lines_up_to_the_kernels_limit_pass() {
        assert_eq!(MAX_COMMAND_LINE, 1024);
        for len in [0, 1, 1023, 1024] {
            assert_eq!(check_command_line(&"x".repeat(len)), Ok(()), "{len} bytes");
        }
        // Multi-byte characters count as bytes, the way the kernel counts.
        assert_eq!(check_command_line(&"é".repeat(512)), Ok(()));
        assert_eq!(
            check_command_line(&"é".repeat(513)),
            Err(Refusal::CommandLineTooLong { len: 1026 })
        );
    }

    #[test]
    fn longer_command_lines_are_refused_in_the_kernels_words() {
        for len in [1025, 4096, 24 * 1024, 128 * 1024] {
            let refusal = check_command_line(&"x".repeat(len));
            assert_eq!(refusal, Err(Refusal::CommandLineTooLong { len }));
            let Err(refusal) = refusal else { continue };
            assert_eq!(refusal.to_string(), kernel_too_long_line());
            assert_eq!(
                refusal.to_string(),
                "kernel command line rejected: command line is longer than 1024 bytes"
            );
            assert_eq!(refusal.outcome(), Outcome::BadCommandLine);
            assert_eq!(refusal.status(), 37);
            assert_eq!(refusal.detail(), format!("{len} bytes given"));
        }
    }

    #[test]
    fn a_nul_byte_is_refused_wherever_it_is() {
        for (line, offset) in [("\0", 0), ("ptprot=pks\0", 10), ("a\0b\0", 1)] {
            let refusal = check_command_line(line);
            assert_eq!(
                refusal,
                Err(Refusal::CommandLineHasNul { offset }),
                "{line:?}"
            );
            let Err(refusal) = refusal else { continue };
            assert_eq!(
                refusal.to_string(),
                format!(
                    "kernel command line rejected: command line has a NUL byte at offset \
                     {offset}, where QEMU would cut it short"
                )
            );
            assert_eq!(refusal.outcome(), Outcome::BadCommandLine);
            assert_eq!(refusal.status(), 37);
        }
        // A NUL in an overlong line is named first: it is the worse news.
        let mut long = "x".repeat(2000);
        long.push('\0');
        assert_eq!(
            check_command_line(&long),
            Err(Refusal::CommandLineHasNul { offset: 2000 })
        );
    }

    #[test]
    fn memory_sizes_read_as_qemu_reads_them() {
        for (memory, bytes) in [
            ("1M", MIB),
            ("2M", 2 * MIB),
            ("3M", 3 * MIB),
            ("2048K", 2 * MIB),
            ("2048k", 2 * MIB),
            ("1G", GIB),
            ("4G", 4 * GIB),
            ("4g", 4 * GIB),
            ("1T", 1 << 40),
            ("128", 128 * MIB),
            ("0", 0),
            ("2.5M", 2 * MIB + 512 * KIB),
            ("1.5G", GIB + 512 * MIB),
            ("1.M", MIB),
            ("3145728B", 3 * MIB),
            ("3145727b", 3 * MIB - 1),
            ("size=2M", 2 * MIB),
            ("size=64", 64 * MIB),
            ("2M,slots=2,maxmem=8G", 2 * MIB),
            ("slots=2,size=1G", GIB),
        ] {
            assert_eq!(parse_memory_size(memory), Some(bytes), "-m {memory}");
        }
    }

    #[test]
    fn memory_sizes_qemu_would_judge_are_not_parsed() {
        for memory in [
            "",
            "bogus",
            "M",
            "2X",
            "2MB",
            "-2M",
            " 2M",
            "2M ",
            ".5M",
            "1.2.3M",
            "1.5",
            "1.5B",
            "0x10",
            "0x300000B",
            "size=",
            "2M,3M",
            "a,,b",
            "16E",
            "17592186044416",
            "99999999999999999999999999999999999999999",
        ] {
            assert_eq!(parse_memory_size(memory), None, "-m {memory:?}");
        }
    }

    #[test]
    fn memory_below_the_entry_stub_is_refused() {
        assert_eq!(MIN_ENTRY_MEMORY, 3 * MIB);
        // 3 MiB less 8 KiB is the largest size QEMU does not round up to 3 MiB.
        for memory in ["1M", "2M", "2048K", "3064K", "3137536B", "2.99M"] {
            let refusal = check_memory(memory);
            let Err(refusal) = refusal else {
                panic!("-m {memory} passed");
            };
            assert_eq!(refusal.outcome(), Outcome::NotEnoughMemory);
            assert_eq!(refusal.status(), 39);
        }
        // From the entry stub up, the kernel speaks for itself; 0 is
        // QEMU's default size; what cannot be parsed is QEMU's to judge.
        for memory in [
            "3M", "3072K", "3137537B", "6M", "7M", "128", "1G", "0", "bogus", "size=",
        ] {
            assert_eq!(check_memory(memory), Ok(()), "-m {memory}");
        }
    }

    #[test]
    fn the_memory_refusal_names_the_figures() {
        let refusal = check_memory("2M");
        assert_eq!(
            refusal,
            Err(Refusal::NotEnoughMemory {
                memory: "2M".to_string(),
                bytes: 2 * MIB
            })
        );
        let Err(refusal) = refusal else { return };
        assert_eq!(
            refusal.to_string(),
            "not enough memory: -m 2M does not hold the kernel's entry stub at 2 MiB \
             (that takes -m 3M), so QEMU would hang; pks-kernel needs at least 9 MiB (QEMU -m 9M)"
        );
        assert_eq!(refusal.detail(), "2048 KiB given");
        // What was typed is echoed escaped, never raw.
        let Err(odd) = check_memory("size=1M,x=\u{1b}[2J") else {
            panic!("-m 1M passed");
        };
        assert!(
            odd.to_string().contains(r"-m size=1M,x=\x1b[2J does"),
            "{odd}"
        );
    }

    #[test]
    fn memory_is_checked_before_the_command_line() {
        let cfg = QemuConfig::new("k").memory("2M").append("x".repeat(2000));
        assert_eq!(
            check(&cfg).map_err(|r| r.outcome()),
            Err(Outcome::NotEnoughMemory)
        );
        let cfg = cfg.memory("128M");
        assert_eq!(check(&cfg), Err(Refusal::CommandLineTooLong { len: 2000 }));
        assert_eq!(check(&cfg.append("ptprot=pks")), Ok(()));
    }
}
