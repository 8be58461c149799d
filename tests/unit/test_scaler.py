"""Scaler (`lambdas/scaler/`): the pure scaling decision, alarm names and events, the durable claim in DynamoDB
(`autopilot_common.scaling_state`), and the whole flow from an alarm event to a resized task fleet/group and a
ledger entry.

DynamoDB, S3, Step Functions, CloudWatch and EMR instance groups are moto. moto 5.2.5 has no instance fleets
(ListInstanceFleets and ModifyInstanceFleet are not implemented, and RunJobFlow ignores `InstanceFleets`), so
`FleetEmr` below answers those calls for fleet clusters the way EMR does (a resize leaves the fleet RESIZING
until `finish_resize`) and hands every other call and cluster to moto's EMR.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autopilot_common import scaling_state as state
from autopilot_common.pipeline_settings import PipelineSettingsError, settings_parameter_name
from config.loader import load_config
from config.scaling import AlarmScaling, scaling_section
from fleet_scaling import (
    Clients,
    Decision,
    ScalerEventError,
    ScalerSettings,
    ScalingPolicy,
    TaskCapacity,
    alarm_of,
    decide,
    ledger_key,
    parse_alarm_name,
    scale_on_alarm,
    split_target,
)
from tests.conftest import load_event, load_handler
from tests.unit.conftest import create_table, put_memory_alarm
from tests.unit.fakes import lambda_context

ACCOUNT, REGION = "123456789012", "us-east-1"
DEPLOYMENT, BUCKET, TABLE = "autopilot-test", "outputs-bkt", "claims"
FLEETS, GROUPS = "sales-cluster", "sales"  # "sales" prefixes "sales-cluster": names must still parse one way
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
FLEET_POLICY = AlarmScaling(mode="alarms", step_units=2, min_units=0, max_units=8, cooldown_seconds=300)
GROUP_POLICY = AlarmScaling(mode="alarms", step_units=2, min_units=1, max_units=6, cooldown_seconds=300)
SECTIONS = {FLEETS: scaling_section(FLEET_POLICY, "fleets"), GROUPS: scaling_section(GROUP_POLICY, "groups")}
ENV = {"DEPLOYMENT": DEPLOYMENT, "OUTPUTS_BUCKET": BUCKET, "STATE_TABLE": TABLE}


def put_scaling(pipeline: str, section: Any) -> None:
    """The pipeline's settings parameter with its `scaling` section, as its stack deploys it."""
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=settings_parameter_name(DEPLOYMENT, pipeline), Value=json.dumps({"scaling": section}), Type="String"
    )


@pytest.fixture
def policies(moto: str) -> None:
    for pipeline, section in SECTIONS.items():
        put_scaling(pipeline, section)


def _api_error(code: str, operation: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message or code}}, operation)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 1. the decision (pure)

POLICY = ScalingPolicy(collection="fleets", step_units=2, scale_in_step_units=1, min_units=1, max_units=8)


def _fleet(on_demand: int, spot: int, state: str = "RUNNING") -> TaskCapacity:
    return TaskCapacity("fleet", "if-TASK", state, target_on_demand=on_demand, target_spot=spot)


def _group(count: int, state: str = "RUNNING") -> TaskCapacity:
    return TaskCapacity("group", "ig-TASK", state, requested=count)


@pytest.mark.parametrize(
    ("direction", "policy", "task", "cluster", "since", "expected"),
    [
        # bounds: one step, clamped to [min, max], nothing to do at the bound
        pytest.param("out", POLICY, _fleet(0, 4), "RUNNING", None, ("scale", 4, 6, 0, 6), id="out-one-step"),
        pytest.param("out", POLICY, _fleet(0, 7), "WAITING", None, ("scale", 7, 8, 0, 8), id="out-clamped-to-max"),
        pytest.param("out", POLICY, _fleet(0, 8), "RUNNING", None, ("skip", 8, 8, None, None), id="out-at-max"),
        pytest.param("out", POLICY, _fleet(3, 7), "RUNNING", None, ("skip", 10, 10, None, None), id="out-above-max"),
        pytest.param("out", POLICY, _fleet(0, 0), "RUNNING", None, ("scale", 0, 2, 0, 2), id="out-from-below-min"),
        pytest.param("in", POLICY, _fleet(0, 4), "RUNNING", None, ("scale", 4, 3, 0, 3), id="in-by-in-step"),
        pytest.param("in", POLICY, _fleet(0, 1), "RUNNING", None, ("skip", 1, 1, None, None), id="in-at-min"),
        pytest.param("in", POLICY, _fleet(0, 0), "RUNNING", None, ("skip", 0, 0, None, None), id="in-below-min"),
        pytest.param("in", POLICY, _fleet(2, 10), "RUNNING", None, ("scale", 12, 8, 0, 8), id="in-from-above-max"),
        # cooldown: counted from the last action, strictly shorter skips
        pytest.param("out", POLICY, _fleet(0, 4), "RUNNING", 299.5, ("skip", 4, 4, None, None), id="in-cooldown"),
        pytest.param("out", POLICY, _fleet(0, 4), "RUNNING", 300, ("scale", 4, 6, 0, 6), id="cooldown-over"),
        # cluster and fleet states
        pytest.param("out", POLICY, _fleet(0, 4, "RESIZING"), "RUNNING", None, ("skip", 4, 4, None, None),
                     id="fleet-resizing"),
        pytest.param("out", POLICY, _fleet(0, 4), "TERMINATING", None, ("skip", 4, 4, None, None),
                     id="cluster-terminating"),
        pytest.param("out", POLICY, _fleet(0, 4), "BOOTSTRAPPING", None, ("skip", 4, 4, None, None),
                     id="cluster-starting"),
        # groups: the count, no market split
        pytest.param("out", POLICY, _group(3), "RUNNING", None, ("scale", 3, 5, None, None), id="group-out"),
        pytest.param("in", POLICY, _group(3), "RUNNING", None, ("scale", 3, 2, None, None), id="group-in"),
        pytest.param("out", POLICY, _group(8), "RUNNING", None, ("skip", 8, 8, None, None), id="group-at-max"),
        pytest.param("out", POLICY, _group(3, "RESIZING"), "RUNNING", None, ("skip", 3, 3, None, None),
                     id="group-resizing"),
    ],
)  # fmt: skip
def test_decide(
    direction: Any,
    policy: ScalingPolicy,
    task: TaskCapacity,
    cluster: str,
    since: float | None,
    expected: tuple[str, int, int, int | None, int | None],
) -> None:
    decision = decide(direction, policy, task, cluster, since)
    assert (decision.action, decision.from_units, decision.to_units, decision.on_demand, decision.spot) == expected


@pytest.mark.parametrize(
    ("task", "cluster", "since", "reason", "settling"),
    [
        (_fleet(0, 4), "RUNNING", 100, "within cooldown: 200 s left of 300 s", True),
        (_fleet(0, 4), "RUNNING", 299.5, "within cooldown: 1 s left of 300 s", True),
        (_fleet(0, 4, "RESIZING"), "RUNNING", None, "task fleet if-TASK is RESIZING; expected RUNNING", True),
        (_fleet(0, 4, "TERMINATED"), "RUNNING", None, "task fleet if-TASK is TERMINATED; expected RUNNING", False),
        (_fleet(0, 4), "STARTING", None, "cluster is STARTING; expected RUNNING or WAITING", True),
        (_fleet(0, 4), "TERMINATING", None, "cluster is TERMINATING; expected RUNNING or WAITING", False),
        (_fleet(0, 8), "RUNNING", 10, "task fleet already at max_units (8 units, max 8)", False),
        (_group(8), "RUNNING", None, "task group already at max_units (8 instances, max 8)", False),
    ],
)
def test_skips_say_why_and_whether_they_clear_by_themselves(
    task: TaskCapacity, cluster: str, since: float | None, reason: str, settling: bool
) -> None:
    decision = decide("out", POLICY, task, cluster, since)
    assert decision == Decision("skip", reason, task.units, task.units, settling=settling)


@pytest.mark.parametrize(
    ("target", "spot_percent", "split"),
    [
        (6, 100, (0, 6)),
        (6, 0, (6, 0)),
        (6, 50, (3, 3)),
        (5, 50, (3, 2)),  # 2.5 spot rounds down: never more spot than asked, on-demand takes the rest
        (3, 70, (1, 2)),  # 2.1 -> 2
        (7, 99, (1, 6)),  # 6.93 -> 6
        (1, 99, (1, 0)),
        (0, 50, (0, 0)),
    ],
)
def test_split_target_floors_spot_and_sums_to_the_target(
    target: int, spot_percent: int, split: tuple[int, int]
) -> None:
    assert split_target(target, spot_percent) == split
    assert sum(split) == target


def test_a_scale_decision_splits_the_fleet_target_by_spot_percent() -> None:
    policy = ScalingPolicy(collection="fleets", step_units=3, scale_in_step_units=3, max_units=10, spot_percent=60)
    decision = decide("out", policy, _fleet(2, 2), "RUNNING", None)
    assert (decision.to_units, decision.on_demand, decision.spot) == (7, 3, 4)  # floor(4.2) spot
    assert decision.reason == "scale out 4 -> 7 units (step 3, bounds [0, 10]), 3 on-demand + 4 spot"


# --------------------------------------------------------------------------- 2. names, events, settings

PIPELINES = ("sales", "sales-cluster", "x-j")


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (f"{DEPLOYMENT}-scaling-sales-cluster-j-2AXXXXXXGAPLF-out-memory-low",
         ("sales-cluster", "j-2AXXXXXXGAPLF", "out", "memory-low")),
        (f"{DEPLOYMENT}-scaling-sales-j-ABC123-in-idle", ("sales", "j-ABC123", "in", "idle")),
        (f"{DEPLOYMENT}-scaling-x-j-j-ABC123-in-in", ("x-j", "j-ABC123", "in", "in")),
        ("other-deployment-scaling-sales-j-ABC123-in-idle", None),
        (f"{DEPLOYMENT}-scaling-unknown-j-ABC123-in-idle", None),
        (f"{DEPLOYMENT}-scaling-sales-j-abc123-in-idle", None),  # cluster ids are upper case
        (f"{DEPLOYMENT}-scaling-sales-j-ABC123-up-idle", None),
        (f"{DEPLOYMENT}-scaling-sales-j-ABC123-out", None),  # no rule
        (f"{DEPLOYMENT}-scaling-sales-j-ABC123-out-Idle", None),
        (f"{DEPLOYMENT}-other-sales-j-ABC123-out-idle", None),
    ],
)  # fmt: skip
def test_parse_alarm_name(name: str, parsed: tuple[str, str, str, str] | None) -> None:
    ref = parse_alarm_name(name, DEPLOYMENT, PIPELINES)
    assert (None if ref is None else (ref.pipeline, ref.cluster_id, ref.direction, ref.rule)) == parsed


def test_alarm_of_reads_eventbridge_and_alarm_action_events() -> None:
    event = load_event("cloudwatch_alarm_state_change.json")
    alarm = alarm_of(event)
    assert alarm.alarm_name.endswith("-out-memory-low") and alarm.state.value == "ALARM"
    assert alarm.state.timestamp == "2026-11-24T10:00:00.123+0000"
    direct = {"source": "aws.cloudwatch", "alarmArn": event["resources"][0], "accountId": ACCOUNT,
              "time": event["time"], "region": REGION, "alarmData": event["detail"]}  # fmt: skip
    assert alarm_of(direct).alarm_name == alarm.alarm_name


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"detail-type": "Scheduled Event", "detail": {}}, "detail-type: got 'Scheduled Event'"),
        ({"detail-type": "CloudWatch Alarm State Change", "detail": {"state": {}}}, "detail.alarmName"),
        ({"detail-type": "CloudWatch Alarm State Change", "detail": {"alarmName": "a", "state": {"value": "ALARM"}}},
         "detail.state.value / detail.state.timestamp"),
    ],
)  # fmt: skip
def test_alarm_of_names_what_is_missing(event: dict[str, Any], message: str) -> None:
    with pytest.raises(ScalerEventError, match=message):
        alarm_of(event)


def test_settings_read_the_policies_the_config_dumps(policies: None) -> None:
    settings = ScalerSettings.from_env(ENV)
    assert settings.policies[FLEETS] == ScalingPolicy(
        collection="fleets", step_units=2, scale_in_step_units=2, min_units=0, max_units=8, spot_percent=100,
        cooldown_seconds=300, out_rules=frozenset({"memory-low"}), in_rules=frozenset({"memory-idle"}),
    )  # fmt: skip
    assert settings.policies[GROUPS].collection == "groups" and settings.policies[GROUPS].min_units == 1
    # The shipped dev pipeline's policy reads the same way
    runtime = load_config("dev").pipelines["sales-cluster"].runtime
    scaling = getattr(runtime, "scaling", None)
    assert isinstance(scaling, AlarmScaling)
    dev = ScalingPolicy.from_json("sales-cluster", json.loads(json.dumps(scaling_section(scaling, "fleets"))))
    assert (dev.step_units, dev.scale_in_step_units, dev.min_units, dev.max_units) == (2, 2, 0, 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DEPLOYMENT": ""}, "environment variable DEPLOYMENT is not set"),
        ({"OUTPUTS_BUCKET": " "}, "environment variable OUTPUTS_BUCKET is not set"),
        ({"STATE_TABLE": ""}, "environment variable STATE_TABLE is not set"),
        ({"PIPELINE_SETTINGS_MAX_AGE_SECONDS": "-1"}, "PIPELINE_SETTINGS_MAX_AGE_SECONDS is '-1'; expected seconds"),
    ],
)  # fmt: skip
def test_settings_name_the_bad_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        ScalerSettings.from_env({**ENV, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"collection": "both"}, "px.collection: got 'both'; expected 'fleets' or 'groups'"),
        ({"step_units": 0}, r"px.step_units: got 0; expected an integer in \[1, 10000\]"),
        ({"min_units": 9}, "px.min_units: 9 exceeds max_units 8"),
    ],
)  # fmt: skip
def test_a_bad_policy_names_the_parameter_and_the_key(moto: str, change: dict[str, Any], message: str) -> None:
    put_scaling("px", {**SECTIONS[FLEETS], **change})
    settings = ScalerSettings.from_env(ENV)
    with pytest.raises(PipelineSettingsError, match=f"SSM parameter /{DEPLOYMENT}/pipelines/px: section 'scaling': "):
        settings.policies["px"]
    with pytest.raises(PipelineSettingsError, match=message):
        settings.policies["px"]


def test_an_alarm_of_a_pipeline_without_alarm_scaling_is_skipped(moto: str) -> None:
    """A pipeline whose parameter has no `scaling` section (or none at all) has no policy: its alarm is skipped."""
    put_scaling(FLEETS, None)
    settings = ScalerSettings.from_env(ENV)
    assert FLEETS not in settings.policies and "absent" not in settings.policies
    assert parse_alarm_name(alarm_name(FLEETS, "j-ABC", "out", "memory-low"), DEPLOYMENT, settings.policies) is None


# --------------------------------------------------------------------------- 3. moto and the fleet fake


@dataclass
class Fleet:
    id: str
    kind: str
    on_demand: int
    spot: int
    state: str = "RUNNING"


@dataclass
class FleetCluster:
    id: str
    tags: dict[str, str]
    fleets: list[Fleet]
    state: str = "WAITING"


class FleetEmr:
    """EMR instance-fleet calls for the clusters added here; everything else goes to moto's EMR."""

    def __init__(self, moto_emr: Any) -> None:
        self._moto = moto_emr
        self.clusters: dict[str, FleetCluster] = {}
        self.resizes: list[dict[str, Any]] = []
        self.fail_next: ClientError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._moto, name)

    def add(self, cluster_id: str, tags: dict[str, str], *, on_demand: int = 0, spot: int = 4) -> FleetCluster:
        fleets = [
            Fleet("if-PRIMARY", "MASTER", 1, 0),
            Fleet("if-CORE", "CORE", 2, 0),
            Fleet("if-TASK", "TASK", on_demand, spot),
        ]
        self.clusters[cluster_id] = FleetCluster(cluster_id, tags, fleets)
        return self.clusters[cluster_id]

    def task(self, cluster_id: str) -> Fleet:
        return next(f for f in self.clusters[cluster_id].fleets if f.kind == "TASK")

    def finish_resize(self, cluster_id: str) -> None:
        self.task(cluster_id).state = "RUNNING"

    def describe_cluster(self, ClusterId: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        if ClusterId not in self.clusters:
            result: dict[str, Any] = self._moto.describe_cluster(ClusterId=ClusterId)
            return result
        c = self.clusters[ClusterId]
        return {
            "Cluster": {
                "Id": c.id,
                "Status": {"State": c.state},
                "Tags": [{"Key": k, "Value": v} for k, v in c.tags.items()],
                "InstanceCollectionType": "INSTANCE_FLEET",
            }
        }

    def list_instance_fleets(self, ClusterId: str, Marker: str | None = None) -> dict[str, Any]:  # noqa: N803
        fleets = [
            {
                "Id": f.id,
                "Name": f.kind.lower(),
                "Status": {"State": f.state},
                "InstanceFleetType": f.kind,
                "TargetOnDemandCapacity": f.on_demand,
                "TargetSpotCapacity": f.spot,
            }
            for f in self.clusters[ClusterId].fleets
        ]
        return {"InstanceFleets": fleets}

    def modify_instance_fleet(self, ClusterId: str, InstanceFleet: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        c = self.clusters[ClusterId]
        fleet = next(f for f in c.fleets if f.id == InstanceFleet["InstanceFleetId"])
        if c.state not in ("RUNNING", "WAITING") or fleet.state != "RUNNING":
            raise _api_error("ValidationException", "ModifyInstanceFleet", f"The instance fleet is {fleet.state}.")
        self.resizes.append({"ClusterId": ClusterId, **InstanceFleet})
        fleet.on_demand, fleet.spot = InstanceFleet["TargetOnDemandCapacity"], InstanceFleet["TargetSpotCapacity"]
        fleet.state = "RESIZING"  # until finish_resize(), as EMR does while instances come and go
        return {}


@dataclass
class Aws:
    """Moto clients, the fleet fake, and the settings of a deployment with one fleet and one group pipeline."""

    clients: Clients
    emr: FleetEmr
    sfn: Any
    state_machine: str
    settings: ScalerSettings = field(default_factory=lambda: ScalerSettings.from_env(ENV))

    def run(self, pipeline: str, run_id: str) -> dict[str, str]:
        """A started execution and its cluster tags (the ledger entry is written by `ledger_entry`)."""
        execution = self.sfn.start_execution(stateMachineArn=self.state_machine, name=run_id)["executionArn"]
        return {
            "autopilot:pipeline": pipeline,
            "autopilot:run-id": run_id,
            "autopilot:execution": execution,
            "autopilot:deployment": DEPLOYMENT,
        }

    def ledger_path(self, pipeline: str, tags: dict[str, str]) -> str:
        started = self.sfn.describe_execution(executionArn=tags["autopilot:execution"])["startDate"]
        return ledger_key(pipeline, started, tags["autopilot:run-id"])

    def write_ledger(self, pipeline: str, tags: dict[str, str]) -> str:
        key = self.ledger_path(pipeline, tags)
        entry = {"run_id": tags["autopilot:run-id"], "state": "STARTED", "scaling": {"mode": "alarms"}}
        self.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entry).encode())
        return key

    def ledger(self, key: str) -> dict[str, Any]:
        entry: dict[str, Any] = json.loads(self.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return entry

    def fleet_cluster(self, cluster_id: str = "j-FLEET0000001", *, spot: int = 4) -> tuple[str, dict[str, str], str]:
        """(cluster id, tags, ledger key) of a running fleet cluster of FLEETS with its alarms and ledger entry."""
        tags = self.run(FLEETS, f"{FLEETS}-{cluster_id.lower()[2:]}")
        self.emr.add(cluster_id, tags, spot=spot)
        for direction, rule in (("out", "memory-low"), ("in", "memory-idle")):
            self.put_alarm(alarm_name(FLEETS, cluster_id, direction, rule), cluster_id)
        return cluster_id, tags, self.write_ledger(FLEETS, tags)

    def group_cluster(self, count: int) -> tuple[str, dict[str, str], str]:
        """A moto cluster of GROUPS with a task group of `count` instances."""
        tags = self.run(GROUPS, f"{GROUPS}-groups-run")
        groups = [
            {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
            {"InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2},
            {"Name": "task", "InstanceRole": "TASK", "InstanceType": "m5.xlarge", "InstanceCount": count,
             "Market": "SPOT"},
        ]  # fmt: skip
        cluster_id = self.emr.run_job_flow(
            Name=f"autopilot {GROUPS}",
            ReleaseLabel="emr-7.5.0",
            Instances={"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True},
            JobFlowRole="EMR_EC2_DefaultRole",
            ServiceRole="EMR_DefaultRole",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["JobFlowId"]
        self.put_alarm(alarm_name(GROUPS, cluster_id, "in", "memory-idle"), cluster_id)
        return cluster_id, tags, self.write_ledger(GROUPS, tags)

    def put_alarm(self, name: str, cluster_id: str) -> None:
        put_memory_alarm(self.clients.cloudwatch, name, cluster_id)
        self.clients.cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test")

    def alarm_state(self, name: str) -> str:
        return str(self.clients.cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"])

    def scale(self, event: dict[str, Any], now: datetime = NOW) -> Any:
        return scale_on_alarm(alarm_of(event), self.settings, self.clients, now)


def alarm_name(pipeline: str, cluster_id: str, direction: str, rule: str) -> str:
    return f"{DEPLOYMENT}-scaling-{pipeline}-{cluster_id}-{direction}-{rule}"


def alarm_event(name: str, value: str = "ALARM", at: datetime = NOW) -> dict[str, Any]:
    """The sample "CloudWatch Alarm State Change" event for alarm `name`, entering `value` at `at`."""
    event = copy.deepcopy(load_event("cloudwatch_alarm_state_change.json"))
    event["detail"]["alarmName"] = name
    event["resources"] = [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"]
    event["detail"]["state"]["value"] = value
    event["detail"]["state"]["timestamp"] = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"
    return event


@pytest.fixture
def aws(moto: str, policies: None) -> Aws:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, TABLE, "id")
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(
        name=f"{DEPLOYMENT}-{FLEETS}",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn",
    )["stateMachineArn"]
    emr = FleetEmr(boto3.client("emr", region_name=REGION))
    clients = Clients(emr=emr, dynamodb=dynamodb, s3=s3, sfn=sfn, cloudwatch=boto3.client("cloudwatch"))
    return Aws(clients=clients, emr=emr, sfn=sfn, state_machine=machine)


def _task_group(aws: Aws, cluster_id: str) -> dict[str, Any]:
    groups = aws.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    return next(g for g in groups if g["InstanceGroupType"] == "TASK")


# --------------------------------------------------------------------------- 4. the flow


def test_alarm_grows_the_task_fleet_by_one_step_and_records_it(aws: Aws) -> None:
    # Given a running fleet cluster with 4 spot units in its task fleet, its scale-out alarm in ALARM
    cluster_id, tags, key = aws.fleet_cluster()
    name = alarm_name(FLEETS, cluster_id, "out", "memory-low")

    # When the alarm's state change arrives
    outcome = aws.scale(alarm_event(name))

    # Then the task fleet's target grows by one step, all spot, and the action is recorded everywhere
    assert (outcome.result, outcome.from_units, outcome.to_units, outcome.on_demand, outcome.spot) == (
        "scaled", 4, 6, 0, 6,
    )  # fmt: skip
    assert aws.emr.resizes == [
        {"ClusterId": cluster_id, "InstanceFleetId": "if-TASK", "TargetOnDemandCapacity": 0, "TargetSpotCapacity": 6}
    ]
    [stored] = state.actions(aws.clients.dynamodb, TABLE, cluster_id)
    assert stored["outcome"] == "applied" and stored["to_units"] == 6 and stored["rule"] == "memory-low"
    [recorded] = aws.ledger(key)["scaling"]["actions"]
    assert aws.ledger(key)["scaling"]["mode"] == "alarms"  # the rest of the entry is kept
    assert recorded["at"] == "2026-11-24T10:00:00.000Z" and recorded["alarm"] == name
    assert (recorded["direction"], recorded["from_units"], recorded["to_units"]) == ("out", 4, 6)
    assert (recorded["from_on_demand"], recorded["from_spot"], recorded["on_demand"], recorded["spot"]) == (0, 4, 0, 6)
    assert recorded["reason"] == "scale out 4 -> 6 units (step 2, bounds [0, 8]), 0 on-demand + 6 spot"
    assert "Threshold Crossed" in recorded["alarm_reason"] and recorded["outcome"] == "applied"
    assert outcome.ledger_written and outcome.run_id == tags["autopilot:run-id"]
    # And the alarm is re-armed, so it fires again while memory stays short
    assert outcome.rearmed and aws.alarm_state(name) == "OK"


def test_second_alarm_inside_the_cooldown_does_nothing_and_after_it_acts(aws: Aws) -> None:
    # Given one scale-out that finished resizing
    cluster_id, _, key = aws.fleet_cluster()
    name = alarm_name(FLEETS, cluster_id, "out", "memory-low")
    assert aws.scale(alarm_event(name)).result == "scaled"
    aws.emr.finish_resize(cluster_id)

    # When the alarm fires again two minutes later
    later = NOW + timedelta(minutes=2)
    outcome = aws.scale(alarm_event(name, at=later), now=later)

    # Then nothing changes, and the alarm is re-armed to try again
    assert (outcome.result, outcome.reason) == ("skipped", "within cooldown: 180 s left of 300 s")
    assert len(aws.emr.resizes) == 1 and aws.emr.task(cluster_id).spot == 6
    assert outcome.rearmed

    # When it fires once the cooldown has passed, the fleet grows again, up to max_units
    after = NOW + timedelta(seconds=300)
    assert aws.scale(alarm_event(name, at=after), now=after).to_units == 8
    assert len(aws.ledger(key)["scaling"]["actions"]) == 2


def test_the_same_alarm_event_delivered_twice_acts_once(aws: Aws) -> None:
    cluster_id, _, key = aws.fleet_cluster()
    event = alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low"))
    first = aws.scale(event)
    aws.emr.finish_resize(cluster_id)  # even with the fleet ready again and the cooldown over
    again = aws.scale(copy.deepcopy(event), now=NOW + timedelta(hours=1))
    assert first.result == "scaled"
    assert (again.result, again.reason) == (
        "skipped",
        "this alarm transition was already acted on (duplicate delivery)",
    )
    assert not again.rearmed
    assert len(aws.emr.resizes) == 1 and len(aws.ledger(key)["scaling"]["actions"]) == 1


class StaleClusterReads:
    """DynamoDB whose reads of the cluster item miss a claim committed meanwhile (as a concurrent scaler's)."""

    def __init__(self, dynamodb: Any) -> None:
        self._dynamodb = dynamodb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dynamodb, name)

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["Key"]["id"]["S"].startswith(state.CLUSTER_PREFIX):
            return {}
        result: dict[str, Any] = self._dynamodb.get_item(**kwargs)
        return result


def test_two_concurrent_alarms_cannot_both_act(aws: Aws) -> None:
    # Given the scale-in alarm's event claimed an action a moment ago (its scaler is still calling EMR)
    cluster_id, _, _ = aws.fleet_cluster()
    claim = state.claim_action(
        aws.clients.dynamodb, TABLE, cluster_id=cluster_id, transition_id="other@1", cooldown_seconds=300,
        now=NOW, action={"direction": "in"},
    )  # fmt: skip
    assert claim.claimed

    # When the scale-out alarm's scaler read the cluster's state before that claim
    aws.clients.dynamodb = StaleClusterReads(aws.clients.dynamodb)
    outcome = aws.scale(
        alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low")), now=NOW + timedelta(seconds=5)
    )

    # Then its claim fails on the cooldown and EMR is not called
    assert (outcome.result, outcome.reason) == ("skipped", "within cooldown: 295 s left of 300 s")
    assert aws.emr.resizes == []


def test_scale_in_goes_down_to_min_and_not_below(aws: Aws) -> None:
    # Given a task group of 4 instances (min 1, step 2) and its scale-in alarm
    cluster_id, _, key = aws.group_cluster(count=4)
    name = alarm_name(GROUPS, cluster_id, "in", "memory-idle")
    counts = []
    for i in range(3):
        # When the alarm fires again after each cooldown
        at = NOW + timedelta(seconds=300 * i)
        outcome = aws.scale(alarm_event(name, at=at), now=at)
        counts.append((outcome.result, outcome.to_units, _task_group(aws, cluster_id)["RequestedInstanceCount"]))
    # Then 4 -> 2 -> 1 (clamped to min_units) and then nothing
    assert counts == [("scaled", 2, 2), ("scaled", 1, 1), ("skipped", 1, 1)]
    assert outcome.reason == "task group already at min_units (1 instances, min 1)" and not outcome.rearmed
    actions = aws.ledger(key)["scaling"]["actions"]
    assert [(a["from_units"], a["to_units"], a["collection"]) for a in actions] == [(4, 2, "group"), (2, 1, "group")]
    assert "on_demand" not in actions[0]


def test_an_ok_state_change_is_ignored(aws: Aws) -> None:
    cluster_id, _, _ = aws.fleet_cluster()
    outcome = aws.scale(alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low"), value="OK"))
    assert (outcome.result, outcome.reason) == ("ignored", "state OK; only ALARM acts")
    assert aws.emr.resizes == [] and state.actions(aws.clients.dynamodb, TABLE, cluster_id) == []


@pytest.mark.parametrize(
    "name",
    [
        "my-own-alarm",
        f"{DEPLOYMENT}-scaling-unknown-pipeline-j-FLEET0000001-out-memory-low",
        f"{DEPLOYMENT}-scaling-{FLEETS}-j-FLEET0000001-sideways-memory-low",
    ],
)
def test_an_alarm_name_that_does_not_parse_is_a_logged_skip(aws: Aws, name: str) -> None:
    aws.fleet_cluster()
    outcome = aws.scale(alarm_event(name))
    assert outcome.result == "skipped" and "alarm name does not read as" in outcome.reason
    assert "for a deployed pipeline with alarm scaling" in outcome.reason and aws.emr.resizes == []


def test_a_rule_the_pipeline_does_not_have_is_skipped(aws: Aws) -> None:
    cluster_id, _, _ = aws.fleet_cluster()
    outcome = aws.scale(alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-idle")))  # an `in` rule
    assert (
        outcome.result == "skipped"
        and outcome.reason == "rule 'memory-idle' is not a scale_out rule of pipeline sales-cluster"
    )
    assert aws.emr.resizes == []


def test_a_resizing_fleet_is_skipped_and_the_alarm_rearmed(aws: Aws) -> None:
    cluster_id, _, _ = aws.fleet_cluster()
    aws.emr.task(cluster_id).state = "RESIZING"
    name = alarm_name(FLEETS, cluster_id, "out", "memory-low")
    outcome = aws.scale(alarm_event(name))
    assert (outcome.result, outcome.reason) == ("skipped", "task fleet if-TASK is RESIZING; expected RUNNING")
    assert outcome.rearmed and aws.alarm_state(name) == "OK"
    assert aws.emr.resizes == [] and state.actions(aws.clients.dynamodb, TABLE, cluster_id) == []


def test_a_cluster_of_another_pipeline_is_not_touched(aws: Aws) -> None:
    cluster_id, tags, _ = aws.fleet_cluster()
    aws.emr.clusters[cluster_id].tags = {**tags, "autopilot:pipeline": "someone-else"}
    outcome = aws.scale(alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low")))
    assert outcome.result == "skipped" and "tagged autopilot:pipeline='someone-else'" in outcome.reason
    assert aws.emr.resizes == []


def test_emr_refusing_the_resize_fails_the_action_and_gives_the_cooldown_back(aws: Aws) -> None:
    # Given EMR answers the resize with a validation error (the fleet started resizing meanwhile)
    cluster_id, _, key = aws.fleet_cluster()
    name = alarm_name(FLEETS, cluster_id, "out", "memory-low")
    aws.emr.fail_next = _api_error("ValidationException", "ModifyInstanceFleet", "The instance fleet is RESIZING.")

    # When the alarm fires
    outcome = aws.scale(alarm_event(name))

    # Then it is a skip with EMR's reason, the stored action is failed, and no cooldown holds
    assert (outcome.result, outcome.reason) == (
        "skipped", "EMR refused the resize (ValidationException: The instance fleet is RESIZING.)",
    )  # fmt: skip
    [failed] = state.actions(aws.clients.dynamodb, TABLE, cluster_id)
    assert failed["outcome"] == "failed" and "RESIZING" in failed["error"]
    assert state.last_action_at(aws.clients.dynamodb, TABLE, cluster_id) is None
    assert "actions" not in aws.ledger(key)["scaling"] and outcome.rearmed
    # And the next transition (the re-armed alarm firing again) acts at once
    again = NOW + timedelta(seconds=60)
    assert aws.scale(alarm_event(name, at=again), now=again).result == "scaled"


def test_an_unexpected_emr_error_raises_and_the_retry_acts(aws: Aws) -> None:
    cluster_id, _, key = aws.fleet_cluster()
    event = alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low"))
    aws.emr.fail_next = _api_error("InternalServerError", "ModifyInstanceFleet")
    with pytest.raises(ClientError, match="InternalServerError"):
        aws.scale(event)
    transition = state.transition_id(event["detail"]["alarmName"], event["detail"]["state"]["timestamp"])
    assert not state.transition_seen(aws.clients.dynamodb, TABLE, transition)
    assert state.last_action_at(aws.clients.dynamodb, TABLE, cluster_id) is None
    # When EventBridge delivers the same event again, it acts
    retried = aws.scale(copy.deepcopy(event), now=NOW + timedelta(seconds=2))
    assert retried.result == "scaled" and len(aws.emr.resizes) == 1
    assert [a["outcome"] for a in state.actions(aws.clients.dynamodb, TABLE, cluster_id)] == ["failed", "applied"]
    assert len(aws.ledger(key)["scaling"]["actions"]) == 1


@pytest.mark.parametrize("resized", [False, True], ids=["died-before-resize", "died-after-resize"])
def test_a_claim_whose_invocation_died_is_completed_by_the_redelivery(aws: Aws, resized: bool) -> None:
    """Issue 13 crash matrix: the scaler claimed the transition and died (before or after ModifyInstanceFleet);
    the redelivered event used to be skipped as a duplicate, losing the step when the resize never happened."""
    cluster_id, _, key = aws.fleet_cluster()
    event = alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low"))
    transition = state.transition_id(event["detail"]["alarmName"], event["detail"]["state"]["timestamp"])
    action = {"at": "2026-11-24T10:00:00.000Z", "direction": "out", "rule": "memory-low",
              "alarm": event["detail"]["alarmName"], "collection": "fleet", "task_id": "if-TASK", "from_units": 4,
              "to_units": 6, "reason": "scale out 4 -> 6 units", "from_on_demand": 0, "from_spot": 4,
              "on_demand": 0, "spot": 6}  # fmt: skip
    claim = state.claim_action(aws.clients.dynamodb, TABLE, cluster_id=cluster_id, transition_id=transition,
                               cooldown_seconds=300, now=NOW, action=action)  # fmt: skip
    assert claim.claimed
    if resized:
        aws.emr.modify_instance_fleet(
            ClusterId=cluster_id,
            InstanceFleet={"InstanceFleetId": "if-TASK", "TargetOnDemandCapacity": 0, "TargetSpotCapacity": 6},
        )
    # When the event is delivered again (Lambda's asynchronous retry)
    outcome = aws.scale(copy.deepcopy(event), now=NOW + timedelta(minutes=1))
    # Then the claimed step is completed exactly once, recorded as applied, in the ledger once
    assert outcome.result == "scaled" and outcome.reason.startswith("completed a claimed action")
    assert len(aws.emr.resizes) == 1 and aws.emr.resizes[0]["TargetSpotCapacity"] == 6
    assert [a["outcome"] for a in state.actions(aws.clients.dynamodb, TABLE, cluster_id)] == ["applied"]
    assert len(aws.ledger(key)["scaling"]["actions"]) == 1
    # and a third delivery is a duplicate
    again = aws.scale(copy.deepcopy(event), now=NOW + timedelta(minutes=2))
    assert again.reason == "this alarm transition was already acted on (duplicate delivery)"


def test_a_missing_ledger_entry_does_not_stop_scaling(aws: Aws) -> None:
    cluster_id, _, key = aws.fleet_cluster()
    aws.clients.s3.delete_object(Bucket=BUCKET, Key=key)
    outcome = aws.scale(alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low")))
    assert outcome.result == "scaled" and not outcome.ledger_written
    assert state.actions(aws.clients.dynamodb, TABLE, cluster_id)[0]["outcome"] == "applied"  # finalize copies this


# --------------------------------------------------------------------------- 5. the durable claim


def _claim(aws: Aws, transition: str, at: datetime, cluster_id: str = "j-C1") -> state.ClaimResult:
    return state.claim_action(
        aws.clients.dynamodb, TABLE, cluster_id=cluster_id, transition_id=transition, cooldown_seconds=300, now=at,
        action={"to_units": 6, "share": 0.5},
    )  # fmt: skip


def test_claims_decide_duplicate_and_cooldown_from_the_cancellation_reasons(aws: Aws) -> None:
    assert _claim(aws, "a@1", NOW) == state.ClaimResult("claimed")
    assert _claim(aws, "a@1", NOW + timedelta(hours=1)) == state.ClaimResult("duplicate")
    assert _claim(aws, "b@1", NOW + timedelta(seconds=100)) == state.ClaimResult("cooldown", 200)
    assert _claim(aws, "a@1", NOW + timedelta(seconds=100)) == state.ClaimResult("duplicate")  # both conditions fail
    assert _claim(aws, "b@1", NOW + timedelta(seconds=100), cluster_id="j-C2").claimed  # per cluster
    assert _claim(aws, "c@1", NOW + timedelta(seconds=300)).claimed
    stored = state.actions(aws.clients.dynamodb, TABLE, "j-C1")
    assert [a["transition_id"] for a in stored] == ["a@1", "c@1"]
    assert stored[0]["share"] == 0.5 and stored[0]["outcome"] == "claimed"
    assert state.last_action_at(aws.clients.dynamodb, TABLE, "j-C1") == NOW + timedelta(seconds=300)
    marker = aws.clients.dynamodb.get_item(TableName=TABLE, Key={"id": {"S": state.TRANSITION_PREFIX + "a@1"}})["Item"]
    assert int(marker["expiration"]["N"]) == int((NOW + timedelta(days=7)).timestamp())


class ReasonsWithoutItems:
    """DynamoDB whose TransactionCanceledException carries no old item (the fallback reads it)."""

    def __init__(self, dynamodb: Any) -> None:
        self._dynamodb = dynamodb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dynamodb, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        try:
            return self._dynamodb.transact_write_items(**kwargs)
        except ClientError as exc:
            for reason in exc.response.get("CancellationReasons", []):
                reason.pop("Item", None)
            raise


def test_cooldown_left_is_read_back_when_the_reasons_carry_no_item(aws: Aws) -> None:
    assert _claim(aws, "a@1", NOW).claimed
    aws.clients.dynamodb = ReasonsWithoutItems(aws.clients.dynamodb)
    assert _claim(aws, "b@1", NOW + timedelta(seconds=250)) == state.ClaimResult("cooldown", 50)


class ConflictOnce:
    """DynamoDB whose first transaction is cancelled by a conflicting one."""

    def __init__(self, dynamodb: Any) -> None:
        self._dynamodb, self.calls = dynamodb, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dynamodb, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            reasons = [{"Code": "None"}, {"Code": "TransactionConflict", "Message": "conflict"}]
            raise ClientError(
                {"Error": {"Code": "TransactionCanceledException", "Message": "x"}, "CancellationReasons": reasons},  # type: ignore[typeddict-unknown-key]
                "TransactWriteItems",
            )
        return self._dynamodb.transact_write_items(**kwargs)


def test_a_conflicting_transaction_is_retried(aws: Aws) -> None:
    flaky = ConflictOnce(aws.clients.dynamodb)
    aws.clients.dynamodb = flaky
    assert _claim(aws, "a@1", NOW).claimed and flaky.calls == 2


# --------------------------------------------------------------------------- 6. the Lambda handler


def test_handler_scales_skips_and_emits_metrics(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        **ENV,
        "POWERTOOLS_SERVICE_NAME": "autopilot-scaler",
        "POWERTOOLS_METRICS_NAMESPACE": "EmrAutopilot",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "autopilot-test-scaler",
    }.items():
        monkeypatch.setenv(name, value)
    handler = load_handler("scaler")
    monkeypatch.setattr(handler, "CLIENTS", aws.clients)
    cluster_id, _, _ = aws.fleet_cluster()
    event = alarm_event(alarm_name(FLEETS, cluster_id, "out", "memory-low"), at=datetime.now(UTC))

    scaled = handler.lambda_handler(event, lambda_context("autopilot-test-scaler"))
    duplicate = handler.lambda_handler(event, lambda_context("autopilot-test-scaler"))
    with pytest.warns(UserWarning, match="No application metrics"):  # an OK state change counts nothing
        ignored = handler.lambda_handler(alarm_event("x", value="OK"), lambda_context("autopilot-test-scaler"))

    assert (scaled["result"], scaled["to_units"], scaled["direction"]) == ("scaled", 6, "out")
    assert duplicate["result"] == "skipped" and ignored["result"] == "ignored"
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    metrics = [
        (m["Name"], doc.get("direction"), doc[m["Name"]])
        for doc in emitted
        if "_aws" in doc
        for d in doc["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
    ]
    assert metrics == [("ScalingActions", "out", [1.0]), ("ScalingSkipped", None, [1.0])]


def test_handler_cold_start_names_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**ENV, "STATE_TABLE": "", "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="environment variable STATE_TABLE is not set"):
        load_handler("scaler")
