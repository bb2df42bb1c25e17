"""What the posterior costs beside inference: ``python -m emlive.bench.posterior_cost [--width 16] [--sizes 256,512]``.

A random-weight ``network.head=gaussian`` model with a noise model in its card, on the CPU (onnx_cpu, one thread):
``denoise_window`` with the blind estimate and with the posterior, interleaved, and the estimate step alone
(:func:`emlive.export.estimates.estimate_frame`: the posterior, and the blind estimate with its uncertainty map)
on a (2, H, W) network output. Medians in ms, as JSON on stdout.

``--against OLD.py`` (another version of ``emlive/core/posterior.py``, e.g. ``git show ca5ddff:core/posterior.py >
/tmp/posterior_f64.py``, the float64 one) also times its ``posterior()`` against the current one on the same
realistic frame, interleaved (the machine's load hits both alike), with the largest difference of the means in
units of each pixel's noise std.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _time(fn: Callable[[], Any], times: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def _one_size(den: Any, size: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    from emlive.core.posterior import Estimate
    from emlive.export.estimates import estimate_frame

    window = (100 + 2 * rng.poisson(50, (den.frames, size, size))).astype(np.uint16)
    z = np.stack([rng.standard_normal((size, size)), rng.standard_normal((size, size)) - 2]).astype(np.float32)
    observed = window[den.frames // 2].astype(np.float32)

    def step(est: Estimate) -> None:
        estimate_frame(z, 150.0, 15.0, lambda: observed, est, den.noise, "frame")

    times: dict[str, list[float]] = {k: [] for k in ("blind", "posterior", "posterior_step", "blind_std_step")}
    den.denoise_window(window)  # warm-up: the session for this shape
    for _ in range(repeats):
        for est in (Estimate.blind, Estimate.posterior):
            den.estimate = est
            _time(lambda: den.denoise_window(window), times[est.value])
        _time(lambda: step(Estimate.posterior), times["posterior_step"])
        _time(lambda: step(Estimate.blind), times["blind_std_step"])
    return {k: round(1e3 * float(np.median(v)), 2) for k, v in times.items()}


def measure(width: int, sizes: list[int], repeats: int) -> dict[str, Any]:
    import torch

    from emlive.core.modelcard import ModelCard, NoiseModel
    from emlive.core.network import BlindSpotNet, NetworkConfig
    from emlive.export.runtime import Denoiser

    torch.manual_seed(0)
    cfg = NetworkConfig(width=width, head="gaussian")
    noise = NoiseModel(method="difference", gain=2.0, offset=100.0, read_noise=3.0, intercept=9.0 - 200.0,
                       kernel=[[1.0]], recommended_blind_spot=(1, 1))  # fmt: skip
    den = Denoiser.from_network(BlindSpotNet(cfg).eval(), ModelCard(network=cfg, noise=noise), "onnx_cpu", threads=1)
    rng = np.random.default_rng(0)
    rows = {f"{size}x{size}": _one_size(den, size, repeats, rng) for size in sizes}
    return {"width": width, "backend": den.backend, "device": den.device, "repeats": repeats, "ms_median": rows}


def _load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("posterior_against", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def against(path: str, size: int, repeats: int) -> dict[str, Any]:
    """Median ms of ``posterior()`` of the module at ``path`` and of the current one, interleaved, on a realistic
    integrating-detector frame (5..200 e-, prior 7x tighter to 7x looser than the noise), and their difference."""
    from emlive.core import posterior as current

    other = _load_module(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(5, 200, (size, size))
    mu = (100 + 2 * x).astype(np.float32)
    log_var = (np.log(4 * x + 9) + rng.uniform(-2, 2, x.shape)).astype(np.float32)
    y = (100 + 2 * rng.poisson(x) + rng.normal(0, 3, x.shape)).astype(np.float32)
    noises = [m.PixelNoise(2.0, 9.0 - 200.0, 100.0, False) for m in (other, current)]
    times: list[list[float]] = [[], []]
    outs: list[Any] = [None, None]
    for i in range(repeats + 2):  # two untimed rounds first
        for k, module in enumerate((other, current)):
            t0 = time.perf_counter()
            outs[k] = module.posterior(mu, log_var, y, noises[k])
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    noise_std = np.sqrt(noises[1].variance(mu))
    diff = np.abs(outs[0].mean.astype(np.float64) - outs[1].mean) / noise_std
    return {
        "size": f"{size}x{size}",
        "ms_median": {"against": round(1e3 * float(np.median(times[0])), 2),
                      "current": round(1e3 * float(np.median(times[1])), 2)},
        "max_abs_diff_in_noise_std": float(diff.max()),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", help="Another core/posterior.py to time posterior() against (A/B).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.against:
        rows = [against(args.against, size, max(args.repeats, 20)) for size in sizes]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    sys.stdout.write(json.dumps(measure(args.width, sizes, args.repeats), indent=2) + "\n")


if __name__ == "__main__":
    main()
