"""Alarm scaling and the operations dashboard in the template: what the transient workflow creates per
cluster, the scaler's rule and permissions, finalize's read of the actions, and the dashboard's metrics."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Stack

from config.ec2 import Ec2Runtime
from stacks.alarm_scaling import alarm_scaling, alarm_specs
from tests.infra.conftest import Synthesized
from tests.infra.test_workflow import definition_of

PIPELINE = "sales-cluster"  # dev.yaml: scaling.mode alarms, out memory-low / in memory-idle, 0-8 units


def _function(synth: Synthesized, fragment: str) -> tuple[str, dict[str, Any]]:
    return next(
        (fid, f["Properties"])
        for fid, f in synth.resources("AWS::Lambda::Function").items()
        if fragment in f["Properties"].get("Description", "")
    )


def _statements(synth: Synthesized, function_id: str) -> list[dict[str, Any]]:
    role = synth.raw["Resources"][function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_transient_workflow_plans_one_alarm_per_rule_on_the_clusters_own_metric(synth: Synthesized) -> None:
    definition = definition_of(synth, PIPELINE)
    plan = definition["States"]["PlanScalingAlarms"]["Result"]
    assert [a["rule"] for a in plan] == ["out-memory-low", "in-memory-idle"]
    out = plan[0]
    assert (out["metric"], out["comparison_operator"], out["threshold"]) == (
        "YARNMemoryAvailablePercentage",
        "LessThanThreshold",
        15.0,
    )
    assert (out["period"], out["evaluation_periods"], out["datapoints_to_alarm"]) == (300, 3, 2)
    assert plan[1]["datapoints_to_alarm"] == 3  # null in config: every evaluated period must breach
    put = definition["States"]["CreateScalingAlarms"]["ItemProcessor"]["States"]["PutScalingAlarm"]["Parameters"]
    assert put["Namespace"] == "AWS/ElasticMapReduce"
    assert put["Dimensions"] == [{"Name": "JobFlowId", "Value.$": "$.cluster_id"}]
    assert put["AlarmName.$"] == "States.Format('${ScalingAlarmPrefix}{}-{}', $.cluster_id, $.alarm.rule)"
    machine = synth.stack.pipelines[PIPELINE].state_machine.node.default_child
    substitutions = synth.raw["Resources"][Stack.of(machine).get_logical_id(machine)]["Properties"]
    assert substitutions["DefinitionSubstitutions"]["ScalingAlarmPrefix"] == "autopilot-dev-scaling-sales-cluster-"
    # Both teardown paths look the alarms up by the cluster's prefix and delete them
    for tag in ("", "AfterFailure"):
        find = definition["States"][f"FindScalingAlarms{tag}"]["Parameters"]
        assert find["AlarmNamePrefix.$"] == "States.Format('${ScalingAlarmPrefix}{}-', $.cluster.ClusterId)"
        assert definition["States"][f"DeleteScalingAlarms{tag}"]["Parameters"] == {
            "AlarmNames.$": "$.scaling_cleanup.names"
        }


def test_clusters_without_alarm_scaling_plan_no_alarms_and_their_workflow_gets_no_alarm_rights() -> None:
    steps = [{"type": "spark", "name": "etl", "entry_point": "etl.py"}]
    for scaling in ({"mode": "none"}, {"mode": "managed", "minimum_units": 1, "maximum_units": 4}):
        runtime = Ec2Runtime.model_validate({"type": "emr-ec2", "steps": steps, "scaling": scaling})
        assert alarm_scaling(runtime) is None and alarm_specs("p", runtime) == []
    scaled = Ec2Runtime.model_validate({"type": "emr-ec2", "steps": steps, "scaling": {"mode": "alarms"}})
    assert [s["rule"] for s in alarm_specs("p", scaled)] == ["out-memory-low", "in-memory-idle"]


def test_the_scaler_hears_only_this_deployments_scaling_alarms_going_to_alarm(synth: Synthesized) -> None:
    function_id, function = _function(synth, "task-fleet step per scaling alarm")
    (rule,) = [
        r["Properties"]
        for r in synth.resources("AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("source") == ["aws.cloudwatch"]
    ]
    assert rule["EventPattern"] == {
        "source": ["aws.cloudwatch"],
        "detail-type": ["CloudWatch Alarm State Change"],
        "detail": {"alarmName": [{"prefix": "autopilot-dev-scaling-"}], "state": {"value": ["ALARM"]}},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 600 and "DeadLetterConfig" in target
    assert "SCALING" not in function["Environment"]["Variables"]  # each pipeline's policy is in its parameter
    settings = {name: s["scaling"] for name, s in synth.pipeline_settings().items() if "scaling" in s}
    assert list(settings) == [PIPELINE] and settings[PIPELINE]["collection"] == "fleets"
    assert (settings[PIPELINE]["min_units"], settings[PIPELINE]["max_units"]) == (0, 8)


def test_the_scaler_resizes_only_this_deployments_clusters_and_rearms_only_scaling_alarms(synth: Synthesized) -> None:
    function_id, _ = _function(synth, "task-fleet step per scaling alarm")
    statements = _statements(synth, function_id)
    emr = next(s for s in statements if "elasticmapreduce:ModifyInstanceFleet" in s["Action"])
    assert emr["Condition"] == {"StringEquals": {"aws:ResourceTag/autopilot:deployment": "autopilot-dev"}}
    rearm = next(s for s in statements if s["Action"] == "cloudwatch:SetAlarmState")
    assert "alarm:autopilot-dev-scaling-sales-cluster-*" in json.dumps(rearm["Resource"])
    finalize_id, finalize = _function(synth, "end of a run")
    assert finalize["Environment"]["Variables"]["STATE_TABLE"]
    assert any("dynamodb:GetItem" in json.dumps(s["Action"]) for s in _statements(synth, finalize_id))


def test_the_workflow_may_manage_only_its_own_pipelines_alarms(synth: Synthesized) -> None:
    role_statements = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "ScalingAlarms"
    ]
    # One per transient workflow (its ASL has the alarm states, whether or not the pipeline scales from alarms)
    assert len(role_statements) == 2
    for alarms in role_statements:
        assert set(alarms["Action"]) == {
            "cloudwatch:PutMetricAlarm",
            "cloudwatch:TagResource",
            "cloudwatch:DescribeAlarms",
            "cloudwatch:DeleteAlarms",
        }
    resources = sorted(json.dumps(alarms["Resource"]) for alarms in role_statements)
    assert "alarm:autopilot-dev-scaling-sales-chain-*" in resources[0]
    assert "alarm:autopilot-dev-scaling-sales-cluster-*" in resources[1]


def test_the_operations_dashboard_shows_runs_of_every_pipeline_scaling_and_guardrails(synth: Synthesized) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == "autopilot-dev-operations"
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    # One SEARCH per run widget over the deployment's state machines: a line per pipeline, whatever their number,
    # and no pipeline named in the body (its size does not grow with the pipelines)
    machines = "stateMachine:autopilot-dev-"
    runs = ["ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsAborted", "ExecutionsTimedOut"]
    for metric in runs:
        assert body.count(f"SEARCH('{{AWS/States,StateMachineArn}} MetricName=\\\\\\\"{metric}") == 1, metric
    assert body.count(machines) == len(runs)
    assert not [name for name in synth.stack.pipelines if name in body]
    assert "RunCostUsd" in body
    # runs stopped from outside the workflow are priced by the guardrail's cleanup: the cost widget counts them too
    quoted = '\\\\\\"'  # a double quote inside the SEARCH string inside the JSON body inside this JSON dump
    cost = f"MetricName={quoted}RunCostUsd{quoted} (service={quoted}autopilot-finalize{quoted} OR service={quoted}"
    assert f"{cost}autopilot-guardrail{quoted})" in body, body[body.find("RunCostUsd") - 60 :][:240]
    for metric in ["ScalingActions", "ScalingSkipped", "ActiveClusters", "OrphanClusters", "RunsCancelledExternally"]:
        assert metric in body, metric
    assert "autopilot-scaler" in body and "autopilot-guardrail" in body


def test_the_dashboard_follows_schedules_deadlines_and_dependencies_per_pipeline(synth: Synthesized) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    # One SEARCH per router metric: a line per pipeline that emits it, whatever the number of pipelines
    for metric in ["ScheduleFirings", "EmptyPartitions", "DeadlinesMissed", "UpstreamRunsRecorded", "UpstreamFailures"]:
        assert body.count(f'MetricName=\\\\\\"{metric}') == 1, metric
    assert body.count("autopilot-router") == 5
