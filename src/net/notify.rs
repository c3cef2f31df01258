//! sd_notify(3): tells systemd (Type=notify) about readiness, reloads, stopping, and feeds
//! its watchdog, when NOTIFY_SOCKET is set.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::sys;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    fd: OwnedFd,
    addr: UnixAddr,
    /// WATCHDOG_USEC, when the watchdog is on for this process.
    pub watchdog_usec: Option<u64>,
}

impl Notifier {
    /// From NOTIFY_SOCKET (a path, or "@name" for the abstract namespace); None when unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<Notifier> {
        let path = get("NOTIFY_SOCKET").filter(|p| !p.is_empty())?;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name), // the abstract namespace
            None if bytes.len() < 108 => UnixAddr::new(bytes),
            None => Err(nix::errno::Errno::ENAMETOOLONG),
        };
        let Ok(addr) = addr else {
            log::warn!("NOTIFY_SOCKET path too long; sd_notify disabled");
            return None;
        };
        let fd = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).ok()?;
        let fd = sys::above_stdio(fd).ok()?;
        let watchdog_usec = get("WATCHDOG_USEC").and_then(|v| v.parse::<u64>().ok()).filter(|&u| u > 0).filter(|_| {
            get("WATCHDOG_PID").and_then(|p| p.parse::<libc::pid_t>().ok()).is_none_or(|p| p == sys::getpid())
        });
        Some(Notifier { fd, addr, watchdog_usec })
    }

    /// Sends one notification ("READY=1", "STOPPING=1", ...). Failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        match socket::sendto(self.fd.as_raw_fd(), state.as_bytes(), &self.addr, MsgFlags::MSG_NOSIGNAL) {
            Err(e) => log::warn!("sd_notify {state:?}: {e}"),
            Ok(_) => log::debug!("sd_notify {state:?}"),
        }
    }
}
