"""S3 URIs: `s3://bucket/key` with the key kept exactly as given (no URL decoding)."""

from __future__ import annotations

import re

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_s3_uri(uri: str, *, field: str = "uri") -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key); raise ValueError naming `field` otherwise."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"{field}: got {uri!r}; expected an S3 URI like 's3://bucket/key'")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{field}: got {uri!r}; the bucket name {bucket!r} is not a valid S3 bucket name")
    return bucket, key


def s3_uri(bucket: str, key: str = "") -> str:
    """The URI of an object or prefix."""
    return f"s3://{bucket}/{key}"
