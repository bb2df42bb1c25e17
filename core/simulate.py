"""Synthetic in-situ movies with a known clean truth: tests, the demo, benchmarks and the detector simulator.

Scene (in "intensity" units, the amorphous background averaging 1):

* an amorphous film: a smooth random field (correlation length ``background_correlation`` px, plus a weaker
  component eight times coarser for thickness variation) of relative strength ``background_strength``;
* optionally a crystal over the field (``field_lattice_contrast`` > 0): two sets of lattice fringes crossed at 60
  degrees, period ``field_lattice_spacing`` px, over grains covering ``field_lattice_coverage`` of the field; it
  drifts with the film (the realistic in-situ case that a plain frame difference cannot separate from noise);
* nanoparticles: soft-edged discs whose mass-thickness profile (a projected sphere on a plateau) makes them darker
  (``particle_contrast`` < 0, bright-field) or brighter (> 0, dark-field) than the film, carrying lattice fringes
  (one or two crossed sets of sinusoidal fringes, spacing ``lattice_spacing`` px, amplitude ``fringe_contrast``)
  that rotate with the particle. Particles move (``particle_speed``), rotate (``rotation``) and grow or shrink
  (``growth``); the whole field drifts (``drift`` px/frame towards ``drift_angle``, random when unset; sub-pixel
  and exact: a Fourier shift for the film, analytic for the crystal) and wraps around, so movies can be endless.

Detector, applied in this order: Poisson shot noise of ``dose`` x intensity electrons, times ``gain`` (counts per
electron) plus ``offset`` (counts), optional Gaussian read noise, hot pixels (fixed positions, set to
``hot_pixel_value``), then, for ``correlated_noise`` other than none, a small normalised detector kernel applied to
the noisy image (isotropic: 3x3 Gaussian, sigma 0.8 px; horizontal: [1/4, 1/2, 1/4] along x; vertical: along y),
and finally the output dtype (uint16: rounded half to even and clipped to 0..65535).

The clean truth is the expected value of the noisy image in the same units: gain * dose * intensity + offset,
with the kernel applied too when the noise is correlated (the kernel sums to one, so the mean is kept), without
hot pixels and read noise (zero mean). Frame ``t`` depends only on (config, seed, t): frames can be made one at a
time, in any order.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emlive.core.errors import ConfigError, InputFileError
from emlive.core.filters import correlate1d, next_fast_len
from emlive.core.readers import FrameIndexError, Movie

logger = logging.getLogger(__name__)

_STATIC_STREAM = 0x5CE7E  # seed-sequence tags: the scene (static) and the per-frame noise
_NOISE_STREAM = 0x7015E
_LATTICE_STREAM = 0x1A77C  # the field's crystal (drawn apart, so scenes without it are unchanged)
# Charge sharing: each electron's signal spreads to its direct neighbours with this weight (per axis).
# Noise correlation is then about 0.5 at 1 px and below 0.08 at 2 px, so a 3x3 (or 1x3 / 3x1) blind spot covers it.
CHARGE_SHARING = 0.3


class CorrelatedNoise(enum.StrEnum):
    """Spatial correlation of the detector noise: none, or a small normalised kernel applied to the noisy image."""

    NONE = "none"
    ISOTROPIC = "isotropic"
    HORIZONTAL = "horizontal"
    VERTICAL = "vertical"


class OutputDtype(enum.StrEnum):
    """Pixel type of the noisy movie (the clean truth is always float32)."""

    UINT16 = "uint16"
    FLOAT32 = "float32"


class OutputFormat(enum.StrEnum):
    """File format written by :func:`write_simulation` (the value is the file suffix)."""

    TIFF = "tif"
    MRC = "mrc"


class SimulationConfig(BaseModel):
    """Everything that defines a synthetic movie; lengths in pixels, rates per frame."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    height: int = Field(512, ge=8, le=16384, description="Frame height H (px).")
    width: int = Field(512, ge=8, le=16384, description="Frame width W (px).")
    frames: int = Field(64, ge=1, le=1_000_000, description="Number of frames T.")
    dose: float = Field(5.0, gt=0, le=1e6, description="Electrons per pixel per frame on the film (intensity 1).")
    pixel_size_nm: float | None = Field(0.05, gt=0, le=1e4, description="Pixel size written to the files (nm).")
    n_particles: int = Field(8, ge=0, le=1000, description="Number of nanoparticles.")
    radius_min: float = Field(10.0, ge=2, le=2000, description="Smallest initial particle radius (px).")
    radius_max: float = Field(40.0, ge=2, le=2000, description="Largest initial particle radius (px).")
    lattice_spacing: float = Field(4.0, ge=2, le=200, description="Mean lattice-fringe period (px), +-15%.")
    fringe_contrast: float = Field(0.3, ge=0, le=1, description="Amplitude of the fringes (relative intensity).")
    particle_contrast: float = Field(
        -0.35, ge=-0.95, le=5, description="Mass-thickness contrast at a particle's centre: < 0 darker, > 0 brighter."
    )
    drift: float = Field(0.2, ge=0, le=100, description="Stage drift of the whole field (px/frame).")
    drift_angle: float | None = Field(
        None, ge=-360, le=360, description="Direction of the stage drift (degrees from +x towards +y); None: random."
    )
    field_lattice_contrast: float = Field(
        0.0, ge=0, le=0.9, description="Amplitude of lattice fringes over the field (a crystal; 0: none)."
    )
    field_lattice_spacing: float = Field(5.0, ge=2, le=200, description="Period of the field's lattice fringes (px).")
    field_lattice_coverage: float = Field(
        1.0, ge=0.05, le=1, description="Fraction of the field covered by the crystal (smooth-edged grains)."
    )
    particle_speed: float = Field(0.3, ge=0, le=100, description="Mean particle speed (px/frame).")
    rotation: float = Field(0.5, ge=0, le=90, description="Mean particle rotation rate (deg/frame).")
    growth: float = Field(0.02, ge=-10, le=10, description="Mean change of particle radius (px/frame).")
    background_strength: float = Field(0.15, ge=0, le=1, description="Std of the amorphous film's intensity.")
    background_correlation: float = Field(2.0, ge=0.5, le=200, description="Correlation length of the film (px).")
    gain: float = Field(1.0, gt=0, le=1e4, description="Detector counts per electron.")
    offset: float = Field(0.0, ge=0, le=6e4, description="Detector offset (counts).")
    read_noise: float = Field(0.0, ge=0, le=1e4, description="Gaussian read noise (counts, std).")
    hot_pixel_fraction: float = Field(0.0, ge=0, le=0.1, description="Fraction of hot pixels (fixed positions).")
    hot_pixel_value: float = Field(4000.0, ge=0, le=65535, description="Value of a hot pixel (counts).")
    correlated_noise: CorrelatedNoise = Field(CorrelatedNoise.NONE, description="Detector noise correlation.")
    dtype: OutputDtype = Field(OutputDtype.UINT16, description="Pixel type of the noisy movie.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Random seed: the scene and every frame's noise.")

    @model_validator(mode="after")
    def _radii_ordered(self) -> Self:
        if self.radius_min > self.radius_max:
            raise ValueError(
                f"radius_min={self.radius_min} exceeds radius_max={self.radius_max}: set radius_min <= radius_max"
            )
        return self

    @property
    def kernel(self) -> np.ndarray | None:
        """The normalised detector kernel (kh, kw) for the correlated variants, or None."""
        return _kernel_2d(self.correlated_noise)

    def noise_model(self) -> str:
        """A one-line description of the noise model, for manifests and logs."""
        text = f"counts = {self.gain:g} * Poisson({self.dose:g} * intensity) + {self.offset:g}"
        if self.read_noise > 0:
            text += f" + Normal(0, {self.read_noise:g}^2)"
        if self.hot_pixel_fraction > 0:
            text += f"; hot pixels ({self.hot_pixel_fraction:g} of pixels) = {self.hot_pixel_value:g}"
        if self.correlated_noise != CorrelatedNoise.NONE:
            text += f"; then convolved with the normalised {self.correlated_noise.value} kernel"
        if self.dtype == OutputDtype.UINT16:
            text += "; rounded and clipped to uint16"
        return text


def detector_truth(config: SimulationConfig) -> dict[str, Any]:
    """The detector's true noise parameters, as a noise estimator reports them (for manifests and tests).

    Before the charge-sharing kernel, a pixel's variance is ``gain * (mean - offset) + read_noise**2``; the
    kernel (sum 1) keeps the mean and multiplies the per-pixel variance by ``kernel_sum_of_squares``.
    """
    kernel = config.kernel
    return {
        "gain": config.gain,
        "offset": config.offset,
        "read_noise": config.read_noise,
        "kernel": None if kernel is None else kernel.tolist(),
        "kernel_sum_of_squares": 1.0 if kernel is None else float(np.sum(kernel**2)),
        "drift_px_per_frame": config.drift,
        "field_lattice_spacing_px": config.field_lattice_spacing if config.field_lattice_contrast > 0 else None,
    }


def make_config(**values: Any) -> SimulationConfig:
    """A :class:`SimulationConfig` from keyword values; a rule broken raises ConfigError naming field and value."""
    try:
        return SimulationConfig(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "config"
            value = err.get("input")
            problems.append(f"{field}={value!r}: {err['msg']}")
        raise ConfigError("simulation settings break a rule: " + "; ".join(problems)) from exc


def _kernel_1d() -> np.ndarray:
    return np.array([CHARGE_SHARING, 1.0, CHARGE_SHARING]) / (1.0 + 2.0 * CHARGE_SHARING)


def _kernel_2d(kind: CorrelatedNoise) -> np.ndarray | None:
    if kind == CorrelatedNoise.NONE:
        return None
    if kind == CorrelatedNoise.ISOTROPIC:
        k = _kernel_1d()
        return np.outer(k, k)
    line = _kernel_1d()
    return line[None, :] if kind == CorrelatedNoise.HORIZONTAL else line[:, None]


def _apply_kernel(image: np.ndarray, kind: CorrelatedNoise) -> np.ndarray:
    """``image`` (float) correlated with the separable normalised kernel of ``kind`` (reflecting edges)."""
    if kind == CorrelatedNoise.NONE:
        return image
    if kind == CorrelatedNoise.ISOTROPIC:
        k = _kernel_1d()
        return correlate1d(correlate1d(image, k, axis=0), k, axis=1)
    line = _kernel_1d()
    return correlate1d(image, line, axis=1 if kind == CorrelatedNoise.HORIZONTAL else 0)


class _Scene:
    """The static part of a simulation (film, particles, hot pixels), drawn once from the seed."""

    def __init__(self, cfg: SimulationConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STATIC_STREAM]))
        h, w = cfg.height, cfg.width
        # The film: a periodic field larger than the frame, shifted exactly (Fourier phase) for stage drift.
        self.ph = next_fast_len(h + 32)
        self.pw = next_fast_len(w + 32)
        ky = np.fft.fftfreq(self.ph)[:, None]
        kx = np.fft.rfftfreq(self.pw)[None, :]
        k2 = ky**2 + kx**2
        white = np.fft.rfft2(rng.standard_normal((self.ph, self.pw)))
        fine = np.exp(-2.0 * math.pi**2 * cfg.background_correlation**2 * k2)
        coarse = np.exp(-2.0 * math.pi**2 * (8.0 * cfg.background_correlation) ** 2 * k2)
        fine_field = np.fft.irfft2(white * fine, s=(self.ph, self.pw))
        coarse_field = np.fft.irfft2(white * coarse, s=(self.ph, self.pw))
        field = fine_field / max(float(fine_field.std()), 1e-12)
        field += 0.5 * coarse_field / max(float(coarse_field.std()), 1e-12)
        field /= max(float(field.std()), 1e-12)
        self.film_spectrum = np.fft.rfft2(field) * cfg.background_strength
        self.ky = ky
        self.kx = kx
        angle = rng.uniform(0, 2 * math.pi)
        if cfg.drift_angle is not None:
            angle = math.radians(cfg.drift_angle)
        self.drift = cfg.drift * np.array([math.sin(angle), math.cos(angle)])  # (dy, dx) per frame
        self._film_still: np.ndarray | None = None
        self._init_crystal(white)

        # Particles: one row per particle.
        n = cfg.n_particles
        self.n = n
        self.y0 = rng.uniform(0, h, n)
        self.x0 = rng.uniform(0, w, n)
        self.r0 = rng.uniform(cfg.radius_min, cfg.radius_max, n)
        heading = rng.uniform(0, 2 * math.pi, n)
        speed = cfg.particle_speed * rng.uniform(0.5, 1.5, n)
        self.vy = speed * np.sin(heading)
        self.vx = speed * np.cos(heading)
        self.theta0 = rng.uniform(0, math.pi, n)
        self.omega = np.deg2rad(cfg.rotation) * rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)
        self.grow = cfg.growth * rng.uniform(0.5, 1.5, n)
        self.spacing = np.maximum(cfg.lattice_spacing * rng.uniform(0.85, 1.15, n), 2.0)
        self.crossed = rng.random(n) < 0.5
        self.cross_angle = rng.choice([math.pi / 3, math.pi / 2], n)
        self.phase1 = rng.uniform(0, 2 * math.pi, n)
        self.phase2 = rng.uniform(0, 2 * math.pi, n)
        self.contrast = cfg.particle_contrast * rng.uniform(0.7, 1.3, n)
        self.r_cap = np.maximum(self.r0, cfg.radius_max) * 3.0  # growth stops there (endless movies)
        self.margin = self.r_cap + 4.0

        # Hot pixels: fixed positions.
        n_hot = round(cfg.hot_pixel_fraction * h * w)
        self.hot = rng.choice(h * w, size=n_hot, replace=False) if n_hot else np.empty(0, dtype=np.int64)

    def _init_crystal(self, white: np.ndarray) -> None:
        """The field's crystal: two sets of fringes crossed at 60 degrees, over smooth-edged grains that cover
        ``field_lattice_coverage`` of the field (a coarse random field thresholded at that quantile)."""
        cfg = self.cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _LATTICE_STREAM]))
        theta = rng.uniform(0, math.pi)
        k = 2.0 * math.pi / cfg.field_lattice_spacing
        self.lattice_k = [k * np.array([math.sin(a), math.cos(a)]) for a in (theta, theta + math.pi / 3)]
        self.lattice_phase = rng.uniform(0, 2 * math.pi, 2)
        self.grain_spectrum: np.ndarray | None = None
        self.grain_threshold = 0.0
        if cfg.field_lattice_contrast <= 0 or cfg.field_lattice_coverage >= 1:
            return
        k2 = self.ky**2 + self.kx**2
        grains = np.fft.irfft2(white * np.exp(-2.0 * math.pi**2 * 24.0**2 * k2), s=(self.ph, self.pw))
        grains /= max(float(grains.std()), 1e-12)
        self.grain_threshold = float(np.quantile(grains, 1.0 - cfg.field_lattice_coverage))
        self.grain_spectrum = np.fft.rfft2(grains - self.grain_threshold)

    def _shifted(self, spectrum: np.ndarray, t: int) -> np.ndarray:
        """The periodic field of ``spectrum`` shifted by the stage drift at frame t (Fourier phase), (H, W)."""
        shift = self.drift * t
        if shift.any():
            dy = shift[0] % self.ph
            dx = shift[1] % self.pw
            spectrum = spectrum * np.exp(-2j * math.pi * (self.ky * dy + self.kx * dx))
        return np.asarray(np.fft.irfft2(spectrum, s=(self.ph, self.pw))[: self.cfg.height, : self.cfg.width])

    def crystal(self, t: int) -> np.ndarray | None:
        """The field's lattice transmission 1 + contrast * fringes * grains (H, W) at frame t, or None."""
        cfg = self.cfg
        if cfg.field_lattice_contrast <= 0:
            return None
        shift = self.drift * t
        yy = np.arange(cfg.height, dtype=np.float64)[:, None] - shift[0]
        xx = np.arange(cfg.width, dtype=np.float64)[None, :] - shift[1]
        fringes = sum(
            np.cos(kv[0] * yy + kv[1] * xx + ph) for kv, ph in zip(self.lattice_k, self.lattice_phase, strict=True)
        )
        amplitude = 0.5 * cfg.field_lattice_contrast * np.asarray(fringes)
        if self.grain_spectrum is not None:
            amplitude *= 0.5 * (1.0 + np.tanh(self._shifted(self.grain_spectrum, t) / 0.2))
        return (1.0 + amplitude).astype(np.float32)

    def film(self, t: int) -> np.ndarray:
        """The film's intensity (H, W) at frame t (stage drift applied)."""
        if not (self.drift * t).any():
            if self._film_still is None:
                self._film_still = self._film_from(self.film_spectrum)
            return self._film_still
        return (1.0 + self._shifted(self.film_spectrum, t)).astype(np.float32)

    def _film_from(self, spectrum: np.ndarray) -> np.ndarray:
        field = np.fft.irfft2(spectrum, s=(self.ph, self.pw))[: self.cfg.height, : self.cfg.width]
        return (1.0 + field).astype(np.float32)

    def intensity(self, t: int) -> np.ndarray:
        """The noise-free intensity (H, W, float32) at frame t: the film times each particle's transmission.

        Overlapping particles multiply (like attenuation), so stacked dark particles stay positive.
        """
        cfg = self.cfg
        h, w = cfg.height, cfg.width
        transmission = np.ones((h, w), dtype=np.float32)
        shift = self.drift * t
        for i in range(self.n):
            radius = float(np.clip(self.r0[i] + self.grow[i] * t, 1.5, self.r_cap[i]))
            m = float(self.margin[i])
            cy = (self.y0[i] + self.vy[i] * t + shift[0] + m) % (h + 2 * m) - m
            cx = (self.x0[i] + self.vx[i] * t + shift[1] + m) % (w + 2 * m) - m
            reach = radius + 4.0
            y_lo, y_hi = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
            x_lo, x_hi = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
            if y_lo >= y_hi or x_lo >= x_hi:
                continue
            yy = (np.arange(y_lo, y_hi, dtype=np.float32) - np.float32(cy))[:, None]
            xx = (np.arange(x_lo, x_hi, dtype=np.float32) - np.float32(cx))[None, :]
            r = np.sqrt(yy * yy + xx * xx)
            edge = 0.5 * (1.0 + np.tanh((radius - r) / 0.8))
            dome = np.sqrt(np.clip(1.0 - (r / radius) ** 2, 0.0, 1.0))
            thickness = edge * (0.4 + 0.6 * dome)
            theta = self.theta0[i] + self.omega[i] * t
            k = 2.0 * math.pi / self.spacing[i]
            fringes = np.cos(k * (xx * math.cos(theta) + yy * math.sin(theta)) + self.phase1[i])
            if self.crossed[i]:
                theta2 = theta + self.cross_angle[i]
                fringes = 0.5 * (fringes + np.cos(k * (xx * math.cos(theta2) + yy * math.sin(theta2)) + self.phase2[i]))
            factor = 1.0 + thickness * (np.float32(self.contrast[i]) + np.float32(cfg.fringe_contrast) * fringes)
            transmission[y_lo:y_hi, x_lo:x_hi] *= np.maximum(factor, 0.05).astype(np.float32)
        crystal = self.crystal(t)
        if crystal is not None:
            transmission *= crystal
        intensity = self.film(t) * transmission
        return np.maximum(intensity, np.float32(0.02), dtype=np.float32)


class SyntheticMovie(Movie):
    """A simulated movie that reads like a file: ``frame(t)`` (noisy, config dtype) and ``clean(t)`` (float32).

    With ``endless=True`` any frame index t >= 0 is valid (the scene keeps moving and wraps around); ``len()``
    stays ``config.frames``, the nominal length. Frames are computed on demand, deterministically from (seed, t).
    """

    def __init__(self, config: SimulationConfig, *, endless: bool = False) -> None:
        self.config = config
        self.endless = endless
        self._scene = _Scene(config)
        self._last: tuple[int, np.ndarray] | None = None
        super().__init__(
            Path(f"<synthetic seed={config.seed}>"),
            (config.frames, config.height, config.width),
            np.dtype(config.dtype.value),
            config.pixel_size_nm,
        )

    def _index(self, t: int) -> int:
        if not self.endless:
            return super()._index(t)
        i = int(t)
        if i < 0:
            raise FrameIndexError(f"frame {t} of an endless synthetic movie: frames are numbered from 0")
        return i

    def intensity(self, t: int) -> np.ndarray:
        """The scene's noise-free intensity at frame t (film = 1 on average), float32 (H, W)."""
        i = self._index(t)
        last = self._last
        if last is not None and last[0] == i:
            return last[1]
        image = self._scene.intensity(i)
        image.flags.writeable = False  # cached and shared between frame(t) and clean(t)
        self._last = (i, image)
        return image

    def clean(self, t: int) -> np.ndarray:
        """The clean truth of frame t: the expected value of the noisy frame, float32 (H, W)."""
        cfg = self.config
        expected = self.intensity(t).astype(np.float64) * (cfg.gain * cfg.dose) + cfg.offset
        return _apply_kernel(expected, cfg.correlated_noise).astype(np.float32)

    def _read_frame(self, t: int) -> np.ndarray:
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _NOISE_STREAM, t]))
        electrons = rng.poisson(self.intensity(t).astype(np.float64) * cfg.dose)
        counts = electrons * cfg.gain + cfg.offset
        if cfg.read_noise > 0:
            counts += rng.standard_normal(counts.shape) * cfg.read_noise
        if self._scene.hot.size:
            counts.flat[self._scene.hot] = cfg.hot_pixel_value
        counts = _apply_kernel(counts, cfg.correlated_noise)
        if cfg.dtype == OutputDtype.UINT16:
            return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
        return counts.astype(np.float32)

    def clean_crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The clean truth's (h, w) region at (y, x) of frame t."""
        return self.clean(t)[y : y + h, x : x + w]


def simulate_movie(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The whole movie in memory: (noisy (T, H, W) in the config's dtype, clean (T, H, W) float32)."""
    movie = SyntheticMovie(config)
    shape = (config.frames, config.height, config.width)
    noisy = np.empty(shape, dtype=movie.dtype)
    clean = np.empty(shape, dtype=np.float32)
    for t in range(config.frames):
        noisy[t] = movie.frame(t)
        clean[t] = movie.clean(t)
    return noisy, clean


@dataclass(frozen=True)
class SimulationFiles:
    """The files :func:`write_simulation` wrote."""

    directory: Path
    noisy: Path
    clean: Path
    manifest: Path


def write_simulation(
    config: SimulationConfig, out_dir: str | Path, fmt: OutputFormat | str = OutputFormat.TIFF
) -> SimulationFiles:
    """Write ``noisy.<ext>``, ``clean.<ext>`` (float32) and ``manifest.json`` into ``out_dir`` (created if needed).

    Frames are simulated and written one at a time (memory stays at a few frames). The manifest holds the config,
    the emlive version, the file names, dose, noise model, kernel and mean counts. Existing files are replaced.
    """
    from emlive import __version__
    from emlive.core.writers import open_writer

    try:
        fmt = OutputFormat(fmt)
    except ValueError as exc:
        raise ConfigError(
            f"output format {fmt!r} is not supported; use one of {', '.join(f.value for f in OutputFormat)}"
        ) from exc
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError(f"{out}: exists and is not a folder; choose a folder for the simulation")
    out.mkdir(parents=True, exist_ok=True)
    noisy_path = out / f"noisy.{fmt.value}"
    clean_path = out / f"clean.{fmt.value}"
    manifest_path = out / "manifest.json"
    movie = SyntheticMovie(config)
    frame_shape = (config.height, config.width)
    total_noisy = 0.0
    total_clean = 0.0
    total_intensity = 0.0
    start = time.perf_counter()
    step = max(1, config.frames // 10)
    logger.info(
        "simulating %d frames of %d x %d (dose %g e-/px/frame, noise %s) into %s",
        config.frames, config.height, config.width, config.dose, config.correlated_noise.value, out,
    )  # fmt: skip
    with (
        open_writer(noisy_path, frame_shape, movie.dtype, config.pixel_size_nm) as noisy_writer,
        open_writer(clean_path, frame_shape, np.float32, config.pixel_size_nm) as clean_writer,
    ):
        for t in range(config.frames):
            noisy = movie.frame(t)
            clean = movie.clean(t)
            noisy_writer.append(noisy)
            clean_writer.append(clean)
            total_noisy += float(noisy.mean(dtype=np.float64))
            total_clean += float(clean.mean(dtype=np.float64))
            total_intensity += float(movie.intensity(t).mean(dtype=np.float64))
            if (t + 1) % step == 0 or t + 1 == config.frames:
                logger.info("frame %d/%d (%.1f s)", t + 1, config.frames, time.perf_counter() - start)
    n = config.frames
    kernel = config.kernel
    manifest = {
        "emlive_version": __version__,
        "kind": "emlive synthetic in-situ movie",
        "files": {"noisy": noisy_path.name, "clean": clean_path.name},
        "format": fmt.value,
        "shape": [config.frames, config.height, config.width],
        "axes": "TYX",
        "noisy_dtype": config.dtype.value,
        "clean_dtype": "float32",
        "pixel_size_nm": config.pixel_size_nm,
        "dose_e_per_px_per_frame": config.dose,
        "noise_model": config.noise_model(),
        "kernel": None if kernel is None else kernel.tolist(),
        "truth": detector_truth(config),
        "mean_intensity": total_intensity / n,
        "mean_counts_noisy": total_noisy / n,
        "mean_counts_clean": total_clean / n,
        "expected_mean_counts": config.gain * config.dose * total_intensity / n + config.offset,
        "config": config.model_dump(mode="json"),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s, %s and %s", noisy_path, clean_path, manifest_path)
    return SimulationFiles(directory=out, noisy=noisy_path, clean=clean_path, manifest=manifest_path)


def load_simulation_config(manifest: str | Path) -> SimulationConfig:
    """The :class:`SimulationConfig` stored in a manifest written by :func:`write_simulation`."""
    path = Path(manifest)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        values = data["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a simulation manifest with a 'config' entry ({exc})") from exc
    return make_config(**values)
