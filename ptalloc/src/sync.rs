//! Locks and atomics, from `spin` and `core` normally and from `loom` when
//! the crate is model-checked (`RUSTFLAGS="--cfg loom"`).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// A mutual-exclusion lock with one interface for both builds.
pub(crate) struct Lock<T> {
    #[cfg(not(loom))]
    inner: spin::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(loom))]
pub(crate) type Guard<'a, T> = spin::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type Guard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Lock<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Self {
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Takes the lock, calling `wait` between tries while another holds
    /// it: a kernel whose CPUs spin with interrupts off answers TLB
    /// shootdowns there (the holder may be waiting for this CPU's
    /// acknowledgement, see `DirectMap::wait_for_lock`).
    pub(crate) fn lock(&self, wait: impl Fn()) -> Guard<'_, T> {
        loop {
            #[cfg(not(loom))]
            if let Some(guard) = self.inner.try_lock() {
                return guard;
            }
            #[cfg(loom)]
            if let Ok(guard) = self.inner.try_lock() {
                return guard;
            }
            // Spin on a read, not on the swap, so that waiters do not pull
            // the line from the holder.
            #[cfg(not(loom))]
            while self.inner.is_locked() {
                wait();
            }
            #[cfg(loom)]
            {
                wait();
                loom::thread::yield_now();
            }
        }
    }
}
