"""One writer per output: a stage holds an exclusive lock on its output while it runs.

Two runs started on the same outputs at once (two terminals, a scheduled run during a manual one) would
interleave their writes. The lock is an OS file lock (``filelock``: ``fcntl.flock`` on POSIX) on a hidden
sibling of the output, ``.<name>.lock``: the kernel releases it when the holder exits, even on SIGKILL, so a
crashed run never leaves a stale lock behind. A second run does not wait: it stops at once with
:class:`OutputBusy`, before it has touched anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tasks.errors import DataError


class OutputBusy(DataError):
    """Another run holds the lock on this output."""


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: ``<parent>/.<name>.lock``."""
    output = Path(output)
    return output.parent / f".{output.name}.lock"


@contextmanager
def output_lock(output: Path, stage: str) -> Iterator[Path]:
    """Hold the exclusive lock on ``output`` for the duration of the block; raises :class:`OutputBusy` at once
    (naming ``stage``) if another process holds it."""
    path = lock_path(output)
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
