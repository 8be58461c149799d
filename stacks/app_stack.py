"""The deployment's stacks: the platform stack (storage, shared functions, guardrails, ...) and the pipeline stacks
(each a bounded, stable share of the pipelines: workflow, trigger, schedules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct, IConstruct

from autopilot_common.pipeline_settings import CAPS, GUARDRAIL, SCALING
from config.ec2 import Ec2Runtime
from config.eks import EksRuntime
from config.loader import output_prefix
from config.model import AppConfig, ServerlessApplication, ServerlessRuntime
from stacks.admission import caps_section
from stacks.alarm_scaling import AutopilotScaling, scaling_settings
from stacks.dashboard import OperationsDashboard
from stacks.ec2_pipeline import Ec2Pipeline
from stacks.eks_pipeline import EksPipeline, EksVirtualCluster
from stacks.guardrails import AutopilotGuardrails, guardrail_section
from stacks.nag import suppress
from stacks.naming import TAG_DEPLOYMENT, TAG_PIPELINE, deployment_name, serverless_application_name
from stacks.pipeline_settings import PipelineSettingsParameter
from stacks.platform import AutopilotPlatform
from stacks.schedules import PipelineClock
from stacks.serverless_pipeline import ServerlessApplicationConstruct, ServerlessPipeline
from stacks.storage import AutopilotStorage
from stacks.triggers import PipelineTrigger
from stacks.workflow import DeploymentProps, PipelineProps, PipelineWorkflow


def _tag_deployment(stack: Stack, prefix: str, config: AppConfig) -> None:
    Tags.of(stack).add(TAG_DEPLOYMENT, prefix)
    for key, value in config.tags.items():
        Tags.of(stack).add(key, value)


class PipelinesStack(Stack):
    """`<project>-<env>-pipelines-<n>`: the pipelines `stacks.naming.pipeline_stack_index` puts in bucket n, each
    whole (workflow, roles, trigger queue and rules, schedules, its state machine's output, and its settings
    parameter, which the platform stack's shared functions read). It refers only to the
    platform stack (CloudFormation exports), so `cdk deploy` of it touches only its own pipelines."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        prefix: str,
        platform_stack: AutopilotStack,
        pipelines: list[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        _tag_deployment(self, prefix, config)
        storage, platform = platform_stack.storage, platform_stack.platform
        self.pipelines: dict[str, PipelineWorkflow] = {}
        self.triggers: dict[str, PipelineTrigger] = {}
        self.clocks: dict[str, PipelineClock] = {}
        for name in pipelines:
            pipeline = config.pipelines[name]
            runtime = pipeline.runtime
            workflow: PipelineWorkflow
            upstream_outputs = {u: output_prefix(u, config.pipelines[u]) for u in pipeline.upstreams}
            props = PipelineProps(name, pipeline, prefix, storage, platform, tuple(upstream_outputs.values()))
            if isinstance(runtime, Ec2Runtime):
                workflow = Ec2Pipeline(self, f"Pipeline-{name}", props, extra_tags=dict(config.tags))
            elif isinstance(runtime, EksRuntime):
                cluster = platform_stack.virtual_clusters.get(name)
                workflow = EksPipeline(
                    self, f"Pipeline-{name}", props, virtual_cluster_id=cluster.virtual_cluster_id if cluster else None
                )
            else:
                workflow = ServerlessPipeline(
                    self, f"Pipeline-{name}", props, application=platform_stack.applications[name]
                )
            Tags.of(workflow).add(TAG_PIPELINE, name)
            self.pipelines[name] = workflow
            machine_arn = workflow.state_machine.state_machine_arn
            CfnOutput(self, f"StateMachine-{name}", value=machine_arn)
            settings = PipelineSettingsParameter(
                self,
                f"Settings-{name}",
                prefix=prefix,
                pipeline=name,
                sections={
                    GUARDRAIL: guardrail_section(workflow),
                    CAPS: caps_section(pipeline),
                    SCALING: scaling_settings(runtime) if isinstance(runtime, Ec2Runtime) else None,
                },
            )
            Tags.of(settings).add(TAG_PIPELINE, name)
            if pipeline.trigger is None:
                continue
            trigger = PipelineTrigger(
                self,
                f"Trigger-{name}",
                name=name,
                prefix=prefix,
                trigger=pipeline.trigger,
                state_machine_arn=machine_arn,
                storage=storage,
                platform=platform,
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
                    state_machine_arn=machine_arn,
                    queue=trigger.queue,
                    landing_bucket=storage.landing_ref.name,
                    platform=platform,
                )
                Tags.of(clock).add(TAG_PIPELINE, name)
                self.clocks[name] = clock
        # No `suppress_cdk_singletons` here: CDK's singletons come with buckets and bucket deployments, which live in
        # the platform stack only (and looking for them reads every child's id through the jsii bridge).


class AutopilotStack(Stack):
    """The platform stack `<project>-<env>`: storage, the shared functions, tables and topic, admission, the EMR
    Serverless applications and created EMR virtual clusters (their generated ids are the guardrail's), guardrails,
    the scaler, the dashboard, and the outputs the CLI reads. The pipelines live in `PipelinesStack`s; this stack
    reaches their resources by name only (stacks.arns), never by reference."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, env_name: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = deployment_name(config.project, env_name)
        self.prefix = prefix
        _tag_deployment(self, prefix, config)

        self.storage = AutopilotStorage(self, "Storage", storage=config.storage)
        self.platform = AutopilotPlatform(self, "Platform", config=config, prefix=prefix, storage=self.storage)

        shared = {
            name: ServerlessApplicationConstruct(
                self, f"App-{name}", name=serverless_application_name(prefix, name), spec=spec
            )
            for name, spec in config.serverless_applications.items()
        }
        # Each serverless pipeline's application (its own inline one, or a shared one), by pipeline name.
        self.applications: dict[str, ServerlessApplicationConstruct] = {}
        self.virtual_clusters: dict[str, EksVirtualCluster] = {}
        for name, pipeline in config.pipelines.items():
            runtime = pipeline.runtime
            if isinstance(runtime, EksRuntime) and runtime.virtual_cluster_id is None:
                cluster = EksVirtualCluster(self, f"VirtualCluster-{name}", prefix=prefix, name=name, runtime=runtime)
                Tags.of(cluster).add(TAG_PIPELINE, name)
                self.virtual_clusters[name] = cluster
            elif isinstance(runtime, ServerlessRuntime):
                if isinstance(runtime.application, ServerlessApplication):
                    application = ServerlessApplicationConstruct(
                        self, f"App-{name}", name=serverless_application_name(prefix, name), spec=runtime.application
                    )
                    Tags.of(application).add(TAG_PIPELINE, name)
                    self.applications[name] = application
                else:
                    self.applications[name] = shared[runtime.application]

        self.dashboard = OperationsDashboard(self, "Operations", prefix=prefix)
        suppress(
            self.platform.dead_letters,
            "AwsSolutions-SQS3",
            "This is the dead-letter queue of the trigger queues.",
        )
        for key, value in {
            "LandingBucket": self.storage.landing_ref.name,
            "OutputsBucket": self.storage.outputs_ref.name,
            "ArtifactsBucket": self.storage.artifacts_ref.name,
            "LogsBucket": self.storage.logs_ref.name,
            "NotificationTopic": self.platform.topic.topic_arn,
        }.items():
            CfnOutput(self, key, value=value)

    def add_deployment_wide(self, config: AppConfig, pipelines: Mapping[str, PipelineWorkflow]) -> None:
        """Guardrails and alarm scaling, once every pipeline stack is built: they read the pipelines' config and
        names (never their tokens), so this stack still depends on none of them."""
        self.pipelines = dict(pipelines)  # every pipeline's workflow, by name (they live in the pipeline stacks)
        deployment = DeploymentProps(config, self.prefix, self.storage, self.platform, pipelines)
        self.guardrails = AutopilotGuardrails(self, "Guardrails", deployment)
        self.scaling = AutopilotScaling(self, "Scaling", deployment)
        suppress_cdk_singletons(self)


def suppress_cdk_singletons(stack: Stack) -> None:
    """cdk-nag findings on CDK's own singleton functions (their code and roles are CDK's, not ours)."""
    for child in stack.node.children:
        if child.node.id.startswith("Custom::CDKBucketDeployment"):
            _suppress_cdk_singleton(child)
        if child.node.id.startswith("BucketNotificationsHandler"):
            suppress(
                child,
                "AwsSolutions-IAM4",
                "CDK's bucket-notification handler (turns on EventBridge for the landing bucket) uses "
                "AWSLambdaBasicExecutionRole.",
                ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
            )


def _suppress_cdk_singleton(child: IConstruct) -> None:
    suppress(
        child,
        "AwsSolutions-IAM4",
        "CDK BucketDeployment's provider uses AWSLambdaBasicExecutionRole.",
        ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
    )
    suppress(child, "AwsSolutions-IAM5", "CDK BucketDeployment copies asset objects into the artifacts bucket.")
    suppress(child, "AwsSolutions-L1", "CDK BucketDeployment pins its own provider runtime.")
