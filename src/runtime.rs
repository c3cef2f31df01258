//! The process-global runtime, like Node's `cluster` module: a process is a primary or a
//! worker, and has at most one running runtime.
//!
//! Locking: `RUNTIME` is held only for short, non-blocking steps; the loop waits on the epoll
//! fd without it and delivers events without it, so a callback may call back into any API
//! function, and other threads are never stuck behind a wait. `SHARED` lets any thread send
//! without touching `RUNTIME` at all.

use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::config::Config;
use crate::error::{fail, Code, Error, Result};
use crate::event::{BatchHandler, Delivery, Event, Handler};
use crate::event_loop::{self, Ready, Source};
use crate::ipc::frame::BROADCAST;
use crate::ipc::outbox::Frame;
use crate::primary::workers::WorkerInfo;
use crate::primary::Primary;
use crate::requests;
use crate::shared::{self, Shared};
use crate::sideloop;
use crate::sync;
use crate::sys;
use crate::worker::env::{AcceptFrom, WorkerEnv};
use crate::worker::Worker;

enum Runtime {
    Idle,
    Primary(Box<Primary>),
    Worker(Box<Worker>),
    /// Done; the old loop fd stays open (and silent) so a host that still polls it never
    /// polls a reused descriptor.
    Finished(Option<OwnedFd>),
}

static RUNTIME: Mutex<Runtime> = Mutex::new(Runtime::Idle);
static HANDLER: Mutex<Option<Delivery>> = Mutex::new(None);
static SHARED: RwLock<Option<Arc<Shared>>> = RwLock::new(None);
/// Set when this process is a worker: at load from the environment (EXEC mode), or by the
/// fork (FORK mode). `channel` is -1 once a worker runtime took it.
static WORKER_ENV: Mutex<Option<WorkerEnv>> = Mutex::new(None);

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// This thread holds `RUNTIME` (see `Rt`).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// The thread that runs the loop (kernel tid; 0: none yet): the one that dispatches, or before
/// any dispatch the one that started the runtime. Workers are started on this thread only:
/// PR_SET_PDEATHSIG follows the thread that forked, so a worker started from a short-lived
/// thread would be killed when that thread exits. Other threads queue starts and wake it.
static LOOP_THREAD: AtomicI32 = AtomicI32::new(0);
/// The thread inside `dispatch` now (0: none). One thread runs the loop at a time: a second
/// one would find the handler out for delivery and its events would be lost.
static DISPATCHING: AtomicI32 = AtomicI32::new(0);

fn this_thread() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// True on the loop thread (or when no thread is the loop thread yet).
fn on_loop_thread() -> bool {
    let t = LOOP_THREAD.load(Ordering::SeqCst);
    t == 0 || t == this_thread()
}

/// Set in a process forked (by anyone but rcluster's own worker start) from a process whose
/// runtime was running: the runtime, its channels and its queues belong to the parent, so
/// every call here fails with `State` and the process is neither primary nor worker.
static INHERITED: AtomicBool = AtomicBool::new(false);

const INHERITED_SENTENCE: &str = "this process was forked from a process running rcluster, whose runtime \
     (channels, queues, workers) stays the parent's: start or exec a new program to use rcluster here";

/// Runs when the library is loaded: an exec'd worker knows it is one before `main`.
extern "C" fn detect_role_at_load() {
    let env = WorkerEnv::from_env(|k| std::env::var(k).ok());
    if env.is_some() {
        *sync::lock(&WORKER_ENV) = env;
    }
    // SAFETY: `after_fork_in_child` only takes a try-lock and stores an atomic
    // (async-signal-safe, as a child of a threaded fork needs).
    if let Err(e) = unsafe { sys::raw::atfork_child(after_fork_in_child) } {
        log::warn!("pthread_atfork: {e}: a fork of this process by the host is not detected");
    }
}

/// In every child of fork(2): a running runtime (or one another thread held at the fork) is
/// the parent's. rcluster's own FORK-mode start clears this again in the new worker.
extern "C" fn after_fork_in_child() {
    let running = match RUNTIME.try_lock() {
        Ok(rt) => matches!(*rt, Runtime::Primary(_) | Runtime::Worker(_)),
        Err(std::sync::TryLockError::Poisoned(rt)) => {
            matches!(*rt.into_inner(), Runtime::Primary(_) | Runtime::Worker(_))
        }
        Err(std::sync::TryLockError::WouldBlock) => true,
    };
    if running {
        INHERITED.store(true, Ordering::Relaxed);
    }
}

#[used]
#[link_section = ".init_array"]
static DETECT_ROLE: extern "C" fn() = detect_role_at_load;

/// True in a worker process.
pub fn is_worker() -> bool {
    !INHERITED.load(Ordering::Relaxed) && sync::lock(&WORKER_ENV).is_some()
}

/// True in the primary (any process that is not a worker).
pub fn is_primary() -> bool {
    !is_worker()
}

/// This worker's id, 0 in the primary.
pub fn worker_id() -> u32 {
    if INHERITED.load(Ordering::Relaxed) {
        return 0;
    }
    sync::lock(&WORKER_ENV).as_ref().map_or(0, |e| e.id)
}

/// The locked runtime. The lock is not reentrant, and a host's log callback runs while it is
/// held (the runtime logs as it works): a call back into rcluster from there gets `State`
/// instead of a deadlock.
struct Rt(MutexGuard<'static, Runtime>);

impl std::ops::Deref for Rt {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.0
    }
}

impl std::ops::DerefMut for Rt {
    fn deref_mut(&mut self) -> &mut Runtime {
        &mut self.0
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
    }
}

fn runtime() -> Result<Rt> {
    if HOLDING.with(Cell::get) {
        return fail(Code::State, "rcluster was called from inside its log callback, which must not call rcluster");
    }
    if INHERITED.load(Ordering::Relaxed) {
        return fail(Code::State, INHERITED_SENTENCE);
    }
    let guard = sync::lock(&RUNTIME);
    HOLDING.with(|h| h.set(true));
    let mut rt = Rt(guard);
    // A shutdown asked for from a signal handler (or any thread) takes effect before anything
    // else is done with the runtime.
    if let Some(grace_ms) = requests::take_shutdown() {
        apply_shutdown(&mut rt, grace_ms);
    }
    Ok(rt)
}

fn ensure_primary_role() -> Result<()> {
    if is_worker() {
        return fail(Code::Role, "this call is for the primary, and this process is a worker");
    }
    Ok(())
}

/// The running primary, or why there is none.
fn as_primary(rt: &mut Runtime) -> Result<&mut Primary> {
    match rt {
        Runtime::Primary(p) => Ok(p),
        Runtime::Finished(_) => fail(Code::Closed, "the cluster has stopped"),
        _ => fail(Code::State, "the primary is not started (call cluster_primary_start first)"),
    }
}

fn with_primary<T>(f: impl FnOnce(&mut Primary) -> Result<T>) -> Result<T> {
    ensure_primary_role()?;
    f(as_primary(&mut *runtime()?)?)
}

fn with_worker<T>(f: impl FnOnce(&mut Worker) -> Result<T>) -> Result<T> {
    if !is_worker() {
        return fail(Code::Role, "this call is for a worker, and this process is the primary");
    }
    match &mut *runtime()? {
        Runtime::Worker(w) => f(w),
        Runtime::Finished(_) => fail(Code::Closed, "the worker runtime has stopped"),
        _ => fail(Code::State, "the worker is not started (call cluster_worker_start first)"),
    }
}

fn check_startable(rt: &Runtime) -> Result<()> {
    match rt {
        Runtime::Idle | Runtime::Finished(_) => Ok(()),
        _ => fail(Code::State, "already started"),
    }
}

/// Starts the primary: binds the listeners, starts the workers, returns at once. Events go to
/// `handler` on the thread that runs the loop.
pub fn primary_start(cfg: Config, handler: Handler) -> Result<()> {
    ensure_primary_role()?;
    let mut rt = runtime()?;
    check_startable(&rt)?;
    let primary = Primary::start(cfg)?;
    *sync::write(&SHARED) = Some(primary.shared().clone());
    *sync::lock(&HANDLER) = Some(Delivery::Each(handler));
    requests::publish(primary.shared().wake_fd());
    *rt = Runtime::Primary(Box::new(primary));
    // The starting thread runs the loop until a dispatch on another thread says otherwise.
    LOOP_THREAD.store(this_thread(), Ordering::SeqCst);
    drive_spawns(rt);
    Ok(())
}

/// Starts the queued worker starts, here, if this is the loop thread; elsewhere wakes the loop,
/// which starts them on its next turn. A FORK-mode child never returns.
fn drive_spawns(mut rt: Rt) {
    if !on_loop_thread() {
        if let Runtime::Primary(p) = &*rt {
            p.shared().wake();
        }
        return;
    }
    loop {
        let Runtime::Primary(p) = &mut *rt else { return };
        let Some(id) = p.next_spawn() else {
            if p.has_events() {
                p.shared().wake();
            }
            return;
        };
        match p.spawn(id) {
            Ok(None) => {}
            Ok(Some(env)) => become_worker(rt, env),
            Err(e) => p.spawn_failed(id, &e),
        }
    }
}

/// Starts one more worker; returns its id. On the loop thread it starts now (a failure is this
/// call's error); from another thread the loop starts it on its next turn (a failure is an
/// ERROR event). In FORK mode the child runs the worker main and exits: it never returns from
/// here.
pub fn fork() -> Result<u32> {
    fork_env(Vec::new())
}

/// `fork` with extra `NAME=value` variables in the new worker's environment (checked with
/// `config::env_entry`); respawns and reloads of its slot get them again.
pub fn fork_env(vars: Vec<std::ffi::CString>) -> Result<u32> {
    fork_with(vars, None)
}

/// `fork_env` with this worker's own argv and directory (EXEC mode: Node's `cluster.fork()`
/// after `setupPrimary({ exec, args, execArgv, cwd })` changed them).
pub fn fork_exec(
    vars: Vec<std::ffi::CString>,
    argv: Vec<std::ffi::CString>,
    cwd: Option<std::ffi::CString>,
) -> Result<u32> {
    fork_with(vars, Some(crate::primary::spawn::ExecOverride { argv, cwd }))
}

fn fork_with(vars: Vec<std::ffi::CString>, exec: Option<crate::primary::spawn::ExecOverride>) -> Result<u32> {
    ensure_primary_role()?;
    let mut rt = runtime()?;
    let p = as_primary(&mut rt)?;
    if !on_loop_thread() {
        if p.fork_mode() {
            // Another thread lives (the loop thread): refused now, as FORK mode always is.
            crate::primary::spawn::ensure_single_threaded()?;
            // The loop thread is gone and this is the only thread: it runs the loop now.
            LOOP_THREAD.store(this_thread(), Ordering::SeqCst);
        } else {
            let id = p.request_spawn_with_env(vars)?;
            p.set_exec_override(id, exec)?;
            p.shared().wake();
            return Ok(id);
        }
    }
    let id = p.request_spawn_with_env(vars)?;
    if let Err(e) = p.set_exec_override(id, exec) {
        p.unqueue_spawn(id);
        return Err(e);
    }
    p.unqueue_spawn(id);
    match p.spawn(id) {
        Ok(None) => {
            p.shared().wake();
            Ok(id)
        }
        Ok(Some(env)) => become_worker(rt, env),
        Err(e) => Err(e),
    }
}

/// In a FORK-mode child: drops every piece of the primary (closing its epoll fd, the other
/// workers' channels, the listeners, the pidfds, the signal handlers), becomes worker
/// `env.id`, runs the worker main and exits with its return value.
fn become_worker(mut rt: Rt, mut env: WorkerEnv) -> ! {
    // The fork handler marked this child as a copy of a running primary: it is our worker.
    INHERITED.store(false, Ordering::Relaxed);
    // The parent's loop (its thread, its eventfd, its requests) stays the parent's; this
    // child's own loop thread is whichever runs its worker runtime.
    requests::forget();
    sideloop::forget();
    DISPATCHING.store(0, Ordering::SeqCst);
    LOOP_THREAD.store(0, Ordering::SeqCst);
    let main = match &mut *rt {
        Runtime::Primary(p) => p.take_worker_main(),
        _ => None,
    };
    // SHARED: keep the listening sockets the primary's teardown is about to close.
    if let AcceptFrom::Shared(list) = &mut env.accept {
        for (_, fd) in list.iter_mut() {
            // SAFETY: the primary's listening socket, open until the teardown below closes it.
            let listener = unsafe { BorrowedFd::borrow_raw(*fd) };
            *fd = sys::dup_cloexec(listener).map(std::os::fd::IntoRawFd::into_raw_fd).unwrap_or(-1);
        }
        list.retain(|(_, fd)| *fd >= 0);
    }
    *rt = Runtime::Idle;
    drop(rt);
    *sync::write(&SHARED) = None;
    // The primary's handler may be out for delivery on this very stack: then the slot is
    // already empty, and the stack below never resumes.
    drop(sync::lock(&HANDLER).take());
    IN_CALLBACK.with(|c| c.set(false));
    shared::abandon_held();
    *sync::lock(&WORKER_ENV) = Some(env);
    let code = match main {
        Some(f) => f(),
        None => 0,
    };
    if let Ok(mut rt) = runtime() {
        requests::withdraw();
        *rt = Runtime::Idle;
    }
    sys::flush_stdio();
    // exit(3): the C atexit handlers run and stdio is flushed, as returning from main would.
    std::process::exit(code)
}

/// Starts this worker's runtime: connects to the primary and reports ONLINE (and READY unless
/// manual readiness is configured).
pub fn worker_start(handler: Handler) -> Result<()> {
    if !is_worker() {
        return fail(Code::Role, "this process is not a worker (cluster_worker_start is for workers)");
    }
    let mut rt = runtime()?;
    check_startable(&rt)?;
    // The env lock is not held while the worker starts: starting logs, and a log callback may
    // ask `cluster_is_worker()`, which takes it.
    let env = {
        let mut env_slot = sync::lock(&WORKER_ENV);
        let Some(env) = env_slot.as_mut() else {
            return fail(Code::Role, "this process is not a worker (cluster_worker_start is for workers)");
        };
        if env.channel < 0 {
            return fail(Code::State, "the worker runtime already ran in this process");
        }
        env.clone()
    };
    // A start that fails closes the fds it took (the channel, SHARED listening sockets). A
    // retry must not take their numbers again: by then the host may have opened its own files
    // under them. So spare duplicates are made first, and a failed start leaves the retry
    // those instead.
    let spares = spare_worker_fds(&env)?;
    let worker = match Worker::start(env.clone()) {
        Ok(w) => w,
        Err(e) => {
            let spare_env = spares.after_failure(&env);
            if let Some(slot) = sync::lock(&WORKER_ENV).as_mut() {
                *slot = spare_env;
            }
            return Err(e);
        }
    };
    drop(spares);
    if let Some(env) = sync::lock(&WORKER_ENV).as_mut() {
        env.channel = -1;
    }
    *sync::write(&SHARED) = Some(worker.shared().clone());
    *sync::lock(&HANDLER) = Some(Delivery::Each(handler));
    requests::publish(worker.shared().wake_fd());
    *rt = Runtime::Worker(Box::new(worker));
    Ok(())
}

/// A spare SHARED listening socket: listener index, the duplicate, the socket's identity.
type SpareListener = (u32, OwnedFd, Option<(u64, u64)>);

/// Spare duplicates of a worker's inherited fds, for a retry after a failed start.
struct Spares {
    channel: OwnedFd,
    shared: Vec<SpareListener>,
}

fn spare_worker_fds(env: &WorkerEnv) -> Result<Spares> {
    // SAFETY: the fds a worker inherited (`WorkerEnv`), open and adopted by nothing yet: the
    // start that adopts them runs after this.
    let inherited = |fd: RawFd| unsafe { BorrowedFd::borrow_raw(fd) };
    let dup =
        |fd: RawFd| sys::dup_cloexec(inherited(fd)).map_err(|e| Error::sys(format!("dup of inherited fd {fd}"), e));
    let channel = dup(env.channel)?;
    let mut shared = Vec::new();
    if let AcceptFrom::Shared(list) = &env.accept {
        for &(index, fd) in list {
            shared.push((index, dup(fd)?, sys::file_identity(inherited(fd))));
        }
    }
    Ok(Spares { channel, shared })
}

impl Spares {
    /// After a failed start with `env`: the env a retry uses (the spares), having closed what
    /// of `env` the start left open. The channel is always closed by the start; a SHARED
    /// socket only if the start got that far, so one still open as that same socket (by
    /// identity) is closed here.
    fn after_failure(self, env: &WorkerEnv) -> WorkerEnv {
        use std::os::fd::IntoRawFd;
        if let AcceptFrom::Shared(list) = &env.accept {
            for (&(_, fd), (_, _, identity)) in list.iter().zip(&self.shared) {
                // SAFETY: a number the failed start may have closed: fstat only reads it (EBADF
                // then), and nothing else of ours opens files meanwhile on this thread.
                if identity.is_some() && sys::file_identity(unsafe { BorrowedFd::borrow_raw(fd) }) == *identity {
                    // SAFETY: our inherited socket, which the failed start did not adopt.
                    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                }
            }
        }
        let accept = match &env.accept {
            AcceptFrom::Shared(_) => {
                AcceptFrom::Shared(self.shared.into_iter().map(|(i, fd, _)| (i, fd.into_raw_fd())).collect())
            }
            other => other.clone(),
        };
        WorkerEnv { channel: self.channel.into_raw_fd(), accept, ..env.clone() }
    }
}

/// Worker: tells the primary it is ready (only needed with manual readiness).
pub fn ready() -> Result<()> {
    with_worker(|w| w.ready())
}

/// The loop's pollable fd: readable when `dispatch` has work.
pub fn fd() -> Result<RawFd> {
    match &*runtime()? {
        Runtime::Primary(p) => Ok(p.poll_fd().as_raw_fd()),
        Runtime::Worker(w) => Ok(w.poll_fd().as_raw_fd()),
        Runtime::Finished(Some(fd)) => Ok(std::os::fd::AsRawFd::as_raw_fd(fd)),
        Runtime::Finished(None) => fail(Code::Closed, "the runtime has stopped"),
        Runtime::Idle => fail(Code::State, "not started"),
    }
}

/// One loop turn: waits up to `timeout_ms` (-1: forever) for something to happen, handles it
/// and delivers the resulting events to the handler. Returns how many events were delivered;
/// `Closed` once the runtime has finished.
pub fn dispatch(timeout_ms: i32) -> Result<usize> {
    if IN_CALLBACK.with(Cell::get) {
        return fail(Code::State, "cluster_dispatch/cluster_run called from inside an event callback");
    }
    let me = this_thread();
    if let Err(other) = DISPATCHING.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
        return fail(
            Code::State,
            format!(
                "cluster_dispatch/cluster_run is running on another thread (tid {other}): one thread at a \
                 time runs the loop; this call was refused, nothing was lost"
            ),
        );
    }
    struct Turn;
    impl Drop for Turn {
        fn drop(&mut self) {
            DISPATCHING.store(0, Ordering::SeqCst);
        }
    }
    let _turn = Turn;
    LOOP_THREAD.store(me, Ordering::SeqCst);
    let (epfd, timeout) = {
        let mut rt = runtime()?;
        finish_if_done(&mut rt)?;
        match &*rt {
            Runtime::Primary(p) => (p.poll_fd().as_raw_fd(), if p.has_events() { 0 } else { timeout_ms }),
            Runtime::Worker(w) => (w.poll_fd().as_raw_fd(), if w.has_events() { 0 } else { timeout_ms }),
            _ => return fail(Code::State, "not started"),
        }
    };
    let mut ready: Vec<Ready> = Vec::new();
    // SAFETY: the loop's epoll fd, waited on without the lock (taken above to read it): it
    // stays open while this dispatch runs, since one thread at a time dispatches and a runtime
    // that finishes meanwhile keeps its number open, silent (`Runtime::Finished`).
    let epfd = unsafe { BorrowedFd::borrow_raw(epfd) };
    event_loop::wait(epfd, timeout, &mut ready).map_err(|e| Error::sys("epoll_wait", e))?;
    // The side loop (children, threads) is turned here: the primary and the worker never see it.
    // It is turned with `RUNTIME` held, as the runtime's own turn is: a log callback calling
    // back into rcluster from there gets `State` instead of waiting on the side loop's lock.
    let side_events = if ready.iter().any(|r| r.source == Source::Side) {
        ready.retain(|r| r.source != Source::Side);
        let _rt = runtime()?;
        sideloop::turn()
    } else {
        Vec::new()
    };
    let mut events = {
        let mut rt = runtime()?;
        match &mut *rt {
            Runtime::Primary(p) => {
                p.process(&ready);
                if p.finished() {
                    // The next dispatch reports the end: make the fd say so to hosts that
                    // only dispatch when it is readable.
                    p.shared().wake();
                }
                let ev = p.take_events();
                drive_spawns(rt);
                ev
            }
            Runtime::Worker(w) => {
                w.process(&ready);
                if w.finished() {
                    w.shared().wake();
                }
                w.take_events()
            }
            _ => Vec::new(),
        }
    };
    events.extend(side_events);
    let n = deliver(events);
    if n > 0 {
        // The callbacks may have used up fds: the primary must know before it hands over more.
        if let Runtime::Worker(w) = &mut *runtime()? {
            w.check_fds();
        }
    }
    Ok(n)
}

/// Tears the runtime down once it is done, and says so with `Closed`.
fn finish_if_done(rt: &mut Runtime) -> Result<()> {
    let done = match rt {
        Runtime::Primary(p) => p.finished() && !p.has_events(),
        Runtime::Worker(w) => w.finished() && !w.has_events(),
        Runtime::Finished(_) => return fail(Code::Closed, "the runtime has stopped"),
        Runtime::Idle => return fail(Code::State, "not started"),
    };
    if !done {
        return Ok(());
    }
    requests::withdraw();
    sideloop::end();
    let keep = match std::mem::replace(rt, Runtime::Idle) {
        Runtime::Primary(p) => Some(p.into_poll_fd()),
        Runtime::Worker(w) => Some(w.into_poll_fd()),
        _ => None,
    };
    *rt = Runtime::Finished(keep);
    *sync::write(&SHARED) = None;
    drop(sync::lock(&HANDLER).take());
    fail(Code::Closed, "the runtime has stopped")
}

/// Calls the handler for each event, with no lock held.
fn deliver(events: Vec<Event>) -> usize {
    let n = events.len();
    if n == 0 {
        return 0;
    }
    struct Delivering(Option<Delivery>, Option<Arc<Shared>>);
    impl Drop for Delivering {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(false));
            if let Some(shared) = &self.1 {
                shared.release_held();
            }
            let mut slot = sync::lock(&HANDLER);
            if slot.is_none() {
                *slot = self.0.take();
            }
        }
    }
    // With batching on, what the callbacks send is held and leaves in batches (the rest when
    // they are all done): a burst of replies costs one system call per 8 instead of one each.
    // Other threads' sends are not held (and take the held ones along). Off, nothing to set up.
    let shared = if BATCHING.load(Ordering::Relaxed) { sync::read(&SHARED).clone() } else { None };
    if shared.is_some() {
        shared::hold_sends();
    }
    let mut d = Delivering(sync::lock(&HANDLER).take(), shared);
    IN_CALLBACK.with(|c| c.set(true));
    match d.0.as_mut() {
        Some(Delivery::Each(h)) => events.into_iter().for_each(h),
        Some(Delivery::Batch(h)) => h(events),
        None => events.into_iter().for_each(|mut ev| {
            // Nobody takes it: a worker may have sent it (see `sys::close_untrusted`).
            if let Some(fd) = ev.fd.take() {
                sys::close_untrusted(fd);
            }
        }),
    }
    n
}

/// From now on, every event of a loop turn goes to `handler` in one call (instead of one call
/// of the start's handler per event), until the runtime ends. For hosts where each call into
/// them costs (a ctypes callback, a JavaScript call). Primary or worker, once started.
pub fn set_batch_handler(handler: BatchHandler) -> Result<()> {
    let rt = runtime()?;
    match &*rt {
        Runtime::Primary(_) | Runtime::Worker(_) => {
            *sync::lock(&HANDLER) = Some(Delivery::Batch(handler));
            Ok(())
        }
        Runtime::Finished(_) => fail(Code::Closed, "the runtime has stopped"),
        Runtime::Idle => fail(Code::State, "not started (start the primary or the worker first)"),
    }
}

/// Runs the loop until the cluster (primary) or this worker is done. Returns Ok after a
/// graceful end.
pub fn run() -> Result<()> {
    loop {
        match dispatch(-1) {
            Ok(_) => {}
            Err(e) if e.code == Code::Closed => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn shared() -> Result<Arc<Shared>> {
    if INHERITED.load(Ordering::Relaxed) {
        return fail(Code::State, INHERITED_SENTENCE);
    }
    if let Some(s) = sync::read(&SHARED).as_ref() {
        return Ok(s.clone());
    }
    match &*runtime()? {
        Runtime::Finished(_) => fail(Code::Closed, "the runtime has stopped"),
        _ => fail(Code::State, "not started (call cluster_primary_start or cluster_worker_start first)"),
    }
}

/// Sends a message (and optionally a duplicate of `fd`). Primary: to worker `to`. Worker: to
/// the primary (0) or to worker `to`, relayed by the primary. Any thread.
pub fn send(to: u32, data: &[u8], fd: Option<RawFd>) -> Result<()> {
    let shared = shared()?;
    let fd = match fd {
        Some(raw) if raw < 0 => return fail(Code::Inval, format!("fd {raw} is not a descriptor")),
        // SAFETY: the caller's descriptor, open for the duration of this call (the API's
        // contract); a closed number gives EBADF.
        Some(raw) => Some(
            sys::dup_cloexec(unsafe { BorrowedFd::borrow_raw(raw) })
                .map_err(|e| Error::sys(format!("dup fd {raw}"), e))?,
        ),
        None => None,
    };
    if shared.self_id == 0 {
        if to == 0 {
            return fail(Code::Inval, "the primary cannot send to itself (worker ids start at 1)");
        }
        if shared.outbox(to).is_some_and(|o| o.stream().is_some()) {
            // A Node worker: `data` is one message body as Node's channel carries it.
            if data.len() as u64 > shared.max_message {
                let max = shared.max_message;
                return fail(
                    Code::TooBig,
                    format!("message of {} bytes exceeds the maximum of {max} bytes", data.len()),
                );
            }
            return shared.push(to, Frame::node(data.to_vec(), fd, true));
        }
        let frame = Frame::message(0, to, data, fd, shared.max_message)?;
        shared.push(to, frame)
    } else {
        if to == shared.self_id {
            return fail(Code::Inval, format!("worker {to} cannot send to itself"));
        }
        if to == BROADCAST {
            return fail(Code::Inval, format!("no worker with id {to}"));
        }
        let frame = Frame::message(shared.self_id, to, data, fd, shared.max_message)?;
        shared.push(0, frame)
    }
}

/// Primary: sends to every worker, or to none when one queue is full (`Again`); returns how
/// many. Worker: sends to every other worker through the primary; returns 0.
pub fn broadcast(data: &[u8]) -> Result<usize> {
    let shared = shared()?;
    if shared.self_id != 0 {
        let frame = Frame::message(shared.self_id, BROADCAST, data, None, shared.max_message)?;
        shared.push(0, frame)?;
        return Ok(0);
    }
    let frame = Frame::message(0, 0, data, None, shared.max_message)?;
    let mut sent = 0;
    let mut first_err = None;
    for (id, outbox) in shared.all() {
        if outbox.is_closed() {
            continue;
        }
        let mut f = frame.try_clone().map_err(|e| Error::sys("broadcast", e))?;
        f.header.to = id;
        match shared.push(id, f) {
            Ok(()) => sent += 1,
            Err(e) if e.code == Code::Closed || e.code == Code::NoWorker => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if sent == 0 => Err(e),
        Some(e) => Err(Error::new(e.code, format!("{}; sent to {sent} worker(s), the others refused", e.message))),
        None => Ok(sent),
    }
}

/// Stops gracefully. Primary: the whole cluster, killing what is left after `grace_ms` (0:
/// now). Worker: tells the primary it leaves and finishes after the SHUTDOWN event.
///
/// While a runtime runs this is async-signal-safe: it records the request (an atomic) and
/// wakes the loop (write(2) to its eventfd); the request takes effect on the loop's next turn,
/// or earlier when another call takes the runtime first. No lock, no allocation.
pub fn shutdown(grace_ms: u32) -> Result<()> {
    if INHERITED.load(Ordering::Relaxed) {
        return fail(Code::State, INHERITED_SENTENCE);
    }
    if requests::ask_shutdown(grace_ms) {
        return Ok(());
    }
    // Nothing runs (not started, or finished): say which.
    match &*runtime()? {
        Runtime::Idle => fail(Code::State, "not started"),
        _ => Ok(()),
    }
}

fn apply_shutdown(rt: &mut Runtime, grace_ms: u32) {
    match rt {
        Runtime::Primary(p) => {
            p.shutdown(grace_ms);
            p.shared().wake();
        }
        Runtime::Worker(w) => {
            w.shutdown();
            w.shared().wake();
        }
        Runtime::Finished(_) | Runtime::Idle => {}
    }
}

/// The bound port of listener `index`: in the primary, any listener; in a worker, one it
/// listens on (`listen_*`) or accepts on itself (SHARED, REUSEPORT).
pub fn local_port(index: u32) -> Result<u16> {
    if is_worker() {
        return with_worker(|w| w.local_port(index));
    }
    with_primary(|p| p.local_port(index))
}

/// The port of the primary's metrics endpoint.
pub fn metrics_port() -> Result<u16> {
    with_primary(|p| p.metrics_port())
}

/// Ids of the live workers, ascending.
pub fn workers() -> Result<Vec<u32>> {
    with_primary(|p| Ok(p.worker_ids()))
}

/// A snapshot of worker `id`.
pub fn worker_info(id: u32) -> Result<WorkerInfo> {
    with_primary(|p| p.worker_info(id))
}

/// Signals worker `id`.
pub fn worker_kill(id: u32, signal: i32) -> Result<()> {
    with_primary(|p| p.kill(id, signal))
}

/// Stops worker `id` gracefully.
pub fn worker_disconnect(id: u32) -> Result<()> {
    with_primary(|p| {
        p.disconnect(id)?;
        p.shared().wake();
        Ok(())
    })
}

/// Takes a silent Node worker's stdio pipes (the primary's ends, owned by the caller now).
pub fn worker_take_stdio(id: u32) -> Result<[OwnedFd; 3]> {
    with_primary(|p| p.take_stdio(id))
}

/// Closes the primary's end of worker `id`'s channel (Node's `subprocess.disconnect()`): the
/// worker sees it close; a DISCONNECT event follows. The worker is not signalled.
pub fn worker_close_channel(id: u32) -> Result<()> {
    with_primary(|p| {
        p.close_channel(id)?;
        p.shared().wake();
        Ok(())
    })
}

/// Sets the number of workers: starts more, or stops the newest gracefully.
pub fn scale(n: u32) -> Result<()> {
    ensure_primary_role()?;
    let mut rt = runtime()?;
    let p = as_primary(&mut rt)?;
    p.scale(n)?;
    p.shared().wake();
    drive_spawns(rt);
    Ok(())
}

/// Worker: reports that one connection it was handed has finished (LEAST_CONNECTIONS counts
/// the connections each worker holds). Any thread.
pub fn conn_done() -> Result<()> {
    if !is_worker() {
        return fail(Code::Role, "cluster_conn_done is for workers");
    }
    shared()?.push(0, Worker::conn_done_frame(1))
}

/// Starts a rolling reload of every worker.
pub fn reload() -> Result<()> {
    with_primary(|p| {
        p.reload()?;
        p.shared().wake();
        Ok(())
    })?;
    drive_spawns(runtime()?);
    Ok(())
}

/// The primary's counters as JSON.
pub fn stats() -> Result<String> {
    with_primary(|p| Ok(p.stats_json()))
}

/// Holds what this process sends from now on (any thread) until `uncork`.
pub fn cork() -> Result<()> {
    shared()?.cork_all();
    Ok(())
}

/// Messages this process sends from inside its event callbacks wait until the callbacks of
/// that dispatch are done (see `set_batching`).
static BATCHING: AtomicBool = AtomicBool::new(false);

/// Turns batching of callback sends on or off for this process: on, what event callbacks
/// send (on the dispatching thread) leaves in batches (`BATCH_FRAMES` at a time, the rest when
/// the dispatch's callbacks are done), much as Node's `process.send` leaves when the
/// JavaScript stack unwinds. Off by default, because
/// a callback that sends and then blocks would hold its message until it returns.
pub fn set_batching(on: bool) {
    BATCHING.store(on, Ordering::Relaxed);
}

/// Sends what was held since `cork`, batched.
pub fn uncork() -> Result<()> {
    shared()?.uncork_all();
    Ok(())
}

/// Listens on `host:port`. In a worker: asks the primary, which binds the address or shares
/// the socket it already has for it (workers that ask for the same address, port 0 included,
/// share one), and waits for the answer; connections from there come as CONNECTION events.
/// In the primary: a listener every worker gets connections from. Returns the listener index.
pub fn listen_tcp(host: &str, port: u16) -> Result<u32> {
    // A name is resolved here, by the caller, never on the primary's loop.
    let spec = crate::config::ListenSpec::tcp(host, port)?;
    listen(spec)
}

/// Listens on a Unix stream socket at `path` (see `listen_tcp`).
pub fn listen_unix(path: &str) -> Result<u32> {
    listen(crate::config::ListenSpec::unix(path)?)
}

fn listen(spec: crate::config::ListenSpec) -> Result<u32> {
    if is_worker() {
        let key = match spec {
            crate::config::ListenSpec::Tcp { addr, .. } => crate::ipc::listen::ListenKey::Tcp(addr),
            // The primary binds it, in its own directory: a relative path is this worker's.
            crate::config::ListenSpec::Unix { path, .. } => crate::ipc::listen::ListenKey::Unix(absolute(&path)?),
            crate::config::ListenSpec::Inherited { .. } => return fail(Code::Inval, "not an address to listen on"),
        };
        return with_worker(|w| w.listen(key));
    }
    with_primary(|p| {
        let index = p.listen(spec)?;
        p.shared().wake();
        Ok(index)
    })
}

/// `path` made absolute against this process's working directory, `.` and `..` taken out
/// lexically (as node:cluster's workers resolve a path before asking the primary); still
/// short enough for a Unix socket address.
fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::path::Component;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|e| {
            Error::new(Code::Sys, format!("listen unix:{}: the working directory: {e}", path.display()))
        })?;
        cwd.join(path)
    };
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().len() >= 108 {
        return fail(
            Code::Inval,
            format!(
                "listen unix:{}: the absolute path {} is too long for a Unix socket",
                path.display(),
                out.display()
            ),
        );
    }
    Ok(out)
}

/// Worker: stops listening on `listener` (opened with `listen_*`); nothing on its way to this
/// worker from there is lost (it goes to the workers that still listen there).
pub fn unlisten(listener: u32) -> Result<()> {
    if !is_worker() {
        return fail(
            Code::Role,
            "cluster_unlisten is for workers (the primary's listeners close when the cluster stops)",
        );
    }
    with_worker(|w| {
        w.unlisten(listener)?;
        w.shared().wake();
        Ok(())
    })
}

/// Runs `f` on the side loop (children, threads) of the running runtime, made on first use.
fn with_side<T>(f: impl FnOnce(&mut sideloop::SideLoop) -> Result<T>) -> Result<T> {
    let rt = runtime()?;
    let outer = match &*rt {
        Runtime::Primary(p) => p.poll_fd(),
        Runtime::Worker(w) => w.poll_fd(),
        Runtime::Finished(_) => return fail(Code::Closed, "the runtime has stopped"),
        Runtime::Idle => {
            return fail(
                Code::State,
                "not started: children and threads report on the loop (call cluster_primary_start or \
                 cluster_worker_start first)",
            )
        }
    };
    sideloop::with(outer, f)
}

/// Starts a child process (Node's `child_process.spawn`, or with `max_buffer` its `exec`);
/// returns its id. Its output, its end and its errors come as CHILD_* events on this loop.
/// A child that dies with this process (not detached) is started on the loop thread only:
/// PR_SET_PDEATHSIG follows the thread that starts it, and a short-lived thread would take
/// the child with it.
pub fn spawn(opts: &crate::child::Options) -> Result<u32> {
    if !opts.detached && !on_loop_thread() {
        return fail(
            Code::State,
            "a child that dies with this process is started on the loop thread (the one that dispatches): \
             PR_SET_PDEATHSIG follows the thread that starts it; start it from an event callback, or detached",
        );
    }
    let sched = crate::primary::sched::before();
    with_side(|side| side.spawn(opts, sched))
}

/// Writes to a child's stdin (queued; written as it reads). Any thread.
pub fn child_write(id: u32, data: &[u8]) -> Result<()> {
    with_side(|side| side.child_write(id, data))
}

/// Closes a child's stdin once what was written is through.
pub fn child_close_stdin(id: u32) -> Result<()> {
    with_side(|side| side.child_close_stdin(id))
}

/// Signals a child.
pub fn child_kill(id: u32, signal: i32) -> Result<()> {
    with_side(|side| side.child_kill(id, signal))
}

/// Runs `job` on a thread (or the pool); returns its id. Its posts come as THREAD_MESSAGE
/// events on this loop, its end as THREAD_EXIT.
pub fn thread_start(job: crate::threads::Job) -> Result<u32> {
    with_side(|side| side.thread_start(job))
}

/// Sends a message to thread `id`.
pub fn thread_send(id: u32, data: &[u8]) -> Result<()> {
    with_side(|side| side.thread_send(id, data))
}

/// Thread functions run on a pool of `n` threads from now on (0: a thread each).
pub fn threads_set_pool(n: usize) -> Result<()> {
    with_side(|side| side.set_pool(n))
}
