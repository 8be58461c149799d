"""The twin's CloudWatch alarms (local/cloudwatch.py): "CloudWatch Alarm State Change" events on the bus.

One twin for the module (no Spark) with a queue behind the product's rule shape (alarm name prefix, state
ALARM). The alarm clock is fixed per test so datapoint timestamps place datapoints in known periods.
Alarm names outside the delivery test never start with the rule's prefix.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import CloudWatchAlarmEvent
from aws_lambda_powertools.utilities.data_classes.cloud_watch_alarm_event import CloudWatchAlarmData
from botocore.exceptions import ClientError
from moto.cloudwatch.models import cloudwatch_backends

from fleet_scaling import alarm_of
from local.twin import Twin
from tests.twin.twin_helpers import deployed_twin, wait_for

ACCOUNT, REGION = "123456789012", "us-east-1"
NAMESPACE, METRIC = "AWS/ElasticMapReduce", "YARNMemoryAvailablePercentage"
PREFIX = "autopilot-test-scaling-"
RULE = "autopilot-test-ScalingAlarm"
QUEUE = "scaling-alarm-events"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AWS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Events": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": QUEUE}},
        "ScalingAlarm": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": RULE,
                "EventPattern": {  # the scaler's rule (stacks/alarm_scaling.py)
                    "source": ["aws.cloudwatch"],
                    "detail-type": ["CloudWatch Alarm State Change"],
                    "detail": {"alarmName": [{"prefix": PREFIX}], "state": {"value": ["ALARM"]}},
                },
                "Targets": [{"Id": "q", "Arn": {"Fn::GetAtt": ["Events", "Arn"]}}],
            },
        },
        "EventsPolicy": {  # EventBridge may deliver the rule's events to the queue (the twin's IAM asks)
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "Events"}],
                "PolicyDocument": {
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": {"Fn::GetAtt": ["Events", "Arn"]},
                            "Condition": {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ScalingAlarm", "Arn"]}}},
                        }
                    ]
                },
            },
        },
    }
}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    with deployed_twin(Path(tmp_path_factory.mktemp("cloudwatch-twin")), "alarms", TEMPLATE) as (twin, _):
        yield twin


@pytest.fixture
def twin(deployed: Twin) -> Iterator[Twin]:
    """Per test: the alarm clock reads NOW (tests move it); afterwards the wall clock again."""
    wall = deployed.cloudwatch.clock
    deployed.cloudwatch.clock = lambda: NOW
    yield deployed
    deployed.cloudwatch.clock = wall


def cluster() -> str:
    return f"j-{uuid.uuid4().hex[:13].upper()}"


def put_alarm(twin: Twin, name: str, cluster_id: str, **overrides: Any) -> None:
    request = {
        "AlarmName": name,
        "AlarmDescription": f"scale out the task fleet of {cluster_id} when YARN memory runs short",
        "Namespace": NAMESPACE,
        "MetricName": METRIC,
        "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}],
        "Statistic": "Average",
        "Period": 60,
        "EvaluationPeriods": 3,
        "DatapointsToAlarm": 2,
        "Threshold": 15.0,
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "missing",
    }
    twin.client("cloudwatch").put_metric_alarm(**(request | overrides))


def put_data(twin: Twin, cluster_id: str, *points: tuple[float, datetime]) -> None:
    data = [
        {"MetricName": METRIC, "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}], "Value": v, "Timestamp": t}
        for v, t in points
    ]
    twin.client("cloudwatch").put_metric_data(Namespace=NAMESPACE, MetricData=data)


def events_of(twin: Twin, name: str) -> list[dict[str, Any]]:
    return [e for e in list(twin.cloudwatch.events) if e["detail"]["alarmName"] == name]


def described(twin: Twin, name: str) -> dict[str, Any]:
    alarms = twin.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    assert len(alarms) == 1, alarms
    alarm: dict[str, Any] = alarms[0]
    return alarm


def stamp(moment: datetime) -> str:
    return f"{moment:%d/%m/%y %H:%M:%S}"


# --------------------------------------------------------------------------- state and shape


def test_a_new_alarm_starts_insufficient_data_and_an_update_keeps_the_state_without_events(twin: Twin) -> None:
    name, cluster_id = f"cw-new-{uuid.uuid4().hex[:8]}", cluster()
    put_alarm(twin, name, cluster_id)
    alarm = described(twin, name)
    assert (alarm["StateValue"], alarm["StateReason"]) == ("INSUFFICIENT_DATA", "Unchecked: Initial alarm creation")
    assert "StateReasonData" not in alarm  # moto: OK with "{}"
    assert events_of(twin, name) == []

    twin.client("cloudwatch").set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test: ALARM")
    put_alarm(twin, name, cluster_id, Threshold=20.0)  # an update: AWS leaves the state as it is
    alarm = described(twin, name)
    assert (alarm["StateValue"], alarm["StateReason"], alarm["Threshold"]) == ("ALARM", "test: ALARM", 20.0)
    assert [e["detail"]["state"]["value"] for e in events_of(twin, name)] == ["ALARM"]


def test_set_alarm_state_over_http_emits_one_event_per_change_in_the_aws_shape(twin: Twin) -> None:
    name, cluster_id = f"cw-shape-{uuid.uuid4().hex[:8]}", cluster()
    put_alarm(twin, name, cluster_id, Period=300)
    cloudwatch = twin.client("cloudwatch")
    reason_data = json.dumps({"version": "1.0", "note": "set by a test"})
    cloudwatch.set_alarm_state(
        AlarmName=name, StateValue="ALARM", StateReason="test: ALARM", StateReasonData=reason_data
    )
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test: still ALARM")  # no change
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test: OK")

    def on_bus_now() -> list[dict[str, Any]]:
        return [e for e in list(twin.events) if e["detail"].get("alarmName") == name]

    wait_for(lambda: len(on_bus_now()) >= 2, what="two alarm events on the bus")
    twin.wait_idle(timeout=10, settle=0.05)
    on_bus = on_bus_now()
    assert [e["detail"]["state"]["value"] for e in on_bus] == ["ALARM", "OK"]
    event = on_bus[0]
    arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
    assert {k: v for k, v in event.items() if k not in ("id", "time", "detail")} == {
        "version": "0",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": ACCOUNT,
        "region": REGION,
        "resources": [arn],
    }
    assert UUID.match(event["id"]) and ISO_SECONDS.match(event["time"])
    detail = event["detail"]
    assert list(detail) == ["alarmName", "state", "previousState", "configuration"]
    assert detail["state"] == {"value": "ALARM", "reason": "test: ALARM", "reasonData": reason_data,
                               "timestamp": "2026-11-24T10:00:00.000+0000"}  # fmt: skip
    assert detail["previousState"] == {"value": "INSUFFICIENT_DATA", "reason": "Unchecked: Initial alarm creation",
                                       "timestamp": "2026-11-24T10:00:00.000+0000"}  # fmt: skip
    [metric] = detail["configuration"]["metrics"]
    assert UUID.match(metric.pop("id"))
    assert detail["configuration"] == {
        "description": f"scale out the task fleet of {cluster_id} when YARN memory runs short",
        "metrics": [
            {
                "metricStat": {
                    "metric": {"namespace": NAMESPACE, "name": METRIC, "dimensions": {"JobFlowId": cluster_id}},
                    "period": 300,
                    "stat": "Average",
                },
                "returnData": True,
            }
        ],
    }
    # The second change: previous state ALARM with the reason data given, new state without any (as AWS sends)
    assert on_bus[1]["detail"]["previousState"]["reason"] == "test: still ALARM"
    assert on_bus[1]["detail"]["state"] == {"value": "OK", "reason": "test: OK",
                                            "timestamp": "2026-11-24T10:00:00.000+0000"}  # fmt: skip
    assert events_of(twin, name) == [{k: v for k, v in e.items() if k not in ("id", "version")} for e in on_bus]

    # powertools parses it: the EventBridge detail is the alarm action's `alarmData`; the scaler reads it
    data = CloudWatchAlarmData(event["detail"])
    assert (data.alarm_name, data.state.value, data.previous_state.value) == (name, "ALARM", "INSUFFICIENT_DATA")
    assert data.state.reason_data_decoded == {"version": "1.0", "note": "set by a test"}
    assert AWS_TIME.match(data.state.timestamp)
    assert data.configuration.metrics[0].metric_stat.period == 300
    assert data.configuration.metrics[0].metric_stat.metric["dimensions"] == {"JobFlowId": cluster_id}
    action = CloudWatchAlarmEvent(
        {"source": event["source"], "alarmArn": arn, "accountId": event["account"], "time": data.state.timestamp,
         "region": event["region"], "alarmData": detail}
    )  # fmt: skip
    assert action.alarm_data.configuration.description == detail["configuration"]["description"]
    assert alarm_of(event).alarm_name == name


def test_set_alarm_state_in_process_emits_too_and_bad_input_names_the_field(twin: Twin) -> None:
    name, cluster_id = f"cw-inproc-{uuid.uuid4().hex[:8]}", cluster()
    put_alarm(twin, name, cluster_id)
    twin.cloudwatch.set_alarm_state(name, "ALARM", "in-process helper")
    cloudwatch_backends[ACCOUNT][REGION].set_alarm_state(name, "moto in-process", None, "OK")
    assert [(e["detail"]["previousState"]["value"], e["detail"]["state"]["value"]) for e in events_of(twin, name)] == [
        ("INSUFFICIENT_DATA", "ALARM"),
        ("ALARM", "OK"),
    ]
    assert events_of(twin, name)[1]["detail"]["state"]["reason"] == "moto in-process"

    with pytest.raises(ValueError, match="^value: got 'BROKEN'"):
        twin.cloudwatch.set_alarm_state(name, "BROKEN", "x")
    with pytest.raises(ValueError, match="^reason_data: expected a JSON string"):
        twin.cloudwatch.set_alarm_state(name, "ALARM", "x", reason_data="{not json")
    with pytest.raises(LookupError, match="^name: no alarm named 'cw-nope'"):
        twin.cloudwatch.set_alarm_state("cw-nope", "ALARM", "x")
    assert len(events_of(twin, name)) == 2
    assert described(twin, name)["StateValue"] == "OK"


# --------------------------------------------------------------------------- evaluation of metric data


def test_put_metric_data_alarms_when_2_of_3_periods_breach_and_recovers_to_ok(twin: Twin) -> None:
    name, cluster_id = f"cw-eval-{uuid.uuid4().hex[:8]}", cluster()
    put_alarm(twin, name, cluster_id)  # Average < 15 for 2 of 3 periods of 60 s
    # One breaching datapoint in the newest period: too few, and too recent to alarm early
    put_data(twin, cluster_id, (9.8, NOW - timedelta(seconds=30)))
    assert events_of(twin, name) == [] and described(twin, name)["StateValue"] == "INSUFFICIENT_DATA"
    # Another cluster's breaching data is another metric
    put_data(twin, cluster(), (1.0, NOW - timedelta(seconds=90)), (1.0, NOW - timedelta(seconds=150)))
    assert events_of(twin, name) == []

    put_data(twin, cluster_id, (20.0, NOW - timedelta(seconds=150)), (11.2, NOW - timedelta(seconds=90)))
    [alarmed] = events_of(twin, name)
    state = alarmed["detail"]["state"]
    assert state["value"] == "ALARM"
    assert state["reason"] == (
        f"Threshold Crossed: 2 out of the last 3 datapoints [9.8 ({stamp(NOW - timedelta(seconds=60))}), "
        f"11.2 ({stamp(NOW - timedelta(seconds=120))})] were less than the threshold (15.0) "
        "(minimum 2 datapoints for OK -> ALARM transition)."
    )
    assert json.loads(state["reasonData"]) == {
        "version": "1.0",
        "queryDate": "2026-11-24T10:00:00.000+0000",
        "startDate": "2026-11-24T09:57:00.000+0000",
        "statistic": "Average",
        "period": 60,
        "recentDatapoints": [20.0, 11.2, 9.8],
        "threshold": 15.0,
        "evaluatedDatapoints": [
            {"timestamp": "2026-11-24T09:59:00.000+0000", "sampleCount": 1.0, "value": 9.8},
            {"timestamp": "2026-11-24T09:58:00.000+0000", "sampleCount": 1.0, "value": 11.2},
            {"timestamp": "2026-11-24T09:57:00.000+0000", "sampleCount": 1.0, "value": 20.0},
        ],
    }
    alarm = described(twin, name)
    assert (alarm["StateValue"], alarm["StateReason"], alarm["StateReasonData"]) == (
        "ALARM",
        state["reason"],
        state["reasonData"],
    )
    # Still breaching (the newest period averages 7.4): no change, no event
    put_data(twin, cluster_id, (5.0, NOW - timedelta(seconds=10)))
    assert len(events_of(twin, name)) == 1

    # Two minutes later the two newest periods are good again: 1 of 3 breaching -> OK
    twin.cloudwatch.clock = lambda: NOW + timedelta(minutes=2)
    put_data(twin, cluster_id, (40.0, NOW + timedelta(seconds=30)), (50.0, NOW + timedelta(seconds=90)))
    assert [e["detail"]["state"]["value"] for e in events_of(twin, name)] == ["ALARM", "OK"]
    recovered = events_of(twin, name)[1]["detail"]
    assert recovered["previousState"] == state
    assert recovered["state"]["reason"] == (
        f"Threshold Crossed: 2 out of the last 3 datapoints [50.0 ({stamp(NOW + timedelta(seconds=60))}), "
        f"40.0 ({stamp(NOW)})] were not less than the threshold (15.0) "
        "(minimum 2 datapoints for ALARM -> OK transition)."
    )
    assert json.loads(recovered["state"]["reasonData"])["recentDatapoints"] == [7.4, 40.0, 50.0]
    assert described(twin, name)["StateValue"] == "OK"


# The user guide's tables ("How alarm state is evaluated when data is missing"): 5 periods, oldest first,
# 0 good, X breaching, - missing; EvaluationPeriods 3; results for missing / ignore / breaching / notBreaching.
RETAIN = "retain"
GUIDE_ROWS = [
    (3, "0 - X - X", ("OK", "OK", "OK", "OK")),
    (3, "0 - - - -", ("OK", "OK", "OK", "OK")),
    (3, "- - - - -", ("INSUFFICIENT_DATA", RETAIN, "ALARM", "OK")),
    (3, "0 X X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (3, "- - X - -", ("ALARM", RETAIN, "ALARM", "OK")),
    (2, "0 - X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (2, "0 0 X 0 X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    (2, "0 - X - -", ("OK", "OK", "ALARM", "OK")),
    (2, "- - - - 0", ("OK", "OK", "ALARM", "OK")),
    (2, "- - - X -", ("ALARM", RETAIN, "ALARM", "OK")),
    # not in the guide (twin choice, see local/cloudwatch.py): one breaching datapoint, too recent to alarm
    (3, "- - - - X", (RETAIN, RETAIN, "ALARM", "OK")),
]


@pytest.mark.parametrize(
    ("datapoints_to_alarm", "row", "expected"), GUIDE_ROWS, ids=[f"{m}of3 {r}" for m, r, _ in GUIDE_ROWS]
)
def test_missing_data_is_treated_as_the_user_guide_tables_say(
    twin: Twin, datapoints_to_alarm: int, row: str, expected: tuple[str, str, str, str]
) -> None:
    backend = cloudwatch_backends[ACCOUNT][REGION]  # in-process: the same hooks as over HTTP, faster
    marks = row.split()
    got: dict[tuple[str, str], str] = {}
    for treatment, outcome in zip(("missing", "ignore", "breaching", "notBreaching"), expected, strict=True):
        for start in ("OK", "ALARM"):  # a retained state shows as the state the alarm had
            name, cluster_id = f"cw-guide-{uuid.uuid4().hex[:8]}", cluster()
            dimensions = [{"Name": "JobFlowId", "Value": cluster_id}]
            backend.put_metric_alarm(
                name=name, namespace=NAMESPACE, metric_name=METRIC, comparison_operator="GreaterThanThreshold",
                evaluation_periods=3, period=60, threshold=10.0, statistic="Maximum", description="guide",
                dimensions=dimensions, alarm_actions=[], datapoints_to_alarm=datapoints_to_alarm,
                treat_missing_data=treatment,
            )  # fmt: skip
            backend.set_alarm_state(name, "test start", None, start)
            data = [
                {"MetricName": METRIC, "Dimensions": dimensions, "Value": 20.0 if mark == "X" else 1.0,
                 "Timestamp": (NOW - timedelta(seconds=60 * (len(marks) - 1 - i) + 30)).replace(tzinfo=None)}
                for i, mark in enumerate(marks)
                if mark != "-"
            ]  # fmt: skip
            if data:
                backend.put_metric_data(NAMESPACE, data)
            else:
                twin.cloudwatch.evaluate(name)
            got[(treatment, start)] = backend.alarms[name].state_value
            want = start if outcome == RETAIN else outcome
            assert got[(treatment, start)] == want, f"{treatment}, from {start}: {got}"


def test_deleting_an_alarm_emits_nothing_and_its_metric_no_longer_evaluates_it(twin: Twin) -> None:
    name, cluster_id = f"cw-deleted-{uuid.uuid4().hex[:8]}", cluster()
    put_alarm(twin, name, cluster_id, EvaluationPeriods=1, DatapointsToAlarm=1)
    put_data(twin, cluster_id, (3.0, NOW - timedelta(seconds=20)))
    assert [e["detail"]["state"]["value"] for e in events_of(twin, name)] == ["ALARM"]

    cloudwatch = twin.client("cloudwatch")
    cloudwatch.delete_alarms(AlarmNames=[name])
    put_data(twin, cluster_id, (90.0, NOW - timedelta(seconds=5)))  # would be OK
    with pytest.raises(ClientError) as error:
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="gone")
    assert error.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(LookupError, match="^name: no alarm named"):
        twin.cloudwatch.evaluate(name)
    assert cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"] == []
    assert len(events_of(twin, name)) == 1


def test_put_metric_alarm_rejects_what_aws_rejects_naming_the_field(twin: Twin) -> None:
    name, cluster_id = f"cw-invalid-{uuid.uuid4().hex[:8]}", cluster()
    cases = [
        ({"EvaluationPeriods": 2, "DatapointsToAlarm": 3},
         "DatapointsToAlarm must be less than or equal to EvaluationPeriods"),
        ({"TreatMissingData": "zero"},
         "Option zero is not supported. Supported options for parameter TreatMissingData"),
        ({"ComparisonOperator": "Below"}, "Value 'Below' at 'comparisonOperator' failed to satisfy constraint"),
        ({"Statistic": "Mean"}, "Value 'Mean' at 'statistic' failed to satisfy constraint"),
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(ClientError) as error:
            put_alarm(twin, name, cluster_id, **overrides)
        assert error.value.response["Error"]["Code"] == "ValidationError"
        assert message in error.value.response["Error"]["Message"]
    assert twin.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"] == []


# --------------------------------------------------------------------------- delivery through EventBridge


def test_the_scaler_rule_delivers_only_alarms_under_its_prefix_entering_alarm(twin: Twin) -> None:
    cluster_id, other_id = cluster(), cluster()
    scaling_out = f"{PREFIX}sales-{cluster_id}-out-memory-low"
    scaling_in = f"{PREFIX}sales-{other_id}-in-memory-high"
    elsewhere = f"cw-other-{other_id}-out-memory-low"
    put_alarm(twin, scaling_out, cluster_id)
    put_alarm(twin, scaling_in, other_id)
    put_alarm(twin, elsewhere, other_id)
    cloudwatch = twin.client("cloudwatch")
    cloudwatch.set_alarm_state(AlarmName=scaling_in, StateValue="OK", StateReason="test: OK")  # prefix, not ALARM
    cloudwatch.set_alarm_state(AlarmName=elsewhere, StateValue="ALARM", StateReason="test: ALARM")  # not the prefix
    put_data(twin, cluster_id, (9.0, NOW - timedelta(seconds=100)), (8.0, NOW - timedelta(seconds=40)))  # -> ALARM
    cloudwatch.set_alarm_state(AlarmName=scaling_out, StateValue="OK", StateReason="test: re-armed")  # not ALARM

    assert [e["detail"]["state"]["value"] for e in events_of(twin, scaling_out)] == ["ALARM", "OK"]
    twin.wait_idle(timeout=10, settle=0.05)
    sqs = twin.client("sqs")
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert [(b["detail"]["alarmName"], b["detail"]["state"]["value"]) for b in bodies] == [(scaling_out, "ALARM")]
    assert bodies[0]["detail"] == events_of(twin, scaling_out)[0]["detail"]
    assert [d.event_id for d in twin.deliveries if d.rule == RULE] == [bodies[0]["id"]]
    assert all(d.error is None for d in twin.deliveries if d.rule == RULE)
