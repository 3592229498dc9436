//! Resolving a capability pointer to a slot.
//!
//! From a root CNode cap, each level consumes the cap's guard (which must
//! match the pointer's next bits), then its radix bits as the index of a
//! slot. Resolution goes on into the next level while bits remain and the
//! slot holds a CNode cap. Every level consumes at least one bit (radix is
//! at least 1), so resolution ends, even through a CNode that holds a cap
//! to itself.

use core::ops::DerefMut;

use abi::{CPtr, Depth, LookupFailure};

use crate::cap::{Cap, SlotRef};
use crate::space::{CSpace, ObjectRecord, Slot};

/// `bits` bits of `word` from bit `shift` up; shifts of 64 give 0.
const fn field(word: u64, shift: u32, bits: u32) -> u64 {
    if bits == 0 {
        return 0;
    }
    let shifted = match word.checked_shr(shift) {
        Some(shifted) => shifted,
        None => 0,
    };
    if bits >= 64 {
        shifted
    } else {
        shifted & ((1 << bits) - 1)
    }
}

impl<M, R> CSpace<M, R>
where
    M: DerefMut<Target = [Slot]>,
    R: DerefMut<Target = [ObjectRecord<M>]>,
{
    /// Resolves the low `depth` bits of `cptr` from `root`, stopping early
    /// at a slot that holds no CNode cap: the slot reached and the bits
    /// left unresolved (0 when all were used). seL4's address resolution.
    pub fn resolve_partial(
        &self,
        root: &Cap,
        cptr: CPtr,
        depth: Depth,
    ) -> Result<(SlotRef, u8), LookupFailure> {
        let mut node = *root;
        let mut left = depth.bits() as u32;
        loop {
            let Cap::CNode {
                id,
                radix_bits,
                guard,
                guard_bits,
            } = node
            else {
                return Err(LookupFailure::InvalidRoot);
            };
            let (radix, guard_bits_32) = (radix_bits as u32, guard_bits as u32);
            if guard_bits_32 > left || field(cptr.0, left - guard_bits_32, guard_bits_32) != guard {
                return Err(LookupFailure::GuardMismatch {
                    bits_left: left as u8,
                    guard_found: guard,
                    guard_bits,
                });
            }
            let level = guard_bits_32 + radix;
            if level > left {
                return Err(LookupFailure::DepthMismatch {
                    bits_resolved: level as u8,
                    bits_left: left as u8,
                });
            }
            let index = field(cptr.0, left - level, radix) as u32;
            let at = SlotRef::new(id, index);
            // A CNode cap always names a live CNode of its radix; a stale
            // one would be a broken invariant, refused rather than
            // trusted.
            let slot = self.slot(at).ok_or(LookupFailure::InvalidRoot)?;
            left -= level;
            if left == 0 || !matches!(slot.cap, Cap::CNode { .. }) {
                return Ok((at, left as u8));
            }
            node = slot.cap;
        }
    }

    /// Resolves exactly `depth` bits of `cptr` from `root` to a slot, as a
    /// CNode operation names its slots. Bits left over at a slot without a
    /// CNode cap are `MissingCapability` if the slot is empty,
    /// `DepthMismatch` (with `bits_resolved` 0) if not.
    pub fn resolve(&self, root: &Cap, cptr: CPtr, depth: Depth) -> Result<SlotRef, LookupFailure> {
        let (at, bits_left) = self.resolve_partial(root, cptr, depth)?;
        if bits_left == 0 {
            return Ok(at);
        }
        Err(match self.cap(at) {
            Some(Cap::Null) | None => LookupFailure::MissingCapability { bits_left },
            Some(_) => LookupFailure::DepthMismatch {
                bits_resolved: 0,
                bits_left,
            },
        })
    }

    /// Looks up the cap `cptr` names from `root` at depth 64, as an
    /// invoked cap or an extra cap is: resolution may stop early at a slot
    /// that holds no CNode cap. An empty slot is `MissingCapability`.
    pub fn lookup(&self, root: &Cap, cptr: CPtr) -> Result<(SlotRef, Cap), LookupFailure> {
        let (at, bits_left) = self.resolve_partial(root, cptr, Depth::WORD)?;
        match self.cap(at) {
            Some(cap) if !cap.is_null() => Ok((at, cap)),
            _ => Err(LookupFailure::MissingCapability { bits_left }),
        }
    }
}
