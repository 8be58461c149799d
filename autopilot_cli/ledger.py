"""Reading the run ledger for people: every entry of a deployment, one run by id, filters, the failure reason.

The entry's model, key layout and states are the kernel's (`autopilot_common.ledger`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from autopilot_common.causes import failure_reason as failure_reason  # one home: the kernel (notifications use it too)
from autopilot_common.ledger import QUEUED, ledger_prefix, read_entry


@dataclass(frozen=True)
class RunRecord:
    """One ledger entry, with the fields operators look at first."""

    run_id: str
    pipeline: str
    state: str
    started_at: str | None
    ended_at: str | None
    output_uri: str | None
    ledger_uri: str
    metrics: dict[str, Any] | None
    error: str | None
    cause: str | None
    raw: dict[str, Any]

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at or not self.ended_at:
            return None
        start = datetime.fromisoformat(self.started_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(self.ended_at.replace("Z", "+00:00"))
        return (end - start).total_seconds()

    @property
    def admission(self) -> dict[str, Any]:
        """The run slot: `queued_at` and `position` while QUEUED; `admitted_at`, `queued_seconds` once admitted."""
        value = self.raw.get("admission")
        return value if isinstance(value, dict) else {}

    @property
    def waited(self) -> str:
        """For people: the place in line while QUEUED, else how long the run waited for its slot."""
        admission = self.admission
        if self.state == QUEUED:
            position = admission.get("position")
            return f"#{position} in line" if position else "queued"
        seconds = admission.get("queued_seconds")
        return f"{seconds:.1f}s" if isinstance(seconds, int | float) else "-"

    @property
    def rows_in(self) -> int | None:
        return (self.metrics or {}).get("rows_in")

    @property
    def rows_out(self) -> int | None:
        return (self.metrics or {}).get("rows_out")


def read_runs(s3: Any, outputs_bucket: str, pipeline: str | None = None, state: str | None = None) -> list[RunRecord]:
    """Every ledger entry (optionally of one pipeline, or in one state such as QUEUED), oldest first."""
    prefix = ledger_prefix(pipeline)
    records: list[RunRecord] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=outputs_bucket, Prefix=prefix):
        records.extend(_record(s3, outputs_bucket, item["Key"]) for item in page.get("Contents", []))
    records = [r for r in records if state is None or r.state == state]
    return sorted(records, key=lambda r: (r.started_at or "", r.run_id))


def _record(s3: Any, outputs_bucket: str, key: str) -> RunRecord:
    return _from_entry(json.loads(s3.get_object(Bucket=outputs_bucket, Key=key)["Body"].read()), outputs_bucket, key)


def run_at(s3: Any, outputs_bucket: str, key: str) -> RunRecord | None:
    """The entry at `key` (`autopilot_common.ledger.ledger_key`), or None while there is none."""
    entry = read_entry(s3, outputs_bucket, key)
    return None if entry is None else _from_entry(entry, outputs_bucket, key)


def _from_entry(body: dict[str, Any], outputs_bucket: str, key: str) -> RunRecord:
    return RunRecord(
        run_id=body.get("run_id", ""),
        pipeline=body.get("pipeline", ""),
        state=body.get("state", "UNKNOWN"),
        started_at=body.get("started_at"),
        ended_at=body.get("ended_at"),
        output_uri=body.get("output_uri"),
        ledger_uri=f"s3://{outputs_bucket}/{key}",
        metrics=body.get("metrics"),
        error=body.get("error"),
        cause=body.get("cause"),
        raw=body,
    )


def find_run(s3: Any, outputs_bucket: str, run_id: str) -> RunRecord | None:
    """The run's entry (`_runs/<pipeline>/<date>/<run id>.json`, any pipeline and date), or None."""
    suffix = f"/{run_id}.json"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=outputs_bucket, Prefix=ledger_prefix()):
        for item in page.get("Contents", []):
            if item["Key"].endswith(suffix):
                return _record(s3, outputs_bucket, item["Key"])
    return None


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `3d`, `1w` before now, or an ISO date/time (`2024-06-01`, `2024-06-01T12:00:00Z`; UTC unless
    it says otherwise); ValueError saying what is accepted otherwise."""
    now = now or datetime.now(UTC)
    if match := _DURATION.match(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 3d, 1w) nor an ISO date or time (2024-06-01, "
            "2024-06-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def started_since(record: RunRecord, since: datetime) -> bool:
    if not record.started_at:
        return False
    return datetime.fromisoformat(record.started_at.replace("Z", "+00:00")) >= since
