"""emlive.export: ONNX/TensorRT export and the inference runtime every consumer uses.

Public API (import the submodules; this package imports nothing heavy itself):

* :mod:`emlive.export.runtime` -- :class:`~emlive.export.runtime.Denoiser` (``load``, ``from_network``,
  ``denoise_window``, ``denoise_movie``, ``denoise_normalized``), :class:`~emlive.export.runtime.BackendName`,
  :func:`~emlive.export.runtime.available_backends`. The live service imports only this module (and core).
* :mod:`emlive.export.onnx_export` -- :func:`~emlive.export.onnx_export.export_onnx`,
  :func:`~emlive.export.onnx_export.read_onnx_card`, the parity bounds.
* :mod:`emlive.export.tensorrt` -- :func:`~emlive.export.tensorrt.build_engine`,
  :func:`~emlive.export.tensorrt.export_tensorrt`, :class:`~emlive.export.tensorrt.ShapeProfile` (never run here).
* :mod:`emlive.export.onnxmeta` -- an ONNX file's card and tensor names without the ``onnx`` package.
* :mod:`emlive.export.torchengine` -- the PyTorch engine (the only one needing torch; imported on demand).
* :mod:`emlive.export.folding` -- the inference-only rewrite of the network used by every exported graph.
* :mod:`emlive.export.tiling` -- exact overlapping tiles.
* :mod:`emlive.export.errors` -- :class:`~emlive.export.errors.BackendUnavailableError`,
  :class:`~emlive.export.errors.ParityError`.

Commands (``emlive.export.cli``): ``emlive export`` and ``emlive bench``.
"""
