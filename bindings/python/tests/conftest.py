"""Shared helpers: import path, bounded waits, subprocess scripts, no leftover processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent  # bindings/python
SCRIPTS = HERE / "scripts"
REPO = PKG_ROOT.parent.parent

# Import the package from this checkout, here and in every subprocess (EXEC-mode workers too).
for p in (str(SCRIPTS), str(PKG_ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PKG_ROOT), str(SCRIPTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

import rcluster  # noqa: E402

TEST_TIMEOUT_S = 30


class Timeout(Exception):
    pass


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "time_limit(seconds): this test's bound instead of TEST_TIMEOUT_S")


@pytest.fixture(autouse=True)
def _time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test is bounded: SIGALRM raises in the main thread (it also interrupts a
    blocking dispatch, whose handler exceptions then surface from run())."""
    marker = request.node.get_closest_marker("time_limit")
    limit = marker.args[0] if marker else TEST_TIMEOUT_S

    def on_alarm(signum: int, frame: object) -> None:
        raise Timeout(f"test exceeded {limit} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def children(pid: int) -> List[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: List[int], timeout: float = 10.0) -> List[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        if alive:
            time.sleep(0.02)
    return alive


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    yield
    left = wait_gone(children(os.getpid()), timeout=10)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes left behind by the test: {left}"


def drive(c: "rcluster.Cluster", until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Dispatches `c` until `until()` (raises on timeout)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise Timeout("condition not reached in time")
        if c.finished:
            raise AssertionError("cluster finished before the condition")
        c.dispatch(50)


def stop(c: "rcluster.Cluster", timeout: float = 10.0) -> None:
    """Stops `c` at once and waits for the end."""
    if not c.started or c.finished:
        return
    c.shutdown(0)
    deadline = time.monotonic() + timeout
    while not c.finished:
        if time.monotonic() > deadline:
            raise Timeout("cluster did not stop")
        try:
            c.dispatch(50)
        except Exception:
            pass


@pytest.fixture
def clusters() -> Iterator[List["rcluster.Cluster"]]:
    """Clusters created by a test, stopped at its end."""
    made: List[rcluster.Cluster] = []
    yield made
    for c in made:
        stop(c)


@pytest.fixture
def make_cluster(clusters: List["rcluster.Cluster"]) -> Callable[..., "rcluster.Cluster"]:
    """A Cluster whose workers run tests/scripts/msg_worker.py's main() (FORK: called in the
    forked child; EXEC: the script run by a new interpreter)."""
    import msg_worker

    def make(mode: str, workers: int = 2, **kw: object) -> rcluster.Cluster:
        kw.setdefault("grace_ms", 2000)
        if mode == "exec":
            kw.setdefault("exec_argv", [sys.executable, str(SCRIPTS / "msg_worker.py")])
        c = rcluster.Cluster(workers, mode=mode, worker=msg_worker.main, **kw)  # type: ignore[arg-type]
        clusters.append(c)
        return c

    return make


class Script:
    """A test script run as its own process group, its stdout read line by line with
    deadlines (no threads: FORK-mode tests in this process must stay single-threaded)."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=str(REPO),
            start_new_session=True,
        )
        self.lines: List[str] = []
        self._buf = b""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    def _pump(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], max(timeout, 0))
        if not r:
            return True
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(line.decode("utf-8", "replace"))
        return True

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The first line (already read or to come) that satisfies `pred`."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[seen:]:
                if pred(line):
                    self.lines.remove(line)
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"no matching line in {timeout} s; output so far: {self.lines!r}; stderr: {self.stderr()}")
            if not self._pump(min(left, 0.2)) and self.proc.poll() is not None:
                raise AssertionError(
                    f"process ended (rc={self.proc.returncode}) without the line; output: {self.lines!r}; "
                    f"stderr: {self.stderr()}"
                )

    def wait_prefix(self, prefix: str, timeout: float = 10.0) -> List[str]:
        return self.wait_line(lambda s: s.startswith(prefix), timeout).split()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().decode("utf-8", "replace")

    def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise Timeout(f"process did not exit in {timeout} s; output: {self.lines!r}")
            self._pump(0.05)
        while self._pump(0):
            pass
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(5)
        else:
            try:  # workers of a primary that died are killed by PDEATHSIG; be sure anyway
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def script() -> Iterator[Callable[..., Script]]:
    made: List[Script] = []

    def start(name: str, *args: str, env: Optional[Dict[str, str]] = None) -> Script:
        path = SCRIPTS / name
        s = Script([str(path) if path.exists() else name, *args], env)
        made.append(s)
        return s

    yield start
    for s in made:
        s.kill()


def http_get(port: int, path: str = "/", timeout: float = 10.0, host: str = "127.0.0.1") -> bytes:
    """A minimal HTTP/1.1 GET (Connection: close); returns the whole response."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def http_body(resp: bytes) -> bytes:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), resp[:200]
    return body
