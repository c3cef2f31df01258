//! Messages from workers: to the primary's host, or relayed to other workers with the true
//! sender stamped. A relay that finds a full queue parks the message and stops reading the
//! sender until there is room, so backpressure reaches the sender instead of the primary
//! buffering without bound.

use crate::error::Code;
use crate::event::{Event, EventKind};
use crate::event_loop::Source;
use crate::ipc::frame::{Kind, BROADCAST};
use crate::ipc::outbox::{Frame, Pushed};
use crate::ipc::reader::Incoming;

use super::loglimit::limited;
use super::workers::Stalled;
use super::Primary;
use log::Level;

impl Primary {
    /// Routes a MESSAGE frame from worker `from`.
    pub(super) fn route(&mut self, from: u32, mut msg: Incoming) {
        let to = msg.header.to;
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
        let targets: Vec<u32> = if to == BROADCAST {
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
