//! The C calls for child processes (Node's `child_process`): `cluster_spawn`, the exec
//! conveniences, stdin, kill. Their events are CLUSTER_EVENT_CHILD_*, on the loop of the
//! running runtime (primary or worker), which must be started first.

use std::ffi::{c_char, CStr, CString};

use super::boundary::{bytes_arg, guard, non_null};
use super::types::*;
use crate::child::{Env, Options, Stdio};
use crate::error::{fail, Code, Error, Result};
use crate::runtime;

/// Node's default `maxBuffer`.
const DEFAULT_MAX_BUFFER: usize = 1 << 20;

/// A C string argument as a CString.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn cstring(p: *const c_char, what: &str) -> Result<CString> {
    non_null(p, what)?;
    // SAFETY: the caller's contract.
    Ok(unsafe { CStr::from_ptr(p) }.to_owned())
}

/// A NULL-terminated array of C strings (NULL: empty), at most 1<<20 entries.
///
/// # Safety
/// `list` is NULL or a NULL-terminated array of NUL-terminated strings valid for the call.
unsafe fn string_list(list: *const *const c_char, what: &str) -> Result<Vec<CString>> {
    let mut out = Vec::new();
    if list.is_null() {
        return Ok(out);
    }
    for i in 0..(1usize << 20) {
        // SAFETY: the caller's contract: entries up to the NULL one are readable.
        let p = unsafe { *list.add(i) };
        if p.is_null() {
            return Ok(out);
        }
        // SAFETY: as above.
        out.push(unsafe { CStr::from_ptr(p) }.to_owned());
    }
    fail(Code::Inval, format!("{what} has no NULL entry within 2^20 entries"))
}

/// The checked `Options` of `o` (NULL: every default), for `file`.
///
/// # Safety
/// `o` is NULL or a valid `cluster_spawn_options` whose pointers follow its contract.
unsafe fn options(o: *const cluster_spawn_options, file: CString) -> Result<Options> {
    let mut opts = Options::new(file);
    if o.is_null() {
        return Ok(opts);
    }
    // SAFETY: non-NULL, and the caller's contract.
    let o = unsafe { &*o };
    // SAFETY: the struct's contract for `args`, `env` and `cwd`.
    opts.args = unsafe { string_list(o.args, "args") }?;
    let env = unsafe { string_list(o.env, "env") }?;
    if let Some(bad) = env.iter().find(|e| !e.as_bytes().contains(&b'=')) {
        return fail(Code::Inval, format!("env entry {bad:?} is not NAME=value"));
    }
    opts.env = match o.env_mode {
        CLUSTER_ENV_INHERIT => Env::Inherit(env),
        CLUSTER_ENV_REPLACE => Env::Replace(env),
        other => return fail(Code::Inval, format!("env_mode {other} is not a CLUSTER_ENV_* value")),
    };
    opts.shell = o.shell;
    opts.cwd = if o.cwd.is_null() { None } else { Some(unsafe { cstring(o.cwd, "cwd") }?) };
    opts.uid = o.set_uid.then_some(o.uid);
    opts.gid = o.set_gid.then_some(o.gid);
    for (i, s) in o.stdio.iter().enumerate() {
        opts.stdio[i] = match s.mode {
            CLUSTER_STDIO_PIPE => Stdio::Pipe,
            CLUSTER_STDIO_INHERIT => Stdio::Inherit,
            CLUSTER_STDIO_IGNORE => Stdio::Ignore,
            CLUSTER_STDIO_FD => Stdio::Fd(s.fd),
            other => return fail(Code::Inval, format!("stdio[{i}].mode {other} is not a CLUSTER_STDIO_* value")),
        };
    }
    opts.timeout_ms = o.timeout_ms;
    if o.kill_signal < 0 || o.kill_signal > 64 {
        return fail(Code::Inval, format!("kill_signal {} is not a signal number", o.kill_signal));
    }
    if o.kill_signal != 0 {
        opts.kill_signal = o.kill_signal;
    }
    opts.detached = o.detached;
    if o.ipc {
        return fail(Code::Inval, "an IPC channel to a child (ipc) is not supported yet");
    }
    opts.max_buffer = Some(if o.max_buffer == 0 { DEFAULT_MAX_BUFFER } else { o.max_buffer });
    Ok(opts)
}

/// Starts a child process (Node's `child_process.spawn`); returns its id (>= 1, its own
/// series, never reused), or a CLUSTER_E_* code: a program that is missing or not executable,
/// or a setup step that fails (cwd, uid...), is CLUSTER_E_SYS with a sentence naming it.
/// Its output (pipes), its timeout and its end come as CLUSTER_EVENT_CHILD_* events on this
/// loop. It has exited only once CLUSTER_EVENT_CHILD_EXIT came; its exit is watched through a
/// pidfd (no SIGCHLD handler, no waitpid(-1): other children of this process are not touched).
/// Started on the loop thread (the one dispatching, or before any dispatch the one that
/// started the runtime), unless `detached`: a child dies with this process (and when the
/// runtime stops), and PR_SET_PDEATHSIG follows the thread that started it.
///
/// # Safety
/// `opts` is a valid `cluster_spawn_options` (see its fields' contracts).
#[no_mangle]
pub unsafe extern "C" fn cluster_spawn(opts: *const cluster_spawn_options) -> i32 {
    guard(|| {
        non_null(opts, "opts")?;
        // SAFETY: non-NULL, and the caller's contract.
        let file = unsafe { cstring((*opts).file, "opts->file") }?;
        // SAFETY: the caller's contract.
        let mut o = unsafe { options(opts, file) }?;
        o.max_buffer = None;
        runtime::spawn(&o).map(|id| id as i32)
    })
}

/// Runs `command` with `/bin/sh -c` (Node's `child_process.exec`), its stdin /dev/null, its
/// stdout and stderr collected (up to `max_buffer` each): one CLUSTER_EVENT_CHILD_EXIT brings
/// both (see that event). Returns the child's id. From `opts` (NULL: defaults): env,
/// env_mode, cwd, uid/gid, timeout_ms, kill_signal, detached, max_buffer; its file, args,
/// shell and stdio are this call's.
///
/// # Safety
/// `command` is a NUL-terminated string; `opts` is NULL or a valid `cluster_spawn_options`.
#[no_mangle]
pub unsafe extern "C" fn cluster_exec(command: *const c_char, opts: *const cluster_spawn_options) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let command = unsafe { cstring(command, "command") }?;
        // SAFETY: the caller's contract.
        let mut o = unsafe { options(opts, command) }?;
        o.args.clear();
        o.shell = true;
        exec(o)
    })
}

/// Runs `file` with the arguments `args` (NULL-terminated, after the program name; NULL:
/// none), no shell (Node's `child_process.execFile`): the arguments reach the program as they
/// are, whatever they hold. Otherwise as `cluster_exec`.
///
/// # Safety
/// `file` is a NUL-terminated string; `args` is NULL or a NULL-terminated array of them;
/// `opts` is NULL or a valid `cluster_spawn_options`.
#[no_mangle]
pub unsafe extern "C" fn cluster_exec_file(
    file: *const c_char,
    args: *const *const c_char,
    opts: *const cluster_spawn_options,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let file = unsafe { cstring(file, "file") }?;
        // SAFETY: the caller's contract.
        let mut o = unsafe { options(opts, file) }?;
        // SAFETY: the caller's contract.
        o.args = unsafe { string_list(args, "args") }?;
        o.shell = false;
        exec(o)
    })
}

fn exec(mut o: Options) -> Result<i32> {
    o.stdio = [Stdio::Ignore, Stdio::Pipe, Stdio::Pipe];
    if o.max_buffer.is_none() {
        o.max_buffer = Some(DEFAULT_MAX_BUFFER);
    }
    runtime::spawn(&o).map(|id| id as i32)
}

/// Writes `len` bytes to child `id`'s stdin (a pipe): what it cannot take now is queued and
/// written as it reads (up to 64 MiB waiting; past that CLUSTER_E_AGAIN, and a
/// CLUSTER_EVENT_CHILD_STDIN_DRAIN once what waits is written).
/// CLUSTER_E_CLOSED when its stdin is not a pipe or was closed. What is queued when the child
/// exits or closes its stdin is dropped. Any thread.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_child_write(id: u32, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { bytes_arg(data, len) }?;
        runtime::child_write(id, bytes).map(|()| 0)
    })
}

/// Closes child `id`'s stdin once what was written is through: it reads the end of its input.
#[no_mangle]
pub extern "C" fn cluster_child_close_stdin(id: u32) -> i32 {
    guard(|| runtime::child_close_stdin(id).map(|()| 0))
}

/// Sends `signal` to child `id` (through its pidfd: never to another process that took its
/// pid). 0 only checks that it runs. CLUSTER_E_CLOSED once it has exited, CLUSTER_E_INVAL for
/// an unknown id.
#[no_mangle]
pub extern "C" fn cluster_child_kill(id: u32, signal: i32) -> i32 {
    guard(|| {
        if !(0..=64).contains(&signal) {
            return Err(Error::new(Code::Inval, format!("{signal} is not a signal number")));
        }
        runtime::child_kill(id, signal).map(|()| 0)
    })
}
