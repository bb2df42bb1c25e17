"""The live denoising service: detector frames in over ZeroMQ, denoised frames out, as they arrive.

Threads (each owns its sockets; a thread's exception is handed to the thread that called :meth:`run` or
:meth:`DenoiseService.stop`, which logs it, shuts down cleanly and raises it):

* **receiver**: reads the input socket (SUB connected to a detector's PUB, or PULL connected to its PUSH) as
  fast as it can into a bounded queue, without decoding, so the detector is never held up by the model;
* **pipeline**: decodes and validates each message (a bad one is logged in one line, counted and dropped),
  records raw frames, keeps the rolling window (:mod:`emlive.stream.window`), runs the model on complete
  windows (each frame pushed once into the model's float32 ring, :class:`~emlive.stream.window.ModelWindows`,
  :class:`emlive.export.runtime.FrameStream`), publishes each denoised frame (and the raw one, with
  ``publish_raw``) on the output XPUB socket and records it;
* **control**: answers JSON commands on the REP control socket and publishes telemetry on the status socket
  (and logs one line of it) every ``status_interval_s`` seconds;
* **recorder** (with ``record``): appends frames to the recording files (:mod:`emlive.stream.recording`).

Overload policy. *Live* (default): when frames arrive faster than the model runs, the pipeline takes every
queued frame into the window (and the recording) but runs the model only on the newest complete window (and on
the flushed tail of an acquisition that just ended); the others are counted as ``skipped``. Latency stays at
about one to two inferences and memory at the queue bound. If frames arrive so fast that the input queue
(``queue_size`` messages) fills during a single inference, the receiver drops the oldest queued message (counted
as ``dropped``, logged at most every 5 s; the gap resets the window). *Lossless* (``lossless=True``): every frame
is denoised in order. When the input queue is full the receiver stops reading: the socket's receive buffer
(RCVHWM) fills and, with ``input_mode="pull"``, the detector's PUSH blocks: back-pressure, nothing is lost
(counted as ``backpressure`` episodes, logged at most every 5 s). A SUB socket cannot hold a PUB back (the PUB
drops what exceeds its HWM), so lossless mode with SUB input warns at start, and frames lost upstream show up as
counted, logged gaps. Memory: ``memory_budget`` bytes bound the frames (:mod:`emlive.stream.budget`): the input
queue holds up to ``queue_size`` messages and a quarter of the budget (the pipeline the batch it took from it,
as much again); a frame size whose window and model buffers need more than half the budget is rejected
(``over_budget``) and never warmed up for. The output holds up to ``output_hwm`` frames per slow subscriber.

Bad input. Every message is decoded and checked at the boundary (:func:`emlive.core.protocol.decode`); a refused
one is counted per reason (``status()["rejected"]``), logged in full the first time its reason occurs and then
summarised with the status line (:class:`emlive.stream.errorlog.ErrorLog`), and dropped; the service goes on.
Control requests are answered always, a refused one with ``{"ok": false, "error": ..., "kind": ...}``
(counted in ``status()["control_errors"]``). A ``start`` announcing a frame size only schedules a warm-up, run by
the pipeline when its queue is empty (the latest announced size, once).

Stop. ``stop()`` (SIGINT/SIGTERM in the CLI) stops reading the input; every message already taken from the socket
is processed, published and recorded before the service exits. With ``lossless``, the receiver first drains
what ZeroMQ already holds for it until the input is quiet for 100 ms or ``drain_s`` passed.

Only one consumer may read a detector's PUSH stream: a second PULL would receive every other frame (ZeroMQ
deals PUSH messages round-robin). In PULL mode the service is that one consumer and re-publishes on its PUB.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np
import zmq

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL,
    STATUS_TYPE,
    Authenticator,
    CurveClient,
    CurveServer,
    Header,
    Message,
    ProtocolError,
    bind,
    check_bind_endpoint,
    connect,
    decode,
    dtype_fields,
    encode,
    encode_json,
    open_socket,
    parse_json_object,
)
from emlive.stream.budget import DEFAULT_MEMORY_BUDGET, MemoryBudget, format_bytes
from emlive.stream.errorlog import ErrorLog
from emlive.stream.inputqueue import InputQueue
from emlive.stream.modes import InputFormat, InputMode
from emlive.stream.recording import Recorder, RecordWhat, check_record_path
from emlive.stream.telemetry import Telemetry, format_line
from emlive.stream.window import FrameRecord, ModelWindows, WindowAssembler, WindowJob, live_selection

logger = logging.getLogger(__name__)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once, not per frame (json.dumps(**kw))


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


class DenoiserLike(Protocol):
    """What the service needs of a model: :class:`emlive.export.runtime.Denoiser` is one. A model with the
    streaming API as well (``stream(shape, dtype)``, :class:`emlive.export.runtime.FrameStream`) is fed each
    frame once (:class:`emlive.stream.window.ModelWindows`); ``denoise_window`` then serves the warm-ups only."""

    frames: int
    backend: str
    device: str

    @property
    def card(self) -> Any: ...

    def denoise_window(self, window: np.ndarray) -> np.ndarray: ...


Loader = Callable[[Path], DenoiserLike]


@dataclass
class ServiceConfig:
    """Settings of :class:`DenoiseService` (the ``emlive serve`` options).

    ``input`` is the detector's address (the service connects); ``output``, ``status`` and ``control`` are
    bound by the service, on 127.0.0.1 unless ``bind_any``. ``queue_size`` bounds the input queue (messages),
    ``hwm`` the input, status and control sockets' high-water marks (messages), ``output_hwm`` the output's: a
    subscriber that falls that many messages behind loses the newer ones (a PUB never waits), so the output may
    hold up to ``output_hwm`` frames per slow subscriber in memory. ``memory_budget`` (bytes) bounds the frames
    the service holds (:mod:`emlive.stream.budget`): the input queue in bytes, the largest frame, warm-ups.
    ``drain_s`` bounds how long a lossless stop keeps taking what the input socket already holds.
    """

    model: Path | None
    input: str
    output: str
    input_mode: InputMode = InputMode.sub
    input_format: InputFormat = InputFormat.emlive
    dectris_channel: str | None = None
    lossless: bool = False
    status: str | None = None
    control: str | None = None
    record: Path | None = None
    record_what: RecordWhat = RecordWhat.raw
    record_fsync: bool = False
    publish_raw: bool = False
    bind_any: bool = False
    backend: str = "auto"
    threads: int | None = None
    tile: int | None = None
    queue_size: int = 32
    hwm: int = 8
    output_hwm: int = 32
    status_interval_s: float = 5.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    drain_s: float = 2.0
    linger_ms: int = 1000
    shutdown_timeout_s: float = 30.0
    curve_server: CurveServer | None = None
    curve_client: CurveClient | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value, the rule and the fix."""
        try:
            self.input_mode = InputMode(self.input_mode)
        except ValueError:
            raise ConfigError(
                f"input mode {self.input_mode!r}: use 'sub' (detector PUB) or 'pull' (detector PUSH)"
            ) from None
        try:
            self.input_format = InputFormat(self.input_format)
        except ValueError:
            raise ConfigError(
                f"input format {self.input_format!r}: use one of {', '.join(f.value for f in InputFormat)}"
            ) from None
        if self.input_format in (InputFormat.dectris_v1, InputFormat.dectris_v2) and self.input_mode == "sub":
            raise ConfigError(
                f"input format {self.input_format} with input mode sub: DECTRIS detectors PUSH their stream to one "
                "consumer; use --input-mode pull"
            )
        try:
            self.record_what = RecordWhat(self.record_what)
        except ValueError:
            raise ConfigError(f"record-what {self.record_what!r}: use raw, denoised or both") from None
        if self.queue_size < 1:
            raise ConfigError(f"queue size {self.queue_size}: must be >= 1 message")
        if self.hwm < 1 or self.output_hwm < 1:
            raise ConfigError(f"high-water marks {self.hwm}/{self.output_hwm}: must be >= 1 message")
        if not self.status_interval_s > 0:
            raise ConfigError(f"status interval {self.status_interval_s} s: must be > 0")
        if self.max_frame_bytes < 1:
            raise ConfigError(f"maximum frame size {self.max_frame_bytes} bytes: must be >= 1")
        MemoryBudget(self.memory_budget)  # raises ConfigError when too small
        if not 0 <= self.drain_s <= 60:
            raise ConfigError(f"drain time {self.drain_s} s: must be between 0 and 60 s")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}: must be >= 1 (or unset for the backend's default)")
        if self.record is not None:
            check_record_path(self.record)
        for name in ("output", "status", "control"):
            value = getattr(self, name)
            if name == "output" or value is not None:
                # the same check bind() makes, so a bad address fails before the model loads
                check_bind_endpoint(value, self.bind_any)
        if not self.input.strip():
            raise ConfigError("input address is empty; give the detector's address, e.g. tcp://127.0.0.1:5555")


def load_denoiser(path: Path, backend: str = "auto", threads: int | None = None, tile: int | None = None) -> Any:
    """Load a model with the inference runtime (:class:`emlive.export.runtime.Denoiser`)."""
    from emlive.export.runtime import Denoiser

    return Denoiser.load(path, backend, threads=threads, tile=tile)


def model_info(denoiser: DenoiserLike, path: Path | None) -> dict[str, Any]:
    """Name, path, frames, blind spot, backend, device and width of a model, for headers and telemetry."""
    card = denoiser.card
    network = getattr(card, "network", None)
    return {
        "name": str(getattr(card, "name", "model")),
        "path": None if path is None else str(path),
        "frames": int(denoiser.frames),
        "backend": str(denoiser.backend),
        "device": str(denoiser.device),
        "width": getattr(network, "width", None),
        "blind_spot": None if network is None else list(getattr(network, "blind_spot", ())) or None,
    }


@dataclass(frozen=True)
class _Event:
    """A start/end message to forward on the output."""

    header: Header


@dataclass(frozen=True)
class _CloseRecording:
    """Close an acquisition's recording files (after its last frames were denoised)."""

    acquisition: str


_Action: TypeAlias = WindowJob | _Event | _CloseRecording


class DenoiseService:
    """The live service (see the module docstring). ``start()`` opens the sockets and starts the threads,
    ``stop()`` shuts down cleanly (flushes the window, the recording, closes every socket) and re-raises a
    worker's error, ``run()`` does both and serves until :meth:`request_stop` (SIGINT/SIGTERM in the CLI), a
    ``stop`` control command or a fatal error.

    ``denoiser`` replaces loading ``config.model`` (tests, benchmarks); ``loader`` loads models for swaps.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        denoiser: DenoiserLike | None = None,
        loader: Loader | None = None,
    ) -> None:
        config.validate()
        if denoiser is None and config.model is None:
            raise ConfigError("no model: pass --model PATH (a .ckpt, .pt or .onnx model file)")
        self.config = config
        self.telemetry = Telemetry()
        self._loader: Loader = loader or (
            lambda p: load_denoiser(p, config.backend, threads=config.threads, tile=config.tile)
        )
        self._denoiser: DenoiserLike | None = denoiser
        self._model_path: Path | None = None if denoiser is not None else config.model
        self._pending: tuple[DenoiserLike, Path] | None = None
        self._swap_state: dict[str, Any] = {"state": "idle"}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver_done = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self.budget = MemoryBudget(config.memory_budget)
        self._queue = InputQueue(config.queue_size, self.budget.queue_bytes)
        self._input_errors = ErrorLog(logger, "rejected message")
        self._control_errors = ErrorLog(logger, "control request refused")
        self._warm_pending: tuple[tuple[int, int], np.dtype[Any]] | None = None
        self._assembler: WindowAssembler | None = None
        self._recorder: Recorder | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._auth: Authenticator | None = None
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._subs = 0
        self._subs_cond = threading.Condition()
        self._seq = 0
        self._windows = ModelWindows()
        self._warmed: set[tuple[int, tuple[int, int], str]] = set()
        self._last_shape: tuple[tuple[int, int], np.dtype[Any]] | None = None
        self._out_extra: dict[str, Any] = {}
        self._backpressure_logged = -1e9
        self._dropped_logged = -1e9
        self._pipeline: threading.Thread | None = None
        self._decoder: Any = None  # emlive.stream.dectris.DectrisDecoder for non-emlive inputs
        if config.input_format != InputFormat.emlive:
            from emlive.stream.dectris import DectrisDecoder

            self._decoder = DectrisDecoder(
                config.input_format, channel=config.dectris_channel, max_frame_bytes=self.max_frame_bytes
            )
        self._started = False
        self._stopped = False
        self.endpoints: dict[str, str] = {}

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame accepted: the configured maximum, capped by the input queue's share of the budget."""
        return min(self.config.max_frame_bytes, self.budget.queue_bytes)

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model, open and bind the sockets, start the threads."""
        if self._started:
            raise ConfigError("the service was started already; make a new DenoiseService to start again")
        self._started = True
        cfg = self.config
        if self._denoiser is None and cfg.model is not None:
            logger.info("loading model %s (backend %s)", cfg.model, cfg.backend)
            self._denoiser = self._loader(cfg.model)
        if self._denoiser is None:
            raise ConfigError("no model to serve; pass --model PATH")
        self._assembler = WindowAssembler(self._denoiser.frames)
        self._update_model_gauge()
        try:
            self._open_sockets()
        except BaseException:
            self._close_sockets()
            raise
        if cfg.record is not None:
            self._recorder = Recorder(
                cfg.record,
                cfg.record_what,
                self.telemetry,
                queue_size=max(4, cfg.queue_size),
                fsync=cfg.record_fsync,
                on_error=self._fail,
            )
            self._recorder.start()
        if cfg.lossless and cfg.input_mode == "sub":
            logger.warning(
                "lossless mode with a SUB input: a detector PUB drops frames its subscribers cannot take in time "
                "(beyond its HWM); such losses are logged and counted as gaps. Use --input-mode pull for "
                "back-pressure and no loss."
            )
        self.telemetry.gauge("mode", "lossless" if cfg.lossless else "live")
        self.telemetry.gauge("input_mode", cfg.input_mode)
        self.telemetry.gauge("endpoints", dict(self.endpoints))
        for target, name in (
            (self._receive_loop, "receiver"),
            (self._pipeline_loop, "pipeline"),
            (self._control_loop, "control"),
        ):
            thread = threading.Thread(target=self._guard, args=(target,), name=f"emlive-{name}", daemon=True)
            self._threads.append(thread)
            if name == "pipeline":
                self._pipeline = thread
            thread.start()
        model = self._model_info()
        logger.info(
            "serving %s (%d frames, %s on %s): input %s %s, output %s%s%s, %s mode",
            model["name"],
            model["frames"],
            model["backend"],
            model["device"],
            cfg.input_mode.upper(),
            cfg.input,
            self.endpoints["output"],
            f", status {self.endpoints['status']}" if "status" in self.endpoints else "",
            f", control {self.endpoints['control']}" if "control" in self.endpoints else "",
            "lossless" if cfg.lossless else "live",
        )

    def _open_sockets(self) -> None:
        cfg = self.config
        self._ctx = zmq.Context()
        if cfg.curve_server is not None:
            self._auth = Authenticator(self._ctx, cfg.curve_server)
        elif cfg.bind_any:
            logger.warning("binding to all interfaces without CURVE: frames leave the machine unencrypted")
        in_type = zmq.SUB if cfg.input_mode == "sub" else zmq.PULL
        sock = open_socket(
            self._ctx,
            in_type,
            hwm=cfg.hwm,
            linger_ms=0,
            max_message_bytes=self.max_frame_bytes + MAX_HEADER_BYTES,
            curve=cfg.curve_client,
        )
        self._sockets["input"] = sock
        if in_type == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        connect(sock, cfg.input)
        out = open_socket(self._ctx, zmq.XPUB, hwm=cfg.output_hwm, linger_ms=cfg.linger_ms, curve=cfg.curve_server)
        out.setsockopt(zmq.XPUB_VERBOSER, 1)
        # below 1 MiB a copy is cheaper than pyzmq's zero-copy bookkeeping (its GC thread takes the GIL per frame)
        out.copy_threshold = 1 << 20
        self._sockets["output"] = out
        self.endpoints["output"] = bind(out, cfg.output, allow_remote=cfg.bind_any)
        if cfg.status is not None:
            st = open_socket(self._ctx, zmq.PUB, hwm=cfg.hwm, linger_ms=0, curve=cfg.curve_server)
            self._sockets["status"] = st
            self.endpoints["status"] = bind(st, cfg.status, allow_remote=cfg.bind_any)
        if cfg.control is not None:
            ctl = open_socket(
                self._ctx, zmq.REP, hwm=cfg.hwm, linger_ms=0, max_message_bytes=MAX_HEADER_BYTES, curve=cfg.curve_server
            )
            self._sockets["control"] = ctl
            self.endpoints["control"] = bind(ctl, cfg.control, allow_remote=cfg.bind_any)

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def request_stop(self) -> None:
        """Ask the service to shut down (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Serve until asked to stop, then shut down cleanly; raises a worker's fatal error after cleaning up."""
        if not self._started:
            self.start()
        try:
            while not self._stop.wait(0.1):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Shut down: the receiver stops, the pipeline denoises what was received (flushing the window with
        end-of-run windows), the recording is completed and closed, every socket is closed. Re-raises the first
        error a worker thread handed over."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._stop.set()
        timeout = self.config.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("%s did not finish within %.0f s; closing anyway", thread.name, timeout)
        if self._recorder is not None:
            self._recorder.close(timeout)
        if all(not t.is_alive() for t in self._threads):
            self._close_sockets()
        snap = self.status()
        logger.info("stopped. %s", format_line(snap))
        if self._errors:
            raise self._errors[0]

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - every worker error is handed to the main thread
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        if isinstance(exc, EmliveError):
            logger.error("stopping: %s", exc)
        else:
            logger.error("stopping after an unexpected error in %s", threading.current_thread().name, exc_info=exc)
        self._stop.set()

    # --- introspection -----------------------------------------------------------------------------------------
    def _model_info(self) -> dict[str, Any]:
        if self._denoiser is None:
            return {}
        return model_info(self._denoiser, self._model_path)

    def _update_model_gauge(self) -> None:
        info = self._model_info()
        self._out_extra = {"model": info.get("name"), "backend": info.get("backend"), "device": info.get("device")}
        self.telemetry.gauge("model", info)

    def status(self) -> dict[str, Any]:
        """Telemetry snapshot: counters, stage timings and rates, latency percentiles, queues, model."""
        self.telemetry.gauge(
            "queues",
            {
                "input": len(self._queue),
                "record": 0 if self._recorder is None else self._recorder.depth,
                "pending_window": 0 if self._assembler is None else self._assembler.pending,
            },
        )
        with self._subs_cond:
            self.telemetry.gauge("subscriptions", self._subs)
        with self._lock:
            self.telemetry.gauge("model_swap", dict(self._swap_state))
        if self._recorder is not None:
            self.telemetry.gauge("recordings", [str(p) for p in self._recorder.files])
        self.telemetry.gauge("control_errors", self._control_errors.snapshot())
        self.telemetry.gauge(
            "memory", {"budget_bytes": self.budget.total, "input_queue_bytes": self._queue.nbytes,
                       "input_queue_limit_bytes": self.budget.queue_bytes}
        )  # fmt: skip
        return self.telemetry.snapshot()

    def wait_for_subscribers(self, n: int, timeout: float, *, exact: bool = False) -> bool:
        """Wait until at least ``n`` (``exact``: exactly ``n``) subscriptions are on the output; False on timeout."""
        with self._subs_cond:
            return self._subs_cond.wait_for(lambda: self._subs == n if exact else self._subs >= n, timeout)

    # --- model swap ---------------------------------------------------------------------------------------------
    def load_model(self, path: str | Path) -> None:
        """Load ``path`` in the background and switch to it between two frames (a model with another frame
        count ends the current run first). Progress shows in ``status()["model_swap"]``."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"model {p} does not exist; give the path of a .ckpt, .pt or .onnx file")
        with self._lock:
            if self._swap_state.get("state") == "loading":
                raise ConfigError(f"model {self._swap_state.get('path')} is still loading; wait for it to finish")
            self._swap_state = {"state": "loading", "path": str(p)}
        threading.Thread(target=self._load_in_background, args=(p,), name="emlive-model-loader", daemon=True).start()

    def _load_in_background(self, path: Path) -> None:
        logger.info("loading model %s in the background", path)
        try:
            denoiser = self._loader(path)
        except Exception as exc:  # noqa: BLE001 - a failed swap keeps the current model; reported in status
            logger.error("model swap to %s failed, keeping the current model: %s", path, exc)
            with self._lock:
                self._swap_state = {"state": "failed", "path": str(path), "error": str(exc)}
            return
        last = self._last_shape
        if last is not None:
            self._warm_up(*last, denoiser=denoiser)  # here, not between two frames
        with self._lock:
            self._pending = (denoiser, path)
            self._swap_state = {"state": "ready", "path": str(path)}

    def _maybe_swap(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or self._assembler is None:
            return
        denoiser, path = pending
        old = self._model_info()
        actions: list[_Action] = []
        if denoiser.frames != self._assembler.n_frames:
            actions = list(self._assembler.resize(denoiser.frames, time.perf_counter()))
            self.telemetry.reset("model")
        # the flushed tail still runs on the old model: it is applied before the switch
        self._execute(actions)
        self._denoiser = denoiser
        self._model_path = path
        self._update_model_gauge()
        new = self._model_info()
        with self._lock:
            self._swap_state = {"state": "done", "path": str(path)}
        self.telemetry.count("model_swaps")
        logger.info(
            "switched model %s (%d frames) -> %s (%d frames, %s on %s)%s",
            old.get("name"),
            old.get("frames"),
            new["name"],
            new["frames"],
            new["backend"],
            new["device"],
            "; window reset" if actions or old.get("frames") != new["frames"] else "",
        )

    # --- receiver ----------------------------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        sock = self._sockets["input"]
        try:
            burst = max(1, self.config.queue_size)
            while not self._stop.is_set():
                if sock.poll(100, zmq.POLLIN):
                    self._receive_one(sock)
                    # take what else has arrived already, without going back to poll with a timeout
                    for _ in range(burst - 1):
                        if not sock.poll(0, zmq.POLLIN):
                            break
                        self._receive_one(sock)
            if self.config.lossless:
                self._drain(sock)
        finally:
            self._receiver_done.set()

    def _drain(self, sock: zmq.Socket[Any]) -> None:
        """Lossless stop: take what ZeroMQ already holds for the service (its receive buffer, and what is still
        on its way from the peer) until the input is quiet for 100 ms or ``drain_s`` has passed. The pipeline
        processes everything taken (the queue's byte bound still holds: the receiver waits for room)."""
        deadline = time.monotonic() + self.config.drain_s
        drained = 0
        while time.monotonic() < deadline and sock.poll(100, zmq.POLLIN):
            self._receive_one(sock)
            drained += 1
        logger.info(
            "lossless stop: %d message(s) drained from the input%s",
            drained,
            "" if time.monotonic() < deadline else f" (stopped after {self.config.drain_s:.1f} s; more may follow)",
        )

    def _receive_one(self, sock: zmq.Socket[Any]) -> None:
        start = time.perf_counter()
        parts = sock.recv_multipart(copy=False)
        item = (parts, time.perf_counter(), time.time())
        nbytes = sum(len(p) for p in parts)
        self.telemetry.received(time.perf_counter() - start, nbytes)
        problem = self.budget.message_problem(nbytes)
        if problem is not None:
            self._reject("over_budget", problem)
            return
        if not self.config.lossless:
            dropped = self._queue.put_drop_oldest(item, nbytes)
            if dropped:
                self.telemetry.count("dropped", dropped)
                now = time.monotonic()
                if now - self._dropped_logged > 5.0:
                    self._dropped_logged = now
                    logger.warning(
                        "input queue full (%d messages, %s): dropped the oldest queued message (%d so far); frames "
                        "arrive faster than the service can even decode them during one inference: raise --queue "
                        "or --memory-budget",
                        self.config.queue_size,
                        format_bytes(self.budget.queue_bytes),
                        self.telemetry.get("dropped"),
                    )
            return
        if self._queue.put_wait(item, nbytes, 0.0):
            return
        # the queue is full: stop reading (the socket buffer, then the detector's PUSH, hold the frames)
        self.telemetry.count("backpressure")
        now = time.monotonic()
        if now - self._backpressure_logged > 5.0:
            self._backpressure_logged = now
            logger.warning(
                "lossless: input queue full (%d messages or %s), reading paused: back-pressure on the detector "
                "(episodes so far: %d)",
                self.config.queue_size,
                format_bytes(self.budget.queue_bytes),
                self.telemetry.get("backpressure"),
            )
        while not self._queue.put_wait(item, nbytes, 0.1):
            if self._pipeline is not None and not self._pipeline.is_alive():
                self.telemetry.count("lost")
                logger.error("lossless: the pipeline has stopped; received frame not processed (counted as lost)")
                return

    # --- pipeline ----------------------------------------------------------------------------------------------
    def _pipeline_loop(self) -> None:
        lossless = self.config.lossless
        while True:
            self._maybe_swap()
            batch = self._queue.get(0.05)  # everything queued: one lock round trip per batch
            self._poll_subscriptions()
            if not batch:
                if self._stop.is_set() and self._receiver_done.is_set() and len(self._queue) == 0:
                    break
                self._warm_up_when_idle()
                continue
            groups = [self._handle(parts, recv, wall) for parts, recv, wall in batch]
            self._run_groups(groups, lossless)
        # shutdown: the current run ends here (end-of-run windows for its last frames)
        if self._assembler is not None:
            self._execute(list(self._assembler.flush(time.perf_counter())))
        self._poll_subscriptions()

    def _run_groups(self, groups: list[list[_Action]], lossless: bool) -> None:
        """Run the actions of a batch of messages. Live mode, to keep up: only the newest window that a frame
        completed is denoised, plus, when a run ended after it (an ``end``), that run's last frames.
        Every other window is skipped and counted (also the tails of runs cut short by gaps: they are old by
        now); start/end messages always go out."""
        actions = [a for group in groups for a in group]
        if not lossless:
            jobs = [a for a in actions if isinstance(a, WindowJob)]
            keep = {id(j) for j in live_selection(jobs)}
            skipped = len(jobs) - len(keep)
            if skipped:
                actions = [a for a in actions if not isinstance(a, WindowJob) or id(a) in keep]
                self.telemetry.count("skipped", skipped)
                logger.debug("live: %d window(s) skipped to keep up, denoising the newest", skipped)
        self._execute(actions)

    def _handle(self, parts: list[zmq.Frame], received: float, received_wall: float) -> list[_Action]:
        start = time.perf_counter()
        try:
            if self._decoder is None:
                msgs = [decode(parts, max_frame_bytes=self.max_frame_bytes, check_finite=True)]
            else:
                msgs = self._decoder.decode(parts)
        except ProtocolError as exc:
            self._reject(exc.reason, str(exc))
            return []
        self.telemetry.stage("decode", time.perf_counter() - start, count="decoded")
        return [action for msg in msgs for action in self._handle_message(msg, received, received_wall)]

    def _reject(self, reason: str, message: str) -> None:
        """A message refused at the input boundary: counted per reason, logged once per reason (then summarised)."""
        self.telemetry.reject(reason)
        self._input_errors.record(reason, message)

    def _frame_problem(self, header: Header) -> str | None:
        """Why frames of this header's shape do not fit the memory budget (None when they do or have no shape)."""
        if header.shape is None or header.dtype is None or self._denoiser is None:
            return None
        return self.budget.frame_problem(header.shape, header.numpy_dtype.itemsize, self._denoiser.frames)

    def _handle_message(self, msg: Message, received: float, received_wall: float) -> list[_Action]:
        header = msg.header
        assembler = self._assembler
        if assembler is None:
            return []
        if header.type == "frame":
            if msg.data is None:
                return []
            problem = self._frame_problem(header)
            if problem is not None:
                self._reject("over_budget", f"acquisition {header.acquisition} frame {header.index}: {problem}")
                return []
            return self._handle_frame(FrameRecord(header, msg.data, received, received_wall))
        actions: list[_Action] = []
        if assembler.acquisition == header.acquisition:
            actions.extend(assembler.flush(received))
            if header.type == "start":
                self.telemetry.reset("start")
        if header.type == "start":
            logger.info(
                "acquisition %s started%s",
                header.acquisition,
                f" ({header.shape[0]}x{header.shape[1]} {header.dtype})" if header.shape and header.dtype else "",
            )
            if header.shape is not None and header.dtype is not None:
                self._announce(header)
        else:
            logger.info("acquisition %s ended", header.acquisition)
        actions.append(_Event(header))
        if header.type == "end":
            actions.append(_CloseRecording(header.acquisition))
        return actions

    def _handle_frame(self, rec: FrameRecord) -> list[_Action]:
        assembler = self._assembler
        if assembler is None:
            return []
        header = rec.header
        if self._recorder is not None:
            self._recorder.submit("raw", header, rec.data)
        if header.shape is not None:
            self._last_shape = (header.shape, rec.data.dtype)
        previous_acq, previous_last = assembler.acquisition, assembler.last_index
        jobs, reason = assembler.push(rec)  # (its time is in the "window" stage of the job it completes)
        if reason is not None:
            self.telemetry.reset(reason)
            if reason == "gap" and previous_last is not None:
                missing = rec.index - previous_last - 1
                self.telemetry.count("gap_frames", missing)
                logger.warning(
                    "acquisition %s: %d frame(s) missing (%d..%d); window reset, the frames before "
                    "the gap are finished with end-of-run windows",
                    header.acquisition,
                    missing,
                    previous_last + 1,
                    rec.index - 1,
                )
            elif reason == "acquisition":
                logger.info("new acquisition %s (was %s): window reset", header.acquisition, previous_acq)
            else:
                logger.warning(
                    "acquisition %s frame %d: %s changed (last frame %s); window reset",
                    header.acquisition,
                    rec.index,
                    {"restart": "index sequence restarted", "shape": "frame shape", "dtype": "pixel type"}.get(
                        reason, reason
                    ),
                    previous_last,
                )
        actions: list[_Action] = list(jobs)
        if reason == "acquisition" and previous_acq is not None:
            actions.append(_CloseRecording(previous_acq))
        return actions

    def _announce(self, header: Header) -> None:
        """A ``start`` announced the frame size to come: warm the model up for it once the pipeline is idle (one
        pending warm-up, the latest announced; never for a size beyond the memory budget)."""
        if header.shape is None:
            return
        problem = self._frame_problem(header)
        if problem is not None:
            self.telemetry.count("warmups_refused")
            self._input_errors.record("announced_over_budget", f"acquisition {header.acquisition}: {problem}")
            return
        self._warm_pending = (header.shape, header.numpy_dtype)

    def _warm_up_when_idle(self) -> None:
        pending, self._warm_pending = self._warm_pending, None
        if pending is not None:
            self._warm_up(*pending)

    def _warm_up(self, shape: tuple[int, int], dtype: np.dtype[Any], denoiser: DenoiserLike | None = None) -> None:
        """Run a model (default: the current one) once on a blank window of that frame size, so the first real
        frame does not pay for the backend's first-run set-up (live mode would skip frames meanwhile). Called
        by the pipeline when its queue is empty, and by the model loader on the model it loaded."""
        denoiser = denoiser or self._denoiser
        key = (id(denoiser), shape, dtype.str)
        if denoiser is None or key in self._warmed:
            return
        if self.budget.frame_problem(shape, dtype.itemsize, denoiser.frames) is not None:
            return
        if len(self._warmed) >= 64:  # bounded: a sender announcing ever new sizes cannot grow it
            self._warmed.clear()
        self._warmed.add(key)
        start = time.perf_counter()
        try:
            denoiser.denoise_window(np.zeros((denoiser.frames, *shape), dtype=dtype))
        except EmliveError as exc:
            logger.debug("warm-up for %s %s skipped: %s", shape, dtype, exc)
            return
        logger.info(
            "model warmed up for %dx%d %s frames in %.0f ms",
            shape[0],
            shape[1],
            dtype,
            (time.perf_counter() - start) * 1e3,
        )

    def _execute(self, actions: list[_Action]) -> None:
        for action in actions:
            if isinstance(action, _Event):
                self._publish_event(action.header)
            elif isinstance(action, _CloseRecording):
                if self._recorder is not None:
                    self._recorder.end_acquisition(action.acquisition)
            else:
                self._run_job(action)

    def _run_job(self, job: WindowJob) -> None:
        denoiser = self._denoiser
        if denoiser is None:
            return
        center = job.center.header
        t0 = time.perf_counter()
        t1 = t0
        try:
            denoise = self._windows.feed(denoiser, job)
            t1 = time.perf_counter()
            out = denoise()
            if out.shape != center.shape:
                raise ProtocolError(
                    f"the model returned shape {out.shape} for a {center.shape} frame; the model does not fit",
                    "model_output",
                )
        except EmliveError as exc:
            self.telemetry.count("infer_errors")
            logger.error(
                "acquisition %s frame %s: denoising failed, frame not published: %s",
                center.acquisition,
                center.index,
                exc,
            )
            return
        t2 = time.perf_counter()
        try:
            out_dtype, out_order = dtype_fields(out.dtype)
        except ProtocolError:  # a type the wire does not carry
            out = out.astype(np.float32)
            out_dtype, out_order = dtype_fields(out.dtype)
        if not out.flags.c_contiguous:
            out = np.ascontiguousarray(out)
        self._seq += 1
        header = center.to_dict()
        header.update(self._out_extra)
        header.update(
            window=job.indices,
            flushed=job.flushed,
            seq=self._seq,
            received_at=round(job.center.received_wall, 6),
            infer_ms=round((t2 - t1) * 1e3, 3),
        )
        out_sock = self._sockets["output"]
        if self.config.publish_raw:
            header["kind"] = "raw"
            self._send(out_sock, [_json_bytes(header), job.center.data])
        now = time.perf_counter()
        header.update(
            dtype=out_dtype,
            byte_order=out_order,
            kind="denoised",
            latency_ms=round((now - job.completed) * 1e3, 3),
            age_ms=round((now - job.center.received) * 1e3, 3),
            published_at=round(time.time(), 6),
        )
        self._send(out_sock, [_json_bytes(header), out])
        t3 = time.perf_counter()
        self.telemetry.job(
            window_s=t1 - t0,
            infer_s=t2 - t1,
            publish_s=t3 - now,
            processing_s=t3 - job.completed,
            age_s=t3 - job.center.received,
            detector_s=max(0.0, time.time() - center.timestamp),
        )
        if self._recorder is not None:
            self._recorder.submit("denoised", center, out)

    def _publish_event(self, header: Header) -> None:
        info = self._model_info()
        out = header.replace(
            extra={
                "kind": "denoised",
                "model": info.get("name"),
                "backend": info.get("backend"),
                "device": info.get("device"),
            }
        )
        self._send(self._sockets["output"], encode(out))

    def _send(self, sock: zmq.Socket[Any], parts: list[Any]) -> None:
        try:
            sock.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.telemetry.count("publish_dropped")

    def _poll_subscriptions(self) -> None:
        sock = self._sockets.get("output")
        if sock is None:
            return
        changed = False
        while sock.poll(0, zmq.POLLIN):
            msg = sock.recv()
            if msg[:1] == b"\x01":
                self._subs += 1
                changed = True
            elif msg[:1] == b"\x00":
                self._subs = max(0, self._subs - 1)
                changed = True
        if changed:
            with self._subs_cond:
                self._subs_cond.notify_all()
            logger.info("output subscriptions: %d", self._subs)

    # --- control and status ----------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        control = self._sockets.get("control")
        status = self._sockets.get("status")
        interval = self.config.status_interval_s
        next_status = time.monotonic() + interval
        poller = zmq.Poller()
        if control is not None:
            poller.register(control, zmq.POLLIN)
        while not self._stop.is_set():
            timeout = max(0.0, min(0.1, next_status - time.monotonic()))
            events = dict(poller.poll(int(timeout * 1e3))) if control is not None else {}
            if control is not None and control in events:
                self._serve_control(control)
            if time.monotonic() >= next_status:
                next_status += interval
                self._input_errors.summarize()
                self._control_errors.summarize()
                snap = self.status()
                logger.info("%s", format_line(snap))
                if status is not None:
                    status.send(
                        encode_json({"protocol": PROTOCOL, "type": STATUS_TYPE, "time": time.time(), **snap}),
                        flags=zmq.NOBLOCK,
                    )
            if control is None and status is None:
                self._stop.wait(min(0.1, max(0.0, next_status - time.monotonic())))

    def _serve_control(self, control: zmq.Socket[Any]) -> None:
        """Answer one request on the REP socket. Every part of it is read before the reply (a REP must alternate
        receive and send), and every request gets a reply: an error JSON when it is refused."""
        parts = control.recv_multipart()
        if len(parts) != 1:
            reply = self._control_error(
                "bad_parts", f"control request of {len(parts)} parts; send one JSON object in one part"
            )
        else:
            reply = self._answer(parts[0])
        control.send(encode_json(reply))

    def _control_error(self, kind: str, message: str) -> dict[str, Any]:
        self._control_errors.record(kind, message)
        return {"ok": False, "error": message, "kind": kind}

    def _answer(self, request: bytes) -> dict[str, Any]:
        try:
            cmd_obj = parse_json_object(request, "control request")
        except ProtocolError as exc:
            return self._control_error(exc.reason, str(exc))
        cmd = cmd_obj.get("cmd")
        logger.log(logging.DEBUG if cmd == "status" else logging.INFO, "control command %r", cmd)
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "stop":
            logger.info("stop requested on the control socket")
            self.request_stop()
            return {"ok": True, "stopping": True}
        if cmd == "load_model":
            path = cmd_obj.get("path")
            if not isinstance(path, str) or not path or len(path) > 4096:
                return self._control_error(
                    "bad_field",
                    'load_model needs "path": the model file (.ckpt, .pt or .onnx), at most 4096 characters',
                )
            try:
                self.load_model(path)
            except (ConfigError, OSError, ValueError) as exc:  # a path the OS refuses (NUL byte, too long, ...)
                return self._control_error("load_model", str(exc))
            return {"ok": True, "loading": path}
        shown = cmd[:64] if isinstance(cmd, str) else type(cmd).__name__
        return self._control_error("unknown_cmd", f'unknown cmd {shown!r}; use "status", "load_model" or "stop"')


def control_request(
    endpoint: str, command: dict[str, Any], timeout_ms: int = 5000, curve: CurveClient | None = None
) -> dict[str, Any]:
    """Send one JSON command to a service's control socket and return its JSON reply."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = open_socket(ctx, zmq.REQ, hwm=4, linger_ms=0, curve=curve)
    try:
        connect(sock, endpoint)
        sock.send(encode_json(command))
        if not sock.poll(timeout_ms, zmq.POLLIN):
            raise ConfigError(f"no reply from {endpoint} within {timeout_ms} ms; is `emlive serve --control` there?")
        return parse_json_object(sock.recv(), "control reply")
    finally:
        sock.close()
