"""ARNs and grants several constructs build the same way (guardrails, scaler, workflows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.storage import AutopilotStorage

# A deployment-wide role (router, prepare) lists each pipeline's object prefix while there are at most this many;
# beyond, one grant on the area they share (this deployment's own landing bucket, its ledger `_runs/`), so the role's
# policy does not grow with the pipelines (IAM: 10,240 characters of inline policy per role, 10 managed policies).
SHARED_ROLE_MAX_PREFIXES = 10


def bounded_prefixes(prefixes: Sequence[str], area: str = "") -> list[str]:
    """`prefixes` (sorted, deduplicated), or `[area]` when there are more than SHARED_ROLE_MAX_PREFIXES."""
    unique = sorted(set(prefixes))
    return unique if len(unique) <= SHARED_ROLE_MAX_PREFIXES else [area]


def executions_of(stack: Stack, state_machine_names: Iterable[str]) -> list[str]:
    """`arn:...:execution:<state machine>:*` for each state machine."""
    return [
        stack.format_arn(
            service="states", resource="execution", resource_name=f"{name}:*", arn_format=ArnFormat.COLON_RESOURCE_NAME
        )
        for name in state_machine_names
    ]


def default_event_bus_arn(scope: Construct) -> str:
    """`arn:<partition>:events:<region>:<account>:event-bus/default`: the account's default bus, where every run
    publishes its event (autopilot_common.run_events)."""
    return Stack.of(scope).format_arn(service="events", resource="event-bus", resource_name="default")


def alarms_named(stack: Stack, name_prefix: str) -> str:
    """`arn:...:alarm:<name_prefix>*`: the CloudWatch alarms whose names start with `name_prefix`."""
    return stack.format_arn(
        service="cloudwatch",
        resource="alarm",
        resource_name=f"{name_prefix}*",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def ledger_statements(storage: AutopilotStorage, key_prefixes: Iterable[str]) -> list[iam.PolicyStatement]:
    """Read and write ledger entries under `key_prefixes` (e.g. `_runs/`), and list them: without ListBucket a
    missing entry reads as 403 instead of 404."""
    prefixes = [f"{p}*" for p in key_prefixes]
    return [
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject"], resources=[storage.outputs.arn_for_objects(p) for p in prefixes]
        ),
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[storage.outputs.bucket_arn],
            conditions={"StringLike": {"s3:prefix": prefixes}},
        ),
    ]


# The platform stack reaches the pipeline stacks' resources by name only (never by a reference, which would make
# the platform depend on them): state machines, executions, workflow roles and arrival queues are named
# `<deployment>-<pipeline>[-...]` (stacks.naming), so one pattern covers every pipeline, present and future.


def state_machine_arn(stack: Stack, name: str) -> str:
    """`arn:...:stateMachine:<name>`."""
    return stack.format_arn(
        service="states", resource="stateMachine", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
    )


def deployment_state_machines(stack: Stack, deployment: str) -> str:
    """`arn:...:stateMachine:<deployment>-*`: every pipeline's state machine (stacks.naming.state_machine_name)."""
    return state_machine_arn(stack, f"{deployment}-*")


def deployment_executions(stack: Stack, deployment: str) -> list[str]:
    """`arn:...:execution:<deployment>-*:*`: every execution of the deployment's state machines."""
    return executions_of(stack, [f"{deployment}-*"])


def role_arn(stack: Stack, name: str) -> str:
    """`arn:...:iam::<account>:role/<name>` (IAM ARNs have no region)."""
    return stack.format_arn(service="iam", region="", resource="role", resource_name=name)


def deployment_arrival_queues(stack: Stack, deployment: str) -> str:
    """`arn:...:sqs:...:<deployment>-*-arrivals`: every pipeline's arrivals queue (naming.arrivals_queue_name)."""
    return stack.format_arn(service="sqs", resource=f"{deployment}-*-arrivals", arn_format=ArnFormat.NO_RESOURCE_NAME)


def virtual_cluster_arn(stack: Stack, virtual_cluster_id: str) -> str:
    """`arn:...:emr-containers:<region>:<account>:/virtualclusters/<id>`."""
    return stack.format_arn(service="emr-containers", resource="/virtualclusters", resource_name=virtual_cluster_id)


def parameter_arn(stack: Stack, name: str) -> str:
    """`arn:...:ssm:<region>:<account>:parameter/<name without its leading slash>` (Service Authorization Reference,
    AWS Systems Manager: resource type `parameter`)."""
    return stack.format_arn(service="ssm", resource="parameter", resource_name=name.lstrip("/"))
