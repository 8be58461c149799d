"""A fresh Spark UI link for a run (`emr-autopilot ui`), from its ledger entry's ids.

Spark UI links expire, so the ledger keeps none (its `links` are console pages); each runtime's API makes one on demand:

- EMR Serverless: GetDashboardForJobRun: "For jobs in a running state, the application UI is a live user interface
  such as the Spark or Tez web UI. For completed jobs, the application UI is a persistent application user interface
  such as the Spark History Server [...] The URL is valid for one hour after you generate it." (botocore
  emr-serverless 2021-07-13).
- EMR on EC2: the cluster's persistent application UI: CreatePersistentAppUI(TargetResourceArn=the cluster's ARN),
  then GetPersistentAppUIPresignedURL(PersistentAppUIType="SHS", the Spark History Server; enum SHS | TEZ | YTS),
  which answers PresignedURLReady false until the UI is set up (botocore emr 2009-03-31). It serves running and
  terminated clusters alike, so `ui` uses it for both.
- EMR on EKS: the same, with TargetResourceArn the virtual cluster's ARN and EMRContainersConfig.JobRunId.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from autopilot_cli.deployment import Deployment
from autopilot_cli.errors import OperationFailed, UsageProblem
from autopilot_cli.ledger import RunRecord
from autopilot_cli.status import ACTIVE_CLUSTER_STATES, ACTIVE_EKS_STATES, ACTIVE_SERVERLESS_STATES
from autopilot_common.ledger import FINAL_STATES, MISSED, QUEUED, SKIPPED
from autopilot_common.tags import TAG_DEPLOYMENT, TAG_RUN_ID

READY_TIMEOUT_SECONDS = 60.0  # how long `ui` polls PresignedURLReady before saying the UI is not ready yet
SERVERLESS_NOTE = (
    "one-time link, valid for one hour (GetDashboardForJobRun); run `emr-autopilot ui` again for a new one"
)
PERSISTENT_NOTE = (
    "presigned link to the {what}'s persistent Spark History Server; short-lived: run `emr-autopilot ui` again"
)


@dataclass(frozen=True)
class SparkUiLink:
    run_id: str
    runtime: str  # emr-serverless | emr-ec2 | emr-eks
    url: str
    source: str  # what made it: the API call
    note: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def spark_ui_link(
    deployment: Deployment,
    record: RunRecord,
    attempt: int | None = None,
    timeout: float = READY_TIMEOUT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> SparkUiLink:
    """The run's Spark UI link; OperationFailed saying why there is none (no job run or cluster yet, AWS refused,
    not ready within `timeout`), UsageProblem for --attempt on a runtime without attempts."""
    runtime, where, job_run_id = _job_of(deployment, record)
    if where is None or (runtime != "emr-ec2" and job_run_id is None):
        why = {QUEUED: " (it is waiting for a run slot)", SKIPPED: " (it was skipped)",
               MISSED: " (its deadline passed without a run)"}.get(record.state, "")  # fmt: skip
        has = (
            "its ledger entry names no job run or cluster"
            if record.state in FINAL_STATES
            else "it has no job run or cluster yet"
        )
        raise OperationFailed(f"run {record.run_id} is {record.state}: {has}{why}, so there is no Spark UI")
    if attempt is not None and runtime != "emr-serverless":
        raise UsageProblem("--attempt: only EMR Serverless job runs have attempts (GetDashboardForJobRun's attempt)")
    if runtime == "emr-serverless":
        params: dict[str, Any] = {"applicationId": where, "jobRunId": job_run_id}
        if attempt is not None:
            params["attempt"] = attempt
        url = deployment.client("emr-serverless").get_dashboard_for_job_run(**params)["url"]
        return SparkUiLink(record.run_id, runtime, url, "GetDashboardForJobRun", SERVERLESS_NOTE)
    emr = deployment.client("emr")
    if runtime == "emr-ec2":
        arn = emr.describe_cluster(ClusterId=where)["Cluster"]["ClusterArn"]
        ui_id = emr.create_persistent_app_ui(TargetResourceArn=arn)["PersistentAppUIId"]
        what = f"cluster {where}"
    else:
        containers = deployment.client("emr-containers")
        arn = containers.describe_virtual_cluster(id=where)["virtualCluster"]["arn"]
        created = emr.create_persistent_app_ui(TargetResourceArn=arn, EMRContainersConfig={"JobRunId": job_run_id})
        ui_id = created["PersistentAppUIId"]
        what = f"job run {job_run_id}"
    url = _presigned_url(emr, ui_id, timeout, sleep)
    source = "CreatePersistentAppUI + GetPersistentAppUIPresignedURL (SHS)"
    return SparkUiLink(record.run_id, runtime, url, source, PERSISTENT_NOTE.format(what=what))


def _job_of(deployment: Deployment, record: RunRecord) -> tuple[str, str | None, str | None]:
    """(runtime, where: the application, virtual cluster or cluster id, the job run id) of the run: from its ledger
    entry, or, while it runs (the STARTED entry has no job run or cluster id yet), from the live job run or cluster
    the workflow started for it: job runs are named after the run id (prepare's `job.name`), transient clusters
    `autopilot <pipeline> <run id>` and tagged with it."""
    entry = record.raw
    runtime = str(entry.get("runtime") or "")
    if not runtime:  # an entry of an older version: its ids say
        runtime = (
            "emr-ec2" if entry.get("cluster_id") else "emr-eks" if entry.get("virtual_cluster_id") else "emr-serverless"
        )
    if record.state in (QUEUED, SKIPPED, MISSED):
        return runtime, None, None
    if runtime == "emr-ec2":
        return runtime, entry.get("cluster_id") or _live_cluster(deployment, record), None
    # EMR on EKS entries name the virtual cluster `application_id` (the workflow's) and maybe `virtual_cluster_id`
    where = (
        entry.get("virtual_cluster_id") or entry.get("application_id")
        if runtime == "emr-eks"
        else entry.get("application_id")
    )
    if not where:
        return runtime, None, None
    return runtime, where, entry.get("job_run_id") or _live_job_run(deployment, runtime, where, record.run_id)


def _live_job_run(deployment: Deployment, runtime: str, where: str, run_id: str) -> str | None:
    if runtime == "emr-serverless":
        client, params = (
            deployment.client("emr-serverless"),
            {"applicationId": where, "states": ACTIVE_SERVERLESS_STATES},
        )
    else:
        client, params = deployment.client("emr-containers"), {"virtualClusterId": where, "states": ACTIVE_EKS_STATES}
    for page in client.get_paginator("list_job_runs").paginate(**params):
        for run in page.get("jobRuns", []):
            if run.get("name") == run_id:
                return str(run["id"])
    return None


def _live_cluster(deployment: Deployment, record: RunRecord) -> str | None:
    emr = deployment.client("emr")
    name = f"autopilot {record.pipeline} {record.run_id}"[:256]
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        for summary in page.get("Clusters", []):
            if summary.get("Name") != name:
                continue
            tags = {
                t["Key"]: t["Value"] for t in emr.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
            }
            if tags.get(TAG_RUN_ID) == record.run_id and tags.get(TAG_DEPLOYMENT) == deployment.stack_name:
                return str(summary["Id"])
    return None


def _presigned_url(emr: Any, ui_id: str, timeout: float, sleep: Callable[[float], None]) -> str:
    """Poll GetPersistentAppUIPresignedURL until PresignedURLReady (backing off 0.5 s to 5 s), at most `timeout`."""
    deadline = time.monotonic() + timeout
    pause = 0.5
    while True:
        answer = emr.get_persistent_app_ui_presigned_url(PersistentAppUIId=ui_id, PersistentAppUIType="SHS")
        if answer.get("PresignedURLReady") and answer.get("PresignedURL"):
            return str(answer["PresignedURL"])
        if time.monotonic() + pause > deadline:
            raise OperationFailed(
                f"the persistent application UI {ui_id} is not ready after {timeout:.0f}s (PresignedURLReady false); "
                "try again in a minute"
            )
        sleep(pause)
        pause = min(pause * 2, 5.0)
