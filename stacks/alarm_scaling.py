"""Alarm-driven task-fleet scaling: the alarm specs a transient workflow creates per cluster, and the
scaler function with its "CloudWatch Alarm State Change" rule (only when a pipeline uses `scaling.mode:
alarms`)."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from autopilot_common.ledger import ledger_prefix
from config.ec2 import Ec2Runtime, InstanceFleets
from config.scaling import AlarmScaling, scaling_section
from stacks.arns import alarms_named, bounded_prefixes, executions_of, format_arn, ledger_statements
from stacks.nag import suppress
from stacks.naming import TAG_DEPLOYMENT
from stacks.pipeline_settings import grant_pipeline_settings
from stacks.platform import IDEMPOTENCY_ACTIONS
from stacks.rules import service_event_rule
from stacks.workflow import DeploymentProps

EMR_NAMESPACE = "AWS/ElasticMapReduce"
# The scaler reads a cluster and its task fleet/group, and resizes it; nothing else.
SCALER_EMR_ACTIONS = [
    "elasticmapreduce:DescribeCluster",
    "elasticmapreduce:ListInstanceFleets",
    "elasticmapreduce:ListInstanceGroups",
    "elasticmapreduce:ModifyInstanceFleet",
    "elasticmapreduce:ModifyInstanceGroups",
]


def alarm_prefix(deployment: str, pipeline: str) -> str:
    """Scaling alarms are named `<deployment>-scaling-<pipeline>-<cluster id>-<out|in>-<rule>`."""
    return f"{deployment}-scaling-{pipeline}-"


def alarm_scaling(runtime: Ec2Runtime) -> AlarmScaling | None:
    scaling = runtime.scaling
    return scaling if isinstance(scaling, AlarmScaling) and runtime.transient else None


def alarm_specs(pipeline: str, runtime: Ec2Runtime) -> list[dict[str, Any]]:
    """The workflow's `PlanScalingAlarms` result: one PutMetricAlarm spec per rule (empty without alarms)."""
    policy = alarm_scaling(runtime)
    if policy is None:
        return []
    unit = "capacity units" if isinstance(runtime.instances, InstanceFleets) else "instances"
    specs = []
    for direction, rule in policy.rules():
        step = policy.step_units if direction == "out" else policy.scale_in_step
        bound = f"up to {policy.max_units}" if direction == "out" else f"down to {policy.min_units}"
        specs.append(
            {
                "rule": f"{direction}-{rule.name}",
                "description": f"EMR Autopilot {pipeline}: scale the task {unit} {direction} by {step} ({bound}) "
                f"when {rule.describe()} for {rule.datapoints} of {rule.evaluation_periods} periods of "
                f"{rule.period_seconds} s ({rule.statistic})",
                "metric": rule.metric,
                "statistic": rule.statistic,
                "period": rule.period_seconds,
                "evaluation_periods": rule.evaluation_periods,
                "datapoints_to_alarm": rule.datapoints,
                "threshold": rule.threshold,
                "comparison_operator": rule.comparison_operator(),
            }
        )
    return specs


def scaling_settings(runtime: Ec2Runtime) -> dict[str, Any] | None:
    """The `scaling` section of a pipeline's settings parameter, or None without alarm scaling."""
    policy = alarm_scaling(runtime)
    if policy is None:
        return None
    return scaling_section(policy, "fleets" if isinstance(runtime.instances, InstanceFleets) else "groups")


def grant_alarm_lifecycle(role: iam.Role, stack: Stack, deployment: str, pipeline: str) -> None:
    """What a transient workflow needs to create, find and delete its clusters' scaling alarms."""
    alarms = alarms_named(stack, alarm_prefix(deployment, pipeline))
    # DescribeAlarms scoped to alarm ARNs returns metric alarms only (composite ones need `*`): all we make.
    role.add_to_policy(
        iam.PolicyStatement(
            sid="ScalingAlarms",
            actions=[
                "cloudwatch:PutMetricAlarm",
                "cloudwatch:TagResource",
                "cloudwatch:DescribeAlarms",
                "cloudwatch:DeleteAlarms",
            ],
            resources=[alarms],
        )
    )


class AutopilotScaling(Construct):
    """The scaler function (`lambdas/scaler`) behind one EventBridge rule: "CloudWatch Alarm State Change"
    to ALARM of an alarm named `<deployment>-scaling-*`. Targets retry for 10 minutes (a scaling signal
    older than that is stale: the alarm re-fires while the condition lasts), then the dead-letter queue.
    `function` is None when no pipeline scales from alarms.
    """

    def __init__(self, scope: Construct, construct_id: str, props: DeploymentProps) -> None:
        super().__init__(scope, construct_id)
        prefix, storage, platform, pipelines = props.prefix, props.storage, props.platform, props.pipelines
        self.function: lambda_.Function | None = None
        self.rule: events.Rule | None = None
        scaled = {
            name: (workflow, policy)
            for name, workflow in pipelines.items()
            if isinstance(workflow.pipeline.runtime, Ec2Runtime)
            and (policy := alarm_scaling(workflow.pipeline.runtime)) is not None
        }
        if not scaled:
            return
        stack = Stack.of(self)
        function = platform.functions.function(
            self,
            "scaler",
            description="EMR Autopilot: one bounded task-fleet step per scaling alarm (cooldown, no resize overlap)",
            environment={
                "DEPLOYMENT": prefix,
                "OUTPUTS_BUCKET": storage.outputs_ref.name,
                "STATE_TABLE": platform.idempotency_table.table_name,
            },
            timeout=Duration.seconds(60),
        )
        self.function = function
        grant_pipeline_settings(function, prefix)  # a pipeline's policy: the `scaling` section of its parameter
        platform.fail_async_to_dead_letters(function)
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=SCALER_EMR_ACTIONS,
                resources=[format_arn(stack, service="elasticmapreduce", resource="cluster", resource_name="*")],
                conditions={"StringEquals": {f"aws:ResourceTag/{TAG_DEPLOYMENT}": prefix}},
            )
        )
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution"],
                resources=executions_of(
                    stack, bounded_prefixes([w.state_machine_name for w, _ in scaled.values()], f"{prefix}-*")
                ),
            )
        )
        # Past SHARED_ROLE_MAX_PREFIXES scaled pipelines, the deployment's executions, ledger and scaling alarms as a
        # whole: this shared role's policy does not grow with the pipelines.
        for statement in ledger_statements(
            storage, bounded_prefixes([ledger_prefix(n) for n in scaled], ledger_prefix())
        ):
            function.add_to_role_policy(statement)
        # After acting (or a skip that clears by itself) the scaler sets the alarm back to OK, so CloudWatch's
        # next evaluation fires it again while the condition lasts: one step per period, not per crossing.
        function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:SetAlarmState"],
                resources=[
                    alarms_named(stack, p)
                    for p in bounded_prefixes([alarm_prefix(prefix, n) for n in scaled], f"{prefix}-scaling-")
                ],
            )
        )
        platform.idempotency_table.grant(function, *IDEMPOTENCY_ACTIONS)
        # Finalize copies each cluster's scaling actions into the run's final ledger entry.
        if platform.finalize is not None:
            platform.finalize.add_environment("STATE_TABLE", platform.idempotency_table.table_name)
            platform.idempotency_table.grant(platform.finalize, "dynamodb:GetItem")
        suppress(
            function,
            "AwsSolutions-IAM5",
            "Cluster ids are unknown until launch (every EMR action is conditioned on this deployment's tag); "
            "executions of the scaled pipelines, their ledger keys and their scaling alarms are matched by prefix; "
            "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions.",
            [
                "Resource::*",
                "regex:/^Resource::arn:[^:]+:elasticmapreduce:.*:cluster\\/\\*$/g",
                "regex:/^Resource::arn:[^:]+:states:.*:\\*$/g",
                "regex:/^Resource::.*\\/_runs\\/.*\\/\\*$/g",
                "regex:/^Resource::.*\\/_runs\\/\\*$/g",
                "regex:/^Resource::arn:[^:]+:cloudwatch:.*:alarm:.*-scaling-.*\\*$/g",
            ],
        )
        self.rule = service_event_rule(
            self,
            "ScalingAlarm",
            description="EMR Autopilot: a scaling alarm went to ALARM -> one task-fleet step",
            source="aws.cloudwatch",
            detail_type="CloudWatch Alarm State Change",
            detail={"alarmName": [{"prefix": f"{prefix}-scaling-"}], "state": {"value": ["ALARM"]}},
            target=targets.LambdaFunction(
                function,
                dead_letter_queue=platform.dead_letters,
                retry_attempts=8,
                max_event_age=Duration.minutes(10),
            ),
        )
