"""A run's driver or step log from S3, as EMR writes it under the run's `log_uri` (the ledger entry's):

- EMR Serverless: `<log_uri>applications/<application id>/jobs/<job run id>/SPARK_DRIVER/stdout.gz`
- EMR on EC2 (a step): `<log_uri><cluster id>/steps/<step id>/stdout.gz`
- EMR on EKS: `<log_uri><virtual cluster id>/jobs/<job run id>/containers/spark-<id>/spark-<id>-driver/stdout.gz`

(and `stderr.gz` beside each). Executors', nodes' and containers' other logs are not the driver's and are skipped.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from autopilot_cli.errors import OperationFailed
from autopilot_cli.ledger import RunRecord
from autopilot_common.ledger import FINAL_STATES

STREAMS = ("stdout", "stderr")
POLL_SECONDS = 5.0  # EMR uploads driver logs every few seconds at most; polling faster only costs requests
_sleep = time.sleep  # the tests step the world forward here


@dataclass(frozen=True)
class LogObject:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def log_prefix(record: RunRecord) -> tuple[str, str]:
    """(bucket, prefix) of the run's logs; OperationFailed when the entry has no s3:// log URI."""
    log_uri = str(record.raw.get("log_uri") or "")
    if not log_uri.startswith(("s3://", "s3n://", "s3a://")):
        raise OperationFailed(f"run {record.run_id} has no S3 log location in its ledger entry ({record.ledger_uri})")
    bucket, _, prefix = log_uri.split("://", 1)[1].partition("/")
    return bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _is_driver_log(relative: str, stream: str) -> bool:
    parts = relative.split("/")
    if parts[-1] not in (f"{stream}.gz", stream):
        return False
    folders = parts[:-1]
    return "SPARK_DRIVER" in folders or any(p.endswith("-driver") for p in folders) or "steps" in folders[:-1]


def driver_log(s3: Any, record: RunRecord, stream: str = "stdout") -> LogObject | None:
    """The run's driver (or step) log object for `stream`, the most recently written when there are several (an
    EMR on EC2 run's last step), or None while there is none."""
    bucket, prefix = log_prefix(record)
    found: list[tuple[Any, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if _is_driver_log(item["Key"][len(prefix) :], stream):
                found.append((item.get("LastModified"), item["Key"]))
    if not found:
        return None
    return LogObject(bucket, max(found, key=lambda pair: (pair[0] is not None, pair[0] or 0, pair[1]))[1])


def read_lines(s3: Any, log: LogObject) -> list[str]:
    """The log's lines, gunzipped when it is gzip (by its magic bytes: EMR names them .gz), undecodable bytes
    replaced."""
    body: bytes = s3.get_object(Bucket=log.bucket, Key=log.key)["Body"].read()
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):  # an upload in progress: what could be read so far
            body = _partial_gunzip(body)
    return body.decode("utf-8", errors="replace").splitlines()


def _partial_gunzip(body: bytes) -> bytes:
    out = bytearray()
    reader = gzip.GzipFile(fileobj=io.BytesIO(body))
    try:
        while chunk := reader.read(65536):
            out += chunk
    except (OSError, EOFError):
        pass
    return bytes(out)


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
