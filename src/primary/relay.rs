//! Messages from workers: to the primary's host, or relayed to other workers with the true
//! sender stamped. A relay that finds a full queue parks the message and stops reading the
//! sender until there is room, so backpressure reaches the sender instead of the primary
//! buffering without bound.

use crate::error::Code;
use crate::event::{Event, EventKind};
use crate::event_loop::Source;
use crate::ipc::frame::{Kind, BROADCAST, MESSAGE_FD_RESERVE};
use crate::ipc::outbox::{Frame, Pushed};
use crate::ipc::reader::Incoming;
use crate::sys;
use std::os::fd::{AsRawFd, RawFd};

use super::loglimit::limited;
use super::workers::Stalled;
use super::Primary;
use log::Level;

impl Primary {
    /// Routes a MESSAGE frame from worker `from`.
    pub(super) fn route(&mut self, from: u32, mut msg: Incoming) {
        let to = msg.header.to;
        let newest_fd = msg.fds.last().map(|f| f.as_raw_fd());
        if let (0, Some(newest)) = (to, newest_fd) {
            if self.fd_room.short(newest) {
                let why = format!(
                    "message to the primary not delivered: it has fewer than {MESSAGE_FD_RESERVE} fds free (they \
                     are kept for connections), so it refuses passed fds"
                );
                return self.refuse(from, 0, why); // `msg` and its fd are closed untrusted
            }
        }
        if to == 0 {
            let pid = self.slots.get(&from).map_or(0, |s| s.pid);
            self.events.push(Event {
                pid,
                data: std::mem::take(&mut msg.payload),
                fd: msg.fds.pop(),
                ..Event::new(EventKind::Message, from)
            });
            return;
        }
        let mut targets: Vec<u32> = if to == BROADCAST {
            self.slots.values().filter(|s| s.id != from && s.channel_open).map(|s| s.id).collect()
        } else if self.slots.get(&to).is_some_and(|s| s.channel_open) {
            vec![to]
        } else {
            let line = "a message to a worker that does not exist";
            limited!(
                self.loglimit,
                from,
                line,
                Level::Warn,
                "worker {from} sent a message to worker {to}, which does not exist"
            );
            let mut f = Frame::control(Kind::Undeliverable, Vec::new());
            f.header.aux = u64::from(to);
            // Counted as a message in the sender's queue, so that its limits hold: a worker
            // that sends to nobody without reading its channel is stalled like any other
            // sender, instead of the primary queueing notices for it without bound.
            f.user_bytes = 1;
            self.relay(from, Stalled { frame: f, targets: vec![from] });
            return;
        };
        if newest_fd.is_some() {
            // Workers near their fd limit refuse passed fds (see `MESSAGE_FD_RESERVE`).
            let refusing: Vec<u32> =
                targets.iter().copied().filter(|t| self.slots.get(t).is_some_and(|s| s.refuses_fds)).collect();
            targets.retain(|t| !refusing.contains(t));
            for target in refusing {
                let why = format!(
                    "message to worker {target} not delivered: it has fewer than {MESSAGE_FD_RESERVE} fds free (they \
                     are kept for connections), so it refuses passed fds"
                );
                self.refuse(from, target, why);
            }
            if targets.is_empty() {
                return;
            }
        }
        let frame = match Frame::relay(from, to, std::mem::take(&mut msg.payload), msg.fds.pop(), self.cfg.max_message)
        {
            Ok(f) => f,
            Err(e) => {
                limited!(self.loglimit, from, "a relay that failed", Level::Error, "relay from worker {from}: {e}");
                return;
            }
        };
        self.relay(from, Stalled { frame, targets });
    }

    /// Worker `id` refused a message with an fd from `sender` (0: the primary's host), which
    /// was on its way before the primary knew `id` refuses passed fds: the sender is told, in
    /// the primary's own words (whatever the worker wrote in the frame is ignored).
    pub(super) fn refused_by_worker(&mut self, id: u32, sender: u32) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.refuses_fds = true;
        }
        let why = format!(
            "message to worker {id} not delivered: it has fewer than {MESSAGE_FD_RESERVE} fds free (they are \
             kept for connections), so it refuses passed fds"
        );
        if sender == 0 {
            let line = "a message with an fd from the primary refused";
            limited!(self.loglimit, id, line, Level::Warn, "{why}");
        } else if self.slots.get(&sender).is_some_and(|s| s.channel_open) {
            // Relayed like a message from `id`: a worker that sends notices faster than their
            // target reads them is stalled like any other sender.
            let mut f = Frame::control(Kind::Undeliverable, why.into_bytes());
            f.header.aux = u64::from(id);
            f.user_bytes = 1;
            self.relay(id, Stalled { frame: f, targets: vec![sender] });
        }
    }

    /// Tells worker `from` that its message to `to` was not delivered, and why (an
    /// Undeliverable notice: an ERROR event in the worker).
    fn refuse(&mut self, from: u32, to: u32, why: String) {
        let line = "a message with an fd refused (short of fds)";
        limited!(self.loglimit, from, line, Level::Warn, "worker {from}: {why}");
        let mut f = Frame::control(Kind::Undeliverable, why.into_bytes());
        f.header.aux = u64::from(to);
        f.user_bytes = 1; // a message in the sender's queue, as for a message to nobody
        self.relay(from, Stalled { frame: f, targets: vec![from] });
    }

    /// Delivers a relay to its remaining targets; parks it on a full queue. Every target but
    /// the last gets a copy (with duplicates of the fds), the last one the frame itself: the
    /// primary keeps no fd of a relayed message once it is on its way, so it never makes the
    /// last close of a socket a worker sent (which could linger: see `sys::close_untrusted`).
    fn relay(&mut self, from: u32, mut st: Stalled) {
        while let Some(&target) = st.targets.first() {
            let Some(slot) = self.slots.get(&target).filter(|s| s.channel_open) else {
                st.targets.remove(0);
                continue;
            };
            let last = st.targets.len() == 1;
            let frame = if last {
                std::mem::replace(&mut st.frame, Frame::control(Kind::Heartbeat, Vec::new()))
            } else {
                match st.frame.try_clone() {
                    Ok(c) => c,
                    Err(e) => {
                        let line = "a relay that failed";
                        limited!(
                            self.loglimit,
                            from,
                            line,
                            Level::Error,
                            "relay from worker {from}: dup of a passed fd failed: {e}"
                        );
                        return;
                    }
                }
            };
            match slot.outbox.try_push(frame) {
                Ok(Pushed::Queued { arm: true }) => self.arm_if_queued(target),
                Ok(_) => {}
                Err((e, back)) if e.code == Code::Again => {
                    if let (true, Some(frame)) = (last, back) {
                        st.frame = *frame;
                    }
                    if let Some(sender) = self.slots.get_mut(&from) {
                        sender.stalled = Some(st);
                        let fd = sender.outbox.fd();
                        self.reactor.modify(fd, Source::Channel(from), false, sender.outbox.queued() > 0).ok();
                    }
                    return;
                }
                Err(_) => {} // the target's channel closed; its exit is on its way
            }
            st.targets.remove(0);
        }
    }

    /// Retries every parked relay (after a queue emptied or a worker went away), and resumes
    /// reading the senders whose relays went through.
    pub(super) fn retry_stalled(&mut self) {
        let senders: Vec<u32> = self.slots.values().filter(|s| s.stalled.is_some()).map(|s| s.id).collect();
        for from in senders {
            let Some(st) = self.slots.get_mut(&from).and_then(|s| s.stalled.take()) else { continue };
            self.relay(from, st);
            if let Some(slot) = self.slots.get_mut(&from) {
                if slot.stalled.is_none() && slot.channel_open {
                    // Its heartbeats waited unread in the channel while we did not read it.
                    slot.last_heard_ms = crate::sys::monotonic_ms();
                    let fd = slot.outbox.fd();
                    self.reactor.modify(fd, Source::Channel(from), true, slot.outbox.queued() > 0).ok();
                    // Frames may have been waiting while we did not read: level-triggered epoll
                    // reports them on the next wait.
                }
            }
        }
    }
}

/// How many fds the primary has free, as far as refusing passed fds goes (the workers say so
/// themselves in FdPressure frames).
#[derive(Debug, Default)]
pub struct FdRoom {
    counted_ms: u64,
    room: u64,
}

/// How often `FdRoom` counts the open fds when the cheap bound says there is plenty of room.
const FD_COUNT_EVERY_MS: u64 = 100;

impl FdRoom {
    /// True when the primary must refuse an fd passed with a message, which has just arrived
    /// as number `newest`: fewer than `MESSAGE_FD_RESERVE` fds are free. Fds are allocated
    /// lowest first, so every number below `newest` is taken: that bounds the room cheaply;
    /// the open fds are counted (/proc/self/fd) when the bound is near, or the last count is
    /// older than `FD_COUNT_EVERY_MS`.
    pub fn short(&mut self, newest: RawFd) -> bool {
        let limit = sys::fd_limit();
        let bound = limit.saturating_sub(newest.max(0) as u64 + 1);
        if bound <= MESSAGE_FD_RESERVE {
            return true;
        }
        let now = sys::monotonic_ms();
        if bound <= 2 * MESSAGE_FD_RESERVE || now >= self.counted_ms + FD_COUNT_EVERY_MS {
            self.counted_ms = now;
            self.room = sys::open_fd_count().map_or(bound, |open| limit.saturating_sub(open as u64));
        }
        self.room <= MESSAGE_FD_RESERVE
    }
}
