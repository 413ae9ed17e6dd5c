"""Where a store lives: a local path, or an fsspec URL (``s3://bucket/prefix/scenes.zarr``, ``gs://...``).

A :data:`Location` is a :class:`~pathlib.Path` for anything on a file system this machine mounts (``file://``
URLs become paths) and a ``str`` URL for object storage, read and written through fsspec. The helpers here
treat both alike, so stage code never builds a ``Path`` from a URL (``Path("s3://b/x")`` quietly becomes the
local folder ``s3:/b/x``).

Credentials and endpoints come from the backend's own configuration, as for any fsspec user: for S3 the AWS
variables and files (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` for MinIO / Ceph / a test
server), for GCS ``GOOGLE_APPLICATION_CREDENTIALS``; fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` variables work too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast, overload

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: A local path or an object-storage URL.
Location = Path | str

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


def is_url(value: Any) -> bool:
    """Is ``value`` a URL string (``scheme://...``)?"""
    return isinstance(value, str) and _URL.match(value) is not None


def as_location(value: str | Path) -> Location:
    """``value`` as a :data:`Location`: a URL stays a string (``file://`` URLs become paths), anything else is a
    path. Raises ValueError for a protocol fsspec does not know, or whose package is not installed."""
    if isinstance(value, Path) or not is_url(value):
        return Path(value)
    protocol = _URL.match(value).group(1).lower()  # type: ignore[union-attr]
    if protocol in ("file", "local"):
        return Path(value.split("://", 1)[1])
    import fsspec
    from fsspec.registry import known_implementations

    if protocol not in known_implementations and protocol not in fsspec.registry:
        raise ValueError(f"{value!r}: fsspec knows no protocol {protocol!r}")
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise ValueError(f"{value!r}: reading {protocol}:// needs a package that is not installed ({err}); "
                         "install the cloud extra: pip install 'diffusionnerf3d[cloud]'") from None
    return value.rstrip("/")


def storage_options(url: str) -> dict[str, Any]:
    """Options for the file system of ``url``, unless fsspec's own configuration (``FSSPEC_<PROTOCOL>_<OPTION>``
    variables, config files) sets them: s3fs reads a whole object with one request (``max_concurrency=1``; more
    would first ask for its size, one more round trip per zarr chunk, and for a chunk not yet written a listing
    too). Objects here are chunks of a few hundred kB, never large enough to gain from ranged parallel reads."""
    from fsspec.config import conf

    protocol = url.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a") and "max_concurrency" not in conf.get(protocol, {}):
        return {"max_concurrency": 1}
    return {}


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path within it (no protocol), with any listing it cached for that
    path dropped: other processes (workers on other machines) write the same prefixes, and a stale listing would
    hide their objects."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **storage_options(url))
    fs.invalidate_cache(path)
    return fs, path


def zarr_store(location: Location, read_only: bool = False) -> Any:
    """What zarr opens for a store at ``location``: the path, or an fsspec store of the URL with
    :func:`storage_options`."""
    if isinstance(location, Path):
        return str(location)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(location, storage_options=storage_options(location), read_only=read_only)


@overload
def join(location: Path, *parts: str) -> Path: ...
@overload
def join(location: str, *parts: str) -> str: ...
@overload
def join(location: Location, *parts: str) -> Location: ...
def join(location: Location, *parts: str) -> Location:
    """``location / part / ...`` for a path or a URL."""
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location.rstrip("/"), *parts])


def name(location: Location) -> str:
    """The last component: ``refined.zarr`` of ``s3://b/data/refined.zarr``."""
    return location.name if isinstance(location, Path) else location.rstrip("/").rsplit("/", 1)[-1]


def exists(location: Location) -> bool:
    if isinstance(location, Path):
        return location.exists()
    fs, path = filesystem(location)
    return fs.exists(path)


def read_bytes(location: Location) -> bytes:
    if isinstance(location, Path):
        return location.read_bytes()
    fs, path = filesystem(location)
    return cast(bytes, fs.cat_file(path))


def files_under(location: Location) -> list[tuple[str, int]]:
    """``(relative name, size in bytes)`` of every file under a folder or prefix (sorted by name; a single file:
    its own name); empty where nothing is there."""
    return [(rel, size) for rel, size, _tag in _listing(location)]


def _listing(location: Location) -> list[tuple[str, int, str | None]]:
    """:func:`files_under` with each file's content tag where object storage keeps one (S3's ``ETag``, GCS's
    ``md5Hash``): it changes whenever the object's bytes do. None for local files."""
    if isinstance(location, Path):
        if location.is_file():
            return [(location.name, location.stat().st_size, None)]
        return [(p.relative_to(location).as_posix(), p.stat().st_size, None)
                for p in sorted(location.rglob("*")) if p.is_file()]
    fs, root = filesystem(location)
    if fs.isfile(root):
        info = fs.info(root)
        return [(name(location), int(info["size"]), _tag(info))]
    found = cast(dict[str, dict[str, Any]], fs.find(root, detail=True))
    return sorted((p[len(root):].lstrip("/"), int(info["size"]), _tag(info)) for p, info in found.items())


def _tag(info: dict[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return None if tag is None else str(tag)


def files_with_names(location: Location) -> list[tuple[str, Location, str | None]]:
    """Every file under a folder or prefix as ``(name relative to the folder's parent, location, content tag)``,
    sorted: ``("scene/rgb/c/0/0/0", ...)`` for ``.../scene``; a single file: ``[(its name, itself, tag)]``. The tag
    (see :func:`_listing`) lets a digest of remote files skip reading their bytes."""
    base, listing = name(location), _listing(location)
    if not is_dir(location):  # a single file (or nothing)
        return [(base, location, tag) for _, _, tag in listing]
    return [(f"{base}/{rel}", join(location, rel), tag) for rel, _, tag in listing]


def is_dir(location: Location) -> bool:
    if isinstance(location, Path):
        return location.is_dir()
    fs, path = filesystem(location)
    return fs.isdir(path)


def open_binary(location: Location) -> IO[bytes]:
    """A file opened for reading bytes (a context manager)."""
    if isinstance(location, Path):
        return location.open("rb")
    fs, path = filesystem(location)
    return cast(IO[bytes], fs.open(path, "rb"))


def remove_tree(location: Location) -> None:
    """Delete a folder or prefix and everything under it (nothing if it is not there)."""
    if isinstance(location, Path):
        import shutil

        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def download_tree(src: Location, dest: Path) -> None:
    """Replace the local folder ``dest`` with a copy of the folder or prefix ``src``, atomically."""
    from tasks.files import atomic_dir, place_tree

    if isinstance(src, Path):
        place_tree(src, dest, link=False)
        return
    fs, root = filesystem(src)
    with atomic_dir(dest) as tmp:
        get_files(fs, root, [rel for rel, _size in files_under(src)], tmp)


def get_files(fs: AbstractFileSystem, root: str, names: list[str], dest: Path) -> None:
    """Download ``root/<name>`` to ``dest/<name>`` for every name, concurrently where the backend can (one batch of
    requests, not one round trip after another)."""
    for rel in names:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    if names:
        fs.get([f"{root}/{rel}" for rel in names], [str(dest / rel) for rel in names])
