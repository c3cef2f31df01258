"""examples/python: the WSGI server (its HTTP parsing and a running cluster) and echo.py."""

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, http_body, http_get

EXAMPLES = REPO / "examples" / "python"


def load_wsgi_module():
    spec = importlib.util.spec_from_file_location("wsgi_server", EXAMPLES / "wsgi_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_http_parser_and_environ():
    ws = load_wsgi_module()
    raw = (
        b"POST /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nX-Thing: 1\r\nX-Thing: 2\r\n"
        b"X_Spoof: no\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    )
    rfile = io.BufferedReader(io.BytesIO(raw))
    method, target, version, headers = ws.read_request(rfile)
    by = {}
    for n, v in headers:
        by.setdefault(n.lower(), []).append(v)
    body = ws.read_body(rfile, by, None, version)
    assert body == b"abcde"
    env = ws.build_environ(method, target, version, headers, body, ("10.0.0.1", 5555), ("127.0.0.1", 80))
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/a b/c"
    assert env["QUERY_STRING"] == "x=1&y=%20" and env["HTTP_HOST"] == "example.com"
    assert env["HTTP_X_THING"] == "1,2" and "HTTP_X_SPOOF" not in env
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "5"
    assert env["wsgi.input"].read() == b"abcde" and env["REMOTE_ADDR"] == "10.0.0.1"
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"):
        with pytest.raises(ws.HTTPError):
            ws.read_request(io.BufferedReader(io.BytesIO(bad)))
    with pytest.raises(ws.HTTPError):
        ws.read_body(io.BufferedReader(io.BytesIO(b"ab")), {b"content-length": [b"5"]}, None, b"HTTP/1.1")


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


def test_wsgi_server_hello_app(script):
    s = script(str(EXAMPLES / "wsgi_server.py"), "--workers", "2", "--port", "0", "--graceful-timeout", "5")
    port = wait_listening(s.proc.pid)
    seen = set()
    for _ in range(8):
        body = http_body(http_get(port, "/hi%20there?x=1"))
        assert body.startswith(b"Hello from worker ") and body.endswith(b": GET /hi there\n")
        seen.add(body.split()[3])
    assert seen == {b"1", b"2"}
    assert raw_request(port, b"BROKEN\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    head = raw_request(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    s.signal(signal.SIGTERM)
    assert s.wait_exit(10) == 0


def wait_listening(pid: int, timeout: float = 15.0) -> int:
    """The port the server listens on (it prints it on stderr; ask the kernel instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = _listening_port(pid)
        if port:
            return port
        time.sleep(0.05)
    raise AssertionError("the server did not listen")


def _listening_port(pid: int):
    """The TCP port `pid` listens on (from /proc/net/tcp and its fds)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return None
    with open("/proc/net/tcp") as f:
        for row in f.readlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                return int(cols[1].split(":")[1], 16)
    return None


def test_wsgi_server_with_a_flask_app(script, tmp_path):
    pytest.importorskip("flask")
    (tmp_path / "flaskapp.py").write_text(
        textwrap.dedent(
            """
            from flask import Flask, request
            app = Flask(__name__)
            @app.route("/echo", methods=["POST"])
            def echo():
                return {"body": request.get_data(as_text=True), "q": request.args["q"]}
            """
        )
    )
    s = script(
        str(EXAMPLES / "wsgi_server.py"), "--workers", "1", "--port", "0", "--mode", "fork",
        "--preload", "flaskapp:app", env={"PYTHONPATH": f"{tmp_path}:{os.environ['PYTHONPATH']}"},
    )
    port = wait_listening(s.proc.pid)
    resp = raw_request(
        port,
        b"POST /echo?q=z HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert resp.startswith(b"HTTP/1.1 200 OK"), resp
    assert b'"body":"hello"' in resp.replace(b" ", b"") and b'"q":"z"' in resp.replace(b" ", b"")
    s.signal(signal.SIGINT)
    assert s.wait_exit(10) == 0


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_echo_example(mode):
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo.py"), "--workers", "3", "--mode", mode],
        capture_output=True, text=True, timeout=20, start_new_session=True,
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for i in (1, 2, 3):
        assert f"worker {i}: pong from worker {i}" in out
        assert f"worker {i} exited with code 0" in out
    assert out.count("heard b'hello' from worker") == 2
    assert out.count("sent an object") == 3
