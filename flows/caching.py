"""Content-addressed cache keys and per-scene artifacts: cached results are receipts, not data.

A per-scene result is cached under a key built from what determines it, never from file paths:

- the bytes of the scene's input data (every file of the scene's group in each input store, and any extra
  input such as the diffusion weights),
- the params that the stage reads (as canonical JSON),
- the digest of the code the stage runs (its import closure: :func:`tasks.digest.closure_version`).

The task writes what it makes once, as a folder in the artifact store ``orchestration.results/artifacts/<key>``
(outside every DVC out), and its Prefect result is a small JSON *receipt* (:class:`Receipt`) that names that
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
from typing import Any

from pydantic import BaseModel

from tasks.digest import tree_digest
from tasks.files import manifest_digest


def cache_key(stage: str, scene: str, inputs: Iterable[Path | None], params: Any, code: str) -> str:
    """``stage-scene-<digest>`` of the scene's input bytes, the stage's params (JSON-able) and the code."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code.encode())
    return f"{stage}-{scene}-{tree_digest(inputs, h)}"


def key_from_parameters(context, parameters: dict) -> str:
    """Prefect ``cache_key_fn``: the key the flow computed and passed as the ``cache_key`` argument."""
    return parameters["cache_key"]


def artifact_dir(results: str | Path, key: str) -> Path:
    """Where the unit of work cached under ``key`` writes what it makes."""
    return Path(results).resolve() / "artifacts" / key


class Receipt(BaseModel):
    """A per-scene task's cached result: its artifact folder, that folder's manifest digest, and small
    JSON metadata (metrics, frame counts) for the stage's summary."""

    artifact: str
    manifest: str
    meta: dict[str, Any]

    @classmethod
    def for_folder(cls, folder: Path, meta: dict[str, Any]) -> Receipt:
        digest = manifest_digest(folder)
        if digest is None:
            raise FileNotFoundError(folder)
        return cls(artifact=str(folder), manifest=digest, meta=meta)

    def valid(self) -> bool:
        """Is the artifact still there, as written?"""
        return manifest_digest(self.artifact) == self.manifest
