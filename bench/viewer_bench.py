"""Benchmark of the live viewer in headless Chromium: displayed frame rate and browser latency.

A PUB socket sends 1024x1024 raw (uint16) + denoised (float32) frame pairs as ``emlive serve --publish-raw``
would, at 30 fps; the viewer (:class:`emlive.viewer.server.ViewerServer`) runs in this process and a plain
headless Chromium (Debian's ``/usr/bin/chromium``) shows the page. Not Playwright: its DevTools client mirrors
every WebSocket frame (base64) to its driver, which took 0.4 of a core at 2 MiB per frame pair and cut the
displayed rate by a third.
The page reports each drawn frame in its acknowledgement; the numbers come from ``/api/health``.
For each transfer codec (raw 8-bit, JPEG, PNG) it measures, after a warm-up:

* displayed fps: frames drawn on the canvas per second (target >= 25 at 30 fps input);
* browser latency: the frame's header ``timestamp`` (set when published) to the canvas drawn, measured in the page
  with ``performance.timeOrigin + performance.now()`` (same machine, same clock), p50 and p99.

Run: ``python -m emlive.bench.viewer_bench [--seconds 8] [--out bench_out/viewer_bench.json]`` (under a minute).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from emlive.core.processes import ChildProcesses, stop_on_signals
from emlive.core.protocol import encode_frame
from emlive.viewer.headless import CHROMIUM, CHROMIUM_ARGS
from emlive.viewer.server import ViewerServer

logger = logging.getLogger(__name__)


class Publisher:
    """Sends pre-made frame pairs at ``fps`` from a thread (the timestamp is the send time)."""

    def __init__(self, size: int, fps: float, n_distinct: int = 8) -> None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size]
        base = 100 + 50 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
        self.frames = []
        for i in range(n_distinct):
            raw = rng.poisson(np.roll(base, 9 * i, axis=1)).astype(np.uint16)
            self.frames.append((raw, np.roll(base, 9 * i, axis=1).astype(np.float32)))
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 32)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.fps = fps
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        period, next_t, i = 1.0 / self.fps, time.monotonic(), 0
        while not self._stop.is_set():
            raw, den = self.frames[i % len(self.frames)]
            ts = time.time()
            self.sock.send_multipart(encode_frame(raw, "bench", i, timestamp=ts, extra={"kind": "raw"}), copy=False)
            extra = {"kind": "denoised", "seq": i + 1, "published_at": time.time(), "model": "bench"}
            self.sock.send_multipart(encode_frame(den, "bench", i, timestamp=ts, extra=extra), copy=False)
            self.sent += 1
            i += 1
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
        self.ctx.term()


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _measure(base: str, codec: str, warmup: float, seconds: float, profile: Path) -> dict[str, Any]:
    """Open the page in a plain headless Chromium (no DevTools client attached) and read the draw reports the
    page sends with its acknowledgements (drawn-at time and latency, measured in the page)."""
    cmd = [
        str(CHROMIUM),
        *CHROMIUM_ARGS,
        f"--user-data-dir={profile}",
        "--window-size=1600,900",
        f"{base}?codec={codec}",
    ]
    # Chromium and the helpers it starts: its own process group, stopped with it, and if this process dies
    with ChildProcesses("viewer benchmark") as children:
        children.start("browser", cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            browsers = health(base + "api/health")["browsers"]
            if browsers and len(browsers[0]["draws"]) > 3:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("Chromium drew no frame within 20 s; is /usr/bin/chromium working?")
        time.sleep(warmup)
        t0 = time.time()
        time.sleep(seconds)
        browsers = health(base + "api/health")["browsers"]
    draws = np.asarray([d for d in browsers[0]["draws"] if d[0] >= t0]) if browsers else np.zeros((0, 2))
    n = len(draws)
    fps = (n - 1) / (draws[-1, 0] - draws[0, 0]) if n > 1 else 0.0
    return {
        "codec": codec,
        "frames_drawn": n,
        "displayed_fps": round(float(fps), 2),
        "latency_p50_ms": round(float(np.percentile(draws[:, 1], 50)), 1) if n else None,
        "latency_p99_ms": round(float(np.percentile(draws[:, 1], 99)), 1) if n else None,
    }


def run(size: int, fps: float, seconds: float, codecs: list[str]) -> dict[str, Any]:
    publisher = Publisher(size, fps)
    server = ViewerServer(publisher.endpoint, port=0, max_size=size)
    rows: list[dict[str, Any]] = []
    try:
        url = server.start()
        publisher.start()
        with tempfile.TemporaryDirectory(prefix="emlive-viewer-bench-", ignore_cleanup_errors=True) as tmp:
            for codec in codecs:
                rows.append(_measure(url, codec, 1.5, seconds, Path(tmp) / codec))
    finally:
        server.stop()
        publisher.close()
    return {"size": size, "input_fps": fps, "seconds": seconds, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per codec")
    parser.add_argument("--codecs", default="raw8,jpeg,png", help="comma-separated: raw8, jpeg, png")
    parser.add_argument("--out", type=Path, default=Path("bench_out/viewer_bench.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with stop_on_signals():  # SIGTERM/SIGHUP stop the browser too, as Ctrl-C does
        result = run(args.size, args.fps, args.seconds, [c.strip() for c in args.codecs.split(",") if c.strip()])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lines = [
        f"viewer: {args.size}x{args.size} raw+denoised at {args.fps:g} fps input, headless Chromium",
        f"{'codec':<6} {'shown fps':>10} {'p50 ms':>8} {'p99 ms':>8} {'frames':>7}",
    ]
    for r in result["results"]:
        lines.append(
            f"{r['codec']:<6} {r['displayed_fps']:>10.1f} {r['latency_p50_ms'] or float('nan'):>8.1f} "
            f"{r['latency_p99_ms'] or float('nan'):>8.1f} {r['frames_drawn']:>7}"
        )
    lines.append(f"written to {args.out}")
    print("\n".join(lines))  # noqa: T201 - the benchmark's table is its output


if __name__ == "__main__":
    main()
