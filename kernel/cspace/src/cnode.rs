//! CNode invocations, from message words to the operation performed.
//!
//! [`CNodeOp::decode`] checks the message (length, extra caps, depths,
//! rights word) without looking at the CSpace; [`CSpace::invoke_cnode`]
//! resolves the slots and performs the operation, which checks the rest
//! first. The argument layout is `abi::InvocationLabel`'s.

use core::ops::DerefMut;

use abi::{CPtr, CapRights, Depth, Error, InvocationLabel, LookupFailure};

use crate::cap::{Cap, SlotRef};
use crate::ops::CapData;
use crate::space::{CSpace, Finalise, ObjectRecord, Slot};

/// A slot named by index and depth, from some CNode cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The index, resolved from the low `depth` bits down.
    pub index: CPtr,
    /// How many bits; 1..=64 for a CNode operation.
    pub depth: Depth,
}

/// A decoded CNode invocation. Destination and target paths are resolved
/// from the invoked CNode cap, sources from `src_root` (extra cap 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CNodeOp {
    /// `CNodeCopy`.
    Copy {
        /// MR0, MR1.
        dest: Path,
        /// Extra cap 0.
        src_root: Cap,
        /// MR2, MR3.
        src: Path,
        /// MR4.
        rights: CapRights,
    },
    /// `CNodeMint`.
    Mint {
        /// MR0, MR1.
        dest: Path,
        /// Extra cap 0.
        src_root: Cap,
        /// MR2, MR3.
        src: Path,
        /// MR4.
        rights: CapRights,
        /// MR5: badge or guard data.
        data: u64,
    },
    /// `CNodeMove`.
    Move {
        /// MR0, MR1.
        dest: Path,
        /// Extra cap 0.
        src_root: Cap,
        /// MR2, MR3.
        src: Path,
    },
    /// `CNodeMutate`.
    Mutate {
        /// MR0, MR1.
        dest: Path,
        /// Extra cap 0.
        src_root: Cap,
        /// MR2, MR3.
        src: Path,
        /// MR4: badge or guard data.
        data: u64,
    },
    /// `CNodeDelete`.
    Delete {
        /// MR0, MR1.
        target: Path,
    },
    /// `CNodeRevoke`.
    Revoke {
        /// MR0, MR1.
        target: Path,
    },
}

/// Message index of the rights word (copy, mint).
const RIGHTS: usize = 4;
/// Message index of mint's data word.
const MINT_DATA: u8 = 5;
/// Message index of mutate's data word.
const MUTATE_DATA: u8 = 4;

/// The path in message words `at` (index) and `at + 1` (depth), the depth
/// checked to be 1..=64.
fn path(args: &[u64], at: usize) -> Result<Path, Error> {
    let depth = args[at + 1];
    let range = Error::RangeError { min: 1, max: 64 };
    let depth = Depth::new(depth).map_err(|_| range)?;
    if depth.bits() == 0 {
        return Err(range);
    }
    Ok(Path {
        index: CPtr(args[at]),
        depth,
    })
}

impl CNodeOp {
    /// Decodes a CNode invocation: `args` are its message words, `extra`
    /// the caps its extra-cap CPtrs named (looked up by the kernel). A
    /// label that is no CNode operation is `IllegalOperation`.
    pub fn decode(label: InvocationLabel, args: &[u64], extra: &[Cap]) -> Result<Self, Error> {
        use InvocationLabel::*;
        let (words, caps) = match label {
            CNodeCopy => (5, 1),
            CNodeMint => (6, 1),
            CNodeMove => (4, 1),
            CNodeMutate => (5, 1),
            CNodeDelete | CNodeRevoke => (2, 0),
            _ => return Err(Error::IllegalOperation),
        };
        if args.len() < words || extra.len() < caps {
            return Err(Error::TruncatedMessage);
        }
        let first = path(args, 0)?;
        if caps == 0 {
            return Ok(if label == CNodeDelete {
                CNodeOp::Delete { target: first }
            } else {
                CNodeOp::Revoke { target: first }
            });
        }
        let (dest, src_root, src) = (first, extra[0], path(args, 2)?);
        let rights = || {
            CapRights::from_word(args[RIGHTS]).map_err(|_| Error::InvalidArgument {
                index: RIGHTS as u8,
            })
        };
        Ok(match label {
            CNodeCopy => CNodeOp::Copy {
                dest,
                src_root,
                src,
                rights: rights()?,
            },
            CNodeMint => CNodeOp::Mint {
                dest,
                src_root,
                src,
                rights: rights()?,
                data: args[MINT_DATA as usize],
            },
            CNodeMove => CNodeOp::Move {
                dest,
                src_root,
                src,
            },
            _ => CNodeOp::Mutate {
                dest,
                src_root,
                src,
                data: args[MUTATE_DATA as usize],
            },
        })
    }
}

impl<M, R> CSpace<M, R>
where
    M: DerefMut<Target = [Slot]>,
    R: DerefMut<Target = [ObjectRecord<M>]>,
{
    /// Performs a decoded CNode invocation on the CNode `cnode` (the
    /// invoked cap). Lookups fail as `FailedLookup`, with `source` set for
    /// the source slot; then the operation's own checks apply. Nothing
    /// changes on `Err`.
    pub fn invoke_cnode<F: Finalise<M>>(
        &mut self,
        cnode: &Cap,
        op: CNodeOp,
        fin: &mut F,
    ) -> Result<(), Error> {
        let find = |space: &Self, root: &Cap, path: Path, source: bool| {
            space
                .resolve(root, path.index, path.depth)
                .map_err(|failure: LookupFailure| Error::FailedLookup { source, failure })
        };
        let pair = |space: &Self, dest: Path, src_root: &Cap, src: Path| {
            Ok::<(SlotRef, SlotRef), Error>((
                find(space, cnode, dest, false)?,
                find(space, src_root, src, true)?,
            ))
        };
        match op {
            CNodeOp::Copy {
                dest,
                src_root,
                src,
                rights,
            } => {
                let (dest, src) = pair(self, dest, &src_root, src)?;
                self.copy(src, dest, rights)
            }
            CNodeOp::Mint {
                dest,
                src_root,
                src,
                rights,
                data,
            } => {
                let (dest, src) = pair(self, dest, &src_root, src)?;
                let data = CapData {
                    word: data,
                    index: MINT_DATA,
                };
                self.mint(src, dest, rights, data)
            }
            CNodeOp::Move {
                dest,
                src_root,
                src,
            } => {
                let (dest, src) = pair(self, dest, &src_root, src)?;
                self.move_cap(src, dest)
            }
            CNodeOp::Mutate {
                dest,
                src_root,
                src,
                data,
            } => {
                let (dest, src) = pair(self, dest, &src_root, src)?;
                let data = CapData {
                    word: data,
                    index: MUTATE_DATA,
                };
                self.mutate(src, dest, data)
            }
            CNodeOp::Delete { target } => {
                let target = find(self, cnode, target, false)?;
                self.delete(target, fin)
            }
            CNodeOp::Revoke { target } => {
                let target = find(self, cnode, target, false)?;
                self.revoke(target, fin)
            }
        }
    }
}
