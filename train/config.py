"""Training configuration: pydantic models mirroring the code, loaded from named YAML files in configs/.

Every parameter of the reference tool has a home here (docs/parameters.md maps them one by one). Unknown keys
are rejected, fields have bounds, and cross-field rules (odd frame count, crop vs network, blind spot vs receptive
field) are checked on load, so a bad config fails before any data is read.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emlive.core.ensemble import Ensemble
from emlive.core.errors import ConfigError
from emlive.core.modelcard import Target
from emlive.core.netconfig import Head, NetworkConfig, StudentConfig  # not core.network: a config needs no torch

TRAIN_SCHEMA_VERSION = 1
DISTILL_SCHEMA_VERSION = 1
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Loss(str, Enum):
    """Self-supervised loss between the network output and the noisy center frame."""

    l2 = "l2"
    l1 = "l1"
    smooth_l1 = "smooth_l1"
    charbonnier = "charbonnier"
    gaussian_nll = "gaussian_nll"  # network.head=gaussian: the noisy pixel under N(mu, prior var + noise var)


class TrainTargets(str, Enum):
    """What ``emlive train``'s loss compares the blind network's output with: the ``noisy`` center frame
    (self-supervised), or the ``clean`` ground truth of ``data.clean`` (the supervised oracle: the same blind
    network, config and budget, the bound self-supervision is measured against). The values are the card's
    :class:`~emlive.core.modelcard.Target` names, as are :class:`DistillTargets`'s."""

    noisy = Target.noisy.value
    clean = Target.clean.value


class DistillTargets(str, Enum):
    """What a distilled student learns to output: the ``teacher``'s denoised frames (self-supervised), or the
    ``clean`` ground truth of ``data.clean`` (the supervised oracle: the bound self-supervision is measured against)."""

    teacher = Target.teacher.value
    clean = Target.clean.value


class Precision(str, Enum):
    """Numeric precision; ``auto`` = fp16 mixed precision on CUDA, fp32 on CPU."""

    auto = "auto"
    fp32 = "32-true"
    fp16_mixed = "16-mixed"
    bf16_mixed = "bf16-mixed"


class Accelerator(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Strategy(str, Enum):
    """How several processes train one model (docs/training-multi.md).

    ``auto``: one process when ``devices x num_nodes`` is 1, else ``ddp``. ``ddp``: DistributedDataParallel with
    one process per device (gloo on CPU, NCCL on GPUs); ``emlive train`` starts the other local processes itself by
    re-running its own command line, or joins the ones torchrun/SLURM (srun) started.
    """

    auto = "auto"
    ddp = "ddp"


def resolve_precision(precision: Precision, accelerator: str) -> str:
    """The Lightning precision a run uses on ``accelerator`` ("cpu" or "gpu"): ``auto`` is fp16 mixed on a GPU."""
    if precision is not Precision.auto:
        return precision.value
    return Precision.fp16_mixed.value if accelerator == "gpu" else Precision.fp32.value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PatchConfig(_Strict):
    """Patch preparation for large frames (4k x 4k, MRC/DM4 movies, tilt series): done once, in parallel."""

    enabled: bool = Field(False, description="Extract patches before training (reference: prepare_patch).")
    folder: Path | None = Field(None, description="Where patches go; default <output>/patches (patches_folder).")
    size: Annotated[int, Field(ge=64, le=8192)] = 1024
    stride: Annotated[int, Field(ge=16, le=8192)] = 768
    ratio: Annotated[float, Field(gt=0.0, le=1.0, description="Fraction of patches kept (patch_ratio).")] = 1.0
    workers: Annotated[int, Field(ge=1, le=256, description="Processes (processor_num).")] = 2
    frames_per_stack: Annotated[
        int | None, Field(ge=1, description="Frames per patch stack; default: the whole movie (subset_size).")
    ] = None


class NoiseConfig(_Strict):
    """The detector's noise, given (a calibrated detector) instead of measured on the training data: what
    ``network.head=gaussian`` trains and infers with. Values of the raw (unbinned, gain-corrected) pixels, the
    units of ``emlive noise-stats``; training scales them to the binned pixels the network sees."""

    gain: Annotated[float, Field(gt=0, le=1e5, description="Counts per electron (1 for a counting detector).")]
    offset: Annotated[float, Field(ge=-1e5, le=1e5, description="Counts of a pixel with no electrons.")] = 0.0
    read_noise: Annotated[float, Field(ge=0, le=1e5, description="Read noise, counts (std).")] = 0.0
    kernel: list[list[float]] | None = Field(
        None,
        description="Normalised noise correlation, centred, odd-sized (the `kernel` emlive noise-stats prints); "
        "none: independent pixels.",
    )
    correlated: bool | None = Field(
        None, description="Whether pixels share noise (charge sharing); default: from the kernel."
    )

    @model_validator(mode="after")
    def _kernel_shape(self) -> NoiseConfig:
        k = self.kernel
        if k is not None:
            rows = {len(r) for r in k}
            if len(rows) != 1 or len(k) % 2 == 0 or next(iter(rows)) % 2 == 0:
                raise ValueError(
                    f"kernel with rows of lengths {[len(r) for r in k]}: must be an odd-sized square or rectangle "
                    "centred on the pixel (e.g. the 5x5 `kernel` of emlive noise-stats)"
                )
            centre = k[len(k) // 2][len(k[0]) // 2]
            if abs(centre - 1.0) > 1e-3:
                raise ValueError(f"kernel centre {centre}: a normalised correlation is 1 at the centre")
        return self


class DataConfig(_Strict):
    train: Path = Field(..., description="Training movie: a file or a folder (training_path).")
    val: Path | None = Field(None, description="Validation movie; default: the last val_fraction of frames.")
    clean: Path | None = Field(None, description="Ground truth for validation PSNR, if known (gt_path).")
    gain: Path | None = Field(None, description="Gain reference multiplied into every raw frame (gain_path).")
    val_fraction: Annotated[float, Field(ge=0.0, lt=0.9)] = 0.1
    crop_size: Annotated[int, Field(ge=16, le=2048, description="Training crop (img_size).")] = 256
    val_crop_size: Annotated[int, Field(ge=16, le=4096)] = 256
    bin: Annotated[int, Field(ge=1, le=8, description="Integer binning of frames (downscale without resize).")] = 1
    patches: PatchConfig = Field(default_factory=PatchConfig)
    noise: NoiseConfig | None = Field(
        None,
        description="The detector's noise model for network.head=gaussian; default: measured on the training data.",
    )


class AugmentConfig(_Strict):
    """Augmentations that keep every noisy pixel once and neighbours' noise independent (no resizing)."""

    flips: bool = True
    rot90: bool = True
    reverse_frames: bool = True
    extra_noise_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    extra_noise_sigma: tuple[float, float] = Field(
        (0.25, 0.75), description="Range of Gaussian sigma (z-scored units) added to the input window."
    )

    @model_validator(mode="after")
    def _sigma_range(self) -> AugmentConfig:
        lo, hi = self.extra_noise_sigma
        if not 0 <= lo <= hi <= 5:
            raise ValueError(f"extra_noise_sigma={list(self.extra_noise_sigma)}: need 0 <= low <= high <= 5")
        return self


class OptimConfig(_Strict):
    epochs: Annotated[int, Field(ge=1, le=100000, description="max_epochs")] = 100
    max_steps: Annotated[int, Field(ge=-1, description="Stop after this many steps (-1: epochs decide).")] = -1
    max_minutes: Annotated[float | None, Field(gt=0, description="Stop after this wall time.")] = None
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=4096,
            description="Crops per step PER PROCESS (device); the global batch is batch_size x devices x num_nodes.",
        ),
    ] = 16
    learning_rate: Annotated[
        float,
        Field(gt=0, le=1, description="Adam step size; not rescaled when devices/nodes change the global batch."),
    ] = 1e-3
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    schedule: bool = Field(True, description="Cosine decay of the learning rate to 1% over the run.")
    loss: Loss = Loss.l2
    recursive_factor: Annotated[int, Field(ge=1, le=10000, description="Crops per frame per epoch.")] = 1
    precision: Precision = Precision.auto
    accelerator: Accelerator = Accelerator.auto
    devices: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Processes per node (gpus): GPUs, or CPU processes with accelerator=cpu; DDP when > 1.",
        ),
    ] = 1
    num_nodes: Annotated[int, Field(ge=1, le=1024, description="Machines, each running `devices` processes.")] = 1
    strategy: Strategy = Strategy.auto
    num_workers: Annotated[int, Field(ge=0, le=64)] = 0
    seed: int = 0
    gradient_clip: Annotated[float | None, Field(gt=0)] = 1.0
    ema: Annotated[
        float | None,
        Field(
            gt=0,
            lt=1,
            description="Keep an exponential moving average of the weights with this decay per step (0.99-0.999; "
            "warmed up as min(ema, (1 + step) / (10 + step))): validation, the best checkpoint and model.pt use the "
            "averaged weights, which smooth the step-to-step noise a noisy target gives the gradient. None: off.",
        ),
    ] = None


class OutputConfig(_Strict):
    root: Path = Field(Path("runs"), description="Results folder (common_path).")
    experiment: str = Field("experiment", description="Sub-folder (save_folder_name).")
    version: str | None = Field(None, description="Version folder (version_folder_name); default: config name.")
    save_top_k: Annotated[int, Field(ge=1, le=100)] = 3
    log_images: bool = True
    log_every_n_steps: Annotated[int, Field(ge=1)] = 10
    log_crops: bool = Field(
        False,
        description="Write each process's training crop origins to <run>/crops/rank<R>.csv (audits that DDP "
        "processes draw different crops; one line per crop).",
    )

    def run_dir(self, name: str) -> Path:
        return self.root / self.experiment / (self.version or name)


class TrainConfig(_Strict):
    """A whole training run."""

    version: int = TRAIN_SCHEMA_VERSION
    name: str = "emlive"
    description: str = ""
    data: DataConfig
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    resume: Path | None = Field(None, description="Checkpoint to resume training from (ckpt_path).")
    targets: TrainTargets = Field(
        TrainTargets.noisy,
        description="noisy: the noisy center frame (self-supervised); clean: data.clean (the supervised oracle).",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        m = self.network.pad_multiple
        for field, size in (
            ("data.crop_size", self.data.crop_size),
            ("data.val_crop_size", self.data.val_crop_size),
        ):
            if size % m:
                raise ValueError(
                    f"{field}={size}: must be a multiple of {m} (2^(scales-1) for network.scales="
                    f"{self.network.scales}); try {max(m, size - size % m)}"
                )
        bh, bw = self.network.blind_spot
        if self.data.crop_size < 4 * max(bh, bw):
            raise ValueError(
                f"data.crop_size={self.data.crop_size} is too small for blind_spot={[bh, bw]}: "
                "use a crop at least 4x the blind spot"
            )
        if self.data.patches.enabled and self.data.patches.stride > self.data.patches.size:
            raise ValueError(
                f"data.patches.stride={self.data.patches.stride} > size={self.data.patches.size}: "
                "patches would skip pixels; choose stride <= size"
            )
        if self.data.patches.enabled and self.data.patches.size < self.data.crop_size:
            raise ValueError(
                f"data.patches.size={self.data.patches.size} < data.crop_size={self.data.crop_size}: "
                "training crops come from patches, so patches must be at least as large as a crop"
            )
        if self.version != TRAIN_SCHEMA_VERSION:
            raise ValueError(f"version={self.version}: this emlive reads config version {TRAIN_SCHEMA_VERSION}")
        if self.targets is TrainTargets.clean:
            _check_oracle_data(self.data)
        _check_head_and_loss(self.network.head, self.optim.loss, self.targets)
        return self


def _check_head_and_loss(head: Head, loss: Loss, targets: TrainTargets) -> None:
    """The Gaussian head is trained by the Gaussian NLL and nothing else is: one needs the other."""
    if head is Head.gaussian and loss is not Loss.gaussian_nll:
        raise ValueError(
            f"network.head=gaussian with optim.loss={loss.value}: the variance channel is learnt only by the "
            "Gaussian negative log-likelihood; set optim.loss=gaussian_nll (or network.head=mean)"
        )
    if loss is Loss.gaussian_nll and head is not Head.gaussian:
        raise ValueError(
            f"optim.loss=gaussian_nll with network.head={head.value}: the loss needs the predicted prior variance; "
            "set network.head=gaussian (or choose another loss, e.g. l2)"
        )
    if loss is Loss.gaussian_nll and targets is TrainTargets.clean:
        raise ValueError(
            "optim.loss=gaussian_nll with targets=clean: the NLL models the noise of a noisy target; train the "
            "supervised oracle with network.head=mean and optim.loss=l2"
        )


def _check_oracle_data(data: DataConfig) -> None:
    """``targets=clean`` (train or distill) needs the clean twin of every training movie, cut like the noisy one."""
    if data.clean is None:
        raise ValueError(
            "targets=clean trains on the ground truth: set data.clean to the clean movie(s) of data.train (one per "
            "noisy movie), or use targets=noisy (train) / targets=teacher (distill)"
        )
    if data.val is not None:
        raise ValueError(
            f"targets=clean with data.val={data.val}: data.clean is then that validation movie's ground truth, not "
            "data.train's; drop data.val (validation then uses the last data.val_fraction of frames)"
        )
    if data.patches.enabled:
        raise ValueError(
            "targets=clean with data.patches.enabled=true: patches are cut from the noisy movies only, so the clean "
            "targets would not line up; set data.patches.enabled=false"
        )


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section; see configs/*.yaml for the known keys)"
        lines.append(f"  {where}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a config shipped with emlive (e.g. ``synthetic-small``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file, and not a shipped config name (known: {known})")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.epochs=5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def is_distill_config(raw: dict[str, Any]) -> bool:
    """A config whose network is a student (``network.kind: student``) is a distillation config."""
    network = raw.get("network")
    return isinstance(network, dict) and network.get("kind") == "student"


def shipped_configs(distill: bool = False) -> list[Path]:
    """The shipped training configs (configs/*.yaml), or with ``distill`` the shipped distillation configs."""
    return [p for p in sorted(CONFIG_DIR.glob("*.yaml")) if is_distill_config(yaml.safe_load(p.read_text())) == distill]


def _read_config(name_or_path: str | Path, overrides: list[str] | None) -> tuple[Path, dict[str, Any]]:
    """The raw, overridden mapping of a config file (or shipped config name) and its path."""
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, network, optim, ...)")
    raw.setdefault("name", path.stem)
    return path, apply_overrides(raw, overrides or [])


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load, override and validate a training config; relative data paths resolve against the working dir."""
    path, raw = _read_config(name_or_path, overrides)
    if is_distill_config(raw):
        raise ConfigError(
            f"{path}: a distillation config (network.kind: student); run it with "
            f"`emlive distill --teacher TEACHER.pt --config {path.stem}`"
        )
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path))) from exc


class DistillConfig(_Strict):
    """A distillation run (``emlive distill``): a student trained on a teacher's outputs for the same movies.

    The same sections as :class:`TrainConfig` (data, augment, optim, output), a student ``network`` and the
    ``teacher`` model file (a ``.pt``/``.ckpt``; also given on the command line as ``--teacher``).
    """

    version: int = DISTILL_SCHEMA_VERSION
    name: str = "emlive-student"
    description: str = ""
    teacher: Path | None = Field(None, description="The trained teacher model (.pt/.ckpt); --teacher sets it.")
    targets: DistillTargets = Field(
        DistillTargets.teacher, description="teacher: its outputs (self-supervised); clean: data.clean (oracle)."
    )
    teacher_ensemble: Ensemble = Field(
        Ensemble.none,
        description="Average the teacher over flips (4 passes) or flips and rotations (dihedral, 8) for the targets.",
    )
    data: DataConfig
    network: StudentConfig = Field(default_factory=StudentConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    resume: Path | None = Field(None, description="Checkpoint to resume distillation from.")

    @model_validator(mode="after")
    def _cross_checks(self) -> DistillConfig:
        m = self.network.pad_multiple
        for field, size in (("data.crop_size", self.data.crop_size), ("data.val_crop_size", self.data.val_crop_size)):
            if size % m:
                raise ValueError(
                    f"{field}={size}: must be a multiple of {m} (network.unshuffle={self.network.unshuffle}); "
                    f"try {max(m, size - size % m)}"
                )
        if self.data.patches.enabled:
            raise ValueError("data.patches.enabled=true: distillation reads whole frames; set it to false")
        if self.version != DISTILL_SCHEMA_VERSION:
            raise ValueError(f"version={self.version}: this emlive reads distill version {DISTILL_SCHEMA_VERSION}")
        if self.targets is DistillTargets.clean:
            _check_oracle_data(self.data)
        if self.optim.loss is Loss.gaussian_nll:
            raise ValueError(
                "optim.loss=gaussian_nll: a student has no variance head; distill with optim.loss=l2 (the teacher's "
                "blind or posterior output is its target)"
            )
        return self


def load_distill_config(
    name_or_path: str | Path, overrides: list[str] | None = None, teacher: Path | None = None
) -> DistillConfig:
    """Load, override and validate a distillation config; ``teacher`` (``--teacher``) replaces the file's."""
    path, raw = _read_config(name_or_path, overrides)
    if teacher is not None:
        raw["teacher"] = str(teacher)
    try:
        cfg = DistillConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path))) from exc
    if cfg.teacher is None and cfg.targets is DistillTargets.teacher:
        raise ConfigError(f"{path}: no teacher model; pass --teacher TEACHER.pt (a model trained by `emlive train`)")
    return cfg
