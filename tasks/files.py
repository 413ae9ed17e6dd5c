"""Atomic file-system updates and resumable checkpoints shared by the stages.

Everything a stage publishes is written under a hidden temporary name next to its destination and moved
into place only when complete, so an interrupted run never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tasks.location import Location, as_location, download_tree, files_under, is_dir

log = logging.getLogger(__name__)


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name next to ``path`` (same file system, so a rename is atomic).

    Leftovers of an earlier writer of ``path`` that was killed (``.<name>.tmp-*``, ``.<name>.old-*``) are
    removed first: one writer per output at a time (stages hold :func:`tasks.locks.output_lock`), so they
    cannot belong to a live run.
    """
    remove_leftovers(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def remove_leftovers(path: Path) -> list[Path]:
    """Delete the temporary siblings a killed writer of ``path`` left behind; the ones removed."""
    stale = [p for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*") for p in path.parent.glob(pattern)]
    for p in stale:
        log.info("removing %s, left by an interrupted run", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def replace_dir(src: Path, dest: Path) -> None:
    """Move the finished directory ``src`` to ``dest``, replacing an existing ``dest``.

    Directories cannot be renamed over each other atomically, so the old one is first renamed aside;
    at no point is a partial directory visible under ``dest``.
    """
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Build a directory at a temporary path; on success it replaces ``dest``, on error it is deleted."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)


def manifest_digest(folder: Location) -> str | None:
    """Digest of the relative names and sizes of every file under ``folder`` (a path or a URL; ``None`` where it
    is missing): cheap to check, and it changes when a file is added, removed, truncated or replaced by another
    size."""
    folder = as_location(folder)
    if not is_dir(folder):
        return None
    h = hashlib.blake2b(digest_size=16)
    for rel, size in files_under(folder):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


def place_tree(src: str | Path, dest: str | Path, link: bool) -> None:
    """Replace ``dest`` with the files of ``src``, atomically: hard links where ``link`` (files that are never
    written again, on the same file system; copies otherwise), else copies."""
    src = Path(src)
    with atomic_dir(dest) as tmp:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(f, target)
                    continue
                except OSError:
                    pass
            shutil.copy2(f, target)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file via a temporary name and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A state dict as safetensors (contiguous CPU copies)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: named state dicts, other torch state (optimizer, schedulers, RNG) and JSON state."""

    tensors: dict[str, dict[str, torch.Tensor]]
    torch_state: dict[str, Any]
    state: dict[str, Any]


def save_checkpoint(
    folder: Location, fingerprint: str, tensors: dict[str, dict[str, torch.Tensor]], torch_state: dict, state: dict
) -> None:
    """Write a checkpoint atomically: each state dict as ``<name>.safetensors``, optimizer / scheduler /
    RNG state as ``torch_state.pt`` (tensors and plain containers only, loaded with ``weights_only``), and
    ``state.json`` holding the run's ``fingerprint`` and its JSON-able state. ``folder`` may be a URL (a
    cluster's workers resume each other's runs): the checkpoint is then published as a whole
    (:mod:`tasks.versions`)."""
    from tasks.versions import publish_folder

    def write(tmp: Path) -> None:
        for name, sd in tensors.items():
            save_tensors(tmp / f"{name}.safetensors", sd)
        torch.save(torch_state, tmp / "torch_state.pt")
        (tmp / "state.json").write_text(json.dumps({"fingerprint": fingerprint, **state}))

    if isinstance(folder, Path):
        with atomic_dir(folder) as tmp:
            write(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="dnerf-ckpt-") as tmp:
        write(Path(tmp))
        publish_folder(Path(tmp), folder)


def load_checkpoint(folder: Location, fingerprint: str) -> Checkpoint | None:
    """The checkpoint in ``folder`` (a path or a URL) if it exists and belongs to ``fingerprint`` (else None,
    logged)."""
    from tasks.versions import resolve

    live = resolve(folder)
    if live is None:
        return None
    if isinstance(live, Path):
        return _read_checkpoint(live, fingerprint)
    with tempfile.TemporaryDirectory(prefix="dnerf-ckpt-") as tmp:
        download_tree(live, Path(tmp) / "ckpt")
        return _read_checkpoint(Path(tmp) / "ckpt", fingerprint)


def _read_checkpoint(folder: Path, fingerprint: str) -> Checkpoint | None:
    path = folder / "state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state.pop("fingerprint", None) != fingerprint:
        log.info("%s: checkpoint is from other params or data; starting afresh", folder)
        return None
    tensors = {p.name.removesuffix(".safetensors"): load_file(p) for p in folder.glob("*.safetensors")}
    torch_state = torch.load(folder / "torch_state.pt", weights_only=True)
    return Checkpoint(tensors, torch_state, state)
