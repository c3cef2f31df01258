//! Starting worker processes: fork(2) running a function, or fork+exec of a program.
//!
//! Between fork and exec a multi-threaded parent's child may only make async-signal-safe calls,
//! so everything exec needs (argv, envp) is built before, and the EXEC-mode child (a
//! CLONE_VM|CLONE_VFORK clone, like posix_spawn's) only makes system calls: rt_sigaction,
//! rt_sigprocmask, prctl, getppid, sched_*, fcntl, chdir, setgroups/setgid/setuid, dup2,
//! execve and _exit.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::config::WorkerProcess;
use crate::error::{fail, Code, Error, Result};
use crate::ipc::nodechan::Serialization;
use crate::net::activation;
use crate::signals;
use crate::sys::{self, owned};
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
pub fn fork_worker(template: WorkerEnv, process: &WorkerProcess) -> Result<Spawned> {
    ensure_single_threaded()?;
    let setup = Setup::new(process)?;
    let (ours, theirs) = sys::seqpacket_pair()?;
    sys::grow_sndbuf(&ours, 1 << 20);
    sys::grow_sndbuf(&theirs, 1 << 20);
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
        super::sched::reset_in_child();
        // SAFETY: a freshly forked child of a single-threaded process.
        if let Err((stage, errno)) = unsafe { setup.apply() } {
            eprintln!("rcluster worker {}: {}: {}", template.id, stage, io::Error::from_raw_os_error(errno));
            // SAFETY: leaving the child without running the primary's atexit handlers.
            unsafe { libc::_exit(126) };
        }
        // Changing the uid or gid clears the parent-death signal: set it again.
        die_with_parent(parent);
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
/// the failed child is reaped.
///
/// The child is started the way posix_spawn(3) does it: clone(2) with CLONE_VM|CLONE_VFORK, on
/// a stack of its own. This thread is suspended until the child has exec'd or exited, and the
/// child reports a failure by writing it into memory the two share. Nothing waits for an EOF
/// on a pipe, so another fork of this process (a host thread that forks without exec, and so
/// holds every descriptor open at that moment) cannot hold a start up.
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
    let setup =
        if piped { Setup::new(&WorkerProcess { silent: false, ..process.clone() })? } else { Setup::new(process)? };
    let pipes = if piped { Some(stdio_pipes()?) } else { None };
    let (ours, theirs) = match node {
        Some(_) => crate::ipc::nodechan::stream::pair()?,
        None => sys::seqpacket_pair()?,
    };
    sys::grow_sndbuf(&ours, 1 << 20);
    sys::grow_sndbuf(&theirs, 1 << 20);
    let parent = sys::getpid();
    // SHARED: the listening sockets stay open across exec (CLOEXEC cleared in the child).
    let inherit: Vec<RawFd> = match &template.accept {
        env::AcceptFrom::Shared(list) => list.iter().map(|(_, fd)| *fd).collect(),
        _ => Vec::new(),
    };
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
    let stack = ChildStack::new()?;
    let mut child = ExecChild {
        parent,
        setup: &setup,
        channel: theirs.as_raw_fd(),
        inherit: &inherit,
        path: plan.path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        die_with_parent: node.is_none(),
        stdio: pipes.as_ref().map(|p| [p[0].0.as_raw_fd(), p[1].0.as_raw_fd(), p[2].0.as_raw_fd()]),
        failure: [0; 2],
    };
    sys::flush_stdio();
    let pid = {
        // Every signal stays blocked on this thread until the child has reset the handlers it
        // inherited: a host's handler must never run in the child, which shares our memory.
        let _blocked = BlockedSignals::all();
        // SAFETY: the child runs `exec_child` on its own stack with a pointer to `child`,
        // which outlives it (CLONE_VFORK: clone returns once the child has exec'd or exited).
        // CLONE_VM shares memory, not descriptors (no CLONE_FILES) nor signal handlers (no
        // CLONE_SIGHAND): what the child changes there is its own. SIGCHLD: reaped as a child.
        unsafe {
            libc::clone(
                exec_child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut child as *mut ExecChild<'_>).cast(),
            )
        }
    };
    if pid < 0 {
        return Err(Error::last_os("clone"));
    }
    // SAFETY: reading our own local, which the child may have written before it exited.
    let failure = unsafe { std::ptr::read_volatile(&child.failure) };
    if failure[0] != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has already exited (CLONE_VFORK).
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let what = match failure[0] {
            x if x == Stage::Exec as libc::c_int => format!("exec {}", plan.program()),
            x => format!("worker {}: {}", we.id, Stage::name(x)),
        };
        return Err(Error::sys(what, io::Error::from_raw_os_error(failure[1])));
    }
    let stdio = pipes.map(|[a, b, c]| [a.1, b.1, c.1]);
    Ok(Spawned::Parent { pid, channel: ours, recovery: theirs, stdio })
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

/// What the EXEC-mode child needs, all prepared before the clone; `failure` is its answer.
struct ExecChild<'a> {
    parent: libc::pid_t,
    setup: &'a Setup,
    channel: RawFd,
    inherit: &'a [RawFd],
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Set PR_SET_PDEATHSIG (rcluster workers; Node workers leave when their channel closes).
    die_with_parent: bool,
    /// The child's ends of a silent Node worker's stdio pipes, for 0, 1 and 2.
    stdio: Option<[RawFd; 3]>,
    /// (Stage, errno) when the child failed before or at exec; zeros when it exec'd.
    failure: [libc::c_int; 2],
}

/// The EXEC-mode child, between clone and exec. It shares the parent's memory, so it only
/// makes system calls (raw ones where glibc's wrapper would act for the whole "process",
/// like setuid's broadcast to every thread) on data prepared before the clone, and writes
/// nothing of the parent's but `failure`.
extern "C" fn exec_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ExecChild that exec_worker keeps alive until this child is gone.
    let c = unsafe { &mut *arg.cast::<ExecChild<'_>>() };
    reset_signal_handlers();
    if c.die_with_parent {
        die_with_parent(c.parent);
    }
    super::sched::reset_in_child();
    // SAFETY: system calls on integers and on the NUL-terminated arrays prepared before the
    // clone, which the suspended parent keeps alive.
    unsafe {
        // stdio too: some hosts (Node) mark 0-2 close-on-exec, and a worker without its
        // stdout would lose every line it prints.
        let stdio: &[RawFd] = if c.setup.devnull.is_none() { &[0, 1, 2] } else { &[] };
        for &fd in std::iter::once(&c.channel).chain(c.inherit.iter()).chain(stdio) {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
        }
        c.failure = match c.setup.apply() {
            Err((stage, errno)) => [stage as libc::c_int, errno],
            Ok(()) => {
                // Changing the uid or gid clears the parent-death signal: set it again.
                if c.die_with_parent {
                    die_with_parent(c.parent);
                }
                if let Some(pipes) = c.stdio {
                    for (target, fd) in pipes.into_iter().enumerate() {
                        libc::dup2(fd, target as RawFd); // the copy on 0-2 is not close-on-exec
                    }
                }
                libc::execve(c.path, c.argv, c.envp);
                [Stage::Exec as libc::c_int, *libc::__errno_location()]
            }
        };
        libc::_exit(127)
    }
}

/// In the EXEC-mode child, with every signal blocked: each handler the host installed goes
/// back to the default action (exec would do the same; before it, a handler would run on the
/// parent's memory), so do the primary's signals even if ignored, as the fork path does; then
/// every signal is unblocked. Raw rt_sigaction/rt_sigprocmask: the kernel's own structures,
/// no wrapper in between.
fn reset_signal_handlers() {
    /// The kernel's `struct sigaction` (x86_64, aarch64 and the other generic layouts).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    for sig in 1..=64 {
        let mut old = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
        // SAFETY: rt_sigaction with a NULL new action and a writable old one of the kernel's
        // layout; the size is that of the kernel's signal set (8 bytes).
        let got =
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, 8) };
        if got != 0 {
            continue; // SIGKILL/SIGSTOP have nothing to reset
        }
        let caught = old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN;
        if caught || signals::PRIMARY_SIGNALS.contains(&sig) {
            // SAFETY: as above, with a valid new action and no old one.
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), 8) };
        }
    }
    let none: u64 = 0;
    // SAFETY: rt_sigprocmask with a valid 8-byte set and no old set.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &none, std::ptr::null_mut::<u64>(), 8) };
}

/// Every signal blocked on the calling thread until dropped, which puts the old mask back.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn all() -> BlockedSignals {
        // SAFETY: zeroed sigset_t values are valid to fill; pthread_sigmask gets valid sets.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            BlockedSignals(old)
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: the mask pthread_sigmask gave us.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The EXEC-mode child's stack: its own mapping, with a guard page below it.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 64 * 1024;

    fn new() -> Result<ChildStack> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::last_os("mmap for the worker's start"));
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest GUARD bytes of our own mapping (64 KiB covers any page size).
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(Error::last_os("mprotect for the worker's start"));
        }
        Ok(stack)
    }

    /// The highest address (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The step of a worker's setup that failed (reported through the exec error pipe).
#[derive(Clone, Copy)]
#[repr(i32)]
enum Stage {
    Chdir = 1,
    Setgroups = 2,
    Setgid = 3,
    Setuid = 4,
    Stdio = 5,
    Exec = 6,
}

impl Stage {
    fn name(raw: libc::c_int) -> &'static str {
        match raw {
            1 => "chdir",
            2 => "setgroups",
            3 => "setgid",
            4 => "setuid",
            5 => "redirecting stdio to /dev/null",
            _ => "exec",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Stage::name(*self as libc::c_int))
    }
}

/// A worker's process settings, prepared before the fork so the child applies them with
/// async-signal-safe calls only.
struct Setup {
    cwd: Option<CString>,
    groups: Option<Vec<libc::gid_t>>,
    gid: Option<libc::gid_t>,
    uid: Option<libc::uid_t>,
    devnull: Option<OwnedFd>,
}

impl Setup {
    fn new(p: &WorkerProcess) -> Result<Setup> {
        let devnull = if p.silent {
            // SAFETY: a constant NUL-terminated path.
            Some(
                owned(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
                    .map_err(|e| Error::sys("open /dev/null", e))?,
            )
        } else {
            None
        };
        // Dropping to a user without naming groups drops the supplementary groups too.
        let groups = p.groups.clone().or_else(|| (p.uid.is_some() || p.gid.is_some()).then(Vec::new));
        Ok(Setup { cwd: p.cwd.clone(), groups, gid: p.gid, uid: p.uid, devnull })
    }

    /// Applies the settings in a freshly forked child: directory, groups, gid, uid (in that
    /// order: the uid last, while we may still change groups), stdio.
    ///
    /// # Safety
    /// Only async-signal-safe calls are made; call it in the child between fork and exec.
    unsafe fn apply(&self) -> std::result::Result<(), (Stage, libc::c_int)> {
        let errno = || *libc::__errno_location();
        if let Some(cwd) = &self.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err((Stage::Chdir, errno()));
            }
        }
        // Raw system calls: glibc's wrappers would signal every thread of the parent, whose
        // memory (and thread list) an EXEC-mode child shares; the child has one thread.
        if let Some(groups) = &self.groups {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                return Err((Stage::Setgroups, errno()));
            }
        }
        if let Some(gid) = self.gid {
            if libc::syscall(libc::SYS_setgid, gid) != 0 {
                return Err((Stage::Setgid, errno()));
            }
        }
        if let Some(uid) = self.uid {
            if libc::syscall(libc::SYS_setuid, uid) != 0 {
                return Err((Stage::Setuid, errno()));
            }
        }
        if let Some(null) = &self.devnull {
            for fd in 0..3 {
                if libc::dup2(null.as_raw_fd(), fd) < 0 {
                    return Err((Stage::Stdio, errno()));
                }
            }
        }
        Ok(())
    }
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
