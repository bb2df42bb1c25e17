"""``emlive bench-quality`` with several labelled models in one table (a teacher, a student and a self-ensembled
teacher) on one tiny held-out movie: rows, per-frame JSON, the picture, and the ``-m`` errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.bench.model_specs import ModelSpec, parse_model_specs
from emlive.bench.quality import QualityRow, run_quality_benchmark
from emlive.cli import main
from emlive.core.ensemble import Ensemble, ensemble_average
from emlive.core.errors import ConfigError
from emlive.core.metrics import psnr_paper
from emlive.core.modelcard import ModelCard, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.simulate import SimulationConfig, simulate_movie
from emlive.core.student import StudentConfig, StudentNet
from emlive.core.windows import stack_window, window_indices
from emlive.export.runtime import Denoiser

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
    return {
        "teacher": save_model(root / "teacher.pt", teacher, ModelCard(name="tiny-teacher", network=teacher_cfg)),
        "student": save_model(root / "student.pt", StudentNet(student_cfg), student_card),
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


def test_dihedral_is_refused_for_a_model_whose_blind_spot_is_not_square(tmp_path: Path) -> None:
    cfg = NetworkConfig(width=8, scales=2, blocks=1, blind_spot=(1, 3))
    path = save_model(tmp_path / "wide.pt", BlindSpotNet(cfg), ModelCard(name="wide", network=cfg))
    specs = parse_model_specs([f"w={path}@dihedral"])
    with pytest.raises(ConfigError, match=r"-m 'w=.*wide.pt@dihedral': ensemble=dihedral rotates .*use ensemble=flips"):
        _run(specs, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything ran"


def _emlive(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["emlive", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_command_prints_one_row_per_model(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench-quality", "-m", f"t={models['teacher']}", "-m", f"s={models['student']}", "-o", str(tmp_path)]
    small = ["--size", "40", "--frames", "8", "--eval-frames", "2", "--no-bm3d", "--threads", "1"]
    assert _emlive(monkeypatch, *args, *small, "--correlated", "isotropic", "--dose", "20") == 0
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
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _emlive(monkeypatch, "bench-quality", "-m", spec, "-o", str(tmp_path / "q")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


@pytest.mark.timeout(60)
def test_unknown_noise_correlation_is_a_usage_error_naming_the_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _emlive(monkeypatch, "bench-quality", "--correlated", "diagonal", "-o", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "'diagonal' is not one of" in err and "isotropic" in err
    assert not (tmp_path / "quality.json").exists()
