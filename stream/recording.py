"""Recording of the live stream: raw and/or denoised frames appended to one movie file per acquisition.

``--record out/run.mrc`` writes ``out/run-<acquisition>-raw.mrc`` and ``out/run-<acquisition>-denoised.mrc``
(``.tif`` works the same). When the service publishes uncertainty maps (``emlive serve --uncertainty``), a
recording of the denoised frames also keeps each frame's std map in ``out/run-<acquisition>-uncertainty.mrc``
(float32, the input's units), by the same rules as every other file here. Each file comes with
``<file>.frames.jsonl``, one line per frame: its position in the file, its frame index and detector timestamp,
so skipped or missing frames are visible (the line is written just before the frame, so after a crash the last
line may name a frame that did not reach the file). Frames are appended by a writer thread as they arrive;
:class:`emlive.core.writers.MovieWriter` keeps the file readable after every frame, so a
crash loses at most the frame being written. A name that exists already is never overwritten: the next free
``-2``, ``-3``, ... suffix is used.

Pixel types follow the policy of :mod:`emlive.core.pixeltypes`: every frame the protocol carries is kept without
loss. A type the record's format cannot hold as it is goes into a wider type that holds every value (uint8 in MRC:
uint16); a type the format cannot hold at all (uint32, int32 and float64 in MRC: float32 rounds integers above
2**24) is recorded to a TIFF file of the same name instead, for that acquisition, with one logged warning. The
first frame decides (a ``start`` message need not announce the type); a type change mid-acquisition starts a new
file, again by the same rule. So a valid frame never stops the recording.

Recording never drops a frame silently: when the disk is slower than the stream, :meth:`Recorder.submit`
blocks (the service's input queue then fills; see the service's overload policy). A write error (disk full,
folder removed) is fatal for the service (the record could no longer be trusted).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from emlive.core.errors import ConfigError, EmliveError, InputFileError
from emlive.core.pixeltypes import check_pixel_type, lossless_format, storage_dtype
from emlive.core.protocol import Header
from emlive.core.writers import WRITER_SUFFIXES, MovieWriter, open_writer
from emlive.stream.modes import RecordWhat
from emlive.stream.telemetry import Telemetry

logger = logging.getLogger(__name__)


Kind = Literal["raw", "denoised", "uncertainty"]


def check_record_path(path: Path) -> Path:
    """``path`` after checking its suffix and folder; ConfigError naming the fix otherwise."""
    p = Path(path)
    if p.suffix.lower() not in WRITER_SUFFIXES:
        raise ConfigError(
            f"--record {p}: suffix {p.suffix or '(none)'} is not a movie format the recorder writes; use "
            f"{', '.join(sorted(WRITER_SUFFIXES))}"
        )
    if not p.parent.is_dir():
        raise ConfigError(f"--record {p}: the folder {p.parent} does not exist; create it first")
    return p


def safe_name(text: str) -> str:
    """An acquisition id made safe for a file name (letters, digits, ``.-_`` kept; others become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "acquisition"
    return cleaned[:80]


@dataclass
class _Open:
    writer: MovieWriter
    index_file: TextIO
    shape: tuple[int, int]
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _Item:
    op: Literal["frame", "end"]
    acquisition: str
    kind: Kind | None = None
    header: Header | None = None
    data: np.ndarray | None = None


class Recorder:
    """Appends frames to per-acquisition movie files from a background thread.

    ``on_error`` is called (from the writer thread) with the exception when writing fails; the recorder stops
    accepting frames then.
    """

    def __init__(
        self,
        path: Path,
        what: RecordWhat,
        telemetry: Telemetry,
        *,
        queue_size: int = 64,
        fsync: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.path = check_record_path(path)
        self.what = what
        self._telemetry = telemetry
        self._fsync = fsync
        self._on_error = on_error
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max(1, queue_size))
        self._open: dict[tuple[str, Kind], _Open] = {}
        self._failed: BaseException | None = None
        self._closed = False
        self.files: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="emlive-recorder", daemon=True)

    def wants(self, kind: Kind) -> bool:
        """Whether frames of ``kind`` are recorded: uncertainty maps go with the denoised frames they describe."""
        return self.what in ("denoised" if kind == "uncertainty" else kind, "both")

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: Kind, header: Header, data: np.ndarray) -> None:
        """Queue a frame for writing; blocks while the queue is full (never drops). Raises if recording failed."""
        if self.wants(kind):
            self._put(_Item("frame", header.acquisition, kind, header, data))

    def end_acquisition(self, acquisition: str) -> None:
        """Close the files of ``acquisition`` once its queued frames are written."""
        self._put(_Item("end", acquisition))

    def _put(self, item: _Item) -> None:
        while True:
            if self._failed is not None:
                raise InputFileError(f"recording to {self.path} failed earlier: {self._failed}")
            if self._closed:
                raise InputFileError(f"recording to {self.path}: the recorder is closed")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close every file and stop the thread (idempotent)."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        break
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._closed = True
        if self._thread.is_alive():
            # the writer thread still owns the files; it closes them when it gets to the end of its queue
            logger.error("recorder: %d frame(s) still queued after %.0f s; giving up waiting", self.depth, timeout)
            return
        self._close_all()

    # --- the writer thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if item.op == "end":
                    self._close_acquisition(item.acquisition)
                    continue
                start = time.perf_counter()
                self._write(item)
                self._telemetry.stage("record", time.perf_counter() - start)
        except (EmliveError, OSError, ValueError) as exc:
            self._failed = exc
            logger.error("recording to %s failed: %s", self.path, exc)
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self._close_all()

    def _write(self, item: _Item) -> None:
        header, data, kind = item.header, item.data, item.kind
        if header is None or data is None or kind is None:
            return
        key = (item.acquisition, kind)
        cur = self._open.get(key)
        if cur is not None and (cur.shape != data.shape or cur.dtype != data.dtype.newbyteorder("=")):
            logger.info(
                "recording %s %s: frames changed to %s %s; starting a new file",
                item.acquisition,
                kind,
                data.shape,
                data.dtype,
            )
            self._close(key)
            cur = None
        if cur is None:
            cur = self._open_file(item.acquisition, kind, (data.shape[0], data.shape[1]), data.dtype, header)
            self._open[key] = cur
        position = cur.writer.frames_written
        # the index line first: after a crash every frame in the file has its line (the last line may name a
        # frame that was being written and is not in the file)
        cur.index_file.write(
            json.dumps({"frame": position, "index": header.index, "timestamp": header.timestamp}) + "\n"
        )
        cur.index_file.flush()
        cur.writer.append(data)
        self._telemetry.count(f"recorded_{kind}")

    def _suffix_for(self, dtype: np.dtype[Any], acquisition: str, kind: Kind) -> str:
        """The record's suffix, or ``.tif`` when its format cannot keep every value of ``dtype`` (logged)."""
        check_pixel_type(dtype, f"{kind} frame of {acquisition!r}", ConfigError)
        suffix = self.path.suffix
        if lossless_format(dtype, suffix) == "tiff" and suffix.lower() not in (".tif", ".tiff"):
            logger.warning(
                "recording %s frames of %s: %s files cannot keep every %s value (no MRC mode holds them all: "
                "float32, the widest, rounds them), so this acquisition's %s frames are recorded to a .tif file of "
                "the same name instead",
                kind, acquisition, suffix, dtype.newbyteorder("="), kind,
            )  # fmt: skip
            return ".tif"
        return suffix

    def _open_file(
        self, acquisition: str, kind: Kind, shape: tuple[int, int], dtype: np.dtype[Any], header: Header
    ) -> _Open:
        stem, suffix = self.path.stem, self._suffix_for(dtype, acquisition, kind)
        base = f"{stem}-{safe_name(acquisition)}"
        n = 1
        while True:
            name = f"{base}-{kind}{suffix}" if n == 1 else f"{base}-{n}-{kind}{suffix}"
            target = self.path.parent / name
            if not target.exists() and target not in self.files:
                break
            n += 1
        file_dtype = storage_dtype(dtype, target.suffix)  # the type itself, or a wider one holding every value
        if file_dtype is None:  # _suffix_for picked a format that holds it: cannot happen
            raise ConfigError(f"--record {self.path}: {dtype} frames cannot be stored in {target.suffix} files")
        writer = open_writer(target, shape, file_dtype, header.pixel_size_nm, overwrite=False, fsync=self._fsync)
        index_file = target.with_name(target.name + ".frames.jsonl").open("w", encoding="utf-8")
        self.files.append(target)
        logger.info("recording %s frames of %s to %s", kind, acquisition, target)
        return _Open(writer, index_file, shape, dtype.newbyteorder("="))

    def _close(self, key: tuple[str, Kind]) -> None:
        cur = self._open.pop(key, None)
        if cur is None:
            return
        try:
            cur.writer.close()
        finally:
            cur.index_file.close()
        logger.info("closed %s (%d frames)", cur.writer.path, cur.writer.frames_written)

    def _close_acquisition(self, acquisition: str) -> None:
        for key in [k for k in self._open if k[0] == acquisition]:
            self._close(key)

    def _close_all(self) -> None:
        for key in list(self._open):
            try:
                self._close(key)
            except (EmliveError, OSError) as exc:
                logger.error("closing the recording %s failed: %s", key, exc)
