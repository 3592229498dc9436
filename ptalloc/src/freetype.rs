//! Freetypes: what a free page is for, and how the direct map shows it.
//!
//! A [`Freetype`] is a mobility class plus a [`Protection`]. Every pageblock
//! has exactly one freetype at a time, and the direct-map mapping of all its
//! frames carries that freetype's protection. Pages are only ever allocated
//! from pageblocks of the freetype asked for.

use core::fmt;

/// How long-lived and movable an allocation is. Grouping by mobility keeps
/// long-lived kernel objects from pinning pageblocks full of short-lived
/// pages, and tells compaction which blocks it may ask their owner to move
/// ([`Migrate`](crate::Migrate)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mobility {
    /// Kernel objects and page tables: never moved.
    Unmovable,
    /// User frames: their owner can move them, so compaction may.
    Movable,
}

/// Highest protection key. Key 0 is the default key, i.e. [`Protection::Mapped`].
pub const MAX_PKEY: u8 = 15;

/// How the direct map shows a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protection {
    /// Normal direct-map attributes (key 0).
    Mapped,
    /// Absent from the direct map (like secretmem): touched only through
    /// temporary mappings.
    Unmapped,
    /// Mapped with protection key `k` (1..=15).
    Pkey(u8),
}

impl Protection {
    /// `Pkey(key)` if `key` is a non-default key (1..=15).
    pub const fn pkey(key: u8) -> Option<Self> {
        if key >= 1 && key <= MAX_PKEY {
            Some(Self::Pkey(key))
        } else {
            None
        }
    }

    /// True if moving a frame's direct-map mapping from `self` to `to` takes
    /// permissions away, so stale TLB entries must be flushed.
    ///
    /// Only a change *from* `Unmapped` adds permissions alone: the CPU caches
    /// no translation for a not-present entry. A key change in either
    /// direction is treated as removing permissions: a TLB entry still
    /// holding the old key would raise spurious key faults, and the kernel
    /// does not count on handling those.
    pub fn needs_flush_to(self, to: Protection) -> bool {
        self != to && self != Protection::Unmapped
    }

    /// True if frames leaving this protection are zeroed first: the
    /// contents of `Unmapped` frames are secrets, those of key-protected
    /// ones (page tables) must not reappear as ordinary memory.
    pub const fn wiped_when_leaving(self) -> bool {
        !matches!(self, Self::Mapped)
    }

    fn index(self) -> usize {
        match self {
            Self::Mapped => 0,
            Self::Unmapped => 1,
            Self::Pkey(k) => 1 + k as usize,
        }
    }

    fn from_index(index: usize) -> Option<Self> {
        match index {
            0 => Some(Self::Mapped),
            1 => Some(Self::Unmapped),
            2..=16 => Self::pkey(index as u8 - 1),
            _ => None,
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mapped => write!(f, "mapped"),
            Self::Unmapped => write!(f, "unmapped"),
            Self::Pkey(k) => write!(f, "pkey{k}"),
        }
    }
}

const PROTECTIONS: usize = 2 + MAX_PKEY as usize;
const MOBILITIES: usize = 2;

/// Number of distinct freetypes.
pub const NR_FREETYPES: usize = PROTECTIONS * MOBILITIES;

/// A mobility class plus a protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Freetype {
    /// Grouping by lifetime.
    pub mobility: Mobility,
    /// Direct-map attributes of every frame of this freetype.
    pub protection: Protection,
}

impl Freetype {
    /// A freetype; `None` if the protection key is out of range.
    pub const fn new(mobility: Mobility, protection: Protection) -> Option<Self> {
        match protection {
            Protection::Pkey(k) if k == 0 || k > MAX_PKEY => None,
            _ => Some(Self {
                mobility,
                protection,
            }),
        }
    }

    /// Normal kernel memory.
    pub const KERNEL: Freetype = Freetype {
        mobility: Mobility::Unmovable,
        protection: Protection::Mapped,
    };

    /// Dense index in `0..NR_FREETYPES`, for per-freetype tables.
    pub fn index(self) -> usize {
        let mobility = match self.mobility {
            Mobility::Unmovable => 0,
            Mobility::Movable => 1,
        };
        mobility * PROTECTIONS + self.protection.index()
    }

    /// The freetype with the given [`index`](Self::index).
    pub fn from_index(index: usize) -> Option<Self> {
        let mobility = match index / PROTECTIONS {
            0 => Mobility::Unmovable,
            1 => Mobility::Movable,
            _ => return None,
        };
        Some(Self {
            mobility,
            protection: Protection::from_index(index % PROTECTIONS)?,
        })
    }

    /// Every freetype, in index order.
    pub fn all() -> impl Iterator<Item = Freetype> {
        (0..NR_FREETYPES).filter_map(Freetype::from_index)
    }
}

impl fmt::Display for Freetype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mobility = match self.mobility {
            Mobility::Unmovable => "unmovable",
            Mobility::Movable => "movable",
        };
        write!(f, "{mobility}/{}", self.protection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_for_every_freetype() {
        let all: std::vec::Vec<_> = Freetype::all().collect();
        assert_eq!(all.len(), NR_FREETYPES);
        for (i, ft) in all.iter().enumerate() {
            assert_eq!(ft.index(), i);
            assert_eq!(Freetype::from_index(i), Some(*ft));
        }
        assert_eq!(Freetype::from_index(NR_FREETYPES), None);
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(Protection::pkey(0), None);
        assert_eq!(Protection::pkey(16), None);
        assert_eq!(Protection::pkey(1), Some(Protection::Pkey(1)));
        assert_eq!(
            Freetype::new(Mobility::Unmovable, Protection::Pkey(0)),
            None
        );
    }

    #[test]
    fn flushes_only_when_permissions_shrink_or_keys_change() {
        use Protection::*;
        assert!(!Unmapped.needs_flush_to(Mapped));
        assert!(!Unmapped.needs_flush_to(Pkey(1)));
        assert!(Mapped.needs_flush_to(Unmapped));
        assert!(Mapped.needs_flush_to(Pkey(1)));
        assert!(Pkey(1).needs_flush_to(Mapped));
        assert!(!Mapped.needs_flush_to(Mapped));
    }
}
