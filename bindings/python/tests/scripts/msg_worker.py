"""A worker that answers the tests' messages. FORK mode: tests pass ``main`` as worker=.
EXEC mode: this file is the program the workers run.

Messages from the primary: b"ping" -> b"pong:<id>"; b"relay:<n>" -> sends b"hello from <id>"
to worker n; b"fd" (with an fd) -> writes b"written by <id>" into it, answers b"fd-done:<id>";
b"give-fd" -> answers b"here" with a pipe's read end holding b"from worker <id>"; b"raise" ->
the handler raises, run() re-raises it, main() answers b"caught:<text>" and serves on;
b"bye" -> leaves. From another worker: answers the primary b"got:<data>:from:<sender>".
Objects: answered with {"echo": obj, "id": <id>, "sender": sender}. Connections: an HTTP
answer naming the worker.
"""

import os
import sys
from typing import Optional

import rcluster


def main() -> int:
    w = rcluster.Worker()
    me = w.id

    @w.on("message")
    def on_message(data: bytes, sender: int, fd: Optional[int]) -> None:
        if sender != 0:
            w.send(0, b"got:%s:from:%d" % (data, sender))
        elif data == b"ping":
            w.send(0, b"pong:%d" % me)
        elif data.startswith(b"relay:"):
            w.send(int(data[6:]), b"hello from %d" % me)
        elif data == b"fd":
            assert fd is not None
            os.write(fd, b"written by %d" % me)
            os.close(fd)
            fd = None
            w.send(0, b"fd-done:%d" % me)
        elif data == b"give-fd":
            r, wr = os.pipe()
            os.write(wr, b"from worker %d" % me)
            os.close(wr)
            w.send(0, b"here", fd=r)
            os.close(r)
        elif data.startswith(b"burst:"):
            for i in range(int(data[6:])):  # many in one loop turn: they reach the primary batched
                w.send(0, b"%d" % i)
        elif data == b"raise":
            raise ValueError(f"boom in worker {me}")
        elif data == b"bye":
            w.shutdown()
        if fd is not None:
            os.close(fd)

    @w.on("object")
    def on_object(obj: object, sender: int) -> None:
        w.send_obj(0, {"echo": obj, "id": me, "sender": sender})

    @w.on("connection")
    def on_connection(sock, listener, peer) -> None:  # type: ignore[no-untyped-def]
        with sock:
            sock.settimeout(5)
            req = b""
            while b"\r\n\r\n" not in req:
                b = sock.recv(4096)
                if not b:
                    break
                req += b
            body = b"worker %d pid %d peer %s\n" % (me, os.getpid(), str(peer).encode())
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        w.conn_done()

    while True:
        try:
            return w.run()
        except ValueError as e:
            w.send(0, b"caught:" + str(e).encode())


if rcluster.is_worker() and __name__ == "__main__":
    sys.exit(main())
