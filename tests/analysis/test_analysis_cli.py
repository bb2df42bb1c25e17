"""``emlive noise-stats`` and ``emlive evaluate`` through the entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from scipy.ndimage import uniform_filter1d
from typer.testing import CliRunner

from emlive.cli import app

if TYPE_CHECKING:
    from conftest import Synth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _emlive(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emlive", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _write(path: Path, movie: np.ndarray) -> Path:
    tifffile.imwrite(path, movie, photometric="minisblack")
    return path


def test_noise_stats_entry_point_json_and_png(tmp_path: Path, synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((96, 128)), 3, kernel="horizontal").astype(np.uint16)
    path = _write(tmp_path / "movie.tif", movie)
    png = tmp_path / "out" / "corr.png"
    proc = _emlive("noise-stats", str(path), "--frame", "1", "--out", str(png), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["blind_spot"] == [1, 3]
    assert payload["method"] == "difference" and payload["frames"] == [1, 2]
    assert len(payload["correlation"]) == 31 and payload["offsets"][0] == -15
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_noise_stats_table_and_config_line(tmp_path: Path, synth: type[Synth]) -> None:
    path = _write(tmp_path / "vert.tif", synth.movie(synth.scene((96, 96)), 2, kernel="vertical"))
    runner = CliRunner()
    out_png = tmp_path / "v.png"
    result = runner.invoke(app, ["noise-stats", str(path), "--max-distance", "8", "--out", str(out_png)])
    assert result.exit_code == 0, result.output
    assert "blind_spot: [3, 1]" in result.stdout
    assert "dy \\ dx" in result.stdout and "+1.000" in result.stdout
    assert out_png.exists()


def test_help_states_the_rules() -> None:
    runner = CliRunner()
    ns_help = runner.invoke(app, ["noise-stats", "--help"], terminal_width=120).stdout
    assert "difference" in ns_help and "residual" in ns_help and "smallest odd window" in ns_help
    ev_help = runner.invoke(app, ["evaluate", "--help"], terminal_width=120).stdout
    assert "FIXED data range" in ev_help and "disjoint inputs" in ev_help


def test_evaluate_entry_point_json_and_png(tmp_path: Path, synth: type[Synth]) -> None:
    clean = synth.scene((64, 64))
    noisy = synth.movie(clean, 12, seed=3)
    denoised = uniform_filter1d(noisy, size=5, axis=0, mode="mirror")
    d = _write(tmp_path / "den.tif", denoised)
    c = _write(tmp_path / "clean.tif", np.stack([clean] * 12).astype(np.float32))
    n = _write(tmp_path / "noisy.tif", noisy)
    png = tmp_path / "eval.png"
    proc = _emlive("evaluate", "--denoised", str(d), "--clean", str(c), "--noisy", str(n), "--json", "--plot",
                   str(png), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["shape"] == [12, 64, 64] and payload["offset_n"] == 5
    den, raw = payload["summary"]["denoised"], payload["summary"]["noisy"]
    assert den["psnr_paper"]["mean"] > raw["psnr_paper"]["mean"]
    assert den["snr_consecutive"]["mean"] > den["snr_offset_n"]["mean"]
    assert len(payload["snr"]["denoised"]["snr_offset_n"]) == 7
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_evaluate_without_reference_prints_tables(tmp_path: Path, synth: type[Synth]) -> None:
    d = _write(tmp_path / "den.tif", synth.movie(synth.scene((48, 48)), 8))
    result = CliRunner().invoke(
        app, ["evaluate", "--denoised", str(d), "--offset-n", "3", "--plot", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    assert "den:snr(i,i+1)" in result.stdout and "snr_offset_3" in result.stdout
    assert "psnr" not in result.stdout
    assert (tmp_path / "p.png").exists()


def test_evaluate_mismatch_is_one_clear_line(tmp_path: Path, synth: type[Synth]) -> None:
    clean = synth.scene((32, 32))
    d = _write(tmp_path / "den.tif", synth.movie(clean, 6))
    c = _write(tmp_path / "ref.tif", synth.movie(clean, 5))
    proc = _emlive("evaluate", "--denoised", str(d), "--clean", str(c), cwd=tmp_path)
    assert proc.returncode == 2
    assert "ref.tif" in proc.stderr and "den.tif" in proc.stderr and "(5, 32, 32)" in proc.stderr
    assert "Traceback" not in proc.stderr
