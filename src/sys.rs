//! Thin, safe wrappers over the few libc calls the runtime needs.
//!
//! Every `unsafe` block of the crate that is not about a specific protocol (SCM_RIGHTS lives in
//! `ipc::channel`, fork/exec in `primary::spawn`) is here, next to its SAFETY argument.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::error::{Error, Result};

/// Turns a libc return value into `io::Result`, reading `errno` on -1.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a freshly returned descriptor (checked for -1) in an `OwnedFd`, numbered above
/// stdio (see [`above_stdio`]).
pub fn owned(ret: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret)?;
    // SAFETY: `fd` was just returned by the kernel to us and nothing else owns it.
    above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd`, or when it is numbered 0-2 a CLOEXEC duplicate numbered 3 or more (the original is
/// closed). A host that closed its stdio (a daemon) leaves 0-2 free, and a descriptor of ours
/// there would be replaced by a silent worker's /dev/null stdio (a channel end, or the epoll
/// fd that a FORK-mode worker closes on its way, taking its new stdin with it) or written by
/// the host's own `printf`. Costs nothing for the usual fd above 2.
pub fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads the integer fd; the result is a new descriptor we own.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory-safety requirements; a bad fd gives EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// Sets or clears O_NONBLOCK (a property of the open file description, shared by dups).
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory-safety requirements; a bad fd gives EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// A CLOEXEC duplicate of `fd` (what `cluster_send_fd` passes, so the caller keeps its own).
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the integer fd; the result is a new descriptor we own.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })
}

/// The identity of the open file behind `fd`: (st_dev, st_ino) from fstat. Every socket has an
/// inode of its own, so two fds with the same identity are the same socket (None when fstat
/// fails).
pub fn file_identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value; fstat only writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    ok.then_some((st.st_dev, st.st_ino))
}

/// True when `fd` is an open socket.
pub fn is_socket(fd: RawFd) -> bool {
    // SAFETY: an all-zero `stat` is a valid value; fstat only writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    ok && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// True when `fd` is a socket in the listening state (SO_ACCEPTCONN).
pub fn is_listening_socket(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the kernel to write an int option.
    let ok = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut v as *mut libc::c_int).cast(), &mut len)
    };
    ok == 0 && v != 0
}

/// Closes an fd that another process (a worker) gave us, without blocking: the one way the
/// primary closes what a worker sent (a bad frame's fds, a message nobody can take, an fd
/// given back that is not the connection, a copy of a connection a worker served).
///
/// A socket's close blocks for up to its `SO_LINGER` time while unsent data remains, and a
/// worker chooses that option (a TCP socket with `{1, N}` and a full send buffer would stall
/// the primary's loop for N seconds). So lingering is turned off first, with `{0, 0}`:
/// close then returns at once and the kernel still sends what is queued, gracefully, in the
/// background, as for any socket left at the default. (`{1, 0}` would not block either,
/// but it resets the connection and discards unsent data: for the primary's copy of a client
/// connection that a worker already answered, that would destroy the answer.) SO_LINGER is a
/// property of the socket, not of the fd: whoever else holds it no longer lingers either.
/// On anything but a socket the setsockopt fails (ENOTSOCK) and changes nothing.
pub fn close_untrusted(fd: OwnedFd) {
    linger_off(fd.as_raw_fd());
    drop(fd);
}

/// Turns SO_LINGER off on a socket (see `close_untrusted`); a no-op on other fds.
pub fn linger_off(fd: RawFd) {
    set_linger(fd, None).ok(); // ENOTSOCK on anything but a socket
}

/// Sets SO_LINGER: `Some(secs)` makes the last close wait up to `secs` for unsent data,
/// None turns lingering off.
pub fn set_linger(fd: RawFd, secs: Option<i32>) -> io::Result<()> {
    let l = libc::linger { l_onoff: i32::from(secs.is_some()), l_linger: secs.unwrap_or(0) };
    let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: we pass a pointer to a live `linger` and its exact size.
    cvt(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), len) })
        .map(drop)
}

/// A pair of connected, non-blocking, CLOEXEC SOCK_SEQPACKET Unix sockets.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    let ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })
        .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_SEQPACKET)", e))?;
    // SAFETY: both descriptors were just created for us and are owned by nothing else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A worker's end must survive the child's silent stdio (see `above_stdio`).
    let moved = |fd| above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    Ok((moved(a)?, moved(b)?))
}

/// Asks for a larger socket send buffer; the kernel caps it at `wmem_max`, which is fine.
pub fn grow_sndbuf(fd: RawFd, bytes: libc::c_int) {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes).ok();
}

/// setsockopt with an int value.
pub fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: we pass a pointer to a live c_int and its exact size.
    cvt(unsafe { libc::setsockopt(fd, level, opt, (&value as *const libc::c_int).cast(), len) }).map(drop)
}

/// A non-blocking, CLOEXEC eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// This process's soft RLIMIT_NOFILE (u64::MAX when unlimited or unknown).
pub fn fd_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    rl.rlim_cur
}

/// How many fds this process has open (None without /proc).
pub fn open_fd_count() -> Option<usize> {
    // The directory's own fd is in the listing.
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1))
}

/// Bytes a unix socket sent that its peer has not read yet (SIOCOUTQ: what the kernel still
/// charges to the sender); None when the ioctl fails.
pub fn unread_sent(fd: RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (the same number as TIOCOUTQ) writes one int into `n`.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) } == 0;
    ok.then_some(n.max(0) as u64)
}

/// True when `fd` has something to read right now.
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & libc::POLLIN != 0 }
}

/// Waits up to `timeout_ms` for `fd` to become readable (`read`) or writable (`write`).
pub fn wait_fd(fd: RawFd, read: bool, write: bool, timeout_ms: i32) {
    let events = if read { libc::POLLIN } else { 0 } | if write { libc::POLLOUT } else { 0 };
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd; an error (EINTR) only ends the wait early.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

/// Reads and discards whatever is readable on a non-blocking fd (eventfd, pipe, timerfd).
pub fn drain_fd(fd: RawFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// Writes the whole of `bytes` to an fd (blocking fds; retries EINTR and short writes).
pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits. None where the kernel
/// lacks it (before 5.3); the supervisor then falls back to polling waitpid on its own pids.
pub fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: the raw syscall takes two integers; flags 0. PIDFD_NONBLOCK is not needed because
    // we only call waitid with WNOHANG.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return None;
    }
    let fd = owned(ret as libc::c_int).ok()?;
    set_cloexec(fd.as_raw_fd(), true).ok()?;
    Some(fd)
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when it exited, -1 when killed by a signal.
    pub code: i32,
    /// The signal that killed it, 0 when it exited.
    pub signal: i32,
}

/// Reaps `pid` if it has exited (never blocks, never touches other children).
pub fn try_reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for the kernel to write.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret == 0 {
            return Ok(None);
        }
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break;
    }
    Ok(Some(if libc::WIFSIGNALED(status) {
        ExitStatus { code: -1, signal: libc::WTERMSIG(status) }
    } else {
        ExitStatus { code: libc::WEXITSTATUS(status), signal: 0 }
    }))
}

/// `pidfd_send_signal(2)`: signals exactly the process `pidfd` names, never another that
/// reused its pid; ESRCH once it has been reaped.
pub fn pidfd_send_signal(pidfd: RawFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the raw syscall takes an fd, a signal, a NULL siginfo and flags 0.
    let ret =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a signal to a process.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// The number of threads of this process (from /proc/self/stat), for the FORK-mode check.
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The comm field may hold spaces and parentheses: the fields we want follow the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // After ')': state(3) ppid(4) ... num_threads is field 20, the 18th after the comm.
    rest.split_whitespace()
        .nth(17)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/self/stat"))
}

/// Milliseconds on the monotonic clock (for timers and uptimes).
pub fn monotonic_ms() -> u64 {
    clock_ms(libc::CLOCK_MONOTONIC)
}

/// Milliseconds since the Unix epoch (for `started_at_ms`).
pub fn realtime_ms() -> u64 {
    clock_ms(libc::CLOCK_REALTIME)
}

fn clock_ms(clock: libc::clockid_t) -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A timerfd on CLOCK_MONOTONIC (non-blocking, CLOEXEC).
pub fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create takes two integers.
    owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK) })
}

/// Arms a timerfd to fire once after `after` (None disarms it). A zero delay is rounded up to
/// one nanosecond, because a zero `it_value` would disarm instead.
pub fn timerfd_arm(fd: RawFd, after: Option<Duration>) -> io::Result<()> {
    // SAFETY: an all-zero itimerspec is valid (and means "disarm").
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    if let Some(d) = after {
        spec.it_value.tv_sec = d.as_secs() as libc::time_t;
        spec.it_value.tv_nsec = d.subsec_nanos().max(1) as libc::c_long;
    }
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    cvt(unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) }).map(drop)
}

/// Flushes every C stdio stream, so a fork does not print the parent's buffers twice.
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) is defined to flush all open output streams.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// This process's parent pid.
pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() }
}

/// This process's pid.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// This process's effective user id.
pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_sees_a_new_thread() {
        let before = thread_count().unwrap();
        assert!(before >= 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv().ok());
        assert!(thread_count().unwrap() > before.min(1));
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn cloexec_and_nonblocking_toggle() {
        let fd = eventfd().unwrap();
        let raw = fd.as_raw_fd();
        set_cloexec(raw, false).unwrap();
        // SAFETY: F_GETFD on a valid fd.
        assert_eq!(unsafe { libc::fcntl(raw, libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        set_cloexec(raw, true).unwrap();
        // SAFETY: as above.
        assert_ne!(unsafe { libc::fcntl(raw, libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        set_nonblocking(raw, false).unwrap();
        // SAFETY: F_GETFL on a valid fd.
        assert_eq!(unsafe { libc::fcntl(raw, libc::F_GETFL) } & libc::O_NONBLOCK, 0);
    }
}
