"""The clock triggers as deployed: one EventBridge Scheduler schedule per `trigger.schedule` / `trigger.expect`, each
sending its firing to the pipeline's arrivals queue with a role allowed exactly that (and the DLQ), a retry policy,
and the alarmed trigger dead-letter queue."""

from __future__ import annotations

import json
from typing import Any

from config.loader import load_config
from stacks.schedules import MAXIMUM_EVENT_AGE_SECONDS, MAXIMUM_RETRY_ATTEMPTS, SCHEDULED_TIME
from tests.infra.conftest import Synthesized


def _ref(value: Any) -> str:
    """The logical id a Ref / Fn::GetAtt points at."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    return str(value["Fn::GetAtt"][0])


def _schedules(synth: Synthesized) -> dict[str, dict[str, Any]]:
    return {v["Properties"]["Name"]: v["Properties"] for v in synth.resources("AWS::Scheduler::Schedule").values()}


def _queue_id(synth: Synthesized, name: str) -> str:
    (found,) = [k for k, v in synth.resources("AWS::SQS::Queue").items() if v["Properties"].get("QueueName") == name]
    return found


def _input(schedule: dict[str, Any]) -> dict[str, Any]:
    """The target input with its tokens (state machine ARN, bucket name) replaced by their logical ids."""
    parts = schedule["Target"]["Input"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else f"@{_ref(p)}" for p in parts)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_one_schedule_per_clock_trigger_in_its_time_zone(synth: Synthesized) -> None:
    config = load_config("dev")
    expected = {}
    for name, pipeline in config.pipelines.items():
        trigger = pipeline.trigger
        if trigger and trigger.schedule:
            expected[f"autopilot-dev-{name}-schedule"] = (trigger.schedule.expression, trigger.schedule.timezone)
        if trigger and trigger.expect:
            expected[f"autopilot-dev-{name}-deadline"] = (trigger.expect.expression, trigger.expect.timezone)
    assert expected == {
        "autopilot-dev-sales-nightly-schedule": ("cron(0 2 * * ? *)", "Europe/Berlin"),
        "autopilot-dev-sales-daily-deadline": ("cron(0 6 * * ? *)", "Europe/Berlin"),
    }
    schedules = _schedules(synth)
    assert {n: (s["ScheduleExpression"], s["ScheduleExpressionTimezone"]) for n, s in schedules.items()} == expected
    for schedule in schedules.values():
        assert schedule["State"] == "ENABLED" and schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
        assert schedule["Target"]["RetryPolicy"] == {
            "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
            "MaximumEventAgeInSeconds": MAXIMUM_EVENT_AGE_SECONDS,
        }


def test_firings_go_to_the_pipelines_queue_with_the_scheduled_time(synth: Synthesized) -> None:
    schedules = _schedules(synth)
    nightly = schedules["autopilot-dev-sales-nightly-schedule"]
    assert _ref(nightly["Target"]["Arn"]) == _queue_id(synth, "autopilot-dev-sales-nightly-arrivals")
    message = _input(nightly)
    assert message["kind"] == "scheduled" and message["pipeline"] == "sales-nightly"
    assert message["scheduled_time"] == SCHEDULED_TIME and message["on_empty"] == "skip"
    assert message["trigger"]["partition_template"] == "sales-nightly/dt={ds}/"
    assert message["bucket"].startswith("@StorageLanding") and message["state_machine_arn"].startswith("@Pipeline")
    deadline = _input(schedules["autopilot-dev-sales-daily-deadline"])
    assert deadline["kind"] == "deadline" and deadline["by"] == "06:00" and deadline["timezone"] == "Europe/Berlin"


def test_a_scheduled_pipeline_has_no_arrival_rule_but_its_queue_feeds_the_router(synth: Synthesized) -> None:
    names = [r["Properties"].get("Name", "") for r in synth.resources("AWS::Events::Rule").values()]
    assert not [n for n in names if "sales-nightly" in n]
    queue = _queue_id(synth, "autopilot-dev-sales-nightly-arrivals")
    mappings = [m["Properties"] for m in synth.resources("AWS::Lambda::EventSourceMapping").values()]
    assert [m for m in mappings if _ref(m["EventSourceArn"]) == queue]


def test_each_schedule_role_may_send_only_to_its_queue_and_the_dead_letters(synth: Synthesized) -> None:
    dead_letters = _queue_id(synth, "autopilot-dev-trigger-dlq")
    policies = synth.resources("AWS::IAM::Policy")
    roles = synth.resources("AWS::IAM::Role")
    for name, schedule in _schedules(synth).items():
        role = _ref(schedule["Target"]["RoleArn"])
        trust = roles[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [
            {
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
                "Effect": "Allow",
                "Principal": {"Service": "scheduler.amazonaws.com"},
            }
        ], name
        statements = [
            s
            for p in policies.values()
            if role in [_ref(r) for r in p["Properties"]["Roles"]]
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        ]
        assert [s["Action"] for s in statements] == ["sqs:SendMessage"], name
        assert sorted(_ref(r) for r in statements[0]["Resource"]) == sorted(
            [_ref(schedule["Target"]["Arn"]), dead_letters]
        ), name
        assert not roles[role]["Properties"].get("ManagedPolicyArns"), name
        # Undeliverable firings go to the alarmed trigger dead-letter queue
        assert _ref(schedule["Target"]["DeadLetterConfig"]["Arn"]) == dead_letters, name
    alarms = [
        a["Properties"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
        if any(_ref(d["Value"]) == dead_letters for d in a["Properties"].get("Dimensions", []) if isinstance(d, dict))
    ]
    assert len(alarms) == 1 and alarms[0]["Threshold"] == 1
