"""``dnerf view`` on a tiny fitted scene: the live render's camera convention, and the page in headless Chromium.

Needs the viewer extra (viser) and, for the page, Chromium: both tests skip without them, unless
``DNERF_REQUIRE_BROWSER`` is set (``.ci/run`` sets it), when they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.fit_nerf import run_fit_nerf
from tasks.render import load_fit, scene_view

ROOT = Path(__file__).resolve().parents[2]
SCENE = "synthetic_000"
pytestmark = pytest.mark.xdist_group("viewer")  # one worker fits the module's scene once


def require(found: bool, what: str) -> None:
    """Skip when ``what`` is missing; fail instead where ``DNERF_REQUIRE_BROWSER`` is set."""
    if not found:
        if os.environ.get("DNERF_REQUIRE_BROWSER"):
            pytest.fail(f"DNERF_REQUIRE_BROWSER is set but {what}")
        pytest.skip(what)


def viser_missing() -> bool:
    try:
        import viser  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> list[str]:
    """``--set`` overrides of one tiny synthetic scene (8 frames of 32x24: 6 train, 2 test) fitted for 40 steps
    (about 10 s on 2 cores), with every path under a temporary folder."""
    require(not viser_missing(), "viser is not installed (pip install -e '.[viewer]')")
    tmp = tmp_path_factory.mktemp("viewer")
    overrides = [
        f"paths.raw={tmp / 'raw'}", f"paths.scenes={tmp / 'scenes.zarr'}", f"paths.noisy={tmp / 'noisy.zarr'}",
        f"paths.refined={tmp / 'refined.zarr'}", f"paths.nerf={tmp / 'nerf'}", f"paths.nerf_checkpoints={tmp / 'ck'}",
        f"paths.nerf_metrics={tmp / 'metrics' / 'nerf.json'}",
        "data.synthetic.n_scenes=1", "data.synthetic.n_frames=8", "data.synthetic.height=24", "data.synthetic.width=32",
        "data.synthetic.refiner_train_scenes=1", "data.synthetic.refiner_val_scenes=1",
        "data.synthetic.refiner_frames=2", "data.synthetic.refiner_sizes=[[32, 24]]", "data.test_every=4",
        "nerf.depth_source=gt", "nerf.ablation_sources=[]", "nerf.train.steps=40", "nerf.train.lr=0.02",
        "nerf.train.target_samples=4096", "nerf.train.n_coarse=24", "nerf.train.n_fine=8",
        "nerf.occupancy.warmup_steps=16", "nerf.occupancy.resolution=32", "nerf.occupancy.n_cells=2048",
        "nerf.export.mesh_resolution=32", "nerf.train.checkpoint_every=20",
    ]
    params = load_params(None, overrides)
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    run_fit_nerf(params, progress=False)
    return overrides


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a / 255.0 - b / 255.0) ** 2)))


def test_live_render_follows_the_browser_camera_convention(fitted):
    from tasks.viewer import live_frame, pose_from_viser, pose_to_viser, preview_camera, vertical_fov

    params = load_params(None, fitted)
    scene = load_fit(Path(params.paths.nerf) / SCENE)
    view = scene_view(params, SCENE)
    h, w = view.shape
    for i in view.indices("train")[:2] + view.indices("test")[:1]:
        K, c2w, colour = view.group["K"][i], view.group["c2w"][i], view.group["rgb"][i]
        wxyz, position = pose_to_viser(c2w)  # what a browser sitting at this camera reports
        assert np.allclose(pose_from_viser(wxyz, position), c2w, atol=1e-9)
        K_preview, hw = preview_camera(vertical_fov(K, h), w / h, w)  # the synthetic cameras: centred, square
        assert hw == (h, w) and np.allclose(K_preview, K, atol=1e-6)
        image, depth = live_frame(scene, K_preview, hw, pose_from_viser(wxyz, position))
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert depth.shape == (h, w) and depth.dtype == np.float32 and np.all(depth > 0)
        # the render from this camera looks like its photo; turned around (180 deg about y) or read with
        # OpenGL axes (180 deg about x: -z forward, +y up) it does not
        right = psnr(image, colour)
        turned = psnr(live_frame(scene, K_preview, hw, c2w @ np.diag([-1.0, 1.0, -1.0, 1.0]))[0], colour)
        opengl = psnr(live_frame(scene, K_preview, hw, c2w @ np.diag([1.0, -1.0, -1.0, 1.0]))[0], colour)
        assert right > 13.0 and right > turned + 4.0 and right > opengl + 4.0, (i, right, turned, opengl)
    K_small, hw_small = preview_camera(1.0, 4 / 3, 16)
    small, _ = live_frame(scene, K_small, hw_small, view.group["c2w"][0], "depth")
    assert hw_small == (12, 16) and small.shape == (12, 16, 3) and small.dtype == np.uint8


def test_live_renders_coalesce_to_the_newest_camera_of_each_browser():
    from tasks.viewer import LatestOnly

    calls, release = [], threading.Event()

    def work(key, job):
        if job == "boom":
            raise RuntimeError("a failed render")
        calls.append((key, job))
        release.wait(5)

    worker = LatestOnly(work)
    try:
        worker.submit("a", 0)
        end = time.monotonic() + 5
        while not calls and time.monotonic() < end:  # a0 is rendering ...
            time.sleep(0.01)
        for key, job in (("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4), ("a", 5)):  # ... while the camera moves
            worker.submit(key, job)
        release.set()
        while not worker.idle() and time.monotonic() < end:
            time.sleep(0.01)
        assert calls == [("a", 0), ("b", 1), ("a", 5)]  # stale poses dropped, browsers take turns
        worker.submit("c", "boom")  # logged; the worker goes on
        worker.submit("a", 6)
        while not worker.idle() and time.monotonic() < end:
            time.sleep(0.01)
        assert calls[-1] == ("a", 6)
    finally:
        worker.stop()
    assert not worker._thread.is_alive()


def browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Page:
    """Headless Chromium driven over the DevTools protocol (``websockets``, a viser dependency): the test waits
    for what the page shows instead of guessing a time budget."""

    def __init__(self, exe: str, profile: Path):
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader",
             "--enable-unsafe-swiftshader", "--window-size=800,600", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.profile, self.ws, self.n = profile, None, 0

    def connect(self, seconds: float = 30.0) -> None:
        import json

        from websockets.sync.client import connect

        port_file, end = self.profile / "DevToolsActivePort", time.monotonic() + seconds
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            assert time.monotonic() < end and self.proc.poll() is None, "Chromium did not start"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > end:
                break
            time.sleep(0.05)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26, proxy=None)

    def call(self, method: str, **params) -> dict:
        import json

        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def text(self) -> str:
        body = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
        return body["result"]["value"]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # Chromium's helper processes too
        self.proc.wait(timeout=10)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the viewer stops cleanly on it), SIGKILL after 15 s; then nothing of its process group is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def lines_of(stream, into: queue.Queue) -> threading.Thread:
    """Copy ``stream``'s lines into ``into`` on a daemon thread (so pipes never fill)."""
    def pump() -> None:
        for line in stream:
            into.put(line)
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def wait_for(lines: queue.Queue, pattern: str, seconds: float, seen: list[str]) -> re.Match | None:
    """The first line matching ``pattern`` within ``seconds`` (every line read is appended to ``seen``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            return None
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    return None


def test_dnerf_view_serves_the_scene_to_headless_chromium(fitted, tmp_path):
    import base64
    import io

    exe = browser()
    require(exe is not None, "no chromium on this machine (.ci/run installs Debian's chromium)")
    sets = [a for o in fitted for a in ("--set", o)]
    start = time.monotonic()
    proc = subprocess.Popen(
        ["dnerf", "view", SCENE, "--port", "0", "--preview", "64", "--params", str(ROOT / "params.yaml"), *sets],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
    )
    page = Page(exe, tmp_path / "chromium")  # starts alongside the viewer, as a user's browser would be open
    out, err = queue.Queue(), queue.Queue()
    lines_of(proc.stdout, out), lines_of(proc.stderr, err)
    seen: list[str] = []
    try:
        m = wait_for(out, r"viewer at (http://127\.0\.0\.1:\d+)", 30.0, seen)
        assert m, ("no URL printed", proc.poll(), seen, list(err.queue))
        url = m.group(1)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
            assert "<html" in r.read().decode().lower()
        answered = time.monotonic() - start

        page.connect()
        page.call("Emulation.setDeviceMetricsOverride", width=800, height=600, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        while SCENE not in page.text():  # the panel arrives over viser's websocket after the page loads
            assert time.monotonic() - start < 60, page.text()
            time.sleep(0.05)
        shown = time.monotonic() - start
        print(f"\ndnerf view: page answers {answered:.2f} s, shows {SCENE} {shown:.2f} s after the command started")
        assert shown < 10.0, f"the page showed the scene {shown:.1f} s after dnerf view started"

        # the first live NeRF frame for this browser's camera: the server says so and the panel reports it
        live = wait_for(out, r"browser \d+: live render (\d+)x(\d+) rgb in (\d+) ms", 30.0, seen)
        assert live and int(live.group(1)) == 64, (seen, list(err.queue))
        print(f"first live frame: {live.group(0)}")
        while "live render 64x" not in page.text():
            assert time.monotonic() - start < 60, page.text()
            time.sleep(0.05)

        # the 3D canvas (left of the panel, below viser's software-WebGL notice) is drawn, not one flat colour, and
        # the live render covers viser's white background; viser fades the scene in: screenshots are taken until
        # the page looks like that, for up to 20 s
        def drawn(canvas: np.ndarray) -> tuple[float, int, float]:
            colours = len(np.unique(canvas.reshape(-1, 3).astype(np.uint8), axis=0))
            return float(canvas.std()), colours, float((canvas.min(axis=-1) > 235).mean())

        deadline = time.monotonic() + 20.0
        while True:
            png = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
            spread, colours, white = drawn(pixels[200:600, 0:440])
            ok = spread > 25.0 and colours > 500 and white < 0.2
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        (tmp_path / "page.png").write_bytes(png)
        assert pixels.shape == (600, 800, 3)
        assert ok, (spread, colours, white, tmp_path / "page.png")
    finally:
        page.close()
        stop(proc)
    assert proc.returncode == 0, (proc.returncode, seen, list(err.queue))
