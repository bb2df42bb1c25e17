"""The ``emlive`` command run in the test's process, as its console script runs it (``emlive.cli:main``)."""

from __future__ import annotations

import sys

import pytest

from emlive.cli import main


def run_emlive(*args: str) -> int:
    """``emlive ARGS...``: its exit code (0, or a SystemExit's: 2 for emlive's own one-line errors)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["emlive", *args])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0
