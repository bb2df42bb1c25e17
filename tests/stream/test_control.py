"""The control server alone: a real REP socket on 127.0.0.1, real REQ clients, bad requests answered clearly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from emlive.core.errors import ConfigError
from emlive.core.protocol import bind, parse_json_object
from emlive.stream.control import ControlServer, control_request


@dataclass
class Served:
    """A control server running in a thread on a bound REP socket, and what it was asked to do."""

    endpoint: str
    server: ControlServer
    stop: threading.Event
    loads: list[str] = field(default_factory=list)
    stops: list[bool] = field(default_factory=list)


def _load(path: str, loads: list[str]) -> None:
    if path.endswith(".missing"):
        raise ConfigError(f"model {path} does not exist; give the path of a .ckpt, .pt or .onnx file")
    loads.append(path)


@pytest.fixture
def served(zctx: zmq.Context[Any]) -> Iterator[Served]:
    rep = zctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    endpoint = bind(rep, "tcp://127.0.0.1:0")
    loads: list[str] = []
    stops: list[bool] = []
    server = ControlServer(
        status=lambda: {"counters": {"published": 7}},
        request_stop=lambda: stops.append(True),
        load_model=lambda path: _load(path, loads),
        interval_s=3600,
    )
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(rep, None, stop), name="test-control")
    thread.start()
    yield Served(endpoint, server, stop, loads, stops)
    stop.set()
    thread.join(10)
    rep.close()


def _raw(zctx: zmq.Context[Any], endpoint: str, parts: list[bytes]) -> dict[str, Any]:
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(endpoint)
        req.send_multipart(parts)
        assert req.poll(5000, zmq.POLLIN), "no reply"
        return parse_json_object(req.recv(), "reply")
    finally:
        req.close()


@pytest.mark.timeout(20)
def test_good_commands_are_answered(served: Served) -> None:
    assert control_request(served.endpoint, {"cmd": "status"}) == {"ok": True, "status": {"counters": {"published": 7}}}
    assert control_request(served.endpoint, {"cmd": "load_model", "path": "m.pt"}) == {"ok": True, "loading": "m.pt"}
    assert control_request(served.endpoint, {"cmd": "stop"}) == {"ok": True, "stopping": True}
    assert served.loads == ["m.pt"] and served.stops == [True]
    assert served.server.errors.snapshot() == {}


@pytest.mark.timeout(20)
def test_bad_requests_get_a_clear_error_and_are_counted(served: Served, zctx: zmq.Context[Any]) -> None:
    cases = [
        ([b"{not json"], "bad_json", "not valid JSON"),
        ([b"[1, 2]"], "bad_json", "not an object"),
        ([b'{"cmd": "status"}', b"extra"], "bad_parts", "send one JSON object in one part"),
        ([b'{"cmd": "reboot"}'], "unknown_cmd", 'use "status", "load_model" or "stop"'),
        ([b'{"cmd": "load_model"}'], "bad_field", 'load_model needs "path"'),
        ([b'{"cmd": "load_model", "path": "x.missing"}'], "load_model", "x.missing does not exist"),
    ]
    for parts, kind, text in cases:
        reply = _raw(zctx, served.endpoint, parts)
        assert reply["ok"] is False and reply["kind"] == kind and text in reply["error"], reply
    assert served.server.errors.snapshot() == {"bad_json": 2, "bad_parts": 1, "unknown_cmd": 1, "bad_field": 1,
                                               "load_model": 1}  # fmt: skip
    assert control_request(served.endpoint, {"cmd": "status"})["ok"] is True  # still serving
    assert served.loads == [] and served.stops == []


@pytest.mark.timeout(10)
def test_no_reply_names_the_endpoint_and_the_fix(zctx: zmq.Context[Any]) -> None:
    rep = zctx.socket(zmq.REP)  # bound, never answers
    rep.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = bind(rep, "tcp://127.0.0.1:0")
        with pytest.raises(ConfigError, match=f"no reply from {endpoint} within 200 ms"):
            control_request(endpoint, {"cmd": "status"}, timeout_ms=200)
    finally:
        rep.close()
