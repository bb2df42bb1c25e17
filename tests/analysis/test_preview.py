"""``emlive denoise --preview``: the before/after PNG (and MP4 with the preview extra) of a real denoised movie."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from emlive.analysis.denoise import denoise_path
from emlive.analysis.plots import preview_figure_size
from emlive.analysis.preview import MoviePreview, check_preview, preview_frames
from emlive.cli import app
from emlive.core.errors import ConfigError
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.core.writers import write_movie

MODEL = Path(__file__).resolve().parents[2] / "models" / "synthetic-live.pt"  # the shipped model, a real denoiser
PIXEL_NM = 0.125
FRAMES = 9


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="the shipped model is a .pt checkpoint")
    out = tmp_path_factory.mktemp("sim")
    files = write_simulation(SimulationConfig(height=64, width=80, frames=FRAMES, dose=5.0, seed=3), out)
    from emlive.core.readers import open_movie

    with open_movie(files.noisy) as m:
        data = m[:]
    return write_movie(out / "noisy_px.tif", data, PIXEL_NM)


def _halves(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """The left (raw) and right (denoised) halves of the picture, without the title band."""
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    body = pixels[int(0.1 * pixels.shape[0]) :]
    half = body.shape[1] // 2
    return body[:, :half], body[:, half : 2 * half]


@pytest.mark.timeout(120)
def test_png_preview_through_the_cli(movie: Path, tmp_path: Path) -> None:
    png = tmp_path / "pictures" / "before_after.png"
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(
        app,
        ["denoise", str(movie), "-o", str(out), "--model", str(MODEL), "--threads", "2", "--no-progress",
         "--preview", str(png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"preview: {png}" in result.output
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = preview_figure_size(3, 64, 80)  # three rows (first, middle, last), 120 dpi
        assert image.size == (round(width * 120), round(height * 120))
    raw, denoised = _halves(png)
    assert np.abs(raw - denoised).mean() > 5.0  # the raw panels are noisy, the denoised ones smooth
    assert raw.std() > denoised.std()


@pytest.mark.timeout(120)
def test_preview_keeps_only_the_frames_it_shows(movie: Path, tmp_path: Path) -> None:
    png = tmp_path / "p.png"
    with MoviePreview(png) as preview:
        denoise_path(movie, tmp_path / "o.tif", MODEL, threads=2, frames="2:8", progress=False, observer=preview)
    assert sorted(preview.pairs) == preview_frames(2, 8) == [2, 4, 7]
    raw, denoised = preview.pairs[4]
    assert raw.shape == denoised.shape == (64, 80)
    assert not np.allclose(raw, denoised)
    assert png.is_file()


@pytest.mark.timeout(120)
def test_mp4_preview_has_every_frame(movie: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        pytest.skip("the preview extra (imageio-ffmpeg) is not installed: pip install 'emlive[preview]'")
    import imageio_ffmpeg

    mp4 = tmp_path / "before_after.mp4"
    with MoviePreview(mp4) as preview:
        denoise_path(movie, tmp_path / "o.tif", MODEL, threads=2, progress=False, observer=preview)
    assert not preview.pairs  # the MP4 streams: no frame is kept
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    assert len(frames) == FRAMES
    assert meta["size"] == (160, 64)  # raw | denoised, 2 x 80 wide, padded to the 16-px macro block
    left, right = frames[0][:, :80, 0].astype(float), frames[0][:, 80:, 0].astype(float)
    assert left.std() > right.std()  # raw noisy, denoised smooth


def test_preview_errors_name_the_value_and_the_fix(movie: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.gif.*name a \.png or an \.mp4"):
        check_preview(tmp_path / "p.gif")
    result = CliRunner().invoke(
        app,
        ["denoise", str(movie), str(movie), "-o", str(tmp_path / "out"), "--model", str(MODEL),
         "--preview", str(tmp_path / "p.png")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "--preview" in str(result.exception) or "--preview" in result.output


@pytest.mark.timeout(60)
def test_png_preview_without_matplotlib_says_what_to_install(movie: Path, tmp_path: Path) -> None:
    """The light install has no matplotlib: --preview x.png stops before any frame, naming the package."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    out = tmp_path / "out.tif"
    cmd = [sys.executable, "-m", "emlive", "denoise", str(movie), "-o", str(out), "--model", str(MODEL),
           "--preview", str(tmp_path / "p.png")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--preview needs matplotlib: pip install 'emlive[train]' or matplotlib" in proc.stderr
    assert not out.exists()
