"""The supervised oracle (``emlive train ... targets=clean``): the same blind network, trained on clean targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emlive.core.errors import ConfigError
from emlive.core.modelcard import Target, load_checkpoint
from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.train.api import train, training_card
from emlive.train.config import AugmentConfig, TrainTargets, load_config
from emlive.train.data import WindowCrops, open_sources

from .conftest import TINY

TINY_RUN = [*TINY, "output.log_images=false"]
AUGMENT = AugmentConfig(flips=True, rot90=True, reverse_frames=True, extra_noise_probability=0.5)


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    files = write_simulation(SimulationConfig(height=48, width=56, frames=12, dose=5.0, seed=3), out)
    return Path(files.noisy).parent


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of ``img``."""
    return [np.rot90(f, k) for f in (img, img[:, ::-1]) for k in range(4)]


@pytest.mark.timeout(60)
def test_oracle_targets_are_the_clean_crops_of_the_same_place_and_augmentation(movie: Path) -> None:
    sources = open_sources(movie / "noisy.tif", None, 5, (0.0, 1.0), 1, 32)
    src = sources[0]
    with open_movie(movie / "clean.tif") as clean, open_movie(movie / "noisy.tif") as noisy_twin:
        noisy_set = WindowCrops(sources, 5, 32, 24, AUGMENT, seed=5)
        oracle_set = WindowCrops(sources, 5, 32, 24, AUGMENT, seed=5, clean=[clean])
        twin_set = WindowCrops(sources, 5, 32, 24, AUGMENT, seed=5, clean=[noisy_twin])
        seen = set()
        for i in range(len(noisy_set)):
            _, _, t, y, x, size = noisy_set.locate(i)
            window, noisy_target = noisy_set[i]
            oracle_window, oracle_target = oracle_set[i]
            # the input is untouched; a "clean" twin equal to the noisy movie gives back the noisy target exactly
            np.testing.assert_array_equal(window.numpy(), oracle_window.numpy())
            np.testing.assert_array_equal(twin_set[i][1].numpy(), noisy_target.numpy())
            # the noisy target is one flip/rotation of the noisy center crop: the clean target is the same one of
            # the clean crop of that frame and place, in the noisy frame's z-units
            noisy_crop = (np.asarray(src.movie.crop(t, y, x, size, size), np.float32) - src.mean[t]) / src.std[t]
            clean_crop = (np.asarray(clean.crop(t, y, x, size, size), np.float32) - src.mean[t]) / src.std[t]
            matches = [
                k for k, d in enumerate(_dihedral(noisy_crop)) if np.allclose(d, noisy_target[0].numpy(), atol=1e-5)
            ]
            assert matches, f"sample {i}: the noisy target is no flip/rotation of its crop"
            expected = _dihedral(clean_crop)[matches[0]]
            np.testing.assert_allclose(oracle_target[0].numpy(), expected, rtol=1e-5, atol=1e-5)
            seen.add(matches[0])
        assert len(seen) >= 3  # several augmentations were exercised


@pytest.mark.timeout(60)
def test_oracle_without_data_clean_val_movie_or_with_patches_is_refused(movie: Path) -> None:
    base = [f"data.train={movie / 'noisy.tif'}", "targets=clean"]
    with pytest.raises(ConfigError, match=r"targets=clean trains on the ground truth: set data\.clean"):
        load_config("synthetic-small", [*base, "data.clean=null"])
    with pytest.raises(ConfigError, match=r"targets=clean with data\.val=.*drop data\.val"):
        load_config("synthetic-small", [*base, f"data.clean={movie / 'clean.tif'}", f"data.val={movie / 'noisy.tif'}"])
    with pytest.raises(ConfigError, match=r"data\.patches\.enabled=true.*set data\.patches\.enabled=false"):
        load_config("synthetic-small", [*base, f"data.clean={movie / 'clean.tif'}", "data.patches.enabled=true"])
    with pytest.raises(ConfigError, match=r"targets"):
        load_config("synthetic-small", [*base[:1], "targets=teacher"])  # distill's value, not train's
    default = load_config("synthetic-small", [f"data.train={movie / 'noisy.tif'}"])
    assert default.targets is TrainTargets.noisy


@pytest.mark.timeout(120)
def test_oracle_training_learns_the_clean_frames_and_its_card_says_so(movie: Path, tmp_path: Path) -> None:
    over = [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", f"output.root={tmp_path}"]
    oracle = [*TINY_RUN, "optim.recursive_factor=4", "optim.epochs=1", "targets=clean"]
    cfg = load_config("synthetic-small", [*over, *oracle])
    result = train(cfg)
    _, card = load_checkpoint(result.model)
    assert card.training.target is Target.clean and "oracle" in (card.training.loss or "")
    assert '"target": "clean"' in (result.run_dir / "model_card.json").read_text()
    # the validation loss is against the clean frames: far below the floor of any loss against the noisy frames,
    # the noise's own variance in z-units (what a perfect denoiser would still score against noisy targets)
    with open_movie(movie / "noisy.tif") as noisy, open_movie(movie / "clean.tif") as clean:
        src = open_sources(movie / "noisy.tif", None, 5, (0.875, 1.0), 1, 32)[0]
        shape = (src.height, src.width)
        errors = [
            src.normalized_crop(noisy, t, 0, 0, shape) - src.normalized_crop(clean, t, 0, 0, shape)
            for t in range(src.first, src.last)
        ]
        floor = float(np.mean(np.square(errors)))
    assert floor > 0.5 and result.metrics["val/loss"] < 0.6 * floor, (floor, result.metrics)
    # a self-supervised run of the same config says target noisy (its card, without training)
    blind = load_config("synthetic-small", [*over, *TINY_RUN])
    assert training_card(blind, [src], "l2").training.target is Target.noisy
