"""The fuzz run at scale (``python -m emlive.bench.fuzz_bench --count 10000``).

Starts a real :class:`~emlive.stream.service.DenoiseService` in this process (lossless, PULL input, a control
socket, a random-weight tiny model on the real inference runtime), sends ``--count`` input messages from the
seeded generator :mod:`emlive.stream.fuzz` (a third valid frames of changing shapes, the rest hostile), a control
request every ``--control-every`` of them, ends the acquisition, and waits for every valid frame to come out.
Prints the messages sent per kind, the service's counts (rejected per reason, control errors per kind, frames
denoised) and the process's resident memory before and after; exits 1 when a count does not match what was
sent or the service stopped. Writes ``fuzz.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from emlive.core.logs import setup_logging
from emlive.core.protocol import bind, decode, encode, event_header
from emlive.stream.budget import format_bytes, parse_bytes
from emlive.stream.fuzz import ACQUISITION, Fuzzer, ask_control, rss_bytes
from emlive.stream.modes import InputMode
from emlive.stream.service import DenoiseService, ServiceConfig, load_denoiser

logger = logging.getLogger("emlive.bench.fuzz")


def _tiny_model(folder: Path) -> Path:
    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig

    cfg = NetworkConfig(width=8, scales=3, blocks=1, frames=5)
    return save_model(folder / "fuzz-tiny.pt", BlindSpotNet(cfg), ModelCard(name="tiny (fuzz benchmark)", network=cfg))


def _collect(sub: zmq.Socket[Any], timeout_s: float) -> int:
    """Denoised frames of the fuzzed acquisition until its end message (RuntimeError on timeout)."""
    deadline, frames = time.monotonic() + timeout_s, 0
    while True:
        if not sub.poll(int(max(0.0, deadline - time.monotonic()) * 1e3), zmq.POLLIN):
            raise RuntimeError(f"the fuzzed acquisition did not end within {timeout_s} s ({frames} frames)")
        header = decode(sub.recv_multipart(copy=False)).header
        if header.acquisition != ACQUISITION:
            continue
        if header.type == "end":
            return frames
        frames += header.type == "frame" and header.kind == "denoised"


def run(count: int, control_every: int, seed: int, budget: int, model: Path) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    push, req, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.REQ), ctx.socket(zmq.SUB)
    for sock in (push, req, sub):
        sock.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    local = "tcp://127.0.0.1:0"
    config = ServiceConfig(
        model=None,
        input=bind(push, local),
        input_mode=InputMode.pull,
        lossless=True,
        output=local,
        control=local,
        memory_budget=budget,
        status_interval_s=5.0,
    )
    svc = DenoiseService(config, denoiser=load_denoiser(model, "auto", threads=1))
    try:
        svc.start()
        sub.connect(svc.endpoints["output"])
        req.connect(svc.endpoints["control"])
        svc.wait_for_subscribers(1, 10)
        fuzzer = Fuzzer(seed, memory_budget=budget)
        # the output is read while sending (from here on only that thread uses ``sub``): unread output messages
        # would pile up in this process and be measured as the service's memory
        collected: list[int] = []
        collector = threading.Thread(target=lambda: collected.append(_collect(sub, timeout_s=900)), daemon=True)
        collector.start()
        sent: Counter[str] = Counter()
        expected: Counter[str] = Counter()
        control_sent: Counter[str] = Counter()
        control_wrong = 0
        rss_before = rss_bytes()
        start = time.perf_counter()
        for i, case in enumerate(fuzzer.input_cases(count)):
            push.send_multipart(case.parts)
            sent[case.kind] += 1
            if case.reason is not None:
                expected[case.reason] += 1
            if control_every and i % control_every == 0:
                ctl = fuzzer.control(fuzzer.pick(("status", "bad_json", "too_deep", "multipart", "unknown_cmd")))
                reply = ask_control(req, ctl)
                control_sent[ctl.kind] += 1
                control_wrong += reply["ok"] is not ctl.ok or reply.get("kind") != ctl.error_kind
        push.send_multipart(encode(event_header("end", ACQUISITION)))
        collector.join(900)
        if not collected:
            raise RuntimeError("the fuzzed acquisition's end never came out of the service")
        denoised = collected[0]
        elapsed = time.perf_counter() - start
        rss_after = rss_bytes()
        snap = svc.status()
        stopped_early = svc.stopping  # before stop(): did a message stop it?
    finally:
        svc.stop()
        for sock in (push, req, sub):
            sock.close()
        ctx.term()
    return {
        "count": count,
        "seed": seed,
        "seconds": round(elapsed, 2),
        "sent": dict(sent),
        "rejected": snap["rejected"],
        "rejected_as_expected": snap["rejected"] == dict(expected),
        "warmups_refused": snap["counters"].get("warmups_refused", 0),
        "denoised": denoised,
        "valid_sent": sent["valid"],
        "control_sent": dict(control_sent),
        "control_errors": snap["control_errors"],
        "control_replies_wrong": control_wrong,
        "stopped": stopped_early,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "memory_budget_bytes": budget,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emlive.bench.fuzz_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="input messages to send")
    parser.add_argument("--control-every", type=int, default=20, help="a control request every N input messages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget", default="256MiB", help="the service's --memory-budget")
    parser.add_argument("--model", type=Path, default=None, help="a model file (default: a random tiny network)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/fuzz"))
    args = parser.parse_args(argv)
    setup_logging(False)
    logging.getLogger("emlive.stream").setLevel(logging.ERROR)  # the fuzz's refusals are expected here
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _tiny_model(Path(tmp))
        result = run(args.count, args.control_every, args.seed, parse_bytes(args.memory_budget), model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(result, indent=2))
    w = sys.stdout.write
    w(f"fuzz: {result['count']} input messages (seed {result['seed']}) in {result['seconds']} s\n")
    for kind, n in sorted(result["sent"].items()):
        w(f"  sent {kind:<16} {n:>6}\n")
    for reason, n in sorted(result["rejected"].items()):
        w(f"  rejected {reason:<16} {n:>6}\n")
    w(f"  rejected as expected: {result['rejected_as_expected']}; warm-ups refused {result['warmups_refused']}\n")
    w(f"  valid frames sent {result['valid_sent']}, denoised {result['denoised']}\n")
    w(f"  control sent {result['control_sent']}\n  control errors {result['control_errors']} "
      f"(replies not as expected: {result['control_replies_wrong']})\n")  # fmt: skip
    w(f"  RSS before {format_bytes(result['rss_before_bytes'])}, after {format_bytes(result['rss_after_bytes'])} "
      f"(budget {format_bytes(result['memory_budget_bytes'])})\n")  # fmt: skip
    ok = (
        result["rejected_as_expected"]
        and result["denoised"] == result["valid_sent"]
        and result["control_replies_wrong"] == 0
        and not result["stopped"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
