"""The `emr-ec2` runtime: a transient EMR cluster per run (or steps on a long-running cluster).

Defaults follow the seed's guidance: on-demand primary and core nodes, spot only for task nodes
(several instance types, `price-capacity-optimized`, switching to on-demand when spot capacity
does not arrive in time), a primary of m-class `large` below 50 nodes and `xlarge` from 50,
general-purpose core/task nodes, the Glue Data Catalog as metastore, encryption at rest, and an
idle auto-termination policy on every cluster as a safety net even though the workflow always
terminates its own cluster.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from autopilot_common.step_failures import CLUSTER_FAILURE_CLASSES, RetryClass
from config.base import RELEASE_LABEL_PATTERN, StrictModel
from config.scaling import AlarmScaling, ManagedScaling, NoScaling, Scaling, no_scaling

INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
SUBNET_PATTERN = r"^subnet-[0-9a-f]{8,17}$"
JOB_PATH_PATTERN = r"^[A-Za-z0-9_./-]+$"
# Tokens a step's arguments may use; the workflow fills them per run.
STEP_TOKENS = ("manifest", "output", "run_id", "input", "logs")
_TOKEN = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
# Primary node sizing from the seed: `large` below this many nodes, `xlarge` from it.
LARGE_CLUSTER_NODES = 50

InstanceType = Annotated[str, StringConstraints(pattern=INSTANCE_TYPE_PATTERN)]
SubnetId = Annotated[str, StringConstraints(pattern=SUBNET_PATTERN)]
EmrApplication = Literal[
    "Hadoop",
    "Spark",
    "Hive",
    "Presto",
    "Trino",
    "Flink",
    "HBase",
    "Livy",
    "Tez",
    "Pig",
    "Hue",
    "JupyterEnterpriseGateway",
    "Zeppelin",
    "Oozie",
    "Sqoop",
    "ZooKeeper",
    "Phoenix",
    "HCatalog",
]


def step_tokens(text: str) -> list[str]:
    """The `{{token}}` names used in `text`."""
    return _TOKEN.findall(text)


# --------------------------------------------------------------------------- instances


class EbsVolumes(StrictModel):
    """EBS volumes attached to each instance (HDFS and shuffle space on core/task nodes)."""

    size_gb: int = Field(default=64, ge=1, le=16384, description="Size of each volume.")
    volume_type: Literal["gp3", "gp2", "io1", "io2", "st1", "sc1"] = "gp3"
    volumes_per_instance: int = Field(default=1, ge=1, le=25)
    iops: int | None = Field(default=None, ge=100, le=64000, description="io1/io2/gp3 only.")
    throughput_mibps: int | None = Field(default=None, ge=125, le=1000, description="gp3 only.")


class FleetInstanceType(StrictModel):
    """One instance type a fleet may launch, and how many capacity units one instance counts for."""

    type: InstanceType = Field(description="EC2 instance type, e.g. `m5.xlarge`.")
    weight: int = Field(default=1, ge=1, le=1000, description="Capacity units one instance provides.")
    bid_percent_of_on_demand: float = Field(
        default=100.0, gt=0, le=1000, description="Highest spot price, as a percentage of the on-demand price."
    )
    ebs: EbsVolumes | None = Field(default_factory=EbsVolumes, description="Null: no extra EBS volumes.")


def _general_purpose(size: str = "xlarge") -> list[FleetInstanceType]:
    # Several interchangeable families so spot has more pools to draw from.
    return [FleetInstanceType(type=f"{family}.{size}") for family in ("m5", "m5a", "m6i")]


class PrimaryFleet(StrictModel):
    """The primary node (one unit). Default type: m5.large below 50 nodes, m5.xlarge from 50."""

    instance_types: list[FleetInstanceType] | None = Field(
        default=None, min_length=1, max_length=5, description="Null: sized from the cluster's node count."
    )
    market: Literal["on_demand", "spot"] = Field(
        default="on_demand", description="Spot needs `allow_spot_for_primary_and_core` (losing it kills the run)."
    )


class CoreFleet(StrictModel):
    """Core nodes run tasks and hold HDFS: on-demand by default, since losing one loses data."""

    instance_types: list[FleetInstanceType] = Field(default_factory=_general_purpose, min_length=1, max_length=5)
    on_demand_units: int = Field(default=2, ge=0, le=10000)
    spot_units: int = Field(default=0, ge=0, le=10000, description="Needs `allow_spot_for_primary_and_core`.")

    @model_validator(mode="after")
    def _some_capacity(self) -> CoreFleet:
        if self.on_demand_units + self.spot_units < 1:
            raise ValueError("on_demand_units + spot_units must be at least 1 (a cluster with steps needs core nodes)")
        return self


class TaskFleet(StrictModel):
    """Task nodes only compute (no HDFS): spot by default, the cheap elastic part of the cluster."""

    instance_types: list[FleetInstanceType] = Field(default_factory=_general_purpose, min_length=1, max_length=30)
    on_demand_units: int = Field(default=0, ge=0, le=10000)
    spot_units: int = Field(default=2, ge=0, le=10000)


class SpotOptions(StrictModel):
    """How spot capacity is chosen, and what happens when it does not arrive in time."""

    allocation_strategy: Literal[
        "price-capacity-optimized",
        "capacity-optimized",
        "capacity-optimized-prioritized",
        "lowest-price",
        "diversified",
    ] = "price-capacity-optimized"
    timeout_minutes: int = Field(default=10, ge=5, le=1440, description="Provisioning timeout for spot capacity.")
    timeout_action: Literal["SWITCH_TO_ON_DEMAND", "TERMINATE_CLUSTER"] = Field(
        default="SWITCH_TO_ON_DEMAND", description="At the timeout: fall back to on-demand, or fail the run."
    )


class InstanceFleets(StrictModel):
    """Instance fleets (recommended): several instance types per node role, spot and on-demand mixed."""

    mode: Literal["fleets"]
    primary: PrimaryFleet = Field(default_factory=PrimaryFleet)
    core: CoreFleet = Field(default_factory=CoreFleet)
    task: TaskFleet | None = Field(default_factory=TaskFleet, description="Null: no task fleet.")
    spot: SpotOptions = Field(default_factory=SpotOptions)
    on_demand_allocation_strategy: Literal["lowest-price", "prioritized"] = "lowest-price"

    def node_estimate(self) -> int:
        """Most instances the cluster can have (units are at least one per instance)."""
        task = self.task.on_demand_units + self.task.spot_units if self.task else 0
        return 1 + self.core.on_demand_units + self.core.spot_units + task


class PrimaryGroup(StrictModel):
    """The primary instance group (one instance)."""

    instance_type: InstanceType | None = Field(default=None, description="Null: m5.large below 50 nodes, else xlarge.")
    market: Literal["on_demand", "spot"] = "on_demand"
    ebs: EbsVolumes | None = Field(default_factory=EbsVolumes)


class CoreGroup(StrictModel):
    """The core instance group."""

    instance_type: InstanceType = "m5.xlarge"
    count: int = Field(default=2, ge=1, le=10000)
    market: Literal["on_demand", "spot"] = "on_demand"
    ebs: EbsVolumes | None = Field(default_factory=EbsVolumes)


class TaskGroup(StrictModel):
    """The task instance group."""

    instance_type: InstanceType = "m5.xlarge"
    count: int = Field(default=2, ge=0, le=10000)
    market: Literal["on_demand", "spot"] = "spot"
    bid_price_usd: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?$")] | None = Field(
        default=None, description="Spot bid per instance-hour; null: capped at the on-demand price."
    )
    ebs: EbsVolumes | None = Field(default_factory=EbsVolumes)


class InstanceGroups(StrictModel):
    """Instance groups: one instance type per node role (simpler; fewer spot pools)."""

    mode: Literal["groups"]
    primary: PrimaryGroup = Field(default_factory=PrimaryGroup)
    core: CoreGroup = Field(default_factory=CoreGroup)
    task: TaskGroup | None = Field(default_factory=TaskGroup, description="Null: no task group.")

    def node_estimate(self) -> int:
        return 1 + self.core.count + (self.task.count if self.task else 0)


Instances = Annotated[InstanceFleets | InstanceGroups, Field(discriminator="mode")]


# --------------------------------------------------------------------------- cluster settings


class BootstrapAction(StrictModel):
    """A script every node runs before applications start (from `bootstrap/` in the repo)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    script: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.sh$")] = Field(
        description="Path under `bootstrap/`, uploaded to the artifacts bucket."
    )
    args: list[str] = Field(default_factory=list)


class EmrConfiguration(StrictModel):
    """An EMR configuration classification, e.g. `spark-defaults` with its properties."""

    classification: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
    properties: dict[str, str] = Field(default_factory=dict)
    configurations: list[EmrConfiguration] = Field(default_factory=list)


class Security(StrictModel):
    """The EMR security configuration created for the pipeline (or an existing one by name)."""

    existing_configuration_name: Annotated[str, StringConstraints(min_length=1, max_length=10280)] | None = Field(
        default=None, description="Use this security configuration instead of creating one."
    )
    encryption_at_rest: bool = Field(
        default=True,
        description="EMRFS S3 encryption (SSE-S3) and local disk + EBS encryption with a KMS key the app creates.",
    )
    in_transit_certificates_s3_uri: Annotated[str, StringConstraints(pattern=r"^s3://.+\.zip$")] | None = Field(
        default=None, description="A zip of PEM certificates: turns on in-transit (TLS) encryption."
    )


class ExistingCluster(StrictModel):
    """A long-running cluster to submit steps to (never terminated by the app): by id or by tag."""

    cluster_id: Annotated[str, StringConstraints(pattern=r"^j-[A-Z0-9]{8,20}$")] | None = None
    tag_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    tag_value: Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ExistingCluster:
        by_tag = self.tag_key is not None
        if (self.cluster_id is not None) == by_tag:
            raise ValueError("set either cluster_id, or tag_key (with tag_value), not both and not neither")
        if by_tag and self.tag_value is None:
            raise ValueError("tag_value is required with tag_key")
        return self


# --------------------------------------------------------------------------- steps

MAX_STEP_ATTEMPTS = 5


class Ec2Retry(StrictModel):
    """Try a failed run again when its failure is of a class in `when` (autopilot_common.step_failures):

    - step classes re-submit the failed step (AddSteps again, on the same cluster), each step at most `max_attempts`
      times on one cluster: `spot_interruption` (the step failed while the cluster lost spot instances to EC2),
      `step_failure` (any failed step, spot interruptions included: opt in only for jobs that are safe to run again);
    - cluster classes launch a new cluster (transient clusters only), at most `max_attempts` clusters per run, which
      resumes at the first step that did not complete (completed steps are not run again): `bootstrap_failure` (the
      cluster ended with BOOTSTRAP_FAILURE), `capacity` (EC2 could not provide the instances: a fleet's provisioning
      timeout, or insufficient capacity). With several `subnet_ids` (instance fleets) EMR picks the subnet again on
      every launch.

    A timed-out or cancelled step is never tried again. Every attempt is in the ledger (`steps[].attempts`, and
    `cluster_attempts` for every cluster the run launched), and the run's timeout, capacity and budget estimates count
    them."""

    max_attempts: int = Field(
        default=1,
        ge=1,
        le=MAX_STEP_ATTEMPTS,
        description="Times a step may run, the first included (1: no retry). The run's execution timeout allows "
        "every step this many times.",
    )
    when: list[RetryClass] = Field(
        default_factory=list,
        description="Failure classes that are retried: `spot_interruption`, `step_failure` (the step again) and "
        "`bootstrap_failure`, `capacity` (a new cluster).",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads a bare `on:` key as the boolean true
            raise ValueError("on: not a field (YAML reads a bare `on` as true); expected `when: [<failure classes>]`")
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Ec2Retry:
        if self.max_attempts > 1 and not self.when:
            raise ValueError(
                "when: empty with max_attempts > 1; expected the failure classes to retry "
                "(spot_interruption, step_failure, bootstrap_failure, capacity)"
            )
        if self.max_attempts == 1 and self.when:
            raise ValueError(
                f"max_attempts: 1 never retries {self.when}; expected 2 to {MAX_STEP_ATTEMPTS}, or remove when"
            )
        if len(set(self.when)) != len(self.when):
            raise ValueError(f"when: {self.when} names a class twice; expected each once")
        return self

    @property
    def cluster_attempts(self) -> int:
        """Clusters a run may launch: `max_attempts` when a cluster class is in `when`, else 1."""
        return self.max_attempts if set(self.when) & set(CLUSTER_FAILURE_CLASSES) else 1


class _StepBase(StrictModel):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$")] = Field(
        description="Unique within the pipeline; shown in the EMR console and the ledger."
    )
    timeout_minutes: int = Field(default=60, ge=1, le=10080, description="The step is stopped after this.")


class SparkStep(_StepBase):
    """`spark-submit` of a job from `jobs/`, with `--manifest`, `--output` and `--run-id` added."""

    type: Literal["spark"]
    entry_point: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.(py|jar)$")] = Field(
        description="Job file relative to `jobs/`."
    )
    arguments: list[str] = Field(default_factory=list, description="Extra job arguments; may use `{{tokens}}`.")
    spark_submit_parameters: str = Field(default="", max_length=10240, description="e.g. `--conf spark.x=y`.")


class S3DistCpStep(_StepBase):
    """S3DistCp between S3 and HDFS (e.g. stage inputs into HDFS, or publish HDFS results to S3)."""

    type: Literal["s3distcp"]
    src: str = Field(description="e.g. `{{input}}` or `hdfs:///stage/`.")
    dest: str = Field(description="e.g. `hdfs:///stage/` or `{{output}}/raw/`.")
    arguments: list[str] = Field(default_factory=list, description="Extra options, e.g. `--groupBy=.*(\\d+).*`.")


class HiveStep(_StepBase):
    """A Hive script from `jobs/`, with `-d` variables (OUTPUT, RUN_ID and MANIFEST are always set)."""

    type: Literal["hive"]
    script: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.(q|hql|sql)$")]
    variables: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict
    )


class JarStep(_StepBase):
    """A custom JAR from `jobs/` (or `command-runner.jar`), with its main class and arguments."""

    type: Literal["jar"]
    jar: Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9_./-]+\.jar|command-runner\.jar)$")]
    main_class: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.$]*$")] | None = None
    arguments: list[str] = Field(default_factory=list, description="May use `{{tokens}}`.")


Step = Annotated[SparkStep | S3DistCpStep | HiveStep | JarStep, Field(discriminator="type")]

TRANSIENT_ONLY = (
    "instances",
    "allow_spot_for_primary_and_core",
    "subnet_ids",
    "custom_ami_id",
    "ebs_root_volume_gb",
    "bootstrap_actions",
    "configurations",
    "glue_catalog",
    "security",
    "auto_termination_idle_minutes",
    "step_concurrency",
    "scaling",
    "applications",
    "release_label",
    "startup_timeout_minutes",
)


def _default_applications() -> list[EmrApplication]:
    return ["Hadoop", "Spark"]


class Ec2Runtime(StrictModel):
    """Run the pipeline's steps on EMR on EC2: a transient cluster per run, or an existing cluster."""

    type: Literal["emr-ec2"]
    existing_cluster: ExistingCluster | None = Field(
        default=None, description="Submit steps to this long-running cluster instead of creating one per run."
    )
    release_label: Annotated[str, StringConstraints(pattern=RELEASE_LABEL_PATTERN)] = "emr-7.5.0"
    applications: list[EmrApplication] = Field(default_factory=_default_applications, min_length=1)
    instances: Instances = Field(default_factory=lambda: InstanceFleets(mode="fleets"))
    allow_spot_for_primary_and_core: bool = Field(
        default=False, description="Spot for primary/core risks losing the run and HDFS data: test clusters only."
    )
    subnet_ids: list[SubnetId] = Field(
        default_factory=list,
        description="Fleets pick the best of several subnets (an Outposts subnet is just a subnet); groups take one. "
        "Empty: the default VPC.",
    )
    custom_ami_id: Annotated[str, StringConstraints(pattern=r"^ami-[0-9a-f]{8,17}$")] | None = None
    ebs_root_volume_gb: int | None = Field(default=None, ge=15, le=100)
    bootstrap_actions: list[BootstrapAction] = Field(default_factory=list, max_length=16)
    configurations: list[EmrConfiguration] = Field(default_factory=list)
    glue_catalog: bool = Field(default=True, description="Glue Data Catalog as the Hive and Spark SQL metastore.")
    security: Security = Field(default_factory=Security)
    auto_termination_idle_minutes: int = Field(
        default=30, ge=1, le=10080, description="Safety net: EMR terminates the cluster after this much idle time."
    )
    step_concurrency: int = Field(default=1, ge=1, le=256, description="Steps the cluster may run at once.")
    scaling: Scaling = Field(
        default_factory=no_scaling,
        description="`none` (default), `managed` (EMR managed scaling) or `alarms` (task-fleet steps from "
        "CloudWatch alarms).",
    )
    startup_timeout_minutes: int = Field(
        default=30,
        ge=5,
        le=240,
        description="Transient clusters: the time the cluster may take to provision and bootstrap. EMR holds the "
        "first step PENDING until the cluster is ready, so the first step's timeout is this plus its own "
        "`timeout_minutes`.",
    )
    steps: list[Step] = Field(min_length=1, max_length=256, description="Run in order; a failed step stops the rest.")
    retry: Ec2Retry = Field(
        default_factory=Ec2Retry,
        description="Re-submit a failed step on failure classes you name (default: no retry).",
    )

    @property
    def execution_timeout_minutes(self) -> int:
        """Longest the cluster's work may take: start-up (transient clusters) plus every step, each as many times as
        `retry.max_attempts` allows, on as many clusters as `retry.cluster_attempts` allows (so run timeouts, capacity
        and budget estimates count retries)."""
        steps = self.retry.max_attempts * sum(step.timeout_minutes for step in self.steps)
        return self.retry.cluster_attempts * (self.startup_minutes + steps)

    @property
    def startup_minutes(self) -> int:
        """What the first step's timeout adds for the cluster to start: `startup_timeout_minutes` for a transient
        cluster, nothing on an existing one (it is running; `startup_timeout_minutes` may not be set there)."""
        return self.startup_timeout_minutes if self.transient else 0

    def execution_timeout_fields(self) -> str:
        """The config fields `execution_timeout_minutes` adds up, for errors that must name fields this runtime has."""
        steps = " + ".join(f"steps[{i}].timeout_minutes ({s.timeout_minutes})" for i, s in enumerate(self.steps))
        steps = steps.replace("steps[", "runtime.steps[")
        if self.retry.max_attempts > 1:
            steps = f"runtime.retry.max_attempts ({self.retry.max_attempts}) x ({steps})"
        startup = f"runtime.startup_timeout_minutes ({self.startup_timeout_minutes}) + " if self.transient else ""
        if self.retry.cluster_attempts > 1:
            return (
                f"runtime.retry.max_attempts ({self.retry.cluster_attempts}) clusters x ({startup}{steps}) "
                f"= {self.execution_timeout_minutes}"
            )
        return f"{startup}{steps} = {self.execution_timeout_minutes}"

    @property
    def transient(self) -> bool:
        return self.existing_cluster is None

    @model_validator(mode="after")
    def _consistent(self) -> Ec2Runtime:
        names = [step.name for step in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"steps: duplicate step name(s) {duplicates}; expected unique names")
        for index, step in enumerate(self.steps):
            for token in step_tokens(" ".join(_step_texts(step))):
                if token not in STEP_TOKENS:
                    raise ValueError(
                        f"steps[{index}] ({step.name}): unknown token {{{{{token}}}}}; expected one of "
                        + ", ".join("{{" + t + "}}" for t in STEP_TOKENS)
                    )
        if self.existing_cluster is not None:
            self._check_existing_retry()
            unset = {"scaling"} if isinstance(self.scaling, NoScaling) else set()  # `mode: none` is fine anywhere
            extra = sorted(set(TRANSIENT_ONLY) & self.model_fields_set - unset)
            if extra:
                raise ValueError(
                    f"{', '.join(extra)}: apply only to transient clusters; remove them when existing_cluster is set"
                )
            return self
        self._check_spot()
        if "spot_interruption" in self.retry.when and not self._may_run_spot():
            raise ValueError(
                "retry.when: spot_interruption, but the cluster runs no spot instances; expected spot capacity "
                "(e.g. instances.task.spot_units > 0) or another failure class"
            )
        if isinstance(self.instances, InstanceGroups) and len(self.subnet_ids) > 1:
            raise ValueError("subnet_ids: instance groups take one subnet; use instance fleets for several")
        if "Spark" not in self.applications and any(isinstance(s, SparkStep) for s in self.steps):
            raise ValueError("applications: Spark steps need 'Spark' in applications")
        if "Hive" not in self.applications and any(isinstance(s, HiveStep) for s in self.steps):
            raise ValueError("applications: Hive steps need 'Hive' in applications")
        if isinstance(self.scaling, AlarmScaling):
            self._check_alarm_scaling(self.scaling)
        return self

    def task_units(self) -> int | None:
        """The task fleet's initial capacity (on-demand + spot units) or the task group's count; None without."""
        task = self.instances.task
        if task is None:
            return None
        if isinstance(task, TaskFleet):
            return task.on_demand_units + task.spot_units
        return task.count

    def _check_alarm_scaling(self, scaling: AlarmScaling) -> None:
        initial = self.task_units()
        if initial is None:
            raise ValueError(
                "scaling: mode alarms resizes the task fleet/group; expected instances.task to be set "
                "(or use mode managed)"
            )
        if not scaling.min_units <= initial <= scaling.max_units:
            if isinstance(self.instances, InstanceFleets):
                start = f"fleet starts at {initial} units (instances.task.on_demand_units + spot_units)"
            else:
                start = f"group starts at {initial} instances (instances.task.count)"
            raise ValueError(
                f"scaling.min_units/max_units: the task {start}; expected it within "
                f"[min_units {scaling.min_units}, max_units {scaling.max_units}]"
            )
        if isinstance(self.instances, InstanceGroups) and "spot_percent" in scaling.model_fields_set:
            raise ValueError(
                "scaling.spot_percent: applies to task fleets only; an instance group's market is fixed "
                "(instances.task.market): remove spot_percent, or use instance fleets"
            )

    def _check_existing_retry(self) -> None:
        relaunch = sorted(set(self.retry.when) & set(CLUSTER_FAILURE_CLASSES))
        if relaunch:
            raise ValueError(
                f"retry.when: {relaunch} launch a new cluster, which a run on an existing cluster never does; "
                "expected spot_interruption or step_failure"
            )

    def _check_spot(self) -> None:
        spot_roles = [role for role, spot in self._spot_on_primary_or_core().items() if spot]
        if not spot_roles:
            return
        if not self.allow_spot_for_primary_and_core:
            raise ValueError(
                f"instances: spot for {' and '.join(spot_roles)} nodes; expected on-demand (losing a primary or "
                "core node fails the run and loses HDFS data) or set allow_spot_for_primary_and_core: true"
            )
        warnings.warn(
            f"spot capacity for {' and '.join(spot_roles)} nodes: a spot interruption fails the run",
            UserWarning,
            stacklevel=2,
        )

    def _may_run_spot(self) -> bool:
        """Whether a transient cluster may hold spot instances: configured, or added by alarm scaling."""
        task = self.instances.task
        if isinstance(task, TaskFleet):
            task_spot = task.spot_units > 0 or (
                isinstance(self.scaling, AlarmScaling) and self.scaling.spot_percent > 0
            )
        else:
            task_spot = task is not None and task.market == "spot"
        return task_spot or any(self._spot_on_primary_or_core().values())

    def _spot_on_primary_or_core(self) -> dict[str, bool]:
        inst = self.instances
        if isinstance(inst, InstanceFleets):
            return {"primary": inst.primary.market == "spot", "core": inst.core.spot_units > 0}
        return {"primary": inst.primary.market == "spot", "core": inst.core.market == "spot"}

    def primary_instance_type(self) -> str:
        """The seed's sizing: m5.large for fewer than 50 nodes, m5.xlarge from 50 (counting what scaling may add)."""
        nodes = self.instances.node_estimate()
        if isinstance(self.scaling, ManagedScaling):
            nodes = max(nodes, self.scaling.maximum_units + 1)
        elif isinstance(self.scaling, AlarmScaling):
            nodes += max(0, self.scaling.max_units - (self.task_units() or 0))
        return "m5.xlarge" if nodes >= LARGE_CLUSTER_NODES else "m5.large"


def _step_texts(step: SparkStep | S3DistCpStep | HiveStep | JarStep) -> list[str]:
    if isinstance(step, S3DistCpStep):
        return [step.src, step.dest, *step.arguments]
    if isinstance(step, HiveStep):
        return list(step.variables.values())
    if isinstance(step, SparkStep):
        return [*step.arguments, step.spark_submit_parameters]
    return list(step.arguments)
