//! System calls: what a user thread's SYSCALL asks, decoded and then
//! performed (`arch::usermode` brings the thread's registers here).
//!
//! The register convention is `abi`'s: the number in rax, the capability
//! pointer in rdi, the message-info word in rsi, MR0..MR3 in rdx, r10, r8
//! and r9; the reply's message-info word comes back in rax (label 0:
//! success, else the error code) with its words in the same registers.
//!
//! What runs today: the debug calls tests use (`DebugPutChar`,
//! `DebugExit`). Every other number, known or not, is refused with
//! `IllegalOperation` and the thread goes on: capabilities and objects
//! come next (issue 13), IPC and scheduling after (part 2).

use crate::arch::usermode::{Action, UserContext};
use abi::{Error, Syscall};

/// Installs [`handle`] as the kernel's syscall handler.
pub fn init() {
    crate::arch::usermode::set_handler(handle);
}

/// Decodes and performs the syscall in `context`.
fn handle(context: &mut UserContext) -> Action {
    match Syscall::try_from(context.rax) {
        Ok(Syscall::DebugPutChar) => {
            crate::console::put_byte(context.rdi as u8);
            reply_ok(context);
            Action::Resume
        }
        Ok(Syscall::DebugExit) => Action::Stop(context.rdi),
        Ok(_) | Err(_) => {
            reply_error(context, Error::IllegalOperation);
            Action::Resume
        }
    }
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
