"""Messages in both directions, worker to worker, objects and fds, in FORK and EXEC mode, with
the primary in this process."""

import os
from typing import Dict, List, Optional, Tuple

import pytest

import rcluster
from conftest import drive

MODES = ["fork", "exec"]


def ready_cluster(make_cluster, mode: str, n: int = 2):
    c = make_cluster(mode, workers=n)
    ready: List[int] = []
    c.on("ready", lambda wid: ready.append(wid))
    c.start()
    drive(c, lambda: len(ready) == n)
    return c, sorted(ready)


@pytest.mark.parametrize("mode", MODES)
def test_messages_both_ways(make_cluster, mode):
    c, ids = ready_cluster(make_cluster, mode)
    got: Dict[int, bytes] = {}
    c.on("message", lambda wid, data: got.__setitem__(wid, data))
    for wid in ids:
        c.send(wid, b"ping")
    drive(c, lambda: len(got) == 2)
    assert got == {wid: b"pong:%d" % wid for wid in ids}
    info = {w.id: w for w in c.workers()}
    assert set(info) == set(ids)
    for wid in ids:
        assert info[wid].state == rcluster.WorkerState.READY
        assert info[wid].messages_in >= 1 and info[wid].messages_out >= 1
        assert info[wid].pid > 0 and info[wid].pid != os.getpid()
    stats = c.stats()
    assert stats["total"]["workers"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_broadcast(make_cluster, mode):
    c, ids = ready_cluster(make_cluster, mode)
    got: List[Tuple[int, bytes]] = []
    c.on("message", lambda wid, data: got.append((wid, data)))
    assert c.broadcast(b"ping") == 2
    drive(c, lambda: len(got) == 2)
    assert sorted(got) == [(wid, b"pong:%d" % wid) for wid in ids]


@pytest.mark.parametrize("mode", MODES)
def test_worker_to_worker_relayed_with_true_sender(make_cluster, mode):
    c, (a, b) = ready_cluster(make_cluster, mode)
    got: List[Tuple[int, bytes]] = []
    c.on("message", lambda wid, data: got.append((wid, data)))
    c.send(a, b"relay:%d" % b)
    c.send(b, b"relay:%d" % a)
    drive(c, lambda: len(got) == 2)
    assert sorted(got) == sorted(
        [(b, b"got:hello from %d:from:%d" % (a, a)), (a, b"got:hello from %d:from:%d" % (b, b))]
    )


@pytest.mark.parametrize("mode", MODES)
def test_send_obj_and_object_event(make_cluster, mode):
    c, ids = ready_cluster(make_cluster, mode)
    objs: List[Tuple[int, object]] = []
    raw: List[bytes] = []
    c.on("object", lambda wid, obj: objs.append((wid, obj)))
    c.on("message", lambda wid, data: raw.append(data))
    payload = {"n": [1, 2, 3], "t": (4, "five"), "b": b"\x00\xff", "big": "x" * 200_000}
    c.send_obj(ids[0], payload)
    assert c.broadcast_obj({"all": True}) == 2
    c.send(ids[1], b"ping")  # raw bytes stay raw even with an "object" handler
    drive(c, lambda: len(objs) == 3 and len(raw) == 1)
    assert (ids[0], {"echo": payload, "id": ids[0], "sender": 0}) in objs
    for wid in ids:
        assert (wid, {"echo": {"all": True}, "id": wid, "sender": 0}) in objs
    assert raw == [b"pong:%d" % ids[1]]


@pytest.mark.parametrize("mode", MODES)
def test_fd_passing_both_ways(make_cluster, mode):
    c, ids = ready_cluster(make_cluster, mode)
    done: List[bytes] = []
    passed: List[Tuple[int, bytes, Optional[int]]] = []

    @c.on("message")
    def on_message(wid: int, data: bytes, fd: Optional[int]) -> None:
        if data == b"here":
            assert fd is not None
            try:
                passed.append((wid, os.read(fd, 100), fd))
            finally:
                os.close(fd)
        else:
            assert fd is None
            done.append(data)

    # primary -> worker: the worker writes into our pipe
    r, w = os.pipe()
    try:
        c.send(ids[0], b"fd", fd=w)
        os.close(w)
        w = -1
        drive(c, lambda: done == [b"fd-done:%d" % ids[0]])
        assert os.read(r, 100) == b"written by %d" % ids[0]
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    # worker -> primary: a pipe made in the worker
    c.send(ids[1], b"give-fd")
    drive(c, lambda: len(passed) == 1)
    assert passed[0][:2] == (ids[1], b"from worker %d" % ids[1])


def test_fd_closed_when_no_handler_takes_it(make_cluster):
    c, ids = ready_cluster(make_cluster, "fork", n=1)
    got: List[bytes] = []
    c.on("message", lambda wid, data: got.append(data))  # two arguments: never sees the fd
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        c.send(ids[0], b"give-fd")
    drive(c, lambda: len(got) == 20)
    after = set(os.listdir("/proc/self/fd"))
    assert len(after - before) <= 1, after - before  # no fd leaked per message


def test_worker_leaves_on_its_own(make_cluster):
    c, ids = ready_cluster(make_cluster, "exec", n=1)
    exits: List[Tuple[int, int, int, bool]] = []
    c.on("exit", lambda wid, code, sig, asked: exits.append((wid, code, sig, asked)))
    c.send(ids[0], b"bye")
    drive(c, lambda: len(exits) == 1)
    assert exits == [(ids[0], 0, 0, True)]
    assert c.worker_ids() == []


def test_scale_fork_kill_disconnect(make_cluster):
    c, ids = ready_cluster(make_cluster, "fork", n=1)
    ready: List[int] = []
    exits: Dict[int, Tuple[int, int, bool]] = {}
    c.on("ready", lambda wid: ready.append(wid))
    c.on("exit", lambda wid, code, sig, asked: exits.__setitem__(wid, (code, sig, asked)))
    new = c.fork()
    c.scale(3)
    drive(c, lambda: len(ready) == 2)
    assert new in ready and len(c.worker_ids()) == 3
    third = max(ready)
    c.kill(new, 9)
    c.disconnect(third)
    drive(c, lambda: new in exits and third in exits)
    assert exits[new] == (-1, 9, True)
    assert exits[third] == (0, 0, True)
    assert c.worker_ids() == ids


@pytest.mark.parametrize("mode", MODES)
def test_a_burst_reaches_handlers_of_every_arity_in_order(make_cluster, mode):
    """A loop turn's messages come through the batch path: a handler gets as many arguments as
    it takes, in order, none lost."""
    c, (a, _) = ready_cluster(make_cluster, mode)
    senders: List[int] = []
    c.on("message", lambda wid: senders.append(wid))  # takes only the sender
    c.send(a, b"burst:300")
    drive(c, lambda: len(senders) == 300)
    assert senders == [a] * 300
    c.off("message")
    full: List[Tuple[int, bytes, Optional[int]]] = []
    c.on("message", lambda *args: full.append(args))  # takes everything
    c.send(a, b"burst:300")
    drive(c, lambda: len(full) == 300)
    assert full == [(a, b"%d" % i, None) for i in range(300)]


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_in_a_burst_surfaces_and_the_rest_is_delivered(make_cluster, mode):
    c, (a, _) = ready_cluster(make_cluster, mode)
    got: List[bytes] = []

    def on_message(wid: int, data: bytes) -> None:
        got.append(data)
        if data == b"5":
            raise ValueError("boom at 5")

    c.on("message", on_message)
    c.send(a, b"burst:100")
    with pytest.raises(ValueError, match="boom at 5"):
        drive(c, lambda: len(got) == 100)
    drive(c, lambda: len(got) == 100)
    assert got == [b"%d" % i for i in range(100)]

