"""PNG pictures of the analysis results (matplotlib's object API with the Agg canvas: no GUI, no global state)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emlive.core.errors import InputFileError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from emlive.analysis.evaluate import EvaluationReport
    from emlive.analysis.noise_stats import NoiseCorrelation

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


def _display_limits(image: np.ndarray) -> tuple[float, float]:
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
            lo, hi = _display_limits(image)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{name}, frame {report.preview_frame} (centre crop)")
            ax.set_axis_off()
    return _save(fig, path)
