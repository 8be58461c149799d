"""Run events: every workflow publishes one EventBridge event on its final state, on the account's default bus.

The one home of their shape, for the publisher (prepare builds the part known at the start, `run_event`; the
workflow's last two states add the end and publish it with the Step Functions `events:putEvents` integration), for
the stack (the rules of pipelines that run `after` others) and for readers (the router's upstream handling):

    source       emr-autopilot
    detail-type  Autopilot Run Succeeded | Autopilot Run Failed
    detail       {"schema_version": 1, "deployment": "autopilot-dev", "pipeline": "sales-daily",
                  "run_id": "sales-daily-3f2a...", "state": "SUCCEEDED", "execution_arn": "arn:aws:states:...",
                  "ledger_uri": "s3://<outputs>/_runs/sales-daily/2024/06/01/<run id>.json",
                  "outputs": {"prefix": "s3://<outputs>/sales-daily/run_id=<run id>/",
                              "success_marker": "s3://<outputs>/sales-daily/run_id=<run id>/_SUCCESS"},
                  "started_at": "2024-06-01T10:00:00.000Z", "ended_at": "2024-06-01T10:03:00.000Z",
                  "logical_date": "2024-06-01",                    # when the run has one
                  "upstream_runs": [{"pipeline": ..., "run_id": ..., "ledger_uri": ...}]}   # when upstreams started it

A run its workflow never ended (ABORTED, TIMED_OUT: the execution was stopped; FAILED before its workflow wrote an
entry) gets its "Autopilot Run Failed" event from the guardrail's cleanup (`stopped_run_event`), with `state` the
ledger's (ABORTED, TIMED_OUT, CANCELLED or FAILED), so a pipeline run `after` it learns that it will not succeed.

`outputs.success_marker` is only in a SUCCEEDED event. The detail never holds the manifest or the object list (an
event entry is at most 256 KiB): a reader lists `outputs.prefix`. The source must not start with `aws.` (PutEvents
refuses it: "Amazon EventBridge API Reference", PutEventsRequestEntry).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, NotRequired

from typing_extensions import TypedDict

SOURCE: Final = "emr-autopilot"
SCHEMA_VERSION: Final = 1
SUCCEEDED_DETAIL_TYPE: Final = "Autopilot Run Succeeded"
FAILED_DETAIL_TYPE: Final = "Autopilot Run Failed"
DETAIL_TYPES: Final = {"SUCCEEDED": SUCCEEDED_DETAIL_TYPE, "FAILED": FAILED_DETAIL_TYPE}
# EventBridge's limit for one PutEvents entry (detail, detail-type, source, resources together).
MAX_ENTRY_BYTES: Final = 256 * 1024


class UpstreamRun(TypedDict):
    """A run of an upstream pipeline that a downstream run consumed (`trigger.after`): lineage in both directions."""

    pipeline: str
    run_id: str
    ledger_uri: str


class RunOutputs(TypedDict, total=False):
    prefix: str
    success_marker: str


class RunEventDetail(TypedDict, total=False):
    """The `detail` of a run event (see the module docstring)."""

    schema_version: int
    deployment: str
    pipeline: str
    run_id: str
    state: Literal["SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "CANCELLED"]
    execution_arn: str
    ledger_uri: str
    outputs: RunOutputs
    started_at: str
    ended_at: str | None
    logical_date: NotRequired[str]
    upstream_runs: NotRequired[list[UpstreamRun]]


def run_event(
    *,
    deployment: str,
    entry: Mapping[str, Any],
    execution_arn: str,
    ledger_uri: str,
) -> dict[str, Any]:
    """The part of a run's event known when it starts (the workflow adds `state`, `ended_at` and `outputs`): from
    the run's STARTED ledger `entry`, with `logical_date` (the entry's, else its trigger's) and `upstream_runs` only
    when the run has them."""
    detail: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "deployment": deployment,
        "pipeline": entry["pipeline"],
        "run_id": entry["run_id"],
        "execution_arn": execution_arn,
        "ledger_uri": ledger_uri,
        "started_at": entry["started_at"],
    }
    trigger = entry.get("trigger") or {}
    logical_date = entry.get("logical_date") or trigger.get("logical_date")
    if isinstance(logical_date, str) and logical_date:
        detail["logical_date"] = logical_date
    upstream = entry.get("upstream_runs")
    if upstream:
        detail["upstream_runs"] = [dict(u) for u in upstream]
    return detail


def stopped_run_event(
    *, deployment: str, entry: Mapping[str, Any], execution_arn: str, ledger_uri: str
) -> dict[str, Any]:
    """The PutEvents entry of a run that ended without its workflow's own event (see the module docstring): an
    "Autopilot Run Failed" event whose `state` is the ledger's."""
    detail = run_event(deployment=deployment, entry=entry, execution_arn=execution_arn, ledger_uri=ledger_uri)
    detail |= {"state": str(entry["state"]), "ended_at": entry.get("ended_at")}
    if entry.get("output_uri"):
        detail["outputs"] = {"prefix": str(entry["output_uri"])}
    return {
        "Source": SOURCE,
        "DetailType": FAILED_DETAIL_TYPE,
        "Detail": json.dumps(detail, ensure_ascii=False),
    }
