"""Errors that the stages raise for bad input; the CLI prints them and exits non-zero."""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """Bad input data: names the file (or frame, key) and what is wrong with it."""

    def __init__(self, where: str | PathLike, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
