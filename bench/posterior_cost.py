"""What the posterior costs beside inference: ``python -m emlive.bench.posterior_cost [--width 16] [--sizes 256,512]``.

A random-weight ``network.head=gaussian`` model with a noise model in its card, on the CPU (onnx_cpu, one thread):
``denoise_window`` with the blind estimate and with the posterior, interleaved, and the estimate step alone
(:func:`emlive.export.estimates.estimate_frame`: the posterior, and the blind estimate with its uncertainty map)
on a (2, H, W) network output. Medians in ms, as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sys.stdout.write(json.dumps(measure(args.width, sizes, args.repeats), indent=2) + "\n")


if __name__ == "__main__":
    main()
