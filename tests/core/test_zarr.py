"""OME-Zarr: round trips of every pixel type, metadata other tools read, refused layouts, the multi-process store,
the completion record (a partial chunk is never trusted), and reading a store bigger than memory with RSS flat."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="the zarr extra is not installed")
ome_writer = pytest.importorskip("ome_zarr.writer")

from emlive.core.errors import ConfigError, InputFileError  # noqa: E402
from emlive.core.pixeltypes import PIXEL_TYPES  # noqa: E402
from emlive.core.readers import find_movies, open_movie  # noqa: E402
from emlive.core.writers import write_movie  # noqa: E402
from emlive.core.zarrio import DONE_PATH, MAX_CHUNK_EDGE, ZarrMovieStore, chunk_shape, require_zarr  # noqa: E402

pytestmark = pytest.mark.timeout(120)

T, H, W = 6, 20, 28


def _frames(dtype: str, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rng = np.random.default_rng(seed)
    if info is None:
        return rng.normal(0.0, 100.0, (T, H, W)).astype(dtype)
    data = rng.integers(info.min, info.max, (T, H, W), dtype=dtype, endpoint=True)
    data[0, 0, :2] = info.min, info.max  # the extremes survive
    return data


@pytest.mark.parametrize("dtype", list(PIXEL_TYPES))
def test_round_trip_every_pixel_type_keeps_values_and_pixel_size(tmp_path: Path, dtype: str) -> None:
    data = _frames(dtype)
    path = write_movie(tmp_path / "m.ome.zarr", data, pixel_size_nm=0.137)
    with open_movie(path) as movie:
        assert (movie.shape, movie.dtype, movie.pixel_size_nm) == ((T, H, W), np.dtype(dtype), 0.137)
        np.testing.assert_array_equal(movie[:], data)
        np.testing.assert_array_equal(movie.crop(3, 2, 5, 7, 9), data[3, 2:9, 5:14])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_metadata_is_valid_ngff_that_ome_zarr_reads(tmp_path: Path, version: str) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = _frames("uint16")
    path = tmp_path / "m.ome.zarr"
    store = ZarrMovieStore.create(path, data.shape, data.dtype, 0.25, attributes={"model_card": {"x": 1}},
                                  ngff_version=version)  # fmt: skip
    store.write_frames(0, data)
    assert store.finish()
    node = next(iter(Reader(parse_url(str(path)))()))  # the reader napari-ome-zarr uses
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["t", "y", "x"]
    assert [a.get("unit") for a in axes] == [None, "nanometer", "nanometer"]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 0.25, 0.25]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    own = dict(zarr.open_group(str(path), mode="r").attrs)["emlive"]
    assert own["complete"] is True and own["model_card"] == {"x": 1} and own["emlive_version"]
    assert own["pixel_size_nm"] == 0.25


def _ome_image(path: Path, data: np.ndarray, axes: list[dict[str, str]], scale: list[float]) -> Path:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=data, chunks=data.shape)
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    ome_writer.write_multiscales_metadata(group, datasets, axes=axes)
    return path


def _space(name: str, unit: str | None = "micrometer") -> dict[str, str]:
    return {"name": name, "type": "space", **({"unit": unit} if unit else {})}


def test_size_one_channel_and_z_are_squeezed_and_units_converted(tmp_path: Path) -> None:
    data = _frames("uint16")[:, None, None]  # t, c, z, y, x
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, _space("z"), _space("y"), _space("x")]
    path = _ome_image(tmp_path / "tczyx.zarr", data, axes, [1.0, 1.0, 0.002, 0.0005, 0.0005])
    with open_movie(path) as movie:
        assert movie.shape == (T, H, W) and movie.pixel_size_nm == 0.5  # 0.0005 micrometer
        np.testing.assert_array_equal(movie[:], data[:, 0, 0])
    one = _ome_image(tmp_path / "cyx.zarr", data[0, 0], [{"name": "c", "type": "channel"},
                     _space("y", "angstrom"), _space("x", "angstrom")], [1.0, 2.5, 2.5])  # fmt: skip
    with open_movie(one) as movie:
        assert movie.shape == (1, H, W) and movie.pixel_size_nm == 0.25
    no_unit = _ome_image(tmp_path / "tyx.zarr", data[:, 0, 0], [{"name": "t", "type": "time"}, _space("y", None),
                         _space("x", None)], [1.0, 3.0, 3.0])  # fmt: skip
    with open_movie(no_unit) as movie:
        assert movie.pixel_size_nm is None  # a scale without a unit is no physical size


@pytest.mark.parametrize(
    ("shape", "axes", "named"),
    [
        ((T, 3, H, W), ["t", "c", "y", "x"], "c axis has 3 entries"),
        ((4, H, W), ["z", "y", "x"], "z axis has 4 entries"),
        ((T, H, W), ["t", "x", "y"], "y, x last"),
    ],
)
def test_layouts_that_are_not_movies_are_refused_with_the_axes(
    tmp_path: Path, shape: tuple[int, ...], axes: list[str], named: str
) -> None:
    types = {"t": "time", "c": "channel"}
    meta = [{"name": a, "type": types.get(a, "space")} for a in axes]
    path = _ome_image(tmp_path / "bad.zarr", np.zeros(shape, np.uint8), meta, [1.0] * len(shape))
    with pytest.raises(InputFileError) as err:
        open_movie(path)
    text = str(err.value)
    assert named in text and "=".join(map(str, (axes[-1], shape[-1]))) in text and "(t, y, x)" in text


def test_a_zarr_without_ome_metadata_and_a_missing_extra_are_named(tmp_path: Path, monkeypatch) -> None:
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("0", data=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputFileError, match="no OME-NGFF 'multiscales'"):
        open_movie(plain)
    monkeypatch.setitem(sys.modules, "zarr", None)  # what an install without the extra sees
    with pytest.raises(ConfigError, match=r"pip install 'emlive\[zarr\]'"):
        require_zarr()


def test_find_movies_lists_ome_zarr_folders(tmp_path: Path) -> None:
    write_movie(tmp_path / "b.ome.zarr", _frames("uint8"))
    write_movie(tmp_path / "a.tif", _frames("uint8"))
    assert [p.name for p in find_movies(tmp_path)] == ["a.tif", "b.ome.zarr"]
    assert find_movies(tmp_path / "b.ome.zarr") == [tmp_path / "b.ome.zarr"]


def test_chunks_are_one_frame_or_tiles_of_big_frames() -> None:
    assert chunk_shape(300, 200) == (1, 300, 200)
    assert chunk_shape(5000, 4096) == (1, MAX_CHUNK_EDGE, MAX_CHUNK_EDGE)


_WRITE_SCRIPT = """
import sys
import numpy as np
from emlive.core.zarrio import ZarrMovieStore

path, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = np.load(sys.argv[4])
ZarrMovieStore.open(path).write_frames(start, data[start:stop])
"""


def test_several_processes_fill_one_store_and_it_reports_what_is_complete(tmp_path: Path) -> None:
    data = _frames("float32", seed=5)
    np.save(tmp_path / "data.npy", data)
    path = tmp_path / "shared.ome.zarr"
    store = ZarrMovieStore.create(path, data.shape, data.dtype, 1.5)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITE_SCRIPT, str(path), str(a), str(b), str(tmp_path / "data.npy")])
        for a, b in ((0, 2), (4, 6))
    ]  # two writer processes at once, as two cluster shards
    assert [proc.wait(timeout=90) for proc in procs] == [0, 0]
    assert store.complete_frames().tolist() == [True, True, False, False, True, True]
    assert store.missing_ranges() == [(2, 4)]
    assert not store.finish()
    store.write_frames(2, data[2:4])
    assert store.finish() and store.missing_ranges() == []
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie[:], data)


def test_a_chunk_without_its_completion_record_is_not_trusted(tmp_path: Path) -> None:
    data = _frames("int16", seed=3)
    path = tmp_path / "cut.ome.zarr"
    store = ZarrMovieStore.create(path, data.shape, data.dtype)
    store.write_frames(0, data)
    chunk = path / "0" / "c" / "3" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # a writer killed half-way through frame 3 ...
    (path / DONE_PATH / "c" / "3").unlink()  # ... had not written its record yet
    reopened = ZarrMovieStore.open(path)
    assert reopened.missing_ranges() == [(3, 4)]
    reopened.write_frames(3, data[3:4])
    assert reopened.finish()
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie[:], data)


def test_opening_a_store_emlive_did_not_write_is_refused(tmp_path: Path) -> None:
    path = _ome_image(tmp_path / "other.zarr", np.zeros((2, 4, 4), np.uint8),
                      [{"name": "t", "type": "time"}, _space("y"), _space("x")], [1.0, 1.0, 1.0])  # fmt: skip
    with pytest.raises(InputFileError, match="not a store written by emlive"):
        ZarrMovieStore.open(path)
    with pytest.raises(InputFileError, match="exists"):
        ZarrMovieStore.create(path, (2, 4, 4), "uint8")


LIMIT = 32 * 2**20  # the memory limit of the reading test: the store holds 4 x LIMIT

_READ_SCRIPT = """
import sys
import numpy as np
from emlive.core.readers import open_movie

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

with open_movie(sys.argv[1]) as movie:
    total, peak, base = 0.0, 0, None
    for t in range(len(movie)):
        total += float(movie.frame(t)[::64, ::64].sum())
        if t == 4:
            base = rss()
        if base is not None:
            peak = max(peak, rss())
print(base, peak, total)
"""


@pytest.mark.timeout(180)
def test_reading_a_store_four_times_the_memory_limit_keeps_rss_flat(tmp_path: Path) -> None:
    frame = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)  # 1 MiB: 128 frames hold 4 x LIMIT
    frames = 4 * LIMIT // frame.nbytes
    path = tmp_path / "big.ome.zarr"
    store = ZarrMovieStore.create(path, (frames, *frame.shape), np.float32)
    store.write_frames(0, (frame + t for t in range(frames)))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_READ_SCRIPT), str(path)],
        capture_output=True, text=True, timeout=150, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    base, peak, total = out.stdout.split()
    expected = sum(float((frame + t)[::64, ::64].sum()) for t in range(frames))
    assert float(total) == pytest.approx(expected, rel=1e-9)
    assert int(peak) - int(base) < LIMIT, f"RSS grew {(int(peak) - int(base)) / 2**20:.1f} MiB reading 4 x LIMIT"
