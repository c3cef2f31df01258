//! The primary: binds the listeners, starts and supervises workers, carries their messages,
//! and hands them connections.
//!
//! `Primary` is loop-thread state. Its turn (`process`) is split by concern: `supervise`
//! (signals, frames from workers, exits), `relay` (messages between workers, with
//! backpressure) and `accept` (accept and hand off connections).

mod accept;
pub mod balance;
pub mod fd_budget;
pub mod handoff;
pub mod harness;
mod lifecycle;
pub mod listeners;
pub mod loglimit;
mod metrics;
pub mod nodeworker;
mod relay;
pub mod restart;
pub mod sched;
pub mod spawn;
mod supervise;
pub mod workers;

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::config::{Config, Mode, Policy};
use crate::error::{fail, Code, Error, Result};
use crate::event::{Event, EventKind};
use crate::event_loop::{Reactor, Source, TimerId};
use crate::ipc::frame::Kind;
use crate::ipc::outbox::{Frame, Outbox};
use crate::ipc::reader::Reader;
use crate::net::listener;
use crate::shared::Shared;
use crate::signals::{SignalPipe, PRIMARY_SIGNALS};
use crate::sys;
use crate::worker::env::{AcceptFrom, WorkerEnv};

use balance::Balance;
use handoff::Handoff;
use listeners::Listeners;
use spawn::{ExecPlan, Spawned};
use workers::{Slot, WorkerInfo, WorkerState};

/// What a primary timer means when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The shutdown grace period is over: kill what is left.
    Grace,
    /// Poll our children with waitpid (kernels without pidfd).
    ReapPoll,
    /// Resume accepting after running out of fds.
    ResumeAccept,
    /// A listener whose workers exited waited long enough for their replacements to listen
    /// again (see `listeners::LISTEN_AGAIN_MS`).
    ListenAgain,
    /// Scrape `id` of the metrics endpoint ran out of time.
    Metrics(u32),
    /// The drain delay before a graceful shutdown is over.
    DrainDelay,
    /// Start a worker in this slot again (after its backoff).
    Respawn(u32),
    /// Worker `id` must be READY by now.
    Startup(u32),
    /// Check every worker's last heartbeat.
    Watchdog,
    /// Worker `id` ignored SIGABRT from the watchdog: SIGKILL it.
    KillStuck(u32),
    /// Feed systemd's watchdog.
    SdWatchdog,
    /// Worker `id` closed its channel unasked: it must have exited by now.
    ChannelClosed(u32),
    /// A send to worker `id` failed for good: it must have exited by now.
    ChannelFailed(u32),
    /// Flush worker `id`'s queue again after a send failed for now (see `outbox::transient`).
    RetryFlush(u32),
}

/// How often a queue whose sends fail for now (ETOOMANYREFS, ENOBUFS, ENOMEM) is tried again.
const SEND_RETRY_MS: u64 = 10;

/// How long a worker that closed its channel without saying goodbye (no BYE, no SHUTDOWN from
/// us), or whose channel failed, has to exit before it is killed: a crashing process exits at once; one that lives on
/// with its channel closed can no longer be managed, and holds its slot.
const CLOSED_CHANNEL_EXIT_MS: u64 = 2000;

/// Where the primary is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Shutting down: no accepting; SHUTDOWN goes to workers once nothing waits for a handoff.
    Draining {
        shutdown_sent: bool,
    },
    Finished,
}

/// The primary runtime.
pub struct Primary {
    cfg: Config,
    reactor: Reactor<Timer>,
    shared: Arc<Shared>,
    signals: Option<SignalPipe>,
    listeners: Listeners,
    /// The metrics endpoint (`cluster_config_set_metrics`).
    metrics: Option<metrics::MetricsServer>,
    /// CPUs this process may run on (workers inherit that): how many workers a turn's
    /// connections are spread over (see `accept::group_size`).
    cpus: usize,
    accept_paused: bool,
    /// Accepts that failed for want of fds (EMFILE and the like) and paused accepting.
    accept_pauses: u64,
    /// Flushes that sends failing for now (see `outbox::transient`) put off.
    send_retries: u64,
    /// What the primary's own fds leave room to accept.
    fd_budget: fd_budget::FdBudget,
    slots: BTreeMap<u32, Slot>,
    next_id: u32,
    spawn_queue: VecDeque<u32>,
    events: Vec<Event>,
    handoff: Handoff,
    /// The primary's balancing policy; None when workers accept by themselves.
    balance: Option<Box<dyn Balance>>,
    phase: Phase,
    grace_timer: Option<TimerId>,
    /// A graceful shutdown asked for and waiting out the drain delay: its grace.
    drain_pending: Option<u32>,
    reap_poll: bool,
    exec_plan: Option<ExecPlan>,
    reader: Reader,
    /// Restart history per slot.
    histories: BTreeMap<u32, restart::History>,
    /// Slots waiting for their backoff before a replacement starts.
    pending_respawns: std::collections::BTreeSet<u32>,
    /// Queued starts that go into a given slot (respawns, replacements) instead of a free one.
    slot_for: BTreeMap<u32, u32>,
    /// Extra environment of queued starts (`fork_env`), by worker id...
    spawn_env: BTreeMap<u32, Vec<std::ffi::CString>>,
    /// Queued starts with an argv and directory of their own (`cluster_fork_exec`).
    spawn_exec: BTreeMap<u32, spawn::ExecOverride>,
    /// ...and of the slots they went into: a respawn or a reload's replacement gets it again.
    slot_env: BTreeMap<u32, Vec<std::ffi::CString>>,
    /// The rolling reload (or max-requests recycle) in progress.
    reload: Option<lifecycle::Reload>,
    /// systemd's notification socket, when NOTIFY_SOCKET is set.
    notifier: Option<crate::net::notify::Notifier>,
    /// READY=1 was sent to systemd.
    ready_notified: bool,
    started_ms: u64,
    /// Budgets for the log lines a worker can cause at will (see `loglimit`).
    loglimit: loglimit::LogLimit,
    /// The watchdog's view of the primary's own loop (see `lifecycle`).
    watch: lifecycle::Watch,
    /// The primary's free fds, for refusing fds passed with messages (see `relay`).
    fd_room: relay::FdRoom,
    /// The listeners Node workers asked for, by Node's key (see `nodeworker`).
    node_listeners: nodeworker::NodeListeners,
    /// SCHED_BATCH on the loop thread while connections go through the primary (see sched);
    /// held for its drop, which switches back.
    _sched: Option<sched::Batch>,
}

impl Primary {
    /// Binds the listeners and queues the configured workers (started by the runtime, on the
    /// loop thread, right after).
    pub fn start(cfg: Config) -> Result<Primary> {
        if cfg.mode == Mode::Fork && cfg.worker_main.is_none() {
            return fail(Code::Inval, "FORK mode needs a worker main (cluster_config_set_worker_main)");
        }
        if cfg.mode == Mode::Fork {
            spawn::ensure_single_threaded()?;
        }
        if cfg.node_channel.is_some() && cfg.mode != Mode::Exec {
            return fail(Code::Inval, "Node's channel needs EXEC mode (the workers are Node programs)");
        }
        let mut cfg = cfg;
        if cfg.node_channel.is_some() {
            // Node's worker code sends no heartbeats: the watchdog would take it for stuck.
            cfg.heartbeat_timeout_ms = 0;
            // Node's round-robin: one connection at a time per worker, the next once it said
            // {accepted}. A deeper window gains nothing (Node takes one fd per ACK round trip
            // anyway) and hands a burst of new connections to one worker while the others idle.
            cfg.window = 1;
        }
        let balance = balance::for_policy(cfg.policy);
        let exec_plan = match cfg.mode {
            Mode::Exec => Some(ExecPlan::new(cfg.exec.as_ref())?),
            Mode::Fork => None,
        };
        let reactor = Reactor::new()?;
        let listeners = Listeners::new(
            cfg.listeners
                .iter()
                .map(|spec| listener::bind(spec, cfg.backlog, cfg.policy == Policy::ReusePort))
                .collect::<Result<Vec<_>>>()?,
        )?;
        let metrics = cfg.metrics.map(metrics::MetricsServer::bind).transpose()?;
        let signals = if cfg.signals { Some(SignalPipe::install(&PRIMARY_SIGNALS)?) } else { None };
        if let Some(s) = &signals {
            reactor.add(s.fd(), Source::Signals, true, false)?;
        }
        let shared = Arc::new(Shared::new(0, cfg.max_message, reactor.waker()));
        let mut p = Primary {
            reader: Reader::new(cfg.max_message),
            cfg,
            reactor,
            shared,
            signals,
            listeners,
            metrics,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            accept_paused: false,
            accept_pauses: 0,
            send_retries: 0,
            fd_budget: fd_budget::FdBudget::default(),
            slots: BTreeMap::new(),
            next_id: 0,
            spawn_queue: VecDeque::new(),
            events: Vec::new(),
            handoff: Handoff::default(),
            balance,
            phase: Phase::Running,
            grace_timer: None,
            drain_pending: None,
            reap_poll: false,
            exec_plan,
            histories: BTreeMap::new(),
            pending_respawns: std::collections::BTreeSet::new(),
            slot_for: BTreeMap::new(),
            spawn_env: BTreeMap::new(),
            spawn_exec: BTreeMap::new(),
            slot_env: BTreeMap::new(),
            reload: None,
            notifier: crate::net::notify::Notifier::from_env(|k| std::env::var(k).ok()),
            ready_notified: false,
            started_ms: sys::monotonic_ms(),
            loglimit: loglimit::LogLimit::default(),
            watch: lifecycle::Watch::default(),
            fd_room: relay::FdRoom::default(),
            node_listeners: nodeworker::NodeListeners::default(),
            _sched: None,
        };
        if p.cfg.sched_batch.unwrap_or(p.hands_off_connections()) {
            p._sched = sched::Batch::enter();
        }
        p.start_timers();
        p.metrics_poll();
        // Node's channel: workers start only when the host forks them (node:cluster's
        // `fork()`), each maybe with an environment of its own.
        let initial = if p.cfg.node_channel.is_some() { 0 } else { p.cfg.effective_workers() };
        for _ in 0..initial {
            p.request_spawn()?;
        }
        log::info!(
            "primary {} started: {} listener(s), {} worker(s)",
            sys::getpid(),
            p.listeners.len(),
            p.spawn_queue.len()
        );
        Ok(p)
    }

    /// True when the primary accepts and hands connections to workers (a balancing policy and
    /// at least one listener; workers that listen add them later, see `listeners`).
    fn hands_off_connections(&self) -> bool {
        self.balance.is_some() && !self.listeners.is_empty()
    }

    /// The port the metrics endpoint is bound to.
    pub fn metrics_port(&self) -> Result<u16> {
        self.metrics
            .as_ref()
            .map(|m| m.addr.port())
            .ok_or_else(|| Error::new(Code::State, "no metrics endpoint (cluster_config_set_metrics)"))
    }

    /// State other threads use (sending).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The pollable fd of the loop.
    pub fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.reactor.fd()
    }

    /// True when events are waiting to be delivered.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the events produced so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Ends the primary, keeping only its (now silent) loop fd.
    pub fn into_poll_fd(self) -> std::os::fd::OwnedFd {
        self.reactor.into_silent_fd()
    }

    /// True in FORK mode (workers are forks running the worker main).
    pub fn fork_mode(&self) -> bool {
        self.exec_plan.is_none()
    }

    /// True once a shutdown has completed: every worker is reaped.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Allocates an id for one more worker and queues its start; returns the id.
    pub fn request_spawn(&mut self) -> Result<u32> {
        if self.phase != Phase::Running {
            return fail(Code::State, "the cluster is shutting down: no new workers");
        }
        self.next_id = self.next_id.checked_add(1).ok_or_else(|| Error::new(Code::State, "worker ids exhausted"))?;
        self.spawn_queue.push_back(self.next_id);
        Ok(self.next_id)
    }

    /// Like `request_spawn`, with extra `NAME=value` variables in that worker's environment
    /// (Node's `cluster.fork(env)`); a respawn or reload of its slot gets them again.
    pub fn request_spawn_with_env(&mut self, vars: Vec<std::ffi::CString>) -> Result<u32> {
        let id = self.request_spawn()?;
        if !vars.is_empty() {
            self.spawn_env.insert(id, vars);
        }
        Ok(id)
    }

    /// Gives queued start `id` an argv and directory of its own (EXEC mode only).
    pub fn set_exec_override(&mut self, id: u32, exec: Option<spawn::ExecOverride>) -> Result<()> {
        let Some(exec) = exec else { return Ok(()) };
        if self.exec_plan.is_none() {
            return fail(Code::Inval, "a worker's own argv needs EXEC mode");
        }
        if exec.argv.is_empty() {
            return fail(Code::Inval, "a worker's argv needs at least argv[0]");
        }
        self.spawn_exec.insert(id, exec);
        Ok(())
    }

    /// Takes a queued worker start.
    pub fn next_spawn(&mut self) -> Option<u32> {
        self.spawn_queue.pop_front()
    }

    /// Drops a queued start (it is being reported as failed, or started at once).
    pub fn unqueue_spawn(&mut self, id: u32) {
        self.spawn_queue.retain(|&q| q != id);
    }

    /// Starts worker `id`. In FORK mode's child this returns the worker's settings; the caller
    /// must then tear the primary down and run the worker main (`take_worker_main`).
    pub fn spawn(&mut self, id: u32) -> Result<Option<WorkerEnv>> {
        let template = WorkerEnv {
            id,
            channel: -1,
            max_message: self.cfg.max_message,
            signals: self.cfg.signals,
            manual_ready: self.cfg.manual_ready,
            send_limits: self.cfg.send_limits,
            accept: self.accept_plan(),
            heartbeat_ms: self.cfg.heartbeat_ms,
        };
        let (slot, replacing) = match self.slot_for.remove(&id) {
            Some(slot) => (slot, true),
            None => (self.free_slot(), false),
        };
        // `fork_env`'s variables: this start's own, or, for a replacement, its slot's.
        let extra = self.spawn_env.remove(&id).or_else(|| self.slot_env.get(&slot).cloned().filter(|_| replacing));
        let process = match &extra {
            Some(vars) => {
                self.slot_env.insert(slot, vars.clone());
                std::borrow::Cow::Owned(self.cfg.worker_process.with_env(vars))
            }
            None => {
                self.slot_env.remove(&slot);
                std::borrow::Cow::Borrowed(&self.cfg.worker_process)
            }
        };
        let mut process = process;
        let own = self.spawn_exec.remove(&id);
        if let Some(cwd) = own.as_ref().and_then(|o| o.cwd.clone()) {
            process.to_mut().cwd = Some(cwd);
        }
        let own_plan = own.and_then(|o| self.exec_plan.as_ref().map(|plan| plan.with_argv(o.argv)));
        let spawned = match own_plan.as_ref().or(self.exec_plan.as_ref()) {
            Some(plan) => spawn::exec_worker(plan, template, &process, self.cfg.node_channel)?,
            None => spawn::fork_worker(template, &process)?,
        };
        match spawned {
            Spawned::Child(env) => Ok(Some(env)),
            Spawned::Parent { pid, channel, recovery, stdio } => {
                self.adopt(id, slot, pid, channel, Some(recovery));
                if let Some(s) = self.slots.get_mut(&id) {
                    s.stdio = stdio;
                }
                Ok(None)
            }
        }
    }

    /// Takes worker `id` (process `pid`, primary end of its `channel`, a duplicate of the
    /// worker's end as `recovery`) into `slot`: watches its channel and exit, and reports FORK.
    fn adopt(
        &mut self,
        id: u32,
        slot: u32,
        pid: libc::pid_t,
        channel: std::os::fd::OwnedFd,
        recovery: Option<std::os::fd::OwnedFd>,
    ) {
        let outbox = Arc::new(match self.cfg.node_channel {
            Some(mode) => Outbox::new_stream(channel, self.cfg.send_limits, mode),
            None => Outbox::new(channel, self.cfg.send_limits),
        });
        // Its exit is watched first, and whatever becomes of the channel: a worker whose
        // channel cannot be watched is killed below, and must still be reaped (a zombie left
        // in the slots would hold up the shutdown for ever). Without a watched pidfd, the reap
        // poll finds it.
        let pidfd = sys::pidfd_open(pid).filter(|p| match self.reactor.add(p, Source::Child(id), true, false) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("worker {id} (pid {pid}): {e}; polling for its exit instead");
                false
            }
        });
        let registered = self.reactor.add(outbox.fd(), Source::Channel(id), true, false);
        if pidfd.is_none() {
            self.start_reap_poll();
        }
        self.shared.insert(id, outbox.clone());
        let mut entry = Slot::new(id, slot, pid, outbox, pidfd);
        entry.restarts = self.histories.get(&slot).map_or(0, |h| h.restarts);
        entry.request_limit = self.request_limit();
        // Kept only where connections may go through the primary (a balancing policy: workers
        // may listen later): elsewhere it would only hide the worker's closing of its channel
        // (EOF) until it exits.
        entry.recovery = recovery.filter(|_| self.balance.is_some() && self.cfg.node_channel.is_none());
        // A Node worker: its end is never read back (the primary keeps each connection until
        // the worker's `{accepted}`), and holding it would hide the worker's closing (EOF).
        entry.node = self.cfg.node_channel.map(|mode| Box::new(nodeworker::NodeSlot::new(mode, self.cfg.max_message)));
        self.slots.insert(id, entry);
        self.worker_started(id);
        log::info!("worker {id} started, pid {pid}");
        let ev = self.event(EventKind::Fork, id);
        self.events.push(ev);
        if let Err(e) = registered {
            self.drop_worker(id, &format!("cannot watch its channel: {e}"));
        }
    }

    /// Where workers get connections: from the primary, from its listening sockets (SHARED),
    /// or from their own SO_REUSEPORT sockets on the bound addresses (REUSEPORT).
    fn accept_plan(&self) -> AcceptFrom {
        // Every worker's listeners; those of workers that listen come with their answers.
        let indexed = self.listeners.iter().filter(|(_, e)| e.members.is_none()).map(|(i, e)| (i, &e.listener));
        match self.cfg.policy {
            Policy::Shared => AcceptFrom::Shared(indexed.map(|(i, l)| (i, l.fd.as_raw_fd())).collect()),
            Policy::ReusePort => AcceptFrom::ReusePort(
                indexed
                    .filter_map(|(i, l)| match &l.spec {
                        crate::config::ListenSpec::Tcp { addr, .. } => {
                            // A copy of the address, so an IPv6 scope id stays.
                            let mut bound = *addr;
                            bound.set_port(l.port);
                            Some((i, bound))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            _ => AcceptFrom::Primary,
        }
    }

    /// The lowest slot no live worker holds and no queued or pending start goes into (a
    /// respawn waiting for its backoff, a reload's replacement): a new worker never takes the
    /// slot, and with it the `fork_env` variables and the STICKY clients, of one on its way.
    fn free_slot(&self) -> u32 {
        let mut used: Vec<u32> = self
            .slots
            .values()
            .map(|s| s.slot)
            .chain(self.pending_respawns.iter().copied())
            .chain(self.slot_for.values().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        used.iter().enumerate().find(|(i, s)| **s != *i as u32).map_or(used.len() as u32, |(i, _)| i as u32)
    }

    /// Worker slots for STICKY hashing: the configured count, or more after scaling up.
    fn slot_count(&self) -> u32 {
        let highest = self.slots.values().map(|s| s.slot + 1).max().unwrap_or(0);
        self.cfg.effective_workers().max(highest)
    }

    /// The FORK-mode worker main (taken in the child, which never returns to the primary).
    pub fn take_worker_main(&mut self) -> Option<crate::config::WorkerMain> {
        self.cfg.worker_main.take()
    }

    /// Reports a failed start as an ERROR event (starts queued by the primary itself), and
    /// counts it like a worker that died before READY.
    pub fn spawn_failed(&mut self, id: u32, err: &Error) {
        log::error!("worker {id} failed to start: {err}");
        self.events.push(Event::error(id, format!("worker {id} failed to start: {err}")));
        let slot = self.slot_for.remove(&id).unwrap_or_else(|| self.free_slot());
        self.start_failed(id, slot);
    }

    /// An event about worker `id`, with its pid.
    fn event(&self, kind: EventKind, id: u32) -> Event {
        Event { pid: self.slots.get(&id).map_or(0, |s| s.pid), ..Event::new(kind, id) }
    }

    fn start_reap_poll(&mut self) {
        if !self.reap_poll {
            self.reap_poll = true;
            self.reactor.add_timer(sys::monotonic_ms() + 100, Timer::ReapPoll);
        }
    }

    /// The bound port of listener `index`.
    pub fn local_port(&self, index: u32) -> Result<u16> {
        self.listeners.port(index)
    }

    /// Ids of the live workers, ascending.
    pub fn worker_ids(&self) -> Vec<u32> {
        self.slots.keys().copied().collect()
    }

    /// A snapshot of worker `id`.
    pub fn worker_info(&self, id: u32) -> Result<WorkerInfo> {
        self.slot(id).map(Slot::info)
    }

    fn slot(&self, id: u32) -> Result<&Slot> {
        self.slots.get(&id).ok_or_else(|| Error::new(Code::NoWorker, format!("no worker with id {id}")))
    }

    /// Sends `signal` to worker `id` (0 only checks it exists). Like Node's `worker.kill()`,
    /// a worker killed through this call counts as stopped on purpose.
    pub fn kill(&mut self, id: u32, signal: i32) -> Result<()> {
        if !(0..=64).contains(&signal) {
            return fail(Code::Inval, format!("signal {signal} is out of range"));
        }
        let slot =
            self.slots.get_mut(&id).ok_or_else(|| Error::new(Code::NoWorker, format!("no worker with id {id}")))?;
        slot.signal(signal).map_err(|e| match e {
            nix::errno::Errno::ESRCH => {
                Error::new(Code::NoWorker, format!("worker {id} (pid {}) has exited", slot.pid))
            }
            _ => Error::sys(format!("kill worker {id} (pid {}) with signal {signal}", slot.pid), e),
        })?;
        // Only a signal that was sent stops it on purpose.
        if signal != 0 {
            slot.disconnect_requested = true;
        }
        Ok(())
    }

    /// Asks worker `id` to stop gracefully: it gets SHUTDOWN after the connections already
    /// handed to it, takes no new ones, and exits when done.
    pub fn disconnect(&mut self, id: u32) -> Result<()> {
        let slot =
            self.slots.get_mut(&id).ok_or_else(|| Error::new(Code::NoWorker, format!("no worker with id {id}")))?;
        if slot.disconnect_requested && slot.state == WorkerState::Disconnecting {
            return Ok(());
        }
        slot.disconnect_requested = true;
        slot.state = WorkerState::Disconnecting;
        if slot.node.is_some() {
            self.node_disconnect(id);
            return Ok(());
        }
        slot.outbox.push(Frame::control(Kind::Shutdown, Vec::new())).map(drop).or_else(|e| match e.code {
            Code::Closed => Ok(()),
            _ => Err(e),
        })?;
        self.arm_if_queued(id);
        self.let_go_of_recovery(id);
        Ok(())
    }

    /// Takes a silent Node worker's stdio pipes (the primary's ends: stdin to write, stdout and
    /// stderr to read), once. `Inval` for a worker that has none (or whose pipes were taken).
    pub fn take_stdio(&mut self, id: u32) -> Result<[std::os::fd::OwnedFd; 3]> {
        let slot =
            self.slots.get_mut(&id).ok_or_else(|| Error::new(Code::NoWorker, format!("no worker with id {id}")))?;
        slot.stdio.take().ok_or_else(|| {
            Error::new(Code::Inval, format!("worker {id} has no stdio pipes (only silent Node workers do, once)"))
        })
    }

    /// Closes the primary's end of worker `id`'s channel (both directions shut down, so the
    /// worker reads EOF now); the loop then sees the channel end and reports DISCONNECT.
    pub fn close_channel(&mut self, id: u32) -> Result<()> {
        let slot = self.slot(id)?;
        if slot.channel_open {
            let _ = nix::sys::socket::shutdown(slot.outbox.fd().as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        Ok(())
    }

    /// Worker `id` is leaving: once nothing the primary holds no copy of is in flight to it,
    /// let go of its end of the channel, so that its closing shows as EOF even if it lingers
    /// (connections still sent to it keep the primary's copy until the ACK).
    fn let_go_of_recovery(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.disconnect_requested && slot.recovery.is_some() && !self.handoff.has_uncopied(id) {
            slot.recovery = None;
        }
    }

    /// Sets the number of workers: queues starts, or disconnects the newest workers.
    pub fn scale(&mut self, n: u32) -> Result<()> {
        if n > 4096 {
            return fail(Code::Inval, format!("{n} workers is more than the 4096 allowed"));
        }
        let active: Vec<u32> = self.slots.values().filter(|s| !s.disconnect_requested).map(|s| s.id).collect();
        let have = active.len() + self.spawn_queue.len() + self.pending_respawns.len();
        let want = n as usize;
        if want > have {
            for _ in have..want {
                self.request_spawn()?;
            }
        } else {
            let mut surplus = have - want;
            while surplus > 0 && self.pending_respawns.pop_last().is_some() {
                surplus -= 1;
            }
            while surplus > 0 && self.spawn_queue.pop_back().is_some() {
                surplus -= 1;
            }
            for id in active.iter().rev().take(surplus) {
                self.disconnect(*id)?;
            }
        }
        log::info!("scaling to {n} worker(s)");
        Ok(())
    }

    /// Stops the cluster: no more accepting, workers finish what they were handed and exit,
    /// and those still alive after `grace_ms` are killed (0: kill now).
    pub fn shutdown(&mut self, grace_ms: u32) {
        self.begin_shutdown(grace_ms);
        self.after_turn();
    }

    /// Makes the loop watch worker `id`'s channel for writability if frames are queued.
    fn arm_if_queued(&mut self, id: u32) {
        if let Some(slot) = self.slots.get(&id) {
            if slot.channel_open && slot.outbox.queued() > 0 {
                let readable = slot.stalled.is_none();
                if let Err(e) = self.reactor.modify(slot.outbox.fd(), Source::Channel(id), readable, true) {
                    log::error!("worker {id}: {e}");
                }
            }
        }
    }
}
