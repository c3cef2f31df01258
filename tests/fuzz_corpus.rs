//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every crash the fuzzers ever found
//! (`fuzz/regressions/<target>/`) through the fuzz entry points, on stable Rust, in `cargo
//! test`. `fuzz/run.sh` is the fuzzer itself.
//!
//! `cargo test --test fuzz_corpus -- --ignored` rewrites the seed files (`seed-*`) of the corpus
//! from the encoders, so they follow the frame format when it changes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rcluster::ipc::frame::{encode_batch, encode_conns, encode_ids, ConnEntry, Header, Kind, BROADCAST, FLAG_BIG};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target)
}

/// `fuzzing::primary` counts the process's open fds before and after each input: the tests of
/// this file take turns so that one's fds do not show in another's count.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every file of the corpus and the regressions of `target`, through `run`; returns how many.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(dir(kind, target)) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("directory entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{}", path.display());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn frame_corpus_and_regressions() {
    let n = replay("frame", rcluster::fuzzing::frame);
    assert!(n >= seeds_frame().len(), "the committed frame corpus is there ({n} files)");
}

#[test]
fn primary_corpus_and_regressions() {
    let n = replay("primary", rcluster::fuzzing::primary);
    assert!(n >= seeds_primary().len(), "the committed primary corpus is there ({n} files)");
}

/// The seeds reach what the fuzzers check: every one runs without tripping an invariant.
#[test]
fn seeds_run_clean() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    seeds_frame().iter().for_each(|(_, s)| rcluster::fuzzing::frame(s));
    seeds_primary().iter().for_each(|(_, s)| rcluster::fuzzing::primary(s));
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus"]
fn write_seeds() {
    for (target, seeds) in [("frame", seeds_frame()), ("primary", seeds_primary())] {
        let d = dir("corpus", target);
        fs::create_dir_all(&d).expect("corpus directory");
        for (name, bytes) in seeds {
            fs::write(d.join(format!("seed-{name}")), bytes).expect("seed file");
        }
    }
}

fn frame(kind: Kind, from: u32, to: u32, flags: u8, nfds: u8, payload: &[u8]) -> Vec<u8> {
    let h = Header { kind, flags, nfds, from, to, aux: 0, len: payload.len() as u64 };
    let mut out = h.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

fn message(from: u32, to: u32, payload: &[u8]) -> Vec<u8> {
    frame(Kind::Message, from, to, 0, 0, payload)
}

fn seeds_frame() -> Vec<(&'static str, Vec<u8>)> {
    let with_fds = |nfds: u8, datagram: Vec<u8>| [vec![nfds], datagram].concat();
    let conns = encode_conns(&[
        ConnEntry { id: 1, listener: 0, peer: vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1] },
        ConnEntry { id: 2, listener: 1, peer: Vec::new() },
    ]);
    let inner = [message(1, 0, b"one"), message(1, 2, b"two")];
    let batch = encode_batch(inner.iter().map(|f| (&f[..32], &f[32..])));
    let big = Header { len: 1 << 20, flags: FLAG_BIG, nfds: 1, ..Header::new(Kind::Message) }.encode().to_vec();
    vec![
        ("hello", with_fds(0, frame(Kind::Hello, 0, 0, 0, 0, &1234u32.to_le_bytes()))),
        ("message", with_fds(0, message(1, 2, b"hello there"))),
        ("message-fd", with_fds(1, frame(Kind::Message, 1, 0, 2, 1, b"fd"))),
        ("big", with_fds(1, big)),
        ("newconn", with_fds(2, frame(Kind::NewConn, 0, 1, 0, 2, &conns))),
        ("ack", with_fds(0, frame(Kind::Ack, 0, 0, 0, 0, &encode_ids(&[1, 2, 3])))),
        ("batch", with_fds(0, batch)),
        ("conndone", with_fds(0, frame(Kind::ConnDone, 0, 0, 0, 0, &7u32.to_le_bytes()))),
        ("nack-fds", with_fds(2, frame(Kind::Nack, 0, 0, 0, 2, &encode_ids(&[4, 5])))),
        ("fd-pressure", with_fds(0, frame(Kind::FdPressure, 0, 0, 0, 0, &[1]))),
    ]
}

/// A script step of `rcluster::fuzzing::primary`: a datagram from fake `fake` with `nfds`
/// spare fds starting at spare `first` (0 /dev/null, 1 a socket, 2 a sealed memfd).
fn step(fake: u8, nfds: u8, first: u8, datagram: &[u8]) -> Vec<u8> {
    let mut out = vec![fake | nfds << 2 | first << 4];
    out.extend_from_slice(&(datagram.len() as u16).to_le_bytes());
    out.extend_from_slice(datagram);
    out
}

/// The script step after which every fake reads what it was sent.
const READ_ALL: u8 = 0x81;
/// The script step in which a client connects to the primary's listener.
const CONNECT: u8 = 0x83;
/// The script step after which the next datagram also carries a lingering TCP socket (its
/// last close would block for seconds), whose last reference the primary then holds.
const LINGER: u8 = 0x8C;

fn seeds_primary() -> Vec<(&'static str, Vec<u8>)> {
    let hello = |fake: u8| step(fake, 0, 0, &frame(Kind::Hello, 0, 0, 0, 0, &[1, 0, 0, 0]));
    let ready = |fake: u8| step(fake, 0, 0, &frame(Kind::Ready, 0, 0, 0, 0, &[]));
    let up = [hello(0), ready(0), hello(1), ready(1), hello(2), ready(2)].concat();
    let inner = [message(0, 2, b"batched one"), message(0, 0, b"batched two"), message(0, BROADCAST, b"to all")];
    let batch = encode_batch(inner.iter().map(|f| (&f[..32], &f[32..])));
    let big = Header { len: 64, flags: FLAG_BIG, nfds: 1, to: 3, ..Header::new(Kind::Message) }.encode();
    vec![
        (
            "relay",
            [
                up.clone(),
                step(0, 0, 0, &message(0, 0, b"to the primary")),
                step(0, 0, 0, &message(0, 2, b"to worker 2")),
                step(1, 0, 0, &message(0, BROADCAST, b"to everyone")),
                vec![READ_ALL],
            ]
            .concat(),
        ),
        ("fd", [up.clone(), step(0, 1, 0, &frame(Kind::Message, 0, 3, 2, 1, b"an fd")), vec![READ_ALL]].concat()),
        ("big", [up.clone(), step(1, 1, 2, &big), vec![READ_ALL]].concat()),
        ("impersonate", [up.clone(), step(0, 0, 0, &message(3, 2, b"I am worker 3")), vec![READ_ALL]].concat()),
        ("batch", [up.clone(), step(2, 0, 0, &batch), vec![READ_ALL]].concat()),
        (
            "control",
            [
                up.clone(),
                step(0, 0, 0, &frame(Kind::Ack, 0, 0, 0, 0, &encode_ids(&[7, 8]))),
                step(0, 0, 0, &frame(Kind::Nack, 0, 0, 0, 0, &encode_ids(&[9]))),
                step(1, 0, 0, &frame(Kind::ConnDone, 0, 0, 0, 0, &1u32.to_le_bytes())),
                step(1, 0, 0, &frame(Kind::Heartbeat, 0, 0, 0, 0, &[])),
                step(2, 0, 0, &frame(Kind::Bye, 0, 0, 0, 0, &[])),
            ]
            .concat(),
        ),
        (
            "dead-peer",
            [
                up.clone(),
                vec![0x82 | 1 << 2], /* fake 1 dies */
                step(0, 0, 0, &message(0, 2, b"to the dead")),
                vec![READ_ALL],
            ]
            .concat(),
        ),
        ("garbage", [up.clone(), step(0, 2, 0, b"not a frame, with two fds"), vec![READ_ALL]].concat()),
        ("primary-only", [up.clone(), step(2, 0, 0, &frame(Kind::Shutdown, 0, 0, 0, 0, &[]))].concat()),
        (
            "handoff",
            [
                up.clone(),
                vec![CONNECT, CONNECT, READ_ALL],
                step(0, 0, 0, &frame(Kind::Ack, 0, 0, 0, 0, &encode_ids(&[1]))),
                step(1, 0, 0, &frame(Kind::Nack, 0, 0, 0, 0, &encode_ids(&[2]))),
                vec![CONNECT, READ_ALL, 0x82 /* fake 0 dies */, CONNECT, READ_ALL],
                step(2, 0, 0, &frame(Kind::ConnDone, 0, 0, 0, 0, &1u32.to_le_bytes())),
            ]
            .concat(),
        ),
        // A lingering socket the primary has to close: on a malformed frame, on a message to no
        // one, on a NACK for no connection, behind a bad frame (unread when the fake dies); and
        // one relayed to a fake, which the primary passes on without closing anything.
        ("linger-bad", [up.clone(), vec![LINGER], step(0, 0, 0, &frame(Kind::Heartbeat, 0, 0, 0, 0, &[]))].concat()),
        (
            "linger-nobody",
            [up.clone(), vec![LINGER], step(0, 0, 0, &frame(Kind::Message, 0, 999, 2, 1, b"x"))].concat(),
        ),
        (
            "linger-nack",
            [up.clone(), vec![LINGER], step(1, 0, 0, &frame(Kind::Nack, 0, 0, 0, 1, &encode_ids(&[77])))].concat(),
        ),
        (
            "linger-unread",
            [
                up.clone(),
                step(0, 0, 0, b"garbage first, so the next datagram is never read"),
                vec![LINGER],
                step(0, 0, 0, &frame(Kind::Message, 0, 0, 2, 1, b"x")),
                vec![0x82 /* fake 0 dies */],
            ]
            .concat(),
        ),
        (
            "linger-relay",
            [up.clone(), vec![LINGER], step(2, 0, 0, &frame(Kind::Message, 0, 1, 2, 1, b"x")), vec![READ_ALL]].concat(),
        ),
        (
            "handoff-given-back",
            [
                up,
                step(1, 0, 0, &frame(Kind::FdPressure, 0, 0, 0, 0, &[1])),
                vec![CONNECT, CONNECT, READ_ALL],
                step(0, 1, 1, &frame(Kind::Nack, 0, 0, 0, 1, &encode_ids(&[1]))),
                step(1, 0, 0, &frame(Kind::FdPressure, 0, 0, 0, 0, &[0])),
                vec![CONNECT, READ_ALL],
            ]
            .concat(),
        ),
    ]
}
