//! The runtime calls of the C ABI: roles, start, the loop, messaging, worker control.

use std::ffi::{c_void, CStr};
use std::os::fd::IntoRawFd;

use super::boundary::{bytes_arg, guard, guard_or, last_error_ptr, non_null, str_arg};
use super::config::cluster_config;
use super::types::*;
use crate::error::{Code, Error};
use crate::event::{Event, Handler};
use crate::runtime;

/// A C event callback and its userdata.
struct CCallback {
    cb: unsafe extern "C" fn(*mut c_void, *const cluster_event),
    userdata: *mut c_void,
}

// SAFETY: the callback is only ever called on the loop thread (the one calling cluster_run or
// cluster_dispatch), as the C contract states; Rust only carries the pointer.
unsafe impl Send for CCallback {}

fn c_handler(cb: cluster_event_cb, userdata: *mut c_void) -> crate::Result<Handler> {
    let cb = cb.ok_or_else(|| Error::new(Code::Inval, "event callback is NULL"))?;
    let c = CCallback { cb, userdata };
    Ok(Box::new(move |ev: Event| c.call(ev)))
}

impl CCallback {
    fn call(&self, mut ev: Event) {
        let raw = raw_event(&mut ev);
        // SAFETY: the host's callback with its own userdata; `raw` and what it points to (in
        // `ev`) live until the call returns. The fd now belongs to the callee.
        unsafe { (self.cb)(self.userdata, &raw) };
    }
}

/// The C view of `ev`, pointing into it; its fd is moved out (it belongs to the callee now).
fn raw_event(ev: &mut Event) -> cluster_event {
    cluster_event {
        kind: ev.kind as cluster_event_kind,
        worker_id: ev.worker_id,
        pid: ev.pid,
        fd: ev.fd.take().map_or(-1, IntoRawFd::into_raw_fd),
        data: if ev.data.is_empty() { std::ptr::null() } else { ev.data.as_ptr() },
        len: ev.data.len(),
        exit_code: ev.exit_code,
        signal: ev.signal,
        exited_after_disconnect: ev.exited_after_disconnect,
        listener: ev.listener,
        peer: if ev.peer.is_empty() { std::ptr::null() } else { ev.peer.as_ptr().cast() },
        peer_len: ev.peer.len() as u32,
    }
}

/// A C batch callback and its userdata.
struct CBatchCallback {
    cb: unsafe extern "C" fn(*mut c_void, *const cluster_event, usize),
    userdata: *mut c_void,
}

// SAFETY: as for CCallback: called on the loop thread only.
unsafe impl Send for CBatchCallback {}

impl CBatchCallback {
    fn call(&self, mut events: Vec<Event>) {
        let raw: Vec<cluster_event> = events.iter_mut().map(raw_event).collect();
        // SAFETY: the host's callback with its own userdata; `raw` (n entries) and what they
        // point to (in `events`) live until the call returns. The fds now belong to the callee.
        unsafe { (self.cb)(self.userdata, raw.as_ptr(), raw.len()) };
    }
}

/// True in the primary (any process that is not a worker).
#[no_mangle]
pub extern "C" fn cluster_is_primary() -> bool {
    guard_or(true, runtime::is_primary)
}

/// True in a worker (set at load in EXEC mode, by the fork in FORK mode).
#[no_mangle]
pub extern "C" fn cluster_is_worker() -> bool {
    guard_or(false, runtime::is_worker)
}

/// This worker's id (ids start at 1 and are never reused); 0 in the primary.
#[no_mangle]
pub extern "C" fn cluster_worker_id() -> u32 {
    guard_or(0, runtime::worker_id)
}

/// Starts the primary: binds the listeners and starts the configured workers, then returns.
/// Events go to `cb` on the thread that calls `cluster_run`/`cluster_dispatch`. The config is
/// copied: free it afterwards. In FORK mode the workers' children run the worker main from
/// here and never return.
///
/// Threads: workers are started on the *loop thread* only, because a worker dies with the
/// thread that started it (PR_SET_PDEATHSIG follows the thread, not the process). The loop
/// thread is the one that calls this function, until a `cluster_dispatch`/`cluster_run` on
/// another thread makes that one the loop thread. Call it from a thread that lives as long as
/// the cluster (usually the one that will run the loop): the configured workers start here.
///
/// # Safety
/// `cfg` is NULL or from `cluster_config_new`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn cluster_primary_start(
    cfg: *mut cluster_config,
    cb: cluster_event_cb,
    userdata: *mut c_void,
) -> i32 {
    guard(|| {
        non_null(cfg, "cfg")?;
        // SAFETY: non-NULL, from cluster_config_new and not freed (the caller's contract).
        let config = unsafe { (*cfg).inner.clone() };
        runtime::primary_start(config, c_handler(cb, userdata)?).map(|()| 0)
    })
}

/// Starts one more worker; returns its id. In FORK mode the child runs the worker main and
/// exits: it never returns from this call.
///
/// On the loop thread (see `cluster_primary_start`) the worker starts before this returns,
/// and a failed start is this call's error. From any other thread (EXEC mode) the id is
/// allocated and returned at once and the loop thread starts the worker on its next turn (it
/// is woken): CLUSTER_EVENT_FORK follows, or CLUSTER_EVENT_ERROR if the start fails. In FORK
/// mode a call from another thread gets CLUSTER_E_THREADS, as any FORK-mode start with more
/// than one thread does.
#[no_mangle]
pub extern "C" fn cluster_fork() -> i32 {
    guard(|| runtime::fork().map(|id| id as i32))
}

/// `n` `NAME=value` strings at `env` (NULL when `n` is 0), checked, as a worker's extra
/// environment.
///
/// # Safety
/// `env` is NULL with `n` 0, or points to `n` NUL-terminated strings.
unsafe fn env_entries(env: *const *const libc::c_char, n: usize) -> crate::error::Result<Vec<std::ffi::CString>> {
    let mut vars = Vec::with_capacity(n.min(1024));
    if n > 0 {
        non_null(env, "env")?;
        for i in 0..n {
            // SAFETY: the caller's contract: `n` string pointers at `env`.
            let kv = unsafe { str_arg(*env.add(i), "env entry") }?;
            vars.push(crate::config::env_entry(kv)?);
        }
    }
    Ok(vars)
}

/// Starts one more worker with `n` extra `NAME=value` variables in its environment (Node's
/// `cluster.fork(env)`); a respawn or reload of its slot gets them again. Returns its id, as
/// `cluster_fork` does. A variable rcluster sets for workers (`RCLUSTER_WORKER_ID`...) is
/// CLUSTER_E_INVAL. `env` may be NULL when `n` is 0.
///
/// # Safety
/// `env` is NULL or points at `n` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_env(env: *const *const libc::c_char, n: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract: `n` string pointers at `env`.
        let vars = unsafe { env_entries(env, n) }?;
        runtime::fork_env(vars).map(|id| id as i32)
    })
}

/// Like `cluster_fork_env`, with this worker's own argv (`argc` strings, argv[0] included: the
/// program stays the configured one) and directory (`cwd`, NULL: the configured one). EXEC
/// mode only (CLUSTER_E_INVAL otherwise): Node's `cluster.fork()` after `setupPrimary()`
/// changed `exec`, `args`, `execArgv` or `cwd`. Only this start: a respawn of its slot runs the
/// configured argv.
///
/// # Safety
/// `argv` points at `argc` NUL-terminated strings; `env` is NULL or points at `n` of them;
/// `cwd` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_exec(
    argv: *const *const libc::c_char,
    argc: usize,
    env: *const *const libc::c_char,
    n: usize,
    cwd: *const libc::c_char,
) -> i32 {
    guard(|| {
        non_null(argv, "argv")?;
        let mut args = Vec::with_capacity(argc.min(4096));
        for i in 0..argc {
            // SAFETY: the caller's contract: `argc` string pointers at `argv`.
            let a = unsafe { str_arg(*argv.add(i), "argv entry") }?;
            args.push(
                std::ffi::CString::new(a)
                    .map_err(|_| crate::error::Error::new(crate::error::Code::Inval, "argv entry with a NUL"))?,
            );
        }
        // SAFETY: the caller's contract: `n` string pointers at `env`.
        let vars = unsafe { env_entries(env, n) }?;
        let dir = if cwd.is_null() {
            None
        } else {
            // SAFETY: the caller's contract: a NUL-terminated string.
            let d = unsafe { str_arg(cwd, "cwd") }?;
            Some(
                std::ffi::CString::new(d)
                    .map_err(|_| crate::error::Error::new(crate::error::Code::Inval, "cwd with a NUL"))?,
            )
        };
        runtime::fork_exec(vars, args, dir).map(|id| id as i32)
    })
}

/// Listens on a TCP address (an IPv4/IPv6 literal or a host name, resolved by the caller);
/// port 0 picks a free port. In a worker (after `cluster_worker_start`): asks the primary,
/// which binds the address the first time and shares that socket with every worker that asks
/// for the same address and port (port 0 included: they all get the same port), and returns
/// when it has answered. Connections from there then come as CONNECTION events with this
/// listener index, by the cluster's policy, and the primary raises CLUSTER_EVENT_LISTENING.
/// Events that arrive while the call waits are kept for the next dispatch. In a running
/// primary: a listener every worker gets connections from. Returns the listener index, or an
/// error whose `cluster_last_error()` names the address ("bind 127.0.0.1:80: Permission
/// denied").
///
/// # Safety
/// `host` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_listen_tcp(host: *const libc::c_char, port: u16) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract above.
        let host = unsafe { str_arg(host, "host") }?;
        runtime::listen_tcp(host, port).map(|i| i as i32)
    })
}

/// Listens on a Unix stream socket at `path`, as `cluster_listen_tcp` does. The primary
/// removes the socket file when it closes the listener.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_listen_unix(path: *const libc::c_char) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(path, "path") }?;
        runtime::listen_unix(path).map(|i| i as i32)
    })
}

/// Worker: stops listening on `listener` (one this worker opened with `cluster_listen_*`).
/// Connections already on their way to it from there go to the workers that still listen
/// there; the primary closes the listener once no worker listens on it (a worker that exits
/// stops listening too).
#[no_mangle]
pub extern "C" fn cluster_unlisten(listener: u32) -> i32 {
    guard(|| runtime::unlisten(listener).map(|()| 0))
}

/// The port listener `listener` is bound to (the real one when 0 was asked). In a worker: a
/// listener it listens on (`cluster_listen_*`) or accepts on itself (SHARED, REUSEPORT).
#[no_mangle]
pub extern "C" fn cluster_local_port(listener: u32) -> i32 {
    guard(|| runtime::local_port(listener).map(i32::from))
}

/// Primary: the port its metrics endpoint is bound to (`cluster_config_set_metrics`).
#[no_mangle]
pub extern "C" fn cluster_metrics_port() -> i32 {
    guard(|| runtime::metrics_port().map(i32::from))
}

/// Writes up to `cap` live worker ids (ascending) to `ids`; returns how many workers there are
/// (which may exceed `cap`). `ids` may be NULL when `cap` is 0.
///
/// # Safety
/// `ids` is NULL or has room for `cap` ids.
#[no_mangle]
pub unsafe extern "C" fn cluster_workers(ids: *mut u32, cap: usize) -> i32 {
    guard(|| {
        if cap > 0 {
            non_null(ids, "ids")?;
        }
        let all = runtime::workers()?;
        for (i, id) in all.iter().take(cap).enumerate() {
            // SAFETY: non-NULL and the caller promises room for `cap` ids.
            unsafe { *ids.add(i) = *id };
        }
        Ok(all.len() as i32)
    })
}

/// Fills `out` with a snapshot of worker `id`.
///
/// # Safety
/// `out` is NULL or points at a writable `struct cluster_worker_info`.
#[no_mangle]
pub unsafe extern "C" fn cluster_worker_info(id: u32, out: *mut cluster_worker_info) -> i32 {
    guard(|| {
        non_null(out, "out")?;
        let i = runtime::worker_info(id)?;
        let info = cluster_worker_info {
            id: i.id,
            pid: i.pid,
            state: i.state as cluster_worker_state,
            connections: i.connections,
            messages_in: i.messages_in,
            messages_out: i.messages_out,
            restarts: i.restarts,
            started_at_ms: i.started_at_ms,
        };
        // SAFETY: non-NULL, and the caller gives a writable cluster_worker_info.
        unsafe { out.write(info) };
        Ok(0)
    })
}

/// Sends `signal` to worker `id` (0 checks that it exists). Like Node's `worker.kill()`, its
/// EXIT then says `exited_after_disconnect`. The signal goes through the worker's pidfd (to
/// that process only, even if its pid was reused); a worker already reaped (its EXIT not yet
/// delivered, or reaped by someone else's waitpid) gets CLUSTER_E_NOWORKER, and no signal.
#[no_mangle]
pub extern "C" fn cluster_worker_kill(id: u32, signal: i32) -> i32 {
    guard(|| runtime::worker_kill(id, signal).map(|()| 0))
}

/// Stops worker `id` gracefully: it finishes the connections it was handed and exits.
#[no_mangle]
pub extern "C" fn cluster_worker_disconnect(id: u32) -> i32 {
    guard(|| runtime::worker_disconnect(id).map(|()| 0))
}

/// A silent Node worker's stdio (`cluster_config_set_silent` with `CLUSTER_CHANNEL_NODE_*`:
/// pipes, as node:cluster's `silent: true` gives, instead of /dev/null): writes the primary's
/// ends into `fds` (stdin to write, stdout and stderr to read), which the caller owns from
/// then on and must close. Once per worker; CLUSTER_E_INVAL for a worker without pipes or
/// whose pipes were taken, CLUSTER_E_NOWORKER for an unknown id.
///
/// # Safety
/// `fds` points at 3 writable `int32_t`.
#[no_mangle]
pub unsafe extern "C" fn cluster_worker_take_stdio(id: u32, fds: *mut i32) -> i32 {
    guard(|| {
        non_null(fds, "fds")?;
        let pipes = runtime::worker_take_stdio(id)?;
        for (i, fd) in pipes.into_iter().enumerate() {
            // SAFETY: the caller's contract: 3 writable int32_t at `fds`.
            unsafe { *fds.add(i) = std::os::fd::IntoRawFd::into_raw_fd(fd) };
        }
        Ok(0)
    })
}

/// Closes the primary's end of worker `id`'s channel, as Node's `subprocess.disconnect()` does:
/// the worker sees its channel close (a Node worker then exits by itself), and a
/// CLUSTER_EVENT_DISCONNECT follows. The worker is not signalled, and its exit is not counted
/// as a stop on purpose. CLUSTER_E_NOWORKER for an unknown id.
#[no_mangle]
pub extern "C" fn cluster_worker_close_channel(id: u32) -> i32 {
    guard(|| runtime::worker_close_channel(id).map(|()| 0))
}

/// Rolling restart of every worker, one slot at a time: the replacement starts, and the old
/// worker drains only once the replacement is READY, so the ready count never drops. A
/// replacement that fails aborts the reload and the old worker stays. CLUSTER_EVENT_RELOADED
/// reports the end. In EXEC mode the replacements run the program now on disk. Any thread:
/// the replacements start on the loop thread (see `cluster_primary_start`).
#[no_mangle]
pub extern "C" fn cluster_reload() -> i32 {
    guard(|| runtime::reload().map(|()| 0))
}

/// Writes the counters as JSON (per worker: id, pid, slot, state, connections, in_flight,
/// messages_in, messages_out, restarts, uptime_ms; and totals) into `buf`, NUL-terminated,
/// truncated to `cap`. Returns the JSON's full length, like snprintf: call again with a bigger
/// buffer when it is >= `cap`. `buf` may be NULL when `cap` is 0.
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn cluster_stats(buf: *mut libc::c_char, cap: usize) -> i32 {
    guard(|| {
        if cap > 0 {
            non_null(buf, "buf")?;
        }
        let json = runtime::stats()?;
        if cap > 0 {
            let n = json.len().min(cap - 1);
            // SAFETY: `buf` has room for `cap` bytes and n < cap.
            unsafe {
                std::ptr::copy_nonoverlapping(json.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        Ok(json.len().min(i32::MAX as usize) as i32)
    })
}

/// Sets the number of workers: starts new ones or stops the newest gracefully. Any thread: new
/// workers start on the loop thread (see `cluster_primary_start`), at once when this is it,
/// else on its next turn.
#[no_mangle]
pub extern "C" fn cluster_scale(n: u32) -> i32 {
    guard(|| runtime::scale(n).map(|()| 0))
}

/// Worker: starts the worker runtime (connects to the primary, reports ONLINE, and READY
/// unless the config asks for manual readiness). Events go to `cb` on the loop thread.
#[no_mangle]
pub extern "C" fn cluster_worker_start(cb: cluster_event_cb, userdata: *mut c_void) -> i32 {
    guard(|| runtime::worker_start(c_handler(cb, userdata)?).map(|()| 0))
}

/// Worker: reports that a connection it got has finished (closed). LEAST_CONNECTIONS uses it
/// to count what each worker holds; call it once per CONNECTION event when done with it.
/// Any thread.
#[no_mangle]
pub extern "C" fn cluster_conn_done() -> i32 {
    guard(|| runtime::conn_done().map(|()| 0))
}

/// Worker: reports READY (only needed with `cluster_config_set_manual_ready`).
#[no_mangle]
pub extern "C" fn cluster_ready() -> i32 {
    guard(|| runtime::ready().map(|()| 0))
}

/// Runs the loop until the cluster (primary) or this worker is done; 0 after a graceful end.
/// In the primary, SIGTERM/SIGINT end it gracefully (when signals are taken over).
#[no_mangle]
pub extern "C" fn cluster_run() -> i32 {
    guard(|| runtime::run().map(|()| 0))
}

/// One loop turn: waits up to `timeout_ms` (-1 forever, 0 not at all), handles what is ready
/// and calls the callback. Returns the number of events delivered, CLUSTER_E_CLOSED once the
/// runtime has finished. One thread at a time runs the loop: a call while another thread is
/// inside `cluster_dispatch`/`cluster_run` gets CLUSTER_E_STATE (nothing is lost; the events
/// go to the thread that is dispatching), and so does a call from inside an event callback.
/// The thread that dispatches becomes the loop thread (see `cluster_primary_start`).
#[no_mangle]
pub extern "C" fn cluster_dispatch(timeout_ms: i32) -> i32 {
    guard(|| runtime::dispatch(timeout_ms).map(|n| n.min(i32::MAX as usize) as i32))
}

/// A file descriptor that is readable when `cluster_dispatch` has work, for hosts with their
/// own loop. It stays valid (and silent) after the runtime finishes.
#[no_mangle]
pub extern "C" fn cluster_fd() -> i32 {
    guard(runtime::fd)
}

/// Sends a message. Primary: to worker `to`. Worker: to the primary (0) or to worker `to`,
/// relayed by the primary, which stamps the true sender. Any thread. CLUSTER_E_AGAIN when the
/// queue is full (a DRAIN event follows), CLUSTER_E_TOOBIG over the maximum.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_send(to: u32, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract above.
        let bytes = unsafe { bytes_arg(data, len) }?;
        runtime::send(to, bytes, None).map(|()| 0)
    })
}

/// Like `cluster_send`, and passes a duplicate of `fd` (the caller keeps its own). The
/// receiver owns what its MESSAGE event hands it and must close it. Passed fds are bounded:
/// at most 32 wait in one send queue (over that, CLUSTER_E_AGAIN, then DRAIN), and a receiver
/// (worker or primary) with fewer than 192 of its fds free refuses them, keeping the rest for
/// connections: the message is not delivered, its fd is closed, and the sender gets an ERROR
/// event (`worker_id`: the receiver, 0 for the primary) saying so.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_send_fd(to: u32, data: *const u8, len: usize, fd: i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract above.
        let bytes = unsafe { bytes_arg(data, len) }?;
        runtime::send(to, bytes, Some(fd)).map(|()| 0)
    })
}

/// From now on, every event of one `cluster_dispatch` turn goes to `cb` in one call, as an
/// array of `n` events (valid during the call only, each as `cluster_event_cb` would get it: a
/// CONNECTION or MESSAGE fd belongs to the callee), instead of one call of the start's callback
/// per event. For hosts where each call into them costs (a ctypes or JavaScript callback).
/// Primary or worker, once started; it lasts until the runtime ends.
///
/// # Safety
/// `cb` is NULL or a function that may be called with `userdata` on the loop thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_set_batch_handler(cb: cluster_batch_cb, userdata: *mut c_void) -> i32 {
    guard(|| {
        let cb = cb.ok_or_else(|| Error::new(Code::Inval, "batch callback is NULL"))?;
        let c = CBatchCallback { cb, userdata };
        runtime::set_batch_handler(Box::new(move |events| c.call(events))).map(|()| 0)
    })
}

/// Holds every message this process sends from now on (from any thread) and sends them in
/// batches: each time 8 are together they leave as one datagram (so the peer starts on them
/// while this process goes on), and `cluster_uncork()` sends the rest. A burst of small
/// messages then costs one system call per 8 on each side instead of one per message. Order
/// is kept. For hosts that deliver a batch of events themselves (the Node binding corks around
/// one), or for a loop that sends many messages at once. Never hold it across a wait.
#[no_mangle]
pub extern "C" fn cluster_cork() -> i32 {
    guard(|| runtime::cork().map(|()| 0))
}

/// Sends what `cluster_cork()` held, batched.
#[no_mangle]
pub extern "C" fn cluster_uncork() -> i32 {
    guard(|| runtime::uncork().map(|()| 0))
}

/// Batches what this process's event callbacks send (`on` nonzero) or not (0, the default).
/// On: messages sent from inside callbacks, on the thread that runs `cluster_dispatch`, leave
/// in batches: 8 at a time as soon as they are together, the rest when every callback of that
/// dispatch has returned (a burst of replies costs one system call per 8 instead of one each),
/// much as Node's `process.send` leaves when the JavaScript stack unwinds. Sends from other threads
/// are never held, and take held ones along. `cluster_uncork()` inside a callback sends what
/// it held so far. Off by default because a callback that sends and then blocks holds its
/// message until it returns. Callable any time, in the primary or a worker (each process
/// decides for itself); returns 0.
#[no_mangle]
pub extern "C" fn cluster_set_batching(on: i32) -> i32 {
    guard(|| {
        runtime::set_batching(on != 0);
        Ok(0)
    })
}

/// Primary: sends to every worker (returns how many). Worker: to every other worker through
/// the primary (returns 0).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_broadcast(data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract above.
        let bytes = unsafe { bytes_arg(data, len) }?;
        runtime::broadcast(bytes).map(|n| n as i32)
    })
}

/// Graceful stop. Primary: stop accepting, let workers finish what they were handed, kill
/// those left after `grace_ms` (0: now); `cluster_run` then returns 0. Worker: tell the
/// primary this worker leaves; the loop ends after the SHUTDOWN event. Several calls: the
/// shortest grace wins.
///
/// Async-signal-safe while the runtime runs (after `cluster_primary_start` or
/// `cluster_worker_start` returned, until `cluster_run` returns): it stores the request in an
/// atomic and writes to the loop's eventfd, nothing else, so a signal handler may call it
/// (on any thread, whatever rcluster was doing there). The stop begins on the loop's next turn,
/// or at the next rcluster call that uses the runtime if that comes first (so a worker that
/// exits right after this call, with no other call, is seen as dying, not leaving). Before
/// the start and after the end it
/// takes the runtime's lock (CLUSTER_E_STATE before a start, 0 after the end) and is not
/// async-signal-safe then. No other rcluster function is async-signal-safe.
#[no_mangle]
pub extern "C" fn cluster_shutdown(grace_ms: u32) -> i32 {
    guard(|| runtime::shutdown(grace_ms).map(|()| 0))
}

/// The library's version, "MAJOR.MINOR.PATCH" (compare with RCLUSTER_VERSION_STRING, the
/// version of the header a program was built with). Never NULL.
#[no_mangle]
pub extern "C" fn cluster_version() -> *const libc::c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// A fixed description of a result code ("invalid argument", ...). Never NULL.
#[no_mangle]
pub extern "C" fn cluster_strerror(code: i32) -> *const libc::c_char {
    let s: &'static CStr = match Code::from_raw(code) {
        _ if code >= 0 => c"success",
        Some(Code::Inval) => c"invalid argument",
        Some(Code::Role) => c"wrong role for this call (primary-only in a worker, or the reverse)",
        Some(Code::NoWorker) => c"no such worker",
        Some(Code::Again) => c"queue full, try again after the DRAIN event",
        Some(Code::TooBig) => c"message larger than the configured maximum",
        Some(Code::Closed) => c"channel or runtime closed",
        Some(Code::Threads) => c"FORK mode refused: the process has more than one thread",
        Some(Code::State) => c"call not valid in the runtime's current state",
        Some(Code::Sys) => c"system call failed",
        Some(Code::Panic) => c"internal panic caught at the C boundary",
        Some(Code::Timeout) => c"timed out",
        None => c"unknown error code",
    };
    s.as_ptr()
}

/// A sentence about the last failure on this thread, e.g. "bind 127.0.0.1:80: Permission
/// denied (os error 13)". Never NULL; valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn cluster_last_error() -> *const libc::c_char {
    last_error_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_matches_the_core_descriptions() {
        for raw in -11..=-1 {
            let code = Code::from_raw(raw).unwrap();
            // SAFETY: cluster_strerror returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(cluster_strerror(raw)) }.to_str().unwrap();
            assert_eq!(s, code.describe());
        }
    }
}
