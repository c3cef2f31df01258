"""The primary: ``Cluster``."""

from __future__ import annotations

import _imp
import ctypes
import enum
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _events, _lib, _log
from ._events import Errors, Handlers
from ._lib import ClusterError

ListenSpec = Union[Tuple[str, int], str, "os.PathLike[str]"]

MODES = {"fork": _lib.CLUSTER_MODE_FORK, "exec": _lib.CLUSTER_MODE_EXEC}

POLICIES = {
    "round_robin": _lib.CLUSTER_POLICY_ROUND_ROBIN,
    "rr": _lib.CLUSTER_POLICY_ROUND_ROBIN,
    "least_connections": _lib.CLUSTER_POLICY_LEAST_CONNECTIONS,
    "least": _lib.CLUSTER_POLICY_LEAST_CONNECTIONS,
    "sticky": _lib.CLUSTER_POLICY_STICKY,
    "shared": _lib.CLUSTER_POLICY_SHARED,
    "reuseport": _lib.CLUSTER_POLICY_REUSEPORT,
}

#: The longest a run() loop waits in C at a time (a signal that lands just before the wait is
#: acted on within this bound).
RUN_WAIT_MS = 1000

# C keeps pointers to these for as long as the runtime lives (a FORK-mode respawn calls the
# worker main at any later turn), and a process may start several clusters one after the
# other: keep every callback object for the life of the process.
_KEEP_ALIVE: List[Any] = []


class WorkerState(enum.IntEnum):
    """``CLUSTER_WORKER_*``."""

    STARTING = _lib.CLUSTER_WORKER_STARTING
    ONLINE = _lib.CLUSTER_WORKER_ONLINE
    READY = _lib.CLUSTER_WORKER_READY
    DISCONNECTING = _lib.CLUSTER_WORKER_DISCONNECTING
    DEAD = _lib.CLUSTER_WORKER_DEAD


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker (``Cluster.workers()``)."""

    id: int
    pid: int
    state: WorkerState
    connections: int
    messages_in: int
    messages_out: int
    restarts: int
    started_at_ms: int


def _after_fork_in_child(cluster: "Cluster") -> None:
    """In a FORK-mode worker, before the user's worker function: the interpreter's own
    after-fork work (what os.fork() does: os.register_at_fork hooks such as the random
    module's reseed, threading state, locks), then the primary's Python state that must not
    leak into a worker (signal handlers of Cluster.run(), a running asyncio loop)."""
    try:
        # PyOS_AfterFork_Child() expects the state PyOS_BeforeFork() leaves (3.13 releases the
        # import lock it took). PyOS_BeforeFork() cannot run here: the fork happens inside C,
        # at a time Python does not choose, possibly after Python callbacks ran in the same
        # call. Taking the import lock now (free in a single-threaded process) gives every
        # version what it expects: <= 3.12 reinitialise it, 3.13+ release it.
        _imp.acquire_lock()
        ctypes.pythonapi.PyOS_AfterFork_Child()
    except Exception:  # pragma: no cover - not on this platform
        pass
    if threading.current_thread() is threading.main_thread():
        cluster._signals.reset_in_child()
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass
    aio = sys.modules.get("asyncio")
    if aio is not None:
        try:
            aio.events._set_running_loop(None)
        except Exception:
            pass


class Cluster(_events.Runtime):
    """The primary of a cluster: starts and supervises worker processes, carries messages,
    hands out connections. A process has one running cluster at a time.

    ``workers``: how many (0 = one per CPU). ``mode``: ``"fork"`` (fork(2); the child runs
    ``worker()`` and exits with its return value) or ``"exec"`` (a new process runs
    ``exec_argv``, by default this program with the same argv, where ``rcluster.is_worker()``
    is true). ``listen``: ``(host, port)`` tuples (port 0 picks one, see ``port()``) and Unix
    socket paths. ``policy``: ``"round_robin"``, ``"least_connections"``, ``"sticky"``,
    ``"shared"`` or ``"reuseport"``.

    Events (``@c.on(name)``; a handler may take fewer trailing arguments than listed):
    ``fork(worker_id, pid)``, ``online(worker_id, pid)``, ``ready(worker_id, pid)``,
    ``message(worker_id, data, fd)`` (fd: a passed descriptor the handler then owns, or None;
    a handler that takes only two arguments never sees it and the binding closes it),
    ``object(worker_id, obj)`` (``send_obj`` messages), ``disconnect(worker_id, pid)``,
    ``exit(worker_id, code, signal, exited_after_disconnect, pid)``, ``shutdown()``,
    ``drain(worker_id)``, ``error(worker_id, text)``, ``slot_failed(worker_id, text)``,
    ``reloaded(ok, text)``.

    An exception raised by a handler is re-raised, with its traceback, from the ``run()`` or
    ``dispatch()`` that called the handler; the cluster keeps running (call ``run()`` again, or
    ``shutdown()`` then ``run()`` to stop).
    """

    EVENTS: Dict[str, Tuple[str, ...]] = {
        "fork": ("worker_id", "pid"),
        "online": ("worker_id", "pid"),
        "ready": ("worker_id", "pid"),
        "message": ("worker_id", "data", "fd"),
        "object": ("worker_id", "obj"),
        "disconnect": ("worker_id", "pid"),
        "exit": ("worker_id", "code", "signal", "exited_after_disconnect", "pid"),
        "shutdown": (),
        "drain": ("worker_id",),
        "error": ("worker_id", "text"),
        "slot_failed": ("worker_id", "text"),
        "reloaded": ("ok", "text"),
    }

    def __init__(
        self,
        workers: int = 0,
        *,
        mode: str = "fork",
        worker: Optional[Callable[[], Any]] = None,
        listen: Sequence[ListenSpec] = (),
        policy: Union[str, int] = "round_robin",
        grace_ms: int = 30000,
        max_message: Optional[int] = None,
        restart: Optional[bool] = None,
        backoff: Optional[Tuple[int, int, int]] = None,
        crash_loop: Optional[Tuple[int, int]] = None,
        heartbeat: Optional[Union[int, Tuple[int, int]]] = None,
        startup_timeout: Optional[int] = None,
        max_requests: Optional[Union[int, Tuple[int, int]]] = None,
        manual_ready: Optional[bool] = None,
        send_queue: Optional[Tuple[int, int]] = None,
        user: Optional[Union[int, str, Tuple[int, int]]] = None,
        groups: Optional[Sequence[int]] = None,
        cwd: Optional[Union[str, "os.PathLike[str]"]] = None,
        env: Optional[Mapping[str, str]] = None,
        silent: Optional[bool] = None,
        exec_argv: Optional[Sequence[str]] = None,
        unix_mode: Optional[int] = None,
        systemd: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f'mode must be "fork" or "exec", not {mode!r}')
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ValueError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
            self._policy = POLICIES[policy]
        else:
            self._policy = int(policy)
        if mode == "fork" and worker is None:
            raise ValueError('mode="fork" needs worker=: the function each forked worker runs')
        if worker is not None and not callable(worker):
            raise TypeError("worker must be callable")
        self.workers_wanted = int(workers)
        self.mode = mode
        self.worker = worker
        self.listen = list(listen)
        self.grace_ms = int(grace_ms)
        self._opts: Dict[str, Any] = dict(
            max_message=max_message,
            restart=restart,
            backoff=backoff,
            crash_loop=crash_loop,
            heartbeat=heartbeat,
            startup_timeout=startup_timeout,
            max_requests=max_requests,
            manual_ready=manual_ready,
            send_queue=send_queue,
            user=user,
            groups=groups,
            cwd=cwd,
            env=env,
            silent=silent,
            exec_argv=exec_argv,
            unix_mode=unix_mode,
            systemd=systemd,
        )
        self._handlers = Handlers("Cluster", self.EVENTS)
        self._errors = Errors()
        self._started = False
        self._finished = False
        self._stop_requested = False
        self._signals = _events.SignalQueue((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        self.listeners: List[int] = []
        self._cb = _lib.EVENT_CB(self._on_event)
        self._main = _lib.WORKER_MAIN(self._worker_main)
        _KEEP_ALIVE.extend((self._cb, self._main, self))
        _log.install()

    # ---- events ----

    def _on_event(self, _userdata: Optional[int], evp: Any) -> None:
        # Runs inside cluster_dispatch/cluster_run: nothing may unwind into C.
        fd = -1
        try:
            ev = evp.contents
            fd = ev.fd
            kind = ev.kind
            wid = ev.worker_id
            emit = self._handlers.emit
            if kind == _lib.CLUSTER_EVENT_MESSAGE:
                fd = -1
                self._deliver_message(wid, _events.event_data(ev), ev.fd, sender_first=True)
            elif kind == _lib.CLUSTER_EVENT_FORK:
                emit("fork", wid, ev.pid)
            elif kind == _lib.CLUSTER_EVENT_ONLINE:
                emit("online", wid, ev.pid)
            elif kind == _lib.CLUSTER_EVENT_READY:
                emit("ready", wid, ev.pid)
            elif kind == _lib.CLUSTER_EVENT_DISCONNECT:
                emit("disconnect", wid, ev.pid)
            elif kind == _lib.CLUSTER_EVENT_EXIT:
                emit("exit", wid, ev.exit_code, ev.signal, bool(ev.exited_after_disconnect), ev.pid)
            elif kind == _lib.CLUSTER_EVENT_SHUTDOWN:
                emit("shutdown")
            elif kind == _lib.CLUSTER_EVENT_DRAIN:
                emit("drain", wid)
            elif kind == _lib.CLUSTER_EVENT_ERROR:
                emit("error", wid, _events.event_data(ev).decode("utf-8", "replace"))
            elif kind == _lib.CLUSTER_EVENT_SLOT_FAILED:
                emit("slot_failed", wid, _events.event_data(ev).decode("utf-8", "replace"))
            elif kind == _lib.CLUSTER_EVENT_RELOADED:
                text = _events.event_data(ev).decode("utf-8", "replace") or None
                emit("reloaded", ev.exit_code == 0, text)
            elif fd >= 0:  # an event kind this binding does not know: release what it owns
                _events.close_fd(fd)
        except BaseException as e:
            if fd >= 0:
                _events.close_fd(fd)
            self._errors.add(e)

    def _worker_main(self, _userdata: Optional[int]) -> int:
        # FORK mode, in the child: C calls exit() with what this returns, so the Python stack
        # below (the primary's start()/run()) never resumes.
        code = 1
        try:
            _after_fork_in_child(self)
            code = _events.exit_code(self.worker() if self.worker is not None else None)
        except SystemExit as e:
            code = _events.exit_code(e.code)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            try:
                traceback.print_exc()
            except Exception:
                pass
            code = 1
        finally:
            _finish_child_io()
        return code

    # ---- start ----

    def _lib_for_fork(self) -> Any:
        """The handle for calls that may fork: PyDLL (GIL held across fork) in FORK mode."""
        return _lib.pydll if self.mode == "fork" else _lib.cdll

    def _check_threads(self) -> None:
        if self.mode != "fork":
            return
        n = threading.active_count()
        if n > 1:
            names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
            raise ClusterError(
                _lib.CLUSTER_E_THREADS,
                f"FORK mode refused: this process runs {n} Python threads (others: {names}), and fork(2) "
                'would copy only the calling one. Use Cluster(mode="exec", ...) in a multi-threaded '
                "program, or start the cluster before any thread.",
            )

    def _forking_call(self, fn_name: str, *args: Any) -> int:
        self._check_threads()
        if self.mode == "fork":
            _settle_os_threads()
        lib = self._lib_for_fork()
        if self.mode == "fork":
            _events.flush_stdio()
        rc = getattr(lib, fn_name)(*args)
        if rc < 0:
            err = _lib.error(rc)
            if rc == _lib.CLUSTER_E_THREADS:
                err = ClusterError(rc, f'{err.message} (from Python: Cluster(mode="exec", ...))')
            raise err
        return int(rc)

    def _configure(self, cfg: int) -> None:
        lib = _lib.cdll
        o = self._opts
        c = _lib.call
        c(lib.cluster_config_set_signals, cfg, False)  # Python's signal module handles them
        c(lib.cluster_config_set_workers, cfg, self.workers_wanted)
        c(lib.cluster_config_set_mode, cfg, MODES[self.mode])
        c(lib.cluster_config_set_policy, cfg, self._policy)
        c(lib.cluster_config_set_grace, cfg, self.grace_ms)
        if self.mode == "fork":
            c(lib.cluster_config_set_worker_main, cfg, self._main, None)
        if o["exec_argv"] is not None:
            argv = [os.fspath(a) for a in o["exec_argv"]]
            if not argv:
                raise ValueError("exec_argv is empty")
            prog = argv[0]
            if os.sep not in prog:
                prog = shutil.which(prog) or prog
            arr = _lib.argv_array(argv)
            c(lib.cluster_config_set_exec, cfg, os.fsencode(prog), arr)
        if o["max_message"] is not None:
            c(lib.cluster_config_set_max_message, cfg, int(o["max_message"]))
        if o["restart"] is not None:
            c(lib.cluster_config_set_restart, cfg, bool(o["restart"]))
        if o["backoff"] is not None:
            c(lib.cluster_config_set_backoff, cfg, *map(int, o["backoff"]))
        if o["crash_loop"] is not None:
            c(lib.cluster_config_set_crash_loop, cfg, *map(int, o["crash_loop"]))
        hb = o["heartbeat"]
        if hb is not None:
            interval, timeout = (hb, hb * 10) if isinstance(hb, int) else hb
            c(lib.cluster_config_set_heartbeat, cfg, int(interval), int(timeout))
        if o["startup_timeout"] is not None:
            c(lib.cluster_config_set_startup_timeout, cfg, int(o["startup_timeout"]))
        mr = o["max_requests"]
        if mr is not None:
            n, jitter = (mr, 0) if isinstance(mr, int) else mr
            c(lib.cluster_config_set_max_requests, cfg, int(n), int(jitter))
        if o["manual_ready"] is not None:
            c(lib.cluster_config_set_manual_ready, cfg, bool(o["manual_ready"]))
        if o["send_queue"] is not None:
            c(lib.cluster_config_set_send_queue, cfg, *map(int, o["send_queue"]))
        user = o["user"]
        if user is not None:
            if isinstance(user, str):
                import pwd

                pw = pwd.getpwnam(user)
                uid, gid = pw.pw_uid, pw.pw_gid
            elif isinstance(user, int):
                import pwd

                uid, gid = user, pwd.getpwuid(user).pw_gid
            else:
                uid, gid = user
            c(lib.cluster_config_set_user, cfg, int(uid), int(gid))
        if o["groups"] is not None:
            gs = [int(g) for g in o["groups"]]
            garr = (ctypes.c_uint32 * max(len(gs), 1))(*gs)
            c(lib.cluster_config_set_groups, cfg, garr, len(gs))
        if o["cwd"] is not None:
            c(lib.cluster_config_set_cwd, cfg, os.fsencode(os.fspath(o["cwd"])))
        for k, v in (o["env"] or {}).items():
            c(lib.cluster_config_add_env, cfg, os.fsencode(f"{k}={v}"))
        if o["silent"] is not None:
            c(lib.cluster_config_set_silent, cfg, bool(o["silent"]))
        self.listeners = []
        if o["systemd"]:
            n = c(lib.cluster_config_listen_systemd, cfg)
            self.listeners.extend(range(n))
        for spec in self.listen:
            if isinstance(spec, tuple):
                host, port = spec
                idx = c(lib.cluster_config_listen_tcp, cfg, str(host).encode(), int(port))
            else:
                idx = c(lib.cluster_config_listen_unix, cfg, os.fsencode(os.fspath(spec)))
                if o["unix_mode"] is not None:
                    c(lib.cluster_config_set_unix_mode, cfg, idx, int(o["unix_mode"]))
            self.listeners.append(idx)

    def start(self) -> None:
        """Binds the listeners and starts the workers, then returns (events come with
        ``run()``/``dispatch()``). In FORK mode the workers are forked from here."""
        if self._started:
            raise ClusterError(_lib.CLUSTER_E_STATE, "this Cluster was already started")
        self._check_threads()
        cfg = _lib.cdll.cluster_config_new()
        if not cfg:
            raise MemoryError("cluster_config_new")
        try:
            self._configure(cfg)
            self._forking_call("cluster_primary_start", cfg, self._cb, None)
        finally:
            _lib.cdll.cluster_config_free(cfg)
        self._started = True

    # ---- loop ----

    def _dispatch_fn(self) -> Any:
        # FORK mode: a dispatch may fork a respawned worker, so the GIL stays held (PyDLL).
        return _lib.pydll.cluster_dispatch if self.mode == "fork" else _lib.cdll.cluster_dispatch

    def dispatch(self, timeout_ms: int = 0) -> int:
        """One loop turn: waits up to `timeout_ms` (-1 forever), runs the handlers of what
        happened. Returns how many events were delivered (0 once ``finished``). Re-raises the
        first exception a handler raised."""
        if not self._started:
            raise ClusterError(_lib.CLUSTER_E_STATE, "call start() first")
        if self._finished:
            self._errors.raise_first()
            return 0
        if self.mode == "fork":
            _events.flush_stdio()
        rc = self._after_dispatch(self._dispatch_fn()(int(timeout_ms)))
        self._errors.raise_first()
        return max(rc, 0)

    def run(self) -> int:
        """Starts (if needed) and runs the cluster until it stops; returns 0 after a graceful
        stop. From the main thread, SIGTERM/SIGINT start a graceful ``shutdown(grace_ms)`` (a
        second one stops at once) and SIGHUP a rolling ``reload()``; the previous handlers are
        restored on return."""
        if not self._started:
            self.start()
        self._signals.install()
        fn = self._dispatch_fn()
        fork = self.mode == "fork"
        try:
            while not self._finished:
                if fork:
                    _events.flush_stdio()
                # A signal handler only queues its action (see SignalQueue); a queued action
                # makes this turn non-blocking, and RUN_WAIT_MS bounds the wait of a signal
                # that came just before the call.
                self._after_dispatch(fn(0 if self._signals.pending else RUN_WAIT_MS))
                self._run_deferred()
                self._errors.raise_first()
        finally:
            self._signals.restore()
        self._errors.raise_first()
        return 0

    def _run_deferred(self) -> None:
        while (signum := self._signals.pop()) is not None:
            try:
                if signum == signal.SIGHUP:
                    self.reload()
                elif self._stop_requested:
                    self.shutdown(0)
                else:
                    self._stop_requested = True
                    self.shutdown(self.grace_ms)
            except ClusterError as e:
                _log.logger.warning("signal %d: %s", signum, e)

    def fileno(self) -> int:
        """The loop's pollable fd: readable when ``dispatch(0)`` has work."""
        return _lib.call(_lib.cdll.cluster_fd)

    # ---- control ----

    def port(self, listener: int = 0) -> int:
        """The port listener `listener` is bound to."""
        return _lib.call(_lib.cdll.cluster_local_port, listener)

    def fork(self) -> int:
        """Starts one more worker; returns its id."""
        return self._forking_call("cluster_fork")

    def worker_ids(self) -> List[int]:
        """Ids of the live workers, ascending."""
        while True:
            n = _lib.call(_lib.cdll.cluster_workers, None, 0)
            arr = (ctypes.c_uint32 * max(n, 1))()
            m = _lib.call(_lib.cdll.cluster_workers, arr, n)
            if m <= n:
                return list(arr[:m])

    def worker_info(self, worker_id: int) -> WorkerInfo:
        info = _lib.cluster_worker_info()
        _lib.call(_lib.cdll.cluster_worker_info, worker_id, ctypes.byref(info))
        return WorkerInfo(
            id=info.id,
            pid=info.pid,
            state=WorkerState(info.state),
            connections=info.connections,
            messages_in=info.messages_in,
            messages_out=info.messages_out,
            restarts=info.restarts,
            started_at_ms=info.started_at_ms,
        )

    def workers(self) -> List[WorkerInfo]:
        """A snapshot of every live worker."""
        out = []
        for wid in self.worker_ids():
            try:
                out.append(self.worker_info(wid))
            except ClusterError as e:
                if e.code != _lib.CLUSTER_E_NOWORKER:
                    raise
        return out

    def kill(self, worker_id: int, sig: int = signal.SIGTERM) -> None:
        """Sends `sig` to a worker (its EXIT then says exited_after_disconnect)."""
        _lib.call(_lib.cdll.cluster_worker_kill, worker_id, int(sig))

    def disconnect(self, worker_id: int) -> None:
        """Stops a worker gracefully: it finishes what it was handed, then exits."""
        _lib.call(_lib.cdll.cluster_worker_disconnect, worker_id)

    def reload(self) -> None:
        """Rolling restart of every worker (a ``reloaded`` event reports the end)."""
        self._forking_call("cluster_reload")

    def scale(self, n: int) -> None:
        """Sets the number of workers (starts more, or stops the newest gracefully)."""
        self._forking_call("cluster_scale", int(n))

    def shutdown(self, grace_ms: Optional[int] = None) -> None:
        """Graceful stop: stop accepting, let workers finish, kill those left after
        `grace_ms` (default: the configured grace; 0: now). ``run()`` then returns 0."""
        _lib.call(_lib.cdll.cluster_shutdown, self.grace_ms if grace_ms is None else int(grace_ms))

    def stats(self) -> Dict[str, Any]:
        """The runtime's counters (``cluster_stats``), parsed."""
        cap = 4096
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = _lib.call(_lib.cdll.cluster_stats, buf, cap)
            if n < cap:
                stats: Dict[str, Any] = json.loads(buf.value.decode("utf-8"))
                return stats
            cap = n + 1

    # ---- messages ----

    def send(self, worker_id: int, data: Any, fd: Optional[_events.FdLike] = None) -> None:
        """Sends bytes to a worker, and a duplicate of `fd` when given (you keep yours).
        Raises ClusterError (``.code == E_AGAIN``) when its queue is full: a ``drain`` event
        follows."""
        _events.send(_lib.cdll, worker_id, data, fd)

    def send_obj(self, worker_id: int, obj: Any) -> None:
        """Sends a picklable object; the worker gets it in ``on("object")``."""
        _events.send(_lib.cdll, worker_id, _events.pickled(obj), None)

    def broadcast(self, data: Any) -> int:
        """Sends bytes to every worker; returns how many."""
        return _events.broadcast(_lib.cdll, data)

    def broadcast_obj(self, obj: Any) -> int:
        """Sends a picklable object to every worker; returns how many."""
        return _events.broadcast(_lib.cdll, _events.pickled(obj))


def _settle_os_threads(timeout_s: float = 0.25) -> None:
    """A Python thread that was just joined may still be finishing in the kernel, and the
    library counts the kernel's threads: give such threads a moment to go."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            n = len(os.listdir("/proc/self/task"))
        except OSError:
            return
        if n <= 1 or time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _finish_child_io() -> None:
    """Before C calls exit(): Python's own buffers and logging handlers are not flushed by
    it."""
    try:
        logging.shutdown()
    except Exception:
        pass
    _events.flush_stdio()
