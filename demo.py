"""The demos: ``emlive demo`` (live: detector -> service -> browser viewer, with the shipped model) and
``emlive demo-offline`` (the whole offline job on generated data, end to end).

Offline: simulate an in-situ movie, train the ``synthetic-small`` config on its noisy frames alone, denoise the movie
through the inference runtime (whole frames), and report PSNR/SSIM of the raw movie, the 5-frame average, the
best Gaussian filter and the trained model against the simulator's ground truth, with a before/after PNG.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emlive.core.cache import cache_root
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


DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "cpu-live-student.pt"
DEMO_FPS = 25.0  # a camera-like rate; the service skips what it cannot keep up with
DEMO_SOURCE_FRAMES = 64
# The viewer's niceness in the demo: on the 2 cores the demo shares, the service's inference (the latency the demo
# shows) must not wait behind the viewer's per-frame work (about 10 ms of CPU per displayed pair); the viewer only
# formats frames for the browser and takes what CPU is left (the browser, the user's own program, is not niced).
VIEWER_NICE = 10


def default_model() -> Path:
    """The live demo's model: the CPU-live student shipped with emlive (distilled by the project from its own
    blind-spot teacher on synthetic movies; models/README.md)."""
    if not DEFAULT_MODEL.is_file():
        raise EmliveError(
            f"{DEFAULT_MODEL}: the shipped default model is missing from this installation; "
            "pass --model PATH or reinstall emlive"
        )
    return DEFAULT_MODEL


def demo_service_threads() -> int:
    """The service's inference threads in the demo: the CPUs this process may use, less one for the viewer and
    the browser (at least one). Measured with ``python -m emlive.bench.demo_bench`` on 2 shared cores: one
    thread denoised as many frames as two (10.8 vs 10.9 frames/s, load average 6-7) for 0.52 instead of 0.82 of
    a core (ONNX Runtime's second thread spins while it waits), which the viewer and Chromium need."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def synthetic_demo_movie(size: int, frames: int = DEMO_SOURCE_FRAMES, seed: int = 0) -> Path:
    """The demo's synthetic movie as a TIFF in the cache (made once, about 3 s at 512 px; then read in 0.01 ms per
    frame). The detector simulator computes a synthetic frame in 30-45 ms of CPU at 512 px: at 25 frames/s that
    alone took 0.6-1 of the 2 cores the demo shares with the service, the viewer and the browser."""
    from emlive import __version__
    from emlive.core.simulate import SimulationConfig, SyntheticMovie
    from emlive.core.writers import write_movie

    sim = SimulationConfig(height=size, width=size, frames=frames, dose=5.0, seed=seed)
    key = hashlib.sha256(f"{__version__}|{sim.model_dump_json()}".encode()).hexdigest()[:16]
    path = cache_root() / "demo" / f"synthetic-{size}px-{frames}f-{key}.tif"
    if path.is_file():
        return path
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    movie = SyntheticMovie(sim)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.tif")
    try:
        write_movie(partial, np.stack([np.asarray(movie.frame(t)) for t in range(frames)]), movie.pixel_size_nm)
        partial.replace(path)  # atomic: a concurrent demo sees the whole file or none
    finally:
        partial.unlink(missing_ok=True)
    log.info("made the demo's synthetic movie %s in %.1f s (kept for the next demos)", path, time.perf_counter() - t0)
    return path


def niced(cmd: list[str], niceness: int) -> list[str]:
    """``cmd`` run at ``niceness`` (POSIX ``nice``: the process and every thread it starts); ``cmd`` unchanged
    where there is no ``nice`` program."""
    program = shutil.which("nice")
    if program is None:
        log.info("no nice program: the demo's %s runs at normal priority", Path(cmd[0]).name)
        return cmd
    return [program, "-n", str(niceness), *cmd]


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

    The three start at once and meet on ZeroMQ ``ipc://`` addresses the demo names in a private folder (ZeroMQ
    connects before the other side binds and retries), so the start takes as long as the slowest of them (the
    service: imports, model load, warm-up), not the sum. The processes are supervised
    (:class:`emlive.core.processes.ChildProcesses`): each runs in its own process group and is told to receive
    SIGTERM if the demo dies (even by SIGKILL); :meth:`stop` sends SIGTERM, waits 10 s, then kills. Each child only
    starts threads (no processes of its own).

    ``threads`` is the service's inference threads (None: :func:`demo_service_threads`). ``milestones``
    holds the wall-clock time (``time.time()``) at which :meth:`start` began and each process was ready."""

    model: Path
    source: str = "synthetic"
    fps: float = DEMO_FPS
    size: int = 512
    port: int = 8000
    threads: int | None = None
    status_interval: float = 10.0
    children: ChildProcesses = field(default_factory=lambda: ChildProcesses("demo"))
    url: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    milestones: dict[str, float] = field(default_factory=dict)
    _links: Path | None = None

    def start(self, on_url: Callable[[str], None] | None = None) -> str:
        """Start the three processes; returns the viewer's URL once all three are ready. ``on_url`` gets the URL as
        soon as the viewer serves it (a page opened then shows the first frame the moment the service has one;
        the service, which loads the model, is usually the last one ready). If one fails, the others are stopped.
        """
        self.milestones["start"] = time.time()
        missing = [name for name in ("aiohttp", "PIL") if importlib.util.find_spec(name) is None]
        if missing:
            raise EmliveError(f"the live demo's viewer needs {', '.join(missing)}: pip install 'emlive[viewer]'")
        try:
            self._links = Path(tempfile.mkdtemp(prefix="emlive-demo-", dir="/tmp"))  # short: ipc paths < 108 bytes
            links = {name: f"ipc://{self._links / name}" for name in ("detector", "output", "status")}
            service = self._spawn("service", self._service_args(links))
            viewer = self._spawn("viewer", self._viewer_args(links))
            detector = self._spawn("detector", self._detector_args(links))  # after the movie is made (once)
            line = read_line_with_prefix(viewer, "emlive viewer:", "demo's viewer")
            self.url = line.split(":", 1)[1].strip()
            self.milestones["viewer_ready"] = time.time()
            if on_url is not None:
                on_url(self.url)
            self.endpoints["detector"] = json.loads(read_line_with_prefix(detector, "{", "demo's detector"))["endpoint"]
            self.milestones["detector_ready"] = time.time()
            self.endpoints.update(json.loads(read_line_with_prefix(service, "{", "demo's service"))["endpoints"])
            self.milestones["service_ready"] = time.time()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _detector_args(self, links: dict[str, str]) -> list[str]:
        source = str(synthetic_demo_movie(self.size)) if self.source == "synthetic" else self.source
        args = ["--source", source, "--fps", str(self.fps), "--output", links["detector"]]
        # one endless acquisition, as a camera's live view: looping the short movie as a new acquisition every
        # 64 frames ended a run every 2.6 s, and the service denoises a run's last frames after its end, 2-3
        # inferences late: those were the demo's latency tail (3% of the frames)
        return [*args, "--mode", "push", "--loop", "--continuous", "--size", str(self.size)]

    def _service_args(self, links: dict[str, str]) -> list[str]:
        args = ["--model", str(self.model), "--input", links["detector"], "--input-mode", "pull"]
        args += ["--output", links["output"], "--status", links["status"]]
        args += ["--publish-raw", "--status-interval", str(self.status_interval)]
        return [*args, "--threads", str(self.threads or demo_service_threads())]

    def _viewer_args(self, links: dict[str, str]) -> list[str]:
        return ["--source", links["output"], "--status", links["status"], "--port", str(self.port)]

    def command(self, name: str, args: list[str]) -> list[str]:
        """The command line of the demo's ``name`` process (the viewer's niced: :data:`VIEWER_NICE`)."""
        cmd = [sys.executable, "-m", "emlive", {"detector": "detector", "service": "serve", "viewer": "view"}[name]]
        cmd += args
        if name == "viewer":
            return niced(cmd, VIEWER_NICE)
        return cmd

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        cmd = self.command(name, args)
        log.info("starting the %s: %s", name, " ".join(cmd))
        popen: subprocess.Popen[bytes] = self.children.start(name, cmd, stdout=subprocess.PIPE)
        return popen

    def wait(self, duration: float | None = None) -> None:
        """Block until ``duration`` seconds pass (forever if None); raises
        :class:`~emlive.core.processes.ChildExitedError` as soon as one of the processes exits."""
        self.children.wait(duration, interval=0.5)

    def stop(self) -> None:
        """SIGTERM every process group (clean shutdown), then kill what is still running after 10 s; remove the
        folder of the ``ipc://`` addresses."""
        self.children.stop()
        if self._links is not None:
            shutil.rmtree(self._links, ignore_errors=True)
            self._links = None


def run_live_demo(demo: LiveDemo, duration: float | None, announce: Callable[[str], None]) -> None:
    """Start ``demo``, ``announce`` its URL and run until ``duration`` passes or Ctrl-C/SIGTERM/SIGHUP; the three
    processes are stopped however this ends (a signal, a child that stops, an exception; SIGKILL: the children's
    parent-death signal). A child that stops on its own ends the demo with
    :class:`~emlive.core.processes.ChildExitedError` (exit code 2 from the CLI); a signal is a normal stop."""
    with stop_on_signals() as signals:
        try:
            demo.start(on_url=announce)
            demo.wait(duration)
        except StopSignal as stop:
            log.info("%s received: stopping the demo", stop.name)
        finally:
            signals.stopping()
            demo.stop()
