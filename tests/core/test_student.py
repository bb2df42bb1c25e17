"""The student network, the network registry and model cards of both families."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from emlive.core.errors import ConfigError, ModelFileError
from emlive.core.modelcard import ModelCard, load_checkpoint, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.networks import create_network, network_kinds, network_macs_per_pixel, register_network
from emlive.core.student import StudentConfig, StudentNet, student_macs_by_hooks

MODELS = Path(__file__).resolve().parents[2] / "models"
CONFIGS = [
    StudentConfig(),
    StudentConfig(unshuffle=4, width=16, depth=3, residual="temporal_mean"),
    StudentConfig(unshuffle=2, width=8, depth=2, stem="unshuffle", activation="relu", frames=3),
    StudentConfig(unshuffle=1, width=8, depth=4, frames=1),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"u{c.unshuffle}-w{c.width}-d{c.depth}-{c.stem}")
@pytest.mark.parametrize("shape", [(37, 51), (8, 8), (1, 3), (64, 33)])
def test_student_keeps_any_frame_shape(cfg: StudentConfig, shape: tuple[int, int]) -> None:
    net = StudentNet(cfg).eval()
    with torch.no_grad():
        y = net(torch.randn(2, cfg.frames, *shape))
    assert y.shape == (2, 1, *shape) and torch.isfinite(y).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"u{c.unshuffle}-w{c.width}-d{c.depth}-{c.stem}")
def test_macs_per_pixel_formula_matches_a_hook_count(cfg: StudentConfig) -> None:
    assert cfg.macs_per_pixel() == pytest.approx(student_macs_by_hooks(cfg))
    assert network_macs_per_pixel(cfg) == cfg.macs_per_pixel()


@pytest.mark.timeout(60)
def test_receptive_radius_bounds_the_influence() -> None:
    cfg = StudentConfig(unshuffle=2, width=8, depth=3)
    net = StudentNet(cfg).eval()
    for p in net.parameters():  # all positive weights: every tap inside the radius reaches the output
        p.data.abs_()
    x = torch.zeros(1, cfg.frames, 64, 64, requires_grad=True)
    net(x)[0, 0, 32, 32].backward()
    assert x.grad is not None
    ys, xs = np.nonzero(x.grad.abs().sum(dim=(0, 1)).numpy())
    reach = max(abs(ys - 32).max(), abs(xs - 32).max())
    assert 0 < reach <= cfg.receptive_radius


@pytest.mark.timeout(60)
def test_student_sees_its_center_pixel_and_starts_near_the_identity() -> None:
    cfg = StudentConfig(width=8, depth=3, residual="center")
    net = StudentNet(cfg).eval()
    x = torch.randn(1, 5, 16, 16, requires_grad=True)
    y = net(x)
    y[0, 0, 8, 8].backward()
    assert x.grad is not None and x.grad[0, 2, 8, 8] != 0  # not blind
    # a residual from the center frame: the untrained student stays close to it
    assert float((y - x[:, 2:3]).abs().mean().detach()) < 0.5 * float(x[:, 2].abs().mean().detach())


@pytest.mark.timeout(60)
def test_temporal_mean_residual_starts_near_the_mean_of_the_frames() -> None:
    net = StudentNet(StudentConfig(width=8, depth=3, residual="temporal_mean")).eval()
    x = torch.randn(1, 5, 16, 16)
    with torch.no_grad():
        y = net(x)
    mean = x.mean(dim=1, keepdim=True)
    assert float((y - mean).abs().mean()) < 0.5 * float(mean.abs().mean())
    assert float((y - x[:, 2:3]).abs().mean()) > 0.5 * float(x[:, 2].abs().mean())


@pytest.mark.timeout(60)
def test_student_config_rules_name_the_value() -> None:
    with pytest.raises(ValidationError, match="frames=4"):
        StudentConfig(frames=4)
    with pytest.raises(ValidationError, match="unshuffle"):
        StudentConfig(unshuffle=3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="dilation"):
        StudentConfig.model_validate({"dilation": 2})


@pytest.mark.timeout(60)
def test_registry_builds_each_family_from_its_config() -> None:
    assert {"blindspot", "student"} <= set(network_kinds())
    assert isinstance(create_network(NetworkConfig(width=8, scales=2, blocks=1)), BlindSpotNet)
    assert isinstance(create_network(StudentConfig(width=8, depth=2)), StudentNet)
    with pytest.raises(ConfigError, match="already registered"):
        register_network("student", StudentConfig)(BlindSpotNet)


@pytest.mark.timeout(60)
def test_cards_round_trip_both_families_and_old_cards_load(tmp_path: Path) -> None:
    old = json.loads((MODELS / "synthetic-small.card.json").read_text())
    assert "kind" not in old["network"]  # written before students existed
    card = ModelCard.model_validate(old)
    assert card.kind == "blindspot" and card.blind_spot == (1, 1) and card.teacher is None
    for shipped in sorted(MODELS.glob("*.pt")):  # every shipped model loads as the family its card names
        net, loaded = load_checkpoint(shipped)
        family = StudentNet if loaded.kind == "student" else BlindSpotNet
        assert isinstance(net, family) and loaded.kind in ("blindspot", "student")
        if loaded.kind == "student":
            assert loaded.teacher is not None and loaded.teacher.blind_spot is not None
    assert {load_checkpoint(p)[1].kind for p in MODELS.glob("*.pt")} == {"blindspot", "student"}
    cfg = StudentConfig(width=8, depth=3, unshuffle=4)
    student_card = ModelCard(name="s", network=cfg)
    again = ModelCard.from_json(student_card.to_json())
    assert again.network == cfg and again.kind == "student" and again.blind_spot == (0, 0)
    torch.manual_seed(0)
    net = StudentNet(cfg).eval()
    path = save_model(tmp_path / "s.pt", net, student_card)
    loaded_net, loaded_card = load_checkpoint(path)
    assert loaded_card.network == cfg
    x = torch.randn(1, 5, 20, 28)
    with torch.no_grad():
        assert isinstance(loaded_net, StudentNet) and torch.equal(loaded_net(x), net(x))
    bad = json.loads(student_card.to_json())
    bad["network"]["kind"] = "transformer"
    with pytest.raises(ModelFileError, match="transformer"):
        ModelCard.from_json(json.dumps(bad), "bad card")
