//! The shootdown protocol on host threads standing in for CPUs: IPIs are
//! flags each "CPU" polls, flushes are logged, and every round must have
//! reached every target's log before `shoot` returns.

use shootdown::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const CPUS: usize = 4;

/// Four CPUs: their pending-IPI flags and flush logs.
struct Machine {
    mailbox: Mailbox<CPUS>,
    pending: [AtomicBool; CPUS],
    logs: [Mutex<Vec<Flush>>; CPUS],
    ipis: Mutex<Vec<CpuSet>>,
}

impl Machine {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            mailbox: Mailbox::new(),
            pending: Default::default(),
            logs: Default::default(),
            ipis: Mutex::new(Vec::new()),
        })
    }

    fn shoot(&self, me: usize, targets: CpuSet, flush: Flush) -> Result<Round, ShootError> {
        let mut ipi = |cpus: CpuSet| {
            self.ipis.lock().unwrap().push(cpus);
            for cpu in cpus.iter() {
                self.pending[cpu].store(true, Ordering::Release);
            }
        };
        let mut local = |flush: &Flush| self.logs[me].lock().unwrap().push(flush.clone());
        self.mailbox.shoot(me, targets, flush, &mut ipi, &mut local)
    }

    /// The interrupt handler of CPU `me`, if an IPI is pending.
    fn poll(&self, me: usize) {
        if self.pending[me].swap(false, Ordering::AcqRel) {
            let mut local = |flush: &Flush| self.logs[me].lock().unwrap().push(flush.clone());
            self.mailbox.handle(me, &mut local);
        }
    }

    fn log(&self, cpu: usize) -> Vec<Flush> {
        self.logs[cpu].lock().unwrap().clone()
    }
}

fn pages(addrs: &[u64]) -> Flush {
    Flush::Pages(addrs.iter().copied().collect())
}

#[test]
fn cpu_sets_name_what_they_hold() {
    let set = CpuSet::EMPTY.with(0).with(3).with(3).with(64);
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 3]);
    assert_eq!(format!("{set:?}"), "{0, 3}");
    assert_eq!(
        (set.len(), set.contains(3), set.contains(2)),
        (2, true, false)
    );
    assert_eq!(set.without(0), CpuSet::single(3));
    assert_eq!(CpuSet::first(4).bits(), 0b1111);
    assert_eq!(CpuSet::first(64).len(), 64);
    assert!(CpuSet::single(3).is_subset(CpuSet::first(4)));
    assert!(!CpuSet::single(4).is_subset(CpuSet::first(4)));
    assert!(CpuSet::single(99).is_empty());
    assert_eq!(set.intersection(CpuSet::first(2)), CpuSet::single(0));
    assert_eq!(set.intersection(CpuSet::EMPTY), CpuSet::EMPTY);
}

#[test]
fn a_batch_names_pages_up_to_its_limit_then_flushes_all() {
    let mut batch = Batch::new(3);
    assert!(batch.is_empty() && batch.flush().is_none());
    for addr in [0x1000, 0x2000, 0x1000, 0x3000] {
        batch.add(addr);
    }
    assert_eq!(batch.flush(), Some(pages(&[0x1000, 0x2000, 0x3000])));
    assert!(!batch.is_empty());
    batch.add(0x4000);
    assert_eq!(batch.flush(), Some(Flush::All));
    batch.add(0x5000);
    assert_eq!(batch.flush(), Some(Flush::All));
    // A limit of 0 (INVLPG never pays) makes any change a full flush; the
    // limit is capped at what a round can carry.
    let mut never = Batch::new(0);
    never.add(0x1000);
    assert_eq!(never.flush(), Some(Flush::All));
    assert!(!never.is_empty());
    let mut big = Batch::new(1000);
    (0..MAX_PAGES as u64).for_each(|page| big.add(page << 12));
    assert_eq!(big.flush().map(|f| f.pages()), Some(MAX_PAGES as u64));
    big.add(u64::MAX);
    assert_eq!(big.flush(), Some(Flush::All));
}

#[test]
fn one_round_reaches_every_target_before_shoot_returns() {
    let machine = Machine::new();
    let stop = Arc::new(AtomicBool::new(false));
    let handlers: Vec<_> = (1..CPUS)
        .map(|cpu| {
            let (machine, stop) = (machine.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    machine.poll(cpu);
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for round in 1..=50u64 {
        let flush = pages(&[round << 12]);
        let targets = CpuSet::first(CPUS);
        let done = machine.shoot(0, targets, flush.clone()).unwrap();
        assert_eq!(done.interrupted, targets.without(0));
        assert_eq!(done.number, round);
        for cpu in 0..CPUS {
            assert_eq!(
                machine.log(cpu).last(),
                Some(&flush),
                "CPU {cpu}, round {round}"
            );
        }
    }
    stop.store(true, Ordering::Release);
    handlers.into_iter().for_each(|h| h.join().unwrap());
    let stats = machine.mailbox.stats();
    assert_eq!(stats.rounds, 50);
    assert_eq!(stats.cpus_interrupted, 150);
    assert_eq!(stats.pages_flushed, 200);
    // One IPI per round, to the three others.
    let ipis = machine.ipis.lock().unwrap().clone();
    assert_eq!(ipis.len(), 50);
    assert!(
        ipis.iter()
            .all(|&cpus| cpus == CpuSet::first(CPUS).without(0))
    );
}

#[test]
fn cpus_shooting_at_each_other_all_finish() {
    let machine = Machine::new();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpus: Vec<_> = (0..CPUS)
        .map(|me| {
            let (machine, finished) = (machine.clone(), finished.clone());
            std::thread::spawn(move || {
                for round in 0..25u64 {
                    let flush = if round % 5 == 0 {
                        Flush::All
                    } else {
                        pages(&[(me as u64) << 20 | round << 12])
                    };
                    machine
                        .shoot(me, CpuSet::first(CPUS), flush.clone())
                        .unwrap();
                    // Every other CPU flushed it.
                    for cpu in (0..CPUS).filter(|&cpu| cpu != me) {
                        assert!(machine.log(cpu).contains(&flush));
                    }
                    machine.poll(me);
                }
                finished.fetch_add(1, Ordering::AcqRel);
                // Keep answering until everyone is done.
                while finished.load(Ordering::Acquire) < CPUS {
                    machine.poll(me);
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    cpus.into_iter().for_each(|cpu| cpu.join().unwrap());
    let stats = machine.mailbox.stats();
    assert_eq!(stats.rounds, 100);
    assert_eq!(stats.cpus_interrupted, 300);
    assert_eq!(stats.full_flushes, 5 * 4 * 4);
}

#[test]
fn a_round_for_the_caller_alone_sends_no_ipi() {
    let machine = Machine::new();
    let round = machine.shoot(2, CpuSet::single(2), Flush::All).unwrap();
    assert_eq!(
        round,
        Round {
            interrupted: CpuSet::EMPTY,
            number: 0
        }
    );
    assert_eq!(machine.log(2), vec![Flush::All]);
    assert!(machine.ipis.lock().unwrap().is_empty());
    let stats = machine.mailbox.stats();
    assert_eq!((stats.rounds, stats.full_flushes), (0, 1));
}

#[test]
fn bad_cpus_are_refused_and_nothing_is_sent() {
    let machine = Machine::new();
    assert_eq!(
        machine.shoot(CPUS, CpuSet::single(0), Flush::All),
        Err(ShootError::BadCpu(CPUS))
    );
    assert_eq!(
        machine.shoot(0, CpuSet::first(CPUS + 2), Flush::All),
        Err(ShootError::BadCpu(CPUS))
    );
    assert!(machine.ipis.lock().unwrap().is_empty());
    assert_eq!(machine.mailbox.stats(), Stats::default());
    assert_eq!(
        ShootError::BadCpu(7).to_string(),
        "CPU 7 is not one this mailbox serves"
    );
}

#[test]
fn a_late_or_spurious_interrupt_flushes_nothing_more() {
    let machine = Machine::new();
    let handler = {
        let machine = machine.clone();
        std::thread::spawn(move || {
            while machine.mailbox.acknowledged(1) != Some(1) {
                machine.poll(1);
            }
        })
    };
    machine
        .shoot(0, CpuSet::single(1), pages(&[0x7000]))
        .unwrap();
    handler.join().unwrap();
    // A second interrupt for the same round, and one on a CPU no round
    // aimed at: no flush.
    let mut flushed = 0;
    let mut count = |_: &Flush| flushed += 1;
    assert!(!machine.mailbox.handle(1, &mut count));
    assert!(!machine.mailbox.handle(3, &mut count));
    assert!(!machine.mailbox.handle(CPUS, &mut count));
    assert_eq!(flushed, 0);
    assert_eq!(machine.log(1).len(), 1);
    assert_eq!(machine.mailbox.acknowledged(3), Some(1));
}

#[test]
fn a_space_is_flushed_only_where_it_is_loaded() {
    let space = LoadedOn::new();
    space.load(1);
    space.load(3);
    assert_eq!(space.cpus(), CpuSet::EMPTY.with(1).with(3));
    space.unload(1);
    assert_eq!(space.cpus(), CpuSet::single(3));
}
