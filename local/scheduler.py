"""EventBridge Scheduler on the twin: schedules are moto's (`scheduler` backend, created by the deployer through the
API); a schedule fires on demand, for the instant a test names (tests move time, they do not wait for it).

A firing does what Scheduler does ("Scheduler concepts", "Adding context attributes", "Configuring a retry policy",
"Configuring a schedule's dead-letter queue", Scheduler user guide):

1. assumes the schedule's execution role, which must trust `scheduler.amazonaws.com` (with its conditions, e.g.
   `aws:SourceAccount`);
2. renders the target input's context attributes: `<aws.scheduler.schedule-arn>`, `<aws.scheduler.scheduled-time>`,
   `<aws.scheduler.execution-id>`, `<aws.scheduler.attempt-number>`;
3. calls the target as that role: SQS `SendMessage` (the role needs `sqs:SendMessage` on the queue; the twin's IAM
   refuses it otherwise) or Lambda `Invoke` (asynchronous, `lambda:InvokeFunction`);
4. on failure retries up to the retry policy's `MaximumRetryAttempts` (at once: the twin does not wait Scheduler's
   backoff, nor age events out), then sends a dead-letter event to the DLQ as the same role (`sqs:SendMessage` on
   the DLQ): the input as its body, and what failed as message attributes.

Not modelled: the schedule's own timing (cron/rate evaluation, flexible windows, start/end dates): a test names the
instant; universal (`aws-sdk:*`) targets and targets other than SQS and Lambda.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from local.iam.policy import Context, Policy, Request, evaluate

if TYPE_CHECKING:
    from local.twin import Twin

LOG = logging.getLogger("twin.scheduler")
SERVICE = "scheduler.amazonaws.com"


@dataclass
class Firing:
    """What one firing did: the input each attempt sent, each attempt's error, and whether it reached the DLQ."""

    schedule: str
    scheduled_time: str
    target: str
    input: str = ""
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    delivered: bool = False
    dead_lettered: bool = False


class SchedulerTwin:
    """Fires the twin's EventBridge Scheduler schedules on demand (`twin.scheduler.fire(name, at=...)`)."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.firings: list[Firing] = []

    def names(self, group: str = "default") -> list[str]:
        pages = self.twin.client("scheduler").get_paginator("list_schedules").paginate(GroupName=group)
        return sorted(s["Name"] for page in pages for s in page["Schedules"])

    def schedule(self, name: str, group: str = "default") -> dict[str, Any]:
        """The schedule named `name`, or the only one whose name contains it (CDK names are long)."""
        names = self.names(group)
        matches = [name] if name in names else [n for n in names if name in n]
        if len(matches) != 1:
            what = "no schedule" if not matches else "several schedules"
            raise LookupError(f"{what} named or containing {name!r} in group {group!r}; schedules: {names}")
        found: dict[str, Any] = self.twin.client("scheduler").get_schedule(Name=matches[0], GroupName=group)
        return found

    def fire(self, name: str, at: datetime, group: str = "default") -> Firing | None:
        """Fire the schedule as Scheduler would at the instant `at` (its scheduled time); None when it is DISABLED."""
        schedule = self.schedule(name, group)
        if schedule.get("State", "ENABLED") != "ENABLED":
            return None
        target = schedule["Target"]
        stamp = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        firing = Firing(schedule=schedule["Name"], scheduled_time=stamp, target=target["Arn"])
        self.firings.append(firing)
        retries = int(target.get("RetryPolicy", {}).get("MaximumRetryAttempts", 185))
        execution_id = str(uuid.uuid4())
        for attempt in range(1, retries + 2):
            firing.attempts = attempt
            firing.input = _render(target.get("Input", ""), schedule["Arn"], stamp, execution_id, attempt)
            try:
                self._deliver(schedule, target, firing.input)
            except Exception as exc:  # every failure is retried, then dead-lettered, as Scheduler does
                firing.errors.append(f"{type(exc).__name__}: {exc}")
                LOG.warning("schedule %s: attempt %d failed: %s", firing.schedule, attempt, exc)
                continue
            firing.delivered = True
            return firing
        self._dead_letter(schedule, target, firing)
        return firing

    def _deliver(self, schedule: dict[str, Any], target: dict[str, Any], body: str) -> None:
        role = target["RoleArn"]
        self._assume(role, schedule["Arn"])
        service = target["Arn"].split(":")[2]
        if service == "sqs":
            self._send(role, target["Arn"], body)
        elif service == "lambda":
            client = self.twin.role_client("lambda", role, "scheduler")
            client.invoke(FunctionName=target["Arn"], InvocationType="Event", Payload=body.encode("utf-8"))
        else:
            raise NotImplementedError(f"Scheduler target service {service} is not modelled by the twin")

    def _assume(self, role_arn: str, schedule_arn: str) -> None:
        """Scheduler may use the role only when its trust policy lets scheduler.amazonaws.com assume it."""
        role = self.twin.client("iam").get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
        document = role["AssumeRolePolicyDocument"]
        trust = Policy.parse(f"trust of {role['RoleName']}", document, resource_based=True)
        context = Context({"aws:SourceAccount": self.twin.account, "aws:SourceArn": schedule_arn})
        caller = self.twin.iam.service_caller(SERVICE)
        decision = evaluate(Request(caller, "sts:AssumeRole", role_arn, context), [], trust)
        if not decision.allowed:
            raise PermissionError(f"{SERVICE} may not assume {role_arn}: {decision.message()}")

    def _send(self, role_arn: str, queue_arn: str, body: str, **attributes: str) -> None:
        # Scheduler addresses the queue by ARN: only sqs:SendMessage is asked of the role (the URL is looked up here).
        url = self.twin.client("sqs").get_queue_url(QueueName=queue_arn.split(":")[5])["QueueUrl"]
        sqs = self.twin.role_client("sqs", role_arn, "scheduler")
        message_attributes = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=message_attributes)

    def _dead_letter(self, schedule: dict[str, Any], target: dict[str, Any], firing: Firing) -> None:
        dlq = target.get("DeadLetterConfig", {}).get("Arn")
        if not dlq:
            LOG.warning("schedule %s: firing dropped after %d attempts (no DLQ)", firing.schedule, firing.attempts)
            return
        try:
            self._send(
                target["RoleArn"],
                dlq,
                firing.input,
                ERROR_CODE=firing.errors[-1].split(":", 1)[0],
                ERROR_MESSAGE=firing.errors[-1][:1000],
                EXHAUSTED_RETRY_CONDITION="MaximumRetryAttempts",
                RETRY_ATTEMPTS=str(firing.attempts - 1),
                SCHEDULE_ARN=schedule["Arn"],
                TARGET_ARN=target["Arn"],
            )
        except Exception as exc:
            firing.errors.append(f"dead-letter queue: {type(exc).__name__}: {exc}")
            LOG.warning("schedule %s: dead-letter event not delivered: %s", firing.schedule, exc)
            return
        firing.dead_lettered = True


def _render(template: str, schedule_arn: str, scheduled_time: str, execution_id: str, attempt: int) -> str:
    """The target input with Scheduler's context attributes filled in (plain text substitution, as Scheduler does)."""
    values = {
        "<aws.scheduler.schedule-arn>": schedule_arn,
        "<aws.scheduler.scheduled-time>": scheduled_time,
        "<aws.scheduler.execution-id>": execution_id,
        "<aws.scheduler.attempt-number>": str(attempt),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template
