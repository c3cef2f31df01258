//! The primary's configuration, built before `primary::start`.
//!
//! Plain data at the bottom of the layers (tests/layers.rs): it imports only `error`, and owns
//! the types both the supervisor and the layers under it need (restart policy, listen spec,
//! send queue bounds, the names of the worker environment), which `primary`, `ipc` and
//! `worker` re-export under their old paths.

use std::ffi::CString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::{fail, Code, Error, Result};

/// How workers are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// fork(2); the child runs the configured worker main. Single-threaded primaries only.
    Fork,
    /// fork+exec of a program (default: this one, same argv); safe in multi-threaded hosts.
    Exec,
}

/// How connections reach workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The primary accepts and hands connections out in turn.
    RoundRobin,
    /// The primary accepts and picks the worker with the fewest open connections.
    LeastConnections,
    /// The primary accepts and keeps each client address on one worker slot.
    Sticky,
    /// Workers accept on the primary's socket themselves.
    Shared,
    /// Each worker binds its own SO_REUSEPORT socket.
    ReusePort,
}

/// Something to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenSpec {
    /// A TCP address, resolved when it was added (`host` as given, for messages).
    Tcp {
        /// The host as the user wrote it.
        host: String,
        /// The resolved address.
        addr: SocketAddr,
    },
    /// A Unix stream socket path; `mode` sets its permissions after bind.
    Unix {
        /// The socket file.
        path: PathBuf,
        /// chmod(2) bits for the socket file (None: as the umask gives).
        mode: Option<u32>,
    },
    /// A listening socket inherited through systemd socket activation (LISTEN_FDS).
    Inherited {
        /// The descriptor (3, 4, ...).
        fd: i32,
        /// Its LISTEN_FDNAMES name ("unknown" when none was given).
        name: String,
    },
}

impl ListenSpec {
    /// A TCP listener on `host:port` (an IP literal, or a name resolved now).
    pub fn tcp(host: &str, port: u16) -> Result<ListenSpec> {
        let addr = resolve(host, port)?;
        Ok(ListenSpec::Tcp { host: host.to_string(), addr })
    }

    /// A Unix stream socket listener at `path` (1..=107 bytes).
    pub fn unix(path: &str) -> Result<ListenSpec> {
        if path.is_empty() || path.len() >= 108 || path.contains('\0') {
            return fail(Code::Inval, format!("unix socket path {path:?} must be 1..=107 bytes"));
        }
        Ok(ListenSpec::Unix { path: PathBuf::from(path), mode: None })
    }
}

/// The restart policy (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay, ms (default 100).
    pub min_ms: u64,
    /// Largest delay, ms (default 15 000).
    pub max_ms: u64,
    /// An uptime this long resets the delay to `min_ms` (default 30 000).
    pub reset_after_ms: u64,
    /// A worker that was READY and lived this long is replaced at once, and resets the delay
    /// (default 1000); one that dies sooner died young.
    pub min_uptime_ms: u64,
    /// Young deaths (see the module doc) that make a crash loop (default 5)...
    pub loop_deaths: usize,
    /// ...within this window, ms (default 10 000).
    pub loop_window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            min_ms: 100,
            max_ms: 15_000,
            reset_after_ms: 30_000,
            min_uptime_ms: 1000,
            loop_deaths: 5,
            loop_window_ms: 10_000,
        }
    }
}

/// Bounds of one outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most user-payload bytes queued (a single message larger than this is still taken
    /// when the queue is empty, up to the maximum message size).
    pub max_bytes: usize,
    /// Most user messages queued.
    pub max_frames: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_bytes: 8 << 20, max_frames: 4096 }
    }
}

/// The names of the environment variables rcluster sets for a worker (the worker reads them in
/// EXEC mode; `worker::env` re-exports them).
pub mod worker_env {
    /// Environment variable names of EXEC mode.
    pub const ENV_ID: &str = "RCLUSTER_WORKER_ID";
    /// The channel's fd number in the worker.
    pub const ENV_FD: &str = "RCLUSTER_CHANNEL_FD";
    /// The primary's pid: a process whose parent is not this pid is not a worker, even if it
    /// inherited the other variables (a worker's own subprocess, say).
    pub const ENV_PPID: &str = "RCLUSTER_PRIMARY_PID";
    /// Largest message.
    pub const ENV_MAX: &str = "RCLUSTER_MAX_MESSAGE";
    /// "1" when the worker takes over SIGTERM/SIGINT.
    pub const ENV_SIGNALS: &str = "RCLUSTER_SIGNALS";
    /// "1" when the worker must call `ready()` itself.
    pub const ENV_MANUAL_READY: &str = "RCLUSTER_MANUAL_READY";
    /// The send queue bounds, "max_bytes:max_messages".
    pub const ENV_SEND_QUEUE: &str = "RCLUSTER_SEND_QUEUE";
    /// Where the worker accepts by itself: "shared:INDEX=FD,..." or "reuseport:INDEX=ADDR,...".
    pub const ENV_ACCEPT: &str = "RCLUSTER_ACCEPT";
    /// Heartbeat interval in ms (0: none).
    pub const ENV_HEARTBEAT: &str = "RCLUSTER_HEARTBEAT_MS";

    /// All the names above (stripped from a worker's environment before new ones are set).
    pub const ALL: [&str; 9] =
        [ENV_ID, ENV_FD, ENV_PPID, ENV_MAX, ENV_SIGNALS, ENV_MANUAL_READY, ENV_SEND_QUEUE, ENV_ACCEPT, ENV_HEARTBEAT];
}

/// `host:port` as a socket address: an IP literal (IPv6 with or without brackets), or a host
/// name resolved now (the first address). `net::listener::resolve` is this.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let bracketless = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bracketless.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.is_empty() {
        return fail(Code::Inval, "listen address: empty host");
    }
    if host.len() > 253 || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return fail(Code::Inval, format!("listen address {host:?}: not an IP address or a host name"));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| Error::new(Code::Sys, format!("resolve {host}: no address"))),
        Err(e) => Err(Error::sys(format!("resolve {host}"), e)),
    }
}

/// Checks one `NAME=value` entry for a worker's environment: a name without `=`, and not one
/// of the variables rcluster itself sets for a worker.
pub fn env_entry(kv: &str) -> Result<CString> {
    match kv.split_once('=') {
        Some((k, _)) if !k.is_empty() => {
            if worker_env::ALL.contains(&k) {
                return fail(Code::Inval, format!("{k} is set by rcluster for each worker and cannot be given"));
            }
            CString::new(kv).map_err(|_| Error::new(Code::Inval, format!("{kv:?} has a NUL byte")))
        }
        _ => fail(Code::Inval, format!("{kv:?} is not NAME=value")),
    }
}

/// The worker entry point in FORK mode; its return is the worker's exit code.
pub type WorkerMain = std::sync::Arc<dyn Fn() -> i32 + Send + Sync>;

/// Everything `primary::start` needs.
#[derive(Clone)]
pub struct Config {
    /// Workers to start (0 = one per CPU).
    pub workers: u32,
    /// FORK or EXEC.
    pub mode: Mode,
    /// FORK mode's worker entry point.
    pub worker_main: Option<WorkerMain>,
    /// EXEC mode's program and argv (None: this program, same argv).
    pub exec: Option<(CString, Vec<CString>)>,
    /// The balancing policy.
    pub policy: Policy,
    /// The listeners, by index.
    pub listeners: Vec<ListenSpec>,
    /// Largest message carried (default 64 MiB).
    pub max_message: u64,
    /// Take over SIGTERM/SIGINT/SIGHUP/SIGTTIN/SIGTTOU/SIGQUIT (default on; the bindings turn it off).
    pub signals: bool,
    /// Grace period of a signal-initiated shutdown, in ms (default 30 s).
    pub grace_ms: u32,
    /// Before a graceful shutdown starts, the primary goes on serving this long with its
    /// health check saying 503 (`cluster_config_set_drain_delay`; default 0).
    pub drain_delay_ms: u32,
    /// Bounds of each send queue.
    pub send_limits: Limits,
    /// Connections handed to one worker and not yet acknowledged, at most.
    pub window: u32,
    /// Connections accepted and waiting for a worker, at most, before accepting pauses.
    pub max_pending: usize,
    /// Workers call `ready()` themselves instead of READY following `worker_start`.
    pub manual_ready: bool,
    /// Run the primary's loop thread under SCHED_BATCH (see `primary::sched`); None: when the
    /// primary hands off connections (a balancing policy and at least one listener).
    pub sched_batch: Option<bool>,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Start a replacement when a worker dies unasked (default on), with this backoff and
    /// crash-loop detection.
    pub restart: Option<RestartPolicy>,
    /// A worker not READY this long after it started is killed (0: no limit; default 30 s).
    pub startup_timeout_ms: u32,
    /// Workers send a heartbeat this often (0: off; default 1 s)...
    pub heartbeat_ms: u32,
    /// ...and one silent this long is killed (SIGABRT, then SIGKILL) and replaced (default 10 s).
    pub heartbeat_timeout_ms: u32,
    /// Recycle a worker after this many connections (0: never), plus a random 0..=jitter.
    pub max_requests: u64,
    /// See `max_requests`.
    pub max_requests_jitter: u64,
    /// How workers run: user, groups, directory, environment, stdio.
    pub worker_process: WorkerProcess,
    /// Workers are Node programs spoken to on Node's own IPC channel (`NODE_CHANNEL_FD`) in
    /// this serialization, instead of rcluster's channel (EXEC mode only; see `ipc::nodechan`).
    pub node_channel: Option<NodeSerialization>,
    /// Where the primary serves `/metrics` and `/healthz` (`cluster_config_set_metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Workers READY for `/healthz` to answer 200 (default 1).
    pub healthy_workers: u32,
}

/// How messages are encoded on a Node channel (`NODE_CHANNEL_SERIALIZATION_MODE`); the
/// channel itself is `ipc::nodechan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeSerialization {
    /// `JSON.stringify` lines.
    Json,
    /// Length-prefixed V8 serializer output (`serialization: 'advanced'`).
    Advanced,
}

/// Process settings applied in each worker before it runs (after the primary bound its
/// sockets, so a privileged port works with an unprivileged worker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerProcess {
    /// setuid to this user.
    pub uid: Option<u32>,
    /// setgid to this group.
    pub gid: Option<u32>,
    /// setgroups to these (default: none when uid/gid are set).
    pub groups: Option<Vec<u32>>,
    /// chdir here.
    pub cwd: Option<CString>,
    /// Extra environment variables ("NAME=value").
    pub env: Vec<CString>,
    /// stdin/stdout/stderr to /dev/null instead of inherited.
    pub silent: bool,
}

impl WorkerProcess {
    /// These settings with `vars` (`NAME=value`) added to the environment, replacing the
    /// configured variables of the same names.
    pub fn with_env(&self, vars: &[CString]) -> WorkerProcess {
        let name = |c: &CString| c.as_bytes().split(|&b| b == b'=').next().map(<[u8]>::to_vec);
        let replaced: Vec<Vec<u8>> = vars.iter().filter_map(name).collect();
        let mut out = self.clone();
        out.env.retain(|c| !name(c).is_some_and(|n| replaced.contains(&n)));
        out.env.extend(vars.iter().cloned());
        out
    }
}

/// The default largest message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: 0,
            mode: Mode::Fork,
            worker_main: None,
            exec: None,
            policy: Policy::RoundRobin,
            listeners: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            signals: true,
            grace_ms: 30_000,
            drain_delay_ms: 0,
            send_limits: Limits::default(),
            window: 64,
            max_pending: 4096,
            manual_ready: false,
            sched_batch: None,
            backlog: libc::SOMAXCONN,
            restart: Some(RestartPolicy::default()),
            startup_timeout_ms: 30_000,
            heartbeat_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            max_requests: 0,
            max_requests_jitter: 0,
            worker_process: WorkerProcess::default(),
            node_channel: None,
            metrics: None,
            healthy_workers: 1,
        }
    }
}

impl Config {
    /// Adds a TCP listener on `host:port` (IPv4, IPv6 or a name resolved now); returns its index.
    pub fn listen_tcp(&mut self, host: &str, port: u16) -> Result<u32> {
        self.listeners.push(ListenSpec::tcp(host, port)?);
        Ok(self.listeners.len() as u32 - 1)
    }

    /// Serves `/metrics` and `/healthz` at `addr`: `host:port` or `[v6]:port` (a host name is
    /// resolved now; port 0 picks one).
    pub fn set_metrics(&mut self, addr: &str) -> Result<()> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::new(Code::Inval, format!("metrics address {addr:?} is not host:port")))?;
        if host.is_empty() {
            return fail(Code::Inval, format!("metrics address {addr:?} has no host"));
        }
        self.metrics = Some(resolve(host, port)?);
        Ok(())
    }

    /// Adds a Unix stream socket listener at `path`; returns its index.
    pub fn listen_unix(&mut self, path: &str) -> Result<u32> {
        self.listeners.push(ListenSpec::unix(path)?);
        Ok(self.listeners.len() as u32 - 1)
    }

    /// Sets the permissions of Unix listener `index`'s socket file.
    pub fn set_unix_mode(&mut self, index: u32, mode: u32) -> Result<()> {
        if mode > 0o7777 {
            return fail(Code::Inval, format!("mode {mode:o} is not a permission mode"));
        }
        match self.listeners.get_mut(index as usize) {
            Some(ListenSpec::Unix { mode: m, .. }) => {
                *m = Some(mode);
                Ok(())
            }
            _ => fail(Code::Inval, format!("listener {index} is not a unix listener")),
        }
    }

    /// True when the primary accepts and hands connections out (not SHARED or REUSEPORT).
    pub fn primary_accepts(&self) -> bool {
        !matches!(self.policy, Policy::Shared | Policy::ReusePort)
    }

    /// Sets the largest message (at least 1 byte, at most 1 GiB).
    pub fn set_max_message(&mut self, bytes: u64) -> Result<()> {
        if bytes == 0 || bytes > 1 << 30 {
            return fail(Code::Inval, format!("max message of {bytes} bytes is outside 1..=1 GiB"));
        }
        self.max_message = bytes;
        Ok(())
    }

    /// The worker count to start: `workers`, or the number of CPUs we may run on.
    pub fn effective_workers(&self) -> u32 {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
    }
}
