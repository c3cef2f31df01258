//! The worker runtime: one channel to the primary, connections and messages in, ACKs and
//! messages out.

pub mod env;

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::event_loop::{Reactor, Ready, Source};
use crate::ipc::frame::{decode_conns, encode_ids, Kind};
use crate::ipc::outbox::{Frame, Outbox};
use crate::ipc::reader::{Inbox, Incoming, Read, Reader};
use crate::net::listener;
use crate::shared::Shared;
use crate::signals::{SignalPipe, WORKER_SIGNALS};
use crate::sys;

use env::{AcceptFrom, WorkerEnv};

const FRAMES_PER_TURN: usize = 64;

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
    signals: Option<SignalPipe>,
    events: Vec<Event>,
    phase: Phase,
    ready_sent: bool,
    /// SHARED/REUSEPORT: the sockets this worker accepts on, by listener index.
    listeners: Vec<(u32, OwnedFd)>,
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
                sys::set_cloexec(fd, true).map_err(|e| Error::sys("fcntl(shared listener)", e))?;
                reactor.add_exclusive(fd, Source::Listener(index))?;
                out.push((index, owned));
            }
        }
        AcceptFrom::ReusePort(list) => {
            for &(index, addr) in list {
                let fd = listener::bind_reuseport(&addr, libc::SOMAXCONN)?;
                reactor.add(std::os::fd::AsRawFd::as_raw_fd(&fd), Source::Listener(index), true, false)?;
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
        sys::set_nonblocking(env.channel, true).map_err(|e| Error::sys("fcntl(channel, O_NONBLOCK)", e))?;
        let reactor = Reactor::new()?;
        reactor.add(env.channel, Source::Channel(0), true, false)?;
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
            env,
            reactor,
            shared,
            outbox,
            signals,
            events: Vec::new(),
            phase: Phase::Running,
            ready_sent: false,
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
    pub fn poll_fd(&self) -> i32 {
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
                    for Timer::Heartbeat in self.reactor.expired(sys::monotonic_ms()) {
                        self.heartbeat();
                    }
                }
                Source::Listener(index) => self.accept_from(index),
                Source::Child(_) => {}
            }
        }
        if !self.inbox.is_empty() && self.phase != Phase::Disconnected {
            // The turn's frame budget ran out inside a batch: the rest is in memory, where
            // epoll cannot see it. Come back for it on the next turn.
            self.shared.wake();
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
        let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
        for _ in 0..ACCEPT_BATCH {
            match listener::accept(fd) {
                Ok(Some(a)) => self.events.push(Event {
                    fd: Some(a.fd),
                    listener: index,
                    peer: a.peer,
                    ..Event::new(EventKind::Connection, self.env.id)
                }),
                Ok(None) => break,
                Err(e) => {
                    log::error!("worker {}: accept on listener {index}: {e}", self.env.id);
                    break;
                }
            }
        }
    }

    /// Stops accepting by itself (SHARED/REUSEPORT): closes this worker's listening sockets.
    fn close_listeners(&mut self) {
        for (_, fd) in self.listeners.drain(..) {
            self.reactor.remove(std::os::fd::AsRawFd::as_raw_fd(&fd));
        }
    }

    fn on_writable(&mut self) {
        match self.outbox.flush() {
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
        if !self.acks.is_empty() && self.phase != Phase::Disconnected {
            // One ACK for every connection of the pass, still before any callback runs: the
            // primary closes its copies at once, so a handler that closes its fd really closes
            // the connection. (One per NEWCONN frame cost a datagram, and often a wakeup of the
            // primary, per frame.)
            let ids = std::mem::take(&mut self.acks);
            self.push(Frame::control(Kind::Ack, encode_ids(&ids)));
        }
    }

    fn read_frames(&mut self) {
        for _ in 0..FRAMES_PER_TURN {
            if self.phase == Phase::Disconnected {
                return;
            }
            match self.reader.read(self.env.channel, &mut self.inbox) {
                Ok(Read::Frame(f)) => self.on_frame(f),
                Ok(Read::WouldBlock) => return,
                Ok(Read::Closed) | Err(_) => return self.disconnected(),
                Ok(Read::Bad(e)) => {
                    log::error!("worker {}: malformed frame from the primary: {e}; disconnecting", self.env.id);
                    return self.disconnected();
                }
                Ok(Read::FdsLost(h, payload)) => {
                    if h.kind == Kind::NewConn {
                        if let Ok(entries) = decode_conns(&payload, h.nfds as usize) {
                            log::error!(
                                "worker {}: {} connection fds lost in transit (out of fds?): refusing them",
                                self.env.id,
                                entries.len()
                            );
                            let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
                            self.push(Frame::control(Kind::Nack, encode_ids(&ids)));
                        }
                    } else {
                        log::error!("worker {}: fds of a {:?} frame lost in transit", self.env.id, h.kind);
                    }
                }
            }
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
                    // Refused: the primary still holds these and gives them to another worker.
                    let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
                    self.push(Frame::control(Kind::Nack, encode_ids(&ids)));
                    return;
                }
                self.acks.extend(entries.iter().map(|e| e.id)); // acknowledged at the end of the pass
                for (entry, fd) in entries.into_iter().zip(f.fds) {
                    self.events.push(Event {
                        fd: Some(fd),
                        listener: entry.listener,
                        peer: entry.peer,
                        ..Event::new(EventKind::Connection, self.env.id)
                    });
                }
            }
            Kind::Message => {
                self.events.push(Event {
                    data: f.payload,
                    fd: f.fds.pop(),
                    ..Event::new(EventKind::Message, f.header.from)
                });
            }
            Kind::Shutdown => self.begin_drain(),
            Kind::Undeliverable => {
                let to = f.header.aux as u32;
                self.events.push(Event::error(to, format!("message to worker {to} not delivered: no such worker")));
            }
            other => log::warn!("worker {}: unexpected {other:?} frame from the primary ignored", self.env.id),
        }
    }

    fn disconnected(&mut self) {
        if self.phase != Phase::Disconnected {
            log::debug!("worker {}: channel to the primary closed", self.env.id);
            self.phase = Phase::Disconnected;
            self.outbox.close();
            self.reactor.remove(self.env.channel);
            self.events.push(Event::new(EventKind::Disconnect, 0));
        }
    }
}
