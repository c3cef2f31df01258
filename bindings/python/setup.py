"""Build hook: `pip install ./bindings/python` and `pip wheel ./bindings/python` build the Rust
library (`cargo build --release --lib` of the crate at the repository root) and put
`librcluster.so` inside the `rcluster` package, so the install needs nothing else.

Why a setuptools hook and not setuptools-rust or maturin: the binding loads the library with
ctypes; the library does not link to Python. setuptools-rust names what it builds after the
interpreter's ABI (`librcluster.cpython-311-x86_64-linux-gnu.so`, a cp311 wheel) and maturin's
bindings are pyo3, cffi, uniffi or a binary, none a plain C-ABI cdylib for ctypes. Both would
add a build dependency to give a worse result. This hook runs cargo and copies one file; the
wheel is tagged `py3-none-<platform>` (one wheel for every Python 3 on that platform), which
`auditwheel repair` turns into a manylinux wheel (the library needs only glibc).

Environment: `CARGO` (the cargo to run), `CARGO_TARGET_DIR` (as cargo), `RCLUSTER_PREBUILT`
(a librcluster.so to package instead of building one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 ships bdist_wheel; older ones take it from the wheel package
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
CRATE = HERE.parent.parent  # bindings/python -> the repository root (Cargo.toml)
LIB = "librcluster.so"


def build_library() -> Path:
    """Builds the release library with cargo and returns its path."""
    prebuilt = os.environ.get("RCLUSTER_PREBUILT")
    if prebuilt:
        return Path(prebuilt)
    if not (CRATE / "Cargo.toml").is_file():
        raise SystemExit(
            f"rcluster: no Cargo.toml at {CRATE}: build from the rcluster source tree "
            "(pip install ./bindings/python), or set RCLUSTER_PREBUILT=/path/to/librcluster.so"
        )
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [cargo, "build", "--release", "--lib", "--manifest-path", str(CRATE / "Cargo.toml")]
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError:
        raise SystemExit("rcluster: building the library needs cargo (https://rustup.rs), not found") from None
    target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
    if not target.is_absolute():
        target = CRATE / target
    return target / "release" / LIB


class BuildPyWithLibrary(build_py):
    """build_py, plus the library copied into the package."""

    def run(self) -> None:
        super().run()
        lib = build_library()
        dest = Path(self.build_lib) / "rcluster" / LIB
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, dest)
        os.chmod(dest, 0o755)
        strip = shutil.which("strip")
        if strip:  # the release build keeps debug info (backtraces in the repo): 10 MB -> ~1 MB
            subprocess.run([strip, "--strip-debug", str(dest)], check=False)


class NativeDistribution(Distribution):
    """Says the package is not pure Python, so it installs into platlib and the wheel names a
    platform."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for one platform (it carries a native library) but any Python 3 (ctypes)."""

    def get_tag(self):  # type: ignore[no-untyped-def]
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(distclass=NativeDistribution, cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel})
