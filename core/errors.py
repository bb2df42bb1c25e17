"""Error types. Every message names the thing, the rule it broke and, where there is one, the fix."""

from __future__ import annotations


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
