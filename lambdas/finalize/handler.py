"""Finalize Lambda: the last state of an EMR-on-EC2 run (cluster, fleets, steps, cost -> ledger update).

Environment: optional `STATE_TABLE` (set when a pipeline scales from alarms: each cluster's scaling actions).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import Clients
from autopilot_common.observability import observability
from autopilot_common.pricing import shipped_prices
from autopilot_common.settings import Environment
from finalization import ClusterPricing, FinalizeRequest, ScalingState, finalize_run

obs = observability("autopilot-finalize")
logger, metrics = obs.logger, obs.metrics
STATE_TABLE = Environment(os.environ).optional("STATE_TABLE")
CLIENTS = Clients()


@cache
def _scaling() -> ScalingState | None:
    """Set when a pipeline scales from alarms: the table holding each cluster's scaling actions."""
    return ScalingState(CLIENTS.dynamodb, STATE_TABLE) if STATE_TABLE else None


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = FinalizeRequest.from_event(event)
    region = Environment(os.environ).required("AWS_REGION", "the function's region (Lambda sets it)")
    pricing = ClusterPricing(shipped_prices(), region, CLIENTS.ec2)
    update = finalize_run(request, CLIENTS.emr, scaling=_scaling(), pricing=pricing)
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
