"""``emlive train``: a thin layer over ``emlive.train.api.train``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from emlive.core.errors import require_training_stack

log = logging.getLogger(__name__)

TRAIN_HELP = """Train a blind-spot denoiser on noisy movies alone (self-supervised).

CONFIG is a YAML file or the name of a shipped config (synthetic-small, au-liquid-cell-3x3,
insitu-stem, cryoet-tilt-5x5). Any field can be overridden as section.key=value, for example:

  emlive train --config synthetic-small data.train=movie.tif optim.epochs=5 network.blind_spot=[1,3]

Writes checkpoints (best k by validation loss, and last), TensorBoard logs with sample images, a compact
model.pt and model_card.json into output.root/output.experiment/output.version.

Several processes (DDP): optim.devices=4 trains on 4 GPUs of this node (or 4 CPU processes with
optim.accelerator=cpu), optim.num_nodes for more machines; batch_size is per process (docs/training-multi.md).
"""


def train_command(
    config: str = typer.Option(..., "--config", "-c", help="YAML config file or shipped config name."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. optim.epochs=5."),
    resume: Path | None = typer.Option(None, "--resume", help="Checkpoint to resume from (reference: ckpt_path)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the validated config and exit."),
) -> None:
    require_training_stack("emlive train", ("torch", "lightning"))  # the light install's hint comes first
    from emlive.train.config import load_config  # no torch: a bad key is reported before Lightning loads

    extra = list(overrides or [])
    if resume is not None:
        extra.append(f"resume={resume}")
    cfg = load_config(config, extra)
    if print_config:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return
    from emlive.train.api import train

    result = train(cfg)
    if result.global_rank != 0:  # DDP: every process returns here; rank 0 reports
        return
    typer.echo(f"best checkpoint: {result.best_checkpoint}")
    typer.echo(f"model:           {result.model}")
    typer.echo(f"throughput:      {result.samples_per_second:.1f} samples/s")


DISTILL_HELP = """Distill a fast student network from a trained blind-spot teacher (emlive train's model).

The student sees the same noisy windows and learns the teacher's denoised output; it may see the pixel it
predicts, so it can be much smaller and faster than the teacher. CONFIG is a YAML file or the name of a
shipped distillation config (distill-cpu-live); overrides work as in `emlive train`:

  emlive distill --teacher models/synthetic-small.pt --config distill-cpu-live optim.max_minutes=4

teacher_ensemble=dihedral (the shipped config's choice) averages the teacher over 8 flips and rotations for
better targets (8 teacher passes per frame); targets=clean trains the same student on data.clean instead (the
supervised oracle, no teacher), the bound a quality table compares the self-supervised student with:

  emlive distill --config distill-cpu-live targets=clean

Prints the student's multiply-adds per pixel; writes checkpoints, TensorBoard logs, model.pt and model_card.json
(which records the teacher) into output.root/output.experiment/output.version.
"""


def distill_command(
    teacher: Path | None = typer.Option(
        None, "--teacher", "-t", help="The trained teacher model (.pt/.ckpt); not needed with targets=clean."
    ),
    config: str = typer.Option(..., "--config", "-c", help="YAML config file or shipped config name."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides, e.g. optim.max_minutes=4."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the validated config and exit."),
) -> None:
    require_training_stack("emlive distill", ("torch", "lightning"))  # the light install's hint comes first
    from emlive.train.config import load_distill_config  # no torch: a bad key is reported before Lightning loads

    cfg = load_distill_config(config, list(overrides or []), teacher=teacher)
    typer.echo(f"student: {cfg.network.macs_per_pixel() / 1e3:.1f} k multiply-adds per pixel")
    if print_config:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return
    from emlive.train.distill import distill

    result = distill(cfg)
    if result.global_rank != 0:  # DDP: every process returns here; rank 0 reports
        return
    typer.echo(f"best checkpoint: {result.best_checkpoint}")
    typer.echo(f"model:           {result.model}")
    typer.echo(f"throughput:      {result.samples_per_second:.1f} samples/s")


CALIBRATE_HELP = """Recalibrate a probabilistic model's variance head on a movie (self-supervised: no clean frames).

A network.head=gaussian model predicts each pixel's prior and its variance; after a short training the variance
is often too small where the prior is tight (an overconfident uncertainty map, a posterior that trusts the
prior too much). In the blind spot the prior's error and the pixel's noise are independent, so the residual of the
blind output minus the noise model's variance measures the true prior variance over many pixels. This measures a
scale for each of up to 20 bins of the head's output on the middle frames of MOVIE (at most 8 M pixels) and
writes it into the model's card; the service, the export and the benchmarks apply it, and `emlive denoise` checks
the noise model with it before it measures a table of its own on each movie it denoises. `emlive train` already
does this on its training data; use this for a model trained before, or on a first acquisition of the session
before `emlive serve` (its scene may differ from the training movie's). A .ckpt is written as the .pt of the same
name:

  emlive calibrate runs/exp/gaussian/model.pt movie.tif            # rewrites model.pt
  emlive calibrate runs/exp/gaussian/model.pt movie.tif -o calibrated.pt
  emlive export calibrated.pt -o calibrated.onnx                   # the export carries it
"""


def calibrate_command(
    model: Path = typer.Argument(..., help="A network.head=gaussian model (.pt or .ckpt)."),
    movie: Path = typer.Argument(..., help="A noisy movie of the detector (any format emlive reads)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the calibrated model here (.pt)."),
) -> None:
    require_training_stack("emlive calibrate", ("torch",))
    from emlive.core.readers import open_movie
    from emlive.train.calibrate import calibrate_model, calibration_png

    with open_movie(movie) as frames:
        table, target = calibrate_model(model, frames, str(movie), output)
    typer.echo(f"calibrated on {table.frames} frames ({table.pixels} px) of {movie}: {len(table.log_scale)} bins")
    typer.echo(f"model: {target}")
    typer.echo(f"reliability diagram: {calibration_png(target)}")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``distill`` and ``calibrate`` to the root app."""
    app.command("train", help=TRAIN_HELP)(train_command)
    app.command("distill", help=DISTILL_HELP)(distill_command)
    app.command("calibrate", help=CALIBRATE_HELP)(calibrate_command)
