"""Scaler Lambda: one bounded task-fleet step per "CloudWatch Alarm State Change" of a scaling alarm.

See `scaling` for what it decides and records. Environment: see `ScalerSettings.from_env`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import aws_client
from scaling import Clients, ScalerSettings, alarm_of, scale_on_alarm

logger = Logger(service="autopilot-scaler")
tracer = Tracer(service="autopilot-scaler")
metrics = Metrics(namespace="EmrAutopilot", service="autopilot-scaler")

# Fails the cold start with one message naming the bad variable.
SETTINGS = ScalerSettings.from_env(os.environ)


@cache
def _clients() -> Clients:
    """Built on first use, so importing the module needs no AWS credentials or region."""

    return Clients(
        emr=aws_client("emr"),
        dynamodb=aws_client("dynamodb"),
        s3=aws_client("s3"),
        sfn=aws_client("stepfunctions"),
        cloudwatch=aws_client("cloudwatch"),
    )


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    alarm = alarm_of(event)
    outcome = scale_on_alarm(alarm, SETTINGS, _clients(), datetime.now(UTC))
    if outcome.result == "scaled":
        metrics.add_dimension(name="direction", value=str(outcome.direction))
        metrics.add_metric(name="ScalingActions", unit=MetricUnit.Count, value=1)
    elif outcome.result == "skipped":
        metrics.add_metric(name="ScalingSkipped", unit=MetricUnit.Count, value=1)
    logger.info(f"alarm {outcome.result}: {outcome.reason}", extra=outcome.as_dict())
    return outcome.as_dict()
