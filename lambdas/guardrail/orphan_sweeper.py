"""The orphan sweeper ("Scheduled Event", every `sweeper_interval_minutes`).

Clusters and job runs tagged by this deployment whose execution is not RUNNING (or is unknown), or that are
older than their pipeline's lifetime, are terminated or cancelled; idle EMR Serverless applications are
stopped; run slots and scaling alarms nothing holds any more are released. First of all, EMR-on-EC2 steps that
ended while their "EMR Step Status Change" event was lost get their workflow's task token answered
(`autopilot_common.step_notices`): a lost event costs at most one sweeper interval of idle cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from autopilot_common.admission import budget_notifier, dispatch, release, runs_to_sweep
from autopilot_common.clients import Clients
from autopilot_common.ledger import FINAL_STATES, iso
from autopilot_common.ledger import read_entry as read_ledger
from autopilot_common.ledger import write_entry as write_ledger
from autopilot_common.step_notices import NoticeStore, sweep_step_notices
from autopilot_common.tags import TAG_DEPLOYMENT, TAG_EXECUTION, TAG_PIPELINE, TAG_RUN_ID
from guardrail_settings import GuardrailSettings, PipelineRef
from run_teardown import (
    ACTIVE_SERVERLESS_STATES,
    JobRuns,
    RunRef,
    active_clusters,
    alarm_prefix,
    base_entry,
    cluster_tags,
    delete_alarms,
    execution_status,
    job_runs_of,
    notify,
    serverless_job_runs,
)

if TYPE_CHECKING:
    from autopilot_common.clients import EMRClient, EMRServerlessClient

# Pipeline names are lower case, cluster ids upper case: the id in a scaling alarm's name is unambiguous.
ALARM_CLUSTER_ID = re.compile(r"-(j-[A-Z0-9]{8,20})-")


@dataclass
class SweepReport:
    """What one sweeper tick found (steady state: every list empty)."""

    orphan_clusters: list[dict[str, str]] = field(default_factory=list)
    orphan_job_runs: list[dict[str, str]] = field(default_factory=list)
    idle_applications_stopped: list[str] = field(default_factory=list)
    slots_released: list[dict[str, str]] = field(default_factory=list)
    orphan_alarms: list[str] = field(default_factory=list)
    step_notices_recovered: list[str] = field(default_factory=list)  # <cluster>#<step> answered for a lost event
    active_clusters: int = 0  # this deployment's clusters still up after the tick (a dashboard gauge)
    waiting_counts_corrected: int = 0  # pipelines whose count of waiting runs was recounted (after an upgrade)

    @property
    def findings(self) -> int:
        return (
            len(self.orphan_clusters)
            + len(self.orphan_job_runs)
            + len(self.idle_applications_stopped)
            + len(self.slots_released)
            + len(self.orphan_alarms)
            + len(self.step_notices_recovered)
        )


def sweep(settings: GuardrailSettings, clients: Clients, now: datetime) -> SweepReport:
    """One tick of the orphan sweeper (see the module docstring)."""
    report = SweepReport()
    store = NoticeStore(clients.dynamodb, settings.claims_table)
    report.step_notices_recovered = sweep_step_notices(clients.emr, clients.sfn, store)
    _sweep_clusters(settings, clients, now, report)
    for pipeline in settings.pipelines.values():
        if (job_runs := job_runs_of(pipeline, clients)) is not None:
            _sweep_job_runs(settings, clients, now, report, pipeline, job_runs)
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


def _cluster_ended(emr: EMRClient, cluster_id: str) -> bool:
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
    caps = settings.caps.listed()  # every pipeline's caps from the sweep's one listing, not a read per pipeline
    # The runs holding slots (queued runs need no sweep: a dispatch that reaches one whose execution ended finds
    # its task gone and drops it); every run once on a table an older version wrote, whose counts it recounts.
    holders, report.waiting_counts_corrected = runs_to_sweep(clients.dynamodb, settings.admission_table)
    for item in holders:
        execution_arn = str(item.get("execution_arn") or "")
        if not execution_arn:
            continue  # written by an older workflow version that did not pass its ARN: nothing to check
        status, _ = execution_status(clients.sfn, execution_arn)
        if status == "RUNNING":
            continue
        run_id = str(item["sk"])
        if release(clients.dynamodb, clients.sfn, settings.admission_table, run_id, caps):
            report.slots_released.append(
                {"run_id": run_id, "execution_arn": execution_arn, "reason": f"its execution is {status}"}
            )
    # Runs waiting for a budget start when a new day (UTC) begins, recounted runs when capacity is free: wake them.
    if caps.any_budget or report.waiting_counts_corrected:
        notify = budget_notifier(clients.sns, settings.topic_arn)
        dispatch(clients.dynamodb, clients.sfn, settings.admission_table, caps, notify=notify)


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
    job_runs: JobRuns,
) -> None:
    for summary in job_runs.active():
        job = job_runs.job(summary["id"])
        tags = job.get("tags") or {}
        if tags.get(TAG_PIPELINE) != pipeline.name or TAG_EXECUTION not in tags:
            continue  # a shared application also runs other pipelines' and other people's jobs
        status, started = execution_status(clients.sfn, tags[TAG_EXECUTION])
        if status == "RUNNING":
            continue
        job_runs.cancel(summary["id"])
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


def _stop_if_idle(client: EMRServerlessClient, application_id: str, idle_minutes: int, now: datetime) -> bool:
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
    if entry.get("state") not in FINAL_STATES:
        entry["previous_state"] = entry.get("state")
        entry["state"] = status if status in ("ABORTED", "TIMED_OUT", "FAILED") else "FAILED"
        entry["error"] = entry.get("error") or "Orphaned"
        entry["cause"] = entry.get("cause") or f"the orphan sweeper stopped the run's compute: {finding['reason']}"
        entry["ended_at"] = entry.get("ended_at") or iso(now)
    entry["swept"] = {"at": iso(now), **finding}
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
