"""CloudTrail S3 data events as a trigger (pipeline `sales-trail`, sources [eventbridge, cloudtrail]) on the twin.

The twin's trail records data events only for buckets selected with `twin.cloudtrail.log_data_events`
(as a trail's data event selector would); each test turns them on for the landing bucket and off again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deployment import Deployed

PIPELINE = "sales-trail"
DATA_EVENT = "AWS API Call via CloudTrail"
BODY = b"order_id,order_date,amount\n1,2024-06-01,9.5\n"


@pytest.fixture
def trail(env: Deployed) -> Iterator[Deployed]:
    """Data events on for the landing bucket, delivered a little after S3's notifications (as in AWS)."""
    env.twin.cloudtrail.log_data_events(env.landing)
    env.twin.cloudtrail.delay_seconds = 0.5
    try:
        yield env
    finally:
        env.twin.cloudtrail.log_data_events(env.landing, enabled=False)
        env.twin.cloudtrail.delay_seconds = 0.0


def _reports(env: Deployed, key: str) -> dict[str, list[dict[str, Any]]]:
    """The events the twin's bus carried for `key`, by detail-type."""
    found: dict[str, list[dict[str, Any]]] = {"Object Created": [], DATA_EVENT: []}
    for event in list(env.twin.events):
        detail = event.get("detail") or {}
        if event["detail-type"] == "Object Created" and detail.get("object", {}).get("key") == key:
            found["Object Created"].append(event)
        elif event["detail-type"] == DATA_EVENT and (detail.get("requestParameters") or {}).get("key") == key:
            found[DATA_EVENT].append(event)
    return found


def _runs_of(env: Deployed, key: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Executions of the pipeline whose trigger is `key`, and their ledger entries."""
    executions = [
        e
        for e in env.executions(PIPELINE)
        if key in env.sfn.describe_execution(executionArn=e["executionArn"])["input"]
    ]
    ledger = [r for r in env.runs() if r.pipeline == PIPELINE and r.raw.get("trigger", {}).get("first_key") == key]
    return executions, ledger


def _router_invocations(env: Deployed, since: int) -> int:
    return len([i for i in env.twin.runtime.invocations[since:] if i.function_name.endswith("-router")])


def test_an_object_reported_by_notification_and_data_event_runs_once(trail: Deployed) -> None:
    # Given data events on for landing, and the pipeline's two rules (Object Created and data event)
    env = trail
    key = f"{PIPELINE}/{uuid.uuid4().hex[:8]}/orders 2024+06.csv"
    invocations = len(env.twin.runtime.invocations)

    # When one object lands
    env.s3.put_object(Bucket=env.landing, Key=key, Body=BODY)
    env.wait_for(lambda: _reports(env, key)[DATA_EVENT], what="the data event")
    env.twin.wait_idle(timeout=60)

    # Then both sources reported it and both reports reached the router ...
    reports = _reports(env, key)
    assert len(reports["Object Created"]) == 1 and len(reports[DATA_EVENT]) == 1
    assert reports[DATA_EVENT][0]["detail"]["eventName"] == "PutObject"
    ids = {reports["Object Created"][0]["id"]: "object-created", reports[DATA_EVENT][0]["id"]: "data-event"}
    delivered = [(d.rule, d.target_arn, d.error) for d in env.twin.deliveries if d.event_id in ids]
    assert sorted(rule for rule, _, _ in delivered) == [
        f"autopilot-dev-{PIPELINE}-data-event",
        f"autopilot-dev-{PIPELINE}-object-created",
    ]
    assert len({arn for _, arn, _ in delivered}) == 1 and all(error is None for _, _, error in delivered)
    assert _router_invocations(env, invocations) >= 2
    # ... and exactly one run started, with one ledger entry
    executions, ledger = _runs_of(env, key)
    assert len(executions) == 1, executions
    assert env.finished(executions[0]["executionArn"])["status"] == "SUCCEEDED"
    executions, ledger = _runs_of(env, key)
    assert [r.run_id for r in ledger] == [executions[0]["name"]]
    assert ledger[0].state == "SUCCEEDED" and ledger[0].raw["object_count"] == 1


def test_a_bucket_without_notifications_still_triggers_through_data_events(trail: Deployed) -> None:
    # Given the landing bucket sends no EventBridge notifications (as a bucket owned elsewhere may not)
    env = trail
    env.s3.put_bucket_notification_configuration(Bucket=env.landing, NotificationConfiguration={})
    key = f"{PIPELINE}/{uuid.uuid4().hex[:8]}/only-trail.csv"
    try:
        # When an object is copied in
        source = f"{PIPELINE}-staging/{uuid.uuid4().hex[:8]}.csv"
        env.s3.put_object(Bucket=env.landing, Key=source, Body=BODY)
        env.s3.copy_object(Bucket=env.landing, Key=key, CopySource={"Bucket": env.landing, "Key": source})
        env.wait_for(lambda: _reports(env, key)[DATA_EVENT], what="the data event")
        env.twin.wait_idle(timeout=60)
    finally:
        # What the app deploys for landing (moto's GetBucketNotificationConfiguration omits EventBridge)
        env.s3.put_bucket_notification_configuration(
            Bucket=env.landing, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )

    # Then only CloudTrail saw it, and it ran once
    reports = _reports(env, key)
    assert reports["Object Created"] == []
    assert [e["detail"]["eventName"] for e in reports[DATA_EVENT]] == ["CopyObject"]
    executions, _ = _runs_of(env, key)
    assert len(executions) == 1
    assert env.finished(executions[0]["executionArn"])["status"] == "SUCCEEDED"
    _, ledger = _runs_of(env, key)
    assert len(ledger) == 1 and ledger[0].state == "SUCCEEDED"


def test_a_multipart_upload_reported_by_both_sources_runs_once(trail: Deployed) -> None:
    # Given
    env = trail
    key = f"{PIPELINE}/{uuid.uuid4().hex[:8]}/Q1 report+final %20ü.csv"
    upload = env.s3.create_multipart_upload(Bucket=env.landing, Key=key)
    part = env.s3.upload_part(Bucket=env.landing, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=BODY)

    # When
    env.s3.complete_multipart_upload(
        Bucket=env.landing,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    env.wait_for(lambda: _reports(env, key)[DATA_EVENT], what="the data event")
    env.twin.wait_idle(timeout=60)

    # Then one run over the object, under its exact key
    reports = _reports(env, key)
    assert [e["detail"]["reason"] for e in reports["Object Created"]] == ["CompleteMultipartUpload"]
    assert [e["detail"]["eventName"] for e in reports[DATA_EVENT]] == ["CompleteMultipartUpload"]
    executions, _ = _runs_of(env, key)
    assert len(executions) == 1
    assert env.finished(executions[0]["executionArn"])["status"] == "SUCCEEDED"


def test_a_pipeline_without_cloudtrail_ignores_data_events(trail: Deployed) -> None:
    # Given data events on for landing, and sales-daily (sources: [eventbridge]) listening under sales/
    env = trail
    key = f"sales/{uuid.uuid4().hex[:8]}/only-notified.csv"
    before = {e["executionArn"] for e in env.executions()}

    # When an object lands there
    env.s3.put_object(Bucket=env.landing, Key=key, Body=BODY)
    env.wait_for(lambda: _reports(env, key)[DATA_EVENT], what="the data event")
    env.twin.wait_idle(timeout=60)

    # Then the data event was on the bus but matched no rule of that pipeline: one run, from the notification
    new = [e for e in env.executions() if e["executionArn"] not in before]
    assert len(new) == 1
    assert env.finished(new[0]["executionArn"])["status"] == "SUCCEEDED"
