"""Scaler Lambda: one bounded task-fleet step per "CloudWatch Alarm State Change" of a scaling alarm.

See `fleet_scaling` for what it decides and records. Environment: see `ScalerSettings.from_env`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import Clients
from autopilot_common.observability import observability
from fleet_scaling import ScalerSettings, alarm_of, scale_on_alarm

obs = observability("autopilot-scaler")
logger, metrics = obs.logger, obs.metrics
CLIENTS = Clients()
# Fails the cold start naming the bad variable; a pipeline's policy is read from SSM when its alarm fires.
SETTINGS = ScalerSettings.from_env(os.environ, lambda: CLIENTS.ssm)


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    alarm = alarm_of(event)
    outcome = scale_on_alarm(alarm, SETTINGS, CLIENTS, datetime.now(UTC))
    if outcome.result == "scaled":
        metrics.add_dimension(name="direction", value=str(outcome.direction))
        metrics.add_metric(name="ScalingActions", unit=MetricUnit.Count, value=1)
    elif outcome.result == "skipped":
        metrics.add_metric(name="ScalingSkipped", unit=MetricUnit.Count, value=1)
    logger.info(f"alarm {outcome.result}: {outcome.reason}", extra=outcome.as_dict())
    return outcome.as_dict()
