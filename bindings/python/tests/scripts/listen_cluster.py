"""Workers that listen, node:cluster's way: listen_cluster.py MODE WORKERS UNIX_PATH.

The primary declares no listener; each worker calls Worker.listen("127.0.0.1", 0) and
Worker.listen_unix(UNIX_PATH). Prints "listening ID ADDRESS LISTENER" per worker and key, then
"forked ID" for one more worker started with Cluster.fork(env={"GREETING": "hello"}), and
"done RC" at the end. Workers answer "worker ID greeting G port P".
"""

import os
import sys

import rcluster


def worker() -> int:
    w = rcluster.Worker()
    greeting = os.environ.get("GREETING", "-")

    @w.on("connection")
    def serve(sock, listener, peer) -> None:  # type: ignore[no-untyped-def]
        with sock:
            sock.settimeout(5)
            req = b""
            while b"\r\n\r\n" not in req:
                b = sock.recv(4096)
                if not b:
                    return
                req += b
            body = b"worker %d greeting %s port %d\n" % (w.id, greeting.encode(), ports.get(listener, 0))
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    tcp = w.listen("127.0.0.1", 0)
    ports = {tcp: w.port(tcp)}
    w.listen_unix(sys.argv[3])
    return w.run()


if rcluster.is_worker():
    sys.exit(worker())

mode = sys.argv[1]
n = int(sys.argv[2])
c = rcluster.Cluster(n, mode=mode, worker=worker, grace_ms=5000)
c.on("listening", lambda wid, address, listener: print("listening", wid, address, listener, flush=True))
c.on("shutdown", lambda: print("shutdown", flush=True))
c.start()
print("forked", c.fork(env={"GREETING": "hello"}), flush=True)
rc = c.run()
print("done", rc, flush=True)
sys.exit(rc)
