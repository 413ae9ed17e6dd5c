"""tasks.fetch against a real HTTP server on 127.0.0.1 (the ``http_server`` fixture of conftest.py)."""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest

from tasks.errors import DataError
from tasks.fetch import fetch, sha256_file

SIZE = 300_000
CHUNK = 4096


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(0).bytes(SIZE)


@pytest.fixture
def served(http_server, payload):
    http_server.files["data/file.bin"] = payload
    return http_server


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_download_verified(served, payload, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    out = fetch(served.url("data/file.bin"), dest, sha256=digest(payload), size=SIZE, chunk_bytes=CHUNK,
                progress=True)
    assert out == dest
    assert dest.read_bytes() == payload
    assert not dest.with_name("file.bin.part").exists()
    assert [r.range for r in served.requests] == [None]
    assert sha256_file(dest) == digest(payload)


def test_interrupted_download_resumes(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    served.cut_after["data/file.bin"] = 100_000
    with pytest.raises(DataError, match="could not download") as exc:
        fetch(served.url("data/file.bin"), dest, sha256=digest(payload), chunk_bytes=CHUNK, progress=False)
    assert served.url("data/file.bin") in str(exc.value)
    assert "run again to resume" in str(exc.value)
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept <= 100_000
    assert part.read_bytes() == payload[:kept]

    fetch(served.url("data/file.bin"), dest, sha256=digest(payload), chunk_bytes=CHUNK, progress=False)
    assert dest.read_bytes() == payload
    assert not part.exists()
    assert len(served.requests) == 2
    assert served.requests[1].range == f"bytes={kept}-"
    assert served.requests[1].status == 206
    assert served.bytes_sent < 2 * SIZE


def test_checksum_mismatch_deletes_everything(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        fetch(served.url("data/file.bin"), dest, sha256="0" * 64, progress=False)
    msg = str(exc.value)
    assert served.url("data/file.bin") in msg and "0" * 64 in msg and digest(payload) in msg
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_fails_before_downloading(served, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        fetch(served.url("data/file.bin"), dest, size=SIZE + 1, progress=False)
    assert str(SIZE + 1) in str(exc.value) and str(SIZE) in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # refused on the announced size, before writing a byte


def test_http_404_names_url(http_server, tmp_path):
    url = http_server.url("missing.bin")
    with pytest.raises(DataError, match="404") as exc:
        fetch(url, tmp_path / "missing.bin", progress=False)
    assert url in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_offline_connection_refused(no_proxy, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/file.bin"
    dest = tmp_path / "nested" / "file.bin"
    with pytest.raises(DataError, match="could not download") as exc:
        fetch(url, dest, timeout=2.0, progress=False)
    assert url in str(exc.value)
    assert "refused" in str(exc.value).lower()
    assert list(tmp_path.iterdir()) == []


def test_read_timeout_keeps_partial(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    served.stall_after["data/file.bin"] = 50_000
    with pytest.raises(DataError, match="timeout"):
        fetch(served.url("data/file.bin"), dest, timeout=0.3, chunk_bytes=CHUNK, progress=False)
    assert not dest.exists()
    part = tmp_path / "file.bin.part"
    assert part.read_bytes() == payload[: part.stat().st_size]


def test_existing_verified_file_makes_no_request(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(payload)
    assert fetch(served.url("data/file.bin"), dest, sha256=digest(payload), size=SIZE, progress=False) == dest
    assert served.requests == []


def test_existing_corrupt_file_is_replaced(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"not it")
    fetch(served.url("data/file.bin"), dest, sha256=digest(payload), progress=False)
    assert dest.read_bytes() == payload
    assert len(served.requests) == 1


def test_server_ignoring_range_restarts_from_zero(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    served.cut_after["data/file.bin"] = 120_000
    with pytest.raises(DataError):
        fetch(served.url("data/file.bin"), dest, chunk_bytes=CHUNK, progress=False)
    assert (tmp_path / "file.bin.part").stat().st_size > 0
    served.ignore_range = True
    fetch(served.url("data/file.bin"), dest, sha256=digest(payload), chunk_bytes=CHUNK, progress=False)
    assert dest.read_bytes() == payload
    assert served.requests[1].range is not None and served.requests[1].status == 200
    assert not (tmp_path / "file.bin.part").exists()


def test_stale_part_longer_than_file_restarts(served, payload, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * (SIZE + 10))
    fetch(served.url("data/file.bin"), dest, sha256=digest(payload), progress=False)
    assert dest.read_bytes() == payload
    assert [r.status for r in served.requests] == [416, 200]


def test_local_path_and_file_url(payload, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    a = fetch(str(src), tmp_path / "a.bin", sha256=digest(payload), progress=False)
    b = fetch(src.as_uri(), tmp_path / "b.bin", size=SIZE, progress=False)
    assert a.read_bytes() == payload and b.read_bytes() == payload
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(src.as_uri(), tmp_path / "c.bin", sha256="f" * 64, progress=False)
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.bin.part").exists()
    with pytest.raises(DataError, match="no such file"):
        fetch(str(tmp_path / "absent.bin"), tmp_path / "d.bin", progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")
    with pytest.raises(DataError, match="unsupported URL scheme"):
        fetch("ftp://127.0.0.1/x", tmp_path / "x", progress=False)
