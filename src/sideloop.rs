//! The side loop: the child processes and the threads of this process (`child`, `threads`),
//! on a reactor of their own whose epoll fd is nested in the running runtime's (primary or
//! worker), so `cluster_fd()` wakes for them and their events reach the same handler.
//!
//! It is made on the first child or thread, and ends with the runtime (`end`): children that
//! are not detached are killed then, and threads find their port closed. The primary and the
//! worker know nothing of it; the runtime turns it in each dispatch that finds it ready.
//!
//! Locking: `SIDE` is taken with `RUNTIME` held, never the other way round, and for short,
//! non-blocking steps only (a child's start is the longest: one clone). Holding `RUNTIME`
//! also makes a log callback that calls back into rcluster get `State` (see `runtime`).

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use crate::child::{Children, Options};
use crate::error::{fail, Code, Result};
use crate::event::Event;
use crate::event_loop::{self, Reactor, Ready, Source};
use crate::sync;
use crate::sys;
use crate::threads::{Job, Threads};

/// The children and threads of this process, and their reactor.
pub struct SideLoop {
    reactor: Reactor<u32>,
    children: Children,
    threads: Threads,
}

static SIDE: Mutex<Option<SideLoop>> = Mutex::new(None);

impl SideLoop {
    fn new(outer: BorrowedFd<'_>) -> Result<SideLoop> {
        let reactor = Reactor::new()?;
        event_loop::nest(outer, reactor.fd())?;
        let threads = Threads::new(reactor.waker());
        Ok(SideLoop { reactor, children: Children::default(), threads })
    }

    /// Starts a child process (see `child::Children::spawn`).
    pub fn spawn(&mut self, opts: &Options, sched: Option<libc::c_int>) -> Result<u32> {
        self.children.spawn(&mut self.reactor, opts, sched)
    }

    /// Writes to a child's stdin.
    pub fn child_write(&mut self, id: u32, data: &[u8]) -> Result<()> {
        self.children.write(&mut self.reactor, id, data)
    }

    /// Closes a child's stdin once what was written is through.
    pub fn child_close_stdin(&mut self, id: u32) -> Result<()> {
        self.children.close_stdin(&mut self.reactor, id)
    }

    /// Signals a child.
    pub fn child_kill(&mut self, id: u32, signal: i32) -> Result<()> {
        self.children.kill(id, signal)
    }

    /// Starts a thread function.
    pub fn thread_start(&mut self, job: Job) -> Result<u32> {
        self.threads.start(job)
    }

    /// Sends a message to a thread.
    pub fn thread_send(&mut self, id: u32, data: &[u8]) -> Result<()> {
        self.threads.send(id, data)
    }

    /// Sets the thread pool's size.
    pub fn set_pool(&mut self, n: usize) -> Result<()> {
        self.threads.set_pool(n)
    }

    /// One turn: handles what its reactor reports (now, without waiting) and returns the
    /// events made.
    fn turn(&mut self) -> Vec<Event> {
        let mut ready: Vec<Ready> = Vec::new();
        if let Err(e) = event_loop::wait(self.reactor.fd(), 0, &mut ready) {
            log::error!("side loop: epoll_wait: {e}");
        }
        let mut events = Vec::new();
        for r in &ready {
            match r.source {
                Source::Waker => {
                    self.reactor.clear_wake();
                    events.extend(self.threads.take_events());
                }
                Source::Timer => {
                    for id in self.reactor.expired(sys::monotonic_ms()) {
                        self.children.on_timer(id);
                    }
                }
                source => self.children.on_ready(&mut self.reactor, source, r.writable),
            }
        }
        events.extend(self.children.take_events());
        events
    }
}

/// Runs `f` on the side loop, making it first (nested in the runtime's loop `outer`) if this
/// process has none.
pub fn with<T>(outer: BorrowedFd<'_>, f: impl FnOnce(&mut SideLoop) -> Result<T>) -> Result<T> {
    let mut side = sync::lock(&SIDE);
    if side.is_none() {
        *side = Some(SideLoop::new(outer)?);
    }
    f(side.as_mut().expect("made above"))
}

/// Runs `f` on the side loop, or says there is none (no child or thread was started).
pub fn with_existing<T>(what: &str, f: impl FnOnce(&mut SideLoop) -> Result<T>) -> Result<T> {
    match sync::lock(&SIDE).as_mut() {
        Some(side) => f(side),
        None => fail(Code::Inval, format!("no {what} was started in this runtime")),
    }
}

/// The runtime's loop reported the side loop's fd (`Source::Side`): its turn.
pub fn turn() -> Vec<Event> {
    sync::lock(&SIDE).as_mut().map(SideLoop::turn).unwrap_or_default()
}

/// The runtime ended: children that are not detached are killed and reaped, the threads'
/// ports close, the side loop goes.
pub fn end() {
    let side = sync::lock(&SIDE).take();
    if let Some(mut side) = side {
        side.children.end(&mut side.reactor);
    }
}

/// In a FORK-mode worker: the side loop is the primary's (its children, its threads, which
/// did not come along): this copy is dropped without touching them.
pub fn forget() {
    // Closing our copies of its descriptors leaves the primary's open; no signal is sent.
    drop(sync::lock(&SIDE).take());
}
