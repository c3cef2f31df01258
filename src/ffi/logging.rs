//! Logging calls of the C ABI.

use std::ffi::{c_void, CString};

use super::boundary::guard;
use super::types::cluster_log_cb;
use crate::logging;

/// Logs to stderr through env_logger, filtered by `RCLUSTER_LOG` (e.g. `RCLUSTER_LOG=debug`;
/// default `info`). The library never installs a logger by itself.
#[no_mangle]
pub extern "C" fn cluster_log_init() -> i32 {
    guard(|| logging::init_env_logger().map(|()| 0))
}

struct CLog {
    cb: unsafe extern "C" fn(*mut c_void, i32, *const libc::c_char, *const libc::c_char),
    userdata: *mut c_void,
}

// SAFETY: log records come from whichever thread logs (the loop thread, or a thread calling
// cluster_send); the host's callback must accept that, as the header says. Rust only carries
// the pointer.
unsafe impl Send for CLog {}
// SAFETY: as above.
unsafe impl Sync for CLog {}

impl CLog {
    fn call(&self, level: log::Level, target: &str, message: &str) {
        let t = CString::new(target.replace('\0', " ")).unwrap_or_default();
        let m = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the host's callback with its userdata; the strings live for the call.
        unsafe { (self.cb)(self.userdata, level as i32, t.as_ptr(), m.as_ptr()) };
    }
}

/// Sends log records to `cb(userdata, level, target, message)` (level 1 error .. 5 trace, up
/// to the level in `RCLUSTER_LOG`, default info), from whichever thread logs. NULL `cb`
/// stops logging. The callback runs while the runtime is busy: it must not call rcluster
/// (such calls fail with CLUSTER_E_STATE rather than deadlock, this one and `cluster_log_init`
/// included); queue the record instead. What rcluster logs because of such a call is dropped.
#[no_mangle]
pub extern "C" fn cluster_set_log_callback(cb: cluster_log_cb, userdata: *mut c_void) -> i32 {
    guard(|| {
        let sink = cb.map(|cb| {
            let c = CLog { cb, userdata };
            Box::new(move |level: log::Level, target: &str, message: &str| c.call(level, target, message))
                as logging::LogFn
        });
        logging::set_callback(sink, logging::level_from_env()).map(|()| 0)
    })
}
