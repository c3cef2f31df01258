//! What the runtime tells its host: one event type for both roles.

use std::os::fd::OwnedFd;

use crate::ipc::payload::Payload;

/// The kind of an event. The numbers are the C ABI's `CLUSTER_EVENT_*` values; more may be
/// appended, none renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EventKind {
    /// primary: a worker process was started.
    Fork = 0,
    /// primary: a worker's runtime is up (it called `worker_start`).
    Online = 1,
    /// primary: a worker is ready for connections.
    Ready = 2,
    /// both: a message (primary: from `worker_id`; worker: from `worker_id`, 0 = the primary).
    Message = 3,
    /// both: a channel closed (primary: to `worker_id`; worker: to the primary).
    Disconnect = 4,
    /// primary: a worker process ended (`exit_code`, `signal`, `exited_after_disconnect`).
    Exit = 5,
    /// worker: a connection to serve (`fd`, `listener`, `peer`).
    Connection = 6,
    /// both: a graceful stop began (worker: finish what you hold; the loop ends after this).
    Shutdown = 7,
    /// both: a send queue that refused a message with AGAIN has emptied (`worker_id`: whose).
    Drain = 8,
    /// both: something failed that no call returned (`data`: the sentence; `worker_id`: who).
    Error = 9,
    /// primary: a slot is given up after a crash loop (`worker_id`: its last worker; `data`: why).
    SlotFailed = 10,
    /// primary: a rolling reload ended: `exit_code` 0 when every worker was replaced, -1 when it
    /// was aborted (`data`: why; the old workers keep serving).
    Reloaded = 11,
    /// primary: a worker listens on an address (`cluster_listen_*` in the worker): `listener`
    /// is the index, `data` the bound address as text (`127.0.0.1:34567`, `[::1]:8080`,
    /// `/run/app.sock`). Node's `'listening'`.
    Listening = 12,
    /// both: output of a child process (`worker_id`: the child's id, `pid`, `data`: a chunk
    /// of its stdout).
    ChildStdout = 13,
    /// both: a chunk of a child's stderr (as `ChildStdout`).
    ChildStderr = 14,
    /// both: a child process ended and its output pipes are at their end (`worker_id`: its
    /// id, `exit_code`, `signal`, `exited_after_disconnect`: this process signalled it; an
    /// exec's: `data` its stdout then its stderr, `listener` the stdout's length).
    ChildExit = 15,
    /// both: a child was killed for its timeout or an exec's maxBuffer (`worker_id`: its id,
    /// `data`: why); its CHILD_EXIT follows.
    ChildError = 16,
    /// both: a thread posted a message (`worker_id`: the thread's id, `data`).
    ThreadMessage = 17,
    /// both: a thread's function returned (`worker_id`: its id, `exit_code`: the value), or
    /// panicked (`exit_code` -1, `data`: the sentence).
    ThreadExit = 18,
    /// both: a child's stdin queue, which refused a write (`Again`), has been written out
    /// (`worker_id`: the child's id).
    ChildStdinDrain = 19,
}

/// One event, owning what it carries until it is delivered.
#[derive(Debug)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The worker concerned (see [`EventKind`] for each kind).
    pub worker_id: u32,
    /// The worker's pid (primary events), or 0.
    pub pid: i32,
    /// CONNECTION: the connection; MESSAGE: a passed fd. Ownership goes to the handler.
    pub fd: Option<OwnedFd>,
    /// MESSAGE payload, or the ERROR sentence.
    pub data: Payload,
    /// EXIT: the exit code, -1 when killed by a signal.
    pub exit_code: i32,
    /// EXIT: the signal that killed the worker, 0 when it exited.
    pub signal: i32,
    /// EXIT: the worker was asked to stop (disconnect, shutdown) rather than dying.
    pub exited_after_disconnect: bool,
    /// CONNECTION: the listener index.
    pub listener: u32,
    /// CONNECTION: the peer's `sockaddr` bytes.
    pub peer: Vec<u8>,
}

impl Event {
    /// An event of `kind` about `worker_id` with nothing else set.
    pub fn new(kind: EventKind, worker_id: u32) -> Event {
        Event {
            kind,
            worker_id,
            pid: 0,
            fd: None,
            data: Payload::default(),
            exit_code: 0,
            signal: 0,
            exited_after_disconnect: false,
            listener: 0,
            peer: Vec::new(),
        }
    }

    /// An ERROR event carrying a sentence.
    pub fn error(worker_id: u32, sentence: impl Into<String>) -> Event {
        Event { data: sentence.into().into_bytes().into(), ..Event::new(EventKind::Error, worker_id) }
    }
}

/// The host's event handler. It runs on the loop thread (the one calling `run`/`dispatch`).
pub type Handler = Box<dyn FnMut(Event) + Send>;

/// A handler that takes every event of a loop turn at once (see `runtime::set_batch_handler`).
pub type BatchHandler = Box<dyn FnMut(Vec<Event>) + Send>;

/// How events reach the host: one call per event, or one per loop turn.
pub enum Delivery {
    /// One call per event.
    Each(Handler),
    /// One call per loop turn, with all its events.
    Batch(BatchHandler),
}
