"""ONNX Runtime's intra-op spin-waiting on or off, for a live service (``python -m emlive.bench.ort_spin``).

ONNX Runtime's CPU threads spin-wait for the next run after each one. Back to back that is fastest; a live service
runs once per detector frame and would burn the gaps. This times one model's ONNX export (checkpoints are exported
first) in two sessions that differ only in ``session.intra_op.allow_spinning``, in interleaved rounds:

* **paced**: runs at ``--fps`` (sleeping until each frame is due): CPU time of the process per frame and the run's
  own wall time (median);
* **back to back**: ms per run.

:class:`emlive.export.backends.OrtEngine` documents the decision (the service loads with ``spin=False``).
Writes a JSON (``--out``) and prints two lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
SPIN_KEY = "session.intra_op.allow_spinning"


def _session(path: Path, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry(SPIN_KEY, "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _paced(session: Any, feed: dict[str, np.ndarray], frames: int, fps: float) -> tuple[float, float]:
    """(CPU ms per frame, median ms per run) over ``frames`` runs paced at ``fps``."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    runs = []
    for k in range(frames):
        start = time.perf_counter()
        session.run(None, feed)
        runs.append(time.perf_counter() - start)
        time.sleep(max(0.0, t0 + (k + 1) / fps - time.perf_counter()))
    return (_cpu_seconds() - c0) / frames * 1e3, float(np.median(runs)) * 1e3


def _back_to_back(session: Any, feed: dict[str, np.ndarray], frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        session.run(None, feed)
    return (time.perf_counter() - start) / frames * 1e3


def onnx_file(model: Path, folder: Path) -> Path:
    """``model`` itself when it is an .onnx file, else its ONNX export in ``folder``."""
    if model.suffix.lower() == ".onnx":
        return model
    from emlive.export.onnx_export import export_onnx

    return export_onnx(model, folder / f"{model.stem}.onnx").path


def run(model: Path, size: int, threads: int, fps: float, frames: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of both sessions; medians per setting."""
    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_file(model, Path(tmp))
        sessions = {spin: _session(path, threads, spin) for spin in (True, False)}
    n = sessions[True].get_inputs()[0].shape[1]
    feed = {sessions[True].get_inputs()[0].name: np.random.default_rng(0).random((1, n, size, size), np.float32)}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    samples: dict[bool, dict[str, list[float]]] = {s: {"cpu": [], "run": [], "b2b": []} for s in sessions}
    for r in range(rounds):
        for spin, s in sessions.items():
            cpu, wall = _paced(s, feed, frames, fps)
            samples[spin]["cpu"].append(cpu)
            samples[spin]["run"].append(wall)
            samples[spin]["b2b"].append(_back_to_back(s, feed, max(3, frames // 2)))
            log.info("round %d/%d spin=%s: %.1f ms CPU/frame paced", r + 1, rounds, spin, cpu)
    med = {spin: {k: float(np.median(v)) for k, v in d.items()} for spin, d in samples.items()}
    return {"model": str(model), "size": size, "threads": threads, "fps": fps, "frames": frames, "rounds": rounds,
            "spin": med[True], "no_spin": med[False]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shipped = Path(__file__).resolve().parents[1] / "models" / "cpu-live-student.pt"
    parser.add_argument("--model", type=Path, default=shipped, help="checkpoint or .onnx (default: the student)")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--fps", type=float, default=25.0, help="paced rate (a detector's)")
    parser.add_argument("--frames", type=int, default=25, help="runs per paced measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/ort_spin.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args.model, args.size, args.threads, args.fps, args.frames, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name in ("spin", "no_spin"):
        r = result[name]
        log.info(
            "%-7s paced at %g fps: %.1f ms CPU per frame, %.1f ms per run; back to back %.1f ms per run",
            name, args.fps, r["cpu"], r["run"], r["b2b"],
        )  # fmt: skip
    log.info("written to %s", args.out)


if __name__ == "__main__":
    main()
