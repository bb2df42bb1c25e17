"""Subcommands of this component, registered on the root ``emlive`` app: ``emlive simulate``."""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


# The choices mirror emlive.core.simulate's enums (kept here so `emlive --help` imports nothing heavy;
# tests/core checks that both stay equal).
class CorrelatedChoice(enum.StrEnum):
    NONE = "none"
    ISOTROPIC = "isotropic"
    HORIZONTAL = "horizontal"
    VERTICAL = "vertical"


class FormatChoice(enum.StrEnum):
    TIF = "tif"
    MRC = "mrc"


class DtypeChoice(enum.StrEnum):
    UINT16 = "uint16"
    FLOAT32 = "float32"


SIMULATE_HELP = (
    "Write a synthetic in-situ TEM movie with its clean ground truth.\n\n"
    "Writes into OUT: noisy.<tif|mrc> (the detector movie, T x H x W, uint16 counts by default), clean.<tif|mrc> "
    "(float32: the expected value of every noisy pixel, in the same counts: gain x dose x intensity + offset, "
    "blurred by the same detector kernel when the noise is correlated) and manifest.json (every setting, the "
    "emlive version, the noise model and the mean counts).\n\n"
    "The scene: nanoparticles with lattice fringes that drift, rotate and grow on an amorphous film. The noise: "
    "Poisson shot noise of DOSE electrons per pixel per frame on the film, times GAIN counts per electron, plus "
    "OFFSET counts, optional read noise and hot pixels, then an optional correlated detector kernel. Frames depend "
    "only on the seed and their index. Lengths are in pixels, rates per frame.\n\n"
    "A realistic in-situ movie from an integrating detector (the case a plain frame difference fails on): "
    "--dose 20 --gain 8 --offset 100 --read-noise 10 --correlated isotropic --drift 0.3 --lattice-contrast 0.8 "
    "--lattice-spacing 5 --lattice-coverage 0.8. manifest.json's truth block holds the gain, offset, read noise "
    "and kernel to compare `emlive noise-stats` with."
)


def simulate(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write noisy.*, clean.* and manifest.json into (created if missing)."
    ),
    frames: int = typer.Option(64, "--frames", "-t", help="Number of frames T."),
    size: int = typer.Option(512, "--size", help="Frame height and width in pixels (square frames)."),
    height: int | None = typer.Option(None, "--height", help="Frame height H in pixels (overrides --size)."),
    width: int | None = typer.Option(None, "--width", help="Frame width W in pixels (overrides --size)."),
    dose: float = typer.Option(5.0, "--dose", help="Dose in electrons per pixel per frame on the film."),
    correlated: CorrelatedChoice = typer.Option(
        CorrelatedChoice.NONE,
        "--correlated",
        help="Detector noise correlation: none (independent pixels), isotropic (3x3 Gaussian kernel, sigma 0.8 px), "
        "horizontal (1x3 kernel along x) or vertical (3x1 along y).",
    ),
    fmt: FormatChoice = typer.Option(FormatChoice.TIF, "--format", help="File format: tif (BigTIFF) or mrc."),
    dtype: DtypeChoice = typer.Option(DtypeChoice.UINT16, "--dtype", help="Pixel type of the noisy movie."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scene and of every frame's noise."),
    particles: int = typer.Option(8, "--particles", help="Number of nanoparticles."),
    gain: float = typer.Option(1.0, "--gain", help="Detector gain in counts per electron."),
    offset: float = typer.Option(0.0, "--offset", help="Detector offset in counts."),
    read_noise: float = typer.Option(0.0, "--read-noise", help="Gaussian read noise in counts (std)."),
    hot_pixels: float = typer.Option(0.0, "--hot-pixels", help="Fraction of hot pixels (fixed positions), 0-0.1."),
    drift: float = typer.Option(0.2, "--drift", help="Stage drift of the whole field in px/frame (sub-pixel, exact)."),
    drift_angle: float | None = typer.Option(
        None, "--drift-angle", help="Direction of the drift in degrees from +x towards +y (default: random)."
    ),
    lattice_contrast: float = typer.Option(
        0.0, "--lattice-contrast", help="Lattice fringes over the field (a crystal): amplitude 0-0.9, 0 = none."
    ),
    lattice_spacing: float = typer.Option(5.0, "--lattice-spacing", help="Period of the field's fringes in px."),
    lattice_coverage: float = typer.Option(
        1.0, "--lattice-coverage", help="Fraction of the field the crystal covers (0.05-1, smooth-edged grains)."
    ),
    particle_contrast: float = typer.Option(
        -0.35, "--particle-contrast", help="Particle contrast at its centre: < 0 darker (bright field), > 0 brighter."
    ),
    particle_speed: float = typer.Option(0.3, "--particle-speed", help="Mean particle speed in px/frame."),
    rotation: float = typer.Option(0.5, "--rotation", help="Mean particle rotation in degrees/frame."),
    growth: float = typer.Option(0.02, "--growth", help="Mean particle radius growth in px/frame (< 0 shrinks)."),
    pixel_size: float = typer.Option(0.05, "--pixel-size", help="Pixel size stored in the files, in nm."),
) -> None:
    from emlive.core.simulate import make_config, write_simulation

    config = make_config(
        height=size if height is None else height,
        width=size if width is None else width,
        frames=frames,
        dose=dose,
        correlated_noise=correlated.value,
        dtype=dtype.value,
        seed=seed,
        n_particles=particles,
        gain=gain,
        offset=offset,
        read_noise=read_noise,
        hot_pixel_fraction=hot_pixels,
        drift=drift,
        drift_angle=drift_angle,
        field_lattice_contrast=lattice_contrast,
        field_lattice_spacing=lattice_spacing,
        field_lattice_coverage=lattice_coverage,
        particle_contrast=particle_contrast,
        particle_speed=particle_speed,
        rotation=rotation,
        growth=growth,
        pixel_size_nm=pixel_size,
    )
    files = write_simulation(config, out, fmt.value)
    logger.info("simulation written: %s (noisy), %s (clean), %s", files.noisy, files.clean, files.manifest)


def register(app: typer.Typer) -> None:
    """Add this component's subcommands to ``app``."""
    app.command("simulate", help=SIMULATE_HELP, no_args_is_help=True)(simulate)
