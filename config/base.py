"""Shared bases and patterns of the config model (imported by `config.model` and `config.ec2`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

RELEASE_LABEL_PATTERN = r"^emr-\d+\.\d+\.\d+$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
