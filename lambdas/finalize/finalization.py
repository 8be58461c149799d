"""Finalize an EMR-on-EC2 run: what EMR knows about it, shaped as the run's ledger update.

The workflow calls this once at the end of every run, after the cluster was terminated (transient)
or the steps ended (long-running cluster). It never decides the run's outcome: the workflow does.
It adds what only EMR knows: the cluster's final state and reason, the fleets (or groups) with the
capacity actually provisioned, every step of the run with its state, timings and log file, and an
instance-hour estimate. On failure it turns the workflow's error into a clear one naming the failed
step (with its log) or the cluster's state-change reason (e.g. BOOTSTRAP_FAILURE); on a long-running
cluster it also cancels the run's steps that are still pending or running, so a failed run leaves
no work behind on a shared cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from autopilot_common.causes import ledger_cause
from autopilot_common.run_costs import (
    ClusterPricing,
    IdleWindows,
    cluster_cost,
    hours_between,
    idle_usage,
    iso_time,
    list_pages,
    timestamp,
)
from autopilot_common.scaling_state import actions as scaling_actions
from autopilot_common.step_failures import classify, cluster_failure_of
from autopilot_common.step_notices import steps_since

if TYPE_CHECKING:
    from mypy_boto3_emr.literals import StepStateType
    from mypy_boto3_emr.type_defs import ClusterTypeDef

    from autopilot_common.clients import DynamoDBClient, EMRClient

ACTIVE_STEP_STATES: list[StepStateType] = ["PENDING", "RUNNING", "CANCEL_PENDING"]
FAILED_STEP_STATES = {"FAILED", "CANCELLED", "INTERRUPTED"}
CLUSTER_ERROR_CODES_OK = {"USER_REQUEST", "ALL_STEPS_COMPLETED"}


@dataclass(frozen=True)
class FinalizeRequest:
    """The workflow's payload (see the `Finalize*` states of statemachines/rendered/emr_ec2_*.asl.json)."""

    outcome: str  # SUCCEEDED | FAILED
    transient: bool
    run_id: str
    pipeline: str
    cluster_id: str | None
    step_names: list[str]
    metrics: Any
    error: dict[str, Any] | None
    # step name -> when the workflow noticed the step's end (its `.sync` task returned), ISO 8601
    noticed: dict[str, str] = field(default_factory=dict)
    # clusters the run launched before `cluster_id` and replaced (runtime.retry): {cluster_id, failure_class, reason}
    earlier: list[dict[str, Any]] = field(default_factory=list)
    # when the workflow asked EMR to terminate the run's cluster (TerminateCluster entered), ISO 8601
    terminate_requested_at: str | None = None
    # when the run's execution started (its ledger entry's `started_at`): no step of the run is older
    run_started_at: datetime | None = None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> FinalizeRequest:
        outcome = event.get("outcome")
        if outcome not in {"SUCCEEDED", "FAILED"}:
            raise ValueError(f"outcome: got {outcome!r}; expected 'SUCCEEDED' or 'FAILED'")
        error = event.get("error")
        return cls(
            outcome=outcome,
            transient=str(event.get("transient", "true")).lower() == "true",
            run_id=str(event["run_id"]),
            pipeline=str(event["pipeline"]),
            cluster_id=event.get("cluster_id") or None,
            step_names=[str(n) for n in event.get("step_names") or []],
            metrics=event.get("metrics"),
            error=error if isinstance(error, dict) else None,
            noticed={
                str(n["name"]): str(n["noticed_at"])
                for n in event.get("step_notices") or []
                if isinstance(n, dict) and n.get("name") and n.get("noticed_at")
            },
            earlier=[dict(e) for e in (event.get("launch") or {}).get("earlier") or [] if isinstance(e, dict)],
            terminate_requested_at=_termination_requested(event.get("cluster")),
            run_started_at=_run_started_at(event.get("ledger")),
        )


@dataclass(frozen=True)
class ScalingState:
    """Where the scaler stores each cluster's actions (`STATE_TABLE`): the ledger's `scaling.actions`."""

    dynamodb: DynamoDBClient
    table: str


def finalize_run(
    request: FinalizeRequest,
    emr: EMRClient,
    now: datetime | None = None,
    *,
    scaling: ScalingState | None = None,
    pricing: ClusterPricing | None = None,
) -> dict[str, Any]:
    """The ledger update for the run (merged by the workflow into the STARTED record).

    With `scaling`, the update carries `scaling.actions`: every step the scaler took on the run's cluster
    (the workflow's final write replaces the entry the scaler amended while the run went on). With `pricing`, a
    transient cluster's run carries `cost`: what its instances cost from launch to the end (a shared cluster's
    cost is not the run's to carry: `cost` stays null)."""
    now = now or datetime.now(UTC)
    update = ledger_update(
        request.outcome,
        now,
        request.metrics,
        cluster_id=request.cluster_id,
        cluster=None,
        steps=[],
        instance_hours_estimate=None,
        cost=None,  # a shared cluster's cost is its owner's (and a run that launched no cluster cost nothing)
    )
    cancelled: list[str] = []
    if request.cluster_id is not None:
        if request.outcome == "FAILED" and not request.transient:
            cancelled = _cancel_active_steps(emr, request.cluster_id, request.step_names)
        cluster = emr.describe_cluster(ClusterId=request.cluster_id)["Cluster"]
        update["cluster"] = _cluster_summary(emr, cluster)
        earlier = [emr.describe_cluster(ClusterId=str(e["cluster_id"]))["Cluster"] for e in request.earlier]
        launched = [*earlier, cluster]
        instances = (
            {c["Id"]: list_pages(emr, "list_instances", "Instances", c["Id"]) for c in launched}
            if request.transient
            else None
        )
        since = None if request.transient else request.run_started_at  # a transient cluster holds the run's steps only
        update["steps"] = _steps(
            emr, [c["Id"] for c in launched], request.step_names, request.noticed, instances, since
        )
        windows, between, after = idle_windows(update["steps"], cluster["Id"], request.terminate_requested_at)
        update["idle_cluster_seconds"] = round(between + (after or 0.0), 3)
        update["idle"] = {
            "between_steps_seconds": round(between, 3),
            "after_last_step_seconds": after,
            "instance_seconds": None,
            "usd": None,
        }
        if instances is not None:
            update["cluster_attempts"] = _cluster_attempts(request, launched)
            every = [i for c in launched for i in instances[c["Id"]]]
            update["instance_hours_estimate"] = _instancehours_between(emr, cluster, every, now)
            billed = [(c, instances[c["Id"]]) for c in launched]
            if pricing is not None:
                update["cost"] = cluster_cost(pricing, emr, billed, now)
            instance_seconds, usd = idle_usage(pricing, billed, windows, now)
            update["idle"] |= {"instance_seconds": instance_seconds, "usd": usd}
        if scaling is not None:
            done = [a for c in launched for a in scaling_actions(scaling.dynamodb, scaling.table, c["Id"])]
            if done:
                update["scaling"] = {"actions": done}
    if cancelled:
        update["cancelled_steps"] = cancelled
    if request.outcome == "FAILED":
        error, cause, failed_step = _failure(request, update)
        update |= {"error": error, "cause": ledger_cause(error, cause), "failed_step": failed_step}
    return update


def ledger_update(outcome: str, now: datetime, metrics: Any, **fields: Any) -> dict[str, Any]:
    """What every runtime's final update starts with: the outcome, when it ended, `fields`, and the job's metrics
    when it succeeded."""
    update: dict[str, Any] = {"state": outcome, "ended_at": iso_time(now), **fields}
    if outcome == "SUCCEEDED":
        update["metrics"] = metrics
    return update


# ---------------------------------------------------------------------------------------- cluster


def _cluster_attempts(request: FinalizeRequest, launched: list[ClusterTypeDef]) -> list[dict[str, Any]]:
    """Every cluster the run launched, in order: the ones runtime.retry replaced with the class of their failure
    (as ClassifyClusterFailure found it), then the last one (its class when it failed)."""
    out = []
    for number, cluster in enumerate(launched, start=1):
        status = cluster.get("Status", {})
        reason = status.get("StateChangeReason", {})
        timeline = status.get("Timeline", {})
        if number <= len(request.earlier):
            failure_class = request.earlier[number - 1].get("failure_class")
        elif request.outcome == "FAILED" and status.get("State") == "TERMINATED_WITH_ERRORS":
            failure_class = cluster_failure_of(dict(status)).failure_class
        else:
            failure_class = None
        out.append(
            {
                "attempt": number,
                "cluster_id": cluster["Id"],
                "state": status.get("State"),
                "reason_code": reason.get("Code"),
                "reason": reason.get("Message"),
                "failure_class": failure_class,
                "created_at": iso_time(timeline.get("CreationDateTime")),
                "ended_at": iso_time(timeline.get("EndDateTime")),
            }
        )
    return out


def _cluster_summary(emr: EMRClient, cluster: ClusterTypeDef) -> dict[str, Any]:
    status = cluster.get("Status", {})
    reason = status.get("StateChangeReason", {})
    timeline = status.get("Timeline", {})
    summary: dict[str, Any] = {
        "id": cluster["Id"],
        "name": cluster.get("Name"),
        "state": status.get("State"),
        "state_change_reason": {"code": reason.get("Code"), "message": reason.get("Message")},
        "created_at": iso_time(timeline.get("CreationDateTime")),
        "ready_at": iso_time(timeline.get("ReadyDateTime")),
        "ended_at": iso_time(timeline.get("EndDateTime")),
        "release_label": cluster.get("ReleaseLabel"),
        "log_uri": cluster.get("LogUri"),
        "normalized_instance_hours": cluster.get("NormalizedInstanceHours"),
    }
    if cluster.get("InstanceCollectionType") == "INSTANCE_GROUP":
        summary["groups"] = [
            _group(g) for g in list_pages(emr, "list_instance_groups", "InstanceGroups", cluster["Id"])
        ]
    else:
        summary["fleets"] = [
            _fleet(f) for f in list_pages(emr, "list_instance_fleets", "InstanceFleets", cluster["Id"])
        ]
    return summary


def _fleet(fleet: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": fleet.get("Name"),
        "type": fleet.get("InstanceFleetType"),
        "state": fleet.get("Status", {}).get("State"),
        "target_on_demand": fleet.get("TargetOnDemandCapacity", 0),
        "target_spot": fleet.get("TargetSpotCapacity", 0),
        "provisioned_on_demand": fleet.get("ProvisionedOnDemandCapacity", 0),
        "provisioned_spot": fleet.get("ProvisionedSpotCapacity", 0),
        "instance_types": [
            {"type": spec.get("InstanceType"), "weight": spec.get("WeightedCapacity", 1)}
            for spec in fleet.get("InstanceTypeSpecifications", [])
        ],
    }


def _group(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": group.get("Name"),
        "type": group.get("InstanceGroupType"),
        "market": group.get("Market"),
        "instance_type": group.get("InstanceType"),
        "requested": group.get("RequestedInstanceCount", 0),
        "running": group.get("RunningInstanceCount", 0),
        "state": group.get("Status", {}).get("State"),
    }


def _instancehours_between(
    emr: EMRClient, cluster: ClusterTypeDef, instances: list[dict[str, Any]], now: datetime
) -> dict[str, Any] | None:
    """Instance-hours from each instance's lifetime; else provisioned units x the cluster's lifetime."""
    total = 0.0
    for instance in instances:
        timeline = instance.get("Status", {}).get("Timeline", {})
        start = timeline.get("ReadyDateTime") or timeline.get("CreationDateTime")
        if start is not None:
            total += hours_between(start, timeline.get("EndDateTime") or now)
    if instances and total > 0:
        return {"instance_hours": round(total, 3), "method": "instance lifetimes", "instances": len(instances)}
    timeline = cluster.get("Status", {}).get("Timeline", {})
    start = timeline.get("ReadyDateTime") or timeline.get("CreationDateTime")
    if start is None:
        return None
    units = sum(
        f.get("ProvisionedOnDemandCapacity", 0) + f.get("ProvisionedSpotCapacity", 0)
        for f in list_pages(emr, "list_instance_fleets", "InstanceFleets", cluster["Id"])
    ) if cluster.get("InstanceCollectionType") != "INSTANCE_GROUP" else sum(
        g.get("RunningInstanceCount", 0)
        for g in list_pages(emr, "list_instance_groups", "InstanceGroups", cluster["Id"])
    )  # fmt: skip
    hours = hours_between(start, timeline.get("EndDateTime") or now)
    return {"instance_hours": round(units * hours, 3), "method": "provisioned units x cluster lifetime"}


# ------------------------------------------------------------------------------------------ steps


def _steps(
    emr: EMRClient,
    cluster_ids: list[str],
    names: list[str],
    noticed: dict[str, str],
    instances: dict[str, list[dict[str, Any]]] | None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """One record per step of the run, in order: its last submission, with `attempts` listing every submission
    (runtime.retry re-submits a failed step under the same name, and a replaced cluster's steps run again on the
    next), each with its cluster and the class of its failure (`instances`: each cluster's, read here when None and
    a submission failed). With `since` (the run's start, on a shared cluster), the cluster's steps are read newest
    first down to the run's start only (`steps_since`): a busy shared cluster keeps up to 1,000 steps."""
    wanted = set(names)
    found: list[tuple[str, dict[str, Any]]] = []
    for cluster_id in cluster_ids:
        listed = steps_since(emr, cluster_id, since) if since else list_pages(emr, "list_steps", "Steps", cluster_id)
        steps = [s for s in listed if not wanted or s.get("Name") in wanted]
        steps.sort(key=lambda s: timestamp(s.get("Status", {}).get("Timeline", {}).get("CreationDateTime")))
        if instances is None and any(s.get("Status", {}).get("State") == "FAILED" for s in steps):
            instances = {cluster_id: list_pages(emr, "list_instances", "Instances", cluster_id)}
        found.extend((cluster_id, s) for s in steps)
    by_name: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for cluster_id, step in found:
        by_name.setdefault(str(step.get("Name")), []).append((cluster_id, step))
    records = []
    for name, submissions in by_name.items():
        record = _step(submissions[-1][1], noticed.get(name))
        record["attempts"] = [
            _attempt(n, s, (instances or {}).get(cid, []), cid) for n, (cid, s) in enumerate(submissions, start=1)
        ]
        records.append(record)
    return records


def _attempt(number: int, step: dict[str, Any], instances: list[dict[str, Any]], cluster_id: str) -> dict[str, Any]:
    """One submission of a step for the ledger: its cluster, state, times, and why it failed (its class,
    step_failures)."""
    status = step.get("Status", {})
    timeline = status.get("Timeline", {})
    state = status.get("State")
    failure = classify(step, None, instances) if state in FAILED_STEP_STATES else None
    return {
        "attempt": number,
        "step_id": step.get("Id"),
        "cluster_id": cluster_id,
        "state": state,
        "failure_class": failure.failure_class if failure else None,
        "reason": failure.reason if failure else None,
        "started_at": iso_time(timeline.get("StartDateTime")),
        "ended_at": iso_time(timeline.get("EndDateTime")),
    }


def _step(step: dict[str, Any], noticed_at: str | None = None) -> dict[str, Any]:
    """One step for the ledger. `noticed_at` (when the workflow's `.sync` task saw the step end) sits beside EMR's
    `ended_at`: `notice_delay_seconds` is how long the cluster waited for the workflow to notice."""
    status = step.get("Status", {})
    timeline = status.get("Timeline", {})
    failure = status.get("FailureDetails") or {}
    started, ended = timeline.get("StartDateTime"), timeline.get("EndDateTime")
    delay = round(timestamp(noticed_at) - timestamp(ended), 3) if noticed_at and ended else None
    return {
        "id": step.get("Id"),
        "name": step.get("Name"),
        "state": status.get("State"),
        "started_at": iso_time(started),
        "ended_at": iso_time(ended),
        "noticed_at": iso_time(noticed_at) if noticed_at else None,
        "notice_delay_seconds": delay,
        "duration_seconds": round(hours_between(started, ended) * 3600, 1) if started and ended else None,
        "reason": (status.get("StateChangeReason") or {}).get("Message"),
        "failure": {k.lower(): v for k, v in failure.items()} or None,
    }


def idle_windows(
    steps: list[dict[str, Any]], last_cluster_id: str, terminate_requested_at: str | None
) -> tuple[IdleWindows, float, float | None]:
    """(each cluster's windows with no step of the run running, seconds between steps, seconds after the last step).

    Between steps: from a submission's end to the next submission's start on the same cluster (the workflow noticing
    the end, then adding the next step). After the last step: from the end of the last submission on the run's last
    cluster to the moment the workflow asked EMR to terminate it, after success or failure (None when it did not: a
    long-running cluster)."""
    by_cluster: dict[str, list[tuple[float, float]]] = {}
    for step in steps:
        for attempt in step.get("attempts") or []:
            started, ended = attempt.get("started_at"), attempt.get("ended_at")
            if started and ended:
                by_cluster.setdefault(str(attempt["cluster_id"]), []).append((timestamp(started), timestamp(ended)))
    windows: dict[str, list[tuple[float, float]]] = {}
    between = 0.0
    for cluster_id, spans in by_cluster.items():
        spans.sort()
        for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
            if started > ended:
                windows.setdefault(cluster_id, []).append((ended, started))
                between += started - ended
    after = None
    last = by_cluster.get(last_cluster_id)
    if last and terminate_requested_at:
        last_end, requested = max(end for _, end in last), timestamp(terminate_requested_at)
        after = round(max(0.0, requested - last_end), 3)
        if requested > last_end:
            windows.setdefault(last_cluster_id, []).append((last_end, requested))
    return windows, between, after


def _run_started_at(ledger: Any) -> datetime | None:
    """The ledger entry's `started_at` ($$.Execution.StartTime, ISO 8601), or None when absent or unreadable (then a
    shared cluster's steps are all read, as before)."""
    started = ledger.get("started_at") if isinstance(ledger, dict) else None
    try:
        when = datetime.fromisoformat(str(started).replace("Z", "+00:00")) if started else None
    except ValueError:
        return None
    return when if when is None or when.tzinfo is not None else None


def _termination_requested(cluster: Any) -> str | None:
    """TerminateCluster's (or TerminateAfterFailure's) `requested_at` under the workflow's cluster: its ResultSelector
    reads `$$.State.EnteredTime` (JSONPath states may read the Context object from ResultSelector: Step Functions
    developer guide, "Accessing execution data from the Context object")."""
    termination = cluster.get("termination") if isinstance(cluster, dict) else None
    requested = termination.get("requested_at") if isinstance(termination, dict) else None
    return str(requested) if requested else None


def _cancel_active_steps(emr: EMRClient, cluster_id: str, names: list[str]) -> list[str]:
    """Cancel the run's pending and running steps on a shared cluster. Reads the cluster's active steps only (EMR
    allows 256 PENDING and RUNNING steps a cluster: at most 6 pages, however many steps the cluster ran)."""
    wanted = set(names)
    active = [
        s["Id"]
        for s in list_pages(emr, "list_steps", "Steps", cluster_id, StepStates=ACTIVE_STEP_STATES)
        if s.get("Name") in wanted
    ]
    if active:
        emr.cancel_steps(ClusterId=cluster_id, StepIds=active, StepCancellationOption="SEND_INTERRUPT")
    return active


# ---------------------------------------------------------------------------------------- failure


def _failure(request: FinalizeRequest, update: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(error, cause, failed step): the failed step first, then the cluster's reason, then the workflow's error."""
    error = request.error or {}
    original_error = str(error.get("Error") or "States.Runtime")
    original_cause = str(error.get("Cause") or "")
    failed = next((s for s in update["steps"] if s["state"] == "FAILED"), None)
    if failed is not None:
        failure = failed["failure"] or {}
        detail = failure.get("message") or failure.get("reason") or failed["reason"] or "no reason given"
        log = failure.get("logfile")
        cause = f"step {failed['name']!r} ({failed['id']}) FAILED: {detail}" + (f"; log: {log}" if log else "")
        return "StepFailed", cause, failed
    cluster = update.get("cluster") or {}
    reason = cluster.get("state_change_reason") or {}
    if cluster.get("state") == "TERMINATED_WITH_ERRORS" and reason.get("code") not in CLUSTER_ERROR_CODES_OK:
        cause = f"cluster {cluster['id']} TERMINATED_WITH_ERRORS: {reason.get('code')}: {reason.get('message')}"
        return "ClusterFailed", cause, None
    unfinished = next((s for s in update["steps"] if s["state"] in FAILED_STEP_STATES), None)
    if unfinished is not None and original_error == "States.Timeout":
        original_cause = f"step {unfinished['name']!r} ({unfinished['id']}) did not finish in time. {original_cause}"
    return original_error, original_cause, unfinished


# ---------------------------------------------------------------------------------------- helpers


__all__ = ["ClusterPricing", "FinalizeRequest", "finalize_run", "iso_time", "list_pages", "timestamp"]
