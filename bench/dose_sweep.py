"""The dose curve: ``emlive bench-quality --doses 0.5 5 20 100 --modes counting integrating``.

For every setting (a dose in e-/px/frame and a :class:`DetectorMode`) a held-out movie (``seed``, never a training
seed) is scored by :func:`emlive.bench.quality.score_movie`, the same code as the single-movie benchmark: raw, the
5-frame average, the oracle Gaussian, BM3D (generalized Anscombe with the detector's gain, offset, read noise and
kernel), and the models:

* given per setting, ``-m LABEL@DOSE/MODE=PATH`` (e.g. ``-m student@5/counting=runs/s5.pt``; a spec without
  ``@DOSE/MODE`` is scored at every setting), optionally ending in ``@flips``/``@dihedral`` as in the single-movie
  benchmark;
* and/or TRAINED by the benchmark itself at a fixed budget (``--train-steps N`` and/or ``--train-minutes M``) from
  the small config (``--train-config``, default synthetic-small, width 16, 5 frames, plus ``--train-set``
  overrides) on a training movie of the same setting simulated with seed ``seed + 1``: a self-supervised
  Gaussian-head model (``network.head=gaussian optim.loss=gaussian_nll``; rows ``blind`` = its mean channel and
  ``re-opened`` = its posterior mean, with the predicted vs measured gain and the calibration) and the supervised
  oracle (``targets=clean``, same network and budget, head mean; row ``oracle``). Trained models are cached under
  ``OUT/models/runs/<kind>-<setting>-<budget>-<hash>/model.pt`` (the hash covers the training config, the
  overrides and the training movie), so a rerun with the same settings trains nothing.

Writes ``OUT/quality.json`` (every setting, row and per-frame value), ``OUT/dose_curve.png`` (paper PSNR against
dose, log x, one line per method, one panel per mode), ``OUT/quality_<mode>-dose<D>.png`` (the single-movie
picture of each setting) and ``OUT/quality.md`` (markdown tables for the README).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from emlive.bench.model_specs import ModelSpec
from emlive.bench.quality import (
    CHANGING_PIXELS,
    DEFAULT_SUFFIX,
    EDGE_FRAMES,
    QualityRow,
    SettingResult,
    _Model,
    check_labels,
    close_models,
    load_models,
    score_movie,
)
from emlive.core.errors import ConfigError, EmliveError
from emlive.core.posterior import Estimate
from emlive.core.simulate import CorrelatedNoise, SimulationConfig, make_config, write_simulation
from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)


class DetectorMode(enum.StrEnum):
    """The two detector families of the sweep, each one set of simulator settings (:meth:`detector`):

    * ``counting``: an electron-counting detector: gain 1 count/e-, offset 0, no read noise, uncorrelated pixels
      (pure Poisson);
    * ``integrating``: a charge-integrating camera: gain 8 counts/e-, offset 100 counts, Gaussian read noise 3
      counts, and isotropic charge sharing (the simulator's 3x3 kernel, noise correlation about 0.5 at 1 px).
    """

    counting = "counting"
    integrating = "integrating"

    def detector(self) -> dict[str, Any]:
        """The :class:`~emlive.core.simulate.SimulationConfig` fields of this detector."""
        return dict(_DETECTORS[self])


_DETECTORS: dict[DetectorMode, dict[str, Any]] = {
    DetectorMode.counting: {"gain": 1.0, "offset": 0.0, "read_noise": 0.0, "correlated_noise": CorrelatedNoise.NONE},
    DetectorMode.integrating: {
        "gain": 8.0,
        "offset": 100.0,
        "read_noise": 3.0,
        "correlated_noise": CorrelatedNoise.ISOTROPIC,
    },
}
SETTING_RULE = "a setting is DOSE/MODE, e.g. 5/counting (dose in e-/px/frame > 0; mode counting or integrating)"


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: a dose (e-/px/frame) and a detector mode."""

    dose: float
    mode: DetectorMode

    @property
    def name(self) -> str:
        return f"{self.dose:g}/{self.mode.value}"

    @property
    def slug(self) -> str:
        return f"{self.mode.value}-dose{self.dose:g}"

    def simulation(self, size: int, frames: int, seed: int) -> SimulationConfig:
        return make_config(height=size, width=size, frames=frames, dose=self.dose, seed=seed, **self.mode.detector())

    @classmethod
    def parse(cls, text: str, where: str) -> Setting:
        dose_text, _, mode_text = text.partition("/")
        try:
            dose, mode = float(dose_text), DetectorMode(mode_text.strip())
        except ValueError as exc:
            raise ConfigError(f"{where}: {text!r} is not a setting; {SETTING_RULE}") from exc
        if not (math.isfinite(dose) and dose > 0):
            raise ConfigError(f"{where}: {text!r} is not a setting; {SETTING_RULE}")
        return cls(dose, mode)


class SweepConfig(BaseModel):
    """Everything that defines a sweep (the models apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doses: list[float] = Field(min_length=1, max_length=32, description="Doses in e-/px/frame.")
    modes: list[DetectorMode] = Field(min_length=1, max_length=2, description="Detector modes.")
    size: int = Field(512, ge=32, le=8192, description="Frame size of the held-out and training movies (px).")
    frames: int = Field(64, ge=6, le=100_000, description="Frames of the held-out and training movies.")
    eval_frames: int = Field(8, ge=1, le=10_000, description="Frames scored per setting.")
    seed: int = Field(1001, ge=0, le=2**62, description="Held-out movie seed; training movies use seed + 1.")
    bm3d: bool = True
    train_steps: int | None = Field(None, ge=1, le=10_000_000, description="Training budget in steps.")
    train_minutes: float | None = Field(None, gt=0, le=100_000, description="Training budget in minutes.")
    train_config: str = Field("synthetic-small", description="Training config (name or file) of trained models.")
    train_overrides: list[str] = Field(default_factory=list, description="Overrides of the training config.")
    backend: str = "auto"
    threads: int | None = Field(None, ge=1, le=1024)

    def settings(self) -> list[Setting]:
        for dose in self.doses:
            if not (math.isfinite(dose) and 0 < dose <= 1e6):
                raise ConfigError(f"--doses: {dose:g} is no dose; each must be > 0 and <= 1e6 e-/px/frame")
        return [Setting(d, m) for m in self.modes for d in self.doses]

    @property
    def trains(self) -> bool:
        return self.train_steps is not None or self.train_minutes is not None

    @property
    def budget_tag(self) -> str:
        parts = ([f"steps{self.train_steps}"] if self.train_steps else []) + (
            [f"min{self.train_minutes:g}"] if self.train_minutes else []
        )
        return "-".join(parts)


# --- models given per setting -------------------------------------------------------------------------------------
def split_setting_specs(specs: list[ModelSpec]) -> list[tuple[ModelSpec, Setting | None]]:
    """``-m LABEL@DOSE/MODE=PATH``: each spec with the setting its label names (None: every setting)."""
    out = []
    for spec in specs:
        setting = None
        if spec.label is not None and "@" in spec.label:
            label, _, text = spec.label.partition("@")
            if not label.strip():
                raise ConfigError(f"-m {spec.text!r}: the label before '@' is empty; use -m LABEL@DOSE/MODE=PATH")
            setting = Setting.parse(text, f"-m {spec.text!r}")
            spec = ModelSpec(spec.text, label.strip(), spec.path, spec.ensemble)
        out.append((spec, setting))
    return out


# --- models trained by the benchmark ------------------------------------------------------------------------------
def _training_overrides(cfg: SweepConfig, kind: str, data: Path, blind_spot: tuple[int, int]) -> list[str]:
    crop = min(128, cfg.size - cfg.size % 16)
    over = [
        f"network.blind_spot=[{blind_spot[0]},{blind_spot[1]}]",
        f"data.train={data / 'noisy.tif'}",
        f"data.clean={data / 'clean.tif'}",
        "data.val_fraction=0",
        f"data.crop_size={crop}",
        f"data.val_crop_size={crop}",
        "optim.epochs=100000",
        f"optim.max_steps={cfg.train_steps or -1}",
        f"optim.max_minutes={cfg.train_minutes if cfg.train_minutes else 'null'}",
        "output.log_images=false",
        "output.save_top_k=1",
    ]
    if kind == "oracle":
        over += ["targets=clean", "network.head=mean"]
    else:
        over += ["network.head=gaussian", "optim.loss=gaussian_nll"]
    return over + list(cfg.train_overrides)


def _cache_key(
    cfg: SweepConfig, setting: Setting, kind: str, train_sim: SimulationConfig, blind_spot: tuple[int, int]
) -> str:
    """``<kind>-<setting>-<budget>-<hash>``: the hash covers the training config and overrides (the data folder
    left out, so the output folder may move) and the training movie's simulation."""
    over = _training_overrides(cfg, kind, Path("DATA"), blind_spot)
    text = json.dumps([cfg.train_config, over, train_sim.model_dump(mode="json")], sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{kind}-{setting.slug}-{cfg.budget_tag}-{digest}"


def trained_model(cfg: SweepConfig, setting: Setting, kind: str, cache: Path, trained: list[str]) -> Path:
    """The ``kind`` ("blind" or "oracle") model of ``setting`` at the sweep's budget: the cached one, else trained
    now (its name appended to ``trained``)."""
    from emlive.train.api import train
    from emlive.train.config import load_config

    train_sim = setting.simulation(cfg.size, cfg.frames, cfg.seed + 1)
    data = cache / "data" / f"{setting.slug}-{cfg.size}px-{cfg.frames}f-seed{train_sim.seed}"
    if not (data / "manifest.json").is_file():
        write_simulation(train_sim, data)
    spot = recommended_blind_spot(data / "noisy.tif")
    over = _training_overrides(cfg, kind, data, spot)
    key = _cache_key(cfg, setting, kind, train_sim, spot)
    model = cache / "runs" / key / "model.pt"
    if model.is_file():
        log.info("%s: reusing the %s model %s", setting.name, kind, model)
        return model
    train_cfg = load_config(cfg.train_config, [*over, f"name={key}", f"output.root={cache}", "output.experiment=runs"])
    log.info("%s: training the %s model (%s) into %s", setting.name, kind, cfg.budget_tag, model.parent)
    result = train(train_cfg)
    trained.append(key)
    return result.model


def recommended_blind_spot(movie_path: Path, frames: int = 9) -> tuple[int, int]:
    """The blind spot the training movie's noise calls for (``emlive noise-stats``'s recommendation, measured on its
    first ``frames`` frames), as a user who follows the trainer's advice sets ``network.blind_spot``: 1 x 1 for a
    counting detector, 3 x 3 for the integrating one's charge sharing. (A ``--train-set network.blind_spot=...``
    override comes after it and wins.)"""
    from emlive.analysis.noise_stats import estimate_noise
    from emlive.core.readers import open_movie

    with open_movie(movie_path) as movie:
        stack = np.stack([np.asarray(movie[t], dtype=np.float64) for t in range(min(frames, len(movie)))])
    spot = estimate_noise(stack, max_side=256).blind_spot
    log.info("%s: the noise calls for a %d x %d blind spot", movie_path, *spot)
    return spot


def _trained_rows(cfg: SweepConfig, setting: Setting, cache: Path, trained: list[str]) -> tuple[_Model, _Model]:
    """The Gaussian-head model (its rows: blind and re-opened) and the oracle of ``setting``, trained or reused."""
    from emlive.bench.model_specs import parse_model_spec

    blind = trained_model(cfg, setting, "blind", cache, trained)
    oracle = trained_model(cfg, setting, "oracle", cache, trained)
    den = _load(blind, cfg, Estimate.posterior)
    try:
        oracle_den = _load(oracle, cfg, Estimate.blind)
    except EmliveError:
        den.close()
        raise
    return (
        _Model("blind", parse_model_spec(str(blind)), den, "blind", reopened="re-opened"),
        _Model("oracle", parse_model_spec(str(oracle)), oracle_den, "oracle"),
    )


def _load(path: Path, cfg: SweepConfig, estimate: Estimate) -> Denoiser:
    return Denoiser.load(path, backend=cfg.backend, threads=cfg.threads, estimate=estimate)


# --- the command ---------------------------------------------------------------------------------------------------
def _split(values: list[str]) -> list[str]:
    return [v for text in values for v in text.replace(",", " ").split()]


def sweep_from_cli(
    doses: list[str], modes: list[str], correlated: str, models: list[str], out: Path, **options: Any
) -> list[str]:
    """``emlive bench-quality --doses ... --modes ...``: checks the options, runs the sweep, returns quality.md's
    lines (the command prints them)."""
    from pydantic import ValidationError

    from emlive.bench.model_specs import parse_model_specs

    try:
        dose_values = [float(d) for d in _split(doses)]
    except ValueError as exc:
        given = " ".join(doses)
        raise ConfigError(f"--doses {given!r}: doses are numbers in e-/px/frame, e.g. --doses 0.5,5,20,100") from exc
    names = _split(modes)
    bad = [m for m in names if m not in list(DetectorMode)]
    if bad:
        raise ConfigError(f"--modes: {bad[0]!r} is no detector mode; use {' and/or '.join(DetectorMode)}")
    if correlated != CorrelatedNoise.NONE.value:
        raise ConfigError(
            f"--correlated {correlated} with a sweep: the detector mode sets the noise correlation (integrating: "
            "isotropic); drop --correlated"
        )
    specs = parse_model_specs(models) if models else []
    try:
        cfg = SweepConfig(doses=dose_values, modes=[DetectorMode(m) for m in names], **options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bench-quality sweep options break a rule: {problems}") from exc
    if not cfg.trains and not specs:
        log.warning("no models: give -m LABEL@DOSE/MODE=PATH or a training budget (--train-steps/--train-minutes)")
    result = run_sweep(cfg, specs, out)
    log.info("wrote %s, %s and %s", out / "quality.json", out / "dose_curve.png", out / "quality.md")
    return sweep_markdown(result)


# --- the sweep ----------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    settings: list[tuple[Setting, SettingResult]]
    trained: list[str] = field(default_factory=list)  # cache keys of the models trained by this run


def run_sweep(cfg: SweepConfig, specs: list[ModelSpec], out: Path) -> SweepResult:
    """Score every setting (training or reusing the models of each when a budget is given); writes the outputs."""
    settings = cfg.settings()
    given = split_setting_specs(specs)
    check_labels([s.label for s, _ in given if s.label is not None])
    for spec, setting in given:
        if setting is not None and setting not in settings:
            swept = ", ".join(s.name for s in settings)
            raise ConfigError(f"-m {spec.text!r}: setting {setting.name} is not swept ({swept}); add its dose/mode")
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult([])
    for i, setting in enumerate(settings):
        log.info("setting %d/%d: %s", i + 1, len(settings), setting.name)
        result.settings.append((setting, _score_setting(cfg, setting, given, out, result.trained)))
        _write_tables(cfg, result, out)  # after every setting: a long sweep can be read while it runs
    plot_dose_curve(result, out / "dose_curve.png")
    return result


def _score_setting(
    cfg: SweepConfig, setting: Setting, given: list[tuple[ModelSpec, Setting | None]], out: Path, trained: list[str]
) -> SettingResult:
    specs = [s for s, where in given if where is None or where == setting]
    models = load_models(specs, cfg.backend, cfg.threads) if specs else []
    try:
        if cfg.trains:
            own, oracle = _trained_rows(cfg, setting, out / "models", trained)
            models = [own, *models, oracle]  # blind and re-opened, the given models, oracle
        sim = setting.simulation(cfg.size, cfg.frames, cfg.seed)
        return score_movie(sim, models, cfg.eval_frames, cfg.bm3d, out / f"quality_{setting.slug}.png")
    finally:
        close_models(models)


def _write_tables(cfg: SweepConfig, result: SweepResult, out: Path) -> None:
    summary = {
        "sweep": cfg.model_dump(mode="json"),
        "trained": result.trained,
        "settings": [{"setting": {"dose": s.dose, "mode": s.mode.value}, **r.to_json()} for s, r in result.settings],
    }
    (out / "quality.json").write_text(json.dumps(summary, indent=2))
    (out / "quality.md").write_text("\n".join(sweep_markdown(result)) + "\n")


def _keys(result: SweepResult) -> list[str]:
    keys: list[str] = []
    for _, r in result.settings:
        keys += [row.key for row in r.rows if row.key not in keys]
    return keys


def _row(r: SettingResult, key: str) -> QualityRow | None:
    return next((row for row in r.rows if row.key == key), None)


def sweep_markdown(result: SweepResult) -> list[str]:
    """The README tables: paper PSNR per setting and method; the re-opened row's gains and calibration."""
    lines = _metric_table(result, "PSNR (dB, paper definition) on held-out simulated movies", "psnr", "{:.2f}")
    lines += ["", *_metric_table(result, "PSNR (dB, fixed range: the clean movie's units)", "psnr_fixed", "{:.2f}")]
    lines += ["", *_metric_table(result, "Pearson r with the truth", "pearson", "{:.4f}")]
    reopened = [(s, row.method, row.reopen) for s, r in result.settings for row in r.rows if row.reopen]
    if reopened:
        lines += [
            "",
            "Re-opened blind spot: gain over the blind output (dB), predicted by the model vs measured against the "
            "truth, calibration (fraction of pixels within +-1 posterior std; 68% nominal) and the self-supervised "
            "noise check (measured/predicted residual variance in the blind spot); the variance head calibrated as "
            f"its card says (`re-opened`: the training data's) and on the movie itself (`{DEFAULT_SUFFIX.strip()}`, "
            "what `emlive denoise` gives):",
            "",
            "| mode | dose | row | predicted | measured | measured/predicted | calibration | "
            f"{EDGE_FRAMES}: predicted / measured | {CHANGING_PIXELS}: predicted / measured | noise check |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s, method, st in reopened:
            e, c = st.regions.get(EDGE_FRAMES, {}), st.regions.get(CHANGING_PIXELS, {})
            check = st.noise_check
            verdict = f"{check.get('ratio', math.nan):.3f} ({'ok' if check.get('ok') else 'FAILED'})"
            lines.append(
                f"| {s.mode.value} | {s.dose:g} | {method} | {st.predicted_gain_db:+.2f} | "
                f"{st.measured_gain_db:+.2f} | {st.ratio:.2f} | {st.calibration:.3f} | {_pair(e)} | {_pair(c)} | "
                f"{verdict} |"
            )
    return lines


def _metric_table(result: SweepResult, title: str, metric: str, fmt: str) -> list[str]:
    keys = _keys(result)
    head = "| mode | dose (e-/px/frame) | " + " | ".join(keys) + " |"
    lines = [f"{title}:", "", head, "|---|---:|" + "---:|" * len(keys)]
    for s, r in result.settings:
        cells = [fmt.format(getattr(row, metric)) if (row := _row(r, k)) else "" for k in keys]
        lines.append(f"| {s.mode.value} | {s.dose:g} | " + " | ".join(cells) + " |")
    return lines


def _pair(numbers: dict[str, float]) -> str:
    return f"{numbers.get('predicted_gain_db', math.nan):+.2f} / {numbers.get('measured_gain_db', math.nan):+.2f}"


def plot_dose_curve(result: SweepResult, path: Path) -> None:
    """PSNR against dose (log x), one line per method, one panel per detector mode: the paper's PSNR (each image
    stretched to its own min..max) on top, the fixed-range PSNR (the clean movie's units) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(s.mode for s, _ in result.settings))
    metrics = (("psnr", "PSNR [dB] (paper definition)"), ("psnr_fixed", "PSNR [dB] (fixed range)"))
    fig, axes = plt.subplots(len(metrics), len(modes), figsize=(7 * len(modes), 9), squeeze=False)
    for col, mode in enumerate(modes):
        points = [(s.dose, r) for s, r in result.settings if s.mode is mode]
        for (metric, name), ax in zip(metrics, axes[:, col], strict=True):
            for key in _keys(result):
                xy = [(d, getattr(row, metric)) for d, r in points if (row := _row(r, key))]
                if xy:
                    ax.plot(*zip(*sorted(xy), strict=True), marker="o", label=key)
            ax.set_xscale("log")
            ax.set_xlabel("dose [e-/px/frame]")
            ax.set_ylabel(name)
            ax.set_title(f"{mode.value} detector")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
