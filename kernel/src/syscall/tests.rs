//! Ring 3, end to end: small position-independent user programs, kept as
//! bytes in the image, copied into a user frame of a fresh address space
//! and run on this CPU (`arch::usermode::run`) until they stop.

use crate::arch::usermode::{self, Stop, UserContext};
use crate::memory::frames::{self, Frame};
use crate::memory::paging::{AddressSpace, MapFlags, PageSize, load_kernel_root};
use crate::testing::TestFailure;

/// Where the programs' code and stack are mapped.
const CODE: u64 = 0x40_0000;
const STACK: u64 = 0x80_0000;

core::arch::global_asm!(
    ".section .rodata.user_programs, \"a\"",
    // Prints "user ok" and a newline, then exits with status 42.
    "user_hello:",
    "lea rsi, [rip + 2f]",
    "1:",
    "movzx edi, byte ptr [rsi]",
    "test edi, edi",
    "jz 3f",
    "mov eax, {put_char}",
    "push rsi",
    "syscall",
    "pop rsi",
    "inc rsi",
    "jmp 1b",
    "3:",
    "mov eax, {exit}",
    "mov edi, 42",
    "syscall",
    "ud2",
    "2:",
    ".asciz \"user ok\\n\"",
    "user_hello_end:",
    // Asks for a syscall number nobody has, then exits with the reply's
    // message-info word as its status.
    "user_unknown_syscall:",
    "mov eax, 0x7777",
    "syscall",
    "mov rdi, rax",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "user_unknown_syscall_end:",
    // Writes the word at the address in rbx (a kernel address).
    "user_write_rbx:",
    "mov qword ptr [rbx], rax",
    "mov eax, {exit}",
    "xor edi, edi",
    "syscall",
    "ud2",
    "user_write_rbx_end:",
    // Tries to open every key: WRMSR to PKRS (0x6e1) from ring 3.
    "user_wrmsr_pkrs:",
    "mov ecx, 0x6e1",
    "xor eax, eax",
    "xor edx, edx",
    "wrmsr",
    "mov eax, {exit}",
    "xor edi, edi",
    "syscall",
    "ud2",
    "user_wrmsr_pkrs_end:",
    put_char = const 0x100,
    exit = const 0x101,
);

unsafe extern "C" {
    static user_hello: u8;
    static user_hello_end: u8;
    static user_unknown_syscall: u8;
    static user_unknown_syscall_end: u8;
    static user_write_rbx: u8;
    static user_write_rbx_end: u8;
    static user_wrmsr_pkrs: u8;
    static user_wrmsr_pkrs_end: u8;
}

/// The bytes between two labels of the programs above.
fn program(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: both labels bound one program in the image's rodata, start
    // before end; the bytes live for the kernel's life.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

fn user_frame() -> Result<Frame, TestFailure> {
    frames::alloc_frame(0, ptalloc::Freetype::KERNEL, true).map_err(|e| TestFailure::because(&e))
}

/// Runs `code` in a fresh user space with `set_up` applied to its
/// initial context, on this CPU; returns how it stopped and its context.
fn run_program(
    code: &[u8],
    set_up: impl FnOnce(&mut UserContext),
) -> Result<(Stop, UserContext), TestFailure> {
    let space = AddressSpace::new().map_err(|e| TestFailure::because(&e))?;
    let mut text = user_frame()?;
    crate::memory::ephemeral::copy_to(&mut text, 0, code)
        .ok_or_else(|| TestFailure::because(&"copy"))?;
    let rx = MapFlags {
        writable: false,
        executable: true,
    };
    let rw = MapFlags {
        writable: true,
        executable: false,
    };
    space
        .map(CODE, text, rx)
        .map_err(|e| TestFailure::because(&e.error))?;
    space
        .map(STACK, user_frame()?, rw)
        .map_err(|e| TestFailure::because(&e.error))?;
    let mut context = UserContext::new(CODE, STACK + 4096);
    set_up(&mut context);
    space.load();
    let stop = usermode::run(&mut context);
    load_kernel_root();
    drop(space.unmap(CODE, PageSize::Small));
    Ok((stop, context))
}

crate::kernel_test! {
    /// A ring-3 program prints through `DebugPutChar` (each call a SYSCALL
    /// and a SYSRET back; the bytes captured here, not printed) and stops
    /// with `DebugExit`'s status; the protection registers hold their
    /// defaults afterwards.
    fn a_user_thread_prints_and_exits() -> TestResult {
        // SAFETY: labels of the program above.
        let code = program(unsafe { &user_hello }, unsafe { &user_hello_end });
        let (run, printed) = crate::console::capture_user_output(|| run_program(code, |_| ()));
        let (stop, _) = run?;
        crate::check_eq!(stop, Stop::Exited(42));
        crate::check_eq!(printed.as_slice(), b"user ok\n");
        if let Some(protection) = crate::arch::pks::current() {
            crate::check!(protection.check().is_ok(), "registers off their defaults after user mode");
        }
        Ok(())
    }
}

crate::kernel_test! {
    /// An unknown syscall number is refused with `IllegalOperation` in the
    /// reply word, and the thread goes on.
    fn an_unknown_syscall_is_refused_and_the_thread_goes_on() -> TestResult {
        // SAFETY: labels of the program above.
        let code = program(unsafe { &user_unknown_syscall }, unsafe { &user_unknown_syscall_end });
        let (stop, _) = run_program(code, |_| ())?;
        let expected = abi::Error::IllegalOperation.encode().info().word();
        crate::check_eq!(stop, Stop::Exited(expected));
        Ok(())
    }
}

crate::kernel_test! {
    /// A user write to kernel memory (a page-table page, through the
    /// direct map) page-faults in ring 3: the thread stops with #PF and
    /// a user-mode error code, the page is unchanged, the kernel goes on.
    /// The U/S bit stops it under every policy, keys or not.
    fn a_user_write_to_a_page_table_stops_the_thread() -> TestResult {
        // SAFETY: labels of the program above.
        let code = program(unsafe { &user_write_rbx }, unsafe { &user_write_rbx_end });
        let target = crate::memory::direct_map::DIRECT_MAP_BASE + crate::memory::kernel_root();
        // SAFETY: the kernel root, mapped by the direct map, read only.
        let before = unsafe { (target as *const u64).read_volatile() };
        let (stop, _) = run_program(code, |context| {
            context.rbx = target;
            context.rax = 0x1000 | 0x7;
        })?;
        // SAFETY: as above.
        let after = unsafe { (target as *const u64).read_volatile() };
        crate::check_eq!(after, before);
        match stop {
            Stop::Fault { vector: 14, error_code, rip, address } => {
                // Present, write, user.
                crate::check_eq!(error_code & 0x7, 0x7);
                crate::check_eq!(address, target);
                crate::check_eq!(rip, CODE);
            }
            other => crate::check!(false, "expected a user #PF, got {:?}", other),
        }
        Ok(())
    }
}

crate::kernel_test! {
    /// Ring 3 cannot switch the protection off: WRMSR to PKRS raises #GP
    /// in the thread, which stops; the register keeps its default.
    fn a_user_wrmsr_to_pkrs_stops_the_thread() -> TestResult {
        // SAFETY: labels of the program above.
        let code = program(unsafe { &user_wrmsr_pkrs }, unsafe { &user_wrmsr_pkrs_end });
        let (stop, _) = run_program(code, |_| ())?;
        crate::check!(matches!(stop, Stop::Fault { vector: 13, rip: CODE_WRMSR, .. }), "got {:?}", stop);
        if let Some(protection) = crate::arch::pks::current() {
            crate::check!(protection.check().is_ok(), "PKRS changed");
        }
        Ok(())
    }
}

/// The WRMSR's address in `user_wrmsr_pkrs` (after two 5- and 2-byte
/// moves and a 2-byte xor).
const CODE_WRMSR: u64 = CODE + 5 + 2 + 2;

core::arch::global_asm!(
    ".section .rodata.user_programs, \"a\"",
    // Spins until the word at rbx is non-zero, then exits with it.
    "user_wait_flag:",
    "1:",
    "pause",
    "mov rax, qword ptr [rbx]",
    "test rax, rax",
    "jz 1b",
    "mov rdi, rax",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    "user_wait_flag_end:",
    exit = const 0x101,
);

unsafe extern "C" {
    static user_wait_flag: u8;
    static user_wait_flag_end: u8;
}

/// The user space CPU 1 runs `user_wait_flag` in.
static WAITING_SPACE: spin::Mutex<Option<AddressSpace>> = spin::Mutex::new(None);
/// Set by CPU 1 just before it enters ring 3.
static ENTERING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// How CPU 1's thread stopped: 0 not yet, else its exit status + 1 (a
/// fault: u64::MAX).
static WAIT_RESULT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The flag's user address: the first word of the stack page.
const FLAG: u64 = STACK;

/// Runs on CPU 1: enters the waiting program, then leaves the space.
fn wait_in_user_mode() {
    use core::sync::atomic::Ordering;
    let loaded = WAITING_SPACE
        .lock()
        .as_ref()
        .map(|space| space.load())
        .is_some();
    if !loaded {
        return;
    }
    let mut context = UserContext::new(CODE, STACK + 4096);
    context.rbx = FLAG;
    ENTERING.store(true, Ordering::Release);
    let stop = usermode::run(&mut context);
    load_kernel_root();
    let result = match stop {
        Stop::Exited(status) => status + 1,
        _ => u64::MAX,
    };
    WAIT_RESULT.store(result, Ordering::Release);
}

crate::kernel_test! {
    /// A shootdown reaches a CPU that runs user code: CPU 1 spins in ring
    /// 3 (interrupts on) on a word of its stack page while CPU 0 converts
    /// a pageblock; the round's IPI lands in user mode (GS swapped in and
    /// back out), CPU 1 acknowledges and its thread resumes, and once CPU
    /// 0 sets the word through the direct map the thread exits with it.
    fn a_shootdown_reaches_a_cpu_running_user_code() -> TestResult {
        use core::sync::atomic::Ordering;
        use ptalloc::{Freetype, Mobility, Protection};
        let Some(&(other, _)) = crate::arch::smp::online_cpus().iter().find(|&&(cpu, _)| cpu != 0) else {
            return Err(TestFailure::skipped("needs a second CPU (boot with -smp 2)"));
        };
        frames::needs_free_pageblocks(1, "to convert")?;
        // Whole free pageblocks earlier tests left `Unmapped` become mapped
        // kernel memory again (taken and freed as such), so the hidden
        // block below comes from a conversion that must flush.
        let mut remapped: heapless::Vec<Frame, 64> = heapless::Vec::new();
        while let Ok(block) = frames::alloc_frame(9, ptalloc::Freetype::KERNEL, false) {
            if remapped.push(block).is_err() {
                break;
            }
        }
        drop(remapped);
        let space = AddressSpace::new().map_err(|e| TestFailure::because(&e))?;
        let mut text = user_frame()?;
        // SAFETY: labels of the program above.
        let code = program(unsafe { &user_wait_flag }, unsafe { &user_wait_flag_end });
        crate::memory::ephemeral::copy_to(&mut text, 0, code).ok_or_else(|| TestFailure::because(&"copy"))?;
        let stack = user_frame()?;
        let flag_alias = crate::memory::direct_map::DIRECT_MAP_BASE + stack.addr();
        space.map(CODE, text, MapFlags { writable: false, executable: true }).map_err(|e| TestFailure::because(&e.error))?;
        space.map(STACK, stack, MapFlags { writable: true, executable: false }).map_err(|e| TestFailure::because(&e.error))?;
        *WAITING_SPACE.lock() = Some(space);
        ENTERING.store(false, Ordering::Release);
        WAIT_RESULT.store(0, Ordering::Release);
        let interrupts_before = crate::arch::idt::user_interrupts(other);
        let rounds_before = crate::memory::tlb::shootdown_stats().rounds;
        let started = crate::arch::smp::start_on(other, wait_in_user_mode).map_err(|e| TestFailure::because(&e))?;
        // Give the thread time to reach ring 3 after it says it enters.
        while !ENTERING.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        crate::arch::apic::delay_us(2_000);
        let hidden = Freetype { mobility: Mobility::Movable, protection: Protection::Unmapped };
        // A whole pageblock of hidden memory: a conversion, and its flush.
        let block = frames::alloc_frame(9, hidden, false);
        let rounds = crate::memory::tlb::shootdown_stats().rounds - rounds_before;
        let in_user = crate::arch::idt::user_interrupts(other) - interrupts_before;
        // SAFETY: the thread's stack frame, mapped writable by the direct
        // map; the thread only reads the word.
        unsafe { (flag_alias as *mut u64).write_volatile(7) };
        let finished = crate::arch::smp::wait_for_work(other, started, 5_000);
        let space = WAITING_SPACE.lock().take();
        drop(space);
        crate::check_eq!(finished, Ok(()));
        crate::check!(block.is_ok(), "no pageblock to convert: {:?}", block.as_ref().err());
        drop(block);
        crate::check!(rounds >= 1, "the conversion sent no shootdown round");
        crate::check!(in_user >= 1, "CPU {} took no interrupt in ring 3", other);
        crate::check_eq!(WAIT_RESULT.load(Ordering::Acquire), 8, "the thread did not exit with the word (7) + 1");
        Ok(())
    }
}
