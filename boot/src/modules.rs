//! Boot modules: files the loader put in RAM beside the kernel (QEMU's
//! `-initrd`), listed by `hvm_start_info`. The first one is the root task.
//!
//! One `hvm_modlist_entry` (Xen's `arch-x86/hvm/start_info.h`), 32 bytes,
//! little endian: paddr (u64) at 0, size (u64) at 8, cmdline_paddr (u64)
//! at 16, reserved (u64) at 24.
//!
//! A [`BootModule`] is only made from an entry that passed every check,
//! against the memory map, before the kernel uses anything:
//! - the list has at most [`MAX_MODULES`] entries (more is refused, not cut)
//!   and is readable;
//! - the module is not empty and its end does not wrap;
//! - it lies wholly inside one usable region of the memory map: RAM the
//!   direct map covers, not memory the firmware keeps or past RAM's end;
//! - it stays clear of the first MiB (firmware, `hvm_start_info`, the AP
//!   trampoline) and of the kernel image's place ([`KERNEL_PHYS`], at most
//!   [`KERNEL_IMAGE_MAX`] bytes);
//! - it shares no page with another module;
//! - its command line, if it has one, is at most [`MAX_MODULE_CMDLINE`]
//!   bytes of UTF-8.
//!
//! The memory map keeps the modules' ranges
//! ([`MemoryMap::boot_modules`]), so that the page allocator, which is set
//! up from the map, never hands out a module's frames.

use crate::PhysMemory;
use crate::layout::{KERNEL_IMAGE_MAX, KERNEL_PHYS};
use crate::memory_map::MemoryMap;
use crate::start_info::BootInfoError;
use core::ops::Range;
use heapless::{String, Vec};

/// Most boot modules read; a longer list is an error.
pub const MAX_MODULES: usize = 4;
/// Longest module command line kept; a longer one is an error.
pub const MAX_MODULE_CMDLINE: usize = 128;
/// Size of one `hvm_modlist_entry`.
pub(crate) const MODLIST_ENTRY_SIZE: usize = 32;

const PAGE: u64 = 4096;
const FIRST_MIB: u64 = 1 << 20;

/// One boot module, checked (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootModule {
    /// Physical address of its first byte.
    pub start: u64,
    /// Its size in bytes (not 0).
    pub size: u64,
    /// Its command line, empty if none.
    pub command_line: String<MAX_MODULE_CMDLINE>,
}

impl BootModule {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// Its bytes, `[start, end)`.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end()
    }

    /// The 4 KiB pages it touches.
    pub fn pages(&self) -> Range<u64> {
        pages(self.range())
    }
}

/// The checked modules, in the loader's order.
pub type BootModules = Vec<BootModule, MAX_MODULES>;

/// Why a module list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleError {
    /// More entries than [`MAX_MODULES`].
    TooMany(u32),
    /// A module of 0 bytes.
    Empty {
        /// Its index in the list.
        index: usize,
    },
    /// `paddr + size` wraps past 2^64.
    Wraps {
        /// Its index in the list.
        index: usize,
        /// Its start.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// Not wholly inside one usable region of the memory map.
    NotInRam {
        /// Its index in the list.
        index: usize,
        /// Its bytes.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// It reaches into the first MiB or the kernel image's place.
    OverlapsKernel {
        /// Its index in the list.
        index: usize,
        /// Its bytes.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// What it overlaps.
        what: &'static str,
    },
    /// Two modules share a page.
    Overlap {
        /// The earlier one's index.
        first: usize,
        /// The later one's index.
        second: usize,
    },
    /// A command line over [`MAX_MODULE_CMDLINE`] bytes, or without end.
    CommandLineTooLong {
        /// Its index in the list.
        index: usize,
    },
    /// A command line that is not UTF-8.
    CommandLineNotUtf8 {
        /// Its index in the list.
        index: usize,
    },
}

impl core::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooMany(count) => write!(
                f,
                "hvm_start_info lists {count} boot modules, at most {MAX_MODULES} are read"
            ),
            Self::Empty { index } => write!(f, "boot module {index} is empty"),
            Self::Wraps { index, start, size } => write!(
                f,
                "boot module {index} at {start:#x} with size {size:#x} wraps past 2^64"
            ),
            Self::NotInRam { index, start, end } => write!(
                f,
                "boot module {index} at [{start:#x}, {end:#x}) is not inside usable RAM \
                 (one usable region of the memory map)"
            ),
            Self::OverlapsKernel {
                index,
                start,
                end,
                what,
            } => write!(
                f,
                "boot module {index} at [{start:#x}, {end:#x}) overlaps {what}"
            ),
            Self::Overlap { first, second } => {
                write!(f, "boot modules {first} and {second} share a page")
            }
            Self::CommandLineTooLong { index } => write!(
                f,
                "boot module {index}'s command line is longer than {MAX_MODULE_CMDLINE} bytes"
            ),
            Self::CommandLineNotUtf8 { index } => {
                write!(f, "boot module {index}'s command line is not valid UTF-8")
            }
        }
    }
}

/// The 4 KiB pages `range` touches.
fn pages(range: Range<u64>) -> Range<u64> {
    range.start / PAGE * PAGE..range.end.div_ceil(PAGE).saturating_mul(PAGE)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Checks one module's place: `index` in the list, `start` and `size` as
/// the entry gives them, against the memory map and the modules before it.
pub fn check_placement(
    index: usize,
    start: u64,
    size: u64,
    memory: &MemoryMap,
    earlier: &[BootModule],
) -> Result<(), ModuleError> {
    if size == 0 {
        return Err(ModuleError::Empty { index });
    }
    let end = start
        .checked_add(size)
        .ok_or(ModuleError::Wraps { index, start, size })?;
    if !memory.usable().any(|r| r.start <= start && end <= r.end) {
        return Err(ModuleError::NotInRam { index, start, end });
    }
    let kernel = [
        (
            0..FIRST_MIB,
            "the first MiB (firmware, hvm_start_info, the AP trampoline)",
        ),
        (
            KERNEL_PHYS..KERNEL_PHYS + KERNEL_IMAGE_MAX,
            "the kernel image's place [0x200000, 0x600000)",
        ),
    ];
    if let Some((_, what)) = kernel.iter().find(|(r, _)| overlaps(r, &(start..end))) {
        return Err(ModuleError::OverlapsKernel {
            index,
            start,
            end,
            what,
        });
    }
    if let Some(first) = earlier
        .iter()
        .position(|m| overlaps(&m.pages(), &pages(start..end)))
    {
        return Err(ModuleError::Overlap {
            first,
            second: index,
        });
    }
    Ok(())
}

const _: () = assert!(KERNEL_PHYS == 0x20_0000 && KERNEL_IMAGE_MAX == 0x40_0000);

/// Reads and checks the `count` entries at `list` (physical).
pub(crate) fn parse(
    count: u32,
    list: u64,
    memory: &MemoryMap,
    mem: &impl PhysMemory,
) -> Result<BootModules, BootInfoError> {
    if count as usize > MAX_MODULES {
        return Err(BootInfoError::Module(ModuleError::TooMany(count)));
    }
    let mut modules = BootModules::new();
    for index in 0..count as usize {
        let mut entry = [0u8; MODLIST_ENTRY_SIZE];
        list.checked_add((index * MODLIST_ENTRY_SIZE) as u64)
            .and_then(|at| mem.read(at, &mut entry))
            .ok_or(BootInfoError::Unreadable {
                what: "boot module list",
                phys: list,
            })?;
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&entry[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (start, size, cmdline) = (word(0), word(8), word(16));
        check_placement(index, start, size, memory, &modules).map_err(BootInfoError::Module)?;
        let command_line = if cmdline == 0 {
            String::new()
        } else {
            read_command_line(index, cmdline, mem)?
        };
        // count <= MAX_MODULES, checked above.
        let _ = modules.push(BootModule {
            start,
            size,
            command_line,
        });
    }
    Ok(modules)
}

/// Reads module `index`'s NUL-terminated command line at `phys`.
fn read_command_line(
    index: usize,
    phys: u64,
    mem: &impl PhysMemory,
) -> Result<String<MAX_MODULE_CMDLINE>, BootInfoError> {
    let mut line: Vec<u8, MAX_MODULE_CMDLINE> = Vec::new();
    for offset in 0..=MAX_MODULE_CMDLINE as u64 {
        let mut byte = [0u8];
        phys.checked_add(offset)
            .and_then(|at| mem.read(at, &mut byte))
            .ok_or(BootInfoError::Unreadable {
                what: "boot module command line",
                phys,
            })?;
        if byte[0] == 0 {
            return String::from_utf8(line)
                .map_err(|_| BootInfoError::Module(ModuleError::CommandLineNotUtf8 { index }));
        }
        line.push(byte[0])
            .map_err(|_| BootInfoError::Module(ModuleError::CommandLineTooLong { index }))?;
    }
    Err(BootInfoError::Module(ModuleError::CommandLineTooLong {
        index,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::RegionKind;

    /// QEMU's `-m 128M` map: usable [0, 0x9fc00) and [1 MiB, 0x7fe0000).
    fn qemu_128m() -> MemoryMap {
        let entries = [
            (0, 0x9fc00, RegionKind::Usable),
            (0x9fc00, 0x400, RegionKind::Reserved),
            (0xf0000, 0x10000, RegionKind::Reserved),
            (0x10_0000, 0x7fe_0000 - 0x10_0000, RegionKind::Usable),
            (0x7fe_0000, 0x2_0000, RegionKind::Reserved),
        ];
        MemoryMap::from_entries(entries.iter().copied()).unwrap()
    }

    /// Physical memory holding only what the tests put there, from 0.
    struct FakeMemory(std::vec::Vec<u8>);

    impl FakeMemory {
        fn put(&mut self, phys: u64, bytes: &[u8]) {
            self.0[phys as usize..phys as usize + bytes.len()].copy_from_slice(bytes);
        }
        fn put_list(&mut self, phys: u64, entries: &[(u64, u64, u64)]) {
            for (i, &(paddr, size, cmdline)) in entries.iter().enumerate() {
                let mut e = std::vec::Vec::new();
                for word in [paddr, size, cmdline, 0] {
                    e.extend(word.to_le_bytes());
                }
                self.put(phys + (i * MODLIST_ENTRY_SIZE) as u64, &e);
            }
        }
    }

    impl PhysMemory for FakeMemory {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Option<()> {
            let start = usize::try_from(phys).ok()?;
            buf.copy_from_slice(self.0.get(start..start.checked_add(buf.len())?)?);
            Some(())
        }
    }

    fn memory() -> FakeMemory {
        FakeMemory(vec![0; 0x2000])
    }

    /// Where QEMU puts a 20 KiB -initrd under -m 128M: page-aligned, at
    /// the top of RAM below the reserved 128 KiB.
    const INITRD: u64 = 0x07fd_a000;

    #[test]
    fn no_modules_is_an_empty_list() {
        let map = qemu_128m();
        // The list address is not even read when the count is 0.
        assert_eq!(
            parse(0, 0xdead_beef, &map, &memory()),
            Ok(BootModules::new())
        );
    }

    #[test]
    fn a_qemu_initrd_is_read_with_its_command_line() {
        let mut mem = memory();
        mem.put_list(0x1000, &[(INITRD, 20 << 10, 0x1800), (0x70_0000, 1, 0)]);
        mem.put(0x1800, b"roottask verbose\0");
        let modules = parse(2, 0x1000, &qemu_128m(), &mem).unwrap();
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0].range(), INITRD..INITRD + (20 << 10));
        assert_eq!(modules[0].command_line.as_str(), "roottask verbose");
        assert_eq!(modules[1].command_line.as_str(), "");
        assert_eq!(modules[1].pages(), 0x70_0000..0x70_1000);
    }

    #[test]
    fn absurd_counts_are_refused_before_reading() {
        let map = qemu_128m();
        for count in [MAX_MODULES as u32 + 1, 1000, u32::MAX] {
            assert_eq!(
                parse(count, 0x1000, &map, &memory()),
                Err(BootInfoError::Module(ModuleError::TooMany(count)))
            );
        }
        // The most allowed is read.
        let mut mem = memory();
        let list: std::vec::Vec<_> = (0..MAX_MODULES as u64)
            .map(|i| (0x70_0000 + i * 0x1000, 0x1000, 0))
            .collect();
        mem.put_list(0x1000, &list);
        assert_eq!(
            parse(MAX_MODULES as u32, 0x1000, &map, &mem).map(|m| m.len()),
            Ok(MAX_MODULES)
        );
    }

    #[test]
    fn an_unreadable_list_or_command_line_is_refused() {
        let map = qemu_128m();
        assert_eq!(
            parse(1, 0x1ff0, &map, &memory()),
            Err(BootInfoError::Unreadable {
                what: "boot module list",
                phys: 0x1ff0
            })
        );
        assert!(matches!(
            parse(1, u64::MAX - 8, &map, &memory()),
            Err(BootInfoError::Unreadable { .. })
        ));
        let mut mem = memory();
        mem.put_list(0x1000, &[(INITRD, 0x1000, 0x1ffe)]);
        mem.put(0x1ffe, b"ab");
        assert_eq!(
            parse(1, 0x1000, &map, &mem),
            Err(BootInfoError::Unreadable {
                what: "boot module command line",
                phys: 0x1ffe
            })
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let map = qemu_128m();
        let mut mem = memory();
        mem.put_list(0x1000, &[(INITRD, 0x1000, 0x1800)]);
        mem.put(0x1800, &[b'a'; MAX_MODULE_CMDLINE + 1]);
        assert_eq!(
            parse(1, 0x1000, &map, &mem),
            Err(BootInfoError::Module(ModuleError::CommandLineTooLong {
                index: 0
            }))
        );
        mem.put(0x1800, &[b'a'; MAX_MODULE_CMDLINE]);
        mem.put(0x1800 + MAX_MODULE_CMDLINE as u64, &[0]);
        assert_eq!(
            parse(1, 0x1000, &map, &mem).map(|m| m[0].command_line.len()),
            Ok(MAX_MODULE_CMDLINE)
        );
        mem.put(0x1800, &[0xff, 0]);
        assert_eq!(
            parse(1, 0x1000, &map, &mem),
            Err(BootInfoError::Module(ModuleError::CommandLineNotUtf8 {
                index: 0
            }))
        );
    }

    #[test]
    fn modules_outside_usable_ram_are_refused() {
        let map = qemu_128m();
        let not_in_ram = |start: u64, size: u64| {
            Err(ModuleError::NotInRam {
                index: 0,
                start,
                end: start + size,
            })
        };
        // Past the end of RAM, into the reserved top, across a region's
        // end, in the BIOS hole, and far away.
        for (start, size) in [
            (0x7fe_0000, 0x1000),
            (0x7fd_f000, 0x2000),
            (0x8000_0000, 0x1000),
            (0x9f000, 0x1000),
            (0xf0000, 0x100),
            (1 << 40, 1 << 20),
        ] {
            assert_eq!(
                check_placement(0, start, size, &map, &[]),
                not_in_ram(start, size),
                "{start:#x}+{size:#x}"
            );
        }
        assert_eq!(
            check_placement(0, 0x7fd_f000, 0x1000, &map, &[]),
            Ok(()),
            "the last usable page"
        );
    }

    #[test]
    fn empty_and_wrapping_modules_are_refused() {
        let map = qemu_128m();
        assert_eq!(
            check_placement(2, INITRD, 0, &map, &[]),
            Err(ModuleError::Empty { index: 2 })
        );
        assert_eq!(
            check_placement(0, u64::MAX - 10, 100, &map, &[]),
            Err(ModuleError::Wraps {
                index: 0,
                start: u64::MAX - 10,
                size: 100
            })
        );
    }

    #[test]
    fn modules_over_the_kernel_are_refused() {
        let map = qemu_128m();
        for (start, size) in [
            (0x20_0000, 0x1000),
            (0x3f_f000, 0x2000),
            (0x5f_f000, 0x2000),
            (0x10_0000, 0x10_0001),
            (0x1000, 0x1000),
            (0x9_f000, 0x100),
        ] {
            assert!(
                matches!(
                    check_placement(0, start, size, &map, &[]),
                    Err(ModuleError::OverlapsKernel { .. } | ModuleError::NotInRam { .. })
                ),
                "{start:#x}+{size:#x}"
            );
        }
        assert_eq!(
            check_placement(0, 0x5f_f000, 0x2000, &map, &[]),
            Err(ModuleError::OverlapsKernel {
                index: 0,
                start: 0x5f_f000,
                end: 0x60_1000,
                what: "the kernel image's place [0x200000, 0x600000)"
            })
        );
        assert!(matches!(
            check_placement(0, 0x1000, 0x1000, &map, &[]),
            Err(ModuleError::OverlapsKernel { what, .. }) if what.starts_with("the first MiB")
        ));
        // Between the first MiB and the image, and right after the image.
        assert_eq!(check_placement(0, 0x10_0000, 0x10_0000, &map, &[]), Ok(()));
        assert_eq!(check_placement(0, 0x60_0000, 0x1000, &map, &[]), Ok(()));
    }

    #[test]
    fn modules_sharing_a_page_are_refused() {
        let map = qemu_128m();
        let first = BootModule {
            start: 0x70_0000,
            size: 0x100,
            command_line: String::new(),
        };
        // Byte-disjoint, but in the same page.
        assert_eq!(
            check_placement(1, 0x70_0800, 0x100, &map, core::slice::from_ref(&first)),
            Err(ModuleError::Overlap {
                first: 0,
                second: 1
            })
        );
        assert_eq!(
            check_placement(1, 0x70_1000, 0x100, &map, core::slice::from_ref(&first)),
            Ok(())
        );
    }

    #[test]
    fn errors_say_which_module_and_what_is_wrong() {
        let cases = [
            (
                ModuleError::TooMany(9),
                "hvm_start_info lists 9 boot modules, at most 4 are read",
            ),
            (ModuleError::Empty { index: 0 }, "boot module 0 is empty"),
            (
                ModuleError::NotInRam {
                    index: 1,
                    start: 0x7fe0000,
                    end: 0x7fe1000,
                },
                "boot module 1 at [0x7fe0000, 0x7fe1000) is not inside usable RAM (one usable \
                 region of the memory map)",
            ),
            (
                ModuleError::Overlap {
                    first: 0,
                    second: 1,
                },
                "boot modules 0 and 1 share a page",
            ),
            (
                ModuleError::CommandLineTooLong { index: 0 },
                "boot module 0's command line is longer than 128 bytes",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
            assert!(!BootInfoError::Module(error).is_command_line());
        }
    }
}
