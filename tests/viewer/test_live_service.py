"""End to end: `emlive detector` → `emlive serve --publish-raw --status` (tiny random model) → viewer → Chromium."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emlive.core.processes import ChildProcesses
from emlive.viewer.server import ViewerServer

from .conftest import canvas_sum, wait_frames

pytestmark = pytest.mark.browser


def _start(children: ChildProcesses, args: list[str], log: Path, timeout: float = 60.0) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as err:
        cmd = [sys.executable, "-m", "emlive", *args]
        proc = children.start(args[0], cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if sel.select(timeout) else ""
    if not line:
        pytest.fail(f"emlive {args[0]} did not start:\n{log.read_text()}")
    ready: dict[str, Any] = json.loads(line)
    return ready


@pytest.fixture
def procs() -> Iterator[ChildProcesses]:
    """The test's ``emlive`` subprocesses: SIGTERM at teardown (SIGKILL after 10 s), and if the tests die."""
    with ChildProcesses("test") as children:
        yield children


@pytest.mark.timeout(60)
def test_live_service_frames_and_figures(
    page: Any, tmp_path: Path, procs: ChildProcesses, make_viewer: Callable[..., ViewerServer]
) -> None:
    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig

    cfg = NetworkConfig(width=8, scales=3, blocks=1)
    model = save_model(tmp_path / "tiny.pt", BlindSpotNet(cfg), ModelCard(name="tiny-viewer", network=cfg))
    det_ready = _start(
        procs,
        ["detector", "--source", "synthetic", "--size", "64", "--synthetic-frames", "16", "--fps", "10", "--loop",
         "--output", "tcp://127.0.0.1:0"],
        tmp_path / "detector.log",
    )  # fmt: skip
    svc_ready = _start(
        procs,
        ["serve", "--model", str(model), "--input", det_ready["endpoint"], "--output", "tcp://127.0.0.1:0",
         "--status", "tcp://127.0.0.1:0", "--status-interval", "0.5", "--publish-raw", "--threads", "1"],
        tmp_path / "serve.log",
    )  # fmt: skip
    endpoints = svc_ready["endpoints"]
    server = make_viewer(endpoints["output"], status=endpoints["status"])
    page.goto(server.url)
    wait_frames(page, 3, timeout_ms=30000)
    assert canvas_sum(page, "raw") > 0 and canvas_sum(page, "denoised") > 0
    page.wait_for_function(
        "() => document.getElementById('service').textContent.includes('tiny-viewer')", timeout=15000
    )
    service = page.inner_text("#service")
    assert "input fps" in service and "skipped (service)" in service
    page.screenshot(path=str(tmp_path / "viewer-live.png"))
    page.wait_for_selector("#banner", state="hidden", timeout=5000)
