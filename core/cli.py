"""Subcommands of this component, registered on the root ``emlive`` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this component's subcommands to ``app``."""
