"""rcluster-serve: a prefork HTTP/1.1 server for WSGI and ASGI apps on rcluster.

::

    rcluster-serve [options] module:app          # or: python -m rcluster.serve ...
    rcluster-serve -w 4 -b 0.0.0.0:8000 mysite.wsgi:application    # Django (WSGI)
    rcluster-serve -w 4 -b unix:/run/app.sock main:app             # Starlette/FastAPI (ASGI)

The primary process binds the addresses (or takes systemd's sockets), starts the workers and
supervises them; each connection goes to a worker (``--policy``), whose asyncio loop (uvloop
when installed) parses HTTP/1.1 with httptools and runs the app: ASGI apps on the loop, WSGI
apps in a thread pool (``--threads``). An idle or slow client costs its worker a socket, not
its time. SIGTERM/SIGINT: graceful stop (in-flight requests finish, ``--graceful-timeout``).
SIGHUP (``--reload-signal``): rolling reload, each worker replaced by a new one that imported
the app again and is ready before the old one leaves.

Needs the ``serve`` extra: ``pip install 'rcluster[serve]'`` (httptools; uvloop optional).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import sys
from typing import Any, List, Optional, Sequence, Tuple, Union

import rcluster

__all__ = ["main", "parse_args", "load_app", "detect_interface", "worker_main"]

log = logging.getLogger("rcluster.serve")

Bind = Union[Tuple[str, int], str]


def _bind(text: str) -> Bind:
    """``host:port``, ``[v6]:port``, ``:port`` (127.0.0.1), a bare port, or ``unix:path``."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise argparse.ArgumentTypeError("unix: needs a path")
        return path
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number (host:port or unix:path)") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return (host, p)


def _signal(text: str) -> int:
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise argparse.ArgumentTypeError(f"no signal named {text!r}") from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (gunicorn's and uvicorn's option names where they mean the same)."""
    p = argparse.ArgumentParser(
        prog="rcluster-serve",
        description="A prefork HTTP/1.1 server for WSGI and ASGI apps, on rcluster.",
    )
    p.add_argument("app", help="module:attribute (default attribute: app, then application); "
                   "module:factory() calls a factory once per worker")
    p.add_argument("-w", "--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: one per CPU; 0: one per CPU)")
    p.add_argument("-b", "--bind", action="append", type=_bind, default=[],
                   help="host:port or unix:path, repeatable (default 127.0.0.1:8000, or the sockets "
                   "systemd passed: LISTEN_FDS)")
    p.add_argument("--interface", choices=["auto", "wsgi", "asgi"], default="auto",
                   help="the app's interface (auto: ASGI for a coroutine function, else WSGI)")
    p.add_argument("--threads", type=int, default=4,
                   help="WSGI: threads per worker that run the app (default 4; 0: on the event loop's thread)")
    p.add_argument("--mode", choices=["fork", "exec"], default="fork",
                   help="fork workers from the primary, or exec new interpreters (default fork)")
    p.add_argument("--policy", default="round_robin",
                   choices=["round_robin", "least_connections", "sticky", "shared", "reuseport"],
                   help="how connections reach workers (default round_robin: the primary accepts "
                   "and hands each to the next worker)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="a worker whose loop is stuck this long is killed and replaced (default 30)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds workers get to finish their requests on SIGTERM or reload (default 30)")
    p.add_argument("--keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection is kept (default 5)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client may stay silent in the middle of a request (default 30; then 408)")
    p.add_argument("--max-requests", type=int, default=0,
                   help="recycle a worker after about this many connections (0: never)")
    p.add_argument("--limit-request-line", type=int, default=8190, help="longest request target and header field (414/431)")
    p.add_argument("--limit-request-fields", type=int, default=100, help="most header fields (431)")
    p.add_argument("--limit-request-head", type=int, default=65536, help="largest request head in bytes (431)")
    p.add_argument("--limit-request-body", type=int, default=64 * 1024 * 1024, help="largest body in bytes (413)")
    p.add_argument("--preload", action="store_true",
                   help="import the app once in the primary (fork mode; workers share it; a reload does not re-import)")
    p.add_argument("--access-log", action="store_true", help="one line per request on stderr")
    p.add_argument("--reload-signal", type=_signal, default=int(signal.SIGHUP),
                   help="the signal that makes the primary reload its workers (default HUP)")
    p.add_argument("--lifespan", choices=["auto", "on", "off"], default="auto", help="ASGI lifespan protocol")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="event loop in the workers (auto: uvloop when installed)")
    p.add_argument("--log-level", default=os.environ.get("RCLUSTER_LOG", "info"), help="default info")
    opts = p.parse_args(argv)
    if opts.workers < 0 or opts.threads < 0:
        p.error("--workers and --threads take numbers >= 0")
    return opts


def load_app(spec: str) -> Any:
    """Imports ``module:attribute`` (dotted attributes; ``factory()`` is called). The current
    directory is importable, as with gunicorn and uvicorn."""
    module, _, attr = spec.partition(":")
    if not module:
        raise SystemExit(f"rcluster-serve: {spec!r} is not module:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module)
    call = attr.endswith("()")
    names = [attr[:-2] if call else attr] if attr else ["app", "application"]
    for name in names:
        target: Any = obj
        try:
            for part in name.split("."):
                target = getattr(target, part)
        except AttributeError:
            continue
        if call:
            target = target()
        if not callable(target):
            raise SystemExit(f"rcluster-serve: {module}:{name} is not callable")
        return target
    raise SystemExit(f"rcluster-serve: module {module} has no {' or '.join(names)}")


def detect_interface(app: Any) -> str:
    """``"asgi"`` for a coroutine function (or an object whose ``__call__`` is one), else
    ``"wsgi"``."""
    if inspect.iscoroutinefunction(app):
        return "asgi"
    call = getattr(app, "__call__", None)
    if call is not None and inspect.iscoroutinefunction(call):
        return "asgi"
    return "wsgi"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="[%(process)d] %(levelname)s %(name)s: %(message)s")


PRELOADED: Optional[Any] = None


def worker_main(opts: argparse.Namespace) -> int:
    """A worker: loads the app (unless preloaded), serves until the primary says stop."""
    from . import _worker

    app = PRELOADED if PRELOADED is not None else load_app(opts.app)
    return _worker.run(opts, app)


def _exec_argv(argv: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "rcluster.serve", *argv]


def _systemd_sockets() -> bool:
    return bool(os.environ.get("LISTEN_FDS")) and os.environ.get("LISTEN_PID") in (None, "", str(os.getpid()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``rcluster-serve`` command."""
    global PRELOADED
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    _setup_logging(opts.log_level)
    if rcluster.is_worker():  # --mode exec: this is a worker's new interpreter
        return worker_main(opts)
    try:
        import httptools  # noqa: F401
    except ImportError:
        print("rcluster-serve needs httptools: pip install 'rcluster[serve]'", file=sys.stderr)
        return 2
    if opts.preload:
        if opts.mode == "exec":
            log.warning("--preload does nothing with --mode exec (each worker is a new interpreter)")
        else:
            PRELOADED = load_app(opts.app)
    systemd = _systemd_sockets()
    binds: List[Bind] = list(opts.bind)
    if not binds and not systemd:
        binds = [("127.0.0.1", 8000)]
    cluster = rcluster.Cluster(
        opts.workers,
        mode=opts.mode,
        worker=lambda: worker_main(opts),
        exec_argv=_exec_argv(args),
        listen=binds,
        systemd=systemd,
        policy=opts.policy,
        grace_ms=int(opts.graceful_timeout * 1000),
        max_requests=(opts.max_requests, max(opts.max_requests // 10, 1)) if opts.max_requests else None,
        # The watchdog: a worker's loop answers the heartbeat between events; one stuck (in
        # an app running on the loop, or anywhere) for --timeout is killed and replaced.
        heartbeat=(1000, max(int(opts.timeout * 1000), 2000)),
        # A worker says READY once the app is imported (and its lifespan started): a reload
        # never leaves fewer ready workers than before.
        manual_ready=True,
        reload_signal=opts.reload_signal,
    )

    @cluster.on("exit")
    def _exited(worker_id: int, code: int, sig: int, asked: bool) -> None:
        if not asked:
            log.warning("worker %d died unasked (code %d, signal %d): its slot restarts", worker_id, code, sig)

    @cluster.on("reloaded")
    def _reloaded(ok: bool, text: Optional[str]) -> None:
        print(f"rcluster-serve: reload {'done' if ok else 'failed: ' + str(text)}", file=sys.stderr, flush=True)

    @cluster.on("slot_failed")
    def _slot_failed(worker_id: int, text: str) -> None:
        log.error("worker slot of %d gave up: %s", worker_id, text)

    cluster.start()
    for idx, spec in zip(cluster.listeners, ([None] * (len(cluster.listeners) - len(binds))) + binds):
        if isinstance(spec, tuple):
            host = f"[{spec[0]}]" if ":" in spec[0] else spec[0]
            where = f"http://{host}:{cluster.port(idx)}"
        elif spec is None:
            where = f"systemd socket {idx}"
        else:
            where = f"unix:{spec}"
        print(f"rcluster-serve: listening on {where}", file=sys.stderr, flush=True)
    log.info("serving %s with %d workers (%s mode, %s); SIGTERM stops, %s reloads", opts.app,
             opts.workers or os.cpu_count() or 1, opts.mode, opts.policy, signal.Signals(opts.reload_signal).name)
    return cluster.run()
