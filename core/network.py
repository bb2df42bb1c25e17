"""The multi-frame, multi-scale blind-spot network (method.md, "The network").

Shared by the trainer (which optimises it), the exporter (which turns it into ONNX) and the inference runtime
(which loads checkpoints), so it lives in the shared package and depends on torch only. Its pydantic config
(:class:`~emlive.core.netconfig.NetworkConfig`, read with every model card) is in the torch-free
:mod:`emlive.core.netconfig`.

Structure, with width F and a (2a+1) x (2b+1) blind spot:

* **Embedding.** The center frame passes a 1x1 convolution (3F/4 channels; F when N = 1): the feature at pixel p
  holds the center frame's value at p only. The N-1 neighbour frames pass 1 + max(a, b) 3x3 convolutions to F/4
  channels: their noise is independent of the center frame's, so they may mix space freely.
* **Scales.** The base map is average-pooled by 2 (``scales`` - 1) times. At each scale, ``blocks`` residual blocks
  (two 3x3 convolutions each) grow the radius r (in that scale's pixels) of center-frame pixels every feature has
  seen by 2 per block.
* **Ring read-outs.** A read-out is a 3x3 convolution without its center tap, dilated by (dy, dx) chosen so that it
  never reads a feature that has seen the center frame inside the blind window: at full resolution dy = r + a + 1;
  at a pooled scale with factor f, where bilinear upsampling mixes neighbouring coarse pixels,
  dy = floor(r + 1.5 + (a - 0.5) / f) + 1 (same for dx with b). Read-outs are taken from the base map and after
  every block at full resolution, and from the pooled base and after the last block at the coarser scales
  (9 read-outs for 4 scales and 2 blocks), each followed by GELU and a 1x1 convolution, then upsampled.
* **Head.** The read-outs are concatenated and reduced by 1x1 convolutions (R*F -> R*F/2 -> F -> 1, or -> 2 with
  ``head=gaussian``). Channel 0 is the blind estimate mu of the center frame in z units (the center frame's
  normalised units). With ``head=gaussian`` channel 1 is log(sigma_x^2), the log variance of the prior (the blind
  estimate's error, Laine et al. 2019) in z units, soft-clamped by :func:`soft_clamp_log_var` to
  [``LOG_VAR_MIN``, ``LOG_VAR_MAX``] = [-10, 6]: exp() of it lies in 4.5e-5..403, finite in fp16 (max 65504),
  so no runtime can overflow. Both channels are computed from the same blind features by 1x1 convolutions and an
  elementwise clamp, so the blind spot holds for both.

No biases, no normalisation layers (both would let statistics of the blind window leak into the output). Inputs
are zero-padded (never reflected: a mirrored copy of a pixel's own noise would leak) to a multiple of the total
pooling factor and the output is cropped back, so any H x W works.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from emlive.core.netconfig import (  # noqa: F401 - the configs' home; re-exported for existing importers
    NETWORK_SCHEMA_VERSION,
    Head,
    NetworkConfig,
    readout_plan,
    receptive_radius,
    ring_dilation,
)

LOG_VAR_MIN = -10.0  # z units^2, log: exp(-10) = 4.5e-5, a prior std of 0.7% of the frame's std
LOG_VAR_MAX = 6.0  # exp(6) = 403: a prior std of 20 frame stds, i.e. no prior; finite in fp16


LOG_VAR_INIT_SCALE = 0.01  # the log-variance row of the last 1x1 convolution starts this small


def soft_clamp_log_var(raw: torch.Tensor) -> torch.Tensor:
    """The log prior variance from the head's raw channel: a smooth (tanh) map onto [LOG_VAR_MIN, LOG_VAR_MAX],
    the identity slope near its centre (-2); elementwise, so it keeps the blind spot."""
    centre, half = (LOG_VAR_MAX + LOG_VAR_MIN) / 2, (LOG_VAR_MAX - LOG_VAR_MIN) / 2
    return centre + half * torch.tanh((raw - centre) / half)


class RingConv2d(nn.Module):
    """A 3x3 convolution without its center tap, dilated by (dy, dx): reads p + (+-dy, +-dx), never p."""

    mask: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, dilation: tuple[int, int]) -> None:
        super().__init__()
        self.dilation = dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        mask = torch.ones(1, 1, 3, 3)
        mask[..., 1, 1] = 0.0
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, padding=self.dilation, dilation=self.dilation)

    def to_conv2d(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the center tap folded to zero (for export: no mask op in the graph)."""
        conv = nn.Conv2d(
            self.weight.shape[1],
            self.weight.shape[0],
            3,
            padding=self.dilation,
            dilation=self.dilation,
            bias=False,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight * self.mask)
        return conv


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GELU and a skip connection: grows the seen radius by 2 pixels."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(width, width, 3)
        self.conv2 = _conv(width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.conv2(F.gelu(self.conv1(x))))


class ReadOut(nn.Module):
    """Ring read-out at one scale: ring convolution, GELU, 1x1 convolution (upsampled by the caller)."""

    def __init__(self, width: int, dilation: tuple[int, int]) -> None:
        super().__init__()
        self.ring: nn.Module = RingConv2d(width, width, dilation)
        self.proj = _conv(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.ring(x)))


def embed_frames(center_embed: nn.Module, neighbour_embed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The base feature map: the center frame through 1x1 convolutions only, the other frames through 3x3 ones."""
    c = x.shape[1] // 2
    center = F.gelu(center_embed(x[:, c : c + 1]))
    if x.shape[1] == 1:
        return center
    neighbours = torch.cat([x[:, :c], x[:, c + 1 :]], dim=1)
    return torch.cat([center, neighbour_embed(neighbours)], dim=1)


class BlindSpotNet(nn.Module):
    """Blind-spot denoiser: (B, N, H, W) z-scored frames in, (B, 1, H, W) estimate of the center frame out;
    (B, 2, H, W) with ``head=gaussian``: the estimate (prior mean) and the log prior variance, both in z units."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NetworkConfig()
        width = cfg.width
        n_neighbours = cfg.frames - 1
        center_ch = width if n_neighbours == 0 else 3 * width // 4
        self.center_embed = _conv(1, center_ch, 1)
        neighbour_layers: list[nn.Module] = []
        if n_neighbours:
            n_convs = 1 + max(cfg.blind_spot) // 2
            cin = n_neighbours
            for _ in range(n_convs):
                neighbour_layers += [_conv(cin, width // 4, 3), nn.GELU()]
                cin = width // 4
        self.neighbour_embed = nn.Sequential(*neighbour_layers)
        self.plan = readout_plan(cfg)
        self.blocks = nn.ModuleDict(
            {f"s{s}_b{k}": ResidualBlock(width) for s in range(cfg.scales) for k in range(1, cfg.blocks + 1)}
        )
        self.readouts = nn.ModuleDict({f"s{s}_b{k}": ReadOut(width, (dy, dx)) for s, k, dy, dx in self.plan})
        n_read = len(self.plan)
        self.head = nn.Sequential(
            _conv(n_read * width, n_read * width // 2, 1),
            nn.GELU(),
            _conv(n_read * width // 2, width, 1),
            nn.GELU(),
            _conv(width, cfg.out_channels, 1),
        )
        if cfg.head is Head.gaussian:  # start from log variance ~0: a prior as wide as the frame (it knows nothing)
            last = self.head[-1]
            assert isinstance(last, nn.Conv2d)
            with torch.no_grad():
                last.weight[1:].mul_(LOG_VAR_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        h, w = x.shape[-2], x.shape[-1]
        m = cfg.pad_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros: a reflected copy of a pixel's noise would leak
        base = embed_frames(self.center_embed, self.neighbour_embed, x)
        full_size = (base.shape[-2], base.shape[-1])
        outputs: list[torch.Tensor] = []
        level = base
        for s in range(cfg.scales):
            if s > 0:
                level = F.avg_pool2d(level, 2)
            feat = level
            wanted = {k for (ss, k, _, _) in self.plan if ss == s}
            for k in range(cfg.blocks + 1):
                if k > 0:
                    feat = self.blocks[f"s{s}_b{k}"](feat)
                if k in wanted:
                    out = self.readouts[f"s{s}_b{k}"](feat)
                    if s > 0:
                        out = F.interpolate(out, size=full_size, mode="bilinear", align_corners=False)
                    outputs.append(out)
        y = self.head(torch.cat(outputs, dim=1))[..., :h, :w]
        if cfg.head is Head.gaussian:
            y = torch.cat([y[:, :1], soft_clamp_log_var(y[:, 1:2])], dim=1)
        return y

    def fused(self) -> BlindSpotNet:
        """A copy whose ring convolutions are plain ``nn.Conv2d`` with the blind taps folded to zero."""
        clone = copy.deepcopy(self)
        for name, readout in clone.readouts.items():
            ring = readout.ring
            assert isinstance(ring, RingConv2d)
            clone.readouts[name].ring = ring.to_conv2d()
        return clone


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(config: NetworkConfig, size: int = 64) -> float:
    """Multiply-accumulates per output pixel, counted from the convolutions of one forward pass."""
    model = BlindSpotNet(config).eval()
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        taps = weight.shape[1] * weight.shape[2] * weight.shape[3]
        if isinstance(module, RingConv2d):
            taps = weight.shape[1] * 8
        total += output.numel() // output.shape[0] * taps

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | RingConv2d)]
    with torch.no_grad():
        model(torch.zeros(1, config.frames, size, size))
    for handle in handles:
        handle.remove()
    return total / (size * size)
