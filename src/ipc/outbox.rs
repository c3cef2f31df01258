//! The bounded, thread-safe send side of a channel.
//!
//! Any thread may push; the loop thread flushes when the socket turns writable. A push writes
//! straight to the socket when nothing is queued (the common case costs one `sendmsg`), and
//! queues otherwise, so frames always leave in push order. User messages count against the
//! bounds; control frames (ACK, SHUTDOWN, ...) never do, so protocol progress never waits on a
//! user's backlog. Over the bound a push fails with `Again` and a DRAIN is owed once the queue
//! empties.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::channel::{self, INLINE_MAX};
use super::frame::{encode_batch, Header, Kind, FLAG_BIG, FLAG_FD, HEADER_LEN};
use super::nodechan::{stream, Serialization};
use super::payload::{self, Payload};
use crate::error::{fail, Code, Error, Result};

/// One frame ready to go: header, inline payload and the fds it carries (closed once sent).
#[derive(Debug)]
pub struct Frame {
    /// The header (its `nfds` and `len` match `fds` and `payload`).
    pub header: Header,
    /// Inline payload bytes.
    pub payload: Vec<u8>,
    /// The fds to pass; owned, closed after sending.
    pub fds: Vec<OwnedFd>,
    /// More fds to pass that the frame does not own (see `with_borrowed_fds`).
    borrowed: Vec<RawFd>,
    /// Payload size for the queue bounds when this is a user message; 0 for control frames.
    pub user_bytes: usize,
    /// A message body for a Node channel (see `Frame::node`), not an rcluster frame.
    stream: bool,
}

impl Frame {
    /// A control frame of `kind` with an inline payload.
    pub fn control(kind: Kind, payload: Vec<u8>) -> Frame {
        let mut header = Header::new(kind);
        header.len = payload.len() as u64;
        Frame { header, payload, fds: Vec::new(), borrowed: Vec::new(), user_bytes: 0, stream: false }
    }

    /// A control frame of `kind` passing `fds` (closed once sent).
    pub fn control_with_fds(kind: Kind, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Frame {
        let mut frame = Frame::control(kind, payload);
        frame.header.nfds = fds.len() as u8;
        frame.fds = fds;
        frame
    }

    /// A control frame passing fds it does not own: the primary's handed-off connections (a
    /// dup per connection would cost two system calls for nothing when, as nearly always, the
    /// frame leaves at once). A frame that has to wait in the queue takes duplicates first
    /// (`own_borrowed`): what happens to the originals after `push` returns cannot touch it.
    ///
    /// # Safety
    /// Every fd stays open until `push` returns (or until the frame is dropped, if it is never
    /// pushed).
    pub unsafe fn with_borrowed_fds(kind: Kind, payload: Vec<u8>, fds: Vec<RawFd>) -> Frame {
        let mut f = Frame::control(kind, payload);
        f.header.nfds = fds.len() as u8;
        f.borrowed = fds;
        f
    }

    /// A user message from `from` to `to`, with an optional fd. Payloads over the inline limit
    /// go into a sealed memfd; over `max` they are refused with `TooBig`.
    pub fn message(from: u32, to: u32, data: &[u8], fd: Option<OwnedFd>, max: u64) -> Result<Frame> {
        if data.len() as u64 > max {
            return fail(Code::TooBig, format!("message of {} bytes exceeds the maximum of {max} bytes", data.len()));
        }
        let mut header = Header::new(Kind::Message);
        header.from = from;
        header.to = to;
        header.len = data.len() as u64;
        let mut fds = Vec::new(); // no allocation for the usual message without fds
        let payload = if data.len() > INLINE_MAX {
            header.flags |= FLAG_BIG;
            fds.push(payload::seal(data).map_err(|e| Error::sys("memfd for a large message", e))?);
            Vec::new()
        } else {
            data.to_vec()
        };
        if let Some(fd) = fd {
            header.flags |= FLAG_FD;
            fds.push(fd);
        }
        header.nfds = fds.len() as u8;
        Ok(Frame { header, payload, fds, borrowed: Vec::new(), user_bytes: data.len().max(1), stream: false })
    }

    /// A message being relayed: like `message`, but a large payload's sealed memfd is passed
    /// on as it came, without copying its bytes into a new one.
    pub fn relay(from: u32, to: u32, mut payload: Payload, fd: Option<OwnedFd>, max: u64) -> Result<Frame> {
        let memfd = match &mut payload {
            Payload::Mapped(m) => m.take_memfd(),
            Payload::Bytes(_) | Payload::Shared { .. } => None,
        };
        let Some((memfd, len)) = memfd else { return Frame::message(from, to, &payload, fd, max) };
        let mut header = Header { from, to, len: len as u64, flags: FLAG_BIG, ..Header::new(Kind::Message) };
        let mut fds = vec![memfd];
        if let Some(fd) = fd {
            header.flags |= FLAG_FD;
            fds.push(fd);
        }
        header.nfds = fds.len() as u8;
        Ok(Frame { header, payload: Vec::new(), fds, borrowed: Vec::new(), user_bytes: len.max(1), stream: false })
    }

    /// A message for a Node channel: `body` is one JSON text or V8 buffer (the outbox frames
    /// it), `fd` goes with its first byte. A user message (`user`) counts against the bounds.
    pub fn node(body: Vec<u8>, fd: Option<OwnedFd>, user: bool) -> Frame {
        let mut f = Frame::control(Kind::Message, Vec::new());
        f.header.len = body.len() as u64;
        f.user_bytes = if user { body.len().max(1) } else { 0 };
        f.payload = body;
        f.fds.extend(fd);
        f.stream = true;
        f
    }

    /// Like `node`, passing an fd the frame does not own (see `with_borrowed_fds`).
    ///
    /// # Safety
    /// `fd` stays open until `push` returns (or until the frame is dropped unpushed).
    pub unsafe fn node_borrowed(body: Vec<u8>, fd: RawFd) -> Frame {
        let mut f = Frame::node(body, None, false);
        f.borrowed.push(fd);
        f
    }

    /// A copy with its own duplicates of the fds (for relaying one message to several workers).
    pub fn try_clone(&self) -> nix::Result<Frame> {
        let fds = self.fds.iter().map(crate::sys::dup_cloexec).collect::<nix::Result<Vec<_>>>()?;
        Ok(Frame {
            header: self.header,
            payload: self.payload.clone(),
            fds,
            borrowed: self.borrowed.clone(),
            user_bytes: self.user_bytes,
            stream: self.stream,
        })
    }

    /// Replaces the borrowed fds by duplicates the frame owns (same order, after the owned
    /// ones, as `send` passes them).
    fn own_borrowed(&mut self) -> nix::Result<()> {
        for fd in std::mem::take(&mut self.borrowed) {
            // SAFETY: a borrowed fd of a frame is open until the push that carries it returns
            // (the caller's contract, see `Frame::borrowed`), and this runs inside that push.
            self.fds.push(crate::sys::dup_cloexec(unsafe { BorrowedFd::borrow_raw(fd) })?);
        }
        Ok(())
    }

    fn send(&self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        let mut raw = channel::raw_fds(&self.fds);
        raw.extend_from_slice(&self.borrowed);
        channel::send(fd, &self.header.encode(), &self.payload, &raw)
    }

    /// The fds this frame holds that count against `MAX_QUEUED_FDS`: those of a user message.
    fn user_fds(&self) -> usize {
        if self.user_bytes > 0 {
            self.fds.len() + self.borrowed.len()
        } else {
            0
        }
    }

    /// Drops a frame that was sent: its fds are in flight (the kernel holds them for the
    /// receiver), so closing ours is never the last close of their files and cannot block.
    fn sent(mut self) {
        self.fds.clear();
    }
}

/// A frame dropped unsent (a closed channel, a relay nobody can take, the primary's own copy
/// of a relayed message) may hold fds another process gave us, whose close alone could block
/// (a lingering socket): they are closed with `sys::close_untrusted`.
impl Drop for Frame {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            crate::sys::close_untrusted(fd);
        }
    }
}

/// How many frames at the front of `frames` fit one Batch datagram: fd-less frames, up to the
/// inline limit in all.
fn batchable_prefix(frames: &VecDeque<Frame>) -> usize {
    let mut size = HEADER_LEN;
    let mut n = 0;
    for f in frames {
        let entry = 4 + HEADER_LEN + f.payload.len();
        if !f.fds.is_empty() || !f.borrowed.is_empty() || size + entry > HEADER_LEN + INLINE_MAX {
            break;
        }
        size += entry;
        n += 1;
    }
    n
}

/// Most fds that user messages waiting in one queue may hold (passed fds and large payloads'
/// memfds). Each is an open fd of the queue's process: without this bound, a worker passing
/// fds to a worker that does not read would fill the primary's fd table (4096 queued
/// messages, each with its fd), and the primary could no longer accept. Over it, a push is
/// refused like over the other bounds (`Again`, and a relay stalls its sender).
pub const MAX_QUEUED_FDS: usize = 32;

/// Bounds of one outbox: plain data of the configuration, which owns it (`config` sits below
/// `ipc`); the old path stays.
pub use crate::config::Limits;

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket.
    Sent,
    /// Queued; `arm` is true when the loop must start watching for writability.
    Queued {
        /// The queue was idle: ask the loop to arm EPOLLOUT.
        arm: bool,
    },
    /// Held in the queue until `release` (`push_held`).
    Held,
}

/// What a flush did.
#[derive(Debug, PartialEq, Eq)]
pub struct Flushed {
    /// Nothing is left queued (the loop can stop watching for writability).
    pub empty: bool,
    /// A push was refused with `Again` earlier and the queue is now empty: emit DRAIN.
    pub drained: bool,
    /// The socket refused for now for a reason writability will not signal (see `transient`):
    /// the loop must stop watching for writability (it would fire at once, again and again)
    /// and flush again after a while.
    pub retry: bool,
}

/// A send that failed for now, not because the channel is gone: ETOOMANYREFS (the sender's
/// user has more fds in flight than its RLIMIT_NOFILE), ENOBUFS, ENOMEM. The frame stays
/// queued and goes later; writability (EPOLLOUT) says nothing about when.
pub fn transient(e: &Errno) -> bool {
    matches!(e, Errno::ETOOMANYREFS | Errno::ENOBUFS | Errno::ENOMEM)
}

/// Most bytes of NODE_HANDLE_ACK/NACK answers a Node channel keeps unsent (`push_ack`).
const MAX_ACK_BACKLOG: usize = 64 * 1024;

/// Held or corked frames that leave together as soon as they are this many.
pub const BATCH_FRAMES: usize = 8;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    user_bytes: usize,
    user_frames: usize,
    /// Fds held by the queued user messages (see `MAX_QUEUED_FDS`).
    user_fds: usize,
    want_drain: bool,
    closed: bool,
    armed: bool,
    /// Every push is held (`cluster_cork`, any thread): batches of `BATCH_FRAMES` leave as they
    /// form, the rest at `uncork`.
    corked: bool,
    /// Frames pushed with `hold` are held: what an event callback sends leaves in batches of
    /// `BATCH_FRAMES` as they form, the rest at `release` when the dispatch ends. A push without
    /// `hold` (another thread) sends them along at once.
    held: bool,
    /// Stream mode: the unsent tail of a message the socket took only part of (it goes before
    /// anything else; its fds went with its first byte).
    partial: Vec<u8>,
    /// Stream mode: a message with an fd was sent and its NODE_HANDLE_ACK has not come yet:
    /// nothing more is written until `ungate` (see `nodechan`).
    gated: bool,
}

/// The send side of one channel.
pub struct Outbox {
    fd: OwnedFd,
    limits: Limits,
    queue: Mutex<Queue>,
    messages: AtomicU64,
    /// A send failed for good (the channel is gone, not `transient`): the loop checks this
    /// without the lock, whichever thread's send found it.
    failed: AtomicBool,
    /// A Node channel (`SOCK_STREAM`, Node's framing) instead of an rcluster one.
    stream: Option<Serialization>,
}

impl Outbox {
    /// An outbox writing to `fd` (a non-blocking channel socket it now owns).
    pub fn new(fd: OwnedFd, limits: Limits) -> Outbox {
        Outbox {
            fd,
            limits,
            queue: Mutex::new(Queue::default()),
            messages: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            stream: None,
        }
    }

    /// An outbox writing Node's framing in `mode` to `fd` (a non-blocking stream socket it
    /// now owns): it takes only `Frame::node` frames.
    pub fn new_stream(fd: OwnedFd, limits: Limits, mode: Serialization) -> Outbox {
        Outbox { stream: Some(mode), ..Outbox::new(fd, limits) }
    }

    /// The Node channel's serialization, for a Node channel.
    pub fn stream(&self) -> Option<Serialization> {
        self.stream
    }

    /// The peer acknowledged the fd in flight (NODE_HANDLE_ACK or NACK): what waited behind
    /// it is written now. When the result is not `empty`, the caller must have the loop watch
    /// the channel for writability.
    pub fn ungate(&self) -> nix::Result<Flushed> {
        let mut q = self.lock();
        q.gated = false;
        if q.corked || q.closed {
            return Ok(Flushed { empty: true, drained: false, retry: false });
        }
        self.flush_locked(&mut q)
    }

    /// Stream mode: writes NODE_HANDLE_ACK/NACK (`body`) past the gate and the queue, right
    /// after what is already on its way, as Node does: the peer waits for it before it sends
    /// anything more, so it must not wait behind our own fd's ACK.
    pub fn push_ack(&self, body: &[u8]) -> Result<Pushed> {
        let Some(mode) = self.stream else { return fail(Code::Inval, "not a Node channel") };
        let mut q = self.lock();
        if q.closed {
            return fail(Code::Closed, "the channel is closed");
        }
        let bytes = mode.frame(body);
        if q.partial.is_empty() {
            match stream::send(self.fd(), &bytes, &[]) {
                Ok(n) if n == bytes.len() => return Ok(Pushed::Sent),
                Ok(n) => q.partial = bytes[n..].to_vec(),
                Err(e) if e == Errno::EAGAIN || transient(&e) => q.partial = bytes,
                Err(e) => {
                    q.closed = true;
                    self.failed.store(true, Ordering::Relaxed);
                    return fail(Code::Closed, format!("channel send failed: {e}"));
                }
            }
        } else if q.partial.len() > MAX_ACK_BACKLOG {
            // A peer that sends handles and never reads our answers.
            return fail(Code::Again, "the peer does not read its channel (acknowledgements pile up)");
        } else {
            q.partial.extend_from_slice(&bytes);
        }
        let arm = !q.armed && !q.corked;
        q.armed |= arm;
        Ok(Pushed::Queued { arm })
    }

    /// Writes one frame now: a datagram, or in stream mode the framed body (keeping the tail
    /// the socket did not take, and closing the gate behind an fd).
    fn write(&self, q: &mut Queue, frame: &Frame) -> nix::Result<()> {
        let Some(mode) = self.stream else { return frame.send(self.fd.as_fd()) };
        let bytes = mode.frame(&frame.payload);
        let mut raw = channel::raw_fds(&frame.fds);
        raw.extend_from_slice(&frame.borrowed);
        let n = stream::send(self.fd(), &bytes, &raw)?;
        if n < bytes.len() {
            q.partial = bytes[n..].to_vec();
        }
        if !raw.is_empty() {
            q.gated = true;
        }
        Ok(())
    }

    /// `flush_locked` in stream mode: the partial tail first, then one message at a time
    /// until the socket is full, the queue empty, or the gate closed behind an fd.
    fn flush_stream(&self, q: &mut Queue) -> nix::Result<Flushed> {
        let not_empty = Ok(Flushed { empty: false, drained: false, retry: false });
        loop {
            if !q.partial.is_empty() {
                match stream::send(self.fd(), &q.partial, &[]) {
                    Ok(n) => {
                        q.partial.drain(..n);
                        if !q.partial.is_empty() {
                            return not_empty;
                        }
                    }
                    Err(Errno::EAGAIN) => return not_empty,
                    Err(e) if transient(&e) => return Ok(Flushed { empty: false, drained: false, retry: true }),
                    Err(e) => {
                        q.closed = true;
                        q.frames.clear();
                        self.failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            if q.gated {
                break;
            }
            let Some(frame) = q.frames.pop_front() else { break };
            q.user_bytes -= frame.user_bytes;
            q.user_frames -= usize::from(frame.user_bytes > 0);
            q.user_fds -= frame.user_fds();
            match self.write(q, &frame) {
                Ok(()) => frame.sent(),
                Err(e) if e == Errno::EAGAIN || transient(&e) => {
                    q.user_bytes += frame.user_bytes;
                    q.user_frames += usize::from(frame.user_bytes > 0);
                    q.user_fds += frame.user_fds();
                    q.frames.push_front(frame);
                    return Ok(Flushed { empty: false, drained: false, retry: transient(&e) });
                }
                Err(e) => {
                    q.closed = true;
                    q.frames.clear();
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        // Empty, or waiting for the peer's ACK (which `ungate` answers): either way there is
        // nothing to write when the socket turns writable.
        q.armed = false;
        if q.frames.is_empty() {
            q.held = false;
            let drained = std::mem::take(&mut q.want_drain);
            return Ok(Flushed { empty: true, drained, retry: false });
        }
        Ok(Flushed { empty: true, drained: false, retry: false })
    }

    /// The channel socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Outbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    /// Sends or queues a frame. `Again` when a user message does not fit the bounds (a DRAIN
    /// is then owed), `Closed` when the peer is gone. A frame with borrowed fds whose send
    /// fails for now (see `transient`) while nothing is queued is not queued either: `Again`,
    /// and the caller, who owns the fds, tries again later.
    pub fn push(&self, frame: Frame) -> Result<Pushed> {
        self.push_inner(frame, true, false).map_err(|(e, _)| e)
    }

    /// Like `push`, but the frame waits in the queue until `release` (or until a push
    /// without hold, or a flush, sends it along): `Pushed::Held` or an error.
    pub fn push_held(&self, frame: Frame) -> Result<Pushed> {
        self.push_inner(frame, true, true).map_err(|(e, _)| e)
    }

    /// Like `push`, but a refusal owes no DRAIN and gives the frame back with `Again`: for the
    /// primary's relays, which keep it and retry by themselves when the queue empties (so the
    /// last target of a relay can be sent the frame itself rather than a copy).
    pub fn try_push(&self, frame: Frame) -> std::result::Result<Pushed, (Error, Option<Box<Frame>>)> {
        self.push_inner(frame, false, false)
    }

    /// User messages accepted so far (sent or queued).
    pub fn messages_sent(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn push_inner(
        &self,
        frame: Frame,
        owe_drain: bool,
        hold: bool,
    ) -> std::result::Result<Pushed, (Error, Option<Box<Frame>>)> {
        let mut q = self.lock();
        if q.closed {
            return Err((Error::new(Code::Closed, "the channel is closed"), None));
        }
        if frame.stream != self.stream.is_some() {
            // An rcluster frame for a Node worker (or the reverse): the peer could not read
            // it. Nothing the core sends a Node worker is lost this way: it composes Node
            // messages for them (see `primary::nodeworker`).
            log::debug!("a {:?} frame dropped: not for this kind of channel", frame.header.kind);
            return Ok(Pushed::Sent);
        }
        let over = |q: &Queue| {
            frame.user_bytes > 0
                && q.user_frames > 0
                && (q.user_bytes + frame.user_bytes > self.limits.max_bytes
                    || q.user_frames >= self.limits.max_frames
                    || q.user_fds + frame.user_fds() > MAX_QUEUED_FDS)
        };
        if over(&q) && q.held && !q.corked {
            // Held frames fill the queue: send them now rather than refuse while the socket
            // may have room (AGAIN means the channel is full, not that we held too much). What
            // does not go stays held: the holder's release hands it to the loop.
            if let Err(e) = self.flush_locked(&mut q) {
                return Err((Error::new(Code::Closed, format!("channel send failed: {e}")), None));
            }
        }
        if over(&q) {
            q.want_drain |= owe_drain;
            let sentence = format!(
                "send queue full ({} messages, {} bytes, {} fds queued): wait for DRAIN",
                q.user_frames, q.user_bytes, q.user_fds
            );
            return Err((Error::new(Code::Again, sentence), Some(Box::new(frame))));
        }
        if frame.user_bytes > 0 {
            self.messages.fetch_add(1, Ordering::Relaxed);
        }
        if q.frames.is_empty() && !q.corked && !hold && q.partial.is_empty() && !q.gated {
            match self.write(&mut q, &frame) {
                Ok(()) => {
                    frame.sent();
                    return Ok(Pushed::Sent);
                }
                Err(e) if transient(&e) && !frame.borrowed.is_empty() => {
                    // Queueing would take a duplicate of every borrowed fd, in a process that
                    // may be short of them: the caller keeps the fds and tries again later.
                    return Err((Error::new(Code::Again, format!("channel send failed for now: {e}")), None));
                }
                Err(e) if e == Errno::EAGAIN || transient(&e) => {}
                Err(e) => {
                    q.closed = true;
                    self.failed.store(true, Ordering::Relaxed);
                    self.messages.fetch_sub(u64::from(frame.user_bytes > 0), Ordering::Relaxed);
                    return Err((Error::new(Code::Closed, format!("channel send failed: {e}")), None));
                }
            }
        }
        // Queued: borrowed fds may be closed by their owner before this frame leaves (an ACK
        // or NACK from the worker for connections it has not been sent yet, say).
        let mut frame = frame;
        if let Err(e) = frame.own_borrowed() {
            self.messages.fetch_sub(u64::from(frame.user_bytes > 0), Ordering::Relaxed);
            return Err((Error::sys("dup of an fd to queue", e), None));
        }
        q.user_bytes += frame.user_bytes;
        q.user_frames += usize::from(frame.user_bytes > 0);
        q.user_fds += frame.user_fds();
        q.frames.push_back(frame);
        if hold {
            q.held = true;
        }
        if (hold || q.corked) && q.frames.len() >= BATCH_FRAMES && !q.armed {
            // A batch is together: send it now, so the peer starts on it while this side goes
            // on. Holding everything to the end would make two busy processes take turns
            // instead of working at once (measured: a held 64-message window runs at half the
            // speed of batches of 8). Errors show at release or uncork.
            let _ = self.flush_locked(&mut q);
        }
        if hold {
            return Ok(Pushed::Held);
        }
        if q.held && !q.armed && !q.corked {
            // Another thread holds frames here (its callback is running): rather than wait
            // behind them, send them along with this one now, in order.
            q.held = false;
            if let Ok(Flushed { empty: true, .. }) = self.flush_locked(&mut q) {
                return Ok(Pushed::Sent);
            }
        }
        // A corked queue is flushed by `uncork`, whose caller arms the loop if needed.
        let arm = !q.armed && !q.corked;
        q.armed |= arm;
        Ok(Pushed::Queued { arm })
    }

    /// Sends what `push_held` held (unless corked), as `uncork` does.
    pub fn release(&self) -> nix::Result<Flushed> {
        let mut q = self.lock();
        q.held = false;
        if q.corked {
            return Ok(Flushed { empty: true, drained: false, retry: false });
        }
        self.flush_locked(&mut q)
    }

    /// Holds pushes in the queue until `uncork`.
    pub fn cork(&self) {
        self.lock().corked = true;
    }

    /// Sends what was held since `cork` (batched). When the result is not `empty`, the caller
    /// must have the loop watch the channel for writability.
    pub fn uncork(&self) -> nix::Result<Flushed> {
        self.lock().corked = false;
        self.flush()
    }

    /// Writes queued frames until the socket is full or the queue empty (loop thread). Runs of
    /// small fd-less frames leave together in one Batch datagram.
    pub fn flush(&self) -> nix::Result<Flushed> {
        let mut q = self.lock();
        self.flush_locked(&mut q)
    }

    fn flush_locked(&self, q: &mut Queue) -> nix::Result<Flushed> {
        if self.stream.is_some() {
            return self.flush_stream(q);
        }
        while !q.frames.is_empty() {
            let n = batchable_prefix(&q.frames);
            let sent = if n >= 2 {
                let heads: Vec<[u8; HEADER_LEN]> = q.frames.iter().take(n).map(|f| f.header.encode()).collect();
                let batch = encode_batch(heads.iter().zip(&q.frames).map(|(h, f)| (&h[..], &f.payload[..])));
                channel::send(&self.fd, &batch, &[], &[])
            } else {
                q.frames.front().expect("not empty").send(self.fd.as_fd())
            };
            match sent {
                Ok(()) => {
                    let gone = n.max(1);
                    for frame in q.frames.drain(..gone) {
                        q.user_bytes -= frame.user_bytes;
                        q.user_frames -= usize::from(frame.user_bytes > 0);
                        q.user_fds -= frame.user_fds();
                        frame.sent();
                    }
                }
                Err(Errno::EAGAIN) => return Ok(Flushed { empty: false, drained: false, retry: false }),
                Err(e) if transient(&e) => return Ok(Flushed { empty: false, drained: false, retry: true }),
                Err(e) => {
                    q.closed = true;
                    q.frames.clear();
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        q.armed = false;
        q.held = false;
        let drained = std::mem::take(&mut q.want_drain);
        Ok(Flushed { empty: true, drained, retry: false })
    }

    /// Marks the channel closed: later pushes fail with `Closed`; queued frames are dropped.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.frames.clear();
    }

    /// True once a send failed for good (the channel is gone), whichever thread sent.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// True once the peer is gone or `close` was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Frames waiting to be written (in stream mode, not those waiting behind an fd for the
    /// peer's ACK: writability would not move them).
    pub fn queued(&self) -> usize {
        let q = self.lock();
        if q.gated && q.partial.is_empty() {
            return 0;
        }
        q.frames.len() + usize::from(!q.partial.is_empty())
    }

    /// Queued frames of `kind` that answer a request (a non-zero request id in `aux`): an
    /// answer the peer has not been sent yet, so it cannot have read it.
    pub fn queued_answers(&self, kind: Kind) -> usize {
        self.lock().frames.iter().filter(|f| f.header.kind == kind && f.header.aux != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::reader::Read;
    use crate::sys;
    use std::os::fd::AsRawFd;

    fn msg(n: usize) -> Frame {
        Frame::message(0, 1, &vec![7u8; n], None, 64 << 20).unwrap()
    }

    /// Reads every datagram waiting on `fd`; returns each one's frames' first payload byte.
    fn arrivals(fd: BorrowedFd<'_>) -> Vec<Vec<u8>> {
        let mut r = crate::ipc::reader::Reader::new(1 << 20);
        let mut inbox = crate::ipc::reader::Inbox::default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        loop {
            let fresh = inbox.is_empty();
            match r.read(fd, &mut inbox).unwrap() {
                Read::Frame(f) => {
                    if fresh {
                        out.push(Vec::new());
                    }
                    out.last_mut().unwrap().push(f.payload[0]);
                }
                Read::WouldBlock => return out,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn held_frames_wait_for_release_then_leave_in_one_datagram() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        for i in 0..3u8 {
            assert_eq!(out.push_held(Frame::message(0, 1, &[i], None, 64).unwrap()).unwrap(), Pushed::Held);
        }
        assert!(arrivals(b.as_fd()).is_empty(), "nothing leaves before release");
        assert!(out.release().unwrap().empty);
        assert_eq!(arrivals(b.as_fd()), vec![vec![0, 1, 2]], "one datagram, in order");
    }

    #[test]
    fn a_push_without_hold_takes_the_held_frames_along_in_order() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        out.push_held(Frame::message(0, 1, &[1], None, 64).unwrap()).unwrap();
        out.push_held(Frame::message(0, 1, &[2], None, 64).unwrap()).unwrap();
        assert_eq!(out.push(Frame::message(0, 1, &[3], None, 64).unwrap()).unwrap(), Pushed::Sent);
        assert_eq!(arrivals(b.as_fd()), vec![vec![1, 2, 3]], "another thread's send does not wait");
        assert!(out.release().unwrap().empty, "nothing left for the holder to send");
        assert!(arrivals(b.as_fd()).is_empty());
    }

    #[test]
    fn a_queued_frame_keeps_its_borrowed_fds_alive_after_their_owner_closes_them() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits::default());
        // Fill the socket: control frames are never refused, so this ends with one queued.
        let mut filled = 0;
        while !matches!(out.push(Frame::control(Kind::Heartbeat, vec![0; 60_000])).unwrap(), Pushed::Queued { .. }) {
            filled += 1;
            assert!(filled < 100_000, "the socket never filled");
        }
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // SAFETY: `pipe_r` stays open until `push` returns.
        let frame = unsafe { Frame::with_borrowed_fds(Kind::NewConn, vec![0; 16], vec![pipe_r.as_raw_fd()]) };
        assert!(matches!(out.push(frame).unwrap(), Pushed::Queued { .. }));
        drop(pipe_r); // the owner lets go (an ACK for a connection not sent yet)
        let _reuse = sys::eventfd().unwrap(); // and the number may be taken by anything
        let mut reader = crate::ipc::reader::Reader::new(1 << 20);
        let mut inbox = crate::ipc::reader::Inbox::default();
        let mut got = None;
        for _ in 0..1_000_000 {
            match reader.read(&b, &mut inbox) {
                Ok(Read::Frame(mut f)) if f.header.kind == Kind::NewConn => {
                    got = Some(std::mem::take(&mut f.fds).into_iter().next().expect("one fd"));
                    break;
                }
                Ok(Read::WouldBlock) => {
                    out.flush().unwrap();
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let got = got.expect("the queued frame arrived");
        let st = nix::sys::stat::fstat(&got).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO, "the pipe itself, not what took its number");
        drop(pipe_w);
    }

    #[test]
    fn fills_the_socket_then_queues_then_refuses_then_drains() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let limits = Limits { max_bytes: 64 * 1024, max_frames: 16 };
        let out = Outbox::new(a, limits);
        let mut sent = 0;
        let mut queued = 0;
        let mut arms = 0;
        let refused = loop {
            match out.push(msg(1000)) {
                Ok(Pushed::Sent) => sent += 1,
                Ok(Pushed::Queued { arm }) => {
                    queued += 1;
                    arms += usize::from(arm);
                }
                Ok(Pushed::Held) => panic!("a plain push is never held"),
                Err(e) => break e,
            }
            assert!(sent + queued < 100_000, "the bound never hit");
        };
        assert_eq!(refused.code, Code::Again);
        assert!(sent > 0, "the socket took some directly");
        assert_eq!(queued, 16, "exactly max_frames queued");
        assert_eq!(arms, 1, "EPOLLOUT requested once");
        // Control frames are never refused.
        assert!(out.push(Frame::control(Kind::Ack, vec![0; 8])).is_ok());
        // Read everything on the other side, flushing as room appears: DRAIN is owed once.
        // Count frames, not datagrams: the flush batches what was queued.
        let mut reader = crate::ipc::reader::Reader::new(64 << 20);
        let mut inbox = crate::ipc::reader::Inbox::default();
        let mut received = 0;
        let mut drained = 0;
        for _ in 0..100_000 {
            match reader.read(&b, &mut inbox).unwrap() {
                Read::Frame(_) => received += 1,
                Read::WouldBlock => {
                    let f = out.flush().unwrap();
                    drained += usize::from(f.drained);
                    if f.empty && out.queued() == 0 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        while let Read::Frame(_) = reader.read(&b, &mut inbox).unwrap() {
            received += 1;
        }
        assert_eq!(received, sent + queued + 1, "nothing lost, nothing duplicated");
        assert_eq!(drained, 1);
    }

    #[test]
    fn a_corked_queue_refuses_over_its_bound_and_owes_a_drain_at_uncork() {
        let (a, _b) = sys::seqpacket_pair().unwrap();
        // Fewer than a batch (which would leave at once), so the bound is what refuses.
        let out = Outbox::new(a, Limits { max_bytes: 1 << 20, max_frames: BATCH_FRAMES - 1 });
        out.cork();
        for _ in 0..BATCH_FRAMES - 1 {
            assert_eq!(out.push(msg(100)).unwrap(), Pushed::Queued { arm: false }, "corked: held, no arming");
        }
        assert_eq!(out.push(msg(100)).unwrap_err().code, Code::Again);
        assert_eq!(out.uncork().unwrap(), Flushed { empty: true, drained: true, retry: false });
    }

    #[test]
    fn a_single_large_message_fits_an_empty_queue() {
        let (a, _b) = sys::seqpacket_pair().unwrap();
        let out = Outbox::new(a, Limits { max_bytes: 10, max_frames: 1 });
        assert!(out.push(msg(5_000_000)).is_ok());
    }

    #[test]
    fn oversized_messages_are_too_big() {
        let err = Frame::message(0, 1, &[0u8; 100], None, 99).unwrap_err();
        assert_eq!(err.code, Code::TooBig);
    }

    #[test]
    fn a_closed_peer_gives_closed() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        drop(b);
        let out = Outbox::new(a, Limits::default());
        assert_eq!(out.push(msg(10)).unwrap_err().code, Code::Closed);
        assert!(out.is_closed());
    }
}
