"""Route S3 arrivals to Step Functions: SQS envelopes in, deterministic `StartExecution` calls out.

Each SQS record body is the envelope the pipeline's EventBridge rule builds::

    {"pipeline": "sales-daily",
     "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:autopilot-dev-sales-daily",
     "trigger": {"mode": "window", "prefix": "sales/", "suffixes": [".csv"], "marker_name": null,
                 "ignore_zero_byte": true},
     "event": {...the EventBridge event from aws.s3, unchanged...}}

The event is an S3 "Object Created" notification or, for a trigger whose `sources` (absent: only
`eventbridge`) include `cloudtrail`, a CloudTrail S3 data event ("AWS API Call via CloudTrail":
PutObject, CopyObject, CompleteMultipartUpload).

Delivery is at-least-once at every hop (S3 -> EventBridge -> SQS -> Lambda), and a crashed invocation's
messages come back grouped differently, so each object version is claimed once per pipeline by the run it
belongs to (`claims.ClaimStore`, DynamoDB), and every run's execution name is a hash of the object versions
it claims, so Step Functions itself rejects a second start of the same run:

1. A batch's arrivals are looked up in the claims. An arrival whose object a run already claimed rejoins
   that run: nothing new starts; a run that never started (its invocation crashed between claiming and
   starting) is started by its name, from its manifest, once all of its objects are claimed by it.
2. The other arrivals form new runs (per object, per window batch, per marker). Each run writes its
   manifest (with its claim keys and its trigger), claims every object, and only then starts. If another
   run claimed one of them meanwhile, the run releases its claims and its messages return to the queue
   (they rejoin the other run next time).

So a batch partly claimed by an earlier run splits: the claimed objects stay with their run, the rest make a
new one. No regrouping of redelivered messages can put an object version into two runs.

What is claimed (the arrival's identity):
- EventBridge-only pipelines: bucket, key, version id, etag and the S3 `sequencer`, all from the event
  (no S3 call, unless the key's URL-decoded form differs: see `key_forms`).
- Pipelines with `cloudtrail`: CloudTrail reports no sequencer, etag or size, so the router reads the
  object's current bucket, key, version id, etag and last-modified with HeadObject, whichever source
  reported it: both reports of one write claim the same identity and start one run. An object gone
  by then (404) is skipped (metric `ObjectsGone`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from autopilot_common.keys import folder_of, in_temporary_folder, is_marker, skip_reason
from autopilot_common.ledger import ledger_key, skipped_entry, write_entry
from autopilot_common.logical_dates import every_of, label, partition_of, template_problem
from autopilot_common.manifest import InputManifest, ManifestObject, manifest_key
from autopilot_common.names import is_legal_execution_name, run_id_for
from autopilot_common.settings import Environment
from claims import EARLIER_RUN, ClaimStore, date_claim_key

if TYPE_CHECKING:
    from autopilot_common.clients import S3Client, SFNClient, SNSClient

SERVICE = "autopilot-router"
DEFAULT_TTL_SECONDS = 7 * 24 * 60 * 60
MODES = ("per_object", "window", "marker")
UNKNOWN_PIPELINE = "unknown"
WAITING_FOR_MARKER = "waiting for marker"
OBJECT_GONE = "object gone before it was read"
COVERED_BY_MARKER = "written before its folder's marker (the marker's run lists it)"
LATE_OBJECTS = ("rerun", "notify")
AS_GIVEN, URL_DECODED = "as-given", "url-decoded"
SOURCES = ("eventbridge", "cloudtrail")
DEFAULT_SOURCES = ("eventbridge",)
OBJECT_CREATED = "Object Created"
DATA_EVENT = "AWS API Call via CloudTrail"
# CloudTrail S3 data events that create an object (the same writes S3 notifies as "Object Created").
OBJECT_WRITES = ("PutObject", "CopyObject", "CompleteMultipartUpload")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
# Messages EventBridge Scheduler puts on a pipeline's queue (`firings`): a schedule firing, an arrival deadline.
SCHEDULED, DEADLINE = "scheduled", "deadline"
FIRING_KINDS = (SCHEDULED, DEADLINE)

_STATE_MACHINE_ARN = re.compile(r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}$")
# A run id is `<pipeline>-<24 hex>`; checking a sample name validates the pipeline once, up front.
_SAMPLE_DIGEST = "0" * 24

logger = Logger(service=SERVICE, child=True)


class Metric(StrEnum):
    """CloudWatch metric names (namespace `EmrAutopilot`, dimensions service + pipeline)."""

    MALFORMED_RECORDS = "MalformedRecords"
    OBJECTS_SKIPPED = "ObjectsSkipped"
    OBJECTS_GONE = "ObjectsGone"
    DUPLICATE_OBJECTS = "DuplicateObjects"
    OBJECTS_REJOINED = "ObjectsRejoined"
    CLAIM_CONFLICTS = "ClaimConflicts"
    OBJECTS_ROUTED = "ObjectsRouted"
    EMPTY_MARKER_FOLDERS = "EmptyMarkerFolders"
    LATE_OBJECTS = "LateObjects"
    KEYS_DECODED = "KeysDecoded"
    SUPERSEDED_VERSIONS = "SupersededVersions"
    ARRIVALS_SKIPPED = "ArrivalsSkipped"
    RUNS_STARTED = "RunsStarted"
    RUNS_DUPLICATE = "RunsDuplicate"
    RUNS_FAILED = "RunsFailed"
    SCHEDULE_FIRINGS = "ScheduleFirings"
    EMPTY_PARTITIONS = "EmptyPartitions"
    DEADLINES_MISSED = "DeadlinesMissed"
    UPSTREAM_RUNS = "UpstreamRunsRecorded"  # SUCCEEDED upstream runs of a pipeline with `trigger.after`
    UPSTREAM_FAILURES = "UpstreamFailures"  # FAILED upstream runs (an UPSTREAM_FAILED entry each, when expected)


class MalformedRecord(ValueError):
    """An SQS record that is not a valid router envelope; the message says which field and why."""


class UpstreamRouting(Protocol):
    """Routes the envelopes of upstream run events (pipelines run `after` others: `upstream.UpstreamRouter`)."""

    def accepts(self, body: str) -> bool:
        """Whether the record body is such an envelope."""
        ...

    def handle(self, body: str, report: BatchReport) -> str:
        """Route it; raising fails the record (MalformedRecord: malformed, named)."""
        ...


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RouterSettings:
    """The router's environment: `MANIFEST_BUCKET`, `IDEMPOTENCY_TABLE`, `LEDGER_BUCKET`, `TOPIC_ARN`,
    `IDEMPOTENCY_TTL_SECONDS`."""

    manifest_bucket: str
    idempotency_table: str
    ledger_bucket: str
    topic_arn: str
    ttl_seconds: int = DEFAULT_TTL_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RouterSettings:
        """Read the settings; raise RuntimeError naming the first missing or invalid variable.

        `IDEMPOTENCY_TTL_SECONDS` defaults to 7 days (longer than the queue's 4-day retention, so a claim
        outlives every redelivery of its message).
        """
        read = Environment(env)
        return cls(
            manifest_bucket=read.required("MANIFEST_BUCKET", "the artifacts bucket that receives input manifests"),
            idempotency_table=read.required("IDEMPOTENCY_TABLE", "the DynamoDB table that holds object claims"),
            ledger_bucket=read.required(
                "LEDGER_BUCKET", "the outputs bucket that holds the run ledger (SKIPPED entries)"
            ),
            topic_arn=read.required("TOPIC_ARN", "the SNS topic told about arrivals that start nothing"),
            ttl_seconds=read.positive_int("IDEMPOTENCY_TTL_SECONDS", DEFAULT_TTL_SECONDS, "seconds"),
        )


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class TriggerSpec:
    """The pipeline's trigger, as carried by the envelope (see `config.model.Trigger`)."""

    mode: str
    prefix: str
    suffixes: tuple[str, ...] = ()
    marker_name: str | None = None
    ignore_zero_byte: bool = True
    sources: tuple[str, ...] = DEFAULT_SOURCES
    late_objects: str = "rerun"  # marker mode: objects written to a folder after its marker
    # `trigger.partition_template`: an arrival run whose objects lie in partitions claims their logical dates.
    partition_template: str | None = None

    @property
    def reads_objects(self) -> bool:
        """True when arrivals are identified by HeadObject (the trigger has CloudTrail among its sources)."""
        return "cloudtrail" in self.sources

    @classmethod
    def from_envelope(cls, raw: Any) -> TriggerSpec:
        """Validate the envelope's `trigger` block; raise MalformedRecord naming the bad field."""
        if not isinstance(raw, dict):
            raise MalformedRecord(f"trigger: got {short(raw)}; expected an object")
        mode = raw.get("mode")
        if mode not in MODES:
            raise MalformedRecord(f"trigger.mode: got {short(mode)}; expected one of {list(MODES)}")
        prefix = raw.get("prefix", "")
        if not isinstance(prefix, str):
            raise MalformedRecord(f"trigger.prefix: got {short(prefix)}; expected a string")
        suffixes = raw.get("suffixes") or []
        if not isinstance(suffixes, list) or not all(isinstance(s, str) and s for s in suffixes):
            raise MalformedRecord(f"trigger.suffixes: got {short(suffixes)}; expected a list of non-empty strings")
        marker_name = raw.get("marker_name")
        if mode == "marker":
            if not isinstance(marker_name, str) or not marker_name or "/" in marker_name:
                raise MalformedRecord(
                    f"trigger.marker_name: got {short(marker_name)}; expected a file name like '_SUCCESS'"
                )
        else:
            marker_name = None
        ignore_zero_byte = raw.get("ignore_zero_byte", True)
        if not isinstance(ignore_zero_byte, bool):
            raise MalformedRecord(f"trigger.ignore_zero_byte: got {short(ignore_zero_byte)}; expected true or false")
        sources = raw.get("sources", list(DEFAULT_SOURCES))
        if (
            not isinstance(sources, list)
            or not sources
            or not all(s in SOURCES for s in sources)
            or len(set(sources)) != len(sources)
        ):
            raise MalformedRecord(
                f"trigger.sources: got {short(sources)}; expected a list of distinct values from {list(SOURCES)}"
            )
        late_objects = raw.get("late_objects", "rerun")
        if late_objects not in LATE_OBJECTS:
            raise MalformedRecord(
                f"trigger.late_objects: got {short(late_objects)}; expected one of {list(LATE_OBJECTS)}"
            )
        template = raw.get("partition_template")
        if template is not None and (not isinstance(template, str) or template_problem(template)):
            problem = template_problem(template) if isinstance(template, str) else "expected a string"
            raise MalformedRecord(f"trigger.partition_template: got {short(template)}; {problem}")
        return cls(mode, prefix, tuple(suffixes), marker_name, ignore_zero_byte, tuple(sources), late_objects, template)


@dataclass(frozen=True)
class ObjectVersion:
    """What HeadObject says about an object's current version."""

    size: int
    etag: str
    version_id: str | None
    last_modified: str


@dataclass(frozen=True)
class ObjectEvent:
    """One reported object write for one pipeline, with the key exactly as stored in S3.

    `source` is `eventbridge` (an "Object Created" notification) or `cloudtrail` (a data event, which
    carries no size, etag or sequencer: `size` is None until `with_version` fills it from HeadObject).
    """

    pipeline: str
    state_machine_arn: str
    trigger: TriggerSpec
    bucket: str
    key: str
    size: int | None
    etag: str
    version_id: str | None
    sequencer: str
    event_time: str
    reason: str | None = None
    source: str = "eventbridge"
    last_modified: str | None = None
    error_code: str | None = None
    # Which form of the reported key exists in S3 (`as-given` or `url-decoded`; see `key_forms`).
    key_form: str = AS_GIVEN
    # Marker mode: written to its folder after the folder's marker (`late_objects` decides).
    late: bool = False

    @cached_property
    def identity(self) -> str:
        """Identity of this object version.

        EventBridge-only triggers: bucket + key + version id + etag + sequencer, from the event.
        Triggers with CloudTrail: bucket + key + version id + etag + last-modified, from HeadObject, so
        it is the same for whichever source reported the write.
        """
        if self.trigger.reads_objects:
            if self.last_modified is None:
                raise RuntimeError(f"{self.key!r}: a CloudTrail-triggered arrival is identified after HeadObject")
            return f"{self.manifest_object().identity()}\x00{self.last_modified}"
        return f"{self.manifest_object().identity()}\x00{self.sequencer}"

    def with_version(self, version: ObjectVersion) -> ObjectEvent:
        """This arrival, described by the object's current version (as read by HeadObject)."""
        return replace(
            self,
            size=version.size,
            etag=version.etag,
            version_id=version.version_id,
            last_modified=version.last_modified,
        )

    @cached_property
    def claim_key(self) -> str:
        """What is claimed in DynamoDB: the identity, scoped to the pipeline (pipelines may share objects)."""
        return f"{self.pipeline}\x00{self.identity}"

    def manifest_object(self) -> ManifestObject:
        if self.size is None:
            raise RuntimeError(f"{self.key!r}: size unknown until HeadObject (CloudTrail reports none)")
        return ManifestObject(
            bucket=self.bucket,
            key=self.key,
            size=self.size,
            etag=self.etag,
            version_id=self.version_id,
            key_form=None if self.key_form == AS_GIVEN else self.key_form,
        )


def raw_object_key(detail_object: Mapping[str, Any]) -> str:
    """`detail.object.key` of an EventBridge S3 event, byte-exact as reported.

    It is not decoded here (powertools' `S3EventBridgeNotificationObject.key` applies `unquote_plus` and turns
    `a+b` and `a%20b` into `a b`, which may name another object): whether the event encodes it is resolved
    against S3 (`key_forms`, `Router._resolve`).
    """
    key = detail_object.get("key")
    if not isinstance(key, str) or not key:
        raise MalformedRecord(f"event.detail.object.key: got {short(key)}; expected a non-empty string")
    return key


def data_event_key(request_parameters: Mapping[str, Any]) -> str:
    """`detail.requestParameters.key` of a CloudTrail S3 data event, byte-exact.

    CloudTrail logs request parameters decoded (the key as stored, like `resources[].ARN`), not
    URL-encoded as classic S3 notifications do, so it is never decoded here either.
    """
    key = request_parameters.get("key")
    if not isinstance(key, str) or not key:
        raise MalformedRecord(f"event.detail.requestParameters.key: got {short(key)}; expected a non-empty string")
    return key


def key_forms(key: str) -> tuple[str, ...]:
    """The reported key, then its URL-decoded form (`unquote_plus`) when that differs.

    Whether S3 URL-encodes `detail.object.key` in EventBridge events is not documented (its event reference has
    no key with a space or `+`); classic S3 notifications do, and two AWS-authored consumers of these events
    decode it (powertools' `S3EventBridgeNotificationObject.key`, Data Prepper's `getUrlDecodedKey()`). So a
    key whose decoded form differs is resolved against S3 (`Router._resolve`), never assumed; a key without `%`
    or `+` reads the same either way and is used as given.
    """
    decoded = unquote_plus(key)
    return (key,) if decoded == key else (key, decoded)


def newer_sequencer(a: str, b: str) -> bool:
    """True when sequencer `a` is later than `b` (same key): S3 says to right-pad the shorter with zeros and
    compare the strings ("Event message structure", S3 user guide)."""
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") > b.upper().ljust(width, "0")


def envelope_head(body: str) -> tuple[dict[str, Any], str, str]:
    """(the message as JSON, its `pipeline`, its `state_machine_arn`) of an SQS record body: what every message on a
    pipeline's queue starts with, whatever its kind (S3 arrivals, Scheduler firings, upstream run events);
    MalformedRecord naming the bad field."""
    try:
        message = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedRecord(f"body: not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise MalformedRecord(f"body: got {short(message)}; expected a JSON object")
    pipeline = message.get("pipeline")
    if not isinstance(pipeline, str) or not is_legal_execution_name(f"{pipeline}-{_SAMPLE_DIGEST}"):
        raise MalformedRecord(f"pipeline: got {short(pipeline)}; expected a pipeline name like 'sales-daily'")
    arn = message.get("state_machine_arn")
    if not isinstance(arn, str) or not _STATE_MACHINE_ARN.match(arn):
        raise MalformedRecord(f"state_machine_arn: got {short(arn)}; expected a Step Functions state machine ARN")
    return message, pipeline, arn


def parse_envelope(body: str) -> ObjectEvent:
    """Parse one SQS record body (the router envelope); raise MalformedRecord naming the bad field."""
    envelope, pipeline, arn = envelope_head(body)
    trigger = TriggerSpec.from_envelope(envelope.get("trigger"))
    event = envelope.get("event")
    if not isinstance(event, dict):
        raise MalformedRecord(f"event: got {short(event)}; expected the EventBridge event object")
    detail_type = event.get("detail-type")
    if event.get("source") != "aws.s3" or detail_type not in (OBJECT_CREATED, DATA_EVENT):
        raise MalformedRecord(
            f"event: source {short(event.get('source'))}, detail-type {short(detail_type)}; "
            f"expected an {OBJECT_CREATED!r} event or an {DATA_EVENT!r} S3 data event from 'aws.s3'"
        )
    source = "eventbridge" if detail_type == OBJECT_CREATED else "cloudtrail"
    if source not in trigger.sources:
        raise MalformedRecord(
            f"trigger.sources: got {list(trigger.sources)}; the event is a {detail_type!r} event "
            f"(source {source!r}), which this trigger does not use"
        )
    common: dict[str, Any] = {"pipeline": pipeline, "state_machine_arn": arn, "trigger": trigger}
    event_time = iso_event_time(event.get("time"))
    if source == "cloudtrail":
        return ObjectEvent(**common, **_data_event_fields(event), event_time=event_time, source=source)
    return ObjectEvent(**common, **_object_created_fields(event), event_time=event_time)


def _object_created_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """bucket, key, size, etag, version_id, sequencer and reason of an S3 "Object Created" event."""
    detail = _object_field(event, "detail", "event")
    bucket = _object_field(detail, "bucket", "event.detail").get("name")
    if not isinstance(bucket, str) or not bucket:
        raise MalformedRecord(f"event.detail.bucket.name: got {short(bucket)}; expected a bucket name")
    obj = _object_field(detail, "object", "event.detail")
    key = raw_object_key(obj)
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedRecord(f"event.detail.object.size: got {short(size)}; expected a byte count")
    # Real events say `etag`; moto's EventBridge twin says `eTag`.
    etag = obj.get("etag", obj.get("eTag")) or ""
    version_id = obj.get("version-id")
    sequencer = obj.get("sequencer") or ""
    if not isinstance(etag, str) or not isinstance(sequencer, str) or not isinstance(version_id, str | None):
        raise MalformedRecord("event.detail.object: etag, version-id and sequencer must be strings")
    reason = detail.get("reason")
    return {
        "bucket": bucket,
        "key": key,
        "size": size,
        "etag": etag.strip('"'),
        "version_id": version_id or None,
        "sequencer": sequencer,
        "reason": reason if isinstance(reason, str) else None,
    }


def _data_event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """bucket, key, version_id (when versioned), reason (the API call) and error_code of a CloudTrail S3
    data event; size and etag stay unknown (CloudTrail reports neither)."""
    detail = _object_field(event, "detail", "event")
    if detail.get("eventSource") != "s3.amazonaws.com":
        raise MalformedRecord(
            f"event.detail.eventSource: got {short(detail.get('eventSource'))}; expected 's3.amazonaws.com'"
        )
    name = detail.get("eventName")
    if name not in OBJECT_WRITES:
        raise MalformedRecord(f"event.detail.eventName: got {short(name)}; expected one of {list(OBJECT_WRITES)}")
    params = _object_field(detail, "requestParameters", "event.detail")
    bucket = params.get("bucketName")
    if not isinstance(bucket, str) or not bucket:
        raise MalformedRecord(f"event.detail.requestParameters.bucketName: got {short(bucket)}; expected a bucket name")
    key = data_event_key(params)
    response = detail.get("responseElements")
    version_id = response.get("x-amz-version-id") if isinstance(response, dict) else None
    error_code = detail.get("errorCode")
    return {
        "bucket": bucket,
        "key": key,
        "size": None,
        "etag": "",
        "version_id": version_id if isinstance(version_id, str) and version_id != "null" else None,
        "sequencer": "",
        "reason": name,
        "error_code": str(error_code) if error_code else None,
    }


def object_skip_reason(event: ObjectEvent) -> str | None:
    """Why this arrival starts nothing by itself, or None when it does.

    Marker mode: only the marker (outside temporary folders) counts; anything else is "waiting for marker".
    Other modes: `keys.skip_reason` with the trigger's suffixes and zero-byte rule (checked once the size
    is known: a CloudTrail report gets it from HeadObject). A failed API call wrote nothing.
    """
    if event.error_code is not None:
        return f"failed call ({event.error_code})"
    trigger = event.trigger
    if trigger.marker_name is not None and not event.late:
        if not is_marker(event.key, trigger.marker_name):
            return WAITING_FOR_MARKER
        return "marker inside a temporary folder" if in_temporary_folder(event.key) else None
    return data_skip_reason(event)


def data_skip_reason(event: ObjectEvent) -> str | None:
    """Why this object is not data for its pipeline (suffixes, zero bytes, temporary, hidden, a marker), or None."""
    trigger = event.trigger
    return skip_reason(
        event.key,
        event.size or 0,
        suffixes=trigger.suffixes,
        ignore_zero_byte=trigger.ignore_zero_byte and event.size is not None,
        marker_name=trigger.marker_name,
    )


def read_current_version(s3: S3Client, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
    """HeadObject of the object's current version (or of `version_id`); None when there is none (404: deleted,
    never written, or not that version).

    Other errors (throttling after the client's retries, AccessDenied, ...) propagate.
    """
    try:
        if version_id:
            head = s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
        else:
            head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND or code == "NoSuchVersion" or status == 404:
            return None
        if version_id and (code in ("InvalidArgument", "400") or status == 400):
            return None  # not a version id of this bucket (e.g. unversioned): a HEAD's 400 has no error code
        raise
    modified = head["LastModified"]
    version_id = head.get("VersionId")
    return ObjectVersion(
        size=int(head["ContentLength"]),
        etag=str(head.get("ETag", "")).strip('"'),
        version_id=version_id if isinstance(version_id, str) and version_id != "null" else None,
        last_modified=modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(modified, datetime)
        else str(modified),
    )


def _object_field(parent: Mapping[str, Any], name: str, path: str) -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise MalformedRecord(f"{path}.{name}: got {short(value)}; expected an object")
    return value


def iso_event_time(raw: Any) -> str:
    """The event's `time` as ISO 8601 UTC (`2024-06-01T10:00:00Z`), the format EventBridge uses."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        # moto's EventBridge twin sends epoch seconds.
        return datetime.fromtimestamp(raw, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(raw, str):
        try:
            datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return raw
    raise MalformedRecord(f"event.time: got {short(raw)}; expected an ISO 8601 timestamp")


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- runs


@dataclass
class Accepted:
    """An object arrival this batch owns, and the SQS message that brought it."""

    event: ObjectEvent
    message_id: str


@dataclass
class RunPlan:
    """One run to start: its pipeline, state machine, run id and the arrivals that feed it."""

    pipeline: str
    state_machine_arn: str
    mode: str
    run_id: str
    sources: list[Accepted]

    @property
    def trigger_event(self) -> ObjectEvent:
        """The arrival that came first (earliest event time, then key): the run's `trigger` block."""
        return min((s.event for s in self.sources), key=lambda e: (_sortable_time(e.event_time), e.key))

    @property
    def message_ids(self) -> list[str]:
        return list(dict.fromkeys(s.message_id for s in self.sources))

    def objects(self) -> tuple[list[ManifestObject], list[dict[str, Any]]]:
        """(what the run reads, the versions it supersedes): one entry per key, the newest version (by S3's
        sequencer, else last-modified) when a window holds two writes of one key. Every version stays claimed
        by this run; the older ones are listed as superseded (with the version that replaced them)."""
        newest: dict[tuple[str, str], ObjectEvent] = {}
        for source in self.sources:
            event = source.event
            where = (event.bucket, event.key)
            current = newest.get(where)
            if current is None or _is_newer(event, current):
                newest[where] = event
        superseded = [
            {
                "key": s.event.key,
                "version_id": s.event.version_id,
                "etag": s.event.etag,
                "sequencer": s.event.sequencer or None,
                "superseded_by": {"version_id": winner.version_id, "etag": winner.etag},
            }
            for s in self.sources
            if (winner := newest[(s.event.bucket, s.event.key)]) is not s.event
        ]
        return [e.manifest_object() for e in newest.values()], superseded


@dataclass(frozen=True)
class _PreparedRun:
    """A new run whose manifest is written: what claiming and starting it need."""

    plan: RunPlan
    manifest_uri: str
    object_count: int
    trigger: dict[str, Any]
    dates: list[str]  # the logical dates of the partitions its objects lie in (`partition_dates`)
    log: dict[str, object]


def _is_newer(a: ObjectEvent, b: ObjectEvent) -> bool:
    if a.sequencer and b.sequencer:
        return newer_sequencer(a.sequencer, b.sequencer)
    return (a.last_modified or a.event_time, a.event_time) > (b.last_modified or b.event_time, b.event_time)


def plan_runs(accepted: Sequence[Accepted]) -> list[RunPlan]:
    """Group owned arrivals into runs: one per object (`per_object`), one per pipeline per batch
    (`window`), one per marker (`marker`), one per folder per batch for objects written after their folder's
    marker (`late`, with `late_objects: rerun`). Run ids are deterministic: `names.run_id_for`."""
    groups: dict[tuple[str, str, str], list[Accepted]] = {}
    for item in accepted:
        event = item.event
        mode = "late" if event.late else event.trigger.mode
        groups.setdefault((event.pipeline, event.state_machine_arn, mode), []).append(item)
    plans: list[RunPlan] = []
    for (pipeline, arn, mode), items in groups.items():
        if mode == "window":
            batches = [items]
        elif mode == "late":
            folders: dict[str, list[Accepted]] = {}
            for item in items:
                folders.setdefault(folder_of(item.event.key), []).append(item)
            batches = list(folders.values())
        else:
            batches = [[item] for item in items]
        for sources in batches:
            run_id = run_id_for(pipeline, [s.event.identity for s in sources])
            plans.append(RunPlan(pipeline, arn, mode, run_id, sources))
    return plans


def list_marker_folder(s3: S3Client, marker: ObjectEvent, written_by: str | None = None) -> list[ManifestObject]:
    """Every data object under the marker's folder (ListObjectsV2, paginated, so 10,000+ objects work).

    The trigger's suffixes and zero-byte rule apply; markers, hidden and temporary files are skipped. With
    `written_by` (the marker's last-modified, `%Y-%m-%dT%H:%M:%SZ`), objects written after the marker are left
    out: they are late objects, which `late_objects` handles (so no object is in both runs).
    """
    trigger = marker.trigger
    folder = folder_of(marker.key)
    objects: list[ManifestObject] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=marker.bucket, Prefix=folder):
        for item in page.get("Contents", []):
            key, size = item["Key"], int(item["Size"])
            if not key.startswith(trigger.prefix):
                continue
            reason = skip_reason(
                key,
                size,
                suffixes=trigger.suffixes,
                ignore_zero_byte=trigger.ignore_zero_byte,
                marker_name=trigger.marker_name,
            )
            if reason is None and written_by is not None and _stamp(item.get("LastModified")) > written_by:
                continue
            if reason is None:
                objects.append(
                    ManifestObject(bucket=marker.bucket, key=key, size=size, etag=str(item.get("ETag", "")).strip('"'))
                )
    return objects


def _stamp(value: Any) -> str:
    """A last-modified time as `%Y-%m-%dT%H:%M:%SZ` (S3 gives whole seconds), comparable as a string."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value or "")


def execution_trigger(plan: RunPlan) -> dict[str, Any]:
    """The run's `trigger` block: the mode and the arrival that came first."""
    first = plan.trigger_event
    trigger: dict[str, Any] = {
        "type": "s3",
        "mode": "marker" if plan.mode == "late" else plan.mode,
        "bucket": first.bucket,
        "first_key": first.key,
        "event_time": first.event_time,
    }
    if plan.mode == "late":
        trigger["late_objects"] = True
        trigger["marker_key"] = folder_of(first.key) + str(first.trigger.marker_name)
    return trigger


def partition_dates(template: str | None, keys: Iterable[str]) -> list[str]:
    """The logical dates (`logical_dates.label`) of the `partition_template` partitions the keys lie in, sorted; empty
    without a template or when no key lies in a partition."""
    if template is None:
        return []
    every = every_of(template)
    found = {partition_of(template, key) for key in keys}
    return sorted(label(moment, every) for moment in found if moment is not None)


def execution_input(pipeline: str, manifest_uri: str, object_count: int, trigger: Mapping[str, Any]) -> dict[str, Any]:
    """The execution input: a pointer to the manifest, never the object list (payload limit 256 KiB)."""
    return {"pipeline": pipeline, "manifest": manifest_uri, "object_count": object_count, "trigger": dict(trigger)}


def execution_arn(state_machine_arn: str, run_id: str) -> str:
    """The ARN of the execution named `run_id` of a state machine."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{run_id}"


def execution_exists(sfn: SFNClient, state_machine_arn: str, run_id: str) -> bool:
    """Whether the run's execution was started (DescribeExecution; ExecutionDoesNotExist: not started)."""
    try:
        sfn.describe_execution(executionArn=execution_arn(state_machine_arn, run_id))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
            return False
        raise
    return True


def start_execution(sfn: SFNClient, state_machine_arn: str, run_id: str, payload: Mapping[str, Any]) -> bool:
    """StartExecution named `run_id`; True when started, False when the name exists (a duplicate run).

    Other errors propagate after the client's own retries.
    """
    try:
        sfn.start_execution(
            stateMachineArn=state_machine_arn,
            name=run_id,
            input=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
            return False
        raise
    return True


def record_unstarted(
    s3: S3Client,
    bucket: str,
    sns: SNSClient | None,
    topic_arn: str | None,
    entry: Mapping[str, Any],
    subject: str,
    *,
    notify: bool = True,
) -> str:
    """Write the ledger entry of a run that did not start (SKIPPED, MISSED, UPSTREAM_FAILED, FAILED before starting;
    dated by its `started_at`, so a redelivery rewrites it) and, when `notify`, tell the topic, if any (`subject`
    after the pipeline; message attributes `pipeline` and `state`). Returns the entry's key."""
    pipeline, state = str(entry["pipeline"]), str(entry["state"])
    key = ledger_key(pipeline, _sortable_time(str(entry["started_at"])), str(entry["run_id"]))
    write_entry(s3, bucket, key, entry)
    if notify and sns is not None and topic_arn:
        sns.publish(
            TopicArn=topic_arn,
            Subject=f"EMR Autopilot: {pipeline} {subject}"[:100],
            Message=json.dumps({**entry, "ledger": f"s3://{bucket}/{key}"}, ensure_ascii=False),
            MessageAttributes={
                "pipeline": {"DataType": "String", "StringValue": pipeline},
                "state": {"DataType": "String", "StringValue": state},
            },
        )
    return key


def _sortable_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the batch


@dataclass
class BatchReport:
    """What one batch did: failed messageIds, metric counts per (metric, pipeline), runs and skips."""

    failures: list[str] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    runs_started: list[str] = field(default_factory=list)
    runs_duplicate: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def count(self, metric: Metric, pipeline: str, value: int = 1) -> None:
        self.counts[(metric.value, pipeline)] += value

    def fail(self, message_ids: Iterable[str]) -> None:
        """Add messageIds to the failures, once each, in order."""
        known = set(self.failures)
        for message_id in message_ids:
            if message_id not in known:
                known.add(message_id)
                self.failures.append(message_id)

    def response(self) -> dict[str, list[dict[str, str]]]:
        """The Lambda partial batch response (`ReportBatchItemFailures`)."""
        return {"batchItemFailures": [{"itemIdentifier": m} for m in self.failures]}


@dataclass
class _Batch:
    """State of one batch: the report and the arrivals to route (by claim key: copies of one object collapse)."""

    report: BatchReport = field(default_factory=BatchReport)
    accepted: dict[str, Accepted] = field(default_factory=dict)
    # HeadObject results by (bucket, key): both sources' reports of one object in a batch read it once.
    versions: dict[tuple[str, str, str | None], ObjectVersion | None] = field(default_factory=dict)


class FiringHandler(Protocol):
    """What handles the Scheduler's messages on the queues (`firings.Clock`)."""

    def handle(self, body: str, report: BatchReport) -> str: ...


def firing_kind(body: str) -> str | None:
    """`scheduled` or `deadline` for a Scheduler message (its `kind`), None for an arrival envelope."""
    try:
        kind = json.loads(body).get("kind")
    except (TypeError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


class Router:
    """Routes SQS batches of envelopes to Step Functions executions.

    `s3` writes (and on a rejoin reads) manifests and lists marker folders, `sfn` starts executions, `claims`
    holds which run owns each object version (for `ttl_seconds`, default 7 days, longer than the queue's
    retention).
    """

    def __init__(
        self,
        *,
        s3: S3Client,
        sfn: SFNClient,
        claims: ClaimStore,
        manifest_bucket: str,
        ledger_bucket: str,
        sns: SNSClient | None = None,
        topic_arn: str | None = None,
        clock: FiringHandler | None = None,
        upstream: UpstreamRouting | None = None,
    ) -> None:
        self.s3 = s3
        self.sfn = sfn
        self.upstream = upstream
        self.manifest_bucket = manifest_bucket
        self.claims = claims
        self.ledger_bucket = ledger_bucket
        self.sns = sns
        self.topic_arn = topic_arn
        self.clock = clock  # schedule firings and arrival deadlines; None: such a message is malformed here

    def route_batch(
        self,
        event: Mapping[str, Any],
        *,
        lambda_context: LambdaContext,
        processor: BatchProcessor | None = None,
    ) -> BatchReport:
        """Route every record's object to its run (an existing one, or a new one) and start what must start;
        return the report (see `BatchReport.response`).

        A malformed record fails alone; a run that cannot be started (or loses a claim race) fails every record
        that fed it. `processor` defaults to a `BatchProcessor(EventType.SQS)` that reports (rather than
        raises) a batch where every record failed.
        """
        processor = processor or BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        batch = _Batch()

        def handle(record: SQSRecord) -> str:
            return self._handle_record(record, batch)

        records = list(event.get("Records") or [])
        with processor(records=records, handler=handle):
            processor.process()
        batch.report.fail(str(item["itemIdentifier"]) for item in processor.response()["batchItemFailures"])
        try:
            owners = self.claims.owners(batch.accepted)
        except Exception:
            logger.exception("claims not readable; every routed record returns to the queue")
            batch.report.fail(a.message_id for a in batch.accepted.values())
            return batch.report
        rejoining: dict[str, list[Accepted]] = {}
        for key, item in batch.accepted.items():
            if key in owners:
                rejoining.setdefault(owners[key], []).append(item)
        for run_id, items in rejoining.items():
            self._rejoin(run_id, items, batch.report)
        fresh = [item for key, item in batch.accepted.items() if key not in owners]
        self._start_runs(plan_runs(fresh), batch.report)
        return batch.report

    def _handle_record(self, record: SQSRecord, batch: _Batch) -> str:
        """Parse, filter and claim one record; return what happened. Raising fails just this record."""
        message_id, report = record.message_id, batch.report
        if firing_kind(record.body) is not None:
            return self._fire(record, batch)
        try:
            if self.upstream is not None and self.upstream.accepts(record.body):
                return self.upstream.handle(record.body, report)
            event = parse_envelope(record.body)
        except MalformedRecord as exc:
            pipeline = _pipeline_hint(record.body)
            logger.warning("malformed record", message_id=message_id, pipeline=pipeline, reason=str(exc))
            report.count(Metric.MALFORMED_RECORDS, pipeline)
            raise
        log: dict[str, object] = {
            "pipeline": event.pipeline,
            "bucket": event.bucket,
            "key": event.key,
            "message_id": message_id,
        }
        reason = object_skip_reason(event)
        if reason == WAITING_FOR_MARKER and data_skip_reason(event) is None:
            reason, event = self._in_marked_folder(event, batch, log)
            if reason == "late":
                return "late"
        elif reason is None and (event.trigger.reads_objects or len(key_forms(event.key)) > 1):
            resolved = self._resolve(event, batch, log)
            if resolved is None:
                self._not_found(event, batch, log)
                return "not found"
            event = resolved
            reason = object_skip_reason(event)  # now with the size: the zero-byte rule
        if reason is not None:
            logger.info("object skipped", extra={**log, "reason": reason})
            report.count(Metric.OBJECTS_SKIPPED, event.pipeline)
            report.skipped.append((event.key, reason))
            return "skipped"
        key = event.claim_key
        if key in batch.accepted:
            logger.info("duplicate object in the batch", extra={**log, "first": batch.accepted[key].message_id})
            report.count(Metric.DUPLICATE_OBJECTS, event.pipeline)
            return "duplicate"
        batch.accepted[key] = Accepted(event, message_id)
        return "accepted"

    def _fire(self, record: SQSRecord, batch: _Batch) -> str:
        """A Scheduler message: handled on its own, at once (it is one run or one check, never grouped with
        arrivals); raising fails just this record."""
        if self.clock is None:
            raise MalformedRecord("kind: a Scheduler message reached a router without a clock")
        try:
            return self.clock.handle(record.body, batch.report)
        except MalformedRecord as exc:
            pipeline = _pipeline_hint(record.body)
            logger.warning("malformed firing", message_id=record.message_id, pipeline=pipeline, reason=str(exc))
            batch.report.count(Metric.MALFORMED_RECORDS, pipeline)
            raise

    def _head(self, batch: _Batch, bucket: str, key: str, version_id: str | None = None) -> ObjectVersion | None:
        """HeadObject, once per (bucket, key, version) per batch. Errors other than 404 propagate (the record fails
        and SQS redelivers it)."""
        where = (bucket, key, version_id)
        if where not in batch.versions:
            batch.versions[where] = read_current_version(self.s3, bucket, key, version_id)
        return batch.versions[where]

    def _resolve(self, event: ObjectEvent, batch: _Batch, log: Mapping[str, object]) -> ObjectEvent | None:
        """The arrival with the key that exists in S3 (`key_forms`: as given, then URL-decoded) and, for pipelines
        with CloudTrail, described by the object's current version. None when the object exists under neither.

        An EventBridge report keeps its identity from the event: with a version id, HeadObject asks for exactly
        that version; else the form whose etag is the event's wins, and a form that exists with another etag (the
        key was overwritten since) is the fallback.
        """
        pinned = None if event.trigger.reads_objects else event.version_id
        fallback: ObjectEvent | None = None
        for form, key in zip((AS_GIVEN, URL_DECODED), key_forms(event.key), strict=False):
            try:
                version = self._head(batch, event.bucket, key, pinned)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                logger.warning("object not readable; will retry", extra={**log, "key_tried": key, "error": code})
                raise
            if version is None:
                continue
            found = replace(event, key=key, key_form=form)
            if event.trigger.reads_objects:
                found = found.with_version(version)
            elif event.etag and version.etag != event.etag:
                fallback = fallback or found
                continue
            return self._resolved(found, batch, log)
        return self._resolved(fallback, batch, log) if fallback else None

    def _resolved(self, event: ObjectEvent, batch: _Batch, log: Mapping[str, object]) -> ObjectEvent:
        if event.key_form == URL_DECODED:
            logger.info("reported key is URL-encoded; the decoded key exists", extra={**log, "resolved_key": event.key})
            batch.report.count(Metric.KEYS_DECODED, event.pipeline)
        return event

    def _not_found(self, event: ObjectEvent, batch: _Batch, log: Mapping[str, object]) -> None:
        """An arrival whose object exists under no form of its key: a SKIPPED ledger entry and a notification (the
        record then succeeds; if they cannot be written it fails and SQS redelivers it)."""
        forms = key_forms(event.key)
        tried = " nor ".join(f"{f!r}" for f in forms)
        reason = f"{OBJECT_GONE}: no object under {tried}" + (
            f" (version {event.version_id})" if event.version_id and not event.trigger.reads_objects else ""
        )
        logger.warning("object skipped", extra={**log, "reason": reason, "source": event.source})
        batch.report.count(Metric.OBJECTS_GONE, event.pipeline)
        batch.report.skipped.append((event.key, OBJECT_GONE))
        seen = {"bucket": event.bucket, "key": event.key, "version_id": event.version_id, "etag": event.etag or None,
                "key_forms_tried": list(forms)}  # fmt: skip
        self._skip(event, reason, [seen], batch.report, identity=f"gone\x00{event.bucket}/{event.key}\x00"
                   f"{event.version_id}\x00{event.etag}\x00{event.sequencer}\x00{event.event_time}")  # fmt: skip

    def _in_marked_folder(
        self, event: ObjectEvent, batch: _Batch, log: Mapping[str, object]
    ) -> tuple[str | None, ObjectEvent]:
        """A data object in marker mode: waiting for its folder's marker (no marker yet), covered by the marker's
        run (written no later than the marker), or late (written after it). A late object is routed
        (`late_objects: rerun`: it joins a run of its folder's late objects) or reported (`notify`: a SKIPPED
        ledger entry and a notification); the returned reason is None for a routed one and "late" for a reported
        one."""
        resolved = self._resolve(event, batch, log) if len(key_forms(event.key)) > 1 else event
        if resolved is None:
            return WAITING_FOR_MARKER, event
        event = resolved
        marker_key = folder_of(event.key) + str(event.trigger.marker_name)
        marker = self._head(batch, event.bucket, marker_key)
        if marker is None:
            return WAITING_FOR_MARKER, event
        current = self._head(batch, event.bucket, event.key)
        if current is None or current.last_modified <= marker.last_modified:
            return COVERED_BY_MARKER, event
        late = replace(event, late=True)
        batch.report.count(Metric.LATE_OBJECTS, event.pipeline)
        if event.trigger.late_objects == "rerun":
            logger.info(
                "object written after its folder's marker; it runs on its own", extra={**log, "marker": marker_key}
            )
            return None, late
        reason = (f"written after its folder's marker {marker_key!r} ({current.last_modified} > "
                  f"{marker.last_modified}); late_objects is notify, so it is not run")  # fmt: skip
        logger.warning("late object reported", extra={**log, "reason": reason})
        seen = {"bucket": event.bucket, "key": event.key, "version_id": event.version_id, "etag": event.etag or None,
                "size": event.size, "last_modified": current.last_modified}  # fmt: skip
        self._skip(late, reason, [seen], batch.report, identity=f"late\x00{late.identity}")
        return "late", late

    def _skip(
        self, event: ObjectEvent, reason: str, objects: list[dict[str, Any]], report: BatchReport, *, identity: str
    ) -> None:
        """A SKIPPED ledger entry (run id derived from `identity`, dated by the event: a redelivery rewrites it)
        and a notification, for an arrival that starts no run."""
        run_id = run_id_for(event.pipeline, [identity])
        at = _sortable_time(event.event_time)
        trigger = {"type": "s3", "mode": event.trigger.mode, "bucket": event.bucket, "first_key": event.key,
                   "event_time": event.event_time}  # fmt: skip
        entry = skipped_entry(pipeline=event.pipeline, run_id=run_id, reason=reason, at=at, trigger=trigger,
                              objects=objects)  # fmt: skip
        record_unstarted(self.s3, self.ledger_bucket, self.sns, self.topic_arn, entry, "arrival SKIPPED")
        report.count(Metric.ARRIVALS_SKIPPED, event.pipeline)

    def _start_runs(self, plans: Sequence[RunPlan], report: BatchReport) -> None:
        """New runs, in three steps over the whole batch: each run's manifest (objects, claim keys, trigger); the
        claims of every run together (`ClaimStore.claim_runs`: one transaction per 100 objects, whatever the runs);
        then each run that owns all of its objects starts. One run's failure never stops the others."""
        prepared = [p for p in (self._prepare(plan, report) for plan in plans) if p is not None]
        if not prepared:
            return
        try:
            lost = self.claims.claim_runs(
                {p.plan.run_id: [(s.event.claim_key, f"{s.event.bucket}/{s.event.key}") for s in p.plan.sources]
                 for p in prepared}
            )  # fmt: skip
        except Exception:
            # Claims already written belong to runs whose records now return: the redelivery rejoins them.
            logger.exception("claims not written; every new run's records return to the queue")
            for run in prepared:
                report.count(Metric.RUNS_FAILED, run.plan.pipeline)
                report.fail(run.plan.message_ids)
            return
        dated: set[str] = set()  # date claims this batch made: a date's first run claims it, later ones would lose
        for run in prepared:
            plan, log = run.plan, run.log
            if plan.run_id in lost:
                owners = lost[plan.run_id]
                logger.warning(
                    "another run claimed some of the objects first; this run is not started and its records return "
                    "to the queue (they join that run next time)",
                    extra={**log, "claimed_by": sorted(set(owners.values()))},
                )
                report.count(Metric.CLAIM_CONFLICTS, plan.pipeline, len(owners))
                report.fail(plan.message_ids)
                continue
            try:
                for day in run.dates:  # what an arrival deadline looks for (`firings`): a run started for the date
                    key = date_claim_key(plan.pipeline, day)
                    if key not in dated:
                        self.claims.claim(key, plan.run_id, label=f"{plan.pipeline} {day}")
                        dated.add(key)
                payload = execution_input(plan.pipeline, run.manifest_uri, run.object_count, run.trigger)
                started = start_execution(self.sfn, plan.state_machine_arn, plan.run_id, payload)
            except Exception:
                self._not_started(plan, report, log)
                continue
            self._started(plan.pipeline, plan.run_id, started, run.object_count, report, {**log,
                          "first_key": plan.trigger_event.key})  # fmt: skip

    def _not_started(self, plan: RunPlan, report: BatchReport, log: Mapping[str, object]) -> None:
        # One run's failure must not stop the others; SQS redelivers its records (which rejoin this run).
        logger.exception(
            "run not started; its records return to the queue", extra={**log, "message_ids": plan.message_ids}
        )
        report.count(Metric.RUNS_FAILED, plan.pipeline)
        report.fail(plan.message_ids)

    def _prepare(self, plan: RunPlan, report: BatchReport) -> _PreparedRun | None:
        """A new run's manifest (objects, claim keys, trigger), written; None when the run starts nothing (an empty
        marker folder: ledgered SKIPPED) or its manifest could not be written (its records return)."""
        log: dict[str, object] = {"pipeline": plan.pipeline, "run_id": plan.run_id, "mode": plan.mode}
        first = plan.trigger_event
        superseded: list[dict[str, Any]] = []
        try:
            if plan.mode == "marker":
                marker = read_current_version(self.s3, first.bucket, first.key)
                objects = list_marker_folder(self.s3, first, marker.last_modified if marker else None)
                if not objects:
                    folder = folder_of(first.key)
                    reason = (
                        f"marker {first.key!r} arrived but its folder {folder!r} holds no data written before it; "
                        f"objects written there later are late (late_objects: {first.trigger.late_objects})"
                    )
                    logger.warning("marker folder holds no data; nothing started", extra={**log, "key": first.key})
                    report.count(Metric.EMPTY_MARKER_FOLDERS, plan.pipeline)
                    self._skip(first, reason, [], report, identity=f"empty\x00{first.identity}")
                    return None
            else:
                objects, superseded = plan.objects()
                if superseded:
                    logger.info("a window held several versions of a key; the newest runs", extra={**log,
                                "superseded": len(superseded)})  # fmt: skip
                    report.count(Metric.SUPERSEDED_VERSIONS, plan.pipeline, len(superseded))
            trigger = execution_trigger(plan)
            dates = partition_dates(first.trigger.partition_template, [o.key for o in objects])
            if len(dates) == 1:
                trigger["logical_date"] = dates[0]
            manifest = InputManifest(
                pipeline=plan.pipeline,
                run_id=plan.run_id,
                objects=sorted(objects),
                claims=[s.event.claim_key for s in plan.sources],
                trigger=trigger,
                superseded=superseded,
            )
            manifest_uri = manifest.write(self.s3, self.manifest_bucket)
        except Exception:
            self._not_started(plan, report, log)
            return None
        return _PreparedRun(plan, manifest_uri, manifest.object_count, trigger, dates, log)

    def _rejoin(self, run_id: str, items: list[Accepted], report: BatchReport) -> None:
        """Arrivals whose objects `run_id` already claimed: nothing new starts. If that run never started (its
        invocation crashed after claiming), it is started now, by its name and from its own manifest, once every
        object of it is claimed by it; if it cannot be completed, its claims are released and the records return."""
        first = min((i.event for i in items), key=lambda e: (_sortable_time(e.event_time), e.key))
        pipeline, arn = first.pipeline, first.state_machine_arn
        log: dict[str, object] = {"pipeline": pipeline, "run_id": run_id, "objects": len(items)}
        report.count(Metric.DUPLICATE_OBJECTS, pipeline, len(items))
        if run_id == EARLIER_RUN:
            logger.info("objects already routed by an earlier run", extra=log)
            return
        message_ids = list(dict.fromkeys(i.message_id for i in items))
        try:
            if execution_exists(self.sfn, arn, run_id):
                logger.info("objects already routed to a started run", extra=log)
                report.runs_duplicate.append(run_id)
                report.count(Metric.RUNS_DUPLICATE, pipeline)
                return
            manifest = self._manifest(pipeline, run_id)
            if manifest is None:  # a claim without its manifest (removed by hand): free the objects
                self.claims.release_all((item.event.claim_key for item in items), run_id)
                logger.warning("claimed by a run without a manifest; released, records return", extra=log)
                report.fail(message_ids)
                return
            # Read once: an object another run owns is lost to this run, not "claimed" (a run that claimed in several
            # transactions and died between them may have lost the rest since); the unclaimed are claimed now.
            owners = self.claims.owners(manifest.claims)
            lost = {k: owners[k] for k in manifest.claims if owners.get(k, run_id) != run_id}
            missing = [(k, k.split("\x00", 2)[1] if "\x00" in k else k) for k in manifest.claims if k not in owners]
            if missing and not lost:
                lost = self.claims.claim_all(missing, run_id)
            if lost:
                self.claims.release_all(manifest.claims, run_id)
                logger.warning(
                    "an unstarted run lost objects to another run; released", extra={**log, "lost": len(lost)}
                )
                report.count(Metric.CLAIM_CONFLICTS, pipeline, len(lost))
                report.fail(message_ids)
                return
            uri = f"s3://{self.manifest_bucket}/{manifest_key(pipeline, run_id)}"
            trigger = manifest.trigger or {"type": "s3", "mode": first.trigger.mode, "bucket": first.bucket,
                                           "first_key": first.key, "event_time": first.event_time}  # fmt: skip
            payload = execution_input(pipeline, uri, manifest.object_count, trigger)
            started = start_execution(self.sfn, arn, run_id, payload)
        except Exception:
            logger.exception("run not resumed; its records return to the queue", extra=log)
            report.count(Metric.RUNS_FAILED, pipeline)
            report.fail(message_ids)
            return
        report.count(Metric.OBJECTS_REJOINED, pipeline, len(items))
        self._started(pipeline, run_id, started, manifest.object_count, report, {**log, "resumed": True})

    def _manifest(self, pipeline: str, run_id: str) -> InputManifest | None:
        try:
            body = self.s3.get_object(Bucket=self.manifest_bucket, Key=manifest_key(pipeline, run_id))["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            raise
        return InputManifest.from_json(body)

    def _started(
        self, pipeline: str, run_id: str, started: bool, objects: int, report: BatchReport, log: dict[str, object]
    ) -> None:
        if started:
            logger.info("run started", extra={**log, "objects": objects})
            report.count(Metric.RUNS_STARTED, pipeline)
            report.count(Metric.OBJECTS_ROUTED, pipeline, objects)
            report.runs_started.append(run_id)
        else:
            logger.info("run already exists (duplicate)", extra=log)
            report.count(Metric.RUNS_DUPLICATE, pipeline)
            report.runs_duplicate.append(run_id)


def _pipeline_hint(body: str) -> str:
    """The pipeline named by a malformed body, when there is one (for the metric's dimension)."""
    try:
        pipeline = json.loads(body).get("pipeline")
    except (TypeError, ValueError, AttributeError):
        return UNKNOWN_PIPELINE
    return pipeline if isinstance(pipeline, str) and is_legal_execution_name(pipeline) else UNKNOWN_PIPELINE
