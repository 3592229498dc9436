//! Capability rights, capability pointers and lookup depths.

use crate::DecodeError;

bitflags::bitflags! {
    /// What a capability allows. Only endpoint, notification and frame
    /// capabilities carry rights; a derived capability has at most its
    /// parent's. A byte, so that a capability stays small.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct CapRights: u8 {
        /// Send on an endpoint or notification; write a mapped frame.
        const WRITE = 1 << 0;
        /// Receive on an endpoint or notification; read a mapped frame.
        const READ = 1 << 1;
        /// Send capabilities along with a message.
        const GRANT = 1 << 2;
        /// Send only the reply capability along with a message (a `Call`).
        const GRANT_REPLY = 1 << 3;
    }
}

impl CapRights {
    /// The rights word from a message register, checked: unknown bits are
    /// refused, not ignored.
    pub const fn from_word(word: u64) -> Result<Self, DecodeError> {
        if word > u8::MAX as u64 {
            return Err(DecodeError::Rights(word));
        }
        match Self::from_bits(word as u8) {
            Some(rights) => Ok(rights),
            None => Err(DecodeError::Rights(word)),
        }
    }

    /// The word to put in a message register.
    pub const fn word(self) -> u64 {
        self.bits() as u64
    }
}

/// A capability pointer: the address of a slot in a thread's CSpace. A
/// lookup at depth `d` consumes the low `d` bits, most significant first;
/// bits above them are ignored. Invocations resolve it at depth 64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct CPtr(pub u64);

/// How many low bits of a [`CPtr`] a lookup consumes: 0 to 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Depth(u8);

impl Depth {
    /// All 64 bits: how invoked caps are looked up.
    pub const WORD: Depth = Depth(64);

    /// A depth from a message register, checked.
    pub const fn new(word: u64) -> Result<Self, DecodeError> {
        if word <= 64 {
            Ok(Depth(word as u8))
        } else {
            Err(DecodeError::Depth(word))
        }
    }

    /// The number of bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl TryFrom<u64> for Depth {
    type Error = DecodeError;

    fn try_from(word: u64) -> Result<Self, DecodeError> {
        Self::new(word)
    }
}

impl TryFrom<u64> for CapRights {
    type Error = DecodeError;

    fn try_from(word: u64) -> Result<Self, DecodeError> {
        Self::from_word(word)
    }
}
