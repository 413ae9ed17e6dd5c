"""Progress without a terminal: periodic plain log lines instead of a bar (what `dvc repro` shows)."""

from __future__ import annotations

import itertools
import logging
import time

from tasks.progress import progress_bar


def test_non_interactive_progress_logs_a_line_at_least_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="tasks.progress")
    every = 0.2
    bar = progress_bar(total=12, desc="fit_nerf room", unit="step", interactive=False, every_s=every)
    for _ in range(12):
        time.sleep(0.05)
        bar.update(1)
        bar.set_postfix(psnr="21.3")  # as the stages call it, every step
    bar.close()
    lines = [(r.created, r.getMessage()) for r in caplog.records]
    messages = [m for _, m in lines]
    assert messages[0].startswith("fit_nerf room: 0/12 step (0%)")
    assert messages[-1].startswith("fit_nerf room: 12/12 step (100%)") and "psnr=21.3" in messages[-1]
    assert "\r" not in "".join(messages) and all("elapsed" in m and "left" in m for m in messages)
    # 0.6 s of work with a 0.2 s interval: a few lines, never far apart, never one per step
    stamps = [t for t, _ in lines]
    assert 3 <= len(lines) < 12
    assert max(b - a for a, b in itertools.pairwise(stamps)) < every + 0.15


def test_interactive_progress_is_a_plain_tqdm_bar(caplog):
    caplog.set_level(logging.INFO, logger="tasks.progress")
    for _ in progress_bar(range(3), desc="x", unit="frame", interactive=True):
        pass
    assert not caplog.records


def test_concurrent_bars_log_plain_lines_without_cursor_moves(caplog):
    """Two bars at once (scene-parallel fits): tqdm moves the cursor between them; the log gets no escapes."""
    caplog.set_level(logging.INFO, logger="tasks.progress")
    a = progress_bar(total=2, desc="fit a", unit="step", interactive=False, every_s=0.0)
    b = progress_bar(total=2, desc="fit b", unit="step", interactive=False, every_s=0.0)
    for bar in (a, b, a, b):
        bar.update(1)
    b.close()
    a.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages and all(m.startswith(("fit a:", "fit b:")) for m in messages), messages
    assert not any("\x1b" in m for m in messages)
