"""An inference worker of the live service's fan-out (``emlive serve --workers N``): one process, one engine.

``python -m emlive.stream.inferworker --connect ENDPOINT --model PATH --index K [--estimate blind|posterior]`` loads
the model itself from its path (:class:`emlive.export.runtime.Denoiser`: no torch is imported for an ONNX model or a
TensorRT engine; ``--estimate``: the service's ``--estimate``, echoed in the ``hello``),
connects a DEALER socket to the service's ROUTER (:mod:`emlive.stream.fanout`) and says ``hello`` with its model
info; then it answers each ``job`` with the denoised center frame (``result``) or a one-line ``error``, in the order
the jobs came. A second DEALER, used only by a heartbeat thread, sends ``beat`` every ``--heartbeat`` seconds, also
while an inference runs, so the service tells a hung worker from a busy one. The worker exits on ``stop``, on
SIGTERM, or when its parent process is gone.

The worker keeps the frames of the current run in the engine's float32 ring
(:class:`emlive.export.runtime.FrameStream`): frame i in plane i mod N, each pushed once. A job carries the window's
indices and only the frames the dispatcher knows the ring lacks (it mirrors the ring: :class:`RingMirror`), so a
worker that gets consecutive windows receives about one frame per job, not N.

The wire (multipart messages; the ROUTER adds or strips the DEALER's identity; headers are compact JSON,
:func:`emlive.core.protocol.encode_json`), documented in docs/protocol.md "Inference workers":

* service -> worker: ``[b"job", header, frame...]`` with header ``{"ticket", "run", "shape", "dtype",
  "indices", "push"}`` (``push``: the indices of the frames that follow, raw pixels in ``dtype``), plus, for a
  variance-head model, ``"estimate"`` (the acquisition's, as the service's noise check decides,
  :mod:`emlive.stream.livecheck`), ``"sample"`` (true: the raw center frame follows last, to be measured) and
  ``"uncertainty"`` (true: the result carries the std map too); ``[b"warm", {"shape", "dtype"}]``; ``[b"stop"]``.
* worker -> service: ``[b"hello", {"index", "pid", "model"}]`` (``model`` also says ``channels``, ``estimate``,
  ``noise_model``); ``[b"result", {"ticket", "infer_s"}, float32 pixels]`` (a sampled job also carries
  ``"check"``: :class:`emlive.core.posterior.CheckParts` as JSON; an ``uncertainty`` job a second part, the
  float32 std map of the frame); ``[b"error", {"ticket", "error"}]``; ``[b"beat", {"index"}]``.

Every field read from the wire is checked (a bad job gets an ``error`` reply naming the field; the service checks
the worker's replies the same way, :mod:`emlive.stream.fanout`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zmq

from emlive.core.errors import EmliveError
from emlive.core.pixeltypes import check_pixel_type
from emlive.core.posterior import Estimate
from emlive.core.protocol import encode_json, parse_json_object
from emlive.stream.livecheck import measure_parts

logger = logging.getLogger("emlive.stream.inferworker")

JOB, WARM, STOP = b"job", b"warm", b"stop"
HELLO, RESULT, ERROR, BEAT = b"hello", b"result", b"error", b"beat"
MAX_SIDE = 65536  # a frame side the worker accepts (the service checked the frame against its budget already)
ESTIMATES = tuple(e.value for e in Estimate)


def identity(index: int, heartbeat: bool = False) -> bytes:
    """The DEALER identity of worker ``index`` (its heartbeat socket's when ``heartbeat``)."""
    return f"{'beat' if heartbeat else 'work'}-{index}".encode()


class RingMirror:
    """Which frame each plane of a worker's ring holds, as the dispatcher sees it: (run, index) per residue.

    The worker pushes exactly the frames a job carries, in order, into plane ``index % frames`` and resets its
    ring when the run changes; the dispatcher applies the same rule here, so it sends only what the ring lacks."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.run: int | None = None
        self._held: list[int | None] = [None] * frames

    def missing(self, run: int, indices: Sequence[int | None]) -> list[int]:
        """The distinct frames of a window that the ring lacks (in window order)."""
        if run != self.run:
            return list(dict.fromkeys(i for i in indices if i is not None))
        return list(dict.fromkeys(i for i in indices if i is not None and self._held[i % self.frames] != i))

    def held(self, run: int, indices: Sequence[int | None]) -> int:
        """How many of the window's distinct frames the ring holds (0 for another run)."""
        distinct = {i for i in indices if i is not None}
        return len(distinct) - len(self.missing(run, indices))

    def pushed(self, run: int, indices: Sequence[int]) -> None:
        """The worker received these frames of ``run`` (after a reset when the run changed)."""
        if run != self.run:
            self.run, self._held = run, [None] * self.frames
        for i in indices:
            self._held[i % self.frames] = i


def frame_from(buffer: Any, shape: tuple[int, int], dtype: np.dtype[Any], what: str) -> np.ndarray:
    """An (H, W) array over a received buffer; EmliveError naming ``what`` when its size does not match."""
    view = memoryview(buffer)
    expected = shape[0] * shape[1] * dtype.itemsize
    if view.nbytes != expected:
        raise EmliveError(f"{what}: {view.nbytes} bytes for a {shape[0]}x{shape[1]} {dtype} frame ({expected} bytes)")
    return np.frombuffer(view, dtype=dtype).reshape(shape)


def parse_frame_spec(header: dict[str, Any]) -> tuple[tuple[int, int], np.dtype[Any]]:
    """The (shape, dtype) of a job or warm-up header, checked: two sides 1..65536, a pixel type emlive reads."""
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and 0 < s <= MAX_SIDE
                                                               for s in shape)):  # fmt: skip
        raise EmliveError(f"shape {shape!r}: a job needs [height, width], each 1..{MAX_SIDE}")
    try:
        dtype = np.dtype(str(header.get("dtype")))
    except TypeError:
        raise EmliveError(f"dtype {header.get('dtype')!r}: not a numpy type string such as '<u2'") from None
    check_pixel_type(dtype, "job frames")
    return (shape[0], shape[1]), dtype


def wire_flag(header: dict[str, Any], key: str) -> bool:
    """A true/false field of a worker message (absent: false); EmliveError naming the field otherwise."""
    value = header.get(key, False)
    if not isinstance(value, bool):
        raise EmliveError(f"{key} {str(value)[:40]!r}: a job's {key!r} is true or false")
    return value


def wire_estimate(value: Any) -> Estimate:
    """An estimate name from the wire; EmliveError naming the choices otherwise."""
    if not isinstance(value, str) or value not in ESTIMATES:
        raise EmliveError(f"estimate {str(value)[:40]!r}: use one of {', '.join(ESTIMATES)}")
    return Estimate(value)


class InferWorker:
    """The worker loop (see the module docstring): one denoiser, one ring per run, jobs answered in order."""

    def __init__(self, denoiser: Any, sock: zmq.Socket[Any]) -> None:
        self.den, self.sock = denoiser, sock
        self._stream: Any = None
        self._key: tuple[Any, ...] = ()
        self._run: int | None = None

    def serve(self, parent: int) -> None:
        """Answer messages until ``stop`` or until the parent process is gone."""
        while True:
            if not self.sock.poll(1000, zmq.POLLIN):
                if os.getppid() != parent:
                    logger.warning("the service (pid %d) is gone: exiting", parent)
                    return
                continue
            parts = self.sock.recv_multipart(copy=False)
            kind = parts[0].bytes
            if kind == STOP:
                return
            header = parse_json_object(parts[1].buffer, "worker message header") if len(parts) > 1 else {}
            if kind == JOB:
                self.sock.send_multipart(self.job(header, parts[2:]), copy=False)
            elif kind == WARM:
                self.warm(header)
            else:
                logger.warning("unknown message %r ignored", kind[:16])

    def job(self, header: dict[str, Any], buffers: Sequence[Any]) -> list[Any]:
        """Push the job's frames into the ring, denoise its window: the ``result`` (or ``error``) reply."""
        ticket = header.get("ticket")
        try:
            shape, dtype = parse_frame_spec(header)
            sample = wire_flag(header, "sample")  # the raw center frame comes last, for the noise check
            want_std = wire_flag(header, "uncertainty")  # the std map goes back after the frame
            stream = self._stream_for(shape, dtype, int(header["run"]))
            self._push(stream, header, buffers, sample, (shape, dtype))
            if "estimate" in header:  # the acquisition's, as the service's noise check decides
                stream.estimate = self._estimate(header["estimate"])
            start = time.perf_counter()
            reply: dict[str, Any] = {"ticket": ticket}
            if sample or want_std:
                found = stream.denoise(header["indices"], uncertainty=True)
                if sample:
                    raw = frame_from(buffers[-1].buffer, shape, dtype, "the center frame")
                    reply["check"] = measure_parts(found.prior_mean, found.prior_std, raw, self.den.noise).to_json()
                planes = [found.mean, found.std] if want_std else [found.mean]
            else:
                planes = [stream.denoise(header["indices"])]
            out = [np.ascontiguousarray(plane, dtype=np.float32) for plane in planes]
            infer_s = time.perf_counter() - start
        except (EmliveError, KeyError, ValueError, TypeError) as exc:
            return [ERROR, encode_json({"ticket": ticket, "error": f"{type(exc).__name__}: {exc}"})]
        return [RESULT, encode_json({**reply, "infer_s": infer_s}), *out]

    def _estimate(self, value: Any) -> Estimate:
        """A job's estimate: the model's own, or the blind estimate instead of its posterior (the noise check's
        fall-back); a posterior the worker's model was not loaded for is refused (its ring keeps no raw frames)."""
        estimate = wire_estimate(value)
        if estimate is Estimate.posterior and self.den.estimate is not Estimate.posterior:
            raise EmliveError(f"estimate posterior: this worker serves the {self.den.estimate.value} estimate")
        return estimate

    @staticmethod
    def _push(
        stream: Any, header: dict[str, Any], buffers: Sequence[Any], sample: bool, spec: tuple[Any, np.dtype[Any]]
    ) -> None:
        """Push the frames the job carries (``push``: their indices, one buffer each; with ``sample`` the raw
        center frame follows them) into the ring."""
        push = [int(i) for i in header["push"]]
        if len(push) + sample != len(buffers):
            raise EmliveError(f"job {header.get('ticket')}: {len(push)} frame indices for {len(buffers)} frames")
        for idx, buf in zip(push, buffers[: len(push)], strict=True):
            stream.push(frame_from(buf.buffer, *spec, f"frame {idx}"), idx)

    def _stream_for(self, shape: tuple[int, int], dtype: np.dtype[Any], run: int) -> Any:
        """The ring for this frame size (a new one for a new size or type; reset for a new run)."""
        key = (shape, dtype)
        if self._stream is None or key != self._key:
            self._stream, self._key, self._run = self.den.stream(shape, dtype), key, run
        elif run != self._run:
            self._stream.reset()
            self._run = run
        return self._stream

    def warm(self, header: dict[str, Any]) -> None:
        """Run the model once on a blank window of that size (the backend's first-run set-up, off the stream)."""
        try:
            shape, dtype = parse_frame_spec(header)
            start = time.perf_counter()
            self.den.denoise_window(np.zeros((self.den.frames, *shape), dtype=dtype))
        except EmliveError as exc:
            logger.info("warm-up skipped: %s", exc)
            return
        logger.info("warmed up for %dx%d %s in %.0f ms", *shape, dtype, (time.perf_counter() - start) * 1e3)


def _beat(ctx: zmq.Context[Any], endpoint: str, index: int, every_s: float, stop: threading.Event) -> None:
    """Send ``beat`` every ``every_s`` seconds on a socket of its own (the main socket belongs to the loop)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity(index, heartbeat=True))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.connect(endpoint)
    beat = encode_json({"index": index})
    try:
        while not stop.wait(every_s):
            with contextlib.suppress(zmq.Again):  # the service is not reading: it notices the silence
                sock.send_multipart([BEAT, beat], flags=zmq.NOBLOCK)
    finally:
        sock.close()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emlive.stream.inferworker", description=__doc__.split("\n")[0])
    parser.add_argument("--connect", required=True, help="the service's worker endpoint (ipc:// or tcp://127.0.0.1)")
    parser.add_argument("--model", type=Path, required=True, help="the model file (.onnx, .engine, .pt, .ckpt)")
    parser.add_argument("--index", type=int, required=True, help="this worker's number (0..N-1)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--estimate", choices=ESTIMATES, default=None, help="blind or posterior (default: the model's)")
    parser.add_argument("--heartbeat", type=float, default=0.5, help="seconds between heartbeats")
    parser.add_argument("--parent", type=int, default=None, help="the service's pid (default: the parent's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model, connect, say hello, answer jobs until stopped. Returns the exit status."""
    from emlive.core.logs import setup_logging
    from emlive.export.runtime import Denoiser
    from emlive.stream.modelslot import model_info

    args = _parse(argv)
    setup_logging()
    parent = args.parent or os.getppid()
    try:
        den = Denoiser.load(args.model, args.backend, threads=args.threads, tile=args.tile, spin=False,
                            estimate=args.estimate)  # fmt: skip
    except EmliveError as exc:  # a model that cannot give the estimate asked, a missing file: one line, exit 2
        logger.error("inference worker %d: %s", args.index, exc)
        return 2
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity(args.index))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.connect)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(ctx, args.connect, args.index, args.heartbeat, stop), daemon=True)
    beat.start()
    try:
        torch = "torch" in sys.modules  # False for ONNX/TensorRT models once the runtime is torch-free
        model = {
            **model_info(cast(Any, den), args.model),
            "torch_imported": torch,
            "channels": den.channels,
            "estimate": den.estimate.value,
            "noise_model": den.noise is not None,
        }  # (the live noise check)
        hello = {"index": args.index, "pid": os.getpid(), "model": model}
        sock.send_multipart([HELLO, encode_json(hello)])
        logger.info("worker %d (pid %d) serving %s on %s", args.index, os.getpid(), args.model, den.device)
        InferWorker(den, sock).serve(parent)
    finally:
        stop.set()
        beat.join(2 * args.heartbeat + 1)
        sock.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
