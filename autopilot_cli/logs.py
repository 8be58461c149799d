"""A run's driver or step log from S3 (the layout under the run's `log_uri`: autopilot_common.driver_logs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from autopilot_cli.errors import OperationFailed
from autopilot_cli.ledger import RunRecord
from autopilot_common.driver_logs import STREAMS as STREAMS
from autopilot_common.driver_logs import LogObject, find_driver_log, log_location, read_lines
from autopilot_common.ledger import FINAL_STATES

POLL_SECONDS = 5.0  # EMR uploads driver logs every few seconds at most; polling faster only costs requests
_sleep = time.sleep  # the tests step the world forward here


def log_prefix(record: RunRecord) -> tuple[str, str]:
    """(bucket, prefix) of the run's logs; OperationFailed when the entry has no s3:// log URI."""
    location = log_location(record.raw.get("log_uri"))
    if location is None:
        raise OperationFailed(f"run {record.run_id} has no S3 log location in its ledger entry ({record.ledger_uri})")
    return location


def driver_log(s3: Any, record: RunRecord, stream: str = "stdout") -> LogObject | None:
    """The run's driver (or step) log object for `stream`, or None while there is none."""
    return find_driver_log(s3, *log_prefix(record), stream)


def no_log(record: RunRecord, stream: str) -> OperationFailed:
    bucket, prefix = log_prefix(record)
    return OperationFailed(
        f"no driver or step {stream} log for run {record.run_id} ({record.state}) under s3://{bucket}/{prefix} yet"
    )


def tail(s3: Any, record: RunRecord, stream: str, lines: int) -> tuple[LogObject, list[str]]:
    """The log object and its last `lines` lines; OperationFailed naming where it looked when there is none."""
    log = driver_log(s3, record, stream)
    if log is None:
        raise no_log(record, stream)
    return log, read_lines(s3, log)[-lines:] if lines > 0 else []


def follow_log(
    s3: Any, record: RunRecord, stream: str, lines: int, refresh: Callable[[], RunRecord | None]
) -> Iterator[str]:
    """The last `lines` lines, then new lines as the log grows, until the run's ledger state is final (one last
    read after that). `refresh` re-reads the run's ledger entry. OperationFailed when the run ended with no log."""
    shown: int | None = None
    current: RunRecord | None = record
    while True:
        final = current is None or current.state in FINAL_STATES
        log = driver_log(s3, record, stream)
        if log is not None:
            all_lines = read_lines(s3, log)
            if shown is None:
                shown = max(0, len(all_lines) - lines) if lines > 0 else len(all_lines)
            yield from all_lines[shown:]
            shown = max(shown, len(all_lines))
        if final:
            if log is None:
                raise no_log(current or record, stream)
            return
        _sleep(POLL_SECONDS)
        current = refresh()
