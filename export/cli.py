"""Subcommands of this component, registered on the root ``emlive`` app: ``emlive export`` and ``emlive bench``.

Heavy imports (torch, onnx, onnxruntime) happen inside the commands so that ``emlive --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from emlive.core.errors import ConfigError
from emlive.export.backendnames import backend_help

if TYPE_CHECKING:
    from emlive.export.bioimageio import PackageMeta

DEFAULT_OPSET = 17  # mirrors emlive.export.onnx_export.DEFAULT_OPSET without importing torch at start-up


def export(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint (.ckpt from `emlive train`, or .pt)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="ONNX model to write (.onnx)."),
    fp16: bool = typer.Option(False, "--fp16", help="Float16 weights and activations (float32 input/output)."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset (13-20)."),
    tensorrt: bool = typer.Option(
        False, "--tensorrt", help="Also build a TensorRT engine (MODEL.engine + MODEL.engine.json); needs CUDA."
    ),
    trt_min: int = typer.Option(32, "--trt-min", help="Smallest frame side the TensorRT engine accepts (px)."),
    trt_opt: int = typer.Option(1024, "--trt-opt", help="Frame side TensorRT optimises for (px)."),
    trt_max: int = typer.Option(2048, "--trt-max", help="Largest frame side (px); larger frames are tiled."),
    trt_fp32: bool = typer.Option(False, "--trt-fp32", help="Build a float32 TensorRT engine (default fp16)."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check against PyTorch."),
    bioimageio: Path | None = typer.Option(
        None,
        "--bioimageio",
        help="Write a BioImage Model Zoo package (.zip: ONNX + TorchScript, test tensors, model card); with or "
        "instead of -o. Needs the bioimageio extra.",
    ),
    author: list[str] = typer.Option(
        None, "--author", help="Package author, repeatable (--bioimageio; default: 'emlive developers')."
    ),
    license_id: str = typer.Option("MIT", "--license", help="SPDX license of the package (--bioimageio)."),
    test_movie: Path | None = typer.Option(
        None,
        "--test-movie",
        help="Movie whose middle frames (centre crop) become the package's test tensors (--bioimageio; default: a "
        "simulated movie).",
    ),
    test_size: int | None = typer.Option(
        None, "--test-size", help="Side of the test window in px (--bioimageio; default: the smallest valid >= 128)."
    ),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch/height/width, model card in the metadata), check that ONNX
    Runtime reproduces PyTorch, and optionally build a TensorRT engine; or (--bioimageio) a BioImage Model Zoo
    package."""
    if output is None and (bioimageio is None or tensorrt):
        raise ConfigError(
            "emlive export: no ONNX output given; give -o MODEL.onnx (needed by --tensorrt) and/or --bioimageio "
            "MODEL.zip"
        )
    if bioimageio is not None:
        from emlive.export.bioimageio import PackageMeta, require_bioimageio

        require_bioimageio()  # before any export: fail fast when the extra is missing
        meta = PackageMeta(authors=tuple(author) if author else PackageMeta().authors, license=license_id)
        _export_bioimageio(checkpoint, bioimageio, meta, test_movie, test_size, opset)
    if output is None:
        return
    from emlive.export.onnx_export import export_onnx

    profile = None
    if tensorrt:  # fail before the export, not after it, when TensorRT or CUDA is missing
        from emlive.export.tensorrt import ShapeProfile, require_tensorrt

        require_tensorrt()
        profile = ShapeProfile(trt_min, trt_opt, trt_max)
    result = export_onnx(checkpoint, output, fp16=fp16, opset=opset, check=not no_check)
    typer.echo(
        f"wrote {result.path} ({'fp16' if fp16 else 'fp32'}, opset {result.opset}, "
        f"{result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s"
    )
    for p in result.parity:
        typer.echo(f"  parity onnxruntime vs torch: {p.describe()}")
    if tensorrt:
        from emlive.core.modelcard import load_checkpoint
        from emlive.export.tensorrt import export_tensorrt

        net, card = load_checkpoint(checkpoint)
        trt = export_tensorrt(net, card, result.path, profile=profile, fp16=not trt_fp32, check=not no_check)
        typer.echo(f"wrote {trt.engine} and {trt.sidecar} (cached as {trt.cached})")
        for p in trt.parity:
            typer.echo(f"  parity tensorrt vs torch: {p.describe()}")


def _export_bioimageio(
    checkpoint: Path, path: Path, meta: PackageMeta, test_movie: Path | None, test_size: int | None, opset: int
) -> None:
    from emlive.export.bioimageio import describe_parity, export_bioimageio

    result = export_bioimageio(checkpoint, path, meta=meta, test_movie=test_movie, test_size=test_size, opset=opset)
    geo = result.geometry
    typer.echo(
        f"wrote {result.path} (BioImage Model Zoo, {result.size_bytes / 1e6:.2f} MB) in {result.seconds:.1f} s: "
        f"frames {geo.min_size} + n x {geo.step} px, halo {geo.halo} px, test window {result.test_shape}"
    )
    for p in result.parity:
        typer.echo(f"  parity {describe_parity(p)}")


def bench(
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model to time, repeatable: PATH or LABEL=PATH (checkpoint, .onnx or engine; the keyword 'random' is a "
        "random-weight width-64 blind-spot network); rows are labelled by LABEL or the card's name, speed-ups are "
        "against the first. Default: -m teacher=models/synthetic-small.pt -m student=models/cpu-live-student.pt.",
    ),
    sizes: str | None = typer.Option(
        None, "--sizes", help="Comma-separated square frame sizes; default 512,1024,2048 (and 4096 on a GPU)."
    ),
    repeats: int = typer.Option(
        3, "--repeats", help="Timed repetitions at 512 px; fewer for larger frames (x 512/size, at least 1)."
    ),
    backends: str | None = typer.Option(
        None, "--backends", help=backend_help("Comma-separated backends; default: every available.", with_auto=False)
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads; default: physical cores."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Inference speed of each model (default: the shipped teacher and CPU-live student) on every available backend
    (multiply-adds per pixel, ms/frame, frames/s, MP/s, GFLOP/s), its speed-up over PyTorch eager on the same
    weights and over the first model, measured side by side (interleaved) in one run."""
    from emlive.bench.model_specs import parse_model_specs
    from emlive.bench.runtime_bench import format_table, parse_sizes, run_runtime_benchmark
    from emlive.export.runtime import parse_backend

    specs = parse_model_specs(model or None, ensembles=False, allow_random=True)
    size_list = parse_sizes(sizes) if sizes else None
    backend_list = [parse_backend(b.strip()).value for b in backends.split(",") if b.strip()] if backends else None
    report = run_runtime_benchmark(specs, size_list, repeats, backend_list, threads, json_path)
    for line in format_table(report):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add this component's subcommands to ``app``."""
    app.command("export")(export)
    app.command("bench")(bench)
