//! Sends and receives on a `SOCK_STREAM` Unix socket with fds in SCM_RIGHTS.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use crate::error::{Error, Result};

/// Writes as much of `bytes` as the socket takes now, with `fds` on the first byte
/// (non-blocking, no SIGPIPE). Returns how many bytes went; `EAGAIN` when none did (and
/// then no fd went either).
pub fn send(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        assert!(fds.len() <= 8, "at most 8 fds per write");
        let size = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(size as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` <= 128 zeroed, 8-aligned bytes, so the first
        // header exists and CMSG_DATA(cmsg) has room for `size` bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), size);
        }
    }
    loop {
        // SAFETY: `msg` points at a live iovec and control data for the duration of the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = nix::errno::Errno::last();
        if err != nix::errno::Errno::EINTR {
            return Err(err);
        }
    }
}

/// What one receive got.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// `n` bytes (appended to the buffer), and maybe fds.
    Data {
        /// Bytes appended.
        n: usize,
        /// The kernel dropped fds that did not fit (MSG_CTRUNC).
        fds_truncated: bool,
    },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its end (EOF).
    Closed,
}

/// Most fds one receive takes; more in one message is a flood (the kernel closes the rest).
pub const RECV_FDS: usize = 8;

/// Receives up to `max` bytes, appended to `buf`, and the fds that came with them into `fds`
/// (CLOEXEC, owned by the caller).
pub fn recv(fd: RawFd, buf: &mut Vec<u8>, max: usize, fds: &mut Vec<OwnedFd>) -> io::Result<Recv> {
    buf.reserve(max);
    let start = buf.len();
    // SAFETY: `reserve` made room for `max` bytes past `start`.
    let mut iov = libc::iovec { iov_base: unsafe { buf.as_mut_ptr().add(start) }.cast(), iov_len: max };
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; we fill in the iov and control buffer below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((RECV_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let n = loop {
        // SAFETY: the iov covers `max` writable bytes; the control buffer is large enough
        // for `msg_controllen` bytes; both outlive the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Recv::WouldBlock),
            _ if err.raw_os_error() == Some(libc::ECONNRESET) => return Ok(Recv::Closed),
            _ => return Err(err),
        }
    };
    let before = fds.len();
    // SAFETY: the kernel filled msg_control with valid cmsg headers up to msg_controllen; we
    // walk them with the CMSG_* macros and copy the fd ints out unaligned. Each fd is ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(<OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        buf.set_len(start + n);
    }
    if n == 0 && fds.len() == before {
        return Ok(Recv::Closed);
    }
    Ok(Recv::Data { n, fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}

/// A pair of connected, non-blocking, CLOEXEC `SOCK_STREAM` Unix sockets: Node's channel.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    crate::sys::cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })
        .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_STREAM)", e))?;
    // SAFETY: both descriptors were just created for us and are owned by nothing else.
    let (a, b) = unsafe {
        (
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]),
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]),
        )
    };
    let moved = |fd| crate::sys::above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    Ok((moved(a)?, moved(b)?))
}
