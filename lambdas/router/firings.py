"""Clock messages on a pipeline's arrivals queue: schedule firings (`trigger.schedule`) and arrival deadlines
(`trigger.expect`), both sent by EventBridge Scheduler schedules (`stacks.schedules`).

The schedule's target input (Scheduler fills `<aws.scheduler.scheduled-time>` at each firing)::

    {"kind": "scheduled",            # or "deadline"
     "pipeline": "sales-daily",
     "state_machine_arn": "arn:aws:states:...:stateMachine:autopilot-dev-sales-daily",
     "trigger": {...the arrivals envelope's trigger block, with "partition_template": "sales/dt={ds}/"...},
     "bucket": "<landing bucket>",
     "timezone": "Europe/Berlin",
     "on_empty": "skip",             # scheduled only
     "by": "06:00",                  # deadline only
     "scheduled_time": "2024-06-03T00:00:00Z"}

A firing's logical date is `logical_dates.interval_start` of its scheduled time (the partition that ended last before
it, on the pipeline's clock), never of when the message is read: a retried or redelivered firing has the same date.

- **scheduled**: one run over the partition's objects (filtered as arrivals are), named as `emr-autopilot backfill`
  names that date (`names.backfill_run_id`), so a redelivered firing, a second firing for the date and a backfill of
  it are one execution. An empty partition starts nothing and leaves a SKIPPED (`on_empty: skip`) or a FAILED entry
  and a notification (`on_empty: fail`).
- **deadline**: when no run has started for the logical date (an arrival run claims its date, `claims.
  date_claim_key`; a scheduled, backfill or console run of the date is the execution of its backfill run id), a
  MISSED entry and a notification name the pipeline, the date and the prefix. Nothing is claimed: a later arrival
  still runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autopilot_common.ledger import FAILED, MISSED, SKIPPED, NotStartedState, not_started_entry
from autopilot_common.logical_dates import TemplateError, every_of, interval_start, label, render
from autopilot_common.logical_dates import time_zone as check_time_zone
from autopilot_common.manifest import InputManifest, list_partition
from autopilot_common.names import backfill_run_id, run_id_for
from autopilot_common.s3uri import s3_uri
from claims import date_claim_key
from routing import (
    DEADLINE,
    FIRING_KINDS,
    SCHEDULED,
    BatchReport,
    MalformedRecord,
    Metric,
    Router,
    TriggerSpec,
    envelope_head,
    execution_exists,
    execution_input,
    logger,
    record_unstarted,
    short,
    start_execution,
)

ON_EMPTY = ("skip", "fail")


@dataclass(frozen=True)
class Firing:
    """One firing of a pipeline's schedule or deadline, and the partition of its logical date."""

    kind: str
    pipeline: str
    state_machine_arn: str
    trigger: TriggerSpec
    bucket: str
    partition_template: str
    timezone: str
    scheduled_time: datetime
    on_empty: str = "skip"
    by: str = ""

    @property
    def logical_date(self) -> str:
        """`2024-06-02`, or `2024-06-02T05` for an hourly partition."""
        every = every_of(self.partition_template)
        return label(interval_start(self.scheduled_time, every, self.timezone), every)

    @property
    def prefix(self) -> str:
        every = every_of(self.partition_template)
        return render(self.partition_template, interval_start(self.scheduled_time, every, self.timezone))

    @property
    def run_id(self) -> str:
        """The date's run: the id `emr-autopilot backfill` gives it."""
        return backfill_run_id(self.pipeline, self.prefix, self.logical_date)

    @property
    def stamp(self) -> str:
        return self.scheduled_time.strftime("%Y-%m-%dT%H:%M:%SZ")

    def trigger_block(self) -> dict[str, Any]:
        """The run's (or the entry's) `trigger`: what fired, when, for which date and prefix. `event_time` orders
        the run in the admission queue (`admission.arrival_of`) by its scheduled time."""
        block: dict[str, Any] = {
            "type": "schedule" if self.kind == SCHEDULED else "deadline",
            "scheduled_time": self.stamp,
            "event_time": self.stamp,
            "timezone": self.timezone,
            "logical_date": self.logical_date,
            "prefix": s3_uri(self.bucket, self.prefix),
        }
        if self.kind == DEADLINE:
            block["by"] = self.by
        return block


def parse_firing(body: str) -> Firing:
    """A Scheduler message's firing; MalformedRecord naming the bad field."""
    raw, pipeline, arn = envelope_head(body)
    kind = raw.get("kind")
    if kind not in FIRING_KINDS:
        raise MalformedRecord(f"kind: got {short(kind)}; expected one of {list(FIRING_KINDS)}")
    bucket = raw.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise MalformedRecord(f"bucket: got {short(bucket)}; expected the landing bucket's name")
    trigger = TriggerSpec.from_envelope(raw.get("trigger"))  # validates its partition_template
    template, zone = trigger.partition_template, raw.get("timezone", "UTC")
    if template is None:
        raise MalformedRecord("trigger.partition_template: missing; a firing runs or checks the partition of its date")
    try:
        check_time_zone(zone if isinstance(zone, str) else "")
    except TemplateError as exc:
        raise MalformedRecord(f"timezone: {exc}") from None
    on_empty, by = raw.get("on_empty", "skip"), raw.get("by", "")
    if kind == SCHEDULED and on_empty not in ON_EMPTY:
        raise MalformedRecord(f"on_empty: got {short(on_empty)}; expected one of {list(ON_EMPTY)}")
    if kind == DEADLINE and (not isinstance(by, str) or not by):
        raise MalformedRecord(f"by: got {short(by)}; expected the deadline, e.g. '06:00'")
    return Firing(
        kind=kind,
        pipeline=pipeline,
        state_machine_arn=arn,
        trigger=trigger,
        bucket=bucket,
        partition_template=template,
        timezone=str(zone),
        scheduled_time=_scheduled_time(raw.get("scheduled_time")),
        on_empty=str(on_empty),
        by=str(by),
    )


def _scheduled_time(raw: Any) -> datetime:
    """Scheduler's `<aws.scheduler.scheduled-time>` (ISO 8601 UTC, `2024-06-03T00:00:00Z`) as an aware instant."""
    try:
        moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise MalformedRecord(
            f"scheduled_time: got {short(raw)}; expected an ISO 8601 UTC time such as '2024-06-03T00:00:00Z' "
            "(the schedule's input must carry <aws.scheduler.scheduled-time>)"
        )
    return moment.astimezone(UTC)


class Clock:
    """Handles schedule firings and arrival deadlines with its router's clients and settings."""

    def __init__(self, router: Router) -> None:
        self.router = router  # its clients (s3, sfn, sns), buckets, claims and topic

    def handle(self, body: str, report: BatchReport) -> str:
        """Act on one Scheduler message; return what happened (`started`, `duplicate`, `empty`, `on time`,
        `missed`). MalformedRecord or an AWS error fails the record (SQS redelivers it, then the DLQ)."""
        firing = parse_firing(body)
        if firing.kind == SCHEDULED:
            return self._scheduled(firing, report)
        return self._deadline(firing, report)

    def _scheduled(self, firing: Firing, report: BatchReport) -> str:
        pipeline, run_id = firing.pipeline, firing.run_id
        log = {"pipeline": pipeline, "run_id": run_id, "logical_date": firing.logical_date, "prefix": firing.prefix}
        report.count(Metric.SCHEDULE_FIRINGS, pipeline)
        if execution_exists(self.router.sfn, firing.state_machine_arn, run_id):
            logger.info("the logical date's run exists (a redelivered firing or a backfill)", extra=log)
            report.count(Metric.RUNS_DUPLICATE, pipeline)
            report.runs_duplicate.append(run_id)
            return "duplicate"
        trigger = firing.trigger
        listing = list_partition(
            self.router.s3,
            firing.bucket,
            firing.prefix,
            suffixes=trigger.suffixes,
            ignore_zero_byte=trigger.ignore_zero_byte,
            marker_name=trigger.marker_name,
        )
        if not listing.objects:
            state: NotStartedState = SKIPPED if firing.on_empty == "skip" else FAILED
            reason = (
                f"empty partition: no object under {s3_uri(firing.bucket, firing.prefix)} matches the trigger "
                f"(logical date {firing.logical_date}; on_empty: {firing.on_empty})"
            )
            logger.warning("scheduled partition is empty; nothing started", extra={**log, "on_empty": state})
            report.count(Metric.EMPTY_PARTITIONS, pipeline)
            self._not_started(firing, state, reason, f"empty\x00{firing.prefix}", notify=state == FAILED)
            return "empty"
        block = firing.trigger_block()
        manifest = InputManifest(pipeline=pipeline, run_id=run_id, objects=sorted(listing.objects), trigger=block)
        uri = manifest.write(self.router.s3, self.router.manifest_bucket)
        payload = execution_input(pipeline, uri, manifest.object_count, block)
        if start_execution(self.router.sfn, firing.state_machine_arn, run_id, payload):
            logger.info("scheduled run started", extra={**log, "objects": manifest.object_count})
            report.count(Metric.RUNS_STARTED, pipeline)
            report.count(Metric.OBJECTS_ROUTED, pipeline, manifest.object_count)
            report.runs_started.append(run_id)
            return "started"
        report.count(Metric.RUNS_DUPLICATE, pipeline)
        report.runs_duplicate.append(run_id)
        return "duplicate"

    def _deadline(self, firing: Firing, report: BatchReport) -> str:
        pipeline, day = firing.pipeline, firing.logical_date
        log = {"pipeline": pipeline, "logical_date": day, "by": firing.by, "prefix": firing.prefix}
        if self.router.claims.owners([date_claim_key(pipeline, day)]) or execution_exists(
            self.router.sfn, firing.state_machine_arn, firing.run_id
        ):
            logger.info("a run started for the logical date before its deadline", extra=log)
            return "on time"
        where = s3_uri(firing.bucket, firing.prefix)
        seen = list_partition(
            self.router.s3,
            firing.bucket,
            firing.prefix,
            suffixes=firing.trigger.suffixes,
            ignore_zero_byte=firing.trigger.ignore_zero_byte,
            marker_name=firing.trigger.marker_name,
        ).objects
        what = (
            f"{where} stayed empty"
            if not seen
            else f"{where} holds {len(seen)} object(s) but no run started (a marker not yet written?)"
        )
        deadline = firing.scheduled_time.astimezone(check_time_zone(firing.timezone)).strftime("%H:%M")
        reason = f"no run started for {day} by {deadline} {firing.timezone}: {what}"
        logger.warning("arrival deadline missed", extra=log)
        report.count(Metric.DEADLINES_MISSED, pipeline)
        self._not_started(firing, MISSED, reason, f"missed\x00{firing.prefix}", notify=True)
        return "missed"

    def _not_started(self, firing: Firing, state: NotStartedState, reason: str, identity: str, *, notify: bool) -> None:
        """A ledger entry (SKIPPED, FAILED or MISSED) for a firing that started nothing, dated by its scheduled time
        (a redelivered firing rewrites the same entry), and a notification when `notify`."""
        run_id = run_id_for(firing.pipeline, [identity])
        entry = not_started_entry(
            state=state,
            pipeline=firing.pipeline,
            run_id=run_id,
            reason=reason,
            at=firing.scheduled_time,
            trigger=firing.trigger_block(),
            objects=[],
            logical_date=firing.logical_date,
        )
        router = self.router
        subject = f"{firing.logical_date} {state}"
        record_unstarted(router.s3, router.ledger_bucket, router.sns, router.topic_arn, entry, subject, notify=notify)
