"""Every physical name in the template is one config validation checked against its limit (stacks.naming)."""

from __future__ import annotations

from typing import Any

from config.loader import load_config, pipeline_generated_names
from stacks import naming
from tests.infra.conftest import Synthesized

# The property holding a resource type's physical name, and the kind of name it is.
NAME_PROPERTIES = {
    "AWS::SQS::Queue": ("QueueName", "queue"),
    "AWS::Events::Rule": ("Name", "rule"),
    "AWS::StepFunctions::StateMachine": ("StateMachineName", "state_machine"),
    "AWS::Logs::LogGroup": ("LogGroupName", "log_group"),
    "AWS::Lambda::Function": ("FunctionName", "function"),
    "AWS::IAM::Role": ("RoleName", "role"),
    "AWS::IAM::InstanceProfile": ("InstanceProfileName", "instance_profile"),
    "AWS::CloudWatch::Alarm": ("AlarmName", "alarm"),
    "AWS::EMRServerless::Application": ("Name", "serverless_application"),
    "AWS::EMRContainers::VirtualCluster": ("Name", "virtual_cluster"),
    "AWS::SNS::Topic": ("TopicName", "topic"),
    "AWS::DynamoDB::Table": ("TableName", "table"),
    "AWS::CloudWatch::Dashboard": ("DashboardName", "dashboard"),
    "AWS::CloudTrail::Trail": ("TrailName", "trail"),
}


def _literal(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def test_every_physical_name_in_the_template_was_checked_by_config_validation(synth: Synthesized) -> None:
    config = load_config("dev")
    deployment = naming.deployment_name(config.project, "dev")
    checked = set(naming.DeploymentNames(deployment).all())
    checked |= {
        ("serverless_application", naming.serverless_application_name(deployment, a))
        for a in config.serverless_applications
    }
    for name, pipeline in config.pipelines.items():
        checked |= set(pipeline_generated_names(deployment, name, pipeline))
    found = []
    for logical_id, resource in synth.raw["Resources"].items():
        if resource["Type"] not in NAME_PROPERTIES:
            continue
        prop, kind = NAME_PROPERTIES[resource["Type"]]
        name = _literal(resource["Properties"].get(prop))
        if name is None:
            continue  # CloudFormation generates it (within the limit)
        found.append(name)
        assert (kind, name) in checked, f"{logical_id}: {kind} name {name!r} is generated outside stacks.naming"
    assert len(found) >= 20
