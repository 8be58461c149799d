"""Guardrail Lambda: cleanup when an execution ends badly, the orphan sweeper, CloudTrail reactions.

One function, four EventBridge rules (see `guardrails` for what each does). Environment: see
`GuardrailSettings.from_env`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from guardrails import Clients, GuardrailEventError, GuardrailSettings, clean_up_execution, react_to_cloudtrail, sweep

from autopilot_common.clients import aws_client

logger = Logger(service="autopilot-guardrail")
tracer = Tracer(service="autopilot-guardrail")
metrics = Metrics(namespace="EmrAutopilot", service="autopilot-guardrail")

# Fails the cold start with one message naming the bad variable.
SETTINGS = GuardrailSettings.from_env(os.environ)


@cache
def _clients() -> Clients:
    """Built on first use, so importing the module needs no AWS credentials or region."""

    return Clients(
        emr=aws_client("emr"),
        emr_serverless=aws_client("emr-serverless"),
        emr_containers=aws_client("emr-containers"),
        s3=aws_client("s3"),
        sns=aws_client("sns"),
        sfn=aws_client("stepfunctions"),
        cloudwatch=aws_client("cloudwatch"),
        dynamodb=aws_client("dynamodb"),
    )


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    received = EventBridgeEvent(event)
    now = datetime.now(UTC)
    kind = received.detail_type
    if kind == "Step Functions Execution Status Change":
        result = clean_up_execution(received.detail, SETTINGS, _clients(), now)
        if result is None:
            logger.info("not a state machine of this deployment", extra={"arn": received.detail.get("stateMachineArn")})
            return {"handled": False}
        metrics.add_metric(name="RunsCleanedUp", unit=MetricUnit.Count, value=1 if result.teardown.acted else 0)
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
    if kind == "Scheduled Event":
        report = sweep(SETTINGS, _clients(), now)
        metrics.add_metric(name="OrphanClusters", unit=MetricUnit.Count, value=len(report.orphan_clusters))
        metrics.add_metric(name="OrphanJobRuns", unit=MetricUnit.Count, value=len(report.orphan_job_runs))
        metrics.add_metric(
            name="IdleApplicationsStopped", unit=MetricUnit.Count, value=len(report.idle_applications_stopped)
        )
        metrics.add_metric(name="RunSlotsReleased", unit=MetricUnit.Count, value=len(report.slots_released))
        metrics.add_metric(name="OrphanAlarmsDeleted", unit=MetricUnit.Count, value=len(report.orphan_alarms))
        metrics.add_metric(name="ActiveClusters", unit=MetricUnit.Count, value=report.active_clusters)
        logger.info("sweep done", extra={"findings": report.findings, "report": report.__dict__})
        return {"handled": True, "findings": report.findings}
    if kind == "AWS API Call via CloudTrail":
        reaction = react_to_cloudtrail(received.detail, SETTINGS, _clients(), now)
        if reaction.action == "auto-termination applied":
            metrics.add_metric(name="UnmanagedClustersCapped", unit=MetricUnit.Count, value=1)
        if reaction.action == "run stop recorded":
            metrics.add_metric(name="RunsStoppedByHand", unit=MetricUnit.Count, value=1)
        if reaction.action == "run cancelled":
            metrics.add_metric(name="RunsCancelledExternally", unit=MetricUnit.Count, value=len(reaction.run_ids))
        logger.info("cloudtrail reaction", extra=reaction.__dict__)
        return {"handled": True, "action": reaction.action}
    raise GuardrailEventError(
        f"detail-type: got {kind!r}; expected 'Step Functions Execution Status Change', 'Scheduled Event' or "
        "'AWS API Call via CloudTrail'"
    )
