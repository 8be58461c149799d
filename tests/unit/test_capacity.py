"""What a run reserves against the caps: vCPU estimates per runtime, and the config errors around them."""

from __future__ import annotations

from typing import Any

import pytest

from config.capacity import Reservation, instance_vcpus, queue_timeout_seconds, run_reservation
from config.loader import ConfigError, load_config
from tests.unit.conftest import DEV_SOURCE, dev_config


def _error(mutate: Any) -> str:
    with pytest.raises(ConfigError) as info:
        dev_config(mutate)
    return str(info.value)


def _pipeline(raw: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = raw["pipelines"][name]
    return result


def test_instance_table() -> None:
    assert (instance_vcpus("m5.large"), instance_vcpus("m6i.xlarge"), instance_vcpus("r6g.16xlarge")) == (2, 4, 64)
    assert instance_vcpus("c5.9xlarge") == 36 and instance_vcpus("m6g.medium") == 1
    assert instance_vcpus("x9.huge") is None and instance_vcpus("m5.metal") is None


def test_shipped_pipelines_reserve_what_their_runtime_can_use() -> None:
    config = load_config("dev")
    # Serverless: the shared application's maximum (64 vCPU); no cluster.
    assert run_reservation(config, "sales-daily") == Reservation(runs=1, clusters=0, vcpus=64)
    # Transient fleets: primary m5.large (2) + core 2 units of xlarge (8) + task up to its alarm scaling's
    # max_units, 8 units of xlarge (32).
    assert run_reservation(config, "sales-cluster") == Reservation(runs=1, clusters=1, vcpus=42)
    # Steps on a long-running cluster add no nodes; EMR on EKS without a vCPU cap needs no size.
    assert run_reservation(config, "sales-adhoc") == Reservation(runs=1, clusters=0, vcpus=0)
    assert run_reservation(config, "sales-eks") == Reservation(runs=1, clusters=0, vcpus=0)


def test_run_vcpus_overrides_the_estimate() -> None:
    config = dev_config(lambda r: _pipeline(r, "sales-cluster").update(limits={"run_vcpus": 12}))
    assert run_reservation(config, "sales-cluster") == Reservation(runs=1, clusters=1, vcpus=12)


def test_weighted_fleets_round_up_to_whole_instances_of_the_largest_type() -> None:
    def weighted(raw: dict[str, Any]) -> None:
        _pipeline(raw, "sales-cluster")["runtime"]["instances"] = {
            "mode": "fleets",
            "primary": {"instance_types": [{"type": "m5.xlarge"}]},
            "core": {"on_demand_units": 3, "instance_types": [{"type": "m5.2xlarge", "weight": 2}]},
            "task": {
                "spot_units": 8,
                "instance_types": [{"type": "m5.4xlarge", "weight": 4}, {"type": "c5.9xlarge", "weight": 8}],
            },
        }

    # primary 4 + core ceil(3/2) x 8 = 16 + task max(2 x 16, 1 x 36) = 36
    assert run_reservation(dev_config(weighted), "sales-cluster").vcpus == 4 + 16 + 36


def test_instance_groups_and_managed_scaling_count_the_largest_the_cluster_can_grow() -> None:
    def groups(raw: dict[str, Any]) -> None:
        runtime = _pipeline(raw, "sales-cluster")["runtime"]
        runtime["instances"] = {
            "mode": "groups",
            "core": {"instance_type": "r5.2xlarge", "count": 2},
            "task": {"instance_type": "m5.xlarge", "count": 3},
        }
        runtime["scaling"] = {"mode": "none"}  # the shipped alarm scaling would count the task group at max_units

    config = dev_config(groups)
    assert run_reservation(config, "sales-cluster").vcpus == 2 + 2 * 8 + 3 * 4

    def scaling(raw: dict[str, Any]) -> None:
        groups(raw)
        runtime = _pipeline(raw, "sales-cluster")["runtime"]
        runtime["scaling"] = {"mode": "managed", "minimum_units": 2, "maximum_units": 10}

    # managed scaling may grow core + task to 10 instances of the largest (r5.2xlarge: 8 vCPUs)
    assert run_reservation(dev_config(scaling), "sales-cluster").vcpus == 2 + 10 * 8


def test_alarm_scaling_counts_the_task_fleet_or_group_at_max_units() -> None:
    def alarms(instances: dict[str, Any], **scaling: Any) -> Any:
        def mutate(raw: dict[str, Any]) -> None:
            runtime = _pipeline(raw, "sales-cluster")["runtime"]
            runtime["instances"] = instances
            runtime["scaling"] = {"mode": "alarms", **scaling}

        return run_reservation(dev_config(mutate), "sales-cluster").vcpus

    fleets = {"mode": "fleets", "core": {"on_demand_units": 2}, "task": {"spot_units": 4}}
    # primary m5.large 2 + core 2 x m5.xlarge 8 + task grown to 12 units of xlarge (largest type) 48
    assert alarms(fleets, max_units=12) == 2 + 8 + 12 * 4
    # max_units at or below the initial task fleet adds nothing
    assert alarms(fleets, max_units=4) == 2 + 8 + 4 * 4
    weighted = {**fleets, "task": {"spot_units": 4, "instance_types": [{"type": "m5.2xlarge", "weight": 2}]}}
    assert alarms(weighted, max_units=9) == 2 + 8 + 5 * 8  # 9 units of weight 2: 5 whole instances
    groups = {"mode": "groups", "core": {"count": 2}, "task": {"instance_type": "c5.4xlarge", "count": 1}}
    assert alarms(groups, max_units=6) == 2 + 2 * 4 + 6 * 16


def test_queue_timeout_is_max_queue_minutes_within_the_run_timeout() -> None:
    config = dev_config(lambda r: _pipeline(r, "sales-burst").update(limits={"max_queue_minutes": 5}))
    assert queue_timeout_seconds(config.pipelines["sales-burst"]) == 300
    # The default (a day) is clamped so the run still fails as QueueTimeout before its own timeout.
    shipped = load_config("dev").pipelines["sales-burst"]
    assert queue_timeout_seconds(shipped) == (shipped.run_timeout_minutes - 60) * 60


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda r: r.setdefault("guardrails", {}).update(limits={"max_vcpus": 100}),
            "config/dev.yaml: pipeline 'sales-eks': limits.run_vcpus: required when a vCPU cap (max_vcpus) applies",
            id="eks-needs-run-vcpus",
        ),
        pytest.param(
            lambda r: (
                _pipeline(r, "sales-cluster")["runtime"]["instances"].update(
                    task={"spot_units": 2, "instance_types": [{"type": "x9.huge"}]}
                )
                or _pipeline(r, "sales-cluster").update(limits={"max_vcpus": 500})
            ),
            "config/dev.yaml: pipeline 'sales-cluster': runtime.instances.task.instance_types: instance type "
            "'x9.huge' is not in the vCPU table of config/capacity.py; set limits.run_vcpus",
            id="unknown-instance-type",
        ),
        pytest.param(
            lambda r: _pipeline(r, "sales-daily").update(limits={"max_vcpus": 32}),
            "config/dev.yaml: pipeline 'sales-daily': limits.run_vcpus: one run reserves 64 vCPUs but "
            "limits.max_vcpus is 32, so it could never start",
            id="run-bigger-than-cap",
        ),
    ],
)
def test_capacity_problems_give_one_clear_line(mutate: Any, expected: str) -> None:
    message = _error(mutate)
    assert expected in message, message
    assert all(line.startswith(DEV_SOURCE) for line in message.splitlines())


def test_an_unknown_instance_type_is_fine_without_a_vcpu_cap() -> None:
    config = dev_config(
        lambda r: _pipeline(r, "sales-cluster")["runtime"]["instances"].update(
            task={"spot_units": 2, "instance_types": [{"type": "x9.huge"}]}
        )
    )
    assert run_reservation(config, "sales-cluster") == Reservation(runs=1, clusters=1, vcpus=0)
