#!/usr/bin/env python3
"""wsgi_server.py: a prefork HTTP/1.1 server for WSGI apps (Flask, Django, ...) on rcluster.

    python examples/python/wsgi_server.py [options] [module:app]

    --workers N        worker processes (default 4; 0 = one per CPU)
    --host H --port P  where to listen (default 127.0.0.1:8000; port 0 picks a free one)
    --mode fork|exec   how workers start (default fork; exec for multi-threaded primaries)
    --policy NAME      round_robin, least_connections, sticky, shared, reuseport
    --timeout S        a worker silent this long (stuck in a request) is killed and replaced
                       (default 30, as gunicorn's --timeout)
    --read-timeout S   seconds a client gets to send its request (default 10)
    --graceful-timeout S   seconds workers get to finish on SIGTERM (default 30)
    --max-requests N   recycle a worker after about N connections (0: never)
    --preload          import the app once in the primary (FORK mode: shared by the workers)
    --access-log       one line per request on stderr

`module:app` names a WSGI callable, like gunicorn: `myproject.wsgi:application` (Django),
`app:app` (Flask), `pkg.factory:create_app()` (a factory called once per worker). The current
directory is importable. Without it, a built-in app says which worker answered.

Like gunicorn's sync workers, each worker serves one request at a time (one request per
connection: `Connection: close`); the primary accepts and hands each connection to a worker.
SIGTERM/Ctrl-C: graceful stop (requests in flight finish), exit 0. SIGHUP: rolling reload
(new workers import the app again: code changes are picked up, never fewer ready workers).
"""

from __future__ import annotations

import argparse
import email.utils
import importlib
import io
import logging
import os
import re
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

try:
    import rcluster
except ImportError:  # running from a checkout without `pip install ./bindings/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python"))
    import rcluster

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_LINE = 8190  # request line and each header line (as gunicorn)
MAX_HEADERS = 100
MAX_BODY = 64 * 1024 * 1024
TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
SERVER = "rcluster-wsgi"
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported"}


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


# ---- the built-in app ----


def hello_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    body = (
        f"Hello from worker {rcluster.worker_id()} (pid {os.getpid()}): "
        f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def load_app(spec: Optional[str]) -> WSGIApp:
    if not spec:
        return hello_app
    module, _, attr = spec.partition(":")
    attr = attr or "application"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module)
    call = attr.endswith("()")
    for part in attr[:-2 if call else None].split("."):
        obj = getattr(obj, part)
    if call:
        obj = obj()
    if not callable(obj):
        raise TypeError(f"{spec} is not a WSGI callable")
    return obj


# ---- HTTP/1.1 request parsing ----


def read_line(rfile: io.BufferedReader) -> bytes:
    line = rfile.readline(MAX_LINE + 2)
    if len(line) > MAX_LINE + 1 and not line.endswith(b"\n"):
        raise HTTPError(431, "line too long")
    return line


def read_request(rfile: io.BufferedReader) -> Optional[Tuple[bytes, bytes, bytes, List[Tuple[bytes, bytes]]]]:
    """(method, target, version, headers), or None when the client sent nothing."""
    line = read_line(rfile)
    while line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore empty lines before the request
        line = read_line(rfile)
    if not line:
        return None
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]) or not parts[1]:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    m = re.match(rb"^HTTP/(\d)\.(\d)$", version)
    if not m:
        raise HTTPError(400, "malformed HTTP version")
    if m.group(1) != b"1":
        raise HTTPError(505, "only HTTP/1.x")
    headers: List[Tuple[bytes, bytes]] = []
    while True:
        line = read_line(rfile)
        if not line:
            raise HTTPError(400, "connection closed inside the header")
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            raise HTTPError(400, "obsolete header folding")
        name, sep, value = line.rstrip(b"\r\n").partition(b":")
        if not sep or not TOKEN.match(name):
            raise HTTPError(400, f"malformed header line {line[:40]!r}")
        headers.append((name, value.strip(b" \t")))
        if len(headers) > MAX_HEADERS:
            raise HTTPError(431, "too many headers")
    return method, target, version, headers


def read_chunked(rfile: io.BufferedReader) -> bytes:
    body = bytearray()
    while True:
        size_line = read_line(rfile).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HTTPError(400, "bad chunk size") from None
        if size == 0:
            while read_line(rfile) not in (b"\r\n", b"\n", b""):  # trailers, ignored
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HTTPError(413, "body too large")
        chunk = rfile.read(size)
        if len(chunk) != size or read_line(rfile) not in (b"\r\n", b"\n"):
            raise HTTPError(400, "truncated chunk")
        body += chunk


def read_body(rfile: io.BufferedReader, headers: Dict[bytes, List[bytes]], wfile: socket.socket,
              version: bytes) -> bytes:
    te = b",".join(headers.get(b"transfer-encoding", [])).lower()
    cl = headers.get(b"content-length", [])
    if te and cl:
        raise HTTPError(400, "both Transfer-Encoding and Content-Length")
    if version == b"HTTP/1.1" and b"100-continue" in b",".join(headers.get(b"expect", [])).lower():
        if te or (cl and cl[0] != b"0"):
            wfile.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if te:
        if [t.strip() for t in te.split(b",")] != [b"chunked"]:
            raise HTTPError(501, "unsupported Transfer-Encoding")
        return read_chunked(rfile)
    if not cl:
        return b""
    if len(set(cl)) != 1 or not cl[0].isdigit():
        raise HTTPError(400, "bad Content-Length")
    n = int(cl[0])
    if n > MAX_BODY:
        raise HTTPError(413, "body too large")
    body = rfile.read(n)
    if len(body) != n:
        raise HTTPError(400, "body shorter than Content-Length")
    return body


# ---- WSGI ----


def build_environ(method: bytes, target: bytes, version: bytes, headers: List[Tuple[bytes, bytes]],
                  body: bytes, peer: Any, server: Tuple[str, int]) -> Dict[str, Any]:
    if target.startswith((b"http://", b"https://")):  # absolute-form
        target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    environ: Dict[str, Any] = {
        "REQUEST_METHOD": method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),  # PEP 3333: bytes as latin-1
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": target.decode("latin-1"),
        "REQUEST_URI": target.decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": version.decode("latin-1"),
        "SERVER_SOFTWARE": SERVER,
        "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
        "REMOTE_PORT": str(peer[1]) if isinstance(peer, tuple) else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.decode("latin-1").upper()
        if "_" in key:  # would be indistinguishable from a dash header: dropped (as gunicorn, nginx)
            continue
        key = key.replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value.decode("latin-1")
            continue
        key = "HTTP_" + key
        v = value.decode("latin-1")
        environ[key] = f"{environ[key]},{v}" if key in environ else v
    if any(n.lower() == b"transfer-encoding" for n, _ in headers):
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
    return environ


class Response:
    """start_response, write() and the sending of the head (just before the first body byte)."""

    HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                  "transfer-encoding", "upgrade"}

    def __init__(self, sock: socket.socket, head_only: bool) -> None:
        self.sock = sock
        self.head_only = head_only
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.sent = False
        self.bytes = 0

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if not re.match(r"^\d{3} ", status + " "):
            raise AssertionError(f"bad status {status!r}")
        for name, value in headers:
            if name.lower() in self.HOP_BY_HOP:
                raise AssertionError(f"hop-by-hop header {name!r} from the application")
            if "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                raise AssertionError("header with a line break")
        self.status, self.headers = status, list(headers)
        return self.write

    def _send_head(self) -> None:
        if self.status is None:
            raise AssertionError("the application wrote a body before start_response")
        names = {n.lower() for n, _ in self.headers}
        head = [f"HTTP/1.1 {self.status}"]
        head += [f"{n}: {v}" for n, v in self.headers]
        if "date" not in names:
            head.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if "server" not in names:
            head.append(f"Server: {SERVER}")
        head.append("Connection: close")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self.sent = True

    def write(self, data: bytes) -> None:
        if not self.sent:
            self._send_head()
        if data and not self.head_only:
            self.sock.sendall(data)
            self.bytes += len(data)

    def finish(self) -> None:
        if not self.sent:
            self._send_head()


def simple_response(sock: socket.socket, status: int, text: str) -> None:
    body = f"{status} {REASONS.get(status, '')}: {text}\n".encode()
    sock.sendall(
        f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\nServer: {SERVER}\r\n\r\n".encode() + body
    )


def handle_connection(sock: socket.socket, peer: Any, app: WSGIApp, opts: argparse.Namespace,
                      server: Tuple[str, int]) -> None:
    sock.settimeout(opts.read_timeout)
    rfile = sock.makefile("rb")
    try:
        try:
            req = read_request(rfile)
            if req is None:
                return
            method, target, version, headers = req
            by_name: Dict[bytes, List[bytes]] = {}
            for n, v in headers:
                by_name.setdefault(n.lower(), []).append(v)
            body = read_body(rfile, by_name, sock, version)
        except HTTPError as e:
            simple_response(sock, e.status, str(e))
            return
        except socket.timeout:
            simple_response(sock, 408, "request not received in time")
            return
        environ = build_environ(method, target, version, headers, body, peer, server)
        resp = Response(sock, head_only=method == b"HEAD")
        result: Optional[Iterable[bytes]] = None
        try:
            result = app(environ, resp.start_response)
            for chunk in result:
                if chunk:
                    resp.write(chunk)
            resp.finish()
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:
            traceback.print_exc()
            if not resp.sent:
                resp.status, resp.headers = None, []
                simple_response(sock, 500, "the application failed")
            return
        finally:
            if result is not None and hasattr(result, "close"):
                result.close()
        if opts.access_log:
            who = peer[0] if isinstance(peer, tuple) else "-"
            when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
            line = f'{who} - - [{when}] "{method.decode("latin-1")} {target.decode("latin-1")} {version.decode()}"'
            print(f"{line} {str(resp.status).split()[0]} {resp.bytes} (worker {rcluster.worker_id()})",
                  file=sys.stderr, flush=True)
    finally:
        rfile.close()


# ---- processes ----


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A prefork WSGI server on rcluster.")
    p.add_argument("app", nargs="?", help="module:callable (default: a built-in hello app)")
    p.add_argument("--workers", "-w", type=int, default=4)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", "-p", type=int, default=8000)
    p.add_argument("--mode", choices=["fork", "exec"], default="fork")
    p.add_argument("--policy", default="round_robin",
                   choices=["round_robin", "least_connections", "sticky", "shared", "reuseport"])
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--read-timeout", type=float, default=10.0)
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--preload", action="store_true")
    p.add_argument("--access-log", action="store_true")
    return p.parse_args(argv)


PRELOADED: Optional[WSGIApp] = None
log = logging.getLogger("wsgi_server")


def setup_logging() -> None:
    """The library's records arrive in the logger "rcluster" (RCLUSTER_LOG=debug for more)."""
    level = os.environ.get("RCLUSTER_LOG", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.DEBUG),
                        format="[%(process)d %(name)s] %(levelname)s %(message)s")


def worker_main(opts: argparse.Namespace) -> int:
    app = PRELOADED or load_app(opts.app)
    w = rcluster.Worker()

    @w.on("connection")
    def on_connection(sock: socket.socket, listener: int, peer: Any) -> None:
        try:
            server = (opts.host, sock.getsockname()[1])
            handle_connection(sock, peer, app, opts, server)
        except OSError:
            pass  # the client went away
        finally:
            sock.close()
            w.conn_done()

    return w.run()


def main() -> int:
    global PRELOADED
    opts = parse_args()
    setup_logging()
    if opts.preload:
        PRELOADED = load_app(opts.app)
    cluster = rcluster.Cluster(
        opts.workers,
        mode=opts.mode,
        worker=lambda: worker_main(opts),
        listen=[(opts.host, opts.port)],
        policy=opts.policy,
        grace_ms=int(opts.graceful_timeout * 1000),
        max_requests=(opts.max_requests, opts.max_requests // 10) if opts.max_requests else None,
        # A sync worker's loop does not run while it serves a request: the watchdog waits
        # --timeout before it calls the worker stuck.
        heartbeat=(1000, max(int(opts.timeout * 1000), 2000)),
    )

    @cluster.on("exit")
    def exited(worker_id: int, code: int, sig: int, asked: bool) -> None:
        if not asked:  # the library logs every exit; say what happens next
            log.warning("worker %d died unasked: its slot is restarted after a backoff", worker_id)

    cluster.start()
    log.info("serving %s on http://%s:%d/ with %d workers (%s mode, %s); Ctrl-C stops, SIGHUP reloads",
             opts.app or "the built-in hello app", opts.host, cluster.port(0), opts.workers or os.cpu_count(),
             opts.mode, opts.policy)
    return cluster.run()


if rcluster.is_worker():  # EXEC mode: this script runs again as a worker, with the same argv
    setup_logging()
    sys.exit(worker_main(parse_args()))

if __name__ == "__main__":
    sys.exit(main())
