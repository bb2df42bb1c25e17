"""The light install (``pip install emlive``, no ``train`` extra) serves an exported model without torch.

A real virtualenv is built without torch (:func:`emlive.bench.light_install.light_venv`: ``python -m venv``, the
base dependencies of pyproject.toml from the package index, this checkout's wheel with ``--no-deps``); the ONNX
model is exported here, in the full environment. Where the time goes: building the venv the first time, about 1-3
minutes (pip unpacking onnxruntime and numpy; kept under build/light-venv/ for reruns); then building
and installing the wheel (about 10 s) and each emlive process (1-2 s).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq

from emlive.bench.light_install import light_venv
from emlive.core.errors import ModelFileError
from emlive.core.modelcard import ModelCard, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.processes import ChildProcesses
from emlive.core.protocol import decode
from emlive.core.readers import DM_EXTRA_HINT, open_movie
from emlive.core.simulate import load_simulation_config, simulate_movie
from emlive.core.writers import write_movie
from emlive.export.onnx_export import export_onnx, read_onnx_card
from emlive.export.onnxmeta import card_from_onnx_bytes

TRAINING_STACK = ("torch", "lightning", "onnx", "tensorboard", "scipy")  # scipy: the train extra since issue 16


@pytest.fixture(scope="module")
def light_python() -> Path:
    return light_venv()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random-weight blind-spot network: its checkpoint and its ONNX export (made here, with torch)."""
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = NetworkConfig(width=8, scales=2, blocks=1)
    ckpt = save_model(root / "tiny.pt", BlindSpotNet(cfg).eval(), ModelCard(network=cfg, name="tiny"))
    return {"pt": ckpt, "onnx": export_onnx(ckpt, root / "tiny.onnx").path}


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = np.random.default_rng(3).poisson(4.0, (9, 40, 52)).astype(np.uint16)
    return write_movie(tmp_path_factory.mktemp("movie") / "movie.tif", frames)


def _emlive(python: Path, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [str(python), "-m", "emlive", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def full_denoised(model: dict[str, Path], movie: Path) -> np.ndarray:
    """``emlive denoise`` of the movie in the full environment (the reference)."""
    out = movie.parent / "full.tif"
    done = _emlive(Path(sys.executable), ["denoise", str(movie), "-m", str(model["onnx"]), "-o", str(out),
                                          "--threads", "1"], movie.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    with open_movie(out) as m:
        return np.asarray(m[:])


# --- without building the light venv -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_card_is_read_from_onnx_bytes_without_the_onnx_package(model: dict[str, Path], tmp_path: Path) -> None:
    data = model["onnx"].read_bytes()
    assert card_from_onnx_bytes(data, "tiny.onnx") == read_onnx_card(model["onnx"])[1]
    with pytest.raises(ModelFileError, match=r"cut\.onnx: not a readable ONNX model"):
        card_from_onnx_bytes(data[: len(data) // 2], "cut.onnx")
    with pytest.raises(ModelFileError, match="without emlive metadata"):
        card_from_onnx_bytes(b"\x08\x07", "bare.onnx")  # ir_version = 7 and nothing else


@pytest.mark.timeout(120)
def test_serving_an_onnx_model_imports_no_training_stack(model: dict[str, Path]) -> None:
    """In the full environment too: the runtime, the service and the CLI load an ONNX model without torch."""
    code = (
        "import sys, numpy as np\n"
        "import emlive.cli, emlive.stream.service, emlive.stream.detector, emlive.analysis.denoise\n"
        "from emlive.export.runtime import Denoiser\n"
        f"d = Denoiser.load({str(model['onnx'])!r}, backend='auto', threads=1)\n"
        "d.denoise_window(np.ones((5, 24, 24), np.float32))\n"
        "print([m for m in ('torch', 'lightning', 'onnx', 'matplotlib', 'tensorboard', 'scipy') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


# --- in the light venv ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)  # the first build of the venv: 1-3 minutes; reruns reuse it
def test_the_light_venv_has_no_training_stack(light_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        f"print([m for m in {TRAINING_STACK!r} if importlib.util.find_spec(m) is not None])\n"
        "import emlive\n"
        "print(emlive.__file__)\n"
    )
    done = subprocess.run([str(light_python), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found, where = done.stdout.splitlines()
    assert found == "[]"
    assert str(light_python.parent.parent) in where  # the installed wheel, not this checkout
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([str(light_python), "-c", "import torch"], capture_output=True, check=True, timeout=60)


@pytest.mark.timeout(900)
def test_light_denoise_equals_the_full_install(
    light_python: Path, model: dict[str, Path], movie: Path, full_denoised: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "light.tif"
    done = _emlive(light_python, ["denoise", str(movie), "-m", str(model["onnx"]), "-o", str(out), "--threads", "1"],
                   tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open_movie(out) as m:
        np.testing.assert_array_equal(np.asarray(m[:]), full_denoised)


@pytest.mark.timeout(900)
def test_light_commands_that_need_torch_say_what_to_install(
    light_python: Path, model: dict[str, Path], movie: Path, tmp_path: Path
) -> None:
    listed = _emlive(light_python, ["--help"], tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    for command in ("train", "distill", "export", "denoise", "serve", "detector", "view", "simulate"):
        assert f" {command} " in listed.stdout, command
    hint = "this needs the training stack: pip install 'emlive[train]'"
    for args in (
        ["train", "--config", "synthetic-small", str(movie)],
        ["noise-stats", str(movie)],  # scipy (registration, smoothing) comes with the train extra
        ["export", str(model["pt"]), "-o", str(tmp_path / "x.onnx")],
        ["denoise", str(movie), "-m", str(model["pt"]), "-o", str(tmp_path / "x.tif")],
    ):
        done = _emlive(light_python, args, tmp_path)
        assert done.returncode == 2, (args, done.stderr[-3000:])
        assert hint in done.stderr and "Traceback" not in done.stderr, (args, done.stderr[-3000:])
    dm4 = tmp_path / "gatan.dm4"  # Gatan/FEI formats come with the dm extra (ncempy): the light install names it
    dm4.write_bytes((4).to_bytes(4, "big") + bytes(60))
    args = ["denoise", str(dm4), "-m", str(model["onnx"]), "-o", str(tmp_path / "d.tif")]
    done = _emlive(light_python, args, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert DM_EXTRA_HINT in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.timeout(900)
def test_light_simulate_needs_no_scipy(light_python: Path, tmp_path: Path) -> None:
    """The simulator's Fourier shift and charge-sharing filter are numpy (emlive.core.filters): the light install
    writes the same movie as the full one."""
    args = ["simulate", "-o", str(tmp_path), "--frames", "3", "--height", "32", "--width", "48", "--particles", "2",
            "--drift", "0.7", "--correlated", "isotropic", "--seed", "5"]  # fmt: skip
    done = _emlive(light_python, args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    config = load_simulation_config(tmp_path / "manifest.json")
    noisy, clean = simulate_movie(config)
    with open_movie(tmp_path / "noisy.tif") as light_noisy, open_movie(tmp_path / "clean.tif") as light_clean:
        np.testing.assert_array_equal(np.asarray(light_noisy[:]), noisy)
        np.testing.assert_array_equal(np.asarray(light_clean[:]), clean)


@pytest.fixture
def children() -> Iterator[ChildProcesses]:
    with ChildProcesses("light-install test") as kids:
        yield kids


def _start(children: ChildProcesses, python: Path, args: list[str], log: Path) -> tuple[Any, dict[str, Any]]:
    """Start ``emlive ARGS`` in ``python``'s environment and wait for its JSON ready line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    with log.open("w") as err:
        popen = children.start(args[0], [str(python), "-m", "emlive", *args], stdout=subprocess.PIPE, stderr=err,
                               text=True, env=env)
    with selectors.DefaultSelector() as sel:
        sel.register(popen.stdout, selectors.EVENT_READ)
        assert sel.select(60), f"emlive {args[0]} not ready in 60 s:\n{log.read_text()}"
    line = popen.stdout.readline()
    assert line, f"emlive {args[0]} exited with {popen.wait(10)}:\n{log.read_text()}"
    return popen, json.loads(line)


@pytest.mark.timeout(900)
def test_light_serve_denoises_a_detector_stream_over_loopback(
    light_python: Path,
    model: dict[str, Path],
    movie: Path,
    full_denoised: np.ndarray,
    children: ChildProcesses,
    tmp_path: Path,
) -> None:
    """``emlive detector`` -> ``emlive serve`` (both in the light venv) -> a subscriber here: every frame denoised
    as the full install's ``emlive denoise`` does it."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pick = ctx.socket(zmq.PULL)
    detector_address = f"tcp://127.0.0.1:{pick.bind_to_random_port('tcp://127.0.0.1')}"
    pick.close(linger=0)
    serve_args = ["serve", "--model", str(model["onnx"]), "--input", detector_address, "--input-mode", "pull"]
    serve_args += ["--lossless", "--output", "tcp://127.0.0.1:0", "--threads", "1"]
    serve, ready = _start(children, light_python, serve_args, tmp_path / "serve.log")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ready["endpoints"]["output"])
    try:
        sub.poll(500)  # let the subscription reach the service before the detector starts
        det_args = ["detector", "--source", str(movie), "--mode", "push", "--fps", "50", "--output", detector_address]
        _start(children, light_python, det_args, tmp_path / "detector.log")
        frames: dict[int, np.ndarray] = {}
        while True:
            log = (tmp_path / "serve.log").read_text
            assert sub.poll(30000), f"no message in 30 s after {len(frames)} frames:\n{log()}"
            msg = decode(sub.recv_multipart(copy=False))
            if msg.header.type == "end":
                break
            if msg.header.type == "frame" and msg.header.kind == "denoised":
                frames[msg.header.index] = np.array(msg.data)
    finally:
        sub.close(linger=0)
    assert sorted(frames) == list(range(len(full_denoised)))
    np.testing.assert_allclose(np.stack([frames[i] for i in sorted(frames)]), full_denoised, rtol=1e-6, atol=1e-6)
    serve.terminate()
    assert serve.wait(30) == 0
