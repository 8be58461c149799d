"""The run ledger: one JSON entry per run at `s3://<outputs>/_runs/<pipeline>/<YYYY/MM/DD>/<run id>.json`.

The date is the run's start (UTC): the execution's start time, or for an arrival the router decided not to run
(`SKIPPED`) the event time of the arrival, so a redelivered arrival rewrites the same entry.

States: QUEUED, STARTED, SUCCEEDED, FAILED (workflows), ABORTED, TIMED_OUT, CANCELLED (guardrails) and SKIPPED
(the router: an arrival or a marker that started nothing, with the reason; no execution exists for it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

LEDGER_PREFIX = "_runs/"
SCHEMA_VERSION = 1
SKIPPED = "SKIPPED"
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


def ledger_key(pipeline: str, started: datetime, run_id: str) -> str:
    """`_runs/<pipeline>/<YYYY/MM/DD of the run's start, UTC>/<run id>.json`."""
    day = started.astimezone(UTC) if started.tzinfo else started
    return f"{LEDGER_PREFIX}{pipeline}/{day:%Y/%m/%d}/{run_id}.json"


def read_entry(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The entry at `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
            return None
        raise
    entry: dict[str, Any] = json.loads(body)
    return entry


def write_entry(s3: Any, bucket: str, key: str, entry: Mapping[str, Any]) -> None:
    s3.put_object(
        Bucket=bucket, Key=key, ContentType="application/json", Body=json.dumps(entry, ensure_ascii=False).encode()
    )


def skipped_entry(
    *, pipeline: str, run_id: str, reason: str, at: datetime, trigger: Mapping[str, Any], objects: list[dict[str, Any]]
) -> dict[str, Any]:
    """The entry of an arrival (or marker) that started no run: what it was, why, and what was seen."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "pipeline": pipeline,
        "state": SKIPPED,
        "reason": reason,
        "trigger": dict(trigger),
        "objects": objects,
        "object_count": len(objects),
        "started_at": stamp,
        "ended_at": stamp,
    }
