//! rcluster: a process cluster in a library, with a C ABI.
//!
//! A primary process starts and supervises worker processes (fork, or fork+exec), carries
//! messages and file descriptors between them over Unix sockets, and accepts connections to
//! hand them to workers. The same runtime serves C (`include/rcluster.h`), Python and Node.js.
//!
//! Module map:
//! - [`runtime`] is the process-global runtime and the Rust API (`primary_start`, `dispatch`, `send`...).
//! - [`primary`] holds the supervisor, spawning, balancing, connection handoff, relaying.
//! - [`worker`] is the worker runtime.
//! - [`ipc`] has frames, channels (SOCK_SEQPACKET + SCM_RIGHTS), bounded send queues.
//! - [`net`] has the listeners.
//! - [`event_loop`] is epoll, timers and cross-thread wakeups; [`signals`] the signal self-pipe;
//!   [`requests`] what a host's signal handler may ask (`cluster_shutdown`).
//! - [`child`] runs child processes on the loop, [`threads`] threads that post to it, both in
//!   the [`sideloop`] nested in the runtime's.
//! - [`ffi`] is the C ABI, a thin layer over the above.
//! - [`fuzzing`] holds the fuzz entry points (and [`primary::harness`] the primary they drive).
//!
//! Layers, each naming only its own and lower ones (tests/layers.rs checks it): `ffi` ->
//! `runtime` -> `primary` -> `worker` -> `ipc`/`net`/`event_loop`/`signals` -> `sys`, with
//! [`config`] plain data at the bottom.

#![warn(missing_docs)]

pub mod child;
pub mod config;
pub mod error;
pub mod event;
pub mod event_loop;
pub mod ffi;
pub mod fuzzing;
pub mod ipc;
pub mod logging;
pub mod net;
pub mod primary;
pub mod requests;
pub mod runtime;
pub mod shared;
pub mod sideloop;
pub mod signals;
mod sync;
pub mod sys;
pub mod threads;
pub mod worker;

pub use config::{Config, ListenSpec, Mode, Policy};
pub use error::{Code, Error, Result};
pub use event::{Event, EventKind, Handler};
pub use primary::workers::{WorkerInfo, WorkerState};
