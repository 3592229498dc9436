//! The attack matrix: one simulated kernel bug, a write-what-where (the
//! primitive of the data-only attacker the design defends against),
//! aimed at each class of target, under whatever policy the kernel booted
//! with (`ptprot=`, `protect=`).
//!
//! Each attack is a kernel test (`attack_matrix_*`, and the two attacks on
//! the page-table records in `memory::sealed`). It makes its target, writes
//! the forged value through the direct map with a probe that survives the
//! fault, looks whether the kernel would now act on the forged value, puts
//! things back, and calls [`record`]: that logs one line (COM2),
//! `attack-matrix: target=T ptprot=P protect=C outcome=O`, and fails the
//! test unless the outcome is the one [`expected`] claims for the policy.
//! The lab (`make lab`) boots the attacks under every policy and builds
//! the matrix from those lines; nothing in the matrix is written by hand.
//!
//! Outcomes:
//! - **blocked**: the write faulted (a key or a read-only alias) and the
//!   target is unchanged;
//! - **detected**: the write landed, and a check the kernel runs (the
//!   verification walk, with its cross-check of the allocator's metadata
//!   against the sealed record) reports it;
//! - **succeeded**: the write landed and nothing noticed: the kernel now
//!   acts on the forged value.

use crate::arch::recovery::write_u64_if_writable;
use crate::memory::direct_map::DIRECT_MAP_BASE;
use crate::object::protection;
use crate::testing::{TestFailure, TestResult};
use pkeys::{FaultPolicy, Mechanism};

/// What an attack aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An entry of a live page table.
    PageTableEntry,
    /// A CNode slot: forging a capability.
    CapabilitySlot,
    /// A TCB: a stopped thread's saved instruction pointer.
    ThreadState,
    /// The object table: a TCB's handle to its state block, pointed at a
    /// forged copy.
    ObjectTable,
    /// The page allocator's own per-pageblock freetype (ordinary memory).
    AllocatorMetadata,
    /// The sealed record that says which pageblocks are page-table memory.
    SealedRecord,
    /// A thread's IPC buffer: a user frame, in the direct map.
    IpcBuffer,
    /// An IPC buffer in a frame retyped secret (absent from the direct
    /// map).
    SecretIpcBuffer,
}

impl Target {
    /// The key that stops a write to it under `pks`, if a key does.
    fn key(self) -> Option<pkeys::Pkey> {
        match self {
            Self::PageTableEntry => Some(pkeys::PAGE_TABLE_KEY),
            Self::CapabilitySlot | Self::ObjectTable => Some(pkeys::CAPABILITY_KEY),
            Self::ThreadState => Some(pkeys::THREAD_KEY),
            Self::SealedRecord => Some(pkeys::METADATA_KEY),
            Self::AllocatorMetadata | Self::IpcBuffer | Self::SecretIpcBuffer => None,
        }
    }

    /// Its name in the matrix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PageTableEntry => "page-table-entry",
            Self::CapabilitySlot => "cnode-slot",
            Self::ThreadState => "tcb",
            Self::ObjectTable => "object-table",
            Self::AllocatorMetadata => "allocator-metadata",
            Self::SealedRecord => "sealed-record",
            Self::IpcBuffer => "ipc-buffer",
            Self::SecretIpcBuffer => "ipc-buffer-secret",
        }
    }
}

/// What became of an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The write faulted.
    Blocked,
    /// The write landed and a kernel check reported it.
    Detected,
    /// The write landed unnoticed.
    Succeeded,
}

impl Outcome {
    /// Its name in the matrix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Detected => "detected",
            Self::Succeeded => "succeeded",
        }
    }
}

fn mechanism() -> Mechanism {
    crate::arch::pks::current().map_or(Mechanism::None, |p| p.mechanism())
}

/// The protection claim: what each attack must come to under the policy
/// in force. Keys (under `pks`) and read-only aliases (under `ro`) stop
/// writes to what they cover; the allocator's metadata is never covered
/// (it changes on every allocation) but is cross-checked; user frames in
/// the direct map are covered by nothing, and secret ones are not in it.
pub fn expected(target: Target) -> Outcome {
    let protected = mechanism() != Mechanism::None;
    let classes = protection::in_force();
    let blocked_if = |covered: bool| {
        if covered {
            Outcome::Blocked
        } else {
            Outcome::Succeeded
        }
    };
    match target {
        Target::PageTableEntry => blocked_if(protected),
        Target::CapabilitySlot => blocked_if(classes.cnode),
        Target::ThreadState => blocked_if(classes.tcb),
        Target::ObjectTable => blocked_if(classes.cnode || classes.tcb),
        Target::AllocatorMetadata => Outcome::Detected,
        Target::SealedRecord if classes.meta => Outcome::Blocked,
        Target::SealedRecord => Outcome::Detected,
        Target::IpcBuffer => Outcome::Succeeded,
        Target::SecretIpcBuffer => Outcome::Blocked,
    }
}

/// Prints the matrix line of `target` and checks `outcome` against the
/// claim.
pub fn record(target: Target, outcome: Outcome) -> TestResult {
    let classes = protection::in_force();
    defmt::info!(
        "attack-matrix: target={=str} ptprot={=str} protect={=str} outcome={=str}",
        target.name(),
        crate::boot_state().ptprot.name(),
        classes.spelling(),
        outcome.name()
    );
    let claimed = expected(target);
    // Blocked for the right reason: under `pks`, a fault with the
    // target's own key.
    if outcome == Outcome::Blocked
        && mechanism() == Mechanism::Pks
        && let Some(key) = target.key()
    {
        let faulted = crate::pkfault::last_fault().and_then(|fault| fault.key);
        if faulted != Some(key) {
            return Err(TestFailure::new(
                file!(),
                line!(),
                format_args!(
                    "{}: blocked by {:?}, not by {:?}",
                    target.name(),
                    faulted,
                    key
                ),
            ));
        }
    }
    if outcome == claimed {
        Ok(())
    } else {
        Err(TestFailure::new(
            file!(),
            line!(),
            format_args!(
                "{}: {} where the policy claims {}",
                target.name(),
                outcome.name(),
                claimed.name()
            ),
        ))
    }
}

/// The simulated bug: writes `value` at `target` (through the direct map
/// or any kernel mapping), surviving the fault if there is one. True if
/// it landed.
///
/// # Safety
/// `target` must be a word the caller may see overwritten: it restores
/// it (if the write landed) before anything else uses it.
pub unsafe fn stray_write(target: *mut u64, value: u64) -> bool {
    // SAFETY: the caller's contract; a fault resumes at the probe's
    // recovery point.
    crate::pkfault::with_policy(FaultPolicy::Report, || unsafe {
        write_u64_if_writable(target, value)
    })
    .is_ok()
}

fn fail(what: &dyn core::fmt::Debug) -> TestFailure {
    TestFailure::because(what)
}

mod attacks {
    use super::*;
    use crate::memory::frames;
    use crate::memory::paging::explicit::{TableFrame, TableLevel, VSpace};
    use crate::memory::pte::{PRESENT, USER, WRITABLE};
    use crate::object::boot::{Builder, KEEPER_CNODE};
    use cspace::{Cap, SlotRef};

    crate::kernel_test! {
        /// A forged leaf written into a linked page table of a user space:
        /// a user-writable mapping of the space's own PDPT.
        fn attack_matrix_page_table_entry() -> TestResult {
            const V: u64 = 0x40_0000_0000;
            // Tables first, the space last: it goes first and leaves them unowned.
            let pdpt = TableFrame::new().map_err(|e| fail(&e))?;
            let pd = TableFrame::new().map_err(|e| fail(&e))?;
            let pt = TableFrame::new().map_err(|e| fail(&e))?;
            let space = VSpace::new().map_err(|e| fail(&e))?;
            for (level, table) in [(TableLevel::Pdpt, &pdpt), (TableLevel::Pd, &pd), (TableLevel::Pt, &pt)] {
                let base = V & !(level.covers() - 1);
                space.link_table(base, level, table).map_err(|e| fail(&e))?;
            }
            let target = (DIRECT_MAP_BASE + pt.phys()) as *mut u64;
            let forged = pdpt.phys() | PRESENT | WRITABLE | USER;
            // SAFETY: the test's own table, entry 0 empty; undone below.
            let landed = unsafe { stray_write(target, forged) };
            let forged_is_used = space.translate(V).is_some_and(|(phys, _)| phys == pdpt.phys());
            if landed {
                // SAFETY: as above; writable, since the write landed.
                unsafe { target.write_volatile(0) };
            }
            drop(space);
            let outcome = match (landed, forged_is_used) {
                (false, _) => Outcome::Blocked,
                (true, true) => Outcome::Succeeded,
                (true, false) => return Err(fail(&"the write landed but the space does not map it")),
            };
            record(Target::PageTableEntry, outcome)
        }
    }

    /// Makes a process (root CNode radix 4) and runs `attack` on it
    /// *outside* the object layer's lock, where a stray write from any
    /// other kernel path would come from (inside the lock the protected
    /// classes' windows are open), then destroys the process.
    fn with_process(
        attack: impl FnOnce(&crate::object::boot::Process) -> TestResult,
    ) -> TestResult {
        let process =
            crate::object::with_objects(|objects| Builder::new(objects, 4).map(|b| b.layout()))
                .ok_or_else(|| fail(&"no object table"))?
                .map_err(|e| fail(&e))?;
        let result = attack(&process);
        crate::object::with_objects(|objects| crate::object::boot::destroy(objects, &process));
        result
    }

    /// Reads the objects under the lock (no window opens).
    fn read<T>(f: impl FnOnce(&crate::object::Objects) -> Option<T>) -> Result<T, TestFailure> {
        crate::object::read_objects(f)
            .flatten()
            .ok_or_else(|| fail(&"not found"))
    }

    /// Words of a [`Cap`]: what the forging write writes.
    const CAP_WORDS: usize = core::mem::size_of::<Cap>() / 8;
    const _: () = assert!(core::mem::size_of::<Cap>().is_multiple_of(8) && CAP_WORDS <= 4);

    /// A cap as the words it occupies in a slot (padding bytes included,
    /// as they are).
    fn cap_words(cap: &Cap) -> [u64; 4] {
        let mut words = [0u64; 4];
        // SAFETY: `CAP_WORDS` words fit `words` and make up the cap; the
        // bytes are copied, never read as a Cap again.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (cap as *const Cap).cast::<u64>(),
                words.as_mut_ptr(),
                CAP_WORDS,
            )
        };
        words
    }

    crate::kernel_test! {
        /// A capability forged into an empty CNode slot: a copy of the
        /// process's VSpace cap, written over the slot's cap word by word.
        fn attack_matrix_cnode_slot() -> TestResult {
            with_process(|process| {
                let cnode = read(|objects| match objects.cap(SlotRef::new(process.keeper, KEEPER_CNODE)) {
                    Some(Cap::CNode { id, .. }) => Some(id),
                    _ => None,
                })?;
                let vspace = Cap::original(abi::ObjectType::Pml4, process.vspace, 0, false);
                let empty = SlotRef::new(cnode, 15);
                let target = read(|objects| objects.cap_address(empty))?.cast::<u64>().cast_mut();
                let original = cap_words(&read(|objects| objects.cap(empty))?);
                let forged = cap_words(&vspace);
                let mut landed = 0;
                for (word, &value) in forged[..CAP_WORDS].iter().enumerate() {
                    // SAFETY: the slot's own words; restored below.
                    landed += usize::from(unsafe { stray_write(target.add(word), value) });
                }
                let forged_is_used = read(|objects| objects.cap(empty))? == vspace;
                for (word, &value) in original[..CAP_WORDS].iter().enumerate() {
                    // SAFETY: as above, putting back what was there (a
                    // word that did not land is unchanged, and refuses
                    // again).
                    unsafe { stray_write(target.add(word), value) };
                }
                let outcome = match (landed, forged_is_used) {
                    (0, false) => Outcome::Blocked,
                    (CAP_WORDS, true) => Outcome::Succeeded,
                    _ => return Err(fail(&"part of the forged cap landed")),
                };
                record(Target::CapabilitySlot, outcome)
            })
        }
    }

    crate::kernel_test! {
        /// A stopped thread's saved instruction pointer, overwritten: the
        /// kernel would resume the thread at the attacker's address.
        fn attack_matrix_tcb() -> TestResult {
            with_process(|process| {
                let target = read(|objects| objects.saved_rip_address(process.tcb))?.cast_mut();
                let original = read(|objects| objects.saved_rip(process.tcb))?;
                let forged = 0x4141_4141_0000;
                // SAFETY: the test's own thread, which never runs; restored
                // below.
                let landed = unsafe { stray_write(target, forged) };
                let forged_is_used = read(|objects| objects.saved_rip(process.tcb))? == forged;
                if landed {
                    // SAFETY: as above.
                    unsafe { stray_write(target, original) };
                }
                let outcome = match (landed, forged_is_used) {
                    (false, false) => Outcome::Blocked,
                    (true, true) => Outcome::Succeeded,
                    _ => return Err(fail(&"the write and the TCB disagree")),
                };
                record(Target::ThreadState, outcome)
            })
        }
    }

    crate::kernel_test! {
        /// One stray write to the object table: a TCB's handle to its state
        /// block, pointed at a frame of the attacker's holding a copy of
        /// the state with the saved rip forged. Keying the state block
        /// alone would not stop this; keying the table does.
        fn attack_matrix_object_table() -> TestResult {
            with_process(|process| {
                let (handle, words, state) = read(|objects| objects.thread_state_handle(process.tcb))?;
                let handle = handle.cast_mut();
                let old_pfn = (state - DIRECT_MAP_BASE) / 4096;
                // SAFETY: the handle's words in the object table, readable.
                let index = (0..words)
                    .find(|&i| unsafe { handle.add(i).read_volatile() } == old_pfn)
                    .ok_or_else(|| fail(&"no frame number in the handle"))?;
                let fake = frames::alloc_frame(0, crate::object::FRAMES, true).map_err(|e| fail(&e))?;
                let rip_offset = read(|objects| objects.saved_rip_address(process.tcb))? as u64 - state;
                let forged = 0x4141_4141_0000u64;
                let fake_state = (DIRECT_MAP_BASE + fake.addr()) as *mut u8;
                // SAFETY: the attacker's own frame (the test's), writable;
                // the state block is one page, readable.
                unsafe {
                    core::ptr::copy_nonoverlapping(state as *const u8, fake_state, 4096);
                    fake_state.add(rip_offset as usize).cast::<u64>().write(forged);
                }
                // SAFETY: the handle's own word; restored below.
                let landed = unsafe { stray_write(handle.add(index), fake.addr() / 4096) };
                let forged_is_used = read(|objects| objects.saved_rip(process.tcb))? == forged;
                if landed {
                    // SAFETY: as above, putting the frame number back.
                    unsafe { stray_write(handle.add(index), old_pfn) };
                }
                drop(fake);
                let outcome = match (landed, forged_is_used) {
                    (false, false) => Outcome::Blocked,
                    (true, true) => Outcome::Succeeded,
                    _ => return Err(fail(&"the write and the TCB disagree")),
                };
                record(Target::ObjectTable, outcome)
            })
        }
    }

    /// A stray write into a user frame of `freetype` (what an IPC buffer
    /// is), through the direct map.
    fn attack_user_frame(freetype: ptalloc::Freetype) -> Result<Outcome, TestFailure> {
        let frame = match frames::alloc_frame(0, freetype, true) {
            Ok(frame) => frame,
            Err(error) => {
                // A small machine may have no pageblock left to give the
                // frame's freetype: that is a skip, not a failure.
                frames::needs_free_pageblocks(1, "for a frame of this freetype")?;
                return Err(fail(&error));
            }
        };
        let target = (DIRECT_MAP_BASE + frame.addr()) as *mut u64;
        // SAFETY: the test's own frame, zeroed; a landed write is harmless.
        let landed = unsafe { stray_write(target, 0x4141_4141) };
        Ok(if landed {
            Outcome::Succeeded
        } else {
            Outcome::Blocked
        })
    }

    crate::kernel_test! {
        /// A message in an IPC buffer, rewritten by a stray kernel write.
        fn attack_matrix_ipc_buffer() -> TestResult {
            record(Target::IpcBuffer, attack_user_frame(crate::object::FRAMES)?)
        }
    }

    crate::kernel_test! {
        /// The same write at an IPC buffer retyped secret.
        fn attack_matrix_ipc_buffer_secret() -> TestResult {
            record(Target::SecretIpcBuffer, attack_user_frame(crate::object::SECRET_FRAMES)?)
        }
    }
}
