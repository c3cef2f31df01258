//! The system layer: safe wrappers over the system calls the runtime needs, on nix, with
//! descriptors as `OwnedFd` (owned) or `AsFd`/`BorrowedFd` (borrowed) and errors as `Errno`.
//!
//! What nix lacks, or wraps in a way the runtime cannot use, is in [`raw`], the one libc shim.

pub mod raw;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;

use crate::error::{Error, Result};

pub use raw::{cvt, owned};

/// `fd`, or when it is numbered 0-2 a CLOEXEC duplicate numbered 3 or more (the original is
/// closed). A host that closed its stdio (a daemon) leaves 0-2 free, and a descriptor of ours
/// there would be replaced by a silent worker's /dev/null stdio (a channel end, or the epoll
/// fd that a FORK-mode worker closes on its way, taking its new stdin with it) or written by
/// the host's own `printf`. Costs nothing for the usual fd above 2.
pub fn above_stdio(fd: OwnedFd) -> nix::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    raw::dup_above_stdio(fd.as_fd())
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: impl AsFd, on: bool) -> nix::Result<()> {
    let flags = FdFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFD)?);
    let new = if on { flags | FdFlag::FD_CLOEXEC } else { flags - FdFlag::FD_CLOEXEC };
    if new != flags {
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(new))?;
    }
    Ok(())
}

/// Sets or clears O_NONBLOCK (a property of the open file description, shared by dups).
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    let new = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
    if new != flags {
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(new))?;
    }
    Ok(())
}

/// A CLOEXEC duplicate of `fd`, numbered above stdio (what `cluster_send_fd` passes, so the
/// caller keeps its own).
pub fn dup_cloexec(fd: impl AsFd) -> nix::Result<OwnedFd> {
    raw::dup_above_stdio(fd.as_fd())
}

/// The identity of the open file behind `fd`: (st_dev, st_ino) from fstat. Every socket has an
/// inode of its own, so two fds with the same identity are the same socket (None when fstat
/// fails).
pub fn file_identity(fd: impl AsFd) -> Option<(u64, u64)> {
    fstat(fd.as_fd()).ok().map(|st| (st.st_dev, st.st_ino))
}

/// True when `fd` is an open socket.
pub fn is_socket(fd: impl AsFd) -> bool {
    fstat(fd.as_fd()).is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
}

/// True when `fd` is a socket in the listening state (SO_ACCEPTCONN).
pub fn is_listening_socket(fd: impl AsFd) -> bool {
    socket::getsockopt(&fd.as_fd(), sockopt::AcceptConn).unwrap_or(false)
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
    linger_off(&fd);
    drop(fd);
}

/// Turns SO_LINGER off on a socket (see `close_untrusted`); a no-op on other fds.
pub fn linger_off(fd: impl AsFd) {
    set_linger(fd, None).ok(); // ENOTSOCK on anything but a socket
}

/// Sets SO_LINGER: `Some(secs)` makes the last close wait up to `secs` for unsent data,
/// None turns lingering off.
pub fn set_linger(fd: impl AsFd, secs: Option<i32>) -> nix::Result<()> {
    let l = libc::linger { l_onoff: i32::from(secs.is_some()), l_linger: secs.unwrap_or(0) };
    socket::setsockopt(&fd.as_fd(), sockopt::Linger, &l)
}

/// A pair of connected, non-blocking, CLOEXEC SOCK_SEQPACKET Unix sockets.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_SEQPACKET)", e))?;
    // A worker's end must survive the child's silent stdio (see `above_stdio`).
    let moved = |fd| above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    Ok((moved(a)?, moved(b)?))
}

/// Asks for a larger socket send buffer; the kernel caps it at `wmem_max`, which is fine.
pub fn grow_sndbuf(fd: impl AsFd, bytes: usize) {
    socket::setsockopt(&fd.as_fd(), sockopt::SndBuf, &bytes).ok();
}

/// A non-blocking, CLOEXEC eventfd, numbered above stdio.
pub fn eventfd() -> nix::Result<OwnedFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    above_stdio(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?.into())
}

/// This process's soft RLIMIT_NOFILE (u64::MAX when unlimited or unknown).
pub fn fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != libc::RLIM_INFINITY => soft,
        _ => u64::MAX,
    }
}

/// How many fds this process has open (None without /proc).
pub fn open_fd_count() -> Option<usize> {
    // The directory's own fd is in the listing.
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1))
}

/// Bytes a unix socket sent that its peer has not read yet (SIOCOUTQ: what the kernel still
/// charges to the sender); None when the ioctl fails.
pub fn unread_sent(fd: impl AsFd) -> Option<u64> {
    raw::unread_sent(fd.as_fd()).ok()
}

/// True when `fd` has something to read right now.
pub fn readable_now(fd: impl AsFd) -> bool {
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    nix::poll::poll(&mut pfd, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && pfd[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// Waits up to `timeout_ms` for `fd` to become readable (`read`) or writable (`write`).
pub fn wait_fd(fd: impl AsFd, read: bool, write: bool, timeout_ms: i32) {
    let mut events = PollFlags::empty();
    events.set(PollFlags::POLLIN, read);
    events.set(PollFlags::POLLOUT, write);
    let timeout = PollTimeout::try_from(timeout_ms.max(0)).unwrap_or(PollTimeout::MAX);
    // An error (EINTR) only ends the wait early.
    nix::poll::poll(&mut [PollFd::new(fd.as_fd(), events)], timeout).ok();
}

/// Reads and discards whatever is readable on a non-blocking fd (eventfd, pipe, timerfd).
pub fn drain_fd(fd: impl AsFd) {
    let mut buf = [0u8; 64];
    while nix::unistd::read(fd.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
}

/// Writes the whole of `bytes` to an fd (blocking fds; retries EINTR and short writes).
pub fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd.as_fd(), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits. None where the kernel
/// lacks it (before 5.3); the supervisor then falls back to polling waitpid on its own pids.
pub fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    let fd = above_stdio(raw::pidfd_open(pid).ok()?).ok()?;
    set_cloexec(&fd, true).ok()?;
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
pub fn try_reap(pid: libc::pid_t) -> nix::Result<Option<ExitStatus>> {
    Ok(raw::waitpid_nohang(pid)?.map(|status| {
        if libc::WIFSIGNALED(status) {
            ExitStatus { code: -1, signal: libc::WTERMSIG(status) }
        } else {
            ExitStatus { code: libc::WEXITSTATUS(status), signal: 0 }
        }
    }))
}

/// `pidfd_send_signal(2)`: signals exactly the process `pidfd` names, never another that
/// reused its pid; ESRCH once it has been reaped.
pub fn pidfd_send_signal(pidfd: impl AsFd, signal: libc::c_int) -> nix::Result<()> {
    raw::pidfd_send_signal(pidfd.as_fd(), signal)
}

/// Sends a signal (any number, real-time ones included) to a process.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> nix::Result<()> {
    raw::kill(pid, signal)
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
    clock_ms(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// Milliseconds since the Unix epoch (for `started_at_ms`).
pub fn realtime_ms() -> u64 {
    clock_ms(nix::time::ClockId::CLOCK_REALTIME)
}

fn clock_ms(clock: nix::time::ClockId) -> u64 {
    // Both clocks always exist on Linux: clock_gettime cannot fail on them.
    let ts = clock_gettime(clock).unwrap_or(TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

/// A timerfd on CLOCK_MONOTONIC (non-blocking, CLOEXEC), numbered above stdio.
pub fn timerfd() -> nix::Result<TimerFd> {
    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK)?;
    if timer.as_fd().as_raw_fd() > 2 {
        return Ok(timer);
    }
    raw::timerfd_above_stdio(timer)
}

/// Arms a timerfd to fire once after `after` (None disarms it). A zero delay is rounded up to
/// one nanosecond, because a zero `it_value` would disarm instead.
pub fn timerfd_arm(timer: &TimerFd, after: Option<Duration>) -> nix::Result<()> {
    match after {
        Some(d) => {
            let d = if d.is_zero() { Duration::from_nanos(1) } else { d };
            timer.set(Expiration::OneShot(TimeSpec::from_duration(d)), TimerSetTimeFlags::empty())
        }
        None => timer.unset(),
    }
}

/// Flushes every C stdio stream, so a fork does not print the parent's buffers twice.
pub fn flush_stdio() {
    raw::flush_stdio();
}

/// This process's parent pid.
pub fn getppid() -> libc::pid_t {
    nix::unistd::getppid().as_raw()
}

/// This process's pid.
pub fn getpid() -> libc::pid_t {
    nix::unistd::getpid().as_raw()
}

/// This process's effective user id.
pub fn geteuid() -> libc::uid_t {
    nix::unistd::geteuid().as_raw()
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
        let cloexec = || FdFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFD).unwrap()).contains(FdFlag::FD_CLOEXEC);
        let nonblock = || OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL).unwrap()).contains(OFlag::O_NONBLOCK);
        set_cloexec(&fd, false).unwrap();
        assert!(!cloexec());
        set_cloexec(&fd, true).unwrap();
        assert!(cloexec());
        assert!(nonblock());
        set_nonblocking(&fd, false).unwrap();
        assert!(!nonblock());
    }

    #[test]
    fn a_descriptor_numbered_in_stdio_moves_above_it() {
        let fd = eventfd().unwrap();
        assert!(fd.as_raw_fd() > 2);
        assert!(dup_cloexec(&fd).unwrap().as_raw_fd() > 2);
    }
}
