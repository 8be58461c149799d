"""ARNs and grants several constructs build the same way (guardrails, scaler, workflows)."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from aws_cdk import ArnFormat, Aws, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.storage import AutopilotStorage

# The deploy-time pseudo parameters: one token each for the whole app (`aws_cdk.Aws` asks the jsii bridge per read).
ACCOUNT_ID: Final[str] = Aws.ACCOUNT_ID
PARTITION: Final[str] = Aws.PARTITION

# A deployment-wide role (router, prepare) lists each pipeline's object prefix while there are at most this many;
# beyond, one grant on the area they share (this deployment's own landing bucket, its ledger `_runs/`), so the role's
# policy does not grow with the pipelines (IAM: 10,240 characters of inline policy per role, 10 managed policies).
SHARED_ROLE_MAX_PREFIXES = 10


def bounded_prefixes(prefixes: Sequence[str], area: str = "") -> list[str]:
    """`prefixes` (sorted, deduplicated), or `[area]` when there are more than SHARED_ROLE_MAX_PREFIXES."""
    unique = sorted(set(prefixes))
    return unique if len(unique) <= SHARED_ROLE_MAX_PREFIXES else [area]


@cache
def service_principal(service: str, *, this_account: bool = False) -> iam.ServicePrincipal:
    """`iam.ServicePrincipal(service)`, with `this_account` only on this account's behalf (the `aws:SourceAccount`
    confused-deputy condition), built once: a principal is a value its roles only read, and each build is a jsii
    round trip."""
    if this_account:
        return iam.ServicePrincipal(service, conditions={"StringEquals": {"aws:SourceAccount": ACCOUNT_ID}})
    return iam.ServicePrincipal(service)


_FORMATTED: weakref.WeakKeyDictionary[Stack, dict[str, str]] = weakref.WeakKeyDictionary()


def stack_of(scope: Construct) -> Stack:
    """`Stack.of(scope)`, without a jsii round trip when `scope` is itself the stack (a pipeline's constructs are)."""
    return scope if isinstance(scope, Stack) else Stack.of(scope)


def format_arn(stack: Stack, **components: Any) -> str:
    """`stack.format_arn(**components)`, asked of CDK once per stack and components: every pipeline of a stack
    formats the same few ARNs (the default bus, the `.sync` rules, any cluster), each a jsii round trip."""
    key = json.dumps(components, sort_keys=True, default=str)
    formatted = _FORMATTED.setdefault(stack, {})
    if key not in formatted:
        formatted[key] = stack.format_arn(**components)
    return formatted[key]


def executions_of(stack: Stack, state_machine_names: Iterable[str]) -> list[str]:
    """`arn:...:execution:<state machine>:*` for each state machine."""
    return [
        format_arn(
            stack,
            service="states",
            resource="execution",
            resource_name=f"{name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        for name in state_machine_names
    ]


def default_event_bus_arn(scope: Construct) -> str:
    """`arn:<partition>:events:<region>:<account>:event-bus/default`: the account's default bus, where every run
    publishes its event (autopilot_common.run_events)."""
    return format_arn(stack_of(scope), service="events", resource="event-bus", resource_name="default")


def alarms_named(stack: Stack, name_prefix: str) -> str:
    """`arn:...:alarm:<name_prefix>*`: the CloudWatch alarms whose names start with `name_prefix`."""
    return format_arn(
        stack,
        service="cloudwatch",
        resource="alarm",
        resource_name=f"{name_prefix}*",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


@dataclass(frozen=True)
class Allow:
    """An Allow statement without a Sid, as plain data (`grant` adds it)."""

    actions: Sequence[str]
    resources: Sequence[str]
    conditions: Mapping[str, Mapping[str, Any]] | None = None


def grant(grantee: iam.IGrantable, *allows: Allow) -> None:
    """Add each of `allows` to `grantee`'s policy: the statement `iam.PolicyStatement` and `add_to_policy` would add,
    in one jsii round trip (`iam.Grant.add_to_principal`) instead of two."""
    for allow in allows:
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=list(allow.actions),
            resource_arns=list(allow.resources),
            conditions=allow.conditions,
        )


def ledger_statements(storage: AutopilotStorage, key_prefixes: Iterable[str]) -> list[iam.PolicyStatement]:
    """Read and write ledger entries under `key_prefixes` (e.g. `_runs/`), and list them: without ListBucket a
    missing entry reads as 403 instead of 404."""
    prefixes = [f"{p}*" for p in key_prefixes]
    return [
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject"], resources=[storage.outputs_ref.objects(p) for p in prefixes]
        ),
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[storage.outputs_ref.arn],
            conditions={"StringLike": {"s3:prefix": prefixes}},
        ),
    ]


# The platform stack reaches the pipeline stacks' resources by name only (never by a reference, which would make
# the platform depend on them): state machines, executions, workflow roles and arrival queues are named
# `<deployment>-<pipeline>[-...]` (stacks.naming), so one pattern covers every pipeline, present and future.


def state_machine_arn(stack: Stack, name: str) -> str:
    """`arn:...:stateMachine:<name>`."""
    return format_arn(
        stack, service="states", resource="stateMachine", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
    )


def deployment_state_machines(stack: Stack, deployment: str) -> str:
    """`arn:...:stateMachine:<deployment>-*`: every pipeline's state machine (stacks.naming.state_machine_name)."""
    return state_machine_arn(stack, f"{deployment}-*")


def deployment_executions(stack: Stack, deployment: str) -> list[str]:
    """`arn:...:execution:<deployment>-*:*`: every execution of the deployment's state machines."""
    return executions_of(stack, [f"{deployment}-*"])


def role_arn(stack: Stack, name: str) -> str:
    """`arn:...:iam::<account>:role/<name>` (IAM ARNs have no region)."""
    return format_arn(stack, service="iam", region="", resource="role", resource_name=name)


def deployment_arrival_queues(stack: Stack, deployment: str) -> str:
    """`arn:...:sqs:...:<deployment>-*-arrivals`: every pipeline's arrivals queue (naming.arrivals_queue_name)."""
    return format_arn(stack, service="sqs", resource=f"{deployment}-*-arrivals", arn_format=ArnFormat.NO_RESOURCE_NAME)


def virtual_cluster_arn(stack: Stack, virtual_cluster_id: str) -> str:
    """`arn:...:emr-containers:<region>:<account>:/virtualclusters/<id>`."""
    return format_arn(stack, service="emr-containers", resource="/virtualclusters", resource_name=virtual_cluster_id)


def parameter_arn(stack: Stack, name: str) -> str:
    """`arn:...:ssm:<region>:<account>:parameter/<name without its leading slash>` (Service Authorization Reference,
    AWS Systems Manager: resource type `parameter`)."""
    return format_arn(stack, service="ssm", resource="parameter", resource_name=name.lstrip("/"))
