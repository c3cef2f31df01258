//! Process signals turned into loop events with a self-pipe.
//!
//! A signalfd would need the signals blocked in every thread, and the library must never block
//! signals in threads it does not own (Node, Python and C hosts have their own). A handler that
//! writes the signal number into a non-blocking pipe works whatever the thread masks are, and
//! the previous dispositions are restored when the runtime ends.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

use crate::error::{Error, Result};
use crate::sys;

static WRITE_END: AtomicI32 = AtomicI32::new(-1);

/// The handler: the signal number into the pipe, nothing else (async-signal-safe). A full pipe
/// (EAGAIN) only loses a duplicate of a signal already pending in it.
extern "C" fn on_signal(signo: libc::c_int) {
    let fd = WRITE_END.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the pipe's write end, which `SignalPipe` keeps open until `restore` has set
        // WRITE_END back to -1 and put the old handlers back.
        unsafe { sys::raw::signal_safe_write(fd, &[signo as u8]) };
    }
}

/// Installed handlers and the pipe they write to. Dropping it restores the old dispositions.
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    saved: Vec<(Signal, SigAction)>,
}

impl SignalPipe {
    /// Catches `signals` into a new pipe.
    pub fn install(signals: &[libc::c_int]) -> Result<SignalPipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| Error::sys("pipe2 for signals", e))?;
        let read = sys::above_stdio(read).map_err(|e| Error::sys("pipe2", e))?;
        let write = sys::above_stdio(write).map_err(|e| Error::sys("pipe2", e))?;
        WRITE_END.store(write.as_raw_fd(), Ordering::Relaxed);
        let mut saved = Vec::new();
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        for &sig in signals {
            let sig = Signal::try_from(sig).map_err(|e| Error::sys(format!("signal {sig}"), e))?;
            // SAFETY: `on_signal` is async-signal-safe (see it).
            let old =
                unsafe { signal::sigaction(sig, &action) }.map_err(|e| Error::sys(format!("sigaction({sig})"), e))?;
            saved.push((sig, old));
        }
        Ok(SignalPipe { read, _write: write, saved })
    }

    /// The fd to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signals caught since the last call, in arrival order.
    pub fn take(&self) -> Vec<libc::c_int> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = nix::unistd::read(&self.read, &mut buf) {
            out.extend(buf[..n].iter().map(|&b| libc::c_int::from(b)));
        }
        out
    }

    /// Puts back the dispositions that were there before `install`.
    fn restore(&self) {
        WRITE_END.store(-1, Ordering::Relaxed);
        for (sig, old) in &self.saved {
            // SAFETY: `old` is the action the kernel gave us for this signal: it was installed
            // before, by whoever installed it.
            unsafe { signal::sigaction(*sig, old) }.ok();
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Sets `signals` back to their default action and unblocks every signal, in a freshly forked
/// child (async-signal-safe: only sigaction and sigprocmask).
pub fn reset_in_child(signals: &[libc::c_int]) {
    for sig in signals.iter().filter_map(|&s| Signal::try_from(s).ok()) {
        // SAFETY: SIG_DFL runs no code of ours; nix's signal is one sigaction call, which is
        // async-signal-safe.
        unsafe { signal::signal(sig, SigHandler::SigDfl) }.ok();
    }
    // One rt_sigprocmask call on a set on the stack: async-signal-safe.
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).ok();
}

/// The signals the primary handles when the config lets it take them over.
pub const PRIMARY_SIGNALS: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGQUIT];

/// The signals a worker handles when it takes them over (both mean "stop gracefully").
pub const WORKER_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];
