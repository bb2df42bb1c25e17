"""``emlive simulate``: the subcommand on its own app, and once through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

from emlive.core import cli as core_cli
from emlive.core.errors import ConfigError
from emlive.core.readers import open_movie
from emlive.core.simulate import CorrelatedNoise, OutputDtype, OutputFormat


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so the subcommand is called by name as under `emlive`
        pass

    core_cli.register(app)
    return app


def test_cli_choices_mirror_the_simulator_enums() -> None:
    assert [c.value for c in core_cli.CorrelatedChoice] == [c.value for c in CorrelatedNoise]
    assert [c.value for c in core_cli.FormatChoice] == [c.value for c in OutputFormat]
    assert [c.value for c in core_cli.DtypeChoice] == [c.value for c in OutputDtype]


def test_help_says_what_it_writes_and_the_units() -> None:
    result = CliRunner().invoke(_app(), ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("noisy.", "clean.", "manifest.json", "electrons per pixel per frame", "--correlated", "px/frame"):
        assert text in result.output


def test_simulate_writes_the_requested_movie(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["simulate", "-o", str(out), "--frames", "3", "--height", "24", "--width", "40", "--format", "mrc"]
    args += ["--correlated", "vertical", "--seed", "5", "--particles", "2", "--dose", "7.5", "--gain", "2"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    with open_movie(out / "noisy.mrc") as noisy, open_movie(out / "clean.mrc") as clean:
        assert noisy.shape == clean.shape == (3, 24, 40)
        assert noisy.dtype == np.uint16 and clean.dtype == np.float32
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["correlated_noise"] == "vertical" and config["seed"] == 5 and config["n_particles"] == 2
    assert config["dose"] == 7.5 and config["gain"] == 2.0


def test_realistic_detector_and_crystal_options_reach_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "real"
    args = ["simulate", "-o", str(out), "--frames", "2", "--size", "32", "--dose", "20", "--gain", "8"]
    args += ["--offset", "100", "--read-noise", "10", "--correlated", "isotropic", "--drift", "0.3"]
    args += ["--drift-angle", "30", "--lattice-contrast", "0.8", "--lattice-spacing", "5", "--lattice-coverage", "0.8"]
    args += ["--particle-contrast", "-0.7", "--particle-speed", "0"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["config"]
    assert config["drift_angle"] == 30.0 and config["field_lattice_contrast"] == 0.8
    assert config["field_lattice_spacing"] == 5.0 and config["field_lattice_coverage"] == 0.8
    assert config["particle_contrast"] == -0.7 and config["particle_speed"] == 0.0
    truth = manifest["truth"]
    assert truth["gain"] == 8.0 and truth["offset"] == 100.0 and truth["read_noise"] == 10.0
    assert 0.2 < truth["kernel_sum_of_squares"] < 0.22 and len(truth["kernel"]) == 3
    bad = CliRunner().invoke(_app(), ["simulate", "-o", str(out), "--lattice-contrast", "1.5"])
    assert isinstance(bad.exception, ConfigError) and "field_lattice_contrast=1.5" in str(bad.exception)


def test_size_sets_both_sides(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["simulate", "-o", str(tmp_path), "--frames", "1", "--size", "20"])
    assert result.exit_code == 0, result.output
    with open_movie(tmp_path / "noisy.tif") as movie:
        assert movie.shape == (1, 20, 20)


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["simulate", "-o", str(tmp_path), "--dose", "-1"])
    assert isinstance(result.exception, ConfigError)
    assert "dose=-1.0" in str(result.exception)


def test_through_the_emlive_entry_point(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "emlive", "simulate", "-o", str(tmp_path), "--frames", "2", "--size", "16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "noisy.tif").is_file() and (tmp_path / "manifest.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "emlive", "simulate", "-o", str(tmp_path), "--frames", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "frames=0" in bad.stderr
