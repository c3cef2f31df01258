//! What a worker needs to know about its primary, and how it gets it: in memory after a fork,
//! through the environment after an exec.

use std::os::fd::RawFd;

use crate::ipc::outbox::Limits;
use crate::sys;

/// The variables rcluster sets for a worker: the configuration owns their names, since it
/// refuses them in a user's environment (`config::env_entry`); the old paths stay.
pub use crate::config::worker_env::{
    ALL, ENV_ACCEPT, ENV_FD, ENV_HEARTBEAT, ENV_ID, ENV_MANUAL_READY, ENV_MAX, ENV_PPID, ENV_SEND_QUEUE, ENV_SIGNALS,
};

/// Where a worker's connections come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcceptFrom {
    /// The primary hands them over (ROUND_ROBIN, LEAST_CONNECTIONS, STICKY).
    Primary,
    /// The worker accepts on the primary's listening sockets: (listener index, fd).
    Shared(Vec<(u32, RawFd)>),
    /// The worker binds its own SO_REUSEPORT socket on each address: (listener index, address).
    ReusePort(Vec<(u32, std::net::SocketAddr)>),
}

impl AcceptFrom {
    fn encode(&self) -> Option<String> {
        let list = |items: Vec<String>| items.join(",");
        match self {
            AcceptFrom::Primary => None,
            AcceptFrom::Shared(l) => {
                Some(format!("shared:{}", list(l.iter().map(|(i, fd)| format!("{i}={fd}")).collect())))
            }
            AcceptFrom::ReusePort(l) => {
                Some(format!("reuseport:{}", list(l.iter().map(|(i, a)| format!("{i}={a}")).collect())))
            }
        }
    }

    fn decode(v: &str) -> Option<AcceptFrom> {
        let (kind, rest) = v.split_once(':')?;
        let pairs = rest.split(',').filter(|s| !s.is_empty()).map(|p| p.split_once('='));
        match kind {
            "shared" => pairs
                .map(|p| p.and_then(|(i, fd)| Some((i.parse().ok()?, fd.parse().ok()?))))
                .collect::<Option<_>>()
                .map(AcceptFrom::Shared),
            "reuseport" => pairs
                .map(|p| p.and_then(|(i, a)| Some((i.parse().ok()?, a.parse().ok()?))))
                .collect::<Option<_>>()
                .map(AcceptFrom::ReusePort),
            _ => None,
        }
    }
}

/// A worker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEnv {
    /// This worker's id (>= 1).
    pub id: u32,
    /// The channel to the primary.
    pub channel: RawFd,
    /// Largest message.
    pub max_message: u64,
    /// Take over SIGTERM/SIGINT as a graceful stop.
    pub signals: bool,
    /// READY waits for `ready()`.
    pub manual_ready: bool,
    /// Bounds of the send queue to the primary (the same as the primary's queues).
    pub send_limits: Limits,
    /// Where connections come from.
    pub accept: AcceptFrom,
    /// Send a heartbeat this often, ms (0: never).
    pub heartbeat_ms: u32,
}

impl WorkerEnv {
    /// The variables that describe this worker to an exec'd process.
    pub fn to_env(&self, primary_pid: libc::pid_t) -> Vec<(String, String)> {
        vec![
            (ENV_ID.into(), self.id.to_string()),
            (ENV_FD.into(), self.channel.to_string()),
            (ENV_PPID.into(), primary_pid.to_string()),
            (ENV_MAX.into(), self.max_message.to_string()),
            (ENV_SIGNALS.into(), u8::from(self.signals).to_string()),
            (ENV_MANUAL_READY.into(), u8::from(self.manual_ready).to_string()),
            (ENV_SEND_QUEUE.into(), format!("{}:{}", self.send_limits.max_bytes, self.send_limits.max_frames)),
            (ENV_HEARTBEAT.into(), self.heartbeat_ms.to_string()),
        ]
        .into_iter()
        .chain(self.accept.encode().map(|v| (ENV_ACCEPT.to_string(), v)))
        .collect()
    }

    /// Reads the settings of an exec'd worker, if this process is one: the variables are there,
    /// our parent is the primary they name, and the fd is a socket. The channel is made CLOEXEC
    /// again so the worker's own subprocesses do not inherit it.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<WorkerEnv> {
        let id: u32 = get(ENV_ID)?.parse().ok().filter(|&id| id > 0)?;
        let channel: RawFd = get(ENV_FD)?.parse().ok().filter(|&fd| fd >= 0)?;
        let ppid: libc::pid_t = get(ENV_PPID)?.parse().ok()?;
        if ppid != sys::getppid() {
            return None;
        }
        // SAFETY: the number the primary says it passed across exec; fstat and fcntl only read
        // and flag it (EBADF when the number is not open), and the worker adopts it later.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel) };
        if !sys::is_socket(fd) {
            return None;
        }
        sys::set_cloexec(fd, true).ok()?;
        Some(WorkerEnv {
            id,
            channel,
            max_message: get(ENV_MAX).and_then(|v| v.parse().ok()).unwrap_or(crate::config::DEFAULT_MAX_MESSAGE),
            signals: get(ENV_SIGNALS).as_deref() == Some("1"),
            manual_ready: get(ENV_MANUAL_READY).as_deref() == Some("1"),
            send_limits: get(ENV_SEND_QUEUE)
                .and_then(|v| {
                    let (b, f) = v.split_once(':')?;
                    Some(Limits { max_bytes: b.parse().ok()?, max_frames: f.parse().ok()? })
                })
                .filter(|l| l.max_bytes > 0 && l.max_frames > 0)
                .unwrap_or_default(),
            heartbeat_ms: get(ENV_HEARTBEAT).and_then(|v| v.parse().ok()).unwrap_or(0),
            accept: match get(ENV_ACCEPT) {
                None => AcceptFrom::Primary,
                Some(v) => AcceptFrom::decode(&v)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::fd::AsRawFd;

    #[test]
    fn env_round_trips_only_for_the_primarys_child() {
        let (a, _b) = sys::seqpacket_pair().unwrap();
        let w = WorkerEnv {
            id: 3,
            channel: a.as_raw_fd(),
            max_message: 1234,
            signals: true,
            manual_ready: false,
            send_limits: Limits { max_bytes: 100, max_frames: 7 },
            accept: AcceptFrom::ReusePort(vec![(0, "127.0.0.1:80".parse().unwrap()), (2, "[::1]:81".parse().unwrap())]),
            heartbeat_ms: 250,
        };
        let vars: HashMap<String, String> = w.to_env(sys::getppid()).into_iter().collect();
        assert_eq!(WorkerEnv::from_env(|k| vars.get(k).cloned()), Some(w.clone()));
        let shared = WorkerEnv { accept: AcceptFrom::Shared(vec![(0, 5), (1, 9)]), ..w.clone() };
        let vars_s: HashMap<String, String> = shared.to_env(sys::getppid()).into_iter().collect();
        assert_eq!(WorkerEnv::from_env(|k| vars_s.get(k).cloned()), Some(shared));
        // Another parent: not a worker (a worker's subprocess inherits the variables).
        let vars2: HashMap<String, String> = w.to_env(sys::getpid()).into_iter().collect();
        assert_eq!(WorkerEnv::from_env(|k| vars2.get(k).cloned()), None);
        // Not a socket: not a worker.
        let mut vars3 = vars.clone();
        vars3.insert(ENV_FD.into(), "0".into());
        let zero_is_socket = sys::is_socket(std::io::stdin());
        assert_eq!(WorkerEnv::from_env(|k| vars3.get(k).cloned()).is_some(), zero_is_socket);
        assert_eq!(WorkerEnv::from_env(|_| None), None);
    }
}
