"""``dnerf``: the command line. One subcommand per pipeline stage, plus store inspection.

Every stage command takes ``--params FILE`` (default ``params.yaml``) and any number of
``--set dotted.key=value`` overrides (paths included), so one stage can be run on other data without
editing a file::

    dnerf download --set data.source=sevenscenes --set data.path=/data/redkitchen \\
                   --set paths.scenes=kitchen.zarr
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from flows.server import (
    LocalServer,
    clear_record,
    configure_prefect_env,
    prefect_home,
    shared_api,
    use_api,
    write_record,
)
from tasks.config import Params, ParamsError, load_params
from tasks.errors import DataError
from tasks.progress import rows_table

app = typer.Typer(
    name="dnerf",
    help="DiffusionNeRF-3D: RGB-D depth refinement with diffusion and per-scene NeRF reconstruction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params YAML file (see params.yaml for every key)")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="override a param, e.g. --set data.max_frames=10 (repeatable; value parsed as YAML)",
        metavar="KEY=VALUE",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


class RunNameFormatter(logging.Formatter):
    """Prefix Prefect's run logs with the task or flow run they come from (``fit_nerf/synthetic_000: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        msg = super().format(record)
        return f"{run}: {msg}" if run else msg


class ExpectedErrors(logging.Filter):
    """Log errors the command reports itself (bad data, failed scenes, missing packages) as one line, without
    Prefect's traceback panel: the command's own ``error:`` line, last, says what to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flows.fanout import StageFailed
        from flows.runners import RunnerError

        if record.exc_info and isinstance(record.exc_info[1], DataError | StageFailed | RunnerError):
            record.exc_info, record.exc_text = None, None
        return True


def _setup_logging() -> None:
    # wide lines where the output is a log (dvc repro, CI), not a terminal
    handler = RichHandler(console=Console(stderr=True, width=None if sys.stderr.isatty() else 140), show_path=False)
    handler.setFormatter(RunNameFormatter("%(message)s"))
    handler.addFilter(ExpectedErrors())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)  # a fresh console per command
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with ``error: <message>`` as its last, plain line on stderr."""
    sys.stdout.flush()
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.callback()
def _prefect_settings() -> None:
    """Keep Prefect's state in the project (``.prefect/``) with analytics off, before Prefect is imported."""
    configure_prefect_env(Path.cwd())


def load_or_exit(params_file: Path, overrides: list[str] | None) -> Params:
    try:
        return load_params(params_file, overrides or [])
    except ParamsError as e:
        Console(stderr=True).print(f"[bold red]invalid params[/]\n{e}", highlight=False)
        raise typer.Exit(2) from None


def configured_api() -> str | None:
    """The Prefect API the user configured (``PREFECT_API_URL`` or the active profile's), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_api() -> Iterator[None]:
    """Runs report to the configured Prefect API (``PREFECT_API_URL``, or the active profile's), else to the
    shared server of ``PREFECT_HOME``: started by the first command that needs it, reused by the next ones
    (one server start per ``dvc repro``, not one per stage; see :mod:`flows.server`)."""
    if configured_api():
        yield
        return
    with shared_api(announce=lambda msg: typer.echo(f"Prefect: {msg}", err=True)) as (api_url, started):
        typer.echo(f"Prefect: {'started' if started else 'using'} the shared server {api_url.removesuffix('/api')}",
                   err=True)
        with use_api(api_url):  # worker processes and Prefect's own threads too
            yield


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}


@contextmanager
def reported_errors(output: Path | str) -> Iterator[None]:
    """Turn the errors a user can act on into exit 1 with one plain ``error:`` line (failed scenes listed above
    it); ``output`` is named when a disk error carries no file name."""
    from flows.fanout import StageFailed
    from flows.runners import RunnerError

    try:
        yield
    except StageFailed as e:
        for name, msg in e.failures.items():
            typer.echo(f"  {name}: {msg}", err=True)
        fail(f"{e.stage}: {len(e.failures)} scene(s) failed ({', '.join(e.failures)}); the others were written")
    except (DataError, RunnerError) as e:
        fail(str(e))
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        fail(f"{e.filename or output}: {e.strerror}; nothing was published (outputs are written under a temporary "
             "name and renamed when complete): free space or fix permissions, then run again")


def run_stage(stage: str, params_file: Path, overrides: list[str] | None, quiet: bool) -> None:
    """Run a stage's Prefect flow; bad params exit 2, bad data or failed scenes exit 1 with one message."""
    _setup_logging()
    params = load_or_exit(params_file, overrides)
    from flows.runners import require_reachable_api
    from flows.stages import STAGE_OUTPUT, run_flow

    with reported_errors(getattr(params.paths, STAGE_OUTPUT[stage])):
        require_reachable_api(params.orchestration, configured_api())  # before a shared server would start
        with prefect_api():
            out = run_flow(stage, params, progress=not quiet)
    typer.echo(f"done: {out}", err=True)


#: The pipeline's stage commands (``dnerf <stage>``, dashes for underscores) and their help.
STAGE_COMMANDS = {
    "download": "Read a dataset (synthetic, nyu_labeled, sevenscenes, tum, nerfstudio, scannet, phone) into the "
                "scene store (paths.scenes).",
    "corrupt": "Simulate depth-sensor noise on the scene store (or pass sensor depth through) into paths.noisy.",
    "train_diffusion": "Train the diffusion depth refiner on the scene + noisy stores (resumes from its last "
                       "checkpoint).",
    "refine": "Refine every frame of the noisy store into paths.refined (resumable; refine.method picks a baseline).",
    "fit_nerf": "Fit a NeRF per scene with poses, supervised by nerf.depth_source; render, score and export it.",
    "evaluate": "Score noisy / classical / refined depth against the reference and collect the NeRF metrics.",
}


def register_stage(stage: str, help_text: str) -> None:
    """Add ``dnerf <stage>``: ``--params``, ``--set`` and ``--quiet``, then :func:`run_stage`."""

    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
        run_stage(stage, params, set_, quiet)

    command.__name__ = stage
    app.command(stage.replace("_", "-"), help=help_text)(command)


for _stage, _help in STAGE_COMMANDS.items():
    register_stage(_stage, _help)


@app.command()
def server(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0 = a free one)")] = 4200,
) -> None:
    """Run a local Prefect server with the UI on 127.0.0.1 until Ctrl-C or SIGTERM. Stage commands in other shells
    use it without any setup (it is recorded in PREFECT_HOME); other Prefect clients need the PREFECT_API_URL
    it prints."""
    import signal

    home = prefect_home()
    srv = LocalServer(home, port=port)
    try:
        srv.start()
    except RuntimeError as e:
        fail(str(e))
    write_record(home, srv.api_url, os.getpid())
    typer.echo(f"Prefect UI:  {srv.ui_url}\n"
               "Stage commands (dnerf, dvc repro) send their runs here; other clients need:\n"
               f"  export PREFECT_API_URL={srv.api_url}\nCtrl-C stops the server.")

    def stop(*_) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        srv.wait()
    except KeyboardInterrupt:
        pass
    finally:
        clear_record(home, os.getpid())
        srv.stop()


@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    repo: Annotated[Path, typer.Option(help="the DVC repository to watch")] = Path("."),
) -> None:
    """Serve the pipeline as deployments: a scheduled one that runs `dvc repro` when `dvc status` reports changes
    (schedule: orchestration.schedule), and one per stage with a Run form in the UI (params file and overrides)."""
    _setup_logging()
    p = load_or_exit(params, set_)
    from flows.schedule import serve as serve_deployments

    with prefect_api():
        serve_deployments(p, repo)


@app.command()
def params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the params (with overrides) and print them as YAML with every default filled in."""
    import yaml

    p = load_or_exit(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


@app.command()
def export(
    fmt: Annotated[str, typer.Argument(help="output format: nerfstudio (transforms.json + images + depth PNGs)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (one sub-folder per scene)")],
    depth: Annotated[str, typer.Option(help="depth to export: refined | noisy | gt | none")] = "refined",
    scene: Annotated[list[str] | None, typer.Option(help="scene to export (repeatable); default: eval scenes")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Export scenes of the stores for other tools, e.g. `ns-train depth-nerfacto` on our refined depth."""
    from tasks.export import export_nerfstudio

    if fmt != "nerfstudio":
        fail(f"unknown export format {fmt!r} (supported: nerfstudio)", 2)
    if depth not in ("refined", "noisy", "gt", "none"):
        fail(f"--depth {depth!r}: use refined, noisy, gt or none", 2)
    p = load_or_exit(params, set_)
    try:
        rows = export_nerfstudio(p, out, depth, scene)  # type: ignore[arg-type]
    except DataError as e:
        fail(str(e))
    for r in rows:
        note = f", {len(r['skipped_without_pose'])} without pose left out" if r["skipped_without_pose"] else ""
        typer.echo(f"{r['scene']}: {r['frames']} frames, {r['depth']} depth, {r['points']} points -> "
                   f"{r['folder']}{note}")


@app.command()
def render(
    scene: Annotated[str, typer.Argument(help="a fitted scene (a folder under paths.nerf)")],
    path: Annotated[str, typer.Option(help="camera path: train (through the train cameras) or orbit")] = "train",
    frames: Annotated[int, typer.Option(min=1, help="frames to render")] = 60,
    fps: Annotated[float, typer.Option(min=1, help="video frame rate")] = 15.0,
    downscale: Annotated[int, typer.Option(min=1, help="render at 1/downscale of the scene's resolution")] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="default: renders/<scene>-<path>")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Reload a fitted NeRF and render a camera path: PNG frames and an MP4, RGB and depth side by side."""
    from tasks.render import render_scene

    if path not in ("train", "orbit"):
        fail(f"--path {path!r}: use train or orbit", 2)
    p = load_or_exit(params, set_)
    try:
        result = render_scene(p, scene, path, frames, fps, downscale, out, progress=not quiet)  # type: ignore[arg-type]
    except DataError as e:
        fail(str(e))
    typer.echo(f"{scene}: {result['frames']} frames -> {result['folder']}"
               + (f" (video {result['video']})" if result["video"] else ""))


@app.command()
def reconstruct(
    capture: Annotated[Path, typer.Argument(help="the capture folder (transforms.json, Stray Scanner export, ...)")],
    source: Annotated[str, typer.Option(help="its layout: nerfstudio | phone | scannet | sevenscenes | tum")] = (
        "nerfstudio"),
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="output folder (default: reconstructions/<capture>)")] = None,
    refiner: Annotated[Path | None, typer.Option(help="trained refiner folder (default: paths.diffusion)")] = None,
    video_frames: Annotated[int, typer.Option(min=1, help="frames of the orbit video")] = 60,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Capture in, results out: refined depth, a NeRF, its mesh and an orbit video, all under --out
    (the download, corrupt, refine and fit_nerf stages with the capture's own depth, then a render)."""
    from flows.reconstruct import reconstruct as run_reconstruction
    from flows.reconstruct import reconstruct_params

    _setup_logging()
    out = out or Path("reconstructions") / capture.resolve().name
    params_file = params if params.exists() or params != Path("params.yaml") else None  # defaults outside a project
    try:
        p = reconstruct_params(params_file, capture, source, out, refiner, set_ or [])
    except ParamsError as e:
        Console(stderr=True).print(f"[bold red]invalid params[/]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    except DataError as e:
        fail(str(e))
    with reported_errors(out), prefect_api():
        results = run_reconstruction(p, out, video_frames, progress=not quiet)
    from tasks.progress import print_summary

    print_summary([{"scene": r.scene, "frames": r.frames, "test PSNR (dB)": r.test_psnr,
                    "mesh": r.mesh.relative_to(out.resolve()),
                    "video": r.video.relative_to(out.resolve()) if r.video else "-"}
                   for r in results], f"reconstructed {capture} into {out}")
    typer.echo(f"done: {out}", err=True)


@app.command()
def view(
    scene: Annotated[str, typer.Argument(help="a fitted scene (a folder under paths.nerf)")],
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0 = a free one)")] = 8080,
    host: Annotated[str, typer.Option(help="interface to serve on")] = "127.0.0.1",
    preview: Annotated[int, typer.Option(min=16, help="live NeRF render width in pixels")] = 160,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve a fitted scene in the browser (needs the viewer extra: pip install -e '.[viewer]'): its cameras
    with their images, the refined point cloud, the mesh and a live NeRF render from the browser's camera."""
    from tasks.viewer import ViewerUnavailable, serve_viewer

    p = load_or_exit(params, set_)
    try:
        serve_viewer(p, scene, host=host, port=port, preview_width=preview)
    except (DataError, ViewerUnavailable) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def info(store: Annotated[Path, typer.Argument(help="a scenes.zarr or noisy.zarr store")]) -> None:
    """Summarise a store: scenes, their roles, frames, resolution, split, poses and depth coverage."""
    from tasks.store import open_store, store_summary

    try:
        rows = store_summary(store)
        attrs = open_store(store, None).attrs
    except DataError as e:
        fail(str(e))
    Console().print(rows_table(rows, f"{store} ({attrs.get('schema')} v{attrs.get('schema_version')})",
                               caption="valid: share of frame 0's pixels with depth"))


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
