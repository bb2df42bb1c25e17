"""The network configs: the pydantic ``network`` section of every model card, without torch.

The blind-spot network's :class:`NetworkConfig` (its modules are in :mod:`emlive.core.network`), the student's
:class:`StudentConfig` (:mod:`emlive.core.student`) and :data:`AnyNetworkConfig`, the union a card's ``network``
section is read as (discriminated by ``kind``; a section without ``kind``, as in every card written before students
existed, is a blind-spot network). Reading a model card (an ONNX export on the light install, which has no torch)
needs only this module; the registry that builds the torch module of a config is :mod:`emlive.core.networks`.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

DEFAULT_KIND = "blindspot"

NETWORK_SCHEMA_VERSION = 1


class Head(enum.StrEnum):
    """What the blind-spot network outputs per pixel (the card's ``network.head``)."""

    mean = "mean"  # the blind estimate only: 1 channel
    gaussian = "gaussian"  # also the log prior variance: 2 channels (emlive.core.network, emlive.core.posterior)


class NetworkConfig(BaseModel):
    """Architecture of the blind-spot network. Stored in every checkpoint and export (the model card)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["blindspot"] = Field("blindspot", description="Network family (the registry key).")
    version: int = Field(NETWORK_SCHEMA_VERSION, description="Schema version of this section.")
    frames: Annotated[int, Field(ge=1, le=9, description="Input frames N (odd); the center one is denoised.")] = 5
    blind_spot: tuple[int, int] = Field(
        (3, 3), description="Blind window (height, width) in pixels, odd sizes: 1x1, 3x3, 5x5, 1x3, 3x1, ..."
    )
    width: Annotated[int, Field(ge=8, le=256, description="Feature channels F (multiple of 4).")] = 64
    scales: Annotated[int, Field(ge=1, le=5, description="Resolution levels (pooling by 2 between them).")] = 4
    blocks: Annotated[int, Field(ge=0, le=8, description="Residual blocks per scale.")] = 2
    head: Head = Field(
        Head.mean,
        description="mean: the blind estimate only; gaussian: also the log-variance of the prior (Laine et al. "
        "2019), for posterior-mean inference and an uncertainty map",
    )

    @field_validator("frames")
    @classmethod
    def _odd_frames(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"frames={v}: the window must have an odd number of frames (1, 3, 5, 7, 9)")
        return v

    @field_validator("blind_spot")
    @classmethod
    def _odd_blind_spot(cls, v: tuple[int, int]) -> tuple[int, int]:
        h, w = v
        if h < 1 or w < 1 or h % 2 == 0 or w % 2 == 0 or h > 15 or w > 15:
            raise ValueError(
                f"blind_spot={list(v)}: height and width must be odd numbers from 1 to 15 (e.g. [3, 3] or [1, 3])"
            )
        return v

    @field_validator("width")
    @classmethod
    def _width_multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"width={v}: must be a multiple of 4 (the center/neighbour split is 3:1)")
        return v

    @model_validator(mode="after")
    def _blind_spot_fits_receptive_field(self) -> NetworkConfig:
        radius = receptive_radius(self)
        half = max(self.blind_spot) // 2
        if 4 * half > radius:
            raise ValueError(
                f"blind_spot={list(self.blind_spot)} is too large for a network of {self.scales} scales and "
                f"{self.blocks} blocks (receptive radius {radius} px): the blind half-size must be at most a "
                "quarter of the receptive radius; add scales/blocks or choose a smaller blind spot"
            )
        return self

    @property
    def pad_multiple(self) -> int:
        return 2 ** (self.scales - 1)

    @property
    def out_channels(self) -> int:
        """Output channels: 1 (the blind mean), or 2 with ``head=gaussian`` (mean, log prior variance)."""
        return 2 if self.head is Head.gaussian else 1

    @property
    def receptive_radius(self) -> int:
        """See :func:`receptive_radius`."""
        return receptive_radius(self)

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per output pixel, from the layer sizes (the tests check it against the hook count
        of :func:`macs_per_pixel`): the embeddings, 2 x ``blocks`` 3x3 convolutions per scale and one ring read-out
        (8 taps) + 1x1 projection per read-out at 1/4^s of the pixels, and the 1x1 head."""
        f, n = self.width, self.frames
        center = f if n == 1 else 3 * f // 4
        neighbours = 0 if n == 1 else 9 * (n - 1) * (f // 4) + (max(self.blind_spot) // 2) * 9 * (f // 4) ** 2
        blocks = sum(2 * self.blocks * 9 * f * f / 4**s for s in range(self.scales))
        plan = readout_plan(self)
        readouts = sum((8 + 1) * f * f / 4**s for s, _, _, _ in plan)
        r = len(plan)
        head = (r * f) * (r * f // 2) + (r * f // 2) * f + f * self.out_channels
        return center + neighbours + blocks + readouts + head


def ring_dilation(radius: int, half: int, factor: int) -> int:
    """Smallest dilation of a ring read-out that keeps the blind window (half-size ``half``) unseen.

    ``radius`` is how far (in this scale's pixels) a feature has already seen the center frame, ``factor`` the
    scale's pooling factor. Derivation in :mod:`emlive.core.network`'s docstring.
    """
    if factor == 1:
        return radius + half + 1
    return math.floor(radius + 1.5 + (half - 0.5) / factor) + 1


def readout_plan(cfg: NetworkConfig) -> list[tuple[int, int, int, int]]:
    """(scale, after_block, dilation_y, dilation_x) of every read-out; after_block 0 is the pooled base map."""
    a, b = cfg.blind_spot[0] // 2, cfg.blind_spot[1] // 2
    plan = []
    for s in range(cfg.scales):
        f = 2**s
        after = range(cfg.blocks + 1) if s == 0 else sorted({0, cfg.blocks})
        for k in after:
            r = 2 * k
            plan.append((s, k, ring_dilation(r, a, f), ring_dilation(r, b, f)))
    return plan


def receptive_radius(cfg: NetworkConfig) -> int:
    """Radius in pixels beyond which an input pixel cannot influence an output pixel (an upper bound)."""
    a, b = cfg.blind_spot[0] // 2, cfg.blind_spot[1] // 2
    neighbour = 1 + max(a, b)  # the neighbour-frame branch's 3x3 convolutions
    reach = 0
    for s, k, dy, dx in readout_plan(cfg):
        f = 2**s
        r = 2 * k
        # ring offset + feature radius (pooled px), the pooling block and the bilinear support, in full-res px
        reach = max(reach, f * (max(dy, dx) + r + 2) + f)
    return reach + neighbour


STUDENT_SCHEMA_VERSION = 1


class StudentConfig(BaseModel):
    """Architecture of the student network. Stored in every student checkpoint and export (the model card)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["student"] = Field("student", description="Network family (the registry key).")
    version: int = Field(STUDENT_SCHEMA_VERSION, description="Schema version of this section.")
    frames: Annotated[int, Field(ge=1, le=9, description="Input frames N (odd); the center one is denoised.")] = 5
    width: Annotated[int, Field(ge=4, le=256, description="Channels of the hidden convolutions.")] = 48
    depth: Annotated[int, Field(ge=2, le=32, description="3x3 convolutions at the reduced resolution.")] = 6
    unshuffle: Literal[1, 2, 4] = Field(2, description="Space-to-depth factor u: the body runs at H/u x W/u.")
    stem: Literal["conv", "unshuffle"] = Field(
        "conv", description="Space-to-depth as a u x u stride-u convolution, or pixel_unshuffle + 3x3 convolution."
    )
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    residual: Literal["center", "temporal_mean"] = Field(
        "temporal_mean",
        description="What the body's output is added to: the mean of the frames (trains much faster, see "
        "docs/student.md) or the center frame.",
    )

    @field_validator("frames")
    @classmethod
    def _odd_frames(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"frames={v}: the window must have an odd number of frames (1, 3, 5, 7, 9)")
        return v

    @model_validator(mode="after")
    def _check_version(self) -> StudentConfig:
        if self.version != STUDENT_SCHEMA_VERSION:
            raise ValueError(f"version={self.version}: this emlive reads student version {STUDENT_SCHEMA_VERSION}")
        return self

    @property
    def pad_multiple(self) -> int:
        return self.unshuffle

    @property
    def out_channels(self) -> int:
        """Output channels: 1 (a student predicts the denoised frame only)."""
        return 1

    @property
    def blind_spot(self) -> tuple[int, int]:
        """(0, 0): a student has no blind window, it sees the pixel it predicts."""
        return (0, 0)

    @property
    def receptive_radius(self) -> int:
        """Radius in pixels beyond which an input pixel cannot influence an output pixel (an upper bound)."""
        return self.unshuffle * (self.depth + 1)

    def macs_per_pixel(self) -> float:
        """Multiply-accumulates per output pixel (the formula in the module docstring)."""
        u2 = self.unshuffle**2
        w = self.width
        stem_taps = 1 if self.stem == "conv" else 9
        convs = stem_taps * self.frames * u2 * w + 9 * ((self.depth - 2) * w * w + w * u2)
        return convs / u2


def network_kind(config: Any) -> str:
    """The family of a config object or raw dict (``blindspot`` when it names none)."""
    if isinstance(config, dict):
        return str(config.get("kind", DEFAULT_KIND))
    return str(getattr(config, "kind", DEFAULT_KIND))


def network_macs_per_pixel(config: NetworkConfig | StudentConfig) -> float:
    """Multiply-accumulates per output pixel of any registered network."""
    return config.macs_per_pixel()


AnyNetworkConfig = Annotated[
    Annotated[NetworkConfig, Tag("blindspot")] | Annotated[StudentConfig, Tag("student")],
    Discriminator(network_kind),
]
"""A card's ``network`` section: a blind-spot network (``kind`` absent or ``blindspot``) or a student."""
