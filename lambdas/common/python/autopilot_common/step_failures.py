"""Why an EMR-on-EC2 step failed, in the classes `runtime.retry.on` names (the one home of those names).

EMR reports a step's failure (DescribeStep/ListSteps `Status.FailureDetails`: Reason, Message, LogFile) but not
whether the cluster lost capacity under it; that is on the instances: ListInstances gives each instance's `Market`,
`Status.State` and `Status.StateChangeReason` (`Code` is one of INTERNAL_ERROR, VALIDATION_ERROR, INSTANCE_FAILURE,
BOOTSTRAP_FAILURE, CLUSTER_TERMINATED: botocore's emr 2009-03-31 model, `InstanceStateChangeReasonCode`; a reclaimed
spot instance is an INSTANCE_FAILURE, and EC2's own reason codes for it are `Server.SpotInstanceTermination` /
`Server.SpotInstanceShutdown`: EC2 API reference, StateReason). So:

- `spot_interruption`: the step FAILED and a SPOT instance of the cluster ended with INSTANCE_FAILURE (or a
  message naming a spot interruption) while the step ran (from its start to a little after its end: EMR marks the
  instance TERMINATED once EC2 reports it, which may trail the step's failure).
- `step_failure`: any other FAILED step (the job's own error, or one the app cannot attribute).
- `cluster_failure`: the cluster itself ended (TERMINATING/TERMINATED*): nothing can be re-submitted to it.
- `not_failed`: the step ended CANCELLED or INTERRUPTED (cancelled by the app, by a timeout, or by the cluster).

`step_failure` in `retry.on` opts into re-submitting every FAILED step, a spot interruption included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

StepFailureClass = Literal["spot_interruption", "step_failure"]  # what `runtime.retry.on` may name
STEP_FAILURE_CLASSES: tuple[str, ...] = get_args(StepFailureClass)
FailureClass = Literal["spot_interruption", "step_failure", "cluster_failure", "not_failed"]

# How long after a step's end an instance's end still counts as "while the step ran".
SPOT_END_GRACE_SECONDS = 300.0
ENDED_CLUSTER_STATES = {"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"}
_SPOT_WORDS = ("spot", "SpotInstanceTermination", "SpotInstanceShutdown")


@dataclass(frozen=True)
class StepFailure:
    """A failed step's class and the one-line reason the ledger and the workflow carry."""

    failure_class: FailureClass
    reason: str

    def retryable(self, on: list[str]) -> bool:
        """True when `runtime.retry.on` covers this failure (`step_failure` covers every FAILED step)."""
        if self.failure_class == "spot_interruption":
            return bool({"spot_interruption", "step_failure"} & set(on))
        return self.failure_class == "step_failure" and "step_failure" in on


def classify(step: dict[str, Any], cluster_state: str | None, instances: list[dict[str, Any]]) -> StepFailure:
    """The class of one ended step (a ListSteps/DescribeStep `Step`) on a cluster in `cluster_state` (None: the
    cluster's state is not considered, e.g. for an earlier attempt once the run is over), given the cluster's
    instances (ListInstances)."""
    status = step.get("Status") or {}
    state = str(status.get("State"))
    if cluster_state in ENDED_CLUSTER_STATES:
        return StepFailure("cluster_failure", f"step {state}; the cluster is {cluster_state}")
    if state != "FAILED":
        return StepFailure("not_failed", f"step {state}")
    timeline = status.get("Timeline") or {}
    start = _seconds(timeline.get("StartDateTime") or timeline.get("CreationDateTime"))
    end = _seconds(timeline.get("EndDateTime"))
    lost = [i for i in instances if _reclaimed_spot(i) and _ended_within(i, start, end)]
    if lost:
        ids = ", ".join(sorted(str(i.get("Ec2InstanceId") or i.get("Id")) for i in lost))
        reason = (lost[0].get("Status") or {}).get("StateChangeReason") or {}
        detail = reason.get("Message") or reason.get("Code") or "terminated"
        return StepFailure(
            "spot_interruption", f"{len(lost)} spot instance(s) reclaimed while the step ran ({ids}): {detail}"
        )
    failure = status.get("FailureDetails") or {}
    detail = failure.get("Message") or failure.get("Reason") or "no reason given"
    return StepFailure("step_failure", f"step FAILED: {detail}")


def _reclaimed_spot(instance: dict[str, Any]) -> bool:
    status = instance.get("Status") or {}
    if instance.get("Market") != "SPOT" or status.get("State") != "TERMINATED":
        return False
    reason = status.get("StateChangeReason") or {}
    code, message = reason.get("Code"), str(reason.get("Message") or "").lower()
    if code == "CLUSTER_TERMINATED":  # ended with its cluster, not under the step
        return False
    return code == "INSTANCE_FAILURE" or any(w.lower() in message for w in _SPOT_WORDS)


def _ended_within(instance: dict[str, Any], start: float | None, end: float | None) -> bool:
    ended = _seconds(((instance.get("Status") or {}).get("Timeline") or {}).get("EndDateTime"))
    if ended is None or start is None:
        return False
    return start <= ended <= (end if end is not None else ended) + SPOT_END_GRACE_SECONDS


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
