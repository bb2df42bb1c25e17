"""The blind spot is exact: the output at p never depends on the center frame inside the blind window."""

from __future__ import annotations

import pytest
import torch

from emlive.core.network import (
    LOG_VAR_MAX,
    LOG_VAR_MIN,
    BlindSpotNet,
    Head,
    NetworkConfig,
    count_parameters,
    macs_per_pixel,
    receptive_radius,
)
from emlive.core.networks import network_macs_per_pixel

BLIND_SPOTS = [(1, 1), (3, 3), (5, 5), (1, 3), (3, 1)]


def _center_gradient(
    cfg: NetworkConfig, shape: tuple[int, int], p: tuple[int, int], channel: int = 0
) -> torch.Tensor:
    torch.manual_seed(0)
    net = BlindSpotNet(cfg).double().eval()
    x = torch.randn(1, cfg.frames, *shape, dtype=torch.float64, requires_grad=True)
    net(x)[0, channel, p[0], p[1]].backward()
    assert x.grad is not None
    return x.grad[0, cfg.frames // 2].abs()


@pytest.mark.parametrize("frames", [1, 5])
@pytest.mark.parametrize("blind_spot", BLIND_SPOTS)
def test_blind_window_is_exactly_blind_and_its_border_is_seen(frames: int, blind_spot: tuple[int, int]) -> None:
    _check_blind_window(NetworkConfig(frames=frames, blind_spot=blind_spot, width=8), channel=0)


@pytest.mark.parametrize(("frames", "blind_spot"), [(1, (3, 3)), (5, (1, 1)), (5, (3, 3)), (5, (1, 3))])
@pytest.mark.parametrize("channel", [0, 1])
def test_gaussian_head_keeps_the_blind_spot_in_both_channels(
    frames: int, blind_spot: tuple[int, int], channel: int
) -> None:
    """The prior mean (channel 0) and the log prior variance (channel 1) never see the blind window."""
    cfg = NetworkConfig(frames=frames, blind_spot=blind_spot, width=8, head=Head.gaussian)
    _check_blind_window(cfg, channel)


def _check_blind_window(cfg: NetworkConfig, channel: int) -> None:
    blind_spot = cfg.blind_spot
    py, px = 30, 35  # odd frame size and off-center pixel: padding and pooling are not aligned with p
    grad = _center_gradient(cfg, (61, 67), (py, px), channel)
    a, b = blind_spot[0] // 2, blind_spot[1] // 2
    inside = grad[py - a : py + a + 1, px - b : px + b + 1]
    assert torch.count_nonzero(inside) == 0, f"center frame leaks into the {blind_spot} blind window"
    border = grad[py - a - 1 : py + a + 2, px - b - 1 : px + b + 2].clone()
    border[1:-1, 1:-1] = float("nan")
    ring = border[~torch.isnan(border)]
    assert ring.numel() == 2 * (blind_spot[0] + 2) + 2 * blind_spot[1]
    assert torch.all(ring > 0), "every pixel just outside the blind window must influence the output"


def test_blind_spot_holds_at_the_frame_border() -> None:
    cfg = NetworkConfig(frames=5, blind_spot=(3, 3), width=8)
    grad = _center_gradient(cfg, (40, 44), (0, 43))
    assert torch.count_nonzero(grad[0:2, 42:44]) == 0


def test_neighbour_frames_are_seen_at_the_center_pixel() -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(frames=5, blind_spot=(3, 3), width=8)
    net = BlindSpotNet(cfg).double()
    x = torch.randn(1, 5, 32, 32, dtype=torch.float64, requires_grad=True)
    net(x)[0, 0, 16, 16].backward()
    assert x.grad is not None
    assert x.grad[0, 1, 16, 16] != 0 and x.grad[0, 3, 16, 16] != 0


@pytest.mark.parametrize("shape", [(17, 29), (64, 64), (100, 37)])
def test_any_size_in_same_size_out(shape: tuple[int, int]) -> None:
    net = BlindSpotNet(NetworkConfig(width=8)).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 5, *shape))
    assert y.shape == (2, 1, *shape)


def test_receptive_radius_bounds_the_influence() -> None:
    cfg = NetworkConfig(frames=3, blind_spot=(3, 3), width=8, scales=3, blocks=1)
    r = receptive_radius(cfg)
    size = 2 * r + 41
    p = size // 2
    grad = _center_gradient(cfg, (size, size), (p, p))
    far = grad.clone()
    far[p - r : p + r + 1, p - r : p + r + 1] = 0
    assert torch.count_nonzero(far) == 0
    assert torch.count_nonzero(grad) > 0


def test_default_network_matches_the_paper_cost() -> None:
    cfg = NetworkConfig()
    assert cfg.width == 64 and cfg.blind_spot == (3, 3) and cfg.frames == 5
    macs = macs_per_pixel(cfg)
    assert 0.45e6 < macs < 0.65e6  # method.md: about 0.55 M multiply-adds per pixel
    assert 0.9e6 < count_parameters(BlindSpotNet(cfg)) < 1.4e6
    assert receptive_radius(cfg) > 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 4}, "odd number of frames"),
        ({"blind_spot": (2, 3)}, "odd numbers"),
        ({"width": 30}, "multiple of 4"),
        ({"blind_spot": (15, 15), "scales": 1, "blocks": 0}, "too large"),
    ],
)
def test_invalid_network_configs_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kwargs)  # type: ignore[arg-type]


def test_fused_network_is_identical() -> None:
    net = BlindSpotNet(NetworkConfig(width=8)).eval()
    x = torch.randn(1, 5, 40, 48)
    with torch.no_grad():
        assert torch.allclose(net(x), net.fused()(x), atol=1e-6)


def test_gaussian_head_outputs_a_bounded_log_variance_and_fuses() -> None:
    cfg = NetworkConfig(width=8, head=Head.gaussian)
    assert cfg.out_channels == 2 and NetworkConfig(width=8).out_channels == 1
    assert NetworkConfig.model_validate({"width": 8}).head is Head.mean  # cards written before heads existed
    torch.manual_seed(0)
    net = BlindSpotNet(cfg).eval()
    x = 1e4 * torch.randn(2, 5, 40, 48)  # absurd inputs drive the raw channel far out: the clamp holds
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 2, 40, 48)
        assert torch.allclose(y, net.fused()(x), atol=1e-6 * float(y.abs().max()))
    log_var = y[:, 1]
    assert float(log_var.min()) >= LOG_VAR_MIN and float(log_var.max()) <= LOG_VAR_MAX
    assert torch.isfinite(log_var.half().exp()).all(), "exp(log variance) must stay finite in fp16"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig(),
        NetworkConfig(width=8, head=Head.gaussian),
        NetworkConfig(width=8, scales=2, blocks=1, blind_spot=(1, 1)),
        NetworkConfig(width=16, frames=1, scales=3, blocks=0),
        NetworkConfig(width=12, frames=3, scales=5, blocks=3, blind_spot=(1, 5)),
    ],
    ids=lambda c: f"w{c.width}-n{c.frames}-s{c.scales}-b{c.blocks}-{c.blind_spot[0]}x{c.blind_spot[1]}",
)
def test_macs_per_pixel_formula_matches_a_hook_count(cfg: NetworkConfig) -> None:
    """The config's formula (what `emlive bench` prints) against the convolutions a forward pass actually runs."""
    assert cfg.macs_per_pixel() == pytest.approx(macs_per_pixel(cfg), rel=1e-12)
    assert network_macs_per_pixel(cfg) == cfg.macs_per_pixel()
