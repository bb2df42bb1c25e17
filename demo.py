"""The demos: ``emlive demo`` (live: detector -> service -> browser viewer, with the shipped model) and
``emlive demo-offline`` (the whole offline job on generated data, end to end).

Offline: simulate an in-situ movie, train the ``synthetic-small`` config on its noisy frames alone, denoise the movie
through the inference runtime (whole frames), and report PSNR/SSIM of the raw movie, the 5-frame average, the
best Gaussian filter and the trained model against the simulator's ground truth, with a before/after PNG.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emlive.analysis.baselines import best_gaussian, temporal_average
from emlive.core.errors import EmliveError
from emlive.core.metrics import psnr_paper, ssim_paper
from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.core.writers import write_movie
from emlive.export.runtime import Denoiser
from emlive.train.api import train
from emlive.train.config import load_config

log = logging.getLogger(__name__)


@dataclass
class MethodScore:
    method: str
    psnr: float
    ssim: float


def score_movie(clean: np.ndarray, test: np.ndarray, frames: list[int]) -> tuple[float, float]:
    """Mean paper PSNR and SSIM over ``frames``."""
    psnr = float(np.mean([psnr_paper(clean[t], test[t]) for t in frames]))
    ssim = float(np.mean([ssim_paper(clean[t], test[t]) for t in frames]))
    return psnr, ssim


def compare_methods(
    noisy: np.ndarray, clean: np.ndarray, denoised: np.ndarray, frames: list[int], n_frames: int = 5
) -> list[MethodScore]:
    """Raw, N-frame average, best Gaussian (oracle sigma) and the model, on the same frames."""
    scores = [MethodScore("raw", *score_movie(clean, noisy, frames))]
    scores.append(
        MethodScore(f"{n_frames}-frame average", *score_movie(clean, temporal_average(noisy, n_frames), frames))
    )
    sigma, gauss = best_gaussian(noisy, clean, psnr_paper, frames=frames[:: max(1, len(frames) // 8)])
    scores.append(MethodScore(f"gaussian (best sigma {sigma:g})", *score_movie(clean, gauss, frames)))
    scores.append(MethodScore("emlive model", *score_movie(clean, denoised, frames)))
    return scores


def save_before_after(path: Path, noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray, crop: int = 256) -> Path:
    """Noisy | denoised | clean crops side by side, each with percentile contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = noisy.shape
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    lo, hi = np.percentile(clean, [0.5, 99.5])
    for ax, (title, img) in zip(
        axes, (("raw", noisy), ("emlive (denoised)", denoised), ("ground truth", clean)), strict=True
    ):
        ax.imshow(img[y0 : y0 + c, x0 : x0 + c], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_offline_demo(
    out: Path, size: int = 512, frames: int = 64, dose: float = 5.0, overrides: list[str] | None = None
) -> list[MethodScore]:
    out.mkdir(parents=True, exist_ok=True)
    log.info("1/4 simulating a %dx%d x %d-frame movie at %g e-/px/frame", size, size, frames, dose)
    sim = SimulationConfig(height=size, width=size, frames=frames, dose=dose, seed=7)
    files = write_simulation(sim, out / "data")
    log.info("2/4 training synthetic-small on the noisy movie only")
    cfg = load_config(
        "synthetic-small",
        [
            f"data.train={files.noisy}",
            f"data.clean={files.clean}",
            f"output.root={out / 'runs'}",
            *(overrides or []),
        ],
    )
    result = train(cfg)
    log.info("3/4 denoising the movie with %s", result.model)
    denoiser = Denoiser.load(result.model)
    with open_movie(files.noisy) as noisy_movie, open_movie(files.clean) as clean_movie:
        noisy = np.asarray(noisy_movie[:], dtype=np.float32)
        clean = np.asarray(clean_movie[:], dtype=np.float32)
    denoised = np.empty_like(noisy)
    for t, frame in denoiser.denoise_movie(noisy):
        denoised[t] = frame
    write_movie(out / "denoised.tif", denoised)
    log.info("4/4 scoring against the ground truth")
    scores = compare_methods(noisy, clean, denoised, list(range(len(noisy))), cfg.network.frames)
    save_before_after(
        out / "before_after.png", noisy[len(noisy) // 2], denoised[len(noisy) // 2], clean[len(noisy) // 2]
    )
    (out / "scores.json").write_text(json.dumps([s.__dict__ for s in scores], indent=2))
    return scores


DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "synthetic-live.pt"


def default_model() -> Path:
    """The model shipped with emlive (trained by the project on its own synthetic movies; models/README.md)."""
    if not DEFAULT_MODEL.is_file():
        raise EmliveError(
            f"{DEFAULT_MODEL}: the shipped default model is missing from this installation; "
            "pass --model PATH or reinstall emlive"
        )
    return DEFAULT_MODEL


def read_line_with_prefix(proc: subprocess.Popen[bytes], prefix: str, what: str, timeout: float = 60.0) -> str:
    """The first stdout line of ``proc`` that starts with ``prefix`` (after stripping blanks).

    Reads the pipe's file descriptor directly: ``select`` on a buffered reader can miss lines already buffered.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(prefix):
                    return text
            if chunk:
                continue
        if proc.poll() is not None:
            raise EmliveError(f"the {what} exited with code {proc.returncode} before it was ready (see its log)")
    raise EmliveError(f"the {what} was not ready within {timeout:.0f} s")


@dataclass
class LiveDemo:
    """Detector simulator -> denoising service -> viewer, as three processes (three GILs on a small CPU)."""

    model: Path
    source: str = "synthetic"
    fps: float = 10.0
    size: int = 512
    port: int = 8000
    threads: int | None = None
    processes: list[tuple[str, subprocess.Popen[bytes]]] | None = None
    url: str = ""

    def start(self) -> str:
        """Start the three processes; returns the viewer's URL."""
        missing = [name for name in ("aiohttp", "PIL") if importlib.util.find_spec(name) is None]
        if missing:
            raise EmliveError(f"the live demo's viewer needs {', '.join(missing)}: pip install 'emlive[viewer]'")
        py = [sys.executable, "-m", "emlive"]
        self.processes = []
        try:
            det = self._spawn(
                "detector",
                [
                    *py,
                    "detector",
                    "--source",
                    self.source,
                    "--fps",
                    str(self.fps),
                    "--output",
                    "tcp://127.0.0.1:0",
                    "--mode",
                    "push",
                    "--loop",
                    "--size",
                    str(self.size),
                ],
            )
            endpoint = json.loads(read_line_with_prefix(det, "{", "demo's detector"))["endpoint"]
            serve_cmd = [
                *py,
                "serve",
                "--model",
                str(self.model),
                "--input",
                endpoint,
                "--input-mode",
                "pull",
                "--output",
                "tcp://127.0.0.1:0",
                "--status",
                "tcp://127.0.0.1:0",
                "--publish-raw",
                "--status-interval",
                "10",
            ]
            if self.threads:
                serve_cmd += ["--threads", str(self.threads)]
            srv = self._spawn("service", serve_cmd)
            endpoints = json.loads(read_line_with_prefix(srv, "{", "demo's service"))["endpoints"]
            view = self._spawn(
                "viewer",
                [
                    *py,
                    "view",
                    "--source",
                    endpoints["output"],
                    "--status",
                    endpoints["status"],
                    "--port",
                    str(self.port),
                ],
            )
            self.url = read_line_with_prefix(view, "emlive viewer:", "demo's viewer").split(":", 1)[1].strip()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log.info("starting the %s: %s", name, " ".join(cmd[2:]))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self.processes is not None
        self.processes.append((name, proc))
        return proc

    def wait(self, duration: float | None = None) -> None:
        """Block until ``duration`` seconds pass (forever if None) or one of the processes exits."""
        deadline = None if duration is None else time.monotonic() + duration
        while deadline is None or time.monotonic() < deadline:
            for name, proc in self.processes or []:
                if proc.poll() is not None:
                    raise EmliveError(f"the demo's {name} stopped unexpectedly (exit code {proc.returncode})")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGINT every process (clean shutdown), then kill what is still running after 10 s."""
        for _, proc in reversed(self.processes or []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in reversed(self.processes or []):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("the %s did not stop within 10 s: killing it", name)
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.processes = []
