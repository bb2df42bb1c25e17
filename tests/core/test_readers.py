"""Readers: every format written for real, read back exactly; laziness, gain, and clear errors on bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from emlive.core.errors import InputDataError, InputFileError
from emlive.core.readers import (
    SUPPORTED_SUFFIXES,
    FrameIndexError,
    Movie,
    find_movies,
    load_gain,
    natural_sort_key,
    open_movie,
)

from . import formats  # minimal DM/SER/Velox writers (no library writes them)

T, H, W = 4, 32, 48  # non-square, to catch H/W swaps
PIXEL_NM = 0.25


def _stack(dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3000, size=(T, H, W))
    data[:, 0, :] = np.arange(W)  # a ramp along x in the first row: orientation errors show
    data[:, :, 0] = np.arange(H)
    return data.astype(dtype)


def _write_tif(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kwargs)  # type: ignore[arg-type]
    return path


def _write_mrc(path: Path, data: np.ndarray, voxel_a: float = PIXEL_NM * 10) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_a
    return path


def _write_berkeley(path: Path, data: np.ndarray) -> Path:
    from ncempy.io import emd

    dims = len(data.shape)
    emd.emdWriter(
        path, data, pixel_size=(1.0,) * (dims - 2) + (PIXEL_NM, PIXEL_NM), pixel_unit=("s", "nm", "nm")[-dims:]
    )
    return path


WRITERS = {
    "tif": lambda p, d: _write_tif(p.with_suffix(".tif"), d, resolution=(1e7 / PIXEL_NM,) * 2, resolutionunit=3),
    "tif-zlib": lambda p, d: _write_tif(
        p.with_suffix(".tiff"), d, compression="zlib", resolution=(1e7 / PIXEL_NM,) * 2, resolutionunit=3
    ),
    "mrc": lambda p, d: _write_mrc(p.with_suffix(".mrc"), d),
    "dm4": lambda p, d: formats.write_dm(p.with_suffix(".dm4"), d, PIXEL_NM, version=4),
    "dm3": lambda p, d: formats.write_dm(p.with_suffix(".dm3"), d, PIXEL_NM, version=3, unit="µm"),
    "dm4-nothumb": lambda p, d: formats.write_dm(p.with_suffix(".dm4"), d, PIXEL_NM, thumbnail=False, unit="Å"),
    "ser": lambda p, d: formats.write_ser(p.with_name(p.name + "_1.ser"), d, PIXEL_NM * 1e-9),
    "ser-v210": lambda p, d: formats.write_ser(p.with_name(p.name + "_1.ser"), d, PIXEL_NM * 1e-9, version=0x0210),
    "emd-berkeley": lambda p, d: _write_berkeley(p.with_suffix(".emd"), d),
    "emd-velox": lambda p, d: formats.write_velox(p.with_suffix(".emd"), d, PIXEL_NM * 1e-9),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_each_format_reads_back_exactly(tmp_path: Path, fmt: str, dtype: str) -> None:
    data = _stack(dtype)
    path = WRITERS[fmt](tmp_path / "movie", data)
    with open_movie(path) as movie:
        assert isinstance(movie, Movie)
        assert movie.shape == (T, H, W)
        assert len(movie) == T
        assert movie.dtype == np.dtype(dtype)
        assert movie.pixel_size_nm == pytest.approx(PIXEL_NM, rel=1e-6)
        for t in range(T):
            frame = movie.frame(t)
            assert frame.shape == (H, W) and frame.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(frame, data[t])
        np.testing.assert_array_equal(movie[-1], data[-1])
        np.testing.assert_array_equal(movie[1:4:2], data[1:4:2])
        np.testing.assert_array_equal(movie.crop(2, 3, 5, 7, 11), data[2, 3:10, 5:16])
        np.testing.assert_array_equal(movie.crop(-1, 0, 0, H, W), data[-1])
        np.testing.assert_array_equal(np.stack(list(movie)), data)


@pytest.mark.parametrize("fmt", ["tif", "mrc", "dm4", "dm3", "ser", "emd-berkeley", "emd-velox"])
def test_a_single_image_is_a_one_frame_movie(tmp_path: Path, fmt: str) -> None:
    image = _stack()[0]
    path = WRITERS[fmt](tmp_path / "image", image)
    with open_movie(path) as movie:
        assert movie.shape == (1, H, W)
        np.testing.assert_array_equal(movie.frame(0), image)


def test_folder_of_single_page_tiffs_is_one_movie_in_natural_order(tmp_path: Path) -> None:
    data = _stack()
    folder = tmp_path / "frames"
    folder.mkdir()
    order = [2, 10, 1, 3]  # file numbers; natural order 1, 2, 3, 10
    for k, number in enumerate(order):
        tifffile.imwrite(folder / f"frame{number}.tif", data[k])
    expected = data[[order.index(n) for n in sorted(order)]]
    assert find_movies(folder) == [folder]
    with open_movie(folder) as movie:
        assert movie.shape == (T, H, W)
        np.testing.assert_array_equal(movie[:], expected)
        np.testing.assert_array_equal(movie.crop(3, 1, 2, 4, 5), expected[3, 1:5, 2:7])


def test_folder_frames_of_different_size_are_an_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a1.tif", np.zeros((H, W), np.uint16))
    tifffile.imwrite(tmp_path / "a2.tif", np.zeros((W, H), np.uint16))
    with open_movie(tmp_path) as movie, pytest.raises(InputFileError, match=r"a2\.tif"):
        movie.frame(1)


def test_find_movies_lists_files_naturally_and_rejects_empty_folders(tmp_path: Path) -> None:
    data = _stack()
    _write_mrc(tmp_path / "run10.mrc", data)
    _write_mrc(tmp_path / "run9.mrc", data)
    _write_tif(tmp_path / "run2.tif", data)  # multi-page: a movie of its own
    (tmp_path / "notes.txt").write_text("not a movie")
    assert find_movies(tmp_path) == [tmp_path / "run2.tif", tmp_path / "run9.mrc", tmp_path / "run10.mrc"]
    assert find_movies(tmp_path / "run9.mrc") == [tmp_path / "run9.mrc"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="empty"):
        find_movies(empty)
    with pytest.raises(InputFileError, match="empty"):
        open_movie(empty)
    with pytest.raises(InputFileError, match=r"notes\.txt"):
        find_movies(tmp_path / "notes.txt")


def test_natural_sort_key() -> None:
    names = ["frame10.tif", "frame2.tif", "Frame1.tif", "frame2b.tif"]
    assert sorted(names, key=natural_sort_key) == ["Frame1.tif", "frame2.tif", "frame2b.tif", "frame10.tif"]


def test_mrc_frames_are_read_only_views_of_the_memory_map(tmp_path: Path) -> None:
    data = _stack()
    with open_movie(_write_mrc(tmp_path / "m.mrc", data)) as movie:
        frame = movie.frame(1)
        crop = movie.crop(1, 2, 3, 4, 5)
        assert not frame.flags.owndata and not frame.flags.writeable
        assert not crop.flags.owndata
        base = frame
        while isinstance(base.base, np.ndarray):
            base = base.base
        assert isinstance(base, np.memmap)  # the frame lives in the file's map, nothing was copied
        assert np.shares_memory(frame, crop)


@pytest.mark.parametrize("fmt", ["tif", "dm4", "ser"])
def test_uncompressed_formats_are_memory_mapped(tmp_path: Path, fmt: str) -> None:
    with open_movie(WRITERS[fmt](tmp_path / "m", _stack())) as movie:
        frame = movie.frame(2)
        assert not frame.flags.owndata and not frame.flags.writeable


def test_big_endian_tiff_and_mrc_come_back_native(tmp_path: Path) -> None:
    data = _stack()
    tif = _write_tif(tmp_path / "be.tif", data, byteorder=">")
    with mrcfile.new(tmp_path / "be.mrc") as mrc:
        mrc.set_data(data.astype(">u2"))
    for path in (tif, tmp_path / "be.mrc"):
        with open_movie(path) as movie:
            assert movie.dtype.isnative
            np.testing.assert_array_equal(movie.frame(3), data[3])


def test_imagej_tiff_pixel_size(tmp_path: Path) -> None:
    data = _stack().astype(np.float32)
    path = _write_tif(
        tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.0005, 1 / 0.0005), metadata={"unit": "um"}
    )
    with open_movie(path) as movie:
        assert movie.shape == (T, H, W)
        assert movie.pixel_size_nm == pytest.approx(0.5)
    plain = _write_tif(tmp_path / "plain.tif", data)
    with open_movie(plain) as movie:
        assert movie.pixel_size_nm is None


def test_frame_index_errors_name_the_length(tmp_path: Path) -> None:
    with open_movie(_write_mrc(tmp_path / "m.mrc", _stack())) as movie:
        with pytest.raises(FrameIndexError, match=r"T=4"):
            movie.frame(4)
        with pytest.raises(IndexError):
            movie.frame(-5)
        with pytest.raises(InputDataError, match="inside"):
            movie.crop(0, 30, 0, 4, 4)
        with pytest.raises(InputDataError):
            movie.crop(0, 0, 0, 0, 4)
    with pytest.raises(InputFileError, match="closed"):
        movie.frame(0)


# --- gain reference -----------------------------------------------------------------------------------------------
def test_gain_from_array_npy_and_image_files(tmp_path: Path) -> None:
    data = _stack()
    gain = np.linspace(0.5, 2.0, H * W, dtype=np.float32).reshape(H, W)
    expected = data.astype(np.float32) * gain
    movie_path = _write_mrc(tmp_path / "m.mrc", data)
    np.save(tmp_path / "gain.npy", gain)
    tifffile.imwrite(tmp_path / "gain.tif", gain)
    _write_mrc(tmp_path / "gain.mrc", gain)
    for source in (gain, tmp_path / "gain.npy", tmp_path / "gain.tif", str(tmp_path / "gain.mrc")):
        with open_movie(movie_path, gain=source) as movie:
            assert movie.dtype == np.float32
            np.testing.assert_allclose(movie.frame(2), expected[2], rtol=1e-6)
            np.testing.assert_allclose(movie.crop(1, 4, 6, 5, 7), expected[1, 4:9, 6:13], rtol=1e-6)
            np.testing.assert_allclose(movie[:], expected, rtol=1e-6)


def test_gain_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    movie_path = _write_mrc(tmp_path / "m.mrc", _stack())
    np.save(tmp_path / "gain.npy", np.ones((W, H), np.float32))
    with pytest.raises(InputFileError) as err:
        open_movie(movie_path, gain=tmp_path / "gain.npy")
    message = str(err.value)
    assert "gain.npy" in message and f"({W}, {H})" in message and f"({H}, {W})" in message
    assert "transposed" in message


def test_gain_must_be_finite_and_positive(tmp_path: Path) -> None:
    movie_path = _write_mrc(tmp_path / "m.mrc", _stack())
    bad = np.ones((H, W), np.float32)
    bad[5, 7] = 0.0
    bad[6, 1] = np.nan
    with pytest.raises(InputFileError, match=r"2 pixels.*y=5, x=7"):
        open_movie(movie_path, gain=bad)
    _write_mrc(tmp_path / "stack.mrc", _stack())
    with pytest.raises(InputFileError, match="one frame"):
        load_gain(tmp_path / "stack.mrc", (H, W))


# --- bad files ----------------------------------------------------------------------------------------------------
BAD_SUFFIXES = [".tif", ".mrc", ".dm4", ".dm3", ".ser", ".emd", ".npy"]


@pytest.mark.parametrize("suffix", BAD_SUFFIXES)
def test_empty_files_are_input_file_errors(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(InputFileError, match=r"empty.*0 bytes") as err:
        open_movie(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", BAD_SUFFIXES)
def test_garbage_files_are_input_file_errors(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError) as err:
        open_movie(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fmt", ["tif", "mrc", "dm4", "dm3", "ser", "emd-berkeley", "npy"])
def test_truncated_files_are_input_file_errors(tmp_path: Path, fmt: str) -> None:
    data = _stack()
    if fmt == "npy":
        path = tmp_path / "m.npy"
        np.save(path, data)
    else:
        path = WRITERS[fmt](tmp_path / "m", data)
    raw = path.read_bytes()
    cut = 200 if fmt == "tif" else len(raw) // 2  # a TIFF cut inside its first page's data
    path.write_bytes(raw[:cut])
    with pytest.raises(InputFileError) as err:
        open_movie(path)
    assert str(path) in str(err.value)


def test_mrc_messages_say_what_is_wrong(tmp_path: Path) -> None:
    path = _write_mrc(tmp_path / "m.mrc", _stack())
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[: len(raw) - 100]))
    with pytest.raises(InputFileError, match=r"declares 4 frames of 32 x 48.*truncated"):
        open_movie(path)
    raw[208:212] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match="'MAP' at byte 208"):
        open_movie(path)


def test_unsupported_and_missing_paths(tmp_path: Path) -> None:
    other = tmp_path / "movie.avi"
    other.write_bytes(b"RIFF....")
    with pytest.raises(InputFileError, match=r"movie.avi.*\.mrc"):
        open_movie(other)
    with pytest.raises(InputFileError, match="no such file"):
        open_movie(tmp_path / "missing.mrc")
    assert {".tif", ".tiff", ".mrc", ".mrcs", ".dm3", ".dm4", ".ser", ".emd"} <= SUPPORTED_SUFFIXES


def test_colour_tiff_is_refused(tmp_path: Path) -> None:
    path = _write_tif(tmp_path / "rgb.tif", np.zeros((H, W, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputFileError, match="grey"):
        open_movie(path)


@pytest.mark.parametrize("frames", [3, 4])
def test_a_short_stack_saved_as_one_colour_page_says_how_to_save_it(tmp_path: Path, frames: int) -> None:
    """tifffile.imwrite of a 3- or 4-frame stack writes one RGB(A) page: the error says how to save it grey."""
    movie = np.arange(frames * H * W, dtype=np.uint16).reshape(frames, H, W)
    tifffile.imwrite(tmp_path / "short.tif", movie)
    with pytest.raises(InputFileError, match=r"grey.*photometric='minisblack'"):
        open_movie(tmp_path / "short.tif")
    tifffile.imwrite(tmp_path / "grey.tif", movie, photometric="minisblack")
    with open_movie(tmp_path / "grey.tif") as grey:
        assert grey.shape == (frames, H, W) and np.array_equal(grey.frame(frames - 1), movie[-1])


def test_contiguous_tiff_cut_short_reads_complete_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """tifffile writes a stack as one data block and the later IFDs at the end: a crash leaves one IFD."""
    data = _stack()
    path = _write_tif(tmp_path / "m.tif", data)
    raw = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        last_end = tif.pages[-1].dataoffsets[0] + tif.pages[-1].databytecounts[0]
    path.write_bytes(raw[: last_end - 10])  # the last frame cut short and the trailing IFDs lost
    with caplog.at_level(logging.WARNING), open_movie(path) as movie:
        assert movie.shape == (T - 1, H, W)
        np.testing.assert_array_equal(movie[:], data[:-1])
    assert "3 complete" in caplog.text


# --- data-loader worker processes ------------------------------------------------------------------------------
# Every reader read from torch DataLoader workers, forked and spawned, must give exactly the single-process frames.
# Forked workers used to share the parent's open file: concurrent seeks made sound compressed TIFF pages look
# corrupt; spawned workers could not even receive TIFF, MRC or EMD movies (open handles do not pickle).
WORKER_T, WORKER_H, WORKER_W = 16, 96, 80
WORKER_REPEATS = 12  # each frame read this many times by two workers at once: shared handles collide


def _worker_stack() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.poisson(40.0, size=(WORKER_T, WORKER_H, WORKER_W)).astype(np.uint16)


def _worker_files(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """(movie, gain reference) of every reader class, written for real."""
    data = _worker_stack()
    frames = folder / "frames"
    frames.mkdir()
    for t in range(WORKER_T):
        tifffile.imwrite(frames / f"f{t}.tif", data[t])
    np.save(folder / "m.npy", data)
    gain = np.linspace(0.5, 1.5, WORKER_H * WORKER_W, dtype=np.float32).reshape(WORKER_H, WORKER_W)
    return {
        "tif-zlib": (_write_tif(folder / "z.tif", data, compression="zlib"), None),
        "tif": (_write_tif(folder / "u.tif", data), None),
        "tif-folder": (frames, None),
        "mrc-gain": (_write_mrc(folder / "m.mrc", data), _write_mrc(folder / "gain.mrc", gain)),
        "dm4": (formats.write_dm(folder / "m.dm4", data, PIXEL_NM, version=4), None),
        "ser": (formats.write_ser(folder / "m_1.ser", data, PIXEL_NM * 1e-9), None),
        "emd-berkeley": (_write_berkeley(folder / "b.emd", data), None),
        "emd-velox": (formats.write_velox(folder / "v.emd", data, PIXEL_NM * 1e-9), None),
        "npy": (folder / "m.npy", None),
    }


@pytest.fixture(scope="module")
def worker_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path | None]]:
    return _worker_files(tmp_path_factory.mktemp("workers"))


def _read_in_workers(movies: list[Movie], context: str, repeats: int) -> list[np.ndarray]:
    from torch.utils.data import ConcatDataset, DataLoader

    dataset = ConcatDataset([movie for movie in movies for _ in range(repeats)])
    loader = DataLoader(
        dataset,
        batch_size=None,
        collate_fn=np.ascontiguousarray,  # frames as they are (SER frames are flipped views), sent back pickled
        num_workers=2,
        multiprocessing_context=context,
        timeout=120,
    )
    return list(loader)


def _file_reader_classes() -> set[type[Movie]]:
    """Every concrete reader of emlive.core.readers that open_movie returns for a file or folder."""
    found: set[type[Movie]] = set()
    todo = list(Movie.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__ == Movie.__module__ and cls.__name__.startswith("_") and cls.__name__ != "_MappedMovie":
            found.add(cls)
    assert len(found) >= 7, found  # TIFF, TIFF folder, MRC, DM, SER, EMD, npy
    return found


def _single_process_frames(movie: Movie) -> list[np.ndarray]:
    return [np.array(movie.frame(t)) for t in range(len(movie))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fmt", ["tif-zlib", "tif", "tif-folder", "mrc-gain", "dm4", "ser", "emd-berkeley", "emd-velox", "npy"]
)
def test_forked_loader_workers_read_what_one_process_reads(
    worker_files: dict[str, tuple[Path, Path | None]], fmt: str
) -> None:
    path, gain = worker_files[fmt]
    with open_movie(path, gain=gain) as movie:
        expected = _single_process_frames(movie)  # the parent has opened and used its handles before the fork
        got = _read_in_workers([movie], "fork", WORKER_REPEATS)
        np.testing.assert_array_equal(movie.frame(3), expected[3])  # the parent's handles still work after
    assert len(got) == WORKER_T * WORKER_REPEATS
    for k, frame in enumerate(got):
        np.testing.assert_array_equal(frame, expected[k % WORKER_T], err_msg=f"{fmt}: item {k}")
    if gain is not None:
        assert got[0].dtype == np.float32


@pytest.mark.timeout(180)
def test_spawned_loader_workers_read_what_one_process_reads(
    worker_files: dict[str, tuple[Path, Path | None]],
) -> None:
    names = sorted(worker_files)
    movies = [open_movie(path, gain=gain) for path, gain in (worker_files[n] for n in names)]
    readers = {type(m) for m in movies}
    assert readers >= _file_reader_classes(), "a reader class is missing from the worker tests: add its format"
    try:
        expected = [frame for movie in movies for frame in _single_process_frames(movie)]
        got = _read_in_workers(movies, "spawn", 1)
    finally:
        for movie in movies:
            movie.close()
    assert len(got) == len(expected)
    for k, (frame, want) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(frame, want, err_msg=f"{names[k // WORKER_T]}: frame {k % WORKER_T}")


def test_pickled_movie_leaves_handles_behind_and_reopens(worker_files: dict[str, tuple[Path, Path | None]]) -> None:
    import pickle

    path, _ = worker_files["mrc-gain"]
    with open_movie(path) as movie:
        blob = pickle.dumps(movie)
        assert len(blob) < movie.shape[1] * movie.shape[2]  # not the frames: a few hundred bytes of state
        copy = pickle.loads(blob)
        np.testing.assert_array_equal(copy.frame(5), movie.frame(5))
        copy.close()


def test_a_disturbed_handle_is_reopened_not_reported_corrupt(
    worker_files: dict[str, tuple[Path, Path | None]], caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = worker_files["tif-zlib"]
    with open_movie(path) as movie:
        want = np.array(movie.frame(2))
        movie._close()  # the handle goes away under the reader (as when another process moves a shared one)
        with caplog.at_level(logging.WARNING):
            np.testing.assert_array_equal(movie.frame(2), want)
    assert "file handles opened afresh" in caplog.text and "the file is sound" in caplog.text
    assert "corrupt" not in caplog.text


def test_a_damaged_page_is_named_only_after_a_fresh_handle_fails_too(tmp_path: Path) -> None:
    data = _worker_stack()[:4]
    path = _write_tif(tmp_path / "z.tif", data, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = int(tif.pages[2].dataoffsets[0])
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 32)  # break page 2's zlib stream
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie.frame(1), data[1])
        with pytest.raises(InputFileError, match=r"TIFF page 2 could not be decoded.*afresh.*damaged at frame 2"):
            movie.frame(2)
        np.testing.assert_array_equal(movie.frame(3), data[3])


def test_a_file_changed_under_a_pickled_movie_is_named(tmp_path: Path) -> None:
    import pickle

    path = _write_mrc(tmp_path / "m.mrc", _stack())
    with open_movie(path) as movie:
        blob = pickle.dumps(movie)
    _write_mrc(path, _stack()[:2])
    copy = pickle.loads(blob)
    with pytest.raises(InputFileError, match=r"changed after it was opened.*\(4, 32, 48\).*\(2, 32, 48\)"):
        copy.frame(0)
