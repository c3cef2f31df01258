//! Errors: a stable numeric code (the `CLUSTER_E_*` values of the C ABI) plus a sentence.

use std::fmt;
use std::io;

/// An error code from the C ABI contract. The numbers are stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// A bad argument: NULL, out of range, malformed.
    Inval = -1,
    /// A primary-only call in a worker, or the reverse.
    Role = -2,
    /// No worker has that id (or none can take the request).
    NoWorker = -3,
    /// A bounded queue is full: try again after the DRAIN event.
    Again = -4,
    /// The message is larger than the configured maximum.
    TooBig = -5,
    /// The channel or the runtime is closed.
    Closed = -6,
    /// FORK mode in a process that has more than one thread.
    Threads = -7,
    /// The call does not fit the runtime's state (not started, already started, ...).
    State = -8,
    /// A system call failed; the sentence names it and the OS error.
    Sys = -9,
    /// A panic was caught at the C boundary (a bug in rcluster).
    Panic = -10,
    /// A wait ran out of time.
    Timeout = -11,
}

impl Code {
    /// A short, fixed description of the code (what `cluster_strerror` returns).
    pub fn describe(self) -> &'static str {
        match self {
            Code::Inval => "invalid argument",
            Code::Role => "wrong role for this call (primary-only in a worker, or the reverse)",
            Code::NoWorker => "no such worker",
            Code::Again => "queue full, try again after the DRAIN event",
            Code::TooBig => "message larger than the configured maximum",
            Code::Closed => "channel or runtime closed",
            Code::Threads => "FORK mode refused: the process has more than one thread",
            Code::State => "call not valid in the runtime's current state",
            Code::Sys => "system call failed",
            Code::Panic => "internal panic caught at the C boundary",
            Code::Timeout => "timed out",
        }
    }

    /// The code for a raw number, if it is one.
    pub fn from_raw(raw: i32) -> Option<Code> {
        Some(match raw {
            -1 => Code::Inval,
            -2 => Code::Role,
            -3 => Code::NoWorker,
            -4 => Code::Again,
            -5 => Code::TooBig,
            -6 => Code::Closed,
            -7 => Code::Threads,
            -8 => Code::State,
            -9 => Code::Sys,
            -10 => Code::Panic,
            -11 => Code::Timeout,
            _ => return None,
        })
    }
}

/// An rcluster error: a code and a human sentence about this failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The stable code.
    pub code: Code,
    /// What went wrong, e.g. "bind 127.0.0.1:80: Permission denied (os error 13)".
    pub message: String,
    /// The OS error number of a failed system call (`Error::sys`): what Node's channel
    /// reports to a worker whose `listen` failed (as a negative uv errno).
    pub os: Option<i32>,
}

/// The result type of the core API.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with a code and a sentence.
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), os: None }
    }

    /// A failed system call: `what` says which call on what, `err` is the OS error (an
    /// `io::Error` or nix's `Errno`).
    pub fn sys(what: impl fmt::Display, err: impl Into<io::Error>) -> Error {
        let err = err.into();
        Error { os: err.raw_os_error(), ..Error::new(Code::Sys, format!("{what}: {err}")) }
    }

    /// `errno` after a failed libc call, as a `Sys` error about `what`.
    pub fn last_os(what: impl fmt::Display) -> Error {
        Error::sys(what, io::Error::last_os_error())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Shorthand for `Err(Error::new(code, message))`.
pub fn fail<T>(code: Code, message: impl Into<String>) -> Result<T> {
    Err(Error::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_raw_numbers() {
        for raw in -11..=-1 {
            let code = Code::from_raw(raw).expect("every contract code maps back");
            assert_eq!(code as i32, raw);
            assert!(!code.describe().is_empty());
        }
        assert_eq!(Code::from_raw(0), None);
        assert_eq!(Code::from_raw(-12), None);
    }

    #[test]
    fn sys_errors_name_the_call_and_the_os_error() {
        let e = Error::sys("bind 127.0.0.1:80", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.code, Code::Sys);
        assert!(e.message.starts_with("bind 127.0.0.1:80: "), "{}", e.message);
        assert!(e.message.contains("ermission denied"), "{}", e.message);
    }
}
