"""ASGI 3 (HTTP and lifespan) for rcluster-serve.

Each request runs as a task on the worker's event loop: ``receive()`` hands out the body as it
arrives (sending ``100 Continue`` first to a client that waits for it), then waits until the
response is complete or the client went away, and says ``http.disconnect``; ``send()``
writes the head with the first body message (a response whose single body message is its
last gets a Content-Length, a streamed one is chunked) and waits while the client is slow to
read. The lifespan protocol runs once per worker, before the worker reports itself ready.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from typing import Any, Awaitable, Callable, Dict, Optional
from urllib.parse import unquote_to_bytes

from ._http import HttpConnection, Request, ResponseWriter

Message = Dict[str, Any]
ASGIApp = Callable[[Dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

log = logging.getLogger("rcluster.serve")

ERROR_BODY = b"500 Internal Server Error: the application failed\n"
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class _Cycle:
    """``receive`` and ``send`` of one request."""

    __slots__ = ("conn", "req", "w", "body_done", "complete", "status", "headers", "started")

    def __init__(self, conn: HttpConnection, req: Request, w: ResponseWriter) -> None:
        self.conn = conn
        self.req = req
        self.w = w
        self.body_done = False
        self.complete = False
        self.status = 0
        self.headers: Any = ()
        self.started = False

    async def receive(self) -> Message:
        req, conn = self.req, self.conn
        if not self.body_done:
            if req.expect_continue and not self.started:
                conn.send_continue(req)
            while not req.chunks and not req.complete and not conn.closed:
                await req.wait_body()
            if req.chunks or req.complete:
                body = req.take()
                more = not req.complete
                self.body_done = not more
                return {"type": "http.request", "body": body, "more_body": more}
        while not conn.closed and not self.complete:
            await req.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = message.get("headers", ())
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} (http.response.start/body expected)")
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response's last one")
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        w = self.w
        if self.conn.closed:
            if not more:
                self._finish()
            return  # the client went away: the app learns it from receive()
        if not w.head_sent:
            w.start(self.status, None, self.headers, body, not more)
        else:
            w.body(body, not more)
        if more:
            await self.conn.drain()
        else:
            self._finish()

    def _finish(self) -> None:
        self.complete = True
        self.req.wake()


class ASGIHandler:
    """The ``Server.handler`` for an ASGI 3 app."""

    def __init__(self, app: ASGIApp, state: Dict[str, Any]) -> None:
        self.app = app
        self.state = state

    def close(self) -> None:
        pass

    async def __call__(self, conn: HttpConnection, req: Request) -> None:
        base = conn.scope_base
        if base is None:
            base = conn.scope_base = _base(conn)
        scope = base.copy()
        target = req.target
        if target[:1] != b"/" and (target.startswith(b"http://") or target.startswith(b"https://")):
            rest = target.split(b"/", 3)
            target = b"/" + rest[3] if len(rest) > 3 else b"/"
        raw_path, _, query = target.partition(b"?")
        scope["http_version"] = req.version
        scope["method"] = req.method.decode("ascii")
        scope["path"] = unquote_to_bytes(raw_path).decode("utf-8", "replace") if b"%" in raw_path else raw_path.decode("utf-8", "replace")
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = req.headers
        scope["state"] = self.state.copy()
        w = ResponseWriter(conn, req)
        cycle = _Cycle(conn, req, w)
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not w.head_sent:
                req.keep_alive = False
                w.start(500, None, [(b"content-type", b"text/plain")], ERROR_BODY, True)
            elif not w.done:
                conn.abort()
            return
        finally:
            cycle.complete = True
            req.wake()
        if not w.head_sent:
            print("rcluster-serve: the ASGI app returned without a response", file=sys.stderr)
            req.keep_alive = False
            w.start(500, None, [(b"content-type", b"text/plain")], ERROR_BODY, True)
        elif not w.done:
            conn.abort()  # the app returned in the middle of its body: the client must not wait


def _base(conn: HttpConnection) -> Dict[str, Any]:
    sn, peer = conn.sockname, conn.peer
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "scheme": "http",
        "root_path": "",
        "server": (sn[0], sn[1]) if isinstance(sn, tuple) else (sn, None) if sn else None,
        "client": (peer[0], peer[1]) if isinstance(peer, tuple) else None,
    }


class Lifespan:
    """The ASGI lifespan protocol for one worker: ``startup()`` before serving, ``shutdown()``
    after. `mode`: ``"auto"`` (an app that fails on the lifespan scope before startup simply has
    none), ``"on"`` (it must support it), ``"off"``."""

    def __init__(self, app: ASGIApp, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        self.state: Dict[str, Any] = {}
        self.supported = mode != "off"
        self._inbox: "asyncio.Queue[Message]" = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: Optional[str] = None
        self._task: Optional["asyncio.Task[None]"] = None

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as e:
            if not self._started.is_set() and self.mode == "auto":
                log.info("the app does not do the ASGI lifespan protocol (%r): none used", e)
                self.supported = False
            else:
                self._failure = f"the app's lifespan failed: {e!r}"
                traceback.print_exc(file=sys.stderr)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._failure = message.get("message") or "lifespan.startup.failed"
            self._started.set()
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = message.get("message") or "lifespan.shutdown.failed"
            self._stopped.set()

    async def startup(self) -> None:
        """Runs the app's startup; raises RuntimeError when it failed."""
        if not self.supported:
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failure:
            raise RuntimeError(self._failure)
        if self.mode == "on" and not self.supported:
            raise RuntimeError("--lifespan on: the app does not do the lifespan protocol")

    async def shutdown(self, timeout: float) -> None:
        """Runs the app's shutdown (at most `timeout` s)."""
        if not self.supported or self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("the app's lifespan shutdown took over %.1f s: cancelled", timeout)
            self._task.cancel()
        if self._failure:
            log.error("%s", self._failure)
