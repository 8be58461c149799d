"""Task-fleet scaling from CloudWatch alarms, end to end on the twin: the workflow's alarms, an alarm
going to ALARM -> EventBridge -> the scaler -> ModifyInstanceFleet, cooldown, one action per alarm
transition, bounds, the ledger, and no alarm left behind.

`sales-cluster` (dev.yaml): task fleet 0 on-demand / 4 spot, alarms mode, out `memory-low` / in
`memory-idle`, step 2, 0-8 units, all spot, cooldown 300 s. The cooldown is wall-clock time in the
scaler, so scenarios that need it to have passed move the cluster's last action back in the state table.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from local.emr_ec2 import InstanceFleet
from local.spark_runner import SparkJob, SparkResult
from tests.deployment import Deployed

PIPELINE = "sales-cluster"
DEPLOYMENT = "autopilot-dev"
CLUSTER_ITEM = "autopilot-scaler.cluster#"


class GatedRunner:
    """A step that runs until the test opens the gate (or the step is cancelled), then succeeds."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def run(self, job: SparkJob, cancel: threading.Event) -> SparkResult:
        while not (self.gate.wait(0.05) or cancel.is_set()):
            pass
        return SparkResult(True, 0, None, 0.0, [], None)


def _task_fleet(env: Deployed, cluster_id: str) -> InstanceFleet:
    return next(f for f in env.twin.emr_ec2.clusters[cluster_id].fleets if f.fleet_type == "TASK")


def _state_table(env: Deployed) -> str:
    ddb = env.twin.client("dynamodb")
    return next(t for t in ddb.list_tables()["TableNames"] if t.endswith("-idempotency"))


def _actions(env: Deployed, cluster_id: str) -> list[dict[str, Any]]:
    item = (
        env.twin.client("dynamodb")
        .get_item(TableName=_state_table(env), Key={"id": {"S": CLUSTER_ITEM + cluster_id}}, ConsistentRead=True)
        .get("Item")
    )
    return [a["M"] for a in item["actions"]["L"]] if item else []


def _pass_cooldown(env: Deployed, cluster_id: str) -> None:
    """As if the cooldown had passed: the cluster's last action an hour earlier."""
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    env.twin.client("dynamodb").update_item(
        TableName=_state_table(env),
        Key={"id": {"S": CLUSTER_ITEM + cluster_id}},
        UpdateExpression="SET last_action_at = :t",
        ExpressionAttributeValues={":t": {"N": str(an_hour_ago)}},
    )


def _alarm(env: Deployed, name: str, value: str) -> None:
    env.twin.client("cloudwatch").set_alarm_state(AlarmName=name, StateValue=value, StateReason=f"test: {value}")


def _scaler_calls(env: Deployed) -> int:
    return sum(1 for i in env.twin.runtime.invocations if i.function_name.endswith("-scaler"))


def test_alarms_step_the_task_fleet_within_bounds_once_per_transition_and_leave_nothing_behind(
    env: Deployed,
) -> None:
    # Given a run whose step works until the test lets it finish, on a cluster with its two scaling alarms
    runner = GatedRunner()
    env.twin.emr_ec2.runner = runner
    try:
        _scale_through_a_run(env, runner)
    finally:
        runner.gate.set()  # a failed scenario still lets its run end, so its cluster and alarms go


@contextmanager
def gated_run_with_task_fleet(env: Deployed) -> Iterator[tuple[str, str, str, Any]]:
    """A sales-cluster run whose step works until the block ends: (run id, execution ARN, cluster id, the twin's
    task fleet) once the fleet runs; the step is let go however the block ends."""
    runner = GatedRunner()
    env.twin.emr_ec2.runner = runner
    try:
        run_id, arn, cluster_id = _start_run_with_alarms(env)
        fleet = _task_fleet(env, cluster_id)
        env.wait_for(lambda: fleet.state == "RUNNING", 30, "the task fleet to run")
        yield run_id, arn, cluster_id, fleet
    finally:
        runner.gate.set()


def _start_run_with_alarms(env: Deployed) -> tuple[str, str, str]:
    """A console run of sales-cluster: (run id, execution ARN, cluster id) once the cluster runs with its
    two scaling alarms."""
    key = f"{PIPELINE}/scaling/{uuid.uuid4().hex[:8]}.txt"  # not .csv: the trigger ignores it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    run_id = f"{PIPELINE}-{uuid.uuid4().hex[:8]}"
    arn = env.start_console_run(run_id, {"pipeline": PIPELINE, "inputs": [f"s3://{env.landing}/{key}"]})
    cluster_id = env.running_cluster(run_id)
    both = sorted(
        f"{DEPLOYMENT}-scaling-{PIPELINE}-{cluster_id}-{rule}" for rule in ("out-memory-low", "in-memory-idle")
    )
    env.wait_for(lambda: sorted(env.scaling_alarms(cluster_id)) == both, 30, "the workflow's two scaling alarms")
    return run_id, arn, cluster_id


def _scale_through_a_run(env: Deployed, runner: GatedRunner) -> None:
    run_id, arn, cluster_id = _start_run_with_alarms(env)
    out_alarm = f"{DEPLOYMENT}-scaling-{PIPELINE}-{cluster_id}-out-memory-low"
    in_alarm = f"{DEPLOYMENT}-scaling-{PIPELINE}-{cluster_id}-in-memory-idle"
    described = env.twin.client("cloudwatch").describe_alarms(AlarmNames=[out_alarm])["MetricAlarms"][0]
    assert described["Dimensions"] == [{"Name": "JobFlowId", "Value": cluster_id}]
    assert (described["Namespace"], described["MetricName"]) == (
        "AWS/ElasticMapReduce",
        "YARNMemoryAvailablePercentage",
    )
    fleet = _task_fleet(env, cluster_id)
    env.wait_for(lambda: fleet.state == "RUNNING", 30, "the task fleet to run")
    assert (fleet.target_on_demand, fleet.target_spot) == (0, 4)

    # When YARN memory runs short: the scale-out alarm goes to ALARM
    calls = _scaler_calls(env)
    started = time.monotonic()
    _alarm(env, out_alarm, "ALARM")
    # Then the task fleet's target grows by one step (all spot), through RESIZING back to RUNNING
    env.wait_for(lambda: fleet.target_spot == 6, 30, "ModifyInstanceFleet to 6 spot units")
    latency = time.monotonic() - started
    env.wait_for(lambda: fleet.state == "RUNNING" and fleet.provisioned_spot == 6, 30, "the resize to finish")
    (first,) = _actions(env, cluster_id)
    assert (first["direction"]["S"], int(first["from_units"]["N"]), int(first["to_units"]["N"])) == ("out", 4, 6)

    # When the alarm fires again inside the cooldown (the scaler re-armed it: OK, then ALARM again)
    env.wait_for(lambda: _alarm_state(env, out_alarm) == "OK", 30, "the scaler to re-arm the alarm")
    before = _scaler_calls(env)
    _alarm(env, out_alarm, "ALARM")
    env.wait_for(lambda: _scaler_calls(env) > before, 30, "the scaler to hear the second alarm")
    # Then nothing changes
    assert (fleet.target_on_demand, fleet.target_spot) == (0, 6) and len(_actions(env, cluster_id)) == 1

    # When the same alarm event is delivered twice (EventBridge delivers at least once)
    _pass_cooldown(env, cluster_id)
    replay = _capture_next_event(env, out_alarm)
    env.wait_for(lambda: fleet.target_spot == 8, 30, "the third alarm's step to 8")
    env.wait_for(lambda: fleet.state == "RUNNING", 30, "the resize to finish")
    _pass_cooldown(env, cluster_id)
    before = _scaler_calls(env)
    env.twin.put_event(replay)  # as CloudWatch redelivers it (PutEvents refuses an aws.* source, as EventBridge does)
    env.wait_for(lambda: _scaler_calls(env) > before, 30, "the scaler to hear the redelivery")
    # Then it acted once: still 8 (which is also max_units), two actions in all
    assert fleet.target_spot == 8 and len(_actions(env, cluster_id)) == 2

    # When memory sits idle: the scale-in alarm fires four times (cooldown passed each time)
    warm: list[float] = []
    for expected in (6, 4, 2, 0, 0):
        _pass_cooldown(env, cluster_id)
        before = _scaler_calls(env)
        _alarm(env, in_alarm, "OK")
        fired = time.monotonic()
        _alarm(env, in_alarm, "ALARM")
        if expected != fleet.target_spot:
            env.wait_for(lambda to=expected: fleet.target_spot == to, 30, f"ModifyInstanceFleet to {expected}")
            warm.append(time.monotonic() - fired)
        env.wait_for(lambda calls=before: _scaler_calls(env) > calls, 30, "the scaler to hear the scale-in alarm")
        env.wait_for(lambda: fleet.state == "RUNNING", 30, "the resize to finish")
        # Then the fleet shrinks by one step down to min_units (0), and not below
        assert (fleet.target_on_demand, fleet.target_spot) == (0, expected)
    assert [a["direction"]["S"] for a in _actions(env, cluster_id)] == ["out", "out", "in", "in", "in", "in"]

    # When the step finishes, the run succeeds and its teardown deletes the alarms
    runner.gate.set()
    assert env.finished(arn)["status"] == "SUCCEEDED"
    assert env.scaling_alarms(cluster_id) == []
    # And the final ledger entry lists every action, in order, with its split and reason
    ledger = env.ledger(run_id)
    steps = [(a["direction"], a["from_units"], a["to_units"]) for a in ledger["scaling"]["actions"]]
    assert steps == [("out", 4, 6), ("out", 6, 8), ("in", 8, 6), ("in", 6, 4), ("in", 4, 2), ("in", 2, 0)]
    assert all(a["on_demand"] == 0 and a["spot"] == a["to_units"] for a in ledger["scaling"]["actions"])
    assert _scaler_calls(env) - calls >= 9
    scaler = sorted(i.duration for i in env.twin.runtime.invocations if i.function_name.endswith("-scaler"))
    print(
        f"\nalarm ALARM -> ModifyInstanceFleet in the twin: first (cold scaler) {latency * 1000:.0f} ms, warm "
        f"{min(warm) * 1000:.0f}-{max(warm) * 1000:.0f} ms over {len(warm)}; scaler invocation median "
        f"{scaler[len(scaler) // 2] * 1000:.0f} ms over {len(scaler)}"
    )


def test_emr_metric_data_under_the_threshold_fires_the_alarm_and_the_fleet_grows(env: Deployed) -> None:
    # Given a run's cluster with its scaling alarms (scale out on YARN memory < 15 % for 2 of 3 periods)
    with gated_run_with_task_fleet(env) as (run_id, arn, cluster_id, fleet):
        # When EMR reports YARN memory available of 40 %, 12 % and 9 % over the last three 5-minute periods
        now = datetime.now(UTC)
        env.twin.client("cloudwatch").put_metric_data(
            Namespace="AWS/ElasticMapReduce",
            MetricData=[
                {
                    "MetricName": "YARNMemoryAvailablePercentage",
                    "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}],
                    "Timestamp": now - timedelta(minutes=minutes_ago),
                    "Value": value,
                    "Unit": "Percent",
                }
                for minutes_ago, value in ((12, 40.0), (7, 12.0), (2, 9.0))
            ],
        )
        # Then CloudWatch's evaluation puts the alarm in ALARM and the task fleet grows by one step
        env.wait_for(lambda: fleet.target_spot == 6, 30, "ModifyInstanceFleet to 6 spot units")
        (action,) = _actions(env, cluster_id)
        assert action["alarm_reason"]["S"].startswith("Threshold Crossed: 2 out of the last 3 datapoints")
    assert env.finished(arn)["status"] == "SUCCEEDED"
    assert [a["rule"] for a in env.ledger(run_id)["scaling"]["actions"]] == ["memory-low"]


def _alarm_state(env: Deployed, name: str) -> str:
    alarms = env.twin.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    return str(alarms[0]["StateValue"]) if alarms else "DELETED"


def _capture_next_event(env: Deployed, alarm: str) -> dict[str, Any]:
    """Fire `alarm` (OK -> ALARM) and return its "CloudWatch Alarm State Change" event (read from a queue a test
    rule delivers it to), for replaying the very same transition on the bus."""
    sqs, events = env.twin.client("sqs"), env.twin.client("events")
    name = f"capture-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.cloudwatch"], "detail": {"alarmName": [alarm], "state": {"value": ["ALARM"]}}}
    rule_arn = events.put_rule(Name=name, EventPattern=json.dumps(pattern))["RuleArn"]
    # EventBridge may send to the queue only what its policy allows (the twin's IAM evaluates it, as AWS does)
    allow_rule = {"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sqs:SendMessage",
                  "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}}  # fmt: skip
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({"Statement": [allow_rule]})})
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": queue_arn}])
    try:
        _alarm(env, alarm, "OK")
        _alarm(env, alarm, "ALARM")
        message = env.wait_for(
            lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages"), 30, "the alarm event"
        )[0]
    finally:
        events.remove_targets(Rule=name, Ids=["q"])
        events.delete_rule(Name=name)
    event = json.loads(message["Body"])
    return {k: event[k] for k in ("source", "detail-type", "detail", "resources", "time")}
