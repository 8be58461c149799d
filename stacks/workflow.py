"""What every pipeline workflow shares, whatever its runtime: the state machine with its log group
and role, and the grants for the prepare function, the ledger, `_SUCCESS`, `_metrics.json` and SNS."""

from __future__ import annotations

import hashlib
import json
import tempfile
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct
from jsii import JSIIMeta

from autopilot_common.ledger import ledger_prefix
from config.loader import output_prefix
from config.model import AppConfig, Pipeline
from stacks.arns import PARTITION, Allow, default_event_bus_arn, grant, service_principal, stack_of
from stacks.nag import suppress
from stacks.naming import (
    JOBS_PREFIX,
    MANIFESTS_PREFIX,
    input_prefix,
    state_machine_log_group,
    state_machine_name,
    workflow_role_name,
)
from stacks.platform import AutopilotPlatform
from stacks.storage import AutopilotStorage


def asl_string(value: str) -> str:
    """Escape `value` for substitution inside a JSON string literal of the ASL."""
    return json.dumps(value)[1:-1]


JOB_ROLE_WILDCARDS = (
    "Object wildcards are limited to this pipeline's own input, output, manifest, log and job-code prefixes (and, for "
    "a pipeline run after others, its upstreams' output prefixes, which it reads)."
)


class _AbstractConstructMeta(JSIIMeta, ABCMeta):
    """Lets a construct class have abstract methods (Construct's metaclass is jsii's)."""


R = TypeVar("R")


@dataclass(frozen=True)
class PipelineProps:
    """What every pipeline construct is built from: the pipeline's name and config, the deployment's prefix,
    and the storage and platform constructs it writes to and calls."""

    name: str
    pipeline: Pipeline
    prefix: str
    storage: AutopilotStorage
    platform: AutopilotPlatform
    upstream_outputs: tuple[str, ...] = ()  # `trigger.after`: the output prefixes of its upstreams (its job reads them)

    def runtime_of(self, kind: type[R]) -> R:
        """The pipeline's runtime, which must be a `kind` (the construct for another runtime is a bug)."""
        runtime = self.pipeline.runtime
        if not isinstance(runtime, kind):
            raise TypeError(f"pipeline {self.name}: runtime is {type(runtime).__name__}; expected {kind.__name__}")
        return runtime


@dataclass(frozen=True)
class DeploymentProps:
    """What the deployment-wide constructs (guardrails, alarm scaling) are built from: the config, the prefix,
    storage and platform, and every pipeline's workflow by name."""

    config: AppConfig
    prefix: str
    storage: AutopilotStorage
    platform: AutopilotPlatform
    pipelines: Mapping[str, PipelineWorkflow]


class PipelineWorkflow(Construct, metaclass=_AbstractConstructMeta):
    """Base of the per-runtime pipeline constructs.

    - State machine `<prefix>-<pipeline>` (Standard, X-Ray, logs ALL without execution data,
      top-level TimeoutSeconds `run_timeout_minutes`), its role trusted by Step Functions in this account only.
    - Its ASL is composed from `statemachines/` (`stacks.asl`): the shared skeleton and the runtime's fragment.
    - The role gets exactly the actions of the ASL's tasks (tests derive them from the ASL).

    A subclass creates its runtime's resources, then calls `build()`, which asks it through the abstract
    hooks for its definition, substitutions, grants and the wildcards its grants need.
    """

    state_machine: sfn.StateMachine
    definition: dict[str, Any]  # the ASL as deployed (before substitutions)

    def __init__(self, scope: Construct, construct_id: str, props: PipelineProps) -> None:
        super().__init__(scope, construct_id)
        name, pipeline, prefix = props.name, props.pipeline, props.prefix
        storage, platform = props.storage, props.platform
        self.name = name
        self.deployment = prefix
        self.upstream_outputs = props.upstream_outputs
        self.pipeline = pipeline
        self.storage = storage
        self.platform = platform
        self.stack = stack_of(scope)
        self.input_prefix = input_prefix(name, pipeline.trigger.prefix if pipeline.trigger else None)
        self.output_prefix = output_prefix(name, pipeline)
        self.state_machine_name = state_machine_name(prefix, name)
        self.log_group_name = state_machine_log_group(prefix, name)
        self.role = iam.Role(
            self,
            "WorkflowRole",
            assumed_by=service_principal("states.amazonaws.com", this_account=True),
            role_name=workflow_role_name(prefix, name),  # named: the platform stack's guardrail knows its ARN
            description=f"EMR Autopilot workflow of pipeline {name}",
        )

    # ------------------------------------------------------------------ hooks each runtime implements

    @abstractmethod
    def runtime_definition(self) -> dict[str, Any]:
        """The workflow's ASL before substitutions: `stacks.asl.compose_once(<its workflow>)`, filled from config."""

    @abstractmethod
    def runtime_substitutions(self) -> dict[str, str]:
        """The `${Substitutions}` of the runtime's fragment (beyond `common_substitutions`)."""

    @abstractmethod
    def grant_runtime(self) -> None:
        """Grant the workflow role the runtime's tasks (the bookkeeping grants are the base's)."""

    @abstractmethod
    def runtime_wildcards(self) -> tuple[str, list[str]]:
        """Why the runtime's grants need wildcards, and the cdk-nag `appliesTo` entries they produce."""

    # ------------------------------------------------------------------ the one flow

    def build(self) -> None:
        """The state machine and its grants; called once by the subclass after its runtime resources exist."""
        body = self.definition_body(self.runtime_definition())
        self.state_machine = self.build_state_machine(
            body, {**self.common_substitutions(), **self.runtime_substitutions()}
        )
        self.grant_run_bookkeeping()
        self.grant_runtime()
        reason, applies_to = self.runtime_wildcards()
        self.suppress_workflow_wildcards(reason, applies_to)

    def job_data_role(
        self,
        construct_id: str,
        *,
        assumed_by: iam.IPrincipal,
        description: str,
        logs_prefix: str,
        code_prefixes: Sequence[str] = (JOBS_PREFIX,),
        role_name: str | None = None,
        extra_statements: Sequence[Allow] = (),
        wildcards: tuple[str, list[str]] = (JOB_ROLE_WILDCARDS, ["regex:/^Resource::.*\\/\\*$/g"]),
    ) -> iam.Role:
        """The role a job's compute runs as: `job_data_statements` (plus `extra_statements`), its wildcards
        suppressed with `wildcards` (reason, `appliesTo`)."""
        role = iam.Role(self, construct_id, role_name=role_name, assumed_by=assumed_by, description=description)
        statements = job_data_statements(
            self.storage,
            self.name,
            self.input_prefix,
            self.output_prefix,
            logs_prefix,
            list(code_prefixes),
            upstream_outputs=self.upstream_outputs,
        )
        grant(role, *statements, *extra_statements)
        reason, applies_to = wildcards
        suppress(role, "AwsSolutions-IAM5", reason, applies_to)
        return role

    def common_substitutions(self) -> dict[str, str]:
        """Substitutions every workflow's ASL uses."""
        storage, arns = self.storage, self.platform.arns
        return {
            "Partition": PARTITION,
            "PipelineName": self.name,
            "Deployment": self.deployment,
            "UpstreamOutputsJson": asl_string(json.dumps(list(self.upstream_outputs))),
            "PrepareFunctionArn": arns.prepare,
            "AdmissionFunctionArn": arns.admission,
            "AdmissionJson": asl_string(self.platform.admission.settings_json(self.name)),
            "LandingBucket": storage.landing_ref.name,
            "InputPrefix": asl_string(self.input_prefix),
            "ArtifactsBucket": storage.artifacts_ref.name,
            "OutputsBucket": storage.outputs_ref.name,
            "OutputPrefix": asl_string(self.output_prefix),
            "LogsBucket": storage.logs_ref.name,
            "NotificationTopicArn": arns.topic,
            "FinalizeFunctionArn": arns.finalize,
        }

    def definition_body(self, definition: dict[str, Any]) -> sfn.DefinitionBody:
        """The filled-in ASL as a file asset (DefinitionS3Location), with the run timeout as its top-level
        `TimeoutSeconds`.

        CDK's `timeout` prop only reaches definitions CDK renders itself (`FileDefinitionBody.bind` ignores
        it), so without this a file-based workflow would never time out. A file asset keeps templates small
        and keeps linters from parsing ASL that still holds `${Substitutions}`.
        """
        definition = {**definition, "TimeoutSeconds": self.pipeline.run_timeout_minutes * 60}
        self.definition = definition
        text = json.dumps(definition, indent=2, sort_keys=False) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "emr-autopilot-asl"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.state_machine_name}-{digest}.asl.json"
        if not path.exists():
            path.write_text(text, encoding="utf-8")
        return sfn.DefinitionBody.from_file(str(path))

    def build_state_machine(self, body: sfn.DefinitionBody, substitutions: dict[str, str]) -> sfn.StateMachine:
        log_group = logs.LogGroup(
            self,
            "WorkflowLogs",
            log_group_name=self.log_group_name,
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine = sfn.StateMachine(
            self,
            "Workflow",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=body,
            definition_substitutions=substitutions,
            role=self.role,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        )
        machine.node.add_dependency(self.role)
        return machine

    def grant_run_bookkeeping(self) -> None:
        """Prepare, the run slot (admission), finalize, the ledger, `_SUCCESS`, `_metrics.json` and the
        notifications; finalize reads the pipeline's driver logs (a failed run's notification has their tail)."""
        storage, role, platform = self.storage, self.role, self.platform
        # What `grant_invoke` of each function grants (the function and its versions), in one statement.
        functions = (platform.arns.prepare, platform.arns.admission, platform.arns.finalize)
        grant(role, Allow(["lambda:InvokeFunction"], [arn for f in functions for arn in (f, f"{f}:*")]))
        finalize = platform.finalize
        # prepare's log_uri is <runtime>/<pipeline>/<run>/: the shared finalize role reads <runtime>/, one grant per
        # runtime whatever the number of pipelines, so it does not grow per pipeline.
        logs_prefix = f"{self.pipeline.runtime.type}/"
        platform.grant_shared(
            finalize,
            Allow(["s3:ListBucket"], [storage.logs_ref.arn], {"StringLike": {"s3:prefix": [f"{logs_prefix}*"]}}),
        )
        platform.grant_shared(finalize, Allow(["s3:GetObject"], [storage.logs_ref.objects(f"{logs_prefix}*")]))
        platform.suppress_shared(
            finalize,
            "AwsSolutions-IAM5",
            "Finalize reads the pipelines' driver logs under their runtime's log prefix (object names known at run "
            "time) "
            "and its job runs (ids known at run time).",
            ["regex:/^Resource::.*\\/\\*$/g"],
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="Ledger",
                actions=["s3:PutObject"],
                resources=[
                    storage.outputs_ref.objects(f"{ledger_prefix(self.name)}*"),
                    storage.outputs_ref.objects(f"{self.output_prefix}/run_id=*/_SUCCESS"),
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="JobMetrics",
                actions=["s3:GetObject"],
                resources=[storage.outputs_ref.objects(f"{self.output_prefix}/run_id=*/_metrics.json")],
            )
        )
        self.platform.topic.grant_publish(role)
        # The run's event (PublishRunSucceeded / PublishRunFailed): PutEvents on the default bus only, its resource
        # type `event-bus` (Service Authorization Reference, Amazon EventBridge: PutEvents, resource event-bus*).
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RunEvents", actions=["events:PutEvents"], resources=[default_event_bus_arn(self.stack)]
            )
        )

    def suppress_workflow_wildcards(self, extra_reason: str, extra: list[str]) -> None:
        suppress(
            self.role,
            "AwsSolutions-IAM5",
            "Wildcards: ledger keys and _SUCCESS/_metrics of this pipeline only; the Lambdas' version qualifier; "
            f"X-Ray and log delivery APIs which support no resource-level permissions; {extra_reason}",
            [
                "regex:/^Resource::.*\\/\\*$/g",
                "regex:/^Resource::.*\\/run_id=\\*\\/.*$/g",
                "regex:/^Resource::<.*Function.*Arn>:\\*$/g",
                "Resource::*",
                *extra,
            ],
        )


def job_data_statements(
    storage: AutopilotStorage,
    name: str,
    input_prefix: str,
    output_prefix: str,
    logs_prefix: str,
    jobs_prefixes: list[str],
    *,
    upstream_outputs: Sequence[str] = (),
) -> list[Allow]:
    """What a job's compute role may touch: read its inputs (a pipeline run `after` others: its upstreams' run
    outputs), code and manifests; write its outputs and logs."""
    read = [
        storage.landing_ref.objects(f"{input_prefix}*"),
        *[storage.artifacts_ref.objects(f"{p}*") for p in jobs_prefixes],
        storage.artifacts_ref.objects(f"{MANIFESTS_PREFIX}{name}/*"),
        *[storage.outputs_ref.objects(f"{p}/*") for p in upstream_outputs],
    ]
    return [
        Allow(["s3:GetObject"], read),
        *[
            Allow(["s3:ListBucket"], [bucket.arn], {"StringLike": {"s3:prefix": prefixes}})
            for bucket, prefixes in (
                (storage.landing_ref, [f"{input_prefix}*"]),
                (storage.outputs_ref, [f"{output_prefix}/*", output_prefix]),
            )
        ],
        Allow(
            ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            [storage.outputs_ref.objects(f"{output_prefix}/*")],
        ),
        Allow(["s3:PutObject"], [storage.logs_ref.objects(f"{logs_prefix}*")]),
    ]
