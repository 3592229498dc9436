//! Per-CPU areas, reached through GS.
//!
//! Each CPU's IA32_GS_BASE holds the address of its [`PerCpu`] slot in a
//! static array of [`MAX_CPUS`]; the slot's first word is its own address,
//! so `mov rax, gs:[0]` finds it without an MSR read. The boot CPU points
//! GS at slot 0 before anything else in `kernel_boot_entry` (before its
//! first exception could ask for the CPU's protection state); an AP's
//! trampoline sets GS before it enters Rust. Nothing here loads a GS
//! selector (that would clear the base). While a CPU runs user code, its
//! GS base is the user's (0) and IA32_KERNEL_GS_BASE holds the slot:
//! every entry from ring 3 and every return to it swaps them (`swapgs`,
//! in `arch::usermode` and the exception stubs).
//!
//! Promises: [`index`] is this CPU's number (0 for the boot CPU, then in
//! the order `arch::smp` started them), stable for the CPU's life; a
//! slot's `online` flag is set once by its own CPU, after its protection
//! state is checked, and never cleared.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86::msr;

/// Most CPUs the kernel brings up; more in the MADT are reported and left
/// in wait-for-SIPI.
pub const MAX_CPUS: usize = 8;

/// One CPU's area.
#[repr(C, align(64))]
pub struct PerCpu {
    /// This slot's own address (read through `gs:[0]`).
    self_addr: AtomicU64,
    /// Top of the stack that entries from user mode run on (SYSCALL loads
    /// it from here; interrupts from ring 3 take it from the TSS's RSP0).
    pub(super) entry_stack_top: AtomicU64,
    /// The user RSP while the SYSCALL stub switches stacks.
    pub(super) user_rsp: AtomicU64,
    /// The kernel RSP `usermode::run` left from, where a stopped thread
    /// returns to (0 while no user thread runs here).
    pub(super) resume_rsp: AtomicU64,
    /// The CPU's number.
    index: u32,
    /// Its local APIC id.
    apic_id: AtomicU32,
    /// Set by the CPU once it runs with its protections checked.
    online: AtomicBool,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, self_addr) == 0);
/// Offsets the user-mode entry assembly reads through GS.
pub(super) const ENTRY_STACK_TOP: usize = 8;
pub(super) const USER_RSP: usize = 16;
pub(super) const RESUME_RSP: usize = 24;
const _: () = {
    assert!(core::mem::offset_of!(PerCpu, entry_stack_top) == ENTRY_STACK_TOP);
    assert!(core::mem::offset_of!(PerCpu, user_rsp) == USER_RSP);
    assert!(core::mem::offset_of!(PerCpu, resume_rsp) == RESUME_RSP);
};

impl PerCpu {
    const fn new(index: u32) -> Self {
        Self {
            self_addr: AtomicU64::new(0),
            entry_stack_top: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            resume_rsp: AtomicU64::new(0),
            index,
            apic_id: AtomicU32::new(u32::MAX),
            online: AtomicBool::new(false),
        }
    }

    /// The CPU's number.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Its local APIC id (`u32::MAX` before the slot is assigned).
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Acquire)
    }

    /// True once the CPU runs with its protections checked.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }
}

struct Slots([PerCpu; MAX_CPUS]);

static SLOTS: Slots = Slots([
    PerCpu::new(0),
    PerCpu::new(1),
    PerCpu::new(2),
    PerCpu::new(3),
    PerCpu::new(4),
    PerCpu::new(5),
    PerCpu::new(6),
    PerCpu::new(7),
]);

/// Slot `index`, if it exists.
pub fn slot(index: usize) -> Option<&'static PerCpu> {
    SLOTS.0.get(index)
}

/// Prepares slot `index` for the CPU with local APIC id `apic_id` and
/// returns the slot's address (the value for that CPU's IA32_GS_BASE).
///
/// Call before the CPU that will use the slot runs (a running CPU's slot
/// keeps its address: the value is the same).
pub fn assign(index: usize, apic_id: u32) -> Option<u64> {
    let slot = SLOTS.0.get(index)?;
    let addr = slot as *const PerCpu as u64;
    slot.self_addr.store(addr, Ordering::Release);
    slot.apic_id.store(apic_id, Ordering::Release);
    Some(addr)
}

/// Points this CPU's GS base at slot 0: the boot CPU, first thing.
///
/// # Safety
/// Call once, on the boot CPU, before anything calls [`current`].
pub unsafe fn init_boot_cpu() {
    let apic_id = super::cpu::current_cpu_id();
    SLOTS.0[0]
        .entry_stack_top
        .store(super::gdt::boot_entry_stack_top(), Ordering::Release);
    if let Some(addr) = assign(0, apic_id) {
        // SAFETY: IA32_GS_BASE exists on every x86-64 CPU; the slot is
        // 'static.
        unsafe { msr::wrmsr(msr::IA32_GS_BASE, addr) };
    }
}

/// This CPU's area.
pub fn current() -> &'static PerCpu {
    let addr: u64;
    // SAFETY: every CPU running kernel code has GS pointing at its slot
    // (module doc), whose first word is the slot's address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) addr, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `addr` is a slot of the static array (see above).
    unsafe { &*(addr as *const PerCpu) }
}

/// This CPU's number.
pub fn index() -> usize {
    current().index()
}

/// Marks this CPU online (its own slot only).
pub fn set_online() {
    current().online.store(true, Ordering::Release);
}
