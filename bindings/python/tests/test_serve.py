"""rcluster-serve: real Flask, Django and Starlette apps served unchanged, a WSGI app under
wsgiref.validate, a bare ASGI app, slow clients, reload and SIGTERM under load.

Each test runs its own server (`python -m rcluster.serve`, its own process group) on port 0
of 127.0.0.1 and stops it; every wait is bounded."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Set

import pytest

pytest.importorskip("httptools")

from serve_client import APPS, Conn, Served, chunked, get  # noqa: E402

APP_SPECS = {
    "flask": "flask_app:app",
    "django": "django_app:application",
    "starlette": "starlette_app:app",
}


def _need(kind: str) -> None:
    pytest.importorskip({"flask": "flask", "django": "django", "starlette": "starlette"}[kind])


@pytest.fixture
def served():
    made: List[Served] = []

    def start(*args: str, **kw: object) -> Served:
        s = Served(*args, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


@pytest.mark.parametrize("kind", ["flask", "django", "starlette"])
def test_real_app_http(served, kind):
    """Status, bodies, keep-alive, pipelining, chunked both ways, a 1 MB body, HEAD,
    HTTP/1.0, 100-continue, a slow client and the limits, on an app written for gunicorn or
    uvicorn, with no change."""
    _need(kind)
    # (Django on plain asyncio, the others on uvloop when it is installed: both loops tested)
    loop = ["--loop", "asyncio"] if kind == "django" else []
    s = served("-w", "2", "-b", "127.0.0.1:0", "--limit-request-body", str(4 << 20), "--access-log", *loop,
               APP_SPECS[kind])
    port = s.port

    r = get(port, "/")
    assert (r.status, r.version, r.body) == (200, 11, b"Hello, World!")
    assert r.headers["Content-Length"] == "13" and r.headers["Date"] and r.headers["Server"]
    assert get(port, "/no-such-page").status == 404

    # keep-alive: three requests on one connection
    c = Conn(port)
    for i in range(3):
        r = c.roundtrip(path=f"/json?i={i}")
        assert r.status == 200 and not r.will_close
        assert f'"i":"{i}"' in r.body.decode().replace(" ", "")
    # pipelining: three requests in one write, three answers in order
    c.send(b"".join(f"GET /json?i=p{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(3)))
    for i in range(3):
        r = c.response()
        assert r.status == 200 and f'"i":"p{i}"' in r.body.decode().replace(" ", "")
    # chunked out: a streamed body
    r = c.roundtrip(path="/stream?n=50")
    assert r.status == 200 and r.chunked and r.headers.get("Content-Length") is None
    assert r.body == b"".join(b"chunk %d\n" % i for i in range(50))
    # chunked in
    parts = [b"alpha-", b"", b"beta-" * 100, b"gamma"]
    r = c.roundtrip("POST", "/echo", chunked(parts), headers={"Transfer-Encoding": "chunked"})
    assert r.status == 200 and r.body == b"".join(parts) and r.headers["X-Length"] == str(len(b"".join(parts)))
    # 1 MB in and out
    big = os.urandom(1 << 20)
    r = c.roundtrip("POST", "/echo", big, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200 and len(r.body) == len(big) and r.headers["X-Sha1"] == hashlib.sha1(big).hexdigest()
    # HEAD: the head of a GET, no body, and the connection goes on
    r = c.roundtrip("HEAD", "/")
    assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == "13"
    r = c.roundtrip(path="/")
    assert r.body == b"Hello, World!"
    # 100-continue: the server asks for the body before the client sends it
    c.request("POST", "/echo", None, headers={"Content-Length": "5", "Expect": "100-continue"})
    assert c.reader.readline() == b"HTTP/1.1 100 Continue\r\n" and c.reader.readline() == b"\r\n"
    c.send(b"hello")
    r = c.response("POST")
    assert r.status == 200 and r.body == b"hello"
    c.close()

    # HTTP/1.0: answered as 1.0, no chunked encoding, closed after the answer
    c = Conn(port)
    r = c.roundtrip(path="/stream?n=3", version="1.0")
    assert r.version == 10 and not r.chunked and r.body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert c.at_eof()
    c.close()
    c = Conn(port)  # HTTP/1.0 keep-alive when asked and the length is known
    r = c.roundtrip(path="/", version="1.0", headers={"Connection": "keep-alive"})
    assert r.version == 10 and r.body == b"Hello, World!" and r.headers["Connection"].lower() == "keep-alive"
    assert c.roundtrip(path="/", version="1.0").body == b"Hello, World!"
    assert c.at_eof()
    c.close()

    # a slow client: its request arrives a few bytes at a time
    c = Conn(port)
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
    for i in range(0, len(req), 7):
        c.send(req[i:i + 7])
        time.sleep(0.01)
    r = c.response("POST")
    assert r.status == 200 and r.body == b"0123456789"
    c.close()

    # limits and garbage: 4xx, then the connection closes
    for raw, status in [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (5 << 20), 413),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"BLAH\x01 / HTTP/1.1\r\n\r\n", 400),
    ]:
        c = Conn(port)
        c.send(raw)
        r = c.response()
        assert r.status == status, (raw[:60], r)
        assert c.at_eof()
        c.close()
    assert '"GET / HTTP/1.1" 200 13' in s.output()  # --access-log


def test_wsgiref_validate(served):
    """A strict app (wsgiref.validate) with warnings as errors: every request is a 200."""
    s = served("-w", "1", "-b", "127.0.0.1:0", "strict_wsgi:app",
               env={"PYTHONWARNINGS": "error::Warning"})
    port = s.port
    c = Conn(port)
    assert c.roundtrip(path="/").body == b"strict ok\n"
    r = c.roundtrip("POST", "/echo", b"line one\nline two\n")
    assert (r.status, r.body) == (200, b"line one\nline two\n")
    r = c.roundtrip("POST", "/echo", chunked([b"chunked\n", b"body"]), headers={"Transfer-Encoding": "chunked"})
    assert (r.status, r.body) == (200, b"chunked\nbody")
    r = c.roundtrip(path="/stream")
    assert r.status == 200 and r.body == b"".join(b"part %d\n" % i for i in range(10))
    r = c.roundtrip(path="/write")
    assert r.status == 200 and r.body == b"written then returned\n"
    assert c.roundtrip("HEAD", "/").status == 200
    r = c.roundtrip(path="/environ?a=1&b=%20")
    env = dict(line.split("=", 1) for line in r.body.decode().splitlines())
    assert env["QUERY_STRING"] == "a=1&b=%20" and env["PATH_INFO"] == "/environ"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["REQUEST_METHOD"] == "GET" and env["HTTP_HOST"] == "test"
    c.close()
    out = s.output()
    assert "Traceback" not in out and "Warning" not in out, out


def test_slow_and_idle_clients_do_not_delay_new_requests(served):
    """One worker holds idle connections, half-sent requests, a client that does not read a
    1 MB answer and a slow app request in flight: a new request is still answered at once
    (the read timeout is 30 s, so any blocking would show as seconds)."""
    s = served("-w", "1", "--threads", "2", "-b", "127.0.0.1:0", "flask_app:app")
    port = s.port
    held: List[Conn] = []
    try:
        for _ in range(20):
            held.append(Conn(port))  # connected, silent
        for _ in range(5):
            c = Conn(port)
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # never finishes its head
            held.append(c)
        for _ in range(2):
            c = Conn(port)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.request(path="/big?n=%d" % (1 << 20))  # never reads the answer
            held.append(c)
        sleeper = Conn(port)
        sleeper.request(path="/sleep?s=3")
        held.append(sleeper)
        time.sleep(0.2)  # let the worker take them all before measuring
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            r = get(port, "/")
            worst = max(worst, time.monotonic() - t0)
            assert r.status == 200 and r.body == b"Hello, World!"
        assert worst < 1.0, f"a new request waited {worst:.2f} s behind slow clients"
        assert sleeper.response().body == b"slept"
    finally:
        for c in held:
            c.close()


class Load:
    """Client threads sending requests until stopped: `close` ones open a connection per
    request, `keep` ones reuse theirs and, like any HTTP client, retry once on a new
    connection when a reused one was closed before any byte of an answer (RFC 9112 9.3.1).
    Anything else (a reset, a short or wrong answer) is a failure. Connections refused once
    the server stopped are counted apart."""

    def __init__(self, port: int, close: int = 2, keep: int = 2, path: str = "/pid") -> None:
        self.port = port
        self.path = path
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failures: List[str] = []
        self.refused = 0
        self.pids: Set[str] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._close_loop) for _ in range(close)]
        self.threads += [threading.Thread(target=self._keep_loop) for _ in range(keep)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(15)

    def count(self) -> int:
        with self.lock:
            return self.ok

    def _good(self, body: bytes) -> None:
        with self.lock:
            self.ok += 1
            self.pids.add(body.decode())

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def _close_loop(self) -> None:
        deadline = time.monotonic() + 25
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            try:
                c = Conn(self.port)
            except ConnectionRefusedError:
                with self.lock:
                    self.refused += 1
                time.sleep(0.01)
                continue
            try:
                r = c.roundtrip(path=self.path, headers={"Connection": "close"})
                if r.status != 200 or not r.body.isdigit():
                    self._fail(f"close: {r!r}")
                else:
                    self._good(r.body)
            except Exception as e:
                self._fail(f"close: {e!r}")
            finally:
                c.close()

    def _keep_loop(self) -> None:
        deadline = time.monotonic() + 25
        c = None
        reused = False
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            if c is None:
                try:
                    c = Conn(self.port)
                except ConnectionRefusedError:
                    with self.lock:
                        self.refused += 1
                    time.sleep(0.01)
                    continue
                reused = False
            try:
                c.request(path=self.path)
                first = c.reader.peek(1)[:1]
                if not first:
                    raise ConnectionAbortedError("closed before any byte")
                r = c.response()
                if r.status != 200 or not r.body.isdigit():
                    self._fail(f"keep: {r!r}")
                else:
                    self._good(r.body)
                reused = True
                if r.will_close:
                    c.close()
                    c = None
            except (ConnectionAbortedError, ConnectionResetError, BrokenPipeError) as e:
                c.close()
                c = None
                if not reused:
                    self._fail(f"keep, fresh connection: {e!r}")
            except Exception as e:
                self._fail(f"keep: {e!r}")
                c.close()
                c = None
        if c is not None:
            c.close()


@pytest.mark.parametrize("kind", ["flask", "starlette"])
def test_rolling_reload_under_load_fails_no_request(served, kind):
    _need(kind)
    spec = {"flask": "flask_app:app", "starlette": "starlette_app:app"}[kind]
    s = served("-w", "2", "-b", "127.0.0.1:0", "--graceful-timeout", "10", spec)
    with Load(s.port) as load:
        deadline = time.monotonic() + 10
        while load.count() < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = set(load.pids)
        at = len(s.output())
        s.signal(signal.SIGHUP)
        s.wait_for(r"rcluster-serve: reload done", timeout=20, after=at)
        n = load.count()
        deadline = time.monotonic() + 10
        while load.count() < n + 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        load.stop()
        after = {p for p in load.pids if p not in before}
    assert not load.failures, load.failures[:5]
    assert load.ok > 100
    assert len(after) >= 2, (before, load.pids)  # the new workers answered
    assert s.proc.poll() is None


@pytest.mark.parametrize("kind", ["flask", "starlette"])
def test_sigterm_under_load_fails_no_request(served, kind):
    _need(kind)
    spec = {"flask": "flask_app:app", "starlette": "starlette_app:app"}[kind]
    s = served("-w", "2", "-b", "127.0.0.1:0", "--graceful-timeout", "10", spec)
    slow: List[bytes] = []
    with Load(s.port) as load:
        deadline = time.monotonic() + 10
        while load.count() < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        c = Conn(s.port)
        c.request(path="/sleep?s=1")  # in flight when SIGTERM comes: still answered
        time.sleep(0.2)
        s.signal(signal.SIGTERM)
        slow.append(c.response().body)
        c.close()
        assert s.wait_exit(15) == 0
        load.stop()
    assert slow == [b"slept"]
    assert not load.failures, load.failures[:5]
    assert load.ok > 50


def test_asgi_disconnect_lifespan_unix_socket_exec_mode(served, tmp_path):
    """A bare ASGI app on a Unix socket, workers started by exec: lifespan state reaches the
    requests, http.disconnect comes when the client leaves (after its body, and during a
    streamed response), and lifespan shutdown runs on SIGTERM."""
    marks = tmp_path / "marks"
    sock_path = str(tmp_path / "s.sock")
    s = served("-w", "1", "--mode", "exec", "-b", f"unix:{sock_path}", "asgi_raw:app",
               env={"RCLUSTER_TEST_MARKS": str(marks)}, wait=False)
    s.wait_for(r"serving asgi_raw:app")
    deadline = time.monotonic() + 15
    while not (marks.exists() and "startup" in marks.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    c = Conn(unix=sock_path)
    assert c.roundtrip(path="/state").body == b"hello from lifespan"
    assert c.roundtrip(path="/q%20x?y=1").body == b"raw asgi /q x y=1"
    c.request(path="/wait-disconnect")
    time.sleep(0.1)
    c.close()
    c = Conn(unix=sock_path)
    c.request(path="/two-waiters")
    time.sleep(0.1)
    c.close()
    c = Conn(unix=sock_path)
    c.request(path="/forever")
    assert c.reader.readline().startswith(b"HTTP/1.1 200")
    c.close()

    def marked(text: str) -> bool:
        return marks.exists() and text in marks.read_text()

    deadline = time.monotonic() + 10
    while not (marked("disconnect seen") and marked("stream stopped") and marked("two waiters")) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marked("disconnect seen") and marked("stream stopped"), marks.read_text()
    assert marked("two waiters: http.disconnect http.disconnect"), marks.read_text()
    s.signal(signal.SIGTERM)
    assert s.wait_exit(15) == 0
    assert marked("shutdown")


def test_systemd_socket_activation(served):
    """LISTEN_FDS: the server serves the socket it was given and binds nothing itself."""
    _need("flask")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    fd = lsock.fileno()
    # what systemd does before exec: the socket at fd 3, LISTEN_PID naming the process
    shim = (
        f"import os, sys\nif {fd} != 3:\n    os.dup2({fd}, 3)\n    os.close({fd})\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\nos.environ['LISTEN_FDS'] = '1'\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'rcluster.serve', '-w', '2', 'flask_app:app'])\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS.parent.parent), str(APPS), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", shim], cwd=str(APPS), env=env, pass_fds=(fd,), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lsock.close()
    try:
        deadline = time.monotonic() + 15
        bodies = []
        while time.monotonic() < deadline and len(set(bodies)) < 2:
            try:
                bodies.append(get(port, "/pid").body)
            except OSError:
                time.sleep(0.05)
        assert len(set(bodies)) == 2, (bodies, _drain(proc))  # both workers serve systemd's socket
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def _drain(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")


def test_command_line_errors():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS.parent.parent), str(APPS), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "rcluster.serve", "-b", "127.0.0.1:notaport", "x:app"],
                       capture_output=True, cwd=str(APPS), env=env, timeout=20)
    assert r.returncode == 2 and b"port must be a number" in r.stderr
    r = subprocess.run([sys.executable, "-m", "rcluster.serve", "--reload-signal", "NOPE", "x:app"],
                       capture_output=True, cwd=str(APPS), env=env, timeout=20)
    assert r.returncode == 2 and b"no signal named" in r.stderr
    r = subprocess.run([sys.executable, "-m", "rcluster.serve", "-w", "1", "-b", "127.0.0.1:0", "--preload", "strict_wsgi:nope"],
                       capture_output=True, cwd=str(APPS), env=env, timeout=20)
    assert r.returncode != 0 and b"has no nope" in r.stderr + r.stdout


def test_reload_signal_and_interface_option(served):
    """--reload-signal USR2 reloads; --interface asgi serves an ASGI app as detection would."""
    _need("starlette")
    s = served("-w", "1", "-b", "127.0.0.1:0", "--reload-signal", "USR2", "--interface", "asgi", "starlette_app:app")
    before = get(s.port, "/pid").body
    at = len(s.output())
    s.signal(signal.SIGUSR2)
    s.wait_for(r"reload done", after=at)
    after = get(s.port, "/pid").body
    assert before != after  # another worker pid


def test_preload_and_max_requests_recycle_workers_without_failures(served):
    """--preload imports the app in the primary; --max-requests 20 replaces a worker after
    about 20 connections, and the requests around each replacement all succeed."""
    _need("flask")
    s = served("-w", "1", "-b", "127.0.0.1:0", "--preload", "--max-requests", "20", "flask_app:app")
    pids: List[bytes] = []
    deadline = time.monotonic() + 20
    # (the old worker serves on until its replacement is READY: a fast client sees more than
    # 20 connections per pid)
    while len(set(pids)) < 3 and time.monotonic() < deadline:
        r = get(s.port, "/pid")
        assert r.status == 200, r
        pids.append(r.body)
    assert len(set(pids)) >= 3, set(pids)  # at least two recycles
    assert pids.count(pids[0]) >= 20


def test_timeouts_and_upgrade(served):
    """--read-timeout counts a client's silence while a request comes in (408 for a head that
    stops, the connection closed for a body that stops; a slow but steady body is served);
    --keep-alive closes an idle connection; an Upgrade the server does not do is answered, then
    the connection closes."""
    _need("flask")
    s = served("-w", "1", "-b", "127.0.0.1:0", "--read-timeout", "1", "--keep-alive", "0.5", "flask_app:app")
    port = s.port
    c = Conn(port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # and nothing more
    t0 = time.monotonic()
    r = c.response()
    assert r.status == 408 and 0.8 < time.monotonic() - t0 < 5
    assert c.at_eof()
    c.close()
    c = Conn(port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")  # half a body, then silence
    assert c.at_eof(timeout=5)
    c.close()
    c = Conn(port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
    for i in range(3):  # 1.8 s in all, never 1 s of silence
        time.sleep(0.6)
        c.send(b"%02d" % i)
    r = c.response("POST")
    assert (r.status, r.body) == (200, b"000102")
    t0 = time.monotonic()
    assert c.at_eof(timeout=5)  # idle keep-alive: closed after about 0.5 s
    assert time.monotonic() - t0 < 3
    c.close()
    c = Conn(port)
    r = c.roundtrip(path="/", headers={"Connection": "Upgrade", "Upgrade": "h2c"})
    assert r.status in (200, 400), r  # the app's answer (werkzeug refuses some upgrades itself)
    assert c.at_eof()
    c.close()
