//! Node's own IPC channel, spoken by the primary to Node workers (issue 15; the protocol as
//! measured against Node 20 is in docs/node-dropin.md).
//!
//! A Node worker is started the way `child_process.fork()` starts one: one end of a
//! `SOCK_STREAM` socketpair is inherited and named by `NODE_CHANNEL_FD`, and `NODE_UNIQUE_ID`
//! makes the worker's `require('cluster')` Node's own worker side. Node's unchanged code then
//! runs in the worker; the primary only has to speak the wire format:
//! - `json`: one `JSON.stringify(message)` per line, ended by `\n`;
//! - `advanced`: a 4-byte big-endian length, then the V8 serializer's bytes (see `v8`).
//!
//! An fd travels in SCM_RIGHTS with the first byte of a `{"cmd":"NODE_HANDLE",...}` message,
//! and the sender sends nothing else with an fd until the receiver's `NODE_HANDLE_ACK`: Node's
//! receiver keeps a single pending fd, so a second one in the same read would be given to the
//! wrong message. The outbox keeps that rule (`Outbox` in stream mode); the reader keeps the
//! fds that arrive in order and gives each `NODE_HANDLE` message the oldest one.

pub mod lines;
pub mod stream;
pub mod v8;

/// How messages are encoded on a Node channel: the configuration's (plain data, at the
/// bottom layer), encoded here.
pub use crate::config::NodeSerialization as Serialization;

impl Serialization {
    /// The value of `NODE_CHANNEL_SERIALIZATION_MODE`.
    pub fn name(self) -> &'static str {
        match self {
            Serialization::Json => "json",
            Serialization::Advanced => "advanced",
        }
    }

    /// A message body framed for the wire: a line, or a length-prefixed V8 buffer.
    pub fn frame(self, body: &[u8]) -> Vec<u8> {
        match self {
            Serialization::Json => {
                let mut out = Vec::with_capacity(body.len() + 1);
                out.extend_from_slice(body);
                out.push(b'\n');
                out
            }
            Serialization::Advanced => {
                let mut out = Vec::with_capacity(body.len() + 4);
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(body);
                out
            }
        }
    }

    /// A message the core composes (a JSON value), as a body in this encoding.
    pub fn encode(self, value: &serde_json::Value) -> Vec<u8> {
        match self {
            Serialization::Json => serde_json::to_vec(value).expect("a JSON value always serializes"),
            Serialization::Advanced => v8::encode(value),
        }
    }

    /// A body from the wire as a JSON value, when it is one the core can read (any JSON text;
    /// V8 values made of objects, arrays, strings, numbers, booleans, null and undefined).
    /// None for anything else: such a message is the host's to decode.
    pub fn decode(self, body: &[u8]) -> Option<serde_json::Value> {
        match self {
            Serialization::Json => serde_json::from_slice(body).ok(),
            Serialization::Advanced => v8::decode(body),
        }
    }
}

/// Node's `UV_TCP_IPV6ONLY` flag in a `queryServer` request.
pub const UV_TCP_IPV6ONLY: u64 = 1;
