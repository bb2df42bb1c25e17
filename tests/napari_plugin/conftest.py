"""The napari plugin's tests run real napari viewers and widgets under Xvfb (pytest-xvfb starts it for the
session; offscreen Qt fails with napari here). Without napari, pytest-qt or an X display they skip, saying why."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MISSING = [name for name in ("napari", "pytestqt", "pytest_xvfb") if importlib.util.find_spec(name) is None]
GUI_FIXTURES = {"make_napari_viewer", "qtbot"}


def _skip_reason() -> str | None:
    """Why the GUI tests cannot run here, or None. pytest-xvfb has set DISPLAY by now when it started Xvfb."""
    if MISSING:
        return f"{', '.join(MISSING)} not installed: pip install 'emlive[napari,dev]'"
    if not os.environ.get("DISPLAY"):
        return "no X display: Xvfb is not installed (`make xvfb`, or apt-get install xvfb)"
    return _qt_start_failure()


def _qt_start_failure() -> str | None:
    """Start a QApplication in a child process: Qt aborts the whole process when its xcb platform plugin cannot
    load (a missing X11 library), so find out there rather than in the test session."""
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "Qt did not start within 60 s on this display"
    if done.returncode == 0:
        return None
    tail = " ".join(done.stderr.strip().splitlines()[-2:])
    return f"Qt cannot start on this display (`make xvfb` installs the X11 libraries it needs): {tail}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the GUI tests of this folder skipped before any fixture makes a QApplication (which aborts without a
    display): session fixtures are set up before a test's own, so a skip inside a fixture would come too late."""
    reason = _skip_reason()
    if reason is None:
        return
    for item in items:
        if item.path.is_relative_to(HERE) and GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason=reason))
