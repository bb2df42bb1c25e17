"""The Denoise widget clicked in a real napari viewer: Cancel, then bit-for-bit equality with ``emlive denoise`` on
the same file, the result layer's geometry, and the README's screenshot (raw and denoised side by side, widget
docked)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari", reason="the napari extra is not installed: pip install 'emlive[napari]'")
pytest.importorskip("torch", reason="the shipped .pt model needs the training stack: pip install 'emlive[train]'")

from qtpy.QtCore import Qt
from typer.testing import CliRunner

from emlive.cli import app
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.napari_plugin.denoise_widget import DenoiseWidget, backend_choices
from emlive.napari_plugin.sample import shipped_model

pytestmark = pytest.mark.timeout(180)

START, STOP = 2, 6  # frames denoised (a range inside the movie: its windows read frames around it)


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated 10-frame 192 x 256 movie as a TIFF with its pixel size (0.05 nm)."""
    config = SimulationConfig(height=192, width=256, frames=10, dose=5.0, seed=5)
    return write_simulation(config, tmp_path_factory.mktemp("movie")).noisy


def _cli_denoise(movie: Path, out: Path) -> np.ndarray:
    args = ["denoise", str(movie), "-o", str(out), "--model", str(shipped_model()), "--frames", f"{START}:{STOP}"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return tifffile.imread(out)


def test_widget_cancels_then_matches_emlive_denoise_bit_for_bit(
    make_napari_viewer, qtbot, movie: Path, tmp_path: Path
) -> None:
    expected = _cli_denoise(movie, tmp_path / "cli.tif")
    viewer = make_napari_viewer()
    (raw,) = viewer.open(movie, plugin="emlive")
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Denoise")
    assert widget.model_edit.text() == str(shipped_model())
    assert [widget.backend_box.itemText(i) for i in range(widget.backend_box.count())] == backend_choices(
        shipped_model()
    )
    assert widget.layer_box.currentText() == raw.name and widget.stop_box.value() == 10

    # Cancel: stops between two frames and adds nothing (one viewer for both checks: a viewer takes seconds)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    assert widget.cancel_button.isEnabled() and not widget.run_button.isEnabled()
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=60_000)
    assert widget.result_layer is None and len(viewer.layers) == 1
    assert widget.progress.value() < 10 and widget.status_label.text().startswith("cancelled")

    widget.start_box.setValue(START)
    widget.stop_box.setValue(STOP)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.result_layer is not None, timeout=120_000)
    result = widget.result_layer
    assert result.data.dtype == np.float32 == expected.dtype
    assert np.array_equal(result.data, expected)  # bit for bit, not approximately
    np.testing.assert_allclose(result.scale, raw.scale)
    assert result.scale[1] == pytest.approx(0.05) and result.translate[0] == START
    assert widget.progress.value() == STOP - START
    assert (widget.start_box.value(), widget.stop_box.value()) == (START, STOP)  # kept when the result came
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)

    # the README's picture: raw and denoised side by side (grid mode), the Denoise widget docked
    viewer.window._qt_window.resize(1500, 820)
    viewer.grid.enabled = True
    viewer.dims.set_point(0, START + 1)
    viewer.reset_view()
    viewer.camera.zoom *= 1.5  # the frames fill the canvas
    shot = Path(os.environ.get("EMLIVE_NAPARI_SCREENSHOT") or tmp_path / "napari.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    image = viewer.screenshot(str(shot), canvas_only=False)
    assert shot.is_file() and image.shape[0] > 300 and image.shape[1] > 600
