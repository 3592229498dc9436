//! `hvm_start_info`, the structure QEMU's PVH loader hands the kernel in
//! `%ebx`, parsed into a typed [`BootInfo`].
//!
//! Layout (Xen's `arch-x86/hvm/start_info.h`, version 1), little endian:
//!
//! | offset | field            | offset | field              |
//! |--------|------------------|--------|--------------------|
//! | 0      | magic (u32)      | 24     | cmdline_paddr (u64)|
//! | 4      | version (u32)    | 32     | rsdp_paddr (u64)   |
//! | 8      | flags (u32)      | 40     | memmap_paddr (u64) |
//! | 12     | nr_modules (u32) | 48     | memmap_entries (u32)|
//! | 16     | modlist_paddr    | 52     | reserved (u32)     |
//!
//! Memory map entries are 24 bytes: addr (u64), size (u64), type (u32),
//! reserved (u32). The module list (`nr_modules` entries at
//! `modlist_paddr`) is read and checked by [`crate::modules`]. Everything is copied in through [`PhysMemory`], so a
//! bad pointer in the structure becomes an error rather than a wild read,
//! and no reference into firmware memory outlives the parse.

use crate::memory_map::{MemoryMap, MemoryMapError, RegionKind};
use crate::modules::{BootModules, ModuleError};
use heapless::String;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Size of the version-1 structure.
const START_INFO_SIZE: usize = 56;
/// Size of one memory map entry.
pub(crate) const MEMMAP_ENTRY_SIZE: usize = 24;
/// Longest command line kept; a longer one is an error, not truncated.
pub const MAX_COMMAND_LINE: usize = 1024;
/// Most raw memory map entries read.
pub const MAX_MEMMAP_ENTRIES: usize = 128;

/// Read access to physical memory during boot.
pub trait PhysMemory {
    /// Copies the bytes at physical address `phys` into `buf`. Returns
    /// `None`, leaving `buf` unspecified, if any of them is not readable
    /// (outside what the caller can map).
    fn read(&self, phys: u64, buf: &mut [u8]) -> Option<()>;
}

/// What the kernel knows about the machine when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Physical address of `hvm_start_info`.
    pub start_info_phys: u64,
    /// `hvm_start_info.version`.
    pub version: u32,
    /// The cleaned-up physical memory map.
    pub memory: MemoryMap,
    /// The kernel command line (QEMU `-append`), empty if none.
    pub command_line: String<MAX_COMMAND_LINE>,
    /// Physical address of the ACPI RSDP, if the loader gave one.
    pub rsdp: Option<u64>,
    /// The boot modules (QEMU `-initrd`), checked against the memory map,
    /// which records where they lie; the first is the root task.
    pub modules: BootModules,
}

/// Why `hvm_start_info` could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// A structure the loader points to is outside readable memory.
    Unreadable {
        /// Which structure.
        what: &'static str,
        /// Its physical address.
        phys: u64,
    },
    /// The magic number is wrong: this is not a PVH start.
    BadMagic(u32),
    /// The magic number is four printable bytes: QEMU's loader put the
    /// command line where it put `hvm_start_info` (it does so from about
    /// 4 KiB of command line), so the structure is text.
    OverwrittenByCommandLine(u32),
    /// Version 0 has no memory map, and the kernel needs one.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// More memory map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyEntries(u32),
    /// The memory map itself is unusable.
    MemoryMap(MemoryMapError),
    /// The command line is longer than [`MAX_COMMAND_LINE`] or has no end.
    CommandLineTooLong,
    /// The command line is not UTF-8.
    CommandLineNotUtf8,
    /// The boot module list is unusable.
    Module(ModuleError),
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable { what, phys } => {
                write!(f, "{what} at physical {phys:#x} is not readable")
            }
            Self::BadMagic(m) => write!(
                f,
                "hvm_start_info magic is {m:#x}, expected {START_INFO_MAGIC:#x}"
            ),
            Self::OverwrittenByCommandLine(m) => {
                let bytes = m.to_le_bytes();
                // Printable ASCII, checked when the error was made.
                let text = core::str::from_utf8(&bytes).unwrap_or("?");
                write!(
                    f,
                    "hvm_start_info magic is {m:#x} (\"{}\" as text), not {START_INFO_MAGIC:#x}: \
                     the command line was probably too long (the kernel takes at most \
                     {MAX_COMMAND_LINE} bytes) and the loader wrote it over hvm_start_info",
                    crate::cmdline::Escaped(text)
                )
            }
            Self::NoMemoryMap { version } => {
                write!(
                    f,
                    "hvm_start_info version {version} has no memory map (need version 1)"
                )
            }
            Self::TooManyEntries(n) => write!(
                f,
                "memory map has {n} entries, at most {MAX_MEMMAP_ENTRIES} are read"
            ),
            Self::MemoryMap(e) => write!(f, "{e}"),
            Self::CommandLineTooLong => {
                write!(f, "command line is longer than {MAX_COMMAND_LINE} bytes")
            }
            Self::CommandLineNotUtf8 => write!(f, "command line is not valid UTF-8"),
            Self::Module(e) => write!(f, "{e}"),
        }
    }
}

/// The little-endian `u32` at `OFFSET` of a fixed-size record.
fn u32_at<const OFFSET: usize, const N: usize>(bytes: &[u8; N]) -> u32 {
    const { assert!(OFFSET + 4 <= N) };
    u32::from_le_bytes([
        bytes[OFFSET],
        bytes[OFFSET + 1],
        bytes[OFFSET + 2],
        bytes[OFFSET + 3],
    ])
}

/// The little-endian `u64` at `OFFSET` of a fixed-size record.
fn u64_at<const OFFSET: usize, const N: usize>(bytes: &[u8; N]) -> u64 {
    const { assert!(OFFSET + 8 <= N) };
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[OFFSET..OFFSET + 8]);
    u64::from_le_bytes(word)
}

impl BootInfo {
    /// Parses the `hvm_start_info` at `phys`.
    pub fn parse(phys: u64, mem: &impl PhysMemory) -> Result<Self, BootInfoError> {
        let unreadable = |what, phys| BootInfoError::Unreadable { what, phys };
        let mut info = [0u8; START_INFO_SIZE];
        mem.read(phys, &mut info)
            .ok_or(unreadable("hvm_start_info", phys))?;
        let magic = u32_at::<0, START_INFO_SIZE>(&info);
        if magic != START_INFO_MAGIC {
            let printable = magic.to_le_bytes().iter().all(|b| (0x20..0x7f).contains(b));
            return Err(if printable {
                BootInfoError::OverwrittenByCommandLine(magic)
            } else {
                BootInfoError::BadMagic(magic)
            });
        }
        let version = u32_at::<4, START_INFO_SIZE>(&info);
        let nr_modules = u32_at::<12, START_INFO_SIZE>(&info);
        let modlist_paddr = u64_at::<16, START_INFO_SIZE>(&info);
        if version < 1 {
            return Err(BootInfoError::NoMemoryMap { version });
        }
        let cmdline_paddr = u64_at::<24, START_INFO_SIZE>(&info);
        let rsdp_paddr = u64_at::<32, START_INFO_SIZE>(&info);
        let memmap_paddr = u64_at::<40, START_INFO_SIZE>(&info);
        let memmap_entries = u32_at::<48, START_INFO_SIZE>(&info);

        if memmap_entries as usize > MAX_MEMMAP_ENTRIES {
            return Err(BootInfoError::TooManyEntries(memmap_entries));
        }
        let mut entries: heapless::Vec<(u64, u64, RegionKind), MAX_MEMMAP_ENTRIES> =
            heapless::Vec::new();
        for index in 0..u64::from(memmap_entries) {
            let at = memmap_paddr.checked_add(index * MEMMAP_ENTRY_SIZE as u64);
            let mut entry = [0u8; MEMMAP_ENTRY_SIZE];
            at.and_then(|at| mem.read(at, &mut entry))
                .ok_or(unreadable("memory map", memmap_paddr))?;
            let kind = RegionKind::from_e820(u32_at::<16, MEMMAP_ENTRY_SIZE>(&entry));
            let region = (
                u64_at::<0, MEMMAP_ENTRY_SIZE>(&entry),
                u64_at::<8, MEMMAP_ENTRY_SIZE>(&entry),
                kind,
            );
            // memmap_entries was checked against the capacity above.
            let _ = entries.push(region);
        }
        let mut memory =
            MemoryMap::from_entries(entries.iter().copied()).map_err(BootInfoError::MemoryMap)?;
        let modules = crate::modules::parse(nr_modules, modlist_paddr, &memory, mem)?;
        memory.set_boot_modules(&modules);

        let command_line = if cmdline_paddr == 0 {
            String::new()
        } else {
            read_command_line(cmdline_paddr, mem)?
        };

        Ok(BootInfo {
            start_info_phys: phys,
            version,
            memory,
            command_line,
            rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
            modules,
        })
    }
}

impl BootInfoError {
    /// True if the fault lies in the command line the user gave (rather
    /// than in what the loader or firmware handed over).
    pub fn is_command_line(&self) -> bool {
        matches!(
            self,
            Self::CommandLineTooLong | Self::CommandLineNotUtf8 | Self::OverwrittenByCommandLine(_)
        )
    }
}

/// Reads a NUL-terminated command line, at most [`MAX_COMMAND_LINE`] bytes.
fn read_command_line(
    phys: u64,
    mem: &impl PhysMemory,
) -> Result<String<MAX_COMMAND_LINE>, BootInfoError> {
    // Read byte by byte: the string may end right before unreadable memory.
    let mut line: heapless::Vec<u8, MAX_COMMAND_LINE> = heapless::Vec::new();
    for offset in 0..=MAX_COMMAND_LINE as u64 {
        let at = phys.checked_add(offset);
        let mut byte = [0u8];
        at.and_then(|at| mem.read(at, &mut byte))
            .ok_or(BootInfoError::Unreadable {
                what: "command line",
                phys: at.unwrap_or(u64::MAX),
            })?;
        if byte[0] == 0 {
            return String::from_utf8(line).map_err(|_| BootInfoError::CommandLineNotUtf8);
        }
        line.push(byte[0])
            .map_err(|_| BootInfoError::CommandLineTooLong)?;
    }
    Err(BootInfoError::CommandLineTooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::MemoryRegion;

    /// A little physical memory: `size` bytes from address 0.
    struct FakeMemory(std::vec::Vec<u8>);

    impl FakeMemory {
        fn new(size: usize) -> Self {
            Self(vec![0; size])
        }
        fn put(&mut self, phys: u64, bytes: &[u8]) {
            self.0[phys as usize..phys as usize + bytes.len()].copy_from_slice(bytes);
        }
        fn put_start_info(
            &mut self,
            phys: u64,
            version: u32,
            cmdline: u64,
            rsdp: u64,
            memmap: u64,
            entries: u32,
        ) {
            let mut s = std::vec::Vec::new();
            s.extend(START_INFO_MAGIC.to_le_bytes());
            s.extend(version.to_le_bytes());
            s.extend(0u32.to_le_bytes()); // flags
            s.extend(0u32.to_le_bytes()); // nr_modules
            s.extend(0u64.to_le_bytes()); // modlist
            s.extend(cmdline.to_le_bytes());
            s.extend(rsdp.to_le_bytes());
            s.extend(memmap.to_le_bytes());
            s.extend(entries.to_le_bytes());
            s.extend(0u32.to_le_bytes());
            assert_eq!(s.len(), START_INFO_SIZE);
            self.put(phys, &s);
        }
        fn put_memmap(&mut self, phys: u64, entries: &[(u64, u64, u32)]) {
            for (i, &(addr, size, kind)) in entries.iter().enumerate() {
                let mut e = std::vec::Vec::new();
                e.extend(addr.to_le_bytes());
                e.extend(size.to_le_bytes());
                e.extend(kind.to_le_bytes());
                e.extend(0u32.to_le_bytes());
                self.put(phys + (i * MEMMAP_ENTRY_SIZE) as u64, &e);
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

    /// The map QEMU 7.2 reports for `-M pc -m 129M -cpu max`, as the
    /// kernel printed it (the last entry is the AMD HyperTransport hole).
    const QEMU_129M: &[(u64, u64, u32)] = &[
        (0, 0x9fc00, 1),
        (0x9fc00, 0x400, 2),
        (0xf0000, 0x10000, 2),
        (0x10_0000, 0x80e_0000 - 0x10_0000, 1),
        (0x80e_0000, 0x2_0000, 2),
        (0xfffc_0000, 0x4_0000, 2),
        (0xfd_0000_0000, 0x3_0000_0000, 2),
    ];

    #[test]
    fn parses_a_qemu_start_info() {
        let mut mem = FakeMemory::new(0x4000);
        mem.put_start_info(0x1000, 1, 0x2000, 0xf_5000, 0x3000, QEMU_129M.len() as u32);
        mem.put(0x2000, b"test=all ptprot=auto\0");
        mem.put_memmap(0x3000, QEMU_129M);
        let info = BootInfo::parse(0x1000, &mem).unwrap();
        assert_eq!(info.version, 1);
        assert_eq!(info.command_line.as_str(), "test=all ptprot=auto");
        assert_eq!(info.rsdp, Some(0xf_5000));
        assert_eq!(
            info.memory.regions()[0],
            MemoryRegion {
                start: 0,
                end: 0x9fc00,
                kind: RegionKind::Usable
            }
        );
        assert_eq!(
            info.memory.summary().usable_bytes,
            0x9fc00 + 0x80e_0000 - 0x10_0000
        );
        assert_eq!(info.memory.summary().highest_usable_end, 0x80e_0000);
        assert_eq!(info.memory.regions().len(), QEMU_129M.len());
    }

    #[test]
    fn boot_modules_are_read_and_kept_out_of_the_free_memory() {
        let mut mem = FakeMemory::new(0x4000);
        mem.put_start_info(0x1000, 1, 0, 0, 0x3000, QEMU_129M.len() as u32);
        mem.put_memmap(0x3000, QEMU_129M);
        let info = BootInfo::parse(0x1000, &mem).unwrap();
        assert!(info.modules.is_empty());
        assert!(info.memory.boot_modules().is_empty());
        // nr_modules = 1, modlist at 0x2000: QEMU's -initrd of 20 KiB.
        mem.put(0x1000 + 12, &1u32.to_le_bytes());
        mem.put(0x1000 + 16, &0x2000u64.to_le_bytes());
        let module = [0x80b_b000u64, 20 << 10, 0, 0];
        mem.put(0x2000, &module.map(u64::to_le_bytes).concat());
        let info = BootInfo::parse(0x1000, &mem).unwrap();
        assert_eq!(info.modules.len(), 1);
        assert_eq!(info.modules[0].range(), 0x80b_b000..0x80c_0000);
        assert_eq!(info.memory.boot_modules().len(), 1);
        assert_eq!(
            info.memory.boot_modules().first(),
            Some(&(0x80b_b000..0x80c_0000))
        );
        // The same module past the end of RAM stops the parse.
        let module = [0x80d_f000u64, 20 << 10, 0, 0];
        mem.put(0x2000, &module.map(u64::to_le_bytes).concat());
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::Module(ModuleError::NotInRam {
                index: 0,
                start: 0x80d_f000,
                end: 0x80e_4000
            }))
        );
        mem.put(0x1000 + 12, &100u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse(0x1000, &mem).map_err(|e| e.to_string()),
            Err("hvm_start_info lists 100 boot modules, at most 4 are read".to_string())
        );
    }

    #[test]
    fn no_command_line_is_empty() {
        let mut mem = FakeMemory::new(0x4000);
        mem.put_start_info(0x1000, 1, 0, 0, 0x3000, QEMU_129M.len() as u32);
        mem.put_memmap(0x3000, QEMU_129M);
        let info = BootInfo::parse(0x1000, &mem).unwrap();
        assert!(info.command_line.is_empty());
        assert_eq!(info.rsdp, None);
    }

    #[test]
    fn rejects_bad_structures() {
        let mut mem = FakeMemory::new(0x4000);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::BadMagic(0))
        );
        assert_eq!(
            BootInfo::parse(0x3ff0, &mem),
            Err(BootInfoError::Unreadable {
                what: "hvm_start_info",
                phys: 0x3ff0
            })
        );

        mem.put_start_info(0x1000, 0, 0, 0, 0x3000, 1);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::NoMemoryMap { version: 0 })
        );

        mem.put_start_info(0x1000, 1, 0, 0, 0x3f00, 20);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::Unreadable {
                what: "memory map",
                phys: 0x3f00
            })
        );

        mem.put_start_info(0x1000, 1, 0, 0, 0x3000, 100_000);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::TooManyEntries(100_000))
        );
    }

    #[test]
    fn reads_up_to_the_most_memory_map_entries() {
        // MAX_MEMMAP_ENTRIES separate usable ranges: the limit itself is
        // accepted, one more is refused before anything is read.
        let entries: std::vec::Vec<_> = (0..MAX_MEMMAP_ENTRIES as u64)
            .map(|i| (i * 0x2000, 0x1000, 1))
            .collect();
        let mut mem = FakeMemory::new(0x2000 + MAX_MEMMAP_ENTRIES * MEMMAP_ENTRY_SIZE);
        mem.put_start_info(0x1000, 1, 0, 0, 0x2000, MAX_MEMMAP_ENTRIES as u32);
        mem.put_memmap(0x2000, &entries);
        let info = BootInfo::parse(0x1000, &mem).unwrap();
        assert_eq!(info.memory.regions().len(), MAX_MEMMAP_ENTRIES);
        mem.put_start_info(0x1000, 1, 0, 0, 0x2000, MAX_MEMMAP_ENTRIES as u32 + 1);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::TooManyEntries(MAX_MEMMAP_ENTRIES as u32 + 1))
        );
    }

    #[test]
    fn errors_say_what_is_wrong_and_whose_fault_it_is() {
        let cases = [
            (
                BootInfoError::Unreadable {
                    what: "memory map",
                    phys: 0x3000,
                },
                "memory map at physical 0x3000 is not readable",
                false,
            ),
            (
                BootInfoError::BadMagic(7),
                "hvm_start_info magic is 0x7, expected 0x336ec578",
                false,
            ),
            (
                BootInfoError::NoMemoryMap { version: 0 },
                "hvm_start_info version 0 has no memory map (need version 1)",
                false,
            ),
            (
                BootInfoError::TooManyEntries(200),
                "memory map has 200 entries, at most 128 are read",
                false,
            ),
            (
                BootInfoError::MemoryMap(MemoryMapError::NoUsableMemory),
                "memory map has no usable memory",
                false,
            ),
            (
                BootInfoError::CommandLineTooLong,
                "command line is longer than 1024 bytes",
                true,
            ),
            (
                BootInfoError::CommandLineNotUtf8,
                "command line is not valid UTF-8",
                true,
            ),
            (
                BootInfoError::OverwrittenByCommandLine(u32::from_le_bytes(*b"st=a")),
                "hvm_start_info magic is 0x613d7473 (\"st=a\" as text), not 0x336ec578: the \
                 command line was probably too long (the kernel takes at most 1024 bytes) and \
                 the loader wrote it over hvm_start_info",
                true,
            ),
        ];
        for (error, text, user_fault) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.is_command_line(), user_fault, "{text}");
        }
    }

    #[test]
    fn text_over_the_magic_is_blamed_on_the_command_line() {
        let mut mem = FakeMemory::new(0x4000);
        // What QEMU leaves when a long -append lands on hvm_start_info.
        mem.put(0x1000, &[b'x'; 56]);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::OverwrittenByCommandLine(0x7878_7878))
        );
        // Text with a control character, or binary, is just a bad magic.
        mem.put(0x1000, b"xx\x1bx");
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::BadMagic(0x781b_7878))
        );
        mem.put(0x1000, &0x336e_c579u32.to_le_bytes());
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::BadMagic(0x336e_c579))
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        let mut mem = FakeMemory::new(0x4000);
        mem.put_memmap(0x3000, QEMU_129M);
        mem.put_start_info(0x1000, 1, 0x2000, 0, 0x3000, QEMU_129M.len() as u32);
        mem.put(0x2000, &[b'a'; MAX_COMMAND_LINE + 1]);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::CommandLineTooLong)
        );
        mem.put(0x2000, &[0xff, 0xfe, 0]);
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::CommandLineNotUtf8)
        );
        // A line running into unreadable memory.
        mem.put_start_info(0x1000, 1, 0x3ffe, 0, 0x3000, QEMU_129M.len() as u32);
        mem.put(0x3ffe, b"ab");
        assert_eq!(
            BootInfo::parse(0x1000, &mem),
            Err(BootInfoError::Unreadable {
                what: "command line",
                phys: 0x4000
            })
        );
    }
}
