"""A run and what it may still hold: finding and stopping its cluster, steps, job runs and scaling alarms; its
execution's status; the ledger entry of a run the workflow never wrote one for; notifications."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.clients import Clients
from autopilot_common.ledger import iso, ledger_key
from autopilot_common.tags import TAG_EXECUTION
from guardrail_settings import GuardrailEventError, GuardrailSettings, PipelineRef

if TYPE_CHECKING:
    from mypy_boto3_emr.literals import ClusterStateType
    from mypy_boto3_emr.type_defs import ClusterTypeDef
    from mypy_boto3_emr_containers.literals import JobRunStateType as EKSJobRunStateType
    from mypy_boto3_emr_serverless.literals import JobRunStateType

    from autopilot_common.clients import (
        CloudWatchClient,
        EMRClient,
        EMRContainersClient,
        EMRServerlessClient,
        SFNClient,
        SNSClient,
    )

ACTIVE_CLUSTER_STATES: list[ClusterStateType] = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
ACTIVE_SERVERLESS_STATES: list[JobRunStateType] = ["SUBMITTED", "PENDING", "SCHEDULED", "RUNNING", "QUEUED"]
ACTIVE_EKS_STATES: list[EKSJobRunStateType] = ["PENDING", "SUBMITTED", "RUNNING"]
ENDED_STATUSES = ("ABORTED", "TIMED_OUT", "FAILED")


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


def active_clusters(emr: EMRClient) -> Iterable[dict[str, Any]]:
    """Every cluster not yet terminating (ListClusters, paginated), as ListClusters summaries."""
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        yield from page.get("Clusters", [])


def cluster_tags(emr: EMRClient, cluster_id: str) -> tuple[dict[str, str], ClusterTypeDef]:
    """(tags, DescribeCluster's Cluster) of one cluster."""
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
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
    elif (job_runs := job_runs_of(pipeline, clients)) is not None:
        done.job_runs_cancelled += _cancel_job_runs(job_runs, run)
    return done


def delete_alarms(cloudwatch: CloudWatchClient, prefix: str) -> list[str]:
    names = [
        alarm["AlarmName"]
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
        for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", [])
    ]
    for start in range(0, len(names), 100):  # DeleteAlarms takes up to 100 names
        cloudwatch.delete_alarms(AlarmNames=names[start : start + 100])
    return names


def cancel_run_steps(emr: EMRClient, cluster_id: str, run_id: str) -> list[str]:
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


def serverless_job_runs(
    client: EMRServerlessClient, application_id: str, states: list[JobRunStateType] | None = None
) -> list[dict[str, Any]]:
    """ListJobRuns of an application (paginated); an application that no longer exists has none."""
    kwargs: dict[str, Any] = {"applicationId": application_id, **({"states": states} if states else {})}
    try:
        return [run for page in client.get_paginator("list_job_runs").paginate(**kwargs) for run in page["jobRuns"]]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return []
        raise


@dataclass(frozen=True)
class ServerlessJobRuns:
    """The job runs of one EMR Serverless application."""

    client: EMRServerlessClient
    application_id: str

    def active(self) -> list[dict[str, Any]]:
        return serverless_job_runs(self.client, self.application_id, ACTIVE_SERVERLESS_STATES)

    def job(self, job_run_id: str) -> dict[str, Any]:
        return dict(self.client.get_job_run(applicationId=self.application_id, jobRunId=job_run_id)["jobRun"])

    def cancel(self, job_run_id: str) -> None:
        ignore_finished(self.client.cancel_job_run, applicationId=self.application_id, jobRunId=job_run_id)


@dataclass(frozen=True)
class EksJobRuns:
    """The job runs of one EMR on EKS virtual cluster."""

    client: EMRContainersClient
    virtual_cluster_id: str

    def active(self) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_job_runs").paginate(
            virtualClusterId=self.virtual_cluster_id, states=ACTIVE_EKS_STATES
        )
        return [dict(run) for page in pages for run in page.get("jobRuns", [])]

    def job(self, job_run_id: str) -> dict[str, Any]:
        return dict(self.client.describe_job_run(virtualClusterId=self.virtual_cluster_id, id=job_run_id)["jobRun"])

    def cancel(self, job_run_id: str) -> None:
        ignore_finished(self.client.cancel_job_run, virtualClusterId=self.virtual_cluster_id, id=job_run_id)


JobRuns = ServerlessJobRuns | EksJobRuns


def job_runs_of(pipeline: PipelineRef, clients: Clients) -> JobRuns | None:
    """Where a pipeline's job runs live (EMR Serverless application, EMR on EKS virtual cluster), if it has one."""
    if pipeline.runtime == "emr-serverless" and pipeline.application_id:
        return ServerlessJobRuns(clients.emr_serverless, pipeline.application_id)
    if pipeline.runtime == "emr-eks" and pipeline.virtual_cluster_id:
        return EksJobRuns(clients.emr_containers, pipeline.virtual_cluster_id)
    return None


def _cancel_job_runs(job_runs: JobRuns, run: RunRef) -> list[str]:
    """Cancel the run's active job runs (named by its run id, tagged with its execution)."""
    cancelled = []
    for summary in job_runs.active():
        if summary.get("name") != run.run_id:
            continue
        if (job_runs.job(summary["id"]).get("tags") or {}).get(TAG_EXECUTION) == run.execution_arn:
            job_runs.cancel(summary["id"])
            cancelled.append(summary["id"])
    return cancelled


def ignore_finished(call: Any, **kwargs: Any) -> None:
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
        "started_at": iso(run.started_at),
        "ended_at": None,
        "error": None,
        "cause": None,
    }


def notify(sns: SNSClient, topic_arn: str, subject: str, message: Mapping[str, Any]) -> None:
    sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=json.dumps(message, indent=2, default=str))


def millis_to_datetime(value: Any, field_name: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise GuardrailEventError(f"detail.{field_name}: got {value!r}; expected epoch milliseconds")


def execution_status(sfn: SFNClient, execution_arn: str) -> tuple[str, datetime | None]:
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
