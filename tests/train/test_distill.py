"""``emlive distill``: a tiny student from a tiny teacher on a tiny simulated movie, through every consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, load_checkpoint, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.core.student import StudentConfig, StudentNet
from emlive.train.config import CONFIG_DIR, load_config, load_distill_config, shipped_configs
from emlive.train.distill import distill

from .conftest import SHORT, TINY_STEPS

TINY = ["network.width=8", "network.depth=3", "network.unshuffle=2", *TINY_STEPS, *SHORT]  # a tiny student


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    files = write_simulation(SimulationConfig(height=48, width=56, frames=12, dose=5.0, seed=3), out)
    return Path(files.noisy).parent


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight blind-spot teacher with a noise model on its card (the student's card must carry it)."""
    torch.manual_seed(0)
    cfg = NetworkConfig(width=8, scales=2, blocks=1, blind_spot=(1, 1))
    card = ModelCard.model_validate(
        {
            "name": "tiny-teacher",
            "network": cfg.model_dump(),
            "noise": {"method": "difference", "recommended_blind_spot": [1, 1]},
        }
    )
    return save_model(tmp_path_factory.mktemp("teacher") / "teacher.pt", BlindSpotNet(cfg), card)


@pytest.fixture(scope="module")
def student(movie: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = load_distill_config(
        "distill-cpu-live",
        [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", f"output.root={out}", *TINY],
        teacher=teacher,
    )
    return distill(cfg).model


@pytest.mark.timeout(240)
def test_distill_writes_a_student_whose_card_records_the_teacher(student: Path, teacher: Path) -> None:
    net, card = load_checkpoint(student)
    assert isinstance(net, StudentNet) and card.kind == "student" and card.blind_spot == (0, 0)
    assert card.teacher is not None
    assert card.teacher.path == str(teacher) and card.teacher.name == "tiny-teacher"
    assert card.teacher.blind_spot == (1, 1) and card.teacher.network["width"] == 8
    assert card.noise is not None and card.noise.recommended_blind_spot == (1, 1)
    assert card.training.steps and card.training.steps > 0 and card.training.val_psnr is not None
    saved = json.loads((student.parent / "model_card.json").read_text())
    assert saved["network"]["kind"] == "student" and saved["teacher"]["name"] == "tiny-teacher"
    curves = json.loads((student.parent / "curves.json").read_text())  # the run's curves, as emlive train's
    assert len(curves["epochs"]) == card.training.epochs and curves["epochs"][-1]["val_psnr"] is not None
    assert (student.parent / "curves.png").stat().st_size > 10_000
    teacher_out = sorted((student.parent / "teacher").glob("*.npy"))
    assert len(teacher_out) == 2  # the training and the validation split
    with open_movie(card.training.data[0]) as m:
        assert np.load(teacher_out[0], mmap_mode="r").shape == (m.shape[0] - round(0.125 * m.shape[0]), 48, 56)


@pytest.mark.timeout(120)
def test_student_targets_are_the_teachers_output_not_the_noisy_frame(
    movie: Path, teacher: Path, tmp_path: Path
) -> None:
    from emlive.export.runtime import Denoiser
    from emlive.train.api import open_splits
    from emlive.train.distill import TeacherCrops, teacher_targets

    cfg = load_distill_config("distill-cpu-live", [f"data.train={movie / 'noisy.tif'}", *TINY], teacher=teacher)
    sources, _ = open_splits(cfg, cfg.data.train, None)
    net, card = load_checkpoint(teacher)
    targets = teacher_targets(Denoiser.from_network(net, card, backend="torch_cpu"), sources[0], tmp_path / "t.npy", 5)
    crops = TeacherCrops(sources, [targets], 5, 32, 4, None, seed=0, fixed=True)
    _, _, t, y, x, size = crops.locate(0)
    window, target = crops[0]
    expected = net(torch.from_numpy(sources[0].region(t, 0, 0, (48, 56), 5))[None])[0, 0, y : y + size, x : x + size]
    assert torch.allclose(target[0], expected.detach(), atol=1e-4)
    assert not torch.allclose(target[0], window[2], atol=1e-2)  # not the noisy center


@pytest.mark.timeout(240)
def test_student_through_export_runtime_and_denoise(student: Path, movie: Path, tmp_path: Path) -> None:
    from emlive.export.onnx_export import export_onnx
    from emlive.export.runtime import Denoiser

    result = export_onnx(student, tmp_path / "student.onnx")
    assert all(p.passed for p in result.parity)
    with open_movie(movie / "noisy.tif") as m:
        window = np.stack([m.frame(i) for i in range(5)])
    outs = {}
    for name, path in (("pt", student), ("onnx", result.path)):
        den = Denoiser.load(path, "torch_cpu" if name == "pt" else "onnx_cpu", threads=1)
        outs[name] = den.denoise_window(window)
        assert outs[name].shape == window.shape[1:]
    span = float(np.ptp(outs["pt"]))
    assert np.max(np.abs(outs["pt"] - outs["onnx"])) <= 1e-4 * span
    out = tmp_path / "denoised.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "emlive", "denoise", str(movie / "noisy.tif"), "-m", str(result.path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    with open_movie(out) as denoised:
        assert denoised.shape == (12, 48, 56)


@pytest.mark.timeout(60)
def test_distill_config_is_refused_by_train_and_needs_a_teacher(teacher: Path) -> None:
    assert CONFIG_DIR / "distill-cpu-live.yaml" in shipped_configs(distill=True)
    assert CONFIG_DIR / "distill-cpu-live.yaml" not in shipped_configs()
    with pytest.raises(ConfigError, match="emlive distill --teacher"):
        load_config("distill-cpu-live")
    with pytest.raises(ConfigError, match="--teacher"):
        load_distill_config("distill-cpu-live")
    from emlive.train.distill import load_teacher

    three = load_distill_config("distill-cpu-live", ["network.frames=3"], teacher=teacher)
    with pytest.raises(ConfigError, match=r"network\.frames=3 but the teacher"):
        load_teacher(three)
    with pytest.raises(ConfigError, match=r"data.crop_size=30: must be a multiple of 4"):
        load_distill_config("distill-cpu-live", ["data.crop_size=30"], teacher=teacher)


@pytest.mark.parametrize("path", shipped_configs(distill=True), ids=lambda p: p.stem)
def test_shipped_distill_config_header_and_student(path: Path) -> None:
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "# Machine:" in header and "GPU" in header and "CPU" in header and " GB " in header
    assert "emlive distill --teacher" in header
    raw = yaml.safe_load(path.read_text())
    assert StudentConfig.model_validate(raw["network"]).kind == "student"


@pytest.mark.timeout(240)
def test_distill_command_prints_macs(movie: Path, teacher: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "emlive",
        "distill",
        "--teacher",
        str(teacher),
        "--config",
        "distill-cpu-live",
        f"data.train={movie / 'noisy.tif'}",
        "--print-config",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "k multiply-adds per pixel" in proc.stdout and '"kind": "student"' in proc.stdout


@pytest.mark.timeout(120)
def test_teacher_ensemble_targets_average_the_undone_transforms(movie: Path, teacher: Path, tmp_path: Path) -> None:
    from emlive.core.ensemble import Ensemble
    from emlive.export.runtime import Denoiser
    from emlive.train.api import open_splits
    from emlive.train.distill import teacher_targets

    cfg = load_distill_config("distill-cpu-live", [f"data.train={movie / 'noisy.tif'}", *TINY], teacher=teacher)
    assert cfg.teacher_ensemble is Ensemble.dihedral  # the shipped config's choice
    sources, _ = open_splits(cfg, cfg.data.train, None)
    net, card = load_checkpoint(teacher)
    den = Denoiser.from_network(net, card, backend="torch_cpu")
    one = teacher_targets(den, sources[0], tmp_path / "one.npy", 5, Ensemble.none)
    eight = teacher_targets(den, sources[0], tmp_path / "eight.npy", 5, Ensemble.dihedral)
    window = torch.from_numpy(sources[0].region(sources[0].first + 4, 0, 0, (48, 56), 5))
    passes = []
    for turns in (0, 1):
        for dims in ((), (2,), (1,), (1, 2)):
            x = torch.rot90(torch.flip(window, dims) if dims else window, turns, (1, 2))
            y = torch.rot90(net(x[None].contiguous())[0, 0].detach(), -turns, (0, 1))
            passes.append(torch.flip(y, [d - 1 for d in dims]) if dims else y)
    expected = torch.stack(passes).mean(0).numpy()
    np.testing.assert_allclose(eight[4], expected, atol=1e-4)
    assert np.abs(eight[4] - one[4]).max() > 1e-3  # the ensemble is not the single pass


@pytest.mark.timeout(240)
def test_oracle_student_learns_the_clean_frames_without_a_teacher(movie: Path, tmp_path: Path) -> None:
    from emlive.train.api import open_splits
    from emlive.train.distill import clean_targets

    over = [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", f"output.root={tmp_path}"]
    cfg = load_distill_config("distill-cpu-live", [*over, "targets=clean", *TINY])
    assert cfg.teacher is None
    sources, _ = open_splits(cfg, cfg.data.train, None)
    src = sources[0]
    with open_movie(movie / "clean.tif") as clean:
        z = clean_targets(src, clean, tmp_path / "z.npy")
        t = src.first + 3
        np.testing.assert_allclose(z[3] * src.std[t] + src.mean[t], clean[t], rtol=1e-4, atol=1e-3)
    model = distill(cfg).model
    net, card = load_checkpoint(model)
    assert isinstance(net, StudentNet) and card.teacher is None and "clean frames" in (card.training.loss or "")
    with pytest.raises(ConfigError, match=r"targets=clean trains on the ground truth: set data\.clean"):
        load_distill_config(
            "distill-cpu-live", [f"data.train={movie / 'noisy.tif'}", "data.clean=null", "targets=clean"]
        )


@pytest.mark.timeout(60)
def test_dihedral_ensemble_is_refused_for_an_anisotropic_teacher() -> None:
    from emlive.core.ensemble import Ensemble, ensemble_for

    assert ensemble_for(Ensemble.dihedral, (3, 3), [[0.1, 0.2, 0.1], [0.2, 1, 0.2], [0.1, 0.2, 0.1]]).passes == 8
    assert ensemble_for(Ensemble.flips, (1, 3), None).passes == 4
    with pytest.raises(ConfigError, match=r"blind spot \[1, 3\].*use ensemble=flips"):
        ensemble_for(Ensemble.dihedral, (1, 3), None)
    with pytest.raises(ConfigError, match="noise correlation"):
        ensemble_for(Ensemble.dihedral, (1, 1), [[0, 0, 0], [0.4, 1, 0.4], [0, 0, 0]])


@pytest.mark.timeout(120)
def test_teacher_targets_are_reused_only_for_the_same_teacher_movie_and_ensemble(
    movie: Path, teacher: Path, tmp_path: Path
) -> None:
    from emlive.core.ensemble import Ensemble
    from emlive.export.runtime import Denoiser
    from emlive.train.api import open_splits
    from emlive.train.distill import _targets_key, teacher_targets

    cfg = load_distill_config("distill-cpu-live", [f"data.train={movie / 'noisy.tif'}", *TINY], teacher=teacher)
    src = open_splits(cfg, cfg.data.train, None)[0][0]
    net, card = load_checkpoint(teacher)
    den = Denoiser.from_network(net, card, backend="torch_cpu")
    path = tmp_path / "targets.npy"
    first = np.array(teacher_targets(den, src, path, 5, Ensemble.none, _targets_key(teacher, src, 5, Ensemble.none)))
    stamp = path.stat().st_mtime_ns
    again = teacher_targets(den, src, path, 5, Ensemble.none, _targets_key(teacher, src, 5, Ensemble.none))
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again, first)  # reused, not recomputed
    flips = teacher_targets(den, src, path, 5, Ensemble.flips, _targets_key(teacher, src, 5, Ensemble.flips))
    assert not np.allclose(flips, first)  # another ensemble: recomputed
    assert json.loads(path.with_suffix(".json").read_text())["ensemble"] == "flips"


@pytest.mark.timeout(120)
def test_binned_sources_bin_noisy_windows_and_clean_targets_alike(movie: Path, tmp_path: Path) -> None:
    from emlive.train.api import open_splits
    from emlive.train.distill import clean_targets

    over = [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", "targets=clean", "data.bin=2"]
    cfg = load_distill_config("distill-cpu-live", [*over, *TINY, "data.crop_size=16", "data.val_crop_size=16"])
    src = open_splits(cfg, cfg.data.train, None)[0][0]
    assert src.bin == 2 and (src.height, src.width) == (24, 28)
    t = src.first + 3
    with open_movie(movie / "noisy.tif") as noisy, open_movie(movie / "clean.tif") as clean:
        binned = np.asarray(noisy[t], dtype=np.float32).reshape(24, 2, 28, 2).sum(axis=(1, 3))
        window = src.region(t, 0, 0, (24, 28), 5)
        np.testing.assert_allclose(window[2] * src.std[t] + src.mean[t], binned, rtol=1e-4, atol=1e-2)
        z = clean_targets(src, clean, tmp_path / "z.npy")
        expected = np.asarray(clean[t], dtype=np.float32).reshape(24, 2, 28, 2).sum(axis=(1, 3))
        np.testing.assert_allclose(z[3] * src.std[t] + src.mean[t], expected, rtol=1e-4, atol=1e-2)
