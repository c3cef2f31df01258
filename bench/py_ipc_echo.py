"""IPC echo from Python: the primary sends SIZE-byte messages (default 64) to one worker, which
sends each back; prints round trips per second with 64 in flight, 4 from 64 KiB up (compare:
bench/ipc_echo.js node).

    python3 bench/py_ipc_echo.py [seconds] [batched|plain] [size]

`batched` turns on rcluster.set_batching in the primary and (inherited by fork) the worker.
"""
import sys
import time

import rcluster

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
BATCHED = len(sys.argv) > 2 and sys.argv[2] == "batched"
SIZE = int(sys.argv[3]) if len(sys.argv) > 3 else 64
WINDOW = 4 if SIZE >= 65536 else 64
PAYLOAD = bytes(SIZE)


def worker() -> int:
    w = rcluster.Worker()

    @w.on("message")
    def _(data, sender):
        w.send(0, data)

    return w.run()


if rcluster.is_worker():
    raise SystemExit(worker())

rcluster.set_batching(BATCHED)
c = rcluster.Cluster(workers=1, mode="fork", worker=worker, listen=[])
state = {"done": 0, "inflight": 0, "end": 0.0}


@c.on("ready")
def _(worker_id):
    state["end"] = time.monotonic() + SECS
    for _ in range(WINDOW):
        state["inflight"] += 1
        c.send(worker_id, PAYLOAD)


@c.on("message")
def _(worker_id, data):
    state["done"] += 1
    state["inflight"] -= 1
    if time.monotonic() < state["end"]:
        state["inflight"] += 1
        c.send(worker_id, PAYLOAD)
    elif state["inflight"] == 0:
        name = "python rcluster (batched)" if BATCHED else "python rcluster"
        print(f"{name} ipc echo: {round(state['done'] / SECS)} round trips/s ({SIZE} B)")
        c.shutdown(1000)


c.start()
c.run()
