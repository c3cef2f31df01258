//! A worker's request to listen (`cluster_listen_tcp`/`_unix` in a worker) and the primary's
//! answer, on the wire: the payloads of [`Kind::Listen`] and [`Kind::Listening`].
//!
//! The worker resolves a host name itself, before asking: the primary's loop never waits on a
//! name lookup that a worker chose.
//!
//! [`Kind::Listen`]: super::frame::Kind::Listen
//! [`Kind::Listening`]: super::frame::Kind::Listening

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::frame::FrameError;

/// What a worker asks to listen on: the key under which workers share one socket, as
/// node:cluster keys its servers (address, port as asked, kind). Port 0 stays 0 in the key,
/// so workers that all ask for port 0 share one ephemeral port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenKey {
    /// A TCP address (an IP literal: the worker resolved any name).
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl ListenKey {
    /// The Listen frame's payload: `0, port u16, ip text` (an IPv6 address with its scope id
    /// as `fe80::1%2`) or `1, path bytes`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ListenKey::Tcp(addr) => {
                let mut out = vec![0u8];
                out.extend_from_slice(&addr.port().to_le_bytes());
                out.extend_from_slice(addr.ip().to_string().as_bytes());
                if let SocketAddr::V6(v6) = addr {
                    if v6.scope_id() != 0 {
                        out.extend_from_slice(format!("%{}", v6.scope_id()).as_bytes());
                    }
                }
                out
            }
            ListenKey::Unix(path) => {
                let mut out = vec![1u8];
                out.extend_from_slice(path.as_os_str().as_bytes());
                out
            }
        }
    }

    /// Decodes a Listen payload (from a worker: checked, never trusted).
    pub fn decode(payload: &[u8]) -> Result<ListenKey, FrameError> {
        match payload.split_first() {
            Some((0, rest)) if rest.len() >= 3 => {
                let port = u16::from_le_bytes([rest[0], rest[1]]);
                let bad = FrameError::Payload("listen request: not an IP address");
                let text = std::str::from_utf8(&rest[2..]).map_err(|_| bad.clone())?;
                let (ip, scope) = match text.split_once('%') {
                    Some((ip, scope)) => (ip, Some(scope.parse::<u32>().map_err(|_| bad.clone())?)),
                    None => (text, None),
                };
                match (ip.parse::<IpAddr>().map_err(|_| bad.clone())?, scope) {
                    (IpAddr::V6(v6), Some(scope)) => {
                        Ok(ListenKey::Tcp(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))))
                    }
                    (_, Some(_)) => Err(bad),
                    (ip, None) => Ok(ListenKey::Tcp(SocketAddr::new(ip, port))),
                }
            }
            Some((1, path)) if !path.is_empty() && path.len() < 108 && !path.contains(&0) => {
                Ok(ListenKey::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(path))))
            }
            _ => Err(FrameError::Payload("malformed listen request")),
        }
    }
}

impl std::fmt::Display for ListenKey {
    /// The address for messages: `127.0.0.1:8080`, `[::1]:80`, `/run/app.sock`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenKey::Tcp(addr) => write!(f, "{addr}"),
            ListenKey::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The listener is one every worker gets connections from (the config's, or one the primary
/// added): a worker cannot unlisten it.
pub const ANSWER_ALL_WORKERS: u8 = 1;
/// REUSEPORT: the worker binds its own SO_REUSEPORT socket on the address in the text.
pub const ANSWER_BIND_REUSEPORT: u8 = 2;

/// The primary's answer to a Listen request (or, with request id 0, a listener it tells
/// SHARED/REUSEPORT workers about unasked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The listener index (>= 0), or a `CLUSTER_E_*` code.
    pub result: i32,
    /// The bound port (0 for Unix sockets and errors).
    pub port: u16,
    /// `ANSWER_*` bits.
    pub flags: u8,
    /// The bound address as text (`127.0.0.1:8080`, `[::1]:80`, `/run/app.sock`), or the
    /// sentence that says why not.
    pub text: String,
}

impl Answer {
    /// The Listening frame's payload: `result i32, port u16, flags u8, text`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 + self.text.len());
        out.extend_from_slice(&self.result.to_le_bytes());
        out.extend_from_slice(&self.port.to_le_bytes());
        out.push(self.flags);
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Decodes a Listening payload.
    pub fn decode(payload: &[u8]) -> Result<Answer, FrameError> {
        if payload.len() < 7 {
            return Err(FrameError::Payload("short listen answer"));
        }
        Ok(Answer {
            result: i32::from_le_bytes(payload[0..4].try_into().expect("4 bytes")),
            port: u16::from_le_bytes([payload[4], payload[5]]),
            flags: payload[6],
            text: String::from_utf8_lossy(&payload[7..]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_garbage_is_refused() {
        for key in [
            ListenKey::Tcp("127.0.0.1:0".parse().unwrap()),
            ListenKey::Tcp("[::1]:8080".parse().unwrap()),
            ListenKey::Tcp("[fe80::1%2]:8080".parse().unwrap()),
            ListenKey::Unix(PathBuf::from("/tmp/a.sock")),
        ] {
            assert_eq!(ListenKey::decode(&key.encode()).unwrap(), key);
        }
        for bad in [
            &b""[..],
            b"\x00\x50",
            b"\x00\x50\x00localhost",
            b"\x01",
            b"\x02abc",
            b"\x01a\x00b",
            b"\x00\x50\x00127.0.0.1%2",
            b"\x00\x50\x00::1%x",
        ] {
            assert!(ListenKey::decode(bad).is_err(), "{bad:?}");
        }
        assert!(ListenKey::decode(&[&[1u8][..], &[b'a'; 108][..]].concat()).is_err());
    }

    #[test]
    fn answers_round_trip() {
        let a = Answer { result: 3, port: 8080, flags: ANSWER_ALL_WORKERS, text: "127.0.0.1:8080".into() };
        assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        let e = Answer { result: -9, port: 0, flags: 0, text: "bind 127.0.0.1:80: Permission denied".into() };
        assert_eq!(Answer::decode(&e.encode()).unwrap(), e);
        assert!(Answer::decode(&[0; 6]).is_err());
    }
}
