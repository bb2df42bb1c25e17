"""Pieces the Denoise and Train widgets share: the image-layer chooser, the movie behind a layer, and workers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QLabel, QProgressBar, QWidget

from emlive.core.readers import ArrayMovie, Movie, open_movie
from emlive.napari_plugin.reader import PATH_KEY, PIXEL_KEY

logger = logging.getLogger(__name__)


class LayerChooser(QComboBox):
    """A combo box of the viewer's (T, H, W) or (H, W) image layers, kept current as layers come and go."""

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        from napari.layers import Image

        current = self.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.ndim in (2, 3)]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:  # the chosen layer changed (not only the list): say so
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


def source_path(layer: Any) -> Path | None:
    """The movie file or folder a layer was read from (the emlive reader, or napari's record of the source)."""
    path = layer.metadata.get(PATH_KEY) or getattr(layer.source, "path", None)
    return None if path is None else Path(path)


def layer_movie(layer: Any) -> Movie:
    """The movie behind ``layer``: its source file opened again through :func:`open_movie` (the very reads
    ``emlive denoise`` makes), or the layer's own pixels for a layer that has no file (sample data, results)."""
    path = source_path(layer)
    if path is not None and path.exists():
        return open_movie(path)
    data = np.asarray(layer.data)
    frames = data[None] if data.ndim == 2 else data
    return ArrayMovie(frames, path=f"<layer {layer.name}>", pixel_size_nm=layer.metadata.get(PIXEL_KEY))


def layer_frames(layer: Any) -> int:
    """The number of frames of an image layer (1 for a single image)."""
    return int(layer.data.shape[0]) if layer.ndim == 3 else 1


class RunStatus:
    """A progress bar and a status line, updated from a worker's signals (in the GUI thread)."""

    def __init__(self, bar: QProgressBar, label: QLabel) -> None:
        self.bar = bar
        self.label = label

    def start(self, total: int, text: str) -> None:
        """A new run of ``total`` steps (0: not known yet, the bar shows that it is busy)."""
        self.bar.setRange(0, max(total, 0))
        self.bar.setValue(0)
        self.label.setText(text)

    def step(self, done: int) -> None:
        self.bar.setValue(done)

    def say(self, text: str) -> None:
        logger.info("%s", text)
        self.label.setText(text)

    def failed(self, exc: BaseException) -> None:
        logger.error("%s", exc, exc_info=exc)
        self.label.setText(f"failed: {exc}")
