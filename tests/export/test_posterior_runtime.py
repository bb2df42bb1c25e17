"""Posterior-mean inference through the runtime (emlive.export.estimates): a known case, every backend, tiling,
ONNX parity of both channels and the light (torch-free) path, the estimate's errors, ``emlive denoise
--estimate/--uncertainty``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emlive.cli import app
from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, NoiseModel, VarianceCalibration, load_checkpoint, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig, soft_clamp_log_var
from emlive.core.normalize import frame_stats
from emlive.core.posterior import Estimate, PriorCalibration
from emlive.core.readers import open_movie
from emlive.core.writers import write_movie
from emlive.export.onnx_export import LOG_VAR_BOUND_FP16, export_onnx, read_onnx_card
from emlive.export.runtime import Denoised, Denoiser

GAIN, OFFSET, READ = 2.0, 100.0, 3.0  # an integrating detector: counts = OFFSET + GAIN * electrons + read noise
CFG = NetworkConfig(width=8, scales=2, blocks=1, head="gaussian")  # receptive radius 20 px: tiles on small frames


def noise_model(gain: float = GAIN) -> NoiseModel:
    return NoiseModel(
        method="difference", gain=gain, offset=OFFSET, read_noise=READ, intercept=READ**2 - gain * OFFSET,
        kernel=[[1.0]], recommended_blind_spot=(1, 1),
    )  # fmt: skip


LOG_VAR_Z = float(soft_clamp_log_var(torch.zeros(1)))  # what a head whose last weights are 0 outputs: -0.041
ELECTRONS = 50.0
NOISE_VAR = GAIN**2 * ELECTRONS + READ**2  # counts^2 at the scene's mean level
# The scene's spread that makes a constant prior (the frame mean, variance exp(L) x the frame's variance) exactly
# calibrated: the prior's true error variance S must be exp(L) (S + NOISE_VAR)
SPREAD = float(np.sqrt(np.exp(LOG_VAR_Z) / (1 - np.exp(LOG_VAR_Z)) * NOISE_VAR)) / GAIN  # electrons, ~36


def counts_movie(
    frames: int = 7, shape: tuple[int, int] = (40, 52), seed: int = 0, spread: float = SPREAD
) -> tuple[np.ndarray, np.ndarray]:
    """A static scene of ELECTRONS +- ``spread`` electrons (a random +-1 pattern) on an integrating detector (Poisson x
    GAIN + OFFSET + Gaussian read noise, uint16), and the scene in counts (the truth)."""
    rng = np.random.default_rng(seed)
    scene = ELECTRONS + spread * rng.choice([-1.0, 1.0], shape)
    movie = [OFFSET + GAIN * rng.poisson(scene) + rng.normal(0, READ, shape) for _ in range(frames)]
    return np.clip(np.rint(movie), 0, 65535).astype(np.uint16), OFFSET + GAIN * scene


def movie_calibrated(model: Path, table: dict[str, object] | None, backend: str = "onnx_cpu") -> Denoiser:
    """A denoiser of ``model`` holding the variance head's calibration that ``emlive denoise`` measured on a movie
    (its report's ``calibration``; None: the card's)."""
    den = Denoiser.load(model, backend, threads=1)
    if table is not None:
        den.calibration = PriorCalibration.from_card(VarianceCalibration.model_validate(table))
    return den


@dataclass
class Gaussian:
    net: BlindSpotNet
    card: ModelCard
    ckpt: Path
    onnx: Path


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory: pytest.TempPathFactory) -> Gaussian:
    """A random-weight head=gaussian model with a noise model in its card: checkpoint and ONNX export."""
    root = tmp_path_factory.mktemp("gaussian")
    torch.manual_seed(0)
    net = BlindSpotNet(CFG).eval()
    card = ModelCard(network=CFG, name="gauss", noise=noise_model())
    ckpt = save_model(root / "gauss.pt", net, card)
    return Gaussian(net, card, ckpt, export_onnx(ckpt, root / "gauss.onnx").path)


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return counts_movie()[0]


@pytest.fixture(scope="module")
def constant_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The head's last weights at zero: mu = 0 and log var = LOG_VAR_Z in z-units, i.e. every pixel's prior is its
    frame's mean, with exp(L) times the frame's variance (calibrated on counts_movie); exported to ONNX."""
    torch.manual_seed(1)
    net = BlindSpotNet(CFG).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
    ckpt = save_model(tmp_path_factory.mktemp("constant") / "constant.pt", net,
                      ModelCard(network=CFG, name="constant", noise=noise_model()))  # fmt: skip
    return export_onnx(ckpt, ckpt.with_suffix(".onnx")).path


# --- a known case -------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["onnx_cpu", "torch_cpu"])
def test_a_constant_prior_gives_the_textbook_shrinkage(backend: str, constant_prior: Path) -> None:
    """Each observed pixel is shrunk towards the frame's mean by the textbook weight s_x^2 / (s_x^2 + s_n^2(mu)),
    with the std sqrt(s_x^2 s_n^2 / (s_x^2 + s_n^2)); against the truth the MSE falls by the predicted factor."""
    movie, truth = counts_movie()
    den = Denoiser.load(constant_prior if backend == "onnx_cpu" else constant_prior.with_suffix(".pt"), backend,
                        threads=1)  # fmt: skip
    assert den.estimate is Estimate.posterior
    errors = {"blind": 0.0, "posterior": 0.0, "predicted": 0.0}
    for t, found in den.denoise_movie(movie, uncertainty=True):
        mean, std = (float(v) for v in frame_stats(movie[t]))
        y = movie[t].astype(np.float64)
        prior_var = np.exp(LOG_VAR_Z) * std**2
        noise_var = GAIN * mean + READ**2 - GAIN * OFFSET  # s_n^2 at the prior mean: the noise model's line
        weight = prior_var / (prior_var + noise_var)
        assert 0.9 < weight < 0.99  # the calibrated scene: a real shrinkage, not either end
        np.testing.assert_allclose(found.prior_mean, mean, rtol=1e-6)
        np.testing.assert_allclose(found.mean, mean + weight * (y - mean), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(found.std, np.sqrt(prior_var * noise_var / (prior_var + noise_var)), rtol=1e-4)
        np.testing.assert_allclose(found.prior_std, np.sqrt(prior_var), rtol=1e-4)
        np.testing.assert_allclose(found.noise_std, np.sqrt(noise_var), rtol=1e-4)
        errors["blind"] += float(np.mean((found.prior_mean - truth) ** 2))
        errors["posterior"] += float(np.mean((found.mean - truth) ** 2))
        errors["predicted"] += prior_var * noise_var / (prior_var + noise_var)
    # the blind estimate's error is the scene's spread, which the prior's variance predicts (calibrated), and the
    # posterior's MSE is the predicted one: noise_var x weight (w^2 E[V] + (1 - w)^2 S, E[V] = V at the mean)
    assert errors["blind"] / len(movie) == pytest.approx((GAIN * SPREAD) ** 2, rel=0.02)
    assert errors["posterior"] == pytest.approx(errors["predicted"], rel=0.05)


# --- one path offline and live, tiles, backends ---------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_window_stream_and_tiles_agree_and_plain_calls_return_the_posterior_mean(
    gaussian: Gaussian, movie: np.ndarray
) -> None:
    den = Denoiser.load(gaussian.onnx, "onnx_cpu", threads=1)
    assert den.estimate is Estimate.posterior and den.channels == 2
    from emlive.core.windows import stack_window, window_indices

    plain = [f for _, f in den.denoise_movie(movie)]
    found = [d for _, d in den.denoise_movie(movie, uncertainty=True)]
    windows = [den.denoise_window(stack_window(movie, window_indices(t, 5, len(movie))), uncertainty=True)
               for t in range(len(movie))]  # fmt: skip
    blind = [f for _, f in den.denoise_movie(movie, estimate="blind")]
    for t in range(len(movie)):
        assert isinstance(found[t], Denoised) and plain[t].dtype == np.float32
        np.testing.assert_array_equal(found[t].mean, plain[t])  # bit for bit: one code path
        np.testing.assert_array_equal(windows[t].mean, plain[t])
        np.testing.assert_array_equal(windows[t].std, found[t].std)
        np.testing.assert_array_equal(blind[t], found[t].prior_mean)
        assert np.all(found[t].std < found[t].prior_std) and np.all(found[t].std < found[t].noise_std)
        assert not np.array_equal(plain[t], blind[t])
    tiled = Denoiser.load(gaussian.onnx, "onnx_cpu", threads=1, tile=48)  # 40 x 52 frames: 2 x 2 tiles of 48 px
    for t, d in tiled.denoise_movie(movie, uncertainty=True):
        np.testing.assert_allclose(d.mean, found[t].mean, rtol=1e-5)
        np.testing.assert_allclose(d.std, found[t].std, rtol=1e-4)


@pytest.mark.timeout(120)
def test_onnx_fp32_fp16_and_torch_give_the_same_posterior(
    gaussian: Gaussian, movie: np.ndarray, tmp_path: Path
) -> None:
    result = export_onnx(gaussian.ckpt, tmp_path / "half.onnx", fp16=True)
    assert [p.channel for p in result.parity] == ["mean", "log-variance"] * 2
    assert result.max_log_var_error is not None and result.max_log_var_error <= LOG_VAR_BOUND_FP16
    model, card = read_onnx_card(gaussian.onnx)
    meta = {p.key: p.value for p in model.metadata_props}
    assert card == gaussian.card and card.noise == noise_model()
    assert meta["head"] == "gaussian" and meta["noise"].startswith("difference: gain 2, offset 100")
    assert "(batch, 2, height, width)" in meta["input"]
    ref = [d for _, d in Denoiser.load(gaussian.ckpt, "torch_cpu", threads=1).denoise_movie(movie, uncertainty=True)]
    for path, rtol in ((gaussian.onnx, 1e-5), (result.path, 2e-3)):
        den = Denoiser.load(path, "onnx_cpu", threads=1)
        for t, d in den.denoise_movie(movie, uncertainty=True):
            span = float(np.ptp(ref[t].mean))
            assert np.abs(d.mean - ref[t].mean).max() <= rtol * span, path.name
            np.testing.assert_allclose(d.std, ref[t].std, rtol=rtol)


@pytest.mark.timeout(120)
def test_the_onnx_posterior_needs_no_torch(gaussian: Gaussian, movie: np.ndarray, tmp_path: Path) -> None:
    """The light install's path: an .onnx model, the card's noise model, the posterior and its std, no torch."""
    np.save(tmp_path / "movie.npy", movie)
    code = (
        "import sys, numpy as np\n"
        "from emlive.export.runtime import Denoiser\n"
        f"d = Denoiser.load({str(gaussian.onnx)!r}, 'auto', threads=1)\n"
        f"m = np.load({str(tmp_path / 'movie.npy')!r})\n"
        "out = [r for _, r in d.denoise_movie(m, uncertainty=True)]\n"
        f"np.save({str(tmp_path / 'mean.npy')!r}, np.stack([r.mean for r in out]))\n"
        f"np.save({str(tmp_path / 'std.npy')!r}, np.stack([r.std for r in out]))\n"
        "print(d.estimate.value, [m for m in ('torch', 'lightning', 'onnx') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "posterior []"
    ref = [d for _, d in Denoiser.load(gaussian.ckpt, "torch_cpu", threads=1).denoise_movie(movie, uncertainty=True)]
    mean, std = np.load(tmp_path / "mean.npy"), np.load(tmp_path / "std.npy")
    assert np.abs(mean - np.stack([r.mean for r in ref])).max() <= 1e-5 * float(np.ptp(mean))
    np.testing.assert_allclose(std, np.stack([r.std for r in ref]), rtol=1e-5)


# --- which estimate, and the errors ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_estimate_defaults_and_errors_name_the_model_and_the_fix(gaussian: Gaussian, movie: np.ndarray) -> None:
    torch.manual_seed(2)
    plain_cfg = NetworkConfig(width=8, scales=2, blocks=1)
    plain_net, plain_card = BlindSpotNet(plain_cfg).eval(), ModelCard(network=plain_cfg, name="plain")
    plain = Denoiser.from_network(plain_net, plain_card, "torch_cpu", threads=1)
    assert plain.estimate is Estimate.blind and plain.channels == 1
    with pytest.raises(ConfigError, match=r"posterior needs a model with a variance head.*'plain'.*head=gaussian"):
        Denoiser.from_network(plain_net, plain_card, "torch_cpu", estimate="posterior")
    with pytest.raises(ConfigError, match=r"uncertainty map needs a model with a variance head.*'plain'"):
        plain.denoise_window(movie[:5], uncertainty=True)
    with pytest.raises(ConfigError, match=r"uncertainty map needs a model with a variance head"):
        next(plain.denoise_movie(movie, uncertainty=True))
    bare = ModelCard(network=CFG, name="no-noise")
    den = Denoiser.from_network(gaussian.net, bare, "torch_cpu", threads=1)
    assert den.estimate is Estimate.blind  # a variance head without a noise model: blind, the prior std as map
    found = den.denoise_window(movie[:5], uncertainty=True)
    assert found.noise_std is None and np.array_equal(found.std, found.prior_std)
    with pytest.raises(ConfigError, match=r"needs the detector's noise model.*'no-noise'"):
        Denoiser.from_network(gaussian.net, bare, "torch_cpu", estimate=Estimate.posterior)
    with pytest.raises(ConfigError, match=r"estimate 'mean': not a known estimate; use one of blind, posterior"):
        Denoiser.load(gaussian.onnx, "onnx_cpu", estimate="mean")
    with pytest.raises(ConfigError, match=r"estimate posterior needs the detector's noise model"):
        Denoiser(den._engine, bare, estimate="posterior")


# --- emlive denoise --estimate / --uncertainty -----------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_denoise_cli_writes_the_uncertainty_beside_the_movie(
    constant_prior: Path, movie: np.ndarray, tmp_path: Path
) -> None:
    src = write_movie(tmp_path / "in.tif", movie)
    runner = CliRunner()
    args = ["denoise", str(src), "-m", str(constant_prior), "--threads", "1", "--no-progress", "--json"]
    done = runner.invoke(app, [*args, "-o", str(tmp_path / "out.tif"), "--uncertainty", str(tmp_path / "std.tif")])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)["movies"][0]
    assert report["estimate"] == "posterior" and report["uncertainty"] == str(tmp_path / "std.tif")
    assert report["noise_check"]["ok"] and report["noise_check"]["ratio"] == pytest.approx(1.0, abs=0.1)
    gain_db = 10 * np.log10(1 + np.exp(LOG_VAR_Z) / (1 - np.exp(LOG_VAR_Z)))  # 1 + S / V: the calibrated scene
    assert report["predicted_gain_db"] == pytest.approx(gain_db, abs=0.3)
    assert report["calibration"]["log_scale"][0] == pytest.approx(0.0, abs=0.1)  # the calibrated scene: about 1
    calibrated = movie_calibrated(constant_prior, report["calibration"])
    ref = [d for _, d in calibrated.denoise_movie(movie, uncertainty=True)]
    with open_movie(tmp_path / "out.tif") as out, open_movie(tmp_path / "std.tif") as std:
        assert std.shape == out.shape == movie.shape and std.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(out[:]), np.stack([r.mean for r in ref]))
        np.testing.assert_array_equal(np.asarray(std[:]), np.stack([r.std for r in ref]))
    blind = runner.invoke(app, [*args, "-o", str(tmp_path / "b.tif"), "--estimate", "blind", "--uncertainty",
                                str(tmp_path / "bstd.tif")])  # fmt: skip
    assert blind.exit_code == 0, blind.output
    assert json.loads(blind.stdout)["movies"][0]["calibration"] is None  # the blind output: the card's head
    ref = [d for _, d in Denoiser.load(constant_prior, "onnx_cpu", threads=1).denoise_movie(movie, uncertainty=True)]
    with open_movie(tmp_path / "b.tif") as out, open_movie(tmp_path / "bstd.tif") as std:
        np.testing.assert_array_equal(np.asarray(out[:]), np.stack([r.prior_mean for r in ref]))
        np.testing.assert_array_equal(np.asarray(std[:]), np.stack([r.prior_std for r in ref]))
    bad = runner.invoke(app, [*args, "-o", str(tmp_path / "c.tif"), "--uncertainty", str(tmp_path / "s.mrc")])
    assert bad.exit_code != 0 and "the map is written in the denoised movie's format (TIFF" in str(bad.exception)


@pytest.mark.timeout(60)
def test_a_folder_of_movies_gets_a_folder_of_uncertainty_maps(constant_prior: Path, tmp_path: Path) -> None:
    from emlive.analysis.denoise import denoise_path

    (tmp_path / "in").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_movie(tmp_path / "in" / f"{name}.mrc", counts_movie(3, (24, 32), seed)[0])
    den = Denoiser.load(constant_prior, "onnx_cpu", threads=1)
    report = denoise_path(tmp_path / "in", tmp_path / "out", den, uncertainty=tmp_path / "std", progress=False)
    assert [m.uncertainty for m in report.movies] == [str(tmp_path / "std" / n) for n in ("a.mrc", "b.mrc")]
    for name, found in zip(("a", "b"), report.movies, strict=True):
        each = movie_calibrated(constant_prior, found.calibration)  # each movie's own calibration
        with open_movie(tmp_path / "std" / f"{name}.mrc") as std, open_movie(tmp_path / "in" / f"{name}.mrc") as m:
            want = np.stack([d.std for _, d in each.denoise_movie(m, uncertainty=True)])
            np.testing.assert_array_equal(np.asarray(std[:]), want)
    with pytest.raises(ConfigError, match=r"2 movies are denoised, so the uncertainty maps need a folder"):
        denoise_path(tmp_path / "in", tmp_path / "out2", den, uncertainty=tmp_path / "one.mrc", progress=False)


@pytest.mark.timeout(120)
def test_a_wrong_noise_model_is_reported_and_falls_back_to_blind_unless_forced(
    constant_prior: Path, movie: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The calibrated constant prior (its check passes with the true noise model, see the CLI test) with a card
    whose gain is 10x too high: the data are quieter than it says; the check fails, the movie gets the blind output
    (and with --estimate posterior the posterior, with the warning). (This prior is 24x the noise variance, so
    the check, like the posterior itself, hardly feels a gain off by 2 or 3: the residual is mostly the prior's.)"""
    from emlive.analysis.denoise import denoise_path

    net, card = load_checkpoint(constant_prior.with_suffix(".pt"))
    ckpt = save_model(tmp_path / "wrong.pt", net, card.model_copy(update={"noise": noise_model(gain=GAIN * 10)}))
    src = write_movie(tmp_path / "in.tif", movie)
    den = Denoiser.load(ckpt, "torch_cpu", threads=1)
    with caplog.at_level(logging.INFO, logger="emlive.analysis"):
        report = denoise_path(src, tmp_path / "out.tif", den, progress=False)
    m = report.movies[0]
    assert m.estimate == "blind" and m.noise_check is not None and not m.noise_check["ok"]
    assert "NOISE MODEL CHECK FAILED" in caplog.text and "quieter than the card's noise model" in caplog.text
    assert "falling back to the blind output" in caplog.text
    assert "out.tif: blind estimate; predicted gain of the posterior over the blind output +" in caplog.text
    with open_movie(tmp_path / "out.tif") as out:
        blind = np.stack([f for _, f in den.denoise_movie(movie, estimate="blind")])
        np.testing.assert_array_equal(np.asarray(out[:]), blind)
    forced = denoise_path(src, tmp_path / "forced.tif", den, progress=False, estimate="posterior")
    assert forced.movies[0].estimate == "posterior" and not forced.movies[0].noise_check["ok"]
