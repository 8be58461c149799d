"""The trigger of one pipeline: EventBridge rule(s) -> SQS queue (+DLQ) -> router Lambda (a scheduled pipeline's
queue takes its Scheduler firings instead: `stacks.schedules`).

Arrival triggers (`trigger.prefix`), by `trigger.sources`: `eventbridge` is a rule on the landing bucket's "Object
Created" events; `cloudtrail` is a rule on CloudTrail S3 data events (PutObject, CopyObject, CompleteMultipartUpload)
of the same bucket and keys. Both rules send the same envelope to the same queue.

A pipeline run `after` others has one rule instead: on its upstreams' run events ("Autopilot Run Succeeded" and
"Autopilot Run Failed" of this deployment, `autopilot_common.run_events`) on the default bus, sending the upstream
envelope (`lambdas/router/upstream.py`) to the same kind of queue.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from autopilot_common.run_events import DETAIL_TYPES, SOURCE
from config.model import MarkerBatching, Trigger, WindowBatching
from stacks.naming import arrival_rule_name, arrivals_queue_name
from stacks.platform import AutopilotPlatform
from stacks.storage import AutopilotStorage

MAX_RECEIVE_COUNT = 5
# Lambda needs the queue's visibility timeout >= the function timeout; AWS advises 6x plus the window.
VISIBILITY_TIMEOUT = Duration.minutes(30)
RETENTION_PERIOD = Duration.days(4)
DEFAULT_SOURCES = ["eventbridge"]
# The S3 data events that create an object (UploadPartCopy/UploadPart only add parts).
OBJECT_WRITES = ["PutObject", "CopyObject", "CompleteMultipartUpload"]


@cache
def _window(seconds: int) -> tuple[Duration, Duration]:
    """A window's queue visibility timeout and batching window (Durations are values: pipelines with the same window
    share them rather than build them through the jsii bridge each)."""
    window = Duration.seconds(seconds)
    return VISIBILITY_TIMEOUT.plus(window), window


def key_filters(trigger: Trigger) -> list[dict[str, str]]:
    """EventBridge content filters on `detail.object.key` for this trigger (OR-ed)."""
    prefix = trigger.landing_prefix.replace("\\", "\\\\").replace("*", "\\*")
    if isinstance(trigger.batching, MarkerBatching):
        return [{"wildcard": f"{prefix}*{trigger.batching.marker_name}"}]
    if not trigger.suffixes:
        return [{"prefix": trigger.landing_prefix}]
    return [{"wildcard": f"{prefix}*{suffix.replace('*', chr(92) + '*')}"} for suffix in trigger.suffixes]


def object_created_pattern(bucket_name: str, trigger: Trigger) -> events.EventPattern:
    """S3 EventBridge notifications: "Object Created" in the landing bucket under the trigger's keys."""
    return events.EventPattern(
        source=["aws.s3"],
        detail_type=["Object Created"],
        detail={"bucket": {"name": [bucket_name]}, "object": {"key": key_filters(trigger)}},
    )


def data_event_pattern(bucket_name: str, trigger: Trigger) -> events.EventPattern:
    """CloudTrail S3 data events that wrote an object in the landing bucket under the trigger's keys.

    Failed calls (an `errorCode` is present, e.g. AccessDenied) never match: nothing was written.
    """
    return events.EventPattern(
        source=["aws.s3"],
        detail_type=["AWS API Call via CloudTrail"],
        detail={
            "eventSource": ["s3.amazonaws.com"],
            "eventName": OBJECT_WRITES,
            "errorCode": [{"exists": False}],
            "requestParameters": {"bucketName": [bucket_name], "key": key_filters(trigger)},
        },
    )


def upstream_pattern(deployment: str, trigger: Trigger) -> events.EventPattern:
    """The run events (SUCCEEDED and FAILED) of the pipeline's upstreams in this deployment."""
    return events.EventPattern(
        source=[SOURCE],
        detail_type=sorted(DETAIL_TYPES.values()),
        detail={"deployment": [deployment], "pipeline": list(trigger.after)},
    )


def upstream_envelope(pipeline: str, state_machine_arn: str, trigger: Trigger, output_prefixes: dict[str, str]) -> str:
    """The SQS message template of an upstream run event: the upstreams (and where each writes its outputs, which the
    router checks the event against), the downstream's object filters, and the full event."""
    routing = {
        "after": trigger.after,
        "output_prefixes": {name: output_prefixes[name] for name in trigger.after},
        "suffixes": trigger.suffixes,
        "ignore_zero_byte": trigger.ignore_zero_byte,
    }
    return _with_event({"pipeline": pipeline, "state_machine_arn": "@ARN@", "upstream": routing}, state_machine_arn)


def _with_event(head: dict[str, Any], state_machine_arn: str) -> str:
    """`head` as JSON with the state machine's ARN (a token) in place of `@ARN@`, then the matched event."""
    before, after = json.dumps(head)[:-1].split("@ARN@")
    return before + state_machine_arn + after + ', "event": <aws.events.event.json>}'


def routing_block(trigger: Trigger) -> dict[str, Any]:
    """The `trigger` block of every message on a pipeline's queue: what the router needs to filter and group objects
    (`routing.TriggerSpec`)."""
    batching = trigger.batching
    routing: dict[str, Any] = {
        "mode": batching.mode,
        "prefix": trigger.prefix,
        "suffixes": trigger.suffixes,
        "marker_name": batching.marker_name if isinstance(batching, MarkerBatching) else None,
        "ignore_zero_byte": trigger.ignore_zero_byte,
    }
    if isinstance(batching, MarkerBatching):
        routing["late_objects"] = batching.late_objects
    if trigger.partition_template is not None:
        # Only then: an arrival run claims the logical dates of its partitions (what arrival deadlines look for).
        routing["partition_template"] = trigger.partition_template
    if trigger.sources != DEFAULT_SOURCES:
        # Only then: the router reads each object (HeadObject) to identify it whatever reported it.
        routing["sources"] = trigger.sources
    return routing


def envelope(pipeline: str, state_machine_arn: str, trigger: Trigger) -> str:
    """The SQS message template: routing data plus the full original event (`<aws.events.event.json>`)."""
    head = {"pipeline": pipeline, "state_machine_arn": "@ARN@", "trigger": routing_block(trigger)}
    return _with_event(head, state_machine_arn)


class PipelineTrigger(Construct):
    """Landing-bucket arrivals, or its upstreams' run events (`trigger.after`), for one pipeline, buffered in its own
    queue.

    The queue's event source mapping sets the batching: `window` mode uses batch size
    `max_objects` and batching window `window_seconds` (one run per batch); the other modes and upstream run events
    use batches of 10 without a window. Failed records return to the queue and, after
    5 receives, go to the shared dead-letter queue (which has an alarm).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        prefix: str,
        trigger: Trigger,
        state_machine_arn: str,
        storage: AutopilotStorage,
        platform: AutopilotPlatform,
        upstream_output_prefixes: dict[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        batching = trigger.batching
        window = batching.window_seconds if isinstance(batching, WindowBatching) else 0
        visibility_timeout, batching_window = _window(window)
        self.queue = sqs.Queue(
            self,
            "Arrivals",
            queue_name=arrivals_queue_name(prefix, name),
            visibility_timeout=visibility_timeout,
            retention_period=RETENTION_PERIOD,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(queue=platform.dead_letters, max_receive_count=MAX_RECEIVE_COUNT),
        )
        bucket_name = storage.landing_ref.name
        # `rule` is the Object Created rule (None when the trigger uses CloudTrail only, or runs `after` others).
        self.rule: events.Rule | None = None
        self.data_event_rule: events.Rule | None = None
        self.upstream_rule: events.Rule | None = None
        if not trigger.watches_landing:
            self.upstream_rule = self._rule(
                "UpstreamRuns",
                rule_name=arrival_rule_name(prefix, name, "upstream"),
                description=f"Run events of the pipelines {name} runs after: {', '.join(trigger.after)}",
                pattern=upstream_pattern(prefix, trigger),
                message=upstream_envelope(name, state_machine_arn, trigger, upstream_output_prefixes or {}),
            )
        # A scheduled pipeline runs by the clock only (`stacks.schedules`): its queue takes Scheduler's firings.
        arrival_sources = trigger.sources if trigger.watches_landing and trigger.schedule is None else []
        message = envelope(name, state_machine_arn, trigger)
        if "eventbridge" in arrival_sources:
            self.rule = self._rule(
                "ObjectCreated",
                rule_name=arrival_rule_name(prefix, name, "eventbridge"),
                description=f"Landing objects for pipeline {name}",
                pattern=object_created_pattern(bucket_name, trigger),
                message=message,
            )
        if "cloudtrail" in arrival_sources:
            self.data_event_rule = self._rule(
                "DataEvent",
                rule_name=arrival_rule_name(prefix, name, "cloudtrail"),
                description=f"Landing objects for pipeline {name}, seen by CloudTrail S3 data events",
                pattern=data_event_pattern(bucket_name, trigger),
                message=message,
            )
        # The mapping lives with its queue (this pipeline's stack), the router's consume grant in the platform
        # stack by the queues' name pattern: the platform never refers to a pipeline stack.
        self.event_source_mapping = lambda_.EventSourceMapping(
            self,
            "ArrivalsToRouter",
            target=platform.router,
            event_source_arn=self.queue.queue_arn,
            batch_size=batching.max_objects if isinstance(batching, WindowBatching) else 10,
            max_batching_window=batching_window if window else None,
            report_batch_item_failures=True,
        )

    def _rule(
        self, construct_id: str, *, rule_name: str, description: str, pattern: events.EventPattern, message: str
    ) -> events.Rule:
        """A rule that sends `message` (the envelope around the matched event) to this trigger's queue."""
        rule = events.Rule(
            self,
            construct_id,
            rule_name=rule_name,
            description=description,
            event_pattern=pattern,
            targets=[targets.SqsQueue(self.queue)],
        )
        cfn_rule = rule.node.default_child
        assert isinstance(cfn_rule, events.CfnRule)
        cfn_rule.add_property_override("Targets.0.InputTransformer", {"InputTemplate": message})
        return rule
