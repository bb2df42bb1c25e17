"""Fan-out benchmark (``python -m emlive.bench.fanout_bench``): the live service's output rate with one engine in
the service (``--workers 1``, today's path) and with N worker processes (``--workers N``), side by side in one run,
lossless, on the same frames, each engine on ``--threads`` CPU threads.

The fair case is a model whose inference dominates the service's own per-frame work (receive, decode, window,
publish: about a millisecond at 512x512): by default the shipped teacher ``models/synthetic-small.pt`` exported to
ONNX (hundreds of ms per 512x512 frame on one thread), or ``--model random --model-width 64``. With a tiny model
the service's single pipeline thread, not inference, limits the rate and no number of engines helps; that is the
case one engine already keeps up with, so fan-out is for the other one.

Each configuration: a service in this process (PULL input from a PUSH sender thread here, XPUB output read by a
subscriber here), ``--frames`` frames of one acquisition sent as fast as the service takes them (back-pressure),
rate = (published - 1) / (last - first publication) of denoised frames; ``--rounds`` interleaves the
configurations and reports the median. On a loaded machine more processes get a larger share of the contended
cores, which flatters the workers: measure on an otherwise idle machine. The outputs of all configurations are
compared bit for bit. Writes ``fanout.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from emlive.core.logs import setup_logging
from emlive.core.protocol import bind, decode, encode, encode_frame, event_header
from emlive.stream.modes import InputMode
from emlive.stream.service import DenoiseService, ServiceConfig

logger = logging.getLogger("emlive.bench.fanout")
ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "synthetic-small.pt"


def onnx_model(model: str, width: int, out: Path) -> Path:
    """The model as ONNX (exported once into ``out``): a file, the shipped teacher, or ``random`` (``width``)."""
    from emlive.export.onnx_export import export_onnx

    if model.endswith(".onnx"):
        return Path(model)
    if model == "random":
        from emlive.core.modelcard import ModelCard
        from emlive.core.network import BlindSpotNet, NetworkConfig

        target = out / f"random-width{width}.onnx"
        if not target.exists():
            cfg = NetworkConfig(width=width)
            export_onnx(BlindSpotNet(cfg), target, card=ModelCard(name=f"random-width{width} (benchmark)", network=cfg))
        return target
    source = Path(model)
    target = out / f"{source.stem}.onnx"
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        export_onnx(source, target)
    return target


def run_service(model: Path, frames: np.ndarray, workers: int, threads: int) -> dict[str, Any]:
    """One lossless run: rate, hash of the outputs, worker bytes."""
    ctx: zmq.Context[Any] = zmq.Context()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    for sock in (push, sub):
        sock.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 4)
    sub.setsockopt(zmq.RCVHWM, 10000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    endpoint = bind(push, "tcp://127.0.0.1:0")
    config = ServiceConfig(model=model, input=endpoint, output="tcp://127.0.0.1:0", input_mode=InputMode.pull,
                           lossless=True, threads=threads, workers=workers)  # fmt: skip
    svc = DenoiseService(config)
    t_start = time.perf_counter()
    svc.start()
    startup = time.perf_counter() - t_start
    try:
        sub.connect(svc.endpoints["output"])
        if not svc.wait_for_subscribers(1, 10):
            raise RuntimeError("benchmark: the subscriber did not connect")
        sender = threading.Thread(target=_send, args=(push, frames), daemon=True)
        sender.start()
        stamps, digest = _collect(sub, len(frames))
        sender.join()
        counters = svc.status()["counters"]
    finally:
        svc.stop()
        push.close()
        sub.close()
        ctx.term()
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {
        "workers": workers,
        "threads_per_engine": threads,
        "startup_s": round(startup, 2),
        "published": len(stamps),
        "fps": round(rate, 3),
        "ms_per_frame": round(1e3 / rate, 1),
        "frames_sent_to_workers_per_frame": round(counters.get("worker_frames_sent", 0) / len(frames), 2),
        "sha256": digest,
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every round's rate."""
    ordered = sorted(runs, key=lambda r: r["fps"])
    return {**ordered[len(ordered) // 2], "fps_all_rounds": [r["fps"] for r in runs]}


def _send(push: zmq.Socket[Any], frames: np.ndarray) -> None:
    for i, frame in enumerate(frames):
        push.send_multipart(encode_frame(frame, "bench", i), copy=False)
    push.send_multipart(encode(event_header("end", "bench")))


def _collect(sub: zmq.Socket[Any], count: int) -> tuple[list[float], str]:
    stamps: list[float] = []
    digest = hashlib.sha256()
    while True:
        if not sub.poll(600_000):
            raise RuntimeError(f"benchmark: no output for 600 s after {len(stamps)} of {count} frames")
        msg = decode(sub.recv_multipart(copy=False))
        if msg.header.type == "end":
            return stamps, digest.hexdigest()[:16]
        if msg.header.type == "frame" and msg.data is not None:
            stamps.append(time.perf_counter())
            digest.update(np.ascontiguousarray(msg.data).tobytes())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(TEACHER), help="a model file, or 'random' (see --model-width)")
    parser.add_argument("--model-width", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2,4")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per engine")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all worker counts, interleaved (median)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/fanout"))
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("emlive.stream").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    model = onnx_model(args.model, args.model_width, args.out)
    rng = np.random.default_rng(0)
    frames = rng.poisson(20.0, (args.frames, args.size, args.size)).astype(np.uint16)
    counts = [int(n) for n in args.workers.split(",")]
    rounds = [[run_service(model, frames, n, args.threads) for n in counts] for _ in range(args.rounds)]  # interleaved
    runs = [_median([r[k] for r in rounds]) for k in range(len(counts))]
    base = runs[0]["fps"]
    for run in runs:
        run["speedup"] = round(run["fps"] / base, 3)
        run["identical_to_first"] = all(r["sha256"] == rounds[0][0]["sha256"] for rs in rounds for r in rs)
    result = {"model": str(model), "size": args.size, "frames": args.frames, "rounds": args.rounds,
              "load_avg_at_end": list(os.getloadavg()), "runs": runs}  # fmt: skip
    (args.out / "fanout.json").write_text(json.dumps(result, indent=2))
    w = sys.stdout.write
    w(f"{model.name}, {args.size}x{args.size} uint16, {args.frames} frames, lossless, {args.threads} thread(s) each\n")
    w(f"{'workers':>7} {'fps':>8} {'ms/frame':>9} {'speed-up':>9} {'frames sent/frame':>18} identical\n")
    for run in runs:
        w(f"{run['workers']:>7} {run['fps']:>8} {run['ms_per_frame']:>9} {run['speedup']:>9} "
          f"{run['frames_sent_to_workers_per_frame']:>18} {run['identical_to_first']}\n")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
