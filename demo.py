"""``emlive demo``: the whole offline job on generated data, end to end.

Simulate an in-situ movie, train the ``synthetic-small`` config on its noisy frames alone, denoise the movie
through the inference runtime (whole frames), and report PSNR/SSIM of the raw movie, the 5-frame average, the
best Gaussian filter and the trained model against the simulator's ground truth, with a before/after PNG.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emlive.analysis.baselines import best_gaussian, temporal_average
from emlive.core.metrics import psnr_paper, ssim_paper
from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.core.writers import write_movie
from emlive.export.runtime import Denoiser
from emlive.train.api import train
from emlive.train.config import load_config

log = logging.getLogger(__name__)


@dataclass
class MethodScore:
    method: str
    psnr: float
    ssim: float


def score_movie(clean: np.ndarray, test: np.ndarray, frames: list[int]) -> tuple[float, float]:
    """Mean paper PSNR and SSIM over ``frames``."""
    psnr = float(np.mean([psnr_paper(clean[t], test[t]) for t in frames]))
    ssim = float(np.mean([ssim_paper(clean[t], test[t]) for t in frames]))
    return psnr, ssim


def compare_methods(
    noisy: np.ndarray, clean: np.ndarray, denoised: np.ndarray, frames: list[int], n_frames: int = 5
) -> list[MethodScore]:
    """Raw, N-frame average, best Gaussian (oracle sigma) and the model, on the same frames."""
    scores = [MethodScore("raw", *score_movie(clean, noisy, frames))]
    scores.append(
        MethodScore(f"{n_frames}-frame average", *score_movie(clean, temporal_average(noisy, n_frames), frames))
    )
    sigma, gauss = best_gaussian(noisy, clean, psnr_paper, frames=frames[:: max(1, len(frames) // 8)])
    scores.append(MethodScore(f"gaussian (best sigma {sigma:g})", *score_movie(clean, gauss, frames)))
    scores.append(MethodScore("emlive model", *score_movie(clean, denoised, frames)))
    return scores


def save_before_after(path: Path, noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray, crop: int = 256) -> Path:
    """Noisy | denoised | clean crops side by side, each with percentile contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = noisy.shape
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    lo, hi = np.percentile(clean, [0.5, 99.5])
    for ax, (title, img) in zip(
        axes, (("raw", noisy), ("emlive (denoised)", denoised), ("ground truth", clean)), strict=True
    ):
        ax.imshow(img[y0 : y0 + c, x0 : x0 + c], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_offline_demo(
    out: Path, size: int = 512, frames: int = 64, dose: float = 5.0, overrides: list[str] | None = None
) -> list[MethodScore]:
    out.mkdir(parents=True, exist_ok=True)
    log.info("1/4 simulating a %dx%d x %d-frame movie at %g e-/px/frame", size, size, frames, dose)
    sim = SimulationConfig(height=size, width=size, frames=frames, dose=dose, seed=7)
    files = write_simulation(sim, out / "data")
    log.info("2/4 training synthetic-small on the noisy movie only")
    cfg = load_config(
        "synthetic-small",
        [
            f"data.train={files.noisy}",
            f"data.clean={files.clean}",
            f"output.root={out / 'runs'}",
            *(overrides or []),
        ],
    )
    result = train(cfg)
    log.info("3/4 denoising the movie with %s", result.model)
    denoiser = Denoiser.load(result.model)
    with open_movie(files.noisy) as noisy_movie, open_movie(files.clean) as clean_movie:
        noisy = np.asarray(noisy_movie[:], dtype=np.float32)
        clean = np.asarray(clean_movie[:], dtype=np.float32)
    denoised = np.empty_like(noisy)
    for t, frame in denoiser.denoise_movie(noisy):
        denoised[t] = frame
    write_movie(out / "denoised.tif", denoised)
    log.info("4/4 scoring against the ground truth")
    scores = compare_methods(noisy, clean, denoised, list(range(len(noisy))), cfg.network.frames)
    save_before_after(
        out / "before_after.png", noisy[len(noisy) // 2], denoised[len(noisy) // 2], clean[len(noisy) // 2]
    )
    (out / "scores.json").write_text(json.dumps([s.__dict__ for s in scores], indent=2))
    return scores
