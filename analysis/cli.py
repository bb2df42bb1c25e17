"""Subcommands of this component, registered on the root ``emlive`` app: ``noise-stats``, ``evaluate`` and
``denoise``.

Thin layers over :mod:`emlive.analysis.noise_stats`, :mod:`emlive.analysis.evaluate` and
:mod:`emlive.analysis.denoise`; the heavy imports
happen inside the commands so ``emlive --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from emlive.export.backendnames import backend_help

if TYPE_CHECKING:
    from emlive.analysis.noise_stats import NoiseEstimate

log = logging.getLogger(__name__)


class _Method(str, Enum):
    auto = "auto"
    difference = "difference"
    residual = "residual"


NOISE_STATS_HELP = """Measure the noise model of a movie and recommend a blind spot.

FILE is any movie emlive reads (TIFF stack or folder, MRC, DM3/DM4, SER, EMD, npy).

The signal is removed first, else the image's own structure swamps the noise:

- a movie (default for 2+ frames, --method difference): disjoint triplets of consecutive frames t, t+1, t+2
  (up to --max-pairs differences, spread over the movie; --frame I uses only frames I and I+1). Frames t+1 and
  t+2 are registered onto frame t with sub-pixel accuracy (stage drift) and shifted by a Fourier shift, which
  keeps the noise's correlation, then differenced: a drifting scene, lattice fringes included, cancels. What
  local motion leaves grows 4x from lag 1 to lag 2 while the noise does not: statistics are extrapolated to
  lag 0. The difference is variance-stabilised with
  the fitted Poisson-Gaussian model; blocks that still hold structure (particles moving on their own) and
  outlier pixels are left out.

- a single image (--method residual): the image minus a Gaussian-smoothed copy (sigma 2 px); the smoothing's
  effect on the correlation is deconvolved out to 3 px, and only positive correlation counts (the high-pass
  makes a negative lobe). Approximate: fine texture leaks in (worse at high dose). Use a movie when you have one.

The noise is correlated with itself shifted by (dy, dx), |dx|, |dy| <= --max-distance, with a standard error
from the spread between pairs.

Rule for the blind spot: the smallest odd window h x w such that no offset outside it has |correlation| above
--threshold by more than two standard errors. h and w are chosen independently, so correlation along x only
gives 1 x 3 and along y only 3 x 1; independent shot noise gives 1 x 1. Never more than 15 x 15 (the largest the
network builds): a correlation reaching further is reported with what to do. The confidence is the chance that
the least clear-cut offset lies on the right side of the threshold.

Movies also give the detector's Poisson-Gaussian model, variance = gain x (mean - offset) + read_noise^2,
corrected for charge sharing (which lowers the per-pixel variance): gain in counts per electron, and with
--offset (the detector's offset in counts, e.g. from a dark frame) the read noise; without it the combined
term read_noise^2 - gain x offset.

Prints the correlation at |dy|, |dx| <= 3, the recommendation with its confidence, the detector model and a
line to paste under network: in a training config (the blind_spot line); writes a PNG (heatmap and correlation
versus distance). --json prints everything machine-readably.
"""

EVALUATE_HELP = """Score a denoised movie, per frame and as mean ± std.

With --clean (a reference, e.g. simulated data): PSNR and SSIM as the paper defines them (each image min-max
stretched to [0, 255] and rounded; SSIM with an 11x11 Gaussian window, sigma 1.5, 5 px border cropped), and
the same with a FIXED data range in the clean movie's own units (max - min of the whole clean movie, or
--data-range; denoised and clean must then be in the same units). The per-image stretch of the paper's
definitions forgives any offset or gain error of the output and so flatters a denoiser; the fixed-range numbers
do not. With --noisy the noisy input is scored the same way, as the baseline.

Without a reference (real data), and always as extra information: the paper's cross-correlation SNR,
10 log10(r / (1 - r)) with r the correlation of two frames, for frames (i, i+1) AND for frames (i, i+N),
N = --offset-n. A network reading an N-frame window (N = 5) gives consecutive outputs that share N-1 of their
N noisy inputs: shared noise correlates, so SNR(i, i+1) reads high even for a plain temporal average. Outputs N
frames apart come from disjoint inputs; SNR(i, i+N) is the honest number (it also includes real change of the
scene over N frames).

--json prints everything machine-readably (non-finite numbers as the strings "inf", "-inf", "nan").
Writes a PNG: metrics versus frame (denoised vs noisy) and a noisy | denoised | clean crop.
"""


def noise_stats_command(
    file: Path = typer.Argument(..., help="Movie or image file, or a folder of single-page TIFFs."),
    frame: int | None = typer.Option(
        None, "--frame", help="Use only frames I and I+1 (a movie) or image I (residual); default: many pairs."
    ),
    max_distance: int = typer.Option(15, "--max-distance", help="Largest |dx|, |dy| measured (px)."),
    threshold: float = typer.Option(0.1, "--threshold", help="|correlation| the blind spot must leave outside."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="PNG to write (default: <FILE name>_noise_stats.png in the current folder)."
    ),
    gain: Path | None = typer.Option(None, "--gain", help="Gain reference image multiplying every frame."),
    method: _Method = typer.Option(
        _Method.auto, "--method", help="auto: difference for a movie, residual for a single image."
    ),
    offset: float | None = typer.Option(
        None, "--offset", help="Detector offset in counts (dark level): gives the read noise."
    ),
    max_pairs: int = typer.Option(32, "--max-pairs", min=1, help="Most frame differences measured (spread out)."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON instead of tables."),
) -> None:
    from emlive.analysis.noise_stats import estimate_noise
    from emlive.analysis.plots import plot_noise_correlation
    from emlive.core.readers import open_movie

    with open_movie(file, gain=gain) as movie:
        est = estimate_noise(movie, frame=frame, max_distance=max_distance, threshold=threshold,
                             method=method.value, max_pairs=max_pairs, offset=offset)  # fmt: skip
    h, w = est.blind_spot
    png = out if out is not None else Path(f"{file.stem or file.name}_noise_stats.png")
    png = plot_noise_correlation(est.correlation, (h, w), threshold, png, title=str(file))
    if as_json:
        payload = {"file": str(file), **est.to_dict(), "png": str(png)}
        typer.echo(json.dumps(payload, indent=2, allow_nan=False))
        return
    _echo_noise_estimate(file, est)
    typer.echo(f"picture: {png}")
    typer.echo("paste under network: in a training config (or override network.blind_spot=[h,w]):")
    typer.echo(f"blind_spot: [{h}, {w}]")


def _echo_noise_estimate(file: Path, est: NoiseEstimate) -> None:
    from emlive.analysis.noise_stats import correlation_table

    corr, decision = est.correlation, est.decision
    h, w = decision.blind_spot
    what = f"the smoothing residual of image {list(corr.frames)}"
    if corr.method == "difference":
        what = f"{corr.pairs} registered frame difference(s) over {len(corr.frames)} frames"
    typer.echo(f"{file}: noise from {what}, {corr.shape[0]} x {corr.shape[1]} px")
    if corr.shifts:
        typer.echo("registration shifts (dy, dx) px: " + ", ".join(f"({dy:+.3f}, {dx:+.3f})" for dy, dx in corr.shifts))
    k = min(3, corr.max_distance)
    typer.echo(f"correlation at |dy|, |dx| <= {k} (rows dy, columns dx), standard error about "
               f"{float(corr.standard_error[corr.max_distance, corr.max_distance + 1]):.4f}:")  # fmt: skip
    typer.echo(correlation_table(corr, k))
    typer.echo(
        f"recommended blind spot: {h} x {w} (h x w), confidence {decision.confidence:.3f} ({decision.label}): the "
        f"smallest window outside of which |correlation| < {decision.threshold:g} up to {corr.max_distance} px"
    )
    pg = est.poisson_gaussian
    if pg is not None:
        typer.echo(f"detector: gain {pg.gain:.4g} +- {pg.gain_se:.2g} counts/e-, per-pixel variance kept after "
                   f"charge sharing {pg.pixel_variance_factor:.3f}")  # fmt: skip
        if pg.read_noise is not None:
            typer.echo(f"          offset {pg.offset:g} counts (given), read noise {pg.read_noise:.4g} +- "
                       f"{pg.read_noise_se:.2g} counts")  # fmt: skip
        else:
            typer.echo(f"          read_noise^2 - gain x offset = {pg.intercept:.4g} counts^2 (give --offset "
                       "for the read noise: the fit cannot tell the two apart)")  # fmt: skip
    for text in est.warnings:
        typer.echo(f"warning: {text}")


def evaluate_command(
    denoised: Path = typer.Option(..., "--denoised", "-d", help="The denoised movie."),
    clean: Path | None = typer.Option(None, "--clean", "-c", help="Clean reference movie (e.g. simulated)."),
    noisy: Path | None = typer.Option(None, "--noisy", "-n", help="The noisy input, scored as the baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON instead of tables."),
    plot: Path | None = typer.Option(
        None, "--plot", help="PNG to write (default: <denoised name>_evaluate.png in the current folder)."
    ),
    offset_n: int = typer.Option(5, "--offset-n", help="N of SNR(i, i+N): the denoiser's window length."),
    data_range: float | None = typer.Option(
        None, "--data-range", help="Fixed data range of the fixed-range metrics (default: clean movie max - min)."
    ),
) -> None:
    from emlive.analysis.evaluate import evaluate, frame_table, summary_table
    from emlive.analysis.plots import plot_evaluation

    report = evaluate(denoised, clean=clean, noisy=noisy, offset_n=offset_n, data_range=data_range)
    png = plot if plot is not None else Path(f"{denoised.stem or denoised.name}_evaluate.png")
    png = plot_evaluation(report, png)
    if as_json:
        payload = report.to_dict()
        payload["png"] = str(png)
        typer.echo(json.dumps(payload, indent=2, allow_nan=False))
        return
    typer.echo(frame_table(report))
    typer.echo("")
    typer.echo(summary_table(report))
    if report.data_range is not None:
        typer.echo(f"fixed data range: {report.data_range:g}")
    typer.echo(f"picture: {png}")


class _DenoiseDtype(str, Enum):
    float32 = "float32"
    input = "input"


class _DenoiseFormat(str, Enum):
    tif = "tif"
    mrc = "mrc"
    zarr = "zarr"


class _DenoiseEstimate(str, Enum):
    blind = "blind"
    posterior = "posterior"


DENOISE_HELP = """Denoise recorded movies with a trained model, frame by frame.

INPUT is a movie (multi-page TIFF, folder of single-page TIFFs, MRC, DM3/DM4, SER, EMD, npy) or a folder of
movie files; a folder INPUT is written into the OUTPUT folder, each movie under its own name.

OUTPUT is a movie file (.tif/.tiff or .mrc/.mrcs) or a folder (created if needed; the movie keeps its name).
The format follows the input (TIFF stays TIFF, MRC stays MRC; DM3/DM4, SER, EMD and npy become TIFF) unless
OUTPUT's suffix or --format says otherwise. The pixel size is kept. Existing outputs are refused unless
--overwrite is given.

Each output frame is the model's prediction from a window of its N frames (N = 5 by default) centred on it,
mirrored about it at the ends of the movie (frame 0 reads 2,1,0,1,2, frame 1 reads 3,0,1,2,3: never the center
frame twice), normalised exactly as in training. Frames larger than a tile are cut into overlapping tiles
whose margins cover the network's receptive field, so tiles leave no seams. Frames are appended to OUTPUT as
they are produced (memory stays at a few frames); a run that stops leaves a readable movie of the frames done
so far.

OUTPUT NAME.ome.zarr (or --format zarr) writes an OME-Zarr image (NGFF 0.5), one chunk per frame, with the
pixel size, the model card and emlive's version in its metadata; a run that was killed continues with the same
command and --resume: complete frames are kept, only the missing ones are computed.

Pixels are float32 by default; --dtype input writes the input file's type instead: values are rounded to the
nearest integer (half to even) and clipped to the type's range (negative values become 0 in unsigned types).

The backend and device (CPU, or CUDA when present) are chosen by the runtime and logged; a progress bar shows
frames/s and megapixels/s.

A probabilistic model (trained with network.head=gaussian) outputs the posterior mean by default: the network's
blind estimate combined with the observed pixel under the noise model of its card (the re-opened blind spot).
Before each movie the noise model is checked on its own frames; the predicted gain (dB) and the check are logged.
When it passes, the variance head is calibrated on the movie itself (its middle frames, at most 8 M pixels: the
prior variance scaled per bin of the head's output so that it matches the blind-spot residuals, as `emlive
calibrate` does for a card) and the posterior and the uncertainty map use that table (in the report's
"calibration"). A failed check warns and falls back to the blind output, unless --estimate posterior is given.
--estimate blind always gives the blind output. --uncertainty PATH also writes, per frame, the std of the output
(posterior std, or the prior std for blind) in the input's units, float32, beside the movie in its format (PATH: a
file for one movie, else a folder that gets each movie's map under the movie's output name; TIFF and MRC outputs;
batch jobs write the same maps, bit for bit).

Batch jobs (several INPUTs, --cluster or --shard; OUTPUT is then a folder): the movies are cut into shards of
--shard-frames frames, run as tasks, and each movie is assembled from its parts into a file bit-identical to the
single-process one (OME-Zarr shards write their chunks in place). OUTPUT/emlive-manifest.jsonl records the job and
every finished shard: running the same command again skips what is done (a killed job redoes only the shards that
were in flight); another model or other options are refused unless --overwrite. --cluster local:N runs N worker
processes here (one thread each, --threads per engine: the cores split between them by default), tcp://HOST:PORT a
running dask scheduler, slurm:N / pbs:N N workers through dask-jobqueue (its jobqueue.yaml; docs/cluster/). --shard
i/N runs, in this process, the shards whose index % N == i: one task of a SLURM array job each, sharing the
folder's manifest. With --uncertainty each shard also writes its map's part, hashed and recorded with it, and each
map is assembled with its movie; the PATH is part of the job (another one is another job).
"""


def denoise_command(
    inputs: list[Path] = typer.Argument(
        ..., metavar="INPUT", help="Movie files, TIFF folders, or folders of movies (several: a batch job)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output movie file (.tif/.tiff/.mrc/.mrcs) or folder."),
    model: Path = typer.Option(
        ..., "--model", "-m", help="Checkpoint (.ckpt/.pt) or exported model (.onnx; .engine on a GPU)."
    ),
    backend: str = typer.Option(
        "auto",
        "--backend",
        help=backend_help("Inference backend:"),
    ),
    tile: int | None = typer.Option(
        None, "--tile", min=1, help="Tile size (px) for large frames; default: the runtime's choice."
    ),
    dtype: _DenoiseDtype = typer.Option(
        _DenoiseDtype.float32, "--dtype", help="float32, or input: the input's type (rounded and clipped)."
    ),
    fmt: _DenoiseFormat | None = typer.Option(
        None, "--format", help="Output format instead of the input's (DM/SER/EMD default to tif)."
    ),
    gain: Path | None = typer.Option(None, "--gain", help="Gain reference image multiplying every raw frame."),
    frames: str | None = typer.Option(None, "--frames", help="Frames a:b to denoise (a..b-1), e.g. 0:100 or 10:."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (default: the runtime's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    resume: bool = typer.Option(
        False, "--resume", help="OME-Zarr outputs: keep the complete frames of an interrupted run, write the rest."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (on a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    estimate: _DenoiseEstimate | None = typer.Option(
        None,
        "--estimate",
        help="Probabilistic (head=gaussian) models: blind, or posterior (forced even if the noise check fails). "
        "Default: the posterior when the card has a noise model and the check passes, else blind.",
    ),
    uncertainty: Path | None = typer.Option(
        None,
        "--uncertainty",
        help="Also write the std of each output frame (probabilistic models) here: a .tif/.mrc file (one movie) "
        "or a folder (each map under its movie's output name; batch jobs too).",
    ),
    preview: Path | None = typer.Option(
        None,
        "--preview",
        help="Also write a before/after preview: .png (first, middle, last frame, raw | denoised; needs matplotlib) "
        "or .mp4 (every frame side by side; needs the preview extra).",
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Run as shards on Dask: local:N, tcp://HOST:PORT, slurm:N or pbs:N (see below)."
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="i/N: run only the shards whose index % N == i (SLURM array jobs; 0-based i)."
    ),
    shard_frames: int | None = typer.Option(
        None, "--shard-frames", min=1, help="Frames per shard, K (K..2K-1; under 2K frames: one shard; default 128)."
    ),
) -> None:
    if cluster is not None or shard is not None or len(inputs) > 1:
        if preview is not None:
            from emlive.core.errors import ConfigError

            raise ConfigError(
                "--preview: a batch job (several INPUTs, --cluster or --shard) has no single movie to show; run "
                "`emlive denoise` on one movie with --preview (a short --frames range is enough)"
            )
        if resume:
            from emlive.core.errors import ConfigError

            raise ConfigError(
                "--resume: a batch job (several INPUTs, --cluster or --shard) resumes by itself from its folder's "
                "emlive-manifest.jsonl; drop --resume and run the same command again"
            )
        _denoise_batch(inputs, output, model, backend=backend, tile=tile, dtype=dtype.value,
                       fmt=None if fmt is None else fmt.value, gain=gain, frames=frames, threads=threads,
                       overwrite=overwrite, progress=progress, as_json=as_json, cluster=cluster, shard=shard,
                       shard_frames=shard_frames, estimate=None if estimate is None else estimate.value,
                       uncertainty=uncertainty)  # fmt: skip
        return
    from emlive.analysis.denoise import denoise_path
    from emlive.analysis.preview import MoviePreview

    with MoviePreview(preview) if preview is not None else contextlib.nullcontext() as observer:
        report = denoise_path(
            inputs[0],
            output,
            model,
            backend=backend,
            tile=tile,
            dtype=dtype.value,
            fmt=None if fmt is None else fmt.value,
            gain=gain,
            frames=frames,
            threads=threads,
            overwrite=overwrite,
            progress=progress,
            resume=resume,
            observer=observer,
            estimate=None if estimate is None else estimate.value,
            uncertainty=uncertainty,
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    for m in report.movies:
        typer.echo(
            f"{m.input} -> {m.output}: {m.frames} frames {m.height} x {m.width} {m.dtype}, "
            f"{m.frames_per_second:.2f} frames/s, {m.megapixels_per_second:.2f} MP/s"
        )
    typer.echo(
        f"{len(report.movies)} movie(s), {report.frames} frames in {report.seconds:.1f} s "
        f"({report.frames_per_second:.2f} frames/s, {report.megapixels_per_second:.2f} MP/s) "
        f"with {report.backend} on {report.device}"
    )
    if preview is not None:
        typer.echo(f"preview: {preview}")


def _denoise_batch(
    inputs: list[Path], output: Path, model: Path, *, as_json: bool, **options: Any
) -> None:
    """Several inputs, --cluster or --shard: the sharded, resumable batch job (emlive.analysis.batch)."""
    from emlive.analysis.batch import denoise_batch

    if options.get("shard_frames") is None:
        options.pop("shard_frames", None)  # the batch module's default
    report = denoise_batch(inputs, output, model, **options)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(
        f"{output}: {len(report.ran)} shard(s) run ({report.frames} frames, {report.frames_per_second:.2f} frames/s "
        f"on {len(report.workers)} worker(s)), {len(report.skipped)} already done; {len(report.outputs)} movie(s) "
        f"written, of {report.shards} shard(s) in all"
    )
    for path in report.maps:
        typer.echo(f"uncertainty map: {path}")


def register(app: typer.Typer) -> None:
    """Add ``noise-stats``, ``evaluate`` and ``denoise`` to the root app."""
    app.command("noise-stats", help=NOISE_STATS_HELP)(noise_stats_command)
    app.command("evaluate", help=EVALUATE_HELP)(evaluate_command)
    app.command("denoise", help=DENOISE_HELP)(denoise_command)
