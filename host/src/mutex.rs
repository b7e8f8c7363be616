//! The host's one way to take a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, taking it even when a thread panicked while holding it: the host's mutexes
/// guard counters, queues and maps that stay consistent between statements, and a panic
/// elsewhere must not take down every later user of the lock.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
