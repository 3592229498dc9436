//! Changes to the boot stub's page tables: giving a 4 KiB page of the
//! image a protection key, or making it read-only. Early-table
//! reprotection uses the general setters, which are private to `memory`:
//! on an arbitrary image page they could strip a live table's key. Code
//! elsewhere (the PKS tests) can only change pages of its own
//! [`TestPage`]s. Writes go through [`super::pte`], inside a page-table
//! window, like every PTE write.

use super::pte::WRITABLE;
use super::walk::{self, LeafSize};
use crate::arch::cpu;
use boot::layout::KERNEL_VIRT;
use core::cell::UnsafeCell;
use pkeys::Pkey;

/// A page of the image that a test may give a key or make read-only: a
/// page-aligned static of its own, never a page table.
#[repr(C, align(4096))]
pub struct TestPage(UnsafeCell<[u64; 512]>);

// SAFETY: tests touch the words through raw pointers on one CPU; the cell
// only makes the static's memory writable.
unsafe impl Sync for TestPage {}

impl TestPage {
    /// A zeroed page (for a `static`: the boot stub maps the image's
    /// place, where statics live, with 4 KiB pages).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; 512]))
    }

    /// The address of word `index` (0 to 511).
    pub fn word(&self, index: usize) -> *mut u64 {
        self.0.get().cast::<u64>().wrapping_add(index.min(511))
    }

    /// Gives the page the protection key `key` until the returned guard
    /// is dropped, which gives it back the default key: a test leaves no
    /// key behind (the verification walk after each test checks).
    pub fn keyed(&'static self, key: Pkey) -> Result<KeyedTestPage, KeyError> {
        set_page_key(self.word(0) as u64, key)?;
        Ok(KeyedTestPage(self))
    }

    /// Makes the page read-only until the returned guard is dropped, which
    /// makes it writable again.
    pub fn read_only(&'static self) -> Result<ReadOnlyTestPage, KeyError> {
        set_page_writable(self.word(0) as u64, false)?;
        Ok(ReadOnlyTestPage(self))
    }
}

/// A [`TestPage`] with a protection key; dropping it restores key 0.
pub struct KeyedTestPage(&'static TestPage);

impl KeyedTestPage {
    /// The address of word `index` (0 to 511).
    pub fn word(&self, index: usize) -> *mut u64 {
        self.0.word(index)
    }
}

impl Drop for KeyedTestPage {
    fn drop(&mut self) {
        // The page was mapped by a 4 KiB leaf when it was keyed, and
        // nothing unmaps the image: this cannot fail.
        let _ = set_page_key(self.word(0) as u64, Pkey::DEFAULT);
    }
}

/// A read-only [`TestPage`]; dropping it makes the page writable again.
pub struct ReadOnlyTestPage(&'static TestPage);

impl ReadOnlyTestPage {
    /// The address of word `index` (0 to 511).
    pub fn word(&self, index: usize) -> *mut u64 {
        self.0.word(index)
    }
}

impl Drop for ReadOnlyTestPage {
    fn drop(&mut self) {
        // As for KeyedTestPage: the 4 KiB leaf is still there.
        let _ = set_page_writable(self.word(0) as u64, true);
    }
}

/// Why a page's key cannot be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The address is not mapped.
    NotMapped(u64),
    /// It is mapped by a large page, not by the stub's 4 KiB table.
    NotA4KibPage(u64),
}

/// Gives the 4 KiB page at `vaddr` (in the image, which the boot stub maps
/// with 4 KiB pages) the protection key `key`.
pub(super) fn set_page_key(vaddr: u64, key: Pkey) -> Result<(), KeyError> {
    update_page(vaddr, |entry| pkeys::key::pte_with_key(entry, key))
}

/// Makes the 4 KiB page at `vaddr` writable or read-only.
pub(super) fn set_page_writable(vaddr: u64, writable: bool) -> Result<(), KeyError> {
    update_page(vaddr, |entry| {
        if writable {
            entry | WRITABLE
        } else {
            entry & !WRITABLE
        }
    })
}

/// Rewrites the leaf entry of a 4 KiB page of the image; `change` must keep
/// it mapping the same frame.
fn update_page(vaddr: u64, change: impl FnOnce(u64) -> u64) -> Result<(), KeyError> {
    let leaf = walk::leaf(cpu::read_cr3(), vaddr).ok_or(KeyError::NotMapped(vaddr))?;
    if leaf.size != LeafSize::Page {
        return Err(KeyError::NotA4KibPage(vaddr));
    }
    let entry = (KERNEL_VIRT + leaf.entry_phys) as *mut u64;
    super::pte::with_window(|window| {
        // SAFETY: `entry` is the live PTE for `vaddr`, reached through the
        // boot window (the stub's tables are in the image, below 1 GiB);
        // only attribute bits change, so the page stays mapped to the same
        // frame.
        unsafe { super::pte::write(window, entry, change(leaf.entry)) };
    });
    // SAFETY: invalidating one translation is always safe.
    unsafe { x86::tlb::flush(vaddr as usize) };
    Ok(())
}
