"""Per-operator profiles of candidate student networks (and a blind-spot teacher) in ONNX Runtime.

Each candidate is exported to ONNX exactly as ``emlive export`` does it (dynamic batch/height/width), run in
ONNX Runtime (CPU, fp32, ``--threads`` intra-op threads) on one (1, 5, size, size) window, timed (median of
``--repeats`` runs after warm-up) and profiled with ``SessionOptions.enable_profiling``; the profile's node events
are summed per operator type. The table this prints is the one in docs/student.md:

    .venv/bin/python -m emlive.bench.student_profile --threads 2 --size 512

Candidates are ``name=key:value,...`` specs of :class:`~emlive.core.student.StudentConfig` fields
(``--candidate s2w32d5=unshuffle:2,width:32,depth:5``); ``--teacher MODEL.pt`` adds a trained model.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (
    "u2-w32-d4=unshuffle:2,width:32,depth:4",
    "u4-w48-d5=unshuffle:4,width:48,depth:5",
    "u4-w64-d6=unshuffle:4,width:64,depth:6",
)


@dataclass
class Profile:
    name: str
    macs_per_pixel: float
    ms_per_frame: float
    ms_by_op: dict[str, float] = field(default_factory=dict)


def parse_candidate(spec: str) -> tuple[str, dict[str, object]]:
    """``name=key:value,...`` -> (name, StudentConfig fields)."""
    name, _, body = spec.partition("=")
    fields: dict[str, object] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        fields[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return name.strip(), fields


def _session(model_bytes: bytes, threads: int, profile_prefix: str | None) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def profile_model(name: str, model_bytes: bytes, frames: int, macs: float, args: argparse.Namespace) -> Profile:
    """Median ms per frame (a plain session) and per-op-type ms (a profiling session, mean per run)."""
    x = np.random.default_rng(0).standard_normal((1, frames, args.size, args.size)).astype(np.float32)
    plain = _session(model_bytes, args.threads, None)
    for _ in range(2):
        plain.run(None, {"frames": x})  # type: ignore[attr-defined]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain.run(None, {"frames": x})  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory() as tmp:
        prof = _session(model_bytes, args.threads, str(Path(tmp) / name))
        prof.run(None, {"frames": x})  # type: ignore[attr-defined]
        runs = 3
        for _ in range(runs):
            prof.run(None, {"frames": x})  # type: ignore[attr-defined]
        events = json.loads(Path(prof.end_profiling()).read_text())  # type: ignore[attr-defined]
    by_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            by_op[ev["args"]["op_name"]] += ev["dur"] / 1e3 / (runs + 1)
    return Profile(name, macs, statistics.median(times), dict(sorted(by_op.items(), key=lambda kv: -kv[1])))


def _student_bytes(fields: dict[str, object]) -> tuple[bytes, int, float]:
    from emlive.core.modelcard import ModelCard
    from emlive.core.student import StudentConfig, StudentNet
    from emlive.export.onnx_export import onnx_model_proto

    cfg = StudentConfig.model_validate(fields)
    card = ModelCard(network=cfg)
    return onnx_model_proto(StudentNet(cfg), card).SerializeToString(), cfg.frames, cfg.macs_per_pixel()


def _teacher_bytes(path: Path) -> tuple[bytes, int, float]:
    from emlive.core.modelcard import load_checkpoint
    from emlive.core.networks import network_macs_per_pixel
    from emlive.export.onnx_export import onnx_model_proto

    net, card = load_checkpoint(path)
    return onnx_model_proto(net, card).SerializeToString(), card.frames, network_macs_per_pixel(card.network)


def format_table(profiles: list[Profile]) -> str:
    ops = sorted(
        {op for p in profiles for op in p.ms_by_op}, key=lambda op: -max(p.ms_by_op.get(op, 0) for p in profiles)
    )
    head = f"| {'model':<22} | {'kMAC/px':>8} | {'ms/frame':>8} | " + " | ".join(f"{op:>14}" for op in ops) + " |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for p in profiles:
        cells = " | ".join(f"{p.ms_by_op.get(op, 0.0):>14.1f}" for op in ops)
        lines.append(f"| {p.name:<22} | {p.macs_per_pixel / 1e3:>8.1f} | {p.ms_per_frame:>8.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--candidate", action="append", help="name=key:value,... (repeatable)")
    parser.add_argument("--teacher", type=Path, action="append", default=[], help="A trained model to profile too.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    profiles = []
    for spec in args.candidate or DEFAULT_CANDIDATES:
        name, fields = parse_candidate(spec)
        data, frames, macs = _student_bytes(fields)
        profiles.append(profile_model(name, data, frames, macs, args))
    for path in args.teacher:
        data, frames, macs = _teacher_bytes(path)
        profiles.append(profile_model(path.stem, data, frames, macs, args))
    title = f"ONNX Runtime fp32, {args.threads} threads, 1 x 5 x {args.size} x {args.size}; ms per op type (mean/run)"
    sys.stdout.write(f"{title}\n{format_table(profiles)}\n")


if __name__ == "__main__":
    main()
