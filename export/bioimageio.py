"""BioImage Model Zoo export: ``emlive export CHECKPOINT --bioimageio model.zip``.

Writes a package in the current bioimageio.spec model format (0.5.x), built with bioimageio.spec's own pydantic
classes (``ModelDescr`` and its nodes) and zipped with its own ``save_bioimageio_package``, which validates it.

What is in the package, and why
-------------------------------
* **Raw frames in, raw denoised frame out.** emlive's normalisation is baked into both graphs by
  :class:`RawFramesDenoiser`: every input frame is z-scored on its own (:func:`emlive.core.normalize.zscore_torch`,
  the rule of :mod:`emlive.core.normalize`) and the network's output is mapped back with the center frame's mean
  and std, as :class:`~emlive.export.runtime.Denoiser` does. BioImage Model Zoo pre-processing could express the
  per-frame z-score (``zero_mean_unit_variance`` over y, x) but no post-processing expresses "times the center
  input frame's std plus its mean" (``scale_mean_variance`` re-standardises the output itself), so any BMZ
  consumer gets emlive's numbers only with the normalisation inside the graph. The statistics are those of the
  tensor the graph is given: run whole frames for emlive's exact output. A consumer that cuts frames into blocks
  gets per-block statistics, and ``bioimageio.core.predict`` pads the input by the halo (symmetric mirror) before
  the graph sees it: the same quality, slightly different numbers (docs/bioimageio.md has the measurement and the
  call that gives emlive's exact output).
* **Input** ``raw``: float32 ``(batch, channel, y, x)``; the N consecutive frames are the *channel* axis (names
  ``t-2`` .. ``t+2``), because the network reads them as input channels and returns one frame: a time axis of N in
  and none out is a reduction the spec cannot describe, whereas N channels in, one channel out validates and is
  what the ONNX graph takes. y and x are parameterised ``min + n * step``: ``step`` is the network's pooling
  factor (``pad_multiple``) and ``min`` is two halos plus one step.
* **Output** ``denoised``: float32 ``(batch, channel=1, y, x)``, the denoised center frame in the input's units,
  with a **halo** of :func:`emlive.export.tiling.tile_margin` pixels on y and x (the receptive radius rounded up to
  the pooling factor: the runtime's own tiling margin), so a consumer that tiles with that halo gets the
  whole-frame answer (up to the per-block statistics above).
* **Weights**: TorchScript (``torch.jit.trace`` of ``BlindSpotNet.fused()`` in the wrapper, traced at an
  unaligned size so the padding is in the graph, then ``torch.jit.freeze``) and ONNX (the one exporter,
  :func:`emlive.export.onnx_export.onnx_model_proto`, on the folded network in the wrapper; its metadata keeps the
  card under ``emlive_bmz_card``, not ``emlive_card``, so emlive's runtime does not normalise twice).
* **Test tensors**: an N x S x S window of a real movie (``--test-movie``, e.g. the training data: the middle
  frames, centre crop) or of a simulated movie (:mod:`emlive.core.simulate`), with the output computed by
  emlive's runtime (:class:`~emlive.export.runtime.Denoiser`, ONNX Runtime CPU): the package's test output *is*
  emlive's output. Both weight formats are checked against it at export (:class:`~emlive.export.errors.ParityError`
  beyond ``FP32_RELATIVE_BOUND`` of the output range), and against each other on an unaligned random input.
* **Documentation**: ``README.md`` rendered from the model card (:func:`card_markdown`), the card itself attached
  as ``emlive_card.json``, a cover (raw | denoised center frame of the test window), the test window also as TIFF
  sample tensors, the reference paper cited (with the paper's dataset record: no DOI is stated in the project's
  reference material, and none is invented).

bioimageio.spec and bioimageio.core are the optional ``bioimageio`` extra (``pip install 'emlive[bioimageio]'``);
without them :func:`require_bioimageio` says so.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import tifffile
import torch
from torch import nn

from emlive import __version__
from emlive.core.errors import ConfigError, EmliveError
from emlive.core.modelcard import CARD_KEY, ModelCard, load_checkpoint
from emlive.core.network import BlindSpotNet
from emlive.core.normalize import zscore_torch
from emlive.core.student import StudentNet
from emlive.export.errors import ParityError
from emlive.export.folding import fold_network
from emlive.export.onnx_export import DEFAULT_OPSET, FP32_RELATIVE_BOUND, ParityResult, compare, onnx_model_proto
from emlive.export.tiling import tile_margin

if TYPE_CHECKING:
    from emlive.core.netconfig import AnyNetworkConfig
    from emlive.core.networks import AnyNetwork

log = logging.getLogger(__name__)

BIOIMAGEIO_INSTALL_HINT = "pip install 'emlive[bioimageio]'"
BMZ_CARD_KEY = "emlive_bmz_card"
INPUT_ID = "raw"
OUTPUT_ID = "denoised"
RAW_ROUNDING_ULPS = 8  # float32 roundings of the raw output tolerated on top of the relative bound (compare_raw)
DEFAULT_TEST_SIZE = 128  # the test window is the smallest valid size at least this large
DEFAULT_AUTHOR = "emlive developers"
DEFAULT_LICENSE = "MIT"
PAPER = (
    'Kim, Rhee et al., "Self-supervised machine-learning framework for high-throughput electron microscopy" '
    "(the SHINE network; emlive's blind-spot network follows it)"
)
# The only reference stated in the project's material (shared/seed: "Datasets for our paper are available on
# Zenodo at ..."); the spec needs a DOI or a URL per citation, and no DOI is stated there.
PAPER_URL = "https://zenodo.org/records/14922032"
TAGS = ("denoising", "electron-microscopy", "in-situ", "self-supervised", "blind-spot", "2d", "pytorch", "onnx")
FILES = {
    "onnx": "weights.onnx",
    "torchscript": "weights_torchscript.pt",
    "input": "test_input.npy",
    "output": "test_output.npy",
    "input_sample": "sample_input.tif",
    "output_sample": "sample_output.tif",
    "cover": "cover.png",
    "readme": "README.md",
    "card": "emlive_card.json",
}


class BioimageioMissingError(EmliveError):
    """The BioImage Model Zoo packages (bioimageio.spec, bioimageio.core) are not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent namespace package is missing
        return False


def require_bioimageio(what: str = "emlive export --bioimageio") -> None:
    """Raise :class:`BioimageioMissingError` naming ``what`` and the fix when bioimageio.spec/.core are missing."""
    missing = [name for name in ("bioimageio.spec", "bioimageio.core") if not _installed(name)]
    if missing:
        raise BioimageioMissingError(
            f"{what}: {', '.join(missing)} not installed (the BioImage Model Zoo packager and its test runner "
            f"are an optional extra); install them with {BIOIMAGEIO_INSTALL_HINT}"
        )


@dataclass(frozen=True)
class Geometry:
    """Valid frame sizes of the package, ``min_size + n * step``, and the output halo (both axes)."""

    step: int
    halo: int

    @property
    def min_size(self) -> int:
        return 2 * self.halo + self.step

    def size_at_least(self, size: int) -> int:
        n = max(0, -(-(size - self.min_size) // self.step))
        return self.min_size + n * self.step

    def check(self, size: int, what: str) -> int:
        if size < self.min_size or (size - self.min_size) % self.step:
            raise ConfigError(
                f"{what}={size}: the package's frame sizes are {self.min_size} + n x {self.step} px (two halos of "
                f"{self.halo} px, the receptive radius, plus the pooling factor {self.step}); use "
                f"{self.size_at_least(size)}"
            )
        return size


def geometry(config: AnyNetworkConfig) -> Geometry:
    """The package's size rule and halo for a network: the runtime's tiling margin (one rule, export.tiling)."""
    return Geometry(config.pad_multiple, tile_margin(config))


class RawFramesDenoiser(nn.Module):
    """Raw ``(B, N, H, W)`` frames in, the raw denoised center frame ``(B, 1, H, W)`` out: emlive's per-frame
    z-score before ``net`` and the center frame's mean/std after it, as the runtime does."""

    def __init__(self, net: nn.Module, frames: int) -> None:
        super().__init__()
        self.net = net
        self.center = frames // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, mean, std = zscore_torch(x)
        c = self.center
        return self.net(z)[:, :1] * std[:, c : c + 1] + mean[:, c : c + 1]


@dataclass
class BioimageioResult:
    """What :func:`export_bioimageio` wrote and how it checked it."""

    path: Path
    size_bytes: int
    seconds: float
    geometry: Geometry
    test_shape: tuple[int, ...]
    test_source: str
    parity: list[ParityResult] = field(default_factory=list)


@dataclass(frozen=True)
class PackageMeta:
    """The descriptive fields of a package that do not come from the card."""

    authors: tuple[str, ...] = (DEFAULT_AUTHOR,)
    license: str = DEFAULT_LICENSE
    name: str | None = None


# --- the network and its test window ---------------------------------------------------------------------------
def _load(source: str | Path | AnyNetwork, card: ModelCard | None) -> tuple[AnyNetwork, ModelCard, str]:
    if isinstance(source, BlindSpotNet | StudentNet):
        net, card, label = source, card or ModelCard(network=source.config), "network"
    else:
        net, card = load_checkpoint(source)
        label = str(source)
    if card.network != net.config:
        raise ConfigError(f"{label}: the card's network {card.network} differs from the weights' {net.config}")
    if card.network.out_channels != 1:
        raise ConfigError(
            f"{label}: a model with {card.network.out_channels} output channels (head "
            f"'{getattr(card.network, 'head', '?')}'): the BioImage Model Zoo package holds one denoised frame; "
            "export a model with the plain head (network.head=mean)"
        )
    return net.float().cpu().eval(), card, label


def sample_window(card: ModelCard, size: int, movie: str | Path | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """An ``(N, size, size)`` float32 window: the middle frames of ``movie`` (centre crop) or a simulated movie."""
    n = card.frames
    if movie is None:
        from emlive.core.simulate import make_config, simulate_movie

        noisy, _ = simulate_movie(make_config(height=size, width=size, frames=n, seed=seed))
        return noisy.astype(np.float32), f"simulated movie (emlive.core.simulate, seed {seed}, {n} x {size} x {size})"
    from emlive.core.readers import open_movie

    with open_movie(movie) as mv:
        t_len, h, w = mv.shape
        if t_len < n or h < size or w < size:
            raise ConfigError(
                f"--test-movie {movie}: {t_len} frames of {h} x {w}; the test window needs {n} frames of at least "
                f"{size} x {size}; give a larger movie or a smaller --test-size"
            )
        t0, y0, x0 = (t_len - n) // 2, (h - size) // 2, (w - size) // 2
        window = np.stack([mv.crop(t0 + i, y0, x0, size, size) for i in range(n)]).astype(np.float32)
    return window, f"{movie}, frames {t0}-{t0 + n - 1}, {size} x {size} crop at (y={y0}, x={x0})"


def runtime_output(net: AnyNetwork, card: ModelCard, window: np.ndarray) -> np.ndarray:
    """emlive's own answer for a window: :class:`~emlive.export.runtime.Denoiser` on ONNX Runtime (CPU)."""
    from emlive.export.runtime import Denoiser

    with Denoiser.from_network(net, card, backend="onnx_cpu") as den:
        return den.denoise_window(window)


# --- the two weight formats --------------------------------------------------------------------------------------
def _unaligned_example(card: ModelCard) -> torch.Tensor:
    m = card.network.pad_multiple
    gen = torch.Generator().manual_seed(0)
    return 100.0 + 10.0 * torch.randn(1, card.frames, 2 * m + 3, 2 * m + 5, generator=gen)


def torchscript_module(net: AnyNetwork, card: ModelCard) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the fused network inside :class:`RawFramesDenoiser` (padding branch traced)."""
    core: nn.Module = net.fused() if isinstance(net, BlindSpotNet) else net
    wrapper = RawFramesDenoiser(core, card.frames).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent values: they are traced ops here
        traced = torch.jit.trace(wrapper, (_unaligned_example(card),), check_trace=False)
    # frozen: weights inlined as constants, which TorchScript optimises better (measured ~2-3x faster warm calls)
    return cast("torch.jit.ScriptModule", torch.jit.freeze(traced.eval()))


def onnx_bytes(net: AnyNetwork, card: ModelCard, opset: int = DEFAULT_OPSET) -> bytes:
    """The folded network inside :class:`RawFramesDenoiser`, exported by the one ONNX exporter."""
    core: nn.Module = fold_network(net) if isinstance(net, BlindSpotNet) else net
    wrapper = RawFramesDenoiser(core, card.frames).eval()
    model = onnx_model_proto(cast("AnyNetwork", wrapper), card, opset=opset)
    for entry in model.metadata_props:
        if entry.key == CARD_KEY:
            entry.key = BMZ_CARD_KEY  # not emlive_card: this graph normalises itself, emlive's runtime must not
        elif entry.key == "input":
            entry.value = (
                f"{INPUT_ID}: float32 (batch, {card.frames}, height, width) raw frames; {OUTPUT_ID}: (batch, 1, "
                "height, width), the denoised center frame in the input's units (normalisation inside the graph)"
            )
    return cast(bytes, model.SerializeToString())


def _onnx_runner(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def _run_torchscript(module: torch.jit.ScriptModule, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return cast(torch.Tensor, module(torch.from_numpy(x))).numpy()


def compare_raw(name: str, exported: np.ndarray, reference: np.ndarray) -> ParityResult:
    """:func:`~emlive.export.onnx_export.compare` for outputs in the input's units: the bound is
    ``FP32_RELATIVE_BOUND`` of the output's range plus ``RAW_ROUNDING_ULPS`` float32 roundings of its largest value
    (the center frame's mean is added back in float32; no graph can be closer than that)."""
    result = compare(name, exported, reference, FP32_RELATIVE_BOUND)
    rounding = RAW_ROUNDING_ULPS * float(np.finfo(np.float32).eps) * float(np.abs(reference).max())
    return replace(result, bound=result.bound + rounding)


def describe_parity(r: ParityResult) -> str:
    h, w = r.shape[-2:]
    return (
        f"{r.name} ({h}x{w}): max abs error {r.max_abs_error:.3g}, {r.relative_error:.2g} of the output range "
        f"{r.output_range:.3g} (bound {r.bound:.3g})"
    )


def check_parity(
    onnx_data: bytes, script: torch.jit.ScriptModule, test_input: np.ndarray, reference: np.ndarray, card: ModelCard
) -> list[ParityResult]:
    """ONNX and TorchScript against emlive's runtime on the test window, and against each other on an unaligned
    random input; :class:`ParityError` beyond the bound of :func:`compare_raw`."""
    odd = _unaligned_example(card).numpy()
    run_onnx = _onnx_runner(onnx_data)
    results = [
        compare_raw("onnx vs emlive runtime", run_onnx(test_input), reference),
        compare_raw("torchscript vs emlive runtime", _run_torchscript(script, test_input), reference),
        compare_raw("torchscript vs onnx", _run_torchscript(script, odd), run_onnx(odd)),
    ]
    for r in results:
        log.info("parity %s", describe_parity(r))
    bad = [r for r in results if not r.passed]
    if bad:
        raise ParityError(
            f"BioImage Model Zoo export: {describe_parity(bad[0])}; the rule is max error <= {FP32_RELATIVE_BOUND:g} x "
            f"the output range + {RAW_ROUNDING_ULPS} float32 roundings of its largest value; report the model and "
            "the versions of torch/onnxruntime"
        )
    return results


# --- documentation -----------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _network_lines(card: ModelCard, geo: Geometry) -> list[str]:
    net = card.network
    lines = [f"| {key} | {_fmt(value)} |" for key, value in net.model_dump(mode="json").items()]
    lines += [
        f"| receptive radius | {net.receptive_radius} px |",
        f"| halo (tiling margin) | {geo.halo} px |",
        f"| multiply-adds per pixel | {net.macs_per_pixel():.3g} |",
    ]
    return ["| field | value |", "| --- | --- |", *lines]


def _blind_spot_text(card: ModelCard) -> str:
    bh, bw = card.blind_spot
    if card.teacher is not None:
        th, tw = card.teacher.blind_spot
        return (
            f"none: a non-blind student distilled from the blind-spot teacher '{card.teacher.name}' "
            f"(blind spot {th} x {tw})"
        )
    return f"{bh} x {bw} px: the network never sees the center frame's pixels inside this window"


def _noise_lines(card: ModelCard) -> list[str]:
    noise = card.noise
    if noise is None:
        return ["Not measured for this model (no `emlive noise-stats` result in its card)."]
    fields = noise.model_dump(mode="json").items()
    return [f"- {key}: {_fmt(value)}" for key, value in fields if value not in (None, [])]


def _training_lines(card: ModelCard) -> list[str]:
    summary = card.training.model_dump(mode="json", exclude={"movies"})
    lines = [f"- {key}: {_fmt(value)}" for key, value in summary.items() if value not in (None, [])]
    return lines or ["No training summary in the card."]


def _usage_lines(geo: Geometry, frames: int) -> list[str]:
    return [
        "```python",
        "from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description",
        "pipeline = create_prediction_pipeline(load_model_description('model.zip'))",
        f"# window: (1, {frames}, H, W) raw frames, H and W = {geo.min_size} + n x {geo.step}",
        "sample = Sample(members={'raw': Tensor(window, dims=('batch', 'channel', 'y', 'x'))}, stat={}, id='w')",
        "out = pipeline.predict_sample_without_blocking(sample, skip_input_padding=True, skip_output_cropping=True)",
        "denoised = out.members['denoised'].data.to_numpy()[0, 0]",
        "```",
        "",
        "That is emlive's exact output. `bioimageio.core.predict(model=..., inputs=window)` also works, but it pads "
        f"the input by the {geo.halo} px halo (symmetric mirror) and crops it again, so the per-frame statistics "
        "include the mirrored border and the outermost pixels see mirrored neighbours instead of emlive's zero "
        "padding: the same quality, slightly different numbers (docs/bioimageio.md in emlive has the measurement). "
        "Likewise a consumer that cuts frames into blocks gets per-block statistics. With emlive itself: "
        "`emlive denoise MOVIE -o OUT --model model.pt` (the original checkpoint) denoises movies of any frame size.",
    ]


def _validation_lines(result_parity: Sequence[ParityResult], test_source: str) -> list[str]:
    lines = [
        f"Test input: {test_source}. The test output was computed by emlive's runtime "
        "(`emlive.export.runtime.Denoiser`, ONNX Runtime CPU), so reproducing it reproduces emlive. Parity "
        "checked at export (max absolute error, and relative to the output's range):",
        "",
    ]
    lines += [f"- {p.name}: {p.max_abs_error:.3g} ({p.relative_error:.2g} of the range)" for p in result_parity]
    return lines


def card_markdown(card: ModelCard, geo: Geometry, parity: Sequence[ParityResult], test_source: str) -> str:
    """The package's README.md, rendered from the model card."""
    n = card.frames
    sections = [
        f"# {card.name}: emlive {card.kind} denoiser for electron microscopy movies",
        "",
        f"Self-supervised denoising of in-situ (S)TEM movies with emlive {card.emlive_version}: {n} consecutive "
        f"raw frames in (channel axis, frames t-{n // 2} .. t+{n // 2}), the denoised center frame out, in the "
        "input's units. Normalisation is inside the model: every frame z-scored on its own, the output mapped back "
        "with the center frame's mean and std.",
        "",
        "## Network",
        "",
        *_network_lines(card, geo),
        "",
        f"Blind spot: {_blind_spot_text(card)}.",
        "",
        "## Input and output",
        "",
        f"- `{INPUT_ID}`: float32 (batch, {n}, y, x); y and x are {geo.min_size} + n x {geo.step} px.",
        f"- `{OUTPUT_ID}`: float32 (batch, 1, y, x); halo {geo.halo} px on y and x: a tiling consumer crops it "
        "from each block (the receptive radius rounded up to the pooling factor, emlive's own tiling margin).",
        "",
        "## Noise model",
        "",
        *_noise_lines(card),
        "",
        "## Training",
        "",
        *_training_lines(card),
        "",
        "## How to use",
        "",
        *_usage_lines(geo, n),
        "",
        "## Validation",
        "",
        *_validation_lines(parity, test_source),
        "",
        "## Citation",
        "",
        f"{PAPER}. Datasets of the paper: {PAPER_URL}.",
        "",
    ]
    return "\n".join(sections)


def _display(frame: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(frame, [0.5, 99.5])
    scaled = (frame - lo) / max(float(hi - lo), 1e-12)
    return np.asarray(np.clip(scaled * 255.0 + 0.5, 0, 255), dtype=np.uint8)


def write_cover(path: Path, raw_center: np.ndarray, denoised: np.ndarray) -> Path:
    """A grey PNG, raw | denoised side by side (2:1, as the BioImage Model Zoo recommends)."""
    import imageio.v3 as iio

    iio.imwrite(path, np.concatenate([_display(raw_center), _display(denoised)], axis=1))
    return path


# --- the description ---------------------------------------------------------------------------------------------
def _space_axes(geo: Geometry, output: bool) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bmz

    if not output:
        return [
            bmz.SpaceInputAxis(id=bmz.AxisId(a), size=bmz.ParameterizedSize(min=geo.min_size, step=geo.step))
            for a in ("y", "x")
        ]
    return [
        bmz.SpaceOutputAxisWithHalo(
            id=bmz.AxisId(a),
            halo=geo.halo,
            size=bmz.SizeReference(tensor_id=bmz.TensorId(INPUT_ID), axis_id=bmz.AxisId(a)),
        )
        for a in ("y", "x")
    ]


def _tensors(card: ModelCard, geo: Geometry, files: dict[str, Path]) -> tuple[Any, Any]:
    from bioimageio.spec.model import v0_5 as bmz

    c = card.frames // 2
    names = ["t" if i == c else f"t{i - c:+d}" for i in range(card.frames)]
    data = bmz.IntervalOrRatioDataDescr(type="float32")
    inp = bmz.InputTensorDescr(
        id=bmz.TensorId(INPUT_ID),
        description=f"{card.frames} consecutive raw frames (any units); the center one is denoised",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=names), *_space_axes(geo, output=False)],
        test_tensor=bmz.FileDescr(source=files["input"]),
        sample_tensor=bmz.FileDescr(source=files["input_sample"]),
        data=data,
    )
    out = bmz.OutputTensorDescr(
        id=bmz.TensorId(OUTPUT_ID),
        description="the denoised center frame, in the input's units",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=["denoised"]), *_space_axes(geo, output=True)],
        test_tensor=bmz.FileDescr(source=files["output"]),
        sample_tensor=bmz.FileDescr(source=files["output_sample"]),
        data=data,
    )
    return inp, out


def _weights(files: dict[str, Path], opset: int) -> Any:
    from bioimageio.spec.model import v0_5 as bmz

    torch_version = bmz.Version(torch.__version__.split("+")[0])
    traced = "traced from the emlive checkpoint with the normalisation inside (raw frames in, raw frame out)"
    return bmz.WeightsDescr(
        torchscript=bmz.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=torch_version, comment=f"BlindSpotNet.fused() {traced}"
        ),
        onnx=bmz.OnnxWeightsDescr(
            source=files["onnx"],
            opset_version=opset,
            parent="torchscript",
            comment=f"the folded network (emlive.export.folding) {traced}; same function as the TorchScript",
        ),
    )


def _package_name(card: ModelCard, meta: PackageMeta) -> str:
    name = meta.name or f"emlive {card.name} denoiser"
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name)[:128].ljust(5, "-")


def build_description(card: ModelCard, geo: Geometry, files: dict[str, Path], meta: PackageMeta, opset: int) -> Any:
    """The ``bioimageio.spec`` v0.5 ``ModelDescr`` of the staged files (validated by its constructor)."""
    from bioimageio.spec.model import v0_5 as bmz
    from pydantic import ValidationError

    try:
        return _model_descr(bmz, card, geo, files, meta, opset)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"the BioImage Model Zoo description breaks a rule of bioimageio.spec "
            f"{bmz.ModelDescr.implemented_format_version}: {problems}; check --license (an SPDX id such as MIT) and "
            "--author (a name without '/')"
        ) from exc


def _model_descr(
    bmz: Any, card: ModelCard, geo: Geometry, files: dict[str, Path], meta: PackageMeta, opset: int
) -> Any:
    inp, out = _tensors(card, geo, files)
    return bmz.ModelDescr(
        name=_package_name(card, meta),
        description=(
            f"emlive self-supervised blind-spot denoiser for in-situ electron microscopy movies: {card.frames} raw "
            "frames in, the denoised center frame out (normalisation inside the model)."
        ),
        authors=[bmz.Author(name=a) for a in meta.authors],
        cite=[bmz.CiteEntry(text=PAPER, url=bmz.HttpUrl(PAPER_URL))],
        license=bmz.LicenseId(meta.license),
        tags=list(TAGS),
        documentation=bmz.FileDescr(source=files["readme"]),
        covers=[bmz.FileDescr(source=files["cover"])],
        attachments=[bmz.FileDescr(source=files["card"])],
        inputs=[inp],
        outputs=[out],
        weights=_weights(files, opset),
        config=bmz.Config(emlive={"version": __version__, "halo": geo.halo, "card": FILES["card"]}),
    )


# --- the export --------------------------------------------------------------------------------------------------
def _stage(
    root: Path, net: AnyNetwork, card: ModelCard, window: np.ndarray, opset: int
) -> tuple[dict[str, Path], list[ParityResult]]:
    files = {key: root / name for key, name in FILES.items()}
    test_input = window[None]
    reference = runtime_output(net, card, window)[None, None]
    data = onnx_bytes(net, card, opset)
    script = torchscript_module(net, card)
    parity = check_parity(data, script, test_input, reference, card)
    files["onnx"].write_bytes(data)
    torch.jit.save(script, str(files["torchscript"]))
    np.save(files["input"], test_input)
    np.save(files["output"], reference)
    tifffile.imwrite(files["input_sample"], window)
    tifffile.imwrite(files["output_sample"], reference[0, 0])
    write_cover(files["cover"], window[card.frames // 2], reference[0, 0])
    files["card"].write_text(card.model_dump_json(indent=2) + "\n")
    return files, parity


def export_bioimageio(
    source: str | Path | AnyNetwork,
    output: str | Path,
    *,
    card: ModelCard | None = None,
    meta: PackageMeta | None = None,
    test_movie: str | Path | None = None,
    test_size: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> BioimageioResult:
    """Write a BioImage Model Zoo package (.zip) of a checkpoint (path) or a network (with its ``card``).

    Raises :class:`BioimageioMissingError` without the ``bioimageio`` extra, ``ConfigError`` for a bad output
    name or test size, :class:`ParityError` when a weight format misses emlive's runtime.
    """
    require_bioimageio()
    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"--bioimageio {out}: a BioImage Model Zoo package is a .zip; use {out.with_suffix('.zip')}")
    net, card, label = _load(source, card)
    geo = geometry(card.network)
    size = geo.check(test_size, "--test-size") if test_size else geo.size_at_least(DEFAULT_TEST_SIZE)
    window, test_source = sample_window(card, size, test_movie)
    log.info("packaging %s for the BioImage Model Zoo: test window %s, halo %d px", label, window.shape, geo.halo)
    with tempfile.TemporaryDirectory(prefix="emlive-bmz-") as tmp:
        files, parity = _stage(Path(tmp), net, card, window, opset)
        files["readme"].write_text(card_markdown(card, geo, parity, test_source))
        descr = build_description(card, geo, files, meta or PackageMeta(), opset)
        packed = _save(descr, Path(tmp) / "package.zip")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(packed, out)
    seconds = time.perf_counter() - t0
    log.info("wrote %s (%.2f MB) in %.1f s", out, out.stat().st_size / 1e6, seconds)
    return BioimageioResult(out, out.stat().st_size, seconds, geo, tuple(window[None].shape), test_source, parity)


def _save(descr: Any, path: Path) -> Path:
    from bioimageio.spec import save_bioimageio_package

    return Path(save_bioimageio_package(descr, output_path=path))
