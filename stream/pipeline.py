"""The live service's pipeline: decode -> window -> infer -> publish, one batch of queued messages at a time.

One job: turn received messages into published frames. Each message is decoded and validated at the boundary (a
refused one is reported and dropped), raw frames are recorded, the rolling window
(:class:`~emlive.stream.window.WindowAssembler`) turns frames into window jobs, the model slot's current model
denoises them (each frame pushed once into the model's float32 ring, :class:`~emlive.stream.window.ModelWindows`)
and each denoised frame (with ``publish_raw`` the raw one first) goes out on the output XPUB socket and to the
recorder. ``start``/``end`` messages are forwarded. *Live* mode denoises only the newest complete window of a
batch (plus the tail of a run that just ended, :func:`~emlive.stream.window.live_selection`), *lossless* mode
every one. The pipeline also counts the output's subscriptions (:class:`Subscriptions`; it owns that socket).

Per frame the hot path does no logging, builds one header dict and encodes it once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import zmq

from emlive.core.errors import EmliveError
from emlive.core.protocol import Header, Message, ProtocolError, decode, dtype_fields, encode
from emlive.stream.errorlog import ErrorLog
from emlive.stream.inputqueue import InputQueue, Item
from emlive.stream.modelslot import DenoiserLike, ModelSlot
from emlive.stream.recording import Recorder
from emlive.stream.telemetry import Telemetry
from emlive.stream.window import FrameRecord, ModelWindows, WindowAssembler, WindowJob, live_selection

logger = logging.getLogger("emlive.stream.service.pipeline")

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once, not per frame (json.dumps(**kw))
SUBSCRIPTIONS_EVERY_S = 0.01
_RESET_WHAT = {"restart": "index sequence restarted", "shape": "frame shape", "dtype": "pixel type"}


def json_bytes(obj: dict[str, Any]) -> bytes:
    """A header as compact UTF-8 JSON (NaN refused)."""
    return _ENCODER.encode(obj).encode("utf-8")


@dataclass(frozen=True)
class Event:
    """A start/end message to forward on the output."""

    header: Header


@dataclass(frozen=True)
class CloseRecording:
    """Close an acquisition's recording files (after its last frames were denoised)."""

    acquisition: str


Action: TypeAlias = WindowJob | Event | CloseRecording


class Subscriptions:
    """The number of subscriptions on an XPUB socket (from its subscribe/unsubscribe messages), waitable."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def poll(self, sock: zmq.Socket[Any]) -> None:
        """Read the subscription messages waiting on ``sock`` (without blocking)."""
        changed = False
        while sock.poll(0, zmq.POLLIN):
            kind = sock.recv()[:1]
            if kind in (b"\x00", b"\x01"):
                self.count = self.count + 1 if kind == b"\x01" else max(0, self.count - 1)
                changed = True
        if changed:
            with self._cond:
                self._cond.notify_all()
            logger.info("output subscriptions: %d", self.count)

    def wait(self, n: int, timeout: float, *, exact: bool = False) -> bool:
        """Wait until at least ``n`` (``exact``: exactly ``n``) subscriptions; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count == n if exact else self.count >= n, timeout)


class Pipeline:
    """Decodes, windows, denoises and publishes (see the module docstring).

    ``decoder`` replaces emlive/1 decoding (:class:`emlive.stream.dectris.DectrisDecoder`); refused messages are
    counted in the telemetry and logged in ``input_errors`` (:meth:`reject`, which the receiver uses too);
    ``recorder`` gets the raw and denoised frames.
    """

    def __init__(
        self,
        slot: ModelSlot,
        telemetry: Telemetry,
        *,
        lossless: bool,
        publish_raw: bool = False,
        max_frame_bytes: int,
        input_errors: ErrorLog,
        decoder: Any = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.slot, self.telemetry = slot, telemetry
        self.lossless, self._publish_raw, self._max_frame_bytes = lossless, publish_raw, max_frame_bytes
        self.input_errors, self._decoder, self.recorder = input_errors, decoder, recorder
        self.assembler: WindowAssembler | None = None
        self.subscriptions = Subscriptions()
        self._windows = ModelWindows()
        self._out: zmq.Socket[Any] | None = None
        self._seq = 0
        self._next_subscriptions = 0.0
        self._fits: tuple[Any, str | None] = (None, None)  # the last budget check: (key, problem)

    def start(self, out: zmq.Socket[Any]) -> None:
        """Publish on ``out``; the window length is the current model's."""
        if self.slot.denoiser is None:
            raise EmliveError("the pipeline needs a model in its slot before it starts")
        self._out = out
        self.assembler = WindowAssembler(self.slot.denoiser.frames)

    # --- the loop ------------------------------------------------------------------------------------------
    def run(self, queue: InputQueue, stop: threading.Event, receiver_done: threading.Event) -> None:
        """Process batches from ``queue`` until ``stop`` is set, the receiver has finished and the queue is empty;
        then end the current run (its last frames get end-of-run windows)."""
        while True:
            self.slot.maybe_swap(self._before_swap)
            batch = queue.get(0.05)  # everything queued: one lock round trip per batch
            self.poll_subscriptions()
            if batch:
                self.process(batch)
            elif stop.is_set() and receiver_done.is_set() and len(queue) == 0:
                break
            else:
                self.slot.warm_up_when_idle()
        self.finish()

    def process(self, batch: list[Item]) -> None:
        """Decode and handle a batch of received messages, then run its actions (live: the newest window)."""
        actions = [action for parts, recv, wall in batch for action in self._handle(parts, recv, wall)]
        if not self.lossless:
            actions = self._live(actions)
        self.execute(actions)

    def finish(self) -> None:
        """End the current run (flush the window) and read the last subscription changes."""
        if self.assembler is not None:
            self.execute(list(self.assembler.flush(time.perf_counter())))
        self.poll_subscriptions(now=True)

    def poll_subscriptions(self, *, now: bool = False) -> None:
        """Read the output's subscription changes, at most every ``SUBSCRIPTIONS_EVERY_S`` (a poll of the socket
        per batch costs as much as a tenth of a small frame's work); ``now``: at once."""
        clock = time.monotonic()
        if self._out is None or (clock < self._next_subscriptions and not now):
            return
        self._next_subscriptions = clock + SUBSCRIPTIONS_EVERY_S
        self.subscriptions.poll(self._out)

    def _live(self, actions: list[Action]) -> list[Action]:
        """Live mode, to keep up: only the newest window a frame completed is denoised, plus, when a run ended
        after it (an ``end``), that run's last frames. Every other window is skipped and counted (also the tails
        of runs cut short by gaps: they are old by now); start/end messages always go out."""
        jobs = [a for a in actions if isinstance(a, WindowJob)]
        if len(jobs) <= 1:
            return actions
        keep = {id(j) for j in live_selection(jobs)}
        skipped = len(jobs) - len(keep)
        if not skipped:
            return actions
        self.telemetry.count("skipped", skipped)
        return [a for a in actions if not isinstance(a, WindowJob) or id(a) in keep]

    def _before_swap(self, new: DenoiserLike) -> bool:
        """Before the slot switches models: a new window length ends the current run on the old model."""
        if self.assembler is None or new.frames == self.assembler.n_frames:
            return False
        self.execute(list(self.assembler.resize(new.frames, time.perf_counter())))
        self.telemetry.reset("model")
        return True

    # --- decode and window ---------------------------------------------------------------------------------
    def _handle(self, parts: list[Any], received: float, received_wall: float) -> list[Action]:
        start = time.perf_counter()
        try:
            if self._decoder is None:
                msgs = [decode(parts, max_frame_bytes=self._max_frame_bytes, check_finite=True)]
            else:
                msgs = self._decoder.decode(parts)
        except ProtocolError as exc:
            self.reject(exc.reason, str(exc))
            return []
        self.telemetry.stage("decode", time.perf_counter() - start, count="decoded")
        if len(msgs) == 1:
            return self._handle_message(msgs[0], received, received_wall)
        return [action for msg in msgs for action in self._handle_message(msg, received, received_wall)]

    def reject(self, reason: str, message: str) -> None:
        """A message refused at the input boundary: counted per reason, logged once per reason (then summarised)."""
        self.telemetry.reject(reason)
        self.input_errors.record(reason, message)

    def _frame_problem(self, shape: tuple[int, int], itemsize: int) -> str | None:
        """The slot's budget check, remembered for the last size and model (it is the same for every frame)."""
        key = (shape, itemsize, self.slot.denoiser)
        if self._fits[0] != key:
            self._fits = (key, self.slot.frame_problem(shape, itemsize))
        return self._fits[1]

    def _handle_message(self, msg: Message, received: float, received_wall: float) -> list[Action]:
        header = msg.header
        if header.type == "frame":
            data, shape = msg.data, header.shape
            if data is None or shape is None:
                return []
            problem = self._frame_problem(shape, data.dtype.itemsize)
            if problem is not None:
                self.reject("over_budget", f"acquisition {header.acquisition} frame {header.index}: {problem}")
                return []
            return self._handle_frame(FrameRecord(header, data, received, received_wall))
        return self._handle_event(header, received)

    def _handle_event(self, header: Header, received: float) -> list[Action]:
        """A ``start`` or ``end``: ends the current run of that acquisition; forwarded; ``end`` closes its
        recording; a ``start`` announcing a frame size schedules a warm-up for it."""
        assert self.assembler is not None
        actions: list[Action] = []
        if self.assembler.acquisition == header.acquisition:
            actions.extend(self.assembler.flush(received))
            if header.type == "start":
                self.telemetry.reset("start")
        if header.type == "start":
            size = f" ({header.shape[0]}x{header.shape[1]} {header.dtype})" if header.shape and header.dtype else ""
            logger.info("acquisition %s started%s", header.acquisition, size)
            self._announce(header)
        else:
            logger.info("acquisition %s ended", header.acquisition)
        actions.append(Event(header))
        if header.type == "end":
            actions.append(CloseRecording(header.acquisition))
        return actions

    def _announce(self, header: Header) -> None:
        """A ``start`` announced the frame size to come: warm up for it when idle, unless beyond the budget."""
        if header.shape is None or header.dtype is None:
            return
        dtype = header.numpy_dtype
        problem = self.slot.frame_problem(header.shape, dtype.itemsize)
        if problem is not None:
            self.telemetry.count("warmups_refused")
            self.input_errors.record("announced_over_budget", f"acquisition {header.acquisition}: {problem}")
            return
        self.slot.announce(header.shape, dtype)

    def _handle_frame(self, rec: FrameRecord) -> list[Action]:
        assert self.assembler is not None
        if self.recorder is not None:
            self.recorder.submit("raw", rec.header, rec.data)
        self.slot.last_shape = (rec.data.shape, rec.data.dtype)
        previous_acq, previous_last = self.assembler.acquisition, self.assembler.last_index
        jobs, reason = self.assembler.push(rec)  # (its time is in the "window" stage of the job it completes)
        if reason is None:
            return list(jobs)
        self._log_reset(reason, rec, previous_acq, previous_last)
        actions: list[Action] = list(jobs)
        if reason == "acquisition" and previous_acq is not None:
            actions.append(CloseRecording(previous_acq))
        return actions

    def _log_reset(self, reason: str, rec: FrameRecord, previous_acq: str | None, previous_last: int | None) -> None:
        """Count and log why the window was reset (a gap also counts its missing frames)."""
        self.telemetry.reset(reason)
        acq = rec.header.acquisition
        if reason == "gap" and previous_last is not None:
            missing = rec.index - previous_last - 1
            self.telemetry.count("gap_frames", missing)
            logger.warning(
                "acquisition %s: %d frame(s) missing (%d..%d); window reset, the frames before the gap are finished "
                "with end-of-run windows",
                acq, missing, previous_last + 1, rec.index - 1,
            )  # fmt: skip
        elif reason == "acquisition":
            logger.info("new acquisition %s (was %s): window reset", acq, previous_acq)
        elif reason != "gap":
            what = _RESET_WHAT.get(reason, reason)
            logger.warning(
                "acquisition %s frame %d: %s changed (last frame %s); window reset", acq, rec.index, what, previous_last
            )

    # --- infer and publish ---------------------------------------------------------------------------------
    def execute(self, actions: list[Action]) -> None:
        """Run jobs, forward events, close recordings, in order."""
        for action in actions:
            if isinstance(action, WindowJob):
                self._run_job(action)
            elif isinstance(action, Event):
                self._publish_event(action.header)
            elif self.recorder is not None:
                self.recorder.end_acquisition(action.acquisition)

    def _run_job(self, job: WindowJob) -> None:
        denoiser = self.slot.denoiser
        if denoiser is None:
            return
        t0 = time.perf_counter()
        t1 = t0
        try:
            denoise = self._windows.feed(denoiser, job)
            t1 = time.perf_counter()
            out = _checked(denoise(), job.center.data.shape)
        except EmliveError as exc:
            self.telemetry.count("infer_errors")
            center = job.center.header
            logger.error(
                "acquisition %s frame %s: denoising failed, frame not published: %s",
                center.acquisition, center.index, exc,
            )  # fmt: skip
            return
        self._publish(job, out, t0, t1, time.perf_counter())

    def _publish(self, job: WindowJob, out: np.ndarray, t0: float, t1: float, t2: float) -> None:
        """Send the denoised frame (the raw one first, with ``publish_raw``), record it, time it."""
        out, (out_dtype, out_order) = _wire_ready(out)
        self._seq += 1
        center = job.center
        header = {
            **center.header.to_dict(),
            **self.slot.out_extra,
            "window": job.indices,
            "flushed": job.flushed,
            "seq": self._seq,
            "received_at": round(center.received_wall, 6),
            "infer_ms": round((t2 - t1) * 1e3, 3),
        }
        if self._publish_raw:
            header["kind"] = "raw"
            self._send_frame(json_bytes(header), center.data)
        now = time.perf_counter()
        header["dtype"], header["byte_order"], header["kind"] = out_dtype, out_order, "denoised"
        header["latency_ms"] = round((now - job.completed) * 1e3, 3)
        header["age_ms"] = round((now - center.received) * 1e3, 3)
        header["published_at"] = round(time.time(), 6)
        self._send_frame(json_bytes(header), out)
        t3 = time.perf_counter()
        self.telemetry.job(
            window_s=t1 - t0,
            infer_s=t2 - t1,
            publish_s=t3 - now,
            processing_s=t3 - job.completed,
            age_s=t3 - center.received,
            detector_s=max(0.0, time.time() - center.header.timestamp),
        )
        if self.recorder is not None:
            self.recorder.submit("denoised", center.header, out)

    def _publish_event(self, header: Header) -> None:
        extra = self.slot.out_extra
        out = header.replace(
            extra={"kind": "denoised", "model": extra.get("model"), "backend": extra.get("backend"),
                   "device": extra.get("device")}
        )  # fmt: skip
        self._send(encode(out))

    def _send_frame(self, header: bytes, data: np.ndarray) -> None:
        """Send a header and its pixels as one message (a part at a time: no per-part checks of send_multipart;
        once the first part is taken, ZeroMQ takes the rest of the message)."""
        assert self._out is not None
        try:
            self._out.send(header, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.Again:
            self.telemetry.count("publish_dropped")
            return
        self._out.send(cast(Any, data), copy=False)  # (an ndarray is a buffer; the stubs do not say so)

    def _send(self, parts: list[Any]) -> None:
        assert self._out is not None
        try:
            self._out.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.telemetry.count("publish_dropped")


def _checked(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``out`` when it has the center frame's shape; ProtocolError (the model does not fit) otherwise."""
    if out.shape != shape:
        raise ProtocolError(
            f"the model returned shape {out.shape} for a {shape} frame; the model does not fit", "model_output"
        )
    return out


def _wire_ready(out: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """``out`` as the wire carries it (float32 when its type has no wire name; C order) and its dtype fields."""
    try:
        fields = dtype_fields(out.dtype)
    except ProtocolError:  # a type the wire does not carry
        out = out.astype(np.float32)
        fields = dtype_fields(out.dtype)
    if not out.flags.c_contiguous:
        out = np.ascontiguousarray(out)
    return out, fields
