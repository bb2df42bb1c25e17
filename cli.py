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
from emlive.core.errors import EmliveError
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
    from emlive.train import cli as train_cli

    for module in (core_cli, train_cli, export_cli, analysis_cli):
        module.register(app)


_register_components()


@app.command("demo")
def demo(
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


def main() -> None:
    """Entry point: runs the app and turns emlive's own errors into one clear line and exit code 2."""
    try:
        app()
    except EmliveError as exc:
        logging.getLogger("emlive").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
