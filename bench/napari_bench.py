"""Benchmark of the napari Live widget: the frames per second it actually displays, and its latency.

Measured like the browser viewer (:mod:`emlive.bench.viewer_bench`): the same publisher of pre-made raw
(uint16) + denoised (float32) pairs, sent as ``emlive serve --publish-raw`` would, at ``--fps``; a napari viewer
(shown, under Xvfb when there is no display: the benchmark re-runs itself under ``xvfb-run``) with the
:class:`~emlive.napari_plugin.live.LiveWidget` docked and connected. After the first frame and a warm-up, a timed
window counts:

* displayed fps: canvas paints (vispy's ``draw`` event) that show a frame pair not painted before, per second;
* paints/s and layer swaps/s (the widget's ``layer.data = ...``), received pairs/s;
* latency: the pair's header ``timestamp`` (set when published) to the paint that showed it, p50 and p99;
* CPU seconds per second of this process (napari, the receiver, the publisher, and Mesa's software OpenGL
  under Xvfb) and of the X server (Xvfb, when it is one: it receives every painted window).

Run: ``python -m emlive.bench.napari_bench --size 512 --seconds 10`` (JSON to ``bench_out/napari/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emlive.bench.viewer_bench import Publisher

logger = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT_S = 30.0


class PaintCounter:
    """Records each canvas paint that shows a frame pair the canvas has not shown before."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.paints = 0
        self.shown: list[tuple[float, float]] = []  # (paint time, latency s) of each newly shown pair
        self._last: tuple[str, int] | None = None

    def on_draw(self, _event: Any = None) -> None:
        now = time.time()
        self.paints += 1
        pair = self.widget.last_pair
        if pair is None or (pair.acquisition, pair.index) == self._last:
            return
        self._last = (pair.acquisition, pair.index)
        self.shown.append((now, now - pair.timestamp))


def _run_until(app: Any, condition: Any, timeout: float) -> bool:
    """Process Qt events until ``condition()`` is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.001)
    return bool(condition())


def _xserver_pid(display: str | None) -> int | None:
    """The pid of the Xvfb serving ``display`` (Linux /proc), or None."""
    if not display:
        return None
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"Xvfb") and display.encode() in argv:
            return int(cmdline.parent.name)
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (/proc/PID/stat), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _window(widget: Any, counter: PaintCounter, app: Any, seconds: float) -> dict[str, Any]:
    receiver = widget.receiver
    xpid = _xserver_pid(os.environ.get("DISPLAY"))
    x0 = _cpu_seconds(xpid)
    t0, cpu0, paints0, swaps0 = time.time(), time.process_time(), counter.paints, widget.displayed
    pairs0 = receiver.snapshot().pairs
    _run_until(app, lambda: time.time() - t0 >= seconds, seconds + 1.0)
    elapsed = time.time() - t0
    cpu = time.process_time() - cpu0
    x1 = _cpu_seconds(xpid)
    shown = np.asarray([s for s in counter.shown if s[0] >= t0]).reshape(-1, 2)
    n = len(shown)
    fps = (n - 1) / (shown[-1, 0] - shown[0, 0]) if n > 1 else 0.0
    return {
        "displayed_fps": round(float(fps), 2),
        "frames_displayed": n,
        "paints_per_s": round((counter.paints - paints0) / elapsed, 2),
        "layer_swaps_per_s": round((widget.displayed - swaps0) / elapsed, 2),
        "received_pairs_per_s": round((receiver.snapshot().pairs - pairs0) / elapsed, 2),
        "latency_p50_ms": round(float(np.percentile(shown[:, 1], 50)) * 1e3, 1) if n else None,
        "latency_p99_ms": round(float(np.percentile(shown[:, 1], 99)) * 1e3, 1) if n else None,
        "cpu_s_per_s": round(cpu / elapsed, 2),
        "cpu_ms_per_displayed_frame": round(cpu / n * 1e3, 1) if n else None,
        "xvfb_cpu_s_per_s": None if x0 is None or x1 is None else round((x1 - x0) / elapsed, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def run(
    size: int, fps: float, seconds: float, warmup: float, window: tuple[int, int], viewer: Any = None
) -> dict[str, Any]:
    """Measure in ``viewer`` (a shown napari viewer; None: a new one, closed at the end)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from emlive.napari_plugin.live import LiveWidget

    own = viewer is None
    viewer = napari.Viewer(show=True) if own else viewer
    publisher = Publisher(size, fps)
    try:
        app = QApplication.instance()
        assert app is not None  # napari made it
        widget = LiveWidget(viewer)
        viewer.window.add_dock_widget(widget, name="emlive Live")
        viewer.window.resize(*window)
        app.processEvents()
        canvas = viewer.window._qt_viewer.canvas._scene_canvas.size
        if min(canvas) < 16:
            raise RuntimeError(f"napari's canvas is {canvas[0]}x{canvas[1]} pixels in a {window[0]}x{window[1]} "
                               "window: nothing can be painted; give a larger --window")  # fmt: skip
        counter = PaintCounter(widget)
        viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(counter.on_draw)  # no public hook
        widget.address.setText(publisher.endpoint)
        widget.connect_button.click()
        publisher.start()
        if not _run_until(app, lambda: len(counter.shown) > 3, FIRST_FRAME_TIMEOUT_S):
            state = widget.receiver.snapshot() if widget.receiver is not None else None
            raise RuntimeError(
                f"the Live widget painted no frame within {FIRST_FRAME_TIMEOUT_S:.0f} s ({counter.paints} paints, "
                f"{widget.displayed} layer swaps, receiver {state}, widget says {widget.state_label.text()!r})"
            )
        _run_until(app, lambda: False, warmup)
        result = _window(widget, counter, app, seconds)
        widget.disconnect_button.click()
    finally:
        if own:
            viewer.close()
        publisher.close()
    return {"size": size, "input_fps": fps, "seconds": seconds, "warmup_s": warmup, **result,
            "sent": publisher.sent, "window": list(window), "canvas": list(canvas),
            "display": os.environ.get("DISPLAY")}  # fmt: skip


def _ensure_display() -> None:
    """Re-run this command under ``xvfb-run`` when there is no X display (napari needs one: offscreen Qt fails)."""
    if os.environ.get("DISPLAY") or os.environ.get("EMLIVE_BENCH_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise SystemExit("no X display and no xvfb-run: install Xvfb (apt install xvfb) or run under a desktop")
    env = {**os.environ, "EMLIVE_BENCH_XVFB": "1"}
    cmd = [xvfb, "-a", "-s", "-screen 0 1920x1080x24", sys.executable, "-m", "emlive.bench.napari_bench"]
    os.execve(xvfb, [*cmd, *sys.argv[1:]], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate (pairs per second)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds shown before the measurement")
    parser.add_argument("--window", default="1280x800", help="napari window size, WIDTHxHEIGHT")
    parser.add_argument("--out", type=Path, default=Path("bench_out/napari/napari_bench.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _ensure_display()
    width, _, height = args.window.partition("x")
    result = run(args.size, args.fps, args.seconds, args.warmup, (int(width), int(height)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(  # noqa: T201 - the benchmark's summary is its output
        f"napari Live widget: {args.size}x{args.size} raw+denoised at {args.fps:g} pairs/s input: "
        f"displayed {result['displayed_fps']:.1f} frames/s ({result['paints_per_s']:.1f} paints/s, "
        f"{result['received_pairs_per_s']:.1f} pairs/s received), latency p50 {result['latency_p50_ms']} ms, "
        f"p99 {result['latency_p99_ms']} ms, {result['cpu_s_per_s']:.2f} CPU s/s; written to {args.out}"
    )


if __name__ == "__main__":
    main()
