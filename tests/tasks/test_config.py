"""Params loading: defaults, overrides, and errors that name the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import Params, ParamsError, apply_overrides, load_params, with_absolute_paths

ROOT = Path(__file__).resolve().parents[2]


def test_repository_params_file_is_valid_and_matches_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p == Params(), "params.yaml should spell out the defaults"
    assert p.paths.scenes == Path("data/scenes.zarr")
    assert p.data.source == "synthetic"


def test_overrides_are_parsed_as_yaml_and_nested():
    p = load_params(
        ROOT / "params.yaml",
        ["data.max_frames=10", "data.intrinsics=[585, 585, 320, 240]", "noise.axial.enabled=false",
         "paths.scenes=/tmp/x.zarr", "data.source=sevenscenes", "data.path=/some/folder"],
    )
    assert p.data.max_frames == 10
    assert p.data.intrinsics == (585.0, 585.0, 320.0, 240.0)
    assert p.noise.axial.enabled is False
    assert p.paths.scenes == Path("/tmp/x.zarr")


def test_a_bare_off_is_the_precision_off_not_false():
    """YAML reads ``off`` as false; for the precision settings it is the string ``off``, not a validation error."""
    p = load_params(None, ["nerf.train.amp=off", "diffusion.train.amp=off"])
    assert (p.nerf.train.amp, p.diffusion.train.amp) == ("off", "off")
    with pytest.raises(ParamsError, match=r"nerf\.train\.amp"):
        load_params(None, ["nerf.train.amp=true"])


def test_apply_overrides_does_not_touch_input():
    tree = {"data": {"stride": 1}}
    out = apply_overrides(tree, ["data.stride=3", "noise.seed=4"])
    assert tree == {"data": {"stride": 1}}
    assert out == {"data": {"stride": 3}, "noise": {"seed": 4}}


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.n_scens=3", ["data.n_scens", "unknown key"]),
        ("data.stride=0", ["data.stride", "greater than or equal to 1", "got 0"]),
        ("data.stride=abc", ["data.stride", "'abc'"]),
        ("data.source=kinect", ["data.source", "'kinect'"]),
        ("noise.range.min_m=9", ["noise.range", "min_m"]),
        ("data.synthetic.n_frames=-1", ["data.synthetic.n_frames", "-1"]),
        ("data.height=100", ["data.height and data.width"]),
        ("data.source=tum", ["data.path"]),
    ],
)
def test_bad_values_fail_naming_key_and_value(override, fragments):
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params.yaml", [override])
    msg = str(err.value)
    assert "params.yaml" in msg
    for frag in fragments:
        assert frag in msg, msg


def test_bad_override_syntax_and_unreadable_file(tmp_path):
    with pytest.raises(ParamsError, match=r"dotted\.key=value"):
        load_params(ROOT / "params.yaml", ["nonsense"])
    with pytest.raises(ParamsError, match="cannot read params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(scalar)
    with pytest.raises(ParamsError, match=r"data\.stride is not a mapping"):
        load_params(ROOT / "params.yaml", ["data.stride.x=1"])


def test_with_absolute_paths_resolves_every_relative_path_and_nothing_else():
    p = load_params(None, ["diffusion.train.extra_stores=[{scenes: a.zarr, noisy: /abs/b.zarr}]", "data.path=cap"])
    q = with_absolute_paths(p, Path("/work"))
    assert q.paths.scenes == Path("/work/data/scenes.zarr")
    assert q.orchestration.results == Path("/work/.prefect-results")
    assert q.data.path == Path("/work/cap") and q.diffusion.train.init_from is None
    extra = [(s.scenes, s.noisy) for s in q.diffusion.train.extra_stores]
    assert extra == [(Path("/work/a.zarr"), Path("/abs/b.zarr"))]
    assert q.model_dump(exclude={"paths", "data", "diffusion", "orchestration"}) == p.model_dump(
        exclude={"paths", "data", "diffusion", "orchestration"})
    assert q.nerf == p.nerf and p.paths.scenes == Path("data/scenes.zarr")  # the input is not changed


@pytest.mark.parametrize("override", ["paths.raw=s3://lab-bucket/raw", "data.path=gs://b/capture",
                                      "diffusion.train.init_from=s3://b/model"])
def test_a_url_where_a_path_is_needed_is_refused_by_name(override):
    """``Path("s3://b/x")`` would quietly write a local folder ``s3:``: a URL where a path is read is refused,
    naming the key, the keys that do take URLs, and how to use a bucket for the others (a mount)."""
    key = override.split("=")[0]
    with pytest.raises(ParamsError, match=r"is a URL.*orchestration.results may be URLs.*mount") as info:
        load_params(None, [override])
    assert key.split(".")[0] in str(info.value) and "://" in str(info.value)


def test_stores_and_outputs_take_urls_and_file_urls_become_paths(tmp_path):
    """The stores and the other outputs may be object-storage URLs (kept as strings, never made ``Path``s, and left
    alone when params are made absolute for a cluster); ``file://`` URLs are local paths; an unknown protocol is
    refused by name."""
    p = load_params(None, ["paths.refined=s3://lab-bucket/run 1/refined.zarr/", f"paths.noisy=file://{tmp_path}/n.zarr",
                           "diffusion.train.extra_stores=[{scenes: s3://b/s.zarr, noisy: n.zarr}]",
                           "paths.nerf=s3://lab-bucket/nerf", "orchestration.results=gs://b/r"])
    assert p.paths.refined == "s3://lab-bucket/run 1/refined.zarr" and p.paths.noisy == tmp_path / "n.zarr"
    assert p.paths.nerf == "s3://lab-bucket/nerf" and p.orchestration.results == "gs://b/r"
    assert (p.diffusion.train.extra_stores[0].scenes, p.diffusion.train.extra_stores[0].noisy) == (
        "s3://b/s.zarr", Path("n.zarr"))
    q = with_absolute_paths(p, Path("/work"))
    assert q.paths.refined == p.paths.refined and q.diffusion.train.extra_stores[0].noisy == Path("/work/n.zarr")
    with pytest.raises(ParamsError, match=r"paths.scenes.*'nosuch' "):
        load_params(None, ["paths.scenes=nosuch://b/s.zarr"])
