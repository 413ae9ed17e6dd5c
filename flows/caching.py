"""Content-addressed cache keys and a pickle-free result format for per-scene Prefect tasks.

A per-scene result is cached under a key built from what determines it, never from file paths:

- the bytes of the scene's input data (every file of the scene's group in each input store, and any extra
  input such as the diffusion weights),
- the params that the stage reads (as canonical JSON),
- a code version: a digest of every ``.py`` file of the ``models`` and ``tasks`` packages, so a change in a
  helper module invalidates the cache too (Prefect's ``TASK_SOURCE`` only sees the task function's body).

Cached results live in Prefect result storage (``orchestration.results``), outside every DVC out, and are
written with :class:`SceneResultSerializer` (``numpy.savez``, loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from prefect.serializers import Serializer
from pydantic import Field

from tasks.digest import tree_digest


def cache_key(stage: str, scene: str, inputs: Iterable[Path | None], params: Any, code: str) -> str:
    """``stage/scene/<digest>`` of the scene's input bytes, the stage's params (JSON-able) and the code."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code.encode())
    return f"{stage}-{scene}-{tree_digest(inputs, h)}"


def key_from_parameters(context, parameters: dict) -> str:
    """Prefect ``cache_key_fn``: the key the flow computed and passed as the ``cache_key`` argument."""
    return parameters["cache_key"]


class SceneResultSerializer(Serializer):
    """Per-scene results ``{"arrays": {name: ndarray}, "files": {relpath: bytes}, "meta": JSON}`` as npz.

    No pickle anywhere: arrays must have a plain dtype, ``meta`` must be JSON. The npz bytes are base64
    encoded because Prefect embeds the blob in a JSON result record.
    """

    type: str = Field(default="dnerf-scene-npz", frozen=True)

    def dumps(self, obj: dict) -> bytes:
        entries = {f"a:{k}": np.asarray(v) for k, v in obj.get("arrays", {}).items()}
        for name, arr in entries.items():
            if arr.dtype.hasobject:
                raise TypeError(f"result array {name[2:]!r} has dtype object; only plain dtypes are cached")
        entries.update({f"f:{k}": np.frombuffer(v, np.uint8) for k, v in obj.get("files", {}).items()})
        entries["meta"] = np.frombuffer(json.dumps(obj.get("meta")).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **entries)
        return base64.b64encode(buf.getvalue())

    def loads(self, blob: bytes) -> dict:
        out: dict = {"arrays": {}, "files": {}, "meta": None}
        with np.load(io.BytesIO(base64.b64decode(blob)), allow_pickle=False) as z:
            for name in z.files:
                if name.startswith("a:"):
                    out["arrays"][name[2:]] = z[name]
                elif name.startswith("f:"):
                    out["files"][name[2:]] = z[name].tobytes()
                else:
                    out["meta"] = json.loads(z[name].tobytes().decode())
        return out
