"""An inference-only rewrite of :class:`~emlive.core.network.BlindSpotNet`: same function, fewer operations.

Two exact algebraic rewrites, used by the ONNX export and by the runtime's PyTorch backends:

1. **Ring convolutions become plain convolutions** (``RingConv2d.to_conv2d``): the center tap is folded to zero
   in the weights, so no mask multiplication is left in the graph.
2. **The read-out projections are folded into the head.** A read-out is ``proj(gelu(ring(x)))`` followed (at the
   coarse scales) by bilinear upsampling, and the head starts with a 1x1 convolution ``W1`` over the concatenation
   of the R read-outs. Between ``proj`` and ``W1`` there is no nonlinearity: concatenation, bilinear upsampling
   and 1x1 convolutions are all linear, and a 1x1 convolution commutes with bilinear upsampling (one mixes
   channels, the other pixels). So ``W1 @ concat_i(up(P_i g_i)) = sum_i up((W1_i P_i) g_i)``, where ``W1_i`` is
   the slice of ``W1`` that reads read-out ``i``. Each read-out then needs one 1x1 convolution ``F -> R*F/2``
   (the product ``W1_i P_i``, computed once in float64) evaluated *at its own scale*, and the coarse scales are
   summed before a single upsampling per scale. The R*F-channel concatenation at full resolution disappears.
   For the default model (F = 64, 4 scales) this removes about a fifth (19 %) of the multiply-adds and the largest
   full-resolution tensor (576 channels); outputs agree with the original within float32 rounding
   (about 1e-7 of the output range, checked in the tests).

Sums are written as ``conv(g) + accumulator`` so that ONNX Runtime's NCHWc optimiser fuses each addition into the
convolution that produces it (it can when the frame shape is known, see :mod:`emlive.export.runtime`).

The input is zero-padded at the bottom/right to a multiple of ``config.pad_multiple`` and the output cropped back,
exactly as in ``BlindSpotNet.forward``, so the module (and the ONNX graph exported from it) is correct for any
height and width.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from emlive.core.network import BlindSpotNet, Head, NetworkConfig, RingConv2d, embed_frames, soft_clamp_log_var


class FoldedBlindSpotNet(nn.Module):
    """Inference-only network equal to ``BlindSpotNet`` (see the module docstring); built by :func:`fold_network`."""

    def __init__(self, net: BlindSpotNet) -> None:
        super().__init__()
        cfg: NetworkConfig = net.config
        self.config = cfg
        src = copy.deepcopy(net).float().eval()
        self.center_embed = src.center_embed
        self.neighbour_embed = src.neighbour_embed
        self.blocks = src.blocks
        self.plan = list(src.plan)
        rings: dict[str, nn.Module] = {}
        for name, readout in src.readouts.items():
            ring = readout.ring
            if not isinstance(ring, nn.Module):
                raise TypeError(f"read-out {name} has no ring module")
            rings[name] = ring.to_conv2d() if isinstance(ring, RingConv2d) else ring
        self.rings = nn.ModuleDict(rings)
        head_in = src.head[0]
        if not isinstance(head_in, nn.Conv2d):
            raise TypeError(f"unexpected head layer {type(head_in).__name__}; expected a 1x1 Conv2d")
        w1 = head_in.weight.detach()[:, :, 0, 0].double()
        width = cfg.width
        projections: dict[str, nn.Module] = {}
        for i, (s, k, _, _) in enumerate(self.plan):
            name = f"s{s}_b{k}"
            proj = src.readouts[name].proj
            if not isinstance(proj, nn.Conv2d):
                raise TypeError(f"read-out {name}: expected a 1x1 Conv2d projection, got {type(proj).__name__}")
            p = proj.weight.detach()[:, :, 0, 0].double()
            folded = w1[:, i * width : (i + 1) * width] @ p
            conv = nn.Conv2d(width, folded.shape[0], 1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(folded.float()[:, :, None, None])
            projections[name] = conv
        self.projections = nn.ModuleDict(projections)
        self.head_rest = src.head[1:]
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        h, w = x.shape[-2], x.shape[-1]
        m = cfg.pad_multiple
        # Always a Pad node (zero-size when aligned): the graph stays correct for any exported H, W.
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        base = embed_frames(self.center_embed, self.neighbour_embed, x)
        levels = [base]
        for _ in range(1, cfg.scales):
            levels.append(F.avg_pool2d(levels[-1], 2))
        # Coarse scales first, coarsest first, each summed at its own resolution and upsampled once; then the
        # full-resolution read-outs, whose projections accumulate into the total (fused Conv+Add in ONNX Runtime).
        # In this order only the running total and one upsampled map are alive at full resolution with the base.
        total: torch.Tensor | None = None
        for s in range(cfg.scales - 1, -1, -1):
            feat = levels[s]
            wanted = {k for (ss, k, _, _) in self.plan if ss == s}
            acc: torch.Tensor | None = total if s == 0 else None
            for k in range(cfg.blocks + 1):
                if k > 0:
                    feat = self.blocks[f"s{s}_b{k}"](feat)
                if k not in wanted:
                    continue
                name = f"s{s}_b{k}"
                t = self.projections[name](F.gelu(self.rings[name](feat)))
                acc = t if acc is None else t + acc
            if s == 0:
                total = acc
            elif acc is not None:
                up = F.interpolate(acc, scale_factor=float(2**s), mode="bilinear", align_corners=False)
                total = up if total is None else up + total
        if total is None:  # unreachable: every plan has a full-resolution read-out
            raise RuntimeError("network plan without read-outs")
        y = self.head_rest(total)[..., :h, :w]
        if cfg.head is Head.gaussian:  # the same elementwise clamp of the log prior variance as BlindSpotNet
            y = torch.cat([y[:, :1], soft_clamp_log_var(y[:, 1:2])], dim=1)
        return y


def fold_network(net: BlindSpotNet) -> FoldedBlindSpotNet:
    """The folded, inference-only equivalent of ``net`` (a new module; ``net`` is left unchanged)."""
    return FoldedBlindSpotNet(net).eval()
