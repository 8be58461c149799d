"""The twin refuses what AWS refuses: IAM on every call of the app's principals, AWS's quotas on Step Functions,
and EMR `.sync` tasks that notice a step's end only when Step Functions polls (60 s, then 300 s)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import load_event
from tests.deployment import Deployed

TRANSIENT = "sales-cluster"


def _role_of(env: Deployed, pipeline: str) -> str:
    """The name of a pipeline's workflow role in the twin's IAM."""
    sfn = env.sfn
    arn = sfn.describe_state_machine(stateMachineArn=env.state_machine_of(pipeline))["roleArn"]
    return str(arn).rsplit("/", 1)[-1]


@contextmanager
def edited_policy(env: Deployed, role: str, edit: Any) -> Iterator[None]:
    """Rewrite the role's inline policies with `edit(statement) -> statement | None` for the block; restore after."""
    iam = env.twin.client("iam")
    saved = {
        name: iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    }
    try:
        for name, document in saved.items():
            statements = [edit(dict(s)) for s in document["Statement"]]
            changed = {**document, "Statement": [s for s in statements if s is not None]}
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(changed))
        yield
    finally:
        for name, document in saved.items():
            iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))


def _console_run(env: Deployed, pipeline: str, prefix: str) -> tuple[str, str]:
    key = f"{prefix}{uuid.uuid4().hex[:8]}/orders.json"  # not a .csv: the pipeline's trigger ignores it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    env.twin.wait_idle()
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    return name, env.start_console_run(name, {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"]})


def _task_failures(env: Deployed, arn: str, resource: str) -> list[dict[str, Any]]:
    return [
        e["taskFailedEventDetails"]
        for e in env.history(arn)
        if e["type"] == "TaskFailed" and e["taskFailedEventDetails"].get("resource") == resource
    ]


# ------------------------------------------------------------------------------------------------------------ IAM


@pytest.mark.iam_denials
def test_run_job_flow_granted_on_cluster_arns_is_refused_and_on_star_it_runs(env: Deployed) -> None:
    # Given the workflow role as it was before the fix: RunJobFlow on arn:...:cluster/*
    def old_grant(statement: dict[str, Any]) -> dict[str, Any]:
        if statement.get("Sid") == "CreateTaggedCluster":
            statement["Resource"] = f"arn:aws:elasticmapreduce:{env.twin.region}:{env.twin.account}:cluster/*"
        return statement

    with edited_policy(env, _role_of(env, TRANSIENT), old_grant):
        name, arn = _console_run(env, TRANSIENT, "sales-cluster/iam-old/")
        # When a transient run starts, Then AWS's refusal of RunJobFlow fails it (after the workflow's retries)
        assert env.finished(arn, timeout=120)["status"] == "FAILED"
    failures = _task_failures(env, arn, "createCluster")
    assert failures, "createCluster never failed"
    assert {f["error"] for f in failures} == {"EMR.AmazonElasticMapReduceException"}
    assert "is not authorized to perform: elasticmapreduce:RunJobFlow on resource: *" in failures[0]["cause"]
    assert "Error Code: AccessDeniedException" in failures[0]["cause"]
    ledger = env.ledger(name)
    assert ledger["state"] == "FAILED" and "elasticmapreduce:RunJobFlow" in ledger["cause"]
    assert not env.clusters_left_running()
    # And with the deployed (fixed) statement the same run succeeds
    name, arn = _console_run(env, TRANSIENT, "sales-cluster/iam-fixed/")
    assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"


@pytest.mark.iam_denials
def test_enforcement_is_on_a_role_stripped_of_one_action_fails_its_run(env: Deployed) -> None:
    # Given the serverless workflow role without emr-serverless:StartJobRun
    def strip(statement: dict[str, Any]) -> dict[str, Any] | None:
        return None if statement.get("Sid") == "StartJobRun" else statement

    with edited_policy(env, _role_of(env, "sales-daily"), strip):
        name, arn = _console_run(env, "sales-daily", "sales/iam-strip/")
        assert env.finished(arn, timeout=90)["status"] == "FAILED"
    (failure, *_) = _task_failures(env, arn, "startJobRun")
    assert failure["error"] == "EMRServerless.AWSEMRServerlessException"  # AccessDenied is not in its model
    assert "not authorized to perform: emr-serverless:StartJobRun" in failure["cause"]
    assert env.twin.iam.stats.denials[-1].action == "emr-serverless:StartJobRun"
    assert env.ledger(name)["state"] == "FAILED"


def test_every_call_of_a_run_is_authorized(env: Deployed) -> None:
    before = env.twin.iam.stats.snapshot()
    _, arn = _console_run(env, "sales-daily", "sales/iam-count/")
    assert env.finished(arn)["status"] == "SUCCEEDED"
    after = env.twin.iam.stats.snapshot()
    assert after["calls"] > before["calls"] and after["statements_evaluated"] > before["statements_evaluated"]
    assert after["denials"] == before["denials"] and after["unmapped"] == before["unmapped"]


def test_s3_answers_403_for_a_missing_key_to_a_reader_who_may_not_list(env: Deployed) -> None:
    # The sales-daily workflow role may GetObject its _metrics.json but not list the outputs bucket: a run that
    # wrote no metrics reads 403 (AccessDenied), as S3 answers, not 404; the workflow treats both as "no metrics".
    _, arn = _console_run(env, "sales-daily", "sales/no-metrics/")
    assert env.finished(arn)["status"] == "SUCCEEDED"
    caught = [e for e in env.history(arn) if e["type"] == "TaskFailed" and "getObject" in json.dumps(e, default=str)]
    assert caught and "Access Denied" in caught[0]["taskFailedEventDetails"]["cause"]


# -------------------------------------------------------------------------------------------------------- quotas


def test_console_input_over_256_kib_and_a_name_with_a_space_are_refused(env: Deployed) -> None:
    machine = env.state_machine_of("sales-daily")
    big = json.dumps({"pipeline": "sales-daily", "inputs": [], "overrides": {"arguments": ["x" * (300 * 1024)]}})
    with pytest.raises(ClientError) as too_big:
        env.sfn.start_execution(stateMachineArn=machine, name=f"big-{uuid.uuid4().hex[:6]}", input=big)
    assert too_big.value.response["Error"]["Code"] == "ValidationException"
    assert "less than or equal to 262144" in too_big.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as spaced:
        env.sfn.start_execution(stateMachineArn=machine, name="my run", input="{}")
    assert spaced.value.response["Error"]["Code"] == "InvalidName"
    with pytest.raises(ClientError) as long_name:
        env.sfn.start_execution(stateMachineArn=machine, name="r" * 81, input="{}")
    assert long_name.value.response["Error"]["Code"] == "InvalidName"


# -------------------------------------------------------------------------------------------------------- timing


def _seconds(later: str, earlier: str) -> float:
    def parse(value: str) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    return parse(later) - parse(earlier)


def test_a_twelve_minute_step_is_noticed_from_its_event_not_at_the_fifteen_minute_poll(env: Deployed) -> None:
    # Given the twin's clock at 400x (a poll interval of 60 s takes 0.15 s) and a step that runs 12 minutes
    scale, previous, phase = 0.0025, env.twin.time_scale, env.twin.emr_ec2.phase_seconds
    env.twin.set_time_scale(scale)
    env.twin.emr_ec2.phase_seconds = 0.005  # the cluster is up within seconds of the task's start
    try:
        env.twin.faults.run_next_job_for(12 * 60)
        name, arn = _console_run(env, TRANSIENT, "sales-cluster/timing/")
        assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    finally:
        env.twin.set_time_scale(previous)
        env.twin.emr_ec2.phase_seconds = phase
    (step,) = env.ledger(name)["steps"]
    # Then the ledger shows when EMR ended the step and when the workflow noticed it
    assert step["ended_at"] and step["noticed_at"]
    step_seconds = _seconds(step["ended_at"], step["started_at"]) / scale
    delay = step["notice_delay_seconds"] / scale
    assert 690 <= step_seconds <= 760  # 12 twin minutes (plus the twin's own latency)
    # An addStep.sync task would poll at 60 s x 10, then 900 s, 1200 s, ...: a step ending ~12-13 min after the
    # task's start would be noticed at the 15-minute poll, 2-3 twin minutes late (tests/twin/test_fidelity.py). The
    # workflow's RunStep is answered by the step's own EMR event instead: before any poll could have noticed it.
    assert 0 <= delay < 60, f"noticed {delay:.0f} twin seconds after the step ended"
    assert delay == pytest.approx(_seconds(step["noticed_at"], step["ended_at"]) / scale, abs=1)


# --------------------------------------------------------------------------------------------------- event shapes

# Keys AWS sends that the twin's "Step Functions Execution Status Change" lacks (local/patches.py builds it); the
# test fails when the twin drifts further and when it gains one of these, so that this list only ever shrinks.
EXECUTION_DETAIL_KEYS_NOT_EMITTED: set[str] = set()


def _keys(event: dict[str, Any]) -> tuple[set[str], set[str]]:
    return set(event), set(event["detail"])


def test_the_twins_emr_and_execution_events_have_the_keys_of_the_aws_samples(env: Deployed) -> None:
    # Given the app deployed on the twin; When a transient-cluster run goes from cluster creation to termination
    name, arn = _console_run(env, TRANSIENT, "sales-cluster/event-shapes/")
    assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    cluster_id = env.ledger(name)["cluster_id"]
    events = list(env.twin.events)

    def emitted(detail_type: str, **detail: str) -> dict[str, Any]:
        matching = [e for e in events if e["detail-type"] == detail_type and detail.items() <= e["detail"].items()]
        assert matching, f"the twin emitted no {detail_type!r} with {detail}"
        return matching[-1]

    # Then each event the twin emitted has the envelope and detail keys of AWS's sample of it
    step = emitted("EMR Step Status Change", clusterId=cluster_id, state="COMPLETED")
    assert _keys(step) == _keys(load_event("emr_step_status_change.json"))
    cluster = emitted("EMR Cluster State Change", clusterId=cluster_id, state="TERMINATED")
    assert _keys(cluster) == _keys(load_event("emr_cluster_state_change.json"))
    assert isinstance(json.loads(cluster["detail"]["stateChangeReason"]), dict)  # a JSON string, as AWS sends it
    ended = emitted("Step Functions Execution Status Change", executionArn=arn, status="SUCCEEDED")
    envelope, detail = _keys(load_event("sfn_execution_status_change.json"))
    assert _keys(ended) == (envelope, detail - EXECUTION_DETAIL_KEYS_NOT_EMITTED)


# ------------------------------------------------------------------------------------------------------ Scheduler


def _schedule_role(env: Deployed, schedule: str) -> tuple[dict[str, Any], str]:
    found = env.twin.scheduler.schedule(schedule)
    return found, str(found["Target"]["RoleArn"]).rsplit("/", 1)[-1]


def _dead_letters(env: Deployed, schedule_arn: str) -> list[dict[str, Any]]:
    """The dead-letter events of one schedule, taken off the trigger DLQ (so its alarm stays quiet afterwards)."""
    sqs = env.twin.client("sqs")
    url = sqs.get_queue_url(QueueName="autopilot-dev-trigger-dlq")["QueueUrl"]
    found = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
        "Messages"
    ):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
            if attributes.get("SCHEDULE_ARN") == schedule_arn:
                found.append({"body": message["Body"], **attributes})
    return found


@pytest.mark.iam_denials
def test_a_schedule_whose_role_may_not_send_retries_then_dead_letters(env: Deployed) -> None:
    # Given the nightly schedule's role may send to the DLQ but no longer to the pipeline's queue
    schedule, role = _schedule_role(env, "sales-nightly-schedule")
    queue_arn = schedule["Target"]["Arn"]

    def strip(statement: dict[str, Any]) -> dict[str, Any]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        return {**statement, "Resource": [r for r in resources if r != queue_arn]}

    with edited_policy(env, role, strip):
        firing = env.twin.scheduler.fire("sales-nightly-schedule", at=datetime.fromisoformat("2031-05-06T00:00:00Z"))
    # Then every attempt of the retry policy was refused, and the firing went to the DLQ with why
    assert firing is not None and not firing.delivered and firing.dead_lettered
    retries = schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"]
    assert firing.attempts == retries + 1 and len(firing.errors) == retries + 1
    assert "not authorized to perform: sqs:SendMessage" in firing.errors[-1]
    (dead,) = _dead_letters(env, schedule["Arn"])
    assert json.loads(dead["body"])["scheduled_time"] == "2031-05-06T00:00:00Z"
    assert dead["TARGET_ARN"] == queue_arn and dead["RETRY_ATTEMPTS"] == str(retries)
    assert env.twin.iam.stats.denials[-1].action == "sqs:SendMessage"


def test_a_schedule_role_scheduler_may_not_assume_delivers_nothing(env: Deployed) -> None:
    # Given a schedule whose role trusts EventBridge, not Scheduler
    schedule, _ = _schedule_role(env, "sales-nightly-schedule")
    iam, client = env.twin.client("iam"), env.twin.client("scheduler")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                      "Principal": {"Service": "events.amazonaws.com"}}]}  # fmt: skip
    name = f"wrong-trust-{uuid.uuid4().hex[:8]}"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    target = {**schedule["Target"], "RoleArn": role["Arn"]}
    target.pop("DeadLetterConfig")
    client.create_schedule(Name=name, ScheduleExpression="rate(1 day)", FlexibleTimeWindow={"Mode": "OFF"},
                           Target={**target, "RetryPolicy": {"MaximumRetryAttempts": 1}})  # fmt: skip
    try:
        firing = env.twin.scheduler.fire(name, at=datetime.fromisoformat("2031-05-07T00:00:00Z"))
    finally:
        client.delete_schedule(Name=name)
    # Then nothing is delivered: each attempt fails on the trust policy
    assert firing is not None and not firing.delivered and firing.attempts == 2
    assert "scheduler.amazonaws.com may not assume" in firing.errors[0]
