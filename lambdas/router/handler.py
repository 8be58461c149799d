"""Router Lambda: SQS batches of S3 arrivals, of Scheduler firings and of upstream run events (pipelines run
`after` others) -> deterministic Step Functions executions.

Environment: `MANIFEST_BUCKET`, `IDEMPOTENCY_TABLE`, `LEDGER_BUCKET`, `TOPIC_ARN`, optional
`IDEMPOTENCY_TTL_SECONDS` (default 7 days),
and the usual `POWERTOOLS_*` variables. The event source mapping must enable ReportBatchItemFailures.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.clients import Clients
from autopilot_common.observability import METRICS_NAMESPACE, observability
from claims import ClaimStore
from fan_in import FanInStore
from firings import Clock
from routing import SERVICE, BatchReport, Router, RouterSettings
from upstream import UpstreamRouter

obs = observability(SERVICE)
logger, metrics = obs.logger, obs.metrics
SETTINGS = RouterSettings.from_env(os.environ)  # fails the cold start naming the missing variable
CLIENTS = Clients()
# Report (never raise) a batch whose records all failed, so run failures can be added to the response.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def _router() -> Router:
    """Built on first use, so importing the module needs no AWS credentials or region."""
    claims = ClaimStore(CLIENTS.dynamodb, SETTINGS.idempotency_table, ttl_seconds=SETTINGS.ttl_seconds)
    upstream = UpstreamRouter(
        s3=CLIENTS.s3,
        sfn=CLIENTS.sfn,
        fan_in=FanInStore(CLIENTS.dynamodb, SETTINGS.idempotency_table, ttl_seconds=SETTINGS.ttl_seconds),
        manifest_bucket=SETTINGS.manifest_bucket,
        outputs_bucket=SETTINGS.ledger_bucket,
        sns=CLIENTS.sns,
        topic_arn=SETTINGS.topic_arn,
    )
    router = Router(
        s3=CLIENTS.s3,
        sfn=CLIENTS.sfn,
        claims=claims,
        manifest_bucket=SETTINGS.manifest_bucket,
        ledger_bucket=SETTINGS.ledger_bucket,
        sns=CLIENTS.sns,
        topic_arn=SETTINGS.topic_arn,
        upstream=upstream,
    )
    router.clock = Clock(router)
    return router


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    metrics.add_metric(name="RecordsReceived", unit=MetricUnit.Count, value=len(records))
    report = _router().route_batch(event, processor=processor, lambda_context=context)
    _publish(report)
    logger.info(
        "batch routed",
        extra={
            "records": len(records),
            "failed": len(report.failures),
            "runs_started": report.runs_started,
            "runs_duplicate": report.runs_duplicate,
        },
    )
    return report.response()


def _publish(report: BatchReport) -> None:
    """One EMF metric per (name, pipeline): dimensions service + pipeline, whatever the batch mixes."""
    for (name, pipeline), value in sorted(report.counts.items()):
        with single_metric(
            name=name,
            unit=MetricUnit.Count,
            value=value,
            namespace=METRICS_NAMESPACE,
            default_dimensions={"service": SERVICE},
        ) as metric:
            metric.add_dimension(name="pipeline", value=pipeline)
