"""The live service's control server: JSON commands on a REP socket, telemetry on a PUB socket.

One job: answer every control request (``status``, ``load_model``, ``stop``) with one JSON reply, a refused one
with ``{"ok": false, "error": ..., "kind": ...}`` (counted per kind in :attr:`ControlServer.errors`), and every
``interval_s`` seconds log one status line and publish the status on the status socket. :func:`control_request`
is the client side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from emlive.core.errors import ConfigError
from emlive.core.protocol import (
    PROTOCOL,
    STATUS_TYPE,
    CurveClient,
    ProtocolError,
    connect,
    encode_json,
    open_socket,
    parse_json_object,
)
from emlive.stream.errorlog import ErrorLog
from emlive.stream.telemetry import format_line

logger = logging.getLogger("emlive.stream.service.control")

MAX_PATH_CHARS = 4096
COMMANDS = ("status", "load_model", "stop")


class ControlServer:
    """Answers control requests and publishes status (see the module docstring).

    ``status()`` returns the telemetry snapshot, ``request_stop()`` asks the service to stop, ``load_model(path)``
    starts a model swap (raising ConfigError/OSError/ValueError when it cannot). ``summaries`` are the error logs
    whose summaries go out with each status line (this server's own :attr:`errors` among them).
    """

    def __init__(
        self,
        *,
        status: Callable[[], dict[str, Any]],
        request_stop: Callable[[], None],
        load_model: Callable[[str], None],
        interval_s: float,
        summaries: Sequence[ErrorLog] = (),
    ) -> None:
        self._status, self._request_stop, self._load_model = status, request_stop, load_model
        self.interval_s = interval_s
        self.errors = ErrorLog(logger, "control request refused")
        self._summaries = (*summaries, self.errors)

    def run(self, control: zmq.Socket[Any] | None, status: zmq.Socket[Any] | None, stop: threading.Event) -> None:
        """Serve ``control`` (REP) and publish on ``status`` (PUB) until ``stop`` is set; either may be None."""
        next_status = time.monotonic() + self.interval_s
        poller = zmq.Poller()
        if control is not None:
            poller.register(control, zmq.POLLIN)
        while not stop.is_set():
            wait_s = max(0.0, min(0.1, next_status - time.monotonic()))
            if control is None:
                stop.wait(wait_s)
            elif control in dict(poller.poll(int(wait_s * 1e3))):
                self.serve_one(control)
            if time.monotonic() >= next_status:
                next_status += self.interval_s
                self.publish_status(status)

    def publish_status(self, status: zmq.Socket[Any] | None) -> None:
        """Log the error summaries and one status line; publish the status on ``status`` (when there is one)."""
        for errors in self._summaries:
            errors.summarize()
        snap = self._status()
        logger.info("%s", format_line(snap))
        if status is not None:
            message = {"protocol": PROTOCOL, "type": STATUS_TYPE, "time": time.time(), **snap}
            status.send(encode_json(message), flags=zmq.NOBLOCK)

    def serve_one(self, control: zmq.Socket[Any]) -> None:
        """Answer one request on the REP socket. Every part of it is read before the reply (a REP must alternate
        receive and send), and every request gets a reply: an error JSON when it is refused."""
        parts = control.recv_multipart()
        if len(parts) != 1:
            reply = self._error("bad_parts", f"control request of {len(parts)} parts; send one JSON object in one part")
        else:
            reply = self.answer(parts[0])
        control.send(encode_json(reply))

    def answer(self, request: bytes) -> dict[str, Any]:
        """The reply to one request (its JSON bytes)."""
        try:
            command = parse_json_object(request, "control request")
        except ProtocolError as exc:
            return self._error(exc.reason, str(exc))
        cmd = command.get("cmd")
        logger.log(logging.DEBUG if cmd == "status" else logging.INFO, "control command %r", cmd)
        if cmd == "status":
            return {"ok": True, "status": self._status()}
        if cmd == "stop":
            logger.info("stop requested on the control socket")
            self._request_stop()
            return {"ok": True, "stopping": True}
        if cmd == "load_model":
            return self._load(command.get("path"))
        shown = cmd[:64] if isinstance(cmd, str) else type(cmd).__name__
        return self._error("unknown_cmd", f'unknown cmd {shown!r}; use "status", "load_model" or "stop"')

    def _load(self, path: Any) -> dict[str, Any]:
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
            return self._error(
                "bad_field",
                f'load_model needs "path": the model file (.ckpt, .pt or .onnx), at most {MAX_PATH_CHARS} characters',
            )
        try:
            self._load_model(path)
        except (ConfigError, OSError, ValueError) as exc:  # a path the OS refuses (NUL byte, too long, ...)
            return self._error("load_model", str(exc))
        return {"ok": True, "loading": path}

    def _error(self, kind: str, message: str) -> dict[str, Any]:
        self.errors.record(kind, message)
        return {"ok": False, "error": message, "kind": kind}


def control_request(
    endpoint: str, command: dict[str, Any], timeout_ms: int = 5000, curve: CurveClient | None = None
) -> dict[str, Any]:
    """Send one JSON command to a service's control socket and return its JSON reply."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = open_socket(ctx, zmq.REQ, hwm=4, linger_ms=0, curve=curve)
    try:
        connect(sock, endpoint)
        sock.send(encode_json(command))
        if not sock.poll(timeout_ms, zmq.POLLIN):
            raise ConfigError(f"no reply from {endpoint} within {timeout_ms} ms; is `emlive serve --control` there?")
        return parse_json_object(sock.recv(), "control reply")
    finally:
        sock.close()
