"""Twin fidelity for the pipelines' settings parameters: the deployer creates `AWS::SSM::Parameter` (tokens resolved)
and refuses a value over its tier's size, and a name with a reserved prefix, too long or too deep, as SSM does; the
twin's IAM authorizes GetParameter against the parameter and GetParametersByPath against the requested path (Systems
Manager user guide, "How Parameter Store authorizes parameter retrieval")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.twin import Twin
from local.validation import PARAMETER_NAME_CHARS, parameter_name_problem, parameter_value_problem
from tests.twin.twin_helpers import deployed_twin, write_assembly

ACCOUNT = "123456789012"
PARAMETERS = f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/dep/pipelines"


def _reader_role(name: str, *statements: dict[str, Any]) -> dict[str, Any]:
    document = {"Version": "2012-10-17", "Statement": list(statements)}
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": name,
            "AssumeRolePolicyDocument": {},
            "Policies": [{"PolicyName": "settings", "PolicyDocument": document}],
        },
    }


TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Topic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "dep-notes"}},
        "Sales": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {
                "Name": "/dep/pipelines/sales",
                "Type": "String",
                "Tier": "Standard",
                "Value": {"Fn::Join": ["", ['{"guardrail":{"application_id":"', {"Ref": "Topic"}, '"}}']]},
                "Tags": {"autopilot:pipeline": "sales"},
            },
        },
        "Other": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Name": "/dep/other", "Type": "String", "Value": "{}"},
        },
        "ByName": _reader_role(
            "dep-admission", {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETERS}/*"}
        ),
        "Lister": _reader_role(
            "dep-guardrail",
            {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETERS}/*"},
            {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": PARAMETERS},
        ),
    },
    "Outputs": {"Sales": {"Value": {"Ref": "Sales"}}},
}


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Twin, dict[str, Any]]]:
    with deployed_twin(Path(tmp_path_factory.mktemp("ssm-twin")), "dep", TEMPLATE) as deployed:
        yield deployed


def _as(twin: Twin, role: str) -> Any:
    return twin.client("ssm", principal=f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/session")


def test_the_deployer_creates_parameters_with_their_tokens_resolved(twin: tuple[Twin, dict[str, Any]]) -> None:
    deployed, outputs = twin
    assert outputs["Sales"] == "/dep/pipelines/sales"
    parameter = deployed.client("ssm").get_parameter(Name="/dep/pipelines/sales")["Parameter"]
    assert json.loads(parameter["Value"]) == {
        "guardrail": {"application_id": "arn:aws:sns:us-east-1:123456789012:dep-notes"}
    }
    tags = deployed.client("ssm").list_tags_for_resource(ResourceType="Parameter", ResourceId="/dep/pipelines/sales")
    assert tags["TagList"] == [{"Key": "autopilot:pipeline", "Value": "sales"}]


def test_a_role_reads_only_the_parameters_and_paths_it_is_granted(twin: tuple[Twin, dict[str, Any]]) -> None:
    deployed, _ = twin
    by_name, lister = _as(deployed, "dep-admission"), _as(deployed, "dep-guardrail")
    assert by_name.get_parameter(Name="/dep/pipelines/sales")["Parameter"]["Name"] == "/dep/pipelines/sales"
    with pytest.raises(ClientError, match="AccessDenied"):
        by_name.get_parameter(Name="/dep/other")
    with pytest.raises(ClientError, match="AccessDenied"):  # a role granted GetParameter only may not list
        by_name.get_parameters_by_path(Path="/dep/pipelines", Recursive=False)
    listed = lister.get_parameters_by_path(Path="/dep/pipelines", Recursive=False)["Parameters"]
    assert [p["Name"] for p in listed] == ["/dep/pipelines/sales"]
    with pytest.raises(ClientError, match="AccessDenied"):  # the path is the resource: its parent is another one
        lister.get_parameters_by_path(Path="/dep", Recursive=False)


def test_a_put_parameter_ssm_would_refuse_is_refused(twin: tuple[Twin, dict[str, Any]]) -> None:
    # (before the tests that start a twin of their own: stopping one removes the hooks the module's twin relies on)
    ssm = twin[0].client("ssm")
    deep = "/" + "/".join(f"l{i}" for i in range(16))
    with pytest.raises(ClientError) as refused:
        ssm.put_parameter(Name=deep, Value="v", Type="String")
    assert refused.value.response["Error"]["Code"] == "HierarchyLevelLimitExceededException"
    with pytest.raises(ClientError) as refused:
        ssm.put_parameter(Name="/" + "n" * 1000, Value="v", Type="String")
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as refused:
        ssm.put_parameter(Name="/big", Value="v" * 4097, Type="String")
    assert "4096 characters" in refused.value.response["Error"]["Message"]
    ssm.put_parameter(Name="/" + "/".join(f"l{i}" for i in range(15)), Value="v", Type="String")


def test_a_standard_parameter_over_4096_characters_fails_the_deployment(tmp_path: Path) -> None:
    assert parameter_value_problem("x" * 4096, "Standard") is None and parameter_value_problem("x" * 4097, None)
    assert parameter_value_problem("x" * 8192, "Advanced") is None and parameter_value_problem("x" * 8193, "Advanced")
    big = {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/dep/big", "Type": "String", "Value": "x" * 4097}}
    twin = Twin(workdir=tmp_path, spark=False).start()
    try:
        with pytest.raises(ClientError, match="maximum parameter value of 4096 characters"):
            twin.deploy(write_assembly(tmp_path / "cdk.out", "big", {"Resources": {"Big": big}}))
    finally:
        twin.stop()


ARN_BEFORE_NAME = f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/"  # counted in SSM's 1,011 characters of a name
LONGEST_NAME = "/dep/" + "n" * (PARAMETER_NAME_CHARS - len(ARN_BEFORE_NAME) - len("/dep/"))
DEEPEST_NAME = "/" + "/".join(f"l{i}" for i in range(1, 16))  # 15 levels


def test_parameter_names_within_ssm_s_length_and_depth_are_accepted() -> None:
    assert parameter_name_problem(LONGEST_NAME, "us-east-1", ACCOUNT) is None
    assert parameter_name_problem(DEEPEST_NAME, "us-east-1", ACCOUNT) is None
    assert parameter_name_problem("/autopilot-dev/pipelines/sales-daily", "us-east-1", ACCOUNT) is None


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("/awsdata-dev/pipelines/sales", "AccessDeniedException"),  # a deployment (`<project>-<env>`) named aws...
        ("/SSM-dev/pipelines/sales", "can't be prefixed with"),
        ("awsTestParameter", "can't be prefixed with"),
        (LONGEST_NAME + "n", "maximum is 1011"),
        (DEEPEST_NAME + "/l16", "HierarchyLevelLimitExceededException"),
    ],
)
def test_a_parameter_name_ssm_refuses_fails_the_deployment(tmp_path: Path, name: str, refusal: str) -> None:
    """Systems Manager user guide, "Requirements and constraints for parameter names": no "aws" or "ssm" prefix (any
    case, a leading "/" not counted: `/aws/testparam1` fails), at most 1,011 characters counting the ARN before the
    name, at most 15 levels."""
    parameter = {"Type": "AWS::SSM::Parameter", "Properties": {"Name": name, "Type": "String", "Value": "{}"}}
    twin = Twin(workdir=tmp_path, spark=False).start()
    try:
        with pytest.raises((ClientError, ValueError), match=refusal):
            twin.deploy(write_assembly(tmp_path / "cdk.out", "names", {"Resources": {"Settings": parameter}}))
        assert twin.client("ssm").get_parameters(Names=[name])["InvalidParameters"] == [name]  # not created
    finally:
        twin.stop()
