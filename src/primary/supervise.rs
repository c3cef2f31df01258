//! The primary's loop turn: one small handler per signal, per frame kind and per child event.

use crate::event::{Event, EventKind};
use crate::event_loop::{Ready, Source};
use crate::ipc::frame::{decode_conns, decode_ids, Kind};
use crate::ipc::frame::{PRESSURE_CONNECTIONS, PRESSURE_MESSAGES};
use crate::ipc::listen::ListenKey;
use crate::ipc::reader::{Inbox, Incoming, Read, Reader};
use crate::net::listener;
use crate::sys::{self, ExitStatus};
use std::os::fd::{AsFd, OwnedFd};

use super::loglimit::limited;
use super::workers::WorkerState;
use super::{Phase, Primary, Timer, CLOSED_CHANNEL_EXIT_MS, SEND_RETRY_MS};
use log::Level;

/// Frames read from one channel per turn, so one chatty worker cannot starve the others.
const FRAMES_PER_TURN: usize = 64;
/// Payload bytes read from one channel per turn (past the frame that crosses it). With the
/// frame limit alone, a worker sending 64 maximum-size messages would make the primary hold
/// 64 of them before its host sees one; with this, one turn holds about one per worker.
const BYTES_PER_TURN: usize = 1 << 20;

/// Most datagrams read from the channel of a worker that has exited, and from its own end.
const DRAIN_READS: usize = 4096;

impl Primary {
    /// Handles everything the loop reported, then settles the turn (handoffs, shutdown
    /// progress, accepting on or off). Events for the host accumulate in `take_events`.
    pub fn process(&mut self, ready: &[Ready]) {
        self.turn_starts();
        for r in ready {
            match r.source {
                Source::Waker => self.on_wake(),
                Source::Timer => {
                    for t in self.reactor.expired(sys::monotonic_ms()) {
                        self.on_timer(t);
                    }
                }
                Source::Signals => {
                    let sigs = self.signals.as_ref().map(|s| s.take()).unwrap_or_default();
                    for sig in sigs {
                        self.on_signal(sig);
                    }
                }
                Source::Channel(id) => {
                    if r.writable {
                        self.on_writable(id);
                    }
                    if r.readable {
                        self.on_readable(id);
                    }
                }
                Source::Child(id) => self.reap(id),
                Source::Listener(index) => self.accept_from(index),
                Source::Metrics(id) => self.on_metrics(id),
                // The side loop's (children, threads): the runtime turns it.
                Source::Side | Source::Stdio(_) => {}
            }
        }
        self.after_turn();
        self.turn_ends();
    }

    fn on_wake(&mut self) {
        self.reactor.clear_wake();
        while let Some(id) = self.shared.to_arm.pop() {
            self.arm_if_queued(id);
        }
        while let Some(id) = self.shared.drained.pop() {
            let ev = self.event(EventKind::Drain, id);
            self.events.push(ev);
        }
        let inboxes: Vec<u32> = self.slots.values().filter(|s| s.inbox_ready()).map(|s| s.id).collect();
        for id in inboxes {
            self.on_readable(id);
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Grace => {
                if !self.slots.is_empty() {
                    log::warn!("shutdown grace period over: killing {} worker(s)", self.slots.len());
                }
                self.kill_all();
            }
            Timer::ReapPoll => {
                self.reap_poll = false;
                let polled: Vec<u32> = self.slots.values().filter(|s| s.pidfd.is_none()).map(|s| s.id).collect();
                for id in &polled {
                    self.reap(*id);
                }
                if self.slots.values().any(|s| s.pidfd.is_none()) {
                    self.start_reap_poll();
                }
            }
            Timer::ResumeAccept => self.accept_paused = false,
            // The turn's end closes the listeners whose replacements had their chance.
            Timer::ListenAgain => {}
            Timer::Metrics(id) => self.metrics_timeout(id),
            Timer::DrainDelay => {
                if let Some(grace) = self.drain_pending {
                    self.shutdown_now(grace);
                }
            }
            Timer::RetryFlush(id) => {
                // Try again: its queue through the loop's watch, connections at the next pump.
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.send_retry = false;
                }
                self.arm_if_queued(id);
            }
            Timer::ChannelClosed(id) => {
                let reason = format!("closed its channel (EOF) but did not exit within {CLOSED_CHANNEL_EXIT_MS} ms");
                self.drop_worker(id, &reason);
            }
            Timer::ChannelFailed(id) => {
                let reason = format!("its channel failed but it did not exit within {CLOSED_CHANNEL_EXIT_MS} ms");
                self.drop_worker(id, &reason);
            }
            other => self.on_lifecycle_timer(other),
        }
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGTERM | libc::SIGINT => {
                if matches!(self.phase, Phase::Draining { .. }) {
                    log::warn!("second SIGTERM/SIGINT: stopping now");
                    self.begin_shutdown(0);
                } else {
                    log::info!("signal {sig}: graceful shutdown ({} ms grace)", self.cfg.grace_ms);
                    self.begin_shutdown(self.cfg.grace_ms);
                }
            }
            libc::SIGQUIT => {
                log::info!("SIGQUIT: stopping now");
                self.begin_shutdown(0);
            }
            libc::SIGTTIN => match self.request_spawn() {
                Ok(id) => log::info!("SIGTTIN: starting worker {id}"),
                Err(e) => log::warn!("SIGTTIN ignored: {e}"),
            },
            libc::SIGTTOU => {
                let newest = self.slots.values().rev().find(|s| !s.disconnect_requested).map(|s| s.id);
                if let Some(id) = newest {
                    log::info!("SIGTTOU: stopping worker {id}");
                    self.disconnect(id).ok();
                }
            }
            libc::SIGHUP => {
                if let Err(e) = self.reload() {
                    log::warn!("SIGHUP ignored: {e}");
                }
            }
            _ => {}
        }
    }

    fn on_writable(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if !slot.send_retry {
            // Writable again with frames queued: the worker read from its channel, so its loop
            // turns (the watchdog's evidence for a worker whose channel we are not reading).
            // Not so after a retry timer armed it: the socket may have had room all along.
            slot.last_heard_ms = sys::monotonic_ms();
        }
        match slot.outbox.flush() {
            Ok(f) if f.retry => {
                // Writability would fire at once, again and again: a timer instead. Nothing
                // is lost: the frames stay queued.
                let readable = slot.stalled.is_none() && slot.channel_open;
                self.reactor.modify(slot.outbox.fd(), Source::Channel(id), readable, false).ok();
                self.send_refused_for_now(id);
            }
            Ok(f) => {
                if f.empty {
                    let readable = slot.stalled.is_none() && slot.channel_open;
                    let fd = slot.outbox.fd();
                    if slot.channel_open {
                        self.reactor.modify(fd, Source::Channel(id), readable, false).ok();
                    }
                    if f.drained {
                        let ev = self.event(EventKind::Drain, id);
                        self.events.push(ev);
                    }
                    self.retry_stalled();
                }
            }
            Err(e) => self.channel_broken(id, format!("send failed: {e}")),
        }
    }

    /// A send to worker `id` failed for now (see `outbox::transient`): it takes no connections
    /// and its queue waits until a timer tries again (writability says nothing about when).
    pub(super) fn send_refused_for_now(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        self.send_retries += 1;
        if slot.send_retry {
            return;
        }
        slot.send_retry = true;
        let now = sys::monotonic_ms();
        if now >= slot.send_retry_logged_ms + 1000 {
            slot.send_retry_logged_ms = now;
            log::warn!(
                "worker {id}: its channel refuses fds for now (ETOOMANYREFS: this user has more fds in flight \
                 than RLIMIT_NOFILE; or ENOBUFS/ENOMEM): trying again every {SEND_RETRY_MS} ms"
            );
        }
        self.reactor.add_timer(now + SEND_RETRY_MS, Timer::RetryFlush(id));
    }

    /// A send to worker `id` failed for good (EPIPE, ECONNRESET...): its channel is lost, and
    /// a worker that lives on without it can no longer be managed, so unless it was leaving it
    /// gets `CLOSED_CHANNEL_EXIT_MS` to exit (a crashing worker's exit is on its way) before
    /// it is killed and replaced.
    pub(super) fn channel_broken(&mut self, id: u32, reason: String) {
        let Some(slot) = self.slots.get(&id) else { return };
        let unasked = slot.channel_open && !slot.disconnect_requested && self.phase == Phase::Running;
        self.channel_lost(id, Some(reason));
        if unasked {
            self.reactor.add_timer(sys::monotonic_ms() + CLOSED_CHANNEL_EXIT_MS, Timer::ChannelFailed(id));
        }
    }

    fn on_readable(&mut self, id: u32) {
        if self.slots.get(&id).is_some_and(|s| s.node.is_some()) {
            return self.on_node_readable(id);
        }
        let mut bytes = 0;
        for _ in 0..FRAMES_PER_TURN {
            if bytes >= BYTES_PER_TURN {
                return; // the channel stays readable (level-triggered): the next turn goes on
            }
            let Some(slot) = self.slots.get_mut(&id) else { return };
            if !slot.channel_open || slot.stalled.is_some() {
                return;
            }
            match self.reader.read(slot.outbox.as_fd(), &mut slot.inbox) {
                Ok(Read::Frame(frame)) => {
                    bytes += frame.payload.len();
                    self.on_frame(id, frame)
                }
                Ok(Read::WouldBlock) => return,
                Ok(Read::Closed) => {
                    let unasked = !slot.disconnect_requested && self.phase == Phase::Running;
                    if unasked {
                        let at = sys::monotonic_ms() + CLOSED_CHANNEL_EXIT_MS;
                        self.reactor.add_timer(at, Timer::ChannelClosed(id));
                    }
                    return self.channel_lost(id, None);
                }
                Ok(Read::Bad(e)) => return self.drop_worker(id, &format!("malformed frame: {e}")),
                Ok(Read::FdsLost(h, payload)) if h.kind == Kind::Nack => {
                    // The connections it gave back did not fit in our fd table: what the
                    // primary holds no copy of is lost (and counted).
                    let line = "a NACK whose fds could not be received";
                    limited!(
                        self.loglimit,
                        id,
                        line,
                        Level::Error,
                        "worker {id}: the fds of a NACK could not be received (out of fds?)"
                    );
                    match decode_ids(&payload) {
                        Ok(ids) => self.on_ack(id, false, &ids, Vec::new()),
                        Err(e) => return self.drop_worker(id, &format!("malformed Nack: {e}")),
                    }
                }
                Ok(Read::FdsLost(h, _)) if h.kind != Kind::Message => {
                    let kind = h.kind;
                    return self.drop_worker(id, &format!("sent a {kind:?} frame, which only the primary sends"));
                }
                Ok(Read::FdsLost(..)) => {
                    // Our fd limit, not the worker's fault: say so to the host, keep the worker.
                    let sentence = format!(
                        "a message from worker {id} was dropped: the fds it carried could not be received (out of fds?)"
                    );
                    limited!(
                        self.loglimit,
                        id,
                        "a message whose fds could not be received",
                        Level::Error,
                        "{sentence}"
                    );
                    self.events.push(Event::error(id, sentence));
                }
                Err(e) => return self.channel_lost(id, Some(format!("receive failed: {e}"))),
            }
        }
    }

    pub(super) fn on_frame(&mut self, id: u32, mut frame: Incoming) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.last_heard_ms = sys::monotonic_ms();
        match frame.header.kind {
            Kind::Hello => {
                if slot.state == WorkerState::Starting {
                    slot.state = WorkerState::Online;
                    log::debug!("worker {id} online");
                    let ev = self.event(EventKind::Online, id);
                    self.events.push(ev);
                }
            }
            Kind::Ready => {
                if matches!(slot.state, WorkerState::Starting | WorkerState::Online) {
                    slot.state = WorkerState::Ready;
                    log::debug!("worker {id} ready");
                    let ev = self.event(EventKind::Ready, id);
                    self.events.push(ev);
                    self.on_ready(id);
                }
            }
            Kind::Message => {
                slot.messages_in += 1;
                self.route(id, frame);
            }
            Kind::Ack | Kind::Nack => match decode_ids(&frame.payload) {
                Ok(ids) if frame.fds.is_empty() || frame.fds.len() == ids.len() => {
                    self.on_ack(id, frame.header.kind == Kind::Ack, &ids, std::mem::take(&mut frame.fds))
                }
                Ok(ids) => {
                    let reason = format!("a NACK of {} connection(s) with {} fd(s)", ids.len(), frame.fds.len());
                    self.drop_worker(id, &reason)
                }
                Err(e) => self.drop_worker(id, &format!("malformed {:?}: {e}", frame.header.kind)),
            },
            Kind::Bye => {
                slot.disconnect_requested = true;
                slot.state = WorkerState::Disconnecting;
                log::info!("worker {id} is leaving");
                self.let_go_of_recovery(id);
            }
            Kind::ConnDone => match <[u8; 4]>::try_from(&frame.payload[..]) {
                Ok(n) => slot.done = (slot.done + u64::from(u32::from_le_bytes(n))).min(slot.connections),
                Err(_) => self.drop_worker(id, "malformed ConnDone"),
            },
            Kind::Heartbeat => {}
            Kind::FdPressure => match frame.payload[..] {
                [state] if state & !(PRESSURE_CONNECTIONS | PRESSURE_MESSAGES) == 0 => {
                    let on = state & PRESSURE_CONNECTIONS != 0;
                    let refuses = state & PRESSURE_MESSAGES != 0;
                    if slot.fd_pressure != on || slot.refuses_fds != refuses {
                        // A worker flipping it all the time gets a few lines, not thousands.
                        slot.pressure_reports = slot.pressure_reports.saturating_add(1);
                        let level = if slot.pressure_reports <= 8 { log::Level::Info } else { log::Level::Debug };
                        let how = match (on, refuses) {
                            (false, false) => "no longer short of fds",
                            (true, false) => "short of fds",
                            (false, true) => "short of fds for those passed with messages (refusing them)",
                            (true, true) => "short of fds (refusing those passed with messages)",
                        };
                        log::log!(level, "worker {id} is {how}");
                    }
                    slot.fd_pressure = on;
                    slot.refuses_fds = refuses;
                }
                _ => self.drop_worker(id, "malformed FdPressure"),
            },
            // The library asks once and waits for the answer: a worker whose previous answer
            // has not even left the queue is flooding (each answer is queued memory, and under
            // SHARED an fd).
            Kind::Listen if slot.outbox.queued_answers(Kind::Listening) > 0 => {
                self.drop_worker(id, "a listen request before it read the answer to the previous one")
            }
            Kind::Listen => match ListenKey::decode(&frame.payload) {
                Ok(key) => self.on_listen(id, frame.header.aux, key),
                Err(e) => self.drop_worker(id, &format!("malformed Listen: {e}")),
            },
            Kind::Unlisten => match u32::try_from(frame.header.aux) {
                Ok(index) if frame.payload.is_empty() => self.on_unlisten(id, index),
                _ => self.drop_worker(id, "malformed Unlisten"),
            },
            Kind::Undeliverable => {
                let sender = u32::try_from(frame.header.aux).unwrap_or(u32::MAX);
                self.refused_by_worker(id, sender);
            }
            Kind::NewConn | Kind::Shutdown | Kind::Batch | Kind::Listening => {
                let kind = frame.header.kind;
                self.drop_worker(id, &format!("sent a {kind:?} frame, which only the primary sends"));
            }
        }
    }

    /// ACK or NACK of `ids` by worker `id`; a NACK may give back their fds (`returned`, one
    /// per id, in order), which the primary needs when it let go of its copies.
    pub(super) fn on_ack(&mut self, id: u32, ack: bool, ids: &[u64], returned: Vec<OwnedFd>) {
        let mut unknown = 0usize;
        let mut refused_fds = 0usize;
        let mut returned = returned.into_iter();
        for &conn in ids {
            let known = if ack {
                self.handoff.ack(id, conn)
            } else {
                // Only the connection itself is taken back: the very socket handed over (its
                // identity, recorded when the primary let go of its copy), still connected to
                // the same peer. A worker cannot slip another fd to the next worker, not even
                // a socket whose peer looks the same (every unnamed unix socket does).
                let given = returned.next().and_then(|fd| {
                    let ok = self.handoff.held(id, conn).is_some_and(|c| {
                        let identity = c.identity.or_else(|| c.fd.as_ref().and_then(sys::file_identity));
                        identity.is_some_and(|i| sys::file_identity(&fd) == Some(i))
                            && listener::is_connection_from(&fd, &c.peer)
                    });
                    refused_fds += usize::from(!ok);
                    if ok {
                        Some(fd)
                    } else {
                        sys::close_untrusted(fd);
                        None
                    }
                });
                self.handoff.nack(id, conn, given)
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                returned.for_each(sys::close_untrusted);
                return;
            };
            if known {
                slot.unacked = slot.unacked.saturating_sub(1);
                if ack {
                    slot.connections += 1;
                }
            } else {
                unknown += 1;
            }
        }
        returned.for_each(sys::close_untrusted);
        if refused_fds > 0 {
            let line = "fds given back with a NACK that were not the connections";
            limited!(
                self.loglimit,
                id,
                line,
                Level::Warn,
                "worker {id}: {refused_fds} fd(s) given back with a NACK were not those connections: closed"
            );
        }
        if unknown > 0 {
            // At most one line per frame (not one per id), and few per worker (loglimit).
            let what = if ack { "ACK" } else { "NACK" };
            let line = if ack { "an ACK for unknown connections" } else { "a NACK for unknown connections" };
            limited!(
                self.loglimit,
                id,
                line,
                Level::Warn,
                "worker {id}: {what} for {unknown} unknown connection(s) ignored"
            );
        }
        if ack {
            self.check_recycle(id);
        }
        self.let_go_of_recovery(id);
    }

    fn reap(&mut self, id: u32) {
        let Some(slot) = self.slots.get(&id) else { return };
        match sys::try_reap(slot.pid) {
            Ok(Some(status)) => self.on_exit(id, status),
            Ok(None) => {}
            Err(e) => {
                // ECHILD: someone else (a host's waitpid(-1)) reaped our child.
                log::warn!("worker {id} (pid {}): waitpid: {e}; its exit status is lost", slot.pid);
                self.on_exit(id, ExitStatus { code: -1, signal: 0 });
            }
        }
    }

    pub(super) fn on_exit(&mut self, id: u32, status: ExitStatus) {
        // Reaped: what follows (a bad frame read from its socket below) must not signal its
        // pid, which another process may have by now.
        if let Some(s) = self.slots.get_mut(&id) {
            s.reaped = true;
        }
        // What it sent before it exited comes first (its last messages, its last ACKs): the
        // primary holds its end of the channel (`Slot::recovery`), so no EOF marks the end of
        // what it sent; a dead worker adds nothing, and the socket holds a bounded amount.
        for _ in 0..DRAIN_READS {
            match self.slots.get(&id) {
                Some(s) if s.channel_open && s.stalled.is_none() => {
                    if s.inbox.is_empty() && !sys::readable_now(&*s.outbox) {
                        break;
                    }
                }
                _ => break,
            }
            self.on_readable(id);
        }
        self.drain_stalled_acks(id);
        self.channel_lost(id, None);
        self.discard_unread(id); // before recover_connections, which lets go of the peer
        self.recover_connections(id);
        let Some(slot) = self.slots.remove(&id) else { return };
        if let Some(pidfd) = &slot.pidfd {
            self.reactor.remove(pidfd);
        }
        self.shared.remove(id);
        self.unlisten_all(id, slot.slot);
        for (line, n) in self.loglimit.forget(id) {
            log::warn!("worker {id}: {n} more log line(s) like \"{line}\" were suppressed");
        }
        let how = if status.signal != 0 {
            format!("killed by signal {}", status.signal)
        } else {
            format!("exited with code {}", status.code)
        };
        if slot.disconnect_requested || (status.code == 0 && status.signal == 0) {
            log::info!("worker {id} (pid {}) {how}", slot.pid);
        } else {
            log::warn!("worker {id} (pid {}) {how}", slot.pid);
        }
        self.events.push(Event {
            pid: slot.pid,
            exit_code: status.code,
            signal: status.signal,
            exited_after_disconnect: slot.disconnect_requested,
            ..Event::new(EventKind::Exit, id)
        });
        self.retry_stalled();
        self.after_exit(&slot, status);
    }

    /// Worker `id` has exited with its channel stalled (a relayed message waits for room at
    /// its destination): the ACKs and NACKs behind it still count (a NACK may give back the
    /// fds of connections the primary holds no copy of). The messages are lost with the
    /// worker, as they always were.
    fn drain_stalled_acks(&mut self, id: u32) {
        for _ in 0..DRAIN_READS {
            let Some(slot) = self.slots.get_mut(&id) else { return };
            if !slot.channel_open || slot.stalled.is_none() {
                return;
            }
            match self.reader.read(slot.outbox.as_fd(), &mut slot.inbox) {
                Ok(Read::Frame(f)) if matches!(f.header.kind, Kind::Ack | Kind::Nack) => self.on_frame(id, f),
                Ok(Read::Frame(_)) | Ok(Read::FdsLost(..)) | Ok(Read::Bad(_)) => {}
                Ok(Read::WouldBlock) | Ok(Read::Closed) | Err(_) => return,
            }
        }
    }

    /// Worker `id` has exited: what it sent that was never read is read now and thrown away,
    /// so that the fds in it are closed with `sys::close_untrusted`. Left in the socket, they
    /// would be closed by the kernel when the primary closes its end, and a lingering socket
    /// among them would block that close. (A dead worker adds nothing; the socket's buffer
    /// bounds what is there.) Once the worker's end is closed, an empty datagram reads as
    /// the end of the channel (`Read::Closed`) like the end itself does, and nothing tells
    /// them apart: so reading goes on past it, up to the bound, unless nothing is left in
    /// flight from the worker's end, which the primary can tell when it holds that end
    /// (`Slot::recovery`: the kernel counts what a socket sent and is not read yet). Without
    /// it (no handoffs, or a worker that said Bye) the bound is read through every time:
    /// about 1.3 ms per exit, measured.
    fn discard_unread(&mut self, id: u32) {
        let Some(slot) = self.slots.get(&id) else { return };
        let fd = slot.outbox.as_fd();
        let peer = slot.recovery.as_ref();
        let mut inbox = Inbox::default();
        for _ in 0..DRAIN_READS {
            match self.reader.read(fd, &mut inbox) {
                Ok(Read::WouldBlock) | Err(_) => break,
                Ok(Read::Closed) if peer.is_some_and(|p| sys::unread_sent(p) == Some(0)) => break,
                Ok(_) => {} // dropped: the fds of a frame nobody takes are closed untrusted
            }
        }
    }

    /// Worker `id` has exited: the connections it never received are still in its socket,
    /// whose duplicate the primary holds; they go to other workers (see `Handoff`).
    fn recover_connections(&mut self, id: u32) {
        let recovery = self.slots.get_mut(&id).and_then(|s| s.recovery.take());
        let mut found = Vec::new();
        if let Some(fd) = recovery {
            let mut reader = Reader::new(self.cfg.max_message);
            let mut inbox = Inbox::default();
            for _ in 0..DRAIN_READS {
                match reader.read(&fd, &mut inbox) {
                    Ok(Read::Frame(mut f)) if f.header.kind == Kind::NewConn => {
                        if let Ok(entries) = decode_conns(&f.payload, f.fds.len()) {
                            found.extend(entries.into_iter().map(|e| e.id).zip(std::mem::take(&mut f.fds)));
                        }
                    }
                    Ok(Read::Frame(_)) | Ok(Read::FdsLost(..)) | Ok(Read::Bad(_)) => {}
                    Ok(Read::WouldBlock) | Ok(Read::Closed) | Err(_) => break,
                }
            }
        }
        let (requeued, lost) = self.handoff.recovered(id, found);
        if requeued > 0 {
            log::info!("worker {id} exited before receiving {requeued} connection(s): handing them to others");
        }
        if lost > 0 {
            log::warn!("worker {id} exited with {lost} connection(s) it had received but not acknowledged");
        }
    }

    /// The channel to `id` is gone (EOF, error, or we dropped it): no more sends, its
    /// in-flight connections go to other workers.
    pub(super) fn channel_lost(&mut self, id: u32, reason: Option<String>) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if !slot.channel_open {
            return;
        }
        slot.channel_open = false;
        slot.stalled = None;
        // What is left of its last batch dies with the channel.
        slot.inbox = Default::default();
        slot.unacked = 0;
        slot.outbox.close();
        let fd = slot.outbox.fd();
        self.reactor.remove(fd);
        if let Some(r) = reason {
            log::warn!("worker {id}: {r}");
        }
        self.node_forget(id);
        let requeued = self.handoff.worker_gone(id);
        if requeued > 0 {
            log::info!("worker {id} gone with {requeued} connection(s) in flight: handing them to others");
        }
        let ev = self.event(EventKind::Disconnect, id);
        self.events.push(ev);
        self.retry_stalled();
    }

    /// A worker broke the protocol: log it, tell the host, kill it. The primary carries on.
    pub(super) fn drop_worker(&mut self, id: u32, reason: &str) {
        let Some(slot) = self.slots.get(&id) else { return };
        let pid = slot.pid;
        log::error!("worker {id} (pid {pid}): {reason}; dropping it");
        self.events.push(Event { pid, ..Event::error(id, format!("worker {id} dropped: {reason}")) });
        slot.signal(libc::SIGKILL).ok();
        self.channel_lost(id, None);
    }

    pub(super) fn begin_shutdown(&mut self, grace_ms: u32) {
        if self.phase == Phase::Running && grace_ms > 0 && self.cfg.drain_delay_ms > 0 && self.drain_pending.is_none() {
            // Serve on, while /healthz already says 503, before stopping (see
            // `cluster_config_set_drain_delay`).
            log::info!("shutdown asked: draining for {} ms first (health says 503)", self.cfg.drain_delay_ms);
            self.drain_pending = Some(grace_ms);
            self.reactor.add_timer(sys::monotonic_ms() + u64::from(self.cfg.drain_delay_ms), Timer::DrainDelay);
            return;
        }
        // A second request to stop does not wait for the rest of the delay.
        self.shutdown_now(grace_ms);
    }

    /// The shutdown itself, once any drain delay is over (see `begin_shutdown`).
    pub(super) fn shutdown_now(&mut self, grace_ms: u32) {
        self.drain_pending = None;
        match self.phase {
            Phase::Finished => return,
            Phase::Draining { .. } => {
                if grace_ms == 0 {
                    self.kill_all();
                }
                return;
            }
            Phase::Running => {}
        }
        log::info!("shutting down: {} worker(s), {} ms grace", self.slots.len(), grace_ms);
        self.abort_reload("the cluster is shutting down".into());
        self.notify("STOPPING=1");
        self.pending_respawns.clear();
        self.events.push(Event::new(EventKind::Shutdown, 0));
        self.spawn_queue.clear();
        self.accept_remaining();
        self.phase = Phase::Draining { shutdown_sent: false };
        if grace_ms == 0 {
            self.kill_all();
        } else {
            self.grace_timer = Some(self.reactor.add_timer(sys::monotonic_ms() + u64::from(grace_ms), Timer::Grace));
        }
    }

    fn kill_all(&mut self) {
        for slot in self.slots.values_mut() {
            slot.disconnect_requested = true;
            slot.signal(libc::SIGKILL).ok();
        }
    }

    fn send_shutdown_to_all(&mut self) {
        let ids: Vec<u32> = self.slots.keys().copied().collect();
        for id in ids {
            self.disconnect(id).ok();
        }
    }

    /// Settles a turn: hand off what waits, move a shutdown along, switch accepting on or off.
    pub(super) fn after_turn(&mut self) {
        // A send that failed for good on any thread (a relay, the host's cluster_send) marked
        // the queue: the channel is lost.
        let broken: Vec<u32> =
            self.slots.values().filter(|s| s.channel_open && s.outbox.failed()).map(|s| s.id).collect();
        for id in broken {
            self.channel_broken(id, "a send on its channel failed".into());
        }
        self.pump();
        if !self.loglimit.is_empty() {
            for (id, line, n) in self.loglimit.expired(sys::monotonic_ms()) {
                let secs = super::loglimit::WINDOW_MS / 1000;
                log::warn!("worker {id}: {n} more log line(s) like \"{line}\" were suppressed in {secs} s");
            }
        }
        if let Phase::Draining { shutdown_sent } = self.phase {
            if !self.handoff.waiting.is_empty()
                && !self.slots.values().any(|s| s.channel_open && !s.disconnect_requested)
            {
                let n = self.handoff.drop_waiting();
                log::error!("shutdown: no worker left to take {n} accepted connection(s): closed unanswered");
            }
            if !shutdown_sent && self.handoff.waiting.is_empty() {
                self.phase = Phase::Draining { shutdown_sent: true };
                self.send_shutdown_to_all();
            }
            if self.slots.is_empty() {
                self.finish();
            }
        }
        self.close_orphan_listeners();
        self.update_accepting();
        if self.slots.values().any(|s| s.inbox_ready()) {
            // A turn stopped inside a batch (its frame or byte budget, or a relay stall that
            // has since cleared): the rest is in memory, so epoll will not report it. Come back.
            self.shared.wake();
        }
    }

    fn finish(&mut self) {
        self.phase = Phase::Finished;
        if let Some(t) = self.grace_timer.take() {
            self.reactor.cancel_timer(t);
        }
        for e in self.listeners.take_all() {
            e.listener.unlink_socket_file();
        }
        if self.handoff.dropped > 0 {
            log::warn!("{} accepted connection(s) were closed unanswered", self.handoff.dropped);
        }
        log::info!("primary stopped");
    }
}
