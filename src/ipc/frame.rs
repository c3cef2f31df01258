//! The frame codec: a fixed 32-byte, versioned header in front of every datagram on a channel.
//!
//! ```text
//!  0      2    3     4      5     6        8         12        16            24            32
//!  | magic | ver | kind | flags | nfds | reserved | from    | to      | aux (u64)   | len (u64)   |
//! ```
//! All fields are little-endian. `from`/`to` are worker ids (0 = the primary); the primary
//! overwrites `from` on everything it relays, so a worker cannot pose as another. `aux` is
//! per-kind (unused today, kept for sequence numbers). `len` is the payload length: the bytes
//! after the header, or, with [`FLAG_BIG`], the size of the sealed memfd that is the first fd.
//! A channel is SOCK_SEQPACKET, so one datagram is exactly one frame.

use std::fmt;

/// Identifies an rcluster frame ("RC").
pub const MAGIC: u16 = 0x5243;
/// The protocol version both ends must speak.
pub const VERSION: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 32;
/// The payload travels in a sealed memfd (the first fd) instead of inline.
pub const FLAG_BIG: u8 = 1;
/// A user fd rides along (after the memfd, when there is one).
pub const FLAG_FD: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_BIG | FLAG_FD;
/// The most fds one frame may carry (a batch of handed-off connections).
pub const MAX_FDS: usize = 64;

/// A process (primary or worker) refuses the fds passed with messages while fewer than this
/// many of its fds are free: the rest is kept for connections (a worker reports it is short
/// of fds for connections at `2 * MAX_FDS`), so a flood of passed fds that nobody closes
/// cannot leave it unable to serve.
pub const MESSAGE_FD_RESERVE: u64 = 3 * MAX_FDS as u64;

/// FdPressure payload bit: short of fds for connections (the primary keeps its copies).
pub const PRESSURE_CONNECTIONS: u8 = 1;
/// FdPressure payload bit: refusing the fds passed with messages (the primary refuses relays
/// of messages with fds to it, and tells their senders).
pub const PRESSURE_MESSAGES: u8 = 2;

/// What a frame means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// worker -> primary: "I run and my loop is up" (ONLINE). Payload: the worker's pid (u32).
    Hello = 1,
    /// worker -> primary: ready for connections (READY, Node's "listening").
    Ready = 2,
    /// A user message, to the primary (`to` = 0), to a worker, or broadcast; relayed by the primary.
    Message = 3,
    /// primary -> worker: a batch of connections, one fd per [`ConnEntry`].
    NewConn = 4,
    /// worker -> primary: these connection ids arrived (payload: u64 ids).
    Ack = 5,
    /// worker -> primary: these connection ids were refused (draining: their fds come back
    /// with it) or their fds were lost.
    Nack = 6,
    /// primary -> worker: stop gracefully.
    Shutdown = 7,
    /// worker -> primary: "I am leaving on purpose" (the worker called `cluster_shutdown`).
    Bye = 8,
    /// worker -> primary: the loop is alive.
    Heartbeat = 9,
    /// primary -> worker: a message to `aux` could not be delivered (no such worker, or the
    /// payload says why). worker -> primary: a message with an fd from `aux` (0: the primary)
    /// was refused (the worker is short of fds).
    Undeliverable = 10,
    /// worker -> primary: connections handed to it have finished (payload: u32 count).
    ConnDone = 11,
    /// Several fd-less frames in one datagram (see [`encode_batch`]): small messages sent in
    /// one loop turn cost one system call on each side instead of one each.
    Batch = 12,
    /// worker -> primary: how short of fds it is (payload: 1 byte, `PRESSURE_CONNECTIONS` |
    /// `PRESSURE_MESSAGES`, 0 for neither): the primary keeps its copy of each connection
    /// handed to it until the ACK while it is short for connections, and refuses to relay
    /// messages with fds to it while it refuses those.
    FdPressure = 13,
    /// worker -> primary: listen on an address (payload: [`ListenKey`](super::listen::ListenKey);
    /// `aux`: the request id, echoed in the answer).
    Listen = 14,
    /// primary -> worker: the answer to a Listen (payload: [`Answer`](super::listen::Answer);
    /// `aux`: the request id, 0 for a listener the primary added by itself). SHARED: the
    /// listening socket rides along.
    Listening = 15,
    /// worker -> primary: stop handing it connections from listener `aux`.
    Unlisten = 16,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Message,
            4 => Kind::NewConn,
            5 => Kind::Ack,
            6 => Kind::Nack,
            7 => Kind::Shutdown,
            8 => Kind::Bye,
            9 => Kind::Heartbeat,
            10 => Kind::Undeliverable,
            11 => Kind::ConnDone,
            12 => Kind::Batch,
            13 => Kind::FdPressure,
            14 => Kind::Listen,
            15 => Kind::Listening,
            16 => Kind::Unlisten,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the frame means.
    pub kind: Kind,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// How many fds ride along in SCM_RIGHTS.
    pub nfds: u8,
    /// Sender id (stamped by the primary on relay).
    pub from: u32,
    /// Destination id (0 = primary, [`BROADCAST`] = every other worker).
    pub to: u32,
    /// Per-kind value.
    pub aux: u64,
    /// Payload length (inline, or the memfd's size with [`FLAG_BIG`]).
    pub len: u64,
}

/// `to` value of a broadcast.
pub const BROADCAST: u32 = u32::MAX;

impl Header {
    /// A header of `kind` with everything else zero.
    pub fn new(kind: Kind) -> Header {
        Header { kind, flags: 0, nfds: 0, from: 0, to: 0, aux: 0, len: 0 }
    }

    /// The 32 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = self.flags;
        b[5] = self.nfds;
        b[8..12].copy_from_slice(&self.from.to_le_bytes());
        b[12..16].copy_from_slice(&self.to.to_le_bytes());
        b[16..24].copy_from_slice(&self.aux.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and checks one datagram that arrived with `fds_received` fds. Returns the header
    /// and the inline payload. `max_len` bounds a Message's payload (inline or memfd); the
    /// protocol's own frames are bounded by the datagram they come in.
    pub fn decode(datagram: &[u8], fds_received: usize, max_len: u64) -> Result<(Header, &[u8]), FrameError> {
        if datagram.len() < HEADER_LEN {
            return Err(FrameError::Short(datagram.len()));
        }
        let u16_at = |i: usize| u16::from_le_bytes([datagram[i], datagram[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(datagram[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(datagram[i..i + 8].try_into().expect("8 bytes"));
        if u16_at(0) != MAGIC {
            return Err(FrameError::Magic(u16_at(0)));
        }
        if datagram[2] != VERSION {
            return Err(FrameError::Version(datagram[2]));
        }
        let kind = Kind::from_u8(datagram[3]).ok_or(FrameError::Kind(datagram[3]))?;
        let h = Header {
            kind,
            flags: datagram[4],
            nfds: datagram[5],
            from: u32_at(8),
            to: u32_at(12),
            aux: u64_at(16),
            len: u64_at(24),
        };
        if h.flags & !KNOWN_FLAGS != 0 || u16_at(6) != 0 {
            return Err(FrameError::Flags(h.flags));
        }
        if h.nfds as usize != fds_received {
            return Err(FrameError::FdCount { announced: h.nfds, received: fds_received });
        }
        let payload = &datagram[HEADER_LEN..];
        // `max_len` is the user's bound on messages. Every other kind is inline (checked
        // below), so its own datagram bounds it, whatever the user chose: with a 1-byte
        // maximum a worker still says Hello and takes NewConn batches. A batch's frames are
        // each checked here in turn.
        if h.len > max_len && kind == Kind::Message {
            return Err(FrameError::TooBig { len: h.len, max: max_len });
        }
        let big = h.flags & FLAG_BIG != 0;
        if big {
            if !payload.is_empty() || h.kind != Kind::Message {
                return Err(FrameError::Length { announced: h.len, inline: payload.len() });
            }
        } else if h.len != payload.len() as u64 {
            return Err(FrameError::Length { announced: h.len, inline: payload.len() });
        }
        let fds_expected = match kind {
            Kind::Message => usize::from(big) + usize::from(h.flags & FLAG_FD != 0),
            // A NACK may give back the fds of the connections it refuses.
            // A listen answer may carry the listening socket (SHARED).
            Kind::NewConn | Kind::Nack | Kind::Listening => h.nfds as usize,
            _ => 0,
        };
        if kind != Kind::Message && h.flags != 0 {
            return Err(FrameError::Flags(h.flags));
        }
        if fds_expected != fds_received {
            return Err(FrameError::FdCount { announced: fds_expected as u8, received: fds_received });
        }
        Ok((h, payload))
    }
}

/// Why a datagram is not a valid frame. The primary drops a worker that sends one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than a header.
    Short(usize),
    /// Wrong magic number.
    Magic(u16),
    /// A protocol version we do not speak.
    Version(u8),
    /// An unknown frame kind.
    Kind(u8),
    /// Unknown flag bits, or flags on a kind that takes none.
    Flags(u8),
    /// The fds that arrived do not match what the header announces.
    FdCount {
        /// What the header (or its kind) says.
        announced: u8,
        /// What SCM_RIGHTS delivered.
        received: usize,
    },
    /// The announced length does not match the datagram.
    Length {
        /// `len` in the header.
        announced: u64,
        /// Bytes after the header.
        inline: usize,
    },
    /// Larger than the configured maximum message.
    TooBig {
        /// `len` in the header.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// A payload that does not parse for its kind.
    Payload(&'static str),
    /// A datagram larger than any valid frame.
    Oversized(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Short(0) => write!(f, "an empty datagram"),
            FrameError::Short(n) => write!(f, "datagram of {n} bytes is shorter than a frame header"),
            FrameError::Magic(m) => write!(f, "bad magic 0x{m:04x}"),
            FrameError::Version(v) => write!(f, "unsupported protocol version {v}"),
            FrameError::Kind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Flags(x) => write!(f, "invalid flags 0x{x:02x}"),
            FrameError::FdCount { announced, received } => {
                write!(f, "frame announces {announced} fds but {received} arrived")
            }
            FrameError::Length { announced, inline } => {
                write!(f, "frame announces {announced} payload bytes but carries {inline}")
            }
            FrameError::TooBig { len, max } => write!(f, "payload of {len} bytes exceeds the maximum of {max}"),
            FrameError::Payload(what) => write!(f, "malformed payload: {what}"),
            FrameError::Oversized(n) => write!(f, "datagram of at least {n} bytes is larger than any valid frame"),
        }
    }
}

/// One handed-off connection in a [`Kind::NewConn`] payload; its fd is at the same index in
/// the frame's SCM_RIGHTS array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    /// The primary's id for this connection (echoed in ACK/NACK).
    pub id: u64,
    /// Index of the listener that accepted it.
    pub listener: u32,
    /// The peer address as the kernel gave it (a `sockaddr_*`).
    pub peer: Vec<u8>,
}

/// Largest peer address carried (sizeof(struct sockaddr_storage)).
pub const MAX_PEER: usize = 128;

/// Encodes connection entries: per entry `id u64, listener u32, peer_len u32, peer bytes`.
pub fn encode_conns(entries: &[ConnEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 32);
    for e in entries {
        encode_conn(&mut out, e.id, e.listener, &e.peer);
    }
    out
}

/// Appends one connection entry to `out` (what `encode_conns` writes for each, without an
/// entry to build first).
pub fn encode_conn(out: &mut Vec<u8>, id: u64, listener: u32, peer: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&listener.to_le_bytes());
    out.extend_from_slice(&(peer.len() as u32).to_le_bytes());
    out.extend_from_slice(peer);
}

/// Decodes connection entries; the count must equal the fds that arrived.
pub fn decode_conns(mut payload: &[u8], count: usize) -> Result<Vec<ConnEntry>, FrameError> {
    let mut out = Vec::with_capacity(count);
    while !payload.is_empty() {
        if payload.len() < 16 {
            return Err(FrameError::Payload("truncated connection entry"));
        }
        let id = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
        let listener = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
        let peer_len = u32::from_le_bytes(payload[12..16].try_into().expect("4 bytes")) as usize;
        if peer_len > MAX_PEER || payload.len() < 16 + peer_len {
            return Err(FrameError::Payload("bad peer address length"));
        }
        out.push(ConnEntry { id, listener, peer: payload[16..16 + peer_len].to_vec() });
        payload = &payload[16 + peer_len..];
    }
    if out.len() != count {
        return Err(FrameError::Payload("connection entries do not match the fds"));
    }
    Ok(out)
}

/// Encodes frames (header bytes + payload, no fds) as one Batch datagram: a Batch header, then
/// per frame its length (u32) and its bytes.
pub fn encode_batch<'a>(frames: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    for (head, payload) in frames {
        out.extend_from_slice(&((head.len() + payload.len()) as u32).to_le_bytes());
        out.extend_from_slice(head);
        out.extend_from_slice(payload);
    }
    let header = Header { len: (out.len() - HEADER_LEN) as u64, ..Header::new(Kind::Batch) };
    out[..HEADER_LEN].copy_from_slice(&header.encode());
    out
}

/// The inner datagrams of a Batch payload (each still to be checked with `Header::decode`).
pub fn decode_batch(mut payload: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        if payload.len() < 4 {
            return Err(FrameError::Payload("truncated batch entry"));
        }
        let len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
        if len < HEADER_LEN || payload.len() < 4 + len {
            return Err(FrameError::Payload("bad batch entry length"));
        }
        out.push(&payload[4..4 + len]);
        payload = &payload[4 + len..];
    }
    if out.is_empty() {
        return Err(FrameError::Payload("empty batch"));
    }
    Ok(out)
}

/// Encodes a list of u64 ids (ACK/NACK payloads).
pub fn encode_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// Decodes a list of u64 ids.
pub fn decode_ids(payload: &[u8]) -> Result<Vec<u64>, FrameError> {
    if payload.len() % 8 != 0 {
        return Err(FrameError::Payload("id list is not a multiple of 8 bytes"));
    }
    Ok(payload.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut d = h.encode().to_vec();
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn header_round_trips() {
        let payload = b"hello";
        let h = Header { kind: Kind::Message, flags: FLAG_FD, nfds: 1, from: 7, to: 9, aux: u64::MAX - 1, len: 5 };
        let d = datagram(&h, payload);
        let (back, p) = Header::decode(&d, 1, 1 << 20).unwrap();
        assert_eq!(back, h);
        assert_eq!(p, payload);
    }

    #[test]
    fn big_frames_carry_no_inline_bytes() {
        let h = Header { kind: Kind::Message, flags: FLAG_BIG, nfds: 1, from: 0, to: 1, aux: 0, len: 16 << 20 };
        let wire = h.encode();
        let (back, p) = Header::decode(&wire, 1, 64 << 20).unwrap();
        assert_eq!(back.len, 16 << 20);
        assert!(p.is_empty());
        let with_inline = datagram(&h, b"x");
        assert!(matches!(Header::decode(&with_inline, 1, 64 << 20), Err(FrameError::Length { .. })));
    }

    #[test]
    fn truncated_input_is_refused() {
        let h = Header { len: 4, ..Header::new(Kind::Message) };
        let d = datagram(&h, b"abcd");
        for cut in 0..HEADER_LEN {
            assert_eq!(Header::decode(&d[..cut], 0, 1024), Err(FrameError::Short(cut)));
        }
        assert!(matches!(Header::decode(&d[..d.len() - 1], 0, 1024), Err(FrameError::Length { .. })));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let good = Header::new(Kind::Ready).encode();
        let mut bad_magic = good;
        bad_magic[0] ^= 0xff;
        assert!(matches!(Header::decode(&bad_magic, 0, 1024), Err(FrameError::Magic(_))));
        let mut bad_version = good;
        bad_version[2] = 99;
        assert_eq!(Header::decode(&bad_version, 0, 1024), Err(FrameError::Version(99)));
        let mut bad_kind = good;
        bad_kind[3] = 200;
        assert_eq!(Header::decode(&bad_kind, 0, 1024), Err(FrameError::Kind(200)));
        let mut bad_flags = good;
        bad_flags[4] = 0x80;
        assert!(matches!(Header::decode(&bad_flags, 0, 1024), Err(FrameError::Flags(_))));
        let mut reserved = good;
        reserved[6] = 1;
        assert!(matches!(Header::decode(&reserved, 0, 1024), Err(FrameError::Flags(_))));
        // A Ready frame with an fd it should not have.
        let mut fd_on_ready = Header::new(Kind::Ready);
        fd_on_ready.nfds = 1;
        assert!(matches!(Header::decode(&fd_on_ready.encode(), 1, 1024), Err(FrameError::FdCount { .. })));
        // Announced fds that did not arrive (MSG_CTRUNC or a lying sender).
        let h = Header { kind: Kind::Message, flags: FLAG_FD, nfds: 1, ..Header::new(Kind::Message) };
        assert!(matches!(Header::decode(&h.encode(), 0, 1024), Err(FrameError::FdCount { .. })));
        // Deterministic pseudo-random garbage never panics and is never accepted as Message
        // with a wrong length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            let mut d = [0u8; 48];
            for b in d.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if let Ok((h, p)) = Header::decode(&d, 0, 1024) {
                assert!(h.flags & FLAG_BIG != 0 || h.len == p.len() as u64);
            }
        }
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let h = Header { kind: Kind::Message, flags: FLAG_BIG, nfds: 1, len: 65, ..Header::new(Kind::Message) };
        assert_eq!(Header::decode(&h.encode(), 1, 64), Err(FrameError::TooBig { len: 65, max: 64 }));
    }

    #[test]
    fn the_message_bound_leaves_protocol_frames_alone() {
        let hello = datagram(&Header { len: 4, ..Header::new(Kind::Hello) }, &[1, 2, 3, 4]);
        assert!(Header::decode(&hello, 0, 1).is_ok(), "a 4-byte Hello under a 1-byte message bound");
        let ids = encode_ids(&[1, 2, 3]);
        let ack = datagram(&Header { len: ids.len() as u64, ..Header::new(Kind::Ack) }, &ids);
        assert!(Header::decode(&ack, 0, 1).is_ok());
        let msg = datagram(&Header { len: 2, ..Header::new(Kind::Message) }, b"ab");
        assert_eq!(Header::decode(&msg, 0, 1), Err(FrameError::TooBig { len: 2, max: 1 }));
        let lying = Header { len: 1 << 40, ..Header::new(Kind::Ack) };
        assert!(matches!(Header::decode(&lying.encode(), 0, 1), Err(FrameError::Length { .. })));
    }

    #[test]
    fn connection_entries_round_trip() {
        let entries = vec![
            ConnEntry { id: 1, listener: 0, peer: vec![2, 0, 1, 2, 127, 0, 0, 1] },
            ConnEntry { id: u64::MAX, listener: 3, peer: vec![] },
        ];
        let back = decode_conns(&encode_conns(&entries), 2).unwrap();
        assert_eq!(back, entries);
        assert!(decode_conns(&encode_conns(&entries), 3).is_err());
        let enc = encode_conns(&entries);
        for cut in 1..enc.len() {
            if cut == 24 {
                continue; // exactly the first entry: valid, but its count is 1
            }
            assert!(decode_conns(&enc[..cut], 2).is_err() || cut == enc.len());
        }
    }

    #[test]
    fn batches_round_trip_and_refuse_bad_entries() {
        let a = Header { len: 3, ..Header::new(Kind::Message) }.encode();
        let b = Header::new(Kind::Heartbeat).encode();
        let d = encode_batch([(&a[..], &b"abc"[..]), (&b[..], &[][..])].into_iter());
        let (h, p) = Header::decode(&d, 0, 1 << 20).unwrap();
        assert_eq!(h.kind, Kind::Batch);
        let inner = decode_batch(p).unwrap();
        assert_eq!(inner.len(), 2);
        assert_eq!(Header::decode(inner[0], 0, 1024).unwrap().1, b"abc");
        assert_eq!(Header::decode(inner[1], 0, 1024).unwrap().0.kind, Kind::Heartbeat);
        assert!(decode_batch(&p[..p.len() - 1]).is_err());
        assert!(decode_batch(&[]).is_err());
        assert!(decode_batch(&[1, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn id_lists_round_trip_and_refuse_odd_lengths() {
        let ids = [1u64, 2, u64::MAX];
        assert_eq!(decode_ids(&encode_ids(&ids)).unwrap(), ids);
        assert!(decode_ids(&[0u8; 7]).is_err());
    }
}
