"""Guardrails configuration: concurrency and capacity caps, the orphan sweeper, reactions to
CloudTrail (clusters launched outside the app, clusters of a run terminated by someone else).

Defaults keep every guarantee on (cleanup on abort/timeout, the sweeper every 15 minutes, an idle
auto-termination policy on clusters launched by hand) and every cap off (unlimited).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from autopilot_common.tags import TAG_LONG_RUNNING
from config.base import StrictModel

TagKey = Annotated[str, StringConstraints(pattern=r"^[\w .:/=+@-]{1,128}$")]


class Limits(StrictModel):
    """Caps on what runs at once, and a daily budget. Null means unlimited. A run over a cap waits in order of
    arrival (QUEUED in the ledger and `emr-autopilot runs`) and starts when capacity frees; none is dropped."""

    max_concurrent_runs: int | None = Field(default=None, ge=1, le=10000, description="Runs admitted at once.")
    max_concurrent_clusters: int | None = Field(
        default=None, ge=1, le=1000, description="Transient EMR clusters (one per emr-ec2 run) at once."
    )
    max_vcpus: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Sum of the admitted runs' vCPU reservations (`run_vcpus`)."
    )
    max_daily_usd: float | None = Field(
        default=None,
        gt=0,
        le=10_000_000,
        description=(
            "Budget of one day (00:00 to 24:00 UTC) in US dollars: the recorded costs (`cost.usd`) of runs that "
            "ended that day plus the estimates of runs admitted and not yet ended. A run whose estimate would take "
            "the day over it waits or fails (`over_budget`). Null: no budget."
        ),
    )

    @property
    def capped(self) -> bool:
        caps = (self.max_concurrent_runs, self.max_concurrent_clusters, self.max_vcpus, self.max_daily_usd)
        return any(v is not None for v in caps)


class PipelineLimits(Limits):
    """A pipeline's own caps (apply on top of the deployment's) and what one of its runs reserves."""

    run_vcpus: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "vCPUs one run reserves against `max_vcpus`. Default: estimated from the runtime (emr-ec2: "
            "every fleet/group at full capacity; emr-serverless: the application's maximum cpu; emr-eks: "
            "required when a vCPU cap applies)."
        ),
    )
    run_estimate_usd: float | None = Field(
        default=None,
        gt=0,
        le=10_000_000,
        description=(
            "US dollars one run reserves against `max_daily_usd` until its pipeline has recorded costs (then the "
            "largest of its last 10 recorded costs). Default: the most a run can cost at the price table's rates "
            "(emr-ec2: every instance at full capacity for `run_timeout_minutes`; emr-serverless: the application's "
            "maximum capacity for the job timeout; emr-eks: `run_vcpus` with 8 GB each for the job timeout)."
        ),
    )
    over_budget: Literal["wait", "fail"] = Field(
        default="wait",
        description=(
            "A run a daily budget (this pipeline's or the deployment's) does not allow: `wait` (QUEUED until a new "
            "day or cheaper-than-estimated costs make room; `max_queue_minutes` still ends the wait) or `fail` "
            "(`BudgetExceeded`, nothing launched, notified). Default `wait`, like the other caps: no run is lost."
        ),
    )
    max_queue_minutes: int = Field(
        default=1440,
        ge=1,
        le=525600,
        description="A run still QUEUED after this long fails with `QueueTimeout` (ledger FAILED, notified).",
    )
    max_cluster_lifetime_minutes: int | None = Field(
        default=None,
        ge=10,
        le=525600,
        description="The sweeper terminates a run's cluster older than this. Default: `run_timeout_minutes` + 15.",
    )


class UnmanagedClusters(StrictModel):
    """Clusters launched in this account and region by anyone other than this app (seen via CloudTrail)."""

    enforce_auto_termination: bool = Field(
        default=True,
        description="Give a cluster launched without an auto-termination policy one, and notify who launched it.",
    )
    idle_timeout_minutes: int = Field(default=60, ge=1, le=10080, description="Idle timeout of the policy applied.")
    exempt_tag_key: TagKey = Field(
        default=TAG_LONG_RUNNING,
        description="Clusters carrying this tag (any value) are long-running by intent and left alone.",
    )


class Trail(StrictModel):
    """CloudTrail trail for the guardrails (EventBridge sees CloudTrail management events only if a trail logs them)."""

    create: bool = Field(
        default=False,
        description=(
            "Create a multi-region trail with management events (and S3 data events for landing when a pipeline's "
            "trigger uses `cloudtrail`). False: an existing organization/account trail is a prerequisite."
        ),
    )


class Guardrails(StrictModel):
    """Deployment-wide guardrails."""

    limits: Limits = Field(default_factory=Limits, description="Caps across all pipelines of the deployment.")
    sweeper_interval_minutes: int = Field(
        default=15,
        ge=1,
        le=1440,
        description="How often the orphan sweeper runs (EventBridge schedule). It also answers EMR-on-EC2 steps whose "
        "end event was lost: the longest a cluster can idle for a lost event.",
    )
    serverless_idle_stop_minutes: int = Field(
        default=60,
        ge=5,
        le=10080,
        description="The sweeper stops an EMR Serverless application of this app that ran no job for this long.",
    )
    unmanaged_clusters: UnmanagedClusters = Field(default_factory=UnmanagedClusters)
    trail: Trail = Field(default_factory=Trail)

    @model_validator(mode="after")
    def _exempt_tag_not_reserved(self) -> Guardrails:
        key = self.unmanaged_clusters.exempt_tag_key
        if key.lower().startswith("aws:"):
            raise ValueError(
                f"unmanaged_clusters.exempt_tag_key: {key!r} is reserved; expected a key not starting 'aws:'"
            )
        return self
