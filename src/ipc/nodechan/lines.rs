//! The receive side of a Node channel: bytes in, whole message bodies out, and the fds that
//! came with them in arrival order.
//!
//! A worker can send anything: a line that never ends, a length prefix of gigabytes, fds with
//! no `NODE_HANDLE` message to take them. Each is bounded: a message longer than the limit,
//! or more fds waiting than `MAX_FDS_WAITING`, is a protocol error (the caller drops the
//! worker), so the primary never buffers without bound nor blocks.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::stream::{self, Recv};
use super::Serialization;

/// Most fds received and not yet taken by a `NODE_HANDLE` message. Node sends one at a time
/// and waits for the ACK, so more than a few is a worker flooding the primary with fds.
pub const MAX_FDS_WAITING: usize = 16;

/// Bytes one receive asks for.
const CHUNK: usize = 64 * 1024;

/// What a read of the channel produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes (and maybe fds) arrived: take the messages with `next_message`.
    Data,
    /// Nothing to read now.
    WouldBlock,
    /// The worker closed the channel.
    Closed,
}

/// The worker broke the channel's format or bounds.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// One Node channel's receive state.
pub struct NodeReader {
    mode: Serialization,
    /// Bytes received and not yet returned as messages (from `start` on).
    buf: Vec<u8>,
    start: usize,
    /// Where the search for the next newline resumes (json), relative to `start`.
    scanned: usize,
    fds: VecDeque<OwnedFd>,
    max_message: usize,
}

impl NodeReader {
    /// A reader for a channel in `mode`, refusing messages over `max_message` bytes.
    pub fn new(mode: Serialization, max_message: usize) -> NodeReader {
        NodeReader { mode, buf: Vec::new(), start: 0, scanned: 0, fds: VecDeque::new(), max_message }
    }

    /// The channel's serialization.
    pub fn mode(&self) -> Serialization {
        self.mode
    }

    /// Receives once from `fd`.
    pub fn read(&mut self, fd: impl AsFd) -> io::Result<std::result::Result<Read, Violation>> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut fds = Vec::new();
        let got = stream::recv(fd, &mut self.buf, CHUNK, &mut fds)?;
        self.fds.extend(fds);
        Ok(match got {
            Recv::WouldBlock => Ok(Read::WouldBlock),
            Recv::Closed => Ok(Read::Closed),
            Recv::Data { fds_truncated: true, .. } => Err(Violation("more fds in one message than allowed".into())),
            Recv::Data { .. } if self.fds.len() > MAX_FDS_WAITING => {
                Err(Violation(format!("{} fds sent without NODE_HANDLE messages to take them", self.fds.len())))
            }
            Recv::Data { .. } => Ok(Read::Data),
        })
    }

    /// The next whole message body received, if any.
    pub fn next_message(&mut self) -> std::result::Result<Option<Vec<u8>>, Violation> {
        let pending = &self.buf[self.start..];
        match self.mode {
            Serialization::Json => match pending[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = self.scanned + i;
                    let line = pending[..end].to_vec();
                    self.start += end + 1;
                    self.scanned = 0;
                    if line.len() > self.max_message {
                        return Err(Violation(format!(
                            "a message of {} bytes (the limit is {})",
                            line.len(),
                            self.max_message
                        )));
                    }
                    Ok(Some(line))
                }
                None if pending.len() > self.max_message => Err(Violation(format!(
                    "{} bytes without a newline (messages are at most {} bytes)",
                    pending.len(),
                    self.max_message
                ))),
                None => {
                    self.scanned = pending.len();
                    Ok(None)
                }
            },
            Serialization::Advanced => {
                if pending.len() < 4 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(pending[..4].try_into().expect("4 bytes")) as usize;
                if len > self.max_message {
                    return Err(Violation(format!("a message of {len} bytes (the limit is {})", self.max_message)));
                }
                if pending.len() < 4 + len {
                    return Ok(None);
                }
                let body = pending[4..4 + len].to_vec();
                self.start += 4 + len;
                Ok(Some(body))
            }
        }
    }

    /// The oldest fd received and not yet taken (for a `NODE_HANDLE` message).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Bytes received and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

impl Drop for NodeReader {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            crate::sys::close_untrusted(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        stream::pair().unwrap()
    }

    #[test]
    fn lines_split_across_reads_and_fds_wait_for_their_message() {
        let (a, b) = pair();
        let mut r = NodeReader::new(Serialization::Json, 1 << 20);
        let ev = crate::sys::eventfd().unwrap();
        // The fd rides on an earlier chunk than the end of its NODE_HANDLE line.
        stream::send(&a, b"{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",", &[ev.as_raw_fd()]).unwrap();
        assert_eq!(r.read(&b).unwrap(), Ok(Read::Data));
        assert_eq!(r.next_message(), Ok(None));
        stream::send(&a, b"\"msg\":{}}\n{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}\n{\"a\"", &[]).unwrap();
        assert_eq!(r.read(&b).unwrap(), Ok(Read::Data));
        let first = r.next_message().unwrap().unwrap();
        let v = Serialization::Json.decode(&first).unwrap();
        assert_eq!(v["cmd"], "NODE_HANDLE");
        assert!(r.take_fd().is_some());
        assert!(r.take_fd().is_none(), "a second NODE_HANDLE with no fd gets a NACK");
        assert_eq!(Serialization::Json.decode(&r.next_message().unwrap().unwrap()).unwrap()["act"], "online");
        assert_eq!(r.next_message(), Ok(None), "half a line waits");
        drop(a);
        assert_eq!(r.read(&b).unwrap(), Ok(Read::Closed));
    }

    #[test]
    fn endless_lines_huge_prefixes_and_fd_floods_are_violations() {
        let (a, b) = pair();
        let mut r = NodeReader::new(Serialization::Json, 100);
        stream::send(&a, &[b'x'; 150], &[]).unwrap();
        r.read(&b).unwrap().unwrap();
        assert!(r.next_message().is_err());

        let (a, b) = pair();
        let mut r = NodeReader::new(Serialization::Advanced, 100);
        stream::send(&a, &[0xff, 0xff, 0xff, 0xff, 1], &[]).unwrap();
        r.read(&b).unwrap().unwrap();
        assert!(r.next_message().is_err());

        let (a, b) = pair();
        let mut r = NodeReader::new(Serialization::Json, 100);
        let ev = crate::sys::eventfd().unwrap();
        let mut flooded = false;
        for _ in 0..MAX_FDS_WAITING + 2 {
            stream::send(&a, b" ", &[ev.as_raw_fd()]).unwrap();
            match r.read(&b).unwrap() {
                Ok(_) => {}
                Err(_) => {
                    flooded = true;
                    break;
                }
            }
        }
        assert!(flooded);
    }

    #[test]
    fn advanced_frames_are_length_prefixed() {
        let (a, b) = pair();
        let mut r = NodeReader::new(Serialization::Advanced, 1 << 20);
        let v = serde_json::json!({"cmd": "NODE_CLUSTER", "act": "online", "seq": 0});
        let wire = Serialization::Advanced.frame(&Serialization::Advanced.encode(&v));
        stream::send(&a, &wire[..3], &[]).unwrap();
        r.read(&b).unwrap().unwrap();
        assert_eq!(r.next_message(), Ok(None));
        stream::send(&a, &wire[3..], &[]).unwrap();
        r.read(&b).unwrap().unwrap();
        assert_eq!(Serialization::Advanced.decode(&r.next_message().unwrap().unwrap()).unwrap(), v);
    }
}
