"""Loading, declarations, roles, logging."""

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import List

import pytest

import rcluster
from rcluster import _lib, _log
from conftest import PKG_ROOT, REPO, drive


def test_every_header_function_is_declared():
    header = (REPO / "include" / "rcluster.h").read_text()
    names = set(re.findall(r"\b(cluster_[a-z_]+)\(", header))
    assert names, "no functions found in rcluster.h"
    assert names == set(_lib.SIGNATURES), names ^ set(_lib.SIGNATURES)
    for lib in (_lib.cdll, _lib.pydll):
        for name in names:
            fn = getattr(lib, name)
            assert fn.argtypes is not None, name
    assert isinstance(_lib.pydll, __import__("ctypes").PyDLL)


def test_header_constants_match():
    header = (REPO / "include" / "rcluster.h").read_text()
    consts = dict(re.findall(r"#define (CLUSTER_[A-Z_]+) (-?\d+)", header))
    assert consts
    for name, value in consts.items():
        assert getattr(_lib, name) == int(value), name


def test_roles_in_the_primary():
    assert rcluster.is_primary() and not rcluster.is_worker()
    assert rcluster.worker_id() == 0
    assert os.path.exists(rcluster.library_path)


def test_cluster_error_carries_code_and_sentence():
    e = _lib.error(rcluster.E_AGAIN)
    assert isinstance(e, rcluster.ClusterError) and e.code == rcluster.E_AGAIN
    assert e.name == "CLUSTER_E_AGAIN" and e.message
    with pytest.raises(rcluster.ClusterError) as ei:
        _lib.call(_lib.cdll.cluster_local_port, 0)  # no primary running
    assert ei.value.code in (rcluster.E_STATE, rcluster.E_CLOSED)
    assert ei.value.message == _lib.last_error() != ""


def test_library_not_found_lists_every_place(tmp_path):
    # A copy of the package outside the checkout (no target/ nearby, no .so inside).
    shutil.copytree(PKG_ROOT / "rcluster", tmp_path / "rcluster", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env["RCLUSTER_LIB"] = str(tmp_path / "missing" / "librcluster.so")
    p = subprocess.run(
        [sys.executable, "-c", "import rcluster"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0
    assert "ImportError" in p.stderr
    assert str(tmp_path / "missing" / "librcluster.so") in p.stderr
    assert str(tmp_path / "rcluster" / "librcluster.so") in p.stderr
    assert "find_library" in p.stderr
    assert "librcluster.so (system search path" in p.stderr


def test_package_copy_is_found(tmp_path):
    shutil.copytree(PKG_ROOT / "rcluster", tmp_path / "rcluster", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(rcluster.library_path, tmp_path / "rcluster" / "librcluster.so")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "RCLUSTER_LIB")}
    p = subprocess.run(
        [sys.executable, "-c", "import rcluster; print(rcluster.library_path)"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "rcluster" / "librcluster.so")


def test_library_logs_reach_logging(make_cluster, caplog):
    caplog.set_level(logging.DEBUG, logger="rcluster")
    c = make_cluster("fork", workers=1, backoff=(50, 100, 1000))
    ready: List[int] = []
    c.on("ready", lambda wid: ready.append(wid))
    c.start()
    drive(c, lambda: ready == [1])
    os.kill(c.worker_info(1).pid, 9)  # a crash: the library logs the restart
    drive(c, lambda: ready == [1, 2])
    recs = [r for r in caplog.records if r.name == "rcluster"]
    assert recs, "no record from the library"
    assert any(r.levelno == logging.INFO and "restart" in r.getMessage() for r in recs), [
        (r.levelname, r.getMessage()) for r in recs
    ]
    assert all(hasattr(r, "rcluster_target") for r in recs)


def test_log_callback_from_another_thread(caplog):
    caplog.set_level(logging.DEBUG, logger="rcluster")
    _log.install()

    def from_thread() -> None:  # through the C thunk, as the library does from its threads
        _log._CALLBACK(None, 2, b"rcluster::test", b"hello from a thread")
        _log._CALLBACK(None, 5, b"rcluster::test", b"trace level")
        _log._CALLBACK(None, 1, None, None)

    t = threading.Thread(target=from_thread)
    t.start()
    t.join(5)
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "rcluster"]
    assert (logging.WARNING, "hello from a thread") in got
    assert (logging.DEBUG, "trace level") in got
    assert (logging.ERROR, "") in got
