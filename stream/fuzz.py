"""A seeded generator of hostile messages for the live service's three doors: input, control and viewer.

Each generated message carries what a correct receiver must do with it: :class:`InputCase` the reason the
service counts it under (``status()["rejected"]``) or None when it must be accepted; :class:`ControlCase` whether
the reply is ``ok`` and the error ``kind`` otherwise; :class:`HttpCase` the HTTP status a loopback viewer answers.
The same seed gives the same messages, so a failure can be replayed.

Input kinds (:data:`INPUT_KINDS`): valid frames (in order, of one acquisition, their shape changing among a few
sizes as when a camera's ROI or binning is switched), malformed JSON, non-UTF-8 headers, truncated and oversized
payloads, deeply nested headers (under the size limit), wrong field types, numbers out of range (huge indices,
numbers that overflow to inf), implausible shapes, frames larger than the receiver accepts, extra parts, and
``start`` messages announcing frame sizes beyond the memory budget. Control kinds: malformed and nested JSON,
multi-part requests, wrong types, unknown commands, bad model paths, and valid status requests. Viewer kinds:
foreign ``Host`` headers (DNS rebinding), cross-origin WebSocket upgrades, garbage request lines.

``python -m emlive.bench.fuzz_bench --count 10000`` sends a run of them to a real service and prints the counts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zmq

from emlive.core.protocol import (
    MAX_HEADER_BYTES,
    MAX_INDEX,
    MAX_JSON_DEPTH,
    encode,
    encode_frame,
    event_header,
    parse_json_object,
)

INPUT_KINDS = (
    "valid",
    "bad_json",
    "not_utf8",
    "truncated",
    "oversized",
    "too_deep",
    "wrong_type",
    "bad_index",
    "inf_number",
    "bad_shape",
    "frame_too_large",
    "bad_parts",
    "huge_start",
)
CONTROL_KINDS = ("status", "bad_json", "too_deep", "multipart", "wrong_type", "unknown_cmd", "bad_path", "empty")
HTTP_KINDS = ("good", "foreign_host", "foreign_origin_ws", "garbage")
SHAPES = ((24, 32), (32, 24), (28, 28), (16, 40), (40, 16), (20, 36))  # > the runtime's 4 cached sessions
ACQUISITION = "fuzz"
T = TypeVar("T")


@dataclass(frozen=True)
class InputCase:
    """One message for the input socket; ``reason`` is the rejection reason it must be counted under (None:
    accepted: a valid frame, whose ``index`` must come out denoised, or a ``huge_start``)."""

    kind: str
    parts: list[bytes]
    reason: str | None
    index: int | None = None


@dataclass(frozen=True)
class ControlCase:
    """One request for the control socket (``parts``: one part, or several for the multi-part case)."""

    kind: str
    parts: list[bytes]
    ok: bool
    error_kind: str | None


@dataclass(frozen=True)
class HttpCase:
    """One raw HTTP/1.1 request for the viewer (``{port}`` is filled in by :meth:`request`) and the status a
    loopback viewer answers (None: it may close the connection or answer 400)."""

    kind: str
    template: bytes
    status: int | None

    def request(self, port: int) -> bytes:
        return self.template.replace(b"{port}", str(port).encode())


class Fuzzer:
    """The seeded generator. :meth:`input_cases` yields ``count`` input messages: valid frames of acquisition
    :data:`ACQUISITION` with consecutive indices (one every ``valid_every`` messages), hostile ones between.

    ``memory_budget`` is the receiving service's (:class:`emlive.stream.budget.MemoryBudget`): ``frame_too_large``
    announces frames just beyond the largest it accepts, ``huge_start`` a frame size it accepts but whose window
    does not fit the budget (so the service must refuse to warm up for it).
    """

    def __init__(self, seed: int = 0, *, memory_budget: int = 1 << 30) -> None:
        self.rng = np.random.default_rng(seed)
        self.max_frame_bytes = memory_budget // 4
        side = math.isqrt(memory_budget // 32)  # uint16: 1/16 of the budget a frame, its window far more than 1/2
        self.budget_shape = (side, side)
        self._index = 0
        self._starts = 0

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    # --- input ----------------------------------------------------------------------------------------------
    def frame(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        return self.rng.poisson(50.0, size=shape or self.pick(SHAPES)).astype(np.uint16)

    def _parts(self, **changes: object) -> list[bytes]:
        """A valid 4x4 frame message of :data:`ACQUISITION` with header fields replaced by ``changes``."""
        header = json.loads(bytes(encode_frame(self.frame((4, 4)), ACQUISITION, 0, timestamp=1.0)[0]))
        header.update(changes)
        return [json.dumps(header).encode(), self.frame((4, 4)).tobytes()]

    def input_cases(self, count: int, valid_every: int = 3) -> Iterator[InputCase]:
        for i in range(count):
            yield self.valid() if i % valid_every == 0 else self.hostile(self.pick(INPUT_KINDS[1:]))

    def valid(self) -> InputCase:
        index, self._index = self._index, self._index + 1
        header, pixels = encode_frame(self.frame(), ACQUISITION, index)
        return InputCase("valid", [bytes(header), np.ascontiguousarray(pixels).tobytes()], None, index)

    def hostile(self, kind: str) -> InputCase:
        make = getattr(self, f"_in_{kind}", None)
        if kind == "valid" or make is None:
            raise ValueError(f"unknown hostile input kind {kind!r}; use one of {', '.join(INPUT_KINDS[1:])}")
        parts, reason = make()
        return InputCase(kind, parts, reason)

    def _in_bad_json(self) -> tuple[list[bytes], str | None]:
        header, payload = self._parts()
        return [header[: int(self.rng.integers(1, 60))], payload], "bad_json"

    def _in_not_utf8(self) -> tuple[list[bytes], str | None]:
        return [b"\xff\xfe" + self.rng.bytes(int(self.rng.integers(0, 40))), b""], "bad_json"

    def _in_truncated(self) -> tuple[list[bytes], str | None]:
        header, payload = self._parts()
        return [header, payload[: int(self.rng.integers(0, len(payload)))]], "truncated"

    def _in_oversized(self) -> tuple[list[bytes], str | None]:
        header, payload = self._parts()
        return [header, payload + self.rng.bytes(int(self.rng.integers(1, 64)))], "oversized"

    def _in_too_deep(self) -> tuple[list[bytes], str | None]:
        depth = int(self.rng.integers(MAX_JSON_DEPTH + 1, (MAX_HEADER_BYTES - 512) // 2))
        header, payload = self._parts()
        return [header[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}", payload], "too_deep"

    def _in_wrong_type(self) -> tuple[list[bytes], str | None]:
        field, value, reason = self.pick(WRONG_TYPES)
        return self._parts(**{field: value}), reason

    def _in_bad_index(self) -> tuple[list[bytes], str | None]:
        return self._parts(index=self.pick([-1, MAX_INDEX + 1, 2**63, 2**64 + 5, 10**300])), "bad_index"

    def _in_inf_number(self) -> tuple[list[bytes], str | None]:
        header, payload = self._parts()
        return [header.replace(b'"timestamp": 1.0', b'"timestamp": 1e999'), payload], "bad_field"

    def _in_bad_shape(self) -> tuple[list[bytes], str | None]:
        return self._parts(shape=self.pick([[0, 4], [4, -1], [1, 10**6], [4], [4, 4, 1], [4.0, 4]])), "bad_shape"

    def _in_frame_too_large(self) -> tuple[list[bytes], str | None]:
        side = math.isqrt(self.max_frame_bytes // 2) + 1 + int(self.rng.integers(0, 100))
        return self._parts(shape=[side, side]), "frame_too_large"

    def _in_bad_parts(self) -> tuple[list[bytes], str | None]:
        return [*self._parts(), self.rng.bytes(8)], "bad_parts"

    def _in_huge_start(self) -> tuple[list[bytes], str | None]:
        self._starts += 1
        header = event_header("start", f"announce-{self._starts}", shape=self.budget_shape, dtype="uint16")
        return [bytes(encode(header)[0])], None

    # --- control --------------------------------------------------------------------------------------------
    def control_cases(self, count: int) -> Iterator[ControlCase]:
        for _ in range(count):
            yield self.control(self.pick(CONTROL_KINDS))

    def control(self, kind: str) -> ControlCase:
        make = getattr(self, f"_ctl_{kind}", None)
        if make is None:
            raise ValueError(f"unknown control kind {kind!r}; use one of {', '.join(CONTROL_KINDS)}")
        parts, error_kind = make()
        return ControlCase(kind, parts, error_kind is None, error_kind)

    def _ctl_status(self) -> tuple[list[bytes], str | None]:
        return [b'{"cmd": "status"}'], None

    def _ctl_bad_json(self) -> tuple[list[bytes], str | None]:
        return [b'{"cmd": "sta' + self.rng.bytes(int(self.rng.integers(0, 16)))], "bad_json"

    def _ctl_too_deep(self) -> tuple[list[bytes], str | None]:
        depth = int(self.rng.integers(MAX_JSON_DEPTH + 1, 20000))
        return [b'{"cmd": ' + b"[" * depth + b"]" * depth + b"}"], "too_deep"

    def _ctl_multipart(self) -> tuple[list[bytes], str | None]:
        return [b'{"cmd": "status"}'] * int(self.rng.integers(2, 5)), "bad_parts"

    def _ctl_wrong_type(self) -> tuple[list[bytes], str | None]:
        return [self.pick([b"[1, 2]", b'"stop"', b"42", b"null"])], "bad_json"

    def _ctl_unknown_cmd(self) -> tuple[list[bytes], str | None]:
        cmd = self.pick([5, "x" * int(self.rng.integers(1, 30000)), None, {"a": 1}])
        return [json.dumps({"cmd": cmd}).encode()], "unknown_cmd"

    def _ctl_bad_path(self) -> tuple[list[bytes], str | None]:
        path = self.pick(["", 7, "/nonexistent/model.pt", "a\u0000b", "y" * 5000])
        bad_field = not isinstance(path, str) or not path or len(path) > 4096
        return [json.dumps({"cmd": "load_model", "path": path}).encode()], "bad_field" if bad_field else "load_model"

    def _ctl_empty(self) -> tuple[list[bytes], str | None]:
        return [b""], "bad_json"

    # --- viewer ---------------------------------------------------------------------------------------------
    def http_cases(self, count: int) -> Iterator[HttpCase]:
        for _ in range(count):
            yield self.http(self.pick(HTTP_KINDS))

    def http(self, kind: str) -> HttpCase:
        if kind == "good":
            return HttpCase(kind, _GET_HEALTH, 200)
        if kind == "foreign_host":
            return HttpCase(kind, b"GET / HTTP/1.1\r\nHost: " + self.pick(FOREIGN_HOSTS) + _CLOSE, 403)
        if kind == "foreign_origin_ws":
            return HttpCase(kind, _WS_UPGRADE.replace(b"ORIGIN", self.pick(FOREIGN_ORIGINS)), 403)
        if kind == "garbage":
            return HttpCase(kind, self.rng.bytes(int(self.rng.integers(1, 2000))) + b"\r\n\r\n", None)
        raise ValueError(f"unknown viewer kind {kind!r}; use one of {', '.join(HTTP_KINDS)}")


WRONG_TYPES: tuple[tuple[str, object, str], ...] = (
    ("index", "7", "bad_field"),
    ("timestamp", [1], "bad_field"),
    ("shape", "4x4", "bad_shape"),
    ("acquisition", 5, "bad_field"),
    ("dtype", 16, "unknown_dtype"),
)
FOREIGN_HOSTS = (b"evil.example", b"evil.example:{port}", b"127.0.0.1.nip.io:{port}", b"localhost.evil:{port}",
                 b"[::2]:{port}", b"")  # fmt: skip
FOREIGN_ORIGINS = (b"http://evil.example", b"null", b"http://127.0.0.1:1", b"http://localhost.evil:{port}")
_CLOSE = b"\r\nConnection: close\r\n\r\n"
_GET_HEALTH = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}" + _CLOSE
_WS_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: ORIGIN\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def ask_control(sock: zmq.Socket[Any], case: ControlCase, timeout_ms: int = 5000) -> dict[str, Any]:
    """Send one control case on a REQ socket and return the JSON reply; TimeoutError naming the case when no
    reply came (a REQ socket is then unusable: close it)."""
    sock.send_multipart(case.parts)
    if not sock.poll(timeout_ms, zmq.POLLIN):
        raise TimeoutError(f"no control reply within {timeout_ms} ms to a {case.kind} request")
    return parse_json_object(sock.recv(), "control reply")


def rss_bytes() -> int:
    """This process's resident memory in bytes (Linux ``/proc/self/status``; 0 where it is unavailable)."""
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0
