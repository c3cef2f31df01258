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
        // SAFETY: sched_getscheduler(2) takes a pid (0: the calling thread).
        let before = unsafe { libc::sched_getscheduler(0) };
        if before != libc::SCHED_OTHER {
            return None;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param; 0 names the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            log::debug!("SCHED_BATCH refused: {}", std::io::Error::last_os_error());
            return None;
        }
        BEFORE.store(before, Ordering::Relaxed);
        // SAFETY: gettid(2) has no arguments and cannot fail.
        Some(Batch { tid: unsafe { libc::gettid() }, before })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        BEFORE.store(-1, Ordering::Relaxed);
        // SAFETY: as in `enter`; only the thread that switched switches back (a runtime that
        // finishes on another thread leaves that one alone).
        unsafe {
            if libc::gettid() == self.tid {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, self.before, &param);
            }
        }
    }
}

/// In a child just forked by the primary: back to the class its thread had before the switch
/// (only if it runs under SCHED_BATCH: a child forked from another thread keeps that thread's
/// class). Async-signal-safe (an atomic load and system calls).
pub fn reset_in_child() {
    let before = BEFORE.load(Ordering::Relaxed);
    // SAFETY: sched_getscheduler takes a pid (0: the calling thread).
    if before >= 0 && unsafe { libc::sched_getscheduler(0) } == libc::SCHED_BATCH {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is valid; 0 names the calling thread.
        unsafe { libc::sched_setscheduler(0, before, &param) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_this_thread_and_back() {
        std::thread::spawn(|| {
            // SAFETY: as above.
            let class = || unsafe { libc::sched_getscheduler(0) };
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
