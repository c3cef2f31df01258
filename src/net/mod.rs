//! Networking: the primary's listening sockets.

pub mod activation;
pub mod listener;
pub mod notify;
