//! Accepting connections and handing them to workers.
//!
//! The primary accepts only as many connections as workers can take right now (the free
//! slots of their ACK windows), and as its own fds allow (see `fd_budget`); past that it stops
//! polling the listeners and lets the kernel backlog hold the rest. Connections for one worker
//! leave in batches: one NEWCONN frame carries up to `MAX_FDS` of them.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;

use crate::error::Code;
use crate::event_loop::Source;
use crate::ipc::frame::{encode_conn, Kind, MAX_FDS};
use crate::ipc::outbox::{Frame, Pushed};
use crate::net::listener;
use crate::sys;

use super::balance::Candidate;
use super::fd_budget::FdBudget;
use super::handoff::Conn;
use super::listeners::Members;
use super::workers::Slot;
use super::{Phase, Primary, Timer};

/// Most connections accepted from one listener in one turn.
const ACCEPT_BATCH: usize = 256;

/// How many of a turn's `waiting` connections go to one worker before the policy picks the
/// next: spread over as many workers as there are CPUs to run them (no fewer, or cores would
/// idle; no more, or each extra worker costs a wakeup and a task switch and brings no more
/// parallelism), at most one NEWCONN frame's worth. With `awake` workers that have room, and
/// `cpus` CPUs. One connection: a group of one.
fn group_size(waiting: usize, awake: usize, cpus: usize) -> usize {
    let spread = cpus.min(awake).max(1);
    waiting.div_ceil(spread).clamp(1, MAX_FDS)
}

impl Primary {
    /// Connections to accept now: the free window slots across the workers that take
    /// connections, minus what already waits for them, within what the primary's fd table has
    /// room for and what may be in flight (both RLIMIT_NOFILE: see `fd_budget`).
    ///
    /// A connection waiting for the workers of one listener (workers that listen) takes room
    /// only as far as those workers have room: connections of a listener whose workers are
    /// full (or gone, their replacement on its way) must not stop the other listeners.
    fn capacity(&mut self) -> usize {
        let window = self.cfg.window;
        let (mut free, mut unacked) = (0usize, 0u64);
        for s in self.slots.values() {
            unacked += u64::from(s.unacked);
            if s.accepts_connections() {
                free += window.saturating_sub(s.unacked) as usize;
            }
        }
        let waiting = self.handoff.waiting.len();
        let free = free.saturating_sub(self.waiting_with_room()) as u64;
        if free == 0 {
            return 0;
        }
        let limit = self.fd_budget.limit();
        let inflight = FdBudget::inflight_cap(limit).saturating_sub(unacked + waiting as u64);
        free.min(inflight).min(self.fd_budget.table_room()) as usize
    }

    /// The waiting connections that take room of the workers' windows: all of those any worker
    /// may take, and those of a listener of workers that listen up to what its workers have.
    fn waiting_with_room(&self) -> usize {
        let window = self.cfg.window;
        self.waiting_per_listener()
            .into_iter()
            .map(|(index, n)| match self.listeners.members(index) {
                Members::All => n,
                Members::Some(m) => n.min(Self::members_room(&self.slots, m, window)),
                Members::Gone => 0,
            })
            .sum()
    }

    /// The connections waiting for a worker, counted by the listener they came from.
    fn waiting_per_listener(&self) -> BTreeMap<u32, usize> {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for c in &self.handoff.waiting {
            *counts.entry(c.listener).or_default() += 1;
        }
        counts
    }

    /// Free window slots of the workers listening on a listener of workers that listen.
    fn members_room(slots: &BTreeMap<u32, Slot>, members: &std::collections::BTreeSet<u32>, window: u32) -> usize {
        members
            .iter()
            .filter_map(|id| slots.get(id))
            .filter(|s| s.accepts_connections())
            .map(|s| window.saturating_sub(s.unacked) as usize)
            .sum()
    }

    /// Accepts from listener `index`, at most what the workers can take now (those that
    /// listen on it, for a listener of workers that listen).
    pub(super) fn accept_from(&mut self, index: u32) {
        let capacity = self.capacity().min(ACCEPT_BATCH);
        let Some(e) = self.listeners.get(index) else { return };
        let fd = e.listener.fd.as_fd();
        let mut budget = capacity;
        if let Some(m) = &e.members {
            let queued = self.handoff.waiting.iter().filter(|c| c.listener == index).count();
            budget = budget.min(Self::members_room(&self.slots, m, self.cfg.window).saturating_sub(queued));
        }
        let mut taken = 0;
        for _ in 0..budget {
            match listener::accept(fd) {
                Ok(Some(a)) => {
                    self.handoff.accepted(a.fd, index, a.peer);
                    taken += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    if matches!(e, Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) {
                        // The budget keeps the primary's own table short of EMFILE: this is the
                        // system's table (ENFILE), memory, or fds the host opened meanwhile.
                        log::error!("accept on listener {index}: {e}; pausing accepts for 100 ms");
                        self.accept_pauses += 1;
                        self.accept_paused = true;
                        self.reactor.add_timer(sys::monotonic_ms() + 100, Timer::ResumeAccept);
                    } else {
                        log::error!("accept on listener {index}: {e}");
                    }
                    break;
                }
            }
        }
        self.fd_budget.took(taken);
        self.pump();
    }

    /// At the start of a shutdown: takes what is already in the kernel backlogs (those clients
    /// connected before we stopped; they get answered), then closes the listeners.
    pub(super) fn accept_remaining(&mut self) {
        for (index, e) in self.listeners.iter() {
            for _ in 0..65_536 {
                match listener::accept(&e.listener.fd) {
                    Ok(Some(a)) => self.handoff.accepted(a.fd, index, a.peer),
                    _ => break,
                }
            }
        }
        for e in self.listeners.take_all() {
            if e.polled {
                self.reactor.remove(&e.listener.fd);
            }
            e.listener.unlink_socket_file();
        }
    }

    /// Hands waiting connections to workers with room in their window, in arrival order; a
    /// connection whose worker is busy (STICKY) waits without holding up the others.
    ///
    /// The connections of one turn go out in groups (`group_size`): the policy picks a worker,
    /// which takes the next ones too, up to the group size or its free window; the next group
    /// goes to the worker the policy picks next. Round-robin thus rotates over groups rather
    /// than single connections: the spread over a run stays even, a lone connection still goes
    /// to the next worker at once, and a burst wakes a few workers instead of one per
    /// connection (the wakeup, not the handoff, is what a connection costs the primary when
    /// there are many workers).
    pub(super) fn pump(&mut self) {
        if self.handoff.waiting.is_empty() {
            return;
        }
        let window = self.cfg.window;
        let slots = self.slot_count();
        let cpus = self.cpus;
        let Some(balance) = self.balance.as_mut() else { return };
        let mut candidates: Vec<Candidate> = self
            .slots
            .values()
            .filter(|s| s.accepts_connections())
            .map(|s| Candidate {
                id: s.id,
                slot: s.slot,
                load: s.load(),
                free: window.saturating_sub(s.unacked),
                handed: s.handed,
            })
            .collect();
        let mut free: u64 = candidates.iter().map(|c| u64::from(c.free)).sum();
        if free == 0 {
            return;
        }
        let group = if balance.groups() {
            let awake = candidates.iter().filter(|c| c.free > 0).count();
            group_size(self.handoff.waiting.len(), awake, cpus)
        } else {
            1
        };
        let mut batches: BTreeMap<u32, Vec<Conn>> = BTreeMap::new();
        let mut deferred = Vec::new();
        // The workers that listen on the connection's listener, when only they may take it.
        let mut listening: Vec<Candidate> = Vec::new();
        // Listeners whose workers include every candidate (the usual case: all workers called
        // listen): their connections are picked among all candidates, with no filtering.
        let mut covering: BTreeMap<u32, bool> = BTreeMap::new();
        // The group being filled: the candidate's position and how many more it takes.
        let mut streak: Option<(usize, usize)> = None;
        while free > 0 {
            let Some(conn) = self.handoff.waiting.pop_front() else { break };
            let members = self.listeners.members(conn.listener);
            let any = match members {
                Members::All => true,
                Members::Some(m) => *covering
                    .entry(conn.listener)
                    .or_insert_with(|| m.len() >= candidates.len() && candidates.iter().all(|c| m.contains(&c.id))),
                Members::Gone => false,
            };
            let continued = match streak {
                Some((at, left)) if any && left > 0 && candidates[at].free > 0 => Some(candidates[at].id),
                _ => None,
            };
            let picked = match members {
                _ if continued.is_some() => continued,
                _ if any => balance.pick(&candidates, &conn.peer, slots),
                Members::Some(m) => {
                    listening.clear();
                    listening.extend(candidates.iter().filter(|c| m.contains(&c.id)));
                    if listening.is_empty() {
                        None
                    } else {
                        balance.pick(&listening, &conn.peer, slots)
                    }
                }
                _ => {
                    // Its listener closed (no worker listens there): nobody can take it.
                    self.handoff.dropped += 1;
                    log::warn!("connection {}: its listener {} is closed: closed unanswered", conn.id, conn.listener);
                    continue;
                }
            };
            let Some(id) = picked else {
                deferred.push(conn);
                continue;
            };
            let at = candidates.binary_search_by_key(&id, |c| c.id).expect("the policy picks a candidate");
            streak = match (continued, streak) {
                (Some(_), Some((at, left))) => Some((at, left - 1)),
                _ if any => Some((at, group - 1)),
                _ => None,
            };
            let c = &mut candidates[at];
            c.free -= 1;
            c.load += 1;
            c.handed += 1;
            free -= 1;
            let slot = self.slots.get_mut(&id).expect("candidates are live slots");
            slot.unacked += 1;
            slot.handed += 1;
            batches.entry(id).or_default().push(conn);
        }
        // Workers that had no room start again from the fewest the others were handed: a
        // worker whose window was full (a slow one) does not make up for it in a burst.
        if let Some(floor) = candidates.iter().filter(|c| c.free > 0).map(|c| c.handed).min() {
            for c in candidates.iter().filter(|c| c.free == 0 && c.handed < floor) {
                if let Some(slot) = self.slots.get_mut(&c.id) {
                    slot.handed = floor;
                }
            }
        }
        for conn in deferred.into_iter().rev() {
            self.handoff.waiting.push_front(conn);
        }
        for (id, conns) in batches {
            self.send_conns(id, conns);
        }
    }

    fn send_conns(&mut self, id: u32, conns: Vec<Conn>) {
        if self.slots.get(&id).is_some_and(|s| s.node.is_some()) {
            return self.send_node_conns(id, conns);
        }
        let mut conns = conns.into_iter().peekable();
        while conns.peek().is_some() {
            let mut payload = Vec::with_capacity(MAX_FDS.min(conns.len()) * 32);
            let mut fds: Vec<RawFd> = Vec::with_capacity(MAX_FDS.min(conns.len()));
            let mut ids: Vec<u64> = Vec::with_capacity(MAX_FDS.min(conns.len()));
            for c in conns.by_ref().take(MAX_FDS) {
                // Waiting connections always hold their fd (`Handoff::requeue` drops the others).
                let Some(fd) = c.fd.as_ref().map(|f| f.as_raw_fd()) else { continue };
                encode_conn(&mut payload, c.id, c.listener, &c.peer);
                fds.push(fd);
                ids.push(c.id);
                self.handoff.sent(id, c);
            }
            // SAFETY: the connections stay in `handoff` with their fds at least until `push`
            // returns (`let_go` below runs after it); a frame that has to wait in the queue
            // takes duplicates of them first.
            let frame = unsafe { Frame::with_borrowed_fds(Kind::NewConn, payload, fds) };
            let Some(slot) = self.slots.get(&id) else { return };
            let pushed = slot.outbox.push(frame);
            if matches!(&pushed, Err(e) if e.code == Code::Again) {
                // Refused for now (ETOOMANYREFS...): this frame and the rest wait, in order,
                // and the worker takes no more until the retry timer.
                for conn in conns.rev() {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.unacked = slot.unacked.saturating_sub(1);
                    }
                    self.handoff.waiting.push_front(conn);
                }
                for &conn in ids.iter().rev() {
                    if self.handoff.unsend(id, conn) {
                        if let Some(slot) = self.slots.get_mut(&id) {
                            slot.unacked = slot.unacked.saturating_sub(1);
                        }
                    }
                }
                self.send_refused_for_now(id);
                return;
            }
            match pushed {
                // In the worker's socket now: the primary's copies can go (see handoff's doc).
                Ok(Pushed::Sent) if slot.eager_handoff() => self.handoff.let_go(id, &ids),
                Ok(Pushed::Queued { arm: true }) => self.arm_if_queued(id),
                Ok(_) => {}
                Err(e) if e.code == Code::Closed => {
                    // They come back through channel_lost (the primary still holds them).
                    self.channel_broken(id, e.message);
                    return;
                }
                Err(e) => {
                    // Not queued (no fd left for the duplicates): they wait for another turn.
                    log::error!("handing {} connection(s) to worker {id}: {}", ids.len(), e.message);
                    for &conn in ids.iter().rev() {
                        if self.handoff.unsend(id, conn) {
                            if let Some(slot) = self.slots.get_mut(&id) {
                                slot.unacked = slot.unacked.saturating_sub(1);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Polls the listeners only while workers can take connections, and never when the
    /// workers accept by themselves (SHARED, REUSEPORT).
    pub(super) fn update_accepting(&mut self) {
        let running = self.balance.is_some() && self.phase == Phase::Running && !self.accept_paused;
        let room = if running && !self.listeners.is_empty() { self.capacity() } else { 0 };
        let window = self.cfg.window;
        // Connections already waiting for the workers of one listener take their room first.
        let queued = if room > 0 && self.listeners.iter().any(|(_, e)| e.members.is_some()) {
            self.waiting_per_listener()
        } else {
            BTreeMap::new()
        };
        for (index, e) in self.listeners.iter_mut() {
            // A listener of workers that listen: only while they have room for more than what
            // already waits for them (as `accept_from` counts: otherwise the loop would wake for
            // a listener it then accepts nothing from, turn after turn).
            let want = room > 0
                && e.members.as_ref().is_none_or(|m| {
                    Self::members_room(&self.slots, m, window) > queued.get(&index).copied().unwrap_or(0)
                });
            if want == e.polled {
                continue;
            }
            let fd = e.listener.fd.as_fd();
            if want {
                if let Err(err) = self.reactor.add(fd, Source::Listener(index), true, false) {
                    log::error!("listener {index}: {err}");
                    continue;
                }
            } else {
                self.reactor.remove(fd);
            }
            e.polled = want;
        }
    }
}
