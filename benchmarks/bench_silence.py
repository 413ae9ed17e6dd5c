"""How long a command goes without a line of output, and how many Prefect servers it starts.

Runs a shell command (default: the default ``dvc repro`` from a clean checkout) with stdout and stderr merged,
timestamps every line as it arrives, and writes ``benchmarks/results/<time>-silence.json``: the longest silence
(seconds between consecutive lines, and the line after it), the ten longest, the total time, how many lines
said a shared Prefect server was started or reused, and each stage's time (from DVC's ``Running stage`` lines)::

    python benchmarks/bench_silence.py --cwd /tmp/clone -- dvc repro
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed_lines(cmd: str, cwd: Path) -> tuple[list[tuple[float, str]], int]:
    """``([(seconds since start, line)], exit code)`` of ``cmd`` run by the shell in ``cwd``."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append((time.monotonic() - start, line.rstrip("\n")))
        print(f"{lines[-1][0]:8.1f}  {lines[-1][1]}", flush=True)
    lines.append((time.monotonic() - start, "<exit>"))
    return lines, proc.wait()


def silences(lines: list[tuple[float, str]]) -> list[dict]:
    """Gaps between consecutive lines, longest first."""
    gaps = [{"seconds": round(b[0] - a[0], 2), "at_s": round(a[0], 1), "before": a[1][-160:], "after": b[1][-160:]}
            for a, b in zip([(0.0, "<start>"), *lines[:-1]], lines, strict=True)]
    return sorted(gaps, key=lambda g: -g["seconds"])


def stage_times(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from each ``Running stage 'x'`` line to the next (or the end)."""
    marks = [(t, m.group(1)) for t, line in lines if (m := re.search(r"Running stage '([^']+)'", line))]
    ends = [t for t, _ in marks[1:]] + [lines[-1][0]]
    return {name: round(end - t, 1) for (t, name), end in zip(marks, ends, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cwd", type=Path, default=Path("."))
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default: benchmarks/results/<time>-silence.json)")
    ap.add_argument("cmd", nargs="+", help="the command (after --)")
    args = ap.parse_args()
    cmd = " ".join(args.cmd)
    lines, code = timed_lines(cmd, args.cwd)
    gaps = silences(lines)
    result = {
        "command": cmd, "exit_code": code, "total_s": round(lines[-1][0], 1), "lines": len(lines) - 1,
        "longest_silence_s": gaps[0]["seconds"], "longest_silences": gaps[:10],
        "prefect_server_starts": sum("starting the shared Prefect server" in line for _, line in lines),
        "prefect_server_reuses": sum("using the shared server" in line for _, line in lines),
        "stage_seconds": stage_times(lines),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
    }
    out = args.out or RESULTS / f"{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%S')}-silence.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nlongest silence {result['longest_silence_s']} s (before: {gaps[0]['after']!r}); "
          f"Prefect server starts: {result['prefect_server_starts']}, reuses: {result['prefect_server_reuses']}; "
          f"total {result['total_s']} s, exit {code} -> {out}")


if __name__ == "__main__":
    main()
