//! `cluster_config`: the primary's configuration builder.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

use super::boundary::{guard, non_null, str_arg};
use super::types::{
    cluster_channel, cluster_mode, cluster_policy, cluster_worker_main, mode_from, policy_from,
    CLUSTER_CHANNEL_NODE_ADVANCED, CLUSTER_CHANNEL_NODE_JSON, CLUSTER_CHANNEL_RCLUSTER,
};
use crate::config::Config;
use crate::error::{fail, Code, Error, Result};

/// The primary's configuration (opaque). Create with `cluster_config_new`, release with
/// `cluster_config_free`; `cluster_primary_start` copies what it needs, so free it after.
pub struct cluster_config {
    pub(crate) inner: Config,
}

/// A C worker main and its userdata.
struct CWorkerMain {
    f: unsafe extern "C" fn(*mut c_void) -> libc::c_int,
    userdata: *mut c_void,
}

// SAFETY: the worker main runs once, in the forked child, on the thread that forked; the
// pointer is only carried, never dereferenced by Rust.
unsafe impl Send for CWorkerMain {}
// SAFETY: as above: shared references never touch `userdata`.
unsafe impl Sync for CWorkerMain {}

impl CWorkerMain {
    fn call(&self) -> i32 {
        // SAFETY: a C function pointer the host gave us, called with its own userdata.
        unsafe { (self.f)(self.userdata) }
    }
}

fn cfg_mut<'a>(cfg: *mut cluster_config) -> Result<&'a mut Config> {
    non_null(cfg, "cfg")?;
    // SAFETY: non-NULL; the caller passes a pointer from cluster_config_new, not yet freed, and
    // does not use it from two threads at once (the documented contract of the builder).
    Ok(unsafe { &mut (*cfg).inner })
}

/// A new configuration with the defaults: one worker per CPU, FORK mode, round-robin, 64 MiB
/// messages, signals taken over, 30 s shutdown grace. NULL only when out of memory.
#[no_mangle]
pub extern "C" fn cluster_config_new() -> *mut cluster_config {
    super::boundary::guard_or(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(cluster_config { inner: Config::default() }))
    })
}

/// Releases a configuration. NULL is fine.
///
/// # Safety
/// `cfg` is NULL or from `cluster_config_new`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_free(cfg: *mut cluster_config) {
    super::boundary::guard_or((), || {
        if !cfg.is_null() {
            // SAFETY: non-NULL, from cluster_config_new (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(cfg) });
        }
    })
}

/// Workers to start (0 = one per CPU, the default).
#[no_mangle]
pub extern "C" fn cluster_config_set_workers(cfg: *mut cluster_config, n: u32) -> i32 {
    guard(|| {
        if n > 4096 {
            return fail(Code::Inval, format!("{n} workers is more than the 4096 allowed"));
        }
        cfg_mut(cfg)?.workers = n;
        Ok(0)
    })
}

/// CLUSTER_MODE_FORK (default) or CLUSTER_MODE_EXEC.
#[no_mangle]
pub extern "C" fn cluster_config_set_mode(cfg: *mut cluster_config, mode: cluster_mode) -> i32 {
    guard(|| {
        let mode = mode_from(mode)?;
        cfg_mut(cfg)?.mode = mode;
        Ok(0)
    })
}

/// The FORK-mode worker entry point; its return value is the worker's exit code.
#[no_mangle]
pub extern "C" fn cluster_config_set_worker_main(
    cfg: *mut cluster_config,
    main: cluster_worker_main,
    userdata: *mut c_void,
) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        let f = main.ok_or_else(|| Error::new(Code::Inval, "worker main is NULL"))?;
        let m = CWorkerMain { f, userdata };
        cfg.worker_main = Some(Arc::new(move || m.call()));
        Ok(0)
    })
}

/// The program EXEC-mode workers run and its NULL-terminated argv (argv may be NULL: then
/// `{path, NULL}`). Default: this program with this process's argv (read from
/// /proc/self/cmdline). Either way workers get every argument as it is, empty ones included.
///
/// # Safety
/// `path` is a NUL-terminated string; `argv` is NULL or a NULL-terminated array of them.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_set_exec(
    cfg: *mut cluster_config,
    path: *const c_char,
    argv: *const *const c_char,
) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(path, "path") }?;
        if path.is_empty() {
            return fail(Code::Inval, "exec path is empty");
        }
        let mut args = Vec::new();
        if !argv.is_null() {
            for i in 0..4096 {
                // SAFETY: argv is a NULL-terminated array; we stop at its NULL.
                let p = unsafe { *argv.add(i) };
                if p.is_null() {
                    break;
                }
                // SAFETY: each element is a NUL-terminated string.
                args.push(unsafe { CStr::from_ptr(p) }.to_owned());
            }
        }
        cfg.exec = Some((CString::new(path).expect("from a C string"), args));
        Ok(0)
    })
}

/// The balancing policy (CLUSTER_POLICY_*).
#[no_mangle]
pub extern "C" fn cluster_config_set_policy(cfg: *mut cluster_config, policy: cluster_policy) -> i32 {
    guard(|| {
        let policy = policy_from(policy)?;
        cfg_mut(cfg)?.policy = policy;
        Ok(0)
    })
}

/// Adds a TCP listener: an IPv4 or IPv6 literal or a host name (resolved now, once); port 0
/// picks a free port, shared by all workers (read it with `cluster_local_port`). Returns the
/// listener's index.
///
/// # Safety
/// `host` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_listen_tcp(cfg: *mut cluster_config, host: *const c_char, port: u16) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let host = unsafe { str_arg(host, "host") }?;
        cfg.listen_tcp(host, port).map(|i| i as i32)
    })
}

/// Serves the cluster's numbers from the primary at `addr` (`"127.0.0.1:9100"`,
/// `"[::1]:9100"`, a host name resolved now; port 0 picks one, see `cluster_metrics_port`):
/// `GET /metrics` answers Prometheus text (workers by state; per worker connections, in
/// flight, messages both ways, queued frames, uptime; per slot restarts and crash-loop
/// give-ups; connections waiting and dropped; accept pauses; send retries), and
/// `GET /healthz` answers 200 while at least `cluster_config_set_healthy_workers` workers are
/// READY (default 1) and 503 otherwise, and from the moment a shutdown starts (a load
/// balancer's or a readiness probe's signal to take the host out before it stops). Served
/// from the primary's loop: at most 32 scrapes at a time, 5 s each, `Connection: close`.
///
/// # Safety
/// `addr` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_set_metrics(cfg: *mut cluster_config, addr: *const c_char) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let addr = unsafe { str_arg(addr, "addr") }?;
        cfg.set_metrics(addr).map(|()| 0)
    })
}

/// How many workers must be READY for `/healthz` to answer 200 (1..; default 1).
#[no_mangle]
pub extern "C" fn cluster_config_set_healthy_workers(cfg: *mut cluster_config, n: u32) -> i32 {
    guard(|| {
        if n == 0 {
            return fail(Code::Inval, "healthy workers must be at least 1");
        }
        cfg_mut(cfg)?.healthy_workers = n;
        Ok(0)
    })
}

/// Adds a Unix stream socket listener at `path`. Returns the listener's index. A socket file
/// left by a dead server is replaced; one a live server listens on is an error. The file is
/// removed when the cluster stops.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_listen_unix(cfg: *mut cluster_config, path: *const c_char) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(path, "path") }?;
        cfg.listen_unix(path).map(|i| i as i32)
    })
}

/// Sets the permissions (chmod bits, e.g. 0660) of Unix listener `listener`'s socket file.
#[no_mangle]
pub extern "C" fn cluster_config_set_unix_mode(cfg: *mut cluster_config, listener: u32, mode: u32) -> i32 {
    guard(|| cfg_mut(cfg)?.set_unix_mode(listener, mode).map(|()| 0))
}

/// Adds the listening sockets systemd passed to this process (socket activation: LISTEN_FDS,
/// honoured only when LISTEN_PID is this process; names from LISTEN_FDNAMES), in order, as
/// the next listener indexes. Returns how many (0 when not socket-activated). The passed
/// sockets serve one start: the primary that takes them closes them when it ends (or when its
/// start fails), and a later start with them, or a later call of this function, gets
/// CLUSTER_E_STATE rather than taking what the host has since opened under those numbers.
#[no_mangle]
pub extern "C" fn cluster_config_listen_systemd(cfg: *mut cluster_config) -> i32 {
    guard(|| crate::net::activation::listen_systemd(cfg_mut(cfg)?).map(|n| n as i32))
}

/// Largest message carried, in bytes (default 64 MiB, 1 byte to 1 GiB). Larger sends fail with
/// CLUSTER_E_TOOBIG. It bounds user payloads only: the library's own frames (hello, connection
/// handoffs, acknowledgements) have their own fixed bound, so any value here leaves the
/// cluster working.
#[no_mangle]
pub extern "C" fn cluster_config_set_max_message(cfg: *mut cluster_config, bytes: u64) -> i32 {
    guard(|| cfg_mut(cfg)?.set_max_message(bytes).map(|()| 0))
}

/// Whether the runtime takes over SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU and SIGQUIT in the
/// primary (and SIGTERM/SIGINT in workers). On by default; hosts with their own signal
/// handling (the Python and Node bindings) turn it off and call `cluster_shutdown`.
#[no_mangle]
pub extern "C" fn cluster_config_set_signals(cfg: *mut cluster_config, on: bool) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.signals = on;
        Ok(0)
    })
}

/// Grace period of a signal-initiated graceful shutdown, in ms (default 30000).
#[no_mangle]
pub extern "C" fn cluster_config_set_grace(cfg: *mut cluster_config, grace_ms: u32) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.grace_ms = grace_ms;
        Ok(0)
    })
}

/// Before a graceful shutdown (a signal, `cluster_shutdown` with a grace) starts, the primary
/// goes on serving for `ms` with `/healthz` (`cluster_config_set_metrics`) already answering
/// 503 "draining", so that load balancers take the host out while it still answers everything
/// they send; then the shutdown proceeds as usual. A second request to stop, or one with no
/// grace, does not wait. Default 0 (no delay): the role of Kubernetes' `preStop` sleep, for
/// load balancers that do not retry a refused connection elsewhere.
#[no_mangle]
pub extern "C" fn cluster_config_set_drain_delay(cfg: *mut cluster_config, ms: u32) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.drain_delay_ms = ms;
        Ok(0)
    })
}

/// Bounds of each send queue: at most `max_bytes` of payload and `max_messages` messages
/// queued (a single larger message is still taken when the queue is empty). Defaults: 8 MiB,
/// 4096.
#[no_mangle]
pub extern "C" fn cluster_config_set_send_queue(
    cfg: *mut cluster_config,
    max_bytes: usize,
    max_messages: usize,
) -> i32 {
    guard(|| {
        if max_bytes == 0 || max_messages == 0 {
            return fail(Code::Inval, "send queue bounds must be at least 1");
        }
        let cfg = cfg_mut(cfg)?;
        cfg.send_limits.max_bytes = max_bytes;
        cfg.send_limits.max_frames = max_messages;
        Ok(0)
    })
}

/// When on, a worker is READY only once it calls `cluster_ready()` (default: READY follows
/// `cluster_worker_start`).
#[no_mangle]
pub extern "C" fn cluster_config_set_manual_ready(cfg: *mut cluster_config, on: bool) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.manual_ready = on;
        Ok(0)
    })
}

/// Whether the primary's loop thread runs under SCHED_BATCH (no wakeup preemption, the same
/// fair share of CPU), which lets connections gather into larger handoff batches on a busy
/// machine. Default: on when the primary hands off connections (a balancing policy and a
/// listener), off otherwise. Only a thread under SCHED_OTHER is switched; its class comes back
/// when the runtime finishes, and workers start under it.
#[no_mangle]
pub extern "C" fn cluster_config_set_sched_batch(cfg: *mut cluster_config, on: bool) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.sched_batch = Some(on);
        Ok(0)
    })
}

/// Whether a worker that dies unasked is replaced (default on), in the same slot: at once if
/// it had served (see `cluster_config_set_min_uptime`), after a backoff if it died young (see
/// `cluster_config_set_backoff`).
#[no_mangle]
pub extern "C" fn cluster_config_set_restart(cfg: *mut cluster_config, on: bool) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        cfg.restart = if on { Some(cfg.restart.unwrap_or_default()) } else { None };
        Ok(0)
    })
}

/// Restart backoff, for workers that die young (see `cluster_config_set_min_uptime`): the
/// first delay `min_ms` doubles up to `max_ms`, and resets after a worker ran `reset_ms`, or
/// served past the minimum uptime (defaults 100, 15000, 30000).
#[no_mangle]
pub extern "C" fn cluster_config_set_backoff(cfg: *mut cluster_config, min_ms: u32, max_ms: u32, reset_ms: u32) -> i32 {
    guard(|| {
        if min_ms == 0 || max_ms < min_ms {
            return fail(Code::Inval, format!("backoff {min_ms}..{max_ms} ms: need 0 < min <= max"));
        }
        let cfg = cfg_mut(cfg)?;
        let mut p = cfg.restart.unwrap_or_default();
        p.min_ms = u64::from(min_ms);
        p.max_ms = u64::from(max_ms);
        p.reset_after_ms = u64::from(reset_ms);
        cfg.restart = Some(p);
        Ok(0)
    })
}

/// Crash-loop detection: `deaths` workers of one slot dying young within `window_ms` give that
/// slot up (CLUSTER_EVENT_SLOT_FAILED). Dying young is dying before READY, or after READY but
/// within the minimum uptime (`cluster_config_set_min_uptime`) by the worker's own exit or a
/// crash signal. A worker that lived past the minimum uptime clears the count. Defaults 5 in
/// 10000 ms.
#[no_mangle]
pub extern "C" fn cluster_config_set_crash_loop(cfg: *mut cluster_config, deaths: u32, window_ms: u32) -> i32 {
    guard(|| {
        if deaths == 0 {
            return fail(Code::Inval, "crash-loop deaths must be at least 1");
        }
        let cfg = cfg_mut(cfg)?;
        let mut p = cfg.restart.unwrap_or_default();
        p.loop_deaths = deaths as usize;
        p.loop_window_ms = u64::from(window_ms);
        cfg.restart = Some(p);
        Ok(0)
    })
}

/// A worker that was READY and lived at least `ms` (default 1000) is replaced at once when it
/// dies; one that dies sooner died young: it waits the doubling backoff
/// (`cluster_config_set_backoff`), and, unless a stopping signal (SIGKILL, SIGTERM, SIGINT,
/// SIGQUIT, SIGHUP) ended it, counts toward crash-loop detection (`cluster_config_set_crash_loop`).
#[no_mangle]
pub extern "C" fn cluster_config_set_min_uptime(cfg: *mut cluster_config, ms: u32) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        let mut p = cfg.restart.unwrap_or_default();
        p.min_uptime_ms = u64::from(ms);
        cfg.restart = Some(p);
        Ok(0)
    })
}

/// A worker not READY this long after it started is killed and counted as a failed start
/// (0: no limit; default 30000).
#[no_mangle]
pub extern "C" fn cluster_config_set_startup_timeout(cfg: *mut cluster_config, ms: u32) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.startup_timeout_ms = ms;
        Ok(0)
    })
}

/// Workers' loops send a heartbeat every `interval_ms`; a worker silent for `timeout_ms` is
/// stuck: SIGABRT, SIGKILL 2 s later, then replaced. 0 turns it off. Defaults 1000, 10000.
#[no_mangle]
pub extern "C" fn cluster_config_set_heartbeat(cfg: *mut cluster_config, interval_ms: u32, timeout_ms: u32) -> i32 {
    guard(|| {
        if interval_ms > 0 && timeout_ms <= interval_ms {
            return fail(
                Code::Inval,
                format!("heartbeat timeout {timeout_ms} ms must exceed the interval {interval_ms} ms"),
            );
        }
        let cfg = cfg_mut(cfg)?;
        cfg.heartbeat_ms = interval_ms;
        cfg.heartbeat_timeout_ms = timeout_ms;
        Ok(0)
    })
}

/// Recycles a worker after `n` connections plus a random 0..=`jitter` (0: never): its
/// replacement is started and READY before it drains. Any values are accepted (up to
/// UINT64_MAX for both); a sum past UINT64_MAX means UINT64_MAX.
#[no_mangle]
pub extern "C" fn cluster_config_set_max_requests(cfg: *mut cluster_config, n: u64, jitter: u64) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        cfg.max_requests = n;
        cfg.max_requests_jitter = jitter;
        Ok(0)
    })
}

/// Workers drop to this user and group after the primary has bound its sockets (and to no
/// supplementary groups unless `cluster_config_set_groups` names some).
#[no_mangle]
pub extern "C" fn cluster_config_set_user(cfg: *mut cluster_config, uid: u32, gid: u32) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        cfg.worker_process.uid = Some(uid);
        cfg.worker_process.gid = Some(gid);
        Ok(0)
    })
}

/// Workers' supplementary groups (`n` gids at `groups`).
///
/// # Safety
/// `groups` is valid for reads of `n` gids (NULL is fine when `n` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_config_set_groups(cfg: *mut cluster_config, groups: *const u32, n: usize) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        if n > 65_536 {
            return fail(Code::Inval, "too many groups");
        }
        let list = if n == 0 {
            Vec::new()
        } else {
            non_null(groups, "groups")?;
            // SAFETY: non-NULL and the caller promises `n` readable gids.
            unsafe { std::slice::from_raw_parts(groups, n) }.to_vec()
        };
        cfg.worker_process.groups = Some(list);
        Ok(0)
    })
}

/// Workers start in this directory.
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_set_cwd(cfg: *mut cluster_config, path: *const c_char) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(path, "path") }?;
        cfg.worker_process.cwd = Some(CString::new(path).expect("from a C string"));
        Ok(0)
    })
}

/// Adds `NAME=value` to the workers' environment.
///
/// # Safety
/// `name_value` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cluster_config_add_env(cfg: *mut cluster_config, name_value: *const c_char) -> i32 {
    guard(|| {
        let cfg = cfg_mut(cfg)?;
        // SAFETY: the caller's contract above.
        let kv = unsafe { str_arg(name_value, "name_value") }?;
        cfg.worker_process.env.push(crate::config::env_entry(kv)?);
        Ok(0)
    })
}

/// Which channel workers are spoken to on (`CLUSTER_CHANNEL_*`, default RCLUSTER). With
/// `CLUSTER_CHANNEL_NODE_*` (EXEC mode, a Node program) the workers run Node's own cluster
/// worker code, unchanged: the primary speaks Node's IPC protocol to them, answers their
/// `server.listen()` and hands them connections (docs/node-dropin.md). Their messages arrive
/// as MESSAGE events holding one message body as Node wrote it (JSON text or V8 bytes), and
/// `cluster_send` to them takes one body in the same form.
#[no_mangle]
pub extern "C" fn cluster_config_set_channel(cfg: *mut cluster_config, channel: cluster_channel) -> i32 {
    guard(|| {
        use crate::ipc::nodechan::Serialization;
        let mode = match channel {
            CLUSTER_CHANNEL_RCLUSTER => None,
            CLUSTER_CHANNEL_NODE_JSON => Some(Serialization::Json),
            CLUSTER_CHANNEL_NODE_ADVANCED => Some(Serialization::Advanced),
            other => return fail(Code::Inval, format!("unknown channel {other} (CLUSTER_CHANNEL_*)")),
        };
        cfg_mut(cfg)?.node_channel = mode;
        Ok(0)
    })
}

/// Workers' stdin, stdout and stderr go to /dev/null (default: inherited from the primary).
/// Also when the primary runs with its stdio closed: the library numbers its own fds from 3
/// on, so /dev/null never replaces one of them.
#[no_mangle]
pub extern "C" fn cluster_config_set_silent(cfg: *mut cluster_config, on: bool) -> i32 {
    guard(|| {
        cfg_mut(cfg)?.worker_process.silent = on;
        Ok(0)
    })
}
