"""emlive: live, self-supervised blind-spot denoising for in-situ electron microscopy.

Components (one namespace, one folder each): ``emlive.train`` (the offline self-supervised trainer),
``emlive.export`` (ONNX / TensorRT export and the inference runtime), ``emlive.stream`` (the live ZeroMQ
service), ``emlive.viewer`` (the live viewer), ``emlive.analysis`` (offline noise statistics, evaluation and
denoising) and ``emlive.core`` (the pieces they share: readers, writers, normalisation, the network, the model card).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emlive")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
