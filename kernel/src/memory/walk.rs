//! Read-only page-table walks, for fault reports and checks.
//!
//! Tables are read through the boot window or the direct map
//! ([`KernelPhys`]), by copying entries: nothing here holds a reference
//! into a live table.

use super::KernelPhys;
use super::pte::{ADDRESS, LARGE, PRESENT};
use boot::PhysMemory;

/// The size a leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafSize {
    /// 1 GiB (a PDPT entry).
    Giga,
    /// 2 MiB (a page-directory entry).
    Mega,
    /// 4 KiB (a page-table entry).
    Page,
}

impl LeafSize {
    /// Bytes the leaf maps.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Giga => 1 << 30,
            Self::Mega => 2 << 20,
            Self::Page => 4096,
        }
    }
}

/// The entry that maps an address, and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The entry's value.
    pub entry: u64,
    /// What it maps.
    pub size: LeafSize,
    /// Physical address of the entry itself.
    pub entry_phys: u64,
}

fn read_entry(table_phys: u64, index: u64) -> Option<(u64, u64)> {
    let at = table_phys + index * 8;
    let mut bytes = [0u8; 8];
    KernelPhys.read(at, &mut bytes)?;
    Some((u64::from_le_bytes(bytes), at))
}

/// Walks the 4-level tables at `root_phys` (a CR3 value) to the present
/// leaf mapping `vaddr`; `None` if some level is not present.
pub fn leaf(root_phys: u64, vaddr: u64) -> Option<Leaf> {
    let mut table = root_phys & ADDRESS;
    let sizes = [
        None,
        Some(LeafSize::Giga),
        Some(LeafSize::Mega),
        Some(LeafSize::Page),
    ];
    for (level, size) in sizes.into_iter().enumerate() {
        let shift = 39 - 9 * level as u64;
        let (entry, entry_phys) = read_entry(table, (vaddr >> shift) & 0x1ff)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let is_leaf = size == Some(LeafSize::Page) || (size.is_some() && entry & LARGE != 0);
        if let (true, Some(size)) = (is_leaf, size) {
            return Some(Leaf {
                entry,
                size,
                entry_phys,
            });
        }
        table = entry & ADDRESS;
    }
    None
}

/// The entry at paging `level` (4 for the PML4 ... 1 for a page table) on
/// the path that translates `vaddr`, and its physical address; `None` if
/// a level above is not present or is a leaf.
pub fn entry_at(root_phys: u64, vaddr: u64, level: u32) -> Option<(u64, u64)> {
    let mut table = root_phys & ADDRESS;
    for at in (level..=4).rev() {
        let (entry, entry_phys) = read_entry(table, (vaddr >> (12 + 9 * (at - 1))) & 0x1ff)?;
        if at == level {
            return Some((entry, entry_phys));
        }
        if entry & PRESENT == 0 || (at < 4 && entry & LARGE != 0) {
            return None;
        }
        table = entry & ADDRESS;
    }
    None
}

crate::kernel_test! {
    /// The walk finds the kernel's own code in the boot stub's 4 KiB
    /// table, and nothing at null.
    fn walk_finds_the_image_and_not_null() -> TestResult {
        let root = crate::arch::cpu::read_cr3();
        let code = walk_finds_the_image_and_not_null as *const () as u64;
        let found = leaf(root, code);
        crate::check!(found.is_some(), "no mapping for the kernel's code at {:#x}", code);
        crate::check!(leaf(root, 0).is_none(), "null is mapped");
        Ok(())
    }
}
