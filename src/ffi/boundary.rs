//! The panic boundary and the thread-local last error.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Code, Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the sentence of the last failure on this thread.
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The last failure's sentence on this thread ("" before any). Valid until the next failing
/// call on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs an exported body: its `Ok` value, or its error code with the sentence recorded, or
/// `CLUSTER_E_PANIC` for a panic, which never unwinds into C.
pub fn guard(f: impl FnOnce() -> Result<i32>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code as i32
        }
        Err(p) => {
            set_last_error(&format!("internal panic: {}", panic_message(&*p)));
            Code::Panic as i32
        }
    }
}

/// Like `guard` for functions that cannot report errors: the fallback on a panic.
pub fn guard_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        set_last_error(&format!("internal panic: {}", panic_message(&*p)));
        fallback
    })
}

/// `Inval` for a NULL pointer argument named `what`.
pub fn non_null<T>(p: *const T, what: &str) -> Result<()> {
    if p.is_null() {
        Err(Error::new(Code::Inval, format!("{what} is NULL")))
    } else {
        Ok(())
    }
}

/// A borrowed C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string valid for the call.
pub unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    non_null(p, what)?;
    // SAFETY: non-NULL, and the caller promises NUL termination.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Error::new(Code::Inval, format!("{what} is not valid UTF-8")))
}

/// A byte-slice argument (`data`, `len`); NULL is fine when `len` is 0.
///
/// # Safety
/// `data` is NULL or valid for reads of `len` bytes for the call.
pub unsafe fn bytes_arg<'a>(data: *const u8, len: usize) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    non_null(data, "data")?;
    // SAFETY: non-NULL and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_a_code_and_a_sentence() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, Code::Panic as i32);
        // SAFETY: last_error_ptr returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn errors_set_the_last_error() {
        assert_eq!(guard(|| Err(Error::new(Code::Inval, "bad thing"))), -1);
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(last_error_ptr()) }.to_str().unwrap(), "bad thing");
        assert_eq!(guard(|| Ok(7)), 7);
    }
}
