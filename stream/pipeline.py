"""The live service's pipeline: decode -> window -> infer -> publish, one batch of queued messages at a time.

One job: turn received messages into published frames. Each message is decoded and validated at the boundary (a
refused one is reported and dropped), raw frames are recorded, the rolling window
(:class:`~emlive.stream.window.WindowAssembler`) turns frames into window jobs, the model slot's current model
denoises them (each frame pushed once into the model's float32 ring, :class:`~emlive.stream.window.ModelWindows`)
and each denoised frame (with ``publish_raw`` the raw one first; with ``uncertainty`` its std map after it, a
frame message of kind ``uncertainty``, see :meth:`Pipeline._uncertainty_header`) goes out on the output XPUB
socket and to the recorder. ``start``/``end`` messages are forwarded. *Live* mode denoises only the newest
complete window of a batch (plus the tail of a run that just ended, :func:`~emlive.stream.window.live_selection`),
*lossless* mode every one. The pipeline also counts the output's subscriptions (:class:`Subscriptions`; it owns
that socket).

Per frame the hot path does no logging, builds one header dict and encodes it once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import zmq

from emlive.core.errors import EmliveError
from emlive.core.protocol import Header, HeaderCache, Message, ProtocolError, decode, dtype_fields, encode
from emlive.stream.errorlog import ErrorLog
from emlive.stream.headerjson import HeaderJson
from emlive.stream.inputqueue import InputQueue, Item
from emlive.stream.livecheck import LiveChecks
from emlive.stream.modelslot import DenoiserLike, ModelSlot
from emlive.stream.recording import Recorder
from emlive.stream.telemetry import Telemetry
from emlive.stream.window import FrameRecord, ModelWindows, WindowAssembler, WindowJob, live_selection

if TYPE_CHECKING:
    from emlive.stream.fanout import FanOut

logger = logging.getLogger("emlive.stream.service.pipeline")

_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)  # (an enum operation per frame otherwise)
# a published frame's header fields that change from frame to frame, in the order _header writes the last eight
_PUBLISHED = ("timestamp", "index", "window", "flushed", "seq", "received_at", "infer_ms", "latency_ms", "age_ms",
              "published_at")  # fmt: skip
# the published fields written rounded, to these decimals (times in ms to the microsecond, wall times to the us)
_DECIMALS = {"received_at": 6, "infer_ms": 3, "latency_ms": 3, "age_ms": 3, "published_at": 6}
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
        uncertainty: bool = False,
    ) -> None:
        self.slot, self.telemetry = slot, telemetry
        self._uncertainty = uncertainty  # publish the std map of each output (models with a variance head)
        self.lossless, self._publish_raw, self._max_frame_bytes = lossless, publish_raw, max_frame_bytes
        self.input_errors, self._decoder, self.recorder = input_errors, decoder, recorder
        self.assembler: WindowAssembler | None = None
        self.subscriptions = Subscriptions()
        self._windows = ModelWindows()
        self._out: zmq.Socket[Any] | None = None
        self._seq = 0
        self._next_subscriptions = 0.0
        self._fits: tuple[Any, str | None] = (None, None)  # the last budget check: (key, problem)
        self._headers = HeaderCache()  # repeated frame headers are checked only where they differ
        self._base: tuple[Any, dict[str, Any]] = (None, {})  # the output header's repeated fields (_header_base)
        self._template: tuple[Any, HeaderJson | None] = (None, None)  # the denoised header's JSON template
        self.fanout: FanOut | None = None  # --workers N: jobs go to worker processes (emlive.stream.fanout)
        self.live_checks: LiveChecks | None = None  # the per-acquisition noise check (set by the service)
        self._estimate: Any = None  # the estimate of the last frame denoised here (None: the model's own)

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
            batch = queue.get(0.05 if self.fanout is None else self.fanout.wait_s())  # one lock round trip
            if self.fanout is not None:
                self.fanout.pump()  # results of the workers, published in order
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
        if self.fanout is not None:
            self.fanout.drain()
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
                msgs = [decode(parts, max_frame_bytes=self._max_frame_bytes, check_finite=True, cache=self._headers)]
            else:
                msgs = self._decoder.decode(parts)
        except ProtocolError as exc:
            self.reject(exc.reason, str(exc))
            return []
        end = time.perf_counter()
        self.telemetry.stage("decode", end - start, count="decoded", now=end)
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
                self._run_job(action) if self.fanout is None else self.fanout.submit(action)
                continue
            if self.fanout is not None:
                self.fanout.drain()  # an event or a closed recording follows every frame before it
            if isinstance(action, Event):
                self._publish_event(action.header)
            elif self.recorder is not None:
                self.recorder.end_acquisition(action.acquisition)

    def _run_job(self, job: WindowJob) -> None:
        denoiser = self.slot.denoiser
        if denoiser is None:
            return
        t0 = time.perf_counter()
        t1 = t0
        std: np.ndarray | None = None
        want = self._uncertainty and getattr(denoiser, "channels", 1) > 1
        estimate, sample = (None, False) if self.live_checks is None else self.live_checks.plan(denoiser, job)
        self._estimate = estimate  # this acquisition's (emlive.stream.livecheck); None: the model's own
        try:
            denoise = self._windows.feed(denoiser, job, uncertainty=want or sample, estimate=estimate)
            t1 = time.perf_counter()
            found = denoise()
            if sample:  # a Denoised: its prior goes to the acquisition's noise check
                found = self.live_checks.observe(denoiser, job, found, keep=want)  # type: ignore[union-attr]
            if want:  # a Denoised (emlive.export.estimates): the frame and its std
                found, std = found.mean, _checked(found.std, job.center.data.shape)
            out = _checked(found, job.center.data.shape)
        except EmliveError as exc:
            self.telemetry.count("infer_errors")
            center = job.center.header
            logger.error(
                "acquisition %s frame %s: denoising failed, frame not published: %s",
                center.acquisition, center.index, exc,
            )  # fmt: skip
            return
        self._publish(job, out, t0, t1, time.perf_counter(), std)

    def publish_result(
        self,
        job: WindowJob,
        out: np.ndarray,
        t0: float,
        t1: float,
        t2: float,
        std: np.ndarray | None = None,
        estimate: Any = None,
    ) -> None:
        """Publish a frame denoised elsewhere (the fan-out's workers), in order, with its ``std`` map and the
        ``estimate`` it was denoised with (None: the model's own): the same path as a local job."""
        self._estimate = estimate
        self._publish(job, out, t0, t1, t2, std)

    def _publish(
        self, job: WindowJob, out: np.ndarray, t0: float, t1: float, t2: float, std: np.ndarray | None = None
    ) -> None:
        """Send the denoised frame (the raw one first, with ``publish_raw``; its ``std`` map after it, when given),
        record it, time it."""
        out, fields = _wire_ready(out)
        self._seq += 1
        center = job.center
        common = (job.indices, job.flushed, self._seq, center.received_wall, (t2 - t1) * 1e3)  # (_DECIMALS)
        if self._publish_raw:
            self._send_frame(json_bytes(self._header(job, common)), center.data)
        now = time.perf_counter()
        wall = time.time()
        times = ((now - job.completed) * 1e3, (now - center.received) * 1e3, wall)
        self._send_frame(self._denoised_header(job, common, fields, times), out)
        if std is not None:
            self._send_frame(self._uncertainty_header(job, common, times), np.ascontiguousarray(std, np.float32))
        t3 = time.perf_counter()
        self.telemetry.job(
            window_s=t1 - t0,
            infer_s=t2 - t1,
            publish_s=t3 - now,
            processing_s=t3 - job.completed,
            age_s=t3 - center.received,
            detector_s=max(0.0, wall - center.header.timestamp),
            now=t3,
        )
        if self.recorder is not None:
            self.recorder.submit("denoised", center.header, out)
            if std is not None:  # the map as published (float32), beside the denoised recording
                self.recorder.submit("uncertainty", center.header, np.ascontiguousarray(std, np.float32))

    def _header(
        self, job: WindowJob, common: tuple[Any, ...], fields: tuple[str, str] | None = None, times: Any = ()
    ) -> dict[str, Any]:
        """The header of the raw frame (``fields`` None) or of the denoised one (its dtype fields and ``times``):
        the center's header, the model, then the published fields (:data:`_PUBLISHED`, rounded as
        :data:`_DECIMALS` says) in this order."""
        header = self._header_base(job.center.header)
        header.update(zip(_PUBLISHED[2:7], common, strict=True))
        if fields is None:
            header["kind"] = "raw"
        else:
            header["dtype"], header["byte_order"], header["kind"] = *fields, "denoised"
            header.update(zip(_PUBLISHED[7:], times, strict=True))
        for key, digits in _DECIMALS.items():
            if key in header:
                header[key] = round(header[key], digits)
        return header

    def _denoised_header(
        self, job: WindowJob, common: tuple[Any, ...], fields: tuple[str, str], times: tuple[Any, ...]
    ) -> bytes:
        """The denoised frame's header as JSON: for a frame without extra keys, from the template of its stream
        (:class:`~emlive.stream.headerjson.HeaderJson`: the same bytes, a third of the work)."""
        h = job.center.header
        if h.extra:
            return json_bytes(self._header(job, common, fields, times))
        key = (h.acquisition, h.shape, h.dtype, h.byte_order, h.pixel_size_nm, self.slot.out_extra, fields)
        if key != self._template[0]:
            example = self._header(job, common, fields, times)
            try:
                self._template = (key, HeaderJson(example, _PUBLISHED, _DECIMALS))
            except ValueError:  # a fixed field holds a template mark: this stream's headers go the dict way
                self._template = (key, None)
        template = self._template[1]
        if template is None:
            return json_bytes(self._header(job, common, fields, times))
        return template.encode((h.timestamp, h.index, *common, *times))

    def _uncertainty_header(self, job: WindowJob, common: tuple[Any, ...], times: tuple[Any, ...]) -> bytes:
        """The header of a denoised frame's std map: the denoised frame's (same acquisition, index, window, times),
        ``kind: "uncertainty"``, float32, and what the values are: ``units`` (the input's, detector counts),
        ``quantity`` (posterior_std, or prior_std for the blind estimate) and ``estimate`` (of the denoised frame)."""
        header = self._header(job, common, ("float32", "<"), times)
        estimate = str(self._estimate or getattr(self.slot.denoiser, "estimate", "posterior"))
        header["kind"] = "uncertainty"
        header["units"] = "counts (the input's units): one standard deviation of the denoised value"
        header["quantity"] = "posterior_std" if estimate == "posterior" else "prior_std"
        header["estimate"] = estimate
        return json_bytes(header)

    def _header_base(self, header: Header) -> dict[str, Any]:
        """``{**header.to_dict(), **out_extra}``: for a frame without extra keys, a copy of the last one made, with
        this frame's index and timestamp (the other fields repeat from one frame of a stream to the next)."""
        if header.extra:
            return {**header.to_dict(), **self.slot.out_extra}
        key = (header.acquisition, header.shape, header.dtype, header.byte_order, header.pixel_size_nm,
               self.slot.out_extra)  # fmt: skip
        if key != self._base[0]:
            self._base = (key, {**header.to_dict(), **self.slot.out_extra})
        base = self._base[1].copy()
        base["timestamp"], base["index"] = header.timestamp, header.index
        return base

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
            self._out.send(header, _MORE_NOBLOCK)
        except zmq.Again:
            self.telemetry.count("publish_dropped")
            return
        self._out.send(cast(Any, received_frame(data) or data), copy=False)  # (an ndarray is a buffer too)

    def _send(self, parts: list[Any]) -> None:
        assert self._out is not None
        try:
            self._out.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.telemetry.count("publish_dropped")


def received_frame(data: np.ndarray) -> zmq.Frame | None:
    """The received ZeroMQ frame whose bytes ``data`` is, all of them in order and read-only (a decoded frame's
    pixels, :func:`emlive.core.protocol.decode`), else None. Sending that frame shares its bytes (ZeroMQ counts
    references): no copy of the pixels, and none of pyzmq's zero-copy bookkeeping (a GIL-taking thread)."""
    base: Any = data.base  # (numpy keeps the buffer's owner, not the memoryview it was given)
    if not isinstance(base, zmq.Frame):
        return None
    whole = data.nbytes == len(base) and data.flags.c_contiguous
    return base if whole and not data.flags.writeable else None


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
