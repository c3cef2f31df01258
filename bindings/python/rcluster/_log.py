"""Routing the library's log records into Python's ``logging`` (logger name ``rcluster``).

The library calls the callback from whichever thread logs (the loop thread, or a thread that
calls ``send``); ctypes takes the GIL for it, and the callback never raises into C. Levels:
1 error, 2 warn, 3 info, 4 debug, 5 trace -> ERROR, WARNING, INFO, DEBUG, DEBUG. What the library
emits at all is bounded by ``RCLUSTER_LOG`` (a level name, default ``info``), read when the
routing is installed; the ``rcluster`` logger's own level filters further.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Optional

from . import _lib

logger = logging.getLogger("rcluster")

_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: logging.DEBUG}

_lock = threading.Lock()
_installed = False


def _on_log(_userdata: Optional[int], level: int, target: Optional[bytes], message: Optional[bytes]) -> None:
    try:
        pylevel = _LEVELS.get(level, logging.DEBUG)
        if not logger.isEnabledFor(pylevel):
            return
        text = message.decode("utf-8", "replace") if message else ""
        tgt = target.decode("utf-8", "replace") if target else ""
        logger.log(pylevel, "%s", text, extra={"rcluster_target": tgt, "rcluster_level": level})
    except (KeyboardInterrupt, SystemExit) as e:
        # A signal handler (Ctrl-C's default one, say) ran inside this callback: never unwind
        # into C, but do not lose it either: the binding raises it when the call returns.
        if threading.current_thread() is threading.main_thread():
            _lib.pending.append(e)
    except BaseException:  # never unwind into C (logging reports its own handler errors)
        pass


# Module level: C keeps this pointer for the life of the process.
_CALLBACK = _lib.LOG_CB(_on_log)


def install() -> None:
    """Routes library records to ``logging`` (once per process; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        _lib.call(_lib.cdll.cluster_set_log_callback, _CALLBACK, None)
        _installed = True
        atexit.register(uninstall)


def uninstall() -> None:
    """Stops routing (at interpreter exit, so C never calls into a finalized interpreter)."""
    global _installed
    with _lock:
        if _installed:
            _lib.cdll.cluster_set_log_callback(_lib.LOG_CB(), None)
            _installed = False
