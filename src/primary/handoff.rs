//! Connections between accept(2) and the worker's ACK.
//!
//! The primary keeps its copy of every accepted fd until the worker acknowledges it. A worker
//! that dies, refuses (it is draining) or NACKs (its fds were lost) gives its connections back,
//! and they go to another worker. A connection is closed unanswered only when no worker can
//! ever take it, and that is counted.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;

/// An accepted connection the primary still holds.
#[derive(Debug)]
pub struct Conn {
    /// Id echoed by ACK/NACK.
    pub id: u64,
    /// The primary's copy of the connection.
    pub fd: OwnedFd,
    /// Listener index.
    pub listener: u32,
    /// Peer sockaddr bytes.
    pub peer: Vec<u8>,
    /// Handoffs tried so far.
    pub tries: u32,
}

/// Hashes connection ids, which the primary numbers itself (1, 2, 3...): one multiply spreads
/// them over the table. (SipHash, the default, costs more and buys nothing here: a worker can
/// make the primary look an id up, never insert one.)
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64((self.0 << 8) | u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15); // 2^64 / the golden ratio
    }
}

/// Handoffs that give up on a connection after this many refusals.
pub const MAX_TRIES: u32 = 8;

/// Waiting and in-flight connections.
#[derive(Default)]
pub struct Handoff {
    next_id: u64,
    /// Accepted, waiting for a worker.
    pub waiting: VecDeque<Conn>,
    inflight: HashMap<u64, (u32, Conn), BuildHasherDefault<IdHasher>>,
    /// Connections closed unanswered (no worker could ever take them).
    pub dropped: u64,
}

impl Handoff {
    /// Queues a freshly accepted connection.
    pub fn accepted(&mut self, fd: OwnedFd, listener: u32, peer: Vec<u8>) {
        self.next_id += 1;
        self.waiting.push_back(Conn { id: self.next_id, fd, listener, peer, tries: 0 });
    }

    /// Records that `conn` was sent to `worker`.
    pub fn sent(&mut self, worker: u32, mut conn: Conn) {
        conn.tries += 1;
        self.inflight.insert(conn.id, (worker, conn));
    }

    /// Worker `worker` acknowledged `id`: the primary's copy is closed. Returns false for an id
    /// that is not in flight to that worker (a confused or hostile worker: ignored).
    pub fn ack(&mut self, worker: u32, id: u64) -> bool {
        self.take(worker, id).is_some()
    }

    /// Worker `worker` refused `id`: it goes back to the front of the queue (or is dropped
    /// after too many tries). Returns false for an id not in flight to that worker.
    pub fn nack(&mut self, worker: u32, id: u64) -> bool {
        match self.take(worker, id) {
            Some(conn) => {
                self.requeue(conn);
                true
            }
            None => false,
        }
    }

    /// Removes `id` from what is in flight, if it is in flight to `worker`.
    fn take(&mut self, worker: u32, id: u64) -> Option<Conn> {
        match self.inflight.entry(id) {
            Entry::Occupied(e) if e.get().0 == worker => Some(e.remove().1),
            _ => None,
        }
    }

    /// Worker `worker` is gone: everything in flight to it is queued again, oldest first.
    /// Returns how many.
    pub fn worker_gone(&mut self, worker: u32) -> usize {
        let mut ids: Vec<u64> = self.inflight.iter().filter(|(_, (w, _))| *w == worker).map(|(id, _)| *id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in &ids {
            let (_, conn) = self.inflight.remove(id).expect("listed");
            self.requeue(conn);
        }
        ids.len()
    }

    fn requeue(&mut self, conn: Conn) {
        if conn.tries >= MAX_TRIES {
            log::error!("connection {} refused by {} workers in a row: closing it unanswered", conn.id, conn.tries);
            self.dropped += 1;
        } else {
            self.waiting.push_front(conn);
        }
    }

    /// Closes every waiting connection unanswered (no worker can ever take them); returns how many.
    pub fn drop_waiting(&mut self) -> usize {
        let n = self.waiting.len();
        self.waiting.clear();
        self.dropped += n as u64;
        n
    }

    /// Connections in flight (handed, not acknowledged).
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        crate::sys::eventfd().unwrap()
    }

    #[test]
    fn ack_releases_nack_and_death_requeue() {
        let mut h = Handoff::default();
        for _ in 0..3 {
            h.accepted(fd(), 0, vec![]);
        }
        let c1 = h.waiting.pop_front().unwrap();
        let c2 = h.waiting.pop_front().unwrap();
        let c3 = h.waiting.pop_front().unwrap();
        let (id1, id2, id3) = (c1.id, c2.id, c3.id);
        h.sent(1, c1);
        h.sent(1, c2);
        h.sent(2, c3);
        assert!(!h.ack(2, id1), "an ack from the wrong worker is ignored");
        assert!(h.ack(1, id1));
        assert!(!h.ack(1, id1), "a second ack is ignored");
        assert!(h.nack(2, id3));
        assert_eq!(h.waiting.front().unwrap().id, id3);
        assert_eq!(h.worker_gone(1), 1);
        assert_eq!(h.waiting.front().unwrap().id, id2);
        assert_eq!(h.inflight(), 0);
        assert_eq!(h.dropped, 0);
    }

    #[test]
    fn endless_refusals_end_in_a_counted_drop() {
        let mut h = Handoff::default();
        h.accepted(fd(), 0, vec![]);
        for _ in 0..MAX_TRIES {
            let c = h.waiting.pop_front().expect("requeued");
            let id = c.id;
            h.sent(1, c);
            h.nack(1, id);
        }
        assert!(h.waiting.is_empty());
        assert_eq!(h.dropped, 1);
    }
}
