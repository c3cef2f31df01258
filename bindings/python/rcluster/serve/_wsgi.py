"""WSGI (PEP 3333) for rcluster-serve.

The connection's event loop reads the whole request (a slow client never holds anything but
its own socket), then the app runs in a pool of ``threads`` threads (the loop keeps serving
other connections meanwhile; the pool's size is how many requests of this worker run the app
at once) or, with ``threads=0``, on the loop's thread itself (fastest for apps that never wait
on I/O, but then a slow app holds the worker like a gunicorn sync worker). The response goes
out in one write when the app's iterable holds one chunk (most responses, with their
Content-Length), otherwise chunk by chunk with flow control (a client slow to read pauses the
app's iterable, it does not fill memory).
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

from ._http import Headers, HttpConnection, Request, ResponseWriter

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ERROR_BODY = b"500 Internal Server Error: the application failed\n"


class _Call:
    """``start_response`` and ``write`` of one request."""

    __slots__ = ("status", "status_line", "headers", "head_sent", "loop_head", "emit")

    def __init__(self, emit: Callable[[bytes, bool], None]) -> None:
        self.status = 0
        self.status_line: Optional[bytes] = None
        self.headers: Headers = []
        self.head_sent = False  # the app's side: the head is (being) written
        self.loop_head = False  # the loop's side: the head was written
        self.emit = emit  # writes body bytes (and the head before the first), see WSGIHandler

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status_line is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise AssertionError(f"the status must be a str like '200 OK', not {status!r}")
        self.status = int(status[:3])
        self.status_line = status.encode("latin-1")
        out: Headers = []
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise AssertionError(f"header names and values are str: {name!r}: {value!r}")
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise AssertionError(f"header {name!r} holds a line break or a colon")
            out.append((name.encode("latin-1"), value.encode("latin-1")))
        self.headers = out
        return self.write

    def write(self, data: bytes) -> None:
        if self.status_line is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self.emit(bytes(data), False)


def _declared_length(headers: Headers) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class WSGIHandler:
    """The ``Server.handler`` for a WSGI app."""

    def __init__(self, app: WSGIApp, threads: int) -> None:
        self.app = app
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="wsgi") if threads > 0 else None
        self.loop = asyncio.get_running_loop()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    async def __call__(self, conn: HttpConnection, req: Request) -> None:
        if not req.complete:
            conn.send_continue(req)
            while not req.complete:
                if conn.closed:
                    return
                await req.wait()
        environ = self.environ(conn, req)
        w = ResponseWriter(conn, req)
        if self.pool is None:
            call = _Call(lambda data, end: self._emit(w, call, data, end))
            whole = self._run(environ, call, w)
        else:
            call = _Call(lambda data, end: self._emit_from_thread(w, call, data, end))
            whole = await self.loop.run_in_executor(self.pool, self._run, environ, call, w)
        if whole is not None:
            it, body = whole
            if it is None:  # the whole response is known: one write
                if not conn.closed:
                    call.loop_head = True
                    w.start(call.status, call.status_line, call.headers, body, True)
            else:  # inline mode, streaming: one chunk at a time, waiting on a slow client
                await self._stream_inline(w, call, it, body)

    # ---- running the app (a pool thread, or the loop's thread with threads=0) ----

    def _run(self, environ: Dict[str, Any], call: _Call, w: ResponseWriter) -> Optional[Tuple[Any, bytes]]:
        """Calls the app and reads its iterable. Returns (None, body) when the body is whole,
        (iterator, first chunk) for the loop to stream (inline mode), or None when this call
        already sent everything (thread mode streaming, or a failure)."""
        result: Any = None
        handed_off = False
        try:
            result = self.app(environ, call.start_response)
            it = iter(result)
            first = b""
            for first in it:
                if first:
                    break
            if call.status_line is None:
                raise AssertionError("the application returned without calling start_response()")
            _check_bytes(first)
            declared = _declared_length(call.headers)
            if not call.head_sent:
                if declared >= 0 and len(first) >= declared:
                    return None, first  # Content-Length reached: the rest is not asked for
                second = next(it, None)
                if second is None:
                    return None, first
                _check_bytes(second)
                if self.pool is None:
                    handed_off = True
                    return _Chain(second, it, result), first
                call.emit(first, False)
                call.emit(second, False)
            elif first:
                call.emit(first, False)
            for chunk in it:
                _check_bytes(chunk)
                call.emit(chunk, False)
            call.emit(b"", True)
            return None
        except Exception:
            self._failed(call, w)
            return None
        finally:
            if not handed_off:
                _close(result)

    async def _stream_inline(self, w: ResponseWriter, call: _Call, it: "_Chain", first: bytes) -> None:
        try:
            try:
                self._emit(w, call, first, False)
                for chunk in it:
                    _check_bytes(chunk)
                    self._emit(w, call, chunk, False)
                    if w.conn._write_paused:
                        await w.conn.drain()
                    if w.conn.closed:
                        break
                self._emit(w, call, b"", True)
            except Exception:
                self._failed(call, w)
        finally:
            _close(it.result)

    def _failed(self, call: _Call, w: ResponseWriter) -> None:
        traceback.print_exc(file=sys.stderr)
        if self.pool is not None:
            self.loop.call_soon_threadsafe(self._answer_failure, call, w)
        else:
            self._answer_failure(call, w)

    def _answer_failure(self, call: _Call, w: ResponseWriter) -> None:
        if not call.loop_head:
            w.req.keep_alive = False
            w.start(500, None, [(b"Content-Type", b"text/plain")], ERROR_BODY, True)
        else:
            w.conn.abort()  # half a response was sent: only the connection's end can say so

    # ---- writing (always on the loop's thread) ----

    def _emit(self, w: ResponseWriter, call: _Call, data: bytes, end: bool) -> None:
        call.head_sent = True
        if not call.loop_head:
            call.loop_head = True
            w.start(call.status, call.status_line, call.headers, data, end)
        else:
            w.body(data, end)

    async def _emit_async(self, w: ResponseWriter, call: _Call, data: bytes, end: bool) -> None:
        self._emit(w, call, data, end)
        await w.conn.drain()

    def _emit_from_thread(self, w: ResponseWriter, call: _Call, data: bytes, end: bool) -> None:
        call.head_sent = True  # (set here too: the app's thread reads it)
        if w.conn.closed:
            return
        asyncio.run_coroutine_threadsafe(self._emit_async(w, call, data, end), self.loop).result()

    # ---- environ ----

    def environ(self, conn: HttpConnection, req: Request) -> Dict[str, Any]:
        base = conn.scope_base
        if base is None:
            base = conn.scope_base = self._base(conn)
        env = base.copy()
        target = req.target
        if target[:1] != b"/" and (target.startswith(b"http://") or target.startswith(b"https://")):
            rest = target.split(b"/", 3)  # absolute-form: keep the path
            target = b"/" + rest[3] if len(rest) > 3 else b"/"
        path, _, query = target.partition(b"?")
        env["REQUEST_METHOD"] = req.method.decode("latin-1")
        env["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1") if b"%" in path else path.decode("latin-1")
        env["QUERY_STRING"] = query.decode("latin-1")
        env["RAW_URI"] = env["REQUEST_URI"] = req.target.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/" + req.version
        body = req.take()
        env["wsgi.input"] = io.BytesIO(body)
        for name, value in req.headers:
            key = name.decode("latin-1").upper()
            if "_" in key:  # indistinguishable from a dash header once converted: dropped
                continue
            key = key.replace("-", "_")
            v = value.decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = v
                continue
            if key == "TRANSFER_ENCODING":
                continue
            key = "HTTP_" + key
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ",") + v
            else:
                env[key] = v
        if body or "CONTENT_LENGTH" in env:
            env["CONTENT_LENGTH"] = str(len(body))  # (the body was read whole, chunked or not)
        return env

    def _base(self, conn: HttpConnection) -> Dict[str, Any]:
        sn, peer = conn.sockname, conn.peer
        return {
            "SCRIPT_NAME": "",
            "SERVER_NAME": sn[0] if isinstance(sn, tuple) else "localhost",
            "SERVER_PORT": str(sn[1]) if isinstance(sn, tuple) else "0",
            "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
            "REMOTE_PORT": str(peer[1]) if isinstance(peer, tuple) else "",
            "SERVER_SOFTWARE": "rcluster-serve",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }


class _Chain:
    """The rest of an app's iterable, its second chunk first (inline streaming)."""

    def __init__(self, second: bytes, it: Any, result: Any) -> None:
        self.second = second
        self.it = it
        self.result = result

    def __iter__(self) -> Any:
        yield self.second
        yield from self.it


def _check_bytes(chunk: Any) -> None:
    if not isinstance(chunk, bytes):
        raise TypeError(f"the application's iterable gave {type(chunk).__name__}, not bytes")


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            traceback.print_exc(file=sys.stderr)
