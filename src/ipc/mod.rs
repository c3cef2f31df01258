//! IPC between the primary and its workers: one SOCK_SEQPACKET socketpair per worker, a
//! versioned frame header, fds in SCM_RIGHTS, large payloads in sealed memfds, and bounded
//! send queues.

pub mod channel;
pub mod frame;
pub mod listen;
pub mod nodechan;
pub mod outbox;
pub mod payload;
pub mod reader;
