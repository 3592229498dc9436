//! The GDT and TSS, with separate interrupt stacks (IST) for the
//! exceptions that must work even when the current stack is bad.
//!
//! Layout: null, kernel code (0x08), kernel data (0x10), user data
//! (0x18), user code (0x20), TSS (0x28, two slots): the order SYSCALL and
//! SYSRET need (`arch::usermode` programs IA32_STAR from it). The boot CPU's tables live in the image (`.ro_after_init`).
//! Each AP gets its own, built here as bytes ([`ap_tables`]) that
//! `arch::smp` places in a frame mapped read-only in the kernel space,
//! with IST stacks of its own behind guard pages; [`load_ap`] loads them.

use core::cell::UnsafeCell;
use core::mem::size_of;
use x86::Ring;
use x86::bits64::segmentation::Descriptor64;
use x86::bits64::task::TaskStateSegment;
use x86::dtables::{DescriptorTablePointer, lgdt};
use x86::segmentation::{
    BuildDescriptor, CodeSegmentType, DataSegmentType, Descriptor, DescriptorBuilder,
    GateDescriptorBuilder, SegmentDescriptorBuilder, SegmentSelector,
};

/// Kernel code segment selector.
pub const KERNEL_CODE: SegmentSelector = SegmentSelector::new(1, Ring::Ring0);
/// Kernel data segment selector.
pub const KERNEL_DATA: SegmentSelector = SegmentSelector::new(2, Ring::Ring0);
/// User data segment selector (ring 3).
pub const USER_DATA: SegmentSelector = SegmentSelector::new(3, Ring::Ring3);
/// User code segment selector (ring 3, 64-bit).
pub const USER_CODE: SegmentSelector = SegmentSelector::new(4, Ring::Ring3);
const TSS_SELECTOR: SegmentSelector = SegmentSelector::new(5, Ring::Ring0);

/// Interrupt stack table slots (1-based, as the IDT gate encodes them).
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum IstSlot {
    /// Double fault: the current stack may be the cause.
    DoubleFault = 1,
    /// NMI: can arrive anywhere, including mid-stack-switch.
    Nmi = 2,
    /// Machine check: same reason as NMI.
    MachineCheck = 3,
    /// Page fault: a kernel stack overflow shows up as one.
    PageFault = 4,
    /// General protection: a corrupt RSP can raise one.
    GeneralProtection = 5,
}

const IST_STACK_SIZE: usize = 16 * 1024;
const IST_STACKS: usize = 5;

/// One IST stack above its guard page, which `memory::image` unmaps: an
/// exception handler that overflows its stack faults on the guard instead
/// of writing over the stack below (or the data below that).
#[repr(C, align(4096))]
struct IstStack {
    guard: [u8; 4096],
    stack: [u8; IST_STACK_SIZE],
}

#[repr(C)]
struct IstStacks([IstStack; IST_STACKS]);

#[repr(C, packed)]
struct Gdt {
    null: Descriptor,
    kernel_code: Descriptor,
    kernel_data: Descriptor,
    user_data: Descriptor,
    user_code: Descriptor,
    tss: Descriptor64,
}

/// The GDT, alone on its page in `.ro_after_init`: the kernel maps it
/// read-only once boot is done (`memory::image`). The CPU writes a GDT
/// only to set a descriptor's accessed bit (set here in advance) and the
/// TSS busy bit (set by `ltr`, during `init`).
#[repr(C, align(4096))]
struct GdtPage(UnsafeCell<Gdt>);

// SAFETY: written once by `init` on the boot CPU before anything else
// runs; afterwards only the CPU reads it.
unsafe impl Sync for GdtPage {}

#[unsafe(link_section = ".ro_after_init")]
static GDT: GdtPage = GdtPage(UnsafeCell::new(Gdt {
    null: Descriptor::NULL,
    kernel_code: Descriptor::NULL,
    kernel_data: Descriptor::NULL,
    user_data: Descriptor::NULL,
    user_code: Descriptor::NULL,
    tss: Descriptor64::NULL,
}));

/// The GDT's address, for the tests that check it is read-only.
pub fn table_address() -> u64 {
    GDT.0.get() as u64
}

/// The TSS, alone on its page in `.ro_after_init` like the GDT: its IST
/// pointers choose the stack a #PF, #GP or #DF frame lands on, so one
/// stray write there would steer the saved RIP. The CPU only reads it in
/// long mode. (Context switches to user mode will need RSP0 to change:
/// they will get a window of their own.)
#[repr(C, align(4096))]
struct TssPage(UnsafeCell<TaskStateSegment>);

// SAFETY: written once by `init` on the boot CPU before anything else
// runs; afterwards only the CPU reads it.
unsafe impl Sync for TssPage {}

#[unsafe(link_section = ".ro_after_init")]
static TSS: TssPage = TssPage(UnsafeCell::new(TaskStateSegment::new()));

/// The TSS's address, for the tests that check it is read-only.
pub fn tss_address() -> u64 {
    TSS.0.get() as u64
}

/// Size of each CPU's entry stack: what entries from user mode (SYSCALL,
/// and interrupts and exceptions from ring 3, through the TSS's RSP0)
/// run on.
pub const ENTRY_STACK_SIZE: usize = 16 * 1024;

/// The boot CPU's entry stack, above its guard page (unmapped by
/// `memory::image`, like the IST stacks').
#[repr(C, align(4096))]
struct EntryStack {
    guard: [u8; 4096],
    stack: [u8; ENTRY_STACK_SIZE],
}

/// The IST stacks and the entry stack; only raw pointers are ever taken
/// to them.
struct CpuTables {
    ist_stacks: UnsafeCell<IstStacks>,
    entry_stack: UnsafeCell<EntryStack>,
}

// SAFETY: written once by `init` on the boot CPU before anything else runs;
// afterwards only the CPU itself touches them.
unsafe impl Sync for CpuTables {}

static TABLES: CpuTables = CpuTables {
    ist_stacks: UnsafeCell::new(IstStacks(
        [const {
            IstStack {
                guard: [0; 4096],
                stack: [0; IST_STACK_SIZE],
            }
        }; IST_STACKS],
    )),
    entry_stack: UnsafeCell::new(EntryStack {
        guard: [0; 4096],
        stack: [0; ENTRY_STACK_SIZE],
    }),
};

/// Top of the boot CPU's entry stack.
pub fn boot_entry_stack_top() -> u64 {
    TABLES.entry_stack.get() as u64 + size_of::<EntryStack>() as u64
}

/// The guard pages of the boot CPU's IST stacks and of its entry stack
/// (virtual addresses in the image), for `memory::image` to unmap.
pub fn guard_pages() -> [u64; IST_STACKS + 1] {
    let stacks = TABLES.ist_stacks.get() as u64;
    core::array::from_fn(|i| match i {
        IST_STACKS => TABLES.entry_stack.get() as u64,
        i => stacks + (i * size_of::<IstStack>()) as u64,
    })
}

/// The GDT for a TSS at `tss`.
fn gdt_for(tss: u64) -> Gdt {
    let kernel_code: Descriptor =
        DescriptorBuilder::code_descriptor(0, 0, CodeSegmentType::ExecuteReadAccessed)
            .present()
            .dpl(Ring::Ring0)
            .l()
            .finish();
    let kernel_data: Descriptor =
        DescriptorBuilder::data_descriptor(0, 0, DataSegmentType::ReadWriteAccessed)
            .present()
            .dpl(Ring::Ring0)
            .finish();
    let tss_descriptor: Descriptor64 =
        <DescriptorBuilder as GateDescriptorBuilder<u64>>::tss_descriptor(
            tss,
            size_of::<TaskStateSegment>() as u64 - 1,
            true,
        )
        .present()
        .dpl(Ring::Ring0)
        .finish();
    let user_code: Descriptor =
        DescriptorBuilder::code_descriptor(0, 0, CodeSegmentType::ExecuteReadAccessed)
            .present()
            .dpl(Ring::Ring3)
            .l()
            .finish();
    let user_data: Descriptor =
        DescriptorBuilder::data_descriptor(0, 0, DataSegmentType::ReadWriteAccessed)
            .present()
            .dpl(Ring::Ring3)
            .finish();
    Gdt {
        null: Descriptor::NULL,
        kernel_code,
        kernel_data,
        user_data,
        user_code,
        tss: tss_descriptor,
    }
}

/// A TSS whose IST slot n (1-based) is `ist_tops[n - 1]` and whose RSP0
/// (the stack an interrupt from ring 3 lands on) is `entry_top`.
fn tss_for(ist_tops: [u64; IST_STACKS], entry_top: u64) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    tss.set_rsp(Ring::Ring0, entry_top);
    // No I/O bitmap: a base past the TSS limit gives ring 3 no port
    // access (base 0 would read bitmap bits from the TSS itself).
    tss.iomap_base = size_of::<TaskStateSegment>() as u16;
    for (slot, top) in ist_tops.into_iter().enumerate() {
        tss.set_ist(slot, top);
    }
    tss
}

/// Size of the GDT in bytes.
pub const GDT_BYTES: usize = size_of::<Gdt>();
/// Size of the TSS in bytes.
pub const TSS_BYTES: usize = size_of::<TaskStateSegment>();
/// IST stacks per CPU (the slots of [`IstSlot`]).
pub const IST_COUNT: usize = IST_STACKS;

/// An AP's GDT and TSS as bytes: the GDT's TSS descriptor points at
/// `tss_virt`, where the caller maps the TSS bytes; IST slot n uses the
/// stack whose top is `ist_tops[n - 1]`, and entries from ring 3 the one
/// whose top is `entry_top`.
pub fn ap_tables(
    tss_virt: u64,
    ist_tops: [u64; IST_STACKS],
    entry_top: u64,
) -> ([u8; GDT_BYTES], [u8; TSS_BYTES]) {
    let gdt = gdt_for(tss_virt);
    let tss = tss_for(ist_tops, entry_top);
    // SAFETY: both are plain-old-data `repr(C)`/`repr(packed)` structures
    // of exactly these sizes; the bytes are a copy.
    unsafe {
        (
            core::mem::transmute::<Gdt, [u8; GDT_BYTES]>(gdt),
            core::mem::transmute::<TaskStateSegment, [u8; TSS_BYTES]>(tss),
        )
    }
}

/// Loads an AP's GDT and TSS: first through `gdt_writable` (an alias the
/// CPU can write, since `ltr` sets the TSS descriptor's busy bit), then,
/// once the task register is loaded, through `gdt_read_only`, the
/// kernel-space mapping of the same bytes, which the CPU keeps using.
///
/// # Safety
/// Call once per AP, on that AP, before anything depends on its tables;
/// both addresses must map a GDT made by [`ap_tables`], whose TSS
/// descriptor names a mapped TSS, for the kernel's life.
pub unsafe fn load_ap(gdt_writable: u64, gdt_read_only: u64) {
    for base in [gdt_writable, gdt_read_only] {
        let pointer = DescriptorTablePointer {
            limit: GDT_BYTES as u16 - 1,
            base: base as *const Descriptor,
        };
        // SAFETY: the caller's contract: a valid GDT at `base`.
        unsafe { lgdt(&pointer) };
        if base == gdt_writable {
            // SAFETY: the GDT holds valid code, data and TSS descriptors
            // at these selectors; the busy bit is written through the
            // writable alias.
            unsafe {
                x86::bits64::segmentation::load_cs(KERNEL_CODE);
                x86::segmentation::load_ss(KERNEL_DATA);
                x86::segmentation::load_ds(KERNEL_DATA);
                x86::segmentation::load_es(KERNEL_DATA);
                x86::task::load_tr(TSS_SELECTOR);
            }
        }
    }
}

/// Builds and loads the GDT and TSS on the boot CPU, replacing the boot
/// stub's GDT.
///
/// # Safety
/// Call once, on the boot CPU, before anything depends on the tables: a
/// second call rewrites a GDT and TSS the CPU is using.
pub unsafe fn init() {
    let tss = TSS.0.get();
    let stacks = TABLES.ist_stacks.get() as u64;
    // Stacks grow down: slot n uses the top of the n-th stack, whose
    // guard page lies below it.
    let tops = core::array::from_fn(|i| stacks + ((i + 1) * size_of::<IstStack>()) as u64);

    // SAFETY: called once during single-threaded boot (caller's contract);
    // nothing else references the tables yet.
    unsafe {
        tss.write(tss_for(tops, boot_entry_stack_top()));
        GDT.0.get().write(gdt_for(tss as u64));
    }

    let pointer = DescriptorTablePointer::new(
        // SAFETY: the GDT is initialised above and lives forever.
        unsafe { &*GDT.0.get() },
    );
    // SAFETY: the GDT holds valid code, data and TSS descriptors at the
    // selectors loaded below, and is 'static.
    unsafe {
        lgdt(&pointer);
        x86::bits64::segmentation::load_cs(KERNEL_CODE);
        x86::segmentation::load_ss(KERNEL_DATA);
        x86::segmentation::load_ds(KERNEL_DATA);
        x86::segmentation::load_es(KERNEL_DATA);
        x86::task::load_tr(TSS_SELECTOR);
    }
}
