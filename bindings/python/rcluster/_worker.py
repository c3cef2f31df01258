"""The worker side: ``Worker``."""

from __future__ import annotations

import signal
import socket
from typing import Any, Dict, List, Optional, Tuple

from . import _events, _lib, _log
from ._events import Errors, Handlers
from ._cluster import RUN_WAIT_MS
from ._lib import ClusterError

_KEEP_ALIVE: List[Any] = []


class Worker(_events.Runtime):
    """This worker process's runtime (only in a worker: ``rcluster.is_worker()``).

    Events (``@w.on(name)``; a handler may take fewer trailing arguments than listed):

    * ``connection(sock, listener, peer)``: a connection to serve. ``sock`` is a blocking
      ``socket.socket`` that the handler owns (close it when done, possibly later or in
      another thread; call ``conn_done()`` then if the policy is least_connections).
      ``listener`` is the listener index, ``peer`` the client address (``(host, port)``,
      ``(host, port, flowinfo, scope_id)``, a Unix path, or None).
    * ``message(data, sender, fd)``: bytes from the primary (sender 0) or from worker
      ``sender``. ``fd`` is a passed descriptor (an int the handler then owns and must close)
      or None; when no handler takes a third argument the binding closes it.
    * ``object(obj, sender)``: an object sent with ``send_obj``.
    * ``shutdown()``: the primary asked this worker to stop: finish what you hold; the loop
      ends once this is handled (``run()`` returns).
    * ``disconnect()``: the channel to the primary closed.
    * ``drain()``: a send queue that was full has emptied.
    * ``error(worker_id, text)``: a failure no call returned (e.g. a message to an unknown
      worker).

    An exception raised by a handler is re-raised from the ``run()``/``dispatch()`` that ran it.

    Misuse gets an exception, never a crash or a hang (README "Misuse"): bad argument types are
    TypeErrors, out-of-range values ValueErrors; a call before ``start()`` is ClusterError
    ``E_STATE``, after the runtime finished ``E_CLOSED`` (``shutdown()``, ``start()``,
    ``dispatch()`` and ``run()`` then do nothing); ``dispatch()`` or ``run()`` from inside a
    handler is ``E_STATE``; in a process forked from this worker with ``os.fork()`` every call
    is ``E_STATE``.
    """

    EVENTS: Dict[str, Tuple[str, ...]] = {
        "connection": ("sock", "listener", "peer"),
        "message": ("data", "sender", "fd"),
        "object": ("obj", "sender"),
        "shutdown": (),
        "disconnect": (),
        "drain": (),
        "error": ("worker_id", "text"),
    }

    def __init__(self) -> None:
        _lib.check_process()
        if not _lib.cdll.cluster_is_worker():
            raise ClusterError(
                _lib.CLUSTER_E_ROLE,
                "rcluster.Worker() is for worker processes (rcluster.is_worker() is False here)",
            )
        self._handlers = Handlers("Worker", self.EVENTS)
        self._errors = Errors()
        self._started = False
        self._finished = False
        self._signals = _events.SignalQueue((signal.SIGTERM, signal.SIGINT))
        self._cb = _lib.EVENT_CB(self._on_event)
        self._batch_cb = _lib.BATCH_CB(self._on_events)
        _KEEP_ALIVE.extend((self._cb, self._batch_cb, self))
        _log.install()

    @property
    def id(self) -> int:
        """This worker's id (>= 1); 0 in a process forked from it."""
        return 0 if _lib.forked_child() else int(_lib.cdll.cluster_worker_id())

    # ---- events ----

    _worker_role = True
    _sender_first = False

    def _on_event(self, _userdata: Optional[int], evp: Any) -> None:
        self._event(evp.contents)

    def _event(self, ev: Any) -> None:
        fd = -1
        try:
            fd = ev.fd
            kind = ev.kind
            if kind == _lib.CLUSTER_EVENT_CONNECTION:
                fd = -1
                self._on_connection(ev.fd, ev.listener, _events.parse_peer(ev.peer, ev.peer_len))
            elif kind == _lib.CLUSTER_EVENT_MESSAGE:  # (plain messages take the batch path: _on_events)
                fd = -1
                self._deliver_message(ev.worker_id, _events.event_data(ev), ev.fd, sender_first=False)
            elif kind == _lib.CLUSTER_EVENT_SHUTDOWN:
                self._handlers.emit("shutdown")
            elif kind == _lib.CLUSTER_EVENT_DISCONNECT:
                self._handlers.emit("disconnect")
            elif kind == _lib.CLUSTER_EVENT_DRAIN:
                self._handlers.emit("drain")
            elif kind == _lib.CLUSTER_EVENT_ERROR:
                self._handlers.emit("error", ev.worker_id, _events.event_data(ev).decode("utf-8", "replace"))
            elif fd >= 0:
                _events.close_fd(fd)
        except BaseException as e:
            if fd >= 0:
                _events.close_fd(fd)
            self._errors.add(e)

    def _on_connection(self, fd: int, listener: int, peer: _events.Peer) -> None:
        if not self._handlers.has("connection"):
            _events.close_fd(fd)
            _lib.cdll.cluster_conn_done()
            return
        try:
            if isinstance(peer, tuple):  # TCP: say the family (no three getsockopt calls to learn it)
                family = socket.AF_INET6 if len(peer) == 4 else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            else:
                sock = socket.socket(fileno=fd)
        except OSError:
            _events.close_fd(fd)
            _lib.cdll.cluster_conn_done()
            raise
        self._handlers.emit("connection", sock, listener, peer)

    # ---- loop ----

    def start(self) -> None:
        """Connects to the primary and reports ONLINE (and READY, unless the cluster was
        configured with manual_ready). ``run()`` calls it when needed; once started (or
        finished) it does nothing. A second ``Worker`` object cannot start: ClusterError
        ``E_STATE`` (the runtime is the process's, and already runs or ran)."""
        _lib.check_process()
        if self._started:
            return
        _lib.call(_lib.cdll.cluster_worker_start, self._cb, None)
        # One Python call per loop turn instead of one per event.
        _lib.call(_lib.cdll.cluster_set_batch_handler, self._batch_cb, None)
        self._started = True

    def dispatch(self, timeout_ms: int = 0) -> int:
        """One loop turn (see ``Cluster.dispatch``). Returns the events delivered."""
        timeout_ms = _lib.i32("timeout_ms", timeout_ms)
        if not self._started:
            self.start()
        _lib.check_process()
        if self._finished:
            self._errors.raise_first()
            return 0
        rc = self._after_dispatch(_lib.cdll.cluster_dispatch(timeout_ms))
        self._errors.raise_first()
        return max(rc, 0)

    def run(self) -> int:
        """Serves until the primary says stop (or goes away); returns 0. From the main
        thread, SIGTERM/SIGINT make this worker leave gracefully (``shutdown()``). From inside
        one of this worker's handlers: ClusterError ``E_STATE``."""
        _lib.check_process()
        self._check_run()
        self.start()
        if self._finished:
            self._errors.raise_first()
            return 0
        self._signals.install()
        fn = _lib.cdll.cluster_dispatch
        self._running = True
        try:
            while not self._finished:
                self._after_dispatch(fn(0 if self._signals.pending else RUN_WAIT_MS))
                self._run_deferred()
                self._errors.raise_first()
        finally:
            self._running = False
            self._signals.restore()
        self._errors.raise_first()
        return 0

    def _run_deferred(self) -> None:
        while (signum := self._signals.pop()) is not None:
            try:
                self.shutdown()
            except ClusterError as e:
                _log.logger.warning("worker signal %d: %s", signum, e)

    def fileno(self) -> int:
        """The loop's pollable fd: readable when ``dispatch(0)`` has work (starts the worker
        if needed; ClusterError ``E_CLOSED`` once it finished)."""
        if not self._started:
            self.start()
        self._enter()
        return _lib.call(_lib.cdll.cluster_fd)

    # ---- calls ----

    def listen(self, host: str, port: int) -> int:
        """Listens on ``host:port`` the way a node:cluster worker's ``server.listen()`` does:
        the primary binds the address (or shares the socket it has for it with every worker
        that asks for the same address, port 0 included) and its connections then come as
        ``connection`` events with the returned listener index. Blocks until the primary has
        answered; ClusterError naming the address when it cannot bind (E_SYS: in use, denied).
        A host name is resolved here. The primary sees a ``listening`` event. Starts the
        worker if ``run()`` has not yet (register the ``connection`` handler first)."""
        host_b = _lib.c_string("host", host)
        port = _lib.u16("port", port)
        self._listen_start()
        return _lib.call(_lib.cdll.cluster_listen_tcp, host_b, port)

    def listen_unix(self, path: Any) -> int:
        """Listens on a Unix stream socket at `path` (see ``listen``)."""
        path_b = _lib.c_string("path", path)
        self._listen_start()
        return _lib.call(_lib.cdll.cluster_listen_unix, path_b)

    def _listen_start(self) -> None:
        if not self._started and not self._finished:
            self.start()
        self._enter()

    def unlisten(self, listener: int) -> None:
        """Stops listening on `listener` (from ``listen``): what is on its way from there goes
        to the workers that still listen; the primary closes it when none does."""
        listener = _lib.u32("listener", listener)
        self._enter()
        _lib.call(_lib.cdll.cluster_unlisten, listener)

    def port(self, listener: int) -> int:
        """The port of a listener this worker listens on (``listen``, SHARED/REUSEPORT)."""
        listener = _lib.u32("listener", listener)
        self._enter()
        return _lib.call(_lib.cdll.cluster_local_port, listener)

    def ready(self) -> None:
        """Reports READY (only needed when the cluster has manual_ready=True)."""
        self._enter()
        _lib.call(_lib.cdll.cluster_ready)

    def conn_done(self) -> None:
        """Reports that one connection it was handed is finished (least_connections counts
        them). Any thread."""
        self._enter()
        _lib.call(_lib.cdll.cluster_conn_done)

    def shutdown(self) -> None:
        """Leaves gracefully: the primary stops sending connections, a ``shutdown`` event
        follows, then the loop ends. The primary does not replace this worker. Once the
        runtime finished it does nothing."""
        if self._finished and not _lib.forked_child():
            return
        self._enter()
        _lib.call(_lib.cdll.cluster_shutdown, 0)

    def send(self, to: int, data: Any, fd: Optional[_events.FdLike] = None) -> None:
        """Sends bytes to the primary (`to` = 0) or to worker `to` (relayed by the primary,
        which stamps this worker as the sender), and a duplicate of `fd` when given. Any
        thread. ClusterError E_AGAIN when the queue is full (a ``drain`` event follows),
        E_INVAL to itself. `fd`: an int or an object with ``fileno()`` (TypeError otherwise;
        ValueError when negative or over 2**31 - 1; ClusterError E_SYS when it is not open)."""
        self._send(to, data, fd)

    def send_obj(self, to: int, obj: Any) -> None:
        """Sends a picklable object (received in ``on("object")``)."""
        self._enter()
        _events.send(_lib.cdll, to, _events.pickled(obj), None)

    def broadcast(self, data: Any) -> None:
        """Sends bytes to every other worker (through the primary)."""
        self._enter()
        _events.broadcast(_lib.cdll, data)

    def broadcast_obj(self, obj: Any) -> None:
        """Sends a picklable object to every other worker."""
        self._enter()
        _events.broadcast(_lib.cdll, _events.pickled(obj))
