"""Guardrails: the guardrail function and its four rules (execution ended badly, the sweeper's
schedule, EMR and StopExecution CloudTrail calls), and optionally the CloudTrail trail two of them
rely on."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from constructs import Construct

from autopilot_common.ledger import ledger_prefix
from config.ec2 import Ec2Runtime
from config.eks import EksRuntime
from config.model import AppConfig
from stacks.arns import (
    SHARED_ROLE_MAX_PREFIXES,
    alarms_named,
    default_event_bus_arn,
    deployment_executions,
    format_arn,
    ledger_statements,
    role_arn,
    state_machine_arn,
    virtual_cluster_arn,
)
from stacks.ec2_pipeline import Ec2Pipeline
from stacks.eks_pipeline import EksPipeline
from stacks.nag import suppress
from stacks.naming import TAG_DEPLOYMENT, TAG_PIPELINE, DeploymentNames
from stacks.pipeline_settings import grant_pipeline_settings
from stacks.platform import IDEMPOTENCY_ACTIONS, AutopilotPlatform
from stacks.rules import api_call_rule, service_event_rule
from stacks.serverless_pipeline import ServerlessPipeline
from stacks.storage import AutopilotStorage
from stacks.workflow import DeploymentProps, PipelineWorkflow

ENDED_STATUSES = ["ABORTED", "TIMED_OUT", "FAILED"]
# A step's end answers the task token its RunStep waits on (autopilot_common.step_notices).
ENDED_STEP_STATES = ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"]
CLOUDTRAIL_EMR_CALLS = ["RunJobFlow", "TerminateJobFlows", "CancelSteps"]
# The sweeper's default for a pipeline without `limits.max_cluster_lifetime_minutes`.
LIFETIME_GRACE_MINUTES = 15


def guardrail_section(workflow: PipelineWorkflow) -> dict[str, object]:
    """The `guardrail` section of a pipeline's settings parameter: PipelineRef's fields that differ from its
    defaults or always matter (lambdas/guardrail/guardrail_settings.py; the state machine's ARN is
    `STATE_MACHINE_ARN_PREFIX` + the pipeline's name). Application and virtual cluster ids are tokens of the
    platform stack, imported by the pipeline's stack."""
    pipeline = workflow.pipeline
    runtime = pipeline.runtime
    ref: dict[str, object] = {
        "runtime": "emr-ec2" if isinstance(runtime, Ec2Runtime) else "emr-eks" if isinstance(runtime, EksRuntime)
        else "emr-serverless",
        "transient": not (isinstance(runtime, Ec2Runtime) and not runtime.transient),
        "max_cluster_lifetime_minutes": pipeline.limits.max_cluster_lifetime_minutes
        or pipeline.run_timeout_minutes + LIFETIME_GRACE_MINUTES,
    }  # fmt: skip
    if isinstance(workflow, ServerlessPipeline):
        ref["application_id"] = workflow.application.application_id
        ref["architecture"] = workflow.application.architecture
    if isinstance(workflow, EksPipeline):
        ref["virtual_cluster_id"] = workflow.virtual_cluster_id
    return ref


class AutopilotGuardrails(Construct):
    """The guardrail function (`lambdas/guardrail`) and its rules.

    - "Step Functions Execution Status Change" ABORTED / TIMED_OUT / FAILED of this deployment's state
      machines -> cleanup (terminate / cancel, delete alarms, release the slot, ledger, notify).
    - `rate(sweeper_interval_minutes)` -> the orphan sweeper.
    - "AWS API Call via CloudTrail" for EMR RunJobFlow / TerminateJobFlows / CancelSteps without an
      error -> auto-termination for unmanaged clusters, CANCELLED runs.
    - "AWS API Call via CloudTrail" for Step Functions StopExecution -> `aborted_by` in the ABORTED entry.
    - "EMR Step Status Change" COMPLETED / FAILED / CANCELLED / INTERRUPTED (when a pipeline runs on EMR on EC2)
      -> the task token of the run's RunStep is answered (the sweeper answers those whose event was lost).
    Every target retries for 2 hours and then lands in the platform's dead-letter queue.
    """

    def __init__(self, scope: Construct, construct_id: str, props: DeploymentProps) -> None:
        super().__init__(scope, construct_id)
        config, prefix, storage = props.config, props.prefix, props.storage
        platform, pipelines = props.platform, props.pipelines
        stack = Stack.of(self)
        guardrails = config.guardrails
        self.function = platform.functions.function(
            self,
            "guardrail",
            description="EMR Autopilot: cleanup after aborted/timed-out/failed runs, orphan sweeper, CloudTrail "
            "reactions",
            environment={
                "DEPLOYMENT": prefix,
                "OUTPUTS_BUCKET": storage.outputs_ref.name,
                "TOPIC_ARN": platform.topic.topic_arn,
                "CLAIMS_TABLE": platform.idempotency_table.table_name,
                "STATE_MACHINE_ARN_PREFIX": state_machine_arn(stack, f"{prefix}-"),
                "UNMANAGED_CLUSTERS": json.dumps(guardrails.unmanaged_clusters.model_dump()),
                "SERVERLESS_IDLE_STOP_MINUTES": str(guardrails.serverless_idle_stop_minutes),
            },
            timeout=Duration.minutes(5),
        )
        function = self.function
        assert function.role is not None
        # Calls by the deployment's roles are the app's own (the workflows, finalize, this function): never "someone
        # else". Every one of them is named `<deployment>-...`: the workflows' by stacks.naming.workflow_role_name,
        # the functions' by CloudFormation (`<stack name>-<logical id>-<suffix>`, and every stack's name starts with
        # the deployment's). One prefix, whatever the number of pipelines (Lambda allows 4 KB of environment).
        function.add_environment("APP_ROLE_PREFIX", role_arn(stack, f"{prefix}-"))
        platform.admission.grant_release(function)
        grant_pipeline_settings(function, prefix, list_all=True)  # the sweeper lists every pipeline
        self._grant(stack, prefix, storage, platform, pipelines)
        platform.fail_async_to_dead_letters(function)

        target = targets.LambdaFunction(
            function,
            dead_letter_queue=platform.dead_letters,
            retry_attempts=20,
            max_event_age=Duration.hours(2),
        )
        self.ended_rule = service_event_rule(
            self,
            "ExecutionEnded",
            description="EMR Autopilot: a run ended ABORTED/TIMED_OUT/FAILED -> cleanup",
            source="aws.states",
            detail_type="Step Functions Execution Status Change",
            detail={
                "status": ENDED_STATUSES,
                # Every state machine of the deployment, by name prefix: one pattern for any number of pipelines.
                "stateMachineArn": [{"prefix": state_machine_arn(stack, f"{prefix}-")}],
            },
            target=target,
        )
        self.sweeper_rule = events.Rule(
            self,
            "Sweeper",
            description="EMR Autopilot: orphan sweeper tick",
            schedule=events.Schedule.rate(Duration.minutes(guardrails.sweeper_interval_minutes)),
            targets=[target],
        )
        self.cloudtrail_rule = api_call_rule(
            self,
            "EmrApiCalls",
            description="EMR Autopilot: EMR API calls seen by CloudTrail -> unmanaged clusters, cancelled runs",
            service="elasticmapreduce",
            event_names=CLOUDTRAIL_EMR_CALLS,
            target=target,
        )
        self.stop_rule = api_call_rule(
            self,
            "ExecutionStopped",
            description="EMR Autopilot: StopExecution seen by CloudTrail -> who aborted the run",
            service="states",
            event_names=["StopExecution"],
            target=target,
        )
        self.step_rule: events.Rule | None = None
        if any(isinstance(w, Ec2Pipeline) for w in pipelines.values()):
            # EventBridge cannot match the cluster's tags: steps of other clusters find no token and are ignored.
            self.step_rule = service_event_rule(
                self,
                "StepEnded",
                description="EMR Autopilot: an EMR step ended -> answer the task token its run waits on",
                source="aws.emr",
                detail_type="EMR Step Status Change",
                detail={"state": ENDED_STEP_STATES},
                target=target,
            )
        self.trail: cloudtrail.Trail | None = None
        if guardrails.trail.create:
            self.trail = self._trail(prefix, config, storage)

    def _grant(
        self,
        stack: Stack,
        prefix: str,
        storage: AutopilotStorage,
        platform: AutopilotPlatform,
        pipelines: Mapping[str, PipelineWorkflow],
    ) -> None:
        function = self.function
        any_cluster = format_arn(stack, service="elasticmapreduce", resource="cluster", resource_name="*")
        statements = [
            # ListClusters supports no resource-level permissions.
            iam.PolicyStatement(actions=["elasticmapreduce:ListClusters"], resources=["*"]),
            # Reading any cluster (tags decide whether it is ours) and capping unmanaged ones.
            iam.PolicyStatement(
                actions=[
                    "elasticmapreduce:DescribeCluster",
                    "elasticmapreduce:DescribeStep",
                    "elasticmapreduce:GetAutoTerminationPolicy",
                    "elasticmapreduce:PutAutoTerminationPolicy",
                ],
                resources=[any_cluster],
            ),
            # Stopping compute only on this deployment's clusters, and pricing what an aborted run's cluster used.
            iam.PolicyStatement(
                actions=[
                    "elasticmapreduce:TerminateJobFlows",
                    "elasticmapreduce:ListSteps",
                    "elasticmapreduce:CancelSteps",
                    "elasticmapreduce:ListInstances",
                    "elasticmapreduce:ListInstanceFleets",
                    "elasticmapreduce:ListInstanceGroups",
                ],
                resources=[any_cluster],
                conditions={"StringEquals": {f"aws:ResourceTag/{TAG_DEPLOYMENT}": prefix}},
            ),
            # Spot prices of an aborted run's instances: the Service Authorization Reference lists no resource type
            # for DescribeSpotPriceHistory, so only `*` can allow it (as for the finalize function).
            iam.PolicyStatement(actions=["ec2:DescribeSpotPriceHistory"], resources=["*"]),
            # The run event of a run the cleanup ended (its workflow never published one): the default bus only
            # (Service Authorization Reference, Amazon EventBridge: PutEvents, resource type event-bus).
            iam.PolicyStatement(actions=["events:PutEvents"], resources=[default_event_bus_arn(stack)]),
            # Answering a RunStep's task token when its step ended (autopilot_common.step_notices): the Service
            # Authorization Reference lists no resource type for SendTaskSuccess/SendTaskFailure (the token names
            # the task), so only `*` can allow them.
            iam.PolicyStatement(actions=["states:SendTaskSuccess", "states:SendTaskFailure"], resources=["*"]),
            iam.PolicyStatement(
                actions=["states:DescribeExecution"],
                resources=deployment_executions(stack, prefix),
            ),
            *ledger_statements(storage, [ledger_prefix()]),
            # Finding and deleting only scaling alarms (metric alarms: DescribeAlarms needs `*` only for composites).
            iam.PolicyStatement(
                actions=["cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
                resources=[alarms_named(stack, f"{prefix}-scaling-")],
            ),
        ]
        scopes: set[str] = set()  # pipelines sharing a cluster or application share its statement: build it once
        for workflow in pipelines.values():
            if isinstance(workflow, Ec2Pipeline) and workflow.runtime.existing_cluster is not None:
                # A long-running cluster never carries this deployment's tag: cancelling an aborted run's steps
                # there needs the cluster's own scope (its id, or its tag), as the pipeline's finalize has it.
                resource, conditions = workflow.existing_cluster_scope(stack)
                scope = json.dumps([resource, conditions])
                if scope not in scopes:
                    scopes.add(scope)
                    statements.append(
                        iam.PolicyStatement(
                            actions=["elasticmapreduce:ListSteps", "elasticmapreduce:CancelSteps"],
                            resources=[resource],
                            conditions=conditions,
                        )
                    )
            if isinstance(workflow, ServerlessPipeline) and workflow.application.arn not in scopes:
                app_arn = workflow.application.arn
                scopes.add(app_arn)
                statements.append(
                    iam.PolicyStatement(
                        actions=[
                            "emr-serverless:GetApplication",
                            "emr-serverless:StopApplication",
                            "emr-serverless:ListJobRuns",
                            "emr-serverless:GetJobRun",
                            "emr-serverless:CancelJobRun",
                        ],
                        resources=[app_arn, f"{app_arn}/jobruns/*"],
                    )
                )
        statements.extend(self._job_run_statements(stack, prefix, pipelines))
        for statement in statements:
            function.add_to_role_policy(statement)
        platform.topic.grant_publish(function)
        platform.idempotency_table.grant(function, *IDEMPOTENCY_ACTIONS)
        suppress(
            function,
            "AwsSolutions-IAM5",
            "ListClusters supports no resource-level permissions; cluster ARNs are unknown until "
            "launch (terminate/cancel are conditioned on this deployment's tag); ledger keys and this deployment's "
            "executions, job runs and scaling alarms are matched by prefix; past 10 EMR-on-EKS virtual clusters, "
            "they are matched by the deployment's tag.",
            [
                "Resource::*",
                "regex:/^Resource::arn:[^:]+:elasticmapreduce:.*:cluster\\/\\*$/g",
                "regex:/^Resource::arn:[^:]+:states:.*:\\*$/g",
                "regex:/^Resource::arn:[^:]+:cloudwatch:.*-scaling-\\*$/g",
                "regex:/^Resource::.*\\/_runs\\/\\*$/g",
                "regex:/^Resource::.*\\/jobruns\\/\\*$/g",
                "regex:/^Resource::arn:[^:]+:emr-containers:.*:\\/virtualclusters\\/\\*$/g",
            ],
        )

    @staticmethod
    def _job_run_statements(
        stack: Stack, prefix: str, pipelines: Mapping[str, PipelineWorkflow]
    ) -> list[iam.PolicyStatement]:
        """Listing and cancelling the EMR-on-EKS pipelines' job runs: each virtual cluster by its ARN while there are
        at most SHARED_ROLE_MAX_PREFIXES; beyond, by tag (the virtual clusters carry the deployment's tag, the job
        runs the pipeline's), so this role's policy does not grow with the pipelines. The Service Authorization
        Reference lists aws:ResourceTag for the virtualCluster and jobRun resource types of these actions."""
        actions = ["emr-containers:ListJobRuns", "emr-containers:DescribeJobRun", "emr-containers:CancelJobRun"]
        clusters = sorted({w.virtual_cluster_id for w in pipelines.values() if isinstance(w, EksPipeline)}, key=str)
        if len(clusters) <= SHARED_ROLE_MAX_PREFIXES:
            return [
                iam.PolicyStatement(actions=actions, resources=[arn, f"{arn}/jobruns/*"])
                for arn in (virtual_cluster_arn(stack, c) for c in clusters)
            ]
        return [
            iam.PolicyStatement(
                actions=["emr-containers:ListJobRuns"],
                resources=[virtual_cluster_arn(stack, "*")],
                conditions={"StringEquals": {f"aws:ResourceTag/{TAG_DEPLOYMENT}": prefix}},
            ),
            iam.PolicyStatement(
                actions=["emr-containers:DescribeJobRun", "emr-containers:CancelJobRun"],
                resources=[f"{virtual_cluster_arn(stack, '*')}/jobruns/*"],
                conditions={"StringLike": {f"aws:ResourceTag/{TAG_PIPELINE}": "*"}},
            ),
        ]

    def _trail(self, prefix: str, config: AppConfig, storage: AutopilotStorage) -> cloudtrail.Trail:
        """A multi-region trail with management events, plus S3 data events of the landing bucket when a
        pipeline's trigger listens to CloudTrail. Log files go to the logs bucket under `cloudtrail/`."""
        trail = cloudtrail.Trail(
            self,
            "Trail",
            trail_name=DeploymentNames(prefix).trail,
            bucket=storage.logs,
            s3_key_prefix="cloudtrail",
            is_multi_region_trail=True,
            include_global_service_events=True,
            enable_file_validation=True,
            management_events=cloudtrail.ReadWriteType.WRITE_ONLY,
        )
        if any(p.arrivals is not None and "cloudtrail" in p.arrivals.sources for p in config.pipelines.values()):
            trail.add_s3_event_selector(
                [cloudtrail.S3EventSelector(bucket=storage.landing)],
                read_write_type=cloudtrail.ReadWriteType.WRITE_ONLY,
                include_management_events=False,
            )
        return trail
