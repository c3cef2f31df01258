//! How many connections the primary may accept, as far as its own fds go.
//!
//! Two of the primary's limits are RLIMIT_NOFILE:
//! - its fd table: every accepted connection is an fd until it is handed over (and until the
//!   ACK when the primary keeps its copy). Accepting into EMFILE is what it must not do: the
//!   rest of its work (a worker's NACK giving connections back, a respawn, a message carrying
//!   an fd) needs fds too. So accepts stop a reserve short of the limit.
//! - fds in flight: an fd sent with SCM_RIGHTS and not yet received counts against the
//!   sender's user, and `sendmsg` fails with ETOOMANYREFS once that count passes the sender's
//!   RLIMIT_NOFILE (the kernel's `too_many_unix_fds`). Connections handed over and not yet
//!   acknowledged bound what is in flight, so they are kept under the limit, less a share for
//!   the fds the workers send themselves.
//!
//! The open fds are counted (/proc/self/fd) every `RECOUNT_MS`, and at every turn while the
//! estimate is near the reserve; in between, each accept is subtracted from the last count
//! (closes are not added back until the next count: the estimate errs on the safe side).

use crate::sys;

/// A count older than this is taken again.
const RECOUNT_MS: u64 = 100;

/// The accept budget of the primary's fds.
#[derive(Debug, Default)]
pub struct FdBudget {
    /// RLIMIT_NOFILE when last counted.
    limit: u64,
    /// Open fds at the last count.
    open: u64,
    /// When that was, monotonic ms (0: never).
    counted_ms: u64,
    /// Connections accepted since.
    taken: u64,
}

impl FdBudget {
    /// Fds kept free for the primary's own work: a quarter of the limit, at least 8 and at most
    /// 64 + a full frame of fds (a NACK giving back a frame's connections).
    pub fn reserve(limit: u64) -> u64 {
        (limit / 4).clamp(8, 64 + crate::ipc::frame::MAX_FDS as u64)
    }

    /// Most connections in flight (handed over, not acknowledged): the limit less an eighth,
    /// which is left to the fds the workers send (they run as the same user).
    pub fn inflight_cap(limit: u64) -> u64 {
        limit - limit / 8
    }

    /// Connections that may be accepted into the fd table now.
    pub fn table_room(&mut self) -> u64 {
        let now = sys::monotonic_ms();
        let estimate = |b: &FdBudget| b.limit.saturating_sub(b.open + b.taken + FdBudget::reserve(b.limit));
        let near = estimate(self) <= Self::reserve(self.limit);
        if self.counted_ms == 0 || now >= self.counted_ms + RECOUNT_MS || (near && now != self.counted_ms) {
            self.count(now);
        }
        estimate(self)
    }

    /// The soft RLIMIT_NOFILE, as last seen.
    pub fn limit(&mut self) -> u64 {
        if self.counted_ms == 0 {
            self.count(sys::monotonic_ms());
        }
        self.limit
    }

    /// `n` connections were accepted.
    pub fn took(&mut self, n: usize) {
        self.taken += n as u64;
    }

    fn count(&mut self, now: u64) {
        self.limit = sys::fd_limit();
        // Without /proc the count stays 0: the in-flight bound and the EMFILE pause remain.
        self.open = sys::open_fd_count().unwrap_or(0) as u64;
        self.counted_ms = now;
        self.taken = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_and_the_inflight_cap_scale_with_the_limit() {
        assert_eq!(FdBudget::reserve(64), 16);
        assert_eq!(FdBudget::reserve(16), 8);
        assert_eq!(FdBudget::reserve(1024), 128);
        assert_eq!(FdBudget::reserve(1 << 20), 128);
        assert_eq!(FdBudget::inflight_cap(1024), 896);
        assert_eq!(FdBudget::inflight_cap(u64::MAX), u64::MAX - u64::MAX / 8);
    }

    #[test]
    fn accepts_come_off_the_count_until_the_next() {
        let mut b = FdBudget::default();
        let room = b.table_room();
        let limit = b.limit();
        let open = sys::open_fd_count().unwrap() as u64;
        assert!(room + FdBudget::reserve(limit) + open <= limit + 2, "room {room}, open {open}, limit {limit}");
        if room > 10 {
            b.took(10);
            assert!(b.table_room() <= room - 10 + 2);
        }
    }
}
