"""Errors: handler exceptions surface from run()/dispatch(), FORK mode refuses threads, result
codes become ClusterError with the library's sentence."""

import threading
import traceback
from typing import List

import pytest

import rcluster
from conftest import drive


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_exception_in_callback_surfaces_in_run(make_cluster, mode):
    c = make_cluster(mode, workers=1)
    calls: List[int] = []

    @c.on("ready")
    def exploding_ready_handler(worker_id: int) -> None:
        calls.append(worker_id)
        raise KeyError("kaboom")

    with pytest.raises(KeyError, match="kaboom") as ei:
        c.run()
    tb = "".join(traceback.format_tb(ei.value.__traceback__))
    assert "exploding_ready_handler" in tb
    assert calls == [1]
    assert not c.finished  # the cluster keeps running: the caller decides


def test_exceptions_are_queued_not_lost(make_cluster):
    c = make_cluster("fork", workers=2)

    @c.on("ready")
    def bad(worker_id: int) -> None:
        raise RuntimeError(f"ready {worker_id}")

    c.start()
    seen: List[str] = []
    while len(seen) < 2:
        try:
            c.dispatch(100)
        except RuntimeError as e:
            seen.append(str(e))
    assert sorted(seen) == ["ready 1", "ready 2"]


def test_exception_in_worker_callback_surfaces_in_worker_run(make_cluster):
    c = make_cluster("exec", workers=1)
    got: List[bytes] = []
    c.on("message", lambda wid, data: got.append(data))
    c.on("ready", lambda wid: c.send(wid, b"raise"))
    c.start()
    drive(c, lambda: len(got) == 1)
    assert got == [b"caught:boom in worker 1"]  # tests/scripts/msg_worker.py caught it from run()


def test_fork_mode_refused_with_threads():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(20,), name="sleepy")
    t.start()
    try:
        c = rcluster.Cluster(1, mode="fork", worker=lambda: 0)
        with pytest.raises(rcluster.ClusterError) as ei:
            c.start()
        assert ei.value.code == rcluster.E_THREADS
        assert 'mode="exec"' in str(ei.value) and "sleepy" in str(ei.value)
        assert not c.started
    finally:
        stop.set()
        t.join(5)


def test_exec_mode_works_with_threads(make_cluster):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(20,))
    t.start()
    try:
        c = make_cluster("exec", workers=1)
        ready: List[int] = []
        c.on("ready", lambda wid: ready.append(wid))
        c.start()
        drive(c, lambda: ready == [1])
    finally:
        stop.set()
        t.join(5)


def test_error_codes_and_sentences(clusters):
    with pytest.raises(rcluster.ClusterError) as ei:
        rcluster.Worker()
    assert ei.value.code == rcluster.E_ROLE
    c = rcluster.Cluster(1, mode="exec", listen=[("127.0.0.1", 0), ("256.1.2.3", 80)])
    clusters.append(c)
    with pytest.raises(rcluster.ClusterError) as ei:
        c.start()
    assert ei.value.code < 0 and "256.1.2.3" in ei.value.message
    with pytest.raises(rcluster.ClusterError) as ei:
        c.dispatch(0)
    assert ei.value.code == rcluster.E_STATE
    with pytest.raises(ValueError):
        rcluster.Cluster(1, mode="fork")  # no worker function
    with pytest.raises(ValueError):
        rcluster.Cluster(1, mode="exec", policy="random")
    with pytest.raises(ValueError, match="unknown event"):
        c.on("nope", print)
    with pytest.raises(TypeError, match="needs 3 arguments"):
        c.on("ready", lambda a, b, c: None)


def test_send_errors(make_cluster):
    c = make_cluster("exec", workers=1, max_message=1024)
    ready: List[int] = []
    c.on("ready", lambda wid: ready.append(wid))
    c.start()
    drive(c, lambda: ready == [1])
    with pytest.raises(rcluster.ClusterError) as ei:
        c.send(99, b"x")
    assert ei.value.code == rcluster.E_NOWORKER
    with pytest.raises(rcluster.ClusterError) as ei:
        c.send(1, b"x" * 2048)
    assert ei.value.code == rcluster.E_TOOBIG
    with pytest.raises(TypeError):
        c.send(1, "text")  # type: ignore[arg-type]
    with pytest.raises(rcluster.ClusterError) as ei:
        c.start()
    assert ei.value.code == rcluster.E_STATE


def test_library_refusal_keeps_its_sentence(clusters):
    """A thread Python does not know about (a C thread): the library refuses FORK mode with
    CLUSTER_E_THREADS, and the binding keeps its sentence and adds the Python hint."""
    import ctypes

    libc = ctypes.CDLL(None)
    start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(("usleep", libc))  # usleep(arg)
    tid = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(tid), None, start, ctypes.c_void_p(300_000)) == 0
    try:
        assert threading.active_count() == 1  # invisible to Python
        c = rcluster.Cluster(1, mode="fork", worker=lambda: 0)
        clusters.append(c)
        with pytest.raises(rcluster.ClusterError) as ei:
            c.start()
        assert ei.value.code == rcluster.E_THREADS
        assert "use EXEC mode" in ei.value.message  # the library's own sentence
        assert 'mode="exec"' in ei.value.message
    finally:
        libc.pthread_join(tid, None)


def test_fork_worker_exception_is_printed_and_exits_1(clusters, capfd):
    def bad_worker() -> int:
        raise ZeroDivisionError("worker function failed")

    c = rcluster.Cluster(1, mode="fork", worker=bad_worker, restart=False, grace_ms=1000)
    clusters.append(c)
    exits: List[tuple] = []
    c.on("exit", lambda wid, code, sig: exits.append((wid, code, sig)))
    c.start()
    drive(c, lambda: len(exits) == 1)
    assert exits == [(1, 1, 0)]
    err = capfd.readouterr().err
    assert "ZeroDivisionError: worker function failed" in err and "bad_worker" in err


def test_fork_worker_return_value_is_exit_code(clusters):
    c = rcluster.Cluster(2, mode="fork", worker=lambda: 7 if rcluster.worker_id() == 1 else None, restart=False)
    clusters.append(c)
    exits: List[tuple] = []
    c.on("exit", lambda wid, code: exits.append((wid, code)))
    c.start()
    drive(c, lambda: len(exits) == 2)
    assert sorted(exits) == [(1, 7), (2, 0)]
