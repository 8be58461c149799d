"""The state of EMR-on-EC2 clusters: data classes, constants and ids (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import copy
import random
import re
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from local.faults import TwinClientError

ACTIVE_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"})
ENDED_CLUSTER_STATES = frozenset({"TERMINATED", "TERMINATED_WITH_ERRORS"})
TRANSITION_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "TERMINATING"})
ACTIVE_STEP_STATES = frozenset({"PENDING", "RUNNING", "CANCEL_PENDING"})
ENDED_STEP_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"})
STEP_FAILURE_STATES = frozenset({"FAILED", "CANCELLED", "INTERRUPTED"})
ACTIONS_ON_FAILURE = frozenset({"TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE"})
TERMINATE_ACTIONS = frozenset({"TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER"})
NODE_TYPES = ("MASTER", "CORE", "TASK")
IDLE_TIMEOUT_CODE = "ALL_STEPS_COMPLETED"  # EMR's reason codes have no idle-timeout value (docs/twin/emr-on-ec2.md)
MAX_ACTIVE_STEPS = 256
EMR_CLEANUP_ROLE = "AWSServiceRoleForEMRCleanup"
EMR_CLEANUP_ROLE_PATH = "/aws-service-role/elasticmapreduce.amazonaws.com/"
MAX_BOOTSTRAP_ACTIONS = 16
STEP_TIMEOUT_SECONDS = 3600
_ID_ALPHABET = string.ascii_uppercase + string.digits
# EMR's normalization factors by instance size ("Normalized instance hours" in the EMR management guide).
_SIZE_FACTORS: dict[str, float] = {"nano": 0.25, "micro": 0.5, "small": 1, "medium": 2, "large": 4, "xlarge": 8}


def new_id(prefix: str) -> str:
    return prefix + "".join(random.choices(_ID_ALPHABET, k=13))


def new_ec2_id() -> str:
    return "i-" + "".join(random.choices("0123456789abcdef", k=17))


def emr_time(epoch: float) -> str:
    """The time format of EMR event messages, e.g. "2016-12-16 21:00 UTC"."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def timeline(**points: float | None) -> dict[str, float]:
    return {name: round(value, 3) for name, value in points.items() if value is not None}


def invalid(message: str) -> TwinClientError:
    return TwinClientError("ValidationException", message)


def not_found(message: str) -> TwinClientError:
    return TwinClientError("InvalidRequestException", message)


def normalization_factor(instance_type: str) -> float:
    """EMR's normalization factor of an instance type (small = 1, large = 4, xlarge = 8, 2xlarge = 16, ...)."""
    size = instance_type.rsplit(".", 1)[-1]
    if size in _SIZE_FACTORS:
        return _SIZE_FACTORS[size]
    match = re.fullmatch(r"(?:metal-)?(\d+)xl(?:arge)?", size)
    if match:
        return 8.0 * int(match.group(1))
    return 192.0 if size == "metal" else 8.0  # bare metal: as a 24xlarge; unknown sizes: as an xlarge


@dataclass
class Instance:
    """One EC2 instance of a fleet or group."""

    id: str
    ec2_id: str
    instance_type: str
    market: str
    weight: int
    fleet_id: str | None
    group_id: str | None
    private_ip: str
    private_dns: str
    state: str = "BOOTSTRAPPING"
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
    reason: dict[str, str] = field(default_factory=dict)  # why it ended (default: with its cluster)


@dataclass(kw_only=True)
class Lifetime:
    """Why a cluster, fleet or group is in its state, and its timeline (created, ready, ended)."""

    reason: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None


@dataclass(kw_only=True)
class Provisioned(Lifetime):
    """What a fleet and a group share: their state and the start of a resize."""

    state: str = "PROVISIONING"
    resize_started: float | None = None


@dataclass
class InstanceFleet(Provisioned):
    """An instance fleet as RunJobFlow declared it, plus what was provisioned."""

    id: str
    name: str
    fleet_type: str
    target_on_demand: int
    target_spot: int
    type_configs: list[dict[str, Any]]
    launch_specifications: dict[str, Any] | None
    resize_specifications: dict[str, Any] | None
    context: str | None
    provisioned_on_demand: int = 0
    provisioned_spot: int = 0


@dataclass
class InstanceGroup(Provisioned):
    """An instance group as RunJobFlow declared it, plus what is running."""

    id: str
    name: str
    group_type: str
    market: str
    instance_type: str
    requested: int
    config: dict[str, Any]
    running: int = 0
    previous_count: int = 0


@dataclass
class Step:
    """One step: its HadoopJarStep, its state and the events that stop it."""

    id: str
    name: str
    config: dict[str, Any]  # the DescribeStep Config shape: Jar, Properties, MainClass, Args
    action_on_failure: str
    execution_role_arn: str | None
    log_uri: str | None  # StepMonitoringConfiguration's, else None (the cluster's applies)
    state: str = "PENDING"
    reason: dict[str, str] = field(default_factory=dict)
    failure: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    user_cancelled: bool = False


@dataclass
class Cluster(Lifetime):
    """One cluster: the RunJobFlow request, its fleets or groups, instances and steps."""

    id: str
    arn: str
    name: str
    request: dict[str, Any]
    release_label: str
    log_uri: str | None
    keep_alive: bool
    termination_protected: bool
    step_concurrency: int
    auto_termination: dict[str, Any] | None
    managed_scaling: dict[str, Any] | None
    tags: dict[str, str]
    fleets: list[InstanceFleet] = field(default_factory=list)
    groups: list[InstanceGroup] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    state: str = "STARTING"
    idle_since: float | None = None
    final: tuple[str, str, str] | None = None  # (final state, reason code, message) once termination began
    master_dns: str | None = None

    @property
    def collection_type(self) -> str:
        """INSTANCE_FLEET or INSTANCE_GROUP, as DescribeCluster reports it."""
        return "INSTANCE_FLEET" if self.fleets else "INSTANCE_GROUP"

    @property
    def master_instance(self) -> Instance | None:
        """The primary node (its id names it in bootstrap failures; its DNS is MasterPublicDnsName)."""
        masters = {f.id for f in self.fleets if f.fleet_type == "MASTER"} | {
            g.id for g in self.groups if g.group_type == "MASTER"
        }
        return next((i for i in self.instances if (i.fleet_id or i.group_id) in masters), None)


def owners(c: Cluster) -> list[InstanceFleet | InstanceGroup]:
    return [*c.fleets, *c.groups]


def fleet_from_request(config: dict[str, Any]) -> InstanceFleet:
    return InstanceFleet(
        id=new_id("if-"),
        name=config.get("Name") or config["InstanceFleetType"],
        fleet_type=config["InstanceFleetType"],
        target_on_demand=int(config.get("TargetOnDemandCapacity") or 0),
        target_spot=int(config.get("TargetSpotCapacity") or 0),
        type_configs=copy.deepcopy(config["InstanceTypeConfigs"]),
        launch_specifications=copy.deepcopy(config.get("LaunchSpecifications")),
        resize_specifications=copy.deepcopy(config.get("ResizeSpecifications")),
        context=config.get("Context"),
    )


def group_from_request(config: dict[str, Any]) -> InstanceGroup:
    return InstanceGroup(
        id=new_id("ig-"),
        name=config.get("Name") or config["InstanceRole"],
        group_type=config["InstanceRole"],
        market=config.get("Market") or "ON_DEMAND",
        instance_type=config["InstanceType"],
        requested=int(config["InstanceCount"]),
        config=copy.deepcopy(config),
    )
