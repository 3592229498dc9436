//! Page tables that exist before the page-table allocator does.
//!
//! The boot stub's tables live in the kernel image; the kernel builds more
//! (its own address space, the direct map) before `ptalloc` is up. None of
//! them come from the page-table freetype, so none is protected when made.
//! Each one is recorded here; once the split reserve exists, every recorded
//! frame is given the page-table key on all its virtual aliases.

use heapless::Vec;

/// Most early page tables that can be recorded. The boot stub records 5; a
/// direct map of 4 TiB with 1 GiB pages needs about 10 more.
pub const MAX_EARLY_TABLES: usize = 64;

/// Paging level of a table, named by what its entries point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableLevel {
    /// PML4: the root.
    Pml4,
    /// Page-directory-pointer table (entries map 1 GiB).
    Pdpt,
    /// Page directory (entries map 2 MiB).
    Pd,
    /// Page table (entries map 4 KiB).
    Pt,
}

/// Who created an early page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableOrigin {
    /// The 32-bit boot stub (static tables inside the kernel image).
    BootStub,
    /// Kernel code that ran before `ptalloc` existed.
    EarlyKernel,
}

/// One recorded page-table frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyPageTable {
    /// Physical address of the 4 KiB frame.
    pub phys: u64,
    /// Its paging level.
    pub level: TableLevel,
    /// Who made it.
    pub origin: TableOrigin,
}

/// Recording more than [`MAX_EARLY_TABLES`] tables, or a frame twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The list is full.
    Full,
    /// The frame is already recorded.
    Duplicate(u64),
    /// The address is not 4 KiB aligned.
    Misaligned(u64),
}

/// The list of early page tables, in the order they were made.
#[derive(Clone, Debug, Default)]
pub struct EarlyPageTables {
    tables: Vec<EarlyPageTable, MAX_EARLY_TABLES>,
}

impl EarlyPageTables {
    /// An empty list.
    pub const fn new() -> Self {
        Self { tables: Vec::new() }
    }

    /// Records one table frame.
    pub fn record(&mut self, table: EarlyPageTable) -> Result<(), RecordError> {
        if !table.phys.is_multiple_of(4096) {
            return Err(RecordError::Misaligned(table.phys));
        }
        if self.tables.iter().any(|t| t.phys == table.phys) {
            return Err(RecordError::Duplicate(table.phys));
        }
        self.tables.push(table).map_err(|_| RecordError::Full)
    }

    /// All recorded tables.
    pub fn tables(&self) -> &[EarlyPageTable] {
        &self.tables
    }

    /// Number of recorded tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// True if nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(phys: u64) -> EarlyPageTable {
        EarlyPageTable {
            phys,
            level: TableLevel::Pd,
            origin: TableOrigin::BootStub,
        }
    }

    #[test]
    fn records_and_rejects() {
        let mut list = EarlyPageTables::new();
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
        list.record(table(0x1000)).unwrap();
        assert!(!list.is_empty());
        assert_eq!(list.tables(), &[table(0x1000)]);
        assert_eq!(
            list.record(table(0x1000)),
            Err(RecordError::Duplicate(0x1000))
        );
        assert_eq!(
            list.record(table(0x1001)),
            Err(RecordError::Misaligned(0x1001))
        );
        for i in 2..=MAX_EARLY_TABLES as u64 {
            list.record(table(i * 0x1000)).unwrap();
        }
        assert_eq!(list.record(table(0x100_0000)), Err(RecordError::Full));
        assert_eq!(list.len(), MAX_EARLY_TABLES);
    }
}
