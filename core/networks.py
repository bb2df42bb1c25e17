"""The network registry: every network family by name, so each consumer builds the right class from a model card.

``register_network("blindspot", NetworkConfig)`` ties a config class (whose ``kind`` field names the family) to
its ``nn.Module``; :func:`create_network` builds the module for any registered config. A card's ``network`` is
:data:`AnyNetworkConfig`, a union discriminated by ``kind``; a section without ``kind`` (every card written before
students existed) is a blind-spot network. The configs and that union are torch-free, in
:mod:`emlive.core.netconfig`; this module holds the torch side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel
from torch import nn

from emlive.core.errors import ConfigError
from emlive.core.netconfig import (  # noqa: F401 - the torch-free configs, re-exported for existing importers
    DEFAULT_KIND,
    AnyNetworkConfig,
    NetworkConfig,
    StudentConfig,
    network_kind,
    network_macs_per_pixel,
)
from emlive.core.network import BlindSpotNet
from emlive.core.student import StudentNet

_REGISTRY: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {}

M = TypeVar("M", bound=type[nn.Module])


def register_network(kind: str, config_class: type[BaseModel]) -> Callable[[M], M]:
    """Class decorator (or plain call) registering ``module_class`` as the network of family ``kind``."""

    def add(module_class: M) -> M:
        if kind in _REGISTRY and _REGISTRY[kind][1] is not module_class:
            raise ConfigError(f"network kind {kind!r} is already registered to {_REGISTRY[kind][1].__name__}")
        _REGISTRY[kind] = (config_class, module_class)
        return module_class

    return add


def network_kinds() -> list[str]:
    return sorted(_REGISTRY)


def create_network(config: BaseModel) -> nn.Module:
    """A fresh (untrained) module of the family ``config`` belongs to."""
    kind = network_kind(config)
    if kind not in _REGISTRY:
        raise ConfigError(f"network kind {kind!r} is not registered (known: {network_kinds()}); upgrade emlive")
    config_class, module_class = _REGISTRY[kind]
    if not isinstance(config, config_class):
        raise ConfigError(f"network kind {kind!r} needs a {config_class.__name__}, got {type(config).__name__}")
    return module_class(config)


register_network("blindspot", NetworkConfig)(BlindSpotNet)
register_network("student", StudentConfig)(StudentNet)

AnyNetwork = BlindSpotNet | StudentNet
