//! Loom models of the shootdown hand-off (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p shootdown --test loom --release`).
//!
//! Under `--cfg loom` the mailbox's locks and atomics are loom's, so loom
//! runs each model under every interleaving of the CPUs (threads) that
//! can make a difference. An IPI is a message on the target's channel (the
//! target blocks for it, as a halted CPU waits for an interrupt); a flush
//! is an entry in the target's log. The models check that `shoot` returns
//! only after every target flushed the round, and that two CPUs shooting
//! at each other both finish.
#![cfg(loom)]

use loom::sync::mpsc::{Receiver, Sender, channel};
use loom::sync::{Arc, Mutex};
use loom::thread;
use shootdown::*;

const CPUS: usize = 2;

/// What arrives on a CPU's interrupt line.
enum Interrupt {
    Shootdown,
    /// The model is over.
    Stop,
}

struct Machine {
    mailbox: Mailbox<CPUS>,
    lines: [Sender<Interrupt>; CPUS],
    /// Flush logs, behind loom's mutexes: each flush is a step loom can
    /// interleave with the other CPU's.
    logs: [Mutex<Vec<Flush>>; CPUS],
}

impl Machine {
    fn new() -> (Arc<Self>, [Receiver<Interrupt>; CPUS]) {
        let (line0, rx0) = channel();
        let (line1, rx1) = channel();
        let machine = Arc::new(Self {
            mailbox: Mailbox::new(),
            lines: [line0, line1],
            logs: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        });
        (machine, [rx0, rx1])
    }

    fn shoot(&self, me: usize, targets: CpuSet, flush: Flush) {
        let mut ipi = |cpus: CpuSet| {
            for cpu in cpus.iter() {
                self.lines[cpu]
                    .send(Interrupt::Shootdown)
                    .expect("line open");
            }
        };
        let mut local = |flush: &Flush| self.logs[me].lock().unwrap().push(flush.clone());
        self.mailbox
            .shoot(me, targets, flush, &mut ipi, &mut local)
            .expect("valid CPUs");
    }

    /// CPU `me` answers interrupts until told to stop.
    fn serve(&self, me: usize, line: &Receiver<Interrupt>) {
        while let Ok(Interrupt::Shootdown) = line.recv() {
            let mut local = |flush: &Flush| self.logs[me].lock().unwrap().push(flush.clone());
            self.mailbox.handle(me, &mut local);
        }
    }

    fn flushed(&self, cpu: usize, flush: &Flush) -> bool {
        self.logs[cpu].lock().unwrap().contains(flush)
    }
}

/// Runs `f` under loom with room for the spin loops (each spin yields to
/// loom's scheduler). The models are small enough to explore without a
/// preemption bound; `LOOM_MAX_PREEMPTIONS` sets one if they grow.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = builder.max_branches.max(100_000);
    builder.check(f);
}

fn page(addr: u64) -> Flush {
    Flush::Pages([addr].into_iter().collect())
}

/// CPU 0 shoots at CPU 1, which answers its interrupt: when `shoot`
/// returns, CPU 1 has flushed.
#[test]
fn shoot_returns_after_the_target_flushed() {
    model(|| {
        let (machine, [_line0, line1]) = Machine::new();
        let target = {
            let machine = machine.clone();
            thread::spawn(move || machine.serve(1, &line1))
        };
        machine.shoot(0, CpuSet::first(CPUS), page(0x1000));
        assert!(
            machine.flushed(1, &page(0x1000)),
            "returned before CPU 1 flushed"
        );
        assert!(machine.flushed(0, &page(0x1000)));
        machine.lines[1].send(Interrupt::Stop).unwrap();
        target.join().unwrap();
        assert_eq!(machine.mailbox.stats().rounds, 1);
    });
}

/// Both CPUs shoot at each other at once: the one that waits to start
/// its round answers the other's meanwhile, so both finish, and each
/// flushed the other's request.
#[test]
fn cpus_shooting_at_each_other_both_finish() {
    model(|| {
        let (machine, [line0, line1]) = Machine::new();
        let lines = [line0, line1];
        let cpu = |me: usize, line: Receiver<Interrupt>| {
            let machine = machine.clone();
            thread::spawn(move || {
                let mine = page(0x1000 << me);
                machine.shoot(me, CpuSet::first(CPUS), mine.clone());
                assert!(
                    machine.flushed(1 - me, &mine),
                    "CPU {me}'s round returned early"
                );
                machine.lines[1 - me].send(Interrupt::Stop).unwrap();
                machine.serve(me, &line);
            })
        };
        let [line0, line1] = lines;
        let cpus = [cpu(0, line0), cpu(1, line1)];
        for cpu in cpus {
            cpu.join().unwrap();
        }
        assert_eq!(machine.mailbox.stats().rounds, 2);
    });
}
