"""The Train widget clicked in a real napari viewer: Noise stats fills the blind spot from the heatmap's
recommendation, Train runs a tiny training with a live loss curve, and Cancel stops it cleanly (model.pt written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed: pip install 'emlive[napari]'")
pytest.importorskip("lightning", reason="the Train widget needs the training stack: pip install 'emlive[train]'")

from qtpy.QtCore import Qt

from emlive.core.errors import ConfigError
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.napari_plugin.train_widget import TrainWidget, parse_overrides

pytestmark = pytest.mark.timeout(240)

# tests/train/test_train_e2e.py's TINY settings: seconds per run
TINY = (
    "network.width=8 network.scales=3 network.blocks=1 data.crop_size=32 data.val_crop_size=32 optim.batch_size=4 "
    "optim.recursive_factor=1 optim.max_minutes=null"
)


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detector noise correlated over 3 x 3 pixels (charge sharing): noise-stats must recommend a 3 x 3 blind spot."""
    config = SimulationConfig(height=96, width=96, frames=12, dose=20.0, seed=3, correlated_noise="isotropic")
    return write_simulation(config, tmp_path_factory.mktemp("movie")).noisy


def test_noise_stats_then_train_then_cancel(make_napari_viewer, qtbot, movie: Path, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.open(movie, plugin="emlive")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    assert widget.config_box.currentText() == "synthetic-small"
    assert (widget.blind_h.value(), widget.blind_w.value()) == (1, 1)

    qtbot.mouseClick(widget.noise_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.noise is not None, timeout=60_000)
    assert widget.noise.decision.blind_spot == (3, 3)
    assert (widget.blind_h.value(), widget.blind_w.value()) == (3, 3)  # the recommendation filled the fields
    assert widget.plot is not None and widget.plot.heat_ax.images  # the heatmap is drawn
    assert "3 x 3" in widget.status_label.text()

    # one training run shows all of it (a run costs seconds of setup): the live curve, then a clean cancel
    widget.output_edit.setText(str(tmp_path / "runs"))
    widget.overrides_edit.setText(f"{TINY} optim.epochs=500 output.version=cancelled")
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert widget.cancel_button.isEnabled() and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: len(widget.plot.epochs) >= 1, timeout=180_000)  # a validation loss: an epoch is done
    assert widget.result is None  # still training: the curve is drawn live
    steps_per_epoch = widget.plot.epochs[0][0]
    assert steps_per_epoch > 0 and widget.progress.maximum() == 500 * steps_per_epoch
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=120_000)
    stopped = widget.result
    steps = stopped.card.training.steps
    assert steps_per_epoch <= steps < 10 * steps_per_epoch  # stopped soon after Cancel, not after 500 epochs
    assert [s for s, _ in widget.plot.steps] == list(range(1, steps + 1))  # every step's loss reached the curve
    assert np.isfinite([loss for _, loss in widget.plot.steps]).all()
    assert stopped.model.is_file() and stopped.model.parent == tmp_path / "runs" / "synthetic" / "cancelled"
    assert stopped.card.network.blind_spot == (3, 3)  # the recommendation went into the training
    assert widget.status_label.text().startswith("cancelled")
    qtbot.waitUntil(lambda: widget.train_button.isEnabled(), timeout=10_000)


def test_overrides_are_parsed_like_the_command_line_and_errors_name_the_item() -> None:
    items = parse_overrides("optim.epochs=5  'output.experiment=my run'")
    assert items == ["optim.epochs=5", "output.experiment=my run"]
    with pytest.raises(ConfigError, match=r"'optim\.epochs' has no '='.*section\.key=value"):
        parse_overrides("optim.epochs")
    with pytest.raises(ConfigError, match="quotation"):
        parse_overrides("output.experiment='unclosed")
