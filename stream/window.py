"""The rolling window of the live service: which received frames feed the network for which center frame.

A *run* is a stretch of consecutive frames (indices i, i+1, i+2, ...) of one acquisition with one shape and dtype.
Within a run the service reproduces offline denoising exactly: the output of center frame t is computed when
frame t + N//2 arrives, from the window :func:`emlive.core.windows.window_indices` gives for the run so far (the
one definition of training, offline and live windows: at the ends the neighbours are mirrored about the center
frame, never the center itself, and a single-frame run has empty slots, fed as zeros); when the run ends (an
``end`` message, a reset, a shutdown) its last N//2 frames are computed at once. A window never mixes two runs:
a new acquisition id, a gap or a step back in the indices, or a change of shape or dtype ends the old run
(flushing it) and starts a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from emlive.core.errors import ConfigError
from emlive.core.protocol import Header
from emlive.core.windows import window_indices


@dataclass(frozen=True)
class FrameRecord:
    """A received, validated frame and when it arrived (``perf_counter`` and epoch seconds)."""

    header: Header
    data: np.ndarray
    received: float
    received_wall: float
    index: int = field(init=False)  # the header's index (read many times per frame: kept, not recomputed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", int(self.header.index or 0))


@dataclass(frozen=True)
class WindowJob:
    """One inference to run: the center frame and the window's frames in network order.

    ``completed`` is when the last frame the window needed arrived (``perf_counter``): the start of the
    processing latency. ``flushed`` marks windows completed at the run's end. An empty slot of ``frames`` is
    None (a single-frame run, :func:`emlive.core.windows.window_indices`): it is fed to the network as zeros.
    """

    center: FrameRecord
    frames: tuple[FrameRecord | None, ...]
    completed: float
    flushed: bool
    run: int = 0
    indices: list[int | None] = field(default_factory=list)  # each slot's frame index (None: empty); [] to compute

    def __post_init__(self) -> None:
        if not self.indices:
            object.__setattr__(self, "indices", [None if f is None else f.index for f in self.frames])

    def stack(self) -> np.ndarray:
        """The (N, H, W) window in the frames' dtype (one copy); empty slots are zeros (z-scored to 0)."""
        center = self.center.data
        out = np.empty((len(self.frames), *center.shape), dtype=center.dtype)
        _fill(out, self.frames)
        return out


def _fill(out: np.ndarray, frames: tuple[FrameRecord | None, ...]) -> None:
    """Copy the window's frames into ``out``; an empty slot becomes zeros (a constant frame: 0 once z-scored)."""
    for k, rec in enumerate(frames):
        if rec is None:
            out[k] = 0
        else:
            out[k] = rec.data


class WindowAssembler:
    """Collects frames into runs and hands out :class:`WindowJob` s as soon as their window is complete."""

    def __init__(self, n_frames: int) -> None:
        self._n = self._check(n_frames)
        self._clear()

    @staticmethod
    def _check(n_frames: int) -> int:
        if n_frames < 1 or n_frames % 2 == 0:
            raise ConfigError(f"model window of {n_frames} frames: the window must be a positive odd number")
        return n_frames

    def _clear(self) -> None:
        self._buffer: dict[int, FrameRecord] = {}
        self._run = getattr(self, "_run", 0) + 1
        self._acq: str | None = None
        self._first = 0
        self._last = -1
        self._next_center = 0
        self._shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None

    @property
    def n_frames(self) -> int:
        return self._n

    @property
    def acquisition(self) -> str | None:
        """The acquisition of the current run (None between runs)."""
        return self._acq

    @property
    def last_index(self) -> int | None:
        return None if self._acq is None else self._last

    @property
    def pending(self) -> int:
        """Frames received whose output is not computed yet (computed at the next flush at the latest)."""
        return 0 if self._acq is None else self._last - self._next_center + 1

    def change_reason(self, header: Header, dtype: np.dtype | None = None) -> str | None:
        """Why a frame with ``header`` cannot continue the current run: ``acquisition``, ``restart`` (index
        not after the last), ``gap``, ``shape`` or ``dtype``; None when it continues it (or no run is active).
        ``dtype``: the frame's pixel type when the caller has it (else the header's, a little slower)."""
        if self._acq is None:
            return None
        if header.acquisition != self._acq:
            return "acquisition"
        if header.shape != self._shape:
            return "shape"
        if (header.numpy_dtype if dtype is None else dtype) != self._dtype:
            return "dtype"
        index = int(header.index or 0)
        if index <= self._last:
            return "restart"
        if index != self._last + 1:
            return "gap"
        return None

    def push(self, rec: FrameRecord) -> tuple[list[WindowJob], str | None]:
        """Add a frame. Returns the jobs that became ready (the old run's flushed tail first, when the frame
        starts a new run) and the reason the old run ended, if it did."""
        reason = self.change_reason(rec.header, rec.data.dtype)
        jobs: list[WindowJob] = self.flush(rec.received) if reason is not None else []
        if self._acq is None:
            self._acq = rec.header.acquisition
            self._first = rec.index
            self._next_center = rec.index
            self._shape = rec.header.shape
            self._dtype = rec.data.dtype
        self._buffer[rec.index] = rec
        self._last = rec.index
        half = self._n // 2
        while self._next_center + half <= self._last:
            jobs.append(self._job(self._next_center, self._last, rec.received, flushed=False))
            self._next_center += 1
        for old in [i for i in self._buffer if i < self._next_center - half]:
            del self._buffer[old]
        return jobs, reason

    def flush(self, now: float) -> list[WindowJob]:
        """End the current run: jobs for its remaining frames, with the windows of the run's end."""
        if self._acq is None:
            return []
        jobs = [self._job(c, self._last, now, flushed=True) for c in range(self._next_center, self._last + 1)]
        self._clear()
        return jobs

    def resize(self, n_frames: int, now: float) -> list[WindowJob]:
        """Change the window length (a model with another frame count): flushes and ends the current run."""
        jobs = self.flush(now)
        self._n = self._check(n_frames)
        return jobs

    def _job(self, center: int, last: int, completed: float, *, flushed: bool) -> WindowJob:
        length = last - self._first + 1
        first, buffer = self._first, self._buffer
        indices = [None if p is None else first + p for p in window_indices(center - first, self._n, length)]
        frames = tuple(None if i is None else buffer[i] for i in indices)
        return WindowJob(buffer[center], frames, completed, flushed, self._run, indices)


def live_selection(jobs: list[WindowJob]) -> list[WindowJob]:
    """The windows live mode denoises out of a backlog (in order): the newest window a frame completed, plus the
    flushed tail of the run that ended after it, if one did (an acquisition's ``end``). Everything else is old
    by now, including the tails of runs cut short by gaps or resets before the newest window."""
    last_live = max((i for i, j in enumerate(jobs) if not j.flushed), default=-1)
    tail = [j for j in jobs[last_live + 1 :] if j.flushed]
    if tail:
        tail = [j for j in tail if j.run == tail[-1].run]
    return ([jobs[last_live]] if last_live >= 0 else []) + tail


class WindowBuffer:
    """Builds the (N, H, W) window arrays the model reads, copying each frame about twice at most.

    Consecutive windows (every window except those at the ends of a run) are contiguous views of a
    ring of 2N-1 frame slots: the window starting at frame i uses slots ``i % N`` to ``i % N + N - 1``, so each
    frame lives in slot ``i % N`` and, for the windows that wrap, in slot ``i % N + N``. A slot is written only
    when a window needs it and does not hold that frame yet, so consecutive windows (lossless mode) copy one or
    two frames each, not N. The windows at the ends of a run are copied into a reused scratch array.

    A returned array is valid until the next call (its memory is reused): consume it before asking for another.
    """

    def __init__(self) -> None:
        self._ring: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._slots: list[tuple[int, int] | None] = []

    def window(self, job: WindowJob) -> np.ndarray:
        n = len(job.frames)
        first = job.center.data
        if n == 1:
            return first[None]
        frames = [rec for rec in job.frames if rec is not None]
        if len(frames) < n or any(rec.index != frames[0].index + k for k, rec in enumerate(frames)):
            scratch = self._scratch
            if scratch is None or scratch.shape != (n, *first.shape) or scratch.dtype != first.dtype:
                scratch = self._scratch = np.empty((n, *first.shape), dtype=first.dtype)
            _fill(scratch, job.frames)
            return scratch
        ring = self._ring
        if ring is None or ring.shape != (2 * n - 1, *first.shape) or ring.dtype != first.dtype:
            ring = self._ring = np.empty((2 * n - 1, *first.shape), dtype=first.dtype)
            self._slots = [None] * (2 * n - 1)
        start = frames[0].index % n
        for k, rec in enumerate(frames):
            slot = start + k
            key = (job.run, rec.index)
            if self._slots[slot] != key:
                ring[slot] = rec.data
                self._slots[slot] = key
        return ring[start : start + n]

    def owns(self, array: np.ndarray) -> bool:
        """Whether ``array`` may share memory with the reused buffers (then copy it before keeping it)."""
        return any(buf is not None and np.may_share_memory(array, buf) for buf in (self._ring, self._scratch))


class FrameStreamLike(Protocol):
    """The streaming API of a model (:class:`emlive.export.runtime.FrameStream`)."""

    estimate: Any  # the estimate its denoise calls give (Estimate)

    def holds(self, index: int) -> bool: ...

    def reset(self) -> None: ...

    def push(self, frame: np.ndarray, index: int | None = None) -> int: ...

    def denoise(self, indices: Sequence[int | None], *, uncertainty: bool = False) -> Any: ...


class ModelWindows:
    """Feeds window jobs to a model and returns the denoised center frames.

    A model with a streaming API (``stream(shape, dtype)``, :meth:`emlive.export.runtime.Denoiser.stream`) gets
    each frame of a run pushed once, when the first window that reads it runs: validated and normalised once into
    the model's float32 ring, never again for the next N - 1 windows; frames of windows that live mode skips are
    never normalised at all. A new run (or model, shape, pixel type) starts a fresh stream, so a window never
    mixes runs. A model that only denoises whole windows (``denoise_window``: test wrappers, the benchmark's
    passthrough) gets them from a :class:`WindowBuffer` instead.
    """

    def __init__(self) -> None:
        self._buffer = WindowBuffer()
        self._stream: FrameStreamLike | None = None
        self._key: tuple[Any, ...] = ()
        self._run = 0
        self._model: Any = None
        self._model_streams = False

    def feed(
        self, model: Any, job: WindowJob, *, uncertainty: bool = False, estimate: Any = None
    ) -> Callable[[], Any]:
        """Make the job's window ready for ``model`` (push its new frames, or stack it); returns the call that
        denoises it: an (H, W) array the caller owns (``uncertainty``: the runtime's ``Denoised``, the frame and
        its std map, :mod:`emlive.export.estimates`). ``estimate``: the acquisition's (the live noise check's,
        :mod:`emlive.stream.livecheck`) instead of the model's."""
        if not self._streams(model):
            window = self._buffer.window(job)
            if uncertainty:
                return lambda: model.denoise_window(window, uncertainty=True)  # (new arrays: the runtime's)
            return lambda: self._owned(np.asarray(model.denoise_window(window)))
        stream = self._stream_for(model, job)
        if estimate is not None:
            stream.estimate = estimate  # read per call (FrameStream keeps the raw frames of a posterior model)
        for rec in job.frames:
            if rec is not None and not stream.holds(rec.index):
                stream.push(rec.data, rec.index)
        indices = job.indices
        if uncertainty:
            return lambda: stream.denoise(indices, uncertainty=True)
        return lambda: stream.denoise(indices)

    def _streams(self, model: Any) -> bool:
        """Whether ``model`` has the streaming API (remembered for the last model asked about)."""
        if self._model is not model:
            self._model, self._model_streams = model, callable(getattr(model, "stream", None))
        return self._model_streams

    def _stream_for(self, model: Any, job: WindowJob) -> FrameStreamLike:
        data = job.center.data
        key = (model, data.shape, data.dtype)
        if self._stream is None or key != self._key:
            self._stream = model.stream(data.shape, data.dtype)
            self._key, self._run = key, job.run
        elif job.run != self._run:
            self._stream.reset()
            self._run = job.run
        return self._stream

    def _owned(self, out: np.ndarray) -> np.ndarray:
        """``out``, copied when it shares the window buffer's memory (the next window overwrites that)."""
        return np.array(out) if self._buffer.owns(out) else out
