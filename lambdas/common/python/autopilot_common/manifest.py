"""The input manifest: the list of objects a run processes, stored in S3 so that execution input stays
small (10,000 objects would be ~2 MB inline; the Step Functions payload limit is 256 KiB)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from autopilot_common.keys import skip_reason
from autopilot_common.s3uri import s3_uri

if TYPE_CHECKING:
    from autopilot_common.clients import S3Client

MANIFEST_VERSION = 1
MANIFEST_PREFIX = "manifests"


@dataclass(frozen=True, order=True)
class ManifestObject:
    """One input object, with the key exactly as stored in S3 (raw, never URL-encoded)."""

    bucket: str
    key: str
    size: int
    etag: str = ""
    version_id: str | None = None
    # `url-decoded` when the event reported the key URL-encoded and the decoded key is the one that exists (the
    # router resolves keys against S3, `routing.key_forms`); None when the key is as reported.
    key_form: str | None = None

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)

    def as_json(self) -> dict[str, Any]:
        """The object as the manifest lists it (`key_form` only when set); `dataclasses.asdict` is several times
        slower, which a manifest per object in a per-object burst pays 1,000 times a batch."""
        listed: dict[str, Any] = {"bucket": self.bucket, "key": self.key, "size": self.size, "etag": self.etag,
                                  "version_id": self.version_id}  # fmt: skip
        if self.key_form:
            listed["key_form"] = self.key_form
        return listed

    def identity(self) -> str:
        """Stable identity of this version of the object (used for dedupe and execution names)."""
        return f"{self.bucket}/{self.key}\x00{self.version_id or ''}\x00{self.etag}"


@dataclass
class InputManifest:
    """Objects of one run, written as JSON to `s3://<artifacts>/manifests/<pipeline>/<run_id>.json`."""

    pipeline: str
    run_id: str
    objects: list[ManifestObject]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The router's claim keys of the object versions this run owns (jobs ignore them): a rejoining arrival checks
    # that all of them are claimed by the run before starting it.
    claims: list[str] = field(default_factory=list)
    # The execution's `trigger` block, so that a run resumed after a crash starts with its original input.
    trigger: dict[str, Any] | None = None
    # Older versions of a key that a newer one replaced within this run's window (they are claimed by this run and
    # not read): key, version id, etag, sequencer and the version that superseded them.
    superseded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def object_count(self) -> int:
        return len(self.objects)

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def to_json(self) -> str:
        body = {
            "version": MANIFEST_VERSION,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "object_count": self.object_count,
            "total_bytes": self.total_bytes,
            "objects": [o.as_json() for o in self.objects],
        }
        if self.claims:
            body["claims"] = self.claims
        if self.trigger is not None:
            body["trigger"] = self.trigger
        if self.superseded:
            body["superseded"] = self.superseded
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> InputManifest:
        body: dict[str, Any] = json.loads(text)
        if body.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version: got {body.get('version')!r}; expected {MANIFEST_VERSION}")
        return cls(
            pipeline=body["pipeline"],
            run_id=body["run_id"],
            created_at=body["created_at"],
            objects=[ManifestObject(**o) for o in body["objects"]],
            claims=[str(c) for c in body.get("claims") or []],
            trigger=body.get("trigger") if isinstance(body.get("trigger"), dict) else None,
            superseded=list(body.get("superseded") or []),
        )

    def write(self, s3: S3Client, bucket: str) -> str:
        """Store the manifest in `bucket` and return its URI. Writing the same run twice is harmless."""
        key = manifest_key(self.pipeline, self.run_id)
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=self.to_json().encode("utf-8"),
            ContentType="application/json",
        )
        return s3_uri(bucket, key)


def manifest_key(pipeline: str, run_id: str) -> str:
    return f"{MANIFEST_PREFIX}/{pipeline}/{run_id}.json"


@dataclass
class PartitionListing:
    """What a partition (a key prefix) holds: the objects its trigger accepts (as the router decides for arrivals:
    `keys.skip_reason` with the trigger's suffixes, zero-byte rule and marker) and every key prepare would read from
    the prefix (it keeps every non-hidden, non-empty object, whatever its suffix)."""

    objects: list[ManifestObject] = field(default_factory=list)
    read_by_prepare: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)


def list_partition(
    s3: S3Client,
    bucket: str,
    prefix: str,
    *,
    suffixes: Sequence[str] = (),
    ignore_zero_byte: bool = True,
    marker_name: str | None = None,
) -> PartitionListing:
    """Every object under `prefix` (ListObjectsV2, paginated), sorted into what the trigger accepts and what prepare
    would read: `emr-autopilot backfill` and scheduled firings list a partition with it."""
    listing = PartitionListing()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key, size = item["Key"], int(item["Size"])
            reason = skip_reason(
                key, size, suffixes=suffixes, ignore_zero_byte=ignore_zero_byte, marker_name=marker_name
            )
            if reason is None:
                etag = str(item.get("ETag", "")).strip('"')
                listing.objects.append(ManifestObject(bucket=bucket, key=key, size=size, etag=etag))
            if skip_reason(key, size) is None:
                listing.read_by_prepare.append(key)
    return listing
