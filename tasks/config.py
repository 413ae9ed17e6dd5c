"""Typed, validated parameters: one config object per stage, mirroring ``params.yaml``.

``load_params(path, overrides)`` reads the YAML file, applies ``dotted.key=value`` overrides (values are
parsed as YAML, so ``--set data.max_frames=10`` gives an int and ``--set data.intrinsics=[1,2,3,4]`` a list),
and validates everything before any stage does work. Every error names the file, the dotted key and the
offending value.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

# Config modules only (no implementation), so that parsing params imports no stage's models or readers.
from models.baselines_config import BaselineConfig
from models.config import StrictConfig
from models.diffusion.config import COND_CHANNELS, DiffusionConfig, LossWeights, UNetConfig
from models.nerf.config import HashEncodingConfig, NeRFFieldConfig, OccupancyGridConfig
from models.noise_config import NoiseModelConfig
from tasks.datasets.config import NyuConfig, PhoneConfig, Role, SyntheticConfig
from tasks.location import as_location, is_url


class ParamsError(ValueError):
    """Bad params file or override; the message names the file, the key and the value."""


def _local(value: Any) -> Any:
    """Refuse a URL where a local path is needed: ``Path("s3://b/x")`` would quietly become a folder ``s3:/b/x``."""
    if is_url(value) and not value.lower().startswith(("file://", "local://")):
        raise ValueError(
            f"{value!r} is a URL, but this setting is read by path (paths.raw, data.path and "
            "diffusion.train.init_from are; every other paths.* entry, diffusion.train.extra_stores and "
            "orchestration.results may be URLs): copy it to this machine, or mount the bucket (s3fs, gcsfuse, "
            "a shared file system) and give the mount's path"
        )
    return as_location(value) if is_url(value) else value


def _path_or_url(value: Any) -> Any:
    return as_location(value) if isinstance(value, str | Path) else value


#: A file or folder on a file system this machine mounts (relative paths: to the working directory).
LocalPath = Annotated[Path, BeforeValidator(_local)]
#: A store, folder or file: a local path, or an fsspec URL (``s3://bucket/prefix/scenes.zarr``), see
#: :mod:`tasks.location`; folders and stores at a URL are published by commit marker (:mod:`tasks.versions`).
PathOrURL = Annotated[Path | str, BeforeValidator(_path_or_url)]


class PathsConfig(StrictConfig):
    """Where every stage reads and writes (relative paths are relative to the working directory). Every entry but
    ``raw`` may also be an fsspec URL (``s3://bucket/prefix/noisy.zarr``, ``gs://...``): what a cluster's workers
    read and write where every machine reaches it."""

    raw: LocalPath = Path("data/raw")
    scenes: PathOrURL = Path("data/scenes.zarr")
    noisy: PathOrURL = Path("data/noisy.zarr")
    diffusion: PathOrURL = Path("artifacts/diffusion")
    diffusion_checkpoints: PathOrURL = Path(".checkpoints/diffusion")
    refined: PathOrURL = Path("data/refined.zarr")
    nerf: PathOrURL = Path("artifacts/nerf")
    nerf_checkpoints: PathOrURL = Path(".checkpoints/nerf")
    nerf_metrics: PathOrURL = Path("metrics/nerf.json")
    eval_metrics: PathOrURL = Path("metrics/evaluate.json")
    plots: PathOrURL = Path("plots")
    report: PathOrURL = Path("reports")


class TumConfig(StrictConfig):
    """TUM RGB-D specifics."""

    max_dt: float = Field(default=0.02, gt=0, description="max |t_rgb - t_depth| (s) when associating frames")
    require_pose: bool = Field(default=False, description="drop frames without a ground-truth pose within max_dt")


class DataConfig(StrictConfig):
    """The ``download`` stage: which dataset to read and how to sample its frames."""

    source: Literal["synthetic", "nyu_labeled", "sevenscenes", "tum", "nerfstudio", "scannet", "phone"] = "synthetic"
    path: LocalPath | None = Field(
        default=None,
        description="dataset folder (sevenscenes, tum, nerfstudio: the folder with transforms.json, scannet: "
        "a scene folder with color/ depth/ pose/ intrinsic/ or a folder of them, phone: a Stray Scanner capture "
        "folder) or a local .mat file (nyu_labeled, skips the download)"
    )
    seed: int = 0
    height: int | None = Field(default=None, ge=8, description="target height in pixels (with width); null = native")
    width: int | None = Field(default=None, ge=8, description="target width in pixels (with height); null = native")
    downscale: int = Field(default=1, ge=1, description="integer downscale factor, an alternative to height/width")
    stride: int = Field(default=1, ge=1, description="keep every stride-th frame")
    max_frames: int | None = Field(default=None, ge=1, description="at most this many frames per scene (after stride)")
    max_scenes: int | None = Field(default=None, ge=1, description="at most this many scenes")
    test_every: int = Field(default=8, ge=0, description="hold out every k-th frame as a test view; 0 = none")
    test_offset: int = Field(default=-1, description="which of every k frames is held out: i % k == test_offset % k "
                             "(-1: frames k-1, 2k-1, ...; 0: frames 0, k, 2k, ..., nerfstudio's interval split)")
    intrinsics: tuple[float, float, float, float] | None = Field(
        default=None, description="[fx, fy, cx, cy] in pixels at native resolution, overriding the dataset's"
    )
    depth_scale: float | None = Field(
        default=None, gt=0, description="raw depth units per metre, overriding the dataset's (7-Scenes 1000, TUM 5000, "
        "nerfstudio 1 / depth_unit_scale_factor, ScanNet 1000, phone 1000)"
    )
    max_depth_m: float = Field(default=20.0, gt=0, description="a larger median depth is taken for wrong units")
    role: Role = Field(
        default="eval", description="role of every scene of a non-synthetic source: train / val (the depth refiner "
        "learns from / is validated on it) or eval (NeRFs are fitted and scored); synthetic rooms carry their own",
    )
    synthetic: SyntheticConfig = SyntheticConfig()
    nyu: NyuConfig = NyuConfig()
    tum: TumConfig = TumConfig()
    phone: PhoneConfig = PhoneConfig()

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if (self.height is None) != (self.width is None):
            raise ValueError("data.height and data.width must be given together")
        if self.height is not None and self.downscale != 1:
            raise ValueError("give either data.height/width or data.downscale, not both")
        if self.source in ("sevenscenes", "tum", "nerfstudio", "scannet", "phone") and self.path is None:
            raise ValueError(f"data.source={self.source} needs data.path (the dataset folder)")
        if self.intrinsics is not None and (self.intrinsics[0] <= 0 or self.intrinsics[1] <= 0):
            raise ValueError(f"data.intrinsics focal lengths must be positive, got {list(self.intrinsics)}")
        if self.source == "synthetic" and self.role != "eval":
            raise ValueError(
                f"data.role={self.role} applies to non-synthetic sources; synthetic rooms carry their own roles "
                "(data.synthetic.n_scenes eval rooms, refiner_train_scenes / refiner_val_scenes refiner rooms)"
            )
        return self


class NoiseConfig(NoiseModelConfig):
    """The ``corrupt`` stage: simulate sensor noise on clean depth, or pass measured depth through."""

    mode: Literal["simulate", "sensor"] = Field(
        default="simulate",
        description="simulate: apply the noise model to the reference depth; sensor: keep the measured "
        "depth (depth_sensor when the store has it, else depth) unchanged",
    )
    seed: int = 0


M = TypeVar("M", bound=BaseModel)
Device = Literal["auto", "cpu", "cuda"]
# YAML reads a bare ``off`` as false; ``amp: off`` or ``--set nerf.train.amp=off`` means the string.
Amp = Annotated[Literal["auto", "off", "bf16", "fp16"], BeforeValidator(lambda v: "off" if v is False else v)]


class StorePair(StrictConfig):
    """A (scenes, noisy) store pair, e.g. a user's own captures mixed into training."""

    scenes: PathOrURL
    noisy: PathOrURL


class DiffusionTrainConfig(StrictConfig):
    """Optimisation of the diffusion refiner."""

    crop: int = Field(default=64, ge=8, description="square training crop size in pixels")
    batch_size: int = Field(default=8, ge=1)
    max_steps: int = Field(default=1500, ge=1)
    lr: float = Field(default=2e-3, gt=0, description="peak learning rate of the OneCycle schedule")
    warmup_frac: float = Field(default=0.1, gt=0, lt=1, description="fraction of max_steps spent warming up")
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.99, ge=0, lt=1)
    val_every: int = Field(default=50, ge=1)
    val_crops: int = Field(default=16, ge=1, description="fixed validation crops (from the val scenes)")
    patience: int = Field(default=4, ge=1, description="validations without improvement before stopping early")
    checkpoint_every: int = Field(default=50, ge=1)
    scale_jitter: float = Field(default=0.15, ge=0, lt=1)
    flip: bool = True
    amp: Amp = Field(default="auto", description="auto = bf16 on CUDA, off on CPU")
    device: Device = "auto"
    extra_stores: list[StorePair] = Field(default_factory=list, description="more data to mix in")
    init_from: LocalPath | None = Field(default=None, description="a trained model folder to fine-tune from")
    calib_frames: int = Field(
        default=6, ge=0, description="whole val frames the uncertainty is calibrated on (0 = none)"
    )


class RefinerUNetConfig(UNetConfig):
    """The UNet as the refiner uses it: conditioned on the refiner's conditioning channels by default."""

    cond_channels: int = Field(default=COND_CHANNELS, ge=0)


class DiffusionStageConfig(StrictConfig):
    """The ``train_diffusion`` stage: network, noise schedule, loss weights and optimisation."""

    seed: int = 0
    unet: RefinerUNetConfig = RefinerUNetConfig()
    schedule: DiffusionConfig = DiffusionConfig()
    loss: LossWeights = LossWeights()
    train: DiffusionTrainConfig = DiffusionTrainConfig()

    @model_validator(mode="after")
    def _check(self) -> DiffusionStageConfig:
        if self.unet.cond_channels != COND_CHANNELS or self.unet.in_channels != 1 or self.unet.out_channels != 1:
            raise ValueError(
                f"diffusion.unet: the refiner needs in_channels=1, out_channels=1, cond_channels={COND_CHANNELS}"
            )
        return self


class RefineConfig(StrictConfig):
    """The ``refine`` stage: which refiner, and how the diffusion model is sampled."""

    method: Literal["diffusion", "inpaint", "median", "bilateral", "joint_bilateral", "guided"] = "diffusion"
    steps: int = Field(default=2, ge=1, le=1000, description="DDIM steps per sample")
    samples: int = Field(default=2, ge=1, description="samples per frame; their spread is depth_std")
    seed: int = 0
    tile: int = Field(default=640, ge=16, description="frames larger than this are refined in overlapping tiles")
    overlap: int = Field(default=32, ge=0)
    device: Device = "auto"
    baselines: BaselineConfig = BaselineConfig()

    @model_validator(mode="after")
    def _check(self) -> RefineConfig:
        if self.overlap * 2 >= self.tile:
            raise ValueError(f"refine.overlap ({self.overlap}) must be less than half of refine.tile ({self.tile})")
        return self


class NerfTrainConfig(StrictConfig):
    """Optimisation of one scene's NeRF."""

    steps: int = Field(default=600, ge=1)
    lr: float = Field(default=1e-2, gt=0)
    lr_final: float = Field(default=1e-3, gt=0, description="exponential decay to this by the last step")
    weight_decay: float = Field(default=1e-6, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    initial_rays: int = Field(default=512, ge=1)
    target_samples: int = Field(default=16384, ge=1, description="network evaluations per step; the ray batch adapts")
    min_rays: int = Field(default=128, ge=1)
    max_rays: int = Field(default=4096, ge=1)
    patch: int = Field(default=2, ge=1, description="rays come in patch x patch pixel blocks (edge term needs 2+)")
    n_coarse: int = Field(default=32, ge=2)
    n_fine: int = Field(default=16, ge=0)
    near: float = Field(default=0.05, ge=0, description="metres in front of the camera before sampling starts")
    depth_weight: float = Field(default=3e-5, ge=0, description="weight of the Gaussian NLL depth term")
    sigma_floor: float = Field(default=0.01, gt=0, description="metres: least uncertainty of any depth reference")
    edge_weight: float = Field(default=0.1, ge=0, description="weight of the patch depth-edge term (metres, L1)")
    ds_weight: float = Field(default=0.0, ge=0, description="weight of the DS-NeRF ray-termination term")
    guide_spread: float = Field(
        default=3.0, ge=0, description="depth-guided sampling of training rays: fine samples ~ N(reference depth, "
        "(spread * sigma)^2), no coarse pass; 0 = off (coarse-pass importance sampling)"
    )
    pool_frames: int = Field(default=16, ge=1, description="frames held in memory while sampling rays")
    pool_refresh: int = Field(default=50, ge=1, description="steps between pool refreshes")
    chunk: int = Field(default=8192, ge=64, description="rays per chunk: renders, and training batches (each chunk's "
                       "loss is back-propagated before the next is rendered, bounding activation memory)")
    checkpoint_every: int = Field(default=200, ge=1)
    amp: Amp = "auto"
    device: Device = "auto"

    @model_validator(mode="after")
    def _check(self) -> NerfTrainConfig:
        if self.min_rays > self.max_rays:
            raise ValueError(f"nerf.train.min_rays ({self.min_rays}) exceeds max_rays ({self.max_rays})")
        return self


class NerfExportConfig(StrictConfig):
    mesh_resolution: int = Field(default=128, ge=8)
    mesh_level: float | None = Field(
        default=None, gt=0, description="density iso-level; null = half opacity per cell, or softer if surfaces are"
    )


DepthSource = Literal["none", "noisy", "refined", "gt"]  # what supervises a NeRF's depth (gt: synthetic only)


class NerfStageConfig(StrictConfig):
    """The ``fit_nerf`` stage."""

    seed: int = 0
    depth_source: DepthSource = "refined"
    ablation_sources: list[DepthSource] = Field(
        default_factory=lambda: ["none", "noisy"],
        description="also fit every scene with each of these depth sources, for the ablation "
        "(into paths.nerf/ablation/<source>/<scene>; gt only where the scene has a reference depth)",
    )
    scenes: list[str] | None = Field(default=None, description="fit only these scenes (default: all with poses)")
    train_views: int | None = Field(
        default=None, ge=1, description="fit on at most this many train views, evenly spaced (sparse-view studies)"
    )
    bounds_padding: float = Field(default=0.05, ge=0)
    # CPU-sized defaults: fewer hash levels and a coarser occupancy grid than Instant-NGP's GPU settings.
    field: NeRFFieldConfig = NeRFFieldConfig(
        encoding=HashEncodingConfig(n_levels=8, log2_hashmap_size=16, max_resolution=512)
    )
    occupancy: OccupancyGridConfig = OccupancyGridConfig(
        resolution=64, warmup_steps=128, n_cells=16384, decay=0.8, threshold=0.5
    )
    train: NerfTrainConfig = NerfTrainConfig()
    export: NerfExportConfig = NerfExportConfig()


BaselineName = Literal["inpaint", "median", "bilateral", "joint_bilateral", "guided"]


class EvaluateConfig(StrictConfig):
    """The ``evaluate`` stage: refinement against the reference depth, and the NeRF results."""

    split: Literal["test", "all"] = Field(default="test", description="frames scored: the test views, or every frame")
    baselines: list[BaselineName] = Field(
        default_factory=lambda: ["inpaint", "median", "bilateral", "joint_bilateral", "guided"],
        description="classical refiners scored beside the noisy input and the refined depth",
    )
    tune_frames: int = Field(
        default=8, ge=1, description="baseline parameters are grid-searched on at most this many frames of the "
        "validation scenes (role: val); without any, refine.baselines is used as given",
    )
    distance_bins_m: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0], description="reference-depth bin edges"
    )
    edge_tolerance_px: float = Field(default=2.0, gt=0, description="edge matching distance (pixels)")
    edge_rel_threshold: float = Field(default=0.05, gt=0, description="relative depth jump that makes an edge")
    consistency_offset: int = Field(
        default=1, ge=1, description="multi-view consistency: compare frame i with frame i+k"
    )
    consistency_pairs: int = Field(
        default=16, ge=1, description="at most this many frame pairs per scene, evenly spread"
    )
    consistency_threshold_m: float = Field(default=0.05, gt=0, description="depths within this distance agree")
    fscore_threshold_m: float = Field(default=0.05, gt=0, description="geometry precision / recall / F-score distance")
    geometry_points: int = Field(default=20000, ge=100, description="points sampled on each mesh for Chamfer / F-score")

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        bins = self.distance_bins_m
        if len(bins) < 2 or any(b >= c for b, c in itertools.pairwise(bins)):
            raise ValueError(f"evaluate.distance_bins_m must be at least two increasing edges (got {bins})")
        return self


class ScheduleConfig(StrictConfig):
    """When ``dnerf serve`` re-checks the pipeline (one of cron or interval)."""

    cron: str | None = Field(default=None, description="cron string, e.g. '0 3 * * *'; overrides interval_minutes")
    interval_minutes: float = Field(default=60.0, gt=0, description="minutes between checks when cron is null")


class OrchestrationConfig(StrictConfig):
    """How the Prefect flows run per-scene work (no effect on results)."""

    runner: Literal["threads", "processes", "dask", "ray"] = Field(
        default="threads", description="task runner for per-scene work"
    )
    workers: int = Field(default=2, ge=1, description="scenes processed at once")
    dask_address: str | None = Field(
        default=None, description="existing Dask scheduler (tcp://host:8786); null = local"
    )
    ray_address: str | None = Field(default=None, description="existing Ray cluster; null = local")
    cache: bool = Field(default=True, description="reuse per-scene results cached by content (inputs, params, code)")
    results: PathOrURL = Field(
        default=Path(".prefect-results"), description="Prefect result storage and per-scene artifacts (never inside "
        "a DVC out); a URL (s3://...) on a cluster whose machines share no file system"
    )
    schedule: ScheduleConfig = ScheduleConfig()


class Params(StrictConfig):
    """Everything in ``params.yaml``."""

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    noise: NoiseConfig = NoiseConfig()
    diffusion: DiffusionStageConfig = DiffusionStageConfig()
    refine: RefineConfig = RefineConfig()
    nerf: NerfStageConfig = NerfStageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> ``(["a", "b", "c"], parsed value)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ParamsError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ParamsError(f"--set {key}: cannot parse value {raw!r}: {err}") from err
    return key.split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """A copy of ``tree`` with each ``dotted.key=value`` override set (creating nested mappings)."""
    out = yaml.safe_load(yaml.safe_dump(tree))  # deep copy of plain data
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ParamsError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem: ``where: dotted.key: message (got value)``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] == "missing" or "input" not in e else f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden":
            msg, got = "unknown key", ""
        lines.append(f"{where}: {key}: {msg}{got}")
    return "\n".join(lines)


def params_from_dict(tree: dict, where: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, where)) from None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate the params file; ``path=None`` starts from the built-in defaults."""
    tree: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ParamsError(f"{path}: cannot read params file: {err.strerror or err}") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ParamsError(f"{path}: expected a mapping of stage names, got {type(tree).__name__}")
    if overrides:
        tree = apply_overrides(tree, overrides)
        where += " (with --set overrides)"
    return params_from_dict(tree, where)


def with_absolute_paths(config: M, base: Path) -> M:
    """``config`` with every relative path in it (at any depth, lists of sub-configs included) made absolute against
    ``base``: what params must carry to workers whose working directory is not the submitter's."""
    def resolve(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else base / value
        if isinstance(value, BaseModel):
            return value.model_copy(update={k: resolve(getattr(value, k)) for k in type(value).model_fields})
        if isinstance(value, list | tuple):
            return type(value)(resolve(v) for v in value)
        return value

    return resolve(config)
