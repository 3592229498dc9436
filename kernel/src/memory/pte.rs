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
