"""What every pipeline workflow shares, whatever its runtime: the state machine with its log group
and role, and the grants for the prepare function, the ledger, `_SUCCESS`, `_metrics.json` and SNS."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.loader import output_prefix
from config.model import Pipeline
from stacks.nag import suppress
from stacks.naming import LEDGER_PREFIX, MANIFESTS_PREFIX, input_prefix, state_machine_log_group, state_machine_name
from stacks.platform import AutopilotPlatform
from stacks.storage import AutopilotStorage


def asl_string(value: str) -> str:
    """Escape `value` for substitution inside a JSON string literal of the ASL."""
    return json.dumps(value)[1:-1]


class PipelineWorkflow(Construct):
    """Base of the per-runtime pipeline constructs.

    - State machine `<prefix>-<pipeline>` (Standard, X-Ray, logs ALL without execution data,
      top-level TimeoutSeconds `run_timeout_minutes`), its role trusted by Step Functions in this account only.
    - The role gets exactly the actions of the ASL's tasks (tests derive them from the ASL).
    """

    state_machine: sfn.StateMachine
    definition: dict[str, Any]  # the ASL as deployed (before substitutions)

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        pipeline: Pipeline,
        prefix: str,
        storage: AutopilotStorage,
        platform: AutopilotPlatform,
    ) -> None:
        super().__init__(scope, construct_id)
        self.name = name
        self.pipeline = pipeline
        self.storage = storage
        self.platform = platform
        self.input_prefix = input_prefix(name, pipeline.trigger.prefix if pipeline.trigger else None)
        self.output_prefix = output_prefix(name, pipeline)
        self.state_machine_name = state_machine_name(prefix, name)
        self.log_group_name = state_machine_log_group(prefix, name)
        self.role = iam.Role(
            self,
            "WorkflowRole",
            assumed_by=iam.ServicePrincipal(
                "states.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description=f"EMR Autopilot workflow of pipeline {name}",
        )

    def common_substitutions(self) -> dict[str, str]:
        """Substitutions every workflow's ASL uses."""
        storage = self.storage
        return {
            "Partition": Aws.PARTITION,
            "PipelineName": self.name,
            "PrepareFunctionArn": self.platform.prepare.function_arn,
            "AdmissionFunctionArn": self.platform.admission.function.function_arn,
            "AdmissionJson": asl_string(self.platform.admission.settings_json(self.name)),
            "LandingBucket": storage.landing.bucket_name,
            "InputPrefix": asl_string(self.input_prefix),
            "ArtifactsBucket": storage.artifacts.bucket_name,
            "OutputsBucket": storage.outputs.bucket_name,
            "OutputPrefix": asl_string(self.output_prefix),
            "LogsBucket": storage.logs.bucket_name,
            "NotificationTopicArn": self.platform.topic.topic_arn,
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
        """Prepare, the run slot (admission), the ledger, `_SUCCESS`, `_metrics.json` and the failure notification."""
        storage, role = self.storage, self.role
        self.platform.prepare.grant_invoke(role)
        self.platform.admission.function.grant_invoke(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="Ledger",
                actions=["s3:PutObject"],
                resources=[
                    storage.outputs.arn_for_objects(f"{LEDGER_PREFIX}{self.name}/*"),
                    storage.outputs.arn_for_objects(f"{self.output_prefix}/run_id=*/_SUCCESS"),
                ],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="JobMetrics",
                actions=["s3:GetObject"],
                resources=[storage.outputs.arn_for_objects(f"{self.output_prefix}/run_id=*/_metrics.json")],
            )
        )
        self.platform.topic.grant_publish(role)

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
) -> list[iam.PolicyStatement]:
    """What a job's compute role may touch: read its inputs, code and manifests; write its outputs and logs."""
    read = [
        storage.landing.arn_for_objects(f"{input_prefix}*"),
        *[storage.artifacts.arn_for_objects(f"{p}*") for p in jobs_prefixes],
        storage.artifacts.arn_for_objects(f"{MANIFESTS_PREFIX}{name}/*"),
    ]
    statements = [iam.PolicyStatement(actions=["s3:GetObject"], resources=read)]
    for bucket, prefixes in (
        (storage.landing, [f"{input_prefix}*"]),
        (storage.outputs, [f"{output_prefix}/*", output_prefix]),
    ):
        statements.append(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": prefixes}},
            )
        )
    statements.append(
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            resources=[storage.outputs.arn_for_objects(f"{output_prefix}/*")],
        )
    )
    statements.append(
        iam.PolicyStatement(actions=["s3:PutObject"], resources=[storage.logs.arn_for_objects(f"{logs_prefix}*")])
    )
    return statements


def load_definition(path: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result
