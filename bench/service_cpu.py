"""CPU time the live service spends per frame (``python -m emlive.bench.service_cpu``).

The frame-rate ratio of :mod:`emlive.bench.stream_bench` moves with whatever else the machine runs (on the shared
2-core development machine its rounds spread 2-3x); the CPU time each service thread spends per frame hardly
does. This runs the service in this process (lossless PULL input, the identity passthrough of
:mod:`emlive.bench.stream_bench`, benchmark only), pushes ``--frames`` frames of ``--size`` px uint16 from a
sender thread, and reports the frame rate and the CPU time per published frame of the pipeline and receiver
threads (``time.thread_time``) and of the whole process (which includes the sender and ZeroMQ's I/O threads).

It imports only the service's public pieces, so it also measures an older tree:
``PYTHONPATH=/tmp/old python bench/service_cpu.py`` with ``/tmp/old/emlive`` a ``git archive`` of that tree.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from emlive.bench.stream_bench import LOCAL, IdentityDenoiser, _messages, _sender
from emlive.core.protocol import encode, event_header
from emlive.stream.modes import InputMode
from emlive.stream.service import DenoiseService, ServiceConfig

logger = logging.getLogger("emlive.bench.service_cpu")
THREADS = ("_pipeline_loop", "_receive_loop")


def _timed(cpu: dict[str, float], name: str, loop: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        start = time.thread_time()
        try:
            loop()
        finally:
            cpu[name] = time.thread_time() - start

    return run


def measure(frames: int, size: int, api: str) -> dict[str, Any]:
    """One run: ``frames`` frames through the service; rates and CPU microseconds per frame."""
    frame, headers = _messages(size, frames, "cpu")
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 8)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    config = ServiceConfig(
        model=None,
        input=f"tcp://127.0.0.1:{port}",
        output=LOCAL,
        input_mode=InputMode.pull,
        lossless=True,
        hwm=8,
        queue_size=8,
        output_hwm=64,
        status_interval_s=3600,
    )
    takes_api = "api" in inspect.signature(IdentityDenoiser).parameters  # older trees: window API only
    svc = DenoiseService(config, denoiser=IdentityDenoiser(api=api) if takes_api else IdentityDenoiser())
    cpu: dict[str, float] = {}
    for name in THREADS:
        setattr(svc, name, _timed(cpu, name, getattr(svc, name)))
    svc.start()
    try:
        process0, wall0 = time.process_time(), time.perf_counter()
        sender = threading.Thread(target=_sender, args=(push, frame, headers, encode(event_header("end", "cpu"))))
        sender.start()
        deadline = wall0 + 300
        while svc.telemetry.get("published") < frames and time.perf_counter() < deadline:
            time.sleep(0.005)
        wall = time.perf_counter() - wall0
        process = time.process_time() - process0
        sender.join()
    finally:
        svc.stop()
        push.close()
        ctx.term()
    published = svc.telemetry.get("published")
    return {
        "api": api if takes_api else "window (this tree has no streaming API)",
        "size": size,
        "frames": frames,
        "published": published,
        "fps": round(published / wall, 1),
        "cpu_us_per_frame": {
            "pipeline": round(cpu["_pipeline_loop"] / frames * 1e6, 1),
            "receiver": round(cpu["_receive_loop"] / frames * 1e6, 1),
            "process": round(process / frames * 1e6, 1),
        },
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m emlive.bench.service_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--api", choices=("stream", "window"), default="stream", help="the passthrough's API")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (each printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results = [measure(args.frames, args.size, args.api) for _ in range(args.runs)]
    for r in results:
        sys.stdout.write(json.dumps(r) + "\n")
    return results


if __name__ == "__main__":
    main()
