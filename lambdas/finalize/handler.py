"""Finalize Lambda: the last state of an EMR-on-EC2 run (cluster, fleets, steps -> ledger update)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import aws_client
from finalization import FinalizeRequest, ScalingState, finalize_run

logger = Logger(service="autopilot-finalize")
tracer = Tracer(service="autopilot-finalize")
metrics = Metrics(namespace="EmrAutopilot", service="autopilot-finalize")


@cache
def _emr() -> Any:
    return aws_client("emr")


@cache
def _scaling() -> ScalingState | None:
    """Set when a pipeline scales from alarms: the table holding each cluster's scaling actions."""
    table = os.environ.get("STATE_TABLE", "").strip()
    return ScalingState(aws_client("dynamodb"), table) if table else None


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = FinalizeRequest.from_event(event)
    update = finalize_run(request, _emr(), scaling=_scaling())
    metrics.add_dimension(name="pipeline", value=request.pipeline)
    metrics.add_metric(name=f"Runs{request.outcome.title()}", unit=MetricUnit.Count, value=1)
    logger.info(
        "run finalized",
        run_id=request.run_id,
        state=update["state"],
        cluster_id=request.cluster_id,
        error=update.get("error"),
    )
    return update
