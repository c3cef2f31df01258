"""What the rcluster-serve tests share: a server started as `python -m rcluster.serve` (its
own process group, stopped at the end), and small HTTP clients on raw sockets whose responses
are read with the standard library's parser (http.client), so a test sees exactly what went
over the wire."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
PKG_ROOT = HERE.parent


class Served:
    """``python -m rcluster.serve ARGS`` run in tests/apps; ``port`` is its first TCP port."""

    def __init__(self, *args: str, env: Optional[Dict[str, str]] = None, pass_fds: Tuple[int, ...] = (),
                 wait: bool = True) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="rcluster-serve-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(PKG_ROOT), str(APPS), full_env.get("PYTHONPATH", "")])
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rcluster.serve", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(APPS),
            env=full_env,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.port = 0
        if wait:
            self.port = int(self.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1)) if not pass_fds else 0
            self.wait_for(r"serving .* with")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0, after: int = 0) -> "re.Match[str]":
        """The first match of `pattern` in the server's output past offset `after`."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            out = self.output()
            m = rx.search(out, after)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before {pattern!r}:\n{out}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {timeout} s:\n{out}")
            time.sleep(0.02)

    def ready_workers(self, n: int, timeout: float = 15.0) -> None:
        """Waits until `n` workers answered (a request per worker is not guaranteed: this just
        waits for n 'READY'-level lines of the library)."""
        deadline = time.monotonic() + timeout
        while self.output().count(" is ready") < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self.log.close()
        os.unlink(self.log.name)


class _Reader:
    """A buffered reader that several http.client responses share (pipelining), which
    they cannot close."""

    def __init__(self, sock: socket.socket) -> None:
        self.f = sock.makefile("rb")

    def makefile(self, *_a: object, **_k: object) -> "_Reader":
        return self

    def readline(self, *a: int) -> bytes:
        return self.f.readline(*a)

    def read(self, *a: int) -> bytes:
        return self.f.read(*a)

    def readinto(self, b: bytearray) -> int:
        return self.f.readinto(b)

    def peek(self, n: int = 0) -> bytes:
        return self.f.peek(n)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Response:
    def __init__(self, r: http.client.HTTPResponse, body: bytes) -> None:
        self.status = r.status
        self.version = r.version  # 11 or 10
        self.headers = r.headers
        self.body = body
        self.will_close = r.will_close
        self.chunked = r.chunked

    def __repr__(self) -> str:
        return f"<Response {self.status} {dict(self.headers)} {self.body[:80]!r}>"


class Conn:
    """One client connection: requests written raw, responses parsed by http.client."""

    def __init__(self, port: int = 0, unix: Optional[str] = None, timeout: float = 10.0) -> None:
        if unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = _Reader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, version: str = "1.1") -> None:
        h = {"Host": "test"}
        if body is not None and "Transfer-Encoding" not in (headers or {}):
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.send(head.encode("latin-1") + (body or b""))

    def response(self, method: str = "GET") -> Response:
        r = http.client.HTTPResponse(self.reader, method=method)  # type: ignore[arg-type]
        r.begin()
        return Response(r, r.read())

    def roundtrip(self, method: str = "GET", path: str = "/", body: Optional[bytes] = None,
                  headers: Optional[Dict[str, str]] = None, version: str = "1.1") -> Response:
        self.request(method, path, body, headers, version)
        return self.response(method)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (within `timeout`)."""
        self.sock.settimeout(timeout)
        try:
            return self.reader.read(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self) -> None:
        self.reader.f.close()  # (the socket's fd closes only when its makefile() reader does)
        self.sock.close()


def get(port: int, path: str = "/", **kw: object) -> Response:
    """One request on a new connection (Connection: close)."""
    c = Conn(port)
    try:
        hdrs = dict(kw.pop("headers", {}) or {})  # type: ignore[arg-type]
        hdrs.setdefault("Connection", "close")
        return c.roundtrip(path=path, headers=hdrs, **kw)  # type: ignore[arg-type]
    finally:
        c.close()


def chunked(parts: List[bytes]) -> bytes:
    """A chunked request body."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
