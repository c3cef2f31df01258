"""asyncio integration.

The runtime's loop fd (``fileno()``) is watched with ``loop.add_reader``; when it is readable,
``dispatch(0)`` runs the handlers, on the event loop's thread. Nothing blocks the event loop.

* ``await rcluster.aio.run(cluster_or_worker)``: drive a Cluster (started if needed) or a
  Worker until it ends; SIGTERM/SIGINT stop it gracefully (Cluster: ``shutdown(grace_ms)``,
  a second signal stops at once; Worker: ``shutdown()``), SIGHUP reloads a Cluster.
* ``await rcluster.aio.serve(worker, handle)``: in a worker, serve each connection with an
  asyncio stream handler ``async def handle(reader, writer)``, like ``asyncio.start_server``;
  returns once the primary stopped this worker and the connections in flight have finished.
* ``rcluster.aio.attach(obj)``: drive `obj` in the background; returns a ``Driver`` whose
  ``done`` future ends with the runtime (or with the exception a handler raised), and whose
  ``close()`` detaches.

An exception raised by an event handler ends the driving: ``run``/``serve`` re-raise it (the
runtime itself keeps running, as with ``Cluster.run()``).

FORK mode: a worker forked while the primary runs inside asyncio starts with no running loop,
so its worker function may call ``asyncio.run(...)``. Do not let the primary's loop start
threads before the workers are forked (``run_in_executor``, ``getaddrinfo`` of
``open_connection``): FORK mode refuses a multi-threaded process; use ``mode="exec"`` there.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Union

from ._cluster import Cluster
from ._lib import ClusterError
from ._log import logger
from ._worker import Worker

Runnable = Union[Cluster, Worker]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]

# How often the runtime is looked at even when its fd stays silent: a runtime can end in a
# turn that delivered no event, and then nothing would make the fd readable again.
SAFETY_TICK_S = 1.0

__all__ = ["Driver", "attach", "run", "serve"]


class Driver:
    """Drives a started Cluster or Worker from an asyncio loop (see ``attach``)."""

    def __init__(self, obj: Runnable, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self.obj = obj
        self.loop = loop or asyncio.get_running_loop()
        self.done: "asyncio.Future[int]" = self.loop.create_future()
        self._soon: Optional[asyncio.Handle] = None
        self._tick: Optional[asyncio.TimerHandle] = None
        self._closed = False
        if obj.finished:  # nothing to drive (and its fd is gone): done, like run() returning 0
            self._fd = -1
            self._closed = True
            self.done.set_result(0)
            return
        self._fd = obj.fileno()
        self.loop.add_reader(self._fd, self._step)
        self._soon = self.loop.call_soon(self._step)
        self._tick = self.loop.call_later(SAFETY_TICK_S, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if not self._closed:
            self._step()
            if not self._closed:
                self._tick = self.loop.call_later(SAFETY_TICK_S, self._on_tick)

    def _step(self) -> None:
        self._soon = None
        if self._closed:
            return
        try:
            n = self.obj.dispatch(0)
        except BaseException as e:  # a handler's exception (or a runtime failure)
            self._end(exc=e)
            if not isinstance(e, Exception):
                raise
            return
        if self.obj.finished:
            self._end()
        elif n > 0 and self._soon is None:
            # Events were delivered: look again soon (more may be ready, or the runtime may
            # have ended with them), without starving the other callbacks.
            self._soon = self.loop.call_soon(self._step)

    def _end(self, exc: Optional[BaseException] = None) -> None:
        self.close()
        if not self.done.done():
            if exc is None:
                self.done.set_result(0)
            else:
                self.done.set_exception(exc)

    def close(self) -> None:
        """Stops watching the runtime (it keeps running, undriven)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self._fd)
        except Exception:
            pass
        for h in (self._soon, self._tick):
            if h is not None:
                h.cancel()
        self._soon = self._tick = None


def attach(obj: Runnable, loop: Optional[asyncio.AbstractEventLoop] = None) -> Driver:
    """Starts `obj` if needed and drives it from `loop` (default: the running loop)."""
    if isinstance(obj, Cluster) and not obj.started:
        obj.start()
    elif isinstance(obj, Worker):
        obj.start()
    return Driver(obj, loop)


class _Signals:
    """Signal handlers through the loop (main thread only), restored afterwards."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handlers: Dict[int, Callable[[], None]]) -> None:
        self.loop = loop
        self.saved: Dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, fn in handlers.items():
            try:
                old = signal.getsignal(sig)
                loop.add_signal_handler(sig, fn)
                self.saved[sig] = old
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def restore(self) -> None:
        for sig, old in self.saved.items():
            try:
                self.loop.remove_signal_handler(sig)
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (ValueError, RuntimeError, TypeError):
                pass
        self.saved = {}


def _signal_handlers(obj: Runnable) -> Dict[int, Callable[[], None]]:
    def safely(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except ClusterError as e:
                logger.warning("signal: %s", e)

        return run

    if isinstance(obj, Worker):
        return {signal.SIGTERM: safely(obj.shutdown), signal.SIGINT: safely(obj.shutdown)}

    stopping = [False]

    def stop() -> None:
        obj.shutdown(0 if stopping[0] else None)
        stopping[0] = True

    return {signal.SIGTERM: safely(stop), signal.SIGINT: safely(stop), signal.SIGHUP: safely(obj.reload)}


async def run(obj: Runnable, *, handle_signals: bool = True) -> int:
    """Drives a Cluster (starting it if needed) or a Worker until its runtime ends; returns 0.
    Re-raises the first exception an event handler raised."""
    loop = asyncio.get_running_loop()
    driver = attach(obj, loop)
    sigs = _Signals(loop, _signal_handlers(obj) if handle_signals else {})
    try:
        return await driver.done
    finally:
        sigs.restore()
        driver.close()


async def serve(
    worker: Worker,
    handle: StreamHandler,
    *,
    handle_signals: bool = True,
    drain_timeout: Optional[float] = None,
    errors: str = "log",
    limit: int = 2**16,
) -> int:
    """Serves this worker's connections with ``handle(reader, writer)`` (asyncio streams,
    one task per connection; the writer is closed and ``conn_done()`` reported when the
    handler returns). Returns 0 once the primary stopped this worker (or SIGTERM/SIGINT made
    it leave) and the connections in flight finished (at most `drain_timeout` seconds, then
    they are cancelled). A handler's exception is logged to the ``rcluster`` logger
    (``errors="log"``) or re-raised from ``serve`` (``errors="raise"``)."""
    if errors not in ("log", "raise"):
        raise ValueError('errors must be "log" or "raise"')
    loop = asyncio.get_running_loop()
    tasks: Set["asyncio.Task[None]"] = set()
    failure: "asyncio.Future[int]" = loop.create_future()

    async def one(sock: socket.socket, peer: Any) -> None:
        writer: Optional[asyncio.StreamWriter] = None
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
            await handle(reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if errors == "raise":
                if not failure.done():
                    failure.set_exception(e)
            else:
                logger.exception("connection handler failed (peer %s)", peer)
        finally:
            if writer is not None:
                writer.close()
                try:
                    await writer.wait_closed()
                except Exception:
                    pass
            else:
                sock.close()
            try:
                worker.conn_done()
            except ClusterError:
                pass  # the runtime already ended

    def on_connection(sock: socket.socket, _listener: int, peer: Any) -> None:
        t = loop.create_task(one(sock, peer))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    worker.on("connection", on_connection)
    driver = attach(worker, loop)
    sigs = _Signals(loop, _signal_handlers(worker) if handle_signals else {})
    try:
        done, _ = await asyncio.wait({driver.done, failure}, return_when=asyncio.FIRST_COMPLETED)
        if failure in done:
            failure.result()
        driver.done.result()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout)
            for t in pending:
                t.cancel()
        if failure.done():
            failure.result()
        return 0
    finally:
        sigs.restore()
        driver.close()
        worker.off("connection", on_connection)
        if not failure.done():
            failure.cancel()
