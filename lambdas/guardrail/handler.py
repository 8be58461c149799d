"""Guardrail Lambda: cleanup when an execution ends badly, the orphan sweeper, CloudTrail reactions.

One function, five EventBridge rules: `execution_cleanup`, `orphan_sweeper` and `cloudtrail_reactions` say what
each does; "EMR Step Status Change" answers the task token a workflow's RunStep waits on
(`autopilot_common.step_notices`). Environment: see `GuardrailSettings.from_env`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import Clients
from autopilot_common.observability import METRICS_NAMESPACE, observability
from autopilot_common.step_notices import NoticeStore, notice_step_event
from cloudtrail_reactions import react_to_cloudtrail
from execution_cleanup import clean_up_execution
from guardrail_settings import GuardrailEventError, GuardrailSettings
from orphan_sweeper import sweep

SERVICE = "autopilot-guardrail"
obs = observability(SERVICE)
logger, metrics = obs.logger, obs.metrics
CLIENTS = Clients()
# Fails the cold start naming the bad variable; the pipelines' settings are read from SSM when needed.
SETTINGS = GuardrailSettings.from_env(os.environ, lambda: CLIENTS.ssm)


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    received = EventBridgeEvent(event)
    now = datetime.now(UTC)
    kind = received.detail_type
    if kind == "Step Functions Execution Status Change":
        result = clean_up_execution(received.detail, SETTINGS, CLIENTS, now)
        if result is None:  # another deployment's, or a pipeline no longer deployed (no SSM parameter): left alone
            metrics.add_metric(name="ExecutionsOfUnknownPipelines", unit=MetricUnit.Count, value=1)
            logger.info("not a state machine of this deployment", extra={"arn": received.detail.get("stateMachineArn")})
            return {"handled": False}
        metrics.add_metric(name="RunsCleanedUp", unit=MetricUnit.Count, value=1 if result.teardown.acted else 0)
        if result.cost_usd is not None:
            # A run that never reached finalize (aborted, timed out, cancelled) is priced here: the dashboard's cost
            # per pipeline counts it as it counts finalize's (dimensions service + pipeline, like finalize's).
            with single_metric(
                name="RunCostUsd",
                unit=MetricUnit.NoUnit,
                value=result.cost_usd,
                namespace=METRICS_NAMESPACE,
                default_dimensions={"service": SERVICE},
            ) as metric:
                metric.add_dimension(name="pipeline", value=result.pipeline)
        logger.info(
            "execution ended",
            extra={
                "run_id": result.run_id,
                "pipeline": result.pipeline,
                "status": result.status,
                "ledger_state": result.ledger_state,
                "ledger_written": result.ledger_written,
                "teardown": result.teardown.as_dict(),
            },
        )
        return {"handled": True, "ledger_state": result.ledger_state, "teardown": result.teardown.as_dict()}
    if kind == "EMR Step Status Change":
        store = NoticeStore(CLIENTS.dynamodb, SETTINGS.claims_table)
        noticed = notice_step_event(received.detail, CLIENTS.emr, CLIENTS.sfn, store)
        if noticed == "answered":
            metrics.add_metric(name="StepEndsNoticed", unit=MetricUnit.Count, value=1)
        logger.info("step status change", extra={"detail": received.detail, "notice": noticed})
        return {"handled": True, "notice": noticed}
    if kind == "Scheduled Event":
        report = sweep(SETTINGS, CLIENTS, now)
        metrics.add_metric(name="OrphanClusters", unit=MetricUnit.Count, value=len(report.orphan_clusters))
        metrics.add_metric(name="OrphanJobRuns", unit=MetricUnit.Count, value=len(report.orphan_job_runs))
        metrics.add_metric(
            name="IdleApplicationsStopped", unit=MetricUnit.Count, value=len(report.idle_applications_stopped)
        )
        metrics.add_metric(name="RunSlotsReleased", unit=MetricUnit.Count, value=len(report.slots_released))
        metrics.add_metric(name="OrphanAlarmsDeleted", unit=MetricUnit.Count, value=len(report.orphan_alarms))
        metrics.add_metric(name="ActiveClusters", unit=MetricUnit.Count, value=report.active_clusters)
        metrics.add_metric(name="StepNoticesRecovered", unit=MetricUnit.Count, value=len(report.step_notices_recovered))
        logger.info("sweep done", extra={"findings": report.findings, "report": report.__dict__})
        return {"handled": True, "findings": report.findings}
    if kind == "AWS API Call via CloudTrail":
        reaction = react_to_cloudtrail(received.detail, SETTINGS, CLIENTS, now)
        if reaction.action == "auto-termination applied":
            metrics.add_metric(name="UnmanagedClustersCapped", unit=MetricUnit.Count, value=1)
        if reaction.action == "run stop recorded":
            metrics.add_metric(name="RunsStoppedByHand", unit=MetricUnit.Count, value=1)
        if reaction.action == "run cancelled":
            metrics.add_metric(name="RunsCancelledExternally", unit=MetricUnit.Count, value=len(reaction.run_ids))
        logger.info("cloudtrail reaction", extra=reaction.__dict__)
        return {"handled": True, "action": reaction.action}
    raise GuardrailEventError(
        f"detail-type: got {kind!r}; expected 'Step Functions Execution Status Change', 'Scheduled Event', "
        "'AWS API Call via CloudTrail' or 'EMR Step Status Change'"
    )
