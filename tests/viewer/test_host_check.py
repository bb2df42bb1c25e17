"""The viewer on a loopback bind answers only requests for a loopback host name (DNS rebinding) and WebSocket
upgrades from its own origin; fuzzed HTTP leaves it serving. Raw sockets against the real aiohttp server."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from emlive.stream.fuzz import HTTP_KINDS, Fuzzer, HttpCase
from emlive.viewer.server import ViewerServer, is_local_host_header

pytestmark = pytest.mark.timeout(60)


def _send(port: int, request: bytes) -> tuple[int | None, bytes]:
    """Send one raw request; the status code (None when the server closed without one) and the
    body (read up to its Content-Length; a 101 answer has none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)  # no half-close: aiohttp drops a half-closed request unanswered
        data = b""
        while not _complete(data) and (chunk := conn.recv(65536)):
            data += chunk
    if not data.startswith(b"HTTP/1."):
        return None, data
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(body) >= (int(length.group(1)) if length else 0)


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True), ("localhost", True),
     ("evil.example:8000", False), ("127.0.0.1.nip.io:8000", False), ("localhost.evil", False), ("", False),
     ("[::2]:8000", False), ("127.0.0.1:99999", False), ("::1", False)],
)  # fmt: skip
def test_local_host_header(host: str, local: bool) -> None:
    assert is_local_host_header(host) is local


def test_a_loopback_viewer_refuses_foreign_hosts_and_origins(
    fake_service: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    server = make_viewer(fake_service.endpoint)
    port = server.bound_port
    assert port is not None
    status, body = _send(port, b"GET /api/health HTTP/1.1\r\nHost: evil.example:%d\r\nConnection: close\r\n\r\n" % port)
    assert status == 403 and b"DNS rebinding" in body
    status, body = _send(port, b"GET /api/health HTTP/1.1\r\nHost: localhost:%d\r\nConnection: close\r\n\r\n" % port)
    assert status == 200 and "clients" in json.loads(body)
    same = Fuzzer().http("foreign_origin_ws").request(port)
    status, _ = _send(port, same)
    assert status == 403
    own = same.replace(same.split(b"Origin: ")[1].split(b"\r\n")[0], b"http://127.0.0.1:%d" % port)
    status, _ = _send(port, own)
    assert status == 101  # the viewer's own page may open its WebSocket


def test_an_exposed_viewer_keeps_the_token_check_instead(
    fake_service: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    server = make_viewer(fake_service.endpoint, host="0.0.0.0")
    port = server.bound_port
    assert port is not None and server.token
    status, _ = _send(port, b"GET /api/health HTTP/1.1\r\nHost: viewer.lab:%d\r\nConnection: close\r\n\r\n" % port)
    assert status == 403  # no token
    request = b"GET /api/health?token=%s HTTP/1.1\r\nHost: viewer.lab:%d\r\nConnection: close\r\n\r\n"
    status, _ = _send(port, request % (server.token.encode(), port))
    assert status == 200  # a remote name is fine when the token is given


def test_fuzzed_http_leaves_the_viewer_serving(fake_service: Any, make_viewer: Callable[..., ViewerServer]) -> None:
    server = make_viewer(fake_service.endpoint)
    port = server.bound_port
    assert port is not None
    cases: list[HttpCase] = list(Fuzzer(7).http_cases(120))
    assert {c.kind for c in cases} == set(HTTP_KINDS)
    for case in cases:
        status, _ = _send(port, case.request(port))
        if case.status is not None:
            assert status == case.status, case
        else:
            assert status in (None, 400, 404, 403), case
    status, _ = _send(port, Fuzzer().http("good").request(port))
    assert status == 200


def test_fuzzed_websocket_messages_are_answered_and_the_viewer_keeps_serving(
    fake_service: Any, make_viewer: Callable[..., ViewerServer]
) -> None:
    import asyncio

    import aiohttp

    server = make_viewer(fake_service.endpoint)
    rng = np.random.default_rng(4)
    garbage = [
        "not json",
        "[" * 30000 + "]" * 30000,  # nested deeper than JSON parsing can recurse
        '{"type": "settings", "gamma": ' + "9" * 5000 + "}",
        '{"type": "settings", "gamma": 1e999, "low": "x", "mode": [1]}',
        '{"type": "probe", "x": 1e308, "y": -1}',
        '{"type": "ack", "drawn_at": "soon", "latency_ms": null}',
        '{"type": "pause", "paused": {"a": [1, 2]}}',
        "42",
        "",
    ] + [rng.bytes(int(rng.integers(1, 500))).decode("latin-1") for _ in range(20)]

    async def run() -> tuple[int, bool]:
        url = f"http://127.0.0.1:{server.bound_port}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws", origin=url) as ws:
                for text in garbage:
                    await ws.send_str(text)
                await ws.send_bytes(rng.bytes(300))  # binary frames are not part of the page's protocol
                errors = 0
                while errors < 4:  # not JSON, too deep, "42", "": each answered with an error
                    msg = await ws.receive(timeout=10)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg  # the connection stays open
                    errors += json.loads(msg.data).get("type") == "error"
                assert not ws.closed
            async with session.ws_connect(f"{url}/ws", origin=url) as ws:
                hello = await ws.receive_json(timeout=10)
            async with session.get(f"{url}/api/health") as resp:
                return resp.status, hello["type"] == "hello"

    # a fresh thread: an earlier test (Playwright's sync API) may have left an event loop running in this one
    result: list[tuple[int, bool]] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(run())))
    worker.start()
    worker.join(timeout=60)
    assert result, "the WebSocket exchange did not finish (see the thread's exception above)"
    status, hello = result[0]
    assert status == 200 and hello
