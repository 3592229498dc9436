//! Typed syscall errors and their encoding into a reply.
//!
//! A failed invocation replies with the error's code as the message label
//! and its fields in message words, the length saying how many. The codes
//! are stable (they are seL4's numbering, 0 being success):
//!
//! | code | error | MR0 | MR1 | MR2 | MR3 |
//! |---|---|---|---|---|---|
//! | 1 | `InvalidArgument` | index | | | |
//! | 2 | `InvalidCapability` | index | | | |
//! | 3 | `IllegalOperation` | | | | |
//! | 4 | `RangeError` | min | max | | |
//! | 5 | `AlignmentError` | | | | |
//! | 6 | `FailedLookup` | failure kind, +0x100 if source | (failure fields) | | |
//! | 7 | `TruncatedMessage` | | | | |
//! | 8 | `DeleteFirst` | | | | |
//! | 9 | `RevokeFirst` | | | | |
//! | 10 | `NotEnoughMemory` | bytes_available | | | |
//!
//! A `FailedLookup` packs the failure's kind and the source flag into MR0
//! so that the largest failure still fits the four message registers:
//!
//! | kind | failure | MR1 | MR2 | MR3 |
//! |---|---|---|---|---|
//! | 1 | `InvalidRoot` | | | |
//! | 2 | `MissingCapability` | bits_left | | |
//! | 3 | `DepthMismatch` | bits_resolved | bits_left | |
//! | 4 | `GuardMismatch` | bits_left | guard_found | guard_bits |
//!
//! Decoding is strict: an unknown code or kind, a word count other than
//! the variant's, an index above 255, a bit count above 64 or a stray bit
//! in MR0 of a `FailedLookup` is refused with a [`DecodeError`]. Every
//! error whose fields are in those ranges survives encode then decode.

use crate::{DecodeError, MSG_REGISTERS, MessageInfo};

/// Why a syscall failed. Nothing changed: the kernel decodes and checks
/// an invocation completely before it performs any of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// Message word `index` is not acceptable for this invocation.
    InvalidArgument {
        /// Which message word (0 = MR0).
        index: u8,
    },
    /// A capability is of the wrong type, lacks a right or is in the
    /// wrong state: the invoked one (`index` 0) or extra cap `index - 1`.
    InvalidCapability {
        /// Which capability: 0 the invoked one, n + 1 extra cap n.
        index: u8,
    },
    /// The invoked object cannot do this (wrong label for its type, or a
    /// cap that cannot be derived, badged or unmapped this way).
    IllegalOperation,
    /// A number argument is outside `min..=max`.
    RangeError {
        /// Smallest acceptable value.
        min: u64,
        /// Largest acceptable value.
        max: u64,
    },
    /// An address is not aligned as the operation needs.
    AlignmentError,
    /// Looking up a capability or slot named by the message failed.
    FailedLookup {
        /// True if the failed lookup was the source of a CNode operation,
        /// false if it was the destination or the only slot.
        source: bool,
        /// Where and why resolution stopped.
        failure: LookupFailure,
    },
    /// The message is shorter, or has fewer extra caps, than the
    /// invocation needs.
    TruncatedMessage,
    /// The destination slot is not empty.
    DeleteFirst,
    /// The object still has derived capabilities that must be revoked
    /// first.
    RevokeFirst,
    /// The Untyped budget has fewer bytes left than the objects need.
    NotEnoughMemory {
        /// Bytes the budget has left.
        bytes_available: u64,
    },
}

/// Why resolving a capability pointer failed, with seL4's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LookupFailure {
    /// The root capability is not a CNode capability.
    InvalidRoot,
    /// Resolution reached an empty slot (with `bits_left` bits of the
    /// pointer still unresolved; 0 if the slot was the one named).
    MissingCapability {
        /// Bits not yet resolved (0..=64).
        bits_left: u8,
    },
    /// The remaining depth does not match the CNodes on the way: a level
    /// needed more bits than were left, or bits were left over at a slot
    /// that holds no CNode.
    DepthMismatch {
        /// Bits the failing level would resolve (0 if bits were left over).
        bits_resolved: u8,
        /// Bits left to resolve (0..=64).
        bits_left: u8,
    },
    /// A CNode's guard does not match the pointer's next bits.
    GuardMismatch {
        /// Bits left to resolve at that CNode (0..=64).
        bits_left: u8,
        /// The CNode capability's guard.
        guard_found: u64,
        /// The CNode capability's guard size in bits (0..=64).
        guard_bits: u8,
    },
}

/// An [`Error`] as the label and message words of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedError {
    /// The reply's label: the error code (never 0).
    pub code: u64,
    /// MR0..MR3; words past `length` are 0.
    pub words: [u64; MSG_REGISTERS],
    /// How many of `words` the error uses.
    pub length: u8,
}

impl EncodedError {
    /// The reply's message-info word.
    pub const fn info(&self) -> MessageInfo {
        // Codes are small and lengths at most 4: always a valid word.
        match MessageInfo::with_label(self.code, self.length) {
            Ok(info) => info,
            Err(_) => MessageInfo::EMPTY,
        }
    }

    /// The words the error uses.
    pub fn used(&self) -> &[u64] {
        &self.words[..self.length as usize]
    }
}

const SOURCE_FLAG: u64 = 0x100;
const KIND_MASK: u64 = 0xff;

impl Error {
    /// `InvalidArgument` code.
    pub const INVALID_ARGUMENT: u64 = 1;
    /// `InvalidCapability` code.
    pub const INVALID_CAPABILITY: u64 = 2;
    /// `IllegalOperation` code.
    pub const ILLEGAL_OPERATION: u64 = 3;
    /// `RangeError` code.
    pub const RANGE_ERROR: u64 = 4;
    /// `AlignmentError` code.
    pub const ALIGNMENT_ERROR: u64 = 5;
    /// `FailedLookup` code.
    pub const FAILED_LOOKUP: u64 = 6;
    /// `TruncatedMessage` code.
    pub const TRUNCATED_MESSAGE: u64 = 7;
    /// `DeleteFirst` code.
    pub const DELETE_FIRST: u64 = 8;
    /// `RevokeFirst` code.
    pub const REVOKE_FIRST: u64 = 9;
    /// `NotEnoughMemory` code.
    pub const NOT_ENOUGH_MEMORY: u64 = 10;

    /// The error's code: the reply label.
    pub const fn code(&self) -> u64 {
        match self {
            Error::InvalidArgument { .. } => Self::INVALID_ARGUMENT,
            Error::InvalidCapability { .. } => Self::INVALID_CAPABILITY,
            Error::IllegalOperation => Self::ILLEGAL_OPERATION,
            Error::RangeError { .. } => Self::RANGE_ERROR,
            Error::AlignmentError => Self::ALIGNMENT_ERROR,
            Error::FailedLookup { .. } => Self::FAILED_LOOKUP,
            Error::TruncatedMessage => Self::TRUNCATED_MESSAGE,
            Error::DeleteFirst => Self::DELETE_FIRST,
            Error::RevokeFirst => Self::REVOKE_FIRST,
            Error::NotEnoughMemory { .. } => Self::NOT_ENOUGH_MEMORY,
        }
    }

    /// The reply's label and message words (table in the module doc).
    pub const fn encode(&self) -> EncodedError {
        let (words, length) = match *self {
            Error::InvalidArgument { index } | Error::InvalidCapability { index } => {
                ([index as u64, 0, 0, 0], 1)
            }
            Error::RangeError { min, max } => ([min, max, 0, 0], 2),
            Error::NotEnoughMemory { bytes_available } => ([bytes_available, 0, 0, 0], 1),
            Error::FailedLookup { source, failure } => {
                let flag = if source { SOURCE_FLAG } else { 0 };
                match failure {
                    LookupFailure::InvalidRoot => ([1 | flag, 0, 0, 0], 1),
                    LookupFailure::MissingCapability { bits_left } => {
                        ([2 | flag, bits_left as u64, 0, 0], 2)
                    }
                    LookupFailure::DepthMismatch {
                        bits_resolved,
                        bits_left,
                    } => ([3 | flag, bits_resolved as u64, bits_left as u64, 0], 3),
                    LookupFailure::GuardMismatch {
                        bits_left,
                        guard_found,
                        guard_bits,
                    } => (
                        [4 | flag, bits_left as u64, guard_found, guard_bits as u64],
                        4,
                    ),
                }
            }
            Error::IllegalOperation
            | Error::AlignmentError
            | Error::TruncatedMessage
            | Error::DeleteFirst
            | Error::RevokeFirst => ([0; MSG_REGISTERS], 0),
        };
        EncodedError {
            code: self.code(),
            words,
            length,
        }
    }

    /// The error a reply with label `code` and message words `words`
    /// stands for, checked (see the module doc).
    pub fn decode(code: u64, words: &[u64]) -> Result<Error, DecodeError> {
        let expect = |length: u8| {
            if words.len() == length as usize {
                Ok(())
            } else {
                Err(DecodeError::ErrorLength {
                    expected: length,
                    found: words.len(),
                })
            }
        };
        let index = |at: u8| -> Result<u8, DecodeError> {
            let value = words[at as usize];
            u8::try_from(value).map_err(|_| DecodeError::ErrorWord { index: at, value })
        };
        let bits = |at: u8| -> Result<u8, DecodeError> {
            let value = words[at as usize];
            if value <= 64 {
                Ok(value as u8)
            } else {
                Err(DecodeError::ErrorWord { index: at, value })
            }
        };
        let error = match code {
            Self::INVALID_ARGUMENT => {
                expect(1)?;
                Error::InvalidArgument { index: index(0)? }
            }
            Self::INVALID_CAPABILITY => {
                expect(1)?;
                Error::InvalidCapability { index: index(0)? }
            }
            Self::RANGE_ERROR => {
                expect(2)?;
                Error::RangeError {
                    min: words[0],
                    max: words[1],
                }
            }
            Self::NOT_ENOUGH_MEMORY => {
                expect(1)?;
                Error::NotEnoughMemory {
                    bytes_available: words[0],
                }
            }
            Self::FAILED_LOOKUP => {
                let head = words.first().copied().ok_or(DecodeError::ErrorLength {
                    expected: 1,
                    found: 0,
                })?;
                if head & !(KIND_MASK | SOURCE_FLAG) != 0 {
                    return Err(DecodeError::ErrorWord {
                        index: 0,
                        value: head,
                    });
                }
                let source = head & SOURCE_FLAG != 0;
                let failure = match head & KIND_MASK {
                    1 => {
                        expect(1)?;
                        LookupFailure::InvalidRoot
                    }
                    2 => {
                        expect(2)?;
                        LookupFailure::MissingCapability {
                            bits_left: bits(1)?,
                        }
                    }
                    3 => {
                        expect(3)?;
                        LookupFailure::DepthMismatch {
                            bits_resolved: bits(1)?,
                            bits_left: bits(2)?,
                        }
                    }
                    4 => {
                        expect(4)?;
                        LookupFailure::GuardMismatch {
                            bits_left: bits(1)?,
                            guard_found: words[2],
                            guard_bits: bits(3)?,
                        }
                    }
                    _ => {
                        return Err(DecodeError::ErrorWord {
                            index: 0,
                            value: head,
                        });
                    }
                };
                Error::FailedLookup { source, failure }
            }
            Self::ILLEGAL_OPERATION => {
                expect(0)?;
                Error::IllegalOperation
            }
            Self::ALIGNMENT_ERROR => {
                expect(0)?;
                Error::AlignmentError
            }
            Self::TRUNCATED_MESSAGE => {
                expect(0)?;
                Error::TruncatedMessage
            }
            Self::DELETE_FIRST => {
                expect(0)?;
                Error::DeleteFirst
            }
            Self::REVOKE_FIRST => {
                expect(0)?;
                Error::RevokeFirst
            }
            _ => return Err(DecodeError::ErrorCode(code)),
        };
        Ok(error)
    }

    /// What a reply to an invocation says: `Ok(())` for label 0, else the
    /// error its label and the first `length` of `mrs` encode. Replies of
    /// more than four words are refused: no error has that many.
    pub fn from_reply(
        info: MessageInfo,
        mrs: &[u64; MSG_REGISTERS],
    ) -> Result<Result<(), Error>, DecodeError> {
        if info.label() == 0 {
            return Ok(Ok(()));
        }
        let length = info.length() as usize;
        if length > MSG_REGISTERS {
            return Err(DecodeError::ErrorLength {
                expected: MSG_REGISTERS as u8,
                found: length,
            });
        }
        Error::decode(info.label(), &mrs[..length]).map(Err)
    }
}

impl From<LookupFailure> for Error {
    /// A failed lookup of the destination (or only) slot.
    fn from(failure: LookupFailure) -> Self {
        Error::FailedLookup {
            source: false,
            failure,
        }
    }
}
