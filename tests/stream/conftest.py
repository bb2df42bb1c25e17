"""Fixtures of the live-service tests: a small random-weight model, movies, offline references, a subscriber.

Everything runs on real sockets on 127.0.0.1 with port 0; every socket a helper opens is closed at teardown.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.modelcard import ModelCard, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.processes import ChildProcesses
from emlive.core.protocol import Header, decode
from emlive.core.windows import stack_window, window_indices
from emlive.stream.service import DenoiseService


def make_model(path: Path, name: str, frames: int = 5, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = NetworkConfig(width=8, scales=3, blocks=1, frames=frames)
    return save_model(path, BlindSpotNet(cfg), ModelCard(name=name, network=cfg))


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "tiny5.pt", "tiny-5")


@pytest.fixture(scope="session")
def model3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "tiny3.pt", "tiny-3", frames=3, seed=1)


def _load(path: Path) -> Any:
    from emlive.export.runtime import Denoiser

    return Denoiser.load(path, "auto", threads=1)


@pytest.fixture(scope="session")
def denoiser(model_path: Path) -> Any:
    """The real inference runtime on the tiny model (one CPU thread: the test machines are shared)."""
    return _load(model_path)


@pytest.fixture(scope="session")
def load_model() -> Callable[[Path], Any]:
    return _load


def movie_array(frames: int = 10, shape: tuple[int, int] = (40, 48), seed: int = 0) -> np.ndarray:
    """A small noisy uint16 movie (Poisson around a smooth pattern)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 50 + 20 * np.sin(xx / 5.0) + 10 * np.cos(yy / 7.0)
    return np.stack([rng.poisson(base + t) for t in range(frames)]).astype(np.uint16)


@pytest.fixture
def movie() -> np.ndarray:
    return movie_array()


@pytest.fixture
def make_movie() -> Callable[..., np.ndarray]:
    return movie_array


def offline(denoiser: Any, frames: np.ndarray) -> np.ndarray:
    """Offline denoising of a whole movie: ``denoise_window`` over ``window_indices`` windows."""
    n, length = denoiser.frames, len(frames)
    return np.stack(
        [denoiser.denoise_window(stack_window(frames, window_indices(t, n, length))) for t in range(length)]
    )


@pytest.fixture
def offline_ref() -> Callable[[Any, np.ndarray], np.ndarray]:
    return offline


class SlowDenoiser:
    """The real denoiser made slower by ``delay`` seconds per window (to overload the service)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.frames, self.backend, self.device, self.card = inner.frames, inner.backend, inner.device, inner.card

    def denoise_window(self, window: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)  # simulates a slower model, not a wait for an event
        return np.asarray(self.inner.denoise_window(window))


@pytest.fixture
def slow() -> type[SlowDenoiser]:
    return SlowDenoiser


@dataclass
class Received:
    header: Header
    data: np.ndarray | None


@dataclass
class Subscriber:
    """A SUB socket on a service's output that collects decoded messages."""

    ctx: zmq.Context[Any]
    endpoint: str
    sock: zmq.Socket[Any] = field(init=False)
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(self.endpoint)

    def collect(
        self, until: Callable[[Received], bool], timeout: float = 20.0, max_messages: int = 100000
    ) -> list[Received]:
        """Receive until ``until(message)`` is true for a message (returned with the rest), or fail on timeout."""
        deadline = time.monotonic() + timeout
        out: list[Received] = []
        while len(out) < max_messages:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1e3), zmq.POLLIN):
                raise AssertionError(f"subscriber timed out after {len(out)} messages")
            msg = decode(self.sock.recv_multipart(copy=False))
            data = None if msg.data is None else np.array(msg.data)
            rec = Received(msg.header, data)
            out.append(rec)
            self.messages.append(rec)
            if until(rec):
                break
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()  # blocks if a test left a socket open


@pytest.fixture
def push(zctx: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[Any], str]]:
    """A detector's PUSH socket bound on 127.0.0.1 (port 0) and its endpoint; closed after the test."""
    sock = zctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


@pytest.fixture
def subscribe(zctx: zmq.Context[Any]) -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(endpoint: str) -> Subscriber:
        sub = Subscriber(zctx, endpoint)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


def is_end(m: Received) -> bool:
    return m.header.type == "end"


@pytest.fixture
def until_end() -> Callable[[Received], bool]:
    return is_end


def denoised(messages: list[Received]) -> list[Received]:
    return [m for m in messages if m.header.type == "frame" and m.header.kind == "denoised"]


@pytest.fixture
def only_denoised() -> Callable[[list[Received]], list[Received]]:
    return denoised


# --- subprocesses --------------------------------------------------------------------------------------------
@dataclass
class Proc:
    """A running ``emlive`` subprocess whose first stdout line is its JSON ready message."""

    popen: subprocess.Popen[str]
    ready: dict[str, Any]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_emlive(children: ChildProcesses, args: list[str], log_path: Path, timeout: float = 60.0) -> Proc:
    """Start ``emlive ARGS`` as one of ``children`` (stderr to ``log_path``) and wait for its ready line on stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("w", encoding="utf-8") as log:
        cmd = [sys.executable, "-m", "emlive", *args]
        popen = children.start(args[0], cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    assert popen.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            popen.kill()
            popen.wait()
            raise AssertionError(f"emlive {args[0]} not ready in {timeout} s:\n{log_path.read_text()}")
        line = popen.stdout.readline()
    finally:
        sel.close()
    if not line:
        popen.wait()
        raise AssertionError(f"emlive {args[0]} exited with {popen.returncode}:\n{log_path.read_text()}")
    return Proc(popen, json.loads(line), log_path)


@pytest.fixture
def emlive_proc() -> Iterator[Callable[[list[str], Path], Proc]]:
    """Starts ``emlive`` subprocesses, stopped at teardown (SIGTERM, then SIGKILL after 10 s) and if the tests die."""
    with ChildProcesses("test") as children:
        yield lambda args, log_path: start_emlive(children, args, log_path)


@pytest.fixture
def services() -> Iterator[list[DenoiseService]]:
    """Services a test starts; each is stopped (sockets closed, threads joined) at teardown."""
    made: list[DenoiseService] = []
    yield made
    for svc in made:
        svc.stop()
