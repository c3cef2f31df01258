//! The primary's view of each worker process.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::ipc::outbox::{Frame, Outbox};
use crate::ipc::reader::Inbox;

/// A worker's lifecycle state (the C ABI's `CLUSTER_WORKER_*` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    /// Started, its runtime not up yet.
    Starting = 0,
    /// Its runtime is up (`worker_start` was called).
    Online = 1,
    /// Ready for connections.
    Ready = 2,
    /// Asked to stop, finishing what it holds.
    Disconnecting = 3,
    /// Exited (only seen in a snapshot taken as it is reaped).
    Dead = 4,
}

/// A snapshot of one worker for `worker_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker id (>= 1, never reused).
    pub id: u32,
    /// Process id.
    pub pid: i32,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Connections handed to it and acknowledged.
    pub connections: u64,
    /// Messages received from it.
    pub messages_in: u64,
    /// Messages sent to it (by the primary or relayed).
    pub messages_out: u64,
    /// Restarts of its slot so far.
    pub restarts: u32,
    /// When it was started, ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// A relayed message waiting for room in its destinations' queues. While a worker has one, the
/// primary stops reading its channel: backpressure reaches the sender instead of the primary
/// buffering without bound.
pub struct Stalled {
    /// The message (cloned per destination).
    pub frame: Frame,
    /// Destinations still to deliver to.
    pub targets: Vec<u32>,
}

/// One live (not yet reaped) worker.
pub struct Slot {
    /// Worker id.
    pub id: u32,
    /// Its slot (0..workers): a replacement takes the slot of the worker it replaces, so
    /// STICKY clients keep their slot.
    pub slot: u32,
    /// Process id.
    pub pid: libc::pid_t,
    /// Lifecycle state.
    pub state: WorkerState,
    /// The send side of its channel (the same Arc is in `Shared::outboxes` for other threads).
    pub outbox: Arc<Outbox>,
    /// Its channel is still open (no EOF, not dropped).
    pub channel_open: bool,
    /// Becomes readable when it exits (None on kernels without pidfd_open: polled instead).
    pub pidfd: Option<OwnedFd>,
    /// Its exit status was collected (by us, or someone else's waitpid): its pid may belong
    /// to another process now, so it is never signalled again.
    pub reaped: bool,
    /// Connections acknowledged.
    pub connections: u64,
    /// Connections the worker reported finished (`cluster_conn_done`).
    pub done: u64,
    /// Connections handed and not yet acknowledged.
    pub unacked: u32,
    /// Messages received from it.
    pub messages_in: u64,
    /// Restarts of its slot.
    pub restarts: u32,
    /// Start time, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// It was asked to stop (or said it is leaving): its exit is not a crash.
    pub disconnect_requested: bool,
    /// A relay waiting for room.
    pub stalled: Option<Stalled>,
    /// Start time on the monotonic clock, ms.
    pub started_mono_ms: u64,
    /// It reported READY at some point.
    pub ever_ready: bool,
    /// When it reported READY, monotonic ms (0: not yet).
    pub ready_mono_ms: u64,
    /// Connections the balancing policy handed it, counted from where the others were when it
    /// became READY (ROUND_ROBIN keeps these even: see `balance::RoundRobin`).
    pub handed: u64,
    /// Last frame from it, monotonic ms (the watchdog's clock).
    pub last_heard_ms: u64,
    /// The watchdog already sent it SIGABRT.
    pub watchdog_fired: bool,
    /// Connections after which it is recycled (0: never).
    pub request_limit: u64,
    /// Frames of its last batch datagram not handled yet.
    pub inbox: Inbox,
    /// A duplicate of the worker's own end of the channel, read only once the worker is gone:
    /// what it never received (connections above all) is still queued there.
    pub recovery: Option<OwnedFd>,
    /// The worker reported it is short of fds: the primary keeps its copy of each connection
    /// until the ACK (a receive that runs out of fds loses the ones that did not fit), instead
    /// of closing it as soon as the connection is in the worker's socket.
    pub fd_pressure: bool,
    /// How often it changed `fd_pressure` (the first few changes are logged at info).
    pub pressure_reports: u32,
    /// The worker reported it refuses the fds passed with messages (it is within
    /// `MESSAGE_FD_RESERVE` of its fd limit): relays of messages with fds to it are refused.
    pub refuses_fds: bool,
    /// Sends to it fail for now (ETOOMANYREFS...): it takes no connections until a timer
    /// tries again (and flushes its queue).
    pub send_retry: bool,
    /// When that was last logged, monotonic ms.
    pub send_retry_logged_ms: u64,
    /// A Node worker on Node's own channel (`nodeworker`): its receive state.
    pub node: Option<Box<super::nodeworker::NodeSlot>>,
    /// A silent Node worker's stdio pipes, until the host takes them (`take_stdio`).
    pub stdio: Option<[OwnedFd; 3]>,
}

impl Slot {
    /// Sends `signal` to this worker's process: through its pidfd when there is one (exactly
    /// that process, even if its pid was reused), else by pid until it is reaped. ESRCH once it
    /// is gone: a pid is never signalled after the reap.
    pub fn signal(&self, signal: libc::c_int) -> nix::Result<()> {
        if self.reaped {
            return Err(nix::errno::Errno::ESRCH);
        }
        match &self.pidfd {
            Some(fd) => crate::sys::pidfd_send_signal(fd, signal),
            None => crate::sys::kill(self.pid, signal),
        }
    }

    /// A slot for a just-started worker.
    pub fn new(id: u32, slot: u32, pid: libc::pid_t, outbox: Arc<Outbox>, pidfd: Option<OwnedFd>) -> Slot {
        Slot {
            id,
            slot,
            pid,
            state: WorkerState::Starting,
            outbox,
            channel_open: true,
            pidfd,
            reaped: false,
            connections: 0,
            done: 0,
            unacked: 0,
            messages_in: 0,
            restarts: 0,
            started_at_ms: crate::sys::realtime_ms(),
            disconnect_requested: false,
            stalled: None,
            started_mono_ms: crate::sys::monotonic_ms(),
            ever_ready: false,
            ready_mono_ms: 0,
            handed: 0,
            last_heard_ms: crate::sys::monotonic_ms(),
            watchdog_fired: false,
            request_limit: 0,
            inbox: Inbox::default(),
            recovery: None,
            fd_pressure: false,
            refuses_fds: false,
            pressure_reports: 0,
            send_retry: false,
            send_retry_logged_ms: 0,
            node: None,
            stdio: None,
        }
    }

    /// Whether a connection handed to it may be closed in the primary as soon as it is in the
    /// worker's socket: while its queue can be recovered should it die, and it has fds to spare.
    pub fn eager_handoff(&self) -> bool {
        self.recovery.is_some() && !self.fd_pressure && !self.disconnect_requested
    }

    /// Batched frames wait in its inbox and may be read now (epoll will not report them: they
    /// are out of the socket already).
    pub fn inbox_ready(&self) -> bool {
        !self.inbox.is_empty() && self.channel_open && self.stalled.is_none()
    }

    /// Can take new connections right now (ready, channel open, not stopping).
    pub fn accepts_connections(&self) -> bool {
        self.state == WorkerState::Ready && self.channel_open && !self.disconnect_requested && !self.send_retry
    }

    /// Connections it holds now: handed (acknowledged or in flight) and not reported done.
    pub fn load(&self) -> u64 {
        (self.connections + u64::from(self.unacked)).saturating_sub(self.done)
    }

    /// A snapshot for `worker_info`.
    pub fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.id,
            pid: self.pid,
            state: self.state,
            connections: self.connections,
            messages_in: self.messages_in,
            messages_out: self.outbox.messages_sent(),
            restarts: self.restarts,
            started_at_ms: self.started_at_ms,
        }
    }
}
