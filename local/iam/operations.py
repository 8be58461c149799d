"""The one table of what each AWS API operation the app calls must be allowed: IAM action(s), resource ARN(s) and
the request's own condition keys.

Keys, `UnmappedOperation`, and the sources behind operations that need more than their namesake action:
docs/twin/iam.md ("What each operation needs").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from local.iam.policy import ContextValue


class UnmappedOperation(LookupError):
    """An operation the table does not know: the twin refuses to guess what AWS would authorize."""


@dataclass(frozen=True)
class Authorization:
    """One action on one resource with the request's own condition keys (tags, prefixes, passed roles)."""

    action: str
    resource: str = "*"
    context: Mapping[str, ContextValue] = field(default_factory=dict)


class Lookups(Protocol):
    """What the table needs from the twin beyond the request: names -> ARNs."""

    account: str
    region: str

    def instance_profile_roles(self, name_or_arn: str) -> list[str]:
        """The role ARNs in an instance profile."""
        ...

    def role_arn(self, name_or_arn: str) -> str:
        """A role's ARN (its path included) from its name or ARN."""
        ...

    def role_exists(self, name: str) -> bool:
        """Whether the account has the role (e.g. a service-linked role a service creates on first use)."""
        ...


Row = Callable[[Mapping[str, Any], Lookups], list[Authorization]]
OPERATIONS: dict[tuple[str, str], Row] = {}


def operation(service: str, *names: str) -> Callable[[Row], Row]:
    def register(row: Row) -> Row:
        for name in names:
            if (service, name) in OPERATIONS:
                raise ValueError(f"{service} {name} is mapped twice")
            OPERATIONS[(service, name)] = row
        return row

    return register


def authorizations(
    service: str, operation_name: str, params: Mapping[str, Any], lookups: Lookups
) -> list[Authorization]:
    """What AWS authorizes for one call (UnmappedOperation when the table does not know the operation)."""
    row = OPERATIONS.get((service, operation_name))
    if row is None:
        raise UnmappedOperation(
            f"the twin's IAM table has no row for {service} {operation_name}: add one to local/iam/operations.py "
            "(from the Service Authorization Reference) before the app calls it"
        )
    return row(params, lookups)


def _no_resource(service: str, prefix: str, *names: str) -> None:
    """Operations whose action has no resource type: only `Resource: "*"` can allow them."""
    for name in names:
        operation(service, name)(_star_row(f"{prefix}:{name}"))


def _star_row(action: str) -> Row:
    def row(_p: Mapping[str, Any], _l: Lookups) -> list[Authorization]:
        return [Authorization(action)]

    return row


def _arn(lookups: Lookups, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
    return f"arn:aws:{service}:{lookups.region if region else ''}:{lookups.account if account else ''}:{resource}"


def tag_context(
    tags: Mapping[str, str] | Iterable[Mapping[str, str]] | None, service_prefix: str = ""
) -> dict[str, ContextValue]:
    """`aws:RequestTag/<k>` and `aws:TagKeys` (and `<service>:RequestTag/<k>`) for tags given as a map or as
    `[{Key, Value}]` (any key case)."""
    if not tags:
        return {}
    if isinstance(tags, Mapping):
        pairs = [(str(k), str(v)) for k, v in tags.items()]
    else:
        pairs = [(str(t.get("Key", t.get("key"))), str(t.get("Value", t.get("value", "")))) for t in tags]
    context: dict[str, ContextValue] = {"aws:TagKeys": [k for k, _ in pairs]}
    for key, value in pairs:
        context[f"aws:RequestTag/{key}"] = value
        if service_prefix:
            context[f"{service_prefix}:RequestTag/{key}"] = value
    return context


def pass_role(role_arn: str, service: str) -> Authorization:
    """iam:PassRole of `role_arn` to `service`, as every API that hands a role to a service requires."""
    return Authorization("iam:PassRole", role_arn, {"iam:PassedToService": service})


# ------------------------------------------------------------------------------------------------------------ S3


def _object(params: Mapping[str, Any], key: str | None = None) -> str:
    return f"arn:aws:s3:::{params['Bucket']}/{key if key is not None else params['Key']}"


def _bucket(params: Mapping[str, Any]) -> str:
    return f"arn:aws:s3:::{params['Bucket']}"


@operation("s3", "GetObject", "HeadObject")
def _s3_get(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    action = "s3:GetObjectVersion" if p.get("VersionId") else "s3:GetObject"
    return [Authorization(action, _object(p))]


@operation("s3", "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
def _s3_put(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("s3:PutObject", _object(p))]


@operation("s3", "CopyObject", "UploadPartCopy")
def _s3_copy(p: Mapping[str, Any], _l: Lookups) -> list[Authorization]:
    source = str(p["CopySource"]).lstrip("/")
    source_path, _, query = source.partition("?versionId=")
    action = "s3:GetObjectVersion" if query else "s3:GetObject"
    return [
        Authorization("s3:PutObject", _object(p), {"s3:x-amz-copy-source": source}),
        Authorization(action, f"arn:aws:s3:::{source_path}"),
    ]


@operation("s3", "AbortMultipartUpload")
def _s3_abort(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("s3:AbortMultipartUpload", _object(p))]


@operation("s3", "ListParts")
def _s3_list_parts(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("s3:ListMultipartUploadParts", _object(p))]


@operation("s3", "DeleteObject")
def _s3_delete(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    action = "s3:DeleteObjectVersion" if p.get("VersionId") else "s3:DeleteObject"
    return [Authorization(action, _object(p))]


@operation("s3", "DeleteObjects")
def _s3_delete_many(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [
        Authorization("s3:DeleteObjectVersion" if o.get("VersionId") else "s3:DeleteObject", _object(p, o["Key"]))
        for o in p.get("Delete", {}).get("Objects", [])
    ]


@operation("s3", "ListObjects", "ListObjectsV2", "HeadBucket")
def _s3_list(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    context: dict[str, ContextValue] = {}
    if p.get("Prefix") is not None:
        context["s3:prefix"] = str(p["Prefix"])
    if p.get("Delimiter") is not None:
        context["s3:delimiter"] = str(p["Delimiter"])
    if p.get("MaxKeys") is not None:
        context["s3:max-keys"] = str(p["MaxKeys"])
    return [Authorization("s3:ListBucket", _bucket(p), context)]


@operation("s3", "ListObjectVersions")
def _s3_list_versions(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    context: dict[str, ContextValue] = {"s3:prefix": str(p["Prefix"])} if p.get("Prefix") is not None else {}
    return [Authorization("s3:ListBucketVersions", _bucket(p), context)]


@operation("s3", "GetBucketLocation")
def _s3_location(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("s3:GetBucketLocation", _bucket(p))]


@operation("s3", "ListBuckets")
def _s3_buckets(_p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("s3:ListAllMyBuckets")]


# ------------------------------------------------------------------------------------------------------ DynamoDB


def _table(lookups: Lookups, name: str, index: str | None = None) -> str:
    name = name.rsplit("/", 1)[-1] if name.startswith("arn:") else name
    return _arn(lookups, "dynamodb", f"table/{name}" + (f"/index/{index}" if index else ""))


def _dynamodb_item_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        return [Authorization(action, _table(lookups, p["TableName"], p.get("IndexName")))]

    return row


for _name in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "DescribeTable", "DescribeTimeToLive"):
    operation("dynamodb", _name)(_dynamodb_item_row(f"dynamodb:{_name}"))


@operation("dynamodb", "BatchGetItem", "BatchWriteItem")
def _dynamodb_batch(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    action = (
        "dynamodb:BatchGetItem" if "Keys" in next(iter(p["RequestItems"].values()), {}) else "dynamodb:BatchWriteItem"
    )
    return [Authorization(action, _table(lookups, table)) for table in p["RequestItems"]]


_TRANSACT_ACTIONS = {
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "Get": "dynamodb:GetItem",
}


@operation("dynamodb", "TransactWriteItems", "TransactGetItems")
def _dynamodb_transact(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    out = []
    for item in p["TransactItems"]:
        ((kind, body),) = item.items()
        out.append(Authorization(_TRANSACT_ACTIONS[kind], _table(lookups, body["TableName"])))
    return out


# ------------------------------------------------------------------------------------------------- SQS, SNS


def queue_arn(lookups: Lookups, url_or_name: str) -> str:
    """A queue's ARN from its URL (or name)."""
    name = urlparse(url_or_name).path.rstrip("/").rsplit("/", 1)[-1] if "/" in url_or_name else url_or_name
    return _arn(lookups, "sqs", name)


_SQS_ACTIONS = {
    "SendMessage": "sqs:SendMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
    "PurgeQueue": "sqs:PurgeQueue",
}


def _sqs_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        return [Authorization(action, queue_arn(lookups, p["QueueUrl"]))]

    return row


for _name, _action in _SQS_ACTIONS.items():
    operation("sqs", _name)(_sqs_row(_action))


@operation("sqs", "GetQueueUrl")
def _sqs_url(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("sqs:GetQueueUrl", queue_arn(lookups, p["QueueName"]))]


@operation("sns", "Publish", "PublishBatch")
def _sns_publish(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("sns:Publish", p.get("TopicArn") or p["TargetArn"])]


# ------------------------------------------------------------------------------------------------ Step Functions


@operation("stepfunctions", "StartExecution", "StartSyncExecution")
def _sfn_start(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return [Authorization("states:StartExecution", p["stateMachineArn"])]


def _sfn_row(action: str, member: str) -> Row:
    def row(p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
        return [Authorization(action, p[member])]

    return row


for _name, _member in (
    ("DescribeExecution", "executionArn"),
    ("StopExecution", "executionArn"),
    ("GetExecutionHistory", "executionArn"),
    ("DescribeStateMachineForExecution", "executionArn"),
    ("ListExecutions", "stateMachineArn"),
    ("DescribeStateMachine", "stateMachineArn"),
):
    operation("stepfunctions", _name)(_sfn_row(f"states:{_name}", _member))


_no_resource("stepfunctions", "states", "SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat", "ListStateMachines")


# ------------------------------------------------------------------------------------------------- EMR on EC2


EMR_CLEANUP_ROLE = "aws-service-role/elasticmapreduce.amazonaws.com/AWSServiceRoleForEMRCleanup"


def cluster_arn(lookups: Lookups, cluster_id: str) -> str:
    return _arn(lookups, "elasticmapreduce", f"cluster/{cluster_id}")


@operation("emr", "RunJobFlow")
def _emr_run_job_flow(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    tags = tag_context(p.get("Tags"), "elasticmapreduce")
    out = [Authorization("elasticmapreduce:RunJobFlow", "*", tags)]
    if p.get("Tags"):
        # Strict where AWS's rule is unclear: tagging on create may also be authorized as AddTags (on the new
        # cluster, whose id nobody knows yet: the twin asks it for `cluster/*`). Requiring it can only make the twin
        # refuse more than AWS, never less.
        out.append(Authorization("elasticmapreduce:AddTags", cluster_arn(lookups, "*"), tags))
    if p.get("ServiceRole"):
        out.append(pass_role(lookups.role_arn(p["ServiceRole"]), "elasticmapreduce.amazonaws.com"))
    if p.get("JobFlowRole"):
        out.extend(pass_role(role, "ec2.amazonaws.com") for role in lookups.instance_profile_roles(p["JobFlowRole"]))
    if p.get("AutoScalingRole"):
        out.append(pass_role(lookups.role_arn(p["AutoScalingRole"]), "application-autoscaling.amazonaws.com"))
    if not lookups.role_exists("AWSServiceRoleForEMRCleanup"):
        # The account's first cluster makes EMR create its service-linked role, which the caller must be allowed
        # (EMR management guide, "Using service-linked roles for Amazon EMR for cleanup"; the Step Functions guide
        # repeats it for createCluster).
        slr = f"arn:aws:iam::{lookups.account}:role/{EMR_CLEANUP_ROLE}"
        out.append(
            Authorization("iam:CreateServiceLinkedRole", slr, {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"})
        )
    return out


@operation("emr", "AddJobFlowSteps")
def _emr_add_steps(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    role = p.get("ExecutionRoleArn")
    context: dict[str, ContextValue] = {"elasticmapreduce:ExecutionRoleArn": role} if role else {}
    out = [Authorization("elasticmapreduce:AddJobFlowSteps", cluster_arn(lookups, p["JobFlowId"]), context)]
    if role:
        out.append(pass_role(role, "elasticmapreduce.amazonaws.com"))
    return out


def _emr_cluster_row(action: str, member: str = "ClusterId") -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        if member not in p:  # an optional cluster (ModifyInstanceGroups by group id only): no resource
            return [Authorization(action)]
        ids = p[member] if isinstance(p[member], list) else [p[member]]
        return [Authorization(action, cluster_arn(lookups, cluster_id)) for cluster_id in ids]

    return row


for _name, _member in (
    ("DescribeCluster", "ClusterId"),
    ("DescribeStep", "ClusterId"),
    ("ListSteps", "ClusterId"),
    ("CancelSteps", "ClusterId"),
    ("ListInstanceFleets", "ClusterId"),
    ("ListInstanceGroups", "ClusterId"),
    ("ListInstances", "ClusterId"),
    ("ListBootstrapActions", "ClusterId"),
    ("ModifyInstanceFleet", "ClusterId"),
    ("ModifyInstanceGroups", "ClusterId"),
    ("ModifyCluster", "ClusterId"),
    ("GetAutoTerminationPolicy", "ClusterId"),
    ("PutAutoTerminationPolicy", "ClusterId"),
    ("RemoveAutoTerminationPolicy", "ClusterId"),
    ("GetManagedScalingPolicy", "ClusterId"),
    ("PutManagedScalingPolicy", "ClusterId"),
    ("RemoveManagedScalingPolicy", "ClusterId"),
    ("TerminateJobFlows", "JobFlowIds"),
    ("SetTerminationProtection", "JobFlowIds"),
):
    operation("emr", _name)(_emr_cluster_row(f"elasticmapreduce:{_name}", _member))


@operation("emr", "AddTags")
def _emr_add_tags(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    context = tag_context(p.get("Tags"), "elasticmapreduce")
    return [Authorization("elasticmapreduce:AddTags", cluster_arn(lookups, p["ResourceId"]), context)]


@operation("emr", "RemoveTags")
def _emr_remove_tags(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    context: dict[str, ContextValue] = {"aws:TagKeys": list(p.get("TagKeys", []))}
    return [Authorization("elasticmapreduce:RemoveTags", cluster_arn(lookups, p["ResourceId"]), context)]


@operation("emr", "CreatePersistentAppUI")
def _emr_create_persistent_app_ui(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    # Service Authorization Reference: the persistent application UI actions have one (required) resource type,
    # `cluster`. An EMR on EKS target (a virtual cluster ARN) is no cluster: the twin asks for `cluster/*`, strict
    # where the reference is silent (it can only refuse more than AWS).
    target = str(p.get("TargetResourceArn") or "")
    prefix = cluster_arn(lookups, "")
    return [Authorization("elasticmapreduce:CreatePersistentAppUI", target if target.startswith(prefix) else
                          cluster_arn(lookups, "*"))]  # fmt: skip


def _persistent_app_ui_row(action: str) -> Row:
    # Only the UI's id is in the request (its cluster is not): asked for `cluster/*`, as above. ExecutionRoleArn
    # (GetPersistentAppUIPresignedURL) is that action's condition key elasticmapreduce:ExecutionRoleArn.
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        role = p.get("ExecutionRoleArn")
        context: dict[str, ContextValue] = {"elasticmapreduce:ExecutionRoleArn": role} if role else {}
        return [Authorization(action, cluster_arn(lookups, "*"), context)]

    return row


for _name in ("DescribePersistentAppUI", "GetPersistentAppUIPresignedURL"):
    operation("emr", _name)(_persistent_app_ui_row(f"elasticmapreduce:{_name}"))


_no_resource("emr", "elasticmapreduce", "ListClusters", "DescribeSecurityConfiguration", "ListSecurityConfigurations")
# Finalize prices a transient cluster's spot instances (Service Authorization Reference: no resource types).
_no_resource("ec2", "ec2", "DescribeSpotPriceHistory")


# --------------------------------------------------------------------------------------- EMR Serverless, on EKS


def application_arn(lookups: Lookups, application_id: str) -> str:
    return _arn(lookups, "emr-serverless", f"/applications/{application_id}")


def serverless_job_run_arn(lookups: Lookups, application_id: str, job_run_id: str) -> str:
    return f"{application_arn(lookups, application_id)}/jobruns/{job_run_id}"


@operation("emr-serverless", "StartJobRun")
def _serverless_start(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [
        Authorization(
            "emr-serverless:StartJobRun", application_arn(lookups, p["applicationId"]), tag_context(p.get("tags"))
        ),
        pass_role(p["executionRoleArn"], "emr-serverless.amazonaws.com"),
    ]


def _serverless_job_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        return [Authorization(action, serverless_job_run_arn(lookups, p["applicationId"], p["jobRunId"]))]

    return row


def _serverless_app_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        return [Authorization(action, application_arn(lookups, p["applicationId"]))]

    return row


for _name in ("GetJobRun", "CancelJobRun", "GetDashboardForJobRun", "ListJobRunAttempts"):
    operation("emr-serverless", _name)(_serverless_job_row(f"emr-serverless:{_name}"))
for _name in ("ListJobRuns", "GetApplication", "StartApplication", "StopApplication"):
    operation("emr-serverless", _name)(_serverless_app_row(f"emr-serverless:{_name}"))


def virtual_cluster_arn(lookups: Lookups, virtual_cluster_id: str) -> str:
    return _arn(lookups, "emr-containers", f"/virtualclusters/{virtual_cluster_id}")


@operation("emr-containers", "StartJobRun")
def _containers_start(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    context = tag_context(p.get("tags")) | {"emr-containers:ExecutionRoleArn": p.get("executionRoleArn")}
    return [Authorization("emr-containers:StartJobRun", virtual_cluster_arn(lookups, p["virtualClusterId"]), context)]


def _containers_job_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        arn = f"{virtual_cluster_arn(lookups, p['virtualClusterId'])}/jobruns/{p['id']}"
        return [Authorization(action, arn)]

    return row


for _name in ("DescribeJobRun", "CancelJobRun"):
    operation("emr-containers", _name)(_containers_job_row(f"emr-containers:{_name}"))


@operation("emr-containers", "ListJobRuns")
def _containers_list(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("emr-containers:ListJobRuns", virtual_cluster_arn(lookups, p["virtualClusterId"]))]


@operation("emr-containers", "DescribeVirtualCluster")
def _containers_describe_vc(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("emr-containers:DescribeVirtualCluster", virtual_cluster_arn(lookups, p["id"]))]


# ---------------------------------------------------------------------------------------------------- CloudWatch


def alarm_arn(lookups: Lookups, name: str) -> str:
    return _arn(lookups, "cloudwatch", f"alarm:{name}")


@operation("cloudwatch", "PutMetricAlarm")
def _cw_put_alarm(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    arn = alarm_arn(lookups, p["AlarmName"])
    out = [Authorization("cloudwatch:PutMetricAlarm", arn, tag_context(p.get("Tags")))]
    if p.get("Tags"):
        out.append(Authorization("cloudwatch:TagResource", arn, tag_context(p.get("Tags"))))
    return out


@operation("cloudwatch", "DeleteAlarms")
def _cw_delete(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("cloudwatch:DeleteAlarms", alarm_arn(lookups, n)) for n in p.get("AlarmNames", [])]


@operation("cloudwatch", "DescribeAlarms")
def _cw_describe(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    if p.get("AlarmNames"):
        return [Authorization("cloudwatch:DescribeAlarms", alarm_arn(lookups, n)) for n in p["AlarmNames"]]
    # A listing: CloudWatch returns the metric alarms the caller may describe (composite ones only with "*",
    # CloudWatch API reference, DescribeAlarms). The twin authorizes it against the name prefix as a wildcard
    # (`alarm:<prefix>*`, `alarm:*` without one): a grant covering every name with that prefix allows it.
    return [Authorization("cloudwatch:DescribeAlarms", alarm_arn(lookups, f"{p.get('AlarmNamePrefix') or ''}*"))]


@operation("cloudwatch", "SetAlarmState")
def _cw_set_state(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("cloudwatch:SetAlarmState", alarm_arn(lookups, p["AlarmName"]))]


_no_resource("cloudwatch", "cloudwatch", "PutMetricData", "GetMetricData", "GetMetricStatistics", "ListMetrics")


# ------------------------------------------------------------------------------------- Lambda, EventBridge, STS


_FUNCTION = re.compile(r"^(?:arn:aws[\w-]*:lambda:[^:]+:\d{12}:function:)?([\w-]+)(?::([\w$-]+))?$")


def function_arn(lookups: Lookups, name: str, qualifier: str | None = None) -> str:
    """A function's ARN from a name, partial or full ARN (with its qualifier, if any)."""
    match = _FUNCTION.match(name)
    if not match:
        return name
    base = _arn(lookups, "lambda", f"function:{match.group(1)}")
    qualifier = qualifier or match.group(2)
    return f"{base}:{qualifier}" if qualifier else base


@operation("lambda", "Invoke", "InvokeAsync")
def _lambda_invoke(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    return [Authorization("lambda:InvokeFunction", function_arn(lookups, p["FunctionName"], p.get("Qualifier")))]


@operation("events", "PutEvents")
def _events_put(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    out = []
    for entry in p.get("Entries", []):
        bus = entry.get("EventBusName") or "default"
        arn = bus if bus.startswith("arn:") else _arn(lookups, "events", f"event-bus/{bus}")
        context = {"events:source": entry.get("Source"), "events:detail-type": entry.get("DetailType")}
        out.append(Authorization("events:PutEvents", arn, context))
    return out


def rule_arn(lookups: Lookups, name: str) -> str:
    return _arn(lookups, "events", f"rule/{name}")


def _rule_row(action: str) -> Row:
    def row(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
        return [Authorization(action, rule_arn(lookups, p.get("Name") or p["Rule"]))]

    return row


for _name in ("PutRule", "PutTargets", "DescribeRule"):
    operation("events", _name)(_rule_row(f"events:{_name}"))


@operation("sts", "GetCallerIdentity")
def _sts_identity(_p: Mapping[str, Any], _: Lookups) -> list[Authorization]:
    return []  # no permission is required to call GetCallerIdentity (STS API reference)


# ---------------------------------------------------------------------------------------------- SSM Parameter Store


def _parameter(lookups: Lookups, name: str) -> str:
    """`arn:aws:ssm:<region>:<account>:parameter/<name without its leading slash or selector>`."""
    return _arn(lookups, "ssm", f"parameter/{name.lstrip('/').partition(':')[0]}")


@operation("ssm", "GetParameter")
def _ssm_get(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    name = str(p["Name"])  # a name (with an optional `:<version or label>` selector) or the parameter's ARN
    return [Authorization("ssm:GetParameter", name if name.startswith("arn:") else _parameter(lookups, name))]


@operation("ssm", "GetParametersByPath")
def _ssm_by_path(p: Mapping[str, Any], lookups: Lookups) -> list[Authorization]:
    # Authorized against the requested path, not the parameters returned (Systems Manager user guide, "How
    # Parameter Store authorizes parameter retrieval"); ssm:Recursive is the request's condition key.
    context: dict[str, ContextValue] = {"ssm:Recursive": "Recursive"} if p.get("Recursive") else {}
    return [Authorization("ssm:GetParametersByPath", _parameter(lookups, str(p["Path"])), context)]
