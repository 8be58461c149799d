"""One pipeline on EMR Serverless: its application (or a shared one), job role and workflow."""

from __future__ import annotations

import json

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from config.loader import output_prefix
from config.model import Pipeline, ServerlessApplication, ServerlessRuntime
from stacks.nag import suppress
from stacks.naming import JOBS_PREFIX, LEDGER_PREFIX, MANIFESTS_PREFIX, STATEMACHINES_DIR, input_prefix
from stacks.platform import AutopilotPlatform
from stacks.storage import AutopilotStorage

SERVERLESS_ASL = STATEMACHINES_DIR / "emr_serverless_job.asl.json"
# The managed rule Step Functions creates in the account to receive EMR Serverless job events (.sync).
SERVERLESS_SYNC_RULE = "StepFunctionsGetEventsForEMRServerlessJobRule"


def asl_string(value: str) -> str:
    """Escape `value` for substitution inside a JSON string literal of the ASL."""
    return json.dumps(value)[1:-1]


class ServerlessApplicationConstruct(Construct):
    """An EMR Serverless Spark application with auto-start/stop and a capacity ceiling."""

    def __init__(self, scope: Construct, construct_id: str, *, name: str, spec: ServerlessApplication) -> None:
        super().__init__(scope, construct_id)
        initial = [
            emrs.CfnApplication.InitialCapacityConfigKeyValuePairProperty(
                key=key,
                value=emrs.CfnApplication.InitialCapacityConfigProperty(
                    worker_count=group.workers,
                    worker_configuration=emrs.CfnApplication.WorkerConfigurationProperty(
                        cpu=group.cpu, memory=group.memory, disk=group.disk
                    ),
                ),
            )
            for key, group in (("Driver", spec.initial_capacity.driver), ("Executor", spec.initial_capacity.executor))
            if group is not None
        ]
        self.resource = emrs.CfnApplication(
            self,
            "Application",
            name=name,
            release_label=spec.release_label,
            type="Spark",
            architecture=spec.architecture,
            auto_start_configuration=emrs.CfnApplication.AutoStartConfigurationProperty(enabled=spec.auto_start),
            auto_stop_configuration=emrs.CfnApplication.AutoStopConfigurationProperty(
                enabled=spec.auto_stop_idle_minutes is not None,
                idle_timeout_minutes=spec.auto_stop_idle_minutes,
            ),
            initial_capacity=initial or None,
            maximum_capacity=emrs.CfnApplication.MaximumAllowedResourcesProperty(
                cpu=spec.maximum_capacity.cpu, memory=spec.maximum_capacity.memory, disk=spec.maximum_capacity.disk
            ),
            network_configuration=emrs.CfnApplication.NetworkConfigurationProperty(
                subnet_ids=spec.network.subnet_ids, security_group_ids=spec.network.security_group_ids
            )
            if spec.network
            else None,
        )
        self.application_id = self.resource.attr_application_id
        self.arn = self.resource.attr_arn


class ServerlessPipeline(Construct):
    """The workflow of one EMR Serverless pipeline.

    - Job execution role: reads only the pipeline's input prefix, `jobs/` and its own manifests;
      writes only its output prefix and its log prefix.
    - State machine `<prefix>-<pipeline>` from `statemachines/emr_serverless_job.asl.json`
      (Standard, X-Ray, logs ALL without execution data, timeout `run_timeout_minutes`).
    - State machine role: exactly the actions of the ASL's tasks (tests derive them from the ASL).
    """

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
        application: ServerlessApplicationConstruct,
    ) -> None:
        super().__init__(scope, construct_id)
        runtime = pipeline.runtime
        assert isinstance(runtime, ServerlessRuntime)
        self.name = name
        self.application = application
        self.input_prefix = input_prefix(name, pipeline.trigger.prefix if pipeline.trigger else None)
        self.output_prefix = output_prefix(name, pipeline)
        stack = Stack.of(self)

        self.job_role = self._job_role(name, storage)
        self.state_machine_name = f"{prefix}-{name}"
        definition_file = SERVERLESS_ASL
        log_group = logs.LogGroup(
            self,
            "WorkflowLogs",
            log_group_name=f"/aws/vendedlogs/states/{self.state_machine_name}",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "WorkflowRole",
            assumed_by=iam.ServicePrincipal(
                "states.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description=f"EMR Autopilot workflow of pipeline {name}",
        )
        self.state_machine = sfn.StateMachine(
            self,
            "Workflow",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(definition_file)),
            definition_substitutions={
                "Partition": Aws.PARTITION,
                "PipelineName": name,
                "PrepareFunctionArn": platform.prepare.function_arn,
                "LandingBucket": storage.landing.bucket_name,
                "InputPrefix": asl_string(self.input_prefix),
                "ArtifactsBucket": storage.artifacts.bucket_name,
                "OutputsBucket": storage.outputs.bucket_name,
                "OutputPrefix": asl_string(self.output_prefix),
                "LogsBucket": storage.logs.bucket_name,
                "EntryPoint": f"s3://{storage.artifacts.bucket_name}/{JOBS_PREFIX}{runtime.entry_point}",
                "JobArgumentsJson": asl_string(json.dumps(runtime.arguments)),
                "SparkSubmitParameters": asl_string(runtime.spark_submit_parameters),
                "ExecutionTimeoutMinutes": str(runtime.execution_timeout_minutes),
                "ApplicationId": application.application_id,
                "JobRoleArn": self.job_role.role_arn,
                "NotificationTopicArn": platform.topic.topic_arn,
            },
            role=self.role,
            timeout=Duration.minutes(pipeline.run_timeout_minutes),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        )
        self._grant_workflow(name, storage, platform, stack)

    def _job_role(self, name: str, storage: AutopilotStorage) -> iam.Role:
        role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal(
                "emr-serverless.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description=f"EMR Autopilot job execution role of pipeline {name}",
        )
        read_objects = [
            storage.landing.arn_for_objects(f"{self.input_prefix}*"),
            storage.artifacts.arn_for_objects(f"{JOBS_PREFIX}*"),
            storage.artifacts.arn_for_objects(f"{MANIFESTS_PREFIX}{name}/*"),
        ]
        role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=read_objects))
        for bucket, prefixes in (
            (storage.landing, [f"{self.input_prefix}*"]),
            (storage.outputs, [f"{self.output_prefix}/*", self.output_prefix]),
        ):
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": prefixes}},
                )
            )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                resources=[storage.outputs.arn_for_objects(f"{self.output_prefix}/*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"],
                resources=[storage.logs.arn_for_objects(f"emr-serverless/{name}/*")],
            )
        )
        suppress(
            role,
            "AwsSolutions-IAM5",
            "Object wildcards are limited to this pipeline's own input, output, manifest, log and job-code prefixes.",
            ["regex:/^Resource::.*\\/\\*$/g"],
        )
        return role

    def _grant_workflow(self, name: str, storage: AutopilotStorage, platform: AutopilotPlatform, stack: Stack) -> None:
        role = self.role
        platform.prepare.grant_invoke(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="Ledger",
                actions=["s3:PutObject"],
                resources=[
                    storage.outputs.arn_for_objects(f"{LEDGER_PREFIX}{name}/*"),
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
        app_arn = self.application.arn
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="StartJobRun", actions=["emr-serverless:StartJobRun"], resources=[app_arn])
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ManageJobRuns",
                actions=["emr-serverless:GetJobRun", "emr-serverless:CancelJobRun", "emr-serverless:TagResource"],
                resources=[f"{app_arn}/jobruns/*"],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="PassJobRole",
                actions=["iam:PassRole"],
                resources=[self.job_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}},
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="SyncRule",
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[stack.format_arn(service="events", resource="rule", resource_name=SERVERLESS_SYNC_RULE)],
            )
        )
        platform.topic.grant_publish(role)
        suppress(
            role,
            "AwsSolutions-IAM5",
            "Wildcards: ledger keys and _SUCCESS/_metrics of this pipeline only; job runs of its application "
            "(ids are unknown until run time); the Lambda's version qualifier; X-Ray and log delivery APIs "
            "which support no resource-level permissions.",
            [
                "regex:/^Resource::.*\\/\\*$/g",
                "regex:/^Resource::.*\\/run_id=\\*\\/.*$/g",
                "regex:/^Resource::<.*Function.*Arn>:\\*$/g",
                "Resource::*",
            ],
        )
        self.state_machine.node.add_dependency(role)
