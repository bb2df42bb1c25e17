"""Benchmark of the live demo as a user sees it: ``make demo`` (:class:`emlive.demo.LiveDemo`: detector, service
and viewer processes) with the viewer page open in a plain headless Chromium, everything on the same CPU cores.

It measures:

* ``first_frame_s``: from the start of the demo (before anything is spawned) to the first *denoised* frame drawn
  on the page's canvas (the page reports each draw in its acknowledgement; ``/api/health`` keeps the time of the
  first one), with the steps on the way (each process ready, Chromium started, first denoised frame in the viewer);
* ``displayed_fps``: denoised frames drawn per second over ``--seconds`` after the first one, and the browser
  latency (frame published by the detector -> drawn), p50/p99;
* the detector's achieved rate and the service's received/denoised/published rates, skipped and dropped frames
  (counter differences between two status messages of the service, over the same interval) and its processing
  latency p50/p99 (window complete -> published): ``service`` from the service's last status (its last 4096
  frames, from its start), ``service_window`` from the headers of the frames it published within the measured
  interval (the viewer keeps them: ``/api/health``), with the inference time, the frames over the target and those
  flushed at a run's end (denoised after its ``end``); the per-frame trace goes to ``service_frames.json``;
* CPU seconds of each process (detector, service, viewer, Chromium with its helpers, this process) over the
  measured interval, from ``/proc/PID/stat``.

Chromium is started when the demo prints its URL, as a user would open it; it is Debian's ``/usr/bin/chromium``
without Playwright (its DevTools client costs a core's fraction at these rates: see ``viewer_bench``).
Every process started here is stopped however the run ends (a supervised :class:`ChildProcesses` group each).

Run: ``python -m emlive.bench.demo_bench --seconds 30 --out bench_out/demo`` (about 50 s); it writes
``demo_bench.json`` (and ``service_frames.json``) in ``--out`` and prints a short table. The targets (issue 13)
are in the JSON beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from emlive.bench.viewer_bench import health as page_health
from emlive.core.errors import EmliveError
from emlive.core.processes import ChildProcesses, stop_on_signals
from emlive.demo import DEMO_FPS, LiveDemo, default_model, demo_service_threads
from emlive.viewer.headless import CHROMIUM, CHROMIUM_ARGS

logger = logging.getLogger(__name__)

TARGETS = {
    "first_frame_s_max": 15.0,
    "displayed_fps_min": 15.0,
    "detector_fps_min": 25.0,
    "service_fps_min": 20.0,
    "service_latency_p99_ms_max": 150.0,
}
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def group_pids(pgid: int) -> list[int]:
    """Every process in the process group ``pgid`` (Chromium's renderer, GPU and utility helpers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds per named process group, sampled at ``mark(name)`` times; processes that ended between two
    samples are missed (none should: the demo runs throughout)."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self.samples: dict[str, dict[str, float]] = {}

    def mark(self, label: str) -> None:
        sample = {"bench": time.process_time()}
        for name, pgid in self.groups.items():
            sample[name] = sum(cpu_seconds(pid) or 0.0 for pid in group_pids(pgid))
        self.samples[label] = sample

    def between(self, a: str, b: str) -> dict[str, float]:
        first, last = self.samples[a], self.samples[b]
        return {name: round(last[name] - first.get(name, 0.0), 2) for name in last}


class StatusListener:
    """Subscribes to the service's status PUB from a thread and keeps each status with its arrival time."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-bench-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                status = json.loads(self.sock.recv())
                self.received.append((time.time(), status))

    def after(self, t: float) -> tuple[float, dict[str, Any]] | None:
        """The first status received at or after wall-clock ``t``."""
        return next((s for s in self.received if s[0] >= t), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
        self.ctx.term()


def _browser(url: str) -> dict[str, Any] | None:
    browsers = page_health(url + "api/health")["browsers"]
    return browsers[0] if browsers else None


def _wait_first_denoised(demo: LiveDemo, url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        demo.children.check()
        browser = _browser(url)
        if browser is not None and browser["first_denoised_at"] is not None:
            return browser
        time.sleep(0.05)
    raise EmliveError(f"no denoised frame was drawn on the page within {timeout:g} s of opening it")


def _open_chromium(browser: ChildProcesses, url: str, profile: Path, opened: dict[str, float]) -> None:
    """Open ``url`` in a plain headless Chromium (its own process group, a supervised child of ``browser``)."""
    cmd = [str(CHROMIUM), *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--window-size=1600,900", url]
    opened["browser_opened_at"] = time.time()
    browser.start("browser", cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rate_between(a: dict[str, Any], b: dict[str, Any], seconds: float, counter: str) -> float:
    """Events per second of ``counter`` between the service statuses ``a`` and ``b``, ``seconds`` apart."""
    return round((b["counters"].get(counter, 0) - a["counters"].get(counter, 0)) / seconds, 2)


def service_figures(first: tuple[float, dict[str, Any]], last: tuple[float, dict[str, Any]]) -> dict[str, Any]:
    """Rates from counter differences between two statuses, latency from the last one."""
    (t0, a), (t1, b) = first, last
    dt = max(t1 - t0, 1e-9)
    latency = b["latency"]["processing"]
    return {
        "interval_s": round(dt, 2),
        "received_fps": rate_between(a, b, dt, "received"),
        "denoised_fps": rate_between(a, b, dt, "denoised"),
        "published_fps": rate_between(a, b, dt, "published"),
        "skipped": b["counters"].get("skipped", 0) - a["counters"].get("skipped", 0),
        "dropped": b["counters"].get("dropped", 0) - a["counters"].get("dropped", 0),
        "infer_p50_ms": b["stages"]["infer"]["p50_ms"],
        "latency_p50_ms": latency["p50_ms"],
        "latency_p99_ms": latency["p99_ms"],
        "model": b.get("model", {}),
        "gc": b.get("gc"),
    }


def draw_figures(draws: list[list[float]], t0: float, t1: float) -> dict[str, Any]:
    """Displayed rate and browser latency of the draws within [t0, t1]."""
    arr = np.asarray([d for d in draws if t0 <= d[0] <= t1]).reshape(-1, 2)
    n = len(arr)
    return {
        "frames_drawn": n,
        "displayed_fps": round(float((n - 1) / (arr[-1, 0] - arr[0, 0])), 2) if n > 1 else 0.0,
        "latency_p50_ms": round(float(np.percentile(arr[:, 1], 50)), 1) if n else None,
        "latency_p99_ms": round(float(np.percentile(arr[:, 1], 99)), 1) if n else None,
    }


def frame_figures(frames: list[list[float]], t0: float, t1: float, limit_ms: float) -> dict[str, Any]:
    """The service's latency over [t0, t1] from its denoised frames' headers (as the viewer received them:
    ``[published_at, latency_ms, infer_ms, age_ms, flushed]``): processing latency (window complete -> published)
    p50/p99/max, inference p50/p99, the rest of the latency (waiting, window, publish) p99, the frames over
    ``limit_ms`` and the flushed ones (a run's last frames, denoised after its ``end``)."""
    arr = np.asarray([f for f in frames if t0 <= f[0] <= t1], dtype=np.float64).reshape(-1, 5)
    if not len(arr):
        return {"frames": 0}
    latency, infer = arr[:, 1], arr[:, 2]
    p50, p99 = np.percentile(latency, [50, 99])
    return {
        "frames": len(arr),
        "latency_p50_ms": round(float(p50), 1),
        "latency_p99_ms": round(float(p99), 1),
        "latency_max_ms": round(float(latency.max()), 1),
        "infer_p50_ms": round(float(np.percentile(infer, 50)), 1),
        "infer_p99_ms": round(float(np.percentile(infer, 99)), 1),
        "other_p99_ms": round(float(np.percentile(latency - infer, 99)), 1),
        "over_limit": int(np.count_nonzero(latency > limit_ms)),
        "flushed": int(np.count_nonzero(arr[:, 4])),
        "flushed_over_limit": int(np.count_nonzero((latency > limit_ms) & (arr[:, 4] > 0))),
    }


def _measure(demo: LiveDemo, browser: ChildProcesses, seconds: float, first_timeout: float) -> dict[str, Any]:
    url = demo.url
    status = StatusListener(demo.endpoints["status"])
    try:
        groups = {**demo.children.pids, "chromium": browser.pids["browser"]}
        first = _wait_first_denoised(demo, url, first_timeout)
        meter = CpuMeter(groups)
        meter.mark("first")
        start = time.time()
        time.sleep(seconds)
        demo.children.check()
        end = time.time()
        meter.mark("end")
        s0, s1 = status.after(start), (status.received[-1] if status.received else None)
        page = _browser(url)
        health = page_health(url + "api/health")
    finally:
        status.close()
    return {
        "first_drawn_at": first["first_drawn_at"],
        "first_denoised_at": first["first_denoised_at"],
        "first_denoised_in_viewer_at": health["first_denoised_in_at"],
        "window": [start, end],
        "page": draw_figures((page or {}).get("denoised_draws", []), start, end),
        "viewer": {
            "received": health["received"],
            "prepared": health["frames"],
            "sent": (page or {}).get("sent"),
            "skipped": (page or {}).get("skipped"),
        },
        "service": None if s0 is None or s1 is None or s1[0] <= s0[0] else service_figures(s0, s1),
        "service_window": frame_figures(
            health.get("service_frames", []), start, end, TARGETS["service_latency_p99_ms_max"]
        ),
        "cpu_seconds": meter.between("first", "end"),
        "trace": [f for f in health.get("service_frames", []) if start <= f[0] <= end],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the demo, open the page as soon as the viewer serves it, measure (module docstring); every process
    is stopped at the end, however it ends."""
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.time()
    demo = LiveDemo(
        args.model, fps=args.fps, size=args.size, port=0, threads=args.threads, status_interval=args.status_interval
    )
    opened: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="emlive-demo-bench-", ignore_cleanup_errors=True) as profile,
        ChildProcesses("demo benchmark") as browser,
    ):
        try:
            demo.start(on_url=lambda url: _open_chromium(browser, url, Path(profile), opened))
            measured = {**_measure(demo, browser, args.seconds, args.first_timeout), **opened}
        finally:
            browser.stop()
            demo.stop()
    service = measured["service"] or {}
    steps = {name: round(at - t0, 2) for name, at in demo.milestones.items() if name != "start"}
    for name in ("browser_opened_at", "first_denoised_in_viewer_at", "first_drawn_at", "first_denoised_at"):
        if measured[name] is not None:
            steps[name.removesuffix("_at")] = round(measured[name] - t0, 2)
    detector_fps = service.get("received_fps")  # pull input, no loss: what the service received the detector sent
    return {
        "command": " ".join(["python -m emlive.bench.demo_bench", *args.argv]),
        "model": str(args.model),
        "size": args.size,
        "detector_fps_set": args.fps,
        "threads": args.threads or demo_service_threads(),
        "seconds": args.seconds,
        "cpus": sorted(os.sched_getaffinity(0)),
        "loadavg_before": load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "first_frame_s": steps.get("first_denoised"),
        "steps_s": dict(sorted(steps.items(), key=lambda kv: kv[1])),
        "displayed_fps": measured["page"]["displayed_fps"],
        "page": measured["page"],
        "viewer": measured["viewer"],
        "detector_fps": detector_fps,
        "service": measured["service"],
        "service_window": measured["service_window"],
        "cpu_seconds": measured["cpu_seconds"],
        "targets": TARGETS,
        "trace": measured["trace"],
    }


def table(result: dict[str, Any]) -> str:
    svc = result["service"] or {}
    win = result["service_window"]
    cpu = result["cpu_seconds"]
    span = result["seconds"]
    lines = [
        f"live demo: {result['model']} at {result['size']} px, detector set to {result['detector_fps_set']:g} fps, "
        f"CPUs {result['cpus']}, load {' '.join(result['loadavg_before'])}",
        f"first denoised frame drawn   {result['first_frame_s']} s   (steps: {result['steps_s']})",
        f"displayed (denoised) fps     {result['displayed_fps']}   browser latency p50/p99 "
        f"{result['page']['latency_p50_ms']}/{result['page']['latency_p99_ms']} ms",
        f"detector fps (received)      {result['detector_fps']}",
        f"service denoised/published   {svc.get('denoised_fps')}/{svc.get('published_fps')} fps, latency p50/p99 "
        f"{svc.get('latency_p50_ms')}/{svc.get('latency_p99_ms')} ms, skipped {svc.get('skipped')}, "
        f"dropped {svc.get('dropped')}",
        f"service over the window      latency p50/p99/max {win.get('latency_p50_ms')}/{win.get('latency_p99_ms')}/"
        f"{win.get('latency_max_ms')} ms, infer p50/p99 {win.get('infer_p50_ms')}/{win.get('infer_p99_ms')} ms, "
        f"over {TARGETS['service_latency_p99_ms_max']:g} ms: {win.get('over_limit')} of {win.get('frames')} "
        f"({win.get('flushed_over_limit')} of {win.get('flushed')} flushed at a run's end)",
        "CPU over the window (s / s): " + ", ".join(f"{k} {v / span:.2f}" for k, v in cpu.items()),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds after the first frame")
    parser.add_argument("--out", type=Path, default=Path("bench_out/demo"), help="folder for demo_bench.json")
    parser.add_argument("--model", type=Path, default=None, help="model (default: the demo's)")
    parser.add_argument("--size", type=int, default=512, help="synthetic frame side in pixels")
    parser.add_argument("--fps", type=float, default=DEMO_FPS, help="detector frame rate")
    parser.add_argument("--threads", type=int, default=None, help="service inference threads (default: the demo's)")
    parser.add_argument("--status-interval", type=float, default=2.0, help="seconds between service statuses")
    parser.add_argument("--first-timeout", type=float, default=90.0, help="seconds to wait for the first frame")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.model is None:
        args.model = default_model()
    if args.status_interval * 2 > args.seconds:
        parser.error(f"--status-interval {args.status_interval:g}: must be at most half of --seconds")
    return args


def main(argv: list[str] | None = None) -> None:
    import sys

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    with stop_on_signals():  # SIGTERM/SIGHUP stop the demo and the browser too, as Ctrl-C does
        result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    trace = {"columns": ["published_at", "latency_ms", "infer_ms", "age_ms", "flushed"], "frames": result.pop("trace")}
    (args.out / "service_frames.json").write_text(json.dumps(trace))  # per frame: where a latency tail comes from
    path = args.out / "demo_bench.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result) + f"\nwritten to {path}")  # noqa: T201 - the benchmark's table is its output


if __name__ == "__main__":
    main()
