"""Static IAM: every policy of the synthesized template against AWS's Service Authorization Reference, and every
function's role against the AWS calls its code makes (tests/infra/iam_static.py has the machinery).

Policies are tested per group: the role of each app function (`function:<fn>`), the roles of each pipeline
(`pipeline:<name>`: workflow, job, instance and service roles), CDK's provider roles (`cdk-provider`) and the
resource-based policies per type (`resource:<type>`). A group with a documented finding is a strict xfail that
only a `KnownFinding` satisfies: any other violation in that group still fails the test, and the fix turns the
xfail into an XPASS, which fails until the entry in KNOWN_FINDINGS goes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_config
from local.iam.operations import UnmappedOperation
from tests.infra.conftest import Synthesized
from tests.infra.iam_static import (
    ACCOUNT,
    FUNCTIONS,
    POLICY_HOLDERS,
    RESOURCE_POLICY_TYPES,
    HandlerCalls,
    Resolver,
    StaticPolicy,
    StaticStatement,
    Unresolvable,
    action_allowed,
    action_violations,
    collect_policies,
    condition_violations,
    function_role,
    needed_actions,
    parse_statements,
    policy_documents,
    policy_group,
    resource_violations,
    role_statements,
    sample_params,
    task_call,
)
from tests.infra.test_workflow import _role_statements, _tasks, actions_from_asl, definition_of, workflow_role

PIPELINES = sorted(load_config("dev").pipelines)
GROUPS = (
    [f"function:{f}" for f in FUNCTIONS]
    + [f"pipeline:{p}" for p in PIPELINES]
    + ["cdk-provider"]
    + [f"resource:{kind}" for kind in sorted(set(RESOURCE_POLICY_TYPES.values()))]
)


class KnownFinding(Exception):
    """Raised when a group's violations are exactly its documented findings (the xfail expects only this)."""


@dataclass(frozen=True)
class Known:
    actions: tuple[str, ...]  # a documented violation names one of these actions
    reason: str

    def covers(self, violation: str) -> bool:
        return any(f": {action} on " in violation for action in self.actions)


# (check, group) -> a documented finding, xfailed strictly until fixed. Empty: the last one (CDK's
# grant_read_write_data granting the stream actions GetRecords/GetShardIterator on the idempotency table, where the
# reference allows them only on a stream ARN, aws/aws-cdk#34575) was fixed by granting the item actions explicitly.
KNOWN_FINDINGS: dict[tuple[str, str], Known] = {}


def cases(check: str) -> list[Any]:
    """The groups, those with a documented finding for `check` as strict xfails raising KnownFinding."""
    out: list[Any] = []
    for group in GROUPS:
        known = KNOWN_FINDINGS.get((check, group))
        mark = pytest.mark.xfail(strict=True, raises=KnownFinding, reason=known.reason) if known else ()
        out.append(pytest.param(group, marks=mark, id=group))
    return out


def expect_none(check: str, group: str, violations: list[str]) -> None:
    known = KNOWN_FINDINGS.get((check, group))
    unexpected = [v for v in violations if known is None or not known.covers(v)]
    assert not unexpected, "\n".join(unexpected)
    if violations:
        raise KnownFinding("\n".join(violations))


@pytest.fixture(scope="module")
def policies(synth: Synthesized) -> list[StaticPolicy]:
    return collect_policies(synth.raw)


def policies_of(synth: Synthesized, policies: list[StaticPolicy], group: str, *kinds: str) -> list[StaticPolicy]:
    found = [p for p in policies if p.kind in kinds and policy_group(synth.raw, p) == group]
    if not found:
        pytest.skip(f"the template has no {'/'.join(kinds)} policy in {group}")
    return found


def violations(found: list[StaticPolicy], check: Callable[[StaticPolicy], list[str]]) -> list[str]:
    return [v for policy in found for v in check(policy)]


# ------------------------------------------------------------------------------------------- completeness


def test_every_policy_document_of_the_template_is_collected(synth: Synthesized, policies: list[StaticPolicy]) -> None:
    uncollected = {(t, prop) for _, t, prop in policy_documents(synth.raw) if prop not in POLICY_HOLDERS.get(t, ())}
    assert not uncollected, f"policy documents the static checks do not read: {sorted(uncollected)}"
    holders = {p.logical_id for p in policies}
    documents = {logical_id for logical_id, _, _ in policy_documents(synth.raw)}
    permissions = set(synth.resources("AWS::Lambda::Permission"))
    assert documents | permissions == holders


def test_every_policy_belongs_to_a_tested_group(synth: Synthesized, policies: list[StaticPolicy]) -> None:
    orphans = {p.name: policy_group(synth.raw, p) for p in policies if policy_group(synth.raw, p) not in GROUPS}
    assert not orphans


# ----------------------------------------------------------------------------- 1. actions exist in the reference


@pytest.mark.parametrize("group", cases("actions"))
def test_every_action_exists_in_the_reference(synth: Synthesized, policies: list[StaticPolicy], group: str) -> None:
    found = policies_of(synth, policies, group, "identity", "resource", "trust")
    expect_none("actions", group, violations(found, action_violations))


# ------------------------------------------------------------------------ 2. resources can grant their actions


@pytest.mark.parametrize("group", cases("resources"))
def test_every_allowed_action_is_grantable_on_its_resources(
    synth: Synthesized, policies: list[StaticPolicy], group: str
) -> None:
    found = policies_of(synth, policies, group, "identity", "resource")
    expect_none("resources", group, violations(found, resource_violations))


# ---------------------------------------------------------------------------------- 3. condition keys apply


@pytest.mark.parametrize("group", cases("conditions"))
def test_every_condition_key_is_supported_by_its_actions(
    synth: Synthesized, policies: list[StaticPolicy], group: str
) -> None:
    found = policies_of(synth, policies, group, "identity", "resource", "trust")
    expect_none("conditions", group, violations(found, condition_violations))


# ------------------------------------------------------------- the checks on hand-made statements (unit level)


def policy(*statements: dict[str, Any], template: dict[str, Any] | None = None) -> StaticPolicy:
    parsed = parse_statements("HandMade", {"Statement": list(statements)}, Resolver(template or {}))
    return StaticPolicy("HandMade", "HandMade", "identity", (), parsed)


def allow(action: Any, resource: Any = "*", condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Action": action, "Resource": resource}
    return statement | ({"Condition": condition} if condition else {})


CLUSTERS = f"arn:aws:elasticmapreduce:us-east-1:{ACCOUNT}:cluster/*"


def test_run_job_flow_on_a_cluster_arn_grants_nothing() -> None:
    # RunJobFlow has no resource type: only Resource "*" can allow it.
    (violation,) = resource_violations(policy(allow("elasticmapreduce:RunJobFlow", CLUSTERS)))
    assert "elasticmapreduce:RunJobFlow" in violation and "only Resource '*'" in violation
    assert resource_violations(policy(allow("elasticmapreduce:RunJobFlow", "*"))) == []
    assert resource_violations(policy(allow("elasticmapreduce:DescribeCluster", CLUSTERS))) == []


def test_an_action_on_a_resource_of_another_type_grants_nothing() -> None:
    assert resource_violations(policy(allow("s3:GetObject", "arn:aws:s3:::bucket")))  # a bucket, not an object
    assert resource_violations(policy(allow("s3:GetObject", "arn:aws:s3:::bucket/prefix/*"))) == []
    stream_only = policy(allow("dynamodb:GetRecords", f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/t"))
    assert resource_violations(stream_only)
    # A wildcard action needs one of its actions grantable: s3:List* has ListBucket on a bucket.
    assert resource_violations(policy(allow("s3:List*", "arn:aws:s3:::bucket"))) == []
    assert resource_violations(policy(allow("s3:GetObject*", "arn:aws:s3:::bucket")))
    # A Deny is not a grant: it is not checked.
    assert resource_violations(policy({**allow("elasticmapreduce:RunJobFlow", CLUSTERS), "Effect": "Deny"})) == []


def test_unknown_actions_empty_wildcards_and_a_lone_star_are_rejected() -> None:
    hand_made = policy(
        allow("s3:GetObjekt"), allow("s3:Fly*"), allow("nosuchservice:Get"), allow("*"), allow(["sqs:*", "s3:List*"])
    )
    found = action_violations(hand_made)
    assert [v.split(": ", 1)[1] for v in found] == [
        "s3:GetObjekt is not an action of the Service Authorization Reference",
        "s3:Fly* matches no action of the Service Authorization Reference",
        "nosuchservice:Get is not an action of the Service Authorization Reference",
        "Action '*' (every action of every service) outside a Deny",
    ]
    assert action_violations(policy({**allow("*"), "Effect": "Deny"})) == []


def test_condition_keys_must_be_supported_by_the_statement_s_actions() -> None:
    bucket = "arn:aws:s3:::bucket"
    good = policy(
        allow("elasticmapreduce:RunJobFlow", "*", {"StringEquals": {"aws:RequestTag/autopilot:pipeline": "p"}}),
        allow("elasticmapreduce:DescribeCluster", CLUSTERS, {"StringEquals": {"aws:ResourceTag/x": "y"}}),
        allow("s3:ListBucket", bucket, {"StringLike": {"s3:prefix": ["p/*"]}}),
        allow("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/r", {"StringEquals": {"iam:PassedToService": "s"}}),
        allow("s3:GetObject", f"{bucket}/*", {"Bool": {"aws:SecureTransport": "false"}}),
        allow("sqs:SendMessage", "*", {"ArnEquals": {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/r"}}),
    )
    assert condition_violations(good) == []
    (violation,) = condition_violations(
        policy(allow("s3:GetObject", f"{bucket}/*", {"StringLike": {"s3:prefix": "p"}}))
    )
    assert "condition key s3:prefix" in violation


def test_a_trust_policy_may_use_its_oidc_provider_s_claims() -> None:
    provider = "oidc.eks.us-east-1.amazonaws.com/id/ABC"
    statement = {
        "Effect": "Allow",
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{provider}"},
        "Condition": {"StringLike": {f"{provider}:sub": "system:serviceaccount:*"}},
    }
    assert condition_violations(policy(statement)) == []
    other = {**statement, "Condition": {"StringLike": {"oidc.eks.us-east-1.amazonaws.com/id/XYZ:sub": "x"}}}
    assert condition_violations(policy(other))


def test_the_resolver_renders_intrinsics_as_realistic_arns() -> None:
    template = {
        "Resources": {
            "Landing1": {"Type": "AWS::S3::Bucket", "Properties": {}},
            "Table2": {"Type": "AWS::DynamoDB::GlobalTable", "Properties": {"TableName": "claims"}},
            "Machine3": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {}},
            "Cluster4": {"Type": "AWS::EMRContainers::VirtualCluster", "Properties": {}},
        }
    }
    resolver = Resolver(template)
    assert (
        resolver.text({"Fn::Join": ["", [{"Fn::GetAtt": ["Landing1", "Arn"]}, "/in/*"]]})
        == "arn:aws:s3:::landing1/in/*"
    )
    assert resolver.text({"Fn::GetAtt": ["Table2", "Arn"]}) == f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/claims"
    assert resolver.text({"Ref": "Machine3"}) == f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:Machine3"
    sub = {"Fn::Sub": ["arn:${AWS::Partition}:emr-containers:${AWS::Region}:${AWS::AccountId}:/virtualclusters/${V}",
                       {"V": {"Fn::GetAtt": ["Cluster4", "Id"]}}]}  # fmt: skip
    assert resolver.text(sub) == f"arn:aws:emr-containers:us-east-1:{ACCOUNT}:/virtualclusters/cluster4"
    assert resolver.text({"Fn::Sub": "${Landing1.Arn}/${!literal}"}) == "arn:aws:s3:::landing1/${literal}"


def test_the_resolver_fails_loudly_on_what_it_does_not_know() -> None:
    resolver = Resolver({"Resources": {"Odd": {"Type": "AWS::Foo::Bar"}, "Bucket": {"Type": "AWS::S3::Bucket"}}})
    with pytest.raises(Unresolvable, match="AWS::Foo::Bar"):
        resolver.text({"Fn::GetAtt": ["Odd", "Arn"]})
    with pytest.raises(Unresolvable, match="AWS::S3::Bucket.WebsiteURL"):
        resolver.text({"Fn::GetAtt": ["Bucket", "WebsiteURL"]})
    with pytest.raises(Unresolvable, match="Fn::ImportValue"):
        resolver.text({"Fn::ImportValue": "shared-bucket-arn"})
    with pytest.raises(Unresolvable, match="Missing"):
        resolver.text({"Ref": "Missing"})


# ----------------------------------------------------------------------- 4. each function's role covers its code


def _role_grants(synth: Synthesized, policies: list[StaticPolicy], function: str) -> list[StaticStatement]:
    return role_statements(synth.raw, function_role(synth.raw, function), policies)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_role_grants_every_action_its_code_calls(
    synth: Synthesized, policies: list[StaticPolicy], function: str
) -> None:
    calls = HandlerCalls(function)
    granted = _role_grants(synth, policies, function)
    assert calls.operations(), f"lambdas/{function}: no AWS call found (the analysis is broken)"
    failures = []
    for service, operation in sorted(calls.operations()):
        try:
            needed = needed_actions(service, operation, sample_params(service, operation, calls.transact_kinds()))
        except UnmappedOperation as exc:
            failures.append(f"{service} {operation}: {exc}")
            continue
        failures += [
            f"{service} {operation} needs {a.action}: the role grants no such action"
            for a in needed
            if not action_allowed(a.action, granted)
        ]
    assert not failures, f"lambdas/{function}:\n" + "\n".join(failures)


def test_the_call_analysis_follows_helpers_and_only_what_is_reached(tmp_path: Path) -> None:
    common = tmp_path / "common" / "python" / "autopilot_common"
    common.mkdir(parents=True)
    (common / "store.py").write_text(
        "def load(ddb):\n    return ddb.get_item(TableName='t', Key={})\n\n"
        "def wipe(ddb):\n    ddb.delete_item(TableName='t', Key={})\n"
        "def save(ddb):\n    ddb.transact_write_items(TransactItems=[{'Put': {'TableName': 't'}}])\n"
    )
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(
        "import boto3\nfrom autopilot_common.store import load\n\n"
        "def pages(emr, operation, key):\n    return [p[key] for p in emr.get_paginator(operation).paginate()]\n\n"
        "def handler(event, context):\n"
        "    emr, ddb = boto3.client('emr'), boto3.client('dynamodb')\n"
        "    load(ddb)\n    pages(emr, 'list_steps', 'Steps')\n    pages(emr, operation='list_instances', key='I')\n"
        "    return [emr.describe_cluster, emr.terminate_job_flows(JobFlowIds=[])]\n"
    )
    calls = HandlerCalls("fn", lambdas=tmp_path)
    assert calls.services == {"emr", "dynamodb"}
    assert calls.operations() == {
        ("dynamodb", "GetItem"),
        ("emr", "ListSteps"),
        ("emr", "ListInstances"),
        ("emr", "DescribeCluster"),
        ("emr", "TerminateJobFlows"),
    }  # not store.wipe's DeleteItem nor store.save's TransactWriteItems: the handler never reaches them
    (fn / "handler.py").write_text("import boto3\n\ndef handler(emr, op):\n    emr.get_paginator(op.name)\n")
    with pytest.raises(Unresolvable, match="cannot tell the operation"):
        HandlerCalls("fn", lambdas=tmp_path).operations()


def test_powertools_idempotency_counts_as_dynamodb_item_calls(tmp_path: Path) -> None:
    # No function of the app uses it today (the router's claims are its own conditional writes); one that would
    # must be granted the utility's item calls.
    assert not any(HandlerCalls(fn).uses_idempotency for fn in FUNCTIONS)
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "handler.py").write_text(
        "from aws_lambda_powertools.utilities.idempotency import idempotent\n"
        "@idempotent(persistence_store=None)\ndef lambda_handler(event, context):\n    return {}\n"
    )
    (tmp_path / "common" / "python" / "autopilot_common").mkdir(parents=True)
    calls = HandlerCalls("fn", lambdas=tmp_path)
    assert calls.uses_idempotency
    assert {("dynamodb", op) for op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem")} <= calls.operations()


# ----------------------------------------------------------- 5. workflow roles cover the twin's table per task


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_workflow_role_covers_the_twin_authorizations_of_every_task(synth: Synthesized, pipeline: str) -> None:
    definition = definition_of(synth, pipeline)
    granted = parse_statements(
        pipeline, {"Statement": _role_statements(synth, workflow_role(pipeline))}, Resolver(synth.raw)
    )
    asl = actions_from_asl(definition)
    missing = {f"{action} (derived from the ASL)" for action in asl if not action_allowed(action, granted)}
    for name, state in sorted(_tasks(definition).items()):
        service, operation, request = task_call(state)
        for needed in needed_actions(service, operation, request):
            if not action_allowed(needed.action, granted):
                missing.add(f"{needed.action} (task {name}: {service} {operation}, {json.dumps(needed.context)})")
    assert not missing, f"{workflow_role(pipeline)} lacks:\n" + "\n".join(sorted(missing))
