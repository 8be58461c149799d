"""What EMR refuses in a RunJobFlow and in later changes to a cluster (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from typing import Any

from local.emr_ec2.model import ACTIONS_ON_FAILURE, MAX_BOOTSTRAP_ACTIONS, NODE_TYPES, Cluster, invalid

_RELEASE_LABEL = re.compile(r"^emr-\d+\.\d+\.\d+$")
_LAUNCH_SPECS = ("SpotSpecification", "OnDemandSpecification")
NOT_MODIFIABLE = "A job flow that is shutting down, terminated, or finished may not be modified."


def validate_run_job_flow(
    params: dict[str, Any], *, security_configurations: Collection[str], iam_account: str | None
) -> None:
    """RunJobFlow as EMR validates it (`iam_account`: whose IAM must hold the roles; None: not checked)."""
    if not params.get("Name"):
        raise invalid("1 validation error detected: Name is required")
    if not isinstance(params.get("Instances"), dict):
        raise invalid("1 validation error detected: Instances is required")
    label = params.get("ReleaseLabel")
    if not label:
        raise invalid("ReleaseLabel is required: the twin models release-label (emr-x.y.z) clusters only.")
    if not _RELEASE_LABEL.match(str(label)):
        raise invalid(f"The specified release label '{label}' is not valid (expected emr-x.y.z).")
    _validate_roles(params, iam_account)
    name = params.get("SecurityConfiguration")
    if name and name not in security_configurations:
        raise invalid(f"Security configuration '{name}' does not exist.")
    _validate_instances(params["Instances"])
    check_idle_timeout(params.get("AutoTerminationPolicy") or {})
    if "StepConcurrencyLevel" in params:
        step_concurrency(params["StepConcurrencyLevel"])
    _validate_bootstrap_actions(params.get("BootstrapActions") or [])
    for step in params.get("Steps") or []:
        validate_step(step)


def _validate_roles(params: dict[str, Any], iam_account: str | None) -> None:
    if not params.get("ServiceRole"):
        raise invalid("ServiceRole is required for creating cluster.")
    if not params.get("JobFlowRole"):
        raise invalid("InstanceProfile is required for creating cluster.")
    if iam_account is None:
        return
    from moto.iam.models import iam_backends

    iam = iam_backends[iam_account]["aws"]
    try:
        iam.get_role(str(params["ServiceRole"]).rsplit("/", 1)[-1])
    except Exception:
        raise invalid(f"Invalid ServiceRole: {params['ServiceRole']}.") from None
    try:
        iam.get_instance_profile(str(params["JobFlowRole"]).rsplit("/", 1)[-1])
    except Exception:
        raise invalid(f"Invalid InstanceProfile: {params['JobFlowRole']}.") from None


def check_resizable(c: Cluster, state: str, node_type: str, what: str) -> None:
    """A fleet or group may be resized: a RUNNING one, not the MASTER, of a RUNNING or WAITING cluster."""
    if c.final is not None or c.state not in ("RUNNING", "WAITING"):
        raise invalid(f"The cluster {c.id} is {c.state}: {what} can only be modified while RUNNING or WAITING.")
    if node_type == "MASTER":
        raise invalid(f"The {what} is the MASTER node type: modifying it is not supported.")
    if state == "RESIZING":
        raise invalid(f"The {what} is already RESIZING: wait until it is RUNNING.")
    if state != "RUNNING":
        raise invalid(f"The {what} is {state}: it can only be modified while RUNNING.")


def legacy_instances(instances: dict[str, Any]) -> dict[str, Any]:
    """MasterInstanceType/SlaveInstanceType/InstanceCount as the instance groups EMR creates from them."""
    if instances.get("InstanceGroups") or instances.get("InstanceFleets") or not instances.get("MasterInstanceType"):
        return instances
    count = int(instances.get("InstanceCount") or 1)
    groups = [{"Name": "MASTER", "InstanceRole": "MASTER", "InstanceType": instances["MasterInstanceType"],
               "InstanceCount": 1, "Market": "ON_DEMAND"}]  # fmt: skip
    if count > 1:
        core_type = instances.get("SlaveInstanceType") or instances["MasterInstanceType"]
        groups.append({"Name": "CORE", "InstanceRole": "CORE", "InstanceType": core_type,
                       "InstanceCount": count - 1, "Market": "ON_DEMAND"})  # fmt: skip
    return {**instances, "InstanceGroups": groups}


def _validate_instances(instances: dict[str, Any]) -> None:
    fleets, groups = instances.get("InstanceFleets"), instances.get("InstanceGroups")
    if fleets and groups:
        raise invalid("Please specify either InstanceFleets or InstanceGroups, not both.")
    if fleets:
        _validate_fleets(fleets)
    elif groups:
        _validate_groups(groups)
    else:
        raise invalid("Instances must specify InstanceFleets, InstanceGroups or MasterInstanceType.")


def _node_types(configs: list[dict[str, Any]], key: str, what: str) -> Counter[Any]:
    """How many fleets or groups (`what`) of each node type (`key` names it) there are: exactly one MASTER."""
    kinds = Counter(config.get(key) for config in configs)
    unknown = set(kinds) - set(NODE_TYPES)
    if unknown:
        raise invalid(f"{key} must be one of MASTER, CORE, TASK; got {sorted(map(str, unknown))}.")
    if kinds["MASTER"] != 1:
        raise invalid(f"A cluster must have exactly one MASTER {what}; got {kinds['MASTER']}.")
    return kinds


def _validate_fleets(fleets: list[dict[str, Any]]) -> None:
    kinds = _node_types(fleets, "InstanceFleetType", "instance fleet")
    if kinds["CORE"] > 1 or kinds["TASK"] > 1:
        raise invalid("A cluster can have at most one CORE and one TASK instance fleet.")
    for fleet in fleets:
        _validate_fleet(fleet)


def _validate_fleet(fleet: dict[str, Any]) -> None:
    kind, name = fleet["InstanceFleetType"], fleet.get("Name") or fleet["InstanceFleetType"]
    configs = fleet.get("InstanceTypeConfigs") or []
    if not configs or any(not c.get("InstanceType") for c in configs):
        raise invalid(f"Instance fleet {name} must specify InstanceTypeConfigs, each with an InstanceType.")
    specs = fleet.get("LaunchSpecifications") or {}
    strategy = any((specs.get(k) or {}).get("AllocationStrategy") for k in _LAUNCH_SPECS)
    limit = 30 if kind == "TASK" and strategy else 5
    if len(configs) > limit:
        raise invalid(f"Instance fleet {name} specifies {len(configs)} instance types; the maximum is {limit}.")
    od, spot = int(fleet.get("TargetOnDemandCapacity") or 0), int(fleet.get("TargetSpotCapacity") or 0)
    if od < 0 or spot < 0:
        raise invalid(f"Instance fleet {name}: target capacities must not be negative.")
    if kind == "MASTER" and od + spot != 1:
        raise invalid(
            "The MASTER instance fleet must have a target capacity of exactly 1 "
            f"(TargetOnDemandCapacity or TargetSpotCapacity); got On-Demand {od} and Spot {spot}."
        )
    if kind == "MASTER" and any(int(c.get("WeightedCapacity") or 1) != 1 for c in configs):
        raise invalid("The MASTER instance fleet's InstanceTypeConfigs must have a WeightedCapacity of 1.")
    if any(int(c.get("WeightedCapacity") or 1) < 1 for c in configs):
        raise invalid(f"Instance fleet {name}: WeightedCapacity must be at least 1.")


def _validate_groups(groups: list[dict[str, Any]]) -> None:
    roles = _node_types(groups, "InstanceRole", "instance group")
    if roles["CORE"] > 1:
        raise invalid("A cluster can have at most one CORE instance group.")
    for group in groups:
        count = int(group.get("InstanceCount", -1))
        if not group.get("InstanceType") or count < 0:
            raise invalid("Every instance group needs an InstanceType and an InstanceCount of 0 or more.")
        if group["InstanceRole"] == "MASTER" and count not in (1, 3):
            raise invalid(f"The MASTER instance group must have 1 (or 3, for high availability) instances: {count}.")
        if group.get("Market", "ON_DEMAND") not in ("ON_DEMAND", "SPOT"):
            raise invalid(f"Market must be ON_DEMAND or SPOT; got {group.get('Market')}.")


def _validate_bootstrap_actions(actions: list[dict[str, Any]]) -> None:
    if len(actions) > MAX_BOOTSTRAP_ACTIONS:
        raise invalid(f"A cluster can have at most {MAX_BOOTSTRAP_ACTIONS} bootstrap actions; got {len(actions)}.")
    for action in actions:
        if not action.get("Name") or not (action.get("ScriptBootstrapAction") or {}).get("Path"):
            raise invalid("Every bootstrap action needs a Name and a ScriptBootstrapAction with a Path.")


def validate_step(step: dict[str, Any]) -> None:
    if not step.get("Name") or not (step.get("HadoopJarStep") or {}).get("Jar"):
        raise invalid("Every step needs a Name and a HadoopJarStep with a Jar.")
    action = step.get("ActionOnFailure")
    if action is not None and action not in ACTIONS_ON_FAILURE:
        raise invalid(f"ActionOnFailure must be one of {', '.join(sorted(ACTIONS_ON_FAILURE))}; got {action}.")


def check_idle_timeout(policy: dict[str, Any]) -> None:
    timeout = policy.get("IdleTimeout")
    if timeout is not None and not 60 <= int(timeout) <= 604800:
        raise invalid(f"IdleTimeout must be between 60 and 604800 seconds; got {timeout}.")


def step_concurrency(value: Any) -> int:
    level = int(value)
    if not 1 <= level <= 256:
        raise invalid(f"StepConcurrencyLevel must be between 1 and 256; got {level}.")
    return level
