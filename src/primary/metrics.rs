//! The primary's metrics endpoint (`cluster_config_set_metrics`): Prometheus text on
//! `/metrics` and a health check on `/healthz`, served from the primary's own loop.
//!
//! Why on the loop and not on a thread: a FORK-mode primary must stay single-threaded to
//! fork, and the numbers live in the loop's state. So the server is small and never blocks:
//! non-blocking sockets, at most `MAX_CONNS` scrapes at a time (past that a new one takes the
//! place of the oldest that has not sent its request yet, or waits in the kernel backlog while
//! all are being answered), a request head of at most `MAX_REQUEST`
//! bytes parsed by `httparse`, one response per connection (`Connection: close`), and
//! `DEADLINE_MS` for the whole exchange.
//!
//! `/healthz` is what a load balancer or a Kubernetes readiness probe asks: 200 while the
//! cluster runs with at least `healthy_workers` workers READY, 503 otherwise, and 503 from the
//! moment a shutdown starts, so the host is taken out of rotation before it stops.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::event_loop::{Source, TimerId};
use crate::sys;

use super::workers::WorkerState;
use super::{Phase, Primary, Timer};

/// A per-worker metric: name, type, help, and its value for a worker at a time (ms).
type PerWorker = (&'static str, &'static str, &'static str, fn(&super::workers::Slot, u64) -> u64);

/// Scrapes served at once.
const MAX_CONNS: usize = 32;
/// The longest request head read (a scraper's GET is a few hundred bytes).
const MAX_REQUEST: usize = 8192;
/// The time a scrape may take, from accept to the last byte written.
const DEADLINE_MS: u64 = 5_000;
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// One scrape in progress.
struct Scrape {
    stream: TcpStream,
    /// The request head read so far.
    request: Vec<u8>,
    /// The response, once the request is complete, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
    timer: TimerId,
}

/// The listening socket and the scrapes in progress.
pub struct MetricsServer {
    listener: TcpListener,
    /// Its address (port 0 resolved).
    pub addr: SocketAddr,
    scrapes: BTreeMap<u32, Scrape>,
    next: u32,
    polled: bool,
}

impl MetricsServer {
    /// Binds `addr` (non-blocking, close-on-exec as std makes every socket).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::sys(format!("bind metrics {addr}"), e))?;
        listener.set_nonblocking(true).map_err(|e| Error::sys(format!("metrics {addr}: O_NONBLOCK"), e))?;
        let addr = listener.local_addr().map_err(|e| Error::sys(format!("metrics {addr}: getsockname"), e))?;
        Ok(MetricsServer { listener, addr, scrapes: BTreeMap::new(), next: 0, polled: false })
    }
}

/// A status line and body as a whole `Connection: close` response (`head`: no body, as HEAD
/// asks, with the body's length).
fn response(status: &str, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

impl Primary {
    /// Starts polling the metrics listener (at start, and whenever a scrape slot frees).
    pub(super) fn metrics_poll(&mut self) {
        let Some(m) = self.metrics.as_mut() else { return };
        let want = m.scrapes.len() < MAX_CONNS || m.scrapes.values().any(|s| s.response.is_none());
        if want == m.polled {
            return;
        }
        let fd = m.listener.as_fd();
        if !want {
            self.reactor.remove(fd);
            m.polled = false;
            return;
        }
        match self.reactor.add(fd, Source::Metrics(0), true, false) {
            Ok(()) => m.polled = true,
            Err(e) => log::error!("metrics {}: {e}", m.addr),
        }
    }

    /// Readiness of the metrics listener (`id` 0) or of scrape `id`.
    pub(super) fn on_metrics(&mut self, id: u32) {
        if id == 0 {
            self.metrics_accept();
        } else {
            self.metrics_serve(id);
        }
    }

    fn metrics_accept(&mut self) {
        loop {
            // Full: the oldest scrape that has not even sent its request makes room (clients
            // that connect and say nothing must not keep a health check waiting); when every
            // one is being answered, the rest wait in the backlog.
            let full = self.metrics.as_ref().is_some_and(|m| m.scrapes.len() >= MAX_CONNS);
            if full {
                let idle = self
                    .metrics
                    .as_ref()
                    .and_then(|m| m.scrapes.iter().find(|(_, s)| s.response.is_none()).map(|(id, _)| *id));
                match idle {
                    Some(id) => self.metrics_close(id),
                    None => break,
                }
            }
            if !self.metrics_accept_one() {
                break;
            }
        }
        self.metrics_poll();
    }

    /// Accepts one scrape; false when none waits (or accepting failed).
    fn metrics_accept_one(&mut self) -> bool {
        let Some(m) = self.metrics.as_mut() else { return false };
        {
            let stream = match m.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) => {
                    log::warn!("metrics {}: accept: {e}", m.addr);
                    return false;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                return true;
            }
            m.next = m.next.wrapping_add(1).max(1);
            let id = m.next;
            if let Err(e) = self.reactor.add(&stream, Source::Metrics(id), true, false) {
                log::warn!("metrics: {e}");
                return true;
            }
            let timer = self.reactor.add_timer(sys::monotonic_ms() + DEADLINE_MS, Timer::Metrics(id));
            m.scrapes.insert(id, Scrape { stream, request: Vec::new(), response: None, timer });
        }
        true
    }

    /// Reads the request of scrape `id` until its head is complete, then writes the answer;
    /// closes it when done or broken.
    fn metrics_serve(&mut self, id: u32) {
        if self.metrics.as_ref().is_none_or(|m| !m.scrapes.contains_key(&id)) {
            return;
        }
        let needs_answer = self.metrics_read(id);
        if let Some(Some((method, path))) = needs_answer {
            let answer = self.metrics_answer(&method, &path);
            if let Some(s) = self.metrics.as_mut().and_then(|m| m.scrapes.get_mut(&id)) {
                s.response = Some((answer, 0));
            }
        } else if needs_answer.is_none() {
            return self.metrics_close(id);
        }
        self.metrics_write(id);
    }

    /// Reads what there is: Some(Some(request)) once the head is complete, Some(None) while it
    /// is not (or the answer is being written), None when the scrape is over (EOF, error).
    /// A head that cannot be parsed gets its error response here.
    fn metrics_read(&mut self, id: u32) -> Option<Option<(String, String)>> {
        let s = self.metrics.as_mut()?.scrapes.get_mut(&id)?;
        if s.response.is_some() {
            return Some(None);
        }
        let mut chunk = [0u8; 2048];
        loop {
            match s.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    s.request.extend_from_slice(&chunk[..n]);
                    if s.request.len() > MAX_REQUEST {
                        let body = "request header fields too large\n";
                        s.response =
                            Some((response("431 Request Header Fields Too Large", "text/plain", body, false), 0));
                        return Some(None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&s.request) {
            Ok(httparse::Status::Complete(_)) => {
                Some(Some((req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string())))
            }
            Ok(httparse::Status::Partial) => Some(None),
            Err(e) => {
                let status = if e == httparse::Error::TooManyHeaders {
                    "431 Request Header Fields Too Large"
                } else {
                    "400 Bad Request"
                };
                s.response = Some((response(status, "text/plain", &format!("{e}\n"), false), 0));
                Some(None)
            }
        }
    }

    /// The response to `method path`.
    fn metrics_answer(&self, method: &str, path: &str) -> Vec<u8> {
        let head = method == "HEAD";
        if method != "GET" && !head {
            return response("405 Method Not Allowed", "text/plain", "GET or HEAD\n", false);
        }
        let path = path.split('?').next().unwrap_or("");
        match path {
            "/metrics" => response("200 OK", "text/plain; version=0.0.4", &self.prometheus(), head),
            "/healthz" => {
                let (healthy, why) = self.health();
                let status = if healthy { "200 OK" } else { "503 Service Unavailable" };
                response(status, "text/plain", &format!("{why}\n"), head)
            }
            _ => response("404 Not Found", "text/plain", "/metrics or /healthz\n", head),
        }
    }

    /// Writes what the socket takes; closes the scrape once all is written or on error.
    fn metrics_write(&mut self, id: u32) {
        let Some(s) = self.metrics.as_mut().and_then(|m| m.scrapes.get_mut(&id)) else { return };
        let Some((out, written)) = s.response.as_mut() else { return };
        while *written < out.len() {
            match s.stream.write(&out[*written..]) {
                Ok(0) => return self.metrics_close(id),
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let fd = s.stream.as_fd();
                    if let Err(e) = self.reactor.modify(fd, Source::Metrics(id), false, true) {
                        log::warn!("metrics: {e}");
                        return self.metrics_close(id);
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.metrics_close(id),
            }
        }
        self.metrics_close(id);
    }

    /// Scrape `id` took longer than `DEADLINE_MS`: closed.
    pub(super) fn metrics_timeout(&mut self, id: u32) {
        if let Some(m) = self.metrics.as_ref() {
            if m.scrapes.contains_key(&id) {
                log::debug!("metrics {}: a scrape took over {DEADLINE_MS} ms: closed", m.addr);
            }
        }
        self.metrics_close(id);
    }

    fn metrics_close(&mut self, id: u32) {
        let Some(m) = self.metrics.as_mut() else { return };
        if let Some(s) = m.scrapes.remove(&id) {
            self.reactor.remove(&s.stream);
            self.reactor.cancel_timer(s.timer);
        }
        self.metrics_poll();
    }

    /// Whether the cluster is healthy for `/healthz`, and the sentence that says why.
    fn health(&self) -> (bool, String) {
        let ready = self
            .slots
            .values()
            .filter(|s| s.state == WorkerState::Ready && s.channel_open && !s.disconnect_requested)
            .count();
        let need = self.cfg.healthy_workers as usize;
        if let (Phase::Running, Some(_)) = (self.phase, self.drain_pending) {
            return (false, "draining: a shutdown was asked".to_string());
        }
        match self.phase {
            Phase::Running if ready >= need => (true, format!("ok: {ready} workers ready (need {need})")),
            Phase::Running => (false, format!("not ready: {ready} workers ready, need {need}")),
            _ => (false, "shutting down".to_string()),
        }
    }

    /// The stats as Prometheus text (exposition format 0.0.4).
    pub fn prometheus(&self) -> String {
        let now = sys::monotonic_ms();
        let mut out = String::with_capacity(512 + self.slots.len() * 600);
        let metric = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP rcluster_{name} {help}\n# TYPE rcluster_{name} {kind}");
        };
        metric(&mut out, "workers", "gauge", "Workers by state.");
        for (state, name) in [
            (WorkerState::Starting, "starting"),
            (WorkerState::Online, "online"),
            (WorkerState::Ready, "ready"),
            (WorkerState::Disconnecting, "disconnecting"),
        ] {
            let n = self.slots.values().filter(|s| s.state == state).count();
            let _ = writeln!(out, "rcluster_workers{{state=\"{name}\"}} {n}");
        }
        let per_worker: [PerWorker; 6] = [
            ("worker_connections_total", "counter", "Connections handed to the worker and acknowledged.", |s, _| {
                s.connections
            }),
            ("worker_in_flight", "gauge", "Connections handed to the worker, not acknowledged yet.", |s, _| {
                u64::from(s.unacked)
            }),
            ("worker_messages_in_total", "counter", "Messages the worker sent.", |s, _| s.messages_in),
            ("worker_messages_out_total", "counter", "Messages sent to the worker.", |s, _| s.outbox.messages_sent()),
            ("worker_queue_frames", "gauge", "Frames waiting in the primary's queue to the worker.", |s, _| {
                s.outbox.queued() as u64
            }),
            ("worker_uptime_seconds", "gauge", "Seconds since the worker started.", |s, now| {
                now.saturating_sub(s.started_mono_ms) / 1000
            }),
        ];
        for (name, kind, help, value) in per_worker {
            metric(&mut out, name, kind, help);
            for s in self.slots.values() {
                let _ = writeln!(out, "rcluster_{name}{{worker=\"{}\",slot=\"{}\"}} {}", s.id, s.slot, value(s, now));
            }
        }
        metric(&mut out, "slot_restarts_total", "counter", "Workers restarted in the slot.");
        for (slot, h) in &self.histories {
            let _ = writeln!(out, "rcluster_slot_restarts_total{{slot=\"{slot}\"}} {}", h.restarts);
        }
        metric(&mut out, "slot_given_up", "gauge", "1 when the slot crash-looped and is not restarted.");
        for (slot, h) in &self.histories {
            let _ = writeln!(out, "rcluster_slot_given_up{{slot=\"{slot}\"}} {}", u8::from(h.given_up));
        }
        let totals: [(&str, &str, &str, u64); 6] = [
            (
                "connections_waiting",
                "gauge",
                "Accepted connections waiting for a worker.",
                self.handoff.waiting.len() as u64,
            ),
            ("connections_dropped_total", "counter", "Accepted connections closed unanswered.", self.handoff.dropped),
            ("accept_pauses_total", "counter", "Times accepting paused for lack of fds.", self.accept_pauses),
            ("send_retries_total", "counter", "Sends to workers retried for lack of kernel memory.", self.send_retries),
            ("listeners", "gauge", "Listening sockets the primary holds.", self.listeners.len() as u64),
            (
                "uptime_seconds",
                "gauge",
                "Seconds since the primary started.",
                now.saturating_sub(self.started_ms) / 1000,
            ),
        ];
        for (name, kind, help, value) in totals {
            metric(&mut out, name, kind, help);
            let _ = writeln!(out, "rcluster_{name} {value}");
        }
        let (healthy, _) = self.health();
        metric(&mut out, "healthy", "gauge", "1 while /healthz answers 200.");
        let _ = writeln!(out, "rcluster_healthy {}", u8::from(healthy));
        out
    }
}
