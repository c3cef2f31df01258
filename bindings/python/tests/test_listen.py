"""Workers that listen (Worker.listen / listen_unix), the "listening" event, fork(env=...)."""

import signal
import socket

import pytest

from conftest import http_body, http_get


def unix_get(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        out = b""
        while True:
            b = s.recv(4096)
            if not b:
                return out
            out += b


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_workers_that_listen_share_one_port_and_fork_env(script, mode, tmp_path):
    path = str(tmp_path / "w.sock")
    s = script("listen_cluster.py", mode, "2", path)
    forked = int(s.wait_prefix("forked")[1])
    tcp, unix = {}, {}
    for _ in range(6):  # 3 workers, 2 keys each
        _, wid, address, listener = s.wait_prefix("listening")
        (unix if address == path else tcp)[int(wid)] = (address, int(listener))
    assert set(tcp) == set(unix) == {1, 2, forked}
    assert len(set(tcp.values())) == 1, tcp  # one listener, one port, for every worker
    assert len(set(unix.values())) == 1, unix
    address, index = next(iter(tcp.values()))
    assert index != next(iter(unix.values()))[1]
    port = int(address.rsplit(":", 1)[1])
    bodies = [http_body(http_get(port)).split() for _ in range(9)]
    assert {int(b[1]) for b in bodies} == {1, 2, forked}  # round robin over all three
    assert all(int(b[5]) == port for b in bodies)  # Worker.port() in the worker agrees
    greetings = {int(b[1]): b[3] for b in bodies}
    assert greetings == {1: b"-", 2: b"-", forked: b"hello"}
    assert http_body(unix_get(path)).startswith(b"worker ")
    s.signal(signal.SIGTERM)
    assert s.wait_exit() == 0
