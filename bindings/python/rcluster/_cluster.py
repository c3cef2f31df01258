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


def _sync_environ() -> None:
    """os.environ is a copy taken when Python started: the variables the library set in this
    FORK-mode worker (the config's env, ``fork(env=...)``) are in the C environment only.
    Copy them over (collected first: setting one may move the C array)."""
    try:
        envp = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError):  # pragma: no cover - no libc environ symbol
        return
    pairs = []
    i = 0
    while envp[i] is not None:
        k, sep, v = envp[i].partition(b"=")
        if sep and k:
            pairs.append((k, v))
        i += 1
    for k, v in pairs:
        if os.environb.get(k) != v:
            os.environb[k] = v


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
    _lib.claim_process()  # the library made this process a worker: its role is its own
    _sync_environ()
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
    is true). ``reload_signal``: the signal that makes ``run()`` reload (default SIGHUP). ``listen``: ``(host, port)`` tuples (port 0 picks one, see ``port()``) and Unix
    socket paths. ``policy``: ``"round_robin"``, ``"least_connections"``, ``"sticky"``,
    ``"shared"`` or ``"reuseport"``.

    Events (``@c.on(name)``; a handler may take fewer trailing arguments than listed):
    ``fork(worker_id, pid)``, ``online(worker_id, pid)``, ``ready(worker_id, pid)``,
    ``message(worker_id, data, fd)`` (fd: a passed descriptor the handler then owns, or None;
    a handler that takes only two arguments never sees it and the binding closes it),
    ``object(worker_id, obj)`` (``send_obj`` messages), ``disconnect(worker_id, pid)``,
    ``exit(worker_id, code, signal, exited_after_disconnect, pid)``, ``shutdown()``,
    ``drain(worker_id)``, ``error(worker_id, text)``, ``slot_failed(worker_id, text)``,
    ``reloaded(ok, text)``, ``listening(worker_id, address, listener)`` (a worker called
    ``Worker.listen``; `address` is ``"127.0.0.1:8080"``, ``"[::1]:80"`` or a socket path).

    An exception raised by a handler is re-raised, with its traceback, from the ``run()`` or
    ``dispatch()`` that called the handler; the cluster keeps running (call ``run()`` again, or
    ``shutdown()`` then ``run()`` to stop).

    Misuse gets an exception, never a crash or a hang (README "Misuse"): bad argument types are
    TypeErrors and out-of-range values ValueErrors (from the constructor, or from ``start()``
    for the options, before anything starts); a call before ``start()`` is ClusterError
    ``E_STATE``, a second ``start()`` too; every call after the cluster finished is ``E_CLOSED``
    (``shutdown()``, ``dispatch()`` and ``run()`` then do nothing), even when another cluster
    runs by then; ``dispatch()`` or ``run()`` from inside a handler is ``E_STATE``; every call
    in a worker (a FORK-mode worker inherits this object) is ``E_ROLE``; every call in a
    process forked from the primary with ``os.fork()`` while the cluster runs is ``E_STATE``.
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
        "listening": ("worker_id", "address", "listener"),
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
        min_uptime: Optional[int] = None,
        heartbeat: Optional[Union[int, Tuple[int, int]]] = None,
        startup_timeout: Optional[int] = None,
        max_requests: Optional[Union[int, Tuple[int, int]]] = None,
        manual_ready: Optional[bool] = None,
        sched_batch: Optional[bool] = None,
        send_queue: Optional[Tuple[int, int]] = None,
        user: Optional[Union[int, str, Tuple[int, int]]] = None,
        groups: Optional[Sequence[int]] = None,
        cwd: Optional[Union[str, "os.PathLike[str]"]] = None,
        env: Optional[Mapping[str, str]] = None,
        silent: Optional[bool] = None,
        exec_argv: Optional[Sequence[str]] = None,
        unix_mode: Optional[int] = None,
        systemd: bool = False,
        reload_signal: int = signal.SIGHUP,
    ) -> None:
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f'mode must be "fork" or "exec", not {mode!r}')
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ValueError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
            self._policy = POLICIES[policy]
        else:
            self._policy = _lib.u32("policy", policy)
        if mode == "fork" and worker is None:
            raise ValueError('mode="fork" needs worker=: the function each forked worker runs')
        if worker is not None and not callable(worker):
            raise TypeError("worker must be callable")
        self.workers_wanted = _lib.u32("workers", workers)
        self.mode = mode
        self.worker = worker
        if isinstance(listen, (str, bytes)) or not hasattr(listen, "__iter__"):
            raise TypeError("listen must be a list of (host, port) tuples and Unix socket paths")
        self.listen = [_listen_spec(spec) for spec in listen]
        self.grace_ms = _lib.u32("grace_ms", grace_ms)
        self._opts: Dict[str, Any] = dict(
            max_message=max_message,
            restart=restart,
            backoff=backoff,
            crash_loop=crash_loop,
            min_uptime=min_uptime,
            heartbeat=heartbeat,
            startup_timeout=startup_timeout,
            max_requests=max_requests,
            manual_ready=manual_ready,
            sched_batch=sched_batch,
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
        self.reload_signal = _lib.integer("reload_signal", reload_signal, 1, signal.NSIG - 1)
        if self.reload_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGSTOP):
            raise ValueError("reload_signal cannot be SIGTERM, SIGINT, SIGKILL or SIGSTOP")
        self._signals = _events.SignalQueue((signal.SIGTERM, signal.SIGINT, self.reload_signal))
        self.listeners: List[int] = []
        self._cb = _lib.EVENT_CB(self._on_event)
        self._batch_cb = _lib.BATCH_CB(self._on_events)
        self._main = _lib.WORKER_MAIN(self._worker_main)
        _KEEP_ALIVE.extend((self._cb, self._batch_cb, self._main, self))
        _log.install()

    # ---- events ----

    def _on_event(self, _userdata: Optional[int], evp: Any) -> None:
        self._event(evp.contents)

    def _event(self, ev: Any) -> None:
        # Runs inside cluster_dispatch/cluster_run: nothing may unwind into C.
        fd = -1
        try:
            fd = ev.fd
            kind = ev.kind
            wid = ev.worker_id
            if kind == _lib.CLUSTER_EVENT_MESSAGE:  # (plain messages take the batch path: _on_events)
                fd = -1
                self._deliver_message(wid, _events.event_data(ev), ev.fd, sender_first=True)
                return
            emit = self._handlers.emit
            if kind == _lib.CLUSTER_EVENT_FORK:
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
            elif kind == _lib.CLUSTER_EVENT_LISTENING:
                emit("listening", wid, _events.event_data(ev).decode("utf-8", "replace"), ev.listener)
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
            if isinstance(o["exec_argv"], (str, bytes)):
                raise TypeError("exec_argv must be a sequence of strings (the program, then its arguments)")
            argv = [os.fsdecode(_lib.c_string("exec_argv[]", a)) for a in o["exec_argv"]]
            if not argv:
                raise ValueError("exec_argv is empty")
            prog = argv[0]
            if os.sep not in prog:
                prog = shutil.which(prog) or prog
            arr = _lib.argv_array(argv)
            c(lib.cluster_config_set_exec, cfg, os.fsencode(prog), arr)
        if o["max_message"] is not None:
            c(lib.cluster_config_set_max_message, cfg, _lib.u64("max_message", o["max_message"]))
        if o["restart"] is not None:
            c(lib.cluster_config_set_restart, cfg, _lib.flag("restart", o["restart"]))
        if o["backoff"] is not None:
            c(lib.cluster_config_set_backoff, cfg, *_numbers("backoff", o["backoff"], 3, _lib.u32))
        if o["crash_loop"] is not None:
            c(lib.cluster_config_set_crash_loop, cfg, *_numbers("crash_loop", o["crash_loop"], 2, _lib.u32))
        if o["min_uptime"] is not None:
            c(lib.cluster_config_set_min_uptime, cfg, _lib.u32("min_uptime", o["min_uptime"]))
        hb = o["heartbeat"]
        if hb is not None:
            if _is_int(hb):
                interval = _lib.u32("heartbeat", hb)
                timeout = min(interval * 10, _lib.U32_MAX)
            else:
                interval, timeout = _numbers("heartbeat", hb, 2, _lib.u32)
            c(lib.cluster_config_set_heartbeat, cfg, interval, timeout)
        if o["startup_timeout"] is not None:
            c(lib.cluster_config_set_startup_timeout, cfg, _lib.u32("startup_timeout", o["startup_timeout"]))
        mr = o["max_requests"]
        if mr is not None:
            n, jitter = (_lib.u64("max_requests", mr), 0) if _is_int(mr) else _numbers("max_requests", mr, 2, _lib.u64)
            c(lib.cluster_config_set_max_requests, cfg, n, jitter)
        if o["manual_ready"] is not None:
            c(lib.cluster_config_set_manual_ready, cfg, _lib.flag("manual_ready", o["manual_ready"]))
        if o["sched_batch"] is not None:
            c(lib.cluster_config_set_sched_batch, cfg, _lib.flag("sched_batch", o["sched_batch"]))
        if o["send_queue"] is not None:
            c(lib.cluster_config_set_send_queue, cfg, *_numbers("send_queue", o["send_queue"], 2, _lib.size))
        user = o["user"]
        if user is not None:
            if isinstance(user, str):
                import pwd

                pw = pwd.getpwnam(user)
                uid, gid = pw.pw_uid, pw.pw_gid
            elif _is_int(user):
                import pwd

                uid = _lib.u32("user", user)
                gid = pwd.getpwuid(uid).pw_gid
            else:
                uid, gid = _numbers("user", user, 2, _lib.u32)
            c(lib.cluster_config_set_user, cfg, uid, gid)
        if o["groups"] is not None:
            if isinstance(o["groups"], (str, bytes)):
                raise TypeError("groups must be a sequence of group ids")
            gs = [_lib.u32("groups[]", g) for g in o["groups"]]
            garr = (ctypes.c_uint32 * max(len(gs), 1))(*gs)
            c(lib.cluster_config_set_groups, cfg, garr, len(gs))
        if o["cwd"] is not None:
            c(lib.cluster_config_set_cwd, cfg, _lib.c_string("cwd", o["cwd"]))
        env = o["env"]
        if env is not None and not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
        for k, v in (env or {}).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"env must map str to str (got {k!r}: {type(v).__name__})")
            if not k or "=" in k:
                raise ValueError(f"env: {k!r} is not a variable name")
            c(lib.cluster_config_add_env, cfg, _lib.c_string("env", f"{k}={v}"))
        if o["silent"] is not None:
            c(lib.cluster_config_set_silent, cfg, _lib.flag("silent", o["silent"]))
        unix_mode = None if o["unix_mode"] is None else _lib.u32("unix_mode", o["unix_mode"])
        self.listeners = []
        if o["systemd"]:
            n = c(lib.cluster_config_listen_systemd, cfg)
            self.listeners.extend(range(n))
        for spec in self.listen:
            if isinstance(spec, tuple):
                host, port = spec
                idx = c(lib.cluster_config_listen_tcp, cfg, _lib.c_string("listen host", host), port)
            else:
                idx = c(lib.cluster_config_listen_unix, cfg, _lib.c_string("listen path", spec))
                if unix_mode is not None:
                    c(lib.cluster_config_set_unix_mode, cfg, idx, unix_mode)
            self.listeners.append(idx)

    def _check_role(self) -> None:
        if _lib.is_worker:
            raise ClusterError(
                _lib.CLUSTER_E_ROLE,
                f"a Cluster is for the primary, and this process is worker {_lib.cdll.cluster_worker_id()} "
                "(use rcluster.Worker() here)",
            )

    def _finish(self) -> None:
        self._finished = True
        _lib.release_process()

    def start(self) -> None:
        """Binds the listeners and starts the workers, then returns (events come with
        ``run()``/``dispatch()``). In FORK mode the workers are forked from here. A second
        start (of this object, or of another Cluster while one runs) is ClusterError
        ``E_STATE``; in a worker ``E_ROLE``."""
        _lib.check_process()
        self._check_role()
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
        # One Python call per loop turn instead of one per event.
        _lib.call(_lib.cdll.cluster_set_batch_handler, self._batch_cb, None)
        self._started = True
        _lib.claim_process()

    # ---- loop ----

    def _dispatch_fn(self) -> Any:
        # FORK mode: a dispatch may fork a respawned worker, so the GIL stays held (PyDLL).
        return _lib.pydll.cluster_dispatch if self.mode == "fork" else _lib.cdll.cluster_dispatch

    def dispatch(self, timeout_ms: int = 0) -> int:
        """One loop turn: waits up to `timeout_ms` (-1 forever), runs the handlers of what
        happened. Returns how many events were delivered (0 once ``finished``). Re-raises the
        first exception a handler raised. From inside a handler: ClusterError ``E_STATE``."""
        timeout_ms = _lib.i32("timeout_ms", timeout_ms)
        _lib.check_process()
        self._check_role()
        if not self._started:
            raise ClusterError(_lib.CLUSTER_E_STATE, "call start() first")
        if self._finished:
            self._errors.raise_first()
            return 0
        if self.mode == "fork":
            _events.flush_stdio()
        rc = self._after_dispatch(self._dispatch_fn()(timeout_ms))
        self._errors.raise_first()
        return max(rc, 0)

    def run(self) -> int:
        """Starts (if needed) and runs the cluster until it stops; returns 0 after a graceful
        stop. From the main thread, SIGTERM/SIGINT start a graceful ``shutdown(grace_ms)`` (a
        second one stops at once) and SIGHUP (``reload_signal``) a rolling ``reload()``; the previous handlers are
        restored on return. From inside a handler: ClusterError ``E_STATE``."""
        _lib.check_process()
        self._check_role()
        self._check_run()
        if not self._started:
            self.start()
        if self._finished:
            self._errors.raise_first()
            return 0
        self._signals.install()
        fn = self._dispatch_fn()
        fork = self.mode == "fork"
        self._running = True
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
            self._running = False
            self._signals.restore()
        self._errors.raise_first()
        return 0

    def _run_deferred(self) -> None:
        while (signum := self._signals.pop()) is not None:
            try:
                if signum == self.reload_signal:
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
        self._enter()
        return _lib.call(_lib.cdll.cluster_fd)

    # ---- control ----

    def port(self, listener: int = 0) -> int:
        """The port listener `listener` is bound to."""
        listener = _lib.u32("listener", listener)
        self._enter()
        return _lib.call(_lib.cdll.cluster_local_port, listener)

    def fork(self, env: Optional[Mapping[str, str]] = None) -> int:
        """Starts one more worker; returns its id. `env`: extra variables in that worker's
        environment (Node's ``cluster.fork(env)``), which a respawn or reload of its slot gets
        again."""
        self._enter()
        if not env:
            return self._forking_call("cluster_fork")
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
        entries = []
        for k, v in env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"env must map str to str (got {k!r}: {type(v).__name__})")
            if not k or "=" in k:
                raise ValueError(f"env: {k!r} is not a variable name")
            entries.append(_lib.c_string("env", f"{k}={v}"))
        arr = (ctypes.c_char_p * len(entries))(*entries)
        return self._forking_call("cluster_fork_env", arr, len(entries))

    def listen(self, host: str, port: int) -> int:
        """Adds a TCP listener while the cluster runs (every worker gets its connections);
        returns its index (its port: ``port(index)``)."""
        host_b = _lib.c_string("host", host)
        port = _lib.u16("port", port)
        self._enter()
        return _lib.call(_lib.cdll.cluster_listen_tcp, host_b, port)

    def worker_ids(self) -> List[int]:
        """Ids of the live workers, ascending."""
        self._enter()
        while True:
            n = _lib.call(_lib.cdll.cluster_workers, None, 0)
            arr = (ctypes.c_uint32 * max(n, 1))()
            m = _lib.call(_lib.cdll.cluster_workers, arr, n)
            if m <= n:
                return list(arr[:m])

    def worker_info(self, worker_id: int) -> WorkerInfo:
        """A snapshot of worker `worker_id` (ClusterError ``E_NOWORKER`` when there is none)."""
        worker_id = _lib.u32("worker_id", worker_id)
        self._enter()
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
        worker_id = _lib.u32("worker_id", worker_id)
        sig = _lib.i32("sig", sig)
        self._enter()
        _lib.call(_lib.cdll.cluster_worker_kill, worker_id, sig)

    def disconnect(self, worker_id: int) -> None:
        """Stops a worker gracefully: it finishes what it was handed, then exits."""
        worker_id = _lib.u32("worker_id", worker_id)
        self._enter()
        _lib.call(_lib.cdll.cluster_worker_disconnect, worker_id)

    def reload(self) -> None:
        """Rolling restart of every worker (a ``reloaded`` event reports the end)."""
        self._enter()
        self._forking_call("cluster_reload")

    def scale(self, n: int) -> None:
        """Sets the number of workers (starts more, or stops the newest gracefully)."""
        n = _lib.u32("n", n)
        self._enter()
        self._forking_call("cluster_scale", n)

    def shutdown(self, grace_ms: Optional[int] = None) -> None:
        """Graceful stop: stop accepting, let workers finish, kill those left after
        `grace_ms` (default: the configured grace; 0: now). ``run()`` then returns 0. Once
        the cluster finished it does nothing."""
        grace = self.grace_ms if grace_ms is None else _lib.u32("grace_ms", grace_ms)
        if self._finished and not _lib.forked_child() and not _lib.cdll.cluster_is_worker():
            return
        self._enter()
        _lib.call(_lib.cdll.cluster_shutdown, grace)

    def stats(self) -> Dict[str, Any]:
        """The runtime's counters (``cluster_stats``), parsed."""
        self._enter()
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
        follows. `fd`: an int or an object with ``fileno()`` (TypeError otherwise; ValueError
        when negative or over 2**31 - 1; ClusterError E_SYS when it is not open)."""
        self._send(worker_id, data, fd)

    def send_obj(self, worker_id: int, obj: Any) -> None:
        """Sends a picklable object; the worker gets it in ``on("object")``."""
        self._enter()
        _events.send(_lib.cdll, worker_id, _events.pickled(obj), None)

    def broadcast(self, data: Any) -> int:
        """Sends bytes to every worker; returns how many."""
        self._enter()
        return _events.broadcast(_lib.cdll, data)

    def broadcast_obj(self, obj: Any) -> int:
        """Sends a picklable object to every worker; returns how many."""
        self._enter()
        return _events.broadcast(_lib.cdll, _events.pickled(obj))


def _listen_spec(spec: Any) -> ListenSpec:
    """A listener as given to Cluster(listen=...), checked: ``(host, port)`` with a str host
    and a port in 0..65535, or a Unix socket path (str, bytes or os.PathLike)."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"a TCP listener is (host, port), not {spec!r}")
        host, port = spec
        if not isinstance(host, str):
            raise TypeError(f"listen host must be a str, not {type(host).__name__}")
        _lib.c_string("listen host", host)
        return (host, _lib.integer("listen port", port, 0, _lib.U16_MAX))
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        _lib.c_string("listen path", spec)
        return spec  # type: ignore[no-any-return]
    raise TypeError(f"a listener is (host, port) or a Unix socket path, not {type(spec).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(name: str, value: Any, n: int, conv: Callable[[str, Any], int]) -> Tuple[int, ...]:
    """A tuple of `n` checked integers."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
        raise TypeError(f"{name} must be a tuple of {n} ints")
    return tuple(conv(name, v) for v in value)


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
