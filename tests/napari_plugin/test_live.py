"""The Live widget clicked in a real napari viewer, subscribed to a real live service (in this process, a tiny model
with a variance head publishing its uncertainty maps) fed by the real detector simulator over loopback ZeroMQ: the
layers (raw, denoised and the uncertainty overlay) show exactly what the service published, the status line
follows the service away and back, errors reach the GUI; and the frame-rate benchmark runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

pytest.importorskip("napari", reason="the napari extra is not installed: pip install 'emlive[napari]'")

from qtpy.QtCore import Qt

from emlive.core.protocol import decode
from emlive.napari_plugin.live import DEFAULT_SOURCE, LiveWidget
from emlive.stream.detector import DetectorConfig, DetectorSimulator
from emlive.stream.service import DenoiseService, ServiceConfig, load_denoiser

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 20_000


@pytest.fixture(scope="module")
def denoiser(gaussian_checkpoint: Callable[..., Path]) -> Any:
    """A tiny random-weight model with a variance head (network.head=gaussian), one thread (the test machines are
    shared): the service publishes its uncertainty maps too."""
    return load_denoiser(gaussian_checkpoint("tiny-gauss"), "torch_cpu", threads=1)  # (no ONNX export: 3 s less)


@pytest.fixture
def detector() -> Iterator[DetectorSimulator]:
    """The detector simulator: a looping synthetic 64x64 movie at 20 frames/s."""
    config = DetectorConfig(source="synthetic", output="tcp://127.0.0.1:0", fps=20.0, loop=True, size=64,
                            synthetic_frames=16, linger_ms=0)  # fmt: skip
    sim = DetectorSimulator(config)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def start_service(denoiser: Any) -> Iterator[Callable[[str, str, str], DenoiseService]]:
    """Starts live services (on the given output and status addresses), stopped at teardown."""
    made: list[DenoiseService] = []

    def start(detector_address: str, output: str, status: str) -> DenoiseService:
        config = ServiceConfig(model=None, input=detector_address, output=output, status=status, publish_raw=True,
                               uncertainty=True, status_interval_s=0.3, linger_ms=0)  # fmt: skip
        svc = DenoiseService(config, denoiser=denoiser)
        made.append(svc)
        svc.start()
        return svc

    yield start
    for svc in made:
        svc.stop()


class Published:
    """Our own subscriber on the service's output: the frames it published, by (acquisition, index, kind)."""

    def __init__(self, address: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(address)
        self.frames: dict[tuple[str, int, str], np.ndarray] = {}

    def drain(self) -> None:
        while self.sock.poll(0, zmq.POLLIN):
            msg = decode(self.sock.recv_multipart(copy=False))
            if msg.data is not None and msg.header.index is not None:
                self.frames[(msg.header.acquisition, msg.header.index, msg.header.kind)] = np.array(msg.data)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _shows_published(viewer: Any, widget: LiveWidget, published: Published, other_than: Any = None) -> bool:
    """True when the three layers show a triple (not ``other_than``) equal to what the service published."""
    published.drain()
    shown = widget.shown.get("denoised")
    if shown is None or widget.shown.get("raw") != shown or widget.shown.get("uncertainty") != shown:
        return False
    if shown == other_than:
        return False
    frames = [published.frames.get((*shown, name)) for name in ("raw", "denoised", "uncertainty")]
    for name, frame in zip(("raw", "denoised", "uncertainty"), frames, strict=True):
        if frame is None:
            return False
        assert np.array_equal(viewer.layers[name].data, frame), f"{name} layer differs from published frame {shown}"
    return True


def _connect(qtbot: Any, widget: LiveWidget, output: str, status: str) -> None:
    widget.address.clear()
    qtbot.keyClicks(widget.address, output)
    qtbot.keyClicks(widget.status_address, status)
    qtbot.mouseClick(widget.connect_button, Qt.LeftButton)


def test_live_widget_shows_the_service_frames_and_follows_it_away_and_back(
    make_napari_viewer: Any, qtbot: Any, detector: DetectorSimulator, start_service: Any, denoiser: Any
) -> None:
    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Live")
    assert widget.address.text() == DEFAULT_SOURCE
    assert detector.endpoint is not None
    svc = start_service(detector.endpoint, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    output, status = svc.endpoints["output"], svc.endpoints["status"]  # the ports it got: a restart reuses them
    published = Published(output)
    try:
        _connect(qtbot, widget, output, status)
        qtbot.waitUntil(lambda: _shows_published(viewer, widget, published), timeout=WAIT_MS)
        raw, den = viewer.layers["raw"], viewer.layers["denoised"]
        assert raw.data.dtype == np.uint16 and den.data.dtype == np.float32 and raw.data.shape == (64, 64)
        assert den.translate[1] > 64  # beside the raw image, not on top of it
        std = viewer.layers["uncertainty"]  # the service's std maps: their own layer, over the denoised one
        assert std.data.dtype == np.float32 and std.colormap.name == "magma" and std.blending == "additive"
        assert tuple(std.translate) == tuple(den.translate) and std.opacity == 0.5
        assert list(viewer.layers).index(std) > list(viewer.layers).index(den)  # drawn on top
        limits = den.contrast_limits
        first, shown = widget.shown["denoised"], widget.displayed
        qtbot.waitUntil(
            lambda: widget.displayed >= shown + 3 and _shows_published(viewer, widget, published, first),
            timeout=WAIT_MS,
        )
        assert viewer.layers["raw"] is raw and viewer.layers["denoised"] is den  # swapped in place, not re-added
        assert viewer.layers["uncertainty"] is std
        assert den.contrast_limits == limits  # set once, not autoscaled per frame
        assert widget.direct_updates > 0  # the fast path (napari's private vispy node map) works in this napari
        den.contrast_limits = (0.0, 1.0)  # "Reset contrast" sets them from the next frame again
        qtbot.mouseClick(widget.reset_contrast_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: tuple(den.contrast_limits) != (0.0, 1.0), timeout=WAIT_MS)
        model = f"model {denoiser.card.name}"
        qtbot.waitUntil(lambda: model in widget.status_label.text(), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: "displayed" in widget.rate_label.text(), timeout=WAIT_MS)
        assert widget.state_label.text().startswith("live: ")

        svc.stop()  # the service goes away ...
        qtbot.waitUntil(lambda: widget.state_label.text().startswith(f"waiting for {output}"), timeout=WAIT_MS)
        last = widget.shown["denoised"]
        published.drain()
        published.frames.clear()  # from now on: what the restarted service publishes
        start_service(detector.endpoint, output, status)  # ... and comes back on the same address
        qtbot.waitUntil(lambda: _shows_published(viewer, widget, published, last), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: widget.state_label.text().startswith("live: "), timeout=WAIT_MS)

        receiver = widget.receiver
        assert receiver is not None
        qtbot.mouseClick(widget.disconnect_button, Qt.LeftButton)
        assert widget.receiver is None and widget.state_label.text() == "not connected"
        assert receiver._ctx.closed  # every socket closed, the context terminated
        assert widget.connect_button.isEnabled() and not widget.disconnect_button.isEnabled()
    finally:
        widget.disconnect_service()
        published.close()


def test_live_widget_reports_a_bad_address_and_receiver_errors(
    make_napari_viewer: Any, qtbot: Any, free_tcp_port: Callable[[], str]
) -> None:
    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Live")
    _connect(qtbot, widget, "localhost:5556", "")
    text = widget.state_label.text()
    assert text.startswith("error: ") and "'localhost:5556'" in text and "tcp://HOST:PORT" in text, text
    assert widget.receiver is None and widget.connect_button.isEnabled()

    _connect(qtbot, widget, free_tcp_port(), "")  # nobody there
    receiver = widget.receiver
    assert receiver is not None
    qtbot.waitUntil(lambda: widget.state_label.text().startswith("waiting for tcp://"), timeout=WAIT_MS)
    # an error in the receiver thread (the callback the thread calls when it fails) reaches the GUI thread
    thread = threading.Thread(target=receiver._on_error, args=("receiving failed: ZMQError: boom",))
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: "boom" in widget.state_label.text(), timeout=WAIT_MS)
    assert widget.receiver is None and receiver._ctx.closed


def test_default_address_is_the_service_default() -> None:
    import typer

    from emlive.cli import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    (output,) = [p for p in serve.params if p.name == "output"]
    assert output.default == DEFAULT_SOURCE


def test_napari_bench_counts_painted_frames(make_napari_viewer: Any) -> None:
    from emlive.bench.napari_bench import run

    viewer = make_napari_viewer(show=True)
    result = run(size=64, fps=30.0, seconds=1.0, warmup=0.2, window=(1280, 800), viewer=viewer)
    assert result["frames_displayed"] >= 3 and result["displayed_fps"] > 0, result
    assert result["received_pairs_per_s"] > 10 and result["latency_p50_ms"] > 0, result
