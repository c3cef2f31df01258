//! A channel end: one SOCK_SEQPACKET socket, whole datagrams, fds in SCM_RIGHTS.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
pub fn send(fd: RawFd, header: &[u8], payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most MAX_FDS fds per frame");
    let mut iov = [
        libc::iovec { iov_base: header.as_ptr() as *mut libc::c_void, iov_len: header.len() },
        libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() },
    ];
    let mut cmsg_buf = [0u64; CMSG_BUF / 8];
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` <= CMSG_BUF zeroed, 8-aligned bytes, so the first
        // header exists and CMSG_DATA(cmsg) has room for `bytes` bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes);
        }
    }
    loop {
        // SAFETY: `msg` points at live iovecs and control data for the duration of the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            // SEQPACKET sends are atomic: all or an error.
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one datagram into `buf` (its whole capacity is used) and its fds into `fds`,
/// CLOEXEC and owned by the caller.
pub fn recv(fd: RawFd, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<Recv> {
    buf.clear();
    let cap = buf.capacity();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: cap };
    let mut cmsg_buf = [0u64; CMSG_BUF / 8];
    // SAFETY: an all-zero msghdr is valid; we fill in the iov and control buffer below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF;
    let fds_before = fds.len();
    let n = loop {
        // SAFETY: the iov covers `cap` writable bytes of `buf`; the control buffer is CMSG_BUF
        // writable bytes; both outlive the call.
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
    // Take ownership of every fd that arrived before anything else, so none can leak.
    // SAFETY: the kernel filled msg_control with valid cmsg headers up to msg_controllen; we walk
    // them with the CMSG_* macros and copy the fd ints out unaligned.
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
    if n == 0 && fds.len() == fds_before && msg.msg_flags & libc::MSG_TRUNC == 0 && peer_closed(fd) {
        // A zero-length read on SEQPACKET is the peer's close, or an empty datagram (which
        // rcluster never sends): the hang-up flags tell which.
        return Ok(Recv::Closed);
    }
    // SAFETY: the kernel wrote `n` <= cap bytes into the buffer.
    unsafe { buf.set_len(n.min(cap)) };
    Ok(Recv::Datagram {
        len: n.min(cap),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Raw fds of a slice of owned fds, for `send`.
pub fn raw_fds(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

/// The peer closed its end or shut down its writing side (a zero-length read then means EOF,
/// not an empty datagram).
fn peer_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n < 0 || (n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    #[test]
    fn datagrams_and_fds_arrive_whole() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let pipe_r = sys::eventfd().unwrap();
        send(a.as_raw_fd(), b"head", b"payload", &[pipe_r.as_raw_fd()]).unwrap();
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut fds = Vec::new();
        let r = recv(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(r, Recv::Datagram { len: 11, truncated: false, fds_truncated: false });
        assert_eq!(&buf, b"headpayload");
        assert_eq!(fds.len(), 1);
        // SAFETY: F_GETFD on a valid fd.
        let flags = unsafe { libc::fcntl(fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received fds are CLOEXEC");
        assert_eq!(recv(b.as_raw_fd(), &mut buf, &mut fds).unwrap(), Recv::WouldBlock);
        drop(a);
        assert_eq!(recv(b.as_raw_fd(), &mut buf, &mut fds).unwrap(), Recv::Closed);
    }

    #[test]
    fn oversized_datagrams_are_reported_truncated() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        send(a.as_raw_fd(), &[1u8; 100], &[], &[]).unwrap();
        let mut buf = Vec::with_capacity(10);
        let mut fds = Vec::new();
        match recv(b.as_raw_fd(), &mut buf, &mut fds).unwrap() {
            Recv::Datagram { truncated, .. } => assert!(truncated),
            other => panic!("expected a truncated datagram, got {other:?}"),
        }
    }
}
