//! The physical memory map, cleaned up from what the firmware reported.
//!
//! Firmware maps can be unsorted, hold empty entries, and overlap. A
//! [`MemoryMap`] promises: regions are sorted, non-empty, non-overlapping,
//! and adjacent regions of the same kind are merged. Where reported entries
//! overlap, the most restrictive kind wins (anything beats `Usable`), so the
//! kernel never allocates memory that some entry calls reserved.
//!
//! It also keeps where the boot modules lie ([`MemoryMap::boot_modules`]):
//! usable RAM the loader has filled, which whoever sets up an allocator
//! from the map must leave out.

use core::ops::Range;
use heapless::Vec;

/// Most regions a [`MemoryMap`] holds after clean-up. QEMU reports under ten;
/// real firmware rarely over a hundred.
pub const MAX_REGIONS: usize = 128;

/// What a physical range is for, as the PVH/E820 memory map types say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Type 1: RAM the kernel may use.
    Usable,
    /// Type 2: reserved by the platform.
    Reserved,
    /// Type 3: ACPI tables; reclaimable once they have been read.
    AcpiReclaimable,
    /// Type 4: ACPI non-volatile storage.
    AcpiNvs,
    /// Type 5: memory reported as bad.
    Unusable,
    /// Type 7: persistent memory.
    Persistent,
    /// Any other type number: treated as reserved.
    Other(u32),
}

impl RegionKind {
    /// The kind for an E820 type number.
    pub fn from_e820(kind: u32) -> Self {
        match kind {
            1 => Self::Usable,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            7 => Self::Persistent,
            other => Self::Other(other),
        }
    }

    /// Which kind wins where two entries overlap: higher is more
    /// restrictive. Unknown types rank by their number, so the result never
    /// depends on the order of the entries.
    fn restrictiveness(self) -> (u8, u32) {
        match self {
            Self::Usable => (0, 0),
            Self::AcpiReclaimable => (1, 0),
            Self::Persistent => (2, 0),
            Self::Reserved => (3, 0),
            Self::Other(kind) => (4, kind),
            Self::AcpiNvs => (5, 0),
            Self::Unusable => (6, 0),
        }
    }

    /// A short lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Usable => "usable",
            Self::Reserved => "reserved",
            Self::AcpiReclaimable => "acpi-reclaimable",
            Self::AcpiNvs => "acpi-nvs",
            Self::Unusable => "unusable",
            Self::Persistent => "persistent",
            Self::Other(_) => "other",
        }
    }
}

/// One physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the range is for.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for an empty range (never stored in a [`MemoryMap`]).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Why a reported memory map could not be turned into a [`MemoryMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// The map needs more than [`MAX_REGIONS`] regions.
    TooManyRegions,
    /// An entry's `start + size` overflows 64 bits.
    EntryOverflows {
        /// The entry's start.
        start: u64,
        /// The entry's size.
        size: u64,
    },
    /// No entry describes usable memory.
    NoUsableMemory,
}

impl core::fmt::Display for MemoryMapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManyRegions => write!(f, "memory map has more than {MAX_REGIONS} regions"),
            Self::EntryOverflows { start, size } => {
                write!(
                    f,
                    "memory map entry at {start:#x} with size {size:#x} wraps past 2^64"
                )
            }
            Self::NoUsableMemory => write!(f, "memory map has no usable memory"),
        }
    }
}

/// Totals over a [`MemoryMap`], for the boot report and its tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySummary {
    /// Bytes of usable RAM.
    pub usable_bytes: u64,
    /// Number of usable regions.
    pub usable_regions: usize,
    /// Bytes spanned by non-usable regions (address-space holes that the
    /// firmware reports as reserved included, so not a RAM figure).
    pub reserved_bytes: u64,
    /// One past the last usable byte.
    pub highest_usable_end: u64,
}

/// A cleaned-up physical memory map (see the module doc for its promises).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    regions: Vec<MemoryRegion, MAX_REGIONS>,
    /// The boot modules' bytes, each inside one usable region.
    modules: Vec<Range<u64>, { crate::modules::MAX_MODULES }>,
}

impl MemoryMap {
    /// Builds a map from raw `(start, size, kind)` entries in any order.
    ///
    /// Every point covered by several entries takes the most restrictive of
    /// their kinds; points no entry covers are left out.
    pub fn from_entries(
        entries: impl Iterator<Item = (u64, u64, RegionKind)> + Clone,
    ) -> Result<Self, MemoryMapError> {
        // Cut the address space at every entry boundary, then give each
        // elementary interval the most restrictive kind that covers it.
        let mut cuts: Vec<u64, { 2 * MAX_REGIONS }> = Vec::new();
        for (start, size, _) in entries.clone() {
            if size == 0 {
                continue;
            }
            let end = start
                .checked_add(size)
                .ok_or(MemoryMapError::EntryOverflows { start, size })?;
            for cut in [start, end] {
                if !cuts.contains(&cut) {
                    cuts.push(cut).map_err(|_| MemoryMapError::TooManyRegions)?;
                }
            }
        }
        cuts.sort_unstable();

        let mut map = MemoryMap::default();
        for pair in cuts.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            let covering = entries
                .clone()
                .filter(|&(start, size, _)| size != 0 && start <= lo && hi <= start + size)
                .map(|(_, _, kind)| kind)
                .max_by_key(|kind| kind.restrictiveness());
            if let Some(kind) = covering {
                map.push_merged(MemoryRegion {
                    start: lo,
                    end: hi,
                    kind,
                })?;
            }
        }
        if map.summary().usable_bytes == 0 {
            return Err(MemoryMapError::NoUsableMemory);
        }
        Ok(map)
    }

    fn push_merged(&mut self, region: MemoryRegion) -> Result<(), MemoryMapError> {
        if let Some(last) = self.regions.last_mut()
            && last.end == region.start
            && last.kind == region.kind
        {
            last.end = region.end;
            return Ok(());
        }
        self.regions
            .push(region)
            .map_err(|_| MemoryMapError::TooManyRegions)
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// The usable regions, sorted by address.
    pub fn usable(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.regions.iter().filter(|r| r.kind == RegionKind::Usable)
    }

    /// The boot modules' bytes (checked: each inside one usable region),
    /// which stay where the loader put them: usable RAM, but not free.
    pub fn boot_modules(&self) -> &[Range<u64>] {
        &self.modules
    }

    /// Records the checked modules' bytes ([`crate::modules`]).
    pub(crate) fn set_boot_modules(&mut self, modules: &crate::modules::BootModules) {
        self.modules = modules
            .iter()
            .map(crate::modules::BootModule::range)
            .collect();
    }

    /// Totals for the boot report.
    pub fn summary(&self) -> MemorySummary {
        let mut summary = MemorySummary {
            usable_bytes: 0,
            usable_regions: 0,
            reserved_bytes: 0,
            highest_usable_end: 0,
        };
        for region in &self.regions {
            if region.kind == RegionKind::Usable {
                summary.usable_bytes += region.len();
                summary.usable_regions += 1;
                summary.highest_usable_end = region.end;
            } else {
                summary.reserved_bytes += region.len();
            }
        }
        summary
    }

    /// How many naturally aligned blocks of `block_size` bytes (a power of
    /// two) lie wholly inside usable memory.
    pub fn whole_usable_blocks(&self, block_size: u64) -> u64 {
        debug_assert!(block_size.is_power_of_two());
        self.usable()
            .map(|r| {
                let first = r.start.div_ceil(block_size);
                let last = r.end / block_size;
                last.saturating_sub(first)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionKind::*;

    fn map(entries: &[(u64, u64, RegionKind)]) -> Result<MemoryMap, MemoryMapError> {
        MemoryMap::from_entries(entries.iter().copied())
    }

    #[test]
    fn sorts_and_merges() {
        let m = map(&[
            (0x10_0000, 0x10_0000, Usable),
            (0, 0x9fc00, Usable),
            (0x20_0000, 0x10_0000, Usable),
        ])
        .unwrap();
        assert_eq!(
            m.regions(),
            &[
                MemoryRegion {
                    start: 0,
                    end: 0x9fc00,
                    kind: Usable
                },
                MemoryRegion {
                    start: 0x10_0000,
                    end: 0x30_0000,
                    kind: Usable
                },
            ]
        );
    }

    #[test]
    fn overlap_keeps_the_restrictive_kind() {
        let m = map(&[
            (0, 0x40_0000, Usable),
            (0x10_0000, 0x1000, Reserved),
            (0x30_0000, 0x20_0000, AcpiNvs),
        ])
        .unwrap();
        assert_eq!(
            m.regions(),
            &[
                MemoryRegion {
                    start: 0,
                    end: 0x10_0000,
                    kind: Usable
                },
                MemoryRegion {
                    start: 0x10_0000,
                    end: 0x10_1000,
                    kind: Reserved
                },
                MemoryRegion {
                    start: 0x10_1000,
                    end: 0x30_0000,
                    kind: Usable
                },
                MemoryRegion {
                    start: 0x30_0000,
                    end: 0x50_0000,
                    kind: AcpiNvs
                },
            ]
        );
        let s = m.summary();
        assert_eq!(s.usable_bytes, 0x30_0000 - 0x1000);
        assert_eq!(s.highest_usable_end, 0x30_0000);
        assert_eq!(s.reserved_bytes, 0x1000 + 0x20_0000);
    }

    #[test]
    fn overlap_result_does_not_depend_on_entry_order() {
        let a = (0x1000, 0x1000, Other(9));
        let b = (0x1000, 0x1000, Other(8));
        let usable = (0, 0x4000, Usable);
        assert_eq!(map(&[a, b, usable]), map(&[usable, b, a]));
        assert_eq!(map(&[a, b, usable]).unwrap().regions()[1].kind, Other(9));
    }

    #[test]
    fn empty_entries_are_dropped_and_gaps_stay_gaps() {
        let m = map(&[
            (0x1000, 0, Reserved),
            (0, 0x1000, Usable),
            (0x3000, 0x1000, Usable),
        ])
        .unwrap();
        assert_eq!(m.regions().len(), 2);
        assert_eq!(m.summary().usable_regions, 2);
    }

    #[test]
    fn bad_maps_are_errors() {
        assert_eq!(
            map(&[(u64::MAX - 10, 100, Usable)]),
            Err(MemoryMapError::EntryOverflows {
                start: u64::MAX - 10,
                size: 100
            })
        );
        assert_eq!(
            map(&[(0, 0x1000, Reserved)]),
            Err(MemoryMapError::NoUsableMemory)
        );
        assert_eq!(map(&[]), Err(MemoryMapError::NoUsableMemory));
        let many: std::vec::Vec<_> = (0..200u64).map(|i| (i * 0x2000, 0x1000, Usable)).collect();
        assert_eq!(
            MemoryMap::from_entries(many.iter().copied()),
            Err(MemoryMapError::TooManyRegions)
        );
    }

    #[test]
    fn a_map_of_max_regions_separate_entries_fits() {
        // Every entry adds two cuts: MAX_REGIONS entries need twice that.
        let entries: std::vec::Vec<_> = (0..MAX_REGIONS as u64)
            .map(|i| (i * 0x2000, 0x1000, Usable))
            .collect();
        let m = MemoryMap::from_entries(entries.iter().copied()).unwrap();
        assert_eq!(m.regions().len(), MAX_REGIONS);
        assert_eq!(m.summary().usable_regions, MAX_REGIONS);
    }

    #[test]
    fn regions_and_kinds_describe_themselves() {
        let region = MemoryRegion {
            start: 0x1000,
            end: 0x3000,
            kind: Usable,
        };
        assert_eq!(region.len(), 0x2000);
        assert!(!region.is_empty());
        assert!(
            MemoryRegion {
                start: 0x3000,
                ..region
            }
            .is_empty()
        );
        let names: std::vec::Vec<_> = [1, 2, 3, 4, 5, 7, 6]
            .map(|kind| RegionKind::from_e820(kind).name())
            .into();
        assert_eq!(
            names,
            [
                "usable",
                "reserved",
                "acpi-reclaimable",
                "acpi-nvs",
                "unusable",
                "persistent",
                "other"
            ]
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            MemoryMapError::TooManyRegions.to_string(),
            "memory map has more than 128 regions"
        );
        assert_eq!(
            MemoryMapError::EntryOverflows {
                start: 0x10,
                size: 0x20
            }
            .to_string(),
            "memory map entry at 0x10 with size 0x20 wraps past 2^64"
        );
        assert_eq!(
            MemoryMapError::NoUsableMemory.to_string(),
            "memory map has no usable memory"
        );
    }

    #[test]
    fn whole_blocks_count_only_aligned_usable_blocks() {
        const MIB2: u64 = 2 << 20;
        // 129 MiB of RAM from 1 MiB: blocks [2 MiB, 128 MiB) are whole, and
        // the block at 128 MiB ends at 130 MiB, past the RAM.
        let m = map(&[(0, 0x9fc00, Usable), (0x10_0000, 128 << 20, Usable)]).unwrap();
        assert_eq!(m.whole_usable_blocks(MIB2), 63);
        assert_eq!(m.whole_usable_blocks(4096), 0x9f + (128 << 20) / 4096);
    }
}
