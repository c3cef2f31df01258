//! Requests that may come from a signal handler (`cluster_shutdown`): an atomic and a write to
//! the running loop's eventfd, nothing that allocates or takes a lock. The runtime applies them
//! the next time anything takes its lock: the loop's next turn (the write wakes it), or any
//! call made before that.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};

/// The running runtime's waker eventfd; -1 when none runs.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Requests between their read of `WAKE_FD` and their write to it: `withdraw` waits for them
/// before the eventfd may be closed (its number could be reused by then).
static USERS: AtomicUsize = AtomicUsize::new(0);
/// The shortest grace asked for, plus one; 0: no shutdown asked.
static SHUTDOWN: AtomicU64 = AtomicU64::new(0);

/// A runtime now runs, woken through eventfd `fd` (which stays open until `withdraw`).
pub fn publish(fd: RawFd) {
    SHUTDOWN.store(0, SeqCst);
    WAKE_FD.store(fd, SeqCst);
}

/// The runtime ends: once this returns, no request writes to its eventfd any more.
pub fn withdraw() {
    WAKE_FD.store(-1, SeqCst);
    while USERS.load(SeqCst) > 0 {
        // A signal handler on another thread is between two system calls: it is done at once.
        std::hint::spin_loop();
    }
    SHUTDOWN.store(0, SeqCst);
}

/// In a FORK-mode child: the parent's runtime, its eventfd and its requests are not ours (the
/// child is single-threaded, nothing of the parent is mid-request).
pub fn forget() {
    WAKE_FD.store(-1, SeqCst);
    USERS.store(0, SeqCst);
    SHUTDOWN.store(0, SeqCst);
}

/// Asks the running runtime to shut down with `grace_ms` (the shortest of several asks wins).
/// False when no runtime runs. Async-signal-safe: atomics and write(2), errno preserved.
pub fn ask_shutdown(grace_ms: u32) -> bool {
    USERS.fetch_add(1, SeqCst);
    let fd = WAKE_FD.load(SeqCst);
    if fd >= 0 {
        let want = u64::from(grace_ms) + 1;
        // An Err only means a shorter grace is already asked for.
        let _ = SHUTDOWN.fetch_update(SeqCst, SeqCst, |cur| (cur == 0 || want < cur).then_some(want));
        // SAFETY: the eventfd, which `withdraw` keeps open while USERS counts us.
        unsafe { crate::sys::raw::signal_safe_write(fd, &1u64.to_ne_bytes()) };
    }
    USERS.fetch_sub(1, SeqCst);
    fd >= 0
}

/// The shutdown asked for since the last call (its grace in ms), if any.
pub fn take_shutdown() -> Option<u32> {
    match SHUTDOWN.swap(0, SeqCst) {
        0 => None,
        v => Some(u32::try_from(v - 1).unwrap_or(u32::MAX)),
    }
}
