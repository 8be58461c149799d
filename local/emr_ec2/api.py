"""The `emr` API of the twin's EMR-on-EC2 clusters: one handler per operation (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Unpack

from local.emr_ec2.model import (
    ACTIVE_CLUSTER_STATES,
    ACTIVE_STEP_STATES,
    EMR_CLEANUP_ROLE,
    EMR_CLEANUP_ROLE_PATH,
    ENDED_CLUSTER_STATES,
    MAX_ACTIVE_STEPS,
    TRANSITION_CLUSTER_STATES,
    Cluster,
    InstanceGroup,
    emr_time,
    fleet_from_request,
    group_from_request,
    invalid,
    new_id,
    not_found,
    owners,
)
from local.emr_ec2.shapes import (
    cluster_shape,
    cluster_status,
    fleet_shape,
    group_shape,
    instance_hours,
    instance_shape,
    step_shape,
)
from local.emr_ec2.steps import StepRunner
from local.emr_ec2.validation import (
    NOT_MODIFIABLE,
    check_idle_timeout,
    check_resizable,
    legacy_instances,
    step_concurrency,
    validate_run_job_flow,
    validate_step,
)
from local.emr_service import EmrServiceSettings


class EmrEc2Twin(StepRunner):
    """Every EMR-on-EC2 cluster of the twin: the `emr` API, the Step Functions integrations' backend, events."""

    def __init__(
        self, *, workdir: Path, s3: Any = None, check_iam: bool = True, **settings: Unpack[EmrServiceSettings]
    ) -> None:
        super().__init__(workdir=workdir, s3=s3, check_iam=check_iam, **settings)
        self._api: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "RunJobFlow": self.run_job_flow,
            "DescribeCluster": lambda p: {"Cluster": self.describe_cluster(p["ClusterId"])},
            "ListClusters": self.list_clusters,
            "ListInstanceFleets": self.list_instance_fleets,
            "ListInstanceGroups": self.list_instance_groups,
            "ListInstances": self.list_instances,
            "AddJobFlowSteps": self.add_job_flow_steps,
            "DescribeStep": lambda p: {"Step": self.describe_step(p["ClusterId"], p["StepId"])},
            "ListSteps": self.list_steps,
            "CancelSteps": self.cancel_steps,
            "TerminateJobFlows": self.terminate_job_flows,
            "SetTerminationProtection": self.set_termination_protection,
            "AddTags": self.add_tags,
            "RemoveTags": self.remove_tags,
            "PutAutoTerminationPolicy": self.put_auto_termination_policy,
            "GetAutoTerminationPolicy": functools.partial(
                self._get_policy, "auto_termination", "AutoTerminationPolicy"
            ),
            "RemoveAutoTerminationPolicy": functools.partial(self._set_policy, "auto_termination", None),
            "PutManagedScalingPolicy": lambda p: self._set_policy("managed_scaling", p["ManagedScalingPolicy"], p),
            "GetManagedScalingPolicy": functools.partial(self._get_policy, "managed_scaling", "ManagedScalingPolicy"),
            "RemoveManagedScalingPolicy": functools.partial(self._set_policy, "managed_scaling", None),
            "ModifyInstanceFleet": self.modify_instance_fleet,
            "ModifyInstanceGroups": self.modify_instance_groups,
            "ModifyCluster": self.modify_cluster,
            "ListBootstrapActions": self.list_bootstrap_actions,
            "CreateSecurityConfiguration": self.create_security_configuration,
            "DescribeSecurityConfiguration": self.describe_security_configuration,
            "ListSecurityConfigurations": self.list_security_configurations,
            "DeleteSecurityConfiguration": self.delete_security_configuration,
        }

    # ------------------------------------------------------------------ for the twin and tests

    def handle_api(self, action: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Serve one `emr` API call (the JSON request body); None when the twin does not model `action`."""
        handler = self._api.get(action)
        if handler is None:
            return None
        try:
            return handler(params)
        except KeyError as missing:
            raise invalid(f"1 validation error detected: {missing.args[0]} is required") from None

    def active_clusters(self) -> list[str]:
        """Ids of the clusters not TERMINATED / TERMINATED_WITH_ERRORS (for "nothing left running" checks)."""
        with self._cond:
            return [c.id for c in self.clusters.values() if c.state not in ENDED_CLUSTER_STATES]

    def busy(self) -> bool:
        """A cluster starting, bootstrapping, terminating or resizing, or a step pending or running."""
        with self._cond:
            for c in self.clusters.values():
                if c.state in TRANSITION_CLUSTER_STATES or any(s.state in ACTIVE_STEP_STATES for s in c.steps):
                    return True
                if any(x.state == "RESIZING" for x in owners(c)):
                    return True
            return False

    def shutdown(self) -> None:
        """End every cluster and step thread (the twin is stopping; states are left as they are)."""
        self._stopped.set()
        with self._cond:
            for c in self.clusters.values():
                for s in c.steps:
                    s.cancel.set()
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (on the model's state changes) until `predicate()` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_cluster(self, cluster_id: str, states: Iterable[str], timeout: float = 10.0) -> str:
        """Wait until the cluster is in one of `states`; its state (TimeoutError naming the current one)."""
        wanted = set(states)
        c = self._cluster(cluster_id)
        if not self.wait_until(lambda: c.state in wanted, timeout):
            raise TimeoutError(f"cluster {cluster_id} is {c.state}, not {sorted(wanted)}, after {timeout} s")
        return c.state

    def wait_step(self, cluster_id: str, step_id: str, states: Iterable[str], timeout: float = 10.0) -> str:
        """Wait until the step is in one of `states`; its state (TimeoutError naming the current one)."""
        wanted = set(states)
        s = self._step(self._cluster(cluster_id), step_id)
        if not self.wait_until(lambda: s.state in wanted, timeout):
            raise TimeoutError(f"step {step_id} is {s.state}, not {sorted(wanted)}, after {timeout} s")
        return s.state

    def fleet_id_by_name(self, cluster_id: str, name: str) -> str:
        """The id of a cluster's fleet by name (Step Functions modifyInstanceFleetByName)."""
        return self._id_by_name(cluster_id, name, "fleet")

    def group_id_by_name(self, cluster_id: str, name: str) -> str:
        """The id of a cluster's group by name (Step Functions modifyInstanceGroupByName)."""
        return self._id_by_name(cluster_id, name, "group")

    def _id_by_name(self, cluster_id: str, name: str, kind: str) -> str:
        with self._cond:
            c = self._cluster(cluster_id)
            found = next((x.id for x in (c.fleets if kind == "fleet" else c.groups) if x.name == name), None)
        if found is None:
            raise not_found(f"Instance {kind} with name '{name}' does not exist in cluster {cluster_id}.")
        return found

    # ------------------------------------------------------------------ clusters

    def run_job_flow(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunJobFlow: validate like EMR, create the cluster STARTING and start driving it."""
        params = copy.deepcopy(params)
        if isinstance(params.get("Instances"), dict):
            params["Instances"] = legacy_instances(params["Instances"])
        iam_account = self.account if self.check_iam else None
        validate_run_job_flow(params, security_configurations=self.security_configurations, iam_account=iam_account)
        instances = params["Instances"]
        with self._cond:
            cluster_id = new_id("j-")
            c = Cluster(
                id=cluster_id,
                arn=f"arn:aws:elasticmapreduce:{self.region}:{self.account}:cluster/{cluster_id}",
                name=params["Name"],
                request=params,
                release_label=params["ReleaseLabel"],
                log_uri=params.get("LogUri"),
                keep_alive=bool(instances.get("KeepJobFlowAliveWhenNoSteps", False)),
                termination_protected=bool(instances.get("TerminationProtected", False)),
                step_concurrency=int(params.get("StepConcurrencyLevel") or 1),
                auto_termination=params.get("AutoTerminationPolicy"),
                managed_scaling=params.get("ManagedScalingPolicy"),
                tags={t["Key"]: t.get("Value", "") for t in params.get("Tags") or []},
            )
            c.fleets = [fleet_from_request(f) for f in instances.get("InstanceFleets") or []]
            c.groups = [group_from_request(g) for g in instances.get("InstanceGroups") or []]
            self.clusters[c.id] = c
            self._set_cluster(c, "STARTING", {"Message": "Provisioning Amazon EC2 capacity"})
            for config in params.get("Steps") or []:
                self._add_step(c, config, params.get("StepExecutionRoleArn"))
        self._ensure_cleanup_role()
        threading.Thread(target=self._drive, args=(c,), name=f"emr-{c.id}", daemon=True).start()
        return {"JobFlowId": c.id, "ClusterArn": c.arn}

    def _ensure_cleanup_role(self) -> None:
        """EMR creates its service-linked role AWSServiceRoleForEMRCleanup with an account's first cluster (EMR
        management guide, "Using service-linked roles for Amazon EMR for cleanup"); until then RunJobFlow needs
        iam:CreateServiceLinkedRole (the twin's IAM table asks for it while the role is missing)."""
        from moto.iam.models import iam_backends

        iam = iam_backends[self.account]["global"]
        try:
            iam.get_role(EMR_CLEANUP_ROLE)
            return
        except Exception:  # moto's NoSuchEntity: create it, as EMR does
            pass
        emr = {"Service": "elasticmapreduce.amazonaws.com"}
        assume = {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": emr}
        trust = {"Version": "2012-10-17", "Statement": [assume]}
        iam.create_role(
            EMR_CLEANUP_ROLE,
            json.dumps(trust),
            EMR_CLEANUP_ROLE_PATH,
            None,
            "Service-linked role EMR uses to clean up EC2 resources",
            [],
            None,
            linked_service="elasticmapreduce.amazonaws.com",
        )

    def describe_cluster(self, cluster_id: str) -> dict[str, Any]:
        """The DescribeCluster `Cluster` shape."""
        with self._cond:
            return cluster_shape(self._cluster(cluster_id), self.region)

    def list_clusters(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListClusters: newest first, filtered by ClusterStates and CreatedAfter/CreatedBefore, 50 a page."""
        states = set(params.get("ClusterStates") or [])
        after, before = params.get("CreatedAfter"), params.get("CreatedBefore")
        with self._cond:
            found = [
                c
                for c in sorted(self.clusters.values(), key=lambda c: c.created, reverse=True)
                if (not states or c.state in states)
                and (after is None or c.created >= float(after))
                and (before is None or c.created <= float(before))
            ]
            summaries = [
                {
                    "Id": c.id,
                    "Name": c.name,
                    "Status": cluster_status(c),
                    "NormalizedInstanceHours": instance_hours(c),
                    "ClusterArn": c.arn,
                }
                for c in found
            ]
        page, marker = list_page(summaries, params.get("Marker"))
        return {"Clusters": page, **marker}

    def terminate_job_flows(self, params: dict[str, Any]) -> dict[str, Any]:
        """TerminateJobFlows: all or nothing; a protected cluster fails the call; ended clusters are no-ops."""
        with self._cond:
            clusters = [self._cluster(cid) for cid in params["JobFlowIds"]]
            if any(c.termination_protected and c.final is None for c in clusters):
                raise invalid("Could not shut down one or more job flows since they are termination protected.")
            for c in clusters:
                self._begin_termination(c, "TERMINATED", "USER_REQUEST", "Terminated by user request")
        return {}

    def set_termination_protection(self, params: dict[str, Any]) -> dict[str, Any]:
        """SetTerminationProtection: a protected cluster refuses TerminateJobFlows (and TERMINATE_CLUSTER steps)."""
        with self._cond:
            clusters = [self._cluster(cid) for cid in params["JobFlowIds"]]
            if any(c.final is not None for c in clusters):
                raise invalid(NOT_MODIFIABLE)
            for c in clusters:
                c.termination_protected = bool(params["TerminationProtected"])
        return {}

    def modify_cluster(self, params: dict[str, Any]) -> dict[str, Any]:
        """ModifyCluster: StepConcurrencyLevel (1-256) of an active cluster."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            if c.final is not None:
                raise invalid(NOT_MODIFIABLE)
            if "StepConcurrencyLevel" in params:
                c.step_concurrency = step_concurrency(params["StepConcurrencyLevel"])
                self._cond.notify_all()
            return {"StepConcurrencyLevel": c.step_concurrency}

    def add_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        """AddTags on a cluster (ResourceId is the cluster id)."""
        with self._cond:
            c = self._cluster(params["ResourceId"])
            c.tags.update({t["Key"]: t.get("Value", "") for t in params["Tags"]})
        return {}

    def remove_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        """RemoveTags from a cluster; unknown keys are ignored, as EMR does."""
        with self._cond:
            c = self._cluster(params["ResourceId"])
            for key in params["TagKeys"]:
                c.tags.pop(key, None)
        return {}

    def put_auto_termination_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """PutAutoTerminationPolicy: IdleTimeout 60-604800 s; an idle cluster's clock restarts."""
        policy = params.get("AutoTerminationPolicy") or {}
        check_idle_timeout(policy)
        with self._cond:
            c = self._cluster(params["ClusterId"])
            c.auto_termination = policy
            if c.state == "WAITING":
                c.idle_since = time.time()  # the idle clock restarts with a new policy
            self._cond.notify_all()
        return {}

    def _get_policy(self, attribute: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Get<name> (GetAutoTerminationPolicy, GetManagedScalingPolicy): the cluster's policy, {} without one."""
        with self._cond:
            policy = getattr(self._cluster(params["ClusterId"]), attribute)
        return {name: dict(policy)} if policy else {}

    def _set_policy(self, attribute: str, policy: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, Any]:
        """Put (stored and returned: the twin makes no scaling decisions) or remove (None) a cluster's policy; a
        cluster without an auto-termination policy idles until terminated."""
        with self._cond:
            setattr(self._cluster(params["ClusterId"]), attribute, policy)
        return {}

    def list_bootstrap_actions(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListBootstrapActions: the RunJobFlow bootstrap actions as Commands (Name, ScriptPath, Args)."""
        with self._cond:
            actions = self._cluster(params["ClusterId"]).request.get("BootstrapActions") or []
        return {
            "BootstrapActions": [
                {
                    "Name": a.get("Name", ""),
                    "ScriptPath": a["ScriptBootstrapAction"]["Path"],
                    "Args": list(a["ScriptBootstrapAction"].get("Args") or []),
                }
                for a in actions
            ]
        }

    # ------------------------------------------------------------------ security configurations

    def create_security_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateSecurityConfiguration (also used by the deployer for AWS::EMR::SecurityConfiguration)."""
        name, configuration = params["Name"], params["SecurityConfiguration"]
        if not isinstance(configuration, str):
            configuration = json.dumps(configuration)
        try:
            json.loads(configuration)
        except ValueError:
            raise invalid("SecurityConfiguration must be a JSON document.") from None
        with self._cond:
            if name in self.security_configurations:
                raise not_found(f"SecurityConfiguration with name '{name}' already exists.")
            created = time.time()
            self.security_configurations[name] = (configuration, created)
        return {"Name": name, "CreationDateTime": round(created, 3)}

    def describe_security_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeSecurityConfiguration: its JSON text and creation time."""
        with self._cond:
            found = self.security_configurations.get(params["Name"])
        if found is None:
            raise not_found(f"Security configuration with name '{params['Name']}' does not exist.")
        return {"Name": params["Name"], "SecurityConfiguration": found[0], "CreationDateTime": round(found[1], 3)}

    def list_security_configurations(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListSecurityConfigurations, oldest first."""
        with self._cond:
            items = sorted(self.security_configurations.items(), key=lambda kv: kv[1][1])
        return {"SecurityConfigurations": [{"Name": n, "CreationDateTime": round(v[1], 3)} for n, v in items]}

    def delete_security_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteSecurityConfiguration."""
        with self._cond:
            if self.security_configurations.pop(params["Name"], None) is None:
                raise not_found(f"Security configuration with name '{params['Name']}' does not exist.")
        return {}

    # ------------------------------------------------------------------ fleets, groups, instances

    def list_instance_fleets(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListInstanceFleets: targets, provisioned capacity, state and instance type specifications."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            return {"InstanceFleets": [fleet_shape(f) for f in c.fleets]}

    def list_instance_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListInstanceGroups: requested and running counts, market and state."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            return {"InstanceGroups": [group_shape(g) for g in c.groups]}

    def list_instances(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListInstances with the InstanceGroup(Id|Types), InstanceFleet(Id|Type) and InstanceStates filters."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            kinds = {f.id: f.fleet_type for f in c.fleets} | {g.id: g.group_type for g in c.groups}
            wanted_types = set(params.get("InstanceGroupTypes") or []) | (
                {params["InstanceFleetType"]} if params.get("InstanceFleetType") else set()
            )
            states = set(params.get("InstanceStates") or [])
            found = [
                i
                for i in c.instances
                if (not params.get("InstanceGroupId") or i.group_id == params["InstanceGroupId"])
                and (not params.get("InstanceFleetId") or i.fleet_id == params["InstanceFleetId"])
                and (not wanted_types or kinds.get(i.fleet_id or i.group_id or "") in wanted_types)
                and (not states or i.state in states)
            ]
            return {"Instances": [instance_shape(i) for i in found]}

    def modify_instance_fleet(self, params: dict[str, Any]) -> dict[str, Any]:
        """ModifyInstanceFleet: the fleet goes RESIZING, then RUNNING with the new target after a phase."""
        change = params["InstanceFleet"]
        with self._cond:
            c = self._cluster(params["ClusterId"])
            fleet = next((f for f in c.fleets if f.id == change["InstanceFleetId"]), None)
            if fleet is None:
                raise not_found(f"Instance fleet {change['InstanceFleetId']} does not exist in cluster {c.id}.")
            check_resizable(c, fleet.state, fleet.fleet_type, f"instance fleet {fleet.id}")
            od = int(change.get("TargetOnDemandCapacity", fleet.target_on_demand))
            spot = int(change.get("TargetSpotCapacity", fleet.target_spot))
            if od < 0 or spot < 0:
                raise invalid("Target capacities must not be negative.")
            before = (fleet.target_on_demand, fleet.target_spot)
            fleet.target_on_demand, fleet.target_spot = od, spot
            fleet.resize_started = time.time()
            self._set_fleet(c, fleet, "RESIZING", {})
            self._fleet_event(
                c, fleet, "INFO",
                f"A resize for instance fleet {fleet.id} in Amazon EMR cluster {c.id} ({c.name}) started at "
                f"{emr_time(fleet.resize_started)}. The instance fleet is resizing from a target On-Demand capacity of "
                f"{before[0]} and Spot capacity of {before[1]} to {od} and {spot}.",
            )  # fmt: skip
        self._later(c, functools.partial(self._finish_fleet_resize, c, fleet), f"resize-{fleet.id}")
        return {}

    def modify_instance_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        """ModifyInstanceGroups: each group goes RESIZING, then RUNNING with its new count after a phase."""
        changes = params.get("InstanceGroups") or []
        with self._cond:
            c = self._cluster(params["ClusterId"])
            plan: list[tuple[InstanceGroup, int]] = []
            for change in changes:
                group = next((g for g in c.groups if g.id == change["InstanceGroupId"]), None)
                if group is None:
                    raise not_found(f"Instance group {change['InstanceGroupId']} does not exist in cluster {c.id}.")
                check_resizable(c, group.state, group.group_type, f"instance group {group.id}")
                count = int(change.get("InstanceCount", group.requested))
                if count < 0:
                    raise invalid("InstanceCount must not be negative.")
                plan.append((group, count))
            for group, count in plan:
                group.previous_count, group.requested, group.resize_started = group.running, count, time.time()
                self._set_group(c, group, "RESIZING", {})
                self._group_event(
                    c, group, "INFO",
                    f"A resize for instance group {group.id} in Amazon EMR cluster {c.id} ({c.name}) started at "
                    f"{emr_time(group.resize_started)}. It is resizing from an instance count of "
                    f"{group.previous_count} to {count}.",
                )  # fmt: skip
        for group, _ in plan:
            self._later(c, functools.partial(self._finish_group_resize, c, group), f"resize-{group.id}")
        return {}

    # ------------------------------------------------------------------ steps

    def add_job_flow_steps(self, params: dict[str, Any]) -> dict[str, Any]:
        """AddJobFlowSteps: accepted until the cluster starts terminating; steps wait PENDING for a ready cluster."""
        configs = params["Steps"]
        for config in configs:
            validate_step(config)
        with self._cond:
            c = self._cluster(params["JobFlowId"])
            if c.final is not None or c.state not in ACTIVE_CLUSTER_STATES:
                raise invalid(NOT_MODIFIABLE)
            active = sum(1 for s in c.steps if s.state in ACTIVE_STEP_STATES)
            if active + len(configs) > MAX_ACTIVE_STEPS:
                raise invalid(
                    "Maximum number of active steps(State = 'Running', 'Pending' or 'Cancel_Pending') "
                    f"for cluster exceeded ({MAX_ACTIVE_STEPS})."
                )
            ids = [self._add_step(c, config, params.get("ExecutionRoleArn")).id for config in configs]
            self._cond.notify_all()
        return {"StepIds": ids}

    def describe_step(self, cluster_id: str, step_id: str) -> dict[str, Any]:
        """The DescribeStep `Step` shape."""
        with self._cond:
            return step_shape(self._step(self._cluster(cluster_id), step_id))

    def list_steps(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListSteps: newest first, filtered by StepStates and StepIds (at most 10), 50 a page. EMR promises newest
        first only without a filter ("in reverse order unless you specify stepIds with the request or filter by
        StepStates", API reference, ListSteps): a filtered list comes oldest first here, so no caller can lean on an
        order AWS does not give."""
        states = set(params.get("StepStates") or [])
        ids = set(params.get("StepIds") or [])
        if len(params.get("StepIds") or []) > MAX_LISTED_STEP_IDS:
            raise invalid(f"StepIds: at most {MAX_LISTED_STEP_IDS} step IDs may be given")
        with self._cond:
            c = self._cluster(params["ClusterId"])
            ordered = c.steps if states or ids else list(reversed(c.steps))
            found = [s for s in ordered if (not states or s.state in states) and (not ids or s.id in ids)]
            page, marker = list_page(found, params.get("Marker"))
            return {"Steps": [step_shape(s) for s in page], **marker}

    def cancel_steps(self, params: dict[str, Any]) -> dict[str, Any]:
        """CancelSteps: a PENDING step is CANCELLED at once, a RUNNING one goes CANCEL_PENDING then CANCELLED."""
        infos: list[dict[str, str]] = []
        with self._cond:
            c = self._cluster(params["ClusterId"])
            for step_id in params["StepIds"]:
                s = next((x for x in c.steps if x.id == step_id), None)
                if s is None:
                    reason = f"Step id '{step_id}' is not valid."
                    infos.append({"StepId": step_id, "Status": "FAILED", "Reason": reason})
                elif s.state == "PENDING":
                    s.user_cancelled = True
                    self._end_step(c, s, "CANCELLED", None)
                    infos.append({"StepId": step_id, "Status": "SUBMITTED", "Reason": ""})
                elif s.state in ("RUNNING", "CANCEL_PENDING"):
                    s.user_cancelled = True
                    s.cancel.set()
                    self._set_step(c, s, "CANCEL_PENDING")
                    infos.append({"StepId": step_id, "Status": "SUBMITTED", "Reason": ""})
                else:
                    reason = f"Step {step_id} is in state {s.state} and cannot be cancelled."
                    infos.append({"StepId": step_id, "Status": "FAILED", "Reason": reason})
            self._cond.notify_all()
        return {"CancelStepsInfoList": infos}


# ListSteps and ListClusters return 50 items a page and a Marker for the next (EMR API reference, ListSteps: "the
# CLI automatically paginates results to return a list greater than 50 steps"; ListClusters: "up to 50 clusters
# per call"), and ListSteps takes at most 10 StepIds ("You can specify a maximum of 10 stepIDs"). A caller that
# reads one page only sees at most 50 here, as on AWS.
LIST_PAGE_SIZE = 50
MAX_LISTED_STEP_IDS = 10


def list_page(items: list[Any], marker: object) -> tuple[list[Any], dict[str, str]]:
    """One page of `items` from `marker` (an offset this twin handed out), and the next page's Marker if any."""
    try:
        start = int(str(marker)) if marker is not None else 0
    except ValueError:
        raise invalid(f"Marker: {marker!r} is not a marker this API returned") from None
    end = start + LIST_PAGE_SIZE
    return items[start:end], ({"Marker": str(end)} if end < len(items) else {})
