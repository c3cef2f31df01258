"""A rcluster-serve worker: one asyncio loop (uvloop when installed) that drives the rcluster
worker runtime (``rcluster.aio``) and serves every connection handed to it concurrently."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, Callable

import rcluster
import rcluster.aio

from . import detect_interface, log
from ._http import HttpConnection, Limits, Server


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("rcluster-serve: --loop uvloop, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(opts: argparse.Namespace, app: Any) -> int:
    """Serves `app` in this worker until the primary stops it; returns the exit code."""
    # The primary's reload signal is for the primary: one sent to the whole process group
    # must not kill the workers.
    for sig in {signal.SIGHUP, opts.reload_signal}:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    loop = _new_loop(opts.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(opts, app))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(opts: argparse.Namespace, app: Any) -> int:
    loop = asyncio.get_running_loop()
    interface = opts.interface if opts.interface != "auto" else detect_interface(app)
    limits = Limits(
        keep_alive=opts.keep_alive,
        read_timeout=opts.read_timeout,
        max_line=opts.limit_request_line,
        max_header_bytes=opts.limit_request_head,
        max_headers=opts.limit_request_fields,
        max_body=opts.limit_request_body,
    )
    w = rcluster.Worker()
    on_closed: Any = None
    if opts.policy in ("least_connections", "least"):

        def on_closed() -> None:
            try:
                w.conn_done()
            except rcluster.ClusterError:
                pass  # the runtime already ended

    lifespan = None
    if interface == "asgi":
        from ._asgi import ASGIHandler, Lifespan

        lifespan = Lifespan(app, opts.lifespan)
        await lifespan.startup()
        handler: Any = ASGIHandler(app, lifespan.state)
    else:
        from ._wsgi import WSGIHandler

        handler = WSGIHandler(app, opts.threads)
    server = Server(handler, limits, access_log=opts.access_log, on_closed=on_closed)
    server.start_timers()
    factory: Callable[[], HttpConnection] = lambda: HttpConnection(server)  # noqa: E731

    async def adopt(sock: Any) -> None:
        try:
            await loop.connect_accepted_socket(factory, sock)
        except OSError:
            server.pending -= 1
            sock.close()
            if on_closed is not None:
                on_closed()

    def on_connection(sock: Any, _listener: int, _peer: Any) -> None:
        sock.setblocking(False)
        server.pending += 1
        loop.create_task(adopt(sock))

    w.on("connection", on_connection)
    w.on("shutdown", server.stop)
    driver = rcluster.aio.attach(w, loop)
    w.ready()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _leave, w)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        await driver.done
    finally:
        server.stop()
        await server.wait_closed(opts.graceful_timeout)
        server.stop_timers()
        if lifespan is not None:
            await lifespan.shutdown(opts.graceful_timeout)
        await loop.run_in_executor(None, handler.close)
    return 0


def _leave(w: rcluster.Worker) -> None:
    """SIGTERM/SIGINT to a worker: it leaves gracefully (the primary does not replace it)."""
    try:
        w.shutdown()
    except rcluster.ClusterError as e:
        print(f"rcluster-serve: worker shutdown: {e}", file=sys.stderr)


__all__ = ["run", "log"]
