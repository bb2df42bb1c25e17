"""`emlive export --bioimageio`: the package passes bioimageio's own test command (both weight formats, offline) and
its test tensors are emlive's runtime output.

The model is the session's small random-weight network (tests/export/conftest.py: width 8, 2 scales, 1 block, 5
frames; halo 20 px, sizes 42 + n x 2), the test window a real movie file (a simulated movie saved as .npy) so the
``--test-movie`` path runs; the package is exported once for the module through the ``emlive`` entry point.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.simulate import make_config, simulate_movie
from emlive.export.bioimageio import BIOIMAGEIO_INSTALL_HINT, FILES, export_bioimageio, geometry, sample_window
from emlive.export.runtime import Denoiser

from ..entry import run_emlive

pytestmark = pytest.mark.timeout(240)

# Every download bioimageio might try goes to a closed local port and fails at once: the test proves the package
# is tested offline (CI has no network) instead of waiting for timeouts.
OFFLINE = {key: "http://127.0.0.1:9" for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")}


@dataclass
class Package:
    path: Path
    ckpt: Path
    output: str



@pytest.fixture(scope="module")
def package(small, tmp_path_factory: pytest.TempPathFactory) -> Package:
    root = tmp_path_factory.mktemp("bmz")
    noisy, _ = simulate_movie(make_config(height=80, width=96, frames=7, seed=3))
    movie = root / "movie.npy"
    np.save(movie, noisy)
    path = root / "model.zip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMLIVE_CACHE_DIR", str(root / "cache"))
        code = run_emlive(
            "export", str(small.ckpt), "--bioimageio", str(path), "--test-movie", str(movie), "--test-size", "64",
            "--author", "Test Author",
        )  # fmt: skip
    assert code == 0
    return Package(path, small.ckpt, str(movie))


def _read(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


def _npy(path: Path, name: str) -> np.ndarray:
    return np.load(io.BytesIO(_read(path, name)))


def test_package_contents(package: Package, small) -> None:
    with zipfile.ZipFile(package.path) as zf:
        names = set(zf.namelist())
    assert set(FILES.values()) <= names
    rdf = yaml.safe_load(_read(package.path, "rdf.yaml"))
    assert rdf["format_version"].startswith("0.5.")
    geo = geometry(small.config)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][1]["channel_names"] == ["t-2", "t-1", "t", "t+1", "t+2"]
    assert inp["axes"][2]["size"] == {"min": geo.min_size, "step": small.config.pad_multiple}
    assert [a.get("halo") for a in out["axes"][2:]] == [geo.halo, geo.halo]
    assert geo.halo >= small.config.receptive_radius
    assert set(rdf["weights"]) == {"onnx", "torchscript"}
    assert rdf["authors"] == [{"name": "Test Author"}]
    assert "Kim, Rhee" in rdf["cite"][0]["text"]
    readme = _read(package.path, "README.md").decode()
    assert "## Validation" in readme and f"halo {geo.halo} px" in readme and package.output in readme
    assert _npy(package.path, FILES["input"]).shape == (1, 5, 64, 64)


def test_bioimageio_test_command_passes_offline(package: Package, tmp_path: Path) -> None:
    """bioimageio's own CLI (the installed console script) tests both weight formats with no network."""
    summary = tmp_path / "summary.json"
    cli = Path(sys.executable).with_name("bioimageio")
    env = {**os.environ, **OFFLINE, "NO_PROXY": "", "BIOIMAGEIO_CACHE_PATH": str(tmp_path / "bmz-cache")}
    proc = subprocess.run(
        [str(cli), "test", str(package.path), "--summary", str(summary)],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["status"] == "passed"
    reproduced = {d["name"]: d["status"] for d in result["details"] if d["name"].startswith("Reproduce test outputs")}
    assert reproduced == {
        "Reproduce test outputs from test inputs (onnx)": "passed",
        "Reproduce test outputs from test inputs (torchscript)": "passed",
    }


def test_test_tensors_are_emlive_runtime_output(package: Package) -> None:
    """The package's test input through emlive's runtime (loaded from the checkpoint) gives its test output."""
    window = _npy(package.path, FILES["input"])[0]
    expected = _npy(package.path, FILES["output"])[0, 0]
    with Denoiser.load(package.ckpt, backend="onnx_cpu") as den:
        got = den.denoise_window(window)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.ptp(expected)))


def test_sizes_follow_the_halo_and_pooling_rule() -> None:
    cfg = NetworkConfig(width=8, scales=2, blocks=1)
    geo = geometry(cfg)
    assert (geo.step, geo.halo, geo.min_size) == (2, 20, 42)
    assert geo.size_at_least(128) == 128 and geo.size_at_least(10) == 42 and geo.size_at_least(43) == 44
    with pytest.raises(ConfigError, match=r"--test-size=43: .* 42 \+ n x 2 px .* use 44"):
        geo.check(43, "--test-size")
    window, source = sample_window(ModelCard(network=cfg), 42)
    assert window.shape == (5, 42, 42) and window.dtype == np.float32 and "simulated" in source


def test_two_channel_model_is_refused(tmp_path: Path) -> None:
    """A head=gaussian network (mean and log variance) is refused before anything is written."""
    cfg = NetworkConfig(width=8, scales=2, blocks=1, head="gaussian")
    with pytest.raises(ConfigError, match=r"2 output channels .*\(network\.head=mean\)"):
        export_bioimageio(BlindSpotNet(cfg), tmp_path / "g.zip")
    assert not (tmp_path / "g.zip").exists()


def test_missing_extra_is_one_clear_line(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without bioimageio installed (hidden from the import system here) the command says what to install."""

    class HideBioimageio:
        @staticmethod
        def find_spec(name: str, *args: object) -> None:
            if name == "bioimageio" or name.startswith("bioimageio."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    for name in [m for m in sys.modules if m == "bioimageio" or m.startswith("bioimageio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HideBioimageio(), *sys.meta_path])
    assert run_emlive("export", str(small.ckpt), "--bioimageio", str(tmp_path / "m.zip")) == 2
    err = capsys.readouterr().err
    assert "bioimageio.spec, bioimageio.core not installed" in err and BIOIMAGEIO_INSTALL_HINT in err
    assert "Traceback" not in err and not (tmp_path / "m.zip").exists()
