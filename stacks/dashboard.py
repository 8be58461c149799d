"""The deployment's operations dashboard: runs, scaling, clusters and guardrail findings on one page."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from stacks.naming import METRICS_NAMESPACE, DeploymentNames
from stacks.workflow import PipelineWorkflow

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
    - Cost per pipeline per day: the sum of the finalize function's `RunCostUsd` (each run's `cost.usd`, list
      prices; runs whose cost is unknown add nothing).
    - Schedules, deadlines and dependencies: the router's ScheduleFirings and EmptyPartitions (scheduled
      pipelines), DeadlinesMissed (pipelines with `trigger.expect`), UpstreamRunsRecorded and UpstreamFailures
      (pipelines run `after` others).
    - Clusters up (the sweeper's ActiveClusters gauge, once per sweeper interval) and the guardrail's
      findings: orphan clusters and job runs, leaked run slots, alarms left behind, runs cleaned up
      after an abort/timeout, runs cancelled by someone else.
    """

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str, pipelines: Mapping[str, PipelineWorkflow]):
        super().__init__(scope, construct_id)
        machines = {name: w.state_machine for name, w in pipelines.items()}
        clocked = [n for n, w in pipelines.items() if w.pipeline.trigger and w.pipeline.trigger.schedule]
        expecting = [n for n, w in pipelines.items() if w.pipeline.trigger and w.pipeline.trigger.expect]
        downstream = [n for n, w in pipelines.items() if w.pipeline.upstreams]

        def router(name: str, label: str, of: list[str]) -> list[cloudwatch.IMetric]:
            """The router's `name` (dimensions service + pipeline) for each pipeline of `of`."""
            return [_app_metric("router", name, f"{p}: {label}", pipeline=p) for p in of]

        def per_pipeline(title: str, kind: str) -> cloudwatch.GraphWidget:
            """One line per pipeline of a Step Functions execution metric (`metric_<kind>`)."""
            lines: list[cloudwatch.IMetric] = [
                getattr(machine, f"metric_{kind}")(period=PERIOD, statistic="Sum", label=name)
                for name, machine in machines.items()
            ]
            return cloudwatch.GraphWidget(title=title, left=lines, stacked=True, width=8)

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
                    per_pipeline("Runs started", "started"),
                    per_pipeline("Runs succeeded", "succeeded"),
                    per_pipeline("Runs failed", "failed"),
                ],
                [
                    per_pipeline("Runs aborted", "aborted"),
                    per_pipeline("Runs timed out", "timed_out"),
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
                            _app_metric("finalize", "RunCostUsd", name, period=COST_PERIOD, pipeline=name)
                            for name in machines
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
                        left=router("ScheduleFirings", "fired", clocked) + router("EmptyPartitions", "empty", clocked),
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Arrival deadlines missed",
                        left=router("DeadlinesMissed", "MISSED", expecting),
                        width=8,
                    ),
                    cloudwatch.GraphWidget(
                        title="Upstream runs (pipelines run after others)",
                        left=router("UpstreamRunsRecorded", "succeeded", downstream)
                        + router("UpstreamFailures", "failed", downstream),
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
