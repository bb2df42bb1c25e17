"""The npe2 reader through napari itself: a real file of every format emlive reads, opened by
``viewer.open(path, plugin="emlive")``; shape, pixels, scale (nm) and laziness checked; the sample data; and the
manifest validated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

pytest.importorskip("napari", reason="the napari extra is not installed: pip install 'emlive[napari]'")

from emlive.core.readers import Movie
from emlive.napari_plugin.reader import PATH_KEY, PIXEL_KEY, get_reader
from emlive.napari_plugin.sample import sample_movie, shipped_model

from ..core import formats

pytestmark = pytest.mark.timeout(120)


PIXEL_NM = 0.25


def stack(t: int = 4, h: int = 24, w: int = 40, dtype: str = "uint16") -> np.ndarray:
    """A (T, H, W) movie with a ramp in the first row and column, so a flip or an H/W swap shows."""
    data = np.random.default_rng(1).integers(0, 3000, size=(t, h, w))
    data[:, 0, :] = np.arange(w)
    data[:, :, 0] = np.arange(h)
    return data.astype(dtype)


def _mrc(path: Path, data: np.ndarray) -> Path:
    with mrcfile.new(path.with_suffix(".mrc"), overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = PIXEL_NM * 10  # Å
    return path.with_suffix(".mrc")


def _tif(path: Path, data: np.ndarray) -> Path:
    out = path.with_suffix(".tif")
    tifffile.imwrite(out, data, photometric="minisblack", resolution=(1e7 / PIXEL_NM,) * 2, resolutionunit=3)
    return out


def _tif_folder(path: Path, data: np.ndarray) -> Path:
    path.mkdir()
    for t, frame in enumerate(data):
        tifffile.imwrite(path / f"frame{t}.tif", frame, resolution=(1e7 / PIXEL_NM,) * 2, resolutionunit=3)
    return path


def _npy(path: Path, data: np.ndarray) -> Path:
    np.save(path.with_suffix(".npy"), data)
    return path.with_suffix(".npy")


def _emd(path: Path, data: np.ndarray) -> Path:
    from ncempy.io import emd

    out = path.with_suffix(".emd")
    emd.emdWriter(out, data, pixel_size=(1.0, PIXEL_NM, PIXEL_NM), pixel_unit=("s", "nm", "nm"))
    return out


def _zarr(path: Path, data: np.ndarray) -> Path:
    from emlive.core.writers import write_movie

    return write_movie(path.with_suffix(".ome.zarr"), data, pixel_size_nm=PIXEL_NM)


# name -> writer(path without suffix, data) -> the path to open; npy carries no pixel size
WRITERS: dict[str, Callable[[Path, np.ndarray], Path]] = {
    "mrc": _mrc,
    "dm3": lambda p, d: formats.write_dm(p.with_suffix(".dm3"), d, PIXEL_NM, version=3),
    "dm4": lambda p, d: formats.write_dm(p.with_suffix(".dm4"), d, PIXEL_NM, version=4),
    "ser": lambda p, d: formats.write_ser(p.with_name(p.name + "_1.ser"), d, PIXEL_NM * 1e-9),
    "emd": _emd,
    "velox-emd": lambda p, d: formats.write_velox(p.with_suffix(".emd"), d, PIXEL_NM * 1e-9),
    "tif": _tif,
    "tif-folder": _tif_folder,
    "npy": _npy,
    "ome-zarr": _zarr,
}

MANIFEST = Path(__file__).resolve().parents[2] / "napari_plugin" / "napari.yaml"


def test_every_format_opens_through_napari_lazily_with_its_pixel_size(
    make_napari_viewer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = make_napari_viewer()  # one viewer for every check: a napari viewer takes seconds to make
    # a long movie is not loaded at open: napari draws one frame, and only that frame is read
    reads: list[int] = []
    frame = Movie.frame

    def counted(self: Movie, t: int) -> np.ndarray:
        reads.append(int(t))
        return frame(self, t)

    monkeypatch.setattr(Movie, "frame", counted)
    (long,) = viewer.open(_tif(tmp_path / "long", stack(t=64)), plugin="emlive")
    assert long.data.chunksize == (1, 24, 40)
    assert 1 <= len(set(reads)) <= 2, f"frames read at open: {sorted(set(reads))}"
    monkeypatch.undo()
    viewer.layers.clear()

    data = stack()
    for fmt, write in WRITERS.items():
        path = write(tmp_path / fmt, data)
        (layer,) = viewer.open(path, plugin="emlive")
        assert layer.data.shape == data.shape, fmt
        np.testing.assert_array_equal(np.asarray(layer.data), data, err_msg=fmt)
        pixel = None if fmt == "npy" else PIXEL_NM
        assert layer.metadata[PIXEL_KEY] == (None if pixel is None else pytest.approx(pixel, rel=1e-6)), fmt
        assert layer.metadata[PATH_KEY] == str(path)
        np.testing.assert_allclose(layer.scale, (1.0, pixel or 1.0, pixel or 1.0), rtol=1e-6, err_msg=fmt)
        assert [str(u) for u in layer.units[1:]] == (["pixel"] * 2 if pixel is None else ["nanometer"] * 2), fmt
        assert layer.axis_labels == ("t", "y", "x")
    assert len(viewer.layers) == len(WRITERS)

    # the sample data (File > Open Sample > emlive): the simulated movie and its truth, same geometry, fixed seed
    viewer.layers.clear()
    noisy, clean = viewer.open_sample("emlive", "simulated-movie")
    assert noisy.data.shape == clean.data.shape == (16, 256, 256)
    assert noisy.data.dtype == np.uint16 and clean.data.dtype == np.float32
    np.testing.assert_allclose(noisy.scale, (1.0, 0.05, 0.05))
    np.testing.assert_array_equal(noisy.scale, clean.scale)
    assert np.array_equal(noisy.data, sample_movie()[0][0])  # the same movie every time
    assert 0.2 < np.corrcoef(noisy.data[0].ravel(), clean.data[0].ravel())[0, 1] < 0.9  # noisy, yet its truth
    assert shipped_model().is_file()


def test_other_files_are_left_to_other_readers(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a movie")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(_npy(tmp_path / "m", stack()))) is not None


def test_manifest_is_valid_installed_and_covers_every_format() -> None:
    from npe2 import PluginManifest

    from emlive.core.readers import SUPPORTED_SUFFIXES, ZARR_SUFFIXES

    manifest = PluginManifest.from_distribution("emlive")  # the napari.manifest entry point of the install
    assert manifest == PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every command's python_name imports (what `npe2 validate --imports` checks)
    (reader,) = manifest.contributions.readers or []
    assert {p.removeprefix("*") for p in reader.filename_patterns} == SUPPORTED_SUFFIXES | ZARR_SUFFIXES
    assert reader.accepts_directories
    widgets = {w.display_name for w in manifest.contributions.widgets or []}
    assert widgets == {"Denoise", "Train", "Live"}
