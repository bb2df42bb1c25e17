"""emlive denoise: formats and pixel size kept, folders, --dtype input, streaming, tiling, windows, errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from emlive.analysis.denoise import denoise_path, denoise_to_file, parse_frames
from emlive.core.errors import ConfigError, InputDataError, InputFileError, ModelFileError
from emlive.core.modelcard import ModelCard, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.pixeltypes import PIXEL_TYPES, storable
from emlive.core.readers import Movie, open_movie
from emlive.core.windows import stack_window, window_indices
from emlive.core.writers import write_movie
from emlive.export.runtime import Denoiser
from emlive.export.tiling import plan_tiles

PIXEL_NM = 0.125
SMALL = NetworkConfig(width=8, scales=3, blocks=1)


def _formats() -> ModuleType:
    """tests/core/formats.py (minimal DM/SER writers), loaded by path: the tests folder is no package."""
    path = Path(__file__).parents[1] / "core" / "formats.py"
    spec = importlib.util.spec_from_file_location("emlive_tests_core_formats", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = BlindSpotNet(SMALL)
    with torch.no_grad():  # random weights give an almost constant output; this makes it vary about as the noise
        net.head[-1].weight.mul_(1000.0)
    path = tmp_path_factory.mktemp("model") / "small.pt"
    return save_model(path, net, ModelCard(network=SMALL))


@pytest.fixture(scope="module")
def denoiser(model_path: Path) -> Denoiser:
    return Denoiser.load(model_path, "auto", threads=2)


def _noisy(frames: int, shape: tuple[int, int] = (48, 40), seed: int = 0, lam: float = 20.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    scene = lam * (1.0 + 0.5 * np.sin(yy / 5.0) * np.cos(xx / 7.0))
    return np.stack([rng.poisson(scene) for _ in range(frames)]).astype(np.uint16)


def _expected(movie: np.ndarray, denoiser: Denoiser, t: int) -> np.ndarray:
    return denoiser.denoise_window(stack_window(movie, window_indices(t, denoiser.frames, len(movie))))


def _read(path: Path) -> tuple[np.ndarray, float | None, np.dtype[Any]]:
    with open_movie(path) as m:
        return m[:], m.pixel_size_nm, m.dtype


def test_cli_tiff_to_tiff_keeps_pixel_size_and_equals_the_window_model(
    tmp_path: Path, model_path: Path, denoiser: Denoiser
) -> None:
    movie = _noisy(7)
    src = write_movie(tmp_path / "in.tif", movie, PIXEL_NM)
    out = tmp_path / "res" / "out.tif"
    cmd = [sys.executable, "-m", "emlive", "denoise", str(src), "-o", str(out), "--model", str(model_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([*cmd, "--threads", "2"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "frames/s" in proc.stdout and "MP/s" in proc.stdout
    assert "backend" in proc.stderr  # the backend and device actually used are logged
    data, pixel, dtype = _read(out)
    assert data.shape == movie.shape and dtype == np.float32
    assert pixel == pytest.approx(PIXEL_NM)
    scale = float(movie.std())
    for t in (0, 1, 3, 5, 6):  # both ends and the middle
        np.testing.assert_allclose(data[t], _expected(movie, denoiser, t), rtol=0, atol=1e-4 * scale)
    # the same output again is refused without --overwrite: one line, exit code 2, no traceback
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    assert str(out) in again.stderr and "--overwrite" in again.stderr


def test_mrc_to_mrc_keeps_pixel_size_and_format(tmp_path: Path, denoiser: Denoiser) -> None:
    movie = _noisy(4, seed=1)
    src = write_movie(tmp_path / "in.mrcs", movie.astype(np.int16), PIXEL_NM)
    (tmp_path / "out").mkdir()
    report = denoise_path(src, tmp_path / "out", denoiser, progress=False)
    out = tmp_path / "out" / "in.mrcs"  # a folder OUTPUT: same name, same format
    assert report.movies[0].output == str(out) and report.movies[0].format == "mrc"
    data, pixel, dtype = _read(out)
    assert dtype == np.float32 and data.shape == movie.shape
    assert pixel == pytest.approx(PIXEL_NM, rel=1e-6)
    assert report.frames == 4 and report.frames_per_second > 0 and report.megapixels_per_second > 0
    np.testing.assert_allclose(data[0], _expected(movie, denoiser, 0), rtol=0, atol=1e-4 * float(movie.std()))


def test_folder_of_movies(tmp_path: Path, denoiser: Denoiser) -> None:
    src = tmp_path / "session"
    src.mkdir()
    write_movie(src / "a.tif", _noisy(3, seed=2), PIXEL_NM)
    write_movie(src / "b.mrc", _noisy(2, seed=3).astype(np.int16), 0.5)
    np.save(src / "c.npy", _noisy(2, seed=4))
    (src / "notes.txt").write_text("not a movie")
    out = tmp_path / "denoised"
    report = denoise_path(src, out, denoiser, progress=False)
    shapes = {Path(m.output).name: _read(Path(m.output))[0].shape for m in report.movies}
    assert shapes == {"a.tif": (3, 48, 40), "b.mrc": (2, 48, 40), "c.tif": (2, 48, 40)}
    assert _read(out / "b.mrc")[1] == pytest.approx(0.5) and _read(out / "a.tif")[1] == pytest.approx(PIXEL_NM)
    # --format mrc on a folder: every output MRC; --frames applies to each movie
    report = denoise_path(src, tmp_path / "as_mrc", denoiser, fmt="mrc", frames="0:2", progress=False)
    assert sorted(Path(m.output).name for m in report.movies) == ["a.mrc", "b.mrc", "c.mrc"]
    assert all(m.frames == 2 for m in report.movies)
    with pytest.raises(InputFileError, match="must be a folder"):
        denoise_path(src, tmp_path / "x.tif", denoiser, progress=False)
    with pytest.raises(InputFileError, match="separate folder"):
        denoise_path(src, src, denoiser, progress=False)
    # a folder of single-page TIFFs is one movie, named after the folder
    singles = tmp_path / "singles"
    singles.mkdir()
    for k, frame in enumerate(_noisy(3, seed=5)):
        write_movie(singles / f"f{k}.tif", frame, PIXEL_NM)
    report = denoise_path(singles, out, denoiser, progress=False)
    assert report.movies[0].output == str(out / "singles.tif")
    assert _read(out / "singles.tif")[0].shape == (3, 48, 40)
    with pytest.raises(InputFileError, match="inside its own input"):
        denoise_path(singles, singles / "den.tif", denoiser, progress=False)


def test_dtype_input_rounds_and_clips(tmp_path: Path, denoiser: Denoiser) -> None:
    movie = _noisy(3, seed=6, lam=3.0)  # low counts: some denoised values fall below 0 and get clipped
    src = write_movie(tmp_path / "in.tif", movie, PIXEL_NM)
    denoise_path(src, tmp_path / "f.tif", denoiser, progress=False)
    denoise_path(src, tmp_path / "i.tif", denoiser, dtype="input", frames="1:3", progress=False)
    as_float, _, _ = _read(tmp_path / "f.tif")
    as_input, pixel, dtype = _read(tmp_path / "i.tif")
    assert dtype == np.uint16 and as_input.shape == (2, 48, 40) and pixel == pytest.approx(PIXEL_NM)
    np.testing.assert_array_equal(as_input, np.clip(np.rint(as_float[1:3]), 0, 65535).astype(np.uint16))
    # uint8 cannot go to MRC: refused before any frame is computed, naming the fix
    write_movie(tmp_path / "u8.tif", movie.astype(np.uint8))
    with pytest.raises(ConfigError, match="--dtype float32 or --format tif"):
        denoise_path(tmp_path / "u8.tif", tmp_path / "u8.mrc", denoiser, dtype="input", progress=False)
    assert not (tmp_path / "u8.mrc").exists()


def _typical(dtype: np.dtype[Any], frames: int = 4) -> np.ndarray:
    """A small movie in the type's typical range (negative for signed, beyond 16 bits for 32/64-bit, fractions)."""
    counts = _noisy(frames, shape=(24, 32), seed=12).astype(np.float64)
    if dtype.kind == "f":
        return (counts * 0.37).astype(dtype)
    shift = {"i1": -20, "i2": -20, "u4": 100_000, "i4": -100_000, "u8": 2**40, "i8": -(2**40)}
    return (counts + shift.get(f"{dtype.kind}{dtype.itemsize}", 0)).astype(dtype)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(PIXEL_TYPES))
def test_every_pixel_type_is_denoised_offline_as_by_the_runtime(tmp_path: Path, denoiser: Denoiser, name: str) -> None:
    dtype = np.dtype(name)
    movie = _typical(dtype)
    src = write_movie(tmp_path / "in.tif", movie)  # TIFF stores every type as itself
    denoise_path(src, tmp_path / "out.tif", denoiser, progress=False)
    out, _, out_dtype = _read(tmp_path / "out.tif")
    runtime = np.stack([f for _, f in denoiser.denoise_movie(movie)])
    assert out_dtype == np.float32
    np.testing.assert_array_equal(out, runtime)  # no conversion of its own: the runtime's answer, bit for bit
    as_float32 = np.stack([f for _, f in denoiser.denoise_movie(movie.astype(np.float32))])
    if PIXEL_TYPES[name].exact_float32:
        np.testing.assert_array_equal(out, as_float32)
    else:  # normalised in float64: float32 rounding apart
        ulps = 4 * float(np.finfo(np.float32).eps) * float(np.abs(as_float32).max())
        np.testing.assert_allclose(out, as_float32, rtol=0, atol=1e-5 * float(np.ptp(as_float32)) + ulps)
    # --dtype input: TIFF keeps every type; MRC only those it has a mode for, else refused before any frame
    if storable(dtype, "mrc"):
        denoise_path(src, tmp_path / "in.mrc", denoiser, dtype="input", frames="0:1", progress=False)
        assert _read(tmp_path / "in.mrc")[2] == dtype
    else:
        with pytest.raises(ConfigError, match=rf"pixel type {name}, which MRC cannot store.*--format tif"):
            denoise_path(src, tmp_path / "in.mrc", denoiser, dtype="input", progress=False)


def test_dm4_and_ser_become_tiff_or_mrc_with_gain(tmp_path: Path, denoiser: Denoiser) -> None:
    formats = _formats()
    movie = _noisy(3, seed=10)
    dm4 = formats.write_dm(tmp_path / "rec.dm4", movie, PIXEL_NM, version=4)
    ser = formats.write_ser(tmp_path / "rec_1.ser", movie, PIXEL_NM * 1e-9)
    gain = np.full(movie.shape[1:], 2.0, dtype=np.float32)
    np.save(tmp_path / "gain.npy", gain)
    out = tmp_path / "out"
    report = denoise_path(dm4, out, denoiser, gain=tmp_path / "gain.npy", dtype="input", progress=False)
    assert Path(report.movies[0].output) == out / "rec.tif"
    data, pixel, dtype = _read(out / "rec.tif")
    assert dtype == np.uint16 and pixel == pytest.approx(PIXEL_NM)  # the file's own type, gain applied
    gained = movie.astype(np.float32) * 2.0
    expected = np.clip(np.rint(_expected(gained, denoiser, 0)), 0, 65535)
    assert np.abs(data[0].astype(np.float64) - expected).max() <= 1
    report = denoise_path(ser, out, denoiser, fmt="mrc", progress=False)
    assert Path(report.movies[0].output) == out / "rec_1.mrc"
    data, pixel, dtype = _read(out / "rec_1.mrc")
    assert dtype == np.float32 and pixel == pytest.approx(PIXEL_NM, rel=1e-6) and data.shape == movie.shape


class _LazyMovie(Movie):
    """A movie generated frame by frame that records every read (never materialised whole)."""

    def __init__(self, frames: int, shape: tuple[int, int]) -> None:
        super().__init__(Path("<lazy>"), (frames, *shape), np.dtype(np.float32), PIXEL_NM)
        self.reads: list[int] = []
        self.slices = 0

    def _read_frame(self, t: int) -> np.ndarray:
        self.reads.append(t)
        rng = np.random.default_rng(t)
        return rng.poisson(10.0, size=self.shape[1:]).astype(np.float32)

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        if isinstance(idx, slice):
            self.slices += 1
        return super().__getitem__(idx)


def _peak_bytes(movie: Movie, output: Path, denoiser: Denoiser) -> int:
    tracemalloc.start()
    try:
        report = denoise_to_file(movie, output, denoiser, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.frames == len(movie)
    return peak


def test_streaming_reads_each_frame_once_and_memory_does_not_grow_with_the_movie(
    tmp_path: Path, denoiser: Denoiser
) -> None:
    shape = (128, 128)
    frame_bytes = shape[0] * shape[1] * 4
    short, long = _LazyMovie(8, shape), _LazyMovie(64, shape)
    peak_short = _peak_bytes(short, tmp_path / "short.mrc", denoiser)
    peak_long = _peak_bytes(long, tmp_path / "long.mrc", denoiser)
    assert long.slices == 0  # never asked for a stack
    assert sorted(long.reads) == list(range(64))  # every frame read once, in a single pass
    # 8x the frames, the same peak (the runtime's window cache, the buffers and the writer's per-frame copies)
    assert peak_long < peak_short + 2 * frame_bytes, (peak_short / frame_bytes, peak_long / frame_bytes)
    assert peak_long < 32 * frame_bytes  # well under the 64-frame movie
    assert _read(tmp_path / "long.mrc")[0].shape == (64, *shape)


def test_tiled_output_equals_whole_frame_far_below_the_noise(model_path: Path) -> None:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:1024, 0:1024]
    scene = 20.0 * (1.0 + 0.5 * np.sin(yy / 23.0) * np.cos(xx / 31.0))
    window = np.stack([rng.poisson(scene) for _ in range(SMALL.frames)]).astype(np.uint16)
    noise_std = float(np.sqrt(scene).mean())  # Poisson: std = sqrt(mean)
    whole = Denoiser.load(model_path, "auto", threads=2, tile=1024).denoise_window(window)
    tiled_denoiser = Denoiser.load(model_path, "auto", threads=2, tile=256)
    assert tiled_denoiser.tile == 256 and len(plan_tiles(1024, 1024, 256, SMALL)) == 36
    tiled = tiled_denoiser.denoise_window(window)
    assert float(whole.std()) > 0.5 * noise_std  # not vacuous: the output varies (margins of 8 px err by 2 std)
    err = float(np.abs(tiled - whole).max())
    # exact up to float32 rounding (0.0 on onnx_cpu): margins >= the receptive radius, tiles on the pooling grid
    assert err < 1e-4 * noise_std, f"max |tiled - whole| = {err:.3g} = {err / noise_std:.3g} noise std"


def test_short_movie_windows_and_frames_range(tmp_path: Path, denoiser: Denoiser) -> None:
    movie = _noisy(2, seed=8)  # fewer frames than the model's 5: the windows repeat the other frame, never the center
    src = write_movie(tmp_path / "two.tif", movie)
    report = denoise_path(src, tmp_path / "two_out.tif", denoiser, frames="-1:", progress=False)
    assert (report.movies[0].start, report.movies[0].stop) == (1, 2)
    data, pixel, _ = _read(tmp_path / "two_out.tif")
    assert pixel is None and data.shape == (1, 48, 40)
    np.testing.assert_allclose(data[0], _expected(movie, denoiser, 1), rtol=0, atol=1e-4 * float(movie.std()))
    assert parse_frames("3:") == (3, None) and parse_frames(":-2") == (None, -2)
    for bad in ("3", "a:b", "1:2:3"):
        with pytest.raises(ConfigError, match="--frames"):
            parse_frames(bad)
    with pytest.raises(ConfigError, match="selects no frame"):
        denoise_path(src, tmp_path / "none.tif", denoiser, frames="5:9", progress=False)


def test_errors_name_the_path_and_the_fix(tmp_path: Path, model_path: Path, denoiser: Denoiser) -> None:
    src = write_movie(tmp_path / "in.tif", _noisy(2, seed=9))
    with pytest.raises(InputFileError, match="no such file"):
        denoise_path(tmp_path / "missing.tif", tmp_path / "o.tif", denoiser)
    (tmp_path / "broken.mrc").write_bytes(b"\x00" * 300)
    with pytest.raises(InputFileError, match=r"broken\.mrc"):
        denoise_path(tmp_path / "broken.mrc", tmp_path / "o.mrc", denoiser)
    with pytest.raises(ModelFileError, match=r"nope\.pt: no such model file"):
        denoise_path(src, tmp_path / "o.tif", tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"bad\.pt"):
        denoise_path(src, tmp_path / "o.tif", tmp_path / "bad.pt")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unknown model file type"):
        denoise_path(src, tmp_path / "o.tif", tmp_path / "weights.h5")
    for suffix in (".png", ".dm4"):
        with pytest.raises(InputFileError, match=r"\.tif/\.tiff .* \.mrc/\.mrcs"):
            denoise_path(src, tmp_path / f"o{suffix}", denoiser)
    with pytest.raises(ConfigError, match="contradicts"):
        denoise_path(src, tmp_path / "o.tif", denoiser, fmt="mrc")
    with pytest.raises(InputFileError, match="replace or sit inside its own input"):
        denoise_path(src, src, denoiser, overwrite=True)
    (tmp_path / "exists.tif").write_bytes(b"old")
    with pytest.raises(InputFileError, match="--overwrite"):
        denoise_path(src, tmp_path / "exists.tif", denoiser)
    assert (tmp_path / "exists.tif").read_bytes() == b"old"
    denoise_path(src, tmp_path / "exists.tif", denoiser, overwrite=True, progress=False)
    assert _read(tmp_path / "exists.tif")[0].shape == (2, 48, 40)
    with pytest.raises(InputFileError, match=r"nogain\.tif: no such gain reference"):
        denoise_path(src, tmp_path / "g.tif", denoiser, gain=tmp_path / "nogain.tif")
    np.save(tmp_path / "small_gain.npy", np.ones((8, 8), dtype=np.float32))
    with pytest.raises(InputFileError, match="same camera size"):
        denoise_path(src, tmp_path / "g.tif", denoiser, gain=tmp_path / "small_gain.npy")
    nan_movie = _noisy(6).astype(np.float32)
    nan_movie[4, 5, 5] = np.nan
    write_movie(tmp_path / "nan.tif", nan_movie)
    with pytest.raises(InputDataError, match=r"nan\.tif: movie frame 4 contains 1 NaN"):
        denoise_path(tmp_path / "nan.tif", tmp_path / "nan_out.tif", denoiser, progress=False)
    assert _read(tmp_path / "nan_out.tif")[0].shape[0] == 2  # frames 0 and 1 (windows without frame 4) are kept
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputFileError, match="choose another OUTPUT"):
        denoise_path(src, tmp_path / "file" / "o.tif", denoiser, progress=False)
    assert not (tmp_path / "g.tif").exists()
