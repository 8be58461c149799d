"""EMR-on-EC2 retries (`runtime.retry`), asked by the transient and existing-cluster workflows mid-run:

- `ClassifyStepFailure` (`classify_step_failure`), only when a step failed with attempts left: is the step submitted
  again? The failed submission is the newest step of that name on the cluster (every attempt of a step shares its
  name: `<run_id>: <step>`). Its class (autopilot_common.step_failures) comes from the step, the cluster's state and
  its instances: a step is re-submitted when the class is one of the pipeline's `retry.when` and the cluster still
  runs.
- `ClassifyClusterFailure` (`classify_cluster_failure`), only when a transient run's steps failed and it may launch
  another cluster: did the cluster end for a class in `retry.when` (bootstrap_failure, capacity)? If so the answer
  carries the next launch: one attempt later, resuming at the first of the run's steps this cluster did not
  complete, with this cluster in `earlier` (finalize lists and prices every cluster of the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autopilot_common.step_failures import StepFailure, classify, cluster_failure_of
from finalization import list_pages, timestamp

if TYPE_CHECKING:
    from autopilot_common.clients import EMRClient

CLASSIFY_ACTION = "classify_step_failure"
CLUSTER_ACTION = "classify_cluster_failure"
LAUNCH_FIELDS = ("attempt", "max_attempts", "resume_from", "startup_seconds", "retry_when", "earlier")


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


@dataclass(frozen=True)
class RelaunchQuestion:
    """The `ClassifyClusterFailure` payload (statemachines/fragments/emr_ec2_transient.json): the failed cluster, the
    run's step names in order, and the run's current launch (stacks.emr_ec2_spec.launch_settings)."""

    cluster_id: str
    step_names: list[str]
    launch: dict[str, Any]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RelaunchQuestion:
        launch = event.get("launch")
        missing = [k for k in LAUNCH_FIELDS if not isinstance(launch, dict) or k not in launch]
        if not event.get("cluster_id") or not isinstance(event.get("step_names"), list) or missing:
            raise ValueError(
                f"{CLUSTER_ACTION}: needs cluster_id, step_names and launch with {', '.join(LAUNCH_FIELDS)}; "
                f"missing {missing or 'cluster_id/step_names'}"
            )
        assert isinstance(launch, dict)
        return cls(str(event["cluster_id"]), [str(n) for n in event["step_names"]], dict(launch))


def classify_failed_cluster(question: RelaunchQuestion, emr: EMRClient) -> dict[str, Any]:
    """{relaunch, failure_class, reason, launch}: `relaunch` is true only when the cluster ended for a class in
    `launch.retry_when` with launches left; `launch` is then the next one, else the current one unchanged."""
    launch = question.launch
    status = emr.describe_cluster(ClusterId=question.cluster_id)["Cluster"].get("Status", {})
    failure = cluster_failure_of(dict(status))
    attempt = int(launch["attempt"])
    relaunch = attempt < int(launch["max_attempts"]) and failure.relaunchable(list(launch["retry_when"]))
    answer: dict[str, Any] = {
        "relaunch": relaunch,
        "failure_class": failure.failure_class,
        "reason": failure.reason,
        "launch": launch,
    }
    if relaunch:
        completed = {
            s.get("Name") for s in list_pages(emr, "list_steps", "Steps", question.cluster_id, StepStates=["COMPLETED"])
        }
        resume = int(launch["resume_from"])
        while resume < len(question.step_names) and question.step_names[resume] in completed:
            resume += 1
        earlier = {"cluster_id": question.cluster_id, "failure_class": failure.failure_class, "reason": failure.reason}
        answer["launch"] = {
            **launch,
            "attempt": attempt + 1,
            "resume_from": resume,
            "earlier": [*launch["earlier"], earlier],
        }
    return answer
