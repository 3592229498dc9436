//! System calls: what a user thread's SYSCALL asks, decoded and then
//! performed (`arch::usermode` brings the thread's registers here).
//!
//! The register convention is `abi`'s: the number in rax, the capability
//! pointer in rdi, the message-info word in rsi, MR0..MR3 in rdx, r10, r8
//! and r9; the reply's message-info word comes back in rax (label 0:
//! success, else the error code) with its words in the same registers.
//!
//! What runs today: `Call` on a kernel object (an invocation,
//! [`crate::object`]), and the debug calls tests use (`DebugPutChar`,
//! `DebugExit`, `DebugSummary`, `DebugFrameInfo`). Every other number, known or not, is
//! refused with `IllegalOperation` and the thread goes on: IPC and
//! scheduling come with the microkernel's part 2.

use crate::arch::usermode::{Action, UserContext};
use abi::{Error, Syscall};
use core::sync::atomic::{AtomicU64, Ordering};

/// Per CPU: syscalls handled, and the PKRS writes made while handling
/// them (what the object classes' windows cost per syscall). Per CPU so
/// that counting adds no shared cache line to the syscall path.
#[repr(align(64))]
struct SyscallCounters {
    syscalls: AtomicU64,
    pkrs_writes: AtomicU64,
}

static COUNTERS: [SyscallCounters; crate::arch::percpu::MAX_CPUS] = [const {
    SyscallCounters {
        syscalls: AtomicU64::new(0),
        pkrs_writes: AtomicU64::new(0),
    }
};
    crate::arch::percpu::MAX_CPUS];

/// Syscalls handled so far on every CPU, and the PKRS writes made while
/// handling them.
pub fn costs() -> (u64, u64) {
    COUNTERS.iter().fold((0, 0), |(calls, writes), c| {
        (
            calls + c.syscalls.load(Ordering::Relaxed),
            writes + c.pkrs_writes.load(Ordering::Relaxed),
        )
    })
}

/// Installs [`handle`] as the kernel's syscall handler.
pub fn init() {
    crate::arch::usermode::set_handler(handle);
}

/// Performs the syscall in `context`, counting it and its PKRS writes.
fn handle(context: &mut UserContext) -> Action {
    let writes = || crate::arch::pks::current().map_or(0, |p| p.pkrs_writes());
    let before = writes();
    let action = perform(context);
    let mine = &COUNTERS[crate::arch::percpu::index()];
    mine.syscalls.fetch_add(1, Ordering::Relaxed);
    mine.pkrs_writes
        .fetch_add(writes() - before, Ordering::Relaxed);
    action
}

/// Decodes and performs the syscall in `context`.
fn perform(context: &mut UserContext) -> Action {
    match Syscall::try_from(context.rax) {
        Ok(Syscall::DebugPutChar) => {
            crate::console::put_byte(context.rdi as u8);
            reply_ok(context);
            Action::Resume
        }
        Ok(Syscall::DebugExit) => Action::Stop(context.rdi),
        Ok(Syscall::Call) => {
            let registers = [context.rdx, context.r10, context.r8, context.r9];
            let outcome = crate::object::call(context.rdi, context.rsi, registers);
            match outcome.reply {
                Ok(words) => reply_words(context, &words),
                Err(error) => reply_error(context, error),
            }
            if outcome.thread_lives {
                Action::Resume
            } else {
                crate::println!("syscall: the calling thread's TCB was deleted; it stops");
                Action::Stop(THREAD_DELETED)
            }
        }
        Ok(Syscall::DebugFrameInfo) => {
            match crate::object::debug_frame_info(context.rdi) {
                Ok(words) => reply_words(context, &words),
                Err(error) => reply_error(context, error),
            }
            Action::Resume
        }
        Ok(Syscall::DebugSummary) => {
            match crate::object::debug_summary() {
                Some(words) => reply_words(context, &words),
                None => reply_error(context, Error::IllegalOperation),
            }
            Action::Resume
        }
        Ok(_) | Err(_) => {
            reply_error(context, Error::IllegalOperation);
            Action::Resume
        }
    }
}

/// The exit status of a thread whose invocation deleted its own TCB.
pub const THREAD_DELETED: u64 = 0xdead;

/// A successful reply with `words` in MR0.. (the rest zeroed).
fn reply_words(context: &mut UserContext, words: &[u64]) {
    let mut mrs = [0u64; 4];
    mrs[..words.len()].copy_from_slice(words);
    // At most four words: always a valid message-info word.
    context.rax = abi::MessageInfo::with_label(0, words.len() as u8)
        .unwrap_or(abi::MessageInfo::EMPTY)
        .word();
    [context.rdx, context.r10, context.r8, context.r9] = mrs;
}

/// A successful empty reply.
fn reply_ok(context: &mut UserContext) {
    context.rax = abi::MessageInfo::EMPTY.word();
}

/// An error reply: its code as the label, its words in MR0..MR3.
fn reply_error(context: &mut UserContext, error: Error) {
    let encoded = error.encode();
    context.rax = encoded.info().word();
    [context.rdx, context.r10, context.r8, context.r9] = encoded.words;
}

mod tests;
