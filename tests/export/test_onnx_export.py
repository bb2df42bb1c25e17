"""ONNX export: parity with PyTorch (fp32, fp16), dynamic shapes, a clean graph, the card in the metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from emlive.core.errors import ConfigError, ModelFileError
from emlive.core.modelcard import ModelCard
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.export.errors import ParityError
from emlive.export.folding import fold_network
from emlive.export.onnx_export import (
    FP16_RELATIVE_BOUND,
    FP32_RELATIVE_BOUND,
    INPUT_NAME,
    OUTPUT_NAME,
    check_onnx_parity,
    export_onnx,
    read_onnx_card,
)

# Ops that would mean the ring mask (or any data-dependent indexing) survived into the graph.
FORBIDDEN_OPS = {
    "ScatterND", "ScatterElements", "Scatter", "GatherND", "GatherElements", "Where", "NonZero", "Compress",
    "TopK", "Loop", "If", "Einsum", "Expand",
}  # fmt: skip


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _torch(net: BlindSpotNet, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig(width=16),
        NetworkConfig(width=8, frames=1, blind_spot=(1, 1), scales=1, blocks=0),
        NetworkConfig(width=8, frames=3, blind_spot=(1, 3), scales=3, blocks=1),
        NetworkConfig(width=8, blind_spot=(5, 5), scales=4, blocks=2),
        NetworkConfig(width=8, scales=2, blocks=1, head="gaussian"),
    ],
    ids=["default-arch", "single-frame-1scale", "3frames-1x3", "5x5", "gaussian-head"],
)
def test_folded_network_equals_the_original(cfg: NetworkConfig) -> None:
    torch.manual_seed(3)
    net = BlindSpotNet(cfg).eval()
    folded = fold_network(net)
    for shape in [(2, cfg.frames, 37, 53), (1, cfg.frames, 64, 64)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            ref, got = net(x), folded(x)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-5 * float(ref.max() - ref.min())


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_export_checks_parity_and_writes_the_card(full, tmp_path: Path, fp16: bool) -> None:
    result = export_onnx(full.ckpt, tmp_path / "m.onnx", fp16=fp16)
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert [p.name for p in result.parity] == ["random", "real-looking"]
    bound = FP16_RELATIVE_BOUND if fp16 else FP32_RELATIVE_BOUND
    for p in result.parity:
        assert p.passed and p.relative_error <= bound
    # measured: fp32 ~3e-7 of the range, fp16 ~4e-4; the bounds leave room for trained weights
    assert result.max_relative_error < (2e-3 if fp16 else 1e-5)
    model, card = read_onnx_card(result.path)
    assert card == full.card
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["frames"] == "5" and meta["blind_spot"] == "3x3" and meta["width"] == "16"
    assert meta["normalization"] == "zscore_per_frame" and meta["emlive_version"] == card.emlive_version
    assert meta["precision"] == ("fp16" if fp16 else "fp32")
    assert ModelCard.from_json(meta["emlive_card"]) == full.card
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {INPUT_NAME: onnx.TensorProto.FLOAT, OUTPUT_NAME: onnx.TensorProto.FLOAT}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    weight_types = {i.data_type for i in model.graph.initializer if i.name in conv_weights}
    assert weight_types == {onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT}


def test_dynamic_batch_height_and_width(full) -> None:
    model = onnx.load(str(full.onnx))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 5, "height", "width"]
    rng = np.random.default_rng(0)
    for shape in [(1, 5, 37, 53), (2, 5, 64, 96), (1, 5, 9, 130)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got, ref = _run(full.onnx, x), _torch(full.net, x)
        assert got.shape == ref.shape == (shape[0], 1, *shape[2:])
        assert np.abs(got - ref).max() <= FP32_RELATIVE_BOUND * np.ptp(ref)


def test_graph_has_plain_convolutions_and_no_mask_or_index_ops(full) -> None:
    model = onnx.load(str(full.onnx))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    assert {"Conv", "Pad", "Slice", "Resize", "AveragePool"} <= ops
    initializers = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # 2 embedding + 8 residual-block convs per scale (x4) + 9 rings + 9 folded projections + 2 head convs
    assert len(convs) == 1 + 2 + 4 * 4 + 9 + 9 + 2
    for n in convs:  # every weight is a stored tensor, not computed in the graph (no weight * mask)
        assert n.input[1] in initializers, n.name
    for n in model.graph.node:  # no Mul/Where touches a weight-shaped (4-D) constant
        if n.op_type in {"Mul", "Where", "Add", "Sub"}:
            for name in n.input:
                assert name not in initializers or len(initializers[name].dims) < 4, (n.op_type, name)
    gather_sources = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    shape_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Shape"}
    assert gather_sources <= shape_outputs, "Gather only reads shapes, never data"
    ring_weights = [onnx.numpy_helper.to_array(initializers[n.input[1]]) for n in convs if "rings." in n.input[1]]
    assert len(ring_weights) == 9
    for w in ring_weights:  # the blind taps are folded to exact zeros
        assert w.shape[-2:] == (3, 3) and np.all(w[..., 1, 1] == 0)


def test_parity_failure_is_an_error(full, tmp_path: Path) -> None:
    torch.manual_seed(99)
    other = BlindSpotNet(full.config).eval()
    with pytest.raises(ParityError, match=r"does not reproduce the PyTorch network.*rule is max error"):
        check_onnx_parity(other, full.onnx.read_bytes(), full.config.frames, fp16=False, source="m.onnx")


def test_opset_20_exports_and_bad_opset_or_suffix_is_a_config_error(small, tmp_path: Path) -> None:
    result = export_onnx(small.net, tmp_path / "o20.onnx", card=small.card, opset=20)
    assert result.opset == 20 and all(p.passed for p in result.parity)
    assert {o.version for o in onnx.load(str(result.path)).opset_import if o.domain in ("", "ai.onnx")} == {20}
    with pytest.raises(ConfigError, match=r"opset 9: .*13 to 20"):
        export_onnx(small.ckpt, tmp_path / "x.onnx", opset=9)
    with pytest.raises(ConfigError, match=r"must end in \.onnx"):
        export_onnx(small.ckpt, tmp_path / "x.bin")


def test_unreadable_models_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"missing\.onnx: no such ONNX model"):
        read_onnx_card(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match=r"junk\.onnx: not a readable ONNX model"):
        read_onnx_card(junk)
