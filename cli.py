"""The ``emlive`` command: a thin layer over the components' Python APIs.

Each component owns the module that defines its subcommands (``emlive.<component>.cli``) and exposes
``register(app)``; the heavy imports happen inside the commands, so ``emlive --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from emlive import __version__
from emlive.core.cli import CorrelatedChoice
from emlive.core.errors import EmliveError, missing_training_package, training_stack_error
from emlive.core.logs import setup_logging

app = typer.Typer(
    name="emlive",
    help=(
        "Live self-supervised denoising for in-situ electron microscopy. Train a blind-spot network on your "
        "own noisy movies, export it, and denoise recorded data or a live detector stream."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"emlive {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)


def _register_components() -> None:
    from emlive.analysis import cli as analysis_cli
    from emlive.core import cli as core_cli
    from emlive.export import cli as export_cli
    from emlive.stream import cli as stream_cli
    from emlive.train import cli as train_cli
    from emlive.viewer import cli as viewer_cli

    for module in (core_cli, train_cli, export_cli, analysis_cli, stream_cli, viewer_cli):
        module.register(app)


_register_components()


@app.command("demo")
def demo(
    model: Path | None = typer.Option(None, "--model", "-m", help="Model to serve (default: the shipped one)."),
    source: str = typer.Option(
        "synthetic", "--source", "-s", help="Movie file/folder to stream, or 'synthetic' (env DEMO_SOURCE in make)."
    ),
    fps: float | None = typer.Option(
        None,
        "--fps",
        help="Detector frame rate (default: 25, a camera's); the service skips what it cannot keep up with.",
    ),
    size: int = typer.Option(512, "--size", help="Synthetic frame size (pixels)."),
    port: int = typer.Option(8000, "--port", "-p", help="Port of the viewer page (0: any free port)."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads for inference (default: the CPUs less one, for the viewer and browser)."
    ),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds (default: Ctrl-C)."),
) -> None:
    """The live demo: a simulated detector streams an in-situ movie, `emlive serve` denoises it with the shipped
    CPU-live student model and `emlive view` shows raw and denoised frames side by side in your browser. Ctrl-C
    (or SIGTERM, SIGHUP) stops all three; if one of them stops, the demo stops the others and exits with code 2."""
    from emlive.demo import DEMO_FPS, LiveDemo, default_model, run_live_demo

    live = LiveDemo(
        model or default_model(),
        source=source,
        fps=DEMO_FPS if fps is None else fps,
        size=size,
        port=port,
        threads=threads,
    )
    run_live_demo(
        live, duration, lambda url: typer.echo(f"\n  emlive live demo: open {url} in a browser (Ctrl-C stops)\n")
    )


@app.command("demo-offline")
def demo_offline(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for the movie, the model and the results."),
    size: int = typer.Option(512, help="Frame size in pixels (square)."),
    frames: int = typer.Option(64, help="Number of frames to simulate."),
    dose: float = typer.Option(5.0, help="Electron dose in e-/px/frame."),
    overrides: list[str] = typer.Argument(None, help="Training overrides, e.g. optim.epochs=2."),
) -> None:
    """Simulate a noisy in-situ movie, train the synthetic-small model on it, denoise it and print
    PSNR/SSIM of the raw movie, the 5-frame average, the best Gaussian filter and the model."""
    from emlive.demo import run_offline_demo

    scores = run_offline_demo(out, size=size, frames=frames, dose=dose, overrides=list(overrides or []))
    typer.echo(f"{'method':<32} {'PSNR [dB]':>10} {'SSIM':>8}")
    for s in scores:
        typer.echo(f"{s.method:<32} {s.psnr:>10.2f} {s.ssim:>8.4f}")
    typer.echo(f"before/after picture: {out / 'before_after.png'}")


@app.command("bench-quality")
def bench_quality(
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model to score, repeatable: PATH or LABEL=PATH (checkpoint or .onnx), optionally ending in @flips or "
        "@dihedral (a self-ensemble of 4 or 8 flips/rotations), e.g. "
        "-m 'teacher x8=models/synthetic-small.pt@dihedral'. Rows are labelled by LABEL or the card's name. "
        "Default: -m teacher=models/synthetic-small.pt -m student=models/cpu-live-student.pt. In a sweep "
        "(--doses/--modes): no default, and -m LABEL@DOSE/MODE=PATH scores a model at that setting only.",
    ),
    out: Path = typer.Option(Path("bench_out/quality"), "--out", "-o", help="Folder for quality.json/.png."),
    size: int = typer.Option(512, help="Frame size of the held-out simulated movie."),
    frames: int = typer.Option(64, help="Frames of the held-out movie."),
    dose: float = typer.Option(5.0, help="Dose in e-/px/frame."),
    correlated: CorrelatedChoice = typer.Option(
        CorrelatedChoice.NONE, help="Correlated detector noise of the held-out movie (as `emlive simulate`)."
    ),
    eval_frames: int = typer.Option(8, help="Frames scored (BM3D is slow: about 10 s per 512x512 frame)."),
    no_bm3d: bool = typer.Option(False, "--no-bm3d", help="Skip BM3D."),
    seed: int = typer.Option(1001, help="Simulation seed; use one the model was not trained on."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend of every model (default: auto)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads; default: physical cores."),
    doses: list[str] = typer.Option(
        None, "--doses", help="Dose sweep (e-/px/frame), comma-separated or repeated, e.g. --doses 0.5,5,20,100."
    ),
    modes: list[str] = typer.Option(
        None, "--modes", help="Detector modes of the sweep: counting,integrating (comma-separated or repeated)."
    ),
    train_steps: int | None = typer.Option(None, "--train-steps", help="Sweep: train blind/oracle models, N steps."),
    train_minutes: float | None = typer.Option(None, "--train-minutes", help="Sweep: training budget in minutes."),
    train_config: str = typer.Option("synthetic-small", "--train-config", help="Sweep: config of trained models."),
    train_set: list[str] = typer.Option(None, "--train-set", help="Sweep: a training override, e.g. network.width=32."),
) -> None:
    """Score each model (default: the shipped teacher and CPU-live student) against raw, 5-frame average, oracle
    Gaussian and BM3D on a held-out simulated movie with known ground truth, one row each (paper PSNR/SSIM,
    fixed-range variants, Pearson r with the truth). Writes quality.json (per-frame values too) and quality.png.
    With --doses/--modes: the dose curve over settings (emlive.bench.dose_sweep: models per setting with
    -m LABEL@DOSE/MODE=PATH, or trained by the benchmark with --train-steps/--train-minutes; dose_curve.png,
    quality.md)."""
    from emlive.bench.model_specs import parse_model_specs
    from emlive.bench.quality import format_table, run_quality_benchmark
    from emlive.core.simulate import CorrelatedNoise

    if doses or modes or train_steps or train_minutes:
        from emlive.bench.dose_sweep import sweep_from_cli

        sweep = sweep_from_cli(
            doses or [str(dose)], modes or ["counting"], correlated.value, model or [], out,
            size=size, frames=frames, eval_frames=eval_frames, seed=seed, bm3d=not no_bm3d, train_steps=train_steps,
            train_minutes=train_minutes, train_config=train_config, train_overrides=train_set or [],
            backend=backend, threads=threads,
        )  # fmt: skip
        for line in sweep:
            typer.echo(line)
        return
    specs = parse_model_specs(model or None)
    rows = run_quality_benchmark(
        specs,
        out,
        size,
        frames,
        dose,
        CorrelatedNoise(correlated.value),
        eval_frames,
        not no_bm3d,
        seed,
        backend,
        threads,
    )
    for line in format_table(rows):
        typer.echo(line)


def main() -> None:
    """Entry point: runs the app and turns emlive's own errors, and a command that needs the training stack on the
    light install (no torch), into one clear line and exit code 2."""
    try:
        app()
    except EmliveError as exc:
        logging.getLogger("emlive").error("%s", exc)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        missing = missing_training_package(exc)
        if missing is None:
            raise
        command = " ".join(["emlive", *sys.argv[1:2]])
        logging.getLogger("emlive").error("%s", training_stack_error(command, [missing]))
        sys.exit(2)


if __name__ == "__main__":
    main()
