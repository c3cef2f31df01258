//! A channel end: one SOCK_SEQPACKET socket, whole datagrams, fds in SCM_RIGHTS.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

use crate::sys::raw;

use super::frame::{HEADER_LEN, MAX_FDS};

/// Largest datagram we put on a channel: a header plus this much inline payload. Bigger
/// messages travel in a sealed memfd (`ipc::payload`). Kept well under the default
/// `net.core.wmem_default` so a single datagram always fits the socket buffer.
pub const INLINE_MAX: usize = 64 * 1024;

/// Receive buffer size: the largest datagram plus slack, so MSG_TRUNC means a hostile peer.
pub const RECV_BUF: usize = HEADER_LEN + INLINE_MAX + 4096;

const CMSG_BUF: usize = 1024; // >= CMSG_SPACE(MAX_FDS * sizeof(int)) = 16 + 256

/// What one `recv` produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A datagram of this many bytes (and the fds pushed to the caller's vector).
    Datagram {
        /// Bytes in the buffer.
        len: usize,
        /// MSG_TRUNC: the datagram was larger than the buffer.
        truncated: bool,
        /// MSG_CTRUNC: some fds did not fit (and were closed by the kernel).
        fds_truncated: bool,
    },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its end.
    Closed,
}

/// Sends one datagram made of `header`, `payload` and `fds` (non-blocking, no SIGPIPE).
pub fn send(fd: impl AsFd, header: &[u8], payload: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most MAX_FDS fds per frame");
    let iov = [IoSlice::new(header), IoSlice::new(payload)];
    let iov = if payload.is_empty() { &iov[..1] } else { &iov[..] };
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &rights[..0] } else { &rights[..] };
    loop {
        match socket::sendmsg::<UnixAddr>(
            fd.as_fd().as_raw_fd(),
            iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            // SEQPACKET sends are atomic: all or an error.
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one datagram into `buf` (its whole capacity is used) and its fds into `fds`,
/// CLOEXEC and owned by the caller.
///
/// Through the shim (`sys::raw::recv_with_fds`), not nix's `recvmsg`: when a peer sends more
/// fds than the control buffer holds (MSG_CTRUNC), the kernel still installs those that fit,
/// and nix then refuses to walk the control messages, which would leak them.
pub fn recv(fd: impl AsFd, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> nix::Result<Recv> {
    let fds_before = fds.len();
    let (n, flags) = loop {
        buf.clear();
        let cap = buf.capacity();
        match raw::recv_with_fds(fd.as_fd(), buf, cap, CMSG_BUF, fds) {
            Ok(got) => break got,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Recv::WouldBlock),
            Err(Errno::ECONNRESET) => return Ok(Recv::Closed),
            Err(e) => return Err(e),
        }
    };
    let truncated = flags.contains(MsgFlags::MSG_TRUNC);
    if n == 0 && fds.len() == fds_before && !truncated && peer_closed(fd.as_fd()) {
        // A zero-length read on SEQPACKET is the peer's close, or an empty datagram (which
        // rcluster never sends): the hang-up flags tell which.
        return Ok(Recv::Closed);
    }
    Ok(Recv::Datagram { len: buf.len(), truncated, fds_truncated: flags.contains(MsgFlags::MSG_CTRUNC) })
}

/// Raw fds of a slice of owned fds, for `send`.
pub fn raw_fds(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

/// The peer closed its end or shut down its writing side (a zero-length read then means EOF,
/// not an empty datagram).
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    raw::hung_up(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    #[test]
    fn datagrams_and_fds_arrive_whole() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let pipe_r = sys::eventfd().unwrap();
        send(&a, b"head", b"payload", &[pipe_r.as_raw_fd()]).unwrap();
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut fds = Vec::new();
        let r = recv(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(r, Recv::Datagram { len: 11, truncated: false, fds_truncated: false });
        assert_eq!(&buf, b"headpayload");
        assert_eq!(fds.len(), 1);
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let flags = FdFlag::from_bits_retain(fcntl(&fds[0], FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC), "received fds are CLOEXEC");
        assert_eq!(recv(&b, &mut buf, &mut fds).unwrap(), Recv::WouldBlock);
        drop(a);
        assert_eq!(recv(&b, &mut buf, &mut fds).unwrap(), Recv::Closed);
    }

    #[test]
    fn oversized_datagrams_are_reported_truncated() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        send(&a, &[1u8; 100], &[], &[]).unwrap();
        let mut buf = Vec::with_capacity(10);
        let mut fds = Vec::new();
        match recv(&b, &mut buf, &mut fds).unwrap() {
            Recv::Datagram { truncated, .. } => assert!(truncated),
            other => panic!("expected a truncated datagram, got {other:?}"),
        }
    }
}
