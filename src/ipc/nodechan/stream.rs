//! Sends and receives on a `SOCK_STREAM` Unix socket with fds in SCM_RIGHTS.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::error::{Error, Result};
use crate::sys;

/// Writes as much of `bytes` as the socket takes now, with `fds` on the first byte
/// (non-blocking, no SIGPIPE). Returns how many bytes went; `EAGAIN` when none did (and
/// then no fd went either).
pub fn send(fd: impl AsFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    assert!(fds.len() <= 8, "at most 8 fds per write");
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &rights[..0] } else { &rights[..] };
    loop {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match socket::sendmsg::<UnixAddr>(fd.as_fd().as_raw_fd(), &iov, cmsgs, flags, None) {
            Err(Errno::EINTR) => continue,
            other => return other,
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

/// Control buffer for `RECV_FDS` fds: CMSG_SPACE(8 * 4) on the 64-bit layouts.
const RECV_CMSG: usize = 16 + RECV_FDS * std::mem::size_of::<RawFd>();

/// Receives up to `max` bytes, appended to `buf`, and the fds that came with them into `fds`
/// (CLOEXEC, owned by the caller), through the shim (`sys::raw::recv_with_fds`: nix's
/// `recvmsg` would leak the fds of truncated control data).
pub fn recv(fd: impl AsFd, buf: &mut Vec<u8>, max: usize, fds: &mut Vec<OwnedFd>) -> nix::Result<Recv> {
    let before = fds.len();
    let (n, flags) = loop {
        match sys::raw::recv_with_fds(fd.as_fd(), buf, max, RECV_CMSG, fds) {
            Ok(got) => break got,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Recv::WouldBlock),
            Err(Errno::ECONNRESET) => return Ok(Recv::Closed),
            Err(e) => return Err(e),
        }
    };
    if n == 0 && fds.len() == before {
        return Ok(Recv::Closed);
    }
    Ok(Recv::Data { n, fds_truncated: flags.contains(MsgFlags::MSG_CTRUNC) })
}

/// A pair of connected, non-blocking, CLOEXEC `SOCK_STREAM` Unix sockets: Node's channel.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_STREAM)", e))?;
    let moved = |fd| sys::above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    Ok((moved(a)?, moved(b)?))
}
