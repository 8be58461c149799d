"""Scaler: one bounded step of a cluster's task fleet (or task instance group) per CloudWatch alarm transition.

The workflow names every scaling alarm `<deployment>-scaling-<pipeline>-<cluster id>-<out|in>-<rule>`.
For an ALARM transition of one of them the scaler:

1. reads the cluster (state, tags) and its task fleet/group (state, targets);
2. decides (`decide`, pure): skip when the cluster is not RUNNING/WAITING, the fleet/group is not RUNNING
   (e.g. RESIZING), the target is already at `max_units` (out) or `min_units` (in), or the cooldown of
   the previous action has not passed; else step the target by `step_units` (`scale_in_step_units`),
   clamped to [min_units, max_units], and split a fleet's target into on-demand and spot (`split_target`);
3. claims the action in DynamoDB (`autopilot_common.scaling_state.claim_action`: the same transition acts once,
   two concurrent alarms cannot both act within the cooldown) BEFORE calling EMR;
4. calls ModifyInstanceFleet / ModifyInstanceGroups. EMR refusing the change (validation: the fleet just
   started resizing, the cluster is ending) makes the action `failed` and the event a skip; any other
   error gives the claim back and raises, so EventBridge's retry can act;
5. appends the action to the run's ledger entry (`scaling.actions`, tolerating a missing entry);
6. re-arms the alarm (SetAlarmState OK) after an action or a skip that clears by itself (cooldown, a resize
   in progress): an alarm that stays in ALARM sends no further event, so CloudWatch's next evaluation
   fires it again while the condition holds. At max/min the alarm is left alone.

Every function takes its AWS clients as parameters (`Clients`), so tests hand in moto or fake clients.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools.utilities.data_classes import CloudWatchAlarmEvent
from aws_lambda_powertools.utilities.data_classes.cloud_watch_alarm_event import CloudWatchAlarmData
from botocore.exceptions import ClientError

from autopilot_common.clients import Clients
from autopilot_common.ledger import ledger_key
from autopilot_common.pipeline_settings import SCALING, PipelineSection, PipelineSettingsStore
from autopilot_common.scaling_state import (
    APPLIED,
    claim_action,
    last_action_at,
    pending_action,
    record_outcome,
    release_claim,
    transition_id,
    transition_seen,
)
from autopilot_common.settings import Environment
from autopilot_common.tags import TAG_DEPLOYMENT, TAG_EXECUTION, TAG_PIPELINE, TAG_RUN_ID

if TYPE_CHECKING:
    from mypy_boto3_emr.type_defs import ClusterTypeDef

    from autopilot_common.clients import CloudWatchClient, EMRClient, S3Client, SFNClient

Direction = Literal["out", "in"]
Collection = Literal["fleets", "groups"]
ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"
ACTIVE_CLUSTER_STATES = ("RUNNING", "WAITING")
STARTING_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING")
SETTLING_TASK_STATES = ("PROVISIONING", "BOOTSTRAPPING", "RESIZING", "RECONFIGURING")
# What EMR answers when a change is not possible right now (resizing, ending cluster, unknown fleet).
REFUSALS = ("ValidationException", "InvalidRequestException")
_CLUSTER_AND_REST = re.compile(r"^(j-[A-Z0-9]+)-(out|in)-([a-z0-9][a-z0-9-]{0,30})$")
_LEDGER_ATTEMPTS = 5


class ScalerEventError(ValueError):
    """An event the scaler cannot read; the message names the field and what was expected."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ScalingPolicy:
    """One pipeline's `scaling: {mode: alarms}` (config/scaling.py `AlarmScaling`) as the scaler reads it."""

    collection: Collection
    step_units: int = 2
    scale_in_step_units: int = 2
    min_units: int = 0
    max_units: int = 10
    spot_percent: int = 100
    cooldown_seconds: int = 300
    out_rules: frozenset[str] = frozenset()
    in_rules: frozenset[str] = frozenset()

    def step(self, direction: Direction) -> int:
        return self.step_units if direction == "out" else self.scale_in_step_units

    def rules(self, direction: Direction) -> frozenset[str]:
        return self.out_rules if direction == "out" else self.in_rules

    @classmethod
    def from_json(cls, pipeline: str, raw: Any) -> ScalingPolicy:
        """From `AlarmScaling.model_dump(mode="json")` plus `collection`; ValueError names the bad key."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{pipeline}: got {type(raw).__name__}; expected an object")

        def number(key: str, low: int, high: int) -> int:
            value = raw.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{pipeline}.{key}: got {value!r}; expected an integer in [{low}, {high}]")
            return value

        collection = raw.get("collection")
        if collection not in ("fleets", "groups"):
            raise ValueError(f"{pipeline}.collection: got {collection!r}; expected 'fleets' or 'groups'")
        step = number("step_units", 1, 10000)
        in_step = raw.get("scale_in_step_units")
        policy = cls(
            collection=collection,
            step_units=step,
            scale_in_step_units=step if in_step is None else number("scale_in_step_units", 1, 10000),
            min_units=number("min_units", 0, 10000),
            max_units=number("max_units", 1, 10000),
            spot_percent=number("spot_percent", 0, 100),
            cooldown_seconds=number("cooldown_seconds", 60, 86400),
            out_rules=_rule_names(pipeline, raw, "scale_out"),
            in_rules=_rule_names(pipeline, raw, "scale_in"),
        )
        if policy.min_units > policy.max_units:
            raise ValueError(f"{pipeline}.min_units: {policy.min_units} exceeds max_units {policy.max_units}")
        return policy


def _rule_names(pipeline: str, raw: Mapping[str, Any], key: str) -> frozenset[str]:
    rules = raw.get(key, [])
    if not isinstance(rules, list) or not all(isinstance(r, Mapping) and isinstance(r.get("name"), str) for r in rules):
        raise ValueError(f"{pipeline}.{key}: expected a list of rules with a 'name'")
    return frozenset(str(r["name"]) for r in rules)


@dataclass(frozen=True)
class ScalerSettings:
    """The function's environment: `DEPLOYMENT`, `OUTPUTS_BUCKET`, `STATE_TABLE`, optional
    `PIPELINE_SETTINGS_MAX_AGE_SECONDS`. `policies` maps a pipeline's name to its policy: the `scaling` section of
    the pipeline's SSM parameter (`AlarmScaling.model_dump(mode="json")` plus `"collection": "fleets" | "groups"`,
    autopilot_common.pipeline_settings), read when an alarm of that pipeline fires."""

    deployment: str
    outputs_bucket: str
    state_table: str
    policies: Mapping[str, ScalingPolicy]

    @classmethod
    def from_env(cls, env: Mapping[str, str], ssm: Callable[[], Any] | None = None) -> ScalerSettings:
        """Read and validate the environment; RuntimeError names the first bad variable. `ssm` gives the SSM client
        on first use (default: one of its own)."""
        read = Environment(env)
        deployment = read.required(
            "DEPLOYMENT", "the deployment name that prefixes the alarm names, e.g. autopilot-dev"
        )
        outputs_bucket = read.required("OUTPUTS_BUCKET", "the outputs bucket that holds the run ledger")
        state_table = read.required("STATE_TABLE", "the DynamoDB claims table (key id, TTL expiration)")
        policies = PipelineSection(PipelineSettingsStore.from_env(env, ssm), SCALING, ScalingPolicy.from_json)
        return cls(deployment=deployment, outputs_bucket=outputs_bucket, state_table=state_table, policies=policies)


# --------------------------------------------------------------------------- the decision (pure)


@dataclass(frozen=True)
class TaskCapacity:
    """The cluster's task fleet (targets in capacity units) or task instance group (requested instances)."""

    collection: Literal["fleet", "group"]
    id: str
    state: str
    target_on_demand: int = 0
    target_spot: int = 0
    requested: int = 0

    @property
    def units(self) -> int:
        return self.target_on_demand + self.target_spot if self.collection == "fleet" else self.requested

    @property
    def unit_name(self) -> str:
        return "units" if self.collection == "fleet" else "instances"


@dataclass(frozen=True)
class Decision:
    """`scale` (with the new target and, for fleets, its on-demand/spot split) or `skip`, with the reason.

    `settling` marks a skip that clears by itself (cooldown, a resize or start-up in progress)."""

    action: Literal["scale", "skip"]
    reason: str
    from_units: int
    to_units: int
    on_demand: int | None = None
    spot: int | None = None
    settling: bool = False

    @property
    def scale(self) -> bool:
        return self.action == "scale"


def split_target(target: int, spot_percent: int) -> tuple[int, int]:
    """(on-demand, spot) of a fleet target: spot = floor(target x spot_percent / 100), on-demand the rest."""
    spot = target * spot_percent // 100
    return target - spot, spot


def decide(
    direction: Direction,
    policy: ScalingPolicy,
    task: TaskCapacity,
    cluster_state: str,
    seconds_since_last_action: float | None,
) -> Decision:
    """What one alarm of `direction` should do to `task` (no I/O)."""
    units, kind = task.units, f"task {task.collection}"

    def skip(reason: str, settling: bool = False) -> Decision:
        return Decision("skip", reason, units, units, settling=settling)

    if cluster_state not in ACTIVE_CLUSTER_STATES:
        return skip(
            f"cluster is {cluster_state}; expected RUNNING or WAITING", cluster_state in STARTING_CLUSTER_STATES
        )
    if task.state != "RUNNING":
        settling = task.state in SETTLING_TASK_STATES
        return skip(f"{kind} {task.id} is {task.state}; expected RUNNING", settling)
    if direction == "out":
        target = max(policy.min_units, min(units + policy.step_units, policy.max_units))
        if target <= units:
            return skip(f"{kind} already at max_units ({units} {task.unit_name}, max {policy.max_units})")
    else:
        target = max(policy.min_units, min(units - policy.scale_in_step_units, policy.max_units))
        if target >= units:
            return skip(f"{kind} already at min_units ({units} {task.unit_name}, min {policy.min_units})")
    if seconds_since_last_action is not None and seconds_since_last_action < policy.cooldown_seconds:
        left = math.ceil(policy.cooldown_seconds - seconds_since_last_action)
        return skip(f"within cooldown: {left} s left of {policy.cooldown_seconds} s", settling=True)
    reason = (
        f"scale {direction} {units} -> {target} {task.unit_name} "
        f"(step {policy.step(direction)}, bounds [{policy.min_units}, {policy.max_units}])"
    )
    if task.collection == "group":
        return Decision("scale", reason, units, target)
    on_demand, spot = split_target(target, policy.spot_percent)
    return Decision("scale", f"{reason}, {on_demand} on-demand + {spot} spot", units, target, on_demand, spot)


# --------------------------------------------------------------------------- alarm names and events


@dataclass(frozen=True)
class AlarmRef:
    """What a scaling alarm's name says: its pipeline, cluster, direction and rule."""

    name: str
    pipeline: str
    cluster_id: str
    direction: Direction
    rule: str


def parse_alarm_name(name: str, deployment: str, pipelines: Container[str]) -> AlarmRef | None:
    """`<deployment>-scaling-<pipeline>-<cluster id>-<out|in>-<rule>` against the known pipelines, or None.

    Pipeline names may contain `-`; cluster ids are upper case (`j-…`) and pipeline names lower case, so at most
    one split fits; `pipelines` is asked only about names that fit (each a parameter read for the scaler)."""
    prefix = f"{deployment}-scaling-"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    for cut in reversed([i for i, char in enumerate(rest) if char == "-"]):
        pipeline, match = rest[:cut], _CLUSTER_AND_REST.match(rest[cut + 1 :])
        if match and pipeline in pipelines:
            direction: Direction = "out" if match.group(2) == "out" else "in"
            return AlarmRef(name, pipeline, match.group(1), direction, match.group(3))
    return None


def alarm_of(event: Mapping[str, Any]) -> CloudWatchAlarmData:
    """The alarm of an EventBridge "CloudWatch Alarm State Change" event (or of a CloudWatch alarm action's
    direct invocation, `alarmData`); ScalerEventError names what is missing."""
    kind = event.get("detail-type")
    if kind == ALARM_STATE_CHANGE and isinstance(event.get("detail"), Mapping):
        alarm = CloudWatchAlarmData(dict(event["detail"]))
        where = "detail"
    elif kind is None and isinstance(event.get("alarmData"), Mapping):
        alarm = CloudWatchAlarmEvent(dict(event)).alarm_data
        where = "alarmData"
    else:
        raise ScalerEventError(f"detail-type: got {kind!r}; expected {ALARM_STATE_CHANGE!r} with a detail object")
    state = alarm.get("state")
    if not isinstance(alarm.get("alarmName"), str) or not isinstance(state, Mapping):
        raise ScalerEventError(f"{where}.alarmName / {where}.state: expected the alarm's name and new state")
    if not isinstance(state.get("value"), str) or not isinstance(state.get("timestamp"), str):
        raise ScalerEventError(f"{where}.state.value / {where}.state.timestamp: expected strings")
    return alarm


# --------------------------------------------------------------------------- the flow


@dataclass
class ScalingOutcome:
    """What the scaler did with one alarm event: `scaled`, `skipped` (an ALARM not acted on) or `ignored`
    (not an ALARM)."""

    result: Literal["scaled", "skipped", "ignored"]
    reason: str
    alarm: str
    direction: str | None = None
    pipeline: str | None = None
    cluster_id: str | None = None
    rule: str | None = None
    run_id: str | None = None
    from_units: int | None = None
    to_units: int | None = None
    on_demand: int | None = None
    spot: int | None = None
    ledger_written: bool = False
    rearmed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def scale_on_alarm(
    alarm: CloudWatchAlarmData, settings: ScalerSettings, clients: Clients, now: datetime
) -> ScalingOutcome:
    """React to one alarm state change (see the module docstring)."""
    name, state = alarm.alarm_name, alarm.state
    if state.value != "ALARM":
        return ScalingOutcome("ignored", f"state {state.value}; only ALARM acts", name)
    ref = parse_alarm_name(name, settings.deployment, settings.policies)
    if ref is None:
        return ScalingOutcome(
            "skipped",
            f"alarm name does not read as {settings.deployment}-scaling-<pipeline>-<cluster id>-<out|in>-<rule> "
            "for a deployed pipeline with alarm scaling",
            name,
        )
    outcome = ScalingOutcome("skipped", "", name, ref.direction, ref.pipeline, ref.cluster_id, ref.rule)
    policy = settings.policies[ref.pipeline]
    if ref.rule not in policy.rules(ref.direction):
        outcome.reason = f"rule {ref.rule!r} is not a scale_{ref.direction} rule of pipeline {ref.pipeline}"
        return outcome
    transition = transition_id(name, state.timestamp)
    if transition_seen(clients.dynamodb, settings.state_table, transition):
        pending = pending_action(clients.dynamodb, settings.state_table, ref.cluster_id, transition)
        if pending is not None:  # claimed by an invocation that died before recording the resize: finish it
            return _resume(ref, alarm, pending, settings, clients, now, outcome)
        outcome.reason = "this alarm transition was already acted on (duplicate delivery)"
        return outcome
    cluster = _cluster(clients.emr, ref.cluster_id)
    if cluster is None:
        outcome.reason = f"cluster {ref.cluster_id} does not exist"
        return outcome
    tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
    outcome.run_id = tags.get(TAG_RUN_ID)
    if tags.get(TAG_PIPELINE) != ref.pipeline or tags.get(TAG_DEPLOYMENT, settings.deployment) != settings.deployment:
        outcome.reason = (
            f"cluster {ref.cluster_id} is tagged {TAG_PIPELINE}={tags.get(TAG_PIPELINE)!r}; expected a cluster of "
            f"pipeline {ref.pipeline} of deployment {settings.deployment}"
        )
        return outcome
    collection = _collection(cluster, policy)
    task = task_capacity(clients.emr, ref.cluster_id, collection)
    if task is None:
        outcome.reason = f"cluster {ref.cluster_id} has no task {'fleet' if collection == 'fleets' else 'group'}"
        return outcome
    last = last_action_at(clients.dynamodb, settings.state_table, ref.cluster_id)
    since = (now - last).total_seconds() if last is not None else None
    decision = decide(ref.direction, policy, task, str(cluster.get("Status", {}).get("State")), since)
    outcome.from_units, outcome.to_units = decision.from_units, decision.to_units
    if not decision.scale:
        outcome.reason = decision.reason
        outcome.rearmed = decision.settling and rearm(clients.cloudwatch, name, f"scaler skipped: {decision.reason}")
        return outcome
    return _act(ref, alarm, decision, task, tags, settings, clients, now, outcome)


def _resume(
    ref: AlarmRef,
    alarm: CloudWatchAlarmData,
    pending: Mapping[str, Any],
    settings: ScalerSettings,
    clients: Clients,
    now: datetime,
    outcome: ScalingOutcome,
) -> ScalingOutcome:
    """Complete an action its invocation claimed and did not record: resize to the claimed target unless the task
    fleet/group is already there (the crash came after the EMR call), then record it as `_act` does."""
    cluster = _cluster(clients.emr, ref.cluster_id)
    task = None
    if cluster is not None:
        task = task_capacity(clients.emr, ref.cluster_id, _collection(cluster, settings.policies[ref.pipeline]))
    if cluster is None or task is None:
        outcome.reason = (
            f"a claimed action could not be completed: cluster {ref.cluster_id} or its task capacity is gone"
        )
        return outcome
    decision = Decision(
        "scale",
        str(pending.get("reason", "")),
        int(pending["from_units"]),
        int(pending["to_units"]),
        None if pending.get("on_demand") is None else int(pending["on_demand"]),
        None if pending.get("spot") is None else int(pending["spot"]),
    )
    done = (
        (task.target_on_demand, task.target_spot) == (decision.on_demand, decision.spot)
        if task.collection == "fleet"
        else task.requested == decision.to_units
    )
    if not done:
        resize(clients.emr, ref.cluster_id, task, decision)
    transition = transition_id(ref.name, alarm.state.timestamp)
    record_outcome(
        clients.dynamodb, settings.state_table, cluster_id=ref.cluster_id, transition_id=transition, outcome=APPLIED
    )
    tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
    action = {**pending, "outcome": APPLIED}
    outcome.run_id = tags.get(TAG_RUN_ID)
    outcome.from_units, outcome.to_units = decision.from_units, decision.to_units
    outcome.result, outcome.reason = "scaled", f"completed a claimed action ({decision.reason})"
    outcome.on_demand, outcome.spot = decision.on_demand, decision.spot
    outcome.ledger_written = record_in_ledger(clients.s3, clients.sfn, settings.outputs_bucket, ref.pipeline, tags,
                                              action)  # fmt: skip
    outcome.rearmed = rearm(clients.cloudwatch, ref.name, f"scaler acted: {decision.reason}")
    return outcome


def _act(
    ref: AlarmRef,
    alarm: CloudWatchAlarmData,
    decision: Decision,
    task: TaskCapacity,
    tags: Mapping[str, str],
    settings: ScalerSettings,
    clients: Clients,
    now: datetime,
    outcome: ScalingOutcome,
) -> ScalingOutcome:
    """Claim, resize, record: the `scale` half of `scale_on_alarm`."""
    policy = settings.policies[ref.pipeline]
    transition = transition_id(ref.name, alarm.state.timestamp)
    action: dict[str, Any] = {
        "at": _iso(now),
        "direction": ref.direction,
        "rule": ref.rule,
        "alarm": ref.name,
        "alarm_reason": str(alarm.state.get("reason") or "")[:500],
        "collection": task.collection,
        "task_id": task.id,
        "from_units": decision.from_units,
        "to_units": decision.to_units,
        "reason": decision.reason,
    }
    if task.collection == "fleet":
        action |= {
            "from_on_demand": task.target_on_demand,
            "from_spot": task.target_spot,
            "on_demand": decision.on_demand,
            "spot": decision.spot,
        }
    claim = claim_action(
        clients.dynamodb,
        settings.state_table,
        cluster_id=ref.cluster_id,
        transition_id=transition,
        cooldown_seconds=policy.cooldown_seconds,
        now=now,
        action=action,
    )
    if claim.outcome == "duplicate":
        outcome.reason = "this alarm transition was already acted on (a concurrent delivery claimed it)"
        return outcome
    if claim.outcome == "cooldown":
        outcome.reason = f"within cooldown: {claim.seconds_left} s left of {policy.cooldown_seconds} s"
        outcome.rearmed = rearm(clients.cloudwatch, ref.name, f"scaler skipped: {outcome.reason}")
        return outcome
    try:
        resize(clients.emr, ref.cluster_id, task, decision)
    except ClientError as exc:
        error = f"{_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}"
        refused = _code(exc) in REFUSALS
        release_claim(
            clients.dynamodb,
            settings.state_table,
            cluster_id=ref.cluster_id,
            transition_id=transition,
            error=error,
            forget_transition=not refused,
        )
        if not refused:
            raise  # throttling, 5xx: EventBridge retries the event, which may act (the claim was given back)
        outcome.reason = f"EMR refused the resize ({error})"
        outcome.rearmed = rearm(clients.cloudwatch, ref.name, f"scaler skipped: {outcome.reason}")
        return outcome
    record_outcome(
        clients.dynamodb, settings.state_table, cluster_id=ref.cluster_id, transition_id=transition, outcome=APPLIED
    )
    action |= {"transition_id": transition, "outcome": APPLIED}
    outcome.result, outcome.reason = "scaled", decision.reason
    outcome.on_demand, outcome.spot = decision.on_demand, decision.spot
    outcome.ledger_written = record_in_ledger(
        clients.s3, clients.sfn, settings.outputs_bucket, ref.pipeline, tags, action
    )
    outcome.rearmed = rearm(clients.cloudwatch, ref.name, f"scaler acted: {decision.reason}")
    return outcome


# --------------------------------------------------------------------------- EMR, ledger, alarm


def _cluster(emr: EMRClient, cluster_id: str) -> ClusterTypeDef | None:
    try:
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    except ClientError as exc:
        if _code(exc) in REFUSALS:
            return None
        raise
    return cluster


def _collection(cluster: Mapping[str, Any], policy: ScalingPolicy) -> Collection:
    """The cluster's own instance collection type; the configured one when EMR does not say."""
    kind = cluster.get("InstanceCollectionType")
    if kind == "INSTANCE_FLEET":
        return "fleets"
    if kind == "INSTANCE_GROUP":
        return "groups"
    return policy.collection


def task_capacity(emr: EMRClient, cluster_id: str, collection: Collection) -> TaskCapacity | None:
    """The cluster's task fleet (ListInstanceFleets) or task group (ListInstanceGroups; the one named `task`
    when there are several), or None."""
    if collection == "fleets":
        fleets = _listed(emr.list_instance_fleets, cluster_id, "InstanceFleets")
        fleet = next((f for f in fleets if f.get("InstanceFleetType") == "TASK"), None)
        if fleet is None:
            return None
        return TaskCapacity(
            "fleet",
            str(fleet["Id"]),
            str(fleet.get("Status", {}).get("State", "UNKNOWN")),
            target_on_demand=int(fleet.get("TargetOnDemandCapacity") or 0),
            target_spot=int(fleet.get("TargetSpotCapacity") or 0),
        )
    groups = [
        g
        for g in _listed(emr.list_instance_groups, cluster_id, "InstanceGroups")
        if g.get("InstanceGroupType") == "TASK"
    ]
    if not groups:
        return None
    group = next((g for g in groups if g.get("Name") == "task"), groups[0])
    return TaskCapacity(
        "group",
        str(group["Id"]),
        str(group.get("Status", {}).get("State", "UNKNOWN")),
        requested=int(group.get("RequestedInstanceCount") or 0),
    )


def _listed(call: Any, cluster_id: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        page = call(ClusterId=cluster_id, **({"Marker": marker} if marker else {}))
        found += page.get(key, [])
        marker = page.get("Marker")
        if not marker:
            return found


def resize(emr: EMRClient, cluster_id: str, task: TaskCapacity, decision: Decision) -> None:
    """ModifyInstanceFleet (both targets) or ModifyInstanceGroups (the count) to the decision's target."""
    if task.collection == "fleet":
        if decision.on_demand is None or decision.spot is None:
            raise ValueError(f"a fleet resize needs both targets; got {decision}")
        emr.modify_instance_fleet(
            ClusterId=cluster_id,
            InstanceFleet={
                "InstanceFleetId": task.id,
                "TargetOnDemandCapacity": decision.on_demand,
                "TargetSpotCapacity": decision.spot,
            },
        )
    else:
        emr.modify_instance_groups(
            ClusterId=cluster_id, InstanceGroups=[{"InstanceGroupId": task.id, "InstanceCount": decision.to_units}]
        )


def record_in_ledger(
    s3: S3Client, sfn: SFNClient, bucket: str, pipeline: str, tags: Mapping[str, str], action: Mapping[str, Any]
) -> bool:
    """Append `action` to `scaling.actions` of the run's ledger entry (read-modify-write with If-Match, so a
    concurrent writer is never overwritten; once per transition). False when there is no entry to amend
    (the finalize step copies the stored actions anyway)."""
    run_id, execution = tags.get(TAG_RUN_ID), tags.get(TAG_EXECUTION)
    if not run_id or not execution:
        return False
    try:
        started = sfn.describe_execution(executionArn=execution)["startDate"]
    except ClientError as exc:
        if _code(exc) in ("ExecutionDoesNotExist", "InvalidArn"):
            return False
        raise
    key = ledger_key(pipeline, started, run_id)
    for _ in range(_LEDGER_ATTEMPTS):
        try:
            current = s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return False
            raise
        entry: dict[str, Any] = json.loads(current["Body"].read())
        found = entry.get("scaling")
        scaling: dict[str, Any] = found if isinstance(found, dict) else {}
        listed = scaling.get("actions")
        done: list[Any] = listed if isinstance(listed, list) else []
        if any(isinstance(a, dict) and a.get("transition_id") == action.get("transition_id") for a in done):
            return True
        entry["scaling"] = {**scaling, "actions": [*done, dict(action)]}
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                ContentType="application/json",
                Body=json.dumps(entry, ensure_ascii=False).encode(),
                IfMatch=current["ETag"],
            )
            return True
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
    return False


def rearm(cloudwatch: CloudWatchClient, alarm_name: str, reason: str) -> bool:
    """SetAlarmState OK, so CloudWatch's next evaluation fires the alarm again while its condition holds.
    Best effort: False (never an error) when CloudWatch refuses, e.g. the alarm was just deleted."""
    try:
        cloudwatch.set_alarm_state(AlarmName=alarm_name, StateValue="OK", StateReason=reason[:1023])
    except ClientError:
        return False
    return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
