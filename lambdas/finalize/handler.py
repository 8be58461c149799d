"""Finalize Lambda: the last state of every run (all runtimes): the ledger update, and the run's notification.

- EMR on EC2 (`finalization`): cluster, fleets, steps, cost.
- EMR Serverless and EMR on EKS (`job_runs`): the job run's final state, timings, attempt and cost.
- EMR on EC2, mid-run (`step_retry`, `action: classify_step_failure` / `classify_cluster_failure`): whether a failed
  step is submitted again, whether a failed cluster is replaced by a new one.
- EMR on EC2, each step (`autopilot_common.step_notices`, `action: submit_step`): RunStep's AddJobFlowSteps, with its
  task token stored for the step's "EMR Step Status Change" event (the guardrail function answers it).

Every runtime's update also carries `links` (the run's console pages, `autopilot_common.links`); the result is
`{"ledger_update": ..., "notification": {"subject", "message"}}` (`run_notice`; the workflow publishes it), and the
function emits the run's cost as the EMF metric `RunCostUsd` (dimension `pipeline`) for the dashboard.

Environment: optional `STATE_TABLE` (set when a pipeline scales from alarms: each cluster's scaling actions), optional
`STEP_NOTICES_TABLE` (set when a pipeline runs on EMR on EC2: where RunStep's task tokens wait).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from step_retry import (
    CLASSIFY_ACTION,
    CLUSTER_ACTION,
    RelaunchQuestion,
    RetryQuestion,
    classify_failed_cluster,
    classify_failed_step,
)

from autopilot_common.clients import Clients
from autopilot_common.links import partition_of, run_links
from autopilot_common.observability import observability
from autopilot_common.pricing import shipped_prices
from autopilot_common.settings import Environment
from autopilot_common.step_notices import SUBMIT_ACTION, NoticeStore, StepSubmission, submit_step
from finalization import ClusterPricing, FinalizeRequest, ScalingState, finalize_run
from job_runs import JOB_RUNTIMES, JobRunClients, JobRunRequest, finalize_job_run
from run_notice import log_tail, notice

obs = observability("autopilot-finalize")
logger, metrics = obs.logger, obs.metrics
STATE_TABLE = Environment(os.environ).optional("STATE_TABLE")
STEP_NOTICES_TABLE = Environment(os.environ).optional("STEP_NOTICES_TABLE")
CLIENTS = Clients()


@cache
def _scaling() -> ScalingState | None:
    """Set when a pipeline scales from alarms: the table holding each cluster's scaling actions."""
    return ScalingState(CLIENTS.dynamodb, STATE_TABLE) if STATE_TABLE else None


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("action") == SUBMIT_ACTION:  # RunStep: add the step; its end answers the task token
        if STEP_NOTICES_TABLE is None:
            raise ValueError("STEP_NOTICES_TABLE: not set; expected the table where RunStep's task tokens wait")
        store = NoticeStore(CLIENTS.dynamodb, STEP_NOTICES_TABLE)
        submitted = submit_step(StepSubmission.from_event(event), CLIENTS.emr, CLIENTS.sfn, store)
        logger.info("step submitted", cluster_id=event.get("cluster_id"), **submitted)
        return submitted
    if event.get("action") == CLASSIFY_ACTION:  # an EMR-on-EC2 step failed with attempts left: retry it?
        answer = classify_failed_step(RetryQuestion.from_event(event), CLIENTS.emr)
        logger.info("step failure classified", **answer)
        return answer
    if event.get("action") == CLUSTER_ACTION:  # a transient run's cluster failed and it may launch another: does it?
        answer = classify_failed_cluster(RelaunchQuestion.from_event(event), CLIENTS.emr)
        logger.info("cluster failure classified", **{k: v for k, v in answer.items() if k != "launch"})
        return answer
    region = Environment(os.environ).required("AWS_REGION", "the function's region (Lambda sets it)")
    if event.get("runtime") in JOB_RUNTIMES:
        job_request = JobRunRequest.from_event(event)
        pipeline, run_id, outcome = job_request.pipeline, job_request.run_id, job_request.outcome
        clients = JobRunClients(CLIENTS.emr_serverless, CLIENTS.emr_containers)
        update = finalize_job_run(job_request, clients, shipped_prices(), region)
    else:
        request = FinalizeRequest.from_event(event)
        pipeline, run_id, outcome = request.pipeline, request.run_id, request.outcome
        pricing = ClusterPricing(shipped_prices(), region, CLIENTS.ec2)
        update = finalize_run(request, CLIENTS.emr, scaling=_scaling(), pricing=pricing)
    entry = {**(event.get("ledger") or {}), **update}
    update["links"] = run_links(entry, region, partition_of(str(entry.get("execution_arn") or "")))
    entry["links"] = update["links"]
    tail = log_tail(CLIENTS.s3, entry.get("log_uri")) if outcome == "FAILED" else None
    message = notice(entry, event.get("ledger_uri"), tail)
    metrics.add_dimension(name="pipeline", value=pipeline)
    metrics.add_metric(name=f"Runs{outcome.title()}", unit=MetricUnit.Count, value=1)
    usd = (update.get("cost") or {}).get("usd")
    if usd is not None:
        metrics.add_metric(name="RunCostUsd", unit=MetricUnit.NoUnit, value=float(usd))
    logger.info("run finalized", run_id=run_id, state=update["state"], cost_usd=usd, error=update.get("error"))
    return {"ledger_update": update, "notification": message}
