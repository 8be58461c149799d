"""Router Lambda: SQS envelopes of S3 "Object Created" events and CloudTrail S3 data events ->
deterministic Step Functions runs.

Everything AWS is moto (`mock_aws`), region us-east-1, fake credentials; no network.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from autopilot_common.clients import Clients
from autopilot_common.manifest import InputManifest
from autopilot_common.names import run_id_for
from claims import ClaimStore, claim_id
from routing import (
    DEFAULT_TTL_SECONDS,
    BatchReport,
    MalformedRecord,
    Router,
    RouterSettings,
    data_event_key,
    parse_envelope,
    raw_object_key,
)
from tests.conftest import load_event, load_handler
from tests.unit.conftest import create_table
from tests.unit.fakes import lambda_context

REGION = "us-east-1"
ACCOUNT = "123456789012"
LANDING = "autopilot-dev-landing"
ARTIFACTS = "autopilot-dev-artifacts"
OUTPUTS = "autopilot-dev-outputs"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:autopilot-dev-notifications"
TABLE = "autopilot-dev-idempotency"
PIPELINE = "sales-daily"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/autopilot-dev-sfn"
DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
SPECIAL_KEYS = [
    "sales/Q1 report+final %20ü.csv",
    "sales/a+b.csv",
    "sales/a b.csv",
    "sales/a%20b.csv",
    "sales/a%2Bb.csv",
    "sales/日本語/データ.csv",
]


@dataclass
class Aws:
    s3: Any
    sfn: Any
    ddb: Any
    arn: str

    def state_machine(self, name: str) -> str:
        return str(self.sfn.create_state_machine(name=name, definition=DEFINITION, roleArn=ROLE_ARN)["stateMachineArn"])


@pytest.fixture
def aws(moto: str) -> Aws:
    return router_aws()


def router_aws() -> Aws:
    """The router's buckets, claims table and the sales-daily state machine, on moto (inside `mock_aws`)."""
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in (LANDING, ARTIFACTS, OUTPUTS):
        s3.create_bucket(Bucket=bucket)
    ddb = boto3.client("dynamodb", region_name=REGION)
    create_table(ddb, TABLE, "id")
    sfn = boto3.client("stepfunctions", region_name=REGION)
    env = Aws(s3=s3, sfn=sfn, ddb=ddb, arn="")
    env.arn = env.state_machine(f"autopilot-dev-{PIPELINE}")
    return env


@pytest.fixture
def router(aws: Aws) -> Router:
    claims = ClaimStore(aws.ddb, TABLE, ttl_seconds=DEFAULT_TTL_SECONDS, sleep=lambda _s: None)
    return Router(s3=aws.s3, sfn=aws.sfn, claims=claims, manifest_bucket=ARTIFACTS, ledger_bucket=OUTPUTS)


# --------------------------------------------------------------------------- helpers


def s3_event(
    key: str,
    *,
    size: int = 100,
    etag: str | None = None,
    version_id: str | None = None,
    sequencer: str | None = None,
    time_: str = "2024-06-01T10:15:02Z",
    source: str = "aws.s3",
) -> dict[str, Any]:
    """A real-shaped EventBridge "Object Created" event (the fixture file, with these fields changed)."""
    event = load_event("s3_object_created_eventbridge.json")
    event["source"] = source
    event["time"] = time_
    obj = event["detail"]["object"]
    digest = hashlib.md5(key.encode()).hexdigest()
    obj.update(key=key, size=size, etag=etag or digest, sequencer=sequencer or digest[:18].upper())
    if version_id is None:
        obj.pop("version-id")
    else:
        obj["version-id"] = version_id
    return event


def envelope(
    event: dict[str, Any],
    arn: str,
    *,
    mode: str = "window",
    suffixes: Sequence[str] = (".csv",),
    marker_name: str | None = None,
    pipeline: str = PIPELINE,
    sources: Sequence[str] | None = None,
) -> str:
    trigger: dict[str, Any] = {
        "mode": mode,
        "prefix": "sales/",
        "suffixes": list(suffixes),
        "marker_name": marker_name,
        "ignore_zero_byte": True,
    }
    if sources is not None:  # the trigger stack adds `sources` only when it is not the default
        trigger["sources"] = list(sources)
    return json.dumps({"pipeline": pipeline, "state_machine_arn": arn, "trigger": trigger, "event": event})


def sqs_event(bodies: Sequence[str], ids: Sequence[str] | None = None) -> dict[str, Any]:
    """An SQS event whose records are copies of the fixture record with these bodies and messageIds."""
    template = load_event("sqs_router_batch.json")["Records"][0]
    ids = ids or [f"msg-{i:05d}" for i in range(len(bodies))]
    records = []
    for message_id, body in zip(ids, bodies, strict=True):
        record = copy.deepcopy(template)
        record.update(messageId=message_id, body=body, md5OfBody=hashlib.md5(body.encode()).hexdigest())
        records.append(record)
    return {"Records": records}


def executions(aws: Aws, arn: str | None = None) -> list[dict[str, Any]]:
    pages = aws.sfn.get_paginator("list_executions").paginate(stateMachineArn=arn or aws.arn)
    return [e for page in pages for e in page["executions"]]


def execution_input(aws: Aws, execution: dict[str, Any]) -> str:
    return str(aws.sfn.describe_execution(executionArn=execution["executionArn"])["input"])


def manifest_of(aws: Aws, execution: dict[str, Any]) -> InputManifest:
    uri = json.loads(execution_input(aws, execution))["manifest"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return InputManifest.from_json(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def context() -> LambdaContext:
    return cast(LambdaContext, lambda_context("autopilot-dev-router"))


def route(router: Router, event: dict[str, Any]) -> BatchReport:
    return router.route_batch(event, lambda_context=context())


def failures(report: BatchReport) -> list[str]:
    return [item["itemIdentifier"] for item in report.response()["batchItemFailures"]]


def count(report: BatchReport, metric: str, pipeline: str = PIPELINE) -> int:
    return report.counts[(metric, pipeline)]


# --------------------------------------------------------------------------- settings and parsing


def test_settings_name_the_missing_variable_and_default_the_ttl() -> None:
    # Given / When / Then
    env = {"MANIFEST_BUCKET": ARTIFACTS, "IDEMPOTENCY_TABLE": TABLE, "LEDGER_BUCKET": OUTPUTS, "TOPIC_ARN": TOPIC}
    for name in env:
        with pytest.raises(RuntimeError, match=f"environment variable {name} is not set"):
            RouterSettings.from_env({k: v for k, v in env.items() if k != name})
    with pytest.raises(RuntimeError, match="IDEMPOTENCY_TTL_SECONDS"):
        RouterSettings.from_env({**env, "IDEMPOTENCY_TTL_SECONDS": "1h"})
    settings = RouterSettings.from_env(env)
    assert settings == RouterSettings(ARTIFACTS, TABLE, OUTPUTS, TOPIC, 604_800)
    assert DEFAULT_TTL_SECONDS == 7 * 24 * 3600


def test_clients_retry_throttling_in_standard_mode(aws: Aws) -> None:
    clients = Clients()
    for client in (clients.s3, clients.sfn, clients.dynamodb, clients.sns):
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}


def test_fixture_events_have_the_real_eventbridge_shape() -> None:
    event = load_event("s3_object_created_eventbridge.json")
    assert event["source"] == "aws.s3" and event["detail-type"] == "Object Created"
    assert set(event["detail"]) == {
        "version",
        "bucket",
        "object",
        "request-id",
        "requester",
        "source-ip-address",
        "reason",
    }
    assert set(event["detail"]["object"]) == {"key", "size", "etag", "version-id", "sequencer"}
    parsed = parse_envelope(load_event("sqs_router_batch.json")["Records"][0]["body"])
    assert (parsed.bucket, parsed.key, parsed.size, parsed.version_id) == (
        LANDING,
        "sales/2024-06-01/orders.csv",
        184662,
        "FOQJmXWtRc1GzBIljXaCR5mNNHJJq0E.",
    )


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_raw_key_is_kept_byte_exact_where_powertools_would_decode_it(key: str) -> None:
    # Given an EventBridge event: its key is raw, not URL-encoded
    event = s3_event(key)

    # When
    ours = raw_object_key(event["detail"]["object"])
    theirs = S3EventBridgeNotificationEvent(event).detail.object.key

    # Then ours is the key; powertools' unquote_plus corrupts every key with '+' or '%xx'
    assert ours.encode() == key.encode()
    if "+" in key or "%" in key:
        assert theirs != key
    assert S3EventBridgeNotificationEvent(s3_event("sales/Q1 report+final %20ü.csv")).detail.object.key == (
        "sales/Q1 report final  ü.csv"
    )


def test_special_character_keys_land_in_the_manifest_byte_exact(aws: Aws, router: Router) -> None:
    # Given the objects really exist under those keys
    for key in SPECIAL_KEYS:
        aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"x" * 10)
    batch = sqs_event([envelope(s3_event(k, size=10), aws.arn) for k in SPECIAL_KEYS])

    # When
    report = route(router, batch)

    # Then one run whose manifest names every object exactly as S3 stores it
    assert failures(report) == []
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert sorted(o.key for o in manifest.objects) == sorted(SPECIAL_KEYS)
    for obj in manifest.objects:
        assert aws.s3.head_object(Bucket=obj.bucket, Key=obj.key)["ContentLength"] == 10


# --------------------------------------------------------------------------- dedupe


@pytest.mark.parametrize("mode", ["window", "per_object"])
def test_same_event_delivered_in_three_invocations_starts_one_run(aws: Aws, router: Router, mode: str) -> None:
    # Given EventBridge delivered the same event three times (three SQS messages)
    body = envelope(s3_event("sales/2024-06-01/orders.csv", version_id="v1"), aws.arn, mode=mode)

    # When each copy arrives in its own invocation
    reports = [route(router, sqs_event([body], [f"copy-{n}"])) for n in range(3)]

    # Then exactly one execution; the later copies are duplicates, not failures
    assert len(executions(aws)) == 1
    assert [r.runs_started for r in reports][1:] == [[], []]
    assert [count(r, "DuplicateObjects") for r in reports] == [0, 1, 1]
    assert all(failures(r) == [] for r in reports)


def test_three_copies_in_one_batch_start_one_run_over_one_object(aws: Aws, router: Router) -> None:
    # Given
    body = envelope(s3_event("sales/2024-06-01/orders.csv"), aws.arn)

    # When
    report = route(router, sqs_event([body, body, body], ["a", "b", "c"]))

    # Then
    [execution] = executions(aws)
    assert manifest_of(aws, execution).object_count == 1
    assert count(report, "DuplicateObjects") == 2
    assert failures(report) == []


def test_one_message_delivered_twice_in_a_batch_counts_once(aws: Aws, router: Router) -> None:
    # Given SQS (at-least-once) hands the same message to one batch twice
    body = envelope(s3_event("sales/2024-06-01/orders.csv"), aws.arn)

    # When
    report = route(router, sqs_event([body, body], ["same", "same"]))

    # Then
    [execution] = executions(aws)
    assert manifest_of(aws, execution).object_count == 1
    assert count(report, "DuplicateObjects") == 1


def test_regrouped_redeliveries_after_a_crash_never_run_an_object_twice(aws: Aws, router: Router) -> None:
    # Given a window run over [a, b] started, then the invocation died before SQS deleted the messages
    a, b, c = (envelope(s3_event(f"sales/{n}.csv"), aws.arn) for n in "abc")
    first = route(router, sqs_event([a, b], ["m-a", "m-b"]))
    assert len(first.runs_started) == 1

    # When SQS redelivers the same messages grouped differently: [a], then [b, c]
    again = route(router, sqs_event([a], ["m-a"]))
    later = route(router, sqs_event([b, c], ["m-b", "m-c"]))

    # Then a and b stay in their run; only c makes a new one (before: three runs [a,b], [a], [b,c])
    assert again.runs_started == [] and failures(again) == []
    runs = sorted(sorted(o.key for o in manifest_of(aws, e).objects) for e in executions(aws))
    assert runs == [["sales/a.csv", "sales/b.csv"], ["sales/c.csv"]]
    assert count(later, "DuplicateObjects") == 1 and len(later.runs_started) == 1


def test_a_run_claimed_but_never_started_is_started_by_the_redelivery(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a window run over [a, b] whose invocation claimed both objects and died before StartExecution
    a, b = (envelope(s3_event(f"sales/{n}.csv"), aws.arn) for n in "ab")
    monkeypatch.setattr(router.sfn, "start_execution", throttled)
    crashed = route(router, sqs_event([a, b], ["m-a", "m-b"]))
    assert failures(crashed) == ["m-a", "m-b"] and executions(aws) == []
    monkeypatch.undo()

    # When only b comes back first (a later, in another batch)
    resumed = route(router, sqs_event([b], ["m-b"]))
    route(router, sqs_event([a], ["m-a"]))

    # Then the claimed run is started by its own name and manifest, once, over both objects
    [execution] = executions(aws)
    assert sorted(o.key for o in manifest_of(aws, execution).objects) == ["sales/a.csv", "sales/b.csv"]
    assert resumed.runs_started == [execution["name"]] and count(resumed, "ObjectsRejoined") == 1


def test_an_unstarted_run_that_lost_one_of_its_objects_is_not_resumed(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a window run over [a, b] that claimed both and died before StartExecution, and whose claim of b another
    # run holds since (a run claiming in several transactions that died between them: b was never its own)
    a, b = (envelope(s3_event(f"sales/{n}.csv"), aws.arn) for n in "ab")
    monkeypatch.setattr(router.sfn, "start_execution", throttled)
    route(router, sqs_event([a, b], ["m-a", "m-b"]))
    monkeypatch.undo()
    run_id = run_id_for(PIPELINE, [parse_envelope(a).identity, parse_envelope(b).identity])
    b_key = parse_envelope(b).claim_key
    router.claims.release(b_key, run_id)
    router.claims.claim(b_key, "sales-daily-other", label="b")

    # When a's record comes back and rejoins the unstarted run
    report = route(router, sqs_event([a], ["m-a"]))

    # Then that run does not start (b would be in two runs): it gives a up and a's record returns
    assert executions(aws) == [] and failures(report) == ["m-a"] and count(report, "ClaimConflicts") == 1
    assert router.claims.owners([parse_envelope(a).claim_key, b_key]) == {b_key: "sales-daily-other"}


def test_an_unstarted_run_that_lost_an_object_releases_its_claims_100_a_transaction(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a window run over 250 objects that claimed them all and died before StartExecution, and whose claim of
    # object 7 another run holds since
    bodies = [envelope(s3_event(f"sales/{i:03d}.csv"), aws.arn) for i in range(250)]
    monkeypatch.setattr(router.sfn, "start_execution", throttled)
    route(router, sqs_event(bodies))
    monkeypatch.undo()
    keys = [parse_envelope(body).claim_key for body in bodies]
    run_id = run_id_for(PIPELINE, [parse_envelope(body).identity for body in bodies])
    router.claims.release(keys[7], run_id)
    router.claims.claim(keys[7], "sales-daily-other", label="7")
    calls: list[str] = []
    for operation in ("delete_item", "transact_write_items"):
        real = getattr(router.claims.dynamodb, operation)

        def counting(*args: Any, _real: Any = real, _operation: str = operation, **kwargs: Any) -> Any:
            calls.append(_operation)
            return _real(*args, **kwargs)

        monkeypatch.setattr(router.claims.dynamodb, operation, counting)

    # When one record comes back and the run gives up its objects
    report = route(router, sqs_event(bodies[:1], ["m-0"]))

    # Then its 249 claims go in conditional transactions of 100 (the first sent again without object 7's Delete,
    # whose condition failed), not 250 DeleteItem; object 7 stays the other run's
    assert failures(report) == ["m-0"] and count(report, "ClaimConflicts") == 1
    assert calls == ["transact_write_items"] * 4
    assert router.claims.owners(keys) == {keys[7]: "sales-daily-other"}


def test_resuming_a_run_reads_its_claims_once(aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a window run over 150 objects that claimed them all and died before StartExecution
    bodies = [envelope(s3_event(f"sales/{i:03d}.csv"), aws.arn) for i in range(150)]
    monkeypatch.setattr(router.sfn, "start_execution", throttled)
    route(router, sqs_event(bodies))
    monkeypatch.undo()
    reads: list[int] = []
    real = router.claims.owners

    def counting(keys: Any) -> dict[str, str]:
        keys = list(keys)
        reads.append(len(keys))
        return real(keys)

    monkeypatch.setattr(router.claims, "owners", counting)

    # When one record comes back
    report = route(router, sqs_event(bodies[:1], ["m-0"]))

    # Then the run starts, its 150 claims read once (not once per claim: 150 reads of 150)
    assert len(report.runs_started) == 1 and len(executions(aws)) == 1
    assert reads == [1, 150]


def test_an_object_another_run_claims_first_sends_this_runs_records_back(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another router claims a.csv for its run between our look-up and our claim
    a, b = (envelope(s3_event(f"sales/{n}.csv"), aws.arn) for n in "ab")
    router.claims.claim(parse_envelope(a).claim_key, "sales-daily-other", label="a")
    monkeypatch.setattr(router.claims, "owners", lambda keys: {})  # the look-up saw nothing yet

    # When our batch [a, b] plans a run over both
    report = route(router, sqs_event([a, b], ["m-a", "m-b"]))

    # Then it does not start, releases b, and both records return (a joins the other run next time)
    assert failures(report) == ["m-a", "m-b"] and executions(aws) == []
    assert count(report, "ClaimConflicts") == 1
    monkeypatch.undo()
    assert router.claims.owners([parse_envelope(b).claim_key]) == {}


def test_claims_from_the_earlier_format_count_as_routed(aws: Aws, router: Router) -> None:
    # Given a claim item in the router's former format (a powertools idempotency record, no run id)
    body = envelope(s3_event("sales/old.csv"), aws.arn)
    now = int(time.time())
    aws.ddb.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": claim_id(parse_envelope(body).claim_key)},
            "status": {"S": "COMPLETED"},
            "expiration": {"N": str(now + 3600)},
        },
    )
    # When / Then the object is a duplicate: nothing starts, nothing fails
    report = route(router, sqs_event([body], ["m"]))
    assert report.runs_started == [] and failures(report) == [] and count(report, "DuplicateObjects") == 1


# --------------------------------------------------------------------------- window mode


def test_window_of_1000_objects_starts_one_run_with_a_complete_manifest(aws: Aws, router: Router) -> None:
    # Given
    expected = {
        f"sales/2024-06-01/part-{i:04d}.csv": (1000 + i, hashlib.md5(str(i).encode()).hexdigest()) for i in range(1000)
    }
    bodies = [envelope(s3_event(k, size=s, etag=e), aws.arn) for k, (s, e) in expected.items()]

    # When
    report = route(router, sqs_event(bodies))

    # Then one execution; its manifest lists all 1,000 objects exactly; its input stays tiny
    assert failures(report) == []
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert {o.key: (o.size, o.etag) for o in manifest.objects} == expected
    assert manifest.object_count == 1000 and manifest.total_bytes == sum(s for s, _ in expected.values())
    assert len(execution_input(aws, execution).encode()) < 1024
    assert count(report, "RunsStarted") == 1 and count(report, "ObjectsRouted") == 1000


def test_execution_input_has_the_exact_shape(aws: Aws, router: Router) -> None:
    # Given two arrivals, the later one listed first
    late = envelope(s3_event("sales/b.csv", time_="2024-06-01T10:15:09Z"), aws.arn)
    early = envelope(s3_event("sales/z.csv", time_="2024-06-01T10:14:58Z"), aws.arn)

    # When
    route(router, sqs_event([late, early]))

    # Then
    [execution] = executions(aws)
    run_id = execution["name"]
    assert json.loads(execution_input(aws, execution)) == {
        "pipeline": PIPELINE,
        "manifest": f"s3://{ARTIFACTS}/manifests/{PIPELINE}/{run_id}.json",
        "object_count": 2,
        "trigger": {
            "type": "s3",
            "mode": "window",
            "bucket": LANDING,
            "first_key": "sales/z.csv",
            "event_time": "2024-06-01T10:14:58Z",
        },
    }
    identities = [parse_envelope(b).identity for b in (late, early)]
    assert run_id == run_id_for(PIPELINE, identities)


def test_filtered_keys_start_nothing_and_fail_nothing(aws: Aws, router: Router) -> None:
    # Given
    filtered = {
        "sales/x/": "folder placeholder",
        "sales/_temporary/0/part-0000.csv": "inside a temporary folder",
        "sales/part-0000.csv.crc": "temporary or checksum file",
        "sales/upload.csv.tmp": "temporary or checksum file",
        "sales/_hidden.csv": "hidden file",
        "sales/.hidden.csv": "hidden file",
        "sales/readme.txt": "suffix not in ['.csv']",
    }
    events = [s3_event(k, size=0 if k.endswith("/") else 10) for k in filtered]
    events.append(s3_event("sales/empty.csv", size=0))

    # When
    report = route(router, sqs_event([envelope(e, aws.arn) for e in events]))

    # Then
    assert executions(aws) == []
    assert failures(report) == []
    assert dict(report.skipped) == filtered | {"sales/empty.csv": "zero-byte object"}
    assert count(report, "ObjectsSkipped") == 8


# --------------------------------------------------------------------------- per-object mode


def test_per_object_starts_one_run_per_object_with_deterministic_names(aws: Aws, router: Router) -> None:
    # Given
    bodies = [envelope(s3_event(f"sales/{n}.csv"), aws.arn, mode="per_object") for n in ("a", "b", "c")]
    expected = sorted(run_id_for(PIPELINE, [parse_envelope(b).identity]) for b in bodies)

    # When
    report = route(router, sqs_event(bodies))

    # Then three executions named by their object
    assert sorted(report.runs_started) == expected
    assert sorted(e["name"] for e in executions(aws)) == expected

    # When the same arrivals are routed again from scratch (claims cleared, a second state machine)
    for item in aws.ddb.scan(TableName=TABLE)["Items"]:
        aws.ddb.delete_item(TableName=TABLE, Key={"id": item["id"]})
    other = aws.state_machine("autopilot-dev-sales-daily-again")
    again = [envelope(s3_event(f"sales/{n}.csv"), other, mode="per_object") for n in ("a", "b", "c")]
    route(router, sqs_event(again))

    # Then the names are the same
    assert sorted(e["name"] for e in executions(aws, other)) == expected


def test_a_batch_of_per_object_runs_claims_100_objects_a_transaction(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 250 per-object arrivals in one batch
    bodies = [envelope(s3_event(f"sales/{i:03d}.csv"), aws.arn, mode="per_object") for i in range(250)]
    sizes: list[int] = []
    real = router.claims.dynamodb.transact_write_items

    def counting(**kwargs: Any) -> Any:
        sizes.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    monkeypatch.setattr(router.claims.dynamodb, "transact_write_items", counting)

    # When
    report = route(router, sqs_event(bodies))

    # Then 250 runs start, their claims written in 3 transactions (DynamoDB's limit is 100 actions), not 250
    assert len(report.runs_started) == 250 and failures(report) == []
    assert sizes == [100, 100, 50]


def test_a_run_losing_an_object_in_a_shared_transaction_leaves_the_others_started(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another router claims b.csv for its run between our look-up and our claims
    bodies = [envelope(s3_event(f"sales/{n}.csv"), aws.arn, mode="per_object") for n in ("a", "b", "c")]
    router.claims.claim(parse_envelope(bodies[1]).claim_key, "sales-daily-other", label="b")
    monkeypatch.setattr(router.claims, "owners", lambda keys: {})  # the look-up saw nothing yet

    # When the batch's three per-object runs claim in one transaction
    report = route(router, sqs_event(bodies, ["m-a", "m-b", "m-c"]))

    # Then b's run does not start and its record returns; a's and c's runs start and own their objects
    assert failures(report) == ["m-b"] and count(report, "ClaimConflicts") == 1
    assert len(executions(aws)) == 2 and len(report.runs_started) == 2
    monkeypatch.undo()
    keys = [parse_envelope(b).claim_key for b in bodies]
    assert router.claims.owners(keys) == {
        keys[0]: run_id_for(PIPELINE, [parse_envelope(bodies[0]).identity]),
        keys[1]: "sales-daily-other",
        keys[2]: run_id_for(PIPELINE, [parse_envelope(bodies[2]).identity]),
    }


# --------------------------------------------------------------------------- marker mode


def put(aws: Aws, key: str, size: int = 10) -> dict[str, Any]:
    """Store an object and return its EventBridge event (with its real etag)."""
    etag = aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"x" * size)["ETag"].strip('"')
    return s3_event(key, size=size, etag=etag)


def test_marker_starts_one_run_over_exactly_the_data_files(aws: Aws, router: Router) -> None:
    # Given data, noise and finally the marker in one folder (plus data in a sibling folder)
    data = ["sales/2024-06-01/part-0000.csv", "sales/2024-06-01/part-0001.csv", "sales/2024-06-01/region=eu/p.csv"]
    noise = [
        "sales/2024-06-01/_temporary/0/part-0002.csv",
        "sales/2024-06-01/part-0000.csv.crc",
        "sales/2024-06-01/.part-0001.csv",
        "sales/2024-06-01/_hidden.csv",
        "sales/2024-06-01/notes.txt",
    ]
    data_events = [put(aws, k) for k in data + noise]
    put(aws, "sales/2024-06-01/empty.csv", size=0)
    put(aws, "sales/2024-06-02/part-0000.csv")

    def marked(event: dict[str, Any]) -> str:
        return envelope(event, aws.arn, mode="marker", marker_name="_SUCCESS")

    # When only data events arrive
    waiting = route(router, sqs_event([marked(e) for e in data_events]))

    # Then nothing starts; they wait for the marker
    assert executions(aws) == [] and failures(waiting) == []
    assert {reason for _, reason in waiting.skipped} == {"waiting for marker"}

    # When the marker lands
    marker = put(aws, "sales/2024-06-01/_SUCCESS", size=0)
    report = route(router, sqs_event([marked(marker)], ["marker"]))

    # Then one run over exactly the folder's data files, named after the marker
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert [o.key for o in manifest.objects] == sorted(data)
    assert all(o.size == 10 and len(o.etag) == 32 for o in manifest.objects)
    assert execution["name"] == run_id_for(PIPELINE, [parse_envelope(marked(marker)).identity])
    trigger = json.loads(execution_input(aws, execution))["trigger"]
    assert (trigger["mode"], trigger["first_key"]) == ("marker", "sales/2024-06-01/_SUCCESS")
    assert report.runs_started == [execution["name"]]


def test_marker_lists_more_than_one_page(aws: Aws, router: Router) -> None:
    # Given 1,234 data files (ListObjectsV2 returns at most 1,000 per page)
    keys = [f"sales/big/part-{i:05d}.csv" for i in range(1234)]
    for key in keys:
        aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"1")
    marker = put(aws, "sales/big/_SUCCESS", size=0)

    # When
    route(router, sqs_event([envelope(marker, aws.arn, mode="marker", marker_name="_SUCCESS")]))

    # Then
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == keys


def test_marker_over_an_empty_folder_starts_nothing(aws: Aws, router: Router) -> None:
    # Given only noise next to the marker
    put(aws, "sales/empty/part-0000.csv", size=0)
    marker = put(aws, "sales/empty/_SUCCESS", size=0)

    # When
    report = route(router, sqs_event([envelope(marker, aws.arn, mode="marker", marker_name="_SUCCESS")]))

    # Then
    assert executions(aws) == []
    assert failures(report) == []
    assert count(report, "EmptyMarkerFolders") == 1


# --------------------------------------------------------------------------- malformed records


def test_malformed_records_fail_alone(aws: Aws, router: Router) -> None:
    # Given good records mixed with malformed ones
    good = [envelope(s3_event(f"sales/good-{n}.csv"), aws.arn) for n in range(2)]
    no_key = s3_event("sales/x.csv")
    del no_key["detail"]["object"]["key"]
    bad = {
        "bad-json": "{not json",
        "no-key": envelope(no_key, aws.arn),
        "wrong-source": envelope(s3_event("sales/y.csv", source="aws.ec2"), aws.arn),
        "bad-arn": envelope(s3_event("sales/z.csv"), "arn:aws:lambda:us-east-1:123456789012:function:nope"),
        "bad-mode": envelope(s3_event("sales/w.csv"), aws.arn, mode="hourly"),
    }
    bodies = [good[0], *bad.values(), good[1]]
    ids = ["good-0", *bad, "good-1"]

    # When
    report = route(router, sqs_event(bodies, ids))

    # Then exactly the malformed records fail; the good ones run
    assert failures(report) == list(bad)
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == ["sales/good-0.csv", "sales/good-1.csv"]
    assert count(report, "MalformedRecords") + count(report, "MalformedRecords", "unknown") == 5


def test_a_batch_of_only_malformed_records_is_reported_not_raised(aws: Aws, router: Router) -> None:
    report = route(router, sqs_event(["[]", "null"], ["x", "y"]))
    assert failures(report) == ["x", "y"]


# --------------------------------------------------------------------------- StartExecution outcomes


def throttled(**_: Any) -> None:
    raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartExecution")


def test_start_execution_failure_returns_the_feeding_records(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Step Functions throttles every call (after botocore's own retries)
    bodies = [envelope(s3_event(f"sales/{n}.csv"), aws.arn) for n in ("a", "b")]
    bodies.append(envelope(s3_event("sales/skip.txt"), aws.arn))
    monkeypatch.setattr(router.sfn, "start_execution", throttled)

    # When
    report = route(router, sqs_event(bodies, ["a", "b", "skip"]))

    # Then the records that fed the run go back to the queue; the skipped one does not
    assert failures(report) == ["a", "b"]
    assert count(report, "RunsFailed") == 1 and report.runs_started == []

    # When SQS redelivers them (same messageIds) and Step Functions has recovered
    monkeypatch.undo()
    retry = route(router, sqs_event(bodies[:2], ["a", "b"]))

    # Then their objects still belong to that run: it starts, once, by its own name
    assert failures(retry) == []
    [execution] = executions(aws)
    assert manifest_of(aws, execution).object_count == 2


def test_one_failed_run_does_not_fail_the_other_runs(aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given per-object runs where only the run for b.csv is throttled
    bodies = [envelope(s3_event(f"sales/{n}.csv"), aws.arn, mode="per_object") for n in ("a", "b", "c")]
    doomed = run_id_for(PIPELINE, [parse_envelope(bodies[1]).identity])
    real = router.sfn.start_execution

    def flaky(**kwargs: Any) -> Any:
        return throttled() if kwargs["name"] == doomed else real(**kwargs)

    monkeypatch.setattr(router.sfn, "start_execution", flaky)

    # When
    report = route(router, sqs_event(bodies, ["a", "b", "c"]))

    # Then
    assert failures(report) == ["b"]
    assert len(executions(aws)) == 2


def test_moto_rejects_a_reused_execution_name(aws: Aws) -> None:
    # Given a running execution
    aws.sfn.start_execution(stateMachineArn=aws.arn, name="run-1", input='{"a": 1}')

    # When / Then the same name with other input is rejected, as in AWS
    with pytest.raises(ClientError) as exc:
        aws.sfn.start_execution(stateMachineArn=aws.arn, name="run-1", input='{"a": 2}')
    assert exc.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    # Same name and same input while RUNNING is idempotent (AWS documents this for STANDARD workflows).
    aws.sfn.start_execution(stateMachineArn=aws.arn, name="run-1", input='{"a": 1}')
    assert len(executions(aws)) == 1


def test_execution_already_exists_counts_as_a_duplicate_not_a_failure(aws: Aws, router: Router) -> None:
    # Given the run already exists (started by an earlier invocation whose claims have since expired)
    body = envelope(s3_event("sales/a.csv"), aws.arn)
    run_id = run_id_for(PIPELINE, [parse_envelope(body).identity])
    aws.sfn.start_execution(stateMachineArn=aws.arn, name=run_id, input="{}")

    # When
    report = route(router, sqs_event([body], ["late"]))

    # Then
    assert failures(report) == []
    assert report.runs_duplicate == [run_id] and report.runs_started == []
    assert count(report, "RunsDuplicate") == 1
    assert len(executions(aws)) == 1


# --------------------------------------------------------------------------- the Lambda handler


@pytest.fixture
def handler_env(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    for name, value in {
        "MANIFEST_BUCKET": ARTIFACTS,
        "IDEMPOTENCY_TABLE": TABLE,
        "LEDGER_BUCKET": OUTPUTS,
        "TOPIC_ARN": TOPIC,
        "POWERTOOLS_SERVICE_NAME": "autopilot-router",
        "POWERTOOLS_METRICS_NAMESPACE": "EmrAutopilot",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "AWS_LAMBDA_FUNCTION_NAME": "autopilot-dev-router",
    }.items():
        monkeypatch.setenv(name, value)
    return aws


def test_handler_routes_the_sample_batch_end_to_end(handler_env: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the sample SQS batch aimed at our state machine (the fixture's ARN names the same machine)
    aws = handler_env
    handler = load_handler("router")
    event = load_event("sqs_router_batch.json")
    assert all(aws.arn in r["body"] for r in event["Records"])
    # whose objects exist (a key with `+` and `%` is resolved against S3; the fixture's bucket is unversioned)
    for record in event["Records"]:
        body = json.loads(record["body"])
        body["event"]["detail"]["object"].pop("version-id", None)
        record["body"] = json.dumps(body)
        aws.s3.put_object(Bucket=LANDING, Key=body["event"]["detail"]["object"]["key"], Body=b"x")

    # When
    response = handler.lambda_handler(event, lambda_context("autopilot-dev-router"))

    # Then one window run over the two data files; the _temporary file is skipped
    assert response == {"batchItemFailures": []}
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == [
        "sales/2024-06-01/Q1 report+final %20ü.csv",
        "sales/2024-06-01/orders.csv",
    ]
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    metrics = {
        (m["Name"], doc.get("pipeline")): doc[m["Name"]]
        for doc in emitted
        if "_aws" in doc
        for d in doc["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
    }
    assert metrics[("RunsStarted", PIPELINE)] == [1.0]
    assert metrics[("ObjectsRouted", PIPELINE)] == [2.0]
    assert metrics[("ObjectsSkipped", PIPELINE)] == [1.0]
    assert metrics[("RecordsReceived", None)] == [3.0]

    # When the same batch is delivered again
    again = handler.lambda_handler(event, lambda_context("autopilot-dev-router"))

    # Then nothing new starts
    assert again == {"batchItemFailures": []}
    assert len(executions(aws)) == 1


def test_handler_reports_failed_runs_and_malformed_records(handler_env: Aws) -> None:
    # Given a malformed record next to a record for a state machine that does not exist
    missing = handler_env.arn.replace("sales-daily", "gone")
    body = envelope(s3_event("sales/a.csv"), missing)
    handler = load_handler("router")

    # When
    response = handler.lambda_handler(
        sqs_event(["oops", body], ["bad", "orphan"]), lambda_context("autopilot-dev-router")
    )

    # Then both come back, each for its own reason
    assert response == {"batchItemFailures": [{"itemIdentifier": "bad"}, {"itemIdentifier": "orphan"}]}


def test_handler_cold_start_names_the_missing_variable(handler_env: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEMPOTENCY_TABLE")
    with pytest.raises(RuntimeError, match="IDEMPOTENCY_TABLE"):
        load_handler("router")


# --------------------------------------------------------------------------- CloudTrail S3 data events

BOTH = ("eventbridge", "cloudtrail")


def data_event(
    key: str,
    *,
    name: str = "PutObject",
    version_id: str | None = None,
    error_code: str | None = None,
    time_: str = "2024-06-01T10:15:03Z",
) -> dict[str, Any]:
    """A real-shaped "AWS API Call via CloudTrail" S3 data event (the fixture file, with these fields changed)."""
    event = load_event("s3_put_object_cloudtrail.json")
    event["time"] = time_
    detail = event["detail"]
    detail.update(eventName=name, eventTime=time_)
    detail["requestParameters"]["key"] = key
    detail["resources"][0]["ARN"] = f"arn:aws:s3:::{LANDING}/{key}"
    if version_id is None:
        detail["responseElements"].pop("x-amz-version-id")
    else:
        detail["responseElements"]["x-amz-version-id"] = version_id
    if error_code is not None:
        detail.update(errorCode=error_code, errorMessage="Access Denied", responseElements=None)
    return event


def both_reports(aws: Aws, key: str, body: bytes = b"order_id\n1\n", **kwargs: Any) -> tuple[str, str]:
    """Write `key` and return the two envelopes that report it: S3's notification and CloudTrail's data event."""
    put = aws.s3.put_object(Bucket=LANDING, Key=key, Body=body)
    notified = s3_event(key, size=len(body), etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
    return (
        envelope(notified, aws.arn, sources=BOTH, **kwargs),
        envelope(data_event(key, version_id=put.get("VersionId")), aws.arn, sources=BOTH, **kwargs),
    )


@pytest.fixture
def heads(router: Router, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys the router HEADs, in order."""
    calls: list[str] = []
    real = router.s3.head_object

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["Key"])
        return real(**kwargs)

    monkeypatch.setattr(router.s3, "head_object", counting)
    return calls


def test_cloudtrail_fixtures_parse_to_the_write_they_report() -> None:
    # Given the PutObject fixture (same object as the "Object Created" fixture) and a CopyObject fixture
    put = parse_envelope(
        envelope(
            load_event("s3_put_object_cloudtrail.json"),
            f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:x",
            sources=BOTH,
        )
    )
    copy_ = parse_envelope(
        envelope(
            load_event("s3_copy_object_cloudtrail.json"),
            f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:x",
            sources=BOTH,
        )
    )

    # Then bucket/key come from requestParameters; CloudTrail carries no size, etag or sequencer
    assert (put.source, put.reason, put.bucket, put.key) == (
        "cloudtrail",
        "PutObject",
        LANDING,
        "sales/2024-06-01/orders.csv",
    )
    assert (put.size, put.etag, put.sequencer, put.version_id) == (None, "", "", "FOQJmXWtRc1GzBIljXaCR5mNNHJJq0E.")
    assert put.event_time == "2024-06-01T10:15:02Z"
    assert (copy_.reason, copy_.key, copy_.version_id) == ("CopyObject", "sales/2024-06-01/Q1 report+final.csv", None)
    with pytest.raises(RuntimeError, match="HeadObject"):
        _ = put.identity  # a CloudTrail report is identified only after reading the object


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_cloudtrail_key_is_kept_byte_exact(key: str) -> None:
    # Given a data event: CloudTrail logs the key as stored (like resources[].ARN), not URL-encoded
    event = data_event(key)

    # When / Then
    assert data_event_key(event["detail"]["requestParameters"]).encode() == key.encode()
    assert (
        parse_envelope(envelope(event, f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:x", sources=BOTH)).key == key
    )


def test_cloudtrail_special_keys_land_in_the_manifest_byte_exact(aws: Aws, router: Router) -> None:
    # Given objects under awkward keys, reported by CloudTrail only
    for key in SPECIAL_KEYS:
        aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"x" * 10)
    bodies = [envelope(data_event(k), aws.arn, sources=["cloudtrail"]) for k in SPECIAL_KEYS]

    # When
    report = route(router, sqs_event(bodies))

    # Then one run; its manifest names every object exactly, with the size and etag HeadObject read
    assert failures(report) == []
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert sorted(o.key for o in manifest.objects) == sorted(SPECIAL_KEYS)
    assert all(o.size == 10 and len(o.etag) == 32 for o in manifest.objects)


@pytest.mark.parametrize("order", ["notification first", "data event first"])
def test_one_write_reported_by_both_sources_in_separate_invocations_runs_once(
    aws: Aws, router: Router, heads: list[str], order: str
) -> None:
    # Given one PutObject, reported by S3's notification and by CloudTrail
    notified, logged = both_reports(aws, "sales/2024-06-01/both.csv", mode="per_object")
    first, second = (notified, logged) if order == "notification first" else (logged, notified)

    # When each report arrives in its own invocation
    one = route(router, sqs_event([first], ["first"]))
    two = route(router, sqs_event([second], ["second"]))

    # Then both claimed the same identity: one run, the other report is a duplicate
    [execution] = executions(aws)
    assert one.runs_started == [execution["name"]] and two.runs_started == []
    assert count(two, "DuplicateObjects") == 1
    assert failures(one) == failures(two) == []
    assert heads == ["sales/2024-06-01/both.csv"] * 2
    [obj] = manifest_of(aws, execution).objects
    assert (obj.key, obj.size) == ("sales/2024-06-01/both.csv", 11)


def test_both_reports_in_one_batch_make_one_run_with_one_head(aws: Aws, router: Router, heads: list[str]) -> None:
    # Given three objects, each reported twice, mixed in one window batch
    pairs = [both_reports(aws, f"sales/w/{n}.csv") for n in ("a", "b", "c")]
    bodies = [p[0] for p in pairs] + [p[1] for p in reversed(pairs)]

    # When
    report = route(router, sqs_event(bodies))

    # Then one run over three objects, each read once
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == ["sales/w/a.csv", "sales/w/b.csv", "sales/w/c.csv"]
    assert count(report, "DuplicateObjects") == 3
    assert sorted(heads) == ["sales/w/a.csv", "sales/w/b.csv", "sales/w/c.csv"]


def test_an_overwrite_with_the_same_bytes_is_a_new_arrival(aws: Aws, router: Router) -> None:
    # Given an object that ran once
    notified, logged = both_reports(aws, "sales/again.csv", mode="per_object")
    route(router, sqs_event([notified, logged], ["n1", "l1"]))

    # When the same bytes are written again a second later (same etag, new last-modified), reported twice again
    time.sleep(1.05)
    notified, logged = both_reports(aws, "sales/again.csv", mode="per_object")
    report = route(router, sqs_event([logged, notified], ["l2", "n2"]))

    # Then a second run starts, and only one
    assert len(report.runs_started) == 1
    assert len(executions(aws)) == 2


def test_eventbridge_only_pipelines_keep_their_identity_run_ids_and_make_no_s3_call(
    aws: Aws, router: Router, heads: list[str]
) -> None:
    # Given the sample record of an EventBridge-only pipeline (its envelope has no `sources`)
    body = load_event("sqs_router_batch.json")["Records"][0]["body"]
    assert '"sources"' not in body

    # When / Then: identity from the event (with the sequencer), run id as before CloudTrail support
    event = parse_envelope(body)
    assert event.identity == (
        f"{LANDING}/sales/2024-06-01/orders.csv\x00FOQJmXWtRc1GzBIljXaCR5mNNHJJq0E.\x00"
        "4e68adba0abe2dc8653dc3354e14c01d\x00006408CAD69598B05E"
    )
    assert run_id_for(PIPELINE, [event.identity]) == "sales-daily-622f9f0f6588e90c7067ec7e"
    report = route(router, sqs_event([envelope(s3_event("sales/no-head.csv"), aws.arn)]))
    assert len(report.runs_started) == 1
    assert heads == []


def test_an_object_gone_before_it_is_read_is_skipped_not_failed(aws: Aws, router: Router) -> None:
    # Given a data event for an object deleted since (HeadObject: 404), next to one that exists
    aws.s3.put_object(Bucket=LANDING, Key="sales/kept.csv", Body=b"1")
    bodies = [
        envelope(data_event("sales/deleted.csv"), aws.arn, sources=BOTH),
        envelope(data_event("sales/kept.csv"), aws.arn, sources=BOTH),
    ]

    # When
    report = route(router, sqs_event(bodies, ["gone", "kept"]))

    # Then the gone object is skipped with its reason and a metric; the other one runs
    assert failures(report) == []
    assert report.skipped == [("sales/deleted.csv", "object gone before it was read")]
    assert count(report, "ObjectsGone") == 1
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == ["sales/kept.csv"]


def test_a_head_error_other_than_404_fails_only_that_record(
    aws: Aws, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given S3 denies reading one object
    aws.s3.put_object(Bucket=LANDING, Key="sales/denied.csv", Body=b"1")
    aws.s3.put_object(Bucket=LANDING, Key="sales/fine.csv", Body=b"1")
    real = router.s3.head_object

    def head(**kwargs: Any) -> Any:
        if kwargs["Key"] == "sales/denied.csv":
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")
        return real(**kwargs)

    monkeypatch.setattr(router.s3, "head_object", head)
    bodies = [envelope(data_event(k), aws.arn, sources=BOTH) for k in ("sales/denied.csv", "sales/fine.csv")]

    # When
    report = route(router, sqs_event(bodies, ["denied", "fine"]))

    # Then that record returns to the queue (SQS redelivers it); the other one runs
    assert failures(report) == ["denied"]
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == ["sales/fine.csv"]


def test_cloudtrail_reports_are_filtered_by_key_before_and_by_size_after_reading(
    aws: Aws, router: Router, heads: list[str]
) -> None:
    # Given a hidden file, a temporary file, an empty object and a failed PutObject
    aws.s3.put_object(Bucket=LANDING, Key="sales/empty.csv", Body=b"")
    events = [
        data_event("sales/_hidden.csv"),
        data_event("sales/_temporary/0/part-0000.csv"),
        data_event("sales/empty.csv"),
        data_event("sales/denied.csv", error_code="AccessDenied"),
    ]

    # When
    report = route(router, sqs_event([envelope(e, aws.arn, sources=BOTH) for e in events]))

    # Then nothing runs, nothing fails, and only the empty object was read (to learn its size)
    assert executions(aws) == [] and failures(report) == []
    assert dict(report.skipped) == {
        "sales/_hidden.csv": "hidden file",
        "sales/_temporary/0/part-0000.csv": "inside a temporary folder",
        "sales/empty.csv": "zero-byte object",
        "sales/denied.csv": "failed call (AccessDenied)",
    }
    assert heads == ["sales/empty.csv"]


def test_complete_multipart_upload_and_copy_object_reports_start_runs(aws: Aws, router: Router) -> None:
    # Given objects written by CompleteMultipartUpload and CopyObject, reported by CloudTrail only
    for key in ("sales/mpu.csv", "sales/copied.csv"):
        aws.s3.put_object(Bucket=LANDING, Key=key, Body=b"order_id\n1\n")
    bodies = [
        envelope(
            data_event("sales/mpu.csv", name="CompleteMultipartUpload"),
            aws.arn,
            sources=["cloudtrail"],
            mode="per_object",
        ),
        envelope(data_event("sales/copied.csv", name="CopyObject"), aws.arn, sources=["cloudtrail"], mode="per_object"),
    ]

    # When
    report = route(router, sqs_event(bodies))

    # Then
    assert failures(report) == []
    assert len(executions(aws)) == 2


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    node = event
    for name in path[:-1]:
        node = node[name]
    del node[path[-1]]
    return event


@pytest.mark.parametrize(
    ("event", "sources", "message"),
    [
        (
            _without(data_event("sales/a.csv"), "detail", "requestParameters", "key"),
            BOTH,
            "event.detail.requestParameters.key: got None; expected a non-empty string",
        ),
        (
            _without(data_event("sales/a.csv"), "detail", "requestParameters", "bucketName"),
            BOTH,
            "event.detail.requestParameters.bucketName: got None; expected a bucket name",
        ),
        (
            _without(data_event("sales/a.csv"), "detail", "requestParameters"),
            BOTH,
            "event.detail.requestParameters: got None; expected an object",
        ),
        (
            data_event("sales/a.csv", name="GetObject"),
            BOTH,
            "event.detail.eventName: got 'GetObject'; expected one of ['PutObject', 'CopyObject', "
            "'CompleteMultipartUpload']",
        ),
        (
            {**data_event("sales/a.csv"), "detail-type": "AWS Service Event via CloudTrail"},
            BOTH,
            "event: source 'aws.s3', detail-type 'AWS Service Event via CloudTrail'",
        ),
        (
            data_event("sales/a.csv"),
            None,
            "trigger.sources: got ['eventbridge']; the event is a 'AWS API Call via CloudTrail' event",
        ),
        (
            data_event("sales/a.csv"),
            ["cloudtrail", "cloudtrail"],
            "trigger.sources: got ['cloudtrail', 'cloudtrail']; expected a list of distinct values",
        ),
    ],
    ids=[
        "no-key",
        "no-bucket",
        "no-request-parameters",
        "not-a-write",
        "service-event",
        "source-not-configured",
        "sources-twice",
    ],
)
def test_malformed_cloudtrail_record_fails_alone_with_one_clear_error(
    aws: Aws, router: Router, event: dict[str, Any], sources: Sequence[str] | None, message: str
) -> None:
    # Given a malformed data-event record next to a good one
    aws.s3.put_object(Bucket=LANDING, Key="sales/good.csv", Body=b"1")
    bad = envelope(event, aws.arn, sources=sources)
    good = envelope(data_event("sales/good.csv"), aws.arn, sources=BOTH)

    # When / Then the error names the field
    with pytest.raises(MalformedRecord) as exc:
        parse_envelope(bad)
    assert str(exc.value).startswith(message)
    report = route(router, sqs_event([bad, good], ["bad", "good"]))
    assert failures(report) == ["bad"]
    assert len(executions(aws)) == 1


# --------------------------------------------------------------------------- issue 13: overwrites, late objects, keys


def _age(key: str, minutes: int) -> None:
    """Make the stored object `minutes` older (moto's backend): S3's last-modified has whole seconds."""
    import datetime

    from moto.s3.models import s3_backends

    stored = s3_backends[ACCOUNT]["aws"].buckets[LANDING].keys[key]
    stored.last_modified = stored.last_modified - datetime.timedelta(minutes=minutes)


def _ledger(aws: Aws) -> list[dict[str, Any]]:
    listed = aws.s3.list_objects_v2(Bucket=OUTPUTS, Prefix="_runs/").get("Contents", [])
    return [json.loads(aws.s3.get_object(Bucket=OUTPUTS, Key=o["Key"])["Body"].read()) for o in listed]


def test_two_writes_of_one_key_in_a_window_list_the_newest_once_and_record_the_other(aws: Aws, router: Router) -> None:
    """Issue 13.2: the key was listed twice in one manifest. The events arrive newest first (reverse order)."""
    old = s3_event("sales/x.csv", etag="a" * 32, version_id="v1", sequencer="0055AED6DCD90281E5")
    new = s3_event("sales/x.csv", etag="b" * 32, version_id="v2", sequencer="0055AED6DCD90281E6")
    other = s3_event("sales/y.csv")
    report = route(router, sqs_event([envelope(e, aws.arn) for e in (new, old, other)]))
    assert failures(report) == []
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert [(o.key, o.version_id, o.etag) for o in manifest.objects] == [
        ("sales/x.csv", "v2", "b" * 32),
        ("sales/y.csv", None, other["detail"]["object"]["etag"]),
    ]
    assert manifest.superseded == [
        {"key": "sales/x.csv", "version_id": "v1", "etag": "a" * 32, "sequencer": "0055AED6DCD90281E5",
         "superseded_by": {"version_id": "v2", "etag": "b" * 32}},
    ]  # fmt: skip
    assert len(manifest.claims) == 3  # the superseded version is claimed by this run too: a redelivery rejoins it
    assert count(report, "SupersededVersions") == 1
    again = route(router, sqs_event([envelope(old, aws.arn)]))
    assert failures(again) == [] and len(executions(aws)) == 1


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [("0A", "09", True), ("0A", "0A00", False), ("0A01", "0A", True), ("00FF", "0100", False)],
)
def test_sequencers_compare_right_padded_with_zeros(a: str, b: str, newer: bool) -> None:
    from routing import newer_sequencer

    assert newer_sequencer(a, b) is newer


def _marked(aws: Aws, event: dict[str, Any], late_objects: str = "rerun") -> str:
    body = json.loads(envelope(event, aws.arn, mode="marker", marker_name="_SUCCESS"))
    body["trigger"]["late_objects"] = late_objects
    return json.dumps(body)


def test_a_marker_before_its_data_is_ledgered_skipped_and_the_late_data_runs(aws: Aws, router: Router) -> None:
    """Issue 13.3: the objects after an early marker were stranded (a router warning and a metric only)."""
    # Given a marker written to an empty folder
    marker = put(aws, "sales/2024-07-01/_SUCCESS", size=0)
    _age("sales/2024-07-01/_SUCCESS", 5)
    report = route(router, sqs_event([_marked(aws, marker)], ["marker"]))
    # Then nothing starts, and the ledger says SKIPPED with the reason
    assert executions(aws) == [] and failures(report) == []
    [entry] = _ledger(aws)
    assert entry["state"] == "SKIPPED" and entry["trigger"]["first_key"] == "sales/2024-07-01/_SUCCESS"
    assert "holds no data written before it" in entry["reason"] and "late_objects: rerun" in entry["reason"]
    # When the data arrives after it
    late = [put(aws, f"sales/2024-07-01/part-{i}.csv") for i in range(3)]
    report = route(router, sqs_event([_marked(aws, e) for e in late]))
    # Then one run over the folder's late objects
    [execution] = executions(aws)
    assert [o.key for o in manifest_of(aws, execution).objects] == [f"sales/2024-07-01/part-{i}.csv" for i in range(3)]
    trigger = json.loads(execution_input(aws, execution))["trigger"]
    assert trigger["late_objects"] is True and trigger["marker_key"] == "sales/2024-07-01/_SUCCESS"
    assert count(report, "LateObjects") == 3
    # and a redelivery starts nothing more
    again = route(router, sqs_event([_marked(aws, e) for e in late]))
    assert failures(again) == [] and len(executions(aws)) == 1


def test_late_objects_with_notify_are_ledgered_and_not_run(aws: Aws, router: Router) -> None:
    put(aws, "sales/2024-07-02/_SUCCESS", size=0)
    _age("sales/2024-07-02/_SUCCESS", 5)
    late = put(aws, "sales/2024-07-02/part-0.csv")
    report = route(router, sqs_event([_marked(aws, late, "notify")]))
    assert executions(aws) == [] and failures(report) == []
    [entry] = _ledger(aws)
    assert entry["state"] == "SKIPPED" and "written after its folder's marker" in entry["reason"]
    assert entry["objects"][0]["key"] == "sales/2024-07-02/part-0.csv"


def test_data_written_before_its_marker_is_covered_by_the_marker_run_only(aws: Aws, router: Router) -> None:
    """The normal order, with the data events processed after the marker exists: no late run."""
    data = put(aws, "sales/2024-07-03/part-0.csv")
    marker = put(aws, "sales/2024-07-03/_SUCCESS", size=0)
    late = put(aws, "sales/2024-07-03/part-1.csv")
    _age("sales/2024-07-03/part-0.csv", 3)
    _age("sales/2024-07-03/_SUCCESS", 2)  # so part-1 was written after the marker (a later second)
    report = route(router, sqs_event([_marked(aws, e) for e in (data, marker, late)]))
    assert failures(report) == []
    runs = {e["name"]: manifest_of(aws, e) for e in executions(aws)}
    listed = sorted(o.key for m in runs.values() for o in m.objects)
    assert listed == ["sales/2024-07-03/part-0.csv", "sales/2024-07-03/part-1.csv"]  # each object in one run
    assert len(runs) == 2
    assert ("sales/2024-07-03/part-0.csv", COVERED) in [(k, r) for k, r in report.skipped]


COVERED = "written before its folder's marker (the marker's run lists it)"


def _encoded(key: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(key, safe="/")


@pytest.mark.parametrize("encoding", ["raw", "url"])
def test_keys_are_resolved_against_s3_whichever_encoding_the_event_uses(
    aws: Aws, router: Router, encoding: str
) -> None:
    """Issue 13.6: an encoded key used to land in the manifest as is (an object that does not exist)."""
    etags = {k: aws.s3.put_object(Bucket=LANDING, Key=k, Body=k.encode())["ETag"].strip('"') for k in SPECIAL_KEYS}
    reported = {k: (k if encoding == "raw" else _encoded(k)) for k in SPECIAL_KEYS}
    events = [s3_event(reported[k], size=len(k.encode()), etag=etags[k]) for k in SPECIAL_KEYS]
    report = route(router, sqs_event([envelope(e, aws.arn) for e in events]))
    assert failures(report) == []
    [execution] = executions(aws)
    manifest = manifest_of(aws, execution)
    assert sorted((o.key, o.etag) for o in manifest.objects) == sorted(etags.items())
    decoded = {o.key for o in manifest.objects if o.key_form == "url-decoded"}
    assert decoded == {k for k in SPECIAL_KEYS if reported[k] != k}
    assert count(report, "KeysDecoded") == len(decoded)


def test_both_forms_existing_are_told_apart_by_the_event_s_etag(aws: Aws, router: Router) -> None:
    """`a+b.csv` (raw) and `a b.csv` (what `a+b.csv` decodes to) both exist: the etag says which was written."""
    plus = aws.s3.put_object(Bucket=LANDING, Key="sales/a+b.csv", Body=b"plus")["ETag"].strip('"')
    space = aws.s3.put_object(Bucket=LANDING, Key="sales/a b.csv", Body=b"space")["ETag"].strip('"')
    route(router, sqs_event([envelope(s3_event("sales/a+b.csv", size=5, etag=space), aws.arn, mode="per_object")]))
    route(router, sqs_event([envelope(s3_event("sales/a+b.csv", size=4, etag=plus), aws.arn, mode="per_object")]))
    keys = sorted((o.key, o.key_form) for e in executions(aws) for o in manifest_of(aws, e).objects)
    assert keys == [("sales/a b.csv", "url-decoded"), ("sales/a+b.csv", None)]


def test_an_object_under_neither_form_is_ledgered_and_counted_never_dropped(aws: Aws, router: Router) -> None:
    report = route(router, sqs_event([envelope(s3_event("sales/gone%20away.csv"), aws.arn)]))
    assert executions(aws) == [] and failures(report) == []
    assert count(report, "ObjectsGone") == 1 and count(report, "ArrivalsSkipped") == 1
    [entry] = _ledger(aws)
    assert entry["state"] == "SKIPPED"
    assert entry["objects"][0]["key_forms_tried"] == ["sales/gone%20away.csv", "sales/gone away.csv"]
    assert "no object under 'sales/gone%20away.csv' nor 'sales/gone away.csv'" in entry["reason"]


def test_a_pinned_version_is_read_by_its_version_id(aws: Aws, router: Router) -> None:
    aws.s3.put_bucket_versioning(Bucket=LANDING, VersioningConfiguration={"Status": "Enabled"})
    first = aws.s3.put_object(Bucket=LANDING, Key="sales/v 1.csv", Body=b"one")
    aws.s3.put_object(Bucket=LANDING, Key="sales/v 1.csv", Body=b"two, newer")
    event = s3_event("sales/v+1.csv", size=3, etag=first["ETag"].strip('"'), version_id=first["VersionId"])
    report = route(router, sqs_event([envelope(event, aws.arn)]))
    assert failures(report) == []
    [obj] = manifest_of(aws, executions(aws)[0]).objects
    assert (obj.key, obj.version_id, obj.key_form) == ("sales/v 1.csv", first["VersionId"], "url-decoded")
