//! Kernel objects: what capabilities name, where each lives, and the
//! invocations that make, map and destroy them.
//!
//! What this module owns:
//! - the object table ([`Objects`]): one record per object, numbered by
//!   the same [`ObjectId`] the capability crate uses, holding the object's
//!   memory (an owned frame, a page-table page, a VSpace, slot memory)
//!   and its charge to the Untyped budget it was made from;
//! - the capability space ([`cspace::CSpace`]) over it;
//! - the one big lock both sit behind, taken through [`with_objects`]
//!   (which opens the windows of the object classes `protect=` keys,
//!   [`protection`]) or [`read_objects`]. A kernel entry takes
//!   it for the whole invocation, as seL4's big kernel lock does: objects
//!   link to each other in every direction (caps, mappings, budgets), and
//!   one lock makes every invocation atomic for every other CPU. It is a
//!   [`crate::sync::Mutex`], so a CPU waiting for it still answers the
//!   shootdown rounds the holder's unmaps make.
//!
//! Where objects live (the design's placement by freetype):
//! - **Untyped** is a budget: a record of bytes and bytes charged, no
//!   memory. Retype charges `count << size_bits` (`abi::ObjectType`'s
//!   table), delete or revoke refunds exactly that.
//! - **CNode** slots and **TCB** state are kernel objects: frames of
//!   `Unmovable`/`Mapped` memory ([`FrameArray`]).
//! - **Endpoint** and **Notification** state is a few words, kept in the
//!   object table itself (kernel-object memory, allocated at set-up).
//! - **Frames** come from `Unmovable`/`Mapped`, or from `Unmapped` when
//!   retyped with `RetypeFlags::SECRET`: absent from the direct map, the
//!   kernel zeroes and reads them only through the ephemeral slot.
//! - **Paging structures** (PT, PD, PDPT) are page-table pages from the
//!   page-table freetype: protected from the moment they exist. A PML4 is
//!   a [`VSpace`], whose root is one too.
//!
//! The budget is what is charged, not what is placed: the kernel rounds a
//! CNode's or a TCB's memory up to whole pages and holds small objects in
//! its table. A retype the budget covers can still fail with
//! `NotEnoughMemory` when the machine has no such memory left, or the
//! table no free record; then nothing changes. The table and the user
//! VSpaces are global and not charged: with more than one process, each
//! Untyped will need a quota of records (the README's limits).
//!
//! What it promises:
//! - decode, then perform: every invocation checks everything before it
//!   changes anything, and a refused one leaves the caps, the objects and
//!   the budgets as they were ([`Objects::summary`] is unchanged);
//! - a frame is never freed while mapped: it is owned by its object, the
//!   object lives while a cap to it does, and deleting a mapped cap
//!   unmaps it first ([`Finaliser::unmap`]). A table unlinked from its
//!   VSpace is zeroed (`paging::explicit`); one that hung below a table
//!   unlinked before keeps its entries, out of every walk's reach, until
//!   its own unmap, or until it is mapped again after its VSpace died
//!   (then `PageTableMap` clears it first): so a stale table maps nothing;
//! - a paging structure can never be mapped as a frame: its cap is a
//!   different variant ([`Cap::PagingStructure`]), frame invocations refuse
//!   it, and its page is page-table memory, which `paging` refuses as a
//!   leaf.

use crate::memory::frame_array::FrameArray;
use crate::memory::frames::Frame;
use crate::memory::paging::{TableFrame, VSpace};
use abi::Error;
use cspace::{CSpace, Cap, Finalise, ObjectId, ObjectRecord, Slot};

pub mod boot;
mod invoke;
pub mod protection;
mod retype;
mod vspace;

pub use invoke::call;

/// Frames made without `RetypeFlags::SECRET` (and the root task's):
/// unmovable, in the direct map, like every kernel object.
pub(crate) const FRAMES: ptalloc::Freetype = crate::memory::frame_array::KERNEL_OBJECTS;
/// Frames made with `RetypeFlags::SECRET`: absent from the direct map.
pub(crate) const SECRET_FRAMES: ptalloc::Freetype = ptalloc::Freetype {
    mobility: ptalloc::Mobility::Unmovable,
    protection: ptalloc::Protection::Unmapped,
};

/// Slot memory: a CNode's slots, or a TCB's.
pub type Slots = FrameArray<Slot>;

/// The capability space over kernel memory.
type Caps = CSpace<Slots, FrameArray<ObjectRecord<Slots>>>;

/// Slots every TCB holds: copies of its CSpace root, its VSpace and its
/// IPC buffer's frame caps, so that its thread keeps them however the
/// originals are deleted (as seL4's TCB does).
pub const TCB_SLOTS: u32 = 3;
/// The TCB slot of the CSpace root.
pub const TCB_CSPACE: u32 = 0;
/// The TCB slot of the VSpace.
pub const TCB_VSPACE: u32 = 1;
/// The TCB slot of the IPC buffer's frame.
pub const TCB_IPC_BUFFER: u32 = 2;

/// A thread's state.
pub struct Thread {
    /// The registers of a thread that is not running.
    pub context: abi::UserContext,
    /// The IPC buffer's user address (0: none).
    pub ipc_buffer: u64,
}

/// An Untyped budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// log2 of its bytes.
    pub size_bits: u8,
    /// Bytes charged to it by the objects made from it that are alive.
    pub used: u64,
}

impl Budget {
    /// Its bytes.
    pub fn bytes(&self) -> u64 {
        1 << self.size_bits
    }

    /// Bytes not yet charged.
    pub fn left(&self) -> u64 {
        self.bytes() - self.used
    }
}

/// What an object is, with the memory it owns.
pub enum Body {
    /// The id is free.
    Free,
    /// A budget.
    Untyped(Budget),
    /// A CNode: its slots are the capability space's.
    CNode,
    /// A thread.
    Tcb(FrameArray<Thread>),
    /// An endpoint (its queue comes with IPC, part 2).
    Endpoint,
    /// A notification (its word and queue come with part 2).
    Notification,
    /// A 4 KiB or 2 MiB frame.
    Frame(Frame),
    /// A PT, PD or PDPT.
    Table(TableFrame),
    /// A PML4: an address space.
    VSpace(VSpace),
}

/// An object's record.
pub struct Object {
    body: Body,
    /// Bytes charged to the Untyped it was made from (0 for boot objects).
    charge: u64,
}

impl Object {
    const FREE: Object = Object {
        body: Body::Free,
        charge: 0,
    };
}

/// Counts the costs of the paging invocations (the goals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    /// Map invocations performed (frames and tables).
    pub maps: u64,
    /// PKRS writes those made.
    pub map_pkrs_writes: u64,
    /// Tables a dead VSpace left non-empty, cleared when mapped again.
    pub clears: u64,
    /// PKRS writes those clears made.
    pub clear_pkrs_writes: u64,
}

/// Every kernel object, its capabilities, and the threads running now.
pub struct Objects {
    caps: Caps,
    table: FrameArray<Object>,
    /// Where the search for a free id starts.
    next_free: usize,
    /// The thread each CPU runs (its TCB).
    current: [Option<ObjectId>; crate::arch::percpu::MAX_CPUS],
    costs: Costs,
}

/// The objects, once [`init`] has run.
static OBJECTS: crate::sync::Mutex<Option<Objects>> = crate::sync::Mutex::new(None);

/// Runs `f` on the objects under the big lock, with the write windows of
/// the protected object classes open; `None` before [`init`].
pub fn with_objects<T>(f: impl FnOnce(&mut Objects) -> T) -> Option<T> {
    let mut guard = OBJECTS.lock();
    let objects = guard.as_mut()?;
    Some(protection::with_windows(|| f(objects)))
}

/// Runs `f` on the objects under the big lock, reading only (no window
/// opens); `None` before [`init`].
pub fn read_objects<T>(f: impl FnOnce(&Objects) -> T) -> Option<T> {
    OBJECTS.lock().as_ref().map(f)
}

/// Why the object layer could not be set up.
#[derive(Debug)]
pub enum InitError {
    /// Set up already.
    AlreadyUp,
    /// Not set up yet.
    NotUp,
    /// No memory for the tables.
    Memory(crate::memory::frames::FrameError),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AlreadyUp => f.write_str("it is set up already"),
            Self::NotUp => f.write_str("it is not set up"),
            Self::Memory(error) => write!(f, "no memory for it: {error:?}"),
        }
    }
}

/// Sets up an empty object table of `capacity` records, from
/// kernel-object memory.
pub fn init(capacity: usize) -> Result<(), InitError> {
    let mut objects = OBJECTS.lock();
    if objects.is_some() {
        return Err(InitError::AlreadyUp);
    }
    let records = protection::with_windows(|| {
        FrameArray::new_in(protection::capability_memory(), capacity, |_| {
            ObjectRecord::FREE
        })
    })
    .map_err(InitError::Memory)?;
    let table = protection::with_windows(|| {
        FrameArray::new_in(protection::table_memory(), capacity, |_| Object::FREE)
    })
    .map_err(InitError::Memory)?;
    let Ok(caps) = CSpace::new(records) else {
        unreachable!("fresh records are free and fewer than u32::MAX");
    };
    *objects = Some(Objects {
        caps,
        table,
        next_free: 0,
        current: [None; crate::arch::percpu::MAX_CPUS],
        costs: Costs::default(),
    });
    Ok(())
}

/// How many records an object table gets on a machine of `memory_bytes`:
/// one per 32 KiB, from 256 to 4096 (about 200 KiB of tables).
pub fn capacity_for(memory_bytes: u64) -> usize {
    (memory_bytes / (32 << 10)).clamp(256, 4096) as usize
}

/// A kernel-wide summary: what the debug call reports and what a refused
/// invocation must leave unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The capability space's counts.
    pub caps: cspace::Summary,
    /// Budget bytes not yet charged, over every Untyped.
    pub budget_left: u64,
}

impl Objects {
    /// Counts of caps, objects and edges, and the budget left.
    pub fn summary(&self) -> Summary {
        let budget_left = self
            .table
            .iter()
            .map(|object| match &object.body {
                Body::Untyped(budget) => budget.left(),
                _ => 0,
            })
            .sum();
        Summary {
            caps: self.caps.summary(),
            budget_left,
        }
    }

    /// The paging invocations' costs so far.
    pub fn costs(&self) -> Costs {
        self.costs
    }

    /// The body of live object `id`.
    pub fn body(&self, id: ObjectId) -> Option<&Body> {
        self.table
            .get(id.index())
            .map(|object| &object.body)
            .filter(|body| !matches!(body, Body::Free))
    }

    /// The thread CPU `cpu` runs.
    pub fn current(&self, cpu: usize) -> Option<ObjectId> {
        self.current.get(cpu).copied().flatten()
    }

    /// Saves a stopped thread's registers in its TCB.
    pub fn save_context(&mut self, tcb: ObjectId, context: &crate::arch::usermode::UserContext) {
        let Some(Object {
            body: Body::Tcb(thread),
            ..
        }) = self.table.get_mut(tcb.index())
        else {
            return;
        };
        let c = context;
        thread[0].context = abi::UserContext {
            rip: c.rip,
            rsp: c.rsp,
            rflags: c.rflags,
            rax: c.rax,
            rbx: c.rbx,
            rcx: c.rcx,
            rdx: c.rdx,
            rsi: c.rsi,
            rdi: c.rdi,
            rbp: c.rbp,
            r8: c.r8,
            r9: c.r9,
            r10: c.r10,
            r11: c.r11,
            r12: c.r12,
            r13: c.r13,
            r14: c.r14,
            r15: c.r15,
            fs_base: 0,
            gs_base: 0,
        };
    }

    /// The cap in slot `at`, if the slot exists.
    pub fn cap(&self, at: cspace::SlotRef) -> Option<Cap> {
        self.caps.cap(at)
    }

    /// Where the cap of slot `at` lies, for attack tests.
    pub fn cap_address(&self, at: cspace::SlotRef) -> Option<*const Cap> {
        self.caps.cap_address(at)
    }

    /// Where thread `tcb`'s saved instruction pointer lies, for attack
    /// tests.
    pub fn saved_rip_address(&self, tcb: ObjectId) -> Option<*const u64> {
        match self.body(tcb)? {
            Body::Tcb(thread) => Some(&raw const thread[0].context.rip),
            _ => None,
        }
    }

    /// Where the object table holds thread `tcb`'s handle to its state
    /// block (the handle's address and its size in words) and where that
    /// block is now, for attack tests.
    pub fn thread_state_handle(&self, tcb: ObjectId) -> Option<(*const u64, usize, u64)> {
        match self.body(tcb)? {
            Body::Tcb(thread) => Some((
                (thread as *const FrameArray<Thread>).cast(),
                core::mem::size_of::<FrameArray<Thread>>() / 8,
                thread.as_ptr() as u64,
            )),
            _ => None,
        }
    }

    /// Thread `tcb`'s saved instruction pointer: where it resumes.
    pub fn saved_rip(&self, tcb: ObjectId) -> Option<u64> {
        match self.body(tcb)? {
            Body::Tcb(thread) => Some(thread[0].context.rip),
            _ => None,
        }
    }

    /// Makes `tcb` the thread this CPU runs.
    pub fn set_current(&mut self, tcb: Option<ObjectId>) {
        self.current[crate::arch::percpu::index()] = tcb;
    }

    /// The first `count` free ids, or `None` if the table has fewer.
    fn free_ids(&self, count: usize) -> Option<heapless::Vec<ObjectId, 256>> {
        let len = self.table.len();
        let mut ids = heapless::Vec::new();
        for step in 0..len {
            if ids.len() == count {
                break;
            }
            let index = (self.next_free + step) % len;
            if matches!(self.table[index].body, Body::Free) {
                // `count` is at most the vector's capacity.
                let _ = ids.push(ObjectId(index as u32));
            }
        }
        (ids.len() == count).then_some(ids)
    }

    /// Records object `id`'s body and charge.
    fn place(&mut self, id: ObjectId, body: Body, charge: u64) {
        self.table[id.index()] = Object { body, charge };
        self.next_free = (id.index() + 1) % self.table.len();
    }

    /// The capability space and a finaliser over the object table, borrowed
    /// apart, for the capability operations that may destroy objects.
    fn split(&mut self) -> (&mut Caps, Finaliser<'_>) {
        (
            &mut self.caps,
            Finaliser {
                table: &mut self.table,
            },
        )
    }
}

/// What deleting caps does to the objects: undo mappings, free memory,
/// refund budgets.
pub struct Finaliser<'a> {
    table: &'a mut [Object],
}

impl Finaliser<'_> {
    fn body(&self, id: ObjectId) -> &Body {
        &self.table[id.index()].body
    }
}

impl Finalise<Slots> for Finaliser<'_> {
    fn unmap(&mut self, cap: &Cap) {
        let (id, mapping) = match *cap {
            Cap::Frame {
                id,
                mapped: Some(mapping),
                ..
            }
            | Cap::PagingStructure {
                id,
                mapped: Some(mapping),
                ..
            } => (id, mapping),
            _ => return,
        };
        let Body::VSpace(space) = self.body(mapping.vspace) else {
            panic!(
                "a cap is mapped into object {:?}, which is no VSpace",
                mapping.vspace
            );
        };
        match (self.body(id), cap) {
            (Body::Frame(frame), _) => {
                space.unmap_frame(mapping.vaddr, frame);
            }
            (Body::Table(table), Cap::PagingStructure { level, .. }) => {
                if let Some(level) = vspace::table_level(*level) {
                    space.unlink_table(mapping.vaddr, level, table);
                }
            }
            _ => panic!("mapped cap {cap:?} names an object of another kind"),
        }
    }

    fn finalise(&mut self, object: &Cap, charged_to: Option<ObjectId>, memory: Option<Slots>) {
        let Some(id) = object.object() else {
            return;
        };
        let dead = core::mem::replace(&mut self.table[id.index()], Object::FREE);
        if let Some(untyped) = charged_to {
            match &mut self.table[untyped.index()].body {
                Body::Untyped(budget) => budget.used -= dead.charge,
                _ => panic!("object {id:?} was charged to {untyped:?}, which is no Untyped"),
            }
        }
        // Frames, tables and the VSpace go back to the allocator here
        // (a VSpace zeroes every table still linked in it first).
        drop(dead);
        drop(memory);
    }
}

/// `DebugSummary`: logs the kernel's object summary (COM2, so it never
/// cuts into a test's line on COM1) and returns its words (caps, objects,
/// tree edges, budget left); `None` before [`init`].
pub fn debug_summary() -> Option<[u64; 4]> {
    let guard = OBJECTS.lock();
    let summary = guard.as_ref()?.summary();
    defmt::info!(
        "objects: {=u32} caps, {=u32} objects, {=u32} derivation edges, {=u64} budget bytes left",
        summary.caps.caps,
        summary.caps.objects,
        summary.caps.edges,
        summary.budget_left
    );
    Some([
        u64::from(summary.caps.caps),
        u64::from(summary.caps.objects),
        u64::from(summary.caps.edges),
        summary.budget_left,
    ])
}

/// `DebugFrameInfo`: for the frame cap `cptr` in the calling thread's
/// CSpace, its physical address and whether the direct map translates it.
pub fn debug_frame_info(cptr: u64) -> Result<[u64; 2], Error> {
    let guard = OBJECTS.lock();
    let objects = guard.as_ref().ok_or(Error::IllegalOperation)?;
    let thread = objects
        .current(crate::arch::percpu::index())
        .ok_or(Error::IllegalOperation)?;
    let root = objects
        .caps
        .cap(cspace::SlotRef::new(thread, TCB_CSPACE))
        .unwrap_or_default();
    let (_, cap) = objects
        .caps
        .lookup(&root, abi::CPtr(cptr))
        .map_err(|_| bad_cap(0))?;
    let Some(Body::Frame(frame)) = cap.object().and_then(|id| objects.body(id)) else {
        return Err(bad_cap(0));
    };
    let phys = frame.addr();
    let virt = crate::memory::direct_map::DIRECT_MAP_BASE + phys;
    let mapped = crate::memory::walk::leaf(crate::memory::kernel_root(), virt).is_some();
    Ok([phys, u64::from(mapped)])
}

/// `InvalidCapability` for the invoked cap (0) or extra cap `n` (n + 1).
const fn bad_cap(index: u8) -> Error {
    Error::InvalidCapability { index }
}
