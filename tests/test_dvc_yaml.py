"""``dvc.yaml`` lists every leaf param of each stage, so ``dvc status`` names the exact key that changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tasks.config import Params

ROOT = Path(__file__).resolve().parents[1]
STAGE_SECTION = {"download": "data", "corrupt": "noise", "train_diffusion": "diffusion", "refine": "refine",
                 "fit_nerf": "nerf", "evaluate": "evaluate"}
ALSO_READS = {
    "evaluate": ["refine.baselines"],  # evaluate runs the classical baselines itself
    # the refiner's units and bound come from the sensor model; its uncertainty is calibrated by refining
    # validation frames exactly as the refine stage will
    "train_diffusion": ["noise.baseline_m", "noise.sensor_focal_px", "noise.axial", "noise.quantization",
                        "noise.flying_pixels.edge_threshold_m", "refine.steps", "refine.samples", "refine.tile",
                        "refine.overlap"],
}


def leaves(model: BaseModel, prefix: str) -> list[str]:
    out = []
    for name in type(model).model_fields:
        value, key = getattr(model, name), f"{prefix}.{name}"
        out += leaves(value, key) if isinstance(value, BaseModel) else [key]
    return out


@pytest.mark.parametrize("stage", list(STAGE_SECTION))
def test_stage_params_are_the_leaves_of_its_section(stage):
    section = STAGE_SECTION[stage]
    listed = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["params"]
    expected = [k for k in leaves(getattr(Params(), section), section) if not k.endswith(".device")]
    assert [k for k in listed if k.startswith(f"{section}.")] == expected
    others = [k for k in listed if not k.startswith((f"{section}.", "paths."))]
    assert others == ALSO_READS.get(stage, [])


def expand(dep: str) -> set[str]:
    """A code dep as the files it stands for: a file, or every file of a folder (sources with code, data)."""
    from tasks.digest import _has_code

    path = ROOT / dep
    if path.is_file():
        return {dep}
    return {str(f.relative_to(ROOT)) for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts
            and (f.suffix != ".py" or _has_code(f))}


@pytest.mark.parametrize("stage", list(STAGE_SECTION))
def test_stage_code_deps_are_its_import_closure(stage):
    """The code a stage runs (its module and everything it imports, read from the source) is exactly what
    ``dvc.yaml`` lists for it: DVC re-runs the stage when, and only when, that code changes."""
    from tasks.digest import source_closure

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    declared = set().union(*(expand(d) for d in spec["deps"] if d.startswith(("models/", "tasks/"))))
    closure = set(source_closure(f"tasks.{stage}", ROOT))
    assert declared == closure, (f"dvc.yaml {stage} deps: missing {sorted(closure - declared)}, "
                                 f"not imported {sorted(declared - closure)}")
