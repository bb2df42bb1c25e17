"""evaluate(): reference metrics, cross-correlation SNR and its inflation by overlapping windows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter, uniform_filter1d

from emlive.analysis.evaluate import EvaluationReport, evaluate, frame_table, summary_table
from emlive.analysis.plots import plot_evaluation
from emlive.core.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from conftest import Synth


def _running_mean(movie: np.ndarray, n: int = 5) -> np.ndarray:
    """A 5-frame temporal average: the simplest multi-frame denoiser (consecutive outputs share 4 inputs)."""
    return uniform_filter1d(movie.astype(np.float64), size=n, axis=0, mode="mirror").astype(np.float32)


def test_less_noisy_movie_scores_higher(synth: type[Synth]) -> None:
    clean = synth.scene((64, 64))
    noisy = synth.movie(clean, 6, seed=5)
    denoised = np.stack([gaussian_filter(f, 1.0) for f in noisy])
    report = evaluate(denoised, clean=np.stack([clean] * 6), noisy=noisy)
    summary = report.summary()
    for metric in ("psnr_paper", "ssim_paper", "psnr_fixed", "ssim_fixed"):
        den, raw = report.reference["denoised"][metric], report.reference["noisy"][metric]
        assert len(den) == len(raw) == 6
        assert all(d > r for d, r in zip(den, raw, strict=True)), metric
        assert summary["denoised"][metric].mean > summary["noisy"][metric].mean
    assert report.data_range == pytest.approx(float(clean.max() - clean.min()))


def test_consecutive_snr_of_a_temporal_average_is_inflated(synth: type[Synth]) -> None:
    clean = synth.scene((64, 64), low=1.0, high=6.0)
    noisy = synth.movie(clean, 24, seed=6)
    averaged = _running_mean(noisy, 5)
    report = evaluate(averaged, noisy=noisy, offset_n=5)
    assert not report.reference
    den, raw = report.snr["denoised"], report.snr["noisy"]
    assert len(den["snr_consecutive"]) == 23 and len(den["snr_offset_n"]) == 19
    consecutive, offset = np.mean(den["snr_consecutive"]), np.mean(den["snr_offset_n"])
    # 4 of 5 inputs shared: shared noise raises the correlation of neighbours well above that of disjoint windows.
    assert consecutive > offset + 3.0
    # Independent noisy frames: both offsets read the same SNR (the scene is static).
    assert abs(np.mean(raw["snr_consecutive"]) - np.mean(raw["snr_offset_n"])) < 0.5
    # Averaging 5 frames does improve the honest SNR over the noisy frames.
    assert offset > np.mean(raw["snr_offset_n"]) + 3.0


def test_json_is_strict_and_keeps_infinities(synth: type[Synth]) -> None:
    clean = np.stack([synth.scene((32, 32))] * 3)
    report = evaluate(clean.copy(), clean=clean)  # perfect denoiser: PSNR inf, static movie: SNR inf
    payload = json.loads(report.to_json())
    assert payload["reference"]["denoised"]["psnr_paper"] == ["inf", "inf", "inf"]
    assert payload["snr"]["denoised"]["snr_consecutive"] == ["inf", "inf"]
    assert payload["snr"]["denoised"]["snr_offset_n"] == []
    stat = payload["summary"]["denoised"]["psnr_fixed"]
    assert stat["n"] == 3 and stat["n_nonfinite"] == 3 and stat["mean"] == "nan"
    assert payload["summary"]["denoised"]["ssim_paper"]["mean"] == pytest.approx(1.0)
    assert float(payload["reference"]["denoised"]["psnr_paper"][0]) == math.inf


def test_tables_and_picture(tmp_path: Path, synth: type[Synth]) -> None:
    clean = synth.scene((48, 40))
    noisy = synth.movie(clean, 8, seed=7)
    report = evaluate(_running_mean(noisy), clean=np.stack([clean] * 8), noisy=noisy, offset_n=3)
    table = frame_table(report)
    assert len(table.splitlines()) == 9 and "den:psnr_paper" in table and "noisy:snr(i,i+3)" in table
    assert "snr_offset_3" in summary_table(report)
    png = plot_evaluation(report, tmp_path / "eval.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report.preview) == {"clean", "noisy", "denoised"}


def test_reads_files_and_names_both_on_mismatch(tmp_path: Path, synth: type[Synth]) -> None:
    clean = synth.scene((40, 40))
    noisy = synth.movie(clean, 6, seed=8)
    den_path, short_path = tmp_path / "den.tif", tmp_path / "short.tif"
    tifffile.imwrite(den_path, _running_mean(noisy), photometric="minisblack")
    tifffile.imwrite(short_path, noisy[:4], photometric="minisblack")
    report = evaluate(den_path, noisy=noisy)
    assert isinstance(report, EvaluationReport) and report.denoised == str(den_path)
    with pytest.raises(InputDataError, match=r"short\.tif.*\(4, 40, 40\).*den\.tif.*\(6, 40, 40\)"):
        evaluate(den_path, clean=short_path)
    with pytest.raises(ConfigError, match="offset_n=0"):
        evaluate(den_path, offset_n=0)
    bad = _running_mean(noisy)
    bad[3, 1, 2] = np.nan
    with pytest.raises(InputDataError, match="frame 3"):
        evaluate(bad)
