//! The primary's listeners, and workers that listen.
//!
//! A listener comes from the config, from the primary at run time (`cluster_listen_tcp` in the
//! primary), or from a worker that asked (`cluster_listen_tcp` in a worker, node:cluster's
//! `server.listen()`). The first two are every worker's; a worker's request is keyed the way
//! node:cluster keys servers (address, port as asked, kind): the first binds, later requests
//! for the same key share the socket (port 0 from several workers: one ephemeral port), and
//! connections on it go only to the workers that listen on it. A listener no worker listens on
//! any more is closed, unless a worker that may listen again is on its way (a respawn, a
//! worker starting up): a crashed worker's replacement finds its port still there, with the
//! clients that connected meanwhile waiting in the backlog.
//!
//! Indexes are never reused: a closed listener's index stays invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;

use crate::config::{ListenSpec, Policy};
use crate::error::{fail, Code, Error, Result};
use crate::event::{Event, EventKind};
use crate::ipc::frame::Kind;
use crate::ipc::listen::{Answer, ListenKey, ANSWER_ALL_WORKERS, ANSWER_BIND_REUSEPORT};
use crate::ipc::outbox::Frame;
use crate::net::listener::{self, Listener};
use crate::sys;

use super::fd_budget::FdBudget;

use super::workers::WorkerState;
use super::{Phase, Primary};

/// Listeners one worker may hold open through the primary: a worker cannot make the primary
/// bind sockets until it runs out of fds.
pub const MAX_PER_WORKER: usize = 64;
/// Listeners bound for workers, in all.
pub const MAX_WORKER_LISTENERS: usize = 256;
/// How long a listener whose last worker exited stays open after that worker's replacement
/// reported READY, for it to listen again (workers report READY when their runtime starts,
/// usually before they listen). Past that, the replacement does not listen there: it closes.
pub const LISTEN_AGAIN_MS: u64 = 5_000;

/// One listener.
pub struct Entry {
    /// The socket.
    pub listener: Listener,
    /// The key workers share it by (None: an inherited socket, which no request matches).
    pub key: Option<ListenKey>,
    /// The workers that listen on it; None: every worker (the config's, the primary's own).
    pub members: Option<BTreeSet<u32>>,
    /// Watched by the loop for connections to accept.
    pub polled: bool,
    /// The bound address as text, for events and messages.
    pub address: String,
    /// The slots of the workers that listened here and exited: while a replacement of one
    /// of them may listen again, the listener stays open with no worker (its clients wait in
    /// the backlog).
    pub awaiting: BTreeSet<u32>,
    /// For a listener of every worker: the workers that asked for it too (each raises
    /// LISTENING once).
    pub asked: BTreeSet<u32>,
}

/// Who a connection on a listener may go to.
pub enum Members<'a> {
    /// Any worker.
    All,
    /// Only these.
    Some(&'a BTreeSet<u32>),
    /// The listener was closed: nobody.
    Gone,
}

/// The listeners by index.
#[derive(Default)]
pub struct Listeners {
    entries: BTreeMap<u32, Entry>,
    /// Bound ports by index, kept after the listeners close at shutdown (`cluster_local_port`).
    ports: BTreeMap<u32, u16>,
    /// Indexes closed because no worker listens there (not those closed at shutdown, whose
    /// backlog is still handed out).
    closed: BTreeSet<u32>,
    next: u32,
    /// When the `ListenAgain` timer that is set goes off (0: none set).
    listen_again_at: u64,
}

/// The key under which workers' requests share a listener the config or the primary declared.
/// None for inherited sockets, and for port 0: workers share "port 0" because they are copies
/// asking for the same server, while a port-0 listener of the config is another server, whose
/// ephemeral port a worker asking for "any port" must not be given.
fn key_of(spec: &ListenSpec) -> Option<ListenKey> {
    match spec {
        ListenSpec::Tcp { addr, .. } if addr.port() == 0 => None,
        ListenSpec::Tcp { addr, .. } => Some(ListenKey::Tcp(*addr)),
        ListenSpec::Unix { path, .. } => Some(ListenKey::Unix(path.clone())),
        ListenSpec::Inherited { .. } => None,
    }
}

/// The bound address as text: `127.0.0.1:34567`, `[::1]:8080`, `/run/app.sock`.
pub fn address_of(l: &Listener) -> String {
    match &l.spec {
        ListenSpec::Tcp { addr, .. } => {
            // A copy of the address, so an IPv6 scope id (`[fe80::1%2]:80`) stays in the text.
            let mut bound = *addr;
            bound.set_port(l.port);
            bound.to_string()
        }
        ListenSpec::Unix { path, .. } => path.display().to_string(),
        ListenSpec::Inherited { .. } => listener::describe(&l.spec),
    }
}

impl Listeners {
    /// The config's listeners, every worker's, as indexes 0, 1, ...
    pub fn new(bound: Vec<Listener>) -> Result<Listeners> {
        let mut table = Listeners::default();
        for l in bound {
            let key = key_of(&l.spec);
            table.insert(l, key, None)?;
        }
        Ok(table)
    }

    /// Adds a listener; returns its index. Indexes are never reused and travel as `i32` in
    /// answers and events: past `i32::MAX` no listener can be added any more.
    pub fn insert(
        &mut self,
        listener: Listener,
        key: Option<ListenKey>,
        members: Option<BTreeSet<u32>>,
    ) -> Result<u32> {
        let index = self.next;
        if index > i32::MAX as u32 {
            return fail(Code::State, format!("listener indexes exhausted ({index} bound so far)"));
        }
        self.next += 1;
        self.ports.insert(index, listener.port);
        let address = address_of(&listener);
        self.entries.insert(
            index,
            Entry { listener, key, members, polled: false, address, awaiting: BTreeSet::new(), asked: BTreeSet::new() },
        );
        Ok(index)
    }

    /// Listener `index`.
    pub fn get(&self, index: u32) -> Option<&Entry> {
        self.entries.get(&index)
    }

    /// Listener `index`, to change.
    pub fn get_mut(&mut self, index: u32) -> Option<&mut Entry> {
        self.entries.get_mut(&index)
    }

    /// The listener workers share for `key`, if one is open.
    pub fn find(&self, key: &ListenKey) -> Option<u32> {
        self.entries.iter().find(|(_, e)| e.key.as_ref() == Some(key)).map(|(i, _)| *i)
    }

    /// The open TCP listener bound to `addr` (its real port, whatever port it was asked
    /// for: workers that asked for port 0 got `addr`'s).
    pub fn find_bound(&self, addr: &std::net::SocketAddr) -> Option<u32> {
        self.entries
            .iter()
            .find(|(_, e)| matches!(&e.listener.spec, ListenSpec::Tcp { addr: a, .. } if a.ip() == addr.ip() && e.listener.port == addr.port()))
            .map(|(i, _)| *i)
    }

    /// The open Unix listener whose socket file `path` is (by device and inode: another
    /// spelling of its path).
    pub fn find_socket_file(&self, path: &std::path::Path) -> Option<u32> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let inode = (meta.dev(), meta.ino());
        self.entries.iter().find(|(_, e)| e.listener.unix_inode == Some(inode)).map(|(i, _)| *i)
    }

    /// Every listener, by index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries.iter().map(|(i, e)| (*i, e))
    }

    /// Every listener, by index, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Entry)> {
        self.entries.iter_mut().map(|(i, e)| (*i, e))
    }

    /// No listener is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Who connections on listener `index` may go to.
    pub fn members(&self, index: u32) -> Members<'_> {
        match self.entries.get(&index) {
            None if self.closed.contains(&index) => Members::Gone,
            None => Members::All,
            Some(Entry { members: None, .. }) => Members::All,
            Some(Entry { members: Some(m), .. }) => Members::Some(m),
        }
    }

    /// The port listener `index` was bound to (also after the cluster stopped).
    pub fn port(&self, index: u32) -> Result<u16> {
        self.ports.get(&index).copied().ok_or_else(|| {
            Error::new(Code::Inval, format!("no listener with index {index} ({} bound so far)", self.next))
        })
    }

    /// Takes listener `index` out (its socket closes when the entry is dropped); its index
    /// is no listener's any more.
    pub fn remove(&mut self, index: u32) -> Option<Entry> {
        self.ports.remove(&index);
        self.closed.insert(index);
        self.entries.remove(&index)
    }

    /// Takes every listener out (their ports stay known).
    pub fn take_all(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.entries).into_values().collect()
    }
}

impl Primary {
    /// Worker `id` asks to listen on `key` (request `request`): bind or share, answer, and
    /// raise LISTENING (once per worker and listener: asking again for what it listens on
    /// answers again, silently).
    pub(super) fn on_listen(&mut self, id: u32, request: u64, key: ListenKey) {
        let (answer, fds) = match self.listen_for(id, &key) {
            Ok((index, joined)) => match self.answer(index) {
                Ok((answer, fds)) => {
                    if joined {
                        let ev = Event {
                            listener: index,
                            data: answer.text.clone().into_bytes().into(),
                            ..self.event(EventKind::Listening, id)
                        };
                        self.events.push(ev);
                        log::info!("worker {id} listens on {} (listener {index})", answer.text);
                    }
                    (answer, fds)
                }
                Err(e) => {
                    // It cannot accept there without the socket: it does not listen.
                    if joined {
                        self.on_unlisten(id, index);
                    }
                    self.refusal(id, e)
                }
            },
            Err(e) => self.refusal(id, e),
        };
        let mut frame = Frame::control_with_fds(Kind::Listening, answer.encode(), fds);
        frame.header.aux = request;
        self.push_control(id, frame);
    }

    /// The answer to a listen request that failed.
    fn refusal(&self, id: u32, e: Error) -> (Answer, Vec<std::os::fd::OwnedFd>) {
        log::warn!("worker {id}: listen: {}", e.message);
        (Answer { result: e.code as i32, port: 0, flags: 0, text: e.message }, Vec::new())
    }

    /// Binds (or finds) the listener for `key` and adds worker `id` to it. Returns the index,
    /// and whether the worker joined it now (false: it listened there already, or the listener
    /// is every worker's).
    fn listen_for(&mut self, id: u32, key: &ListenKey) -> Result<(u32, bool)> {
        let what = key.to_string();
        if self.phase != Phase::Running {
            return fail(Code::State, format!("listen {what}: the cluster is shutting down"));
        }
        if self.slots.get(&id).is_none_or(|s| s.disconnect_requested || s.state == WorkerState::Disconnecting) {
            return fail(Code::State, format!("listen {what}: worker {id} is leaving"));
        }
        // The key, or (a Unix path spelled another way: a symlink, `..`) the socket file of a
        // listener that is open: that listener. Never a probe connecting to our own socket.
        let found = self.listeners.find(key).or_else(|| match key {
            ListenKey::Unix(path) => self.listeners.find_socket_file(path),
            ListenKey::Tcp(_) => None,
        });
        if let Some(index) = found {
            let joined = match self.listeners.get(index).and_then(|e| e.members.as_ref()) {
                Some(m) if !m.contains(&id) => {
                    self.check_held(id, &what)?;
                    true
                }
                Some(_) => false,
                // Every worker's: LISTENING the first time this worker asks.
                None => self.listeners.get(index).is_some_and(|e| !e.asked.contains(&id)),
            };
            let slot = self.slots.get(&id).map(|s| s.slot);
            if let Some(e) = self.listeners.get_mut(index) {
                match e.members.as_mut() {
                    Some(m) => {
                        m.insert(id);
                        if let Some(slot) = slot {
                            e.awaiting.remove(&slot);
                        }
                    }
                    None => {
                        e.asked.insert(id);
                    }
                }
            }
            return Ok((index, joined));
        }
        self.check_held(id, &what)?;
        self.check_privileged(key, &what)?;
        let owned = self.listeners.iter().filter(|(_, e)| e.members.is_some()).count();
        if owned >= MAX_WORKER_LISTENERS {
            return fail(Code::Inval, format!("listen {what}: {owned} listeners are open for workers already"));
        }
        // A worker's listeners must not eat the fds the primary needs for its own work (a
        // respawn, accepting for the others): none bound within twice the reserve.
        let limit = self.fd_budget.limit();
        if self.fd_budget.table_room() < FdBudget::reserve(limit) {
            return fail(
                Code::Sys,
                format!(
                    "listen {what}: the primary is short of fds (RLIMIT_NOFILE {limit}): no listener bound for workers"
                ),
            );
        }
        let spec = match key {
            ListenKey::Tcp(addr) => ListenSpec::Tcp { host: addr.ip().to_string(), addr: *addr },
            ListenKey::Unix(path) => ListenSpec::Unix { path: path.clone(), mode: None },
        };
        let bound = listener::bind(&spec, self.cfg.backlog, self.cfg.policy == Policy::ReusePort)?;
        self.fd_budget.took(1); // until the next count of the open fds
        let index = self.listeners.insert(bound, Some(key.clone()), Some(BTreeSet::from([id])))?;
        self.handoff_listener_added();
        Ok((index, true))
    }

    /// Worker `id` may listen on one more address.
    fn check_held(&self, id: u32, what: &str) -> Result<()> {
        let held = self.listeners.iter().filter(|(_, e)| e.members.as_ref().is_some_and(|m| m.contains(&id))).count();
        if held >= MAX_PER_WORKER {
            return fail(Code::Inval, format!("listen {what}: worker {id} already listens on {held} addresses"));
        }
        Ok(())
    }

    /// Workers that run under another user (`cluster_config_set_user`) must not get, through
    /// the primary, what their user could not bind: a privileged port or a socket file
    /// wherever the primary may write. Declare those in the config instead.
    fn check_privileged(&self, key: &ListenKey, what: &str) -> Result<()> {
        if self.cfg.worker_process.uid.is_none_or(|uid| uid == sys::geteuid()) {
            return Ok(());
        }
        match key {
            ListenKey::Tcp(addr) if addr.port() == 0 || addr.port() >= 1024 => Ok(()),
            _ => fail(
                Code::Sys,
                format!(
                    "listen {what}: permission denied (workers run as another user: declare privileged ports and unix sockets in the config)"
                ),
            ),
        }
    }

    /// The answer telling a worker about listener `index` (and SHARED's socket with it: a
    /// worker that cannot have the socket cannot listen there, so failing to copy it fails).
    fn answer(&self, index: u32) -> Result<(Answer, Vec<std::os::fd::OwnedFd>)> {
        let Some(e) = self.listeners.get(index) else {
            return fail(Code::State, format!("listener {index} is closed"));
        };
        let mut flags = if e.members.is_none() { ANSWER_ALL_WORKERS } else { 0 };
        if self.cfg.policy == Policy::ReusePort {
            flags |= ANSWER_BIND_REUSEPORT;
        }
        let fds = match self.cfg.policy {
            Policy::Shared => vec![sys::dup_cloexec(&e.listener.fd)
                .map_err(|err| Error::sys(format!("listen {}: dup of the listening socket", e.address), err))?],
            _ => Vec::new(),
        };
        let answer = Answer { result: index as i32, port: e.listener.port, flags, text: e.address.clone() };
        Ok((answer, fds))
    }

    /// Tells the workers that run (not those leaving) about listener `index` unasked: that
    /// it is every worker's now, and for SHARED/REUSEPORT where to accept.
    fn announce(&mut self, index: u32) {
        let ids: Vec<u32> = self
            .slots
            .values()
            .filter(|s| s.channel_open && !s.disconnect_requested && s.state != WorkerState::Disconnecting)
            .map(|s| s.id)
            .collect();
        for id in ids {
            match self.answer(index) {
                Ok((answer, fds)) => {
                    self.push_control(id, Frame::control_with_fds(Kind::Listening, answer.encode(), fds))
                }
                Err(e) => log::error!("worker {id}: not told about listener {index}: {}", e.message),
            }
        }
    }

    /// Queues a control frame to worker `id` (a closed channel is noticed by its reader).
    fn push_control(&mut self, id: u32, frame: Frame) {
        let Some(slot) = self.slots.get(&id) else { return };
        match slot.outbox.push(frame) {
            Ok(crate::ipc::outbox::Pushed::Queued { arm: true }) => self.arm_if_queued(id),
            Ok(_) => {}
            Err(e) => log::debug!("worker {id}: {e}"),
        }
    }

    /// A listener that connections go through the primary on now exists: from here on the
    /// primary is a handoff stage (see `sched`).
    pub(super) fn handoff_listener_added(&mut self) {
        if self._sched.is_none() && self.balance.is_some() && self.cfg.sched_batch.unwrap_or(true) {
            self._sched = super::sched::Batch::enter();
        }
    }

    /// Worker `id` no longer listens on `index`: what it was handed from there comes back
    /// (it refuses, giving the connections back) and goes to the others.
    /// A listener the last worker unlistened closes now: that worker chose to stop listening
    /// (node:cluster closes the server then too); only a worker's exit keeps it open for a
    /// replacement (`close_orphan_listeners`). So one worker cannot pile up open listeners by
    /// listening and unlistening.
    pub(super) fn on_unlisten(&mut self, id: u32, index: u32) {
        let Some(m) = self.listeners.get_mut(index).and_then(|e| e.members.as_mut()) else {
            log::debug!("worker {id}: unlisten of listener {index}, which is not one of workers that listen: ignored");
            return;
        };
        if !m.remove(&id) {
            log::debug!("worker {id}: unlisten of listener {index}, which it does not listen on: ignored");
            return;
        }
        log::info!("worker {id} no longer listens on listener {index}");
        if m.is_empty() {
            self.close_listener(index, "its last worker unlistened");
        }
    }

    /// Worker `id` (of `slot`) is gone: it listens nowhere any more. Where it listened, its
    /// replacement may listen again (see `close_orphan_listeners`).
    pub(super) fn unlisten_all(&mut self, id: u32, slot: u32) {
        for (_, e) in self.listeners.iter_mut() {
            if e.members.as_mut().is_some_and(|m| m.remove(&id)) {
                e.awaiting.insert(slot);
            }
            e.asked.remove(&id);
        }
    }

    /// Closes the listeners bound for workers that no worker listens on, unless the
    /// replacement of a worker that listened there may still listen again: it is on its way
    /// (a respawn waiting for its backoff, a start queued into the slot), starting, or READY
    /// for less than `LISTEN_AGAIN_MS`. A crashed worker's replacement finds its port still
    /// there, with the clients that connected meanwhile waiting in the backlog.
    pub(super) fn close_orphan_listeners(&mut self) {
        let orphan = |e: &Entry| e.members.as_ref().is_some_and(BTreeSet::is_empty);
        if !self.listeners.iter().any(|(_, e)| orphan(e)) {
            return;
        }
        let now = sys::monotonic_ms();
        let mut recheck = u64::MAX;
        let mut closing = Vec::new();
        for (index, e) in self.listeners.iter() {
            if !orphan(e) {
                continue;
            }
            let until = if self.phase == Phase::Running {
                e.awaiting.iter().filter_map(|&slot| self.may_listen_again(slot, now)).max()
            } else {
                None
            };
            match until {
                Some(at) => recheck = recheck.min(at),
                None => closing.push(index),
            }
        }
        for index in closing {
            self.close_listener(index, "no worker listens on it");
        }
        if recheck != u64::MAX
            && recheck > now
            && (self.listeners.listen_again_at <= now || recheck < self.listeners.listen_again_at)
        {
            self.listeners.listen_again_at = recheck;
            self.reactor.add_timer(recheck, super::Timer::ListenAgain);
        }
    }

    /// Whether a replacement in `slot` may still listen again: Some(when to look again; MAX
    /// while it is on its way or not READY), or None.
    fn may_listen_again(&self, slot: u32, now: u64) -> Option<u64> {
        if self.pending_respawns.contains(&slot) || self.slot_for.values().any(|&s| s == slot) {
            return Some(u64::MAX);
        }
        self.slots
            .values()
            .filter(|s| s.slot == slot && s.channel_open && !s.disconnect_requested)
            .filter_map(|s| match s.state {
                WorkerState::Starting | WorkerState::Online => Some(u64::MAX),
                WorkerState::Ready => Some(s.ready_mono_ms + LISTEN_AGAIN_MS).filter(|&at| at > now),
                _ => None,
            })
            .max()
    }

    /// Closes listener `index`; the connections accepted from it that wait for a worker are
    /// closed unanswered (counted): no worker can ever take them.
    fn close_listener(&mut self, index: u32, why: &str) {
        let Some(e) = self.listeners.remove(index) else { return };
        if e.polled {
            self.reactor.remove(&e.listener.fd);
        }
        e.listener.unlink_socket_file();
        let dropped = self.handoff.drop_waiting_from(index);
        if dropped > 0 {
            log::warn!("listener {index} ({}) closed: {dropped} waiting connection(s) closed unanswered", e.address);
        }
        log::info!("listener {index} ({}) closed: {why}", e.address);
    }

    /// The primary listens at run time: a listener every worker gets connections from, like
    /// the config's. SHARED/REUSEPORT workers already running are told about it. Returns its
    /// index. An address the config or workers already listen on gives that listener, also
    /// one that workers asked for with port 0 and that got this port. Port 0 always binds a
    /// new one: workers share "port 0" because they are copies asking for the same server;
    /// the primary asking again wants another port.
    pub fn listen(&mut self, spec: ListenSpec) -> Result<u32> {
        if self.phase != Phase::Running {
            return fail(Code::State, "the cluster is shutting down: no new listeners");
        }
        let key = key_of(&spec);
        let bound = match (&key, &spec) {
            (Some(_), ListenSpec::Tcp { addr, .. }) => self.listeners.find_bound(addr),
            _ => None,
        };
        if let Some(index) = key.as_ref().and_then(|k| self.listeners.find(k)).or(bound) {
            // Workers already share it; from now on it is every worker's: they all learn it
            // (those that listened there can no longer unlisten it; under SHARED/REUSEPORT the
            // others get the socket).
            if let Some(e) = self.listeners.get_mut(index).filter(|e| e.members.is_some()) {
                e.members = None;
                self.announce(index);
            }
            return Ok(index);
        }
        let bound = listener::bind(&spec, self.cfg.backlog, self.cfg.policy == Policy::ReusePort)?;
        let index = self.listeners.insert(bound, key, None)?;
        self.handoff_listener_added();
        if !self.cfg.primary_accepts() {
            self.announce(index);
        }
        Ok(index)
    }
}
