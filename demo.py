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
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emlive.core.errors import EmliveError
from emlive.core.processes import ChildProcesses, StopSignal, describe_exit, stop_on_signals

# The offline demo's heavy imports (torch, the trainer) happen inside its functions: the live demo's supervising
# process stays small and starts fast.

log = logging.getLogger(__name__)


@dataclass
class MethodScore:
    method: str
    psnr: float
    ssim: float


def score_movie(clean: np.ndarray, test: np.ndarray, frames: list[int]) -> tuple[float, float]:
    """Mean paper PSNR and SSIM over ``frames``."""
    from emlive.core.metrics import psnr_paper, ssim_paper

    psnr = float(np.mean([psnr_paper(clean[t], test[t]) for t in frames]))
    ssim = float(np.mean([ssim_paper(clean[t], test[t]) for t in frames]))
    return psnr, ssim


def compare_methods(
    noisy: np.ndarray, clean: np.ndarray, denoised: np.ndarray, frames: list[int], n_frames: int = 5
) -> list[MethodScore]:
    """Raw, N-frame average, best Gaussian (oracle sigma) and the model, on the same frames."""
    from emlive.analysis.baselines import best_gaussian, temporal_average
    from emlive.core.metrics import psnr_paper

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
    from emlive.core.readers import open_movie
    from emlive.core.simulate import SimulationConfig, write_simulation
    from emlive.core.writers import write_movie
    from emlive.export.runtime import Denoiser
    from emlive.train.api import train
    from emlive.train.config import load_config

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
            raise EmliveError(
                f"the {what} stopped ({describe_exit(proc.returncode)}) before it was ready (see its log)"
            )
    raise EmliveError(f"the {what} was not ready within {timeout:.0f} s")


@dataclass
class LiveDemo:
    """Detector simulator -> denoising service -> viewer, as three processes (three GILs on a small CPU).

    The processes are supervised (:class:`emlive.core.processes.ChildProcesses`): each runs in its own process
    group and is told to receive SIGTERM if the demo dies (even by SIGKILL); :meth:`stop` sends SIGTERM, waits
    10 s, then kills. Each child only starts threads (no processes of its own)."""

    model: Path
    source: str = "synthetic"
    fps: float = 10.0
    size: int = 512
    port: int = 8000
    threads: int | None = None
    children: ChildProcesses = field(default_factory=lambda: ChildProcesses("demo"))
    url: str = ""

    def start(self) -> str:
        """Start the three processes; returns the viewer's URL. If one fails, the others are stopped."""
        missing = [name for name in ("aiohttp", "PIL") if importlib.util.find_spec(name) is None]
        if missing:
            raise EmliveError(f"the live demo's viewer needs {', '.join(missing)}: pip install 'emlive[viewer]'")
        try:
            endpoint = self._start_detector()
            endpoints = self._start_service(endpoint)
            self.url = self._start_viewer(endpoints)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _start_detector(self) -> str:
        args = ["--source", self.source, "--fps", str(self.fps), "--output", "tcp://127.0.0.1:0"]
        det = self._spawn("detector", [*args, "--mode", "push", "--loop", "--size", str(self.size)])
        endpoint: str = json.loads(read_line_with_prefix(det, "{", "demo's detector"))["endpoint"]
        return endpoint

    def _start_service(self, detector: str) -> dict[str, str]:
        args = ["--model", str(self.model), "--input", detector, "--input-mode", "pull"]
        args += ["--output", "tcp://127.0.0.1:0", "--status", "tcp://127.0.0.1:0"]
        args += ["--publish-raw", "--status-interval", "10"]
        if self.threads:
            args += ["--threads", str(self.threads)]
        srv = self._spawn("service", args)
        endpoints: dict[str, str] = json.loads(read_line_with_prefix(srv, "{", "demo's service"))["endpoints"]
        return endpoints

    def _start_viewer(self, endpoints: dict[str, str]) -> str:
        args = ["--source", endpoints["output"], "--status", endpoints["status"], "--port", str(self.port)]
        view = self._spawn("viewer", args)
        return read_line_with_prefix(view, "emlive viewer:", "demo's viewer").split(":", 1)[1].strip()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        command = {"detector": "detector", "service": "serve", "viewer": "view"}[name]
        log.info("starting the %s: emlive %s %s", name, command, " ".join(args))
        popen: subprocess.Popen[bytes] = self.children.start(
            name, [sys.executable, "-m", "emlive", command, *args], stdout=subprocess.PIPE
        )
        return popen

    def wait(self, duration: float | None = None) -> None:
        """Block until ``duration`` seconds pass (forever if None); raises
        :class:`~emlive.core.processes.ChildExitedError` as soon as one of the processes exits."""
        self.children.wait(duration, interval=0.5)

    def stop(self) -> None:
        """SIGTERM every process group (clean shutdown), then kill what is still running after 10 s."""
        self.children.stop()


def run_live_demo(demo: LiveDemo, duration: float | None, announce: Callable[[str], None]) -> None:
    """Start ``demo``, ``announce`` its URL and run until ``duration`` passes or Ctrl-C/SIGTERM/SIGHUP; the three
    processes are stopped however this ends (a signal, a child that stops, an exception; SIGKILL: the children's
    parent-death signal). A child that stops on its own ends the demo with
    :class:`~emlive.core.processes.ChildExitedError` (exit code 2 from the CLI); a signal is a normal stop."""
    with stop_on_signals() as signals:
        try:
            announce(demo.start())
            demo.wait(duration)
        except StopSignal as stop:
            log.info("%s received: stopping the demo", stop.name)
        finally:
            signals.stopping()
            demo.stop()
