//! The root task: the first ring-3 program, taken from the first PVH boot
//! module (QEMU `-initrd`), loaded into a fresh user address space and run
//! on the boot CPU until it stops. How it stops ends the run: exit status
//! 0 is success, any other status or a fault is a failure.
//!
//! Its address space (the user half):
//! - the ELF's `PT_LOAD` segments, checked first by [`boot::elf_plan`];
//!   each page a fresh zeroed frame holding the segment's file bytes,
//!   mapped with the segment's rights (`r-x`, `r--` or `rw-`);
//! - the stack: [`STACK_PAGES`] pages below [`STACK_TOP`], read-write,
//!   with unmapped pages below and above it;
//! - the IPC buffer: one read-write page at [`IPC_BUFFER`];
//! - the boot-info frame: one read-only page at [`BOOT_INFO`], holding an
//!   [`abi::BootInfo`].
//!
//! Entry convention (`abi::bootinfo`'s): `rip` is the ELF entry, `rsp` is
//! [`STACK_TOP`] (16-byte aligned), `rdi` is [`BOOT_INFO`], every other
//! register is zero, interrupts are on.
//!
//! Its frames are movable user memory (`Movable`/`Mapped`): compaction may
//! move them, and the space's reverse map follows. They are the space's
//! until it is dropped, after the task stops. The module itself stays
//! where the loader put it (the page allocator never had it).

use crate::arch::exit::ExitCode;
use crate::arch::usermode::{self, Stop, UserContext};
use crate::memory::KernelPhys;
use crate::memory::frames::{self, Frame, FrameError};
use crate::memory::paging::{AddressSpace, MapFlags, PagingError, load_kernel_root};
use crate::println;
use abi::{BootInfo, FIRST_UNTYPED_SLOT, MAX_BOOT_UNTYPED, SlotRegion};
use boot::elf_plan::{self as loader, ElfError, HEADER_BYTES, Plan, Segment};
use boot::{BootModule, PhysMemory};
use ptalloc::{Freetype, Mobility, Protection};

/// Top of the root task's stack (its first push lands just below).
pub const STACK_TOP: u64 = 0x7fff_ffff_0000;
/// Pages of stack (64 KiB).
pub const STACK_PAGES: u64 = 16;
/// The IPC buffer's page.
pub const IPC_BUFFER: u64 = 0x7fff_ffff_4000;
/// The boot-info frame's page.
pub const BOOT_INFO: u64 = 0x7fff_ffff_8000;
/// The root CNode's radix (4096 slots, seL4's default on x86).
pub const ROOT_CNODE_RADIX: u64 = 12;

const PAGE: u64 = 4096;
/// Where the stack's pages start.
const STACK_BOTTOM: u64 = STACK_TOP - STACK_PAGES * PAGE;

// The kernel's pages lie above the ELF's region, apart, in the user half.
const _: () = {
    assert!(loader::IMAGE_REGION.end < STACK_BOTTOM - PAGE);
    assert!(STACK_TOP + PAGE <= IPC_BUFFER && IPC_BUFFER + 2 * PAGE <= BOOT_INFO);
    assert!(BOOT_INFO + PAGE < 1 << 47);
    assert!(IPC_BUFFER.is_multiple_of(1 << abi::IPC_BUFFER_SIZE_BITS));
};

/// Movable user memory, in the direct map.
const USER_MEMORY: Freetype = Freetype {
    mobility: Mobility::Movable,
    protection: Protection::Mapped,
};
const READ_ONLY: MapFlags = MapFlags {
    writable: false,
    executable: false,
};
const READ_WRITE: MapFlags = MapFlags {
    writable: true,
    executable: false,
};

/// Why the root task could not be loaded.
#[derive(Debug)]
enum LoadError {
    /// The module's bytes could not be read.
    Unreadable {
        /// Physical address.
        phys: u64,
    },
    /// The ELF was refused.
    Elf(ElfError),
    /// No user address space.
    Space(PagingError),
    /// No frame for a page.
    Frame {
        /// The page it was for.
        virt: u64,
        /// Why.
        error: FrameError,
    },
    /// Bytes could not be copied into the fresh frame for a page.
    Copy {
        /// The page.
        virt: u64,
    },
    /// A page could not be mapped.
    Map {
        /// The page.
        virt: u64,
        /// Why.
        error: PagingError,
    },
    /// The boot info the kernel built does not pass `abi`'s check.
    BootInfo(abi::DecodeError),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable { phys } => {
                write!(f, "its bytes at physical {phys:#x} are not readable")
            }
            Self::Elf(error) => write!(f, "{error}"),
            Self::Space(error) => write!(f, "no user address space: {error:?}"),
            Self::Frame { virt, error } => {
                write!(f, "no frame for the page at {virt:#x}: {error:?}")
            }
            Self::Copy { virt } => write!(f, "cannot fill the frame for the page at {virt:#x}"),
            Self::Map { virt, error } => write!(f, "cannot map the page at {virt:#x}: {error:?}"),
            Self::BootInfo(error) => write!(f, "the boot info fails its check: {error:?}"),
        }
    }
}

/// A loaded root task, ready to enter.
struct Loaded {
    space: AddressSpace,
    plan: Plan,
}

/// Loads the root task from `module` (the first boot module; `others`
/// more are ignored) and runs it; returns how the run ends. Prints what it
/// loads, `boot complete` before it enters ring 3, and `root task: exited
/// with status N` (or the fault) when it stops.
pub fn run(module: &BootModule, others: usize) -> ExitCode {
    print_module(module);
    if others > 0 {
        println!("root task: {} more boot modules are ignored", others);
    }
    let loaded = match load(module) {
        Ok(loaded) => loaded,
        Err(error) => {
            println!("root task: cannot load boot module 0: {}", error);
            return ExitCode::Failure;
        }
    };
    print_plan(&loaded.plan);
    println!("boot complete");
    let mut context = UserContext::new(loaded.plan.entry, STACK_TOP);
    context.rdi = BOOT_INFO;
    loaded.space.load();
    let stop = usermode::run(&mut context);
    load_kernel_root();
    drop(loaded);
    report_stop(stop)
}

fn print_module(module: &BootModule) {
    println!(
        "root task: boot module 0 at [{:#x}, {:#x}), {} bytes, command line \"{}\"",
        module.start,
        module.end(),
        module.size,
        boot::cmdline::Escaped(&module.command_line)
    );
}

fn print_plan(plan: &Plan) {
    crate::print!("root task: ELF entry {:#x}; segments", plan.entry);
    for segment in &plan.segments {
        let pages = segment.pages();
        crate::print!(
            " [{:#x}, {:#x}) {}",
            pages.start,
            pages.end,
            segment.rights()
        );
    }
    println!();
    println!(
        "root task: stack [{:#x}, {:#x}) rw-, IPC buffer {:#x} rw-, boot info {:#x} r--; \
         rdi = boot info",
        STACK_BOTTOM, STACK_TOP, IPC_BUFFER, BOOT_INFO
    );
}

/// Says how the task stopped; success only for exit status 0.
fn report_stop(stop: Stop) -> ExitCode {
    match stop {
        Stop::Exited(status) => {
            println!("root task: exited with status {}", status);
            if status == 0 {
                ExitCode::Success
            } else {
                ExitCode::Failure
            }
        }
        Stop::Fault {
            vector,
            error_code,
            rip,
            address,
        } => {
            let (mnemonic, name) = crate::arch::idt::exception_name(vector);
            println!(
                "root task: stopped by a fault: {} ({}, vector {}) at rip {:#x}, error code {:#x}, \
                 address {:#x}",
                name, mnemonic, vector, rip, error_code, address
            );
            ExitCode::Failure
        }
        Stop::BadReturn { rip } => {
            println!(
                "root task: stopped: it would return to rip {:#x}, outside the user half",
                rip
            );
            ExitCode::Failure
        }
    }
}

/// Checks the module's ELF, then builds the address space.
fn load(module: &BootModule) -> Result<Loaded, LoadError> {
    let mut header = [0u8; HEADER_BYTES];
    let len = module.size.min(HEADER_BYTES as u64) as usize;
    KernelPhys
        .read(module.start, &mut header[..len])
        .ok_or(LoadError::Unreadable { phys: module.start })?;
    let plan = loader::plan(&header[..len], module.size).map_err(LoadError::Elf)?;
    let space = AddressSpace::new().map_err(LoadError::Space)?;
    for segment in &plan.segments {
        load_segment(&space, module, segment)?;
    }
    for page in 0..STACK_PAGES {
        map_zeroed(&space, STACK_BOTTOM + page * PAGE, READ_WRITE)?;
    }
    map_zeroed(&space, IPC_BUFFER, READ_WRITE)?;
    let info = boot_info(&plan);
    info.check().map_err(LoadError::BootInfo)?;
    let mut frame = user_frame(BOOT_INFO)?;
    // A fresh 4 KiB frame holds the BootInfo (checked to fit).
    let copied = crate::memory::ephemeral::copy_to(&mut frame, 0, &boot_info_bytes(&info));
    copied.ok_or(LoadError::Copy { virt: BOOT_INFO })?;
    map(&space, BOOT_INFO, frame, READ_ONLY)?;
    Ok(Loaded { space, plan })
}

fn user_frame(virt: u64) -> Result<Frame, LoadError> {
    frames::alloc_frame(0, USER_MEMORY, true).map_err(|error| LoadError::Frame { virt, error })
}

fn map(space: &AddressSpace, virt: u64, frame: Frame, flags: MapFlags) -> Result<(), LoadError> {
    space
        .map(virt, frame, flags)
        .map_err(|refused| LoadError::Map {
            virt,
            error: refused.error,
        })
}

fn map_zeroed(space: &AddressSpace, virt: u64, flags: MapFlags) -> Result<(), LoadError> {
    map(space, virt, user_frame(virt)?, flags)
}

/// Maps `segment`'s pages, each a zeroed frame with the segment's file
/// bytes that fall in it, copied from the module.
fn load_segment(
    space: &AddressSpace,
    module: &BootModule,
    segment: &Segment,
) -> Result<(), LoadError> {
    let flags = MapFlags {
        writable: segment.writable,
        executable: segment.executable,
    };
    let file_end = segment.vaddr + segment.filesz;
    let mut buffer = [0u8; PAGE as usize];
    for page in segment.pages().step_by(PAGE as usize) {
        let mut frame = user_frame(page)?;
        let from = page.max(segment.vaddr);
        let to = (page + PAGE).min(file_end);
        if from < to {
            let bytes = &mut buffer[..(to - from) as usize];
            // Inside the module: the plan checked offset + filesz.
            let phys = module.start + segment.offset + (from - segment.vaddr);
            KernelPhys
                .read(phys, bytes)
                .ok_or(LoadError::Unreadable { phys })?;
            crate::memory::ephemeral::copy_to(&mut frame, from - page, bytes)
                .ok_or(LoadError::Copy { virt: page })?;
        }
        map(space, page, frame, flags)?;
    }
    Ok(())
}

/// What the root task is given. The fixed caps' slots are `abi::InitCap`'s.
fn boot_info(plan: &Plan) -> BootInfo {
    let image = plan.image();
    BootInfo {
        magic: BootInfo::MAGIC,
        node_id: 0,
        node_count: 1,
        ipc_buffer: IPC_BUFFER,
        root_cnode_radix: ROOT_CNODE_RADIX,
        // TODO(issue 13, capabilities): the capability step creates the
        // root CNode with the fixed caps and gives the root task its
        // Untyped caps from FIRST_UNTYPED_SLOT on; it fills `untyped`,
        // `untyped_bytes` and `empty` from them. Until then: none.
        untyped: SlotRegion {
            start: FIRST_UNTYPED_SLOT,
            end: FIRST_UNTYPED_SLOT,
        },
        untyped_bytes: [0; MAX_BOOT_UNTYPED],
        empty: SlotRegion {
            start: FIRST_UNTYPED_SLOT,
            end: 1 << ROOT_CNODE_RADIX,
        },
        image_start: image.start,
        image_end: image.end,
    }
}

/// `BootInfo` is `#[repr(C)]` and all `u64`s: its bytes are these words,
/// in field order (pinned below, so a change to the struct fails here).
const BOOT_INFO_WORDS: usize = 9 + MAX_BOOT_UNTYPED + 2;
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BootInfo>() == BOOT_INFO_WORDS * 8);
    assert!(offset_of!(BootInfo, root_cnode_radix) == 4 * 8);
    assert!(offset_of!(BootInfo, empty) == 5 * 8);
    assert!(offset_of!(BootInfo, untyped) == 7 * 8);
    assert!(offset_of!(BootInfo, untyped_bytes) == 9 * 8);
    assert!(offset_of!(BootInfo, image_start) == (9 + MAX_BOOT_UNTYPED) * 8);
    assert!(size_of::<BootInfo>() <= PAGE as usize);
};

/// The frame's bytes for `info` (little endian, as x86-64 reads them).
fn boot_info_bytes(info: &BootInfo) -> [u8; BOOT_INFO_WORDS * 8] {
    let mut words = [0u64; BOOT_INFO_WORDS];
    words[..9].copy_from_slice(&[
        info.magic,
        info.node_id,
        info.node_count,
        info.ipc_buffer,
        info.root_cnode_radix,
        info.empty.start,
        info.empty.end,
        info.untyped.start,
        info.untyped.end,
    ]);
    words[9..9 + MAX_BOOT_UNTYPED].copy_from_slice(&info.untyped_bytes);
    words[9 + MAX_BOOT_UNTYPED..].copy_from_slice(&[info.image_start, info.image_end]);
    let mut bytes = [0u8; BOOT_INFO_WORDS * 8];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}
