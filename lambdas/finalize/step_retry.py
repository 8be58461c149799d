"""EMR-on-EC2 step retry: whether a failed step is submitted again (`runtime.retry`), asked by the workflow's
`ClassifyStepFailure` state only when a step failed with attempts left.

The failed submission is the newest step of that name on the cluster (every attempt of a step shares its name:
`<run_id>: <step>`). Its class (autopilot_common.step_failures) comes from the step, the cluster's state and its
instances: a step is re-submitted when the class is one of the pipeline's `retry.when` and the cluster still runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autopilot_common.step_failures import StepFailure, classify
from finalization import list_pages, timestamp

if TYPE_CHECKING:
    from autopilot_common.clients import EMRClient

CLASSIFY_ACTION = "classify_step_failure"


@dataclass(frozen=True)
class RetryQuestion:
    """The `ClassifyStepFailure` payload (statemachines/fragments/emr_ec2.json)."""

    cluster_id: str
    step_name: str
    attempt: int
    max_attempts: int
    retry_when: list[str]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RetryQuestion:
        for key in ("cluster_id", "step_name", "attempt", "max_attempts"):
            if event.get(key) in (None, ""):
                raise ValueError(f"{key}: missing from the {CLASSIFY_ACTION} request; expected the workflow to send it")
        return cls(
            cluster_id=str(event["cluster_id"]),
            step_name=str(event["step_name"]),
            attempt=int(event["attempt"]),
            max_attempts=int(event["max_attempts"]),
            retry_when=[str(c) for c in event.get("retry_when") or []],
        )


def classify_failed_step(question: RetryQuestion, emr: EMRClient) -> dict[str, Any]:
    """{retry, failure_class, reason, step_id, attempt}: `retry` is true only for a failure of a class in
    `retry_when` with attempts left (attempt < max_attempts)."""
    name = question.step_name
    submissions = [s for s in list_pages(emr, "list_steps", "Steps", question.cluster_id) if s.get("Name") == name]
    if not submissions:
        return _answer(False, "not_failed", f"no step named {name!r} on {question.cluster_id}", None, question)
    step = max(submissions, key=lambda s: timestamp(s.get("Status", {}).get("Timeline", {}).get("CreationDateTime")))
    failure = step_failure(emr, question.cluster_id, step)
    retry = question.attempt < question.max_attempts and failure.retryable(question.retry_when)
    return _answer(retry, failure.failure_class, failure.reason, step.get("Id"), question)


def step_failure(emr: EMRClient, cluster_id: str, step: dict[str, Any]) -> StepFailure:
    """The class of one ended step, from the cluster's state now and its instances."""
    state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"].get("Status", {}).get("State")
    return classify(step, state, list_pages(emr, "list_instances", "Instances", cluster_id))


def _answer(retry: bool, failure_class: str, reason: str, step_id: Any, question: RetryQuestion) -> dict[str, Any]:
    return {
        "retry": retry,
        "failure_class": failure_class,
        "reason": reason,
        "step_id": step_id,
        "attempt": question.attempt,
    }
