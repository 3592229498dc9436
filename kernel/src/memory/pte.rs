//! The one door to page-table entries.
//!
//! Every write to a page-table entry in the kernel goes through [`write`],
//! which takes a [`Window`]: a write outside a page-table write window does
//! not compile. [`open`] is the only place the kernel opens a page-table
//! window (tests of the mechanism itself aside), so one operation that
//! writes many entries opens one window and costs one pair of PKRS writes.
//! The boot stub's assembly, which runs before any of this exists, is the
//! only other writer.

use crate::arch::pks::{self, Registers};
use pkeys::{PAGE_TABLE_KEY, WriteWindow};

/// Permission to write page-table entries on this CPU until dropped. Not
/// `Send`: it must close where it opened.
#[must_use = "the window closes as soon as it is dropped"]
pub struct Window {
    _guard: Option<WriteWindow<'static, Registers>>,
}

/// Opens a page-table write window (nothing to open before PKS is set up,
/// or under `ptprot=none`, where windows do nothing).
pub fn open() -> Window {
    Window {
        _guard: pks::current().map(|protection| protection.open_write(PAGE_TABLE_KEY)),
    }
}

/// Writes one page-table entry.
///
/// # Safety
/// `entry` must point at an 8-byte entry of a page table the caller owns
/// (its address space, or a table not yet linked), mapped writable while
/// the window is open; the value must keep every translation the kernel
/// relies on valid, and the caller flushes what the change requires.
pub unsafe fn write(_window: &Window, entry: *mut u64, value: u64) {
    // SAFETY: the caller's contract; the window makes the write allowed.
    unsafe { entry.write_volatile(value) };
}
