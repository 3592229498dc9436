//! The IDT and the exception entry path.
//!
//! Each of the 32 architectural vectors has a small assembly stub that
//! pushes a uniform [`TrapFrame`] (a zero error code where the CPU pushes
//! none) and calls [`exception_dispatch`]. Vectors 32-255 share one
//! block of fixed-size stubs that push their vector the same way; no device
//! interrupt is routed yet, so any of them arriving is reported as an
//! unexpected interrupt naming its vector. #DF, NMI, #MC, #PF and #GP run on their own
//! IST stacks (see [`super::gdt`]), so a bad kernel stack still gets a
//! report. An IST stack restarts at its top on every entry: a #PF or #GP
//! raised while handling the same vector would overwrite the frame in use.
//! That is harmless while both are fatal; a recoverable #PF (fault policies
//! other than `panic`, user faults) must move off the IST or switch stacks
//! before anything can fault again.
//!
//! Breakpoints (#BP) return; protection-key page faults and the #DB of a
//! `soft` retry go to [`crate::pkfault`], which may resume them; a page
//! fault at a probe that survives any fault resumes there (see
//! [`super::recovery`]); every other exception is fatal for now and ends in
//! [`crate::fatal::exception`].

use super::gdt::{IstSlot, KERNEL_CODE};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use x86::Ring;
use x86::bits64::segmentation::Descriptor64;
use x86::dtables::{DescriptorTablePointer, lidt};
use x86::segmentation::{BuildDescriptor, DescriptorBuilder, GateDescriptorBuilder};

/// Registers saved on exception entry, lowest address first. The stubs in
/// the assembly below push them in exactly the reverse order.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Pushed by the stub.
    pub vector: u64,
    /// Pushed by the CPU, or zero by the stub.
    pub error_code: u64,
    // Pushed by the CPU:
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The common stub's stack alignment depends on this size (16-byte aligned
// at the call).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<TrapFrame>() == 22 * 8);
    assert!(offset_of!(TrapFrame, r15) == 0);
    assert!(offset_of!(TrapFrame, rax) == 14 * 8);
    assert!(offset_of!(TrapFrame, vector) == 15 * 8);
    assert!(offset_of!(TrapFrame, error_code) == 16 * 8);
    assert!(offset_of!(TrapFrame, rip) == 17 * 8);
    assert!(offset_of!(TrapFrame, ss) == 21 * 8);
};

/// Exception names by vector, for reports.
pub fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point error"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        32..=255 => ("INTR", "unexpected interrupt"),
        _ => ("#??", "reserved vector"),
    }
}

/// One entry stub per vector, and the table of their addresses, from one
/// list: `vector error_code` where the CPU pushes an error code and
/// `vector no_error_code` where the stub pushes a zero in its place, so
/// every frame has the same layout. Table index equals vector by
/// construction (the list is in vector order, checked in `init`).
macro_rules! exception_stubs {
    ($($vector:literal $kind:ident),* $(,)?) => {
        core::arch::global_asm!(
            $(
                concat!(".section .text.exception_stub_", $vector, ", \"ax\""),
                concat!("exception_stub_", $vector, ":"),
                concat!(".ifc ", stringify!($kind), ", no_error_code"),
                "push 0",
                ".endif",
                concat!("push ", $vector),
                "jmp exception_common",
            )*
            ".section .rodata.exception_stub_table, \"a\"",
            ".balign 8",
            "exception_stub_table:",
            $( concat!(".quad exception_stub_", $vector), )*
        );

        /// The vectors in the stub table, in table order.
        const STUB_VECTORS: &[u64] = &[$($vector),*];
    };
}

exception_stubs!(
    0 no_error_code, 1 no_error_code, 2 no_error_code, 3 no_error_code,
    4 no_error_code, 5 no_error_code, 6 no_error_code, 7 no_error_code,
    8 error_code, 9 no_error_code, 10 error_code, 11 error_code,
    12 error_code, 13 error_code, 14 error_code, 15 no_error_code,
    16 no_error_code, 17 error_code, 18 no_error_code, 19 no_error_code,
    20 no_error_code, 21 error_code, 22 no_error_code, 23 no_error_code,
    24 no_error_code, 25 no_error_code, 26 no_error_code, 27 no_error_code,
    28 no_error_code, 29 error_code, 30 error_code, 31 no_error_code,
);

/// Size of each stub for vectors 32-255; the IDT finds stub `v` at
/// `interrupt_stubs + (v - 32) * INTERRUPT_STUB_SIZE`.
const INTERRUPT_STUB_SIZE: u64 = 16;

core::arch::global_asm!(
    ".section .text.interrupt_stubs, \"ax\"",
    ".balign {stub_size}",
    "interrupt_stubs:",
    ".set interrupt_vector, 32",
    ".rept 224",
    "push 0",
    "push interrupt_vector",
    "jmp exception_common",
    ".balign {stub_size}, 0xcc",
    ".set interrupt_vector, interrupt_vector + 1",
    ".endr",
    "interrupt_stubs_end:",
    stub_size = const INTERRUPT_STUB_SIZE,
);

core::arch::global_asm!(
    ".section .text.exception_common, \"ax\"",
    "exception_common:",
    // From ring 3 (the saved CS's RPL): take the kernel's GS.
    "test qword ptr [rsp + 24], 3",
    "jz 1f",
    "swapgs",
    "1:",
    push_gprs!(),
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    pop_gprs!(),
    "add rsp, 16", // vector and error code
    // Back to ring 3: give the user its GS again.
    "test qword ptr [rsp + 8], 3",
    "jz 2f",
    "swapgs",
    "2:",
    "iretq",
    dispatch = sym exception_dispatch,
);

unsafe extern "C" {
    static exception_stub_table: [u64; 32];
    static interrupt_stubs: u8;
    static interrupt_stubs_end: u8;
}

/// The IDT, alone on its page in `.ro_after_init`: the kernel maps it
/// read-only once boot is done (`memory::image`).
#[repr(C, align(4096))]
struct Idt(UnsafeCell<[Descriptor64; 256]>);

// SAFETY: written once by `init` during single-threaded boot, then only
// read by the CPU.
unsafe impl Sync for Idt {}

#[unsafe(link_section = ".ro_after_init")]
static IDT: Idt = Idt(UnsafeCell::new([Descriptor64::NULL; 256]));

/// The IDT's address, for the tests that check it is read-only.
pub fn table_address() -> u64 {
    IDT.0.get() as u64
}

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Interrupts each CPU took while running user code (and returned to it).
static USER_INTERRUPTS: [AtomicU64; super::percpu::MAX_CPUS] =
    [const { AtomicU64::new(0) }; super::percpu::MAX_CPUS];

/// Interrupts CPU `cpu` took in ring 3 so far.
pub fn user_interrupts(cpu: usize) -> u64 {
    USER_INTERRUPTS
        .get(cpu)
        .map_or(0, |count| count.load(Ordering::Relaxed))
}

/// Number of #BP exceptions handled (and returned from).
pub fn breakpoints() -> u64 {
    BREAKPOINTS.load(Ordering::Relaxed)
}

fn ist_for(vector: u8) -> Option<IstSlot> {
    match vector {
        2 => Some(IstSlot::Nmi),
        8 => Some(IstSlot::DoubleFault),
        13 => Some(IstSlot::GeneralProtection),
        14 => Some(IstSlot::PageFault),
        18 => Some(IstSlot::MachineCheck),
        _ => None,
    }
}

/// Builds and loads the IDT on the boot CPU.
///
/// # Safety
/// Call once, during single-threaded boot, after [`super::gdt::init`]
/// (the gates name its code selector and IST slots).
pub unsafe fn init() {
    // SAFETY: the table is defined by the assembly above with 32 entries.
    let stubs = unsafe { &exception_stub_table };
    assert!(
        STUB_VECTORS.iter().copied().eq(0..32),
        "exception stubs are listed in vector order"
    );
    let first_interrupt_stub = (&raw const interrupt_stubs) as u64;
    assert!(
        (&raw const interrupt_stubs_end) as u64 - first_interrupt_stub == 224 * INTERRUPT_STUB_SIZE,
        "every interrupt stub fits in INTERRUPT_STUB_SIZE bytes"
    );
    let later_stubs = (0..224).map(|i| first_interrupt_stub + i * INTERRUPT_STUB_SIZE);
    let idt = IDT.0.get();
    for (vector, stub) in stubs.iter().copied().chain(later_stubs).enumerate() {
        let mut gate = DescriptorBuilder::interrupt_descriptor(KERNEL_CODE, stub)
            .present()
            .dpl(Ring::Ring0);
        if let Some(slot) = ist_for(vector as u8) {
            gate = gate.ist(slot as u8);
        }
        // SAFETY: called once during single-threaded boot (caller's
        // contract); the IDT is not loaded yet.
        unsafe { (*idt)[vector] = gate.finish() };
    }
    // SAFETY: the IDT is fully built (256 gates), 'static, and its gates
    // point at the stubs above with the kernel code selector.
    unsafe { lidt(&DescriptorTablePointer::new(&*idt)) };
}

/// Loads the IDT [`init`] built on this CPU (an AP: every CPU shares the
/// one read-only table).
///
/// # Safety
/// Call on an AP after [`init`] ran on the boot CPU, once its GDT and TSS
/// (whose IST stacks the gates name) are loaded.
pub unsafe fn load_on_ap() {
    let idt = IDT.0.get();
    // SAFETY: `init` built all 256 gates (caller's contract); the table is
    // 'static and only read from now on.
    unsafe { lidt(&DescriptorTablePointer::new(&*idt)) };
}

/// PKRS as the last #BP handler saw it (raw register, 0 without PKS).
static PKRS_AT_BREAKPOINT: AtomicU64 = AtomicU64::new(u64::MAX);

/// CR0 as the last #BP handler saw it.
static CR0_AT_BREAKPOINT: AtomicU64 = AtomicU64::new(0);

/// The CR0 value the last #BP handler ran with.
pub fn cr0_at_last_breakpoint() -> u64 {
    CR0_AT_BREAKPOINT.load(Ordering::Relaxed)
}

/// The PKRS value the last #BP handler ran with, if PKS is on.
pub fn pkrs_at_last_breakpoint() -> Option<pkeys::Pkrs> {
    match PKRS_AT_BREAKPOINT.load(Ordering::Relaxed) {
        u64::MAX => None,
        raw => Some(pkeys::Pkrs::from_bits(raw as u32)),
    }
}

/// Called by `exception_common` with the saved frame. Checks the
/// protection registers, switches to the default protection state for the
/// handler (a window the interrupted code had open never leaks into it),
/// and checks and restores the interrupted state after.
extern "C" fn exception_dispatch(frame: &mut TrapFrame) {
    let protection = super::pks::current();
    // Checks the registers (a mismatch is reported as an attack) before
    // anything else runs.
    let mut saved = protection.map(|p| p.enter_exception());
    if frame.cs & 3 == 3 && frame.vector < 32 {
        // A user thread's exception stops that thread, not the kernel.
        if let (Some(protection), Some(saved)) = (protection, saved) {
            protection.exit_exception(saved);
        }
        let address = if frame.vector == 14 {
            super::cpu::read_cr2()
        } else {
            0
        };
        super::usermode::stop_on_fault(frame.vector, frame.error_code, frame.rip, address);
    }
    let handled = match frame.vector {
        1 => crate::pkfault::single_step(frame, saved.as_mut()),
        3 => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            let pkrs = super::cpu::read_pkrs_if_enabled().unwrap_or(u64::MAX);
            PKRS_AT_BREAKPOINT.store(pkrs, Ordering::Relaxed);
            CR0_AT_BREAKPOINT.store(super::cpu::read_cr0(), Ordering::Relaxed);
            true
        }
        14 => {
            crate::pkfault::page_fault(frame, saved.as_mut())
                || match super::recovery::any_fault_recovery_point(frame.rip, frame.error_code) {
                    Some(resume) => {
                        frame.rip = resume;
                        true
                    }
                    None => false,
                }
        }
        v if v == u64::from(super::apic::IPI_VECTOR) => {
            // A shootdown round, or the wake-up of a parked CPU (its work
            // is taken after `hlt`).
            if frame.cs & 3 == 3 {
                USER_INTERRUPTS[super::percpu::index()].fetch_add(1, Ordering::Relaxed);
            }
            super::apic::eoi();
            let _ = crate::memory::tlb::answer_shootdown();
            true
        }
        _ => false,
    };
    if !handled {
        crate::fatal::exception(frame, saved.map(|s| s.pkrs()));
    }
    if let (Some(protection), Some(saved)) = (protection, saved) {
        protection.exit_exception(saved);
    }
}

crate::kernel_test! {
    /// An exception that returns: the stub, frame and iretq path all work.
    fn breakpoint_returns() -> TestResult {
        let before = breakpoints();
        // SAFETY: int3 traps to the #BP handler, which counts and returns.
        unsafe { core::arch::asm!("int3") };
        crate::check_eq!(breakpoints(), before + 1);
        Ok(())
    }
}

crate::kernel_test! {
    /// Loads an empty IDT and traps: #BP, #GP and #DF all find no gate, so
    /// the CPU triple-faults. Checks that the host counts that as failure.
    by_name fn deliberate_triple_fault() -> TestResult {
        let empty: DescriptorTablePointer<Descriptor64> =
            DescriptorTablePointer { limit: 0, base: core::ptr::null() };
        // SAFETY: not safe, on purpose: with no IDT the int3 escalates to a
        // triple fault, which resets (and with -no-reboot ends) the machine.
        unsafe {
            lidt(&empty);
            core::arch::asm!("int3");
        }
        crate::check!(false, "the machine survived an empty IDT");
        Ok(())
    }
}

crate::kernel_test! {
    /// Raises a vector nothing handles yet: the report names the vector.
    by_name fn deliberate_unhandled_vector() -> TestResult {
        // SAFETY: not safe, on purpose: nothing handles vector 64 yet, so
        // the report ends the machine.
        unsafe { core::arch::asm!("int 64") };
        crate::check!(false, "int 64 returned");
        Ok(())
    }
}
