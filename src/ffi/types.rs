//! Types and constants of the C ABI.

use std::ffi::c_void;

use crate::config::{Mode, Policy};
use crate::error::{fail, Code, Result};

/// Success.
pub const CLUSTER_OK: i32 = 0;
/// A bad argument: NULL, out of range, malformed.
pub const CLUSTER_E_INVAL: i32 = -1;
/// A primary-only call in a worker, or the reverse.
pub const CLUSTER_E_ROLE: i32 = -2;
/// No worker has that id.
pub const CLUSTER_E_NOWORKER: i32 = -3;
/// A bounded queue is full: try again after the DRAIN event.
pub const CLUSTER_E_AGAIN: i32 = -4;
/// The message is larger than the configured maximum.
pub const CLUSTER_E_TOOBIG: i32 = -5;
/// The channel or the runtime is closed.
pub const CLUSTER_E_CLOSED: i32 = -6;
/// FORK mode in a process with more than one thread.
pub const CLUSTER_E_THREADS: i32 = -7;
/// The call does not fit the runtime's state (not started, already started...).
pub const CLUSTER_E_STATE: i32 = -8;
/// A system call failed; `cluster_last_error()` names it.
pub const CLUSTER_E_SYS: i32 = -9;
/// A panic was caught at the C boundary (a bug in rcluster).
pub const CLUSTER_E_PANIC: i32 = -10;
/// A wait ran out of time.
pub const CLUSTER_E_TIMEOUT: i32 = -11;

/// How workers are started: `CLUSTER_MODE_*`.
pub type cluster_mode = u32;
/// fork(2); the child runs the worker main. Refused (CLUSTER_E_THREADS) in a multi-threaded process.
pub const CLUSTER_MODE_FORK: cluster_mode = 0;
/// fork+exec of the configured program (default: this one, same argv). Safe with threads.
pub const CLUSTER_MODE_EXEC: cluster_mode = 1;

/// How connections reach workers: `CLUSTER_POLICY_*`.
pub type cluster_policy = u32;
/// The primary accepts and hands connections out in turn (default).
pub const CLUSTER_POLICY_ROUND_ROBIN: cluster_policy = 0;
/// The primary accepts and picks the worker with the fewest open connections.
pub const CLUSTER_POLICY_LEAST_CONNECTIONS: cluster_policy = 1;
/// The primary accepts and keeps each client address on one worker slot.
pub const CLUSTER_POLICY_STICKY: cluster_policy = 2;
/// Workers accept on the primary's socket themselves.
pub const CLUSTER_POLICY_SHARED: cluster_policy = 3;
/// Each worker binds its own SO_REUSEPORT socket.
pub const CLUSTER_POLICY_REUSEPORT: cluster_policy = 4;

/// Which channel workers are spoken to on: `CLUSTER_CHANNEL_*`.
pub type cluster_channel = u32;
/// rcluster's own channel (SOCK_SEQPACKET): workers use the library (default).
pub const CLUSTER_CHANNEL_RCLUSTER: cluster_channel = 0;
/// Node's IPC channel with JSON lines: workers are Node programs running Node's own
/// `cluster` worker side (`NODE_CHANNEL_FD`, `NODE_UNIQUE_ID`), as `node:cluster` starts them.
pub const CLUSTER_CHANNEL_NODE_JSON: cluster_channel = 1;
/// Node's IPC channel with V8 serialization (`serialization: 'advanced'`).
pub const CLUSTER_CHANNEL_NODE_ADVANCED: cluster_channel = 2;

/// What an event is: `CLUSTER_EVENT_*`. More kinds may be appended; handle unknown ones by
/// ignoring them.
pub type cluster_event_kind = u32;
/// primary: a worker process was started.
pub const CLUSTER_EVENT_FORK: cluster_event_kind = 0;
/// primary: a worker's runtime is up.
pub const CLUSTER_EVENT_ONLINE: cluster_event_kind = 1;
/// primary: a worker is ready for connections.
pub const CLUSTER_EVENT_READY: cluster_event_kind = 2;
/// both: a message arrived (`data`, `len`, maybe `fd`); `worker_id` is the sender (0 = primary).
pub const CLUSTER_EVENT_MESSAGE: cluster_event_kind = 3;
/// both: a channel closed (primary: to `worker_id`; worker: to the primary).
pub const CLUSTER_EVENT_DISCONNECT: cluster_event_kind = 4;
/// primary: a worker process ended (`exit_code`, `signal`, `exited_after_disconnect`).
pub const CLUSTER_EVENT_EXIT: cluster_event_kind = 5;
/// worker: a connection to serve (`fd`, `listener`, `peer`).
pub const CLUSTER_EVENT_CONNECTION: cluster_event_kind = 6;
/// both: a graceful stop began. In a worker, the loop ends once this is handled.
pub const CLUSTER_EVENT_SHUTDOWN: cluster_event_kind = 7;
/// both: a send queue that refused a message with CLUSTER_E_AGAIN has emptied (`worker_id`: whose).
pub const CLUSTER_EVENT_DRAIN: cluster_event_kind = 8;
/// both: a failure no call returned (`data`/`len`: the sentence; `worker_id`: who).
pub const CLUSTER_EVENT_ERROR: cluster_event_kind = 9;

/// primary: a slot is given up after a crash loop (`worker_id`: its last worker; `data`: why).
pub const CLUSTER_EVENT_SLOT_FAILED: cluster_event_kind = 10;
/// primary: a rolling reload ended: `exit_code` 0 when every worker was replaced, -1 when it was
/// aborted (`data`: why; the old workers keep serving).
pub const CLUSTER_EVENT_RELOADED: cluster_event_kind = 11;
/// primary: a worker listens (`cluster_listen_tcp`/`_unix` in the worker): `listener` is the
/// index, `data`/`len` the bound address as text (`127.0.0.1:34567`, `[::1]:8080`,
/// `/run/app.sock`, not NUL-terminated). A replacement that listens again raises it again.
pub const CLUSTER_EVENT_LISTENING: cluster_event_kind = 12;
/// both: a chunk of a child process's stdout (`cluster_spawn` with a pipe): `worker_id` is the
/// child's id (child ids are their own series, not worker ids), `pid` its pid, `data`/`len`
/// the bytes (at most 64 KiB per event; valid during the callback only).
pub const CLUSTER_EVENT_CHILD_STDOUT: cluster_event_kind = 13;
/// both: a chunk of a child's stderr, as CLUSTER_EVENT_CHILD_STDOUT.
pub const CLUSTER_EVENT_CHILD_STDERR: cluster_event_kind = 14;
/// both: a child process ended, and its stdout and stderr pipes reached their end (every
/// CHILD_STDOUT/CHILD_STDERR came before; a grandchild keeping them open delays this).
/// `worker_id`: its id, `pid`, `exit_code` (-1 when killed by a signal), `signal` (0 when it
/// exited), `exited_after_disconnect`: this process signalled it (timeout, maxBuffer,
/// `cluster_child_kill`). For `cluster_exec`/`cluster_exec_file`: `data`/`len` hold its
/// stdout followed by its stderr, `listener` is the stdout's length (so stderr is
/// `data + listener`, `len - listener` bytes). The id is free after this event.
pub const CLUSTER_EVENT_CHILD_EXIT: cluster_event_kind = 15;
/// both: a child was killed (with its `kill_signal`) because its timeout ran out or an exec's
/// output went past `max_buffer`: `worker_id` is its id, `data`/`len` the sentence. Its
/// CHILD_EXIT follows.
pub const CLUSTER_EVENT_CHILD_ERROR: cluster_event_kind = 16;
/// both: a thread posted a message (`cluster_thread_post`): `worker_id` is the thread's id
/// (their own series), `data`/`len` the message (valid during the callback only). Messages
/// of one thread come in the order it posted them.
pub const CLUSTER_EVENT_THREAD_MESSAGE: cluster_event_kind = 17;
/// both: a thread's function returned: `worker_id` is its id, `exit_code` the value it
/// returned; after every message it posted. A thread whose function panicked (a Rust
/// function, through the Rust API) has `exit_code` -1 and the panic's sentence in
/// `data`/`len`. The id is free after this event.
pub const CLUSTER_EVENT_THREAD_EXIT: cluster_event_kind = 18;
/// both: the stdin queue of a child (`worker_id`: its id) that refused a `cluster_child_write`
/// with CLUSTER_E_AGAIN has been written out: write again.
pub const CLUSTER_EVENT_CHILD_STDIN_DRAIN: cluster_event_kind = 19;

/// What a child's stdin, stdout or stderr is: `CLUSTER_STDIO_*`.
pub type cluster_stdio_mode = u32;
/// A pipe to this process (the default, as Node's `'pipe'`): output comes as CHILD_STDOUT /
/// CHILD_STDERR events, stdin is written with `cluster_child_write`.
pub const CLUSTER_STDIO_PIPE: cluster_stdio_mode = 0;
/// This process's own stream (`'inherit'`).
pub const CLUSTER_STDIO_INHERIT: cluster_stdio_mode = 1;
/// /dev/null (`'ignore'`).
pub const CLUSTER_STDIO_IGNORE: cluster_stdio_mode = 2;
/// The descriptor in `fd` (duplicated at the start: the caller keeps and closes its own).
pub const CLUSTER_STDIO_FD: cluster_stdio_mode = 3;

/// How a child's environment is made: `CLUSTER_ENV_*`.
pub type cluster_env_mode = u32;
/// This process's environment with the `env` entries added, replacing variables of the same
/// names (the default). rcluster's own worker variables (`RCLUSTER_*`, `NODE_CHANNEL_FD`,
/// `LISTEN_FDS`...) are never passed on: a worker's child is not a worker.
pub const CLUSTER_ENV_INHERIT: cluster_env_mode = 0;
/// Exactly the `env` entries.
pub const CLUSTER_ENV_REPLACE: cluster_env_mode = 1;

/// One stream of a child.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cluster_stdio {
    /// `CLUSTER_STDIO_*`.
    pub mode: cluster_stdio_mode,
    /// CLUSTER_STDIO_FD: the descriptor.
    pub fd: i32,
}

/// How to start a child process (`cluster_spawn`). Zero it (`= {0}`) and set what you need:
/// every zero is Node's default (pipes, inherited environment, no timeout, SIGTERM). The
/// strings and arrays are read during the call only.
#[repr(C)]
pub struct cluster_spawn_options {
    /// The program: a path, or a name looked up on PATH (the child's PATH when `env` sets
    /// one) as execvp(3) does. With `shell`, the command line instead.
    pub file: *const libc::c_char,
    /// Its arguments after the program name, NULL-terminated (NULL: none). argv[0] is `file`.
    /// Passed as they are, never through a shell (no quoting needed, no injection) unless
    /// `shell` is set; then they are appended to the command line, separated by spaces, as
    /// Node does.
    pub args: *const *const libc::c_char,
    /// `NAME=value` entries, NULL-terminated (NULL: none); see `env_mode`.
    pub env: *const *const libc::c_char,
    /// `CLUSTER_ENV_*`.
    pub env_mode: cluster_env_mode,
    /// Run `file` as a command line with `/bin/sh -c` (Node's `shell: true`).
    pub shell: bool,
    /// The directory to start in (NULL: this process's).
    pub cwd: *const libc::c_char,
    /// setuid to `uid` (and drop the supplementary groups).
    pub set_uid: bool,
    /// The user id (with `set_uid`).
    pub uid: u32,
    /// setgid to `gid` (and drop the supplementary groups).
    pub set_gid: bool,
    /// The group id (with `set_gid`).
    pub gid: u32,
    /// stdin, stdout, stderr.
    pub stdio: [cluster_stdio; 3],
    /// Kill the child with `kill_signal` after this many milliseconds (0: never); a
    /// CHILD_ERROR event says so.
    pub timeout_ms: u32,
    /// The signal of the timeout and of `max_buffer` (0: SIGTERM).
    pub kill_signal: i32,
    /// Let the child outlive this process, in a session of its own (setsid). Otherwise it is
    /// killed (SIGKILL, PR_SET_PDEATHSIG) when this process dies, and when the runtime stops.
    pub detached: bool,
    /// Reserved for an IPC channel to a child that uses rcluster (Node's `fork`): not
    /// supported yet (CLUSTER_E_INVAL when set).
    pub ipc: bool,
    /// `cluster_exec`/`cluster_exec_file` only: the most bytes kept of each of stdout and
    /// stderr (0: 1 MiB, Node's default). Past it the child is killed with `kill_signal`, a
    /// CHILD_ERROR says so, and CHILD_EXIT carries the output up to the limit.
    pub max_buffer: usize,
}

/// A thread's function (`cluster_thread_start`): `data` as given (Node's `workerData`); its
/// return value comes in the THREAD_EXIT event.
pub type cluster_thread_fn = Option<unsafe extern "C" fn(data: *mut c_void) -> libc::c_int>;

/// A worker's state: `CLUSTER_WORKER_*`.
pub type cluster_worker_state = u32;
/// Started, its runtime not up yet.
pub const CLUSTER_WORKER_STARTING: cluster_worker_state = 0;
/// Its runtime is up.
pub const CLUSTER_WORKER_ONLINE: cluster_worker_state = 1;
/// Ready for connections.
pub const CLUSTER_WORKER_READY: cluster_worker_state = 2;
/// Asked to stop, finishing what it holds.
pub const CLUSTER_WORKER_DISCONNECTING: cluster_worker_state = 3;
/// Exited.
pub const CLUSTER_WORKER_DEAD: cluster_worker_state = 4;

/// One event. Pointers inside are valid only during the callback.
///
/// Its layout is frozen (64 bytes on 64-bit Linux, the fields below at their offsets):
/// `cluster_batch_cb` hands an array of these, and a program built against this header steps
/// through that array by its own `sizeof(cluster_event)`, so no field will ever be added.
/// Anything an event may need to carry later comes through new functions or event kinds.
#[repr(C)]
pub struct cluster_event {
    /// What happened (`CLUSTER_EVENT_*`).
    pub kind: cluster_event_kind,
    /// primary: the worker concerned; worker MESSAGE: the sender (0 = the primary).
    /// CHILD_*: the child's id; THREAD_*: the thread's id (each a series of its own).
    pub worker_id: u32,
    /// primary: the worker's pid. CHILD_*: the child's pid.
    pub pid: i32,
    /// CONNECTION: the connection, owned by the callee, blocking, FD_CLOEXEC, as accept(2)
    /// gives it. Blocking: a read waits for as long as the client sends nothing and a write
    /// for as long as it reads nothing, and meanwhile this worker's loop, and every
    /// connection queued behind, waits too (a loop kept longer than the heartbeat timeout gets
    /// the worker killed and replaced). Bound it: a deadline (poll, SO_RCVTIMEO/SO_SNDTIMEO),
    /// or O_NONBLOCK in a loop of your own. Ignore SIGPIPE (or send with MSG_NOSIGNAL): a
    /// write to a client that has left raises it, and it kills the worker.
    /// MESSAGE: a passed fd, owned by the callee, or -1.
    pub fd: i32,
    /// MESSAGE: the payload; ERROR: the sentence (not NUL-terminated). CHILD_STDOUT /
    /// CHILD_STDERR: the output; CHILD_EXIT of an exec: stdout then stderr; CHILD_ERROR: the
    /// sentence; THREAD_MESSAGE: the message; THREAD_EXIT: a panic's sentence, or nothing.
    pub data: *const u8,
    /// Bytes at `data`.
    pub len: usize,
    /// EXIT, CHILD_EXIT: the exit code, -1 when killed by a signal. THREAD_EXIT: the
    /// function's return value.
    pub exit_code: i32,
    /// EXIT, CHILD_EXIT: the signal that killed the process, 0 when it exited.
    pub signal: i32,
    /// EXIT: the worker was asked to stop (disconnect, kill, shutdown) rather than dying.
    /// CHILD_EXIT: this process signalled the child (timeout, max_buffer, cluster_child_kill).
    pub exited_after_disconnect: bool,
    /// CONNECTION: the index of the listener that accepted it. CHILD_EXIT of an exec: the
    /// length of its stdout at the start of `data` (its stderr follows).
    pub listener: u32,
    /// CONNECTION: the peer address.
    pub peer: *const libc::sockaddr,
    /// Bytes at `peer`.
    pub peer_len: u32,
}

// The frozen layout (see `cluster_event`): a change here breaks every program that takes its
// events in batches, and must not compile.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    if cfg!(target_pointer_width = "64") {
        assert!(size_of::<cluster_event>() == 64 && align_of::<cluster_event>() == 8);
        assert!(offset_of!(cluster_event, fd) == 12 && offset_of!(cluster_event, data) == 16);
        assert!(offset_of!(cluster_event, len) == 24 && offset_of!(cluster_event, exit_code) == 32);
        assert!(offset_of!(cluster_event, exited_after_disconnect) == 40);
        assert!(offset_of!(cluster_event, listener) == 44 && offset_of!(cluster_event, peer) == 48);
        assert!(offset_of!(cluster_event, peer_len) == 56);
    }
};

/// A snapshot of one worker.
#[repr(C)]
pub struct cluster_worker_info {
    /// Worker id (>= 1, never reused).
    pub id: u32,
    /// Process id.
    pub pid: i32,
    /// `CLUSTER_WORKER_*`.
    pub state: cluster_worker_state,
    /// Connections handed to it and acknowledged.
    pub connections: u64,
    /// Messages received from it.
    pub messages_in: u64,
    /// Messages sent to it (by the primary or relayed from other workers).
    pub messages_out: u64,
    /// Restarts of its slot.
    pub restarts: u32,
    /// When it started, in ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// The event callback: `userdata` as given, and the event (valid during the call only).
pub type cluster_event_cb = Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const cluster_event)>;

/// The batch callback (`cluster_set_batch_handler`): `userdata` as given, and the `n` events
/// of one loop turn (valid during the call only), back to back: `events[i]` is the i-th one
/// (the struct's size is frozen, see `cluster_event`).
pub type cluster_batch_cb = Option<unsafe extern "C" fn(userdata: *mut c_void, events: *const cluster_event, n: usize)>;

/// A FORK-mode worker's entry point; its return value is the worker's exit code.
pub type cluster_worker_main = Option<unsafe extern "C" fn(userdata: *mut c_void) -> libc::c_int>;

/// A log sink: level (1 error, 2 warn, 3 info, 4 debug, 5 trace), the module, the message.
pub type cluster_log_cb = Option<
    unsafe extern "C" fn(userdata: *mut c_void, level: i32, target: *const libc::c_char, message: *const libc::c_char),
>;

pub(crate) fn mode_from(raw: cluster_mode) -> Result<Mode> {
    match raw {
        CLUSTER_MODE_FORK => Ok(Mode::Fork),
        CLUSTER_MODE_EXEC => Ok(Mode::Exec),
        other => fail(Code::Inval, format!("mode {other} is not a CLUSTER_MODE_* value")),
    }
}

pub(crate) fn policy_from(raw: cluster_policy) -> Result<Policy> {
    match raw {
        CLUSTER_POLICY_ROUND_ROBIN => Ok(Policy::RoundRobin),
        CLUSTER_POLICY_LEAST_CONNECTIONS => Ok(Policy::LeastConnections),
        CLUSTER_POLICY_STICKY => Ok(Policy::Sticky),
        CLUSTER_POLICY_SHARED => Ok(Policy::Shared),
        CLUSTER_POLICY_REUSEPORT => Ok(Policy::ReusePort),
        other => fail(Code::Inval, format!("policy {other} is not a CLUSTER_POLICY_* value")),
    }
}
