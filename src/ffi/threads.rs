//! The C calls for threads that report to the loop (Node's `worker_threads`): start, the
//! pool, messages both ways. Their events are CLUSTER_EVENT_THREAD_*, on the loop of the
//! running runtime (primary or worker), which must be started first.

use std::ffi::c_void;
use std::time::Duration;

use super::boundary::{bytes_arg, guard, non_null};
use super::types::*;
use crate::error::{Code, Error};
use crate::runtime;
use crate::threads;

/// The C function and its data, carried to the thread.
struct CJob {
    f: unsafe extern "C" fn(*mut c_void) -> libc::c_int,
    data: *mut c_void,
}

// SAFETY: the caller of `cluster_thread_start` hands `data` to the new thread (Node's
// `workerData`); Rust only carries the pointer there.
unsafe impl Send for CJob {}

/// Runs `f(data)` on a new thread (or on the pool, `cluster_threads_set_pool`); returns the
/// thread's id (>= 1, its own series). On that thread `cluster_thread_post` sends messages to
/// this loop (CLUSTER_EVENT_THREAD_MESSAGE) and `cluster_thread_recv` reads what
/// `cluster_thread_send` sent it; `f`'s return value comes as CLUSTER_EVENT_THREAD_EXIT,
/// after its messages. A running thread makes FORK mode refuse to start workers
/// (CLUSTER_E_THREADS), as any other thread does; so does the pool's, as long as it exists.
///
/// # Safety
/// `f` is a valid function; `data` is whatever it expects, usable from another thread.
#[no_mangle]
pub unsafe extern "C" fn cluster_thread_start(f: cluster_thread_fn, data: *mut c_void) -> i32 {
    guard(|| {
        let f = f.ok_or_else(|| Error::new(Code::Inval, "the thread function is NULL"))?;
        let job = CJob { f, data };
        runtime::thread_start(Box::new(move |_port: &threads::Port| {
            let job = job;
            // SAFETY: the caller's contract: `f` takes `data`.
            unsafe { (job.f)(job.data) }
        }))
        .map(|id| id as i32)
    })
}

/// From now on thread functions run on a fixed pool of `n` threads (libuv's threadpool); 0
/// (the default) runs each on a thread of its own. A previous pool's threads finish what was
/// queued for them, then end. Queued functions wait for a free pool thread.
#[no_mangle]
pub extern "C" fn cluster_threads_set_pool(n: u32) -> i32 {
    guard(|| runtime::threads_set_pool(n as usize).map(|()| 0))
}

/// On a thread started by `cluster_thread_start`: posts `len` bytes to the loop that started
/// it (Node's `parentPort.postMessage`), a CLUSTER_EVENT_THREAD_MESSAGE there. Never blocks
/// (the queue is unbounded: a thread posting faster than the loop handles grows it).
/// CLUSTER_E_ROLE on any other thread, CLUSTER_E_CLOSED once that runtime has stopped.
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_thread_post(data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { bytes_arg(data, len) }?;
        threads::with_port(|port| port.post(bytes)).map(|()| 0)
    })
}

/// Sends `len` bytes to thread `id` (Node's `worker.postMessage`), read there with
/// `cluster_thread_recv`. CLUSTER_E_INVAL for an unknown id (or one whose THREAD_EXIT came).
///
/// # Safety
/// `data` is valid for reads of `len` bytes (NULL is fine when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cluster_thread_send(id: u32, data: *const u8, len: usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { bytes_arg(data, len) }?;
        runtime::thread_send(id, bytes).map(|()| 0)
    })
}

/// On a thread started by `cluster_thread_start`: waits up to `timeout_ms` (-1: forever) for
/// the next message its owner sent (`cluster_thread_send`). On success `*data` points at a
/// copy the caller owns and frees with free(3) (NULL when the message is empty) and `*len` is
/// its size. CLUSTER_E_TIMEOUT when none came in time, CLUSTER_E_CLOSED once the owning
/// runtime has stopped, CLUSTER_E_ROLE on any other thread.
///
/// # Safety
/// `data` and `len` are valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cluster_thread_recv(data: *mut *mut u8, len: *mut usize, timeout_ms: i32) -> i32 {
    guard(|| {
        non_null(data, "data")?;
        non_null(len, "len")?;
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        let message = threads::with_port(|port| port.recv(timeout))?;
        let copy = if message.is_empty() {
            std::ptr::null_mut()
        } else {
            // SAFETY: malloc of a non-zero size; checked for NULL below.
            let p = unsafe { libc::malloc(message.len()) }.cast::<u8>();
            if p.is_null() {
                return Err(Error::new(Code::Sys, format!("malloc of {} bytes failed", message.len())));
            }
            // SAFETY: `p` has room for `message.len()` bytes, and the two do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), p, message.len()) };
            p
        };
        // SAFETY: the caller's contract: both are writable.
        unsafe {
            *data = copy;
            *len = message.len();
        }
        Ok(0)
    })
}

/// On a thread started by `cluster_thread_start`: its id; CLUSTER_E_ROLE on any other thread.
#[no_mangle]
pub extern "C" fn cluster_thread_self() -> i32 {
    guard(|| threads::with_port(|port| Ok(port.id() as i32)))
}
