//! Networking: the primary's listening sockets.

pub mod listener;
