"""Finalize an EMR Serverless or EMR on EKS run: what the service knows about its job run, as the ledger update.

The job-run workflows call this once at the end of every run (success, and every failure after Prepare), after
the job run ended or was cancelled. It never decides the run's outcome: the workflow does. It adds the job run's
final state, timings and attempt, and what the run cost:

- EMR Serverless: GetJobRun's `billedResourceUtilization` at the application's architecture's rates (the
  architecture comes from config at synth: the app creates the application, so no GetApplication call is needed).
  A job run retried under its retry policy bills every attempt: GetJobRun answers one attempt ("defaults to the
  attempt of the latest job", botocore GetJobRunRequest.attempt), so each earlier attempt is read with `attempt=n`
  and the cost is that of the summed usage of all attempts.
- EMR on EKS: DescribeJobRun reports no usage, so the cost is an estimate: the vCPU and memory the job's pods
  request (its spark-submit parameters and `spark-defaults`, Spark's defaults when unset) x the job run's
  duration (createdAt -> finishedAt, which spans every driver attempt), at the EMR on EKS rates; the EKS nodes are
  not included. DescribeJobRun reports only the attempt count (`retryPolicyExecution.currentAttemptCount`).

The update's `attempts` lists every attempt of the job run (`autopilot_common.ledger.JobRunAttempt`).

A run that never started a job run has no cost (`cost: null`); a job run the function cannot read has a cost of
`usd: null` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from autopilot_common.ledger import JobRunAttempt
from autopilot_common.pricing import Cost, PriceTable, eks_cost, serverless_cost, unpriced
from autopilot_common.spark_resources import eks_pods
from finalization import iso_time, ledger_update, timestamp

if TYPE_CHECKING:
    from autopilot_common.clients import EMRContainersClient, EMRServerlessClient

JobRuntime = Literal["emr-serverless", "emr-eks"]
JOB_RUNTIMES: tuple[JobRuntime, ...] = ("emr-serverless", "emr-eks")
SERVERLESS_TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}
EKS_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@dataclass(frozen=True)
class JobRunRequest:
    """The workflow's payload (the `Finalize*` states of statemachines/rendered/emr_{serverless,eks}_job.asl.json)."""

    runtime: JobRuntime
    outcome: str  # SUCCEEDED | FAILED
    run_id: str
    pipeline: str
    job_run_id: str | None  # None: the run failed before a job run was started
    container_id: str  # the EMR Serverless application, or the EMR on EKS virtual cluster
    architecture: str  # EMR Serverless: X86_64 | ARM64
    metrics: Any
    failure: dict[str, Any] | None  # {error, cause} as the workflow recorded it (FAILED)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> JobRunRequest:
        runtime = event.get("runtime")
        if runtime not in JOB_RUNTIMES:
            raise ValueError(f"runtime: got {runtime!r}; expected one of {', '.join(JOB_RUNTIMES)}")
        outcome = event.get("outcome")
        if outcome not in {"SUCCEEDED", "FAILED"}:
            raise ValueError(f"outcome: got {outcome!r}; expected 'SUCCEEDED' or 'FAILED'")
        container = event.get("application_id") if runtime == "emr-serverless" else event.get("virtual_cluster_id")
        if not container:
            field = "application_id" if runtime == "emr-serverless" else "virtual_cluster_id"
            raise ValueError(f"{field}: missing; expected the {runtime} job run's container id")
        failure = event.get("failure")
        return cls(
            runtime=runtime,
            outcome=outcome,
            run_id=str(event["run_id"]),
            pipeline=str(event["pipeline"]),
            job_run_id=(event.get("job") or {}).get("JobRunId") or None,
            container_id=str(container),
            architecture=str(event.get("architecture") or "X86_64"),
            metrics=event.get("metrics"),
            failure=failure if isinstance(failure, dict) else None,
        )


@dataclass(frozen=True)
class JobRunClients:
    """The service client of each job-run runtime (only the run's own is called)."""

    emr_serverless: EMRServerlessClient
    emr_containers: EMRContainersClient


def finalize_job_run(
    request: JobRunRequest, clients: JobRunClients, table: PriceTable, region: str, now: datetime | None = None
) -> dict[str, Any]:
    """The ledger update for the run (merged by the workflow into the STARTED record)."""
    now = now or datetime.now(UTC)
    update = ledger_update(
        request.outcome,
        now,
        request.metrics,
        job_run_id=request.job_run_id,
        job_run=None,
        cost=None,  # no job run started: nothing was billed
    )
    if request.outcome == "FAILED":
        failure = request.failure or {}
        update |= {"error": failure.get("error"), "cause": failure.get("cause")}
    if request.job_run_id is None:
        return update
    try:
        if request.runtime == "emr-serverless":
            update["job_run"], update["attempts"], update["cost"] = _serverless(
                request, clients.emr_serverless, table, region
            )
        else:
            update["job_run"], update["attempts"], update["cost"] = _eks(
                request, clients.emr_containers, table, region, now
            )
    except ClientError as exc:  # throttled past retries, or refused: the run's record still ends, the cost says why
        error = exc.response.get("Error", {})
        action = "GetJobRun" if request.runtime == "emr-serverless" else "DescribeJobRun"
        update["cost"] = unpriced(table, f"{action} failed: {error.get('Code')}: {error.get('Message')}")
    return update


# ------------------------------------------------------------------------------------ EMR Serverless


def _serverless(
    request: JobRunRequest, client: EMRServerlessClient, table: PriceTable, region: str
) -> tuple[dict[str, Any], list[JobRunAttempt], Cost]:
    assert request.job_run_id is not None
    app, job = request.container_id, request.job_run_id
    run: dict[str, Any] = dict(client.get_job_run(applicationId=app, jobRunId=job)["jobRun"])
    latest = int(run.get("attempt") or 1)
    earlier = [dict(client.get_job_run(applicationId=app, jobRunId=job, attempt=n)["jobRun"]) for n in range(1, latest)]
    runs = [*earlier, run]
    attempts = [_serverless_attempt(n, each) for n, each in enumerate(runs, start=1)]
    billed = _summed(each.get("billedResourceUtilization") for each in runs)
    summary = {
        "state": run.get("state"),
        "state_details": run.get("stateDetails") or None,
        "attempt": run.get("attempt"),
        "created_at": iso_time(run.get("createdAt")),
        "started_at": iso_time(run.get("startedAt")),
        "ended_at": iso_time(run.get("endedAt")),
        "queued_seconds": _seconds(run.get("queuedDurationMilliseconds")),
        # over every attempt (each attempt's own: `attempts`)
        "total_execution_duration_seconds": _total(each.get("totalExecutionDurationSeconds") for each in runs),
        "total_resource_utilization": _summed(each.get("totalResourceUtilization") for each in runs),
        "billed_resource_utilization": billed,
    }
    cost = serverless_cost(table, region, request.architecture, billed)
    notes = cost.setdefault("notes", [])
    if latest > 1:
        notes.append(f"every attempt is billed: the usage of the job run's {latest} attempts, summed")
    if run.get("state") not in SERVERLESS_TERMINAL:
        notes.append(
            f"the job run was {run.get('state')} when read (cancelled just before): its usage may be incomplete"
        )
    if not notes:
        del cost["notes"]
    return summary, attempts, cost


def _serverless_attempt(number: int, run: dict[str, Any]) -> JobRunAttempt:
    return {
        "attempt": int(run.get("attempt") or number),
        "state": str(run.get("state")),
        "state_details": run.get("stateDetails") or None,
        "reason": None,
        "started_at": iso_time(run.get("startedAt") or run.get("attemptCreatedAt")),
        "ended_at": iso_time(run.get("endedAt")),
        "billed_resource_utilization": run.get("billedResourceUtilization"),
    }


def _summed(usages: Iterable[Mapping[str, float] | None]) -> dict[str, float] | None:
    """The sum of GetJobRun resource utilizations ({vCPUHour, memoryGBHour, storageGBHour}); None if none reported."""
    reported = [usage for usage in usages if usage]
    if not reported:
        return None
    keys = dict.fromkeys(key for usage in reported for key in usage)
    return {key: round(sum(float(usage.get(key, 0.0)) for usage in reported), 6) for key in keys}


def _total(values: Iterable[Any]) -> int | None:
    reported = [int(value) for value in values if value is not None]
    return sum(reported) if reported else None


# --------------------------------------------------------------------------------------- EMR on EKS


def _eks(
    request: JobRunRequest, client: EMRContainersClient, table: PriceTable, region: str, now: datetime
) -> tuple[dict[str, Any], list[JobRunAttempt], Cost]:
    assert request.job_run_id is not None
    run: dict[str, Any] = dict(
        client.describe_job_run(id=request.job_run_id, virtualClusterId=request.container_id)["jobRun"]
    )
    created, finished = run.get("createdAt"), run.get("finishedAt")
    summary: dict[str, Any] = {
        "state": run.get("state"),
        "state_details": run.get("stateDetails") or None,
        "failure_reason": run.get("failureReason"),
        "created_at": iso_time(created),
        "finished_at": iso_time(finished),
    }
    count = int((run.get("retryPolicyExecution") or {}).get("currentAttemptCount") or 1)
    if run.get("retryPolicyConfiguration"):
        summary["attempt"] = count
    # Only the last attempt is described; the earlier ones failed (a driver is retried only when it fails or is deleted)
    earlier: list[JobRunAttempt] = [
        {"attempt": n, "state": "FAILED", "state_details": None, "reason": None, "started_at": None, "ended_at": None}
        for n in range(1, count)
    ]
    last: JobRunAttempt = {
        "attempt": count,
        "state": str(run.get("state")),
        "state_details": run.get("stateDetails") or None,
        "reason": run.get("failureReason"),
        "started_at": iso_time(created) if count == 1 else None,
        "ended_at": iso_time(finished),
    }
    attempts = [*earlier, last]
    spark = (run.get("jobDriver") or {}).get("sparkSubmitJobDriver") or {}
    try:
        pods = eks_pods(str(spark.get("sparkSubmitParameters") or ""), _spark_defaults(run))
    except ValueError as exc:
        return summary, attempts, unpriced(table, f"the job's requested resources cannot be read: {exc}")
    if created is None:
        return summary, attempts, unpriced(table, "DescribeJobRun gave no createdAt: the job run's duration is unknown")
    # EMR on EKS bills whole seconds (rounded up)
    seconds = float(math.ceil(max(0.0, timestamp(finished or now) - timestamp(created))))
    vcpu_hours, memory_gb_hours = pods.vcpu * seconds / 3600, pods.memory_gb * seconds / 3600
    summary["usage_estimate"] = {
        "seconds": seconds,
        "pods": pods.describe(),
        "vcpu": pods.vcpu,
        "memory_gb": pods.memory_gb,
        "vcpu_hours": round(vcpu_hours, 6),
        "memory_gb_hours": round(memory_gb_hours, 6),
    }
    cost = eks_cost(table, region, vcpu_hours, memory_gb_hours)
    notes = cost.setdefault("notes", [])
    notes.append(
        f"an estimate from the resources the job's pods requested ({pods.describe()}) over the job run's "
        f"{seconds:g} s (createdAt to {'finishedAt' if finished else 'now: no finishedAt yet'}), every pod counted "
        "for the whole run: DescribeJobRun reports no usage"
    )
    if count > 1:
        notes.append(f"the {count} driver attempts are all within that duration (each is billed as it runs)")
    notes.extend(pods.notes)
    return summary, attempts, cost


def _spark_defaults(run: dict[str, Any]) -> dict[str, str]:
    """The `spark-defaults` classification's properties of the job's configurationOverrides."""
    overrides = (run.get("configurationOverrides") or {}).get("applicationConfiguration") or []
    found: dict[str, str] = {}
    for item in overrides:
        if isinstance(item, dict) and item.get("classification") == "spark-defaults":
            found |= {str(k): str(v) for k, v in (item.get("properties") or {}).items()}
    return found


# ------------------------------------------------------------------------------------------- helpers


def _seconds(milliseconds: Any) -> float | None:
    return round(float(milliseconds) / 1000, 3) if milliseconds is not None else None
