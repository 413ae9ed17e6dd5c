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

On S3, taking over and renewing are compare-and-swap writes (``If-Match`` on the ETag the writer last saw): of two
runs that find the same expired lease, one replaces it and the other is refused, and a holder whose lease was
taken over (its renewals stalled past the expiry) finds out at its next renewal and fails the run with an error
that says so, instead of both writing. Backends without conditional writes take an expired lease over by deleting
and re-creating it, where two runs acting within the same moment could both proceed.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger(__name__)

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


class LeaseLost(DataError):
    """Another run took this run's lease over while it was writing (its renewals had stalled past the expiry)."""


def _error_code(err: BaseException) -> str | None:
    """The S3 error code (``PreconditionFailed``...) behind an error s3fs raised, if any."""
    cause = err.__cause__
    return getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None


@contextmanager
def lease(output: str, stage: str, lease_s: float = LEASE_S) -> Iterator[str]:
    """Hold the lease on the object-storage output ``output`` (see the module docstring) for the block."""
    url = str(lock_path(output))
    fs, path = filesystem(url)
    protocol = url.split("://", 1)[0]
    conditional = "s3" in fs.protocol  # S3 compare-and-swap: If-Match on an ETag
    held_tag: list[str | None] = [None]  # the ETag of the lease as this run last wrote it

    def write(**match: str) -> bool:
        """Write this run's lease body with the precondition ``match``; False where it did not hold."""
        try:
            out = fs.pipe_file(path, _lease_body(stage, lease_s), **match)
        except FileExistsError:
            return False
        except OSError as err:
            if _error_code(err) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        held_tag[0] = out.get("ETag") if isinstance(out, dict) else None
        return True

    def create() -> bool:
        try:
            return write(mode="create")
        except (NotImplementedError, TypeError, ValueError) as err:
            raise DataError(output, f"the {protocol}:// backend ({type(fs).__name__}) cannot create an object "
                            f"exclusively ({err}), so no run can lock this output against a second writer: "
                            "put the store on S3 (or an S3-compatible server) or on a shared file system") from None

    if not create():
        try:
            tag = fs.info(path).get("ETag")
            held = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            tag, held = None, {"holder": "?", "stage": stage, "expires": 0.0}  # released meanwhile, or half-written
        if held["expires"] > time.time():
            raise OutputBusy(output, f"another {held['stage']} run ({held['holder']}) is writing it right now (it "
                             f"holds the lease {url} for {held['expires'] - time.time():.0f} s more, renewing it "
                             "while it runs); wait for it to finish or stop it, then run again")
        # an expired lease: its holder died without releasing it
        if conditional and tag is not None:
            took = write(IfMatch=tag)  # only if nobody replaced it since it was read
        else:
            fs.rm(path)
            took = create()
        if not took:
            raise OutputBusy(output, f"another {stage} run took over the expired lease {url} at the same moment")
    stop, lost = threading.Event(), threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                if not write(**({"IfMatch": held_tag[0]} if conditional and held_tag[0] else {})):
                    lost.set()  # replaced by another run: stop renewing, never delete its lease
                    return
            except OSError as err:  # a network hiccup: the next renewal may get through before the expiry
                log.warning("renewing the lease %s failed (%s); retrying", url, err)

    keeper = threading.Thread(target=renew, name=f"lease {url}", daemon=True)
    keeper.start()
    try:
        yield url
    finally:
        stop.set()
        keeper.join()
        if not lost.is_set():
            fs.rm(path)
    if lost.is_set():
        raise LeaseLost(output, f"another run took over this {stage} run's lease {url} while it was writing (its "
                        f"renewals had stalled for over {lease_s:.0f} s): the output may hold both runs' writes; "
                        "run the stage again")
