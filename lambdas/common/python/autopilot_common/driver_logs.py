"""Where EMR writes a run's driver or step log under the run's `log_uri` (the ledger entry's), and reading it:

- EMR Serverless: `<log_uri>applications/<application id>/jobs/<job run id>/SPARK_DRIVER/stdout.gz`
- EMR on EC2 (a step): `<log_uri><cluster id>/steps/<step id>/stdout.gz`
- EMR on EKS: `<log_uri><virtual cluster id>/jobs/<job run id>/containers/spark-<id>/spark-<id>-driver/stdout.gz`

(and `stderr.gz` beside each). Executors', nodes' and containers' other logs are not the driver's and are skipped.
One home for the layout: the CLI (`emr-autopilot logs`) and the finalize function (a notification's log tail).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autopilot_common.clients import S3Client

STREAMS = ("stdout", "stderr")
S3_SCHEMES = ("s3://", "s3n://", "s3a://")


@dataclass(frozen=True)
class LogObject:
    """One log object of a run's driver."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def log_location(log_uri: str | None) -> tuple[str, str] | None:
    """(bucket, prefix ending in `/` or empty) of an `s3://` log URI, None when it is not one."""
    uri = str(log_uri or "")
    if not uri.startswith(S3_SCHEMES):
        return None
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    return bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def is_driver_log(relative: str, stream: str) -> bool:
    """Whether the key (relative to the run's log prefix) is a driver's or an EMR step's `stream` log."""
    parts = relative.split("/")
    if parts[-1] not in (f"{stream}.gz", stream):
        return False
    folders = parts[:-1]
    return "SPARK_DRIVER" in folders or any(p.endswith("-driver") for p in folders) or "steps" in folders[:-1]


def find_driver_log(s3: S3Client, bucket: str, prefix: str, stream: str = "stdout") -> LogObject | None:
    """The driver (or step) log object for `stream` under the prefix, the most recently written when there are
    several (an EMR on EC2 run's last step), or None while there is none."""
    found: list[tuple[Any, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if is_driver_log(item["Key"][len(prefix) :], stream):
                found.append((item.get("LastModified"), item["Key"]))
    if not found:
        return None
    return LogObject(bucket, max(found, key=lambda pair: (pair[0] is not None, pair[0] or 0, pair[1]))[1])


def read_lines(s3: S3Client, log: LogObject) -> list[str]:
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
