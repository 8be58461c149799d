"""S3 trigger of one pipeline: EventBridge rule -> SQS queue (+DLQ) -> router Lambda."""

from __future__ import annotations

import json

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from config.model import MarkerBatching, Trigger, WindowBatching
from stacks.platform import AutopilotPlatform
from stacks.storage import AutopilotStorage

MAX_RECEIVE_COUNT = 5
# Lambda needs the queue's visibility timeout >= the function timeout; AWS advises 6x plus the window.
VISIBILITY_TIMEOUT = Duration.minutes(30)


def key_filters(trigger: Trigger) -> list[dict[str, str]]:
    """EventBridge content filters on `detail.object.key` for this trigger (OR-ed)."""
    prefix = trigger.prefix.replace("\\", "\\\\").replace("*", "\\*")
    if isinstance(trigger.batching, MarkerBatching):
        return [{"wildcard": f"{prefix}*{trigger.batching.marker_name}"}]
    if not trigger.suffixes:
        return [{"prefix": trigger.prefix}]
    return [{"wildcard": f"{prefix}*{suffix.replace('*', chr(92) + '*')}"} for suffix in trigger.suffixes]


def envelope(pipeline: str, state_machine_arn: str, trigger: Trigger) -> str:
    """The SQS message template: routing data plus the full original event (`<aws.events.event.json>`)."""
    batching = trigger.batching
    routing = {
        "mode": batching.mode,
        "prefix": trigger.prefix,
        "suffixes": trigger.suffixes,
        "marker_name": batching.marker_name if isinstance(batching, MarkerBatching) else None,
        "ignore_zero_byte": trigger.ignore_zero_byte,
    }
    head = json.dumps({"pipeline": pipeline, "state_machine_arn": "@ARN@", "trigger": routing})
    before, after = head[:-1].split("@ARN@")
    return before + state_machine_arn + after + ', "event": <aws.events.event.json>}'


class PipelineTrigger(Construct):
    """Landing-bucket arrivals for one pipeline, buffered in its own queue.

    The queue's event source mapping sets the batching: `window` mode uses batch size
    `max_objects` and batching window `window_seconds` (one run per batch); the other modes use
    batches of 10 without a window. Failed records return to the queue and, after
    5 receives, go to the shared dead-letter queue.
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
    ) -> None:
        super().__init__(scope, construct_id)
        batching = trigger.batching
        window = batching.window_seconds if isinstance(batching, WindowBatching) else 0
        self.queue = sqs.Queue(
            self,
            "Arrivals",
            queue_name=f"{prefix}-{name}-arrivals",
            visibility_timeout=VISIBILITY_TIMEOUT.plus(Duration.seconds(window)),
            retention_period=Duration.days(4),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(queue=platform.dead_letters, max_receive_count=MAX_RECEIVE_COUNT),
        )
        self.rule = events.Rule(
            self,
            "ObjectCreated",
            rule_name=f"{prefix}-{name}-object-created",
            description=f"Landing objects for pipeline {name}",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [storage.landing.bucket_name]},
                    "object": {"key": key_filters(trigger)},
                },
            ),
        )
        self.rule.add_target(targets.SqsQueue(self.queue))
        cfn_rule = self.rule.node.default_child
        assert isinstance(cfn_rule, events.CfnRule)
        cfn_rule.add_property_override(
            "Targets.0.InputTransformer", {"InputTemplate": envelope(name, state_machine_arn, trigger)}
        )
        self.event_source = sources.SqsEventSource(
            self.queue,
            batch_size=batching.max_objects if isinstance(batching, WindowBatching) else 10,
            max_batching_window=Duration.seconds(window) if window else None,
            report_batch_item_failures=True,
        )
        platform.router.add_event_source(self.event_source)
