//! When to start a worker again: capped exponential backoff per slot, reset after a healthy
//! uptime, and crash-loop detection that gives a slot up.

use std::collections::VecDeque;

/// The restart policy (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay, ms (default 100).
    pub min_ms: u64,
    /// Largest delay, ms (default 15 000).
    pub max_ms: u64,
    /// An uptime this long resets the delay to `min_ms` (default 30 000).
    pub reset_after_ms: u64,
    /// Deaths before READY that make a crash loop (default 5)...
    pub loop_deaths: usize,
    /// ...within this window, ms (default 10 000).
    pub loop_window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy { min_ms: 100, max_ms: 15_000, reset_after_ms: 30_000, loop_deaths: 5, loop_window_ms: 10_000 }
    }
}

/// What to do after a worker of a slot died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a replacement in this slot after this many ms.
    RespawnAfter(u64),
    /// Stop restarting this slot: the sentence says why.
    GiveUp(String),
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
    /// A worker of this slot died at `now_ms` after `uptime_ms`; `was_ready` says whether it
    /// ever reported READY.
    pub fn on_death(&mut self, policy: &RestartPolicy, now_ms: u64, uptime_ms: u64, was_ready: bool) -> Decision {
        if !was_ready {
            self.early_deaths.push_back(now_ms);
            while self.early_deaths.front().is_some_and(|&t| now_ms.saturating_sub(t) > policy.loop_window_ms) {
                self.early_deaths.pop_front();
            }
            if self.early_deaths.len() >= policy.loop_deaths {
                self.given_up = true;
                return Decision::GiveUp(format!(
                    "{} workers died before becoming ready within {} ms: crash loop, not restarting this slot",
                    self.early_deaths.len(),
                    policy.loop_window_ms
                ));
            }
        }
        if uptime_ms >= policy.reset_after_ms || self.next_delay_ms == 0 {
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

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_healthy_run() {
        let p = RestartPolicy { loop_deaths: 1000, ..RestartPolicy::default() };
        let mut h = History::default();
        let delays: Vec<u64> = (0..10)
            .map(|i| match h.on_death(&p, i * 100_000, 1000, true) {
                Decision::RespawnAfter(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]);
        assert_eq!(h.on_death(&p, 2_000_000, 30_000, true), Decision::RespawnAfter(100), "healthy uptime resets");
        assert_eq!(h.on_death(&p, 2_100_000, 10, true), Decision::RespawnAfter(200));
        assert_eq!(h.restarts, 12);
    }

    #[test]
    fn five_early_deaths_in_the_window_give_the_slot_up() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        for i in 0..4 {
            assert!(matches!(h.on_death(&p, i * 1000, 5, false), Decision::RespawnAfter(_)));
        }
        assert!(matches!(h.on_death(&p, 4000, 5, false), Decision::GiveUp(_)));
        assert!(h.given_up);
    }

    #[test]
    fn early_deaths_spread_wider_than_the_window_are_not_a_loop() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        for i in 0..20 {
            assert!(matches!(h.on_death(&p, i * 3000, 5, false), Decision::RespawnAfter(_)), "death {i}");
        }
        // Deaths after READY never count as a crash loop.
        let mut h = History::default();
        for i in 0..20 {
            assert!(matches!(h.on_death(&p, i, 5, true), Decision::RespawnAfter(_)));
        }
    }
}
