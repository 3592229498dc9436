//! `Call` on a kernel object: read the message, look the caps up, and
//! hand the invocation to the object's kind.
//!
//! The message: MR0..MR3 come in registers; words past them and the
//! extra caps' CPtrs come from the thread's IPC buffer, read through the
//! frame the thread's TCB holds (the ephemeral slot), never through a
//! user pointer. A message that needs the buffer from a thread without
//! one is `TruncatedMessage`.
//!
//! Errors before the invocation proper: a label that is no invocation, or
//! one the object's type has not, is `IllegalOperation`; an invoked CPtr
//! that names no cap (or an empty slot) is `InvalidCapability { index: 0 }`; an extra cap's
//! failed lookup is `FailedLookup`. TCB invocations come with the
//! scheduler (part 2): `IllegalOperation` until then.

use super::{Objects, TCB_CSPACE, TCB_IPC_BUFFER, bad_cap, retype, vspace};
use crate::memory::ephemeral;
use abi::{CPtr, Depth, Error, InvocationLabel, InvocationTarget, IpcBuffer, MessageInfo};
use cspace::{CNodeOp, Cap, ObjectId, SlotRef};

/// Message words an invocation reads at most (retype's seven, rounded).
const ARGS: usize = 8;
/// Extra caps an invocation reads at most.
const EXTRA: usize = abi::MSG_MAX_EXTRA_CAPS;

/// A reply: its words (MR0..), or an error.
pub type Reply = Result<heapless::Vec<u64, 4>, Error>;

/// What a `Call` came to.
pub struct Outcome {
    /// What to reply.
    pub reply: Reply,
    /// False if the invocation destroyed the calling thread's TCB: it
    /// cannot go on.
    pub thread_lives: bool,
}

/// Performs the invocation `cptr` names, with the message-info word
/// `info` and MR0..MR3 `registers`, for the thread this CPU runs.
pub fn call(cptr: u64, info: u64, registers: [u64; 4]) -> Outcome {
    super::with_objects(|objects| call_locked(objects, cptr, info, registers)).unwrap_or(Outcome {
        reply: Err(Error::IllegalOperation),
        thread_lives: true,
    })
}

fn call_locked(objects: &mut Objects, cptr: u64, info: u64, registers: [u64; 4]) -> Outcome {
    let Some(thread) = objects.current(crate::arch::percpu::index()) else {
        return Outcome {
            reply: Err(Error::IllegalOperation),
            thread_lives: true,
        };
    };
    let reply = invoke(objects, thread, cptr, info, registers);
    let thread_lives = objects.caps.is_live(thread);
    if !thread_lives {
        objects.set_current(None);
    }
    Outcome {
        reply,
        thread_lives,
    }
}

fn invoke(
    objects: &mut Objects,
    thread: ObjectId,
    cptr: u64,
    info: u64,
    registers: [u64; 4],
) -> Reply {
    let info = MessageInfo::from_word(info).map_err(|_| Error::IllegalOperation)?;
    let label = InvocationLabel::try_from(info.label()).map_err(|_| Error::IllegalOperation)?;
    let root = objects
        .caps
        .cap(SlotRef::new(thread, TCB_CSPACE))
        .unwrap_or_default();
    let (at, cap) = objects
        .caps
        .lookup(&root, CPtr(cptr))
        // An empty slot is a lookup failure too.
        .map_err(|_| bad_cap(0))?;
    if !cap.object_type().is_some_and(|ty| label.applies_to(ty)) {
        return Err(Error::IllegalOperation);
    }
    let length = (info.length() as usize).min(ARGS);
    let extra_count = (info.extra_caps() as usize).min(EXTRA);
    let mut args = [0u64; ARGS];
    args[..4].copy_from_slice(&registers);
    let mut cptrs = [0u64; EXTRA];
    if length > 4 || extra_count > 0 {
        read_buffer(
            objects,
            thread,
            &mut args[4..length.max(4)],
            &mut cptrs[..extra_count],
        )?;
    }
    let mut extra = [Cap::Null; EXTRA];
    for (cap, &cptr) in extra.iter_mut().zip(&cptrs[..extra_count]) {
        // As the invoked cap: resolution stops at a slot that holds no
        // CNode cap; an empty slot gives the null cap, which the
        // invocation refuses as the wrong kind of cap.
        let (at, _) = objects
            .caps
            .resolve_partial(&root, CPtr(cptr), Depth::WORD)
            .map_err(|failure| Error::FailedLookup {
                source: false,
                failure,
            })?;
        *cap = objects.caps.cap(at).unwrap_or_default();
    }
    let (args, extra) = (&args[..length], &extra[..extra_count]);
    let none = heapless::Vec::new();
    match label.target() {
        InvocationTarget::Untyped => retype::retype(objects, at, args, extra).map(|()| none),
        InvocationTarget::CNode => {
            let op = CNodeOp::decode(label, args, extra)?;
            let (caps, mut finaliser) = objects.split();
            caps.invoke_cnode(&cap, op, &mut finaliser).map(|()| none)
        }
        InvocationTarget::Tcb => Err(Error::IllegalOperation),
        InvocationTarget::Frame => vspace::invoke_frame(objects, at, cap, label, args, extra),
        InvocationTarget::PagingStructure => {
            vspace::invoke_table(objects, at, cap, label, args, extra).map(|()| none)
        }
    }
}

/// Reads message words MR4.. into `words` and the extra caps' CPtrs into
/// `cptrs` from the thread's IPC buffer.
fn read_buffer(
    objects: &Objects,
    thread: ObjectId,
    words: &mut [u64],
    cptrs: &mut [u64],
) -> Result<(), Error> {
    let Some(super::Body::Tcb(state)) = objects.body(thread) else {
        panic!("the current thread {thread:?} has no TCB");
    };
    let address = state[0].ipc_buffer;
    let frame_cap = objects
        .caps
        .cap(SlotRef::new(thread, TCB_IPC_BUFFER))
        .unwrap_or_default();
    let (Cap::Frame { id, .. }, true) = (frame_cap, address != 0) else {
        return Err(Error::TruncatedMessage);
    };
    let Some(super::Body::Frame(frame)) = objects.body(id) else {
        panic!("an IPC buffer cap names an object that is no frame");
    };
    let span = 4096u64 << frame.order();
    let base = address % span;
    // One copy per field: each maps the ephemeral slot once.
    let read = |field: usize, out: &mut [u64]| {
        let mut bytes = [0u8; 8 * ARGS];
        let bytes = &mut bytes[..8 * out.len()];
        ephemeral::copy_from(frame, base + field as u64, bytes).ok_or(Error::TruncatedMessage)?;
        for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Ok::<(), Error>(())
    };
    read(core::mem::offset_of!(IpcBuffer, msg) + 4 * 8, words)?;
    read(core::mem::offset_of!(IpcBuffer, caps_or_badges), cptrs)
}
