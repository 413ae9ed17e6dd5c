"""The benchmark harness: how :mod:`suite` measures, whatever it measures.

- :func:`isolated` runs one case in a fresh spawned process, so its peak memory is its own;
- :func:`median_time` times a callable, :func:`peak_gb` picks the peak memory that matters on a device;
- :func:`table` prints rows with rich and returns them as a markdown table;
- :class:`ResultsWriter` rewrites a run's ``.json`` and ``.md`` after every section, atomically, so a run cut
  short keeps the sections it finished.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tasks.files import write_text_atomic

Case = Callable[..., dict]
"""A measurement: keyword arguments in, a JSON-able dict of results out. A module-level function, so that it
pickles by reference into the spawned process (a lambda or a nested function does not)."""


# ------------------------------------------------------------------------------------------- isolation


def _child(case: Case, kwargs: dict) -> tuple[dict, float, float]:
    """In the spawned process: ``case(**kwargs)``, then the process's peak RSS and peak allocated GPU memory
    (GiB; NaN without CUDA)."""
    import torch

    result = case(**kwargs)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return result, rss_gb, gpu_gb


def isolated(case: Case, **kwargs: Any) -> dict:
    """Run ``case(**kwargs)`` in a fresh spawned process; its result plus ``peak_rss_gb`` / ``peak_gpu_gb``
    (GiB, rounded to MiB)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        result, rss, gpu = pool.submit(_child, case, kwargs).result()
    return {**result, "peak_rss_gb": round(rss, 3), "peak_gpu_gb": round(gpu, 3)}


def peak_gb(r: dict, device: str) -> float:
    """The peak memory (GiB) of an :func:`isolated` result that matters on ``device``: host RSS on the CPU,
    allocated GPU memory on CUDA."""
    return r["peak_gpu_gb"] if device.startswith("cuda") else r["peak_rss_gb"]


# ------------------------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], object] | None = None) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``, each followed by ``sync`` (e.g.
    ``torch.cuda.synchronize``, so that asynchronous device work is inside the clock)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------- report


def columns(rows: list[dict]) -> list[str]:
    """Every key of ``rows``, in order of first appearance."""
    return list(dict.fromkeys(k for r in rows for k in r))


def markdown_table(title: str, rows: list[dict]) -> str:
    """``rows`` as a markdown table under a ``###`` heading (a missing value is an empty cell); ``""`` without
    rows."""
    if not rows:
        return ""
    cols = columns(rows)
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table(title: str, rows: list[dict]) -> str:
    """Print ``rows`` as a rich table titled ``title``; the same as a markdown table (:func:`markdown_table`)."""
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return ""
    t = Table(title=title)
    cols = columns(rows)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    Console(width=200).print(t)
    return markdown_table(title, rows)


def results_stem(when: str, host: str, device: str) -> str:
    """The file name (no suffix) of a run's results, e.g. ``2026-11-30T092058-vm-cpu`` for an ISO ``when``."""
    return f"{when.replace(':', '')[:17]}-{host}-{device.replace(':', '')}"


class ResultsWriter:
    """One run's results: ``<folder>/<stem>.json`` (the whole ``record``) and ``<stem>.md`` (``# heading``, then
    one table per section), both rewritten atomically after every section."""

    def __init__(self, folder: Path, stem: str, record: dict, heading: str):
        self.json_path, self.md_path = folder / f"{stem}.json", folder / f"{stem}.md"
        self.record, self.heading = record, heading
        self.sections: list[str] = []

    def publish(self, key: str, value: Any, title: str, rows: list[dict]) -> None:
        """Record ``value`` under ``key``, print ``rows`` as the section's table titled ``title``, and write the
        run so far."""
        self.record[key] = value
        self.sections.append(table(title, rows))
        self.save()

    def save(self) -> None:
        """Write what has been measured so far."""
        write_text_atomic(self.json_path, json.dumps(self.record, indent=2))
        write_text_atomic(self.md_path, f"# {self.heading}\n\n" + "\n".join(self.sections))
