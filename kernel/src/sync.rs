//! The kernel's lock: a spin lock whose waiters answer TLB shootdowns.
//!
//! Kernel code runs with interrupts off (the concurrency model in the
//! README): a CPU is interrupted only where it waits, parked in `hlt`. A
//! CPU that holds a lock may be inside a shootdown round, waiting for every
//! other CPU to flush; a CPU spinning on that lock with interrupts off
//! would never see the IPI, and both would wait forever. So every lock
//! that a shootdown can happen under is this one, whose spin loop answers
//! the round in flight (`memory::tlb::answer_shootdown`, which takes no
//! lock). seL4 does the same in its lock's spin loop. `ptalloc`'s own locks
//! do it through `DirectMap::wait_for_lock`.
//!
//! Written here because `spin` gives the lock and the hook
//! (`RelaxStrategy`), not the kernel's answer.

/// Waiting for a lock: answer a shootdown round that names this CPU, then
/// pause.
pub struct AnswerShootdowns;

impl spin::RelaxStrategy for AnswerShootdowns {
    fn relax() {
        crate::memory::tlb::answer_shootdown_while_waiting();
        core::hint::spin_loop();
    }
}

/// A spin lock whose waiters answer shootdowns.
pub type Mutex<T> = spin::mutex::Mutex<T, AnswerShootdowns>;
/// Its guard.
pub type MutexGuard<'a, T> = spin::mutex::MutexGuard<'a, T, AnswerShootdowns>;
