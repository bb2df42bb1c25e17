"""A detector simulator: sends a recorded or synthetic movie over ZeroMQ at a steady frame rate (emlive/1).

It feeds the live service in tests, benchmarks and the demo, and stands in for a detector when developing a
client. Each pass over the movie is one acquisition: a ``start`` message, the frames (``index`` 0..T-1), an
``end`` message. With ``loop`` the movie is sent again as acquisition ``<id>.1``, ``<id>.2``, ...; with
``continuous`` too, it is one endless acquisition instead, as a camera's live view is: the movie played forward
and back (:func:`continuous_order`: the scene never jumps), indices counting on. ``frames`` caps the total number
of frames sent.

Pacing is deadline based: frame k is due at ``t0 + k / fps`` on a monotonic clock, so rounding and scheduling
delays never accumulate (no drift). A frame that could not be sent on time (a slow source, back-pressure) is
counted as late; after falling more than one second behind, the schedule restarts from the current time (logged)
rather than bursting to catch up. ``fps=0`` sends as fast as the socket takes the frames.

``mode="pub"`` binds an XPUB socket (SUB clients; frames beyond a subscriber's HWM are dropped, like a real
detector's PUB), ``mode="push"`` a PUSH socket (one PULL consumer; sending blocks when it does not keep up:
back-pressure). ``malformed_every=K`` additionally sends one broken message before every K-th frame (rotating
through the protocol violations the service must reject), for robustness tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from emlive.core.errors import ConfigError
from emlive.core.protocol import (
    PROTOCOL,
    Authenticator,
    CurveServer,
    bind,
    encode,
    encode_frame,
    event_header,
    frame_header,
    open_socket,
)
from emlive.core.readers import Movie, open_movie
from emlive.stream.modes import DetectorMode

logger = logging.getLogger(__name__)


MALFORMED_KINDS = (
    "bad_json",
    "unknown_type",
    "missing_field",
    "unknown_dtype",
    "truncated",
    "oversized",
    "bad_shape",
    "not_finite",
    "bad_protocol",
    "bad_parts",
)


@dataclass
class DetectorConfig:
    """Settings of :class:`DetectorSimulator` (the ``emlive detector`` options).

    ``source`` is a movie file (any format :func:`emlive.core.readers.open_movie` reads) or ``"synthetic"``
    (the :class:`emlive.core.simulate.SyntheticMovie` generator with ``size``, ``synthetic_frames``, ``dose``,
    ``seed``). ``continuous`` (with ``loop``): one endless acquisition (module docstring).
    ``wait_subscribers`` (PUB mode) holds the first frame until that many subscribers are connected
    (at most ``wait_timeout_s``), so nothing is sent into the void.
    """

    source: str | Path = "synthetic"
    output: str = "tcp://127.0.0.1:5555"
    fps: float = 10.0
    mode: DetectorMode = DetectorMode.pub
    loop: bool = False
    continuous: bool = False
    frames: int | None = None
    acquisition: str | None = None
    malformed_every: int = 0
    bind_any: bool = False
    hwm: int = 16
    linger_ms: int = 5000
    wait_subscribers: int = 0
    wait_timeout_s: float = 30.0
    size: int = 256
    synthetic_frames: int = 64
    dose: float = 5.0
    seed: int = 0
    curve_server: CurveServer | None = None

    def validate(self) -> None:
        try:
            self.mode = DetectorMode(self.mode)
        except ValueError:
            raise ConfigError(f"detector mode {self.mode!r}: use 'pub' or 'push'") from None
        if not (self.fps >= 0 and np.isfinite(self.fps)):
            raise ConfigError(f"fps={self.fps}: must be a finite number >= 0 (0 sends as fast as possible)")
        if self.continuous and not self.loop:
            raise ConfigError("continuous: sends the movie as one endless acquisition, a way of looping; add --loop")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"frames={self.frames}: must be >= 1 (or unset for the whole movie)")
        if self.malformed_every < 0:
            raise ConfigError(f"malformed-every={self.malformed_every}: must be >= 0 (0 sends none)")
        if self.hwm < 1:
            raise ConfigError(f"hwm={self.hwm}: must be >= 1 message")
        if self.acquisition is not None and (not self.acquisition or not self.acquisition.isprintable()):
            raise ConfigError(f"acquisition {self.acquisition!r}: must be a non-empty printable string")


def open_source(config: DetectorConfig) -> Movie:
    """The movie a config names: ``synthetic`` or a file/folder readable by ``open_movie``."""
    if str(config.source) == "synthetic":
        from emlive.core.simulate import SimulationConfig, SyntheticMovie

        sim = SimulationConfig(
            height=config.size,
            width=config.size,
            frames=config.synthetic_frames,
            dose=config.dose,
            seed=config.seed,
        )
        return SyntheticMovie(sim)
    return open_movie(Path(config.source))


class DetectorSimulator:
    """Sends a movie as emlive/1 messages. ``open()`` binds (``endpoint`` is then the real address),
    ``run()`` sends in the calling thread until done or stopped, ``start()`` sends from a background thread,
    ``stop()`` ends the current acquisition cleanly and closes the socket. ``movie`` overrides the source."""

    def __init__(self, config: DetectorConfig, movie: Movie | None = None) -> None:
        config.validate()
        self.config = config
        self._movie = movie
        self._own_movie = movie is None
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._auth: Authenticator | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._subs = 0
        self.error: BaseException | None = None
        self.endpoint: str | None = None
        self.sent_frames = 0
        self.sent_messages = 0
        self.malformed_sent = 0
        self.late_frames = 0
        self.blocked_s = 0.0
        self.acquisitions: list[str] = []

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def open(self) -> str:
        """Open the source and bind the socket; returns the bound address."""
        if self._sock is not None:
            return self.endpoint or ""
        cfg = self.config
        if self._movie is None:
            self._movie = open_source(cfg)
        self._ctx = zmq.Context()
        if cfg.curve_server is not None:
            self._auth = Authenticator(self._ctx, cfg.curve_server)
        kind = zmq.XPUB if cfg.mode == "pub" else zmq.PUSH
        self._sock = open_socket(self._ctx, kind, hwm=cfg.hwm, linger_ms=cfg.linger_ms, curve=cfg.curve_server)
        if kind == zmq.XPUB:
            self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        try:
            self.endpoint = bind(self._sock, cfg.output, allow_remote=cfg.bind_any)
        except ConfigError:
            self.close()
            raise
        t, h, w = self._movie.shape
        logger.info(
            "detector: %s %s (%d frames of %dx%d %s) at %s fps on %s",
            cfg.mode.upper(),
            self._movie.path,
            t,
            h,
            w,
            self._movie.dtype,
            cfg.fps or "max",
            self.endpoint,
        )
        return self.endpoint

    def start(self) -> str:
        """Bind and send from a background thread; returns the bound address."""
        endpoint = self.open()
        self._thread = threading.Thread(target=self._run_guarded, name="emlive-detector", daemon=True)
        self._thread.start()
        return endpoint

    def _run_guarded(self) -> None:
        try:
            self._send_all()
        except Exception as exc:  # noqa: BLE001 - kept for the thread that calls wait()/stop()
            self.error = exc
            logger.error("detector stopped: %s", exc)
        finally:
            self._done.set()

    def run(self) -> None:
        """Send everything in the calling thread (returns when done or stopped), then close."""
        self.open()
        try:
            self._send_all()
        finally:
            self._done.set()
            self.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the movie was sent (or sending stopped); False on timeout. Re-raises a sending error."""
        finished = self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return finished

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sending (the current acquisition gets its end message) and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # the sender still owns the socket; stop() first
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._own_movie and self._movie is not None:
            self._movie.close()
            self._movie = None

    def __enter__(self) -> DetectorSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sending -----------------------------------------------------------------------------------------------
    def _poll_subscriptions(self) -> None:
        sock = self._sock
        if sock is None or self.config.mode != "pub":
            return
        while sock.poll(0, zmq.POLLIN):
            msg = sock.recv()
            if msg[:1] == b"\x01":
                self._subs += 1
            elif msg[:1] == b"\x00":
                self._subs = max(0, self._subs - 1)

    def _wait_for_subscribers(self) -> None:
        cfg = self.config
        if cfg.mode != "pub" or cfg.wait_subscribers < 1 or self._sock is None:
            return
        deadline = time.monotonic() + cfg.wait_timeout_s
        while self._subs < cfg.wait_subscribers and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConfigError(
                    f"detector: {self._subs} of {cfg.wait_subscribers} subscriber(s) connected to {self.endpoint} "
                    f"within {cfg.wait_timeout_s:g} s; start the service first or lower wait_subscribers"
                )
            if self._sock.poll(int(min(left, 0.1) * 1e3), zmq.POLLIN):
                self._poll_subscriptions()

    def _send(self, parts: list[Any]) -> bool:
        """Send one message; in PUSH mode waits (stop-aware) while the consumer applies back-pressure."""
        sock = self._sock
        if sock is None:
            return False
        start = time.perf_counter()
        while True:
            if sock.poll(100, zmq.POLLOUT):
                try:
                    sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    continue
            if self._stop.is_set():
                return False
        self.blocked_s += time.perf_counter() - start
        self.sent_messages += 1
        self._poll_subscriptions()
        return True

    def _send_all(self) -> None:
        cfg = self.config
        movie = self._movie
        if movie is None:
            raise ConfigError("detector: no movie open; call open() first")
        self._wait_for_subscribers()
        n_movie = movie.shape[0]
        total = cfg.frames if cfg.frames is not None else (None if cfg.loop else n_movie)
        base = cfg.acquisition or time.strftime("acq-%Y%m%d-%H%M%S")
        self._pacer = _Pacer(cfg.fps)
        passes = 0
        while not self._stop.is_set() and (total is None or self.sent_frames < total):
            acq = base if passes == 0 else f"{base}.{passes}"
            passes += 1
            remaining = None if total is None else total - self.sent_frames
            if cfg.continuous:
                self._send_acquisition(acq, continuous_order(n_movie, remaining), remaining)
                break
            n_this = n_movie if remaining is None else min(n_movie, remaining)
            self._send_acquisition(acq, iter(range(n_this)), n_this)
            if not cfg.loop:
                break
        logger.info(
            "detector: done, %d frames in %d acquisition(s), %d late, %d malformed",
            self.sent_frames,
            passes,
            self.late_frames,
            self.malformed_sent,
        )

    def _send_acquisition(self, acq: str, order: Iterator[int], announced: int | None) -> None:
        """One acquisition: ``start`` (announcing ``announced`` frames; None: endless), the movie frames ``order``
        names as indices 0, 1, ... at the configured rate, ``end``."""
        movie = self._movie
        assert movie is not None
        self.acquisitions.append(acq)
        first = np.asarray(movie.frame(0))
        start_extra: dict[str, Any] = {"fps": self.config.fps, "source": str(movie.path)}
        if announced is not None:
            start_extra["frames"] = announced
        start = event_header(
            "start", acq, shape=first.shape, dtype=first.dtype, pixel_size_nm=movie.pixel_size_nm, extra=start_extra
        )
        self._send(encode(start))
        sent_here = 0
        for t in order:
            if self._stop.is_set() or not self._send_frame(acq, sent_here, t):
                break
            sent_here += 1
        self._send(encode(event_header("end", acq, index=max(sent_here - 1, 0), extra={"frames": sent_here})))

    def _send_frame(self, acq: str, index: int, t: int) -> bool:
        """Wait for frame ``index``'s time and send movie frame ``t`` as it; False when stopped."""
        movie = self._movie
        assert movie is not None
        late = self._pacer.wait(self._stop)
        if late is None:
            return False
        if late > self._pacer.period:
            self.late_frames += 1
        if late > max(1.0, 2 * self._pacer.period):
            logger.warning(
                "detector: %.2f s behind schedule at frame %d of %s; restarting the schedule from now", late, index, acq
            )
            self._pacer.restart()
        frame = np.ascontiguousarray(movie.frame(t))
        if self.config.malformed_every and self._pacer.k % self.config.malformed_every == 0:
            self._send(self._malformed(acq, index, frame))
            self.malformed_sent += 1
        if not self._send(encode_frame(frame, acq, index, pixel_size_nm=movie.pixel_size_nm)):
            return False
        self.sent_frames += 1
        if self._pacer.log_due():
            logger.info(
                "detector: %d frames sent (%.1f fps), %d late",
                self.sent_frames,
                self.sent_frames / self._pacer.elapsed(),
                self.late_frames,
            )
        return True

    def _malformed(self, acq: str, t: int, frame: np.ndarray) -> list[Any]:
        """One protocol violation (rotating through :data:`MALFORMED_KINDS`), for robustness tests."""
        kind = MALFORMED_KINDS[self.malformed_sent % len(MALFORMED_KINDS)]
        good = frame_header(frame, acq, t).to_dict()
        payload = frame.tobytes()

        def hdr(**changes: Any) -> bytes:
            obj = {**good, **changes}
            for key in [k for k, v in changes.items() if v is _DROP]:
                obj.pop(key)
            return json.dumps(obj).encode()

        if kind == "bad_json":
            return [b"{this is not json", payload]
        if kind == "unknown_type":
            return [hdr(type="frames"), payload]
        if kind == "missing_field":
            return [hdr(dtype=_DROP, byte_order=_DROP), payload]
        if kind == "unknown_dtype":
            return [hdr(dtype="uint12"), payload]
        if kind == "truncated":
            return [hdr(), payload[: len(payload) // 2]]
        if kind == "oversized":
            return [hdr(), payload + b"\x00\x00"]
        if kind == "bad_shape":
            return [hdr(shape=[*frame.shape, 1]), payload]
        if kind == "not_finite":
            bad = np.zeros(frame.shape, dtype=np.float32)
            bad[0, 0] = np.nan
            return [hdr(dtype="float32", byte_order="<"), bad.astype("<f4").tobytes()]
        if kind == "bad_protocol":
            return [hdr(protocol="emlive/0"), payload]
        return [hdr(), payload, b"extra part"]


def continuous_order(n_movie: int, total: int | None) -> Iterator[int]:
    """The movie positions of a continuous loop: forward then back, without repeating the ends (0, 1, ..., T-1,
    T-2, ..., 1, 0, 1, ...), so consecutive frames always neighbour each other in the movie (no jump of the scene
    from the last frame to the first); ``total`` positions (None: endless)."""
    cycle = max(1, 2 * n_movie - 2)
    k = 0
    while total is None or k < total:
        t = k % cycle
        yield t if t < n_movie else cycle - t
        k += 1


class _Pacer:
    """Deadline pacing (module docstring): frame k is due at ``t0 + k / fps``; ``fps=0``: no waiting."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.t0 = self._last_log = time.perf_counter()
        self.k = 0  # frames scheduled since t0

    def wait(self, stop: threading.Event) -> float | None:
        """Wait until the next frame is due; its lateness in seconds (0 without pacing), None when stopped."""
        late = 0.0
        if self.period:
            due = self.t0 + self.k * self.period
            delay = due - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                return None
            late = time.perf_counter() - due
        self.k += 1
        return late

    def restart(self) -> None:
        """Far behind: the frame just scheduled is due now (no burst to catch up)."""
        self.t0 = time.perf_counter() - (self.k - 1) * self.period

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    def log_due(self) -> bool:
        """True every 5 s (the progress line)."""
        now = time.perf_counter()
        if now - self._last_log <= 5.0:
            return False
        self._last_log = now
        return True


class _Drop:
    """Marker: remove this key from a malformed header."""


_DROP: Any = _Drop()

__all__ = ["MALFORMED_KINDS", "PROTOCOL", "DetectorConfig", "DetectorSimulator", "open_source"]
