//! The root task: the first ring-3 program, taken from the first PVH boot
//! module (QEMU `-initrd`), built as a process of kernel objects
//! ([`crate::object::boot`]) and run on the boot CPU until it stops. How
//! it stops ends the run: exit status 0 is success, any other status or a
//! fault is a failure.
//!
//! Its address space (the user half), every table and frame an object
//! whose cap is in the root CNode:
//! - the ELF's `PT_LOAD` segments, checked first by [`boot::elf_plan`];
//!   each page a fresh zeroed frame holding the segment's file bytes,
//!   mapped with the segment's rights (`r-x`, `r--` or `rw-`);
//! - the stack: [`STACK_PAGES`] pages below [`STACK_TOP`], read-write,
//!   with unmapped pages below and above it;
//! - the IPC buffer: one read-write page at [`IPC_BUFFER`];
//! - the boot-info frame: one read-only page at [`BOOT_INFO`], holding an
//!   [`abi::BootInfo`].
//!
//! Its capabilities: the fixed caps (`abi::InitCap`), Untyped caps worth
//! [`BUDGET_SHARE`] of the memory free once it is built, the caps of its
//! tables and frames, then empty slots; the boot info lists them.
//!
//! Entry convention (`abi::bootinfo`'s): `rip` is the ELF entry, `rsp` is
//! [`STACK_TOP`] (16-byte aligned), `rdi` is [`BOOT_INFO`], every other
//! register is zero, interrupts are on.
//!
//! Its frames are kernel-placed objects (`Unmovable`/`Mapped`): compaction
//! does not move them. The module itself stays where the loader put it
//! (the page allocator never had it).

use crate::arch::exit::ExitCode;
use crate::arch::usermode::{self, Stop, UserContext};
use crate::memory::KernelPhys;
use crate::memory::frames::Frame;
use crate::memory::paging::{MapFlags, load_kernel_root};
use crate::object::boot::{BuildError, Builder, Process};
use crate::object::{self, Body};
use crate::println;
use abi::{BootInfo, InitCap, MAX_BOOT_UNTYPED};
use boot::elf_plan::{self as loader, ElfError, HEADER_BYTES, Plan, Segment};
use boot::{BootModule, PhysMemory};

/// Top of the root task's stack (its first push lands just below).
pub const STACK_TOP: u64 = 0x7fff_ffff_0000;
/// Pages of stack (64 KiB).
pub const STACK_PAGES: u64 = 16;
/// The IPC buffer's page.
pub const IPC_BUFFER: u64 = 0x7fff_ffff_4000;
/// The boot-info frame's page.
pub const BOOT_INFO: u64 = 0x7fff_ffff_8000;
/// The root CNode's radix (4096 slots, seL4's default on x86).
pub const ROOT_CNODE_RADIX: u8 = 12;
/// The share of the memory free after the build that the root task's
/// Untyped caps are worth, in quarters: the rest stays the kernel's (page
/// tables its conversions need, CNodes and TCBs rounded up to pages,
/// frames of 2 MiB that need whole pageblocks).
pub const BUDGET_SHARE: u64 = 3;

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
pub(crate) enum LoadError {
    /// The module's bytes could not be read.
    Unreadable {
        /// Physical address.
        phys: u64,
    },
    /// The ELF was refused.
    Elf(ElfError),
    /// No object table.
    Objects(object::InitError),
    /// A kernel object could not be made or mapped.
    Build(BuildError),
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
            Self::Objects(error) => write!(f, "no object table: {error}"),
            Self::Build(error) => write!(f, "cannot build its objects: {error}"),
            Self::BootInfo(error) => write!(f, "the boot info fails its check: {error:?}"),
        }
    }
}

impl From<BuildError> for LoadError {
    fn from(error: BuildError) -> Self {
        Self::Build(error)
    }
}

/// A loaded process, ready to enter.
pub(crate) struct Loaded {
    /// Where its caps are.
    pub process: Process,
    /// Its ELF's layout.
    pub plan: Plan,
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
    let loaded = match init_objects().and_then(|()| load(module)) {
        Ok(loaded) => loaded,
        Err(error) => {
            println!("root task: cannot load boot module 0: {}", error);
            return ExitCode::Failure;
        }
    };
    print_plan(&loaded.plan);
    println!("boot complete");
    report_stop(enter(&loaded, 0))
}

/// Sets up the object table, sized for the memory free now.
pub(crate) fn init_objects() -> Result<(), LoadError> {
    let free = crate::memory::frames::frames_not_held().unwrap_or(0) * PAGE;
    object::init(object::capacity_for(free)).map_err(LoadError::Objects)
}

/// Runs the loaded process on this CPU until it stops, with `argument` in
/// rsi; its thread's registers are saved in its TCB when it stops.
pub(crate) fn enter(loaded: &Loaded, argument: u64) -> Stop {
    let mut context = UserContext::new(loaded.plan.entry, STACK_TOP);
    context.rdi = BOOT_INFO;
    context.rsi = argument;
    object::with_objects(|objects| {
        objects.set_current(Some(loaded.process.tcb));
        if let Some(Body::VSpace(space)) = objects.body(loaded.process.vspace) {
            space.load();
        }
    });
    let stop = usermode::run(&mut context);
    load_kernel_root();
    object::with_objects(|objects| objects.save_context(loaded.process.tcb, &context));
    stop
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
    if let Stop::Exited(status) = stop {
        println!("root task: exited with status {}", status);
        return if status == 0 {
            ExitCode::Success
        } else {
            ExitCode::Failure
        };
    }
    println!("root task: stopped by {}", describe(&stop));
    ExitCode::Failure
}

/// How a thread stopped, in words that follow "stopped by".
pub(crate) struct Describe<'a>(&'a Stop);

/// Words for `stop`.
pub(crate) fn describe(stop: &Stop) -> Describe<'_> {
    Describe(stop)
}

impl core::fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self.0 {
            Stop::Exited(status) => write!(f, "exiting with status {status}"),
            Stop::Fault {
                vector,
                error_code,
                rip,
                address,
            } => {
                let (mnemonic, name) = crate::arch::idt::exception_name(vector);
                write!(
                    f,
                    "a fault: {name} ({mnemonic}, vector {vector}) at rip {rip:#x}, error code \
                     {error_code:#x}, address {address:#x}"
                )
            }
            Stop::BadReturn { rip } => {
                write!(f, "a return to rip {rip:#x}, outside the user half")
            }
        }
    }
}

/// Checks the module's ELF, then builds the process (the object table
/// must be set up).
pub(crate) fn load(module: &BootModule) -> Result<Loaded, LoadError> {
    let mut header = [0u8; HEADER_BYTES];
    let len = module.size.min(HEADER_BYTES as u64) as usize;
    KernelPhys
        .read(module.start, &mut header[..len])
        .ok_or(LoadError::Unreadable { phys: module.start })?;
    let plan = loader::plan(&header[..len], module.size).map_err(LoadError::Elf)?;
    object::with_objects(|objects| build(objects, module, &plan))
        .ok_or(LoadError::Objects(object::InitError::NotUp))?
        .map(|process| Loaded { process, plan })
}

/// Builds the process `plan` describes from `module`, under the object
/// layer's lock.
fn build(
    objects: &mut object::Objects,
    module: &BootModule,
    plan: &loader::Plan,
) -> Result<object::boot::Process, LoadError> {
    let mut process = Builder::new(objects, ROOT_CNODE_RADIX)?;
    // The budget is promised before the mappings are made: they take far
    // less than the quarter kept back.
    let free = crate::memory::frames::frames_not_held().unwrap_or(0) * PAGE;
    process.give_budget(free / 4 * BUDGET_SHARE)?;
    for segment in &plan.segments {
        load_segment(&mut process, module, segment)?;
    }
    for page in 0..STACK_PAGES {
        process.map_frame(STACK_BOTTOM + page * PAGE, READ_WRITE, None, |_| Some(()))?;
    }
    let ipc_buffer = Some(InitCap::InitThreadIpcBuffer);
    process.map_frame(IPC_BUFFER, READ_WRITE, ipc_buffer, |_| Some(()))?;
    process.set_ipc_buffer(IPC_BUFFER, InitCap::InitThreadIpcBuffer);
    // Its tables first, so that the boot info lists every cap.
    process.ensure_tables(BOOT_INFO)?;
    let info = boot_info(plan, &process.layout());
    info.check().map_err(LoadError::BootInfo)?;
    let bytes = boot_info_bytes(&info);
    let fixed = Some(InitCap::BootInfoFrame);
    process.map_frame(BOOT_INFO, READ_ONLY, fixed, |frame| {
        crate::memory::ephemeral::copy_to(frame, 0, &bytes)
    })?;
    Ok(process.layout())
}

/// Maps `segment`'s pages, each a zeroed frame with the segment's file
/// bytes that fall in it, copied from the module.
fn load_segment(
    process: &mut Builder<'_>,
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
        let from = page.max(segment.vaddr);
        let to = (page + PAGE).min(file_end);
        let bytes = &mut buffer[..to.saturating_sub(from) as usize];
        if !bytes.is_empty() {
            // Inside the module: the plan checked offset + filesz.
            let phys = module.start + segment.offset + (from - segment.vaddr);
            KernelPhys
                .read(phys, bytes)
                .ok_or(LoadError::Unreadable { phys })?;
        }
        let fill = |frame: &mut Frame| {
            if bytes.is_empty() {
                return Some(());
            }
            crate::memory::ephemeral::copy_to(frame, from - page, bytes)
        };
        process.map_frame(page, flags, None, fill)?;
    }
    Ok(())
}

/// What the root task is given. The fixed caps' slots are `abi::InitCap`'s.
fn boot_info(plan: &Plan, process: &Process) -> BootInfo {
    let image = plan.image();
    BootInfo {
        magic: BootInfo::MAGIC,
        node_id: 0,
        node_count: 1,
        ipc_buffer: IPC_BUFFER,
        root_cnode_radix: u64::from(process.radix),
        untyped: process.untyped,
        untyped_bytes: process.untyped_bytes,
        mappings: process.mappings,
        empty: process.empty,
        image_start: image.start,
        image_end: image.end,
    }
}

/// `BootInfo` is `#[repr(C)]` and all `u64`s: its bytes are these words,
/// in field order (pinned below, so a change to the struct fails here).
const BOOT_INFO_WORDS: usize = 9 + MAX_BOOT_UNTYPED + 4;
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BootInfo>() == BOOT_INFO_WORDS * 8);
    assert!(offset_of!(BootInfo, root_cnode_radix) == 4 * 8);
    assert!(offset_of!(BootInfo, empty) == 5 * 8);
    assert!(offset_of!(BootInfo, untyped) == 7 * 8);
    assert!(offset_of!(BootInfo, untyped_bytes) == 9 * 8);
    assert!(offset_of!(BootInfo, image_start) == (9 + MAX_BOOT_UNTYPED) * 8);
    assert!(offset_of!(BootInfo, mappings) == (11 + MAX_BOOT_UNTYPED) * 8);
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
    words[9 + MAX_BOOT_UNTYPED..].copy_from_slice(&[
        info.image_start,
        info.image_end,
        info.mappings.start,
        info.mappings.end,
    ]);
    let mut bytes = [0u8; BOOT_INFO_WORDS * 8];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}
