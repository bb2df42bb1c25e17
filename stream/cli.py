"""Subcommands of the live service: ``serve``, ``detector``, ``stream-control`` and ``stream-keys``.

The benchmark is ``python -m emlive.bench.stream_bench`` (the service may not import ``emlive.bench``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from emlive.export.backendnames import backend_help
from emlive.stream.modes import DetectorMode, InputFormat, InputMode, RecordWhat

logger = logging.getLogger(__name__)


def _curve_server(secret: Path | None, clients: Path | None) -> Any:
    from emlive.core.errors import ConfigError
    from emlive.core.protocol import CurveServer

    if secret is None:
        if clients is not None:
            raise ConfigError("--curve-clients needs --curve-secret (the server's secret key file)")
        return None
    return CurveServer(secret, clients)


def _curve_client(server_key: Path | None, client_secret: Path | None) -> Any:
    from emlive.core.errors import ConfigError
    from emlive.core.protocol import CurveClient

    if server_key is None:
        if client_secret is not None:
            raise ConfigError("--curve-client-secret needs --curve-detector-key (the detector's public key file)")
        return None
    return CurveClient(server_key, client_secret)


def _install_signal_handlers(stop: Any) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: shutting down", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def register(app: typer.Typer) -> None:
    """Add this component's subcommands to ``app``."""

    @app.command("serve")
    def serve(
        model: Path = typer.Option(..., "--model", "-m", help="Model file: .ckpt/.pt checkpoint or .onnx export."),
        input_: str = typer.Option(..., "--input", "-i", help="Detector address to connect to, tcp://HOST:PORT."),
        output: str = typer.Option(
            "tcp://127.0.0.1:5556", "--output", "-o", help="Address to publish denoised frames on (PUB)."
        ),
        input_mode: InputMode | None = typer.Option(
            None,
            "--input-mode",
            help="sub: subscribe to a detector PUB; pull: be the one consumer of a detector PUSH (lossless-capable). "
            "Default: pull for the DECTRIS formats and auto (detectors that PUSH), sub for emlive.",
        ),
        input_format: InputFormat = typer.Option(
            InputFormat.emlive,
            "--input-format",
            help="What the detector sends: emlive (emlive/1), dectris-v1 (stream v1), dectris-v2 (stream v2, CBOR) "
            "or auto (detected from the first message).",
        ),
        dectris_channel: str | None = typer.Option(
            None, "--dectris-channel", help="DECTRIS stream v2: the image channel to denoise (default: the first)."
        ),
        lossless: bool = typer.Option(
            False, "--lossless", help="Denoise every frame; a full queue back-pressures the detector (PULL input)."
        ),
        status: str | None = typer.Option(None, "--status", help="Address to publish JSON telemetry on (PUB)."),
        control: str | None = typer.Option(None, "--control", help="Address of the JSON control socket (REP)."),
        record: Path | None = typer.Option(
            None, "--record", help="Record to PATH (.mrc/.tif): one file per acquisition and kind."
        ),
        record_what: RecordWhat = typer.Option(
            RecordWhat.raw,
            "--record-what",
            help="Which frames to record (denoised and both also keep the --uncertainty maps, PATH-ACQ-uncertainty).",
        ),
        record_fsync: bool = typer.Option(
            False, "--record-fsync", help="Force every recorded frame to disk (survives a power cut; slower)."
        ),
        publish_raw: bool = typer.Option(False, "--publish-raw", help="Publish the raw frame beside each output."),
        uncertainty: bool = typer.Option(
            False,
            "--uncertainty",
            help="Also publish each output's std map (kind uncertainty, float32, the input's units); models "
            "trained with network.head=gaussian.",
        ),
        estimate: str | None = typer.Option(
            None,
            "--estimate",
            help="Models trained with network.head=gaussian: posterior (the default when the card has a noise model: "
            "the re-opened blind spot) or blind.",
        ),
        bind_any: bool = typer.Option(
            False, "--bind-any", help="Allow binding to non-loopback addresses (use CURVE keys on open networks)."
        ),
        backend: str = typer.Option("auto", "--backend", help=backend_help("Inference backend:")),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for inference (per worker)."),
        workers: int = typer.Option(
            1, "--workers", help="Inference worker processes, each with its own engine, merged in order (1: in the "
            "service; no live model swap with more). docs/scaling.md.",
        ),
        worker_devices: str | None = typer.Option(
            None, "--worker-devices", help="GPUs of the workers, e.g. 0,1: worker k gets CUDA_VISIBLE_DEVICES of "
            "entry k mod the count (default: all see what the service sees).",
        ),
        tile: int | None = typer.Option(None, "--tile", help="Tile size for large frames (runtime default if unset)."),
        queue_size: int = typer.Option(
            32, "--queue", help="Input queue bound in messages (also bounded in bytes by --memory-budget)."
        ),
        memory_budget: str = typer.Option(
            "auto",
            "--memory-budget",
            help="Bytes the service may hold for frames (e.g. 512MiB, 4GiB; auto: a quarter of the RAM, 1-16 GiB): "
            "a quarter bounds the input queue; frame sizes that need more than half are rejected.",
        ),
        drain: float = typer.Option(
            2.0, "--drain", help="--lossless stop: seconds to keep taking what the input socket already holds."
        ),
        hwm: int = typer.Option(8, "--hwm", help="ZeroMQ high-water mark of the input socket (messages)."),
        output_hwm: int = typer.Option(
            32, "--output-hwm", help="High-water mark of the output PUB, per subscriber (messages)."
        ),
        status_interval: float = typer.Option(5.0, "--status-interval", help="Seconds between telemetry lines."),
        curve_secret: Path | None = typer.Option(
            None, "--curve-secret", help="CURVE: this service's secret key file, for the sockets it binds."
        ),
        curve_clients: Path | None = typer.Option(
            None, "--curve-clients", help="CURVE: folder of client public keys allowed to connect (else any)."
        ),
        curve_detector_key: Path | None = typer.Option(
            None, "--curve-detector-key", help="CURVE: the detector's public key file, for the input connection."
        ),
        curve_client_secret: Path | None = typer.Option(
            None, "--curve-client-secret", help="CURVE: this service's client secret key for the input connection."
        ),
    ) -> None:
        """Denoise a live detector stream: frames in over ZeroMQ, denoised frames out on a PUB socket.

        Once serving, prints one JSON line on stdout: {"ready": true, "endpoints": {...}} (the real ports when
        an address asks for port 0). SIGINT/SIGTERM shut down cleanly: every message already received is
        denoised, published and recorded (with --lossless, what the input socket holds is drained first, up to
        --drain seconds), the window is flushed, the recording closed. Protocol: docs/protocol.md."""
        from emlive.stream.budget import parse_bytes
        from emlive.stream.service import DenoiseService, ServiceConfig

        config = ServiceConfig(
            model=model,
            input=input_,
            output=output,
            input_mode=input_mode or (InputMode.sub if input_format is InputFormat.emlive else InputMode.pull),
            input_format=input_format,  # validated by ServiceConfig.validate
            dectris_channel=dectris_channel,
            lossless=lossless,
            status=status,
            control=control,
            record=record,
            record_what=record_what,
            record_fsync=record_fsync,
            publish_raw=publish_raw,
            uncertainty=uncertainty,
            estimate=estimate,
            bind_any=bind_any,
            backend=backend,
            threads=threads,
            workers=workers,
            worker_devices=tuple(d.strip() for d in (worker_devices or "").split(",") if d.strip()),
            tile=tile,
            queue_size=queue_size,
            memory_budget=parse_bytes(memory_budget),
            drain_s=drain,
            hwm=hwm,
            output_hwm=output_hwm,
            status_interval_s=status_interval,
            curve_server=_curve_server(curve_secret, curve_clients),
            curve_client=_curve_client(curve_detector_key, curve_client_secret),
            freeze_gc=True,  # a process of its own: no full scans of the loaded objects (emlive.stream.gcpauses)
        )
        service = DenoiseService(config)
        _install_signal_handlers(service.request_stop)
        service.start()
        typer.echo(json.dumps({"ready": True, "endpoints": service.endpoints, "pid": os.getpid()}))
        service.run()

    @app.command("detector")
    def detector(
        source: str = typer.Option(
            "synthetic", "--source", "-s", help="Movie file or folder (any format emlive reads), or 'synthetic'."
        ),
        fps: float = typer.Option(10.0, "--fps", help="Frames per second (0: as fast as possible)."),
        output: str = typer.Option("tcp://127.0.0.1:5555", "--output", "-o", help="Address to bind."),
        mode: DetectorMode = typer.Option(
            DetectorMode.pub, "--mode", help="pub (XPUB, SUB clients) or push (one PULL consumer)."
        ),
        loop: bool = typer.Option(False, "--loop", help="Send the movie again and again (new acquisition each pass)."),
        continuous: bool = typer.Option(
            False, "--continuous", help="With --loop: one endless acquisition, the movie played forward and back."
        ),
        frames: int | None = typer.Option(None, "--frames", help="Stop after this many frames in total."),
        acquisition: str | None = typer.Option(None, "--acquisition", help="Acquisition id (default: acq-<time>)."),
        malformed_every: int = typer.Option(0, "--malformed-every", help="Send a malformed message every K frames."),
        wait_subscribers: int = typer.Option(
            0, "--wait-subscribers", help="PUB mode: wait for this many subscribers before the first frame."
        ),
        size: int = typer.Option(256, "--size", help="Synthetic source: frame size (square)."),
        synthetic_frames: int = typer.Option(64, "--synthetic-frames", help="Synthetic source: frames per pass."),
        dose: float = typer.Option(5.0, "--dose", help="Synthetic source: dose in e-/px/frame."),
        seed: int = typer.Option(0, "--seed", help="Synthetic source: random seed."),
        hwm: int = typer.Option(16, "--hwm", help="Send high-water mark (messages)."),
        bind_any: bool = typer.Option(False, "--bind-any", help="Allow binding to non-loopback addresses."),
        curve_secret: Path | None = typer.Option(None, "--curve-secret", help="CURVE: this detector's secret key."),
        curve_clients: Path | None = typer.Option(None, "--curve-clients", help="CURVE: allowed client keys folder."),
    ) -> None:
        """Simulate a detector: send a movie (or synthetic frames) as emlive/1 messages at a steady rate.

        Prints one JSON line on stdout once bound: {"ready": true, "endpoint": "tcp://..."}."""
        from emlive.stream.detector import DetectorConfig, DetectorSimulator

        config = DetectorConfig(
            source=source,
            output=output,
            fps=fps,
            mode=mode,  # validated by DetectorConfig.validate
            loop=loop,
            continuous=continuous,
            frames=frames,
            acquisition=acquisition,
            malformed_every=malformed_every,
            wait_subscribers=wait_subscribers,
            size=size,
            synthetic_frames=synthetic_frames,
            dose=dose,
            seed=seed,
            hwm=hwm,
            bind_any=bind_any,
            curve_server=_curve_server(curve_secret, curve_clients),
        )
        sim = DetectorSimulator(config)
        _install_signal_handlers(sim.request_stop)
        endpoint = sim.open()
        typer.echo(json.dumps({"ready": True, "endpoint": endpoint, "pid": os.getpid()}))
        sim.run()

    @app.command("stream-control")
    def stream_control(
        command: str = typer.Argument(..., help="status, stop or load_model."),
        control: str = typer.Option("tcp://127.0.0.1:5558", "--control", "-c", help="The service's control address."),
        path: Path | None = typer.Option(None, "--path", help="load_model: the new model file."),
        timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for the reply."),
    ) -> None:
        """Send a command to a running `emlive serve --control ...` and print its JSON reply."""
        from emlive.stream.service import control_request

        request: dict[str, Any] = {"cmd": command}
        if path is not None:
            request["path"] = str(path.resolve())
        reply = control_request(control, request, int(timeout * 1e3))
        typer.echo(json.dumps(reply, indent=2))
        if not reply.get("ok"):
            raise typer.Exit(1)

    @app.command("stream-keys")
    def stream_keys(
        folder: Path = typer.Option(Path("keys"), "--out", "-o", help="Folder for the key files."),
        name: str = typer.Option("server", "--name", help="Key pair name: NAME.key (public), NAME.key_secret."),
    ) -> None:
        """Create a CURVE key pair for encrypted, authenticated links (--curve-secret / --curve-detector-key)."""
        from emlive.core.protocol import create_keys

        public, secret = create_keys(folder, name)
        typer.echo(f"public key (give to peers): {public}\nsecret key (keep private): {secret}")
