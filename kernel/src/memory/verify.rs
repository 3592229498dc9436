//! The verification walk: proves that every page-table frame is mapped
//! only with the page-table protection.
//!
//! From a root, the walk descends through every present non-leaf entry
//! and checks two things:
//! 1. Every table it reaches (the root included) is page-table memory: a
//!    frame of a page-table-freetype pageblock, a single page-table page
//!    the sealed record names inside a mapped pageblock (`ptalloc`'s
//!    single-page fallback), or a recorded early page table. A table
//!    anywhere else is a violation in itself.
//! 2. Every present leaf that maps page-table memory (a table, a reserve
//!    page, any frame of a page-table-freetype pageblock, a single
//!    page-table page, an early table) carries the page-table protection:
//!    key 1 under `pks`, read-only under `ro`. A leaf of 2 MiB or more
//!    over a pageblock with single page-table pages is such a leaf.
//! 3. No leaf maps the image's read-only part (code, rodata, the IDT, GDT
//!    and TSS) writable, nor the sealed records writable without key 2
//!    (unless `protect=` left them out).
//! 4. Keys go only where the key table puts them: a supervisor leaf with
//!    key 1 maps page-table memory, one with key 2 the sealed records, one
//!    with key 3 or 4 pageblocks the sealed record gives that key
//!    (capability tables, TCBs), and no supervisor leaf carries any other
//!    key but the default. A key left
//!    behind (by a test, or a stray write to a PTE's key bits) is a
//!    *stray key*.
//! 5. Keyed object memory (keys 3 and 4) has no writable alias without
//!    its key, under `pks` (a supervisor leaf of another key, or a user
//!    leaf, over such a pageblock is a violation).
//!
//! Together they cover every alias of every table: by 1 each table is
//! page-table memory, and by 2 every mapping of page-table memory is
//! protected. No set of tables is kept, so the walk's only limit is a cap
//! on tables visited ([`MAX_TABLE_VISITS`]), far above any real space.
//!
//! [`verify`] walks the kernel's address space and every live user address
//! space from `paging`, checks the protection registers (PKRS, CR0.WP,
//! the pinned CR4 bits) against what they must hold, and compares the
//! allocator's per-pageblock freetypes with the sealed record
//! (`memory::sealed`); [`verify_root`] walks one root. What counts as
//! page-table memory comes from the sealed record.

use super::KernelPhys;
use super::paging::{is_page_table_memory, page_table_memory_in};
use super::pte::{ADDRESS, LARGE, PRESENT, USER, WRITABLE};
use crate::arch::{cpu, pks};
use boot::PhysMemory;
use pkeys::{Mechanism, PAGE_TABLE_KEY};

/// A mapping, or a table, that breaks the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual address of the offending mapping (for a table outside
    /// page-table memory: the first address it translates).
    pub virt: u64,
    /// Physical frame it maps that needed protection (or the table).
    pub phys: u64,
    /// The leaf entry (or the entry linking the table; 0 for a root).
    pub entry: u64,
}

/// Most tables one walk visits before it gives up (as incomplete): a table
/// linked many times is walked each time, and a pathological sharing
/// pattern could otherwise take for ever. Far above any real space (the
/// churn test's peak is about 10,000).
pub const MAX_TABLE_VISITS: usize = 1 << 20;

/// The walk's result.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyReport {
    /// Page tables reached (a table linked twice counts twice).
    pub tables: usize,
    /// Leaf mappings examined.
    pub leaves: u64,
    /// Mappings of protected frames seen (aliases checked).
    pub aliases: u64,
    /// Unprotected mappings of page-table memory, plus tables outside it.
    pub violations: u64,
    /// The first of them.
    pub first_violation: Option<Violation>,
    /// A table could not be read, or more than [`MAX_TABLE_VISITS`] were
    /// reached: the walk is incomplete, which counts as a failure.
    pub truncated: bool,
    /// Supervisor leaves with a key the key table does not give what they
    /// map (see the module doc, point 4).
    pub stray_keys: u64,
    /// The first of them.
    pub first_stray_key: Option<Violation>,
    /// Pageblocks whose freetype in `ptalloc`'s metadata disagrees with
    /// the sealed record ([`verify`] only): forged metadata.
    pub metadata_mismatches: u64,
    /// The register check ([`verify`] only; `None` before protection is
    /// set up): what was checked, and the first mismatch.
    pub registers: Option<RegisterCheck>,
}

/// The protection registers as the walk checked them.
#[derive(Clone, Copy, Debug)]
pub struct RegisterCheck {
    /// The mechanism whose rules applied.
    pub mechanism: Mechanism,
    /// PKRS as read (under `pks`).
    pub pkrs: Option<pkeys::Pkrs>,
    /// The CR4 bits required to be set.
    pub pinned_cr4: u64,
    /// The check's verdict.
    pub result: Result<(), pkeys::Violation>,
}

impl VerifyReport {
    /// True if the walk was complete and found no violation.
    pub fn passed(&self) -> bool {
        self.failure().is_none()
    }

    /// Why the walk failed, the first reason in the order the module doc
    /// lists its checks; `None` if it passed.
    pub fn failure(&self) -> Option<Failure> {
        if let Some(Err(violation)) = self.registers.map(|check| check.result) {
            Some(Failure::Registers(violation))
        } else if self.truncated {
            Some(Failure::Incomplete)
        } else if let Some(first) = self.first_violation {
            Some(Failure::Unprotected {
                count: self.violations,
                first,
            })
        } else if let Some(first) = self.first_stray_key {
            Some(Failure::StrayKeys {
                count: self.stray_keys,
                first,
            })
        } else if self.metadata_mismatches != 0 {
            Some(Failure::MetadataMismatches(self.metadata_mismatches))
        } else {
            None
        }
    }

    fn violation(&mut self, found: Violation) {
        self.violations += 1;
        self.first_violation.get_or_insert(found);
    }
}

/// Why a walk failed ([`VerifyReport::failure`]).
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// The protection registers do not hold what they must.
    Registers(pkeys::Violation),
    /// A table could not be read, or too many were reached.
    Incomplete,
    /// Unprotected aliases of page-table memory, or tables outside it.
    Unprotected {
        /// How many.
        count: u64,
        /// The first.
        first: Violation,
    },
    /// Keys where the key table puts none.
    StrayKeys {
        /// How many leaves.
        count: u64,
        /// The first.
        first: Violation,
    },
    /// Pageblocks whose metadata disagrees with the sealed record.
    MetadataMismatches(u64),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Registers(violation) => write!(f, "protection registers: {violation}"),
            Self::Incomplete => write!(
                f,
                "incomplete (a table could not be read, or more than {MAX_TABLE_VISITS} tables)"
            ),
            Self::Unprotected { count, first } => write!(
                f,
                "{count} violations (unprotected aliases, or tables outside page-table memory); \
                 first: virtual {:#x}, frame {:#x}, entry {:#x}",
                first.virt, first.phys, first.entry
            ),
            Self::StrayKeys { count, first } => write!(
                f,
                "stray keys on {count} leaves (keys the key table does not give what they \
                 map); first: virtual {:#x}, key {}, entry {:#x}",
                first.virt,
                pkeys::key::pte_key(first.entry).index(),
                first.entry
            ),
            Self::MetadataMismatches(count) => write!(
                f,
                "{count} pageblocks whose freetype in the allocator's metadata disagrees with the \
                 sealed record"
            ),
        }
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
        total.stray_keys += user.stray_keys;
        total.truncated |= user.truncated;
        if total.first_violation.is_none() {
            total.first_violation = user.first_violation;
        }
        if total.first_stray_key.is_none() {
            total.first_stray_key = user.first_stray_key;
        }
    }
    total.metadata_mismatches = super::sealed::mismatches();
    total.registers = pks::current().map(|protection| RegisterCheck {
        mechanism: protection.mechanism(),
        pkrs: (protection.mechanism() == Mechanism::Pks)
            .then(|| cpu::read_pkrs_if_enabled().map(|raw| pkeys::Pkrs::from_bits(raw as u32)))
            .flatten(),
        pinned_cr4: protection.pinned_cr4(),
        result: protection.check(),
    });
    total
}

/// Runs the walk on the address space whose root table is at `root`.
pub fn verify_root(root: u64) -> VerifyReport {
    let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
    let root = root & ADDRESS;
    let mut report = VerifyReport::default();
    walk_table(root, 4, 0, 0, mechanism, &mut report);
    report
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

/// The first frame of the kernel image's protected parts that the leaf
/// `entry` (mapping `span` bytes from `phys_base`) leaves writable: its
/// read-only part (code, rodata, the IDT, GDT and TSS) may only be mapped
/// read-only, and the sealed records read-only or, under `pks`, with the
/// metadata key.
fn unprotected_image_frame(
    phys_base: u64,
    span: u64,
    entry: u64,
    mechanism: Mechanism,
) -> Option<u64> {
    if entry & WRITABLE == 0 {
        return None;
    }
    let overlap = |range: core::ops::Range<u64>| {
        let start = range.start.max(phys_base);
        (start < range.end.min(phys_base + span)).then_some(start)
    };
    let sealed_ok = !super::sealed::keyed()
        || mechanism == Mechanism::Pks
            && entry & USER == 0
            && pkeys::key::pte_key(entry) == pkeys::METADATA_KEY;
    overlap(super::image::read_only_phys())
        .or_else(|| overlap(super::sealed::phys_range()).filter(|_| !sealed_ok))
}

/// The first pageblock of keyed object memory (capability tables, TCBs:
/// keys 3 and 4, by the sealed record) that the writable leaf `entry`
/// maps without that key, under `pks`: an alias a stray write could use
/// around the key. Under `ro` and `none` no object class is keyed.
fn unkeyed_object_memory(
    phys_base: u64,
    span: u64,
    entry: u64,
    mechanism: Mechanism,
) -> Option<u64> {
    if mechanism != Mechanism::Pks || entry & WRITABLE == 0 {
        return None;
    }
    let key = pkeys::key::pte_key(entry);
    let user = entry & USER != 0;
    let first = phys_base & !(ptalloc::PAGEBLOCK_SIZE - 1);
    (first..phys_base + span)
        .step_by(ptalloc::PAGEBLOCK_SIZE as usize)
        .map(|at| {
            (
                at.max(phys_base),
                super::sealed::protection(at.max(phys_base)),
            )
        })
        .find(|&(_, protection)| {
            [pkeys::CAPABILITY_KEY, pkeys::THREAD_KEY]
                .into_iter()
                .any(|object_key| {
                    protection == ptalloc::Protection::Pkey(object_key.index())
                        && (user || key != object_key)
                })
        })
        .map(|(at, _)| at)
}

/// True if the supervisor leaf `entry` (mapping `span` bytes from
/// `phys_base`) carries a key that the key table does not give what it
/// maps. User leaves are left alone: supervisor keys do not apply to them.
fn stray_key(phys_base: u64, span: u64, entry: u64) -> bool {
    if entry & USER != 0 {
        return false;
    }
    let key = pkeys::key::pte_key(entry);
    let overlaps =
        |range: core::ops::Range<u64>| range.start < phys_base + span && phys_base < range.end;
    if key == pkeys::keys::DEFAULT_KEY {
        false
    } else if key == PAGE_TABLE_KEY {
        page_table_memory_in(phys_base, span).is_none()
    } else if key == pkeys::METADATA_KEY {
        !overlaps(super::sealed::phys_range())
    } else if key == pkeys::CAPABILITY_KEY || key == pkeys::THREAD_KEY {
        // Object memory: the record must give every pageblock the leaf
        // touches this key.
        let first = phys_base & !(ptalloc::PAGEBLOCK_SIZE - 1);
        (first..phys_base + span)
            .step_by(ptalloc::PAGEBLOCK_SIZE as usize)
            .any(|at| super::sealed::protection(at) != ptalloc::Protection::Pkey(key.index()))
    } else {
        true
    }
}

/// Checks the table at `table` (a `level` table translating from
/// `virt_base`, linked by `link`) and everything below it.
fn walk_table(
    table: u64,
    level: u32,
    virt_base: u64,
    link: u64,
    mechanism: Mechanism,
    report: &mut VerifyReport,
) {
    if report.tables >= MAX_TABLE_VISITS {
        report.truncated = true;
        return;
    }
    report.tables += 1;
    if !is_page_table_memory(table) {
        report.violation(Violation {
            virt: sign_extend(virt_base),
            phys: table,
            entry: link,
        });
    }
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
            walk_table(e & ADDRESS, level - 1, virt, e, mechanism, report);
            continue;
        }
        report.leaves += 1;
        let phys_base = e & ADDRESS & !(span - 1);
        if stray_key(phys_base, span, e) {
            report.stray_keys += 1;
            report.first_stray_key.get_or_insert(Violation {
                virt,
                phys: phys_base,
                entry: e,
            });
        }
        if let Some(phys) = unprotected_image_frame(phys_base, span, e, mechanism) {
            report.violation(Violation {
                virt,
                phys,
                entry: e,
            });
        }
        if let Some(phys) = unkeyed_object_memory(phys_base, span, e, mechanism) {
            report.violation(Violation {
                virt,
                phys,
                entry: e,
            });
        }
        if let Some(phys) = page_table_memory_in(phys_base, span) {
            report.aliases += 1;
            if !protected(e, mechanism) {
                report.violation(Violation {
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
        crate::check!(!report.truncated, "a table could not be read");
        crate::check!(report.tables >= 4, "only {} tables found", report.tables);
        crate::check_eq!(report.violations, 0, "unprotected aliases");
        // Not vacuous: the direct map's mappings of page-table memory were
        // checked (one 2 MiB leaf may cover many tables, so there can be
        // fewer than tables).
        crate::check!(report.aliases > 0, "the walk saw no mapping of page-table memory: {:?}", report);
        Ok(())
    }
}

/// A page of the image for [`walk_reports_stray_keys`] to key.
static STRAY_KEY_PAGE: super::boot_tables::TestPage = super::boot_tables::TestPage::new();

crate::kernel_test! {
    /// A key left on a page the key table does not give it is a stray
    /// key, and fails the walk: key 1 on a page that is not page-table
    /// memory, and a spare key anywhere. Once the key is taken back, the
    /// walk passes again.
    fn walk_reports_stray_keys() -> TestResult {
        let before = verify();
        crate::check_eq!(before.stray_keys, 0);
        const SPARE_KEY: pkeys::Pkey = match pkeys::Pkey::new(15) {
            Some(key) => key,
            None => panic!("key 15 exists"),
        };
        for key in [PAGE_TABLE_KEY, pkeys::METADATA_KEY, SPARE_KEY] {
            let keyed = STRAY_KEY_PAGE.keyed(key).map_err(|e| {
                crate::testing::TestFailure::new(file!(), line!(), format_args!("{e:?}"))
            })?;
            let report = verify();
            let first = report.first_stray_key.map(|v| (v.virt, pkeys::key::pte_key(v.entry)));
            crate::check_eq!(report.stray_keys, 1);
            crate::check_eq!(first, Some((keyed.word(0) as u64, key)));
            // Under ptprot=none the walk fails anyway, for unprotected tables.
            if before.passed() {
                crate::check!(matches!(report.failure(), Some(Failure::StrayKeys { count: 1, .. })));
            }
        }
        crate::check_eq!(verify().stray_keys, 0, "the guard left the key behind");
        Ok(())
    }
}

crate::kernel_test! {
    /// Rule 5: a block of capability-table memory (key 3) mapped writable
    /// into an address space with the default key is a violation under
    /// `pks`; unmapped, the walk passes again. (`paging` maps any frame it
    /// is given: keeping keyed object memory out of data mappings is the
    /// object layer's business, and this rule its check.)
    fn walk_reports_unkeyed_aliases_of_object_memory() -> TestResult {
        use super::paging::{AddressSpace, MapFlags, PageSize};
        let mechanism = pks::current().map_or(Mechanism::None, |p| p.mechanism());
        if mechanism != Mechanism::Pks {
            return Err(crate::testing::TestFailure::skipped("object memory is keyed only under pks"));
        }
        let fail = |e: &dyn core::fmt::Debug| crate::testing::TestFailure::because(e);
        let keyed = crate::object::protection::CAPABILITY_MEMORY;
        let frame = match super::frames::alloc_frame(0, keyed, true) {
            Ok(frame) => frame,
            Err(error) => {
                // A small machine may have no pageblock left to key.
                super::frames::needs_free_pageblocks(1, "to key for capability tables")?;
                return Err(fail(&error));
            }
        };
        let phys = frame.addr();
        let space = AddressSpace::new().map_err(|e| fail(&e))?;
        let clean = verify_root(space.root()).violations;
        const V: u64 = 0x1000_0000;
        space
            .map(V, frame, MapFlags { writable: true, executable: false })
            .map_err(|e| fail(&e.error))?;
        let aliased = verify_root(space.root());
        let unmapped = space.unmap(V, PageSize::Small).map_err(|e| fail(&e))?;
        let after = verify_root(space.root()).violations;
        drop(unmapped);
        crate::check_eq!((clean, aliased.violations, after), (0, 1, 0));
        crate::check_eq!(aliased.first_violation.map(|v| v.phys), Some(phys));
        Ok(())
    }
}
