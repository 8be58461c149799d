"""Guardrails: no cluster or job run outlives its purpose, whatever ended the run.

Three kinds of event reach the guardrail function (four EventBridge rules: CloudTrail has two):

- "Step Functions Execution Status Change" (ABORTED, TIMED_OUT, FAILED) of this app's state machines:
  an abort or a timeout cannot be caught inside ASL, so this is where the run's cluster is terminated
  (or its EMR Serverless / EMR on EKS job run cancelled, or its steps on a long-running cluster
  cancelled), its scaling alarms deleted, its concurrency slot released and its ledger entry written.
  A no-op (apart from the checks) when the workflow already cleaned up.
- "Scheduled Event" (every `sweeper_interval_minutes`): the orphan sweeper. Clusters and job runs
  tagged by this deployment whose execution is not RUNNING (or is unknown), or that are older than
  their pipeline's lifetime, are terminated/cancelled; idle EMR Serverless applications are stopped.
- "AWS API Call via CloudTrail" from EMR: RunJobFlow by someone else without an auto-termination
  policy gets one; TerminateJobFlows / CancelSteps by someone else on a run of this app marks the run
  CANCELLED with the principal. From Step Functions: StopExecution of a run names who aborted it
  (`aborted_by` in the ABORTED entry).

Every function takes its AWS clients as parameters (`Clients`), so tests hand in moto or twin clients.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from autopilot_common.admission import CAPS_ENV, TABLE_ENV, Caps, release, runs
from autopilot_common.causes import ledger_cause
from autopilot_common.ledger import ledger_key
from autopilot_common.ledger import read_entry as read_ledger
from autopilot_common.ledger import write_entry as write_ledger

TAG_PIPELINE = "autopilot:pipeline"
TAG_RUN_ID = "autopilot:run-id"
TAG_EXECUTION = "autopilot:execution"
TAG_DEPLOYMENT = "autopilot:deployment"
CANCELLATION_KEY_PREFIX = "autopilot-guardrail.cancellation#"
STOP_KEY_PREFIX = "autopilot-guardrail.stop#"
CANCELLATION_TTL = timedelta(days=30)

ACTIVE_CLUSTER_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
ACTIVE_SERVERLESS_STATES = ["SUBMITTED", "PENDING", "SCHEDULED", "RUNNING", "QUEUED"]
ACTIVE_EKS_STATES = ["PENDING", "SUBMITTED", "RUNNING"]
ENDED_STATUSES = ("ABORTED", "TIMED_OUT", "FAILED")
TERMINAL_LEDGER_STATES = {"SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "CANCELLED"}
# Pipeline names are lower case, cluster ids upper case: the id in a scaling alarm's name is unambiguous.
ALARM_CLUSTER_ID = re.compile(r"-(j-[A-Z0-9]{8,20})-")


class GuardrailEventError(ValueError):
    """An event the guardrail cannot act on; the message names the field and what was expected."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PipelineRef:
    """What the guardrail needs to know of one pipeline (from the `PIPELINES` environment variable)."""

    name: str
    state_machine_arn: str
    runtime: str  # emr-serverless | emr-ec2 | emr-eks
    transient: bool = True
    application_id: str | None = None
    virtual_cluster_id: str | None = None
    max_cluster_lifetime_minutes: int = 195


@dataclass(frozen=True)
class UnmanagedPolicy:
    """What to do with clusters launched by someone other than this app."""

    enforce_auto_termination: bool = True
    idle_timeout_minutes: int = 60
    exempt_tag_key: str = "autopilot:long-running"


@dataclass(frozen=True)
class GuardrailSettings:
    """The function's environment: `DEPLOYMENT`, `OUTPUTS_BUCKET`, `TOPIC_ARN`, `CLAIMS_TABLE`,
    `PIPELINES` (JSON: name -> PipelineRef fields), `APP_ROLE_ARNS` (JSON list: roles whose calls are
    this app's own), `UNMANAGED_CLUSTERS` (JSON: UnmanagedPolicy fields), optional
    `SERVERLESS_IDLE_STOP_MINUTES` (default 60)."""

    deployment: str
    outputs_bucket: str
    topic_arn: str
    claims_table: str
    pipelines: Mapping[str, PipelineRef]
    app_role_arns: frozenset[str]
    unmanaged: UnmanagedPolicy = field(default_factory=UnmanagedPolicy)
    serverless_idle_stop_minutes: int = 60
    admission_table: str | None = None  # `ADMISSION_TABLE`: run slots to release (see autopilot_common.admission)
    caps: Caps = field(default_factory=Caps)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GuardrailSettings:
        """Read and validate the environment; RuntimeError names the first bad variable."""
        plain = {
            "DEPLOYMENT": "the deployment name, e.g. autopilot-dev",
            "OUTPUTS_BUCKET": "the outputs bucket that holds the run ledger",
            "TOPIC_ARN": "the notifications topic ARN",
            "CLAIMS_TABLE": "the DynamoDB table that records cancellations",
        }
        for name, meaning in plain.items():
            if not env.get(name, "").strip():
                raise RuntimeError(f"environment variable {name} is not set; expected {meaning}")
        pipelines_raw = _json_env(env, "PIPELINES", dict)
        try:
            pipelines = {name: PipelineRef(name=name, **spec) for name, spec in pipelines_raw.items()}
        except TypeError as exc:
            raise RuntimeError(f"environment variable PIPELINES: {exc}; expected name -> PipelineRef fields") from None
        roles = _json_env(env, "APP_ROLE_ARNS", list)
        unmanaged = _json_env(env, "UNMANAGED_CLUSTERS", dict) if env.get("UNMANAGED_CLUSTERS") else {}
        idle = env.get("SERVERLESS_IDLE_STOP_MINUTES", "60").strip()
        if not idle.isdigit():
            raise RuntimeError(f"environment variable SERVERLESS_IDLE_STOP_MINUTES is {idle!r}; expected minutes")
        return cls(
            deployment=env["DEPLOYMENT"].strip(),
            outputs_bucket=env["OUTPUTS_BUCKET"].strip(),
            topic_arn=env["TOPIC_ARN"].strip(),
            claims_table=env["CLAIMS_TABLE"].strip(),
            pipelines=pipelines,
            app_role_arns=frozenset(str(r) for r in roles),
            unmanaged=UnmanagedPolicy(**unmanaged),
            serverless_idle_stop_minutes=int(idle),
            admission_table=env.get(TABLE_ENV, "").strip() or None,
            caps=Caps.from_env(env) if env.get(CAPS_ENV) else Caps(),
        )

    def pipeline_of_state_machine(self, arn: str) -> PipelineRef | None:
        return next((p for p in self.pipelines.values() if p.state_machine_arn == arn), None)

    def pipeline_of_execution(self, execution_arn: str) -> PipelineRef | None:
        """`arn:...:execution:<state machine name>:<name>` -> the pipeline of that state machine."""
        machine = execution_arn.replace(":execution:", ":stateMachine:", 1).rpartition(":")[0]
        return self.pipeline_of_state_machine(machine) if ":execution:" in execution_arn else None

    def pipeline_of_run_id(self, run_id: str) -> PipelineRef | None:
        """Router run ids are `<pipeline>-<24 hex>`: the longest pipeline name that prefixes the id."""
        matches = [p for p in self.pipelines.values() if run_id.startswith(f"{p.name}-")]
        return max(matches, key=lambda p: len(p.name)) if matches else None


def _json_env(env: Mapping[str, str], name: str, kind: type) -> Any:
    try:
        value = json.loads(env.get(name, ""))
    except ValueError:
        raise RuntimeError(f"environment variable {name} is not valid JSON; expected a {kind.__name__}") from None
    if not isinstance(value, kind):
        raise RuntimeError(f"environment variable {name} is a {type(value).__name__}; expected a {kind.__name__}")
    return value


@dataclass
class Clients:
    """The AWS clients the guardrails use (boto3 clients; tests pass moto/twin ones)."""

    emr: Any
    emr_serverless: Any
    emr_containers: Any
    s3: Any
    sns: Any
    sfn: Any
    cloudwatch: Any
    dynamodb: Any


# --------------------------------------------------------------------------- the run and its resources


@dataclass(frozen=True)
class RunRef:
    """One run: its pipeline, run id (= execution name), execution ARN and start time (ledger key date)."""

    pipeline: PipelineRef
    run_id: str
    execution_arn: str
    started_at: datetime

    @property
    def ledger_key(self) -> str:
        return ledger_key(self.pipeline.name, self.started_at, self.run_id)


@dataclass
class Teardown:
    """What a cleanup found still running and stopped."""

    clusters_terminated: list[str] = field(default_factory=list)
    steps_cancelled: list[str] = field(default_factory=list)
    job_runs_cancelled: list[str] = field(default_factory=list)
    alarms_deleted: list[str] = field(default_factory=list)
    slot_released: bool = False

    @property
    def acted(self) -> bool:
        return bool(self.clusters_terminated or self.steps_cancelled or self.job_runs_cancelled or self.alarms_deleted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clusters_terminated": self.clusters_terminated,
            "steps_cancelled": self.steps_cancelled,
            "job_runs_cancelled": self.job_runs_cancelled,
            "alarms_deleted": self.alarms_deleted,
            "slot_released": self.slot_released,
        }


def alarm_prefix(deployment: str, pipeline: str, cluster_id: str) -> str:
    """Scaling alarms of one cluster are named `<deployment>-scaling-<pipeline>-<cluster id>-<rule>`."""
    return f"{deployment}-scaling-{pipeline}-{cluster_id}-"


def active_clusters(emr: Any) -> Iterable[dict[str, Any]]:
    """Every cluster not yet terminating (ListClusters, paginated), as ListClusters summaries."""
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        yield from page.get("Clusters", [])


def cluster_tags(emr: Any, cluster_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(tags, DescribeCluster's Cluster) of one cluster."""
    cluster: dict[str, Any] = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    return {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}, cluster


def teardown_run(run: RunRef, settings: GuardrailSettings, clients: Clients, ledger: Mapping[str, Any]) -> Teardown:
    """Stop whatever `run` still has running (idempotent: finds nothing the second time)."""
    done = Teardown()
    pipeline = run.pipeline
    if pipeline.runtime == "emr-ec2" and pipeline.transient:
        for summary in active_clusters(clients.emr):
            if run.run_id not in summary.get("Name", ""):
                continue  # cluster names are `autopilot <pipeline> <run id>`: skip the DescribeCluster
            tags, _ = cluster_tags(clients.emr, summary["Id"])
            if tags.get(TAG_EXECUTION) == run.execution_arn:
                clients.emr.terminate_job_flows(JobFlowIds=[summary["Id"]])
                done.clusters_terminated.append(summary["Id"])
        for cluster_id in {*done.clusters_terminated, *([ledger["cluster_id"]] if ledger.get("cluster_id") else [])}:
            done.alarms_deleted += delete_alarms(
                clients.cloudwatch, alarm_prefix(settings.deployment, pipeline.name, cluster_id)
            )
    elif pipeline.runtime == "emr-ec2":
        cluster_id = ledger.get("cluster_id")
        if cluster_id:
            done.steps_cancelled += cancel_run_steps(clients.emr, str(cluster_id), run.run_id)
    elif pipeline.runtime == "emr-serverless" and pipeline.application_id:
        done.job_runs_cancelled += _cancel_serverless_runs(clients.emr_serverless, pipeline.application_id, run)
    elif pipeline.runtime == "emr-eks" and pipeline.virtual_cluster_id:
        done.job_runs_cancelled += _cancel_eks_runs(clients.emr_containers, pipeline.virtual_cluster_id, run)
    return done


def delete_alarms(cloudwatch: Any, prefix: str) -> list[str]:
    names = [
        alarm["AlarmName"]
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", [])
    ]
    for start in range(0, len(names), 100):  # DeleteAlarms takes up to 100 names
        cloudwatch.delete_alarms(AlarmNames=names[start : start + 100])
    return names


def cancel_run_steps(emr: Any, cluster_id: str, run_id: str) -> list[str]:
    """Cancel the run's unfinished steps (named `<run id>: <step>`) on a shared cluster."""
    ids = [
        step["Id"]
        for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id, StepStates=["PENDING", "RUNNING"])
        for step in page.get("Steps", [])
        if step.get("Name", "").startswith(f"{run_id}: ")
    ]
    if ids:
        emr.cancel_steps(ClusterId=cluster_id, StepIds=ids, StepCancellationOption="SEND_INTERRUPT")
    return ids


def serverless_job_runs(client: Any, application_id: str, states: list[str] | None = None) -> list[dict[str, Any]]:
    """ListJobRuns of an application (paginated); an application that no longer exists has none."""
    kwargs: dict[str, Any] = {"applicationId": application_id, **({"states": states} if states else {})}
    try:
        return [run for page in client.get_paginator("list_job_runs").paginate(**kwargs) for run in page["jobRuns"]]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return []
        raise


def _cancel_serverless_runs(client: Any, application_id: str, run: RunRef) -> list[str]:
    cancelled = []
    for summary in serverless_job_runs(client, application_id, ACTIVE_SERVERLESS_STATES):
        if summary.get("name") != run.run_id:
            continue
        job = client.get_job_run(applicationId=application_id, jobRunId=summary["id"])["jobRun"]
        if (job.get("tags") or {}).get(TAG_EXECUTION) == run.execution_arn:
            _ignore_finished(client.cancel_job_run, applicationId=application_id, jobRunId=summary["id"])
            cancelled.append(summary["id"])
    return cancelled


def _cancel_eks_runs(client: Any, virtual_cluster_id: str, run: RunRef) -> list[str]:
    cancelled = []
    for page in client.get_paginator("list_job_runs").paginate(
        virtualClusterId=virtual_cluster_id, states=ACTIVE_EKS_STATES
    ):
        for summary in page.get("jobRuns", []):
            if summary.get("name") != run.run_id:
                continue
            job = client.describe_job_run(virtualClusterId=virtual_cluster_id, id=summary["id"])["jobRun"]
            if (job.get("tags") or {}).get(TAG_EXECUTION) == run.execution_arn:
                _ignore_finished(client.cancel_job_run, virtualClusterId=virtual_cluster_id, id=summary["id"])
                cancelled.append(summary["id"])
    return cancelled


def _ignore_finished(call: Any, **kwargs: Any) -> None:
    """Cancel calls race with the job finishing on its own: a job already ended is not an error."""
    try:
        call(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"ValidationException", "ResourceNotFoundException"}:
            raise


# --------------------------------------------------------------------------- ledger and notifications


def base_entry(run: RunRef) -> dict[str, Any]:
    """A ledger entry for a run that ended before the workflow wrote one (e.g. aborted during Prepare)."""
    return {
        "schema_version": 1,
        "run_id": run.run_id,
        "pipeline": run.pipeline.name,
        "state": "UNKNOWN",
        "execution_arn": run.execution_arn,
        "runtime": run.pipeline.runtime,
        "started_at": _iso(run.started_at),
        "ended_at": None,
        "error": None,
        "cause": None,
    }


def notify(sns: Any, topic_arn: str, subject: str, message: Mapping[str, Any]) -> None:
    sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=json.dumps(message, indent=2, default=str))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _millis_to_datetime(value: Any, field_name: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise GuardrailEventError(f"detail.{field_name}: got {value!r}; expected epoch milliseconds")


# --------------------------------------------------------------------------- cancellations (CloudTrail)


@dataclass(frozen=True)
class Cancellation:
    """Someone other than this app stopped a run's compute (seen in CloudTrail)."""

    run_id: str
    by: str
    action: str
    at: str

    def ledger_fields(self) -> dict[str, Any]:
        return {
            "state": "CANCELLED",
            "cancelled_by": self.by,
            "cancelled_at": self.at,
            "cancel_action": self.action,
        }


@dataclass(frozen=True)
class Stop:
    """Someone stopped a run's execution (StopExecution, seen in CloudTrail): the ABORTED entry names them."""

    run_id: str
    by: str
    at: str

    def ledger_fields(self) -> dict[str, Any]:
        return {"aborted_by": self.by, "aborted_at": self.at}


def record_stop(dynamodb: Any, table: str, stop: Stop, now: datetime) -> bool:
    """Store who stopped the run (first report wins); True when this call stored it."""
    return _store_first(dynamodb, table, STOP_KEY_PREFIX + stop.run_id, now, by=stop.by, at=stop.at)


def find_stop(dynamodb: Any, table: str, run_id: str) -> Stop | None:
    found = _stored(dynamodb, table, STOP_KEY_PREFIX + run_id)
    return Stop(run_id=run_id, by=found["by"], at=found["at"]) if found else None


def record_cancellation(dynamodb: Any, table: str, cancellation: Cancellation, now: datetime) -> bool:
    """Store the cancellation (first report wins); True when this call stored it."""
    return _store_first(
        dynamodb,
        table,
        CANCELLATION_KEY_PREFIX + cancellation.run_id,
        now,
        by=cancellation.by,
        action=cancellation.action,
        at=cancellation.at,
    )


def find_cancellation(dynamodb: Any, table: str, run_id: str) -> Cancellation | None:
    found = _stored(dynamodb, table, CANCELLATION_KEY_PREFIX + run_id)
    return Cancellation(run_id=run_id, by=found["by"], action=found["action"], at=found["at"]) if found else None


def _store_first(dynamodb: Any, table: str, key: str, now: datetime, **fields: str) -> bool:
    """Put a report under `key` unless one is there (it expires after CANCELLATION_TTL); True when stored."""
    item = {"id": {"S": key}, **{name: {"S": value} for name, value in fields.items()}}
    item["expiration"] = {"N": str(int((now + CANCELLATION_TTL).timestamp()))}
    try:
        dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(id)")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _stored(dynamodb: Any, table: str, key: str) -> dict[str, str] | None:
    """The string fields of the report under `key` (consistent read), or None."""
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True).get("Item")
    return {name: value["S"] for name, value in item.items() if "S" in value} if item else None


# --------------------------------------------------------------------------- 1. execution ended


@dataclass
class CleanupResult:
    """What `clean_up_execution` did (for logs, metrics and tests)."""

    run_id: str
    pipeline: str
    status: str
    ledger_state: str | None
    ledger_written: bool
    notified: bool
    teardown: Teardown


def clean_up_execution(
    detail: Mapping[str, Any], settings: GuardrailSettings, clients: Clients, now: datetime
) -> CleanupResult | None:
    """React to an execution that ended ABORTED, TIMED_OUT or FAILED (None: not one of ours)."""
    status = detail.get("status")
    if status not in ENDED_STATUSES:
        raise GuardrailEventError(f"detail.status: got {status!r}; expected one of {list(ENDED_STATUSES)}")
    pipeline = settings.pipeline_of_state_machine(str(detail.get("stateMachineArn", "")))
    if pipeline is None:
        return None
    name, arn = detail.get("name"), detail.get("executionArn")
    if not isinstance(name, str) or not name or not isinstance(arn, str) or not arn:
        raise GuardrailEventError("detail.name / detail.executionArn: expected the execution's name and ARN")
    run = RunRef(pipeline, name, arn, _millis_to_datetime(detail.get("startDate"), "startDate"))
    ledger = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    teardown = teardown_run(run, settings, clients, ledger or {})
    teardown.slot_released = release_slot(run, settings, clients)
    cancellation = find_cancellation(clients.dynamodb, settings.claims_table, run.run_id)
    stopped = detail.get("stopDate")
    ended_at = _iso(_millis_to_datetime(stopped, "stopDate")) if stopped is not None else _iso(now)
    entry = dict(ledger) if ledger else base_entry(run)
    previous = entry.get("state")
    update: dict[str, Any] = {}
    if cancellation is not None:
        update = cancellation.ledger_fields()
    elif status in ("ABORTED", "TIMED_OUT"):
        stop = find_stop(clients.dynamodb, settings.claims_table, run.run_id) if status == "ABORTED" else None
        error = detail.get("error") or ("States.Timeout" if status == "TIMED_OUT" else "ExecutionAborted")
        update = {
            "state": status,
            "error": error,
            "cause": ledger_cause(
                error,
                detail.get("cause")
                or (
                    "the run exceeded its pipeline's run_timeout_minutes"
                    if status == "TIMED_OUT"
                    else "the execution was stopped (StopExecution)" + (f" by {stop.by}" if stop else "")
                ),
            ),
            **(stop.ledger_fields() if stop else {}),
        }
    elif previous not in TERMINAL_LEDGER_STATES:
        # FAILED before the workflow could write its own entry (Prepare rejected the input, or an error
        # escaped every Catch): the entry is written here so every run has one.
        update = {
            "state": "FAILED",
            "error": detail.get("error"),
            "cause": ledger_cause(detail.get("error"), detail.get("cause")),
        }
    changed = bool(update) and any(entry.get(k) != v for k, v in update.items())
    if changed or teardown.acted:
        if update:
            entry |= update
        if previous != entry.get("state"):
            entry["previous_state"] = previous
        entry["ended_at"] = entry.get("ended_at") or ended_at
        entry["cleanup"] = {"at": _iso(now), "execution_status": status, **teardown.as_dict()}
        write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
    notified = False
    if changed:
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: {pipeline.name} run {entry['state']}",
            {
                "pipeline": pipeline.name,
                "run_id": run.run_id,
                "state": entry["state"],
                "execution_status": status,
                "error": entry.get("error"),
                "cause": entry.get("cause"),
                "cancelled_by": entry.get("cancelled_by"),
                "cleanup": teardown.as_dict(),
                "ledger": f"s3://{settings.outputs_bucket}/{run.ledger_key}",
                "execution_arn": run.execution_arn,
            },
        )
        notified = True
    return CleanupResult(
        run.run_id, pipeline.name, status, entry.get("state"), changed or teardown.acted, notified, teardown
    )


def release_slot(run: RunRef, settings: GuardrailSettings, clients: Clients) -> bool:
    """Give back the run's concurrency slot (or drop it from the queue); False when it held none.

    The workflow's ReleaseRunSlot cannot run after an abort or a timeout: this is its stand-in
    (idempotent, so a FAILED run that already released costs one conditional delete)."""
    if settings.admission_table is None:
        return False
    return release(clients.dynamodb, clients.sfn, settings.admission_table, run.run_id, settings.caps)


# --------------------------------------------------------------------------- 2. the sweeper


@dataclass
class SweepReport:
    """What one sweeper tick found (steady state: every list empty)."""

    orphan_clusters: list[dict[str, str]] = field(default_factory=list)
    orphan_job_runs: list[dict[str, str]] = field(default_factory=list)
    idle_applications_stopped: list[str] = field(default_factory=list)
    slots_released: list[dict[str, str]] = field(default_factory=list)
    orphan_alarms: list[str] = field(default_factory=list)
    active_clusters: int = 0  # this deployment's clusters still up after the tick (a dashboard gauge)

    @property
    def findings(self) -> int:
        return (
            len(self.orphan_clusters)
            + len(self.orphan_job_runs)
            + len(self.idle_applications_stopped)
            + len(self.slots_released)
            + len(self.orphan_alarms)
        )


def execution_status(sfn: Any, execution_arn: str) -> tuple[str, datetime | None]:
    """(status, start date) of an execution; ("UNKNOWN", None) when Step Functions no longer knows it."""
    try:
        described = sfn.describe_execution(executionArn=execution_arn)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {
            "ExecutionDoesNotExist",
            "InvalidArn",
            "StateMachineDoesNotExist",
        }:
            return "UNKNOWN", None
        raise
    started = described.get("startDate")
    return str(described["status"]), started if isinstance(started, datetime) else None


def sweep(settings: GuardrailSettings, clients: Clients, now: datetime) -> SweepReport:
    """One tick of the orphan sweeper (see the module docstring)."""
    report = SweepReport()
    _sweep_clusters(settings, clients, now, report)
    for pipeline in settings.pipelines.values():
        if pipeline.runtime == "emr-serverless" and pipeline.application_id:
            _sweep_job_runs(settings, clients, now, report, pipeline, serverless=True)
        elif pipeline.runtime == "emr-eks" and pipeline.virtual_cluster_id:
            _sweep_job_runs(settings, clients, now, report, pipeline, serverless=False)
    for application_id in sorted({p.application_id for p in settings.pipelines.values() if p.application_id}):
        if _stop_if_idle(clients.emr_serverless, application_id, settings.serverless_idle_stop_minutes, now):
            report.idle_applications_stopped.append(application_id)
    _sweep_run_slots(settings, clients, report)
    report.orphan_alarms = _sweep_scaling_alarms(settings, clients)
    return report


def _sweep_scaling_alarms(settings: GuardrailSettings, clients: Clients) -> list[str]:
    """Delete scaling alarms whose cluster has ended. Every teardown path of the workflow deletes them,
    and so does the cleanup of an abort; this catches a deletion that failed (the workflow never fails a
    run over it), so no alarm outlives its cluster by more than one sweeper interval."""
    prefix = f"{settings.deployment}-scaling-"
    alarms = [
        alarm["AlarmName"]
        for page in clients.cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
        for alarm in page.get("MetricAlarms", [])
    ]
    ended: dict[str, bool] = {}
    orphans = []
    for name in alarms:
        match = ALARM_CLUSTER_ID.search(name.removeprefix(prefix))
        if match is None:
            continue  # not named by this app's convention: leave it alone
        cluster_id = match.group(1)
        if cluster_id not in ended:
            ended[cluster_id] = _cluster_ended(clients.emr, cluster_id)
        if ended[cluster_id]:
            orphans.append(name)
    for start in range(0, len(orphans), 100):  # DeleteAlarms takes up to 100 names
        clients.cloudwatch.delete_alarms(AlarmNames=orphans[start : start + 100])
    return orphans


def _cluster_ended(emr: Any, cluster_id: str) -> bool:
    try:
        _, cluster = cluster_tags(emr, cluster_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"InvalidRequestException", "ResourceNotFoundException"}:
            return True  # EMR forgets clusters some time after they end
        raise
    return str(cluster.get("Status", {}).get("State", "")).startswith("TERMINATED")


def _sweep_run_slots(settings: GuardrailSettings, clients: Clients, report: SweepReport) -> None:
    """Release slots and queue places still held by executions that ended: the cleanup of their end
    normally does it, but a cleanup that failed for two hours (then went to the DLQ) would leave the
    slot held for good and every later run of the pipeline waiting behind it."""
    if settings.admission_table is None:
        return
    for item in runs(clients.dynamodb, settings.admission_table):
        execution_arn = str(item.get("execution_arn") or "")
        if not execution_arn:
            continue  # written by an older workflow version that did not pass its ARN: nothing to check
        status, _ = execution_status(clients.sfn, execution_arn)
        if status == "RUNNING":
            continue
        run_id = str(item["sk"])
        if release(clients.dynamodb, clients.sfn, settings.admission_table, run_id, settings.caps):
            report.slots_released.append(
                {"run_id": run_id, "execution_arn": execution_arn, "reason": f"its execution is {status}"}
            )


def _sweep_clusters(settings: GuardrailSettings, clients: Clients, now: datetime, report: SweepReport) -> None:
    for summary in active_clusters(clients.emr):
        tags, cluster = cluster_tags(clients.emr, summary["Id"])
        if tags.get(TAG_DEPLOYMENT) != settings.deployment or TAG_EXECUTION not in tags:
            continue
        pipeline = settings.pipelines.get(tags.get(TAG_PIPELINE, ""))
        execution_arn = tags[TAG_EXECUTION]
        status, started = execution_status(clients.sfn, execution_arn)
        created = cluster.get("Status", {}).get("Timeline", {}).get("CreationDateTime")
        created_at = created if isinstance(created, datetime) else now
        lifetime = timedelta(minutes=pipeline.max_cluster_lifetime_minutes if pipeline else 195)
        if status == "RUNNING" and now - created_at <= lifetime:
            report.active_clusters += 1
            continue
        reason = (
            f"its execution is {status}"
            if status != "RUNNING"
            else f"it is older than its pipeline's lifetime ({int(lifetime.total_seconds() // 60)} minutes)"
        )
        clients.emr.terminate_job_flows(JobFlowIds=[summary["Id"]])
        finding = {"cluster_id": summary["Id"], "execution_arn": execution_arn, "reason": reason}
        report.orphan_clusters.append(finding)
        if pipeline is not None:
            run = RunRef(
                pipeline, tags.get(TAG_RUN_ID, execution_arn.rsplit(":", 1)[-1]), execution_arn, started or created_at
            )
            delete_alarms(clients.cloudwatch, alarm_prefix(settings.deployment, pipeline.name, summary["Id"]))
            _record_sweep(run, settings, clients, now, status, finding)


def _sweep_job_runs(
    settings: GuardrailSettings,
    clients: Clients,
    now: datetime,
    report: SweepReport,
    pipeline: PipelineRef,
    *,
    serverless: bool,
) -> None:
    client = clients.emr_serverless if serverless else clients.emr_containers
    if serverless:
        summaries = serverless_job_runs(client, str(pipeline.application_id), ACTIVE_SERVERLESS_STATES)
    else:
        summaries = [
            run
            for page in client.get_paginator("list_job_runs").paginate(
                virtualClusterId=pipeline.virtual_cluster_id, states=ACTIVE_EKS_STATES
            )
            for run in page["jobRuns"]
        ]
    for summary in summaries:
        if serverless:
            job = client.get_job_run(applicationId=pipeline.application_id, jobRunId=summary["id"])["jobRun"]
        else:
            job = client.describe_job_run(virtualClusterId=pipeline.virtual_cluster_id, id=summary["id"])["jobRun"]
        tags = job.get("tags") or {}
        if tags.get(TAG_PIPELINE) != pipeline.name or TAG_EXECUTION not in tags:
            continue  # a shared application also runs other pipelines' and other people's jobs
        status, started = execution_status(clients.sfn, tags[TAG_EXECUTION])
        if status == "RUNNING":
            continue
        if serverless:
            _ignore_finished(client.cancel_job_run, applicationId=pipeline.application_id, jobRunId=summary["id"])
        else:
            _ignore_finished(client.cancel_job_run, virtualClusterId=pipeline.virtual_cluster_id, id=summary["id"])
        finding = {
            "job_run_id": summary["id"],
            "execution_arn": tags[TAG_EXECUTION],
            "reason": f"its execution is {status}",
        }
        report.orphan_job_runs.append(finding)
        created = summary.get("createdAt")
        run = RunRef(
            pipeline,
            tags.get(TAG_RUN_ID, str(summary.get("name", summary["id"]))),
            tags[TAG_EXECUTION],
            started or (created if isinstance(created, datetime) else now),
        )
        _record_sweep(run, settings, clients, now, status, finding)


def _stop_if_idle(client: Any, application_id: str, idle_minutes: int, now: datetime) -> bool:
    """Stop a STARTED application with no active job run and none updated for `idle_minutes`."""
    application = client.get_application(applicationId=application_id)["application"]
    if application.get("state") != "STARTED":
        return False
    latest = application.get("updatedAt")
    for job in serverless_job_runs(client, application_id):
        if job.get("state") in ACTIVE_SERVERLESS_STATES:
            return False
        updated = job.get("updatedAt")
        if isinstance(updated, datetime) and (not isinstance(latest, datetime) or updated > latest):
            latest = updated
    if isinstance(latest, datetime) and now - latest < timedelta(minutes=idle_minutes):
        return False
    client.stop_application(applicationId=application_id)
    return True


def _record_sweep(
    run: RunRef, settings: GuardrailSettings, clients: Clients, now: datetime, status: str, finding: Mapping[str, str]
) -> None:
    entry = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key) or base_entry(run)
    if entry.get("state") not in TERMINAL_LEDGER_STATES:
        entry["previous_state"] = entry.get("state")
        entry["state"] = status if status in ("ABORTED", "TIMED_OUT", "FAILED") else "FAILED"
        entry["error"] = entry.get("error") or "Orphaned"
        entry["cause"] = entry.get("cause") or f"the orphan sweeper stopped the run's compute: {finding['reason']}"
        entry["ended_at"] = entry.get("ended_at") or _iso(now)
    entry["swept"] = {"at": _iso(now), **finding}
    write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
    notify(
        clients.sns,
        settings.topic_arn,
        f"EMR Autopilot: orphan of {run.pipeline.name} stopped",
        {
            "pipeline": run.pipeline.name,
            "run_id": run.run_id,
            **finding,
            "ledger": f"s3://{settings.outputs_bucket}/{run.ledger_key}",
        },
    )


# --------------------------------------------------------------------------- 3. CloudTrail


@dataclass
class CloudTrailReaction:
    """What the guardrail did about one CloudTrail record."""

    event_name: str
    principal: str
    action: str  # "auto-termination applied", "run cancelled", "ignored: <why>"
    cluster_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def principal_of(identity: Mapping[str, Any]) -> tuple[str, str | None]:
    """(who, role ARN behind it) from a CloudTrail `userIdentity`."""
    issuer = ((identity.get("sessionContext") or {}).get("sessionIssuer") or {}).get("arn")
    who = identity.get("arn") or identity.get("invokedBy") or identity.get("principalId") or "unknown"
    return str(who), str(issuer) if issuer else None


def react_to_cloudtrail(
    detail: Mapping[str, Any], settings: GuardrailSettings, clients: Clients, now: datetime
) -> CloudTrailReaction:
    """Act on one CloudTrail record: EMR RunJobFlow, TerminateJobFlows, CancelSteps; Step Functions StopExecution."""
    name = detail.get("eventName")
    identity = detail.get("userIdentity")
    if not isinstance(name, str) or not isinstance(identity, dict):
        raise GuardrailEventError("detail.eventName / detail.userIdentity: expected a CloudTrail record")
    who, role = principal_of(identity)
    if detail.get("errorCode"):
        return CloudTrailReaction(name, who, f"ignored: the call failed ({detail['errorCode']})")
    if (role or who) in settings.app_role_arns or who in settings.app_role_arns:
        return CloudTrailReaction(name, who, "ignored: made by this app")
    params = detail.get("requestParameters") or {}
    if name == "RunJobFlow":
        return _unmanaged_cluster(detail, params, who, settings, clients)
    if name == "TerminateJobFlows":
        ids = params.get("jobFlowIds") or []
        return _cancelled_by_someone(name, who, [str(i) for i in ids], None, settings, clients, now)
    if name == "StopExecution":
        return _stopped_by_someone(str(params.get("executionArn") or ""), who, settings, clients, now)
    if name == "CancelSteps":
        return _cancelled_by_someone(
            name,
            who,
            [str(params.get("clusterId", ""))],
            [str(s) for s in params.get("stepIds") or []],
            settings,
            clients,
            now,
        )
    return CloudTrailReaction(name, who, "ignored: not an event the guardrail acts on")


def _unmanaged_cluster(
    detail: Mapping[str, Any], params: Mapping[str, Any], who: str, settings: GuardrailSettings, clients: Clients
) -> CloudTrailReaction:
    cluster_id = str((detail.get("responseElements") or {}).get("jobFlowId") or "")
    if not cluster_id:
        raise GuardrailEventError("detail.responseElements.jobFlowId: missing; expected the new cluster's id")
    reaction = CloudTrailReaction("RunJobFlow", who, "", [cluster_id])
    policy = settings.unmanaged
    tags = {str(t.get("key")): str(t.get("value")) for t in params.get("tags") or [] if isinstance(t, dict)}
    if not policy.enforce_auto_termination:
        reaction.action = "ignored: unmanaged_clusters.enforce_auto_termination is off"
    elif tags.get(TAG_DEPLOYMENT) == settings.deployment:
        reaction.action = "ignored: a cluster of this app"
    elif policy.exempt_tag_key in tags:
        reaction.action = f"ignored: tagged {policy.exempt_tag_key} (long-running by intent)"
    elif params.get("autoTerminationPolicy"):
        reaction.action = "ignored: launched with an auto-termination policy"
    elif (params.get("instances") or {}).get("keepJobFlowAliveWhenNoSteps") is False:
        reaction.action = "ignored: terminates itself after its steps"
    elif _has_auto_termination(clients.emr, cluster_id):
        reaction.action = "ignored: already has an auto-termination policy"
    else:
        idle_seconds = policy.idle_timeout_minutes * 60
        clients.emr.put_auto_termination_policy(
            ClusterId=cluster_id, AutoTerminationPolicy={"IdleTimeout": idle_seconds}
        )
        reaction.action = "auto-termination applied"
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: idle auto-termination applied to {cluster_id}",
            {
                "cluster_id": cluster_id,
                "cluster_name": params.get("name"),
                "launched_by": who,
                "launched_at": detail.get("eventTime"),
                "idle_timeout_minutes": policy.idle_timeout_minutes,
                "why": "launched without an auto-termination policy and without the "
                f"{policy.exempt_tag_key} tag; add that tag to keep a cluster running on purpose",
            },
        )
    return reaction


def _has_auto_termination(emr: Any, cluster_id: str) -> bool:
    try:
        return bool(emr.get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy"))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"InvalidRequestException", "ResourceNotFoundException"}:
            return False
        raise


def _cancelled_by_someone(
    name: str,
    who: str,
    cluster_ids: list[str],
    step_ids: list[str] | None,
    settings: GuardrailSettings,
    clients: Clients,
    now: datetime,
) -> CloudTrailReaction:
    reaction = CloudTrailReaction(name, who, "ignored: no run of this app affected", [c for c in cluster_ids if c])
    for cluster_id in reaction.cluster_ids:
        try:
            tags, _ = cluster_tags(clients.emr, cluster_id)
        except ClientError:
            continue
        runs: list[tuple[str, str | None]] = []
        if step_ids is None or (tags.get(TAG_DEPLOYMENT) == settings.deployment and TAG_RUN_ID in tags):
            if tags.get(TAG_DEPLOYMENT) == settings.deployment and TAG_RUN_ID in tags:
                runs.append((tags[TAG_RUN_ID], tags.get(TAG_EXECUTION)))
        else:  # steps of this app's runs on a long-running cluster are named `<run id>: <step>`
            for step_id in step_ids:
                step = clients.emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
                run_id = str(step.get("Name", "")).split(": ", 1)[0]
                if settings.pipeline_of_run_id(run_id) is not None and (run_id, None) not in runs:
                    runs.append((run_id, None))
        for run_id, execution_arn in runs:
            cancellation = Cancellation(run_id=run_id, by=who, action=f"{name} on {cluster_id}", at=_iso(now))
            record_cancellation(clients.dynamodb, settings.claims_table, cancellation, now)
            reaction.run_ids.append(run_id)
            _amend_if_ended(cancellation, tags.get(TAG_PIPELINE), execution_arn, settings, clients)
    if reaction.run_ids:
        reaction.action = "run cancelled"
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: run cancelled by {who.rsplit('/', 1)[-1]}",
            {"runs": reaction.run_ids, "cancelled_by": who, "action": name, "clusters": reaction.cluster_ids},
        )
    return reaction


def _stopped_by_someone(
    execution_arn: str, who: str, settings: GuardrailSettings, clients: Clients, now: datetime
) -> CloudTrailReaction:
    """Remember who stopped a run; when the cleanup already wrote ABORTED, name them in the entry now (one of
    the two always sees the other's write: the stop is stored before the ledger is read)."""
    pipeline = settings.pipeline_of_execution(execution_arn)
    if pipeline is None:
        return CloudTrailReaction("StopExecution", who, "ignored: not an execution of this app")
    run_id = execution_arn.rsplit(":", 1)[-1]
    stop = Stop(run_id=run_id, by=who, at=_iso(now))
    record_stop(clients.dynamodb, settings.claims_table, stop, now)
    reaction = CloudTrailReaction("StopExecution", who, "run stop recorded", run_ids=[run_id])
    _, started = execution_status(clients.sfn, execution_arn)
    if started is None:
        return reaction
    run = RunRef(pipeline, run_id, execution_arn, started)
    entry = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    if entry is not None and entry.get("state") == "ABORTED" and not entry.get("aborted_by"):
        entry |= stop.ledger_fields()
        if entry.get("cause") == "the execution was stopped (StopExecution)":
            entry["cause"] = f"the execution was stopped (StopExecution) by {who}"
        write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
    return reaction


def _amend_if_ended(
    cancellation: Cancellation,
    pipeline_name: str | None,
    execution_arn: str | None,
    settings: GuardrailSettings,
    clients: Clients,
) -> None:
    """When the workflow already wrote its ending, turn it into CANCELLED now; otherwise the cleanup of
    the execution's end reads the stored cancellation (one of the two always sees the other's write)."""
    pipeline = settings.pipelines.get(pipeline_name or "") or settings.pipeline_of_run_id(cancellation.run_id)
    if pipeline is None:
        return
    if execution_arn is None:
        execution_arn = pipeline.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + cancellation.run_id
    status, started = execution_status(clients.sfn, execution_arn)
    if started is None:
        return
    run = RunRef(pipeline, cancellation.run_id, execution_arn, started)
    entry = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    if entry is None or entry.get("state") not in TERMINAL_LEDGER_STATES or entry.get("state") == "CANCELLED":
        return
    entry["previous_state"] = entry.get("state")
    entry |= cancellation.ledger_fields()
    write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
