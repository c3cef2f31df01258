//! Supervision over time: respawn with backoff and crash-loop detection, startup timeouts,
//! the heartbeat watchdog, rolling reloads and max-requests recycling, sd_notify, and stats.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::error::{fail, Code, Result};
use crate::event::{Event, EventKind};
use crate::sys::{self, ExitStatus};

use super::restart::{Death, Decision};
use super::workers::{Slot, WorkerState};
use super::{Phase, Primary, Timer};

/// A rolling replacement of workers, one slot at a time: start the replacement, wait for its
/// READY, then drain the old worker. Also used for a single max-requests recycle.
pub struct Reload {
    pending: VecDeque<u32>,
    /// (old worker, its replacement) being swapped now.
    current: Option<(u32, u32)>,
    /// A max-requests recycle: no RELOADED event, no sd_notify.
    recycle: bool,
}

/// How long a worker gets after the watchdog's SIGABRT before SIGKILL.
const ABORT_GRACE_MS: u64 = 2000;

/// What the watchdog knows of the primary's own loop: a worker's silence counts only while
/// the primary was looking. A loop that stopped turning (the process was SIGSTOPped, a host
/// callback or the host's own loop took long, a slow spawn) did not read what the workers sent
/// meanwhile, so their heartbeats wait unread in the channels, and wall time across that stall
/// says nothing about them.
#[derive(Default)]
pub struct Watch {
    /// When the last loop turn ended, monotonic ms (0: none yet).
    turn_end_ms: u64,
    /// When the last turn started.
    turn_start_ms: u64,
    /// Silence is measured from here at the earliest: the end of the primary's last stall.
    pub from_ms: u64,
}

impl Watch {
    /// The loop stalled when it did not turn for this long: half the heartbeat timeout, and at
    /// least two heartbeat intervals (an idle loop turns at least once per interval, for the
    /// watchdog timer and the workers' heartbeats).
    fn stall_ms(interval_ms: u32, timeout_ms: u32) -> u64 {
        (u64::from(timeout_ms) / 2).max(2 * u64::from(interval_ms))
    }
}

impl Primary {
    /// Arms the periodic timers (heartbeat watchdog, systemd watchdog).
    pub(super) fn start_timers(&mut self) {
        if self.cfg.heartbeat_ms > 0 && self.cfg.heartbeat_timeout_ms > 0 {
            self.reactor.add_timer(sys::monotonic_ms() + u64::from(self.cfg.heartbeat_ms), Timer::Watchdog);
        }
        if let Some(usec) = self.notifier.as_ref().and_then(|n| n.watchdog_usec) {
            self.reactor.add_timer(sys::monotonic_ms() + usec / 2000, Timer::SdWatchdog);
        }
    }

    /// A loop turn starts: if the loop did not turn for a while, the primary was not looking,
    /// and the watchdog grants every worker a fresh window from now.
    pub(super) fn turn_starts(&mut self) {
        let now = sys::monotonic_ms();
        self.watch.turn_start_ms = now;
        self.check_stall(self.watch.turn_end_ms, now);
    }

    /// A loop turn ends (a turn that itself took long is a stall too).
    pub(super) fn turn_ends(&mut self) {
        let now = sys::monotonic_ms();
        self.watch.turn_end_ms = now;
        self.check_stall(self.watch.turn_start_ms, now);
    }

    fn check_stall(&mut self, since: u64, now: u64) {
        let (interval, timeout) = (self.cfg.heartbeat_ms, self.cfg.heartbeat_timeout_ms);
        if since == 0 || interval == 0 || timeout == 0 {
            return;
        }
        let gap = now.saturating_sub(since);
        if gap > Watch::stall_ms(interval, timeout) {
            log::info!("the primary's loop did not turn for {gap} ms: the watchdog restarts its count from now");
            self.watch.from_ms = now;
        }
    }

    /// The connection count after which a new worker is recycled (0: never).
    pub(super) fn request_limit(&self) -> u64 {
        if self.cfg.max_requests == 0 {
            return 0;
        }
        // Jitter spreads the recycles so workers started together do not restart together.
        let mut x = sys::monotonic_ms() ^ (u64::from(self.next_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        limit_with_jitter(self.cfg.max_requests, self.cfg.max_requests_jitter, x)
    }

    /// Bookkeeping for a just-started worker.
    pub(super) fn worker_started(&mut self, id: u32) {
        if self.cfg.startup_timeout_ms > 0 {
            self.reactor.add_timer(sys::monotonic_ms() + u64::from(self.cfg.startup_timeout_ms), Timer::Startup(id));
        }
    }

    /// A start that failed before a process existed: counts as a death before READY.
    pub(super) fn start_failed(&mut self, id: u32, slot: u32) {
        if self.reload.as_ref().is_some_and(|r| r.current.is_some_and(|(_, new)| new == id)) {
            self.abort_reload(format!("replacement worker {id} failed to start"));
            return;
        }
        self.decide_restart(id, slot, 0, false, 0);
    }

    /// Timers of this module.
    pub(super) fn on_lifecycle_timer(&mut self, timer: Timer) {
        let now = sys::monotonic_ms();
        match timer {
            Timer::Respawn(slot) => self.respawn(slot),
            Timer::Startup(id) => {
                if let Some(s) = self.slots.get(&id).filter(|s| !s.ever_ready && !s.disconnect_requested) {
                    let msg = format!(
                        "worker {id} not ready {} ms after it started: killing it",
                        self.cfg.startup_timeout_ms
                    );
                    log::error!("{msg}");
                    let pid = s.pid;
                    s.signal(libc::SIGKILL).ok();
                    self.events.push(Event { pid, ..Event::error(id, msg) });
                }
            }
            Timer::Watchdog => {
                let timeout = u64::from(self.cfg.heartbeat_timeout_ms);
                let from = self.watch.from_ms;
                let stuck: Vec<(u32, i32, u64)> = self
                    .slots
                    .values()
                    // A worker whose channel we stopped reading (a relay waiting for room) is
                    // not silent, we are not listening: it is not judged, unless frames wait
                    // for it in our queue (the relay may be waiting on that very queue): then
                    // a living loop reads them, which `on_writable` counts as hearing from it.
                    .filter(|s| s.channel_open && !s.watchdog_fired)
                    .filter(|s| s.stalled.is_none() || s.outbox.queued() > 0)
                    .filter(|s| s.state != WorkerState::Starting)
                    .map(|s| (s.id, s.pid, now.saturating_sub(s.last_heard_ms.max(from))))
                    .filter(|&(_, _, silent)| silent > timeout)
                    .collect();
                for (id, pid, silent) in stuck {
                    let msg = format!("worker {id} (pid {pid}) silent for {silent} ms: its loop is stuck; SIGABRT");
                    log::error!("{msg}");
                    self.events.push(Event { pid, ..Event::error(id, msg) });
                    if let Some(s) = self.slots.get_mut(&id) {
                        s.signal(libc::SIGABRT).ok();
                        s.watchdog_fired = true;
                    }
                    self.reactor.add_timer(now + ABORT_GRACE_MS, Timer::KillStuck(id));
                }
                self.reactor.add_timer(now + u64::from(self.cfg.heartbeat_ms), Timer::Watchdog);
            }
            Timer::KillStuck(id) => {
                if let Some(s) = self.slots.get(&id) {
                    log::error!("worker {id} (pid {}) survived SIGABRT: SIGKILL", s.pid);
                    s.signal(libc::SIGKILL).ok();
                }
            }
            Timer::SdWatchdog => {
                self.notify("WATCHDOG=1");
                if let Some(usec) = self.notifier.as_ref().and_then(|n| n.watchdog_usec) {
                    self.reactor.add_timer(now + usec / 2000, Timer::SdWatchdog);
                }
            }
            _ => {}
        }
    }

    /// The backoff of `slot` is over: start its replacement (unless scaling or a shutdown
    /// cancelled it meanwhile).
    fn respawn(&mut self, slot: u32) {
        if !self.pending_respawns.remove(&slot) || self.phase != Phase::Running {
            return;
        }
        match self.request_spawn() {
            Ok(id) => {
                self.slot_for.insert(id, slot);
            }
            Err(e) => log::error!("respawn in slot {slot}: {e}"),
        }
    }

    /// After worker `slot.id` exited (and was removed): reload bookkeeping, then a respawn
    /// unless it was stopped on purpose or the cluster is stopping.
    pub(super) fn after_exit(&mut self, slot: &Slot, status: ExitStatus) {
        if let Some((old, new)) = self.reload.as_ref().and_then(|r| r.current) {
            if new == slot.id {
                let how = if status.signal != 0 {
                    format!("signal {}", status.signal)
                } else {
                    format!("code {}", status.code)
                };
                self.abort_reload(format!("replacement worker {} exited ({how}) before it was ready", slot.id));
                return;
            }
            if old == slot.id {
                return; // its replacement is taking over the slot
            }
        }
        if slot.disconnect_requested || self.phase != Phase::Running || self.cfg.restart.is_none() {
            return;
        }
        let uptime = sys::monotonic_ms().saturating_sub(slot.started_mono_ms);
        self.decide_restart(slot.id, slot.slot, uptime, slot.ever_ready, status.signal);
    }

    fn decide_restart(&mut self, id: u32, slot: u32, uptime_ms: u64, was_ready: bool, signal: i32) {
        let Some(policy) = self.cfg.restart else { return };
        if self.phase != Phase::Running {
            return;
        }
        let now = sys::monotonic_ms();
        let history = self.histories.entry(slot).or_default();
        if history.given_up {
            return;
        }
        match history.on_death(&policy, Death { now_ms: now, uptime_ms, was_ready, signal }) {
            Decision::RespawnAfter(0) => {
                log::info!("slot {slot}: worker {id} had served, replacing it now (restart {})", history.restarts);
                self.pending_respawns.insert(slot);
                self.reactor.add_timer(now, Timer::Respawn(slot));
            }
            Decision::RespawnAfter(delay) => {
                log::info!(
                    "slot {slot}: worker {id} died young, restarting in {delay} ms (restart {})",
                    history.restarts
                );
                self.pending_respawns.insert(slot);
                self.reactor.add_timer(now + delay, Timer::Respawn(slot));
            }
            Decision::GiveUp(why) => {
                let msg = format!("slot {slot} (last worker {id}): {why}");
                log::error!("{msg}");
                self.events.push(Event { data: msg.into_bytes().into(), ..Event::new(EventKind::SlotFailed, id) });
            }
        }
    }

    /// Worker `id` reported READY.
    pub(super) fn on_ready(&mut self, id: u32) {
        // It starts from the fewest the others were handed: a new worker takes its turn in
        // the rotation, not a burst to catch up.
        let floor = self.slots.values().filter(|s| s.id != id && s.accepts_connections()).map(|s| s.handed).min();
        if let Some(s) = self.slots.get_mut(&id) {
            s.ever_ready = true;
            s.ready_mono_ms = crate::sys::monotonic_ms();
            s.handed = floor.unwrap_or(0);
        }
        if let Some((old, new)) = self.reload.as_ref().and_then(|r| r.current) {
            if new == id {
                log::info!("reload: worker {new} is ready, draining worker {old}");
                self.disconnect(old).ok();
                if let Some(r) = self.reload.as_mut() {
                    r.current = None;
                }
                self.step_reload();
            }
        }
        if !self.ready_notified && self.ready_count() >= self.cfg.effective_workers() as usize {
            self.ready_notified = true;
            let status = format!("READY=1\nSTATUS={} workers ready", self.ready_count());
            self.notify(&status);
        }
    }

    fn ready_count(&self) -> usize {
        self.slots.values().filter(|s| s.state == WorkerState::Ready && !s.disconnect_requested).count()
    }

    /// Starts a rolling reload: every worker is replaced, one slot at a time, the ready count
    /// never dropping; a replacement that fails aborts it and the old worker stays.
    pub fn reload(&mut self) -> Result<()> {
        if self.phase != Phase::Running {
            return fail(Code::State, "the cluster is shutting down: no reload");
        }
        if self.reload.as_ref().is_some_and(|r| !r.recycle) {
            return fail(Code::State, "a reload is already in progress");
        }
        let pending: VecDeque<u32> = self.slots.values().filter(|s| !s.disconnect_requested).map(|s| s.id).collect();
        log::info!("rolling reload of {} worker(s)", pending.len());
        let usec = sys::monotonic_ms() * 1000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        if let Some(r) = self.reload.as_mut() {
            // A recycle in progress becomes part of the reload.
            r.recycle = false;
            r.pending.extend(pending.into_iter().filter(|id| r.current.is_none_or(|(old, _)| old != *id)));
        } else {
            self.reload = Some(Reload { pending, current: None, recycle: false });
        }
        self.step_reload();
        Ok(())
    }

    /// Recycles worker `id` if it reached its max-requests limit.
    pub(super) fn check_recycle(&mut self, id: u32) {
        let Some(s) = self.slots.get(&id) else { return };
        if s.request_limit == 0 || s.connections < s.request_limit || s.disconnect_requested || self.reload.is_some() {
            return;
        }
        if self.phase != Phase::Running {
            return;
        }
        log::info!("worker {id} served {} connections (limit {}): recycling it", s.connections, s.request_limit);
        self.reload = Some(Reload { pending: VecDeque::from([id]), current: None, recycle: true });
        self.step_reload();
    }

    fn step_reload(&mut self) {
        loop {
            let Some(r) = self.reload.as_mut() else { return };
            if r.current.is_some() {
                return;
            }
            let Some(old) = r.pending.pop_front() else {
                let recycle = r.recycle;
                self.reload = None;
                if !recycle {
                    log::info!("rolling reload complete");
                    self.events
                        .push(Event { data: b"reload complete".to_vec().into(), ..Event::new(EventKind::Reloaded, 0) });
                    self.notify("READY=1\nSTATUS=reload complete");
                }
                return;
            };
            let Some(slot) = self.slots.get(&old).filter(|s| !s.disconnect_requested).map(|s| s.slot) else { continue };
            match self.request_spawn() {
                Ok(new) => {
                    self.slot_for.insert(new, slot);
                    log::info!("reload: starting worker {new} to replace worker {old}");
                    if let Some(r) = self.reload.as_mut() {
                        r.current = Some((old, new));
                    }
                    return;
                }
                Err(e) => return self.abort_reload(format!("cannot start a replacement: {e}")),
            }
        }
    }

    pub(super) fn abort_reload(&mut self, why: String) {
        let Some(r) = self.reload.take() else { return };
        if r.recycle {
            log::warn!("recycle aborted: {why}; the old worker keeps serving");
            return;
        }
        let msg = format!("reload aborted: {why}; the old workers keep serving");
        log::error!("{msg}");
        self.events.push(Event { exit_code: -1, data: msg.into_bytes().into(), ..Event::new(EventKind::Reloaded, 0) });
        if self.phase == Phase::Running {
            self.notify("READY=1\nSTATUS=reload aborted");
        }
    }

    /// Sends an sd_notify message when NOTIFY_SOCKET is set.
    pub(super) fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier {
            n.send(state);
        }
    }

    /// Per-worker and total counters as JSON.
    pub fn stats_json(&self) -> String {
        let now = sys::monotonic_ms();
        let mut out = String::from("{\"workers\":[");
        let (mut conns, mut min, mut mout) = (0u64, 0u64, 0u64);
        for (i, s) in self.slots.values().enumerate() {
            let info = s.info();
            conns += info.connections;
            min += info.messages_in;
            mout += info.messages_out;
            let state = match info.state {
                WorkerState::Starting => "starting",
                WorkerState::Online => "online",
                WorkerState::Ready => "ready",
                WorkerState::Disconnecting => "disconnecting",
                WorkerState::Dead => "dead",
            };
            let _ = write!(
                out,
                "{}{{\"id\":{},\"pid\":{},\"slot\":{},\"state\":\"{state}\",\"connections\":{},\"in_flight\":{},\"messages_in\":{},\"messages_out\":{},\"restarts\":{},\"uptime_ms\":{}}}",
                if i > 0 { "," } else { "" },
                info.id,
                info.pid,
                s.slot,
                info.connections,
                s.unacked,
                info.messages_in,
                info.messages_out,
                info.restarts,
                now.saturating_sub(s.started_mono_ms)
            );
        }
        out.push_str("],\"slots\":[");
        for (i, (slot, h)) in self.histories.iter().enumerate() {
            let _ = write!(
                out,
                "{}{{\"slot\":{slot},\"restarts\":{},\"given_up\":{}}}",
                if i > 0 { "," } else { "" },
                h.restarts,
                h.given_up
            );
        }
        // Restarts of every slot, including those whose workers are gone (a given-up slot).
        let restarts: u64 = self.histories.values().map(|h| u64::from(h.restarts)).sum();
        let _ = write!(
            out,
            "],\"total\":{{\"workers\":{},\"connections\":{conns},\"messages_in\":{min},\"messages_out\":{mout},\"restarts\":{restarts},\"dropped\":{},\"waiting\":{},\"accept_pauses\":{},\"send_retries\":{}}},\"uptime_ms\":{}}}",
            self.slots.len(),
            self.handoff.dropped,
            self.handoff.waiting.len(),
            self.accept_pauses,
            self.send_retries,
            now.saturating_sub(self.started_ms)
        );
        out
    }
}

/// `n` plus a share of `random` in 0..=`jitter`, for any values the config accepts: a jitter
/// of `u64::MAX` takes all of `random` (its range has no `+ 1`), and the sum saturates, so a
/// limit beyond `u64::MAX` connections is simply never reached.
fn limit_with_jitter(n: u64, jitter: u64, random: u64) -> u64 {
    let extra = match jitter.checked_add(1) {
        Some(span) => random % span,
        None => random,
    };
    n.saturating_add(extra)
}

#[cfg(test)]
mod tests {
    use super::limit_with_jitter;
    use crate::config::{Config, Mode};
    use crate::event::EventKind;
    use crate::event_loop;
    use crate::primary::Primary;
    use crate::sys;
    use std::os::fd::OwnedFd;

    /// A worker whose channel the primary cannot watch (epoll refuses the fd: here /dev/null,
    /// in life ENOSPC or ENOMEM) is killed, reaped and reported, and does not hold up the
    /// shutdown. Before, its exit went unwatched: a zombie in the slots for good.
    #[test]
    fn a_worker_whose_channel_cannot_be_watched_is_killed_reaped_and_does_not_block_shutdown() {
        let cfg = Config {
            workers: 1,
            mode: Mode::Exec,
            exec: Some((c"/nonexistent/worker".to_owned(), Vec::new())),
            signals: false,
            startup_timeout_ms: 0,
            heartbeat_ms: 0,
            ..Config::default()
        };
        let mut p = Primary::start(cfg).unwrap();
        let id = p.next_spawn().expect("one start queued");
        // The primary reaps it (what this test checks), not `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        let pid = child.id() as libc::pid_t;
        let unwatchable = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        p.adopt(id, 0, pid, unwatchable, None);
        let mut events = p.take_events();
        let deadline = sys::monotonic_ms() + 10_000;
        let mut ready = Vec::new();
        let mut shutdown_asked = false;
        while !p.finished() {
            assert!(sys::monotonic_ms() < deadline, "not finished within 10 s; events so far: {events:?}");
            if !shutdown_asked && events.iter().any(|e| e.kind == EventKind::Exit) {
                p.begin_shutdown(5000);
                shutdown_asked = true;
            }
            event_loop::wait(p.poll_fd(), 50, &mut ready).unwrap();
            p.process(&ready);
            events.extend(p.take_events());
        }
        let kinds: Vec<EventKind> = events.iter().filter(|e| e.worker_id == id).map(|e| e.kind).collect();
        assert_eq!(kinds[..3], [EventKind::Fork, EventKind::Error, EventKind::Disconnect], "{events:?}");
        let exit = events.iter().find(|e| e.kind == EventKind::Exit).expect("an EXIT");
        assert_eq!((exit.worker_id, exit.pid, exit.signal), (id, pid, libc::SIGKILL));
        // Reaped by the primary: no zombie left for anyone to wait for.
        let r = crate::sys::raw::waitpid_nohang(pid);
        assert_eq!(r, Err(nix::errno::Errno::ECHILD), "the worker was reaped");
    }

    #[test]
    fn request_limits_hold_at_the_edges_of_u64() {
        assert_eq!(limit_with_jitter(1, u64::MAX, 41), 42, "the whole range: no remainder by zero");
        assert_eq!(limit_with_jitter(1, u64::MAX, u64::MAX), u64::MAX, "saturates instead of wrapping to 0");
        assert_eq!(limit_with_jitter(u64::MAX, u64::MAX, 7), u64::MAX);
        assert_eq!(limit_with_jitter(u64::MAX, 0, 7), u64::MAX);
        assert_eq!(limit_with_jitter(10, 0, 12345), 10, "no jitter: exactly n");
        assert_eq!(limit_with_jitter(10, 4, 12), 12, "12 % 5 = 2 on top of 10");
        assert!((10..=14).contains(&limit_with_jitter(10, 4, u64::MAX)));
    }
}
