//! Starting worker processes: fork(2) running a function, or fork+exec of a program.
//!
//! Between fork and exec a multi-threaded parent's child may only make async-signal-safe calls,
//! so everything exec needs (argv, envp, the error pipe) is built before the fork, and the
//! child only calls sigaction, sigprocmask, prctl, getppid, fcntl, execve, write and _exit.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::error::{fail, Code, Error, Result};
use crate::net::activation;
use crate::signals;
use crate::sys::{self, cvt, owned};
use crate::worker::env::{self, WorkerEnv};

/// What a spawn left in this process.
pub enum Spawned {
    /// We are the primary: the child's pid and our end of its channel.
    Parent {
        /// The worker's pid.
        pid: libc::pid_t,
        /// The primary's end of the channel.
        channel: OwnedFd,
    },
    /// FORK mode, and we are the new worker: tear the primary down and run the worker main.
    Child(WorkerEnv),
}

/// In a fresh child: die with the primary (PR_SET_PDEATHSIG), and if it is already gone (the
/// signal would never come), exit now. Async-signal-safe.
fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl and getppid take integers; _exit never returns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// FORK mode: forks a worker. Refused with `Threads` when this process has other threads,
/// since only the forking thread survives in the child and locks held by the others never
/// come back.
pub fn fork_worker(template: WorkerEnv) -> Result<Spawned> {
    ensure_single_threaded()?;
    let (ours, theirs) = sys::seqpacket_pair()?;
    sys::grow_sndbuf(ours.as_raw_fd(), 1 << 20);
    sys::grow_sndbuf(theirs.as_raw_fd(), 1 << 20);
    sys::flush_stdio();
    let parent = sys::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child is a complete copy
    // in which any code may run.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os("fork"));
    }
    if pid == 0 {
        die_with_parent(parent);
        signals::reset_in_child(&signals::PRIMARY_SIGNALS);
        drop(ours);
        let channel = std::os::fd::IntoRawFd::into_raw_fd(theirs);
        return Ok(Spawned::Child(WorkerEnv { channel, ..template }));
    }
    Ok(Spawned::Parent { pid, channel: ours })
}

/// `Threads` when this process has more than one thread (FORK mode cannot be used).
pub fn ensure_single_threaded() -> Result<()> {
    let threads = sys::thread_count().map_err(|e| Error::sys("reading /proc/self/stat", e))?;
    if threads > 1 {
        return fail(
            Code::Threads,
            format!("FORK mode needs a single-threaded process, this one has {threads} threads: use EXEC mode"),
        );
    }
    Ok(())
}

/// The program, argv and environment of EXEC-mode workers, prepared once.
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    base_env: Vec<CString>,
}

impl ExecPlan {
    /// `exec` (program, argv) or, when None, this program with this process's argv. The
    /// program path is resolved now, so a reload runs the binary on disk at that path.
    pub fn new(exec: Option<&(CString, Vec<CString>)>) -> Result<ExecPlan> {
        let (path, argv) = match exec {
            Some((p, a)) => (p.clone(), if a.is_empty() { vec![p.clone()] } else { a.clone() }),
            None => {
                let exe = std::fs::read_link("/proc/self/exe").map_err(|e| Error::sys("readlink /proc/self/exe", e))?;
                let cmdline =
                    std::fs::read("/proc/self/cmdline").map_err(|e| Error::sys("read /proc/self/cmdline", e))?;
                let argv: Vec<CString> = cmdline
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| CString::new(s).expect("split on NUL"))
                    .collect();
                (cstring(exe.as_os_str())?, argv)
            }
        };
        let base_env = std::env::vars_os()
            .filter(|(k, _)| !env::ALL.iter().chain(&activation::VARS).any(|n| OsStr::new(n) == k))
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(|_| Error::new(Code::Inval, "environment variable with a NUL byte"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ExecPlan { path, argv, base_env })
    }

    /// The program workers run.
    pub fn program(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::new(Code::Inval, "path with a NUL byte"))
}

/// EXEC mode: forks and execs `plan` as worker `template.id`. Safe in a multi-threaded process.
/// An exec failure ("exec /bad/path: No such file or directory") comes back as an error, and
/// the failed child is reaped.
pub fn exec_worker(plan: &ExecPlan, template: WorkerEnv) -> Result<Spawned> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    sys::grow_sndbuf(ours.as_raw_fd(), 1 << 20);
    sys::grow_sndbuf(theirs.as_raw_fd(), 1 << 20);
    let parent = sys::getpid();
    // SHARED: the listening sockets stay open across exec (CLOEXEC cleared in the child).
    let inherit: Vec<RawFd> = match &template.accept {
        env::AcceptFrom::Shared(list) => list.iter().map(|(_, fd)| *fd).collect(),
        _ => Vec::new(),
    };
    let we = WorkerEnv { channel: theirs.as_raw_fd(), ..template };
    let mut envp: Vec<CString> = plan.base_env.clone();
    for (k, v) in we.to_env(parent) {
        envp.push(CString::new(format!("{k}={v}")).expect("no NUL in our variables"));
    }
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let mut argv_ptrs: Vec<*const libc::c_char> = plan.argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (err_r, err_w) = cloexec_pipe()?;
    let child_fd: RawFd = theirs.as_raw_fd();
    let err_fd: RawFd = err_w.as_raw_fd();
    sys::flush_stdio();
    // SAFETY: fork in a possibly multi-threaded process: the child below only makes
    // async-signal-safe calls on data prepared before the fork, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os("fork"));
    }
    if pid == 0 {
        die_with_parent(parent);
        signals::reset_in_child(&signals::PRIMARY_SIGNALS);
        // SAFETY: async-signal-safe calls on integers and on pointers prepared before the fork
        // (the NUL-terminated argv/envp arrays point into CStrings that the copy-on-write child
        // still holds).
        unsafe {
            for &fd in std::iter::once(&child_fd).chain(inherit.iter()) {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            libc::execve(plan.path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_fd, (&errno as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>());
            libc::_exit(127);
        }
    }
    drop(err_w);
    drop(theirs);
    // The pipe's write end closes on a successful exec (CLOEXEC): EOF means the worker runs.
    let mut errno: libc::c_int = 0;
    let n = loop {
        // SAFETY: reading into a live c_int.
        let n = unsafe {
            libc::read(err_r.as_raw_fd(), (&mut errno as *mut libc::c_int).cast(), std::mem::size_of::<libc::c_int>())
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n > 0 {
        let mut status = 0;
        // SAFETY: reaping our own, just-failed child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(Error::sys(format!("exec {}", plan.program()), io::Error::from_raw_os_error(errno)));
    }
    Ok(Spawned::Parent { pid, channel: ours })
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(|e| Error::sys("pipe2", e))?;
    Ok((owned(fds[0]).map_err(|e| Error::sys("pipe2", e))?, owned(fds[1]).map_err(|e| Error::sys("pipe2", e))?))
}
