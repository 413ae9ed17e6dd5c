"""Folders on object storage published all or nothing: immutable versions and a commit marker.

Object storage has no atomic rename of a prefix, so a folder at a URL (a zarr store, a trained refiner, a NeRF
output, a checkpoint, a cached artifact) holds immutable versions and a small marker object naming the live one::

    s3://bucket/artifacts/diffusion/
      dnerf-folder.json                 {"version": "v-<UTC time>-<id>", "published_at": ...}
      v-<UTC time>-<id>/                the folder's files

A writer fills ``v-<new id>/`` completely, then publishes it with one PUT of the marker (readers see the old
marker or the new one, never a part), and only then deletes the version the marker named before. A writer
killed at any point leaves the marker as it was, so readers see the previous folder, or none; the next writer
deletes the unpublished versions a killed one left (one writer per output at a time: :mod:`tasks.locks`).

On a file system (a :class:`~pathlib.Path`) the same functions build a hidden sibling and rename it into place
(:mod:`tasks.files`). Readers that need files on disk take :func:`local_copy` (a cached download of the live
version: versions never change, so a copy is valid for as long as the marker names it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.location import (
    Location,
    as_location,
    download_tree,
    files_under,
    filesystem,
    get_files,
    join,
    read_bytes,
    remove_tree,
)

#: The commit marker of a published folder at a URL (zarr stores use their own: :data:`tasks.store.MARKER`).
FOLDER_MARKER = "dnerf-folder.json"


def new_version_name() -> str:
    """``v-<UTC time>-<random>``: the name of a new version."""
    return f"v-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def published_version(url: str, marker: str = FOLDER_MARKER) -> str | None:
    """The version the marker under ``url`` names (None: nothing published)."""
    try:
        return json.loads(read_bytes(join(url, marker)))["version"]
    except FileNotFoundError:
        return None


def resolve(location: Location, marker: str = FOLDER_MARKER) -> Location | None:
    """Where the published files of ``location`` are: the path itself on a file system, the live version's URL on
    object storage; None where nothing is published."""
    location = as_location(location)
    if isinstance(location, Path):
        return location if location.exists() else None
    version = published_version(location, marker)
    return join(location, version) if version else None


def unpublished_versions(url: str, marker: str = FOLDER_MARKER) -> list[str]:
    """URLs of the versions under ``url`` that its marker does not name: left by writers that were killed or failed
    before publishing (or by a crash between publishing and deleting the previous version)."""
    fs, root = filesystem(url)
    if not fs.exists(root):
        return []
    live = published_version(url, marker)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return [join(url, n) for n in sorted(names) if n.startswith("v-") and n != live]


def begin_version(url: str, marker: str = FOLDER_MARKER) -> str:
    """The URL of a new, unpublished version under ``url``, after deleting the leftovers of killed writers."""
    for stale in unpublished_versions(url, marker):
        remove_tree(stale)
    return join(url, new_version_name())


def commit_version(version_url: str, marker: str = FOLDER_MARKER, **meta: object) -> str:
    """Publish the finished version ``version_url`` (one PUT of the marker beside it, with ``meta``), then delete
    the version the marker named before; the folder's URL."""
    url, version = version_url.rstrip("/").rsplit("/", 1)
    previous = published_version(url, marker)
    record = {"version": version, **meta, "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fs, marker_path = filesystem(join(url, marker))
    fs.pipe_file(marker_path, json.dumps(record).encode())  # the commit: one PUT, seen whole or not at all
    if previous and previous != version:
        remove_tree(join(url, previous))
    return url


def publish_folder(src: Path, dest: Location) -> Location:
    """Replace the folder ``dest`` (a path or a URL) with a copy of the local folder ``src``, all or nothing."""
    from tasks.files import place_tree

    if isinstance(dest, Path):
        place_tree(src, dest, link=False)
        return dest
    version = begin_version(dest)
    fs, root = filesystem(version)
    names = [rel for rel, _ in files_under(src)]
    try:  # concurrently
        fs.put([str(src / rel) for rel in names], [f"{root}/{rel}" for rel in names])
    except BaseException:
        remove_tree(version)
        raise
    return commit_version(version)


def copy_folder(live: Location, dest: Location) -> Location:
    """Replace the folder ``dest`` with a copy of the files under ``live`` (a folder, or a prefix such as a published
    version or a group of a store's live version: :func:`resolve`), paths or URLs all four ways, all or nothing."""
    if isinstance(dest, Path):
        download_tree(live, dest)
        return dest
    if isinstance(live, Path):
        return publish_folder(live, dest)
    version = begin_version(dest)
    fs, src_root = filesystem(live)
    _, dest_root = filesystem(version)
    names = [rel for rel, _ in files_under(live)]
    try:  # server-side copies (the bytes do not pass through here), concurrently
        fs.copy([f"{src_root}/{rel}" for rel in names], [f"{dest_root}/{rel}" for rel in names])
    except BaseException:
        remove_tree(version)
        raise
    return commit_version(version)


@contextmanager
def folder_writer(dest: Location) -> Iterator[Path]:
    """A local folder to write ``dest`` into: ``dest`` itself on a file system (the writer publishes it), for a URL
    a temporary folder published there when the block ends without an error (:func:`publish_folder`)."""
    if isinstance(dest, Path):
        yield dest
        return
    with tempfile.TemporaryDirectory(prefix="dnerf-out-") as tmp:
        yield Path(tmp) / "out"
        publish_folder(Path(tmp) / "out", dest)


def local_copy(location: Location) -> Path | None:
    """The published folder ``location`` on this machine's disk: a path as it is; for a URL, a copy of its live
    version in the system's temporary folder, downloaded once per version and shared by every process of this
    machine (copies of the folder's older versions are deleted). None where nothing is published."""
    live = resolve(location)
    if live is None or isinstance(live, Path):
        return live
    assert isinstance(location, str)
    cache = Path(tempfile.gettempdir()) / "dnerf-copies"
    prefix = hashlib.blake2b(location.encode(), digest_size=8).hexdigest()
    dest = cache / f"{prefix}-{live.rsplit('/', 1)[-1]}"
    if not dest.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache))
        fs, root = filesystem(live)
        try:
            get_files(fs, root, [rel for rel, _ in files_under(live)], tmp)
            os.rename(tmp, dest)  # another process of this machine may have won: then its copy is used
        except OSError:
            if not dest.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.glob(f"{prefix}-v-*"):
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest
