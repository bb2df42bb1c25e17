"""The ``-m/--model`` option of ``emlive bench`` and ``emlive bench-quality``: several models, each labelled.

A spec is ``[LABEL=]PATH[@ENSEMBLE]``:

* ``LABEL`` names the model's row (``-m teacher=models/synthetic-small.pt``); without it the row is labelled by the
  model card's name (the file's stem when two models share a card name).
* ``PATH`` is a checkpoint (.ckpt/.pt/.pth), an exported .onnx model or a TensorRT engine; ``emlive bench`` also
  takes the keyword ``random``: a random-weight default blind-spot network (width 64, 5 frames; speed only).
* ``@flips`` / ``@dihedral`` (``emlive bench-quality`` only) denoise with a geometric self-ensemble
  (:func:`emlive.core.ensemble.ensemble_average`: 4 or 8 flips/rotations, each undone, averaged).

The default is the shipped teacher and the shipped CPU-live student, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emlive.core.ensemble import Ensemble
from emlive.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / "models" / "synthetic-small.pt"
SHIPPED_STUDENT = ROOT / "models" / "cpu-live-student.pt"
DEFAULT_SPECS = (f"teacher={SHIPPED_TEACHER}", f"student={SHIPPED_STUDENT}")
RANDOM_MODEL = "random"
MODEL_SUFFIXES = (".ckpt", ".pt", ".pth", ".onnx", ".engine", ".trt")
SPEC_RULE = "a model is -m PATH or -m LABEL=PATH"
ENSEMBLE_RULE = ", optionally ending in @flips or @dihedral (a self-ensemble of 4 or 8 flips/rotations)"


@dataclass(frozen=True)
class ModelSpec:
    """One ``-m`` value, checked: ``label`` None means "the card's name"; ``path`` None means ``random``."""

    text: str
    label: str | None
    path: Path | None
    ensemble: Ensemble = Ensemble.none


def _rule(ensembles: bool) -> str:
    return SPEC_RULE + (ENSEMBLE_RULE if ensembles else "")


def _split_ensemble(text: str, body: str, ensembles: bool) -> tuple[str, Ensemble]:
    head, at, tail = body.rpartition("@")
    if not at or "/" in tail or "\\" in tail:  # no suffix (an '@' inside a folder name is part of the path)
        return body, Ensemble.none
    names = [e.value for e in Ensemble if e is not Ensemble.none]
    if not ensembles:
        raise ConfigError(
            f"-m {text!r}: emlive bench times single passes and takes no @{tail} self-ensemble; {SPEC_RULE} "
            "(score self-ensembles with emlive bench-quality)"
        )
    if tail not in [e.value for e in Ensemble]:
        raise ConfigError(f"-m {text!r}: unknown self-ensemble @{tail}; use @{' or @'.join(names)} ({_rule(True)})")
    return head, Ensemble(tail)


def parse_model_spec(text: str, *, ensembles: bool = True, allow_random: bool = False) -> ModelSpec:
    """One ``-m`` value -> :class:`ModelSpec`; a ``ConfigError`` naming the value and the rule when it is not one
    (empty label or path, unknown ``@`` suffix, a file that does not exist or is no model)."""
    label, body = _split_label(text.strip())
    if label is not None and not label:
        raise ConfigError(f"-m {text!r}: the label before '=' is empty; {_rule(ensembles)}")
    body, ensemble = _split_ensemble(text, body.strip(), ensembles)
    if not body:
        raise ConfigError(f"-m {text!r}: no model path; {_rule(ensembles)}")
    if allow_random and body == RANDOM_MODEL:
        return ModelSpec(text, label, None, ensemble)
    path = Path(body).expanduser()
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ConfigError(
            f"-m {text!r}: {path} is no model file (a .ckpt/.pt/.pth checkpoint, .onnx or .engine/.trt); "
            f"{_rule(ensembles)}"
        )
    if not path.is_file():
        raise ConfigError(f"-m {text!r}: no such model file {path}; {_rule(ensembles)}")
    return ModelSpec(text, label, path, ensemble)


def _split_label(body: str) -> tuple[str | None, str]:
    """(label or None, the rest) of ``LABEL=PATH`` or ``PATH``, where either may hold '=' (a label "N=1", a
    Lightning checkpoint "epoch=3-step=90.ckpt"): the first split, from no label on, whose rest names an existing
    file (with or without an ``@`` suffix); else the split at the first '=' (its error names the missing file)."""
    cuts = [i for i, c in enumerate(body) if c == "="]
    for cut in [None, *cuts]:
        label, rest = (None, body) if cut is None else (body[:cut].strip(), body[cut + 1 :].strip())
        if any(Path(p).expanduser().is_file() for p in {rest, rest.rpartition("@")[0]} if p):
            return label, rest
    return (None, body) if not cuts else (body[: cuts[0]].strip(), body[cuts[0] + 1 :].strip())


def parse_model_specs(
    texts: list[str] | None, *, ensembles: bool = True, allow_random: bool = False
) -> list[ModelSpec]:
    """Every ``-m`` value (default: :data:`DEFAULT_SPECS`), checked before anything runs; labels given twice are
    refused."""
    specs = [parse_model_spec(t, ensembles=ensembles, allow_random=allow_random) for t in texts or DEFAULT_SPECS]
    given = [s.label for s in specs if s.label is not None]
    for label in given:
        if given.count(label) > 1:
            raise ConfigError(f"-m: the label {label!r} is given twice; give each model its own label")
    return specs


def model_labels(specs: list[ModelSpec], card_names: list[str]) -> list[str]:
    """The row label of each spec: its own label, else its card's name (plus the file's stem, or a number, when
    that name is taken), plus `` x4``/`` x8`` for an unlabelled self-ensemble."""
    explicit = {s.label for s in specs if s.label is not None}
    labels: list[str] = []
    for spec, name in zip(specs, card_names, strict=True):
        if spec.label is not None:
            labels.append(spec.label)
            continue
        label = name + (f" x{spec.ensemble.passes}" if spec.ensemble is not Ensemble.none else "")
        taken = explicit | set(labels)
        if label in taken and spec.path is not None:
            label = f"{label} ({spec.path.stem})"
        base, n = label, 2
        while label in taken:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels
