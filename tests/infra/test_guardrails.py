"""Guardrails in the template: the function's four rules and their delivery, what it may stop, and the
optional CloudTrail trail (a second, nag-free synth of dev.yaml with `guardrails.trail.create: true`)."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
import yaml
from aws_cdk.assertions import Match, Template

from app import build_app, cli_context
from stacks.app_stack import AutopilotStack
from tests.conftest import REPO
from tests.infra.conftest import Synthesized
from tests.infra.test_admission import _listed
from tests.infra.test_workflow import _role_statements


def _rules(synth: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        rid: r["Properties"]
        for rid, r in synth.resources("AWS::Events::Rule").items()
        if "Guardrails" in rid and r["Properties"].get("Description", "").startswith("EMR Autopilot")
    }


def _guardrail_function(synth: Synthesized) -> tuple[str, dict[str, Any]]:
    return next(
        (fid, f["Properties"])
        for fid, f in synth.resources("AWS::Lambda::Function").items()
        if "cleanup after aborted" in f["Properties"].get("Description", "")
    )


def test_five_rules_feed_the_guardrail_with_two_hours_of_retries_and_a_dead_letter_queue(synth: Synthesized) -> None:
    rules = _rules(synth)
    assert len(rules) == 5
    patterns = {
        json.dumps([r.get("EventPattern", {}).get("detail-type"), r.get("EventPattern", {}).get("source")]): r
        for r in rules.values()
    }
    ended = patterns['[["Step Functions Execution Status Change"], ["aws.states"]]']["EventPattern"]
    assert ended["source"] == ["aws.states"] and ended["detail"]["status"] == ["ABORTED", "TIMED_OUT", "FAILED"]
    # This deployment's state machines by name prefix: one pattern (no reference to the pipeline stacks) that every
    # pipeline's state machine matches, however many there are
    ((matcher,),) = [ended["detail"]["stateMachineArn"]]
    assert matcher == {"prefix": "arn:aws:states:us-east-1:123456789012:stateMachine:autopilot-dev-"}
    machines = synth.resources("AWS::StepFunctions::StateMachine").values()
    assert len(machines) == len(synth.stack.pipelines)
    assert all(m["Properties"]["StateMachineName"].startswith("autopilot-dev-") for m in machines)
    trail = patterns['[["AWS API Call via CloudTrail"], ["aws.elasticmapreduce"]]']["EventPattern"]
    assert trail["detail"]["eventName"] == ["RunJobFlow", "TerminateJobFlows", "CancelSteps"]
    assert trail["detail"]["errorCode"] == [{"exists": False}]
    stopped = patterns['[["AWS API Call via CloudTrail"], ["aws.states"]]']["EventPattern"]
    assert stopped["detail"] == {
        "eventSource": ["states.amazonaws.com"],
        "eventName": ["StopExecution"],
        "errorCode": [{"exists": False}],
    }
    step_ended = patterns['[["EMR Step Status Change"], ["aws.emr"]]']["EventPattern"]
    assert step_ended["detail"] == {"state": ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"]}
    sweeper = next(r for r in rules.values() if "ScheduleExpression" in r)
    assert sweeper["ScheduleExpression"] == "rate(15 minutes)"
    function_id, _ = _guardrail_function(synth)
    for rule in rules.values():
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 7200, "MaximumRetryAttempts": 20}
        assert "DeadLetterConfig" in target


def test_the_guardrail_knows_every_pipeline_and_the_apps_own_roles(synth: Synthesized) -> None:
    _, function = _guardrail_function(synth)
    env = function["Environment"]["Variables"]
    pipelines = {name: sections["guardrail"] for name, sections in synth.pipeline_settings().items()}
    config = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    assert set(pipelines) == set(config["pipelines"])
    assert {p["runtime"] for p in pipelines.values()} == {"emr-serverless", "emr-ec2", "emr-eks"}
    assert all(p["max_cluster_lifetime_minutes"] > 0 for p in pipelines.values())
    assert "PIPELINES" not in env and env["DEPLOYMENT"] == "autopilot-dev"  # the pipelines are in SSM, not here
    assert env["SERVERLESS_IDLE_STOP_MINUTES"] == "60" and env["ADMISSION_TABLE"]
    assert json.loads(env["UNMANAGED_CLUSTERS"])["exempt_tag_key"] == "autopilot:long-running"


def test_the_guardrail_reads_and_lists_only_this_deployments_pipeline_settings(synth: Synthesized) -> None:
    function_id, function = _guardrail_function(synth)
    statements = _role_statements(synth, function["Role"]["Fn::GetAtt"][0])
    ssm = {a: s["Resource"] for s in statements for a in _listed(s["Action"]) if a.startswith("ssm:")}
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/autopilot-dev/pipelines"
    assert ssm == {"ssm:GetParameter": f"{arn}/*", "ssm:GetParametersByPath": arn}


def test_the_guardrail_stops_compute_only_on_clusters_tagged_with_this_deployment(synth: Synthesized) -> None:
    _, function = _guardrail_function(synth)
    role_ref = function["Role"]["Fn::GetAtt"][0]
    statements = [
        s
        for p in synth.resources("AWS::IAM::Policy").values()
        if {"Ref": role_ref} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]

    def actions(s: dict[str, Any]) -> set[str]:
        return set(s["Action"] if isinstance(s["Action"], list) else [s["Action"]])

    deployment_tag = {"StringEquals": {"aws:ResourceTag/autopilot:deployment": synth.stack.stack_name}}
    terminating = [s for s in statements if "elasticmapreduce:TerminateJobFlows" in actions(s)]
    assert terminating and all(s["Condition"] == deployment_tag for s in terminating)
    # Steps are cancelled on this deployment's clusters, and on each long-running target (never tagged with the
    # deployment) only within that target's own scope: its tag here (sales-adhoc: team-cluster=analytics).
    cancelling = [s for s in statements if "elasticmapreduce:CancelSteps" in actions(s)]
    assert [s.get("Condition") for s in cancelling] == [
        deployment_tag,
        {"StringEquals": {"aws:ResourceTag/team-cluster": "analytics"}},
    ]
    assert not any("elasticmapreduce:TerminateJobFlows" in actions(s) for s in cancelling[1:])
    deleting = next(s for s in statements if "cloudwatch:DeleteAlarms" in actions(s))
    assert "-scaling-*" in json.dumps(deleting["Resource"])


@pytest.fixture(scope="module")
def with_trail(tmp_path_factory: pytest.TempPathFactory) -> Template:
    raw = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    raw["guardrails"] = {**raw.get("guardrails", {}), "trail": {"create": True}}
    workdir = tmp_path_factory.mktemp("trail")
    config_file = workdir / "trail.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    context = {**cli_context(), "config_path": str(config_file)}
    app = build_app("dev", cdk.App(outdir=str(workdir / "cdk.out"), context=context), nag=False)
    stack = next(c for c in app.node.children if isinstance(c, AutopilotStack))
    return Template.from_stack(stack)


def test_dev_creates_no_trail(synth: Synthesized) -> None:
    synth.template.resource_count_is("AWS::CloudTrail::Trail", 0)


def test_trail_create_logs_management_writes_everywhere_and_landing_data_events_to_the_logs_bucket(
    with_trail: Template, synth: Synthesized
) -> None:
    with_trail.resource_count_is("AWS::CloudTrail::Trail", 1)
    with_trail.has_resource_properties(
        "AWS::CloudTrail::Trail",
        {
            "IsLogging": True,
            "IsMultiRegionTrail": True,
            "IncludeGlobalServiceEvents": True,
            "EnableLogFileValidation": True,
            "S3KeyPrefix": "cloudtrail",
            "S3BucketName": {"Ref": Match.string_like_regexp("Logs")},
            # sales-trail's trigger listens to CloudTrail: S3 data events (writes) of the landing bucket
            "EventSelectors": Match.array_with(
                [
                    Match.object_like(
                        {
                            "ReadWriteType": "WriteOnly",
                            "IncludeManagementEvents": False,
                            "DataResources": [
                                {
                                    "Type": "AWS::S3::Object",
                                    "Values": [
                                        {
                                            "Fn::Join": [
                                                "",
                                                [{"Fn::GetAtt": [Match.string_like_regexp("Landing"), "Arn"]}, "/"],
                                            ]
                                        }
                                    ],
                                }
                            ],
                        }
                    )
                ]
            ),
        },
    )
