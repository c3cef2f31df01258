//! Child processes on the loop, as Node's `child_process` and libuv's `uv_spawn`: started with
//! pipes (or inherited, ignored, given descriptors), their output as events, their stdin
//! written without blocking, their exit from a pidfd (no SIGCHLD handler, no `waitpid(-1)`:
//! the host's own children and the primary's workers are never reaped here), killed after a
//! timeout, killed with this process unless detached.
//!
//! The table lives in the side loop (`sideloop`), whose reactor watches each child's pidfd as
//! `Source::Child(id)` and its pipes as `Source::Stdio(id << 2 | stream)`.
//!
//! A child's CHILD_EXIT comes once it has exited *and* its stdout and stderr pipes have
//! reached their end (Node's `'close'`), so every byte of output comes before it. A grandchild
//! that keeps the pipes open keeps the CHILD_EXIT waiting until it closes them.

pub mod start;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

use crate::error::{fail, Code, Error, Result};
use crate::event::{Event, EventKind};
use crate::event_loop::{Reactor, Source, TimerId};
use crate::sys::{self, ExitStatus};

pub use start::{Env, Options, Stdio};

/// The most bytes read from one pipe in one loop turn (the other sources get their turn).
const READS_PER_TURN: usize = 16;
/// The size of one read, and of the largest CHILD_STDOUT/CHILD_STDERR event.
const CHUNK: usize = 64 * 1024;
/// The most bytes waiting to be written to one child's stdin: past it `write` says `Again`.
pub const STDIN_QUEUE_MAX: usize = 64 << 20;
/// Child ids are below this (they go into `Source::Stdio` with two bits for the stream).
const MAX_ID: u32 = 1 << 30;

/// One running child.
struct Child {
    pid: libc::pid_t,
    name: String,
    /// None once reaped (and unwatched).
    pidfd: Option<OwnedFd>,
    stdin: Option<Stdin>,
    /// Our ends of stdout and stderr, None once at their end.
    output: [Option<OwnedFd>; 2],
    /// An exec's collected output and its limit.
    buffered: Option<Buffered>,
    status: Option<ExitStatus>,
    timer: Option<TimerId>,
    timeout_ms: u32,
    kill_signal: i32,
    detached: bool,
    /// This process signalled it (timeout, maxBuffer, `kill`).
    killed: bool,
}

/// What is to be written to a child's stdin.
struct Stdin {
    fd: OwnedFd,
    queue: VecDeque<u8>,
    /// Close once the queue is written (`close_stdin`).
    closing: bool,
    /// Watched for writability (the queue is not empty).
    watching: bool,
    /// A write was refused (`Again`) since the queue last emptied: its emptying is an event.
    refused: bool,
}

/// An exec's stdout and stderr, each up to `max` bytes.
struct Buffered {
    max: usize,
    out: [Vec<u8>; 2],
}

/// The children of this process started through rcluster.
#[derive(Default)]
pub struct Children {
    table: HashMap<u32, Child>,
    next_id: u32,
    events: Vec<Event>,
}

fn stdio_source(id: u32, stream: u32) -> Source {
    Source::Stdio(id << 2 | stream)
}

impl Children {
    /// Starts a child and watches it on `reactor`; returns its id (>= 1, never reused).
    pub fn spawn(&mut self, reactor: &mut Reactor<u32>, opts: &Options, sched: Option<libc::c_int>) -> Result<u32> {
        if self.next_id + 1 >= MAX_ID {
            return fail(Code::State, "this process has started 2^30 children: no child id is left");
        }
        let started = start::start(opts, sched)?;
        self.next_id += 1;
        let id = self.next_id;
        let mut child = Child {
            pid: started.pid,
            name: opts.name(),
            pidfd: None,
            stdin: None,
            output: [None, None],
            buffered: opts.max_buffer.map(|max| Buffered { max, out: [Vec::new(), Vec::new()] }),
            status: None,
            timer: None,
            timeout_ms: opts.timeout_ms,
            kill_signal: opts.kill_signal,
            detached: opts.detached,
            killed: false,
        };
        // From here the child runs: a failure to watch it kills it, so none is left unseen.
        let pidfd = child.pidfd.insert(started.pidfd);
        let watched = (|| {
            reactor.add(&*pidfd, Source::Child(id), true, false)?;
            for (i, out) in started.output.into_iter().enumerate() {
                if let Some(fd) = out {
                    reactor.add(&fd, stdio_source(id, i as u32 + 1), true, false)?;
                    child.output[i] = Some(fd);
                }
            }
            Ok::<(), Error>(())
        })();
        if let Err(e) = watched {
            child.unwatch(reactor);
            sys::kill(child.pid, libc::SIGKILL).ok();
            reap_now(child.pid, child.pidfd.as_ref());
            return Err(e);
        }
        child.stdin = started.stdin.map(|fd| Stdin {
            fd,
            queue: VecDeque::new(),
            closing: false,
            watching: false,
            refused: false,
        });
        if opts.timeout_ms > 0 {
            child.timer = Some(reactor.add_timer(sys::monotonic_ms() + u64::from(opts.timeout_ms), id));
        }
        log::debug!("child {id}: started {} (pid {})", child.name, child.pid);
        self.table.insert(id, child);
        Ok(id)
    }

    /// The events made since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// How many children are known (running, or exited with their CHILD_EXIT not made yet).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no child is known.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn get(&mut self, id: u32) -> Result<&mut Child> {
        match self.table.get_mut(&id) {
            Some(c) => Ok(c),
            None => fail(Code::Inval, format!("no child with id {id} (never started, or its CHILD_EXIT has come)")),
        }
    }

    /// Queues `data` for the child's stdin and writes what it can now; the rest is written as
    /// the child reads.
    pub fn write(&mut self, reactor: &mut Reactor<u32>, id: u32, data: &[u8]) -> Result<()> {
        let child = self.get(id)?;
        let Some(stdin) = child.stdin.as_mut() else {
            return fail(Code::Closed, format!("child {id}: its stdin is not a pipe, or was closed"));
        };
        if stdin.closing {
            return fail(Code::Closed, format!("child {id}: its stdin is being closed"));
        }
        if stdin.queue.len() + data.len() > STDIN_QUEUE_MAX {
            stdin.refused = true;
            return fail(
                Code::Again,
                format!(
                    "child {id}: {} bytes wait for its stdin already; write again once it has read",
                    stdin.queue.len()
                ),
            );
        }
        stdin.queue.extend(data);
        self.flush_stdin(reactor, id);
        Ok(())
    }

    /// Closes the child's stdin once what was written is through (the child reads EOF).
    pub fn close_stdin(&mut self, reactor: &mut Reactor<u32>, id: u32) -> Result<()> {
        let child = self.get(id)?;
        match child.stdin.as_mut() {
            Some(stdin) => stdin.closing = true,
            None => return Ok(()),
        }
        self.flush_stdin(reactor, id);
        Ok(())
    }

    /// Signals the child (`signal` 0 only checks that it runs).
    pub fn kill(&mut self, id: u32, signal: i32) -> Result<()> {
        let child = self.get(id)?;
        let Some(pidfd) = child.pidfd.as_ref().filter(|_| child.status.is_none()) else {
            return fail(Code::Closed, format!("child {id} has exited"));
        };
        sys::pidfd_send_signal(pidfd, signal)
            .map_err(|e| Error::sys(format!("kill child {id} with signal {signal}"), e))?;
        if signal != 0 {
            child.killed = true;
        }
        Ok(())
    }

    /// Handles a readiness report of the side loop's `Source::Child` or `Source::Stdio`.
    pub fn on_ready(&mut self, reactor: &mut Reactor<u32>, source: Source, writable: bool) {
        match source {
            Source::Child(id) => self.on_exit(reactor, id),
            Source::Stdio(key) => {
                let (id, stream) = (key >> 2, key & 3);
                if stream == 0 && writable {
                    self.flush_stdin(reactor, id);
                } else if stream > 0 {
                    self.read_output(reactor, id, stream as usize - 1);
                }
            }
            _ => {}
        }
    }

    /// A timer of `id` fired: its timeout.
    pub fn on_timer(&mut self, id: u32) {
        let Some(child) = self.table.get_mut(&id) else { return };
        child.timer = None;
        if child.status.is_some() {
            return;
        }
        let sentence = format!(
            "child {id} ({}) timed out after {} ms: killed with signal {}",
            child.name, child.timeout_ms, child.kill_signal
        );
        child.signal_it();
        self.events.push(child_error(id, child.pid, sentence));
    }

    fn flush_stdin(&mut self, reactor: &mut Reactor<u32>, id: u32) {
        let Some(child) = self.table.get_mut(&id) else { return };
        let Some(stdin) = child.stdin.as_mut() else { return };
        let mut broken = false;
        while !stdin.queue.is_empty() {
            let (front, _) = stdin.queue.as_slices();
            match socket::send(stdin.fd.as_raw_fd(), front, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
                Ok(n) => drop(stdin.queue.drain(..n)),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    // EPIPE: the child closed its stdin or exited; what waits is dropped.
                    log::debug!("child {id}: writing its stdin: {e}");
                    broken = true;
                    break;
                }
            }
        }
        let want = !stdin.queue.is_empty() && !broken;
        if stdin.queue.is_empty() && stdin.refused && !broken {
            stdin.refused = false;
            let mut ev = Event::new(EventKind::ChildStdinDrain, id);
            ev.pid = child.pid;
            self.events.push(ev);
        }
        if broken || (stdin.closing && stdin.queue.is_empty()) {
            if stdin.watching {
                reactor.remove(&stdin.fd);
            }
            child.stdin = None;
            return;
        }
        if want != stdin.watching {
            let done = if want {
                reactor.add(&stdin.fd, stdio_source(id, 0), false, true)
            } else {
                reactor.remove(&stdin.fd);
                Ok(())
            };
            match done {
                Ok(()) => stdin.watching = want,
                Err(e) => log::error!("child {id}: watching its stdin: {e}"),
            }
        }
    }

    fn read_output(&mut self, reactor: &mut Reactor<u32>, id: u32, stream: usize) {
        let Some(child) = self.table.get_mut(&id) else { return };
        let mut at_end = false;
        let mut over = false;
        if let Some(fd) = child.output[stream].as_ref() {
            let mut buf = vec![0u8; CHUNK];
            for _ in 0..READS_PER_TURN {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => {
                        at_end = true;
                        break;
                    }
                    Ok(n) => match child.buffered.as_mut() {
                        Some(b) => {
                            let room = b.max.saturating_sub(b.out[stream].len());
                            b.out[stream].extend_from_slice(&buf[..n.min(room)]);
                            if n > room {
                                over = true;
                                break;
                            }
                        }
                        None => {
                            let kind = if stream == 0 { EventKind::ChildStdout } else { EventKind::ChildStderr };
                            let mut ev = Event::new(kind, id);
                            ev.pid = child.pid;
                            ev.data = buf[..n].to_vec().into();
                            self.events.push(ev);
                        }
                    },
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => break,
                    Err(e) => {
                        log::warn!("child {id}: reading its {}: {e}", if stream == 0 { "stdout" } else { "stderr" });
                        at_end = true;
                        break;
                    }
                }
            }
        }
        if over {
            // Node's maxBuffer: the child is killed, its output kept up to the limit.
            let name = if stream == 0 { "stdout" } else { "stderr" };
            let max = child.buffered.as_ref().map_or(0, |b| b.max);
            let sentence = format!("child {id} ({}): {name} maxBuffer length exceeded ({max} bytes)", child.name);
            child.signal_it();
            self.events.push(child_error(id, child.pid, sentence));
            for out in &mut child.output {
                if let Some(fd) = out.take() {
                    reactor.remove(&fd);
                }
            }
        } else if at_end {
            if let Some(fd) = child.output[stream].take() {
                reactor.remove(&fd);
            }
        }
        self.finish_if_done(reactor, id);
    }

    fn on_exit(&mut self, reactor: &mut Reactor<u32>, id: u32) {
        let Some(child) = self.table.get_mut(&id) else { return };
        match sys::try_reap(child.pid) {
            Ok(Some(status)) => child.status = Some(status),
            Ok(None) => return, // not yet (a spurious wakeup)
            Err(e) => {
                // ECHILD: someone else (a host's waitpid(-1)) reaped it; its status is lost.
                log::warn!("child {id}: waitpid({}): {e}", child.pid);
                child.status = Some(ExitStatus { code: -1, signal: 0 });
            }
        }
        if let Some(fd) = child.pidfd.take() {
            reactor.remove(&fd);
        }
        if let Some(t) = child.timer.take() {
            reactor.cancel_timer(t);
        }
        if let Some(stdin) = child.stdin.take() {
            if stdin.watching {
                reactor.remove(&stdin.fd);
            }
        }
        // What it wrote before it exited is in the pipes now: read it in this turn.
        for stream in 0..2 {
            if self.table.get(&id).is_some_and(|c| c.output[stream].is_some()) {
                self.read_output(reactor, id, stream);
            }
        }
        self.finish_if_done(reactor, id);
    }

    /// Makes the CHILD_EXIT once the child has exited and its output pipes are at their end.
    fn finish_if_done(&mut self, reactor: &mut Reactor<u32>, id: u32) {
        let done = self.table.get(&id).is_some_and(|c| c.status.is_some() && c.output.iter().all(Option::is_none));
        if !done {
            return;
        }
        let mut child = self.table.remove(&id).expect("checked");
        child.unwatch(reactor);
        let status = child.status.expect("checked");
        let mut ev = Event::new(EventKind::ChildExit, id);
        ev.pid = child.pid;
        ev.exit_code = status.code;
        ev.signal = status.signal;
        ev.exited_after_disconnect = child.killed;
        if let Some(b) = child.buffered.take() {
            let [mut out, err] = b.out;
            ev.listener = out.len() as u32;
            out.extend_from_slice(&err);
            ev.data = out.into();
        }
        log::debug!(
            "child {id}: {} (pid {}) exited: code {} signal {}",
            child.name,
            child.pid,
            status.code,
            status.signal
        );
        self.events.push(ev);
    }

    /// This process's runtime ends: children that are not detached are killed (SIGKILL) and
    /// reaped, detached ones left running; nothing is watched any more.
    pub fn end(&mut self, reactor: &mut Reactor<u32>) {
        let mut dying = Vec::new();
        for (_, mut child) in self.table.drain() {
            child.unwatch(reactor);
            if child.status.is_none() && !child.detached {
                if let Some(pidfd) = &child.pidfd {
                    sys::pidfd_send_signal(pidfd, libc::SIGKILL).ok();
                }
                dying.push(child);
            }
        }
        // All signalled first, then reaped: they die together, not one wait after another.
        for child in dying {
            reap_now(child.pid, child.pidfd.as_ref());
        }
    }
}

impl Child {
    /// Sends its kill signal, once.
    fn signal_it(&mut self) {
        if let Some(pidfd) = &self.pidfd {
            sys::pidfd_send_signal(pidfd, self.kill_signal).ok();
            self.killed = true;
        }
    }

    /// Stops watching everything of it.
    fn unwatch(&mut self, reactor: &mut Reactor<u32>) {
        if let Some(fd) = &self.pidfd {
            reactor.remove(fd);
        }
        for fd in self.output.iter().flatten() {
            reactor.remove(fd);
        }
        if let Some(stdin) = self.stdin.as_ref().filter(|s| s.watching) {
            reactor.remove(&stdin.fd);
        }
        if let Some(t) = self.timer.take() {
            reactor.cancel_timer(t);
        }
    }
}

/// Reaps `pid`, which was just sent SIGKILL (so its end is near): waits up to 2 s for its
/// pidfd to say it ended.
fn reap_now(pid: libc::pid_t, pidfd: Option<&OwnedFd>) {
    if let Some(fd) = pidfd {
        sys::wait_fd(fd, true, false, 2000);
    }
    if !sys::try_reap(pid).is_ok_and(|s| s.is_some()) {
        log::warn!("child pid {pid} did not end within 2 s of SIGKILL: left unreaped");
    }
}

fn child_error(id: u32, pid: libc::pid_t, sentence: String) -> Event {
    let mut ev = Event::new(EventKind::ChildError, id);
    ev.pid = pid;
    ev.data = sentence.into_bytes().into();
    ev
}
