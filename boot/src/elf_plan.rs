//! Checking the root task's ELF before any of it is loaded: a pure
//! function ([`plan`]) from the file's first bytes and its size to a
//! [`Plan`] of what to map where, or an [`ElfError`] that says what is
//! wrong. Nothing here touches memory or hardware; the kernel's
//! `roottask` does the loading, reading the module only where a checked
//! plan points. Here, beside the boot-module checks, it is host-tested
//! (and under `make mutants`).
//!
//! ELF parsing is the `elf` crate's (0.8, `no_std`, without its default
//! `std` feature): it is safe code only, fuzzed for panics, and returns
//! typed errors with checked arithmetic on malformed input, which is what
//! a kernel reading a user's file needs. Its header and program-header
//! parsers run on the file's first page ([`HEADER_BYTES`]): loading needs
//! nothing else (section headers, usually at the file's end, are ignored),
//! and that page is all the kernel reads before the checks pass.
//!
//! What a [`Plan`] promises (each refusal is its own [`ElfError`]):
//! - the file is a little-endian ELF64 executable (`ET_EXEC`, linked at a
//!   fixed address) for x86-64, its program headers inside the first page;
//! - it needs no loader's help: no `PT_INTERP`, `PT_DYNAMIC` or `PT_TLS`
//!   (other non-`PT_LOAD` headers, such as `PT_GNU_STACK`, are ignored);
//! - 1 to [`MAX_SEGMENTS`] non-empty `PT_LOAD` segments, each with
//!   `filesz <= memsz`, its file bytes inside the file, a power-of-two (or
//!   zero) alignment, and its pages inside [`IMAGE_REGION`] (the user
//!   half, below the pages the kernel places itself); `p_paddr` is not
//!   used (the kernel picks the frames);
//! - no page shared by two segments (every page gets exactly one
//!   segment's rights), and at most [`MAX_IMAGE_BYTES`] of pages in all;
//! - W^X: no segment both writable and executable;
//! - the entry point inside an executable segment.

use core::ops::Range;
use elf::abi;
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader};
use elf::parse::{ParseAt, ParseError};
use elf::segment::{ProgramHeader, SegmentTable};

/// Bytes of the file the checks read: the ELF header and the program
/// headers must lie in them.
pub const HEADER_BYTES: usize = 4096;
/// Most `PT_LOAD` segments.
pub const MAX_SEGMENTS: usize = 16;
/// Where a root task's segments may lie: above the first 64 KiB (null
/// pointers keep faulting), below the pages the kernel places itself at
/// the top of the user half (stack, IPC buffer, boot-info frame).
pub const IMAGE_REGION: Range<u64> = 0x1_0000..0x7fff_0000_0000;
/// Most bytes of pages the segments may span together.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

const PAGE: u64 = 4096;
/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;

/// One `PT_LOAD` segment, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of its first byte.
    pub vaddr: u64,
    /// Bytes in memory (those past `filesz` are zero).
    pub memsz: u64,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Mapped writable.
    pub writable: bool,
    /// Mapped executable.
    pub executable: bool,
}

impl Segment {
    /// The pages it touches, page-aligned.
    pub fn pages(&self) -> Range<u64> {
        self.vaddr / PAGE * PAGE..(self.vaddr + self.memsz).div_ceil(PAGE) * PAGE
    }

    /// `r-x`, `rw-` or `r--`, for reports.
    pub fn rights(&self) -> &'static str {
        match (self.writable, self.executable) {
            (false, true) => "r-x",
            (true, _) => "rw-",
            (false, false) => "r--",
        }
    }
}

/// What to load: the checked segments and the entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where the program starts.
    pub entry: u64,
    /// The `PT_LOAD` segments, in file order.
    pub segments: heapless::Vec<Segment, MAX_SEGMENTS>,
}

impl Plan {
    /// From the first page of the lowest segment to the end of the last
    /// page of the highest.
    pub fn image(&self) -> Range<u64> {
        let start = self.segments.iter().map(|s| s.pages().start).min();
        let end = self.segments.iter().map(|s| s.pages().end).max();
        start.unwrap_or(0)..end.unwrap_or(0)
    }
}

/// Why a file is not a root task the kernel can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF header.
    TooShort {
        /// The file's size.
        size: u64,
    },
    /// No ELF magic: not an ELF file.
    NotElf {
        /// The first four bytes.
        magic: [u8; 4],
    },
    /// A class other than 64-bit (`EI_CLASS`).
    NotElf64 {
        /// `e_ident[EI_CLASS]`.
        class: u8,
    },
    /// Not little endian (`EI_DATA`).
    NotLittleEndian {
        /// `e_ident[EI_DATA]`.
        data: u8,
    },
    /// The header does not parse for another reason.
    Header,
    /// A version other than 1 (`EI_VERSION` or `e_version`).
    BadVersion {
        /// The version found.
        version: u64,
    },
    /// Not for x86-64.
    NotX86_64 {
        /// `e_machine`.
        machine: u16,
    },
    /// Not `ET_EXEC`.
    NotExecutable {
        /// `e_type`.
        kind: u16,
    },
    /// The program headers are not where they can be read: past the first
    /// page or the file, of the wrong entry size, or none.
    ProgramHeaders {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
        /// `e_phentsize`.
        entry_size: u16,
    },
    /// A program header that needs a dynamic loader or thread-local
    /// storage set-up.
    NeedsLoader {
        /// Its index.
        index: usize,
        /// `p_type`.
        kind: u32,
    },
    /// No non-empty `PT_LOAD` segment.
    NoSegments,
    /// More than [`MAX_SEGMENTS`] `PT_LOAD` segments.
    TooManySegments,
    /// `filesz > memsz`.
    FileSizeAboveMemSize {
        /// Its index among the program headers.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Its file bytes run past the end of the file.
    PastFileEnd {
        /// Its index among the program headers.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// The file's size.
        size: u64,
    },
    /// `p_align` is neither 0 nor a power of two.
    BadAlignment {
        /// Its index among the program headers.
        index: usize,
        /// `p_align`.
        align: u64,
    },
    /// Its pages leave [`IMAGE_REGION`] (or its end wraps).
    OutsideImageRegion {
        /// Its index among the program headers.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Two segments share a page.
    Overlap {
        /// The earlier one's index among the program headers.
        first: usize,
        /// The later one's.
        second: usize,
    },
    /// Writable and executable.
    WritableExecutable {
        /// Its index among the program headers.
        index: usize,
    },
    /// The segments span more than [`MAX_IMAGE_BYTES`].
    TooLarge {
        /// Bytes of pages they span.
        bytes: u64,
    },
    /// The entry point is not inside an executable segment.
    EntryNotExecutable {
        /// `e_entry`.
        entry: u64,
    },
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooShort { size } => write!(
                f,
                "not an ELF file: {size} bytes, shorter than an ELF header ({EHDR_SIZE})"
            ),
            Self::NotElf { magic } => write!(
                f,
                "not an ELF file: it starts {:02x} {:02x} {:02x} {:02x}, not 7f 45 4c 46",
                magic[0], magic[1], magic[2], magic[3]
            ),
            Self::NotElf64 { class } => write!(
                f,
                "ELF class {class}, not 64-bit ({}): the root task must be ELF64",
                abi::ELFCLASS64
            ),
            Self::NotLittleEndian { data } => write!(
                f,
                "ELF data encoding {data}, not little endian ({})",
                abi::ELFDATA2LSB
            ),
            Self::Header => write!(f, "the ELF header does not parse"),
            Self::BadVersion { version } => {
                write!(f, "ELF version {version}, not {}", abi::EV_CURRENT)
            }
            Self::NotX86_64 { machine } => {
                write!(
                    f,
                    "built for machine {machine}, not x86-64 ({})",
                    abi::EM_X86_64
                )
            }
            Self::NotExecutable { kind } if kind == abi::ET_DYN => write!(
                f,
                "position-independent (ET_DYN): link the root task static at a fixed address \
                 (ET_EXEC)"
            ),
            Self::NotExecutable { kind } => {
                write!(f, "ELF type {kind}, not an executable (ET_EXEC)")
            }
            Self::ProgramHeaders {
                offset,
                count,
                entry_size,
            } => write!(
                f,
                "program headers unreadable: {count} of {entry_size} bytes at offset {offset:#x} \
                 (they must be 1 or more 56-byte entries inside the first {HEADER_BYTES} bytes)"
            ),
            Self::NeedsLoader { index, kind } => {
                let what = match kind {
                    abi::PT_INTERP => "an interpreter (PT_INTERP)",
                    abi::PT_DYNAMIC => "dynamic linking (PT_DYNAMIC)",
                    abi::PT_TLS => "thread-local storage (PT_TLS)",
                    _ => "a loader",
                };
                write!(
                    f,
                    "program header {index} asks for {what}, which the kernel does not provide"
                )
            }
            Self::NoSegments => write!(f, "no PT_LOAD segment with any bytes"),
            Self::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} PT_LOAD segments")
            }
            Self::FileSizeAboveMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "segment {index}: file size {filesz:#x} above its memory size {memsz:#x}"
            ),
            Self::PastFileEnd {
                index,
                offset,
                filesz,
                size,
            } => write!(
                f,
                "segment {index}: {filesz:#x} bytes at offset {offset:#x} run past the end of \
                 the file ({size:#x} bytes)"
            ),
            Self::BadAlignment { index, align } => write!(
                f,
                "segment {index}: alignment {align:#x} is not a power of two"
            ),
            Self::OutsideImageRegion {
                index,
                vaddr,
                memsz,
            } => write!(
                f,
                "segment {index}: {memsz:#x} bytes at {vaddr:#x} leave the user image region \
                 [{:#x}, {:#x})",
                IMAGE_REGION.start, IMAGE_REGION.end
            ),
            Self::Overlap { first, second } => {
                write!(f, "segments {first} and {second} share a page")
            }
            Self::WritableExecutable { index } => write!(
                f,
                "segment {index} is both writable and executable (W^X: link code and data \
                 into separate segments)"
            ),
            Self::TooLarge { bytes } => write!(
                f,
                "the segments span {bytes} bytes, more than {MAX_IMAGE_BYTES}"
            ),
            Self::EntryNotExecutable { entry } => {
                write!(f, "entry point {entry:#x} is not in an executable segment")
            }
        }
    }
}

/// Checks the ELF file whose first bytes are `header` (its first
/// [`HEADER_BYTES`], or all of it if shorter) and whose size is `size`.
pub fn plan(header: &[u8], size: u64) -> Result<Plan, ElfError> {
    if header.len() < EHDR_SIZE || size < EHDR_SIZE as u64 {
        return Err(ElfError::TooShort { size });
    }
    let ident =
        elf::file::parse_ident::<LittleEndian>(&header[..abi::EI_NIDENT]).map_err(ident_error)?;
    if ident.1 != Class::ELF64 {
        return Err(ElfError::NotElf64 {
            class: header[abi::EI_CLASS],
        });
    }
    // The header's 48 bytes after the identification are all there, so
    // only its fields' values can be wrong, and they are checked below.
    let ehdr =
        FileHeader::parse_tail(ident, &header[abi::EI_NIDENT..EHDR_SIZE]).map_err(ident_error)?;
    if ehdr.version != u32::from(abi::EV_CURRENT) {
        return Err(ElfError::BadVersion {
            version: ehdr.version.into(),
        });
    }
    if ehdr.e_machine != abi::EM_X86_64 {
        return Err(ElfError::NotX86_64 {
            machine: ehdr.e_machine,
        });
    }
    if ehdr.e_type != abi::ET_EXEC {
        return Err(ElfError::NotExecutable { kind: ehdr.e_type });
    }
    let table = program_headers(&ehdr, header, size)?;

    let mut segments: heapless::Vec<Segment, MAX_SEGMENTS> = heapless::Vec::new();
    // Each kept segment's index among the program headers, for errors.
    let mut indices: heapless::Vec<usize, MAX_SEGMENTS> = heapless::Vec::new();
    for (index, phdr) in table.iter().enumerate() {
        match phdr.p_type {
            abi::PT_LOAD => {}
            abi::PT_INTERP | abi::PT_DYNAMIC | abi::PT_TLS => {
                return Err(ElfError::NeedsLoader {
                    index,
                    kind: phdr.p_type,
                });
            }
            _ => continue,
        }
        let segment = check_segment(index, &phdr, size)?;
        if segment.memsz == 0 {
            continue;
        }
        if let Some(at) = segments
            .iter()
            .position(|s| overlaps(&s.pages(), &segment.pages()))
        {
            return Err(ElfError::Overlap {
                first: indices[at],
                second: index,
            });
        }
        segments
            .push(segment)
            .map_err(|_| ElfError::TooManySegments)?;
        // Same capacity as `segments`, which took it.
        let _ = indices.push(index);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let bytes: u64 = segments
        .iter()
        .map(|s| s.pages().end - s.pages().start)
        .sum();
    if bytes > MAX_IMAGE_BYTES {
        return Err(ElfError::TooLarge { bytes });
    }
    let entry = ehdr.e_entry;
    let runs = segments
        .iter()
        .any(|s| s.executable && s.vaddr <= entry && entry < s.vaddr + s.memsz);
    if !runs {
        return Err(ElfError::EntryNotExecutable { entry });
    }
    Ok(Plan { entry, segments })
}

/// What a refused identification says.
fn ident_error(error: ParseError) -> ElfError {
    match error {
        ParseError::BadMagic(magic) => ElfError::NotElf { magic },
        ParseError::UnsupportedElfClass(class) => ElfError::NotElf64 { class },
        ParseError::UnsupportedElfEndianness(data) => ElfError::NotLittleEndian { data },
        ParseError::UnsupportedVersion((version, _)) => ElfError::BadVersion { version },
        // The bytes are all there (checked), so nothing else is refused
        // today; should the crate ever say more, it still refuses.
        _ => ElfError::Header,
    }
}

/// The program-header table, if it lies inside `header` and the file.
fn program_headers<'a>(
    ehdr: &FileHeader<LittleEndian>,
    header: &'a [u8],
    size: u64,
) -> Result<SegmentTable<'a, LittleEndian>, ElfError> {
    let refused = ElfError::ProgramHeaders {
        offset: ehdr.e_phoff,
        count: ehdr.e_phnum,
        entry_size: ehdr.e_phentsize,
    };
    let entry_size = ProgramHeader::validate_entsize(Class::ELF64, ehdr.e_phentsize.into())
        .map_err(|_| refused)?;
    // PN_XNUM would move the count into a section header: not read here.
    if ehdr.e_phnum == 0 || ehdr.e_phnum == abi::PN_XNUM {
        return Err(refused);
    }
    let start = usize::try_from(ehdr.e_phoff).map_err(|_| refused)?;
    let end = entry_size
        .checked_mul(ehdr.e_phnum.into())
        .and_then(|bytes| start.checked_add(bytes))
        .filter(|&end| start >= EHDR_SIZE && end <= HEADER_BYTES && end as u64 <= size)
        .ok_or(refused)?;
    let bytes = header.get(start..end).ok_or(refused)?;
    Ok(SegmentTable::new(LittleEndian, Class::ELF64, bytes))
}

/// Checks one `PT_LOAD` header (index `index`) of a file of `size` bytes.
fn check_segment(index: usize, phdr: &ProgramHeader, size: u64) -> Result<Segment, ElfError> {
    if phdr.p_filesz > phdr.p_memsz {
        return Err(ElfError::FileSizeAboveMemSize {
            index,
            filesz: phdr.p_filesz,
            memsz: phdr.p_memsz,
        });
    }
    if phdr
        .p_offset
        .checked_add(phdr.p_filesz)
        .is_none_or(|end| end > size)
    {
        return Err(ElfError::PastFileEnd {
            index,
            offset: phdr.p_offset,
            filesz: phdr.p_filesz,
            size,
        });
    }
    if phdr.p_align != 0 && !phdr.p_align.is_power_of_two() {
        return Err(ElfError::BadAlignment {
            index,
            align: phdr.p_align,
        });
    }
    let inside = phdr
        .p_vaddr
        .checked_add(phdr.p_memsz)
        .and_then(|end| end.checked_next_multiple_of(PAGE))
        .is_some_and(|end| IMAGE_REGION.start <= phdr.p_vaddr && end <= IMAGE_REGION.end);
    if !inside {
        return Err(ElfError::OutsideImageRegion {
            index,
            vaddr: phdr.p_vaddr,
            memsz: phdr.p_memsz,
        });
    }
    let writable = phdr.p_flags & abi::PF_W != 0;
    let executable = phdr.p_flags & abi::PF_X != 0;
    if writable && executable {
        return Err(ElfError::WritableExecutable { index });
    }
    Ok(Segment {
        vaddr: phdr.p_vaddr,
        memsz: phdr.p_memsz,
        offset: phdr.p_offset,
        filesz: phdr.p_filesz,
        writable,
        executable,
    })
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}
