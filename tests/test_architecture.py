"""The import rules of the code base, read from the source (every import, top level or inside a function):

* layers import downward only: ``models`` <- ``tasks`` <- ``flows``;
* no stage module imports another stage module, and no other ``tasks`` module imports a stage: what several
  stages share lives in small modules of its own (``tasks.devices``, ``tasks.refiner_files``,
  ``tasks.nerf_layout``, ...); only ``flows`` runs stages.
"""

from __future__ import annotations

from pathlib import Path

from tasks.digest import imported_modules, source_closure

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"models": 0, "tasks": 1, "flows": 2}
STAGES = {f"tasks.{s}" for s in ("download", "corrupt", "train_diffusion", "refine", "fit_nerf", "evaluate")}


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_the_import_reader_sees_lazy_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "tasks" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text('"""doc only"""\n')
    (pkg / "a.py").write_text("import os\nfrom . import b\nfrom ..c import thing\n\n"
                              "def f():\n    from models.x import y\n")
    (pkg / "b.py").write_text("from tasks.d import z\n")
    (tmp_path / "tasks" / "c.py").write_text("X = 1\n")
    (tmp_path / "tasks" / "d.py").write_text("")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.py").write_text("y = 2\n")
    found = imported_modules(pkg / "a.py", tmp_path)
    assert {"tasks.sub", "tasks.sub.b", "tasks.c", "tasks.c.thing", "models.x", "models.x.y"} <= found
    assert "os" not in found
    assert source_closure("tasks.sub.a", tmp_path) == ["models/x.py", "tasks/c.py", "tasks/d.py", "tasks/sub/a.py",
                                                       "tasks/sub/b.py"]  # empty / docstring-only packages left out


def test_layers_import_downward_only():
    wrong = []
    for package, level in LAYERS.items():
        for path in sources(package):
            wrong.extend(f"{path.relative_to(ROOT)} imports {module}"
                         for module in imported_modules(path, ROOT, tuple(LAYERS))
                         if LAYERS[module.split(".")[0]] > level)
    assert not wrong, "imports against the layers (models <- tasks <- flows):\n" + "\n".join(wrong)


def test_no_stage_imports_a_stage_and_only_flows_run_stages():
    wrong = []
    for path in sources("tasks"):
        me = dotted(path)
        for module in imported_modules(path, ROOT):
            stage = next((s for s in STAGES if module == s or module.startswith(f"{s}.")), None)
            if stage and stage != me:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "tasks modules importing a stage module (share code through a small module instead):\n" + \
        "\n".join(wrong)
