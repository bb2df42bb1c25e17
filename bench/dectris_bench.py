"""DECTRIS input path vs emlive/1: per-frame overhead at 512x512 uint16, decompression included, in one run.

Two measurements, same frames, same process:

* **decode**: the input decoding alone (emlive/1 ``decode`` of header + raw pixels vs ``DectrisDecoder`` on a
  stream v1 image message with a bitshuffle/LZ4 blob and on a stream v2 CBOR message);
* **service**: frames pushed through a real in-process service (PUSH -> PULL, lossless, a small random-weight
  model, one thread) to a subscriber; per-frame wall time for each input format.

Usage: ``python -m emlive.bench.dectris_bench [--frames 40] [--size 512] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from emlive.core.protocol import decode, encode_frame, event_header
from emlive.stream.dectris import DectrisDecoder
from emlive.stream.modes import InputFormat, InputMode
from emlive.stream.service import DenoiseService, ServiceConfig

logger = logging.getLogger("emlive.bench.dectris")


def _movie(frames: int, size: int) -> np.ndarray:
    from emlive.core.simulate import SimulationConfig, simulate_movie

    noisy, _ = simulate_movie(SimulationConfig(height=size, width=size, frames=frames, dose=5.0, seed=0))
    return np.asarray(noisy, np.uint16)


def _v1_image(frame: np.ndarray, series: int, image: int) -> list[bytes]:
    import bitshuffle

    blob = struct.pack(">QI", frame.nbytes, 8192) + bitshuffle.compress_lz4(frame.ravel(), 0).tobytes()
    h, w = frame.shape
    return [
        json.dumps(
            {"htype": "dimage-1.0", "frame": image, "series": series, "hash": hashlib.md5(blob).hexdigest()}
        ).encode(),
        json.dumps({"htype": "dimage_d-1.0", "shape": [w, h], "type": "uint16", "encoding": "bs16-lz4<"}).encode(),
        blob,
        json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 1, "real_time": 1}).encode(),
    ]


def _v2_image(frame: np.ndarray, series: int, image: int) -> list[bytes]:
    import bitshuffle
    import cbor2

    blob = struct.pack(">QI", frame.nbytes, 8192) + bitshuffle.compress_lz4(frame.ravel(), 0).tobytes()
    arr = cbor2.CBORTag(40, [list(frame.shape), cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, blob]))])
    msg = {"type": "image", "series_id": series, "image_id": image, "data": {"threshold_1": arr}}
    return [b"\xd9\xd9\xf7" + cbor2.dumps(msg)]


def _messages(fmt: str, frames: np.ndarray) -> list[list[bytes]]:
    shape = frames.shape[1:]
    if fmt == "emlive":
        first = [event_header("start", "1", shape=shape, dtype=frames.dtype).to_bytes()]
        body = [[bytes(p) for p in encode_frame(f, "1", i)] for i, f in enumerate(frames)]
        return [first, *body, [event_header("end", "1").to_bytes()]]
    if fmt == "dectris-v1":
        dheader = json.dumps({"htype": "dheader-1.0", "header_detail": "basic", "series": 1}).encode()
        config = json.dumps(
            {"x_pixels_in_detector": shape[1], "y_pixels_in_detector": shape[0], "bit_depth_image": 16}
        ).encode()
        end = json.dumps({"htype": "dseries_end-1.0", "series": 1}).encode()
        return [[dheader, config], *(_v1_image(f, 1, i) for i, f in enumerate(frames)), [end]]
    import cbor2

    start = b"\xd9\xd9\xf7" + cbor2.dumps(
        {"type": "start", "series_id": 1, "image_size_x": shape[1], "image_size_y": shape[0], "image_dtype": "uint16"}
    )
    end = b"\xd9\xd9\xf7" + cbor2.dumps({"type": "end", "series_id": 1})
    return [[start], *(_v2_image(f, 1, i) for i, f in enumerate(frames)), [end]]


def bench_decode(frames: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Median per-frame decode time (µs) of each input format."""
    out: dict[str, float] = {}
    for fmt in ("emlive", "dectris-v1", "dectris-v2"):
        msgs = _messages(fmt, frames)[1:-1]
        times = []
        for _ in range(repeats):
            dec = DectrisDecoder(fmt)
            t0 = time.perf_counter()
            for parts in msgs:
                if fmt == "emlive":
                    decode(parts)
                else:
                    dec.decode(parts)
            times.append((time.perf_counter() - t0) / len(msgs))
        out[fmt] = float(np.median(times) * 1e6)
    return out


def bench_service(frames: np.ndarray, model: Path) -> dict[str, float]:
    """Per-frame wall time (ms) through a real service, PUSH -> service -> SUB, lossless, per input format."""
    from emlive.export.runtime import Denoiser

    denoiser: Any = Denoiser.load(model, "auto", threads=1)  # a DenoiserLike
    out: dict[str, float] = {}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for fmt in ("emlive", "dectris-v1", "dectris-v2", "emlive"):  # emlive twice: warm-up and drift check
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            port = push.bind_to_random_port("tcp://127.0.0.1")
            cfg = ServiceConfig(
                model=None,
                input=f"tcp://127.0.0.1:{port}",
                output="tcp://127.0.0.1:0",
                input_mode=InputMode.pull,
                input_format=InputFormat(fmt),
                lossless=True,
            )
            svc = DenoiseService(cfg, denoiser=denoiser)
            svc.start()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.setsockopt(zmq.RCVHWM, 100000)
            sub.connect(svc.endpoints["output"])
            svc.wait_for_subscribers(1, 10)
            msgs = _messages(fmt, frames)
            sender = threading.Thread(target=lambda m=msgs, s=push: [s.send_multipart(p) for p in m], daemon=True)
            t0 = time.perf_counter()
            sender.start()
            while True:
                if not sub.poll(60000):
                    raise RuntimeError(f"{fmt}: no output within 60 s")
                header = json.loads(sub.recv_multipart()[0])
                if header["type"] == "end":
                    break
            elapsed = time.perf_counter() - t0
            sender.join()
            svc.stop()
            sub.close()
            push.close()
            key = fmt if fmt not in out else f"{fmt} (again)"
            out[key] = elapsed / len(frames) * 1e3
    finally:
        ctx.term()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("emlive.stream").setLevel(logging.WARNING)
    frames = _movie(args.frames, args.size)
    decode_us = bench_decode(frames)
    with tempfile.TemporaryDirectory() as tmp:
        import torch

        from emlive.core.modelcard import ModelCard, save_model
        from emlive.core.network import BlindSpotNet, NetworkConfig

        torch.manual_seed(0)
        net_cfg = NetworkConfig(width=8, scales=3, blocks=1)
        model = save_model(Path(tmp) / "tiny.pt", BlindSpotNet(net_cfg), ModelCard(network=net_cfg))
        service_ms = bench_service(frames, model)
    base = min(service_ms["emlive"], service_ms["emlive (again)"])
    result = {
        "frames": args.frames,
        "size": args.size,
        "decode_us_per_frame": decode_us,
        "service_ms_per_frame": service_ms,
        "extra_vs_emlive_pct": {
            fmt: round((service_ms[fmt] / base - 1.0) * 100.0, 2) for fmt in ("dectris-v1", "dectris-v2")
        },
    }
    logger.info("%s", json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
