"""The fuzz suite: a real service on loopback gets seeded hostile messages on its input and control sockets,
interleaved with valid frames, and must neither stop nor lose a valid frame, count every refusal by its kind,
answer every control request and stay within its memory budget."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.errors import ConfigError
from emlive.core.protocol import bind, encode, event_header
from emlive.stream.budget import MemoryBudget, parse_bytes
from emlive.stream.errorlog import ErrorLog
from emlive.stream.fuzz import ACQUISITION, CONTROL_KINDS, INPUT_KINDS, Fuzzer, ask_control, rss_bytes
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"
BUDGET = 64 << 20
Collect = Callable[..., Any]


@pytest.fixture
def push(zctx: zmq.Context[Any]) -> Any:
    sock = zctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100000)
    yield sock
    sock.close()


@pytest.fixture
def req(zctx: zmq.Context[Any]) -> Any:
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close()


def _start(services: list[DenoiseService], denoiser: Any, push: Any, **kw: Any) -> DenoiseService:
    config = ServiceConfig(
        model=None,
        input=bind(push, LOCAL),
        input_mode="pull",
        output=LOCAL,
        control=LOCAL,
        lossless=True,
        memory_budget=BUDGET,
        status_interval_s=0.5,
        **kw,
    )
    svc = DenoiseService(config, denoiser=denoiser)
    services.append(svc)
    svc.start()
    return svc


def _fuzz_run(svc: DenoiseService, push: Any, req: Any, sub: Any, n_input: int, n_control: int, seed: int) -> Any:
    """Send the cases (a control request after every few input messages), end the acquisition, collect."""
    fuzzer = Fuzzer(seed, memory_budget=BUDGET)
    controls = list(fuzzer.control_cases(n_control))
    inputs = list(fuzzer.input_cases(n_input))
    replies = []
    every = max(1, n_input // max(1, n_control))
    for i, case in enumerate(inputs):
        push.send_multipart(case.parts)
        if i % every == 0 and controls[len(replies) :]:
            replies.append(ask_control(req, controls[len(replies)]))
    push.send_multipart(encode(event_header("end", ACQUISITION)))
    got = sub.collect(lambda m: m.header.type == "end" and m.header.acquisition == ACQUISITION, timeout=60)
    return inputs, controls[: len(replies)], replies, got


@pytest.mark.timeout(90)
def test_fuzzed_input_and_control_never_stop_the_service(
    denoiser: Any,
    services: list[DenoiseService],
    push: Any,
    req: Any,
    subscribe: Collect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="emlive.stream.service")
    svc = _start(services, denoiser, push)
    req.connect(svc.endpoints["control"])
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    rss_before = rss_bytes()

    inputs, controls, replies, got = _fuzz_run(svc, push, req, sub, n_input=900, n_control=150, seed=12)

    assert not svc.stopping
    kinds = Counter(c.kind for c in inputs)
    assert set(kinds) == set(INPUT_KINDS)  # every kind was sent
    # every valid frame came out, denoised, once and in order, whatever came between
    valid = [c for c in inputs if c.kind == "valid"]
    out = [m for m in got if m.header.type == "frame" and m.header.kind == "denoised"]
    assert [m.header.index for m in out] == [c.index for c in valid]
    for m, case in zip(out, valid, strict=True):
        sent = np.frombuffer(case.parts[1], dtype=np.uint16)
        assert m.data is not None and m.data.size == sent.size and np.isfinite(m.data).all()
    # every refusal counted under its reason, nothing else refused
    snap = svc.status()
    assert snap["rejected"] == Counter(c.reason for c in inputs if c.reason is not None)
    assert snap["counters"]["warmups_refused"] == kinds["huge_start"]
    assert snap["counters"].get("infer_errors", 0) == 0
    # every control request answered as it should, the refusals counted per kind
    assert set(Counter(c.kind for c in controls)) == set(CONTROL_KINDS)
    for case, reply in zip(controls, replies, strict=True):
        assert reply["ok"] is case.ok, (case.kind, reply)
        assert reply.get("kind") == case.error_kind, (case.kind, reply)
    assert snap["control_errors"] == Counter(c.error_kind for c in controls if c.error_kind is not None)
    assert ask_control(req, Fuzzer().control("status"))["ok"]  # the REP socket still alternates
    # memory: the queue within its share, the process within the budget
    assert snap["memory"]["input_queue_bytes"] <= snap["memory"]["input_queue_limit_bytes"] == BUDGET // 4
    assert rss_bytes() - rss_before < BUDGET
    # each refusal reason logged in full once, not once per message (a run past 10 s also logs each reason's
    # "N more in the last 10 s" summary: not a full line)
    messages = [r.getMessage() for r in caplog.records]
    lines = [m for m in messages if m.startswith("rejected message (") and " more in the last " not in m]
    assert len(lines) == len(snap["rejected"]) + 1  # + announced_over_budget


@pytest.mark.timeout(60)
def test_changing_frame_shapes_keep_the_runtime_valid(
    denoiser: Any, services: list[DenoiseService], push: Any, subscribe: Collect
) -> None:
    """ROI/binning switched again and again: more shapes than the runtime caches sessions for, in a cycle (the
    old IOBinding cache, keyed by id(session), handed a binding to a new session and the service stopped)."""
    svc = _start(services, denoiser, push)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    fuzzer = Fuzzer(3)
    valid = [fuzzer.valid() for _ in range(60)]
    for case in valid:
        push.send_multipart(case.parts)
    push.send_multipart(encode(event_header("end", ACQUISITION)))
    got = sub.collect(lambda m: m.header.type == "end", timeout=40)
    assert [m.header.index for m in got if m.header.type == "frame"] == list(range(60))
    assert svc.status()["counters"].get("infer_errors", 0) == 0
    assert not svc.stopping


@pytest.mark.timeout(60)
def test_a_multipart_control_request_gets_an_error_and_the_socket_keeps_working(
    denoiser: Any, services: list[DenoiseService], push: Any, req: Any
) -> None:
    svc = _start(services, denoiser, push)
    req.connect(svc.endpoints["control"])
    for parts in ([b'{"cmd": "status"}', b"second"], [b'{"cmd": ' + b"[" * 5000 + b"]" * 5000 + b"}"]):
        req.send_multipart(parts)
        assert req.poll(5000, zmq.POLLIN), "no reply"
        reply = json.loads(req.recv())
        assert reply["ok"] is False and reply["kind"] in ("bad_parts", "too_deep")
    req.send(b'{"cmd": "status"}')
    assert req.poll(5000, zmq.POLLIN) and json.loads(req.recv())["ok"] is True
    assert not svc.stopping
    assert svc.status()["control_errors"] == {"bad_parts": 1, "too_deep": 1}


def test_errors_are_logged_once_per_kind_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("emlive.test.errorlog")
    errors = ErrorLog(log, "rejected message", summary_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="emlive.test.errorlog")
    for _ in range(500):
        errors.record("bad_json", "header is not valid JSON\n(second line)")
    errors.record("too_deep", "nested 40 deep")
    errors.summarize()  # too early: nothing
    now[0] = 11.0
    errors.summarize()
    errors.summarize()  # nothing new
    now[0] = 30.0
    errors.summarize()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "rejected message (bad_json): header is not valid JSON (second line)",
        "rejected message (too_deep): nested 40 deep",
        "rejected message (bad_json): 499 more in the last 11 s (500 in all)",
    ]
    assert errors.snapshot() == {"bad_json": 500, "too_deep": 1}


def test_memory_budget_sizes_and_their_errors() -> None:
    auto = parse_bytes("auto")
    assert 1 << 30 <= auto <= 16 << 30
    if auto >= 4 << 30:  # machines with >= 16 GB: the default takes a 4096 x 4096 (and a 5760 x 4092) camera
        assert MemoryBudget(auto).frame_problem((4092, 5760), 2, 5) is None
    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("4096") == 4096
    for bad in ("lots", "12 parsecs", "-1GiB", ""):
        with pytest.raises(ConfigError, match=r"e\.g\. 512MiB"):
            parse_bytes(bad)
    with pytest.raises(ConfigError, match=r"at least 16\.0 MiB"):
        ServiceConfig(model=None, input="tcp://127.0.0.1:1", output=LOCAL, memory_budget=1 << 20).validate()
    budget = MemoryBudget(64 << 20)
    assert budget.frame_problem((256, 256), 2, 5) is None
    problem = budget.frame_problem((2048, 2048), 2, 5)
    assert problem is not None and "2048x2048" in problem and "--memory-budget" in problem


@pytest.mark.timeout(60)
def test_extreme_but_valid_indices_keep_the_service_and_its_status_going(
    denoiser: Any, services: list[DenoiseService], push: Any, req: Any, subscribe: Collect
) -> None:
    """Valid frames whose indices jump to the largest accepted value and back (a gap of 2**53 frames, then a
    restart): counters and the status line stay formattable, the frames on either side still come out."""
    from emlive.core.protocol import MAX_INDEX, encode_frame
    from emlive.stream.telemetry import format_line

    svc = _start(services, denoiser, push)
    req.connect(svc.endpoints["control"])
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    frame = Fuzzer(5).frame((16, 16))
    indices = [0, 1, 2, MAX_INDEX - 2, MAX_INDEX - 1, MAX_INDEX, 0, 1, 2, 3]
    for index in indices:
        push.send_multipart(encode_frame(frame, ACQUISITION, index))
    push.send_multipart(encode(event_header("end", ACQUISITION)))
    got = sub.collect(lambda m: m.header.type == "end", timeout=40)
    assert [m.header.index for m in got if m.header.type == "frame" and m.header.kind == "denoised"] == indices
    snap = svc.status()
    assert snap["counters"]["gap_frames"] == MAX_INDEX - 5
    assert format_line(snap)  # the status line formats whatever the counters hold
    assert ask_control(req, Fuzzer().control("status"))["ok"]
    assert not svc.stopping
