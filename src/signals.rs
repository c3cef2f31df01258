//! Process signals turned into loop events with a self-pipe.
//!
//! A signalfd would need the signals blocked in every thread, and the library must never block
//! signals in threads it does not own (Node, Python and C hosts have their own). A handler that
//! writes the signal number into a non-blocking pipe works whatever the thread masks are, and
//! the previous dispositions are restored when the runtime ends.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};
use crate::sys::{cvt, owned};

static WRITE_END: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = WRITE_END.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno is saved and restored around write(2), which is async-signal-safe; a full
        // pipe (EAGAIN) only loses a duplicate of a signal already pending in it.
        unsafe {
            let errno = *libc::__errno_location();
            let byte = signo as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installed handlers and the pipe they write to. Dropping it restores the old dispositions.
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    /// Catches `signals` into a new pipe.
    pub fn install(signals: &[libc::c_int]) -> Result<SignalPipe> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a writable array of two ints.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })
            .map_err(|e| Error::sys("pipe2 for signals", e))?;
        let read = owned(fds[0]).map_err(|e| Error::sys("pipe2", e))?;
        let write = owned(fds[1]).map_err(|e| Error::sys("pipe2", e))?;
        WRITE_END.store(write.as_raw_fd(), Ordering::Relaxed);
        let mut saved = Vec::new();
        for &sig in signals {
            // SAFETY: all-zero sigaction values are valid; we fill handler, mask and flags.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_signal as *const () as usize;
            new.sa_flags = libc::SA_RESTART;
            // SAFETY: sa_mask is a valid sigset_t to initialise.
            unsafe { libc::sigemptyset(&mut new.sa_mask) };
            // SAFETY: both pointers are valid sigaction structs.
            cvt(unsafe { libc::sigaction(sig, &new, &mut old) })
                .map_err(|e| Error::sys(format!("sigaction({sig})"), e))?;
            saved.push((sig, old));
        }
        Ok(SignalPipe { read, _write: write, saved })
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The signals caught since the last call, in arrival order.
    pub fn take(&self) -> Vec<libc::c_int> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend(buf[..n as usize].iter().map(|&b| libc::c_int::from(b)));
        }
        out
    }

    /// Puts back the dispositions that were there before `install`.
    fn restore(&self) {
        WRITE_END.store(-1, Ordering::Relaxed);
        for (sig, old) in &self.saved {
            // SAFETY: `old` is the sigaction the kernel gave us for this signal.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
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
    for &sig in signals {
        // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty set is valid; sigprocmask is async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The signals the primary handles when the config lets it take them over.
pub const PRIMARY_SIGNALS: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGQUIT];

/// The signals a worker handles when it takes them over (both mean "stop gracefully").
pub const WORKER_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];
