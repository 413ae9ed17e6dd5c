"""The folder of a fitted NeRF: the contract between ``fit_nerf`` (writes it) and ``evaluate``, ``dnerf render``,
``dnerf view`` and ``dnerf reconstruct`` (read it).

The main fit of a scene (``nerf.depth_source``) is ``paths.nerf/<scene>/``; an ablation fit (one of
``nerf.ablation_sources``) is ``paths.nerf/ablation/<source>/<scene>/``. Either holds (:class:`FitFolder`):

* ``config.json``: ``{"nerf": <the fit's nerf config>, "aabb": [[x0, y0, z0], [x1, y1, z1]]}`` (metres, world);
* ``field.safetensors`` and ``occupancy.safetensors``: the field's and the occupancy grid's tensors;
* ``mesh.ply`` (marching cubes, vertex colours; may be empty) and ``pointcloud.ply`` (coloured, world);
* ``renders/``: per test view ``<frame>_rgb.png`` and ``<frame>_depth.png`` (uint16 millimetres);
* ``metrics.json`` (test-view PSNR, SSIM, depth errors, timings) and ``curve.csv`` (the training curve).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from tasks.errors import DataError
from tasks.location import Location, join

#: The folder under ``paths.nerf`` that holds the ablation fits (a scene may not have this name).
ABLATION = "ablation"


def fits_on_disk(root: Location) -> Path:
    """The fits' root ``paths.nerf`` as a local folder: a path as it is, a URL as this machine's copy of what is
    published there (:func:`tasks.versions.local_copy`); DataError where nothing is."""
    from tasks.versions import local_copy

    local = local_copy(root)
    if local is None:
        if isinstance(root, Path):
            return root
        raise DataError(root, "no NeRF fits published here; run dnerf fit-nerf first")
    return local


@dataclass(frozen=True)
class FitJob:
    """One NeRF to fit: a scene and the depth source that supervises it (``ablation``: one of
    ``nerf.ablation_sources`` rather than ``nerf.depth_source``)."""

    scene: str
    source: str
    ablation: bool = False

    @property
    def label(self) -> str:
        """``scene`` or ``scene@source``: task names, logs and result keys."""
        return f"{self.scene}@{self.source}" if self.ablation else self.scene

    @overload
    def folder(self, root: Path) -> Path: ...
    @overload
    def folder(self, root: Location) -> Location: ...
    def folder(self, root: Location) -> Location:
        """This fit's folder under ``root`` (the outputs root or the checkpoints root; a path or a URL)."""
        return join(root, ABLATION, self.source, self.scene) if self.ablation else join(root, self.scene)


@dataclass(frozen=True)
class FitFolder:
    """The files of one fitted scene's folder."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def field(self) -> Path:
        return self.path / "field.safetensors"

    @property
    def occupancy(self) -> Path:
        return self.path / "occupancy.safetensors"

    @property
    def mesh(self) -> Path:
        return self.path / "mesh.ply"

    @property
    def pointcloud(self) -> Path:
        return self.path / "pointcloud.ply"

    @property
    def renders(self) -> Path:
        return self.path / "renders"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def curve(self) -> Path:
        return self.path / "curve.csv"

    def read_config(self) -> dict:
        """``config.json`` as a dict; a DataError names a missing or unreadable file."""
        try:
            return json.loads(self.config.read_text())
        except FileNotFoundError:
            raise DataError(self.config, "missing: not a fitted scene (run fit_nerf first)") from None
        except (OSError, ValueError) as err:
            raise DataError(self.config, f"cannot read: {err}") from None

    def aabb(self) -> np.ndarray:
        """``[2, 3]`` scene box (min, max corners, metres)."""
        try:
            return np.asarray(self.read_config()["aabb"], dtype=np.float64).reshape(2, 3)
        except (KeyError, ValueError) as err:
            raise DataError(self.config, f"no valid 'aabb': {err}") from None
