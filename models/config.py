"""Base class of every typed config object: unknown keys and bad values fail, naming the key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """A frozen pydantic model that forbids unknown keys and validates defaults, so a typo in
    params.yaml fails (naming the key) instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
