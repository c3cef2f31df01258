"""asyncio: a worker serving connections with stream handlers, a primary driven by asyncio."""

import asyncio
import signal
import threading
import time
from typing import List

import pytest

import rcluster
import rcluster.aio
from conftest import http_body, http_get, wait_gone


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_asyncio_worker_serves_connections(script, mode):
    s = script("aio_cluster.py", mode, "2")
    port = int(s.wait_prefix("port")[1])
    pids = [int(s.wait_prefix("ready")[2]) for _ in range(2)]
    pongs = sorted(s.wait_prefix("pong")[1:] for _ in range(2))
    assert pongs == [["1", "aio-pong", "ping"], ["2", "aio-pong", "ping"]]
    assert http_body(http_get(port)).startswith(b"aio worker ")
    # 6 slow requests (0.3 s each) on 2 workers: served concurrently by the asyncio handlers
    results: List[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(http_get(port, "/slow"))) for _ in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert len(results) == 6 and all(http_body(r).endswith(b"path /slow\n") for r in results)
    assert elapsed < 0.9 * 3, elapsed  # sequential per worker would take >= 0.9 s
    s.signal(signal.SIGTERM)
    assert s.wait_exit(10) == 0
    assert "done 0" in s.lines
    assert wait_gone(pids, 5) == []


def test_aio_run_reraises_handler_exception(make_cluster):
    c = make_cluster("exec", workers=1)

    @c.on("ready")
    def bad(worker_id: int) -> None:
        raise LookupError("from a handler under asyncio")

    async def main() -> int:
        return await rcluster.aio.run(c, handle_signals=False)

    with pytest.raises(LookupError, match="under asyncio"):
        asyncio.run(asyncio.wait_for(main(), 10))


def test_aio_run_until_shutdown(make_cluster):
    c = make_cluster("exec", workers=2)
    got: List[bytes] = []

    @c.on("ready")
    def ready(worker_id: int) -> None:
        c.send(worker_id, b"ping")

    @c.on("message")
    def message(worker_id: int, data: bytes) -> None:
        got.append(data)
        if len(got) == 2:
            c.shutdown(1000)

    async def main() -> int:
        return await rcluster.aio.run(c)

    assert asyncio.run(asyncio.wait_for(main(), 10)) == 0
    assert sorted(got) == [b"pong:1", b"pong:2"]
    assert c.finished
