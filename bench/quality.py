"""Denoising quality against the strongest peers, on a held-out simulated movie with known ground truth.

Methods, all scored on the same frames with the paper's PSNR/SSIM, the fixed-range variants and the Pearson
correlation with the truth: raw, the N-frame temporal average, a Gaussian filter with the oracle-best sigma, BM3D
(the strongest classical single-frame denoiser; Poisson data go through the generalized Anscombe transform first,
and its sigma is oracle-tuned too) and every model given (``-m [LABEL=]PATH[@flips|@dihedral]``,
:mod:`emlive.bench.model_specs`; default: the shipped teacher and CPU-live student) through the inference runtime,
each a row of the same table. A model spec ending in ``@flips``/``@dihedral`` denoises with a geometric
self-ensemble (:func:`emlive.core.ensemble.ensemble_average`), e.g. the ensembled teacher a student was distilled
from. The models denoise the scored frames only (``seconds_per_frame`` is per scored frame, after one untimed
warm-up call).

``bm3d`` is a benchmark-only dependency (the ``bench`` extra).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emlive.analysis.baselines import best_gaussian, temporal_average
from emlive.bench.model_specs import ModelSpec, model_labels, parse_model_specs
from emlive.core.ensemble import Ensemble, ensemble_average, ensemble_for
from emlive.core.errors import ConfigError, EmliveError
from emlive.core.metrics import pearson_r, psnr_fixed, psnr_paper, ssim_fixed, ssim_paper
from emlive.core.modelcard import ModelCard
from emlive.core.simulate import CorrelatedNoise, SimulationConfig, simulate_movie
from emlive.core.windows import stack_window, window_indices
from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)


@dataclass
class QualityRow:
    """One method's scores: means over the scored frames, and the per-frame values."""

    method: str
    psnr: float
    ssim: float
    psnr_fixed: float
    ssim_fixed: float
    seconds_per_frame: float
    pearson: float = float("nan")
    psnr_frames: list[float] = field(default_factory=list)  # paper PSNR of each scored frame
    ssim_frames: list[float] = field(default_factory=list)
    pearson_frames: list[float] = field(default_factory=list)
    model: str | None = None  # the model file, for a model row
    ensemble: str = Ensemble.none.value
    backend: str | None = None


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Variance-stabilising transform of Poisson counts (unit variance)."""
    return 2.0 * np.sqrt(np.maximum(counts, 0.0) + 3.0 / 8.0)


def inverse_anscombe(d: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011)."""
    d = np.maximum(d, 1.0)
    s = np.sqrt(1.5)
    return 0.25 * d**2 + 0.25 * s / d - 1.375 / d**2 + 0.625 * s / d**3 - 0.125


def bm3d_poisson(frame: np.ndarray, gain: float, offset: float, sigma: float) -> np.ndarray:
    """BM3D of a Poisson frame in counts-with-gain-and-offset units, through the Anscombe transform."""
    try:
        import bm3d
    except ImportError as exc:
        raise EmliveError("BM3D needs the 'bm3d' package: pip install 'emlive[bench]'") from exc
    electrons = (frame.astype(np.float64) - offset) / gain
    stab = anscombe(electrons)
    den = bm3d.bm3d(stab, sigma_psd=sigma)
    return (inverse_anscombe(np.asarray(den)) * gain + offset).astype(np.float32)


def _score(
    method: str, clean: np.ndarray, test: np.ndarray, frames: list[int], data_range: float, seconds: float
) -> QualityRow:
    psnr = [psnr_paper(clean[t], test[t]) for t in frames]
    ssim = [ssim_paper(clean[t], test[t]) for t in frames]
    pearson = [pearson_r(clean[t], test[t]) for t in frames]
    return QualityRow(
        method,
        float(np.mean(psnr)),
        float(np.mean(ssim)),
        float(np.mean([psnr_fixed(clean[t], test[t], data_range) for t in frames])),
        float(np.mean([ssim_fixed(clean[t], test[t], data_range) for t in frames])),
        seconds,
        pearson=float(np.mean(pearson)),
        psnr_frames=psnr,
        ssim_frames=ssim,
        pearson_frames=pearson,
    )


BASELINE_NAMES = ("raw", "5-frame average", "ground truth")
BASELINE_PREFIXES = ("gaussian (oracle sigma", "BM3D+Anscombe (")


@dataclass
class _Model:
    label: str
    spec: ModelSpec
    denoiser: Denoiser


def _checked_ensemble(spec: ModelSpec, card: ModelCard) -> Ensemble:
    """The spec's self-ensemble when it suits the model (for a student: its teacher's blind spot and noise)."""
    blind_spot, noise = card.blind_spot, card.noise
    if card.teacher is not None:
        blind_spot, noise = card.teacher.blind_spot, noise or card.teacher.noise
    try:
        return ensemble_for(spec.ensemble, blind_spot, noise.kernel if noise else None)
    except EmliveError as exc:
        raise type(exc)(f"-m {spec.text!r}: {exc}") from exc


def load_models(specs: list[ModelSpec], backend: str, threads: int | None = None) -> list[_Model]:
    """Every model loaded and labelled, its self-ensemble checked: errors come before any scoring starts."""
    loaded: list[tuple[ModelSpec, Denoiser]] = []
    try:
        for spec in specs:
            assert spec.path is not None, "bench-quality takes model files only"
            den = Denoiser.load(spec.path, backend=backend, threads=threads)
            loaded.append((spec, den))
            _checked_ensemble(spec, den.card)
    except EmliveError:
        for _, den in loaded:
            den.close()
        raise
    labels = model_labels(specs, [den.card.name for _, den in loaded])
    for label in labels:
        if label in BASELINE_NAMES or label.startswith(BASELINE_PREFIXES):
            for _, den in loaded:
                den.close()
            raise ConfigError(f"-m label {label!r} is the name of a baseline row; give the model another label")
    return [_Model(label, spec, den) for label, (spec, den) in zip(labels, loaded, strict=True)]


def denoise_frames(noisy: np.ndarray, frames: list[int], denoiser: Denoiser, ensemble: Ensemble) -> np.ndarray:
    """A copy of ``noisy`` with ``frames`` denoised (each from its window, averaged over ``ensemble``)."""
    out = noisy.copy()
    for t in frames:
        window = stack_window(noisy, window_indices(t, denoiser.frames, len(noisy)))
        out[t] = ensemble_average(window, ensemble, denoiser.denoise_window)
    return out


def _baselines(
    noisy: np.ndarray, clean: np.ndarray, idx: list[int], sim: SimulationConfig, bm3d: bool
) -> list[tuple[str, np.ndarray, float]]:
    """(method, movie, seconds per frame) of raw, the 5-frame average, the oracle Gaussian and BM3D."""
    frames = len(noisy)
    out: list[tuple[str, np.ndarray, float]] = [("raw", noisy, 0.0)]
    t0 = time.perf_counter()
    avg = temporal_average(noisy, 5)
    out.append(("5-frame average", avg, (time.perf_counter() - t0) / frames))
    t0 = time.perf_counter()
    sigma, gauss = best_gaussian(noisy, clean, psnr_paper, frames=idx)
    out.append((f"gaussian (oracle sigma {sigma:g})", gauss, (time.perf_counter() - t0) / frames))
    if bm3d:
        best: tuple[float, np.ndarray, float, float] | None = None
        for mult in (0.75, 1.0, 1.5):
            t0 = time.perf_counter()
            movie = noisy.copy()
            for i, t in enumerate(idx):
                movie[t] = bm3d_poisson(noisy[t], sim.gain, sim.offset, mult)
                log.info("bm3d sigma %.2f: frame %d/%d", mult, i + 1, len(idx))
            per_frame = (time.perf_counter() - t0) / len(idx)
            score = float(np.mean([psnr_paper(clean[t], movie[t]) for t in idx]))
            if best is None or score > best[0]:
                best = (score, movie, mult, per_frame)
        assert best is not None
        out.append((f"BM3D+Anscombe (oracle sigma {best[2]:g})", best[1], best[3]))
    return out


def run_quality_benchmark(
    models: list[ModelSpec] | None,
    out: Path,
    size: int = 512,
    frames: int = 64,
    dose: float = 5.0,
    correlated: CorrelatedNoise = CorrelatedNoise.NONE,
    eval_frames: int = 8,
    bm3d: bool = True,
    seed: int = 1001,
    backend: str = "auto",
    threads: int | None = None,
) -> list[QualityRow]:
    """Score every method and model on ``eval_frames`` frames spread over a fresh simulated movie (seed unseen in
    training); writes quality.json (per-frame values too) and quality.png in ``out``."""
    loaded = load_models(models if models is not None else parse_model_specs(None), backend, threads)
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulationConfig(height=size, width=size, frames=frames, dose=dose, correlated_noise=correlated, seed=seed)
    noisy_raw, clean = simulate_movie(sim)
    noisy = noisy_raw.astype(np.float32)
    idx = [int(i) for i in np.linspace(2, frames - 3, eval_frames).round()]
    data_range = float(clean.max() - clean.min())
    rows: list[QualityRow] = []
    results: dict[str, np.ndarray] = {}

    def add(name: str, movie: np.ndarray, seconds: float) -> QualityRow:
        rows.append(_score(name, clean, movie, idx, data_range, seconds))
        results[name] = movie
        log.info("%-28s PSNR %.2f dB, r %.4f", name, rows[-1].psnr, rows[-1].pearson)
        return rows[-1]

    for name, movie, seconds in _baselines(noisy, clean, idx, sim, bm3d):
        add(name, movie, seconds)
    try:
        for m in loaded:
            denoise_frames(noisy, idx[:1], m.denoiser, Ensemble.none)  # untimed warm-up (session, first shape)
            t0 = time.perf_counter()
            den = denoise_frames(noisy, idx, m.denoiser, m.spec.ensemble)
            row = add(m.label, den, (time.perf_counter() - t0) / len(idx))
            row.model, row.ensemble, row.backend = str(m.spec.path), m.spec.ensemble.value, m.denoiser.backend
    finally:
        for m in loaded:
            m.denoiser.close()
    _write_json(out / "quality.json", sim, loaded, idx, rows)
    _plot(out / "quality.png", noisy, clean, results, idx, rows)
    return rows


def _write_json(
    path: Path, sim: SimulationConfig, loaded: list[_Model], idx: list[int], rows: list[QualityRow]
) -> None:
    cards = [json.loads(m.denoiser.card.to_json()) for m in loaded]
    models = [
        {"label": m.label, "path": str(m.spec.path), "ensemble": m.spec.ensemble.value, "card": card}
        for m, card in zip(loaded, cards, strict=True)
    ]
    summary = {
        "simulation": sim.model_dump(mode="json"),
        "model": models[0]["path"] if models else None,  # the first model (the single-model report's fields)
        "card": cards[0] if cards else None,
        "models": models,
        "frames_scored": idx,
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(summary, indent=2))


def _plot(
    path: Path,
    noisy: np.ndarray,
    clean: np.ndarray,
    results: dict[str, np.ndarray],
    idx: list[int],
    rows: list[QualityRow],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = idx[len(idx) // 2]
    names = [*results.keys(), "ground truth"]
    images = [*[m[t] for m in results.values()], clean[t]]
    h, w = clean.shape[1:]
    c = min(192, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    lo, hi = np.percentile(clean[t], [0.5, 99.5])
    fig, axes = plt.subplots(2, (len(names) + 1) // 2 + 1, figsize=(4 * ((len(names) + 1) // 2 + 1), 8))
    flat = axes.ravel()
    by_name = {r.method: r for r in rows}
    for ax, name, img in zip(flat, names, images, strict=False):
        ax.imshow(img[y0 : y0 + c, x0 : x0 + c], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row = by_name.get(name)
        ax.set_title(f"{name}\n{row.psnr:.2f} dB, r {row.pearson:.3f}" if row else name, fontsize=9)
        ax.axis("off")
    ax = flat[-1]
    ax.axis("on")
    for r in rows:  # every method's per-frame curve
        ax.plot(idx, r.psnr_frames, marker="o", label=r.method)
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR [dB] (paper definition)")
    ax.legend(fontsize=7)
    for extra in flat[len(names) : -1]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(rows: list[QualityRow]) -> list[str]:
    """The rows as aligned text lines (the CLI echoes them)."""
    width = max([40, *(len(r.method) for r in rows)])
    head = f"{'method':<{width}} {'PSNR':>7} {'SSIM':>7} {'PSNRfix':>8} {'SSIMfix':>8} {'r':>7} {'s/frame':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.method:<{width}} {r.psnr:>7.2f} {r.ssim:>7.4f} {r.psnr_fixed:>8.2f} {r.ssim_fixed:>8.4f} "
            f"{r.pearson:>7.4f} {r.seconds_per_frame:>8.3f}"
        )
    return lines
