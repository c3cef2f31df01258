"""What Cluster and Worker share: event handler lists, the C event callback that stores the
exceptions of handlers, message decoding (raw bytes, pickled objects, passed fds), peers."""

from __future__ import annotations

import ctypes
import inspect
import os
import pickle
import signal
import socket
import struct
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, TypeVar, Union

from . import _lib

F = TypeVar("F", bound=Callable[..., Any])


class HasFileno(Protocol):
    def fileno(self) -> int: ...


#: A descriptor to pass: an int, or anything with ``fileno()`` (a socket, a file).
FdLike = Union[int, HasFileno]

#: Prefix that marks a ``send_obj`` message: the rest is a pickle. Any other message (from C,
#: Node, or ``send``) is delivered raw to ``on("message")``.
PICKLE_PREFIX = b"\x00rcluster-pickle\x00"

#: Type of a peer address: ``(host, port)`` (IPv4), ``(host, port, flowinfo, scope_id)``
#: (IPv6), a path (a named Unix socket), or None (unknown / unnamed).
Peer = Union[Tuple[str, int], Tuple[str, int, int, int], str, None]


def max_positional(fn: Callable[..., Any]) -> Tuple[Optional[int], int]:
    """(how many positional arguments `fn` takes at most, None = any; how many it needs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, 0
    most = 0
    need = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None, need
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is p.empty:
                need += 1
    return most, need


class Handlers:
    """Handlers per event name. A handler may take fewer (trailing) arguments than its event
    carries: it gets only as many as it accepts."""

    def __init__(self, owner: str, events: Dict[str, Tuple[str, ...]]) -> None:
        self._owner = owner
        self._events = events
        self._by_name: Dict[str, List[Tuple[Callable[..., Any], Optional[int]]]] = {n: [] for n in events}
        #: The one "message" handler and how many arguments it takes, when it is the only one
        #: and no "object" handler exists: message events then skip emit's general path.
        self.plain_message: Optional[Tuple[Callable[..., Any], int]] = None

    def _refresh(self) -> None:
        msg = self._by_name.get("message", [])
        plain = len(msg) == 1 and not self._by_name.get("object")
        self.plain_message = (msg[0][0], 3 if msg[0][1] is None else msg[0][1]) if plain else None

    def add(self, event: str, fn: Callable[..., Any]) -> None:
        if event not in self._events:
            known = ", ".join(sorted(self._events))
            raise ValueError(f"{self._owner}: unknown event {event!r} (known: {known})")
        if not callable(fn):
            raise TypeError(f"{self._owner}.on({event!r}): handler is not callable")
        most, need = max_positional(fn)
        params = self._events[event]
        if need > len(params):
            raise TypeError(
                f"{self._owner}.on({event!r}): the handler needs {need} arguments, "
                f"the event gives {len(params)}: ({', '.join(params)})"
            )
        self._by_name[event].append((fn, most))
        self._refresh()

    def remove(self, event: str, fn: Optional[Callable[..., Any]] = None) -> None:
        lst = self._by_name.get(event, [])
        lst[:] = [] if fn is None else [(f, n) for (f, n) in lst if f is not fn]
        self._refresh()

    def has(self, event: str) -> bool:
        return bool(self._by_name.get(event))

    def takes(self, event: str, index: int) -> bool:
        """True when some handler of `event` accepts argument number `index` (0-based)."""
        return any(n is None or n > index for (_, n) in self._by_name.get(event, []))

    def emit(self, event: str, *args: Any) -> None:
        handlers = self._by_name.get(event)
        if not handlers:
            return
        if len(handlers) == 1:  # the common case, without copying the list
            fn, most = handlers[0]
            fn(*(args if most is None else args[:most]))
            return
        for fn, most in list(handlers):  # a copy: a handler may add or remove handlers
            fn(*(args if most is None else args[:most]))


#: on(event) with no handler: the decorator form (an explicit None is a TypeError).
NO_HANDLER: Any = object()


def on_decorator(handlers: Handlers, event: str, fn: Any) -> Any:
    if fn is not NO_HANDLER:
        handlers.add(event, fn)
        return fn

    def deco(f: F) -> F:
        handlers.add(event, f)
        return f

    return deco


def as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"message data must be bytes-like, not {type(data).__name__} (encode str first)")


def pickled(obj: Any) -> bytes:
    return PICKLE_PREFIX + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


#: Looked up once: these run for every message.
_cluster_send = _lib.cdll.cluster_send
_U32_MAX = _lib.U32_MAX
_MESSAGE = _lib.CLUSTER_EVENT_MESSAGE
_string_at = string_at = ctypes.string_at

#: The head of a ``struct cluster_event`` (kind, worker_id, fd, data, len), padded to its size,
#: for reading a batch of events with one struct call. The batch is an array, so its stride is
#: the struct's size: frozen at 64 bytes on 64-bit platforms (docs/ABI.md), checked here.
_EVENT_SIZE = ctypes.sizeof(_lib.cluster_event)
_EVENT_HEAD = struct.Struct("@II4xiPN" + f"{_EVENT_SIZE - 32}x")
if (
    (_lib.cluster_event.fd.offset, _lib.cluster_event.data.offset, _lib.cluster_event.len.offset) != (12, 16, 24)
    or _EVENT_HEAD.size != _EVENT_SIZE
    or (ctypes.sizeof(ctypes.c_void_p) == 8 and _EVENT_SIZE != 64)
):
    raise ImportError("rcluster: struct cluster_event does not have the layout this binding reads")


def event_data(ev: _lib.cluster_event) -> bytes:
    n = ev.len
    return string_at(ev.data, n) if n else b""


def parse_peer(ptr: Optional[int], length: int) -> Peer:
    if not ptr or length < 2:
        return None
    raw = ctypes.string_at(ptr, length)
    family = struct.unpack_from("=H", raw, 0)[0]
    try:
        if family == socket.AF_INET and length >= 8:
            port = struct.unpack_from("!H", raw, 2)[0]
            return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        if family == socket.AF_INET6 and length >= 24:
            port, flow = struct.unpack_from("!HI", raw, 2)
            scope = struct.unpack_from("=I", raw, 24)[0] if length >= 28 else 0
            return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope)
        if family == socket.AF_UNIX:
            path = raw[2:].split(b"\0", 1)[0] if raw[2:3] != b"\0" else b""
            return os.fsdecode(path) if path else None
    except (OSError, ValueError, struct.error):
        return None
    return None


def close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Errors:
    """Exceptions raised by handlers, kept until the dispatch that ran them returns."""

    def __init__(self) -> None:
        self._pending: List[BaseException] = []

    def add(self, e: BaseException) -> None:
        self._pending.append(e)

    def raise_first(self) -> None:
        """Raises the oldest stored exception (the others wait for the next call)."""
        if self._pending:
            e = self._pending.pop(0)
            try:
                raise e.with_traceback(e.__traceback__)
            finally:
                del e

    def __bool__(self) -> bool:
        return bool(self._pending)


def flush_stdio() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


def exit_code(value: Any) -> int:
    """Like SystemExit: None -> 0, an int -> itself, anything else is printed -> 1."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        print(value, file=sys.stderr)
    except Exception:
        pass
    return 1


def fd_number(fd: Any) -> int:
    """A descriptor number from an int or an object with fileno(): TypeError for anything
    else, ValueError for a negative number (a closed socket's fileno() is -1) or one no
    descriptor can have (over 2**31 - 1). Whether it is open is the library's to say
    (ClusterError E_SYS: it cannot duplicate it)."""
    if not isinstance(fd, int) and hasattr(fd, "fileno"):
        fd = fd.fileno()
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int or have fileno(), not {type(fd).__name__}")
    if not 0 <= fd <= _lib.I32_MAX:
        raise ValueError(f"fd must be in 0..{_lib.I32_MAX}, not {fd} (a closed socket's fileno() is -1)")
    return fd


def send(lib: Any, to: Any, data: Any, fd: Any) -> None:
    to = _lib.u32("to", to)
    b = as_bytes(data)
    if fd is None:
        _lib.call(lib.cluster_send, to, b, len(b))
    else:
        _lib.call(lib.cluster_send_fd, to, b, len(b), fd_number(fd))


def broadcast(lib: Any, data: Any) -> int:
    b = as_bytes(data)
    return _lib.call(lib.cluster_broadcast, b, len(b))


class SignalQueue:
    """Process signals turned into queued work. Python runs a handler between any two bytecodes
    of the main thread, possibly inside the library's log callback, which runs with the
    library's runtime lock held: a handler must never call the library. It only queues the
    signal; the owner's run() loop acts on the queue after each library call."""

    def __init__(self, signals: Tuple[int, ...]) -> None:
        self.signals = signals
        self.saved: Dict[int, Any] = {}
        self.pending: List[int] = []

    def install(self) -> None:
        """Takes the signals over (main thread only; Python allows no other)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            if sig not in self.saved:
                self.saved[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """Puts back the handlers that were there before install()."""
        saved, self.saved = self.saved, {}
        for sig, old in saved.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass

    def reset_in_child(self) -> None:
        """In a freshly forked worker: default dispositions for what the primary took over."""
        for sig in self.saved:
            try:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self.saved = {}

    def pop(self) -> Optional[int]:
        """The oldest queued signal, or None."""
        return self.pending.pop(0) if self.pending else None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)


class Runtime:
    """What Cluster and Worker share: event handlers, errors raised in them, and the end of
    the library's runtime."""

    _handlers: Handlers
    _errors: Errors
    _started: bool
    _finished: bool
    _running: bool = False

    def _event(self, ev: Any) -> None:
        raise NotImplementedError

    #: Message handlers take (sender, data, fd) in the primary, (data, sender, fd) in a worker.
    _sender_first: bool = True

    def _on_events(self, _userdata: Optional[int], addr: int, n: int) -> None:
        """The batch callback: every event of a loop turn. A message with no fd, for one plain
        handler, is read straight from the array with struct (no ctypes object per event) and
        handed over; any other event goes through ``_event`` as a ``cluster_event``."""
        size = _EVENT_SIZE
        raw = _string_at(addr, n * size)
        event = self._event
        handlers = self._handlers
        sender_first = self._sender_first
        for i, (kind, wid, fd, data, length) in enumerate(_EVENT_HEAD.iter_unpack(raw)):
            plain = handlers.plain_message
            if kind != _MESSAGE or fd >= 0 or plain is None:
                event(_lib.cluster_event.from_address(addr + i * size))
                continue
            try:
                fn, most = plain
                payload = _string_at(data, length) if length else b""
                args = (wid, payload, None) if sender_first else (payload, wid, None)
                if most < 3:
                    args = args[:most]
                fn(*args)
            except BaseException as e:  # re-raised from run()/dispatch(), never into C
                self._errors.add(e)

    #: True for Worker, False for Cluster: the role whose process may use the object.
    _worker_role: bool = False

    def _send(self, to: Any, data: Any, fd: Any) -> None:
        """send() of Cluster and Worker: the fast path, else every check and its precise error."""
        if fd is None and self._send_fast(to, data):
            return
        self._enter()
        send(_lib.cdll, to, data, fd)

    def _send_fast(self, to: Any, data: Any) -> bool:
        """send()'s common case in one library call: bytes to an int id, from the process
        that owns this running runtime, in its role. False (nothing done) when any of that does
        not hold: the caller then takes the path with every check and its precise error."""
        if (
            type(data) is not bytes
            or type(to) is not int
            or not 0 <= to <= _U32_MAX
            or not self._started
            or self._finished
            or _lib.owner_pid != _lib.my_pid
            or _lib.is_worker is not self._worker_role
        ):
            return False
        rc = _cluster_send(to, data, len(data))
        if rc < 0:
            err = _lib.error(rc)
            _lib.raise_pending()
            raise err
        if _lib.pending:
            _lib.raise_pending()
        return True

    def on(self, event: str, fn: Any = NO_HANDLER) -> Any:
        """Registers `fn` for `event`; usable as a decorator (``@c.on("ready")``). Returns `fn`.
        ValueError for an unknown event, TypeError for a handler that is not callable (None
        included) or needs more arguments than the event gives."""
        return on_decorator(self._handlers, event, fn)

    def off(self, event: str, fn: Optional[Callable[..., Any]] = None) -> None:
        """Removes `fn` (or every handler) from `event`."""
        self._handlers.remove(event, fn)

    @property
    def finished(self) -> bool:
        """True once the runtime has ended (``run()`` returned after a stop)."""
        return self._finished

    @property
    def started(self) -> bool:
        """True once ``start()`` ran."""
        return self._started

    def _check_role(self) -> None:
        """Raises ClusterError E_ROLE when this object does not belong to this process's role."""

    def _enter(self) -> None:
        """Before a call on this object's runtime: this process owns it (a forked child:
        E_STATE), in the right role (E_ROLE), started (E_STATE) and not finished (E_CLOSED).
        A finished object never reaches the library: another runtime may run by now."""
        _lib.check_process()
        self._check_role()
        if self._finished:
            raise _lib.ClusterError(_lib.CLUSTER_E_CLOSED, f"this {type(self).__name__} has finished")
        if not self._started:
            raise _lib.ClusterError(_lib.CLUSTER_E_STATE, f"this {type(self).__name__} is not started (call start() first)")

    def _check_run(self) -> None:
        """run() from inside one of this object's handlers (or while it runs in another
        thread): E_STATE, before run() touches the signal handlers of the run in progress."""
        if self._running:
            raise _lib.ClusterError(
                _lib.CLUSTER_E_STATE, "run() called while run() is running (from an event handler?): return from the handler instead"
            )

    def _finish(self) -> None:
        self._finished = True

    def _after_dispatch(self, rc: int) -> int:
        if rc == _lib.CLUSTER_E_CLOSED:
            self._finish()
        elif rc < 0:
            raise _lib.error(rc)
        _lib.raise_pending()
        return int(rc)

    def _deliver_message(self, sender: int, data: bytes, fd: int, sender_first: bool) -> None:
        """A MESSAGE event: "object" when it is a pickled object and someone listens for
        those, else "message"; a passed fd goes to a handler that takes it, or is closed.
        `sender_first`: the primary's handlers take (sender, ...), a worker's (..., sender)."""
        owned = fd if fd >= 0 else None
        if data.startswith(PICKLE_PREFIX) and self._handlers.has("object"):
            if owned is not None:
                close_fd(owned)
            obj = pickle.loads(data[len(PICKLE_PREFIX) :])
            self._handlers.emit("object", *((sender, obj) if sender_first else (obj, sender)))
            return
        taken = owned is not None and self._handlers.takes("message", 2)
        try:
            args = (sender, data, owned) if sender_first else (data, sender, owned)
            self._handlers.emit("message", *args)
        finally:
            if owned is not None and not taken:
                close_fd(owned)
