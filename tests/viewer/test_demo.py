"""`emlive demo` headless: detector -> service (shipped model) -> viewer, and denoised frames reach the page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emlive.demo import default_model, read_line_with_prefix

from .conftest import canvas_sum, wait_frames

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


def _url_from(proc: subprocess.Popen[bytes]) -> str:
    line = read_line_with_prefix(proc, "emlive live demo: open", "emlive demo", timeout=90)
    return line.split("open", 1)[1].split()[0]


def test_shipped_model_is_in_the_package() -> None:
    from emlive.core.modelcard import load_checkpoint

    net, card = load_checkpoint(default_model())
    assert card.frames == 5 and card.training.steps and card.training.steps > 0
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


def test_demo_shows_denoised_frames_in_the_browser(page: Any, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emlive", "demo", "--port", "0", "--size", "256", "--fps", "8", "--threads", "1",
         "--duration", "100"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.log", "w"),  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        url = _url_from(proc)
        page.goto(url)
        wait_frames(page, 3, timeout_ms=60000)
        assert canvas_sum(page, "denoised") > 0 and canvas_sum(page, "raw") > 0
        page.wait_for_function(
            "() => document.getElementById('service').textContent.includes('synthetic')", timeout=30000
        )
        page.screenshot(path=str(tmp_path / "demo.png"))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
    log = (tmp_path / "demo.log").read_text()
    assert log.count("SIGINT received") >= 2, "the service and the viewer shut down on the demo's Ctrl-C"
