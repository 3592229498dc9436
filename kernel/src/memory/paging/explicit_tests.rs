//! In-kernel tests of explicit spaces: link, map and translate with their
//! PKRS cost, each refusal (changing nothing), unlink and stale links,
//! secret and forged frames, and drop. They run under QEMU (`test=`).
//!
//! Most steps run from tables ([`Rig::run`]), which check each outcome,
//! that a refusal changes no entry, and under `pks` each step's windows.
//! Steps with a 2 MiB frame, and the secret frame, need a whole free
//! pageblock: on a machine with none (the smallest) they are left out
//! rather than the test skipped, since the rest holds there too. Locals
//! are declared frames and tables first, spaces last, so that on an early
//! return the spaces go first and their tables end unowned.

// The object layer's path to them: `paging`'s re-exports.
use super::super::{TableFrame, TableLevel, VSpace, VSpaceError, live_roots, load_kernel_root};
use super::*;
use crate::arch::pks;
use crate::memory::{frames, tlb, verify};
use crate::testing::{TestFailure, TestResult};
use TableLevel::{Pd, Pdpt, Pt};
use ptalloc::{Freetype, Mobility, Protection};

const RW: MapFlags = MapFlags {
    writable: true,
    executable: false,
};
/// Where the tests build: PML4 slot 0, PDPT slot 5.
const V: u64 = 5 << 30;
const MIB2: u64 = 2 << 20;

/// One step: a call on a space, naming tables and frames by index.
#[derive(Clone, Copy, Debug)]
enum Op {
    Link(u64, TableLevel, usize),
    Unlink(u64, TableLevel, usize),
    /// Frame 1 (the 2 MiB one) maps read-execute, the others read-write.
    Map(u64, usize),
    Unmap(u64, usize),
    Clear(usize),
}

/// What a step must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Succeed (true, or `Ok`): under `pks`, one window.
    Done,
    /// Return false, possibly zeroing the table (a stale unlink).
    Stale,
    /// Return false and change nothing, opening no window.
    Kept,
    /// Refuse so, changing nothing, opening no window.
    No(VSpaceError),
}
use Want::{Done, Kept, No, Stale};

/// The spaces, tables and frames a test's steps name.
struct Rig<'a> {
    spaces: &'a [&'a VSpace],
    tables: &'a [&'a TableFrame],
    /// `None`: not on this machine; its steps are left out.
    frames: &'a [Option<&'a Frame>],
}

impl Rig<'_> {
    /// Every entry of every space's user half and of every table.
    fn state(&self) -> u64 {
        let spaces = self.spaces.iter().map(|s| fingerprint(s.root(), 4));
        let tables = self.tables.iter().map(|t| fingerprint(t.phys(), 1));
        spaces
            .chain(tables)
            .fold(0, |sum, f| sum.wrapping_mul(31) ^ f)
    }

    /// Runs `(space, op, want)` steps in order; fails at the first that
    /// does not do what it must.
    fn run(&self, steps: &[(usize, Op, Want)]) -> TestResult {
        let pkrs = || {
            pks::current()
                .filter(|p| p.mechanism() == pkeys::Mechanism::Pks)
                .map(|p| p.pkrs_writes())
        };
        for &(space, op, want) in steps {
            let vs = self.spaces[space];
            let (before, writes) = (self.state(), pkrs());
            let frame = |index: usize| self.frames[index];
            let got = match op {
                Op::Link(virt, level, t) => {
                    vs.link_table(virt, level, self.tables[t]).map(|()| true)
                }
                Op::Unlink(virt, level, t) => Ok(vs.unlink_table(virt, level, self.tables[t])),
                Op::Map(virt, f) => match frame(f) {
                    Some(frame) => {
                        let flags = MapFlags {
                            writable: f != 1,
                            executable: f == 1,
                        };
                        vs.map_frame(virt, frame, flags).map(|()| true)
                    }
                    None => continue,
                },
                Op::Unmap(virt, f) => match frame(f) {
                    Some(frame) => Ok(vs.unmap_frame(virt, frame)),
                    None => continue,
                },
                Op::Clear(t) => Ok(self.tables[t].clear()),
            };
            let writes = pkrs().zip(writes).map(|(after, before)| after - before);
            let changed = self.state() != before;
            let fine = match (want, got) {
                (Done, Ok(true)) => matches!(op, Op::Clear(_)) || writes.is_none_or(|w| w == 2),
                (Stale, Ok(false)) => true,
                (Kept, Ok(false)) => !changed && writes.is_none_or(|w| w == 0),
                (No(expected), Err(error)) => {
                    expected == error && !changed && writes.is_none_or(|w| w == 0)
                }
                _ => false,
            };
            if !fine {
                return Err(TestFailure::because(&(
                    op,
                    "wanted",
                    want,
                    "got",
                    got,
                    "changed",
                    changed,
                    "pkrs writes",
                    writes,
                )));
            }
        }
        Ok(())
    }
}

/// A table of steps, in read-only data.
macro_rules! steps {
    ($($step:expr),* $(,)?) => {{
        const STEPS: &[(usize, Op, Want)] = &[$($step),*];
        STEPS
    }};
}

fn table() -> Result<TableFrame, TestFailure> {
    TableFrame::new().map_err(|e| TestFailure::because(&e))
}

fn space() -> Result<VSpace, TestFailure> {
    VSpace::new().map_err(|e| TestFailure::because(&e))
}

fn frame(order: u32, freetype: Freetype) -> Result<Frame, TestFailure> {
    frames::alloc_frame(order, freetype, true).map_err(|e| TestFailure::because(&e))
}

/// A frame of `order` (9 or a secret one, which may need a whole free
/// pageblock), or none if no whole free pageblock is left for it.
fn maybe_frame(order: u32, freetype: Freetype) -> Result<Option<Frame>, TestFailure> {
    match frames::alloc_frame(order, freetype, true) {
        Ok(frame) => Ok(Some(frame)),
        Err(_) if frames::whole_free_pageblocks() == 0 => Ok(None),
        Err(e) => Err(TestFailure::because(&e)),
    }
}

/// Every entry under the `level` table at `phys` (a root's user half),
/// folded with where it is.
fn fingerprint(phys: u64, level: u32) -> u64 {
    let slots = if level == 4 { 256 } else { 512 };
    (0..slots).fold(0u64, |sum, slot| {
        let entry = read(phys, slot);
        let below = if level > 1 && entry & (PRESENT | LARGE) == PRESENT {
            fingerprint(entry & ADDRESS, level - 1)
        } else {
            0
        };
        sum.wrapping_mul(31).wrapping_add(entry ^ below)
    })
}

const fn missing(level: u32) -> Want {
    No(VSpaceError::MissingTable {
        level,
        bits_left: (12 + 9 * level) as u8,
    })
}

fn protecting() -> bool {
    crate::boot_state().ptprot != pkeys::ProtectionPolicy::None
}

/// Links tables 0, 1 and 2 as PDPT, PD and PT at [`V`], and maps frame 0
/// there.
const BUILD: [(usize, Op, Want); 4] = [
    (0, Op::Link(0, Pdpt, 0), Done),
    (0, Op::Link(V, Pd, 1), Done),
    (0, Op::Link(V, Pt, 2), Done),
    (0, Op::Map(V, 0), Done),
];

crate::kernel_test! {
    /// Link a PDPT, a PD and a PT, map a 4 KiB frame (read-write) and a
    /// 2 MiB one (read-execute) in different PD slots: the entries name
    /// the tables, translate finds each frame with its bits, and under
    /// `pks` every link, map, unmap and unlink costs one window (2 PKRS
    /// writes), a refusal none.
    fn vspace_links_maps_and_translates() -> TestResult {
        let (pdpt, pd, pt) = (table()?, table()?, table()?);
        let small = frame(0, Freetype::KERNEL)?;
        let large = maybe_frame(9, Freetype::KERNEL)?;
        let vs = space()?;
        let frames = [Some(&small), large.as_ref()];
        let rig = Rig { spaces: &[&vs], tables: &[&pdpt, &pd, &pt], frames: &frames };
        rig.run(&BUILD)?;
        rig.run(steps![(0, Op::Map(V + MIB2, 1), Done)])?;
        let links = [read(vs.root(), 0), read(pdpt.phys(), 5), read(pd.phys(), 0)];
        let link = PRESENT | WRITABLE | USER;
        crate::check_eq!(links, [pdpt.phys() | link, pd.phys() | link, pt.phys() | link]);
        let nx = cpu::no_execute_bit();
        let seen = vs.translate(V + 8).map(|(phys, leaf)| (phys, leaf & !ADDRESS));
        crate::check_eq!(seen, Some((small.addr() + 8, PRESENT | USER | WRITABLE | nx)));
        if let Some(large) = &large {
            let seen = vs.translate(V + MIB2 + 0x1234).map(|(phys, leaf)| (phys, leaf & !ADDRESS));
            crate::check_eq!(seen, Some((large.addr() + 0x1234, PRESENT | USER | LARGE)));
        }
        crate::check_eq!(vs.translate(V + 0x1000), None);
        rig.run(steps![
            (0, Op::Unmap(V + MIB2, 1), Done),
            (0, Op::Unmap(V, 0), Done),
            (0, Op::Unmap(V, 0), Kept),
            (0, Op::Unlink(V, Pt, 2), Done),
            (0, Op::Unlink(V, Pd, 1), Done),
            (0, Op::Unlink(0, Pdpt, 0), Done),
        ])?;
        crate::check_eq!(fingerprint(vs.root(), 4), 0);
        Ok(())
    }
}

crate::kernel_test! {
    /// Each refusal, with its reason, at each level, changes nothing (no
    /// entry of any space or table). A table is linked once only: not
    /// twice in one space, at two levels, or in two spaces; unlinking it
    /// from another place or space, or clearing it, does nothing.
    fn vspace_refuses_and_changes_nothing() -> TestResult {
        let (pdpt, pd, pt, spare) = (table()?, table()?, table()?, table()?);
        let (small, odd) = (frame(0, Freetype::KERNEL)?, frame(1, Freetype::KERNEL)?);
        let (large, another) = (maybe_frame(9, Freetype::KERNEL)?, frame(0, Freetype::KERNEL)?);
        let (vs, other) = (space()?, space()?);
        let rig = Rig {
            spaces: &[&vs, &other],
            tables: &[&pdpt, &pd, &pt, &spare],
            frames: &[Some(&small), large.as_ref(), Some(&odd), Some(&another)],
        };
        use VSpaceError::*;
        rig.run(steps![
            (0, Op::Link(V, Pd, 1), missing(3)),
            (0, Op::Link(V, Pt, 2), missing(3)),
            (0, Op::Map(V, 0), missing(3)),
            (0, Op::Map(V + MIB2, 1), missing(3)),
            (0, Op::Link(0x1000, Pdpt, 0), No(Misaligned)),
            (0, Op::Link(V + MIB2, Pd, 1), No(Misaligned)),
            (0, Op::Link(V + 0x1000, Pt, 2), No(Misaligned)),
            (0, Op::Map(V + 8, 0), No(Misaligned)),
            (0, Op::Map(V + 0x1000, 1), No(Misaligned)),
            (0, Op::Link(USER_END, Pdpt, 0), No(OutOfRange)),
            (0, Op::Map(USER_END, 0), No(OutOfRange)),
            (0, Op::Map(V, 2), No(FrameSize)),
            (0, Op::Link(0, Pdpt, 0), Done),
            (0, Op::Link(V, Pt, 2), missing(2)),
            (0, Op::Map(V, 0), missing(2)),
            (0, Op::Map(V + MIB2, 1), missing(2)),
            (0, Op::Link(0, Pdpt, 3), No(Occupied)),
            (0, Op::Link(V, Pd, 1), Done),
            (0, Op::Map(V, 0), missing(1)),
        ])?;
        if large.is_some() {
            // A 2 MiB leaf fills its PD entry: no table or leaf below it.
            rig.run(steps![
                (0, Op::Map(V + MIB2, 1), Done),
                (0, Op::Link(V + MIB2, Pt, 3), No(Occupied)),
                (0, Op::Map(V + MIB2 + 0x1000, 0), No(Occupied)),
                (0, Op::Map(V + MIB2, 1), No(Occupied)),
                (0, Op::Unmap(V + MIB2, 0), Kept),
            ])?;
        }
        rig.run(steps![
            (0, Op::Link(V, Pt, 2), Done),
            (0, Op::Map(V, 0), Done),
            (0, Op::Map(V, 0), No(Occupied)),
            (0, Op::Link(V, Pd, 3), No(Occupied)),
            (0, Op::Map(V, 1), No(Occupied)),
            (0, Op::Unmap(V, 1), Kept),
            (0, Op::Unmap(V, 3), Kept),
            (0, Op::Unmap(V + 0x1000, 0), Kept),
        ])?;
        // A table with something in it is not linked; clear empties it.
        edit(&[(spare.phys(), 7, 0x1000)], None);
        rig.run(steps![
            (0, Op::Link(V + 2 * MIB2, Pt, 3), No(NotEmpty)),
            (0, Op::Clear(3), Done),
            // Linked (empty) once: never again, anywhere.
            (0, Op::Link(V + 2 * MIB2, Pt, 3), Done),
            (0, Op::Link(V + 3 * MIB2, Pt, 3), No(NotEmpty)),
            (0, Op::Link(2 << 30, Pd, 3), No(NotEmpty)),
            (1, Op::Link(0, Pdpt, 3), No(NotEmpty)),
            (1, Op::Link(0, Pdpt, 0), No(NotEmpty)),
            (0, Op::Unlink(V + 3 * MIB2, Pt, 3), Kept),
            (1, Op::Unlink(V + 2 * MIB2, Pt, 3), Kept),
            (0, Op::Clear(3), Kept),
            (0, Op::Unlink(V + 2 * MIB2, Pt, 3), Done),
        ])?;
        crate::check!(is_zero(spare.phys()));
        Ok(())
    }
}

crate::kernel_test! {
    /// Unlink a PD with a PT and a leaf below it, the space loaded here:
    /// the PD is zeroed and the whole space flushed once (a 4 KiB unmap
    /// flushes one page), the leaf no longer translates, its unmap is
    /// stale, and so is the PT's unlink, which zeroes it. Unlinked while
    /// loaded nowhere, nothing is flushed. Every table ends zero.
    fn vspace_unlink_zeroes_the_table() -> TestResult {
        let (pdpt, pd, pt) = (table()?, table()?, table()?);
        let small = frame(0, Freetype::KERNEL)?;
        let vs = space()?;
        let rig = Rig { spaces: &[&vs], tables: &[&pdpt, &pd, &pt], frames: &[Some(&small)] };
        rig.run(&BUILD)?;
        vs.load();
        let flushes = tlb::flush_counts();
        let unmapped = vs.unmap_frame(V, &small);
        let after_unmap = tlb::flush_counts();
        let remapped = vs.map_frame(V, &small, RW);
        let unlinked = vs.unlink_table(V, Pd, &pd);
        let after_unlink = tlb::flush_counts();
        load_kernel_root();
        crate::check!(unmapped && remapped.is_ok() && unlinked);
        // (INVLPG, full) flushes: one INVLPG for the page, one full flush
        // for the table.
        let counts = [
            after_unmap.0 - flushes.0,
            after_unmap.1 - flushes.1,
            after_unlink.1 - after_unmap.1,
        ];
        crate::check_eq!(counts, [1, 0, 1]);
        crate::check!(is_zero(pd.phys()), "the unlinked PD is not zero");
        crate::check_eq!(read(pt.phys(), 0) & ADDRESS, small.addr(), "the PT below lost its leaf");
        crate::check_eq!(vs.translate(V), None);
        rig.run(steps![
            (0, Op::Unmap(V, 0), Kept),
            (0, Op::Unlink(V, Pt, 2), Stale),
            (0, Op::Unlink(V, Pd, 1), Stale),
        ])?;
        crate::check!(is_zero(pt.phys()), "a stale unlink left the PT");
        rig.run(&BUILD[1..])?;
        let flushes = tlb::flush_counts();
        rig.run(steps![(0, Op::Unlink(0, Pdpt, 0), Done)])?;
        crate::check_eq!(tlb::flush_counts(), flushes);
        rig.run(steps![(0, Op::Unlink(V, Pd, 1), Stale), (0, Op::Unlink(V, Pt, 2), Stale)])?;
        crate::check_eq!(rig.state(), 0, "a table is not zero");
        Ok(())
    }
}

crate::kernel_test! {
    /// A secret frame (hidden from the direct map) maps in a user space,
    /// and the walk passes with it. A page-table page is never a frame:
    /// the allocator makes no `Frame` of page-table memory, and one forged
    /// anyway (as `memory` could) is refused, as is one past the physical
    /// width.
    fn vspace_maps_secret_frames_not_tables() -> TestResult {
        let (pdpt, pd, pt) = (table()?, table()?, table()?);
        let secret = Freetype { mobility: Mobility::Unmovable, protection: Protection::Unmapped };
        let secret = maybe_frame(0, secret)?;
        let vs = space()?;
        let rig = Rig { spaces: &[&vs], tables: &[&pdpt, &pd, &pt], frames: &[secret.as_ref()] };
        rig.run(&BUILD)?;
        crate::check_eq!(
            frames::alloc_frame(0, frames::PAGE_TABLES, false).map(|f| f.addr()),
            Err(frames::FrameError::ProtectedFreetype)
        );
        let forged = [pd.phys(), cpu::physical_address_limit()].map(|phys| {
            let frame = Frame::from_mapping(phys, 0);
            let result = vs.map_frame(V + 0x1000, &frame, RW);
            // Never freed: it was never allocated.
            let _ = frame.into_mapping();
            result
        });
        crate::check_eq!(forged, [Err(VSpaceError::ProtectedFrame), Err(VSpaceError::BadFrame)]);
        crate::check_eq!(vs.translate(V + 0x1000), None);
        if let Some(secret) = &secret {
            crate::check!(frames::is_hidden(secret.addr()), "not a secret frame");
            crate::check_eq!(vs.translate(V + 8).map(|t| t.0), Some(secret.addr() + 8));
            let walk = verify::verify_root(vs.root());
            crate::check!(!protecting() || walk.passed(), "the walk failed");
        }
        Ok(())
    }
}

crate::kernel_test! {
    /// With every level linked and a 2 MiB leaf, the space is live (in
    /// `live_roots`) and the walk covers it: it passes and counts its three
    /// tables. Dropped, it frees only its root, zeroes every table it
    /// reaches and leaves their frames alone; a table below one unlinked
    /// earlier is left to `clear`, which refuses while the space lives.
    /// Its tables then link into another space.
    fn vspace_drop_zeroes_its_tables() -> TestResult {
        let (pdpt, pd, pt, pd2, pt2) = (table()?, table()?, table()?, table()?, table()?);
        let small = frame(0, Freetype::KERNEL)?;
        let large = maybe_frame(9, Freetype::KERNEL)?;
        let vs = space()?;
        let root = vs.root();
        let tables = [&pdpt, &pd, &pt, &pd2, &pt2];
        let rig = Rig { spaces: &[&vs], tables: &tables, frames: &[Some(&small), large.as_ref()] };
        rig.run(&BUILD)?;
        rig.run(steps![
            (0, Op::Map(V + MIB2, 1), Done),
            // A PD with a PT and a leaf, unlinked: the PT is out of reach.
            (0, Op::Link(V + (1 << 30), Pd, 3), Done),
            (0, Op::Link(V + (1 << 30), Pt, 4), Done),
            (0, Op::Map(V + (1 << 30), 0), Done),
            (0, Op::Unlink(V + (1 << 30), Pd, 3), Done),
            (0, Op::Clear(4), Kept),
        ])?;
        crate::check!(live_roots().contains(&root), "not a live root");
        if protecting() {
            let walk = verify::verify();
            crate::check!(walk.passed(), "the walk failed: {} violations", walk.violations);
            let tables = verify::verify_root(root).tables;
            let kernel = verify::verify_root(crate::memory::kernel_root()).tables;
            crate::check_eq!(tables, kernel + 3, "the walk did not count the space's tables");
        }
        let frees = frames::stats().map(|s| s.frees);
        drop(vs);
        let freed = frames::stats().map(|s| s.frees - 1);
        crate::check_eq!(freed, frees, "not just the root was freed");
        crate::check!(!live_roots().contains(&root), "still a live root");
        let zero = tables.map(|t| is_zero(t.phys()));
        crate::check_eq!(zero, [true, true, true, true, false]);
        crate::check!(pt2.clear() && is_zero(pt2.phys()), "clear left the PT");
        let again = space()?;
        let rig = Rig { spaces: &[&again], tables: &tables, frames: &[Some(&small)] };
        rig.run(&BUILD)?;
        // Dropped while loaded here, it switches to the kernel's root first.
        again.load();
        drop(again);
        crate::check_eq!(cpu::read_cr3() & ADDRESS, crate::memory::kernel_root());
        Ok(())
    }
}

crate::kernel_test! {
    /// The attack on a user page-table object: a simulated kernel bug
    /// (write-what-where) writes a forged leaf into a linked PT through
    /// the direct map, a user-writable mapping of the space's own PDPT.
    /// Under `pks` it faults with the page-table key and the PT keeps its
    /// entry; under `ro` the direct-map alias refuses it; under `none` it
    /// lands (and is taken out again), which shows the test sees it.
    fn attack_stray_write_to_a_user_page_table_object() -> TestResult {
        use crate::arch::recovery::write_u64_if_writable;
        use crate::memory::direct_map::DIRECT_MAP_BASE;
        use pkeys::{FaultPolicy, Mechanism};
        let fail = |e: &dyn core::fmt::Debug| TestFailure::because(e);
        // Tables first, the space last: it goes first and leaves them unowned.
        let pdpt = TableFrame::new().map_err(|e| fail(&e))?;
        let pd = TableFrame::new().map_err(|e| fail(&e))?;
        let pt = TableFrame::new().map_err(|e| fail(&e))?;
        let space = VSpace::new().map_err(|e| fail(&e))?;
        for (level, table) in [(Pdpt, &pdpt), (Pd, &pd), (Pt, &pt)] {
            let base = V & !(level.covers() - 1);
            space.link_table(base, level, table).map_err(|e| fail(&e))?;
        }
        let target = (DIRECT_MAP_BASE + pt.phys()) as *mut u64;
        let forged = pdpt.phys() | PRESENT | WRITABLE | USER;
        // SAFETY: the test's own table, whose entry 0 is empty; a write
        // that lands is taken out below, before anything walks it.
        let landed = crate::pkfault::with_policy(FaultPolicy::Report, || unsafe {
            write_u64_if_writable(target, forged)
        })
        .is_ok();
        let fault = crate::pkfault::last_fault().filter(|f| f.address == target as u64);
        let seen = space.translate(V).map(|(phys, _)| phys);
        if landed {
            // SAFETY: as above; the page is writable, since the write landed.
            unsafe { target.write_volatile(0) };
        }
        drop(space);
        match pks::current().map_or(Mechanism::None, |p| p.mechanism()) {
            Mechanism::Pks => {
                crate::check!(!landed, "the stray write to a user page table landed");
                crate::check_eq!(fault.and_then(|f| f.key), Some(pkeys::PAGE_TABLE_KEY));
                crate::check_eq!(seen, None);
            }
            Mechanism::WriteProtect => crate::check!(!landed, "the table is writable under ro"),
            Mechanism::None => {
                crate::check!(landed, "the write did not land without protection");
                crate::check_eq!(seen, Some(pdpt.phys()), "the forged leaf is not what the space maps");
            }
        }
        Ok(())
    }
}
