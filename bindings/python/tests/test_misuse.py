"""Misuse from Python: the wrong role, None and wrong types for every argument kind, bad fds,
calls before the start and after the end, a second start, calls from a process forked with
os.fork() (from the primary and from a worker), and handlers that call back into the loop.
Each gives a documented exception (README "Misuse"), never a crash or a hang, and the cluster
still works afterwards. The worker-side checks run in tests/scripts/misuse_worker.py and come
back by message (or, after the end, in a file); this process holds the expectations."""

import asyncio
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import rcluster
import rcluster.aio
from rcluster import _lib
from conftest import SCRIPTS, children, drive

MODES = ["fork", "exec"]
STATE, ROLE, CLOSED, INVAL, SYS, NOWORKER = (
    f"ClusterError:{n}" for n in ("CLUSTER_E_STATE", "CLUSTER_E_ROLE", "CLUSTER_E_CLOSED", "CLUSTER_E_INVAL", "CLUSTER_E_SYS", "CLUSTER_E_NOWORKER")
)

# ---- helpers ----


def outcome(fn: Callable[[], Any]) -> str:
    """What calling `fn` gives, as misuse_worker.outcome says it."""
    import misuse_worker

    return misuse_worker.outcome(fn)


def cluster_calls(c: rcluster.Cluster) -> Dict[str, Callable[[], Any]]:
    import misuse_worker

    return misuse_worker.primary_calls(c)


class Peer:
    """A cluster of misuse_worker.py workers, with what they said."""

    def __init__(self, clusters: List[rcluster.Cluster], mode: str, out_dir: Path, workers: int = 1, **kw: Any) -> None:
        import misuse_worker

        kw.setdefault("grace_ms", 3000)
        if mode == "exec":
            kw.setdefault("exec_argv", [sys.executable, str(SCRIPTS / "misuse_worker.py"), str(out_dir)])
        self.c = rcluster.Cluster(workers, mode=mode, worker=lambda: misuse_worker.main(str(out_dir), self.c), **kw)
        clusters.append(self.c)
        self.out_dir = out_dir
        self.ready: List[int] = []
        self.got: List[Tuple[int, bytes]] = []
        self.exits: List[Tuple[int, int, int]] = []
        self.c.on("ready", lambda wid: self.ready.append(wid))
        self.c.on("message", lambda wid, data: self.got.append((wid, data)))
        self.c.on("exit", lambda wid, code, sig: self.exits.append((wid, code, sig)))

    def start(self, n: int = 1) -> None:
        self.c.start()
        drive(self.c, lambda: len(self.ready) >= n)

    def ask(self, wid: int, request: bytes, prefix: bytes, timeout: float = 15.0) -> bytes:
        """Sends `request` and returns the payload of the answer that starts with `prefix`."""
        self.c.send(wid, request)

        def answer() -> Optional[bytes]:
            for w, d in self.got:
                if w == wid and d.startswith(prefix):
                    return d[len(prefix) :]
            return None

        drive(self.c, lambda: answer() is not None, timeout)
        data = answer()
        assert data is not None
        self.got.remove((wid, prefix + data))
        return data

    def round_trip(self, wid: int) -> None:
        """The cluster still works: a message to worker `wid` comes back."""
        assert self.ask(wid, b"ping", b"pong:") == b"%d" % wid

    def stop(self) -> None:
        self.c.shutdown()
        drive(self.c, lambda: self.c.finished, 15)


def expect_all(got: Dict[str, str], expected: Dict[str, str]) -> None:
    wrong = {k: (got.get(k, "<missing>"), v) for k, v in expected.items() if got.get(k) != v}
    extra = sorted(set(got) - set(expected))
    assert not wrong and not extra, f"(got, expected): {wrong}; unexpected checks: {extra}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


def in_forked_child(fn: Callable[[], Dict[str, str]], timeout: float = 15.0) -> Dict[str, str]:
    """Runs `fn` in a child made with os.fork() from this process; returns what it reported
    (through a pipe). The child is reaped (killed first if it overstays)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            signal.setitimer(signal.ITIMER_REAL, timeout)  # the test's SIGALRM raises in here
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException as e:
            try:
                os.write(w, json.dumps({"child failed": repr(e)}).encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout + 5
    try:
        while time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
    report: Dict[str, str] = json.loads(data) if data else {}
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked child: status {status}, report {report}"
    return report


# ---- the primary, before any start ----


def test_every_call_before_start_is_E_STATE():
    c = rcluster.Cluster(1, mode="exec", exec_argv=[sys.executable, "-c", "pass"])
    calls = cluster_calls(c)
    del calls["start"], calls["run"]  # they start it
    got = {name: outcome(fn) for name, fn in calls.items()}
    expect_all(got, {name: STATE for name in calls})
    assert not c.started and not c.finished and children(os.getpid()) == []


def test_worker_only_calls_in_the_primary_are_E_ROLE():
    with pytest.raises(rcluster.ClusterError) as ei:
        rcluster.Worker()
    assert ei.value.code == rcluster.E_ROLE and "worker processes" in ei.value.message
    cb = _lib.EVENT_CB(lambda ud, ev: None)
    for fn in (lambda: _lib.cdll.cluster_worker_start(cb, None), _lib.cdll.cluster_ready, _lib.cdll.cluster_conn_done):
        with pytest.raises(rcluster.ClusterError) as ei:
            _lib.check(fn())
        assert ei.value.code == rcluster.E_ROLE and ei.value.message
    assert rcluster.is_primary() and not rcluster.is_worker() and rcluster.worker_id() == 0


BAD_CONSTRUCTOR: List[Tuple[Dict[str, Any], type]] = [
    ({"workers": None}, TypeError),
    ({"workers": -1}, ValueError),
    ({"workers": 2**32}, ValueError),
    ({"workers": "2"}, TypeError),
    ({"workers": 1.5}, TypeError),
    ({"mode": None}, ValueError),
    ({"mode": "spawn"}, ValueError),
    ({"policy": None}, TypeError),
    ({"policy": "random"}, ValueError),
    ({"policy": -1}, ValueError),
    ({"mode": "fork", "worker": None}, ValueError),
    ({"worker": 5}, TypeError),
    ({"listen": None}, TypeError),
    ({"listen": "127.0.0.1:80"}, TypeError),
    ({"listen": [None]}, TypeError),
    ({"listen": [5]}, TypeError),
    ({"listen": [("127.0.0.1",)]}, ValueError),
    ({"listen": [(None, 0)]}, TypeError),
    ({"listen": [("127.0.0.1", None)]}, TypeError),
    ({"listen": [("127.0.0.1", "80")]}, TypeError),
    ({"listen": [("127.0.0.1", -1)]}, ValueError),
    ({"listen": [("127.0.0.1", 70000)]}, ValueError),
    ({"listen": [("127.0.0.1\0evil", 0)]}, ValueError),
    ({"listen": ["/tmp/rcluster-misuse\0.sock"]}, ValueError),
    ({"grace_ms": None}, TypeError),
    ({"grace_ms": -1}, ValueError),
]

BAD_OPTIONS: List[Tuple[Dict[str, Any], Any]] = [
    ({"max_message": -1}, ValueError),
    ({"max_message": "big"}, TypeError),
    ({"max_message": 0}, rcluster.E_INVAL),  # the library's own check
    ({"restart": "yes"}, TypeError),
    ({"backoff": (1, 2)}, TypeError),
    ({"backoff": (1, 2, -3)}, ValueError),
    ({"crash_loop": "5"}, TypeError),
    ({"min_uptime": -1}, ValueError),
    ({"min_uptime": "1s"}, TypeError),
    ({"heartbeat": -1}, ValueError),
    ({"heartbeat": "x"}, TypeError),
    ({"heartbeat": (1000, None)}, TypeError),
    ({"startup_timeout": -5}, ValueError),
    ({"max_requests": (-1, 0)}, ValueError),
    ({"manual_ready": None}, None),  # None means "the default": fine
    ({"manual_ready": 2}, TypeError),
    ({"send_queue": (-1, 16)}, ValueError),
    ({"send_queue": (0, 16)}, rcluster.E_INVAL),
    ({"user": (None, 0)}, TypeError),
    ({"groups": [-1]}, ValueError),
    ({"groups": "wheel"}, TypeError),
    ({"cwd": 5}, TypeError),
    ({"cwd": "/tmp\0x"}, ValueError),
    ({"env": {"A": None}}, TypeError),
    ({"env": {"A=B": "c"}}, ValueError),
    ({"env": [("A", "b")]}, TypeError),
    ({"silent": "no"}, TypeError),
    ({"exec_argv": "python3"}, TypeError),
    ({"exec_argv": []}, ValueError),
    ({"exec_argv": [None]}, TypeError),
    ({"unix_mode": -1, "listen": ["/tmp/rcluster-misuse-unused.sock"]}, ValueError),
]


def test_bad_arguments_to_the_constructor_and_start(clusters, tmp_path):
    base = {"workers": 1, "mode": "exec", "exec_argv": [sys.executable, str(SCRIPTS / "misuse_worker.py"), str(tmp_path)]}
    for kw, exc in BAD_CONSTRUCTOR:
        args = {**base, **kw}
        if args.get("mode") == "fork" and "worker" not in args:
            args["worker"] = lambda: 0
        with pytest.raises(exc):
            rcluster.Cluster(args.pop("workers"), **args)
    for kw, want in BAD_OPTIONS:
        c = rcluster.Cluster(**{**base, **kw})
        clusters.append(c)
        if want is None:
            c.start()
            c.shutdown(0)
            drive(c, lambda: c.finished)
            continue
        if isinstance(want, int):
            with pytest.raises(rcluster.ClusterError) as ei:
                c.start()
            assert ei.value.code == want and ei.value.message, kw
        else:
            with pytest.raises(want):
                c.start()
        # Nothing was started: no runtime, no child, and this object can be told so.
        assert not c.started, kw
        assert children(os.getpid()) == [], kw
        with pytest.raises(rcluster.ClusterError) as ei:
            c.port(0)
        assert ei.value.code == rcluster.E_STATE
    # A good cluster still starts after all those refusals, and works.
    p = Peer(clusters, "exec", tmp_path)
    p.start()
    p.round_trip(1)


# ---- a running primary ----


def closed_socket() -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.close()
    return s


def closed_file() -> Any:
    f = open(os.devnull, "rb")
    f.close()
    return f


def bad_primary_calls(c: rcluster.Cluster) -> Dict[str, Tuple[Callable[[], Any], str]]:
    return {
        "send.to_none": (lambda: c.send(None, b"x"), "TypeError"),  # type: ignore[arg-type]
        "send.to_negative": (lambda: c.send(-1, b"x"), "ValueError"),
        "send.to_2**32+1": (lambda: c.send(2**32 + 1, b"ping"), "ValueError"),  # not worker 1
        "send.to_self": (lambda: c.send(0, b"x"), INVAL),
        "send.to_nobody": (lambda: c.send(99, b"x"), NOWORKER),
        "send.data_none": (lambda: c.send(1, None), "TypeError"),
        "send.data_str": (lambda: c.send(1, "ping"), "TypeError"),
        "send.data_int": (lambda: c.send(1, 5), "TypeError"),
        "send.fd_closed": (lambda: c.send(1, b"x", fd=closed_fd()), SYS),
        "send.fd_negative": (lambda: c.send(1, b"x", fd=-1), "ValueError"),
        "send.fd_huge": (lambda: c.send(1, b"x", fd=2**31 - 1), SYS),
        "send.fd_2**31": (lambda: c.send(1, b"x", fd=2**31), "ValueError"),
        "send.fd_2**40": (lambda: c.send(1, b"ping", fd=2**40), "ValueError"),  # not fd 0
        "send.fd_str": (lambda: c.send(1, b"x", fd="0"), "TypeError"),
        "send.fd_float": (lambda: c.send(1, b"x", fd=0.0), "TypeError"),
        "send.fd_bool": (lambda: c.send(1, b"x", fd=True), "TypeError"),
        "send.fd_closed_socket": (lambda: c.send(1, b"x", fd=closed_socket()), "ValueError"),
        "send.fd_closed_file": (lambda: c.send(1, b"x", fd=closed_file()), "ValueError"),
        "send_obj.to_none": (lambda: c.send_obj(None, 1), "TypeError"),
        "broadcast.none": (lambda: c.broadcast(None), "TypeError"),
        "broadcast_obj.unpicklable": (lambda: c.broadcast_obj(lambda: 0), "PicklingError|AttributeError"),
        "port.none": (lambda: c.port(None), "TypeError"),
        "port.negative": (lambda: c.port(-1), "ValueError"),
        "port.no_such_listener": (lambda: c.port(7), INVAL),
        "kill.none": (lambda: c.kill(None), "TypeError"),
        "kill.sig_none": (lambda: c.kill(1, None), "TypeError"),
        "kill.sig_str": (lambda: c.kill(1, "SIGTERM"), "TypeError"),
        "kill.sig_1000": (lambda: c.kill(1, 1000), INVAL),
        "kill.sig_negative": (lambda: c.kill(1, -1), INVAL),
        "kill.nobody": (lambda: c.kill(99), NOWORKER),
        "worker_info.none": (lambda: c.worker_info(None), "TypeError"),
        "worker_info.nobody": (lambda: c.worker_info(99), NOWORKER),
        "disconnect.none": (lambda: c.disconnect(None), "TypeError"),
        "disconnect.nobody": (lambda: c.disconnect(99), NOWORKER),
        "scale.none": (lambda: c.scale(None), "TypeError"),
        "scale.negative": (lambda: c.scale(-1), "ValueError"),
        "scale.too_many": (lambda: c.scale(100000), INVAL),
        "shutdown.str": (lambda: c.shutdown("now"), "TypeError"),
        "shutdown.negative": (lambda: c.shutdown(-1), "ValueError"),
        "dispatch.none": (lambda: c.dispatch(None), "TypeError"),
        "dispatch.2**31": (lambda: c.dispatch(2**31), "ValueError"),
        "on.none": (lambda: c.on("ready", None), "TypeError"),
        "on.unknown": (lambda: c.on("nope", print), "ValueError"),
        "on.event_none": (lambda: c.on(None, print), "ValueError"),
        "on.too_many_args": (lambda: c.on("ready", lambda a, b, c_: None), "TypeError"),
    }


#: Values of every wrong kind for an argument (none of them a valid id, count, signal, data or fd).
BAD_VALUES: List[Any] = [None, "x", "", 1.5, float("nan"), -(2**31) - 1, 2**64, True, [], {}, object(), print]


def test_every_argument_of_every_wrong_kind(clusters, tmp_path):
    """Each argument of each call, one at a time, gets every wrong kind of value; the others are
    valid but make the call fail anyway (no such worker or listener), so nothing acts on the
    cluster. Only TypeError, ValueError or the library's own error may come out."""
    p = Peer(clusters, "fork", tmp_path)
    c = p.c
    p.start()
    calls: Dict[str, Tuple[Callable[..., Any], List[Any]]] = {
        "send": (c.send, [99, b"x", None]),
        "send_fd": (lambda to, fd: c.send(to, b"x", fd=fd), [99, 0]),
        "send_obj": (c.send_obj, [99, 1]),
        "kill": (c.kill, [99, 0]),
        "disconnect": (c.disconnect, [99]),
        "worker_info": (c.worker_info, [99]),
        "port": (c.port, [7]),
        "scale": (c.scale, [100000]),
        "on": (c.on, ["nope", print]),
    }
    seen: Dict[str, List[str]] = {}
    for name, (fn, good) in calls.items():
        outcomes = set()
        for i in range(len(good)):
            for bad in BAD_VALUES:
                args = list(good)
                args[i] = bad
                outcomes.add(outcome(lambda: fn(*args)))
        seen[name] = sorted(outcomes)
    allowed = {"TypeError", "ValueError", NOWORKER, INVAL}
    assert all(set(v) <= allowed for v in seen.values()), seen
    assert seen["send"] == sorted({"TypeError", "ValueError", NOWORKER}), seen["send"]  # None is "no fd"
    assert c.worker_ids() == [1] and c.worker_info(1).messages_in == 0 and p.got == []
    p.round_trip(1)


@pytest.mark.parametrize("mode", MODES)
def test_misuse_in_a_running_primary(clusters, tmp_path, mode):
    p = Peer(clusters, mode, tmp_path)
    c = p.c
    p.start()
    fds = open_fds()
    # Bad arguments: each refused with its own exception, before anything reaches a worker.
    results = {}
    for name, (fn, want) in bad_primary_calls(c).items():
        got = outcome(fn)
        results[name] = got if got in want.split("|") else f"{got} (expected {want})"
    assert all("expected" not in v for v in results.values()), {k: v for k, v in results.items() if "expected" in v}
    # A second start, of this object or of another one: E_STATE, and the other one is not
    # started (its calls do not reach this cluster).
    with pytest.raises(rcluster.ClusterError) as ei:
        c.start()
    assert ei.value.code == rcluster.E_STATE
    other = rcluster.Cluster(1, mode="exec", exec_argv=[sys.executable, "-c", "pass"])
    with pytest.raises(rcluster.ClusterError) as ei:
        other.start()
    assert ei.value.code == rcluster.E_STATE and "already started" in ei.value.message
    assert not other.started
    for name, fn in cluster_calls(other).items():
        if name not in ("start", "run"):
            assert outcome(fn) == STATE, name
    # Worker-only calls in the running primary.
    with pytest.raises(rcluster.ClusterError) as ei:
        rcluster.Worker()
    assert ei.value.code == rcluster.E_ROLE
    assert outcome(lambda: _lib.check(_lib.cdll.cluster_ready())) == ROLE
    # None of that hurt: the worker is the same one, ready, it got nothing of the refused
    # sends (the next answer is to this ping), and no descriptor leaked.
    assert c.worker_ids() == [1]
    info = c.worker_info(1)
    assert info.state == rcluster.WorkerState.READY and info.messages_in == 0
    p.round_trip(1)
    assert c.worker_info(1).messages_in == 1
    assert p.got == [] and p.exits == []
    assert open_fds() == fds, "a refused call leaked a descriptor"

    # The worker's side: before its start, primary-only calls, bad arguments, re-entering its
    # loop from its handler, a second start; then it still works.
    got = json.loads(p.ask(1, b"checks", b"checks:"))
    import misuse_worker

    expected = {f"before_start.{n}": STATE for n in ("send", "send_obj", "broadcast", "broadcast_obj", "ready", "conn_done", "shutdown")}
    expected.update({"before_start.raw_send": STATE, "before_start.raw_dispatch": STATE})
    expected.update({f"role.cluster.{n}": ROLE for n in misuse_worker.primary_calls(c)})
    expected["role.new_cluster_start"] = ROLE
    expected.update(
        {f"role.raw.{n}": ROLE for n in ("primary_start", "fork", "workers", "worker_kill", "worker_disconnect", "scale", "reload")}
    )
    # A worker has ports too (listeners it listens on, SHARED/REUSEPORT sockets): not this one.
    expected["role.raw.local_port"] = "ClusterError:CLUSTER_E_INVAL"
    expected.update(
        {
            "bad.send.to_none": "TypeError",
            "bad.send.to_str": "TypeError",
            "bad.send.to_float": "TypeError",
            "bad.send.to_negative": "ValueError",
            "bad.send.to_2**32": "ValueError",
            "bad.send.to_self": INVAL,
            "bad.send.to_broadcast_id": INVAL,
            "bad.send.data_none": "TypeError",
            "bad.send.data_str": "TypeError",
            "bad.send.fd_closed": SYS,
            "bad.send.fd_negative": "ValueError",
            "bad.send.fd_huge": SYS,
            "bad.send.fd_2**31": "ValueError",
            "bad.send.fd_2**40": "ValueError",
            "bad.send.fd_str": "TypeError",
            "bad.send.fd_bool": "TypeError",
            "bad.send.fd_closed_socket": "ValueError",
            "bad.broadcast.none": "TypeError",
            "bad.on.none": "TypeError",
            "bad.on.unknown": "ValueError",
            "bad.dispatch.none": "TypeError",
            "bad.dispatch.2**31": "ValueError",
            "reentry.dispatch": STATE,
            "reentry.run": STATE,
            "reentry.start": "ok",  # started already: nothing to do
            "reentry.raw_dispatch": STATE,
            "reentry.raw_run": STATE,
            "double_start.new_worker": STATE,
            "double_start.raw": STATE,
        }
    )
    expect_all(got, expected)
    assert p.got == [], "a refused call in the worker sent something anyway"
    p.round_trip(1)
    assert c.worker_ids() == [1] and p.exits == []

    # The end: the worker leaves, calling shutdown() from inside its handler; its checks
    # after its runtime finished come in a file (no channel any more); then every call on the
    # finished Cluster.
    p.c.send(1, b"leave")
    drive(c, lambda: len(p.exits) == 1)
    assert p.exits == [(1, 0, 0)] and c.worker_ids() == []
    p.stop()
    after = json.loads((tmp_path / "after-1.json").read_text())
    expect_all(
        after,
        {
            **{f"after.{n}": CLOSED for n in ("send", "send_obj", "broadcast", "broadcast_obj", "ready", "conn_done", "fileno")},
            "after.dispatch": "0",
            "after.run": "0",
            "after.shutdown": "ok",
            "after.start": "ok",
            "after.new_worker_start": STATE,
            "after.raw_send": CLOSED,
            "after.raw_dispatch": CLOSED,
            "after.raw_run": "ok",
            "after.is_worker": "True",
        },
    )
    check_finished_cluster(c)


def check_finished_cluster(c: rcluster.Cluster) -> None:
    got = {name: outcome(fn) for name, fn in cluster_calls(c).items()}
    expected = {name: CLOSED for name in got}
    expected.update({"start": STATE, "shutdown": "ok", "dispatch": "0", "run": "0"})
    expect_all(got, expected)


def test_a_finished_cluster_never_touches_the_next_one(clusters, tmp_path):
    first = Peer(clusters, "exec", tmp_path / "1")
    (tmp_path / "1").mkdir()
    first.start()
    first.stop()
    second = Peer(clusters, "exec", tmp_path)
    second.start()
    # Worker 1 and listener 0 exist again, in the second cluster: the first one's calls must
    # not reach them (and its shutdown must not stop it).
    check_finished_cluster(first.c)
    assert asyncio.run(rcluster.aio.run(first.c, handle_signals=False)) == 0  # at once
    assert second.c.worker_ids() == [1] and second.c.worker_info(1).messages_in == 0
    second.round_trip(1)
    assert not second.c.finished


# ---- handlers that call back in ----


@pytest.mark.parametrize("mode", MODES)
def test_handlers_that_call_back_into_the_loop(clusters, tmp_path, mode):
    p = Peer(clusters, mode, tmp_path)
    c = p.c
    nested: Dict[str, str] = {}
    events: List[str] = []
    leaked: List[int] = []
    # A SIGHUP handler of the program's own: while run() runs, SIGHUP must reach run()'s (a
    # reload), even after a nested run() was refused; afterwards this one is back.
    old_hup = signal.signal(signal.SIGHUP, lambda signum, frame: leaked.append(signum))
    try:

        @c.on("ready")
        def on_ready(wid: int) -> None:
            events.append(f"ready {wid}")
            if not nested:
                nested["dispatch"] = outcome(lambda: c.dispatch(0))
                nested["dispatch_blocking"] = outcome(lambda: c.dispatch(-1))
                nested["run"] = outcome(c.run)
                nested["start"] = outcome(c.start)
                nested["raw_dispatch"] = outcome(lambda: _lib.check(_lib.cdll.cluster_dispatch(0)))
                nested["raw_run"] = outcome(lambda: _lib.check(_lib.cdll.cluster_run()))
                nested["worker_ids"] = repr(c.worker_ids())
                nested["fork"] = repr(c.fork())  # from a handler: fine (FORK mode forks right here)
            elif wid == 2:
                c.send(2, b"ping")

        @c.on("message")
        def on_message(wid: int, data: bytes) -> None:
            events.append(f"message {wid} {data.decode()}")
            if data == b"pong:2":
                os.kill(os.getpid(), signal.SIGHUP)  # run() turns it into a reload

        @c.on("reloaded")
        def on_reloaded(ok: bool, text: Optional[str]) -> None:
            events.append(f"reloaded {ok}")
            c.shutdown(0)  # from a handler: run() returns once the cluster is down

        assert c.run() == 0
        assert leaked == [], "a SIGHUP during run() reached the program's handler, not run()'s"
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not leaked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leaked == [signal.SIGHUP], "run() did not restore the program's SIGHUP handler"
    finally:
        signal.signal(signal.SIGHUP, old_hup)
    assert nested == {
        "dispatch": STATE,
        "dispatch_blocking": STATE,
        "run": STATE,
        "start": STATE,
        "raw_dispatch": STATE,
        "raw_run": STATE,
        "worker_ids": "[1]",
        "fork": "2",
    }
    assert events[:3] == ["ready 1", "ready 2", "message 2 pong:2"], events
    assert "reloaded True" in events and c.finished


@pytest.mark.parametrize("mode", MODES)
def test_a_log_handler_that_calls_back_gets_E_STATE(clusters, tmp_path, mode):
    """The library logs with its runtime lock held: a logging handler that calls rcluster gets
    ClusterError E_STATE, never a deadlock."""
    p = Peer(clusters, mode, tmp_path, backoff=(50, 100, 1000))
    c = p.c
    p.start()
    seen: List[str] = []

    class CallsBack(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(outcome(c.worker_ids))

    logger = logging.getLogger("rcluster")
    handler = CallsBack()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        os.kill(c.worker_info(1).pid, signal.SIGKILL)  # the restart is logged from inside dispatch
        drive(c, lambda: len(p.ready) == 2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert STATE in seen and all(s == STATE or s.startswith("[") for s in seen), seen
    p.round_trip(2)


# ---- processes forked with os.fork() ----


@pytest.mark.parametrize("mode", MODES)
def test_a_process_forked_from_the_running_primary(clusters, tmp_path, mode):
    p = Peer(clusters, mode, tmp_path)
    c = p.c
    p.start()
    c.send(1, b"ping-later")  # answered in 0.3 s: a child that dispatched would steal it

    def child() -> Dict[str, str]:
        out = {name: outcome(fn) for name, fn in cluster_calls(c).items()}
        out["kill9"] = outcome(lambda: c.kill(1, 9))
        out["is_primary"] = repr(rcluster.is_primary())
        out["is_worker"] = repr(rcluster.is_worker())
        out["worker_id"] = repr(rcluster.worker_id())
        out["new_worker"] = outcome(rcluster.Worker)
        out["new_cluster_start"] = outcome(lambda: rcluster.Cluster(1, mode="exec", exec_argv=[sys.executable, "-c", "pass"]).start())
        return out

    got = in_forked_child(child)
    expected = {name: STATE for name in cluster_calls(c)}
    expected.update(
        {"kill9": STATE, "is_primary": "False", "is_worker": "False", "worker_id": "0", "new_worker": STATE, "new_cluster_start": STATE}
    )
    expect_all(got, expected)
    # The parent's cluster is untouched: its answer arrives here, its worker lives.
    drive(c, lambda: (1, b"pong-later:1") in p.got)
    assert c.worker_ids() == [1] and c.worker_info(1).state == rcluster.WorkerState.READY
    assert p.exits == []
    p.round_trip(1)
    p.stop()

    # Once the cluster has finished, a fork is an ordinary process: it may start its own.
    def after() -> Dict[str, str]:
        mine = rcluster.Cluster(1, mode="exec", exec_argv=[sys.executable, str(SCRIPTS / "msg_worker.py")], grace_ms=2000)
        ready: List[int] = []
        mine.on("ready", lambda wid: ready.append(wid))
        mine.start()
        while not ready:
            mine.dispatch(50)
        mine.shutdown(0)
        while not mine.finished:
            mine.dispatch(50)
        return {"is_primary": repr(rcluster.is_primary()), "ready": repr(ready), "old": outcome(lambda: c.send(1, b"x"))}

    assert in_forked_child(after) == {"is_primary": "True", "ready": "[1]", "old": CLOSED}


@pytest.mark.parametrize("mode", MODES)
def test_a_grandchild_forked_from_a_worker(clusters, tmp_path, mode):
    p = Peer(clusters, mode, tmp_path)
    c = p.c
    p.start()
    got = json.loads(p.ask(1, b"grandchild", b"grandchild:"))
    w_calls = ("send", "send_obj", "broadcast", "broadcast_obj", "ready", "conn_done", "fileno", "dispatch", "run", "shutdown", "start")
    expected = {f"grandchild.{n}": STATE for n in w_calls}
    expected.update(
        {
            "grandchild.is_worker": "False",
            "grandchild.is_primary": "False",
            "grandchild.worker_id": "0",
            "grandchild.w.id": "0",
            "grandchild.new_worker": STATE,
            "grandchild.new_cluster_start": STATE,
        }
    )
    if mode == "fork":
        expected["grandchild.inherited_cluster.send"] = STATE
    expect_all(got, expected)
    # Nothing of the grandchild reached the primary, and the worker (whose shutdown the
    # grandchild tried) still serves.
    assert p.got == []
    p.round_trip(1)
    assert c.worker_ids() == [1] and c.worker_info(1).state == rcluster.WorkerState.READY and p.exits == []


def test_the_c_abi_in_a_grandchild_forked_from_a_worker(clusters, tmp_path):
    p = Peer(clusters, "fork", tmp_path)
    p.start()
    got = json.loads(p.ask(1, b"grandchild-raw", b"grandchild-raw:"))
    p.round_trip(1)  # anything the grandchild sent came before this answer
    assert all(not d.startswith(b"raw from grandchild") for _, d in p.got), p.got
    assert got == {"raw.is_worker": "False", "raw.send": STATE}
