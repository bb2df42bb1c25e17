"""ONNX export of a trained denoiser, with the model card inside and a parity check against PyTorch.

The graph
---------
* Input ``frames``: float32 ``(batch, N, height, width)``, every frame z-scored on its own (the runtime does that,
  :mod:`emlive.export.runtime`). Output ``denoised``: float32 ``(batch, 1, height, width)`` in the center frame's
  z-units; ``(batch, 2, height, width)`` for a ``head=gaussian`` network: channel 0 the blind estimate (the prior
  mean), channel 1 the log prior variance, both in the center frame's z-units (the runtime turns them into the
  posterior mean, :mod:`emlive.core.posterior`). Batch, height and width are dynamic (``dim_param`` names
  ``batch``, ``height``, ``width``).
* The network is :class:`~emlive.export.folding.FoldedBlindSpotNet`: ring convolutions are plain ``Conv`` nodes
  (blind taps folded to zero, no mask ``Mul``), and the read-out projections are folded into the head.
* Padding lives in the graph: the input is zero-padded at the bottom/right to a multiple of ``pad_multiple`` with
  one ``Pad`` node (its pads computed from ``Shape`` with ``Mod``/``Sub``) and the output cropped back with
  ``Slice``, so any height and width give the network's answer, not only multiples of 8. The bilinear upsampling
  is a ``Resize`` with constant scales (2, 4, 8), which ONNX Runtime runs in its blocked NCHWc layout.
* ``--fp16``: the weights and every intermediate tensor are float16; the graph keeps float32 input/output (two
  ``Cast`` nodes), so callers never change.
* Metadata (``metadata_props``): ``emlive_card`` (the full :class:`~emlive.core.modelcard.ModelCard` JSON) plus
  readable keys ``frames``, ``blind_spot`` (e.g. ``3x3``), ``normalization``, ``width``, ``emlive_version``,
  ``precision`` (fp32/fp16), ``head`` (mean/gaussian), ``noise`` (the card's noise model in one line, or
  ``none``) and ``input`` (a one-line description of the expected input and output).

Parity
------
After export the model runs in ONNX Runtime (CPU) and in PyTorch (the original ``BlindSpotNet``, float32) on two
inputs: standard-normal frames of an odd size (61 x 83: exercises padding and cropping) and real-looking frames
(a smooth random image with Poisson noise, z-scored per frame, 96 x 128). The maximum absolute difference must be
at most ``FP32_RELATIVE_BOUND`` (1e-4) times the PyTorch output's range for float32 and ``FP16_RELATIVE_BOUND``
(5e-3) for float16. Measured: float32 about 3e-7 of the range, float16 about 4e-4 of the range (random-weight
default and small models; see the tests). The log-variance channel of a ``head=gaussian`` network is checked on
its own, against an absolute bound in log units (``LOG_VAR_BOUND_FP32`` 1e-4, ``LOG_VAR_BOUND_FP16`` 2e-2: an error
d in log(sigma_x^2) is a relative error d in the prior variance, so fp16 may be 2 % off, which moves the posterior
by a fraction of that); its range is tiny for an untrained head, so a relative bound would mean nothing. A failure
raises :class:`~emlive.export.errors.ParityError`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from emlive import __version__
from emlive.core.errors import ConfigError, ModelFileError
from emlive.core.modelcard import CARD_KEY, ModelCard, load_checkpoint
from emlive.core.network import BlindSpotNet
from emlive.core.networks import AnyNetwork
from emlive.core.normalize import zscore
from emlive.core.student import StudentNet
from emlive.export.errors import ParityError
from emlive.export.folding import fold_network
from emlive.export.onnxmeta import INPUT_NAME, OUTPUT_NAME  # torch-free home of the names

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 20
FP32_RELATIVE_BOUND = 1e-4
FP16_RELATIVE_BOUND = 5e-3
LOG_VAR_BOUND_FP32 = 1e-4  # absolute, in log(z units^2): the log prior variance channel (head=gaussian)
LOG_VAR_BOUND_FP16 = 2e-2
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}


@dataclass(frozen=True)
class ParityResult:
    """One parity comparison: ONNX (or TensorRT) against the PyTorch network on one input."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    output_range: float
    bound: float
    channel: str = "mean"  # "mean" (relative bound), or "log-variance" (absolute bound, head=gaussian)

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.output_range if self.output_range > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.bound

    def describe(self) -> str:
        h, w = self.shape[-2:]
        if self.channel != "mean":
            return f"{self.name} {h}x{w}: max |exported - torch| = {self.max_abs_error:.3g} (bound {self.bound:.3g})"
        return (
            f"{self.name} {h}x{w}: max |exported - torch| = {self.max_abs_error:.3g} "
            f"({self.relative_error:.2g} of the output range {self.output_range:.3g}; bound {self.bound:.3g})"
        )


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it checked it."""

    path: Path
    fp16: bool
    opset: int
    size_bytes: int
    seconds: float
    parity: list[ParityResult] = field(default_factory=list)

    @property
    def max_relative_error(self) -> float:
        """The worst error of the denoised output (channel 0) relative to its range."""
        return max((p.relative_error for p in self.parity if p.channel == "mean"), default=float("nan"))

    @property
    def max_log_var_error(self) -> float | None:
        """The worst absolute error of the log prior variance (head=gaussian), None for a one-channel model."""
        errors = [p.max_abs_error for p in self.parity if p.channel == "log-variance"]
        return max(errors) if errors else None


class _Float16Graph(nn.Module):
    """float32 in and out, float16 inside (two Cast nodes in the graph)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def relative_bound(fp16: bool) -> float:
    """The parity bound enforced for a precision, as a fraction of the PyTorch output's range."""
    return FP16_RELATIVE_BOUND if fp16 else FP32_RELATIVE_BOUND


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"opset {opset}: the exporter supports ONNX opsets {MIN_OPSET} to {MAX_OPSET}; "
            f"use --opset {DEFAULT_OPSET} (the default) unless a consumer needs another"
        )
    return opset


def log_var_bound(fp16: bool) -> float:
    """The absolute parity bound of the log prior variance channel (head=gaussian), in log units."""
    return LOG_VAR_BOUND_FP16 if fp16 else LOG_VAR_BOUND_FP32


def noise_summary(card: ModelCard) -> str:
    """The card's noise model in one line (``metadata_props`` key ``noise``), ``none`` without one."""
    noise = card.noise
    if noise is None:
        return "none"
    fields = {"gain": noise.gain, "offset": noise.offset, "read_noise": noise.read_noise, "intercept": noise.intercept}
    values = ", ".join(f"{k} {v:.4g}" for k, v in fields.items() if v is not None)
    return f"{noise.method}: {values or 'no fitted parameters'}; kernel {len(noise.kernel)}x{len(noise.kernel)}"


def card_metadata(card: ModelCard, fp16: bool) -> dict[str, str]:
    """The ``metadata_props`` written into every exported model."""
    bh, bw = card.blind_spot
    channels = card.network.out_channels
    output = (
        f"{OUTPUT_NAME}: (batch, 1, height, width) in the center frame's z-units"
        if channels == 1
        else f"{OUTPUT_NAME}: (batch, 2, height, width): the blind estimate and the log prior variance, in the center "
        "frame's z-units"
    )
    return {
        CARD_KEY: card.to_json(),
        "frames": str(card.frames),
        "blind_spot": f"{bh}x{bw}",
        "normalization": card.normalization.value,
        "width": str(card.network.width),
        "emlive_version": __version__,
        "precision": "fp16" if fp16 else "fp32",
        "head": str(getattr(card.network, "head", "mean")),  # a student has no head field: mean
        "noise": noise_summary(card),
        "input": f"{INPUT_NAME}: float32 (batch, {card.frames}, height, width), each frame z-scored on its own; "
        + output,
    }


def onnx_model_proto(
    net: AnyNetwork, card: ModelCard, *, fp16: bool = False, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Trace the folded network to ONNX (dynamic batch/height/width) and attach the card as metadata."""
    check_opset(opset)
    net = net.float().cpu().eval()
    module: nn.Module = fold_network(net) if isinstance(net, BlindSpotNet) else net  # a student needs no folding
    if fp16:
        module = _Float16Graph(module)
    module.eval()
    m = card.network.pad_multiple
    example = torch.zeros(1, card.frames, 2 * m + 3, 2 * m + 5)  # unaligned: the padding branch is traced
    with tempfile.TemporaryDirectory(prefix="emlive-export-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter warns that it is legacy and that shapes are traced; both are intended:
        # it needs no extra dependency (onnxscript), and every shape-dependent value is a traced tensor op.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: DYNAMIC_DIMS, OUTPUT_NAME: DYNAMIC_DIMS},
            opset_version=opset,
            do_constant_folding=True,
        )
        model = onnx.load(str(path))
    model.producer_name = "emlive"
    model.producer_version = __version__
    model.doc_string = f"emlive {card.kind} denoiser '{card.name}' ({card.frames} frames, blind spot {card.blind_spot})"
    del model.metadata_props[:]
    for key, value in card_metadata(card, fp16).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def parity_inputs(frames: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Two (1, N, H, W) float32 inputs: standard-normal noise (61 x 83) and real-looking z-scored frames (96 x 128).

    The real-looking frames are a smooth random image (Gaussian-filtered noise, a few percent of drift between
    frames) sampled with Poisson noise at about 20 counts per pixel, each frame z-scored on its own.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    random = rng.standard_normal((1, frames, 61, 83)).astype(np.float32)
    h, w = 96, 128
    smooth = gaussian_filter(rng.random((h, w)), 4.0)
    smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-12)
    stack = np.stack([rng.poisson(20.0 * (0.5 + smooth * (1.0 + 0.03 * k))).astype(np.float32) for k in range(frames)])
    realistic, _, _ = zscore(stack)
    return [("random", random), ("real-looking", realistic[None].astype(np.float32))]


def _torch_reference(net: AnyNetwork, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net.float().cpu().eval()(torch.from_numpy(x)).numpy()


def compare(name: str, exported: np.ndarray, reference: np.ndarray, rel_bound: float) -> ParityResult:
    """Max abs difference of two outputs against ``rel_bound`` times the reference's range."""
    out_range = float(reference.max() - reference.min())
    scale = max(out_range, float(np.finfo(np.float32).eps) * max(1.0, float(np.abs(reference).max())))
    err = float(np.max(np.abs(exported.astype(np.float64) - reference.astype(np.float64))))
    return ParityResult(name, tuple(reference.shape), err, out_range, rel_bound * scale)


def compare_channels(name: str, exported: np.ndarray, reference: np.ndarray, fp16: bool) -> list[ParityResult]:
    """Parity of each output channel: the denoised mean (channel 0) against the relative bound, the log prior
    variance (channel 1 of a head=gaussian network) against its absolute bound (see the module docstring)."""
    if exported.shape != reference.shape:
        raise ParityError(
            f"{name}: the exported model outputs shape {exported.shape}, the PyTorch network {reference.shape}; "
            "re-export the model with this emlive"
        )
    results = [compare(name, exported[:, :1], reference[:, :1], relative_bound(fp16))]
    if reference.shape[1] > 1:
        log_var = compare(f"{name} (log-variance)", exported[:, 1:2], reference[:, 1:2], 0.0)
        results.append(replace(log_var, bound=log_var_bound(fp16), channel="log-variance"))
    return results


def check_onnx_parity(
    net: AnyNetwork, model_bytes: bytes, frames: int, fp16: bool, source: str = "exported model"
) -> list[ParityResult]:
    """Run the ONNX model (ONNX Runtime, CPU) and the PyTorch network on :func:`parity_inputs`; raise on failure."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    results = []
    for name, x in parity_inputs(frames):
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        results.extend(compare_channels(name, got, _torch_reference(net, x), fp16))
    raise_on_failure(results, source, "ONNX Runtime (CPU)", fp16)
    return results


def raise_on_failure(results: list[ParityResult], source: str, engine: str, fp16: bool) -> None:
    for r in results:
        log.info("parity %s (%s): %s", engine, "fp16" if fp16 else "fp32", r.describe())
    bad = [r for r in results if not r.passed]
    if bad:
        rule = (
            f"max error <= {relative_bound(fp16):g} x output range"
            if bad[0].channel == "mean"
            else f"max error of the log prior variance <= {log_var_bound(fp16):g} (absolute)"
        )
        raise ParityError(
            f"{source}: {engine} does not reproduce the PyTorch network: {bad[0].describe()}; the rule is "
            f"{rule} ({'fp16' if fp16 else 'fp32'}). Re-export "
            "with the default opset, without --fp16, or report the model and the versions of torch/onnxruntime"
        )


def export_onnx(
    source: str | Path | AnyNetwork,
    output: str | Path,
    *,
    card: ModelCard | None = None,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> ExportResult:
    """Export a checkpoint (path) or a network (with its ``card``) to ``output`` (.onnx) and check parity.

    Returns the written path, the precision, the opset and the parity results (max absolute error per input,
    also logged). Raises :class:`ParityError` when the exported model misses the bound, ``ModelFileError`` for an
    unreadable checkpoint, ``ConfigError`` for an unsupported opset or output name.
    """
    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"output {out}: an ONNX model file must end in .onnx; use e.g. -o {out.with_suffix('.onnx')}")
    if isinstance(source, BlindSpotNet | StudentNet):
        if card is None:
            card = ModelCard(network=source.config)
        net = source
        label = "network"
    else:
        net, card = load_checkpoint(source)
        label = str(source)
    if card.network != net.config:
        raise ConfigError(f"{label}: the card's network {card.network} differs from the weights' {net.config}")
    net = net.float().cpu().eval()
    log.info(
        "exporting %s to %s (%s, opset %d, %d frames, width %d)",
        label,
        out,
        "fp16" if fp16 else "fp32",
        opset,
        card.frames,
        card.network.width,
    )
    model = onnx_model_proto(net, card, fp16=fp16, opset=opset)
    data = model.SerializeToString()
    t_export = time.perf_counter() - t0
    log.info("traced and serialised in %.1f s (%.1f MB)", t_export, len(data) / 1e6)
    parity: list[ParityResult] = []
    if check:
        t1 = time.perf_counter()
        parity = check_onnx_parity(net, data, card.frames, fp16, str(out))
        log.info("parity checked in %.1f s", time.perf_counter() - t1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(out)
    seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out, seconds)
    return ExportResult(out, fp16, opset, len(data), seconds, parity)


def read_onnx_card(path: str | Path) -> tuple[onnx.ModelProto, ModelCard]:
    """Load an exported model and its card; ``ModelFileError`` naming the file when it is missing or not emlive's."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such ONNX model file; export one with `emlive export CHECKPOINT -o {p.name}`")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived errors or OSError for bad files
        raise ModelFileError(
            f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc}); re-export it with `emlive export`"
        ) from exc
    return model, card_from_model(model, str(p))


def card_from_model(model: onnx.ModelProto, source: str) -> ModelCard:
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if CARD_KEY not in meta:
        raise ModelFileError(
            f"{source}: an ONNX model without emlive metadata (no '{CARD_KEY}' in metadata_props); only models "
            "written by `emlive export CHECKPOINT -o model.onnx` carry the card the runtime needs"
        )
    return ModelCard.from_json(meta[CARD_KEY], source)
