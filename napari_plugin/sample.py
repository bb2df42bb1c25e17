"""Sample data for napari (File > Open Sample > emlive): a small simulated in-situ movie and its clean truth, and
the shipped model the Denoise widget starts with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emlive.core.simulate import SimulationConfig, simulate_movie
from emlive.napari_plugin.reader import PIXEL_KEY, layer_geometry

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "synthetic-small.pt"
# 16 frames of 256 x 256 at 5 electrons/px/frame: simulated in about a second, fixed seed (always the same movie)
SAMPLE = SimulationConfig(height=256, width=256, frames=16, dose=5.0, seed=16)


def shipped_model() -> Path:
    """The model the Denoise widget starts with: ``models/synthetic-small.pt``, shipped in the package."""
    return SHIPPED_MODEL


def sample_movie() -> list[tuple[Any, dict[str, Any], str]]:
    """The simulated noisy movie (uint16 counts) and its clean truth (float32, same geometry), as two layers."""
    noisy, clean = simulate_movie(SAMPLE)
    geometry = layer_geometry(SAMPLE.pixel_size_nm)
    meta = {PIXEL_KEY: SAMPLE.pixel_size_nm, "simulation": SAMPLE.model_dump(mode="json")}
    return [
        (noisy, {"name": "simulated noisy", "metadata": meta, **geometry}, "image"),
        (clean, {"name": "simulated clean truth", "metadata": meta, "visible": False, **geometry}, "image"),
    ]
