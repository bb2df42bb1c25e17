"""The live service's model slot: the model that runs now, the one loading in the background, and warm-ups.

One job: hold the current model and replace it without stopping the stream. :meth:`ModelSlot.load` starts a
background load; the loaded model is warmed up for the last frame size seen (in the loader thread, not between
two frames) and waits in the slot as *pending*; the pipeline calls :meth:`ModelSlot.maybe_swap` between two
batches, which switches to it (after a hook that lets the pipeline finish the current run on the old model when
the window length changes). A ``start`` that announces a frame size schedules one warm-up
(:meth:`ModelSlot.announce`), run when the pipeline is idle (:meth:`ModelSlot.warm_up_when_idle`). Every
warm-up stays within the memory budget. Progress shows in :meth:`ModelSlot.swap_state`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emlive.core.errors import ConfigError, EmliveError
from emlive.stream.budget import MemoryBudget
from emlive.stream.telemetry import Telemetry

logger = logging.getLogger("emlive.stream.service.modelslot")

MAX_WARMED = 64  # warm-ups remembered: a sender announcing ever new sizes cannot grow the set


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
Shape = tuple[tuple[int, int], np.dtype[Any]]


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


class ModelSlot:
    """The current model, a pending one loaded in the background, and the warm-ups (see the module docstring)."""

    def __init__(self, loader: Loader, budget: MemoryBudget, telemetry: Telemetry) -> None:
        self._loader, self._budget, self.telemetry = loader, budget, telemetry
        self.denoiser: DenoiserLike | None = None
        self.path: Path | None = None
        self.out_extra: dict[str, Any] = {}  # model, backend, device: copied into every output header
        self._pending: tuple[DenoiserLike, Path] | None = None
        self._state: dict[str, Any] = {"state": "idle"}
        self._lock = threading.Lock()
        self._warmed: set[tuple[int, tuple[int, int], str]] = set()
        self._warm_pending: Shape | None = None
        self.last_shape: Shape | None = None  # the last frame size seen: a loaded model is warmed up for it

    # --- the current model ---------------------------------------------------------------------------------
    def set(self, denoiser: DenoiserLike, path: Path | None) -> None:
        """Make ``denoiser`` (loaded from ``path``) the current model; updates the telemetry's model gauge."""
        self.denoiser, self.path = denoiser, path
        info = self.info()
        self.out_extra = {"model": info.get("name"), "backend": info.get("backend"), "device": info.get("device")}
        self.telemetry.gauge("model", info)

    def load_now(self, path: Path) -> None:
        """Load ``path`` in this thread and make it the current model (the service's start)."""
        self.set(self._loader(path), path)

    def info(self) -> dict[str, Any]:
        """:func:`model_info` of the current model ({} before one is set)."""
        return {} if self.denoiser is None else model_info(self.denoiser, self.path)

    def frame_problem(self, shape: tuple[int, int], itemsize: int) -> str | None:
        """Why frames of that size do not fit the memory budget with the current model (None when they do)."""
        if self.denoiser is None:
            return None
        return self._budget.frame_problem(shape, itemsize, self.denoiser.frames)

    def swap_state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    # --- swapping ------------------------------------------------------------------------------------------
    def load(self, path: str | Path) -> None:
        """Load ``path`` in the background; :meth:`maybe_swap` switches to it once it is loaded and warm."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"model {p} does not exist; give the path of a .ckpt, .pt or .onnx file")
        with self._lock:
            if self._state.get("state") == "loading":
                raise ConfigError(f"model {self._state.get('path')} is still loading; wait for it to finish")
            self._state = {"state": "loading", "path": str(p)}
        threading.Thread(target=self._load_in_background, args=(p,), name="emlive-model-loader", daemon=True).start()

    def _load_in_background(self, path: Path) -> None:
        logger.info("loading model %s in the background", path)
        try:
            denoiser = self._loader(path)
        except Exception as exc:  # noqa: BLE001 - a failed swap keeps the current model; reported in status
            logger.error("model swap to %s failed, keeping the current model: %s", path, exc)
            with self._lock:
                self._state = {"state": "failed", "path": str(path), "error": str(exc)}
            return
        last = self.last_shape
        if last is not None:
            self.warm_up(*last, denoiser=denoiser)  # here, not between two frames
        with self._lock:
            self._pending = (denoiser, path)
            self._state = {"state": "ready", "path": str(path)}

    def maybe_swap(self, before_switch: Callable[[DenoiserLike], bool]) -> bool:
        """Switch to the pending model, if one is ready. ``before_switch(new)`` runs first, on the old model
        (the pipeline ends its run there when the window length changes) and says whether the window was reset.
        Returns whether a switch happened."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        denoiser, path = pending
        old = self.info()
        reset = before_switch(denoiser)
        self.set(denoiser, path)
        with self._lock:
            self._state = {"state": "done", "path": str(path)}
        self.telemetry.count("model_swaps")
        self._log_swap(old, self.info(), reset)
        return True

    @staticmethod
    def _log_swap(old: dict[str, Any], new: dict[str, Any], reset: bool) -> None:
        logger.info(
            "switched model %s (%d frames) -> %s (%d frames, %s on %s)%s",
            old.get("name"),
            old.get("frames"),
            new["name"],
            new["frames"],
            new["backend"],
            new["device"],
            "; window reset" if reset or old.get("frames") != new["frames"] else "",
        )

    # --- warm-ups ------------------------------------------------------------------------------------------
    def announce(self, shape: tuple[int, int], dtype: np.dtype[Any]) -> None:
        """A ``start`` announced this frame size: warm up for it when the pipeline is idle (one pending, the
        latest; the caller checked it fits the budget)."""
        self._warm_pending = (shape, dtype)

    def warm_up_when_idle(self) -> None:
        pending, self._warm_pending = self._warm_pending, None
        if pending is not None:
            self.warm_up(*pending)

    def warm_up(self, shape: tuple[int, int], dtype: np.dtype[Any], denoiser: DenoiserLike | None = None) -> None:
        """Run a model (default: the current one) once on a blank window of that frame size, so the first real
        frame does not pay for the backend's first-run set-up (live mode would skip frames meanwhile). Once per
        model and size; never for a size beyond the memory budget."""
        denoiser = denoiser or self.denoiser
        if denoiser is None or not self._first_warm_up(denoiser, shape, dtype):
            return
        start = time.perf_counter()
        try:
            denoiser.denoise_window(np.zeros((denoiser.frames, *shape), dtype=dtype))
        except EmliveError as exc:
            logger.debug("warm-up for %s %s skipped: %s", shape, dtype, exc)
            return
        ms = (time.perf_counter() - start) * 1e3
        logger.info("model warmed up for %dx%d %s frames in %.0f ms", shape[0], shape[1], dtype, ms)

    def _first_warm_up(self, denoiser: DenoiserLike, shape: tuple[int, int], dtype: np.dtype[Any]) -> bool:
        """Whether this model needs a warm-up for this size (not done yet, within the budget); marks it done."""
        key = (id(denoiser), shape, dtype.str)
        if key in self._warmed or self._budget.frame_problem(shape, dtype.itemsize, denoiser.frames) is not None:
            return False
        if len(self._warmed) >= MAX_WARMED:
            self._warmed.clear()
        self._warmed.add(key)
        return True
