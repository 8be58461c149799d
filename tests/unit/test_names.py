"""Generated physical names: config validation knows every name the app derives from the project, the environment
and a pipeline's name, and rejects one that would overflow its service's limit before CDK sees it (issue 13.5)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml

from autopilot_common.pipeline_settings import reserved_name_prefix
from config.loader import ConfigError, validate_config
from stacks import naming
from tests.conftest import REPO
from tests.unit.conftest import DEV_YAML

SOURCE = "config/dev.yaml"
LONGEST = "p" + "x" * 38 + "z"  # 40 characters: the longest name the pipeline name pattern allows


def _renamed(raw: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    raw["pipelines"][new] = raw["pipelines"].pop(old)
    return raw


def _problems(raw: dict[str, Any], env: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, SOURCE, env=env)
    return str(info.value).splitlines()


def test_a_40_character_pipeline_name_is_refused_naming_the_rule_and_its_limit() -> None:
    # sales-daily has an S3 trigger: its rule `autopilot-dev-<name>-object-created` would be 69 characters
    lines = _problems(_renamed(DEV_YAML, "sales-daily", LONGEST))
    rule = f"autopilot-dev-{LONGEST}-object-created"
    assert (
        f"{SOURCE}: pipeline {LONGEST!r}: name: generates the EventBridge rule name {rule!r} (69 characters); "
        "expected at most 64 (events PutRule Name); expected a pipeline name at most 35 characters long here"
    ) in lines
    # and nothing else about it is wrong: every other line is another overflowing name of the same pipeline
    assert all(line.startswith(f"{SOURCE}: pipeline {LONGEST!r}: name: generates the ") for line in lines)


def test_names_within_every_limit_pass() -> None:
    assert validate_config(_renamed(DEV_YAML, "sales-daily", LONGEST[:35]), SOURCE)


@pytest.mark.parametrize(
    ("pipeline", "kind"),
    [
        ("sales-eks", "EMR on EKS virtual cluster name"),  # autopilot-dev-<name>: 64
        ("sales-eks", "IAM role name"),  # autopilot-dev-<name>-eks-job: 64
        ("sales-daily", "SQS queue name"),  # autopilot-dev-<name>-arrivals: 80
    ],
)
def test_each_runtime_s_names_are_checked(pipeline: str, kind: str) -> None:
    raw = copy.deepcopy(DEV_YAML)
    if pipeline not in raw["pipelines"]:
        pytest.skip(f"{pipeline} is not in the shipped config")
    # a long project name pushes every generated name over
    raw["project"] = "p" + "x" * 30 + "z"
    lines = _problems(_renamed(raw, pipeline, LONGEST))
    assert any(f"pipeline {LONGEST!r}: name: generates the {kind} " in line for line in lines), lines


def test_a_long_environment_name_is_refused_on_the_deployment_s_own_names() -> None:
    env = "e" * 60  # the stack is fine (128) but `<project>-<env>-admission` is not a function name...
    lines = _problems(DEV_YAML, env=env)
    assert any(
        f"project 'autopilot' (environment {env!r}): generates the Lambda function name 'autopilot-{env}-admission'"
        in line
        for line in lines
    ), lines


@pytest.mark.parametrize("project", ["aws", "awsdata", "ssm-platform"])
def test_a_project_whose_settings_parameters_ssm_would_refuse_is_refused_naming_the_field(project: str) -> None:
    # SSM refuses parameter names prefixed with "aws" or "ssm" (any case, a leading "/" not counted), and every
    # pipeline's settings parameter is `/<project>-<env>/pipelines/<pipeline>`
    raw = copy.deepcopy(DEV_YAML)
    raw["project"] = project
    assert _problems(raw) == [
        f"{SOURCE}: project: got {project!r}; the pipelines' settings parameters would be named "
        f"/{project}-dev/pipelines/<pipeline>, and SSM refuses parameter names that begin with {project[:3]!r} in any "
        'case (Systems Manager user guide, "Requirements and constraints for parameter names"); expected a project '
        "name that does not begin with 'aws' or 'ssm'"
    ]


def test_ssm_s_reserved_prefixes_are_read_in_any_case_after_a_leading_slash() -> None:
    assert [reserved_name_prefix(n) for n in ("/AWS-x/p", "SSM-test", "/aws/test", "/data-aws/p", "/dev/ssm")] == [
        "aws",
        "ssm",
        "aws",
        None,
        None,
    ]
    raw = copy.deepcopy(DEV_YAML)
    raw["project"] = "data-aws"  # only the first level counts
    assert validate_config(raw, SOURCE).project == "data-aws"


def test_cdk_synth_prints_one_clear_error_instead_of_a_jsii_traceback(tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(_renamed(DEV_YAML, "sales-daily", LONGEST)))
    result = subprocess.run(  # noqa: S603 - the app's own entry point
        [sys.executable, "app.py"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "CDK_CONTEXT_JSON": f'{{"config_path": "{config}"}}',
            "CDK_OUTDIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "jsii" not in result.stderr
    assert "EventBridge rule name" in result.stderr and "at most 64" in result.stderr


MODEL_BACKED = {
    "rule": ("events", "PutRule", "Name"),
    "schedule": ("scheduler", "CreateSchedule", "Name"),
    "state_machine": ("stepfunctions", "CreateStateMachine", "name"),
    "execution": ("stepfunctions", "StartExecution", "name"),
    "log_group": ("logs", "CreateLogGroup", "logGroupName"),
    "role": ("iam", "CreateRole", "RoleName"),
    "instance_profile": ("iam", "CreateInstanceProfile", "InstanceProfileName"),
    "alarm": ("cloudwatch", "PutMetricAlarm", "AlarmName"),
    "serverless_application": ("emr-serverless", "CreateApplication", "name"),
    "virtual_cluster": ("emr-containers", "CreateVirtualCluster", "name"),
}


@pytest.mark.parametrize("kind", sorted(MODEL_BACKED))
def test_limits_agree_with_botocore_s_service_models(kind: str) -> None:
    service, operation, member = MODEL_BACKED[kind]
    model = botocore.session.get_session().get_service_model(service).operation_model(operation)
    assert model.input_shape.members[member].metadata["max"] == naming.LIMITS[kind].max_length


def test_the_function_list_is_the_only_way_to_name_a_function() -> None:
    with pytest.raises(ValueError, match="not one of the app's functions"):
        naming.function_name("autopilot-dev", "unknown")
