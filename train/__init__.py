"""emlive.train: the offline self-supervised trainer of the blind-spot network.

The network itself (``BlindSpotNet``, ``NetworkConfig``) is defined in the shared package so that the inference
runtime and the live service can load models without importing the trainer; it is re-exported here, on first use
(importing this package, as every ``emlive`` command does to register its subcommands, must not import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emlive.core.network import BlindSpotNet, NetworkConfig

__all__ = ["BlindSpotNet", "NetworkConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from emlive.core import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
