"""The run ledger: one JSON entry per run at `s3://<outputs>/_runs/<pipeline>/<YYYY/MM/DD>/<run id>.json`.

The one home of the ledger: its states, the typed entry (`RunLedgerEntry`), the key layout, and reading and
(conditionally) writing entries. Every writer uses it: prepare (the STARTED entry the workflow writes and
merges its final update into), admission (QUEUED), finalize (the EC2 run's update), the guardrails (ABORTED,
TIMED_OUT, CANCELLED, orphans), the scaler (`scaling.actions`) and the router (SKIPPED); the twin's and the
CLI's reader too. `config/ledger.schema.json` is the JSON Schema of an entry for other readers (generated from
this model by `make docs`; the e2e suite validates every entry it writes against it).

The date is the run's start (UTC): the execution's start time, or for an arrival the router decided not to run
(`SKIPPED`) the event time of the arrival, so a redelivered arrival rewrites the same entry.

States: QUEUED, STARTED, SUCCEEDED, FAILED (workflows), ABORTED, TIMED_OUT, CANCELLED (guardrails), SKIPPED
(the router: an arrival or a marker that started nothing, or a schedule firing over an empty partition with
`on_empty: skip`, with the reason; no execution exists for it), MISSED (the router: an arrival deadline passed with
no run started for its logical date) and UPSTREAM_FAILED (the router: a run of a pipeline with `trigger.after` that
an upstream's failed run did not start; `failed_upstream` names that run, no execution exists for it). A schedule
firing over an empty partition with `on_empty: fail` is FAILED without an execution.

`logical_date` is the date (or date-hour, `2024-06-01T05`) of the partition a run covers: scheduled runs, backfills,
arrival runs whose objects lie in one `partition_template` partition, MISSED entries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    NotRequired,
    Required,  # pydantic (the schema generator) needs these on Python < 3.12
)

from botocore.exceptions import ClientError
from typing_extensions import TypedDict

from autopilot_common.pricing import Cost
from autopilot_common.run_events import UpstreamRun

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef

    from autopilot_common.clients import S3Client

LEDGER_PREFIX = "_runs/"
SCHEMA_VERSION: Final = 1

QUEUED: Final = "QUEUED"  # waiting for a run slot (admission)
STARTED: Final = "STARTED"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
ABORTED: Final = "ABORTED"  # the execution was stopped (StopExecution)
TIMED_OUT: Final = "TIMED_OUT"  # the run exceeded run_timeout_minutes
CANCELLED: Final = "CANCELLED"  # its step or job run was cancelled outside the app
SKIPPED: Final = "SKIPPED"  # an arrival or a schedule firing that started nothing (router)
MISSED: Final = "MISSED"  # an arrival deadline passed without a run for its logical date (router)
UPSTREAM_FAILED: Final = "UPSTREAM_FAILED"  # a downstream run an upstream's failed run did not start (router)
RunState = Literal[
    "QUEUED", "STARTED", "SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "CANCELLED", "SKIPPED", "MISSED",
    "UPSTREAM_FAILED",
]  # fmt: skip
RUN_STATES: tuple[RunState, ...] = (
    QUEUED, STARTED, SUCCEEDED, FAILED, ABORTED, TIMED_OUT, CANCELLED, SKIPPED, MISSED, UPSTREAM_FAILED
)  # fmt: skip
# States no later writer may move a run out of (the guardrails only amend them: cleanup, who stopped it).
FINAL_STATES = frozenset({SUCCEEDED, FAILED, ABORTED, TIMED_OUT, CANCELLED, SKIPPED, MISSED, UPSTREAM_FAILED})
NotStartedState = Literal["SKIPPED", "FAILED", "MISSED", "UPSTREAM_FAILED"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_ALREADY_EXISTS = {"PreconditionFailed", "ConditionalRequestConflict"}


class BudgetReservation(TypedDict):
    """What an admitted run reserved of its day's spend under a daily budget (`limits.max_daily_usd`): `rule`
    says how its end settles it (`cost.usd` replaces `reserved_usd`; a null cost keeps it)."""

    day: str
    reserved_usd: float
    scopes: list[str]
    rule: str


class BudgetHold(TypedDict):
    """Why a run waits for a budget: `scope`'s spend on `day` (UTC) plus the run's estimate exceeds it."""

    scope: str
    max_daily_usd: float
    spent_usd: float
    estimate_usd: float
    day: str


class Admission(TypedDict, total=False):
    """The run slot: `queued_at`, `position` and `waiting_for` (`slot` or `budget`, with `over_budget`) while
    QUEUED; `admitted_at`, `queued_seconds`, `waited` (and `budget` under a daily budget) once admitted
    (autopilot_common.admission)."""

    queued_at: str
    position: int | None
    waiting_for: Literal["slot", "budget"]
    over_budget: BudgetHold
    admitted_at: str
    queued_seconds: float
    waited: bool
    budget: BudgetReservation


class StepAttempt(TypedDict):
    """One submission of an EMR step (runtime.retry re-submits a failed step under the same name): its EMR step id,
    state, times, and for a failed one the class of its failure (autopilot_common.step_failures) and why."""

    attempt: int
    step_id: str
    cluster_id: NotRequired[str]  # the cluster it ran on (a run's clusters differ when runtime.retry replaced one)
    state: str
    failure_class: str | None
    reason: str | None
    started_at: str | None
    ended_at: str | None


class ClusterAttempt(TypedDict):
    """One cluster a transient EMR-on-EC2 run launched, in order: runtime.retry replaces a cluster that ended with
    bootstrap_failure or capacity (autopilot_common.step_failures) by a new one that resumes at the step that did not
    complete. `reason_code`/`reason` are EMR's StateChangeReason; `failure_class` is set for a cluster that failed."""

    attempt: int
    cluster_id: str
    state: str | None
    reason_code: str | None
    reason: str | None
    failure_class: str | None
    created_at: str | None
    ended_at: str | None


class StepRecord(TypedDict, total=False):
    """One EMR step of an EC2 run (finalize): its last submission, EMR's timeline beside the moment the workflow
    noticed its end, and every submission in `attempts`."""

    id: str
    name: str
    state: str
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    noticed_at: str | None
    notice_delay_seconds: float | None
    failure: dict[str, Any] | None
    reason: str | None
    attempts: list[StepAttempt]


class JobRunAttempt(TypedDict, total=False):
    """One attempt of an EMR Serverless or EMR on EKS job run under its retry policy (`runtime.retry`), the first
    first. EMR Serverless reports each attempt (GetJobRun with `attempt`); EMR on EKS reports only the attempt count
    (`retryPolicyExecution.currentAttemptCount`), so its earlier attempts are FAILED with nothing more known."""

    attempt: int
    state: str
    state_details: str | None  # the service's reason (EMR Serverless stateDetails, EMR on EKS stateDetails)
    reason: str | None  # EMR on EKS failureReason (USER_ERROR, ...) of the last attempt
    started_at: str | None
    ended_at: str | None
    billed_resource_utilization: dict[str, float] | None  # EMR Serverless: what this attempt was billed


class IdleCluster(TypedDict, total=False):
    """EMR on EC2: the run's cluster time with no step of the run running (finalize; `idle_cluster_seconds` is the
    sum). On a long-running cluster only the gaps between the run's steps count, and the cluster's cost is its
    owner's (instance_seconds and usd null)."""

    between_steps_seconds: float  # each step's end to the next step's start on the same cluster
    after_last_step_seconds: float | None  # the last step's end to the request to terminate (transient)
    instance_seconds: float | None  # the cluster's instances x those windows
    usd: float | None  # what they cost (EC2 + EMR per second, spot at its price; EBS not included)


class Cleanup(TypedDict, total=False):
    """What the guardrails' cleanup did when the execution ended badly."""

    at: str
    execution_status: str
    clusters_terminated: list[str]
    steps_cancelled: list[str]
    job_runs_cancelled: list[str]
    alarms_deleted: list[str]
    slot_released: bool


class RunLedgerEntry(TypedDict, total=False):
    """One run's entry. Required in every state: `schema_version`, `run_id`, `pipeline`, `state`, `started_at`.

    Nested objects that mirror an AWS response or a user's input (`trigger`, `overrides`, `cluster`, `job_run`,
    `metrics`, `scaling`) are kept open: their keys follow EMR and the job, not this model.
    """

    schema_version: Required[Literal[1]]
    run_id: Required[str]
    pipeline: Required[str]
    state: Required[RunState]
    started_at: Required[str]
    ended_at: str | None
    # What started it
    trigger: dict[str, Any]
    execution_arn: str | None
    input_manifest: str | None
    object_count: int
    objects: list[dict[str, Any]]  # SKIPPED: the objects that were seen
    reason: str  # SKIPPED, MISSED, UPSTREAM_FAILED, FAILED without an execution: why nothing started
    logical_date: str  # the partition's date (2024-06-01) or date-hour (2024-06-01T05) the run covers
    overrides: dict[str, Any]
    rerun_of: str  # a console run started by `emr-autopilot rerun`: the run it runs again
    # `trigger.after`: the upstream runs whose outputs this run reads (lineage), and for UPSTREAM_FAILED the one
    # that failed
    upstream_runs: list[UpstreamRun]
    failed_upstream: UpstreamRun
    # Where it ran
    runtime: str
    application_id: str | None  # EMR Serverless
    job_run_id: str | None  # EMR Serverless, EMR on EKS
    virtual_cluster_id: str | None  # EMR on EKS
    job_run: dict[str, Any] | None  # EMR Serverless, EMR on EKS: the job run's end as the service reported it
    attempts: list[JobRunAttempt]  # EMR Serverless, EMR on EKS: every attempt of the job run (runtime.retry)
    cluster_id: str | None  # EMR on EC2
    cluster: dict[str, Any] | None
    cluster_attempts: list[ClusterAttempt]  # EMR on EC2, transient: every cluster the run launched (runtime.retry)
    steps: list[StepRecord]
    cancelled_steps: list[str]
    failed_step: StepRecord | None
    instance_hours_estimate: dict[str, Any] | None
    idle_cluster_seconds: float | None  # EMR on EC2: cluster time with no step of the run running (see `idle`)
    idle: IdleCluster | None
    cost: Cost | None  # what the run cost in dollars (autopilot_common.pricing); usd None with the reason
    links: dict[str, str]  # the run's console pages (autopilot_common.links.run_links): execution, job run, logs
    scaling: dict[str, Any]
    admission: Admission | None
    # What it produced, and how it ended
    output_uri: str
    log_uri: str
    metrics: dict[str, Any] | None
    error: str | None
    cause: str | None
    previous_state: str | None
    cleanup: Cleanup
    swept: dict[str, Any]
    aborted_by: str
    aborted_at: str
    cancelled_by: str
    cancelled_at: str
    cancel_action: str


# Readers may rely on the top level: a field the model does not name is an error (the schema says so too).
RunLedgerEntry.__pydantic_config__ = {"extra": "forbid"}  # type: ignore[attr-defined]


def iso(moment: datetime) -> str:
    """`2024-06-01T12:00:00.123Z`: millisecond ISO 8601 UTC, as Step Functions writes times (and the ledger)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ledger_key(pipeline: str, started: datetime, run_id: str) -> str:
    """`_runs/<pipeline>/<YYYY/MM/DD of the run's start, UTC>/<run id>.json`."""
    day = started.astimezone(UTC) if started.tzinfo else started
    return f"{LEDGER_PREFIX}{pipeline}/{day:%Y/%m/%d}/{run_id}.json"


def ledger_prefix(pipeline: str | None = None) -> str:
    """`_runs/` or `_runs/<pipeline>/`: where a reader lists entries."""
    return LEDGER_PREFIX + (f"{pipeline}/" if pipeline else "")


def read_entry(s3: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """The entry at `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
            return None
        raise
    entry: dict[str, Any] = json.loads(body)
    return entry


def write_entry(s3: S3Client, bucket: str, key: str, entry: Mapping[str, Any], *, only_if_absent: bool = False) -> bool:
    """Write the entry; with `only_if_absent`, only when no entry exists yet (S3 `If-None-Match: *`), False
    when one did (another writer got there first and its entry stays)."""
    request: PutObjectRequestTypeDef = {
        "Bucket": bucket,
        "Key": key,
        "ContentType": "application/json",
        "Body": json.dumps(entry, ensure_ascii=False).encode("utf-8"),
    }
    if only_if_absent:
        request["IfNoneMatch"] = "*"
    try:
        s3.put_object(**request)
    except ClientError as exc:
        if only_if_absent and str(exc.response.get("Error", {}).get("Code")) in _ALREADY_EXISTS:
            return False
        raise
    return True


def skipped_entry(
    *, pipeline: str, run_id: str, reason: str, at: datetime, trigger: Mapping[str, Any], objects: list[dict[str, Any]]
) -> RunLedgerEntry:
    """The entry of an arrival (or marker) that started no run: what it was, why, and what was seen."""
    return not_started_entry(
        state=SKIPPED, pipeline=pipeline, run_id=run_id, reason=reason, at=at, trigger=trigger, objects=objects
    )


def upstream_failed_entry(
    *,
    pipeline: str,
    run_id: str,
    failed: UpstreamRun,
    reason: str,
    at: datetime,
    trigger: Mapping[str, Any],
    upstream_runs: list[UpstreamRun],
) -> RunLedgerEntry:
    """The entry of a downstream run (`trigger.after`) that an upstream's failed run did not start: which run failed,
    why nothing started, and the upstream runs that had succeeded for it so far."""
    entry = not_started_entry(
        state=UPSTREAM_FAILED, pipeline=pipeline, run_id=run_id, reason=reason, at=at, trigger=trigger, objects=None
    )
    entry["failed_upstream"] = failed
    entry["upstream_runs"] = upstream_runs
    return entry


def not_started_entry(
    *,
    state: NotStartedState,
    pipeline: str,
    run_id: str,
    reason: str,
    at: datetime,
    trigger: Mapping[str, Any],
    objects: list[dict[str, Any]] | None,
    logical_date: str | None = None,
) -> RunLedgerEntry:
    """The entry of something that started no execution (SKIPPED, MISSED, UPSTREAM_FAILED, FAILED before starting):
    started and ended at `at` (whole seconds, UTC), what it was, why, what was seen (`objects`, when any were) and,
    for a partition, its logical date."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry: RunLedgerEntry = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "pipeline": pipeline,
        "state": state,
        "reason": reason,
        "trigger": dict(trigger),
        "started_at": stamp,
        "ended_at": stamp,
    }
    if objects is not None:
        entry["objects"] = objects
        entry["object_count"] = len(objects)
    if state == FAILED:
        entry["error"] = "NotStarted"
        entry["cause"] = reason
    if logical_date is not None:
        entry["logical_date"] = logical_date
    return entry
