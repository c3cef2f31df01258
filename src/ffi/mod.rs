//! The C ABI: `extern "C"` functions, the types and constants of `include/rcluster.h`, and the
//! panic boundary. A thin layer: every behaviour lives in the core.
//!
//! Conventions (rustls-ffi's): fallible functions return `int32_t`, `>= 0` on success and a
//! `CLUSTER_E_*` code otherwise, with a sentence in `cluster_last_error()`. Every body runs
//! inside `boundary::guard`, so no panic crosses into C. NULL pointers give `CLUSTER_E_INVAL`.

#![allow(non_camel_case_types)]

pub mod boundary;
pub mod child;
pub mod config;
pub mod logging;
pub mod runtime;
pub mod threads;
pub mod types;
