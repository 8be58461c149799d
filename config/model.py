"""The typed configuration model for an EMR Autopilot deployment (`config/<env>.yaml`).

Every field has a documented default an EMR engineer would pick. Unknown keys are errors, never
ignored. `config/schema.json` and the configuration reference (docs/configuration.md) are generated from this module
(`make docs`); a test fails when either is stale.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Discriminator, Field, StringConstraints, Tag, model_validator

from autopilot_common.logical_dates import every_of, template_problem
from autopilot_common.pipeline_settings import PIPELINE_NAME
from config.base import RELEASE_LABEL_PATTERN, StrictModel
from config.ec2 import Ec2Runtime
from config.eks import EksRuntime
from config.guardrails import Guardrails, PipelineLimits
from config.job_retry import SERVERLESS_RETRY_RELEASE, JobRunRetry, RetriedJobRunTimeouts, retry_release_problem
from config.schedules import Expectation, Schedule

# Pipeline names end up in state machine names, execution names (80 chars max, together with a
# 24-character hash), IAM role names, S3 prefixes and SSM parameter names: keep them short and DNS-like (the pattern
# lives in the kernel, which finds pipelines by name: autopilot_common.pipeline_settings).
PIPELINE_NAME_PATTERN = PIPELINE_NAME.pattern
RESOURCE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
BUCKET_NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"

PipelineName = Annotated[str, StringConstraints(pattern=PIPELINE_NAME_PATTERN)]
ResourceName = Annotated[str, StringConstraints(pattern=RESOURCE_NAME_PATTERN)]
S3_PREFIX_PATTERN = r"^([^/\x00-\x1f][^\x00-\x1f]*)?$"
S3Prefix = Annotated[str, StringConstraints(pattern=S3_PREFIX_PATTERN, max_length=512)]


# --------------------------------------------------------------------------- storage


class BucketSpec(StrictModel):
    """One of the deployment's buckets: created by the app (default) or an existing one imported by name."""

    existing_bucket_name: Annotated[str, StringConstraints(pattern=BUCKET_NAME_PATTERN)] | None = Field(
        default=None,
        description="Use this existing bucket instead of creating one. The app then cannot change the bucket's "
        "settings (EventBridge notifications, logging, versioning): the owner must.",
    )
    removal_policy: Literal["retain", "destroy"] = Field(
        default="retain", description="What `cdk destroy` does with a bucket the app created."
    )


class LandingBucketSpec(BucketSpec):
    """The landing bucket: versioned, so that each object version is its own arrival and a run reads the version
    its manifest pins (an overwrite is a new version with its own run, never a silent change of an old run's
    input)."""

    noncurrent_version_expiration_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Overwritten (noncurrent) versions expire after this many days (a created bucket only).",
    )


class LogsBucketSpec(BucketSpec):
    """The logs bucket: S3 server access logs of the other buckets, EMR and Spark logs."""

    expiration_days: int = Field(default=365, ge=1, le=3650, description="Objects expire after this many days.")
    infrequent_access_after_days: int = Field(
        default=30, ge=30, le=3650, description="Objects move to STANDARD_IA after this many days."
    )


class Storage(StrictModel):
    """The four buckets. All: public access blocked, SSL enforced, encrypted, access-logged to `logs`."""

    landing: LandingBucketSpec = Field(
        default_factory=LandingBucketSpec,
        description="Where data lands; EventBridge notifications on; versioned (noncurrent versions expire).",
    )
    outputs: BucketSpec = Field(
        default_factory=BucketSpec, description="Run outputs and the run ledger (`_runs/`); versioned."
    )
    artifacts: BucketSpec = Field(
        default_factory=BucketSpec, description="Job code (from `jobs/`) and input manifests."
    )
    logs: LogsBucketSpec = Field(
        default_factory=LogsBucketSpec, description="Access logs and job logs; lifecycle managed."
    )


# --------------------------------------------------------------------------- EMR Serverless


class WorkerGroup(StrictModel):
    """Pre-initialized workers of one type (driver or executor) kept warm on an EMR Serverless application."""

    workers: int = Field(default=1, ge=1, le=1000, description="Number of pre-initialized workers.")
    cpu: Annotated[str, StringConstraints(pattern=r"^\d+ vCPU$")] = Field(default="2 vCPU", description="Per worker.")
    memory: Annotated[str, StringConstraints(pattern=r"^\d+ GB$")] = Field(default="4 GB", description="Per worker.")
    disk: Annotated[str, StringConstraints(pattern=r"^\d+ GB$")] = Field(default="20 GB", description="Per worker.")


class InitialCapacity(StrictModel):
    """Warm pool per worker type; empty means cold starts (cheapest, slower first job)."""

    driver: WorkerGroup | None = None
    executor: WorkerGroup | None = None


class MaximumCapacity(StrictModel):
    """Hard ceiling for all concurrent jobs on the application: the cost guardrail."""

    cpu: Annotated[str, StringConstraints(pattern=r"^\d+ vCPU$")] = "100 vCPU"
    memory: Annotated[str, StringConstraints(pattern=r"^\d+ GB$")] = "400 GB"
    disk: Annotated[str, StringConstraints(pattern=r"^\d+ GB$")] = "1000 GB"


class NetworkConfig(StrictModel):
    """VPC placement, only needed when jobs must reach resources inside a VPC."""

    subnet_ids: list[Annotated[str, StringConstraints(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(min_length=1)
    security_group_ids: list[Annotated[str, StringConstraints(pattern=r"^sg-[0-9a-f]{8,17}$")]] = Field(min_length=1)


class ServerlessApplication(StrictModel):
    """An EMR Serverless Spark application (shared by name, or inline per pipeline)."""

    release_label: Annotated[str, StringConstraints(pattern=RELEASE_LABEL_PATTERN)] = Field(
        default="emr-7.5.0", description="EMR release, e.g. `emr-7.5.0`."
    )
    architecture: Literal["X86_64", "ARM64"] = Field(default="X86_64", description="Worker CPU architecture.")
    initial_capacity: InitialCapacity = Field(default_factory=InitialCapacity)
    maximum_capacity: MaximumCapacity = Field(default_factory=MaximumCapacity)
    auto_start: bool = Field(default=True, description="Start the application when a job is submitted.")
    auto_stop_idle_minutes: int | None = Field(
        default=15, ge=1, le=10080, description="Stop after this many idle minutes; null disables auto-stop."
    )
    network: NetworkConfig | None = None


# --------------------------------------------------------------------------- triggers


class PerObjectBatching(StrictModel):
    """One run per object that lands."""

    mode: Literal["per_object"]


class WindowBatching(StrictModel):
    """One run per pipeline per SQS batch: objects arriving within the window are processed together."""

    mode: Literal["window"]
    window_seconds: int = Field(default=60, ge=1, le=300, description="SQS batching window (Lambda allows 0-300 s).")
    max_objects: int = Field(
        default=1000,
        ge=1,
        le=4000,
        description="Most objects in one run (the SQS batch size); a bigger burst becomes several runs. A run also "
        "holds at most what one 6 MB Lambda invocation carries: Lambda invokes with fewer messages when the batch "
        "would be larger, and the rest make the next run. That is about 3,200 arrivals with short keys, 2,100 with "
        "1,024-byte keys (docs/operations/triggers.md).",
    )


class MarkerBatching(StrictModel):
    """A marker object (e.g. `_SUCCESS`) starts one run over every object in its folder."""

    mode: Literal["marker"]
    marker_name: Annotated[str, StringConstraints(pattern=r"^[^/]+$")] = Field(
        default="_SUCCESS", description="File name of the marker."
    )
    late_objects: Literal["rerun", "notify"] = Field(
        default="rerun",
        description="Objects written to a folder after its marker (including every object of a folder whose "
        "marker came first): `rerun` runs them (one run per folder per batch), `notify` records them as SKIPPED "
        "in the ledger and notifies. Never silence.",
    )


Batching = Annotated[PerObjectBatching | WindowBatching | MarkerBatching, Field(discriminator="mode")]


TriggerSource = Literal["eventbridge", "cloudtrail"]


# Fields of an arrival trigger that a pipeline run `after` others cannot have: it has no arrival trigger.
ARRIVAL_ONLY_FIELDS = ("prefix", "batching", "sources", "partition_template", "schedule", "expect")
MAX_UPSTREAMS = 10


class Trigger(StrictModel):
    """What starts this pipeline: landing objects under `prefix` (an arrival trigger), or its upstream pipelines'
    runs (`after`)."""

    prefix: S3Prefix | None = Field(
        default=None,
        description="Key prefix in the landing bucket, e.g. `sales/`. Required, unless `after` names upstream "
        "pipelines: such a pipeline has no arrival trigger and takes no prefix.",
    )
    after: list[PipelineName] = Field(
        default_factory=list,
        max_length=MAX_UPSTREAMS,
        description="Upstream pipelines: when a run of each has SUCCEEDED, this pipeline runs once over their "
        "outputs (every object under each upstream run's output folder, `_SUCCESS`, `_metrics.json` and other "
        "hidden, temporary and checksum files excluded; `suffixes` and `ignore_zero_byte` apply). Fan-in: with "
        "several upstreams, upstream runs that carry a logical date are grouped by it (one run per date); others "
        "form one open group that holds the newest SUCCEEDED run of each upstream not consumed yet, and the run "
        "starts when the group is complete, so the upstreams must all have a `partition_template` or none of them "
        "(a mix is refused at load: it would never start). A FAILED upstream run starts nothing and writes an "
        "UPSTREAM_FAILED ledger entry naming it. A pipeline with `after` has no arrival trigger: `prefix`, "
        "`batching`, `sources` and `partition_template` do not apply. Empty: an arrival trigger.",
    )
    suffixes: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="Only keys ending with one of these (e.g. `.csv`); empty means any."
    )
    batching: Batching = Field(default_factory=lambda: PerObjectBatching(mode="per_object"))
    ignore_zero_byte: bool = Field(default=True, description="Skip empty objects (they are usually placeholders).")
    sources: list[TriggerSource] = Field(
        default_factory=lambda: list[TriggerSource](["eventbridge"]),
        min_length=1,
        description=(
            "Where arrivals are seen: `eventbridge` (S3 EventBridge notifications of the landing bucket) and/or "
            "`cloudtrail` (CloudTrail S3 data events, for buckets that cannot send notifications). With both, "
            "an object reported by both still runs once."
        ),
    )

    partition_template: S3Prefix | None = Field(
        default=None,
        description=(
            "The prefix of one date partition under the landing bucket, e.g. `sales/dt={ds}/`, with placeholders "
            "`{ds}` (YYYY-MM-DD), `{yyyy}`, `{mm}`, `{dd}`, `{hh}` (`{{`/`}}` are literal braces); must start with "
            "`prefix`. With `{hh}` a partition is an hour, else a day. `emr-autopilot backfill --from --to` starts "
            "one run per partition; null: backfill needs `--template` or `--prefixes`. Required by `schedule` and "
            "`expect`; an arrival run whose key lies in a partition records its logical date."
        ),
    )
    schedule: Schedule | None = Field(
        default=None,
        description=(
            "Run by the clock instead of on arrivals (no arrival rule is deployed): each firing starts one run over "
            "the `partition_template` partition of its logical date, the partition that ended last before the "
            "firing on the schedule's clock (a daily firing at 02:00 on 06-03 runs 06-02). The run id is the one "
            "`emr-autopilot backfill` gives that date, so a redelivered firing, a second firing for the date and a "
            "backfill of it are one run."
        ),
    )
    expect: Expectation | None = Field(
        default=None,
        description=(
            "Arrival deadline of an arrival-triggered pipeline: when no run has started for a logical date by the "
            "deadline, a MISSED ledger entry and a notification name the date and the prefix that stayed empty."
        ),
    )

    @property
    def watches_landing(self) -> bool:
        """True for an arrival trigger (landing objects under `prefix`), False for a pipeline run `after` others."""
        return not self.after

    @property
    def landing_prefix(self) -> str:
        """The arrival trigger's prefix (`""`, the whole bucket, is a valid one); ValueError for an `after` trigger."""
        if self.prefix is None:
            raise ValueError("a trigger with `after` watches no landing prefix")
        return self.prefix

    @model_validator(mode="after")
    def _arrivals_or_upstreams(self) -> Trigger:
        if not self.after:
            if self.prefix is None:
                raise ValueError(
                    "prefix: required; expected a key prefix in the landing bucket such as 'sales/' (or `after`: "
                    "upstream pipelines whose runs start this one)"
                )
            return self
        given = [name for name in ARRIVAL_ONLY_FIELDS if name in self.model_fields_set]
        if given:
            raise ValueError(
                f"{given[0]}: a pipeline with `after` ({', '.join(self.after)}) has no arrival trigger, so it takes no "
                f"{', '.join(given)}; remove {'it' if len(given) == 1 else 'them'} (its inputs are its upstreams' "
                "outputs)"
            )
        if len(set(self.after)) != len(self.after):
            raise ValueError(f"after: {self.after} names a pipeline twice; expected each upstream once")
        return self

    @model_validator(mode="after")
    def _unique_sources(self) -> Trigger:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(
                f"sources: {self.sources} lists a source twice; expected each of eventbridge/cloudtrail once"
            )
        return self

    @model_validator(mode="after")
    def _partition_template_under_prefix(self) -> Trigger:
        template = self.partition_template
        if template is None:
            return self
        problem = template_problem(template)
        if problem is not None:
            raise ValueError(f"partition_template: {problem}")
        literal_head = template.split("{", 1)[0]  # what every rendered partition starts with
        if self.prefix is not None and not literal_head.startswith(self.prefix):
            raise ValueError(
                f"partition_template: {template!r} does not start with the trigger's prefix {self.prefix!r}; "
                f"expected a partition under it, e.g. {self.prefix + 'dt={ds}/'!r}"
            )
        return self

    @model_validator(mode="after")
    def _clock_needs_partitions(self) -> Trigger:
        for field, value in (("schedule", self.schedule), ("expect", self.expect)):
            if value is not None and self.partition_template is None:
                raise ValueError(
                    f"{field}: needs partition_template (the partition of each logical date), e.g. "
                    f"{(self.prefix or '') + 'dt={ds}/'!r}"
                )
        if self.schedule is not None and self.expect is not None:
            raise ValueError(
                "expect: is for pipelines that start on arrivals; a scheduled pipeline starts by the clock (its empty "
                "partitions follow schedule.on_empty): remove expect or schedule"
            )
        clock_ignores = [name for name in ("sources", "batching") if name in self.model_fields_set]
        if self.schedule is not None and clock_ignores:
            raise ValueError(
                f"{clock_ignores[0]}: a scheduled pipeline starts by the clock (no arrival rule is deployed), so "
                f"{' and '.join(clock_ignores)} would have no effect; remove "
                f"{'it' if len(clock_ignores) == 1 else 'them'} or the schedule"
            )
        if self.expect is not None and self.partition_template is not None:
            every = every_of(self.partition_template)
            if self.expect.every != every:
                raise ValueError(
                    f"expect.every: got {self.expect.every!r}, but partition_template {self.partition_template!r} "
                    f"is {'daily' if every == 'day' else 'hourly'}; expected every: {every}"
                )
        return self

    def overlaps(self, other: Trigger) -> bool:
        """True when one landing object key could match both triggers (never for an `after` trigger)."""
        if self.prefix is None or other.prefix is None:
            return False
        if not (self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)):
            return False
        if not self.suffixes or not other.suffixes:
            return True
        return any(a.endswith(b) or b.endswith(a) for a in self.suffixes for b in other.suffixes)


# --------------------------------------------------------------------------- runtimes


def _application_kind(value: object) -> str:
    return "inline" if isinstance(value, dict | BaseModel) else "name"


ApplicationRef = Annotated[
    Annotated[ResourceName, Tag("name")] | Annotated[ServerlessApplication, Tag("inline")],
    Discriminator(_application_kind),
]


class ServerlessRuntime(RetriedJobRunTimeouts, StrictModel):
    """Run the pipeline's Spark job on EMR Serverless."""

    type: Literal["emr-serverless"]
    application: ApplicationRef = Field(
        description="Name of an entry in `serverless_applications` (shared), or an inline application "
        "(created for this pipeline alone)."
    )
    entry_point: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.(py|jar)$")] = Field(
        description="Job file, relative to `jobs/` (uploaded to the artifacts bucket), e.g. `sales_etl.py`."
    )
    arguments: list[str] = Field(
        default_factory=list,
        description="Extra job arguments, after `--manifest`, `--output` and `--run-id` which the workflow adds.",
    )
    spark_submit_parameters: str = Field(
        default="", max_length=10240, description="e.g. `--conf spark.executor.cores=2`."
    )
    execution_timeout_minutes: int = Field(
        default=60, ge=1, le=10080, description="EMR Serverless cancels the job run after this."
    )
    retry: JobRunRetry = Field(
        default_factory=JobRunRetry,
        description="EMR Serverless re-runs a failed batch job run (`retryPolicy`); the workflow waits "
        "`execution_timeout_minutes` per attempt.",
    )


Runtime = Annotated[ServerlessRuntime | Ec2Runtime | EksRuntime, Field(discriminator="type")]


class Pipeline(StrictModel):
    """One pipeline: what starts it, where its job runs, where its outputs go."""

    description: str = ""
    trigger: Trigger | None = Field(
        default=None,
        description="What starts runs: landing objects (S3 arrivals) or upstream pipelines (`after`); null means "
        "console/CLI runs only.",
    )
    runtime: Runtime
    output_prefix: S3Prefix | None = Field(
        default=None, description="Prefix in the outputs bucket; defaults to the pipeline name."
    )
    run_timeout_minutes: int = Field(
        default=180, ge=5, le=525600, description="Whole-workflow timeout (state machine TimeoutSeconds)."
    )
    limits: PipelineLimits = Field(
        default_factory=PipelineLimits, description="This pipeline's caps (on top of the deployment's)."
    )

    @property
    def arrivals(self) -> Trigger | None:
        """The pipeline's arrival trigger (S3 objects under a landing prefix), or None (console runs only, or runs
        `after` upstream pipelines)."""
        return self.trigger if self.trigger is not None and self.trigger.watches_landing else None

    @property
    def upstreams(self) -> list[str]:
        """The pipelines this one runs after (`trigger.after`), or none."""
        return list(self.trigger.after) if self.trigger is not None else []

    @property
    def job_minutes(self) -> int:
        """The longest the job may take: `execution_timeout_minutes`, times `retry.max_attempts` for the job-run
        runtimes (the service retries within the one job run the workflow waits on)."""
        attempts = 1 if isinstance(self.runtime, Ec2Runtime) else self.runtime.retry.max_attempts
        return self.runtime.execution_timeout_minutes * attempts

    @model_validator(mode="after")
    def _run_outlasts_job(self) -> Pipeline:
        if self.run_timeout_minutes <= self.job_minutes:
            raise ValueError(
                f"run_timeout_minutes ({self.run_timeout_minutes}) must be greater than the job's time, "
                f"{self.runtime.execution_timeout_fields()}, so the workflow can clean up after a job timeout; "
                "raise run_timeout_minutes or lower those"
            )
        return self


# --------------------------------------------------------------------------- deployment


class LambdaSettings(StrictModel):
    """Settings shared by the app's Lambda functions."""

    powertools_layer_version: int = Field(
        default=28,
        ge=1,
        description="Version of the AWS-managed layer `AWSLambdaPowertoolsPythonV3-python314-x86_64` "
        "(must carry Powertools 3.37.0; check with `aws lambda get-layer-version-by-arn`).",
    )
    memory_mb: int = Field(default=512, ge=128, le=10240)
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653] = 30


class Notifications(StrictModel):
    """Where failure notifications go (an SNS topic is always created)."""

    emails: list[Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]] = Field(
        default_factory=list, description="Subscribed to the notifications topic (each must confirm)."
    )


class AppConfig(StrictModel):
    """A whole deployment (`config/<env>.yaml`)."""

    project: ResourceName = Field(
        default="autopilot",
        description="Prefix of every resource name. Not `aws...` or `ssm...`: SSM refuses parameter names that begin "
        "with them, and each pipeline's settings parameter is `/<project>-<env>/pipelines/<pipeline>`.",
    )
    account: Annotated[str, StringConstraints(pattern=r"^\d{12}$")] | None = Field(
        default=None, description="Target account; default: the CLI's (CDK_DEFAULT_ACCOUNT)."
    )
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")] | None = Field(
        default=None, description="Target region; default: the CLI's (CDK_DEFAULT_REGION)."
    )
    tags: dict[Annotated[str, StringConstraints(pattern=r"^[\w .:/=+@-]{1,128}$")], str] = Field(
        default_factory=dict, description="Extra tags on every resource (keys must not start with `aws:`)."
    )
    lambdas: LambdaSettings = Field(default_factory=LambdaSettings)
    storage: Storage = Field(default_factory=Storage)
    notifications: Notifications = Field(default_factory=Notifications)
    serverless_applications: dict[ResourceName, ServerlessApplication] = Field(
        default_factory=dict, description="Shared EMR Serverless applications, referenced by name from pipelines."
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)
    pipelines: dict[PipelineName, Pipeline] = Field(min_length=1, description="The pipelines, by name.")
    pipeline_stacks: int = Field(
        default=1,
        ge=1,
        le=100,
        description="How many pipeline stacks (`<project>-<env>-pipelines-<n>`) share the pipelines; a pipeline's "
        "stack is a stable hash of its name, so adding or removing a pipeline never moves another (changing this "
        "number does). At most 25 pipelines per stack; config validation names the count that fits.",
    )

    @model_validator(mode="after")
    def _no_reserved_tags(self) -> AppConfig:
        for key in self.tags:
            if key.lower().startswith(("aws:", "autopilot:")):
                raise ValueError(
                    f"tags: key {key!r} is reserved; expected a key not starting with 'aws:' or 'autopilot:'"
                )
        return self

    @model_validator(mode="after")
    def _serverless_retry_release(self) -> AppConfig:
        for name, pipeline in self.pipelines.items():
            runtime = pipeline.runtime
            if not isinstance(runtime, ServerlessRuntime):
                continue
            application = runtime.application
            if isinstance(application, str):
                if application not in self.serverless_applications:
                    continue  # reported by the reference check
                application = self.serverless_applications[application]
            problem = retry_release_problem(
                runtime.retry, application.release_label, SERVERLESS_RETRY_RELEASE, "EMR Serverless"
            )
            if problem:
                raise ValueError(f"pipeline {name!r}: runtime.{problem} (its application's release)")
        return self
