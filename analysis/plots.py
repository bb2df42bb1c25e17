"""PNG pictures of the analysis results (matplotlib's object API with the Agg canvas: no GUI, no global state)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import InputFileError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from emlive.analysis.evaluate import EvaluationReport
    from emlive.analysis.noise_stats import NoiseCorrelation
    from emlive.core.modelcard import VarianceCalibration

log = logging.getLogger(__name__)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(out.suffix + ".png") if out.suffix else out.with_suffix(".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise InputFileError(f"{out}: cannot write the picture ({exc}); choose a writable path") from exc
    log.info("wrote %s", out)
    return out


def plot_noise_correlation(
    corr: NoiseCorrelation,
    blind_spot: tuple[int, int],
    threshold: float,
    path: Path,
    title: str = "",
) -> Path:
    """Heatmap of the correlation (diverging colours centred at 0, blind spot outlined) and correlation versus
    distance (along x, along y, max |corr| per square ring), with the threshold. Returns the PNG's path."""
    from matplotlib.patches import Rectangle

    m = corr.max_distance
    fig = _new_figure(12.5, 5.2)
    ax_map, ax_prof = fig.subplots(1, 2, width_ratios=[1.1, 1.0])

    off_centre = np.abs(corr.correlation).copy()
    off_centre[m, m] = 0.0
    vmax = max(2.0 * threshold, float(off_centre.max()))
    extent = (-m - 0.5, m + 0.5, m + 0.5, -m - 0.5)
    im = ax_map.imshow(corr.correlation, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=extent, interpolation="nearest")
    fig.colorbar(im, ax=ax_map, label="normalised correlation (centre = 1, clipped)")
    h, w = blind_spot
    ax_map.add_patch(
        Rectangle((-w / 2, -h / 2), w, h, fill=False, edgecolor="gold", linewidth=2.0, label=f"blind spot {h}x{w}")
    )
    if m <= 6:
        for dy in range(-m, m + 1):
            for dx in range(-m, m + 1):
                ax_map.text(dx, dy, f"{corr.at(dy, dx):.2f}", ha="center", va="center", fontsize=6)
    ax_map.set_xlabel("dx (px)")
    ax_map.set_ylabel("dy (px)")
    used = f"frames {list(corr.frames)}" if len(corr.frames) <= 4 else f"{corr.pairs} pairs, {len(corr.frames)} frames"
    ax_map.set_title(f"noise correlation ({corr.method}, {used})")
    ax_map.legend(loc="upper right", fontsize=8)

    d = np.arange(m + 1)
    ax_prof.plot(d[1:], corr.along_x[1:], marker="o", label="along x (dy = 0)")
    ax_prof.plot(d[1:], corr.along_y[1:], marker="s", label="along y (dx = 0)")
    ax_prof.plot(d[1:], corr.ring_max[1:], marker="^", color="black", label="max |corr| at ring distance")
    ax_prof.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax_prof.axhline(-threshold, color="red", linestyle="--", linewidth=1)
    ax_prof.axhline(0.0, color="gray", linewidth=0.5)
    ax_prof.set_xlabel("distance (px); ring distance = max(|dy|, |dx|)")
    ax_prof.set_ylabel("correlation")
    ax_prof.set_title(f"correlation versus distance; recommended blind spot {h} x {w}")
    ax_prof.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def display_limits(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1.0, 99.0])
    if not hi > lo:
        lo, hi = float(image.min()), float(image.max()) + 1e-6
    return float(lo), float(hi)


def _series(ax: Axes, x: np.ndarray, values: list[float], **kwargs: object) -> None:
    arr = np.asarray(values, dtype=np.float64)
    ax.plot(x[: arr.size], np.where(np.isfinite(arr), arr, np.nan), **kwargs)  # type: ignore[arg-type]


def plot_evaluation(report: EvaluationReport, path: Path) -> Path:
    """Metrics versus frame index (denoised solid, noisy dashed) and a before/after crop of the middle frame
    (noisy | denoised | clean, each displayed between its own 1st and 99th percentile). Returns the PNG's path."""
    from matplotlib.ticker import MaxNLocator

    has_ref = bool(report.reference)
    n_metric_panels = 3 if has_ref else 1
    crops = [name for name in ("noisy", "denoised", "clean") if name in report.preview]
    fig = _new_figure(5.0 * max(n_metric_panels, len(crops)), 9.0)
    subfigures = np.asarray(fig.subfigures(2, 1, height_ratios=[1.0, 1.2])).ravel()
    top, bottom = subfigures[0], subfigures[1]
    axes = np.atleast_1d(top.subplots(1, n_metric_panels))
    frames = np.arange(report.n_frames)
    styles = {"denoised": "-", "noisy": "--"}

    if has_ref:
        ax_psnr, ax_ssim = axes[0], axes[1]
        for name, series in report.reference.items():
            ls = styles[name]
            _series(ax_psnr, frames, series["psnr_paper"], linestyle=ls, color="C0", label=f"{name} (paper)")
            _series(ax_psnr, frames, series["psnr_fixed"], linestyle=ls, color="C1", label=f"{name} (fixed range)")
            _series(ax_ssim, frames, series["ssim_paper"], linestyle=ls, color="C0", label=f"{name} (paper)")
            _series(ax_ssim, frames, series["ssim_fixed"], linestyle=ls, color="C1", label=f"{name} (fixed range)")
        ax_psnr.set_ylabel("PSNR (dB)")
        ax_ssim.set_ylabel("SSIM")
        for ax in (ax_psnr, ax_ssim):
            ax.set_xlabel("frame")
            ax.legend(fontsize=8)
        ax_psnr.set_title("PSNR against the clean reference")
        ax_ssim.set_title("SSIM against the clean reference")
    ax_snr = axes[-1]
    for name, series in report.snr.items():
        ls = styles[name]
        _series(ax_snr, frames, series["snr_consecutive"], linestyle=ls, color="C2", label=f"{name} SNR(i, i+1)")
        _series(
            ax_snr,
            frames,
            series["snr_offset_n"],
            linestyle=ls,
            color="C3",
            label=f"{name} SNR(i, i+{report.offset_n})",
        )
    ax_snr.set_xlabel("frame i")
    ax_snr.set_ylabel("cross-correlation SNR (dB)")
    ax_snr.set_title("no-reference SNR")
    ax_snr.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    if crops:
        crop_axes = np.atleast_1d(bottom.subplots(1, len(crops)))
        for ax, name in zip(crop_axes, crops, strict=True):
            image = report.preview[name]
            lo, hi = display_limits(image)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{name}, frame {report.preview_frame} (centre crop)")
            ax.set_axis_off()
    return _save(fig, path)


@dataclass
class TrainingCurves:
    """A run's recorded values (emlive.train.curves): one record per epoch (epoch, step, train_loss, val_loss,
    val_psnr; None where not measured) and the training loss every few steps (step, loss)."""

    name: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "steps": self.steps}

    def best_epoch(self) -> int | None:
        """The epoch the best checkpoint comes from: lowest validation loss, else lowest training loss."""
        for key in ("val_loss", "train_loss"):
            scored = [(e[key], e["epoch"]) for e in self.epochs if e.get(key) is not None]
            if scored:
                return int(min(scored)[1])
        return None


def _column(records: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=np.float64)


def plot_training_curves(curves: TrainingCurves, path: Path) -> Path:
    """Training loss per epoch (and every few steps, faint), validation loss, and validation PSNR when measured,
    against the epoch (1 = the end of the first epoch), the best epoch marked. Returns the PNG's path."""
    from matplotlib.ticker import MaxNLocator

    epochs = curves.epochs
    psnr = _column(epochs, "val_psnr")
    has_psnr = bool(np.isfinite(psnr).any())
    fig = _new_figure(12.0 if has_psnr else 7.0, 4.6)
    axes = fig.subplots(1, 2 if has_psnr else 1, squeeze=False, sharex=True)[0]
    x = np.array([e["epoch"] + 1 for e in epochs], dtype=np.float64)
    dot = len(epochs) <= 30  # long runs: lines only
    ax = axes[0]
    if curves.steps and epochs:
        steps_per_epoch = max(1.0, epochs[-1]["step"] / (epochs[-1]["epoch"] + 1))
        step_x = _column(curves.steps, "step") / steps_per_epoch
        ax.plot(step_x, _column(curves.steps, "loss"), color="C0", alpha=0.25, linewidth=0.8, label="training (steps)")
    ax.plot(x, _column(epochs, "train_loss"), color="C0", marker="o" if dot else "", label="training (epoch mean)")
    val = _column(epochs, "val_loss")
    if np.isfinite(val).any():
        ax.plot(x, val, color="C1", marker="s" if dot else "", label="validation")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    if has_psnr:
        axes[1].plot(x, psnr, color="C2", marker="o" if dot else "", label="validation PSNR")
        axes[1].set_ylabel("PSNR (dB) against data.clean")
        axes[1].set_title("validation PSNR")
    best = curves.best_epoch()
    for ax in axes:
        if best is not None:
            ax.axvline(best + 1, color="gray", linestyle="--", linewidth=1, label=f"best epoch {best + 1} (checkpoint)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle(f"{curves.name}: {len(epochs)} epoch(s)")
    return _save(fig, path)


def plot_prior_calibration(table: VarianceCalibration, path: Path) -> Path:
    """The variance head's calibration (a card's ``prior_calibration``) as a reliability diagram: per bin, the prior
    variance the residuals measured against the one the head predicted (network units, log-log), the diagonal
    being a calibrated head. Returns the PNG's path."""
    head = np.exp(np.asarray(table.log_var_z, dtype=np.float64))
    measured = head * np.exp(np.asarray(table.log_scale, dtype=np.float64))
    fig = _new_figure(5.6, 4.8)
    ax = fig.subplots()
    lo, hi = float(min(head.min(), measured.min())) / 1.5, float(max(head.max(), measured.max())) * 1.5
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1, label="a calibrated head")
    ax.plot(head, measured, color="C3", marker="o", label=f"measured ({len(head)} bins of equal size)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prior variance the head predicts (network units)")
    ax.set_ylabel("prior variance the residuals measure")
    ax.legend(fontsize=8)
    fig.suptitle(f"variance head on {table.frames} frames ({table.pixels} px) of {table.source}", fontsize=9)
    return _save(fig, path)


PREVIEW_PANEL_INCHES = 4.0


def preview_figure_size(rows: int, height: int, width: int) -> tuple[float, float]:
    """The before/after picture's size in inches: two panels per row, each PREVIEW_PANEL_INCHES wide."""
    return 2 * PREVIEW_PANEL_INCHES + 0.4, rows * (PREVIEW_PANEL_INCHES * height / width + 0.45) + 0.5


def _nice_length(target: float) -> float:
    exponent = math.floor(math.log10(target))
    return max(m * 10.0**exponent for m in (1.0, 2.0, 5.0) if m * 10.0**exponent <= target)


def _scale_bar(ax: Axes, width: int, height: int, pixel_size_nm: float) -> None:
    from matplotlib.patches import Rectangle

    nm = _nice_length(0.2 * width * pixel_size_nm)
    px = nm / pixel_size_nm
    label = f"{nm / 1000:g} µm" if nm >= 1000 else f"{nm:g} nm"
    x0, y0, thick = 0.05 * width, 0.93 * height, max(1.0, 0.012 * height)
    ax.add_patch(Rectangle((x0, y0), px, thick, color="white", ec="black", linewidth=0.5))
    ax.text(x0 + px / 2, y0 - 1.5 * thick, label, color="white", ha="center", va="bottom", fontsize=9,
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})  # fmt: skip


def plot_preview(
    pairs: list[tuple[int, np.ndarray, np.ndarray]], path: Path, title: str, pixel_size_nm: float | None = None
) -> Path:
    """Raw | denoised, one row per ``(frame index, raw, denoised)``; each pair shown with the same grey scale (the
    denoised frame's 1st and 99th percentiles: the raw frame's noise clips, its signal is comparable), a scale
    bar when the pixel size is known. Returns the PNG's path."""
    if not pairs:
        raise ValueError(f"{path}: no frames to show; the preview needs at least one denoised frame")
    height, width = pairs[0][1].shape
    fig = _new_figure(*preview_figure_size(len(pairs), height, width))
    axes = np.asarray(fig.subplots(len(pairs), 2, squeeze=False))
    for (t, raw, denoised), row in zip(pairs, axes, strict=True):
        lo, hi = display_limits(denoised)
        for ax, name, image in zip(row, ("raw", "denoised"), (raw, denoised), strict=True):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
            ax.set_title(f"{name}, frame {t}", fontsize=10)
            ax.set_axis_off()
            if pixel_size_nm:
                _scale_bar(ax, width, height, pixel_size_nm)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
