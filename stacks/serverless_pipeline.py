"""One pipeline on EMR Serverless: its application (or a shared one), job role and workflow."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import ServerlessApplication, ServerlessRuntime
from stacks.arns import Allow, format_arn, service_principal
from stacks.asl import compose_once
from stacks.naming import JOBS_PREFIX
from stacks.workflow import PipelineProps, PipelineWorkflow, asl_string

# The managed rule Step Functions creates in the account to receive EMR Serverless job events (.sync).
SERVERLESS_SYNC_RULE = "StepFunctionsGetEventsForEMRServerlessJobRule"


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
        self.architecture = spec.architecture


class ServerlessPipeline(PipelineWorkflow):
    """The workflow of one EMR Serverless pipeline.

    - Job execution role: reads only the pipeline's input prefix, `jobs/` and its own manifests;
      writes only its output prefix and its log prefix.
    - State machine composed from `statemachines/fragments/emr_serverless_job.json` (see `PipelineWorkflow`).
    """

    def __init__(
        self, scope: Construct, construct_id: str, props: PipelineProps, *, application: ServerlessApplicationConstruct
    ) -> None:
        super().__init__(scope, construct_id, props)
        name = props.name
        runtime = props.runtime_of(ServerlessRuntime)
        self.runtime = runtime
        self.application = application
        self.job_role = self.job_data_role(
            "JobRole",
            assumed_by=service_principal("emr-serverless.amazonaws.com", this_account=True),
            description=f"EMR Autopilot job execution role of pipeline {name}",
            logs_prefix=f"emr-serverless/{name}/",
        )
        self.job_role_arn = self.job_role.role_arn
        self.build()

    def runtime_definition(self) -> dict[str, Any]:
        # StartJobRun retryPolicy (botocore emr-serverless; BATCH, the default mode): not sent at 1, the
        # service's default, so a pipeline without retries deploys the reviewed snapshot unchanged.
        retry = self.runtime.retry
        policy = {"RetryPolicy": {"MaxAttempts": retry.max_attempts}}
        return compose_once("emr_serverless_job", {"JobRunRetry": policy} if retry.retries else None)

    def runtime_substitutions(self) -> dict[str, str]:
        runtime = self.runtime
        return {
            "EntryPoint": f"s3://{self.storage.artifacts_ref.name}/{JOBS_PREFIX}{runtime.entry_point}",
            "JobArgumentsJson": asl_string(json.dumps(runtime.arguments)),
            "SparkSubmitParameters": asl_string(runtime.spark_submit_parameters),
            "ExecutionTimeoutMinutes": str(runtime.execution_timeout_minutes),
            "MaxAttempts": str(runtime.retry.max_attempts),
            "ApplicationId": self.application.application_id,
            # The application's architecture prices its usage: the app creates the application from this config,
            # so finalize needs no GetApplication call (nor its grant) to learn it.
            "Architecture": self.application.architecture,
            "JobRoleArn": self.job_role_arn,
        }

    def runtime_wildcards(self) -> tuple[str, list[str]]:
        return "job runs of its application (ids are unknown until run time).", []

    def grant_runtime(self) -> None:
        role, stack = self.role, self.stack
        app_arn = self.application.arn
        role.add_to_policy(
            iam.PolicyStatement(sid="StartJobRun", actions=["emr-serverless:StartJobRun"], resources=[app_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ManageJobRuns",
                actions=["emr-serverless:GetJobRun", "emr-serverless:CancelJobRun", "emr-serverless:TagResource"],
                resources=[f"{app_arn}/jobruns/*"],
            )
        )
        # The finalize function reads the run's job run: state, timings and billedResourceUtilization (its cost).
        self.platform.grant_shared(
            self.platform.finalize, Allow(["emr-serverless:GetJobRun"], [f"{app_arn}/jobruns/*"])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PassJobRole",
                actions=["iam:PassRole"],
                resources=[self.job_role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="SyncRule",
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[format_arn(stack, service="events", resource="rule", resource_name=SERVERLESS_SYNC_RULE)],
            )
        )
