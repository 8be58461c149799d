"""How a transient EMR-on-EC2 cluster scales while its run works: `none`, EMR `managed` scaling, or `alarms`.

`alarms` scales the task fleet (or task instance group) from CloudWatch alarms: once the cluster is up,
the workflow creates one alarm per rule on the cluster's metric (namespace `AWS/ElasticMapReduce`,
dimension `JobFlowId`, named `<deployment>-scaling-<pipeline>-<cluster id>-<out|in>-<rule>`) and deletes
them in every teardown path; the scaler function reacts to each ALARM transition with one bounded step,
never during a resize and never within the cooldown of the previous action.

Units are fleet capacity units (the instance types' weights) for instance fleets, instances for groups.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from config.base import StrictModel

RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}$"
# EMR metrics (AWS/ElasticMapReduce, per JobFlowId) that say whether the cluster needs more or fewer
# task nodes. CoreNodesPending is the documented node-status metric of current releases (TaskNodesPending
# is only documented for the Hadoop 1 AMIs, which release-label clusters are not).
EmrScalingMetric = Literal[
    "YARNMemoryAvailablePercentage",
    "ContainerPendingRatio",
    "ContainerPending",
    "ContainerAllocated",
    "AppsPending",
    "AppsRunning",
    "IsIdle",
    "HDFSUtilization",
    "MemoryAvailableMB",
    "MemoryAllocatedMB",
    "CoreNodesPending",
]
Comparison = Literal["<", "<=", ">", ">="]
COMPARISON_OPERATORS: dict[str, str] = {
    "<": "LessThanThreshold",
    "<=": "LessThanOrEqualToThreshold",
    ">": "GreaterThanThreshold",
    ">=": "GreaterThanOrEqualToThreshold",
}
MAX_UNITS = 10000


class NoScaling(StrictModel):
    """The cluster keeps the capacity it was created with (the default)."""

    mode: Literal["none"]


class ManagedScaling(StrictModel):
    """EMR managed scaling limits (passed to RunJobFlow), in capacity units (fleets) or instances (groups)."""

    mode: Literal["managed"]
    minimum_units: int = Field(ge=1, le=MAX_UNITS)
    maximum_units: int = Field(ge=1, le=MAX_UNITS)
    maximum_on_demand_units: int | None = Field(default=None, ge=0, le=MAX_UNITS)
    maximum_core_units: int | None = Field(default=None, ge=1, le=MAX_UNITS)

    @model_validator(mode="after")
    def _ordered(self) -> ManagedScaling:
        if self.minimum_units > self.maximum_units:
            raise ValueError(
                f"minimum_units ({self.minimum_units}) must not exceed maximum_units ({self.maximum_units})"
            )
        return self


class AlarmRule(StrictModel):
    """One CloudWatch alarm on an EMR metric of the cluster: `<metric> <comparison> <threshold>` for
    `datapoints_to_alarm` of the last `evaluation_periods` periods of `period_seconds` (the `statistic`)."""

    name: Annotated[str, StringConstraints(pattern=RULE_NAME_PATTERN)] = Field(
        description="Unique among the pipeline's rules; the last part of the alarm name."
    )
    metric: EmrScalingMetric = Field(description="An `AWS/ElasticMapReduce` metric of the cluster.")
    comparison: Comparison
    threshold: float
    period_seconds: int = Field(
        default=300,
        ge=60,
        le=86400,
        json_schema_extra={"multipleOf": 60},
        description="A multiple of 60; EMR publishes its metrics every 5 minutes.",
    )
    evaluation_periods: int = Field(default=3, ge=1, le=100)
    datapoints_to_alarm: int | None = Field(
        default=None, ge=1, le=100, description="Null: evaluation_periods (every period must breach)."
    )
    statistic: Literal["Average", "Minimum", "Maximum", "Sum", "SampleCount"] = "Average"

    @field_validator("period_seconds")
    @classmethod
    def _whole_minutes(cls, value: int) -> int:
        if value % 60:
            raise ValueError(f"got {value}; expected a multiple of 60 seconds (CloudWatch alarm periods)")
        return value

    @model_validator(mode="after")
    def _datapoints_fit(self) -> AlarmRule:
        if self.datapoints_to_alarm is not None and self.datapoints_to_alarm > self.evaluation_periods:
            raise ValueError(
                f"datapoints_to_alarm ({self.datapoints_to_alarm}) must not exceed evaluation_periods "
                f"({self.evaluation_periods}); expected a number of the evaluated periods"
            )
        return self

    @property
    def datapoints(self) -> int:
        """Breaching datapoints that put the alarm in ALARM (`datapoints_to_alarm`, default every period)."""
        return self.datapoints_to_alarm if self.datapoints_to_alarm is not None else self.evaluation_periods

    @property
    def fires_below(self) -> bool:
        """True when the alarm fires on low values (`<`, `<=`)."""
        return self.comparison in ("<", "<=")

    def comparison_operator(self) -> str:
        """CloudWatch's ComparisonOperator for `comparison`, e.g. `LessThanThreshold` for `<`."""
        return COMPARISON_OPERATORS[self.comparison]

    def describe(self) -> str:
        return f"{self.metric} {self.comparison} {self.threshold:g}"


def _default_scale_out() -> list[AlarmRule]:
    return [
        AlarmRule(
            name="memory-low",
            metric="YARNMemoryAvailablePercentage",
            comparison="<",
            threshold=15,
            evaluation_periods=3,
            datapoints_to_alarm=2,
        )
    ]


def _default_scale_in() -> list[AlarmRule]:
    return [AlarmRule(name="memory-idle", metric="YARNMemoryAvailablePercentage", comparison=">", threshold=75)]


class AlarmScaling(StrictModel):
    """Task-fleet scaling from CloudWatch alarms: one step per ALARM transition, within [min_units, max_units].

    A fleet's new target is split by `spot_percent`: spot units = floor(target x spot_percent / 100), the
    rest on-demand (never more spot than the share asks for; on-demand + spot = the target). Defaults: out
    by 2 when YARN memory available < 15 % for 2 of 3 five-minute periods, in by 2 when > 75 % for 3 of 3,
    0-10 units, all spot, 5 minutes between actions.
    """

    mode: Literal["alarms"]
    scale_out: list[AlarmRule] = Field(
        default_factory=_default_scale_out,
        min_length=1,
        max_length=5,
        description="Any one of them adds a step. Default: `memory-low`, YARNMemoryAvailablePercentage < 15 "
        "for 2 of 3 periods of 300 s (Average).",
    )
    scale_in: list[AlarmRule] = Field(
        default_factory=_default_scale_in,
        min_length=0,
        max_length=5,
        description="Any one of them removes a step (empty: never scale in). Default: `memory-idle`, "
        "YARNMemoryAvailablePercentage > 75 for 3 of 3 periods of 300 s.",
    )
    step_units: int = Field(
        default=2, ge=1, le=MAX_UNITS, description="Units added per scale-out (fleet capacity units, or instances)."
    )
    scale_in_step_units: int | None = Field(
        default=None, ge=1, le=MAX_UNITS, description="Units removed per scale-in; null: step_units."
    )
    min_units: int = Field(default=0, ge=0, le=MAX_UNITS, description="Smallest task fleet/group.")
    max_units: int = Field(default=10, ge=1, le=MAX_UNITS, description="Largest task fleet/group.")
    spot_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="Share of the task fleet's target that is spot (floor; on-demand takes the rest). "
        "Fleets only: an instance group's market is fixed by the group.",
    )
    cooldown_seconds: int = Field(
        default=300, ge=60, le=86400, description="Least time between two actions on the same cluster."
    )

    @model_validator(mode="after")
    def _consistent(self) -> AlarmScaling:
        if self.min_units > self.max_units:
            raise ValueError(
                f"min_units ({self.min_units}) must not exceed max_units ({self.max_units}); expected min <= max"
            )
        names = [rule.name for rule in (*self.scale_out, *self.scale_in)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"scale_out/scale_in: duplicate rule name(s) {duplicates}; expected names unique across both "
                "(they name the alarms)"
            )
        for i, rule_in in enumerate(self.scale_in):
            for j, rule_out in enumerate(self.scale_out):
                if rule_in.metric == rule_out.metric:
                    _check_opposed(f"scale_in[{i}] ({rule_in.name})", rule_in, f"scale_out[{j}]", rule_out)
        return self

    @property
    def scale_in_step(self) -> int:
        """Units removed per scale-in (`scale_in_step_units`, default `step_units`)."""
        return self.scale_in_step_units if self.scale_in_step_units is not None else self.step_units

    def rules(self) -> list[tuple[str, AlarmRule]]:
        """Every rule with its direction (`out` / `in`), in config order."""
        return [("out", r) for r in self.scale_out] + [("in", r) for r in self.scale_in]


def _check_opposed(where: str, rule_in: AlarmRule, other: str, rule_out: AlarmRule) -> None:
    """A scale-in rule on a scale-out rule's metric must fire on the other side of its threshold, with a gap."""
    if rule_in.fires_below == rule_out.fires_below:
        raise ValueError(
            f"{where}: {rule_in.describe()} points the same way as {other}'s {rule_out.describe()}; expected "
            f"{'>' if rule_out.fires_below else '<'} (scale in when the metric is on the other side)"
        )
    side, expected = ("below", "above") if rule_out.fires_below else ("above", "below")
    gap = rule_in.threshold - rule_out.threshold if rule_out.fires_below else rule_out.threshold - rule_in.threshold
    both_inclusive = rule_in.comparison.endswith("=") and rule_out.comparison.endswith("=")
    if gap < 0:
        raise ValueError(
            f"{where}: threshold {rule_in.threshold:g} is {side} {other}'s {rule_out.threshold:g}; expected "
            f"{expected} it, or the cluster flaps"
        )
    if gap == 0 and both_inclusive:
        raise ValueError(
            f"{where}: {rule_in.describe()} and {other}'s {rule_out.describe()} both fire at {rule_in.threshold:g}; "
            f"expected a threshold {expected} {rule_out.threshold:g} or a strict comparison, or the cluster flaps"
        )


Scaling = Annotated[NoScaling | ManagedScaling | AlarmScaling, Field(discriminator="mode")]


def no_scaling() -> NoScaling:
    return NoScaling(mode="none")


def scaling_section(policy: AlarmScaling, collection: Literal["fleets", "groups"]) -> dict[str, Any]:
    """The `scaling` section of a pipeline's settings parameter (autopilot_common.pipeline_settings), which the
    scaler reads: the policy plus its collection."""
    return {**policy.model_dump(mode="json"), "collection": collection}
