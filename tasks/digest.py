"""Content digests: of files and folders, and of the code that decides every result."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("models", "tasks")


def tree_digest(paths: Iterable[Path | None], h=None) -> str:
    """Digest of the relative names and bytes of every file under ``paths`` (files or folders, sorted)."""
    h = h or hashlib.blake2b(digest_size=16)
    for root in paths:
        if root is None:
            continue
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        h.update(f"<{root.name}>".encode())
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """Digest of the source of the packages whose code decides every result (``models``, ``tasks``)."""
    import importlib

    roots = [Path(importlib.import_module(p).__file__).parent for p in PACKAGES]
    h = hashlib.blake2b(digest_size=16)
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()
