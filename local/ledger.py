"""Read the run ledger for people (the entry's model, key layout and states: `autopilot_common.ledger`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autopilot_common.ledger import QUEUED, ledger_prefix


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
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=outputs_bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = json.loads(s3.get_object(Bucket=outputs_bucket, Key=item["Key"])["Body"].read())
            records.append(
                RunRecord(
                    run_id=body.get("run_id", ""),
                    pipeline=body.get("pipeline", ""),
                    state=body.get("state", "UNKNOWN"),
                    started_at=body.get("started_at"),
                    ended_at=body.get("ended_at"),
                    output_uri=body.get("output_uri"),
                    ledger_uri=f"s3://{outputs_bucket}/{item['Key']}",
                    metrics=body.get("metrics"),
                    error=body.get("error"),
                    cause=body.get("cause"),
                    raw=body,
                )
            )
    records = [r for r in records if state is None or r.state == state]
    return sorted(records, key=lambda r: (r.started_at or "", r.run_id))


def format_table(records: list[RunRecord]) -> str:
    """A plain-text table for people."""
    header = ("RUN ID", "PIPELINE", "STATE", "WAITED", "DURATION", "ROWS IN", "ROWS OUT", "OUTPUT", "LEDGER")
    rows = [
        (
            r.run_id,
            r.pipeline,
            r.state,
            r.waited,
            f"{r.duration_seconds:.1f}s" if r.duration_seconds is not None else "-",
            str(r.rows_in) if r.rows_in is not None else "-",
            str(r.rows_out) if r.rows_out is not None else "-",
            r.output_uri or "-",
            r.ledger_uri,
        )
        for r in records
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)
