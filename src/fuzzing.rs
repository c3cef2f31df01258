//! Fuzz entry points: arbitrary bytes in, a panic out when an invariant breaks. The libFuzzer
//! targets in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays the committed corpus and
//! every crash ever found through them on stable Rust as part of `make test`.
//!
//! - [`frame`]: the frame codec alone (header, batch, connection entries, id lists).
//! - [`primary`]: a real primary (see [`crate::primary::harness`]) fed datagrams, with fds,
//!   from fake workers.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::event::EventKind;
use crate::ipc::frame::{
    decode_batch, decode_conns, decode_ids, encode_conns, encode_ids, Header, Kind, BROADCAST, HEADER_LEN, MAX_FDS,
};
use crate::primary::harness::Harness;

/// Decodes `data` (first byte: how many fds "arrived", the rest: the datagram) with every
/// decoder that applies, and checks that what decodes encodes back to the same bytes.
pub fn frame(data: &[u8]) {
    let Some((&nfds, datagram)) = data.split_first() else { return };
    let nfds = usize::from(nfds) % (MAX_FDS + 2);
    let max = 1 << 16;
    let Ok((header, payload)) = Header::decode(datagram, nfds, max) else { return };
    assert_eq!(header.encode(), datagram[..HEADER_LEN], "a decoded header encodes to its own bytes");
    assert!(header.len <= max || header.kind == Kind::Batch, "the length bound holds");
    assert_eq!(usize::from(header.nfds), nfds, "the fd count matches what arrived");
    match header.kind {
        Kind::Batch => {
            if let Ok(inner) = decode_batch(payload) {
                assert!(!inner.is_empty(), "a batch is never empty");
                for d in inner {
                    assert!(d.len() >= HEADER_LEN, "every batched frame holds at least a header");
                    let _ = Header::decode(d, 0, max);
                }
            }
        }
        Kind::NewConn => {
            if let Ok(entries) = decode_conns(payload, nfds) {
                assert_eq!(entries.len(), nfds, "one connection entry per fd");
                assert_eq!(encode_conns(&entries), payload, "connection entries round-trip");
            }
        }
        Kind::Ack | Kind::Nack => {
            if let Ok(ids) = decode_ids(payload) {
                assert_eq!(encode_ids(&ids), payload, "id lists round-trip");
            }
        }
        _ => {}
    }
}

/// What the sealed memfd among the spare fds holds.
static SEALED: [u8; 64] = [7; 64];

/// Fake workers in [`primary`].
const FAKES: usize = 3;

/// Plays `data` as a script against a primary with three fake workers, and checks what a
/// compromised worker must never achieve: a panic, an fd leak, a message that arrives under
/// another worker's id, a frame with fds its sender did not attach, or a worker that broke the
/// protocol left connected. And one that needs no compromise to test: a turn of the primary
/// (or its handling of a fake's death) that blocks on something a fake sent. Such a step may
/// attach a TCP socket whose last close would wait `LINGER_S` seconds (SO_LINGER, unsent data,
/// a peer that never reads), and hand the primary the last reference to it: every turn must
/// take less than `TURN_BOUND`. (The bound is not 100 ms: the primary's turns take
/// microseconds, but this runs on loaded shared machines, where a 3 ms step was once seen to
/// take 1.2 s, and what it must catch is a close that waits for `LINGER_S`.)
///
/// Script, a step at a time:
/// - `op < 0x80`: a datagram from fake `op % 3`, with `(op >> 2) & 3` fds attached (spares
///   from the `op >> 4`th on: /dev/null, a socket, a sealed memfd of 64 bytes), of the length
///   in the next two bytes (little-endian, cut to what is left), then a loop turn;
/// - `op >= 0x80`: `op % 4` = 0 a loop turn (with `(op >> 2) & 3` = 3, the next datagram
///   also carries a lingering socket, and the script lets go of its own copy once it is
///   sent), 1 every fake reads what it was sent, 2 fake
///   `((op >> 2) & 3) % 3` closes its end (dies), 3 a client connects to the primary's unix
///   listener (the primary hands it to a ready fake: NEWCONN, to be ACKed or NACKed).
pub fn primary(data: &[u8]) {
    let fds_before = open_fds();
    {
        let Ok(mut h) = Harness::with_listener(FAKES as u32, 1 << 16) else { return };
        let ids = h.ids();
        let spares = Spares::new();
        let mut sent: [Sent; FAKES] = Default::default();
        let mut dropped = BTreeSet::new();
        let mut lingering = Lingering::default();
        let mut linger_next = false;
        let mut rest = data;
        while let Some((&op, tail)) = rest.split_first() {
            rest = tail;
            if op >= 0x80 {
                match op % 4 {
                    0 if (op >> 2) & 3 == 3 => linger_next = true,
                    1 => (0..FAKES).for_each(|i| check_received(&h, i, &ids, &sent)),
                    2 => {
                        let t = Instant::now();
                        h.close(usize::from((op >> 2) & 3) % FAKES);
                        assert!(t.elapsed() < TURN_BOUND, "the primary took {:?} over a fake's death", t.elapsed());
                    }
                    3 => {
                        h.connect();
                    }
                    _ => {}
                }
            } else {
                let from = usize::from(op) % FAKES;
                let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
                let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
                let (datagram, tail) = tail.split_at(len);
                rest = tail;
                let linger = if std::mem::take(&mut linger_next) { lingering.socket() } else { None };
                let mut fds = spares.pick(usize::from(op >> 2) & 3, usize::from(op >> 4));
                if let Some(s) = &linger {
                    fds.push(s.as_fd());
                }
                let ok = h.send(from, datagram, &fds).is_ok();
                let attached = !fds.is_empty();
                drop(fds);
                if let Some(s) = linger {
                    if ok {
                        drop(s); // in flight now: this close is not the last
                    } else {
                        crate::sys::close_untrusted(s); // ours is the only one
                    }
                }
                if ok {
                    sent[from].datagrams.push(datagram);
                    if attached {
                        // The memfd's bytes may become the payload of a FLAG_BIG message.
                        sent[from].datagrams.push(&SEALED);
                        sent[from].fds = true;
                    }
                }
            }
            let t = Instant::now();
            let events = h.turn();
            assert!(t.elapsed() < TURN_BOUND, "a turn of the primary took {:?}", t.elapsed());
            for ev in events {
                assert!(ev.worker_id == 0 || ids.contains(&ev.worker_id), "event for an unknown worker: {ev:?}");
                if ev.kind == EventKind::Error && ev.worker_id != 0 {
                    dropped.insert(ev.worker_id);
                }
            }
        }
        h.turn();
        for i in 0..FAKES {
            check_received(&h, i, &ids, &sent);
        }
        for id in &dropped {
            assert!(!h.connected(*id), "worker {id} broke the protocol but is still connected");
        }
    }
    let fds_after = open_fds();
    assert_eq!(fds_after, fds_before, "every fd the fake workers sent was closed");
}

/// What one fake worker sent.
#[derive(Default)]
struct Sent<'a> {
    datagrams: Vec<&'a [u8]>,
    fds: bool,
}

/// Reads what fake `index` was sent and checks each frame: a relayed message carries the id of
/// the fake whose datagram holds its payload (the primary stamps `from`: no one can pose as
/// another worker), and fds arrive only from a fake that attached some.
fn check_received(h: &Harness, index: usize, ids: &[u32], sent: &[Sent<'_>; FAKES]) {
    for mut got in h.drain(index) {
        // Only their number is checked; a lingering socket among them must not make the
        // script wait either.
        let nfds = got.fds.len();
        got.fds.drain(..).for_each(crate::sys::close_untrusted);
        let (header, payload) = Header::decode(&got.bytes, nfds, u64::MAX)
            .unwrap_or_else(|e| panic!("the primary sent fake {index} an invalid frame: {e}"));
        if header.kind == Kind::NewConn {
            let entries = decode_conns(payload, nfds).expect("the primary's NEWCONN frames are well formed");
            assert!(entries.iter().all(|e| e.listener == 0), "connections come from the one listener");
        }
        if header.kind != Kind::Message || header.from == 0 {
            continue;
        }
        let Some(sender) = ids.iter().position(|&id| id == header.from) else {
            panic!("a message from unknown worker {} reached fake {index}", header.from)
        };
        let theirs = &sent[sender];
        assert!(
            payload.is_empty() || theirs.datagrams.iter().any(|d| d.windows(payload.len()).any(|w| w == payload)),
            "fake {index} got a message under worker {}'s id that worker never sent",
            header.from
        );
        assert!(header.to != BROADCAST || sender != index, "a broadcast went back to its sender");
        assert!(nfds == 0 || theirs.fds, "fds reached fake {index} that worker {} never attached", header.from);
    }
}

/// What a lingering socket's last close would wait, in seconds.
const LINGER_S: i32 = 8;
/// The longest a turn of the primary may take (see `primary`).
const TURN_BOUND: Duration = Duration::from_millis(4000);

/// Makes TCP sockets whose last close blocks: connected to a listener that never accepts
/// (created on first use, so scripts that never ask pay nothing), the send buffer full,
/// `SO_LINGER {1, LINGER_S}`.
#[derive(Default)]
struct Lingering {
    listener: Option<std::net::TcpListener>,
}

impl Lingering {
    fn socket(&mut self) -> Option<OwnedFd> {
        if self.listener.is_none() {
            self.listener = std::net::TcpListener::bind("127.0.0.1:0").ok();
        }
        let addr = self.listener.as_ref()?.local_addr().ok()?;
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_nonblocking(true).ok()?;
        let junk = [0u8; 1 << 16];
        for _ in 0..1024 {
            if s.write(&junk).is_err() {
                break; // WouldBlock: the peer's window and our buffer are full
            }
        }
        s.set_nonblocking(false).ok()?;
        crate::sys::set_linger(&s, Some(LINGER_S)).ok()?;
        Some(OwnedFd::from(s))
    }
}

/// Fds the script attaches: /dev/null, a socket whose peer is closed, and a sealed memfd of 64
/// bytes (so FLAG_BIG frames can be valid).
struct Spares {
    fds: Vec<OwnedFd>,
}

impl Spares {
    fn new() -> Spares {
        let mut fds = Vec::new();
        if let Ok(f) = std::fs::File::open("/dev/null") {
            fds.push(OwnedFd::from(f));
        }
        if let Ok((a, _)) = crate::sys::seqpacket_pair() {
            fds.push(a);
        }
        if let Ok(m) = crate::ipc::payload::seal(&SEALED) {
            fds.push(m);
        }
        Spares { fds }
    }

    /// `n` of them, starting with the `first`th (wrapping around).
    fn pick(&self, n: usize, first: usize) -> Vec<BorrowedFd<'_>> {
        self.fds.iter().cycle().skip(first % self.fds.len().max(1)).take(n).map(|f| f.as_fd()).collect()
    }
}

/// How many fds this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
