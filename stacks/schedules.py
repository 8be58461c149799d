"""Clock triggers of one pipeline: EventBridge Scheduler schedules that put a firing on the pipeline's arrivals queue.

`trigger.schedule` fires runs (`kind: scheduled`), `trigger.expect` fires arrival deadlines (`kind: deadline`); the
router handles both (`lambdas/router/firings.py`). Each schedule has its own execution role, allowed only to send to
that queue and to the dead-letter queue, a retry policy, and the shared trigger dead-letter queue (its alarm tells
someone when a firing could not be delivered).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from config.model import Trigger
from config.schedules import Expectation, Schedule
from stacks.arns import stack_of
from stacks.naming import schedule_name
from stacks.platform import AutopilotPlatform
from stacks.triggers import routing_block

# Scheduler retries a failed delivery with exponential backoff until either limit, then sends it to the DLQ
# ("Configuring a retry policy", Scheduler user guide; defaults 185 attempts / 24 hours). An SQS target fails only
# when the queue or the role is broken: an hour of retries is enough to ride out a deployment.
MAXIMUM_RETRY_ATTEMPTS = 10
MAXIMUM_EVENT_AGE_SECONDS = 3600
# Filled in by Scheduler at each firing: "The time you specified for the schedule to invoke its target" ("Adding
# context attributes", Scheduler user guide), so a flexible window or a retry never moves a firing's logical date.
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"


def firing_input(
    kind: str, pipeline: str, state_machine_arn: str, trigger: Trigger, landing_bucket: str
) -> dict[str, Any]:
    """The message a schedule puts on the queue (before Scheduler fills in the scheduled time)."""
    message: dict[str, Any] = {
        "kind": kind,
        "pipeline": pipeline,
        "state_machine_arn": state_machine_arn,
        "trigger": routing_block(trigger),
        "bucket": landing_bucket,
    }
    if kind == "scheduled" and trigger.schedule is not None:
        message |= {"timezone": trigger.schedule.timezone, "on_empty": trigger.schedule.on_empty}
    elif kind == "deadline" and trigger.expect is not None:
        message |= {"timezone": trigger.expect.timezone, "by": trigger.expect.by}
    return message | {"scheduled_time": SCHEDULED_TIME}


class PipelineClock(Construct):
    """The Scheduler schedules of one pipeline (`trigger.schedule` and/or `trigger.expect`) and their role.

    `schedules` maps the kind (`scheduled`, `deadline`) to its `AWS::Scheduler::Schedule` (default group, ENABLED).
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
        queue: sqs.IQueue,
        landing_bucket: str,
        platform: AutopilotPlatform,
    ) -> None:
        super().__init__(scope, construct_id)
        stack, queue_arn, dead_letters_arn = stack_of(scope), queue.queue_arn, platform.arns.dead_letters
        # Scheduler assumes the role for this account's schedules only (the confused-deputy condition the Scheduler
        # user guide recommends: "Setting up the execution role").
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description=f"EMR Autopilot: EventBridge Scheduler sends {name}'s firings to its arrivals queue",
        )
        # The target action, and the DLQ's: Scheduler sends dead-letter events with the execution role
        # ("Configuring a schedule's dead-letter queue": sqs:SendMessage). Both queues use SSE-SQS: no KMS grant.
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[queue_arn, dead_letters_arn])
        )
        clocks: dict[str, tuple[str, Schedule | Expectation | None, str]] = {
            "scheduled": ("Schedule", trigger.schedule, f"EMR Autopilot: runs of {name} by the clock"),
            "deadline": ("Deadline", trigger.expect, f"EMR Autopilot: arrival deadline of {name}"),
        }
        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        role_arn = self.role.role_arn
        for kind, (construct_name, clock, description) in clocks.items():
            if clock is None:
                continue
            window = clock.flexible_window_minutes if isinstance(clock, Schedule) else None
            message = firing_input(kind, name, state_machine_arn, trigger, landing_bucket)
            self.schedules[kind] = scheduler.CfnSchedule(
                self,
                construct_name,
                name=schedule_name(prefix, name, kind),
                description=description,
                schedule_expression=clock.expression,
                schedule_expression_timezone=clock.timezone,
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(
                    mode="FLEXIBLE" if window else "OFF", maximum_window_in_minutes=window
                ),
                state="ENABLED",
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=queue_arn,
                    role_arn=role_arn,
                    input=stack.to_json_string(message),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_retry_attempts=MAXIMUM_RETRY_ATTEMPTS,
                        maximum_event_age_in_seconds=MAXIMUM_EVENT_AGE_SECONDS,
                    ),
                    dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(arn=dead_letters_arn),
                ),
            )
