"""Every window size trains: a crop's tensors equal its arrays whatever the augmentation did (a 1-frame window
reversed in time keeps a negative stride that ``torch.from_numpy`` refuses), and a single-frame model (cryo-EM
micrographs, ``network.frames=1``) trains and denoises end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.export.runtime import Denoiser
from emlive.train.api import train
from emlive.train.config import AugmentConfig, load_config
from emlive.train.data import WindowCrops, crop_tensors, open_sources

from .conftest import SHORT, TINY

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SimulationConfig(height=48, width=48, frames=8, dose=5.0, n_particles=2, radius_min=6.0, radius_max=10.0,
                           seed=11)  # fmt: skip
    return Path(write_simulation(cfg, tmp_path_factory.mktemp("sizes")).noisy)


@pytest.mark.parametrize("n_frames", [1, 3, 5])
def test_every_augmented_crop_becomes_the_same_tensors(movie: Path, n_frames: int) -> None:
    sources = open_sources(movie, None, n_frames, (0.0, 1.0), 1, 32)
    augment = AugmentConfig(flips=True, rot90=True, reverse_frames=True)
    plain = WindowCrops(sources, n_frames, 32, 64, None, seed=3)
    crops = WindowCrops(sources, n_frames, 32, 64, augment, seed=3)
    for i in range(len(crops)):
        window, target = crops[i]
        assert window.shape == (n_frames, 32, 32) and target.shape == (1, 32, 32)
        assert torch.equal(window[n_frames // 2], target[0])
        assert torch.equal(window.sort().values.flatten().sort().values,
                           plain[i][0].sort().values.flatten().sort().values)  # fmt: skip  # the same pixels, moved


def test_crop_tensors_copies_a_reversed_single_frame() -> None:
    frame = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    reversed_window = frame[::-1]  # numpy: contiguous (a length-1 axis), stride negative
    assert reversed_window.flags.c_contiguous and reversed_window.strides[0] < 0
    window, target = crop_tensors(reversed_window, reversed_window[0, ::-1])
    assert np.array_equal(window.numpy(), frame) and np.array_equal(target.numpy()[0], frame[0, ::-1])


def test_a_single_frame_model_trains_and_denoises(movie: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "synthetic-small",
        [f"data.train={movie}", "data.clean=null", f"output.root={tmp_path}", "network.frames=1",
         "output.log_images=false", *TINY, *SHORT],
    )  # fmt: skip
    result = train(cfg)
    assert result.card.network.frames == 1 and (result.card.training.steps or 0) > 0
    frames = np.asarray(np.stack([np.asarray(f) for f in _read(movie)]), dtype=np.float32)
    with Denoiser.load(result.model, backend="torch_cpu", threads=1) as den:
        out = dict(den.denoise_movie(frames))
    assert sorted(out) == list(range(len(frames))) and all(np.isfinite(o).all() for o in out.values())
    assert out[0].shape == frames.shape[1:]


def _read(path: Path) -> list[np.ndarray]:
    from emlive.core.readers import open_movie

    movie = open_movie(path)
    return [movie.frame(t) for t in range(len(movie))]
