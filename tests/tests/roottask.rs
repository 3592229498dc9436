//! The root task under QEMU: the built one runs in ring 3, prints what the
//! boot-info frame holds and exits 0, which ends the run as a success; a
//! malformed boot module stops the boot with one clear line and a failure
//! status, never a panic; and the module's frames stay out of the page
//! allocator.
//!
//! The malformed modules are the built root task with one field changed
//! (or a text file), written to a temp dir, so each test names exactly
//! the check it trips.

use qemu_tests::{Run, boot, qemu};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tools::{Outcome, QemuConfig};

/// The root task ELF, built once per test binary.
fn roottask() -> PathBuf {
    static ROOTTASK: OnceLock<PathBuf> = OnceLock::new();
    ROOTTASK
        .get_or_init(|| {
            tools::build_roottask(true)
                .unwrap_or_else(|e| panic!("cannot build the root task: {e}"))
        })
        .clone()
}

/// A boot of the kernel with `module` as its boot module.
fn with_module(append: &str, module: &Path) -> QemuConfig {
    qemu(append).initrd(module)
}

/// What the kernel prints when it refuses the module.
const REFUSED: &str = "root task: cannot load boot module 0: ";

/// A file in a temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("pks-kernel-roottask-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_root_task_prints_its_boot_info_and_exits_cleanly() {
    let run = boot(with_module("", &roottask()));
    run.expect_outcome(Outcome::Success).expect_console(&[
        "root task: boot module 0 at [",
        "root task: ELF entry 0x400000; segments [0x400000, ",
        ") r-x [",
        ") r-- [",
        ") rw-",
        "root task: stack [0x7ffffffe0000, 0x7fffffff0000) rw-, IPC buffer 0x7fffffff4000 rw-, \
         boot info 0x7fffffff8000 r--; rdi = boot info",
        "boot complete",
        "roottask: hello from ring 3",
        "roottask: boot info at 0x7fffffff8000: version 2, node 0 of 1",
        "roottask: root CNode: radix 12 (4096 slots)",
        "roottask: fixed caps: 1=InitThreadTcb 2=InitThreadCNode 3=InitThreadVSpace \
         4=BootInfoFrame 5=InitThreadIpcBuffer",
        "roottask: untyped: slots 6..",
        "roottask:   slot 6: ",
        "roottask: caps of its own tables and frames: slots ",
        "roottask: empty slots ",
        "roottask: IPC buffer at 0x7fffffff4000",
        "roottask: image [0x400000, ",
        "roottask: retyped a 4 KiB frame into slot ",
        ": 4096 budget bytes spent, 4096 refunded on delete",
        "roottask: done, exiting with status 0",
        "root task: exited with status 0",
    ]);
    // The kernel's lines come before ring 3's, the exit after them.
    let order = [
        "boot complete",
        "roottask: hello from ring 3",
        "roottask: done",
        "root task: exited with status 0",
    ]
    .map(|line| run.0.console_line_at(line));
    assert!(
        order.windows(2).all(|pair| pair[0] <= pair[1]),
        "out of order: {order:?}\n{}",
        run.0.transcript()
    );
}

#[test]
fn the_root_task_runs_without_pks_and_on_two_cpus() {
    for config in [
        with_module("ptprot=ro", &roottask()).cpu("qemu64"),
        with_module("", &roottask()).smp(2),
    ] {
        boot(config)
            .expect_outcome(Outcome::Success)
            .expect_console(&[
                "roottask: done, exiting with status 0",
                "root task: exited with status 0",
            ]);
    }
}

#[test]
fn the_modules_frames_stay_out_of_the_page_allocator() {
    let frames = |run: &Run| -> u64 {
        let line = run.line_starting("page allocator: ");
        let count = line
            .trim_start_matches("page allocator: ")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok());
        count.unwrap_or_else(|| panic!("no frame count in {line:?}"))
    };
    let module = roottask();
    let size = std::fs::metadata(&module)
        .unwrap_or_else(|e| panic!("{module:?}: {e}"))
        .len();
    let without = boot(qemu(""));
    let with = boot(with_module("", &module));
    without.expect_outcome(Outcome::Success);
    with.expect_outcome(Outcome::Success);
    // QEMU puts the module page-aligned at the top of RAM: the pages it
    // touches are the allocator's fewer frames.
    assert_eq!(
        frames(&without) - frames(&with),
        size.div_ceil(4096),
        "module of {size} bytes\n{}",
        with.0.transcript()
    );
}

#[test]
fn a_text_file_as_the_module_is_a_clear_error() {
    let text = TempFile::new(
        "text",
        b"hello: this is a plain text file, given to QEMU as -initrd where the root\n\
          task's ELF should be; the kernel must refuse it in one clear line.\n",
    );
    boot(with_module("", &text.0))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[&format!(
            "{REFUSED}not an ELF file: it starts 68 65 6c 6c, not 7f 45 4c 46"
        )])
        .expect_no_console("boot complete")
        .expect_no_console("kernel panic");
}

/// The built root task with `patch` applied (offsets from its own
/// headers), booted: the kernel refuses it with `message`.
fn refused(name: &str, patch: impl FnOnce(&mut Vec<u8>, &Elf), message: &str) {
    let mut bytes = std::fs::read(roottask()).unwrap_or_else(|e| panic!("reading: {e}"));
    let elf = Elf::read(&bytes);
    patch(&mut bytes, &elf);
    let file = TempFile::new(name, &bytes);
    boot(with_module("", &file.0))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[&format!("{REFUSED}{message}")])
        .expect_no_console("boot complete")
        .expect_no_console("roottask: hello")
        .expect_no_console("kernel panic");
}

/// The few ELF64 header fields the patches need.
struct Elf {
    /// `e_phoff`.
    phoff: usize,
    /// `p_vaddr` of each program header.
    vaddr: Vec<u64>,
    /// `p_filesz` of each program header.
    filesz: Vec<u64>,
    /// `p_memsz` of each program header.
    memsz: Vec<u64>,
    /// The file's size.
    size: u64,
}

const PHDR_SIZE: usize = 56;

impl Elf {
    fn read(bytes: &[u8]) -> Self {
        let phoff = u64_at(bytes, 32) as usize;
        let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
        let field = |at: usize| -> Vec<u64> {
            (0..phnum)
                .map(|i| u64_at(bytes, phoff + i * PHDR_SIZE + at))
                .collect()
        };
        Self {
            phoff,
            vaddr: field(P_VADDR),
            filesz: field(P_FILESZ),
            memsz: field(P_MEMSZ),
            size: bytes.len() as u64,
        }
    }

    /// Offset of program header `index`'s field at `field`.
    fn phdr(&self, index: usize, field: usize) -> usize {
        self.phoff + index * PHDR_SIZE + field
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

// Program header fields.
const P_TYPE: usize = 0;
const P_FLAGS: usize = 4;
const P_OFFSET: usize = 8;
const P_VADDR: usize = 16;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;

#[test]
fn malformed_headers_are_clear_errors() {
    refused(
        "truncated",
        |b, _| b.truncate(40),
        "not an ELF file: 40 bytes, shorter than an ELF header (64)",
    );
    refused(
        "elf32",
        |b, _| b[4] = 1,
        "ELF class 1, not 64-bit (2): the root task must be ELF64",
    );
    refused(
        "big-endian",
        |b, _| b[5] = 2,
        "ELF data encoding 2, not little endian (1)",
    );
    refused(
        "i386",
        |b, _| put(b, 18, &3u16.to_le_bytes()),
        "built for machine 3, not x86-64 (62)",
    );
    refused(
        "pie",
        |b, _| put(b, 16, &3u16.to_le_bytes()),
        "position-independent (ET_DYN): link the root task static at a fixed address (ET_EXEC)",
    );
    refused(
        "phnum",
        |b, _| put(b, 56, &0xff00u16.to_le_bytes()),
        "program headers unreadable: 65280 of 56 bytes at offset 0x40",
    );
    // Segment 1 is the read-only data.
    let rodata =
        Elf::read(&std::fs::read(roottask()).unwrap_or_else(|e| panic!("reading: {e}"))).vaddr[1];
    refused(
        "entry",
        |b, _| put(b, 24, &rodata.to_le_bytes()),
        &format!("entry point {rodata:#x} is not in an executable segment"),
    );
}

#[test]
fn malformed_segments_are_clear_errors() {
    let elf = Elf::read(&std::fs::read(roottask()).unwrap_or_else(|e| panic!("reading: {e}")));
    refused(
        "wx",
        |b, e| put(b, e.phdr(2, P_FLAGS), &7u32.to_le_bytes()),
        "segment 2 is both writable and executable",
    );
    refused(
        "kernel-half",
        |b, e| {
            put(
                b,
                e.phdr(0, P_VADDR),
                &0xffff_8000_0000_0000u64.to_le_bytes(),
            )
        },
        &format!(
            "segment 0: {:#x} bytes at 0xffff800000000000 leave the user image region \
             [0x10000, 0x7fff00000000)",
            elf.memsz[0]
        ),
    );
    refused(
        "filesz",
        |b, e| put(b, e.phdr(1, P_FILESZ), &(e.memsz[1] + 1).to_le_bytes()),
        &format!(
            "segment 1: file size {:#x} above its memory size {:#x}",
            elf.memsz[1] + 1,
            elf.memsz[1]
        ),
    );
    refused(
        "offset",
        |b, e| put(b, e.phdr(1, P_OFFSET), &e.size.to_le_bytes()),
        &format!(
            "segment 1: {:#x} bytes at offset {:#x} run past the end of the file ({:#x} bytes)",
            elf.filesz[1], elf.size, elf.size
        ),
    );
    refused(
        "overlap",
        |b, e| put(b, e.phdr(1, P_VADDR), &0x40_1000u64.to_le_bytes()),
        "segments 0 and 1 share a page",
    );
    refused(
        "interp",
        |b, e| put(b, e.phdr(1, P_TYPE), &3u32.to_le_bytes()),
        "program header 1 asks for an interpreter (PT_INTERP), which the kernel does not provide",
    );
}

#[test]
fn a_faulting_root_task_ends_the_run_as_a_failure() {
    // _start is `xor ebp, ebp; and rsp, -16; call start; ud2`: entering
    // at the ud2 (11 bytes in) faults at once.
    let mut bytes = std::fs::read(roottask()).unwrap_or_else(|e| panic!("reading: {e}"));
    put(&mut bytes, 24, &0x40_000bu64.to_le_bytes());
    let file = TempFile::new("ud2", &bytes);
    boot(with_module("", &file.0))
        .expect_outcome(Outcome::KernelFailure)
        .expect_console(&[
            "boot complete",
            "root task: stopped by a fault: invalid opcode (#UD, vector 6) at rip 0x40000b",
        ])
        .expect_no_console("roottask: hello");
}
