"""The live noise check: ``emlive serve`` with a probabilistic (``network.head=gaussian``) model decides, per
acquisition, between the posterior and the blind output by the same rule as offline ``emlive denoise``.

Offline, each movie's :class:`~emlive.core.posterior.NoiseCheck` runs before its first frame is denoised; live, the
frames are not there yet. So for each acquisition the service takes the blind estimate, its prior std and the raw
frame of the first ``CHECK_FRAMES`` frames it denoises, and measures the check on them in a background thread (off
the pipeline's hot path); :func:`~emlive.core.posterior.decide_estimate` (the one rule) then picks the estimate of
the acquisition's remaining frames: the posterior when the check passes, the blind output when it fails (warned
loudly), the posterior whatever it says when ``--estimate posterior`` was given (``forced``: it only warns).

Until the decision the frames go out with the safe choice: the blind output (forced: the posterior). The first
frame published with the decision is in the status (``from_index``), with the check's ratio, its standard error,
the threshold (``sigmas``, ``tolerance``) and the decision: ``status()["noise_check"]``. A model without
a variance head, a card without a noise model, or ``--estimate blind`` needs no check (``state: "off"``).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emlive.core.errors import EmliveError
from emlive.core.posterior import (
    CHECK_FRAMES,
    CheckParts,
    Estimate,
    NoiseCheck,
    PixelNoise,
    check_parts,
    decide_estimate,
)

logger = logging.getLogger(__name__)


@dataclass
class _Acquisition:
    """One acquisition's check: the frames asked for, their measurements, then the check and the decision."""

    name: str
    asked: int = 0
    parts: list[CheckParts] = field(default_factory=list)
    check: NoiseCheck | None = None
    decision: Estimate | None = None
    from_index: int | None = None  # the first frame published with the decision


class LiveNoiseCheck:
    """The per-acquisition noise check of one model (see the module docstring). ``for_job``, ``observe`` and
    ``add_parts`` are called from the pipeline's thread; measuring and deciding run on the executor's single
    thread (in order); ``status`` from any thread.

    ``model``: the runtime's ``Denoiser`` (its ``channels``, ``noise`` and ``estimate``), or the fan-out's view of
    the workers' model (their frames come measured: :meth:`add_parts`)."""

    def __init__(self, model: Any, executor: ThreadPoolExecutor, *, forced: bool, frames: int = CHECK_FRAMES) -> None:
        self.model = model
        self.noise: PixelNoise | None = getattr(model, "noise", None)
        channels = getattr(model, "channels", 1)
        self.requested = Estimate.posterior if channels > 1 and str(model.estimate) == "posterior" else Estimate.blind
        self.forced, self.frames = forced, frames
        has_noise = self.noise is not None or bool(getattr(model, "has_noise_model", False))
        self.active = has_noise and self.requested is Estimate.posterior
        self._executor = executor
        self._lock = threading.Lock()
        self._acq: _Acquisition | None = None

    def for_job(self, acquisition: str, index: int) -> tuple[Estimate | None, bool]:
        """The estimate to publish frame ``index`` of ``acquisition`` with (None: the model's own, no check), and
        whether the frame is measured for the check (then :meth:`observe` it, or :meth:`add_parts` its parts)."""
        if not self.active:
            return None, False
        with self._lock:
            acq = self._acq
            if acq is None or acq.name != acquisition:
                acq = self._acq = _Acquisition(acquisition)
            if acq.decision is not None:
                if acq.from_index is None:
                    acq.from_index = index
                return acq.decision, False
            sample = acq.asked < self.frames
            acq.asked += sample
            return (self.requested if self.forced else Estimate.blind), sample

    def observe(self, acquisition: str, found: Any, raw: np.ndarray) -> None:
        """A frame for the check: the runtime's ``Denoised`` (its prior mean and std) and the raw frame, measured
        in the background."""
        assert self.noise is not None
        mu, std, y = found.prior_mean, found.prior_std, np.array(raw, dtype=np.float32)
        self._executor.submit(self._guarded, acquisition, lambda: measure_parts(mu, std, y, self.noise))

    def add_parts(self, acquisition: str, parts: CheckParts) -> None:
        """A frame measured elsewhere (a fan-out worker, :func:`measure_parts`)."""
        self._executor.submit(self._guarded, acquisition, lambda: parts)

    def _guarded(self, acquisition: str, measure: Any) -> None:
        try:
            self._add(acquisition, measure())
        except EmliveError as exc:  # e.g. a frame of NaN: no check for this acquisition, the safe choice
            logger.error("acquisition %s: the noise check could not run (%s): the blind output", acquisition, exc)
            self._set(acquisition, None, self.requested if self.forced else Estimate.blind)

    def _add(self, acquisition: str, parts: CheckParts) -> None:
        with self._lock:
            acq = self._acq
            if acq is None or acq.name != acquisition or acq.decision is not None:
                return  # an acquisition that ended meanwhile
            acq.parts.append(parts)
            if len(acq.parts) < self.frames:
                return
            measured = list(acq.parts)
        check = NoiseCheck.from_parts(measured)
        decision = decide_estimate(self.requested, check, forced=self.forced)
        self._set(acquisition, check, decision)
        where = f"acquisition {acquisition} (model {getattr(self.model.card, 'name', '?')})"
        if check.ok:
            logger.info("%s: %s; publishing the %s estimate", where, check.message, decision.value)
        else:
            logger.warning("%s: NOISE MODEL CHECK FAILED: %s", where, check.message)
            if decision is not self.requested:
                logger.warning("%s: falling back to the blind output (--estimate posterior forces it)", where)

    def _set(self, acquisition: str, check: NoiseCheck | None, decision: Estimate) -> None:
        with self._lock:
            acq = self._acq
            if acq is not None and acq.name == acquisition:
                acq.check, acq.decision, acq.parts = check, decision, []

    def status(self) -> dict[str, Any]:
        """What the check found for the current acquisition (``state``: off, collecting, or decided)."""
        if not self.active:
            return {"state": "off", "estimate": self.requested.value}
        with self._lock:
            acq = self._acq
            out: dict[str, Any] = {"frames": self.frames, "forced": self.forced}
            if acq is None or acq.decision is None:
                return {**out, "state": "collecting", "measured": 0 if acq is None else len(acq.parts)}
            check, decision, from_index = acq.check, acq.decision, acq.from_index
            out.update(acquisition=acq.name, state="decided", estimate=decision.value, from_index=from_index)
        if check is None:
            return {**out, "ok": None, "message": "the check could not run (see the log)"}
        return {
            **out, "ok": check.ok, "ratio": check.ratio, "se": check.se, "sigmas": check.sigmas,
            "tolerance": check.tolerance, "message": check.message,
        }  # fmt: skip


def measure_parts(prior_mean: np.ndarray, prior_std: np.ndarray, raw: np.ndarray, noise: PixelNoise) -> CheckParts:
    """One frame's :class:`~emlive.core.posterior.CheckParts` from the runtime's blind estimate, its prior std and
    the raw frame (in the service, or in a fan-out worker)."""
    log_var = 2.0 * np.log(np.maximum(np.asarray(prior_std, dtype=np.float64), 1e-30))
    return check_parts(prior_mean, log_var, np.asarray(raw, dtype=np.float32), noise)


class LiveChecks:
    """The pipeline's noise checks: one :class:`LiveNoiseCheck` for the model in use (a new one after a swap), its
    checks on one background thread."""

    def __init__(self, *, forced: bool) -> None:
        self.forced = forced
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="emlive-noise-check")
        self._check: LiveNoiseCheck | None = None

    def for_model(self, model: Any) -> LiveNoiseCheck:
        check = self._check
        if check is None or check.model is not model:
            check = self._check = LiveNoiseCheck(model, self._executor, forced=self.forced)
        return check

    def plan(self, model: Any, job: Any) -> tuple[Estimate | None, bool]:
        """The pipeline's question per window job: :meth:`LiveNoiseCheck.for_job` of the model in use."""
        return self.for_model(model).for_job(job.center.header.acquisition, job.center.index)

    def observe(self, model: Any, job: Any, found: Any, *, keep: bool) -> Any:
        """Give the job's ``Denoised`` to the check; returns it (``keep``: the uncertainty is published) or its
        frame."""
        self.for_model(model).observe(job.center.header.acquisition, found, job.center.data)
        return found if keep else found.mean

    def add_parts(self, model: Any, job: Any, parts: CheckParts) -> None:
        """A fan-out worker's measurement of the job's frame (:func:`measure_parts`)."""
        self.for_model(model).add_parts(job.center.header.acquisition, parts)

    def status(self) -> dict[str, Any]:
        check = self._check
        return {"state": "off"} if check is None else check.status()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
