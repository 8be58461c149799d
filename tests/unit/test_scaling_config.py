"""`scaling:` of emr-ec2 pipelines (config/scaling.py): the defaults, every config error (one line naming the
field), managed mode as before, and what alarm scaling changes in the cluster request and primary sizing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config.ec2 import Ec2Runtime
from config.loader import ConfigError, load_config, validate_config
from config.scaling import AlarmRule, AlarmScaling, ManagedScaling, NoScaling, scaling_section
from stacks.emr_ec2_spec import cluster_request
from tests.unit.conftest import ec2_config, ec2_runtime

MEMORY = "YARNMemoryAvailablePercentage"


def _alarms(**scaling: Any) -> dict[str, Any]:
    return {"scaling": {"mode": "alarms", **scaling}}


def _rule(name: str, metric: str, comparison: str, threshold: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "metric": metric, "comparison": comparison, "threshold": threshold, **extra}


# ------------------------------------------------------------------------------------------ defaults


def test_scaling_defaults_to_none() -> None:
    runtime = ec2_runtime()
    assert runtime.scaling == NoScaling(mode="none")
    assert "ManagedScalingPolicy" not in cluster_request(runtime)


def test_alarm_scaling_defaults() -> None:
    scaling = ec2_runtime(**_alarms()).scaling
    assert isinstance(scaling, AlarmScaling)
    (out,) = scaling.scale_out
    (idle,) = scaling.scale_in
    assert (out.name, out.metric, out.comparison, out.threshold) == ("memory-low", MEMORY, "<", 15)
    assert (out.period_seconds, out.evaluation_periods, out.datapoints, out.statistic) == (300, 3, 2, "Average")
    assert (idle.name, idle.metric, idle.comparison, idle.threshold) == ("memory-idle", MEMORY, ">", 75)
    assert (idle.period_seconds, idle.evaluation_periods, idle.datapoints, idle.statistic) == (300, 3, 3, "Average")
    assert (scaling.step_units, scaling.scale_in_step, scaling.min_units, scaling.max_units) == (2, 2, 0, 10)
    assert (scaling.spot_percent, scaling.cooldown_seconds) == (100, 300)
    assert [(d, r.name) for d, r in scaling.rules()] == [("out", "memory-low"), ("in", "memory-idle")]


def test_scale_in_step_and_datapoints_default_to_their_partners_but_can_be_set() -> None:
    scaling = AlarmScaling(mode="alarms", step_units=3, scale_in_step_units=1)
    assert (scaling.step_units, scaling.scale_in_step) == (3, 1)
    assert AlarmScaling(mode="alarms", step_units=3).scale_in_step == 3
    rule = AlarmRule(name="r", metric="AppsPending", comparison=">", threshold=0, evaluation_periods=4)
    assert rule.datapoints == 4 and rule.datapoints_to_alarm is None


@pytest.mark.parametrize(
    ("comparison", "operator"),
    [
        ("<", "LessThanThreshold"),
        ("<=", "LessThanOrEqualToThreshold"),
        (">", "GreaterThanThreshold"),
        (">=", "GreaterThanOrEqualToThreshold"),
    ],
)
def test_comparison_maps_to_cloudwatch_operator(comparison: Any, operator: str) -> None:
    rule = AlarmRule(name="r", metric="ContainerPendingRatio", comparison=comparison, threshold=0.75)
    assert rule.comparison_operator() == operator


def test_dev_sales_cluster_scales_its_task_fleet_from_alarms() -> None:
    runtime = load_config("dev").pipelines["sales-cluster"].runtime
    assert isinstance(runtime, Ec2Runtime) and isinstance(runtime.scaling, AlarmScaling)
    assert (runtime.scaling.min_units, runtime.scaling.max_units, runtime.scaling.step_units) == (0, 8, 2)
    assert runtime.scaling.cooldown_seconds == 300 and runtime.task_units() == 4
    for name in ("sales-daily", "sales-adhoc", "sales-eks", "sales-burst"):
        other = load_config("dev").pipelines[name].runtime
        assert not isinstance(getattr(other, "scaling", None), AlarmScaling), name


def test_env_entry_is_the_policy_dump_plus_the_collection() -> None:
    scaling = ec2_runtime(**_alarms(max_units=6, spot_percent=50)).scaling
    assert isinstance(scaling, AlarmScaling)
    entry = scaling_section(scaling, "fleets")
    assert json.loads(json.dumps(entry)) == entry
    assert entry["collection"] == "fleets" and entry["mode"] == "alarms"
    assert (entry["max_units"], entry["spot_percent"], entry["scale_in_step_units"]) == (6, 50, None)
    assert [r["name"] for r in entry["scale_out"]] == ["memory-low"]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        pytest.param(_alarms(min_units=5, max_units=3),
                     "runtime.scaling: min_units (5) must not exceed max_units (3)", id="min-over-max"),
        pytest.param(_alarms(step_units=0),
                     "runtime.scaling.step_units: got 0; expected a number >= 1", id="step-zero"),
        pytest.param(_alarms(scale_in_step_units=0),
                     "runtime.scaling.scale_in_step_units: got 0; expected a number >= 1", id="in-step-zero"),
        pytest.param(_alarms(max_units=0), "runtime.scaling.max_units: got 0; expected a number >= 1",
                     id="max-zero"),
        pytest.param(_alarms(max_units=10001),
                     "runtime.scaling.max_units: got 10001; expected a number <= 10000", id="max-too-big"),
        pytest.param(_alarms(min_units=-1), "runtime.scaling.min_units: got -1; expected a number >= 0",
                     id="min-negative"),
        pytest.param(_alarms(spot_percent=101),
                     "runtime.scaling.spot_percent: got 101; expected a number <= 100", id="spot-percent"),
        pytest.param(_alarms(cooldown_seconds=30),
                     "runtime.scaling.cooldown_seconds: got 30; expected a number >= 60", id="cooldown"),
        pytest.param(_alarms(scale_in=[_rule("memory-idle", MEMORY, ">", 10)]),
                     "runtime.scaling: scale_in[0] (memory-idle): threshold 10 is below scale_out[0]'s 15; "
                     "expected above it, or the cluster flaps", id="in-below-out"),
        pytest.param(_alarms(scale_out=[_rule("pending", "ContainerPendingRatio", ">", 0.75)],
                             scale_in=[_rule("calm", "ContainerPendingRatio", "<", 0.8)]),
                     "scale_in[0] (calm): threshold 0.8 is above scale_out[0]'s 0.75; expected below it",
                     id="in-above-out"),
        pytest.param(_alarms(scale_in=[_rule("memory-idle", MEMORY, "<", 5)]),
                     "scale_in[0] (memory-idle): YARNMemoryAvailablePercentage < 5 points the same way as "
                     "scale_out[0]'s YARNMemoryAvailablePercentage < 15; expected >", id="same-direction"),
        pytest.param(_alarms(scale_out=[_rule("low", MEMORY, "<=", 15)], scale_in=[_rule("idle", MEMORY, ">=", 15)]),
                     "scale_in[0] (idle): YARNMemoryAvailablePercentage >= 15 and scale_out[0]'s "
                     "YARNMemoryAvailablePercentage <= 15 both fire at 15", id="both-inclusive"),
        pytest.param(_alarms(scale_in=[_rule("memory-low", "IsIdle", ">=", 1)]),
                     "runtime.scaling: scale_out/scale_in: duplicate rule name(s) ['memory-low']",
                     id="duplicate-names"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0), _rule("a", "ContainerPending", ">", 5)]),
                     "duplicate rule name(s) ['a']", id="duplicate-names-in-one-list"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0, evaluation_periods=2,
                                              datapoints_to_alarm=3)]),
                     "runtime.scaling.scale_out.0: datapoints_to_alarm (3) must not exceed evaluation_periods "
                     "(2)", id="datapoints-over-periods"),
        pytest.param(_alarms(scale_out=[_rule("a", "CPUUtilization", ">", 80)]),
                     "runtime.scaling.scale_out.0.metric: got 'CPUUtilization'; expected one of "
                     "'YARNMemoryAvailablePercentage'", id="metric"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", "!=", 0)]),
                     "runtime.scaling.scale_out.0.comparison: got '!='; expected one of '<', '<=', '>'",
                     id="comparison"),
        pytest.param(_alarms(scale_out=[_rule("Memory Low", "AppsPending", ">", 0)]),
                     "runtime.scaling.scale_out.0.name: got 'Memory Low'", id="rule-name"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0, period_seconds=90)]),
                     "runtime.scaling.scale_out.0.period_seconds: got 90; expected a multiple of 60 seconds",
                     id="period-not-minutes"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0, period_seconds=30)]),
                     "runtime.scaling.scale_out.0.period_seconds: got 30; expected a number >= 60",
                     id="period-too-short"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0, evaluation_periods=0)]),
                     "runtime.scaling.scale_out.0.evaluation_periods: got 0; expected a number >= 1",
                     id="evaluation-periods"),
        pytest.param(_alarms(scale_out=[_rule("a", "AppsPending", ">", 0, statistic="p99")]),
                     "runtime.scaling.scale_out.0.statistic: got 'p99'", id="statistic"),
        pytest.param(_alarms(scale_out=[]), "runtime.scaling.scale_out: got []; expected at least 1",
                     id="no-scale-out-rule"),
        pytest.param(_alarms(scale_in=[_rule(f"r{i}", "IsIdle", ">=", 1) for i in range(6)]),
                     "runtime.scaling.scale_in: got", id="too-many-rules"),
        pytest.param(_alarms(cool_down=60), "runtime.scaling.cool_down: unknown key; expected one of: "
                     "cooldown_seconds", id="unknown-key"),
        pytest.param({"scaling": {"mode": "auto"}},
                     "runtime.scaling.mode: got 'auto'; expected one of 'none', 'managed', 'alarms'", id="mode"),
        pytest.param({"scaling": {"mode": "managed", "minimum_units": 5, "maximum_units": 2}},
                     "runtime.scaling: minimum_units (5) must not exceed maximum_units (2)", id="managed"),
        pytest.param({**_alarms(), "instances": {"mode": "fleets", "task": None}},
                     "runtime: scaling: mode alarms resizes the task fleet/group; expected instances.task to be set",
                     id="no-task-fleet"),
        pytest.param({**_alarms(min_units=3)},
                     "runtime: scaling.min_units/max_units: the task fleet starts at 2 units "
                     "(instances.task.on_demand_units + spot_units); expected it within [min_units 3, max_units 10]",
                     id="fleet-below-min"),
        pytest.param({**_alarms(max_units=4), "instances": {"mode": "groups", "task": {"count": 5}}},
                     "runtime: scaling.min_units/max_units: the task group starts at 5 instances "
                     "(instances.task.count); expected it within [min_units 0, max_units 4]", id="group-above-max"),
        pytest.param({**_alarms(spot_percent=50), "instances": {"mode": "groups"}},
                     "runtime: scaling.spot_percent: applies to task fleets only", id="spot-percent-with-groups"),
        pytest.param({**_alarms(), "existing_cluster": {"cluster_id": "j-ABCDEFGH1234"}},
                     "runtime: scaling: apply only to transient clusters", id="existing-cluster"),
    ],
)  # fmt: skip
def test_bad_scaling_config_gets_one_clear_error(runtime: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(ec2_config(runtime))
    assert message in str(err.value)
    assert str(err.value).startswith("<config>: pipeline 'pipe': runtime")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "runtime",
    [
        pytest.param(_alarms(scale_out=[_rule("low", MEMORY, "<", 15)], scale_in=[_rule("idle", MEMORY, ">", 15)]),
                     id="touching-strict-thresholds"),
        pytest.param(_alarms(scale_out=[_rule("low", MEMORY, "<=", 15)], scale_in=[_rule("idle", MEMORY, ">", 15)]),
                     id="one-inclusive"),
        pytest.param(_alarms(scale_out=[_rule("pending", "ContainerPendingRatio", ">", 0.75)],
                             scale_in=[_rule("idle", "IsIdle", ">=", 1)]), id="different-metrics"),
        pytest.param(_alarms(scale_in=[]), id="no-scale-in"),
        pytest.param({**_alarms(min_units=2, max_units=2)}, id="fixed-size"),
        pytest.param({**_alarms(), "instances": {"mode": "groups", "task": {"count": 3}}}, id="groups"),
        pytest.param({"scaling": {"mode": "none"}, "existing_cluster": {"cluster_id": "j-ABCDEFGH1234"}},
                     id="none-on-existing-cluster"),
    ],
)  # fmt: skip
def test_sensible_scaling_config_is_accepted(runtime: dict[str, Any]) -> None:
    assert validate_config(ec2_config(runtime))


# ------------------------------------------------------------------------------------------ managed mode, sizing


def test_managed_mode_passes_the_same_limits_to_run_job_flow() -> None:
    runtime = ec2_runtime(
        scaling={"mode": "managed", "minimum_units": 2, "maximum_units": 20, "maximum_core_units": 4},
    )
    assert runtime.scaling == ManagedScaling(mode="managed", minimum_units=2, maximum_units=20, maximum_core_units=4)
    assert cluster_request(runtime)["ManagedScalingPolicy"] == {
        "ComputeLimits": {
            "UnitType": "InstanceFleetUnits",
            "MinimumCapacityUnits": 2,
            "MaximumCapacityUnits": 20,
            "MaximumCoreCapacityUnits": 4,
        }
    }


def test_alarm_mode_adds_no_managed_policy_and_sizes_the_primary_for_the_largest_task_fleet() -> None:
    small = ec2_runtime(**_alarms(max_units=40))
    assert "ManagedScalingPolicy" not in cluster_request(small)
    assert small.primary_instance_type() == "m5.large"  # 1 + 2 core + 40 task < 50
    big = ec2_runtime(**_alarms(max_units=47))
    assert big.primary_instance_type() == "m5.xlarge"  # 1 + 2 core + 47 task = 50
    managed = ec2_runtime(scaling={"mode": "managed", "minimum_units": 2, "maximum_units": 49})
    assert managed.primary_instance_type() == "m5.xlarge"  # as before: maximum_units + 1
