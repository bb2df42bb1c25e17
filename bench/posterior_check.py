"""Does the Gaussian head pay, and does it know how much? Posterior vs blind on a held-out simulated movie.

Simulates a movie the model was not trained on (``--seed``) at ``--dose`` e-/px/frame with the ``--detector``
(counting: gain 1, independent pixels; integrating: gain 8, offset 100, read noise 3, isotropic charge sharing),
runs the model (a ``network.head=gaussian`` checkpoint) on every frame and prints JSON with, per frame and mean:

* the blind (prior mean) and the posterior mean's PSNR, fixed-range (the clean movie's range) and paper
  (min-max normalised), and the measured gain 10 log10(MSE_blind / MSE_posterior) against the truth;
* the gain the model predicts without the truth (:func:`emlive.core.posterior.predicted_gain_db`) and the ratio
  measured / predicted (the issue's target: >= 0.8);
* the calibration: the share of pixels whose true error is within +-1 posterior std (68% nominal), and of the
  blind output within +-1 prior std;
* the self-supervised :class:`~emlive.core.posterior.NoiseCheck` (and, with ``--wrong-gain F``, the check and the
  posterior under a noise model whose gain is F times the card's: the check must flag it);
* the variance head as the runtime uses it, with the card's recalibration
  (:class:`~emlive.core.posterior.PriorCalibration`, measured on the training data) when it has one, and under
  "head_as_trained" the same without it;
* with ``--compare MODEL`` (a plain mean-head model trained at the same budget): its blind PSNR, so the report
  can say whether the variance head cost blind quality.

    python -m emlive.bench.posterior_check runs/pc/gauss5/model.pt --dose 5 --compare runs/pc/mean5/model.pt

Runs on the CPU (torch); a 256 x 256 x 12 movie takes about a minute on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emlive.bench.dose_sweep import DetectorMode
from emlive.core.metrics import psnr_fixed, psnr_paper
from emlive.core.modelcard import load_checkpoint
from emlive.core.networks import AnyNetwork
from emlive.core.normalize import frame_stats
from emlive.core.posterior import (
    NoiseCheck,
    PixelNoise,
    PriorCalibration,
    posterior,
    predicted_gain_db,
    to_counts,
)
from emlive.core.simulate import SyntheticMovie, make_config
from emlive.core.windows import window_indices

log = logging.getLogger(__name__)


def simulate(dose: float, detector: str, size: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) float64 arrays (T, H, W) of a held-out simulated movie."""
    mode = DetectorMode(detector)  # the sweep's table of detector settings: one place
    cfg = make_config(height=size, width=size, frames=frames, dose=dose, seed=seed, **mode.detector())
    movie = SyntheticMovie(cfg)
    noisy = np.stack([np.asarray(movie[t]) for t in range(frames)]).astype(np.float64)
    clean = np.stack([movie.clean(t) for t in range(frames)]).astype(np.float64)
    return noisy, clean


def network_outputs(net: AnyNetwork, noisy: np.ndarray, n_frames: int) -> np.ndarray:
    """The network's raw outputs (T, C, H, W), in counts: channel 0 the blind mean, channel 1 (a Gaussian head)
    the log prior variance. Frames are z-scored with their own whole-frame statistics, as at inference."""
    mean, std = frame_stats(noisy)
    z = ((noisy - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    outs = []
    with torch.no_grad():
        for t in range(len(noisy)):
            idx = window_indices(t, n_frames, len(noisy))
            window = np.stack([z[i] if i is not None else np.zeros_like(z[t]) for i in idx])
            outs.append(net(torch.from_numpy(window)[None])[0].double().numpy())
    out = np.stack(outs)
    mu, log_var = to_counts(out[:, 0], out[:, -1], mean[:, None, None], std[:, None, None])
    return np.stack([mu, log_var], axis=1) if out.shape[1] == 2 else mu[:, None]


def _psnrs(clean: np.ndarray, test: np.ndarray, data_range: float) -> dict[str, list[float]]:
    return {
        "psnr_fixed": [psnr_fixed(c, x, data_range) for c, x in zip(clean, test, strict=True)],
        "psnr_paper": [psnr_paper(c, x) for c, x in zip(clean, test, strict=True)],
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def evaluate(
    mu: np.ndarray, log_var: np.ndarray, noisy: np.ndarray, clean: np.ndarray, noise: PixelNoise
) -> dict[str, Any]:
    """Blind vs posterior against the truth, the predicted gain, the calibration and the noise check."""
    data_range = float(clean.max() - clean.min())
    post = posterior(mu, log_var, noisy, noise)
    blind_err2 = ((mu - clean) ** 2).mean(axis=(1, 2))
    post_err2 = ((post.mean - clean) ** 2).mean(axis=(1, 2))
    measured = [10 * np.log10(b / p) for b, p in zip(blind_err2, post_err2, strict=True)]
    prior_var, noise_var = post.prior_std.astype(np.float64) ** 2, post.noise_std.astype(np.float64) ** 2
    predicted = [predicted_gain_db(pv, nv) for pv, nv in zip(prior_var, noise_var, strict=True)]
    blind, reopened = _psnrs(clean, mu, data_range), _psnrs(clean, post.mean, data_range)
    total_measured = 10 * np.log10(blind_err2.mean() / post_err2.mean())
    total_predicted = predicted_gain_db(prior_var, noise_var)
    check = NoiseCheck.measure(mu, log_var, noisy, noise)
    return {
        "blind": {k: _mean(v) for k, v in blind.items()},
        "posterior": {k: _mean(v) for k, v in reopened.items()},
        "gain_db": {
            "measured": float(total_measured),
            "predicted": float(total_predicted),
            "measured_over_predicted": float(total_measured / total_predicted) if total_predicted > 0 else None,
            "per_frame_measured": [round(float(v), 4) for v in measured],
            "per_frame_predicted": [round(v, 4) for v in predicted],
        },
        "calibration": {
            "posterior_within_1std": float(np.mean(np.abs(clean - post.mean) < post.std)),
            "blind_within_1prior_std": float(np.mean(np.abs(clean - mu) < post.prior_std)),
        },
        "per_frame": {
            "blind_psnr_fixed": [round(v, 3) for v in blind["psnr_fixed"]],
            "posterior_psnr_fixed": [round(v, 3) for v in reopened["psnr_fixed"]],
        },
        "noise_check": check.to_dict(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    net, card = load_checkpoint(args.model)
    net.eval()
    if card.noise is None or getattr(card.network, "head", "mean") != "gaussian":
        raise SystemExit(f"{args.model}: not a network.head=gaussian model with a noise model in its card")
    noise = PixelNoise.from_card(card.noise)
    noisy, clean = simulate(args.dose, args.detector, args.size, args.frames, args.seed)
    out = network_outputs(net, noisy, card.frames)
    mu, head_log_var = out[:, 0], out[:, 1]
    calibration = None if card.prior_calibration is None else PriorCalibration.from_card(card.prior_calibration)
    log_var = head_log_var
    if calibration is not None:  # on the head's output in z-units, as the runtime
        log_std2 = 2.0 * np.log(frame_stats(noisy)[1])[:, None, None]
        log_var = calibration.apply(head_log_var - log_std2) + log_std2
    report: dict[str, Any] = {
        "model": str(args.model),
        "movie": {k: getattr(args, k) for k in ("dose", "detector", "size", "frames", "seed")},
        "raw_psnr_fixed": _mean(_psnrs(clean, noisy, float(clean.max() - clean.min()))["psnr_fixed"]),
        "noise_model": asdict(noise),
        **evaluate(mu, log_var, noisy, clean, noise),
    }
    if calibration is not None:
        raw = evaluate(mu, head_log_var, noisy, clean, noise)
        report["head_as_trained"] = {
            "posterior": raw["posterior"],
            "gain_db": {k: v for k, v in raw["gain_db"].items() if not k.startswith("per_frame")},
            "calibration": raw["calibration"],
        }
    if args.wrong_gain:
        wrong = replace(noise, slope=noise.slope * args.wrong_gain, intercept=noise.intercept * args.wrong_gain)
        bad = evaluate(mu, log_var, noisy, clean, wrong)
        report["wrong_gain"] = {
            "factor": args.wrong_gain,
            "noise_check": bad["noise_check"],
            "gain_db_measured": bad["gain_db"]["measured"],
        }
    if args.compare is not None:
        other, other_card = load_checkpoint(args.compare)
        other.eval()
        other_mu = network_outputs(other, noisy, other_card.frames)[:, 0]
        data_range = float(clean.max() - clean.min())
        psnrs = {k: _mean(v) for k, v in _psnrs(clean, other_mu, data_range).items()}
        report["compare"] = {"model": str(args.compare), **psnrs}
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="A network.head=gaussian model (.pt/.ckpt).")
    parser.add_argument("--dose", type=float, required=True, help="Electrons per pixel per frame.")
    parser.add_argument("--detector", choices=[m.value for m in DetectorMode], default=DetectorMode.counting.value)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2001, help="Simulation seed: one the model was not trained on.")
    parser.add_argument("--compare", type=Path, help="A mean-head model trained at the same budget.")
    parser.add_argument("--wrong-gain", type=float, default=2.0, help="Also check a noise model with gain x F.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    report = run(args)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
