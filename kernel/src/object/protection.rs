//! Object protection (`protect=...,cnode,tcb`): which kernel objects carry
//! a protection key of their own, where their memory comes from, and the
//! windows that write them.
//!
//! - **Capability tables** (`cnode`): every slot array (CNodes' and TCBs')
//!   and the capability space's object records live in frames of
//!   [`CAPABILITY_MEMORY`], mapped with key 3 (`pkeys::CAPABILITY_KEY`).
//! - **Thread control blocks** (`tcb`): a thread's saved state lives in
//!   frames of [`THREAD_MEMORY`], with key 4 (`pkeys::THREAD_KEY`).
//! - A class left out lives in ordinary kernel-object memory
//!   (`frame_array::KERNEL_OBJECTS`, the default key), and so does every
//!   class under `ptprot=none`.
//!
//! Keys 3 and 4 are write-disabled in the default PKRS whether or not
//! anything carries them. The object layer writes its memory only under
//! the big lock, so the windows are opened there: [`with_windows`] opens
//! one per protected class for the whole critical section (a syscall's
//! invocation, a thread's save), two PKRS writes each. That is the cost
//! the lab measures; what it buys is that a stray write from anywhere
//! outside the object layer's critical sections (another CPU's, an
//! interrupt handler's, any other subsystem's) faults. A stray write from
//! inside one is not stopped: the window is per critical section, not per
//! slot.
//!
//! The window kinds are private to this module; [`zero_keyed`] is the one
//! door the page allocator's backend uses to wipe a block leaving one of
//! these freetypes.

use crate::arch::pks;
use crate::memory::frame_array::{FrameArray, KERNEL_OBJECTS};
use crate::memory::frames::FrameError;
use boot::cmdline::ObjectProtection;
use pkeys::{CAPABILITY_KEY, Mechanism, Rights, THREAD_KEY, WindowKind};
use ptalloc::{Freetype, Mobility, Protection};

/// Capability-table memory when `cnode` is protected.
pub const CAPABILITY_MEMORY: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(CAPABILITY_KEY.index()),
};

/// TCB memory when `tcb` is protected.
pub const THREAD_MEMORY: Freetype = Freetype {
    mobility: Mobility::Unmovable,
    protection: Protection::Pkey(THREAD_KEY.index()),
};

/// Set before memory comes up, and kept among the sealed records (key 2
/// once boot seals them): a stray write must not move new objects out of
/// keyed memory.
#[unsafe(link_section = ".sealed")]
static POLICY: spin::Once<ObjectProtection> = spin::Once::new();

/// Sets the policy, once, before the first object exists; later calls
/// keep the first.
pub fn init(protect: ObjectProtection) {
    POLICY.call_once(|| protect);
}

/// The classes protected, as they are in force: none under
/// `ptprot=none`.
pub fn in_force() -> ObjectProtection {
    let protect = POLICY.get().copied().unwrap_or_default();
    let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
    if mechanism == Mechanism::None {
        ObjectProtection {
            meta: false,
            cnode: false,
            tcb: false,
        }
    } else {
        protect
    }
}

/// Where capability tables are placed.
pub fn capability_memory() -> Freetype {
    if in_force().cnode {
        CAPABILITY_MEMORY
    } else {
        KERNEL_OBJECTS
    }
}

/// Where TCBs are placed.
pub fn thread_memory() -> Freetype {
    if in_force().tcb {
        THREAD_MEMORY
    } else {
        KERNEL_OBJECTS
    }
}

/// The window on capability tables.
struct CapabilityWrite;

// SAFETY: private to this module, which opens it only around the object
// layer's critical sections and the backend's wipe of such memory.
unsafe impl WindowKind for CapabilityWrite {
    const KEY: pkeys::Pkey = CAPABILITY_KEY;
    const RIGHTS: Rights = Rights::ReadWrite;
}

/// The window on TCBs.
struct ThreadWrite;

// SAFETY: as for `CapabilityWrite`.
unsafe impl WindowKind for ThreadWrite {
    const KEY: pkeys::Pkey = THREAD_KEY;
    const RIGHTS: Rights = Rights::ReadWrite;
}

/// Runs `f` with a window open for each protected class. For the object
/// layer's critical sections, under its lock.
pub(super) fn with_windows<T>(f: impl FnOnce() -> T) -> T {
    let Some(cpu) = pks::current() else {
        return f();
    };
    let protect = in_force();
    match (protect.cnode, protect.tcb) {
        (true, true) => {
            cpu.with_window::<CapabilityWrite, T>(|| cpu.with_window::<ThreadWrite, T>(f))
        }
        (true, false) => cpu.with_window::<CapabilityWrite, T>(f),
        (false, true) => cpu.with_window::<ThreadWrite, T>(f),
        (false, false) => f(),
    }
}

/// Runs `wipe` with the window for memory of `key` open: the page
/// allocator's backend clearing a block of [`CAPABILITY_MEMORY`] or
/// [`THREAD_MEMORY`]. `None` for any other key.
pub(crate) fn zero_keyed<T>(key: u8, wipe: impl FnOnce() -> T) -> Option<T> {
    let Some(cpu) = pks::current() else {
        return Some(wipe());
    };
    if key == CAPABILITY_KEY.index() {
        Some(cpu.with_window::<CapabilityWrite, T>(wipe))
    } else if key == THREAD_KEY.index() {
        Some(cpu.with_window::<ThreadWrite, T>(wipe))
    } else {
        None
    }
}

/// A slot array of `count` empty slots, in capability-table memory. Under
/// the lock, inside [`with_windows`].
pub fn new_slots(count: usize) -> Result<super::Slots, FrameError> {
    FrameArray::new_in(capability_memory(), count, |_| cspace::Slot::EMPTY)
}

/// A TCB's state, in TCB memory. Under the lock, inside [`with_windows`].
pub fn new_thread() -> Result<FrameArray<super::Thread>, FrameError> {
    FrameArray::new_in(thread_memory(), 1, |_| super::Thread {
        context: abi::UserContext::default(),
        ipc_buffer: 0,
    })
}
