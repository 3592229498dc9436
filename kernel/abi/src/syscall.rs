//! System call numbers and the register convention.
//!
//! A user thread enters the kernel with `syscall`:
//!
//! | register | on entry | on return |
//! |---|---|---|
//! | `rax` | the [`Syscall`] number | the reply's [`MessageInfo`](crate::MessageInfo) word |
//! | `rdi` | the capability pointer ([`CPtr`](crate::CPtr)) | the sender's badge (`Recv`, `NBRecv`, `ReplyRecv`) |
//! | `rsi` | the [`MessageInfo`](crate::MessageInfo) word | preserved |
//! | `rdx`, `r10`, `r8`, `r9` | message registers MR0..MR3 | MR0..MR3 of the reply |
//! | `rcx`, `r11` | clobbered (`syscall` saves `rip` and `rflags` there) | clobbered |
//!
//! `r10` stands in for `rcx`, which `syscall` overwrites. Message words past
//! MR3 (up to [`MSG_MAX_LENGTH`](crate::MSG_MAX_LENGTH)) travel in the
//! [`IpcBuffer`](crate::IpcBuffer), whose `msg[n]` is MRn; so do extra
//! caps. Every other register is preserved.
//!
//! The invocation of a kernel object (a `Call` on a capability that is not
//! an endpoint) takes its [`InvocationLabel`](crate::InvocationLabel) as
//! the message label. Its reply has label 0 for success; any other label
//! is an [`Error`](crate::Error) code, with the error's words in MR0..MR3
//! (see [`error`](crate::error)).
//!
//! The numbers are seL4's order made positive (0 is no syscall, so a
//! zeroed `rax` is refused). The debug calls exist for the test programs
//! and take their argument in `rdi` rather than a capability.

numbered! {
    /// A system call, as numbered in `rax`.
    pub enum Syscall / Syscall {
        /// Send a message to `rdi` and wait for the reply. On an endpoint
        /// this is IPC with a one-shot reply right; on any other kernel
        /// object it is an invocation.
        Call = 1,
        /// Reply to the thread whose `Call` this thread last received,
        /// then wait on `rdi` as `Recv` does.
        ReplyRecv = 2,
        /// Send a message to the endpoint or notification `rdi`, waiting
        /// for a receiver if none is ready.
        Send = 3,
        /// Send as `Send`, but drop the message if no receiver is ready.
        NBSend = 4,
        /// Wait for a message or signal on endpoint or notification `rdi`.
        Recv = 5,
        /// Reply to the thread whose `Call` this thread last received.
        Reply = 6,
        /// Give up the rest of this thread's time slice.
        Yield = 7,
        /// Receive as `Recv`, but return at once if nothing is pending.
        NBRecv = 8,
        /// Test only: write the byte in `rdi` to the debug console.
        DebugPutChar = 0x100,
        /// Test only: end the whole run with the status in `rdi`.
        DebugExit = 0x101,
        /// Test only: the kernel logs a summary of its capability state
        /// and returns MR0 = caps, MR1 = objects alive, MR2 = derivation
        /// tree edges, MR3 = Untyped budget bytes not yet charged.
        DebugSummary = 0x102,
        /// Test only: for the frame cap `rdi`, MR0 = the frame's physical
        /// address and MR1 = 1 if the kernel's direct map translates it,
        /// 0 if not (a secret frame). Not a frame cap:
        /// `InvalidCapability { index: 0 }`.
        DebugFrameInfo = 0x103,
    }
}

impl Syscall {
    /// True for the calls that exist for tests only.
    pub const fn is_debug(self) -> bool {
        matches!(
            self,
            Syscall::DebugPutChar
                | Syscall::DebugExit
                | Syscall::DebugSummary
                | Syscall::DebugFrameInfo
        )
    }
}

use crate::DecodeError;
