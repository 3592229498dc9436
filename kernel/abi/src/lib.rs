//! The kernel/user ABI: every number and layout a user program and the
//! kernel must agree on, in one crate both build against.
//!
//! What this crate owns and promises:
//! - [`Syscall`]: the system call numbers and the register convention
//!   (documented there);
//! - [`MessageInfo`]: the message-info word (label, unwrapped caps, extra
//!   caps, length), whose layout is pinned by compile-time asserts;
//! - [`IpcBuffer`]: the per-thread IPC buffer, `#[repr(C)]`, 1 KiB;
//! - [`Error`] and [`LookupFailure`]: the typed syscall errors and their
//!   stable encoding into a reply (table in [`error`]);
//! - [`InvocationLabel`]: which operation an invocation of a kernel
//!   object asks for, each documented with its message registers and
//!   extra caps; [`GuardData`], [`MapAttributes`] and [`UserContext`]
//!   are the argument formats those invocations use;
//! - [`ObjectType`] and [`RetypeFlags`]: what Untyped retype makes, and
//!   how much of the Untyped budget each object is charged;
//! - [`CapRights`], [`CPtr`], [`Depth`]: capability rights and addresses;
//! - [`BootInfo`] and [`InitCap`]: what the root task is given at start.
//!
//! Every conversion from a raw word is checked: a bad word is refused with
//! a typed [`DecodeError`], never a panic and never a silent truncation.
//! The crate knows nothing of the kernel's objects and has no `unsafe`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// An enum with a `u64` representation, a checked `TryFrom<u64>` and the
/// list of all its values: syscall numbers, invocation labels and object
/// types are all numbers users pass in registers.
macro_rules! numbered {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident / $error:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u64)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in numbering order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The number that stands for this value in a register.
            pub const fn number(self) -> u64 {
                self as u64
            }
        }

        impl TryFrom<u64> for $name {
            type Error = DecodeError;

            fn try_from(word: u64) -> Result<Self, DecodeError> {
                $(if word == $value {
                    return Ok($name::$variant);
                })+
                Err(DecodeError::$error(word))
            }
        }

        impl From<$name> for u64 {
            fn from(value: $name) -> u64 {
                value as u64
            }
        }
    };
}

pub mod bootinfo;
pub mod error;
pub mod invocation;
pub mod message;
pub mod object;
pub mod rights;
pub mod syscall;

pub use bootinfo::{BootInfo, FIRST_UNTYPED_SLOT, InitCap, MAX_BOOT_UNTYPED, SlotRegion};
pub use error::{EncodedError, Error, LookupFailure};
pub use invocation::{GuardData, InvocationLabel, InvocationTarget, MapAttributes, UserContext};
pub use message::{
    IPC_BUFFER_SIZE_BITS, IpcBuffer, MSG_MAX_EXTRA_CAPS, MSG_MAX_LENGTH, MSG_REGISTERS, MessageInfo,
};
pub use object::{ObjectType, RetypeFlags};
pub use rights::{CPtr, CapRights, Depth};
pub use syscall::Syscall;

/// Why a raw word was refused. Each variant carries the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No [`Syscall`] has this number.
    Syscall(u64),
    /// No [`InvocationLabel`] has this number.
    InvocationLabel(u64),
    /// No [`ObjectType`] has this number.
    ObjectType(u64),
    /// No [`Error`] has this code (0, success, is not an error either).
    ErrorCode(u64),
    /// An [`Error`] reply has the wrong number of message words.
    ErrorLength {
        /// Words the code's variant takes.
        expected: u8,
        /// Words the reply has.
        found: usize,
    },
    /// A message word of an [`Error`] reply is out of its range.
    ErrorWord {
        /// Which message word (0 = MR0).
        index: u8,
        /// Its value.
        value: u64,
    },
    /// A message length above [`MSG_MAX_LENGTH`].
    MessageLength(u64),
    /// More extra caps than [`MSG_MAX_EXTRA_CAPS`].
    ExtraCaps(u64),
    /// An unwrapped-caps mask naming a cap the message does not carry.
    CapsUnwrapped(u64),
    /// A label of 2^52 or more.
    Label(u64),
    /// A rights word with bits no [`CapRights`] flag has.
    Rights(u64),
    /// A CNode depth above 64.
    Depth(u64),
    /// A guard word whose guard does not fit its size.
    GuardData(u64),
    /// A retype flags word with unknown bits.
    RetypeFlags(u64),
    /// A map attributes word with unknown bits.
    MapAttributes(u64),
    /// A boot-info frame without the expected magic and version.
    BootInfoMagic(u64),
    /// A boot-info frame whose slot regions or counts are inconsistent.
    BootInfoLayout,
}
