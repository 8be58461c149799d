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

Problems (`cap_problems`) are one line each, naming the pipeline and field, like the loader's other
cross-checks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from config.ec2 import Ec2Runtime, FleetInstanceType, InstanceFleets, InstanceGroups
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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


def _fleet_vcpus(types: list[FleetInstanceType], units: int, where: str) -> int:
    """Most vCPUs a fleet of `units` capacity units can launch (whole instances, the largest type)."""
    if units <= 0:
        return 0
    return max(math.ceil(units / t.weight) * _known(t.type, f"{where}.instance_types") for t in types)


def ec2_cluster_vcpus(runtime: Ec2Runtime) -> int:
    """vCPUs of a transient cluster at full capacity (raises CapacityError for unknown instance types)."""
    inst = runtime.instances
    primary_default = runtime.primary_instance_type()
    scaling = runtime.scaling.maximum_units if isinstance(runtime.scaling, ManagedScaling) else 0
    task_max = runtime.scaling.max_units if isinstance(runtime.scaling, AlarmScaling) else 0  # alarms grow the task
    if isinstance(inst, InstanceFleets):
        primary_types = inst.primary.instance_types or [FleetInstanceType(type=primary_default)]
        primary = _fleet_vcpus(primary_types, 1, "runtime.instances.primary")
        fleets = [
            ("runtime.instances.core", inst.core.instance_types, inst.core.on_demand_units + inst.core.spot_units)
        ]
        if inst.task is not None:
            task_units = max(inst.task.on_demand_units + inst.task.spot_units, task_max)
            fleets.append(("runtime.instances.task", inst.task.instance_types, task_units))
        workers = sum(_fleet_vcpus(types, units, where) for where, types, units in fleets)
        if scaling > sum(units for _, _, units in fleets):  # managed scaling may grow core + task to maximum_units
            workers = max(workers, max(_fleet_vcpus(types, scaling, where) for where, types, _ in fleets))
        return primary + workers
    assert isinstance(inst, InstanceGroups)
    primary = _known(inst.primary.instance_type or primary_default, "runtime.instances.primary.instance_type")
    groups = [("runtime.instances.core.instance_type", inst.core.instance_type, inst.core.count)]
    if inst.task is not None:
        groups.append(("runtime.instances.task.instance_type", inst.task.instance_type, max(inst.task.count, task_max)))
    workers = sum(count * _known(kind, where) for where, kind, count in groups)
    if scaling > sum(count for _, _, count in groups):
        workers = max(workers, max(scaling * _known(kind, where) for where, kind, _ in groups))
    return primary + workers


def serverless_max_vcpus(application: ServerlessApplication) -> int:
    """The application's maximum cpu (`"64 vCPU"` -> 64)."""
    return int(application.maximum_capacity.cpu.split()[0])


def vcpu_capped(config: AppConfig, pipeline: Pipeline) -> bool:
    """True when a vCPU cap (the pipeline's or the deployment's) applies to this pipeline's runs."""
    return pipeline.limits.max_vcpus is not None or config.guardrails.limits.max_vcpus is not None


def run_reservation(config: AppConfig, name: str) -> Reservation:
    """What one run of pipeline `name` reserves; raises CapacityError when its vCPUs are needed but unknown."""
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
    room = pipeline.run_timeout_minutes - pipeline.runtime.execution_timeout_minutes
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
    return problems
