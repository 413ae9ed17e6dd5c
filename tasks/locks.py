"""One writer per output: a stage holds an exclusive lock on its output while it runs.

Two runs started on the same outputs at once (two terminals, a scheduled run during a manual one) would
interleave their writes. The lock is an OS file lock (``filelock``: ``fcntl.flock`` on POSIX) on a hidden
sibling of the output, ``.<name>.lock``: the kernel releases it when the holder exits, even on SIGKILL, so a
crashed run never leaves a stale lock behind. A second run does not wait: it stops at once with
:class:`OutputBusy`, before it has touched anything.

Object storage has no file locks. An output at a URL (a store on ``s3://``, :mod:`tasks.location`) is locked by
a *lease*: a small object ``<parent>/.<name>.lock`` created with an exclusive create (S3's ``If-None-Match: *``,
which AWS S3, MinIO and other S3-compatible servers honour) that names its holder and an expiry time. The holder
renews it every :data:`LEASE_S` / 3 seconds from a background thread and deletes it when done; a holder that was
killed stops renewing, so its lease runs out after :data:`LEASE_S` seconds and the next run takes it over (the
machines' clocks must agree to within a few seconds, as NTP keeps them). A backend that cannot create an object
exclusively cannot be locked: the run stops with an error that names the backend, before any work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tasks.errors import DataError
from tasks.location import Location, filesystem, is_url, join
from tasks.location import name as location_name

#: Seconds an object-storage lease lasts without renewal (a killed holder's lease is taken over after this).
LEASE_S = 60.0


class OutputBusy(DataError):
    """Another run holds the lock on this output."""


def lock_path(output: Location) -> Location:
    """The lock file (or lease object) of ``output``: ``<parent>/.<name>.lock``."""
    if is_url(output):
        assert isinstance(output, str)
        parent = output.rstrip("/").rsplit("/", 1)[0]
        return join(parent, f".{location_name(output)}.lock")
    output = Path(output)
    return output.parent / f".{output.name}.lock"


@contextmanager
def output_lock(output: Location, stage: str) -> Iterator[Location]:
    """Hold the exclusive lock on ``output`` for the duration of the block; raises :class:`OutputBusy` at once
    (naming ``stage``) if another process holds it."""
    if is_url(output):
        with lease(str(output), stage) as held:
            yield held
        return
    path = Path(lock_path(Path(output)))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusy(output, f"another {stage} run is writing it right now (it holds {path}); "
                                 "wait for it to finish or stop it, then run again") from None
    try:
        yield path
    finally:
        lock.release()


def _lease_body(stage: str, lease_s: float) -> bytes:
    return json.dumps({"holder": f"{socket.gethostname()}:{os.getpid()}", "stage": stage,
                       "expires": time.time() + lease_s}).encode()


@contextmanager
def lease(output: str, stage: str, lease_s: float = LEASE_S) -> Iterator[str]:
    """Hold the lease on the object-storage output ``output`` (see the module docstring) for the block."""
    url = str(lock_path(output))
    fs, path = filesystem(url)
    protocol = url.split("://", 1)[0]

    def create() -> bool:
        try:
            fs.pipe_file(path, _lease_body(stage, lease_s), mode="create")
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, ValueError) as err:
            raise DataError(output, f"the {protocol}:// backend ({type(fs).__name__}) cannot create an object "
                            f"exclusively ({err}), so no run can lock this output against a second writer: "
                            "put the store on S3 (or an S3-compatible server) or on a shared file system") from None
        return True

    if not create():
        try:
            held = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            held = {"holder": "?", "stage": stage, "expires": 0.0}  # released meanwhile, or half-written: retry
        if held["expires"] > time.time():
            raise OutputBusy(output, f"another {held['stage']} run ({held['holder']}) is writing it right now (it "
                             f"holds the lease {url} for {held['expires'] - time.time():.0f} s more, renewing it "
                             "while it runs); wait for it to finish or stop it, then run again")
        fs.rm(path)  # an expired lease: its holder died without releasing it
        if not create():
            raise OutputBusy(output, f"another {stage} run took over the expired lease {url} at the same moment")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            fs.pipe_file(path, _lease_body(stage, lease_s))

    keeper = threading.Thread(target=renew, name=f"lease {url}", daemon=True)
    keeper.start()
    try:
        yield url
    finally:
        stop.set()
        keeper.join()
        fs.rm(path)
