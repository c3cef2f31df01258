"""A signal whose Python handler runs inside the library's log callback (the library holds its
runtime lock then): run() must still stop gracefully. Prints "done RC"."""

import logging
import os
import signal
import sys

import rcluster


def worker() -> int:
    return rcluster.Worker().run()


if rcluster.is_worker():
    sys.exit(worker())


class SignalOnRecord(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if "killed by signal" in record.getMessage():
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs right here, in the callback
            for _ in range(1000):  # bytecodes for the eval loop to run the handler on
                pass


logging.getLogger("rcluster").addHandler(SignalOnRecord())
logging.getLogger("rcluster").setLevel(logging.INFO)
c = rcluster.Cluster(1, mode=sys.argv[1], worker=worker, grace_ms=2000)
ready = []
c.on("ready", lambda wid, pid: (ready.append(pid), os.kill(pid, signal.SIGKILL)) if not ready else None)
print("done", c.run(), flush=True)
