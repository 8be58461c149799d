"""Platform: what every pipeline shares — notifications, the router and prepare functions, the
idempotency table and the trigger dead-letter queue."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from autopilot_common.ledger import ledger_prefix
from config.ec2 import Ec2Runtime
from config.loader import output_prefix
from config.model import AppConfig
from stacks.admission import RunAdmission
from stacks.arns import (
    Allow,
    bounded_prefixes,
    deployment_arrival_queues,
    deployment_executions,
    deployment_state_machines,
    grant,
)
from stacks.functions import FunctionFactory
from stacks.nag import suppress
from stacks.naming import MANIFESTS_PREFIX, DeploymentNames, input_prefix
from stacks.storage import AutopilotStorage, state_table

# What the functions do on the idempotency table: Powertools' idempotency utility and the claims the guardrail and
# scaler store there are item reads and writes (CDK's grant_read_write_data would add stream actions, which the
# Service Authorization Reference allows only on streams, and batch/scan actions nothing calls).
IDEMPOTENCY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")


@dataclass(frozen=True)
class SharedArns:
    """The ARNs every pipeline's workflow substitutes or grants, read from CDK once (deploy-time tokens that resolve in
    whichever stack uses them) instead of through the jsii bridge per pipeline."""

    prepare: str
    admission: str
    finalize: str
    topic: str
    dead_letters: str


class AutopilotPlatform(Construct):
    """Shared services.

    - `topic`: SNS topic for run failures (SSE with the AWS-managed key, SSL enforced).
    - `idempotency_table`: DynamoDB (on-demand, PITR, TTL on `expiration`) used by the router to
      claim each object version once.
    - `dead_letters`: SQS DLQ behind every trigger queue (14 days retention).
    - `prepare`: the first state of every run; `router`: SQS -> StartExecution.
    - `admission`: concurrency and budget caps (`stacks.admission.RunAdmission`): every run's
      AcquireRunSlot / ReleaseRunSlot.
    - `finalize`: the end of every run: reads its cluster (fleets, steps) or job run for its ledger entry and
      cost, and its driver log for the notification text. Each pipeline grants it reads of its own clusters or
      job runs and of its own log prefix (`grant_shared`, `suppress_shared`).
    - `arns`: the ARNs above as `SharedArns`.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: AppConfig, prefix: str, storage: AutopilotStorage
    ) -> None:
        super().__init__(scope, construct_id)
        names = DeploymentNames(prefix)
        self.topic = sns.Topic(
            self,
            "Notifications",
            topic_name=names.topic,
            display_name="EMR Autopilot notifications",
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
            enforce_ssl=True,
        )
        for email in config.notifications.emails:
            self.topic.add_subscription(subs.EmailSubscription(email))

        self.idempotency_table = state_table(
            self, "Idempotency", table_name=names.idempotency_table, partition_key="id", ttl_attribute="expiration"
        )

        self.dead_letters = sqs.Queue(
            self,
            "TriggerDeadLetters",
            queue_name=names.dead_letters,
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        # Whatever lands here (a trigger message the router gave up on, an event a rule could not deliver, an
        # asynchronous invocation whose retries failed) is a run or a reaction that did not happen: tell someone.
        self.dead_letter_alarm = cloudwatch.Alarm(
            self,
            "DeadLettersAlarm",
            alarm_name=names.dead_letters_alarm,
            alarm_description=(
                f"Messages in {names.dead_letters}: an arrival, event or asynchronous invocation the app gave up on. "
                "Read them (each says what failed), fix the cause, then redrive or delete them."
            ),
            metric=self.dead_letters.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.dead_letter_alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))

        self.functions = FunctionFactory(self, "Functions", settings=config.lambdas, prefix=prefix)
        self.admission = RunAdmission(
            self, "Admission", config=config, prefix=prefix, storage=storage, functions=self.functions, topic=self.topic
        )
        self.prepare = self.functions.function(
            self,
            "prepare",
            description="EMR Autopilot: validate a run's input, write its manifest, fill defaults",
            environment={},
            timeout=Duration.minutes(5),
        )
        prefixes = bounded_prefixes(
            [input_prefix(name, p.trigger.prefix if p.trigger else None) for name, p in config.pipelines.items()]
        )
        # Pipelines run `after` others: console runs and reruns may name their upstreams' run outputs.
        upstream_outputs = bounded_prefixes(
            [output_prefix(u, config.pipelines[u]) for p in config.pipelines.values() for u in p.upstreams], "*"
        )
        # Console inputs are HEAD-ed or listed only inside the pipelines' input prefixes.
        self.prepare.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[storage.landing_ref.objects(f"{p}*") for p in prefixes]
            )
        )
        self.prepare.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[storage.landing_ref.arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            )
        )
        if upstream_outputs:
            self.prepare.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[storage.outputs_ref.objects(f"{p}/*") for p in upstream_outputs],
                )
            )
            self.prepare.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[storage.outputs_ref.arn],
                    conditions={"StringLike": {"s3:prefix": [f"{p}/*" for p in upstream_outputs]}},
                )
            )
        self.prepare.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"], resources=[storage.artifacts_ref.objects(f"{MANIFESTS_PREFIX}*")]
            )
        )
        suppress(
            self.prepare,
            "AwsSolutions-IAM5",
            "Object wildcards cover only the pipelines' input prefixes and their upstreams' output prefixes (read) and "
            "the manifests prefix (write).",
            ["regex:/^Resource::.*\\/\\*$/g"],
        )

        self.router = self.functions.function(
            self,
            "router",
            description="EMR Autopilot: S3 arrivals (via SQS) -> deterministic StartExecution",
            environment={
                "MANIFEST_BUCKET": storage.artifacts_ref.name,
                "IDEMPOTENCY_TABLE": self.idempotency_table.table_name,
                "LEDGER_BUCKET": storage.outputs_ref.name,
                "TOPIC_ARN": self.topic.topic_arn,
            },
            timeout=Duration.minutes(5),
        )
        stack = Stack.of(self)
        # Every pipeline's workflow and arrivals queue, by name pattern: one statement each, whatever the number of
        # pipelines (and no reference from this stack to the pipeline stacks). The arrivals queues are SQS-managed
        # SSE, so consuming them needs no KMS grant; the actions are those SqsEventSource grants (Lambda's SQS
        # event source mapping: https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html#events-sqs-permissions).
        self.router.add_to_role_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[deployment_state_machines(stack, prefix)])
        )
        # Whether a run an arrival rejoins has started (DescribeExecution of the deployment's executions only).
        self.router.add_to_role_policy(
            iam.PolicyStatement(actions=["states:DescribeExecution"], resources=deployment_executions(stack, prefix))
        )
        self.router.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sqs:ReceiveMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueUrl",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                ],
                resources=[deployment_arrival_queues(stack, prefix)],
            )
        )
        # Object claims: read in batches (which run owns each arrival), written and released conditionally.
        self.idempotency_table.grant(self.router, "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")
        # Marker mode lists the marker's folder; the router never reads object data.
        self.router.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[storage.landing_ref.arn])
        )
        # Writes each run's manifest, and reads it back to resume a run whose invocation died before starting it.
        self.router.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject"],
                resources=[storage.artifacts_ref.objects(f"{MANIFESTS_PREFIX}*")],
            )
        )
        reads = bounded_prefixes([p.arrivals.landing_prefix for p in config.pipelines.values() if p.arrivals])
        if reads:
            # HeadObject (s3:GetObject; with a version id s3:GetObjectVersion; ListBucket above makes a missing
            # object 404, not 403), only under the triggered input prefixes: pipelines with CloudTrail identify every
            # arrival so, a key whose URL-decoded form differs is resolved so (the form that exists), and marker mode
            # reads its marker and the objects written after it.
            self.router.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject", "s3:GetObjectVersion"],
                    resources=[storage.landing_ref.objects(f"{p}*") for p in reads],
                )
            )
        triggered = sorted(name for name, p in config.pipelines.items() if p.trigger)
        if triggered:
            # SKIPPED ledger entries (an arrival that starts nothing: gone, late with `notify`, an empty marker folder)
            # for the triggered pipelines only, and the notification about them.
            self.router.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:PutObject"],
                    resources=[
                        storage.outputs_ref.objects(f"{p}*")
                        for p in bounded_prefixes([ledger_prefix(name) for name in triggered], ledger_prefix())
                    ],
                )
            )
        if upstream_outputs:
            # Pipelines run `after` others: the fan-in state (read, then conditional puts in a transaction) and the
            # listing of the upstream runs' output folders (the downstream run's manifest; objects are never read).
            self.idempotency_table.grant(self.router, "dynamodb:GetItem")
            self.router.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[storage.outputs_ref.arn],
                    conditions={"StringLike": {"s3:prefix": [f"{p}/run_id=*" for p in upstream_outputs]}},
                )
            )
        self.topic.grant_publish(self.router)
        head_reason = "; reads object metadata (HeadObject) only under the triggered input prefixes"
        suppress(
            self.router,
            "AwsSolutions-IAM5",
            "Writes (and reads back) input manifests under the manifests/ prefix only (one object per run, names "
            "known at run time); StartExecution and DescribeExecution of the deployment's own state machines and "
            "executions, and "
            "consuming its arrivals queues, by their name pattern `<deployment>-*` (one statement for any number of "
            "pipelines)"
            + (head_reason if reads else "")
            + (
                "; writes SKIPPED and UPSTREAM_FAILED ledger entries under _runs/<pipeline>/ of triggered pipelines"
                if triggered
                else ""
            )
            + ".",
            [
                "regex:/^Resource::.*\\/manifests\\/\\*$/g",
                "regex:/^Resource::arn:[^:]+:states:.*:execution:.*:\\*$/g",
                "regex:/^Resource::arn:[^:]+:states:.*:stateMachine:.*-\\*$/g",
                "regex:/^Resource::arn:[^:]+:sqs:.*-\\*-arrivals$/g",
            ]
            + [f"regex:/^Resource::.*\\/{re.escape(p).replace('/', chr(92) + '/')}\\*$/g" for p in reads]
            + [f"regex:/^Resource::.*\\/_runs\\/{re.escape(n)}\\/\\*$/g" for n in triggered]
            # Past SHARED_ROLE_MAX_PREFIXES pipelines: the landing bucket's objects and the ledger as a whole.
            + ["regex:/^Resource::.*\\/_runs\\/\\*$/g", "regex:/^Resource::<StorageLanding[0-9A-F]+\\.Arn>\\/\\*$/g"],
        )

        # Every run ends in it (all runtimes): the ledger update (cost, links), the notification text, RunCostUsd.
        self.finalize: lambda_.Function = self.functions.function(
            self,
            "finalize",
            description="EMR Autopilot: end of a run (cluster or job run, cost, links, notification text)",
            environment={},
            timeout=Duration.minutes(2),
        )
        if any(isinstance(p.runtime, Ec2Runtime) for p in config.pipelines.values()):
            # RunStep's task tokens wait in the idempotency table (autopilot_common.step_notices): stored on submit,
            # answered (SendTaskSuccess/SendTaskFailure, which support no resource-level permissions: the token
            # names the task) when the step ended before its token was stored.
            self.finalize.add_environment("STEP_NOTICES_TABLE", self.idempotency_table.table_name)
            self.idempotency_table.grant(self.finalize, *IDEMPOTENCY_ACTIONS)
            self.finalize.add_to_role_policy(
                iam.PolicyStatement(actions=["states:SendTaskSuccess", "states:SendTaskFailure"], resources=["*"])
            )
            # The spot price a run's spot instances paid (the Service Authorization Reference lists no resource
            # types for it: only "*" allows it). Refused, the run's spot instances are priced at on-demand, flagged.
            self.finalize.add_to_role_policy(
                iam.PolicyStatement(actions=["ec2:DescribeSpotPriceHistory"], resources=["*"])
            )

        self.arns = SharedArns(
            prepare=self.prepare.function_arn,
            admission=self.admission.function.function_arn,
            finalize=self.finalize.function_arn,
            topic=self.topic.topic_arn,
            dead_letters=self.dead_letters.queue_arn,
        )
        self._shared: set[str] = set()

    def grant_shared(self, function: lambda_.Function, allow: Allow) -> None:
        """Allow a shared function (prepare, finalize) what one pipeline needs of it. Pipelines that need the same
        (their runtime's log prefix, a shared application's job runs, the deployment's clusters) grant it once: CDK
        would merge the copies at synth, after building each through the jsii bridge."""
        key = json.dumps([id(function), list(allow.actions), list(allow.resources), allow.conditions])
        if key not in self._shared:
            self._shared.add(key)
            grant(function, allow)

    def suppress_shared(self, function: lambda_.Function, rule: str, reason: str, applies_to: Sequence[str]) -> None:
        """`stacks.nag.suppress` on a shared function's role, once however many pipelines give the same reason
        (cdk-nag keeps one copy of identical suppressions)."""
        key = json.dumps([id(function), rule, reason, list(applies_to)])
        if key not in self._shared:
            self._shared.add(key)
            suppress(function.role or function, rule, reason, applies_to)

    def fail_async_to_dead_letters(self, function: lambda_.IFunction) -> None:
        """An asynchronously invoked function (EventBridge targets) retries a failed event twice, as Lambda does,
        then sends it with the error to the dead-letter queue (instead of Lambda dropping it)."""
        function.configure_async_invoke(
            on_failure=destinations.SqsDestination(self.dead_letters), retry_attempts=2, max_event_age=Duration.hours(6)
        )
