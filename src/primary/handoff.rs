//! Connections between accept(2) and the worker's ACK.
//!
//! Once a connection is in a worker's socket (the NEWCONN datagram was sent), the primary
//! closes its copy at once: the worker's close is then the last one, and the TCP teardown is
//! paid by the worker that served the connection, not by the primary, through which every
//! connection goes (measured: 6% more connections per second on 2 busy cores). Nothing is
//! lost for that:
//! - a worker that dies leaves what it never received in its socket, and the primary holds a
//!   duplicate of that socket (`Slot::recovery`): it reads the connections back, with their
//!   fds, and hands them to other workers;
//! - a worker that refuses connections (it is leaving) sends the fds back with its NACK;
//! - a receive that runs out of fds loses the ones that did not fit, so a worker short of fds
//!   says so, and from then on the primary keeps its copy of each connection until the ACK,
//!   and hands it to another worker on a NACK (as it does for a worker that is leaving, whose
//!   socket it no longer holds).
//!
//! A connection is closed unanswered only when no worker can ever take it, and that is counted.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::OwnedFd;

/// An accepted connection the primary still holds.
#[derive(Debug)]
pub struct Conn {
    /// Id echoed by ACK/NACK.
    pub id: u64,
    /// The primary's copy of the connection; None once it is in a worker's socket and the
    /// primary let go of it (see the module doc).
    pub fd: Option<OwnedFd>,
    /// Listener index.
    pub listener: u32,
    /// Peer sockaddr bytes.
    pub peer: Vec<u8>,
    /// Handoffs tried so far.
    pub tries: u32,
    /// The socket's identity (`sys::file_identity`), taken when the primary lets go of its
    /// copy: a NACK that gives the connection back must give back this very socket.
    pub identity: Option<(u64, u64)>,
}

/// The primary's copy of a connection is closed without blocking: a worker it was handed to
/// (or that gave it back) may have made the socket linger with unsent data, and closed its
/// own copy first (see `sys::close_untrusted`).
impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            crate::sys::close_untrusted(fd);
        }
    }
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
        self.waiting.push_back(Conn { id: self.next_id, fd: Some(fd), listener, peer, tries: 0, identity: None });
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

    /// Closes the primary's copies of `ids`, in flight to `worker` and now in its socket.
    pub fn let_go(&mut self, worker: u32, ids: &[u64]) {
        for id in ids {
            if let Some((w, conn)) = self.inflight.get_mut(id) {
                if *w == worker {
                    // A plain close: the NEWCONN frame holding the connection is in the
                    // worker's socket, so this is never the last close of it.
                    if let Some(fd) = conn.fd.take() {
                        conn.identity = crate::sys::file_identity(&fd);
                    }
                }
            }
        }
    }

    /// True when something is in flight to `worker` whose copy the primary let go of.
    pub fn has_uncopied(&self, worker: u32) -> bool {
        self.inflight.values().any(|(w, c)| *w == worker && c.fd.is_none())
    }

    /// The copy the primary still holds of `id`, in flight to `worker`, if any.
    pub fn held(&self, worker: u32, id: u64) -> Option<&Conn> {
        self.inflight.get(&id).filter(|(w, _)| *w == worker).map(|(_, c)| c)
    }

    /// Worker `worker` refused `id`, and gave back `returned` (its fd) or not: it goes back
    /// to the front of the queue with the primary's copy or the returned fd (or is dropped
    /// after too many tries, or when neither exists). Returns false for an id not in flight to
    /// that worker.
    pub fn nack(&mut self, worker: u32, id: u64, returned: Option<OwnedFd>) -> bool {
        match self.take(worker, id) {
            Some(mut conn) => {
                if conn.fd.is_none() {
                    conn.fd = returned;
                } else if let Some(fd) = returned {
                    crate::sys::close_untrusted(fd);
                }
                self.requeue(conn);
                true
            }
            None => {
                if let Some(fd) = returned {
                    crate::sys::close_untrusted(fd);
                }
                false
            }
        }
    }

    /// `id` could not be sent to `worker` after all (its channel refused it for now, or the
    /// primary was out of fds): back to the front of the queue, and the try does not count.
    pub fn unsend(&mut self, worker: u32, id: u64) -> bool {
        match self.take(worker, id) {
            Some(mut conn) => {
                conn.tries = conn.tries.saturating_sub(1);
                self.waiting.push_front(conn);
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

    /// Worker `worker`'s channel is gone: what is in flight to it with the primary's copy is
    /// queued again, oldest first; the rest stays until `recovered` (once the worker has
    /// exited, what it never received is read back from its socket). Returns how many.
    pub fn worker_gone(&mut self, worker: u32) -> usize {
        let mut ids: Vec<u64> =
            self.inflight.iter().filter(|(_, (w, c))| *w == worker && c.fd.is_some()).map(|(id, _)| *id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in &ids {
            let (_, conn) = self.inflight.remove(id).expect("listed");
            self.requeue(conn);
        }
        ids.len()
    }

    /// Worker `worker` has exited, and `found` is what was still in its socket (connection
    /// ids with their fds): those are queued again, oldest first; the rest of what was in
    /// flight to it had reached it and is gone with it. Returns (requeued, lost).
    pub fn recovered(&mut self, worker: u32, found: Vec<(u64, OwnedFd)>) -> (usize, usize) {
        let mut found: HashMap<u64, OwnedFd, BuildHasherDefault<IdHasher>> = found.into_iter().collect();
        let mut ids: Vec<u64> = self.inflight.iter().filter(|(_, (w, _))| *w == worker).map(|(id, _)| *id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let (mut requeued, mut lost) = (0, 0);
        for id in ids {
            let (_, mut conn) = self.inflight.remove(&id).expect("listed");
            if conn.fd.is_none() {
                conn.fd = found.remove(&id);
            }
            if conn.fd.is_some() {
                self.requeue(conn);
                requeued += 1;
            } else {
                lost += 1;
            }
        }
        for (_, fd) in found {
            crate::sys::close_untrusted(fd); // an id the primary never sent there
        }
        (requeued, lost)
    }

    fn requeue(&mut self, conn: Conn) {
        if conn.fd.is_none() {
            log::error!("connection {}: lost in transit (no copy left to hand to another worker)", conn.id);
            self.dropped += 1;
        } else if conn.tries >= MAX_TRIES {
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

    /// Closes the waiting connections accepted on `listener` unanswered (it closed, and no
    /// worker listens there); returns how many.
    pub fn drop_waiting_from(&mut self, listener: u32) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|c| c.listener != listener);
        let n = before - self.waiting.len();
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
        assert!(h.nack(2, id3, None));
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
            h.nack(1, id, None);
        }
        assert!(h.waiting.is_empty());
        assert_eq!(h.dropped, 1);
    }

    #[test]
    fn copies_let_go_come_back_from_the_socket_or_the_nack_or_are_counted_lost() {
        let mut h = Handoff::default();
        for _ in 0..4 {
            h.accepted(fd(), 0, vec![]);
        }
        let ids: Vec<u64> = h.waiting.iter().map(|c| c.id).collect();
        while let Some(c) = h.waiting.pop_front() {
            h.sent(1, c);
        }
        h.let_go(2, &ids);
        assert!(h.held(1, ids[0]).unwrap().fd.is_some(), "let_go for another worker changes nothing");
        h.let_go(1, &ids);
        assert!(h.held(1, ids[0]).unwrap().fd.is_none());
        // Refused with the fd given back: queued again, with that fd.
        assert!(h.nack(1, ids[0], Some(fd())));
        assert!(h.waiting.pop_front().unwrap().fd.is_some());
        // The channel goes: nothing with a copy was left, so nothing is queued yet...
        assert_eq!(h.worker_gone(1), 0);
        assert_eq!(h.inflight(), 3);
        // ...until the worker has exited: ids[1] was still in its socket, ids[2] and ids[3]
        // had reached it (lost with it); an id the primary never sent there is ignored.
        let (requeued, lost) = h.recovered(1, vec![(ids[1], fd()), (999, fd())]);
        assert_eq!((requeued, lost), (1, 2));
        assert_eq!(h.waiting.front().unwrap().id, ids[1]);
        assert_eq!(h.inflight(), 0);
        // A refusal without the fd, and no copy: lost, and counted.
        let c = h.waiting.pop_front().unwrap();
        let id = c.id;
        h.sent(2, c);
        h.let_go(2, &[id]);
        assert!(h.nack(2, id, None));
        assert!(h.waiting.is_empty());
        assert_eq!(h.dropped, 1);
    }
}
