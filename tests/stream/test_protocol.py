"""The emlive/1 wire protocol: round trips, strict validation, zero-copy receive, socket helpers and CURVE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.protocol import (
    DTYPES,
    PROTOCOL,
    CurveClient,
    CurveServer,
    HeaderCache,
    ProtocolError,
    bind,
    check_bind_endpoint,
    create_keys,
    decode,
    encode,
    encode_frame,
    event_header,
    frame_header,
    json_depth,
    open_socket,
    parse_json_object,
    recv_parts,
    send_parts,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()  # hangs if a test left a socket open: every socket must be closed


def _good(frame: np.ndarray | None = None, **changes: Any) -> list[bytes]:
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4) if frame is None else frame
    header = frame_header(arr, "acq-1", 7, timestamp=1.5).to_dict()
    header.update(changes)
    for key in [k for k, v in changes.items() if v is _MISSING]:
        header.pop(key)
    return [json.dumps(header).encode(), arr.tobytes()]


_MISSING = object()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("order", ["<", ">"])
def test_every_dtype_and_byte_order_round_trips(dtype: str, order: str) -> None:
    arr = (np.arange(20).reshape(4, 5) * 3).astype(np.dtype(dtype).newbyteorder(order))
    parts = encode_frame(arr, "A", 3, timestamp=10.0, pixel_size_nm=0.5, extra={"exposure_s": 0.01})
    msg = decode([parts[0], np.ascontiguousarray(arr).tobytes()])
    assert msg.header.type == "frame"
    assert (msg.header.acquisition, msg.header.index, msg.header.shape) == ("A", 3, (4, 5))
    assert msg.header.pixel_size_nm == 0.5
    assert msg.header.extra == {"exposure_s": 0.01}
    assert msg.data is not None
    np.testing.assert_array_equal(msg.data, arr)
    assert msg.data.dtype == arr.dtype or np.dtype(dtype).itemsize == 1


def test_start_and_end_are_one_part_messages() -> None:
    start = encode(event_header("start", "A", shape=(8, 9), dtype=np.uint16, extra={"frames": 3}))
    end = encode(event_header("end", "A", index=2))
    assert len(start) == len(end) == 1
    s, e = decode(start).header, decode(end).header
    assert (s.type, s.shape, s.dtype, s.extra["frames"]) == ("start", (8, 9), "uint16", 3)
    assert (e.type, e.index) == ("end", 2)
    with pytest.raises(ProtocolError, match="header part only") as info:
        decode([*end, b"x"])
    assert info.value.reason == "bad_parts"


BAD_MESSAGES: list[tuple[str, list[bytes], str]] = [
    ("not JSON", [b"{nope", b""], "bad_json"),
    ("JSON list", [b"[1, 2]", b""], "bad_json"),
    ("not UTF-8", [b"\xff\xfe{}", b""], "bad_json"),
    ("NaN literal", [_good()[0].replace(b'"timestamp": 1.5', b'"timestamp": NaN'), _good()[1]], "bad_json"),
    ("huge header", [b'{"x": "' + b"a" * 70000 + b'"}', b""], "header_too_large"),
    ("wrong protocol", _good(protocol="emlive/2"), "bad_protocol"),
    ("no protocol", _good(protocol=_MISSING), "missing_field"),
    ("unknown type", _good(type="image"), "unknown_type"),
    ("missing dtype", _good(dtype=_MISSING, byte_order=_MISSING), "missing_field"),
    ("missing index", _good(index=_MISSING), "missing_field"),
    ("missing acquisition", _good(acquisition=_MISSING), "missing_field"),
    ("empty acquisition", _good(acquisition=""), "bad_field"),
    ("bool index", _good(index=True), "bad_field"),
    ("negative index", _good(index=-1), "bad_index"),
    ("index beyond 2^53", _good(index=2**53), "bad_index"),
    ("index beyond int64", _good(index=2**70), "bad_index"),
    ("4000-digit index", [_good()[0].replace(b'"index": 7', b'"index": ' + b"9" * 4000), _good()[1]], "bad_index"),
    ("100000-digit index", [_good()[0].replace(b'"index": 7', b'"index": ' + b"9" * 60000), _good()[1]], "bad_json"),
    (
        "timestamp overflowing to inf",
        [_good()[0].replace(b'"timestamp": 1.5', b'"timestamp": 1e400'), _good()[1]],
        "bad_field",
    ),
    ("400-digit integer timestamp", _good(timestamp=10**400), "bad_field"),  # was an OverflowError (a crash)
    ("400-digit integer pixel size", _good(pixel_size_nm=10**400), "bad_field"),
    ("bool timestamp", _good(timestamp=True), "bad_field"),
    ("float index", _good(index=7.0), "bad_field"),
    ("nested 20000 deep", [b'{"x": ' + b"[" * 20000 + b"]" * 20000 + b"}", b""], "too_deep"),
    ("nested 33 deep in an extra key", _good(x=json.loads("[" * 32 + "]" * 32)), "too_deep"),
    ("string timestamp", _good(timestamp="now"), "bad_field"),
    ("unknown dtype", _good(dtype="uint12"), "unknown_dtype"),
    ("numpy dtype string", _good(dtype="<u2"), "unknown_dtype"),
    ("bad byte order", _good(byte_order="|"), "bad_field"),
    ("3-D shape", _good(shape=[3, 4, 1]), "bad_shape"),
    ("1-D shape", _good(shape=[12]), "bad_shape"),
    ("zero side", _good(shape=[0, 4]), "bad_shape"),
    ("absurd side", _good(shape=[1, 100000]), "bad_shape"),
    ("float side", _good(shape=[3.0, 4]), "bad_shape"),
    ("float second side", _good(shape=[3, 4.0]), "bad_shape"),
    ("bool side", _good(shape=[True, 4]), "bad_shape"),
    ("shape as an object", _good(shape={"0": 3, "1": 4}), "bad_shape"),
    ("other acquisition, too long", _good(acquisition="a" * 300), "bad_field"),
    ("bool pixel size", _good(pixel_size_nm=True), "bad_field"),
    ("zero pixel size", _good(pixel_size_nm=0), "bad_field"),
    ("numeric dtype", _good(dtype=2), "unknown_dtype"),
    ("compressed", _good(compression="lz4"), "bad_field"),
    ("negative pixel size", _good(pixel_size_nm=-1.0), "bad_field"),
    ("truncated payload", [_good()[0], _good()[1][:-2]], "truncated"),
    ("oversized payload", [_good()[0], _good()[1] + b"\x00\x00"], "oversized"),
    ("missing payload", [_good()[0]], "bad_parts"),
    ("three parts", [*_good(), b"x"], "bad_parts"),
]


@pytest.mark.parametrize(("name", "parts", "reason"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_malformed_messages_are_refused_with_a_reason(name: str, parts: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(parts)
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, EmliveError)
    assert len(str(info.value)) > 30  # names the value, the rule and the fix


@pytest.mark.parametrize(("name", "parts", "reason"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_a_header_cache_refuses_what_the_full_check_refuses(name: str, parts: list[bytes], reason: str) -> None:
    """After good frames of the same stream were cached, each bad message gets the same error as without a cache,
    and the next good frame is accepted again."""
    cache = HeaderCache()
    for index in (5, 6):
        decode(_good(index=index, timestamp=1.0 + index), cache=cache)
    with pytest.raises(ProtocolError) as cached:
        decode(parts, cache=cache)
    with pytest.raises(ProtocolError) as full:
        decode(parts)
    assert (cached.value.reason, str(cached.value)) == (full.value.reason, str(full.value))
    assert full.value.reason == reason
    assert decode(_good(index=8), cache=cache).header.index == 8


def test_a_header_cache_takes_repeated_headers_and_gives_what_the_full_check_gives() -> None:
    cache = HeaderCache()
    first = _good()
    assert decode(first, cache=cache).header == decode(first).header  # the full check, then remembered
    raw = json.loads(first[0])
    same = [
        _good(index=8, timestamp=2.25),
        _good(index=9, timestamp=3),  # an integer timestamp is a number too
        _good(index=10, note="extra keys pass through", kind="raw"),
        _good(index=11, pixel_size_nm=_MISSING),  # absent, as null: the full check says the same
    ]
    for parts in same[:3]:
        assert cache.lookup(json.loads(parts[0]), 1 << 30) is not None  # taken from the cache...
        got, want = decode(parts, cache=cache), decode(parts)
        assert got.header == want.header and np.array_equal(got.data, want.data)  # ...with the same result
        assert got.data is not None and not got.data.flags.writeable
    assert cache.lookup(json.loads(same[3][0]), 1 << 30) is None  # a field present/absent: the full way
    assert decode(same[3], cache=cache).header == decode(same[3]).header
    assert cache.lookup(raw, 1 << 30) is None  # the cache follows the last header checked the full way
    decode(_good(pixel_size_nm=1, shape=[1, 12]), cache=cache)
    for bad in (_good(pixel_size_nm=True, shape=[1, 12]), _good(pixel_size_nm=1, shape=[True, 12])):
        with pytest.raises(ProtocolError):  # equal to the cached 1 in Python, a bool in JSON
            decode(bad, cache=cache)
    with pytest.raises(ProtocolError) as info:  # a smaller frame limit is not the remembered check's
        decode(first, cache=cache, max_frame_bytes=16)
    assert info.value.reason == "frame_too_large"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_frames_are_refused(dtype: str, bad: float) -> None:
    arr = np.ones((4, 4), dtype=dtype)
    arr[2, 1] = bad
    with pytest.raises(ProtocolError, match="NaN or inf") as info:
        decode([frame_header(arr, "A", 0).to_bytes(), arr.tobytes()])
    assert info.value.reason == "not_finite"


def test_nesting_is_measured_without_recursion_and_brackets_in_strings_do_not_count() -> None:
    assert json_depth('{"a": [[1]], "b": "[[[[[[", "c": "\\"[["}') == 3
    assert json_depth("[" * 100000) == 100000  # a scan, no recursion
    ok = _good(x=json.loads("[" * 31 + "]" * 31), note="[" * 500)  # 32 levels with the header object: accepted
    assert decode(ok).header.extra["note"] == "[" * 500
    with pytest.raises(ProtocolError) as info:
        parse_json_object(b'{"cmd": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001, "control request")
    assert info.value.reason == "too_deep" and "control request" in str(info.value)


def test_the_largest_index_is_accepted() -> None:
    assert decode(_good(index=2**53 - 1)).header.index == 2**53 - 1


def test_frame_size_limit() -> None:
    parts = _good(shape=[2048, 2048])
    with pytest.raises(ProtocolError) as info:
        decode(parts, max_frame_bytes=1 << 20)
    assert info.value.reason == "frame_too_large"


def test_headers_cannot_carry_nan_or_unserialisable_extras() -> None:
    with pytest.raises(ProtocolError, match="JSON"):
        event_header("start", "A", extra={"bad": float("nan")}).to_bytes()
    with pytest.raises(ProtocolError, match="JSON"):
        event_header("start", "A", extra={"bad": object()}).to_bytes()
    with pytest.raises(ProtocolError, match="cannot be sent"):
        frame_header(np.zeros((2, 2), dtype=np.complex64), "A", 0)


def test_receive_is_zero_copy_on_real_sockets(ctx: zmq.Context[Any]) -> None:
    pull = open_socket(ctx, zmq.PULL, hwm=4, linger_ms=0)
    push = open_socket(ctx, zmq.PUSH, hwm=4, linger_ms=0)
    try:
        endpoint = bind(pull, "tcp://127.0.0.1:0")
        push.connect(endpoint)
        assert pull.getsockopt(zmq.RCVHWM) == 4
        assert push.getsockopt(zmq.SNDHWM) == 4
        assert pull.getsockopt(zmq.LINGER) == 0
        frame = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)  # above zmq's copy threshold
        assert send_parts(push, encode_frame(frame, "A", 0), timeout_ms=5000)
        parts = recv_parts(pull, timeout_ms=5000)
        assert parts is not None
        msg = decode(parts)
        assert msg.data is not None
        np.testing.assert_array_equal(msg.data, frame)
        assert not msg.data.flags.owndata
        assert not msg.data.flags.writeable
        buf = np.frombuffer(parts[1].buffer, dtype=np.uint8)
        assert np.shares_memory(msg.data, buf)  # a view on the received ZeroMQ buffer, not a copy
        assert recv_parts(pull, timeout_ms=10) is None
    finally:
        push.close()
        pull.close()


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://10.1.2.3:5555"])
def test_binding_beyond_loopback_needs_the_flag(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="bind-any"):
        check_bind_endpoint(endpoint)
    assert check_bind_endpoint(endpoint, allow_remote=True) == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:0", "tcp://localhost:5", "tcp://[::1]:7", "ipc:///tmp/x"])
def test_local_endpoints_bind_by_default(endpoint: str) -> None:
    assert check_bind_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5555", "tcp://127.0.0.1", "udp://127.0.0.1:5"])
def test_bad_endpoints_are_config_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="tcp://"):
        check_bind_endpoint(endpoint)


def _curve_pair(
    ctx: zmq.Context[Any], server: CurveServer, client: CurveClient
) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    pub = open_socket(ctx, zmq.PUSH, hwm=4, linger_ms=0, curve=server)
    sub = open_socket(ctx, zmq.PULL, hwm=4, linger_ms=0, curve=client)
    endpoint = bind(pub, "tcp://127.0.0.1:0")
    sub.connect(endpoint)
    return pub, sub


def test_curve_encrypts_and_refuses_a_wrong_server_key(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    server_pub, server_secret = create_keys(tmp_path, "server")
    other_pub, _ = create_keys(tmp_path, "impostor")
    assert CurveServer(server_secret).secret_key_file.stat().st_mode & 0o077 == 0
    push, pull = _curve_pair(ctx, CurveServer(server_secret), CurveClient(server_pub))
    bad_push, bad_pull = _curve_pair(ctx, CurveServer(server_secret), CurveClient(other_pub))
    try:
        frame = np.ones((4, 4), dtype=np.uint16)
        assert send_parts(push, encode_frame(frame, "A", 0), timeout_ms=5000)
        parts = recv_parts(pull, timeout_ms=5000)
        assert parts is not None and decode(parts).header.acquisition == "A"
        # the handshake with the wrong server key never completes: the PUSH has no peer to send to
        assert not send_parts(bad_push, encode_frame(frame, "A", 0), timeout_ms=300)
        assert recv_parts(bad_pull, timeout_ms=50) is None
    finally:
        for s in (push, pull, bad_push, bad_pull):
            s.close()


def test_curve_authorized_clients_only(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    from emlive.core.protocol import Authenticator

    server_pub, server_secret = create_keys(tmp_path / "server", "server")
    allowed_pub, allowed_secret = create_keys(tmp_path / "clients", "allowed")
    _, stranger_secret = create_keys(tmp_path / "strangers", "stranger")
    curve = CurveServer(server_secret, tmp_path / "clients")
    auth = Authenticator(ctx, curve)
    push, pull = _curve_pair(ctx, curve, CurveClient(server_pub, allowed_secret))
    push2, pull2 = _curve_pair(ctx, curve, CurveClient(server_pub, stranger_secret))
    try:
        frame = np.ones((4, 4), dtype=np.uint16)
        assert send_parts(push, encode_frame(frame, "A", 0), timeout_ms=5000)
        assert recv_parts(pull, timeout_ms=5000) is not None
        assert not send_parts(push2, encode_frame(frame, "A", 0), timeout_ms=300)
        assert recv_parts(pull2, timeout_ms=50) is None
    finally:
        for s in (push, pull, push2, pull2):
            s.close()
        auth.stop()
    assert allowed_pub.exists()


def test_curve_key_file_errors_name_the_fix(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    public, _ = create_keys(tmp_path, "server")
    with pytest.raises(ConfigError, match="key_secret"):
        open_socket(ctx, zmq.PUB, curve=CurveServer(public))
    with pytest.raises(ConfigError, match="does not exist"):
        open_socket(ctx, zmq.SUB, curve=CurveClient(tmp_path / "missing.key"))


def test_protocol_constant_is_in_every_header() -> None:
    assert json.loads(encode(event_header("end", "A"))[0])["protocol"] == PROTOCOL
