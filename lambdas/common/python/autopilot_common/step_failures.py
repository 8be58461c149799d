"""Why an EMR-on-EC2 step or cluster failed, in the classes `runtime.retry.when` names (the one home of those
names).

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
- `not_failed`: the step ended CANCELLED or INTERRUPTED (cancelled by the app, by a timeout, or by the cluster).

When the cluster itself ended (TERMINATING/TERMINATED*), nothing can be re-submitted to it; its class comes from the
cluster's `Status` (DescribeCluster): `StateChangeReason.Code` is one of botocore's `ClusterStateChangeReasonCode`
(INTERNAL_ERROR, VALIDATION_ERROR, INSTANCE_FAILURE, INSTANCE_FLEET_TIMEOUT, BOOTSTRAP_FAILURE, USER_REQUEST,
STEP_FAILURE, ALL_STEPS_COMPLETED) and `ErrorDetails[].ErrorCode` refines it (EMR Management Guide, "Error codes with
ErrorDetail information": e.g. INTERNAL_ERROR_EC2_INSUFFICIENT_CAPACITY_AZ, INTERNAL_ERROR_SPOT_NO_CAPACITY_PRIMARY,
BOOTSTRAP_FAILURE_PRIMARY_WITH_NON_ZERO_CODE). So:

- `bootstrap_failure`: the cluster ended with BOOTSTRAP_FAILURE (a bootstrap action failed on an instance).
- `capacity`: EC2 could not provide the instances: INSTANCE_FLEET_TIMEOUT (a fleet's spot or on-demand target was not
  provisioned in its timeout), an ErrorDetail code naming INSUFFICIENT_CAPACITY or NO_CAPACITY, or a reason whose
  message says EC2 has insufficient capacity.
- `cluster_failure`: any other end of the cluster.

A run whose cluster ended with `bootstrap_failure` or `capacity`, with those classes in `retry.when` and launches left,
gets a new cluster that resumes at the step that did not complete (`finalize.cluster_retry`). `step_failure` in
`retry.when` opts into re-submitting every FAILED step, a spot interruption included; it never relaunches a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

StepFailureClass = Literal["spot_interruption", "step_failure"]  # retried by re-submitting the step
ClusterFailureClass = Literal["bootstrap_failure", "capacity"]  # retried on a new cluster
RetryClass = Literal["spot_interruption", "step_failure", "bootstrap_failure", "capacity"]  # `runtime.retry.when`
STEP_FAILURE_CLASSES: tuple[str, ...] = get_args(StepFailureClass)
CLUSTER_FAILURE_CLASSES: tuple[str, ...] = get_args(ClusterFailureClass)
RETRY_CLASSES: tuple[str, ...] = get_args(RetryClass)
FailureClass = Literal[
    "spot_interruption", "step_failure", "bootstrap_failure", "capacity", "cluster_failure", "not_failed"
]

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
        """True when `runtime.retry.when` covers this step failure by re-submitting the step (`step_failure` covers
        every FAILED step)."""
        if self.failure_class == "spot_interruption":
            return bool({"spot_interruption", "step_failure"} & set(on))
        return self.failure_class == "step_failure" and "step_failure" in on

    def relaunchable(self, on: list[str]) -> bool:
        """True when `runtime.retry.when` covers this cluster failure with a new cluster."""
        return self.failure_class in CLUSTER_FAILURE_CLASSES and self.failure_class in on


def classify(step: dict[str, Any], cluster_state: str | None, instances: list[dict[str, Any]]) -> StepFailure:
    """The class of one ended step (a ListSteps/DescribeStep `Step`) on a cluster in `cluster_state` (None: the
    cluster's state is not considered, e.g. for an earlier attempt once the run is over), given the cluster's
    instances (ListInstances). A step on an ended cluster is a `cluster_failure`: `cluster_failure_of` tells why the
    cluster ended."""
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


_CAPACITY_CODES = ("INSUFFICIENT_CAPACITY", "NO_CAPACITY")
_CAPACITY_WORDS = ("insufficient capacity", "insufficient spot capacity", "insufficient instance capacity")


def cluster_failure_of(cluster_status: dict[str, Any]) -> StepFailure:
    """Why a cluster ended, from DescribeCluster's `Cluster.Status`: `bootstrap_failure`, `capacity` or
    `cluster_failure` (also for a cluster still running: then nothing about it is retryable as a cluster)."""
    state = str(cluster_status.get("State"))
    reason = cluster_status.get("StateChangeReason") or {}
    code, message = str(reason.get("Code") or ""), str(reason.get("Message") or "")
    details = [str(d.get("ErrorCode") or "") for d in cluster_status.get("ErrorDetails") or []]
    said = f"cluster {state}: {code or 'no code'}: {message or 'no message'}"
    if state not in ENDED_CLUSTER_STATES:
        return StepFailure("cluster_failure", f"cluster {state}")
    if code == "BOOTSTRAP_FAILURE" or any(d.startswith("BOOTSTRAP_FAILURE") for d in details):
        return StepFailure("bootstrap_failure", said)
    lowered = message.lower()
    if (
        code == "INSTANCE_FLEET_TIMEOUT"
        or any(word in d for d in details for word in _CAPACITY_CODES)
        or any(word in lowered for word in _CAPACITY_WORDS)
    ):
        return StepFailure("capacity", said)
    return StepFailure("cluster_failure", said)


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
