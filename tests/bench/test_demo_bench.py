"""bench/demo_bench.py: the real live demo (detector, service, viewer processes) with the page open in headless
Chromium, for a few seconds at 128 px; the JSON has the first-frame time, a displayed rate, the service's figures
and CPU seconds per process, and nothing it started is left running."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from emlive.bench.demo_bench import CpuMeter, draw_figures, frame_figures, main, parse_args
from emlive.core.processes import descendants
from emlive.viewer.headless import CHROMIUM


def test_draw_figures_count_only_the_window() -> None:
    draws = [[10.0, 50.0], [10.1, 60.0], [10.2, 70.0], [10.3, 80.0], [11.0, 90.0]]
    figures = draw_figures(draws, 10.05, 10.35)
    assert figures["frames_drawn"] == 3
    assert figures["displayed_fps"] == pytest.approx(10.0)
    assert figures["latency_p50_ms"] == 70.0
    assert draw_figures([], 0.0, 1.0) == {
        "frames_drawn": 0, "displayed_fps": 0.0, "latency_p50_ms": None, "latency_p99_ms": None
    }  # fmt: skip


def test_frame_figures_take_the_service_latency_of_the_window_only() -> None:
    """The service's status percentiles cover its last 4096 frames since it started (its warm-up too); the
    benchmark's come from the frames published within its measured interval, flushed run ends counted apart."""
    frames = [[9.0, 900.0, 30.0, 950.0, 0.0]]  # before the window (a start-up frame): left out
    frames += [[10.0 + k / 10, 40.0 + k, 30.0, 90.0, 0.0] for k in range(10)]
    frames += [[11.0, 200.0, 35.0, 260.0, 1.0]]  # a run's last frame, denoised after its end
    figures = frame_figures(frames, 10.0, 11.0, limit_ms=150.0)
    assert figures["frames"] == 11 and figures["latency_max_ms"] == 200.0
    assert figures["latency_p50_ms"] == 45.0 and figures["infer_p50_ms"] == 30.0
    assert figures["over_limit"] == 1 and figures["flushed"] == 1 and figures["flushed_over_limit"] == 1
    assert frame_figures(frames, 0.0, 1.0, limit_ms=150.0) == {"frames": 0}


def test_cpu_meter_counts_this_process_group() -> None:
    meter = CpuMeter({"self": os.getpgid(0)})
    meter.mark("a")
    sum(i * i for i in range(300_000))
    meter.mark("b")
    spent = meter.between("a", "b")
    assert spent["self"] > 0 and spent["bench"] > 0


def test_status_interval_must_leave_two_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--seconds", "3", "--status-interval", "2"])
    assert "--status-interval 2: must be at most half of --seconds" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_demo_bench_measures_the_real_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium) to run the browser tests")
    monkeypatch.setenv("EMLIVE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    before = {(p.pid, p.start_ticks) for p in descendants(os.getpid())}  # Playwright's browser, if another test ran
    main(["--seconds", "6", "--size", "128", "--fps", "15", "--status-interval", "1", "--out", str(out)])
    result = json.loads((out / "demo_bench.json").read_text())
    assert 0 < result["first_frame_s"] < 120
    steps = result["steps_s"]
    assert steps["viewer_ready"] <= steps["browser_opened"] <= steps["first_denoised"]
    assert steps["first_denoised_in_viewer"] <= steps["first_denoised"]
    assert result["displayed_fps"] > 0 and result["page"]["frames_drawn"] > 1, result
    assert result["service"]["published_fps"] > 0 and result["service"]["latency_p99_ms"] > 0
    window = result["service_window"]
    assert window["frames"] > 0 and 0 < window["latency_p50_ms"] <= window["latency_p99_ms"], window
    trace = json.loads((out / "service_frames.json").read_text())
    assert len(trace["frames"]) == window["frames"] and len(trace["columns"]) == 5
    assert result["detector_fps"] > 0
    assert set(result["cpu_seconds"]) == {"bench", "detector", "service", "viewer", "chromium"}
    assert result["cpu_seconds"]["service"] > 0 and result["cpu_seconds"]["chromium"] > 0
    assert len(result["loadavg_before"]) == 3 and result["command"].startswith("python -m emlive.bench.demo_bench")
    left = [p for p in descendants(os.getpid()) if (p.pid, p.start_ticks) not in before and p.running]
    assert not left, f"the benchmark left processes running: {left}"
