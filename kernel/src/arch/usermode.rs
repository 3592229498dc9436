//! User mode: SYSCALL/SYSRET, and running a user thread until it stops.
//!
//! What this module owns: the MSRs that route SYSCALL (IA32_STAR, LSTAR,
//! FMASK, EFER.SCE, KERNEL_GS_BASE), the assembly of the way in and out
//! of ring 3, and [`run`], which runs one user thread on this CPU until it
//! stops: it asks the kernel to stop it (a syscall handler returns
//! [`Action::Stop`]) or it takes an exception. An interrupt that arrives
//! in user mode (a shootdown IPI) is handled and the thread resumes.
//!
//! The stacks: [`run`] is called on a kernel stack, and saves where it
//! left in the per-CPU area (`resume_rsp`). Every entry from ring 3 runs
//! on this CPU's entry stack (SYSCALL loads it from the per-CPU area,
//! interrupts and exceptions through the TSS's RSP0 or their IST slot),
//! whose top holds the thread's [`UserContext`] while the kernel handles
//! a syscall. A stopped thread returns to [`run`]'s caller by switching
//! back to the saved stack: the event-driven model (one kernel stack per
//! CPU, nothing kept on it across a return to user mode) until the
//! scheduler of the microkernel's part 2 takes over.
//!
//! What it promises:
//! - GS: the per-CPU area in the kernel, the user's (0) in ring 3;
//!   `swapgs` on every way in from ring 3 and every way back;
//! - FMASK clears IF, DF, TF, AC and NT on entry: the kernel runs with
//!   interrupts off and SMAP enforced (AC clear) whatever the user set;
//! - the protection registers hold their defaults at every entry from and
//!   return to user mode: checked ([`pks`](super::pks)) on the way in and
//!   on the way out, never assumed;
//! - SYSRET only returns to a canonical user address: any other RIP
//!   would raise #GP in ring 0 on the user's stack (the SYSRET
//!   vulnerability), so such a thread is stopped instead;
//! - the user RFLAGS are filtered: IF on, IOPL 0, no NT, RF or VM.
//!
//! Written here because `x86` gives the MSR numbers and `swapgs`, not the
//! entry path.

use super::gdt::{KERNEL_CODE, KERNEL_DATA, USER_CODE, USER_DATA};
use super::percpu::{self, ENTRY_STACK_TOP, RESUME_RSP, USER_RSP};
use core::sync::atomic::Ordering;
use x86::msr;

/// A user thread's registers, lowest address first, as the entry path
/// pushes them (the reverse order) and the exit path pops them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
#[allow(missing_docs)]
pub struct UserContext {
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
    /// Where the thread resumes.
    pub rip: u64,
    /// Its flags (filtered on the way out).
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
}

const CONTEXT_WORDS: usize = 18;
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<UserContext>() == CONTEXT_WORDS * 8);
    assert!(offset_of!(UserContext, rax) == 14 * 8);
    assert!(offset_of!(UserContext, rip) == 15 * 8);
    assert!(offset_of!(UserContext, rsp) == 17 * 8);
};

impl UserContext {
    /// A thread that starts at `rip` with its stack at `rsp`, every other
    /// register zero.
    pub fn new(rip: u64, rsp: u64) -> Self {
        Self {
            rip,
            rsp,
            rflags: RFLAGS_IF,
            ..Self::default()
        }
    }
}

/// What a syscall handler tells the entry path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Return to the thread (with the context as the handler left it).
    Resume,
    /// Stop the thread: [`run`] returns [`Stop::Exited`] with this status.
    Stop(u64),
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A syscall handler stopped the thread (a debug exit), with a status.
    Exited(u64),
    /// The thread took an exception.
    Fault {
        /// The vector (14: page fault, 13: general protection...).
        vector: u64,
        /// The error code the CPU pushed (0 where none).
        error_code: u64,
        /// Where it happened.
        rip: u64,
        /// CR2 for a page fault (the address), else 0.
        address: u64,
    },
    /// The thread's context would return to a non-canonical or kernel
    /// address: stopped before SYSRET could fault in ring 0.
    BadReturn {
        /// The RIP it asked for.
        rip: u64,
    },
}

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_AC: u64 = 1 << 18;
/// Bit 1 of RFLAGS always reads as one.
const RFLAGS_FIXED: u64 = 1 << 1;
/// Cleared on every SYSCALL (IA32_FMASK).
const SYSCALL_MASK: u64 = RFLAGS_IF | RFLAGS_DF | RFLAGS_TF | RFLAGS_AC | RFLAGS_NT;
/// The first address past the lower canonical half: user addresses lie
/// below it.
const USER_END: u64 = 1 << 47;

// SYSCALL and SYSRET take their selectors from one base each: kernel data
// right after kernel code, user code right after user data.
const _: () = {
    assert!(KERNEL_DATA.bits() == KERNEL_CODE.bits() + 8);
    assert!(USER_CODE.bits() & !3 == (USER_DATA.bits() & !3) + 8);
};

/// Sets up this CPU for SYSCALL: the MSRs. Its entry stack is already in
/// its per-CPU area (the boot CPU's from `percpu::init_boot_cpu`, an AP's
/// from `arch::smp`).
///
/// # Safety
/// Call once per CPU, after its GDT (with the user segments, in the
/// order IA32_STAR needs) and GS are loaded, before it runs user code.
pub unsafe fn init_cpu() {
    // SYSCALL: CS = STAR[47:32], SS = that + 8. SYSRET (64-bit): SS =
    // STAR[63:48] + 8, CS = STAR[63:48] + 16, both with RPL 3; the GDT
    // puts user data at 0x18 and user code at 0x20 for this.
    let sysret_base = u64::from(USER_DATA.bits() & !3) - 8;
    let star = (sysret_base << 48) | (u64::from(KERNEL_CODE.bits()) << 32);
    // SAFETY: these MSRs exist on every x86-64 CPU; STAR names the GDT's
    // selectors (above), LSTAR the entry stub below, FMASK the flags the
    // kernel needs clear, and KERNEL_GS_BASE the user's GS (0) while the
    // kernel runs. EFER.SCE only enables SYSCALL.
    unsafe {
        msr::wrmsr(msr::IA32_STAR, star);
        msr::wrmsr(msr::IA32_LSTAR, syscall_entry as *const () as u64);
        msr::wrmsr(msr::IA32_FMASK, SYSCALL_MASK);
        msr::wrmsr(msr::IA32_KERNEL_GSBASE, 0);
        let efer = msr::rdmsr(msr::IA32_EFER);
        msr::wrmsr(msr::IA32_EFER, efer | 1);
    }
}

core::arch::global_asm!(
    ".section .text.usermode, \"ax\"",
    // SYSCALL from ring 3: RCX = user RIP, R11 = user RFLAGS, interrupts
    // off (FMASK). Switch GS and stacks, push a UserContext, and call the
    // dispatcher with it.
    ".global syscall_entry",
    "syscall_entry:",
    "swapgs",
    "mov gs:[{user_rsp}], rsp",
    "mov rsp, gs:[{entry_top}]",
    "push qword ptr gs:[{user_rsp}]", // rsp
    "push r11",                       // rflags
    "push rcx",                       // rip
    push_gprs!(),
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    // rax = 0: back to the thread; else stop it.
    "test rax, rax",
    "jnz usermode_stop",
    // The way back to ring 3: rsp points at a UserContext whose RIP is
    // canonical and RFLAGS filtered (checked in Rust before this).
    "usermode_return:",
    pop_gprs!(),
    "pop rcx", // rip
    "pop r11", // rflags
    "pop rsp",
    "swapgs",
    "sysretq",
    // A stopped thread: back on the stack `run` left from, as if
    // `enter_user` returned. rax holds the stop code already.
    ".global usermode_stop",
    "usermode_stop:",
    "mov rsp, gs:[{resume_rsp}]",
    "mov qword ptr gs:[{resume_rsp}], 0",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    // enter_user(frame): save the callee-saved registers and the stack
    // where `run` is, then return to the thread from `frame` (a
    // UserContext at the top of the entry stack).
    ".global enter_user",
    "enter_user:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov gs:[{resume_rsp}], rsp",
    "mov rsp, rdi",
    "jmp usermode_return",
    user_rsp = const USER_RSP,
    entry_top = const ENTRY_STACK_TOP,
    resume_rsp = const RESUME_RSP,
    dispatch = sym syscall_dispatch,
);

unsafe extern "C" {
    fn syscall_entry();
    /// Enters the thread whose context is at `frame` and returns the stop
    /// code once it stops (see `usermode_stop`).
    fn enter_user(frame: *mut UserContext) -> u64;
    /// Returns to `run`'s caller with `code` (never returns here).
    fn usermode_stop_with(code: u64) -> !;
}

core::arch::global_asm!(
    ".section .text.usermode, \"ax\"",
    ".global usermode_stop_with",
    "usermode_stop_with:",
    "mov rax, rdi",
    "jmp usermode_stop",
);

/// Stop codes passed back through `usermode_stop` in rax (non-zero).
const STOP_EXITED: u64 = 1;
const STOP_FAULT: u64 = 2;
const STOP_BAD_RETURN: u64 = 3;

/// How the thread stopped, for [`run`] to read after `enter_user`
/// returns (this CPU only runs one thread at a time).
#[derive(Clone, Copy)]
struct StopRecord {
    status: u64,
    fault: [u64; 4],
}

static STOPS: [spin::Mutex<StopRecord>; percpu::MAX_CPUS] = [const {
    spin::Mutex::new(StopRecord {
        status: 0,
        fault: [0; 4],
    })
}; percpu::MAX_CPUS];

/// The syscall handler the kernel installs: it reads and writes the
/// context (arguments and results in registers) and says what happens
/// next.
pub type SyscallHandler = fn(&mut UserContext) -> Action;

static HANDLER: spin::Once<SyscallHandler> = spin::Once::new();

/// Installs the syscall handler (once; later calls keep the first).
pub fn set_handler(handler: SyscallHandler) {
    HANDLER.call_once(|| handler);
}

/// The UserContext slot at the top of this CPU's entry stack.
fn entry_frame() -> *mut UserContext {
    let top = percpu::current().entry_stack_top.load(Ordering::Acquire);
    (top - core::mem::size_of::<UserContext>() as u64) as *mut UserContext
}

/// Runs the user thread `context` on this CPU, in the address space
/// loaded here, until it stops; `context` then holds its registers as
/// they were when a syscall stopped it. At a fault it is left as given:
/// the exception's frame may have overwritten the saved context (an
/// exception without an IST slot lands on the same entry stack).
/// Checks the protection registers before it enters ring 3.
pub fn run(context: &mut UserContext) -> Stop {
    let slot = percpu::current();
    if slot.entry_stack_top.load(Ordering::Acquire) == 0 {
        return Stop::BadReturn { rip: context.rip };
    }
    if let Some(stop) = check_return(context) {
        return stop;
    }
    // A return to user mode like any other: the registers must hold their
    // defaults (no window open into ring 3).
    check_registers();
    let frame = entry_frame();
    // SAFETY: the slot at the top of this CPU's entry stack, which nothing
    // uses while no user thread runs here (run is not re-entered: the
    // resume RSP is 0 outside it).
    unsafe { frame.write(*context) };
    // SAFETY: `frame` holds a context whose RIP is a canonical user
    // address and whose flags are filtered (check_return); GS and the
    // MSRs are set up (every CPU runs init_cpu before it is online), and
    // the address space loaded here maps the kernel half.
    let code = unsafe { enter_user(frame) };
    if code != STOP_FAULT {
        // SAFETY: as above; a syscall stop left the thread's last context
        // there, untouched since.
        *context = unsafe { frame.read() };
    }
    let record = *STOPS[slot.index()].lock();
    match code {
        STOP_EXITED => Stop::Exited(record.status),
        STOP_FAULT => Stop::Fault {
            vector: record.fault[0],
            error_code: record.fault[1],
            rip: record.fault[2],
            address: record.fault[3],
        },
        _ => Stop::BadReturn { rip: context.rip },
    }
}

/// Filters the flags and refuses a RIP SYSRET must not return to.
fn check_return(context: &mut UserContext) -> Option<Stop> {
    context.rflags = (context.rflags & !(RFLAGS_IOPL | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM))
        | RFLAGS_IF
        | RFLAGS_FIXED;
    (context.rip >= USER_END).then_some(Stop::BadReturn { rip: context.rip })
}

/// Checks the protection registers at a crossing between user mode and
/// the kernel: they must hold their defaults. A mismatch is an attack or
/// a kernel bug; the violation handler reports it (and stops the machine
/// under the default policy).
fn check_registers() {
    if let Some(protection) = super::pks::current() {
        protection.check_or_report();
    }
}

/// Called by `syscall_entry` on the entry stack with the thread's saved
/// context; returns 0 to resume it, else a stop code.
extern "C" fn syscall_dispatch(context: &mut UserContext) -> u64 {
    check_registers();
    let action = match HANDLER.get() {
        Some(handler) => handler(context),
        None => Action::Stop(u64::MAX),
    };
    let code = match action {
        Action::Resume => match check_return(context) {
            None => 0,
            Some(_) => STOP_BAD_RETURN,
        },
        Action::Stop(status) => {
            STOPS[percpu::index()].lock().status = status;
            STOP_EXITED
        }
    };
    check_registers();
    code
}

/// Stops the running user thread after an exception it took in ring 3
/// (called by the IDT's dispatch, with GS swapped back to the kernel's
/// and the exception's protection state closed). Never returns.
pub(super) fn stop_on_fault(vector: u64, error_code: u64, rip: u64, address: u64) -> ! {
    check_registers();
    *STOPS[percpu::index()].lock() = StopRecord {
        status: 0,
        fault: [vector, error_code, rip, address],
    };
    // SAFETY: a user thread runs on this CPU (the exception came from
    // ring 3, which only `run` enters), so its resume stack is saved.
    unsafe { usermode_stop_with(STOP_FAULT) }
}
