"""Finalize an EMR Serverless or EMR on EKS run: what the service knows about its job run, as the ledger update.

The job-run workflows call this once at the end of every run (success, and every failure after Prepare), after
the job run ended or was cancelled. It never decides the run's outcome: the workflow does. It adds the job run's
final state, timings, every attempt (`autopilot_common.ledger.JobRunAttempt`) and what the run cost, as
`autopilot_common.run_costs` reads and prices them (EMR Serverless: billed usage; EMR on EKS: an estimate).

A run that never started a job run has no cost (`cost: null`); a job run the function cannot read has a cost of
`usd: null` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from autopilot_common.run_costs import JOB_RUNTIMES, JobRunClients, JobRunRef, JobRuntime, job_run_record
from finalization import ledger_update

if TYPE_CHECKING:
    from autopilot_common.pricing import PriceTable

__all__ = ["JOB_RUNTIMES", "JobRunClients", "JobRunRequest", "finalize_job_run"]


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
    ref = JobRunRef(request.runtime, request.job_run_id, request.container_id, request.architecture)
    job_run, attempts, update["cost"] = job_run_record(ref, clients, table, region, now)
    if job_run is not None:
        update["job_run"], update["attempts"] = job_run, attempts
    return update
