"""A bare ASGI 3 app (no framework) for what frameworks hide: http.disconnect after the body,
a response streamed until the client leaves, and the lifespan protocol. It writes what it saw
to the file named by $RCLUSTER_TEST_MARKS (one line per event)."""

import asyncio
import os


def mark(text):
    path = os.environ.get("RCLUSTER_TEST_MARKS")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello from lifespan"
                mark("startup")
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                mark("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/wait-disconnect":
        while (await receive())["type"] != "http.disconnect":
            pass
        mark("disconnect seen")
        return
    if path == "/two-waiters":  # two tasks wait in receive() at once: both hear the client leave
        await receive()  # the (empty) body

        async def waiter():
            return (await receive())["type"]

        kinds = await asyncio.gather(waiter(), waiter())
        mark("two waiters: " + " ".join(kinds))
        return
    if path == "/forever":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        async def wait_gone():
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(wait_gone())
        for i in range(1000):
            if gone.done():
                mark(f"stream stopped after disconnect at {i}")
                return
            await send({"type": "http.response.body", "body": b"tick %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/state":
        body = scope["state"].get("greeting", "none").encode()
    else:
        body = b"raw asgi " + scope["path"].encode() + b" " + scope["query_string"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
