"""The evaluate stage on tiny synthetic scenes: metrics agree with direct computations, CSVs and skips."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from models.baselines import BASELINE_NAMES, make_baselines, tune_baselines
from models.metrics import depth_metrics
from tasks.config import load_params
from tasks.corrupt import run_corrupt
from tasks.download import run_download
from tasks.evaluate import run_evaluate, validation_frames
from tasks.refine import run_refine
from tasks.store import SceneView, consolidate, open_store, scene_names


def output_paths(tmp_path) -> list[str]:
    """Every stage output from refine on under ``tmp_path``."""
    return [f"paths.refined={tmp_path / 'refined.zarr'}",
            f"paths.eval_metrics={tmp_path / 'metrics' / 'evaluate.json'}",
            f"paths.plots={tmp_path / 'plots'}", f"paths.nerf_metrics={tmp_path / 'metrics' / 'nerf.json'}",
            f"paths.report={tmp_path / 'reports'}", f"paths.nerf={tmp_path / 'nerf'}"]


def refine_and_evaluate(params):
    """corrupt -> refine -> evaluate on a downloaded store; the params and the metrics JSON."""
    run_corrupt(params, progress=False)
    run_refine(params, progress=False)
    run_evaluate(params, progress=False)
    return params, json.loads(params.paths.eval_metrics.read_text())


@pytest.fixture
def evaluated(tiny_overrides, tmp_path):
    params = load_params(None, tiny_overrides + output_paths(tmp_path) + [
        "data.synthetic.refiner_train_scenes=0", "data.synthetic.refiner_val_scenes=0",  # eval rooms only
        "refine.method=bilateral",
    ])
    run_download(params, progress=False)
    return refine_and_evaluate(params)


def test_methods_are_scored_like_a_direct_computation(evaluated):
    params, m = evaluated
    assert list(m["refinement"]) == ["noisy", "inpaint", "median", "bilateral", "joint_bilateral", "guided", "refined"]
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
            smoothed = bil(view.group["rgb"][i], d, view.group["K"][i])
            rows.append((depth_metrics(d, gt)["rmse"], depth_metrics(smoothed, gt)["rmse"]))
    assert m["refinement"]["noisy"]["rmse"] == pytest.approx(np.mean([r[0] for r in rows]), rel=1e-5)
    assert m["refinement"]["bilateral"]["rmse"] == pytest.approx(np.mean([r[1] for r in rows]), rel=1e-5)
    assert set(m["refinement_by_scene"]) == {"synthetic_000", "synthetic_001"}
    assert m["calibration"]["n"] == 0 and m["calibration"]["within_1sigma"] is None  # baselines have no sigma
    assert m["nerf"] == {} and m["skipped"] == {}
    # no validation scene: the baselines ran with refine.baselines as given, and the metrics say so
    bp = m["baseline_params"]
    assert bp["tuned"] is False and "no validation scene" in bp["reason"]
    assert bp["params"] == params.refine.baselines.model_dump()


def test_split_all_scores_every_frame_and_the_test_frames_alike(evaluated):
    """``evaluate.split=all`` scores every frame of the evaluation scenes; the test frames among them get the
    same scores as under the default ``test`` split (same pixels, same methods)."""
    params, _ = evaluated
    test_rows = pd.read_csv(params.paths.plots / "refinement_frames.csv")
    run_evaluate(params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": "all"})}),
                 progress=False)
    all_rows = pd.read_csv(params.paths.plots / "refinement_frames.csv")
    assert len(all_rows) == 2 * 4 * 7  # scenes x all frames x methods
    keys = ["scene", "frame", "method"]
    both = test_rows.merge(all_rows, on=keys, suffixes=("_test", "_all"))
    assert len(both) == len(test_rows) == 2 * 2 * 7
    np.testing.assert_allclose(both["rmse_test"], both["rmse_all"], rtol=1e-6)


def test_plots_csvs_have_one_row_per_frame_scene_and_bin(evaluated):
    params, _ = evaluated
    frames = pd.read_csv(params.paths.plots / "refinement_frames.csv")
    assert len(frames) == 2 * 2 * 7  # scenes x test frames x methods
    assert {"scene", "frame", "method", "rmse", "delta3", "edge_precision", "edge_recall", "edge_f1"} <= set(frames)
    scenes = pd.read_csv(params.paths.plots / "refinement_scenes.csv")
    assert list(scenes["scene"]) == ["synthetic_000", "synthetic_001"] and "refined_rmse" in scenes
    dist = pd.read_csv(params.paths.plots / "error_vs_distance.csv")
    assert list(dist["lo"]) == params.evaluate.distance_bins_m[:-1]
    assert {"noisy", "refined", "median", "guided", "distance_m", "n_noisy", "n_refined", "n_median"} <= set(dist)
    assert dist["n_noisy"].sum() > 0 and (dist.loc[dist["n_noisy"] > 0, "noisy"] > 0).all()
    assert (dist["n_refined"] >= dist["n_noisy"]).all()  # the filters fill holes, the noisy input has them


def test_report_is_self_contained_with_tables_and_figures(evaluated):
    params, _ = evaluated
    figures = sorted(p.name for p in (params.paths.report / "figures").iterdir())
    assert figures == ["depth_distribution.png", "edges_synthetic_000_000001.png", "edges_synthetic_001_000001.png",
                       "error_vs_distance.png", "refinement_synthetic_000_000001.png",
                       "refinement_synthetic_001_000001.png"]
    for name in figures:
        with Image.open(params.paths.report / "figures" / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    page = (params.paths.report / "index.html").read_text()
    assert page.count("<table") == 2 and "refined" in page and "edge_f1" in page and "consistent" in page
    assert "LPIPS is not reported" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page.split("<h2>Params</h2>")[0] and "<script" not in page
    assert "depth_weight" in page  # the params of the run


def test_multi_view_consistency_ranks_the_reference_above_noisy_depth(evaluated):
    params, m = evaluated
    rows = pd.read_csv(params.paths.plots / "consistency.csv")
    # 4 frames per scene, offset 1: 3 pairs x 3 methods x 2 scenes
    assert len(rows) == 2 * 3 * 3 and set(rows["method"]) == {"noisy", "refined", "reference"}
    c = m["consistency"]
    assert c["reference"]["consistent"] > c["noisy"]["consistent"]
    assert c["reference"]["median_abs_m"] < c["noisy"]["median_abs_m"]
    assert c["noisy"]["consistent"] == pytest.approx(rows[rows["method"] == "noisy"]["consistent"].mean())


def mark_roles(path, roles: dict[str, str], default: str) -> None:
    """Set the ``role`` attr of every scene of the store at ``path`` (``default`` where ``roles`` names none)."""
    root = zarr.open_group(str(path), mode="r+")
    for name in scene_names(root):
        root[name].attrs["role"] = roles.get(name, default)
    consolidate(path)


@pytest.fixture
def evaluated_with_val(tiny_overrides, tmp_path):
    """Three rooms: synthetic_000 scored, synthetic_001 a refiner training room, synthetic_002 validation."""
    params = load_params(None, tiny_overrides + output_paths(tmp_path) + [
        "data.synthetic.n_scenes=3", "evaluate.tune_frames=3", "refine.method=inpaint",
    ])
    run_download(params, progress=False)
    mark_roles(params.paths.scenes, {"synthetic_000": "eval", "synthetic_002": "val"}, default="train")
    return refine_and_evaluate(params)


def test_baselines_are_tuned_on_the_val_scenes_and_only_eval_scenes_are_scored(evaluated_with_val):
    params, m = evaluated_with_val
    assert set(m["refinement_by_scene"]) == {"synthetic_000"}
    assert "role 'train'" in m["skipped"]["synthetic_001"] and "role 'val'" in m["skipped"]["synthetic_002"]
    # the validation frames: 3 of synthetic_002's 4 frames, evenly spread, noisy input and reference depth
    scenes, noisy = open_store(params.paths.scenes, "scenes"), open_store(params.paths.noisy, "noisy")
    val, names = validation_frames(params)
    assert names == ["synthetic_002"] and len(val) == 3
    g = scenes["synthetic_002"]
    for (rgb, d, ref, K), i in zip(val, [0, 2, 3], strict=True):
        np.testing.assert_array_equal(rgb, g["rgb"][i])
        np.testing.assert_array_equal(d, noisy["synthetic_002"]["depth_noisy"][i])
        np.testing.assert_array_equal(ref, g["depth"][i])
        np.testing.assert_array_equal(K, g["K"][i])
    cfg, scores = tune_baselines(val, params.evaluate.baselines, base=params.refine.baselines)
    bp = m["baseline_params"]
    assert bp["tuned"] is True and bp["frames"] == 3 and bp["scenes"] == ["synthetic_002"]
    assert bp["params"] == pytest.approx(cfg.model_dump(), abs=1e-6)
    assert list(bp["validation_rmse"]) == list(BASELINE_NAMES)
    for name, s in scores.items():
        assert bp["validation_rmse"][name]["tuned"] == pytest.approx(s["rmse"], abs=1e-6)
        assert bp["validation_rmse"][name]["untuned"] == pytest.approx(s["base_rmse"], abs=1e-6)
    assert bp["validation_rmse"]["inpaint"]["tuned"] <= bp["validation_rmse"]["inpaint"]["untuned"]  # defaults in grid
    assert cfg != params.refine.baselines  # the search moved away from the defaults: the check below can tell
    # every baseline scored on synthetic_000 ran with the tuned config, on the same frames and pixels
    view, tuned = SceneView(scenes["synthetic_000"]), make_baselines(cfg)
    for name in BASELINE_NAMES:
        direct = [depth_metrics(tuned[name](view.group["rgb"][i], noisy["synthetic_000"]["depth_noisy"][i],
                                            view.group["K"][i]), view.group["depth"][i])["rmse"]
                  for i in view.indices("test")]
        assert m["refinement"][name]["rmse"] == pytest.approx(np.mean(direct), rel=1e-5), name
    assert "tuned by grid search on 3 frames" in (params.paths.report / "index.html").read_text()


FAST_NERF = [
    "nerf.train.steps=60", "nerf.train.lr=0.02", "nerf.scenes=[synthetic_000]", "nerf.train.target_samples=2048",
    "nerf.train.n_coarse=8", "nerf.train.n_fine=4",
    "nerf.occupancy.resolution=16", "nerf.occupancy.warmup_steps=4", "nerf.occupancy.n_cells=256",
    "nerf.export.mesh_resolution=24", "nerf.ablation_sources=[none, gt]",
]


def test_nerf_ablation_table_geometry_and_chart(evaluated):
    from tasks.fit_nerf import run_fit_nerf

    params, _ = evaluated
    params = load_params(None, [f"{k}={v}" for k, v in _flat_paths(params)] + FAST_NERF
                         + ["refine.method=bilateral", "data.synthetic.n_scenes=2"])
    run_fit_nerf(params, progress=False)
    run_evaluate(params, progress=False)
    m = json.loads(params.paths.eval_metrics.read_text())
    nerf = json.loads(params.paths.nerf_metrics.read_text())
    assert list(m["nerf_ablation"]) == ["refined", "none", "gt"]
    rows = pd.read_csv(params.paths.plots / "nerf_ablation.csv")
    assert len(rows) == 3 and set(rows["scene"]) == {"synthetic_000"}
    for _, r in rows.iterrows():
        fit = nerf["by_source"][r["depth_source"]]["scenes"][r["scene"]]
        assert r["test_psnr"] == pytest.approx(fit["test_psnr"])
        assert 0 <= r["fscore"] <= 1 and r["chamfer_m"] > 0 and r["recall"] >= 0
    assert (params.paths.nerf / "ablation" / "gt" / "synthetic_000" / "mesh.ply").is_file()
    assert m["nerf_ablation"]["gt"]["test_psnr"] == pytest.approx(
        rows[rows["depth_source"] == "gt"]["test_psnr"].mean())
    assert (params.paths.report / "figures" / "nerf_ablation.png").is_file()
    # the fit's training curve is exported and plotted
    curve = pd.read_csv(params.paths.nerf / "synthetic_000" / "curve.csv")
    assert list(curve["step"]) == list(range(1, 61)) and curve["seconds"].is_monotonic_increasing
    assert curve["psnr"].iloc[-10:].mean() > curve["psnr"].iloc[:10].mean()
    with Image.open(params.paths.report / "figures" / "training_curves.png") as im:
        assert im.size[0] > 500
    page = (params.paths.report / "index.html").read_text()
    assert "NeRF by depth supervision" in page and "fscore" in page


def _flat_paths(params):
    return [(f"paths.{k}", v) for k, v in params.paths.model_dump().items()]


PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('table tr').length});
  document.body.appendChild(out);
});</script>"""


def browser() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_opens_in_headless_chromium_with_every_image_loaded(evaluated, tmp_path):
    import os
    import subprocess

    exe = browser()
    if exe is None:
        if os.environ.get("DNERF_REQUIRE_BROWSER"):
            pytest.fail("DNERF_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    params, _ = evaluated
    page = (params.paths.report / "index.html").read_text()
    probed = tmp_path / "probed.html"  # the report as written, plus a script that counts what loaded
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    found = json.loads(re.search(r'<pre id="probe">([^<]*)</pre>', out).group(1))
    n_figures = len(list((params.paths.report / "figures").iterdir()))
    assert found["images"] == n_figures and found["loaded"] == n_figures, found
    assert found["tables"] == 2 and found["rows"] > 8, found
