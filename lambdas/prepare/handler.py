"""Prepare Lambda: the first state of every run (validates input, writes the manifest, fills defaults)."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from preparation import prepare_run

logger = Logger(service="autopilot-prepare")
tracer = Tracer(service="autopilot-prepare")
metrics = Metrics(namespace="EmrAutopilot", service="autopilot-prepare")


@cache
def _s3() -> Any:
    return boto3.client("s3")


@cache
def _emr() -> Any:
    return boto3.client("emr")


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Only pipelines on a long-running cluster call EMR here (to resolve the cluster).
    emr = _emr() if event["settings"].get("existing_cluster_json") else None
    result = prepare_run(event, _s3(), emr)
    pipeline = event["settings"]["pipeline"]
    metrics.add_dimension(name="pipeline", value=pipeline)
    if result["valid"]:
        run = result["run"]
        logger.info("run prepared", run_id=run["run_id"], objects=run["object_count"], manifest=run["manifest_uri"])
        metrics.add_metric(name="RunsPrepared", unit=MetricUnit.Count, value=1)
    else:
        logger.warning("invalid execution input", cause=result["cause"])
        metrics.add_metric(name="InvalidInputs", unit=MetricUnit.Count, value=1)
    return result
