"""The Train widget: noise statistics and the blind spot they call for, then training with a live loss curve.

* **Noise stats** runs :func:`emlive.analysis.noise_stats.estimate_noise` (what ``emlive noise-stats`` runs) on the
  chosen layer's movie in a worker thread, draws the noise correlation heatmap with the recommended blind-spot
  window, and fills the blind-spot fields with the recommendation.
* **Train** runs :func:`emlive.train.api.train` (what ``emlive train`` runs) in a worker thread on the layer's
  source file (a layer without a file, e.g. the sample movie, is first written to ``<output>/<layer>.tif``), with
  the chosen config (a shipped name or a YAML file), the blind spot, and any ``section.key=value`` overrides. A
  Lightning callback reports every step's loss (the curve redraws live, validation loss per epoch) and the
  progress; **Cancel** sets ``trainer.should_stop``, so the run ends cleanly after the current step with its
  checkpoints, model.pt and curves written.

Needs the training stack (``pip install 'emlive[train]'``); without it the buttons say so. This module imports
neither torch nor Lightning itself, so napari can list the widget on a light install.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import FunctionWorker, thread_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from emlive.core.errors import ConfigError, EmliveError, require_training_stack
from emlive.napari_plugin.reader import PIXEL_KEY
from emlive.napari_plugin.widgets import LayerChooser, RunStatus, layer_movie, source_path

logger = logging.getLogger(__name__)

MAX_BLIND_SPOT = 15  # the largest odd window the network builds (emlive.core.network)
NOISE_MAX_SIDE = 512  # px: noise-stats looks at a centre crop of at most this size (speed on big frames)


def shipped_config_names() -> list[str]:
    """The shipped training configs by name (``emlive train --config NAME``)."""
    from emlive.train.config import shipped_configs  # the train extra; imports no torch

    return [path.stem for path in shipped_configs()]


class TrainSignals(QObject):
    """What the training thread reports; Qt delivers each signal in the GUI thread."""

    started = Signal(int)  # total steps
    step = Signal(int, float)  # global step, training loss
    epoch = Signal(int, float)  # epoch, validation loss (nan when not measured)


def make_callback(signals: TrainSignals, stop: threading.Event) -> Any:
    """A Lightning callback that reports progress and loss through ``signals`` and stops once ``stop`` is set."""
    from lightning.pytorch.callbacks import Callback

    class WidgetCallback(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            total = trainer.estimated_stepping_batches
            signals.started.emit(int(total) if math.isfinite(total) else 0)
            trainer.should_stop = trainer.should_stop or stop.is_set()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                signals.step.emit(int(trainer.global_step), float(loss.detach()))
            if stop.is_set():
                trainer.should_stop = True

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get("val/loss")
            signals.epoch.emit(int(trainer.current_epoch), math.nan if value is None else float(value))

    return WidgetCallback()


def parse_overrides(text: str) -> list[str]:
    """``section.key=value`` overrides separated by spaces (shell quoting for values with spaces)."""
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"overrides {text!r}: {exc}; write section.key=value items separated by spaces") from exc
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ConfigError(f"override {bad[0]!r} has no '=': write section.key=value, e.g. optim.epochs=5")
    return items


def run_training(config: str, overrides: list[str], callback: Any) -> Any:
    """Load ``config`` with ``overrides`` and train (the worker's function); returns the TrainResult."""
    from emlive.train.api import train
    from emlive.train.config import load_config

    cfg = load_config(config, overrides)
    return train(cfg, callbacks=[callback])


class LossPlot:
    """An embedded matplotlib figure: the noise correlation heatmap (left) and the loss curve (right)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(6, 2.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.heat_ax, self.loss_ax = self.figure.subplots(1, 2)
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[tuple[int, float]] = []
        self.heat_ax.set_title("noise correlation", fontsize=9)
        self.loss_ax.set_title("loss", fontsize=9)

    def heatmap(self, correlation: np.ndarray, blind_spot: tuple[int, int]) -> None:
        from matplotlib.patches import Rectangle

        m = correlation.shape[0] // 2
        ax = self.heat_ax
        ax.clear()
        image = correlation.copy()
        image[m, m] = np.nan  # the centre is 1 by definition: leave it out of the colour scale
        limit = max(float(np.nanmax(np.abs(image))), 0.1)
        ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=(-m - 0.5, m + 0.5, m + 0.5, -m - 0.5))
        h, w = blind_spot
        ax.add_patch(Rectangle((-w / 2, -h / 2), w, h, fill=False, edgecolor="black", linewidth=1.2))
        ax.set_title(f"noise correlation, blind spot {h} x {w}", fontsize=9)
        ax.set_xlabel("dx (px)", fontsize=8)
        ax.set_ylabel("dy (px)", fontsize=8)
        self.canvas.draw_idle()

    def reset(self) -> None:
        self.steps, self.epochs = [], []
        self.redraw()

    def add_step(self, step: int, loss: float) -> None:
        self.steps.append((step, loss))
        self.redraw()

    def add_epoch(self, step: int, val_loss: float) -> None:
        self.epochs.append((step, val_loss))
        self.redraw()

    def redraw(self) -> None:
        ax = self.loss_ax
        ax.clear()
        if self.steps:
            ax.plot(*zip(*self.steps, strict=True), color="tab:blue", linewidth=1, label="train")
        if self.epochs:
            ax.plot(*zip(*self.epochs, strict=True), "o-", color="tab:orange", label="validation")
        if self.steps or self.epochs:
            ax.legend(fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        ax.set_title("loss", fontsize=9)
        self.canvas.draw_idle()


class TrainWidget(QWidget):
    """Noise statistics, blind spot and training of an emlive model on a movie layer (the dock widget ``Train``)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.noise_worker: FunctionWorker | None = None
        self.train_worker: FunctionWorker | None = None
        self.noise: Any | None = None  # the last NoiseEstimate
        self.result: Any | None = None  # the last TrainResult
        self._stop = threading.Event()
        self.signals = TrainSignals()
        self.config_box = QComboBox()
        self.config_box.setEditable(True)  # a shipped name, or the path of a YAML file
        self.layer_box = LayerChooser(napari_viewer)
        self.blind_h, self.blind_w = self._odd_box(), self._odd_box()
        self.overrides_edit = QLineEdit()
        self.overrides_edit.setPlaceholderText("section.key=value …, e.g. optim.epochs=5")
        self.output_edit = QLineEdit("runs")
        self.noise_button, self.train_button = QPushButton("Noise stats"), QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.progress, self.status_label = QProgressBar(), QLabel("")
        self.status = RunStatus(self.progress, self.status_label)
        self.plot = self._make_plot()
        self._build()
        self._fill_configs()
        self.noise_button.clicked.connect(self.noise_stats)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.signals.started.connect(lambda total: self.status.start(total, f"training: {total} steps"))
        self.signals.step.connect(self._step)
        self.signals.epoch.connect(self._epoch)
        self._last_step = 0

    @staticmethod
    def _odd_box() -> QSpinBox:
        box = QSpinBox()
        box.setRange(1, MAX_BLIND_SPOT)
        box.setSingleStep(2)
        box.setValue(1)
        return box

    def _make_plot(self) -> LossPlot | None:
        try:
            return LossPlot()
        except ImportError as exc:
            logger.warning("no loss curve or heatmap (%s): pip install 'emlive[train]' brings matplotlib", exc)
            return None

    def _browse_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "training config", "", "Training configs (*.yaml *.yml)")
        if path:
            self.config_box.setCurrentText(path)

    def _build(self) -> None:
        config = QHBoxLayout()
        config.addWidget(self.config_box, 1)
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_config)
        config.addWidget(browse)
        blind = QHBoxLayout()
        blind.addWidget(self.blind_h)
        blind.addWidget(QLabel("x"))
        blind.addWidget(self.blind_w)
        form = QFormLayout()
        form.addRow("config", config)
        form.addRow("movie layer", self.layer_box)
        form.addRow("blind spot (h x w)", blind)
        form.addRow("overrides", self.overrides_edit)
        form.addRow("output folder", self.output_edit)
        buttons = QHBoxLayout()
        for button in (self.noise_button, self.train_button, self.cancel_button):
            buttons.addWidget(button)
        self.cancel_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        self.status_label.setWordWrap(True)
        if self.plot is not None:
            layout.addWidget(self.plot.canvas)

    def _fill_configs(self) -> None:
        try:
            names = shipped_config_names()
        except ImportError as exc:
            self.status.say(f"training needs the training stack ({exc}): pip install 'emlive[train]'")
            return
        self.config_box.addItems(names)
        if "synthetic-small" in names:
            self.config_box.setCurrentText("synthetic-small")

    # --- noise statistics ------------------------------------------------------------------------------------
    def noise_stats(self) -> None:
        """Measure the chosen layer's noise correlation in a worker; the result fills the blind-spot fields."""
        from emlive.analysis.noise_stats import estimate_noise

        layer = self.layer_box.layer()
        if layer is None:
            self.status.say("no image layer: open a movie first")
            return
        try:
            movie = layer_movie(layer)
        except EmliveError as exc:
            self.status.failed(exc)
            return

        def measure() -> Any:
            with movie:
                return estimate_noise(movie, max_side=NOISE_MAX_SIDE)

        self.status.start(0, f"measuring the noise of {layer.name} …")
        worker = thread_worker(measure, start_thread=False)()
        worker.returned.connect(self._noise_done)
        worker.errored.connect(self.status.failed)
        worker.finished.connect(lambda: self.noise_button.setEnabled(True))
        self.noise_worker = worker
        self.noise_button.setEnabled(False)
        worker.start()

    def _noise_done(self, estimate: Any) -> None:
        self.noise = estimate
        decision = estimate.decision
        h, w = decision.blind_spot
        self.blind_h.setValue(h)
        self.blind_w.setValue(w)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.say(
            f"recommended blind spot {h} x {w} (confidence {decision.confidence:.3f}, {decision.label}) from "
            f"{estimate.correlation.pairs} frame pair(s)"
        )
        if self.plot is not None:
            self.plot.heatmap(estimate.correlation.correlation, (h, w))

    # --- training -------------------------------------------------------------------------------------------
    def _training_file(self, layer: Any, output: Path) -> Path:
        """The layer's movie file; a layer without one is written to ``output/<layer name>.tif`` first."""
        path = source_path(layer)
        if path is not None and path.exists():
            return path
        from emlive.core.writers import write_movie

        name = re.sub(r"[^A-Za-z0-9._-]+", "_", layer.name).strip("_") or "movie"
        output.mkdir(parents=True, exist_ok=True)
        data = np.asarray(layer.data)
        return write_movie(output / f"{name}.tif", data, layer.metadata.get(PIXEL_KEY))

    def overrides(self, movie: Path) -> list[str]:
        """The config overrides of this run: the movie, no clean twin, the blind spot, the output, then the user's."""
        h, w = self.blind_h.value(), self.blind_w.value()
        for name, value in (("height", h), ("width", w)):
            if value % 2 == 0:
                raise ConfigError(f"blind spot {name} {value}: the blind window must be odd (1, 3, 5 … 15)")
        return [
            f"data.train={movie}",
            "data.clean=null",
            f"network.blind_spot=[{h},{w}]",
            f"output.root={self.output_edit.text() or 'runs'}",
            *parse_overrides(self.overrides_edit.text()),
        ]

    def train(self) -> None:
        """Train on the chosen layer's movie in a worker thread (progress and loss curve live)."""
        layer = self.layer_box.layer()
        if layer is None:
            self.status.say("no image layer: open a movie first")
            return
        try:
            require_training_stack("the Train widget", ("torch", "lightning"))
            movie = self._training_file(layer, Path(self.output_edit.text() or "runs"))
            overrides = self.overrides(movie)
        except EmliveError as exc:
            self.status.failed(exc)
            return
        self._stop.clear()
        if self.plot is not None:
            self.plot.reset()
        config = self.config_box.currentText()
        self.status.start(0, f"preparing {config} on {movie.name} …")
        callback = make_callback(self.signals, self._stop)
        worker = thread_worker(run_training, start_thread=False)(config, overrides, callback)
        worker.returned.connect(self._trained)
        worker.errored.connect(self.status.failed)
        worker.finished.connect(self._train_finished)
        self.train_worker = worker
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _step(self, step: int, loss: float) -> None:
        self._last_step = step
        self.status.step(step)
        if self.plot is not None:
            self.plot.add_step(step, loss)

    def _epoch(self, epoch: int, val_loss: float) -> None:
        if self.plot is not None and math.isfinite(val_loss):
            self.plot.add_epoch(self._last_step, val_loss)

    def _trained(self, result: Any) -> None:
        self.result = result
        how = "cancelled, stopped" if self._stop.is_set() else "done"
        self.status.say(f"{how} after {result.card.training.steps} steps: model {result.model}")

    def _train_finished(self) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop the training after its current step; the run still writes its checkpoints and model.pt."""
        self._stop.set()
        self.status.say("stopping after the current step …")
