//! The receive side of a channel: one datagram in, one checked frame out.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::channel::{self, Recv, RECV_BUF};
use std::collections::VecDeque;
use std::sync::Arc;

use super::frame::{decode_batch, FrameError, Header, Kind, FLAG_BIG, HEADER_LEN, MAX_FDS};
use super::payload::{self, Payload};

/// A frame that passed every check.
#[derive(Debug)]
pub struct Incoming {
    /// The header.
    pub header: Header,
    /// The payload (inline, or the sealed memfd mapped).
    pub payload: Payload,
    /// The fds the frame carried for its user (the memfd of a large payload removed). Those
    /// still here when the frame is dropped came from the peer and nobody took them: they are
    /// closed with `sys::close_untrusted`, so a peer's lingering socket cannot block the
    /// reader's loop.
    pub fds: Vec<OwnedFd>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        discard(&mut self.fds);
    }
}

/// Closes fds that arrived on a channel and that nobody takes (see `sys::close_untrusted`).
fn discard(fds: &mut Vec<OwnedFd>) {
    for fd in fds.drain(..) {
        crate::sys::close_untrusted(fd);
    }
}

/// What one read produced.
#[derive(Debug)]
pub enum Read {
    /// A valid frame.
    Frame(Incoming),
    /// The kernel dropped some of the frame's fds (MSG_CTRUNC, usually RLIMIT_NOFILE): the
    /// header is given so a NewConn can be refused (NACK) rather than lost.
    FdsLost(Header, Vec<u8>),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed the channel.
    Closed,
    /// The peer sent something that is not a valid frame.
    Bad(FrameError),
}

/// Reads frames from channels, reusing its buffers. One reader serves many channels; what a
/// channel's batch datagram holds beyond its first frame waits in that channel's own [`Inbox`],
/// so a frame is never handed out as another channel's.
pub struct Reader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    max_message: u64,
}

/// The frames of a channel's last Batch datagram not handed out yet: one per channel.
#[derive(Debug, Default)]
pub struct Inbox {
    pending: VecDeque<Incoming>,
}

impl Inbox {
    /// True when no batched frame waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl Reader {
    /// A reader accepting payloads up to `max_message` bytes.
    pub fn new(max_message: u64) -> Reader {
        Reader { buf: Vec::with_capacity(RECV_BUF), fds: Vec::with_capacity(MAX_FDS), max_message }
    }

    /// Reads and checks one frame from `fd` (or hands out the next frame of a batch from
    /// `inbox`, which must be `fd`'s).
    pub fn read(&mut self, fd: impl AsFd, inbox: &mut Inbox) -> io::Result<Read> {
        if let Some(f) = inbox.pending.pop_front() {
            return Ok(Read::Frame(f));
        }
        discard(&mut self.fds);
        let (truncated, fds_truncated) = match channel::recv(fd, &mut self.buf, &mut self.fds)? {
            Recv::WouldBlock => return Ok(Read::WouldBlock),
            Recv::Closed => return Ok(Read::Closed),
            Recv::Datagram { truncated, fds_truncated, .. } => (truncated, fds_truncated),
        };
        if truncated {
            discard(&mut self.fds);
            return Ok(Read::Bad(FrameError::Oversized(self.buf.len())));
        }
        let mut fds = std::mem::take(&mut self.fds);
        if fds_truncated {
            let received = fds.len();
            discard(&mut fds);
            if self.buf.len() >= HEADER_LEN {
                let nfds = self.buf[5] as usize;
                // Decode as if the announced fds had arrived: every other check still applies.
                if let Ok((h, p)) = Header::decode(&self.buf, nfds, self.max_message) {
                    return Ok(Read::FdsLost(h, p.to_vec()));
                }
            }
            return Ok(Read::Bad(FrameError::FdCount { announced: 0, received }));
        }
        let (header, inline) = match Header::decode(&self.buf, fds.len(), self.max_message) {
            Ok(v) => v,
            Err(e) => {
                discard(&mut fds);
                return Ok(Read::Bad(e));
            }
        };
        if header.kind == Kind::Batch {
            discard(&mut fds); // none: a Batch takes no fds (Header::decode checks)
            return Ok(self.unbatch(header.len as usize, inbox));
        }
        let payload = if header.flags & FLAG_BIG != 0 && header.kind == Kind::Message {
            let memfd = fds.remove(0);
            match payload::unseal(memfd, header.len) {
                Ok(p) => p,
                Err(reason) => {
                    discard(&mut fds);
                    return Ok(Read::Bad(FrameError::Payload(reason)));
                }
            }
        } else {
            Payload::Bytes(inline.to_vec())
        };
        Ok(Read::Frame(Incoming { header, payload, fds }))
    }
}

impl Reader {
    /// Splits the Batch datagram in `buf` into its frames; every one must be a valid fd-less,
    /// inline frame (no nested batch).
    fn unbatch(&mut self, len: usize, inbox: &mut Inbox) -> Read {
        let frames = match decode_batch(&self.buf[HEADER_LEN..HEADER_LEN + len]) {
            Ok(f) => f,
            Err(e) => return Read::Bad(e),
        };
        // One copy of the whole batch, which its frames' payloads share (rather than an
        // allocation and a copy per frame).
        let body = &self.buf[HEADER_LEN..HEADER_LEN + len];
        let shared: Arc<[u8]> = Arc::from(body);
        let mut out = VecDeque::with_capacity(frames.len());
        for inner in frames {
            match Header::decode(inner, 0, self.max_message) {
                Ok((h, _)) if h.kind == Kind::Batch || h.flags != 0 => {
                    return Read::Bad(FrameError::Payload("a batch holds a batch or a flagged frame"));
                }
                Ok((header, payload)) => {
                    // `payload` lies within `body` (decode_batch and Header::decode slice it).
                    let start = payload.as_ptr() as usize - body.as_ptr() as usize;
                    debug_assert!(start + payload.len() <= body.len());
                    let payload = Payload::Shared { buf: Arc::clone(&shared), start, len: payload.len() };
                    out.push_back(Incoming { header, payload, fds: Vec::new() })
                }
                Err(e) => return Read::Bad(e),
            }
        }
        inbox.pending = out;
        Read::Frame(inbox.pending.pop_front().expect("decode_batch refuses empty batches"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::outbox::{Frame, Limits, Outbox};
    use crate::sys;

    #[test]
    fn large_messages_arrive_whole_through_a_memfd() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        let data: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 251) as u8).collect();
        out.push(Frame::message(3, 0, &data, None, 64 << 20).unwrap()).unwrap();
        let mut r = Reader::new(64 << 20);
        let mut inbox = Inbox::default();
        match r.read(&b, &mut inbox).unwrap() {
            Read::Frame(f) => {
                assert_eq!(f.header.from, 3);
                assert!(f.payload[..] == data[..], "16 MiB payload intact");
                assert!(f.fds.is_empty(), "the memfd is not handed to the user");
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn corked_frames_leave_in_batches_and_arrive_one_by_one_in_order() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        out.cork();
        for i in 0..100u32 {
            out.push(Frame::message(1, 0, &i.to_le_bytes(), None, 1024).unwrap()).unwrap();
        }
        out.push(Frame::message(1, 0, &vec![9u8; 100_000], None, 1 << 20).unwrap()).unwrap();
        out.push(Frame::control(Kind::Heartbeat, Vec::new())).unwrap();
        assert!(out.uncork().unwrap().empty);
        let mut r = Reader::new(1 << 20);
        let mut inbox = Inbox::default();
        let mut datagrams = 0;
        for i in 0..100u32 {
            match r.read(&b, &mut inbox).unwrap() {
                Read::Frame(f) => assert_eq!(f.payload[..], i.to_le_bytes(), "frame {i} in order"),
                other => panic!("frame {i}: {other:?}"),
            }
            datagrams += usize::from(inbox.is_empty());
        }
        let batch = crate::ipc::outbox::BATCH_FRAMES;
        assert_eq!(datagrams, 100usize.div_ceil(batch), "100 small messages in datagrams of {batch}");
        assert!(matches!(r.read(&b, &mut inbox).unwrap(), Read::Frame(f) if f.payload.len() == 100_000));
        assert!(matches!(r.read(&b, &mut inbox).unwrap(), Read::Frame(f) if f.header.kind == Kind::Heartbeat));
        assert!(matches!(r.read(&b, &mut inbox).unwrap(), Read::WouldBlock));
    }

    #[test]
    fn the_frames_of_a_batch_keep_their_own_bytes_after_later_reads() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        let payload = |i: usize| -> Vec<u8> { (0..i % 23).map(|j| (i * 31 + j) as u8).collect() };
        out.cork();
        for i in 0..50 {
            out.push(Frame::message(2, 0, &payload(i), None, 1024).unwrap()).unwrap();
        }
        assert!(out.uncork().unwrap().empty);
        let mut r = Reader::new(1 << 20);
        let mut inbox = Inbox::default();
        let kept: Vec<Incoming> = (0..50)
            .map(|i| match r.read(&b, &mut inbox).unwrap() {
                Read::Frame(f) => f,
                other => panic!("frame {i}: {other:?}"),
            })
            .collect();
        for (i, f) in kept.iter().enumerate() {
            assert_eq!(f.payload[..], payload(i)[..], "frame {i}, of any length (empty too), intact");
        }
    }

    #[test]
    fn a_batch_inside_a_batch_is_refused() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let inner_head = Header::new(Kind::Heartbeat).encode();
        let inner = crate::ipc::frame::encode_batch([(&inner_head[..], &[][..])].into_iter());
        let outer = crate::ipc::frame::encode_batch([(&inner[..HEADER_LEN], &inner[HEADER_LEN..])].into_iter());
        crate::ipc::channel::send(&a, &outer, &[], &[]).unwrap();
        assert!(matches!(Reader::new(1024).read(&b, &mut Inbox::default()).unwrap(), Read::Bad(_)));
    }

    #[test]
    fn garbage_datagrams_are_bad_not_fatal() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        crate::ipc::channel::send(&a, b"not a frame at all, just bytes!!", &[], &[]).unwrap();
        let mut r = Reader::new(1024);
        let mut inbox = Inbox::default();
        assert!(matches!(r.read(&b, &mut inbox).unwrap(), Read::Bad(FrameError::Magic(_))));
    }
}
