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
    page.select_option("#map-display", "overlay")  # no map to blend: no overlay either, and the same note
    assert page.is_hidden("#canvas-overlay") and page.is_visible("#map-opacity")
    assert page.inner_text("#uncertainty-note") == NO_MAP


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
    from emlive.viewer.colormap import colorize
    from emlive.viewer.render import Contrast, FramePair, make_channel, render_pair

    output = gaussian_service.endpoints["output"]
    sub = _subscribe(zctx, output)
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
        published = _published(sub, shown, ("uncertainty",))["uncertainty"]
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
        page.select_option("#map-display", "off")  # the choice hides the panel
        page.wait_for_selector("#view-uncertainty", state="hidden", timeout=5000)
    finally:
        sub.close(linger=0)


def _subscribe(zctx: Any, address: str) -> Any:
    """Our own subscriber to the service's output: the frames and maps it publishes."""
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    return sub


def _published(sub: Any, shown: dict[str, Any], kinds: tuple[str, ...] = ("denoised", "uncertainty")) -> dict[str, Any]:
    """The frame messages of the pair the page shows, by kind, as the service published them (read from ``sub``,
    which subscribed before the viewer started, so they are queued there)."""
    from emlive.core.protocol import decode

    found: dict[str, Any] = {}
    deadline = time.monotonic() + 10.0
    while len(found) < len(kinds):
        left = deadline - time.monotonic()
        assert left > 0 and sub.poll(int(left * 1000), zmq.POLLIN), f"no {kinds} of the shown pair {shown}: {found}"
        msg = decode(sub.recv_multipart(copy=False))
        head = msg.header
        if (head.acquisition, head.index) == (shown["acquisition"], shown["index"]) and head.kind in kinds:
            found[head.kind] = msg
    return found


def _expected_renders(shown: dict[str, Any], published: dict[str, Any]) -> dict[str, np.ndarray]:
    """What the page must draw for the pair it shows, from the frames the service published: the denoised frame in
    grey with the page's default contrast, the map through the colormap; (H, W, 3) RGB as int16."""
    from emlive.viewer.colormap import colorize
    from emlive.viewer.render import Contrast, FramePair, make_channel, render_pair

    acq, index, factor = shown["acquisition"], shown["index"], shown["factor"]
    channels = {}
    for kind in ("denoised", "uncertainty"):
        msg = published[kind]
        channels[kind] = make_channel(kind, msg.header.to_dict(), msg.data, factor)
    meta, parts = render_pair(FramePair(acq, index, 0.0, factor, 0.0, **channels), Contrast())  # the page's defaults
    out = {}
    for info, part in zip(meta["channels"], parts, strict=True):
        indices = np.frombuffer(part, np.uint8).reshape(info["height"], info["width"])
        rgb = colorize(indices) if info["kind"] == "uncertainty" else np.repeat(indices[..., None], 3, axis=2)
        out[info["kind"]] = rgb.astype(np.int16)
    return out


def _canvas_rgb(page: Any, canvas_id: str) -> np.ndarray:
    """A canvas' pixels as (H, W, 3) RGB, int16; every pixel must be opaque."""
    width, height, rgba = page.evaluate(_CANVAS_RGBA, canvas_id)
    drawn = np.array(rgba, np.uint8).reshape(height, width, 4)
    assert (drawn[..., 3] == 255).all(), f"{canvas_id} has transparent pixels"
    return drawn[..., :3].astype(np.int16)


def _overlay_at(page: Any, percent: int) -> np.ndarray:
    """The overlay canvas once the opacity slider is at ``percent``."""
    page.fill("#map-opacity", str(percent))
    page.wait_for_function(f"() => document.getElementById('map-opacity-value').textContent === '{percent}%'")
    return _canvas_rgb(page, "canvas-overlay")


@pytest.mark.timeout(60)
def test_the_map_beside_the_denoised_frame_alone_and_blended_over_it(
    page: Any, zctx: Any, gaussian_service: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    """'denoised only' shows the map beside the denoised frame; 'over the denoised frame' blends it over the frame
    at the chosen opacity (0 %: the denoised frame as drawn, 100 %: the map), in the frames' zoom and pan, with the
    legend and the pixel probe; 'raw only' shows no map."""
    sub = _subscribe(zctx, gaussian_service.endpoints["output"])
    try:
        page.goto(make_viewer(gaussian_service.endpoints["output"]).url)
        page.select_option("#layout", "denoised")
        page.wait_for_selector("#view-uncertainty", state="visible", timeout=30000)
        page.click("#pause")
        time.sleep(0.5)
        shown = page.evaluate("() => window.emlive.state.shown")
        published = _published(sub, shown)
        expected = _expected_renders(shown, published)
        den, colour = expected["denoised"], expected["uncertainty"]
        assert np.abs(den - colour).mean() > 20  # two different pictures: the blend below can tell them apart
        assert page.is_hidden("#view-raw") and page.is_hidden("#map-opacity")  # no opacity to choose beside
        den_box = page.locator("#view-denoised").bounding_box()
        map_box = page.locator("#view-uncertainty").bounding_box()
        assert map_box["x"] >= den_box["x"] + den_box["width"]  # beside the denoised frame
        np.testing.assert_array_equal(_canvas_rgb(page, "canvas-uncertainty"), colour)

        page.select_option("#map-display", "overlay")
        page.wait_for_selector("#canvas-overlay", state="visible", timeout=5000)
        assert page.is_hidden("#view-uncertainty") and page.is_visible("#legend")
        assert page.eval_on_selector("#legend", "e => e.parentElement.id") == "view-denoised"
        assert page.inner_text("#map-opacity-value") == "50%"
        np.testing.assert_array_equal(_canvas_rgb(page, "canvas-denoised"), den)  # the frame under the overlay
        assert np.abs(_overlay_at(page, 0) - den).max() <= 1
        assert np.abs(_overlay_at(page, 100) - colour).max() <= 1
        assert np.abs(_overlay_at(page, 50) - (den + colour) / 2).max() <= 2

        viewport = page.locator("#view-denoised .viewport").bounding_box()
        page.mouse.move(viewport["x"] + viewport["width"] / 2, viewport["y"] + viewport["height"] / 2)
        page.wait_for_function("() => document.getElementById('probe').textContent.includes('±')", timeout=5000)
        text = page.inner_text("#probe")
        x, y = _xy(text)
        std = float(published["uncertainty"].data[y, x])
        assert float(text.split("±")[1].split()[0]) == pytest.approx(std, rel=2e-3, abs=1e-3)
        fitted = page.eval_on_selector("#canvas-overlay", "c => c.style.transform")
        page.mouse.wheel(0, -300)  # zoom: the overlay moves with the frames
        page.wait_for_function("(t) => document.getElementById('canvas-overlay').style.transform !== t", arg=fitted)
        transform = page.eval_on_selector("#canvas-overlay", "c => c.style.transform")
        assert transform == page.eval_on_selector("#canvas-denoised", "c => c.style.transform")

        page.select_option("#layout", "split")  # the split: the map over its denoised side, no room beside it
        assert page.is_visible("#canvas-overlay") and page.is_visible("#legend")
        assert page.locator("#view-denoised .viewport").bounding_box()["height"] > 200  # the split fills the page
        page.select_option("#map-display", "beside")
        assert page.is_hidden("#view-uncertainty") and page.is_hidden("#canvas-overlay")
        assert "no room beside the split" in page.inner_text("#uncertainty-note")

        page.select_option("#layout", "raw")
        page.wait_for_selector("#view-denoised", state="hidden", timeout=5000)
        for choice in ("beside", "overlay"):
            page.select_option("#map-display", choice)
            for selector in ("#view-uncertainty", "#canvas-overlay", "#legend"):
                assert page.is_hidden(selector), (choice, selector)
            assert "choose a layout that shows it" in page.inner_text("#uncertainty-note")
    finally:
        sub.close(linger=0)
