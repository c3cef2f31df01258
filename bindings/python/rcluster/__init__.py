"""rcluster: a process cluster (a primary supervising worker processes, IPC with fd passing,
accept handoff), like Node's ``cluster`` module, on the rcluster C library.

::

    import rcluster

    def worker():                                   # runs in every worker process
        w = rcluster.Worker()
        @w.on("connection")
        def _(sock, listener, peer):                # sock: socket.socket, owned by the handler
            sock.recv(4096); sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok"); sock.close()
        @w.on("message")
        def _(data, sender):                        # data: bytes; sender: 0 = primary
            w.send(0, b"pong")
        return w.run()                              # returns when the primary says stop

    if rcluster.is_worker():                        # EXEC mode re-runs the script: land here
        raise SystemExit(worker())
    c = rcluster.Cluster(workers=4, mode="fork", worker=worker, listen=[("127.0.0.1", 0)])
    @c.on("ready")
    def _(worker_id): c.send(worker_id, b"ping")
    c.start(); print(c.port(0)); c.run()            # SIGTERM: graceful stop, run() returns 0

Library records go to the ``logging`` logger ``"rcluster"``. See ``rcluster.aio`` for asyncio.
"""

from __future__ import annotations

from . import _lib
from ._cluster import Cluster, WorkerInfo, WorkerState
from ._events import PICKLE_PREFIX, Peer
from ._lib import ClusterError
from ._worker import Worker

__all__ = [
    "Cluster",
    "Worker",
    "WorkerInfo",
    "WorkerState",
    "ClusterError",
    "PICKLE_PREFIX",
    "Peer",
    "is_worker",
    "is_primary",
    "worker_id",
    "library_path",
    "set_batching",
    "E_INVAL",
    "E_ROLE",
    "E_NOWORKER",
    "E_AGAIN",
    "E_TOOBIG",
    "E_CLOSED",
    "E_THREADS",
    "E_STATE",
    "E_SYS",
    "E_PANIC",
    "E_TIMEOUT",
]

__version__ = "0.1.0"

#: Result codes (``ClusterError.code``).
E_INVAL = _lib.CLUSTER_E_INVAL
E_ROLE = _lib.CLUSTER_E_ROLE
E_NOWORKER = _lib.CLUSTER_E_NOWORKER
E_AGAIN = _lib.CLUSTER_E_AGAIN
E_TOOBIG = _lib.CLUSTER_E_TOOBIG
E_CLOSED = _lib.CLUSTER_E_CLOSED
E_THREADS = _lib.CLUSTER_E_THREADS
E_STATE = _lib.CLUSTER_E_STATE
E_SYS = _lib.CLUSTER_E_SYS
E_PANIC = _lib.CLUSTER_E_PANIC
E_TIMEOUT = _lib.CLUSTER_E_TIMEOUT

#: The path of the loaded librcluster.
library_path: str = _lib.path


def is_worker() -> bool:
    """True in a worker process (EXEC mode: from the environment at load; FORK mode: in the
    forked child). False in a process forked with ``os.fork()`` from a worker: it inherited the
    worker's state, not its role (every call there is ClusterError ``E_STATE``)."""
    return bool(_lib.cdll.cluster_is_worker()) and not _lib.forked_child()


def is_primary() -> bool:
    """True in any process that is not a worker, except one forked with ``os.fork()`` from a
    primary while its cluster runs (neither role: every call there is ``E_STATE``)."""
    return bool(_lib.cdll.cluster_is_primary()) and not _lib.forked_child()


def worker_id() -> int:
    """This worker's id (ids start at 1, never reused); 0 in the primary and in a process
    forked from a worker."""
    return 0 if _lib.forked_child() else int(_lib.cdll.cluster_worker_id())


def set_batching(on: bool) -> None:
    """Batch what this process's handlers send (off by default). On, messages sent from
    inside event handlers (on the thread that dispatches) leave in batches of 8 as soon as 8
    are together, the rest when every handler of that dispatch has returned: a burst of
    replies costs one system call per 8 instead of one each, much as Node's
    ``process.send`` leaves when the JavaScript stack unwinds. Sends from other threads are never held. Off by default because
    a handler that sends and then blocks holds its message until it returns. Each process
    decides for itself (a FORK-mode worker inherits the setting of the primary it was forked
    from)."""
    if not isinstance(on, bool):
        raise TypeError(f"set_batching takes a bool, not {type(on).__name__}")
    _lib.cdll.cluster_set_batching(1 if on else 0)

