"""The real-time student network: a small non-blind denoiser distilled from a blind-spot teacher (``emlive distill``).

A blind-spot network must never see the pixel it predicts, which forces dilated ring read-outs, bilinear
upsampling and many channels at full resolution: the slow layers on every runtime. A student is trained on the
teacher's outputs instead of the noisy frames, so it may see every pixel and can be built for speed only:

* **Frames as channels.** The N z-scored frames of the window are the N input channels.
* **Space-to-depth.** The body runs at 1/u^2 of the pixels (``unshuffle`` u = 2 or 4) with dense channels (what
  CPUs and GPUs run fastest). ``stem=conv`` (default) does it with one u x u convolution of stride u, which is
  exactly ``pixel_unshuffle`` followed by a 1x1 convolution; ``stem=unshuffle`` runs ``pixel_unshuffle`` and a
  3x3 convolution. The profiles in docs/student.md chose ``conv``: ONNX exports ``pixel_unshuffle`` as a 6-D
  Transpose that cost a quarter of the frame time in ONNX Runtime.
* **Body.** ``depth`` - 1 further 3x3 convolutions (with bias) at the reduced resolution: width -> ... -> u^2, a
  LeakyReLU (or ReLU) after each but the last. No dilations, no resize operators, no normalisation layers.
* **Depth-to-space.** ``pixel_shuffle`` (ONNX ``DepthToSpace``) back to (1, H, W), plus a residual: the mean of
  the N frames (``residual=temporal_mean``, default) or the center frame (``center``), so the body learns a
  correction. From the mean, the student reached the center residual's best validation loss in a third of the
  steps (docs/student.md): at low dose the center frame is mostly noise that the body would have to cancel.

Any H x W works: the input is padded by replication at the bottom/right to a multiple of ``unshuffle`` and the
output cropped back (the graph keeps dynamic height and width in ONNX). Multiply-adds per output pixel:

    (S*N*u^2*width + 9*(depth-2)*width^2 + 9*width*u^2) / u^2      (S = 1 for stem=conv, 9 for unshuffle)

(:meth:`StudentConfig.macs_per_pixel`; the tests check it against a hook count). Layer sizes were chosen from
ONNX Runtime profiles (docs/student.md, ``bench/student_profile.py``).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from emlive.core.netconfig import STUDENT_SCHEMA_VERSION, StudentConfig  # noqa: F401 - re-exported


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=True)


class StudentNet(nn.Module):
    """Student denoiser: (B, N, H, W) z-scored frames in, (B, 1, H, W) estimate of the center frame out."""

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or StudentConfig()
        u = cfg.unshuffle
        widths = [cfg.width] * (cfg.depth - 1) + [u * u]
        if cfg.stem == "conv":
            layers: list[nn.Module] = [nn.Conv2d(cfg.frames, cfg.width, u, stride=u, bias=True)]
        else:
            layers = [nn.PixelUnshuffle(u), _conv3(cfg.frames * u * u, cfg.width)]
        for cin, cout in itertools.pairwise(widths):
            layers += [self._activation(), _conv3(cin, cout)]
        self.body = nn.Sequential(*layers)
        self._init_last()

    def _activation(self) -> nn.Module:
        return nn.LeakyReLU(0.1) if self.config.activation == "leaky_relu" else nn.ReLU()

    def _init_last(self) -> None:
        """Start as the identity on the residual: the last convolution begins small."""
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            last.weight.mul_(0.1)
            assert last.bias is not None
            last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        h, w = x.shape[-2], x.shape[-1]
        u = cfg.unshuffle
        pad_h, pad_w = (-h) % u, (-w) % u
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if cfg.residual == "center":
            c = cfg.frames // 2
            base = x[:, c : c + 1]
        else:
            base = x.mean(dim=1, keepdim=True)
        y = F.pixel_shuffle(self.body(x), u)
        return (base + y)[..., :h, :w]


def student_macs_by_hooks(config: StudentConfig, size: int = 32) -> float:
    """Multiply-accumulates per output pixel counted from the convolutions of one forward pass (a check on
    :meth:`StudentConfig.macs_per_pixel`)."""
    model = StudentNet(config).eval()
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        total += output.numel() // output.shape[0] * math.prod(weight.shape[1:])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, config.frames, size, size))
    for handle in handles:
        handle.remove()
    return total / (size * size)
