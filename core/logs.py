"""Logging set-up shared by every command."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once: INFO (DEBUG with ``verbose``) to stderr with a timestamp."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("matplotlib", "PIL", "numba", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
