"""The napari Live widget: the raw and denoised frames of a running ``emlive serve``, at display rate; with
``emlive serve --uncertainty`` (a network.head=gaussian model) also each denoised frame's std map, as an
"uncertainty" layer (magma, additive, half opacity) over the denoised layer, added when the first map arrives.

Data flow, and why it keeps up::

    emlive serve --output (PUB) ──► LiveReceiver (a thread: SUB, drain, pair)   ──►  newest pair (one slot)
    emlive serve --status (PUB) ──►   status JSON, connection events (monitor)          │ QTimer, GUI thread
                                                                                        ▼
                                                    layers "raw" and "denoised": ``layer.data = frame``

* The receiver thread drains the SUB socket without blocking (as the browser viewer's
  :class:`emlive.viewer.source.FrameSource` does), decodes with the wire protocol's decoder
  (:func:`emlive.core.protocol.decode`), pairs raw and denoised frames by (acquisition, index)
  (:class:`emlive.core.framepairs.PairTracker`) and keeps only the newest pair: intermediate frames are dropped,
  memory is one pair plus the sockets' high-water marks, never a growing queue.
* A :class:`~qtpy.QtCore.QTimer` on the GUI thread takes that pair and copies it into each layer's own array
  (created once per frame size and dtype: ``layer.data`` is that array, so napari's model, probes and
  screenshots always hold the frame shown), then hands the array to the layer's vispy image node (napari's
  private canvas map; only for a plain 2D view of a texture dtype) and, at least once a second, refreshes the
  layer through napari (``layer.refresh``: slice, thumbnail). Side by side on the 2-core machine (load 3-4,
  Xvfb, 512x512 pairs at 30/s): ``layer.data = frame`` and ``layer.refresh()`` each cost about 70 ms of CPU per
  displayed pair (12 pairs/s shown), mostly napari's events, transforms and layer-list updates; the node update
  about 40 ms (21-25 pairs/s). Without the private map (another napari) every frame goes through
  ``layer.refresh``. The layers are created once; contrast limits are set on the first frame, a new frame size,
  or "Reset contrast": never autoscaled per frame.
* The service's status (``emlive serve --status``) and the receiver's rates are shown in labels. A socket monitor
  tells when the service goes away; ZeroMQ reconnects by itself and the widget shows "waiting for ..." until
  frames come again. An error in the receiver thread reaches the GUI thread through a Qt signal and is shown.

Every socket is closed on Disconnect and when the widget closes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import zmq
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget
from vispy.visuals import ImageVisual
from zmq.utils.monitor import recv_monitor_message

from emlive.core.errors import EmliveError
from emlive.core.framepairs import Pair, PairTracker, newest_status, queued_messages
from emlive.core.protocol import HeaderCache, connect, open_socket

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "tcp://127.0.0.1:5556"  # `emlive serve --output`'s default (a test keeps them equal)
LAYER_NAMES = ("raw", "denoised", "uncertainty")
MAX_DRAIN = 256  # messages read per round before the newest pair is handed over
RECEIVE_HWM = 24  # messages the SUB socket may hold (8 raw+denoised+uncertainty triples): bounded memory
POLL_MS = 100
DISPLAY_INTERVAL_MS = 10  # the GUI timer: a new pair is shown within 10 ms of arriving (up to 100 frames/s)
LABEL_INTERVAL_S = 0.5
SYNC_INTERVAL_S = 1.0  # a full napari refresh of each layer (slice, thumbnail) this often (between fast updates)
_TEXTURE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))  # vispy takes these as they are
STALE_AFTER_S = 3.0  # no frame for this long: "waiting for frames"
GAP_FRACTION = 0.05  # the gap between the raw and the denoised image, as a fraction of the frame width
# the uncertainty map's layer: its own colour scale, over the denoised layer (napari's names)
MAP_LAYER = {"colormap": "magma", "blending": "additive", "opacity": 0.5}
CONTRAST_PERCENTILES = (0.5, 99.5)
_MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


@dataclass
class ReceiverState:
    """What the receiver thread shares with the GUI (read under the receiver's lock)."""

    pairs: int = 0
    frames: int = 0
    rejected: int = 0
    connected: bool = False
    ever_connected: bool = False
    last_frame_at: float | None = None
    status: dict[str, Any] | None = None
    last_error: str | None = None


class LiveReceiver:
    """Subscribes to a service's output (and status) in a background thread; keeps only the newest pair.

    ``on_error(text)`` is called (in the receiver thread) when the thread fails; it must be thread-safe (the
    widget passes a Qt signal's ``emit``).
    """

    def __init__(self, source: str, status: str | None, on_error: Any) -> None:
        self.source, self.status_addr, self._on_error = source, status, on_error
        self.state = ReceiverState()
        self._lock = threading.Lock()
        self._newest: Pair | None = None
        self._pairs = PairTracker()
        self._cache = HeaderCache()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sockets: list[zmq.Socket[Any]] = []
        self._monitored: zmq.Socket[Any] | None = None
        try:
            self._sub = self._subscriber(source, RECEIVE_HWM, monitor=True)
            self._status_sub = None if status is None else self._subscriber(status, 16)
        except BaseException:
            self._close()
            raise

    def _subscriber(self, address: str, hwm: int, monitor: bool = False) -> zmq.Socket[Any]:
        sock = open_socket(self._ctx, zmq.SUB, hwm=hwm, linger_ms=0)
        self._sockets.append(sock)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        if monitor:  # before connecting: no connection event is missed
            self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            self._monitored = sock
            self._sockets.append(self._monitor)
        connect(sock, address)
        return sock

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="emlive-napari-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every socket (idempotent); the frames held are let go."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._close()
        with self._lock:
            self._newest = None
        self._pairs = PairTracker()

    def _close(self) -> None:
        with self._lock:
            if self._ctx.closed:
                return
            if self._monitored is not None:
                self._monitored.disable_monitor()
                self._monitored = None
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
            self._ctx.term()

    def take(self) -> Pair | None:
        """The newest pair not taken yet (None when nothing new came)."""
        with self._lock:
            pair, self._newest = self._newest, None
        return pair

    def snapshot(self) -> ReceiverState:
        with self._lock:
            return replace(self.state)

    # --- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            poller = zmq.Poller()
            for sock in (self._sub, self._monitor, self._status_sub):
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(POLL_MS))
                if self._monitor in events:
                    self._drain_monitor()
                if self._status_sub is not None and self._status_sub in events:
                    self._drain_status()
                if self._sub in events:
                    self._drain_frames()
                else:
                    self._release_overdue()
        except Exception as exc:  # any failure is handed to the GUI thread, never lost
            if self._stop.is_set():
                return  # the sockets were closed under a poll that was ending anyway
            logger.exception("the Live widget's receiver for %s failed", self.source)
            text = f"receiving from {self.source} failed: {type(exc).__name__}: {exc}"
            with self._lock:
                self.state.last_error = text
            self._on_error(text)

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            with self._lock:
                if event["event"] == zmq.EVENT_CONNECTED:
                    self.state.connected = self.state.ever_connected = True
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self.state.connected = False

    def _drain_status(self) -> None:
        assert self._status_sub is not None
        status = newest_status(self._status_sub, MAX_DRAIN, self.status_addr)
        if status is not None:
            with self._lock:
                self.state.status = status

    def _release_overdue(self) -> None:
        """A denoised pair whose uncertainty map did not come is shown without it (the tracker's rule)."""
        pair = self._pairs.overdue(time.time())
        if pair is not None:
            with self._lock:
                self._newest = pair

    def _drain_frames(self) -> None:
        newest: Pair | None = None
        frames = rejected = pairs = 0
        for msg in queued_messages(self._sub, MAX_DRAIN, self.source, self._cache):
            if msg is None:
                rejected += 1
                continue
            frames += msg.data is not None
            pair = self._pairs.add(msg, time.time())
            if pair is not None:
                newest, pairs = pair, pairs + 1
        with self._lock:
            st = self.state
            st.frames, st.rejected, st.pairs = st.frames + frames, st.rejected + rejected, st.pairs + pairs
            if frames:
                st.last_frame_at = time.time()
            if newest is not None:
                self._newest = newest


class _Bridge(QObject):
    """Carries the receiver thread's errors to the GUI thread (a queued signal)."""

    failed = Signal(str)


class LiveWidget(QWidget):
    """Connect to a running ``emlive serve`` and show its raw and denoised frames as two image layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.receiver: LiveReceiver | None = None
        self.displayed = 0  # layer swaps (frame pairs shown)
        self.shown: dict[str, tuple[str, int]] = {}  # layer name -> (acquisition, index) of its current frame
        self.last_pair: Pair | None = None  # the pair shown last
        self._buffers: dict[str, np.ndarray] = {}  # layer name -> the array the layer shows (frames copied in)
        self._synced: dict[str, tuple[float, int]] = {}  # layer name -> (last full refresh, fast updates since)
        self.direct_updates = 0  # frames handed straight to the vispy node (the fast path)
        self._reset_contrast = False
        self._rates = (time.monotonic(), 0, 0)
        self._bridge = _Bridge()
        self._bridge.failed.connect(self._on_failed)
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(DISPLAY_INTERVAL_MS)
        self._timer.timeout.connect(self._tick)
        self._label_at = 0.0

    def _build(self) -> None:
        self.address = QLineEdit(DEFAULT_SOURCE)
        self.address.setToolTip("The service's output address: emlive serve --output (its default is shown).")
        self.status_address = QLineEdit("")
        self.status_address.setPlaceholderText("optional: emlive serve --status address")
        self.connect_button = QPushButton("Connect")
        self.disconnect_button = QPushButton("Disconnect")
        self.reset_contrast_button = QPushButton("Reset contrast")
        self.disconnect_button.setEnabled(False)
        self.connect_button.clicked.connect(self.connect_service)
        self.disconnect_button.clicked.connect(self.disconnect_service)
        self.reset_contrast_button.clicked.connect(self.request_contrast_reset)
        self.state_label = QLabel("not connected")
        self.rate_label = QLabel("")
        self.status_label = QLabel("")
        for label in (self.state_label, self.rate_label, self.status_label):
            label.setWordWrap(True)
        form = QFormLayout()
        form.addRow("output", self.address)
        form.addRow("status", self.status_address)
        buttons = QHBoxLayout()
        for button in (self.connect_button, self.disconnect_button, self.reset_contrast_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        for label in (self.state_label, self.rate_label, self.status_label):
            layout.addWidget(label)
        layout.addStretch(1)

    # --- connection ---------------------------------------------------------------------------------------------
    def connect_service(self) -> None:
        """Subscribe to the addresses in the fields (the Connect button)."""
        self.disconnect_service()
        source = self.address.text().strip()
        status = self.status_address.text().strip() or None
        try:
            self.receiver = LiveReceiver(source, status, self._bridge.failed.emit)
        except EmliveError as exc:
            self._show_error(str(exc))
            return
        self.receiver.start()
        self.destroyed.connect(self.receiver.stop)  # a viewer closed with the widget: no slot of ours runs then
        self._rates = (time.monotonic(), 0, 0)
        self._timer.start()
        self.connect_button.setEnabled(False)
        self.disconnect_button.setEnabled(True)
        self._set_state(f"waiting for {source} ...")
        logger.info("Live widget subscribed to %s (status %s)", source, status)

    def disconnect_service(self) -> None:
        """Stop receiving and close the sockets (the Disconnect button; also on close). The layers stay."""
        self._timer.stop()
        if self.receiver is not None:
            self.destroyed.disconnect(self.receiver.stop)
            self.receiver.stop()
            self.receiver = None
            self._set_state("not connected")
        self.connect_button.setEnabled(True)
        self.disconnect_button.setEnabled(False)

    def request_contrast_reset(self) -> None:
        """Set the contrast limits from the next frames' percentiles (the Reset contrast button)."""
        self._reset_contrast = True

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.disconnect_service()
        super().closeEvent(event)

    def _on_failed(self, text: str) -> None:
        self.disconnect_service()
        self._show_error(text)

    def _show_error(self, text: str) -> None:
        logger.error("Live widget: %s", text)
        self.state_label.setStyleSheet("color: #e05050")
        self.state_label.setText(f"error: {text}")

    def _set_state(self, text: str) -> None:
        self.state_label.setStyleSheet("")
        self.state_label.setText(text)

    # --- display ------------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        receiver = self.receiver
        if receiver is None:
            return
        pair = receiver.take()
        if pair is not None:
            try:
                self._show(pair)
            except (ValueError, TypeError) as exc:
                self._on_failed(f"frame {pair.index} of {pair.acquisition!r} cannot be shown: {exc}")
                return
        now = time.monotonic()
        if now - self._label_at >= LABEL_INTERVAL_S:
            self._label_at = now
            self._update_labels(receiver.snapshot(), now)

    def _show(self, pair: Pair) -> None:
        reset = self._reset_contrast
        self._reset_contrast = False
        for name, msg in zip(LAYER_NAMES, (pair.raw, pair.denoised, pair.uncertainty), strict=True):
            if msg is None or msg.data is None:
                continue
            self._set_layer(name, msg.data, reset)
            self.shown[name] = (pair.acquisition, pair.index)
        self.last_pair = pair
        self.displayed += 1

    def _set_layer(self, name: str, data: np.ndarray, reset: bool) -> None:
        layer = self._layer(name)
        buffer = self._buffers.get(name)
        if layer is not None and buffer is not None and layer.data is buffer and buffer.shape == data.shape \
                and buffer.dtype == data.dtype:  # fmt: skip
            np.copyto(buffer, data)
            now = time.monotonic()
            synced_at, fast = self._synced.get(name, (now, 0))
            node = None if fast and now - synced_at >= SYNC_INTERVAL_S else self._image_node(layer)
            if node is not None:
                node.set_data(layer._data_view)  # the view napari itself gives the node
                node.update()
                self.direct_updates += 1
                self._synced[name] = (synced_at, fast + 1)
            else:
                self._synced[name] = (now, 0)
                layer.refresh()
        else:  # a new layer, frame size or pixel type (or the layer's data was replaced): the slow path, once
            buffer = self._buffers[name] = np.array(data)  # writable, C-contiguous, the frame's dtype
            if layer is None:
                style = MAP_LAYER if name == "uncertainty" else {"colormap": "gray"}
                layer = self.viewer.add_image(buffer, name=name, **style)
            else:
                layer.data = buffer
            if name != "raw":  # beside the raw image (the map over the denoised one)
                layer.translate = (0.0, data.shape[1] * (1.0 + GAP_FRACTION))
            self.viewer.reset_view()
            reset = True
        if reset:
            set_contrast(layer, data)

    def _image_node(self, layer: Any) -> Any:
        """The vispy node that draws ``layer`` when it shows its whole array as one 2D texture, else None.

        napari has no public API for this: the canvas map and the layer's data view are private, so anything
        unexpected (another napari, a 3D view, transposed axes, a dtype vispy would convert) returns None and
        the frame goes through ``layer.refresh``.
        """
        try:
            view = layer._data_view
            node = self.viewer.window._qt_viewer.canvas.layer_to_visual[layer].node
        except (AttributeError, KeyError):
            return None
        buffer = layer.data
        plain = (
            self.viewer.dims.ndisplay == 2
            and isinstance(node, ImageVisual)
            and isinstance(view, np.ndarray)
            and view.dtype in _TEXTURE_DTYPES
            and view.shape == buffer.shape
            and view.strides == buffer.strides
            and np.shares_memory(view, buffer)
        )
        return node if plain else None

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 - no .get

    def _update_labels(self, st: ReceiverState, now: float) -> None:
        t0, pairs0, shown0 = self._rates
        dt = max(now - t0, 1e-6)
        self._rates = (now, st.pairs, self.displayed)
        frame = self.shown.get("denoised") or self.shown.get("raw")
        where = f" · frame {frame[0]} #{frame[1]}" if frame else ""
        rejected = f" · rejected {st.rejected}" if st.rejected else ""
        self.rate_label.setText(
            f"received {(st.pairs - pairs0) / dt:.1f} pairs/s · displayed {(self.displayed - shown0) / dt:.1f} "
            f"frames/s{where}{rejected}"
        )
        self.status_label.setText(format_status(st.status))
        if st.last_error is None:
            self._set_state(connection_text(self.address.text().strip(), st, time.time()))


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Display limits from the 0.5th and 99.5th percentiles of a regular subsample (about 65536 pixels)."""
    step = max(1, int(np.sqrt(data.size / 65536)))
    lo, hi = (float(v) for v in np.percentile(data[::step, ::step], CONTRAST_PERCENTILES))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("the frame holds NaN or infinite values; it has no display range")
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def set_contrast(layer: Any, data: np.ndarray) -> None:
    """Set ``layer``'s contrast limits (and their slider's range) from ``data``, once: not per frame."""
    lo, hi = contrast_limits(data)
    full = (min(lo, float(data.min())), max(hi, float(data.max())))
    layer.contrast_limits_range = full if full[1] > full[0] else (lo, hi)
    layer.contrast_limits = (lo, hi)


def connection_text(source: str, st: ReceiverState, now: float) -> str:
    """The connection line of the widget: live, or what it is waiting for."""
    if not st.connected:
        if st.ever_connected:
            return f"waiting for {source}: the service went away; reconnecting ..."
        return f"waiting for {source}: no service there yet (is `emlive serve --output {source}` running?)"
    if st.last_frame_at is None:
        return f"waiting for frames from {source} (connected) ..."
    age = now - st.last_frame_at
    if age > STALE_AFTER_S:
        return f"waiting for frames from {source} (connected; none for {age:.0f} s)"
    return f"live: {source}"


def format_status(status: dict[str, Any] | None) -> str:
    """One line of the service's telemetry (``emlive serve --status``): model, input rate, latency, skipped."""
    if not status:
        return ""
    model = status.get("model") or {}
    receive = (status.get("stages") or {}).get("receive") or {}
    latency = (status.get("latency") or {}).get("processing") or {}
    counters = status.get("counters") or {}
    parts = [f"service: model {model.get('name', '?')} ({model.get('backend', '?')})"]
    if isinstance(receive.get("rate_hz"), int | float):
        parts.append(f"input {receive['rate_hz']:.1f} fps")
    if isinstance(latency.get("p50_ms"), int | float):
        parts.append(f"latency p50 {latency['p50_ms']:.0f} ms")
    parts.append(f"skipped {counters.get('skipped', 0)}")
    return " · ".join(parts)
