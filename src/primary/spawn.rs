//! Starting worker processes: fork(2) running a function, or fork+exec of a program.
//!
//! Between fork and exec a multi-threaded parent's child may only make async-signal-safe calls,
//! so everything exec needs (argv, envp) is built before, and the EXEC-mode child (a
//! CLONE_VM|CLONE_VFORK clone, like posix_spawn's) only makes system calls: rt_sigaction,
//! rt_sigprocmask, prctl, getppid, sched_*, fcntl, chdir, setgroups/setgid/setuid, dup2,
//! execve and _exit.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::unistd::ForkResult;

use crate::config::WorkerProcess;
use crate::error::{fail, Code, Error, Result};
use crate::ipc::nodechan::Serialization;
use crate::net::activation;
use crate::signals;
use crate::sys::{self, raw::child};
use crate::worker::env::{self, WorkerEnv};

/// The variables Node's channel is set up from: never inherited from the primary's own
/// environment, only set for a Node worker.
const NODE_VARS: [&str; 3] = ["NODE_CHANNEL_FD", "NODE_UNIQUE_ID", "NODE_CHANNEL_SERIALIZATION_MODE"];

/// What a spawn left in this process.
pub enum Spawned {
    /// We are the primary: the child's pid and our end of its channel.
    Parent {
        /// The worker's pid.
        pid: libc::pid_t,
        /// The primary's end of the channel.
        channel: OwnedFd,
        /// The worker's end, kept to recover what it never received (see `Slot::recovery`).
        recovery: OwnedFd,
        /// A silent Node worker's stdin, stdout and stderr: the primary's ends of the pipes.
        stdio: Option<[OwnedFd; 3]>,
    },
    /// FORK mode, and we are the new worker: tear the primary down and run the worker main.
    Child(WorkerEnv),
}

/// FORK mode: forks a worker. Refused with `Threads` when this process has other threads,
/// since only the forking thread survives in the child and locks held by the others never
/// come back.
pub fn fork_worker(template: WorkerEnv, process: &WorkerProcess) -> Result<Spawned> {
    ensure_single_threaded()?;
    let setup = setup(process)?;
    let (ours, theirs) = sys::seqpacket_pair()?;
    sys::grow_sndbuf(&ours, 1 << 20);
    sys::grow_sndbuf(&theirs, 1 << 20);
    sys::flush_stdio();
    let parent = sys::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child is a complete copy
    // in which any code may run.
    let pid = match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Parent { child } => child.as_raw(),
        ForkResult::Child => 0,
    };
    if pid == 0 {
        child::die_with_parent(parent);
        signals::reset_in_child(&signals::PRIMARY_SIGNALS);
        super::sched::reset_in_child();
        // SAFETY: a freshly forked child of a single-threaded process.
        if let Err((stage, errno)) = unsafe { setup.apply() } {
            eprintln!("rcluster worker {}: {}: {}", template.id, stage, std::io::Error::from(errno));
            child::exit_now(126);
        }
        // Changing the uid or gid clears the parent-death signal: set it again.
        child::die_with_parent(parent);
        for var in &process.env {
            if let Some((k, v)) = var.to_str().ok().and_then(|s| s.split_once('=')) {
                std::env::set_var(k, v);
            }
        }
        drop(ours);
        let channel = std::os::fd::IntoRawFd::into_raw_fd(theirs);
        return Ok(Spawned::Child(WorkerEnv { channel, ..template }));
    }
    Ok(Spawned::Parent { pid, channel: ours, recovery: theirs, stdio: None })
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

/// One worker's own argv and directory, instead of the config's (`cluster_fork_exec`).
pub struct ExecOverride {
    /// The whole argv (argv[0] included); the program stays the config's.
    pub argv: Vec<CString>,
    /// The directory it starts in.
    pub cwd: Option<CString>,
}

/// The program, argv and environment of EXEC-mode workers, prepared once.
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    base_env: Vec<CString>,
}

impl ExecPlan {
    /// The same program and environment with another argv.
    pub fn with_argv(&self, argv: Vec<CString>) -> ExecPlan {
        ExecPlan { path: self.path.clone(), argv, base_env: self.base_env.clone() }
    }

    /// `exec` (program, argv) or, when None, this program with this process's argv. The
    /// program path is resolved now, so a reload runs the binary on disk at that path.
    pub fn new(exec: Option<&(CString, Vec<CString>)>) -> Result<ExecPlan> {
        let (path, argv) = match exec {
            Some((p, a)) => (p.clone(), if a.is_empty() { vec![p.clone()] } else { a.clone() }),
            None => {
                let exe = std::fs::read_link("/proc/self/exe").map_err(|e| Error::sys("readlink /proc/self/exe", e))?;
                let cmdline =
                    std::fs::read("/proc/self/cmdline").map_err(|e| Error::sys("read /proc/self/cmdline", e))?;
                (cstring(exe.as_os_str())?, argv_from_cmdline(&cmdline))
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

/// The argv in /proc/self/cmdline: each argument ends with a NUL, so empty ones (`""`, as
/// in `prog -o "" file`) are kept and only the last NUL ends the list.
fn argv_from_cmdline(cmdline: &[u8]) -> Vec<CString> {
    let Some(body) = cmdline.strip_suffix(&[0]) else {
        // Empty, or rewritten by the process without a final NUL: what is there is one string.
        return cmdline
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| CString::new(s).expect("no NUL"))
            .collect();
    };
    body.split(|&b| b == 0).map(|s| CString::new(s).expect("split on NUL")).collect()
}

fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::new(Code::Inval, "path with a NUL byte"))
}

/// EXEC mode: starts `plan` as worker `template.id`. Safe in a multi-threaded process.
/// An exec failure ("exec /bad/path: No such file or directory") comes back as an error, and
/// the failed child is reaped. The child is a posix_spawn-style clone (`sys::raw::child`).
///
/// With `node` the worker is a Node program started as `child_process.fork()` starts one: on
/// Node's channel (a stream socket named by `NODE_CHANNEL_FD`, `NODE_UNIQUE_ID` making it a
/// cluster worker), without rcluster's variables, and without the parent-death signal: when
/// the primary dies its channel closes, and Node's worker code exits by itself (running its
/// `'exit'` handlers), as under node:cluster.
pub fn exec_worker(
    plan: &ExecPlan,
    template: WorkerEnv,
    process: &WorkerProcess,
    node: Option<Serialization>,
) -> Result<Spawned> {
    // A silent Node worker's stdio goes to pipes the host reads (node:cluster's
    // `worker.process.stdout`), not to /dev/null.
    let piped = node.is_some() && process.silent;
    let mut setup = if piped { setup(&WorkerProcess { silent: false, ..process.clone() })? } else { setup(process)? };
    let pipes = if piped { Some(stdio_pipes()?) } else { None };
    if let Some(p) = &pipes {
        setup.stdio = [Some(p[0].0.as_raw_fd()), Some(p[1].0.as_raw_fd()), Some(p[2].0.as_raw_fd())];
    }
    let (ours, theirs) = match node {
        Some(_) => crate::ipc::nodechan::stream::pair()?,
        None => sys::seqpacket_pair()?,
    };
    sys::grow_sndbuf(&ours, 1 << 20);
    sys::grow_sndbuf(&theirs, 1 << 20);
    let parent = sys::getpid();
    // The channel, and SHARED's listening sockets, stay open across exec (CLOEXEC cleared in
    // the child).
    let mut keep: Vec<RawFd> = vec![theirs.as_raw_fd()];
    if let env::AcceptFrom::Shared(list) = &template.accept {
        keep.extend(list.iter().map(|(_, fd)| *fd));
    }
    let we = WorkerEnv { channel: theirs.as_raw_fd(), ..template };
    let key = |c: &CString| c.as_bytes().split(|&b| b == b'=').next().map(<[u8]>::to_vec);
    let overridden: Vec<Vec<u8>> = process.env.iter().filter_map(key).collect();
    let mut envp: Vec<CString> =
        plan.base_env.iter().filter(|c| !key(c).is_some_and(|k| overridden.contains(&k))).cloned().collect();
    envp.extend(process.env.iter().cloned());
    match node {
        Some(mode) => {
            envp.retain(|c| !key(c).is_some_and(|k| NODE_VARS.iter().any(|n| n.as_bytes() == k)));
            for (k, v) in [
                ("NODE_CHANNEL_FD", theirs.as_raw_fd().to_string()),
                ("NODE_UNIQUE_ID", we.id.to_string()),
                ("NODE_CHANNEL_SERIALIZATION_MODE", mode.name().to_string()),
            ] {
                envp.push(CString::new(format!("{k}={v}")).expect("no NUL in our variables"));
            }
        }
        None => {
            for (k, v) in we.to_env(parent) {
                envp.push(CString::new(format!("{k}={v}")).expect("no NUL in our variables"));
            }
        }
    }
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let mut argv_ptrs: Vec<*const libc::c_char> = plan.argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let start = child::ExecChild {
        parent,
        setup: &setup,
        keep: &keep,
        reset_signals: &signals::PRIMARY_SIGNALS,
        sched_before: super::sched::before(),
        path: &plan.path,
        argv: &argv_ptrs,
        envp: &env_ptrs,
        die_with_parent: node.is_none(),
    };
    sys::flush_stdio();
    match child::clone_exec(&start) {
        Ok(pid) => {
            let stdio = pipes.map(|[a, b, c]| [a.1, b.1, c.1]);
            Ok(Spawned::Parent { pid, channel: ours, recovery: theirs, stdio })
        }
        Err(child::ExecError::Start(what, e)) => Err(Error::sys(what, e)),
        Err(child::ExecError::Child(child::Stage::Exec, e)) => Err(Error::sys(format!("exec {}", plan.program()), e)),
        Err(child::ExecError::Child(stage, e)) => Err(Error::sys(format!("worker {}: {stage}", we.id), e)),
    }
}

/// Three pipes for a silent Node worker's stdin, stdout and stderr: (the child's end, ours),
/// CLOEXEC, above stdio (dup2 onto 0-2 must never find its source there).
fn stdio_pipes() -> Result<[(OwnedFd, OwnedFd); 3]> {
    let pipe = |child_reads: bool| -> Result<(OwnedFd, OwnedFd)> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let up = |fd| sys::above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
        let (r, w) = (up(r)?, up(w)?);
        Ok(if child_reads { (r, w) } else { (w, r) })
    };
    Ok([pipe(true)?, pipe(false)?, pipe(false)?])
}

/// A worker's process settings, prepared before the start so the child applies them with
/// system calls only.
fn setup(p: &WorkerProcess) -> Result<child::Setup> {
    let devnull = if p.silent {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(c"/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .and_then(sys::above_stdio)
            .map_err(|e| Error::sys("open /dev/null", e))?;
        Some(fd)
    } else {
        None
    };
    // Dropping to a user without naming groups drops the supplementary groups too.
    let groups = p.groups.clone().or_else(|| (p.uid.is_some() || p.gid.is_some()).then(Vec::new));
    Ok(child::Setup { cwd: p.cwd.clone(), groups, gid: p.gid, uid: p.uid, devnull, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::argv_from_cmdline;

    #[test]
    fn empty_arguments_in_cmdline_are_kept() {
        let args = |v: &[u8]| argv_from_cmdline(v).into_iter().map(|c| c.into_bytes()).collect::<Vec<_>>();
        assert_eq!(args(b"prog\0-o\0\0file\0"), [&b"prog"[..], b"-o", b"", b"file"]);
        assert_eq!(args(b"prog\0\0\0"), [&b"prog"[..], b"", b""], "empty arguments at the end");
        assert_eq!(args(b"prog\0"), [b"prog"]);
        assert!(args(b"").is_empty());
        assert_eq!(args(b"rewritten title"), [b"rewritten title"]);
    }
}
