"""Loading librcluster and declaring its C ABI (include/rcluster.h) for ctypes.

Two handles to the same library are kept:

* ``cdll`` (``ctypes.CDLL``) releases the GIL during each call, so other Python threads run
  while C blocks (EXEC mode, worker loops, everything that cannot fork);
* ``pydll`` (``ctypes.PyDLL``) keeps the GIL held during the call. Calls that may fork(2) in
  FORK mode go through it, so that no other Python thread holds the GIL (or any
  interpreter lock) at the moment of the fork, and the child can run Python code.

Library lookup order (the first that loads wins):

1. ``$RCLUSTER_LIB`` (a path to the .so);
2. ``librcluster.so`` inside this package's directory (where ``pip install ./bindings/python``
   and the wheel put the library they build);
3. ``target/release`` then ``target/debug`` of the source checkout this package lives in
   (``bindings/python/rcluster`` -> the repository root), when there is one;
4. the system: ``ctypes.util.find_library("rcluster")``, then plain ``librcluster.so``
   (``LD_LIBRARY_PATH``, the ld.so cache, the default directories).

If none loads, ``ImportError`` lists every place tried and why each failed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import operator
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_int32,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# ---- constants (rcluster.h) ----

RCLUSTER_ABI_VERSION = 1

CLUSTER_OK = 0
CLUSTER_E_INVAL = -1
CLUSTER_E_ROLE = -2
CLUSTER_E_NOWORKER = -3
CLUSTER_E_AGAIN = -4
CLUSTER_E_TOOBIG = -5
CLUSTER_E_CLOSED = -6
CLUSTER_E_THREADS = -7
CLUSTER_E_STATE = -8
CLUSTER_E_SYS = -9
CLUSTER_E_PANIC = -10
CLUSTER_E_TIMEOUT = -11

ERROR_NAMES: Dict[int, str] = {
    CLUSTER_E_INVAL: "CLUSTER_E_INVAL",
    CLUSTER_E_ROLE: "CLUSTER_E_ROLE",
    CLUSTER_E_NOWORKER: "CLUSTER_E_NOWORKER",
    CLUSTER_E_AGAIN: "CLUSTER_E_AGAIN",
    CLUSTER_E_TOOBIG: "CLUSTER_E_TOOBIG",
    CLUSTER_E_CLOSED: "CLUSTER_E_CLOSED",
    CLUSTER_E_THREADS: "CLUSTER_E_THREADS",
    CLUSTER_E_STATE: "CLUSTER_E_STATE",
    CLUSTER_E_SYS: "CLUSTER_E_SYS",
    CLUSTER_E_PANIC: "CLUSTER_E_PANIC",
    CLUSTER_E_TIMEOUT: "CLUSTER_E_TIMEOUT",
}

CLUSTER_MODE_FORK = 0
CLUSTER_MODE_EXEC = 1

CLUSTER_POLICY_ROUND_ROBIN = 0
CLUSTER_POLICY_LEAST_CONNECTIONS = 1
CLUSTER_POLICY_STICKY = 2
CLUSTER_POLICY_SHARED = 3
CLUSTER_POLICY_REUSEPORT = 4

CLUSTER_CHANNEL_RCLUSTER = 0
CLUSTER_CHANNEL_NODE_JSON = 1
CLUSTER_CHANNEL_NODE_ADVANCED = 2

CLUSTER_EVENT_FORK = 0
CLUSTER_EVENT_ONLINE = 1
CLUSTER_EVENT_READY = 2
CLUSTER_EVENT_MESSAGE = 3
CLUSTER_EVENT_DISCONNECT = 4
CLUSTER_EVENT_EXIT = 5
CLUSTER_EVENT_CONNECTION = 6
CLUSTER_EVENT_SHUTDOWN = 7
CLUSTER_EVENT_DRAIN = 8
CLUSTER_EVENT_ERROR = 9
CLUSTER_EVENT_SLOT_FAILED = 10
CLUSTER_EVENT_RELOADED = 11
CLUSTER_EVENT_LISTENING = 12
CLUSTER_EVENT_CHILD_STDOUT = 13
CLUSTER_EVENT_CHILD_STDERR = 14
CLUSTER_EVENT_CHILD_EXIT = 15
CLUSTER_EVENT_CHILD_ERROR = 16
CLUSTER_EVENT_THREAD_MESSAGE = 17
CLUSTER_EVENT_THREAD_EXIT = 18
CLUSTER_EVENT_CHILD_STDIN_DRAIN = 19

# Child processes and threads (C programs; declared here for completeness).
CLUSTER_STDIO_PIPE = 0
CLUSTER_STDIO_INHERIT = 1
CLUSTER_STDIO_IGNORE = 2
CLUSTER_STDIO_FD = 3
CLUSTER_ENV_INHERIT = 0
CLUSTER_ENV_REPLACE = 1

CLUSTER_WORKER_STARTING = 0
CLUSTER_WORKER_ONLINE = 1
CLUSTER_WORKER_READY = 2
CLUSTER_WORKER_DISCONNECTING = 3
CLUSTER_WORKER_DEAD = 4


class ClusterError(Exception):
    """A call into rcluster failed.

    ``code`` is the (negative) ``CLUSTER_E_*`` result code, ``message`` the sentence
    ``cluster_last_error()`` gave (or ``cluster_strerror(code)`` when it had none).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code: int = code
        self.message: str = message

    @property
    def name(self) -> str:
        """The code's name, e.g. ``"CLUSTER_E_AGAIN"``."""
        return ERROR_NAMES.get(self.code, f"CLUSTER_E_{self.code}")

    def __str__(self) -> str:
        return f"{self.message} [{self.name}]"


# ---- types ----


class cluster_event(Structure):
    """``struct cluster_event`` (valid only during the callback)."""

    _fields_ = [
        ("kind", c_uint32),
        ("worker_id", c_uint32),
        ("pid", c_int32),
        ("fd", c_int32),
        ("data", c_void_p),
        ("len", c_size_t),
        ("exit_code", c_int32),
        ("signal", c_int32),
        ("exited_after_disconnect", c_bool),
        ("listener", c_uint32),
        ("peer", c_void_p),
        ("peer_len", c_uint32),
    ]


class cluster_worker_info(Structure):
    """``struct cluster_worker_info``."""

    _fields_ = [
        ("id", c_uint32),
        ("pid", c_int32),
        ("state", c_uint32),
        ("connections", c_uint64),
        ("messages_in", c_uint64),
        ("messages_out", c_uint64),
        ("restarts", c_uint32),
        ("started_at_ms", c_uint64),
    ]


cluster_config_p = c_void_p
EVENT_CB = CFUNCTYPE(None, c_void_p, POINTER(cluster_event))
# The events arrive as an address: the binding reads the array with struct (see _events).
BATCH_CB = CFUNCTYPE(None, c_void_p, c_void_p, c_size_t)
WORKER_MAIN = CFUNCTYPE(c_int, c_void_p)
LOG_CB = CFUNCTYPE(None, c_void_p, c_int32, c_char_p, c_char_p)
THREAD_FN = CFUNCTYPE(c_int, c_void_p)

I32 = c_int32
CFG = cluster_config_p

# Every function of rcluster.h: name -> (restype, argtypes).
SIGNATURES: Dict[str, Tuple[Any, List[Any]]] = {
    # configuration
    "cluster_config_new": (CFG, []),
    "cluster_config_free": (None, [CFG]),
    "cluster_config_set_workers": (I32, [CFG, c_uint32]),
    "cluster_config_set_mode": (I32, [CFG, c_uint32]),
    "cluster_config_set_worker_main": (I32, [CFG, WORKER_MAIN, c_void_p]),
    "cluster_config_set_exec": (I32, [CFG, c_char_p, POINTER(c_char_p)]),
    "cluster_config_set_policy": (I32, [CFG, c_uint32]),
    "cluster_config_listen_tcp": (I32, [CFG, c_char_p, c_uint16]),
    "cluster_config_listen_unix": (I32, [CFG, c_char_p]),
    "cluster_config_set_unix_mode": (I32, [CFG, c_uint32, c_uint32]),
    "cluster_config_listen_systemd": (I32, [CFG]),
    "cluster_config_set_max_message": (I32, [CFG, c_uint64]),
    "cluster_config_set_signals": (I32, [CFG, c_bool]),
    "cluster_config_set_grace": (I32, [CFG, c_uint32]),
    "cluster_config_set_send_queue": (I32, [CFG, c_size_t, c_size_t]),
    "cluster_config_set_manual_ready": (I32, [CFG, c_bool]),
    "cluster_config_set_sched_batch": (I32, [CFG, c_bool]),
    "cluster_config_set_restart": (I32, [CFG, c_bool]),
    "cluster_config_set_backoff": (I32, [CFG, c_uint32, c_uint32, c_uint32]),
    "cluster_config_set_crash_loop": (I32, [CFG, c_uint32, c_uint32]),
    "cluster_config_set_startup_timeout": (I32, [CFG, c_uint32]),
    "cluster_config_set_min_uptime": (I32, [CFG, c_uint32]),
    "cluster_config_set_heartbeat": (I32, [CFG, c_uint32, c_uint32]),
    "cluster_config_set_max_requests": (I32, [CFG, c_uint64, c_uint64]),
    "cluster_config_set_user": (I32, [CFG, c_uint32, c_uint32]),
    "cluster_config_set_groups": (I32, [CFG, POINTER(c_uint32), c_size_t]),
    "cluster_config_set_cwd": (I32, [CFG, c_char_p]),
    "cluster_config_add_env": (I32, [CFG, c_char_p]),
    "cluster_config_set_silent": (I32, [CFG, c_bool]),
    "cluster_config_set_channel": (I32, [CFG, c_uint32]),  # (Node workers; declared for completeness)
    "cluster_config_set_metrics": (I32, [CFG, c_char_p]),
    "cluster_config_set_healthy_workers": (I32, [CFG, c_uint32]),
    "cluster_config_set_drain_delay": (I32, [CFG, c_uint32]),
    # logging
    "cluster_log_init": (I32, []),
    "cluster_set_log_callback": (I32, [LOG_CB, c_void_p]),
    # roles
    "cluster_is_primary": (c_bool, []),
    "cluster_is_worker": (c_bool, []),
    "cluster_worker_id": (c_uint32, []),
    # primary runtime
    "cluster_primary_start": (I32, [CFG, EVENT_CB, c_void_p]),
    "cluster_fork": (I32, []),
    "cluster_fork_env": (I32, [POINTER(c_char_p), c_size_t]),
    "cluster_fork_exec": (I32, [POINTER(c_char_p), c_size_t, POINTER(c_char_p), c_size_t, c_char_p]),  # (Node workers; declared for completeness)
    "cluster_listen_tcp": (I32, [c_char_p, c_uint16]),
    "cluster_listen_unix": (I32, [c_char_p]),
    "cluster_unlisten": (I32, [c_uint32]),
    "cluster_metrics_port": (I32, []),
    "cluster_local_port": (I32, [c_uint32]),
    "cluster_workers": (I32, [POINTER(c_uint32), c_size_t]),
    "cluster_worker_info": (I32, [c_uint32, POINTER(cluster_worker_info)]),
    "cluster_worker_kill": (I32, [c_uint32, c_int32]),
    "cluster_worker_disconnect": (I32, [c_uint32]),
    "cluster_worker_close_channel": (I32, [c_uint32]),  # (Node workers; declared for completeness)
    "cluster_worker_take_stdio": (I32, [c_uint32, POINTER(c_int32)]),  # (Node workers; declared for completeness)
    "cluster_reload": (I32, []),
    "cluster_stats": (I32, [c_char_p, c_size_t]),
    "cluster_scale": (I32, [c_uint32]),
    # worker runtime
    "cluster_worker_start": (I32, [EVENT_CB, c_void_p]),
    "cluster_conn_done": (I32, []),
    "cluster_ready": (I32, []),
    # both roles
    "cluster_run": (I32, []),
    "cluster_dispatch": (I32, [c_int32]),
    "cluster_fd": (I32, []),
    "cluster_send": (I32, [c_uint32, c_char_p, c_size_t]),
    "cluster_send_fd": (I32, [c_uint32, c_char_p, c_size_t, c_int32]),
    "cluster_broadcast": (I32, [c_char_p, c_size_t]),
    "cluster_cork": (I32, []),
    "cluster_uncork": (I32, []),
    "cluster_set_batching": (I32, [c_int32]),
    "cluster_set_batch_handler": (I32, [BATCH_CB, c_void_p]),
    "cluster_shutdown": (I32, [c_uint32]),
    # child processes and threads (C programs; declared for completeness: Python has its own)
    "cluster_spawn": (I32, [c_void_p]),
    "cluster_exec": (I32, [c_char_p, c_void_p]),
    "cluster_exec_file": (I32, [c_char_p, POINTER(c_char_p), c_void_p]),
    "cluster_child_write": (I32, [c_uint32, c_char_p, c_size_t]),
    "cluster_child_close_stdin": (I32, [c_uint32]),
    "cluster_child_kill": (I32, [c_uint32, c_int32]),
    "cluster_thread_start": (I32, [THREAD_FN, c_void_p]),
    "cluster_threads_set_pool": (I32, [c_uint32]),
    "cluster_thread_post": (I32, [c_char_p, c_size_t]),
    "cluster_thread_send": (I32, [c_uint32, c_char_p, c_size_t]),
    "cluster_thread_recv": (I32, [POINTER(c_void_p), POINTER(c_size_t), c_int32]),
    "cluster_thread_self": (I32, []),
    # errors
    "cluster_strerror": (c_char_p, [c_int32]),
    "cluster_version": (c_char_p, []),
    "cluster_last_error": (c_char_p, []),
}

# ---- loading ----

LIB_NAME = "librcluster.so"


def _candidates() -> List[Tuple[str, Optional[str]]]:
    """(description, path or None) in lookup order; None means "not applicable", with the
    reason in the description."""
    out: List[Tuple[str, Optional[str]]] = []
    env = os.environ.get("RCLUSTER_LIB")
    if env:
        out.append((f"$RCLUSTER_LIB={env}", env))
    else:
        out.append(("$RCLUSTER_LIB (not set)", None))
    here = Path(__file__).resolve().parent
    out.append((str(here / LIB_NAME), str(here / LIB_NAME)))
    repo = here.parent.parent.parent  # bindings/python/rcluster -> repository root
    if (repo / "Cargo.toml").is_file():
        for profile in ("release", "debug"):
            p = repo / "target" / profile / LIB_NAME
            out.append((str(p), str(p)))
    else:
        out.append((f"target/{{release,debug}}/{LIB_NAME} of a source checkout: {here} is not in one", None))
    return out


def _load() -> Tuple[ctypes.CDLL, ctypes.PyDLL, str]:
    tried: List[str] = []
    for what, path in _candidates():
        if path is None:
            tried.append(what)
            continue
        if not os.path.exists(path):
            tried.append(f"{what}: no such file")
            continue
        try:
            return ctypes.CDLL(path), ctypes.PyDLL(path), path
        except OSError as e:
            tried.append(f"{what}: {e}")
    found = ctypes.util.find_library("rcluster")
    if found:
        try:
            return ctypes.CDLL(found), ctypes.PyDLL(found), found
        except OSError as e:
            tried.append(f'ctypes.util.find_library("rcluster") -> {found}: {e}')
    else:
        tried.append('ctypes.util.find_library("rcluster"): not found')
    try:
        return ctypes.CDLL(LIB_NAME), ctypes.PyDLL(LIB_NAME), LIB_NAME
    except OSError as e:
        tried.append(f"{LIB_NAME} (system search path, LD_LIBRARY_PATH): {e}")
    lines = "\n  - ".join(tried)
    raise ImportError(
        "rcluster: cannot load the rcluster C library (librcluster.so). Looked in:\n  - "
        + lines
        + "\nInstall the package from the source tree (pip install ./bindings/python builds and "
        "bundles the library), or build it (cargo build --release) and set "
        "RCLUSTER_LIB=/path/to/librcluster.so."
    )


def _declare(lib: ctypes.CDLL) -> None:
    missing = []
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise ImportError(f"rcluster: {lib._name} lacks {', '.join(missing)} (an older library?)")


cdll, pydll, path = _load()
_declare(cdll)
_declare(pydll)


# ---- errors ----


def strerror(code: int) -> str:
    s = cdll.cluster_strerror(code)
    return s.decode("utf-8", "replace") if s else f"error {code}"


def last_error() -> str:
    s = cdll.cluster_last_error()
    return s.decode("utf-8", "replace") if s else ""


def error(code: int) -> ClusterError:
    """The ClusterError for `code`, with the sentence of this thread's last failure."""
    msg = last_error() or strerror(code)
    return ClusterError(code, msg)


def check(rc: int) -> int:
    """`rc` when it is a success (>= 0), else raises ClusterError."""
    if rc < 0:
        raise error(rc)
    return rc


#: KeyboardInterrupt/SystemExit raised by a signal handler while the library was inside the
#: log callback (main thread): re-raised once the library call returns (raise_pending).
pending: List[BaseException] = []


def raise_pending() -> None:
    if pending:
        e = pending.pop(0)
        try:
            raise e
        finally:
            del e


def call(fn: Callable[..., int], *args: Any) -> int:
    """Calls `fn(*args)` and checks its result code."""
    rc = fn(*args)
    if rc < 0:
        err = error(rc)
        raise_pending()
        raise err
    raise_pending()
    return rc


# ---- arguments ----
#
# ctypes converts what it is given without a word: -1 becomes 4294967295 as a uint32_t, 2**32 + 1
# becomes 1, None is an ArgumentError. Every integer goes through these first, so a bad one is a
# TypeError (not an integer) or a ValueError (out of range) that names it, before any call.

U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
SIZE_MAX = 2 ** (8 * ctypes.sizeof(c_size_t)) - 1


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi (anything with ``__index__`` but bool), else TypeError or
    ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, not {v}")
    return v


def u16(name: str, value: Any) -> int:
    return integer(name, value, 0, 0xFFFF)


def u32(name: str, value: Any) -> int:
    if type(value) is int and 0 <= value <= U32_MAX:
        return value  # the common case, without the general checks
    return integer(name, value, 0, U32_MAX)


def u64(name: str, value: Any) -> int:
    return integer(name, value, 0, U64_MAX)


def i32(name: str, value: Any) -> int:
    return integer(name, value, I32_MIN, I32_MAX)


def size(name: str, value: Any) -> int:
    return integer(name, value, 0, SIZE_MAX)


def flag(name: str, value: Any) -> bool:
    """A bool option (True/False/0/1)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def c_string(name: str, value: Any) -> bytes:
    """A str, bytes or path as the bytes C gets; a NUL inside would cut it short: ValueError."""
    if isinstance(value, bytes):
        b = value
    elif isinstance(value, str) or hasattr(value, "__fspath__"):
        b = os.fsencode(value)
    else:
        raise TypeError(f"{name} must be a str, bytes or path, not {type(value).__name__}")
    if b"\0" in b:
        raise ValueError(f"{name} contains a NUL byte")
    return b


# ---- the process the runtime belongs to ----
#
# fork(2) copies the library's process-global state: a child forked with os.fork() from a worker
# (or from a primary whose cluster runs) inherits that worker's channel, or the primary's epoll
# set, and the library cannot tell it from its parent (cluster_is_worker() is still true, a
# cluster_send from it reaches the primary as the parent's message, a dispatch steals the
# parent's events). The binding therefore remembers which process the role and the runtime
# belong to, and refuses every call from any other: such a child is neither primary nor worker.
# The workers the library forks itself (FORK mode) are not concerned: they become their own
# owners before the worker function runs.

#: pid of the process the library's role and runtime belong to; None while this process is a
#: primary with no runtime started (a fork of it is then an ordinary process).
owner_pid: Optional[int] = None


#: This process's pid and role, kept current by an at-fork hook (os.fork() runs it, and so
#: does a FORK-mode worker before its worker function): checks on every send cost no system call.
my_pid: int = os.getpid()
is_worker: bool = bool(cdll.cluster_is_worker())


def _after_fork() -> None:
    global my_pid, is_worker
    my_pid = os.getpid()
    is_worker = bool(cdll.cluster_is_worker())


os.register_at_fork(after_in_child=_after_fork)


def claim_process() -> None:
    """This process owns the library's state (a runtime started here, or it became a worker)."""
    global owner_pid
    _after_fork()
    owner_pid = my_pid


def release_process() -> None:
    """The primary's runtime ended: a process forked from now on may start its own."""
    global owner_pid
    if not cdll.cluster_is_worker():
        owner_pid = None


def forked_child() -> bool:
    """True in a process forked (not by the library) from a worker or a running primary."""
    return owner_pid is not None and owner_pid != my_pid


def check_process() -> None:
    """Raises ClusterError E_STATE in a forked child (see above)."""
    if forked_child():
        raise ClusterError(
            CLUSTER_E_STATE,
            f"this process (pid {os.getpid()}) was forked from pid {owner_pid}, whose rcluster runtime it "
            "inherited: only that process may use it (a forked child is neither primary nor worker; "
            "report back through a pipe or the exit code)",
        )


def argv_array(argv: Sequence[str]) -> "ctypes.Array[c_char_p]":
    """A NULL-terminated char*[] (keep the result alive during the call)."""
    arr = (c_char_p * (len(argv) + 1))()
    for i, a in enumerate(argv):
        arr[i] = os.fsencode(a)
    arr[len(argv)] = None
    return arr


if cdll.cluster_is_worker():  # an EXEC-mode worker: the role is this process's from the start
    claim_process()
