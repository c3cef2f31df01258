"""HTTP/1.1 connections for rcluster-serve: requests parsed by httptools (llhttp, the parser of
Node.js and uvicorn), responses framed here (Content-Length, chunked, or close-delimited for
HTTP/1.0), keep-alive and pipelining (requests on one connection are answered in order, one at
a time), ``Expect: 100-continue``, limits on the request line, headers and body (4xx answers),
and the timers (idle keep-alive, request read).

One ``HttpConnection`` (an asyncio protocol) per client connection; the interface adapter
(``_wsgi``/``_asgi``) is the ``Server.handler`` coroutine that answers one ``Request``
through a ``ResponseWriter``. Nothing here blocks the event loop, so an idle or slow client
costs a socket and a timer, never a worker.
"""

from __future__ import annotations

import asyncio
import http
import sys
import time
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple

import httptools

Headers = List[Tuple[bytes, bytes]]

SERVER_NAME = b"rcluster"
#: Reason phrases for status codes (ASGI gives the number only).
REASONS: Dict[int, bytes] = {s.value: s.phrase.encode("latin-1") for s in http.HTTPStatus}
#: Responses that never carry a body (RFC 9110 6.4.1).
NO_BODY = frozenset({204, 304})
#: How often the connections' timers are looked at (seconds).
SWEEP_S = 0.25
#: How many parsed requests may wait behind the one being answered before reading pauses.
MAX_PIPELINE = 16


class Limits:
    """Request limits and timers (the options of the same names, seconds and bytes)."""

    def __init__(
        self,
        keep_alive: float = 5.0,
        read_timeout: float = 30.0,
        max_line: int = 8190,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_body: int = 64 * 1024 * 1024,
    ) -> None:
        self.keep_alive = keep_alive
        self.read_timeout = read_timeout
        self.max_line = max_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body


class Server:
    """What every connection of this worker shares: the handler, the limits, the set of open
    connections (for the graceful stop), the access log and the cached Date header."""

    def __init__(
        self,
        handler: Callable[["HttpConnection", "Request"], Awaitable[None]],
        limits: Limits,
        access_log: bool = False,
        on_closed: Optional[Callable[[], None]] = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.access_log = access_log
        self.on_closed = on_closed
        self.connections: Set["HttpConnection"] = set()
        self.pending = 0  # connections handed to this worker, not yet made (connection_made)
        self.stopping = False
        self._date_sec = -1
        self._date = b""
        self._sweep: Optional[asyncio.TimerHandle] = None

    def start_timers(self) -> None:
        """Starts the sweep that fires the connections' timers (every SWEEP_S: timeouts are
        honoured to within that)."""
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            now = loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)
            self._sweep = loop.call_later(SWEEP_S, sweep)

        self._sweep = loop.call_later(SWEEP_S, sweep)

    def stop_timers(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def date(self) -> bytes:
        """The Date header's value, computed once a second."""
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode("latin-1")
        return self._date

    def stop(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their current response
        (which says ``Connection: close``)."""
        self.stopping = True
        for conn in list(self.connections):
            conn.close_if_idle()

    async def wait_closed(self, timeout: float) -> None:
        """Waits (at most `timeout` s) until every connection closed, then closes the rest."""
        deadline = time.monotonic() + timeout
        while (self.connections or self.pending) and time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()


class Request:
    """One parsed request: head, body (buffered as it arrives), and whether it is complete."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "expect_continue",
        "chunks",
        "body_size",
        "complete",
        "_waiters",
        "started",
    )

    def __init__(self, method: bytes, target: bytes, version: str, headers: Headers, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version  # "1.1" or "1.0"
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = False
        self.chunks: List[bytes] = []
        self.body_size = 0
        self.complete = False
        self._waiters: Optional[List["asyncio.Future[None]"]] = None  # (an app may wait in several tasks)
        self.started = time.monotonic()

    def wake(self) -> None:
        """Ends a ``wait()`` (the response is complete)."""
        self._wake()

    def _wake(self) -> None:
        ws = self._waiters
        if ws:
            self._waiters = None
            for w in ws:
                if not w.done():
                    w.set_result(None)

    async def wait_body(self) -> None:
        """Waits until more body arrived, the body is complete, or the connection closed."""
        if self.chunks or self.complete:
            return
        await self.wait()

    async def wait(self) -> None:
        """Waits for the next change: more body, its end, the connection's end, or ``wake()``."""
        fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [fut]
        else:
            self._waiters.append(fut)
        await fut

    def take(self) -> bytes:
        """The body bytes buffered so far (and forgets them)."""
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class HTTPError(Exception):
    """A request the server answers itself with `status` and closes."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module doc)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.opened = time.monotonic()
        self.fresh = True  # no request began yet
        self.peer: Any = None
        self.sockname: Any = None
        self.scope_base: Optional[Dict[str, Any]] = None  # the per-connection part of an environ/scope
        # parsing
        self._in_head = False
        self._head_bytes = 0
        self._url = b""
        self._headers: Headers = []
        self._parsing: Optional[Request] = None
        self._error: Optional[HTTPError] = None
        # answering
        self.queue: Deque[Request] = deque()
        self.busy = False
        self._paused_reading = False
        self._write_paused = False
        self._drain: Optional["asyncio.Future[None]"] = None
        # The connection's one timer, as a deadline (loop time; 0: none) that Server's sweep
        # checks: cheaper than an asyncio timer set and cancelled for every request.
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] = self.close

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.pending -= 1
        self.server.connections.add(self)
        self.peer = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        # (asyncio and uvloop set TCP_NODELAY on TCP transports themselves)
        # (while the worker stops, a connection handed to it before the stop is still served:
        # its first request is answered with Connection: close)
        self._set_timer(self.limits.read_timeout, self._on_read_timeout)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        if self._parsing is not None:  # a body on its way: the read timeout counts silence
            self._deadline = self.loop.time() + self.limits.read_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade (websocket, h2c) this server does not do: answered as a plain request
            # once parsed; anything after the head is not HTTP/1.1 and is ignored.
            pass
        except httptools.HttpParserError as e:
            err = self._error or HTTPError(400, f"malformed request: {e}")
            self._error = None
            self._fail(err)
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._fail(HTTPError(431, "request head too large"))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._cancel_timer()
        for req in ([self._parsing] if self._parsing else []) + list(self.queue):
            req._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.server.on_closed is not None:
            self.server.on_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def eof_received(self) -> Optional[bool]:
        # The client's end (FIN) is taken as its going away, half-close or not: that is how an
        # ASGI app hears http.disconnect (as with uvicorn). The transport closes.
        return False

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self.fresh = False
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        if not self.busy:
            self._set_timer(self.limits.read_timeout, self._on_read_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_line:
            self._error = HTTPError(414, "request target too long")
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        if len(self._headers) > self.limits.max_headers:
            self._error = HTTPError(431, "too many header fields")
            raise self._error
        if len(name) + len(value) > self.limits.max_line:
            self._error = HTTPError(431, "header field too large")
            raise self._error

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self.parser
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            self._error = HTTPError(505, "only HTTP/1.0 and HTTP/1.1")
            raise self._error
        # (an Upgrade this server does not do is answered as a plain request, then closed:
        # what follows its head is not HTTP/1.1)
        req = Request(p.get_method(), self._url, version, self._headers, p.should_keep_alive() and not p.should_upgrade())
        for name, value in req.headers:
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = -1
                if n > self.limits.max_body:
                    self._error = HTTPError(413, "request body too large")
                    raise self._error
            elif name == b"expect" and value.lower() == b"100-continue" and version == "1.1":
                req.expect_continue = True
        self._parsing = req
        self._set_timer(self.limits.read_timeout, self._on_read_timeout)
        self.queue.append(req)
        if not self.busy:
            self._start_next()
        elif len(self.queue) > MAX_PIPELINE:
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is None:
            return
        req.body_size += len(body)
        if req.body_size > self.limits.max_body:
            self._error = HTTPError(413, "request body too large")
            raise self._error
        req.chunks.append(body)
        req._wake()

    def on_message_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        if req is not None:
            req.complete = True
            req._wake()
        if self.busy or self.queue:
            self._cancel_timer()  # (the keep-alive timer starts when the answers are done)

    # ---- answering ----

    def _start_next(self) -> None:
        req = self.queue[0]
        self.busy = True
        if req.complete:
            self._cancel_timer()
        task = self.loop.create_task(self.server.handler(self, req))
        task.add_done_callback(self._on_done)

    def _on_done(self, task: "asyncio.Task[None]") -> None:
        req = self.queue.popleft() if self.queue else None
        self.busy = False
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            print(f"rcluster-serve: request handler failed: {exc!r}", file=sys.stderr)
            self.abort()
            return
        if self.closed:
            return
        if req is None or not req.keep_alive or self.server.stopping or not req.complete:
            # An unread body (the app did not read it) leaves no way to find the next request.
            self.close()
            return
        if self.queue:
            self._start_next()
        elif self._in_head or self._parsing is not None:  # the next request is on its way
            self._set_timer(self.limits.read_timeout, self._on_read_timeout)
        else:
            self._set_timer(self.limits.keep_alive, self.close_if_idle)
        if self._paused_reading and len(self.queue) <= MAX_PIPELINE // 2:
            self._paused_reading = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def send_continue(self, req: Request) -> None:
        """Says ``100 Continue`` to a client that waits for it (once, before the body is read)."""
        if req.expect_continue and not req.complete and not self.closed:
            req.expect_continue = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Waits while the client is slow to read what was written (flow control)."""
        if self._write_paused and not self.closed:
            if self._drain is None:
                self._drain = self.loop.create_future()
            await self._drain

    # ---- closing, timers, errors ----

    def _fail(self, err: HTTPError) -> None:
        """Answers a request the parser rejected, then closes."""
        self._in_head = False
        if not self.busy:
            body = f"{err.status} {REASONS.get(err.status, b'').decode()}: {err}\n".encode()
            self.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                b"Connection: close\r\nDate: %s\r\nServer: %s\r\n\r\n%s"
                % (err.status, REASONS.get(err.status, b""), len(body), self.server.date(), SERVER_NAME, body)
            )
        self.close()

    def _on_read_timeout(self) -> None:
        if self._in_head or self._parsing is not None:
            if self.busy:
                self.close()  # the app waits for a body that stopped coming: it sees the close
            else:
                self._fail(HTTPError(408, "request not received in time"))
        elif not self.busy:
            self.close()

    def _set_timer(self, delay: float, fn: Callable[[], None]) -> None:
        self._deadline = self.loop.time() + delay
        self._on_deadline = fn

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    def check_deadline(self, now: float) -> None:
        """Runs the timer's action when its deadline passed (Server's sweep)."""
        if self._deadline and now >= self._deadline:
            self._deadline = 0.0
            self._on_deadline()

    def close_if_idle(self) -> None:
        """Closes the connection when it has no request in progress (a new connection gets a
        second to send its first request: it was handed to this worker to be served)."""
        if self.busy or self.queue or self._in_head:
            return
        if self.fresh and time.monotonic() - self.opened < 1.0:
            return
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._cancel_timer()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self._cancel_timer()
            self.transport.abort()


class ResponseWriter:
    """Frames one response: the head (status line, headers, Date, Server, the framing headers)
    then the body, by Content-Length when the app gave one (or when the whole body is known
    at the head), chunked for HTTP/1.1 otherwise, ended by closing for HTTP/1.0."""

    __slots__ = ("conn", "req", "head_sent", "chunked", "remaining", "no_body", "status", "sent", "done")

    def __init__(self, conn: HttpConnection, req: Request) -> None:
        self.conn = conn
        self.req = req
        self.head_sent = False
        self.chunked = False
        self.remaining = -1  # bytes left of a Content-Length body; -1: no Content-Length
        self.no_body = req.method == b"HEAD"
        self.status = 0
        self.sent = 0
        self.done = False

    def start(self, status: int, status_line: Optional[bytes], headers: Headers, body: bytes, end: bool) -> None:
        """Writes the head with the first part of the body (`end`: it is all of it).
        `status_line`: ``b"200 OK"`` as the app spelled it (WSGI), or None (from `status`)."""
        req = self.req
        conn = self.conn
        self.status = status
        no_body = self.no_body or status in NO_BODY or 100 <= status < 200
        self.no_body = no_body
        keep = req.keep_alive and not conn.server.stopping
        out = [b"HTTP/%s %s\r\n" % (req.version.encode(), status_line or b"%d %s" % (status, REASONS.get(status, b"")))]
        length = -1
        has_date = has_server = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    pass
                continue  # (written below, once)
            elif low == b"connection":
                if b"close" in value.lower():
                    keep = False
                continue
            elif low in (b"transfer-encoding", b"keep-alive"):
                continue  # framing is the server's
            elif low == b"date":
                has_date = True
            elif low == b"server":
                has_server = True
            out.append(b"%s: %s\r\n" % (name, value))
        if not has_date:
            out.append(b"Date: %s\r\n" % conn.server.date())
        if not has_server:
            out.append(b"Server: %s\r\n" % SERVER_NAME)
        if length >= 0:
            out.append(b"Content-Length: %d\r\n" % length)
            self.remaining = length
        elif status in NO_BODY or status < 200:
            pass
        elif end:  # (HEAD too: the length of the body the app made, which is not sent)
            out.append(b"Content-Length: %d\r\n" % len(body))
            self.remaining = len(body)
        elif no_body:
            pass  # HEAD of a streamed body: its length is not known
        elif req.version == "1.1":
            out.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked = True
        else:
            keep = False  # HTTP/1.0 and no length: the body ends when the connection does
        if not keep:
            req.keep_alive = False
            out.append(b"Connection: close\r\n")
        elif req.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.head_sent = True
        self.body(body, end, b"".join(out))

    def body(self, data: bytes, end: bool, head: bytes = b"") -> None:
        """Writes the next part of the body (`end`: the last), after `head` (one write: one
        system call for the common response)."""
        if self.done:
            return
        out = [head] if head else []
        if data and not self.no_body:
            if self.remaining >= 0:
                if len(data) > self.remaining:
                    data = data[: self.remaining]  # the app said less: hold it to its word
                self.remaining -= len(data)
            if data:
                self.sent += len(data)
                if self.chunked:
                    out.append(b"%x\r\n" % len(data))
                    out.append(data)
                    out.append(b"\r\n")
                else:
                    out.append(data)
        if end:
            self.done = True
            if self.chunked and not self.no_body:
                out.append(b"0\r\n\r\n")
            elif self.remaining > 0 and not self.no_body:
                self.req.keep_alive = False  # shorter than its Content-Length: only closing ends it
        if out:
            self.conn.write(out[0] if len(out) == 1 else b"".join(out))
        if end:
            self.log()

    def log(self) -> None:
        if not self.conn.server.access_log:
            return
        req = self.req
        peer = self.conn.peer
        who = peer[0] if isinstance(peer, tuple) else "-"
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        ms = (time.monotonic() - req.started) * 1000
        sys.stderr.write(
            f'{who} - - [{when}] "{req.method.decode("latin-1")} {req.target.decode("latin-1")} HTTP/{req.version}" '
            f"{self.status} {self.sent} {ms:.1f}ms\n"
        )
        sys.stderr.flush()
