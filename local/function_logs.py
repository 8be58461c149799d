"""What a function writes while it runs, delivered as Lambda delivers it to CloudWatch Logs.

Lambda captures everything a function's process writes to stdout and stderr (prints, logging handlers, Python
warnings, EMF metric blobs) and sends it, line by line, to the function's log group: `LoggingConfig.LogGroup` when
the function sets one (the app's functions do: CDK's `log_group=`), else `/aws/lambda/<function name>`; one log
stream per execution environment (a cold start), named `YYYY/MM/DD/[$LATEST]<32 hex>`.

Lambda adds its own lines around each invocation, by the function's `LoggingConfig.LogFormat`
(https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-logformat.html; the text lines as in
https://docs.aws.amazon.com/lambda/latest/dg/python-logging.html, "Log output"):

- Text: `START RequestId: <id> Version: $LATEST`, `END RequestId: <id>`, `REPORT RequestId: <id>\\tDuration: 2.02 ms\\t
  Billed Duration: 3 ms\\tMemory Size: 128 MB\\tMax Memory Used: 40 MB\\t` (`Init Duration: … ms\\t` after a cold
  start).
- JSON: `{"time": …, "type": "platform.start", "record": {"requestId": …, "version": "$LATEST"}}` and
  `{"time": …, "type": "platform.report", "record": {"requestId": …, "metrics": {"durationMs": …,
  "billedDurationMs": …, "memorySizeMB": …, "maxMemoryUsedMB": …[, "initDurationMs": …]}, "status": …}}`.

An unhandled error is logged as the Python runtime logs it: a JSON record with `errorMessage`, `errorType`,
`requestId` and `stackTrace`.

In-process, the twin cannot give each function its own process: while an invocation runs, `sys.stdout` and
`sys.stderr` are a `_Dispatch` stream that sends what the invoking thread writes to the invocation's capture and
what any other thread writes where it went before. Powertools' Logger binds its handler to the `sys.stdout` it sees
at cold start (inside an invocation, so the dispatcher), which keeps routing by thread on later invocations.
"""

from __future__ import annotations

import io
import json
import math
import resource
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("Text", "JSON")  # lambda CreateFunction LoggingConfig.LogFormat (botocore: LogFormat enum)
_CURRENT = threading.local()  # .capture: the Capture of the invocation this thread runs


def default_log_group(function_name: str) -> str:
    return f"/aws/lambda/{function_name}"


def new_log_stream(now: float | None = None) -> str:
    """`2024/06/01/[$LATEST]0123…` (Lambda's stream name: the environment's start date, version, 32 hex)."""
    day = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y/%m/%d")
    return f"{day}/[$LATEST]{uuid.uuid4().hex}"


@dataclass
class Capture:
    """One invocation's output: (epoch milliseconds, line) in the order written."""

    events: list[tuple[int, str]] = field(default_factory=list)
    _partial: str = ""
    _partial_at: int = 0

    def write(self, text: str) -> int:
        now = _millis()
        if not self._partial:
            self._partial_at = now
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self.events.append((self._partial_at, line))
            self._partial_at = now
        return len(text)

    def add(self, message: str) -> None:
        self.flush()
        self.events.append((_millis(), message))

    def flush(self) -> None:
        if self._partial:
            self.events.append((self._partial_at, self._partial))
            self._partial = ""


class _Dispatch(io.TextIOBase):
    """`sys.stdout`/`sys.stderr` during invocations: the invoking thread's writes go to its capture."""

    def __init__(self, name: str) -> None:
        self.name_ = name
        self.previous: TextIO = getattr(sys, name)

    def _target(self) -> Any:
        current = getattr(sys, self.name_)
        return self.previous if current is self else current

    def write(self, text: str) -> int:
        capture: Capture | None = getattr(_CURRENT, "capture", None)
        if capture is not None:
            return capture.write(text)
        written: int = self._target().write(text)
        return written

    def flush(self) -> None:
        if getattr(_CURRENT, "capture", None) is None:
            self._target().flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


_STDOUT = _Dispatch("stdout")
_STDERR = _Dispatch("stderr")


class capturing:  # noqa: N801 - a context manager, used as `with capturing(capture):`
    """Route this thread's stdout/stderr to `capture` for the block (invocations are serialised by the runtime's
    lock, so only one block is active at a time)."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture

    def __enter__(self) -> Capture:
        for name, dispatch in (("stdout", _STDOUT), ("stderr", _STDERR)):
            if getattr(sys, name) is not dispatch:
                dispatch.previous = getattr(sys, name)
                setattr(sys, name, dispatch)
        _CURRENT.capture = self.capture
        return self.capture

    def __exit__(self, *exc: object) -> None:
        _CURRENT.capture = None
        self.capture.flush()
        for name, dispatch in (("stdout", _STDOUT), ("stderr", _STDERR)):
            if getattr(sys, name) is dispatch:
                setattr(sys, name, dispatch.previous)


def _millis() -> int:
    return int(time.time() * 1000)


def _iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def max_memory_used_mb(memory_size_mb: int) -> int:
    """The twin's process peak RSS (Linux: KiB), capped at the function's memory size: the nearest honest figure
    in-process."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return int(min(max(peak_mb, 1), memory_size_mb))


def start_line(log_format: str, request_id: str, at: int) -> str:
    if log_format == "JSON":
        record = {"requestId": request_id, "version": "$LATEST"}
        return json.dumps({"time": _iso(at), "type": "platform.start", "record": record})
    return f"START RequestId: {request_id} Version: $LATEST"


def end_lines(
    log_format: str, request_id: str, *, at: int, duration_ms: float, memory_mb: int, init_ms: float | None, ok: bool
) -> list[str]:
    """Lambda's lines after an invocation: END and REPORT (Text) or platform.report (JSON). Billed duration: the
    duration rounded up to the millisecond (Lambda bills per 1 ms)."""
    billed = max(1, math.ceil(duration_ms))
    used = max_memory_used_mb(memory_mb)
    if log_format == "JSON":
        metrics: dict[str, Any] = {
            "durationMs": round(duration_ms, 2),
            "billedDurationMs": billed,
            "memorySizeMB": memory_mb,
            "maxMemoryUsedMB": used,
        }
        if init_ms is not None:
            metrics["initDurationMs"] = round(init_ms, 2)
        record = {"requestId": request_id, "metrics": metrics, "status": "success" if ok else "error"}
        return [json.dumps({"time": _iso(at), "type": "platform.report", "record": record})]
    init = f"Init Duration: {init_ms:.2f} ms\t" if init_ms is not None else ""
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
        f"Memory Size: {memory_mb} MB\tMax Memory Used: {used} MB\t{init}"
    )
    return [f"END RequestId: {request_id}", report]


def error_record(request_id: str, error_type: str, message: str, trace: list[str]) -> str:
    """The Python runtime's record of an unhandled error."""
    return json.dumps(
        {
            "timestamp": _iso(_millis()),
            "level": "ERROR",
            "errorMessage": message,
            "errorType": error_type,
            "requestId": request_id,
            "stackTrace": trace,
        }
    )
