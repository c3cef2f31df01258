"""The worker side of test_misuse.py. FORK mode: the test passes ``lambda: main(out_dir, c)``
(`c`: the primary's Cluster, which the forked worker inherits). EXEC mode: this file is the
program, ``misuse_worker.py OUT_DIR``.

Each check runs a call and records its outcome as a string: ``"ok"`` (or the value it
returned), ``"ClusterError:CLUSTER_E_*"``, or the exception's class name; the test holds the
expectations. Messages from the primary:

* b"ping" -> b"pong:<id>"; b"ping-later" -> sleeps 0.3 s, then b"pong-later:<id>";
* b"checks" -> the checks made before start() and in this handler (primary-only calls, bad
  arguments, bad fds, a second start, re-entering the loop from a handler), as
  b"checks:" + JSON;
* b"grandchild" -> forks with os.fork(); the grandchild tries the library through the binding
  and reports through a pipe: b"grandchild:" + JSON;
* b"grandchild-raw" -> the same with the C ABI itself (ctypes, no binding guard):
  b"grandchild-raw:" + JSON;
* b"leave" -> shutdown().

Once run() has returned (the runtime finished) the checks after the end go to
OUT_DIR/after-<id>.json (the channel is gone by then), and the worker exits 0.
"""

import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, Optional

import rcluster
from rcluster import _lib


def outcome(fn: Callable[[], Any]) -> str:
    """What calling `fn` gives, as a string."""
    try:
        value = fn()
    except rcluster.ClusterError as e:
        return f"ClusterError:{e.name}" + ("" if e.message else ":no-sentence")
    except Exception as e:  # the class is the result
        return type(e).__name__
    return "ok" if value is None else repr(value)


def raw(rc: int) -> None:
    """A C ABI result, checked like the binding does."""
    _lib.check(rc)


def primary_calls(p: "rcluster.Cluster") -> Dict[str, Callable[[], Any]]:
    """Every method of a Cluster, with good arguments."""
    return {
        "start": p.start,
        "port": lambda: p.port(0),
        "fork": p.fork,
        "worker_ids": p.worker_ids,
        "workers": p.workers,
        "worker_info": lambda: p.worker_info(1),
        "kill": lambda: p.kill(1, 0),
        "disconnect": lambda: p.disconnect(1),
        "reload": p.reload,
        "scale": lambda: p.scale(2),
        "stats": p.stats,
        "send": lambda: p.send(1, b"x"),
        "send_obj": lambda: p.send_obj(1, {"x": 1}),
        "broadcast": lambda: p.broadcast(b"x"),
        "shutdown": lambda: p.shutdown(0),
        "dispatch": lambda: p.dispatch(0),
        "run": p.run,
        "fileno": p.fileno,
    }


def worker_calls(w: "rcluster.Worker") -> Dict[str, Callable[[], Any]]:
    """Every call of a Worker that reaches the runtime, with good arguments."""
    return {
        "send": lambda: w.send(0, b"x"),
        "send_obj": lambda: w.send_obj(0, {"x": 1}),
        "broadcast": lambda: w.broadcast(b"x"),
        "broadcast_obj": lambda: w.broadcast_obj({"x": 1}),
        "ready": w.ready,
        "conn_done": w.conn_done,
        "fileno": w.fileno,
        "dispatch": lambda: w.dispatch(0),
        "run": w.run,
        "shutdown": w.shutdown,
        "start": w.start,
    }


def closed_fd() -> int:
    r, wr = os.pipe()
    os.close(r)
    os.close(wr)
    return r


def closed_socket() -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.close()
    return s


def new_exec_cluster() -> "rcluster.Cluster":
    return rcluster.Cluster(1, mode="exec", exec_argv=[sys.executable, "-c", "pass"])


def checks_before_start(w: "rcluster.Worker") -> Dict[str, str]:
    out = {f"before_start.{name}": outcome(fn) for name, fn in worker_calls(w).items() if name not in ("dispatch", "run", "fileno", "start")}
    out["before_start.raw_send"] = outcome(lambda: raw(_lib.cdll.cluster_send(0, b"x", 1)))
    out["before_start.raw_dispatch"] = outcome(lambda: raw(_lib.cdll.cluster_dispatch(0)))
    return out


def checks_in_handler(w: "rcluster.Worker", primary: Optional["rcluster.Cluster"]) -> Dict[str, str]:
    """Run from the message handler: so every call here is also a call from a callback."""
    out: Dict[str, str] = {}
    # Primary-only calls: the inherited Cluster (FORK) or a new one (EXEC), and the C ABI.
    p = primary if primary is not None else new_exec_cluster()
    for name, fn in primary_calls(p).items():
        out[f"role.cluster.{name}"] = outcome(fn)
    out["role.new_cluster_start"] = outcome(lambda: new_exec_cluster().start())
    cfg = _lib.cdll.cluster_config_new()
    try:
        out["role.raw.primary_start"] = outcome(lambda: raw(_lib.cdll.cluster_primary_start(cfg, w._cb, None)))
    finally:
        _lib.cdll.cluster_config_free(cfg)
    out["role.raw.fork"] = outcome(lambda: raw(_lib.cdll.cluster_fork()))
    out["role.raw.local_port"] = outcome(lambda: raw(_lib.cdll.cluster_local_port(0)))
    out["role.raw.workers"] = outcome(lambda: raw(_lib.cdll.cluster_workers(None, 0)))
    out["role.raw.worker_kill"] = outcome(lambda: raw(_lib.cdll.cluster_worker_kill(1, 0)))
    out["role.raw.worker_disconnect"] = outcome(lambda: raw(_lib.cdll.cluster_worker_disconnect(1)))
    out["role.raw.scale"] = outcome(lambda: raw(_lib.cdll.cluster_scale(2)))
    out["role.raw.reload"] = outcome(lambda: raw(_lib.cdll.cluster_reload()))
    # Bad arguments.
    me = w.id
    bad: Dict[str, Callable[[], Any]] = {
        "send.to_none": lambda: w.send(None, b"x"),  # type: ignore[arg-type]
        "send.to_str": lambda: w.send("0", b"x"),  # type: ignore[arg-type]
        "send.to_float": lambda: w.send(0.0, b"x"),  # type: ignore[arg-type]
        "send.to_negative": lambda: w.send(-1, b"x"),
        "send.to_2**32": lambda: w.send(2**32, b"x"),
        "send.to_self": lambda: w.send(me, b"x"),
        "send.to_broadcast_id": lambda: w.send(2**32 - 1, b"x"),
        "send.data_none": lambda: w.send(0, None),
        "send.data_str": lambda: w.send(0, "text"),
        "send.fd_closed": lambda: w.send(0, b"x", fd=closed_fd()),
        "send.fd_negative": lambda: w.send(0, b"x", fd=-1),
        "send.fd_huge": lambda: w.send(0, b"x", fd=2**31 - 1),
        "send.fd_2**31": lambda: w.send(0, b"x", fd=2**31),
        "send.fd_2**40": lambda: w.send(0, b"x", fd=2**40),
        "send.fd_str": lambda: w.send(0, b"x", fd="3"),  # type: ignore[arg-type]
        "send.fd_bool": lambda: w.send(0, b"x", fd=True),
        "send.fd_closed_socket": lambda: w.send(0, b"x", fd=closed_socket()),
        "broadcast.none": lambda: w.broadcast(None),
        "on.none": lambda: w.on("message", None),
        "on.unknown": lambda: w.on("nope", print),
        "dispatch.none": lambda: w.dispatch(None),  # type: ignore[arg-type]
        "dispatch.2**31": lambda: w.dispatch(2**31),
    }
    for name, fn in bad.items():
        out[f"bad.{name}"] = outcome(fn)
    # Re-entering the loop from a handler; a second start.
    out["reentry.dispatch"] = outcome(lambda: w.dispatch(0))
    out["reentry.run"] = outcome(w.run)
    out["reentry.start"] = outcome(w.start)
    out["reentry.raw_dispatch"] = outcome(lambda: raw(_lib.cdll.cluster_dispatch(0)))
    out["reentry.raw_run"] = outcome(lambda: raw(_lib.cdll.cluster_run()))
    out["double_start.new_worker"] = outcome(lambda: rcluster.Worker().start())
    out["double_start.raw"] = outcome(lambda: raw(_lib.cdll.cluster_worker_start(w._cb, None)))
    return out


def checks_after_end(w: "rcluster.Worker") -> Dict[str, str]:
    out = {f"after.{name}": outcome(fn) for name, fn in worker_calls(w).items()}
    out["after.new_worker_start"] = outcome(lambda: rcluster.Worker().start())
    out["after.raw_send"] = outcome(lambda: raw(_lib.cdll.cluster_send(0, b"x", 1)))
    out["after.raw_dispatch"] = outcome(lambda: raw(_lib.cdll.cluster_dispatch(0)))
    out["after.raw_run"] = outcome(lambda: raw(_lib.cdll.cluster_run()))
    out["after.is_worker"] = repr(rcluster.is_worker())
    return out


def checks_in_grandchild(w: "rcluster.Worker", primary: Optional["rcluster.Cluster"]) -> Dict[str, str]:
    out = {f"grandchild.{name}": outcome(fn) for name, fn in worker_calls(w).items()}
    out["grandchild.is_worker"] = repr(rcluster.is_worker())
    out["grandchild.is_primary"] = repr(rcluster.is_primary())
    out["grandchild.worker_id"] = repr(rcluster.worker_id())
    out["grandchild.w.id"] = repr(w.id)
    out["grandchild.new_worker"] = outcome(rcluster.Worker)
    out["grandchild.new_cluster_start"] = outcome(lambda: new_exec_cluster().start())
    if primary is not None:  # FORK mode: the primary's object, inherited twice
        out["grandchild.inherited_cluster.send"] = outcome(lambda: primary.send(1, b"x"))
    return out


RAW_MESSAGE = b"raw from grandchild"


def checks_in_grandchild_raw() -> Dict[str, str]:
    """The C ABI itself, which the binding's guard does not cover."""
    return {
        "raw.is_worker": repr(bool(_lib.cdll.cluster_is_worker())),
        "raw.send": outcome(lambda: raw(_lib.cdll.cluster_send(0, RAW_MESSAGE, len(RAW_MESSAGE)))),
    }


def in_grandchild(fn: Callable[[], Dict[str, str]]) -> bytes:
    """Runs `fn` in a child forked with os.fork(); returns the JSON it reported (bounded)."""
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the grandchild: never returns into the worker's stack
        code = 1
        try:
            os.close(r)
            signal.alarm(10)
            os.write(wr, json.dumps(fn()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wr)
    data = b""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.1)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        for _ in range(200):  # reap it (10 s at most), killing it if it hangs
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return json.dumps({"grandchild.exit": f"status {status}"}).encode()
    return data


def main(out_dir: str, primary: Optional["rcluster.Cluster"] = None) -> int:
    w = rcluster.Worker()
    report = checks_before_start(w)
    me = w.id

    @w.on("message")
    def on_message(data: bytes, sender: int) -> None:
        if data == b"ping":
            w.send(0, b"pong:%d" % me)
        elif data == b"ping-later":
            time.sleep(0.3)
            w.send(0, b"pong-later:%d" % me)
        elif data == b"checks":
            report.update(checks_in_handler(w, primary))
            w.send(0, b"checks:" + json.dumps(report).encode())
        elif data == b"grandchild":
            w.send(0, b"grandchild:" + in_grandchild(lambda: checks_in_grandchild(w, primary)))
        elif data == b"grandchild-raw":
            w.send(0, b"grandchild-raw:" + in_grandchild(checks_in_grandchild_raw))
        elif data == b"leave":
            w.shutdown()

    w.run()
    with open(os.path.join(out_dir, f"after-{me}.json"), "w") as f:
        json.dump(checks_after_end(w), f)
    return 0


if rcluster.is_worker() and __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
