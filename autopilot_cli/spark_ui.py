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
    entry = record.raw
    job_run_id, application_id = entry.get("job_run_id"), entry.get("application_id")
    cluster_id, virtual_cluster_id = entry.get("cluster_id"), entry.get("virtual_cluster_id")
    if not (cluster_id or (job_run_id and (application_id or virtual_cluster_id))):
        why = {"QUEUED": "it is waiting for a run slot", "SKIPPED": "it was skipped"}.get(record.state, "")
        raise OperationFailed(
            f"run {record.run_id} is {record.state}: it has no job run or cluster yet" + (f" ({why})" if why else "")
            + ", so there is no Spark UI"
        )  # fmt: skip
    if attempt is not None and not application_id:
        raise UsageProblem("--attempt: only EMR Serverless job runs have attempts (GetDashboardForJobRun's attempt)")
    if application_id and job_run_id:
        params: dict[str, Any] = {"applicationId": application_id, "jobRunId": job_run_id}
        if attempt is not None:
            params["attempt"] = attempt
        url = deployment.client("emr-serverless").get_dashboard_for_job_run(**params)["url"]
        return SparkUiLink(record.run_id, "emr-serverless", url, "GetDashboardForJobRun", SERVERLESS_NOTE)
    emr = deployment.client("emr")
    if cluster_id:
        arn = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["ClusterArn"]
        ui_id = emr.create_persistent_app_ui(TargetResourceArn=arn)["PersistentAppUIId"]
        runtime, what = "emr-ec2", f"cluster {cluster_id}"
    else:
        containers = deployment.client("emr-containers")
        arn = containers.describe_virtual_cluster(id=virtual_cluster_id)["virtualCluster"]["arn"]
        created = emr.create_persistent_app_ui(TargetResourceArn=arn, EMRContainersConfig={"JobRunId": job_run_id})
        ui_id = created["PersistentAppUIId"]
        runtime, what = "emr-eks", f"job run {job_run_id}"
    url = _presigned_url(emr, ui_id, timeout, sleep)
    source = "CreatePersistentAppUI + GetPersistentAppUIPresignedURL (SHS)"
    return SparkUiLink(record.run_id, runtime, url, source, PERSISTENT_NOTE.format(what=what))


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
