"""Content-addressed cache keys and per-scene artifacts: cached results are receipts, not data.

A per-scene result is cached under a key built from what determines it, never from file paths:

- the bytes of the scene's input data (every file of the scene's group in each input store, and any extra
  input such as the diffusion weights),
- the params that the stage reads (as canonical JSON),
- the digest of the code the stage runs (its import closure: :func:`tasks.digest.closure_version`).

The task writes what it makes once, as a folder in the artifact store ``orchestration.results/artifacts/<key>``
(outside every DVC out; at a URL, a folder published by commit marker, which every machine of a cluster reads),
and its Prefect result is a small JSON *receipt* (:class:`Receipt`) that names that
folder and its manifest digest. The flow puts the artifact in place in the stage's outputs (hard links for
files that are never written again, copies for zarr chunks); a receipt whose folder is gone or changed is
stale, and the unit runs again. So ``dvc repro -f`` (which deletes the outs first) still costs no recompute,
and no scene's arrays or files ever pass through Prefect's result records or memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tasks.digest import tree_digest
from tasks.files import manifest_digest, place_tree
from tasks.location import Location, as_location, download_tree, join, remove_tree
from tasks.versions import resolve

if TYPE_CHECKING:
    from prefect.filesystems import WritableFileSystem


def cache_key(stage: str, scene: str, inputs: Iterable[Path | None], params: Any, code: str) -> str:
    """``stage-scene-<digest>`` of the scene's input bytes, the stage's params (JSON-able) and the code."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code.encode())
    return f"{stage}-{scene}-{tree_digest(inputs, h)}"


def key_from_parameters(context, parameters: dict) -> str:
    """Prefect ``cache_key_fn``: the key the flow computed and passed as the ``cache_key`` argument."""
    return parameters["cache_key"]


def artifact_dir(results: Location, key: str) -> Location:
    """Where the unit of work cached under ``key`` writes what it makes: a folder, or (``orchestration.results`` at a
    URL, for a cluster whose machines share no file system) a folder published by commit marker
    (:mod:`tasks.versions`) that every machine reads."""
    results = as_location(results)
    if isinstance(results, Path):
        return results.resolve() / "artifacts" / key
    return join(results, "artifacts", key)


def result_storage(results: Location) -> WritableFileSystem | None:
    """Prefect's result storage for ``orchestration.results`` at a URL, so that every machine of a cluster finds the
    cached receipts: a ``RemoteFileSystem`` block saved on the flow's Prefect server (Prefect hands tasks their
    storage by reference) as ``dnerf-results-<digest of the URL>``. None for a path: the flow sets it as Prefect's
    local storage path."""
    results = as_location(results)
    if isinstance(results, Path):
        return None
    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=join(results, "prefect"))
    block.save(f"dnerf-results-{hashlib.blake2b(results.encode(), digest_size=6).hexdigest()}", overwrite=True)
    return block


class Receipt(BaseModel):
    """A per-scene task's cached result: its artifact folder, that folder's manifest digest, and small
    JSON metadata (metrics, frame counts) for the stage's summary."""

    artifact: str
    manifest: str
    meta: dict[str, Any]

    @classmethod
    def for_folder(cls, folder: Location, meta: dict[str, Any]) -> Receipt:
        digest = manifest_digest(resolve(folder) or folder)
        if digest is None:
            raise FileNotFoundError(folder)
        return cls(artifact=str(folder), manifest=digest, meta=meta)

    @property
    def files(self) -> Location:
        """The artifact's files: its folder, or the live version of one published at a URL."""
        folder = as_location(self.artifact)
        return resolve(folder) or folder

    def valid(self) -> bool:
        """Is the artifact still there, as written?"""
        return manifest_digest(self.files) == self.manifest

    def place(self, dest: Path) -> None:
        """Replace the local folder ``dest`` with the artifact's files (hard links from a local artifact: its files
        are never written again)."""
        files = self.files
        if isinstance(files, Path):
            place_tree(files, dest, link=True)
        else:
            download_tree(files, dest)

    def remove(self) -> None:
        """Delete the artifact (nothing will reuse it)."""
        remove_tree(as_location(self.artifact))
