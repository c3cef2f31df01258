//! Rate limits on the log lines a worker can cause at will.
//!
//! A worker that is kept (its frames are valid, only pointless: messages to workers that do
//! not exist, ACKs for connections it never got) could otherwise turn each frame into a log
//! line: millions of lines in seconds, the host's disk and its log pipeline paying for it. So
//! each (worker, kind of line) gets `BURST` lines per `WINDOW_MS`; the rest are counted, and
//! the count is said in the next line of that kind, in a line of its own once the window is
//! over, or when the worker is gone. Lines about a worker being dropped or exiting are not
//! limited: each costs the worker its life.

use std::collections::HashMap;

/// Lines of one kind about one worker logged per window.
pub const BURST: u32 = 10;
/// The window, in milliseconds.
pub const WINDOW_MS: u64 = 10_000;

/// The lines of one kind about one worker in the current window.
#[derive(Debug)]
struct Bucket {
    since_ms: u64,
    logged: u32,
    suppressed: u64,
}

/// Per-worker, per-kind line budgets.
#[derive(Debug, Default)]
pub struct LogLimit {
    buckets: HashMap<(u32, &'static str), Bucket>,
}

impl LogLimit {
    /// Whether a line of `kind` about worker `id` may be logged at `now_ms`: `Some(n)`, where
    /// `n` lines like it were suppressed since the last one logged (the line should say so),
    /// or None, and this one is counted as suppressed.
    pub fn admit(&mut self, id: u32, kind: &'static str, now_ms: u64) -> Option<u64> {
        let b = self.buckets.entry((id, kind)).or_insert(Bucket { since_ms: now_ms, logged: 0, suppressed: 0 });
        if now_ms >= b.since_ms + WINDOW_MS {
            b.since_ms = now_ms;
            b.logged = 0;
        }
        if b.logged >= BURST {
            b.suppressed += 1;
            return None;
        }
        b.logged += 1;
        Some(std::mem::take(&mut b.suppressed))
    }

    /// The counts of suppressed lines whose window is over at `now_ms` (worker, kind, count),
    /// to be said now; windows with nothing suppressed are forgotten.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(u32, &'static str, u64)> {
        let mut out = Vec::new();
        self.buckets.retain(|&(id, kind), b| {
            if now_ms < b.since_ms + WINDOW_MS {
                return true;
            }
            if b.suppressed > 0 {
                out.push((id, kind, b.suppressed));
            }
            false
        });
        out
    }

    /// Worker `id` is gone: the counts of its suppressed lines (kind, count), to be said now.
    pub fn forget(&mut self, id: u32) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        self.buckets.retain(|&(w, kind), b| {
            if w != id {
                return true;
            }
            if b.suppressed > 0 {
                out.push((kind, b.suppressed));
            }
            false
        });
        out
    }

    /// True when no window is open (nothing to check at the end of a turn).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// What a logged line adds when lines like it were suppressed before it.
pub fn note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it suppressed before this one)")
    }
}

/// Logs a line of `kind` about worker `id` through the primary's `LogLimit` (see the module
/// doc); the arguments after the level are those of `format!`.
macro_rules! limited {
    ($limit:expr, $id:expr, $kind:expr, $level:expr, $($arg:tt)+) => {
        if let Some(n) = $limit.admit($id, $kind, $crate::sys::monotonic_ms()) {
            log::log!($level, "{}{}", format_args!($($arg)+), $crate::primary::loglimit::note(n));
        }
    };
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_counts_said_later() {
        let mut l = LogLimit::default();
        let admitted = (0..1000).filter(|_| l.admit(1, "x", 0).is_some()).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(l.admit(2, "x", 0), Some(0), "another worker has its own budget");
        assert_eq!(l.admit(1, "y", 0), Some(0), "and so has another kind");
        assert!(l.expired(WINDOW_MS - 1).is_empty());
        assert_eq!(l.admit(1, "x", WINDOW_MS), Some(1000 - BURST as u64), "the next line says how many");
        for _ in 0..BURST + 4 {
            l.admit(1, "x", WINDOW_MS);
        }
        assert_eq!(l.forget(1), vec![("x", 5)]);
        assert_eq!(l.expired(3 * WINDOW_MS), vec![]);
        assert!(l.is_empty());
        for _ in 0..BURST + 2 {
            l.admit(3, "z", 0);
        }
        assert_eq!(l.expired(WINDOW_MS), vec![(3, "z", 2)]);
    }
}
