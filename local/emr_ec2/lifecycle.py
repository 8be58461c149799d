"""The life of EMR-on-EC2 clusters: their state changes and events, provisioning, bootstrap, steps' scheduling,
resizes and termination, each cluster in its own thread (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Unpack

from local.emr_ec2.model import (
    ACTIVE_STEP_STATES,
    ENDED_CLUSTER_STATES,
    IDLE_TIMEOUT_CODE,
    STEP_TIMEOUT_SECONDS,
    TERMINATE_ACTIONS,
    Cluster,
    Instance,
    InstanceFleet,
    InstanceGroup,
    Step,
    emr_time,
    new_ec2_id,
    new_id,
    not_found,
    owners,
)
from local.emr_service import EmrServiceModel, EmrServiceSettings
from local.faults import SPOT_RECLAIM_REASON
from local.spark_runner import parse_s3_uri

LOG = logging.getLogger("twin.emr-ec2")


class ClusterLifecycle(EmrServiceModel, ABC):
    """Every EMR-on-EC2 cluster's state, and the threads that move clusters and their fleets, groups and steps."""

    def __init__(
        self, *, workdir: Path, s3: Any = None, check_iam: bool = True, **settings: Unpack[EmrServiceSettings]
    ) -> None:
        super().__init__(**settings)
        self.workdir = workdir
        self.s3 = s3  # boto3 S3 client of the twin (bootstrap scripts, s3-dist-cp, step logs); None: no S3 access
        self.check_iam = check_iam  # ServiceRole and JobFlowRole (instance profile) must exist in moto's IAM
        # (role ARN, session) -> an S3 client acting as that role: set by the twin so that what runs on a cluster
        # (Spark steps, s3-dist-cp, bootstrap downloads, step logs) reads and writes S3 as the cluster's EC2 instance
        # role, which the twin's IAM then authorizes. None: everything uses `s3`.
        self.s3_for_role: Callable[[str, str], Any] | None = None
        self._cluster_clients: dict[str, Any] = {}
        self.phase_seconds = 0.2  # length of STARTING, BOOTSTRAPPING, TERMINATING and of a resize
        self.idle_time_scale = 1.0  # AutoTerminationPolicy.IdleTimeout is multiplied by this
        self.time_scale = 1.0  # the twin's clock: injected step durations ("run" faults) are multiplied by this
        self.step_timeout_seconds = STEP_TIMEOUT_SECONDS
        self.clusters: dict[str, Cluster] = {}
        self.security_configurations: dict[str, tuple[str, float]] = {}
        self._cond = threading.Condition(threading.RLock())
        self._stopped = threading.Event()
        self._ips = itertools.count(10)

    @abstractmethod
    def _run_step(self, c: Cluster, s: Step) -> None:
        """Run one RUNNING step to its end, in its own thread (`local.emr_ec2.steps.StepRunner`)."""

    # ------------------------------------------------------------------ lookups (under the lock)

    def _cluster(self, cluster_id: str) -> Cluster:
        c = self.clusters.get(cluster_id)
        if c is None:
            raise not_found(f"Cluster id '{cluster_id}' is not valid.")
        return c

    def _step(self, c: Cluster, step_id: str) -> Step:
        s = next((x for x in c.steps if x.id == step_id), None)
        if s is None:
            raise not_found(f"Step id '{step_id}' is not valid.")
        return s

    # ------------------------------------------------------------------ state changes and events (under the lock)

    def _set_cluster(self, c: Cluster, state: str, reason: dict[str, str]) -> None:
        previous, c.state, c.reason = c.state, state, reason
        now = time.time()
        if state == "WAITING":
            c.idle_since = now
        LOG.info("cluster %s: %s -> %s %s", c.id, previous, state, reason.get("Code", ""))
        self._cond.notify_all()
        message = self._cluster_message(c, previous, now)
        if message is None:
            return  # EMR sends no event for BOOTSTRAPPING and TERMINATING
        severity = {"TERMINATED_WITH_ERRORS": "CRITICAL"}.get(state, "INFO")
        change = {k.lower(): v for k, v in reason.items()}
        self._emit(
            "EMR Cluster State Change",
            {
                "severity": severity,
                "stateChangeReason": json.dumps(change, separators=(",", ":")),
                "name": c.name,
                "clusterId": c.id,
                "state": state,
                "message": message,
            },
        )

    def _cluster_message(self, c: Cluster, previous: str, now: float) -> str | None:
        who, at = f"Amazon EMR cluster {c.id} ({c.name})", emr_time(now)
        if c.state == "STARTING":
            return f"{who} was requested at {at} and is being created."
        if c.state == "RUNNING":
            return f"{who} began running steps at {at}."
        if c.state == "WAITING" and previous == "RUNNING":
            return f"{who} has completed all pending steps at {at}."
        if c.state == "WAITING":
            return f"{who} was created at {at} and is ready for use."
        code = c.reason.get("Code", "")
        if c.state == "TERMINATED":
            return f"Amazon EMR Cluster {c.id} ({c.name}) has terminated at {at} with a reason of {code}."
        if c.state == "TERMINATED_WITH_ERRORS":
            return f"Amazon EMR Cluster {c.id} ({c.name}) has terminated with errors at {at} with a reason of {code}."
        return None

    def _set_step(self, c: Cluster, s: Step, state: str) -> None:
        s.state = state
        now = time.time()
        LOG.info("step %s of %s: %s", s.id, c.id, state)
        self._cond.notify_all()
        prefix = f"Step {s.id} ({s.name}) in Amazon EMR cluster {c.id} ({c.name})"
        started = emr_time(s.started or now)
        minutes = round(((s.ended or now) - (s.started or now)) / 60)
        severity, message = {
            "PENDING": ("INFO", f"Step {s.id} ({s.name}) was added to Amazon EMR cluster {c.id} ({c.name}) at "
                                f"{emr_time(now)} and is pending execution."),
            "RUNNING": ("INFO", f"{prefix} started running at {emr_time(now)}."),
            "COMPLETED": ("INFO", f"{prefix} completed execution at {emr_time(now)}. The step started running at "
                                  f"{started} and took {minutes} minutes to complete."),
            "CANCEL_PENDING": ("WARN", f"{prefix} was cancelled at {emr_time(now)} and is pending cancellation."),
            "CANCELLED": ("WARN", f"Cancellation request has succeeded for cluster step {s.id} ({s.name}) in Amazon "
                                  f"EMR cluster {c.id} ({c.name}) at {emr_time(now)}, and the step is now cancelled."),
            "INTERRUPTED": ("WARN", f"{prefix} was interrupted at {emr_time(now)} because the cluster terminated."),
            "FAILED": ("ERROR", f"{prefix} failed at {emr_time(now)}."),
        }[state]  # fmt: skip
        detail = {
            "severity": severity,
            "actionOnFailure": s.action_on_failure,
            "stepId": s.id,
            "name": s.name,
            "clusterId": c.id,
            "state": state,
            "message": message,
        }
        if state == "FAILED" and s.failure and s.failure.get("LogFile"):
            detail["logUri"] = s.failure["LogFile"]
        self._emit("EMR Step Status Change", detail)

    def _set_fleet(self, c: Cluster, fleet: InstanceFleet, state: str, reason: dict[str, str]) -> None:
        fleet.state, fleet.reason = state, reason
        self._cond.notify_all()

    def _set_group(self, c: Cluster, group: InstanceGroup, state: str, reason: dict[str, str]) -> None:
        group.state, group.reason = state, reason
        self._cond.notify_all()

    def _fleet_event(self, c: Cluster, fleet: InstanceFleet, severity: str, message: str) -> None:
        self._emit(
            "EMR Instance Fleet State Change",
            {
                "severity": severity,
                "instanceFleetId": fleet.id,
                "instanceFleetType": fleet.fleet_type,
                "clusterId": c.id,
                "state": fleet.state,
                "targetOnDemandCapacity": fleet.target_on_demand,
                "targetSpotCapacity": fleet.target_spot,
                "provisionedOnDemandCapacity": fleet.provisioned_on_demand,
                "provisionedSpotCapacity": fleet.provisioned_spot,
                "message": message,
            },
        )

    def _group_event(self, c: Cluster, group: InstanceGroup, severity: str, message: str) -> None:
        self._emit(
            "EMR Instance Group State Change",
            {
                "market": group.market,
                "severity": severity,
                "requestedInstanceCount": str(group.requested),
                "instanceType": group.instance_type,
                "instanceGroupType": group.group_type,
                "instanceGroupId": group.id,
                "clusterId": c.id,
                "runningInstanceCount": str(group.running),
                "state": group.state,
                "message": message,
            },
        )

    def _emit(self, detail_type: str, detail: dict[str, Any]) -> None:
        if self.faults.take_dropped_event(detail_type, detail.get("state")):
            LOG.info("%s %s of %s lost (injected)", detail_type, detail.get("state"), detail.get("clusterId"))
            return  # EMR events reach EventBridge on a best-effort basis
        self.emit({"source": "aws.emr", "detail-type": detail_type, "resources": [], "detail": detail})

    def _add_step(self, c: Cluster, config: dict[str, Any], role: str | None) -> Step:
        jar_step = config["HadoopJarStep"]
        step_config: dict[str, Any] = {
            "Jar": jar_step["Jar"],
            "Properties": {p["Key"]: p.get("Value", "") for p in jar_step.get("Properties") or []},
            "Args": [str(a) for a in jar_step.get("Args") or []],
        }
        if jar_step.get("MainClass"):
            step_config["MainClass"] = jar_step["MainClass"]
        monitoring = (config.get("StepMonitoringConfiguration") or {}).get("S3MonitoringConfiguration") or {}
        s = Step(
            id=new_id("s-"),
            name=config["Name"],
            config=step_config,
            action_on_failure=config.get("ActionOnFailure") or "TERMINATE_CLUSTER",
            execution_role_arn=role,
            log_uri=monitoring.get("LogUri"),
        )
        c.steps.append(s)
        self._set_step(c, s, "PENDING")
        return s

    def _end_step(self, c: Cluster, s: Step, state: str, failure: dict[str, str] | None) -> None:
        """A step ended: its state and event, then its ActionOnFailure when it FAILED."""
        s.ended, s.failure = time.time(), failure
        self._set_step(c, s, state)
        s.done.set()
        if state != "FAILED":
            return
        if s.action_on_failure in TERMINATE_ACTIONS and not c.termination_protected:
            self._begin_termination(c, "TERMINATED_WITH_ERRORS", "STEP_FAILURE", "Shut down as step failed")
        elif s.action_on_failure != "CONTINUE":  # CANCEL_AND_WAIT (and TERMINATE_* on a protected cluster)
            for pending in c.steps:
                if pending.state == "PENDING":
                    self._end_step(c, pending, "CANCELLED", None)

    def _begin_termination(self, c: Cluster, final: str, code: str, message: str) -> None:
        """TERMINATING with the reason; pending steps CANCELLED, running steps told to stop."""
        if c.final is not None or c.state in ENDED_CLUSTER_STATES:
            return
        c.final = (final, code, message)
        for s in c.steps:
            if s.state == "PENDING":
                self._end_step(c, s, "CANCELLED", None)
            elif s.state in ("RUNNING", "CANCEL_PENDING"):
                s.cancel.set()
        for x in owners(c):
            if x.state != "TERMINATED":
                x.state = "TERMINATING"
        self._set_cluster(c, "TERMINATING", {"Code": code, "Message": message})

    # ------------------------------------------------------------------ the cluster's life (its own thread)

    def _drive(self, c: Cluster) -> None:
        try:
            if self._pause(c) and self._provision(c) and self._pause(c) and self._bootstrap(c):
                self._serve(c)
        except Exception as exc:  # a twin defect must still end the cluster
            LOG.exception("cluster %s crashed in the twin", c.id)
            with self._cond:
                self._begin_termination(c, "TERMINATED_WITH_ERRORS", "INTERNAL_ERROR", f"local-twin error: {exc}")
        self._finish(c)

    def _pause(self, c: Cluster) -> bool:
        """Wait one phase; False when the cluster started terminating (or the twin stops) meanwhile."""
        deadline = time.monotonic() + self.phase_seconds
        with self._cond:
            while c.final is None and not self._stopped.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)
            return False

    def _later(self, c: Cluster, action: Callable[[], None], name: str) -> None:
        def run() -> None:
            """After one phase, unless the cluster started terminating: `action` under the lock."""
            if self._pause(c):
                with self._cond:
                    action()

        threading.Thread(target=run, name=name, daemon=True).start()

    def _provision(self, c: Cluster) -> bool:
        """End of STARTING: instances launched (or a Spot shortage decided), cluster BOOTSTRAPPING."""
        wants_spot = any(f.target_spot > 0 for f in c.fleets) or any(g.market == "SPOT" for g in c.groups)
        shortage = wants_spot and self.faults.take_spot_shortage()
        with self._cond:
            if c.final is not None:
                return False
            for fleet in c.fleets:
                if not self._provision_fleet(c, fleet, shortage):
                    return False
            for group in c.groups:
                if not self._provision_group(c, group, shortage):
                    return False
            self._set_cluster(c, "BOOTSTRAPPING", {"Message": "Running bootstrap actions"})
            return True

    def _provision_fleet(self, c: Cluster, fleet: InstanceFleet, shortage: bool) -> bool:
        spot_ok = not (shortage and fleet.target_spot > 0)
        if not spot_ok:
            spec = (fleet.launch_specifications or {}).get("SpotSpecification") or {}
            minutes = spec.get("TimeoutDurationMinutes", 0)
            if spec.get("TimeoutAction") != "SWITCH_TO_ON_DEMAND":
                message = (
                    f"The instance fleet {fleet.id} ({fleet.fleet_type}) could not provision its target Spot "
                    f"capacity of {fleet.target_spot} within the provisioning timeout of {minutes} minutes "
                    "(local-twin: injected Spot capacity shortage)."
                )
                self._begin_termination(c, "TERMINATED_WITH_ERRORS", "INSTANCE_FLEET_TIMEOUT", message)
                return False
            fleet.reason = {
                "Message": f"Spot capacity was not available within the provisioning timeout of {minutes} minutes; "
                f"the Spot target of {fleet.target_spot} was provisioned as On-Demand capacity (TimeoutAction "
                "SWITCH_TO_ON_DEMAND; local-twin: injected Spot capacity shortage)."
            }
        self._launch(c, fleet, "ON_DEMAND", fleet.target_on_demand + (0 if spot_ok else fleet.target_spot))
        if spot_ok:
            self._launch(c, fleet, "SPOT", fleet.target_spot)
        fleet.state = "BOOTSTRAPPING"
        if not spot_ok:
            self._fleet_event(c, fleet, "WARN", f"Instance fleet {fleet.id} in Amazon EMR cluster {c.id} ({c.name}): "
                              + fleet.reason["Message"])  # fmt: skip
        return True

    def _provision_group(self, c: Cluster, group: InstanceGroup, shortage: bool) -> bool:
        if shortage and group.market == "SPOT":
            message = (
                f"Instance group {group.id} ({group.group_type}) could not provision {group.requested} Spot instances "
                "of type " + group.instance_type + ": Amazon EC2 has insufficient Spot capacity "
                "(local-twin: injected Spot capacity shortage)."
            )
            if group.group_type != "TASK":
                self._begin_termination(c, "TERMINATED_WITH_ERRORS", "INSTANCE_FAILURE", message)
                return False
            group.reason = {"Message": message}  # a task group waits for capacity; the cluster goes on without it
            return True
        self._launch(c, group, group.market, group.requested)
        group.state = "BOOTSTRAPPING"
        return True

    def _launch(self, c: Cluster, owner: InstanceFleet | InstanceGroup, market: str, capacity: int) -> None:
        """Instances for `capacity` units: the first instance type of a fleet, weighted; a group's type x count."""
        if isinstance(owner, InstanceFleet):
            config = owner.type_configs[0]
            instance_type, weight = config["InstanceType"], int(config.get("WeightedCapacity") or 1)
            count = math.ceil(capacity / weight) if capacity > 0 else 0
        else:
            instance_type, weight, count = owner.instance_type, 1, capacity
        domain = "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"
        for _ in range(count):
            n = next(self._ips)
            ip = f"10.0.{n // 250 % 250}.{n % 250 + 4}"
            c.instances.append(
                Instance(
                    id=new_id("ci-"),
                    ec2_id=new_ec2_id(),
                    instance_type=instance_type,
                    market=market,
                    weight=weight,
                    fleet_id=owner.id if isinstance(owner, InstanceFleet) else None,
                    group_id=owner.id if isinstance(owner, InstanceGroup) else None,
                    private_ip=ip,
                    private_dns=f"ip-{ip.replace('.', '-')}.{domain}",
                )
            )

    def _bootstrap(self, c: Cluster) -> bool:
        """End of BOOTSTRAPPING: scripts must exist in S3; an injected bootstrap fault fails the cluster."""
        master = c.master_instance
        master_id = master.ec2_id if master else "i-unknown"
        failure = self._missing_bootstrap_script(c, master_id)
        if failure is None:
            fault = self.faults.next_bootstrap_fault()
            if fault is not None:
                failure = fault.replace("{instance_id}", master_id)
        with self._cond:
            if c.final is not None:
                return False
            if failure is not None:
                self._begin_termination(c, "TERMINATED_WITH_ERRORS", "BOOTSTRAP_FAILURE", failure)
                return False
            now = time.time()
            for i in c.instances:
                i.state, i.ready = "RUNNING", now
            for fleet in c.fleets:
                fleet.ready = now
                self._sync_fleet_capacity(c, fleet)
                self._set_fleet(c, fleet, "RUNNING", fleet.reason)
            for group in c.groups:
                if group.state == "BOOTSTRAPPING":
                    group.ready, group.running = now, group.requested
                    self._set_group(c, group, "RUNNING", {})
            c.ready = now
            c.master_dns = master.private_dns if master else None
            return True

    def _missing_bootstrap_script(self, c: Cluster, master_id: str) -> str | None:
        for n, action in enumerate(c.request.get("BootstrapActions") or [], start=1):
            path = str(action["ScriptBootstrapAction"]["Path"])
            if not path.startswith(("s3://", "s3n://")) or self._cluster_s3(c) is None:
                continue  # file: scripts live on the instances (assumed present)
            try:
                bucket, key = parse_s3_uri(re.sub(r"^s3n://", "s3://", path), "bootstrap action")
                self._cluster_s3(c).head_object(Bucket=bucket, Key=key)
            except Exception:
                return (
                    f"Master instance ({master_id}) failed attempting to download bootstrap action {n} file from "
                    f"S3: {path} does not exist."
                )
        return None

    def _sync_fleet_capacity(self, c: Cluster, fleet: InstanceFleet) -> None:
        running = [i for i in c.instances if i.fleet_id == fleet.id and i.state != "TERMINATED"]
        fleet.provisioned_on_demand = sum(i.weight for i in running if i.market == "ON_DEMAND")
        fleet.provisioned_spot = sum(i.weight for i in running if i.market == "SPOT")

    def _serve(self, c: Cluster) -> None:
        """RUNNING while steps run, WAITING when idle, until termination (asked, auto, or after the last step)."""
        with self._cond:
            while c.final is None and not self._stopped.is_set():
                self._start_steps(c)
                active = any(s.state in ("RUNNING", "CANCEL_PENDING") for s in c.steps)
                if active or any(s.state == "PENDING" for s in c.steps):
                    self._cond.wait(0.1)
                    continue
                if not c.keep_alive:
                    self._begin_termination(c, "TERMINATED", "ALL_STEPS_COMPLETED", "Steps completed")
                    break
                if c.state != "WAITING":
                    self._set_cluster(c, "WAITING", {"Message": "Cluster ready to run steps."})
                self._cond.wait(self._idle_check(c))

    def _idle_check(self, c: Cluster) -> float:
        """Terminate an idle cluster past its auto-termination IdleTimeout; else how long to wait."""
        timeout = (c.auto_termination or {}).get("IdleTimeout")
        if timeout is None or c.idle_since is None:
            return 0.5
        remaining = c.idle_since + float(timeout) * self.idle_time_scale - time.time()
        if remaining <= 0:
            message = f"Cluster was idle for longer than its auto-termination idle timeout of {timeout} seconds."
            self._begin_termination(c, "TERMINATED", IDLE_TIMEOUT_CODE, message)
            return 0.0
        return min(remaining, 0.5)

    def _start_steps(self, c: Cluster) -> None:
        """Start PENDING steps in order while fewer than StepConcurrencyLevel run."""
        running = sum(1 for s in c.steps if s.state in ("RUNNING", "CANCEL_PENDING"))
        for s in c.steps:
            if running >= c.step_concurrency:
                return
            if s.state != "PENDING":
                continue
            if c.state != "RUNNING":
                self._set_cluster(c, "RUNNING", {"Message": "Running step"})
            s.started = time.time()
            self._set_step(c, s, "RUNNING")
            running += 1
            threading.Thread(target=self._run_step, args=(c, s), name=f"step-{s.id}", daemon=True).start()

    def _finish(self, c: Cluster) -> None:
        """TERMINATING -> TERMINATED(_WITH_ERRORS): running steps INTERRUPTED, fleets and instances TERMINATED."""
        if self._stopped.is_set():
            return
        with self._cond:
            if c.final is None:  # only when the twin stopped mid-way
                return
        for s in list(c.steps):
            s.done.wait(timeout=15)
        self._stopped.wait(self.phase_seconds)
        with self._cond:
            now = time.time()
            for s in c.steps:
                if s.state in ACTIVE_STEP_STATES:
                    self._end_step(c, s, "INTERRUPTED", None)
            for i in c.instances:
                if i.state != "TERMINATED":
                    i.state, i.ended = "TERMINATED", now
            reason = {"Code": "CLUSTER_TERMINATED", "Message": "The cluster was terminated."}
            for fleet in c.fleets:
                fleet.ended = now
                self._set_fleet(c, fleet, "TERMINATED", reason)
            for group in c.groups:
                group.ended, group.running = now, 0
                self._set_group(c, group, "TERMINATED", reason)
            final, code, message = c.final
            c.ended = now
            self._set_cluster(c, final, {"Code": code, "Message": message})

    def _finish_fleet_resize(self, c: Cluster, fleet: InstanceFleet) -> None:
        if c.final is not None or fleet.state != "RESIZING":
            return
        self._resize_instances(c, fleet, "ON_DEMAND", fleet.target_on_demand)
        self._resize_instances(c, fleet, "SPOT", fleet.target_spot)
        self._sync_fleet_capacity(c, fleet)
        self._set_fleet(c, fleet, "RUNNING", {})
        capacity = (
            f"an On-Demand capacity of {fleet.provisioned_on_demand} and a Spot capacity of {fleet.provisioned_spot}"
        )
        self._fleet_event(c, fleet, "INFO", _resize_completed(c, fleet, capacity))

    def _finish_group_resize(self, c: Cluster, group: InstanceGroup) -> None:
        if c.final is not None or group.state != "RESIZING":
            return
        self._resize_instances(c, group, group.market, group.requested)
        group.running = group.requested
        self._set_group(c, group, "RUNNING", {})
        self._group_event(c, group, "INFO", _resize_completed(c, group, f"an instance count of {group.running}"))

    def _resize_instances(self, c: Cluster, owner: InstanceFleet | InstanceGroup, market: str, capacity: int) -> None:
        """Launch or terminate `owner`'s instances of `market` until they hold `capacity` units."""
        mine = [
            i for i in c.instances
            if (i.fleet_id or i.group_id) == owner.id and i.market == market and i.state != "TERMINATED"
        ]  # fmt: skip
        held = sum(i.weight for i in mine)
        if held < capacity:
            before = len(c.instances)
            self._launch(c, owner, market, capacity - held)
            for i in c.instances[before:]:
                i.state, i.ready = "RUNNING", time.time()
        while mine and held - mine[-1].weight >= capacity:
            gone = mine.pop()
            gone.state, gone.ended = "TERMINATED", time.time()
            held -= gone.weight

    def reclaim_spot_task_instances(self, c: Cluster) -> list[str]:
        """(Under the lock) EC2 reclaims every running spot instance of the task fleet or group: TERMINATED with
        EMR's INSTANCE_FAILURE reason; EMR then launches replacements to the target. The lost EC2 instance ids."""
        task = {f.id for f in c.fleets if f.fleet_type == "TASK"} | {g.id for g in c.groups if g.group_type == "TASK"}
        lost = [
            i for i in c.instances
            if (i.fleet_id or i.group_id) in task and i.market == "SPOT" and i.state != "TERMINATED"
        ]  # fmt: skip
        for i in lost:
            i.state, i.ended, i.reason = "TERMINATED", time.time(), dict(SPOT_RECLAIM_REASON)
        for fleet in (f for f in c.fleets if f.id in task):
            self._sync_fleet_capacity(c, fleet)
            self._fleet_event(c, fleet, "WARNING", f"Spot capacity reclaimed by Amazon EC2: {len(lost)} instance(s)")
            self._resize_instances(c, fleet, "SPOT", fleet.target_spot)
            self._sync_fleet_capacity(c, fleet)
        for group in (g for g in c.groups if g.id in task and g.market == "SPOT"):
            self._resize_instances(c, group, "SPOT", group.requested)
        self._cond.notify_all()
        return [i.ec2_id for i in lost]

    # ------------------------------------------------------------------ what the cluster acts as

    def instance_role_arn(self, c: Cluster) -> str | None:
        """The role of the cluster's instance profile (JobFlowRole), from the twin's IAM."""
        from moto.iam.models import iam_backends

        profile = str(c.request.get("JobFlowRole") or "").rsplit("/", 1)[-1]
        try:
            roles = iam_backends[self.account]["global"].get_instance_profile(profile).roles
        except Exception:
            return None
        return str(roles[0].arn) if roles else None

    def _cluster_s3(self, c: Cluster) -> Any:
        """S3 as the cluster's instance role (see `s3_for_role`), else the model's own client."""
        if self.s3_for_role is None:
            return self.s3
        if c.id not in self._cluster_clients:
            role = self.instance_role_arn(c)
            master = c.master_instance
            session = master.id if master is not None else c.id  # EC2 role sessions are named by instance id
            self._cluster_clients[c.id] = self.s3_for_role(role, session) if role else self.s3
        return self._cluster_clients[c.id]


def _resize_completed(c: Cluster, owner: InstanceFleet | InstanceGroup, capacity: str) -> str:
    """The message of the event that ends a resize of a fleet or group, which now has `capacity`."""
    kind = "fleet" if isinstance(owner, InstanceFleet) else "group"
    started = owner.resize_started or time.time()
    return (
        f"The resizing operation for instance {kind} {owner.id} in Amazon EMR cluster {c.id} ({c.name}) is "
        f"complete. It now has {capacity}. The resize started at {emr_time(started)} and took "
        f"{round((time.time() - started) / 60)} minutes to complete."
    )
