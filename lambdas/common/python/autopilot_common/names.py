"""Deterministic run ids: the Step Functions execution name is the run id.

Same inputs -> same name, so a duplicate delivery can never start a second run (StartExecution
rejects a reused name with ExecutionAlreadyExists). Names are at most 80 characters of
[A-Za-z0-9-_] as Step Functions requires.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MAX_EXECUTION_NAME = 80
DIGEST_CHARS = 24
_LEGAL = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def run_id_for(pipeline: str, identities: Iterable[str]) -> str:
    """`<pipeline>-<24 hex chars of sha256 over the sorted identities>`."""
    digest = hashlib.sha256("\n".join(sorted(identities)).encode("utf-8")).hexdigest()[:DIGEST_CHARS]
    name = f"{pipeline}-{digest}"
    if not _LEGAL.match(name):
        raise ValueError(f"pipeline name {pipeline!r} cannot form a legal execution name ({name!r})")
    return name


def is_legal_execution_name(name: str) -> bool:
    return bool(_LEGAL.match(name))


BACKFILL_DIGEST_CHARS = 8


def backfill_run_id(pipeline: str, prefix: str, logical_date: str | None = None) -> str:
    """The run id (execution name) of a backfill run over one landing prefix: `<pipeline>-<logical date as
    digits>-<8 hex of sha256(prefix)>` (e.g. `sales-daily-20240601-3f2a9c1e`, hourly `...-20240601T05-...`), or
    `<pipeline>-backfill-<24 hex>` without a logical date (`--prefixes`). Deterministic, so a second backfill of the
    same partition finds the first's execution instead of starting another."""
    digest = hashlib.sha256(prefix.encode("utf-8")).hexdigest()
    if logical_date is None:
        name = f"{pipeline}-backfill-{digest[:DIGEST_CHARS]}"
    else:
        name = f"{pipeline}-{logical_date.replace('-', '')}-{digest[:BACKFILL_DIGEST_CHARS]}"
    if not _LEGAL.match(name):
        raise ValueError(f"pipeline name {pipeline!r} cannot form a legal execution name ({name!r})")
    return name
