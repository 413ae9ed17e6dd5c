"""Shared fixtures of the task tests: a local HTTP file server and a small NYU labeled .mat writer.

Both are fixtures (not importable helpers) so that they work under any pytest import mode.

* ``http_server``: a real ``ThreadingHTTPServer`` on ``127.0.0.1`` (ephemeral port) serving in-memory
  files, with HTTP range support and knobs to cut or stall a transfer, logging every request.
* ``write_nyu``: writes a file with the layout of ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3: HDF5 behind
  a 512-byte user block, axes reversed, cell arrays as object references into ``#refs#``), small frames
  with known values, plus a ``splits.mat`` in the old MATLAB format.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

# ---------------------------------------------------------------------------------------------------------
# Local HTTP server


@dataclass
class Request:
    """One request the server saw."""

    path: str
    range: str | None
    status: int = 0
    sent: int = 0  # body bytes written


@dataclass
class FileServer:
    """State of the test server; tests set ``files`` and the knobs, then read ``requests``.

    Attributes:
        files: URL path (without leading ``/``) -> content.
        cut_after: path -> body bytes after which the *next* response for that path is cut (then removed).
        stall_after: path -> body bytes after which every response for that path stalls until teardown.
        ignore_range: answer every request with ``200`` and the whole file.
        requests: every request, in order.
    """

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    @property
    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests)


class _RangeHandler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` support; behaviour set by the server's :class:`FileServer`."""

    def do_GET(self) -> None:  # http.server naming
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        path = self.path.lstrip("/")
        req = Request(path=path, range=self.headers.get("Range"))
        with state.lock:
            state.requests.append(req)
            data = state.files.get(path)
            cut = state.cut_after.pop(path, None)
            stall = state.stall_after.get(path)
        if data is None:
            req.status = 404
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", req.range or "")
        if m and not state.ignore_range:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                req.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        req.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        limit = min(x for x in (cut, stall, len(body)) if x is not None)
        self.wfile.write(body[:limit])
        self.wfile.flush()
        req.sent = limit
        if stall is not None and limit < len(body):
            state.release.wait(timeout=10.0)
        self.close_connection = True  # a cut or stalled response ends here, short of Content-Length

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (quiet)
        pass


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``requests`` talk to 127.0.0.1 directly, whatever proxy the environment sets."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def http_server(no_proxy: None):
    """A running :class:`FileServer` on 127.0.0.1; stopped after the test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    state = FileServer(port=httpd.server_address[1])
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5.0)


# ---------------------------------------------------------------------------------------------------------
# NYU labeled .mat writer

MATLAB_73_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
).ljust(116, b" ") + bytes(8) + b"\x00\x02IM"


def nyu_rgb(i: int, width: int, height: int) -> np.ndarray:
    """Known colour of frame ``i``: ``[H, W, 3]`` uint8 with ``rgb[v, u] = (u, v, i)``."""
    v, u = np.mgrid[0:height, 0:width]
    return np.stack([u, v, np.full_like(u, i)], axis=-1).astype(np.uint8)


def nyu_depth(i: int, width: int, height: int) -> np.ndarray:
    """Known reference depth of frame ``i``: ``[H, W]`` float32 metres, ``1 + i + u / 100 + v / 10000``."""
    v, u = np.mgrid[0:height, 0:width]
    return (1.0 + i + u / 100.0 + v / 10000.0).astype(np.float32)


def nyu_raw_depth(i: int, width: int, height: int) -> np.ndarray:
    """Known raw depth of frame ``i``: the reference depth + 5 mm with holes (0) where ``(u + v) % 7 == 0``."""
    v, u = np.mgrid[0:height, 0:width]
    raw = nyu_depth(i, width, height) + np.float32(0.005)
    raw[(u + v) % 7 == 0] = 0.0
    return raw


NYU_TEST_SCENES = ["kitchen_0028a", "kitchen_0028a", "bedroom_0001", "kitchen_0028a", "office_0003"]
NYU_TEST_TYPES = ["kitchen", "kitchen", "bedroom", "kitchen", "office"]
NYU_TEST_TRAIN = [1, 3, 5]  # 1-based, as in splits.mat
NYU_TEST_TEST = [2, 4]


def _cell_of_strings(f: h5py.File, key: str, strings: list[str]) -> None:
    """Store ``strings`` as MATLAB does a ``1 x n`` cell of char rows: refs to ``#refs#`` uint16 ``(len, 1)``."""
    refs_group = f.require_group("#refs#")
    refs = np.empty((1, len(strings)), dtype=h5py.ref_dtype)
    for j, s in enumerate(strings):
        codes = np.frombuffer(s.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
        d = refs_group.create_dataset(f"{key}_{j}", data=codes)
        d.attrs["MATLAB_class"] = np.bytes_("char")
        d.attrs["MATLAB_int_decode"] = np.int32(2)
        refs[0, j] = d.ref
    cell = f.create_dataset(key, data=refs, dtype=h5py.ref_dtype)
    cell.attrs["MATLAB_class"] = np.bytes_("cell")


def write_nyu_mat(
    path: Path,
    *,
    width: int = 64,
    height: int = 48,
    scenes: list[str] | None = None,
    scene_types: list[str] | None = None,
    drop: tuple[str, ...] = (),
    replace: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a small file with the labeled file's layout: ``images`` ``(N, 3, W, H)`` uint8, ``depths`` /
    ``rawDepths`` ``(N, W, H)`` float32, ``scenes`` / ``sceneTypes`` cell arrays; N = ``len(scenes)``.

    ``drop`` leaves datasets out and ``replace`` stores other arrays under a key, to build bad files.
    """
    scenes = NYU_TEST_SCENES if scenes is None else scenes
    scene_types = NYU_TEST_TYPES if scene_types is None else scene_types
    n = len(scenes)
    arrays = {
        "images": np.stack([nyu_rgb(i, width, height).transpose(2, 1, 0) for i in range(n)]),
        "depths": np.stack([nyu_depth(i, width, height).T for i in range(n)]),
        "rawDepths": np.stack([nyu_raw_depth(i, width, height).T for i in range(n)]),
    }
    arrays.update(replace or {})
    classes = {"images": "uint8", "depths": "single", "rawDepths": "single"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, arr in arrays.items():
            if key in drop:
                continue
            d = f.create_dataset(key, data=arr)
            d.attrs["MATLAB_class"] = np.bytes_(classes.get(key, "double"))
        for key, strings in (("scenes", scenes), ("sceneTypes", scene_types)):
            if key not in drop and key not in arrays:
                _cell_of_strings(f, key, strings)
    with open(path, "r+b") as fh:  # MATLAB's text header in the user block
        fh.write(MATLAB_73_HEADER)
    return path


def write_splits_mat(path: Path, train: list[int] | None = None, test: list[int] | None = None) -> Path:
    """Write ``splits.mat`` (old MATLAB format) with 1-based column vectors ``trainNdxs`` / ``testNdxs``."""
    train = NYU_TEST_TRAIN if train is None else train
    test = NYU_TEST_TEST if test is None else test
    scipy.io.savemat(path, {"trainNdxs": np.array(train, dtype=np.float64).reshape(-1, 1),
                            "testNdxs": np.array(test, dtype=np.float64).reshape(-1, 1)})
    return path


@dataclass(frozen=True)
class NyuFixture:
    """The NYU test helpers, handed to tests by the ``nyu`` fixture."""

    write_mat = staticmethod(write_nyu_mat)
    write_splits = staticmethod(write_splits_mat)
    rgb = staticmethod(nyu_rgb)
    depth = staticmethod(nyu_depth)
    raw_depth = staticmethod(nyu_raw_depth)
    scenes: tuple[str, ...] = tuple(NYU_TEST_SCENES)
    types: tuple[str, ...] = tuple(NYU_TEST_TYPES)
    train: tuple[int, ...] = tuple(NYU_TEST_TRAIN)
    test: tuple[int, ...] = tuple(NYU_TEST_TEST)


@pytest.fixture
def nyu() -> NyuFixture:
    """Writers and expected values of the small NYU labeled file (see :func:`write_nyu_mat`)."""
    return NyuFixture()
