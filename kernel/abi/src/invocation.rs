//! Invocation labels and the argument formats of invocations.
//!
//! An invocation is a `Call` on a capability to a kernel object, with an
//! [`InvocationLabel`] as the message label. Each label's documentation
//! lists its arguments: message words (MR0.. in the registers, then the
//! IPC buffer) and extra caps (CPtrs in `caps_or_badges`, looked up at
//! depth 64). A message shorter than listed, or with fewer extra caps, is
//! `TruncatedMessage`; longer is fine (the rest is ignored). A label
//! invoked on the wrong type of object is `IllegalOperation`. Unless a
//! label says otherwise, a word argument out of its range is
//! `InvalidArgument { index }` with the word's index, a wrong extra cap
//! `InvalidCapability { index }` with the cap's number plus one, and a
//! failed slot lookup `FailedLookup`.
//!
//! CNode operations address slots by a (CNode, index, depth) triple: the
//! index is resolved from the CNode capability at exactly `depth` bits,
//! which must be 1..=64 (`RangeError { min: 1, max: 64 }`). The
//! destination of a copy, mint, move or mutate must be empty
//! (`DeleteFirst`); its source must not be (`FailedLookup` with `source`).

use crate::{DecodeError, ObjectType};

numbered! {
    /// Which operation an invocation asks of the invoked object.
    pub enum InvocationLabel / InvocationLabel {
        /// Untyped: make objects and put their caps in empty slots.
        /// - MR0: the [`ObjectType`] number.
        /// - MR1: size argument: budget size bits for an Untyped, radix
        ///   for a CNode, ignored otherwise ([`ObjectType::size_bits`]).
        /// - MR2: [`RetypeFlags`](crate::RetypeFlags).
        /// - MR3: index of the destination CNode, from extra cap 0.
        /// - MR4: depth of that lookup; 0 means extra cap 0 itself is the
        ///   destination CNode.
        /// - MR5: first destination slot in that CNode.
        /// - MR6: how many objects (1..=256); every destination slot must
        ///   be in the CNode (`RangeError`) and empty (`DeleteFirst`).
        /// - Extra cap 0: the CNode the destination is looked up from.
        ///
        /// The budget is charged `count << size_bits` bytes
        /// (`NotEnoughMemory` if it has less). New caps are children of the
        /// invoked Untyped cap.
        UntypedRetype = 1,
        /// CNode: copy a cap, with at most the given rights; the copy keeps
        /// the badge or guard and is a child of the source.
        /// - MR0, MR1: destination index and depth, from the invoked CNode.
        /// - MR2, MR3: source index and depth, from extra cap 0.
        /// - MR4: [`CapRights`](crate::CapRights) mask.
        /// - Extra cap 0: the CNode the source is looked up from.
        ///
        /// A copied frame cap is unmapped. A page-table cap (PT, PD, PDPT)
        /// can be copied only while mapped (`IllegalOperation`), so one
        /// table is never mapped twice.
        CNodeCopy = 2,
        /// CNode: copy a cap with at most the given rights and new data:
        /// a badge for an endpoint or notification (set only on an
        /// unbadged cap, else `IllegalOperation`; 0 leaves the badge as
        /// it is), a guard ([`GuardData`]) for a CNode; for any other cap
        /// the data must be 0.
        /// - MR0..MR4: as `CNodeCopy`.
        /// - MR5: the badge or guard data.
        /// - Extra cap 0: as `CNodeCopy`.
        CNodeMint = 3,
        /// CNode: move a cap to an empty slot; it keeps its place in the
        /// derivation tree (its parent and children).
        /// - MR0..MR3: as `CNodeCopy`.
        /// - Extra cap 0: as `CNodeCopy`.
        CNodeMove = 4,
        /// CNode: move a cap and change its data on the way: a CNode cap
        /// gets the guard in MR4; an endpoint or notification cap with no
        /// badge and no children may get the badge in MR4 (0: keep the
        /// cap as it is; otherwise `IllegalOperation`); for any other cap
        /// MR4 must be 0.
        /// - MR0..MR3: as `CNodeCopy`.
        /// - MR4: badge or guard data.
        /// - Extra cap 0: as `CNodeCopy`.
        CNodeMutate = 5,
        /// CNode: empty a slot. Its children move up to its parent; if it
        /// was the last cap to its object, the object is destroyed and its
        /// charge refunded. An empty slot is fine.
        /// - MR0, MR1: index and depth, from the invoked CNode.
        CNodeDelete = 6,
        /// CNode: delete every cap derived from the cap in a slot (its
        /// descendants), not the cap itself. Revoking an Untyped cap
        /// destroys every object made from it and refunds the budget.
        /// - MR0, MR1: index and depth, from the invoked CNode.
        CNodeRevoke = 7,
        /// TCB: set the thread's CSpace, VSpace and IPC buffer at once
        /// (each as the labels below).
        /// - MR0: [`GuardData`] for the CSpace root cap (0: no guard).
        /// - MR1: IPC buffer address (0: no IPC buffer; extra cap 2 is
        ///   then not needed).
        /// - Extra cap 0: the CSpace root CNode.
        /// - Extra cap 1: the VSpace root (a PML4).
        /// - Extra cap 2: the IPC buffer's frame.
        TcbConfigure = 8,
        /// TCB: set the scheduling priority.
        /// - MR0: the priority, 0..=255, at most the authority's maximum
        ///   controlled priority (`RangeError`).
        /// - Extra cap 0: the authority TCB.
        TcbSetPriority = 9,
        /// TCB: set the IPC buffer.
        /// - MR0: its user address, aligned to the buffer's size
        ///   (`AlignmentError`). The kernel reaches the buffer through the
        ///   frame, at this address's offset in it.
        /// - Extra cap 0: the frame that holds it (with READ and WRITE,
        ///   else `InvalidCapability { index: 1 }`). The TCB keeps a copy
        ///   of the cap.
        TcbSetIpcBuffer = 10,
        /// TCB: set the CSpace and VSpace. The TCB keeps copies of the two
        /// caps (children of them).
        /// - MR0: [`GuardData`] for the CSpace root cap (0: no guard).
        /// - Extra cap 0: the CSpace root CNode.
        /// - Extra cap 1: the VSpace root (a PML4).
        TcbSetSpace = 11,
        /// TCB: read the (suspended) thread's registers. The reply carries
        /// `count` words of [`UserContext`], in its field order.
        /// - MR0: flags, bit 0: suspend the thread first; other bits 0.
        /// - MR1: count, 1..=[`UserContext::WORDS`] (`RangeError`).
        TcbReadRegisters = 12,
        /// TCB: write the first `count` words of the thread's
        /// [`UserContext`]. `rflags` keeps the kernel's fixed bits.
        /// - MR0: flags, bit 0: resume the thread afterwards; other bits 0.
        /// - MR1: count, 1..=[`UserContext::WORDS`] (`RangeError`).
        /// - MR2..: the words.
        TcbWriteRegisters = 13,
        /// TCB: make the thread runnable. No arguments.
        TcbResume = 14,
        /// TCB: stop the thread. No arguments.
        TcbSuspend = 15,
        /// Frame: map into a VSpace. The cap records the mapping; a cap
        /// that is already mapped is `InvalidCapability { index: 0 }`.
        /// - MR0: virtual address, aligned to the frame's size
        ///   (`AlignmentError`), in the user half.
        /// - MR1: [`CapRights`](crate::CapRights) of the mapping, cut to
        ///   the cap's; it must include READ (x86 has no write-only page).
        /// - MR2: [`MapAttributes`]; WRITE with EXECUTE is refused
        ///   (`InvalidArgument { index: 2 }`).
        /// - Extra cap 0: the VSpace (a PML4). The page tables the
        ///   address needs must already be mapped (`FailedLookup`,
        ///   `MissingCapability` with the missing level's bits left).
        FrameMap = 16,
        /// Frame: remove the cap's mapping; an unmapped cap is fine. No
        /// arguments.
        FrameUnmap = 17,
        /// Frame: the reply's MR0 is the frame's physical address. No
        /// arguments.
        FrameGetAddress = 18,
        /// Page table, page directory or PDPT (the object's type says the
        /// level): map into a VSpace.
        /// - MR0: virtual address, aligned to the region the table covers
        ///   (`AlignmentError`), in the user half; the level above must be
        ///   mapped, this one empty (`DeleteFirst`).
        /// - MR1: attributes, must be 0 (none are defined yet).
        /// - Extra cap 0: the VSpace (a PML4).
        ///
        /// A table mapped already is `InvalidCapability { index: 0 }`.
        /// Only the table's last cap can map it (`RevokeFirst`): a table is
        /// copied only while mapped, and its copies survive it being
        /// unmapped only when its VSpace is destroyed. On a PML4:
        /// `IllegalOperation` (it is a root, not mapped).
        PageTableMap = 19,
        /// Page table, page directory or PDPT: unmap. Only its last cap
        /// can (`RevokeFirst`); an unmapped table is fine. No arguments.
        PageTableUnmap = 20,
    }
}

/// The kind of object an [`InvocationLabel`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvocationTarget {
    /// An Untyped.
    Untyped,
    /// A CNode.
    CNode,
    /// A TCB.
    Tcb,
    /// A 4 KiB or 2 MiB frame.
    Frame,
    /// A PT, PD or PDPT (a PML4 has no invocations).
    PagingStructure,
}

impl InvocationLabel {
    /// The kind of object this label applies to.
    pub const fn target(self) -> InvocationTarget {
        use InvocationLabel::*;
        match self {
            UntypedRetype => InvocationTarget::Untyped,
            CNodeCopy | CNodeMint | CNodeMove | CNodeMutate | CNodeDelete | CNodeRevoke => {
                InvocationTarget::CNode
            }
            TcbConfigure | TcbSetPriority | TcbSetIpcBuffer | TcbSetSpace | TcbReadRegisters
            | TcbWriteRegisters | TcbResume | TcbSuspend => InvocationTarget::Tcb,
            FrameMap | FrameUnmap | FrameGetAddress => InvocationTarget::Frame,
            PageTableMap | PageTableUnmap => InvocationTarget::PagingStructure,
        }
    }

    /// True if this label may be invoked on an object of type `ty`.
    pub const fn applies_to(self, ty: ObjectType) -> bool {
        match self.target() {
            InvocationTarget::Untyped => matches!(ty, ObjectType::Untyped),
            InvocationTarget::CNode => matches!(ty, ObjectType::CNode),
            InvocationTarget::Tcb => matches!(ty, ObjectType::Tcb),
            InvocationTarget::Frame => ty.is_frame(),
            InvocationTarget::PagingStructure => matches!(
                ty,
                ObjectType::PageTable | ObjectType::PageDirectory | ObjectType::Pdpt
            ),
        }
    }
}

/// A CNode capability's guard, as one data word: bits 5..0 the guard's
/// size, bits 63..6 the guard (so at most 58 significant bits). The guard
/// must fit its size, and size plus the CNode's radix at most 64 (that
/// last check needs the CNode, so it is the kernel's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuardData {
    guard: u64,
    bits: u8,
}

const GUARD_SIZE_BITS: u32 = 6;

impl GuardData {
    /// No guard.
    pub const NONE: GuardData = GuardData { guard: 0, bits: 0 };

    /// A guard of `bits` bits, checked: `guard` must fit in `bits` and in
    /// the word's 58 bits, and `bits` in 6 bits.
    pub const fn new(guard: u64, bits: u8) -> Result<Self, DecodeError> {
        let fits_size = bits >= 64 || guard >> bits == 0;
        let fits_word = guard >> (u64::BITS - GUARD_SIZE_BITS) == 0;
        if bits as u32 >= 1 << GUARD_SIZE_BITS || !fits_size || !fits_word {
            return Err(DecodeError::GuardData(guard));
        }
        Ok(GuardData { guard, bits })
    }

    /// The guard data from a message register, checked.
    pub const fn from_word(word: u64) -> Result<Self, DecodeError> {
        let bits = (word & ((1 << GUARD_SIZE_BITS) - 1)) as u8;
        let guard = word >> GUARD_SIZE_BITS;
        match Self::new(guard, bits) {
            Ok(data) => Ok(data),
            Err(_) => Err(DecodeError::GuardData(word)),
        }
    }

    /// The word to put in a message register.
    pub const fn word(self) -> u64 {
        self.guard << GUARD_SIZE_BITS | self.bits as u64
    }

    /// The guard.
    pub const fn guard(self) -> u64 {
        self.guard
    }

    /// The guard's size in bits.
    pub const fn bits(self) -> u8 {
        self.bits
    }
}

bitflags::bitflags! {
    /// How a frame is mapped (MR2 of `FrameMap`). Pages are not
    /// executable unless asked, and never writable and executable both.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapAttributes: u64 {
        /// The page may be executed.
        const EXECUTE = 1 << 0;
    }
}

impl MapAttributes {
    /// The attributes word from a message register, checked.
    pub const fn from_word(word: u64) -> Result<Self, DecodeError> {
        match Self::from_bits(word) {
            Some(attributes) => Ok(attributes),
            None => Err(DecodeError::MapAttributes(word)),
        }
    }
}

/// A thread's user registers, in the order `TcbReadRegisters` and
/// `TcbWriteRegisters` move them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
#[allow(missing_docs)]
pub struct UserContext {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

impl UserContext {
    /// Words in a context.
    pub const WORDS: usize = 20;

    /// The registers as words, in field order.
    pub const fn to_words(&self) -> [u64; Self::WORDS] {
        [
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.fs_base,
            self.gs_base,
        ]
    }

    /// The registers from words in field order.
    pub const fn from_words(w: &[u64; Self::WORDS]) -> Self {
        UserContext {
            rip: w[0],
            rsp: w[1],
            rflags: w[2],
            rax: w[3],
            rbx: w[4],
            rcx: w[5],
            rdx: w[6],
            rsi: w[7],
            rdi: w[8],
            rbp: w[9],
            r8: w[10],
            r9: w[11],
            r10: w[12],
            r11: w[13],
            r12: w[14],
            r13: w[15],
            r14: w[16],
            r15: w[17],
            fs_base: w[18],
            gs_base: w[19],
        }
    }
}

const _: () = assert!(core::mem::size_of::<UserContext>() == 8 * UserContext::WORDS);
