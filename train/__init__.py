"""emlive.train: the offline self-supervised trainer of the blind-spot network.

The network itself (``BlindSpotNet``, ``NetworkConfig``) is defined in the shared package so that the inference
runtime and the live service can load models without importing the trainer; it is re-exported here.
"""

from emlive.core.network import BlindSpotNet, NetworkConfig

__all__ = ["BlindSpotNet", "NetworkConfig"]
