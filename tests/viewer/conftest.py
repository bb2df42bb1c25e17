"""Fixtures of the viewer tests: a PUB that sends protocol messages, the viewer server, headless Chromium.

Chromium comes from Debian (``make browser``), driven by Playwright for Python (never ``playwright install``).
Every socket is on 127.0.0.1 with port 0 and closed at teardown.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.protocol import encode, encode_frame, event_header
from emlive.viewer.headless import CHROMIUM, CHROMIUM_ARGS
from emlive.viewer.server import ViewerServer


def frame_pair(index: int, shape: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """The raw (uint16) and 'denoised' (float32) frames the fake service sends for ``index``: a moving ramp."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    raw = ((xx * 7 + yy * 3 + index * 11) % 1000).astype(np.uint16)
    den = (raw.astype(np.float32) * 0.5 + 10.0).astype(np.float32)
    return raw, den


class FakeService:
    """A PUB socket that sends raw + denoised frame messages (as ``emlive serve --publish-raw`` does)."""

    def __init__(self, ctx: zmq.Context[Any], fps: float = 25.0, shape: tuple[int, int] = (96, 128)) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 64)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.fps, self.shape = fps, shape
        self.index = 0
        self.sending = threading.Event()
        self.sending.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.sending.is_set():
                self.send_one()
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def send_one(self) -> None:
        with self._lock:
            i = self.index
            self.index += 1
            raw, den = frame_pair(i, self.shape)
            ts = time.time()
            common = {"seq": i + 1, "model": "fake-model", "backend": "numpy", "device": "cpu"}
            self.sock.send_multipart(encode_frame(raw, "acq-test", i, timestamp=ts, extra={**common, "kind": "raw"}))
            extra = {**common, "kind": "denoised", "published_at": time.time()}
            self.sock.send_multipart(encode_frame(den, "acq-test", i, timestamp=ts, extra=extra))

    def send_end(self) -> None:
        with self._lock:
            self.sock.send_multipart(encode(event_header("end", "acq-test", index=self.index - 1)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def fake_service(zctx: zmq.Context[Any]) -> Iterator[FakeService]:
    svc = FakeService(zctx)
    yield svc
    svc.close()


@pytest.fixture
def make_viewer() -> Iterator[Callable[..., ViewerServer]]:
    servers: list[ViewerServer] = []

    def make(source: str, **kwargs: Any) -> ViewerServer:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("stale_after_s", 1.5)
        server = ViewerServer(source, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def viewer(fake_service: FakeService, make_viewer: Callable[..., ViewerServer]) -> ViewerServer:
    return make_viewer(fake_service.endpoint)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium) to run the viewer tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is missing: pip install -e '.[viewer]' (never `playwright install`)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = context.new_page()
    yield pg
    context.close()


def canvas_sum(page: Any, kind: str = "denoised") -> int:
    """Sum of the canvas' red channel (the image is grey)."""
    return int(
        page.evaluate(
            """(kind) => { const c = document.getElementById('canvas-' + kind);
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; }""",
            kind,
        )
    )


def wait_frames(page: Any, n: int, timeout_ms: int = 10000) -> None:
    page.wait_for_function(f"() => window.emlive && window.emlive.stats.frames >= {n}", timeout=timeout_ms)


def copy_screenshot_once(path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "viewer.png"
    if not docs.exists():
        shutil.copyfile(path, docs)
