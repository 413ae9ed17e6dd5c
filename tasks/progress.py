"""Progress for long loops: a tqdm bar at a terminal, and periodic log lines where there is none.

Stages run with ``--quiet`` inside ``dvc repro`` (no bars: their carriage returns garble captured output),
but a silent stage that trains for minutes looks hung. :func:`progress_bar` therefore returns tqdm either
way: an interactive bar, or one that writes a plain log line at most every ``every_s`` seconds (and when it
starts and ends): ``train_diffusion: 340/1500 step (23%) loss=0.041 [00:42 elapsed, 02:23 left]``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

log = logging.getLogger(__name__)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor when several bars run at once
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%){postfix} [{elapsed} elapsed, {remaining} left]"


class _LogLines:
    """A file for tqdm that turns each refresh into one log record."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.buffer = ""

    def write(self, text: str) -> None:
        self.buffer += text

    def flush(self) -> None:
        text = ANSI_ESCAPE.sub("", self.buffer).replace("\r", "\n")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        self.buffer = ""
        if lines:
            self.logger.info(lines[-1])


class _LogBar(tqdm):
    """tqdm whose ``set_postfix`` waits for the next timed line instead of forcing one (stages call it every
    step)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):  # refresh is ignored
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    initial: int = 0,
    interactive: bool,
    every_s: float = 5.0,
    logger: logging.Logger | None = None,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or ``total`` steps): drawn when ``interactive``, otherwise logged as a line
    at most every ``every_s`` seconds, plus one at the start and one at the end."""
    if interactive:
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit)
    return _LogBar(iterable, total=total, initial=initial, desc=desc, unit=unit, file=_LogLines(logger or log),
                mininterval=every_s, maxinterval=every_s, miniters=1, ascii=True, bar_format=LINE_FORMAT)


def rows_table(rows: list[dict], title: str, caption: str | None = None) -> Table:
    """A rich table of ``rows`` (dicts with the same keys; floats to 4 significant digits), for the terminal."""
    table = Table(title=title, caption=caption, title_justify="left")
    for col in rows[0] if rows else []:
        table.add_column(str(col), no_wrap=True)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    return table


def print_summary(rows: list[dict], title: str, caption: str | None = None) -> None:
    """Print ``rows`` as one table on stderr (where the stages' progress goes), 120 columns wide when not a
    terminal (``dvc repro`` logs)."""
    Console(stderr=True, width=None if sys.stderr.isatty() else 120).print(rows_table(rows, title, caption))
