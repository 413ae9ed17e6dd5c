"""``dnerf view``: a fitted scene in the browser, served by viser (the viewer nerfstudio uses; the ``viewer`` extra).

The page shows, each part switchable from the panel:

* the scene's cameras as frustums with their (downscaled) images, train views grey, test views orange;
* a point cloud of the depth that supervised the fit (the diffusion-refined depth for ``depth_source=refined``)
  back-projected from the train views and subsampled; the fit's ``pointcloud.ply`` where that depth is not at
  hand (e.g. ``depth_source=none`` or the refined store is gone);
* the fit's ``mesh.ply`` with its vertex colours (hidden at first: it would cover the live render);
* a live NeRF render from the browser's camera, ``preview_width`` pixels wide, as the page's background
  (with its z-depth for viser's compositing: cameras and points in front of a rendered surface show, those
  behind it are hidden): colour or depth.

Live renders: a camera message replaces its client's pending request; one background thread renders the newest
request of each client in turn (:class:`LatestOnly`), so a moving camera never builds a queue and at most one
render (on torch's intra-op threads) runs at a time. Renders use early ray termination below 1e-3
transmittance, invisible in the uint8 image.

Conventions: viser's cameras and frustums are OpenCV-like (+z forward, -y up, +x right) with orientation ``wxyz``
and ``position`` in the world frame, i.e. a camera-to-world pose like the store's ``c2w``: poses only change form
(:func:`pose_from_viser`, :func:`pose_to_viser`). Viser does not let a server set the page's ``<title>``; the
scene's name is the panel label and heads the panel.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from models.camera import backproject, intrinsics_matrix
from tasks.config import Params
from tasks.errors import DataError
from tasks.nerf_data import frame_depth, open_scene
from tasks.nerf_layout import FitFolder, fits_on_disk
from tasks.render import FittedScene, depth_colours, load_fit, render_pose, scene_view
from tasks.store import SceneView

log = logging.getLogger(__name__)

INSTALL_HINT = "the viewer needs viser: pip install -e '.[viewer]' (or pip install 'viser>=1.0,<2')"
#: Depth (metres) given to the compositing where the live render is empty: behind every scene element.
EMPTY_DEPTH = 150.0
#: Live renders stop a ray below this transmittance (what remains is under a quarter of one uint8 step).
STOP_BELOW = 1e-3
LiveMode = Literal["rgb", "depth", "off"]


class ViewerUnavailable(RuntimeError):
    """The viewer's optional dependency (viser) is not installed."""


def import_viser() -> ModuleType:
    """The ``viser`` module; :class:`ViewerUnavailable` with the install hint where it is missing."""
    try:
        import viser
    except ImportError as err:
        raise ViewerUnavailable(f"{INSTALL_HINT} ({err})") from None
    return viser


# ------------------------------------------------------------------------------------------- cameras


def pose_from_viser(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``[4, 4]`` camera-to-world (OpenCV axes) of a viser camera: orientation ``wxyz [4]``, ``position [3]``."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64)
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def pose_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(wxyz [4], position [3])`` of a ``[4, 4]`` camera-to-world pose (OpenCV axes), for viser."""
    x, y, z, w = Rotation.from_matrix(np.asarray(c2w, dtype=np.float64)[:3, :3]).as_quat()
    return np.array([w, x, y, z]), np.asarray(c2w, dtype=np.float64)[:3, 3].copy()


def preview_camera(fov_y: float, aspect: float, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Intrinsics ``K [3, 3]`` and ``(H, W)`` of a ``width``-pixel render of a browser camera with vertical field
    of view ``fov_y`` (radians) and ``aspect`` = width / height: square pixels, centred principal point."""
    h = max(1, round(width / aspect))
    f = 0.5 * h / math.tan(0.5 * fov_y)
    return intrinsics_matrix(f, f, (width - 1) / 2.0, (h - 1) / 2.0), (h, width)


def vertical_fov(K: np.ndarray, height: int) -> float:
    """Vertical field of view (radians) of intrinsics ``K [3, 3]`` for images ``height`` pixels high."""
    return 2.0 * math.atan(0.5 * height / float(K[1, 1]))


def live_frame(scene: FittedScene, K: np.ndarray, hw: tuple[int, int], c2w: np.ndarray,
               mode: Literal["rgb", "depth"] = "rgb") -> tuple[np.ndarray, np.ndarray]:
    """One live view: ``image`` uint8 ``[H, W, 3]`` (colour, or z-depth coloured as in ``dnerf render``) and
    ``depth`` float32 ``[H, W]`` for compositing (z-depth in metres where the render is opaque, else
    :data:`EMPTY_DEPTH`), rendered by the fitted field from camera-to-world ``c2w [4, 4]`` (OpenCV axes) with
    intrinsics ``K [3, 3]`` at ``hw = (H, W)``."""
    rgb, z, opacity = render_pose(scene, K, hw, c2w, stop_below=STOP_BELOW)
    if mode == "depth":
        rgb = depth_colours(z, opacity, float(np.linalg.norm(scene.aabb[1] - scene.aabb[0])))
    image = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return image, np.where(opacity > 0.5, z, EMPTY_DEPTH).astype(np.float32)


# -------------------------------------------------------------------------------------- scene content


@dataclass(frozen=True)
class Shot:
    """A camera of the scene: frame ``index``, its split, intrinsics ``K [3, 3]`` of the full ``(H, W)`` image,
    ``c2w [4, 4]`` (OpenCV axes) and a downscaled ``image`` uint8 ``[h, w, 3]``."""

    index: int
    split: str
    K: np.ndarray
    c2w: np.ndarray
    image: np.ndarray


@dataclass(frozen=True)
class SceneContent:
    """Everything the page shows, loaded before the server starts.

    ``points [n, 3]`` (metres, world) with ``colours [n, 3]`` uint8 and what they are (``points_label``);
    ``mesh`` None where the export has none (or an empty one); ``up [3]`` the cameras' mean up direction.
    """

    name: str
    fitted: FittedScene
    hw: tuple[int, int]
    shots: list[Shot]
    points: np.ndarray
    colours: np.ndarray
    points_label: str
    mesh: trimesh.Trimesh | None
    up: np.ndarray
    metrics: dict[str, Any]


def downscale(rgb: np.ndarray, max_width: int) -> np.ndarray:
    """``rgb [H, W, 3]`` shrunk (area filter) to at most ``max_width`` pixels wide, aspect kept."""
    h, w = rgb.shape[:2]
    if w <= max_width:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)


def spread(indices: list[int], n: int) -> list[int]:
    """At most ``n`` of ``indices``, evenly spaced along them (first and last kept)."""
    if len(indices) <= n:
        return list(indices)
    return [indices[k] for k in np.unique(np.round(np.linspace(0, len(indices) - 1, n)).astype(int))]


def camera_shots(view: SceneView, max_cameras: int, image_width: int) -> list[Shot]:
    """The posed train and test cameras of ``view`` (at most ``max_cameras`` of each split, evenly spaced),
    with their colour images downscaled to ``image_width``."""
    K, c2w = view.group["K"][:], view.group["c2w"][:]
    shots = []
    for split in ("train", "test"):
        posed = [i for i in view.indices(split) if np.all(np.isfinite(c2w[i]))]
        shots.extend(Shot(i, split, K[i], c2w[i], downscale(view.group["rgb"][i], image_width))
                     for i in spread(posed, max_cameras))
    return shots


def subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, k)`` of ``n`` items, drawn without replacement."""
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def depth_points(params: Params, scene: str, depth_source: str, max_points: int, max_views: int = 60,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(points [n, 3], colours [n, 3] uint8)``: the depth that supervised the fit (``depth_source``) of the
    scene's train views (at most ``max_views``, evenly spaced) back-projected into the world, about
    ``max_points`` in all (an equal share per view); None where the fit had no depth or it cannot be read."""
    if depth_source == "none":
        return None
    try:
        frames = open_scene(params.paths.scenes, scene, depth_source,  # type: ignore[arg-type]
                            params.paths.noisy if depth_source == "noisy" else None,
                            params.paths.refined if depth_source == "refined" else None)
    except (DataError, KeyError) as err:
        log.info("%s: no %s depth for the point cloud (%s); showing the fit's pointcloud.ply", scene, depth_source, err)
        return None
    rng = np.random.default_rng(seed)
    views = spread(frames.train, max_views)
    share = max(1, math.ceil(max_points / max(1, len(views))))
    pts, cols = [], []
    for i in views:
        sup = frame_depth(frames, i)
        if sup is None:
            continue
        z = sup[0]
        v, u = np.nonzero(z > 0)
        keep = subsample(len(v), share, rng)
        v, u = v[keep], u[keep]
        cam = backproject(z, frames.K[i])[v, u]
        pts.append(cam @ frames.c2w[i][:3, :3].T + frames.c2w[i][:3, 3])
        cols.append(frames.view.group["rgb"][i][v, u])
    if not pts:
        return None
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.uint8)


def ply_points(path: Path, max_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(points [n, 3], colours [n, 3] uint8)`` of a point-cloud PLY, at most ``max_points`` (random subset);
    empty arrays where the file is missing."""
    if not path.is_file():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    cloud = trimesh.load(path, process=False)
    # trimesh annotates load() as any geometry or a scene; a point-cloud PLY loads as a PointCloud
    pts = np.asarray(cloud.vertices, dtype=np.float32)  # pyright: ignore[reportAttributeAccessIssue]
    cols = np.asarray(getattr(cloud, "colors", np.zeros((0, 4))), dtype=np.uint8)
    if cols.shape[:1] != pts.shape[:1]:
        cols = np.full((len(pts), 4), 200, np.uint8)
    keep = subsample(len(pts), max_points, np.random.default_rng(seed))
    return pts[keep], cols[keep, :3]


def load_mesh(path: Path) -> trimesh.Trimesh | None:
    """The mesh of a fit's ``mesh.ply`` (vertex colours kept), or None where it is missing or empty."""
    if not path.is_file():
        return None
    mesh = trimesh.load(path, process=False)
    return mesh if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) else None


def load_content(params: Params, scene: str, max_cameras: int = 100, image_width: int = 160,
                 max_points: int = 150_000) -> SceneContent:
    """Load what the page shows for the fitted ``scene`` (``paths.nerf/<scene>``): DataError naming the missing
    piece where the fit or the scene store is absent."""
    folder = fits_on_disk(params.paths.nerf) / scene
    fitted = load_fit(folder)
    view = scene_view(params, scene)
    shots = camera_shots(view, max_cameras, image_width)
    if not shots:
        raise DataError(params.paths.scenes, f"scene {scene!r} has no posed cameras to show")
    found = depth_points(params, scene, fitted.cfg.depth_source, max_points)
    if found is not None:
        points, colours = found
        label = f"{fitted.cfg.depth_source} depth of the train views"
    else:
        points, colours = ply_points(FitFolder(folder).pointcloud, max_points)
        label = "NeRF depth of the test views (pointcloud.ply)"
    up = -np.mean([s.c2w[:3, 1] for s in shots], axis=0)  # OpenCV y points down in the image
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-9 else np.array([0.0, 0.0, 1.0])
    metrics_file = FitFolder(folder).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return SceneContent(scene, fitted, view.shape, shots, points, colours, label, load_mesh(FitFolder(folder).mesh),
                        up, metrics)


def panel_text(content: SceneContent) -> str:
    """Markdown heading the panel: the scene's name and what the page shows."""
    n_train = sum(s.split == "train" for s in content.shots)
    m = content.metrics
    lines = [f"### {content.name}", "",
             f"- fit: depth source **{content.fitted.cfg.depth_source}**"
             + (f", {m['steps']} steps" if "steps" in m else "")
             + (f", test PSNR {m['test_psnr']:.2f} dB" if isinstance(m.get("test_psnr"), float) else ""),
             f"- cameras: {n_train} train (grey), {len(content.shots) - n_train} test (orange)",
             f"- points: {len(content.points):,} ({content.points_label})",
             f"- mesh: {len(content.mesh.faces):,} faces" if content.mesh is not None else "- mesh: none exported"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ live renders


class LatestOnly:
    """Runs ``work(key, job)`` on one background thread for the newest job of each key.

    :meth:`submit` replaces a key's pending job (older ones are dropped, never rendered); keys take turns in
    the order they became pending. ``work`` errors are logged and the thread goes on.
    """

    def __init__(self, work: Callable[[Hashable, Any], None], name: str = "dnerf-live-render"):
        self._work = work
        self._pending: dict[Hashable, Any] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, job: Any) -> None:
        with self._cv:
            self._pending.pop(key, None)
            self._pending[key] = job
            self._cv.notify()

    def cancel(self, key: Hashable) -> None:
        with self._cv:
            self._pending.pop(key, None)

    def idle(self) -> bool:
        """Nothing pending and nothing running."""
        with self._cv:
            return not self._pending and not self._busy

    def stop(self, timeout: float = 10.0) -> None:
        """Drop pending jobs, let a running one finish (up to ``timeout`` seconds) and end the thread."""
        with self._cv:
            self._stopped = True
            self._pending.clear()
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                key = next(iter(self._pending))
                job = self._pending.pop(key)
                self._busy = True
            try:
                self._work(key, job)
            except Exception:  # a failed render must not end the viewer
                log.exception("live render failed")
            finally:
                with self._cv:
                    self._busy = False


@dataclass(frozen=True)
class LiveRequest:
    """A client's camera at the time of its message: ``c2w [4, 4]`` (OpenCV axes), vertical ``fov`` (radians)
    and ``aspect`` (width / height of its canvas)."""

    client: Any
    c2w: np.ndarray
    fov: float
    aspect: float


def request_of(client: Any) -> LiveRequest:
    """The :class:`LiveRequest` of a viser client's current camera."""
    cam = client.camera
    return LiveRequest(client, pose_from_viser(cam.wxyz, cam.position), float(cam.fov), float(cam.aspect))


# ----------------------------------------------------------------------------------------------- server


@dataclass
class ViewerHandle:
    """A running viewer: its viser ``server``, the live ``renderer`` and the ``url`` it serves."""

    server: Any
    renderer: LatestOnly
    url: str
    scene: str

    def stop(self) -> None:
        self.renderer.stop()
        self.server.stop()


def add_scene(server: Any, content: SceneContent) -> dict[str, Any]:
    """Put ``content`` into viser's scene (shared by every client): frustums, point cloud, mesh (hidden at first:
    it would cover the live render), up direction and initial camera (behind the first camera, looking its way).
    Returns the group nodes by name (``cameras``, ``points``, ``mesh``) for the visibility switches."""
    fitted = content.fitted
    diag = float(np.linalg.norm(fitted.aabb[1] - fitted.aabb[0]))
    h, w = content.hw
    groups = {name: server.scene.add_frame(f"/{name}", show_axes=False, visible=name != "mesh")
              for name in ("cameras", "points", "mesh")}
    for s in content.shots:
        wxyz, pos = pose_to_viser(s.c2w)
        server.scene.add_camera_frustum(
            f"/cameras/{s.split}_{s.index:05d}", fov=vertical_fov(s.K, h), aspect=w / h, scale=0.02 * diag,
            thickness=0.0015 * diag, color=(80, 80, 80) if s.split == "train" else (240, 140, 20), image=s.image,
            format="jpeg", jpeg_quality=85, wxyz=wxyz, position=pos)
    if len(content.points):
        server.scene.add_point_cloud("/points/cloud", content.points, content.colours, point_size=0.002 * diag,
                                     point_shape="rounded", precision="float32")
    if content.mesh is not None:
        server.scene.add_mesh_trimesh("/mesh/mesh", content.mesh)
    server.scene.set_up_direction(tuple(content.up.tolist()))
    first = content.shots[0]  # start behind the first camera, looking where it looks, its frustum in view
    centre = 0.5 * (fitted.aabb[0] + fitted.aabb[1])
    forward = first.c2w[:3, 2]
    reach = max(float(np.linalg.norm(centre - first.c2w[:3, 3])), 0.1 * diag)
    server.initial_camera.position = tuple((first.c2w[:3, 3] - 0.3 * reach * forward).tolist())
    server.initial_camera.look_at = tuple((first.c2w[:3, 3] + reach * forward).tolist())
    server.initial_camera.up = tuple(content.up.tolist())
    server.initial_camera.fov = vertical_fov(first.K, h)
    return groups


def add_panel(server: Any, content: SceneContent, groups: dict[str, Any], preview_width: int,
              on_change: Callable[[], None]) -> dict[str, Any]:
    """The panel: scene name and summary, visibility switches, live-render mode and width, and a status line.
    ``on_change`` runs when the mode or width changes (to re-render every client). Returns the controls."""
    gui = server.gui
    gui.configure_theme(control_layout="collapsible", show_share_button=False)
    gui.add_markdown(panel_text(content))
    for name, label in (("cameras", "cameras"), ("points", "point cloud"), ("mesh", "mesh")):
        box = gui.add_checkbox(f"show {label}", initial_value=groups[name].visible)
        box.on_update(lambda _, node=groups[name], box=box: setattr(node, "visible", box.value))
    mode = gui.add_dropdown("live render", ("rgb", "depth", "off"), initial_value="rgb")
    width = gui.add_slider("preview width (px)", min=32, max=max(640, preview_width), step=16,
                           initial_value=preview_width)
    status = gui.add_markdown("live render: waiting for a camera")
    mode.on_update(lambda _: on_change())
    width.on_update(lambda _: on_change())
    return {"mode": mode, "width": width, "status": status}


def render_for_client(fitted: FittedScene, controls: dict[str, Any], req: LiveRequest) -> str | None:
    """Render ``req`` at the panel's mode and width and show it as that client's background; what was
    rendered (``live render WxH rgb in N ms``), None when the live render is off."""
    mode: LiveMode = controls["mode"].value
    if mode == "off":
        req.client.scene.set_background_image(None)
        return None
    K, hw = preview_camera(req.fov, req.aspect, int(controls["width"].value))
    start = time.perf_counter()
    with torch.no_grad():
        image, depth = live_frame(fitted, K, hw, req.c2w, mode)
    seconds = time.perf_counter() - start
    req.client.scene.set_background_image(image, format="jpeg", jpeg_quality=90, depth=depth)
    done = f"live render {hw[1]}x{hw[0]} {mode} in {seconds * 1000:.0f} ms"
    controls["status"].content = done
    return done


def start_viewer(params: Params, scene: str, host: str = "127.0.0.1", port: int = 8080,
                 preview_width: int = 160) -> ViewerHandle:
    """Load the fitted ``scene`` and start serving it (returns once the page answers and shows the scene)."""
    viser = import_viser()
    content = load_content(params, scene)
    server = viser.ViserServer(host=host, port=port, label=f"dnerf · {scene}", verbose=False)
    try:
        groups = add_scene(server, content)
        clients: dict[int, Any] = {}
        reported: set[Hashable] = set()

        def work(key: Hashable, req: LiveRequest) -> None:
            done = render_for_client(content.fitted, controls, req)
            if done and key not in reported:  # one line per browser: the first live frame it got
                reported.add(key)
                print(f"{scene}: browser {key}: {done}", flush=True)

        renderer = LatestOnly(work)

        def rerender_all() -> None:
            for cid, client in list(clients.items()):
                renderer.submit(cid, request_of(client))

        controls = add_panel(server, content, groups, preview_width, rerender_all)

        @server.on_client_connect
        def _(client: Any) -> None:
            clients[client.client_id] = client
            client.camera.on_update(lambda _cam: renderer.submit(client.client_id, request_of(client)))
            renderer.submit(client.client_id, request_of(client))

        @server.on_client_disconnect
        def _(client: Any) -> None:
            clients.pop(client.client_id, None)
            renderer.cancel(client.client_id)
    except BaseException:
        server.stop()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return ViewerHandle(server, renderer, f"http://{shown}:{server.get_port()}", scene)


@contextmanager
def stop_on_sigterm(event: threading.Event) -> Iterator[None]:
    """Within the block, SIGTERM sets ``event`` instead of ending the process (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_viewer(params: Params, scene: str, host: str = "127.0.0.1", port: int = 8080, preview_width: int = 160,
                 block: bool = True) -> ViewerHandle:
    """``dnerf view``: serve the fitted ``scene`` in the browser and print its URL.

    ``block=True`` serves until Ctrl-C or SIGTERM, then stops the server; ``block=False`` returns the running
    :class:`ViewerHandle` (call its ``stop()``). Raises :class:`ViewerUnavailable` without viser and DataError
    when the fit or the scene store is missing.
    """
    handle = start_viewer(params, scene, host, port, preview_width)
    print(f"{scene}: viewer at {handle.url} (live render {preview_width} px wide; Ctrl-C to stop)", flush=True)
    if not block:
        return handle
    done = threading.Event()
    with stop_on_sigterm(done):
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop()
    return handle
