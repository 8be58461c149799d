"""What one run of a pipeline reserves against the concurrency and budget caps (`limits`), decided at synth.

A run reserves `runs` 1, `clusters` 1 when it creates a transient EMR cluster (else 0), and `vcpus`:
`limits.run_vcpus` when set, else an estimate from the runtime:

* emr-ec2, transient: every fleet/group at full target capacity (or managed scaling's maximum, when
  higher; or, with alarm scaling, the task fleet/group at `max_units` when higher) times the vCPUs of
  its instance type. A fleet's units are converted with the instance types' weights, rounding up to
  whole instances, taking the largest of its types.
* emr-ec2 on an existing cluster: 0 (the cluster's owner pays; runs add no nodes).
* emr-serverless: the application's maximum cpu (the most one job can ever use).
* emr-eks: no estimate (pods size themselves): `run_vcpus` is required when a vCPU cap applies.

Under a daily budget (`max_daily_usd`) a run also reserves `usd`, its estimated cost, until it ends and its
recorded cost replaces it. The admission function uses the largest of the pipeline's last 10 recorded costs
once it has any; until then, the bound fixed here (`run_estimate_usd`): `limits.run_estimate_usd` when set,
else the most a run can cost at the rates of the price table shipped with the app (autopilot_common.pricing)
in the deployment's region:

* emr-ec2, transient: every fleet/group at full capacity (as for vCPUs, the priciest type of a fleet) at the
  on-demand EC2 price plus the EMR price, plus the largest EBS volumes configured for any instance, for
  `run_timeout_minutes` (root volumes are not included, as in the recorded cost).
* emr-ec2 on an existing cluster: 0 (the cluster's owner pays; runs add no nodes).
* emr-serverless: the application's maximum cpu, memory and disk for the job's timeout
  (`runtime.execution_timeout_minutes`) at its architecture's rates.
* emr-eks: `limits.run_vcpus` vCPUs with 8 GB of memory each for the job's timeout at the EMR on EKS rates
  (the EKS nodes' own cost is not included, as in the recorded cost).

A price the table lacks (region, instance type) is a problem under a budget (set `limits.run_estimate_usd`):
a budgeted run is never silently unbudgeted.

Problems (`cap_problems`) are one line each, naming the pipeline and field, like the loader's other
cross-checks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from autopilot_common.pricing import HOURS_PER_MONTH, MissingPrice, PriceTable, shipped_prices
from config.ec2 import EbsVolumes, Ec2Runtime, FleetInstanceType, InstanceFleets, InstanceGroups
from config.eks import EksRuntime
from config.model import AppConfig, Pipeline, ServerlessApplication
from config.scaling import AlarmScaling, ManagedScaling

# vCPUs per instance size of the current-generation families EMR runs on (general purpose, compute,
# memory, storage optimized): in these families `<n>xlarge` has 4n vCPUs, `large` 2 and `medium` 1.
_SIZES: dict[str, int] = {"medium": 1, "large": 2, "xlarge": 4} | {
    f"{n}xlarge": 4 * n for n in (2, 3, 4, 6, 8, 9, 10, 12, 16, 18, 24, 32, 48)
}
_FAMILIES = frozenset(
    "m4 m5 m5a m5ad m5d m5dn m5n m5zn m6a m6g m6gd m6i m6id m6idn m6in m7a m7g m7gd m7i m7i-flex "
    "c5 c5a c5ad c5d c5n c6a c6g c6gd c6gn c6i c6id c6in c7a c7g c7gd c7gn c7i "
    "r4 r5 r5a r5ad r5b r5d r5dn r5n r6a r6g r6gd r6i r6id r6idn r6in r7a r7g r7gd r7i r7iz "
    "i3 i3en i4g i4i im4gn is4gen d3 d3en z1d x2idn x2iedn".split()
)


class CapacityError(ValueError):
    """A run's vCPU reservation cannot be estimated; the message names what to set."""


@dataclass(frozen=True)
class Reservation:
    """What one admitted run holds against the caps until it releases its slot."""

    runs: int = 1
    clusters: int = 0
    vcpus: int = 0
    usd: float | None = None  # the estimated cost, when a budget applies (the workflow records spend when set)

    def as_dict(self) -> dict[str, int | float]:
        body: dict[str, int | float] = {k: v for k, v in asdict(self).items() if v is not None}
        return body


def instance_vcpus(instance_type: str) -> int | None:
    """vCPUs of an EC2 instance type from the table above, or None when the type is not in it."""
    family, _, size = instance_type.partition(".")
    return _SIZES.get(size) if family in _FAMILIES else None


def _known(instance_type: str, where: str) -> int:
    vcpus = instance_vcpus(instance_type)
    if vcpus is None:
        raise CapacityError(
            f"{where}: instance type {instance_type!r} is not in the vCPU table of config/capacity.py; "
            "set limits.run_vcpus to the vCPUs one run's cluster uses"
        )
    return vcpus


# What an instance type counts for (its vCPUs, its hourly price), or CapacityError naming the field `where`.
Measure = Callable[[str, str], float]


def _fleet_total(types: list[FleetInstanceType], units: int, where: str, measure: Measure) -> float:
    """Most a fleet of `units` capacity units can launch (whole instances, the largest type by `measure`)."""
    if units <= 0:
        return 0
    return max(math.ceil(units / t.weight) * measure(t.type, f"{where}.instance_types") for t in types)


def ec2_cluster_vcpus(runtime: Ec2Runtime) -> int:
    """vCPUs of a transient cluster at full capacity (raises CapacityError for unknown instance types)."""
    return int(ec2_cluster_total(runtime, _known))


def ec2_cluster_total(runtime: Ec2Runtime, measure: Measure) -> float:
    """A transient cluster at full capacity, summed by `measure` over its instances."""
    inst = runtime.instances
    primary_default = runtime.primary_instance_type()
    scaling = runtime.scaling.maximum_units if isinstance(runtime.scaling, ManagedScaling) else 0
    task_max = runtime.scaling.max_units if isinstance(runtime.scaling, AlarmScaling) else 0  # alarms grow the task
    if isinstance(inst, InstanceFleets):
        primary_types = inst.primary.instance_types or [FleetInstanceType(type=primary_default)]
        primary = _fleet_total(primary_types, 1, "runtime.instances.primary", measure)
        fleets = [
            ("runtime.instances.core", inst.core.instance_types, inst.core.on_demand_units + inst.core.spot_units)
        ]
        if inst.task is not None:
            task_units = max(inst.task.on_demand_units + inst.task.spot_units, task_max)
            fleets.append(("runtime.instances.task", inst.task.instance_types, task_units))
        workers = sum(_fleet_total(types, units, where, measure) for where, types, units in fleets)
        if scaling > sum(units for _, _, units in fleets):  # managed scaling may grow core + task to maximum_units
            workers = max(workers, max(_fleet_total(types, scaling, where, measure) for where, types, _ in fleets))
        return primary + workers
    assert isinstance(inst, InstanceGroups)
    primary = measure(inst.primary.instance_type or primary_default, "runtime.instances.primary.instance_type")
    groups = [("runtime.instances.core.instance_type", inst.core.instance_type, inst.core.count)]
    if inst.task is not None:
        groups.append(("runtime.instances.task.instance_type", inst.task.instance_type, max(inst.task.count, task_max)))
    workers = sum(count * measure(kind, where) for where, kind, count in groups)
    if scaling > sum(count for _, _, count in groups):
        workers = max(workers, max(scaling * measure(kind, where) for where, kind, _ in groups))
    return primary + workers


def serverless_max_vcpus(application: ServerlessApplication) -> int:
    """The application's maximum cpu (`"64 vCPU"` -> 64)."""
    return int(application.maximum_capacity.cpu.split()[0])


def _ebs_hourly(runtime: Ec2Runtime, table: PriceTable, region: str) -> float:
    """The most any one instance's configured EBS volumes cost per hour (an upper bound for every instance)."""
    inst = runtime.instances
    if isinstance(inst, InstanceFleets):
        primary = inst.primary.instance_types or [FleetInstanceType(type=runtime.primary_instance_type())]
        workers = [*inst.core.instance_types, *(inst.task.instance_types if inst.task else [])]
        volumes = [t.ebs for t in [*primary, *workers]]
    else:
        volumes = [g.ebs for g in (inst.primary, inst.core, inst.task) if g is not None]
    return max((_volumes_hourly(v, table, region) for v in volumes if v is not None), default=0.0)


def _volumes_hourly(volumes: EbsVolumes, table: PriceTable, region: str) -> float:
    gigabytes = volumes.size_gb * volumes.volumes_per_instance
    return gigabytes * table.ebs_gb_month(region, volumes.volume_type) / HOURS_PER_MONTH


def budgeted(config: AppConfig, pipeline: Pipeline) -> bool:
    """True when a daily budget (the pipeline's or the deployment's) applies to this pipeline's runs."""
    return pipeline.limits.max_daily_usd is not None or config.guardrails.limits.max_daily_usd is not None


def _gigabytes(text: str) -> int:
    return int(text.split()[0])


def run_estimate_usd(config: AppConfig, name: str, region: str | None) -> float:
    """What one run of pipeline `name` reserves against a budget until it has recorded costs (see the module
    docstring); raises CapacityError when no price gives one and `limits.run_estimate_usd` is not set."""
    pipeline = config.pipelines[name]
    if pipeline.limits.run_estimate_usd is not None:
        return pipeline.limits.run_estimate_usd
    runtime = pipeline.runtime
    if isinstance(runtime, Ec2Runtime) and not runtime.transient:
        return 0.0
    hint = "set limits.run_estimate_usd to what one run may cost"
    if region is None:
        raise CapacityError(f"limits.run_estimate_usd: required under a budget when the region is not known; {hint}")
    table = shipped_prices()
    hours = pipeline.job_minutes / 60  # the worst case: every attempt of a retried job run at its timeout
    try:
        if isinstance(runtime, Ec2Runtime):
            ebs = _ebs_hourly(runtime, table, region)

            def hourly(instance_type: str, where: str) -> float:
                try:
                    prices = table.instance(region, instance_type)
                except MissingPrice as exc:
                    raise CapacityError(f"{where}: {exc} in the price table; {hint}") from None
                return float(prices["ec2_hour"]) + float(prices["emr_hour"]) + ebs

            return round(ec2_cluster_total(runtime, hourly) * pipeline.run_timeout_minutes / 60, 6)
        if isinstance(runtime, EksRuntime):
            if pipeline.limits.run_vcpus is None:
                raise CapacityError(f"limits.run_estimate_usd: EMR on EKS runs have no size the app can price; {hint}")
            rates = table.eks(region)
            vcpus = pipeline.limits.run_vcpus
            return round(hours * vcpus * (rates["vcpu_hour"] + 8 * rates["memory_gb_hour"]), 6)
        application = runtime.application
        if isinstance(application, str):
            application = config.serverless_applications[application]
        rates = table.serverless(region, application.architecture)
        peak = application.maximum_capacity
        per_hour = (
            serverless_max_vcpus(application) * rates["vcpu_hour"]
            + _gigabytes(peak.memory) * rates["memory_gb_hour"]
            + _gigabytes(peak.disk) * rates["storage_gb_hour"]
        )
        return round(hours * per_hour, 6)
    except MissingPrice as exc:
        raise CapacityError(f"limits.run_estimate_usd: {exc} in the price table; {hint}") from None


def vcpu_capped(config: AppConfig, pipeline: Pipeline) -> bool:
    """True when a vCPU cap (the pipeline's or the deployment's) applies to this pipeline's runs."""
    return pipeline.limits.max_vcpus is not None or config.guardrails.limits.max_vcpus is not None


def deployment_region(config: AppConfig) -> str | None:
    """The region the app deploys to: `region`, else the CLI's (as app.py decides)."""
    return config.region or os.environ.get("CDK_DEFAULT_REGION")


def run_reservation(config: AppConfig, name: str) -> Reservation:
    """What one run of pipeline `name` reserves; raises CapacityError when its vCPUs are needed but unknown, or
    its cost under a budget."""
    reservation = _slot_reservation(config, name)
    if budgeted(config, config.pipelines[name]):
        return replace(reservation, usd=run_estimate_usd(config, name, deployment_region(config)))
    return reservation


def _slot_reservation(config: AppConfig, name: str) -> Reservation:
    pipeline = config.pipelines[name]
    runtime = pipeline.runtime
    clusters = 1 if isinstance(runtime, Ec2Runtime) and runtime.transient else 0
    if pipeline.limits.run_vcpus is not None:
        return Reservation(clusters=clusters, vcpus=pipeline.limits.run_vcpus)
    capped = vcpu_capped(config, pipeline)
    if isinstance(runtime, Ec2Runtime):
        if not runtime.transient:
            return Reservation(clusters=0, vcpus=0)
        try:
            return Reservation(clusters=1, vcpus=ec2_cluster_vcpus(runtime))
        except CapacityError:
            if capped:
                raise
            return Reservation(clusters=1, vcpus=0)  # unknown size, and no vCPU cap to charge it against
    if isinstance(runtime, EksRuntime):
        if capped:
            raise CapacityError(
                "limits.run_vcpus: required when a vCPU cap (max_vcpus) applies; EMR on EKS runs have no size "
                "the app can estimate (set the vCPUs one run's driver and executors request)"
            )
        return Reservation(clusters=0, vcpus=0)
    application = runtime.application
    if isinstance(application, str):
        if application not in config.serverless_applications:
            return Reservation()  # an undefined application is reported by the loader's own cross-check
        application = config.serverless_applications[application]
    return Reservation(clusters=0, vcpus=serverless_max_vcpus(application))


def queue_timeout_seconds(pipeline: Pipeline) -> int:
    """How long a run may wait for a slot: `limits.max_queue_minutes`, clamped so that the wait ends (QueueTimeout,
    ledger FAILED, notified) before the whole-run timeout would abort the execution with the job not yet run."""
    room = pipeline.run_timeout_minutes - pipeline.job_minutes  # every attempt of a retried job run
    return max(1, min(pipeline.limits.max_queue_minutes, room)) * 60


def cap_problems(config: AppConfig, source: str) -> list[str]:
    """One line per pipeline whose reservation is unknown or could never fit under a cap."""
    problems: list[str] = []
    deployment = config.guardrails.limits
    for name, pipeline in config.pipelines.items():
        where = f"{source}: pipeline {name!r}"
        try:
            reservation = run_reservation(config, name)
        except CapacityError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for scope, limit in (("limits.max_vcpus", pipeline.limits.max_vcpus),
                             ("guardrails.limits.max_vcpus", deployment.max_vcpus)):  # fmt: skip
            if limit is not None and reservation.vcpus > limit:
                problems.append(
                    f"{where}: limits.run_vcpus: one run reserves {reservation.vcpus} vCPUs but {scope} is {limit}, "
                    "so it could never start; expected a reservation within every vCPU cap (raise the cap or set "
                    "limits.run_vcpus)"
                )
        problems.extend(f"{where}: {p}" for p in _budget_problems(config, pipeline, reservation))
    return problems


def _budget_problems(config: AppConfig, pipeline: Pipeline, reservation: Reservation) -> list[str]:
    """An estimate bigger than a budget (every day's first run would overspend it), or budget settings with no
    budget to apply to (they would be silently ignored)."""
    limits, problems = pipeline.limits, []
    if not budgeted(config, pipeline):
        for field_name in ("run_estimate_usd", "over_budget"):
            if field_name in limits.model_fields_set:
                problems.append(
                    f"limits.{field_name}: set, but no daily budget applies to this pipeline; expected "
                    "limits.max_daily_usd or guardrails.limits.max_daily_usd (or remove it)"
                )
        return problems
    for scope, budget in (("limits.max_daily_usd", limits.max_daily_usd),
                          ("guardrails.limits.max_daily_usd", config.guardrails.limits.max_daily_usd)):  # fmt: skip
        if budget is not None and (reservation.usd or 0) > budget:
            problems.append(
                f"limits.run_estimate_usd: one run is estimated at ${reservation.usd:.6f} but {scope} is "
                f"${budget}; expected an estimate within every budget (set limits.run_estimate_usd to what one "
                "run may cost, or raise the budget)"
            )
    return problems
