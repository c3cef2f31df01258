"""The package builds the library itself: `pip wheel ./bindings/python` gives a wheel that
carries librcluster.so, installs anywhere, and imports with no RCLUSTER_LIB (which still
overrides when set); auditwheel, where installed, finds it manylinux-compatible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import PKG_ROOT, REPO


@pytest.mark.time_limit(400)
def test_wheel_carries_the_library_and_imports_anywhere(tmp_path: Path) -> None:
    if shutil.which(os.environ.get("CARGO", "cargo")) is None:
        pytest.skip("cargo is not installed")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("pip is not installed")
    env = dict(os.environ)
    env.pop("RCLUSTER_LIB", None)
    env.pop("PYTHONPATH", None)
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "target"))  # reuse the checkout's build
    dist = tmp_path / "dist"
    # No build isolation when this Python has what the build needs (no download), else pip's.
    try:
        import setuptools  # noqa: F401
        from setuptools.command import bdist_wheel  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(dist), str(PKG_ROOT)],
        env=env, capture_output=True, timeout=380, cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    (wheel,) = dist.glob("rcluster-*.whl")
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl") or "-py3-none-linux_" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "rcluster/librcluster.so" in names and "rcluster/serve/__init__.py" in names, names
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(site)
    probe = "import rcluster; print(rcluster.library_path); print(rcluster.is_primary())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, cwd=str(elsewhere))
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    lib_path, primary = out.stdout.decode().split()
    assert lib_path == str(site / "rcluster" / "librcluster.so") and primary == "True"
    # the console script is installed and runs
    script = site / "bin" / "rcluster-serve"
    assert script.exists()
    out = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, timeout=60,
                         cwd=str(elsewhere))
    assert out.returncode == 0 and b"module:attribute" in out.stdout, out.stderr.decode(errors="replace")
    # RCLUSTER_LIB still overrides the bundled copy
    other = tmp_path / "librcluster.so"
    shutil.copyfile(site / "rcluster" / "librcluster.so", other)
    env["RCLUSTER_LIB"] = str(other)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, cwd=str(elsewhere))
    assert out.returncode == 0 and out.stdout.decode().split()[0] == str(other), out.stderr.decode(errors="replace")
    if shutil.which("auditwheel"):
        aw = subprocess.run(["auditwheel", "show", str(wheel)], capture_output=True, timeout=120)
        text = (aw.stdout + aw.stderr).decode(errors="replace")
        assert aw.returncode == 0 and "manylinux_" in text, text
