#!/usr/bin/env python3
"""echo.py: messages between the primary and its workers, and between workers.

    python examples/python/echo.py [--workers 3] [--mode fork|exec]

Each worker, once ready, gets b"ping" and answers b"pong from worker N"; then the primary asks
worker 1 to greet every other worker (relayed by the primary, which stamps the true sender),
and sends every worker a Python object (send_obj / on("object"), pickled). When every answer
is in, the primary stops the cluster gracefully and exits 0.
"""

import argparse
import os
import sys

try:
    import rcluster
except ImportError:  # from a checkout without `pip install ./bindings/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python"))
    import rcluster


def worker() -> int:
    w = rcluster.Worker()

    @w.on("message")
    def on_message(data: bytes, sender: int) -> None:
        if sender == 0 and data == b"ping":
            w.send(0, b"pong from worker %d" % w.id)
        elif sender == 0 and data == b"greet":
            w.broadcast(b"hello")  # to every other worker, through the primary
        else:  # from another worker: tell the primary who we heard from
            w.send(0, b"worker %d heard %r from worker %d" % (w.id, data, sender))

    @w.on("object")
    def on_object(obj: dict, sender: int) -> None:
        w.send_obj(0, {"worker": w.id, "squares": [x * x for x in obj["numbers"]]})

    return w.run()  # until the primary says stop


if rcluster.is_worker():  # EXEC mode re-runs this script: land here
    sys.exit(worker())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--mode", choices=["fork", "exec"], default="fork")
    opts = p.parse_args()
    n = opts.workers
    c = rcluster.Cluster(n, mode=opts.mode, worker=worker, grace_ms=2000)
    ready = []
    expected = n + (n - 1) + n  # pongs, greetings heard, objects
    answers = []

    def maybe_done() -> None:
        if len(answers) == expected:
            print("all answers in: stopping")
            c.shutdown()

    @c.on("ready")
    def on_ready(worker_id: int) -> None:
        ready.append(worker_id)
        c.send(worker_id, b"ping")
        c.send_obj(worker_id, {"numbers": [1, 2, 3, worker_id]})
        if len(ready) == n:
            c.send(ready[0], b"greet")

    @c.on("message")
    def on_message(worker_id: int, data: bytes) -> None:
        print(f"worker {worker_id}: {data.decode()}")
        answers.append(data)
        maybe_done()

    @c.on("object")
    def on_object(worker_id: int, obj: dict) -> None:
        print(f"worker {worker_id} sent an object: {obj}")
        answers.append(obj)
        maybe_done()

    @c.on("exit")
    def on_exit(worker_id: int, code: int, sig: int) -> None:
        print(f"worker {worker_id} exited with code {code}")

    return c.run()


if __name__ == "__main__":
    sys.exit(main())
