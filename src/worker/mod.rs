//! The worker runtime: one channel to the primary, connections and messages in, ACKs and
//! messages out.

pub mod env;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crate::error::{fail, Code, Error, Result};
use crate::event::{Event, EventKind};
use crate::event_loop::{Reactor, Ready, Source};
use crate::ipc::frame::{
    decode_conns, encode_ids, Header, Kind, MAX_FDS, MESSAGE_FD_RESERVE, PRESSURE_CONNECTIONS, PRESSURE_MESSAGES,
};
use crate::ipc::listen::{Answer, ListenKey, ANSWER_ALL_WORKERS, ANSWER_BIND_REUSEPORT};
use crate::ipc::outbox::{Frame, Outbox};
use crate::ipc::reader::{Inbox, Incoming, Read, Reader};
use crate::net::listener;
use crate::shared::Shared;
use crate::signals::{SignalPipe, WORKER_SIGNALS};
use crate::sys;

use env::{AcceptFrom, WorkerEnv};

const FRAMES_PER_TURN: usize = 64;

/// How often `check_fds` counts the open fds when nothing suggests they are running out.
const FD_COUNT_EVERY_MS: u64 = 100;

/// How long `listen` waits for the primary's answer (it answers within one loop turn; this
/// only bounds a primary that is stuck).
const LISTEN_TIMEOUT_MS: u64 = 30_000;

/// A listener this worker listens on through `listen`.
#[derive(Clone, Copy, Debug)]
struct Opened {
    /// Its bound port (0 for Unix sockets).
    port: u16,
    /// Every worker's (the config's or the primary's): not this worker's to unlisten.
    all: bool,
    /// REUSEPORT: this worker's own socket, bound here (its queue is this worker's alone).
    reuseport: bool,
}

/// Most connections `unlisten` takes from its own REUSEPORT socket before closing it (the
/// kernel resets what is left in that socket's queue when it closes).
const UNLISTEN_DRAIN_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// SHUTDOWN delivered: refuse new connections, flush what is queued, then finish.
    Draining,
    /// The primary is gone.
    Disconnected,
}

/// Worker timers.
#[derive(Clone, Copy, Debug)]
pub enum Timer {
    /// Tell the primary the loop is alive.
    Heartbeat,
    /// Flush the channel again after a send failed for now (see `outbox::transient`).
    RetryFlush,
}

/// The worker runtime.
pub struct Worker {
    env: WorkerEnv,
    reactor: Reactor<Timer>,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    reader: Reader,
    /// Frames of the primary's last batch datagram not handled yet.
    inbox: Inbox,
    /// Connections received in this read pass, acknowledged together at its end.
    acks: Vec<u64>,
    /// The highest fd number of the connections received in the last pass that brought any
    /// (fds are allocated lowest first: it tells how full the fd table is).
    fd_high: i32,
    /// We told the primary we are short of fds (see `check_fds`).
    fd_pressure: bool,
    /// We refuse the fds passed with messages (see `check_fds`).
    refusing_fds: bool,
    /// What we last told the primary in an FdPressure frame.
    fds_reported: u8,
    /// When `check_fds` last counted the open fds.
    fds_counted_ms: u64,
    signals: Option<SignalPipe>,
    events: Vec<Event>,
    phase: Phase,
    ready_sent: bool,
    /// SHARED/REUSEPORT: the sockets this worker accepts on, by listener index.
    listeners: Vec<(u32, OwnedFd)>,
    /// The last `listen` request's id.
    last_request: u64,
    /// Listeners opened through `listen`, by index.
    opened: BTreeMap<u32, Opened>,
    /// Listeners this worker unlistened: connections still sent from there are given back.
    unlistened: BTreeSet<u32>,
}

/// Connections accepted from one listener per turn, so messages and other listeners get
/// their turn too.
const ACCEPT_BATCH: usize = 32;

/// SHARED: the primary's sockets, watched with EPOLLEXCLUSIVE so one worker wakes per
/// connection. REUSEPORT: this worker's own SO_REUSEPORT sockets.
fn open_listeners(accept: &AcceptFrom, reactor: &Reactor<Timer>) -> Result<Vec<(u32, OwnedFd)>> {
    let mut out = Vec::new();
    match accept {
        AcceptFrom::Primary => {}
        AcceptFrom::Shared(list) => {
            for &(index, fd) in list {
                // SAFETY: the primary handed this worker its own copy of the listening socket
                // (inherited across exec, or dup'd after fork); only this Worker owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                sys::set_cloexec(&owned, true).map_err(|e| Error::sys("fcntl(shared listener)", e))?;
                reactor.add_exclusive(&owned, Source::Listener(index))?;
                out.push((index, owned));
            }
        }
        AcceptFrom::ReusePort(list) => {
            for &(index, addr) in list {
                let fd = listener::bind_reuseport(&addr, libc::SOMAXCONN)?;
                reactor.add(&fd, Source::Listener(index), true, false)?;
                out.push((index, fd));
            }
        }
    }
    Ok(out)
}

impl Worker {
    /// Starts the runtime on the channel in `env`: reports ONLINE, and READY unless the
    /// config asks for manual readiness.
    pub fn start(env: WorkerEnv) -> Result<Worker> {
        // SAFETY: the channel fd was handed to this worker (inherited across exec, or created
        // for it by fork) and `runtime` gives it to exactly one Worker.
        let channel = unsafe { OwnedFd::from_raw_fd(env.channel) };
        sys::set_nonblocking(&channel, true).map_err(|e| Error::sys("fcntl(channel, O_NONBLOCK)", e))?;
        let reactor = Reactor::new()?;
        reactor.add(&channel, Source::Channel(0), true, false)?;
        let signals = if env.signals { Some(SignalPipe::install(&WORKER_SIGNALS)?) } else { None };
        if let Some(s) = &signals {
            reactor.add(s.fd(), Source::Signals, true, false)?;
        }
        let outbox = Arc::new(Outbox::new(channel, env.send_limits));
        let shared = Arc::new(Shared::new(env.id, env.max_message, reactor.waker()));
        shared.insert(0, outbox.clone());
        let listeners = open_listeners(&env.accept, &reactor)?;
        let manual_ready = env.manual_ready;
        let mut w = Worker {
            listeners,
            reader: Reader::new(env.max_message),
            inbox: Inbox::default(),
            acks: Vec::new(),
            fd_high: lowest_free_fd() - 1,
            fd_pressure: false,
            refusing_fds: false,
            fds_reported: 0,
            fds_counted_ms: 0,
            env,
            reactor,
            shared,
            outbox,
            signals,
            events: Vec::new(),
            phase: Phase::Running,
            ready_sent: false,
            last_request: 0,
            opened: BTreeMap::new(),
            unlistened: BTreeSet::new(),
        };
        let mut hello = Frame::control(Kind::Hello, (sys::getpid() as u32).to_le_bytes().to_vec());
        hello.header.from = w.env.id;
        w.push(hello);
        if !manual_ready {
            w.ready()?;
        }
        w.heartbeat();
        log::debug!("worker {} (pid {}) online", w.env.id, sys::getpid());
        Ok(w)
    }

    /// State other threads use (sending).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The pollable fd of the loop.
    pub fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.reactor.fd()
    }

    /// Ends the worker runtime, keeping only its (now silent) loop fd.
    pub fn into_poll_fd(self) -> OwnedFd {
        self.reactor.into_silent_fd()
    }

    /// True when events wait to be delivered.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the events produced so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// True when the runtime is done: the primary is gone, or SHUTDOWN was delivered and
    /// everything this worker queued has been written.
    pub fn finished(&self) -> bool {
        match self.phase {
            Phase::Running => false,
            Phase::Draining => self.outbox.queued() == 0 || self.outbox.is_closed(),
            Phase::Disconnected => true,
        }
    }

    /// Tells the primary this worker is ready for connections (once).
    pub fn ready(&mut self) -> Result<()> {
        if !self.ready_sent {
            self.ready_sent = true;
            self.push(Frame::control(Kind::Ready, Vec::new()));
        }
        Ok(())
    }

    /// Reports `n` finished connections to the primary (for LEAST_CONNECTIONS).
    pub fn conn_done_frame(n: u32) -> Frame {
        Frame::control(Kind::ConnDone, n.to_le_bytes().to_vec())
    }

    /// Leaves on purpose: tells the primary (so this is not a crash and no connections come
    /// any more), then drains like on SHUTDOWN.
    pub fn shutdown(&mut self) {
        if self.phase == Phase::Running {
            self.push(Frame::control(Kind::Bye, Vec::new()));
            self.begin_drain();
        }
    }

    fn begin_drain(&mut self) {
        if self.phase == Phase::Running {
            self.close_listeners();
            self.phase = Phase::Draining;
            self.events.push(Event::new(EventKind::Shutdown, 0));
        }
    }

    /// Pushes a control frame; a closed channel is noticed by the reader.
    fn push(&mut self, frame: Frame) {
        match self.outbox.push(frame) {
            Ok(crate::ipc::outbox::Pushed::Queued { arm: true }) => self.watch_writable(true),
            Ok(_) => {}
            Err(e) => log::debug!("worker {}: {e}", self.env.id),
        }
    }

    fn watch_writable(&self, on: bool) {
        if let Err(e) = self.reactor.modify(self.outbox.fd(), Source::Channel(0), true, on) {
            log::error!("worker {}: {e}", self.env.id);
        }
    }

    /// Handles what the loop reported.
    pub fn process(&mut self, ready: &[Ready]) {
        for r in ready {
            match r.source {
                Source::Waker => {
                    self.reactor.clear_wake();
                    while self.shared.to_arm.pop().is_some() {
                        self.watch_writable(true);
                    }
                    while self.shared.drained.pop().is_some() {
                        self.events.push(Event::new(EventKind::Drain, 0));
                    }
                    if !self.inbox.is_empty() {
                        self.on_readable();
                    }
                }
                Source::Signals => {
                    let sigs = self.signals.as_ref().map(|s| s.take()).unwrap_or_default();
                    if !sigs.is_empty() {
                        log::info!("worker {}: signal {}: stopping gracefully", self.env.id, sigs[0]);
                        self.shutdown();
                    }
                }
                Source::Channel(_) => {
                    if r.writable {
                        self.on_writable();
                    }
                    if r.readable {
                        self.on_readable();
                    }
                }
                Source::Timer => {
                    for t in self.reactor.expired(sys::monotonic_ms()) {
                        match t {
                            Timer::Heartbeat => self.heartbeat(),
                            Timer::RetryFlush => self.watch_writable(true),
                        }
                    }
                }
                Source::Listener(index) => self.accept_from(index),
                // Not the worker's: the side loop's (children, threads), which the runtime turns.
                Source::Child(_) | Source::Metrics(_) | Source::Side | Source::Stdio(_) => {}
            }
        }
        if !self.inbox.is_empty() && self.phase != Phase::Disconnected {
            // The turn's frame budget ran out inside a batch: the rest is in memory, where
            // epoll cannot see it. Come back for it on the next turn.
            self.shared.wake();
        }
    }

    /// After the callbacks of a turn ran (they may have opened fds or lowered the limit), and
    /// before the next read: tells the primary whether this worker is short of fds, i.e. within
    /// two full NEWCONN frames of its RLIMIT_NOFILE. While it is, the primary keeps a copy of
    /// each connection it hands over until the ACK, so a receive that runs out of fds loses
    /// nothing (the NACK sends it elsewhere). Only for workers the primary hands connections to.
    ///
    /// The fds of the last connections received bound the room cheaply (fds are allocated
    /// lowest first), but not the fds the callbacks opened: so the open fds are counted
    /// (/proc/self/fd) every `FD_COUNT_EVERY_MS`, and every turn while that bound is near or
    /// the worker is short. What this cannot see: callbacks that use up all but 128 of the
    /// free fds within one such interval, while connections are in flight to this worker.
    ///
    /// In every mode, it also tells the primary whether this worker refuses the fds passed
    /// with messages (fewer than `MESSAGE_FD_RESERVE` free; again once more than that plus
    /// 128 are): the primary then refuses to relay such messages here and tells their
    /// senders, so that fds passed and never closed (a callback that ignores MESSAGE events)
    /// cannot use up the fds connections need.
    pub fn check_fds(&mut self) {
        if self.phase == Phase::Disconnected {
            return;
        }
        let limit = sys::fd_limit();
        let margin = 2 * MAX_FDS as u64;
        let mut room = limit.saturating_sub(self.fd_high.max(0) as u64 + 1);
        let now = sys::monotonic_ms();
        let near = self.fd_pressure || self.refusing_fds || room <= MESSAGE_FD_RESERVE + 2 * margin;
        if near || now >= self.fds_counted_ms + FD_COUNT_EVERY_MS {
            self.fds_counted_ms = now;
            if let Some(open) = sys::open_fd_count() {
                room = limit.saturating_sub(open as u64);
            }
        }
        if matches!(self.env.accept, AcceptFrom::Primary) {
            if !self.fd_pressure && room <= margin {
                self.fd_pressure = true;
            } else if self.fd_pressure && room > 2 * margin {
                self.fd_pressure = false;
            }
        }
        if !self.refusing_fds && room <= MESSAGE_FD_RESERVE {
            self.set_refusing(true);
        } else if self.refusing_fds && room > MESSAGE_FD_RESERVE + margin {
            self.set_refusing(false);
        }
        self.report_fds();
    }

    /// Tells the primary how short of fds this worker is, when that changed since it last
    /// said (`PRESSURE_CONNECTIONS`, `PRESSURE_MESSAGES`).
    fn report_fds(&mut self) {
        let state = if self.fd_pressure { PRESSURE_CONNECTIONS } else { 0 }
            | if self.refusing_fds { PRESSURE_MESSAGES } else { 0 };
        if state != self.fds_reported {
            self.fds_reported = state;
            self.push(Frame::control(Kind::FdPressure, vec![state]));
        }
    }

    /// True when a message's fd that just arrived as number `newest` must be refused: this
    /// worker refuses passed fds (see `check_fds`), or the number shows that fewer than
    /// `MESSAGE_FD_RESERVE` are free (fds are allocated lowest first: every lower number is
    /// taken).
    fn refuses_message_fd(&mut self, newest: i32) -> bool {
        self.fd_high = newest;
        let room = sys::fd_limit().saturating_sub(newest.max(0) as u64 + 1);
        if room <= MESSAGE_FD_RESERVE {
            self.set_refusing(true);
        }
        self.refusing_fds
    }

    /// Starts or stops refusing passed fds; says so in the log (once per change).
    fn set_refusing(&mut self, on: bool) {
        if self.refusing_fds != on {
            self.refusing_fds = on;
            if on {
                log::warn!(
                    "worker {}: fewer than {MESSAGE_FD_RESERVE} fds free: refusing fds passed with messages (are \
                     MESSAGE fds closed?)",
                    self.env.id
                );
            } else {
                log::info!("worker {}: accepting fds passed with messages again", self.env.id);
            }
        }
    }

    /// Sends a heartbeat (the watchdog in the primary kills a worker whose loop stops) and
    /// schedules the next.
    fn heartbeat(&mut self) {
        if self.phase == Phase::Disconnected || self.env.heartbeat_ms == 0 {
            return;
        }
        self.push(Frame::control(Kind::Heartbeat, Vec::new()));
        self.reactor.add_timer(sys::monotonic_ms() + u64::from(self.env.heartbeat_ms), Timer::Heartbeat);
    }

    fn accept_from(&mut self, index: u32) {
        if self.phase != Phase::Running {
            return;
        }
        let Some((_, fd)) = self.listeners.iter().find(|(i, _)| *i == index) else { return };
        accept_into(&mut self.events, self.env.id, index, fd, ACCEPT_BATCH);
    }

    /// Whether listener `index`'s socket here is this worker's own SO_REUSEPORT socket, whose
    /// queue the kernel resets when it closes (a SHARED socket is the primary's: what waits
    /// there stays for the other workers).
    fn owns_queue(&self, index: u32) -> bool {
        matches!(self.env.accept, AcceptFrom::ReusePort(_)) || self.opened.get(&index).is_some_and(|o| o.reuseport)
    }

    /// Before closing an own REUSEPORT socket: takes what waits in its queue (at most
    /// `UNLISTEN_DRAIN_MAX`: under load it never empties), which this worker then serves.
    fn drain_own_queue(&mut self, index: u32, fd: &OwnedFd) {
        if self.owns_queue(index) {
            let taken = accept_into(&mut self.events, self.env.id, index, fd, UNLISTEN_DRAIN_MAX);
            if taken > 0 {
                log::debug!(
                    "worker {}: took {taken} connection(s) queued on listener {index} before closing it",
                    self.env.id
                );
            }
        }
    }

    /// Stops accepting by itself (SHARED/REUSEPORT): closes this worker's listening sockets,
    /// its own REUSEPORT ones once what waits in them is taken.
    fn close_listeners(&mut self) {
        for (index, fd) in std::mem::take(&mut self.listeners) {
            self.drain_own_queue(index, &fd);
            self.reactor.remove(&fd);
        }
    }

    fn on_writable(&mut self) {
        match self.outbox.flush() {
            Ok(f) if f.retry => {
                // Writability would fire at once, again and again: a timer instead.
                self.watch_writable(false);
                self.reactor.add_timer(sys::monotonic_ms() + 10, Timer::RetryFlush);
            }
            Ok(f) => {
                if f.empty {
                    self.watch_writable(false);
                }
                if f.drained {
                    self.events.push(Event::new(EventKind::Drain, 0));
                }
            }
            Err(_) => self.disconnected(),
        }
    }

    fn on_readable(&mut self) {
        self.read_frames();
        // One ACK for every connection of the pass, still before any callback runs: the
        // primary closes its copies at once, so a handler that closes its fd really closes
        // the connection. (One per NEWCONN frame cost a datagram, and often a wakeup of the
        // primary, per frame.)
        self.send_acks();
    }

    fn read_frames(&mut self) {
        for _ in 0..FRAMES_PER_TURN {
            if self.phase == Phase::Disconnected {
                return;
            }
            match self.reader.read(self.outbox.as_fd(), &mut self.inbox) {
                Ok(Read::Frame(f)) => self.on_frame(f),
                Ok(Read::WouldBlock) => return,
                Ok(Read::Closed) | Err(_) => return self.disconnected(),
                Ok(Read::Bad(e)) => {
                    log::error!("worker {}: malformed frame from the primary: {e}; disconnecting", self.env.id);
                    return self.disconnected();
                }
                Ok(Read::FdsLost(h, payload)) => self.on_fds_lost(h, &payload),
            }
        }
    }

    /// A frame whose fds did not fit in our fd table: connections are refused (the primary
    /// hands them to another worker), the rest is logged.
    fn on_fds_lost(&mut self, h: Header, payload: &[u8]) {
        if h.kind == Kind::NewConn {
            if let Ok(entries) = decode_conns(payload, h.nfds as usize) {
                log::error!(
                    "worker {}: {} connection fds lost in transit (out of fds?): refusing them",
                    self.env.id,
                    entries.len()
                );
                let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
                self.push(Frame::control(Kind::Nack, encode_ids(&ids)));
                self.fd_pressure = true;
                self.report_fds();
            }
        } else if h.kind == Kind::Listening && h.aux != 0 && h.aux == self.last_request {
            log::error!("worker {}: the listening socket of a listen answer was lost (out of fds?)", self.env.id);
        } else {
            log::error!("worker {}: fds of a {:?} frame lost in transit", self.env.id, h.kind);
        }
    }

    fn on_frame(&mut self, mut f: Incoming) {
        match f.header.kind {
            Kind::NewConn => {
                let entries = match decode_conns(&f.payload, f.fds.len()) {
                    Ok(e) => e,
                    Err(e) => {
                        log::error!("worker {}: bad NEWCONN from the primary: {e}", self.env.id);
                        return;
                    }
                };
                if self.phase != Phase::Running {
                    // Refused, with the fds given back: the primary may have let go of its
                    // copies, and gives these to another worker.
                    let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
                    self.push(Frame::control_with_fds(Kind::Nack, encode_ids(&ids), std::mem::take(&mut f.fds)));
                    return;
                }
                let (entries, fds) = self.refuse_unlistened(entries, std::mem::take(&mut f.fds));
                if let Some(high) = fds.iter().map(|fd| fd.as_raw_fd()).max() {
                    self.fd_high = high;
                }
                self.acks.extend(entries.iter().map(|e| e.id)); // acknowledged at the end of the pass
                for (entry, fd) in entries.into_iter().zip(fds) {
                    self.events.push(Event {
                        fd: Some(fd),
                        listener: entry.listener,
                        peer: entry.peer,
                        ..Event::new(EventKind::Connection, self.env.id)
                    });
                }
            }
            Kind::Message => {
                if let Some(newest) = f.fds.last().map(|fd| fd.as_raw_fd()) {
                    if self.refuses_message_fd(newest) {
                        // Dropped with its fd (closed at once, when `f` goes). The primary
                        // refuses such messages to us from the report below on, and tells
                        // their senders; for those already on their way, we say it.
                        self.report_fds();
                        let mut refused = Frame::control(Kind::Undeliverable, Vec::new());
                        refused.header.aux = u64::from(f.header.from);
                        self.push(refused);
                        return;
                    }
                }
                self.events.push(Event {
                    data: std::mem::take(&mut f.payload),
                    fd: f.fds.pop(),
                    ..Event::new(EventKind::Message, f.header.from)
                });
            }
            Kind::Shutdown => self.begin_drain(),
            // Told while stopping: nothing to listen on any more (the socket closes here).
            Kind::Listening if f.header.aux == 0 && self.phase != Phase::Running => {}
            Kind::Listening if f.header.aux == 0 => {
                // A listener the primary added by itself (which SHARED/REUSEPORT workers
                // accept on), or one workers listened on that became every worker's.
                match Answer::decode(&f.payload) {
                    Ok(answer) => {
                        if let Err(e) = self.adopt(answer, std::mem::take(&mut f.fds)) {
                            log::error!("worker {}: {e}", self.env.id);
                        }
                    }
                    Err(e) => log::error!("worker {}: bad listen notice from the primary: {e}", self.env.id),
                }
            }
            // The answer to a listen that gave up waiting: the primary counts this worker in
            // there, which the program never learnt (its listen failed): say it is not.
            Kind::Listening => {
                if let Ok(answer) = Answer::decode(&f.payload) {
                    if answer.result >= 0 && !self.opened.contains_key(&(answer.result as u32)) {
                        log::warn!(
                            "worker {}: a late answer to a listen that timed out ({}): unlistening it",
                            self.env.id,
                            answer.text
                        );
                        self.send_unlisten(answer.result as u32);
                    }
                }
            }
            Kind::Undeliverable => {
                let to = f.header.aux as u32;
                let sentence = if f.payload.is_empty() {
                    format!("message to worker {to} not delivered: no such worker")
                } else {
                    String::from_utf8_lossy(&f.payload).into_owned()
                };
                self.events.push(Event::error(to, sentence));
            }
            other => log::warn!("worker {}: unexpected {other:?} frame from the primary ignored", self.env.id),
        }
    }

    /// Connections from listeners this worker unlistened go back to the primary (with their
    /// fds: it may have let go of its copies), which hands them to a worker that listens there.
    fn refuse_unlistened(
        &mut self,
        entries: Vec<crate::ipc::frame::ConnEntry>,
        fds: Vec<OwnedFd>,
    ) -> (Vec<crate::ipc::frame::ConnEntry>, Vec<OwnedFd>) {
        if self.unlistened.is_empty() || !entries.iter().any(|e| self.unlistened.contains(&e.listener)) {
            return (entries, fds);
        }
        let (mut keep, mut keep_fds, mut ids, mut back) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (entry, fd) in entries.into_iter().zip(fds) {
            if self.unlistened.contains(&entry.listener) {
                ids.push(entry.id);
                back.push(fd);
            } else {
                keep.push(entry);
                keep_fds.push(fd);
            }
        }
        self.push(Frame::control_with_fds(Kind::Nack, encode_ids(&ids), back));
        (keep, keep_fds)
    }

    /// Asks the primary to listen on `key` for this worker, and waits for its answer: the
    /// listener index. Frames that arrive meanwhile are handled as usual (their events wait
    /// for the next dispatch); connections from the new listener come as CONNECTION events.
    pub fn listen(&mut self, key: ListenKey) -> Result<u32> {
        let result = self.ask_listen(key);
        if self.has_events() || !self.inbox.is_empty() {
            // What arrived while we waited is in memory, where epoll cannot see it: the host's
            // loop must come back for it even if the channel has nothing new.
            self.shared.wake();
        }
        result
    }

    /// `listen`'s request and wait.
    fn ask_listen(&mut self, key: ListenKey) -> Result<u32> {
        let what = key.to_string();
        if self.phase != Phase::Running {
            return fail(Code::State, format!("listen {what}: this worker is stopping"));
        }
        self.last_request += 1;
        let request = self.last_request;
        let mut frame = Frame::control(Kind::Listen, key.encode());
        frame.header.aux = request;
        self.push(frame);
        let deadline = sys::monotonic_ms() + LISTEN_TIMEOUT_MS;
        loop {
            if self.outbox.queued() > 0 {
                self.on_writable();
            }
            if self.phase == Phase::Disconnected {
                return fail(Code::Closed, format!("listen {what}: the channel to the primary is closed"));
            }
            match self.reader.read(self.outbox.as_fd(), &mut self.inbox) {
                Ok(Read::Frame(mut f)) if f.header.kind == Kind::Listening && f.header.aux == request => {
                    self.send_acks();
                    let answer = Answer::decode(&f.payload).map_err(|e| {
                        Error::new(Code::Sys, format!("listen {what}: bad answer from the primary: {e}"))
                    })?;
                    let index = answer.result;
                    return self.adopt(answer, std::mem::take(&mut f.fds)).inspect_err(|_| {
                        // The primary counts us in, but we cannot accept there: say we are not.
                        if index >= 0 {
                            self.send_unlisten(index as u32);
                        }
                    });
                }
                Ok(Read::Frame(f)) => self.on_frame(f),
                Ok(Read::FdsLost(h, payload)) => {
                    self.on_fds_lost(h, &payload);
                    if h.kind == Kind::Listening && h.aux == request {
                        // The primary counts us in: say we are not.
                        if let Ok(answer) = Answer::decode(&payload) {
                            if answer.result >= 0 {
                                self.send_unlisten(answer.result as u32);
                            }
                        }
                        return fail(
                            Code::Sys,
                            format!("listen {what}: the listening socket did not fit (out of fds)"),
                        );
                    }
                }
                Ok(Read::WouldBlock) => {
                    self.send_acks();
                    let now = sys::monotonic_ms();
                    if now >= deadline {
                        return fail(Code::Timeout, format!("listen {what}: no answer from the primary"));
                    }
                    let writable = self.outbox.queued() > 0;
                    sys::wait_fd(&*self.outbox, true, writable, (deadline - now).min(1000) as i32);
                }
                Ok(Read::Closed) | Err(_) => self.disconnected(),
                Ok(Read::Bad(e)) => {
                    log::error!("worker {}: malformed frame from the primary: {e}; disconnecting", self.env.id);
                    self.disconnected();
                }
            }
        }
    }

    /// Takes the primary's answer about a listener: its index, and for SHARED/REUSEPORT the
    /// socket to accept on (given, or bound here).
    fn adopt(&mut self, answer: Answer, mut fds: Vec<OwnedFd>) -> Result<u32> {
        if answer.result < 0 {
            return Err(Error::new(Code::from_raw(answer.result).unwrap_or(Code::Sys), answer.text));
        }
        let index = answer.result as u32;
        if self.phase != Phase::Running {
            return fail(Code::State, format!("listen {}: this worker is stopping", answer.text));
        }
        let reuseport = answer.flags & ANSWER_BIND_REUSEPORT != 0;
        if !self.listeners.iter().any(|(i, _)| *i == index) {
            if let Some(fd) = fds.pop() {
                self.reactor.add_exclusive(&fd, Source::Listener(index))?;
                self.listeners.push((index, fd));
            } else if reuseport {
                let addr: std::net::SocketAddr = answer.text.parse().map_err(|_| {
                    Error::new(Code::Sys, format!("listen: the primary answered with a bad address {:?}", answer.text))
                })?;
                let fd = listener::bind_reuseport(&addr, libc::SOMAXCONN)?;
                self.reactor.add(&fd, Source::Listener(index), true, false)?;
                self.listeners.push((index, fd));
            } else if matches!(self.env.accept, AcceptFrom::Shared(_)) {
                return fail(Code::Sys, format!("listen {}: the listening socket did not arrive", answer.text));
            }
        }
        self.unlistened.remove(&index);
        self.opened.insert(index, Opened { port: answer.port, all: answer.flags & ANSWER_ALL_WORKERS != 0, reuseport });
        Ok(index)
    }

    /// Stops listening on `index` (opened by `listen`): no more connections from there;
    /// those already on their way are given back to the primary, which hands them to the
    /// workers that still listen there.
    pub fn unlisten(&mut self, index: u32) -> Result<()> {
        match self.opened.get(&index) {
            None => {
                return fail(Code::Inval, format!("listener {index} was not opened by this worker (cluster_listen_*)"))
            }
            Some(o) if o.all => {
                return fail(
                    Code::Inval,
                    format!(
                    "listener {index} is every worker's (the config's or the primary's): one worker cannot unlisten it"
                ),
                )
            }
            Some(_) => {}
        }
        if let Some(pos) = self.listeners.iter().position(|(i, _)| *i == index) {
            let (_, fd) = self.listeners.remove(pos);
            if self.phase == Phase::Running {
                self.drain_own_queue(index, &fd);
            }
            self.reactor.remove(&fd);
        }
        self.opened.remove(&index);
        self.unlistened.insert(index);
        self.send_unlisten(index);
        Ok(())
    }

    /// Tells the primary this worker no longer listens on `index`.
    fn send_unlisten(&mut self, index: u32) {
        let mut frame = Frame::control(Kind::Unlisten, Vec::new());
        frame.header.aux = u64::from(index);
        self.push(frame);
    }

    /// The port of listener `index`: one this worker listens on, or a SHARED/REUSEPORT socket.
    pub fn local_port(&self, index: u32) -> Result<u16> {
        if let Some(o) = self.opened.get(&index) {
            return Ok(o.port);
        }
        match self.listeners.iter().find(|(i, _)| *i == index) {
            Some((_, fd)) => {
                listener::bound_port(fd).map_err(|e| Error::sys(format!("getsockname(listener {index})"), e))
            }
            None => fail(Code::Inval, format!("listener {index}: this worker does not listen on it")),
        }
    }

    /// Acknowledges the connections received since the last ACK.
    fn send_acks(&mut self) {
        if !self.acks.is_empty() && self.phase != Phase::Disconnected {
            let ids = std::mem::take(&mut self.acks);
            self.push(Frame::control(Kind::Ack, encode_ids(&ids)));
        }
    }

    fn disconnected(&mut self) {
        if self.phase != Phase::Disconnected {
            log::debug!("worker {}: channel to the primary closed", self.env.id);
            self.phase = Phase::Disconnected;
            self.outbox.close();
            self.reactor.remove(self.outbox.fd());
            self.events.push(Event::new(EventKind::Disconnect, 0));
        }
    }
}

/// Accepts up to `max` connections waiting on `fd` (listener `index` of worker `id`) as
/// CONNECTION events; returns how many.
fn accept_into(events: &mut Vec<Event>, id: u32, index: u32, fd: &OwnedFd, max: usize) -> usize {
    for taken in 0..max {
        match listener::accept(fd) {
            Ok(Some(a)) => events.push(Event {
                fd: Some(a.fd),
                listener: index,
                peer: a.peer,
                ..Event::new(EventKind::Connection, id)
            }),
            Ok(None) => return taken,
            Err(e) => {
                log::error!("worker {id}: accept on listener {index}: {e}");
                return taken;
            }
        }
    }
    max
}

/// The lowest fd number not in use now (where the next fd will go).
fn lowest_free_fd() -> i32 {
    match sys::dup_cloexec(std::io::stdin()).or_else(|_| sys::dup_cloexec(std::io::stderr())) {
        Ok(fd) => fd.as_raw_fd(),
        Err(_) => 0,
    }
}
