//! A new worker's process between its start and `exec` (or its worker main, in FORK mode):
//! the part of the libc shim that runs in the child.
//!
//! An EXEC-mode child is a CLONE_VM|CLONE_VFORK clone, as posix_spawn(3) makes: it shares the
//! parent's memory (and a multi-threaded parent's allocator locks), so it may not allocate,
//! lock or call anything but system calls, on data prepared before the clone. nix's wrappers
//! are not made for that (its `execve` builds its pointer arrays in the child, its
//! `setuid`/`setgid`/`setgroups` are glibc's, which signal every thread of the parent to
//! change theirs too), so this path is raw libc: rt_sigaction, rt_sigprocmask, prctl,
//! getppid, sched_*, fcntl, chdir, setgroups/setgid/setuid, dup2, execve and _exit.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// The step of a worker's setup that failed (reported back through shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Stage {
    /// chdir(2).
    Chdir = 1,
    /// setgroups(2).
    Setgroups = 2,
    /// setgid(2).
    Setgid = 3,
    /// setuid(2).
    Setuid = 4,
    /// dup2(2) of /dev/null (or of a child's pipe, socket or given fd) onto stdio.
    Stdio = 5,
    /// execve(2).
    Exec = 6,
    /// setsid(2) (a detached child).
    Setsid = 7,
}

impl Stage {
    fn from_raw(raw: libc::c_int) -> Stage {
        match raw {
            1 => Stage::Chdir,
            2 => Stage::Setgroups,
            3 => Stage::Setgid,
            4 => Stage::Setuid,
            5 => Stage::Stdio,
            7 => Stage::Setsid,
            _ => Stage::Exec,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Chdir => "chdir",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Stdio => "redirecting stdio",
            Stage::Exec => "exec",
            Stage::Setsid => "setsid",
        })
    }
}

/// A worker's (or a child process's) settings, prepared before the start so the child applies
/// them with system calls only.
#[derive(Default)]
pub struct Setup {
    /// chdir here.
    pub cwd: Option<CString>,
    /// setgroups to these.
    pub groups: Option<Vec<libc::gid_t>>,
    /// setgid to this.
    pub gid: Option<libc::gid_t>,
    /// setuid to this.
    pub uid: Option<libc::uid_t>,
    /// /dev/null, opened read-write, for a silent worker's stdio.
    pub devnull: Option<OwnedFd>,
    /// Per stream (stdin, stdout, stderr): a descriptor to dup2 onto it (a silent Node
    /// worker's pipe end; a child process's pipe end, socket end, /dev/null or a descriptor its
    /// parent gave), numbered above 2 so no dup2 overwrites a later one's source; None leaves
    /// the stream as inherited.
    pub stdio: [Option<RawFd>; 3],
    /// setsid(2) first: a detached child leads a session (and process group) of its own.
    pub new_session: bool,
}

impl Setup {
    /// Applies the settings in a freshly started child: session, directory, groups, gid, uid
    /// (in that order: the uid last, while we may still change groups), stdio.
    ///
    /// # Safety
    /// Call it only in a child between its start and exec (or its worker main): it changes
    /// the process's identity and its stdio.
    pub unsafe fn apply(&self) -> Result<(), (Stage, Errno)> {
        // SAFETY: system calls on integers, and on a CString and a Vec prepared before the start
        // and alive until the child execs or exits.
        unsafe {
            if self.new_session && libc::setsid() < 0 {
                return Err((Stage::Setsid, Errno::last()));
            }
            if let Some(cwd) = &self.cwd {
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return Err((Stage::Chdir, Errno::last()));
                }
            }
            // Raw system calls: glibc's wrappers would signal every thread of the parent, whose
            // memory (and thread list) an EXEC-mode child shares; the child has one thread.
            if let Some(groups) = &self.groups {
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                    return Err((Stage::Setgroups, Errno::last()));
                }
            }
            if let Some(gid) = self.gid {
                if libc::syscall(libc::SYS_setgid, gid) != 0 {
                    return Err((Stage::Setgid, Errno::last()));
                }
            }
            if let Some(uid) = self.uid {
                if libc::syscall(libc::SYS_setuid, uid) != 0 {
                    return Err((Stage::Setuid, Errno::last()));
                }
            }
            if let Some(null) = &self.devnull {
                for fd in 0..3 {
                    if libc::dup2(null.as_raw_fd(), fd) < 0 {
                        return Err((Stage::Stdio, Errno::last()));
                    }
                }
            }
            // dup2 clears FD_CLOEXEC on the copy: the stream survives exec, the source not.
            for (target, source) in (0..).zip(self.stdio) {
                if let Some(source) = source {
                    if libc::dup2(source, target) < 0 {
                        return Err((Stage::Stdio, Errno::last()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// In a fresh child: die with the primary (PR_SET_PDEATHSIG), and if it is already gone (the
/// signal would never come), exit now. Async-signal-safe.
pub fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl and getppid take integers; _exit never returns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// Leaves a child at once with `code`, running none of the parent's atexit handlers.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit(2) ends the process; nothing of ours runs after it.
    unsafe { libc::_exit(code) }
}

/// What the EXEC-mode child needs, all prepared before the clone.
pub struct ExecChild<'a> {
    /// The primary's pid (the child dies with it).
    pub parent: libc::pid_t,
    /// Its process settings.
    pub setup: &'a Setup,
    /// Fds to keep across exec (CLOEXEC cleared): its channel end, SHARED listeners.
    pub keep: &'a [RawFd],
    /// The signals to set back to their default action even if ignored (the primary's own).
    pub reset_signals: &'a [libc::c_int],
    /// The scheduling class to go back to if the parent thread runs under SCHED_BATCH.
    pub sched_before: Option<libc::c_int>,
    /// The program.
    pub path: &'a std::ffi::CStr,
    /// Its argv, NULL-terminated.
    pub argv: &'a [*const libc::c_char],
    /// Its environment, NULL-terminated.
    pub envp: &'a [*const libc::c_char],
    /// Set PR_SET_PDEATHSIG (rcluster workers; Node workers leave when their channel closes).
    pub die_with_parent: bool,
}

/// How an EXEC-mode start failed.
#[derive(Debug)]
pub enum ExecError {
    /// The clone or its stack: nothing started.
    Start(&'static str, Errno),
    /// The child failed at `Stage` (it was reaped).
    Child(Stage, Errno),
}

/// The child's half: `ExecChild` and where it reports a failure.
struct Shared<'a> {
    child: &'a ExecChild<'a>,
    /// (Stage, errno) when the child failed before or at exec; zeros when it exec'd.
    failure: [libc::c_int; 2],
}

/// Starts `child` the way posix_spawn(3) does: clone(2) with CLONE_VM|CLONE_VFORK, on a stack
/// of its own. This thread is suspended until the child has exec'd or exited, and the child
/// reports a failure by writing it into memory the two share: nothing waits for an EOF on a
/// pipe, which another fork of this process (a host thread that forks without exec, and so
/// holds every descriptor open at that moment) could hold up. Every signal stays blocked on
/// this thread until the child has reset the handlers it inherited: a host's handler must
/// never run in the child, which shares our memory. The child's pid, or why it failed (a
/// failed child is reaped).
pub fn clone_exec(child: &ExecChild<'_>) -> Result<libc::pid_t, ExecError> {
    assert!(child.argv.last().is_some_and(|p| p.is_null()) && child.envp.last().is_some_and(|p| p.is_null()));
    let stack = ChildStack::new()?;
    let mut shared = Shared { child, failure: [0; 2] };
    let pid = {
        let _blocked = BlockedSignals::all();
        // SAFETY: the child runs `exec_child` on its own stack with a pointer to `shared`,
        // which outlives it (CLONE_VFORK: clone returns once the child has exec'd or exited).
        // CLONE_VM shares memory, not descriptors (no CLONE_FILES) nor signal handlers (no
        // CLONE_SIGHAND): what the child changes there is its own. SIGCHLD: reaped as a child.
        unsafe {
            libc::clone(
                exec_child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut shared as *mut Shared<'_>).cast(),
            )
        }
    };
    let pid = Errno::result(pid).map_err(|e| ExecError::Start("clone", e))?;
    // SAFETY: reading our own local, which the child may have written before it exited.
    let failure = unsafe { std::ptr::read_volatile(&shared.failure) };
    if failure[0] != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has already exited (CLONE_VFORK).
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(ExecError::Child(Stage::from_raw(failure[0]), Errno::from_raw(failure[1])));
    }
    Ok(pid)
}

/// The EXEC-mode child, between clone and exec. It shares the parent's memory, so it only
/// makes system calls (raw ones where glibc's wrapper would act for the whole "process",
/// like setuid's broadcast to every thread) on data prepared before the clone, and writes
/// nothing of the parent's but `failure`.
extern "C" fn exec_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the Shared that clone_exec keeps alive until this child is gone.
    let shared = unsafe { &mut *arg.cast::<Shared<'_>>() };
    let c = shared.child;
    reset_signal_handlers(c.reset_signals);
    if c.die_with_parent {
        die_with_parent(c.parent);
    }
    if let Some(before) = c.sched_before {
        if sched_get() == libc::SCHED_BATCH {
            sched_set(before).ok();
        }
    }
    // stdio too: some hosts (Node) mark 0-2 close-on-exec, and a worker without its stdout
    // would lose every line it prints.
    let stdio: &[RawFd] = if c.setup.devnull.is_none() { &[0, 1, 2] } else { &[] };
    for &fd in c.keep.iter().chain(stdio) {
        // SAFETY: fcntl on integers.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
        }
    }
    // SAFETY: this is the child between clone and exec.
    shared.failure = match unsafe { c.setup.apply() } {
        Err((stage, errno)) => [stage as libc::c_int, errno as libc::c_int],
        Ok(()) => {
            // Changing the uid or gid clears the parent-death signal: set it again.
            if c.die_with_parent {
                die_with_parent(c.parent);
            }
            // SAFETY: NUL-terminated arrays of NUL-terminated strings prepared before the
            // clone, which the suspended parent keeps alive.
            unsafe { libc::execve(c.path.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr()) };
            [Stage::Exec as libc::c_int, Errno::last_raw()]
        }
    };
    exit_now(127)
}

/// In the EXEC-mode child, with every signal blocked: each handler the host installed goes
/// back to the default action (exec would do the same; before it, a handler would run on the
/// parent's memory), so do `also` even if ignored, as the fork path does; then every signal
/// is unblocked. Raw rt_sigaction/rt_sigprocmask: the kernel's own structures, no wrapper in
/// between.
fn reset_signal_handlers(also: &[libc::c_int]) {
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
        if caught || also.contains(&sig) {
            // SAFETY: as above, with a valid new action and no old one.
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), 8) };
        }
    }
    let none: u64 = 0;
    // SAFETY: rt_sigprocmask with a valid 8-byte set and no old set.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &none, std::ptr::null_mut::<u64>(), 8) };
}

/// Every signal blocked on the calling thread until dropped, which puts the old mask back.
struct BlockedSignals(nix::sys::signal::SigSet);

impl BlockedSignals {
    fn all() -> BlockedSignals {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old)).ok();
        BlockedSignals(old)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None).ok();
    }
}

/// The EXEC-mode child's stack: its own mapping, with a guard page below it.
struct ChildStack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl ChildStack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 64 * 1024;

    fn new() -> Result<ChildStack, ExecError> {
        use nix::sys::mman::{mmap_anonymous, mprotect, MapFlags, ProtFlags};
        let len = Self::SIZE + Self::GUARD;
        let size = std::num::NonZeroUsize::new(len).expect("not zero");
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }
        .map_err(|e| ExecError::Start("mmap for the worker's start", e))?;
        let stack = ChildStack { base, len };
        // SAFETY: the lowest GUARD bytes of our own mapping (64 KiB covers any page size).
        unsafe { mprotect(base, Self::GUARD, ProtFlags::PROT_NONE) }
            .map_err(|e| ExecError::Start("mprotect for the worker's start", e))?;
        Ok(stack)
    }

    /// The highest address (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, which is page-aligned.
        unsafe { self.base.as_ptr().cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child has exec'd or exited).
        unsafe { nix::sys::mman::munmap(self.base, self.len) }.ok();
    }
}

/// The calling thread's scheduling policy (sched_getscheduler(2); -1 on error).
pub fn sched_get() -> libc::c_int {
    // SAFETY: sched_getscheduler takes a pid (0: the calling thread).
    unsafe { libc::sched_getscheduler(0) }
}

/// Sets the calling thread's scheduling policy (priority 0: SCHED_OTHER and SCHED_BATCH).
/// Async-signal-safe.
pub fn sched_set(policy: libc::c_int) -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; 0 names the calling thread.
    Errno::result(unsafe { libc::sched_setscheduler(0, policy, &param) }).map(drop)
}
