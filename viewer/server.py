"""The live viewer's web server: one page, one WebSocket per browser, a save endpoint.

Stack: **aiohttp** serves HTTP and WebSockets from one small dependency on asyncio (no template engine, no
framework: the page is static HTML/JS/CSS from ``viewer/static``); Pillow encodes PNG/JPEG; tifffile writes TIFF.

Data flow: :class:`~emlive.viewer.source.FrameSource` (a ZeroMQ SUB thread) drains the service's output to the
newest raw/denoised pair, bins it to ``--max-size`` (block mean) and hands it to the event loop. Every browser has
**one pending slot**, overwritten by each newer pair, and a credit of :data:`CREDITS` frames in flight: the page
acknowledges each frame once drawn, so a slow browser only ever gets the newest frame and never slows the service
or the other browsers. Contrast (auto percentiles per frame or frozen, manual min/max, gamma) is applied here per
browser, in the frame's own units, before the 8-bit conversion (settings come over the WebSocket); the pixel
value under the cursor is looked up here too, at full resolution.

Encoding (measured with ``python -m emlive.bench.viewer_bench``: 1024x1024 raw + denoised at 30 fps, plain headless
Chromium, the viewer, the sender and the browser on the same 2 shared CPU cores, loopback): raw 8-bit (2 MiB per
pair, no encode/decode) displayed 30.1 fps with browser latency p50 27 ms / p99 68 ms; JPEG q90 (about 1.3 MiB per
noisy pair) 24.7 fps, p50 85 ms / p99 167 ms (Pillow's encode and the browser's decode cost more than sending the
bytes); PNG 7.4 fps, p50 188 ms. Raw 8-bit is the default; JPEG (a page setting, or ``?codec=jpeg`` in the URL) may
still pay off over slow networks.

Safety: binds to 127.0.0.1 by default. Any other host requires a random token (printed in the URL) for the page,
the WebSocket and the save endpoint; the WebSocket also refuses other origins (cross-site WebSocket hijacking).
On a loopback bind, a request whose ``Host`` is not a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, with
any port) is refused with 403: a web page that rebinds its own DNS name to 127.0.0.1 cannot read the viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.protocol import ProtocolError, parse_json_object
from emlive.viewer.render import Contrast, FramePair, pair_png, pair_tiff, render_pair
from emlive.viewer.source import FrameSource

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CREDITS = 2
DRAW_HISTORY = 1200  # (drawn_at, latency) reports kept per browser, for /api/health and the benchmark
STATE_INTERVAL_S = 0.5
STALE_AFTER_S = 3.0
STATUS_STALE_AFTER_S = 15.0
_MAX_WS_MESSAGE = 64 * 1024


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class Client:
    """One browser: its WebSocket, settings, pending slot and the pair it shows."""

    ws: web.WebSocketResponse
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    contrast: Contrast = field(default_factory=Contrast)
    pending: FramePair | None = None
    shown: FramePair | None = None
    paused: bool = False
    credits: int = CREDITS
    sent: int = 0
    skipped: int = 0
    draws: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=DRAW_HISTORY))
    denoised_draws: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=DRAW_HISTORY))
    first_drawn_at: float | None = None
    first_denoised_at: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record_draw(self, drawn_at: float, latency_ms: float, denoised: bool) -> None:
        """A frame the page reports drawn (its wall-clock time, its latency, whether it held a denoised frame)."""
        self.draws.append((drawn_at, latency_ms))
        if self.first_drawn_at is None:
            self.first_drawn_at = drawn_at
        if denoised:
            self.denoised_draws.append((drawn_at, latency_ms))
            if self.first_denoised_at is None:
                self.first_denoised_at = drawn_at

    def health(self) -> dict[str, Any]:
        """This browser's figures for ``/api/health``: frames sent and skipped, the draws the page reported
        (``[drawn_at, latency_ms]``, wall-clock seconds; all of them and those with a denoised frame) and the
        wall-clock times of its first drawn frame and first drawn denoised frame (None until then)."""
        return {
            "id": self.id,
            "sent": self.sent,
            "skipped": self.skipped,
            "codec": self.contrast.codec,
            "draws": list(self.draws),
            "denoised_draws": list(self.denoised_draws),
            "first_drawn_at": self.first_drawn_at,
            "first_denoised_at": self.first_denoised_at,
        }

    async def send_json(self, obj: dict[str, Any]) -> None:
        async with self.send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(obj, allow_nan=False, default=_json_default))


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Viewer:
    """The viewer's state shared by the HTTP handlers: the newest pair, the status, the connected browsers."""

    def __init__(
        self, source: str, status: str | None, max_size: int, token: str | None, stale_after_s: float = STALE_AFTER_S
    ) -> None:
        self.source_addr, self.status_addr, self.max_size, self.token = source, status, max_size, token
        self.stale_after_s = stale_after_s
        self.clients: set[Client] = set()
        self.newest: FramePair | None = None
        self.status: dict[str, Any] | None = None
        self.last_event: dict[str, Any] | None = None
        self.frames_in = 0
        self.first_denoised_in_at: float | None = None  # wall clock of the first pair holding a denoised frame
        self._started = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source: FrameSource | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle (inside the event loop) ------------------------------------------------------------------------
    async def startup(self, _app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._source = FrameSource(
            self.source_addr,
            self.status_addr,
            self.max_size,
            on_pair=self._pair_from_thread,
            on_status=self._status_from_thread,
            on_event=self._event_from_thread,
        )
        self._source.start()
        self._spawn(self._state_ticker())

    async def shutdown(self, _app: web.Application) -> None:
        """Close every browser's WebSocket first (their handlers would otherwise hold the shutdown up)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(client.ws.close(code=1001, message=b"viewer stopping") for client in list(self.clients)),
            return_exceptions=True,
        )

    async def cleanup(self, _app: web.Application) -> None:
        if self._source is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._source.stop)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- from the ZeroMQ thread ---------------------------------------------------------------------------------
    def _pair_from_thread(self, pair: FramePair) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.publish, pair)

    def _status_from_thread(self, status: dict[str, Any]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(setattr, self, "status", status)

    def _event_from_thread(self, event: dict[str, Any]) -> None:
        event["at"] = time.time()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(setattr, self, "last_event", event)

    def publish(self, pair: FramePair) -> None:
        """A new newest pair: overwrite every browser's pending slot (newest only) and wake its sender."""
        self.newest = pair
        self.frames_in += 1
        if self.first_denoised_in_at is None and pair.denoised is not None:
            self.first_denoised_in_at = time.time()
        for client in self.clients:
            if client.paused:
                continue
            if client.pending is not None:
                client.skipped += 1
            client.pending = pair
            client.wake.set()

    # --- per browser --------------------------------------------------------------------------------------------
    async def sender(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        while not client.ws.closed:
            await client.wake.wait()
            client.wake.clear()
            if client.pending is None or client.credits <= 0:
                continue
            pair, client.pending = client.pending, None
            meta, parts = await loop.run_in_executor(None, render_pair, pair, client.contrast)
            meta["viewer_sent_at"] = time.time()
            head = json.dumps(meta, allow_nan=False, default=_json_default).encode()
            message = b"".join([struct.pack("<I", len(head)), head, *parts])
            client.shown = pair
            client.credits -= 1
            client.sent += 1
            async with client.send_lock:
                if client.ws.closed:
                    return
                await client.ws.send_bytes(message)

    def state(self, client: Client) -> dict[str, Any]:
        now = time.time()
        src = self._source
        last = None if src is None else src.last_frame_at
        last_status = None if src is None else src.last_status_at
        status_stale = None
        if self.status_addr is not None:  # the service's default status interval is 5 s: stale after 3 of them
            since = last_status if last_status is not None else self._started
            status_stale = now - since > STATUS_STALE_AFTER_S
        return {
            "type": "state",
            "time": now,
            "source": self.source_addr,
            "status_address": self.status_addr,
            "frame_age_s": None if last is None else now - last,
            "stale": last is None or now - last > self.stale_after_s,
            "never": last is None,
            "status_stale": status_stale,
            "status": self.status,
            "event": self.last_event,
            "viewer": {
                "received": 0 if src is None else src.received,
                "rejected": 0 if src is None else src.rejected,
                "prepared": self.frames_in,
                "sent": client.sent,
                "skipped": client.skipped,
            },
        }

    async def _state_ticker(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            for client in list(self.clients):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await client.send_json(self.state(client))

    async def handle_message(self, client: Client, text: str) -> None:
        try:
            msg = parse_json_object(text.encode("utf-8", "replace"), "viewer message")
        except ProtocolError as exc:  # not JSON, not an object, nested too deep: answered, never raised
            await client.send_json({"type": "error", "error": f"{exc}; the page sends flat JSON objects"})
            return
        kind = msg.get("type")
        if kind == "ack":
            client.credits = min(CREDITS, client.credits + 1)
            drawn, latency = msg.get("drawn_at"), msg.get("latency_ms")
            if (
                isinstance(drawn, int | float)
                and isinstance(latency, int | float)
                and _finite_number(drawn)
                and _finite_number(latency)
            ):
                client.record_draw(float(drawn), float(latency), msg.get("denoised") is True)
            client.wake.set()
        elif kind == "settings":
            try:
                client.contrast.update(msg)
            except ConfigError as exc:
                await client.send_json({"type": "error", "error": str(exc)})
                return
            if client.pending is None and client.shown is not None:
                client.pending = client.shown  # re-render what is shown with the new settings (also when paused)
            client.wake.set()
        elif kind == "pause":
            client.paused = bool(msg.get("paused"))
            if not client.paused and self.newest is not None:
                client.pending = self.newest
            client.wake.set()
        elif kind == "probe":
            await client.send_json(self.probe(client, msg.get("x"), msg.get("y")))

    def probe(self, client: Client, x: Any, y: Any) -> dict[str, Any]:
        """The full-resolution pixel values under the cursor (in the frame's own units) of the pair shown."""
        pair = client.shown
        out: dict[str, Any] = {"type": "probe", "x": x, "y": y}
        if pair is None or not isinstance(x, int | float) or not isinstance(y, int | float):
            return out
        xi, yi = int(x), int(y)
        h, w = pair.full_shape
        if not (0 <= xi < w and 0 <= yi < h):
            return out
        for channel in pair.channels:
            out[channel.kind] = float(channel.full[yi, xi])
        return out


# --- HTTP ---------------------------------------------------------------------------------------------------------
VIEWER_KEY: web.AppKey[Viewer] = web.AppKey("viewer", Viewer)


def _check_token(request: web.Request) -> None:
    viewer = request.app[VIEWER_KEY]
    if viewer.token is None:
        return
    given = request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), viewer.token.encode()):
        raise web.HTTPForbidden(
            text="403: this viewer is exposed beyond localhost and needs its token: open the URL printed by "
            "`emlive view` (…/?token=...)"
        )


def _security_headers(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; script-src 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"


async def index(request: web.Request) -> web.StreamResponse:
    _check_token(request)
    response = web.FileResponse(STATIC / "index.html")
    _security_headers(response)
    return response


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("app.js", "style.css"):
        raise web.HTTPNotFound()
    response = web.FileResponse(STATIC / name)
    _security_headers(response)
    return response


def is_local_host_header(host: str) -> bool:
    """Whether an HTTP ``Host`` value names this machine by a loopback name: ``localhost``, ``127.0.0.1``,
    ``[::1]`` (any loopback literal), with or without a port. A DNS-rebinding page sends its own name here."""
    try:
        parts = urlsplit(f"//{host}")
        name, _ = parts.hostname, parts.port  # .port raises ValueError on a bad port
    except ValueError:
        return False
    if not name or host.startswith("[") != (":" in name):
        return False
    return is_loopback_host(name)


def _host_guard(loopback_only: bool) -> Any:
    """Middleware: on a loopback bind, refuse requests whose ``Host`` is not a loopback name (DNS rebinding)."""
    refused: set[str] = set()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if loopback_only and not is_local_host_header(request.host):
            if len(refused) < 16 and request.host not in refused:
                refused.add(request.host)
                logger.warning("refused a request for Host %r: this viewer answers localhost only", request.host[:80])
            raise web.HTTPForbidden(
                text="403: this viewer serves this machine only; open it as http://127.0.0.1:PORT/ or "
                "http://localhost:PORT/ (a page reached under another name is refused: DNS rebinding)"
            )
        return await handler(request)

    return guard


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (browsers always send Origin on WebSocket upgrades)
    return urlsplit(origin).netloc == request.host


async def websocket(request: web.Request) -> web.StreamResponse:
    _check_token(request)
    if not _same_origin(request):
        raise web.HTTPForbidden(text=f"403: WebSocket from origin {request.headers.get('Origin')!r} refused")
    viewer = request.app[VIEWER_KEY]
    ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_WS_MESSAGE, heartbeat=10.0, timeout=2.0)
    await ws.prepare(request)
    client = Client(ws)
    viewer.clients.add(client)
    logger.info("browser %s connected (%d connected)", client.id, len(viewer.clients))
    await client.send_json({"type": "hello", "client": client.id, "source": viewer.source_addr})
    if viewer.newest is not None:
        client.pending = viewer.newest
        client.wake.set()
    sender = asyncio.ensure_future(viewer.sender(client))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await viewer.handle_message(client, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        viewer.clients.discard(client)
        client.wake.set()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        logger.info("browser %s disconnected", client.id)
    return ws


async def save(request: web.Request) -> web.StreamResponse:
    """The frame pair a browser shows (``client=ID``; else the newest) as float32 TIFF or 8-bit PNG."""
    _check_token(request)
    viewer = request.app[VIEWER_KEY]
    fmt = request.query.get("format", "tiff")
    if fmt not in ("tiff", "png"):
        raise web.HTTPBadRequest(text=f"format {fmt!r}: use format=tiff (float32, for analysis) or format=png")
    client_id = request.query.get("client")
    client = next((c for c in viewer.clients if c.id == client_id), None)
    pair = client.shown if client is not None and client.shown is not None else viewer.newest
    if pair is None:
        raise web.HTTPServiceUnavailable(text="503: no frame received yet; is the service publishing to the source?")
    contrast = client.contrast if client is not None else Contrast()
    loop = asyncio.get_running_loop()
    if fmt == "tiff":
        body = await loop.run_in_executor(None, pair_tiff, pair)
        ctype, suffix = "image/tiff", "tif"
    else:
        body = await loop.run_in_executor(None, pair_png, pair, contrast)
        ctype, suffix = "image/png", "png"
    safe_acq = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in pair.acquisition)[:80]
    response = web.Response(body=body, content_type=ctype)
    response.headers["Content-Disposition"] = f'attachment; filename="{safe_acq}_{pair.index:06d}.{suffix}"'
    _security_headers(response)
    return response


async def health(request: web.Request) -> web.StreamResponse:
    _check_token(request)
    viewer = request.app[VIEWER_KEY]
    src = viewer._source
    newest = viewer.newest
    return web.json_response(
        {
            "clients": len(viewer.clients),
            "frames": viewer.frames_in,
            "received": 0 if src is None else src.received,
            "started_at": viewer._started,
            "first_denoised_in_at": viewer.first_denoised_in_at,
            "newest": None if newest is None else {"acquisition": newest.acquisition, "index": newest.index},
            "browsers": [c.health() for c in viewer.clients],
            # [published_at, latency_ms, infer_ms, age_ms, flushed] of the service's denoised frames (FrameSource)
            "service_frames": [] if src is None else list(src.service_frames),
        }
    )


async def _no_content(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


def make_app(viewer: Viewer, loopback_only: bool = False) -> web.Application:
    """The aiohttp application; ``loopback_only`` (a loopback bind) refuses requests for other host names."""
    app = web.Application(client_max_size=_MAX_WS_MESSAGE, middlewares=[_host_guard(loopback_only)])
    app[VIEWER_KEY] = viewer
    app.on_startup.append(viewer.startup)
    app.on_shutdown.append(viewer.shutdown)
    app.on_cleanup.append(viewer.cleanup)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/save", save)
    app.router.add_get("/api/health", health)
    app.router.add_get("/favicon.ico", _no_content)
    return app


class ViewerServer:
    """Run the viewer (HTTP + WebSocket + ZeroMQ thread) in a background thread: ``start()`` returns the URL.

    Used by ``emlive view`` (which then waits) and by tests and the benchmark (which drive a browser at it).
    """

    def __init__(
        self,
        source: str,
        status: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_size: int = 1024,
        token: str | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port}: must be 0..65535 (0 picks a free port)")
        if not source.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"source {source!r}: give the service's output address, e.g. tcp://127.0.0.1:5556")
        exposed = not is_loopback_host(host)
        self.loopback_only = not exposed
        self.token = token if token is not None else (secrets.token_urlsafe(16) if exposed else None)
        self.host, self.port = host, port
        self.viewer = Viewer(source, status, max_size, self.token, stale_after_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.bound_port: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        base = f"http://{host}:{self.bound_port}/"
        return base if self.token is None else f"{base}?token={self.token}"

    def start(self, timeout: float = 20.0) -> str:
        self._thread = threading.Thread(target=self._run, name="emlive-viewer-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EmliveError(f"the viewer did not start within {timeout} s")
        if self._error is not None:
            raise ConfigError(f"cannot serve the viewer on {self.host}:{self.port} ({self._error})") from self._error
        return self.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except (OSError, EmliveError) as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown())
        loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(
            make_app(self.viewer, self.loopback_only), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the CLI calls :meth:`stop`)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)
