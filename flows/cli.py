"""``dnerf``: the command line. One subcommand per pipeline stage, plus store inspection.

Every stage command takes ``--params FILE`` (default ``params.yaml``) and any number of
``--set dotted.key=value`` overrides (paths included), so one stage can be run on other data without
editing a file::

    dnerf download --set data.source=sevenscenes --set data.path=/data/redkitchen \\
                   --set paths.scenes=kitchen.zarr
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from tasks.config import Params, ParamsError, load_params
from tasks.errors import DataError

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


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False)]
    )


def run_stage(stage: Callable[..., Path], params_file: Path, overrides: list[str] | None, quiet: bool) -> None:
    """Load and validate params, run a stage, and turn bad input into a one-line error and exit code."""
    _setup_logging()
    err = Console(stderr=True)
    try:
        params = load_params(params_file, overrides or [])
    except ParamsError as e:
        err.print(f"[bold red]invalid params[/]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    try:
        out = stage(params, progress=not quiet)
    except DataError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    err.print(f"[green]done:[/] {out}", highlight=False)


@app.command()
def download(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Read a dataset (synthetic, nyu_labeled, sevenscenes, tum) into the scene store (paths.scenes)."""
    from tasks.download import run_download

    run_stage(run_download, params, set_, quiet)


@app.command()
def corrupt(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Simulate depth-sensor noise on the scene store (or pass sensor depth through) into paths.noisy."""
    from tasks.corrupt import run_corrupt

    run_stage(run_corrupt, params, set_, quiet)


@app.command("train-diffusion")
def train_diffusion(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Train the diffusion depth refiner on the scene + noisy stores (resumes from its last checkpoint)."""
    from tasks.train_diffusion import run_train_diffusion

    run_stage(run_train_diffusion, params, set_, quiet)


@app.command()
def refine(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Refine every frame of the noisy store into paths.refined (resumable; refine.method picks a baseline)."""
    from tasks.refine import run_refine

    run_stage(run_refine, params, set_, quiet)


@app.command("fit-nerf")
def fit_nerf(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Fit a NeRF per scene with poses, supervised by nerf.depth_source; render, score and export it."""
    from tasks.fit_nerf import run_fit_nerf

    run_stage(run_fit_nerf, params, set_, quiet)


@app.command()
def params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate the params (with overrides) and print them as YAML with every default filled in."""
    import yaml

    try:
        p: Params = load_params(params, set_ or [])
    except ParamsError as e:
        Console(stderr=True).print(f"[bold red]invalid params[/]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


@app.command()
def info(store: Annotated[Path, typer.Argument(help="a scenes.zarr or noisy.zarr store")]) -> None:
    """Summarise a store: scenes, frames, resolution, split, poses and depth coverage."""
    import numpy as np

    from tasks.store import SceneView, open_store

    try:
        root = open_store(store, None)
    except DataError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    kind = root.attrs["schema"].removeprefix("dnerf.")
    key = {"scenes": "depth", "noisy": "depth_noisy", "refined": "depth_refined"}[kind]
    table = Table(title=f"{store} ({root.attrs.get('schema')} v{root.attrs.get('schema_version')})")
    for col in ("scene", "frames", "H x W", "train/test", "poses", "valid depth"):
        table.add_column(col)
    for name, group in sorted(root.groups()):
        d = group[key]
        valid = float(np.mean(d[0] > 0)) if d.shape[0] else 0.0
        if kind == "scenes":
            v = SceneView(group)
            split = f"{len(v.indices('train'))}/{len(v.indices('test'))}"
            poses = "yes" if v.has_poses else "no"
        else:
            split, poses = "-", "-"
        table.add_row(name, str(d.shape[0]), f"{d.shape[1]} x {d.shape[2]}", split, poses, f"{valid:.0%} (frame 0)")
    Console().print(table)


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
