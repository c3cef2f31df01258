//! The libc shim: the few system calls nix does not wrap, or wraps in a way the runtime cannot
//! use, each in a small function with its SAFETY argument. Everything else goes through nix
//! (`sys` and the modules above it).
//!
//! Why each is here:
//! - `pidfd_open`, `pidfd_send_signal`, `ioctl(SIOCOUTQ)`, `fflush(NULL)`: not in nix.
//! - `waitpid` and `kill`: nix's `WaitStatus` and `Signal` cannot hold a real-time signal
//!   (SIGRTMIN+n): its `waitpid` reaps such a child and then returns EINVAL, losing the
//!   status, and its `kill` cannot send one, while `cluster_worker_kill` takes any number.
//! - `dup_above_stdio`: nix's `fcntl(F_DUPFD_CLOEXEC)` hands back a bare integer.
//! - `child`: the new worker's process between its start and exec (the CLONE_VFORK spawn,
//!   with only system calls on data prepared before it; sched_setscheduler).
//! - `atfork_child` (pthread_atfork): not in nix.
//! - `owned`: adopting a descriptor a raw call returned; `timerfd_above_stdio`: nix's
//!   `TimerFd` is made from a descriptor only through an unsafe constructor.
//! - `accept_with_peer`, `peer_address`: the peer address is carried as the kernel's sockaddr
//!   bytes (to workers, and to check a connection a worker gives back); nix's `accept4` gives
//!   no address (a second call, getpeername, per connection on the handoff path otherwise),
//!   and its typed addresses give no bytes back.
//! - `signal_safe_write`: a signal handler writes to a descriptor number it found in an
//!   atomic (no borrow can live there), and must keep errno as it was.
//! - `epoll_wait`: the loop waits on its epoll number without holding the reactor (whose
//!   lock a dispatch must not hold while it blocks); nix waits only through an `Epoll` value.
//! - `hung_up`: nix's `PollFlags` has no POLLRDHUP, and its `revents` is None when the
//!   kernel reports it.
//! - `recv_with_fds`: recvmsg with SCM_RIGHTS. When a peer sends more fds than the control
//!   buffer holds (MSG_CTRUNC), the kernel still installs those that fit; nix's `recvmsg`
//!   then refuses to walk the control messages, and they would leak (a hostile worker could
//!   fill the primary's fd table). It also fills the spare capacity of the caller's buffer,
//!   where nix needs an initialized slice (a 68 KiB memset per read).

pub mod child;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Turns a libc return value into `io::Result`, reading `errno` on -1.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a descriptor a raw call just returned (checked for -1) in an `OwnedFd`, numbered
/// above stdio (see `sys::above_stdio`).
pub fn owned(ret: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret)?;
    // SAFETY: `fd` was just returned by the kernel to us and nothing else owns it.
    super::above_stdio(unsafe { OwnedFd::from_raw_fd(fd) }).map_err(io::Error::from)
}

/// A CLOEXEC duplicate of `fd` numbered 3 or more (F_DUPFD_CLOEXEC with a floor of 3).
pub fn dup_above_stdio(fd: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the integer of a descriptor the borrow keeps open.
    let ret = Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the result is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// `pidfd_open(2)` with flags 0 (not CLOEXEC: the caller sets it).
pub fn pidfd_open(pid: libc::pid_t) -> nix::Result<OwnedFd> {
    // SAFETY: the raw syscall takes two integers. PIDFD_NONBLOCK is not needed because we only
    // call waitid with WNOHANG.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(ret)? as RawFd;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`: signals exactly the process `pidfd` names; ESRCH once reaped.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> nix::Result<()> {
    // SAFETY: the raw syscall takes an fd the borrow keeps open, a signal, a NULL siginfo and
    // flags 0.
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    Errno::result(ret).map(drop)
}

/// `kill(2)` with any signal number (real-time ones included).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> nix::Result<()> {
    // SAFETY: kill takes two integers.
    Errno::result(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `waitpid(pid, WNOHANG)`: Some(raw status) when `pid` was reaped, None while it runs.
/// Retries EINTR.
pub fn waitpid_nohang(pid: libc::pid_t) -> nix::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for the kernel to write.
        match Errno::result(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) }) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Bytes a unix socket sent that its peer has not read yet (SIOCOUTQ).
pub fn unread_sent(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (the same number as TIOCOUTQ) writes one int into `n`; the borrow keeps
    // the fd open.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(n.max(0) as u64)
}

/// Flushes every C stdio stream (a fork must not print the parent's buffers twice).
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) is defined to flush all open output streams.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// `accept4(SOCK_CLOEXEC)`: a blocking connection (as accept(2) gives it) and its peer's
/// sockaddr bytes.
pub fn accept_with_peer(listener: BorrowedFd<'_>) -> nix::Result<(OwnedFd, Vec<u8>)> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable for `len` bytes; the borrow keeps the listener open.
    let ret = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    let fd = Errno::result(ret)?;
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((fd, sockaddr_bytes(&ss, len)))
}

/// getpeername(2) as the kernel's sockaddr bytes.
pub fn peer_address(fd: BorrowedFd<'_>) -> nix::Result<Vec<u8>> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable for `len` bytes; the borrow keeps the fd open.
    Errno::result(unsafe {
        libc::getpeername(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len)
    })?;
    Ok(sockaddr_bytes(&ss, len))
}

/// The first `len` bytes of `ss` (what the kernel wrote; at most its size).
fn sockaddr_bytes(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Vec<u8> {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `ss` is a live value of at least `len` bytes.
    unsafe { std::slice::from_raw_parts((ss as *const libc::sockaddr_storage).cast::<u8>(), len) }.to_vec()
}

/// `timer` moved to a descriptor numbered above stdio (see `sys::above_stdio`).
pub fn timerfd_above_stdio(timer: nix::sys::timerfd::TimerFd) -> nix::Result<nix::sys::timerfd::TimerFd> {
    let moved = super::above_stdio(OwnedFd::from(timer))?;
    // SAFETY: `moved` is a duplicate of a timerfd (same open file), which it now owns alone.
    Ok(unsafe { nix::sys::timerfd::TimerFd::from_owned_fd(moved) })
}

/// recvmsg(MSG_CMSG_CLOEXEC | MSG_DONTWAIT) of up to `max` bytes appended to `buf` (into its
/// spare capacity: its length grows by what arrived), with every fd of the SCM_RIGHTS
/// messages pushed to `fds`, owned, even when the control data was truncated. `cmsg_len`
/// bounds the control buffer (at most 1024 bytes). Returns what recvmsg returned (on a
/// datagram socket, with MSG_TRUNC, more than `max`) and the message flags.
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    cmsg_len: usize,
    fds: &mut Vec<OwnedFd>,
) -> nix::Result<(usize, nix::sys::socket::MsgFlags)> {
    buf.reserve(max);
    let start = buf.len();
    // SAFETY: `reserve` made room for `max` bytes past `start`, inside the allocation.
    let mut iov = libc::iovec { iov_base: unsafe { buf.as_mut_ptr().add(start) }.cast(), iov_len: max };
    let mut cmsg_buf = [0u64; 1024 / 8];
    // SAFETY: an all-zero msghdr is valid; we fill in the iov and control buffer below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_len.min(1024);
    // SAFETY: the iov covers `max` writable bytes of `buf`; the control buffer is
    // `msg_controllen` writable, 8-aligned bytes; both outlive the call; the borrow keeps the
    // socket open.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    let n = Errno::result(n)? as usize;
    // Take ownership of every fd that arrived before anything else, so none can leak.
    // SAFETY: the kernel filled msg_control with valid cmsg headers up to msg_controllen; we
    // walk them with the CMSG_* macros and copy the fd ints out unaligned. Each is a new
    // descriptor the kernel installed for us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // SAFETY: the kernel wrote min(n, max) bytes past `start`, inside the capacity.
    unsafe { buf.set_len(start + n.min(max)) };
    Ok((n, nix::sys::socket::MsgFlags::from_bits_retain(msg.msg_flags)))
}

/// True when `fd`'s peer closed or shut down its writing side (poll: POLLRDHUP, POLLHUP or
/// POLLERR now), or when poll fails.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, no wait; the borrow keeps the fd open.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n < 0 || (n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
}

/// epoll_wait(2) on `epfd` into `events`; the number of events ready.
pub fn epoll_wait(
    epfd: BorrowedFd<'_>,
    events: &mut [nix::sys::epoll::EpollEvent],
    timeout_ms: i32,
) -> nix::Result<usize> {
    let len = events.len().min(i32::MAX as usize) as libc::c_int;
    // SAFETY: nix's EpollEvent is a transparent wrapper of libc's epoll_event, and `events` is
    // writable for `len` of them; the borrow keeps the fd open.
    let n = unsafe { libc::epoll_wait(epfd.as_raw_fd(), events.as_mut_ptr().cast(), len, timeout_ms) };
    Errno::result(n).map(|n| n as usize)
}

/// write(2) of `bytes` to descriptor number `fd`, from a signal handler: async-signal-safe
/// (one system call, no allocation, no lock), errno saved and restored around it. A short or
/// failed write is ignored (a full pipe or eventfd already wakes its reader).
///
/// # Safety
/// `fd` is open, and is the descriptor the caller means (it stays open until the call returns).
pub unsafe fn signal_safe_write(fd: RawFd, bytes: &[u8]) {
    let errno = Errno::last_raw();
    // SAFETY: `bytes` is valid for reads of its length; the caller vouches for `fd`.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    Errno::set_raw(errno);
}

/// Registers `child` to run in the child of every fork(2) of this process.
///
/// # Safety
/// `child` runs in a child forked from a process that may have threads: it may only do what
/// is async-signal-safe.
pub unsafe fn atfork_child(child: extern "C" fn()) -> nix::Result<()> {
    // SAFETY: a plain function, registered for the child side only; the caller vouches for it.
    Errno::result(unsafe { libc::pthread_atfork(None, None, Some(child)) }).map(drop)
}
