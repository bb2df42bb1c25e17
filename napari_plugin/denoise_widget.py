"""The Denoise widget: a model, a backend, a frame range and an image layer in; the denoised frames out as a new layer.

The same code path as ``emlive denoise``: the model is loaded by :func:`emlive.analysis.denoise.load_denoiser`,
the movie is the layer's source file opened by :func:`emlive.core.readers.open_movie` (or the layer's pixels when
it has no file), and frames come from :meth:`emlive.export.runtime.Denoiser.denoise_movie`: the result equals
the float32 output of ``emlive denoise --frames a:b`` bit for bit. It runs in a napari ``thread_worker`` (the
viewer stays responsive) with a progress bar; Cancel stops it between two frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import GeneratorWorker, thread_worker
from qtpy.QtCore import Qt
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

from emlive.analysis.denoise import load_denoiser
from emlive.core.errors import EmliveError
from emlive.core.readers import Movie
from emlive.export.backendnames import BACKENDS, BackendName
from emlive.napari_plugin.reader import AXIS_LABELS
from emlive.napari_plugin.sample import shipped_model
from emlive.napari_plugin.widgets import LayerChooser, RunStatus, layer_frames, layer_movie

logger = logging.getLogger(__name__)


def backend_choices(model: str | Path) -> list[str]:
    """``auto`` then the registry's backends that can run ``model`` here, best first (all of them for a path
    whose type is unknown, so the runtime's own error names the problem)."""
    from emlive.export.runtime import available_backends, model_kind

    try:
        kind = model_kind(Path(model))
    except EmliveError:
        return [b.value for b in BackendName]
    return [BackendName.auto.value] + [b.value for b in available_backends(kind)]


def denoise_frames(model: str, backend: str, movie: Movie, start: int, stop: int) -> Iterator[int | np.ndarray]:
    """Yield the number of frames done after each frame, then the (stop - start, H, W) float32 result."""
    denoiser = load_denoiser(model, backend)
    _, height, width = movie.shape
    out = np.empty((stop - start, height, width), dtype=np.float32)
    with movie:
        for t, frame in denoiser.denoise_movie(movie, start, stop):
            out[t - start] = frame
            yield t - start + 1
    yield out


class DenoiseWidget(QWidget):
    """Denoise an image layer with an emlive model (the dock widget ``Denoise``)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: GeneratorWorker | None = None
        self.result_layer: Any | None = None
        self.model_edit = QLineEdit(str(shipped_model()))
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.backend_box = QComboBox()
        self.layer_box = LayerChooser(napari_viewer)
        self.start_box, self.stop_box = QSpinBox(), QSpinBox()
        self.run_button, self.cancel_button = QPushButton("Denoise"), QPushButton("Cancel")
        self.progress, self.status_label = QProgressBar(), QLabel("")
        self.status = RunStatus(self.progress, self.status_label)
        self._build(browse)
        self.model_edit.editingFinished.connect(self._refresh_backends)
        self.layer_box.currentTextChanged.connect(self._refresh_frames)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._refresh_backends()
        self._refresh_frames()

    def _build(self, browse: QPushButton) -> None:
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        frames_row = QHBoxLayout()
        frames_row.addWidget(self.start_box)
        frames_row.addWidget(QLabel("to (excl.)"))
        frames_row.addWidget(self.stop_box)
        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("backend", self.backend_box)
        form.addRow("layer", self.layer_box)
        form.addRow("frames", frames_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.cancel_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        self.status_label.setWordWrap(True)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "emlive model", "", "Models (*.pt *.ckpt *.pth *.onnx *.engine)")
        if path:
            self.model_edit.setText(path)
            self._refresh_backends()

    def _refresh_backends(self) -> None:
        current = self.backend_box.currentText()
        choices = backend_choices(self.model_edit.text())
        self.backend_box.clear()
        for name in choices:
            self.backend_box.addItem(name)
            self.backend_box.setItemData(
                self.backend_box.count() - 1, BACKENDS[BackendName(name)].description, Qt.ItemDataRole.ToolTipRole
            )
        if current in choices:
            self.backend_box.setCurrentText(current)

    def _refresh_frames(self, *_: Any) -> None:
        layer = self.layer_box.layer()
        n = 1 if layer is None else layer_frames(layer)
        self.start_box.setRange(0, n - 1)
        self.stop_box.setRange(1, n)
        self.start_box.setValue(0)
        self.stop_box.setValue(n)

    def run(self) -> None:
        """Start denoising the chosen layer's frames start..stop-1 in a worker thread."""
        layer = self.layer_box.layer()
        if layer is None:
            self.status.say("no image layer: open a movie first (File > Open, or File > Open Sample > emlive)")
            return
        start, stop = self.start_box.value(), self.stop_box.value()
        if stop <= start:
            self.status.say(f"frames {start} to {stop} select nothing: the end must be after the start")
            return
        try:
            movie = layer_movie(layer)
        except EmliveError as exc:
            self.status.failed(exc)
            return
        model, backend = self.model_edit.text(), self.backend_box.currentText()
        self.status.start(stop - start, f"denoising {layer.name} frames {start}..{stop - 1} with {Path(model).name}")
        worker = thread_worker(denoise_frames, start_thread=False)(model, backend, movie, start, stop)
        worker.yielded.connect(lambda value: self._yielded(value, layer, start, model, backend))
        worker.errored.connect(self.status.failed)
        worker.aborted.connect(lambda: self.status.say(f"cancelled after {self.progress.value()} frames"))
        worker.finished.connect(self._finished)
        worker.finished.connect(movie.close)  # also when cancelled before the first frame
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _yielded(self, value: int | np.ndarray, layer: Any, start: int, model: str, backend: str) -> None:
        if isinstance(value, np.ndarray):
            self.result_layer = self._add_result(value, layer, start, model, backend)
            self.status.say(f"{value.shape[0]} frames denoised into layer {self.result_layer.name!r}")
        else:
            self.status.step(value)

    def _add_result(self, data: np.ndarray, layer: Any, start: int, model: str, backend: str) -> Any:
        """The result as a new layer with the source's scale and units, placed at its frames in time."""
        scale = tuple(layer.scale)
        if data.shape[0] == 1 and layer.ndim == 2:
            return self.viewer.add_image(data[0], name=f"{layer.name} denoised", scale=scale, units=layer.units)
        translate = (start * scale[0], *tuple(layer.translate)[1:])
        metadata = {**layer.metadata, "emlive_model": model, "emlive_backend": backend, "emlive_frames": start}
        return self.viewer.add_image(
            data, name=f"{layer.name} denoised", scale=scale, translate=translate, units=layer.units,
            axis_labels=AXIS_LABELS, metadata={k: v for k, v in metadata.items() if k != "emlive_path"},
        )  # fmt: skip

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop the running denoising after its current frame; nothing is added."""
        if self.worker is not None:
            self.worker.quit()
