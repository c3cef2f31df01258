//! Threads that report to the loop, as Node's `worker_threads` (and libuv's `uv_queue_work`):
//! a function runs on a thread of its own (or of a fixed pool) with a port to its owner,
//! like `parentPort`: what it posts arrives as THREAD_MESSAGE events on the owning loop, its
//! return value as THREAD_EXIT, and what the owner sends it is read with `recv`.
//!
//! Posts go through one crossbeam channel into the side loop, which a poster wakes once per
//! batch: only the post that finds the channel's "woken" flag clear writes to the eventfd,
//! and the loop clears the flag before it drains, so no post waits unseen and a burst of a
//! million posts costs a handful of wakeups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::error::{fail, Code, Error, Result};
use crate::event::{Event, EventKind};
use crate::event_loop::Waker;

/// The most posts turned into events in one loop turn (the rest wait for the next turn).
const POSTS_PER_TURN: usize = 65_536;

/// What a thread tells its owner.
enum Post {
    Message(u32, Vec<u8>),
    /// The thread's function returned this, or panicked with this sentence.
    Exit(u32, std::result::Result<i32, String>),
}

/// The owner's side of the posts: the channel and its wakeup.
struct Inbox {
    tx: Sender<Post>,
    waker: Arc<Waker>,
    /// A wakeup is on its way (set by the first post of a batch, cleared by the loop).
    woken: AtomicBool,
}

impl Inbox {
    fn post(&self, post: Post) -> Result<()> {
        if self.tx.send(post).is_err() {
            return fail(Code::Closed, "the loop that owns this thread has stopped");
        }
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
        Ok(())
    }
}

/// A thread's port to its owner (`parentPort`).
pub struct Port {
    id: u32,
    inbox: Arc<Inbox>,
    rx: Receiver<Vec<u8>>,
}

impl Port {
    /// This thread's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Posts a message to the owning loop (a THREAD_MESSAGE event there).
    pub fn post(&self, data: &[u8]) -> Result<()> {
        self.inbox.post(Post::Message(self.id, data.to_vec()))
    }

    /// The next message the owner sent (`send`), waiting up to `timeout` (None: for as long as
    /// it takes). `Timeout` when none came in time, `Closed` once the owner is gone.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Vec<u8>> {
        let got = match timeout {
            Some(t) => self.rx.recv_timeout(t),
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => fail(Code::Timeout, "no message came within the timeout"),
            Err(RecvTimeoutError::Disconnected) => fail(Code::Closed, "the loop that owns this thread has stopped"),
        }
    }
}

thread_local! {
    /// The port of the thread function running on this thread (None elsewhere).
    static PORT: RefCell<Option<Arc<Port>>> = const { RefCell::new(None) };
}

/// Runs `f` with the calling thread's port (`Role` on a thread not started by `start`).
pub fn with_port<T>(f: impl FnOnce(&Port) -> Result<T>) -> Result<T> {
    let port = PORT.with(|p| p.borrow().clone());
    match port {
        Some(p) => f(&p),
        None => fail(Code::Role, "this call is for a thread started with cluster_thread_start, and this is not one"),
    }
}

/// A thread function.
pub type Job = Box<dyn FnOnce(&Port) -> i32 + Send>;

/// What a pool thread runs: the job and its port.
type Task = (Job, Arc<Port>);

/// Runs one job on the current thread with its port set, turning a panic into an exit with
/// its sentence.
fn run(job: Job, port: Arc<Port>) {
    PORT.with(|p| *p.borrow_mut() = Some(port.clone()));
    let outcome = catch_unwind(AssertUnwindSafe(|| job(&port))).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("thread {} panicked: {what}", port.id)
    });
    PORT.with(|p| *p.borrow_mut() = None);
    port.inbox.post(Post::Exit(port.id, outcome)).ok();
}

/// The threads of one loop.
pub struct Threads {
    inbox: Arc<Inbox>,
    rx: Receiver<Post>,
    /// Each live thread's sender of messages to it.
    to_thread: HashMap<u32, Sender<Vec<u8>>>,
    next_id: u32,
    /// The fixed pool's queue (None: a thread per start).
    pool: Option<Sender<Task>>,
}

impl Threads {
    /// No threads yet; posts will wake the loop through `waker`.
    pub fn new(waker: Arc<Waker>) -> Threads {
        let (tx, rx) = crossbeam_channel::unbounded();
        Threads {
            inbox: Arc::new(Inbox { tx, waker, woken: AtomicBool::new(false) }),
            rx,
            to_thread: HashMap::new(),
            next_id: 0,
            pool: None,
        }
    }

    /// From now on thread functions run on a pool of `n` threads (0: each on a new thread).
    /// The threads of a previous pool finish what was queued for them, then end.
    pub fn set_pool(&mut self, n: usize) -> Result<()> {
        if n > 1024 {
            return fail(Code::Inval, format!("a pool of {n} threads: at most 1024"));
        }
        self.pool = None;
        if n == 0 {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rcluster-pool-{i}"))
                .spawn(move || {
                    while let Ok((job, port)) = rx.recv() {
                        run(job, port);
                    }
                })
                .map_err(|e| Error::sys("starting a pool thread", e))?;
        }
        self.pool = Some(tx);
        Ok(())
    }

    /// Runs `job` on a thread (of the pool, if there is one); returns its id (>= 1, never
    /// reused).
    pub fn start(&mut self, job: Job) -> Result<u32> {
        let id = self.next_id.checked_add(1).ok_or_else(|| Error::new(Code::State, "no thread id is left"))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let port = Arc::new(Port { id, inbox: self.inbox.clone(), rx });
        match &self.pool {
            Some(pool) => {
                if pool.send((job, port)).is_err() {
                    return fail(Code::State, "the thread pool has stopped");
                }
            }
            None => {
                std::thread::Builder::new()
                    .name(format!("rcluster-thread-{id}"))
                    .spawn(move || run(job, port))
                    .map_err(|e| Error::sys("starting a thread", e))?;
            }
        }
        self.next_id = id;
        self.to_thread.insert(id, tx);
        Ok(id)
    }

    /// Sends a message to thread `id` (its `recv`).
    pub fn send(&self, id: u32, data: &[u8]) -> Result<()> {
        let Some(tx) = self.to_thread.get(&id) else {
            return fail(Code::Inval, format!("no thread with id {id} (never started, or its THREAD_EXIT has come)"));
        };
        tx.send(data.to_vec()).map_err(|_| Error::new(Code::Closed, format!("thread {id} has ended")))
    }

    /// How many threads have not had their THREAD_EXIT made yet.
    pub fn running(&self) -> usize {
        self.to_thread.len()
    }

    /// Turns what the threads posted into events (at most `POSTS_PER_TURN`; when more wait,
    /// the loop is woken again for them).
    pub fn take_events(&mut self) -> Vec<Event> {
        self.inbox.woken.store(false, Ordering::Release);
        let mut events = Vec::new();
        for _ in 0..POSTS_PER_TURN {
            match self.rx.try_recv() {
                Ok(Post::Message(id, data)) => {
                    let mut ev = Event::new(EventKind::ThreadMessage, id);
                    ev.data = data.into();
                    events.push(ev);
                }
                Ok(Post::Exit(id, outcome)) => {
                    self.to_thread.remove(&id);
                    let mut ev = Event::new(EventKind::ThreadExit, id);
                    match outcome {
                        Ok(code) => ev.exit_code = code,
                        Err(sentence) => {
                            ev.exit_code = -1;
                            ev.data = sentence.into_bytes().into();
                        }
                    }
                    events.push(ev);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return events,
            }
        }
        if !self.rx.is_empty() && !self.inbox.woken.swap(true, Ordering::AcqRel) {
            self.inbox.waker.wake();
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_loop::Reactor;

    fn collect(t: &mut Threads, r: &Reactor<()>, until_exits: usize) -> Vec<Event> {
        let mut all = Vec::new();
        let mut ready = Vec::new();
        while all.iter().filter(|e: &&Event| e.kind == EventKind::ThreadExit).count() < until_exits {
            crate::event_loop::wait(r.fd(), 10_000, &mut ready).unwrap();
            assert!(!ready.is_empty(), "no wakeup within 10 s");
            r.clear_wake();
            all.extend(t.take_events());
        }
        all
    }

    #[test]
    fn posts_arrive_in_order_and_the_exit_last() {
        let r: Reactor<()> = Reactor::new().unwrap();
        let mut t = Threads::new(r.waker());
        let id = t
            .start(Box::new(|port| {
                for i in 0..100_000u32 {
                    port.post(&i.to_le_bytes()).unwrap();
                }
                7
            }))
            .unwrap();
        let events = collect(&mut t, &r, 1);
        assert_eq!(events.len(), 100_001);
        for (i, ev) in events[..100_000].iter().enumerate() {
            assert_eq!((ev.kind, ev.worker_id), (EventKind::ThreadMessage, id));
            assert_eq!(ev.data.to_vec(), (i as u32).to_le_bytes());
        }
        assert_eq!((events[100_000].kind, events[100_000].exit_code), (EventKind::ThreadExit, 7));
    }

    #[test]
    fn a_panic_is_an_exit_with_its_sentence() {
        let r: Reactor<()> = Reactor::new().unwrap();
        let mut t = Threads::new(r.waker());
        t.start(Box::new(|_| panic!("the bad thing"))).unwrap();
        let events = collect(&mut t, &r, 1);
        let exit = events.last().unwrap();
        assert_eq!((exit.kind, exit.exit_code), (EventKind::ThreadExit, -1));
        let sentence = String::from_utf8(exit.data.to_vec()).unwrap();
        assert!(sentence.contains("panicked: the bad thing"), "{sentence}");
    }

    #[test]
    fn a_pool_runs_jobs_and_they_receive() {
        let r: Reactor<()> = Reactor::new().unwrap();
        let mut t = Threads::new(r.waker());
        t.set_pool(2).unwrap();
        let ids: Vec<u32> = (0..4)
            .map(|_| {
                t.start(Box::new(|port| match port.recv(Some(Duration::from_secs(10))) {
                    Ok(m) => m.len() as i32,
                    Err(e) => e.code as i32,
                }))
                .unwrap()
            })
            .collect();
        for (n, id) in ids.iter().enumerate() {
            t.send(*id, &vec![0; n + 1]).unwrap();
        }
        let events = collect(&mut t, &r, 4);
        let mut codes: Vec<(u32, i32)> = events.iter().map(|e| (e.worker_id, e.exit_code)).collect();
        codes.sort();
        assert_eq!(codes, ids.iter().enumerate().map(|(n, id)| (*id, n as i32 + 1)).collect::<Vec<_>>());
        assert!(with_port(|_| Ok(())).is_err(), "the test thread has no port");
    }

    #[test]
    fn recv_times_out() {
        let r: Reactor<()> = Reactor::new().unwrap();
        let mut t = Threads::new(r.waker());
        t.start(Box::new(|port| match port.recv(Some(Duration::from_millis(20))) {
            Err(e) if e.code == Code::Timeout => 1,
            _ => 0,
        }))
        .unwrap();
        let events = collect(&mut t, &r, 1);
        assert_eq!(events[0].exit_code, 1);
    }
}
