//! The user-level test suite: tests of the kernel's object model, run in
//! ring 3 through the capability interface only.
//!
//! The kernel's suite driver (`roottask=suite` on the kernel command
//! line) builds a fresh process for each test, exactly as it builds the
//! root task, and starts it with the test's number in `rsi`. The process
//! prints `test NAME ... ` and runs the test; it finishes the line with
//! `FAILED` and the reason on the next lines, or `skipped (why)`, and
//! exits with [`PASSED`] (the driver writes `ok` once its own checks
//! pass), [`FAILED`] or [`SKIPPED`]; a number past the last test exits with [`NO_SUCH_TEST`],
//! which ends the suite. Between tests the driver runs the verification
//! walk over every user VSpace and checks that tearing the process down
//! gave back every frame.
//!
//! Each test checks that what it refuses changes nothing: the kernel's
//! summary (`DebugSummary`: caps, objects, derivation edges, budget left)
//! is the same before and after.

#![no_std]
#![no_main]

#[path = "../rt.rs"]
#[allow(
    dead_code,
    reason = "the runtime serves both programs; each uses part of it"
)]
mod rt;

use abi::{
    BootInfo, CapRights, Error, InitCap, InvocationLabel as Label, IpcBuffer, LookupFailure,
    MapAttributes, ObjectType, RetypeFlags,
};

/// Exit status: the test passed.
const PASSED: u64 = 0;
/// Exit status: the test failed (it printed why).
const FAILED: u64 = 1;
/// Exit status: the test was skipped (it printed why).
const SKIPPED: u64 = 2;
/// Exit status: there is no test with this number: the suite is over.
const NO_SUCH_TEST: u64 = 3;

/// The root CNode: its cap's guard makes a slot's index its CPtr.
const ROOT: u64 = InitCap::InitThreadCNode.slot();
/// The process's own VSpace.
const VSPACE: u64 = InitCap::InitThreadVSpace.slot();
/// Where tests map into their own VSpace: a 512 GiB region nothing else
/// uses (PML4 slot 128).
const SCRATCH: u64 = 0x4000_0000_0000;

const PAGE: u64 = 4096;
const LARGE: u64 = 2 << 20;

/// A test: its name and its body.
struct Test {
    name: &'static str,
    run: fn(&mut Env) -> Outcome,
}

/// How a test ended other than by passing: the reason is printed already.
enum Stop {
    Failed,
    Skipped,
}

type Outcome = Result<(), Stop>;

/// Fails the test, printing the line and the message.
macro_rules! fail {
    ($($arg:tt)*) => {{
        println!("FAILED");
        println!("    usertests.rs:{}: {}", line!(), format_args!($($arg)*));
        return Err(Stop::Failed);
    }};
}

/// Skips the test, printing why.
macro_rules! skip {
    ($($arg:tt)*) => {{
        println!("skipped ({})", format_args!($($arg)*));
        return Err(Stop::Skipped);
    }};
}

/// Fails the test unless the condition holds.
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            fail!($($arg)*);
        }
    };
}

/// Fails the test unless `$got` equals `$want`.
macro_rules! check_eq {
    ($got:expr, $want:expr) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            fail!("{} is {:?}, expected {:?}", stringify!($got), got, want);
        }
    }};
}

/// Unwraps an invocation's result, failing the test on an error.
macro_rules! ok {
    ($call:expr) => {
        match $call {
            Ok(value) => value,
            Err(error) => fail!("{} failed: {:?}", stringify!($call), error),
        }
    };
}

/// Every test, in the order the driver runs them.
const TESTS: &[Test] = &[
    Test {
        name: "retype_makes_every_object_type_and_delete_refunds_it",
        run: retype_every_type,
    },
    Test {
        name: "revoke_of_an_untyped_destroys_its_objects_and_refunds_the_budget",
        run: revoke_untyped,
    },
    Test {
        name: "cnode_copy_mint_move_mutate_delete",
        run: cnode_operations,
    },
    Test {
        name: "revoke_deletes_a_derivation_tree_but_not_its_root",
        run: revoke_tree,
    },
    Test {
        name: "map_and_unmap_at_every_paging_level",
        run: map_every_level,
    },
    Test {
        name: "a_table_left_behind_by_a_destroyed_vspace_maps_again_empty",
        run: tables_outlive_their_vspace,
    },
    Test {
        name: "a_paging_structure_is_never_mapped_as_a_frame",
        run: tables_are_not_frames,
    },
    Test {
        name: "a_secret_frame_is_absent_from_the_direct_map",
        run: secret_frames,
    },
    Test {
        name: "untyped_exhaustion_is_not_enough_memory_with_nothing_leaked",
        run: exhaustion,
    },
    Test {
        name: "a_process_that_hides_its_caps_is_still_destroyed_whole",
        run: hidden_caps,
    },
    Test {
        name: "bad_caps_rights_and_arguments_get_their_errors_and_change_nothing",
        run: bad_input,
    },
];

/// Runs test number `index` (the driver's `rsi`).
fn main(boot_info: u64, index: u64) -> u64 {
    let Some(test) = TESTS.get(index as usize) else {
        return NO_SUCH_TEST;
    };
    print!("test {} ... ", test.name);
    // SAFETY: the kernel maps the boot-info frame read-only at `boot_info`
    // for the process's life; a `BootInfo` is all integers.
    let info = unsafe { &*(boot_info as *const BootInfo) };
    if let Err(error) = info.check() {
        println!("FAILED");
        println!("    the boot info is not valid: {error:?}");
        return FAILED;
    }
    // SAFETY: the kernel maps the IPC buffer read-write at this address for
    // the process's life, and only `Env` refers to it.
    let buffer = unsafe { &mut *(info.ipc_buffer as *mut IpcBuffer) };
    let mut env = Env {
        info,
        buffer,
        next_slot: info.empty.start,
    };
    // On success the driver finishes the line, once its own checks pass.
    match (test.run)(&mut env) {
        Ok(()) => PASSED,
        Err(Stop::Failed) => FAILED,
        Err(Stop::Skipped) => SKIPPED,
    }
}

/// What a test works with: its boot info, its IPC buffer, and the empty
/// slots it has not used yet.
struct Env {
    info: &'static BootInfo,
    buffer: &'static mut IpcBuffer,
    next_slot: u64,
}

impl Env {
    /// The next empty slot of the root CNode.
    fn slot(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot - 1
    }

    /// The first (largest) Untyped.
    fn untyped(&self) -> u64 {
        self.info.untyped.start
    }

    fn invoke(
        &mut self,
        cptr: u64,
        label: Label,
        words: &[u64],
        caps: &[u64],
    ) -> Result<[u64; 4], Error> {
        rt::invoke(self.buffer, cptr, label, words, caps)
    }

    /// Retypes `count` objects from `untyped` into `dest..dest + count`.
    fn retype(
        &mut self,
        untyped: u64,
        ty: ObjectType,
        bits: u64,
        flags: RetypeFlags,
        dest: u64,
        count: u64,
    ) -> Result<(), Error> {
        let words = [ty.number(), bits, flags.bits(), 0, 0, dest, count];
        self.invoke(untyped, Label::UntypedRetype, &words, &[ROOT])
            .map(drop)
    }

    /// One object from the first Untyped, in a fresh slot.
    fn make(&mut self, ty: ObjectType, bits: u64) -> Result<u64, Error> {
        let slot = self.slot();
        self.retype(self.untyped(), ty, bits, RetypeFlags::empty(), slot, 1)?;
        Ok(slot)
    }

    fn delete(&mut self, slot: u64) -> Result<(), Error> {
        self.invoke(ROOT, Label::CNodeDelete, &[slot, 64], &[])
            .map(drop)
    }

    fn revoke(&mut self, slot: u64) -> Result<(), Error> {
        self.invoke(ROOT, Label::CNodeRevoke, &[slot, 64], &[])
            .map(drop)
    }

    fn copy(&mut self, dest: u64, src: u64, rights: CapRights) -> Result<(), Error> {
        let words = [dest, 64, src, 64, rights.word()];
        self.invoke(ROOT, Label::CNodeCopy, &words, &[ROOT])
            .map(drop)
    }

    fn mint(&mut self, dest: u64, src: u64, rights: CapRights, data: u64) -> Result<(), Error> {
        let words = [dest, 64, src, 64, rights.word(), data];
        self.invoke(ROOT, Label::CNodeMint, &words, &[ROOT])
            .map(drop)
    }

    fn move_cap(&mut self, dest: u64, src: u64) -> Result<(), Error> {
        self.invoke(ROOT, Label::CNodeMove, &[dest, 64, src, 64], &[ROOT])
            .map(drop)
    }

    fn mutate(&mut self, dest: u64, src: u64, data: u64) -> Result<(), Error> {
        let words = [dest, 64, src, 64, data];
        self.invoke(ROOT, Label::CNodeMutate, &words, &[ROOT])
            .map(drop)
    }

    fn map_frame(&mut self, frame: u64, vaddr: u64, rights: CapRights) -> Result<(), Error> {
        let words = [vaddr, rights.word(), 0];
        self.invoke(frame, Label::FrameMap, &words, &[VSPACE])
            .map(drop)
    }

    fn unmap_frame(&mut self, frame: u64) -> Result<(), Error> {
        self.invoke(frame, Label::FrameUnmap, &[], &[]).map(drop)
    }

    fn map_table(&mut self, table: u64, vaddr: u64) -> Result<(), Error> {
        self.invoke(table, Label::PageTableMap, &[vaddr, 0], &[VSPACE])
            .map(drop)
    }

    fn unmap_table(&mut self, table: u64) -> Result<(), Error> {
        self.invoke(table, Label::PageTableUnmap, &[], &[])
            .map(drop)
    }

    /// The kernel's summary: caps, objects, derivation edges, budget left.
    fn summary(&self) -> [u64; 4] {
        rt::debug_summary()
    }
}

/// A 2 MiB frame from the first Untyped, in a fresh slot; the test is
/// skipped if the machine has no whole free pageblock for it (the budget
/// is the kernel's promise, a 2 MiB block the machine's).
fn make_large(env: &mut Env) -> Result<u64, Stop> {
    match env.make(ObjectType::Frame2M, 0) {
        Ok(slot) => Ok(slot),
        Err(Error::NotEnoughMemory { .. }) => {
            skip!("no whole free 2 MiB pageblock for a 2 MiB frame: boot with more memory")
        }
        Err(error) => fail!("a 2 MiB frame: {error:?}"),
    }
}

/// The bytes a retype of one `ty` (argument `bits`) is charged.
fn charge(ty: ObjectType, bits: u64) -> u64 {
    ty.size_bits(bits).map_or(0, |bits| 1 << bits)
}

/// Reads and writes a word at `vaddr`: true if the write reads back.
fn touch(vaddr: u64, value: u64) -> bool {
    let word = vaddr as *mut u64;
    // SAFETY: the caller mapped `vaddr` read-write in this process's own
    // VSpace just before; nothing else refers to that page.
    unsafe {
        word.write_volatile(value);
        word.read_volatile() == value
    }
}

// ---- the tests ----

fn retype_every_type(env: &mut Env) -> Outcome {
    let start = env.summary();
    for &ty in ObjectType::ALL {
        if ty == ObjectType::Frame2M {
            let large = make_large(env)?;
            ok!(env.delete(large));
        }
        let bits = match ty {
            ObjectType::Untyped => 16,
            ObjectType::CNode => 4,
            _ => 0,
        };
        let before = env.summary();
        let slot = ok!(env.make(ty, bits));
        let after = env.summary();
        // A child Untyped is carved from the parent: the budget left over
        // all Untypeds is the same.
        let spent = if ty == ObjectType::Untyped {
            0
        } else {
            charge(ty, bits)
        };
        check_eq!(after[3], before[3] - spent);
        check_eq!(after[1], before[1] + 1);
        check_eq!(after[0], before[0] + 1);
        ok!(env.delete(slot));
        check_eq!(env.summary(), before);
    }
    // All at once, then each deleted: the same.
    let mut slots = [0u64; 11];
    for (slot, &ty) in slots.iter_mut().zip(ObjectType::ALL) {
        *slot = ok!(env.make(ty, if ty == ObjectType::Untyped { 12 } else { 4 }));
    }
    check_eq!(env.summary()[1], start[1] + ObjectType::ALL.len() as u64);
    for slot in slots {
        ok!(env.delete(slot));
    }
    check_eq!(env.summary(), start);
    Ok(())
}

fn revoke_untyped(env: &mut Env) -> Outcome {
    let start = env.summary();
    let child = ok!(env.make(ObjectType::Untyped, 20));
    let after_child = env.summary();
    // Carved from the parent: the total left over all budgets is the same.
    check_eq!(after_child[3], start[3]);
    let first = env.next_slot;
    let kinds = [
        (ObjectType::Tcb, 0),
        (ObjectType::Endpoint, 0),
        (ObjectType::Notification, 0),
        (ObjectType::CNode, 6),
        (ObjectType::Frame4K, 0),
        (ObjectType::PageTable, 0),
        (ObjectType::Pml4, 0),
        (ObjectType::Untyped, 12),
    ];
    let mut spent = 0;
    for (ty, bits) in kinds {
        let slot = env.slot();
        ok!(env.retype(child, ty, bits, RetypeFlags::empty(), slot, 2));
        env.next_slot += 1;
        if ty != ObjectType::Untyped {
            spent += 2 * charge(ty, bits);
        }
    }
    let full = env.summary();
    check_eq!(full[3], after_child[3] - spent);
    check_eq!(full[1], after_child[1] + 16);
    ok!(env.revoke(child));
    check_eq!(env.summary(), after_child);
    // The slots are empty again: a retype into them works.
    ok!(env.retype(
        child,
        ObjectType::Frame4K,
        0,
        RetypeFlags::empty(),
        first,
        16
    ));
    ok!(env.delete(child));
    // Deleting the Untyped does not destroy what was made from it...
    check_eq!(env.summary()[1], start[1] + 17);
    for slot in first..first + 16 {
        ok!(env.delete(slot));
    }
    // ...the last of those does, and refunds the parent.
    check_eq!(env.summary(), start);
    Ok(())
}

fn cnode_operations(env: &mut Env) -> Outcome {
    let start = env.summary();
    let endpoint = ok!(env.make(ObjectType::Endpoint, 0));
    let frame = ok!(env.make(ObjectType::Frame4K, 0));
    let (a, b, c) = (env.slot(), env.slot(), env.slot());
    // Copy with fewer rights; the copy is a child (one more edge).
    let edges = env.summary()[2];
    ok!(env.copy(a, frame, CapRights::READ));
    check_eq!(env.summary()[2], edges + 1);
    check_eq!(env.copy(a, frame, CapRights::READ), Err(Error::DeleteFirst));
    // A read-only copy cannot map writable: the mapping is cut to READ,
    // and a request with no READ left is refused.
    check_eq!(
        env.map_frame(a, SCRATCH, CapRights::WRITE),
        Err(Error::InvalidArgument { index: 1 })
    );
    // Mint a badge onto an endpoint copy.
    ok!(env.mint(b, endpoint, CapRights::all(), 0x55));
    check_eq!(
        env.mint(c, b, CapRights::all(), 0x66),
        Err(Error::IllegalOperation)
    );
    // Move keeps the tree: the edge count does not change.
    let edges = env.summary()[2];
    ok!(env.move_cap(c, b));
    check_eq!(env.summary()[2], edges);
    check_eq!(
        env.move_cap(b, b),
        Err(Error::FailedLookup {
            source: true,
            failure: LookupFailure::MissingCapability { bits_left: 0 }
        })
    );
    // Mutate badges only an unbadged cap with no children.
    let d = env.slot();
    check_eq!(env.mutate(d, endpoint, 0x77), Err(Error::IllegalOperation));
    let lone = ok!(env.make(ObjectType::Endpoint, 0));
    ok!(env.mutate(d, lone, 0x77));
    check_eq!(env.summary()[0], start[0] + 5);
    for slot in [a, c, d, frame, endpoint] {
        ok!(env.delete(slot));
    }
    // Deleting an empty slot is fine.
    ok!(env.delete(a));
    check_eq!(env.summary(), start);
    Ok(())
}

fn revoke_tree(env: &mut Env) -> Outcome {
    let start = env.summary();
    let root = ok!(env.make(ObjectType::Notification, 0));
    let (a, b, c, d) = (env.slot(), env.slot(), env.slot(), env.slot());
    ok!(env.copy(a, root, CapRights::all()));
    ok!(env.mint(b, a, CapRights::READ, 7));
    ok!(env.copy(c, b, CapRights::READ));
    ok!(env.copy(d, root, CapRights::WRITE));
    check_eq!(env.summary()[0], start[0] + 5);
    // Four derived, and the retyped cap a child of its Untyped's.
    check_eq!(env.summary()[2], start[2] + 5);
    // Revoking `a` removes b and c (its descendants), not a or d.
    ok!(env.revoke(a));
    check_eq!(env.summary()[0], start[0] + 3);
    check_eq!(env.copy(b, c, CapRights::READ).is_err(), true);
    ok!(env.revoke(root));
    check_eq!(env.summary()[0], start[0] + 1);
    check_eq!(env.summary()[1], start[1] + 1);
    ok!(env.delete(root));
    check_eq!(env.summary(), start);
    Ok(())
}

fn map_every_level(env: &mut Env) -> Outcome {
    let start = env.summary();
    let pdpt = ok!(env.make(ObjectType::Pdpt, 0));
    let pd = ok!(env.make(ObjectType::PageDirectory, 0));
    let pt = ok!(env.make(ObjectType::PageTable, 0));
    let small = ok!(env.make(ObjectType::Frame4K, 0));
    let large = make_large(env)?;
    let rw = CapRights::READ | CapRights::WRITE;
    let missing = |bits_left| Error::FailedLookup {
        source: false,
        failure: LookupFailure::MissingCapability { bits_left },
    };
    // Each level needs the one above: the error names what is missing.
    check_eq!(env.map_frame(small, SCRATCH, rw), Err(missing(39)));
    check_eq!(env.map_table(pd, SCRATCH), Err(missing(39)));
    ok!(env.map_table(pdpt, SCRATCH));
    check_eq!(env.map_frame(small, SCRATCH, rw), Err(missing(30)));
    check_eq!(env.map_table(pt, SCRATCH), Err(missing(30)));
    ok!(env.map_table(pd, SCRATCH));
    check_eq!(env.map_frame(small, SCRATCH, rw), Err(missing(21)));
    ok!(env.map_table(pt, SCRATCH));
    // A mapped table may be copied; only its last cap unmaps it.
    let copy = env.slot();
    ok!(env.copy(copy, pt, CapRights::all()));
    check_eq!(env.unmap_table(pt), Err(Error::RevokeFirst));
    check_eq!(env.unmap_table(copy), Err(Error::RevokeFirst));
    ok!(env.delete(copy));
    ok!(env.map_frame(small, SCRATCH, rw));
    check!(
        touch(SCRATCH, 0x1234_5678),
        "the 4 KiB page does not hold a write"
    );
    ok!(env.map_frame(large, SCRATCH + LARGE, rw));
    check!(
        touch(SCRATCH + LARGE + 0x1f_fff8, 7),
        "the 2 MiB page does not hold a write"
    );
    // Occupied places.
    let other = ok!(env.make(ObjectType::Frame4K, 0));
    check_eq!(env.map_frame(other, SCRATCH, rw), Err(Error::DeleteFirst));
    check_eq!(
        env.map_frame(small, SCRATCH + PAGE, rw),
        Err(Error::InvalidCapability { index: 0 })
    );
    // Unmap, and map again at the same place: the translation is back.
    ok!(env.unmap_frame(small));
    ok!(env.map_frame(other, SCRATCH, rw));
    check!(
        touch(SCRATCH, 1),
        "a page mapped after an unmap does not hold a write"
    );
    ok!(env.unmap_frame(other));
    // Unmapping a PD with a PT below it: the PT's cap still reads mapped
    // (seL4's rule); it must be unmapped before it can map again.
    ok!(env.unmap_table(pd));
    check_eq!(
        env.map_table(pt, SCRATCH),
        Err(Error::InvalidCapability { index: 0 })
    );
    ok!(env.unmap_table(pt));
    ok!(env.map_table(pd, SCRATCH));
    ok!(env.map_table(pt, SCRATCH));
    ok!(env.map_frame(small, SCRATCH, rw));
    check!(
        touch(SCRATCH, 2),
        "a page mapped in rebuilt tables does not hold a write"
    );
    // Unmapping a frame whose tables went already is fine.
    ok!(env.unmap_table(pdpt));
    ok!(env.unmap_frame(small));
    ok!(env.unmap_frame(large));
    for slot in [small, large, other, pt, pd, pdpt] {
        ok!(env.delete(slot));
    }
    check_eq!(env.summary(), start);
    // Deleting mapped caps unmaps them, and refunds all.
    let pdpt = ok!(env.make(ObjectType::Pdpt, 0));
    let pd = ok!(env.make(ObjectType::PageDirectory, 0));
    let large = make_large(env)?;
    ok!(env.map_table(pdpt, SCRATCH));
    ok!(env.map_table(pd, SCRATCH));
    ok!(env.map_frame(large, SCRATCH, rw));
    for slot in [pd, large, pdpt] {
        ok!(env.delete(slot));
    }
    check_eq!(env.summary(), start);
    Ok(())
}

fn tables_outlive_their_vspace(env: &mut Env) -> Outcome {
    let start = env.summary();
    let rw = CapRights::READ | CapRights::WRITE;
    let other = ok!(env.make(ObjectType::Pml4, 0));
    let (pdpt, pd, pt, frame) = (
        ok!(env.make(ObjectType::Pdpt, 0)),
        ok!(env.make(ObjectType::PageDirectory, 0)),
        ok!(env.make(ObjectType::PageTable, 0)),
        ok!(env.make(ObjectType::Frame4K, 0)),
    );
    // Build in the other VSpace, then cut the PD out: the PT below it keeps
    // its leaf, out of reach, and its cap still reads mapped.
    for table in [pdpt, pd, pt] {
        ok!(env.invoke(table, Label::PageTableMap, &[SCRATCH, 0], &[other]));
    }
    ok!(env.invoke(frame, Label::FrameMap, &[SCRATCH, rw.word(), 0], &[other]));
    ok!(env.unmap_table(pd));
    // Destroying the VSpace forgets every mapping into it: the PT's cap
    // reads unmapped, and the PT must come back empty.
    ok!(env.delete(other));
    let (mine_pdpt, mine_pd) = (
        ok!(env.make(ObjectType::Pdpt, 0)),
        ok!(env.make(ObjectType::PageDirectory, 0)),
    );
    ok!(env.map_table(mine_pdpt, SCRATCH));
    ok!(env.map_table(mine_pd, SCRATCH));
    ok!(env.map_table(pt, SCRATCH));
    // Its old leaf is gone: the place is free for a frame.
    ok!(env.map_frame(frame, SCRATCH, rw));
    check!(
        touch(SCRATCH, 3),
        "the frame mapped through the reused table does not hold a write"
    );
    for slot in [frame, pt, mine_pd, mine_pdpt, pd, pdpt] {
        ok!(env.delete(slot));
    }
    check_eq!(env.summary(), start);
    Ok(())
}

fn tables_are_not_frames(env: &mut Env) -> Outcome {
    let start = env.summary();
    let rw = CapRights::READ | CapRights::WRITE;
    for ty in [
        ObjectType::PageTable,
        ObjectType::PageDirectory,
        ObjectType::Pdpt,
        ObjectType::Pml4,
    ] {
        let table = ok!(env.make(ty, 0));
        check_eq!(
            env.map_frame(table, SCRATCH, rw),
            Err(Error::IllegalOperation)
        );
        check_eq!(
            env.invoke(table, Label::FrameGetAddress, &[], &[]),
            Err(Error::IllegalOperation)
        );
        // No derivation changes what a cap is: a copy is still a table.
        let copy = env.slot();
        if ty == ObjectType::Pml4 {
            ok!(env.copy(copy, table, CapRights::all()));
            check_eq!(
                env.map_frame(copy, SCRATCH, rw),
                Err(Error::IllegalOperation)
            );
            ok!(env.delete(copy));
        } else {
            // An unmapped table cannot be copied at all.
            check_eq!(
                env.copy(copy, table, CapRights::all()),
                Err(Error::IllegalOperation)
            );
        }
        ok!(env.delete(table));
    }
    // The process's own VSpace, too.
    check_eq!(
        env.map_frame(VSPACE, SCRATCH, rw),
        Err(Error::IllegalOperation)
    );
    // A frame cannot be mapped as a table.
    let frame = ok!(env.make(ObjectType::Frame4K, 0));
    check_eq!(env.map_table(frame, SCRATCH), Err(Error::IllegalOperation));
    ok!(env.delete(frame));
    check_eq!(env.summary(), start);
    Ok(())
}

fn secret_frames(env: &mut Env) -> Outcome {
    let start = env.summary();
    let plain = ok!(env.make(ObjectType::Frame4K, 0));
    let secret = env.slot();
    let untyped = env.untyped();
    ok!(env.retype(
        untyped,
        ObjectType::Frame4K,
        0,
        RetypeFlags::SECRET,
        secret,
        1
    ));
    let (plain_phys, plain_mapped) = rt::debug_frame_info(plain);
    let (secret_phys, secret_mapped) = rt::debug_frame_info(secret);
    check!(plain_phys != 0 && secret_phys != 0, "no physical addresses");
    check!(
        plain_mapped,
        "a plain frame at {plain_phys:#x} is not in the direct map"
    );
    check!(
        !secret_mapped,
        "the secret frame at {secret_phys:#x} is in the direct map"
    );
    // Its owner can still map and use it.
    let (pdpt, pd, pt) = (
        ok!(env.make(ObjectType::Pdpt, 0)),
        ok!(env.make(ObjectType::PageDirectory, 0)),
        ok!(env.make(ObjectType::PageTable, 0)),
    );
    for table in [pdpt, pd, pt] {
        ok!(env.map_table(table, SCRATCH));
    }
    ok!(env.map_frame(secret, SCRATCH, CapRights::READ | CapRights::WRITE));
    // SAFETY: the secret frame was just mapped read-write at SCRATCH.
    let fresh = unsafe { (SCRATCH as *const u64).read_volatile() };
    check_eq!(fresh, 0);
    check!(
        touch(SCRATCH, 0x5ec2e7),
        "the secret page does not hold a write"
    );
    // Only frames can be secret.
    let slot = env.slot();
    check_eq!(
        env.retype(untyped, ObjectType::Tcb, 0, RetypeFlags::SECRET, slot, 1),
        Err(Error::InvalidArgument { index: 2 })
    );
    for slot in [secret, plain, pt, pd, pdpt] {
        ok!(env.delete(slot));
    }
    check_eq!(env.summary(), start);
    Ok(())
}

fn exhaustion(env: &mut Env) -> Outcome {
    let start = env.summary();
    let child = ok!(env.make(ObjectType::Untyped, 16));
    let first = env.next_slot;
    env.next_slot += 32;
    // 16 pages fill 64 KiB; asking for 17 at once makes none of them.
    let with_child = env.summary();
    check_eq!(
        env.retype(
            child,
            ObjectType::Frame4K,
            0,
            RetypeFlags::empty(),
            first,
            17
        ),
        Err(Error::NotEnoughMemory {
            bytes_available: 1 << 16
        })
    );
    check_eq!(env.summary(), with_child);
    ok!(env.retype(
        child,
        ObjectType::Frame4K,
        0,
        RetypeFlags::empty(),
        first,
        16
    ));
    let full = env.summary();
    check_eq!(full[3], with_child[3] - (1 << 16));
    check_eq!(
        env.retype(
            child,
            ObjectType::Endpoint,
            0,
            RetypeFlags::empty(),
            first + 16,
            1
        ),
        Err(Error::NotEnoughMemory { bytes_available: 0 })
    );
    check_eq!(env.summary(), full);
    // A budget larger than the parent has left.
    let slot = first + 16;
    check_eq!(
        env.retype(
            child,
            ObjectType::Untyped,
            16,
            RetypeFlags::empty(),
            slot,
            1
        ),
        Err(Error::NotEnoughMemory { bytes_available: 0 })
    );
    ok!(env.delete(first));
    ok!(env.retype(
        child,
        ObjectType::Endpoint,
        0,
        RetypeFlags::empty(),
        first,
        1
    ));
    ok!(env.revoke(child));
    check_eq!(env.summary(), with_child);
    ok!(env.delete(child));
    check_eq!(env.summary(), start);
    Ok(())
}

/// An invocation and the error it must get: the invoked cap, the label,
/// the words, the extra caps.
type Case<'a> = (u64, Label, &'a [u64], &'a [u64], Error);

/// Hides caps where deleting the root CNode's slots would not reach them:
/// a CNode that holds the only cap to itself, and the root CNode's cap
/// moved out of its fixed slot. The driver then destroys the process and
/// checks that every object and frame came back (it revokes the originals
/// its keeper holds, out of the process's reach).
fn hidden_caps(env: &mut Env) -> Outcome {
    let lonely = ok!(env.make(ObjectType::CNode, 2));
    let frame = ok!(env.make(ObjectType::Frame4K, 0));
    // Into the lonely CNode's own slots: its cap (slot 0) and the frame's.
    ok!(env.invoke(
        lonely,
        Label::CNodeCopy,
        &[0, 2, lonely, 64, CapRights::all().word()],
        &[ROOT]
    ));
    ok!(env.invoke(lonely, Label::CNodeMove, &[1, 2, frame, 64], &[ROOT]));
    ok!(env.delete(lonely));
    // Only itself holds it now; nothing the process can name reaches it.
    check_eq!(
        env.invoke(lonely, Label::CNodeDelete, &[0, 2], &[]),
        Err(Error::InvalidCapability { index: 0 })
    );
    // The root CNode's cap, moved out of its fixed slot (the thread keeps
    // its own copy as its CSpace root, so the process goes on).
    let hidden = env.slot();
    ok!(env.move_cap(hidden, ROOT));
    check_eq!(
        env.delete(VSPACE),
        Err(Error::InvalidCapability { index: 0 })
    );
    Ok(())
}

fn bad_input(env: &mut Env) -> Outcome {
    let untyped = env.untyped();
    let frame = ok!(env.make(ObjectType::Frame4K, 0));
    let large = make_large(env)?;
    let pt = ok!(env.make(ObjectType::PageTable, 0));
    let tcb = ok!(env.make(ObjectType::Tcb, 0));
    let full = env.slot();
    ok!(env.copy(full, frame, CapRights::READ));
    let empty = env.slot();
    let start = env.summary();
    let rw = (CapRights::READ | CapRights::WRITE).word();
    let retype = |ty: u64, bits: u64, flags: u64, dest: u64, count: u64| {
        [ty, bits, flags, 0, 0, dest, count]
    };
    let slots = 1u64 << env.info.root_cnode_radix;
    // (invoked cap, label, words, extra caps, the error expected)
    let cases: &[Case] = &[
        // The invoked cap.
        (
            empty,
            Label::CNodeDelete,
            &[empty, 64],
            &[],
            Error::InvalidCapability { index: 0 },
        ),
        (
            1 << 40,
            Label::FrameUnmap,
            &[],
            &[],
            Error::InvalidCapability { index: 0 },
        ),
        (
            frame,
            Label::UntypedRetype,
            &retype(5, 0, 0, empty, 1),
            &[ROOT],
            Error::IllegalOperation,
        ),
        (tcb, Label::TcbResume, &[], &[], Error::IllegalOperation),
        // Retype's arguments.
        (
            untyped,
            Label::UntypedRetype,
            &retype(99, 0, 0, empty, 1),
            &[ROOT],
            Error::InvalidArgument { index: 0 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(4, 0, 0, empty, 1),
            &[ROOT],
            Error::RangeError { min: 1, max: 24 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(0, 3, 0, empty, 1),
            &[ROOT],
            Error::RangeError { min: 4, max: 47 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 2, empty, 1),
            &[ROOT],
            Error::InvalidArgument { index: 2 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(2, 0, 1, empty, 1),
            &[ROOT],
            Error::InvalidArgument { index: 2 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 0, empty, 0),
            &[ROOT],
            Error::RangeError { min: 1, max: 256 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 0, slots - 1, 2),
            &[ROOT],
            Error::RangeError {
                min: 0,
                max: slots - 2,
            },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 0, full, 1),
            &[ROOT],
            Error::DeleteFirst,
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 0, empty, 1),
            &[frame],
            Error::InvalidCapability { index: 1 },
        ),
        (
            untyped,
            Label::UntypedRetype,
            &[5, 0, 0],
            &[ROOT],
            Error::TruncatedMessage,
        ),
        (
            untyped,
            Label::UntypedRetype,
            &retype(5, 0, 0, empty, 1),
            &[],
            Error::TruncatedMessage,
        ),
        // CNode operations.
        (
            ROOT,
            Label::CNodeCopy,
            &[empty, 65, frame, 64, rw],
            &[ROOT],
            Error::RangeError { min: 1, max: 64 },
        ),
        (
            ROOT,
            Label::CNodeCopy,
            &[full, 64, frame, 64, rw],
            &[ROOT],
            Error::DeleteFirst,
        ),
        (
            ROOT,
            Label::CNodeCopy,
            &[empty, 64, frame, 64, 1 << 9],
            &[ROOT],
            Error::InvalidArgument { index: 4 },
        ),
        (
            ROOT,
            Label::CNodeMint,
            &[empty, 64, frame, 64, rw, 9],
            &[ROOT],
            Error::InvalidArgument { index: 5 },
        ),
        (
            ROOT,
            Label::CNodeCopy,
            &[empty, 64, pt, 64, rw],
            &[ROOT],
            Error::IllegalOperation,
        ),
        // Frames.
        (
            frame,
            Label::FrameMap,
            &[SCRATCH + 8, rw, 0],
            &[VSPACE],
            Error::AlignmentError,
        ),
        (
            large,
            Label::FrameMap,
            &[SCRATCH + PAGE, rw, 0],
            &[VSPACE],
            Error::AlignmentError,
        ),
        (
            frame,
            Label::FrameMap,
            &[1 << 47, rw, 0],
            &[VSPACE],
            Error::InvalidArgument { index: 0 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, CapRights::WRITE.word(), 0],
            &[VSPACE],
            Error::InvalidArgument { index: 1 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, 1 << 9, 0],
            &[VSPACE],
            Error::InvalidArgument { index: 1 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw, MapAttributes::EXECUTE.bits()],
            &[VSPACE],
            Error::InvalidArgument { index: 2 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw, 2],
            &[VSPACE],
            Error::InvalidArgument { index: 2 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw, 0],
            &[ROOT],
            Error::InvalidCapability { index: 1 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw, 0],
            &[empty],
            Error::InvalidCapability { index: 1 },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw, 0],
            &[1 << 40],
            Error::FailedLookup {
                source: false,
                failure: LookupFailure::GuardMismatch {
                    bits_left: 64,
                    guard_found: 0,
                    guard_bits: 52,
                },
            },
        ),
        (
            frame,
            Label::FrameMap,
            &[SCRATCH, rw],
            &[VSPACE],
            Error::TruncatedMessage,
        ),
        (
            frame,
            Label::PageTableMap,
            &[SCRATCH, 0],
            &[VSPACE],
            Error::IllegalOperation,
        ),
        // Tables.
        (
            pt,
            Label::PageTableMap,
            &[SCRATCH + PAGE, 0],
            &[VSPACE],
            Error::AlignmentError,
        ),
        (
            pt,
            Label::PageTableMap,
            &[SCRATCH, 1],
            &[VSPACE],
            Error::InvalidArgument { index: 1 },
        ),
        (
            pt,
            Label::PageTableMap,
            &[SCRATCH, 0],
            &[frame],
            Error::InvalidCapability { index: 1 },
        ),
        (
            VSPACE,
            Label::PageTableMap,
            &[SCRATCH, 0],
            &[VSPACE],
            Error::IllegalOperation,
        ),
    ];
    for (n, &(cptr, label, words, caps, want)) in cases.iter().enumerate() {
        let got = env.invoke(cptr, label, words, caps);
        if got != Err(want) {
            fail!("case {n} ({label:?} on slot {cptr}): got {got:?}, expected {want:?}");
        }
        let now = env.summary();
        if now != start {
            fail!("case {n} ({label:?}) changed the summary: {now:?} from {start:?}");
        }
    }
    // An unknown label.
    let info = abi::MessageInfo::new(999, 0, 0, 0).map_or(0, |i| i.word());
    let reply = rt::syscall(abi::Syscall::Call, frame, info, [0; 4]);
    check!(
        abi::MessageInfo::from_word(reply.info).map(|i| i.label()) == Ok(Error::ILLEGAL_OPERATION),
        "label 999 was not refused"
    );
    for slot in [full, frame, large, pt, tcb] {
        ok!(env.delete(slot));
    }
    Ok(())
}
