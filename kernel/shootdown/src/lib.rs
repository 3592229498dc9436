//! The kernel's batched TLB shootdown protocol, without the hardware.
//!
//! A change that takes permissions away from a mapping (a direct-map
//! conversion, a kernel-space unmap, a user unmap) must be flushed from
//! every CPU's TLB before the frames are used again. Doing it with one
//! inter-processor interrupt per page (or per pageblock) is what made
//! frequent page-table protection changes too dear on SMP, so the kernel
//! flushes **one round per batch**: the changes of one operation are
//! collected in a [`Batch`], which names the pages to invalidate or, past
//! the measured flush limit, asks for a full flush; then one [`Mailbox`]
//! round interrupts every target CPU once and waits until each has
//! flushed.
//!
//! What this crate owns and promises (it knows nothing of x86: the kernel
//! passes in how to send the IPIs and how to flush locally):
//! - [`CpuSet`]: sets of CPU indices, up to [`MAX_CPUS`];
//! - [`Batch`]: a batch's flush, pages while at most `limit` of them (and
//!   at most [`MAX_PAGES`]), a full flush beyond;
//! - [`Mailbox::shoot`]: one round at a time (initiators are serialised);
//!   the request is published before the IPIs go out, the initiator flushes
//!   itself if it is a target, and it returns only once every remote
//!   target has acknowledged the round, that is, flushed. A CPU waiting to
//!   start its own round answers the round in flight meanwhile, so two
//!   CPUs shooting at each other never deadlock;
//! - [`Mailbox::handle`]: the IPI handler's part, idempotent, so a late or
//!   spurious interrupt flushes nothing more;
//! - [`LoadedOn`]: which CPUs have a user address space loaded, so a user
//!   unmap targets only those;
//! - counters of rounds, CPUs interrupted, pages and full flushes
//!   ([`Stats`]).
//!
//! Model-checked with loom (`tests/loom.rs`, `make loom-test`) and
//! host-tested (`tests/protocol.rs`). No `unsafe`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod sync;

use core::fmt;
use sync::{AtomicU64, Lock, Ordering, fence, spin};

/// Most CPUs the protocol can name: one bit each in a [`CpuSet`].
pub const MAX_CPUS: usize = 64;

/// Most pages one round names; a batch with more asks for a full flush.
pub const MAX_PAGES: usize = 32;

/// A set of CPU indices (0 to [`MAX_CPUS`] - 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(u64);

impl CpuSet {
    /// No CPU.
    pub const EMPTY: CpuSet = CpuSet(0);

    /// CPUs `0..count` (all of them from [`MAX_CPUS`] up).
    pub const fn first(count: usize) -> Self {
        if count >= MAX_CPUS {
            CpuSet(u64::MAX)
        } else {
            CpuSet((1 << count) - 1)
        }
    }

    /// The one CPU `cpu`; empty if `cpu` is out of range.
    pub const fn single(cpu: usize) -> Self {
        if cpu < MAX_CPUS {
            CpuSet(1 << cpu)
        } else {
            CpuSet(0)
        }
    }

    /// This set and `cpu`.
    pub const fn with(self, cpu: usize) -> Self {
        CpuSet(self.0 | Self::single(cpu).0)
    }

    /// This set without `cpu`.
    pub const fn without(self, cpu: usize) -> Self {
        CpuSet(self.0 & !Self::single(cpu).0)
    }

    /// The CPUs in both sets.
    pub const fn intersection(self, other: CpuSet) -> Self {
        Self(self.0 & other.0)
    }

    /// True if `cpu` is in the set.
    pub const fn contains(self, cpu: usize) -> bool {
        self.0 & Self::single(cpu).0 != 0
    }

    /// True if every CPU of this set is in `other`.
    pub const fn is_subset(self, other: CpuSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Number of CPUs in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// True if the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The CPUs of the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_CPUS).filter(move |&cpu| self.contains(cpu))
    }

    /// The set as a bit mask (bit `n` for CPU `n`).
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What every target CPU of a round flushes.
// One request lives in the mailbox at a time, and there is no heap to box
// the page list into: the size is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Invalidate the translation of each of these addresses (one per
    /// page; for a 2 MiB or 1 GiB page, any address inside it).
    Pages(heapless::Vec<u64, MAX_PAGES>),
    /// Drop every translation the change may have left: the kernel's full
    /// flush.
    All,
}

impl Flush {
    /// Pages named (0 for a full flush).
    pub fn pages(&self) -> u64 {
        match self {
            Flush::Pages(pages) => pages.len() as u64,
            Flush::All => 0,
        }
    }
}

/// The flush one batch of changes needs: the pages, while there are at
/// most `limit` of them (the measured point where a full flush becomes
/// cheaper than one invalidation each, `memory::tlb`'s limit) and at most
/// [`MAX_PAGES`]; a full flush beyond.
#[derive(Clone, Debug)]
pub struct Batch {
    pages: heapless::Vec<u64, MAX_PAGES>,
    all: bool,
    limit: usize,
}

impl Batch {
    /// An empty batch that names at most `limit` pages.
    pub fn new(limit: usize) -> Self {
        Self {
            pages: heapless::Vec::new(),
            all: false,
            limit: limit.min(MAX_PAGES),
        }
    }

    /// Adds the page at `addr` (ignored if already named).
    pub fn add(&mut self, addr: u64) {
        if self.all || self.pages.contains(&addr) {
            return;
        }
        if self.pages.len() >= self.limit || self.pages.push(addr).is_err() {
            self.add_all();
        }
    }

    /// Makes the batch a full flush.
    pub fn add_all(&mut self) {
        self.all = true;
        self.pages.clear();
    }

    /// True if nothing needs flushing.
    pub fn is_empty(&self) -> bool {
        !self.all && self.pages.is_empty()
    }

    /// The flush the batch needs, if any.
    pub fn flush(&self) -> Option<Flush> {
        if self.all {
            Some(Flush::All)
        } else if self.pages.is_empty() {
            None
        } else {
            Some(Flush::Pages(self.pages.clone()))
        }
    }
}

/// Why a round was refused. Nothing was sent or flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShootError {
    /// The calling CPU, or a target, is not one of the mailbox's CPUs.
    BadCpu(usize),
}

impl fmt::Display for ShootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShootError::BadCpu(cpu) => write!(f, "CPU {cpu} is not one this mailbox serves"),
        }
    }
}

/// What one call of [`Mailbox::shoot`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// The CPUs interrupted (targets other than the caller); empty if the
    /// caller was the only target, which needs no IPI.
    pub interrupted: CpuSet,
    /// The round's number (0 if no IPI was sent).
    pub number: u64,
}

/// The protocol's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// IPI rounds sent (calls of `shoot` with a remote target).
    pub rounds: u64,
    /// CPUs interrupted, summed over rounds.
    pub cpus_interrupted: u64,
    /// Pages invalidated, summed over every CPU that flushed them.
    pub pages_flushed: u64,
    /// Full flushes, summed over every CPU that made one.
    pub full_flushes: u64,
}

/// The meeting point of initiators and IPI handlers, for `CPUS` CPUs.
pub struct Mailbox<const CPUS: usize> {
    /// 1 + the CPU whose round is in flight, 0 if none: a lock taken by
    /// compare-and-swap only, since its waiters must keep answering
    /// rounds (they never block).
    initiator: AtomicU64,
    /// The request of the round in flight (or of the last one).
    request: Lock<Option<(CpuSet, Flush)>>,
    /// Number of the round in flight or last sent; published after the
    /// request (release), read before it (acquire).
    round: AtomicU64,
    /// The last round each CPU acknowledged.
    acked: [AtomicU64; CPUS],
    stats: Lock<Stats>,
}

impl<const CPUS: usize> Default for Mailbox<CPUS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CPUS: usize> Mailbox<CPUS> {
    /// A mailbox with no round sent.
    pub fn new() -> Self {
        const { assert!(CPUS >= 1 && CPUS <= MAX_CPUS) };
        Self {
            initiator: AtomicU64::new(0),
            request: Lock::new(None),
            round: AtomicU64::new(0),
            acked: core::array::from_fn(|_| AtomicU64::new(0)),
            stats: Lock::new(Stats::default()),
        }
    }

    /// Flushes `flush` on every CPU of `targets`, as CPU `me`, in one
    /// round: `ipi` interrupts the remote targets (once), `local` flushes
    /// this CPU (if it is a target, and for rounds it answers while it
    /// waits to start its own). Returns once every target has flushed.
    ///
    /// Call it with interrupts off, from the CPU `me` names: while another
    /// round is in flight it answers that round itself, so it never
    /// waits on a CPU that waits on it.
    pub fn shoot(
        &self,
        me: usize,
        targets: CpuSet,
        flush: Flush,
        ipi: &mut dyn FnMut(CpuSet),
        local: &mut dyn FnMut(&Flush),
    ) -> Result<Round, ShootError> {
        if me >= CPUS {
            return Err(ShootError::BadCpu(me));
        }
        if let Some(stranger) = targets.without(me).iter().find(|&cpu| cpu >= CPUS) {
            return Err(ShootError::BadCpu(stranger));
        }
        let remote = targets.without(me);
        let claim = me as u64 + 1;
        while self
            .initiator
            .compare_exchange(0, claim, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Another CPU's round is in flight and may wait on us.
            self.handle(me, local);
            spin();
        }
        let _round = Initiator(&self.initiator);
        let local_flushes = u64::from(targets.contains(me));
        if remote.is_empty() {
            if targets.contains(me) {
                local(&flush);
            }
            self.count(&flush, 0, local_flushes);
            return Ok(Round {
                interrupted: CpuSet::EMPTY,
                number: 0,
            });
        }
        *self.request.lock() = Some((remote, flush.clone()));
        let number = self.round.load(Ordering::Relaxed) + 1;
        // Publishes the request: a handler that sees this number sees it.
        self.round.store(number, Ordering::Release);
        // The caller's own acknowledgement: it needs no interrupt.
        self.acked[me].store(number, Ordering::Release);
        ipi(remote);
        if targets.contains(me) {
            local(&flush);
        }
        while !remote
            .iter()
            .all(|cpu| self.acked[cpu].load(Ordering::Acquire) >= number)
        {
            spin();
        }
        self.count(&flush, u64::from(remote.len()), local_flushes);
        Ok(Round {
            interrupted: remote,
            number,
        })
    }

    /// The IPI handler's part on CPU `me`: if a round is in flight that
    /// `me` has not acknowledged, flush what it asks (`local`) if `me` is
    /// one of its targets, and acknowledge it. True if it flushed.
    /// Idempotent: a second call for the same round does nothing.
    pub fn handle(&self, me: usize, local: &mut dyn FnMut(&Flush)) -> bool {
        if me >= CPUS {
            return false;
        }
        let number = self.round.load(Ordering::Acquire);
        if self.acked[me].load(Ordering::Relaxed) >= number {
            return false;
        }
        // The request may already be a later round's (if `me` is not a
        // target of this one, it need not answer it first): flushing that
        // one early is harmless, and only `number` is acknowledged.
        let request = self.request.lock().clone();
        let flushed = match request {
            Some((targets, flush)) if targets.contains(me) => {
                local(&flush);
                true
            }
            _ => false,
        };
        // After the flush: the initiator may reuse the frames once it
        // sees this.
        self.acked[me].store(number, Ordering::Release);
        flushed
    }

    /// The last round CPU `cpu` acknowledged.
    pub fn acknowledged(&self, cpu: usize) -> Option<u64> {
        self.acked
            .get(cpu)
            .map(|acked| acked.load(Ordering::Acquire))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        *self.stats.lock()
    }

    fn count(&self, flush: &Flush, interrupted: u64, local: u64) {
        let mut stats = self.stats.lock();
        let flushing = interrupted + local;
        if interrupted > 0 {
            stats.rounds += 1;
            stats.cpus_interrupted += interrupted;
        }
        match flush {
            Flush::Pages(pages) => stats.pages_flushed += pages.len() as u64 * flushing,
            Flush::All => stats.full_flushes += flushing,
        }
    }
}

/// Gives the initiator's claim back when the round is over (or the call
/// returns early).
struct Initiator<'a>(&'a AtomicU64);

impl Drop for Initiator<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// The CPUs that have one address space loaded (its root in CR3): a
/// change to a user space needs flushing there only. A CPU marks itself
/// before it loads the root and unmarks after it has switched away, so a
/// CPU outside the set holds no translation of the space (without PCID,
/// a CR3 load drops them).
#[derive(Debug, Default)]
pub struct LoadedOn(AtomicU64);

impl LoadedOn {
    /// Loaded nowhere.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Loaded nowhere.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// CPU `cpu` is about to load the space.
    pub fn load(&self, cpu: usize) {
        self.0
            .fetch_or(CpuSet::single(cpu).bits(), Ordering::SeqCst);
    }

    /// CPU `cpu` has switched away from the space.
    pub fn unload(&self, cpu: usize) {
        self.0
            .fetch_and(!CpuSet::single(cpu).bits(), Ordering::AcqRel);
    }

    /// The CPUs that may hold translations of the space now. Call after
    /// the change to the space is written: the fence orders that write
    /// before this read, so a CPU missing from the set marked itself
    /// after the change and loads the root with the change in place
    /// (x86 may otherwise let the read pass the write in its store
    /// buffer).
    pub fn cpus(&self) -> CpuSet {
        fence(Ordering::SeqCst);
        CpuSet(self.0.load(Ordering::SeqCst))
    }
}
