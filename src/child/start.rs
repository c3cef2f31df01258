//! Starting a child process: its options, its stdio, its program resolved on PATH, and the
//! posix_spawn-style start that EXEC-mode workers use (`sys::raw::child::clone_exec`).
//!
//! Everything the child needs (argv, envp, the descriptors it gets as stdio) is made here,
//! before the clone; the child itself only makes system calls.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::OFlag;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use crate::error::{fail, Code, Error, Result};
use crate::net::activation;
use crate::sys::{self, raw::child};
use crate::worker::env;

/// What one of a child's stdin, stdout and stderr is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// A pipe to this process: output comes as CHILD_STDOUT/CHILD_STDERR events (or into the
    /// buffers of an exec), stdin is written with `Children::write`.
    Pipe,
    /// This process's own.
    Inherit,
    /// /dev/null.
    Ignore,
    /// A descriptor of the caller's (duplicated at the start; the caller keeps its own).
    Fd(RawFd),
}

/// How the child's environment is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Env {
    /// This process's environment, with these `NAME=value` entries added (replacing the
    /// variables of the same names).
    Inherit(Vec<CString>),
    /// Exactly these `NAME=value` entries.
    Replace(Vec<CString>),
}

/// Everything a child is started with (`cluster_spawn_options`, checked).
#[derive(Clone, Debug)]
pub struct Options {
    /// The program (looked up on PATH when it has no `/`), or with `shell` the command line.
    pub file: CString,
    /// Its arguments, without the program name (argv[0] is `file`). With `shell`, appended to
    /// the command line, separated by spaces, as Node's `shell: true` does.
    pub args: Vec<CString>,
    /// Its environment.
    pub env: Env,
    /// chdir here first.
    pub cwd: Option<CString>,
    /// setuid to this.
    pub uid: Option<u32>,
    /// setgid to this.
    pub gid: Option<u32>,
    /// Run `file` (and `args`) as a command line through `/bin/sh -c`.
    pub shell: bool,
    /// stdin, stdout, stderr.
    pub stdio: [Stdio; 3],
    /// Kill it with `kill_signal` after this many milliseconds (0: never).
    pub timeout_ms: u32,
    /// The signal of the timeout and of an exec's maxBuffer (SIGTERM by default).
    pub kill_signal: i32,
    /// Leave it running when this process dies, in a session of its own.
    pub detached: bool,
    /// An exec: its stdout and stderr are collected, up to this many bytes each, and come in
    /// its CHILD_EXIT event instead of as CHILD_STDOUT/CHILD_STDERR events.
    pub max_buffer: Option<usize>,
}

impl Options {
    /// Options for `file` with every other setting at Node's default (pipes, inherited
    /// environment, SIGTERM).
    pub fn new(file: CString) -> Options {
        Options {
            file,
            args: Vec::new(),
            env: Env::Inherit(Vec::new()),
            cwd: None,
            uid: None,
            gid: None,
            shell: false,
            stdio: [Stdio::Pipe; 3],
            timeout_ms: 0,
            kill_signal: libc::SIGTERM,
            detached: false,
            max_buffer: None,
        }
    }

    /// What events and errors call the child: its program, or its command line.
    pub fn name(&self) -> String {
        self.file.to_string_lossy().into_owned()
    }
}

/// A started child: its pid and pidfd, and this process's ends of its pipes.
pub struct Started {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Its pidfd (readable when it exits).
    pub pidfd: OwnedFd,
    /// Our end of its stdin (a stream socket: writes use MSG_NOSIGNAL, so a child that has
    /// gone gives EPIPE instead of killing this process with SIGPIPE), non-blocking.
    pub stdin: Option<OwnedFd>,
    /// Our ends of its stdout and stderr pipes, non-blocking.
    pub output: [Option<OwnedFd>; 2],
}

/// The variables that make a process an rcluster worker (or a Node one, or a socket-activated
/// service): a child of a worker must not take itself for one.
fn not_inherited(name: &[u8]) -> bool {
    const NODE: [&str; 3] = ["NODE_CHANNEL_FD", "NODE_UNIQUE_ID", "NODE_CHANNEL_SERIALIZATION_MODE"];
    env::ALL.iter().chain(&activation::VARS).chain(&NODE).any(|n| n.as_bytes() == name)
}

fn var_name(entry: &[u8]) -> &[u8] {
    entry.split(|&b| b == b'=').next().unwrap_or(entry)
}

/// The child's environment as `NAME=value` strings.
fn environment(spec: &Env) -> Result<Vec<CString>> {
    let added = match spec {
        Env::Replace(all) => return Ok(all.clone()),
        Env::Inherit(added) => added,
    };
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let name = k.as_bytes();
        if not_inherited(name) || added.iter().any(|a| var_name(a.as_bytes()) == name) {
            continue;
        }
        let mut kv = name.to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        // An entry holding a NUL cannot be passed on (the kernel would cut it there).
        if let Ok(c) = CString::new(kv) {
            out.push(c);
        }
    }
    out.extend(added.iter().cloned());
    Ok(out)
}

/// `file` as execve needs it: itself when it names a path, else the first executable regular
/// file of that name in the child's PATH (this process's when the child's environment has
/// none; `/usr/local/bin:/usr/bin:/bin` when neither has one), as execvp(3) searches.
fn resolve(file: &CStr, envp: &[CString]) -> Result<CString> {
    let bytes = file.to_bytes();
    if bytes.is_empty() {
        return fail(Code::Inval, "spawn: the program is an empty string");
    }
    if bytes.contains(&b'/') {
        return Ok(file.to_owned());
    }
    let from_env = envp.iter().find_map(|e| e.as_bytes().strip_prefix(b"PATH=").map(<[u8]>::to_vec));
    let path = from_env
        .or_else(|| std::env::var_os("PATH").map(|p| p.as_bytes().to_vec()))
        .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
    for dir in path.split(|&b| b == b':') {
        // An empty entry is the working directory, as for execvp.
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(bytes);
        let candidate = std::path::PathBuf::from(OsStr::from_bytes(&candidate));
        let executable = nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok();
        if executable && candidate.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(CString::new(candidate.into_os_string().into_vec()).expect("no NUL: built from CStrs"));
        }
    }
    Err(Error::new(
        Code::Sys,
        format!("spawn {}: not found in PATH (No such file or directory)", file.to_string_lossy()),
    ))
}

/// The program and argv: `file args...`, or `/bin/sh -c "file args..."`.
fn command(opts: &Options, envp: &[CString]) -> Result<(CString, Vec<CString>)> {
    if opts.shell {
        let mut line = opts.file.as_bytes().to_vec();
        for a in &opts.args {
            line.push(b' ');
            line.extend_from_slice(a.as_bytes());
        }
        let sh = c"/bin/sh".to_owned();
        let line = CString::new(line).expect("no NUL: joined from CStrings");
        return Ok((sh.clone(), vec![sh, c"-c".to_owned(), line]));
    }
    let path = resolve(&opts.file, envp)?;
    let mut argv = vec![opts.file.clone()];
    argv.extend(opts.args.iter().cloned());
    Ok((path, argv))
}

/// A pipe for one output stream: (our read end, non-blocking; the child's write end).
fn output_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let above = |fd| sys::above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    let (r, w) = (above(r)?, above(w)?);
    sys::set_nonblocking(&r, true).map_err(|e| Error::sys("fcntl(O_NONBLOCK)", e))?;
    Ok((r, w))
}

/// The stdin stream: (our end, non-blocking; the child's end). A socket pair rather than a
/// pipe, so writes can say MSG_NOSIGNAL.
fn input_socket() -> Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_STREAM)", e))?;
    let above = |fd| sys::above_stdio(fd).map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e));
    let (ours, theirs) = (above(ours)?, above(theirs)?);
    sys::set_nonblocking(&ours, true).map_err(|e| Error::sys("fcntl(O_NONBLOCK)", e))?;
    // Nothing is read from a child's stdin: what it might write there is not kept.
    socket::shutdown(ours.as_raw_fd(), socket::Shutdown::Read).ok();
    Ok((ours, theirs))
}

/// The signals a child starts with at their default action, ignored or not (as libuv and
/// Node start children): every one, SIGKILL and SIGSTOP being refused by the kernel.
const ALL_SIGNALS: [libc::c_int; 64] = {
    let mut all = [0; 64];
    let mut i = 0;
    while i < 64 {
        all[i] = i as libc::c_int + 1;
        i += 1;
    }
    all
};

/// Starts a child as `opts` say. A program that is missing, not executable, or a setup step
/// that fails (chdir, setuid...) is this call's error, naming the program.
pub fn start(opts: &Options, sched_before: Option<libc::c_int>) -> Result<Started> {
    let envp = environment(&opts.env)?;
    let (path, argv) = command(opts, &envp)?;
    // What the child gets as each stream (kept open until it has exec'd), and our ends.
    let mut theirs: Vec<OwnedFd> = Vec::new();
    let mut stdio: [Option<RawFd>; 3] = [None; 3];
    let mut stdin = None;
    let mut output: [Option<OwnedFd>; 2] = [None, None];
    let mut devnull: Option<OwnedFd> = None;
    for (i, mode) in opts.stdio.iter().enumerate() {
        let given = match *mode {
            Stdio::Inherit => continue,
            Stdio::Pipe if i == 0 => {
                let (ours, child_end) = input_socket()?;
                stdin = Some(ours);
                child_end
            }
            Stdio::Pipe => {
                let (ours, child_end) = output_pipe()?;
                output[i - 1] = Some(ours);
                child_end
            }
            Stdio::Ignore => {
                if devnull.is_none() {
                    let fd =
                        nix::fcntl::open(c"/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                            .and_then(sys::above_stdio)
                            .map_err(|e| Error::sys("open /dev/null", e))?;
                    devnull = Some(fd);
                }
                let null = devnull.as_ref().expect("just opened").as_fd();
                sys::dup_cloexec(null).map_err(|e| Error::sys("dup of /dev/null", e))?
            }
            Stdio::Fd(fd) => {
                if fd < 0 {
                    return fail(Code::Inval, format!("stdio[{i}]: fd {fd} is not a descriptor"));
                }
                // SAFETY: the caller's descriptor, open for the duration of this call (the
                // API's contract); a closed number gives EBADF. The duplicate is numbered
                // above 2, so no stream's dup2 in the child overwrites another's source.
                sys::dup_cloexec(unsafe { BorrowedFd::borrow_raw(fd) })
                    .map_err(|e| Error::sys(format!("stdio[{i}]: dup of fd {fd}"), e))?
            }
        };
        stdio[i] = Some(given.as_raw_fd());
        theirs.push(given);
    }
    let setup = child::Setup {
        cwd: opts.cwd.clone(),
        // Dropping to a user or group drops the supplementary groups too (as libuv does).
        groups: (opts.uid.is_some() || opts.gid.is_some()).then(Vec::new),
        gid: opts.gid,
        uid: opts.uid,
        devnull: None,
        stdio,
        new_session: opts.detached,
    };
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let start = child::ExecChild {
        parent: sys::getpid(),
        setup: &setup,
        keep: &[],
        reset_signals: &ALL_SIGNALS,
        sched_before,
        path: &path,
        argv: &argv_ptrs,
        envp: &env_ptrs,
        die_with_parent: !opts.detached,
    };
    sys::flush_stdio();
    let pid = match child::clone_exec(&start) {
        Ok(pid) => pid,
        Err(child::ExecError::Start(what, e)) => return Err(Error::sys(format!("spawn {}: {what}", opts.name()), e)),
        Err(child::ExecError::Child(child::Stage::Exec, e)) => {
            return Err(Error::sys(format!("spawn {}", path.to_string_lossy()), e))
        }
        Err(child::ExecError::Child(stage, e)) => return Err(Error::sys(format!("spawn {}: {stage}", opts.name()), e)),
    };
    drop(theirs);
    let Some(pidfd) = sys::pidfd_open(pid) else {
        // Without a pidfd (a kernel before 5.3) its exit could not be watched: do not leave it.
        sys::kill(pid, libc::SIGKILL).ok();
        while sys::try_reap(pid).is_ok_and(|s| s.is_none()) {
            std::thread::yield_now();
        }
        return fail(Code::Sys, format!("spawn {}: pidfd_open failed (Linux 5.3 or later is needed)", opts.name()));
    };
    Ok(Started { pid, pidfd, stdin, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_childs_path() {
        let sh = resolve(c"sh", &[c"PATH=/nonexistent:/bin:/usr/bin".to_owned()]).unwrap();
        assert!(sh.as_bytes().ends_with(b"/sh"), "{sh:?}");
        let err = resolve(c"no-such-program-here", &[c"PATH=/bin".to_owned()]).unwrap_err();
        assert!(err.message.contains("no-such-program-here"), "{}", err.message);
        assert_eq!(resolve(c"./x", &[]).unwrap().as_bytes(), b"./x");
    }

    #[test]
    fn worker_variables_are_not_inherited() {
        assert!(not_inherited(b"RCLUSTER_WORKER_ID"));
        assert!(not_inherited(b"NODE_CHANNEL_FD"));
        assert!(!not_inherited(b"PATH"));
        let env = environment(&Env::Inherit(vec![c"PATH=/x".to_owned()])).unwrap();
        let paths: Vec<_> = env.iter().filter(|e| e.as_bytes().starts_with(b"PATH=")).collect();
        assert_eq!(paths, [&c"PATH=/x".to_owned()]);
    }

    #[test]
    fn a_shell_command_line_takes_the_arguments() {
        let mut o = Options::new(c"echo".to_owned());
        o.shell = true;
        o.args = vec![c"a b".to_owned()];
        let (path, argv) = command(&o, &[]).unwrap();
        assert_eq!(path.as_bytes(), b"/bin/sh");
        assert_eq!(argv[2].as_bytes(), b"echo a b");
    }
}
