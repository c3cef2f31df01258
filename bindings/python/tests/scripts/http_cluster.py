"""A small HTTP cluster for the subprocess tests: http_cluster.py MODE WORKERS [POLICY].

Prints "port N", then "ready ID PID" per ready worker, "exit ID CODE SIGNAL",
"reloaded OK", "shutdown" and finally "done RC". GET /slow answers after 0.5 s.
"""

import os
import sys
import time

import rcluster


def worker() -> int:
    w = rcluster.Worker()

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
            path = req.split(b" ", 2)[1]
            if path == b"/slow":
                time.sleep(0.5)
            body = b"worker %d pid %d path %s\n" % (w.id, os.getpid(), path)
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        w.conn_done()

    return w.run()


if rcluster.is_worker():
    sys.exit(worker())

mode = sys.argv[1]
n = int(sys.argv[2])
policy = sys.argv[3] if len(sys.argv) > 3 else "round_robin"
c = rcluster.Cluster(n, mode=mode, worker=worker, listen=[("127.0.0.1", 0)], policy=policy, grace_ms=5000)
c.on("ready", lambda wid, pid: print("ready", wid, pid, flush=True))
c.on("exit", lambda wid, code, sig: print("exit", wid, code, sig, flush=True))
c.on("reloaded", lambda ok: print("reloaded", ok, flush=True))
c.on("shutdown", lambda: print("shutdown", flush=True))
c.start()
print("port", c.port(0), flush=True)
rc = c.run()
print("done", rc, flush=True)
sys.exit(rc)
