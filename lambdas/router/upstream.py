"""Pipelines run `after` others (`trigger.after`): upstream run events in, downstream runs out.

Each SQS record body is the envelope the downstream pipeline's upstream rule builds around a run event
(`autopilot_common.run_events`)::

    {"pipeline": "sales-report",
     "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:autopilot-dev-sales-report",
     "upstream": {"after": ["sales-daily", "stock-daily"],
                  "output_prefixes": {"sales-daily": "sales-daily", "stock-daily": "stock"},
                  "suffixes": [], "ignore_zero_byte": true},
     "event": {...the "Autopilot Run Succeeded" / "Autopilot Run Failed" event, unchanged...}}

A SUCCEEDED upstream run is recorded in the downstream's fan-in state (`fan_in.FanInStore`); the run that completes a
group starts the downstream run: its input manifest lists every object of the group's upstream runs' output folders
(`_SUCCESS`, `_metrics.json` and other hidden, temporary and checksum files excluded; the downstream's suffixes and
zero-byte rule apply), and its execution is named after the upstream run set, so a redelivered event starts one run.
A FAILED upstream run starts nothing and writes the downstream's UPSTREAM_FAILED ledger entry naming it (unless its
date's downstream run started already: nothing expects it then), and notifies.

An event whose output folder is not where the envelope says that upstream's outputs live is refused (MalformedRecord):
a forged or misrouted event cannot point a downstream run at other data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from autopilot_common.keys import skip_reason
from autopilot_common.ledger import skipped_entry, upstream_failed_entry
from autopilot_common.manifest import InputManifest, ManifestObject
from autopilot_common.names import run_id_for
from autopilot_common.run_events import DETAIL_TYPES, SOURCE
from autopilot_common.s3uri import parse_s3_uri, s3_uri
from fan_in import DownstreamStart, FanInStore, UpstreamRunEnd
from routing import (
    SERVICE,
    BatchReport,
    MalformedRecord,
    Metric,
    envelope_head,
    execution_exists,
    execution_input,
    iso_event_time,
    record_unstarted,
    short,
    start_execution,
)

if TYPE_CHECKING:
    from autopilot_common.clients import S3Client, SFNClient, SNSClient

UPSTREAM_KEY = "upstream"
SUCCESS_MARKER = "_SUCCESS"  # the workflow's WriteSuccessMarker (and Spark's committer) name
_STATE_OF = {detail_type: state for state, detail_type in DETAIL_TYPES.items()}

logger = Logger(service=SERVICE, child=True)


def is_upstream_envelope(body: str) -> bool:
    """Whether an SQS record body is an upstream envelope (it has `upstream`, where S3 arrivals have `trigger`)."""
    try:
        envelope = json.loads(body)
    except (TypeError, ValueError):
        return False
    return isinstance(envelope, dict) and UPSTREAM_KEY in envelope


@dataclass(frozen=True)
class UpstreamSpec:
    """The downstream pipeline's `trigger.after`, as carried by the envelope."""

    after: tuple[str, ...]
    output_prefixes: Mapping[str, str]
    suffixes: tuple[str, ...] = ()
    ignore_zero_byte: bool = True

    @classmethod
    def from_envelope(cls, raw: Any) -> UpstreamSpec:
        if not isinstance(raw, dict):
            raise MalformedRecord(f"upstream: got {short(raw)}; expected an object")
        after = raw.get("after")
        if not isinstance(after, list) or not after or not all(isinstance(p, str) and p for p in after):
            raise MalformedRecord(f"upstream.after: got {short(after)}; expected a non-empty list of pipeline names")
        prefixes = raw.get("output_prefixes")
        if (
            not isinstance(prefixes, dict)
            or set(prefixes) != set(after)
            or not all(isinstance(v, str) for v in prefixes.values())
        ):
            raise MalformedRecord(
                f"upstream.output_prefixes: got {short(prefixes)}; expected each upstream's output prefix by name"
            )
        suffixes = raw.get("suffixes") or []
        if not isinstance(suffixes, list) or not all(isinstance(s, str) and s for s in suffixes):
            raise MalformedRecord(f"upstream.suffixes: got {short(suffixes)}; expected a list of non-empty strings")
        ignore_zero_byte = raw.get("ignore_zero_byte", True)
        if not isinstance(ignore_zero_byte, bool):
            raise MalformedRecord(f"upstream.ignore_zero_byte: got {short(ignore_zero_byte)}; expected true or false")
        return cls(tuple(after), dict(prefixes), tuple(suffixes), ignore_zero_byte)


@dataclass(frozen=True)
class UpstreamEnvelope:
    """One upstream run's end, for one downstream pipeline."""

    pipeline: str  # the downstream
    state_machine_arn: str
    spec: UpstreamSpec
    state: str  # SUCCEEDED or FAILED
    run: UpstreamRunEnd
    event_time: str


def parse_upstream_envelope(body: str, outputs_bucket: str) -> UpstreamEnvelope:
    """Parse one upstream envelope; MalformedRecord naming the bad field. `outputs_bucket` holds every run's outputs:
    the event's output folder must be its upstream's, `s3://<outputs>/<output prefix>/run_id=<run id>/`."""
    envelope, pipeline, arn = envelope_head(body)
    spec = UpstreamSpec.from_envelope(envelope.get(UPSTREAM_KEY))
    event = envelope.get("event")
    if not isinstance(event, dict):
        raise MalformedRecord(f"event: got {short(event)}; expected the EventBridge event object")
    detail_type = event.get("detail-type")
    if event.get("source") != SOURCE or detail_type not in _STATE_OF:
        raise MalformedRecord(
            f"event: source {short(event.get('source'))}, detail-type {short(detail_type)}; expected a run event "
            f"({' or '.join(repr(t) for t in _STATE_OF)}) from {SOURCE!r}"
        )
    run = _upstream_run(event.get("detail"), pipeline, spec, outputs_bucket)
    return UpstreamEnvelope(pipeline, arn, spec, _STATE_OF[detail_type], run, iso_event_time(event.get("time")))


def _upstream_run(detail: Any, pipeline: str, spec: UpstreamSpec, outputs_bucket: str) -> UpstreamRunEnd:
    """The upstream run an event's detail describes, its output folder checked against its upstream's."""
    if not isinstance(detail, dict):
        raise MalformedRecord(f"event.detail: got {short(detail)}; expected an object")
    upstream = detail.get("pipeline")
    if upstream not in spec.after:
        raise MalformedRecord(
            f"event.detail.pipeline: got {short(upstream)}; expected one of {list(spec.after)} ({pipeline}'s upstreams)"
        )
    fields = {name: detail.get(name) for name in ("run_id", "ledger_uri", "started_at")}
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise MalformedRecord(f"event.detail.{name}: got {short(value)}; expected a non-empty string")
    run_id = str(fields["run_id"])
    outputs = detail.get("outputs")
    prefix = outputs.get("prefix") if isinstance(outputs, dict) else None
    expected = s3_uri(outputs_bucket, f"{spec.output_prefixes[upstream].strip('/')}/run_id={run_id}/")
    if prefix != expected:
        raise MalformedRecord(f"event.detail.outputs.prefix: got {short(prefix)}; expected {expected!r}")
    logical_date = detail.get("logical_date")
    if logical_date is not None and (not isinstance(logical_date, str) or not logical_date):
        raise MalformedRecord(f"event.detail.logical_date: got {short(logical_date)}; expected a date or absent")
    return UpstreamRunEnd(
        pipeline=upstream,
        run_id=run_id,
        ledger_uri=str(fields["ledger_uri"]),
        outputs=expected,
        started_at=str(fields["started_at"]),
        logical_date=logical_date,
    )


def list_upstream_outputs(s3: S3Client, runs: list[UpstreamRunEnd], spec: UpstreamSpec) -> list[ManifestObject]:
    """Every data object of the upstream runs' output folders (ListObjectsV2, paginated): `_SUCCESS`, the job's
    `_metrics.json` and other hidden, temporary and checksum files excluded, and the downstream's suffixes and
    zero-byte rule applied (`keys.skip_reason`)."""
    objects: list[ManifestObject] = []
    for run in runs:
        bucket, prefix = parse_s3_uri(run.outputs, field="outputs")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key, size = item["Key"], int(item["Size"])
                reason = skip_reason(
                    key,
                    size,
                    suffixes=spec.suffixes,
                    ignore_zero_byte=spec.ignore_zero_byte,
                    marker_name=SUCCESS_MARKER,
                )
                if reason is None:
                    etag = str(item.get("ETag", "")).strip('"')
                    objects.append(ManifestObject(bucket=bucket, key=key, size=size, etag=etag))
    return sorted(objects)


@dataclass(kw_only=True)
class UpstreamRouter:
    """Handles upstream envelopes (see the module docstring): `handle` is called for each record that is one. `s3`
    lists upstream outputs and writes manifests and ledger entries (in `outputs_bucket`), `sfn` starts runs, `sns`
    (optional) tells the topic about runs that did not start."""

    s3: S3Client
    sfn: SFNClient
    fan_in: FanInStore
    manifest_bucket: str
    outputs_bucket: str
    sns: SNSClient | None = None
    topic_arn: str | None = None

    def accepts(self, body: str) -> bool:
        return is_upstream_envelope(body)

    def handle(self, body: str, report: BatchReport) -> str:
        """Route one upstream envelope; return what happened. Raising fails the record (SQS redelivers it)."""
        envelope = parse_upstream_envelope(body, self.outputs_bucket)
        run = envelope.run
        log: dict[str, object] = {"pipeline": envelope.pipeline, "upstream": run.pipeline, "upstream_run": run.run_id,
                                  "state": envelope.state, "logical_date": run.logical_date}  # fmt: skip
        if envelope.state != "SUCCEEDED":
            return self._upstream_failed(envelope, report, log)
        recorded = self.fan_in.record_success(envelope.pipeline, envelope.spec.after, run)
        log["group"] = recorded.group
        report.count(Metric.UPSTREAM_RUNS, envelope.pipeline)
        if recorded.outcome == "resumed" and execution_exists(self.sfn, envelope.state_machine_arn, recorded.start_run):
            logger.info("the event that completed its group again; its downstream run exists", extra=log)
            report.count(Metric.RUNS_DUPLICATE, envelope.pipeline)
            report.runs_duplicate.append(recorded.start_run)
            return "duplicate"
        if recorded.start is not None:  # completed its group (or did, and its invocation died before the start)
            self._start(envelope, recorded.start, report, {**log, "resumed": recorded.outcome == "resumed"})
            return recorded.outcome
        if recorded.outcome == "waiting":
            logger.info("upstream run recorded; waiting for the others", extra={**log, "missing": recorded.missing})
        elif recorded.outcome == "late":
            logger.warning("the date's downstream run started already; this upstream run starts nothing",
                           extra={**log, "started": recorded.start_run_id})  # fmt: skip
        else:
            logger.info(f"upstream run {recorded.outcome}; nothing to do", extra=log)
        return recorded.outcome

    def _start(
        self, envelope: UpstreamEnvelope, start: DownstreamStart, report: BatchReport, log: dict[str, Any]
    ) -> None:
        """The downstream run over the group's upstream outputs: its manifest, then StartExecution by its name."""
        pipeline = envelope.pipeline
        log = {**log, "run_id": start.run_id, "upstream_runs": [f"{r.pipeline}/{r.run_id}" for r in start.runs]}
        trigger: dict[str, Any] = {
            "type": "upstream",
            "after": list(envelope.spec.after),
            "event_time": envelope.event_time,
            "upstream_runs": [r.lineage() for r in start.runs],
        }
        if start.logical_date:
            trigger["logical_date"] = start.logical_date
        objects = list_upstream_outputs(self.s3, start.runs, envelope.spec)
        if not objects:
            reason = "its upstream runs wrote no output objects (" + ", ".join(r.outputs for r in start.runs) + ")"
            logger.warning("upstream runs wrote nothing; nothing started", extra=log)
            entry = skipped_entry(pipeline=pipeline, run_id=start.run_id, reason=reason,
                                  at=_moment(envelope.event_time), trigger=trigger, objects=[])  # fmt: skip
            record_unstarted(self.s3, self.outputs_bucket, self.sns, self.topic_arn, entry, "run SKIPPED")
            report.count(Metric.ARRIVALS_SKIPPED, pipeline)
            return
        manifest = InputManifest(pipeline=pipeline, run_id=start.run_id, objects=objects, trigger=trigger)
        manifest_uri = manifest.write(self.s3, self.manifest_bucket)
        payload = execution_input(pipeline, manifest_uri, manifest.object_count, trigger)
        if start_execution(self.sfn, envelope.state_machine_arn, start.run_id, payload):
            logger.info("downstream run started", extra={**log, "objects": manifest.object_count})
            report.count(Metric.RUNS_STARTED, pipeline)
            report.count(Metric.OBJECTS_ROUTED, pipeline, manifest.object_count)
            report.runs_started.append(start.run_id)
        else:
            logger.info("downstream run already exists (duplicate)", extra=log)
            report.count(Metric.RUNS_DUPLICATE, pipeline)
            report.runs_duplicate.append(start.run_id)

    def _upstream_failed(self, envelope: UpstreamEnvelope, report: BatchReport, log: dict[str, Any]) -> str:
        """A FAILED upstream run: nothing starts; the downstream's UPSTREAM_FAILED entry names it, with the upstream
        runs that succeeded for it so far, unless its date's downstream run already started (nothing expects it)."""
        run, pipeline = envelope.run, envelope.pipeline
        waiting, started = self.fan_in.waiting_runs(pipeline, run.logical_date)
        report.count(Metric.UPSTREAM_FAILURES, pipeline)
        if started is not None:
            logger.info("upstream run failed after its date's downstream run started; nothing expects it",
                        extra={**log, "started": started})  # fmt: skip
            return "not expected"
        date = f" for {run.logical_date}" if run.logical_date else ""
        reason = (
            f"upstream {run.pipeline} run {run.run_id} FAILED ({run.ledger_uri}); {pipeline} does not run over it and "
            f"waits for a SUCCEEDED run of {run.pipeline}{date}"
        )
        trigger: dict[str, Any] = {"type": "upstream", "after": list(envelope.spec.after),
                                   "event_time": envelope.event_time}  # fmt: skip
        if run.logical_date:
            trigger["logical_date"] = run.logical_date
        entry = upstream_failed_entry(
            pipeline=pipeline,
            run_id=run_id_for(pipeline, [f"upstream-failed\x00{run.pipeline}\x00{run.run_id}"]),
            failed=run.lineage(),
            reason=reason,
            at=_moment(envelope.event_time),
            trigger=trigger,
            upstream_runs=[r.lineage() for r in waiting],
        )
        logger.warning("upstream run failed; nothing started", extra={**log, "run_id": entry["run_id"]})
        record_unstarted(self.s3, self.outputs_bucket, self.sns, self.topic_arn, entry, "run UPSTREAM_FAILED")
        return "upstream failed"


def _moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))
