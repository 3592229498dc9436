//! The verification walk: proves that every page-table frame is mapped
//! only with the page-table protection.
//!
//! 1. From the root (CR3), collect every page-table frame reachable: the
//!    root and every table a present non-leaf entry points to.
//! 2. Walk every present leaf mapping of the address space. A leaf that
//!    maps any page-table frame, or any frame of a page-table-freetype
//!    pageblock (reserve pages, tables the allocator made), must carry the
//!    page-table protection: key 1 under `pks`, read-only under `ro`.
//!
//! [`verify`] walks the kernel's address space and every live user address
//! space from `paging`; [`verify_root`] one root.

use super::KernelPhys;
use super::frames::{self, PAGE_TABLES};
use super::pte::{ADDRESS, LARGE, PRESENT, USER, WRITABLE};
use crate::arch::{cpu, pks};
use boot::PhysMemory;
use pkeys::{Mechanism, PAGE_TABLE_KEY};
use ptalloc::Pfn;

/// Most table frames the walk tracks.
pub const MAX_TABLES: usize = 512;

/// A mapping that breaks the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual address of the offending mapping.
    pub virt: u64,
    /// Physical frame it maps that needed protection.
    pub phys: u64,
    /// The leaf entry.
    pub entry: u64,
}

/// The walk's result.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyReport {
    /// Page-table frames reachable from the root.
    pub tables: usize,
    /// Leaf mappings examined.
    pub leaves: u64,
    /// Mappings of protected frames seen (aliases checked).
    pub aliases: u64,
    /// Mappings of page-table frames without the protection.
    pub violations: u64,
    /// The first of them.
    pub first_violation: Option<Violation>,
    /// More tables than [`MAX_TABLES`], or a table that could not be read:
    /// the walk is incomplete, which counts as a failure.
    pub truncated: bool,
}

impl VerifyReport {
    /// True if the walk was complete and found no violation.
    pub fn passed(&self) -> bool {
        self.violations == 0 && !self.truncated
    }
}

/// An entry, or `None` if the table cannot be read (which makes the walk
/// incomplete rather than silently empty).
fn entry(table: u64, index: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    KernelPhys.read(table + index * 8, &mut bytes)?;
    Some(u64::from_le_bytes(bytes))
}

fn sign_extend(virt: u64) -> u64 {
    if virt & (1 << 47) != 0 {
        virt | 0xffff_0000_0000_0000
    } else {
        virt
    }
}

/// Runs the walk on the kernel's address space and on every live user
/// address space (their user halves are private), and sums the results.
pub fn verify() -> VerifyReport {
    let mut total = verify_root(cpu::read_cr3());
    for root in super::paging::live_roots() {
        let user = verify_root(root);
        total.tables += user.tables;
        total.leaves += user.leaves;
        total.aliases += user.aliases;
        total.violations += user.violations;
        total.truncated |= user.truncated;
        if total.first_violation.is_none() {
            total.first_violation = user.first_violation;
        }
    }
    total
}

/// Runs the walk on the address space whose root table is at `root`.
pub fn verify_root(root: u64) -> VerifyReport {
    let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
    let root = root & ADDRESS;
    let mut tables: heapless::Vec<u64, MAX_TABLES> = heapless::Vec::new();
    let mut report = VerifyReport::default();
    collect_tables(root, 4, &mut tables, &mut report);
    report.tables = tables.len();
    check_leaves(root, 4, 0, mechanism, &tables, &mut report);
    report
}

fn collect_tables(
    table: u64,
    level: u32,
    tables: &mut heapless::Vec<u64, MAX_TABLES>,
    report: &mut VerifyReport,
) {
    if tables.contains(&table) {
        return;
    }
    if tables.push(table).is_err() {
        report.truncated = true;
        return;
    }
    if level == 1 {
        return;
    }
    for index in 0..512 {
        let Some(e) = entry(table, index) else {
            report.truncated = true;
            return;
        };
        if e & PRESENT != 0 && (level == 4 || e & LARGE == 0) {
            collect_tables(e & ADDRESS, level - 1, tables, report);
        }
    }
}

/// True if a frame needs the page-table protection wherever it is mapped.
fn needs_protection(phys: u64, tables: &[u64]) -> bool {
    if tables.contains(&(phys & ADDRESS)) {
        return true;
    }
    frames::allocator()
        .and_then(|a| a.frame_info(Pfn(phys / 4096)))
        .is_some_and(|info| info.pageblock_freetype == Some(PAGE_TABLES))
}

/// Keys apply to supervisor pages only: a user-accessible leaf is never
/// protected, whatever its key bits say.
fn protected(entry: u64, mechanism: Mechanism) -> bool {
    if entry & USER != 0 {
        return false;
    }
    match mechanism {
        Mechanism::Pks => pkeys::key::pte_key(entry) == PAGE_TABLE_KEY,
        Mechanism::WriteProtect => entry & WRITABLE == 0,
        Mechanism::None => false,
    }
}

fn check_leaves(
    table: u64,
    level: u32,
    virt_base: u64,
    mechanism: Mechanism,
    tables: &[u64],
    report: &mut VerifyReport,
) {
    let span = 1u64 << (12 + 9 * (level - 1));
    for index in 0..512u64 {
        let Some(e) = entry(table, index) else {
            report.truncated = true;
            return;
        };
        if e & PRESENT == 0 {
            continue;
        }
        let virt = sign_extend(virt_base + index * span);
        let is_leaf = level == 1 || (level < 4 && e & LARGE != 0);
        if !is_leaf {
            check_leaves(e & ADDRESS, level - 1, virt, mechanism, tables, report);
            continue;
        }
        report.leaves += 1;
        let phys_base = e & ADDRESS & !(span - 1);
        // Check frame by frame for 4 KiB leaves, pageblock by pageblock
        // (plus every table frame inside) for larger ones.
        let step = if span > 4096 { 1 << 21 } else { 4096 };
        let mut offsets = (0..span).step_by(step as usize).map(|o| phys_base + o);
        let table_inside = tables
            .iter()
            .copied()
            .find(|&t| t >= phys_base && t < phys_base + span);
        let hit = table_inside.or_else(|| offsets.find(|&phys| needs_protection(phys, tables)));
        if let Some(phys) = hit {
            report.aliases += 1;
            if !protected(e, mechanism) {
                report.violations += 1;
                report.first_violation.get_or_insert(Violation {
                    virt,
                    phys,
                    entry: e,
                });
            }
        }
    }
}

crate::kernel_test! {
    /// After boot, every page-table frame is mapped only with the
    /// page-table protection, on every alias.
    fn verification_walk_passes() -> TestResult {
        let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
        if mechanism == Mechanism::None {
            return Err(crate::testing::TestFailure::skipped("ptprot=none protects nothing"));
        }
        let report = verify();
        crate::check!(!report.truncated, "more than {} tables", MAX_TABLES);
        crate::check!(report.tables >= 4, "only {} tables found", report.tables);
        crate::check_eq!(report.violations, 0, "unprotected aliases");
        crate::check!(report.aliases as usize >= report.tables, "fewer aliases than tables: {:?}", report);
        Ok(())
    }
}
