"""asyncio on both sides: aio_cluster.py MODE WORKERS.

The primary runs inside asyncio (rcluster.aio.run); each worker serves HTTP with an asyncio
stream handler (rcluster.aio.serve) and answers b"ping" messages. Prints "port N",
"ready ID PID", "pong ID TEXT", "done RC". GET /slow answers after 0.3 s (concurrently).
"""

import asyncio
import os
import sys

import rcluster
import rcluster.aio


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1]
    if path == b"/slow":
        await asyncio.sleep(0.3)
    body = b"aio worker %d pid %d path %s\n" % (rcluster.worker_id(), os.getpid(), path)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()


def worker() -> int:
    w = rcluster.Worker()
    loop_seen = []

    @w.on("message")
    def on_message(data: bytes, sender: int) -> None:
        loop_seen.append(asyncio.get_running_loop())  # handlers run on the loop's thread
        w.send(0, b"aio-pong " + data)

    return asyncio.run(rcluster.aio.serve(w, handle))


if rcluster.is_worker():
    sys.exit(worker())


async def main() -> int:
    c = rcluster.Cluster(
        int(sys.argv[2]), mode=sys.argv[1], worker=worker, listen=[("127.0.0.1", 0)], grace_ms=5000
    )
    c.on("ready", lambda wid, pid: (print("ready", wid, pid, flush=True), c.send(wid, b"ping")))
    c.on("message", lambda wid, data: print("pong", wid, data.decode(), flush=True))
    c.start()
    print("port", c.port(0), flush=True)
    return await rcluster.aio.run(c)


rc = asyncio.run(main())
print("done", rc, flush=True)
sys.exit(rc)
