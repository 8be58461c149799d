"""What EMR knows about the compute a run used, and what it cost: one home for the finalize function (every run's
end) and the guardrail (a run aborted or timed out, which never reaches finalize).

- EMR on EC2 (`cluster_cost`): every instance of every cluster the run launched, from launch (CreationDateTime: EC2
  bills from launch) to its end (or now, for one still terminating), by type and market, with the EBS volumes its
  fleet or group attached; spot instances at the mean DescribeSpotPriceHistory price of their type in the cluster's
  zone over their lifetime when EC2 answers, else at on-demand (flagged).
- EMR Serverless (`serverless_job_run`): GetJobRun's `billedResourceUtilization` at the application's
  architecture's rates. A job run retried under its retry policy bills every attempt: GetJobRun answers one attempt
  ("defaults to the attempt of the latest job", botocore GetJobRunRequest.attempt), so each earlier attempt is read
  with `attempt=n` and the cost is that of the summed usage of all attempts.
- EMR on EKS (`eks_job_run`): DescribeJobRun reports no usage, so the cost is an estimate: the vCPU and memory the
  job's pods request (its spark-submit parameters and `spark-defaults`, Spark's defaults when unset) x the job run's
  duration (createdAt -> finishedAt, which spans every driver attempt), at the EMR on EKS rates; the EKS nodes are
  not included. DescribeJobRun reports only the attempt count (`retryPolicyExecution.currentAttemptCount`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from autopilot_common.ledger import JobRunAttempt
from autopilot_common.pricing import (
    Cost,
    InstanceUsage,
    Market,
    MissingPrice,
    PriceTable,
    ec2_cost,
    eks_cost,
    serverless_cost,
    unpriced,
)
from autopilot_common.spark_resources import eks_pods

if TYPE_CHECKING:
    from mypy_boto3_emr.type_defs import ClusterTypeDef

    from autopilot_common.clients import EC2Client, EMRClient, EMRContainersClient, EMRServerlessClient

JobRuntime = Literal["emr-serverless", "emr-eks"]
JOB_RUNTIMES: tuple[JobRuntime, ...] = ("emr-serverless", "emr-eks")
SERVERLESS_TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}
EKS_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
_Listing = Literal["list_instance_fleets", "list_instance_groups", "list_instances", "list_steps"]  # what _pages walks


@dataclass(frozen=True)
class JobRunRef:
    """One job run: its runtime, id, container (EMR Serverless application or EMR on EKS virtual cluster) and, for
    EMR Serverless, the application's architecture (X86_64 | ARM64: from config at synth)."""

    runtime: JobRuntime
    job_run_id: str
    container_id: str
    architecture: str = "X86_64"


@dataclass(frozen=True)
class JobRunClients:
    """The service client of each job-run runtime (only the run's own is called)."""

    emr_serverless: EMRServerlessClient
    emr_containers: EMRContainersClient


def job_run_record(
    ref: JobRunRef, clients: JobRunClients, table: PriceTable, region: str, now: datetime
) -> tuple[dict[str, Any] | None, list[JobRunAttempt] | None, Cost]:
    """(the job run as the service reports it, its attempts, its cost); a job run the function cannot read gives
    `(None, None, cost with usd null and the reason)`."""
    try:
        if ref.runtime == "emr-serverless":
            return serverless_job_run(ref, clients.emr_serverless, table, region)
        return eks_job_run(ref, clients.emr_containers, table, region, now)
    except ClientError as exc:  # throttled past retries, or refused: the run's record still ends, the cost says why
        error = exc.response.get("Error", {})
        action = "GetJobRun" if ref.runtime == "emr-serverless" else "DescribeJobRun"
        return None, None, unpriced(table, f"{action} failed: {error.get('Code')}: {error.get('Message')}")


def launched_clusters(emr: EMRClient, cluster_ids: Iterable[str]) -> list[tuple[ClusterTypeDef, list[dict[str, Any]]]]:
    """Each cluster (DescribeCluster) with its instances (ListInstances), in the order given."""
    return [
        (emr.describe_cluster(ClusterId=cid)["Cluster"], list_pages(emr, "list_instances", "Instances", cid))
        for cid in cluster_ids
    ]


# ------------------------------------------------------------------------------------------ EMR on EC2


@dataclass(frozen=True)
class ClusterPricing:
    """What a transient cluster's cost needs: the price table, the region, and EC2 for spot price history (None,
    or a call refused: spot instances are priced at on-demand and the cost says so)."""

    table: PriceTable
    region: str
    ec2: EC2Client | None = None


def cluster_cost(
    pricing: ClusterPricing,
    emr: EMRClient,
    launched: list[tuple[ClusterTypeDef, list[dict[str, Any]]]],
    now: datetime,
) -> Cost:
    """Every instance of every cluster the run launched (runtime.retry may replace a failed one), from launch
    (CreationDateTime: EC2 bills from launch) to its end, by type and market, with the EBS volumes its fleet or group
    attached; spot instances at the spot price of their type in the cluster's zone over their lifetime when EC2
    answers DescribeSpotPriceHistory, else at on-demand (flagged)."""
    if not any(instances for _, instances in launched):
        return unpriced(pricing.table, "ListInstances returned no instances for the run's cluster")
    usage = []
    for cluster, instances in launched:
        volumes = _volumes(emr, cluster)
        zone = cluster.get("Ec2InstanceAttributes", {}).get("Ec2AvailabilityZone")
        spot_prices: dict[str, float | None] = {}
        for instance in instances:
            timeline = instance.get("Status", {}).get("Timeline", {})
            start = timeline.get("CreationDateTime")
            if start is None:
                continue  # never launched: nothing billed
            end = timeline.get("EndDateTime") or now
            instance_type = str(instance.get("InstanceType"))
            market: Market = "SPOT" if instance.get("Market") == "SPOT" else "ON_DEMAND"
            spot = None
            if market == "SPOT":
                if instance_type not in spot_prices:
                    spot_prices[instance_type] = _spot_price(pricing.ec2, instance_type, zone, start, end)
                spot = spot_prices[instance_type]
            owner = instance.get("InstanceFleetId") or instance.get("InstanceGroupId") or ""
            ebs = volumes.get((owner, instance_type), ())
            seconds = timestamp(end) - timestamp(start)
            usage.append(InstanceUsage(instance_type, market, seconds, ebs=ebs, spot_hour=spot))
    cost = ec2_cost(pricing.table, pricing.region, usage)
    notes = cost.setdefault("notes", [])
    notes.append(
        "root volumes and data transfer are not included; EBS is the volumes EMR attached per the fleet or group"
    )
    if len(launched) > 1:
        replaced = len(launched) - 1
        notes.append(f"{len(launched)} clusters: runtime.retry replaced {replaced} that failed; all are counted")
    return cost


IdleWindows = Mapping[str, list[tuple[float, float]]]  # cluster id -> [(start, end)] epoch seconds with no step running


def idle_usage(
    pricing: ClusterPricing | None,
    launched: list[tuple[ClusterTypeDef, list[dict[str, Any]]]],
    windows: IdleWindows,
    now: datetime,
) -> tuple[float, float | None]:
    """(instance-seconds, dollars) the clusters' instances spent inside the idle `windows`: each instance's lifetime
    (launch to end) overlapping each window of its cluster, at its EC2 (spot price as `cluster_cost` finds it) + EMR
    hourly rate, per second with no per-instance minimum (the windows are part of a billed lifetime; EBS not
    included). Dollars are None without `pricing` or when a type has no price."""
    instance_seconds, usd = 0.0, 0.0
    priced = pricing is not None
    for cluster, instances in launched:
        cluster_windows = windows.get(cluster["Id"]) or []
        zone = cluster.get("Ec2InstanceAttributes", {}).get("Ec2AvailabilityZone")
        for instance in instances:
            timeline = instance.get("Status", {}).get("Timeline", {})
            if timeline.get("CreationDateTime") is None:
                continue  # never launched
            alive = (timestamp(timeline["CreationDateTime"]), timestamp(timeline.get("EndDateTime") or now))
            seconds = sum(max(0.0, min(end, alive[1]) - max(start, alive[0])) for start, end in cluster_windows)
            if seconds <= 0:
                continue
            instance_seconds += seconds
            if pricing is None:
                continue
            instance_type = str(instance.get("InstanceType"))
            try:
                prices = pricing.table.instance(pricing.region, instance_type)
            except MissingPrice:
                priced = False
                continue
            spot = None
            if instance.get("Market") == "SPOT":
                spot = _spot_price(pricing.ec2, instance_type, zone, *_as_datetimes(alive))
            usd += seconds / 3600 * ((spot if spot is not None else prices["ec2_hour"]) + prices["emr_hour"])
    return round(instance_seconds, 3), (round(usd, 6) if priced else None)


def _as_datetimes(span: tuple[float, float]) -> tuple[datetime, datetime]:
    return datetime.fromtimestamp(span[0], UTC), datetime.fromtimestamp(span[1], UTC)


def _volumes(emr: EMRClient, cluster: ClusterTypeDef) -> dict[tuple[str, str], tuple[tuple[str, float], ...]]:
    """(fleet or group id, instance type) -> the (volume type, GB) of each EBS volume EMR attaches to such an
    instance (ListInstanceFleets' InstanceTypeSpecifications / ListInstanceGroups' EbsBlockDevices)."""

    def sizes(devices: Any) -> tuple[tuple[str, float], ...]:
        specs = [d.get("VolumeSpecification", {}) for d in devices or []]
        return tuple((str(v.get("VolumeType", "gp2")), float(v.get("SizeInGB", 0))) for v in specs)

    out: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {}
    if cluster.get("InstanceCollectionType") == "INSTANCE_GROUP":
        for group in list_pages(emr, "list_instance_groups", "InstanceGroups", cluster["Id"]):
            out[(str(group.get("Id")), str(group.get("InstanceType")))] = sizes(group.get("EbsBlockDevices"))
    else:
        for fleet in list_pages(emr, "list_instance_fleets", "InstanceFleets", cluster["Id"]):
            for spec in fleet.get("InstanceTypeSpecifications", []):
                out[(str(fleet.get("Id")), str(spec.get("InstanceType")))] = sizes(spec.get("EbsBlockDevices"))
    return out


def _spot_price(ec2: EC2Client | None, instance_type: str, zone: str | None, start: Any, end: Any) -> float | None:
    """The mean Linux spot price of the type in the zone over [start, end] (EC2 returns the price in effect at start
    and every change after it), or None when EC2 is not asked, refuses, or has no history."""
    if ec2 is None or not zone:
        return None
    try:
        history = ec2.describe_spot_price_history(
            InstanceTypes=[instance_type],  # type: ignore[list-item]  # the stubs list known types only
            ProductDescriptions=["Linux/UNIX"],
            AvailabilityZone=zone,
            StartTime=start,
            EndTime=end,
        )["SpotPriceHistory"]
    except ClientError:  # UnauthorizedOperation, throttling after retries: price at on-demand, flagged
        return None
    prices = [float(h["SpotPrice"]) for h in history if h.get("SpotPrice")]
    return round(sum(prices) / len(prices), 6) if prices else None


# ------------------------------------------------------------------------------------ EMR Serverless


def serverless_job_run(
    ref: JobRunRef, client: EMRServerlessClient, table: PriceTable, region: str
) -> tuple[dict[str, Any], list[JobRunAttempt], Cost]:
    assert ref.job_run_id is not None
    app, job = ref.container_id, ref.job_run_id
    run: dict[str, Any] = dict(client.get_job_run(applicationId=app, jobRunId=job)["jobRun"])
    latest = int(run.get("attempt") or 1)
    earlier = [dict(client.get_job_run(applicationId=app, jobRunId=job, attempt=n)["jobRun"]) for n in range(1, latest)]
    runs = [*earlier, run]
    attempts = [_serverless_attempt(n, each) for n, each in enumerate(runs, start=1)]
    billed = _summed(each.get("billedResourceUtilization") for each in runs)
    summary = {
        "state": run.get("state"),
        "state_details": run.get("stateDetails") or None,
        "attempt": run.get("attempt"),
        "created_at": iso_time(run.get("createdAt")),
        "started_at": iso_time(run.get("startedAt")),
        "ended_at": iso_time(run.get("endedAt")),
        "queued_seconds": _seconds(run.get("queuedDurationMilliseconds")),
        # over every attempt (each attempt's own: `attempts`)
        "total_execution_duration_seconds": _total(each.get("totalExecutionDurationSeconds") for each in runs),
        "total_resource_utilization": _summed(each.get("totalResourceUtilization") for each in runs),
        "billed_resource_utilization": billed,
    }
    cost = serverless_cost(table, region, ref.architecture, billed)
    notes = cost.setdefault("notes", [])
    if latest > 1:
        notes.append(f"every attempt is billed: the usage of the job run's {latest} attempts, summed")
    if run.get("state") not in SERVERLESS_TERMINAL:
        notes.append(
            f"the job run was {run.get('state')} when read (cancelled just before): its usage may be incomplete"
        )
    if not notes:
        del cost["notes"]
    return summary, attempts, cost


def _serverless_attempt(number: int, run: dict[str, Any]) -> JobRunAttempt:
    return {
        "attempt": int(run.get("attempt") or number),
        "state": str(run.get("state")),
        "state_details": run.get("stateDetails") or None,
        "reason": None,
        "started_at": iso_time(run.get("startedAt") or run.get("attemptCreatedAt")),
        "ended_at": iso_time(run.get("endedAt")),
        "billed_resource_utilization": run.get("billedResourceUtilization"),
    }


def _summed(usages: Iterable[Mapping[str, float] | None]) -> dict[str, float] | None:
    """The sum of GetJobRun resource utilizations ({vCPUHour, memoryGBHour, storageGBHour}); None if none reported."""
    reported = [usage for usage in usages if usage]
    if not reported:
        return None
    keys = dict.fromkeys(key for usage in reported for key in usage)
    return {key: round(sum(float(usage.get(key, 0.0)) for usage in reported), 6) for key in keys}


def _total(values: Iterable[Any]) -> int | None:
    reported = [int(value) for value in values if value is not None]
    return sum(reported) if reported else None


def eks_job_run(
    ref: JobRunRef, client: EMRContainersClient, table: PriceTable, region: str, now: datetime
) -> tuple[dict[str, Any], list[JobRunAttempt], Cost]:
    assert ref.job_run_id is not None
    run: dict[str, Any] = dict(client.describe_job_run(id=ref.job_run_id, virtualClusterId=ref.container_id)["jobRun"])
    created, finished = run.get("createdAt"), run.get("finishedAt")
    summary: dict[str, Any] = {
        "state": run.get("state"),
        "state_details": run.get("stateDetails") or None,
        "failure_reason": run.get("failureReason"),
        "created_at": iso_time(created),
        "finished_at": iso_time(finished),
    }
    count = int((run.get("retryPolicyExecution") or {}).get("currentAttemptCount") or 1)
    if run.get("retryPolicyConfiguration"):
        summary["attempt"] = count
    # Only the last attempt is described; the earlier ones failed (a driver is retried only when it fails or is deleted)
    earlier: list[JobRunAttempt] = [
        {"attempt": n, "state": "FAILED", "state_details": None, "reason": None, "started_at": None, "ended_at": None}
        for n in range(1, count)
    ]
    last: JobRunAttempt = {
        "attempt": count,
        "state": str(run.get("state")),
        "state_details": run.get("stateDetails") or None,
        "reason": run.get("failureReason"),
        "started_at": iso_time(created) if count == 1 else None,
        "ended_at": iso_time(finished),
    }
    attempts = [*earlier, last]
    spark = (run.get("jobDriver") or {}).get("sparkSubmitJobDriver") or {}
    try:
        pods = eks_pods(str(spark.get("sparkSubmitParameters") or ""), _spark_defaults(run))
    except ValueError as exc:
        return summary, attempts, unpriced(table, f"the job's requested resources cannot be read: {exc}")
    if created is None:
        return summary, attempts, unpriced(table, "DescribeJobRun gave no createdAt: the job run's duration is unknown")
    # EMR on EKS bills whole seconds (rounded up)
    seconds = float(math.ceil(max(0.0, timestamp(finished or now) - timestamp(created))))
    vcpu_hours, memory_gb_hours = pods.vcpu * seconds / 3600, pods.memory_gb * seconds / 3600
    summary["usage_estimate"] = {
        "seconds": seconds,
        "pods": pods.describe(),
        "vcpu": pods.vcpu,
        "memory_gb": pods.memory_gb,
        "vcpu_hours": round(vcpu_hours, 6),
        "memory_gb_hours": round(memory_gb_hours, 6),
    }
    cost = eks_cost(table, region, vcpu_hours, memory_gb_hours)
    notes = cost.setdefault("notes", [])
    notes.append(
        f"an estimate from the resources the job's pods requested ({pods.describe()}) over the job run's "
        f"{seconds:g} s (createdAt to {'finishedAt' if finished else 'now: no finishedAt yet'}), every pod counted "
        "for the whole run: DescribeJobRun reports no usage"
    )
    if count > 1:
        notes.append(f"the {count} driver attempts are all within that duration (each is billed as it runs)")
    notes.extend(pods.notes)
    return summary, attempts, cost


def _spark_defaults(run: dict[str, Any]) -> dict[str, str]:
    """The `spark-defaults` classification's properties of the job's configurationOverrides."""
    overrides = (run.get("configurationOverrides") or {}).get("applicationConfiguration") or []
    found: dict[str, str] = {}
    for item in overrides:
        if isinstance(item, dict) and item.get("classification") == "spark-defaults":
            found |= {str(k): str(v) for k, v in (item.get("properties") or {}).items()}
    return found


# ------------------------------------------------------------------------------------------- helpers


def _seconds(milliseconds: Any) -> float | None:
    return round(float(milliseconds) / 1000, 3) if milliseconds is not None else None


def list_pages(emr: EMRClient, operation: _Listing, key: str, cluster_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in emr.get_paginator(operation).paginate(ClusterId=cluster_id, **kwargs):
        items.extend(page.get(key, []))
    return items


def timestamp(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def hours_between(start: Any, end: Any) -> float:
    return max(0.0, (timestamp(end) - timestamp(start)) / 3600)


def iso_time(value: Any) -> str | None:
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(timestamp(value), UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
