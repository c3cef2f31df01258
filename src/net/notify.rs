//! sd_notify(3): tells systemd (Type=notify) about readiness, reloads, stopping, and feeds
//! its watchdog, when NOTIFY_SOCKET is set.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, owned};

/// A connection to the service manager's notification socket.
pub struct Notifier {
    fd: OwnedFd,
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
    /// WATCHDOG_USEC, when the watchdog is on for this process.
    pub watchdog_usec: Option<u64>,
}

impl Notifier {
    /// From NOTIFY_SOCKET (a path, or "@name" for the abstract namespace); None when unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<Notifier> {
        let path = get("NOTIFY_SOCKET").filter(|p| !p.is_empty())?;
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            log::warn!("NOTIFY_SOCKET path too long; sd_notify disabled");
            return None;
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        if bytes[0] == b'@' {
            addr.sun_path[0] = 0; // abstract namespace
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
        // SAFETY: socket(2) takes integers.
        let fd = owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }).ok()?;
        let watchdog_usec = get("WATCHDOG_USEC").and_then(|v| v.parse::<u64>().ok()).filter(|&u| u > 0).filter(|_| {
            get("WATCHDOG_PID").and_then(|p| p.parse::<libc::pid_t>().ok()).is_none_or(|p| p == sys::getpid())
        });
        Some(Notifier { fd, addr, len, watchdog_usec })
    }

    /// Sends one notification ("READY=1", "STOPPING=1", ...). Failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        // SAFETY: the buffer and the address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                state.as_ptr().cast(),
                state.len(),
                libc::MSG_NOSIGNAL,
                (&self.addr as *const libc::sockaddr_un).cast(),
                self.len,
            )
        };
        if n < 0 {
            log::warn!("sd_notify {state:?}: {}", std::io::Error::last_os_error());
        } else {
            log::debug!("sd_notify {state:?}");
        }
    }
}
