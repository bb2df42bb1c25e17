"""Writers: round trips, conversions, errors, and files that stay readable while recording and after a crash."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from emlive.core.errors import InputDataError, InputFileError
from emlive.core.pixeltypes import PIXEL_TYPES, storage_dtype
from emlive.core.readers import open_movie
from emlive.core.writers import MovieWriter, coerce_frame, open_writer, write_movie

T, H, W = 5, 24, 40
SUFFIXES = [".tif", ".mrc"]


def _frames(dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4000, size=(T, H, W))
    data[:, 0, :] = np.arange(W)
    return data.astype(dtype)


@pytest.mark.parametrize("suffix", [*SUFFIXES, ".tiff", ".mrcs"])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_round_trip_keeps_values_dtype_and_pixel_size(tmp_path: Path, suffix: str, dtype: str) -> None:
    data = _frames(dtype)
    path = write_movie(tmp_path / f"m{suffix}", data, pixel_size_nm=0.137)
    with open_movie(path) as movie:
        assert movie.shape == (T, H, W)
        assert movie.dtype == np.dtype(dtype)
        assert movie.pixel_size_nm == pytest.approx(0.137, rel=1e-6)
        np.testing.assert_array_equal(movie[:], data)


def test_files_are_standard_for_other_readers(tmp_path: Path) -> None:
    data = _frames()
    write_movie(tmp_path / "m.tif", data, pixel_size_nm=0.5)
    write_movie(tmp_path / "m.mrc", data, pixel_size_nm=0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif"), data)  # one (T, H, W) series
    with mrcfile.open(tmp_path / "m.mrc", permissive=False) as mrc:
        np.testing.assert_array_equal(mrc.data, data)
        assert mrc.voxel_size.x == pytest.approx(5.0)
        assert mrc.header.ispg == 0
        assert mrc.header.dmax == data.max() and mrc.header.dmin == data.min()
        assert mrc.header.dmean == pytest.approx(data.mean(), rel=1e-5)
        assert mrc.header.rms == pytest.approx(data.std(), rel=1e-4)
    assert mrcfile.validate(str(tmp_path / "m.mrc"), print_file=open("/dev/null", "w"))  # noqa: SIM115


def test_no_pixel_size_reads_back_as_none(tmp_path: Path) -> None:
    for suffix in SUFFIXES:
        path = write_movie(tmp_path / f"m{suffix}", _frames())
        with open_movie(path) as movie:
            assert movie.pixel_size_nm is None


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_append_is_readable_before_close(tmp_path: Path, suffix: str) -> None:
    data = _frames("float32")
    writer = open_writer(tmp_path / f"live{suffix}", (H, W), "float32", pixel_size_nm=0.2)
    for t in range(T):
        writer.append(data[t])
        assert writer.frames_written == t + 1
        with open_movie(writer.path) as movie:  # a second reader while recording
            assert movie.shape == (t + 1, H, W)
            np.testing.assert_array_equal(movie[:], data[: t + 1])
            assert movie.pixel_size_nm == pytest.approx(0.2)
    # never closed: the writer object is simply dropped, as if the process stopped here
    del writer


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from emlive.core.writers import open_writer
    path, n = Path(sys.argv[1]), int(sys.argv[2])
    writer = open_writer(path, (24, 40), "uint16", pixel_size_nm=0.3)
    for t in range(n):
        writer.append(np.full((24, 40), t * 100 + np.arange(40), dtype=np.uint16))
        Path(str(path) + ".count").write_text(str(t + 1))
    time.sleep(60)
    """
)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_recording_killed_with_sigkill_is_readable(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"crash{suffix}"
    count = Path(str(path) + ".count")
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(path), "3"])
    try:
        deadline = time.monotonic() + 60
        while not (count.exists() and count.read_text() == "3"):
            assert proc.poll() is None, "the writer process died"
            assert time.monotonic() < deadline, "the writer process did not write 3 frames in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_movie(path) as movie:
        assert movie.shape == (3, H, W)
        assert movie.pixel_size_nm == pytest.approx(0.3)
        for t in range(3):
            np.testing.assert_array_equal(movie.frame(t), np.full((H, W), t * 100 + np.arange(W)))


def test_mrc_crash_inside_an_append_reads_the_complete_frames(tmp_path: Path) -> None:
    """The frame's bytes go first, the header after: a half-written frame is not declared."""
    data = _frames()
    writer = open_writer(tmp_path / "m.mrc", (H, W), "uint16")
    writer.extend(data[:3])
    with (tmp_path / "m.mrc").open("ab") as fh:
        fh.write(data[3].tobytes()[:500])  # a 4th frame cut short, header not yet updated
    with open_movie(tmp_path / "m.mrc") as movie:
        np.testing.assert_array_equal(movie[:], data[:3])
    writer.close()


def test_tiff_crash_inside_an_append_reads_the_complete_pages(tmp_path: Path) -> None:
    data = _frames()
    path = tmp_path / "m.tif"
    with open_writer(path, (H, W), "uint16") as writer:
        writer.extend(data[:4])
    with tifffile.TiffFile(path) as tif:
        last = tif.pages[-1]
        cut = int(last.dataoffsets[0]) + 100
    path.write_bytes(path.read_bytes()[:cut])  # the 4th page's data cut short
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie[:], data[:3])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", list(PIXEL_TYPES))
def test_every_pixel_type_is_stored_losslessly_where_the_policy_says(tmp_path: Path, name: str, suffix: str) -> None:
    dtype = np.dtype(name)
    rng = np.random.default_rng(3)
    if dtype.kind == "f":
        data = (rng.standard_normal((2, H, W)) * 1e3).astype(dtype)
        data[0, 0, :2] = np.finfo(dtype).max, np.finfo(dtype).tiny
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(2, H, W), dtype=dtype, endpoint=True)
        data[0, 0, :2] = info.min, info.max
    stored = storage_dtype(dtype, suffix)
    if stored is None:  # MRC has no mode for it: the writer refuses, naming TIFF
        with pytest.raises(InputDataError, match=rf"{name} cannot be written to MRC.*TIFF"):
            write_movie(tmp_path / f"m{suffix}", data)
        return
    path = write_movie(tmp_path / f"m{suffix}", data.astype(dtype.newbyteorder("S")), dtype=stored)
    with open_movie(path) as movie:
        assert movie.dtype == stored
        np.testing.assert_array_equal(movie[:].astype(dtype), data)


def test_float_to_integer_rounds_half_to_even_and_clips() -> None:
    frame = np.array([[-3.0, 0.5, 1.5, 2.5, 70000.7, 12.49]])
    np.testing.assert_array_equal(coerce_frame(frame, np.dtype("uint16")), [[0, 0, 2, 2, 65535, 12]])
    np.testing.assert_array_equal(coerce_frame(np.array([[-5, 300]]), np.dtype("uint8")), [[0, 255]])
    with pytest.raises(InputDataError, match="NaN"):
        coerce_frame(np.array([[np.nan]]), np.dtype("uint16"))
    assert coerce_frame(np.array([[1, 2]], np.uint16), np.dtype("float32")).dtype == np.float32


def test_append_converts_to_the_writer_dtype(tmp_path: Path) -> None:
    with open_writer(tmp_path / "m.mrc", (1, 3), "uint16") as writer:
        writer.append(np.array([[-1.0, 2.5, 1e6]]))
    with open_movie(tmp_path / "m.mrc") as movie:
        np.testing.assert_array_equal(movie.frame(0), [[0, 2, 65535]])


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"\.avi.*\.mrc.*\.tif"):
        open_writer(tmp_path / "m.avi", (H, W), "uint16")
    with pytest.raises(InputDataError, match=r"uint8.*uint16"):
        open_writer(tmp_path / "m.mrc", (H, W), "uint8")
    with pytest.raises(InputDataError, match="frame_shape"):
        open_writer(tmp_path / "m.tif", (H, 0), "uint16")
    with pytest.raises(InputDataError, match="pixel_size_nm"):
        open_writer(tmp_path / "m.tif", (H, W), "uint16", pixel_size_nm=-1.0)
    with pytest.raises(InputFileError, match="does not exist"):
        open_writer(tmp_path / "missing" / "m.tif", (H, W), "uint16")
    with MovieWriter(tmp_path / "m.tif", (H, W), "uint16") as writer:
        with pytest.raises(InputDataError, match=rf"\({W}, {H}\).*\({H}, {W}\)"):
            writer.append(np.zeros((W, H), np.uint16))
        assert writer.frames_written == 0
    with pytest.raises(InputFileError, match="closed"):
        writer.append(np.zeros((H, W), np.uint16))
    with pytest.raises(InputFileError, match="exists"):
        open_writer(tmp_path / "m.tif", (H, W), "uint16", overwrite=False)
    with pytest.raises(InputDataError, match="no frames"):
        write_movie(tmp_path / "e.tif", iter([]))


def test_write_movie_from_an_iterable_and_a_single_image(tmp_path: Path) -> None:
    data = _frames()
    path = write_movie(tmp_path / "gen.mrc", (frame for frame in data), dtype="float32")
    with open_movie(path) as movie:
        assert movie.dtype == np.float32
        np.testing.assert_array_equal(movie[:], data.astype(np.float32))
    path = write_movie(tmp_path / "one.tif", data[0])
    with open_movie(path) as movie:
        assert movie.shape == (1, H, W)
