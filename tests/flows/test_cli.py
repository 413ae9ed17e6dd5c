"""The ``dnerf`` command line: help, --params / --set, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tasks.store import open_store


def test_help_lists_stages_and_options(dnerf):
    res = dnerf.invoke("--help")
    assert res.returncode == 0
    for cmd in ("download", "corrupt", "params", "info"):
        assert cmd in res.output
    res = dnerf.invoke("download", "--help")
    assert res.returncode == 0 and "--set" in res.output and "--params" in res.output


def test_download_corrupt_info_round_trip(dnerf, tiny_overrides, tmp_path, prefect_api):
    for stage in ("download", "corrupt"):  # in-process: the commands, not the console script, are tested here
        res = dnerf.invoke(stage, "--quiet", overrides=tiny_overrides)
        assert res.returncode == 0, res.output
        assert res.output.rstrip().splitlines()[-1].startswith("done: ")
    d = open_store(tmp_path / "noisy.zarr", "noisy")["synthetic_000"]["depth_noisy"][:]
    assert d.shape == (4, 24, 32) and np.any(d > 0)
    res = dnerf.invoke("info", str(tmp_path / "scenes.zarr"))
    assert res.returncode == 0 and "synthetic_001" in res.output and "2/2" in res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.output.splitlines() if "│" in line}
    assert rows == {"refiner_train_000": "train", "refiner_val_000": "val", "synthetic_000": "eval",
                    "synthetic_001": "eval"}  # the role column
    # export the eval rooms with their noisy depth for nerfstudio; refiner rooms stay home
    res = dnerf.invoke("export", "nerfstudio", "--out", str(tmp_path / "ns"), "--depth", "noisy",
                       overrides=tiny_overrides)
    assert res.returncode == 0, res.output
    assert "synthetic_000: 4 frames, noisy depth" in res.output and "refiner" not in res.output
    meta = json.loads((tmp_path / "ns" / "synthetic_001" / "transforms.json").read_text())
    assert len(meta["frames"]) == 4 and meta["depth_source"] == "noisy"
    res = dnerf.invoke("export", "colmap", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "unknown export format 'colmap'" in res.output


def test_invalid_params_exit_2_naming_key(dnerf, tiny_overrides):  # fails before any flow starts
    res = dnerf.invoke("download", overrides=[*tiny_overrides, "data.stride=-2"])
    assert res.returncode == 2
    assert "data.stride" in res.output and "-2" in res.output


def test_bad_data_exits_1_naming_path(dnerf, tmp_path, prefect_api):
    res = dnerf.run("download", overrides=["data.source=sevenscenes", f"data.path={tmp_path / 'nowhere'}",
                                           f"paths.scenes={tmp_path / 's.zarr'}"])
    assert res.returncode == 1
    last = res.stderr.rstrip().splitlines()[-1]  # the error is the last line, plain (no colour codes, no panel)
    assert last.startswith("error: ") and "nowhere" in last and "not found" in last, res.stderr[-2000:]
    assert "\x1b[" not in last and "Traceback" not in res.stderr
    assert "Retrying" not in res.stderr  # bad data is not retried like a network error
    assert not (tmp_path / "s.zarr").exists()


def test_params_command_prints_effective_values(dnerf):
    res = dnerf.invoke("params", "--set", "noise.seed=7")
    assert res.returncode == 0 and "seed: 7" in res.output


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "download" in res.stdout
