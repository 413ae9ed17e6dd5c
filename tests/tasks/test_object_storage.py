"""Stores on object storage (a real S3-compatible server on loopback): publication by commit marker, a writer
killed mid-way, leases instead of file locks, and the stages reading and writing ``s3://`` stores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import fsspec
import numpy as np
import pytest

from tasks.config import load_params
from tasks.errors import DataError
from tasks.location import filesystem, read_bytes
from tasks.locks import OutputBusy, lock_path, output_lock
from tasks.store import MARKER, StoreBuilder, open_store, resolve_store
from tasks.versions import FOLDER_MARKER

pytestmark = pytest.mark.slow

KILLED_WRITER = """
import sys, time
import numpy as np
from tasks.store import StoreBuilder

with StoreBuilder(sys.argv[1], "noisy", attrs={"run": "killed"}) as root:
    a = root.create_group("scene").create_array("depth_noisy", shape=(8, 4, 4), chunks=(1, 4, 4), dtype="f4")
    for i in range(8):
        a[i] = np.full((4, 4), 99.0, "f4")
        if i == 3:
            print("half written", flush=True)
            time.sleep(120)
"""


def write_noisy(url: str, run: str, value: float) -> None:
    with StoreBuilder(url, "noisy", attrs={"run": run}) as root:
        root.create_group("scene").create_array("depth_noisy", data=np.full((2, 4, 4), value, np.float32))


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-store", "first-store"])
def test_a_writer_killed_mid_way_leaves_the_previous_store_or_none(s3, previous):
    """A writer SIGKILLed half-way through a store on S3: readers see the store published before, unchanged, or no
    store at all, never the killed writer's chunks; the next writer removes what the killed one left and
    publishes its own store, which replaces the previous version (deleted)."""
    url = f"{s3.bucket()}/data/noisy.zarr"
    if previous:
        write_noisy(url, "first", 1.0)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, url], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"half written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    versions = [n for n in s3.listing(url) if n.startswith("v-")]
    assert len(versions) == 1 + previous  # the killed writer's chunks are there, unpublished
    if previous:
        root = open_store(url, "noisy")
        assert root.attrs["run"] == "first"
        np.testing.assert_array_equal(root["scene"]["depth_noisy"][:], np.ones((2, 4, 4), np.float32))
    else:
        assert resolve_store(url) is None
        with pytest.raises(DataError, match=r"noisy.zarr: no such store"):
            open_store(url, "noisy")

    write_noisy(url, "third", 3.0)
    names = s3.listing(url)
    assert names[0] == MARKER and len(names) == 2, names  # the marker and the one live version
    live = json.loads(fsspec.open(f"{url}/{MARKER}").open().read())["version"]
    assert names[1] == live and resolve_store(url) == f"{url}/{live}"
    np.testing.assert_array_equal(open_store(url, "noisy")["scene"]["depth_noisy"][:], 3.0)


def test_a_failed_build_publishes_nothing_and_leaves_nothing(s3):
    url = f"{s3.bucket()}/noisy.zarr"
    write_noisy(url, "first", 1.0)
    def fail() -> None:
        with StoreBuilder(url, "noisy") as root:
            root.create_group("scene").create_array("depth_noisy", data=np.zeros((2, 4, 4), np.float32))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert len(s3.listing(url)) == 2 and open_store(url, "noisy").attrs["run"] == "first"


def test_a_lease_keeps_a_second_writer_out_until_released_or_expired(s3):
    """The object-storage lock: a second run is refused at once, naming the holder; the holder renews its lease
    while it runs; a lease whose holder died (not renewed, expired) is taken over; release deletes it."""
    url = f"{s3.bucket()}/data/refined.zarr"
    lock = str(lock_path(url))
    assert lock.endswith("/data/.refined.zarr.lock")
    fs, path = fsspec.core.url_to_fs(lock)
    with output_lock(url, "refine"):
        first = json.loads(fs.cat_file(path))
        with (pytest.raises(OutputBusy, match=r"refined.zarr: another refine run \(.*:\d+\) is writing it"),
              output_lock(url, "refine")):
            pass
    assert not fs.exists(path)

    from tasks.locks import lease

    with lease(url, "refine", lease_s=0.6):
        time.sleep(0.9)  # two renewals
        assert json.loads(fs.cat_file(path))["expires"] > first["expires"] - 60 + 0.6
    fs.pipe_file(path, json.dumps({"holder": "dead:1", "stage": "refine", "expires": time.time() - 1}).encode())
    with output_lock(url, "refine"):  # the dead holder's expired lease is taken over
        assert json.loads(fs.cat_file(path))["holder"] != "dead:1"


def race_for_expired_lease(url: str, fs, path: str) -> list[str]:
    """Two runs (threads ``a`` and ``b``) taking the expired lease of ``url``: both read it before either writes, and
    ``b`` acts on what it read only once ``a`` holds the lease; what each got: its name, or ``busy: <error>``."""
    from tasks.locks import lease

    fs.pipe_file(path, json.dumps({"holder": "dead:1", "stage": "refine", "expires": time.time() - 1}).encode())
    both_read, a_holds, results, cat_file = threading.Barrier(2), threading.Event(), [], fs.cat_file

    def run() -> None:
        name = threading.current_thread().name
        try:
            with lease(url, "refine"):
                results.append(name)
                a_holds.set()
                time.sleep(0.5)  # hold it while the other run tries
        except OutputBusy as err:
            results.append(f"busy: {err}")
            a_holds.set()

    def read_then_wait(p, **kw):
        out = cat_file(p, **kw)
        both_read.wait(timeout=10)
        if threading.current_thread().name == "b":
            a_holds.wait(timeout=10)
        return out

    fs.cat_file = read_then_wait
    try:
        threads = [threading.Thread(target=run, name=n) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del fs.cat_file
    return results


def test_of_two_runs_taking_over_an_expired_lease_one_wins(s3):
    """Two runs find the same expired lease at the same moment, and the second acts on it after the first took it
    over: the takeover is a compare-and-swap on the ETag each read, so the second is refused; a delete and create
    would let both proceed."""
    url = f"{s3.bucket()}/data/refined.zarr"
    fs, path = filesystem(str(lock_path(url)))  # the very file system object the runs use
    for _ in range(3):
        results = race_for_expired_lease(url, fs, path)
        assert results[0] == "a" and len(results) == 2, results
        assert any("took over the expired lease" in r for r in results), results
    assert not fs.exists(path)


def test_a_holder_whose_lease_was_taken_over_fails_instead_of_writing_on(s3):
    """A holder whose renewals stalled past the expiry and whose lease another run then took over: its next renewal
    (a compare-and-swap on the ETag it wrote) fails, it stops renewing, leaves the other run's lease in place and
    ends with an error that says so."""
    from tasks.locks import LeaseLost, lease

    url = f"{s3.bucket()}/data/refined.zarr"
    fs, path = fsspec.core.url_to_fs(str(lock_path(url)))

    def hold_while_taken_over() -> None:
        with lease(url, "refine", lease_s=0.6):
            other = {"holder": "other:2", "stage": "refine", "expires": time.time() + 60}
            fs.pipe_file(path, json.dumps(other).encode())
            time.sleep(0.5)  # a renewal or two

    with pytest.raises(LeaseLost, match=r"refined.zarr: another run took over this refine run's lease"):
        hold_while_taken_over()
    assert json.loads(fs.cat_file(path))["holder"] == "other:2"  # the new holder's lease is left alone


def test_the_stages_read_and_write_stores_on_s3_as_they_do_local_ones(s3, make_stores, tiny_overrides, tmp_path):
    """``corrupt`` and ``refine`` with every store on S3 (``download`` wrote the scene store there): the noisy and
    refined arrays equal those of the same stages on local stores, bit for bit; a second refine is a no-op."""
    from tasks.corrupt import run_corrupt
    from tasks.download import run_download
    from tasks.refine import run_refine

    bucket = s3.bucket()
    local = load_params(None, make_stores(["refine.method=bilateral"]) + [f"paths.refined={tmp_path}/refined.zarr"])
    remote = local.model_copy(update={"paths": local.paths.model_copy(update={
        "scenes": f"{bucket}/scenes.zarr", "noisy": f"{bucket}/noisy.zarr", "refined": f"{bucket}/refined.zarr"})})
    for params in (local, remote):
        if params is remote:
            run_download(params, progress=False)
            run_corrupt(params, progress=False)
        run_refine(params, progress=False)
    for key, kind, names in (("noisy", "noisy", ("depth_noisy",)),
                             ("refined", "refined", ("depth_refined", "depth_std"))):
        a = open_store(getattr(local.paths, key), kind)
        b = open_store(getattr(remote.paths, key), kind)
        for scene in ("synthetic_000", "synthetic_001"):
            for name in names:
                np.testing.assert_array_equal(a[scene][name][:], b[scene][name][:])
    assert open_store(remote.paths.refined, "refined").attrs["complete"]
    before = resolve_store(remote.paths.refined)
    run_refine(remote, progress=False)
    assert resolve_store(remote.paths.refined) == before


def test_refining_a_scene_on_s3_costs_one_request_per_chunk(s3, make_stores, tmp_path):
    """Refining a scene whose stores are on S3 reads each input chunk (noisy depth, RGB, intrinsics) once and writes
    each output chunk (refined depth, its std, the done flag) once, with no size probe before a read, no read of a
    chunk about to be overwritten and no listing for a chunk not yet written: 7 requests per frame (21 before), plus
    a few for the stores' metadata."""
    from tasks.refine import prepare_refine, refine_one_scene

    bucket = s3.bucket()
    local = load_params(None, make_stores(["refine.method=bilateral"]))
    params = local.model_copy(update={"paths": local.paths.model_copy(update={
        "noisy": f"{bucket}/noisy.zarr", "refined": f"{bucket}/refined.zarr"})})
    with StoreBuilder(params.paths.noisy, "noisy") as root:  # the local noisy store, copied to S3
        for name, group in open_store(local.paths.noisy, "noisy").groups():
            root.create_group(name).create_array("depth_noisy", data=group["depth_noisy"][:],
                                                 chunks=group["depth_noisy"].chunks)
    scene = prepare_refine(params)[0]
    frames = open_store(params.paths.noisy, "noisy")[scene]["depth_noisy"].shape[0]
    before = len(s3.requests(bucket))
    refine_one_scene(params, scene, progress=False)  # the scene store (RGB, intrinsics) is local here
    made = s3.requests(bucket)[before:]
    # per frame: its noisy depth read, its depth, std and flag written, its flag read at the start and its depth and
    # std read back at the end; then the two stores' markers and metadata (4 requests, a few more on a new client)
    assert len(made) <= 7 * frames + 8, (frames, made)


TINY_MODEL_AND_FIT = [
    "diffusion.unet.base_channels=8", "diffusion.unet.channel_mults=[1, 2]", "diffusion.unet.attention_heads=2",
    "diffusion.train.max_steps=2", "diffusion.train.crop=16", "diffusion.train.batch_size=2",
    "diffusion.train.val_crops=2", "diffusion.train.val_every=1", "nerf.train.steps=3",
    "nerf.train.target_samples=2048", "nerf.train.n_coarse=8", "nerf.train.n_fine=4", "nerf.occupancy.resolution=16",
    "nerf.occupancy.warmup_steps=2", "nerf.occupancy.n_cells=256", "nerf.export.mesh_resolution=16",
    "nerf.ablation_sources=[]",
]


def test_every_stage_command_runs_with_everything_on_s3(s3, dnerf, prefect_api, tiny_overrides, tmp_path):
    """``dnerf <stage>`` for the six stages with the stores and every output on S3 (nothing but ``paths.raw`` local):
    each stage holds its lease while it runs and releases it, reads what the one before published, and publishes
    its folders whole (a commit marker naming one version each); ``dnerf render`` reads the fits back."""
    bucket = s3.bucket()
    remote = [f"paths.{key}={bucket}/{key}" for key in ("scenes", "noisy", "refined", "diffusion",
                                                        "diffusion_checkpoints", "nerf", "nerf_checkpoints",
                                                        "plots", "report")]
    remote += [f"paths.nerf_metrics={bucket}/nerf.json", f"paths.eval_metrics={bucket}/eval.json",
               f"orchestration.results={bucket}/results", f"paths.raw={tmp_path / 'raw'}"]
    overrides = tiny_overrides + TINY_MODEL_AND_FIT + remote
    for stage in ("download", "corrupt", "train-diffusion", "refine", "fit-nerf", "evaluate"):
        dnerf.invoke(stage, "--quiet", overrides=overrides, check=True)
    assert sorted(n for n in s3.listing(bucket) if n.endswith(".lock")) == []  # every lease released
    assert open_store(f"{bucket}/refined", "refined").attrs["method"] == "diffusion"
    summary = json.loads(read_bytes(f"{bucket}/eval.json"))
    assert "refined" in summary["refinement"] and summary["nerf"]["mean_test_psnr"] > 0, summary
    for folder, files in (("diffusion", {"model.safetensors", "config.json", "curve.csv", "metrics.json"}),
                          ("nerf", {"synthetic_000", "synthetic_001"}), ("report", {"index.html", "figures"}),
                          ("plots", {"refinement_frames.csv", "nerf_ablation.csv"})):
        names = s3.listing(f"{bucket}/{folder}")
        assert names[0] == FOLDER_MARKER and len(names) == 2, names  # the marker and one version
        assert files <= set(s3.listing(f"{bucket}/{folder}/{names[1]}")), (folder, names)
    assert FOLDER_MARKER in s3.listing(f"{bucket}/nerf_checkpoints/synthetic_000")  # a checkpoint, published whole
    dnerf.invoke("render", "synthetic_000", "--frames", "2", "--out", str(tmp_path / "video"), "--quiet",
                 overrides=overrides, check=True)
    assert len(list((tmp_path / "video" / "frames").glob("*.png"))) == 2


def test_a_digest_of_objects_follows_their_bytes_through_their_tags(s3):
    """The cache-key digest of a prefix on S3 uses the objects' ETags instead of reading them: the same bytes under
    the same names give the same digest in another bucket, one changed byte (same size) gives another."""
    from tasks.digest import tree_digest

    fs = fsspec.filesystem("s3")
    a, b = s3.bucket(), s3.bucket()
    for bucket in (a, b):
        fs.pipe({f"{bucket}/scene/rgb/c/0": b"\x00" * 64, f"{bucket}/scene/rgb/zarr.json": b"{}"})
    assert tree_digest([f"{a}/scene"]) == tree_digest([f"{b}/scene"])
    fs.pipe_file(f"{b}/scene/rgb/c/0", b"\x00" * 63 + b"\x01")
    assert tree_digest([f"{a}/scene"]) != tree_digest([f"{b}/scene"])
