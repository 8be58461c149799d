"""Finalize an EMR Serverless or EMR on EKS run: what the service knows about its job run, as the ledger update.

The job-run workflows call this once at the end of every run (success, and every failure after Prepare), after
the job run ended or was cancelled. It never decides the run's outcome: the workflow does. It adds the job run's
final state, timings and attempt, and what the run cost:

- EMR Serverless: GetJobRun's `billedResourceUtilization` at the application's architecture's rates (the
  architecture comes from config at synth: the app creates the application, so no GetApplication call is needed).
- EMR on EKS: DescribeJobRun reports no usage, so the cost is an estimate: the vCPU and memory the job's pods
  request (its spark-submit parameters and `spark-defaults`, Spark's defaults when unset) x the job run's
  duration (createdAt -> finishedAt), at the EMR on EKS rates; the EKS nodes are not included.

A run that never started a job run has no cost (`cost: null`); a job run the function cannot read has a cost of
`usd: null` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

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
            update["job_run"], update["cost"] = _serverless(request, clients.emr_serverless, table, region)
        else:
            update["job_run"], update["cost"] = _eks(request, clients.emr_containers, table, region, now)
    except ClientError as exc:  # throttled past retries, or refused: the run's record still ends, the cost says why
        error = exc.response.get("Error", {})
        action = "GetJobRun" if request.runtime == "emr-serverless" else "DescribeJobRun"
        update["cost"] = unpriced(table, f"{action} failed: {error.get('Code')}: {error.get('Message')}")
    return update


# ------------------------------------------------------------------------------------ EMR Serverless


def _serverless(
    request: JobRunRequest, client: EMRServerlessClient, table: PriceTable, region: str
) -> tuple[dict[str, Any], Cost]:
    assert request.job_run_id is not None
    run: dict[str, Any] = dict(
        client.get_job_run(applicationId=request.container_id, jobRunId=request.job_run_id)["jobRun"]
    )
    summary = {
        "state": run.get("state"),
        "state_details": run.get("stateDetails") or None,
        "attempt": run.get("attempt"),
        "created_at": iso_time(run.get("createdAt")),
        "started_at": iso_time(run.get("startedAt")),
        "ended_at": iso_time(run.get("endedAt")),
        "queued_seconds": _seconds(run.get("queuedDurationMilliseconds")),
        "total_execution_duration_seconds": run.get("totalExecutionDurationSeconds"),
        "total_resource_utilization": run.get("totalResourceUtilization"),
        "billed_resource_utilization": run.get("billedResourceUtilization"),
    }
    cost = serverless_cost(table, region, request.architecture, run.get("billedResourceUtilization"))
    if run.get("state") not in SERVERLESS_TERMINAL:
        cost.setdefault("notes", []).append(
            f"the job run was {run.get('state')} when read (cancelled just before): its usage may be incomplete"
        )
    return summary, cost


# --------------------------------------------------------------------------------------- EMR on EKS


def _eks(
    request: JobRunRequest, client: EMRContainersClient, table: PriceTable, region: str, now: datetime
) -> tuple[dict[str, Any], Cost]:
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
    spark = (run.get("jobDriver") or {}).get("sparkSubmitJobDriver") or {}
    try:
        pods = eks_pods(str(spark.get("sparkSubmitParameters") or ""), _spark_defaults(run))
    except ValueError as exc:
        return summary, unpriced(table, f"the job's requested resources cannot be read: {exc}")
    if created is None:
        return summary, unpriced(table, "DescribeJobRun gave no createdAt: the job run's duration is unknown")
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
    notes.extend(pods.notes)
    return summary, cost


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
