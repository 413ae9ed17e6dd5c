"""The evaluate stage on tiny synthetic scenes: metrics agree with direct computations, CSVs and skips."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.baselines import make_baselines
from models.metrics import depth_metrics
from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.evaluate import run_evaluate
from tasks.refine import run_refine
from tasks.store import SceneView, open_store


@pytest.fixture
def evaluated(tiny_overrides, tmp_path):
    params = load_params(None, tiny_overrides + [
        "refine.method=bilateral", f"paths.refined={tmp_path / 'refined.zarr'}",
        f"paths.eval_metrics={tmp_path / 'metrics' / 'evaluate.json'}", f"paths.plots={tmp_path / 'plots'}",
        f"paths.nerf_metrics={tmp_path / 'metrics' / 'nerf.json'}", f"paths.report={tmp_path / 'reports'}",
        f"paths.nerf={tmp_path / 'nerf'}",
    ])
    run_download(params, progress=False)
    run_corrupt(params, progress=False)
    run_refine(params, progress=False)
    run_evaluate(params, progress=False)
    return params, json.loads(params.paths.eval_metrics.read_text())


def test_methods_are_scored_like_a_direct_computation(evaluated):
    params, m = evaluated
    assert list(m["refinement"]) == ["noisy", "inpaint", "bilateral", "joint_bilateral", "guided", "refined"]
    # refine.method=bilateral: the stored refinement and the baseline run here must score the same
    for key in ("rmse", "mae", "abs_rel", "delta1", "edge_f1", "coverage"):
        assert m["refinement"]["refined"][key] == pytest.approx(m["refinement"]["bilateral"][key], abs=1e-6)
    scenes = open_store(params.paths.scenes, "scenes")
    noisy = open_store(params.paths.noisy, "noisy")
    rows, bil = [], make_baselines(params.refine.baselines)["bilateral"]
    for name in ("synthetic_000", "synthetic_001"):
        view = SceneView(scenes[name])
        for i in view.indices("test"):
            gt, d = view.group["depth"][i], noisy[name]["depth_noisy"][i]
            rows.append((depth_metrics(d, gt)["rmse"], depth_metrics(bil(view.group["rgb"][i], d, view.group["K"][i]), gt)["rmse"]))
    assert m["refinement"]["noisy"]["rmse"] == pytest.approx(np.mean([r[0] for r in rows]), rel=1e-5)
    assert m["refinement"]["bilateral"]["rmse"] == pytest.approx(np.mean([r[1] for r in rows]), rel=1e-5)
    assert set(m["refinement_by_scene"]) == {"synthetic_000", "synthetic_001"}
    assert m["calibration"]["n"] == 0 and m["calibration"]["within_1sigma"] is None  # baselines have no sigma
    assert m["nerf"] == {} and m["skipped"] == {}


def test_plots_csvs_have_one_row_per_frame_scene_and_bin(evaluated):
    params, _ = evaluated
    frames = pd.read_csv(params.paths.plots / "refinement_frames.csv")
    assert len(frames) == 2 * 2 * 6  # scenes x test frames x methods
    assert {"scene", "frame", "method", "rmse", "delta3", "edge_precision", "edge_recall", "edge_f1"} <= set(frames)
    scenes = pd.read_csv(params.paths.plots / "refinement_scenes.csv")
    assert list(scenes["scene"]) == ["synthetic_000", "synthetic_001"] and "refined_rmse" in scenes
    dist = pd.read_csv(params.paths.plots / "error_vs_distance.csv")
    assert list(dist["lo"]) == params.evaluate.distance_bins_m[:-1]
    assert {"noisy", "refined", "guided", "distance_m", "n_noisy", "n_refined"} <= set(dist)
    assert dist["n_noisy"].sum() > 0 and (dist.loc[dist["n_noisy"] > 0, "noisy"] > 0).all()
    assert (dist["n_refined"] >= dist["n_noisy"]).all()  # the filters fill holes, the noisy input has them


def test_report_is_self_contained_with_tables_and_figures(evaluated):
    params, _ = evaluated
    figures = sorted(p.name for p in (params.paths.report / "figures").iterdir())
    assert figures == ["depth_distribution.png", "error_vs_distance.png", "refinement_synthetic_000_000001.png",
                       "refinement_synthetic_001_000001.png"]
    for name in figures:
        with Image.open(params.paths.report / "figures" / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    page = (params.paths.report / "index.html").read_text()
    assert page.count("<table") == 1 and "refined" in page and "edge_f1" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page.split("<h2>Params</h2>")[0] and "<script" not in page
    assert "depth_weight" in page  # the params of the run
