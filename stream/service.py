"""The live denoising service: detector frames in over ZeroMQ, denoised frames out, as they arrive.

:class:`DenoiseService` composes four parts, each a module with one job, and owns the sockets, the threads and
their lifetime::

                   input SUB/PULL                                             output XPUB
    detector ───────────────────► Receiver ──► InputQueue ──► Pipeline ───────────────────► subscribers
                                 (receiver.py)  (bounded in   (pipeline.py: decode, window,
                                  overload       messages and   infer, publish; recorder)
                                  policy)        bytes)           │ current model, swaps, warm-ups
                                                                  ▼
                                 control REP ──► ControlServer   ModelSlot (modelslot.py)
                                 status PUB  ◄── (control.py) ──► load_model: background load, warm, swap

Threads (a thread's exception is handed to the thread that called :meth:`DenoiseService.run` or
:meth:`DenoiseService.stop`, which logs it, shuts down cleanly and raises it):

* **receiver** (:mod:`emlive.stream.receiver`): reads the input socket (SUB connected to a detector's PUB, or PULL
  connected to its PUSH) as fast as it can into the bounded input queue, without decoding, so the detector is
  never held up by the model;
* **pipeline** (:mod:`emlive.stream.pipeline`): decodes and validates each message (a bad one is logged in one
  line, counted and dropped), records raw frames, keeps the rolling window (:mod:`emlive.stream.window`), runs
  the model on complete windows (each frame pushed once into the model's float32 ring), publishes each denoised
  frame (and the raw one, with ``publish_raw``) on the output XPUB socket and records it; between batches it lets
  the model slot (:mod:`emlive.stream.modelslot`) switch to a model loaded in the background;
* **control** (:mod:`emlive.stream.control`): answers JSON commands on the REP control socket and publishes
  telemetry on the status socket (and logs one line of it) every ``status_interval_s`` seconds;
* **recorder** (with ``record``): appends frames to the recording files (:mod:`emlive.stream.recording`).

With ``workers`` > 1 (``emlive serve --workers N``) the pipeline's infer step goes to N worker processes, each
with its own engine, and their frames (and ``--uncertainty`` maps, for the ``--estimate`` asked or the noise
check's) are published in order (:mod:`emlive.stream.fanout`); 1 runs it in-process.

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

The parts log under ``emlive.stream.service.<part>`` (so the level of ``emlive.stream.service`` applies to all).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.posterior import Estimate
from emlive.core.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    Authenticator,
    CurveClient,
    CurveServer,
    bind,
    check_bind_endpoint,
    connect,
    open_socket,
)
from emlive.stream.budget import DEFAULT_MEMORY_BUDGET, MemoryBudget
from emlive.stream.control import ControlServer, control_request
from emlive.stream.errorlog import ErrorLog
from emlive.stream.fanout import MAX_WORKERS, FanOut, RemoteModel, WorkerSettings
from emlive.stream.gcpauses import GcPauses, freeze_loaded, thaw
from emlive.stream.inputqueue import InputQueue
from emlive.stream.livecheck import LiveChecks
from emlive.stream.modelslot import DenoiserLike, Loader, ModelSlot, model_info
from emlive.stream.modes import InputFormat, InputMode
from emlive.stream.pipeline import Pipeline
from emlive.stream.receiver import Receiver
from emlive.stream.recording import Recorder, RecordWhat, check_record_path
from emlive.stream.telemetry import Telemetry, format_line

__all__ = ["DenoiseService", "DenoiserLike", "Loader", "ServiceConfig", "control_request", "load_denoiser",
           "model_info"]  # fmt: skip

logger = logging.getLogger(__name__)


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
    uncertainty: bool = False  # publish each output's std map (kind "uncertainty"; models with network.head=gaussian)
    estimate: str | None = None  # blind or posterior for models with network.head=gaussian (None: the model's default)
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
    workers: int = 1
    worker_devices: tuple[str, ...] = ()
    curve_server: CurveServer | None = None
    curve_client: CurveClient | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # freeze the loaded service's objects out of the garbage collector's full scans (emlive.stream.gcpauses); on in
    # `emlive serve`, off for services embedded in another program (it freezes that program's objects too)
    freeze_gc: bool = False

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
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers={self.workers}: use 1 (in the service) to {MAX_WORKERS} worker processes")
        if self.estimate is not None:
            try:
                self.estimate = Estimate(str(self.estimate).lower()).value
            except ValueError:
                raise ConfigError(
                    f"estimate {self.estimate!r}: use one of {', '.join(e.value for e in Estimate)}"
                ) from None
        if self.workers > 1 and self.model is None:
            raise ConfigError(f"--workers {self.workers} needs --model PATH: each worker loads the model from its file")
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


def load_denoiser(
    path: Path, backend: str = "auto", threads: int | None = None, tile: int | None = None, estimate: str | None = None
) -> Any:
    """Load a model with the inference runtime (:class:`emlive.export.runtime.Denoiser`); ``estimate``: blind or
    posterior for a ``network.head=gaussian`` model (None: its default, :mod:`emlive.export.estimates`)."""
    from emlive.export.runtime import Denoiser

    # frames come paced: no spin-wait
    return Denoiser.load(path, backend, threads=threads, tile=tile, spin=False, estimate=estimate)


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
        self.budget = MemoryBudget(config.memory_budget)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._ctx: zmq.Context[Any] | None = None
        self._auth: Authenticator | None = None
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._started = self._stopped = False
        self.endpoints: dict[str, str] = {}
        self.fanout: FanOut | None = None
        self.gc_pauses = GcPauses()
        self._make_parts(loader, denoiser)

    def _make_parts(self, loader: Loader | None, denoiser: DenoiserLike | None) -> None:
        cfg = self.config
        self.slot = ModelSlot(
            loader
            or (lambda p: load_denoiser(p, cfg.backend, threads=cfg.threads, tile=cfg.tile, estimate=cfg.estimate)),
            self.budget,
            self.telemetry,
        )
        if denoiser is not None:
            self.slot.denoiser = denoiser  # set() (the model gauge) at start
        self.queue = InputQueue(cfg.queue_size, self.budget.queue_bytes)
        self.pipeline = Pipeline(
            self.slot,
            self.telemetry,
            lossless=cfg.lossless,
            publish_raw=cfg.publish_raw,
            uncertainty=cfg.uncertainty,
            max_frame_bytes=self.max_frame_bytes,
            input_errors=ErrorLog(logger, "rejected message"),
            decoder=self._decoder(),
        )
        # a variance-head model's per-acquisition noise check (emlive.stream.livecheck); --estimate forces
        self.pipeline.live_checks = LiveChecks(forced=cfg.estimate is not None)
        self.receiver = Receiver(
            self.queue,
            self.budget,
            self.telemetry,
            lossless=cfg.lossless,
            drain_s=cfg.drain_s,
            reject=self.pipeline.reject,
            consumer_alive=self._pipeline_alive,
        )
        self.control = ControlServer(
            status=self.status,
            request_stop=self.request_stop,
            load_model=self.load_model,
            interval_s=cfg.status_interval_s,
            summaries=(self.pipeline.input_errors,),
        )

    def _decoder(self) -> Any:
        """The DECTRIS decoder for non-emlive inputs (None: emlive/1 messages)."""
        if self.config.input_format == InputFormat.emlive:
            return None
        from emlive.stream.dectris import DectrisDecoder

        cfg = self.config
        return DectrisDecoder(cfg.input_format, channel=cfg.dectris_channel, max_frame_bytes=self.max_frame_bytes)

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
        self._load_first_model()
        if self.config.freeze_gc:
            freeze_loaded()  # after the model load, before the first frame
        self.gc_pauses.install()
        try:
            self._open_sockets()
        except BaseException:
            self._close_sockets()
            raise
        self.pipeline.start(self._sockets["output"])
        self._start_recorder()
        self._set_gauges()
        for target, name in (
            (self._receive_loop, "receiver"),
            (self._pipeline_loop, "pipeline"),
            (self._control_loop, "control"),
        ):
            thread = threading.Thread(target=self._guard, args=(target,), name=f"emlive-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._log_serving()

    def _load_first_model(self) -> None:
        cfg = self.config
        if cfg.workers > 1 and cfg.model is not None:
            self._start_fanout(cfg.model)
        elif self.slot.denoiser is not None:
            self.slot.set(self.slot.denoiser, None)
        elif cfg.model is not None:
            logger.info("loading model %s (backend %s)", cfg.model, cfg.backend)
            self.slot.load_now(cfg.model)
        if self.slot.denoiser is None:
            raise ConfigError("no model to serve; pass --model PATH")
        if cfg.uncertainty and getattr(self.slot.denoiser, "channels", 1) < 2:
            if self.fanout is not None:
                self.fanout.close()  # (its workers started for nothing)
            raise ConfigError(
                f"--uncertainty: model {model_info(self.slot.denoiser, cfg.model)['name']} has no variance head, so "
                "there is no uncertainty map to publish; serve a model trained with network.head=gaussian "
                "(optim.loss=gaussian_nll), or drop --uncertainty"
            )

    def _start_fanout(self, model: Path) -> None:
        """``workers`` > 1: start the worker processes (each loads ``model`` for ``--estimate``); the pipeline hands
        them its jobs. Their results (with ``--uncertainty`` the std maps too) are held within the working half of
        the budget: the model's ring and buffers, which it bounds with one engine, live in the workers here."""
        cfg = self.config
        settings = WorkerSettings(model, cfg.workers, cfg.backend, cfg.threads, cfg.tile, cfg.worker_devices,
                                  estimate=cfg.estimate, uncertainty=cfg.uncertainty,
                                  flight_bytes=self.budget.working_bytes)  # fmt: skip
        logger.info("starting %d inference workers for %s (backend %s)", cfg.workers, model, cfg.backend)
        self.fanout = FanOut(settings, self.telemetry, self.pipeline.publish_result, lossless=cfg.lossless)
        info = self.fanout.start()
        self.pipeline.fanout = self.fanout
        self.fanout.model = RemoteModel(info, self.fanout)
        self.fanout.live_checks = self.pipeline.live_checks  # the workers measure, the service decides
        self.slot.set(self.fanout.model, model)

    def _start_recorder(self) -> None:
        cfg = self.config
        if cfg.record is None:
            return
        recorder = Recorder(
            cfg.record,
            cfg.record_what,
            self.telemetry,
            queue_size=max(4, cfg.queue_size),
            fsync=cfg.record_fsync,
            on_error=self._fail,
        )
        recorder.start()
        self.pipeline.recorder = recorder

    def _set_gauges(self) -> None:
        cfg = self.config
        if cfg.lossless and cfg.input_mode == "sub":
            logger.warning(
                "lossless mode with a SUB input: a detector PUB drops frames its subscribers cannot take in time "
                "(beyond its HWM); such losses are logged and counted as gaps. Use --input-mode pull for "
                "back-pressure and no loss."
            )
        self.telemetry.gauge("mode", "lossless" if cfg.lossless else "live")
        self.telemetry.gauge("input_mode", cfg.input_mode)
        self.telemetry.gauge("endpoints", dict(self.endpoints))

    def _log_serving(self) -> None:
        cfg, model, ends = self.config, self.slot.info(), self.endpoints
        logger.info(
            "serving %s (%d frames, %s on %s): input %s %s, output %s%s%s, %s mode",
            model["name"],
            model["frames"],
            model["backend"],
            model["device"],
            cfg.input_mode.upper(),
            cfg.input,
            ends["output"],
            f", status {ends['status']}" if "status" in ends else "",
            f", control {ends['control']}" if "control" in ends else "",
            "lossless" if cfg.lossless else "live",
        )

    # --- sockets -----------------------------------------------------------------------------------------------
    def _open_sockets(self) -> None:
        cfg = self.config
        self._ctx = zmq.Context()
        if cfg.curve_server is not None:
            self._auth = Authenticator(self._ctx, cfg.curve_server)
        elif cfg.bind_any:
            logger.warning("binding to all interfaces without CURVE: frames leave the machine unencrypted")
        self._open_input()
        out = open_socket(self._ctx, zmq.XPUB, hwm=cfg.output_hwm, linger_ms=cfg.linger_ms, curve=cfg.curve_server)
        out.setsockopt(zmq.XPUB_VERBOSER, 1)
        # below 1 MiB a copy is cheaper than pyzmq's zero-copy bookkeeping (its GC thread takes the GIL per frame)
        out.copy_threshold = 1 << 20
        self._bind("output", out)
        if cfg.status is not None:
            self._bind("status", open_socket(self._ctx, zmq.PUB, hwm=cfg.hwm, linger_ms=0, curve=cfg.curve_server))
        if cfg.control is not None:
            self._bind("control", open_socket(
                self._ctx, zmq.REP, hwm=cfg.hwm, linger_ms=0, max_message_bytes=MAX_HEADER_BYTES, curve=cfg.curve_server
            ))  # fmt: skip

    def _open_input(self) -> None:
        cfg = self.config
        assert self._ctx is not None
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

    def _bind(self, name: str, sock: zmq.Socket[Any]) -> None:
        endpoint = getattr(self.config, name)
        self._sockets[name] = sock
        self.endpoints[name] = bind(sock, endpoint, allow_remote=self.config.bind_any)

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self.fanout is not None:
            self.fanout.close()
        if self.pipeline.live_checks is not None:
            self.pipeline.live_checks.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # --- the threads (each runs one part; looked up by name at start, so a benchmark may wrap them) ------------
    def _receive_loop(self) -> None:
        self.receiver.run(self._sockets["input"], self._stop, burst=max(1, self.config.queue_size))

    def _pipeline_loop(self) -> None:
        self.pipeline.run(self.queue, self._stop, self.receiver.done)

    def _control_loop(self) -> None:
        self.control.run(self._sockets.get("control"), self._sockets.get("status"), self._stop)

    def _pipeline_alive(self) -> bool:
        """Whether the pipeline thread still takes the input queue (True until it has started)."""
        pipeline = [t for t in self._threads if t.name == "emlive-pipeline"]
        return not pipeline or pipeline[0].is_alive()

    # --- stopping ----------------------------------------------------------------------------------------------
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
        self._join_threads(self.config.shutdown_timeout_s)
        if self.pipeline.recorder is not None:
            self.pipeline.recorder.close(self.config.shutdown_timeout_s)
        if all(not t.is_alive() for t in self._threads):
            self._close_sockets()
        self.gc_pauses.remove()
        if self.config.freeze_gc:
            thaw()
        logger.info("stopped. %s", format_line(self.status()))
        if self._errors:
            raise self._errors[0]

    def _join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("%s did not finish within %.0f s; closing anyway", thread.name, timeout)

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

    # --- introspection and commands ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Telemetry snapshot: counters, stage timings and rates, latency percentiles, queues, model."""
        recorder, assembler = self.pipeline.recorder, self.pipeline.assembler
        gauge = self.telemetry.gauge
        gauge("queues", {
            "input": len(self.queue),
            "record": 0 if recorder is None else recorder.depth,
            "pending_window": 0 if assembler is None else assembler.pending,
        })  # fmt: skip
        gauge("subscriptions", self.pipeline.subscriptions.count)
        gauge("gc", self.gc_pauses.snapshot())
        gauge("model_swap", self.slot.swap_state())
        if recorder is not None:
            gauge("recordings", [str(p) for p in recorder.files])
        gauge("control_errors", self.control.errors.snapshot())
        if self.pipeline.live_checks is not None:
            gauge("noise_check", self.pipeline.live_checks.status())
        if self.fanout is not None:
            gauge("workers", self.fanout.snapshot())
        gauge("memory", {"budget_bytes": self.budget.total, "input_queue_bytes": self.queue.nbytes,
                         "input_queue_limit_bytes": self.budget.queue_bytes,
                         **({} if self.fanout is None else self.fanout.memory())})  # fmt: skip
        return self.telemetry.snapshot()

    def wait_for_subscribers(self, n: int, timeout: float, *, exact: bool = False) -> bool:
        """Wait until at least ``n`` (``exact``: exactly ``n``) subscriptions are on the output; False on timeout."""
        return self.pipeline.subscriptions.wait(n, timeout, exact=exact)

    def load_model(self, path: str | Path) -> None:
        """Load ``path`` in the background and switch to it between two frames (a model with another frame
        count ends the current run first). Progress shows in ``status()["model_swap"]``. Refused with worker
        processes (``workers`` > 1)."""
        if self.fanout is not None:
            raise ConfigError(
                f"model swap to {path}: not supported with --workers {self.config.workers} (each worker holds its "
                "own engine); restart the service with the new model, or serve with --workers 1 to swap live"
            )
        self.slot.load(path)
