"""The deployment's operations dashboard: runs, scaling, clusters and guardrail findings on one page."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from stacks.arns import state_machine_arn
from stacks.naming import METRICS_NAMESPACE, DeploymentNames

PERIOD = Duration.minutes(5)
COST_PERIOD = Duration.days(1)


def _app_metric(
    service: str, name: str, label: str, statistic: str = "Sum", period: Duration = PERIOD, **dimensions: str
) -> cloudwatch.Metric:
    """A metric a handler emits with Powertools (EMF): namespace EmrAutopilot, dimension `service`."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": f"autopilot-{service}", **dimensions},
        statistic=statistic,
        period=period,
        label=label,
    )


class OperationsDashboard(Construct):
    """CloudWatch dashboard `<deployment>-operations`.

    - Runs started / succeeded / failed / aborted / timed out per pipeline: Step Functions' own
      execution metrics (every runtime, including runs that failed before any Lambda ran).
    - Scaling actions out / in and skipped alarms (the scaler's metrics).
    - Cost per pipeline per day: the sum of `RunCostUsd` (each run's `cost.usd`, list prices; runs whose cost is
      unknown add nothing), from the finalize function and, for runs stopped from outside the workflow (aborted,
      timed out, cancelled), from the guardrail's cleanup.
    - Schedules, deadlines and dependencies: the router's ScheduleFirings and EmptyPartitions (scheduled
      pipelines), DeadlinesMissed (pipelines with `trigger.expect`), UpstreamRunsRecorded and UpstreamFailures
      (pipelines run `after` others).
    - Clusters up (the sweeper's ActiveClusters gauge, once per sweeper interval) and the guardrail's
      findings: orphan clusters and job runs, leaked run slots, alarms left behind, runs cleaned up
      after an abort/timeout, runs cancelled by someone else.
    """

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str):
        super().__init__(scope, construct_id)
        # One SEARCH per widget (a line per pipeline found at view time): the dashboard's size does not grow with
        # the pipelines, and this (platform) stack never refers to the pipeline stacks' state machines.
        # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/search-expression-syntax.html
        machines_arn = state_machine_arn(Stack.of(self), f"{prefix}-")

        def router(metric: str) -> cloudwatch.MathExpression:
            """The router's `metric`, a line per pipeline that emits it (SEARCH: nothing listed per pipeline)."""
            return cloudwatch.MathExpression(
                expression=f'SEARCH(\'{{{METRICS_NAMESPACE},pipeline,service}} MetricName="{metric}" '
                f"service=\"autopilot-router\"', 'Sum', {int(PERIOD.to_seconds())})",
                label="",
                period=PERIOD,
            )

        def per_pipeline(title: str, metric: str) -> cloudwatch.GraphWidget:
            """One line per pipeline of a Step Functions execution metric (AWS/States, by StateMachineArn)."""
            search = cloudwatch.MathExpression(
                expression=f'SEARCH(\'{{AWS/States,StateMachineArn}} MetricName="{metric}" '
                f"StateMachineArn=\"{machines_arn}\"', 'Sum', 300)",
                label="",
                period=PERIOD,
            )
            return cloudwatch.GraphWidget(title=title, left=[search], stacked=True, width=8)

        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=DeploymentNames(prefix).dashboard,
            default_interval=Duration.hours(24),
            widgets=[
                [
                    cloudwatch.TextWidget(
                        markdown=f"# EMR Autopilot `{prefix}`\nRuns per pipeline (Step Functions executions), "
                        "task-fleet scaling, clusters up and what the guardrails cleaned up. The run ledger "
                        "(`_runs/` in the outputs bucket) has each run's details.",
                        width=24,
                        height=2,
                    )
                ],
                [
                    per_pipeline("Runs started", "ExecutionsStarted"),
                    per_pipeline("Runs succeeded", "ExecutionsSucceeded"),
                    per_pipeline("Runs failed", "ExecutionsFailed"),
                ],
                [
                    per_pipeline("Runs aborted", "ExecutionsAborted"),
                    per_pipeline("Runs timed out", "ExecutionsTimedOut"),
                    cloudwatch.GraphWidget(
                        title="Task-fleet scaling",
                        left=[
                            _app_metric("scaler", "ScalingActions", "scaled out", direction="out"),
                            _app_metric("scaler", "ScalingActions", "scaled in", direction="in"),
                            _app_metric("scaler", "ScalingSkipped", "alarms skipped"),
                        ],
                        width=8,
                    ),
                ],
                [
                    cloudwatch.GraphWidget(
                        title="Run cost per pipeline per day (USD, list prices)",
                        left=[
                            cloudwatch.MathExpression(
                                # finalize's (runs that ended in the workflow) and the guardrail's (runs stopped
                                # from outside: aborted, timed out, cancelled), one series each per pipeline.
                                expression=f'SEARCH(\'{{{METRICS_NAMESPACE},pipeline,service}} MetricName="RunCostUsd" '
                                '(service="autopilot-finalize" OR service="autopilot-guardrail")\', \'Sum\', 86400)',
                                label="",
                                period=COST_PERIOD,
                            )
                        ],
                        view=cloudwatch.GraphWidgetView.BAR,
                        stacked=True,
                        period=COST_PERIOD,
                        width=24,
                    )
                ],
                [
                    cloudwatch.GraphWidget(
                        title="Schedule firings / empty partitions",
                        left=[router("ScheduleFirings"), router("EmptyPartitions")],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Arrival deadlines missed",
                        left=[router("DeadlinesMissed")],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Upstream runs (pipelines run after others)",
                        left=[router("UpstreamRunsRecorded"), router("UpstreamFailures")],
                        width=8,
                    ),
                ],
                [
                    cloudwatch.GraphWidget(
                        title="Clusters up (sweeper gauge)",
                        left=[_app_metric("guardrail", "ActiveClusters", "clusters up", statistic="Maximum")],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Guardrail findings",
                        left=[
                            _app_metric("guardrail", "OrphanClusters", "orphan clusters"),
                            _app_metric("guardrail", "OrphanJobRuns", "orphan job runs"),
                            _app_metric("guardrail", "RunSlotsReleased", "leaked run slots"),
                            _app_metric("guardrail", "OrphanAlarmsDeleted", "alarms left behind"),
                        ],
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Runs ended by others",
                        left=[
                            _app_metric("guardrail", "RunsCleanedUp", "cleaned up after abort/timeout/failure"),
                            _app_metric("guardrail", "RunsCancelledExternally", "cancelled by someone else"),
                            _app_metric("guardrail", "RunsStoppedByHand", "executions stopped by hand"),
                            _app_metric("guardrail", "UnmanagedClustersCapped", "hand-made clusters capped"),
                        ],
                        width=8,
                    ),
                ],
            ],
        )
