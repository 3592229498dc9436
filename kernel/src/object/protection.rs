//! Object protection (`protect=...,cnode,tcb`): which kernel objects carry
//! a protection key of their own, where their memory comes from, and the
//! windows that write them.
//!
//! - **Capability tables** (`cnode`): every slot array (CNodes' and TCBs')
//!   and the capability space's object records live in frames of
//!   [`CAPABILITY_MEMORY`], mapped with key 3 (`pkeys::CAPABILITY_KEY`).
//! - **Thread control blocks** (`tcb`): a thread's saved state lives in
//!   frames of [`THREAD_MEMORY`], with key 4 (`pkeys::THREAD_KEY`).
//! - **The object table** (with either class): it holds the handles of
//!   both (a TCB's state block, a CNode's frame), so one stray write there
//!   would redirect a keyed object to memory of the attacker's choosing;
//!   it lives in [`CAPABILITY_MEMORY`] too.
//! - Both classes need `meta` (their placement and the walk's view of it
//!   are sealed records) and `ptprot=pks` (under `ro` a window clears
//!   CR0.WP for the whole critical section): the command line refuses
//!   anything else.
//! - A class left out lives in ordinary kernel-object memory
//!   (`frame_array::KERNEL_OBJECTS`, the default key), and so does every
//!   class under `ptprot=none`.
//!
//! Keys 3 and 4 are write-disabled in the default PKRS whether or not
//! anything carries them. The object layer writes its memory only under
//! the big lock, so the windows are opened there: [`with_windows`] opens
//! one per key in use (key 3 with either class, key 4 with `tcb`) for the
//! whole critical section (a syscall's invocation, a thread's save), two
//! PKRS writes each. That is the cost
//! the lab measures; what it buys is that a stray write from anywhere
//! outside the object layer's critical sections (another CPU's, an
//! interrupt handler's, any other subsystem's) faults. A stray write from
//! inside one is not stopped: the window is per critical section, not per
//! slot.
//!
//! The window kinds are private to this module; [`zero_keyed`] is the one
//! door the page allocator's backend uses to wipe a block leaving one of
//! these freetypes: it zeroes, and runs nothing else in the window.

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

/// Where the object table is placed: keyed when either class is.
pub fn table_memory() -> Freetype {
    let protect = in_force();
    if protect.cnode || protect.tcb {
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
    // Key 3 covers the object table as soon as either class is keyed.
    match (protect.cnode || protect.tcb, protect.tcb) {
        (true, true) => {
            cpu.with_window::<CapabilityWrite, T>(|| cpu.with_window::<ThreadWrite, T>(f))
        }
        (true, false) => cpu.with_window::<CapabilityWrite, T>(f),
        (false, true) => cpu.with_window::<ThreadWrite, T>(f),
        (false, false) => f(),
    }
}

/// Zeroes `len` bytes at `virt` (direct-map memory of key `key`, the
/// caller's to clear) inside that key's window: the page allocator's
/// backend wiping a block of [`CAPABILITY_MEMORY`] or [`THREAD_MEMORY`].
/// `None` for any other key, writing nothing.
///
/// # Safety
/// `[virt, virt + len)` must be memory of `key` in the direct map that no
/// one else uses (a block the allocator is converting).
pub(crate) unsafe fn zero_keyed(key: u8, virt: u64, len: usize) -> Option<()> {
    // SAFETY: the caller's contract; the window makes the range writable.
    let zero = || unsafe { (virt as *mut u8).write_bytes(0, len) };
    let cpu = pks::current();
    if key == CAPABILITY_KEY.index() {
        cpu.map_or_else(zero, |c| c.with_window::<CapabilityWrite, ()>(zero));
    } else if key == THREAD_KEY.index() {
        cpu.map_or_else(zero, |c| c.with_window::<ThreadWrite, ()>(zero));
    } else {
        return None;
    }
    Some(())
}

/// A slot array of `count` empty slots, in capability-table memory. Under
/// the lock, inside [`with_windows`].
pub(super) fn new_slots(count: usize) -> Result<super::Slots, FrameError> {
    FrameArray::new_in(capability_memory(), count, |_| cspace::Slot::EMPTY)
}

/// A TCB's state, in TCB memory. Under the lock, inside [`with_windows`].
pub(super) fn new_thread() -> Result<FrameArray<super::Thread>, FrameError> {
    FrameArray::new_in(thread_memory(), 1, |_| super::Thread {
        context: abi::UserContext::default(),
        ipc_buffer: 0,
    })
}
