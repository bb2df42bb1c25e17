from __future__ import annotations

from pathlib import Path

import pytest

from emlive.core.errors import ConfigError
from emlive.train.config import load_config, shipped_configs

SHIPPED = [p.stem for p in shipped_configs()]  # training configs (distillation: tests/train/test_distill.py)


def test_every_reference_scenario_has_a_config() -> None:
    assert {"synthetic-small", "au-liquid-cell-3x3", "insitu-stem", "cryoet-tilt-5x5"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.network.frames % 2 == 1


def test_reference_parameters_are_covered() -> None:
    cfg = load_config("cryoet-tilt-5x5")
    assert cfg.network.blind_spot == (5, 5)
    assert cfg.data.patches.enabled and cfg.data.patches.size == 1024 and cfg.data.patches.stride == 768
    assert cfg.data.patches.ratio == 0.5 and cfg.data.patches.frames_per_stack == 10
    assert cfg.data.gain is not None and cfg.optim.devices == 2


def test_overrides_apply_with_yaml_types() -> None:
    cfg = load_config("synthetic-small", ["optim.epochs=3", "network.blind_spot=[1, 3]", "data.train=x.tif"])
    assert cfg.optim.epochs == 3 and cfg.network.blind_spot == (1, 3) and cfg.data.train == Path("x.tif")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.epohcs=3"], r"optim\.epohcs: unknown key"),
        (["network.frames=4"], "odd number of frames"),
        (["optim.batch_size=many"], r"optim\.batch_size"),
        (["data.crop_size=100"], "multiple of 8"),
        (["network.blind_spot=[7, 7]", "data.crop_size=16"], "too small for blind_spot"),
        (["optim.loss=l3"], r"optim\.loss"),
        (["oops"], "expected key=value"),
    ],
)
def test_bad_configs_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("synthetic-small", overrides)


def test_unknown_config_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known:"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
