"""Benchmarks of the live service (``python -m emlive.bench.stream_bench``).

1. **Overhead**: the service's own path (receive -> decode -> window -> publish) with an *identity* model (a
   Denoiser-compatible passthrough that returns the center frame; benchmark only, clearly labelled in the
   output) against bare pyzmq PUSH -> PULL throughput, measured in the same run, at 512x512 and 4096x4096 uint16.
   Both are fed the same way: a sender thread pushes pre-encoded emlive/1 messages as fast as the socket takes
   them. The service runs lossless (PULL input, every frame published); its rate is published frames per second.
   The bare PULL only receives; a second baseline, the bare *relay*, also publishes each received message on an
   XPUB, as the service does (the same sockets; no decoding, no window): ``ratio_to_relay``. ``--no-model``
   runs the overhead part only.
2. **Real model on CPU** (a random-weight network of the real architecture; ``--model`` for a trained one): the
   model's own rate (``denoise_window`` in a loop), then the service in live mode fed at twice that rate by the
   detector simulator: output rate, latency percentiles (window complete -> published, and center frame received
   -> published), skipped frames, and the process's resident memory sampled over the run (start, end, max and
   the slope of a linear fit over the second half: ~0 MB/min means not growing).

Writes ``stream.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import zmq

from emlive.core.logs import setup_logging
from emlive.core.processes import die_with_parent
from emlive.core.protocol import encode, encode_frame, event_header
from emlive.core.readers import ArrayMovie
from emlive.stream.detector import DetectorConfig, DetectorSimulator
from emlive.stream.modes import InputMode
from emlive.stream.service import DenoiseService, ServiceConfig, control_request

logger = logging.getLogger("emlive.bench.stream")
LOCAL = "tcp://127.0.0.1:0"
# how often the benchmark asks the service whether it has published every frame: each status request costs the
# service a snapshot of all its telemetry (at 20 Hz, about 8% of its CPU per frame at 512 x 512): the rates come from
# the service's own first and last publish times, which a late answer does not change
STATUS_POLL_S = 0.25


OUTPUTS = ("input", "float32")
"""What the passthrough returns: the received frame itself (the service can then send the received bytes on, as
with ``publish_raw``), or a float32 frame of its own, as a real model's output (1 MB at 512 x 512, 2x the input)."""


class IdentityStream:
    """BENCHMARK ONLY. The streaming API of :class:`IdentityDenoiser`: keeps a reference to the last frame of each
    index mod N (no copy, no normalisation) and returns the center frame as received."""

    def __init__(self, frames: int, output: str = "input") -> None:
        self._n = frames
        self._held: list[tuple[int, np.ndarray] | None] = [None] * frames
        self._float32 = output == "float32"
        self._out: np.ndarray | None = None

    def holds(self, index: int) -> bool:
        held = self._held[index % self._n]
        return held is not None and held[0] == index

    def reset(self) -> None:
        self._held = [None] * self._n

    def push(self, frame: np.ndarray, index: int | None = None) -> int:
        idx = 0 if index is None else index
        self._held[idx % self._n] = (idx, frame)
        return idx

    def denoise(self, indices: Sequence[int | None]) -> np.ndarray:
        held = self._held[int(indices[self._n // 2] or 0) % self._n]
        assert held is not None
        if not self._float32:
            return held[1]
        if self._out is None or self._out.shape != held[1].shape:  # a new float32 buffer, as a model's output
            self._out = np.zeros(held[1].shape, np.float32)
        return self._out


class IdentityDenoiser:
    """BENCHMARK ONLY - not a model. A Denoiser-compatible passthrough: returns the window's center frame (in its
    own dtype, so no model work at all), so a run measures the service's own cost (receive, decode, window,
    publish). ``api="stream"`` (default) offers the runtime's streaming API, as :class:`Denoiser` does: the
    service pushes each frame once and publishes the center as received. ``api="window"`` offers only
    ``denoise_window``: the service stacks each window into its :class:`~emlive.stream.window.WindowBuffer` (one
    or two frame copies) and copies the returned center out of it (the service's path before the streaming API,
    for comparison)."""

    backend = "identity (benchmark only)"
    device = "cpu"

    def __init__(self, frames: int = 5, api: str = "stream", output: str = "input") -> None:
        self.frames = frames
        self.card = SimpleNamespace(name="identity-passthrough (benchmark only)", network=None)
        if output not in OUTPUTS:
            raise ValueError(f"identity output {output!r}: use one of {', '.join(OUTPUTS)}")
        if api == "stream":
            self.stream = lambda shape, dtype: IdentityStream(frames, output)
        elif api != "window":
            raise ValueError(f"identity api {api!r}: use stream or window")

    def denoise_window(self, window: np.ndarray) -> np.ndarray:
        return window[self.frames // 2]


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return 0.0
    return 0.0


def _messages(size: int, count: int, acquisition: str) -> tuple[np.ndarray, list[bytes]]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    headers = [encode_frame(frame, acquisition, i)[0] for i in range(count)]
    return frame, headers


def _sender(sock: zmq.Socket[Any], frame: np.ndarray, headers: list[bytes], tail: list[bytes] | None) -> None:
    for h in headers:
        sock.send_multipart([h, frame.data], copy=False)
    if tail is not None:
        sock.send_multipart(tail)


def bare_throughput(size: int, count: int, hwm: int = 8, relay: bool = False) -> dict[str, Any]:
    """Frames/s of bare pyzmq PUSH -> PULL (zero-copy, emlive/1 header + frame) for ``count`` frames; ``relay``:
    each received message is also published on an XPUB (the received frames themselves: no copy), as a service
    that does nothing else would."""
    frame, headers = _messages(size, count, "bare")
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    out = ctx.socket(zmq.XPUB)
    for s in (pull, push, out):
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        s.setsockopt(zmq.LINGER, 0)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        out.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        sender = threading.Thread(target=_sender, args=(push, frame, headers, None), daemon=True)
        sender.start()
        first = pull.recv_multipart(copy=False)
        t0 = time.perf_counter()
        n = 1
        while n < count:
            parts = pull.recv_multipart(copy=False)
            np.frombuffer(parts[1].buffer, dtype=np.uint16)
            if relay:
                out.send_multipart(parts, copy=False)
            n += 1
        elapsed = time.perf_counter() - t0
        sender.join()
        del first
    finally:
        push.close()
        pull.close()
        out.close()
        ctx.term()
    fps = (count - 1) / elapsed
    return {"frames": count, "fps": round(fps, 2), "MB_per_s": round(fps * frame.nbytes / 2**20, 1)}


def _identity_service(
    endpoint: str, hwm: int, conn: Any, parent: int, api: str = "stream", output: str = "input"
) -> None:
    """Child process: the service with the identity model, lossless PULL from ``endpoint``; stopped by control,
    and by SIGTERM if the benchmark (``parent``) dies, however it dies."""
    die_with_parent(parent)
    setup_logging(False)
    logging.getLogger("emlive").setLevel(logging.ERROR)  # back-pressure warnings are expected here
    config = ServiceConfig(
        model=None,
        input=endpoint,
        output=LOCAL,
        control=LOCAL,
        input_mode=InputMode.pull,
        lossless=True,
        hwm=hwm,
        queue_size=hwm,
        output_hwm=64,
        status_interval_s=3600,
    )
    svc = DenoiseService(config, denoiser=IdentityDenoiser(api=api, output=output))
    svc.start()
    conn.send({"endpoints": svc.endpoints, "threads": {t.native_id: t.name for t in threading.enumerate()}})
    conn.close()
    svc.run()


_CLOCK_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid`` so far (Linux /proc; {} elsewhere)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICK  # utime, stime (fields 14, 15)
    return out


def cpu_per_frame(
    before: dict[int, float], after: dict[int, float], names: dict[int, str], frames: int
) -> dict[str, float]:
    """CPU microseconds per frame of each named thread between two :func:`thread_cpu` readings, the unnamed ones
    (ZeroMQ's I/O threads) together, and the total: a measure of the service's own work that the machine's load
    disturbs far less than a frame rate does."""
    per: dict[str, float] = {}
    for tid, seconds in after.items():
        name = names.get(tid, "zmq I/O and other")
        per[name] = per.get(name, 0.0) + seconds - before.get(tid, 0.0)
    scale = 1e6 / max(frames, 1)
    out = {name: round(s * scale, 1) for name, s in sorted(per.items())}
    out["total"] = round(sum(per.values()) * scale, 1)
    return out


def service_throughput(
    size: int, count: int, subscriber: bool, hwm: int = 8, api: str = "stream", output: str = "input"
) -> dict[str, Any]:
    """Frames/s through the service (identity model, lossless PULL input, its own process) for ``count`` frames.

    Without ``subscriber`` the rate is the service's own publishing rate (first to last frame published); with
    it, the rate at which a subscriber (in this process) receives the denoised frames.
    """
    frame, headers = _messages(size, count, "svc")
    mp = multiprocessing.get_context("spawn")
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.setsockopt(zmq.LINGER, 0)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 64)
    sub.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    parent, child = mp.Pipe()
    proc = mp.Process(
        target=_identity_service, args=(f"tcp://127.0.0.1:{port}", hwm, child, os.getpid(), api, output), daemon=True
    )
    proc.start()
    received = 0
    elapsed = float("nan")
    try:
        if not parent.poll(60):
            raise RuntimeError("benchmark: the service process did not start")
        hello = parent.recv()
        endpoints, names = hello["endpoints"], hello["threads"]
        control = endpoints["control"]
        if subscriber:
            sub.connect(endpoints["output"])
            while control_request(control, {"cmd": "status"})["status"]["subscriptions"] < 1:
                time.sleep(0.01)
        tail = encode(event_header("end", "svc"))
        sender = threading.Thread(target=_sender, args=(push, frame, headers, tail), daemon=True)
        pid = proc.pid or 0  # (started: has a pid)
        cpu_start = thread_cpu(pid)
        sender.start()
        if subscriber:
            t_first = None
            while True:
                if not sub.poll(60000):
                    raise RuntimeError("benchmark: the service stopped publishing")
                parts = sub.recv_multipart(copy=False)
                kind = json.loads(parts[0].bytes)["type"]
                if kind == "end":
                    break
                if kind == "frame":
                    if t_first is None:
                        t_first = time.perf_counter()
                    received += 1
            elapsed = time.perf_counter() - (t_first or time.perf_counter())
        while True:
            snap = control_request(control, {"cmd": "status"})["status"]
            if snap["counters"].get("published", 0) >= count:
                break
            time.sleep(STATUS_POLL_S)
        cpu = cpu_per_frame(cpu_start, thread_cpu(pid), names, count)
        sender.join()
        control_request(control, {"cmd": "stop"})
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        push.close()
        sub.close()
        ctx.term()
    if subscriber:
        fps = (received - 1) / elapsed if elapsed > 0 else float("nan")
    else:
        fps = snap["stages"]["publish"]["overall_rate_hz"] or float("nan")
    stages = {k: snap["stages"][k]["mean_ms"] for k in ("receive", "decode", "window", "infer", "publish")}
    return {
        "frames": count,
        "subscriber": subscriber,
        "received_by_subscriber": received if subscriber else None,
        "published": snap["counters"].get("published", 0),
        "fps": round(fps, 2),
        "MB_per_s_in": round(fps * frame.nbytes / 2**20, 1),
        "stage_mean_ms": stages,
        "cpu_us_per_frame": cpu,
        "latency_processing": snap["latency"]["processing"],
    }


def _real_denoiser(model: Path | None, width: int, threads: int, tmp: Path) -> Any:
    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig
    from emlive.stream.service import load_denoiser

    if model is None:
        cfg = NetworkConfig(width=width)
        model = save_model(
            tmp / f"bench-random-width{width}.pt",
            BlindSpotNet(cfg),
            ModelCard(name=f"random-width{width} (benchmark)", network=cfg),
        )
    return load_denoiser(model, "auto", threads=threads)


def real_model_runs(
    model: Path | None, width: int, size: int, seconds: float, threads: int, tmp: Path
) -> dict[str, Any]:
    """Model rate alone, then the live service at 2x overload: output rate, p99 latency, memory over time."""
    den = _real_denoiser(model, width, threads, tmp)
    rng = np.random.default_rng(1)
    pool = max(16, min(256, (64 << 20) // (size * size * 2)))  # long passes: few acquisition boundaries
    frames = rng.poisson(20.0, (pool, size, size)).astype(np.uint16)
    window = frames[: den.frames]
    den.denoise_window(window)  # warm-up
    times: list[float] = []
    t_end = time.perf_counter() + max(2.0, seconds / 4)
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        den.denoise_window(window)
        times.append(time.perf_counter() - t0)
    model_fps = 1.0 / float(np.median(times))
    feed_fps = 2.0 * model_fps
    det = DetectorSimulator(
        DetectorConfig(output=LOCAL, fps=feed_fps, loop=True, acquisition="overload", wait_subscribers=1),
        ArrayMovie(frames),
    )
    det.open()
    svc = DenoiseService(
        ServiceConfig(model=None, input=str(det.endpoint), output=LOCAL, status_interval_s=3600), denoiser=den
    )
    svc.start()
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    memory: list[tuple[float, float]] = []
    received = 0
    try:
        sub.connect(svc.endpoints["output"])
        svc.wait_for_subscribers(1, 10)
        det.start()
        gc.collect()
        t0 = time.perf_counter()
        next_sample = t0
        while (now := time.perf_counter()) < t0 + seconds:
            if now >= next_sample:
                memory.append((now - t0, rss_mb()))
                next_sample += 0.25
            if sub.poll(50):
                parts = sub.recv_multipart(copy=False)
                if json.loads(parts[0].bytes).get("type") == "frame":
                    received += 1
        elapsed = time.perf_counter() - t0
        snap = svc.status()
    finally:
        det.stop()
        svc.stop()
        sub.close()
        ctx.term()
    t = np.array([m[0] for m in memory])
    r = np.array([m[1] for m in memory])
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half], r[half], 1)[0] * 60.0) if half.sum() >= 3 else float("nan")
    c = snap["counters"]
    return {
        "model": snap["model"],
        "frame_size": size,
        "model_fps": round(model_fps, 2),
        "model_ms_p50": round(float(np.median(times)) * 1e3, 2),
        "feed_fps": round(feed_fps, 2),
        "seconds": round(elapsed, 2),
        "output_fps": round(c.get("published", 0) / elapsed, 2),
        "output_vs_model": round(c.get("published", 0) / elapsed / model_fps, 3),
        "received_by_subscriber": received,
        "skipped": c.get("skipped", 0),
        "dropped": c.get("dropped", 0),
        "latency_processing": snap["latency"]["processing"],
        "latency_age": snap["latency"]["age"],
        "rss_mb": {
            "start": round(float(r[0]), 1),
            "end": round(float(r[-1]), 1),
            "max": round(float(r.max()), 1),
            "slope_mb_per_min_second_half": round(slope, 2),
        },
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate listed beside it."""
    ordered = sorted(runs, key=lambda r: r["fps"])
    out = dict(ordered[len(ordered) // 2])
    out["fps_all_runs"] = [r["fps"] for r in runs]
    return out


def overhead(size: int, seconds: float, rounds: int, api: str = "stream") -> dict[str, Any]:
    """Bare pyzmq vs the service (identity model), interleaved ``rounds`` times; medians compared."""
    mb = size * size * 2 / 2**20
    probe = bare_throughput(size, max(8, min(400, int(200 / mb))))
    count = int(max(30, min(20000, probe["fps"] * seconds)))
    bare, relay, alone, with_sub, f32 = [], [], [], [], []
    for r in range(rounds):
        logger.info("%dx%d round %d/%d: %d frames each", size, size, r + 1, rounds, count)
        bare.append(bare_throughput(size, count))
        relay.append(bare_throughput(size, count, relay=True))
        alone.append(service_throughput(size, count, subscriber=False, api=api))
        with_sub.append(service_throughput(size, count, subscriber=True, api=api))
        f32.append(service_throughput(size, count, subscriber=False, api=api, output="float32"))
    b, br, s0, s1 = _median_run(bare), _median_run(relay), _median_run(alone), _median_run(with_sub)
    sf = _median_run(f32)
    return {
        "size": size,
        "identity_api": api,
        "frames": count,
        "rounds": rounds,
        "bare_pyzmq": b,
        "bare_pyzmq_relay": br,
        "service_identity": s0,
        "service_identity_to_subscriber": s1,
        "service_identity_float32_output": sf,
        "ratio": round(s0["fps"] / b["fps"], 3) if b["fps"] else None,
        "ratio_float32_output": round(sf["fps"] / b["fps"], 3) if b["fps"] else None,
        "ratio_to_subscriber": round(s1["fps"] / b["fps"], 3) if b["fps"] else None,
        "ratio_to_relay": round(s0["fps"] / br["fps"], 3) if br["fps"] else None,
        "ratios_per_round": [round(s["fps"] / x["fps"], 3) for s, x in zip(alone, bare, strict=True) if x["fps"]],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m emlive.bench.stream_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/stream"))
    parser.add_argument("--sizes", default="512,4096", help="frame sizes of the overhead comparison")
    parser.add_argument("--seconds", type=float, default=3.0, help="approximate duration of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (medians are reported)")
    parser.add_argument("--model", type=Path, default=None, help="a trained model (default: random weights)")
    parser.add_argument("--model-width", type=int, default=16, help="width of the random-weight network")
    parser.add_argument("--model-size", type=int, default=256, help="frame size of the real-model runs")
    parser.add_argument("--model-seconds", type=float, default=20.0, help="duration of the 2x overload run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the real model")
    parser.add_argument("--quick", action="store_true", help="short runs, one round (a smoke test; noisy numbers)")
    parser.add_argument("--no-model", action="store_true", help="the overhead comparison only (no real-model runs)")
    parser.add_argument(
        "--identity-api",
        choices=("stream", "window"),
        default="stream",
        help="the passthrough's API: stream (the runtime's streaming API) or window (denoise_window only)",
    )
    args = parser.parse_args(argv)
    setup_logging(False)
    logging.getLogger("emlive.stream").setLevel(logging.ERROR)  # back-pressure warnings are expected here
    args.out.mkdir(parents=True, exist_ok=True)
    seconds, rounds, model_seconds = (1.0, 1, 4.0) if args.quick else (args.seconds, args.rounds, args.model_seconds)
    results: dict[str, Any] = {
        "note": "identity model = a passthrough used only by this benchmark, to measure the service's own cost",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg())},
        "overhead": [],
    }
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        row = overhead(size, seconds, rounds, args.identity_api)
        results["overhead"].append(row)
        logger.info(
            "%dx%d: bare %.1f fps, service %.1f fps (%.0f%%), to a subscriber %.1f fps (%.0f%%)",
            size,
            size,
            row["bare_pyzmq"]["fps"],
            row["service_identity"]["fps"],
            100 * (row["ratio"] or 0),
            row["service_identity_to_subscriber"]["fps"],
            100 * (row["ratio_to_subscriber"] or 0),
        )
    if not args.no_model:
        results["real_model"] = real_model_runs(
            args.model, args.model_width, args.model_size, model_seconds, args.threads, args.out
        )
    results["machine"]["load_avg_at_end"] = list(os.getloadavg())
    (args.out / "stream.json").write_text(json.dumps(results, indent=2))
    _table(results)
    return results


def _table(results: dict[str, Any]) -> None:
    w = sys.stdout.write
    w("\nservice overhead: identity model (passthrough, benchmark only) vs bare pyzmq PUSH->PULL, medians\n")
    w(
        f"{'frame':>10} {'bare fps':>10} {'bare MB/s':>10} {'service fps':>12} {'ratio':>6} "
        f"{'->sub fps':>10} {'ratio':>6} {'relay fps':>10} {'ratio':>6} {'f32 out fps':>11} {'ratio':>6}"
        "  stage means ms (decode/window/publish)\n"
    )
    for row in results["overhead"]:
        b, s, s1 = row["bare_pyzmq"], row["service_identity"], row["service_identity_to_subscriber"]
        st = s["stage_mean_ms"]
        w(
            f"{row['size']:>5}x{row['size']:<4} {b['fps']:>10.1f} {b['MB_per_s']:>10.0f} {s['fps']:>12.1f} "
            f"{row['ratio']:>6.2f} {s1['fps']:>10.1f} {row['ratio_to_subscriber']:>6.2f} "
            f"{row['bare_pyzmq_relay']['fps']:>10.1f} {row['ratio_to_relay']:>6.2f} "
            f"{row['service_identity_float32_output']['fps']:>11.1f} {row['ratio_float32_output']:>6.2f}  "
            f"{st['decode']}/{st['window']}/{st['publish']}\n"
        )
    w(
        "  (ratio: service / bare PULL; relay: a bare PULL that also publishes each message on an XPUB; f32 out: the\n"
        "   passthrough returns a float32 frame of its own, as a real model does, instead of the received one)\n"
    )
    if "real_model" not in results:
        return
    r = results["real_model"]
    lat, age, mem = r["latency_processing"], r["latency_age"], r["rss_mb"]
    w(
        f"\nreal model on CPU: {r['model']['name']} ({r['model']['backend']}, {r['model']['device']}), "
        f"{r['frame_size']}x{r['frame_size']} uint16\n"
    )
    w(f"  model alone        {r['model_fps']:.2f} fps ({r['model_ms_p50']:.1f} ms/frame)\n")
    w(f"  fed at 2x          {r['feed_fps']:.2f} fps for {r['seconds']:.1f} s (live mode)\n")
    w(
        f"  service output     {r['output_fps']:.2f} fps = {r['output_vs_model']:.2f} x model rate; "
        f"skipped {r['skipped']}, dropped {r['dropped']}\n"
    )
    w(f"  latency (window complete -> published) p50/p95/p99 {lat['p50_ms']}/{lat['p95_ms']}/{lat['p99_ms']} ms\n")
    w(f"  age (center received -> published)     p50/p95/p99 {age['p50_ms']}/{age['p95_ms']}/{age['p99_ms']} ms\n")
    w(
        f"  RSS start/end/max {mem['start']}/{mem['end']}/{mem['max']} MiB, "
        f"slope {mem['slope_mb_per_min_second_half']} MiB/min (second half of the run)\n"
    )


if __name__ == "__main__":
    main()
