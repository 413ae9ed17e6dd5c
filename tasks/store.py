"""The zarr scene stores: schema, atomic creation, typed read access.

Layout (zarr v3, one group per scene, one chunk per frame, zstd-compressed, consolidated metadata)::

    scenes.zarr/                       attrs: schema="dnerf.scenes", schema_version, created_by, ...
      <scene>/                         attrs: source, units="m", depth_kind, role, frame_ids, split, ...
        rgb           uint8   [N, H, W, 3]
        depth         float32 [N, H, W]   metres, 0 = no measurement
        depth_sensor  float32 [N, H, W]   raw sensor depth (only when the source has one besides depth)
        K             float64 [N, 3, 3]   intrinsics, pixels
        c2w           float64 [N, 4, 4]   camera-to-world, OpenCV axes, NaN = unknown
        mesh_vertices float32 [V, 3]      ground-truth geometry, world frame (synthetic scenes only)
        mesh_faces    int32   [F, 3]

    noisy.zarr/                        attrs: schema="dnerf.noisy", schema_version, mode, seed, model
      <scene>/
        depth_noisy   float32 [N, H, W]   metres, 0 = hole

    refined.zarr/                      see tasks.refine (resumable: per-frame done flags)

A store is always built under a temporary name and published only when complete (:class:`StoreBuilder`), so a
crash never leaves a store that looks finished and an existing store is replaced only by a complete one:

- **On a file system** (a :class:`~pathlib.Path`) the store is built in a hidden sibling folder and renamed into
  place (:func:`tasks.files.replace_dir`); ``data/scenes.zarr`` *is* the zarr store.
- **On object storage** (a URL, :mod:`tasks.location`) there is no atomic rename of a prefix, so a store location
  holds immutable versions and a commit marker that names the live one (:mod:`tasks.versions`)::

      s3://bucket/data/scenes.zarr/
        dnerf-store.json                  {"version": "v-<id>", "schema": ..., "published_at": ...}
        v-<id>/                           the zarr store itself (zarr.json, <scene>/..., consolidated)

  A writer builds ``v-<new id>/`` completely, then publishes it by overwriting the marker, one PUT that
  readers see whole or not at all, and only then deletes the version the marker named before. A writer killed
  at any point leaves the marker as it was: readers (:func:`open_store`, :func:`resolve_store`) see the previous
  store, or no store if there was none, never a mix. The next writer deletes the unpublished versions a
  killed one left (it holds the output's lock, :mod:`tasks.locks`, so none of them can belong to a live run).
  To read such a store without this package: read ``version`` from the marker and open
  ``zarr.open_consolidated("s3://bucket/data/scenes.zarr/<version>")``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import zarr

from tasks import versions
from tasks.datasets.base import ROLES, Frame, Role, Split
from tasks.errors import DataError
from tasks.files import replace_dir, temporary_sibling
from tasks.location import Location, as_location, download_tree, join, read_bytes, remove_tree, zarr_store
from tasks.location import name as location_name

SCHEMA_VERSION = 1
StoreKind = Literal["scenes", "noisy", "refined"]


def _schema_name(kind: StoreKind) -> str:
    return f"dnerf.{kind}"


def consolidate(path: Location) -> None:
    """Write the consolidated metadata of the zarr store at ``path`` (after its structure or attrs changed): a
    local store, or the live version of one on object storage (:func:`resolve_store`)."""
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; we rely on zarr-python's.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(zarr_store(path))


#: The commit marker of a store on object storage: names the live version (see the module docstring).
MARKER = "dnerf-store.json"


def resolve_store(path: Location) -> Location | None:
    """The zarr store behind a store location: ``path`` itself on a file system, the live version of a store on
    object storage; None where no store has been published."""
    return versions.resolve(path, MARKER)


class StoreBuilder:
    """Builds a store under a temporary name; ``finish()`` (or leaving the ``with`` block) publishes it.

    Leaving the block with an exception deletes the temporary store and leaves ``path`` untouched. ``path`` is
    a local folder or an object-storage URL (published by commit marker, see the module docstring).

    Example::

        with StoreBuilder("data/scenes.zarr", "scenes", attrs={...}) as root:
            scene = root.create_group("kitchen")
            ...
    """

    def __init__(self, path: Location, kind: StoreKind, attrs: dict[str, Any] | None = None):
        self.path = as_location(path)
        self.kind: StoreKind = kind
        self.attrs = dict(attrs or {})
        # a hidden sibling folder, or (on object storage) a new version, chosen on entering the block
        self.tmp: Location = temporary_sibling(self.path) if isinstance(self.path, Path) else ""
        self.root: zarr.Group | None = None

    def __enter__(self) -> zarr.Group:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.tmp = versions.begin_version(self.path, MARKER)
        self.root = zarr.open_group(zarr_store(self.tmp), mode="w", zarr_format=3)
        self.root.attrs.update(
            {"schema": _schema_name(self.kind), "schema_version": SCHEMA_VERSION, **self.attrs}
        )
        return self.root

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            remove_tree(self.tmp)

    def finish(self) -> Location:
        consolidate(self.tmp)
        url = self.path
        if isinstance(url, Path):
            replace_dir(Path(self.tmp), url)
            return url
        assert isinstance(self.tmp, str)
        return versions.commit_version(self.tmp, MARKER, schema=_schema_name(self.kind))


def open_store(path: Location, kind: StoreKind | None) -> zarr.Group:
    """Open a finished store read-only, checking its schema (``kind``; None = any kind) and version."""
    path = as_location(path)
    expected = _schema_name(kind) if kind else "dnerf"
    live = resolve_store(path)
    if live is None:
        raise DataError(path, f"no such store (expected a {expected} zarr store; run the stage that writes it)")
    try:
        root = zarr.open_consolidated(zarr_store(live, read_only=True), mode="r", zarr_format=3)
    except Exception as err:  # noqa: BLE001 - zarr raises several types for a damaged or foreign store
        raise DataError(path, f"not a readable zarr v3 store with consolidated metadata: {err}") from None
    schema = root.attrs.get("schema")
    version = root.attrs.get("schema_version")
    known = [_schema_name(k) for k in ((kind,) if kind else get_args(StoreKind))]
    if schema not in known:
        raise DataError(path, f"expected a {expected} store, found schema {schema!r}")
    if version != SCHEMA_VERSION:
        raise DataError(
            path, f"store schema version {version!r} is not supported (this code reads version {SCHEMA_VERSION}); "
            "rebuild it with the stage that writes it",
        )
    return root


def live_store(path: Location) -> Location:
    """The zarr store behind the store location ``path`` (:func:`resolve_store`); DataError if there is none."""
    live = resolve_store(path)
    if live is None:
        raise DataError(path, "no such store (run the stage that writes it)")
    return live


@contextmanager
def local_scene_copies(stores: Sequence[Location | None], scene: str) -> Iterator[list[Location | None]]:
    """For the block, a local copy of ``scene`` of each store on object storage (its root metadata and the scene's
    group, in a temporary folder, deleted afterwards); local stores (and None) as they are.

    Made for work that reads a scene's frames many times over (a NeRF fit: scene bounds, ray batches, test views,
    export), where every read of a remote chunk would be another request. The copy is a consistent snapshot of the
    live version (versions are never rewritten once published, see the module docstring).
    """
    with tempfile.TemporaryDirectory(prefix="dnerf-scene-") as tmp:
        copies: list[Location | None] = []
        for i, store in enumerate(stores):
            if store is None or isinstance(store, Path):
                copies.append(store)
                continue
            live = live_store(store)
            dest = Path(tmp) / f"{i}-{location_name(store)}"
            dest.mkdir()
            (dest / "zarr.json").write_bytes(read_bytes(join(live, "zarr.json")))
            download_tree(join(live, scene), dest / scene)
            copies.append(dest)
        yield copies


def open_for_update(path: Location) -> zarr.Group:
    """The live zarr store behind ``path`` opened for writing in place (the resumable refine stage)."""
    return zarr.open_group(zarr_store(live_store(path)), mode="r+", zarr_format=3)


def open_refined(path: Location) -> zarr.Group:
    """Open a refined store that the refine stage finished (resumable runs leave it incomplete)."""
    root = open_store(path, "refined")
    if not root.attrs.get("complete"):
        raise DataError(path, "refinement did not finish; run `dnerf refine` again to complete it")
    return root


def scene_names(root: zarr.Group) -> list[str]:
    """Scene group names of a store, sorted."""
    return sorted(name for name, _ in root.groups())


def _frame_array(group: zarr.Group, name: str, n: int, frame_shape: tuple[int, ...], dtype,
                 fill: float = 0) -> zarr.Array:
    return group.create_array(
        name, shape=(n, *frame_shape), chunks=(1, *frame_shape), dtype=dtype, fill_value=fill
    )


class SceneWriter:
    """Writes the frames of one scene group of a ``scenes`` store, frame by frame (one chunk each)."""

    def __init__(
        self,
        root: zarr.Group,
        name: str,
        *,
        n_frames: int,
        height: int,
        width: int,
        source: str,
        depth_kind: str,
        has_sensor_depth: bool,
        role: Role = "eval",
        attrs: dict[str, Any] | None = None,
    ):
        if role not in ROLES:
            raise ValueError(f"scene {name!r}: role must be one of {list(ROLES)}, got {role!r}")
        self.group = root.create_group(name)
        self.n_frames, self.height, self.width = n_frames, height, width
        hw = (height, width)
        self.rgb = _frame_array(self.group, "rgb", n_frames, (*hw, 3), np.uint8)
        self.depth = _frame_array(self.group, "depth", n_frames, hw, np.float32)
        self.depth_sensor = (
            _frame_array(self.group, "depth_sensor", n_frames, hw, np.float32) if has_sensor_depth else None
        )
        self.K = _frame_array(self.group, "K", n_frames, (3, 3), np.float64, fill=np.nan)
        self.c2w = _frame_array(self.group, "c2w", n_frames, (4, 4), np.float64, fill=np.nan)
        self.frame_ids: list[str | None] = [None] * n_frames
        self.group.attrs.update(
            {"source": source, "units": "m", "depth_kind": depth_kind, "role": role, "height": height, "width": width,
             **(attrs or {})}
        )

    def write(self, i: int, frame: Frame) -> None:
        if (frame.height, frame.width) != (self.height, self.width):
            raise DataError(
                frame.source or frame.frame_id,
                f"frame is {frame.width}x{frame.height} but scene {self.group.basename!r} is "
                f"{self.width}x{self.height}",
            )
        self.rgb[i] = frame.rgb
        self.depth[i] = frame.depth.astype(np.float32, copy=False)
        if self.depth_sensor is not None:
            if frame.depth_sensor is None:
                raise DataError(frame.source or frame.frame_id, "frame lacks the sensor depth its scene has")
            self.depth_sensor[i] = frame.depth_sensor.astype(np.float32, copy=False)
        self.K[i] = frame.K
        self.c2w[i] = frame.c2w
        self.frame_ids[i] = frame.frame_id

    def set_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        self.group.create_array("mesh_vertices", data=np.asarray(vertices, dtype=np.float32))
        self.group.create_array("mesh_faces", data=np.asarray(faces, dtype=np.int32))

    def close(self, splits: list[Split]) -> None:
        missing = [i for i, f in enumerate(self.frame_ids) if f is None]
        if missing:
            raise RuntimeError(f"scene {self.group.basename!r}: frames {missing[:5]}... were never written")
        if len(splits) != self.n_frames:
            raise ValueError(f"{len(splits)} split labels for {self.n_frames} frames")
        self.group.attrs.update({"frame_ids": self.frame_ids, "split": list(splits)})


@dataclass(frozen=True)
class SceneView:
    """Read access to one scene group of a ``scenes`` store."""

    group: zarr.Group

    @property
    def name(self) -> str:
        return self.group.basename

    @property
    def attrs(self) -> dict[str, Any]:
        return self.group.attrs.asdict()

    @property
    def n_frames(self) -> int:
        return int(self.group["depth"].shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return tuple(self.group["depth"].shape[1:3])

    @property
    def frame_ids(self) -> list[str]:
        return list(self.group.attrs["frame_ids"])

    @property
    def role(self) -> Role:
        """What the scene is for: ``train`` / ``val`` (the depth refiner) or ``eval`` (NeRF fitting and
        scoring); ``eval`` for stores written before scenes had roles."""
        role = self.group.attrs.get("role", "eval")
        if role not in ROLES:
            raise DataError(self.group.store_path, f"scene {self.name!r} has role {role!r}, not one of {list(ROLES)}")
        return role

    @property
    def split(self) -> list[Split]:
        return list(self.group.attrs["split"])

    def indices(self, split: Split) -> list[int]:
        return [i for i, s in enumerate(self.split) if s == split]

    @property
    def has_sensor_depth(self) -> bool:
        return "depth_sensor" in self.group

    @property
    def has_poses(self) -> bool:
        return bool(np.all(np.isfinite(self.group["c2w"][:])))

    def frame(self, i: int) -> Frame:
        g = self.group
        return Frame(
            frame_id=self.frame_ids[i],
            rgb=g["rgb"][i],
            depth=g["depth"][i],
            K=g["K"][i],
            c2w=g["c2w"][i],
            depth_sensor=g["depth_sensor"][i] if self.has_sensor_depth else None,
            source=f"{self.group.store_path}[{i}]",
        )

    def mesh(self) -> tuple[np.ndarray, np.ndarray] | None:
        if "mesh_vertices" not in self.group:
            return None
        return self.group["mesh_vertices"][:], self.group["mesh_faces"][:]


def iter_scenes(root: zarr.Group) -> Iterator[SceneView]:
    for name in scene_names(root):
        yield SceneView(root[name])


def scenes_with_role(root: zarr.Group, role: Role | Collection[Role]) -> list[str]:
    """Sorted names of the scenes of a ``scenes`` store whose role is ``role`` (or one of several).

    Scenes of stores written before scenes had roles count as ``eval``. Noisy and refined stores do not
    carry roles: look the names up in the scene store they were made from.

    Example::

        scenes = open_store("data/scenes.zarr", "scenes")
        for name in scenes_with_role(scenes, "eval"): ...        # NeRF fitting and scoring
        scenes_with_role(scenes, ("train", "val"))               # every refiner room
    """
    wanted = {role} if isinstance(role, str) else set(role)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {list(ROLES)}")
    return [v.name for v in iter_scenes(root) if v.role in wanted]


def store_summary(path: Location) -> list[dict[str, Any]]:
    """One row per scene of a scene / noisy / refined store: role, frames, ``H x W``, train/test split, poses
    and ``valid`` (share of frame 0's pixels with depth); what ``dnerf info`` and the stages' summaries show."""
    root = open_store(path, None)
    kind = root.attrs["schema"].removeprefix("dnerf.")
    key = {"scenes": "depth", "noisy": "depth_noisy", "refined": "depth_refined"}[kind]
    rows = []
    for name, group in sorted(root.groups()):
        d = group[key]
        row = {"scene": name, "role": "-", "frames": d.shape[0], "H x W": f"{d.shape[1]}x{d.shape[2]}",
               "train/test": "-", "poses": "-", "valid": f"{float(np.mean(d[0] > 0)) if d.shape[0] else 0.0:.0%}"}
        if kind == "scenes":
            v = SceneView(group)
            row.update(role=v.role, poses="yes" if v.has_poses else "no",
                       **{"train/test": f"{len(v.indices('train'))}/{len(v.indices('test'))}"})
        rows.append(row)
    return rows
