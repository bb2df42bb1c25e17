"""Per-frame correlation with the truth: the old edge-mirrored windows against the leak-free windows.

The old windows (``_old_mirrored``, the reflection about the movie's edge that emlive used before issue 12) put
the center frame into a neighbour slot for the second and the second-to-last frame (frame 1 read 1,0,1,2,3).
Neighbour slots go through ordinary convolutions, so the center frame's own noise reaches the output past the
blind spot, and training on such windows rewards copying it. This benchmark simulates a short movie with known
truth and reports, for every frame, the Pearson correlation of the output with the clean frame (and of the raw
frame, for scale), for:

* the shipped model (trained before the fix) run with the old and with the new windows (inference alone);
* a model trained here on the movie itself (a small ``synthetic-small``-like network, ``--epochs``: the
  situation of the issue) once with the old windows in training and inference ("before") and once with the new
  ones ("after"), and the "before" model run with the new windows.

It writes ``window_leak.json`` and ``window_leak.png`` into ``--out``.

    python -m emlive.bench.window_leak --out runs/window_leak                          # 24 frames: 7 min
    python -m emlive.bench.window_leak --out runs/window_leak6 --frames 6 --epochs 6  # 6 frames: 3 min

(times on 2 CPU cores shared with other work; almost all of it is the two trainings, ``--epochs 0`` skips them).
Measured on 2026-12-01 (seed 1001, 256 x 256, 5 e-/px/frame): with the 6-frame movie, the model trained on the
old windows correlated 0.79-0.85 with the truth (0.79 on frames 0 and 5), the one trained on the leak-free
windows 0.865-0.871 on every frame; run with the new windows, the old-window model fell to 0.79 on frames 1 and 4
as well (one training seed each). On the 24-frame movie neither the shipped model nor the 2-epoch models
learned to copy (frames 1 and 22 within 0.01 of the others either way).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.core.windows import stack_window, window_indices
from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "synthetic-small.pt"
Window = Callable[[int, int, int], Sequence[int | None]]


def _old_mirrored(t: int, n_frames: int, length: int) -> list[int | None]:
    """The window emlive used before issue 12 (for comparison only): reflection about the movie's edge frames."""
    half = n_frames // 2
    if length == 1:
        return [0 for _ in range(n_frames)]
    period = 2 * (length - 1)
    out: list[int | None] = []
    for i in range(t - half, t + half + 1):
        i %= period
        out.append(i if i < length else period - i)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two frames (float64)."""
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def correlations(model: Path, noisy: np.ndarray, clean: np.ndarray, window: Window) -> list[float]:
    """Correlation with the truth of every frame denoised by ``model`` from the windows ``window`` gives."""
    with Denoiser.load(model, threads=2) as denoiser:
        if window is window_indices:  # the product's own path
            out = dict(denoiser.denoise_movie(noisy))
        else:
            n, length = denoiser.frames, len(noisy)
            out = {t: denoiser.denoise_window(stack_window(noisy, window(t, n, length))) for t in range(length)}
    return [round(pearson(out[t], clean[t]), 4) for t in range(len(noisy))]


@contextmanager
def _old_training_windows() -> Iterator[None]:
    """Train with the old windows (the "before" model): swaps the window function the training data reads."""
    import emlive.train.data as data

    saved = data.window_indices
    data.window_indices = _old_mirrored
    try:
        yield
    finally:
        data.window_indices = saved


# A synthetic-small-like network, small enough to train in about a minute on 2 busy CPU cores (synthetic-small
# itself takes about 1 s a step there, 15 minutes for a model).
TRAIN_OVERRIDES = ["network.width=8", "network.scales=2", "network.blocks=1", "data.crop_size=48",
                   "data.val_crop_size=64", "optim.recursive_factor=64", "optim.learning_rate=0.003"]  # fmt: skip


def train_on(noisy_file: Path, out: Path, epochs: int, *, old: bool) -> Path:
    """A small ``synthetic-small``-like model trained on the movie for ``epochs`` epochs; the model file."""
    from emlive.train.api import train
    from emlive.train.config import load_config

    overrides = [f"data.train={noisy_file}", "data.clean=null", f"output.root={out}", f"optim.epochs={epochs}",
                 "optim.max_minutes=4", *TRAIN_OVERRIDES]  # fmt: skip
    cfg = load_config("synthetic-small", overrides)
    log.info("training %s with the %s windows (%d epochs)", cfg.name, "old" if old else "leak-free", epochs)
    if old:
        with _old_training_windows():
            return train(cfg).model
    return train(cfg).model


def run_window_leak(
    out: Path, *, model: Path, frames: int, size: int, dose: float, seed: int, epochs: int
) -> dict[str, Any]:
    """Simulate, denoise every frame every way, score each against the truth; write JSON and PNG."""
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulationConfig(height=size, width=size, frames=frames, dose=dose, seed=seed)
    files = write_simulation(sim, out / "movie")
    with open_movie(files.noisy) as m:
        noisy = np.asarray(m[:])
    with open_movie(files.clean) as m:
        clean = np.asarray(m[:], dtype=np.float64)
    log.info("simulated %d frames of %dx%d at %g e-/px/frame (seed %d)", frames, size, size, dose, seed)
    columns: dict[str, list[float]] = {"raw": [round(pearson(noisy[t], clean[t]), 4) for t in range(frames)]}
    columns["shipped_old_windows"] = correlations(model, noisy, clean, _old_mirrored)
    columns["shipped_new_windows"] = correlations(model, noisy, clean, window_indices)
    if epochs > 0:
        before = train_on(files.noisy, out / "train-old", epochs, old=True)
        after = train_on(files.noisy, out / "train-new", epochs, old=False)
        columns["trained_before"] = correlations(before, noisy, clean, _old_mirrored)
        columns["trained_after"] = correlations(after, noisy, clean, window_indices)
        columns["trained_before_model_new_windows"] = correlations(before, noisy, clean, window_indices)
    rows = [
        {"frame": t, "old_window": _old_mirrored(t, 5, frames), "new_window": window_indices(t, 5, frames)}
        | {name: values[t] for name, values in columns.items()}
        for t in range(frames)
    ]
    for row in rows:
        log.info("frame %2d: %s", row["frame"], "  ".join(f"{k} {row[k]:.4f}" for k in columns))
    result = {
        "simulation": sim.model_dump(mode="json"),
        "shipped_model": str(model),
        "epochs": epochs,
        "frames": rows,
        "min": {name: min(values) for name, values in columns.items()},
    }
    (out / "window_leak.json").write_text(json.dumps(result, indent=2))
    _plot(out / "window_leak.png", columns)
    log.info("wrote %s and %s", out / "window_leak.json", out / "window_leak.png")
    return result


LABELS = {
    "raw": "raw frame",
    "shipped_old_windows": "shipped model, old windows",
    "shipped_new_windows": "shipped model, leak-free windows",
    "trained_before": "trained here, old windows (before)",
    "trained_after": "trained here, leak-free windows (after)",
    "trained_before_model_new_windows": "trained with old windows, run with leak-free ones",
}


def _plot(path: Path, columns: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, values in columns.items():
        style = {"linestyle": "--", "color": "gray"} if name == "raw" else {"marker": "o", "markersize": 3}
        ax.plot(range(len(values)), values, label=LABELS.get(name, name), **style)
    ax.set_xlabel("frame")
    ax.set_ylabel("Pearson correlation with the truth")
    ax.set_title(f"per-frame correlation with the truth, {len(columns['raw'])}-frame movie")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m emlive.bench.window_leak", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="shipped checkpoint or ONNX model")
    parser.add_argument("--out", type=Path, default=Path("runs/window_leak"), help="folder for the JSON and PNG")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dose", type=float, default=5.0, help="electrons per pixel per frame")
    parser.add_argument("--seed", type=int, default=1001, help="simulation seed (1001: never seen in training)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each training on the movie (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_window_leak(
        args.out, model=args.model, frames=args.frames, size=args.size, dose=args.dose, seed=args.seed,
        epochs=args.epochs,
    )  # fmt: skip


if __name__ == "__main__":
    main()
