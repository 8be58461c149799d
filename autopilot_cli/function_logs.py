"""`logs --function NAME`: a function's CloudWatch Logs, read the same way from AWS and from the twin.

The short name (router, prepare, …) is one of the app's functions (`stacks.naming.FUNCTION_NAMES`); its deployed
name follows the app's naming (`stacks.naming.function_name`), and its log group is the one Lambda writes to:
GetFunctionConfiguration's `LoggingConfig.LogGroup` (the app's functions set their own group), else
`/aws/lambda/<function name>`. Events come from FilterLogEvents (paginated; `filterPattern` passed through as
CloudWatch Logs' filter pattern syntax).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from autopilot_cli.errors import OperationFailed, UsageProblem
from stacks.naming import FUNCTION_NAMES, function_name

POLL_SECONDS = 2.0  # --follow: Lambda delivers to CloudWatch Logs within seconds
_sleep = time.sleep  # the tests step the world forward here
# Keys of a Powertools log record shown in the line's head, not repeated among its fields.
_HEAD_KEYS = ("level", "message", "timestamp", "location", "service", "cold_start", "xray_trace_id")
_CONTEXT_KEYS = ("function_name", "function_memory_size", "function_arn", "function_request_id", "sampling_rate")
_SHOWN_FIELDS = ("run_id", "pipeline")  # shown when present, in this order, before the others


def log_group_of(lambda_client: Any, deployment: str, short_name: str) -> tuple[str, str]:
    """(function name, log group) of one of the app's functions; UsageProblem naming the known ones for an unknown
    name, OperationFailed when the deployment has no such function."""
    if short_name not in FUNCTION_NAMES:
        raise UsageProblem(f"--function {short_name!r} is not one of the app's functions: {', '.join(FUNCTION_NAMES)}")
    name = function_name(deployment, short_name)
    try:
        configuration = lambda_client.get_function_configuration(FunctionName=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise OperationFailed(f"function {name} ({short_name}) is not deployed in {deployment}") from None
        raise
    group = (configuration.get("LoggingConfig") or {}).get("LogGroup") or f"/aws/lambda/{name}"
    return name, str(group)


def events(logs: Any, group: str, *, start_ms: int | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
    """Every event of the group from `start_ms` on, oldest first (FilterLogEvents pages, all streams)."""
    request: dict[str, Any] = {"logGroupName": group}
    if start_ms is not None:
        request["startTime"] = start_ms
    if pattern:
        request["filterPattern"] = pattern
    found: list[dict[str, Any]] = []
    try:
        for page in logs.get_paginator("filter_log_events").paginate(**request):
            found.extend(page.get("events", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise OperationFailed(f"log group {group} does not exist (has the function run yet?)") from None
        raise
    return sorted(found, key=lambda e: (e.get("timestamp", 0), e.get("ingestionTime", 0), e.get("eventId", "")))


def follow(logs: Any, group: str, *, start_ms: int | None, pattern: str | None, lines: int) -> Iterator[dict[str, Any]]:
    """The last `lines` events, then new ones as they come (until interrupted)."""
    seen: set[str] = set()
    first = True
    while True:
        batch = [e for e in events(logs, group, start_ms=start_ms, pattern=pattern) if e.get("eventId") not in seen]
        shown = batch[-lines:] if first and lines > 0 else ([] if first else batch)
        seen.update(str(e.get("eventId")) for e in batch)
        yield from shown
        if batch:  # events of the same millisecond may still come: keep the last millisecond in the window
            start_ms = max(int(e.get("timestamp", 0)) for e in batch)
        first = False
        _sleep(POLL_SECONDS)


def _when(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render(event: dict[str, Any]) -> str:
    """One event for people: its time, then the message; JSON records (Powertools', Lambda's platform records,
    errors, EMF metrics) as `LEVEL message key=value…`."""
    when = _when(int(event.get("timestamp", 0)))
    message = str(event.get("message", "")).rstrip("\n")
    try:
        record = json.loads(message) if message.startswith("{") else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return f"{when} {message}"
    return f"{when} {_record(record)}"


def _record(record: dict[str, Any]) -> str:
    kind = record.get("type")
    if kind == "platform.start":
        return f"START RequestId: {record.get('record', {}).get('requestId')}"
    if kind == "platform.report":
        body = record.get("record", {})
        metrics = body.get("metrics", {})
        init = f" init {metrics['initDurationMs']} ms" if "initDurationMs" in metrics else ""
        return (
            f"REPORT RequestId: {body.get('requestId')} {body.get('status', '')}: {metrics.get('durationMs')} ms "
            f"(billed {metrics.get('billedDurationMs')} ms), memory {metrics.get('maxMemoryUsedMB')}/"
            f"{metrics.get('memorySizeMB')} MB{init}"
        )
    if "errorType" in record:
        trace = "".join(record.get("stackTrace") or []).rstrip()
        head = f"ERROR {record['errorType']}: {record.get('errorMessage', '')}"
        return f"{head}\n{trace}" if trace else head
    if "_aws" in record:
        names = [m.get("Name") for d in record["_aws"].get("CloudWatchMetrics", []) for m in d.get("Metrics", [])]
        values = " ".join(f"{n}={_value(record.get(n))}" for n in names if n)
        dims = " ".join(f"{k}={record[k]}" for k in _SHOWN_FIELDS if k in record)
        return f"METRIC {values}" + (f" ({dims})" if dims else "")
    level = str(record.get("level") or record.get("log_level") or "").upper()
    message = record.get("message", "")
    rest = {k: v for k, v in record.items() if k not in (*_HEAD_KEYS, *_CONTEXT_KEYS, "log_level")}
    ordered = [k for k in _SHOWN_FIELDS if k in rest] + [k for k in rest if k not in _SHOWN_FIELDS]
    fields = " ".join(f"{k}={_value(rest[k])}" for k in ordered)
    return " ".join(part for part in (level, str(message), fields) if part)


def _value(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
