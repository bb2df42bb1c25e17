"""Fan-out of the live service (``emlive serve --workers N``, N >= 2): window jobs to N inference worker processes,
denoised frames merged back in order.

One job: run the pipeline's window jobs on N engines and hand the results, in order, to the pipeline's publish
step. The pipeline asks this object instead of running a job itself (its ``fanout`` seam); N = 1 never builds one.

    pipeline thread                          ROUTER (ipc, private folder)           worker processes
    submit(job) ──► dispatch: the free worker ──── job: indices + missing frames ───► inferworker (own engine,
                    holding most of the window                                        own float32 ring)
    pump()     ◄── reorder buffer by ticket ◄─── result: ticket + float32 frame ────
                    │                               (+ its float32 std map, --uncertainty)
                    └─► publish(job, frame, std) in ticket order (the pipeline's one publish path)

* **Credit**: a worker holds at most ``credit`` jobs (lossless: 2, so it never waits for the next; live: 1, so a
  frame waits for a free engine, never in a worker's queue). Nothing is queued beyond that: in lossless mode
  :meth:`FanOut.submit` blocks (answering results meanwhile) until a worker has credit, which holds the pipeline
  back and, through the bounded input queue, the detector (back-pressure, as with one engine). In live mode the
  newest window waits for the next free worker and older waiting ones are counted ``skipped``
  (:func:`~emlive.stream.window.live_selection`).
* **Order**: each dispatched job gets the next ticket; results are published strictly in ticket order (at most
  workers x credit jobs are in flight; the results waiting behind a slower one are bounded in bytes, below).
  Events (``start``/``end``) and closing a recording wait until every job before them is published
  (:meth:`FanOut.drain`).
* **Memory**: the results in flight and waiting for their turn are bounded in bytes too (``flight_bytes``; the
  service gives them the working half of its memory budget, :mod:`emlive.stream.budget`, whose model buffers live
  in the workers here): a job is dispatched only when its result (the frame, and its std map with
  ``uncertainty``: twice the bytes) fits beside those held, except the job next in order (so order never stalls).
* **Estimate and uncertainty**: the workers load the model for the service's ``--estimate`` (checked in their
  ``hello``); a variance-head model's jobs carry the acquisition's estimate as the service's noise check decides
  (:mod:`emlive.stream.livecheck`: the workers measure, the service decides), and with ``uncertainty`` each
  result carries the std map, published after its frame as with one engine.
* **Bytes**: a job carries the window's indices and only the frames the worker's ring lacks
  (:class:`~emlive.stream.inferworker.RingMirror`); the dispatcher prefers the free worker that holds most of the
  window. Each worker normalises only the frames it is sent; the output is bit-identical to one engine, since
  every engine runs the same model on the same float32 ring contents.
* **Failures**: a worker whose process exits, or that sends nothing (not even its heartbeat) for
  ``timeout_s``, is lost: logged as an error, counted (``worker_lost``), shown in ``status()["workers"]`` and
  killed. Its in-flight jobs are sent again to the others (lossless; counted ``redispatched``) or counted
  ``skipped`` (live). The service goes on while one worker is left; when none is, it stops with an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import zmq

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.posterior import CheckParts, Estimate
from emlive.core.processes import ChildProcesses, describe_exit
from emlive.core.protocol import encode_json, parse_json_object
from emlive.stream.inferworker import (
    ERROR,
    ESTIMATES,
    HELLO,
    JOB,
    RESULT,
    STOP,
    WARM,
    RingMirror,
    frame_from,
    identity,
)
from emlive.stream.livecheck import LiveChecks
from emlive.stream.telemetry import Telemetry
from emlive.stream.window import WindowJob, live_selection

logger = logging.getLogger("emlive.stream.service.fanout")

MAX_WORKERS = 64
MAX_WINDOW = 64  # the most frames a worker's model may say it takes (models take 1..9)
MAX_NAME = 512  # the longest name, backend or device string a worker's hello may carry
# (job, frame, t0, t1, t2, std map or None, the acquisition's estimate or None): Pipeline.publish_result
Publish = Callable[[WindowJob, np.ndarray, float, float, float, np.ndarray | None, Estimate | None], None]


@dataclass
class WorkerSettings:
    """How the workers are started: model, engine, heartbeat and timeouts (``ServiceConfig`` fills it)."""

    model: Path
    workers: int
    backend: str = "auto"
    threads: int | None = None
    tile: int | None = None
    devices: Sequence[str] = ()  # CUDA_VISIBLE_DEVICES of worker k: devices[k % len(devices)]
    heartbeat_s: float = 0.5
    timeout_s: float = 10.0
    startup_s: float = 120.0
    credit: int | None = None  # default: 2 lossless, 1 live
    estimate: str | None = None  # the service's --estimate (None: the model's default)
    uncertainty: bool = False  # each result carries the frame's std map (a variance-head model)
    flight_bytes: int | None = None  # bytes of results in flight and waiting for order (None: credit only)

    def validate(self) -> None:
        if not 2 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers={self.workers}: a fan-out needs 2..{MAX_WORKERS} (1 runs in the service)")
        if self.estimate is not None and self.estimate not in ESTIMATES:
            raise ConfigError(f"estimate {self.estimate!r}: use one of {', '.join(ESTIMATES)}, or None")
        if self.flight_bytes is not None and self.flight_bytes < 1:
            raise ConfigError(f"flight_bytes={self.flight_bytes}: must be >= 1 byte (or None)")
        if not 0.05 <= self.heartbeat_s < self.timeout_s:
            raise ConfigError(
                f"heartbeat {self.heartbeat_s} s, timeout {self.timeout_s} s: the heartbeat must be >= 0.05 s and "
                "shorter than the timeout"
            )
        if self.credit is not None and not 1 <= self.credit <= 16:
            raise ConfigError(f"credit={self.credit}: jobs in flight per worker must be 1..16")


@dataclass
class Worker:
    """One worker process as the dispatcher sees it."""

    index: int
    popen: Any
    ring: RingMirror | None = None
    state: str = "starting"  # starting, ready, lost
    info: dict[str, Any] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    done: int = 0
    frames_sent: int = 0
    error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.popen.pid, "state": self.state, "in_flight": self.in_flight,
                "done": self.done, "frames_sent": self.frames_sent, "error": self.error,
                "torch_imported": self.info.get("torch_imported")}  # fmt: skip


@dataclass
class Flight:
    job: WindowJob
    worker: Worker
    sent: float
    sample: bool = False  # the worker measures this frame for the acquisition's noise check
    estimate: Estimate | None = None  # the acquisition's, as the noise check decided (None: the model's own)


@dataclass
class Result:
    """A job's answer waiting for its turn: the frame and its std map (None: skipped or failed), times."""

    job: WindowJob
    out: np.ndarray | None = None
    std: np.ndarray | None = None
    estimate: Estimate | None = None
    times: tuple[float, float, float] = (0.0, 0.0, 0.0)  # sent, inference started, received (perf_counter)


def checked_model_info(info: Any) -> dict[str, Any]:
    """A worker's ``hello`` model info, every field the service reads bounded; EmliveError naming the field."""
    if not isinstance(info, dict):
        raise EmliveError(f"model info {str(info)[:40]!r}: a JSON object")
    for key in ("name", "backend", "device"):
        if not isinstance(info.get(key), str) or len(info[key]) > MAX_NAME:
            raise EmliveError(f"model {key} {str(info.get(key))[:40]!r}: a string of at most {MAX_NAME} characters")
    checks = {
        "frames": (lambda v: type(v) is int and 1 <= v <= MAX_WINDOW, f"an integer 1..{MAX_WINDOW}"),
        "channels": (lambda v: type(v) is int and v in (1, 2), "1 (a mean head) or 2 (a variance head)"),
        "estimate": (lambda v: v in ESTIMATES, " or ".join(ESTIMATES)),
        "noise_model": (lambda v: isinstance(v, bool), "true or false"),
        "width": (lambda v: v is None or (type(v) is int and 1 <= v <= 1 << 16), "null or an integer 1..65536"),
        "blind_spot": (
            lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)),
            "null or [height, width]",
        ),
    }
    for key, (ok, rule) in checks.items():
        if not ok(info.get(key)):
            raise EmliveError(f"model {key} {str(info.get(key))[:40]!r}: {rule}")
    return info


class RemoteModel:
    """The model slot's view of the model the workers serve (frames, card, backend, device); a warm-up asks every
    worker to warm itself up."""

    def __init__(self, info: dict[str, Any], fanout: FanOut) -> None:
        self.frames = int(info["frames"])
        self.backend = str(info["backend"])
        self.device = f"{fanout.settings.workers} workers x {info['device']}"
        network = SimpleNamespace(width=info.get("width"), blind_spot=tuple(info.get("blind_spot") or ()))
        self.card = SimpleNamespace(name=info["name"], network=network)
        # what the live noise check needs to know (emlive.stream.livecheck): the workers measure, the service decides
        self.channels = int(info.get("channels", 1))
        self.estimate = str(info.get("estimate", "blind"))
        self.has_noise_model = bool(info.get("noise_model", False))
        self._fanout = fanout

    def denoise_window(self, window: np.ndarray) -> np.ndarray:
        self._fanout.warm((window.shape[1], window.shape[2]), window.dtype)
        return np.zeros(window.shape[1:], dtype=np.float32)


class FanOut:
    """Dispatcher and ordered merger (see the module docstring). Used from one thread (the pipeline's) after
    :meth:`start`; :meth:`snapshot` may be called from any thread."""

    def __init__(self, settings: WorkerSettings, telemetry: Telemetry, publish: Publish, *, lossless: bool) -> None:
        settings.validate()
        self.settings, self.telemetry, self._publish, self.lossless = settings, telemetry, publish, lossless
        self.credit = settings.credit or (2 if lossless else 1)
        self.workers: list[Worker] = []
        self._by_identity: dict[bytes, Worker] = {}
        self._children = ChildProcesses("service", grace_s=5.0)
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._folder: str | None = None
        self.endpoint = ""
        self._ticket = 0  # the next ticket to give
        self._next = 0  # the next ticket to publish
        self._flights: dict[int, Flight] = {}
        self._done: dict[int, Result] = {}
        self.peak_bytes = 0  # the most result bytes held at once (status()["memory"])
        self._waiting: deque[tuple[int, WindowJob]] = deque()  # lossless: ticketed jobs waiting for credit
        self._pending: list[WindowJob] = []  # live: the newest window(s) waiting for a free worker
        self._next_check = 0.0
        # the service's per-acquisition noise check and its view of the workers' model (set by the service)
        self.live_checks: LiveChecks | None = None
        self.model: Any = None

    # --- start and stop ----------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Bind, start the workers and wait until each has loaded the model; returns the model info."""
        try:
            self._bind()
            for k in range(self.settings.workers):
                self._spawn(k)
            return self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _bind(self) -> None:
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone worker raises instead of vanishing
        self._sock = sock
        if zmq.has("ipc") and os.name == "posix":
            self._folder = tempfile.mkdtemp(prefix="emlive-workers-")  # mode 0700: only this user can connect
            self.endpoint = f"ipc://{self._folder}/router"
            sock.bind(self.endpoint)
        else:
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"

    def _spawn(self, k: int) -> None:
        s = self.settings
        cmd = [sys.executable, "-m", "emlive.stream.inferworker", "--connect", self.endpoint, "--model",
               str(s.model), "--index", str(k), "--backend", s.backend, "--heartbeat", str(s.heartbeat_s),
               "--parent", str(os.getpid())]  # fmt: skip
        if s.estimate is not None:
            cmd += ["--estimate", s.estimate]
        if s.threads is not None:
            cmd += ["--threads", str(s.threads)]
        if s.tile is not None:
            cmd += ["--tile", str(s.tile)]
        env = dict(os.environ)
        if s.devices:
            env["CUDA_VISIBLE_DEVICES"] = s.devices[k % len(s.devices)]
        popen = self._children.start(f"inference worker {k}", cmd, env=env)
        worker = Worker(k, popen)
        self.workers.append(worker)
        self._by_identity[identity(k)] = self._by_identity[identity(k, heartbeat=True)] = worker

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.startup_s
        while any(w.state == "starting" for w in self.workers):
            if time.monotonic() > deadline:
                late = [w.index for w in self.workers if w.state == "starting"]
                raise ConfigError(
                    f"inference workers {late} did not load the model within {self.settings.startup_s:.0f} s; "
                    "see their log lines above, or raise the startup timeout"
                )
            for w in self.workers:
                code = w.popen.poll()
                if code is not None:
                    raise ConfigError(
                        f"inference worker {w.index} ({self.settings.model}) {describe_exit(code)} before it was "
                        "ready; its error is in the log above"
                    )
            self._receive(0.1)
        first = self._check_models()
        logger.info(
            "%d inference workers ready on %s: %s (%s)",
            len(self.workers), self.endpoint, first["name"], ", ".join(w.info["device"] for w in self.workers),
        )  # fmt: skip
        return first

    def _check_models(self) -> dict[str, Any]:
        """The model info the ready workers agree on (one model, the estimate asked); ConfigError otherwise."""
        bad = [w for w in self.workers if w.state != "ready"]
        if bad:
            raise ConfigError(f"inference worker {bad[0].index} failed at start: {bad[0].error}")
        infos = {(w.info["name"], w.info["frames"], w.info["estimate"]) for w in self.workers}
        if len(infos) != 1:
            raise ConfigError(f"the workers loaded different models {sorted(infos)}; give them one model file")
        first = self.workers[0].info
        asked = self.settings.estimate
        if asked is not None and first["estimate"] != asked:
            raise ConfigError(
                f"the inference workers serve the {first['estimate']} estimate of {first['name']}, not the {asked} "
                "estimate asked; check the model (a variance head and a noise model for posterior)"
            )
        return first

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask every worker to stop, wait ``timeout_s``, stop what remains, close the socket. Idempotent."""
        if self._sock is not None:
            for w in self.workers:
                if w.state == "ready":
                    with contextlib.suppress(zmq.ZMQError):  # gone already: stopped below anyway
                        self._sock.send_multipart([identity(w.index), STOP], flags=zmq.NOBLOCK)
            deadline = time.monotonic() + timeout_s
            while any(w.popen.poll() is None for w in self.workers) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._children.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # --- the pipeline's side ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Jobs in flight or waiting."""
        return bool(self._flights or self._waiting or self._pending or self._done)

    def wait_s(self) -> float:
        """How long the pipeline may wait for input before it must read results again."""
        return 0.002 if self.busy else 0.05

    def submit(self, job: WindowJob) -> None:
        """Hand a window job to a worker. Lossless: returns once a worker took it (results are published
        meanwhile). Live: it waits for a free worker as the newest window (an older waiting one is skipped)."""
        if self.lossless:
            self._waiting.append((self._ticket, job))
            self._ticket += 1
            while self._waiting:
                self.pump(0.0 if self._can_dispatch() else 0.05)
        else:
            kept = live_selection([*self._pending, job])
            skipped = len(self._pending) + 1 - len(kept)
            if skipped:
                self.telemetry.count("skipped", skipped)
            self._pending = kept
            self.pump(0.0)

    def drain(self) -> None:
        """Wait until every submitted job is published (before an event or at the end)."""
        while self.busy:
            self.pump(0.05)

    def pump(self, wait_s: float = 0.0) -> None:
        """Read results (waiting up to ``wait_s`` for the first), watch the workers, dispatch, publish in order."""
        self._receive(wait_s)
        self._check_workers()
        self._dispatch()
        self._publish_ready()

    def warm(self, shape: tuple[int, int], dtype: np.dtype[Any]) -> None:
        """Ask every ready worker to warm up for this frame size (each does it between its jobs)."""
        header = encode_json({"shape": list(shape), "dtype": dtype.str})
        for w in self.workers:
            if w.state == "ready":
                self._send(w, [WARM, header])

    def snapshot(self) -> list[dict[str, Any]]:
        """Each worker's state, pid, jobs in flight and done, frames sent, error (for ``status()``)."""
        return [w.snapshot() for w in list(self.workers)]

    def memory(self) -> dict[str, Any]:
        """The result bytes held now, at most so far, and their bound (for ``status()["memory"]``)."""
        return {"worker_results_bytes": self.held_bytes, "worker_results_peak_bytes": self.peak_bytes,
                "worker_results_limit_bytes": self.settings.flight_bytes}  # fmt: skip

    @property
    def held_bytes(self) -> int:
        """Bytes of the results in flight (as they will arrive) and of those waiting for their turn."""
        flights, done = list(self._flights.values()), list(self._done.values())  # (read from other threads too)
        return sum(self._result_bytes(f.job) for f in flights) + sum(
            self._result_bytes(r.job) for r in done if r.out is not None
        )

    def _result_bytes(self, job: WindowJob) -> int:
        """A job's result: its float32 frame, and its float32 std map with ``uncertainty``."""
        h, w = job.center.data.shape
        return h * w * 4 * (2 if self.settings.uncertainty else 1)

    # --- dispatch -------------------------------------------------------------------------------------------
    def _free(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "ready" and w.in_flight < self.credit]

    def _next_job(self) -> tuple[int, WindowJob] | None:
        """The job to dispatch next and its ticket (None: none waits)."""
        if self._waiting:
            return self._waiting[0]
        return (self._ticket, self._pending[0]) if self._pending else None

    def _room(self, ticket: int, job: WindowJob) -> bool:
        """Whether the job's result fits beside those held (``flight_bytes``); the next one in order always does."""
        limit = self.settings.flight_bytes
        return limit is None or ticket == self._next or self.held_bytes + self._result_bytes(job) <= limit

    def _can_dispatch(self) -> bool:
        nxt = self._next_job()
        return nxt is not None and bool(self._free()) and self._room(*nxt)

    def _dispatch(self) -> None:
        while self._can_dispatch():
            if self._waiting:
                ticket, job = self._waiting.popleft()
            else:
                job = self._pending.pop(0)
                ticket, self._ticket = self._ticket, self._ticket + 1
            self._send_job(self._choose(self._free(), job), ticket, job)

    @staticmethod
    def _choose(free: list[Worker], job: WindowJob) -> Worker:
        """The free worker whose ring holds most of the window (fewest bytes to send), then the least busy."""
        return max(free, key=lambda w: (w.ring.held(job.run, job.indices) if w.ring else 0, -w.in_flight, -w.index))

    def _send_job(self, worker: Worker, ticket: int, job: WindowJob) -> None:
        assert worker.ring is not None
        push = worker.ring.missing(job.run, job.indices)
        by_index = {rec.index: rec for rec in job.frames if rec is not None}
        data = job.center.data
        header = {"ticket": ticket, "run": job.run, "shape": list(data.shape), "dtype": data.dtype.str,
                  "indices": job.indices, "push": push}  # fmt: skip
        frames = [np.ascontiguousarray(by_index[i].data) for i in push]
        estimate, sample = (None, False) if self.live_checks is None else self.live_checks.plan(self.model, job)
        if estimate is not None:  # the acquisition's, as the service's noise check decides (emlive.stream.livecheck)
            header["estimate"], header["sample"] = estimate.value, sample
        if self.settings.uncertainty:
            header["uncertainty"] = True
        if sample:  # measured for the check: the raw center frame goes last
            frames.append(np.ascontiguousarray(data))
        if not self._send(worker, [JOB, encode_json(header), *frames]):  # that worker is lost now
            if self.lossless:
                self._waiting.appendleft((ticket, job))
            else:
                self._skip(ticket, job)
            return
        worker.ring.pushed(job.run, push)
        worker.in_flight += 1
        worker.frames_sent += len(push)
        self.telemetry.count("worker_frames_sent", len(push))
        self._flights[ticket] = Flight(job, worker, time.perf_counter(), sample, estimate)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def _skip(self, ticket: int, job: WindowJob) -> None:
        """Live mode: a job whose worker was lost is counted ``skipped``; its turn passes without a frame."""
        self.telemetry.count("skipped")
        self._done[ticket] = Result(job)

    def _send(self, worker: Worker, parts: list[Any]) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([identity(worker.index), *parts], copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: its socket is gone (ROUTER_MANDATORY)
            self._lost(worker, f"cannot send to it ({exc}){self._exit_of(worker)}")
            return False
        return True

    # --- results ----------------------------------------------------------------------------------------------
    def _receive(self, wait_s: float) -> None:
        assert self._sock is not None
        timeout = int(wait_s * 1e3)
        while self._sock.poll(timeout, zmq.POLLIN):
            timeout = 0
            parts = self._sock.recv_multipart(copy=False)
            worker = self._by_identity.get(parts[0].bytes)
            if worker is None or len(parts) < 3 or worker.state == "lost":
                continue
            worker.last_seen = time.monotonic()
            kind = parts[1].bytes
            try:
                header = parse_json_object(parts[2].buffer, "worker message header")
                if kind == RESULT:
                    self._result(worker, header, parts[3:])
                elif kind == ERROR:
                    self._error(worker, header)
                elif kind == HELLO:
                    self._hello(worker, header)
            except EmliveError as exc:
                self._lost(worker, f"sent a bad {kind[:16]!r} message ({exc})")

    def _hello(self, worker: Worker, header: dict[str, Any]) -> None:
        worker.info = dict(checked_model_info(header.get("model")))
        worker.ring = RingMirror(int(worker.info["frames"]))
        worker.state = "ready"
        logger.info("inference worker %d (pid %s) ready: %s", worker.index, header.get("pid"), worker.info["device"])

    def _flight(self, worker: Worker, header: dict[str, Any]) -> tuple[int, Flight] | None:
        ticket = header.get("ticket")
        if not isinstance(ticket, int):
            raise EmliveError(f"ticket {ticket!r}: a worker's answer names the job's integer ticket")
        flight = self._flights.get(ticket)
        if flight is None or flight.worker is not worker:
            return None  # a job already given to another worker: this answer is late
        del self._flights[ticket]
        worker.in_flight -= 1
        return ticket, flight

    def _result(self, worker: Worker, header: dict[str, Any], parts: Sequence[Any]) -> None:
        found = self._flight(worker, header)
        if found is None:
            return
        ticket, flight = found
        h, w = flight.job.center.data.shape
        want = 2 if self.settings.uncertainty else 1  # the frame, and its std map
        if len(parts) != want:
            raise EmliveError(f"result {ticket} has {len(parts)} pixel parts, not {want}")
        f32 = np.dtype(np.float32)
        out = frame_from(parts[0].buffer, (h, w), f32, f"result {ticket}")
        std = frame_from(parts[1].buffer, (h, w), f32, f"result {ticket}'s std map") if want == 2 else None
        if flight.sample and self.live_checks is not None and "check" in header:
            self.live_checks.add_parts(self.model, flight.job, CheckParts.from_json(header["check"]))
        now = time.perf_counter()
        infer_s = min(max(0.0, _seconds(header.get("infer_s"))), now - flight.sent)
        worker.done += 1
        self._done[ticket] = Result(flight.job, out, std, flight.estimate, (flight.sent, now - infer_s, now))

    def _error(self, worker: Worker, header: dict[str, Any]) -> None:
        found = self._flight(worker, header)
        if found is None:
            return
        ticket, flight = found
        self.telemetry.count("infer_errors")
        center = flight.job.center.header
        logger.error(
            "acquisition %s frame %s: denoising failed in worker %d, frame not published: %s",
            center.acquisition, center.index, worker.index, str(header.get("error"))[:500],
        )  # fmt: skip
        self._done[ticket] = Result(flight.job)

    def _publish_ready(self) -> None:
        while self._next in self._done:
            r = self._done.pop(self._next)
            self._next += 1
            if r.out is not None:
                self._publish(r.job, r.out, *r.times, r.std, r.estimate)

    # --- failures --------------------------------------------------------------------------------------------
    def _check_workers(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 0.1
        for w in self.workers:
            if w.state == "lost":
                continue
            code = w.popen.poll()
            if code is not None:
                self._lost(w, describe_exit(code))
            elif w.state == "ready" and now - w.last_seen > self.settings.timeout_s:
                self._lost(w, f"no heartbeat for {now - w.last_seen:.1f} s (timeout {self.settings.timeout_s:g} s)")

    @staticmethod
    def _exit_of(worker: Worker, wait_s: float = 1.0) -> str:
        """How the process of a worker whose socket vanished ended ("; killed by SIGKILL"), once it is reaped; a
        socket goes before its process has exited, so the status says the cause, not only the symptom."""
        try:
            return f"; {describe_exit(worker.popen.wait(wait_s))}"
        except subprocess.TimeoutExpired:
            return ""

    def _lost(self, worker: Worker, why: str) -> None:
        """A worker is gone: kill it, re-dispatch (lossless) or skip (live) its jobs; fail when none is left."""
        if worker.state == "lost":
            return
        worker.state, worker.error, worker.in_flight = "lost", why, 0
        if worker.popen.poll() is None:
            os.kill(worker.popen.pid, signal.SIGKILL)
        tickets = sorted(t for t, f in self._flights.items() if f.worker is worker)
        self.telemetry.count("worker_lost")
        logger.error(
            "inference worker %d (pid %d) lost: %s; %d job(s) in flight %s", worker.index, worker.popen.pid, why,
            len(tickets), "sent again to the others" if self.lossless else "skipped",
        )  # fmt: skip
        for ticket in reversed(tickets):
            flight = self._flights.pop(ticket)
            if self.lossless:
                self._waiting.appendleft((ticket, flight.job))
                self.telemetry.count("redispatched")
            else:
                self._skip(ticket, flight.job)
        if not any(w.state == "ready" for w in self.workers):
            raise EmliveError(
                f"all {len(self.workers)} inference workers are lost (the last: {why}); restart the service"
            )


def _seconds(value: Any) -> float:
    """A duration from the wire (``infer_s``): a finite number, else 0 (the caller bounds it by the job's time)."""
    if type(value) not in (int, float) or not np.isfinite(value):
        return 0.0
    return float(value)
