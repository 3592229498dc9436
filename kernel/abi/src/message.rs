//! The message-info word and the IPC buffer.
//!
//! [`MessageInfo`] describes a message in one word:
//!
//! | bits | field | meaning |
//! |---|---|---|
//! | 63..12 | label | the invocation label, IPC label or reply error code |
//! | 11..9 | caps_unwrapped | which extra caps arrived as their badge only |
//! | 8..7 | extra_caps | how many caps the message carries (at most 3) |
//! | 6..0 | length | how many message words (at most 120) |
//!
//! A word decodes only if its length is at most [`MSG_MAX_LENGTH`] and its
//! unwrapped mask names no cap beyond `extra_caps`.

use crate::DecodeError;

/// Most message words one message carries.
pub const MSG_MAX_LENGTH: usize = 120;

/// Most capabilities one message carries besides the one invoked.
pub const MSG_MAX_EXTRA_CAPS: usize = 3;

/// Message words passed in registers (MR0..MR3); the rest are in the
/// [`IpcBuffer`].
pub const MSG_REGISTERS: usize = 4;

const LENGTH_BITS: u32 = 7;
const EXTRA_CAPS_BITS: u32 = 2;
const CAPS_UNWRAPPED_BITS: u32 = 3;
const LABEL_BITS: u32 = 52;

const EXTRA_CAPS_SHIFT: u32 = LENGTH_BITS;
const CAPS_UNWRAPPED_SHIFT: u32 = EXTRA_CAPS_SHIFT + EXTRA_CAPS_BITS;
const LABEL_SHIFT: u32 = CAPS_UNWRAPPED_SHIFT + CAPS_UNWRAPPED_BITS;

const _: () = assert!(LABEL_SHIFT == 12 && LABEL_SHIFT + LABEL_BITS == u64::BITS);
const _: () = assert!(MSG_MAX_LENGTH < 1 << LENGTH_BITS);
const _: () = assert!(MSG_MAX_EXTRA_CAPS < 1 << EXTRA_CAPS_BITS);
const _: () = assert!(MSG_MAX_EXTRA_CAPS == CAPS_UNWRAPPED_BITS as usize);

const fn mask(bits: u32) -> u64 {
    (1 << bits) - 1
}

/// The message-info word (layout in the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct MessageInfo(u64);

impl MessageInfo {
    /// Label 0, nothing else: a successful empty reply.
    pub const EMPTY: MessageInfo = MessageInfo(0);

    /// Largest label (52 bits).
    pub const MAX_LABEL: u64 = mask(LABEL_BITS);

    /// A message with these fields, checked.
    pub const fn new(
        label: u64,
        caps_unwrapped: u8,
        extra_caps: u8,
        length: u8,
    ) -> Result<Self, DecodeError> {
        if label > Self::MAX_LABEL {
            return Err(DecodeError::Label(label));
        }
        if length as usize > MSG_MAX_LENGTH {
            return Err(DecodeError::MessageLength(length as u64));
        }
        if extra_caps as usize > MSG_MAX_EXTRA_CAPS {
            return Err(DecodeError::ExtraCaps(extra_caps as u64));
        }
        // Only the caps the message carries can have been unwrapped.
        if caps_unwrapped as u64 >= 1 << extra_caps {
            return Err(DecodeError::CapsUnwrapped(caps_unwrapped as u64));
        }
        Ok(MessageInfo(
            label << LABEL_SHIFT
                | (caps_unwrapped as u64) << CAPS_UNWRAPPED_SHIFT
                | (extra_caps as u64) << EXTRA_CAPS_SHIFT
                | length as u64,
        ))
    }

    /// A message with only a label and a length (no caps), checked.
    pub const fn with_label(label: u64, length: u8) -> Result<Self, DecodeError> {
        Self::new(label, 0, 0, length)
    }

    /// The word as it sits in `rsi`/`rax`, checked.
    pub const fn from_word(word: u64) -> Result<Self, DecodeError> {
        let info = MessageInfo(word);
        Self::new(
            info.label(),
            info.caps_unwrapped(),
            info.extra_caps(),
            info.length(),
        )
    }

    /// The word to put in `rsi`/`rax`.
    pub const fn word(self) -> u64 {
        self.0
    }

    /// The label.
    pub const fn label(self) -> u64 {
        self.0 >> LABEL_SHIFT
    }

    /// Bit `n` set: extra cap `n` arrived unwrapped (as its badge).
    pub const fn caps_unwrapped(self) -> u8 {
        ((self.0 >> CAPS_UNWRAPPED_SHIFT) & mask(CAPS_UNWRAPPED_BITS)) as u8
    }

    /// How many extra caps the message carries.
    pub const fn extra_caps(self) -> u8 {
        ((self.0 >> EXTRA_CAPS_SHIFT) & mask(EXTRA_CAPS_BITS)) as u8
    }

    /// How many message words the message carries.
    pub const fn length(self) -> u8 {
        (self.0 & mask(LENGTH_BITS)) as u8
    }
}

impl core::fmt::Debug for MessageInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MessageInfo")
            .field("label", &self.label())
            .field("caps_unwrapped", &self.caps_unwrapped())
            .field("extra_caps", &self.extra_caps())
            .field("length", &self.length())
            .finish()
    }
}

/// The IPC buffer: one per thread, in a frame the thread has mapped, at an
/// address aligned to its size (`1 << IPC_BUFFER_SIZE_BITS`).
///
/// `msg[n]` is message word MRn; `msg[0..4]` shadow the registers and are
/// not read by the kernel. The receive fields say where a received cap goes
/// (a CNode, an index in it and a depth, as for a CNode operation).
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct IpcBuffer {
    /// The message-info word of the last message.
    pub tag: u64,
    /// Message words MR0..MR119.
    pub msg: [u64; MSG_MAX_LENGTH],
    /// Free for the user library (conventionally: the buffer's own address).
    pub user_data: u64,
    /// On send: CPtrs of the extra caps. On receive: the badges of the caps
    /// that arrived unwrapped.
    pub caps_or_badges: [u64; MSG_MAX_EXTRA_CAPS],
    /// CPtr of the CNode a received cap goes to.
    pub receive_cnode: u64,
    /// Index of the slot a received cap goes to, within `receive_cnode`.
    pub receive_index: u64,
    /// Depth at which `receive_index` is resolved.
    pub receive_depth: u64,
}

/// log2 of the IPC buffer's size (and of its alignment).
pub const IPC_BUFFER_SIZE_BITS: u8 = 10;

const _: () = assert!(core::mem::size_of::<IpcBuffer>() == 1 << IPC_BUFFER_SIZE_BITS);
const _: () = assert!(core::mem::size_of::<IpcBuffer>() <= 4096);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, msg) == 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, user_data) == 8 + 8 * MSG_MAX_LENGTH);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, receive_depth) == 1016);

impl IpcBuffer {
    /// An all-zero buffer.
    pub const fn new() -> Self {
        IpcBuffer {
            tag: 0,
            msg: [0; MSG_MAX_LENGTH],
            user_data: 0,
            caps_or_badges: [0; MSG_MAX_EXTRA_CAPS],
            receive_cnode: 0,
            receive_index: 0,
            receive_depth: 0,
        }
    }

    /// The tag as a checked [`MessageInfo`].
    pub const fn info(&self) -> Result<MessageInfo, DecodeError> {
        MessageInfo::from_word(self.tag)
    }
}

impl Default for IpcBuffer {
    fn default() -> Self {
        Self::new()
    }
}
