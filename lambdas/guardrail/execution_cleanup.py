"""Cleanup when an execution ends badly ("Step Functions Execution Status Change": ABORTED, TIMED_OUT, FAILED).

An abort or a timeout cannot be caught inside ASL, so this is where the run's cluster is terminated (or its EMR
Serverless / EMR on EKS job run cancelled, or its steps on a long-running cluster cancelled), its scaling alarms
deleted, its run slot released and its ledger entry written. A no-op (apart from the checks) when the workflow
already cleaned up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from autopilot_common.admission import release
from autopilot_common.causes import ledger_cause
from autopilot_common.clients import Clients
from autopilot_common.ledger import FINAL_STATES, iso
from autopilot_common.ledger import read_entry as read_ledger
from autopilot_common.ledger import write_entry as write_ledger
from cloudtrail_reactions import find_cancellation, find_stop
from guardrail_settings import GuardrailEventError, GuardrailSettings
from run_teardown import ENDED_STATUSES, RunRef, Teardown, base_entry, millis_to_datetime, notify, teardown_run


@dataclass
class CleanupResult:
    """What `clean_up_execution` did (for logs, metrics and tests)."""

    run_id: str
    pipeline: str
    status: str
    ledger_state: str | None
    ledger_written: bool
    notified: bool
    teardown: Teardown


def clean_up_execution(
    detail: Mapping[str, Any], settings: GuardrailSettings, clients: Clients, now: datetime
) -> CleanupResult | None:
    """React to an execution that ended ABORTED, TIMED_OUT or FAILED (None: not one of ours)."""
    status = detail.get("status")
    if status not in ENDED_STATUSES:
        raise GuardrailEventError(f"detail.status: got {status!r}; expected one of {list(ENDED_STATUSES)}")
    pipeline = settings.pipeline_of_state_machine(str(detail.get("stateMachineArn", "")))
    if pipeline is None:
        return None
    name, arn = detail.get("name"), detail.get("executionArn")
    if not isinstance(name, str) or not name or not isinstance(arn, str) or not arn:
        raise GuardrailEventError("detail.name / detail.executionArn: expected the execution's name and ARN")
    run = RunRef(pipeline, name, arn, millis_to_datetime(detail.get("startDate"), "startDate"))
    ledger = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    teardown = teardown_run(run, settings, clients, ledger or {})
    teardown.slot_released = release_slot(run, settings, clients)
    cancellation = find_cancellation(clients.dynamodb, settings.claims_table, run.run_id)
    stopped = detail.get("stopDate")
    ended_at = iso(millis_to_datetime(stopped, "stopDate")) if stopped is not None else iso(now)
    entry = dict(ledger) if ledger else base_entry(run)
    previous = entry.get("state")
    update: dict[str, Any] = {}
    if cancellation is not None:
        update = cancellation.ledger_fields()
    elif status in ("ABORTED", "TIMED_OUT"):
        stop = find_stop(clients.dynamodb, settings.claims_table, run.run_id) if status == "ABORTED" else None
        given_error, given_cause = _stop_reason(clients, detail) if status == "ABORTED" else (None, None)
        error = given_error or ("States.Timeout" if status == "TIMED_OUT" else "ExecutionAborted")
        update = {
            "state": status,
            "error": error,
            "cause": ledger_cause(
                error,
                given_cause
                or (
                    "the run exceeded its pipeline's run_timeout_minutes"
                    if status == "TIMED_OUT"
                    else "the execution was stopped (StopExecution)" + (f" by {stop.by}" if stop else "")
                ),
            ),
            **(stop.ledger_fields() if stop else {}),
        }
    elif previous not in FINAL_STATES:
        # FAILED before the workflow could write its own entry (Prepare rejected the input, or an error
        # escaped every Catch): the entry is written here so every run has one.
        update = {
            "state": "FAILED",
            "error": detail.get("error"),
            "cause": ledger_cause(detail.get("error"), detail.get("cause")),
        }
    changed = bool(update) and any(entry.get(k) != v for k, v in update.items())
    if changed or teardown.acted:
        if update:
            entry |= update
        if previous != entry.get("state"):
            entry["previous_state"] = previous
        entry["ended_at"] = entry.get("ended_at") or ended_at
        entry["cleanup"] = {"at": iso(now), "execution_status": status, **teardown.as_dict()}
        write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
    notified = False
    if changed:
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: {pipeline.name} run {entry['state']}",
            {
                "pipeline": pipeline.name,
                "run_id": run.run_id,
                "state": entry["state"],
                "execution_status": status,
                "error": entry.get("error"),
                "cause": entry.get("cause"),
                "cancelled_by": entry.get("cancelled_by"),
                "cleanup": teardown.as_dict(),
                "ledger": f"s3://{settings.outputs_bucket}/{run.ledger_key}",
                "execution_arn": run.execution_arn,
            },
        )
        notified = True
    return CleanupResult(
        run.run_id, pipeline.name, status, entry.get("state"), changed or teardown.acted, notified, teardown
    )


def _stop_reason(clients: Clients, detail: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The `error` and `cause` given to StopExecution: the event's when it carries them, else DescribeExecution's
    (the execution keeps them; whether the status-change event repeats them is not documented), else none."""
    if detail.get("error") or detail.get("cause"):
        return detail.get("error"), detail.get("cause")
    try:
        described = clients.sfn.describe_execution(executionArn=str(detail["executionArn"]))
    except ClientError:
        return None, None  # gone or not readable: the ledger says who stopped it, without a reason
    return described.get("error"), described.get("cause")


def release_slot(run: RunRef, settings: GuardrailSettings, clients: Clients) -> bool:
    """Give back the run's concurrency slot (or drop it from the queue); False when it held none.

    The workflow's ReleaseRunSlot cannot run after an abort or a timeout: this is its stand-in
    (idempotent, so a FAILED run that already released costs one conditional delete)."""
    if settings.admission_table is None:
        return False
    return release(clients.dynamodb, clients.sfn, settings.admission_table, run.run_id, settings.caps)
