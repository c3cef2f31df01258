//! A real primary whose workers are fake: this process holds the worker ends of their
//! channels and writes whatever datagrams it likes into them. The fuzz targets (`fuzz/`) and
//! the regression tests drive the primary's frame handling with it, with no process started.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{Config, ListenSpec, Mode};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::event_loop::{self, Ready, Source};
use crate::ipc::channel::{self, Recv, RECV_BUF};
use crate::sys::{self, ExitStatus};

use super::Primary;

/// The pid the fake workers get: above `PID_MAX_LIMIT` (2^22), so no process has it and the
/// SIGKILL the primary sends a worker it drops reaches no one (kill fails with ESRCH).
const NO_PROCESS: libc::pid_t = libc::pid_t::MAX - 1;

/// One fake worker: its id and the worker end of its channel (None once closed).
struct Fake {
    id: u32,
    end: Option<OwnedFd>,
}

/// A primary with fake workers.
pub struct Harness {
    primary: Primary,
    fakes: Vec<Fake>,
    /// Its unix listener, when it has one, and the clients connected to it.
    listener: Option<PathBuf>,
    clients: Vec<UnixStream>,
}

/// Clients a harness keeps connected at most (each holds fds in this process).
const MAX_CLIENTS: usize = 256;

/// What a fake worker read from its channel.
#[derive(Debug)]
pub struct Received {
    /// The datagram.
    pub bytes: Vec<u8>,
    /// The fds that came with it (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

impl Harness {
    /// A primary (no listeners, signals left alone) with `workers` fake workers, each adopted
    /// as if it had just been started; `max_message` bounds payloads as the config would.
    pub fn new(workers: u32, max_message: u64) -> Result<Harness> {
        Harness::build(workers, max_message, None)
    }

    /// The same with a round-robin unix listener in the temporary directory, for handoffs:
    /// see [`Harness::connect`].
    pub fn with_listener(workers: u32, max_message: u64) -> Result<Harness> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("rcluster-harness-{}-{}.sock", sys::getpid(), SEQ.fetch_add(1, Ordering::Relaxed));
        Harness::build(workers, max_message, Some(std::env::temp_dir().join(name)))
    }

    fn build(workers: u32, max_message: u64, listener: Option<PathBuf>) -> Result<Harness> {
        let listeners = listener.iter().map(|path| ListenSpec::Unix { path: path.clone(), mode: None }).collect();
        let cfg = Config {
            workers,
            mode: Mode::Exec,
            exec: Some((c"/nonexistent/fake-worker".to_owned(), Vec::new())),
            signals: false,
            max_message,
            startup_timeout_ms: 0,
            heartbeat_ms: 0,
            listeners,
            ..Config::default()
        };
        let mut primary = Primary::start(cfg)?;
        let mut fakes = Vec::new();
        while let Some(id) = primary.next_spawn() {
            let (primary_end, worker_end) = sys::seqpacket_pair()?;
            let slot = primary.free_slot();
            // As for a real worker, the primary keeps the worker's end (read once it "exits").
            let recovery = sys::dup_cloexec(&worker_end).map_err(|e| Error::sys("dup", e))?;
            primary.adopt(id, slot, NO_PROCESS, primary_end, Some(recovery));
            fakes.push(Fake { id, end: Some(worker_end) });
        }
        primary.take_events();
        Ok(Harness { primary, fakes, listener, clients: Vec::new() })
    }

    /// A client connects to the listener (and stays connected while the harness lives);
    /// false when there is no listener, too many clients, or the connect failed.
    pub fn connect(&mut self) -> bool {
        let Some(path) = &self.listener else { return false };
        if self.clients.len() >= MAX_CLIENTS {
            return false;
        }
        match UnixStream::connect(path) {
            Ok(c) => {
                self.clients.push(c);
                true
            }
            Err(_) => false,
        }
    }

    /// The fake workers' ids, in order.
    pub fn ids(&self) -> Vec<u32> {
        self.fakes.iter().map(|f| f.id).collect()
    }

    /// Writes one datagram with `fds` attached from fake worker `index` to the primary.
    /// Fails once that worker's end is closed or the channel is full.
    pub fn send(&self, index: usize, datagram: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let end = self.end(index)?;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        channel::send(end, datagram, &[], &raw).map_err(io::Error::from)
    }

    /// Fake worker `index` dies: its end closes, and the primary learns of its exit (what
    /// the reaping of a real worker does).
    pub fn close(&mut self, index: usize) {
        if let Some(f) = self.fakes.get_mut(index) {
            if f.end.take().is_some() {
                self.primary.on_exit(f.id, ExitStatus { code: 0, signal: 0 });
            }
        }
    }

    /// One loop turn on what epoll reports ready now; returns the events.
    pub fn turn(&mut self) -> Vec<Event> {
        let mut ready: Vec<Ready> = Vec::new();
        event_loop::wait(self.primary.poll_fd(), 0, &mut ready).ok();
        // No timers: the reap poll would look for fake workers' processes, which do not exist.
        ready.retain(|r| r.source != Source::Timer);
        self.primary.process(&ready);
        self.primary.take_events()
    }

    /// Reads everything the primary sent fake worker `index` so far.
    pub fn drain(&self, index: usize) -> Vec<Received> {
        let Ok(end) = self.end(index) else { return Vec::new() };
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUF);
        let mut fds = Vec::new();
        while let Ok(Recv::Datagram { .. }) = channel::recv(end, &mut buf, &mut fds) {
            out.push(Received { bytes: buf.clone(), fds: std::mem::take(&mut fds) });
        }
        out
    }

    /// The primary still reads worker `id`'s channel (it has not dropped it).
    pub fn connected(&self, id: u32) -> bool {
        self.primary.slots.get(&id).is_some_and(|s| s.channel_open)
    }

    fn end(&self, index: usize) -> io::Result<&OwnedFd> {
        self.fakes
            .get(index)
            .and_then(|f| f.end.as_ref())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no such fake worker, or its end is closed"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (_, e) in self.primary.listeners.iter() {
            e.listener.unlink_socket_file();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::ipc::frame::{Header, Kind};
    use std::os::fd::AsFd;

    fn message(from: u32, to: u32, payload: &[u8]) -> Vec<u8> {
        let h = Header { from, to, len: payload.len() as u64, ..Header::new(Kind::Message) };
        [&h.encode()[..], payload].concat()
    }

    #[test]
    fn a_relayed_message_carries_its_real_sender_whatever_the_header_claims() {
        let mut h = Harness::new(3, 1024).unwrap();
        let ids = h.ids();
        h.send(0, &message(ids[2], ids[1], b"I am worker 3"), &[]).unwrap();
        let events = h.turn();
        assert!(events.is_empty(), "a relay is no event for the host: {events:?}");
        let got = h.drain(1);
        assert_eq!(got.len(), 1);
        let (header, payload) = Header::decode(&got[0].bytes, 0, 1024).unwrap();
        assert_eq!(
            (header.kind, header.from, header.to, payload),
            (Kind::Message, ids[0], ids[1], &b"I am worker 3"[..])
        );
        assert!(h.drain(2).is_empty(), "the worker it posed as got nothing");
    }

    #[test]
    fn a_bad_frame_drops_only_its_sender_and_closes_the_fds_it_carried() {
        let mut h = Harness::new(2, 1024).unwrap();
        let ids = h.ids();
        // The fd it attaches is one end of a socket pair: once every copy of it is closed, the
        // other end reads EOF.
        let (attached, watch) = sys::seqpacket_pair().unwrap();
        h.send(0, b"garbage, not a frame, with an fd", &[attached.as_fd()]).unwrap();
        drop(attached);
        let events = h.turn();
        let error = events.iter().find(|e| e.kind == EventKind::Error).expect("an ERROR event");
        assert_eq!(error.worker_id, ids[0]);
        assert!(events.iter().any(|e| e.kind == EventKind::Disconnect && e.worker_id == ids[0]));
        assert!(!h.connected(ids[0]) && h.connected(ids[1]), "only the sender is dropped");
        h.send(1, &message(0, 0, b"still here"), &[]).unwrap();
        let events = h.turn();
        assert!(events.iter().any(|e| e.kind == EventKind::Message && e.worker_id == ids[1]), "{events:?}");
        let mut buf = Vec::with_capacity(64);
        let eof = channel::recv(&watch, &mut buf, &mut Vec::new()).unwrap();
        assert!(matches!(eof, Recv::Closed), "the primary closed the fd that came with the garbage: {eof:?}");
    }

    #[test]
    fn notices_for_messages_to_nobody_are_bounded_by_the_senders_queue_and_none_is_lost() {
        let mut h = Harness::new(1, 1024).unwrap();
        let id = h.ids()[0];
        let to_nobody = message(0, 999, b"anyone there?");
        let mut sent = 0;
        let mut most_queued = 0;
        for _ in 0..10_000 {
            if h.send(0, &to_nobody, &[]).is_ok() {
                sent += 1;
            }
            h.turn();
            most_queued = most_queued.max(h.primary.slots[&id].outbox.queued());
        }
        let limit = crate::ipc::outbox::Limits::default().max_frames;
        assert!(sent > limit, "the worker got {sent} messages out, more than its queue takes ({limit})");
        assert!(most_queued <= limit, "the primary queued {most_queued} notices for a worker that does not read");
        let mut notices = 0;
        for _ in 0..10_000 {
            let got = h.drain(0);
            let empty = got.is_empty();
            for g in got {
                let (header, _) = Header::decode(&g.bytes, g.fds.len(), 1024).expect("a valid frame");
                if header.kind == Kind::Batch {
                    notices += crate::ipc::frame::decode_batch(&g.bytes[32..]).unwrap().len();
                } else {
                    assert_eq!((header.kind, header.aux), (Kind::Undeliverable, 999));
                    notices += 1;
                }
            }
            h.turn();
            if empty && notices == sent {
                break;
            }
        }
        assert_eq!(notices, sent, "one notice per message, none lost once the worker reads");
    }

    #[test]
    fn a_batch_longer_than_a_turn_is_read_to_its_end_and_as_its_senders() {
        let mut h = Harness::new(2, 1024).unwrap();
        let ids = h.ids();
        let frames: Vec<Vec<u8>> = (0..200u32).map(|i| message(0, 0, &i.to_le_bytes())).collect();
        let batch = crate::ipc::frame::encode_batch(frames.iter().map(|f| (&f[..32], &f[32..])));
        h.send(0, &batch, &[]).unwrap();
        h.send(1, &message(0, 0, b"from the other one"), &[]).unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            for ev in h.turn() {
                if ev.kind == EventKind::Message {
                    got.push((ev.worker_id, ev.data));
                }
            }
        }
        let from_first: Vec<Vec<u8>> = got.iter().filter(|(id, _)| *id == ids[0]).map(|(_, d)| d.to_vec()).collect();
        let expected: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(from_first, expected, "all 200 batched messages, in order, from their sender");
        assert_eq!(got.len(), 201, "and the other worker's one, under its own id: {:?}", got.last());
    }

    fn control(kind: Kind, payload: &[u8]) -> Vec<u8> {
        [&Header { len: payload.len() as u64, ..Header::new(kind) }.encode()[..], payload].concat()
    }

    /// Turns until a fake gets a NEWCONN; returns which fake, the connection ids and fds.
    fn next_handoff(h: &mut Harness) -> (usize, Vec<u64>, Vec<OwnedFd>) {
        for _ in 0..100 {
            h.turn();
            for i in 0..h.fakes.len() {
                for got in h.drain(i) {
                    let (header, payload) = Header::decode(&got.bytes, got.fds.len(), 1024).unwrap();
                    if header.kind == Kind::NewConn {
                        let conns = crate::ipc::frame::decode_conns(payload, got.fds.len()).unwrap();
                        return (i, conns.iter().map(|c| c.id).collect(), got.fds);
                    }
                }
            }
        }
        panic!("no connection was handed to a fake worker");
    }

    #[test]
    fn a_refused_or_orphaned_connection_goes_to_another_worker_and_an_acknowledged_one_stays() {
        let mut h = Harness::with_listener(2, 1024).unwrap();
        let ids = h.ids();
        for i in 0..2 {
            h.send(i, &control(Kind::Hello, &[]), &[]).unwrap();
            h.send(i, &control(Kind::Ready, &[]), &[]).unwrap();
        }
        assert!(h.connect());
        let (first, conns, fds) = next_handoff(&mut h);
        assert_eq!(conns.len(), 1);
        // Refused, with its fd given back (the primary closed its copy once it was sent).
        let nack = [
            &Header { nfds: 1, len: 8, ..Header::new(Kind::Nack) }.encode()[..],
            &crate::ipc::frame::encode_ids(&conns),
        ]
        .concat();
        h.send(first, &nack, &[fds[0].as_fd()]).unwrap();
        drop(fds);
        let (second, again, _) = next_handoff(&mut h);
        assert_ne!(second, first, "a refused connection goes to the other worker");
        h.send(second, &control(Kind::Ack, &crate::ipc::frame::encode_ids(&again)), &[]).unwrap();
        h.turn();
        let slot = &h.primary.slots[&ids[second]];
        assert_eq!((slot.connections, slot.unacked), (1, 0), "acknowledged once, nothing in flight");
        // An ACK from the wrong worker changes nothing.
        h.send(first, &control(Kind::Ack, &crate::ipc::frame::encode_ids(&again)), &[]).unwrap();
        h.turn();
        assert_eq!(h.primary.slots[&ids[first]].connections, 0);
        // A worker that dies before reading a connection handed to it: read back from its
        // socket, it goes to the other one.
        assert!(h.connect());
        let mut holder = None;
        for _ in 0..100 {
            h.turn();
            holder = (0..2).find(|&i| h.primary.slots[&ids[i]].unacked == 1);
            if holder.is_some() {
                break;
            }
        }
        let holder = holder.expect("the connection was handed to a worker");
        h.close(holder);
        let (heir, _, _) = next_handoff(&mut h);
        assert_ne!(heir, holder, "the connection of a dead worker goes to the live one");
        assert_eq!(h.primary.handoff.dropped, 0);
    }
    /// Every NEWCONN the fakes got this turn: (fake index, connections in it).
    fn handoffs(h: &mut Harness) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in 0..h.fakes.len() {
            for got in h.drain(i) {
                let (header, _) = Header::decode(&got.bytes, got.fds.len(), 1024).unwrap();
                if header.kind == Kind::NewConn {
                    out.push((i, got.fds.len()));
                }
            }
        }
        out
    }

    #[test]
    fn a_burst_goes_out_in_groups_over_as_many_workers_as_cpus_and_the_rotation_goes_on() {
        let mut h = Harness::with_listener(8, 1024).unwrap();
        h.primary.cpus = 2;
        for i in 0..8 {
            h.send(i, &control(Kind::Hello, &[]), &[]).unwrap();
            h.send(i, &control(Kind::Ready, &[]), &[]).unwrap();
        }
        h.turn();
        // 8 connections waiting at once: two groups of 4, to two workers, one frame each.
        for _ in 0..8 {
            assert!(h.connect());
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            h.turn();
            got.extend(handoffs(&mut h));
            if got.iter().map(|g| g.1).sum::<usize>() == 8 {
                break;
            }
        }
        assert_eq!(got, vec![(0, 4), (1, 4)], "8 connections with 2 CPUs: 2 workers, 4 each");
        // A lone connection goes to the next worker: the rotation continues over groups.
        assert!(h.connect());
        let mut lone = Vec::new();
        for _ in 0..100 {
            h.turn();
            lone.extend(handoffs(&mut h));
            if !lone.is_empty() {
                break;
            }
        }
        assert_eq!(lone, vec![(2, 1)]);
    }
}
