"""`emlive calibrate` and the card's variance-head recalibration in every runtime (PyTorch, exported ONNX)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emlive.core.modelcard import load_checkpoint, save_model
from emlive.core.posterior import Estimate
from emlive.core.simulate import SyntheticMovie, make_config
from emlive.export.calibration import middle_block
from emlive.export.onnx_export import export_onnx
from emlive.export.runtime import Denoiser

from ..entry import run_emlive

pytestmark = pytest.mark.timeout(120)



@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = make_config(height=96, width=96, frames=9, dose=20.0, seed=11)
    sim = SyntheticMovie(cfg)
    path = tmp_path_factory.mktemp("cal") / "movie.tif"
    tifffile.imwrite(path, np.stack([np.asarray(sim[t]) for t in range(len(sim))]))
    return path


def test_middle_block_stays_in_the_movie_and_within_the_budget() -> None:
    assert middle_block(64, 512, 512) == (17, 47)  # 30 frames of 512 x 512 in 8 M pixels, in the middle
    assert middle_block(5, 512, 512) == (0, 5)
    assert middle_block(3, 8192, 8192) == (1, 2)  # one frame even when it alone is over the budget


def test_calibrate_writes_the_table_that_every_runtime_applies(
    gaussian_checkpoint: Callable[..., Path],
    movie: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The random-weight head is far off the data's residuals: the table rescales it (scales far from 1); the
    calibrated model's uncertainty is the head's times the interpolated scale, in PyTorch and exported ONNX alike,
    and its noise check on the movie it was calibrated on agrees with the data."""
    net, card = load_checkpoint(gaussian_checkpoint("to-calibrate", gain=1.0))
    with torch.no_grad():
        # the random head's variance varies from pixel to pixel (a spread of bins)
        weights = net.head[-1].weight[1]
        weights.copy_(30.0 * torch.randn(weights.shape, generator=torch.Generator().manual_seed(0)))
    source = save_model(tmp_path / "head.pt", net, card)
    out = tmp_path / "calibrated.pt"
    assert run_emlive("calibrate", str(source), str(movie), "-o", str(out)) == 0
    assert f"calibrated on 9 frames (82944 px) of {movie}: 4 bins" in capsys.readouterr().out
    assert (tmp_path / "calibrated.calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, card = load_checkpoint(out)
    table = card.prior_calibration
    assert table is not None and table.frames == 9 and table.pixels == 9 * 96 * 96 and table.source == str(movie)
    assert max(abs(s) for s in table.log_scale) > 0.5
    assert load_checkpoint(source)[1].prior_calibration is None  # -o: the input model is left as it was

    frames = tifffile.imread(movie)
    plain = Denoiser.load(source, "torch_cpu", estimate=Estimate.blind)
    onnx_path = export_onnx(out, tmp_path / "calibrated.onnx").path
    for calibrated in (Denoiser.load(out, "torch_cpu", estimate=Estimate.blind), Denoiser.load(onnx_path)):
        assert calibrated.calibration is not None
        assert calibrated.calibration.log_scale == tuple(table.log_scale)
        _, head = next(plain.denoise_movie(frames, 4, 5, uncertainty=True))
        _, found = next(calibrated.denoise_movie(frames, 4, 5, uncertainty=True, estimate=Estimate.blind))
        std = float(np.std(frames[4].astype(np.float64)))
        head_z = 2.0 * np.log(head.prior_std.astype(np.float64)) - 2.0 * np.log(std)
        expected = head.prior_std * np.exp(0.5 * np.interp(head_z, table.log_var_z, table.log_scale))
        np.testing.assert_allclose(found.prior_std, expected, rtol=2e-3)

    from emlive.analysis.uncertainty import noise_check

    check = noise_check(frames, Denoiser.load(out, "torch_cpu"), 0, len(frames))
    assert check.ok, check.message


def test_calibrate_refuses_a_model_without_a_variance_head_by_name(
    movie: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig

    cfg = NetworkConfig(width=8, scales=2, blocks=1)
    plain = save_model(tmp_path / "plain.pt", BlindSpotNet(cfg).eval(), ModelCard(name="plain", network=cfg))
    assert run_emlive("calibrate", str(plain), str(movie), "-o", str(tmp_path / "x.pt")) == 2
    err = capsys.readouterr().err
    assert f"{plain}: model 'plain' has no variance head (network.head=gaussian) to calibrate" in err
    assert not (tmp_path / "x.pt").exists()
    onnx_model = tmp_path / "model.onnx"
    onnx_model.write_bytes(b"")
    assert run_emlive("calibrate", str(onnx_model), str(movie)) == 2
    assert "calibrate a PyTorch model (.pt or .ckpt" in capsys.readouterr().err
