"""Connections served by workers: HTTP through the handoff, graceful SIGTERM, SIGHUP reload."""

import os
import signal
import threading
import time
from typing import List

import pytest

from conftest import drive, http_body, http_get, wait_gone


def test_http_exec_mode_in_process_with_client_thread(make_cluster):
    c = make_cluster("exec", workers=2, listen=[("127.0.0.1", 0)])
    ready: List[int] = []
    c.on("ready", lambda wid: ready.append(wid))
    c.start()
    drive(c, lambda: len(ready) == 2)
    port = c.port(0)
    bodies: List[bytes] = []
    failures: List[BaseException] = []

    def client() -> None:
        try:
            for _ in range(8):
                bodies.append(http_body(http_get(port)))
        except BaseException as e:
            failures.append(e)
        finally:
            c.shutdown(2000)  # from another thread: wakes the loop

    t = threading.Thread(target=client)
    t.start()
    try:
        assert c.run() == 0  # returns after the graceful stop
    finally:
        t.join(10)
    assert not failures, failures
    assert len(bodies) == 8
    ids = {int(b.split()[1]) for b in bodies}
    assert ids == {1, 2}  # round robin used both
    assert all(b"peer ('127.0.0.1', " in b for b in bodies)
    assert c.finished


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_http_and_graceful_sigterm_leaves_nothing(script, mode):
    s = script("http_cluster.py", mode, "3")
    port = int(s.wait_prefix("port")[1])
    pids = [int(s.wait_prefix("ready")[2]) for _ in range(3)]
    seen = set()
    for _ in range(6):
        body = http_body(http_get(port))
        assert body.startswith(b"worker ")
        seen.add(int(body.split()[1]))
    assert seen == {1, 2, 3}
    # a request in flight when SIGTERM comes is still answered
    result: List[bytes] = []
    t = threading.Thread(target=lambda: result.append(http_get(port, "/slow")))
    t.start()
    time.sleep(0.15)
    s.signal(signal.SIGTERM)
    t.join(10)
    assert result and http_body(result[0]).endswith(b"path /slow\n")
    assert s.wait_exit(10) == 0
    assert "done 0" in s.lines and "shutdown" in s.lines
    assert "Traceback" not in s.stderr()
    assert wait_gone(pids, 5) == []
    assert wait_gone([s.proc.pid], 5) == []


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_ctrl_c_to_the_process_group_is_graceful(script, mode):
    """A terminal's Ctrl-C reaches the primary and every worker: the primary stops gracefully,
    the workers leave gracefully (no KeyboardInterrupt), a request in flight is answered."""
    s = script("http_cluster.py", mode, "2")
    port = int(s.wait_prefix("port")[1])
    pids = [int(s.wait_prefix("ready")[2]) for _ in range(2)]
    result: List[bytes] = []
    t = threading.Thread(target=lambda: result.append(http_get(port, "/slow")))
    t.start()
    time.sleep(0.15)
    os.killpg(s.proc.pid, signal.SIGINT)
    t.join(10)
    assert result and http_body(result[0]).endswith(b"path /slow\n")
    assert s.wait_exit(10) == 0
    err = s.stderr()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert wait_gone(pids, 5) == []


def test_rolling_reload_on_sighup(script):
    s = script("http_cluster.py", "fork", "2")
    port = int(s.wait_prefix("port")[1])
    old = [s.wait_prefix("ready") for _ in range(2)]
    old_ids = {int(x[1]) for x in old}
    old_pids = [int(x[2]) for x in old]
    assert {int(http_body(http_get(port)).split()[3]) for _ in range(2)} == set(old_pids)
    s.signal(signal.SIGHUP)
    new = [s.wait_prefix("ready") for _ in range(2)]
    assert s.wait_prefix("reloaded") == ["reloaded", "True"]
    new_ids = {int(x[1]) for x in new}
    new_pids = [int(x[2]) for x in new]
    assert new_ids.isdisjoint(old_ids) and set(new_pids).isdisjoint(old_pids)
    assert wait_gone(old_pids, 5) == []
    seen = {int(http_body(http_get(port)).split()[1]) for _ in range(4)}
    assert seen == new_ids
    s.signal(signal.SIGTERM)
    assert s.wait_exit(10) == 0
    assert wait_gone(new_pids, 5) == []


@pytest.mark.parametrize("policy", ["shared", "least_connections"])
def test_policies_reach_the_worker_the_same_way(script, policy):
    s = script("http_cluster.py", "fork", "2", policy)
    port = int(s.wait_prefix("port")[1])
    for _ in range(2):
        s.wait_prefix("ready")
    for _ in range(4):
        assert http_body(http_get(port)).startswith(b"worker ")
    s.signal(signal.SIGINT)
    assert s.wait_exit(10) == 0


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_signal_handled_inside_the_log_callback_does_not_deadlock(script, mode):
    """The library calls the log callback with its runtime lock held; a SIGTERM whose Python
    handler runs right there must not call back into the library (it would deadlock)."""
    s = script("signal_in_log.py", mode)
    assert s.wait_exit(10) == 0
    assert s.lines == ["done 0"]


def test_unix_listener(make_cluster, tmp_path):
    import socket as s_

    path = tmp_path / "web.sock"
    c = make_cluster("fork", workers=1, listen=[str(path)], unix_mode=0o600)
    ready: List[int] = []
    c.on("ready", lambda wid: ready.append(wid))
    c.start()
    drive(c, lambda: ready == [1])
    assert (path.stat().st_mode & 0o777) == 0o600
    # FORK mode: this process stays single-threaded, so a non-blocking client, polled
    # between loop turns.
    with s_.socket(s_.AF_UNIX, s_.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setblocking(False)
        data = b""

        def done() -> bool:
            nonlocal data
            try:
                b = s.recv(4096)
            except BlockingIOError:
                return False
            if not b:
                return True
            data += b
            return False

        drive(c, done)
    assert http_body(data).startswith(b"worker 1 pid") and data.endswith(b"peer None\n")
