//! systemd socket activation: listening sockets passed as fds 3.. with LISTEN_FDS,
//! LISTEN_PID and LISTEN_FDNAMES (sd_listen_fds(3)).

use crate::config::{Config, ListenSpec};
use crate::error::{fail, Code, Result};
use crate::sys;

/// The first passed fd (SD_LISTEN_FDS_START).
pub const FIRST_FD: i32 = 3;

/// The environment variables of socket activation; workers never inherit them.
pub const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The passed fds a primary took (it closes them when it ends, or when its start fails): they
/// are never taken again, since by then their numbers may be the host's own files.
static CLAIMED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Takes passed fd `fd` for a primary's listener, once per process: `State` the second time
/// (a config reused after a start that finished or failed still names it).
pub fn claim(fd: i32) -> Result<()> {
    let mut claimed = crate::sync::lock(&CLAIMED);
    if claimed.contains(&fd) {
        return fail(Code::State, format!("fd {fd} from systemd socket activation was taken by an earlier start and closed when it ended (or failed): the sockets systemd passed serve one start"));
    }
    claimed.push(fd);
    Ok(())
}

/// The sockets passed to this process, if LISTEN_PID names it. Each must be a listening
/// socket; they are made CLOEXEC so they are not passed on to anything we start.
pub fn listen_fds(get: impl Fn(&str) -> Option<String>) -> Result<Vec<ListenSpec>> {
    let Some(pid) = get("LISTEN_PID") else { return Ok(Vec::new()) };
    if pid.trim().parse::<libc::pid_t>().ok() != Some(sys::getpid()) {
        log::debug!("LISTEN_PID={pid} is not this process: socket activation ignored");
        return Ok(Vec::new());
    }
    let count: i32 = match get("LISTEN_FDS").and_then(|v| v.trim().parse().ok()) {
        Some(n) if (0..=1024).contains(&n) => n,
        _ => return fail(Code::Inval, "LISTEN_FDS is not a count of passed sockets"),
    };
    let names: Vec<String> =
        get("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_string).collect()).unwrap_or_default();
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let fd = FIRST_FD + i;
        if crate::sync::lock(&CLAIMED).contains(&fd) {
            return fail(Code::State, format!("LISTEN_FDS: fd {fd} was taken by an earlier start and closed when it ended (or failed): the sockets systemd passed serve one start"));
        }
        // SAFETY: a number systemd says it passed; getsockopt and fcntl only read and flag it
        // (EBADF when it is not open), and a listener adopts it later (`claim`).
        let passed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if !sys::is_listening_socket(passed) {
            return fail(Code::Inval, format!("LISTEN_FDS: fd {fd} is not a listening socket"));
        }
        sys::set_cloexec(passed, true).map_err(|e| crate::error::Error::sys(format!("fcntl(fd {fd})"), e))?;
        let name = names.get(i as usize).cloned().unwrap_or_else(|| "unknown".to_string());
        out.push(ListenSpec::Inherited { fd, name });
    }
    Ok(out)
}

/// Adds the sockets systemd passed to `config` (LISTEN_FDS, honoured only when LISTEN_PID is
/// this process); returns how many. Their names come from LISTEN_FDNAMES. Here rather than on
/// `Config`, which is plain data under `net`.
pub fn listen_systemd(config: &mut Config) -> Result<u32> {
    let inherited = listen_fds(|k| std::env::var(k).ok())?;
    let n = inherited.len() as u32;
    config.listeners.extend(inherited);
    Ok(n)
}
