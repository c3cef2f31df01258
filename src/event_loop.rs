//! The loop shape (libuv's): one epoll fd that is the whole loop's pollable fd, a timerfd for
//! timers so that fd also wakes for them, and an eventfd that other threads use to wake it.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::timerfd::TimerFd;

use crate::error::{Error, Result};
use crate::sys;

/// Where a readiness event comes from. Encoded into epoll's u64 so a stale event (for a source
/// that went away while the loop was blocked) decodes to an id that is simply not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The cross-thread waker.
    Waker,
    /// The timerfd.
    Timer,
    /// The signal self-pipe.
    Signals,
    /// A channel to a worker (by worker id) or, in a worker, to the primary (id 0).
    Channel(u32),
    /// A worker's pidfd (by worker id).
    Child(u32),
    /// A listening socket (by listener index).
    Listener(u32),
    /// The primary's metrics endpoint: its listener (0) or a scrape (by id).
    Metrics(u32),
    /// The side loop's epoll fd (child processes, threads), nested in the runtime's: the
    /// runtime turns it (`sideloop`), the primary and the worker never see it.
    Side,
    /// A child process's stdio stream, in the side loop: `child id << 2 | stream` (0 stdin,
    /// 1 stdout, 2 stderr).
    Stdio(u32),
}

impl Source {
    fn token(self) -> u64 {
        let (tag, id) = match self {
            Source::Waker => (1u64, 0),
            Source::Timer => (2, 0),
            Source::Signals => (3, 0),
            Source::Channel(id) => (4, id),
            Source::Child(id) => (5, id),
            Source::Listener(id) => (6, id),
            Source::Metrics(id) => (7, id),
            Source::Side => (8, 0),
            Source::Stdio(id) => (9, id),
        };
        tag << 32 | u64::from(id)
    }

    fn from_token(token: u64) -> Option<Source> {
        let id = token as u32;
        Some(match token >> 32 {
            1 => Source::Waker,
            2 => Source::Timer,
            3 => Source::Signals,
            4 => Source::Channel(id),
            5 => Source::Child(id),
            6 => Source::Listener(id),
            7 => Source::Metrics(id),
            8 => Source::Side,
            9 => Source::Stdio(id),
            _ => return None,
        })
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// What became ready.
    pub source: Source,
    /// Readable (or hung up, or in error: reading tells which).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
}

/// Wakes the loop from any thread.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// Makes the loop's next (or current) wait return.
    pub fn wake(&self) {
        // EAGAIN (counter full) is fine: the loop is already due to wake.
        nix::unistd::write(&self.fd, &1u64.to_ne_bytes()).ok();
    }

    /// The eventfd (for `requests`, which writes to it from signal handlers).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An identifier for a timer, to cancel it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerId(u64, u64);

/// The epoll set, its timers and its waker. `T` is what a timer carries back when it fires.
pub struct Reactor<T> {
    epoll: Epoll,
    timerfd: TimerFd,
    waker: std::sync::Arc<Waker>,
    timers: BTreeMap<TimerId, T>,
    next_timer: u64,
}

impl<T> Reactor<T> {
    /// A new reactor with its timerfd and waker registered.
    pub fn new() -> Result<Reactor<T>> {
        let epoll = new_epoll().map_err(|e| Error::sys("epoll_create1", e))?;
        let timerfd = sys::timerfd().map_err(|e| Error::sys("timerfd_create", e))?;
        let wake = sys::eventfd().map_err(|e| Error::sys("eventfd", e))?;
        let r = Reactor {
            epoll,
            timerfd,
            waker: std::sync::Arc::new(Waker { fd: wake }),
            timers: BTreeMap::new(),
            next_timer: 0,
        };
        r.add(&r.timerfd, Source::Timer, true, false)?;
        r.add(&r.waker.fd, Source::Waker, true, false)?;
        Ok(r)
    }

    /// The pollable fd: readable whenever `wait` has something to report (`cluster_fd`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    /// The cross-thread waker.
    pub fn waker(&self) -> std::sync::Arc<Waker> {
        self.waker.clone()
    }

    fn event(source: Source, readable: bool, writable: bool) -> EpollEvent {
        let mut flags = EpollFlags::empty();
        flags.set(EpollFlags::EPOLLIN, readable);
        flags.set(EpollFlags::EPOLLOUT, writable);
        EpollEvent::new(flags, source.token())
    }

    /// Watches `fd` (level-triggered).
    pub fn add(&self, fd: impl AsFd, source: Source, readable: bool, writable: bool) -> Result<()> {
        self.epoll
            .add(fd, Self::event(source, readable, writable))
            .map_err(|e| Error::sys(format!("epoll_ctl(ADD, {source:?})"), e))
    }

    /// Watches a listening socket shared with other processes, waking only one of them per
    /// connection (EPOLLEXCLUSIVE: no thundering herd).
    pub fn add_exclusive(&self, fd: impl AsFd, source: Source) -> Result<()> {
        let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, source.token());
        self.epoll.add(fd, ev).map_err(|e| Error::sys(format!("epoll_ctl(ADD|EXCLUSIVE, {source:?})"), e))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: impl AsFd, source: Source, readable: bool, writable: bool) -> Result<()> {
        let mut ev = Self::event(source, readable, writable);
        self.epoll.modify(fd, &mut ev).map_err(|e| Error::sys(format!("epoll_ctl(MOD, {source:?})"), e))
    }

    /// Stops watching `fd` (before it is closed, or to pause a listener).
    pub fn remove(&self, fd: impl AsFd) {
        self.epoll.delete(fd).ok(); // ENOENT: it was not watched
    }

    /// Fires `value` once at `at_ms` on the monotonic clock.
    pub fn add_timer(&mut self, at_ms: u64, value: T) -> TimerId {
        self.next_timer += 1;
        let id = TimerId(at_ms, self.next_timer);
        self.timers.insert(id, value);
        self.rearm();
        id
    }

    /// Cancels a timer (no-op when it already fired).
    pub fn cancel_timer(&mut self, id: TimerId) {
        if self.timers.remove(&id).is_some() {
            self.rearm();
        }
    }

    /// Takes every timer due at `now_ms`, in deadline order, and re-arms the timerfd.
    pub fn expired(&mut self, now_ms: u64) -> Vec<T> {
        sys::drain_fd(&self.timerfd);
        let later = self.timers.split_off(&TimerId(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.timers, later);
        self.rearm();
        due.into_values().collect()
    }

    fn rearm(&self) {
        let after = self.timers.keys().next().map(|t| Duration::from_millis(t.0.saturating_sub(sys::monotonic_ms())));
        if let Err(e) = sys::timerfd_arm(&self.timerfd, after) {
            log::error!("timerfd_settime: {e}");
        }
    }

    /// Ends the reactor but keeps its epoll fd, emptied: a host may still be polling that
    /// number, and must never see it reused by an unrelated descriptor.
    pub fn into_silent_fd(self) -> OwnedFd {
        let Reactor { epoll, .. } = self;
        let mut epfd = epoll.0;
        // dup3 replaces `epfd`'s number atomically with a new, empty epoll instance, and the old
        // instance goes away with its registrations.
        if let Ok(empty) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            nix::unistd::dup3(&empty.0, &mut epfd, nix::fcntl::OFlag::O_CLOEXEC).ok();
        }
        epfd
    }

    /// Consumes the waker's counter (after it fired).
    pub fn clear_wake(&self) {
        sys::drain_fd(&self.waker.fd);
    }
}

/// A CLOEXEC epoll instance numbered above stdio.
fn new_epoll() -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    Ok(Epoll(sys::above_stdio(epoll.0)?))
}

/// Watches `inner` (another loop's epoll fd) from the loop whose epoll fd is `outer`, as
/// `Source::Side`: `outer` becomes readable whenever `inner` has something to report. For the
/// side loop, which the runtime nests in the primary's or the worker's without holding their
/// reactor.
pub fn nest(outer: BorrowedFd<'_>, inner: BorrowedFd<'_>) -> Result<()> {
    // A duplicate names the same epoll instance: registering through it registers in `outer`,
    // and closing it leaves the registration (which follows the instance and `inner`).
    let outer = Epoll(sys::dup_cloexec(outer).map_err(|e| Error::sys("dup of the loop's epoll fd", e))?);
    let ev = EpollEvent::new(EpollFlags::EPOLLIN, Source::Side.token());
    outer.add(inner, ev).map_err(|e| Error::sys("epoll_ctl(ADD, Side)", e))
}

/// Waits on the loop's epoll fd without holding the reactor (the caller may not hold the
/// runtime lock while it blocks; the number stays an epoll instance for as long as the host
/// may poll it, see `Reactor::into_silent_fd`). `timeout_ms` < 0 waits forever.
pub fn wait(epfd: BorrowedFd<'_>, timeout_ms: i32, out: &mut Vec<Ready>) -> nix::Result<()> {
    out.clear();
    let mut events = [EpollEvent::empty(); 256];
    let n = match sys::raw::epoll_wait(epfd, &mut events, timeout_ms) {
        Ok(n) => n,
        Err(Errno::EINTR) => return Ok(()),
        Err(e) => return Err(e),
    };
    for ev in &events[..n] {
        let bits = ev.events();
        if let Some(source) = Source::from_token(ev.data()) {
            let hup = bits.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
            out.push(Ready {
                source,
                readable: hup || bits.contains(EpollFlags::EPOLLIN),
                writable: bits.contains(EpollFlags::EPOLLOUT),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for s in [
            Source::Waker,
            Source::Timer,
            Source::Signals,
            Source::Channel(7),
            Source::Child(u32::MAX),
            Source::Listener(0),
            Source::Side,
            Source::Stdio(9 << 2 | 1),
        ] {
            assert_eq!(Source::from_token(s.token()), Some(s));
        }
        assert_eq!(Source::from_token(99 << 32), None);
    }

    #[test]
    fn the_waker_and_timers_make_the_fd_ready() {
        let mut r: Reactor<&'static str> = Reactor::new().unwrap();
        let mut out = Vec::new();
        wait(r.fd(), 0, &mut out).unwrap();
        assert!(out.is_empty());
        r.waker().wake();
        wait(r.fd(), 1000, &mut out).unwrap();
        assert!(matches!(out[..], [Ready { source: Source::Waker, .. }]));
        r.clear_wake();
        let now = sys::monotonic_ms();
        let late = r.add_timer(now + 60_000, "late");
        r.add_timer(now + 20, "soon");
        wait(r.fd(), 5000, &mut out).unwrap();
        assert!(matches!(out[..], [Ready { source: Source::Timer, .. }]));
        assert_eq!(r.expired(sys::monotonic_ms()), vec!["soon"]);
        r.cancel_timer(late);
        assert!(r.expired(now + 120_000).is_empty());
    }
}
