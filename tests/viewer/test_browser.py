"""The viewer page in headless Chromium, fed by a PUB that sends emlive/1 raw + denoised frame messages."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zmq
from PIL import Image

from emlive.core.protocol import encode_frame
from emlive.viewer.server import ViewerServer

from .conftest import FakeService, canvas_sum, copy_screenshot_once, frame_pair, wait_frames

pytestmark = pytest.mark.browser
NO_MAP = "no uncertainty map in this stream (serve a head=gaussian model with --uncertainty)"


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.mark.timeout(40)
def test_page_loads_frames_arrive_and_canvas_changes(page: Any, viewer: ViewerServer, tmp_path: Path) -> None:
    page.goto(viewer.url)
    wait_frames(page, 3)
    first = canvas_sum(page)
    first_index = page.evaluate("() => window.emlive.stats.lastIndex")
    page.wait_for_function(f"() => window.emlive.stats.lastIndex > {first_index} + 3", timeout=5000)
    assert canvas_sum(page) != first
    assert canvas_sum(page, "raw") > 0
    assert page.is_hidden("#banner")
    assert page.is_hidden("#view-uncertainty")  # a stream without uncertainty maps: no panel, and the page says why
    assert page.inner_text("#uncertainty-note") == NO_MAP
    page.wait_for_function("() => document.getElementById('service').textContent.includes('fake-model')")
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot))
    assert Image.open(shot).size == (1280, 720)
    copy_screenshot_once(shot)


@pytest.mark.timeout(40)
def test_contrast_controls_change_pixels(page: Any, viewer: ViewerServer) -> None:
    page.goto(viewer.url)
    wait_frames(page, 2)
    page.click("#pause")  # hold one frame so only the contrast changes
    time.sleep(0.3)
    before = canvas_sum(page)
    frames = page.evaluate("() => window.emlive.stats.frames")
    page.fill("#gamma", "1")  # gamma 10: darker
    page.dispatch_event("#gamma", "input")
    page.wait_for_function(f"() => window.emlive.stats.frames > {frames}", timeout=5000)
    darker = canvas_sum(page)
    assert darker < before * 0.7
    page.fill("#gamma", "0")
    page.select_option("#mode", "manual")
    page.fill("#vmin", "0")
    page.fill("#vmax", "100000")  # everything nearly black
    page.dispatch_event("#vmax", "input")
    page.wait_for_function("() => document.getElementById('limits').textContent.includes('1.00e+5')", timeout=5000)
    assert canvas_sum(page) < before * 0.1
    # the histogram was drawn
    assert page.evaluate(
        "() => { const c = document.getElementById('hist'); return c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data.some((v) => v > 0); }"
    )


@pytest.mark.timeout(40)
def test_pause_stops_updates_and_resume_continues(page: Any, viewer: ViewerServer) -> None:
    page.goto(viewer.url)
    wait_frames(page, 2)
    page.click("#pause")
    time.sleep(0.4)
    index = page.evaluate("() => window.emlive.stats.lastIndex")
    pixels = canvas_sum(page)
    time.sleep(1.0)
    assert page.evaluate("() => window.emlive.stats.lastIndex") == index
    assert canvas_sum(page) == pixels
    page.click("#pause")
    page.wait_for_function(f"() => window.emlive.stats.lastIndex > {index} + 3", timeout=5000)


@pytest.mark.timeout(40)
def test_save_returns_the_shown_pair(page: Any, viewer: ViewerServer) -> None:
    page.goto(viewer.url)
    wait_frames(page, 2)
    page.click("#pause")
    time.sleep(0.4)
    index = page.evaluate("() => window.emlive.stats.lastIndex")
    href = page.get_attribute("#save-tiff", "href")
    assert href is not None and "client=" in href
    status, body, headers = _get(viewer.url + href)
    assert status == 200 and headers["Content-Type"] == "image/tiff"
    stack = tifffile.imread(io.BytesIO(body))
    raw, den = frame_pair(index)
    assert stack.dtype == np.float32 and stack.shape == (2, *raw.shape)
    np.testing.assert_array_equal(stack[0], raw.astype(np.float32))
    np.testing.assert_array_equal(stack[1], den)
    # the PNG through the browser's own download
    with page.expect_download() as info:
        page.click("#save-png")
    image = Image.open(info.value.path())
    assert image.format == "PNG" and image.size == (2 * raw.shape[1] + 8, raw.shape[0])


@pytest.mark.timeout(40)
def test_token_enforced_when_exposed(
    page: Any, fake_service: FakeService, make_viewer: Callable[..., ViewerServer]
) -> None:
    server = make_viewer(fake_service.endpoint, token="s3cret-token")
    base = f"http://127.0.0.1:{server.bound_port}/"
    for path in ("", "ws", "api/save?format=tiff", "api/health"):
        status, body, _ = _get(base + path)
        assert status == 403, path
        assert b"token" in body
    assert _get(base + "?token=wrong")[0] == 403
    page.goto(server.url)
    wait_frames(page, 2)
    assert _get(base + "api/save?format=png&token=s3cret-token")[0] == 200


@pytest.mark.timeout(40)
def test_banner_on_stale_stream_and_reconnection(
    page: Any, fake_service: FakeService, make_viewer: Callable[..., ViewerServer]
) -> None:
    server = make_viewer(fake_service.endpoint, stale_after_s=1.0)
    page.goto(server.url)
    wait_frames(page, 2)
    fake_service.sending.clear()
    page.wait_for_function("() => document.getElementById('banner').textContent.includes('Stream stopped')")
    fake_service.sending.set()
    page.wait_for_selector("#banner", state="hidden", timeout=5000)
    # the viewer server goes away: the page says so and reconnects to its successor on the same port
    port = server.bound_port
    server.stop()
    page.wait_for_function("() => document.getElementById('banner').textContent.includes('unreachable')")
    frames = page.evaluate("() => window.emlive.stats.frames")
    make_viewer(fake_service.endpoint, port=port)
    page.wait_for_function(f"() => window.emlive.stats.frames > {frames} + 2", timeout=15000)
    page.wait_for_selector("#banner", state="hidden", timeout=5000)


@pytest.mark.timeout(30)
def test_zoom_pan_stay_in_sync_and_pixel_probe(page: Any, viewer: ViewerServer) -> None:
    page.goto(viewer.url)
    wait_frames(page, 2)
    page.click("#pause")
    box = page.locator("#view-raw .viewport").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 30, box["y"] + box["height"] / 2 + 10)
    page.mouse.up()
    t_raw = page.eval_on_selector("#canvas-raw", "c => c.style.transform")
    assert "scale" in t_raw and t_raw == page.eval_on_selector("#canvas-denoised", "c => c.style.transform")
    page.wait_for_function("() => document.getElementById('probe').textContent.includes('raw')", timeout=5000)
    text = page.inner_text("#probe")
    index = page.evaluate("() => window.emlive.stats.lastIndex")
    x, y = _xy(text)
    raw, _ = frame_pair(index)
    assert f"raw {raw[y, x]:.3f}" in text


def _xy(text: str) -> tuple[int, int]:
    parts = text.replace(",", " ").split()
    return int(parts[parts.index("x") + 1]), int(parts[parts.index("y") + 1])


class _Sender:
    """A PUB that sends raw frames alone (a bare detector) or raw + denoised pairs, one per call."""

    def __init__(self, zctx: Any) -> None:
        self.sock = zctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.index = 0

    def send(self, denoised: bool) -> None:
        raw, den = frame_pair(self.index)
        ts = time.time()
        self.sock.send_multipart(encode_frame(raw, "acq-h", self.index, timestamp=ts, extra={"kind": "raw"}))
        if denoised:
            self.sock.send_multipart(encode_frame(den, "acq-h", self.index, timestamp=ts, extra={"kind": "denoised"}))
        self.index += 1
        time.sleep(0.04)


@pytest.mark.timeout(40)
def test_health_reports_when_the_first_denoised_frame_was_drawn(
    page: Any, zctx: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    """The page says in each acknowledgement whether the frame it drew held a denoised image; /api/health keeps
    the wall-clock time of the first drawn frame, of the first drawn denoised frame and the denoised draws (what
    the demo benchmark's first-frame time and displayed rate come from)."""
    sender = _Sender(zctx)
    try:
        server = make_viewer(sender.endpoint)
        page.goto(server.url)
        deadline = time.monotonic() + 15
        while page.evaluate("() => window.emlive.stats.frames") < 2:
            assert time.monotonic() < deadline, "the page drew fewer than 2 raw frames in 15 s"
            sender.send(denoised=False)
        (browser,) = _health(server.url)["browsers"]
        assert browser["first_drawn_at"] is not None and len(browser["draws"]) >= 2
        assert browser["first_denoised_at"] is None and browser["denoised_draws"] == [], browser
        deadline = time.monotonic() + 15
        while browser["first_denoised_at"] is None or len(browser["denoised_draws"]) < 3:
            assert time.monotonic() < deadline, f"no denoised draw reported: {browser}"
            sender.send(denoised=True)
            (browser,) = _health(server.url)["browsers"]
        assert browser["first_drawn_at"] < browser["first_denoised_at"] <= browser["denoised_draws"][0][0]
        assert abs(browser["first_denoised_at"] - time.time()) < 10  # the page's clock is this machine's
        assert {tuple(d) for d in browser["denoised_draws"]} <= {tuple(d) for d in browser["draws"]}
    finally:
        sender.sock.close(linger=0)


def _health(url: str) -> dict[str, Any]:
    status, body, _ = _get(url + "api/health")
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


# --- the uncertainty map (emlive serve --uncertainty with a network.head=gaussian model) ------------------------
@pytest.fixture(scope="module")
def gaussian_model(gaussian_checkpoint: Callable[..., Path]) -> Any:
    """A tiny random-weight model with a variance head, one thread."""
    from emlive.export.runtime import Denoiser

    path = gaussian_checkpoint("tiny-gauss")
    return Denoiser.load(path, "torch_cpu", threads=1)  # (no ONNX export: 3 s less; the display is the test)


@pytest.fixture
def gaussian_service(gaussian_model: Any) -> Iterator[Any]:
    """A live service publishing raw, denoised and uncertainty frames, fed by the detector simulator (64 x 64)."""
    from emlive.stream.detector import DetectorConfig, DetectorSimulator
    from emlive.stream.service import DenoiseService, ServiceConfig

    det = DetectorSimulator(DetectorConfig(source="synthetic", output="tcp://127.0.0.1:0", fps=10.0, loop=True,
                                           size=64, synthetic_frames=8, linger_ms=0))  # fmt: skip
    det.start()
    assert det.endpoint is not None
    svc = DenoiseService(ServiceConfig(model=None, input=det.endpoint, output="tcp://127.0.0.1:0", publish_raw=True,
                                       uncertainty=True, linger_ms=0), denoiser=gaussian_model)  # fmt: skip
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()
        det.stop()


_CANVAS_RGBA = """(id) => { const c = document.getElementById(id);
    return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }"""


@pytest.mark.timeout(60)
def test_the_uncertainty_panel_shows_the_published_map_on_its_own_scale(
    page: Any, zctx: Any, gaussian_service: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    from emlive.core.protocol import decode
    from emlive.viewer.colormap import colorize
    from emlive.viewer.render import Contrast, FramePair, make_channel, render_pair

    output = gaussian_service.endpoints["output"]
    sub = zctx.socket(zmq.SUB)  # our own subscriber: the maps the service published
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(output)
    try:
        server = make_viewer(output)
        page.goto(server.url)
        page.wait_for_selector("#view-uncertainty", state="visible", timeout=30000)
        page.select_option("#mode", "manual")  # the page's grey contrast settings do not apply to the map
        page.fill("#vmax", "100000")
        page.dispatch_event("#vmax", "input")
        page.wait_for_function("() => document.getElementById('limits').textContent.includes('1.00e+5')")
        page.click("#pause")
        time.sleep(0.5)
        shown = page.evaluate("() => window.emlive.state.shown")
        maps: dict[tuple[str, int], Any] = {}
        while sub.poll(200, zmq.POLLIN):
            msg = decode(sub.recv_multipart(copy=False))
            if msg.header.kind == "uncertainty" and msg.data is not None:
                maps[(msg.header.acquisition, msg.header.index)] = msg
        published = maps[(shown["acquisition"], shown["index"])]
        assert published.data is not None
        channel = make_channel("uncertainty", published.header.to_dict(), published.data, shown["factor"])
        meta, (gray,) = render_pair(FramePair(shown["acquisition"], shown["index"], 0.0, shown["factor"], 0.0,
                                              uncertainty=channel), Contrast(mode="manual", vmax=1e5))  # fmt: skip
        (info,) = meta["channels"]
        assert 0 < info["min"] < info["max"] < 1e5  # the map's own percentiles, not the page's manual 0..1e5
        expected = colorize(np.frombuffer(gray, np.uint8).reshape(info["height"], info["width"]))
        assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 8  # a map with structure, not a flat colour
        width, height, rgba = page.evaluate(_CANVAS_RGBA, "canvas-uncertainty")
        drawn = np.array(rgba, np.uint8).reshape(height, width, 4)
        np.testing.assert_array_equal(drawn[..., :3], expected)
        assert (drawn[..., 3] == 255).all()
        (page_info,) = [c for c in shown["channels"] if c["kind"] == "uncertainty"]
        assert (page_info["min"], page_info["max"]) == (info["min"], info["max"])
        quantity = published.header.extra["quantity"]  # posterior_std (or prior_std where the service fell back)
        assert page.inner_text("#legend-units").startswith(f"{quantity} in counts")
        assert quantity in page.inner_text("#uncertainty-note")
        page.click("#show-uncertainty")  # the toggle hides the panel
        page.wait_for_selector("#view-uncertainty", state="hidden", timeout=5000)
    finally:
        sub.close(linger=0)
