"""The twin's IAM: the evaluator against the IAM User Guide's evaluation rules, the reference, the operation table."""

from __future__ import annotations

from typing import Any

import pytest

from local.iam.operations import OPERATIONS, Authorization, UnmappedOperation, authorizations
from local.iam.policy import Caller, Context, Policy, PolicyError, Request, arn_matches, evaluate
from local.iam.reference import UnknownAction, reference

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
CALLER = Caller(arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session", account=ACCOUNT, role_arn=ROLE)
CLUSTER = f"arn:aws:elasticmapreduce:us-east-1:{ACCOUNT}:cluster/j-ABC"


def policy(*statements: dict[str, Any], name: str = "app/inline") -> Policy:
    return Policy.parse(name, {"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: Any, resource: Any = "*", **condition: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


def deny(action: Any, resource: Any = "*", **condition: Any) -> dict[str, Any]:
    return {**allow(action, resource, **condition), "Effect": "Deny"}


def decide(
    action: str,
    resource: str,
    *policies: Policy,
    context: dict[str, Any] | None = None,
    resource_policy: Policy | None = None,
    caller: Caller = CALLER,
) -> bool:
    request = Request(caller, action, resource, Context(context or {}))
    return evaluate(request, list(policies), resource_policy).allowed


# ------------------------------------------------------------------------------- decision: deny wins, implicit deny


def test_nothing_allows_means_the_implicit_deny_with_aws_wording() -> None:
    # Given no statement about the action
    request = Request(CALLER, "s3:GetObject", "arn:aws:s3:::b/k", Context())
    # When it is evaluated
    decision = evaluate(request, [policy(allow("s3:PutObject", "arn:aws:s3:::b/*"))])
    # Then it is denied, in AWS's words
    assert not decision.allowed and not decision.explicit_deny
    assert decision.message() == (
        f"User: {CALLER.arn} is not authorized to perform: s3:GetObject on resource: arn:aws:s3:::b/k "
        "because no identity-based policy allows the s3:GetObject action"
    )


def test_an_explicit_deny_wins_over_any_allow() -> None:
    allowing = policy(allow("s3:*", "*"))
    denying = policy(deny("s3:DeleteObject", "arn:aws:s3:::b/*"), name="app/guard")
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", allowing, denying)
    request = Request(CALLER, "s3:DeleteObject", "arn:aws:s3:::b/k", Context())
    decision = evaluate(request, [allowing, denying])
    assert not decision.allowed and decision.explicit_deny
    assert decision.message().endswith("with an explicit deny in a identity-based policy")


def test_a_resource_policy_deny_beats_an_identity_allow() -> None:
    bucket = Policy.parse(
        "resource:bucket",
        {
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": "arn:aws:s3:::b/*",
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ]
        },  # fmt: skip
        resource_based=True,
    )
    identity = policy(allow("s3:GetObject", "arn:aws:s3:::b/*"))
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", identity, resource_policy=bucket,
                  context={"aws:SecureTransport": "true"})  # fmt: skip
    assert not decide("s3:GetObject", "arn:aws:s3:::b/k", identity, resource_policy=bucket,
                      context={"aws:SecureTransport": "false"})  # fmt: skip


# ------------------------------------------------------------------------------------------- Action and Resource


def test_not_action_allows_everything_but_what_it_names() -> None:
    everything_but_iam = policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", everything_but_iam)
    assert not decide("iam:PassRole", ROLE, everything_but_iam)


def test_not_resource_allows_everything_but_what_it_names() -> None:
    not_secret = policy({"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::b/secret/*"})
    assert decide("s3:GetObject", "arn:aws:s3:::b/public/k", not_secret)
    assert not decide("s3:GetObject", "arn:aws:s3:::b/secret/k", not_secret)


def test_action_wildcards_and_case() -> None:
    assert decide("s3:GetObjectVersion", "arn:aws:s3:::b/k", policy(allow("s3:Get*", "*")))
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", policy(allow("S3:getobject", "*")))  # actions ignore case
    assert decide("s3:PutObject", "arn:aws:s3:::b/k", policy(allow("s3:?utObject", "*")))
    assert not decide("s3:PutObjectAcl", "arn:aws:s3:::b/k", policy(allow("s3:PutObject", "*")))


def test_resource_wildcards_stay_within_their_arn_segment() -> None:
    assert arn_matches("arn:aws:s3:::b/*", "arn:aws:s3:::b/a/b/c.csv")  # the resource segment is one piece
    assert arn_matches("arn:aws:elasticmapreduce:*:123456789012:cluster/*", CLUSTER)
    assert arn_matches("arn:aws:states:us-east-1:1:execution:m:*", "arn:aws:states:us-east-1:1:execution:m:run-1")
    assert not arn_matches("arn:aws:*:123456789012:cluster/*", CLUSTER)  # `*` never spans `:` before the resource
    assert not arn_matches("arn:aws:s3:::b/*", "arn:aws:s3:::c/k")
    assert not arn_matches("arn:aws:s3:::b/*", "*")  # an action without resource types is asked with "*"
    assert arn_matches("*", "*")


def test_an_action_without_resource_types_is_allowed_only_by_resource_star() -> None:
    # RunJobFlow has no resource type: a cluster ARN pattern can never allow it (the defect)
    assert not reference().action("elasticmapreduce:RunJobFlow").has_resource_types
    tagged = {"aws:RequestTag/autopilot:pipeline": "p"}
    old = policy(allow("elasticmapreduce:RunJobFlow", "arn:aws:elasticmapreduce:us-east-1:1:cluster/*",
                       StringEquals={"aws:RequestTag/autopilot:pipeline": "p"}))  # fmt: skip
    fixed = policy(allow("elasticmapreduce:RunJobFlow", "*", StringEquals={"aws:RequestTag/autopilot:pipeline": "p"}))
    assert not decide("elasticmapreduce:RunJobFlow", "*", old, context=tagged)
    assert decide("elasticmapreduce:RunJobFlow", "*", fixed, context=tagged)
    assert not decide("elasticmapreduce:RunJobFlow", "*", fixed, context={"aws:RequestTag/autopilot:pipeline": "q"})


# ---------------------------------------------------------------------------------------------------- conditions


def test_values_of_one_key_are_ored_keys_and_operators_are_anded() -> None:
    equals = {"aws:PrincipalTag/team": ["a", "b"], "aws:RequestedRegion": "us-east-1"}
    p = policy(allow("s3:GetObject", "*", StringEquals=equals, Bool={"aws:SecureTransport": "true"}))
    base = {"aws:RequestedRegion": "us-east-1", "aws:SecureTransport": "true"}
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", p, context={**base, "aws:PrincipalTag/team": "b"})
    assert not decide("s3:GetObject", "arn:aws:s3:::b/k", p, context={**base, "aws:PrincipalTag/team": "c"})
    assert not decide("s3:GetObject", "arn:aws:s3:::b/k", p,
                      context={**base, "aws:PrincipalTag/team": "a", "aws:SecureTransport": "false"})  # fmt: skip


@pytest.mark.parametrize(
    ("operator", "expected", "actual", "holds"),
    [
        ("StringEquals", "abc", "abc", True),
        ("StringEquals", "abc", "ABC", False),
        ("StringNotEquals", "abc", "abd", True),
        ("StringEqualsIgnoreCase", "abc", "ABC", True),
        ("StringNotEqualsIgnoreCase", "abc", "ABC", False),
        ("StringLike", "sales/*", "sales/2024/x.csv", True),
        ("StringLike", "sales/?", "sales/ab", False),
        ("StringNotLike", "tmp/*", "sales/x", True),
        ("NumericEquals", "10", "10.0", True),
        ("NumericNotEquals", "10", "11", True),
        ("NumericLessThan", "10", "9", True),
        ("NumericLessThanEquals", "10", "10", True),
        ("NumericGreaterThan", "10", "10", False),
        ("NumericGreaterThanEquals", "10", "11", True),
        ("NumericLessThan", "10", "not-a-number", False),
        ("DateGreaterThan", "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", True),
        ("DateLessThan", "2026-01-01T00:00:00Z", "1700000000", True),  # epoch seconds
        ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00", True),
        ("DateNotEquals", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", True),
        ("Bool", "true", "TRUE", True),
        ("BinaryEquals", "QmluYXJ5", "QmluYXJ5", True),
        ("IpAddress", "10.0.0.0/8", "10.1.2.3", True),
        ("NotIpAddress", "10.0.0.0/8", "192.168.0.1", True),
        ("ArnLike", "arn:aws:events:*:123456789012:rule/*", "arn:aws:events:us-east-1:123456789012:rule/r", True),
        (
            "ArnEquals",
            "arn:aws:events:us-east-1:123456789012:rule/r",
            "arn:aws:events:us-east-1:123456789012:rule/s",
            False,
        ),  # fmt: skip
        ("ArnNotLike", "arn:aws:events:*:*:rule/r", "arn:aws:events:us-east-1:1:rule/s", True),
    ],
)
def test_every_condition_operator(operator: str, expected: str, actual: str, holds: bool) -> None:
    p = policy(allow("s3:GetObject", "*", **{operator: {"test:key": expected}}))
    assert decide("s3:GetObject", "arn:aws:s3:::b/k", p, context={"test:key": actual}) is holds


def test_a_missing_key_fails_positive_operators_and_satisfies_negated_ones() -> None:
    def holds(operator: str, key_value: str = "x") -> bool:
        return decide("s3:GetObject", "*", policy(allow("s3:GetObject", "*", **{operator: {"test:key": key_value}})))

    assert not holds("StringEquals") and not holds("StringLike") and not holds("ArnLike") and not holds("Bool", "true")
    assert (
        holds("StringNotEquals")
        and holds("StringNotLike")
        and holds("ArnNotLike")
        and holds("NotIpAddress", "1.0.0.0/8")
    )
    assert holds("StringEqualsIfExists") and holds("NumericLessThanIfExists", "1")


def test_if_exists_still_tests_a_key_that_is_present() -> None:
    p = policy(allow("s3:GetObject", "*", StringEqualsIfExists={"test:key": "a"}))
    assert decide("s3:GetObject", "*", p, context={"test:key": "a"})
    assert not decide("s3:GetObject", "*", p, context={"test:key": "b"})


def test_null_tests_presence() -> None:
    absent = policy(allow("s3:GetObject", "*", Null={"aws:RequestTag/team": "true"}))
    present = policy(allow("s3:GetObject", "*", Null={"aws:RequestTag/team": "false"}))
    assert decide("s3:GetObject", "*", absent) and not decide("s3:GetObject", "*", present)
    tagged = {"aws:RequestTag/team": "a"}
    assert not decide("s3:GetObject", "*", absent, context=tagged) and decide(
        "s3:GetObject", "*", present, context=tagged
    )


def test_set_operators_on_multivalued_keys() -> None:
    any_value = policy(allow("emr:AddTags", "*", **{"ForAnyValue:StringEquals": {"aws:TagKeys": ["team", "env"]}}))
    all_values = policy(allow("emr:AddTags", "*", **{"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}}))
    assert decide("emr:AddTags", "*", any_value, context={"aws:TagKeys": ["team", "other"]})
    assert not decide("emr:AddTags", "*", any_value, context={"aws:TagKeys": ["other"]})
    assert not decide("emr:AddTags", "*", any_value)  # ForAnyValue: an absent key matches nothing
    assert decide("emr:AddTags", "*", all_values, context={"aws:TagKeys": ["team", "env"]})
    assert not decide("emr:AddTags", "*", all_values, context={"aws:TagKeys": ["team", "other"]})
    assert decide("emr:AddTags", "*", all_values)  # ForAllValues: true when the key is absent (documented pitfall)


def test_resource_tags_are_read_only_when_a_condition_asks() -> None:
    asked: list[str] = []

    def resolve(key: str) -> str | None:
        asked.append(key)
        return {"aws:ResourceTag/autopilot:pipeline": "p"}.get(key)

    own = policy(allow("elasticmapreduce:DescribeCluster", "*",
                       StringEquals={"aws:ResourceTag/autopilot:pipeline": "p"}))  # fmt: skip
    request = Request(CALLER, "elasticmapreduce:DescribeCluster", CLUSTER, Context({}, resolve))
    assert evaluate(request, [own]).allowed and asked == ["aws:ResourceTag/autopilot:pipeline"]
    other = Request(CALLER, "elasticmapreduce:DescribeCluster", CLUSTER, Context({}, lambda _k: None))
    assert not evaluate(other, [own]).allowed  # an untagged (or other team's) cluster


def test_policy_variables_in_resources_and_conditions() -> None:
    per_user = policy(allow("s3:GetObject", "arn:aws:s3:::b/home/${aws:username}/*"))
    assert decide("s3:GetObject", "arn:aws:s3:::b/home/alice/x", per_user, context={"aws:username": "alice"})
    assert not decide("s3:GetObject", "arn:aws:s3:::b/home/bob/x", per_user, context={"aws:username": "alice"})
    assert not decide("s3:GetObject", "arn:aws:s3:::b/home/alice/x", per_user)  # an unresolved variable: no match
    defaulted = policy(allow("s3:GetObject", "arn:aws:s3:::b/${aws:PrincipalTag/team, 'shared'}/*"))
    assert decide("s3:GetObject", "arn:aws:s3:::b/shared/x", defaulted)
    literal = policy(allow("s3:GetObject", "arn:aws:s3:::b/${*}/x"))
    assert decide("s3:GetObject", "arn:aws:s3:::b/*/x", literal)
    tagged = policy(allow("s3:GetObject", "*", StringEquals={"aws:PrincipalTag/team": "${aws:RequestTag/team}"}))
    assert decide("s3:GetObject", "*", tagged, context={"aws:PrincipalTag/team": "a", "aws:RequestTag/team": "a"})


def test_unknown_operators_and_malformed_statements_are_errors() -> None:
    with pytest.raises(PolicyError, match="StringMaybe"):
        decide("s3:GetObject", "*", policy(allow("s3:GetObject", "*", StringMaybe={"k": "v"})))
    with pytest.raises(PolicyError, match="Effect"):
        policy({"Effect": "Permit", "Action": "*", "Resource": "*"})
    with pytest.raises(PolicyError, match="Action and NotAction"):
        policy({"Effect": "Allow", "Resource": "*"})


# --------------------------------------------------------------------------------------- resource-based policies


def _resource_policy(principal: Any, **condition: Any) -> Policy:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": "sqs:SendMessage",
                                 "Resource": "arn:aws:sqs:us-east-1:123456789012:q"}  # fmt: skip
    if condition:
        statement["Condition"] = condition
    return Policy.parse("resource:queue", {"Statement": [statement]}, resource_based=True)


def test_a_resource_policy_naming_the_role_grants_on_its_own() -> None:
    queue = "arn:aws:sqs:us-east-1:123456789012:q"
    assert decide("sqs:SendMessage", queue, resource_policy=_resource_policy({"AWS": ROLE}))
    session = _resource_policy({"AWS": CALLER.arn})
    assert decide("sqs:SendMessage", queue, resource_policy=session)


def test_a_resource_policy_naming_the_account_delegates_to_identity_policies() -> None:
    queue = "arn:aws:sqs:us-east-1:123456789012:q"
    account = _resource_policy({"AWS": f"arn:aws:iam::{ACCOUNT}:root"})
    assert not decide("sqs:SendMessage", queue, resource_policy=account)
    assert decide("sqs:SendMessage", queue, policy(allow("sqs:SendMessage", queue)), resource_policy=account)


def test_a_service_principal_needs_the_resource_policy_and_its_source_arn() -> None:
    queue = "arn:aws:sqs:us-east-1:123456789012:q"
    rule = "arn:aws:events:us-east-1:123456789012:rule/arrivals"
    events = Caller(arn="events.amazonaws.com", account=ACCOUNT, service="events.amazonaws.com")
    only_rule = _resource_policy({"Service": "events.amazonaws.com"}, ArnEquals={"aws:SourceArn": rule})
    assert decide("sqs:SendMessage", queue, resource_policy=only_rule, caller=events, context={"aws:SourceArn": rule})
    assert not decide("sqs:SendMessage", queue, resource_policy=only_rule, caller=events,
                      context={"aws:SourceArn": rule + "-other"})  # fmt: skip
    assert not decide("sqs:SendMessage", queue, caller=events)  # no resource policy: nothing can allow a service


# ----------------------------------------------------------------------------------------------------- reference


def test_the_reference_knows_actions_resource_types_and_condition_keys() -> None:
    ref = reference()
    describe = ref.action("elasticmapreduce:DescribeCluster")
    assert describe.resource_type_for(CLUSTER) is not None
    assert describe.supports_condition_key("aws:ResourceTag/autopilot:pipeline")
    assert describe.supports_condition_key("aws:SourceArn")  # global
    assert not describe.supports_condition_key("s3:prefix")
    assert ref.action("s3:ListBucket").supports_condition_key("s3:prefix")
    assert ref.action("iam:PassRole").supports_condition_key("iam:PassedToService")
    with pytest.raises(UnknownAction):
        ref.action("dynamodb:TransactWriteItems")  # an API operation, not an IAM action
    assert {a.name for a in ref.actions_matching("s3:GetObject*")} >= {"GetObject", "GetObjectVersion"}


# ------------------------------------------------------------------------------------------------ operation table


class _Lookups:
    account = ACCOUNT
    region = "us-east-1"

    def role_arn(self, name_or_arn: str) -> str:
        return name_or_arn if name_or_arn.startswith("arn:") else f"arn:aws:iam::{ACCOUNT}:role/{name_or_arn}"

    def instance_profile_roles(self, name_or_arn: str) -> list[str]:
        return [f"arn:aws:iam::{ACCOUNT}:role/{name_or_arn}-role"]

    def role_exists(self, name: str) -> bool:
        return name == "AWSServiceRoleForEMRCleanup"  # EMR made its service-linked role with an earlier cluster


QUEUE_URL = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/q"
SAMPLE_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("s3", "GetObject"): {"Bucket": "b", "Key": "k"},
    ("s3", "HeadObject"): {"Bucket": "b", "Key": "k", "VersionId": "v1"},
    ("s3", "PutObject"): {"Bucket": "b", "Key": "k"},
    ("s3", "CreateMultipartUpload"): {"Bucket": "b", "Key": "k"},
    ("s3", "UploadPart"): {"Bucket": "b", "Key": "k"},
    ("s3", "CompleteMultipartUpload"): {"Bucket": "b", "Key": "k"},
    ("s3", "CopyObject"): {"Bucket": "b", "Key": "k", "CopySource": "/src/a/b.csv"},
    ("s3", "UploadPartCopy"): {"Bucket": "b", "Key": "k", "CopySource": "src/a?versionId=3"},
    ("s3", "AbortMultipartUpload"): {"Bucket": "b", "Key": "k"},
    ("s3", "ListParts"): {"Bucket": "b", "Key": "k"},
    ("s3", "DeleteObject"): {"Bucket": "b", "Key": "k"},
    ("s3", "DeleteObjects"): {"Bucket": "b", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b", "VersionId": "1"}]}},
    ("s3", "ListObjects"): {"Bucket": "b", "Prefix": "p/"},
    ("s3", "ListObjectsV2"): {"Bucket": "b", "Prefix": "p/", "Delimiter": "/", "MaxKeys": 10},
    ("s3", "HeadBucket"): {"Bucket": "b"},
    ("s3", "ListObjectVersions"): {"Bucket": "b", "Prefix": "p/"},
    ("s3", "GetBucketLocation"): {"Bucket": "b"},
    ("s3", "ListBuckets"): {},
    ("dynamodb", "BatchGetItem"): {"RequestItems": {"t": {"Keys": [{}]}}},
    ("dynamodb", "BatchWriteItem"): {"RequestItems": {"t": [{"PutRequest": {}}]}},
    ("dynamodb", "TransactWriteItems"): {
        "TransactItems": [
            {"Put": {"TableName": "t"}},
            {"ConditionCheck": {"TableName": "u"}},
            {"Update": {"TableName": "t"}},
            {"Delete": {"TableName": "t"}},
        ]  # fmt: skip
    },
    ("dynamodb", "TransactGetItems"): {"TransactItems": [{"Get": {"TableName": "t"}}]},
    ("dynamodb", "Query"): {"TableName": "t", "IndexName": "by-state"},
    ("sqs", "GetQueueUrl"): {"QueueName": "q"},
    ("sns", "Publish"): {"TopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:t"},
    ("sns", "PublishBatch"): {"TopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:t"},
    ("emr", "RunJobFlow"): {
        "Tags": [{"Key": "autopilot:pipeline", "Value": "p"}],
        "ServiceRole": "svc",
        "JobFlowRole": "profile",
        "AutoScalingRole": "scale",
    },  # fmt: skip
    ("emr", "AddJobFlowSteps"): {"JobFlowId": "j-1", "ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/runtime"},
    ("emr", "AddTags"): {"ResourceId": "j-1", "Tags": [{"Key": "k", "Value": "v"}]},
    ("emr", "RemoveTags"): {"ResourceId": "j-1", "TagKeys": ["k"]},
    ("emr", "TerminateJobFlows"): {"JobFlowIds": ["j-1", "j-2"]},
    ("emr", "SetTerminationProtection"): {"JobFlowIds": ["j-1"]},
    ("emr-serverless", "StartJobRun"): {"applicationId": "a1", "executionRoleArn": ROLE, "tags": {"k": "v"}},
    ("emr-containers", "StartJobRun"): {"virtualClusterId": "vc", "executionRoleArn": ROLE, "tags": {"k": "v"}},
    ("emr-containers", "DescribeVirtualCluster"): {"id": "vc"},
    ("cloudwatch", "PutMetricAlarm"): {"AlarmName": "a", "Tags": [{"Key": "k", "Value": "v"}]},
    ("cloudwatch", "DeleteAlarms"): {"AlarmNames": ["a", "b"]},
    ("cloudwatch", "DescribeAlarms"): {"AlarmNamePrefix": "autopilot-dev-scaling-"},
    ("lambda", "Invoke"): {"FunctionName": "fn", "Qualifier": "live"},
    ("lambda", "InvokeAsync"): {"FunctionName": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn"},
    ("events", "PutEvents"): {"Entries": [{"Source": "autopilot", "DetailType": "Run", "Detail": "{}"}]},
    ("ssm", "GetParameter"): {"Name": "/autopilot-dev/pipelines/sales:3"},
    ("ssm", "GetParametersByPath"): {"Path": "/autopilot-dev/pipelines", "Recursive": True},
}


def _sample(service: str, operation: str) -> dict[str, Any]:
    if (service, operation) in SAMPLE_PARAMS:
        return SAMPLE_PARAMS[(service, operation)]
    generic: dict[str, Any] = {
        "TableName": "t", "QueueUrl": QUEUE_URL,
        "stateMachineArn": f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:m",
        "executionArn": f"arn:aws:states:us-east-1:{ACCOUNT}:execution:m:run", "ClusterId": "j-1", "StepId": "s-1",
        "applicationId": "a1", "jobRunId": "jr1", "virtualClusterId": "vc", "id": "jr1", "AlarmName": "a",
        "Name": "rule", "Rule": "rule",
    }  # fmt: skip
    return generic


@pytest.mark.parametrize("key", sorted(OPERATIONS), ids=lambda k: f"{k[0]}:{k[1]}")
def test_every_row_names_real_actions_on_arns_of_their_resource_types(key: tuple[str, str]) -> None:
    ref = reference()
    for needed in authorizations(*key, _sample(*key), _Lookups()):
        action = ref.action(needed.action)  # UnknownAction when the row names a made-up action
        if needed.resource == "*":
            continue  # an action without resource types, or one called without a resource
        resource_type = action.resource_type_for(needed.resource)
        assert resource_type is not None, f"{needed.resource} is none of {needed.action}'s resource types"
        for context_key in needed.context:
            assert action.supports_condition_key(context_key), f"{needed.action} has no condition key {context_key}"


def test_rows_that_need_more_than_their_namesake() -> None:
    lookups = _Lookups()
    run = authorizations("emr", "RunJobFlow", SAMPLE_PARAMS[("emr", "RunJobFlow")], lookups)
    assert [(a.action, a.resource) for a in run] == [
        ("elasticmapreduce:RunJobFlow", "*"),
        ("elasticmapreduce:AddTags", f"arn:aws:elasticmapreduce:us-east-1:{ACCOUNT}:cluster/*"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/svc"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/profile-role"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/scale"),
    ]
    assert run[0].context["aws:RequestTag/autopilot:pipeline"] == "p" and run[0].context["aws:TagKeys"] == [
        "autopilot:pipeline"
    ]
    assert [a.context["iam:PassedToService"] for a in run[2:]] == [
        "elasticmapreduce.amazonaws.com", "ec2.amazonaws.com", "application-autoscaling.amazonaws.com"]  # fmt: skip
    transact = authorizations(
        "dynamodb", "TransactWriteItems", SAMPLE_PARAMS[("dynamodb", "TransactWriteItems")], lookups
    )
    assert [a.action for a in transact] == [
        "dynamodb:PutItem", "dynamodb:ConditionCheckItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]  # fmt: skip
    copy = authorizations("s3", "CopyObject", SAMPLE_PARAMS[("s3", "CopyObject")], lookups)
    assert [(a.action, a.resource) for a in copy] == [
        ("s3:PutObject", "arn:aws:s3:::b/k"), ("s3:GetObject", "arn:aws:s3:::src/a/b.csv")]  # fmt: skip
    listing = authorizations("s3", "ListObjectsV2", SAMPLE_PARAMS[("s3", "ListObjectsV2")], lookups)
    assert listing == [Authorization("s3:ListBucket", "arn:aws:s3:::b",
                                     {"s3:prefix": "p/", "s3:delimiter": "/", "s3:max-keys": "10"})]  # fmt: skip
    # GetParameter: the parameter, without a version selector; GetParametersByPath: the requested path itself
    parameter = authorizations("ssm", "GetParameter", SAMPLE_PARAMS[("ssm", "GetParameter")], lookups)
    assert parameter == [
        Authorization("ssm:GetParameter", f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/autopilot-dev/pipelines/sales")
    ]
    path = authorizations("ssm", "GetParametersByPath", SAMPLE_PARAMS[("ssm", "GetParametersByPath")], lookups)
    assert path == [Authorization("ssm:GetParametersByPath", f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/autopilot-dev/"
                                  "pipelines", {"ssm:Recursive": "Recursive"})]  # fmt: skip


def test_the_accounts_first_cluster_also_needs_to_create_emrs_service_linked_role() -> None:
    class FirstCluster(_Lookups):
        def role_exists(self, name: str) -> bool:
            return False

    run = authorizations("emr", "RunJobFlow", {"ServiceRole": "svc"}, FirstCluster())
    assert (run[-1].action, run[-1].context) == (
        "iam:CreateServiceLinkedRole",
        {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"},
    )
    assert run[-1].resource.endswith(
        ":role/aws-service-role/elasticmapreduce.amazonaws.com/AWSServiceRoleForEMRCleanup"
    )


def test_an_operation_the_table_does_not_know_is_refused_loudly() -> None:
    with pytest.raises(UnmappedOperation, match="emr-serverless DeleteApplication"):
        authorizations("emr-serverless", "DeleteApplication", {}, _Lookups())
