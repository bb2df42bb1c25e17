"""Cluster efficiency of ``emlive denoise --cluster local:N``: frames/s with 1 worker x 1 thread vs N workers x 1
thread on the same movies, and efficiency = rate_N / (N x rate_1) (issue 15's target: >= 0.85 for N = 2).

The model is a random-weight blind-spot network of width 64 (the default architecture otherwise, as
``emlive bench -m random``), exported to ONNX, so inference dominates and the scheduling overhead (task
round trips, part files, assembly) is measured fairly. Each cluster is started, its workers import the task module
and load the model (once per worker, as in a job) before the clock starts; the time is the job's, from the
first task submitted to the last movie assembled. Writes one JSON (stdout, and ``--out``).

    python -m emlive.bench.cluster_bench --workers 1 2 --movies 4 --frames 16 --size 256 --out bench_out/cluster.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emlive.analysis.batch import ClusterSpec, ModelRef, denoise_batch, open_client, warm_up
from emlive.core.readers import open_movie
from emlive.core.writers import write_movie

logger = logging.getLogger(__name__)


def make_model(folder: Path, width: int) -> Path:
    """A random-weight default network of ``width`` channels, saved and exported to ONNX."""
    import torch

    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig
    from emlive.export.onnx_export import export_onnx

    torch.manual_seed(0)
    cfg = NetworkConfig(width=width)
    ckpt = save_model(folder / f"w{width}.ckpt", BlindSpotNet(cfg).eval(), ModelCard(network=cfg, name=f"w{width}"))
    return export_onnx(ckpt, folder / f"w{width}.onnx").path


def make_movies(folder: Path, movies: int, frames: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(movies):
        write_movie(folder / f"movie{i}.mrc", rng.poisson(20.0, (frames, size, size)).astype(np.uint16), 0.5)
    return folder


def time_workers(
    workers: int, inputs: Path, model: Path, out: Path, backend: str, shard_frames: int, tuned: bool = True
) -> dict[str, Any]:
    """One job on a fresh local:N cluster (1 thread per worker and per engine), warmed up first; ``tuned``: the
    workers get emlive's :data:`~emlive.analysis.batch.WORKER_TUNING` (as ``emlive denoise --cluster`` runs them),
    else Dask's defaults."""
    spec = ClusterSpec.parse(f"local:{workers}")
    ref = ModelRef(str(model.resolve()), backend, None, 1)
    with open_client(spec, tuned=tuned) as client:
        client.run(warm_up, ref)  # imports and the model load, before the clock
        report = denoise_batch([inputs], out, model, client=client, backend=backend, threads=1,
                               shard_frames=shard_frames, progress=False)  # fmt: skip
    return {
        "workers": workers,
        "tuned": tuned,
        "threads_per_worker": 1,
        "frames": report.frames,
        "shards": len(report.ran),
        "seconds": report.seconds,
        "frames_per_second": report.frames_per_second,
        # the shards' own time / (workers x wall time): near 1 when scheduling, part files and assembly cost little
        "worker_busy_fraction": report.busy_seconds / (workers * report.seconds),
        "shards_per_worker": report.workers,
    }


def idle_overhead(workers: int, seconds: float, tuned: bool) -> dict[str, Any]:
    """CPU time per second that an idle local:N cluster (client, scheduler, nannies, workers) takes from the
    machine: what the shards lose to Dask's own housekeeping when every core is a worker."""
    import psutil

    with open_client(ClusterSpec.parse(f"local:{workers}"), tuned=tuned):
        time.sleep(2.0)  # past the start-up
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(seconds)
        after = [sum(p.cpu_times()[:2]) for p in procs]
    return {"workers": workers, "tuned": tuned, "processes": len(procs),
            "cpu_seconds_per_second": (sum(after) - sum(before)) / seconds}  # fmt: skip


def _independent(movies: list[str], model: str, out: str, backend: str, barrier: Any, conn: Any) -> None:
    """Child process of :func:`time_independent`: load the model, wait for the others, denoise its movies."""
    from emlive.analysis.denoise import denoise_path, load_denoiser

    denoiser = load_denoiser(model, backend, threads=1)
    barrier.wait()
    began = time.time()
    for movie in movies:
        denoise_path(movie, Path(out) / Path(movie).name, denoiser, progress=False)
    conn.send((began, time.time()))


def time_independent(processes: int, inputs: Path, model: Path, out: Path, backend: str) -> dict[str, Any]:
    """The machine's own ceiling: ``processes`` plain single-process ``denoise`` runs side by side, no Dask, each
    on its share of the movies (1 thread each). Efficiency against this shows what Dask itself costs."""
    ctx = multiprocessing.get_context("spawn")
    movies = sorted(str(m) for m in inputs.iterdir())
    barrier = ctx.Barrier(processes)
    pipes, children = [], []
    for i in range(processes):
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_independent, args=(movies[i::processes], str(model), str(out), backend, barrier,
                                                       send))  # fmt: skip
        child.start()
        pipes.append(recv)
        children.append(child)
    times = [pipe.recv() for pipe in pipes]
    for child in children:
        child.join(60)
    seconds = max(end for _, end in times) - min(start for start, _ in times)
    frames = 0
    for m in movies:
        with open_movie(Path(m)) as movie:
            frames += movie.shape[0]
    return {"processes": processes, "frames": frames, "seconds": seconds, "frames_per_second": frames / seconds}


def _curve(rows: list[dict[str, Any]], workers: list[int]) -> list[dict[str, Any]]:
    """Best rate per worker count, speed-up and efficiency = rate_N / (N x rate_min / min)."""
    best = {n: max(r["frames_per_second"] for r in rows if r["workers"] == n) for n in workers}
    base = best[min(workers)] / min(workers)
    return [{"workers": n, "frames_per_second": best[n], "speedup": best[n] / best[min(workers)],
             "efficiency": best[n] / (n * base)} for n in workers]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()  # other work on the machine makes the ratios unreliable: recorded with them
    with tempfile.TemporaryDirectory(prefix="emlive-cluster-bench-") as tmp:
        root = Path(tmp)
        model = make_model(root, args.width)
        inputs = make_movies(root / "in", args.movies, args.frames, args.size)
        variants = [True, False] if args.compare_untuned else [True]
        rows = [
            time_workers(n, inputs, model, root / f"out{n}-{rep}-{tuned}", args.backend, args.shard_frames, tuned)
            for rep in range(args.repeats)
            for tuned in variants
            for n in args.workers
        ]
        plain = [
            time_independent(n, inputs, model, root / f"plain{n}-{rep}", args.backend)
            for rep in range(args.repeats)
            for n in args.workers
        ]
    curve = _curve([r for r in rows if r["tuned"]], args.workers)
    overhead = None
    if args.overhead > 0:
        overhead = [idle_overhead(max(args.workers), args.overhead, tuned) for tuned in (True, False)]
    best_plain = {n: max(r["frames_per_second"] for r in plain if r["processes"] == n) for n in args.workers}
    ceiling = [{"processes": n, "frames_per_second": best_plain[n],
                "efficiency": best_plain[n] / (n * best_plain[min(args.workers)] / min(args.workers))}
               for n in args.workers]  # fmt: skip
    return {
        "benchmark": "cluster_bench",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": load,
        },
        "model": f"random-weight blind-spot network, width {args.width}, ONNX, backend {args.backend}",
        "movies": {"count": args.movies, "frames": args.frames, "size": args.size, "shard_frames": args.shard_frames},
        "runs": rows,
        "curve": curve,
        # Dask's default worker settings, measured in the same run (--compare-untuned)
        "curve_untuned": _curve([r for r in rows if not r["tuned"]], args.workers) if args.compare_untuned else None,
        "idle_overhead": overhead,
        # the same movies as plain single-process runs side by side (no Dask): what the machine itself allows
        "independent_processes": plain,
        "ceiling": ceiling,
        "target": "efficiency of 2 workers >= 0.85",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Worker counts (1 thread each).")
    parser.add_argument("--movies", type=int, default=4, help="Number of movies.")
    parser.add_argument("--frames", type=int, default=16, help="Frames per movie.")
    parser.add_argument("--size", type=int, default=256, help="Frame height and width (px).")
    parser.add_argument("--shard-frames", type=int, default=8, help="Frames per shard (K..2K-1).")
    parser.add_argument("--width", type=int, default=64, help="Network width (channels).")
    parser.add_argument("--backend", default="onnx_cpu", help="Inference backend of every worker.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per worker count (the best is kept).")
    parser.add_argument("--compare-untuned", action="store_true",
                        help="Also run every job with Dask's default worker settings (interleaved).")
    parser.add_argument("--overhead", type=float, default=0.0, metavar="SECONDS",
                        help="Also measure an idle cluster's CPU use over SECONDS, tuned and untuned.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201 - the benchmark's output


if __name__ == "__main__":
    main()
