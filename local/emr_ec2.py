"""EMR on EC2 clusters that behave like EMR, owned entirely by the twin (moto's EMR backend is bypassed).

moto 5.2.5's EMR backend has no instance fleets, no auto-termination policy, clusters that never move
through their states and steps that never run. `EmrEc2Twin` owns all EMR-on-EC2 state and serves both
the `emr` JSON API (routed from `local.patches`) and the Step Functions `elasticmapreduce:*`
integrations (`local.sfn_integrations.TwinEmrService`). What it models:

- RunJobFlow validated like EMR: `emr-x.y.z` release label, one MASTER fleet/group with one unit,
  fleets or groups (not both), instance types per fleet, roles that exist in (twin) IAM, security
  configurations registered at deploy or with CreateSecurityConfiguration, policy bounds.
- A background thread per cluster: STARTING -> BOOTSTRAPPING -> RUNNING (a step runs) / WAITING
  (idle) -> TERMINATING -> TERMINATED or TERMINATED_WITH_ERRORS, each phase `phase_seconds` long.
  Fleets and groups go PROVISIONING -> BOOTSTRAPPING -> RUNNING (-> RESIZING -> RUNNING) ->
  TERMINATED, with instances (ListInstances) and NormalizedInstanceHours from their lifetimes
  (normalization factor by size x hours, each instance rounded up to whole hours as EMR does).
- Steps: PENDING until the cluster is ready, `StepConcurrencyLevel` at a time in order, ActionOnFailure
  (CONTINUE, CANCEL_AND_WAIT, TERMINATE_CLUSTER), CancelSteps (CANCEL_PENDING for a running step),
  INTERRUPTED when the cluster terminates under a running step, pending steps CANCELLED on termination.
- Auto-termination (IdleTimeout x `idle_time_scale`), KeepJobFlowAliveWhenNoSteps=false clusters ending
  ALL_STEPS_COMPLETED, termination protection, ModifyInstanceFleet/ModifyInstanceGroups resizes.
- "EMR Cluster State Change", "EMR Step Status Change", "EMR Instance Fleet State Change" and "EMR
  Instance Group State Change" events (source aws.emr) in the shapes of the EMR user guide.
- Faults (`local.faults`): API faults under service "emr"; job faults ("fail"/"hang") apply to steps;
  `spot_shortage_next` (SpotSpecification.TimeoutAction decides: SWITCH_TO_ON_DEMAND provisions the Spot
  target On-Demand, TERMINATE_CLUSTER ends the cluster INSTANCE_FLEET_TIMEOUT, without waiting for the
  timeout); `fail_next_bootstrap` (BOOTSTRAP_FAILURE after BOOTSTRAPPING).

What runs locally, and what does not (limitations):
- `command-runner.jar spark-submit [options] <entry> [args]` steps run on the SparkRunner (`runner`),
  logs in the EMR on EC2 layout `<LogUri>/<cluster-id>/steps/<step-id>/stdout.gz|stderr.gz`. With
  `runner = None` ("instant" mode) they complete at once without Spark.
- `s3-dist-cp --src --dest` (command-runner.jar or s3-dist-cp.jar) really copies: s3:// <-> s3://, and
  hdfs:// (or bare absolute) paths map to a per-cluster folder under the twin's workdir, so HDFS <-> S3
  copies round-trip within one cluster. Only --src, --dest, --srcPattern and --deleteOnSuccess act.
- Every other step (hive-script, script-runner, custom JARs) is NOT executed: it completes, and its
  stderr log says `local-twin: step not executed (...)`.
- Bootstrap actions are NOT executed: an s3:// script must exist (a missing one is a BOOTSTRAP_FAILURE
  naming the path, as on EMR); `file:` scripts on the instances are assumed present.
- Not modelled: EC2 networking (subnets, security groups are echoed), Spot timeouts (decided at once),
  managed scaling decisions (the policy is stored), auto-scaling policies, Kerberos, pagination Markers
  (every list returns one page), application versions (Applications echo their names).
- The auto-termination reason: EMR's ClusterStateChangeReasonCode has no idle-timeout code; the twin
  reports ALL_STEPS_COMPLETED with a message naming the idle timeout (`IDLE_TIMEOUT_CODE`).
"""

from __future__ import annotations

import copy
import functools
import gzip
import itertools
import json
import logging
import math
import random
import re
import shlex
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local.emr_serverless import JobRunner
from local.faults import FaultInjector, TwinClientError
from local.spark_runner import (
    LOCAL_IRRELEVANT_OPTIONS,
    NOTE_PREFIX,
    VALUE_OPTIONS,
    SparkJob,
    SparkRunnerError,
    log_uris,
    parse_s3_uri,
)

LOG = logging.getLogger("twin.emr-ec2")

ACTIVE_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"})
ENDED_CLUSTER_STATES = frozenset({"TERMINATED", "TERMINATED_WITH_ERRORS"})
TRANSITION_CLUSTER_STATES = frozenset({"STARTING", "BOOTSTRAPPING", "TERMINATING"})
ACTIVE_STEP_STATES = frozenset({"PENDING", "RUNNING", "CANCEL_PENDING"})
ENDED_STEP_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"})
STEP_FAILURE_STATES = frozenset({"FAILED", "CANCELLED", "INTERRUPTED"})
ACTIONS_ON_FAILURE = frozenset({"TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE"})
TERMINATE_ACTIONS = frozenset({"TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER"})
NODE_TYPES = ("MASTER", "CORE", "TASK")
IDLE_TIMEOUT_CODE = "ALL_STEPS_COMPLETED"  # EMR's reason codes have no idle-timeout value (see module docstring)
MAX_ACTIVE_STEPS = 256
EMR_CLEANUP_ROLE = "AWSServiceRoleForEMRCleanup"
EMR_CLEANUP_ROLE_PATH = "/aws-service-role/elasticmapreduce.amazonaws.com/"
MAX_BOOTSTRAP_ACTIONS = 16
STEP_TIMEOUT_SECONDS = 3600
_RELEASE_LABEL = re.compile(r"^emr-\d+\.\d+\.\d+$")
_ID_ALPHABET = string.ascii_uppercase + string.digits
# EMR's normalization factors by instance size ("Normalized instance hours" in the EMR management guide).
_SIZE_FACTORS: dict[str, float] = {"nano": 0.25, "micro": 0.5, "small": 1, "medium": 2, "large": 4, "xlarge": 8}
_SPARK_FLAGS = frozenset({"--verbose", "-v", "--supervise"})
_SPARK_VALUE_OPTIONS = frozenset({"--conf", "-c"}) | LOCAL_IRRELEVANT_OPTIONS
_ECHOED_REQUEST_KEYS = (
    "SecurityConfiguration",
    "AutoScalingRole",
    "CustomAmiId",
    "EbsRootVolumeSize",
    "OSReleaseLabel",
    "EbsRootVolumeIops",
    "EbsRootVolumeThroughput",
    "LogEncryptionKmsKeyId",
    "PlacementGroupConfigs",
)
_LAUNCH_SPECS = ("SpotSpecification", "OnDemandSpecification")
_NOT_MODIFIABLE = "A job flow that is shutting down, terminated, or finished may not be modified."


def _new_id(prefix: str) -> str:
    return prefix + "".join(random.choices(_ID_ALPHABET, k=13))


def _ec2_id() -> str:
    return "i-" + "".join(random.choices("0123456789abcdef", k=17))


def _when(epoch: float) -> str:
    """The time format of EMR event messages, e.g. "2016-12-16 21:00 UTC"."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _timeline(**points: float | None) -> dict[str, float]:
    return {name: round(value, 3) for name, value in points.items() if value is not None}


def _invalid(message: str) -> TwinClientError:
    return TwinClientError("ValidationException", message)


def _not_found(message: str) -> TwinClientError:
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


def parse_spark_submit(args: list[str]) -> tuple[list[str], str, list[str]]:
    """(options, entry point, application arguments) of `spark-submit [options] <entry-point> [app args...]`."""
    tokens = args[1:] if args and args[0] == "spark-submit" else list(args)
    options: list[str] = []
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        token = tokens[i]
        takes_value = "=" not in token and token not in _SPARK_FLAGS
        takes_value = takes_value and (token in _SPARK_VALUE_OPTIONS or token in VALUE_OPTIONS)
        options.extend(tokens[i : i + 2] if takes_value else [token])
        i += 2 if takes_value else 1
    if i >= len(tokens):
        raise ValueError("spark-submit: no application given (expected [options] <entry-point> [arguments])")
    return options, tokens[i], tokens[i + 1 :]


def parse_dist_cp(args: list[str]) -> dict[str, str]:
    """s3-dist-cp options as {name: value} (`--src=X` and `--src X` forms; flags get "")."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        name, sep, value = token.lstrip("-").partition("=")
        if sep:
            i += 1
        elif token.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 2
        else:
            i += 1
        options[name] = value
    return options


# ---------------------------------------------------------------------------------------------- state


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


@dataclass
class InstanceFleet:
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
    state: str = "PROVISIONING"
    reason: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
    resize_started: float | None = None


@dataclass
class InstanceGroup:
    """An instance group as RunJobFlow declared it, plus what is running."""

    id: str
    name: str
    group_type: str
    market: str
    instance_type: str
    requested: int
    config: dict[str, Any]
    running: int = 0
    state: str = "PROVISIONING"
    reason: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
    resize_started: float | None = None
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
class Cluster:
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
    reason: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
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


# ---------------------------------------------------------------------------------------------- the model


class EmrEc2Twin:
    """Every EMR-on-EC2 cluster of the twin: the `emr` API, the Step Functions integrations' backend, events."""

    def __init__(
        self,
        *,
        account: str,
        region: str,
        runner: JobRunner | None,
        faults: FaultInjector,
        emit: Callable[[dict[str, Any]], None],
        workdir: Path,
        s3: Any = None,
        check_iam: bool = True,
    ) -> None:
        self.account = account
        self.region = region
        self.runner = runner  # None -> "instant" mode: spark-submit steps complete without Spark
        self.faults = faults
        self.emit = emit
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
            "GetAutoTerminationPolicy": self.get_auto_termination_policy,
            "RemoveAutoTerminationPolicy": self.remove_auto_termination_policy,
            "PutManagedScalingPolicy": self.put_managed_scaling_policy,
            "GetManagedScalingPolicy": self.get_managed_scaling_policy,
            "RemoveManagedScalingPolicy": self.remove_managed_scaling_policy,
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
            raise _invalid(f"1 validation error detected: {missing.args[0]} is required") from None

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
                if any(x.state == "RESIZING" for x in _owners(c)):
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
        with self._cond:
            c = self._cluster(cluster_id)
            found = next((f.id for f in c.fleets if f.name == name), None)
        if found is None:
            raise _not_found(f"Instance fleet with name '{name}' does not exist in cluster {cluster_id}.")
        return found

    def group_id_by_name(self, cluster_id: str, name: str) -> str:
        """The id of a cluster's group by name (Step Functions modifyInstanceGroupByName)."""
        with self._cond:
            c = self._cluster(cluster_id)
            found = next((g.id for g in c.groups if g.name == name), None)
        if found is None:
            raise _not_found(f"Instance group with name '{name}' does not exist in cluster {cluster_id}.")
        return found

    # ------------------------------------------------------------------ clusters

    def run_job_flow(self, params: dict[str, Any]) -> dict[str, Any]:
        """RunJobFlow: validate like EMR, create the cluster STARTING and start driving it."""
        params = copy.deepcopy(params)
        if isinstance(params.get("Instances"), dict):
            params["Instances"] = _legacy_instances(params["Instances"])
        self._validate_run_job_flow(params)
        instances = params["Instances"]
        with self._cond:
            cluster_id = _new_id("j-")
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
            c.fleets = [_fleet(f) for f in instances.get("InstanceFleets") or []]
            c.groups = [_group(g) for g in instances.get("InstanceGroups") or []]
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
            return self._cluster_shape(self._cluster(cluster_id))

    def list_clusters(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListClusters: newest first, filtered by ClusterStates and CreatedAfter/CreatedBefore."""
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
                    "Status": self._cluster_status(c),
                    "NormalizedInstanceHours": self._instance_hours(c),
                    "ClusterArn": c.arn,
                }
                for c in found
            ]
        return {"Clusters": summaries}

    def terminate_job_flows(self, params: dict[str, Any]) -> dict[str, Any]:
        """TerminateJobFlows: all or nothing; a protected cluster fails the call; ended clusters are no-ops."""
        with self._cond:
            clusters = [self._cluster(cid) for cid in params["JobFlowIds"]]
            if any(c.termination_protected and c.final is None for c in clusters):
                raise _invalid("Could not shut down one or more job flows since they are termination protected.")
            for c in clusters:
                self._begin_termination(c, "TERMINATED", "USER_REQUEST", "Terminated by user request")
        return {}

    def set_termination_protection(self, params: dict[str, Any]) -> dict[str, Any]:
        """SetTerminationProtection: a protected cluster refuses TerminateJobFlows (and TERMINATE_CLUSTER steps)."""
        with self._cond:
            clusters = [self._cluster(cid) for cid in params["JobFlowIds"]]
            if any(c.final is not None for c in clusters):
                raise _invalid(_NOT_MODIFIABLE)
            for c in clusters:
                c.termination_protected = bool(params["TerminationProtected"])
        return {}

    def modify_cluster(self, params: dict[str, Any]) -> dict[str, Any]:
        """ModifyCluster: StepConcurrencyLevel (1-256) of an active cluster."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            if c.final is not None:
                raise _invalid(_NOT_MODIFIABLE)
            if "StepConcurrencyLevel" in params:
                c.step_concurrency = _step_concurrency(params["StepConcurrencyLevel"])
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
        _check_idle_timeout(policy)
        with self._cond:
            c = self._cluster(params["ClusterId"])
            c.auto_termination = policy
            if c.state == "WAITING":
                c.idle_since = time.time()  # the idle clock restarts with a new policy
            self._cond.notify_all()
        return {}

    def get_auto_termination_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """GetAutoTerminationPolicy: {} when the cluster has none."""
        with self._cond:
            policy = self._cluster(params["ClusterId"]).auto_termination
        return {"AutoTerminationPolicy": dict(policy)} if policy else {}

    def remove_auto_termination_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """RemoveAutoTerminationPolicy: the cluster then idles until terminated."""
        with self._cond:
            self._cluster(params["ClusterId"]).auto_termination = None
        return {}

    def put_managed_scaling_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """PutManagedScalingPolicy: stored and returned; the twin makes no scaling decisions."""
        with self._cond:
            self._cluster(params["ClusterId"]).managed_scaling = params["ManagedScalingPolicy"]
        return {}

    def get_managed_scaling_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """GetManagedScalingPolicy: the RunJobFlow or Put policy, {} without one."""
        with self._cond:
            policy = self._cluster(params["ClusterId"]).managed_scaling
        return {"ManagedScalingPolicy": policy} if policy else {}

    def remove_managed_scaling_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        """RemoveManagedScalingPolicy."""
        with self._cond:
            self._cluster(params["ClusterId"]).managed_scaling = None
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
            raise _invalid("SecurityConfiguration must be a JSON document.") from None
        with self._cond:
            if name in self.security_configurations:
                raise _not_found(f"SecurityConfiguration with name '{name}' already exists.")
            created = time.time()
            self.security_configurations[name] = (configuration, created)
        return {"Name": name, "CreationDateTime": round(created, 3)}

    def describe_security_configuration(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeSecurityConfiguration: its JSON text and creation time."""
        with self._cond:
            found = self.security_configurations.get(params["Name"])
        if found is None:
            raise _not_found(f"Security configuration with name '{params['Name']}' does not exist.")
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
                raise _not_found(f"Security configuration with name '{params['Name']}' does not exist.")
        return {}

    # ------------------------------------------------------------------ fleets, groups, instances

    def list_instance_fleets(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListInstanceFleets: targets, provisioned capacity, state and instance type specifications."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            return {"InstanceFleets": [_fleet_shape(f) for f in c.fleets]}

    def list_instance_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListInstanceGroups: requested and running counts, market and state."""
        with self._cond:
            c = self._cluster(params["ClusterId"])
            return {"InstanceGroups": [_group_shape(g) for g in c.groups]}

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
            return {"Instances": [_instance_shape(i) for i in found]}

    def modify_instance_fleet(self, params: dict[str, Any]) -> dict[str, Any]:
        """ModifyInstanceFleet: the fleet goes RESIZING, then RUNNING with the new target after a phase."""
        change = params["InstanceFleet"]
        with self._cond:
            c = self._cluster(params["ClusterId"])
            fleet = next((f for f in c.fleets if f.id == change["InstanceFleetId"]), None)
            if fleet is None:
                raise _not_found(f"Instance fleet {change['InstanceFleetId']} does not exist in cluster {c.id}.")
            self._check_resizable(c, fleet.state, fleet.fleet_type, f"instance fleet {fleet.id}")
            od = int(change.get("TargetOnDemandCapacity", fleet.target_on_demand))
            spot = int(change.get("TargetSpotCapacity", fleet.target_spot))
            if od < 0 or spot < 0:
                raise _invalid("Target capacities must not be negative.")
            before = (fleet.target_on_demand, fleet.target_spot)
            fleet.target_on_demand, fleet.target_spot = od, spot
            fleet.resize_started = time.time()
            self._set_fleet(c, fleet, "RESIZING", {})
            self._fleet_event(
                c, fleet, "INFO",
                f"A resize for instance fleet {fleet.id} in Amazon EMR cluster {c.id} ({c.name}) started at "
                f"{_when(fleet.resize_started)}. The instance fleet is resizing from a target On-Demand capacity of "
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
                    raise _not_found(f"Instance group {change['InstanceGroupId']} does not exist in cluster {c.id}.")
                self._check_resizable(c, group.state, group.group_type, f"instance group {group.id}")
                count = int(change.get("InstanceCount", group.requested))
                if count < 0:
                    raise _invalid("InstanceCount must not be negative.")
                plan.append((group, count))
            for group, count in plan:
                group.previous_count, group.requested, group.resize_started = group.running, count, time.time()
                self._set_group(c, group, "RESIZING", {})
                self._group_event(
                    c, group, "INFO",
                    f"A resize for instance group {group.id} in Amazon EMR cluster {c.id} ({c.name}) started at "
                    f"{_when(group.resize_started)}. It is resizing from an instance count of {group.previous_count} "
                    f"to {count}.",
                )  # fmt: skip
        for group, _ in plan:
            self._later(c, functools.partial(self._finish_group_resize, c, group), f"resize-{group.id}")
        return {}

    # ------------------------------------------------------------------ steps

    def add_job_flow_steps(self, params: dict[str, Any]) -> dict[str, Any]:
        """AddJobFlowSteps: accepted until the cluster starts terminating; steps wait PENDING for a ready cluster."""
        configs = params["Steps"]
        for config in configs:
            _validate_step(config)
        with self._cond:
            c = self._cluster(params["JobFlowId"])
            if c.final is not None or c.state not in ACTIVE_CLUSTER_STATES:
                raise _invalid(_NOT_MODIFIABLE)
            active = sum(1 for s in c.steps if s.state in ACTIVE_STEP_STATES)
            if active + len(configs) > MAX_ACTIVE_STEPS:
                raise _invalid(
                    "Maximum number of active steps(State = 'Running', 'Pending' or 'Cancel_Pending') "
                    f"for cluster exceeded ({MAX_ACTIVE_STEPS})."
                )
            ids = [self._add_step(c, config, params.get("ExecutionRoleArn")).id for config in configs]
            self._cond.notify_all()
        return {"StepIds": ids}

    def describe_step(self, cluster_id: str, step_id: str) -> dict[str, Any]:
        """The DescribeStep `Step` shape."""
        with self._cond:
            return self._step_shape(self._step(self._cluster(cluster_id), step_id))

    def list_steps(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListSteps: newest first (as EMR lists them), filtered by StepStates and StepIds."""
        states = set(params.get("StepStates") or [])
        ids = set(params.get("StepIds") or [])
        with self._cond:
            c = self._cluster(params["ClusterId"])
            found = [s for s in reversed(c.steps) if (not states or s.state in states) and (not ids or s.id in ids)]
            return {"Steps": [self._step_shape(s) for s in found]}

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

    # ------------------------------------------------------------------ validation

    def _validate_run_job_flow(self, params: dict[str, Any]) -> None:
        if not params.get("Name"):
            raise _invalid("1 validation error detected: Name is required")
        if not isinstance(params.get("Instances"), dict):
            raise _invalid("1 validation error detected: Instances is required")
        label = params.get("ReleaseLabel")
        if not label:
            raise _invalid("ReleaseLabel is required: the twin models release-label (emr-x.y.z) clusters only.")
        if not _RELEASE_LABEL.match(str(label)):
            raise _invalid(f"The specified release label '{label}' is not valid (expected emr-x.y.z).")
        self._validate_roles(params)
        name = params.get("SecurityConfiguration")
        if name and name not in self.security_configurations:
            raise _invalid(f"Security configuration '{name}' does not exist.")
        _validate_instances(params["Instances"])
        _check_idle_timeout(params.get("AutoTerminationPolicy") or {})
        if "StepConcurrencyLevel" in params:
            _step_concurrency(params["StepConcurrencyLevel"])
        _validate_bootstrap_actions(params.get("BootstrapActions") or [])
        for step in params.get("Steps") or []:
            _validate_step(step)

    def _validate_roles(self, params: dict[str, Any]) -> None:
        if not params.get("ServiceRole"):
            raise _invalid("ServiceRole is required for creating cluster.")
        if not params.get("JobFlowRole"):
            raise _invalid("InstanceProfile is required for creating cluster.")
        if not self.check_iam:
            return
        from moto.iam.models import iam_backends

        iam = iam_backends[self.account]["aws"]
        try:
            iam.get_role(str(params["ServiceRole"]).rsplit("/", 1)[-1])
        except Exception:
            raise _invalid(f"Invalid ServiceRole: {params['ServiceRole']}.") from None
        try:
            iam.get_instance_profile(str(params["JobFlowRole"]).rsplit("/", 1)[-1])
        except Exception:
            raise _invalid(f"Invalid InstanceProfile: {params['JobFlowRole']}.") from None

    def _check_resizable(self, c: Cluster, state: str, node_type: str, what: str) -> None:
        if c.final is not None or c.state not in ("RUNNING", "WAITING"):
            raise _invalid(f"The cluster {c.id} is {c.state}: {what} can only be modified while RUNNING or WAITING.")
        if node_type == "MASTER":
            raise _invalid(f"The {what} is the MASTER node type: modifying it is not supported.")
        if state == "RESIZING":
            raise _invalid(f"The {what} is already RESIZING: wait until it is RUNNING.")
        if state != "RUNNING":
            raise _invalid(f"The {what} is {state}: it can only be modified while RUNNING.")

    # ------------------------------------------------------------------ lookups and shapes (under the lock)

    def _cluster(self, cluster_id: str) -> Cluster:
        c = self.clusters.get(cluster_id)
        if c is None:
            raise _not_found(f"Cluster id '{cluster_id}' is not valid.")
        return c

    def _step(self, c: Cluster, step_id: str) -> Step:
        s = next((x for x in c.steps if x.id == step_id), None)
        if s is None:
            raise _not_found(f"Step id '{step_id}' is not valid.")
        return s

    def _cluster_status(self, c: Cluster) -> dict[str, Any]:
        return {
            "State": c.state,
            "StateChangeReason": dict(c.reason),
            "Timeline": _timeline(CreationDateTime=c.created, ReadyDateTime=c.ready, EndDateTime=c.ended),
        }

    def _cluster_shape(self, c: Cluster) -> dict[str, Any]:
        request, instances = c.request, c.request["Instances"]
        shape: dict[str, Any] = {
            "Id": c.id,
            "Name": c.name,
            "Status": self._cluster_status(c),
            "Ec2InstanceAttributes": self._ec2_attributes(c),
            "InstanceCollectionType": c.collection_type,
            "ReleaseLabel": c.release_label,
            "AutoTerminate": not c.keep_alive,
            "TerminationProtected": c.termination_protected,
            "VisibleToAllUsers": bool(request.get("VisibleToAllUsers", True)),
            "Applications": [{"Name": a["Name"]} for a in request.get("Applications") or []],
            "Tags": [{"Key": k, "Value": v} for k, v in c.tags.items()],
            "ServiceRole": request["ServiceRole"],
            "NormalizedInstanceHours": self._instance_hours(c),
            "Configurations": copy.deepcopy(request.get("Configurations") or []),
            "ScaleDownBehavior": request.get("ScaleDownBehavior", "TERMINATE_AT_TASK_COMPLETION"),
            "ClusterArn": c.arn,
            "StepConcurrencyLevel": c.step_concurrency,
        }
        if c.log_uri:
            # EMR reports an s3:// log URI with the s3n:// scheme in DescribeCluster.
            shape["LogUri"] = re.sub(r"^s3://", "s3n://", c.log_uri)
        if c.master_dns:
            shape["MasterPublicDnsName"] = c.master_dns
        if instances.get("UnhealthyNodeReplacement") is not None:
            shape["UnhealthyNodeReplacement"] = instances["UnhealthyNodeReplacement"]
        for key in _ECHOED_REQUEST_KEYS:
            if request.get(key) is not None:
                shape["PlacementGroups" if key == "PlacementGroupConfigs" else key] = copy.deepcopy(request[key])
        return shape

    def _ec2_attributes(self, c: Cluster) -> dict[str, Any]:
        instances = c.request["Instances"]
        subnets = list(instances.get("Ec2SubnetIds") or [])
        if not subnets and instances.get("Ec2SubnetId"):
            subnets = [instances["Ec2SubnetId"]]
        zones = list((instances.get("Placement") or {}).get("AvailabilityZones") or [])
        zone = (instances.get("Placement") or {}).get("AvailabilityZone") or (zones[0] if zones else f"{self.region}a")
        attributes: dict[str, Any] = {
            "Ec2AvailabilityZone": zone,
            "RequestedEc2SubnetIds": subnets,
            "RequestedEc2AvailabilityZones": zones,
            "IamInstanceProfile": c.request["JobFlowRole"],
            "AdditionalMasterSecurityGroups": list(instances.get("AdditionalMasterSecurityGroups") or []),
            "AdditionalSlaveSecurityGroups": list(instances.get("AdditionalSlaveSecurityGroups") or []),
        }
        if subnets:
            attributes["Ec2SubnetId"] = subnets[0]
        for key in ("Ec2KeyName", "EmrManagedMasterSecurityGroup", "EmrManagedSlaveSecurityGroup",
                    "ServiceAccessSecurityGroup"):  # fmt: skip
            if instances.get(key):
                attributes[key] = instances[key]
        return attributes

    def _instance_hours(self, c: Cluster) -> int:
        """EMR's NormalizedInstanceHours: per instance, normalization factor x hours rounded up to whole hours."""
        now = time.time()
        total = sum(
            normalization_factor(i.instance_type) * max(1, math.ceil(((i.ended or now) - i.created) / 3600))
            for i in c.instances
        )
        return math.ceil(total)

    def _step_shape(self, s: Step) -> dict[str, Any]:
        status: dict[str, Any] = {
            "State": s.state,
            "StateChangeReason": dict(s.reason),
            "Timeline": _timeline(CreationDateTime=s.created, StartDateTime=s.started, EndDateTime=s.ended),
        }
        if s.failure:
            status["FailureDetails"] = dict(s.failure)
        shape: dict[str, Any] = {
            "Id": s.id,
            "Name": s.name,
            "Config": copy.deepcopy(s.config),
            "ActionOnFailure": s.action_on_failure,
            "Status": status,
        }
        if s.execution_role_arn:
            shape["ExecutionRoleArn"] = s.execution_role_arn
        if s.log_uri:
            shape["LogUri"] = s.log_uri
        return shape

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
        who, at = f"Amazon EMR cluster {c.id} ({c.name})", _when(now)
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
        started = _when(s.started or now)
        minutes = round(((s.ended or now) - (s.started or now)) / 60)
        severity, message = {
            "PENDING": ("INFO", f"Step {s.id} ({s.name}) was added to Amazon EMR cluster {c.id} ({c.name}) at "
                                f"{_when(now)} and is pending execution."),
            "RUNNING": ("INFO", f"{prefix} started running at {_when(now)}."),
            "COMPLETED": ("INFO", f"{prefix} completed execution at {_when(now)}. The step started running at "
                                  f"{started} and took {minutes} minutes to complete."),
            "CANCEL_PENDING": ("WARN", f"{prefix} was cancelled at {_when(now)} and is pending cancellation."),
            "CANCELLED": ("WARN", f"Cancellation request has succeeded for cluster step {s.id} ({s.name}) in Amazon "
                                  f"EMR cluster {c.id} ({c.name}) at {_when(now)}, and the step is now cancelled."),
            "INTERRUPTED": ("WARN", f"{prefix} was interrupted at {_when(now)} because the cluster terminated."),
            "FAILED": ("ERROR", f"{prefix} failed at {_when(now)}."),
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
            id=_new_id("s-"),
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
        for x in _owners(c):
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
                    id=_new_id("ci-"),
                    ec2_id=_ec2_id(),
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
        started = fleet.resize_started or time.time()
        self._fleet_event(
            c, fleet, "INFO",
            f"The resizing operation for instance fleet {fleet.id} in Amazon EMR cluster {c.id} ({c.name}) is "
            f"complete. It now has an On-Demand capacity of {fleet.provisioned_on_demand} and a Spot capacity of "
            f"{fleet.provisioned_spot}. The resize started at {_when(started)} and took "
            f"{round((time.time() - started) / 60)} minutes to complete.",
        )  # fmt: skip

    def _finish_group_resize(self, c: Cluster, group: InstanceGroup) -> None:
        if c.final is not None or group.state != "RESIZING":
            return
        self._resize_instances(c, group, group.market, group.requested)
        group.running = group.requested
        self._set_group(c, group, "RUNNING", {})
        started = group.resize_started or time.time()
        self._group_event(
            c, group, "INFO",
            f"The resizing operation for instance group {group.id} in Amazon EMR cluster {c.id} ({c.name}) is "
            f"complete. It now has an instance count of {group.running}. The resize started at {_when(started)} "
            f"and took {round((time.time() - started) / 60)} minutes to complete.",
        )  # fmt: skip

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

    # ------------------------------------------------------------------ steps (their own threads)

    def _run_step(self, c: Cluster, s: Step) -> None:
        try:
            state, failure = self._execute(c, s)
        except Exception as exc:  # a twin defect must still end the step
            LOG.exception("step %s crashed in the twin", s.id)
            state, failure = "FAILED", {"Reason": f"local-twin error: {exc}", "Message": f"local-twin error: {exc}"}
        with self._cond:
            if s.state in ENDED_STEP_STATES:
                return
            if s.cancel.is_set():
                state, failure = ("CANCELLED" if s.user_cancelled else "INTERRUPTED"), None
            self._end_step(c, s, state, failure)

    def _execute(self, c: Cluster, s: Step) -> tuple[str, dict[str, str] | None]:
        """Run one step: an injected job fault, spark-submit on the runner, s3-dist-cp, or "not executed"."""
        fault = self.faults.next_job_fault()
        if fault is not None and fault.kind == "hang":
            s.cancel.wait()  # runs until cancelled or the cluster terminates
            return "CANCELLED", None
        if fault is not None and fault.kind == "run":
            if s.cancel.wait(fault.seconds * self.time_scale):  # a long step, on the twin's clock
                return "CANCELLED", None
            self._write_step_logs(c, s, f"{NOTE_PREFIX} injected run of {fault.seconds} s\n", "")
            return "COMPLETED", None
        if fault is not None:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} injected fault: {fault.message}\n")
            return "FAILED", self._failure(c, s, fault.message, fault.message)
        kind, args = _step_kind(s.config)
        if kind == "s3-dist-cp":
            return self._dist_cp(c, s, args)
        if kind == "spark-submit":
            return self._spark(c, s, args) if self.runner is not None else ("COMPLETED", None)
        what = f"jar {s.config['Jar']}" + (f" {args[0]}" if args else "")
        self._write_step_logs(
            c, s, "",
            f"{NOTE_PREFIX} step not executed ({what}): the twin runs spark-submit and s3-dist-cp steps only; "
            "this step is reported COMPLETED\n",
        )  # fmt: skip
        return "COMPLETED", None

    def _spark(self, c: Cluster, s: Step, args: list[str]) -> tuple[str, dict[str, str] | None]:
        assert self.runner is not None
        try:
            options, entry, arguments = parse_spark_submit(args)
        except ValueError as exc:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} {exc}\n")
            return "FAILED", self._failure(c, s, str(exc), str(exc))
        job = SparkJob(
            job_run_id=s.id,
            entry_point=entry,
            arguments=arguments,
            spark_submit_parameters=shlex.join(options),
            log_uri=self._log_uri(c, s),
            log_layout="emr-ec2",
            application_id=c.id,
            timeout_seconds=self.step_timeout_seconds,
            role_arn=self.instance_role_arn(c),
        )
        result = self.runner.run(job, s.cancel)
        if s.cancel.is_set():
            return "CANCELLED", None
        if result.succeeded:
            return "COMPLETED", None
        error = result.error or "Unknown Error."
        code = f"spark-submit exited with code {result.exit_code}: " if result.exit_code is not None else ""
        return "FAILED", self._failure(c, s, error, code + error)

    def _failure(self, c: Cluster, s: Step, reason: str, message: str) -> dict[str, str]:
        details = {"Reason": reason, "Message": message}
        log = self._step_log_uris(c, s).get("stderr")
        if log:
            details["LogFile"] = log
        return details

    def _log_uri(self, c: Cluster, s: Step) -> str | None:
        uri = s.log_uri or c.log_uri
        return re.sub(r"^s3[na]://", "s3://", uri) if uri else None

    def _step_log_uris(self, c: Cluster, s: Step) -> dict[str, str]:
        uri = self._log_uri(c, s)
        if not uri or not uri.startswith("s3://"):
            return {}
        job = SparkJob(job_run_id=s.id, entry_point="", arguments=[], log_uri=uri, log_layout="emr-ec2",
                       application_id=c.id)  # fmt: skip
        return log_uris(job)

    def _write_step_logs(self, c: Cluster, s: Step, stdout: str, stderr: str) -> None:
        """stdout.gz and stderr.gz in the step's log folder (when the cluster or step has an s3:// LogUri)."""
        if self._cluster_s3(c) is None:
            return
        texts = {"stdout": stdout, "stderr": stderr}
        try:
            for name, uri in self._step_log_uris(c, s).items():
                bucket, key = parse_s3_uri(uri, "log_uri")
                body = gzip.compress(texts[name].encode("utf-8"))
                self._cluster_s3(c).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip")
        except Exception:
            LOG.exception("step %s: cannot upload its logs", s.id)

    # ------------------------------------------------------------------ s3-dist-cp

    def _dist_cp(self, c: Cluster, s: Step, args: list[str]) -> tuple[str, dict[str, str] | None]:
        """Copy every file under --src to the same relative path under --dest (s3:// and hdfs://)."""
        options = parse_dist_cp(args)
        src, dest = options.get("src", ""), options.get("dest", "")
        try:
            if not src or not dest:
                raise SparkRunnerError("s3-dist-cp: --src and --dest are required")
            pattern = re.compile(options["srcPattern"]) if options.get("srcPattern") else None
            files = [(rel, uri) for rel, uri in self._list_files(c, src) if pattern is None or pattern.fullmatch(uri)]
            if not files:
                raise SparkRunnerError(f"s3-dist-cp: no files found under {src}")
            for rel, uri in files:
                self._write_file(c, dest.rstrip("/") + "/" + rel, self._read_file(c, uri))
            if "deleteOnSuccess" in options:
                for _, uri in files:
                    self._delete_file(c, uri)
        except (SparkRunnerError, re.error, OSError) as exc:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} {exc}\n")
            return "FAILED", self._failure(c, s, str(exc), str(exc))
        ignored = sorted(set(options) - {"src", "dest", "srcPattern", "deleteOnSuccess"})
        note = f"{NOTE_PREFIX} s3-dist-cp copied {len(files)} files from {src} to {dest}\n" + (
            f"{NOTE_PREFIX} options not modelled (ignored): {', '.join(ignored)}\n" if ignored else ""
        )
        self._write_step_logs(c, s, "", note)
        return "COMPLETED", None

    def _hdfs_path(self, c: Cluster, uri: str) -> Path:
        path = re.sub(r"^hdfs://[^/]*", "", uri) if uri.startswith("hdfs://") else uri
        parts = [p for p in path.split("/") if p]
        if ".." in parts:
            raise SparkRunnerError(f"s3-dist-cp: {uri} has a '..' segment")
        return self.workdir / "hdfs" / c.id / Path(*parts) if parts else self.workdir / "hdfs" / c.id

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

    def _s3(self, c: Cluster) -> Any:
        client = self._cluster_s3(c)
        if client is None:
            raise SparkRunnerError("s3-dist-cp: the twin model has no S3 client")
        return client

    def _list_files(self, c: Cluster, uri: str) -> list[tuple[str, str]]:
        """(path relative to `uri`, full URI) of every file under `uri` (or `uri` itself when it is a file)."""
        if not _is_s3(uri):
            root = self._hdfs_path(c, uri)
            if root.is_file():
                return [(root.name, uri)]
            base = uri.rstrip("/")
            return [(p.relative_to(root).as_posix(), f"{base}/{p.relative_to(root).as_posix()}")
                    for p in sorted(root.rglob("*")) if p.is_file()]  # fmt: skip
        bucket, key = parse_s3_uri(_s3_scheme(uri), "s3-dist-cp")
        prefix = key.rstrip("/") + "/" if key else ""
        found: list[tuple[str, str]] = []
        for page in self._s3(c).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend((o["Key"][len(prefix) :], f"s3://{bucket}/{o['Key']}") for o in page.get("Contents", []))
        found = [(rel, full) for rel, full in found if rel and not rel.endswith("/")]
        if not found and key:
            try:
                self._s3(c).head_object(Bucket=bucket, Key=key)
                return [(key.rsplit("/", 1)[-1], f"s3://{bucket}/{key}")]
            except Exception:
                return []
        return found

    def _read_file(self, c: Cluster, uri: str) -> bytes:
        if not _is_s3(uri):
            return self._hdfs_path(c, uri).read_bytes()
        bucket, key = parse_s3_uri(_s3_scheme(uri), "s3-dist-cp")
        body: bytes = self._s3(c).get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def _write_file(self, c: Cluster, uri: str, data: bytes) -> None:
        if not _is_s3(uri):
            path = self._hdfs_path(c, uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        bucket, key = parse_s3_uri(_s3_scheme(uri), "s3-dist-cp")
        self._s3(c).put_object(Bucket=bucket, Key=key, Body=data)

    def _delete_file(self, c: Cluster, uri: str) -> None:
        if not _is_s3(uri):
            self._hdfs_path(c, uri).unlink(missing_ok=True)
            return
        bucket, key = parse_s3_uri(_s3_scheme(uri), "s3-dist-cp")
        self._s3(c).delete_object(Bucket=bucket, Key=key)


# ---------------------------------------------------------------------------------------------- helpers


def _owners(c: Cluster) -> list[InstanceFleet | InstanceGroup]:
    return [*c.fleets, *c.groups]


def _is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3n://", "s3a://"))


def _s3_scheme(uri: str) -> str:
    return re.sub(r"^s3[na]://", "s3://", uri)


def _step_kind(config: dict[str, Any]) -> tuple[str, list[str]]:
    """("spark-submit" | "s3-dist-cp" | "other", the command's arguments)."""
    jar, args = str(config.get("Jar", "")), list(config.get("Args") or [])
    if jar.endswith("command-runner.jar") and args and args[0] in ("spark-submit", "s3-dist-cp"):
        return args[0], args[1:] if args[0] == "s3-dist-cp" else args
    if jar.endswith("s3-dist-cp.jar"):
        return "s3-dist-cp", args
    return "other", args


def _legacy_instances(instances: dict[str, Any]) -> dict[str, Any]:
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
        raise _invalid("Please specify either InstanceFleets or InstanceGroups, not both.")
    if fleets:
        _validate_fleets(fleets)
    elif groups:
        _validate_groups(groups)
    else:
        raise _invalid("Instances must specify InstanceFleets, InstanceGroups or MasterInstanceType.")


def _validate_fleets(fleets: list[dict[str, Any]]) -> None:
    kinds = Counter(f.get("InstanceFleetType") for f in fleets)
    unknown = set(kinds) - set(NODE_TYPES)
    if unknown:
        raise _invalid(f"InstanceFleetType must be one of MASTER, CORE, TASK; got {sorted(map(str, unknown))}.")
    if kinds["MASTER"] != 1:
        raise _invalid(f"A cluster must have exactly one MASTER instance fleet; got {kinds['MASTER']}.")
    if kinds["CORE"] > 1 or kinds["TASK"] > 1:
        raise _invalid("A cluster can have at most one CORE and one TASK instance fleet.")
    for fleet in fleets:
        _validate_fleet(fleet)


def _validate_fleet(fleet: dict[str, Any]) -> None:
    kind, name = fleet["InstanceFleetType"], fleet.get("Name") or fleet["InstanceFleetType"]
    configs = fleet.get("InstanceTypeConfigs") or []
    if not configs or any(not c.get("InstanceType") for c in configs):
        raise _invalid(f"Instance fleet {name} must specify InstanceTypeConfigs, each with an InstanceType.")
    specs = fleet.get("LaunchSpecifications") or {}
    strategy = any((specs.get(k) or {}).get("AllocationStrategy") for k in _LAUNCH_SPECS)
    limit = 30 if kind == "TASK" and strategy else 5
    if len(configs) > limit:
        raise _invalid(f"Instance fleet {name} specifies {len(configs)} instance types; the maximum is {limit}.")
    od, spot = int(fleet.get("TargetOnDemandCapacity") or 0), int(fleet.get("TargetSpotCapacity") or 0)
    if od < 0 or spot < 0:
        raise _invalid(f"Instance fleet {name}: target capacities must not be negative.")
    if kind == "MASTER" and od + spot != 1:
        raise _invalid(
            "The MASTER instance fleet must have a target capacity of exactly 1 "
            f"(TargetOnDemandCapacity or TargetSpotCapacity); got On-Demand {od} and Spot {spot}."
        )
    if kind == "MASTER" and any(int(c.get("WeightedCapacity") or 1) != 1 for c in configs):
        raise _invalid("The MASTER instance fleet's InstanceTypeConfigs must have a WeightedCapacity of 1.")
    if any(int(c.get("WeightedCapacity") or 1) < 1 for c in configs):
        raise _invalid(f"Instance fleet {name}: WeightedCapacity must be at least 1.")


def _validate_groups(groups: list[dict[str, Any]]) -> None:
    roles = Counter(g.get("InstanceRole") for g in groups)
    unknown = set(roles) - set(NODE_TYPES)
    if unknown:
        raise _invalid(f"InstanceRole must be one of MASTER, CORE, TASK; got {sorted(map(str, unknown))}.")
    if roles["MASTER"] != 1:
        raise _invalid(f"A cluster must have exactly one MASTER instance group; got {roles['MASTER']}.")
    if roles["CORE"] > 1:
        raise _invalid("A cluster can have at most one CORE instance group.")
    for group in groups:
        count = int(group.get("InstanceCount", -1))
        if not group.get("InstanceType") or count < 0:
            raise _invalid("Every instance group needs an InstanceType and an InstanceCount of 0 or more.")
        if group["InstanceRole"] == "MASTER" and count not in (1, 3):
            raise _invalid(f"The MASTER instance group must have 1 (or 3, for high availability) instances: {count}.")
        if group.get("Market", "ON_DEMAND") not in ("ON_DEMAND", "SPOT"):
            raise _invalid(f"Market must be ON_DEMAND or SPOT; got {group.get('Market')}.")


def _validate_bootstrap_actions(actions: list[dict[str, Any]]) -> None:
    if len(actions) > MAX_BOOTSTRAP_ACTIONS:
        raise _invalid(f"A cluster can have at most {MAX_BOOTSTRAP_ACTIONS} bootstrap actions; got {len(actions)}.")
    for action in actions:
        if not action.get("Name") or not (action.get("ScriptBootstrapAction") or {}).get("Path"):
            raise _invalid("Every bootstrap action needs a Name and a ScriptBootstrapAction with a Path.")


def _validate_step(step: dict[str, Any]) -> None:
    if not step.get("Name") or not (step.get("HadoopJarStep") or {}).get("Jar"):
        raise _invalid("Every step needs a Name and a HadoopJarStep with a Jar.")
    action = step.get("ActionOnFailure")
    if action is not None and action not in ACTIONS_ON_FAILURE:
        raise _invalid(f"ActionOnFailure must be one of {', '.join(sorted(ACTIONS_ON_FAILURE))}; got {action}.")


def _check_idle_timeout(policy: dict[str, Any]) -> None:
    timeout = policy.get("IdleTimeout")
    if timeout is not None and not 60 <= int(timeout) <= 604800:
        raise _invalid(f"IdleTimeout must be between 60 and 604800 seconds; got {timeout}.")


def _step_concurrency(value: Any) -> int:
    level = int(value)
    if not 1 <= level <= 256:
        raise _invalid(f"StepConcurrencyLevel must be between 1 and 256; got {level}.")
    return level


def _fleet(config: dict[str, Any]) -> InstanceFleet:
    return InstanceFleet(
        id=_new_id("if-"),
        name=config.get("Name") or config["InstanceFleetType"],
        fleet_type=config["InstanceFleetType"],
        target_on_demand=int(config.get("TargetOnDemandCapacity") or 0),
        target_spot=int(config.get("TargetSpotCapacity") or 0),
        type_configs=copy.deepcopy(config["InstanceTypeConfigs"]),
        launch_specifications=copy.deepcopy(config.get("LaunchSpecifications")),
        resize_specifications=copy.deepcopy(config.get("ResizeSpecifications")),
        context=config.get("Context"),
    )


def _group(config: dict[str, Any]) -> InstanceGroup:
    return InstanceGroup(
        id=_new_id("ig-"),
        name=config.get("Name") or config["InstanceRole"],
        group_type=config["InstanceRole"],
        market=config.get("Market") or "ON_DEMAND",
        instance_type=config["InstanceType"],
        requested=int(config["InstanceCount"]),
        config=copy.deepcopy(config),
    )


def _ebs_devices(ebs: dict[str, Any] | None) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    for block in (ebs or {}).get("EbsBlockDeviceConfigs") or []:
        for _ in range(int(block.get("VolumesPerInstance") or 1)):
            device = f"/dev/sd{'fghijklmnop'[len(devices) % 11]}"
            devices.append({"VolumeSpecification": dict(block["VolumeSpecification"]), "Device": device})
    return devices


def _fleet_shape(fleet: InstanceFleet) -> dict[str, Any]:
    specs = []
    for config in fleet.type_configs:
        spec: dict[str, Any] = {
            "InstanceType": config["InstanceType"],
            "WeightedCapacity": int(config.get("WeightedCapacity") or 1),
            "EbsBlockDevices": _ebs_devices(config.get("EbsConfiguration")),
        }
        if fleet.target_spot and not config.get("BidPrice"):
            percentage = config.get("BidPriceAsPercentageOfOnDemandPrice", 100.0)
            spec["BidPriceAsPercentageOfOnDemandPrice"] = float(percentage)
        for key in ("BidPrice", "Configurations", "CustomAmiId", "Priority"):
            if config.get(key) is not None:
                spec[key] = copy.deepcopy(config[key])
        if (config.get("EbsConfiguration") or {}).get("EbsOptimized") is not None:
            spec["EbsOptimized"] = config["EbsConfiguration"]["EbsOptimized"]
        specs.append(spec)
    shape: dict[str, Any] = {
        "Id": fleet.id,
        "Name": fleet.name,
        "Status": {
            "State": fleet.state,
            "StateChangeReason": dict(fleet.reason),
            "Timeline": _timeline(CreationDateTime=fleet.created, ReadyDateTime=fleet.ready, EndDateTime=fleet.ended),
        },
        "InstanceFleetType": fleet.fleet_type,
        "TargetOnDemandCapacity": fleet.target_on_demand,
        "TargetSpotCapacity": fleet.target_spot,
        "ProvisionedOnDemandCapacity": fleet.provisioned_on_demand,
        "ProvisionedSpotCapacity": fleet.provisioned_spot,
        "InstanceTypeSpecifications": specs,
    }
    for key, value in (("LaunchSpecifications", fleet.launch_specifications),
                       ("ResizeSpecifications", fleet.resize_specifications), ("Context", fleet.context)):  # fmt: skip
        if value is not None:
            shape[key] = copy.deepcopy(value)
    return shape


def _group_shape(group: InstanceGroup) -> dict[str, Any]:
    config = group.config
    shape: dict[str, Any] = {
        "Id": group.id,
        "Name": group.name,
        "Market": group.market,
        "InstanceGroupType": group.group_type,
        "InstanceType": group.instance_type,
        "RequestedInstanceCount": group.requested,
        "RunningInstanceCount": group.running,
        "Status": {
            "State": group.state,
            "StateChangeReason": dict(group.reason),
            "Timeline": _timeline(CreationDateTime=group.created, ReadyDateTime=group.ready, EndDateTime=group.ended),
        },
        "Configurations": copy.deepcopy(config.get("Configurations") or []),
        "ConfigurationsVersion": 0,
        "LastSuccessfullyAppliedConfigurations": copy.deepcopy(config.get("Configurations") or []),
        "LastSuccessfullyAppliedConfigurationsVersion": 0,
        "EbsBlockDevices": _ebs_devices(config.get("EbsConfiguration")),
        "ShrinkPolicy": {},
    }
    for key in ("BidPrice", "CustomAmiId"):
        if config.get(key) is not None:
            shape[key] = config[key]
    if (config.get("EbsConfiguration") or {}).get("EbsOptimized") is not None:
        shape["EbsOptimized"] = config["EbsConfiguration"]["EbsOptimized"]
    return shape


def _instance_shape(i: Instance) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "Id": i.id,
        "Ec2InstanceId": i.ec2_id,
        "PublicDnsName": "",
        "PrivateDnsName": i.private_dns,
        "PrivateIpAddress": i.private_ip,
        "Status": {
            "State": i.state,
            "StateChangeReason": {"Code": "CLUSTER_TERMINATED"} if i.state == "TERMINATED" else {},
            "Timeline": _timeline(CreationDateTime=i.created, ReadyDateTime=i.ready, EndDateTime=i.ended),
        },
        "Market": i.market,
        "InstanceType": i.instance_type,
        "EbsVolumes": [],
    }
    if i.fleet_id:
        shape["InstanceFleetId"] = i.fleet_id
    if i.group_id:
        shape["InstanceGroupId"] = i.group_id
    return shape
