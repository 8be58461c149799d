"""Each pipeline's settings parameter (`/<deployment>/pipelines/<pipeline>`, autopilot_common.pipeline_settings):
created in the pipeline's own stack, read by the shared functions of the platform stack, which therefore carry no
per-pipeline environment (Lambda allows 4 KB in all) and do not change when a pipeline stack is deployed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from autopilot_common.pipeline_settings import DEPLOYMENT_ENV as DEPLOYMENT_ENV
from autopilot_common.pipeline_settings import STANDARD_TIER_MAX_CHARS, settings_value
from stacks.arns import parameter_arn
from stacks.nag import suppress
from stacks.naming import settings_parameter_name, settings_path

# The longest value a deploy-time token in a section can resolve to, for the size check at synth: EMR Serverless
# application ids and EMR on EKS virtual cluster ids are at most 64 characters (botocore: emr-serverless
# GetApplication applicationId, emr-containers DescribeVirtualCluster id).
LONGEST_TOKEN_VALUE = 64


class SettingsTooLarge(ValueError):
    """A pipeline's settings would not fit a Standard-tier parameter."""


def _may_be_token(value: Any) -> bool:
    """Whether a JSON value has a shape `Token.is_unresolved` can be true of (aws-cdk-lib `unresolved`: a string
    holding `Token[`, a number, a one-string list): only those are asked of CDK, each ask a jsii round trip. JSON
    integers are never tokens (a number token is a float far beyond any integer a config holds)."""
    if isinstance(value, str):
        return "Token[" in value
    if isinstance(value, float):
        return True
    return isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and "Token[" in value[0]


def worst_case_length(sections: Mapping[str, Any]) -> int:
    """The parameter value's length with every unresolved token at its longest resolution."""
    concrete = json.loads(
        json.dumps(sections),
        object_hook=lambda o: {
            k: "x" * LONGEST_TOKEN_VALUE if _may_be_token(v) and Token.is_unresolved(v) else v for k, v in o.items()
        },
    )
    return len(settings_value(concrete))


class PipelineSettingsParameter(Construct):
    """A String parameter, Standard tier, holding `sections` (only those that apply) as compact JSON.

    Raises SettingsTooLarge at synth when the value could exceed the tier's 4,096 characters.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, prefix: str, pipeline: str, sections: Mapping[str, Any]
    ) -> None:
        super().__init__(scope, construct_id)
        length = worst_case_length(sections)
        if length > STANDARD_TIER_MAX_CHARS:
            raise SettingsTooLarge(
                f"pipeline {pipeline}: its settings parameter would hold {length} characters; a Standard-tier SSM "
                f"parameter holds at most {STANDARD_TIER_MAX_CHARS} (sections: {', '.join(sorted(sections))})"
            )
        self.parameter_name = settings_parameter_name(prefix, pipeline)
        self.parameter = ssm.CfnParameter(
            self,
            "Parameter",
            name=self.parameter_name,
            type="String",
            tier="Standard",
            value=settings_value(sections),
            description=f"EMR Autopilot {prefix}: what the shared functions know of pipeline {pipeline}",
        )


def grant_pipeline_settings(function: lambda_.Function, deployment: str, *, list_all: bool = False) -> None:
    """Read one pipeline's parameter by name (ssm:GetParameter on `/<deployment>/pipelines/*`) and, with
    `list_all`, list them (ssm:GetParametersByPath, which IAM authorizes against the requested path, not the
    parameters returned: Systems Manager user guide, "How Parameter Store authorizes parameter retrieval")."""
    stack = Stack.of(function)
    path = settings_path(deployment)
    function.add_to_role_policy(
        iam.PolicyStatement(actions=["ssm:GetParameter"], resources=[parameter_arn(stack, f"{path}/*")])
    )
    if list_all:
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["ssm:GetParametersByPath"], resources=[parameter_arn(stack, path)])
        )
    suppress(
        function,
        "AwsSolutions-IAM5",
        "Reads the deployment's pipeline settings parameters by name (one per pipeline, in the pipelines' stacks).",
        ["regex:/^Resource::arn:[^:]+:ssm:.*:parameter\\/.*\\/pipelines\\/\\*$/g"],
    )
