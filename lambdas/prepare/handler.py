"""Prepare Lambda: the first state of every run (validates input, writes the manifest, fills defaults)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import Clients
from autopilot_common.observability import observability
from preparation import prepare_run

obs = observability("autopilot-prepare")
logger, metrics = obs.logger, obs.metrics
CLIENTS = Clients()


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Only pipelines on a long-running cluster call EMR here (to resolve the cluster).
    emr = CLIENTS.emr if event["settings"].get("existing_cluster_json") else None
    result = prepare_run(event, CLIENTS.s3, emr)
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
