"""The router's clock messages (lambdas/router/firings.py): schedule firings start one run over the partition of their
logical date, named as a backfill of that date; empty partitions follow on_empty; deadlines write MISSED.

The messages are the ones the stack's schedules send (`stacks.schedules.firing_input`), with Scheduler's
`<aws.scheduler.scheduled-time>` filled in. Everything AWS is moto.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from autopilot_cli.backfill import date_partitions
from autopilot_common.ledger import ledger_prefix
from autopilot_common.names import backfill_run_id
from claims import ClaimStore
from config.loader import load_config
from config.model import Trigger
from firings import Clock, parse_firing
from routing import DEFAULT_TTL_SECONDS, MalformedRecord, Router
from stacks.schedules import SCHEDULED_TIME, firing_input
from tests.unit.test_router import (
    ARTIFACTS,
    LANDING,
    OUTPUTS,
    PIPELINE,
    TABLE,
    TOPIC,
    Aws,
    aws,
    count,
    envelope,
    executions,
    failures,
    manifest_of,
    route,
    s3_event,
    sqs_event,
)

__all__ = ["aws"]  # the fixture, shared with the router's tests

TEMPLATE = "sales/dt={ds}/"


@dataclass
class Notices:
    """Stands in for SNS: what the clock published."""

    published: list[dict[str, Any]] = field(default_factory=list)

    def publish(self, **kwargs: Any) -> dict[str, str]:
        self.published.append(kwargs)
        return {"MessageId": str(len(self.published))}


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
def clocked(aws: Aws, notices: Notices) -> Router:
    """The router as the handler builds it: with its clock."""
    claims = ClaimStore(aws.ddb, TABLE, ttl_seconds=DEFAULT_TTL_SECONDS, sleep=lambda _s: None)
    router = Router(
        s3=aws.s3,
        sfn=aws.sfn,
        claims=claims,
        manifest_bucket=ARTIFACTS,
        ledger_bucket=OUTPUTS,
        sns=notices,  # type: ignore[arg-type]
        topic_arn=TOPIC,
    )
    router.clock = Clock(router)
    return router


def firing(aws: Aws, at: str, *, kind: str = "scheduled", template: str = TEMPLATE, **clock: Any) -> str:
    """A Scheduler message for `sales-daily` fired at `at` (ISO UTC), as the stack's schedule sends it."""
    settings = {"timezone": "Europe/Berlin"} | clock
    raw: dict[str, Any] = {"prefix": "sales/", "suffixes": [".csv"], "partition_template": template}
    if kind == "scheduled":
        raw["schedule"] = {"expression": "cron(0 2 * * ? *)"} | settings
    else:
        raw["expect"] = {"by": "06:00", "every": "day"} | settings
    message = firing_input(kind, PIPELINE, aws.arn, Trigger.model_validate(raw), LANDING)
    return json.dumps(message).replace(SCHEDULED_TIME, at)


def put(aws: Aws, *keys: str) -> None:
    for key in keys:
        aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"order_id\n1\n" if not key.endswith("_SUCCESS") else b"")


def ledger(aws: Aws) -> list[dict[str, Any]]:
    listed = aws.s3.list_objects_v2(Bucket=OUTPUTS, Prefix=ledger_prefix(PIPELINE)).get("Contents", [])
    return [json.loads(aws.s3.get_object(Bucket=OUTPUTS, Key=o["Key"])["Body"].read()) for o in listed]


# --------------------------------------------------------------------------- scheduled runs


def test_a_firing_runs_the_partition_of_its_logical_date_only(aws: Aws, clocked: Router) -> None:
    # Given three days of data, with a file of another suffix and a marker in the middle day
    put(aws, "sales/dt=2024-06-01/a.csv", "sales/dt=2024-06-02/a.csv", "sales/dt=2024-06-02/b.csv",
        "sales/dt=2024-06-02/notes.txt", "sales/dt=2024-06-02/_SUCCESS", "sales/dt=2024-06-03/a.csv")  # fmt: skip
    # When the 02:00 Berlin firing of 06-03 arrives
    report = route(clocked, sqs_event([firing(aws, "2024-06-03T00:00:00Z")]))
    # Then one run covers 06-02, named as `emr-autopilot backfill` names that date
    assert failures(report) == []
    (execution,) = executions(aws)
    assert execution["name"] == backfill_run_id(PIPELINE, "sales/dt=2024-06-02/", "2024-06-02")
    keys = [o.key for o in manifest_of(aws, execution).objects]
    assert keys == ["sales/dt=2024-06-02/a.csv", "sales/dt=2024-06-02/b.csv"]
    body = json.loads(aws.sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert body["trigger"] == {
        "type": "schedule",
        "scheduled_time": "2024-06-03T00:00:00Z",
        "event_time": "2024-06-03T00:00:00Z",
        "timezone": "Europe/Berlin",
        "logical_date": "2024-06-02",
        "prefix": f"s3://{LANDING}/sales/dt=2024-06-02/",
    }
    assert count(report, "RunsStarted") == 1 and count(report, "ScheduleFirings") == 1


def test_a_firing_delivered_twice_or_after_a_backfill_starts_one_run(aws: Aws, clocked: Router) -> None:
    put(aws, "sales/dt=2024-06-02/a.csv", "sales/dt=2024-06-04/a.csv")
    # Twice in one batch, then once more (a redelivery); and a retry a minute later is the same firing
    message = firing(aws, "2024-06-03T00:00:00Z")
    first = route(clocked, sqs_event([message, message]))
    again = route(clocked, sqs_event([message]))
    assert failures(first) == failures(again) == []
    assert len(executions(aws)) == 1
    assert count(first, "RunsStarted") == 1 and count(first, "RunsDuplicate") == 1
    assert count(again, "RunsDuplicate") == 1
    # A backfill of 06-04 started first: the firing for 06-04 finds its run
    name = backfill_run_id(PIPELINE, "sales/dt=2024-06-04/", "2024-06-04")
    aws.sfn.start_execution(stateMachineArn=aws.arn, name=name, input="{}")
    late = route(clocked, sqs_event([firing(aws, "2024-06-05T00:00:00Z")]))
    assert count(late, "RunsDuplicate") == 1 and len(executions(aws)) == 2


def test_an_empty_partition_is_skipped_with_a_ledger_entry(aws: Aws, clocked: Router, notices: Notices) -> None:
    put(aws, "sales/dt=2024-06-02/readme.txt")  # no object the trigger accepts
    report = route(clocked, sqs_event([firing(aws, "2024-06-03T00:00:00Z", on_empty="skip")]))
    assert failures(report) == [] and executions(aws) == []
    (entry,) = ledger(aws)
    assert entry["state"] == "SKIPPED" and entry["logical_date"] == "2024-06-02"
    assert f"no object under s3://{LANDING}/sales/dt=2024-06-02/ matches the trigger" in entry["reason"]
    assert notices.published == []  # skip is what the pipeline asked for: the ledger says it, nobody is paged
    # A redelivered firing rewrites the same entry
    route(clocked, sqs_event([firing(aws, "2024-06-03T00:00:00Z", on_empty="skip")]))
    assert len(ledger(aws)) == 1


def test_an_empty_partition_fails_and_notifies_with_on_empty_fail(aws: Aws, clocked: Router, notices: Notices) -> None:
    report = route(clocked, sqs_event([firing(aws, "2024-06-03T00:00:00Z", on_empty="fail")]))
    assert failures(report) == [] and executions(aws) == []
    (entry,) = ledger(aws)
    assert entry["state"] == "FAILED" and entry["error"] == "NotStarted" and entry["logical_date"] == "2024-06-02"
    (notice,) = notices.published
    assert notice["Subject"] == f"EMR Autopilot: {PIPELINE} 2024-06-02 FAILED"
    assert "sales/dt=2024-06-02/" in json.loads(notice["Message"])["reason"]


def test_an_hourly_firing_runs_the_hour_before_in_its_time_zone(aws: Aws, clocked: Router) -> None:
    template = "sales/{yyyy}/{mm}/{dd}/{hh}/"
    put(aws, "sales/2024/06/03/01/a.csv", "sales/2024/06/03/02/a.csv")
    # 01:05 UTC is 03:05 in Berlin: the hour before is 02h local
    route(clocked, sqs_event([firing(aws, "2024-06-03T01:05:00Z", template=template)]))
    (execution,) = executions(aws)
    assert execution["name"] == backfill_run_id(PIPELINE, "sales/2024/06/03/02/", "2024-06-03T02")
    assert [o.key for o in manifest_of(aws, execution).objects] == ["sales/2024/06/03/02/a.csv"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"scheduled_time": "<aws.scheduler.scheduled-time>"}, "scheduled_time: got '<aws.scheduler.scheduled-time>'"),
        ({"timezone": "Mars/Base"}, "timezone: time zone 'Mars/Base' is not an IANA time zone name"),
        ({"on_empty": "ignore"}, "on_empty: got 'ignore'; expected one of ['skip', 'fail']"),
        ({"bucket": ""}, "bucket: got ''; expected the landing bucket's name"),
    ],
)
def test_a_malformed_firing_fails_alone_naming_the_field(
    aws: Aws, clocked: Router, change: dict[str, Any], expected: str
) -> None:
    bad = json.dumps(json.loads(firing(aws, "2024-06-03T00:00:00Z")) | change)
    with pytest.raises(MalformedRecord, match=re.escape(expected)):
        parse_firing(bad)
    report = route(clocked, sqs_event([bad, firing(aws, "2024-06-03T00:00:00Z")]))
    assert failures(report) == ["msg-00000"] and count(report, "MalformedRecords") == 1


# --------------------------------------------------------------------------- arrival deadlines


def test_a_deadline_without_a_run_writes_missed_and_a_later_arrival_still_runs(
    aws: Aws, clocked: Router, notices: Notices
) -> None:
    # When the 06:00 Berlin deadline of 06-03 passes and nothing arrived for 06-02
    deadline = firing(aws, "2024-06-03T04:00:00Z", kind="deadline")
    report = route(clocked, sqs_event([deadline]))
    # Then a MISSED entry and a notification name the pipeline, the date and the prefix that stayed empty
    assert failures(report) == [] and count(report, "DeadlinesMissed") == 1
    (entry,) = ledger(aws)
    assert entry["state"] == "MISSED" and entry["logical_date"] == "2024-06-02"
    assert entry["reason"] == (
        f"no run started for 2024-06-02 by 06:00 Europe/Berlin: s3://{LANDING}/sales/dt=2024-06-02/ stayed empty"
    )
    (notice,) = notices.published
    assert notice["Subject"] == f"EMR Autopilot: {PIPELINE} 2024-06-02 MISSED"
    assert notice["MessageAttributes"]["state"]["StringValue"] == "MISSED"
    # And the data arriving late still runs, recording its logical date
    put(aws, "sales/dt=2024-06-02/a.csv")
    arrival = s3_event("sales/dt=2024-06-02/a.csv")
    routed = route(clocked, sqs_event([_with_template(envelope(arrival, aws.arn))]))
    assert count(routed, "RunsStarted") == 1
    (execution,) = executions(aws)
    assert (
        json.loads(aws.sfn.describe_execution(executionArn=execution["executionArn"])["input"])["trigger"][
            "logical_date"
        ]
        == "2024-06-02"
    )
    # So the next check of that date finds the run
    assert route(clocked, sqs_event([deadline])).counts[("DeadlinesMissed", PIPELINE)] == 0


def test_a_deadline_after_a_backfill_of_the_date_is_on_time(aws: Aws, clocked: Router, notices: Notices) -> None:
    name = backfill_run_id(PIPELINE, "sales/dt=2024-06-02/", "2024-06-02")
    aws.sfn.start_execution(stateMachineArn=aws.arn, name=name, input="{}")
    report = route(clocked, sqs_event([firing(aws, "2024-06-03T04:00:00Z", kind="deadline")]))
    assert failures(report) == [] and count(report, "DeadlinesMissed") == 0
    assert ledger(aws) == [] and notices.published == []


def test_a_deadline_names_objects_that_started_no_run(aws: Aws, clocked: Router) -> None:
    put(aws, "sales/dt=2024-06-02/a.csv")  # landed, but its run never started (e.g. waiting for a marker)
    route(clocked, sqs_event([firing(aws, "2024-06-03T04:00:00Z", kind="deadline")]))
    (entry,) = ledger(aws)
    assert entry["state"] == "MISSED"
    assert "holds 1 object(s) but no run started" in entry["reason"]


def test_an_hourly_deadline_checks_the_hour_before(aws: Aws, clocked: Router) -> None:
    template = "sales/{yyyy}/{mm}/{dd}/{hh}/"
    put(aws, "sales/2024/06/03/09/a.csv")  # 09h (UTC) landed; nothing started it
    hourly = {"by": ":45", "every": "hour", "timezone": "UTC"}
    # At 10:45 the 09h partition is checked, at 11:45 the 10h one
    route(clocked, sqs_event([firing(aws, "2024-06-03T10:45:00Z", kind="deadline", template=template, **hourly)]))
    route(clocked, sqs_event([firing(aws, "2024-06-03T11:45:00Z", kind="deadline", template=template, **hourly)]))
    reasons = sorted((e["logical_date"], e["reason"]) for e in ledger(aws))
    assert reasons == [
        ("2024-06-03T09", "no run started for 2024-06-03T09 by 10:45 UTC: "
         f"s3://{LANDING}/sales/2024/06/03/09/ holds 1 object(s) but no run started (a marker not yet written?)"),
        ("2024-06-03T10", "no run started for 2024-06-03T10 by 11:45 UTC: "
         f"s3://{LANDING}/sales/2024/06/03/10/ stayed empty"),
    ]  # fmt: skip


def _with_template(body: str) -> str:
    """An arrival envelope of a trigger with a partition_template (the stack adds it to the trigger block)."""
    raw = json.loads(body)
    raw["trigger"]["partition_template"] = TEMPLATE
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("template", "at", "first", "last"),
    [
        ("sales/dt={ds}/", "2024-06-03T00:00:00Z", "2024-06-02", "2024-06-02"),
        ("sales/{yyyy}/{mm}/{dd}/{hh}/", "2024-06-03T01:05:00Z", "2024-06-03T02", "2024-06-03T02"),
    ],
)
def test_a_backfill_of_a_date_is_the_same_run_as_its_firing(
    aws: Aws, template: str, at: str, first: str, last: str
) -> None:
    """`emr-autopilot backfill` and a schedule firing name a date's run alike, daily and hourly."""
    trigger = Trigger.model_validate(
        {"prefix": "sales/", "partition_template": template, "schedule": {"expression": "rate(1 hour)"}}
    )
    pipeline = load_config("dev").pipelines["sales-nightly"].model_copy(update={"trigger": trigger})
    ((day, prefix, run_id),) = date_partitions(PIPELINE, pipeline, None, first, last)
    fired = parse_firing(firing(aws, at, template=template))
    assert (fired.logical_date, fired.prefix, fired.run_id) == (day, prefix, run_id)
