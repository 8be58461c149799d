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

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from autopilot_common.admission import release
from autopilot_common.causes import ledger_cause
from autopilot_common.clients import Clients
from autopilot_common.ledger import FINAL_STATES, iso
from autopilot_common.ledger import read_entry as read_ledger
from autopilot_common.ledger import write_entry as write_ledger
from autopilot_common.pricing import shipped_prices, unpriced
from autopilot_common.run_costs import (
    ClusterPricing,
    JobRunClients,
    JobRunRef,
    JobRuntime,
    cluster_cost,
    job_run_record,
    launched_clusters,
)
from autopilot_common.run_events import stopped_run_event
from cloudtrail_reactions import Cancellation, find_cancellation, find_stop
from guardrail_settings import GuardrailEventError, GuardrailSettings
from run_teardown import ENDED_STATUSES, RunRef, Teardown, base_entry, millis_to_datetime, notify, teardown_run

logger = Logger(service="autopilot-guardrail", child=True)


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
    cost_usd: float | None = None  # priced here (the run never reached finalize): the dashboard's RunCostUsd


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
    update = _ending(run, status, detail, previous, cancellation, clients, settings)
    if update.get("state") in PRICED_HERE and "cost" not in entry:
        update |= ended_run_cost(run, entry, teardown, settings, clients, now)
    changed = bool(update) and any(entry.get(k) != v for k, v in update.items())
    if changed or teardown.acted:
        if update:
            entry |= update
        if previous != entry.get("state"):
            entry["previous_state"] = previous
        entry["ended_at"] = entry.get("ended_at") or ended_at
        entry["cleanup"] = {"at": iso(now), "execution_status": status, **teardown.as_dict()}
        write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
        if changed and (status in ("ABORTED", "TIMED_OUT") or previous not in FINAL_STATES):
            # The workflow never reached its own run event: pipelines run `after` this one learn it from this one.
            publish_stopped_run(run, entry, settings, clients)
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
    priced = update.get("cost") if changed and "cost" in update else None
    usd = priced.get("usd") if isinstance(priced, Mapping) else None
    return CleanupResult(
        run.run_id,
        pipeline.name,
        status,
        entry.get("state"),
        changed or teardown.acted,
        notified,
        teardown,
        float(usd) if usd is not None else None,
    )


# Final states only this function writes: the run never reached finalize, so its compute is priced here.
PRICED_HERE = {"ABORTED", "TIMED_OUT", "CANCELLED"}
TERMINATED_STATES = {"TERMINATED", "TERMINATED_WITH_ERRORS"}


def ended_run_cost(
    run: RunRef,
    entry: Mapping[str, Any],
    teardown: Teardown,
    settings: GuardrailSettings,
    clients: Clients,
    now: datetime,
) -> dict[str, Any]:
    """What a run that never reached finalize cost, as finalize would have priced it (autopilot_common.run_costs):
    its transient cluster(s), found by the teardown or named by the ledger, with their instances priced up to their
    end (or now: a cluster the teardown just terminated is still shutting down, and its last seconds are missing);
    or its job run. A run on a long-running cluster, or one that launched nothing, has no cost (null). Never raises:
    a cost that cannot be read says why."""
    pipeline = run.pipeline
    if settings.region is None:
        return {"cost": unpriced(shipped_prices(), "AWS_REGION is not set: the run's region is unknown")}
    table = shipped_prices()
    try:
        if pipeline.runtime == "emr-ec2":
            if not pipeline.transient:
                return {"cost": None}  # a shared cluster's cost is its owner's
            ids = list(dict.fromkeys([*([entry["cluster_id"]] if entry.get("cluster_id") else []),
                                      *teardown.clusters_terminated]))  # fmt: skip
            if not ids:
                return {"cost": None}  # no cluster was launched: nothing was billed
            launched = launched_clusters(clients.emr, ids)
            pricing = ClusterPricing(table, settings.region, clients.ec2)
            cost = cluster_cost(pricing, clients.emr, launched, now)
            if any(c.get("Status", {}).get("State") not in TERMINATED_STATES for c, _ in launched):
                cost.setdefault("notes", []).append(
                    "priced up to the cleanup: the cluster was still terminating, its last seconds are not counted"
                )
            return {"cluster_id": ids[-1], "cost": cost}
        job_run_id = entry.get("job_run_id") or next(iter(teardown.job_runs_cancelled), None)
        container = pipeline.application_id or pipeline.virtual_cluster_id
        if not job_run_id or not container:
            return {"cost": None}  # no job run was started: nothing was billed
        runtime: JobRuntime = "emr-serverless" if pipeline.runtime == "emr-serverless" else "emr-eks"
        ref = JobRunRef(runtime, str(job_run_id), container, pipeline.architecture)
        clients_of = JobRunClients(clients.emr_serverless, clients.emr_containers)
        job_run, attempts, cost = job_run_record(ref, clients_of, table, settings.region, now)
        fields: dict[str, Any] = {"job_run_id": job_run_id, "cost": cost}
        if job_run is not None:
            fields |= {"job_run": job_run, "attempts": attempts}
        return fields
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return {
            "cost": unpriced(table, f"reading the run's compute failed: {error.get('Code')}: {error.get('Message')}")
        }


def _ending(
    run: RunRef,
    status: str,
    detail: Mapping[str, Any],
    previous: Any,
    cancellation: Cancellation | None,
    clients: Clients,
    settings: GuardrailSettings,
) -> dict[str, Any]:
    """The ledger fields of how the run ended, as far as the cleanup writes them (empty: the workflow's stand)."""
    if cancellation is not None:
        return cancellation.ledger_fields()
    elif status in ("ABORTED", "TIMED_OUT"):
        stop = find_stop(clients.dynamodb, settings.claims_table, run.run_id) if status == "ABORTED" else None
        given_error, given_cause = _stop_reason(clients, detail) if status == "ABORTED" else (None, None)
        error = given_error or ("States.Timeout" if status == "TIMED_OUT" else "ExecutionAborted")
        return {
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
        return {
            "state": "FAILED",
            "error": detail.get("error"),
            "cause": ledger_cause(detail.get("error"), detail.get("cause")),
        }
    return {}


def publish_stopped_run(run: RunRef, entry: Mapping[str, Any], settings: GuardrailSettings, clients: Clients) -> None:
    """The "Autopilot Run Failed" event of a run the cleanup ended (autopilot_common.run_events); a failure to publish
    is logged, never raised (the ledger entry is written; EventBridge's own retries are the SDK's)."""
    event = stopped_run_event(
        deployment=settings.deployment,
        entry=entry,
        execution_arn=run.execution_arn,
        ledger_uri=f"s3://{settings.outputs_bucket}/{run.ledger_key}",
    )
    try:
        failed = clients.events.put_events(Entries=[event])  # type: ignore[list-item]
    except ClientError as exc:
        logger.warning("run event not published", run_id=run.run_id, error=str(exc))
        return
    if failed.get("FailedEntryCount"):
        logger.warning("run event refused", run_id=run.run_id, entries=failed.get("Entries"))


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
