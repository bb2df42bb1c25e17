"""``emlive bench-quality`` with several labelled models in one table (a teacher, a student and a self-ensembled
teacher) on one tiny held-out movie: rows, per-frame JSON, the picture, and the ``-m`` errors; and the dose/detector
sweep: the detector modes, models per setting, a tiny sweep that trains its own models, and their cache."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from emlive.analysis.uncertainty import movie_estimate
from emlive.bench.dose_sweep import (
    DetectorMode,
    Setting,
    SweepConfig,
    recommended_blind_spot,
    run_sweep,
    split_setting_specs,
)
from emlive.bench.model_specs import ModelSpec, parse_model_specs
from emlive.bench.quality import (
    DEFAULT_SUFFIX,
    QualityRow,
    generalized_anscombe,
    inverse_generalized_anscombe,
    run_quality_benchmark,
)
from emlive.core.ensemble import Ensemble, ensemble_average
from emlive.core.errors import ConfigError
from emlive.core.metrics import psnr_paper
from emlive.core.modelcard import ModelCard, NoiseModel, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.posterior import Estimate, predicted_gain_db
from emlive.core.simulate import SimulationConfig, detector_truth, simulate_movie, write_simulation
from emlive.core.student import StudentConfig, StudentNet
from emlive.core.windows import stack_window, window_indices
from emlive.export.runtime import Denoiser

from ..entry import run_emlive

pytestmark = pytest.mark.timeout(120)


def _run(specs: list[ModelSpec], out: Path) -> list[QualityRow]:
    """The benchmark on a 10-frame 48 x 48 held-out movie, 3 frames scored, no BM3D, one thread."""
    return run_quality_benchmark(specs, out, size=48, frames=10, eval_frames=3, bm3d=False, threads=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny blind-spot teacher (1x1 blind spot, so rotations are allowed) and a tiny student, random weights."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    teacher_cfg = NetworkConfig(width=8, scales=2, blocks=1, blind_spot=(1, 1))
    teacher = BlindSpotNet(teacher_cfg)
    with torch.no_grad():  # random weights give an almost constant output; this makes it vary about as the data
        teacher.head[-1].weight.mul_(100.0)
    student_cfg = StudentConfig(width=8, depth=2, unshuffle=2)
    student_card = ModelCard(name="tiny-s", network=student_cfg)
    gauss_cfg = NetworkConfig(width=8, scales=2, blocks=1, head="gaussian")
    gauss = BlindSpotNet(gauss_cfg)
    with torch.no_grad():
        gauss.head[-1].weight.mul_(100.0)
    noise = NoiseModel(method="difference", gain=1.0, offset=0.0, read_noise=0.0, intercept=0.0, kernel=[[1.0]],
                       recommended_blind_spot=(1, 1))  # fmt: skip
    return {
        "teacher": save_model(root / "teacher.pt", teacher, ModelCard(name="tiny-teacher", network=teacher_cfg)),
        "student": save_model(root / "student.pt", StudentNet(student_cfg), student_card),
        "gauss": save_model(root / "gauss.pt", gauss, ModelCard(name="gauss", network=gauss_cfg, noise=noise)),
    }


def test_models_are_rows_of_one_table_with_per_frame_values(models: dict[str, Path], tmp_path: Path) -> None:
    specs = parse_model_specs(
        [f"teacher={models['teacher']}", str(models["student"]), f"teacher x4={models['teacher']}@flips"]
    )
    rows = _run(specs, tmp_path)
    methods = [r.method for r in rows]
    assert methods[:3] == ["raw", "5-frame average", methods[2]] and methods[2].startswith("gaussian (oracle")
    assert methods[3:] == ["teacher", "tiny-s", "teacher x4"]  # bare path: the card's name
    saved = json.loads((tmp_path / "quality.json").read_text())
    scored = saved["frames_scored"]
    assert len(scored) == 3 and [m["label"] for m in saved["models"]] == methods[3:]
    assert saved["model"] == str(models["teacher"]) and saved["card"]["name"] == "tiny-teacher"  # old fields
    for row in saved["rows"]:
        assert len(row["psnr_frames"]) == len(row["pearson_frames"]) == 3
        assert row["psnr"] == pytest.approx(np.mean(row["psnr_frames"]))
        assert -1.0 <= row["pearson"] <= 1.0 and row["pearson"] == pytest.approx(np.mean(row["pearson_frames"]))
    by_method = {r["method"]: r for r in saved["rows"]}
    assert by_method["teacher x4"]["ensemble"] == "flips" and by_method["teacher"]["ensemble"] == "none"
    assert by_method["raw"]["pearson"] < by_method["5-frame average"]["pearson"]  # the truth is static: averaging helps
    # the self-ensemble is the core one, on the same held-out movie (the truth of its scores, frame by frame)
    noisy, clean = simulate_movie(SimulationConfig(height=48, width=48, frames=10, dose=5.0, seed=1001))
    with Denoiser.load(models["teacher"], threads=1) as den:
        for t, psnr in zip(scored, by_method["teacher x4"]["psnr_frames"], strict=True):
            window = stack_window(noisy.astype(np.float32), window_indices(t, 5, 10))
            expected = ensemble_average(window, Ensemble.flips, den.denoise_window)
            assert psnr == pytest.approx(psnr_paper(clean[t], expected), abs=1e-4)
    assert by_method["teacher x4"]["psnr_frames"] != by_method["teacher"]["psnr_frames"]
    assert (tmp_path / "quality.png").stat().st_size > 10_000


@pytest.mark.timeout(60)
def test_a_gaussian_head_model_gives_its_blind_and_reopened_rows_with_gains_and_calibration(
    models: dict[str, Path], tmp_path: Path
) -> None:
    rows = {r.method: r for r in _run(parse_model_specs([f"g={models['gauss']}"]), tmp_path)}
    blind, reopened = rows["g"], rows["g re-opened"]
    assert blind.reopen is None and reopened.reopen is not None and reopened.key == "g re-opened"
    saved = json.loads((tmp_path / "quality.json").read_text())
    frames, edges = saved["frames_scored"], saved["edge_frames"]
    assert edges == [0, 9] and "| g re-opened |" in (tmp_path / "quality.md").read_text()
    # the truth of the numbers: the runtime's blind estimate and posterior (with its std) on the same frames
    noisy, clean = simulate_movie(SimulationConfig(height=48, width=48, frames=10, dose=5.0, seed=1001))
    with Denoiser.load(models["gauss"], threads=1) as den:
        outs = [den.denoise_window(stack_window(noisy.astype(np.float32), window_indices(t, 5, 10)), uncertainty=True)
                for t in frames]  # fmt: skip
    truth = [clean[t] for t in frames]
    for t, o, c, psnr_b, psnr_r in zip(frames, outs, truth, blind.psnr_frames, reopened.psnr_frames, strict=True):
        assert psnr_b == pytest.approx(psnr_paper(c, o.prior_mean), abs=1e-4), t
        assert psnr_r == pytest.approx(psnr_paper(c, o.mean), abs=1e-4), t
    mse_b = np.mean([np.mean((c - o.prior_mean) ** 2) for o, c in zip(outs, truth, strict=True)])
    mse_r = np.mean([np.mean((c - o.mean) ** 2) for o, c in zip(outs, truth, strict=True)])
    stats = reopened.reopen
    assert stats.measured_gain_db == pytest.approx(10 * np.log10(mse_b / mse_r), abs=1e-3)
    within = np.mean([np.abs(c - o.mean) <= o.std for o, c in zip(outs, truth, strict=True)])
    assert stats.calibration == pytest.approx(within, abs=1e-6)
    prior_var = np.stack([o.prior_std.astype(np.float64) ** 2 for o in outs])
    noise_var = np.stack([o.noise_std.astype(np.float64) ** 2 for o in outs])
    assert stats.predicted_gain_db == pytest.approx(predicted_gain_db(prior_var, noise_var), rel=1e-4)
    assert stats.ratio == pytest.approx(stats.measured_gain_db / stats.predicted_gain_db)
    assert len(stats.measured_gain_frames) == 3 and set(stats.regions) == {"edge frames", "changing pixels"}
    # the row a user gets by default (emlive denoise): the movie's noise check picks posterior or blind, and the
    # posterior uses the variance head calibrated on the movie
    with Denoiser.load(models["gauss"], threads=1) as den:
        found = movie_estimate(noisy.astype(np.float32), den, 0, len(noisy), Estimate.posterior, forced=False,
                               uncertainty=None)  # fmt: skip
        own = [den.denoise_window(stack_window(noisy.astype(np.float32), window_indices(t, 5, 10))) for t in frames]
    default = rows[f"g re-opened{DEFAULT_SUFFIX}"]
    assert found is not None and found.estimate is Estimate.posterior and found.calibration is not None
    assert default.psnr_frames == pytest.approx([psnr_paper(c, o) for o, c in zip(own, truth, strict=True)], abs=1e-4)
    assert default.psnr_frames != reopened.psnr_frames  # the movie's calibration is not the card's
    assert default.reopen is not None and default.reopen.noise_check["ok"]


def test_dihedral_is_refused_for_a_model_whose_blind_spot_is_not_square(tmp_path: Path) -> None:
    cfg = NetworkConfig(width=8, scales=2, blocks=1, blind_spot=(1, 3))
    path = save_model(tmp_path / "wide.pt", BlindSpotNet(cfg), ModelCard(name="wide", network=cfg))
    specs = parse_model_specs([f"w={path}@dihedral"])
    with pytest.raises(ConfigError, match=r"-m 'w=.*wide.pt@dihedral': ensemble=dihedral rotates .*use ensemble=flips"):
        _run(specs, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything ran"



def test_command_prints_one_row_per_model(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench-quality", "-m", f"t={models['teacher']}", "-m", f"s={models['student']}", "-o", str(tmp_path)]
    small = ["--size", "40", "--frames", "8", "--eval-frames", "2", "--no-bm3d", "--threads", "1"]
    assert run_emlive(*args, *small, "--correlated", "isotropic", "--dose", "20") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "PSNR", "SSIM", "PSNRfix", "SSIMfix", "r", "s/frame"]
    assert [line.split()[0] for line in lines[-2:]] == ["t", "s"]
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["simulation"]["dose"] == 20.0 and saved["simulation"]["correlated_noise"] == "isotropic"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("=x.pt", "-m '=x.pt': the label before '=' is empty; a model is -m PATH or -m LABEL=PATH"),
        ("t=nowhere/m.pt", "-m 't=nowhere/m.pt': no such model file nowhere/m.pt"),
        ("t=nowhere/m.pt@x3", "-m 't=nowhere/m.pt@x3': unknown self-ensemble @x3; use @flips or @dihedral"),
    ],
)
def test_bad_specs_are_one_clear_line(
    spec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_emlive("bench-quality", "-m", spec, "-o", str(tmp_path / "q")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_labels_and_paths_may_hold_an_equals_sign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split is where the rest names an existing file: a label "N=1", a Lightning checkpoint "epoch=3.ckpt"."""
    from emlive.bench.model_specs import parse_model_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    model = tmp_path / "runs" / "epoch=3-step=90.ckpt"
    model.write_bytes(b"")
    for text, label in [
        ("gauss N=1 (20 e-)=runs/epoch=3-step=90.ckpt", "gauss N=1 (20 e-)"),
        ("runs/epoch=3-step=90.ckpt", None),
        ("x=runs/epoch=3-step=90.ckpt@flips", "x"),
    ]:
        spec = parse_model_spec(text)
        assert (spec.label, spec.path) == (label, Path("runs/epoch=3-step=90.ckpt")), text
    with pytest.raises(ConfigError, match=r"no such model file nowhere=1\.pt"):
        parse_model_spec("a=nowhere=1.pt")  # nothing exists: the first '=' splits, and the error names the rest


@pytest.mark.timeout(60)
def test_unknown_noise_correlation_is_a_usage_error_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_emlive("bench-quality", "--correlated", "diagonal", "-o", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "'diagonal' is not one of" in err and "isotropic" in err
    assert not (tmp_path / "quality.json").exists()


# --- the dose/detector sweep (emlive.bench.dose_sweep) -----------------------------------------------------------
SWEEP_TRAIN = ["network.width=8", "network.scales=2", "network.blocks=1", "data.crop_size=32", "optim.batch_size=4"]
SWEEP_ARGS = ["--doses", "5,100", "--modes", "counting", "--size", "64", "--frames", "8", "--eval-frames", "2"]
SWEEP_ARGS += ["--no-bm3d", "--threads", "1", "--backend", "torch_cpu", "--train-steps", "1"]
SWEEP_ARGS += [arg for item in SWEEP_TRAIN for arg in ("--train-set", item)]
SWEEP_KEYS = ["raw", "5-frame average", "gaussian", "blind", "re-opened", f"re-opened{DEFAULT_SUFFIX}", "oracle"]


@pytest.mark.parametrize("mode", list(DetectorMode))
def test_detector_modes_map_to_the_simulator_and_its_noise(mode: DetectorMode) -> None:
    sim = Setting(20.0, mode).simulation(64, 2, seed=5)
    truth = detector_truth(sim)
    expected = {"counting": (1.0, 0.0, 0.0, "none"), "integrating": (8.0, 100.0, 3.0, "isotropic")}[mode.value]
    assert (sim.gain, sim.offset, sim.read_noise, sim.correlated_noise.value) == expected
    assert (sim.dose, sim.height, sim.frames, sim.seed) == (20.0, 64, 2, 5)
    # the variance the generalized Anscombe transform assumes is the simulator's: the stabilised noise has unit
    # variance (BM3D's sigma 1); inner pixels only (the kernel reflects at the borders)
    noisy, clean = simulate_movie(sim)
    args = (sim.gain, sim.offset, sim.read_noise, truth["kernel_sum_of_squares"])
    stab = generalized_anscombe(noisy.astype(np.float64), *args) - generalized_anscombe(clean.astype(np.float64), *args)
    assert float(stab[:, 2:-2, 2:-2].std()) == pytest.approx(1.0, abs=0.05)
    back = inverse_generalized_anscombe(generalized_anscombe(clean.astype(np.float64), *args), *args)
    assert float(np.mean(back - clean)) == pytest.approx(0.0, abs=0.02 * sim.gain * sim.dose)


def test_models_per_setting_are_parsed_and_an_unswept_setting_is_refused(
    models: dict[str, Path], tmp_path: Path
) -> None:
    specs = parse_model_specs([f"s@5/counting={models['student']}", f"t={models['teacher']}@flips"])
    (student, where), (teacher, anywhere) = split_setting_specs(specs)
    assert (student.label, where) == ("s", Setting(5.0, DetectorMode.counting)) and student.path == models["student"]
    assert (teacher.label, anywhere, teacher.ensemble) == ("t", None, Ensemble.flips)
    bad = parse_model_specs([f"s@5/integrated={models['student']}"])
    with pytest.raises(ConfigError, match=r"'5/integrated' is not a setting; a setting is DOSE/MODE"):
        split_setting_specs(bad)
    cfg = SweepConfig(doses=[5.0], modes=[DetectorMode.integrating], size=64, frames=8, bm3d=False)
    with pytest.raises(ConfigError, match=r"setting 5/counting is not swept \(5/integrating\)"):
        run_sweep(cfg, specs, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything ran"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--doses", "5,lots"], "--doses '5,lots': doses are numbers in e-/px/frame, e.g. --doses 0.5,5,20,100"),
        (["--doses", "5,-1"], "--doses: -1 is no dose; each must be > 0"),
        (["--modes", "counting,integrated"], "--modes: 'integrated' is no detector mode; use counting and/or"),
        (["--doses", "5", "--correlated", "isotropic"], "the detector mode sets the noise correlation"),
    ],
)
def test_bad_sweep_options_are_one_clear_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_emlive("bench-quality", *args, "--no-bm3d", "-o", str(tmp_path / "q")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """A tiny sweep, two doses of a counting detector, its blind (Gaussian-head) and oracle models trained 1 step."""
    out = tmp_path_factory.mktemp("sweep")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert run_emlive("bench-quality", *SWEEP_ARGS, "-o", str(out)) == 0
    return out, json.loads((out / "quality.json").read_text()), stdout.getvalue()


@pytest.mark.timeout(180)
def test_a_tiny_sweep_trains_scores_every_setting_and_writes_the_dose_curve(
    sweep: tuple[Path, dict[str, Any], str],
) -> None:
    out, saved, printed = sweep
    settings = [(s["setting"]["dose"], s["setting"]["mode"]) for s in saved["settings"]]
    assert settings == [(5, "counting"), (100, "counting")]
    assert len(saved["trained"]) == 4
    assert all((out / "models" / "runs" / key / "model.pt").is_file() for key in saved["trained"])
    for setting in saved["settings"]:
        assert setting["simulation"]["seed"] == 1001 and setting["edge_frames"] == [0, 7]
        rows = {r["key"]: r for r in setting["rows"]}
        assert list(rows) == SWEEP_KEYS
        for row in rows.values():
            assert len(row["psnr_frames"]) == len(row["pearson_frames"]) == len(setting["frames_scored"]) == 2
            assert set(row["regions"]) == {"edge frames", "changing pixels"}
        reopen = rows["re-opened"]["reopen"]
        assert 0.0 <= reopen["calibration"] <= 1.0 and len(reopen["calibration_frames"]) == 2
        assert reopen["predicted_gain_db"] > 0 and reopen["ratio"] == pytest.approx(
            reopen["measured_gain_db"] / reopen["predicted_gain_db"]
        )
        assert set(reopen["regions"]) == {"edge frames", "changing pixels"}
        assert reopen["noise_check"]["pixels"] > 0 and "noise check" in reopen["noise_check"]["message"]
        assert rows["blind"]["model"] == rows["re-opened"]["model"] != rows["oracle"]["model"]
        default = rows[f"re-opened{DEFAULT_SUFFIX}"]
        if default["reopen"] is not None:  # the posterior, the head calibrated on the movie itself
            assert default["reopen"]["noise_check"]["ok"]
            assert default["reopen"]["predicted_gain_db"] != reopen["predicted_gain_db"]
        else:  # the check failed: the blind output
            assert default["psnr_frames"] == rows["blind"]["psnr_frames"]
    # the blind row is the Gaussian-head model's mean channel, through the runtime, on the held-out movie
    first = saved["settings"][0]
    blind = next(r for r in first["rows"] if r["key"] == "blind")
    noisy, clean = simulate_movie(SimulationConfig.model_validate(first["simulation"]))
    with Denoiser.load(blind["model"], backend="torch_cpu", threads=1, estimate="blind") as den:
        for t, psnr in zip(first["frames_scored"], blind["psnr_frames"], strict=True):
            window = stack_window(noisy.astype(np.float32), window_indices(t, 5, 8))
            assert psnr == pytest.approx(psnr_paper(clean[t], den.denoise_window(window)), abs=1e-4)
    for png in ("dose_curve.png", "quality_counting-dose5.png", "quality_counting-dose100.png"):
        assert (out / png).stat().st_size > 10_000
    md = (out / "quality.md").read_text()
    assert "| counting | 5 |" in md and "| counting | 100 |" in md and "measured/predicted" in md
    assert "| counting | 5 | re-opened | " in md  # the card's table; and the default (calibrated on the movie) when
    assert ("| counting | 5 | re-opened (default" in md) == (saved["settings"][0]["rows"][5]["reopen"] is not None)
    assert md.splitlines()[0] in printed


@pytest.mark.timeout(120)
def test_a_rerun_reuses_the_cached_models_and_trains_nothing(
    sweep: tuple[Path, dict[str, Any], str]
) -> None:
    out, first, _ = sweep
    assert run_emlive("bench-quality", "--doses", "100", *SWEEP_ARGS[2:], "-o", str(out)) == 0
    again = json.loads((out / "quality.json").read_text())
    assert again["trained"] == []
    rows = [r["psnr_frames"] for r in again["settings"][0]["rows"]]
    assert rows == [r["psnr_frames"] for r in first["settings"][1]["rows"]]  # the same models, the same numbers


@pytest.mark.timeout(120)
def test_the_sweep_trains_each_detector_with_the_blind_spot_its_noise_calls_for(tmp_path: Path) -> None:
    """As a user who follows the trainer's advice: 1 x 1 on a counting detector, 3 x 3 on the integrating one's
    charge sharing (a 1 x 1 network there learns to copy the correlated noise)."""
    for mode, want in ((DetectorMode.counting, (1, 1)), (DetectorMode.integrating, (3, 3))):
        write_simulation(Setting(20.0, mode).simulation(128, 9, 5), tmp_path / mode.value)
        assert recommended_blind_spot(tmp_path / mode.value / "noisy.tif") == want, mode
