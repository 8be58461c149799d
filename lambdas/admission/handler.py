"""Admission Lambda: `acquire` (the workflow's AcquireRunSlot, waitForTaskToken) and `release` (ReleaseRunSlot).

A release after a failure (`error`: the workflow's caught error) also answers the failure as the ledger records it
(`autopilot_common.causes.ledger_cause`: never an empty cause, at most about 1 KB).

Environment: `ADMISSION_TABLE`, `ADMISSION_CAPS` (caps JSON), `LEDGER_BUCKET` (QUEUED ledger entries),
and the usual `POWERTOOLS_*` variables.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from autopilot_common.admission import (
    LEDGER_BUCKET_ENV,
    TABLE_ENV,
    AcquireRequest,
    Caps,
    Reservation,
    acquire,
    release,
)
from autopilot_common.causes import ledger_cause

logger = Logger(service="autopilot-admission")
tracer = Tracer(service="autopilot-admission")
metrics = Metrics(namespace="EmrAutopilot", service="autopilot-admission")

# Fail the cold start with one message naming what is missing or malformed.
TABLE = os.environ[TABLE_ENV]
CAPS = Caps.from_env(os.environ)
LEDGER_BUCKET = os.environ.get(LEDGER_BUCKET_ENV)
_RETRIES = Config(retries={"mode": "standard", "max_attempts": 6})


@cache
def _client(service: str) -> Any:
    return boto3.client(service, config=_RETRIES)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action = event.get("action")
    metrics.add_dimension(name="pipeline", value=str(event.get("pipeline", "unknown")))
    if action == "release":
        run_id = str(event["run_id"])
        hints: dict[str, Any] = {}
        if event.get("pipeline") and event.get("reservation"):
            hints = {"pipeline": str(event["pipeline"]), "reservation": Reservation.from_json(event["reservation"])}
        freed = release(_client("dynamodb"), _client("stepfunctions"), TABLE, run_id, CAPS, **hints)
        logger.info("run slot released" if freed else "run held no slot", run_id=run_id)
        result: dict[str, Any] = {"released": freed}
        if isinstance(event.get("error"), dict):  # a failed run: the failure as its ledger entry records it
            error = str(event["error"].get("Error") or "States.Runtime")
            result["failure"] = {"error": error, "cause": ledger_cause(error, event["error"].get("Cause"))}
        return result
    if action != "acquire":
        raise ValueError(f"action: got {action!r}; expected 'acquire' or 'release'")
    request = AcquireRequest.from_event(event)
    outcome = acquire(
        _client("dynamodb"),
        _client("stepfunctions"),
        _client("s3"),
        TABLE,
        CAPS,
        request,
        ledger_bucket=LEDGER_BUCKET,
    )
    metrics.add_metric(name=f"Runs{outcome.state.title()}", unit=MetricUnit.Count, value=1)
    logger.info("run slot requested", run_id=request.run_id, state=outcome.state, position=outcome.position)
    return {"state": outcome.state, "position": outcome.position, "admitted": list(outcome.admitted)}
