"""Admission control: the table and function behind every workflow's AcquireRunSlot / ReleaseRunSlot."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from constructs import Construct

from autopilot_common.ledger import ledger_prefix
from config.capacity import queue_timeout_seconds, run_reservation
from config.guardrails import Limits, PipelineLimits
from config.model import AppConfig, Pipeline
from stacks.functions import FunctionFactory
from stacks.nag import suppress
from stacks.naming import DeploymentNames
from stacks.pipeline_settings import DEPLOYMENT_ENV, grant_pipeline_settings
from stacks.storage import AutopilotStorage, state_table

# Environment contract of `autopilot_common.admission` (Caps.from_env and the admission handler).
TABLE_ENV, CAPS_ENV, LEDGER_BUCKET_ENV, TOPIC_ENV = "ADMISSION_TABLE", "ADMISSION_CAPS", "LEDGER_BUCKET", "TOPIC_ARN"
TTL_ATTRIBUTE = "expires_at"  # autopilot_common.admission.EXPIRES_AT: a budgeted run's SPEND item
TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",  # a decision's counters (CAP items of the pipelines with waiting runs)
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
)


def limit_json(limits: Limits) -> dict[str, int | float | str | None]:
    """A scope's caps as `autopilot_common.admission.Limit` reads them (a pipeline's also say `over_budget`)."""
    body: dict[str, int | float | str | None] = {
        "runs": limits.max_concurrent_runs,
        "clusters": limits.max_concurrent_clusters,
        "vcpus": limits.max_vcpus,
        "usd": limits.max_daily_usd,
    }
    if isinstance(limits, PipelineLimits):
        body["over_budget"] = limits.over_budget
    return body


def caps_json(config: AppConfig) -> str:
    """`ADMISSION_CAPS`: the deployment's caps (each pipeline's are in its settings parameter: `caps_section`)."""
    return json.dumps({"deployment": limit_json(config.guardrails.limits)}, separators=(",", ":"), sort_keys=True)


def caps_section(pipeline: Pipeline) -> dict[str, int | float | str | None] | None:
    """The `caps` section of a pipeline's settings parameter (autopilot_common.admission.Limit), or None for a
    pipeline with no cap that waits over budget (uncapped: the default)."""
    limits = pipeline.limits
    return limit_json(limits) if limits.capped or limits.over_budget == "fail" else None


class RunAdmission(Construct):
    """Concurrency and budget caps (`limits` per pipeline, `guardrails.limits` per deployment).

    - `table`: DynamoDB `<prefix>-admission` (on-demand, PITR): capacity counters, the FIFO queue of
      waiting runs with their task tokens, and one item per queued or admitted run.
    - `function`: `lambdas/admission` (acquire: queue or admit via SendTaskSuccess; release). It writes
      QUEUED ledger entries, so it may put objects under the ledger prefix.
    - `settings_json(pipeline)`: what Prepare puts in a run (its reservation and queue timeout), fixed at synth.
    - `grant_release(function)`: what another function (cleanup) needs to call `admission.release`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        prefix: str,
        storage: AutopilotStorage,
        functions: FunctionFactory,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        self.prefix = prefix
        self.caps_json = caps_json(config)
        self.settings: dict[str, dict[str, Any]] = {
            name: {
                "reservation": run_reservation(config, name).as_dict(),
                "queue_timeout_seconds": queue_timeout_seconds(pipeline),
            }
            for name, pipeline in config.pipelines.items()
        }
        self.table = state_table(
            self,
            "Table",
            table_name=DeploymentNames(prefix).admission_table,
            partition_key="pk",
            sort_key="sk",
            ttl_attribute=TTL_ATTRIBUTE,  # a budgeted run's SPEND item, when its end never settles it (aborted)
        )
        self.function = functions.function(
            self,
            "admission",
            description="EMR Autopilot: concurrency and budget caps (queue runs in arrival order, admit, release)",
            environment={LEDGER_BUCKET_ENV: storage.outputs.bucket_name, TOPIC_ENV: topic.topic_arn},
            timeout=Duration.minutes(2),
        )
        self.grant_release(self.function)
        topic.grant_publish(self.function)  # a run held for a budget is notified
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"], resources=[storage.outputs.arn_for_objects(f"{ledger_prefix()}*")]
            )
        )
        suppress(
            self.function,
            "AwsSolutions-IAM5",
            "Writes QUEUED ledger entries under the ledger prefix only (keys are per run, known at run time).",
            ["regex:/^Resource::.*\\/_runs\\/\\*$/g"],
        )

    def settings_json(self, pipeline: str) -> str:
        """Prepare's `admission_json`: `{reservation: {runs, clusters, vcpus}, queue_timeout_seconds}`."""
        return json.dumps(self.settings[pipeline], separators=(",", ":"), sort_keys=True)

    def grant_release(self, function: lambda_.Function) -> None:
        """Environment and permissions to call `admission.release` (and the dispatch it triggers)."""
        function.add_environment(TABLE_ENV, self.table.table_name)
        function.add_environment(CAPS_ENV, self.caps_json)
        function.add_environment(DEPLOYMENT_ENV, self.prefix)  # whose pipelines' parameters hold their caps
        grant_pipeline_settings(function, self.prefix)
        # Transactions are authorized per item action; nothing scans or writes in batches.
        self.table.grant(function, *TABLE_ACTIONS)
        # The task token authorizes the call: these actions support no resource-level permissions.
        function.add_to_role_policy(
            iam.PolicyStatement(actions=["states:SendTaskSuccess", "states:SendTaskFailure"], resources=["*"])
        )
        suppress(
            function,
            "AwsSolutions-IAM5",
            "states:SendTaskSuccess/SendTaskFailure support no resource-level permissions (the task token "
            "identifies the waiting run); X-Ray PutTraceSegments/PutTelemetryRecords neither.",
            ["Resource::*"],
        )
