"""`emlive demo`: its three processes live and die with it (every way it can end), and, headless in Chromium,
detector -> service (shipped model) -> viewer shows denoised frames on the page."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emlive.core.processes import ChildProcesses, ProcessInfo, descendants, wait_until_gone
from emlive.demo import (
    DEMO_FPS,
    VIEWER_NICE,
    LiveDemo,
    default_model,
    niced,
    read_line_with_prefix,
    synthetic_demo_movie,
)

from .conftest import canvas_sum, wait_frames

SMALL_DEMO = ["--port", "0", "--size", "64", "--fps", "5", "--threads", "1"]


@dataclass
class RunningDemo:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., RunningDemo]]:
    """Starts ``emlive demo ARGS`` (stderr to a log; the test owns it as a supervised child, in its own session,
    so a signal the test sends reaches the demo only)."""
    with ChildProcesses("test", grace_s=30) as children:

        def start(args: list[str], wait_ready: bool = True) -> RunningDemo:
            log_path = tmp_path / "demo.log"
            with log_path.open("w") as log:
                proc = children.start(
                    "demo",
                    [sys.executable, "-m", "emlive", "demo", *args],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                )
            demo = RunningDemo(proc, log_path)
            if wait_ready:
                line = read_line_with_prefix(proc, "emlive live demo: open", "emlive demo", timeout=90)
                demo.url = line.split("open", 1)[1].split()[0]
            return demo

        yield start


def _assert_none_survive(demo: RunningDemo, started: list[ProcessInfo], timeout: float = 10.0) -> None:
    """None of ``started`` (nor any process of their groups) runs within ``timeout`` s of the demo's end."""
    demo.proc.wait(timeout=30)
    alive = wait_until_gone(started, timeout, pgids=sorted({p.pgid for p in started}))
    for p in alive:  # never leave them behind
        os.kill(p.pid, signal.SIGKILL)
    assert not alive, f"still running {timeout:g} s after the demo ended: {alive}\n{demo.log()[-3000:]}"


def _the_three(demo: RunningDemo) -> list[ProcessInfo]:
    started = descendants(demo.proc.pid)
    commands = sorted(Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[3].decode() for p in started)
    assert commands == ["detector", "serve", "view"], commands
    return started


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_no_demo_process_outlives_the_demo(start_demo: Callable[..., RunningDemo], how: str) -> None:
    """Ctrl-C, SIGTERM (a script's timeout), SIGHUP (a closed terminal): the demo stops its three processes and
    exits 0; SIGKILL: they stop on their own (parent-death signal). Nothing of theirs is left running."""
    demo = start_demo(SMALL_DEMO)
    started = _the_three(demo)
    os.kill(demo.proc.pid, signal.Signals[how])
    _assert_none_survive(demo, started)
    if how == "SIGKILL":
        assert demo.proc.returncode == -signal.SIGKILL
    else:
        assert demo.proc.returncode == 0, demo.log()[-3000:]
        assert f"{how} received: stopping the demo" in demo.log()


@pytest.mark.timeout(120)
def test_when_one_process_dies_the_demo_stops_the_others_and_fails(start_demo: Callable[..., RunningDemo]) -> None:
    demo = start_demo(SMALL_DEMO)
    started = _the_three(demo)
    service = next(p for p in started if b"serve" in Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0"))
    os.kill(service.pid, signal.SIGKILL)
    _assert_none_survive(demo, started)
    assert demo.proc.returncode == 2
    # the URL is announced when the viewer serves it: the service may still be loading its model when killed
    assert re.search(r"the demo's service stopped (unexpectedly )?\(killed by SIGKILL", demo.log()), demo.log()


@pytest.mark.timeout(120)
def test_a_demo_that_fails_to_start_leaves_nothing_running(start_demo: Callable[..., RunningDemo]) -> None:
    """The viewer cannot bind its port (taken): the detector and the service, already running, are stopped."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = start_demo(["--port", str(taken.getsockname()[1]), *SMALL_DEMO[2:]], wait_ready=False)
        seen: dict[int, ProcessInfo] = {}
        while demo.proc.poll() is None:  # every process the demo starts, while it runs
            seen.update({p.pid: p for p in descendants(demo.proc.pid)})
            time.sleep(0.05)
    _assert_none_survive(demo, list(seen.values()))
    assert demo.proc.returncode == 2
    assert "the demo's viewer stopped (exit code 2) before it was ready" in demo.log()
    assert len(seen) == 3, f"the demo started the detector, the service and the viewer: {seen}"


def test_shipped_model_is_in_the_package() -> None:
    from emlive.core.modelcard import load_checkpoint

    net, card = load_checkpoint(default_model())
    assert card.frames == 5 and card.training.steps and card.training.steps > 0
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


def test_the_demo_serves_the_cpu_live_student_at_a_camera_rate() -> None:
    """``emlive demo`` and LiveDemo: the shipped student (not a blind-spot network), the detector at 25 fps."""
    from emlive.core.modelcard import load_checkpoint

    assert default_model().name == "cpu-live-student.pt"
    _, card = load_checkpoint(default_model())
    assert card.network.kind == "student" and card.blind_spot in (None, (0, 0), [0, 0])
    assert LiveDemo(default_model()).fps == DEMO_FPS == 25.0
    help_text = subprocess.run(
        [sys.executable, "-m", "emlive", "demo", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "default: 25" in help_text


def test_the_detector_streams_a_cached_synthetic_movie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The synthetic movie is made once into the cache (the detector then reads it instead of simulating every
    frame: 30-45 ms of CPU each at 512 px); the same frames as the simulator's, a second demo reuses the file."""
    from emlive.core.readers import open_movie
    from emlive.core.simulate import SimulationConfig, SyntheticMovie

    monkeypatch.setenv("EMLIVE_CACHE_DIR", str(tmp_path))
    path = synthetic_demo_movie(48, frames=6)
    assert path.parent == tmp_path / "demo"
    made = path.stat().st_mtime_ns
    assert synthetic_demo_movie(48, frames=6) == path and path.stat().st_mtime_ns == made
    assert list((tmp_path / "demo").iterdir()) == [path], "no partial file left behind"
    sim = SyntheticMovie(SimulationConfig(height=48, width=48, frames=6, dose=5.0, seed=0))
    with open_movie(path) as movie:
        assert movie.shape == (6, 48, 48)
        np.testing.assert_array_equal(np.asarray(movie.frame(5)), sim.frame(5))
    args = LiveDemo(default_model(), size=48)._detector_args({"detector": "ipc:///x"})
    assert args[args.index("--source") + 1] == str(synthetic_demo_movie(48))
    assert LiveDemo(default_model(), source="movie.tif")._detector_args({"detector": "ipc:///x"})[1] == "movie.tif"


def test_the_demo_streams_one_endless_acquisition() -> None:
    """A new acquisition every pass of the 64-frame movie ended a run every 2.6 s, and the service denoises a run's
    last frames after its end (2-3 inferences late): the demo's latency tail. A camera's live view is one run."""
    args = LiveDemo(default_model(), source="movie.tif")._detector_args({"detector": "ipc:///x"})
    assert "--loop" in args and "--continuous" in args


@pytest.mark.timeout(30)
def test_the_viewer_runs_niced_so_the_service_goes_first() -> None:
    """The viewer's command runs at VIEWER_NICE (the real ``nice``: the process and its threads); the service's
    and the detector's do not."""
    demo = LiveDemo(default_model())
    python = [sys.executable, "-m", "emlive"]
    assert demo.command("viewer", ["--port", "0"]) == niced([*python, "view", "--port", "0"], VIEWER_NICE)
    assert demo.command("service", ["-x"]) == [*python, "serve", "-x"]
    assert demo.command("detector", []) == [*python, "detector"]
    probe = [sys.executable, "-c", "import os; print(os.nice(0))"]
    base = int(subprocess.run(probe, capture_output=True, text=True, timeout=20, check=True).stdout)
    niced_run = subprocess.run(niced(probe, VIEWER_NICE), capture_output=True, text=True, timeout=20, check=True)
    assert int(niced_run.stdout) == min(19, base + VIEWER_NICE) > base


def test_the_service_leaves_a_core_to_the_viewer_and_browser() -> None:
    links = {"detector": "ipc:///d", "output": "ipc:///o", "status": "ipc:///s"}
    args = LiveDemo(default_model())._service_args(links)
    assert args[args.index("--threads") + 1] == str(max(1, len(os.sched_getaffinity(0)) - 1))
    args = LiveDemo(default_model(), threads=3)._service_args(links)
    assert args[args.index("--threads") + 1] == "3"


@pytest.mark.browser
@pytest.mark.timeout(150)
def test_demo_shows_denoised_frames_in_the_browser(
    page: Any, tmp_path: Path, start_demo: Callable[..., RunningDemo]
) -> None:
    demo = start_demo(["--port", "0", "--size", "256", "--fps", "8", "--threads", "1", "--duration", "100"])
    page.goto(demo.url)
    wait_frames(page, 3, timeout_ms=60000)
    assert canvas_sum(page, "denoised") > 0 and canvas_sum(page, "raw") > 0
    name = json.loads(default_model().with_suffix(".card.json").read_text())["name"]
    page.wait_for_function(f"() => document.getElementById('service').textContent.includes('{name}')", timeout=30000)
    page.screenshot(path=str(tmp_path / "demo.png"))
    demo.proc.send_signal(signal.SIGINT)
    demo.proc.wait(timeout=30)
    assert demo.proc.returncode == 0, demo.log()[-3000:]
    log = demo.log()
    assert "SIGINT received: stopping the demo" in log
    assert log.count("SIGTERM received") >= 3, "the demo stopped the detector, the service and the viewer"
