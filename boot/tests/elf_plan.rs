//! The root task's ELF checks on the host: a small valid executable built
//! byte by byte, and one refusal per way a file can be wrong. Each bad
//! file differs from the good one in one field, so each test shows that
//! one check, not another, refuses it.

use boot::elf_plan::{ElfError, HEADER_BYTES, IMAGE_REGION, MAX_SEGMENTS, plan};

const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_GNU_STACK: u32 = 0x6474_e551;

/// One program header.
#[derive(Clone, Copy)]
struct Phdr {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

const TEXT: Phdr = Phdr {
    kind: PT_LOAD,
    flags: PF_R | PF_X,
    offset: 0x1000,
    vaddr: 0x40_0000,
    filesz: 0x100,
    memsz: 0x100,
    align: 0x1000,
};

const DATA: Phdr = Phdr {
    kind: PT_LOAD,
    flags: PF_R | PF_W,
    offset: 0x2000,
    vaddr: 0x40_1000,
    filesz: 0x10,
    memsz: 0x2000,
    align: 0x1000,
};

/// The file's size for every test but the size ones.
const SIZE: u64 = 0x3000;

/// An ELF64 header (x86-64, ET_EXEC, entry `entry`) followed by `phdrs`,
/// as the first page of a file.
fn elf(entry: u64, phdrs: &[Phdr]) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 2; // 64-bit
    bytes[5] = 1; // little endian
    bytes[6] = 1; // version
    bytes[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    bytes[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
    bytes[24..32].copy_from_slice(&entry.to_le_bytes());
    bytes[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    bytes[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    bytes[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    bytes[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for p in phdrs {
        bytes.extend(p.kind.to_le_bytes());
        bytes.extend(p.flags.to_le_bytes());
        for word in [p.offset, p.vaddr, p.vaddr, p.filesz, p.memsz, p.align] {
            bytes.extend(word.to_le_bytes());
        }
    }
    bytes.resize(HEADER_BYTES, 0);
    bytes
}

fn good() -> Vec<u8> {
    elf(TEXT.vaddr, &[TEXT, DATA])
}

#[test]
fn a_good_executable_gives_its_segments_and_entry() {
    let plan = plan(&good(), SIZE).expect("a good file");
    assert_eq!(plan.entry, TEXT.vaddr);
    let rights: Vec<_> = plan.segments.iter().map(|s| s.rights()).collect();
    assert_eq!(rights, ["r-x", "rw-"]);
    assert_eq!(plan.segments[1].pages(), 0x40_1000..0x40_3000);
    // Other headers (a stack note) are ignored.
    let note = Phdr {
        kind: PT_GNU_STACK,
        flags: PF_R | PF_W,
        ..TEXT
    };
    assert!(plan_of(TEXT.vaddr, &[TEXT, note, DATA]).is_ok());
}

fn plan_of(entry: u64, phdrs: &[Phdr]) -> Result<boot::elf_plan::Plan, ElfError> {
    plan(&elf(entry, phdrs), SIZE)
}

/// `good()` with `patch` applied to its bytes.
fn patched(patch: impl FnOnce(&mut Vec<u8>)) -> Result<boot::elf_plan::Plan, ElfError> {
    let mut bytes = good();
    patch(&mut bytes);
    plan(&bytes, SIZE)
}

#[test]
fn files_that_are_not_x86_64_executables_are_refused() {
    assert_eq!(
        plan(&good()[..10], 10),
        Err(ElfError::TooShort { size: 10 })
    );
    assert!(matches!(
        patched(|b| b[0] = b'#'),
        Err(ElfError::NotElf { .. })
    ));
    assert!(matches!(
        patched(|b| b[4] = 1),
        Err(ElfError::NotElf64 { class: 1 })
    ));
    assert!(matches!(
        patched(|b| b[5] = 2),
        Err(ElfError::NotLittleEndian { data: 2 })
    ));
    assert!(matches!(
        patched(|b| b[18..20].copy_from_slice(&3u16.to_le_bytes())),
        Err(ElfError::NotX86_64 { machine: 3 })
    ));
    assert!(matches!(
        patched(|b| b[16..18].copy_from_slice(&3u16.to_le_bytes())),
        Err(ElfError::NotExecutable { kind: 3 })
    ));
    assert!(matches!(
        patched(|b| b[20..24].copy_from_slice(&2u32.to_le_bytes())),
        Err(ElfError::BadVersion { .. })
    ));
}

#[test]
fn program_headers_must_lie_in_the_first_page_and_the_file() {
    let many = patched(|b| b[56..58].copy_from_slice(&0xfff0u16.to_le_bytes()));
    assert!(matches!(many, Err(ElfError::ProgramHeaders { .. })));
    let none = patched(|b| b[56..58].copy_from_slice(&0u16.to_le_bytes()));
    assert!(matches!(none, Err(ElfError::ProgramHeaders { .. })));
    let inside_header = patched(|b| b[32..40].copy_from_slice(&8u64.to_le_bytes()));
    assert!(matches!(
        inside_header,
        Err(ElfError::ProgramHeaders { .. })
    ));
    let bad_entry_size = patched(|b| b[54..56].copy_from_slice(&32u16.to_le_bytes()));
    assert!(matches!(
        bad_entry_size,
        Err(ElfError::ProgramHeaders { .. })
    ));
}

#[test]
fn each_segment_is_checked() {
    let big_file = Phdr {
        filesz: 0x200,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[big_file]),
        Err(ElfError::FileSizeAboveMemSize { index: 0, .. })
    ));
    let past_end = Phdr {
        offset: SIZE - 0x10,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[past_end]),
        Err(ElfError::PastFileEnd { index: 0, .. })
    ));
    let wrapping = Phdr {
        offset: u64::MAX - 8,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[wrapping]),
        Err(ElfError::PastFileEnd { .. })
    ));
    let odd_align = Phdr {
        align: 0x1001,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[odd_align]),
        Err(ElfError::BadAlignment { .. })
    ));
    for vaddr in [0, IMAGE_REGION.end, 0xffff_8000_0000_0000, u64::MAX - 0x80] {
        let outside = Phdr { vaddr, ..TEXT };
        assert!(
            matches!(
                plan_of(vaddr, &[outside]),
                Err(ElfError::OutsideImageRegion { .. })
            ),
            "{vaddr:#x}"
        );
    }
    let wx = Phdr {
        flags: PF_R | PF_W | PF_X,
        ..TEXT
    };
    assert_eq!(
        plan_of(TEXT.vaddr, &[wx]),
        Err(ElfError::WritableExecutable { index: 0 })
    );
}

#[test]
fn segments_sharing_a_page_or_needing_a_loader_are_refused() {
    let overlapping = Phdr {
        vaddr: TEXT.vaddr + 0x800,
        ..DATA
    };
    assert_eq!(
        plan_of(TEXT.vaddr, &[TEXT, overlapping]),
        Err(ElfError::Overlap {
            first: 0,
            second: 1
        })
    );
    let interp = Phdr {
        kind: PT_INTERP,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[TEXT, interp]),
        Err(ElfError::NeedsLoader {
            index: 1,
            kind: PT_INTERP
        })
    ));
    assert_eq!(
        plan_of(
            TEXT.vaddr,
            &[Phdr {
                memsz: 0,
                filesz: 0,
                ..TEXT
            }]
        ),
        Err(ElfError::NoSegments)
    );
    let many: Vec<Phdr> = (0..=MAX_SEGMENTS as u64)
        .map(|i| Phdr {
            vaddr: TEXT.vaddr + i * 0x1000,
            ..TEXT
        })
        .collect();
    assert_eq!(plan_of(TEXT.vaddr, &many), Err(ElfError::TooManySegments));
}

#[test]
fn the_image_size_and_the_entry_are_checked() {
    let huge = Phdr {
        memsz: 128 << 20,
        ..DATA
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[TEXT, huge]),
        Err(ElfError::TooLarge { .. })
    ));
    // The entry in the data segment, or just past the text.
    for entry in [DATA.vaddr, TEXT.vaddr + TEXT.memsz] {
        assert_eq!(
            plan_of(entry, &[TEXT, DATA]),
            Err(ElfError::EntryNotExecutable { entry })
        );
    }
    assert!(plan_of(TEXT.vaddr + TEXT.memsz - 1, &[TEXT, DATA]).is_ok());
}

#[test]
fn boundaries_are_accepted_and_one_past_them_refused() {
    // A header cut short, whatever the file's size; a header of exactly
    // 64 bytes is long enough (its program headers are what is missing).
    assert_eq!(
        plan(&good()[..63], SIZE),
        Err(ElfError::TooShort { size: SIZE })
    );
    assert_eq!(plan(&good(), 63), Err(ElfError::TooShort { size: 63 }));
    assert!(matches!(
        plan(&good()[..64], 64),
        Err(ElfError::ProgramHeaders { .. })
    ));
    // A segment may end exactly at the file's end.
    let at_end = Phdr {
        offset: SIZE - TEXT.filesz,
        ..TEXT
    };
    assert!(plan_of(TEXT.vaddr, &[at_end]).is_ok());
    // Exactly MAX_IMAGE_BYTES of pages is allowed, a page more is not.
    let exact = Phdr {
        memsz: 64 << 20,
        ..TEXT
    };
    assert!(plan_of(TEXT.vaddr, &[exact]).is_ok());
    let more = Phdr {
        memsz: (64 << 20) + 1,
        ..TEXT
    };
    assert!(matches!(
        plan_of(TEXT.vaddr, &[more]),
        Err(ElfError::TooLarge { .. })
    ));
    // Adjacent segments share no page, in either order.
    assert!(plan_of(TEXT.vaddr, &[DATA, TEXT]).is_ok());
}

#[test]
fn unsupported_identifications_are_named() {
    assert!(matches!(
        patched(|b| b[4] = 3),
        Err(ElfError::NotElf64 { class: 3 })
    ));
    assert!(matches!(
        patched(|b| b[6] = 2),
        Err(ElfError::BadVersion { version: 2 })
    ));
}

#[test]
fn refusals_say_what_is_wrong() {
    let says = |result: Result<boot::elf_plan::Plan, ElfError>, words: &str| {
        let text = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains(words), "{text:?} lacks {words:?}");
    };
    says(
        patched(|b| b[0] = b'h'),
        "not an ELF file: it starts 68 45 4c 46",
    );
    says(
        patched(|b| b[16..18].copy_from_slice(&3u16.to_le_bytes())),
        "position-independent (ET_DYN)",
    );
    says(
        patched(|b| b[16..18].copy_from_slice(&1u16.to_le_bytes())),
        "ELF type 1, not an executable",
    );
    for (kind, words) in [
        (PT_INTERP, "an interpreter (PT_INTERP)"),
        (2, "dynamic linking (PT_DYNAMIC)"),
        (7, "thread-local storage (PT_TLS)"),
    ] {
        says(plan_of(TEXT.vaddr, &[TEXT, Phdr { kind, ..TEXT }]), words);
    }
}
