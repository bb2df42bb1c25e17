"""emlive denoise to OME-Zarr: equal to the TIFF output, metadata, folders, resume after a SIGKILL equal to a clean
run, refused resumes, and a movie 4x larger than a memory limit denoised with RSS flat."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr", reason="the zarr extra is not installed")
onnx = pytest.importorskip("onnx")

from emlive.analysis.denoise import denoise_path  # noqa: E402
from emlive.core.errors import ConfigError, InputFileError  # noqa: E402
from emlive.core.modelcard import CARD_KEY, ModelCard  # noqa: E402
from emlive.core.network import NetworkConfig  # noqa: E402
from emlive.core.readers import open_movie  # noqa: E402
from emlive.core.writers import write_movie  # noqa: E402
from emlive.core.zarrio import DONE_PATH, ZarrMovieStore  # noqa: E402
from emlive.export.runtime import Denoiser  # noqa: E402

pytestmark = pytest.mark.timeout(180)
PIXEL_NM = 0.125
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tiny_onnx(path: Path) -> Path:
    """An emlive ONNX model of one operation: the mean of the 4 frames around the center (a blind-spot denoiser
    with no weights), so denoising costs about what reading and writing cost."""
    from onnx import TensorProto, helper

    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", None, "h", "w"])

    def const(name: str, values: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    nodes = [
        helper.make_node("Slice", ["frames", "s0", "e0", "ax"], ["before"]),
        helper.make_node("Slice", ["frames", "s1", "e1", "ax"], ["after"]),
        helper.make_node("Concat", ["before", "after"], ["around"], axis=1),
        helper.make_node("ReduceMean", ["around"], ["denoised"], axes=[1], keepdims=1),
    ]
    inits = [const("s0", [0]), const("e0", [2]), const("s1", [3]), const("e1", [5]), const("ax", [1])]
    graph = helper.make_graph(nodes, "mean4", [value("frames")], [value("denoised")], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, ModelCard(network=NetworkConfig(width=8, scales=2, blocks=1)).to_json()
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_onnx(tmp_path_factory.mktemp("model") / "mean4.onnx")


@pytest.fixture(scope="module")
def denoiser(model: Path) -> Denoiser:
    return Denoiser.load(model, "onnx_cpu", threads=1)


def _noisy(frames: int, shape: tuple[int, int] = (40, 48), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    scene = 20.0 * (1.0 + 0.5 * np.sin(yy / 5.0) * np.cos(xx / 7.0))
    return rng.poisson(scene, (frames, *shape)).astype(np.uint16)


def _emlive(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "emlive", "denoise", *map(str, args), "--no-progress", "--threads", "1",
            "--backend", "onnx_cpu"]  # fmt: skip  # the backend of the in-process reference runs


def test_ome_zarr_output_equals_tiff_and_records_pixel_size_and_card(
    tmp_path: Path, model: Path, denoiser: Denoiser
) -> None:
    src = write_movie(tmp_path / "in.mrc", _noisy(9), PIXEL_NM)
    denoise_path(src, tmp_path / "out.tif", denoiser, progress=False)
    report = denoise_path(src, tmp_path / "out.ome.zarr", denoiser, frames="2:8", dtype="input", progress=False)
    assert report.movies[0].format == "ome.zarr" and report.movies[0].frames == 6
    with open_movie(tmp_path / "out.tif") as tif, open_movie(tmp_path / "out.ome.zarr") as zarr_movie:
        assert (zarr_movie.shape, zarr_movie.dtype, zarr_movie.pixel_size_nm) == ((6, 40, 48), "uint16", PIXEL_NM)
        expected = np.clip(np.rint(tif[2:8]), 0, 65535).astype(np.uint16)  # --dtype input: rounded, clipped
        np.testing.assert_array_equal(zarr_movie[:], expected)
    own = ZarrMovieStore.open(tmp_path / "out.ome.zarr").attributes
    assert own["model_card"] == json.loads(denoiser.card.to_json())
    assert own["source_frames"] == [2, 8] and own["complete"] is True and own["emlive_version"]
    # an existing store is refused without --resume/--overwrite, and --resume is for OME-Zarr only
    with pytest.raises(InputFileError, match="--resume to finish an interrupted run"):
        denoise_path(src, tmp_path / "out.ome.zarr", denoiser, progress=False)
    with pytest.raises(ConfigError, match="--resume continues OME-Zarr outputs only"):
        denoise_path(src, tmp_path / "out.tif", denoiser, resume=True, progress=False)


def test_folder_input_with_format_zarr_and_zarr_input_stays_zarr(tmp_path: Path, denoiser: Denoiser) -> None:
    (tmp_path / "in").mkdir()
    write_movie(tmp_path / "in" / "a.tif", _noisy(4, seed=1), PIXEL_NM)
    write_movie(tmp_path / "in" / "b.ome.zarr", _noisy(3, seed=2), PIXEL_NM)
    denoise_path(tmp_path / "in", tmp_path / "out", denoiser, fmt="zarr", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.zarr", "b.ome.zarr"]
    denoise_path(tmp_path / "in" / "b.ome.zarr", tmp_path / "kept", denoiser, progress=False)
    with open_movie(tmp_path / "kept" / "b.ome.zarr") as kept, open_movie(tmp_path / "out" / "b.ome.zarr") as out:
        np.testing.assert_array_equal(kept[:], out[:])


def test_resume_after_sigkill_writes_only_the_rest_and_equals_a_clean_run(
    tmp_path: Path, model: Path, denoiser: Denoiser
) -> None:
    frames = 150
    src = write_movie(tmp_path / "in.mrc", _noisy(frames, (32, 32)), PIXEL_NM)
    clean = tmp_path / "clean.ome.zarr"
    denoise_path(src, clean, denoiser, progress=False)
    out = tmp_path / "out.ome.zarr"
    proc = subprocess.Popen(_emlive(src, "-o", out, "--model", model), env=ENV, stderr=subprocess.DEVNULL)
    records = out / DONE_PATH / "c"
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(os.listdir(records)) >= 5) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # the whole job dies mid-write
    proc.wait(30)
    done = int(ZarrMovieStore.open(out).complete_frames().sum())
    assert 5 <= done < frames
    again = subprocess.run(_emlive(src, "-o", out, "--model", model, "--resume", "--json"), env=ENV,
                           capture_output=True, text=True, timeout=150)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["movies"][0]["frames"] == frames - done  # only the missing frames
    assert "resuming" in again.stderr
    with open_movie(out) as resumed, open_movie(clean) as reference:
        assert resumed.dtype == reference.dtype == np.float32
        np.testing.assert_array_equal(resumed[:], reference[:])  # bit for bit


def test_resume_of_another_job_is_refused_naming_the_difference(tmp_path: Path, denoiser: Denoiser) -> None:
    src = write_movie(tmp_path / "in.mrc", _noisy(6), PIXEL_NM)
    out = tmp_path / "out.ome.zarr"
    denoise_path(src, out, denoiser, frames="0:4", progress=False)
    with pytest.raises(ConfigError, match=r"input frames \[start, stop\) \[0, 4\], this run gives \[1, 5\]"):
        denoise_path(src, out, denoiser, frames="1:5", resume=True, progress=False)
    with pytest.raises(ConfigError, match="pixel type float32, this run gives uint16"):
        denoise_path(src, out, denoiser, frames="0:4", dtype="input", resume=True, progress=False)
    report = denoise_path(src, out, denoiser, frames="0:4", resume=True, progress=False)
    assert report.movies[0].frames == 0  # complete: nothing to do


LIMIT = 64 * 2**20  # the memory limit of the test: the movie is 4 x LIMIT


def _private_rss(pid: int) -> int | None:
    """The process's own memory (RssAnon + RssShmem): what loading frames would grow. Pages of the memory-mapped
    input (RssFile) are the kernel's page cache, dropped under pressure, so they are left out."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "RssAnon" not in fields:
        return None
    return sum(int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "RssShmem"))


@pytest.mark.timeout(240)
def test_denoising_a_movie_four_times_the_memory_limit_keeps_rss_flat(
    tmp_path: Path, model: Path, denoiser: Denoiser
) -> None:
    yy, xx = np.mgrid[0:512, 0:512]
    base = np.stack([np.float32(20 + t) * (yy // 16 + xx // 16).astype(np.float32) for t in range(8)])  # 1 MiB frames
    frames = 4 * LIMIT // base[0].nbytes
    src = write_movie(tmp_path / "in.mrc", (base[t % 8] + np.float32(t) for t in range(frames)), PIXEL_NM)
    out = tmp_path / "out.ome.zarr"
    proc = subprocess.Popen(_emlive(src, "-o", out, "--model", model), env=ENV, stderr=subprocess.PIPE, text=True)
    records = out / DONE_PATH / "c"
    warm, peak = None, 0
    while proc.poll() is None:
        rss = _private_rss(proc.pid)
        if warm is None and records.is_dir() and len(os.listdir(records)) >= 8 and rss is not None:
            warm = rss  # after warm-up: model loaded, first frames read, denoised and written
        if warm is not None and rss is not None:
            peak = max(peak, rss)
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert warm is not None
    growth = peak - warm
    logging.getLogger(__name__).info(
        "RSS after warm-up %.1f MiB, peak %.1f MiB, growth %.1f MiB for a %.0f MiB movie",
        warm / 2**20, peak / 2**20, growth / 2**20, frames * base[0].nbytes / 2**20,
    )  # fmt: skip
    assert growth < LIMIT
    with open_movie(out) as result, open_movie(src) as movie:
        assert result.shape == movie.shape
        for t in (0, frames // 2, frames - 1):  # spot frames equal an in-process run of the same frames
            _, expected = next(iter(denoiser.denoise_movie(movie, t, t + 1)))
            np.testing.assert_array_equal(result.frame(t), expected)
