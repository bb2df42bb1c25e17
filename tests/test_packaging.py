"""The built wheel: one `emlive` namespace, configs inside, no stray top-level modules; it runs installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel() -> Path:
    """``pip wheel`` of this checkout, shared with the light-install tests (built once per checkout content)."""
    from emlive.bench.light_install import cached_wheel

    return cached_wheel()


@pytest.mark.timeout(300)
def test_wheel_has_one_namespace_and_the_configs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"emlive", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for required in (
        "emlive/core/network.py",
        "emlive/train/config.py",
        "emlive/export/__init__.py",
        "emlive/stream/__init__.py",
        "emlive/viewer/__init__.py",
        "emlive/configs/synthetic-small.yaml",
        "emlive/cli.py",
    ):
        assert required in names, required
    assert not any(n.startswith("emlive/tests/") or "/.venv/" in n for n in names)


@pytest.mark.timeout(300)
def test_installed_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import emlive, emlive.train.config as c; "
        "print(emlive.__file__); print(c.load_config('synthetic-small').network.width)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(str(target))
    proc = subprocess.run(
        [sys.executable, "-m", "emlive", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and "train" in proc.stdout
