"""A run's notification as people read it: a subject and a short text, built by the finalize function (it can read
the run's logs) and published by the workflow (NotifySucceeded / NotifyFailure, SNS message attribute `state`).

FAILED: pipeline, run id, the one-line failure reason (`autopilot_common.causes.failure_reason`, as the CLI shows
it), cost, links, the ledger entry's S3 URI and the last lines of the driver's (or the last step's) log.
SUCCEEDED: pipeline, run id, duration, rows in and out, cost, links and the ledger entry's S3 URI.
The full entry is not in the message (SNS messages are limited to 256 KB): the ledger URI points at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from botocore.exceptions import ClientError

from autopilot_common.causes import failure_reason
from autopilot_common.driver_logs import find_driver_log, log_location, read_lines

if TYPE_CHECKING:
    from autopilot_common.clients import S3Client

# SNS Publish (botocore sns model, Subject): "UTF-8 text with no line breaks ..., and less than 100 characters long"
MAX_SUBJECT_CHARS = 99
LOG_TAIL_LINES = 20
MAX_LOG_LINE_CHARS = 300
LOG_STREAMS = ("stderr", "stdout")  # Spark's driver logs (and exceptions) go to stderr; some jobs print to stdout


class Notice(TypedDict):
    subject: str
    message: str


class LogTail(TypedDict):
    uri: str | None  # the log object read, None when there was none
    lines: list[str]
    note: str | None  # why there are no lines


def log_tail(s3: S3Client, log_uri: str | None, lines: int = LOG_TAIL_LINES) -> LogTail:
    """The last `lines` lines of the run's driver (or last step's) stderr, else stdout; never raises (a notification
    must go out even when the logs cannot be read)."""
    location = log_location(log_uri)
    if location is None:
        return {"uri": None, "lines": [], "note": "the run has no S3 log location"}
    try:
        for stream in LOG_STREAMS:
            log = find_driver_log(s3, *location, stream)
            if log is not None:
                text = [_cut(line) for line in read_lines(s3, log)[-lines:]]
                if text:
                    return {"uri": log.uri, "lines": text, "note": None}
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return {"uri": None, "lines": [], "note": f"the logs could not be read ({error.get('Code')})"}
    return {"uri": None, "lines": [], "note": f"no driver or step log under s3://{location[0]}/{location[1]} yet"}


def notice(entry: Mapping[str, Any], ledger_uri: str | None, tail: LogTail | None = None) -> Notice:
    """The notification of the run whose final ledger entry is `entry`."""
    state = str(entry.get("state"))
    pipeline, run_id = str(entry.get("pipeline")), str(entry.get("run_id"))
    lines = [
        f"EMR Autopilot run {state}",
        "",
        f"pipeline:  {pipeline}",
        f"run:       {run_id}",
        f"runtime:   {entry.get('runtime') or '-'}",
        f"duration:  {_duration(entry.get('started_at'), entry.get('ended_at'))}",
    ]
    if state == "FAILED":
        lines.append(f"reason:    {failure_reason(entry.get('error'), entry.get('cause')) or 'no reason recorded'}")
    else:
        metrics = entry.get("metrics") or {}
        rows = [f"{k.removeprefix('rows_')} {metrics[k]}" for k in ("rows_in", "rows_out") if k in metrics]
        lines.append(f"rows:      {', '.join(rows) if rows else 'not reported (the job wrote no _metrics.json)'}")
    lines.append(f"cost:      {cost_line(entry.get('cost'))}")
    links = entry.get("links") or {}
    if links:
        lines += ["", "links:"] + [f"  {name}: {url}" for name, url in links.items()]
    lines += ["", f"ledger entry: {ledger_uri or '-'}"]
    if tail is not None and state == "FAILED":
        if tail["lines"]:
            lines += ["", f"last {len(tail['lines'])} lines of {tail['uri']}:"] + [f"  {t}" for t in tail["lines"]]
        else:
            lines += ["", f"log: {tail['note']}"]
    subject = f"EMR Autopilot {pipeline}: run {state} ({run_id})"
    if len(subject) > MAX_SUBJECT_CHARS:
        subject = f"EMR Autopilot {pipeline}: run {state}"[:MAX_SUBJECT_CHARS]
    return {"subject": subject, "message": "\n".join(lines) + "\n"}


def cost_line(cost: Any) -> str:
    """`$0.1234 (price table ..., as of ...)`, or why there is no number."""
    if not isinstance(cost, Mapping):
        return "none recorded (no job run or transient cluster was started, or a shared cluster's run)"
    if cost.get("usd") is None:
        return f"unknown: {cost.get('reason') or 'no reason given'}"
    estimate = " (estimate)" if any("estimate" in str(n) for n in cost.get("notes") or []) else ""
    return f"${float(cost['usd']):.4f}{estimate} at list prices as of {cost.get('prices_as_of')}"


def _duration(started: Any, ended: Any) -> str:
    try:
        seconds = int((_parse(ended) - _parse(started)).total_seconds())
    except (TypeError, ValueError):
        return "-"
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h " if hours else "") + (f"{minutes}m " if hours or minutes else "") + f"{secs}s"


def _parse(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LOG_LINE_CHARS else line[: MAX_LOG_LINE_CHARS - 3] + "..."
