"""Headless Chromium settings shared by the viewer's browser tests and its benchmark.

Debian's Chromium (``apt-get install chromium``, ``make browser``) driven by Playwright; never a browser download.
The flags keep it off the network: this machine's closed network refuses Chromium's background connections.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
