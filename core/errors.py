"""Error types. Every message names the thing, the rule it broke and, where there is one, the fix."""

from __future__ import annotations

import importlib.util


class EmliveError(Exception):
    """Base class of the errors emlive raises on bad input; the CLI prints them without a traceback."""


class InputFileError(EmliveError):
    """A file cannot be read as what it claims to be (corrupt, empty, unsupported, wrong shape)."""


class ConfigError(EmliveError):
    """A configuration value breaks a rule."""


class ModelFileError(EmliveError):
    """A model file (checkpoint, ONNX, engine) is missing, corrupt or does not fit the data."""


class InputDataError(EmliveError):
    """An array handed to emlive has the wrong shape, dtype or values (NaN/inf)."""


TRAINING_STACK = ("torch", "lightning", "onnx", "tensorboard", "matplotlib", "scipy")
"""The packages of the ``train`` extra that the light install (serving exported models) does without (scipy: for
noise-stats and the Gaussian baseline; the simulator and the metrics need only numpy)."""

TRAIN_INSTALL_HINT = "this needs the training stack: pip install 'emlive[train]'"


class TrainingStackMissingError(EmliveError):
    """Something needs torch, Lightning or the ONNX exporter, and this is the light install (no ``train`` extra)."""


def training_stack_error(what: str, missing: list[str]) -> TrainingStackMissingError:
    """The one message for a missing training stack: what needed it, which packages are missing, the fix."""
    return TrainingStackMissingError(
        f"{what}: {', '.join(missing)} not installed (this install serves exported .onnx models on the CPU "
        f"only); {TRAIN_INSTALL_HINT}"
    )


def require_training_stack(what: str, packages: tuple[str, ...] = ("torch",)) -> None:
    """Raise :class:`TrainingStackMissingError` naming ``what`` when any of ``packages`` is not installed (checked
    without importing them)."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise training_stack_error(what, missing)


def missing_training_package(exc: ModuleNotFoundError) -> str | None:
    """The training-stack package whose absence raised ``exc``, or None when it is another module."""
    top = (exc.name or "").split(".")[0]
    return top if top in TRAINING_STACK else None
