//! Node workers on Node's own IPC channel (`CLUSTER_CHANNEL_NODE_*`, issue 15): the primary's
//! half of node:cluster's protocol, so that an unchanged node:cluster worker (Node's own
//! `lib/internal/cluster/child.js`) runs under the rcluster primary.
//!
//! What the core answers itself (the wire shapes are in docs/node-dropin.md, section 2):
//! - `online`: the worker's runtime is up; it is READY at once (Node workers take connections
//!   only on servers they asked for, so being ready is being online);
//! - `queryServer` (a `server.listen()` in the worker): a listener of workers that listen,
//!   shared by Node's key, bound on the first request; round-robin (the primary accepts and
//!   sends `newconn`), or with SHARED/REUSEPORT (node:cluster's SCHED_NONE) the listening
//!   socket itself as a `net.Native` handle;
//! - `{ack, accepted}` for a `newconn`: the handoff's ACK (accepted) or NACK (refused: the
//!   connection goes to another worker);
//! - `close`: the worker no longer listens there;
//! - `exitedAfterDisconnect`: the worker is leaving on purpose; acknowledged;
//! - `NODE_HANDLE_ACK`/`NACK`: the fd in flight arrived (the outbox may send the next one);
//! - `NODE_HANDLE` from the worker: the fd is taken and acknowledged.
//!
//! Everything else (user messages, `listening`, internal messages the core does not own)
//! goes to the host as a MESSAGE event holding the body as the worker wrote it: the binding
//! decodes it and raises node:cluster's events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};

use serde_json::{json, Value};

use crate::config::ListenSpec;
use crate::error::Code;
use crate::ipc::frame::{Header, Kind};
use crate::ipc::nodechan::lines::{NodeReader, Read, Violation};
use crate::ipc::nodechan::{Serialization, UV_TCP_IPV6ONLY};
use crate::ipc::outbox::{Frame, Pushed};
use crate::ipc::payload::Payload;
use crate::ipc::reader::Incoming;
use crate::net::listener;
use crate::sys;

use super::handoff::Conn;
use super::listeners::MAX_PER_WORKER;
use super::workers::WorkerState;
use super::{Phase, Primary};

/// Reads of one Node channel per turn (64 KiB each): a chatty worker cannot starve the others.
const READS_PER_TURN: usize = 16;

/// A Node worker's channel state, beside its slot's outbox.
pub struct NodeSlot {
    /// The receive side.
    pub reader: NodeReader,
    /// The primary's `seq` counter for the messages it sends this worker (a `newconn` carries
    /// its connection id instead, which the worker's `{ack}` then names).
    seq: u64,
}

impl NodeSlot {
    /// A fresh channel in `mode`, refusing messages over `max_message` bytes.
    pub fn new(mode: Serialization, max_message: u64) -> NodeSlot {
        NodeSlot { reader: NodeReader::new(mode, usize::try_from(max_message).unwrap_or(usize::MAX)), seq: 0 }
    }
}

/// The listeners Node workers asked for, by Node's key (`address:port:addressType:fd:index`:
/// two `listen(0)` of one worker are two servers, the same `listen(0)` in two workers one).
#[derive(Default)]
pub struct NodeListeners {
    by_key: HashMap<String, u32>,
    key_of: BTreeMap<u32, String>,
    /// dgram sockets by key, with the workers that bound them: UDP is always shared (every
    /// worker reads the one socket), as in node:cluster.
    udp: HashMap<String, (OwnedFd, BTreeSet<u32>)>,
}

/// A `queryServer` request, read from the worker's message.
struct Query {
    seq: u64,
    key: String,
    address: Option<String>,
    port: i64,
    /// 4, 6, or -1 (a pipe path).
    address_type: i64,
    /// A dgram socket: "udp4" or "udp6".
    udp: Option<String>,
    flags: u64,
    readable_all: bool,
    writable_all: bool,
    /// `listen({ backlog })`, when given.
    backlog: Option<i32>,
}

impl Query {
    /// The request's fields; Err(reason) for a shape this primary does not serve (a UDP
    /// socket, a listen on an fd), Ok(None) for a malformed one.
    fn read(v: &Value) -> Option<Result<Query, &'static str>> {
        let seq = v.get("seq")?.as_u64()?;
        let address = match v.get("address") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let port = v.get("port").and_then(Value::as_i64).unwrap_or(0);
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let fd = v.get("fd").filter(|f| !f.is_null());
        let address_type = v.get("addressType").cloned().unwrap_or(Value::Null);
        let at_text = match &address_type {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let fd_text = fd.map_or("undefined".to_string(), Value::to_string);
        let key = format!("{}:{port}:{at_text}:{fd_text}:{index}", address.as_deref().unwrap_or("null"));
        let q = Query {
            seq,
            key,
            address,
            port,
            address_type: address_type.as_i64().unwrap_or(0),
            flags: v.get("flags").and_then(Value::as_u64).unwrap_or(0),
            readable_all: v.get("readableAll").and_then(Value::as_bool).unwrap_or(false),
            udp: address_type.as_str().map(str::to_string),
            backlog: v.get("backlog").and_then(Value::as_i64).filter(|&b| b > 0).and_then(|b| i32::try_from(b).ok()),
            writable_all: v.get("writableAll").and_then(Value::as_bool).unwrap_or(false),
        };
        if fd.and_then(Value::as_i64).is_some_and(|fd| fd >= 0) {
            return Some(Err("listening on an fd in a worker is not served by the rcluster primary"));
        }
        if let Some(kind) = &q.udp {
            return if kind == "udp4" || kind == "udp6" { Some(Ok(q)) } else { None };
        }
        if !matches!(q.address_type, 4 | 6 | -1) {
            return None;
        }
        Some(Ok(q))
    }
}

impl Primary {
    /// Worker `id`'s Node channel is readable.
    pub(super) fn on_node_readable(&mut self, id: u32) {
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.slots.get_mut(&id) else { return };
            if !slot.channel_open {
                return;
            }
            let fd = slot.outbox.fd();
            let Some(node) = slot.node.as_mut() else { return };
            match node.reader.read(fd) {
                Err(e) => return self.channel_lost(id, Some(format!("receive failed: {e}"))),
                Ok(Err(Violation(why))) => return self.drop_worker(id, &why),
                Ok(Ok(Read::WouldBlock)) => return,
                // No kill timer, unlike an rcluster worker: a Node worker that disconnects
                // (process.disconnect()) may live on, as under node:cluster.
                Ok(Ok(Read::Closed)) => return self.channel_lost(id, None),
                Ok(Ok(Read::Data)) => loop {
                    let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.as_mut()) else { return };
                    match node.reader.next_message() {
                        Ok(Some(body)) => self.on_node_message(id, body),
                        Ok(None) => break,
                        Err(Violation(why)) => return self.drop_worker(id, &why),
                    }
                },
            }
        }
    }

    fn on_node_message(&mut self, id: u32, body: Vec<u8>) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if !slot.channel_open {
            return;
        }
        slot.last_heard_ms = sys::monotonic_ms();
        let Some(node) = slot.node.as_mut() else { return };
        let mode = node.reader.mode();
        let value = mode.decode(&body);
        let cmd = value.as_ref().and_then(|v| v.get("cmd")).and_then(Value::as_str);
        log::trace!("worker {id}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
        match cmd {
            Some("NODE_HANDLE_ACK") => self.node_ungate(id),
            Some("NODE_HANDLE_NACK") => {
                // Only a receiver that got the message without its fd says this, which the
                // one-fd-in-flight rule prevents; Node would send it again, the core lets the
                // handoff's own bookkeeping decide (the connection is still held, and its
                // `{accepted}` never comes: it goes back when the worker leaves).
                log::warn!("worker {id}: NODE_HANDLE_NACK (an fd the primary sent did not arrive with its message)");
                self.node_ungate(id);
            }
            Some("NODE_HANDLE") => {
                let fd = node.reader.take_fd();
                let answer = if fd.is_some() { "NODE_HANDLE_ACK" } else { "NODE_HANDLE_NACK" };
                let ack = mode.encode(&json!({ "cmd": answer }));
                match slot.outbox.push_ack(&ack) {
                    Ok(Pushed::Queued { arm: true }) => self.arm_if_queued(id),
                    Ok(_) => {}
                    Err(e) if e.code == Code::Again => return self.drop_worker(id, &e.message),
                    Err(e) => log::debug!("worker {id}: {e}"),
                }
                if let Some(fd) = fd {
                    self.node_forward(id, body, Some(fd));
                }
            }
            Some("NODE_CLUSTER") => {
                let v = value.expect("a cmd was read from it");
                self.on_node_cluster(id, v, body)
            }
            _ => self.node_forward(id, body, None),
        }
    }

    /// The worker took the fd in flight: what waited behind it goes now.
    fn node_ungate(&mut self, id: u32) {
        let Some(slot) = self.slots.get(&id) else { return };
        match slot.outbox.ungate() {
            Ok(f) if !f.empty || f.retry => self.arm_if_queued(id),
            Ok(_) => {}
            Err(e) => self.channel_broken(id, format!("send failed: {e}")),
        }
    }

    /// Hands a message from worker `id` to the host (MESSAGE event), as the worker wrote it.
    fn node_forward(&mut self, id: u32, body: Vec<u8>, fd: Option<OwnedFd>) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.messages_in += 1;
        let mut header = Header::new(Kind::Message);
        header.from = id;
        header.len = body.len() as u64;
        let msg = Incoming { header, payload: Payload::Bytes(body), fds: fd.into_iter().collect() };
        self.route(id, msg);
    }

    fn on_node_cluster(&mut self, id: u32, v: Value, body: Vec<u8>) {
        let seq = v.get("seq").and_then(Value::as_u64);
        if let Some(ack) = v.get("ack").and_then(Value::as_u64) {
            if let Some(accepted) = v.get("accepted").and_then(Value::as_bool) {
                // The answer to a newconn (whose seq is the connection id).
                return self.on_ack(id, accepted, &[ack], Vec::new());
            }
            return self.node_forward(id, body, None);
        }
        match v.get("act").and_then(Value::as_str) {
            Some("online") => self.node_online(id),
            Some("queryServer") => match Query::read(&v) {
                Some(Ok(q)) => self.node_query(id, q),
                Some(Err(why)) => {
                    let key = v.get("key").cloned().unwrap_or(Value::Null);
                    log::warn!("worker {id}: {why}");
                    if let Some(seq) = seq {
                        let reply = json!({"cmd": "NODE_CLUSTER", "errno": -libc::ENOTSUP, "key": key, "ack": seq, "data": null});
                        self.node_send(id, reply, None);
                    }
                }
                None => self.drop_worker(id, "malformed queryServer message"),
            },
            Some("close") => {
                if let Some(key) = v.get("key").and_then(Value::as_str) {
                    if self.node_udp_close(id, key) {
                        return;
                    }
                    if let Some(&index) = self.node_listeners.by_key.get(key) {
                        self.on_unlisten(id, index);
                    }
                }
            }
            Some("exitedAfterDisconnect") => {
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.disconnect_requested = true;
                    slot.state = WorkerState::Disconnecting;
                }
                log::info!("worker {id} is leaving");
                if let Some(seq) = seq {
                    self.node_send(id, json!({"cmd": "NODE_CLUSTER", "ack": seq}), None);
                }
                self.node_forward(id, body, None);
            }
            _ => self.node_forward(id, body, None),
        }
    }

    /// `online`: ONLINE, and READY at once.
    fn node_online(&mut self, id: u32) {
        for kind in [Kind::Hello, Kind::Ready] {
            let frame = Incoming { header: Header::new(kind), payload: Payload::default(), fds: Vec::new() };
            self.on_frame(id, frame);
        }
    }

    /// Sends `msg` (stamped with the next `seq` unless it has one) to worker `id`, with an fd.
    fn node_send(&mut self, id: u32, mut msg: Value, fd: Option<OwnedFd>) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        let Some(node) = slot.node.as_mut() else { return };
        let inner = if msg.get("cmd").and_then(Value::as_str) == Some("NODE_HANDLE") {
            msg.get_mut("msg")
        } else {
            Some(&mut msg)
        };
        if let Some(Value::Object(m)) = inner {
            if !m.contains_key("seq") {
                m.insert("seq".into(), Value::from(node.seq));
                node.seq += 1;
            }
        }
        let body = node.reader.mode().encode(&msg);
        match slot.outbox.push(Frame::node(body, fd, false)) {
            Ok(Pushed::Queued { arm: true }) => self.arm_if_queued(id),
            Ok(_) => {}
            Err(e) if e.code == Code::Closed => {}
            Err(e) => log::warn!("worker {id}: {e}"),
        }
    }

    /// The goodbye a leaving worker gets: Node's `{act: 'disconnect'}` (it closes its
    /// servers, then its channel, and exits when nothing else holds it).
    pub(super) fn node_disconnect(&mut self, id: u32) {
        self.node_send(id, json!({"cmd": "NODE_CLUSTER", "act": "disconnect"}), None);
    }

    /// `queryServer`: bind or share, then answer (round-robin: the address; SCHED_NONE: the
    /// listening socket), or answer the bind's error as a negative errno.
    fn node_query(&mut self, id: u32, q: Query) {
        if self.slots.get(&id).is_none_or(|s| s.disconnect_requested) {
            return; // node:cluster ignores a leaving worker's requests too
        }
        if q.udp.is_some() {
            return self.node_udp(id, q);
        }
        let reply = match self.node_listen(id, &q) {
            Ok(index) => {
                let e = self.listeners.get(index).expect("just found or bound");
                let primary_accepts = self.balance.is_some();
                if primary_accepts {
                    let mut reply =
                        json!({"cmd": "NODE_CLUSTER", "errno": null, "key": q.key, "ack": q.seq, "data": null});
                    if let ListenSpec::Tcp { addr, .. } = &e.listener.spec {
                        let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
                        reply["sockname"] =
                            json!({"address": addr.ip().to_string(), "family": family, "port": e.listener.port});
                    }
                    (reply, None)
                } else {
                    match sys::dup_cloexec(&e.listener.fd) {
                        Ok(fd) => {
                            let msg =
                                json!({"cmd": "NODE_CLUSTER", "errno": 0, "key": q.key, "ack": q.seq, "data": null});
                            (json!({"cmd": "NODE_HANDLE", "type": "net.Native", "msg": msg}), Some(fd))
                        }
                        Err(err) => {
                            let errno = -std::io::Error::from(err).raw_os_error().unwrap_or(libc::EMFILE);
                            (
                                json!({"cmd": "NODE_CLUSTER", "errno": errno, "key": q.key, "ack": q.seq, "data": null}),
                                None,
                            )
                        }
                    }
                }
            }
            Err(errno) => {
                (json!({"cmd": "NODE_CLUSTER", "errno": -errno, "key": q.key, "ack": q.seq, "data": null}), None)
            }
        };
        self.node_send(id, reply.0, reply.1);
    }

    /// A dgram `bind()` in worker `id`: the shared socket for its key (bound on the first
    /// request), sent as a `dgram.Native` handle, or the bind's error.
    fn node_udp(&mut self, id: u32, q: Query) {
        let fail =
            |errno: i32| json!({"cmd": "NODE_CLUSTER", "errno": -errno, "key": q.key, "ack": q.seq, "data": null});
        if self.phase != Phase::Running {
            return self.node_send(id, fail(libc::ECANCELED), None);
        }
        let fd = match self.node_listeners.udp.get_mut(&q.key) {
            Some((fd, members)) => {
                members.insert(id);
                sys::dup_cloexec(&*fd).map_err(|e| std::io::Error::from(e).raw_os_error().unwrap_or(libc::EMFILE))
            }
            None => match bind_udp(&q) {
                Ok(fd) => {
                    let dup = sys::dup_cloexec(&fd)
                        .map_err(|e| std::io::Error::from(e).raw_os_error().unwrap_or(libc::EMFILE));
                    self.node_listeners.udp.insert(q.key.clone(), (fd, BTreeSet::from([id])));
                    dup
                }
                Err(errno) => Err(errno),
            },
        };
        match fd {
            Ok(fd) => {
                let msg = json!({"cmd": "NODE_CLUSTER", "errno": 0, "key": q.key, "ack": q.seq, "data": null});
                self.node_send(id, json!({"cmd": "NODE_HANDLE", "type": "dgram.Native", "msg": msg}), Some(fd));
            }
            Err(errno) => self.node_send(id, fail(errno), None),
        }
    }

    /// Worker `id` no longer holds the dgram socket `key`: the last one closes it.
    fn node_udp_close(&mut self, id: u32, key: &str) -> bool {
        let Some((_, members)) = self.node_listeners.udp.get_mut(key) else { return false };
        members.remove(&id);
        if members.is_empty() {
            self.node_listeners.udp.remove(key);
        }
        true
    }

    /// Worker `id`'s channel is gone: it holds no dgram socket any more.
    pub(super) fn node_forget(&mut self, id: u32) {
        self.node_listeners.udp.retain(|_, (_, members)| {
            members.remove(&id);
            !members.is_empty()
        });
    }

    /// The listener for `q`, worker `id` added to it; Err(errno) as node:cluster reports it.
    fn node_listen(&mut self, id: u32, q: &Query) -> Result<u32, i32> {
        if self.phase != Phase::Running {
            return Err(libc::ECANCELED);
        }
        if let Some(&index) = self.node_listeners.by_key.get(&q.key) {
            if let Some(m) = self.listeners.get_mut(index).and_then(|e| e.members.as_mut()) {
                m.insert(id);
                return Ok(index);
            }
        }
        let held = self.listeners.iter().filter(|(_, e)| e.members.as_ref().is_some_and(|m| m.contains(&id))).count();
        if held >= MAX_PER_WORKER {
            return Err(libc::EMFILE);
        }
        let bound = if q.address_type == -1 {
            let path = q.address.clone().ok_or(libc::EINVAL)?;
            // The ~108-byte limit of socket paths: bind through the path relative to our
            // directory when that is shorter, as node:cluster does.
            let path = match std::env::current_dir().ok().and_then(|d| relative_to(&d, std::path::Path::new(&path))) {
                Some(rel) if rel.as_os_str().len() < path.len() => rel.to_string_lossy().into_owned(),
                _ => path,
            };
            let mode = match (q.readable_all, q.writable_all) {
                (false, false) => None,
                (r, w) => Some(0o600 | if r { 0o044 } else { 0 } | if w { 0o022 } else { 0 }),
            };
            listener::bind(&ListenSpec::Unix { path: path.into(), mode }, self.cfg.backlog, false)
        } else {
            let port = u16::try_from(q.port).map_err(|_| libc::EINVAL)?;
            let v6only = q.flags & UV_TCP_IPV6ONLY != 0;
            let backlog = q.backlog.unwrap_or(self.cfg.backlog);
            match q.address.as_deref() {
                // No address: both stacks if IPv6 is there, else IPv4 (as node:cluster does).
                None => bind_tcp((std::net::Ipv6Addr::UNSPECIFIED, port).into(), false, backlog)
                    .or_else(|_| bind_tcp((std::net::Ipv4Addr::UNSPECIFIED, port).into(), false, backlog)),
                Some(a) => {
                    let ip: std::net::IpAddr = a.parse().map_err(|_| libc::EINVAL)?;
                    bind_tcp((ip, port).into(), v6only, backlog)
                }
            }
        };
        let bound = bound.map_err(|e| {
            log::warn!("worker {id}: listen: {}", e.message);
            e.os.unwrap_or(libc::EINVAL)
        })?;
        self.handoff_listener_added();
        let index = self.listeners.insert(bound, None, Some(BTreeSet::from([id]))).map_err(|_| libc::EMFILE)?;
        if let Some(old) = self.node_listeners.by_key.insert(q.key.clone(), index) {
            self.node_listeners.key_of.remove(&old);
        }
        self.node_listeners.key_of.insert(index, q.key.clone());
        log::info!(
            "worker {id} listens on {} (listener {index})",
            self.listeners.get(index).map_or("", |e| &e.address)
        );
        Ok(index)
    }

    /// Hands `conns` to Node worker `id`: one `newconn` each, with the connection as a
    /// non-blocking `net.Native` handle (libuv does not make a received fd non-blocking). The
    /// primary keeps its copy until the worker's `{accepted}`.
    pub(super) fn send_node_conns(&mut self, id: u32, conns: Vec<Conn>) {
        let mut conns = conns.into_iter();
        while let Some(c) = conns.next() {
            let Some(owned) = c.fd.as_ref() else { continue };
            if let Err(e) = sys::set_nonblocking(owned, true) {
                log::warn!("connection {}: {e}", c.id);
            }
            let fd = owned.as_raw_fd();
            let key = self.node_listeners.key_of.get(&c.listener).cloned().unwrap_or_default();
            let Some(mode) = self.slots.get(&id).and_then(|s| s.node.as_ref()).map(|n| n.reader.mode()) else { return };
            let msg = json!({"cmd": "NODE_HANDLE", "type": "net.Native",
                "msg": {"cmd": "NODE_CLUSTER", "act": "newconn", "key": key, "seq": c.id}});
            let conn = c.id;
            self.handoff.sent(id, c);
            // SAFETY: the connection stays in `handoff` with its fd at least until `push`
            // returns; a frame that has to wait in the queue takes a duplicate first.
            let frame = unsafe { Frame::node_borrowed(mode.encode(&msg), fd) };
            let Some(slot) = self.slots.get(&id) else { return };
            match slot.outbox.push(frame) {
                Ok(Pushed::Queued { arm: true }) => self.arm_if_queued(id),
                Ok(_) => {}
                Err(e) if e.code == Code::Closed => {
                    // It comes back through channel_lost (the primary holds its copy).
                    for rest in conns.rev() {
                        self.unsend_waiting(id, rest);
                    }
                    return self.channel_broken(id, e.message);
                }
                Err(e) => {
                    log::error!("handing connection {conn} to worker {id}: {}", e.message);
                    if self.handoff.unsend(id, conn) {
                        if let Some(slot) = self.slots.get_mut(&id) {
                            slot.unacked = slot.unacked.saturating_sub(1);
                        }
                    }
                    for rest in conns.rev() {
                        self.unsend_waiting(id, rest);
                    }
                    if e.code == Code::Again {
                        self.send_refused_for_now(id);
                    }
                    return;
                }
            }
        }
    }

    /// A connection picked for worker `id` and not sent: back to the front of the queue.
    fn unsend_waiting(&mut self, id: u32, conn: Conn) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.unacked = slot.unacked.saturating_sub(1);
        }
        self.handoff.waiting.push_front(conn);
    }
}

/// `path` relative to `dir` (both absolute), with `..` as needed.
fn relative_to(dir: &std::path::Path, path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::path::Component;
    if !path.is_absolute() {
        return None;
    }
    let a: Vec<Component> = dir.components().collect();
    let b: Vec<Component> = path.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str());
    }
    Some(out)
}

/// A TCP listener as Node's `server.listen()` makes one: SO_REUSEADDR, and an IPv6 socket
/// takes IPv4 too unless `v6only` (Node's `ipv6Only`).
fn bind_tcp(addr: std::net::SocketAddr, v6only: bool, backlog: i32) -> crate::error::Result<listener::Listener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};
    let what = |call: &str| format!("{call} {addr}");
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| crate::error::Error::sys(what("socket"), e))?;
    let fd = sys::above_stdio(fd).map_err(|e| crate::error::Error::sys(what("fcntl"), e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| crate::error::Error::sys(what("setsockopt"), e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)
            .map_err(|e| crate::error::Error::sys(what("setsockopt(IPV6_V6ONLY)"), e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| crate::error::Error::sys(what("bind"), e))?;
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    socket::listen(&fd, backlog).map_err(|e| crate::error::Error::sys(what("listen"), e))?;
    let port = listener::bound_port(&fd).map_err(|e| crate::error::Error::sys(what("getsockname"), e))?;
    Ok(listener::Listener { fd, spec: ListenSpec::Tcp { host: addr.ip().to_string(), addr }, port, unix_inode: None })
}

/// libuv's `UV_UDP_IPV6ONLY` and `UV_UDP_REUSEADDR` flags in a dgram `queryServer`.
const UV_UDP_IPV6ONLY: u64 = 1;
const UV_UDP_REUSEADDR: u64 = 4;

/// A dgram socket as Node's `bind()` makes one in node:cluster's primary; Err(errno).
fn bind_udp(q: &Query) -> Result<OwnedFd, i32> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let v6 = q.udp.as_deref() == Some("udp6");
    let ip: std::net::IpAddr = match q.address.as_deref() {
        Some(a) => a.parse().map_err(|_| libc::EINVAL)?,
        None if v6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        None => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let port = u16::try_from(q.port).map_err(|_| libc::EINVAL)?;
    let errno = |e: nix::errno::Errno| e as i32;
    let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(errno)?;
    let fd = sys::above_stdio(fd).map_err(errno)?;
    if q.flags & UV_UDP_REUSEADDR != 0 {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(errno)?;
    }
    if ip.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &(q.flags & UV_UDP_IPV6ONLY != 0)).map_err(errno)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(std::net::SocketAddr::new(ip, port))).map_err(errno)?;
    Ok(fd)
}
