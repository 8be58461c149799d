"""Event-driven notice of EMR-on-EC2 step ends: a workflow's RunStep waits on a task token that the step's own
"EMR Step Status Change" event answers within seconds, so a cluster never idles until Step Functions' next `.sync`
poll (60 s for a task's first 10 minutes, then 300 s: Step Functions developer guide, connect-emr.html).

- `submit_step` (the finalize function, `action: submit_step`, called by RunStep as `lambda:invoke.waitForTaskToken`):
  AddJobFlowSteps, then the token is stored under the step (`step-notice#<cluster>#<step>` in the idempotency table,
  expiring a day after the step's timeout) and the step joins the pending index (one item, a string set). A step that
  ended before its token was stored (a very short one) is answered at once.
- `notice_step_event` (the guardrail function, rule on "EMR Step Status Change" COMPLETED/FAILED/CANCELLED/INTERRUPTED):
  the step's token is read and answered, then removed: SendTaskSuccess for COMPLETED, SendTaskFailure
  `EMR.Step<State>` with the step (DescribeStep) as the cause otherwise, as `addStep.sync` fails with the step's
  description.
- `sweep_step_notices` (the guardrail's sweeper tick): EMR events are delivered on a best-effort basis (EMR management
  guide, "Monitor Amazon EMR events with EventBridge"), so every pending step is looked up (DescribeStep) and the
  ended ones answered: a lost event delays a notice by at most one sweeper interval.

A token is removed only after it was answered, so an answer that failed (throttled) is given again by the event's retry
or the next sweep; answering twice is harmless: a token whose task already ended (answered, timed out, aborted)
answers TaskTimedOut / TaskDoesNotExist / InvalidToken, and nothing is left to do. AddJobFlowSteps has no idempotency
token, so a submission that finds the newest step of its name PENDING, RUNNING or COMPLETED on the cluster (an
invocation retried after it added the step) waits on that step, or answers at once, instead of adding it twice; a
newest step that FAILED (or was cancelled, interrupted) is a new attempt's cue to add it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.dynamo import error_code

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient, EMRClient, SFNClient

SUBMIT_ACTION = "submit_step"
ENDED_STEP_STATES = ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED")
NOTICE_PREFIX = "step-notice#"
PENDING_ID = "step-notices#pending"  # the index of steps whose token is not answered yet (a string set)
TOKEN_RETENTION_SECONDS = 86_400  # a token outlives its task's timeout by a day, then DynamoDB's TTL removes it
# SendTask* on a token whose task has ended: nothing waits for it any more.
GONE_TOKEN_CODES = {"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"}


class StepNoticeError(ValueError):
    """A submit_step payload with a missing or malformed field (the message names it)."""


@dataclass(frozen=True)
class StepSubmission:
    """RunStep's payload: the task token, the cluster, the step as AddJobFlowSteps takes it, and the task's timeout."""

    token: str
    cluster_id: str
    step: dict[str, Any]
    timeout_seconds: int
    run_started_at: datetime | None = None  # $$.Execution.StartTime: no step of the run is older

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> StepSubmission:
        def text(name: str) -> str:
            value = event.get(name)
            if not isinstance(value, str) or not value:
                raise StepNoticeError(f"{name}: got {value!r}; expected a non-empty string")
            return value

        step = event.get("step")
        if not isinstance(step, dict) or not step.get("Name") or not isinstance(step.get("HadoopJarStep"), dict):
            raise StepNoticeError(f"step: got {step!r}; expected {{Name, ActionOnFailure, HadoopJarStep}}")
        timeout = event.get("timeout_seconds")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise StepNoticeError(f"timeout_seconds: got {timeout!r}; expected a positive integer")
        started = event.get("run_started_at")
        try:
            run_started_at = datetime.fromisoformat(str(started)) if started is not None else None
        except ValueError:
            raise StepNoticeError(f"run_started_at: got {started!r}; expected an ISO 8601 timestamp") from None
        if run_started_at is not None and run_started_at.tzinfo is None:
            raise StepNoticeError(f"run_started_at: got {started!r}; expected a timestamp with its UTC offset")
        return cls(
            token=text("token"),
            cluster_id=text("cluster_id"),
            step=step,
            timeout_seconds=timeout,
            run_started_at=run_started_at,
        )


@dataclass(frozen=True)
class NoticeStore:
    """Where tokens wait for their step's end: the deployment's idempotency table (key `id`, TTL `expiration`)."""

    dynamodb: DynamoDBClient
    table: str

    def put(self, cluster_id: str, step_id: str, token: str, timeout_seconds: int) -> None:
        key = pending_key(cluster_id, step_id)
        expiration = int(time.time()) + timeout_seconds + TOKEN_RETENTION_SECONDS
        self.dynamodb.put_item(
            TableName=self.table,
            Item={"id": {"S": NOTICE_PREFIX + key}, "token": {"S": token}, "expiration": {"N": str(expiration)}},
        )
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"id": {"S": PENDING_ID}},
            UpdateExpression="ADD pending :k",
            ExpressionAttributeValues={":k": {"SS": [key]}},
        )

    def token(self, cluster_id: str, step_id: str) -> str | None:
        """The step's waiting token; None when there is none (not ours, or answered)."""
        key = {"id": {"S": NOTICE_PREFIX + pending_key(cluster_id, step_id)}}
        item = self.dynamodb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        return str(item["token"]["S"]) if item and "token" in item else None

    def remove(self, cluster_id: str, step_id: str) -> None:
        """The step's token is answered (or its step is gone): no one waits on it any more."""
        key = pending_key(cluster_id, step_id)
        self.dynamodb.delete_item(TableName=self.table, Key={"id": {"S": NOTICE_PREFIX + key}})
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"id": {"S": PENDING_ID}},
            UpdateExpression="DELETE pending :k",
            ExpressionAttributeValues={":k": {"SS": [key]}},
        )

    def pending(self) -> list[tuple[str, str]]:
        """(cluster id, step id) of every step whose token waits."""
        item = self.dynamodb.get_item(TableName=self.table, Key={"id": {"S": PENDING_ID}}, ConsistentRead=True)
        keys = (item.get("Item") or {}).get("pending", {}).get("SS") or []
        return sorted(tuple(k.split("#", 1)) for k in keys)  # type: ignore[misc]


def pending_key(cluster_id: str, step_id: str) -> str:
    return f"{cluster_id}#{step_id}"


def submit_step(submission: StepSubmission, emr: EMRClient, sfn: SFNClient, store: NoticeStore) -> dict[str, Any]:
    """Add the step (ActionOnFailure as given: the workflow decides), store its token, and answer at once when the
    step already ended. Returns {step_id, state}."""
    cluster_id = submission.cluster_id
    step_id = _submitted_already(emr, cluster_id, submission.step["Name"], submission.run_started_at)
    if step_id is None:
        step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[submission.step])["StepIds"][0]  # type: ignore[list-item]
    store.put(submission.cluster_id, step_id, submission.token, submission.timeout_seconds)
    state = _step_state(emr, submission.cluster_id, step_id)["Status"]["State"]
    if state in ENDED_STEP_STATES:
        notice_step_end(submission.cluster_id, step_id, state, emr, sfn, store)
    return {"step_id": step_id, "state": state}


def notice_step_event(detail: dict[str, Any], emr: EMRClient, sfn: SFNClient, store: NoticeStore) -> str:
    """An "EMR Step Status Change" event: answer the step's token if one waits. Returns what was done."""
    cluster_id, step_id, state = detail.get("clusterId"), detail.get("stepId"), detail.get("state")
    if not isinstance(cluster_id, str) or not isinstance(step_id, str) or state not in ENDED_STEP_STATES:
        return "ignored"
    return notice_step_end(cluster_id, step_id, str(state), emr, sfn, store)


def sweep_step_notices(emr: EMRClient, sfn: SFNClient, store: NoticeStore) -> list[str]:
    """The fallback for lost events: every pending step that ended is answered now. Returns their keys."""
    answered = []
    for cluster_id, step_id in store.pending():
        try:
            state = _step_state(emr, cluster_id, step_id)["Status"]["State"]
        except ClientError as exc:
            if error_code(exc) != "InvalidRequestException":  # the step (or its cluster) is gone for good
                raise
            store.remove(cluster_id, step_id)
            continue
        if state not in ENDED_STEP_STATES:
            continue
        noticed = notice_step_end(cluster_id, step_id, state, emr, sfn, store)
        if noticed == "answered":
            answered.append(pending_key(cluster_id, step_id))
        elif noticed == "no token":  # its token expired (DynamoDB TTL) unanswered: drop it from the index
            store.remove(cluster_id, step_id)
    return answered


def notice_step_end(
    cluster_id: str, step_id: str, state: str, emr: EMRClient, sfn: SFNClient, store: NoticeStore
) -> str:
    """Take the step's token and answer it with the step's end: "answered", "no token" (not ours, or answered
    already), or "task ended" (the waiting task had timed out or its execution stopped)."""
    token = store.token(cluster_id, step_id)
    if token is None:
        return "no token"
    outcome = "answered"
    try:
        if state == "COMPLETED":
            sfn.send_task_success(taskToken=token, output=json.dumps({"StepId": step_id, "State": state}))
        else:
            step = _step_state(emr, cluster_id, step_id)
            sfn.send_task_failure(
                taskToken=token,
                error=f"EMR.Step{state.title()}",
                cause=json.dumps({"Step": step}, default=str)[:32_768],  # SendTaskFailure's cause limit
            )
    except ClientError as exc:
        if error_code(exc) not in GONE_TOKEN_CODES:
            raise
        outcome = "task ended"
    store.remove(cluster_id, step_id)
    return outcome


def _submitted_already(emr: EMRClient, cluster_id: str, name: str, run_started_at: datetime | None) -> str | None:
    """The newest step of that name on the cluster when it is not a failed one (an invocation retried after it added
    the step: wait on that one); None when there is none or it failed (a new attempt: add the step again)."""
    for step in steps_since(emr, cluster_id, run_started_at):
        if step.get("Name") == name:
            state = step.get("Status", {}).get("State")
            return str(step["Id"]) if state in ("PENDING", "RUNNING", "COMPLETED") else None
    return None


def steps_since(emr: EMRClient, cluster_id: str, run_started_at: datetime | None) -> Iterator[dict[str, Any]]:
    """The cluster's steps, newest first, down to the first created before the run started (less `CLOCK_SKEW`): no
    step of the run is older. Every step when `run_started_at` is None.

    ListSteps answers 50 steps a page, newest first, and a long-running cluster keeps up to 1,000 (EMR management
    guide, "Step" quotas), so a busy shared cluster costs one page, not twenty. Newest first holds only without a
    `StepStates` or `StepIds` filter ("in reverse order unless you specify stepIds with the request or filter by
    StepStates", EMR API reference, ListSteps): callers filter states themselves."""
    oldest = run_started_at - CLOCK_SKEW if run_started_at is not None else None
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):  # newest first
        for step in page.get("Steps", []):
            created = step.get("Status", {}).get("Timeline", {}).get("CreationDateTime")
            if oldest is not None and isinstance(created, datetime) and created < oldest:
                return
            yield step


CLOCK_SKEW = timedelta(minutes=5)  # EMR's and Step Functions' clocks, as far apart as we allow


def _step_state(emr: EMRClient, cluster_id: str, step_id: str) -> dict[str, Any]:
    return dict(emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"])
