"""The ``emlive`` command: a thin layer over the components' Python APIs.

Each component owns the module that defines its subcommands (``emlive.<component>.cli``) and exposes
``register(app)``; the heavy imports happen inside the commands, so ``emlive --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys

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


def main() -> None:
    """Entry point: runs the app and turns emlive's own errors into one clear line and exit code 2."""
    try:
        app()
    except EmliveError as exc:
        logging.getLogger("emlive").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
