//! The part of a runtime that any thread may use: the send queues, and the waker that makes
//! the loop thread notice what other threads queued.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crossbeam_queue::SegQueue;

use crate::error::{Code, Error, Result};
use crate::event_loop::Waker;
use crate::ipc::outbox::{Frame, Outbox, Pushed};
use crate::sync;

thread_local! {
    /// Set while this thread runs event callbacks (with batching on): its sends wait in their
    /// queues, leave in batches as they form, and the rest when the dispatch's callbacks are
    /// done (`release_held`).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// The outboxes this thread holds frames in.
    static HELD: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// From now on this thread's sends are held (see `Shared::release_held`).
pub fn hold_sends() {
    HOLDING.with(|h| h.set(true));
}

/// Forgets what this thread held, without sending it (a FORK child leaving the primary's
/// queues behind).
pub fn abandon_held() {
    HOLDING.with(|h| h.set(false));
    HELD.with(|h| h.borrow_mut().clear());
}

/// Cross-thread state of the running primary or worker.
pub struct Shared {
    /// This process's id: 0 in the primary, the worker id in a worker.
    pub self_id: u32,
    /// Largest message.
    pub max_message: u64,
    outboxes: RwLock<HashMap<u32, Arc<Outbox>>>,
    /// Outboxes that queued frames from another thread and need the loop to watch for
    /// writability.
    pub to_arm: SegQueue<u32>,
    /// Outboxes that emptied outside the loop (`uncork_all`) after refusing a send with
    /// AGAIN: the loop owes their DRAIN events.
    pub drained: SegQueue<u32>,
    waker: Arc<Waker>,
}

impl Shared {
    /// Shared state for process `self_id`.
    pub fn new(self_id: u32, max_message: u64, waker: Arc<Waker>) -> Shared {
        Shared {
            self_id,
            max_message,
            outboxes: RwLock::new(HashMap::new()),
            to_arm: SegQueue::new(),
            drained: SegQueue::new(),
            waker,
        }
    }

    /// Makes the outbox to `id` reachable from every thread.
    pub fn insert(&self, id: u32, outbox: Arc<Outbox>) {
        sync::write(&self.outboxes).insert(id, outbox);
    }

    /// Forgets the outbox to `id` (the worker exited).
    pub fn remove(&self, id: u32) {
        sync::write(&self.outboxes).remove(&id);
    }

    /// The outbox to `id`.
    pub fn outbox(&self, id: u32) -> Option<Arc<Outbox>> {
        sync::read(&self.outboxes).get(&id).cloned()
    }

    /// Every outbox, by id.
    pub fn all(&self) -> Vec<(u32, Arc<Outbox>)> {
        let mut v: Vec<_> = sync::read(&self.outboxes).iter().map(|(k, o)| (*k, o.clone())).collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
    }

    /// Pushes a frame to `id` from any thread, waking the loop when it must start watching
    /// the channel for writability.
    /// While this thread runs event callbacks, the frame is held (see `release_held`).
    pub fn push(&self, id: u32, frame: Frame) -> Result<()> {
        let outbox = self.outbox(id).ok_or_else(|| Error::new(Code::NoWorker, format!("no worker with id {id}")))?;
        let pushed = if HOLDING.with(Cell::get) { outbox.push_held(frame)? } else { outbox.push(frame)? };
        match pushed {
            Pushed::Queued { arm: true } => {
                self.to_arm.push(id);
                self.waker.wake();
            }
            Pushed::Held => HELD.with(|h| {
                let mut h = h.borrow_mut();
                if !h.contains(&id) {
                    h.push(id);
                }
            }),
            _ => {}
        }
        Ok(())
    }

    /// Sends what this thread held since `hold_sends` (batched per channel) and stops holding.
    pub fn release_held(&self) {
        HOLDING.with(|h| h.set(false));
        let ids = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        for id in ids {
            if let Some(outbox) = self.outbox(id) {
                self.after_flush(id, outbox.release());
            }
        }
    }

    /// Holds every send (`cluster_cork`): batches leave as they form, the rest at `uncork_all`.
    pub fn cork_all(&self) {
        for (_, outbox) in self.all() {
            outbox.cork();
        }
    }

    /// Sends what was held since `cork_all`; queues that could not be written completely are
    /// handed to the loop to watch. What this thread's callbacks held leaves too.
    pub fn uncork_all(&self) {
        for (id, outbox) in self.all() {
            self.after_flush(id, outbox.uncork());
        }
        self.release_held();
    }

    /// A flush outside the loop: a queue that emptied after refusing a send owes DRAIN; one
    /// that did not empty (or failed) needs the loop to watch it.
    fn after_flush(&self, id: u32, flushed: nix::Result<crate::ipc::outbox::Flushed>) {
        match flushed {
            Ok(f) if f.empty => {
                if f.drained {
                    self.drained.push(id);
                    self.waker.wake();
                }
            }
            // Not all written, or the channel failed: the loop's watch finds out which.
            _ => {
                self.to_arm.push(id);
                self.waker.wake();
            }
        }
    }

    /// Wakes the loop.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The waker's eventfd (valid while this runtime lives).
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.waker.fd()
    }
}
