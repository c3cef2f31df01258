//! When to start a worker again: a worker that served (READY, and alive at least the minimum
//! uptime) is replaced at once; one that died young waits a capped exponential backoff per
//! slot; and crash-loop detection gives a slot up.
//!
//! Young deaths are what a crash loop is made of: deaths before READY, and deaths after READY
//! within the minimum uptime that the worker brought on itself (it exited, or a crash signal
//! such as SIGSEGV or SIGABRT), as a worker that reports READY and then fails to bind does
//! over and over. A young worker stopped by a signal someone sends to stop processes (SIGKILL,
//! SIGTERM, SIGINT, SIGQUIT, SIGHUP: an operator, a test, the OOM killer) is backed off but
//! not counted: it says nothing about the code the slot runs.

use std::collections::VecDeque;

/// The restart policy: plain data of the configuration, which owns it (`config` sits below
/// the supervisor); the old path stays.
pub use crate::config::RestartPolicy;

/// What to do after a worker of a slot died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a replacement in this slot after this many ms.
    RespawnAfter(u64),
    /// Stop restarting this slot: the sentence says why.
    GiveUp(String),
}

/// How a worker died, as the restart policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Death {
    /// When, monotonic ms.
    pub now_ms: u64,
    /// How long it lived, ms.
    pub uptime_ms: u64,
    /// It reported READY at some point.
    pub was_ready: bool,
    /// The signal that ended it (0: it exited).
    pub signal: i32,
}

impl Death {
    /// Stopped from outside, by a signal meant to stop a process, not by its own failure.
    fn stopped_from_outside(&self) -> bool {
        matches!(self.signal, libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP)
    }
}

/// The restart history of one slot.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Restarts so far.
    pub restarts: u32,
    next_delay_ms: u64,
    early_deaths: VecDeque<u64>,
    /// The slot was given up (crash loop).
    pub given_up: bool,
}

impl History {
    /// A worker of this slot died.
    pub fn on_death(&mut self, policy: &RestartPolicy, d: Death) -> Decision {
        let healthy = d.was_ready && d.uptime_ms >= policy.min_uptime_ms;
        if healthy {
            // It served: replace it now, and a later young death starts the backoff afresh.
            self.early_deaths.clear();
            self.next_delay_ms = policy.min_ms;
            self.restarts += 1;
            return Decision::RespawnAfter(0);
        }
        if !d.was_ready || !d.stopped_from_outside() {
            self.early_deaths.push_back(d.now_ms);
            while self.early_deaths.front().is_some_and(|&t| d.now_ms.saturating_sub(t) > policy.loop_window_ms) {
                self.early_deaths.pop_front();
            }
            if self.early_deaths.len() >= policy.loop_deaths {
                self.given_up = true;
                return Decision::GiveUp(format!(
                    "{} workers died young (before becoming ready, or within {} ms of their start) within {} ms: \
                     crash loop, not restarting this slot",
                    self.early_deaths.len(),
                    policy.min_uptime_ms,
                    policy.loop_window_ms
                ));
            }
        }
        if d.uptime_ms >= policy.reset_after_ms || self.next_delay_ms == 0 {
            self.next_delay_ms = policy.min_ms;
        }
        let delay = self.next_delay_ms;
        self.next_delay_ms = (delay * 2).min(policy.max_ms);
        self.restarts += 1;
        Decision::RespawnAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(now_ms: u64, uptime_ms: u64, was_ready: bool) -> Death {
        Death { now_ms, uptime_ms, was_ready, signal: 0 }
    }

    #[test]
    fn young_deaths_double_up_to_the_cap_and_a_long_uptime_resets() {
        let p = RestartPolicy { loop_deaths: 1000, ..RestartPolicy::default() };
        let mut h = History::default();
        let delays: Vec<u64> = (0..10)
            .map(|i| match h.on_death(&p, death(i * 100_000, 500, true)) {
                Decision::RespawnAfter(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]);
        assert_eq!(h.on_death(&p, death(2_000_000, 30_000, false)), Decision::RespawnAfter(100), "long uptime resets");
        assert_eq!(h.on_death(&p, death(2_100_000, 10, true)), Decision::RespawnAfter(200));
        assert_eq!(h.restarts, 12);
    }

    #[test]
    fn a_worker_that_served_past_the_minimum_uptime_is_replaced_at_once_and_resets_the_backoff() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        for i in 0..3 {
            assert!(matches!(h.on_death(&p, death(i * 10, 5, true)), Decision::RespawnAfter(d) if d > 0));
        }
        for i in 0..20 {
            assert_eq!(h.on_death(&p, death(1000 + i * 1200, 1200, true)), Decision::RespawnAfter(0), "death {i}");
        }
        assert_eq!(h.on_death(&p, death(30_000, 5, true)), Decision::RespawnAfter(100), "the backoff starts afresh");
        // Not READY: never healthy, however long it lived (short of reset_after_ms).
        assert_eq!(h.on_death(&p, death(31_000, 5000, false)), Decision::RespawnAfter(200));
        assert_eq!(h.restarts, 25);
    }

    #[test]
    fn five_young_deaths_in_the_window_give_the_slot_up_ready_or_not() {
        let p = RestartPolicy::default();
        for ready in [false, true] {
            let mut h = History::default();
            for i in 0..4 {
                assert!(matches!(h.on_death(&p, death(i * 1000, 5, ready)), Decision::RespawnAfter(_)));
            }
            assert!(matches!(h.on_death(&p, death(4000, 5, ready)), Decision::GiveUp(_)), "ready {ready}");
            assert!(h.given_up);
        }
        // A crash signal after READY counts too.
        let mut h = History::default();
        for i in 0..5 {
            h.on_death(&p, Death { signal: libc::SIGSEGV, ..death(i, 5, true) });
        }
        assert!(h.given_up);
    }

    #[test]
    fn young_deaths_that_are_not_a_loop() {
        let p = RestartPolicy::default();
        // Spread wider than the window.
        let mut h = History::default();
        for i in 0..20 {
            assert!(matches!(h.on_death(&p, death(i * 3000, 5, false)), Decision::RespawnAfter(_)), "death {i}");
        }
        // Interrupted by a worker that served.
        let mut h = History::default();
        for i in 0..20 {
            let uptime = if i % 4 == 3 { 2000 } else { 5 };
            assert!(matches!(h.on_death(&p, death(i * 10, uptime, true)), Decision::RespawnAfter(_)), "death {i}");
        }
        // Stopped from outside after READY (SIGKILL, SIGTERM...): backed off, not counted.
        let mut h = History::default();
        for i in 0..20 {
            let d = Death { signal: libc::SIGKILL, ..death(i * 10, 5, true) };
            assert!(matches!(h.on_death(&p, d), Decision::RespawnAfter(d) if d > 0), "death {i}");
        }
        // ...but before READY it counts: a worker that never got going is a failed start.
        let mut h = History::default();
        for i in 0..5 {
            h.on_death(&p, Death { signal: libc::SIGKILL, ..death(i * 10, 5, false) });
        }
        assert!(h.given_up);
    }
}
