"""Robust download of one file: resumable, verified, atomic.

``fetch`` is the only place the project talks to the network. It streams into ``<dest>.part``, resumes
an interrupted download with an HTTP range request, verifies size and SHA-256, and only then renames
the ``.part`` file onto ``dest`` (``os.replace``, atomic), so ``dest`` is never half-written: if it
exists, it is complete. ``file://`` URLs and plain local paths are accepted too (copied with the same
verification), for users who already have the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
from tqdm import tqdm

from tasks.errors import DataError

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]*")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` is already there and verifies.

    Args:
        url: ``http(s)://`` URL, ``file://`` URL or a plain local path.
        dest: where the file ends up. Its parent folder is created when the first byte arrives.
        sha256: expected SHA-256 (64 hex digits), checked when given.
        size: expected size in bytes, checked when given (and against the server's announced size
            before anything is downloaded).
        timeout: seconds to wait for the connection and for each read.
        chunk_bytes: bytes per streamed chunk.
        progress: show a tqdm progress bar.

    Returns:
        ``dest``.

    Raises:
        DataError: the download failed (network error, HTTP error status; a partial ``.part`` file is
            kept so that the next call resumes) or the result does not match ``size`` / ``sha256``
            ("checksum mismatch"; the partial file is deleted). ``dest`` is never left half-written.
        ValueError: malformed arguments (``sha256`` not 64 hex digits, negative ``size``, ...).
    """
    dest = Path(dest)
    _check_args(sha256, size, chunk_bytes)
    if dest.is_file() and _mismatch(dest, size, sha256, chunk_bytes) is None:
        return dest
    part = dest.with_name(dest.name + ".part")
    local = _local_path(url)
    if local is not None:
        if dest.is_file() and local.resolve() == dest.resolve():
            raise DataError(url, f"checksum mismatch: {_mismatch(dest, size, sha256, chunk_bytes)}")
        _copy_local(url, local, part, chunk_bytes=chunk_bytes, progress=progress)
    else:
        _download(url, part, size=size, timeout=timeout, chunk_bytes=chunk_bytes, progress=progress)
    problem = _mismatch(part, size, sha256, chunk_bytes)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DataError(
            url,
            f"checksum mismatch: {problem}; the downloaded file was deleted. Check the URL and the "
            "expected size / sha256 (a changed or corrupted file on the server, or a proxy error page)",
        )
    os.replace(part, dest)
    return dest


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _check_args(sha256: str | None, size: int | None, chunk_bytes: int) -> None:
    if sha256 is not None and not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")


def _mismatch(path: Path, size: int | None, sha256: str | None, chunk_bytes: int) -> str | None:
    """How ``path`` differs from the expected size / SHA-256, or ``None`` when it matches."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"expected {size} bytes, got {actual_size}"
    if sha256 is not None:
        actual = sha256_file(path, chunk_bytes)
        if actual != sha256.lower():
            return f"expected sha256 {sha256.lower()}, got {actual}"
    return None


def _local_path(url: str) -> Path | None:
    """The local path ``url`` names (``file://`` URL or plain path), or ``None`` for a network URL."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(url, f"file:// URLs must name a local file, not host {parsed.netloc!r}")
        return Path(url2pathname(parsed.path))
    if scheme == "" or len(scheme) == 1:  # plain path, or a Windows drive letter ("C:\\data\\x.mat")
        return Path(url)
    raise DataError(url, f"unsupported URL scheme {scheme!r}; use http(s)://, file:// or a local path")


def _copy_local(url: str, src: Path, part: Path, *, chunk_bytes: int, progress: bool) -> None:
    """Copy a local file into ``part`` (from scratch: a local copy is cheap to redo)."""
    if not src.is_file():
        raise DataError(url, f"no such file: {src}")
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, _bar(src.stat().st_size, 0, part, progress) as bar:
            while block := fin.read(chunk_bytes):
                fout.write(block)
                bar.update(len(block))
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DataError(url, f"could not copy {src} to {part}: {e}") from e


def _download(url: str, part: Path, *, size: int | None, timeout: float, chunk_bytes: int, progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming from an existing ``part`` with a range request."""
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:  # not a prefix of the expected file
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        return  # a complete earlier download that was never verified: verify it now
    for _ in range(2):  # the second round restarts from zero when the server rejects the range
        headers = {"Accept-Encoding": "identity"}  # raw bytes, so byte offsets mean what they say
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = requests.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as e:
            raise _network_error(url, part, _describe(e, timeout)) from e
        with resp:
            if offset and resp.status_code == 416:  # .part is not a proper prefix: start again
                part.unlink()
                offset = 0
                continue
            if resp.status_code not in (200, 206):
                raise _network_error(url, part, f"the server answered {resp.status_code} {resp.reason}")
            if resp.status_code == 206:
                start, total = _parse_content_range(resp.headers.get("Content-Range", ""))
                if start != offset:  # not the range we asked for: start again
                    part.unlink(missing_ok=True)
                    offset = 0
                    continue
                if total is None and "Content-Length" in resp.headers:
                    total = offset + int(resp.headers["Content-Length"])
            else:  # 200: the whole file, whether or not we asked for a range
                offset = 0
                total = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
            if size is not None and total is not None and total != size:
                part.unlink(missing_ok=True)
                raise DataError(
                    url,
                    f"checksum mismatch: expected {size} bytes but the server announces {total}; nothing "
                    "was downloaded. Check the URL and the expected size",
                )
            _stream(url, resp, part, offset=offset, total=total, timeout=timeout,
                    chunk_bytes=chunk_bytes, progress=progress)
            return
    raise _network_error(url, part, "the server did not honour the range request twice in a row")


def _stream(url: str, resp: requests.Response, part: Path, *, offset: int, total: int | None,
            timeout: float, chunk_bytes: int, progress: bool) -> None:
    """Write the body of ``resp`` into ``part``: appended at ``offset`` > 0, else from scratch."""
    part.parent.mkdir(parents=True, exist_ok=True)
    received = offset
    try:
        with open(part, "ab" if offset else "wb") as f, _bar(total, offset, part, progress) as bar:
            for chunk in resp.iter_content(chunk_size=chunk_bytes):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except requests.RequestException as e:
        raise _network_error(url, part, _describe(e, timeout)) from e
    if total is not None and received < total:
        raise _network_error(url, part, f"the connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        part.unlink()
        raise DataError(url, f"the server sent {received} bytes but announced {total}; the download was deleted")


def _bar(total: int | None, initial: int, part: Path, progress: bool) -> tqdm:
    name = part.name.removesuffix(".part")
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress)


def _parse_content_range(value: str) -> tuple[int | None, int | None]:
    """``(start, total)`` of a ``Content-Range: bytes start-end/total`` header (``None`` if unknown)."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        return None, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _describe(e: requests.RequestException, timeout: float) -> str:
    """A short reason for a failed request (the root OS error when there is one)."""
    if isinstance(e, requests.Timeout) or "timed out" in str(e).lower():
        return f"no answer within {timeout:g} s (timeout)"
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off during the transfer"
    m = _ERRNO.search(str(e))
    reason = m.group(0).strip() if m else (str(e) or type(e).__name__)
    return f"{type(e).__name__}: {reason}"


def _network_error(url: str, part: Path, reason: str) -> DataError:
    """A :class:`DataError` for a failed transfer; keeps a non-empty ``part`` for the next call."""
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()
    if part.is_file():
        kept = f"; partial download kept at {part} ({part.stat().st_size} bytes), run again to resume"
    else:
        kept = ""
    return DataError(url, f"could not download: {reason}{kept}")
