//! The root task's runtime: the entry point, the system calls it uses,
//! `print!`/`println!` over the debug console, and the panic handler.
//!
//! Entry convention (what the kernel promises, and what `_start` assumes):
//! - `rip` is the ELF entry (`_start`), in ring 3, interrupts on;
//! - `rsp` is the top of a stack the kernel mapped (16-byte aligned, with
//!   an unmapped page below it);
//! - `rdi` is the virtual address of the read-only boot-info frame, which
//!   holds an [`abi::BootInfo`];
//! - `rsi` is the program's argument: 0 for the root task, the test's
//!   number for a process of the user test suite;
//! - every other register is zero.
//!
//! `_start` calls [`start`], which hands the boot-info address and the
//! argument to the program's `main` and ends the thread with `main`'s status through
//! `DebugExit`. Nothing here allocates: the program has no heap.

use abi::Syscall;
use core::fmt;

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    // The outermost frame: a zero frame pointer ends backtraces, and the
    // stack is realigned in case the kernel's promise ever changes.
    "xor ebp, ebp",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym start,
);

/// Called by `_start` with the boot-info address the kernel left in rdi
/// and the argument in rsi (0 for the root task; the test number for a
/// process of the user test suite).
extern "C" fn start(boot_info: u64, argument: u64) -> ! {
    let status = crate::main(boot_info, argument);
    debug_exit(status)
}

/// What the kernel answers a system call with: the reply's message-info
/// word (rax), the badge (rdi) and MR0..MR3 (rdx, r10, r8, r9).
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// The reply's message-info word: label 0 for success, else the error
    /// code.
    pub info: u64,
    /// The sender's badge (receive calls only).
    pub badge: u64,
    /// Message registers MR0..MR3.
    pub mr: [u64; 4],
}

/// One `syscall` with `abi`'s register convention: the number in rax, the
/// capability pointer in rdi, the message-info word in rsi, MR0..MR3 in
/// rdx, r10, r8 and r9. The kernel clobbers rcx and r11 (SYSCALL saves
/// rip and rflags there) and preserves every other register.
pub fn syscall(number: Syscall, cptr: u64, info: u64, mr: [u64; 4]) -> Reply {
    let (reply, badge, mr0, mr1, mr2, mr3);
    // SAFETY: SYSCALL enters the kernel, which reads and writes only the
    // registers named here (abi's convention) and returns to the next
    // instruction; it does not touch this program's stack.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") number.number() => reply,
            inlateout("rdi") cptr => badge,
            in("rsi") info,
            inlateout("rdx") mr[0] => mr0,
            inlateout("r10") mr[1] => mr1,
            inlateout("r8") mr[2] => mr2,
            inlateout("r9") mr[3] => mr3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    Reply {
        info: reply,
        badge,
        mr: [mr0, mr1, mr2, mr3],
    }
}

/// Invokes the kernel object `cptr` with `label`, message words `words`
/// and extra caps `caps` (CPtrs). Words past MR3 and the caps go through
/// `buffer`, the thread's IPC buffer. Returns MR0..MR3 of the reply, or
/// the error it encodes.
pub fn invoke(
    buffer: &mut abi::IpcBuffer,
    cptr: u64,
    label: abi::InvocationLabel,
    words: &[u64],
    caps: &[u64],
) -> Result<[u64; 4], abi::Error> {
    let length = words.len().min(abi::MSG_MAX_LENGTH);
    let extra = caps.len().min(abi::MSG_MAX_EXTRA_CAPS);
    let mut mr = [0u64; 4];
    for (n, &word) in words[..length].iter().enumerate() {
        match mr.get_mut(n) {
            Some(register) => *register = word,
            None => buffer.msg[n] = word,
        }
    }
    buffer.caps_or_badges[..extra].copy_from_slice(&caps[..extra]);
    let info = abi::MessageInfo::new(label.number(), 0, extra as u8, length as u8)
        .map_or(0, |info| info.word());
    let reply = syscall(Syscall::Call, cptr, info, mr);
    let Ok(tag) = abi::MessageInfo::from_word(reply.info) else {
        return Err(abi::Error::IllegalOperation);
    };
    if tag.label() == 0 {
        return Ok(reply.mr);
    }
    let used = &reply.mr[..(tag.length() as usize).min(4)];
    Err(abi::Error::decode(tag.label(), used).unwrap_or(abi::Error::IllegalOperation))
}

/// The kernel's object summary: caps, objects, derivation edges, budget
/// bytes left (the kernel prints it too).
pub fn debug_summary() -> [u64; 4] {
    syscall(Syscall::DebugSummary, 0, 0, [0; 4]).mr
}

/// Test only: the physical address of the frame `cptr` names, and whether
/// the kernel's direct map translates it (a secret frame: no).
pub fn debug_frame_info(cptr: u64) -> (u64, bool) {
    let reply = syscall(Syscall::DebugFrameInfo, cptr, 0, [0; 4]);
    (reply.mr[0], reply.mr[1] != 0)
}

/// Writes one byte to the kernel's debug console (COM1).
pub fn debug_put_char(byte: u8) {
    syscall(Syscall::DebugPutChar, u64::from(byte), 0, [0; 4]);
}

/// Ends the thread (and, for the root task, the run) with `status`: 0 is
/// success, anything else a failure.
pub fn debug_exit(status: u64) -> ! {
    syscall(Syscall::DebugExit, status, 0, [0; 4]);
    // The kernel never returns from DebugExit; if it ever did, stop here
    // rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

/// The debug console as a `fmt::Write`: one `DebugPutChar` per byte.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        text.bytes().for_each(debug_put_char);
        Ok(())
    }
}

/// Prints to the debug console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        // Console never fails.
        let _ = core::fmt::Write::write_fmt(&mut $crate::rt::Console, format_args!($($arg)*));
    }};
}

/// Prints a line to the debug console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// The status a panic exits with (Rust's own for a panicking process).
pub const PANIC_STATUS: u64 = 101;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("panic: {}", info);
    debug_exit(PANIC_STATUS)
}
