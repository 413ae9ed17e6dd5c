"""The ``download`` stage: read a dataset (or generate the synthetic one) into ``scenes.zarr``.

``run_download(params)`` is the whole stage; its pieces are plain functions so that a user (or a Prefect
flow) can build a store from their own folders: :func:`open_sources` turns ``params.data`` into
:class:`~tasks.datasets.base.SceneSource` objects, :func:`prepare_source` applies frame selection,
resizing and the train/test split, and :func:`write_scene_store` writes them atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tasks.config import DataConfig, Params
from tasks.datasets.base import (
    SceneSource,
    Split,
    check_frame,
    holdout_splits,
    resize_frame,
    select_indices,
)
from tasks.datasets.nerfstudio import nerfstudio_scene
from tasks.datasets.nyu import nyu_scenes
from tasks.datasets.phone import phone_scene
from tasks.datasets.scannet import scannet_scenes
from tasks.datasets.sevenscenes import sevenscenes_scenes
from tasks.datasets.synthetic import synthetic_scenes
from tasks.datasets.tum import tum_scene
from tasks.errors import DataError
from tasks.fetch import fetch
from tasks.location import Location, as_location
from tasks.progress import progress_bar
from tasks.store import SceneWriter, StoreBuilder

log = logging.getLogger(__name__)


def _fetch_nyu(cfg: DataConfig, raw_dir: Path) -> tuple[Path, Path | None]:
    """Local paths of the NYU labeled .mat and splits.mat, downloading what is not given locally."""
    if cfg.path is not None:
        mat = Path(cfg.path)
        if not mat.is_file():
            raise DataError(mat, "NYU labeled .mat file not found")
    else:
        mat = fetch(cfg.nyu.url, raw_dir / "nyu_depth_v2_labeled.mat", sha256=cfg.nyu.sha256, size=cfg.nyu.size)
    splits = None
    if cfg.nyu.splits_url:
        local = mat.with_name("splits.mat")
        splits = local if local.is_file() else fetch(cfg.nyu.splits_url, raw_dir / "splits.mat")
    return mat, splits


def open_sources(cfg: DataConfig, raw_dir: Path) -> list[SceneSource]:
    """The scenes of ``cfg.source`` (downloading first where the source needs it).

    Every scene of a non-synthetic source gets the role ``cfg.role``; synthetic rooms carry their own
    (evaluation rooms ``eval``, refiner rooms ``train`` / ``val``).
    """
    if cfg.source == "synthetic":
        scenes = synthetic_scenes(cfg.synthetic, seed=cfg.seed)
    elif cfg.source == "nyu_labeled":
        mat, splits = _fetch_nyu(cfg, raw_dir)
        scenes = nyu_scenes(mat, splits, cfg.nyu)
    elif cfg.source == "sevenscenes":
        scenes = sevenscenes_scenes(_source_path(cfg), intrinsics=cfg.intrinsics, depth_scale=cfg.depth_scale)
    elif cfg.source == "nerfstudio":
        scenes = [nerfstudio_scene(_source_path(cfg), depth_scale=cfg.depth_scale)]
    elif cfg.source == "scannet":
        scenes = scannet_scenes(_source_path(cfg), intrinsics=cfg.intrinsics, depth_scale=cfg.depth_scale)
    elif cfg.source == "phone":
        scenes = [phone_scene(_source_path(cfg), cfg.phone, intrinsics=cfg.intrinsics, depth_scale=cfg.depth_scale)]
    elif cfg.source == "tum":
        scenes = [
            tum_scene(
                _source_path(cfg),
                max_dt=cfg.tum.max_dt,
                require_pose=cfg.tum.require_pose,
                intrinsics=cfg.intrinsics,
                depth_scale=cfg.depth_scale,
            )
        ]
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(cfg.source)
    if cfg.source != "synthetic":
        scenes = [replace(s, role=cfg.role) for s in scenes]
    return scenes[: cfg.max_scenes] if cfg.max_scenes else scenes


def _source_path(cfg: DataConfig) -> Path:
    """``data.path`` of a source that reads a folder (:class:`DataConfig` checks that it is given)."""
    if cfg.path is None:
        raise ValueError(f"data.source={cfg.source} needs data.path (the dataset folder)")
    return cfg.path


def target_size(cfg: DataConfig, native_hw: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` the frames are stored at."""
    if cfg.height is not None and cfg.width is not None:  # given together (DataConfig checks)
        return cfg.height, cfg.width
    h, w = native_hw
    return max(1, h // cfg.downscale), max(1, w // cfg.downscale)


def prepare_source(src: SceneSource, cfg: DataConfig) -> tuple[SceneSource, list[Split]]:
    """Select frames, resize them and decide the split: the scene as it will be stored, and its split."""
    if len(src) == 0:
        raise DataError(src.name, "scene has no frames")
    src = src.select(select_indices(len(src), cfg.stride, cfg.max_frames))
    if len(src) == 0:
        raise DataError(src.name, "no frames left after data.stride / data.max_frames")
    splits = src.splits if src.splits is not None else holdout_splits(len(src), cfg.test_every, cfg.test_offset)
    h, w = target_size(cfg, src.native_size or src.load(0).depth.shape)
    max_depth = cfg.max_depth_m
    src = src.map_frames(lambda f: check_frame(resize_frame(check_frame(f, max_depth), h, w), max_depth))
    return replace(src, attrs={**src.attrs, "height": h, "width": w}), list(splits)


def write_scene_store(
    scenes: Sequence[tuple[SceneSource, Sequence[Split]]],
    path: Location,
    attrs: dict | None = None,
    progress: bool = True,
) -> Location:
    """Write prepared scenes to a ``scenes`` store at ``path`` (atomically: all or nothing)."""
    names = [s.name for s, _ in scenes]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(path, f"duplicate scene names {sorted(dup)}")
    with StoreBuilder(path, "scenes", attrs=attrs) as root:
        for src, splits in scenes:
            h, w = src.attrs["height"], src.attrs["width"]
            writer = SceneWriter(
                root,
                src.name,
                n_frames=len(src),
                height=h,
                width=w,
                source=src.source,
                depth_kind=src.depth_kind,
                has_sensor_depth=src.has_sensor_depth,
                role=src.role,
                attrs={k: v for k, v in src.attrs.items() if k not in ("height", "width")},
            )
            for i in progress_bar(range(len(src)), desc=f"download {src.name}", unit="frame", interactive=progress):
                writer.write(i, src.load(i))
            if src.mesh is not None:
                writer.set_mesh(*src.mesh)
            writer.close(list(splits))
    return as_location(path)


def run_download(params: Params, progress: bool = True) -> Location:
    """The ``download`` stage: ``params.data`` -> ``params.paths.scenes``."""
    cfg = params.data
    sources = open_sources(cfg, params.paths.raw)
    if not sources:
        raise DataError(cfg.path or cfg.source, "the dataset has no scenes")
    prepared = [prepare_source(s, cfg) for s in sources]
    attrs = {"created_by": "dnerf download", "data": cfg.model_dump(mode="json")}
    out = write_scene_store(prepared, params.paths.scenes, attrs=attrs, progress=progress)
    n = sum(len(s) for s, _ in prepared)
    log.info("wrote %d scene(s), %d frame(s) to %s", len(prepared), n, out)
    return out
