"""The deployment's stack: composes storage, platform, one workflow per pipeline, and triggers."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from aws_cdk import aws_iam as iam
from constructs import Construct, IConstruct

from config.ec2 import Ec2Runtime
from config.eks import EksRuntime
from config.loader import output_prefix
from config.model import AppConfig, ServerlessApplication
from stacks.alarm_scaling import AutopilotScaling
from stacks.arns import executions_of
from stacks.dashboard import OperationsDashboard
from stacks.ec2_pipeline import Ec2Pipeline
from stacks.eks_pipeline import EksPipeline
from stacks.guardrails import AutopilotGuardrails
from stacks.nag import suppress
from stacks.naming import TAG_DEPLOYMENT, TAG_PIPELINE, deployment_name, serverless_application_name
from stacks.platform import AutopilotPlatform
from stacks.schedules import PipelineClock
from stacks.serverless_pipeline import ServerlessApplicationConstruct, ServerlessPipeline
from stacks.storage import AutopilotStorage
from stacks.triggers import PipelineTrigger
from stacks.workflow import DeploymentProps, PipelineProps, PipelineWorkflow


class AutopilotStack(Stack):
    """Everything one environment (`config/<env>.yaml`) deploys, in one stack named `<project>-<env>`."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, env_name: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = deployment_name(config.project, env_name)
        Tags.of(self).add(TAG_DEPLOYMENT, prefix)
        for key, value in config.tags.items():
            Tags.of(self).add(key, value)

        self.storage = AutopilotStorage(self, "Storage", storage=config.storage)
        self.platform = AutopilotPlatform(self, "Platform", config=config, prefix=prefix, storage=self.storage)

        shared = {
            name: ServerlessApplicationConstruct(
                self, f"App-{name}", name=serverless_application_name(prefix, name), spec=spec
            )
            for name, spec in config.serverless_applications.items()
        }
        self.pipelines: dict[str, PipelineWorkflow] = {}
        self.triggers: dict[str, PipelineTrigger] = {}
        self.clocks: dict[str, PipelineClock] = {}
        for name, pipeline in config.pipelines.items():
            runtime = pipeline.runtime
            workflow: PipelineWorkflow
            upstream_outputs = {u: output_prefix(u, config.pipelines[u]) for u in pipeline.upstreams}
            props = PipelineProps(name, pipeline, prefix, self.storage, self.platform, tuple(upstream_outputs.values()))
            if isinstance(runtime, Ec2Runtime):
                workflow = Ec2Pipeline(self, f"Pipeline-{name}", props, extra_tags=dict(config.tags))
            elif isinstance(runtime, EksRuntime):
                workflow = EksPipeline(self, f"Pipeline-{name}", props)
            else:
                if isinstance(runtime.application, ServerlessApplication):
                    application = ServerlessApplicationConstruct(
                        self, f"App-{name}", name=serverless_application_name(prefix, name), spec=runtime.application
                    )
                    Tags.of(application).add(TAG_PIPELINE, name)
                else:
                    application = shared[runtime.application]
                workflow = ServerlessPipeline(self, f"Pipeline-{name}", props, application=application)
            workflow.state_machine.grant_start_execution(self.platform.router)
            # Whether a run an arrival rejoins has started (DescribeExecution of its own executions only).
            self.platform.router.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["states:DescribeExecution"], resources=executions_of(self, [workflow.state_machine_name])
                )
            )
            Tags.of(workflow).add(TAG_PIPELINE, name)
            self.pipelines[name] = workflow
            CfnOutput(self, f"StateMachine-{name}", value=workflow.state_machine.state_machine_arn)
            if pipeline.trigger is not None:
                trigger = PipelineTrigger(
                    self,
                    f"Trigger-{name}",
                    name=name,
                    prefix=prefix,
                    trigger=pipeline.trigger,
                    state_machine_arn=workflow.state_machine.state_machine_arn,
                    storage=self.storage,
                    platform=self.platform,
                    upstream_output_prefixes=upstream_outputs,
                )
                Tags.of(trigger).add(TAG_PIPELINE, name)
                self.triggers[name] = trigger
                if pipeline.trigger.schedule is not None or pipeline.trigger.expect is not None:
                    clock = PipelineClock(
                        self,
                        f"Clock-{name}",
                        name=name,
                        prefix=prefix,
                        trigger=pipeline.trigger,
                        state_machine_arn=workflow.state_machine.state_machine_arn,
                        queue=trigger.queue,
                        landing_bucket=self.storage.landing.bucket_name,
                        platform=self.platform,
                    )
                    Tags.of(clock).add(TAG_PIPELINE, name)
                    self.clocks[name] = clock

        deployment = DeploymentProps(config, prefix, self.storage, self.platform, self.pipelines)
        self.guardrails = AutopilotGuardrails(self, "Guardrails", deployment)
        self.scaling = AutopilotScaling(self, "Scaling", deployment)
        self.dashboard = OperationsDashboard(self, "Operations", prefix=prefix, pipelines=self.pipelines)
        suppress(
            self.platform.dead_letters,
            "AwsSolutions-SQS3",
            "This is the dead-letter queue of the trigger queues.",
        )
        self._suppress_cdk_singletons()
        for key, value in {
            "LandingBucket": self.storage.landing.bucket_name,
            "OutputsBucket": self.storage.outputs.bucket_name,
            "ArtifactsBucket": self.storage.artifacts.bucket_name,
            "LogsBucket": self.storage.logs.bucket_name,
            "NotificationTopic": self.platform.topic.topic_arn,
        }.items():
            CfnOutput(self, key, value=value)

    def _suppress_cdk_singletons(self) -> None:
        """cdk-nag findings on CDK's own singleton functions (their code and roles are CDK's, not ours)."""
        for child in self.node.children:
            if child.node.id.startswith("Custom::CDKBucketDeployment"):
                self._suppress_cdk_singleton(child)
            if child.node.id.startswith("BucketNotificationsHandler"):
                suppress(
                    child,
                    "AwsSolutions-IAM4",
                    "CDK's bucket-notification handler (turns on EventBridge for the landing bucket) uses "
                    "AWSLambdaBasicExecutionRole.",
                    ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
                )

    @staticmethod
    def _suppress_cdk_singleton(child: IConstruct) -> None:
        suppress(
            child,
            "AwsSolutions-IAM4",
            "CDK BucketDeployment's provider uses AWSLambdaBasicExecutionRole.",
            ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
        )
        suppress(child, "AwsSolutions-IAM5", "CDK BucketDeployment copies asset objects into the artifacts bucket.")
        suppress(child, "AwsSolutions-L1", "CDK BucketDeployment pins its own provider runtime.")
