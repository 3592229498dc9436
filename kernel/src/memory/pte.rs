//! The one door to page-table entries.
//!
//! Every write to a page-table entry in the kernel goes through [`write`],
//! which takes a [`Window`]: a write outside a page-table write window does
//! not compile. A `Window` exists only inside [`with_window`]'s closure,
//! whose window kind is private to this module; both are private to
//! `memory`, and these are the only places that open a window, each once
//! per operation however many entries it writes (so one operation costs
//! one pair of PKRS writes):
//! - `paging`, the page-table module: map and unmap in the kernel space and
//!   in user spaces at run time, setting up a space's root, and repointing
//!   the leaf of a user frame that compaction moves (`movable` asks, under
//!   `paging`'s reverse-map lock);
//! - `backend`, the direct map's split and pageblock-attribute path, which
//!   `ptalloc` drives and which takes its tables from the split reserve;
//! - the fixed kernel structures, written where they are owned: the direct
//!   map (`direct_map`, built before any allocator), the boot window's cut
//!   (`narrow_boot_window`), image-page attributes (`boot_tables`, for
//!   early-table reprotection) and the ephemeral slot (`ephemeral`, which
//!   the allocator itself uses to zero `Unmapped` frames, and compaction
//!   to copy the `Unmapped` user frames it moves).
//!
//! The last two groups cannot go through `paging`: its tables come from
//! the allocator, which they run before or underneath. The boot stub's
//! assembly, which runs before any of this exists, is the only other
//! writer of entries.
//!
//! Some windows write no entries: `backend::zero` zeroes new page-table
//! pages inside one, and `frames` tests write links into page-table
//! pages they hold. Tests plant entries through the same door (`paging`'s
//! walk tests, and `sealed`'s, which take a single page-table page's key
//! off its direct-map leaf and put it back). The PKS mechanism's own
//! tests (in `pkfault`) open key-1 windows on test pages through a window
//! kind of their own, an `unsafe impl` that says why.

use crate::arch::pks;

/// Entry bits the kernel uses (Intel SDM vol. 3, 4.5). Key bits live in
/// `pkeys::key`.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const WRITABLE: u64 = 1 << 1;
/// User-accessible.
pub const USER: u64 = 1 << 2;
/// A 1 GiB or 2 MiB leaf (in a PDPT or PD entry).
pub const LARGE: u64 = 1 << 7;
/// No-execute (only meaningful with EFER.NXE; see `cpu::no_execute_bit`).
pub const NO_EXECUTE: u64 = 1 << 63;
/// The physical-address bits of an entry.
pub const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
use pkeys::{PAGE_TABLE_KEY, Rights, WindowKind};

/// The page-table window's key and rights. Private to this module, so
/// [`with_window`] is the only way to open it.
struct PageTableWrite;

// SAFETY: the type is private to this module, whose `with_window` is
// private to `memory`, the owner of every page table.
unsafe impl WindowKind for PageTableWrite {
    const KEY: pkeys::Pkey = PAGE_TABLE_KEY;
    const RIGHTS: Rights = Rights::ReadWrite;
}

/// Permission to write page-table entries on this CPU: it exists only
/// inside [`with_window`]'s closure, so it cannot outlive the window, be
/// leaked with `mem::forget`, or move to another CPU.
pub(super) struct Window {
    _private: (),
}

/// Runs `f` inside a page-table write window (nothing to open before PKS
/// is set up, or under `ptprot=none`, where windows do nothing).
pub(super) fn with_window<T>(f: impl FnOnce(&Window) -> T) -> T {
    let mut f = Some(f);
    let mut result = None;
    in_window(&mut |window| result = f.take().map(|f| f(window)));
    match result {
        Some(result) => result,
        None => unreachable!("in_window runs its body once"),
    }
}

/// The window itself, compiled once: the open and close code is inlined
/// (compile-time key and rights), and the kernel calls this from some
/// fifty places, which would otherwise each carry a copy (about 1 KiB
/// each, in an image that must stay small: `boot::layout::MIN_MEMORY`).
#[inline(never)]
fn in_window(body: &mut dyn FnMut(&Window)) {
    let window = Window { _private: () };
    match pks::current() {
        Some(protection) => protection.with_window::<PageTableWrite, ()>(|| body(&window)),
        None => body(&window),
    }
}

/// Writes one page-table entry.
///
/// # Safety
/// `entry` must point at an 8-byte entry of a page table the caller owns
/// (its address space, or a table not yet linked), mapped writable while
/// the window is open; the value must keep every translation the kernel
/// relies on valid, and the caller flushes what the change requires.
pub(super) unsafe fn write(_window: &Window, entry: *mut u64, value: u64) {
    // SAFETY: the caller's contract; the window makes the write allowed.
    unsafe { entry.write_volatile(value) };
}
